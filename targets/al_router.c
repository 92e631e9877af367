/* al_router: the routing index over one table snapshot.
 *
 * Owns: two open-addressing hash tables built once by al_router_build() and
 * read-only afterwards, so any number of worker threads may look up concurrently
 * without locks, and no lookup allocates.
 *   - authorities: (lower-cased host, port) -> a run of target pointers in
 *     `by_auth`, sorted by base-path length, longest first, so the first prefix that
 *     matches on a segment boundary is the longest one;
 *   - names: target name -> target (gateway mode).
 * IPv6 literal hosts are keyed by their canonical text (inet_ntop), so "2001:DB8:0::1"
 * and "[2001:db8::1]" reach the same target.
 *
 * Invariants: the router points into the caller's target array and never owns the
 * targets; the array must outlive the router (the table snapshot holds both). Slot
 * counts are powers of two and at least twice the entry count, so probes end. */
#include "al_router.h"
#include "common/al_err.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* Longest host we index (DNS names are at most 253 bytes; leave room). */
#define AL_ROUTER_HOST_MAX 255

typedef struct al_authority {
    const char *host; /* points into the target, or into canon[] for IPv6 */
    size_t host_len;
    uint16_t port;
    uint64_t hash;
    size_t first; /* index into by_auth */
    size_t count;
    char canon[INET6_ADDRSTRLEN]; /* canonical IPv6 text when the host is one */
} al_authority;

typedef struct al_name_slot {
    const al_target *t; /* NULL = empty */
    uint64_t hash;
    size_t name_len;
} al_name_slot;

struct al_router {
    al_authority *auths; /* owned; auth_count entries */
    size_t auth_count;
    uint32_t *auth_slots; /* owned; index+1 into auths, 0 = empty */
    size_t auth_mask;
    const al_target **by_auth; /* owned array of borrowed pointers */
    size_t *base_lens;         /* owned; effective base length of by_auth[i] */
    al_name_slot *name_slots;  /* owned */
    size_t name_mask;
};

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* FNV-1a over the lower-cased bytes; good enough for names we build from a trusted
 * table, and the probe length is bounded by the load factor either way. */
static uint64_t hash_ci(const char *s, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= lower((unsigned char)s[i]);
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t hash_authority(const char *host, size_t len, uint16_t port)
{
    uint64_t h = hash_ci(host, len, 14695981039346656037ULL);
    h ^= port;
    h *= 1099511628211ULL;
    return h ^ (h >> 29);
}

static int eq_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

static size_t slots_for(size_t n)
{
    size_t s = 16;
    while (s < n * 2)
        s <<= 1;
    return s;
}

/* The base path without trailing slashes: "/v1/" and "/v1" route the same, "/" is
 * the root (length 0). */
static size_t base_len_of(const al_target *t)
{
    size_t n = t->base_path ? strlen(t->base_path) : 0;
    while (n > 0 && t->base_path[n - 1] == '/')
        n--;
    return n;
}

/* Normalises a host for lookup: strips IPv6 brackets and one trailing dot, and
 * rewrites an IPv6 literal into its canonical text in `canon`. Returns 0 or -1 when
 * the host cannot match anything. */
static int normalise_host(const char **host, size_t *len, char canon[INET6_ADDRSTRLEN])
{
    const char *h = *host;
    size_t n = *len;
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n > 0 && h[n - 1] == '.')
        n--;
    if (n == 0 || n > AL_ROUTER_HOST_MAX)
        return -1;
    if (memchr(h, ':', n)) {
        char tmp[INET6_ADDRSTRLEN];
        struct in6_addr a;
        if (n >= sizeof tmp)
            return -1;
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET6, tmp, &a) != 1 || !inet_ntop(AF_INET6, &a, canon, INET6_ADDRSTRLEN))
            return -1;
        h = canon;
        n = strlen(canon);
    }
    *host = h;
    *len = n;
    return 0;
}

static const al_authority *find_auth(const al_router *r, const char *host, size_t host_len,
                                     uint16_t port)
{
    char canon[INET6_ADDRSTRLEN];
    if (!r || !host || normalise_host(&host, &host_len, canon) != 0)
        return NULL;
    uint64_t h = hash_authority(host, host_len, port);
    for (size_t i = (size_t)h & r->auth_mask;; i = (i + 1) & r->auth_mask) {
        uint32_t idx = r->auth_slots[i];
        if (!idx)
            return NULL;
        const al_authority *a = &r->auths[idx - 1];
        if (a->hash == h && a->port == port && a->host_len == host_len &&
            eq_ci(a->host, host, host_len))
            return a;
    }
}

/* Sort key for the targets of one authority: longest base first. */
typedef struct sort_item {
    const al_target *t;
    size_t auth;     /* authority index */
    size_t base_len; /* effective base length */
} sort_item;

static int cmp_items(const void *a, const void *b)
{
    const sort_item *x = a, *y = b;
    if (x->auth != y->auth)
        return x->auth < y->auth ? -1 : 1;
    if (x->base_len != y->base_len)
        return x->base_len > y->base_len ? -1 : 1;
    /* Table order breaks ties, so a build is deterministic. */
    return x->t < y->t ? -1 : x->t > y->t;
}

int al_router_build(const al_target *targets, size_t count, al_router **out)
{
    int rc = AL_ERR_NOMEM;
    sort_item *items = NULL;
    al_router *r = calloc(1, sizeof *r);
    if (!r)
        goto fail;
    if (count > UINT32_MAX / 4) {
        rc = AL_ERR_INVAL;
        goto fail;
    }
    size_t nslots = slots_for(count);
    r->auths = calloc(count ? count : 1, sizeof *r->auths);
    r->auth_slots = calloc(nslots, sizeof *r->auth_slots);
    r->by_auth = calloc(count ? count : 1, sizeof *r->by_auth);
    r->base_lens = calloc(count ? count : 1, sizeof *r->base_lens);
    r->name_slots = calloc(nslots, sizeof *r->name_slots);
    items = calloc(count ? count : 1, sizeof *items);
    if (!r->auths || !r->auth_slots || !r->by_auth || !r->base_lens || !r->name_slots || !items)
        goto fail;
    r->auth_mask = r->name_mask = nslots - 1;

    size_t nitems = 0;
    for (size_t k = 0; k < count; k++) {
        const al_target *t = &targets[k];

        /* Names: the loader guarantees uniqueness; the first one wins otherwise. */
        if (t->name) {
            size_t nl = strlen(t->name);
            uint64_t h = hash_ci(t->name, nl, 14695981039346656037ULL);
            for (size_t j = (size_t)h & r->name_mask;; j = (j + 1) & r->name_mask) {
                al_name_slot *s = &r->name_slots[j];
                if (!s->t) {
                    *s = (al_name_slot){.t = t, .hash = h, .name_len = nl};
                    break;
                }
                if (s->hash == h && s->name_len == nl && memcmp(s->t->name, t->name, nl) == 0)
                    break;
            }
        }

        /* A target without a usable host (the loader reports why) is reachable by
         * name only; it must not make the whole table unroutable. */
        al_authority probe = {
            .host = t->host, .host_len = t->host ? strlen(t->host) : 0, .port = t->port};
        if (!t->host || normalise_host(&probe.host, &probe.host_len, probe.canon) != 0)
            continue;
        probe.hash = hash_authority(probe.host, probe.host_len, probe.port);
        size_t auth_idx = SIZE_MAX;
        size_t i = (size_t)probe.hash & r->auth_mask;
        for (;; i = (i + 1) & r->auth_mask) {
            uint32_t idx = r->auth_slots[i];
            if (!idx)
                break;
            al_authority *a = &r->auths[idx - 1];
            if (a->hash == probe.hash && a->port == probe.port && a->host_len == probe.host_len &&
                eq_ci(a->host, probe.host, probe.host_len)) {
                auth_idx = idx - 1;
                break;
            }
        }
        if (auth_idx == SIZE_MAX) {
            auth_idx = r->auth_count++;
            al_authority *a = &r->auths[auth_idx];
            *a = probe;
            /* canon[] moved with the struct: re-point into the copy. */
            if (probe.host == probe.canon)
                a->host = a->canon;
            r->auth_slots[i] = (uint32_t)(auth_idx + 1);
        }
        r->auths[auth_idx].count++;
        items[nitems++] = (sort_item){.t = t, .auth = auth_idx, .base_len = base_len_of(t)};
    }

    qsort(items, nitems, sizeof *items, cmp_items);
    for (size_t k = 0; k < nitems; k++) {
        al_authority *a = &r->auths[items[k].auth];
        if (k == 0 || items[k - 1].auth != items[k].auth)
            a->first = k;
        r->by_auth[k] = items[k].t;
        r->base_lens[k] = items[k].base_len;
    }
    free(items);
    *out = r;
    return AL_OK;
fail:
    free(items);
    al_router_free(r);
    return rc;
}

void al_router_free(al_router *r)
{
    if (!r)
        return;
    free(r->auths);
    free(r->auth_slots);
    free(r->by_auth);
    free(r->base_lens);
    free(r->name_slots);
    free(r);
}

/* "/v1" matches "/v1", "/v1/", "/v1/x" and "/v1?q", never "/v10". */
static int prefix_matches(const char *base, size_t base_len, const char *path, size_t path_len)
{
    if (base_len == 0)
        return 1;
    if (path_len < base_len || memcmp(base, path, base_len) != 0)
        return 0;
    if (path_len == base_len)
        return 1;
    char c = path[base_len];
    return c == '/' || c == '?' || c == '#';
}

const al_target *al_router_find(const al_router *r, const char *host, size_t host_len,
                                uint16_t port, const char *path, size_t path_len)
{
    const al_authority *a = find_auth(r, host, host_len, port);
    if (!a)
        return NULL;
    if (!path)
        path_len = 0;
    for (size_t k = a->first; k < a->first + a->count; k++) {
        const al_target *t = r->by_auth[k];
        if (prefix_matches(t->base_path, r->base_lens[k], path, path_len))
            return t;
    }
    return NULL;
}

const al_target *al_router_find_name(const al_router *r, const char *name, size_t name_len)
{
    if (!r || !name || name_len == 0)
        return NULL;
    /* Names are lower-case by schema; the hash is case-insensitive but the compare
     * is exact, so "/t/Foo" does not reach "foo". */
    uint64_t h = hash_ci(name, name_len, 14695981039346656037ULL);
    for (size_t j = (size_t)h & r->name_mask;; j = (j + 1) & r->name_mask) {
        const al_name_slot *s = &r->name_slots[j];
        if (!s->t)
            return NULL;
        if (s->hash == h && s->name_len == name_len && memcmp(s->t->name, name, name_len) == 0)
            return s->t;
    }
}

const al_target *al_router_find_authority(const al_router *r, const char *host, size_t host_len,
                                          uint16_t port)
{
    const al_authority *a = find_auth(r, host, host_len, port);
    /* The shortest base path (last in the run) is the most general target there. */
    return a ? r->by_auth[a->first + a->count - 1] : NULL;
}
