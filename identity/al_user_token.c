/* al_user_token: sealed per-user OAuth tokens (see al_user_token.h).
 *
 * The sealed plaintext is a JSON object {"a": access token, "r": refresh token}; the
 * vault's associated data is (name = provider "\n" user, kind "user_token", version 1),
 * so a sealed row only opens for the key it was written under. */
#include "al_user_token.h"
#include "common/al_err.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KIND "user_token"

static void wipe_free(char *p)
{
    if (p) {
        OPENSSL_cleanse(p, strlen(p));
        free(p);
    }
}

void al_user_token_clear(al_user_token *t)
{
    if (!t)
        return;
    wipe_free(t->access_token);
    wipe_free(t->refresh_token);
    free(t->scope);
    memset(t, 0, sizeof *t);
}

static char *aad_name(const char *provider, const char *user)
{
    size_t a = strlen(provider), b = strlen(user);
    char *n = malloc(a + b + 2);
    if (n) {
        memcpy(n, provider, a);
        n[a] = '\n';
        memcpy(n + a + 1, user, b + 1);
    }
    return n;
}

int al_user_token_save(al_store *s, const al_vault *v, const char *provider, const char *user,
                       const al_user_token *t)
{
    if (!s || !s->ops->user_put)
        return AL_ERR_DB;
    if (!t->access_token || !t->access_len)
        return AL_ERR_INVAL;
    int rc = AL_ERR_NOMEM;
    char *name = aad_name(provider, user), *plain = NULL;
    json_t *j = json_object();
    al_store_user_token row;
    memset(&row, 0, sizeof row);
    if (!name || !j)
        goto out;
    json_object_set_new(j, "a", json_stringn(t->access_token, t->access_len));
    if (t->refresh_token)
        json_object_set_new(j, "r", json_string(t->refresh_token));
    if (!(plain = json_dumps(j, JSON_COMPACT)))
        goto out;
    rc = al_vault_seal(v, name, KIND, 1, (const unsigned char *)plain, strlen(plain),
                       &row.wrapped_key, &row.wrapped_key_len, &row.sealed, &row.sealed_len);
    if (rc != AL_OK)
        goto out;
    row.provider = (char *)provider;
    row.user = (char *)user;
    row.scope = t->scope ? t->scope : "";
    row.obtained_at = t->obtained_at;
    row.expires_at = t->expires_at;
    row.updated_at = (int64_t)time(NULL);
    row.has_refresh = t->refresh_token != NULL;
    memcpy(row.fingerprint, t->fingerprint, sizeof row.fingerprint);
    rc = s->ops->user_put(s, &row);
    row.provider = row.user = row.scope = NULL; /* borrowed */
out:
    al_store_user_token_clear(&row);
    if (plain)
        wipe_free(plain);
    if (j) {
        /* jansson keeps its own copies of the tokens: wipe them before they are freed */
        json_t *a = json_object_get(j, "a"), *r = json_object_get(j, "r");
        if (a)
            OPENSSL_cleanse((char *)json_string_value(a), json_string_length(a));
        if (r)
            OPENSSL_cleanse((char *)json_string_value(r), json_string_length(r));
        json_decref(j);
    }
    free(name);
    return rc;
}

int al_user_token_load(al_store *s, const al_vault *v, const char *provider, const char *user,
                       al_user_token *out)
{
    memset(out, 0, sizeof *out);
    if (!s || !s->ops->user_get)
        return AL_ERR_DB;
    al_store_user_token row;
    unsigned char *plain = NULL;
    size_t plain_len = 0;
    char *name = NULL;
    json_t *j = NULL;
    int rc = s->ops->user_get(s, provider, user, &row);
    if (rc != AL_OK)
        return rc;
    rc = AL_ERR_NOMEM;
    if (!(name = aad_name(provider, user)))
        goto out;
    rc = al_vault_unseal(v, name, KIND, 1, row.wrapped_key, row.wrapped_key_len, row.sealed,
                         row.sealed_len, &plain, &plain_len);
    if (rc != AL_OK)
        goto out;
    rc = AL_ERR_KEY;
    j = json_loadb((const char *)plain, plain_len, 0, NULL);
    json_t *a = json_object_get(j, "a"), *r = json_object_get(j, "r");
    if (!json_is_string(a) || !json_string_length(a))
        goto out;
    rc = AL_ERR_NOMEM;
    out->access_len = json_string_length(a);
    if (!(out->access_token = strndup(json_string_value(a), out->access_len)))
        goto out;
    if (json_is_string(r) && !(out->refresh_token = strdup(json_string_value(r))))
        goto out;
    if (!(out->scope = strdup(row.scope)))
        goto out;
    out->obtained_at = row.obtained_at;
    out->expires_at = row.expires_at;
    memcpy(out->fingerprint, row.fingerprint, sizeof out->fingerprint);
    rc = AL_OK;
out:
    if (j) {
        json_t *ja = json_object_get(j, "a"), *jr = json_object_get(j, "r");
        if (json_is_string(ja))
            OPENSSL_cleanse((char *)json_string_value(ja), json_string_length(ja));
        if (json_is_string(jr))
            OPENSSL_cleanse((char *)json_string_value(jr), json_string_length(jr));
        json_decref(j);
    }
    if (plain) {
        OPENSSL_cleanse(plain, plain_len);
        free(plain);
    }
    free(name);
    al_store_user_token_clear(&row);
    if (rc != AL_OK)
        al_user_token_clear(out);
    return rc;
}

int al_user_token_rewrap(const al_vault *from, const al_vault *to, al_store_user_token *row)
{
    unsigned char *plain = NULL, *w = NULL;
    size_t pl = 0, wl = 0;
    char *name = aad_name(row->provider, row->user);
    if (!name)
        return AL_ERR_NOMEM;
    int rc = al_vault_unseal(from, name, KIND, 1, row->wrapped_key, row->wrapped_key_len,
                             row->sealed, row->sealed_len, &plain, &pl);
    if (plain) {
        OPENSSL_cleanse(plain, pl);
        free(plain);
    }
    if (rc == AL_OK)
        rc = al_vault_rewrap(from, to, name, KIND, 1, row->wrapped_key, row->wrapped_key_len, &w,
                             &wl);
    free(name);
    if (rc != AL_OK)
        return rc;
    OPENSSL_cleanse(row->wrapped_key, row->wrapped_key_len);
    free(row->wrapped_key);
    row->wrapped_key = w;
    row->wrapped_key_len = wl;
    return AL_OK;
}

int al_user_token_parse(long status, const char *body, size_t len, const char *host,
                        const al_token_spec *spec, int64_t now_unix, al_user_token *out, char *msg,
                        size_t msglen)
{
    memset(out, 0, sizeof *out);
    al_token *tok = NULL;
    int rc = al_token_parse_response(status, body, len, host, spec, now_unix, &tok, msg, msglen);
    json_t *j = json_loadb(body ? body : "", len, 0, NULL);
    if (rc != AL_OK) {
        const char *e = json_string_value(json_object_get(j, "error"));
        if (e && strcmp(e, "invalid_grant") == 0)
            rc = AL_ERR_PERM;
        goto out;
    }
    const char *rt = json_string_value(json_object_get(j, "refresh_token"));
    rc = AL_ERR_NOMEM;
    out->access_len = tok->len;
    if (!(out->access_token = strndup(tok->access_token, tok->len)))
        goto out;
    if (rt && *rt && !(out->refresh_token = strdup(rt)))
        goto out;
    if (!(out->scope = strdup(tok->scope ? tok->scope : "")))
        goto out;
    out->obtained_at = tok->obtained_unix;
    out->expires_at = tok->has_expiry ? tok->obtained_unix + tok->lifetime_s : 0;
    snprintf(out->fingerprint, sizeof out->fingerprint, "%s", tok->fingerprint);
    rc = AL_OK;
out:
    if (j) {
        json_t *jr = json_object_get(j, "refresh_token"), *ja = json_object_get(j, "access_token");
        if (json_is_string(jr))
            OPENSSL_cleanse((char *)json_string_value(jr), json_string_length(jr));
        if (json_is_string(ja))
            OPENSSL_cleanse((char *)json_string_value(ja), json_string_length(ja));
        json_decref(j);
    }
    al_token_release(tok);
    if (rc != AL_OK)
        al_user_token_clear(out);
    return rc;
}
