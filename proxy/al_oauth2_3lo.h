/* al_oauth2_3lo: OAuth 2.0 on behalf of a user (3LO) in one worker — the oauth2_3lo
 * credential source (identity/al_credsrc.h interface) and airlock's consent endpoints on
 * the proxy listeners (al_req_hooks.local), both over the process's al_user_cred.
 *
 * Credential: acquire needs the request's end user (q->user: "ISS SUB" of the inbound
 * token, or a trusted client's user header) and asks al_user_cred for their token:
 *   - a token whose granted scope covers the target's scopes: injected as Bearer (now,
 *     or after a refresh on the fetch thread: AL_ERR_PENDING, then on_done on this
 *     worker's loop);
 *   - none, or too narrow: AL_ERR_PERM with grant->consent_url, airlock's single-use
 *     link <public_base_url>/oauth2/authorize/<id> (the data path answers 401
 *     consent_required with it); no user at all: AL_ERR_PERM without a link;
 *   - the provider failing: its error (502 token_endpoint_error / 504).
 * rejected(401) marks the token rejected (the next acquire refreshes it) and asks for
 * one retry (AL_CRED_REFRESH).
 *
 * Endpoints (no inbound authentication; the link id / state is the capability):
 *   GET /oauth2/authorize/<id>[?return_url=U]   302 to the provider (al_user_cred_authorize);
 *                                the return URL (app binding) must be one the target
 *                                allows, else 400
 *   GET /oauth2/callback?...     the code exchanged and stored (link binding: a short HTML
 *                                page), or held (app binding: 302 to the return URL with
 *                                ?session_id=)
 * and, authenticated like the data path (inbound JWT; a trusted client's user header):
 *   POST /oauth2/sessions/complete   with header X-Airlock-Session-Id: the held tokens
 *                                are stored for the caller's end user if that is the user
 *                                the flow was started for (JSON 200); another user: 403
 *                                session_user_mismatch, nothing stored, the tokens wiped.
 * force_authentication: a cached token is used only when it came from a consent made
 * for that target (al_user_cred_fresh); otherwise a new consent link.
 *
 * Answers from the fetch thread reach the loop through a mailbox (an ev_async and a
 * locked list) that outlives this object while a job still holds it. Loop thread only,
 * except the mailbox. */
#ifndef AL_OAUTH2_3LO_H
#define AL_OAUTH2_3LO_H

#include "al_request.h"
#include "identity/al_credsrc.h"
#include "identity/al_user_cred.h"

struct ev_loop;
typedef struct al_oauth2_3lo al_oauth2_3lo;

int al_oauth2_3lo_new(struct ev_loop *loop, al_user_cred *uc, al_oauth2_3lo **out);
/* Cancels what waits (no on_done / done after this). */
void al_oauth2_3lo_free(al_oauth2_3lo *s);
al_credsrc al_credsrc_oauth2_3lo(al_oauth2_3lo *s);
/* al_req_hooks.local / local_cancel with arg = the al_oauth2_3lo. */
int al_oauth2_3lo_local(void *arg, const al_local_req *q, al_local_resp *resp,
                        al_local_done_fn done, void *req, void **pending);
void al_oauth2_3lo_local_cancel(void *arg, void *pending);
/* The data path's authentication state (the server's): for sessions/complete. */
struct al_authz_state;
void al_oauth2_3lo_set_authz(al_oauth2_3lo *s, struct al_authz_state *authz);

/* Pure: the HTML page for a result (title and message HTML-escaped) into buf; returns
 * its length (cut to fit). */
size_t al_oauth2_3lo_page_html(const char *title, const char *message, char *buf, size_t cap);

#endif
