/* al_inbound: who is calling — inbound JWT authentication for `inbound.mode: jwt`.
 *
 * Owns, for one table's inbound.jwt: the issuer's discovery document and key set
 * (through al_oidc: fetched on the control-plane thread, cached, refreshed), the parsed
 * key set (policy/al_jwt), and the verified-token cache. al_inbound_authenticate() does
 * no I/O: a cached token costs one hash and one lookup; a new one is verified against
 * the current key set. A token naming a kid the set lacks starts one forced JWKS
 * re-fetch (al_oidc rate-limits it to one per 10 s, so forged kids cannot make airlock
 * hammer the issuer) and is refused `unknown_key`; a retry after the fetch sees the new
 * keys.
 *
 * Used by the data path's decide hook and by `airlock explain` (the same function).
 * Thread-safe: workers share one al_inbound; the key set is swapped under a mutex. */
#ifndef AL_INBOUND_H
#define AL_INBOUND_H

#include "identity/al_oidc.h"
#include "policy/al_jwt.h"
#include "targets/al_table.h"

#include <stddef.h>
#include <stdint.h>

typedef struct al_inbound al_inbound;

/* For table t (inbound.mode jwt). oidc is borrowed and must outlive the result. Starts
 * the discovery fetch in the background; AL_ERR_INVAL if the mode is not jwt. */
int al_inbound_new(const al_table *t, al_oidc *oidc, al_inbound **out);
void al_inbound_free(al_inbound *in);

/* Blocking: fetches discovery and keys now (start-up, the CLI, tests — never on a worker
 * loop). AL_OK, or an error with a sentence (no secret) in err. */
int al_inbound_prime(al_inbound *in, char *err, size_t errlen);

/* Verifies a bearer token at time now (seconds). AL_OK with *out (a reference), or
 * AL_ERR_PERM with *why. No I/O. */
int al_inbound_authenticate(al_inbound *in, const char *token, size_t len, int64_t now,
                            al_principal **out, enum al_jwt_check *why);

/* The token of an "Authorization"/"Proxy-Authorization" value "Bearer <token>" (scheme
 * case-insensitive, one space or more, no trailing junk): AL_OK with a slice of value,
 * AL_ERR_NOTFOUND for another scheme or an empty token. */
int al_inbound_bearer(const char *value, size_t len, const char **token, size_t *tlen);

/* The issuer (from discovery) once known, else NULL. Borrowed until the next prime. */
const char *al_inbound_issuer(al_inbound *in);

#endif
