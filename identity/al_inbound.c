/* al_inbound: inbound JWT authentication state. See al_inbound.h.
 *
 * The key set is a reference-counted snapshot (keyset: the parsed JWKS, the issuer
 * and the JSON documents it came from). A verification takes a reference under the
 * mutex and verifies outside it. Whenever al_oidc hands back a document other than the
 * one the snapshot was built from (refreshed in the background, or re-fetched for an
 * unknown kid), a new snapshot replaces the old one. Loads are started without
 * callbacks and picked up by the next call. */
#include "al_inbound.h"
#include "common/al_err.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct keyset {
    atomic_int refs;
    al_jwks *jwks;
    char *issuer;
    json_t *meta_doc; /* identity of the documents it was built from (compared only) */
    json_t *jwks_doc;
} keyset;

struct al_inbound {
    al_oidc *oidc;
    char *discovery_url;
    al_fetch_opts fo;
    char *ca_file;
    const char **audiences;
    size_t audience_count;
    const char **clients;
    size_t client_count;
    unsigned skew_s;
    pthread_mutex_t mu;
    keyset *keys; /* NULL until discovery and the JWKS arrived */
    al_jwt_cache *cache;
    char *jwks_uri; /* under mu */
};

static void keyset_unref(keyset *k)
{
    if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
        return;
    al_jwks_free(k->jwks);
    free(k->issuer);
    json_decref(k->meta_doc);
    json_decref(k->jwks_doc);
    free(k);
}

static keyset *keys_get(al_inbound *in)
{
    pthread_mutex_lock(&in->mu);
    keyset *k = in->keys;
    if (k)
        atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&in->mu);
    return k;
}

/* Builds and installs a snapshot from a metadata and a JWKS document (borrowed). */
static int install(al_inbound *in, json_t *meta, json_t *jwks_doc)
{
    const char *issuer = json_string_value(json_object_get(meta, "issuer"));
    if (!issuer)
        return AL_ERR_PROTO;
    keyset *k = calloc(1, sizeof *k);
    char *text = json_dumps(jwks_doc, JSON_COMPACT);
    int rc = k && text ? al_jwks_parse(text, strlen(text), &k->jwks) : AL_ERR_NOMEM;
    free(text);
    if (rc == AL_OK && !(k->issuer = strdup(issuer)))
        rc = AL_ERR_NOMEM;
    if (rc != AL_OK) {
        if (k)
            al_jwks_free(k->jwks);
        free(k ? k->issuer : NULL);
        free(k);
        return rc;
    }
    atomic_init(&k->refs, 1);
    k->meta_doc = json_incref(meta);
    k->jwks_doc = json_incref(jwks_doc);
    pthread_mutex_lock(&in->mu);
    keyset *old = in->keys;
    in->keys = k;
    pthread_mutex_unlock(&in->mu);
    keyset_unref(old);
    return AL_OK;
}

/* ---- fetching ------------------------------------------------------------------ */

/* With the metadata document: get the JWKS (now, or on_jwks later). */
static int with_meta(al_inbound *in, json_t *meta, int force)
{
    const char *uri = json_string_value(json_object_get(meta, "jwks_uri"));
    if (!uri)
        return AL_ERR_PROTO;
    pthread_mutex_lock(&in->mu);
    if (!in->jwks_uri || strcmp(in->jwks_uri, uri) != 0) {
        free(in->jwks_uri);
        in->jwks_uri = strdup(uri);
    }
    pthread_mutex_unlock(&in->mu);
    al_flight_result r;
    int rc = al_oidc_get(in->oidc, AL_OIDC_JWKS, uri, &in->fo, force, NULL, NULL, &r);
    if (rc == AL_OK) {
        keyset *k = keys_get(in);
        if (!k || k->jwks_doc != r.value || k->meta_doc != meta)
            rc = install(in, meta, r.value);
        keyset_unref(k);
        al_oidc_release(in->oidc, r.value);
    }
    return rc;
}

/* Non-blocking refresh: uses what al_oidc has, starts loads for what it lacks (no
 * callback: the next call picks their results up, so nothing runs on the fetch thread
 * that could outlive this object). */
static void refresh(al_inbound *in, int force_jwks)
{
    al_flight_result r;
    int rc = al_oidc_get(in->oidc, AL_OIDC_METADATA, in->discovery_url, &in->fo, 0, NULL, NULL, &r);
    if (rc == AL_OK) {
        (void)with_meta(in, r.value, force_jwks);
        al_oidc_release(in->oidc, r.value);
    }
}

int al_inbound_new(const al_table *t, al_oidc *oidc, al_inbound **out)
{
    const al_inbound_cfg *c = &t->inbound;
    if (c->mode != AL_INBOUND_JWT || !c->discovery_url || !oidc)
        return AL_ERR_INVAL;
    al_inbound *in = calloc(1, sizeof *in);
    if (!in)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&in->mu, NULL);
    in->oidc = oidc;
    in->skew_s = c->clock_skew_s;
    in->discovery_url = strdup(c->discovery_url);
    in->ca_file = c->ca_file ? strdup(c->ca_file) : NULL;
    in->audiences = calloc(c->allowed_audience_count + 1, sizeof *in->audiences);
    in->clients = calloc(c->allowed_client_count + 1, sizeof *in->clients);
    in->cache = al_jwt_cache_new(4096);
    int rc = AL_OK;
    if (!in->discovery_url || (c->ca_file && !in->ca_file) || !in->audiences || !in->clients ||
        !in->cache)
        rc = AL_ERR_NOMEM;
    for (size_t i = 0; rc == AL_OK && i < c->allowed_audience_count; i++)
        if (!(in->audiences[in->audience_count++] = strdup(c->allowed_audiences[i])))
            rc = AL_ERR_NOMEM;
    for (size_t i = 0; rc == AL_OK && i < c->allowed_client_count; i++)
        if (!(in->clients[in->client_count++] = strdup(c->allowed_clients[i])))
            rc = AL_ERR_NOMEM;
    if (rc != AL_OK) {
        al_inbound_free(in);
        return rc;
    }
    in->fo.ca_file = in->ca_file;
    in->fo.allow_private_network = c->allow_private_network;
    in->fo.allow_insecure = c->allow_private_network; /* the table allows http only then */
    refresh(in, 0);
    *out = in;
    return AL_OK;
}

void al_inbound_free(al_inbound *in)
{
    if (!in)
        return;
    keyset_unref(in->keys);
    al_jwt_cache_free(in->cache);
    for (size_t i = 0; i < in->audience_count; i++)
        free((char *)in->audiences[i]);
    for (size_t i = 0; i < in->client_count; i++)
        free((char *)in->clients[i]);
    free(in->audiences);
    free(in->clients);
    free(in->discovery_url);
    free(in->ca_file);
    free(in->jwks_uri);
    pthread_mutex_destroy(&in->mu);
    free(in);
}

int al_inbound_prime(al_inbound *in, char *err, size_t errlen)
{
    json_t *meta = NULL, *jwks = NULL;
    int rc = al_oidc_get_wait(in->oidc, AL_OIDC_METADATA, in->discovery_url, &in->fo, 0, &meta, err,
                              errlen);
    if (rc != AL_OK)
        return rc;
    const char *uri = json_string_value(json_object_get(meta, "jwks_uri"));
    if (!uri) {
        snprintf(err, errlen, "the discovery document has no jwks_uri");
        json_decref(meta);
        return AL_ERR_PROTO;
    }
    rc = al_oidc_get_wait(in->oidc, AL_OIDC_JWKS, uri, &in->fo, 0, &jwks, err, errlen);
    if (rc == AL_OK && (rc = install(in, meta, jwks)) != AL_OK)
        snprintf(err, errlen, "the issuer's key set could not be read (%s)", al_strerror(rc));
    json_decref(meta);
    json_decref(jwks);
    return rc;
}

const char *al_inbound_issuer(al_inbound *in)
{
    keyset *k = keys_get(in);
    const char *iss = k ? k->issuer : NULL; /* lives as long as the snapshot is installed */
    keyset_unref(k);
    return iss;
}

int al_inbound_authenticate(al_inbound *in, const char *token, size_t len, int64_t now,
                            al_principal **out, enum al_jwt_check *why)
{
    if (!token || !len) {
        *why = AL_JWT_MISSING;
        return AL_ERR_PERM;
    }
    al_principal *p = al_jwt_cache_get(in->cache, token, len, now);
    if (p) {
        *out = p;
        return AL_OK;
    }
    refresh(in, 0); /* picks up background refreshes of the documents */
    keyset *k = keys_get(in);
    if (!k) {
        *why = AL_JWT_UNAVAILABLE;
        return AL_ERR_PERM;
    }
    al_jwt_expect x = {k->issuer,   in->audiences,    in->audience_count,
                       in->clients, in->client_count, in->skew_s};
    int rc = al_jwt_verify(token, len, k->jwks, &x, now, &p, why);
    keyset_unref(k);
    if (rc == AL_ERR_PERM && *why == AL_JWT_UNKNOWN_KID)
        refresh(in, 1); /* once per 10 s at most (al_oidc); a retry sees the new keys */
    if (rc != AL_OK)
        return rc;
    al_jwt_cache_put(in->cache, token, len, p, p->exp + (int64_t)in->skew_s);
    *out = p;
    return AL_OK;
}

int al_inbound_bearer(const char *value, size_t len, const char **token, size_t *tlen)
{
    if (!value || len < 7 || strncasecmp(value, "bearer", 6) != 0 || value[6] != ' ')
        return AL_ERR_NOTFOUND;
    size_t i = 6;
    while (i < len && value[i] == ' ')
        i++;
    size_t start = i;
    /* RFC 6750 b64token: ALPHA DIGIT - . _ ~ + / then '=' padding */
    while (i < len && (isalnum((unsigned char)value[i]) || strchr("-._~+/", value[i])))
        i++;
    while (i < len && value[i] == '=')
        i++;
    size_t end = i;
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (end == start || i != len)
        return AL_ERR_NOTFOUND;
    *token = value + start;
    *tlen = end - start;
    return AL_OK;
}
