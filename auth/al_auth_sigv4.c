/* al_auth_sigv4: the `iam` injector — AWS Signature Version 4 over the outgoing request.
 *
 * What it signs is what the upstream receives: the path and query are rewritten to
 * their wire forms (al_sigv4_wire_path/_query) and sent that way; the signed headers
 * are Host (as libcurl derives it from the target: host, plus :port when not the
 * scheme's default), Content-Type, Content-MD5 and every x-amz-* header the agent sent
 * (X-Amz-Target, X-Amz-Invocation-Type, ...), each forwarded unchanged. The agent's own
 * Authorization, X-Amz-Date, X-Amz-Security-Token and X-Amz-Content-Sha256 (an SDK
 * that signed with placeholder keys) are dropped and replaced: that is re-signing.
 * A presigned query (X-Amz-Signature, X-Amz-Credential, ...) is refused
 * (AL_ERR_PERM): an agent must not bring a signature of its own; so is a body signed
 * chunk by chunk (x-amz-content-sha256: STREAMING-AWS4-..., AL_ERR_PROTO).
 *
 * Body: the payload hash is the SHA-256 of the whole body (AL_AUTH_NEEDS_BODY_SHA256,
 * the data path buffers it up to auth.max_body_bytes); S3 over https is signed with
 * UNSIGNED-PAYLOAD so uploads stream, and S3 gets x-amz-content-sha256 and its path
 * rules (decoded once, encoded once, not normalised).
 *
 * Signing keys are cached per (secret, date, region, service) in one process-wide
 * cache behind a mutex held for a lookup (a memcmp and a 32-byte copy) or, on a miss,
 * four HMACs. The credential is an `aws` secret view: value = secret access key,
 * session_token, config_json with accessKeyId. */
#include "al_auth.h"
#include "al_sigv4.h"
#include "common/al_err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static al_sigv4_key_cache key_cache;
static pthread_mutex_t key_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static int is_s3(const al_target *t)
{
    return t->auth.service && !strcmp(t->auth.service, "s3");
}

static int unsigned_payload(const al_target *t)
{
    return is_s3(t) && t->scheme && !strcmp(t->scheme, "https");
}

static unsigned sigv4_needs(const al_target *t)
{
    return AL_AUTH_NEEDS_CREDENTIAL | (unsigned_payload(t) ? 0 : AL_AUTH_NEEDS_BODY_SHA256);
}

int al_auth_sigv4_access_key(const al_secret_view *s, const char **p, size_t *n)
{
    /* config_json is written by airlock (jansson's compact dump in the store, or
     * al_aws_creds): find "accessKeyId", then its string, which has no escapes (an
     * access key id is [A-Z0-9]). */
    const char *j = s->config_json ? strstr(s->config_json, "\"accessKeyId\"") : NULL;
    if (!j)
        return AL_ERR_INVAL;
    j += 13;
    while (*j == ' ' || *j == ':')
        j++;
    if (*j != '"')
        return AL_ERR_INVAL;
    const char *e = ++j;
    while (*e && *e != '"' && *e != '\\')
        e++;
    if (*e != '"' || e == j)
        return AL_ERR_INVAL;
    *p = j;
    *n = (size_t)(e - j);
    return AL_OK;
}

static int signed_by_us(const al_header *h)
{
    if (al_http_name_is(h->name, h->name_len, "content-type") ||
        al_http_name_is(h->name, h->name_len, "content-md5"))
        return 1;
    return h->name_len > 6 && !strncasecmp(h->name, "x-amz-", 6);
}

static int add_value(al_auth_out *out, const char *name, const void *v, size_t n)
{
    al_buf *b = al_auth_out_add(out, name);
    if (!b)
        return AL_ERR_TOOBIG;
    int rc = al_auth_reserve(b, n);
    return rc ? rc : al_buf_append(b, v, n);
}

static int sigv4_prepare(const al_target *t, const al_auth_req *req, const al_secret_view *s,
                         al_auth_out *out)
{
    if (!s || !s->kind || strcmp(s->kind, "aws"))
        return AL_ERR_INVAL;
    if (al_sigv4_query_is_presigned(req->query, req->query_len))
        return AL_ERR_PERM;
    /* An SDK that signs its body chunk by chunk (aws-chunked, each chunk's signature
     * chained to its own key) cannot be re-signed: the chunk signatures are in the body. */
    const al_header *csha = al_http_find(req->headers, req->header_count, "x-amz-content-sha256");
    if (csha && csha->value_len >= 10 && !strncasecmp(csha->value, "STREAMING-", 10) &&
        !(csha->value_len == 34 && !strncmp(csha->value, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", 34)))
        return AL_ERR_PROTO;
    const char *akid;
    size_t akid_len;
    int rc = al_auth_sigv4_access_key(s, &akid, &akid_len);
    if (rc)
        return rc;
    unsigned flags = is_s3(t) ? (AL_SIGV4_S3 | AL_SIGV4_CONTENT_SHA256) : 0;
    if (csha) /* the agent's goes; ours (the real payload hash) is set and signed */
        flags |= AL_SIGV4_CONTENT_SHA256;
    char hash[65];
    if (req->body_sha256) {
        static const char hexd[] = "0123456789abcdef";
        for (int i = 0; i < 32; i++) {
            hash[2 * i] = hexd[req->body_sha256[i] >> 4];
            hash[2 * i + 1] = hexd[req->body_sha256[i] & 15];
        }
        hash[64] = '\0';
    } else if (unsigned_payload(t)) {
        /* an SDK's aws-chunked upload with unsigned chunks keeps its framing */
        snprintf(hash, sizeof hash, "%s",
                 csha && csha->value_len == 34 ? AL_SIGV4_STREAMING_UNSIGNED_TRAILER
                                               : AL_SIGV4_UNSIGNED_PAYLOAD);
    } else {
        return AL_ERR_INVAL; /* the data path must hand the body's digest */
    }

    /* The request target as it will go. */
    al_buf *tg = &out->target;
    al_buf_reset(tg);
    if ((rc = al_sigv4_wire_path(req->path, req->path_len, flags, tg)))
        return rc;
    size_t wpath_len = tg->len;
    if (req->query && req->query_len) {
        size_t before = tg->len;
        if ((rc = al_buf_append(tg, "?", 1)) ||
            (rc = al_sigv4_wire_query(req->query, req->query_len, tg)))
            return rc;
        if (tg->len == before + 1) { /* only empty pairs: no query at all */
            tg->len = before;
            tg->data[before] = '\0';
        }
    }

    /* Host as curl sends it: [v6] and :port unless the scheme's default. */
    char host[300];
    int v6 = strchr(req->host, ':') != NULL;
    int dflt = (!strcmp(req->scheme, "https") && req->port == 443) ||
               (!strcmp(req->scheme, "http") && req->port == 80);
    int hl = dflt ? snprintf(host, sizeof host, v6 ? "[%s]" : "%s", req->host)
                  : snprintf(host, sizeof host, v6 ? "[%s]:%u" : "%s:%u", req->host,
                             (unsigned)req->port);
    if (hl < 0 || (size_t)hl >= sizeof host)
        return AL_ERR_INVAL;

    al_sigv4_header stack[32], *hs = stack;
    size_t cap = req->header_count + 1;
    if (cap > sizeof stack / sizeof stack[0] && !(hs = calloc(cap, sizeof *hs)))
        return AL_ERR_NOMEM;
    size_t nh = 0;
    hs[nh++] = (al_sigv4_header){"host", 4, host, (size_t)hl};
    for (size_t i = 0; i < req->header_count; i++)
        if (signed_by_us(&req->headers[i]))
            hs[nh++] = (al_sigv4_header){req->headers[i].name, req->headers[i].name_len,
                                         req->headers[i].value, req->headers[i].value_len};
    const char *q = memchr(tg->data, '?', tg->len);
    al_sigv4_request sr = {
        .method = req->method,
        .method_len = strlen(req->method),
        .path = tg->data,
        .path_len = wpath_len,
        .query = q ? q + 1 : NULL,
        .query_len = q ? tg->len - (size_t)(q + 1 - tg->data) : 0,
        .headers = hs,
        .n_headers = nh,
        .payload_hash = hash,
    };
    al_sigv4_params prm = {t->auth.region, t->auth.service, req->now_ms / 1000, flags};
    al_sigv4_creds cr = {akid,   akid_len,         s->value,
                         s->len, s->session_token, s->session_token ? s->session_token_len : 0};
    al_buf auth;
    al_buf_init(&auth, 16 * 1024);
    al_sigv4_result res = {.authorization = &auth};
    pthread_mutex_lock(&key_cache_lock);
    rc = al_sigv4_sign(&sr, &prm, &cr, &key_cache, &res);
    pthread_mutex_unlock(&key_cache_lock);
    if (hs != stack)
        free(hs);
    if (!rc)
        rc = add_value(out, "Authorization", auth.data, auth.len);
    if (!rc)
        rc = add_value(out, "X-Amz-Date", res.amz_date, 16);
    if (!rc && s->session_token)
        rc = add_value(out, "X-Amz-Security-Token", s->session_token, s->session_token_len);
    if (!rc && (flags & AL_SIGV4_CONTENT_SHA256))
        rc = add_value(out, "X-Amz-Content-Sha256", hash, strlen(hash));
    al_buf_free(&auth, 0);
    return rc;
}

/* The agent's signing artefacts never go upstream, even those we do not set again
 * (a token header when our credentials have none). */
static int sigv4_drops_header(const al_target *t, const char *name, size_t len)
{
    (void)t;
    /* (x-amz-content-sha256 reaches prepare, which looks at it and sets its own) */
    return al_http_name_is(name, len, "x-amz-date") ||
           al_http_name_is(name, len, "x-amz-security-token");
}

const al_auth_injector al_auth_sigv4_injector = {
    .method = AL_AUTH_IAM,
    .name = "iam",
    .needs = sigv4_needs,
    .prepare = sigv4_prepare,
    .drops_header = sigv4_drops_header,
};
