/* al_par: pushed authorization requests (RFC 9126) for OAuth on behalf of a user (3LO).
 *
 * Some providers refuse authorization requests in the browser's URL and want them
 * pushed first: airlock POSTs the parameters al_consent_open built (the client
 * authenticated as at the token endpoint, al_token_post) to the provider's
 * pushed_authorization_request_endpoint, gets back a one-time `request_uri`, and sends
 * the browser to the authorization endpoint with only client_id and request_uri — the
 * state, PKCE challenge and scopes never appear in the browser's URL.
 *
 * When: the provider's discovery metadata says require_pushed_authorization_requests,
 * or its config says "usePar": true (`airlock identity ... --use-par`). The endpoint is
 * the config's "parEndpoint", else the metadata's.
 *
 *   al_par_wanted(meta, config)        1 when PAR is to be used
 *   al_par_endpoint(meta, config)      its URL, or NULL
 *   al_par_push(fetch, config_json, secret, len, endpoint, params, cb, arg, &id, ...)
 *                                      starts the POST; cb(arg, err, request_uri,
 *                                      expires_in, msg) runs once ON THE FETCH THREAD
 *   al_par_parse(...)                  the answer: 201 + request_uri + expires_in, or the
 *                                      provider's error and error_description in msg
 *   al_par_url(authz_ep, client_id, request_uri)   the short authorization URL
 *
 * Messages never hold the client secret (cut out if a provider echoes it) nor the
 * pushed parameters; request_uri is a one-time reference, not a secret, but is not
 * logged either. */
#ifndef AL_PAR_H
#define AL_PAR_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "identity/al_fetch.h"

#define AL_PAR_REQUEST_URI_MAX 1024

int al_par_wanted(const json_t *meta, const json_t *config);
const char *al_par_endpoint(const json_t *meta, const json_t *config);

/* AL_OK: *request_uri (malloc'd) and *expires_in (s). AL_ERR_PROTO otherwise, with a
 * sentence naming host and the provider's error in msg. */
int al_par_parse(long status, const char *body, size_t len, const char *host,
                 const unsigned char *secret, size_t secret_len, char **request_uri,
                 int64_t *expires_in, char *msg, size_t msglen);

/* authz_endpoint + ('?' or '&') + client_id=...&request_uri=... (form-encoded), malloc'd. */
char *al_par_url(const char *authz_endpoint, const char *client_id, const char *request_uri);

/* err AL_OK: request_uri (borrowed for the call) and expires_in; else msg says why. */
typedef void (*al_par_cb)(void *arg, int err, const char *request_uri, int64_t expires_in,
                          const char *msg);
/* Starts the push; AL_OK and *id (al_fetch_cancel) or an error at once (msg). *pending
 * (may be NULL) is the push's context until cb runs: a caller whose push was dropped by
 * al_fetch_stop (cb never runs) frees it with al_par_abandon. */
int al_par_push(al_fetch *f, const char *config_json, const unsigned char *secret,
                size_t secret_len, const char *endpoint, const char *params, al_par_cb cb,
                void *arg, uint64_t *id, void **pending, char *msg, size_t msglen);
void al_par_abandon(void *pending);

#endif
