/* al_par: pushed authorization requests, RFC 9126 (see al_par.h).
 *
 * Owns nothing long-lived: a push is one al_fetch request whose context (the callback,
 * its argument, a copy of the secret for cutting it out of messages) lives until the
 * answer, then is wiped. */
#include "al_par.h"
#include "al_token.h"
#include "common/al_err.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int al_par_wanted(const json_t *meta, const json_t *config)
{
    return json_is_true(json_object_get(config, "usePar")) ||
           json_is_true(json_object_get(meta, "require_pushed_authorization_requests"));
}

const char *al_par_endpoint(const json_t *meta, const json_t *config)
{
    const char *e = json_string_value(json_object_get(config, "parEndpoint"));
    return e ? e
             : json_string_value(json_object_get(meta, "pushed_authorization_request_endpoint"));
}

int al_par_parse(long status, const char *body, size_t len, const char *host,
                 const unsigned char *secret, size_t secret_len, char **request_uri,
                 int64_t *expires_in, char *msg, size_t msglen)
{
    json_t *j = json_loadb(body ? body : "", len, 0, NULL);
    int rc = AL_ERR_PROTO;
    *request_uri = NULL;
    *expires_in = 0;
    /* RFC 9126 2.2: 201 Created; 200 is accepted too (some servers answer it) */
    if (status != 201 && status != 200) {
        al_token_error_message("pushed authorization request endpoint", host, status, j, secret,
                               secret_len, msg, msglen);
        goto out;
    }
    json_t *ru = json_object_get(j, "request_uri"), *ei = json_object_get(j, "expires_in");
    const char *u = json_string_value(ru);
    size_t ul = u ? json_string_length(ru) : 0;
    int ok = ul > 0 && ul <= AL_PAR_REQUEST_URI_MAX;
    for (size_t i = 0; ok && i < ul; i++)
        ok = (unsigned char)u[i] > 0x20 && (unsigned char)u[i] < 0x7f;
    if (!ok) {
        snprintf(msg, msglen,
                 "pushed authorization request endpoint %s answered %ld without a usable "
                 "request_uri",
                 host, status);
        goto out;
    }
    if (!json_is_integer(ei) || json_integer_value(ei) <= 0) {
        snprintf(msg, msglen,
                 "pushed authorization request endpoint %s answered %ld without a positive "
                 "integer expires_in",
                 host, status);
        goto out;
    }
    rc = AL_ERR_NOMEM;
    if (!(*request_uri = strndup(u, ul))) {
        snprintf(msg, msglen, "out of memory");
        goto out;
    }
    *expires_in = json_integer_value(ei);
    rc = AL_OK;
out:
    json_decref(j);
    return rc;
}

char *al_par_url(const char *authz_endpoint, const char *client_id, const char *request_uri)
{
    size_t cap = 64 + 3 * (strlen(client_id) + strlen(request_uri)), u = 0;
    char *q = malloc(cap), *url = NULL;
    if (!q)
        return NULL;
    al_token_form_append(q, &u, cap, "client_id", client_id, strlen(client_id));
    al_token_form_append(q, &u, cap, "request_uri", request_uri, strlen(request_uri));
    q[u < cap ? u : cap - 1] = 0;
    size_t a = strlen(authz_endpoint), b = strlen(q);
    if ((url = malloc(a + b + 2))) {
        memcpy(url, authz_endpoint, a);
        url[a] = strchr(authz_endpoint, '?') ? '&' : '?';
        memcpy(url + a + 1, q, b + 1);
    }
    free(q);
    return url;
}

typedef struct push_ctx {
    al_par_cb cb;
    void *arg;
    unsigned char *secret; /* for cutting it out of the provider's error text */
    size_t secret_len;
} push_ctx;

static void push_ctx_free(push_ctx *c)
{
    if (!c)
        return;
    if (c->secret) {
        OPENSSL_cleanse(c->secret, c->secret_len);
        free(c->secret);
    }
    free(c);
}

static void on_push(void *arg, const al_fetch_response *res)
{
    push_ctx *c = arg;
    char msg[512], *uri = NULL;
    int64_t exp = 0;
    int err = res->err;
    if (err != AL_OK)
        snprintf(msg, sizeof msg, "pushed authorization request endpoint unreachable: %s",
                 res->errmsg);
    else
        err = al_par_parse(res->status, res->body, res->body_len, res->host, c->secret,
                           c->secret_len, &uri, &exp, msg, sizeof msg);
    c->cb(c->arg, err, err == AL_OK ? uri : NULL, exp, err == AL_OK ? "" : msg);
    free(uri);
    push_ctx_free(c);
}

void al_par_abandon(void *pending)
{
    push_ctx_free(pending);
}

int al_par_push(al_fetch *f, const char *config_json, const unsigned char *secret,
                size_t secret_len, const char *endpoint, const char *params, al_par_cb cb,
                void *arg, uint64_t *id, void **pending, char *msg, size_t msglen)
{
    al_token_post p;
    push_ctx *c = calloc(1, sizeof *c);
    int rc = AL_ERR_NOMEM;
    if (!c || !(c->secret = malloc(secret_len + 1))) {
        snprintf(msg, msglen, "out of memory");
        push_ctx_free(c);
        return rc;
    }
    memcpy(c->secret, secret, secret_len);
    c->secret_len = secret_len;
    c->cb = cb;
    c->arg = arg;
    rc = al_token_post_init(&p, config_json, secret, secret_len, endpoint, params);
    if (rc != AL_OK) {
        snprintf(msg, msglen, "%s",
                 rc == AL_ERR_CONFIG ? "the provider has no clientId" : "out of memory");
        push_ctx_free(c);
        return rc;
    }
    char eb[300];
    if (pending)
        *pending = c; /* before the start: the answer may come at once, on the fetch thread */
    rc = al_fetch_start(f, &p.rq, &p.fo, on_push, c, id, eb, sizeof eb);
    if (rc != AL_OK) {
        if (pending)
            *pending = NULL;
        snprintf(msg, msglen, "pushed authorization request endpoint refused: %s", eb);
        push_ctx_free(c);
    }
    al_token_post_clear(&p); /* al_fetch copied (and wipes) the body and credentials */
    return rc;
}
