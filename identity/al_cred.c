/* al_cred: the serve-side credential cache (see al_cred.h).
 *
 * Owns: the current snapshot (immutable after publication, refcounted), the watcher
 * thread that rebuilds it when the store's change counter moves or a grace period
 * ends, the pool round-robin counters and the 429 rests.
 *
 * Invariants:
 *  - a snapshot is never modified after it is published; it is freed (secrets wiped)
 *    when its last reference goes, the cache's own included;
 *  - `swap_lock` covers only "read c->current + increment its refcount" and the swap
 *    itself, so a reader can never increment a snapshot already freed. It is never
 *    held while decrypting or while a request runs;
 *  - a refresh that fails (wrong key, tampered row, database error) keeps the old
 *    snapshot and logs once per store generation, without secret bytes;
 *  - only the watcher thread touches the al_identity handle;
 *  - the watcher waits on the store's change descriptor when it has one (PostgreSQL
 *    LISTEN: a change by any replica wakes it at once) and still re-reads the change
 *    counter every LISTEN_POLL_MS, the fallback for what a reconnect missed; without
 *    one (SQLite, or PostgreSQL down) it polls every POLL_MS;
 *  - the store is never read on a worker thread: a down or slow database delays only
 *    the watcher, and the workers keep the last snapshot (degraded mode). */
#include "al_cred.h"
#include "al_identity.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include "al_store.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS   250
#define LISTEN_POLL_MS 1000
#define RR_SLOTS  64
#define REST_MAX  64
#define NAME_MAX_ 128

struct al_cred_snapshot {
    atomic_int refs;
    uint64_t generation;
    int64_t next_expiry;       /* unix s of the earliest grace end; 0 = none */
    al_identity_secret *items; /* owned; sorted by name, then current first, version desc */
    size_t n;
};

typedef struct rest_entry {
    char name[NAME_MAX_];
    int64_t until_ms;
} rest_entry;

struct al_cred_cache {
    char *state_dir;
    al_identity *id; /* watcher thread only; NULL until the store exists */
    pthread_mutex_t swap_lock;
    al_cred_snapshot *current; /* the cache holds one reference */
    pthread_t watcher;
    int watcher_started;
    int stop_fds[2]; /* a byte on [1] stops the watcher */
    atomic_int loaded; /* a snapshot came from the store, or there is no store yet */
    uint64_t failed_generation; /* last generation that failed to load (log once) */
    int have_failed;
    atomic_uint_least64_t failed_seen; /* failed_generation + 1 for readers, 0 = none */
    atomic_uint rr[RR_SLOTS];
    pthread_mutex_t rest_lock;
    rest_entry rests[REST_MAX];
    atomic_int rest_active; /* fast path: no lock when nobody rests */
    int64_t (*now_ms)(void *);
    void *now_arg;
};

static int64_t mono_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void al_cred_cache_set_clock(al_cred_cache *c, int64_t (*now_ms)(void *arg), void *arg)
{
    c->now_ms = now_ms ? now_ms : mono_ms;
    c->now_arg = arg;
}

static int item_cmp(const void *a, const void *b)
{
    const al_identity_secret *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    if (r)
        return r;
    if (x->current != y->current)
        return y->current - x->current;
    return x->version < y->version ? 1 : x->version > y->version ? -1 : 0;
}

static void snapshot_free(al_cred_snapshot *s)
{
    al_identity_secrets_free(s->items, s->n);
    free(s);
}

void al_cred_snapshot_release(al_cred_snapshot *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(s);
}

al_cred_snapshot *al_cred_cache_acquire(al_cred_cache *c)
{
    pthread_mutex_lock(&c->swap_lock);
    al_cred_snapshot *s = c->current;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&c->swap_lock);
    return s;
}

uint64_t al_cred_snapshot_generation(const al_cred_snapshot *s)
{
    return s->generation;
}

int al_cred_cache_failed_generation(al_cred_cache *c, uint64_t *generation)
{
    uint64_t v = atomic_load(&c->failed_seen);
    if (v == 0)
        return 0;
    *generation = v - 1;
    return 1;
}

static void publish(al_cred_cache *c, al_cred_snapshot *s)
{
    pthread_mutex_lock(&c->swap_lock);
    al_cred_snapshot *old = c->current;
    c->current = s;
    pthread_mutex_unlock(&c->swap_lock);
    al_cred_snapshot_release(old);
}

static al_cred_snapshot *snapshot_new(void)
{
    al_cred_snapshot *s = calloc(1, sizeof *s);
    if (s)
        atomic_init(&s->refs, 1);
    return s;
}

/* Builds a snapshot from the store. AL_ERR_NOTFOUND: no store yet. */
static int load(al_cred_cache *c, al_cred_snapshot **out)
{
    uint64_t gen = 0;
    int rc;
    if (!c->id) {
        rc = al_identity_open(c->state_dir, AL_IDENTITY_SECRETS, &c->id);
        if (rc != AL_OK)
            return rc;
    }
    if ((rc = al_identity_generation(c->id, &gen)) != AL_OK)
        return rc;
    al_cred_snapshot *s = snapshot_new();
    if (!s)
        return AL_ERR_NOMEM;
    s->generation = gen;
    rc = al_identity_load_secrets(c->id, &s->items, &s->n);
    if (rc == AL_ERR_KEY) {
        /* `rotate-master-key` may have replaced the key file: read it again once. */
        al_identity *fresh = NULL;
        if (al_identity_open(c->state_dir, AL_IDENTITY_SECRETS, &fresh) == AL_OK) {
            al_identity_close(c->id);
            c->id = fresh;
            rc = al_identity_load_secrets(c->id, &s->items, &s->n);
        }
    }
    if (rc != AL_OK) {
        free(s);
        return rc;
    }
    qsort(s->items, s->n, sizeof *s->items, item_cmp);
    for (size_t i = 0; i < s->n; i++)
        if (s->items[i].expires_at && (!s->next_expiry || s->items[i].expires_at < s->next_expiry))
            s->next_expiry = s->items[i].expires_at;
    *out = s;
    return AL_OK;
}

static int needs_reload(al_cred_cache *c, const al_cred_snapshot *cur)
{
    uint64_t gen = 0;
    if (!c->id)
        return 1; /* store may have appeared */
    if (cur->next_expiry && (int64_t)time(NULL) >= cur->next_expiry)
        return 1; /* a grace period ended: drop that version */
    if (al_identity_generation(c->id, &gen) != AL_OK)
        return 0;
    if (c->have_failed && gen == c->failed_generation)
        return 0; /* already failed on this state; wait for the next change */
    return gen != cur->generation;
}

static void refresh(al_cred_cache *c)
{
    al_cred_snapshot *cur = al_cred_cache_acquire(c), *next = NULL;
    if (needs_reload(c, cur)) {
        int rc = load(c, &next);
        if (rc == AL_OK || rc == AL_ERR_NOTFOUND)
            atomic_store(&c->loaded, 1);
        if (rc == AL_OK) {
            c->have_failed = 0;
            atomic_store(&c->failed_seen, 0);
            al_log(AL_LOG_INFO, "identity.reload", "generation=%llu versions=%zu",
                   (unsigned long long)next->generation, next->n);
            publish(c, next);
        } else if (rc != AL_ERR_NOTFOUND && c->id) {
            uint64_t gen = 0;
            al_identity_generation(c->id, &gen);
            if (!c->have_failed || gen != c->failed_generation)
                al_log(AL_LOG_ERROR, "identity.reload_failed",
                       "keeping the previous credentials: %s", al_strerror(rc));
            c->have_failed = 1;
            c->failed_generation = gen;
            atomic_store(&c->failed_seen, gen + 1);
        }
    }
    al_cred_snapshot_release(cur);
}

/* Sleeps until the stop byte, a change announced by the store, or the poll period. */
static int watcher_wait(al_cred_cache *c)
{
    al_store *st = c->id ? al_identity_store(c->id) : NULL;
    int fd = st && st->ops->change_fd ? st->ops->change_fd(st) : -1;
    /* A NOTIFY committed while the last refresh was reading reaches the session with
     * that read's last answer: libpq keeps it in its own queue and the socket stays
     * quiet. Take what is queued first; a change there is read now, not after
     * LISTEN_POLL_MS. */
    if (fd >= 0 && st->ops->change_drain && st->ops->change_drain(st, NULL, NULL) > 0)
        return 0;
    struct pollfd p[2] = {{.fd = c->stop_fds[0], .events = POLLIN},
                          {.fd = fd, .events = POLLIN}};
    int n = poll(p, fd >= 0 ? 2 : 1, fd >= 0 ? LISTEN_POLL_MS : POLL_MS);
    if (n > 0 && p[0].revents)
        return 1;
    if (n > 0 && fd >= 0 && p[1].revents)
        st->ops->change_drain(st, NULL, NULL); /* the counter is read next either way */
    return 0;
}

static void *watcher_main(void *arg)
{
    al_cred_cache *c = arg;
    while (!watcher_wait(c))
        refresh(c);
    return NULL;
}

int al_cred_cache_ready(al_cred_cache *c)
{
    return c && atomic_load(&c->loaded);
}

int al_cred_cache_open(const char *state_dir, al_cred_cache **out)
{
    al_cred_cache *c = calloc(1, sizeof *c);
    al_cred_snapshot *s = NULL;
    int rc;
    if (!c)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&c->swap_lock, NULL);
    pthread_mutex_init(&c->rest_lock, NULL);
    c->stop_fds[0] = c->stop_fds[1] = -1;
    c->now_ms = mono_ms;
    if (pipe2(c->stop_fds, O_CLOEXEC) != 0) {
        rc = AL_ERR_IO;
        goto fail;
    }
    c->state_dir = strdup(state_dir);
    if (!c->state_dir) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    rc = load(c, &s);
    if (rc == AL_OK || rc == AL_ERR_NOTFOUND)
        atomic_store(&c->loaded, 1);
    if (rc == AL_ERR_NOTFOUND || rc == AL_ERR_DB) {
        /* No store yet, or its database is unreachable (PostgreSQL down): start with no
         * credentials; the watcher picks the store up when it appears or comes back,
         * and al_cred_cache_ready says 0 until a database that is there was read. */
        s = snapshot_new();
        rc = s ? AL_OK : AL_ERR_NOMEM;
    }
    if (rc != AL_OK)
        goto fail;
    c->current = s;
    if (pthread_create(&c->watcher, NULL, watcher_main, c) != 0) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    c->watcher_started = 1;
    *out = c;
    return AL_OK;
fail:
    al_cred_cache_close(c);
    return rc;
}

void al_cred_cache_close(al_cred_cache *c)
{
    if (!c)
        return;
    if (c->watcher_started) {
        char b = 1;
        while (write(c->stop_fds[1], &b, 1) < 0 && errno == EINTR)
            ;
        pthread_join(c->watcher, NULL);
    }
    if (c->stop_fds[0] >= 0) {
        close(c->stop_fds[0]);
        close(c->stop_fds[1]);
    }
    al_cred_snapshot_release(c->current);
    al_identity_close(c->id);
    pthread_mutex_destroy(&c->swap_lock);
    pthread_mutex_destroy(&c->rest_lock);
    free(c->state_dir);
    free(c);
}

static void to_view(const al_identity_secret *it, al_secret_view *out)
{
    memset(out, 0, sizeof *out);
    out->provider = it->name;
    out->version = it->version;
    out->kind = it->kind;
    out->environment = it->environment;
    out->value = it->value;
    out->len = it->len;
    out->session_token = it->session_token;
    out->session_token_len = it->session_token_len;
    out->config_json = it->config_json;
}

/* Index of the first item named `provider` (its current version), or -1. */
static long find_first(const al_cred_snapshot *s, const char *provider)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->items[mid].name, provider) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && strcmp(s->items[lo].name, provider) == 0 ? (long)lo : -1;
}

int al_cred_lookup(const al_cred_snapshot *s, const char *provider, al_secret_view *out)
{
    long i = s && provider ? find_first(s, provider) : -1;
    if (i < 0 || !s->items[i].current)
        return AL_ERR_NOTFOUND;
    to_view(&s->items[i], out);
    return AL_OK;
}

/* A usable version of `provider`: exactly `version` (older 0), or the newest one below
 * `version` that is not current (older 1). A non-current version past its grace end is
 * never returned, even if the watcher has not dropped it yet. */
static int lookup_usable(const al_cred_snapshot *s, const char *provider, uint32_t version,
                         int older, al_secret_view *out)
{
    long i = s && provider ? find_first(s, provider) : -1;
    if (i < 0)
        return AL_ERR_NOTFOUND;
    int64_t now = (int64_t)time(NULL);
    /* Items: current first, then older versions newest first. */
    for (size_t j = (size_t)i; j < s->n && strcmp(s->items[j].name, provider) == 0; j++) {
        const al_identity_secret *it = &s->items[j];
        if (older ? (it->current || it->version >= version) : it->version != version)
            continue;
        if (!it->current && it->expires_at <= now) {
            if (older)
                continue;
            return AL_ERR_NOTFOUND; /* grace over */
        }
        to_view(it, out);
        return AL_OK;
    }
    return AL_ERR_NOTFOUND;
}

int al_cred_lookup_version(const al_cred_snapshot *s, const char *provider, uint32_t version,
                           al_secret_view *out)
{
    return lookup_usable(s, provider, version, 0, out);
}

int al_cred_lookup_previous(const al_cred_snapshot *s, const char *provider, uint32_t version,
                            al_secret_view *out)
{
    return lookup_usable(s, provider, version, 1, out);
}

static int is_resting(al_cred_cache *c, const char *provider, int64_t now)
{
    int r = 0;
    if (atomic_load_explicit(&c->rest_active, memory_order_acquire) == 0)
        return 0;
    pthread_mutex_lock(&c->rest_lock);
    for (size_t i = 0; i < REST_MAX; i++)
        if (c->rests[i].until_ms > now && strcmp(c->rests[i].name, provider) == 0) {
            r = 1;
            break;
        }
    pthread_mutex_unlock(&c->rest_lock);
    return r;
}

void al_cred_rest(al_cred_cache *c, const char *provider, uint32_t retry_after_s)
{
    if (!provider || strlen(provider) >= NAME_MAX_)
        return;
    if (retry_after_s > 3600)
        retry_after_s = 3600; /* a peer must not park a key for days */
    int64_t now = c->now_ms(c->now_arg), until = now + (int64_t)retry_after_s * 1000;
    int active = 0;
    rest_entry *slot = NULL, *oldest = &c->rests[0];
    pthread_mutex_lock(&c->rest_lock);
    for (size_t i = 0; i < REST_MAX; i++) {
        rest_entry *e = &c->rests[i];
        if (e->until_ms > now && strcmp(e->name, provider) == 0)
            slot = e;
        if (e->until_ms < oldest->until_ms)
            oldest = e;
    }
    if (slot) {
        if (until > slot->until_ms)
            slot->until_ms = until;
    } else {
        slot = oldest; /* a free (expired) slot, else the one ending soonest */
        snprintf(slot->name, sizeof slot->name, "%s", provider);
        slot->until_ms = until;
    }
    for (size_t i = 0; i < REST_MAX; i++)
        if (c->rests[i].until_ms > now)
            active++;
    atomic_store_explicit(&c->rest_active, active, memory_order_release);
    pthread_mutex_unlock(&c->rest_lock);
}

static unsigned slot_of(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; p && *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % RR_SLOTS;
}

int al_cred_select(al_cred_cache *c, const al_cred_snapshot *s, const al_target *t, int attempt,
                   al_secret_view *out)
{
    if (!t)
        return AL_ERR_INVAL;
    if (attempt == 1) {
        if (!t->auth.fallback_provider)
            return AL_ERR_NOTFOUND;
        return al_cred_lookup(s, t->auth.fallback_provider, out);
    }
    if (attempt != 0)
        return AL_ERR_INVAL;
    size_t n = t->auth.provider_count;
    if (n == 0)
        return AL_ERR_NOTFOUND;
    unsigned start =
        n == 1 ? 0 : atomic_fetch_add_explicit(&c->rr[slot_of(t->name)], 1, memory_order_relaxed);
    int64_t now = c->now_ms(c->now_arg);
    int rested = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = t->auth.providers[(start + i) % n];
        if (is_resting(c, p, now)) {
            rested = 1;
            continue;
        }
        if (al_cred_lookup(s, p, out) == AL_OK)
            return AL_OK;
    }
    return rested ? AL_ERR_AGAIN : AL_ERR_NOTFOUND;
}

int al_cred_pool_awake(al_cred_cache *c, const al_cred_snapshot *s, const al_target *t,
                       const char *except)
{
    if (!c || !s || !t)
        return 0;
    int64_t now = c->now_ms(c->now_arg);
    al_secret_view sv;
    for (size_t i = 0; i < t->auth.provider_count; i++) {
        const char *p = t->auth.providers[i];
        if ((!except || strcmp(p, except) != 0) && !is_resting(c, p, now) &&
            al_cred_lookup(s, p, &sv) == AL_OK)
            return 1;
    }
    return 0;
}

uint32_t al_cred_rest_left_s(al_cred_cache *c, const al_target *t)
{
    if (!c || !t || atomic_load_explicit(&c->rest_active, memory_order_acquire) == 0)
        return 0;
    int64_t now = c->now_ms(c->now_arg), soonest = 0;
    pthread_mutex_lock(&c->rest_lock);
    for (size_t p = 0; p < t->auth.provider_count; p++)
        for (size_t i = 0; i < REST_MAX; i++) {
            const rest_entry *e = &c->rests[i];
            if (e->until_ms > now && strcmp(e->name, t->auth.providers[p]) == 0 &&
                (!soonest || e->until_ms < soonest))
                soonest = e->until_ms;
        }
    pthread_mutex_unlock(&c->rest_lock);
    /* rounded up: a client that waits this long finds a key awake */
    return soonest ? (uint32_t)((soonest - now + 999) / 1000) : 0;
}

size_t al_cred_providers(const al_cred_snapshot *s, al_cred_provider_info *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; s && i < s->n; i++) {
        const al_identity_secret *it = &s->items[i];
        if (!it->current)
            continue;
        if (n < cap)
            out[n] = (al_cred_provider_info){.name = it->name,
                                             .kind = it->kind,
                                             .environment = it->environment,
                                             .version = it->version,
                                             .created_at = it->created_at,
                                             .fingerprint = it->fingerprint,
                                             .rotation_max_age = it->rotation_max_age};
        n++;
    }
    return n;
}
