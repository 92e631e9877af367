/* al_token: OAuth 2.0 client-credentials (2LO) access tokens — the token client and
 * the per-process token cache shared by every worker.
 *
 * A token is asked for with an al_token_spec (provider + secret version + the
 * target's scopes, audience, resource, custom parameters). The cache key is
 * provider, version, sorted scopes, audience, resource and custom parameters (never
 * the secret), so a rotated client secret starts new tokens while the old version's
 * tokens stay in use until they expire.
 *
 *   rc = al_token_get(tc, &spec, cb, arg, &res);
 *   AL_OK        -> res.value is an al_token* (retained: al_token_release()); res.gen
 *                   identifies it for al_token_invalidate() after an upstream 401
 *   AL_ERR_AGAIN -> cb(arg, err, al_token *tok (borrowed), gen, msg) runs once, later, on
 *                   the fetch thread (hand it to your loop); cancel with res.wait_id
 *   other        -> the provider is failing and backing off: res.msg says why;
 *                   AL_ERR_TIMEOUT means the token endpoint timed out (504), anything
 *                   else is a token endpoint error (502 token_endpoint_error)
 *
 * What it does (al_flight.h gives single flight, refresh ahead, back-off and
 * stale-while-failing): the token endpoint comes from the provider's tokenEndpoint, or
 * from its discoveryUrl's metadata (al_oidc.h, cached); the request is
 * grant_type=client_credentials with scope, audience, resource and the custom
 * parameters, the client authenticated with client_secret_basic (default:
 * form-urlencoded id and secret in HTTP Basic, RFC 6749 2.3.1) or client_secret_post.
 * Fetch rules (https, caFile, allowInsecureEndpoints, allowPrivateNetwork, egress guard,
 * limits) are al_fetch.h's. The answer must be a Bearer token of visible ASCII; its
 * lifetime is expires_in, else default_lifetime_s; it is refreshed at 80 % of it and
 * not used in its last min(30 s, 10 %). A lifetime over max_lifetime_s, or none, marks
 * the token long-lived (audit field, one warning per provider).
 *
 * Errors are sentences with the token endpoint's host and the provider's `error` and
 * `error_description` (printable ASCII, at most 200 bytes, the client secret cut out
 * if a provider echoed it); tokens and secrets are never logged, never in a message,
 * and wiped when freed.
 *
 * Audit: one "token_request" event per request sent (provider, version, endpoint host,
 * outcome, error, duration_ms, lifetime_s, long_lived, cache key, token fingerprint). */
#ifndef AL_TOKEN_H
#define AL_TOKEN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "identity/al_flight.h"
#include "identity/al_oidc.h"
#include "targets/al_table.h"

typedef struct al_token_client al_token_client;
struct al_audit;
struct al_user_token;
struct al_store_lock;

typedef struct al_token {
    const char *access_token; /* NOT to be logged; wiped when the last reference goes */
    size_t len;
    const char *provider;
    uint32_t version;
    const char *fingerprint; /* "sha256:" + 12 hex of the token: for audit lines */
    const char *scope;       /* granted scope, or the requested one, "" if none */
    int64_t obtained_unix;   /* wall clock seconds */
    int64_t lifetime_s;      /* as granted (or the default when none was given) */
    int has_expiry;          /* the answer carried expires_in */
    int long_lived;          /* lifetime over max_lifetime_s, or no expiry */
} al_token;

typedef struct al_token_spec {
    const char *provider;
    uint32_t version;
    const char *config_json;     /* the provider's non-secret settings (al_identity.h) */
    const unsigned char *secret; /* the client secret; copied into the cache entry */
    size_t secret_len;
    char *const *scopes;
    size_t scope_count;
    const char *audience;
    const char *resource;
    const al_kv *custom;
    size_t custom_count;
    uint32_t default_lifetime_s; /* 0 = 3600 */
    uint32_t max_lifetime_s;     /* 0 = 30 days */
    int shared;                  /* targets[].auth.token_cache: shared (al_token_store) */
} al_token_spec;

/* The shared token cache (targets[].auth.token_cache: shared; issue 17 item 3): a token
 * for a shared spec lives in the identity store as a user-token row (provider, user
 * "2lo:" + SHA-256 hex of the cache key), sealed by al_vault like a user's tokens, so
 * every replica on that store uses one token. A load reads the row; when it is missing,
 * due for refresh (80 % of its life), or the upstream rejected it, it follows
 * al_store.h's refresh protocol: refresh_lock("2lo\nPROVIDER\nUSER"), read again (the
 * loser of a race takes the winner's token here), else fetch, store, unlock. All store
 * I/O runs as tasks given to post() (the 3LO store thread), the fetch on the fetch
 * thread. A store that cannot be read or locked (PostgreSQL down) does not stop 2LO: the
 * replica fetches its own token, as with `local`. Without an al_token_store (the CLI, no
 * store) shared specs are cached per process. */
typedef struct al_token_store {
    /* queues run(arg) on the store thread; drop(arg) instead at shutdown */
    int (*post)(void *arg, void (*run)(void *a), void (*drop)(void *a), void *a);
    /* from a posted task: a row's tokens opened / sealed and stored (al_user_token.h) */
    int (*load)(void *arg, const char *provider, const char *user, struct al_user_token *out);
    int (*save)(void *arg, const char *provider, const char *user,
                const struct al_user_token *t);
    /* the store's refresh_lock (AL_OK with *out NULL: the store has none) */
    int (*lock)(void *arg, const char *name, int timeout_ms, struct al_store_lock **out);
    void *arg;
} al_token_store;

/* oidc supplies the fetch thread and the discovery cache (borrowed; free it after). */
int al_token_client_new(al_oidc *oidc, al_token_client **out);
/* Call after al_fetch_stop(al_oidc_fetcher(oidc)) or before any token was asked for. */
void al_token_client_free(al_token_client *tc);
void al_token_client_set_audit(al_token_client *tc, struct al_audit *audit);
/* Called once per token-endpoint answer (the same moment as its token_request audit
 * record), on the fetch thread: ok = a token came back. For metrics. */
void al_token_client_set_observer(al_token_client *tc,
                                  void (*fn)(void *arg, const char *provider, int ok), void *arg);
/* Before the first token is asked for; ts is copied (its arg borrowed). */
void al_token_client_set_store(al_token_client *tc, const al_token_store *ts);
/* Tests: the cache clock (ms, monotonic) and the back-off base. */
void al_token_client_set_clock(al_token_client *tc, int64_t (*now_ms)(void *arg), void *arg);

/* Fills the spec from a target and the selected provider's secret view fields.
 * resource: the target's, else its url for mcp_server targets, else NULL. */
void al_token_spec_from_target(al_token_spec *spec, const al_target *t, const char *provider,
                               uint32_t version, const char *config_json,
                               const unsigned char *secret, size_t secret_len);

int al_token_get(al_token_client *tc, const al_token_spec *spec, al_flight_cb cb, void *arg,
                 al_flight_result *res);
int al_token_cancel(al_token_client *tc, uint64_t wait_id);
/* A usable cached token for spec, without fetching: AL_OK (res->value retained) or
 * AL_ERR_NOTFOUND. Used after a client-secret rotation: the previous version's token
 * serves while the new version's is fetched. */
int al_token_peek(al_token_client *tc, const al_token_spec *spec, al_flight_result *res);
/* After an upstream rejected token generation `gen` of this spec: drops it (once). */
int al_token_invalidate(al_token_client *tc, const al_token_spec *spec, uint64_t gen);
/* The same for a token in hand (its entry is remembered in it). */
int al_token_drop(al_token_client *tc, const al_token *tok, uint64_t gen);
void al_token_retain(al_token *t);
void al_token_release(al_token *t);
/* Blocking form for the CLI and tests (never a worker): *tok retained. */
int al_token_get_wait(al_token_client *tc, const al_token_spec *spec, al_token **tok, char *errbuf,
                      size_t errlen);

/* {"tokens": [{provider, version, scopes, audience, resource, fingerprint, obtained_at,
 * expires_at, refresh_at (unix s), long_lived, state, failures, last_error}]}:
 * metadata only, never a token or secret. */
json_t *al_token_status(al_token_client *tc);

/* Pure parts, exposed for unit tests and fuzzing. */
/* The cache key (no secret) into buf. */
int al_token_cache_key(const al_token_spec *spec, char *buf, size_t len);
/* Parses a token endpoint answer. AL_OK: *tok (refs 1). Otherwise a sentence in msg that
 * names host and the provider's error; secret (may be NULL) never appears in it. */
int al_token_parse_response(long status, const char *body, size_t len, const char *host,
                            const al_token_spec *spec, int64_t now_unix, al_token **tok, char *msg,
                            size_t msglen);
/* Appends "&name=value" (the value form-urlencoded; no '&' first in an empty buf) at
 * buf[*used], never past cap (size cap for 3 bytes per value byte); *used advances. */
void al_token_form_append(char *buf, size_t *used, size_t cap, const char *name, const char *val,
                          size_t vlen);
/* A client-authenticated form POST to one of the provider's endpoints (token, pushed
 * authorization request, revocation): params (form-urlencoded) plus the client's
 * credentials as its config_json says — client_secret_basic (default: HTTP Basic) or
 * client_secret_post (client_id, unless params names it, and client_secret in the
 * body) — and the fetch options of its config (caFile, allowInsecureEndpoints,
 * allowPrivateNetwork). p->rq and p->fo are ready for al_fetch; the buffers hold the
 * secret: al_token_post_clear wipes them. AL_ERR_CONFIG: no clientId. */
typedef struct al_token_post {
    al_fetch_request rq;
    al_fetch_opts fo;
    char *form, *basic, *ca_file;
    size_t form_cap, basic_cap;
} al_token_post;
int al_token_post_init(al_token_post *p, const char *config_json, const unsigned char *secret,
                       size_t secret_len, const char *url, const char *params);
void al_token_post_clear(al_token_post *p);
/* "<what> <host> answered <status>: <error> (<error_description>)" from an OAuth error
 * answer (RFC 6749 5.2; answer may be NULL), sanitized, `secret` cut out. */
void al_token_error_message(const char *what, const char *host, long status, const json_t *answer,
                            const unsigned char *secret, size_t secret_len, char *msg,
                            size_t msglen);
/* Copies printable ASCII of s (at most max bytes) into out, with `secret` cut out. */
void al_token_sanitize(const char *s, const unsigned char *secret, size_t secret_len, char *out,
                       size_t outlen, size_t max);

#endif
