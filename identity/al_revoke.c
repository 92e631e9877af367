/* al_revoke: RFC 7009 token revocation (see al_revoke.h). Stateless: each call builds
 * one client-authenticated POST (al_token_post) and waits for its answer; every buffer
 * that held the token or the secret is wiped before it is freed. */
#include "al_revoke.h"
#include "al_token.h"
#include "common/al_err.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *al_revoke_form(const char *token, const char *hint)
{
    if (!token || !*token)
        return NULL;
    size_t cap = 64 + 3 * strlen(token) + (hint ? 3 * strlen(hint) : 0), u = 0;
    char *f = malloc(cap);
    if (!f)
        return NULL;
    al_token_form_append(f, &u, cap, "token", token, strlen(token));
    if (hint && *hint)
        al_token_form_append(f, &u, cap, "token_type_hint", hint, strlen(hint));
    f[u < cap ? u : cap - 1] = 0;
    return f;
}

int al_revoke_check(long status, const char *body, size_t len, const char *host,
                    const unsigned char *secret, size_t secret_len, char *msg, size_t msglen)
{
    if (status == 200)
        return AL_OK;
    json_t *j = json_loadb(body ? body : "", len, 0, NULL);
    al_token_error_message("revocation endpoint", host, status, j, secret, secret_len, msg, msglen);
    json_decref(j);
    return AL_ERR_PROTO;
}

int al_revoke_wait(al_oidc *oidc, const char *config_json, const unsigned char *secret,
                   size_t secret_len, const char *token, const char *hint, char *msg, size_t msglen)
{
    json_t *cfg = config_json ? json_loads(config_json, 0, NULL) : NULL, *meta = NULL;
    char *form = NULL, *buf = NULL;
    al_token_post p;
    memset(&p, 0, sizeof p);
    int rc = AL_ERR_NOTFOUND;
    const char *ep = json_string_value(json_object_get(cfg, "revocationEndpoint"));
    const char *disc = json_string_value(json_object_get(cfg, "discoveryUrl"));
    al_fetch_opts fo = {
        .ca_file = json_string_value(json_object_get(cfg, "caFile")),
        .allow_insecure = json_is_true(json_object_get(cfg, "allowInsecureEndpoints")),
        .allow_private_network = json_is_true(json_object_get(cfg, "allowPrivateNetwork"))};
    if (!ep && disc) {
        char eb[400];
        rc = al_oidc_get_wait(oidc, AL_OIDC_METADATA, disc, &fo, 0, &meta, eb, sizeof eb);
        if (rc != AL_OK) {
            snprintf(msg, msglen, "discovery failed: %s", eb);
            goto out;
        }
        ep = json_string_value(json_object_get(meta, "revocation_endpoint"));
        rc = AL_ERR_NOTFOUND;
    }
    if (!ep) {
        snprintf(msg, msglen,
                 "the provider has no revocation endpoint (neither "
                 "revocationEndpoint in its settings nor revocation_endpoint in "
                 "its discovery document)");
        goto out;
    }
    rc = AL_ERR_NOMEM;
    if (!(form = al_revoke_form(token, hint))) {
        snprintf(msg, msglen, "out of memory, or no token to revoke");
        goto out;
    }
    if ((rc = al_token_post_init(&p, config_json, secret, secret_len, ep, form)) != AL_OK) {
        snprintf(msg, msglen, "%s",
                 rc == AL_ERR_CONFIG ? "the provider has no clientId" : "out of memory");
        goto out;
    }
    al_fetch_response r;
    rc = al_fetch_wait(al_oidc_fetcher(oidc), &p.rq, &p.fo, &r, &buf);
    if (rc != AL_OK) {
        snprintf(msg, msglen, "revocation endpoint unreachable: %s", r.errmsg ? r.errmsg : "");
        goto out;
    }
    rc = al_revoke_check(r.status, r.body, r.body_len, r.host, secret, secret_len, msg, msglen);
out:
    al_token_post_clear(&p);
    if (form) {
        OPENSSL_cleanse(form, strlen(form));
        free(form);
    }
    free(buf);
    json_decref(meta);
    json_decref(cfg);
    return rc;
}
