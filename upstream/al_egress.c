/* al_egress: the egress (SSRF) guard — address classes and the checking resolver.
 *
 * Owns:
 *  - al_egress_classify(): pure, table-driven (one row per range, first match
 *    wins, so more specific rows come first). IPv6 forms that carry an IPv4 address
 *    (mapped ::ffff:0:0/96, compatible ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16)
 *    take the class of that IPv4 address, so ::ffff:127.0.0.1 is loopback.
 *  - al_resolver: one per worker, on the worker's libev loop; not thread-safe by
 *    design. c-ares (ares_getaddrinfo, files then DNS so /etc/hosts is honoured)
 *    drives its sockets through ev_io watchers created from the sock-state
 *    callback, and its retransmits through one ev_timer. Answers are cached per
 *    host for the TTL c-ares reports (clamped to [1 s, 300 s]) in a bounded table.
 *
 * Invariants: a name is refused (AL_ERR_EGRESS) when ANY of its addresses is in a
 * refused class and private networks are not allowed — a mixed answer is the DNS
 * rebinding trick. The address handed back is one of the checked ones, and the data
 * path connects to exactly it. Literal addresses skip DNS but not the check.
 * Callbacks never run after al_resolver_cancel() or al_resolver_free(); a callback
 * must not free the resolver. */
#include "al_egress.h"
#include "common/al_err.h"
#include "common/al_fmt.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- classification ------------------------------------------------------- */

typedef struct v4_range {
    uint32_t net;
    int bits;
    enum al_addr_class cls;
} v4_range;

#define V4(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((c) << 8) | (d))

static const v4_range v4_ranges[] = {
    {V4(255, 255, 255, 255), 32, AL_ADDR_RESERVED}, /* limited broadcast */
    {V4(0, 0, 0, 0), 8, AL_ADDR_RESERVED},          /* "this network"; 0.0.0.0 is local */
    {V4(10, 0, 0, 0), 8, AL_ADDR_PRIVATE},
    {V4(100, 64, 0, 0), 10, AL_ADDR_CGNAT},
    {V4(127, 0, 0, 0), 8, AL_ADDR_LOOPBACK},
    {V4(169, 254, 0, 0), 16, AL_ADDR_LINK_LOCAL}, /* incl. 169.254.169.254 metadata */
    {V4(172, 16, 0, 0), 12, AL_ADDR_PRIVATE},
    {V4(192, 0, 0, 0), 24, AL_ADDR_RESERVED},   /* IETF protocol assignments */
    {V4(192, 0, 2, 0), 24, AL_ADDR_RESERVED},   /* TEST-NET-1 */
    {V4(192, 88, 99, 0), 24, AL_ADDR_RESERVED}, /* deprecated 6to4 relays */
    {V4(192, 168, 0, 0), 16, AL_ADDR_PRIVATE},
    {V4(198, 18, 0, 0), 15, AL_ADDR_RESERVED},   /* benchmarking */
    {V4(198, 51, 100, 0), 24, AL_ADDR_RESERVED}, /* TEST-NET-2 */
    {V4(203, 0, 113, 0), 24, AL_ADDR_RESERVED},  /* TEST-NET-3 */
    {V4(224, 0, 0, 0), 4, AL_ADDR_MULTICAST},
    {V4(240, 0, 0, 0), 4, AL_ADDR_RESERVED},
};

static enum al_addr_class classify_v4(uint32_t a)
{
    for (size_t i = 0; i < sizeof v4_ranges / sizeof v4_ranges[0]; i++) {
        uint32_t mask = v4_ranges[i].bits ? ~(uint32_t)0 << (32 - v4_ranges[i].bits) : 0;
        if ((a & mask) == v4_ranges[i].net)
            return v4_ranges[i].cls;
    }
    return AL_ADDR_PUBLIC;
}

/* What to do with an IPv6 range: a fixed class, or look at an embedded IPv4. */
enum v6_kind { V6_CLASS, V6_EMBED_LOW32, V6_EMBED_6TO4 };

typedef struct v6_range {
    uint8_t net[16];
    int bits;
    enum v6_kind kind;
    enum al_addr_class cls; /* V6_CLASS; for embedded forms: the class of a public v4 */
} v6_range;

static const v6_range v6_ranges[] = {
    {{0}, 128, V6_CLASS, AL_ADDR_RESERVED},                           /* :: */
    {{[15] = 1}, 128, V6_CLASS, AL_ADDR_LOOPBACK},                    /* ::1 */
    {{[10] = 0xff, [11] = 0xff}, 96, V6_EMBED_LOW32, AL_ADDR_PUBLIC}, /* ::ffff:a.b.c.d */
    {{0}, 96, V6_EMBED_LOW32, AL_ADDR_PUBLIC},                        /* ::a.b.c.d */
    {{0, 0x64, 0xff, 0x9b}, 96, V6_EMBED_LOW32, AL_ADDR_PUBLIC},      /* NAT64 well-known */
    {{0, 0x64, 0xff, 0x9b, 0, 1}, 48, V6_CLASS, AL_ADDR_PRIVATE},     /* NAT64 local use */
    {{0}, 8, V6_CLASS, AL_ADDR_RESERVED},                       /* rest of ::/8, after NAT64 */
    {{0x01, 0x00}, 64, V6_CLASS, AL_ADDR_RESERVED},             /* discard-only */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, V6_CLASS, AL_ADDR_RESERVED}, /* documentation */
    {{0x20, 0x01, 0x00, 0x02, 0, 0}, 48, V6_CLASS, AL_ADDR_RESERVED}, /* benchmarking */
    {{0x3f, 0xff}, 20, V6_CLASS, AL_ADDR_RESERVED},                   /* documentation */
    {{0x20, 0x02}, 16, V6_EMBED_6TO4, AL_ADDR_PUBLIC},                /* 6to4 */
    {{0x20}, 3, V6_CLASS, AL_ADDR_PUBLIC},                            /* global unicast */
    {{0xfe, 0x80}, 10, V6_CLASS, AL_ADDR_LINK_LOCAL},
    {{0xfe, 0xc0}, 10, V6_CLASS, AL_ADDR_PRIVATE}, /* deprecated site-local */
    {{0xfc}, 7, V6_CLASS, AL_ADDR_PRIVATE},        /* unique-local */
    {{0xff}, 8, V6_CLASS, AL_ADDR_MULTICAST},
    {{0}, 0, V6_CLASS, AL_ADDR_RESERVED}, /* nothing else is allocated for unicast */
};

static int v6_in(const uint8_t *a, const uint8_t *net, int bits)
{
    int full = bits / 8, rest = bits % 8;
    if (memcmp(a, net, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

static enum al_addr_class classify_v6(const uint8_t *a)
{
    for (size_t i = 0; i < sizeof v6_ranges / sizeof v6_ranges[0]; i++) {
        const v6_range *r = &v6_ranges[i];
        if (!v6_in(a, r->net, r->bits))
            continue;
        uint32_t v4;
        switch (r->kind) {
        case V6_CLASS:
            return r->cls;
        case V6_EMBED_LOW32:
            v4 = (uint32_t)a[12] << 24 | (uint32_t)a[13] << 16 | (uint32_t)a[14] << 8 | a[15];
            return classify_v4(v4);
        case V6_EMBED_6TO4:
            v4 = (uint32_t)a[2] << 24 | (uint32_t)a[3] << 16 | (uint32_t)a[4] << 8 | a[5];
            return classify_v4(v4);
        }
    }
    return AL_ADDR_RESERVED;
}

enum al_addr_class al_egress_classify(const struct sockaddr *sa)
{
    if (!sa)
        return AL_ADDR_RESERVED;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return classify_v4(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return classify_v6(in6->sin6_addr.s6_addr);
    }
    return AL_ADDR_RESERVED; /* not an internet address: never an upstream */
}

int al_egress_guard_public(const struct sockaddr *sa, void *arg)
{
    (void)arg;
    return al_egress_classify(sa) == AL_ADDR_PUBLIC;
}

const char *al_egress_class_name(enum al_addr_class c)
{
    switch (c) {
    case AL_ADDR_PUBLIC:
        return "public";
    case AL_ADDR_LOOPBACK:
        return "loopback";
    case AL_ADDR_PRIVATE:
        return "private";
    case AL_ADDR_LINK_LOCAL:
        return "link-local";
    case AL_ADDR_CGNAT:
        return "cgnat";
    case AL_ADDR_MULTICAST:
        return "multicast";
    case AL_ADDR_RESERVED:
        return "reserved";
    }
    return "unknown";
}

/* ---- the resolver --------------------------------------------------------- */

#define AL_RESOLVER_CACHE_MAX 4096 /* entries per worker */
#define AL_RESOLVER_BUCKETS   1024 /* power of two */
#define AL_RESOLVER_TTL_MIN   1.0
#define AL_RESOLVER_TTL_MAX   300.0
#define AL_RESOLVER_HOST_MAX  254 /* 253 + an optional trailing dot */

typedef struct cache_entry {
    char host[AL_RESOLVER_HOST_MAX + 1]; /* lower-case */
    uint64_t hash;
    ev_tstamp expires;
    int32_t next; /* chain in the bucket; -1 ends it */
    /* The first non-public class among the answers, AL_ADDR_PUBLIC when none. */
    enum al_addr_class worst;
    char refused_text[INET6_ADDRSTRLEN]; /* the address of class `worst`, for messages */
    struct sockaddr_storage addr;        /* the preferred answer, port 0 */
    socklen_t addr_len;
} cache_entry;

typedef struct sock_watch {
    ev_io io;
    struct sock_watch *next;
    al_resolver *r;
} sock_watch;

typedef struct query {
    al_resolver *r;
    struct query *prev, *next; /* pending list */
    char host[AL_RESOLVER_HOST_MAX + 1];
    uint16_t port;
    int allow_private;
    int cancelled;
    int *sync_done; /* set while inside ares_getaddrinfo(): the callback ran there */
    al_resolve_cb cb;
    void *arg;
} query;

struct al_resolver {
    struct ev_loop *loop; /* borrowed */
    ares_channel ch;
    ev_timer timer;
    sock_watch *socks; /* owned list */
    query *pending;    /* owned list */
    size_t pending_count;
    cache_entry *cache; /* owned; cache_count used, cache_cap allocated */
    size_t cache_count, cache_cap;
    int32_t buckets[AL_RESOLVER_BUCKETS];
};

static uint64_t hash_host(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static cache_entry *cache_find(al_resolver *r, const char *host, uint64_t h)
{
    for (int32_t i = r->buckets[h & (AL_RESOLVER_BUCKETS - 1)]; i >= 0; i = r->cache[i].next)
        if (r->cache[i].hash == h && strcmp(r->cache[i].host, host) == 0)
            return &r->cache[i];
    return NULL;
}

static void cache_unlink(al_resolver *r, int32_t idx)
{
    int32_t *p = &r->buckets[r->cache[idx].hash & (AL_RESOLVER_BUCKETS - 1)];
    while (*p >= 0 && *p != idx)
        p = &r->cache[*p].next;
    if (*p == idx)
        *p = r->cache[idx].next;
}

/* A slot for a new entry: grow up to the bound, then reuse the entry that expires
 * first (expired ones first of all). The slot is unlinked; NULL on NOMEM. */
static cache_entry *cache_slot(al_resolver *r)
{
    if (r->cache_count < r->cache_cap)
        return &r->cache[r->cache_count++];
    if (r->cache_cap < AL_RESOLVER_CACHE_MAX) {
        size_t cap = r->cache_cap ? r->cache_cap * 2 : 64;
        if (cap > AL_RESOLVER_CACHE_MAX)
            cap = AL_RESOLVER_CACHE_MAX;
        cache_entry *c = realloc(r->cache, cap * sizeof *c);
        if (!c)
            return NULL;
        r->cache = c;
        r->cache_cap = cap;
        return &r->cache[r->cache_count++];
    }
    size_t victim = 0;
    for (size_t i = 1; i < r->cache_count; i++)
        if (r->cache[i].expires < r->cache[victim].expires)
            victim = i;
    cache_unlink(r, (int32_t)victim);
    return &r->cache[victim];
}

static void cache_clear(al_resolver *r)
{
    r->cache_count = 0;
    for (size_t i = 0; i < AL_RESOLVER_BUCKETS; i++)
        r->buckets[i] = -1;
}

static void addr_text(const struct sockaddr *sa, char *out, size_t n)
{
    if (sa->sa_family == AF_INET && n >= INET_ADDRSTRLEN) {
        /* dotted quad by appends: glibc's inet_ntop formats IPv4 with sprintf (~1.7k
         * instructions, once per request) */
        const unsigned char *b =
            (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        size_t k = 0;
        for (int i = 0; i < 4; i++) {
            if (i)
                out[k++] = '.';
            k += al_fmt_u64(out + k, b[i]);
        }
        out[k] = '\0';
        return;
    }
    const void *a = sa->sa_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (!inet_ntop(sa->sa_family, a, out, (socklen_t)n))
        out[0] = '\0';
}

/* Fills res from a checked address `sa`. When refused, only addr_text is set (to
 * `refused_text`, the offending answer, or to sa's text): there is no address to
 * connect to. */
static void result_from(al_resolve_result *res, const struct sockaddr *sa, socklen_t len,
                        enum al_addr_class worst, const char *refused_text, uint16_t port,
                        int allow_private)
{
    memset(res, 0, sizeof *res);
    if (worst != AL_ADDR_PUBLIC && !allow_private) {
        res->err = AL_ERR_EGRESS;
        res->refused_class = worst;
        if (refused_text)
            snprintf(res->addr_text, sizeof res->addr_text, "%s", refused_text);
        else
            addr_text(sa, res->addr_text, sizeof res->addr_text);
        return;
    }
    memcpy(&res->addr, sa, len);
    res->addr_len = len;
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)&res->addr)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&res->addr)->sin6_port = htons(port);
    addr_text(sa, res->addr_text, sizeof res->addr_text);
    res->err = AL_OK;
}

static void fail_now(al_resolve_cb cb, void *arg, int err)
{
    al_resolve_result res;
    memset(&res, 0, sizeof res);
    res.err = err;
    cb(arg, &res);
}

/* ---- c-ares on libev ------------------------------------------------------ */

static void update_timer(al_resolver *r)
{
    struct timeval tv, *tvp = ares_timeout(r->ch, NULL, &tv);
    ev_timer_stop(r->loop, &r->timer);
    if (tvp) {
        ev_timer_set(&r->timer, (ev_tstamp)tvp->tv_sec + (ev_tstamp)tvp->tv_usec / 1e6, 0.);
        ev_timer_start(r->loop, &r->timer);
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    sock_watch *s = (sock_watch *)w;
    al_resolver *r = s->r;
    ares_process_fd(r->ch, (revents & EV_READ) ? w->fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? w->fd : ARES_SOCKET_BAD);
    update_timer(r);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    al_resolver *r = (al_resolver *)((char *)w - offsetof(al_resolver, timer));
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    update_timer(r);
}

/* c-ares tells us which sockets to watch for what; a socket it closes arrives here
 * with neither readable nor writable. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    al_resolver *r = data;
    sock_watch **p = &r->socks;
    while (*p && (*p)->io.fd != fd)
        p = &(*p)->next;
    sock_watch *s = *p;
    if (!readable && !writable) {
        if (s) {
            ev_io_stop(r->loop, &s->io);
            *p = s->next;
            free(s);
        }
        return;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return; /* the query then times out through the timer: AL_ERR_DNS */
        s->r = r;
        s->next = r->socks;
        r->socks = s;
        ev_io_init(&s->io, on_io, fd, 0);
    }
    ev_io_stop(r->loop, &s->io);
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(r->loop, &s->io);
}

static void query_unlink(al_resolver *r, query *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->pending = q->next;
    if (q->next)
        q->next->prev = q->prev;
    r->pending_count--;
}

static ev_tstamp clamp_ttl(int ttl)
{
    ev_tstamp t = ttl;
    if (t < AL_RESOLVER_TTL_MIN)
        t = AL_RESOLVER_TTL_MIN;
    if (t > AL_RESOLVER_TTL_MAX)
        t = AL_RESOLVER_TTL_MAX;
    return t;
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    query *q = arg;
    al_resolver *r = q->r;
    al_resolve_result res;
    memset(&res, 0, sizeof res);
    res.err = AL_ERR_DNS;

    if (q->sync_done)
        *q->sync_done = 1;
    query_unlink(r, q);
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        q->cancelled = 1; /* the resolver is going away: no callbacks then */
    } else if (status == ARES_SUCCESS && ai) {
        /* Every answer is checked; the first IPv4 is preferred, else the first IPv6. */
        const struct ares_addrinfo_node *pick = NULL, *first6 = NULL;
        enum al_addr_class worst = AL_ADDR_PUBLIC;
        char refused[INET6_ADDRSTRLEN] = "";
        int ttl = (int)AL_RESOLVER_TTL_MAX;
        for (const struct ares_addrinfo_node *n = ai->nodes; n; n = n->ai_next) {
            if (n->ai_family != AF_INET && n->ai_family != AF_INET6)
                continue;
            enum al_addr_class c = al_egress_classify(n->ai_addr);
            if (c != AL_ADDR_PUBLIC && worst == AL_ADDR_PUBLIC) {
                worst = c;
                addr_text(n->ai_addr, refused, sizeof refused);
            }
            if (n->ai_ttl < ttl)
                ttl = n->ai_ttl;
            if (n->ai_family == AF_INET && !pick)
                pick = n;
            if (n->ai_family == AF_INET6 && !first6)
                first6 = n;
        }
        for (const struct ares_addrinfo_cname *c = ai->cnames; c; c = c->next)
            if (c->ttl < ttl)
                ttl = c->ttl;
        if (!pick)
            pick = first6;
        if (pick) {
            uint64_t h = hash_host(q->host);
            cache_entry *e = cache_find(r, q->host, h);
            if (!e && (e = cache_slot(r)) != NULL) {
                memcpy(e->host, q->host, sizeof e->host);
                e->hash = h;
                e->next = r->buckets[h & (AL_RESOLVER_BUCKETS - 1)];
                r->buckets[h & (AL_RESOLVER_BUCKETS - 1)] = (int32_t)(e - r->cache);
            }
            if (e) {
                e->expires = ev_now(r->loop) + clamp_ttl(ttl);
                e->worst = worst;
                memcpy(e->refused_text, refused, sizeof refused);
                memset(&e->addr, 0, sizeof e->addr);
                memcpy(&e->addr, pick->ai_addr, pick->ai_addrlen);
                e->addr_len = pick->ai_addrlen;
            }
            result_from(&res, pick->ai_addr, pick->ai_addrlen, worst, refused, q->port,
                        q->allow_private);
        }
    }
    if (ai)
        ares_freeaddrinfo(ai);
    if (!q->cancelled)
        q->cb(q->arg, &res);
    free(q);
}

/* ---- public API ----------------------------------------------------------- */

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_rc;
static void ares_init_once(void)
{
    ares_init_rc = ares_library_init(ARES_LIB_INIT_ALL);
}

int al_resolver_new(struct ev_loop *loop, al_resolver **out)
{
    return al_resolver_new_ex(loop, 0, out);
}

int al_resolver_new_ex(struct ev_loop *loop, unsigned flags, al_resolver **out)
{
    int rc = AL_ERR_NOMEM;
    pthread_once(&ares_once, ares_init_once);
    if (ares_init_rc != ARES_SUCCESS)
        return AL_ERR_DNS;
    al_resolver *r = calloc(1, sizeof *r);
    if (!r)
        return AL_ERR_NOMEM;
    r->loop = loop;
    cache_clear(r);
    ev_timer_init(&r->timer, on_timer, 0., 0.);

    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = r;
    o.timeout = 2000; /* ms per try: a dead resolver costs at most ~4 s, not 20 */
    o.tries = 2;
    /* /etc/hosts first, then DNS; "b" alone never reads the hosts file */
    o.lookups = (char *)(flags & AL_RESOLVER_DNS_ONLY ? "b" : "fb");
    int st = ares_init_options(&r->ch, &o,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                                   ARES_OPT_LOOKUPS);
    if (st != ARES_SUCCESS) {
        rc = st == ARES_ENOMEM ? AL_ERR_NOMEM : AL_ERR_DNS;
        goto fail;
    }
    *out = r;
    return AL_OK;
fail:
    free(r);
    return rc;
}

void al_resolver_free(al_resolver *r)
{
    if (!r)
        return;
    /* Pending queries get ARES_EDESTRUCTION: freed there, no user callbacks. */
    ares_destroy(r->ch);
    ev_timer_stop(r->loop, &r->timer);
    while (r->socks) {
        sock_watch *s = r->socks;
        r->socks = s->next;
        ev_io_stop(r->loop, &s->io);
        free(s);
    }
    free(r->cache);
    free(r);
}

/* An IPv4 literal in any form the C library and curl accept ("127.1", "0x7f.0.0.1",
 * "2130706433"), so a spelling cannot slip a private address past the check. */
static int parse_v4_literal(const char *h, struct in_addr *a)
{
    for (const char *p = h; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || *p == 'x' || *p == '.'))
            return 0;
    return al_fmt_read_ipv4(h, &a->s_addr) || inet_aton(h, a) != 0;
}

void *al_resolver_resolve(al_resolver *r, const char *host, uint16_t port, int allow_private,
                          al_resolve_cb cb, void *arg)
{
    char name[AL_RESOLVER_HOST_MAX + 1];
    size_t n = host ? strlen(host) : 0;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
    }
    if (n == 0 || n > AL_RESOLVER_HOST_MAX) {
        fail_now(cb, arg, AL_ERR_DNS);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c <= ' ' || c == 0x7f) {
            fail_now(cb, arg, AL_ERR_DNS);
            return NULL;
        }
        name[i] = c;
    }
    name[n] = '\0';

    /* Literal addresses: no DNS, same check. */
    al_resolve_result res;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    memset(&in4, 0, sizeof in4);
    memset(&in6, 0, sizeof in6);
    if (parse_v4_literal(name, &in4.sin_addr)) {
        in4.sin_family = AF_INET;
        const struct sockaddr *sa = (const struct sockaddr *)&in4;
        result_from(&res, sa, sizeof in4, al_egress_classify(sa), NULL, port, allow_private);
        cb(arg, &res);
        return NULL;
    }
    if (strchr(name, ':')) {
        if (inet_pton(AF_INET6, name, &in6.sin6_addr) != 1) {
            fail_now(cb, arg, AL_ERR_DNS); /* incl. zone ids: never an upstream */
            return NULL;
        }
        in6.sin6_family = AF_INET6;
        const struct sockaddr *sa = (const struct sockaddr *)&in6;
        result_from(&res, sa, sizeof in6, al_egress_classify(sa), NULL, port, allow_private);
        cb(arg, &res);
        return NULL;
    }
    /* RFC 6761: names under .invalid never resolve; do not ask anyone. */
    size_t m = name[n - 1] == '.' ? n - 1 : n;
    if ((m == 7 && memcmp(name, "invalid", 7) == 0) ||
        (m > 8 && memcmp(name + m - 8, ".invalid", 8) == 0)) {
        fail_now(cb, arg, AL_ERR_DNS);
        return NULL;
    }
    /* RFC 6761: names under .localhost are loopback, whatever a DNS server says.
     * ("localhost" itself comes from /etc/hosts like any other name.) */
    if (m > 10 && memcmp(name + m - 10, ".localhost", 10) == 0) {
        in4.sin_family = AF_INET;
        in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        result_from(&res, (const struct sockaddr *)&in4, sizeof in4, AL_ADDR_LOOPBACK, NULL, port,
                    allow_private);
        cb(arg, &res);
        return NULL;
    }

    const cache_entry *e = cache_find(r, name, hash_host(name));
    if (e && e->expires > ev_now(r->loop)) {
        result_from(&res, (const struct sockaddr *)&e->addr, e->addr_len, e->worst, e->refused_text,
                    port, allow_private);
        cb(arg, &res);
        return NULL;
    }

    query *q = calloc(1, sizeof *q);
    if (!q) {
        fail_now(cb, arg, AL_ERR_NOMEM);
        return NULL;
    }
    q->r = r;
    memcpy(q->host, name, n + 1);
    q->port = port;
    q->allow_private = allow_private;
    q->cb = cb;
    q->arg = arg;
    q->next = r->pending;
    if (r->pending)
        r->pending->prev = q;
    r->pending = q;
    r->pending_count++;

    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC; /* both families: every answer is checked */
    hints.ai_flags = ARES_AI_NOSORT;
    /* c-ares may answer before returning (hosts file, errors): then the callback
     * has run and q is gone. A local flag, so a lookup started from inside a
     * callback cannot confuse the outer one. */
    int done = 0;
    q->sync_done = &done;
    ares_getaddrinfo(r->ch, name, NULL, &hints, on_addrinfo, q);
    if (!done)
        q->sync_done = NULL;
    update_timer(r);
    return done ? NULL : q;
}

void al_resolver_cancel(al_resolver *r, void *handle)
{
    if (!r || !handle)
        return;
    /* c-ares cannot drop one query; it finishes and is freed without a callback. */
    for (query *q = r->pending; q; q = q->next)
        if (q == handle) {
            q->cancelled = 1;
            return;
        }
}

int al_resolver_set_servers(al_resolver *r, const char *servers_csv)
{
    if (!r || !servers_csv)
        return AL_ERR_INVAL;
    int st = ares_set_servers_ports_csv(r->ch, servers_csv);
    if (st != ARES_SUCCESS)
        return st == ARES_ENOMEM ? AL_ERR_NOMEM : AL_ERR_INVAL;
    cache_clear(r);
    return AL_OK;
}

size_t al_resolver_pending(const al_resolver *r)
{
    return r ? r->pending_count : 0;
}
