/* al_flight: a process-wide, thread-safe cache of values that come from the network
 * and must be refreshed — OpenID / RFC 8414 metadata, JWKS documents (al_oidc.h) and
 * OAuth access tokens (al_token.h) — with single flight, refresh ahead, back-off and
 * stale-while-failing.
 *
 * Two layers:
 *  - al_refresh_*: the state machine of one entry, a pure engine (values in, action
 *    out, the clock passed in), unit-tested with an injected clock;
 *  - al_flight: a keyed table of entries over that engine, with the waiters of each
 *    entry. It does no I/O itself: a `load` function given at creation starts a fetch
 *    (on another thread, or synchronously) and reports with al_flight_complete().
 *
 * Rules (what callers can rely on):
 *  - single flight: however many callers ask for a key that has no usable value, one
 *    load runs; the others wait (al_flight_get() answers AL_ERR_AGAIN and calls their
 *    callback when the load ends);
 *  - refresh ahead: past `refresh_at` a get still answers the cached value at once and
 *    starts one load in the background, so a steady stream never waits;
 *  - a value stays usable until `expires_at` even while loads fail; failed loads back
 *    off exponentially (base_backoff_ms doubling up to max_backoff_ms), and while
 *    backing off a get with no usable value fails at once with the last error (no
 *    retry storm against a failing server);
 *  - force (e.g. a JWKS without the token's kid) loads again unless the value is younger
 *    than min_force_ms; al_flight_invalidate(key, gen) drops exactly the value of
 *    generation `gen` (an upstream rejected that token), so N concurrent rejections of
 *    one token cause one drop and one load;
 *  - callbacks run on the thread that called al_flight_complete() (the loader's), never
 *    with the table lock held, and never before al_flight_get() has returned AL_ERR_AGAIN
 *    (a load that completes at once is answered by al_flight_get() itself); after
 * al_flight_cancel(id) returns, that waiter's callback has not run and never will (or has already
 * finished).
 *  - values are reference-counted through the ops given at creation; a value handed
 *    out by al_flight_get() is retained for the caller (release it with
 *    al_flight_release()); one handed to a callback is borrowed for the call.
 */
#ifndef AL_FLIGHT_H
#define AL_FLIGHT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the engine of one entry (pure) ----------------------------------------------- */

typedef struct al_refresh {
    int has_value;      /* a value was loaded and not dropped */
    int loading;        /* a load is in flight */
    int64_t fetched_at; /* ms, when the current value arrived */
    int64_t refresh_at; /* ms, from then on a get starts a background load */
    int64_t expires_at; /* ms, from then on the value is not usable */
    int64_t retry_at;   /* ms, no load starts before (back-off after failures) */
    uint32_t failures;  /* consecutive failed loads */
} al_refresh;

enum al_refresh_action {
    AL_REFRESH_USE = 0,       /* use the value */
    AL_REFRESH_USE_AND_LOAD,  /* use the value; start a load in the background */
    AL_REFRESH_LOAD_AND_WAIT, /* no usable value: start a load and wait for it */
    AL_REFRESH_WAIT,          /* no usable value: a load is running, wait for it */
    AL_REFRESH_FAIL,          /* no usable value, backing off: fail with the last error */
};

const char *al_refresh_action_to_str(enum al_refresh_action a);
/* Decides what a get at `now` does, and marks the entry loading when the answer starts
 * a load. force asks for a new value unless the current one is younger than
 * min_force_ms (then it is USE as usual). */
enum al_refresh_action al_refresh_decide(al_refresh *r, int64_t now, int force,
                                         int64_t min_force_ms);
/* A load succeeded at `now`: start a background load after refresh_after_ms, value
 * usable for usable_for_ms. Resets the back-off. */
void al_refresh_succeeded(al_refresh *r, int64_t now, int64_t refresh_after_ms,
                          int64_t usable_for_ms);
/* A load failed at `now`: keeps any still usable value, backs off. Returns the delay
 * before the next load may start. */
int64_t al_refresh_failed(al_refresh *r, int64_t now, int64_t base_ms, int64_t max_ms);
/* Drops the value (a rejected token): the next get loads. */
void al_refresh_drop(al_refresh *r);

/* ---- the keyed table -------------------------------------------------------------- */

typedef struct al_flight al_flight;

typedef struct al_flight_value_ops {
    void (*retain)(void *value);
    void (*release)(void *value); /* frees (and wipes) on the last reference */
} al_flight_value_ops;

/* Starts loading `key`; key_data is the entry's copy (valid until the entry goes,
 * which is never while a load is in flight). Must eventually call
 * al_flight_complete(f, key, ...) exactly once, from any thread, possibly before
 * returning (and must not touch key or key_data after that call). Runs without the
 * table lock. */
typedef void (*al_flight_load_fn)(void *load_arg, al_flight *f, const char *key, void *key_data);

typedef struct al_flight_config {
    al_flight_value_ops value_ops;
    void *(*key_data_dup)(const void *key_data); /* NULL: key_data is stored as given */
    void (*key_data_free)(void *key_data);       /* NULL: not freed */
    al_flight_load_fn load;
    void *load_arg;
    int64_t base_backoff_ms; /* 0 = 1000 */
    int64_t max_backoff_ms;  /* 0 = 60000 */
    int64_t min_force_ms;    /* 0 = 10000 */
    size_t max_entries;      /* 0 = 4096: idle entries beyond it are evicted, oldest use first */
    int64_t (*now_ms)(void *arg); /* NULL = CLOCK_MONOTONIC */
    void *clock_arg;
    const char *name; /* for logs: "oidc", "token" */
} al_flight_config;

int al_flight_new(const al_flight_config *cfg, al_flight **out);
/* Waiters still registered are dropped without a call. Free only when no load is in
 * flight any more (the loader's thread has been stopped first). */
void al_flight_free(al_flight *f);

/* The outcome handed to a waiter. */
typedef void (*al_flight_cb)(void *arg, int err, void *value, uint64_t gen, const char *msg);

typedef struct al_flight_result {
    void *value;      /* AL_OK: retained for the caller */
    uint64_t gen;     /* AL_OK: the value's generation (for al_flight_invalidate) */
    uint64_t wait_id; /* AL_ERR_AGAIN: the waiter, for al_flight_cancel */
    char msg[256];    /* other errors: the last load's message (no secrets in it) */
} al_flight_result;

/* Gets `key`: AL_OK with res->value (now), AL_ERR_AGAIN (cb will be called once, on the
 * loader's thread), or the last load's error while backing off. key_data describes how
 * to load the key (copied with key_data_dup when the entry is created; ignored when it
 * exists). cb may be NULL: then AL_ERR_AGAIN only starts the load. */
int al_flight_get(al_flight *f, const char *key, const void *key_data, int force, al_flight_cb cb,
                  void *arg, al_flight_result *res);
/* The usable value of `key` if there is one (retained), without starting a load or
 * registering a waiter: AL_OK or AL_ERR_NOTFOUND. */
int al_flight_peek(al_flight *f, const char *key, al_flight_result *res);
/* Removes a waiter. Returns 1 when it was removed before its callback, 0 when the
 * callback has already run (or was never registered). Waits for a callback that is
 * running on another thread to finish. */
int al_flight_cancel(al_flight *f, uint64_t wait_id);
/* Called by the loader. err AL_OK: value (retained by the table: the loader passes its
 * reference), usable for usable_for_ms, refreshed after refresh_after_ms. Otherwise
 * msg says why (copied; never a secret). Every waiter is called. */
void al_flight_complete(al_flight *f, const char *key, int err, void *value,
                        int64_t refresh_after_ms, int64_t usable_for_ms, const char *msg);
/* Drops the value of `key` if it is still generation `gen`. Returns 1 if dropped. */
int al_flight_invalidate(al_flight *f, const char *key, uint64_t gen);
/* Forgets what is known of `key` (its value and its back-off): the next get loads, or
 * waits for the load in flight. For a value that changed elsewhere (a user's tokens
 * stored by the consent callback). Returns 1 if there was an entry. */
int al_flight_forget(al_flight *f, const char *key);
/* Drops every entry that is not loading and has no waiter (tests, provider deleted). */
void al_flight_clear(al_flight *f);
void al_flight_release(al_flight *f, void *value);

/* The blocking form of a get, for start-up, the CLI and tests (never a worker loop):
 *   al_flight_sync s;
 *   al_flight_sync_init(&s, f);
 *   rc = al_flight_get(f, key, data, force, al_flight_sync_cb, &s, &res);  (or a wrapper)
 *   rc = al_flight_sync_wait(&s, rc, &res, &value, errbuf, errlen);
 * AL_OK: value retained for the caller; else errbuf says why. s is finished after it. */
typedef struct al_flight_sync {
    al_flight *f;
    pthread_mutex_t m;
    pthread_cond_t c;
    int done, err;
    void *value;
    char msg[256];
} al_flight_sync;
void al_flight_sync_init(al_flight_sync *s, al_flight *f);
void al_flight_sync_cb(void *arg, int err, void *value, uint64_t gen, const char *msg);
int al_flight_sync_wait(al_flight_sync *s, int rc, const al_flight_result *res, void **value,
                        char *errbuf, size_t errlen);

/* Metadata of one entry, for status listings. */
typedef struct al_flight_info {
    const char *key;
    const void *key_data;
    void *value; /* borrowed, may be NULL */
    uint64_t gen;
    al_refresh state;
    int waiters;
    int last_err;
    const char *last_msg;
} al_flight_info;
/* Calls fn for every entry with the table lock held: fn must not call into f. */
void al_flight_foreach(al_flight *f, void (*fn)(void *arg, const al_flight_info *info), void *arg);
int64_t al_flight_now(const al_flight *f);

#endif
