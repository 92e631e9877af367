/* al_revoke: token revocation at the provider (RFC 7009), used when an operator deletes
 * a user's 3LO tokens (`airlock identity delete-user-token`): the refresh token (else
 * the access token) is revoked so that the grant ends at the provider too, not only in
 * airlock's store.
 *
 * The endpoint is the provider config's "revocationEndpoint", else its discovery
 * metadata's revocation_endpoint; the client authenticates as at the token endpoint
 * (al_token_post). A provider without either has no revocation (AL_ERR_NOTFOUND).
 * Messages name the host and the provider's error and error_description, never the
 * token or the client secret. Blocking: the CLI only, never a worker. */
#ifndef AL_REVOKE_H
#define AL_REVOKE_H

#include <stddef.h>

#include "identity/al_oidc.h"

/* "token=...&token_type_hint=..." (hint may be NULL), malloc'd: wipe it after use. */
char *al_revoke_form(const char *token, const char *hint);
/* The endpoint's answer: 200 is AL_OK (RFC 7009 2.2: also for a token it did not know);
 * anything else AL_ERR_PROTO with a sentence in msg. */
int al_revoke_check(long status, const char *body, size_t len, const char *host,
                    const unsigned char *secret, size_t secret_len, char *msg, size_t msglen);
/* Revokes token (hint "refresh_token" or "access_token") for the provider whose
 * non-secret settings are config_json and client secret is secret. oidc supplies the
 * fetcher and the discovery cache. AL_OK, AL_ERR_NOTFOUND (no revocation endpoint), or
 * the failure with a sentence in msg. */
int al_revoke_wait(al_oidc *oidc, const char *config_json, const unsigned char *secret,
                   size_t secret_len, const char *token, const char *hint, char *msg,
                   size_t msglen);

#endif
