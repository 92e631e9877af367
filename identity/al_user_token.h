/* al_user_token: a user's OAuth tokens (3LO) in the identity store — the access token,
 * the refresh token and their metadata, keyed by (provider, user), sealed by al_vault
 * with the provider and user in the associated data (a row copied onto another user's
 * key does not open), and the token endpoint's answers to the authorization_code and
 * refresh_token grants.
 *
 * Nothing here logs. Tokens are wiped when cleared; messages never hold a token, a
 * code or the client secret (al_token_sanitize). */
#ifndef AL_USER_TOKEN_H
#define AL_USER_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "identity/al_store.h"
#include "identity/al_token.h"
#include "identity/al_vault.h"

typedef struct al_user_token {
    char *access_token; /* owned, NUL-terminated; NOT to be logged */
    size_t access_len;
    char *refresh_token; /* owned; NULL when the provider gave none */
    char *scope;         /* owned; granted (or requested) scope, "" if none */
    int64_t obtained_at; /* unix seconds */
    int64_t expires_at;  /* unix seconds; 0 = the answer had no expires_in */
    char fingerprint[32];
} al_user_token;

void al_user_token_clear(al_user_token *t);

/* Seals and stores t for (provider, user); durable when it returns AL_OK. */
int al_user_token_save(al_store *s, const al_vault *v, const char *provider, const char *user,
                       const al_user_token *t);
/* AL_ERR_NOTFOUND: none stored; AL_ERR_KEY: the row does not open (another master key,
 * tampering, a row moved between users). */
int al_user_token_load(al_store *s, const al_vault *v, const char *provider, const char *user,
                       al_user_token *out);

/* Master-key rotation: checks that the row opens with `from` (wrapped key AND sealed
 * tokens, so a damaged row is found before the rotation commits, not after) and
 * replaces row->wrapped_key with the data key wrapped by `to`; the sealed blob is
 * unchanged. AL_ERR_KEY: the row does not open (nothing changed in *row). */
int al_user_token_rewrap(const al_vault *from, const al_vault *to, al_store_user_token *row);

/* A token endpoint answer to an authorization_code or refresh_token request.
 *   AL_OK        *out filled (refresh_token NULL when the answer had none: a refresh
 *                answer without one keeps the old refresh token — the caller's job);
 *   AL_ERR_PERM  the provider said invalid_grant (the grant is gone: delete the tokens);
 *   other        any other failure; msg names host and the provider's error and
 *                error_description, with `secret` cut out. */
int al_user_token_parse(long status, const char *body, size_t len, const char *host,
                        const al_token_spec *spec, int64_t now_unix, al_user_token *out, char *msg,
                        size_t msglen);

#endif
