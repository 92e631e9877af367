/* al_token: the OAuth 2.0 client-credentials token client and cache (see al_token.h).
 *
 * Owns: one al_flight table of tokens (values: refcounted tok_impl), the spec copies
 * its entries hold (with the client secret: wiped on free), the contexts of token
 * requests in flight, and the set of providers already warned about long-lived tokens.
 *
 * Flow of one load (never on a worker): load_token() [the thread that asked] ->
 * endpoint known? else al_oidc metadata (cached; on_meta on the fetch thread) ->
 * al_fetch POST (on_token on the fetch thread) -> al_token_parse_response() ->
 * al_flight_complete() -> the waiters' callbacks, then one audit event.
 *
 * Invariants: a token's bytes live only in its tok_impl and the fetch layer's response
 * buffer, both wiped; no log line, audit field or message is built from them (the
 * fingerprint is a truncated SHA-256). */
#include "al_token.h"
#include "al_store.h"
#include "al_user_token.h"
#include "al_vault.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "policy/al_audit.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DEFAULT_LIFETIME_S 3600
#define DEFAULT_MAX_S      (30 * 86400)
#define TOKEN_MAX          16384
#define DESC_MAX           200
#define WARNED_MAX         256
#define REJECTED_MAX       32    /* shared cache: tokens an upstream refused (per key) */
#define SHARED_LOCK_MS     10000 /* waiting for another replica's fetch */

typedef struct tok_impl {
    al_token pub; /* first: an al_token* is a tok_impl* */
    atomic_int refs;
    char *token;
    size_t token_len;
    char *provider;
    char *scope;
    char *key; /* the cache entry it belongs to (al_token_drop) */
    char fp[32];
} tok_impl;

/* The cache entry's copy of a spec (key_data). */
typedef struct spec_copy {
    al_token_spec s;
    char *provider, *config_json, *audience, *resource;
    unsigned char *secret;
    char **scopes;
    al_kv *custom;
    json_t *cfg; /* parsed config_json */
    al_fetch_opts fo;
    char key_text[512]; /* provider/version/scopes/audience/resource, for audit and status */
} spec_copy;

typedef struct load_ctx {
    struct load_ctx *next, *prev;
    al_token_client *tc;
    char *key;
    spec_copy *sc;
    int64_t started_ms;
    char host[256];
    int shared;          /* the token lives in the store (tc->ts) */
    al_store_lock *lock; /* shared: held from before the fetch until stored */
    char row_user[80];   /* shared: "2lo:" + SHA-256 hex of the key */
    char avoid_fp[32];   /* shared: a rejected token's fingerprint, not to be read back */
} load_ctx;

typedef struct rejected {
    char key_hash[65];
    char fp[32];
} rejected;

struct al_token_client {
    al_oidc *oidc;
    al_flight *cache;
    struct al_audit *audit;
    void (*observe)(void *arg, const char *provider, int ok); /* al_token_client_set_observer */
    void *observe_arg;
    pthread_mutex_t lock; /* loads list, warned set */
    load_ctx *loads;
    char *warned[WARNED_MAX];
    size_t n_warned;
    al_token_store ts;          /* the shared cache's store; ts.post NULL = none */
    rejected rej[REJECTED_MAX]; /* under lock */
    size_t rej_next;
};

/* ---- tokens -------------------------------------------------------------------- */

void al_token_retain(al_token *t)
{
    if (t)
        atomic_fetch_add(&((tok_impl *)t)->refs, 1);
}

void al_token_release(al_token *t)
{
    tok_impl *ti = (tok_impl *)t;
    if (!ti || atomic_fetch_sub(&ti->refs, 1) != 1)
        return;
    if (ti->token) {
        OPENSSL_cleanse(ti->token, ti->token_len);
        free(ti->token);
    }
    free(ti->provider);
    free(ti->scope);
    free(ti->key);
    free(ti);
}

static void v_retain(void *v)
{
    al_token_retain(v);
}

static void v_release(void *v)
{
    al_token_release(v);
}

/* ---- specs and keys ---------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "provider/vN scopes=a,b audience=x resource=y": what the audit and status show. */
static void key_text(const al_token_spec *s, char *buf, size_t len)
{
    char scopes[256] = "";
    size_t used = 0;
    /* sorted, so [a b] and [b a] share tokens; on the stack for the usual few scopes */
    char *small[8];
    char **sorted = s->scope_count <= 8 ? small
                    : s->scope_count    ? malloc(s->scope_count * sizeof *sorted)
                                        : NULL;
    if (sorted && s->scope_count) {
        memcpy(sorted, s->scopes, s->scope_count * sizeof *sorted);
        if (s->scope_count > 1)
            qsort(sorted, s->scope_count, sizeof *sorted, cmp_str);
        for (size_t i = 0; i < s->scope_count && used < sizeof scopes; i++) {
            int n = snprintf(scopes + used, sizeof scopes - used, "%s%s", i ? " " : "", sorted[i]);
            if (n > 0)
                used += (size_t)n;
        }
        if (sorted != small)
            free(sorted);
    }
    snprintf(buf, len, "%s/v%u scopes=[%s] audience=%s resource=%s%s", s->provider, s->version,
             scopes, s->audience ? s->audience : "-", s->resource ? s->resource : "-",
             s->shared ? " token_cache=shared" : "");
}

int al_token_cache_key(const al_token_spec *s, char *buf, size_t len)
{
    char text[2048];
    key_text(s, text, sizeof text);
    /* The provider's settings (endpoints, client id, CA...) change without a new secret
     * version: tokens of other settings are other entries. */
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = s->config_json ? s->config_json : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    size_t used = (size_t)snprintf(buf, len, "%s\x1f%016llx", text, (unsigned long long)h);
    for (size_t i = 0; i < s->custom_count && used < len; i++) {
        int n = snprintf(buf + used, len - used, "\x1f%s=%s", s->custom[i].key, s->custom[i].value);
        if (n < 0)
            return AL_ERR_TOOBIG;
        used += (size_t)n;
    }
    return used < len ? AL_OK : AL_ERR_TOOBIG;
}

static void spec_free(void *p)
{
    spec_copy *c = p;
    if (!c)
        return;
    if (c->secret) {
        OPENSSL_cleanse(c->secret, c->s.secret_len);
        free(c->secret);
    }
    for (size_t i = 0; i < c->s.scope_count; i++)
        free(c->scopes ? c->scopes[i] : NULL);
    free(c->scopes);
    for (size_t i = 0; i < c->s.custom_count; i++) {
        free(c->custom ? c->custom[i].key : NULL);
        free(c->custom ? c->custom[i].value : NULL);
    }
    free(c->custom);
    free(c->provider);
    free(c->config_json);
    free(c->audience);
    free(c->resource);
    json_decref(c->cfg);
    free(c);
}

static char *dup_or_null(const char *s, int *fail)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *fail = 1;
    return d;
}

static void *spec_dup(const void *p)
{
    const al_token_spec *s = p;
    spec_copy *c = calloc(1, sizeof *c);
    int fail = 0;
    if (!c)
        return NULL;
    c->s = *s;
    c->provider = dup_or_null(s->provider, &fail);
    c->config_json = dup_or_null(s->config_json, &fail);
    c->audience = dup_or_null(s->audience, &fail);
    c->resource = dup_or_null(s->resource, &fail);
    c->secret = malloc(s->secret_len + 1);
    if (c->secret) {
        memcpy(c->secret, s->secret, s->secret_len);
        c->secret[s->secret_len] = 0;
    } else {
        fail = 1;
    }
    if (s->scope_count && !(c->scopes = calloc(s->scope_count, sizeof *c->scopes)))
        fail = 1;
    for (size_t i = 0; c->scopes && i < s->scope_count; i++)
        c->scopes[i] = dup_or_null(s->scopes[i], &fail);
    if (s->custom_count && !(c->custom = calloc(s->custom_count, sizeof *c->custom)))
        fail = 1;
    for (size_t i = 0; c->custom && i < s->custom_count; i++) {
        c->custom[i].key = dup_or_null(s->custom[i].key, &fail);
        c->custom[i].value = dup_or_null(s->custom[i].value, &fail);
    }
    c->cfg = c->config_json ? json_loads(c->config_json, 0, NULL) : json_object();
    if (!c->cfg || fail) {
        c->s.scope_count = c->scopes ? s->scope_count : 0;
        c->s.custom_count = c->custom ? s->custom_count : 0;
        spec_free(c);
        return NULL;
    }
    c->s.provider = c->provider;
    c->s.config_json = c->config_json;
    c->s.audience = c->audience;
    c->s.resource = c->resource;
    c->s.secret = c->secret;
    c->s.scopes = c->scopes;
    c->s.custom = c->custom;
    c->fo.ca_file = json_string_value(json_object_get(c->cfg, "caFile"));
    c->fo.allow_insecure = json_is_true(json_object_get(c->cfg, "allowInsecureEndpoints"));
    c->fo.allow_private_network = json_is_true(json_object_get(c->cfg, "allowPrivateNetwork"));
    key_text(&c->s, c->key_text, sizeof c->key_text);
    return c;
}

void al_token_spec_from_target(al_token_spec *spec, const al_target *t, const char *provider,
                               uint32_t version, const char *config_json,
                               const unsigned char *secret, size_t secret_len)
{
    memset(spec, 0, sizeof *spec);
    spec->provider = provider;
    spec->version = version;
    spec->config_json = config_json;
    spec->secret = secret;
    spec->secret_len = secret_len;
    spec->scopes = t->auth.scopes;
    spec->scope_count = t->auth.scope_count;
    spec->audience = t->auth.audience;
    /* The MCP authorization spec: clients send the server's URL as the resource. */
    spec->resource = t->auth.resource                ? t->auth.resource
                     : t->type == AL_TYPE_MCP_SERVER ? t->url
                                                     : NULL;
    spec->custom = t->auth.custom_parameters;
    spec->custom_count = t->auth.custom_parameter_count;
    spec->default_lifetime_s = t->auth.default_token_lifetime_s;
    spec->max_lifetime_s = t->auth.max_token_lifetime_s;
    spec->shared = t->auth.token_cache_shared;
}

/* ---- parsing the answer (pure) ------------------------------------------------------- */

void al_token_sanitize(const char *s, const unsigned char *secret, size_t secret_len, char *out,
                       size_t outlen, size_t max)
{
    size_t o = 0;
    if (!outlen)
        return;
    for (size_t i = 0; s && s[i] && o + 1 < outlen && o < max; i++) {
        if (secret && secret_len >= 4 && strncmp(s + i, (const char *)secret, secret_len) == 0) {
            const char *cut = "[redacted]";
            for (size_t k = 0; cut[k] && o + 1 < outlen; k++)
                out[o++] = cut[k];
            i += secret_len - 1;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    out[o] = 0;
}

void al_token_error_message(const char *what, const char *host, long status, const json_t *answer,
                            const unsigned char *secret, size_t secret_len, char *msg,
                            size_t msglen)
{
    const char *e = json_string_value(json_object_get(answer, "error"));
    const char *d = json_string_value(json_object_get(answer, "error_description"));
    char es[80], ds[DESC_MAX + 16];
    al_token_sanitize(e, secret, secret_len, es, sizeof es, 64);
    al_token_sanitize(d, secret, secret_len, ds, sizeof ds, DESC_MAX);
    if (e)
        snprintf(msg, msglen, "%s %s answered %ld: %s%s%s%s", what, host, status, es,
                 d ? " (" : "", d ? ds : "", d ? ")" : "");
    else
        snprintf(msg, msglen, "%s %s answered %ld without an OAuth error", what, host, status);
}

static int visible_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* A token value (refs 1) of tl bytes at tv; NULL when out of memory. */
static al_token *tok_new(const al_token_spec *spec, const char *tv, size_t tl, const char *scope,
                         int64_t obtained_unix, int64_t life, int has_expiry)
{
    uint64_t max = spec->max_lifetime_s ? spec->max_lifetime_s : DEFAULT_MAX_S;
    tok_impl *ti = calloc(1, sizeof *ti);
    if (!ti)
        return NULL;
    atomic_init(&ti->refs, 1);
    ti->token = malloc(tl + 1);
    ti->provider = strdup(spec->provider ? spec->provider : "");
    ti->scope = strdup(scope ? scope : "");
    if (!ti->token || !ti->provider || !ti->scope) {
        al_token_release(&ti->pub);
        return NULL;
    }
    memcpy(ti->token, tv, tl);
    ti->token[tl] = 0;
    ti->token_len = tl;
    al_vault_fingerprint((const unsigned char *)tv, tl, ti->fp);
    ti->pub.access_token = ti->token;
    ti->pub.len = tl;
    ti->pub.provider = ti->provider;
    ti->pub.version = spec->version;
    ti->pub.fingerprint = ti->fp;
    ti->pub.scope = ti->scope;
    ti->pub.obtained_unix = obtained_unix;
    ti->pub.lifetime_s = life;
    ti->pub.has_expiry = has_expiry;
    ti->pub.long_lived = !has_expiry || (uint64_t)life > max;
    return &ti->pub;
}

int al_token_parse_response(long status, const char *body, size_t len, const char *host,
                            const al_token_spec *spec, int64_t now_unix, al_token **tok, char *msg,
                            size_t msglen)
{
    json_error_t je;
    json_t *j = json_loadb(body ? body : "", len, 0, &je);
    int rc = AL_ERR_PROTO;
    *tok = NULL;
    if (status < 200 || status > 299) {
        al_token_error_message("token endpoint", host, status, j, spec->secret, spec->secret_len,
                               msg, msglen);
        goto out;
    }
    if (!json_is_object(j)) {
        snprintf(msg, msglen, "token endpoint %s answered %ld with a body that is not JSON", host,
                 status);
        goto out;
    }
    json_t *at = json_object_get(j, "access_token");
    const char *tv = json_string_value(at);
    size_t tl = tv ? json_string_length(at) : 0;
    if (!tv || tl == 0 || tl > TOKEN_MAX || !visible_ascii(tv, tl)) {
        snprintf(msg, msglen,
                 "token endpoint %s answered without a usable access_token (missing, empty, "
                 "longer than %d bytes or not visible ASCII)",
                 host, TOKEN_MAX);
        goto out;
    }
    const char *tt = json_string_value(json_object_get(j, "token_type"));
    if (tt && strcasecmp(tt, "bearer") != 0) {
        char ts[40];
        al_token_sanitize(tt, spec->secret, spec->secret_len, ts, sizeof ts, 32);
        snprintf(msg, msglen, "token endpoint %s issued a '%s' token; only Bearer is supported",
                 host, ts);
        goto out;
    }
    json_t *ei = json_object_get(j, "expires_in");
    int64_t life = 0;
    if (json_is_integer(ei))
        life = json_integer_value(ei);
    else if (json_is_real(ei)) {
        /* Clamp before converting: a double past INT64_MAX (or NaN) is undefined as an
         * integer (found by fuzz_identity_token). */
        double d = json_real_value(ei);
        life = d > 0 && d < 1e12 ? (int64_t)d : (d >= 1e12 ? (int64_t)1e12 : 0);
    }
    else if (json_is_string(ei))
        life = strtoll(json_string_value(ei), NULL, 10);
    int has_expiry = life > 0;
    if (!has_expiry)
        life = spec->default_lifetime_s ? spec->default_lifetime_s : DEFAULT_LIFETIME_S;
    if (life > 10LL * 365 * 86400)
        life = 10LL * 365 * 86400;
    const char *sc = json_string_value(json_object_get(j, "scope"));
    char req_scope[512] = "";
    for (size_t i = 0, u = 0; i < spec->scope_count && u < sizeof req_scope; i++) {
        int n =
            snprintf(req_scope + u, sizeof req_scope - u, "%s%s", i ? " " : "", spec->scopes[i]);
        if (n > 0)
            u += (size_t)n;
    }
    rc = AL_ERR_NOMEM;
    al_token *made = tok_new(spec, tv, tl, sc ? sc : req_scope, now_unix, life, has_expiry);
    if (!made) {
        snprintf(msg, msglen, "out of memory");
        goto out;
    }
    *tok = made;
    rc = AL_OK;
out:
    if (j) {
        /* the parsed answer held the token: wipe jansson's copy before freeing */
        json_t *at2 = json_object_get(j, "access_token");
        if (json_is_string(at2) && json_string_length(at2))
            OPENSSL_cleanse((void *)json_string_value(at2), json_string_length(at2));
        json_decref(j);
    }
    return rc;
}

/* ---- loads ----------------------------------------------------------------------------- */

static void ctx_free(load_ctx *c)
{
    al_token_client *tc = c->tc;
    pthread_mutex_lock(&tc->lock);
    if (c->prev)
        c->prev->next = c->next;
    else if (tc->loads == c)
        tc->loads = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&tc->lock);
    al_store_unlock(c->lock); /* a shared fetch ended (stored or not) */
    free(c->key);
    free(c);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void audit_event(load_ctx *c, const char *outcome, int err, const char *msg,
                        const al_token *t)
{
    al_token_client *tc = c->tc;
    if (tc->observe)
        tc->observe(tc->observe_arg, c->sc->s.provider, !err && t);
    if (!tc->audit)
        return;
    al_audit_field f[] = {
        {"provider", AL_AUDIT_STR, c->sc->s.provider, 0},
        {"provider_version", AL_AUDIT_INT, NULL, c->sc->s.version},
        {"token_endpoint_host", AL_AUDIT_STR, c->host[0] ? c->host : NULL, 0},
        {"outcome", AL_AUDIT_STR, outcome, 0},
        {"error", AL_AUDIT_STR, err ? msg : NULL, 0},
        {"duration_ms", AL_AUDIT_INT, NULL, mono_ms() - c->started_ms},
        {"lifetime_s", AL_AUDIT_INT, NULL, t ? t->lifetime_s : 0},
        {"long_lived", AL_AUDIT_BOOL, NULL, t ? t->long_lived : 0},
        {"cache_key", AL_AUDIT_STR, c->sc->key_text, 0},
        {"token_fingerprint", AL_AUDIT_STR, t ? t->fingerprint : NULL, 0},
    };
    al_audit_submit_event(tc->audit, "token_request", f, sizeof f / sizeof f[0]);
}

static void warn_long_lived(al_token_client *tc, const al_token *t)
{
    pthread_mutex_lock(&tc->lock);
    for (size_t i = 0; i < tc->n_warned; i++) {
        if (strcmp(tc->warned[i], t->provider) == 0) {
            pthread_mutex_unlock(&tc->lock);
            return;
        }
    }
    if (tc->n_warned < WARNED_MAX)
        tc->warned[tc->n_warned++] = strdup(t->provider);
    pthread_mutex_unlock(&tc->lock);
    if (t->has_expiry)
        al_log(AL_LOG_WARN, "token.long_lived",
               "provider=%s lifetime_s=%lld: tokens living longer than max_token_lifetime_s "
               "should not be used; shorten the provider's token lifetime",
               t->provider, (long long)t->lifetime_s);
    else
        al_log(AL_LOG_WARN, "token.long_lived",
               "provider=%s: the token endpoint gave no expires_in, so the token may live "
               "forever; airlock refreshes it after default_token_lifetime_s",
               t->provider);
}

/* Hands t to the cache: refreshed at 80 % of its life, not used in its last min(30 s,
 * 10 %); age_ms is how old it already is (a token another replica stored). */
static void complete_token(load_ctx *c, al_token *t, int64_t age_ms)
{
    ((tok_impl *)t)->key = strdup(c->key); /* NULL (no memory): al_token_drop is a no-op */
    int64_t life_ms = t->lifetime_s * 1000;
    int64_t skew = life_ms / 10 < 30000 ? life_ms / 10 : 30000;
    int64_t refresh = life_ms * 8 / 10 - age_ms, usable = life_ms - skew - age_ms;
    if (usable < 1)
        usable = 1;
    if (age_ms > 0 && refresh < 100) /* never a reload loop on a stored token */
        refresh = 100;
    if (refresh > usable)
        refresh = usable;
    al_flight_complete(c->tc->cache, c->key, AL_OK, t, refresh, usable, NULL);
}

static void finish(load_ctx *c, int err, al_token *t, const char *msg)
{
    al_token_client *tc = c->tc;
    if (err == AL_OK) {
        audit_event(c, "ok", 0, NULL, t);
        if (t->long_lived)
            warn_long_lived(tc, t);
        complete_token(c, t, 0);
    } else {
        audit_event(c, "error", err, msg, NULL);
        al_flight_complete(tc->cache, c->key, err, NULL, 0, 0, msg);
    }
    ctx_free(c);
}

static void shared_answered(load_ctx *c, int err, al_token *t, const char *msg);

static void on_token(void *arg, const al_fetch_response *res)
{
    load_ctx *c = arg;
    char msg[512];
    al_token *t = NULL;
    int err = res->err;
    if (err == AL_ERR_TIMEOUT)
        snprintf(msg, sizeof msg, "token endpoint %s", res->errmsg);
    else if (err != AL_OK)
        snprintf(msg, sizeof msg, "token endpoint unreachable: %s", res->errmsg);
    else
        err = al_token_parse_response(res->status, res->body, res->body_len, res->host, &c->sc->s,
                                      (int64_t)time(NULL), &t, msg, sizeof msg);
    if (c->shared)
        shared_answered(c, err, t, msg); /* stored on the store thread first */
    else
        finish(c, err, t, msg);
}

/* application/x-www-form-urlencoded value encoding into out[0..cap); returns the length
 * written (cap is sized by the caller for the worst case: 3 bytes per input byte). */
static size_t urlencode(char *out, size_t cap, const char *in, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t u = 0;
    for (size_t i = 0; i < n && u + 3 < cap; i++) {
        unsigned char ch = (unsigned char)in[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            out[u++] = (char)ch;
        } else {
            out[u++] = '%';
            out[u++] = hex[ch >> 4];
            out[u++] = hex[ch & 15];
        }
    }
    return u;
}

static void form_append(char *buf, size_t *used, size_t cap, const char *name, const char *val,
                        size_t vlen)
{
    size_t u = *used;
    if (u && u < cap)
        buf[u++] = '&';
    for (const char *p = name; *p && u < cap; p++)
        buf[u++] = *p;
    if (u < cap)
        buf[u++] = '=';
    u += urlencode(buf + u, cap - u, val, vlen);
    *used = u;
}

void al_token_form_append(char *buf, size_t *used, size_t cap, const char *name, const char *val,
                          size_t vlen)
{
    form_append(buf, used, cap, name, val, vlen);
}

/* RFC 6749 2.3.1: id and secret form-urlencoded, then joined by ':' (malloc'd, *cap its
 * size for wiping). */
static char *basic_credentials(const char *client_id, const unsigned char *secret,
                               size_t secret_len, size_t *cap)
{
    *cap = 3 * (strlen(client_id) + secret_len) + 8;
    char *basic = malloc(*cap);
    if (!basic)
        return NULL;
    size_t bu = urlencode(basic, *cap, client_id, strlen(client_id));
    basic[bu++] = ':';
    bu += urlencode(basic + bu, *cap - bu, (const char *)secret, secret_len);
    basic[bu] = 0;
    return basic;
}

static void wipe_free(char *p, size_t n)
{
    if (p) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

int al_token_post_init(al_token_post *p, const char *config_json, const unsigned char *secret,
                       size_t secret_len, const char *url, const char *params)
{
    memset(p, 0, sizeof *p);
    json_t *cfg = config_json ? json_loads(config_json, 0, NULL) : NULL;
    const char *client_id = json_string_value(json_object_get(cfg, "clientId"));
    const char *method = json_string_value(json_object_get(cfg, "tokenEndpointAuthMethod"));
    int post = method && strcmp(method, "client_secret_post") == 0, rc = AL_ERR_CONFIG;
    if (!client_id || !*client_id)
        goto out;
    p->fo.ca_file = json_string_value(json_object_get(cfg, "caFile"));
    p->fo.allow_insecure = json_is_true(json_object_get(cfg, "allowInsecureEndpoints"));
    p->fo.allow_private_network = json_is_true(json_object_get(cfg, "allowPrivateNetwork"));
    rc = AL_ERR_NOMEM;
    if (p->fo.ca_file && !(p->ca_file = strdup(p->fo.ca_file)))
        goto out;
    p->fo.ca_file = p->ca_file;
    size_t n = strlen(params);
    p->form_cap = n + 32 + 3 * (strlen(client_id) + secret_len);
    if (!(p->form = malloc(p->form_cap)))
        goto out;
    memcpy(p->form, params, n + 1);
    size_t used = n;
    if (post) {
        /* a PAR body names the client already (client_id is an authorization parameter) */
        int has_id = strncmp(params, "client_id=", 10) == 0 || strstr(params, "&client_id=");
        if (!has_id)
            form_append(p->form, &used, p->form_cap, "client_id", client_id, strlen(client_id));
        form_append(p->form, &used, p->form_cap, "client_secret", (const char *)secret,
                    secret_len);
        p->form[used < p->form_cap ? used : p->form_cap - 1] = 0;
    } else if (!(p->basic = basic_credentials(client_id, secret, secret_len, &p->basic_cap))) {
        goto out;
    }
    p->rq.url = url;
    p->rq.form = p->form;
    p->rq.form_len = strlen(p->form);
    p->rq.basic_auth = p->basic;
    rc = AL_OK;
out:
    json_decref(cfg);
    if (rc != AL_OK)
        al_token_post_clear(p);
    return rc;
}

void al_token_post_clear(al_token_post *p)
{
    wipe_free(p->form, p->form_cap);
    wipe_free(p->basic, p->basic_cap);
    free(p->ca_file);
    memset(p, 0, sizeof *p);
}

static void send_token_request(load_ctx *c, const char *endpoint)
{
    const al_token_spec *s = &c->sc->s;
    json_t *cfg = c->sc->cfg;
    const char *client_id = json_string_value(json_object_get(cfg, "clientId"));
    const char *method = json_string_value(json_object_get(cfg, "tokenEndpointAuthMethod"));
    int post = method && strcmp(method, "client_secret_post") == 0;
    char msg[400];
    if (!client_id) {
        finish(c, AL_ERR_CONFIG, NULL, "the provider has no clientId");
        return;
    }
    /* Bound: every byte may become %XX. */
    size_t cap = 64 + 3 * (strlen(client_id) + s->secret_len);
    for (size_t i = 0; i < s->scope_count; i++)
        cap += 3 * strlen(s->scopes[i]) + 3;
    cap += 3 * ((s->audience ? strlen(s->audience) : 0) + (s->resource ? strlen(s->resource) : 0));
    for (size_t i = 0; i < s->custom_count; i++)
        cap += strlen(s->custom[i].key) + 3 * strlen(s->custom[i].value) + 2;
    cap += 64;
    char *form = malloc(cap), *basic = NULL;
    char *scope = NULL;
    size_t used = 0, scope_len = 0, basic_cap = 0;
    int rc = AL_ERR_NOMEM;
    if (!form)
        goto fail;
    form_append(form, &used, cap, "grant_type", "client_credentials", 18);
    if (s->scope_count) {
        for (size_t i = 0; i < s->scope_count; i++)
            scope_len += strlen(s->scopes[i]) + 1;
        if (!(scope = malloc(scope_len + 1)))
            goto fail;
        size_t u = 0;
        for (size_t i = 0; i < s->scope_count; i++)
            u += (size_t)sprintf(scope + u, "%s%s", i ? " " : "", s->scopes[i]);
        form_append(form, &used, cap, "scope", scope, u);
    }
    if (s->audience)
        form_append(form, &used, cap, "audience", s->audience, strlen(s->audience));
    if (s->resource)
        form_append(form, &used, cap, "resource", s->resource, strlen(s->resource));
    for (size_t i = 0; i < s->custom_count; i++) {
        /* the table cannot override what the grant and client authentication mean */
        static const char *const reserved[] = {"grant_type", "client_id", "client_secret",
                                               "client_assertion", "client_assertion_type"};
        int skip = 0;
        for (size_t k = 0; k < sizeof reserved / sizeof reserved[0]; k++)
            skip |= strcmp(s->custom[i].key, reserved[k]) == 0;
        if (!skip)
            form_append(form, &used, cap, s->custom[i].key, s->custom[i].value,
                        strlen(s->custom[i].value));
    }
    if (post) {
        form_append(form, &used, cap, "client_id", client_id, strlen(client_id));
        form_append(form, &used, cap, "client_secret", (const char *)s->secret, s->secret_len);
    } else {
        if (!(basic = basic_credentials(client_id, s->secret, s->secret_len, &basic_cap)))
            goto fail;
    }
    form[used < cap ? used : cap - 1] = 0;
    al_fetch_request rq = {
        .url = endpoint, .form = form, .form_len = strlen(form), .basic_auth = basic};
    char eb[300];
    rc = al_fetch_start(al_oidc_fetcher(c->tc->oidc), &rq, &c->sc->fo, on_token, c, NULL, eb,
                        sizeof eb);
    if (rc != AL_OK)
        snprintf(msg, sizeof msg, "token endpoint refused: %s", eb);
fail:
    if (form) {
        OPENSSL_cleanse(form, cap);
        free(form);
    }
    if (basic) {
        OPENSSL_cleanse(basic, basic_cap);
        free(basic);
    }
    free(scope);
    if (rc == AL_ERR_NOMEM)
        snprintf(msg, sizeof msg, "out of memory");
    if (rc != AL_OK)
        finish(c, rc, NULL, msg);
}

static void set_host(load_ctx *c, const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    snprintf(c->host, sizeof c->host, "%.*s", (int)(n < 200 ? n : 200), p);
}

static void with_metadata(load_ctx *c, json_t *meta)
{
    const char *te = json_string_value(json_object_get(meta, "token_endpoint"));
    if (!te) {
        finish(c, AL_ERR_PROTO, NULL, "the provider's discovery document has no token_endpoint");
        return;
    }
    set_host(c, te);
    send_token_request(c, te);
}

static void on_meta(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    load_ctx *c = arg;
    (void)gen;
    if (err != AL_OK) {
        char m[400];
        snprintf(m, sizeof m, "discovery failed: %s", msg);
        finish(c, err, NULL, m);
        return;
    }
    with_metadata(c, value);
}

/* The token endpoint (configured, or from discovery), then the request. */
static void start_fetch(load_ctx *c)
{
    al_token_client *tc = c->tc;
    spec_copy *sc = c->sc;
    const char *te = json_string_value(json_object_get(sc->cfg, "tokenEndpoint"));
    const char *disc = json_string_value(json_object_get(sc->cfg, "discoveryUrl"));
    if (te) {
        set_host(c, te);
        send_token_request(c, te);
        return;
    }
    if (!disc) {
        finish(c, AL_ERR_CONFIG, NULL,
               "the provider has neither a token endpoint nor a discovery URL");
        return;
    }
    set_host(c, disc);
    al_flight_result r;
    int rc = al_oidc_get(tc->oidc, AL_OIDC_METADATA, disc, &sc->fo, 0, on_meta, c, &r);
    if (rc == AL_OK) {
        with_metadata(c, r.value);
        al_oidc_release(tc->oidc, r.value);
    } else if (rc != AL_ERR_AGAIN) {
        char m[400];
        snprintf(m, sizeof m, "discovery failed: %s", r.msg);
        finish(c, rc, NULL, m);
    }
}

/* ---- the shared cache (al_token_store): store thread tasks -------------------------- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void key_hash(const char *key, char out[65])
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, strlen(key), h);
    for (size_t i = 0; i < sizeof h; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static void remember_rejected(al_token_client *tc, const char *key, const char *fp)
{
    pthread_mutex_lock(&tc->lock);
    rejected *r = &tc->rej[tc->rej_next++ % REJECTED_MAX];
    key_hash(key, r->key_hash);
    snprintf(r->fp, sizeof r->fp, "%s", fp);
    pthread_mutex_unlock(&tc->lock);
}

/* The stored token of c's key when it is usable and not due for refresh: AL_OK, the load
 * answered with it (and c freed). Anything else — none, due, the one the upstream
 * refused, a store that cannot be read — is for the caller to fetch. */
static int shared_use_stored(load_ctx *c)
{
    al_token_client *tc = c->tc;
    al_user_token row;
    int rc = tc->ts.load(tc->ts.arg, c->sc->s.provider, c->row_user, &row);
    if (rc != AL_OK)
        return rc;
    int64_t life_ms = (row.expires_at - row.obtained_at) * 1000;
    int64_t age_ms = wall_ms() - row.obtained_at * 1000;
    al_token *t = NULL;
    rc = AL_ERR_NOTFOUND;
    if (life_ms > 0 && age_ms < life_ms * 8 / 10 && strcmp(row.fingerprint, c->avoid_fp) != 0 &&
        (t = tok_new(&c->sc->s, row.access_token, row.access_len, row.scope, row.obtained_at,
                     life_ms / 1000, 1)) != NULL) {
        al_log(AL_LOG_DEBUG, "token.shared_read", "provider=%s fingerprint=%s age_ms=%lld",
               t->provider, t->fingerprint, (long long)age_ms);
        complete_token(c, t, age_ms > 0 ? age_ms : 1);
        ctx_free(c);
        rc = AL_OK;
    }
    al_user_token_clear(&row);
    return rc;
}

/* Store thread: the stored token, else the lock, the stored token again (the winner's),
 * else a fetch with the lock held. */
static void shared_begin(void *arg)
{
    load_ctx *c = arg;
    al_token_client *tc = c->tc;
    if (shared_use_stored(c) == AL_OK)
        return;
    char name[AL_STORE_NAME_MAX + 96];
    snprintf(name, sizeof name, "2lo\n%s\n%s", c->sc->s.provider, c->row_user);
    int rc = tc->ts.lock(tc->ts.arg, name, SHARED_LOCK_MS, &c->lock);
    if (rc != AL_OK) {
        /* degraded (the store is down, or another replica hangs): fetch our own */
        c->lock = NULL;
        al_log(AL_LOG_WARN, "token.shared_lock",
               "provider=%s: the store's refresh lock could not be taken (%s); this airlock "
               "fetches its own token",
               c->sc->s.provider, al_strerror(rc));
    } else if (c->lock && shared_use_stored(c) == AL_OK) {
        return; /* another replica fetched it while we waited */
    }
    start_fetch(c);
}

/* Shutdown: the task never ran. */
static void shared_abandon(void *arg)
{
    load_ctx *c = arg;
    al_flight_complete(c->tc->cache, c->key, AL_ERR_IO, NULL, 0, 0, "airlock is stopping");
    ctx_free(c);
}

typedef struct answer_task {
    load_ctx *c;
    int err;
    al_token *t;
    char msg[512];
} answer_task;

/* Store thread: the fetched token goes into the store before the lock is released (so
 * the replicas waiting for it read it), then to the waiters. */
static void shared_store(void *arg)
{
    answer_task *a = arg;
    load_ctx *c = a->c;
    if (a->err == AL_OK) {
        const al_token *t = a->t;
        al_user_token row = {
            .access_token = (char *)t->access_token,
            .access_len = t->len,
            .scope = (char *)t->scope,
            .obtained_at = t->obtained_unix,
            .expires_at = t->obtained_unix + t->lifetime_s,
        };
        snprintf(row.fingerprint, sizeof row.fingerprint, "%s", t->fingerprint);
        int rc = c->tc->ts.save(c->tc->ts.arg, c->sc->s.provider, c->row_user, &row);
        if (rc != AL_OK)
            al_log(AL_LOG_WARN, "token.shared_store",
                   "provider=%s: the token could not be stored for the other replicas (%s); "
                   "they fetch their own",
                   c->sc->s.provider, al_strerror(rc));
    }
    finish(c, a->err, a->t, a->msg);
    free(a);
}

static void shared_store_drop(void *arg)
{
    answer_task *a = arg;
    al_token_release(a->t);
    shared_abandon(a->c);
    free(a);
}

/* Fetch thread: hands the answer to the store thread. */
static void shared_answered(load_ctx *c, int err, al_token *t, const char *msg)
{
    answer_task *a = calloc(1, sizeof *a);
    if (a) {
        a->c = c;
        a->err = err;
        a->t = t;
        snprintf(a->msg, sizeof a->msg, "%s", msg ? msg : "");
        if (c->tc->ts.post(c->tc->ts.arg, shared_store, shared_store_drop, a) == AL_OK)
            return;
        free(a);
    }
    finish(c, err, t, msg); /* not stored: the other replicas fetch their own */
}

static void load_token(void *arg, al_flight *f, const char *key, void *key_data)
{
    al_token_client *tc = arg;
    spec_copy *sc = key_data;
    load_ctx *c = calloc(1, sizeof *c);
    char *kc = strdup(key);
    if (!c || !kc) {
        free(c);
        free(kc);
        al_flight_complete(f, key, AL_ERR_NOMEM, NULL, 0, 0, "out of memory");
        return;
    }
    c->tc = tc;
    c->key = kc;
    c->sc = sc;
    c->started_ms = mono_ms();
    pthread_mutex_lock(&tc->lock);
    c->next = tc->loads;
    if (tc->loads)
        tc->loads->prev = c;
    tc->loads = c;
    if (sc->s.shared && tc->ts.post) {
        char h[65];
        key_hash(key, h);
        c->shared = 1;
        snprintf(c->row_user, sizeof c->row_user, "2lo:%s", h);
        for (size_t i = 0; i < REJECTED_MAX; i++)
            if (!strcmp(tc->rej[i].key_hash, h))
                snprintf(c->avoid_fp, sizeof c->avoid_fp, "%s", tc->rej[i].fp);
    }
    pthread_mutex_unlock(&tc->lock);
    if (c->shared) {
        if (tc->ts.post(tc->ts.arg, shared_begin, shared_abandon, c) == AL_OK)
            return;
        c->shared = 0; /* no memory for the task: this process fetches its own */
    }
    start_fetch(c);
}

/* ---- the client -------------------------------------------------------------------------- */

static int make_cache(al_token_client *tc, int64_t (*now_ms)(void *), void *arg, al_flight **out)
{
    al_flight_config fc = {
        .value_ops = {v_retain, v_release},
        .key_data_dup = spec_dup,
        .key_data_free = spec_free,
        .load = load_token,
        .load_arg = tc,
        .now_ms = now_ms,
        .clock_arg = arg,
        .name = "token",
    };
    return al_flight_new(&fc, out);
}

int al_token_client_new(al_oidc *oidc, al_token_client **out)
{
    al_token_client *tc = calloc(1, sizeof *tc);
    if (!tc)
        return AL_ERR_NOMEM;
    tc->oidc = oidc;
    pthread_mutex_init(&tc->lock, NULL);
    int rc = make_cache(tc, NULL, NULL, &tc->cache);
    if (rc != AL_OK) {
        pthread_mutex_destroy(&tc->lock);
        free(tc);
        return rc;
    }
    *out = tc;
    return AL_OK;
}

void al_token_client_free(al_token_client *tc)
{
    if (!tc)
        return;
    while (tc->loads)
        ctx_free(tc->loads);
    al_flight_free(tc->cache);
    for (size_t i = 0; i < tc->n_warned; i++)
        free(tc->warned[i]);
    pthread_mutex_destroy(&tc->lock);
    free(tc);
}

void al_token_client_set_store(al_token_client *tc, const al_token_store *ts)
{
    if (ts)
        tc->ts = *ts;
    else
        memset(&tc->ts, 0, sizeof tc->ts);
}

void al_token_client_set_audit(al_token_client *tc, struct al_audit *audit)
{
    tc->audit = audit;
}

void al_token_client_set_observer(al_token_client *tc,
                                  void (*fn)(void *arg, const char *provider, int ok), void *arg)
{
    tc->observe = fn;
    tc->observe_arg = arg;
}

void al_token_client_set_clock(al_token_client *tc, int64_t (*now_ms)(void *arg), void *arg)
{
    al_flight *nf;
    if (make_cache(tc, now_ms, arg, &nf) == AL_OK) {
        al_flight_free(tc->cache);
        tc->cache = nf;
    }
}

int al_token_get(al_token_client *tc, const al_token_spec *spec, al_flight_cb cb, void *arg,
                 al_flight_result *res)
{
    char key[4096];
    if (al_token_cache_key(spec, key, sizeof key) != AL_OK) {
        memset(res, 0, sizeof *res);
        snprintf(res->msg, sizeof res->msg, "the token request's parameters are too long");
        return AL_ERR_TOOBIG;
    }
    return al_flight_get(tc->cache, key, spec, 0, cb, arg, res);
}

int al_token_peek(al_token_client *tc, const al_token_spec *spec, al_flight_result *res)
{
    char key[4096];
    if (al_token_cache_key(spec, key, sizeof key) != AL_OK) {
        memset(res, 0, sizeof *res);
        return AL_ERR_NOTFOUND;
    }
    return al_flight_peek(tc->cache, key, res);
}

int al_token_cancel(al_token_client *tc, uint64_t wait_id)
{
    return al_flight_cancel(tc->cache, wait_id);
}

int al_token_invalidate(al_token_client *tc, const al_token_spec *spec, uint64_t gen)
{
    char key[4096];
    al_flight_result res;
    if (al_token_cache_key(spec, key, sizeof key) != AL_OK)
        return 0;
    if (spec->shared && al_flight_peek(tc->cache, key, &res) == AL_OK) {
        if (res.gen == gen) /* the store may still hold it: not to be read back */
            remember_rejected(tc, key, ((al_token *)res.value)->fingerprint);
        al_flight_release(tc->cache, res.value);
    }
    return al_flight_invalidate(tc->cache, key, gen);
}

int al_token_drop(al_token_client *tc, const al_token *tok, uint64_t gen)
{
    const tok_impl *ti = (const tok_impl *)tok;
    if (!ti || !ti->key)
        return 0;
    int dropped = al_flight_invalidate(tc->cache, ti->key, gen);
    if (dropped && tc->ts.post) /* a shared token: the store may still hold it */
        remember_rejected(tc, ti->key, ti->fp);
    return dropped;
}

int al_token_get_wait(al_token_client *tc, const al_token_spec *spec, al_token **tok, char *errbuf,
                      size_t errlen)
{
    al_flight_sync w;
    al_flight_result r;
    void *v;
    al_flight_sync_init(&w, tc->cache);
    int rc = al_token_get(tc, spec, al_flight_sync_cb, &w, &r);
    rc = al_flight_sync_wait(&w, rc, &r, &v, errbuf, errlen);
    *tok = v;
    return rc;
}

typedef struct status_ctx {
    json_t *arr;
    int64_t now_ms, now_unix;
} status_ctx;

static void status_one(void *arg, const al_flight_info *in)
{
    status_ctx *s = arg;
    const spec_copy *sc = in->key_data;
    const al_token *t = in->value;
    json_t *scopes = json_array();
    for (size_t i = 0; sc && i < sc->s.scope_count; i++)
        json_array_append_new(scopes, json_string(sc->s.scopes[i]));
    /* monotonic deadlines as wall-clock seconds */
    int64_t off = s->now_unix * 1000 - s->now_ms;
    const char *state = in->state.loading ? "fetching"
                        : t && s->now_ms < in->state.expires_at
                            ? (s->now_ms >= in->state.refresh_at ? "refresh_due" : "valid")
                        : in->state.failures ? "failing"
                                             : "expired";
    json_t *o = json_object();
    if (!o) {
        json_decref(scopes);
        return;
    }
    json_object_set_new(o, "provider", sc ? json_string(sc->s.provider) : json_null());
    json_object_set_new(o, "version", json_integer(sc ? sc->s.version : 0));
    json_object_set_new(o, "scopes", scopes);
    json_object_set_new(o, "audience",
                        sc && sc->s.audience ? json_string(sc->s.audience) : json_null());
    json_object_set_new(o, "resource",
                        sc && sc->s.resource ? json_string(sc->s.resource) : json_null());
    json_object_set_new(o, "fingerprint", t ? json_string(t->fingerprint) : json_null());
    json_object_set_new(o, "obtained_at", t ? json_integer(t->obtained_unix) : json_null());
    json_object_set_new(o, "expires_at",
                        t ? json_integer((in->state.expires_at + off) / 1000) : json_null());
    json_object_set_new(o, "refresh_at",
                        t ? json_integer((in->state.refresh_at + off) / 1000) : json_null());
    json_object_set_new(o, "long_lived", json_boolean(t && t->long_lived));
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "failures", json_integer(in->state.failures));
    json_object_set_new(o, "last_error", in->last_err ? json_string(in->last_msg) : json_null());
    if (o)
        json_array_append_new(s->arr, o);
}

json_t *al_token_status(al_token_client *tc)
{
    status_ctx s = {
        .arr = json_array(), .now_ms = al_flight_now(tc->cache), .now_unix = (int64_t)time(NULL)};
    al_flight_foreach(tc->cache, status_one, &s);
    return json_pack("{s:o}", "tokens", s.arr);
}
