/* al_consent: the pending consents of OAuth 2.0 on behalf of a user (3LO) — airlock's
 * own single-use authorization links and the state of each authorization request
 * between the redirect to the provider and its callback (issue 14).
 *
 *   al_consent_start(c, &b, id)      a request for (user, provider, scope, target) had
 *                                    no token: a new link id (32 random bytes,
 *                                    base64url) valid AL_CONSENT_TTL_S, for the 401
 *                                    consent_required's authorization_url;
 *   al_consent_open(c, id, &a, ...)  the link is opened (once: the id is consumed):
 *                                    a fresh state, PKCE verifier (S256, always) and
 *                                    nonce (when the scope asks for openid); returns
 *                                    the authorization request's parameters (the
 *                                    provider's URL query, or a PAR body, RFC 9126);
 *   al_consent_finish(c, state, &f)  the callback: the state is consumed (a replay or
 *                                    a forged or expired state is AL_ERR_NOTFOUND /
 *                                    AL_ERR_TIMEOUT, nothing to store); f holds the
 *                                    binding (user, provider, scope, target) and the
 *                                    verifier for the code exchange.
 *
 * Binding mode `link`: the link is the capability — whoever opens it first consents
 * for the user it was made for (fine for one user; documented risk).
 *
 * Binding mode `app` (AgentCore's CompleteResourceTokenAuth): the binding carries the
 * application's return URL (checked against the target's allow-list by the caller:
 * common/al_return_url.h); at the callback the exchanged tokens are not stored but held
 * under a new session id (al_consent_hold), the user's browser is sent to the return
 * URL with it, and the application completes the session with the identity of
 * its signed-in user (al_consent_complete): the tokens are handed out for storing only
 * when that user is the one the flow was started for; any other user consumes the
 * session and the held tokens are wiped.
 *
 * Vendor quirks (refresh tokens need `access_type=offline`, `offline_access`, ...) are
 * data — al_consent_quirks rows in the vendor table (al_identity.c) — merged into the
 * authorization request by al_consent_open without a branch per vendor. Link ids and
 * states are compared in constant time; a table full of pending consents refuses new
 * ones (AL_ERR_AGAIN) rather than dropping a pending one. Nothing here logs; the
 * verifier is wiped when a flow is cleared. Thread-safe (one mutex). */
#ifndef AL_CONSENT_H
#define AL_CONSENT_H

#include <stddef.h>
#include <stdint.h>

#include "identity/al_user_token.h"
#include "targets/al_table.h"

#define AL_CONSENT_TTL_S  600
#define AL_CONSENT_ID_LEN 43 /* base64url of 32 bytes, no padding */
#define AL_CONSENT_SESSION_TTL_S 600 /* app mode: held tokens wait this long */

typedef struct al_consent al_consent;

typedef struct al_consent_binding {
    const char *user;     /* "iss sub" of the inbound JWT, or the trusted header's user */
    const char *provider; /* the store's OAuth client */
    const char *scope;    /* space-separated, as requested */
    const char *target;
    const char *return_url; /* app binding mode: the application's (allow-listed) return
                             * URL; NULL in link mode */
} al_consent_binding;

/* A consumed authorization request (al_consent_finish); clear with al_consent_flow_clear. */
typedef struct al_consent_flow {
    char *user, *provider, *scope, *target; /* owned */
    char *return_url;                       /* owned; NULL in link mode */
    char verifier[AL_CONSENT_ID_LEN + 1];   /* PKCE code_verifier: never logged */
    char nonce[AL_CONSENT_ID_LEN + 1];      /* "" when no openid scope */
} al_consent_flow;

/* What a vendor needs in an authorization request to hand out a refresh token (a row
 * of the vendor table, al_identity_vendor_quirks). */
typedef struct al_consent_quirks {
    const char *when_scope; /* applies only when the requested scope holds this one
                             * (CustomOauth2: "openid"); NULL = always */
    const char *add_scope;  /* space-separated scopes added unless requested already */
    const char *params;     /* form-urlencoded parameters added unless the target's
                             * custom_parameters set them ("access_type=offline&...") */
} al_consent_quirks;

/* The provider side of an authorization request. */
typedef struct al_consent_authz {
    const char *client_id;
    const char *redirect_uri; /* airlock's callback */
    const al_kv *extra;       /* the target's custom_parameters (they win over quirks) */
    size_t extra_count;
    const al_consent_quirks *quirks; /* the provider's vendor row; NULL = none */
    /* app binding: the return URL the link's opener chose (the caller checked it
     * against the target's allow-list); NULL keeps the binding's. Ignored for a link
     * made without one (link mode). */
    const char *return_url;
} al_consent_authz;

/* max_pending: links and states kept at once (0 = 1024). */
int al_consent_new(size_t max_pending, al_consent **out);
void al_consent_free(al_consent *c);
/* Tests: the clock (unix seconds). */
void al_consent_set_clock(al_consent *c, int64_t (*now_s)(void *arg), void *arg);

/* id gets AL_CONSENT_ID_LEN chars + NUL. AL_ERR_INVAL for an empty or control-character
 * field, AL_ERR_AGAIN when max_pending consents are pending. */
int al_consent_start(al_consent *c, const al_consent_binding *b, char id[AL_CONSENT_ID_LEN + 1]);
/* The same, except that a link not opened yet for exactly this binding, with at least
 * AL_CONSENT_REUSE_MIN_S left, is handed out again (*reused 1, *ttl_left: its seconds
 * left): an agent
 * retrying before its user consented gets the link it already has, so retries cannot
 * fill the table. Still single use. */
#define AL_CONSENT_REUSE_MIN_S 60
int al_consent_start_shared(al_consent *c, const al_consent_binding *b,
                            char id[AL_CONSENT_ID_LEN + 1], uint32_t *ttl_left, int *reused);
/* Consumes link `id`: *params (malloc'd) is the form-urlencoded authorization request
 * (response_type=code, client_id, redirect_uri, scope, state, code_challenge,
 * code_challenge_method=S256, nonce, extra). AL_ERR_NOTFOUND: unknown or already opened;
 * AL_ERR_TIMEOUT: expired. The state lives AL_CONSENT_TTL_S from now. */
int al_consent_open(al_consent *c, const char *id, const al_consent_authz *a, char **params);
/* The binding of link `id` without consuming it (the caller needs its provider before
 * al_consent_open); f->verifier and f->nonce stay empty. AL_ERR_NOTFOUND /
 * AL_ERR_TIMEOUT as al_consent_open. Clear f with al_consent_flow_clear. */
int al_consent_link_binding(al_consent *c, const char *id, al_consent_flow *f);
/* Consumes `state`; see above. */
int al_consent_finish(al_consent *c, const char *state, al_consent_flow *f);
void al_consent_flow_clear(al_consent_flow *f);
/* Links and states pending now (expired ones are not counted). */
size_t al_consent_pending(al_consent *c);

/* App binding mode. al_consent_hold: the callback's tokens wait for the application: f
 * (its strings) and t (its tokens) move into the table (both cleared, whatever the
 * result); session_id gets a new id valid AL_CONSENT_SESSION_TTL_S. AL_ERR_AGAIN when
 * the table is full (the tokens are wiped). */
int al_consent_hold(al_consent *c, al_consent_flow *f, al_user_token *t,
                    char session_id[AL_CONSENT_ID_LEN + 1]);
/* The application completes `session_id` for `user` (consumed whatever the outcome):
 *   AL_OK            *f (binding) and *t (tokens) are the caller's to store and clear;
 *   AL_ERR_PERM      the flow was started for another user: nothing is handed out, the
 *                    held tokens are wiped;
 *   AL_ERR_NOTFOUND  unknown, forged or already completed; AL_ERR_TIMEOUT: expired. */
int al_consent_complete(al_consent *c, const char *session_id, const char *user,
                        al_consent_flow *f, al_user_token *t);

/* Pure parts. */
/* RFC 7636 4.2: BASE64URL(SHA256(verifier)), 43 chars + NUL. */
int al_consent_pkce_s256(const char *verifier, char out[AL_CONSENT_ID_LEN + 1]);
/* url + ('?' or '&') + params, malloc'd. */
char *al_consent_url(const char *endpoint, const char *params);
/* The token request bodies (form-urlencoded, malloc'd; client authentication is the
 * token client's): grant_type=authorization_code (RFC 6749 4.1.3 + RFC 7636 4.5), and
 * grant_type=refresh_token (RFC 6749 6). Wipe them after use (they hold a code or token). */
char *al_consent_code_form(const char *code, const char *redirect_uri, const char *verifier);
char *al_consent_refresh_form(const char *refresh_token, const char *scope);

#endif
