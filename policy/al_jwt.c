/* al_jwt: JWT access-token verification against a JWKS, and the verified-token
 * cache. See al_jwt.h for the contract.
 *
 * Invariants: the algorithm comes from an allow-list checked before any key is
 * chosen; a key is only ever used with the one algorithm family its type fits;
 * every decoded part is bounded by AL_JWT_MAX_BYTES; JSON with duplicate keys is
 * refused (two `aud`s or `exp`s must not mean one thing here and another upstream). */
#include "al_jwt.h"
#include "common/al_err.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ------------------------------------------------------------------ */

static const char *const check_names[AL_JWT_CHECK_COUNT] = {
    [AL_JWT_OK] = "ok",
    [AL_JWT_MISSING] = "missing_token",
    [AL_JWT_MALFORMED] = "malformed",
    [AL_JWT_ALG] = "alg_not_allowed",
    [AL_JWT_UNKNOWN_KID] = "unknown_key",
    [AL_JWT_SIGNATURE] = "bad_signature",
    [AL_JWT_EXPIRED] = "expired",
    [AL_JWT_NOT_YET_VALID] = "not_yet_valid",
    [AL_JWT_ISSUER] = "wrong_issuer",
    [AL_JWT_AUDIENCE] = "wrong_audience",
    [AL_JWT_CLIENT] = "client_not_allowed",
    [AL_JWT_UNAVAILABLE] = "keys_unavailable",
};

static const char *const check_texts[AL_JWT_CHECK_COUNT] = {
    [AL_JWT_OK] = "The token is valid.",
    [AL_JWT_MISSING] = "No bearer token: send an access token from the identity provider "
                       "(Proxy-Authorization: Bearer on the forward proxy, Authorization: "
                       "Bearer in gateway mode).",
    [AL_JWT_MALFORMED] = "The bearer token is not a well-formed signed JWT access token "
                         "(three base64url parts, JSON header and claims, exp and iss "
                         "present); get a new token from the identity provider.",
    [AL_JWT_ALG] = "The token's signing algorithm is not accepted (only RS256, PS256, "
                   "ES256 and EdDSA with the issuer's published keys).",
    [AL_JWT_UNKNOWN_KID] = "The token was signed with a key the issuer does not publish "
                           "(unknown kid); get a new token from the identity provider.",
    [AL_JWT_SIGNATURE] = "The token's signature does not verify with the issuer's key; "
                         "get a new token from the identity provider.",
    [AL_JWT_EXPIRED] = "The token has expired; get a new one from the identity provider.",
    [AL_JWT_NOT_YET_VALID] = "The token is not valid yet (nbf in the future); check the "
                             "clocks of the identity provider and this host.",
    [AL_JWT_ISSUER] = "The token was issued by another issuer than the one airlock trusts "
                      "(inbound.jwt.discovery_url).",
    [AL_JWT_AUDIENCE] = "The token's audience is not one airlock accepts "
                        "(inbound.jwt.allowed_audiences); request a token for this audience.",
    [AL_JWT_CLIENT] = "The token's client is not allowed (inbound.jwt.allowed_clients).",
    [AL_JWT_UNAVAILABLE] = "airlock could not fetch the issuer's signing keys; try again "
                           "later or check inbound.jwt.discovery_url.",
};

const char *al_jwt_check_name(enum al_jwt_check c)
{
    return (unsigned)c < AL_JWT_CHECK_COUNT ? check_names[c] : "unknown";
}

const char *al_jwt_check_text(enum al_jwt_check c)
{
    return (unsigned)c < AL_JWT_CHECK_COUNT ? check_texts[c] : "The token was refused.";
}

/* ---- base64url --------------------------------------------------------------- */

static int b64url_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

long al_base64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4 == 1 || len / 4 * 3 + 2 > cap + 2)
        return AL_ERR_INVAL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)in[i]);
        if (v < 0)
            return AL_ERR_INVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return AL_ERR_TOOBIG;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    /* Leftover bits must be zero: one token, one spelling (no tampering that leaves
     * the decoded bytes, and so a cache key by meaning, unchanged). */
    if (bits && (acc & ((1u << bits) - 1)))
        return AL_ERR_INVAL;
    return (long)o;
}

/* Decodes a base64url JSON object part (bounded); NULL if it is not one. */
static json_t *decode_json_part(const char *p, size_t len)
{
    if (len == 0 || len > AL_JWT_MAX_BYTES)
        return NULL;
    unsigned char *buf = malloc(len);
    if (!buf)
        return NULL;
    json_t *j = NULL;
    long n = al_base64url_decode(p, len, buf, len);
    if (n > 0)
        j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* ---- key sets ----------------------------------------------------------------- */

enum key_family { KF_RSA, KF_EC256, KF_ED25519 };

typedef struct jwk {
    char *kid; /* NULL if the JWK has none */
    char *alg; /* NULL if the JWK does not pin one */
    enum key_family family;
    EVP_PKEY *pkey;
} jwk;

struct al_jwks {
    jwk keys[AL_JWKS_MAX_KEYS];
    size_t count;
};

/* Decodes base64url member `name` of `o` into a new buffer (*out, *n). */
static int jwk_bytes(json_t *o, const char *name, unsigned char **out, size_t *n)
{
    const char *s = json_string_value(json_object_get(o, name));
    if (!s)
        return AL_ERR_INVAL;
    size_t len = strlen(s);
    if (len == 0 || len > 2048)
        return AL_ERR_INVAL;
    unsigned char *buf = malloc(len);
    if (!buf)
        return AL_ERR_NOMEM;
    long got = al_base64url_decode(s, len, buf, len);
    if (got <= 0) {
        free(buf);
        return AL_ERR_INVAL;
    }
    *out = buf;
    *n = (size_t)got;
    return AL_OK;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *jwk_rsa(json_t *o)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nl = 0, el = 0;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    if (jwk_bytes(o, "n", &n, &nl) || jwk_bytes(o, "e", &e, &el) || el > 8)
        goto out;
    bn = BN_bin2bn(n, (int)nl, NULL);
    be = BN_bin2bn(e, (int)el, NULL);
    /* Under 2048 bits is forgeable in practice; an even or tiny e is not RSA. */
    if (!bn || !be || BN_num_bits(bn) < 2048 || BN_num_bits(bn) > 8192 || !BN_is_odd(be) ||
        BN_is_one(be))
        goto out;
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        goto out;
    pkey = pkey_fromdata("RSA", bld);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static EVP_PKEY *jwk_ec(json_t *o)
{
    unsigned char *x = NULL, *y = NULL;
    size_t xl = 0, yl = 0;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    const char *crv = json_string_value(json_object_get(o, "crv"));
    if (!crv || strcmp(crv, "P-256") != 0)
        return NULL;
    if (jwk_bytes(o, "x", &x, &xl) || jwk_bytes(o, "y", &y, &yl) || xl != 32 || yl != 32)
        goto out;
    unsigned char pub[65];
    pub[0] = 0x04; /* uncompressed point; OpenSSL checks it is on the curve */
    memcpy(pub + 1, x, 32);
    memcpy(pub + 33, y, 32);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub))
        goto out;
    pkey = pkey_fromdata("EC", bld);
    if (pkey) {
        /* fromdata does not validate the point; a point off the curve is refused here */
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!ctx || EVP_PKEY_public_check(ctx) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(ctx);
    }
out:
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

static EVP_PKEY *jwk_okp(json_t *o)
{
    unsigned char *x = NULL;
    size_t xl = 0;
    const char *crv = json_string_value(json_object_get(o, "crv"));
    if (!crv || strcmp(crv, "Ed25519") != 0 || jwk_bytes(o, "x", &x, &xl))
        return NULL;
    EVP_PKEY *pkey = xl == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl) : NULL;
    free(x);
    return pkey;
}

static void jwks_clear(al_jwks *k)
{
    for (size_t i = 0; i < k->count; i++) {
        free(k->keys[i].kid);
        free(k->keys[i].alg);
        EVP_PKEY_free(k->keys[i].pkey);
    }
    k->count = 0;
}

int al_jwks_parse(const char *json, size_t len, al_jwks **out)
{
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        json_decref(doc);
        return AL_ERR_INVAL;
    }
    al_jwks *k = calloc(1, sizeof *k);
    if (!k) {
        json_decref(doc);
        return AL_ERR_NOMEM;
    }
    int rc = AL_OK;
    size_t i;
    json_t *o;
    json_array_foreach(keys, i, o)
    {
        if (k->count == AL_JWKS_MAX_KEYS)
            break;
        const char *kty = json_string_value(json_object_get(o, "kty"));
        const char *use = json_string_value(json_object_get(o, "use"));
        json_t *kidj = json_object_get(o, "kid");
        json_t *algj = json_object_get(o, "alg");
        if (!kty || (use && strcmp(use, "sig") != 0) || (kidj && !json_is_string(kidj)) ||
            (algj && !json_is_string(algj)))
            continue;
        jwk *key = &k->keys[k->count];
        if (!strcmp(kty, "RSA")) {
            key->family = KF_RSA;
            key->pkey = jwk_rsa(o);
        } else if (!strcmp(kty, "EC")) {
            key->family = KF_EC256;
            key->pkey = jwk_ec(o);
        } else if (!strcmp(kty, "OKP")) {
            key->family = KF_ED25519;
            key->pkey = jwk_okp(o);
        }
        if (!key->pkey)
            continue;
        key->kid = kidj ? strdup(json_string_value(kidj)) : NULL;
        key->alg = algj ? strdup(json_string_value(algj)) : NULL;
        k->count++;
        if ((kidj && !key->kid) || (algj && !key->alg)) {
            rc = AL_ERR_NOMEM;
            break;
        }
    }
    json_decref(doc);
    if (rc != AL_OK) {
        al_jwks_free(k);
        return rc;
    }
    *out = k;
    return AL_OK;
}

void al_jwks_free(al_jwks *k)
{
    if (!k)
        return;
    jwks_clear(k);
    free(k);
}

size_t al_jwks_count(const al_jwks *k)
{
    return k ? k->count : 0;
}

int al_jwks_has_kid(const al_jwks *k, const char *kid)
{
    for (size_t i = 0; k && kid && i < k->count; i++)
        if (k->keys[i].kid && !strcmp(k->keys[i].kid, kid))
            return 1;
    return 0;
}

/* ---- principals ---------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

al_principal *al_principal_new(const char *iss, const char *sub, const char *client_id,
                               json_t *claims)
{
    al_principal *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    atomic_init(&p->refs, 1);
    p->iss = dup_or_null(iss);
    p->sub = dup_or_null(sub);
    p->client_id = dup_or_null(client_id);
    p->claims = claims ? json_incref(claims) : json_object();
    if ((iss && !p->iss) || (sub && !p->sub) || (client_id && !p->client_id) || !p->claims) {
        al_principal_unref(p);
        return NULL;
    }
    return p;
}

al_principal *al_principal_ref(al_principal *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void al_principal_unref(al_principal *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(p->iss);
    free(p->sub);
    free(p->client_id);
    json_decref(p->claims);
    free(p);
}

static int scalar_equals(json_t *v, const char *want)
{
    char buf[64];
    if (json_is_string(v))
        return !strcmp(json_string_value(v), want);
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return !strcmp(buf, want);
    }
    if (json_is_true(v))
        return !strcmp(want, "true");
    if (json_is_false(v))
        return !strcmp(want, "false");
    return 0;
}

int al_principal_claim_has(const al_principal *p, const char *claim, const char *value)
{
    json_t *v = p && p->claims ? json_object_get(p->claims, claim) : NULL;
    if (!v)
        return 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (scalar_equals(e, value)) return 1;
        return 0;
    }
    /* "scope" is a space-separated list by RFC 8693 / 9068 */
    if (json_is_string(v) && !strcmp(claim, "scope")) {
        const char *s = json_string_value(v);
        size_t wl = strlen(value);
        while (*s) {
            while (*s == ' ')
                s++;
            size_t l = strcspn(s, " ");
            if (l == wl && l && !strncmp(s, value, l))
                return 1;
            s += l;
        }
        return 0;
    }
    return scalar_equals(v, value);
}

/* ---- verification -------------------------------------------------------------- */

typedef struct parts {
    const char *h, *p, *s; /* header, payload, signature (base64url) */
    size_t hl, pl, sl;
} parts;

static int split(const char *t, size_t len, parts *out)
{
    if (!t || len == 0 || len > AL_JWT_MAX_BYTES || memchr(t, '\0', len))
        return AL_ERR_INVAL;
    const char *d1 = memchr(t, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - t)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - t)))
        return AL_ERR_INVAL; /* a JWE (five parts) or junk */
    out->h = t;
    out->hl = (size_t)(d1 - t);
    out->p = d1 + 1;
    out->pl = (size_t)(d2 - out->p);
    out->s = d2 + 1;
    out->sl = len - (size_t)(out->s - t);
    /* an empty signature is left to al_jwt_verify: "alg":"none" tokens have one, and
     * they are refused for their alg, which says more than "malformed" */
    return out->hl && out->pl ? AL_OK : AL_ERR_INVAL;
}

int al_jwt_peek_kid(const char *token, size_t len, char *buf, size_t n)
{
    parts pt;
    if (split(token, len, &pt))
        return AL_ERR_INVAL;
    json_t *h = decode_json_part(pt.h, pt.hl);
    if (!h)
        return AL_ERR_INVAL;
    const char *kid = json_string_value(json_object_get(h, "kid"));
    int rc = kid ? AL_OK : AL_ERR_NOTFOUND;
    if (kid && (size_t)snprintf(buf, n, "%s", kid) >= n)
        rc = AL_ERR_TOOBIG;
    json_decref(h);
    return rc;
}

enum alg { ALG_RS256, ALG_PS256, ALG_ES256, ALG_EDDSA, ALG_NONE_OK };

static enum alg alg_of(const char *s)
{
    if (!s)
        return ALG_NONE_OK;
    if (!strcmp(s, "RS256"))
        return ALG_RS256;
    if (!strcmp(s, "PS256"))
        return ALG_PS256;
    if (!strcmp(s, "ES256"))
        return ALG_ES256;
    if (!strcmp(s, "EdDSA"))
        return ALG_EDDSA;
    return ALG_NONE_OK; /* none, HS*, RS512, ...: not accepted */
}

static enum key_family family_of(enum alg a)
{
    return a == ALG_ES256 ? KF_EC256 : a == ALG_EDDSA ? KF_ED25519 : KF_RSA;
}

/* 1 if `sig` verifies `msg` with `key` under `a`. */
static int sig_ok(EVP_PKEY *key, enum alg a, const unsigned char *msg, size_t ml,
                  const unsigned char *sig, size_t sl)
{
    unsigned char der[80];
    size_t derl = 0;
    if (a == ALG_ES256) {
        /* JWS carries r||s (64 bytes); OpenSSL wants DER */
        if (sl != 64)
            return 0;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        unsigned char *p = der;
        int l = -1;
        if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
            r = s = NULL; /* owned by es now */
            if (i2d_ECDSA_SIG(es, NULL) <= (int)sizeof der)
                l = i2d_ECDSA_SIG(es, &p);
        }
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        if (l <= 0)
            return 0;
        derl = (size_t)l;
        sig = der;
        sl = derl;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = 0;
    if (!md)
        return 0;
    if (EVP_DigestVerifyInit(md, &pctx, a == ALG_EDDSA ? NULL : EVP_sha256(), NULL, key) != 1)
        goto out;
    if (a == ALG_PS256 && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
                           EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1))
        goto out;
    if (a == ALG_RS256 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
        goto out;
    ok = EVP_DigestVerify(md, sig, sl, msg, ml) == 1;
out:
    EVP_MD_CTX_free(md);
    return ok;
}

/* Seconds from a NumericDate claim; 0 if absent, -1 if not a number. */
static int numeric_date(json_t *claims, const char *name, int64_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -1e15 && d < 1e15))
            return -1;
        *out = (int64_t)d;
        return 1;
    }
    return -1;
}

static int in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        if (!strcmp(s, list[i]))
            return 1;
    return 0;
}

/* The claims checks after the signature; AL_JWT_OK or the failed one. */
static enum al_jwt_check check_claims(json_t *c, const al_jwt_expect *x, int64_t now)
{
    json_t *iss = json_object_get(c, "iss");
    json_t *sub = json_object_get(c, "sub");
    json_t *cid = json_object_get(c, "client_id");
    json_t *azp = json_object_get(c, "azp");
    if (!json_is_string(iss) || (sub && !json_is_string(sub)) || (cid && !json_is_string(cid)) ||
        (azp && !json_is_string(azp)) || (!sub && !cid && !azp))
        return AL_JWT_MALFORMED;
    if (x->issuer && strcmp(json_string_value(iss), x->issuer) != 0)
        return AL_JWT_ISSUER;
    int64_t exp = 0, nbf = 0;
    int has_exp = numeric_date(c, "exp", &exp), has_nbf = numeric_date(c, "nbf", &nbf);
    if (has_exp != 1 || has_nbf < 0)
        return AL_JWT_MALFORMED; /* an access token without exp never expires: refused */
    if (now > exp + (int64_t)x->skew_s)
        return AL_JWT_EXPIRED;
    if (has_nbf && now + (int64_t)x->skew_s < nbf)
        return AL_JWT_NOT_YET_VALID;
    if (x->audience_count) {
        json_t *aud = json_object_get(c, "aud");
        int ok = in_list(json_string_value(aud), x->audiences, x->audience_count);
        size_t i;
        json_t *e;
        if (json_is_array(aud))
            json_array_foreach(aud, i, e) ok |=
                in_list(json_string_value(e), x->audiences, x->audience_count);
        if (!ok)
            return AL_JWT_AUDIENCE;
    }
    if (x->client_count) {
        /* client_id (RFC 9068) is the client; azp only stands in when it is absent */
        const char *client = cid ? json_string_value(cid) : json_string_value(azp);
        if (!in_list(client, x->clients, x->client_count))
            return AL_JWT_CLIENT;
    }
    return AL_JWT_OK;
}

int al_jwt_verify(const char *token, size_t len, const al_jwks *keys, const al_jwt_expect *x,
                  int64_t now, al_principal **out, enum al_jwt_check *why)
{
    enum al_jwt_check fail = AL_JWT_MALFORMED;
    json_t *hdr = NULL, *claims = NULL;
    unsigned char *sig = NULL;
    int rc = AL_ERR_PERM;
    parts pt;
    if (!token || len == 0) {
        fail = AL_JWT_MISSING;
        goto out;
    }
    if (split(token, len, &pt) || !(hdr = decode_json_part(pt.h, pt.hl)))
        goto out;
    json_t *algj = json_object_get(hdr, "alg");
    json_t *kidj = json_object_get(hdr, "kid");
    if (!json_is_string(algj) || (kidj && !json_is_string(kidj)) || json_object_get(hdr, "crit"))
        goto out; /* crit: extensions we do not understand must not be ignored */
    const char *algs = json_string_value(algj);
    enum alg a = alg_of(algs);
    if (a == ALG_NONE_OK) {
        fail = AL_JWT_ALG;
        goto out;
    }
    if (pt.sl == 0 || pt.sl > 2048 || !(sig = malloc(pt.sl)))
        goto out;
    long sl = al_base64url_decode(pt.s, pt.sl, sig, pt.sl);
    if (sl <= 0)
        goto out;
    const char *kid = json_string_value(kidj);
    const unsigned char *msg = (const unsigned char *)token;
    size_t ml = pt.hl + 1 + pt.pl;
    int candidates = 0, verified = 0, fitted = 0;
    for (size_t i = 0; keys && i < keys->count && !verified; i++) {
        const jwk *k = &keys->keys[i];
        if (kid && (!k->kid || strcmp(k->kid, kid) != 0))
            continue;
        candidates++;
        if (k->family != family_of(a) || (k->alg && strcmp(k->alg, algs) != 0))
            continue;
        fitted++;
        verified = sig_ok(k->pkey, a, msg, ml, sig, (size_t)sl);
    }
    if (!verified) {
        fail = !candidates || (!kid && !fitted) ? AL_JWT_UNKNOWN_KID
               : !fitted                        ? AL_JWT_ALG
                                                : AL_JWT_SIGNATURE;
        goto out;
    }
    /* the claims are parsed only once the signature says they are the issuer's */
    fail = AL_JWT_MALFORMED;
    if (!(claims = decode_json_part(pt.p, pt.pl)))
        goto out;
    fail = check_claims(claims, x, now);
    if (fail != AL_JWT_OK)
        goto out;
    json_t *cid = json_object_get(claims, "client_id");
    al_principal *p =
        al_principal_new(json_string_value(json_object_get(claims, "iss")),
                         json_string_value(json_object_get(claims, "sub")),
                         json_string_value(cid ? cid : json_object_get(claims, "azp")), claims);
    if (!p) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    numeric_date(claims, "exp", &p->exp);
    *out = p;
    rc = AL_OK;
out:
    if (rc == AL_ERR_PERM && why)
        *why = fail;
    free(sig);
    json_decref(hdr);
    json_decref(claims);
    return rc;
}

/* ---- the cache -------------------------------------------------------------------- */

#define PROBE 4 /* slots looked at per token: a small group, replaced by earliest expiry */

typedef struct cache_slot {
    unsigned char hash[SHA256_DIGEST_LENGTH];
    int64_t valid_until;
    al_principal *p; /* NULL = empty */
} cache_slot;

struct al_jwt_cache {
    pthread_mutex_t mu;
    size_t mask;
    cache_slot *slots;
};

al_jwt_cache *al_jwt_cache_new(size_t slots)
{
    size_t n = PROBE;
    while (n < slots && n < ((size_t)1 << 20))
        n <<= 1;
    al_jwt_cache *c = calloc(1, sizeof *c);
    if (!c || !(c->slots = calloc(n, sizeof *c->slots))) {
        free(c);
        return NULL;
    }
    c->mask = n - 1;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void al_jwt_cache_free(al_jwt_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        al_principal_unref(c->slots[i].p);
    pthread_mutex_destroy(&c->mu);
    free(c->slots);
    free(c);
}

static size_t slot_of(const al_jwt_cache *c, const unsigned char *h)
{
    size_t v;
    memcpy(&v, h, sizeof v);
    return v & c->mask;
}

al_principal *al_jwt_cache_get(al_jwt_cache *c, const char *token, size_t len, int64_t now)
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    al_principal *p = NULL;
    if (!c)
        return NULL;
    SHA256((const unsigned char *)token, len, h);
    pthread_mutex_lock(&c->mu);
    size_t base = slot_of(c, h);
    for (size_t i = 0; i < PROBE; i++) {
        cache_slot *s = &c->slots[(base + i) & c->mask];
        if (s->p && !memcmp(s->hash, h, sizeof h)) {
            if (now <= s->valid_until)
                p = al_principal_ref(s->p);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return p;
}

void al_jwt_cache_put(al_jwt_cache *c, const char *token, size_t len, al_principal *p,
                      int64_t valid_until)
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    if (!c || !p)
        return;
    SHA256((const unsigned char *)token, len, h);
    pthread_mutex_lock(&c->mu);
    size_t base = slot_of(c, h);
    cache_slot *victim = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        cache_slot *s = &c->slots[(base + i) & c->mask];
        if (!s->p || !memcmp(s->hash, h, sizeof h)) {
            victim = s;
            break;
        }
        if (!victim || s->valid_until < victim->valid_until)
            victim = s;
    }
    al_principal *old = victim->p;
    memcpy(victim->hash, h, sizeof h);
    victim->valid_until = valid_until;
    victim->p = al_principal_ref(p);
    pthread_mutex_unlock(&c->mu);
    al_principal_unref(old);
}
