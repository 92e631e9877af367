/* al_jwt: verification of inbound JWT access tokens (RFC 7519 / 7515 / 7517), an
 * engine without I/O.
 *
 * The caller gives a token, the issuer's key set (al_jwks, parsed from the JWKS
 * document it fetched), what it expects (issuer, audiences, clients, clock skew) and
 * the time; al_jwt_verify() answers with a principal or the one check that failed.
 * Fetching discovery documents and key sets, and re-fetching on an unknown `kid`, is
 * the caller's job (identity/, the OIDC module).
 *
 * Algorithms: RS256, PS256, ES256 and EdDSA (Ed25519) only. `none` and every HMAC
 * algorithm are refused before any key is looked at, so a public key can never be
 * used as an HMAC secret; a key is used only with the algorithm its type fits (and
 * its `alg`, when the JWK names one). Tokens are bounded (AL_JWT_MAX_BYTES), JSON is
 * parsed with duplicate keys refused, and nothing here logs or copies the token.
 *
 * al_jwt_cache remembers verified tokens by their SHA-256 until their `exp` (plus
 * the skew), so a repeated token costs one hash and one lookup. It is shared by the
 * workers behind one mutex and belongs to one configuration (a reload makes a new
 * one, so changed allowed_* lists take effect at once). */
#ifndef AL_JWT_H
#define AL_JWT_H

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define AL_JWT_MAX_BYTES 16384 /* longer tokens are refused as malformed */
#define AL_JWT_SKEW_S    60    /* default clock skew allowed on exp / nbf (seconds) */
#define AL_JWKS_MAX_KEYS 64

/* The check that refused a token; al_jwt_check_name() is the stable code. */
enum al_jwt_check {
    AL_JWT_OK = 0,
    AL_JWT_MISSING,       /* "missing_token": no bearer token at all */
    AL_JWT_MALFORMED,     /* "malformed": not three base64url JSON parts, bad claims */
    AL_JWT_ALG,           /* "alg_not_allowed": none, HS*, or alg not fitting the key */
    AL_JWT_UNKNOWN_KID,   /* "unknown_key": no key in the JWKS for the token */
    AL_JWT_SIGNATURE,     /* "bad_signature" */
    AL_JWT_EXPIRED,       /* "expired" */
    AL_JWT_NOT_YET_VALID, /* "not_yet_valid" */
    AL_JWT_ISSUER,        /* "wrong_issuer" */
    AL_JWT_AUDIENCE,      /* "wrong_audience" */
    AL_JWT_CLIENT,        /* "client_not_allowed" */
    AL_JWT_UNAVAILABLE,   /* "keys_unavailable": the issuer's keys could not be fetched */
    AL_JWT_CHECK_COUNT
};

/* "expired", "wrong_audience", ...: stable, for JSON bodies and audit records. */
const char *al_jwt_check_name(enum al_jwt_check c);
/* A sentence saying what failed and what to do; never contains the token. */
const char *al_jwt_check_text(enum al_jwt_check c);

/* ---- key sets --------------------------------------------------------------- */

typedef struct al_jwks al_jwks;

/* Parses a JWKS document ({"keys":[...]}). Keys airlock cannot use for verification
 * (unknown kty or curve, RSA under 2048 bits, use other than "sig", bad encoding)
 * are skipped, not errors. AL_ERR_INVAL if the document is not a JWKS at all. */
int al_jwks_parse(const char *json, size_t len, al_jwks **out);
void al_jwks_free(al_jwks *k);
size_t al_jwks_count(const al_jwks *k);
/* 1 if the set has a key with this kid. */
int al_jwks_has_kid(const al_jwks *k, const char *kid);

/* ---- principals ------------------------------------------------------------- */

/* Who sent a request, from a verified token. Reference-counted and immutable once
 * built, so the cache and every request using it share one copy across threads. */
typedef struct al_principal {
    atomic_int refs;
    char *iss;       /* owned */
    char *sub;       /* owned; NULL when the token has none */
    char *client_id; /* owned; client_id, else azp; NULL when neither */
    int64_t exp;
    json_t *claims; /* owned reference to the payload object */
} al_principal;

/* A principal from explicit values (`airlock explain --principal`); iss may be NULL. */
al_principal *al_principal_new(const char *iss, const char *sub, const char *client_id,
                               json_t *claims /* borrowed, may be NULL */);
al_principal *al_principal_ref(al_principal *p);
void al_principal_unref(al_principal *p);
/* 1 if claim `claim` equals `value` (a string claim, or a number / true / false
 * written the same way) or is an array holding such an element; else 0. */
int al_principal_claim_has(const al_principal *p, const char *claim, const char *value);

/* ---- verification ----------------------------------------------------------- */

typedef struct al_jwt_expect {
    const char *issuer;           /* required `iss`; NULL = not checked */
    const char *const *audiences; /* any one in `aud`; 0 count = not checked */
    size_t audience_count;
    const char *const *clients; /* client_id / azp in this list; 0 = not checked */
    size_t client_count;
    unsigned skew_s; /* allowed clock skew on exp/nbf */
} al_jwt_expect;

/* The token's header `kid` (for deciding on a JWKS re-fetch) into buf; 0 if found,
 * AL_ERR_NOTFOUND if the token has no kid, AL_ERR_INVAL if it is malformed. */
int al_jwt_peek_kid(const char *token, size_t len, char *buf, size_t n);

/* Verifies `token` (len bytes, no "Bearer ") at time `now` (seconds since the
 * epoch). AL_OK with *out = a new principal (one reference), or AL_ERR_PERM with
 * *why set; AL_ERR_NOMEM. Checks in this order: shape, alg, key, signature, iss,
 * exp, nbf, aud, client. */
int al_jwt_verify(const char *token, size_t len, const al_jwks *keys, const al_jwt_expect *x,
                  int64_t now, al_principal **out, enum al_jwt_check *why);

/* ---- the verified-token cache ---------------------------------------------- */

typedef struct al_jwt_cache al_jwt_cache;

/* slots: rounded up to a power of two (at most 1 << 20). */
al_jwt_cache *al_jwt_cache_new(size_t slots);
void al_jwt_cache_free(al_jwt_cache *c);
/* A cached principal for this token still valid at `now` (a new reference), else NULL. */
al_principal *al_jwt_cache_get(al_jwt_cache *c, const char *token, size_t len, int64_t now);
/* Remembers a verified token until valid_until (seconds); replaces the entry of its
 * slot group that expires first when full. */
void al_jwt_cache_put(al_jwt_cache *c, const char *token, size_t len, al_principal *p,
                      int64_t valid_until);

/* ---- helpers ---------------------------------------------------------------- */

/* Strict base64url without padding (RFC 7515 §2): other bytes, '=' or a length of
 * 1 mod 4 are errors. Decodes into out (at most cap bytes); returns the length or
 * a negative al_err. */
long al_base64url_decode(const char *in, size_t len, unsigned char *out, size_t cap);

#endif
