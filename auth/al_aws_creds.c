/* al_aws_creds: AWS credential sources, cached, single flight (see al_aws_creds.h).
 *
 * Owns: per provider, the current credentials (refcounted, immutable), the wait list,
 * and for network sources one fetch thread. Invariants:
 *  - `lock` covers current, fetching, want_fetch, last_rc, last_fail and the waiters;
 *    it is never held across a network call; waiters' done() runs with it held (so
 *    cancel is exact);
 *  - at most one fetch runs (fetching), requested through want_fetch + cond;
 *  - a credentials object is never modified after it is published.
 * Who calls it: the SigV4 credential stage (one provider per distinct source
 * configuration of the table), the tests. */
#include "al_aws_creds.h"

#include "auth/al_sigv4.h"
#include "common/al_buf.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "identity/al_cred.h"

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define BODY_MAX           (256 * 1024)
#define TOKEN_FILE_MAX     (64 * 1024)
#define RETRY_AFTER_FAIL_S 1

/* ---- credentials ---- */

static int header_safe(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

int al_aws_credentials_new(const char *akid, const unsigned char *secret, size_t secret_len,
                           const unsigned char *token, size_t token_len, int64_t expires_at,
                           const char *source, al_aws_credentials **out)
{
    if (!akid || !*akid || !secret || !secret_len)
        return AL_ERR_INVAL;
    al_aws_credentials *c = calloc(1, sizeof *c);
    if (!c)
        return AL_ERR_NOMEM;
    atomic_init(&c->refs, 1);
    c->access_key_id = strdup(akid);
    c->secret = malloc(secret_len + 1);
    if (token)
        c->token = malloc(token_len + 1);
    if (!c->access_key_id || !c->secret || (token && !c->token)) {
        free(c->access_key_id);
        free(c->secret);
        free(c->token);
        free(c);
        return AL_ERR_NOMEM;
    }
    memcpy(c->secret, secret, secret_len);
    c->secret[secret_len] = 0;
    c->secret_len = secret_len;
    if (token) {
        memcpy(c->token, token, token_len);
        c->token[token_len] = 0;
        c->token_len = token_len;
    }
    c->expires_at = expires_at;
    c->source = source;
    *out = c;
    return AL_OK;
}

al_aws_credentials *al_aws_credentials_ref(al_aws_credentials *c)
{
    if (c)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

void al_aws_credentials_unref(al_aws_credentials *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    OPENSSL_cleanse(c->secret, c->secret_len);
    if (c->token)
        OPENSSL_cleanse(c->token, c->token_len);
    free(c->secret);
    free(c->token);
    free(c->access_key_id);
    free(c);
}

int al_aws_credentials_from_view(const al_secret_view *v, al_aws_credentials **out)
{
    if (!v->kind || strcmp(v->kind, "aws") || !v->config_json || !v->len)
        return AL_ERR_INVAL;
    json_t *j = json_loads(v->config_json, 0, NULL);
    const char *akid = json_string_value(json_object_get(j, "accessKeyId"));
    int rc = AL_ERR_INVAL;
    if (akid && *akid && header_safe(akid, strlen(akid)) &&
        (!v->session_token || header_safe((const char *)v->session_token, v->session_token_len)))
        rc = al_aws_credentials_new(akid, v->value, v->len, v->session_token,
                                    v->session_token ? v->session_token_len : 0, 0, "store", out);
    json_decref(j);
    return rc;
}

/* ---- names ---- */

static const char *const source_names[] = {"store", "environment", "container", "imds",
                                           "web_identity"};

const char *al_aws_source_name(enum al_aws_source s)
{
    return (unsigned)s < sizeof source_names / sizeof source_names[0] ? source_names[s] : NULL;
}

int al_aws_source_parse(const char *name, enum al_aws_source *out)
{
    for (size_t i = 0; name && i < sizeof source_names / sizeof source_names[0]; i++)
        if (!strcmp(name, source_names[i])) {
            *out = (enum al_aws_source)i;
            return AL_OK;
        }
    return AL_ERR_INVAL;
}

/* ---- parsers ---- */

static int digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int al_aws_parse_time(const char *s, size_t len, int64_t *out)
{
    int y, mo, d, h, mi, se;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':' || digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) ||
        digits(s + 11, 2, &h) || digits(s + 14, 2, &mi) || digits(s + 17, 2, &se))
        return AL_ERR_INVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
        return AL_ERR_INVAL;
    size_t i = 19;
    if (i < len && s[i] == '.') {
        i++;
        size_t f = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f)
            return AL_ERR_INVAL;
    }
    int64_t off = 0;
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh, om;
        if (digits(s + i + 1, 2, &oh) || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return AL_ERR_INVAL;
        off = (oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return AL_ERR_INVAL;
    }
    if (i != len)
        return AL_ERR_INVAL;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = se};
    *out = (int64_t)timegm(&tm) - off;
    return AL_OK;
}

int al_aws_parse_json_credentials(const char *body, size_t len, const char *source,
                                  al_aws_credentials **out)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return AL_ERR_PROTO;
    }
    int rc = AL_ERR_PROTO;
    const char *code = json_string_value(json_object_get(j, "Code"));
    const char *akid = json_string_value(json_object_get(j, "AccessKeyId"));
    json_t *js = json_object_get(j, "SecretAccessKey"), *jt = json_object_get(j, "Token");
    const char *exp = json_string_value(json_object_get(j, "Expiration"));
    int64_t expires = 0;
    if (code && strcmp(code, "Success")) {
        rc = AL_ERR_PERM;
        goto out;
    }
    if (!akid || !*akid || !json_is_string(js) || !header_safe(akid, strlen(akid)) ||
        (jt && !json_is_null(jt) && !json_is_string(jt)))
        goto out;
    if (exp && al_aws_parse_time(exp, strlen(exp), &expires))
        goto out;
    const char *tok = json_is_string(jt) ? json_string_value(jt) : NULL;
    size_t toklen = tok ? json_string_length(jt) : 0;
    if (tok && (!toklen || !header_safe(tok, toklen)))
        goto out;
    rc = al_aws_credentials_new(akid, (const unsigned char *)json_string_value(js),
                                json_string_length(js), (const unsigned char *)tok, toklen, expires,
                                source, out);
    if (rc == AL_ERR_INVAL)
        rc = AL_ERR_PROTO;
out:
    /* The document held the secret: jansson's copies are freed here, not wiped
     * (jansson has no hook); they live only as long as this call. */
    json_decref(j);
    return rc;
}

/* The text between <tag> and </tag> inside [p, end), XML entities decoded, into out. */
static int xml_text(const char *p, const char *end, const char *tag, al_buf *out)
{
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    size_t ol = strlen(open), cl = strlen(close);
    const char *a = NULL;
    for (const char *q = p; q + ol <= end; q++)
        if (!memcmp(q, open, ol)) {
            a = q + ol;
            break;
        }
    if (!a)
        return AL_ERR_NOTFOUND;
    const char *b = NULL;
    for (const char *q = a; q + cl <= end; q++)
        if (!memcmp(q, close, cl)) {
            b = q;
            break;
        }
    if (!b)
        return AL_ERR_PROTO;
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    for (const char *q = a; q < b;) {
        int rc;
        if (*q == '&') {
            size_t k;
            for (k = 0; k < sizeof ents / sizeof ents[0]; k++) {
                size_t el = strlen(ents[k].ent);
                if ((size_t)(b - q) >= el && !memcmp(q, ents[k].ent, el)) {
                    rc = al_buf_append(out, &ents[k].c, 1);
                    q += el;
                    break;
                }
            }
            if (k == sizeof ents / sizeof ents[0])
                return AL_ERR_PROTO; /* numeric or unknown entity: not in STS answers */
        } else {
            if ((unsigned char)*q < 0x20 && *q != '\n' && *q != '\t' && *q != '\r')
                return AL_ERR_PROTO;
            rc = al_buf_append(out, q, 1);
            q++;
        }
        if (rc)
            return rc;
    }
    return AL_OK;
}

static void trim_buf(al_buf *b)
{
    if (!b->data)
        return;
    size_t s = 0;
    while (s < b->len && strchr(" \t\r\n", b->data[s]))
        s++;
    while (b->len > s && strchr(" \t\r\n", b->data[b->len - 1]))
        b->len--;
    memmove(b->data, b->data + s, b->len - s);
    b->len -= s;
    b->data[b->len] = 0;
}

int al_aws_parse_sts_xml(const char *body, size_t len, const char *source, al_aws_credentials **out)
{
    const char *end = body + len;
    al_buf akid, secret, token, exp, code;
    al_buf_init(&akid, 1024);
    al_buf_init(&secret, 1024);
    al_buf_init(&token, 16384);
    al_buf_init(&exp, 128);
    al_buf_init(&code, 256);
    int rc = AL_ERR_PROTO;
    const char *cred = NULL;
    for (const char *q = body; q + 13 <= end; q++)
        if (!memcmp(q, "<Credentials>", 13)) {
            cred = q;
            break;
        }
    if (!cred) {
        if (xml_text(body, end, "Code", &code) == AL_OK) {
            trim_buf(&code);
            /* STS error codes (AccessDenied, ExpiredTokenException...) are not secret. */
            al_log(AL_LOG_WARN, "aws.sts.error", "code=%.64s",
                   header_safe(code.data, code.len) ? code.data : "?");
            rc = AL_ERR_PERM;
        }
        goto out;
    }
    if (xml_text(cred, end, "AccessKeyId", &akid) ||
        xml_text(cred, end, "SecretAccessKey", &secret) ||
        xml_text(cred, end, "SessionToken", &token) || xml_text(cred, end, "Expiration", &exp))
        goto out;
    trim_buf(&akid);
    trim_buf(&secret);
    trim_buf(&token);
    trim_buf(&exp);
    int64_t expires;
    if (!akid.len || !secret.len || !token.len || !header_safe(akid.data, akid.len) ||
        !header_safe(token.data, token.len) || al_aws_parse_time(exp.data, exp.len, &expires))
        goto out;
    rc = al_aws_credentials_new(akid.data, (unsigned char *)secret.data, secret.len,
                                (unsigned char *)token.data, token.len, expires, source, out);
out:
    al_buf_free(&akid, 0);
    al_buf_free(&secret, 1);
    al_buf_free(&token, 1);
    al_buf_free(&exp, 0);
    al_buf_free(&code, 0);
    return rc;
}

/* ---- the provider ---- */

struct al_aws_provider {
    enum al_aws_source source;
    char *role_arn, *external_id, *session_name, *sts_endpoint, *sts_region, *ca_file;
    uint32_t refresh_before_s, timeout_ms;
    int (*base)(void *arg, al_aws_credentials **out);
    void *base_arg;
    int64_t (*now_fn)(void *arg);
    void *now_arg;
    /* from the environment */
    char *container_url, *container_token, *container_token_file;
    char *imds_endpoint;
    char *wi_token_file, *wi_role_arn, *wi_session;
    al_aws_credentials *static_creds; /* environment */
    int networked;                    /* needs the fetch thread */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int thread_started, stop;
    al_aws_credentials *current;
    int64_t current_fetched_at;
    int fetching, want_fetch;
    int last_rc;
    const char *last_detail;
    int64_t last_fail;  /* 0 = the last fetch succeeded */
    al_aws_waiter head; /* circular list sentinel */
    uint64_t fetches;
};

static int64_t now_s(const al_aws_provider *p)
{
    return p->now_fn ? p->now_fn(p->now_arg) : (int64_t)time(NULL);
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *al_aws_provider_source(const al_aws_provider *p)
{
    return p->role_arn ? "assume_role" : al_aws_source_name(p->source);
}

static void *fetch_thread(void *arg);

void al_aws_provider_free(al_aws_provider *p)
{
    if (!p)
        return;
    if (p->thread_started) {
        pthread_mutex_lock(&p->lock);
        p->stop = 1;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    al_aws_credentials_unref(p->current);
    al_aws_credentials_unref(p->static_creds);
    if (p->container_token)
        OPENSSL_cleanse(p->container_token, strlen(p->container_token));
    char *strs[] = {p->role_arn,      p->external_id,     p->session_name,
                    p->sts_endpoint,  p->sts_region,      p->ca_file,
                    p->container_url, p->container_token, p->container_token_file,
                    p->imds_endpoint, p->wi_token_file,   p->wi_role_arn,
                    p->wi_session};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        free(strs[i]);
    free(p);
}

int al_aws_provider_new(const al_aws_provider_cfg *cfg, al_aws_provider **out, const char **detail)
{
    const char *(*env)(const char *) =
        cfg->getenv_fn ? cfg->getenv_fn : (const char *(*)(const char *))getenv;
    static const char *none = "";
    *detail = none;
    al_aws_provider *p = calloc(1, sizeof *p);
    if (!p)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->head.next = p->head.prev = &p->head;
    p->source = cfg->source;
    p->refresh_before_s = cfg->refresh_before_s ? cfg->refresh_before_s : 300;
    p->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 5000;
    p->base = cfg->base;
    p->base_arg = cfg->base_arg;
    p->now_fn = cfg->now_fn;
    p->now_arg = cfg->now_arg;
    const char *sts = cfg->sts_endpoint ? cfg->sts_endpoint : env("AIRLOCK_AWS_STS_ENDPOINT");
    p->role_arn = dup_or_null(cfg->role_arn);
    p->external_id = dup_or_null(cfg->external_id);
    p->session_name = strdup(cfg->session_name ? cfg->session_name : "airlock");
    p->sts_endpoint = strdup(sts && *sts ? sts : "https://sts.amazonaws.com");
    p->sts_region = strdup(cfg->sts_region ? cfg->sts_region : "us-east-1");
    /* AWS_CA_BUNDLE: the CA bundle the AWS SDKs and CLI honour (a private STS, tests) */
    p->ca_file = dup_or_null(cfg->ca_file ? cfg->ca_file : env("AWS_CA_BUNDLE"));
    int rc = AL_ERR_CONFIG;
    if (!p->session_name || !p->sts_endpoint || !p->sts_region) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    switch (cfg->source) {
    case AL_AWS_SRC_STORE:
        if (!cfg->base) {
            *detail = "the store source needs a provider";
            goto fail;
        }
        break;
    case AL_AWS_SRC_ENVIRONMENT: {
        const char *ak = env("AWS_ACCESS_KEY_ID"), *sk = env("AWS_SECRET_ACCESS_KEY"),
                   *tok = env("AWS_SESSION_TOKEN");
        if (!ak || !*ak || !sk || !*sk) {
            *detail = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set";
            goto fail;
        }
        if (tok && !*tok)
            tok = NULL;
        if (!header_safe(ak, strlen(ak)) || (tok && !header_safe(tok, strlen(tok)))) {
            *detail = "AWS_ACCESS_KEY_ID or AWS_SESSION_TOKEN holds control characters";
            goto fail;
        }
        rc = al_aws_credentials_new(ak, (const unsigned char *)sk, strlen(sk),
                                    (const unsigned char *)tok, tok ? strlen(tok) : 0, 0,
                                    "environment", &p->static_creds);
        if (rc)
            goto fail;
        rc = AL_ERR_CONFIG;
        break;
    }
    case AL_AWS_SRC_CONTAINER: {
        const char *full = env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                   *rel = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        char url[2048];
        if (rel && *rel) {
            if (rel[0] != '/') {
                *detail = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with '/'";
                goto fail;
            }
            snprintf(url, sizeof url, "http://169.254.170.2%s", rel);
        } else if (full && *full) {
            snprintf(url, sizeof url, "%s", full);
        } else {
            *detail = "AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI must be set";
            goto fail;
        }
        if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
            *detail = "the container credentials URI must be http:// or https://";
            goto fail;
        }
        p->container_url = strdup(url);
        p->container_token = dup_or_null(env("AWS_CONTAINER_AUTHORIZATION_TOKEN"));
        p->container_token_file = dup_or_null(env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"));
        if (p->container_token && !header_safe(p->container_token, strlen(p->container_token))) {
            *detail = "AWS_CONTAINER_AUTHORIZATION_TOKEN holds control characters";
            goto fail;
        }
        break;
    }
    case AL_AWS_SRC_IMDS: {
        const char *dis = env("AWS_EC2_METADATA_DISABLED");
        if (dis && !strcasecmp(dis, "true")) {
            *detail = "AWS_EC2_METADATA_DISABLED is true";
            goto fail;
        }
        const char *ep = env("AWS_EC2_METADATA_SERVICE_ENDPOINT");
        p->imds_endpoint = strdup(ep && *ep ? ep : "http://169.254.169.254");
        if (p->imds_endpoint && p->imds_endpoint[0] &&
            p->imds_endpoint[strlen(p->imds_endpoint) - 1] == '/')
            p->imds_endpoint[strlen(p->imds_endpoint) - 1] = 0;
        break;
    }
    case AL_AWS_SRC_WEB_IDENTITY: {
        const char *tf = env("AWS_WEB_IDENTITY_TOKEN_FILE"), *ra = env("AWS_ROLE_ARN"),
                   *sn = env("AWS_ROLE_SESSION_NAME");
        if (!tf || !*tf || !ra || !*ra) {
            *detail = "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN must be set";
            goto fail;
        }
        p->wi_token_file = strdup(tf);
        p->wi_role_arn = strdup(ra);
        p->wi_session = strdup(sn && *sn ? sn : "airlock");
        break;
    }
    default:
        *detail = "unknown credential source";
        goto fail;
    }
    p->networked = cfg->source == AL_AWS_SRC_CONTAINER || cfg->source == AL_AWS_SRC_IMDS ||
                   cfg->source == AL_AWS_SRC_WEB_IDENTITY || p->role_arn;
    if (p->networked) {
        pthread_once(&curl_once, curl_init_once);
        if (pthread_create(&p->thread, NULL, fetch_thread, p)) {
            rc = AL_ERR_NOMEM;
            goto fail;
        }
        p->thread_started = 1;
    }
    *out = p;
    return AL_OK;
fail:
    al_aws_provider_free(p);
    return rc;
}

uint64_t al_aws_provider_fetches(al_aws_provider *p)
{
    pthread_mutex_lock(&p->lock);
    uint64_t n = p->fetches;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* lock held */
static void request_fetch(al_aws_provider *p)
{
    if (p->fetching)
        return;
    p->fetching = 1;
    p->want_fetch = 1;
    pthread_cond_broadcast(&p->cond);
}

static int64_t margin(const al_aws_provider *p)
{
    int64_t life = p->current->expires_at - p->current_fetched_at;
    int64_t m = p->refresh_before_s;
    if (life > 0 && life / 2 < m)
        m = life / 2;
    return m;
}

int al_aws_provider_get(al_aws_provider *p, al_aws_credentials **out, al_aws_waiter *w,
                        void (*done)(void *arg, int rc), void *arg, const char **detail)
{
    static const char *none = "";
    *detail = none;
    if (!p->networked) {
        if (p->static_creds) {
            *out = al_aws_credentials_ref(p->static_creds);
            return AL_OK;
        }
        int rc = p->base(p->base_arg, out);
        if (rc)
            *detail = "the aws provider has no usable credentials in the store";
        return rc;
    }
    pthread_mutex_lock(&p->lock);
    int64_t now = now_s(p);
    int rc;
    al_aws_credentials *c = p->current;
    if (c && (c->expires_at == 0 || now < c->expires_at)) {
        if (c->expires_at && now >= c->expires_at - margin(p) &&
            (!p->last_fail || now - p->last_fail >= RETRY_AFTER_FAIL_S))
            request_fetch(p); /* refresh ahead; this caller goes on with the current set */
        *out = al_aws_credentials_ref(c);
        rc = AL_OK;
        goto out;
    }
    if (!p->fetching && p->last_fail && now - p->last_fail < RETRY_AFTER_FAIL_S) {
        rc = p->last_rc;
        *detail = p->last_detail;
        goto out;
    }
    request_fetch(p);
    if (w) {
        w->done = done;
        w->arg = arg;
        w->queued = 1;
        w->prev = p->head.prev;
        w->next = &p->head;
        p->head.prev->next = w;
        p->head.prev = w;
    }
    rc = AL_ERR_AGAIN;
out:
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void al_aws_provider_cancel(al_aws_provider *p, al_aws_waiter *w)
{
    if (!p->networked)
        return;
    pthread_mutex_lock(&p->lock);
    if (w->queued) {
        w->prev->next = w->next;
        w->next->prev = w->prev;
        w->queued = 0;
    }
    pthread_mutex_unlock(&p->lock);
}

/* ---- fetching (fetch thread only) ---- */

static size_t on_body(char *ptr, size_t size, size_t n, void *arg)
{
    al_buf *b = arg;
    return al_buf_append(b, ptr, size * n) ? 0 : size * n;
}

/* One HTTP exchange. The proxy environment is ignored: these requests are airlock's
 * own and must not loop through an HTTPS_PROXY that points at airlock. */
static int http_do(al_aws_provider *p, const char *method, const char *url, struct curl_slist *hdrs,
                   const char *body, size_t blen, al_buf *out, long *status, const char **detail)
{
    CURL *e = curl_easy_init();
    if (!e)
        return AL_ERR_NOMEM;
    al_buf_reset(out);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
    if (hdrs)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    if (p->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, p->ca_file);
    if (strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)blen);
        if (strcmp(method, "POST"))
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    CURLcode cc = curl_easy_perform(e);
    int rc = AL_OK;
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = AL_ERR_TIMEOUT;
        *detail = "the credential endpoint did not answer in time";
    } else if (cc == CURLE_WRITE_ERROR) {
        rc = AL_ERR_PROTO;
        *detail = "the credential endpoint's answer is too large";
    } else if (cc != CURLE_OK) {
        rc = AL_ERR_IO;
        *detail = "the credential endpoint could not be reached";
        al_log(AL_LOG_WARN, "aws.creds.fetch", "curl: %s", curl_easy_strerror(cc));
    } else {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    }
    curl_easy_cleanup(e);
    return rc;
}

static int read_small_file(const char *path, al_buf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return AL_ERR_IO;
    char buf[4096];
    size_t n;
    int rc = AL_OK;
    while (!rc && (n = fread(buf, 1, sizeof buf, f)) > 0)
        rc = al_buf_append(out, buf, n);
    OPENSSL_cleanse(buf, sizeof buf);
    fclose(f);
    trim_buf(out);
    return rc;
}

static struct curl_slist *add_header(struct curl_slist *l, const char *name, const char *value,
                                     size_t vlen, int *ok)
{
    al_buf h;
    al_buf_init(&h, 70000);
    if (al_buf_append(&h, name, strlen(name)) || al_buf_append(&h, ": ", 2) ||
        al_buf_append(&h, value, vlen)) {
        *ok = 0;
        al_buf_free(&h, 1);
        return l;
    }
    struct curl_slist *n = curl_slist_append(l, h.data);
    al_buf_free(&h, 1);
    if (!n) {
        *ok = 0;
        return l;
    }
    return n;
}

/* curl_slist_free_all without leaving tokens in freed memory. */
static void slist_wipe(struct curl_slist *l)
{
    for (struct curl_slist *i = l; i; i = i->next)
        OPENSSL_cleanse(i->data, strlen(i->data));
    curl_slist_free_all(l);
}

static int fetch_container(al_aws_provider *p, al_aws_credentials **out, const char **detail)
{
    al_buf tok, body;
    al_buf_init(&tok, TOKEN_FILE_MAX);
    al_buf_init(&body, BODY_MAX);
    struct curl_slist *h = NULL;
    int ok = 1, rc;
    long status = 0;
    if (p->container_token_file) {
        if ((rc = read_small_file(p->container_token_file, &tok))) {
            *detail = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE cannot be read";
            goto out;
        }
    } else if (p->container_token) {
        rc = al_buf_append(&tok, p->container_token, strlen(p->container_token));
        if (rc)
            goto out;
    }
    if (tok.len) {
        if (!header_safe(tok.data, tok.len)) {
            rc = AL_ERR_CONFIG;
            *detail = "the container authorization token holds control characters";
            goto out;
        }
        h = add_header(h, "Authorization", tok.data, tok.len, &ok);
    }
    h = add_header(h, "Accept", "application/json", 16, &ok);
    if (!ok) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if ((rc = http_do(p, "GET", p->container_url, h, NULL, 0, &body, &status, detail)))
        goto out;
    if (status != 200) {
        rc = status == 401 || status == 403 ? AL_ERR_PERM : AL_ERR_PROTO;
        *detail = "the container credentials endpoint refused";
        goto out;
    }
    if ((rc = al_aws_parse_json_credentials(body.data, body.len, "container", out)))
        *detail = "the container credentials endpoint's answer is not credentials";
out:
    slist_wipe(h);
    al_buf_free(&tok, 1);
    al_buf_free(&body, 1);
    return rc;
}

static int fetch_imds(al_aws_provider *p, al_aws_credentials **out, const char **detail)
{
    al_buf token, body;
    al_buf_init(&token, 4096);
    al_buf_init(&body, BODY_MAX);
    struct curl_slist *h = NULL;
    int ok = 1, rc;
    long status = 0;
    char url[2048];
    snprintf(url, sizeof url, "%s/latest/api/token", p->imds_endpoint);
    h = add_header(h, "X-aws-ec2-metadata-token-ttl-seconds", "21600", 5, &ok);
    if (!ok) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if ((rc = http_do(p, "PUT", url, h, "", 0, &token, &status, detail)))
        goto out;
    if (status != 200 || !token.len || !header_safe(token.data, token.len)) {
        rc = AL_ERR_PERM;
        *detail = "the instance metadata service gave no IMDSv2 token";
        goto out;
    }
    slist_wipe(h);
    h = NULL;
    h = add_header(h, "X-aws-ec2-metadata-token", token.data, token.len, &ok);
    if (!ok) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/", p->imds_endpoint);
    if ((rc = http_do(p, "GET", url, h, NULL, 0, &body, &status, detail)))
        goto out;
    if (status != 200 || !body.len) {
        rc = AL_ERR_PERM;
        *detail = "the instance has no IAM role";
        goto out;
    }
    /* The first line is the role's name. */
    size_t n = 0;
    while (n < body.len && body.data[n] != '\n' && body.data[n] != '\r')
        n++;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=,.@_-",
                    body.data[i]) ||
            !body.data[i]) {
            rc = AL_ERR_PROTO;
            *detail = "the instance metadata service named an invalid role";
            goto out;
        }
    if (!n || (size_t)snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/%.*s",
                               p->imds_endpoint, (int)n, body.data) >= sizeof url) {
        rc = AL_ERR_PROTO;
        *detail = "the instance metadata service named an invalid role";
        goto out;
    }
    if ((rc = http_do(p, "GET", url, h, NULL, 0, &body, &status, detail)))
        goto out;
    if (status != 200) {
        rc = AL_ERR_PERM;
        *detail = "the instance metadata service refused the credentials";
        goto out;
    }
    if ((rc = al_aws_parse_json_credentials(body.data, body.len, "imds", out)))
        *detail = "the instance metadata service's answer is not credentials";
out:
    slist_wipe(h);
    al_buf_free(&token, 1);
    al_buf_free(&body, 1);
    return rc;
}

static int form_encode(al_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int rc;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            rc = al_buf_append(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = al_buf_append(b, e, 3);
        }
        if (rc)
            return rc;
    }
    return AL_OK;
}

/* POSTs a form to STS; signed with `signer` when given. Parses the XML answer. */
static int sts_call(al_aws_provider *p, const char *form, size_t flen,
                    const al_aws_credentials *signer, const char *source, al_aws_credentials **out,
                    const char **detail)
{
    al_buf body, auth, hostv;
    al_buf_init(&body, BODY_MAX);
    al_buf_init(&auth, 4096);
    al_buf_init(&hostv, 1024);
    struct curl_slist *h = NULL;
    int ok = 1, rc = AL_OK;
    long status = 0;
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *path = NULL;
    if (!u) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if (curl_url_set(u, CURLUPART_URL, p->sts_endpoint, 0) ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) || curl_url_get(u, CURLUPART_PATH, &path, 0)) {
        rc = AL_ERR_CONFIG;
        *detail = "the STS endpoint is not a URL";
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT);
    if ((rc = al_buf_append(&hostv, host, strlen(host))) ||
        (port && ((rc = al_buf_append(&hostv, ":", 1)) ||
                  (rc = al_buf_append(&hostv, port, strlen(port))))))
        goto out;
    static const char ctype[] = "application/x-www-form-urlencoded; charset=utf-8";
    h = add_header(h, "Host", hostv.data, hostv.len, &ok);
    h = add_header(h, "Content-Type", ctype, sizeof ctype - 1, &ok);
    h = add_header(h, "Accept", "text/xml", 8, &ok);
    h = add_header(h, "Expect", "", 0, &ok);
    if (signer) {
        char hash[65];
        if ((rc = al_sigv4_sha256_hex(form, flen, hash)))
            goto out;
        al_sigv4_header hs[2] = {{"host", 4, hostv.data, hostv.len},
                                 {"content-type", 12, ctype, sizeof ctype - 1}};
        al_sigv4_request r = {"POST", 4, path, strlen(path), NULL, 0, hs, 2, hash};
        al_sigv4_params prm = {p->sts_region, "sts", now_s(p), 0};
        al_sigv4_creds cr = {signer->access_key_id, strlen(signer->access_key_id),
                             signer->secret,        signer->secret_len,
                             signer->token,         signer->token_len};
        al_sigv4_result res = {.authorization = &auth};
        if ((rc = al_sigv4_sign(&r, &prm, &cr, NULL, &res))) {
            *detail = "the base credentials cannot sign the STS request";
            goto out;
        }
        h = add_header(h, "Authorization", auth.data, auth.len, &ok);
        h = add_header(h, "X-Amz-Date", res.amz_date, 16, &ok);
        if (signer->token)
            h = add_header(h, "X-Amz-Security-Token", (const char *)signer->token,
                           signer->token_len, &ok);
    }
    if (!ok) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if ((rc = http_do(p, "POST", p->sts_endpoint, h, form, flen, &body, &status, detail)))
        goto out;
    rc = al_aws_parse_sts_xml(body.data ? body.data : "", body.len, source, out);
    if (rc == AL_OK && status != 200) {
        al_aws_credentials_unref(*out);
        rc = AL_ERR_PROTO;
    }
    if (rc == AL_ERR_PERM || (rc && (status == 401 || status == 403)))
        *detail = "STS refused to issue credentials (see the aws.sts.error log line)";
    else if (rc)
        *detail = "STS's answer holds no credentials";
out:
    slist_wipe(h);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    al_buf_free(&body, 1);
    al_buf_free(&auth, 0);
    al_buf_free(&hostv, 0);
    return rc;
}

static int fetch_web_identity(al_aws_provider *p, al_aws_credentials **out, const char **detail)
{
    al_buf tok, form;
    al_buf_init(&tok, TOKEN_FILE_MAX);
    al_buf_init(&form, TOKEN_FILE_MAX * 3 + 4096);
    int rc = read_small_file(p->wi_token_file, &tok);
    if (rc) {
        *detail = "AWS_WEB_IDENTITY_TOKEN_FILE cannot be read";
        goto out;
    }
    if ((rc = al_buf_appendf(&form,
                             "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=")) ||
        (rc = form_encode(&form, p->wi_role_arn)) ||
        (rc = al_buf_appendf(&form, "&RoleSessionName=")) ||
        (rc = form_encode(&form, p->wi_session)) ||
        (rc = al_buf_appendf(&form, "&WebIdentityToken=")) || (rc = form_encode(&form, tok.data)))
        goto out;
    rc = sts_call(p, form.data, form.len, NULL, "web_identity", out, detail);
out:
    al_buf_free(&tok, 1);
    al_buf_free(&form, 1);
    return rc;
}

static int assume_role(al_aws_provider *p, const al_aws_credentials *base, al_aws_credentials **out,
                       const char **detail)
{
    al_buf form;
    al_buf_init(&form, 16384);
    int rc;
    if ((rc = al_buf_appendf(&form, "Action=AssumeRole&Version=2011-06-15&RoleArn=")) ||
        (rc = form_encode(&form, p->role_arn)) ||
        (rc = al_buf_appendf(&form, "&RoleSessionName=")) ||
        (rc = form_encode(&form, p->session_name)))
        goto out;
    if (p->external_id &&
        ((rc = al_buf_appendf(&form, "&ExternalId=")) || (rc = form_encode(&form, p->external_id))))
        goto out;
    rc = sts_call(p, form.data, form.len, base, "assume_role", out, detail);
out:
    al_buf_free(&form, 0);
    return rc;
}

static int fetch_once(al_aws_provider *p, al_aws_credentials **out, const char **detail)
{
    al_aws_credentials *base = NULL;
    int rc;
    switch (p->source) {
    case AL_AWS_SRC_STORE:
        rc = p->base(p->base_arg, &base);
        if (rc)
            *detail = "the aws provider has no usable credentials in the store";
        break;
    case AL_AWS_SRC_ENVIRONMENT:
        base = al_aws_credentials_ref(p->static_creds);
        rc = AL_OK;
        break;
    case AL_AWS_SRC_CONTAINER:
        rc = fetch_container(p, &base, detail);
        break;
    case AL_AWS_SRC_IMDS:
        rc = fetch_imds(p, &base, detail);
        break;
    case AL_AWS_SRC_WEB_IDENTITY:
        rc = fetch_web_identity(p, &base, detail);
        break;
    default:
        rc = AL_ERR_INVAL;
    }
    if (rc)
        return rc;
    if (!p->role_arn) {
        *out = base;
        return AL_OK;
    }
    rc = assume_role(p, base, out, detail);
    al_aws_credentials_unref(base);
    return rc;
}

static void *fetch_thread(void *arg)
{
    al_aws_provider *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stop && !p->want_fetch)
            pthread_cond_wait(&p->cond, &p->lock);
        if (p->stop)
            break;
        p->want_fetch = 0;
        pthread_mutex_unlock(&p->lock);
        al_aws_credentials *c = NULL;
        const char *detail = "";
        int rc = fetch_once(p, &c, &detail);
        pthread_mutex_lock(&p->lock);
        p->fetches++;
        int64_t now = now_s(p);
        if (rc == AL_OK) {
            al_aws_credentials_unref(p->current);
            p->current = c;
            p->current_fetched_at = now;
            p->last_fail = 0;
        } else {
            p->last_rc = rc;
            p->last_detail = detail;
            p->last_fail = now ? now : 1;
            al_log(AL_LOG_WARN, "aws.creds.fetch", "source=%s error=%s: %s",
                   al_aws_provider_source(p), al_strerror(rc), detail);
        }
        p->fetching = 0;
        while (p->head.next != &p->head) {
            al_aws_waiter *w = p->head.next;
            w->prev->next = w->next;
            w->next->prev = w->prev;
            w->queued = 0;
            w->done(w->arg, rc);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}
