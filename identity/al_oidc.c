/* al_oidc: discovery metadata and JWKS documents (see al_oidc.h).
 *
 * Owns: the fetch thread (al_fetch), one al_flight table of documents (json_t values,
 * reference-counted by jansson), and the contexts of loads in flight.
 *
 * Invariants:
 *  - a document in the cache has passed al_oidc_check_metadata/jwks; a document that
 *    fails them is a failed load (back-off, the old document stays);
 *  - a load context is freed by its fetch callback, or by al_oidc_free() after the
 *    fetch thread stopped (then no callback runs any more);
 *  - documents are public data, but the fetch options are part of the key: the same
 *    URL with another CA file or guard setting is another entry. */
#include "al_oidc.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_DEFAULT_S 3600
#define JWKS_DEFAULT_S 600
#define FRESH_MIN_S    60
#define FRESH_MAX_S    86400
#define STALE_OK_S     86400

static const char WK_OIDC[] = "/.well-known/openid-configuration";
static const char WK_8414[] = "/.well-known/oauth-authorization-server";

typedef struct doc_key {
    enum al_oidc_kind kind;
    char *url;
    char *ca_file;
    al_fetch_opts opts; /* opts.ca_file points at ca_file */
} doc_key;

typedef struct load_ctx {
    struct load_ctx *next, *prev;
    al_oidc *o;
    char *key;
    doc_key *dk;
} load_ctx;

struct al_oidc {
    al_fetch *fetch;
    al_flight *docs;
    pthread_mutex_t lock; /* the list of load contexts */
    load_ctx *loads;
};

/* ---- pure checks ---------------------------------------------------------------- */

long al_oidc_fresh_s(enum al_oidc_kind kind, long max_age_s, int no_store)
{
    long s = kind == AL_OIDC_JWKS ? JWKS_DEFAULT_S : META_DEFAULT_S;
    if (no_store)
        s = FRESH_MIN_S; /* still cached a minute: each token check cannot cost a fetch */
    else if (max_age_s >= 0)
        s = max_age_s;
    if (s < FRESH_MIN_S)
        s = FRESH_MIN_S;
    if (s > FRESH_MAX_S)
        s = FRESH_MAX_S;
    return s;
}

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* The issuer the discovery URL implies, into buf; 0 when the URL has no well-known
 * form (then nothing is implied). Two RFC 8414 spellings are accepted: the segment
 * inserted after the authority (the RFC) and appended to the issuer's path (common). */
static int implied_issuers(const char *url, char *a, char *b, size_t len)
{
    a[0] = b[0] = 0;
    size_t n = strlen(url);
    if (ends_with(url, n, WK_OIDC)) {
        snprintf(a, len, "%.*s", (int)(n - strlen(WK_OIDC)), url);
        return 1;
    }
    const char *wk = strstr(url, WK_8414);
    if (!wk)
        return 0;
    /* appended: issuer + WK_8414 */
    if (ends_with(url, n, WK_8414))
        snprintf(b, len, "%.*s", (int)(n - strlen(WK_8414)), url);
    /* inserted: scheme://authority + WK_8414 + path */
    const char *auth = strstr(url, "://");
    const char *path_start = auth ? strchr(auth + 3, '/') : NULL;
    if (path_start == wk)
        snprintf(a, len, "%.*s%s", (int)(wk - url), url, wk + strlen(WK_8414));
    return 1;
}

static int same_issuer(const char *x, const char *y)
{
    size_t nx = strlen(x), ny = strlen(y);
    while (nx > 0 && x[nx - 1] == '/')
        nx--;
    while (ny > 0 && y[ny - 1] == '/')
        ny--;
    return nx == ny && nx > 0 && memcmp(x, y, nx) == 0;
}

int al_oidc_check_metadata(const json_t *doc, const char *url, const al_fetch_opts *opts,
                           char *errbuf, size_t errlen)
{
    if (!json_is_object(doc)) {
        snprintf(errbuf, errlen, "the metadata document is not a JSON object");
        return AL_ERR_PROTO;
    }
    const char *issuer = json_string_value(json_object_get(doc, "issuer"));
    if (!issuer || !*issuer) {
        snprintf(errbuf, errlen, "the metadata document has no issuer");
        return AL_ERR_PROTO;
    }
    char a[1024], b[1024];
    if (url && implied_issuers(url, a, b, sizeof a) && !same_issuer(issuer, a) &&
        !same_issuer(issuer, b)) {
        snprintf(errbuf, errlen,
                 "the metadata's issuer '%.200s' does not match its discovery URL (expected "
                 "'%.200s')",
                 issuer, a[0] ? a : b);
        return AL_ERR_PROTO;
    }
    static const char *const endpoints[] = {"token_endpoint", "jwks_uri"};
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++) {
        json_t *v = json_object_get(doc, endpoints[i]);
        if (!v)
            continue;
        char why[300];
        if (!json_is_string(v) ||
            al_fetch_check_url(json_string_value(v), opts, why, sizeof why) != AL_OK) {
            snprintf(errbuf, errlen, "the metadata's %s is not usable: %s", endpoints[i],
                     json_is_string(v) ? why : "not a string");
            return AL_ERR_PROTO;
        }
    }
    return AL_OK;
}

int al_oidc_check_jwks(const json_t *doc, char *errbuf, size_t errlen)
{
    json_t *keys = json_is_object(doc) ? json_object_get(doc, "keys") : NULL;
    if (!json_is_array(keys)) {
        snprintf(errbuf, errlen, "the JWKS document has no keys array");
        return AL_ERR_PROTO;
    }
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "k"};
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        if (!json_is_object(k) || !json_is_string(json_object_get(k, "kty"))) {
            snprintf(errbuf, errlen, "JWKS key %zu has no kty", i);
            return AL_ERR_PROTO;
        }
        for (size_t j = 0; j < sizeof private_members / sizeof private_members[0]; j++) {
            if (json_object_get(k, private_members[j])) {
                snprintf(errbuf, errlen,
                         "JWKS key %zu carries private or symmetric key material ('%s'): "
                         "refused",
                         i, private_members[j]);
                return AL_ERR_PROTO;
            }
        }
    }
    return AL_OK;
}

/* ---- the cache ------------------------------------------------------------------ */

static void doc_retain(void *v)
{
    json_incref((json_t *)v);
}

static void doc_release(void *v)
{
    json_decref((json_t *)v);
}

static void key_free(void *p)
{
    doc_key *k = p;
    if (!k)
        return;
    free(k->url);
    free(k->ca_file);
    free(k);
}

static void *key_dup(const void *p)
{
    const doc_key *src = p;
    doc_key *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    *k = *src;
    k->url = strdup(src->url);
    k->ca_file = src->ca_file ? strdup(src->ca_file) : NULL;
    if (!k->url || (src->ca_file && !k->ca_file)) {
        key_free(k);
        return NULL;
    }
    k->opts.ca_file = k->ca_file;
    return k;
}

static void ctx_unlink_free(load_ctx *c)
{
    al_oidc *o = c->o;
    pthread_mutex_lock(&o->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        o->loads = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&o->lock);
    free(c->key);
    free(c);
}

static const char *kind_name(enum al_oidc_kind k)
{
    return k == AL_OIDC_JWKS ? "JWKS" : "metadata";
}

static void on_fetched(void *arg, const al_fetch_response *res)
{
    load_ctx *c = arg;
    al_oidc *o = c->o;
    char msg[512];
    json_t *doc = NULL;
    int err = res->err;
    if (err != AL_OK) {
        snprintf(msg, sizeof msg, "fetching the %s failed: %s", kind_name(c->dk->kind),
                 res->errmsg);
        goto done;
    }
    err = AL_ERR_PROTO;
    if (res->status != 200) {
        snprintf(msg, sizeof msg, "%s answered %ld to the %s request", res->host, res->status,
                 kind_name(c->dk->kind));
        goto done;
    }
    json_error_t je;
    doc = json_loadb(res->body, res->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!doc) {
        snprintf(msg, sizeof msg, "the %s from %s is not JSON (line %d: %.100s)",
                 kind_name(c->dk->kind), res->host, je.line, je.text);
        goto done;
    }
    char why[400];
    err = c->dk->kind == AL_OIDC_JWKS
              ? al_oidc_check_jwks(doc, why, sizeof why)
              : al_oidc_check_metadata(doc, c->dk->url, &c->dk->opts, why, sizeof why);
    if (err != AL_OK) {
        snprintf(msg, sizeof msg, "%s (from %s)", why, res->host);
        json_decref(doc);
        doc = NULL;
    }
done:;
    long fresh = al_oidc_fresh_s(c->dk->kind, res->max_age_s, res->no_store);
    al_flight_complete(o->docs, c->key, err, doc, fresh * 1000, (fresh + STALE_OK_S) * 1000,
                       err == AL_OK ? NULL : msg);
    ctx_unlink_free(c);
}

static void load_doc(void *arg, al_flight *f, const char *key, void *key_data)
{
    al_oidc *o = arg;
    doc_key *dk = key_data;
    load_ctx *c = calloc(1, sizeof *c);
    char *kcopy = strdup(key);
    if (!c || !kcopy) {
        free(c);
        free(kcopy);
        al_flight_complete(f, key, AL_ERR_NOMEM, NULL, 0, 0, "out of memory");
        return;
    }
    c->o = o;
    c->key = kcopy;
    c->dk = dk;
    pthread_mutex_lock(&o->lock);
    c->next = o->loads;
    if (o->loads)
        o->loads->prev = c;
    o->loads = c;
    pthread_mutex_unlock(&o->lock);
    al_fetch_request rq = {.url = dk->url};
    char eb[300];
    int rc = al_fetch_start(o->fetch, &rq, &dk->opts, on_fetched, c, NULL, eb, sizeof eb);
    if (rc != AL_OK) {
        char msg[400];
        snprintf(msg, sizeof msg, "fetching the %s failed: %s", kind_name(dk->kind), eb);
        al_flight_complete(f, key, rc, NULL, 0, 0, msg);
        ctx_unlink_free(c);
    }
}

static int make_docs(al_oidc *o, int64_t (*now_ms)(void *arg), void *clock_arg, al_flight **out)
{
    al_flight_config fc = {
        .value_ops = {doc_retain, doc_release},
        .key_data_dup = key_dup,
        .key_data_free = key_free,
        .load = load_doc,
        .load_arg = o,
        .now_ms = now_ms,
        .clock_arg = clock_arg,
        .name = "oidc",
    };
    return al_flight_new(&fc, out);
}

int al_oidc_new(al_oidc **out)
{
    al_oidc *o = calloc(1, sizeof *o);
    if (!o)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&o->lock, NULL);
    int rc = make_docs(o, NULL, NULL, &o->docs);
    if (rc == AL_OK)
        rc = al_fetch_new(&o->fetch);
    if (rc != AL_OK) {
        al_flight_free(o->docs);
        pthread_mutex_destroy(&o->lock);
        free(o);
        return rc;
    }
    *out = o;
    return AL_OK;
}

void al_oidc_free(al_oidc *o)
{
    if (!o)
        return;
    al_fetch_stop(o->fetch); /* from here no on_fetched runs */
    while (o->loads)
        ctx_unlink_free(o->loads);
    al_flight_free(o->docs);
    al_fetch_free(o->fetch);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

al_fetch *al_oidc_fetcher(al_oidc *o)
{
    return o->fetch;
}

void al_oidc_set_clock(al_oidc *o, int64_t (*now_ms)(void *arg), void *arg)
{
    /* The table is rebuilt empty around the new clock (tests call this first). */
    al_flight *nf;
    if (make_docs(o, now_ms, arg, &nf) == AL_OK) {
        al_flight_free(o->docs);
        o->docs = nf;
    }
}

static int make_key(enum al_oidc_kind kind, const char *url, const al_fetch_opts *opts, char *buf,
                    size_t len)
{
    int n = snprintf(buf, len, "%d\x1f%s\x1f%s\x1f%d%d\x1f%ld\x1f%zu", (int)kind, url,
                     opts && opts->ca_file ? opts->ca_file : "", opts ? opts->allow_insecure : 0,
                     opts ? opts->allow_private_network : 0, opts ? opts->timeout_ms : 0,
                     opts ? opts->max_body : 0);
    return n < 0 || (size_t)n >= len ? AL_ERR_TOOBIG : AL_OK;
}

int al_oidc_get(al_oidc *o, enum al_oidc_kind kind, const char *url, const al_fetch_opts *opts,
                int force, al_flight_cb cb, void *arg, al_flight_result *res)
{
    char key[4096];
    memset(res, 0, sizeof *res);
    if (!url || make_key(kind, url, opts, key, sizeof key) != AL_OK) {
        snprintf(res->msg, sizeof res->msg, "the %s URL is missing or too long", kind_name(kind));
        return AL_ERR_INVAL;
    }
    int rc = al_fetch_check_url(url, opts, res->msg, sizeof res->msg);
    if (rc != AL_OK)
        return rc;
    doc_key dk = {.kind = kind, .url = (char *)url};
    if (opts)
        dk.opts = *opts;
    dk.ca_file = (char *)dk.opts.ca_file;
    return al_flight_get(o->docs, key, &dk, force, cb, arg, res);
}

int al_oidc_cancel(al_oidc *o, uint64_t wait_id)
{
    return al_flight_cancel(o->docs, wait_id);
}

void al_oidc_release(al_oidc *o, json_t *doc)
{
    (void)o;
    json_decref(doc);
}

int al_oidc_get_wait(al_oidc *o, enum al_oidc_kind kind, const char *url, const al_fetch_opts *opts,
                     int force, json_t **doc, char *errbuf, size_t errlen)
{
    al_flight_sync w;
    al_flight_result r;
    void *v;
    al_flight_sync_init(&w, o->docs);
    int rc = al_oidc_get(o, kind, url, opts, force, al_flight_sync_cb, &w, &r);
    rc = al_flight_sync_wait(&w, rc, &r, &v, errbuf, errlen);
    *doc = v;
    return rc;
}
