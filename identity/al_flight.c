/* al_flight: refreshable network values with single flight (see al_flight.h).
 *
 * Owns: the entry table (a small array searched by a precomputed hash: a process has
 * a handful of providers, discovery URLs and JWKS), every entry's value reference and
 * key_data copy, and one list of waiters for the whole table.
 *
 * Invariants:
 *  - one mutex covers the table, the entries and the waiter list; it is never held
 *    while a load starts or a callback runs;
 *  - an entry with a load in flight or with waiters is never evicted or cleared;
 *  - a waiter belongs to one load (its entry's load_seq when it registered), so a
 *    completion never answers the waiters of a later load;
 *  - a waiter is WAITING until complete() takes it (CALLING), and is freed after its
 *    callback returns; cancel() of a CALLING waiter on another thread waits for it. */
#include "al_flight.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- engine ------------------------------------------------------------------------ */

const char *al_refresh_action_to_str(enum al_refresh_action a)
{
    switch (a) {
    case AL_REFRESH_USE:
        return "use";
    case AL_REFRESH_USE_AND_LOAD:
        return "use_and_load";
    case AL_REFRESH_LOAD_AND_WAIT:
        return "load_and_wait";
    case AL_REFRESH_WAIT:
        return "wait";
    case AL_REFRESH_FAIL:
        return "fail";
    }
    return "?";
}

enum al_refresh_action al_refresh_decide(al_refresh *r, int64_t now, int force,
                                         int64_t min_force_ms)
{
    int usable = r->has_value && now < r->expires_at;
    if (usable && force && now - r->fetched_at < min_force_ms)
        force = 0; /* a value this young is what the server has: loading again is a storm */
    if (usable && !force) {
        if (now >= r->refresh_at && !r->loading && now >= r->retry_at) {
            r->loading = 1;
            return AL_REFRESH_USE_AND_LOAD;
        }
        return AL_REFRESH_USE;
    }
    if (r->loading)
        return AL_REFRESH_WAIT;
    if (now < r->retry_at) {
        /* backing off: a forced reload of a usable value quietly keeps the value */
        return usable ? AL_REFRESH_USE : AL_REFRESH_FAIL;
    }
    r->loading = 1;
    return AL_REFRESH_LOAD_AND_WAIT;
}

void al_refresh_succeeded(al_refresh *r, int64_t now, int64_t refresh_after_ms,
                          int64_t usable_for_ms)
{
    r->has_value = 1;
    r->loading = 0;
    r->fetched_at = now;
    r->refresh_at = now + refresh_after_ms;
    r->expires_at = now + usable_for_ms;
    r->retry_at = 0;
    r->failures = 0;
}

int64_t al_refresh_failed(al_refresh *r, int64_t now, int64_t base_ms, int64_t max_ms)
{
    r->loading = 0;
    if (r->failures < 30)
        r->failures++;
    int64_t delay = base_ms;
    for (uint32_t i = 1; i < r->failures && delay < max_ms; i++)
        delay *= 2;
    if (delay > max_ms)
        delay = max_ms;
    r->retry_at = now + delay;
    return delay;
}

void al_refresh_drop(al_refresh *r)
{
    r->has_value = 0;
    r->expires_at = 0;
    r->refresh_at = 0;
}

/* ---- table ------------------------------------------------------------------------- */

typedef struct entry {
    char *key;
    uint64_t hash;
    void *key_data;
    void *value;
    uint64_t gen;      /* bumped by every new value */
    uint64_t load_seq; /* bumped by every load started */
    al_refresh st;
    int waiters;
    int last_err;
    char last_msg[256];
    int64_t last_used;
} entry;

enum waiter_state { W_WAITING = 0, W_CALLING };

typedef struct waiter {
    struct waiter *next;
    uint64_t id;
    entry *e;
    uint64_t load_seq;
    enum waiter_state state;
    pthread_t thread; /* W_CALLING: who runs the callback */
    al_flight_cb cb;
    void *arg;
} waiter;

struct al_flight {
    al_flight_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t called; /* a callback finished */
    entry **entries;
    size_t n, cap;
    waiter *waiters;
    uint64_t next_wait_id;
};

static int64_t mono_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t al_flight_now(const al_flight *f)
{
    return f->cfg.now_ms(f->cfg.clock_arg);
}

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

int al_flight_new(const al_flight_config *cfg, al_flight **out)
{
    if (!cfg || !cfg->load || !cfg->value_ops.retain || !cfg->value_ops.release)
        return AL_ERR_INVAL;
    al_flight *f = calloc(1, sizeof *f);
    if (!f)
        return AL_ERR_NOMEM;
    f->cfg = *cfg;
    if (!f->cfg.base_backoff_ms)
        f->cfg.base_backoff_ms = 1000;
    if (!f->cfg.max_backoff_ms)
        f->cfg.max_backoff_ms = 60000;
    if (!f->cfg.min_force_ms)
        f->cfg.min_force_ms = 10000;
    if (!f->cfg.max_entries)
        f->cfg.max_entries = 4096;
    if (!f->cfg.now_ms)
        f->cfg.now_ms = mono_ms;
    if (!f->cfg.name)
        f->cfg.name = "flight";
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->called, NULL);
    f->next_wait_id = 1;
    *out = f;
    return AL_OK;
}

static void entry_free(al_flight *f, entry *e)
{
    if (e->value)
        f->cfg.value_ops.release(e->value);
    if (e->key_data && f->cfg.key_data_free)
        f->cfg.key_data_free(e->key_data);
    free(e->key);
    free(e);
}

void al_flight_free(al_flight *f)
{
    if (!f)
        return;
    for (waiter *w = f->waiters, *nx; w; w = nx) {
        nx = w->next;
        free(w);
    }
    for (size_t i = 0; i < f->n; i++)
        entry_free(f, f->entries[i]);
    free(f->entries);
    pthread_cond_destroy(&f->called);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static entry *find(al_flight *f, const char *key, uint64_t h, size_t *idx)
{
    for (size_t i = 0; i < f->n; i++) {
        if (f->entries[i]->hash == h && strcmp(f->entries[i]->key, key) == 0) {
            if (idx)
                *idx = i;
            return f->entries[i];
        }
    }
    return NULL;
}

static void remove_at(al_flight *f, size_t i)
{
    entry_free(f, f->entries[i]);
    f->entries[i] = f->entries[--f->n];
}

/* Makes room by evicting the idle entry used longest ago. Lock held. */
static void evict_one(al_flight *f)
{
    size_t best = f->n;
    for (size_t i = 0; i < f->n; i++) {
        entry *e = f->entries[i];
        if (e->st.loading || e->waiters)
            continue;
        if (best == f->n || e->last_used < f->entries[best]->last_used)
            best = i;
    }
    if (best < f->n)
        remove_at(f, best);
}

static entry *create(al_flight *f, const char *key, uint64_t h, const void *key_data)
{
    if (f->n >= f->cfg.max_entries)
        evict_one(f);
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        entry **ne = realloc(f->entries, cap * sizeof *ne);
        if (!ne)
            return NULL;
        f->entries = ne;
        f->cap = cap;
    }
    entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->key = strdup(key);
    e->hash = h;
    if (key_data)
        e->key_data = f->cfg.key_data_dup ? f->cfg.key_data_dup(key_data) : (void *)key_data;
    if (!e->key || (key_data && !e->key_data)) {
        free(e->key);
        free(e);
        return NULL;
    }
    f->entries[f->n++] = e;
    return e;
}

static void start_load(al_flight *f, entry *e)
{
    /* The entry cannot go while it is loading, so its key and key_data stay valid. */
    f->cfg.load(f->cfg.load_arg, f, e->key, e->key_data);
}

/* Registers a waiter for e's current load. Lock held. */
static int add_waiter(al_flight *f, entry *e, al_flight_cb cb, void *arg, al_flight_result *res)
{
    waiter *w = calloc(1, sizeof *w);
    if (!w)
        return AL_ERR_NOMEM; /* the load still runs; this caller just fails */
    w->id = f->next_wait_id++;
    w->e = e;
    w->load_seq = e->load_seq;
    w->cb = cb;
    w->arg = arg;
    w->next = f->waiters;
    f->waiters = w;
    e->waiters++;
    res->wait_id = w->id;
    return AL_ERR_AGAIN;
}

/* The answer of an entry that is not loading. Lock held. */
static int answer_now(al_flight *f, entry *e, int64_t now, al_flight_result *res)
{
    if (e->st.has_value && now < e->st.expires_at) {
        f->cfg.value_ops.retain(e->value);
        res->value = e->value;
        res->gen = e->gen;
        return AL_OK;
    }
    snprintf(res->msg, sizeof res->msg, "%s", e->last_msg);
    return e->last_err ? e->last_err : AL_ERR_AGAIN;
}

int al_flight_get(al_flight *f, const char *key, const void *key_data, int force, al_flight_cb cb,
                  void *arg, al_flight_result *res)
{
    memset(res, 0, sizeof *res);
    uint64_t h = hash_key(key);
    int64_t now = al_flight_now(f);
    int rc;
    pthread_mutex_lock(&f->lock);
    entry *e = find(f, key, h, NULL);
    if (!e && !(e = create(f, key, h, key_data))) {
        pthread_mutex_unlock(&f->lock);
        return AL_ERR_NOMEM;
    }
    e->last_used = now;
    enum al_refresh_action a = al_refresh_decide(&e->st, now, force, f->cfg.min_force_ms);
    switch (a) {
    case AL_REFRESH_USE_AND_LOAD:
        e->load_seq++;
        /* fall through */
    case AL_REFRESH_USE:
        f->cfg.value_ops.retain(e->value);
        res->value = e->value;
        res->gen = e->gen;
        rc = AL_OK;
        break;
    case AL_REFRESH_FAIL:
        rc = answer_now(f, e, now, res);
        break;
    case AL_REFRESH_WAIT:
        rc = cb ? add_waiter(f, e, cb, arg, res) : AL_ERR_AGAIN;
        break;
    case AL_REFRESH_LOAD_AND_WAIT: {
        uint64_t seq = ++e->load_seq;
        pthread_mutex_unlock(&f->lock);
        start_load(f, e);
        /* The loader may have completed already (an immediate failure): then answer
         * now rather than call back before we return. */
        pthread_mutex_lock(&f->lock);
        e = find(f, key, h, NULL);
        if (e && e->st.loading && e->load_seq == seq)
            rc = cb ? add_waiter(f, e, cb, arg, res) : AL_ERR_AGAIN;
        else if (e)
            rc = answer_now(f, e, al_flight_now(f), res);
        else
            rc = AL_ERR_AGAIN;
        pthread_mutex_unlock(&f->lock);
        return rc;
    }
    default:
        rc = AL_ERR_INVAL;
        break;
    }
    pthread_mutex_unlock(&f->lock);
    if (a == AL_REFRESH_USE_AND_LOAD)
        start_load(f, e);
    return rc;
}

int al_flight_peek(al_flight *f, const char *key, al_flight_result *res)
{
    memset(res, 0, sizeof *res);
    int64_t now = al_flight_now(f);
    int rc = AL_ERR_NOTFOUND;
    pthread_mutex_lock(&f->lock);
    entry *e = find(f, key, hash_key(key), NULL);
    if (e && e->st.has_value && now < e->st.expires_at) {
        f->cfg.value_ops.retain(e->value);
        res->value = e->value;
        res->gen = e->gen;
        rc = AL_OK;
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

static waiter **find_waiter(al_flight *f, uint64_t id)
{
    for (waiter **pp = &f->waiters; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id)
            return pp;
    return NULL;
}

static void unlink_waiter(al_flight *f, waiter **pp)
{
    waiter *w = *pp;
    *pp = w->next;
    w->e->waiters--;
    free(w);
}

int al_flight_cancel(al_flight *f, uint64_t wait_id)
{
    int removed = 0;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        waiter **pp = find_waiter(f, wait_id);
        if (!pp)
            break;
        if ((*pp)->state == W_WAITING) {
            unlink_waiter(f, pp);
            removed = 1;
            break;
        }
        if (pthread_equal((*pp)->thread, pthread_self()))
            break; /* cancelled from inside its own callback */
        pthread_cond_wait(&f->called, &f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return removed;
}

void al_flight_complete(al_flight *f, const char *key, int err, void *value,
                        int64_t refresh_after_ms, int64_t usable_for_ms, const char *msg)
{
    uint64_t h = hash_key(key);
    int64_t now = al_flight_now(f);
    pthread_mutex_lock(&f->lock);
    entry *e = find(f, key, h, NULL);
    if (!e) { /* cannot happen: a loading entry is never evicted */
        pthread_mutex_unlock(&f->lock);
        if (value)
            f->cfg.value_ops.release(value);
        return;
    }
    uint64_t seq = e->load_seq;
    if (err == AL_OK && value) {
        if (e->value)
            f->cfg.value_ops.release(e->value);
        e->value = value;
        e->gen++;
        e->last_err = AL_OK;
        e->last_msg[0] = 0;
        al_refresh_succeeded(&e->st, now, refresh_after_ms, usable_for_ms);
    } else {
        if (value)
            f->cfg.value_ops.release(value);
        if (err == AL_OK)
            err = AL_ERR_PROTO;
        e->last_err = err;
        snprintf(e->last_msg, sizeof e->last_msg, "%s", msg ? msg : al_strerror(err));
        int64_t delay =
            al_refresh_failed(&e->st, now, f->cfg.base_backoff_ms, f->cfg.max_backoff_ms);
        int usable = e->st.has_value && now < e->st.expires_at;
        al_log(AL_LOG_WARN, "identity.fetch_failed",
               "cache=%s failures=%u backoff_ms=%lld serving_cached=%s reason=%s", f->cfg.name,
               e->st.failures, (long long)delay, usable ? "yes" : "no", e->last_msg);
    }
    /* The waiters of this load: the value if there is one usable, else the error. */
    int usable = e->st.has_value && now < e->st.expires_at;
    for (;;) {
        waiter *w = f->waiters;
        for (; w; w = w->next)
            if (w->e == e && w->load_seq == seq && w->state == W_WAITING)
                break;
        if (!w)
            break;
        w->state = W_CALLING;
        w->thread = pthread_self();
        void *v = usable ? e->value : NULL;
        uint64_t gen = e->gen;
        int werr = usable ? AL_OK : e->last_err;
        char wmsg[256];
        snprintf(wmsg, sizeof wmsg, "%s", usable ? "" : e->last_msg);
        if (v)
            f->cfg.value_ops.retain(v); /* the entry may get a new value meanwhile */
        pthread_mutex_unlock(&f->lock);
        w->cb(w->arg, werr, v, gen, wmsg);
        if (v)
            f->cfg.value_ops.release(v);
        pthread_mutex_lock(&f->lock);
        waiter **pp = find_waiter(f, w->id);
        if (pp)
            unlink_waiter(f, pp);
        pthread_cond_broadcast(&f->called);
    }
    pthread_mutex_unlock(&f->lock);
}

int al_flight_invalidate(al_flight *f, const char *key, uint64_t gen)
{
    int dropped = 0;
    pthread_mutex_lock(&f->lock);
    entry *e = find(f, key, hash_key(key), NULL);
    if (e && e->st.has_value && e->gen == gen) {
        al_refresh_drop(&e->st);
        e->st.retry_at = 0; /* a rejected value is no reason to wait: load now */
        dropped = 1;
    }
    pthread_mutex_unlock(&f->lock);
    return dropped;
}

int al_flight_forget(al_flight *f, const char *key)
{
    int done = 0;
    pthread_mutex_lock(&f->lock);
    entry *e = find(f, key, hash_key(key), NULL);
    if (e) {
        /* while a load runs, gets wait for it instead of taking the old value */
        al_refresh_drop(&e->st);
        e->st.retry_at = 0;
        e->st.failures = 0;
        done = 1;
    }
    pthread_mutex_unlock(&f->lock);
    return done;
}

void al_flight_clear(al_flight *f)
{
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n;) {
        entry *e = f->entries[i];
        if (e->st.loading || e->waiters)
            i++;
        else
            remove_at(f, i);
    }
    pthread_mutex_unlock(&f->lock);
}

void al_flight_sync_init(al_flight_sync *s, al_flight *f)
{
    memset(s, 0, sizeof *s);
    s->f = f;
    pthread_mutex_init(&s->m, NULL);
    pthread_cond_init(&s->c, NULL);
}

void al_flight_sync_cb(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    al_flight_sync *s = arg;
    (void)gen;
    pthread_mutex_lock(&s->m);
    s->err = err;
    s->value = value;
    if (value)
        s->f->cfg.value_ops.retain(value);
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    s->done = 1;
    pthread_cond_signal(&s->c);
    pthread_mutex_unlock(&s->m);
}

int al_flight_sync_wait(al_flight_sync *s, int rc, const al_flight_result *res, void **value,
                        char *errbuf, size_t errlen)
{
    *value = NULL;
    if (rc == AL_OK) {
        *value = res->value;
    } else if (rc == AL_ERR_AGAIN) {
        pthread_mutex_lock(&s->m);
        while (!s->done)
            pthread_cond_wait(&s->c, &s->m);
        pthread_mutex_unlock(&s->m);
        rc = s->err;
        *value = s->value;
        if (rc != AL_OK && errbuf)
            snprintf(errbuf, errlen, "%s", s->msg);
    } else if (errbuf) {
        snprintf(errbuf, errlen, "%s", res->msg);
    }
    pthread_cond_destroy(&s->c);
    pthread_mutex_destroy(&s->m);
    return rc;
}

void al_flight_release(al_flight *f, void *value)
{
    if (value)
        f->cfg.value_ops.release(value);
}

void al_flight_foreach(al_flight *f, void (*fn)(void *arg, const al_flight_info *info), void *arg)
{
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n; i++) {
        entry *e = f->entries[i];
        al_flight_info info = {.key = e->key,
                               .key_data = e->key_data,
                               .value = e->st.has_value ? e->value : NULL,
                               .gen = e->gen,
                               .state = e->st,
                               .waiters = e->waiters,
                               .last_err = e->last_err,
                               .last_msg = e->last_msg};
        fn(arg, &info);
    }
    pthread_mutex_unlock(&f->lock);
}
