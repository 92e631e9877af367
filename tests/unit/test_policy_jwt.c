/* JWT verification: keys made here with OpenSSL, tokens signed here (RS256, PS256,
 * ES256, EdDSA), and many ways a token can be wrong, each refused for its reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "policy/al_jwt.h"

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW    1900000000LL
#define ISSUER "https://idp.example.com"

static EVP_PKEY *rsa_key, *rsa_key2, *rsa_small, *ec_key, *ed_key;
static char *jwks_json; /* rsa (kid r1), ec (e1), ed (d1), rsa2 pinned to PS256 (p1), small */
static al_jwks *jwks;

/* ---- helpers ----------------------------------------------------------------------- */

static char *b64url(const unsigned char *in, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = malloc(n * 4 / 3 + 4), *p = o;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = a[v >> 18];
        *p++ = a[(v >> 12) & 63];
        *p++ = a[(v >> 6) & 63];
        *p++ = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *p++ = a[v >> 18];
        *p++ = a[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *p++ = a[v >> 18];
        *p++ = a[(v >> 12) & 63];
        *p++ = a[(v >> 6) & 63];
    }
    *p = 0;
    return o;
}

static char *b64s(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

static char *bn_param(EVP_PKEY *k, const char *name)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(k, name, &bn), 1);
    unsigned char buf[1024];
    int n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

static char *jwk_of(EVP_PKEY *k, const char *kid, const char *alg)
{
    char *out = malloc(4096);
    char extra[128] = "";
    if (alg)
        snprintf(extra, sizeof extra, ",\"alg\":\"%s\"", alg);
    if (EVP_PKEY_is_a(k, "RSA")) {
        char *n = bn_param(k, OSSL_PKEY_PARAM_RSA_N), *e = bn_param(k, OSSL_PKEY_PARAM_RSA_E);
        snprintf(out, 4096,
                 "{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"n\":\"%s\",\"e\":\"%s\"%s}",
                 kid, n, e, extra);
        free(n);
        free(e);
    } else if (EVP_PKEY_is_a(k, "EC")) {
        unsigned char pub[65];
        size_t pl = 0;
        assert_int_equal(
            EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub, &pl), 1);
        assert_int_equal(pl, 65);
        char *x = b64url(pub + 1, 32), *y = b64url(pub + 33, 32);
        snprintf(out, 4096,
                 "{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"%s}",
                 kid, x, y, extra);
        free(x);
        free(y);
    } else {
        unsigned char pub[32];
        size_t pl = sizeof pub;
        assert_int_equal(EVP_PKEY_get_raw_public_key(k, pub, &pl), 1);
        char *x = b64url(pub, pl);
        snprintf(out, 4096, "{\"kty\":\"OKP\",\"kid\":\"%s\",\"crv\":\"Ed25519\",\"x\":\"%s\"%s}",
                 kid, x, extra);
        free(x);
    }
    return out;
}

/* Signs "b64(header).b64(payload)" with alg; returns the token. */
static char *sign(const char *alg, EVP_PKEY *k, const char *header, const char *payload)
{
    char *h = b64s(header), *p = b64s(payload);
    size_t il = strlen(h) + 1 + strlen(p);
    char *input = malloc(il + 1);
    snprintf(input, il + 1, "%s.%s", h, p);
    unsigned char sig[1024];
    size_t sl = sizeof sig;
    if (!strcmp(alg, "none")) {
        sl = 0;
    } else {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pc = NULL;
        int ed = !strcmp(alg, "EdDSA");
        assert_int_equal(EVP_DigestSignInit(md, &pc, ed ? NULL : EVP_sha256(), NULL, k), 1);
        if (!strcmp(alg, "PS256")) {
            EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING);
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST);
        }
        assert_int_equal(EVP_DigestSign(md, sig, &sl, (unsigned char *)input, il), 1);
        EVP_MD_CTX_free(md);
        if (!strcmp(alg, "ES256")) {
            const unsigned char *q = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sl);
            assert_non_null(es);
            const BIGNUM *r, *s;
            ECDSA_SIG_get0(es, &r, &s);
            BN_bn2binpad(r, sig, 32);
            BN_bn2binpad(s, sig + 32, 32);
            sl = 64;
            ECDSA_SIG_free(es);
        }
    }
    char *sg = b64url(sig, sl);
    char *tok = malloc(il + strlen(sg) + 2);
    sprintf(tok, "%s.%s", input, sg);
    free(h);
    free(p);
    free(input);
    free(sg);
    return tok;
}

static const char *const auds[] = {"airlock", "other-aud"};
static const char *const clients[] = {"agent-a", "agent-b"};
static const al_jwt_expect expect = {ISSUER, auds, 2, clients, 2, AL_JWT_SKEW_S};

/* Verifies tok; returns the check (AL_JWT_OK on success). */
static enum al_jwt_check verify_x(const char *tok, const al_jwt_expect *x, al_principal **pp)
{
    al_principal *p = NULL;
    enum al_jwt_check why = AL_JWT_OK;
    int rc = al_jwt_verify(tok, strlen(tok), jwks, x, NOW, &p, &why);
    if (rc == AL_OK) {
        assert_non_null(p);
        if (pp)
            *pp = p;
        else
            al_principal_unref(p);
        return AL_JWT_OK;
    }
    assert_int_equal(rc, AL_ERR_PERM);
    assert_null(p);
    assert_int_not_equal(why, AL_JWT_OK);
    return why;
}

static enum al_jwt_check verify(const char *tok)
{
    return verify_x(tok, &expect, NULL);
}

static char *claims(const char *extra)
{
    char *c = malloc(1024);
    snprintf(c, 1024,
             "{\"iss\":\"" ISSUER "\",\"sub\":\"agent-a\",\"client_id\":\"agent-a\","
             "\"aud\":\"airlock\",\"exp\":%lld,\"iat\":%lld%s%s}",
             NOW + 300, NOW - 10, extra && *extra ? "," : "", extra ? extra : "");
    return c;
}

/* Signs claims with the RSA key r1 unless told otherwise. */
static char *tok_rs(const char *payload)
{
    return sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"r1\",\"typ\":\"at+jwt\"}", payload);
}

#define CHECK(tok, want)                                                                           \
    do {                                                                                           \
        char *t_ = (tok);                                                                          \
        enum al_jwt_check got_ = verify(t_);                                                       \
        if (got_ != (want))                                                                        \
            fail_msg("line %d: got %s, want %s", __LINE__, al_jwt_check_name(got_),                \
                     al_jwt_check_name(want));                                                     \
        free(t_);                                                                                  \
    } while (0)

static char *with_payload(const char *extra_json_fields)
{
    char *c = claims(extra_json_fields);
    char *t = tok_rs(c);
    free(c);
    return t;
}

static char *raw_claims(const char *json)
{
    return tok_rs(json);
}

/* ---- setup ----------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    rsa_key = EVP_RSA_gen(2048);
    rsa_key2 = EVP_RSA_gen(2048);
    rsa_small = EVP_RSA_gen(1024);
    ec_key = EVP_EC_gen("P-256");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_true(rsa_key && rsa_key2 && rsa_small && ec_key && ed_key);
    char *a = jwk_of(rsa_key, "r1", NULL), *b = jwk_of(ec_key, "e1", "ES256"),
         *c = jwk_of(ed_key, "d1", NULL), *d = jwk_of(rsa_key2, "p1", "PS256"),
         *e = jwk_of(rsa_small, "small", NULL);
    jwks_json = malloc(32768);
    snprintf(jwks_json, 32768,
             "{\"keys\":[%s,%s,%s,%s,%s,{\"kty\":\"oct\",\"kid\":\"h1\",\"k\":\"c2VjcmV0\"},"
             "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
             a, b, c, d, e);
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    assert_int_equal(al_jwks_parse(jwks_json, strlen(jwks_json), &jwks), AL_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    al_jwks_free(jwks);
    free(jwks_json);
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(rsa_key2);
    EVP_PKEY_free(rsa_small);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ed_key);
    return 0;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_jwks(void **state)
{
    (void)state;
    /* the oct key, the enc key and the 1024-bit RSA key are skipped */
    assert_int_equal(al_jwks_count(jwks), 4);
    assert_true(al_jwks_has_kid(jwks, "r1"));
    assert_false(al_jwks_has_kid(jwks, "small"));
    assert_false(al_jwks_has_kid(jwks, "h1"));
    al_jwks *k = NULL;
    assert_int_equal(al_jwks_parse("[]", 2, &k), AL_ERR_INVAL);
    assert_int_equal(al_jwks_parse("{\"keys\":{}}", 11, &k), AL_ERR_INVAL);
    assert_int_equal(al_jwks_parse("not json", 8, &k), AL_ERR_INVAL);
    const char *dup = "{\"keys\":[],\"keys\":[]}";
    assert_int_equal(al_jwks_parse(dup, strlen(dup), &k), AL_ERR_INVAL);
    /* an EC point off the curve is not a key */
    const char *off = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
                      "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\",\"y\":"
                      "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\"}]}";
    assert_int_equal(al_jwks_parse(off, strlen(off), &k), AL_OK);
    assert_int_equal(al_jwks_count(k), 0);
    al_jwks_free(k);
}

static void test_valid_each_alg(void **state)
{
    (void)state;
    char *c = claims("\"groups\":[\"eng\",\"ops\"],\"scope\":\"read write\"");
    struct {
        const char *alg, *hdr;
        EVP_PKEY *k;
    } cases[] = {
        {"RS256", "{\"alg\":\"RS256\",\"kid\":\"r1\"}", rsa_key},
        {"PS256", "{\"alg\":\"PS256\",\"kid\":\"r1\"}", rsa_key},
        {"PS256", "{\"alg\":\"PS256\",\"kid\":\"p1\"}", rsa_key2},
        {"ES256", "{\"alg\":\"ES256\",\"kid\":\"e1\"}", ec_key},
        {"EdDSA", "{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", ed_key},
        /* no kid: every key that fits the alg is tried */
        {"ES256", "{\"alg\":\"ES256\"}", ec_key},
        {"RS256", "{\"alg\":\"RS256\"}", rsa_key},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *t = sign(cases[i].alg, cases[i].k, cases[i].hdr, c);
        al_principal *p = NULL;
        enum al_jwt_check why = verify_x(t, &expect, &p);
        if (why != AL_JWT_OK)
            fail_msg("case %zu (%s): %s", i, cases[i].hdr, al_jwt_check_name(why));
        assert_string_equal(p->iss, ISSUER);
        assert_string_equal(p->sub, "agent-a");
        assert_string_equal(p->client_id, "agent-a");
        assert_int_equal(p->exp, NOW + 300);
        assert_true(al_principal_claim_has(p, "groups", "ops"));
        assert_false(al_principal_claim_has(p, "groups", "op"));
        assert_true(al_principal_claim_has(p, "scope", "write"));
        assert_false(al_principal_claim_has(p, "scope", "rea"));
        assert_true(al_principal_claim_has(p, "aud", "airlock"));
        assert_false(al_principal_claim_has(p, "nope", "x"));
        al_principal_unref(p);
        free(t);
    }
    free(c);
}

static void test_time(void **state)
{
    (void)state;
    char buf[256];
    /* exp within the skew still passes; past it, expired */
    snprintf(buf, sizeof buf,
             "{\"iss\":\"" ISSUER "\",\"sub\":\"s\",\"client_id\":\"agent-a\",\"aud\":\"airlock\","
             "\"exp\":%lld}",
             NOW - 30);
    CHECK(raw_claims(buf), AL_JWT_OK);
    snprintf(buf, sizeof buf,
             "{\"iss\":\"" ISSUER "\",\"sub\":\"s\",\"client_id\":\"agent-a\",\"aud\":\"airlock\","
             "\"exp\":%lld}",
             NOW - 61);
    CHECK(raw_claims(buf), AL_JWT_EXPIRED);
    snprintf(buf, sizeof buf, "\"nbf\":%lld", NOW + 61);
    CHECK(with_payload(buf), AL_JWT_NOT_YET_VALID);
    snprintf(buf, sizeof buf, "\"nbf\":%lld", NOW + 30);
    CHECK(with_payload(buf), AL_JWT_OK);
    snprintf(buf, sizeof buf, "\"nbf\":%lld.5", NOW - 30);
    CHECK(with_payload(buf), AL_JWT_OK);
    CHECK(with_payload("\"nbf\":\"soon\""), AL_JWT_MALFORMED);
    /* no exp, exp not a number, exp absurd */
    CHECK(raw_claims("{\"iss\":\"" ISSUER
                     "\",\"sub\":\"s\",\"client_id\":\"agent-a\",\"aud\":\"airlock\"}"),
          AL_JWT_MALFORMED);
    CHECK(raw_claims(
              "{\"iss\":\"" ISSUER
              "\",\"sub\":\"s\",\"client_id\":\"agent-a\",\"aud\":\"airlock\",\"exp\":\"2100\"}"),
          AL_JWT_MALFORMED);
    CHECK(
        raw_claims("{\"iss\":\"" ISSUER
                   "\",\"sub\":\"s\",\"client_id\":\"agent-a\",\"aud\":\"airlock\",\"exp\":1e300}"),
        AL_JWT_MALFORMED);
}

static void test_claims(void **state)
{
    (void)state;
    char buf[512];
    const char *fmt = "{\"iss\":%s,\"sub\":\"s\",%s\"exp\":%lld%s}";
    /* issuer */
    snprintf(buf, sizeof buf, fmt, "\"https://evil.example.com\"",
             "\"client_id\":\"agent-a\",\"aud\":\"airlock\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_ISSUER);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "/\"",
             "\"client_id\":\"agent-a\",\"aud\":\"airlock\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_ISSUER);
    snprintf(buf, sizeof buf, fmt, "[\"" ISSUER "\"]",
             "\"client_id\":\"agent-a\",\"aud\":\"airlock\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_MALFORMED);
    /* audience: string, array, missing, near miss */
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"",
             "\"client_id\":\"agent-a\",\"aud\":\"airlock2\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_AUDIENCE);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"",
             "\"client_id\":\"agent-a\",\"aud\":[\"x\",\"other-aud\"],", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_OK);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"client_id\":\"agent-a\",\"aud\":[],",
             NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_AUDIENCE);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"client_id\":\"agent-a\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_AUDIENCE);
    /* clients: client_id wins over azp; azp stands in when alone */
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"",
             "\"client_id\":\"agent-c\",\"aud\":\"airlock\",", NOW + 100, ",\"azp\":\"agent-a\"");
    CHECK(raw_claims(buf), AL_JWT_CLIENT);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"azp\":\"agent-b\",\"aud\":\"airlock\",",
             NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_OK);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"aud\":\"airlock\",", NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_CLIENT);
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"client_id\":7,\"aud\":\"airlock\",",
             NOW + 100, "");
    CHECK(raw_claims(buf), AL_JWT_MALFORMED);
    /* with no lists configured, aud and client are not checked */
    al_jwt_expect loose = {ISSUER, NULL, 0, NULL, 0, 60};
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"", "\"client_id\":\"zzz\",", NOW + 100, "");
    char *t = raw_claims(buf);
    assert_int_equal(verify_x(t, &loose, NULL), AL_JWT_OK);
    free(t);
    /* duplicate claims are refused (two exps must not mean two things) */
    snprintf(buf, sizeof buf, fmt, "\"" ISSUER "\"",
             "\"client_id\":\"agent-a\",\"aud\":\"airlock\",", NOW + 100, ",\"exp\":1");
    CHECK(raw_claims(buf), AL_JWT_MALFORMED);
    /* claims not an object */
    CHECK(raw_claims("[1,2]"), AL_JWT_MALFORMED);
    CHECK(raw_claims("\"x\""), AL_JWT_MALFORMED);
}

static void test_algorithms(void **state)
{
    (void)state;
    char *c = claims(NULL);
    /* alg none: unsigned, and "signed" */
    CHECK(sign("none", NULL, "{\"alg\":\"none\"}", c), AL_JWT_ALG);
    CHECK(sign("none", NULL, "{\"alg\":\"none\",\"kid\":\"r1\"}", c), AL_JWT_ALG);
    CHECK(sign("none", NULL, "{\"alg\":\"NONE\"}", c), AL_JWT_ALG);
    CHECK(sign("none", NULL, "{}", c), AL_JWT_MALFORMED);
    CHECK(sign("none", NULL, "{\"alg\":null}", c), AL_JWT_MALFORMED);
    /* HS256 with the RSA public key (n) as the HMAC secret: the classic confusion */
    {
        char *h = b64s("{\"alg\":\"HS256\",\"kid\":\"r1\"}"), *p = b64s(c);
        char input[4096];
        snprintf(input, sizeof input, "%s.%s", h, p);
        BIGNUM *n = NULL;
        EVP_PKEY_get_bn_param(rsa_key, OSSL_PKEY_PARAM_RSA_N, &n);
        unsigned char kb[512], mac[32];
        int kl = BN_bn2bin(n, kb);
        unsigned ml = 0;
        HMAC(EVP_sha256(), kb, kl, (unsigned char *)input, strlen(input), mac, &ml);
        char *s = b64url(mac, ml);
        char *t = malloc(strlen(input) + strlen(s) + 2);
        sprintf(t, "%s.%s", input, s);
        CHECK(t, AL_JWT_ALG);
        BN_free(n);
        free(h);
        free(p);
        free(s);
    }
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"HS256\",\"kid\":\"r1\"}", c), AL_JWT_ALG);
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS512\",\"kid\":\"r1\"}", c), AL_JWT_ALG);
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"rs256\",\"kid\":\"r1\"}", c), AL_JWT_ALG);
    CHECK(sign("ES256", ec_key, "{\"alg\":\"ES384\",\"kid\":\"e1\"}", c), AL_JWT_ALG);
    /* an alg that does not fit the key named by kid */
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"e1\"}", c), AL_JWT_ALG);
    CHECK(sign("ES256", ec_key, "{\"alg\":\"ES256\",\"kid\":\"r1\"}", c), AL_JWT_ALG);
    CHECK(sign("EdDSA", ed_key, "{\"alg\":\"EdDSA\",\"kid\":\"e1\"}", c), AL_JWT_ALG);
    /* key p1 is pinned to PS256: RS256 with it is refused even with the right key */
    CHECK(sign("RS256", rsa_key2, "{\"alg\":\"RS256\",\"kid\":\"p1\"}", c), AL_JWT_ALG);
    /* crit extensions we do not know */
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"r1\",\"crit\":[\"exp\"]}", c),
          AL_JWT_MALFORMED);
    /* kid not a string */
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":1}", c), AL_JWT_MALFORMED);
    free(c);
}

static void test_keys_and_signatures(void **state)
{
    (void)state;
    char *c = claims(NULL);
    /* unknown kid; a kid of a skipped key; no fitting key without kid */
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"r9\"}", c), AL_JWT_UNKNOWN_KID);
    CHECK(sign("RS256", rsa_small, "{\"alg\":\"RS256\",\"kid\":\"small\"}", c), AL_JWT_UNKNOWN_KID);
    CHECK(sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"h1\"}", c), AL_JWT_UNKNOWN_KID);
    /* signed by another key than the one named */
    CHECK(sign("RS256", rsa_key2, "{\"alg\":\"RS256\",\"kid\":\"r1\"}", c), AL_JWT_SIGNATURE);
    EVP_PKEY *ec2 = EVP_EC_gen("P-256");
    CHECK(sign("ES256", ec2, "{\"alg\":\"ES256\",\"kid\":\"e1\"}", c), AL_JWT_SIGNATURE);
    EVP_PKEY_free(ec2);
    /* PS256 signature presented as RS256 and back */
    {
        char *t = sign("PS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"r1\"}", c);
        CHECK(t, AL_JWT_SIGNATURE);
    }
    /* tampering: a payload byte, the signature, the header */
    char *good = tok_rs(c);
    assert_int_equal(verify(good), AL_JWT_OK);
    char *dot1 = strchr(good, '.'), *dot2 = strchr(dot1 + 1, '.');
    char *t = strdup(good);
    t[dot1 - good + 5] = t[dot1 - good + 5] == 'A' ? 'B' : 'A';
    CHECK(t, AL_JWT_SIGNATURE);
    t = strdup(good);
    t[dot2 - good + 10] = t[dot2 - good + 10] == 'A' ? 'B' : 'A';
    CHECK(t, AL_JWT_SIGNATURE);
    /* a payload swapped for another token's (another sub) */
    char *other = claims("\"x\":1");
    char *t2 = tok_rs(other);
    char *d2 = strchr(t2, '.');
    char *mix = malloc(strlen(good) + strlen(t2) + 1);
    size_t hl = (size_t)(dot1 - good);
    size_t pl = (size_t)(strchr(d2 + 1, '.') - d2);
    memcpy(mix, good, hl);
    memcpy(mix + hl, d2, pl);
    strcpy(mix + hl + pl, dot2);
    CHECK(mix, AL_JWT_SIGNATURE);
    free(t2);
    free(other);
    /* truncated signature, empty signature, ES256 of the wrong length */
    t = strdup(good);
    t[strlen(t) - 6] = 0; /* 336 chars: valid base64url, 252 bytes: too short for RSA */
    CHECK(t, AL_JWT_SIGNATURE);
    t = strdup(good);
    dot2 = strrchr(t, '.');
    dot2[1] = 0;
    CHECK(t, AL_JWT_MALFORMED);
    char *es = sign("ES256", ec_key, "{\"alg\":\"ES256\",\"kid\":\"e1\"}", c);
    es[strlen(es) - 2] = 0;
    CHECK(es, AL_JWT_SIGNATURE); /* 84 chars = 63 bytes: not an r||s pair */
    free(good);
    free(c);
}

static void test_garbage(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "abc",
        "a.b",
        "a..c",
        ".b.c",
        "a.b.c.d",
        "a.b.c.d.e",
        "....",
        "é.é.é",
        "bm90IGpzb24.eyJ4IjoxfQ.AAAA",           /* header not JSON */
        "WzFd.eyJ4IjoxfQ.AAAA",                  /* header an array */
        "eyJhbGciOiJSUzI1NiJ9=.eyJ4IjoxfQ.AAAA", /* padding */
        "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.AAAA=", /* padding */
        "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.AA AA",
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.AAAA",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        enum al_jwt_check got = verify(bad[i]);
        if (got != AL_JWT_MALFORMED && !(i == 0 && got == AL_JWT_MISSING))
            fail_msg("'%s': got %s", bad[i], al_jwt_check_name(got));
    }
    /* a bad payload is not even parsed when the signature does not verify */
    const char *unsigned_junk[] = {
        "eyJhbGciOiJSUzI1NiJ9.e.AAAA",
        "eyJhbGciOiJSUzI1NiJ9.eyJ4Ijox+Q.AAAA",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.AAAA",
    };
    for (size_t i = 0; i < sizeof unsigned_junk / sizeof *unsigned_junk; i++)
        assert_int_equal(verify(unsigned_junk[i]), AL_JWT_SIGNATURE);
    /* non-canonical base64url (non-zero trailing bits) of the header */
    char *c = claims(NULL);
    char *t = tok_rs(c);
    char *d = strchr(t, '.');
    /* {"alg":"RS256","kid":"r1","typ":"at+jwt"} = 42 bytes -> 56 chars, no spare bits;
     * use a header with spare bits instead */
    free(t);
    t = sign("RS256", rsa_key, "{\"alg\":\"RS256\",\"kid\":\"r1\"}", c);
    d = strchr(t, '.');
    char last = d[-1];
    assert_int_equal(verify(t), AL_JWT_OK);
    d[-1] = (char)(last + 1); /* same decoded bytes, different spelling */
    CHECK(t, AL_JWT_MALFORMED);
    /* a NUL inside, and a token over the limit */
    t = tok_rs(c);
    al_principal *p = NULL;
    enum al_jwt_check why;
    char *withnul = malloc(strlen(t) + 2);
    memcpy(withnul, t, strlen(t) + 1);
    withnul[3] = 0;
    assert_int_equal(al_jwt_verify(withnul, strlen(t), jwks, &expect, NOW, &p, &why), AL_ERR_PERM);
    assert_int_equal(why, AL_JWT_MALFORMED);
    free(withnul);
    char *big = malloc(AL_JWT_MAX_BYTES + 100);
    memset(big, 'A', AL_JWT_MAX_BYTES + 99);
    big[10] = '.';
    big[20] = '.';
    assert_int_equal(al_jwt_verify(big, AL_JWT_MAX_BYTES + 99, jwks, &expect, NOW, &p, &why),
                     AL_ERR_PERM);
    assert_int_equal(why, AL_JWT_MALFORMED);
    free(big);
    /* no key set at all: unknown key, not a crash */
    assert_int_equal(al_jwt_verify(t, strlen(t), NULL, &expect, NOW, &p, &why), AL_ERR_PERM);
    assert_int_equal(why, AL_JWT_UNKNOWN_KID);
    /* peek kid */
    char kid[16];
    assert_int_equal(al_jwt_peek_kid(t, strlen(t), kid, sizeof kid), AL_OK);
    assert_string_equal(kid, "r1");
    assert_int_equal(al_jwt_peek_kid("x.y.z", 5, kid, sizeof kid), AL_ERR_INVAL);
    free(t);
    free(c);
    /* names and texts exist for every check and never mention a token */
    for (int i = 0; i < AL_JWT_CHECK_COUNT; i++) {
        assert_non_null(al_jwt_check_name((enum al_jwt_check)i));
        assert_null(strstr(al_jwt_check_text((enum al_jwt_check)i), "eyJ"));
    }
    assert_string_equal(al_jwt_check_name(AL_JWT_EXPIRED), "expired");
    assert_string_equal(al_jwt_check_name(AL_JWT_AUDIENCE), "wrong_audience");
}

static void test_base64url(void **state)
{
    (void)state;
    unsigned char out[16];
    assert_int_equal(al_base64url_decode("", 0, out, sizeof out), 0);
    assert_int_equal(al_base64url_decode("YQ", 2, out, sizeof out), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(al_base64url_decode("YR", 2, out, sizeof out), AL_ERR_INVAL);
    assert_int_equal(al_base64url_decode("YQ==", 4, out, sizeof out), AL_ERR_INVAL);
    assert_int_equal(al_base64url_decode("Y", 1, out, sizeof out), AL_ERR_INVAL);
    assert_int_equal(al_base64url_decode("-_-_", 4, out, sizeof out), 3);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(al_base64url_decode("AAAAAAAA", 8, out, 5), AL_ERR_INVAL);
}

static void test_cache(void **state)
{
    (void)state;
    al_jwt_cache *c = al_jwt_cache_new(8);
    assert_non_null(c);
    al_principal *p = al_principal_new(ISSUER, "s", "agent-a", NULL);
    al_jwt_cache_put(c, "tok1", 4, p, NOW + 10);
    al_principal *g = al_jwt_cache_get(c, "tok1", 4, NOW);
    assert_ptr_equal(g, p);
    al_principal_unref(g);
    assert_null(al_jwt_cache_get(c, "tok2", 4, NOW));
    assert_null(al_jwt_cache_get(c, "tok1", 3, NOW));
    assert_null(al_jwt_cache_get(c, "tok1", 4, NOW + 11)); /* past valid_until */
    /* many tokens: the table stays bounded, old entries get replaced, no leak */
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "t%d", i);
        al_jwt_cache_put(c, name, strlen(name), p, NOW + i);
    }
    snprintf(name, sizeof name, "t%d", 999);
    g = al_jwt_cache_get(c, name, strlen(name), NOW);
    assert_ptr_equal(g, p);
    al_principal_unref(g);
    /* same token again replaces its own entry */
    al_jwt_cache_put(c, name, strlen(name), p, NOW + 5000);
    al_principal_unref(p);
    al_jwt_cache_free(c);
    assert_null(al_jwt_cache_get(NULL, "x", 1, NOW));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64url),
        cmocka_unit_test(test_jwks),
        cmocka_unit_test(test_valid_each_alg),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_algorithms),
        cmocka_unit_test(test_keys_and_signatures),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
