/* al_sigv4: AWS Signature Version 4 (header signing), an engine without I/O.
 *
 * Takes the request as the upstream will receive it (method, path and query in wire
 * form, the headers to sign, the payload hash) plus credentials, region, service and a
 * time, and returns the Authorization value and X-Amz-Date; optionally the canonical
 * request and string to sign (tests, debugging: never logged, they hold no secret but
 * the token). Pure functions: no clock, no allocation that outlives a call except in
 * the caller-owned key cache.
 *
 * Why not libcurl's CURLOPT_AWS_SIGV4: curl signs inside curl_easy_perform with only
 * the headers curl itself knows at that point and hashes only CURLOPT_POSTFIELDS (a
 * streamed body from a read callback is signed as the empty body), has no knob for
 * the double-encoded path or S3's single encoding, derives the signing key on every
 * request, and 7.88's query canonicalisation differs from the specification
 * (sorting, encoding). airlock must also re-sign requests an SDK already signed and
 * report what it signed (audit), so the signer lives here.
 *
 * Rules implemented (and checked by the AWS test suite, tests/data/sigv4/v4):
 *  - canonical URI: dot segments and empty segments removed (unless KEEP_PATH), then
 *    every byte but unreserved and '/' percent-encoded: a path already percent-
 *    encoded on the wire is encoded again ("double encoding"), as AWS services other
 *    than S3 and botocore do. S3 (AL_SIGV4_S3): no normalisation, the path is decoded
 *    once and encoded once (what S3 computes on its side).
 *  - canonical query: '&'-separated pairs, empty pairs dropped, key and value
 *    percent-decoded ('+' is a literal plus, RFC 3986) and re-encoded (unreserved kept,
 *    upper-case hex), sorted by key then value.
 *  - canonical headers: names lower-cased, values trimmed with runs of whitespace
 *    (including obsolete line folding) collapsed to one space, repeated names joined
 *    with ',' in arrival order, sorted by name. x-amz-date, x-amz-security-token
 *    (when the credentials have a token) and x-amz-content-sha256 (when the flag asks)
 *    are added by the signer; any of those and Authorization in the caller's list are
 *    ignored, so a request an SDK already signed is re-signed by passing its headers.
 *  - signing key HMAC chain cached per (secret, date, region, service) in an
 *    al_sigv4_key_cache the caller owns (one per worker: no lock).
 *
 * Secrets: the secret key is read, never copied except into the cache (wiped when
 * evicted or freed); the session token appears in the canonical request and in the
 * header the caller adds, nowhere else. */
#ifndef AL_SIGV4_H
#define AL_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_buf.h"

#define AL_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* S3: an aws-chunked body with unsigned chunks and a checksum trailer (SDK uploads). */
#define AL_SIGV4_STREAMING_UNSIGNED_TRAILER "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
#define AL_SIGV4_EMPTY_SHA256               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct al_sigv4_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} al_sigv4_header;

typedef struct al_sigv4_creds {
    const char *access_key_id;
    size_t access_key_id_len;
    const unsigned char *secret;
    size_t secret_len;
    const unsigned char *session_token; /* NULL: long-term credentials */
    size_t session_token_len;
} al_sigv4_creds;

enum al_sigv4_flags {
    /* No dot-segment / empty-segment removal (the test suite's "normalize": false). */
    AL_SIGV4_KEEP_PATH = 1,
    /* Decode the path once, encode once (instead of encoding the wire form again). */
    AL_SIGV4_SINGLE_ENCODE = 2,
    /* S3's rules: both of the above. */
    AL_SIGV4_S3 = AL_SIGV4_KEEP_PATH | AL_SIGV4_SINGLE_ENCODE,
    /* Add and sign x-amz-content-sha256 with the payload hash (S3 requires it). */
    AL_SIGV4_CONTENT_SHA256 = 4,
    /* The session token is sent but not signed (added after signing; some services,
     * e.g. IoT, want that; the test suite's "omit_session_token"). */
    AL_SIGV4_TOKEN_UNSIGNED = 8,
};

typedef struct al_sigv4_request {
    const char *method;
    size_t method_len;
    const char *path; /* wire form, no query; empty = "/" */
    size_t path_len;
    const char *query; /* without '?'; may be NULL */
    size_t query_len;
    /* The headers the upstream receives that are to be signed; must include Host. */
    const al_sigv4_header *headers;
    size_t n_headers;
    /* 64 lower-case hex digits (SHA-256 of the body), AL_SIGV4_UNSIGNED_PAYLOAD or
     * AL_SIGV4_STREAMING_UNSIGNED_TRAILER. */
    const char *payload_hash;
} al_sigv4_request;

typedef struct al_sigv4_params {
    const char *region;
    const char *service;
    int64_t now; /* unix seconds */
    unsigned flags;
} al_sigv4_params;

/* A handful of derived signing keys (most recent first). Zero-initialise or
 * al_sigv4_key_cache_init; free with al_sigv4_key_cache_free (wipes). */
#define AL_SIGV4_CACHE_SLOTS 4
typedef struct al_sigv4_key_cache {
    struct al_sigv4_cached_key {
        unsigned char *secret; /* owned copy, wiped on eviction; NULL = empty slot */
        size_t secret_len;
        char date[9];   /* YYYYMMDD */
        char scope[96]; /* "region/service" */
        unsigned char key[32];
    } slot[AL_SIGV4_CACHE_SLOTS];
    uint64_t hits, misses; /* for tests and the benchmark */
} al_sigv4_key_cache;

void al_sigv4_key_cache_init(al_sigv4_key_cache *c);
void al_sigv4_key_cache_free(al_sigv4_key_cache *c);

/* What the signer produces. The caller sends X-Amz-Date: amz_date, Authorization:
 * authorization, and (when it has a token) X-Amz-Security-Token, (with the flag)
 * x-amz-content-sha256: the payload hash. Buffers are caller-owned (init them). */
typedef struct al_sigv4_result {
    char amz_date[17]; /* 20150830T123600Z */
    al_buf *authorization;
    al_buf *canonical_request; /* optional (NULL): filled for tests */
    al_buf *string_to_sign;    /* optional (NULL) */
} al_sigv4_result;

/* Signs. cache may be NULL (derive every time). AL_ERR_INVAL for a missing
 * region/service/key, a header name or value with CR/LF/NUL (other than obsolete
 * folding in values) or a payload hash of the wrong form; AL_ERR_TOOBIG when a
 * buffer limit is hit; AL_ERR_CRYPTO if OpenSSL fails. */
int al_sigv4_sign(const al_sigv4_request *r, const al_sigv4_params *p, const al_sigv4_creds *cr,
                  al_sigv4_key_cache *cache, al_sigv4_result *out);

/* The path to forward, so what the upstream receives is what was signed: S3 flags:
 * decoded once and encoded once (as S3 canonicalises); otherwise bytes that are not
 * allowed raw in a URI path (controls, space, non-ASCII, '"<>\^`{|}') are percent-
 * encoded and everything else is kept. Appends to out. */
int al_sigv4_wire_path(const char *path, size_t len, unsigned flags, al_buf *out);
/* The query to forward: pairs in arrival order, empty pairs dropped, keys and values
 * decoded and re-encoded as in the canonical query. Appends to out (no '?'). */
int al_sigv4_wire_query(const char *query, size_t len, al_buf *out);

/* SHA-256 of p[0..n) as 64 lower-case hex digits + NUL. */
int al_sigv4_sha256_hex(const void *p, size_t n, char out[65]);

/* 1 when the query string holds a presigned-URL signature (X-Amz-Signature,
 * X-Amz-Credential or X-Amz-Algorithm, any case, encoded or not): the caller refuses
 * those (an agent must not bring its own signature in the URL). */
int al_sigv4_query_is_presigned(const char *query, size_t len);

/* The Authorization header's Credential access key id of an SDK-signed request, for
 * the audit of re-signing ("AWS4-HMAC-SHA256 Credential=AKID/..."). Sets *p,*n to a
 * view into value; AL_ERR_NOTFOUND when it is not a SigV4 Authorization. */
int al_sigv4_auth_access_key(const char *value, size_t len, const char **p, size_t *n);

#endif
