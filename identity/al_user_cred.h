/* al_user_cred: OAuth 2.0 on behalf of a user (3LO) for `serve` — the per-process
 * engine behind the oauth2_3lo credential source and airlock's consent endpoints
 * (issue 14). One per process, thread-safe; workers use it through
 * proxy/al_oauth2_3lo.c.
 *
 * What it owns: the user-token vault (al_user_token over its own store handle and the
 * master key), the pending consents (al_consent), a single-flight cache of the users'
 * access tokens (al_flight, keyed by provider + user) and the control-plane requests it
 * makes (discovery, the code exchange, refreshes) on the fetch thread (al_oidc's
 * al_fetch), and a store thread of its own for every store read and write (a PostgreSQL
 * store is a network round trip, the cross-replica refresh lock blocks), so no worker
 * loop ever waits on the network or the store.
 *
 * A request's token (al_user_cred_get): the cache answers at once when it has the
 * user's token; otherwise its load reads the store on the store thread and
 *   - no row (or one that does not open): a "none" value (al_user_access.none) —
 *     consent is needed; it is re-read on the next request, so a consent completed in
 *     another worker or replica is seen at once;
 *   - a token not yet due for refresh: used until 80 % of its life;
 *   - due (or rejected by the upstream: al_user_cred_rejected): refreshed with the
 *     refresh token on the fetch thread, under the store's refresh lock (al_store.h: one
 *     refresh per user across replicas; the row is read again once the lock is held, and
 *     a token another replica got meanwhile is used instead); the answer is stored (a
 *     rotated refresh token durably, before the new access token is handed out), then
 *     the lock goes and the waiters get it;
 *     `invalid_grant` deletes the user's tokens and answers "none"; other failures are
 *     errors with the provider's error and error_description (back-off as al_flight).
 *
 * The browser side (al_user_cred_authorize / al_user_cred_callback) answers an
 * al_user_page: a redirect to the provider, or a short page saying what happened.
 * Both may answer now or later (AL_ERR_PENDING: done() runs once on the fetch thread).
 *
 * PAR (RFC 9126): when the provider's discovery document requires it or its settings
 * say usePar, authorize_redirect() pushes the authorization request (al_par) and the
 * browser gets only client_id + request_uri. Binding modes: the callback stores tokens
 * in store_consented() — `link` at once for the link's user, `app` held under a session
 * id (al_consent_hold) with a redirect to the application's return URL, stored by
 * al_user_cred_complete only for the user who started the flow. force_authentication:
 * al_user_cred_fresh says whether a token came from a consent for that target.
 *
 * Secrets: access and refresh tokens, codes, verifiers and states never reach a log
 * line, an audit record, a page or a message; the audit names provider, end user,
 * target and outcome, and the token's fingerprint. */
#ifndef AL_USER_CRED_H
#define AL_USER_CRED_H

#include <stddef.h>
#include <stdint.h>

#include "identity/al_consent.h"
#include "identity/al_cred.h"
#include "identity/al_flight.h"
#include "identity/al_oidc.h"
#include "identity/al_store.h"
#include "identity/al_user_token.h"
#include "identity/al_vault.h"
#include "targets/al_table.h"

typedef struct al_user_cred al_user_cred;
struct al_audit;

/* A user's access token as the cache hands it out (reference-counted), or "none". */
typedef struct al_user_access {
    const char *access_token; /* NOT to be logged; NULL when none */
    size_t len;
    const char *provider, *user;
    const char *scope;       /* granted ("" when unknown) */
    const char *fingerprint; /* "sha256:" + 12 hex, for the audit */
    int64_t expires_at;      /* unix s, 0 = unknown */
    int none;                /* no usable token: the user must consent */
    const char *why;         /* with none: why (static text, no secret) */
} al_user_access;

void al_user_access_retain(al_user_access *a);
void al_user_access_release(al_user_access *a);

/* Takes store and vault (closed and freed by al_user_cred_free). creds (the provider
 * snapshots: client id, endpoints, client secret) and oidc (fetch thread, discovery)
 * are borrowed. */
int al_user_cred_new(al_store *store, al_vault *vault, al_cred_cache *creds, al_oidc *oidc,
                     al_user_cred **out);
/* After al_fetch_stop(al_oidc_fetcher(oidc)): no callback runs any more. */
void al_user_cred_free(al_user_cred *uc);
/* Where the master key file is read again when a rotate-master-key (the CLI, maybe on
 * another replica) changed the store's key: before sealing a token and when a row does
 * not open, the store's check value is compared with the vault's key, and the vault
 * follows it (al_identity_store_vault). Without it the vault keeps its key (tests). */
int al_user_cred_set_state_dir(al_user_cred *uc, const char *state_dir);
void al_user_cred_set_audit(al_user_cred *uc, struct al_audit *audit);
/* Tests: the wall clock (unix seconds) of token expiry and of the consents. */
void al_user_cred_set_clock(al_user_cred *uc, int64_t (*now_s)(void *arg), void *arg);
al_consent *al_user_cred_consent(al_user_cred *uc);
/* For others that keep secrets in the same store (the shared 2LO token cache:
 * al_token.h's al_token_store; uc is an al_user_cred*):
 * post queues run(arg) on the store thread, or drop(arg) instead at al_user_cred_free
 * (AL_ERR_NOMEM: nothing queued); from such a task only: load_row / save_row open and
 * seal a user-token row with the vault, following a master-key rotation as users'
 * tokens do (al_user_token_load / _save's answers); lock is the store's refresh_lock
 * (AL_OK with *out NULL when the store has none). */
int al_user_cred_post(void *uc, void (*run)(void *arg), void (*drop)(void *arg), void *arg);
int al_user_cred_load_row(void *uc, const char *provider, const char *user, al_user_token *out);
int al_user_cred_save_row(void *uc, const char *provider, const char *user,
                          const al_user_token *t);
int al_user_cred_lock(void *uc, const char *name, int timeout_ms, al_store_lock **out);

/* The user's token for `provider`: AL_OK (res->value an al_user_access*, retained:
 * al_user_access_release), AL_ERR_AGAIN (cb(arg, err, al_user_access *borrowed, gen,
 * msg) runs once on another thread; res->wait_id cancels), or an error while the
 * provider fails (res->msg says why). */
int al_user_cred_get(al_user_cred *uc, const char *provider, const char *user, al_flight_cb cb,
                     void *arg, al_flight_result *res);
int al_user_cred_cancel(al_user_cred *uc, uint64_t wait_id);
/* The blocking form (tests, the CLI; never a worker loop): *out retained. */
int al_user_cred_get_wait(al_user_cred *uc, const char *provider, const char *user,
                          al_user_access **out, char *errbuf, size_t errlen);
/* The upstream answered 401 to token generation `gen` of a: the next get refreshes
 * (once for any number of requests that saw the same token). */
void al_user_cred_rejected(al_user_cred *uc, const al_user_access *a, uint64_t gen);

/* A link for the 401 consent_required (al_consent_start_shared: the same binding's
 * unopened link again, *ttl_left its seconds left), audited as consent.started (a new
 * link) or consent.link_reused. */
int al_user_cred_consent_start(al_user_cred *uc, const al_consent_binding *b,
                               char id[AL_CONSENT_ID_LEN + 1], uint32_t *ttl_left);

/* What the browser gets. */
typedef struct al_user_page {
    int status;         /* 302 to the provider; 200 done; 400/404/410 bad link or state;
                           502/504 the provider failed; 503 busy */
    char *location;     /* malloc'd: the redirect target (302), else NULL */
    char title[96];     /* plain text */
    char message[768];  /* plain text: what happened, what to do; no secret */
    const char *reason; /* the audit reason of a failed step (static), NULL when ok */
} al_user_page;
void al_user_page_clear(al_user_page *p);
/* On the fetch thread; page is the callee's to clear. */
typedef void (*al_user_page_fn)(void *arg, al_user_page *page);

/* GET /oauth2/authorize/<id>: the link's binding names the provider; its authorization
 * endpoint (authorizationEndpoint, else discovery) gets al_consent_open's parameters
 * (the link is consumed then). t: the request's table (the target's custom_parameters
 * are copied; nothing of t is used after return). AL_OK: *page filled; AL_ERR_PENDING:
 * done(arg, page) later (discovery). */
int al_user_cred_authorize(al_user_cred *uc, const al_table *t, const char *link_id,
                           const char *redirect_uri, al_user_page *page, al_user_page_fn done,
                           void *arg);
/* The same, for a link of an `app` binding opened with the application's return_url
 * (NULL = the binding's, the target's first allow-listed one): a URL outside the
 * target's auth.return_urls is refused (400 page, the link stays usable). */
int al_user_cred_authorize_to(al_user_cred *uc, const al_table *t, const char *link_id,
                              const char *return_url, const char *redirect_uri,
                              al_user_page *page, al_user_page_fn done, void *arg);
/* App binding mode: the application completes session_id (from its return URL) for its
 * signed-in user. done(arg, rc, target) runs once on the store thread (the store write
 * never blocks a worker loop: a PostgreSQL store is a network round trip): AL_OK: the
 * tokens held since the callback are stored for that user (target: the target's name);
 * AL_ERR_PERM: the flow was started for another user — nothing stored, the held tokens
 * wiped; AL_ERR_NOTFOUND / AL_ERR_TIMEOUT: unknown (or completed already) / expired;
 * AL_ERR_IO: airlock is stopping; else the store failed. Audited (consent.completed /
 * consent.refused). Returns AL_ERR_PENDING (done will run), or an error (it will not). */
typedef void (*al_user_complete_fn)(void *arg, int rc, const char *target);
int al_user_cred_complete(al_user_cred *uc, const char *session_id, const char *user,
                          al_user_complete_fn done, void *arg);
/* force_authentication: 1 when the token with fingerprint fp came from a consent made
 * for (target, user) in this process — not refreshed since, not another target's. */
int al_user_cred_fresh(al_user_cred *uc, const char *target, const char *user, const char *fp);
/* GET /oauth2/callback?<query>: state (consumed), then the provider's error, or the code
 * exchanged (verifier, client authentication) and the tokens stored. AL_OK: *page
 * filled now (a bad state, a provider error); AL_ERR_PENDING: done later. */
int al_user_cred_callback(al_user_cred *uc, const char *query, size_t query_len,
                          const char *redirect_uri, al_user_page *page, al_user_page_fn done,
                          void *arg);

/* Pure parts. */
/* 1 when the granted scope (space-separated) holds every wanted scope; "openid" and
 * "offline_access" are about the ID and refresh tokens, not the API, and need not be
 * echoed. */
int al_user_scope_covers(const char *granted, char *const *want, size_t n);
/* The value of query parameter `name` (form-urlencoded, decoded) into out (NUL
 * terminated). AL_OK, AL_ERR_NOTFOUND, or AL_ERR_INVAL (too long, bad escape, a NUL,
 * or the parameter twice). */
int al_user_query_param(const char *q, size_t qlen, const char *name, char *out, size_t outlen);

#endif
