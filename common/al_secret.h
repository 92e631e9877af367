/* al_secret: the view of one credential the data path injects — what
 * identity/ (the store, token and AWS sources) hands out and auth/ (the injectors)
 * consumes. Here, below both, so neither folder includes the other for it.
 *
 * A view points into its owner's memory (a store snapshot, a token cache entry),
 * valid while the caller holds the owner's reference; the owner wipes the bytes.
 * Never log a view's value. */
#ifndef AL_SECRET_H
#define AL_SECRET_H

#include <stddef.h>
#include <stdint.h>

typedef struct al_secret_view {
    const char *provider; /* provider name */
    uint32_t version;     /* provider's secret version */
    const char *kind;     /* "api_key", "oauth2", "aws" */
    const char *environment;
    const unsigned char *value; /* the secret (api_key: the key); NOT NUL-terminated */
    size_t len;
    /* Added by the identity module: */
    const unsigned char *session_token; /* aws: optional session token, else NULL */
    size_t session_token_len;
    /* Non-secret settings as JSON text (oauth2: endpoints, clientId; aws: accessKeyId),
     * NULL for api_key. */
    const char *config_json;
    /* oauth2 grants: "sha256:" + 12 hex of the access token, for the audit record;
     * NULL otherwise. */
    const char *fingerprint;
} al_secret_view;

#endif
