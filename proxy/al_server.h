/* al_server: `airlock serve` — the main thread (signals, reload, drain, admin
 * listener) and the workers it starts.
 *
 * Shared state, read-only once the workers run: the credential cache (its own
 * lock-free snapshots), the audit log (a non-blocking queue) and the TLS contexts.
 * The main thread's table pointer is only touched by the main thread; workers get
 * their own references through al_worker_post_table(). */
#ifndef AL_SERVER_H
#define AL_SERVER_H

#include <ev.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "al_authz.h"
#include "al_worker.h"
#include "identity/al_cred.h"
#include "policy/al_audit.h"
#include "targets/al_table.h"

typedef struct al_server {
    char *config_path; /* owned */
    char *state_dir;   /* owned */
    struct ev_loop *loop;
    al_table *table;      /* owned reference: the main thread's current snapshot */
    al_cred_cache *creds; /* owned; NULL when the store could not be opened */
    struct al_iam_registry *iam; /* owned: AWS credential providers of iam targets */
    al_audit *audit;      /* owned */
    /* OAuth 2.0 (2LO): the control-plane fetch thread + discovery cache, and the
     * per-process token cache every worker's oauth2 credential source shares. */
    struct al_oidc *oidc;            /* owned */
    struct al_token_client *tokens; /* owned */
    /* OAuth on behalf of a user (3LO): the user-token vault, consents and their cache;
     * NULL without a store (oauth2_3lo requests get 502 credential_unavailable). */
    struct al_user_cred *users; /* owned */
    al_worker *workers;   /* owned array */
    size_t worker_count;
    atomic_int workers_running;
    int admin_fd;
    int listen_locks[2]; /* al_listen_claim of listen.proxy and listen.tls, or -1 */
    ev_io admin_w;
    ev_timer admin_retry; /* admin accepting paused (out of descriptors): try again */
    int admin_paused;
    al_accept_log admin_log;
    ev_signal sighup, sigterm, sigint, sigusr1;
    uint64_t table_generation; /* 1 = the table loaded at start, +1 per successful reload */
    ev_timer drain_timer;
    int draining;
    /* SIGTERM's lame duck (limits.drain_delay_ms): /readyz answers 503 "draining" while
     * the listeners serve on, so that load balancers take the replica out before the
     * drain closes anything. Only once /readyz was asked (readyz_asked): without a
     * health checker reading it, waiting helps nobody. */
    ev_timer delay_timer;
    int lame_duck;
    int readyz_asked;
    void *ca;            /* al_ca*, owned; NULL without a CA */
    void *intercept_ctx; /* SSL_CTX*, owned */
    void *listener_ctx;  /* SSL_CTX*, owned */
    int64_t loaded_at_ms; /* wall clock of the current table's load */
    int last_reload_ok;   /* -1 none yet, 0 the last one was refused, 1 applied */
    /* Inbound JWT (its documents come through `oidc` above): the current table's
     * authenticator (the decide hook reads authz.inbound) and the ones of earlier
     * tables, kept until the server stops (requests may still use them). */
    al_authz_state authz;
    al_inbound **inbound_old;
    size_t inbound_old_count;
    struct al_metrics *metrics; /* owned; one shard per worker (al_metrics.h) */
} al_server;

/* Reloads the table from s->config_path (main thread only; SIGHUP and POST /reload):
 * AL_OK when applied (table_generation + 1), else the old table stays and `d` says why
 * (file:line:column). */
int al_server_reload(al_server *s, al_diags *d);

/* Runs until SIGTERM/SIGINT and the drain. Returns the process exit status. */
int al_server_run(const char *config_path, const char *state_dir, unsigned workers);

#endif
