/* al_worker: one worker thread — its own libev loop, its own SO_REUSEPORT listening
 * socket on listen.proxy, upstream pool (libcurl multi) and resolver (c-ares), its
 * connections, and its own pointer to the table snapshot.
 *
 * Reload without locks on the hot path: the main thread puts a new snapshot in
 * `pending` (under `handoff`, a mutex only the reload touches) and wakes the worker
 * with ev_async; the worker installs it as its current slot. A request counts
 * itself on the slot it started with (a plain counter: only this thread touches
 * it), so requests in flight finish on their table and the hot path has no lock
 * and no atomic; a replaced slot drops its table reference when its last request
 * ends. */
#ifndef AL_WORKER_H
#define AL_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "al_conn.h"
#include "al_request.h"
#include "targets/al_table.h"

struct al_server;
struct al_upstream_pool;
struct al_resolver;

/* accept() failures, logged at most once a second with a count of those not logged
 * (an fd limit reached under a flood must not become a flood of log lines). */
typedef struct al_accept_log {
    ev_tstamp last;
    unsigned long suppressed;
} al_accept_log;

/* 1 when accept failed for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM): the listener stays readable, so the caller must stop watching it until a
 * descriptor frees, or the loop spins. */
int al_accept_must_pause(int err);
void al_accept_log_failure(struct ev_loop *loop, al_accept_log *l, const char *listener, int id,
                           int err, int paused);

/* A table snapshot as this worker uses it: `users` counts the worker's requests on
 * it, without atomics (only this thread touches it). The worker holds one real
 * reference per slot and drops it when a replaced slot has no users left. */
typedef struct al_worker_table {
    al_table *table; /* owned reference */
    size_t users;
    struct al_worker_table *next; /* retired slots still in use */
} al_worker_table;

typedef struct al_worker {
    int id;
    struct al_server *server; /* shared, read-only after start (cred cache, audit) */
    pthread_t thread;
    struct ev_loop *loop; /* owned */
    int listen_fd;        /* owned; -1 when closed */
    int tls_listen_fd;    /* owned; -1 when none */
    ev_io accept_w, tls_accept_w;
    ev_async wake;     /* reload / stop from the main thread */
    ev_prepare reaper; /* frees closed connections before the loop blocks again */
    al_conn *kicks, *kicks_tail; /* al_conn_kick's list, run by the reaper first */
    size_t kick_count;
    ev_timer kick_wake; /* the loop must not block: kicks queued by the kicks wait */
    ev_timer drain_timer;
    ev_timer accept_retry; /* accepting paused (out of descriptors): try again */
    int accept_paused;
    al_accept_log accept_log;

    al_table *table;          /* == current->table; only this thread reads or swaps it */
    al_worker_table *current; /* owned */
    al_worker_table *retired; /* owned: replaced slots with requests still on them */
    pthread_mutex_t handoff;
    al_table *pending;  /* owned reference handed over by the main thread */
    int stop_requested; /* under handoff */

    struct al_upstream_pool *pool; /* owned */
    al_up_engine *native;          /* owned: the native upstream engine */
    struct al_resolver *resolver;  /* owned */
    void *tls_ctx;                 /* SSL_CTX* for listen.tls (shared, not owned) */

    al_conn *conns; /* live connections (owned) */
    al_conn *dead;  /* closed, freed by the reaper */
    size_t conn_count;
    int draining;

    /* What this worker's requests may use (loop, resolver, pool, credential sources,
     * audit, hooks); al_request.c keeps its per-worker state in it too. */
    al_req_ctx rctx;
    struct al_oauth2_src *oauth2; /* owned: oauth2_2lo credentials over the server's tokens */
    struct al_oauth2_3lo *oauth2_3lo; /* owned: oauth2_3lo credentials and consent pages */

    /* CSPRNG output fetched in bulk for X-Request-Id (one RAND_bytes per 256 ids
     * rather than per request); this thread only. */
    unsigned char rid_pool[4096];
    size_t rid_left; /* unused bytes at the end of rid_pool; 0 = refill (a zeroed worker) */
} al_worker;

/* Creates the loop, the listening socket(s), pool and resolver. `table` gets a new
 * reference. Returns 0 or a negative al_err (e.g. AL_ERR_IO when the port is taken). */
int al_worker_init(al_worker *w, int id, struct al_server *s, al_table *table);
int al_worker_start(al_worker *w); /* spawns the thread */
/* Main thread: hand over a new snapshot (a reference is taken) / ask to drain. */
void al_worker_post_table(al_worker *w, al_table *t);
void al_worker_post_stop(al_worker *w);
void al_worker_join(al_worker *w);
void al_worker_destroy(al_worker *w);

/* A request's hold on the current table (no atomics on the hot path). */
al_worker_table *al_worker_table_acquire(al_worker *w);
void al_worker_table_release(al_worker *w, al_worker_table *slot);

/* 16 unpredictable bytes for a request id, from the worker's bulk CSPRNG buffer.
 * Returns 0, or AL_ERR_NOMEM if the CSPRNG failed (out is then zeroed). */
int al_worker_random_id(al_worker *w, unsigned char out[16]);

/* Called by connections. */
void al_worker_conn_dead(al_worker *w, al_conn *c);

/* "host:port" / "[v6]:port" (numeric) -> addrinfo (freeaddrinfo it); AL_ERR_CONFIG. */
struct addrinfo;
int al_listen_resolve(const char *hostport, struct addrinfo **out);
/* Opens a listening TCP socket on "host:port" (SO_REUSEPORT when reuseport). */
int al_listen_socket(const char *hostport, int reuseport, int *fd_out);

#endif
