/* Unit tests of the provider endpoints besides token: pushed authorization requests
 * (identity/al_par, RFC 9126) — when PAR is used, the answer's request_uri and
 * expires_in, the provider's error and error_description shown with the client secret
 * cut out, the short authorization URL — token revocation (identity/al_revoke, RFC 7009)
 * forms and answers, and the client-authenticated POST both use (al_token_post). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_par.h"
#include "identity/al_revoke.h"
#include "identity/al_token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char secret[] = "s3cr3t-CLIENT";
#define SECRET_LEN (sizeof secret - 1)

static int par(long status, const char *body, char **uri, int64_t *exp, char *msg, size_t n)
{
    return al_par_parse(status, body, strlen(body), "idp.example", secret, SECRET_LEN, uri, exp,
                        msg, n);
}

static void test_par_answer(void **st)
{
    (void)st;
    char *uri = NULL, msg[512];
    int64_t exp = 0;
    assert_int_equal(
        par(201,
            "{\"request_uri\":\"urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c\","
            "\"expires_in\":60}",
            &uri, &exp, msg, sizeof msg),
        AL_OK);
    assert_string_equal(uri, "urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c");
    assert_int_equal(exp, 60);
    free(uri);
    /* 200 is accepted as well */
    assert_int_equal(
        par(200, "{\"request_uri\":\"urn:x\",\"expires_in\":5}", &uri, &exp, msg, sizeof msg),
        AL_OK);
    free(uri);

    /* the provider's error, shown; the secret cut out when echoed */
    msg[0] = 0;
    assert_int_equal(par(400,
                         "{\"error\":\"invalid_request\",\"error_description\":\"pkce required; "
                         "client s3cr3t-CLIENT\"}",
                         &uri, &exp, msg, sizeof msg),
                     AL_ERR_PROTO);
    assert_null(uri);
    assert_non_null(strstr(msg, "pushed authorization request endpoint idp.example answered 400"));
    assert_non_null(strstr(msg, "invalid_request (pkce required;"));
    assert_null(strstr(msg, "s3cr3t"));
    assert_int_equal(par(401, "{\"error\":\"invalid_client\"}", &uri, &exp, msg, sizeof msg),
                     AL_ERR_PROTO);
    assert_non_null(strstr(msg, "answered 401: invalid_client"));
    assert_int_equal(par(500, "<html>oops</html>", &uri, &exp, msg, sizeof msg), AL_ERR_PROTO);
    assert_non_null(strstr(msg, "answered 500 without an OAuth error"));

    /* unusable answers */
    const char *bad[] = {
        "",
        "not json",
        "[]",
        "{\"expires_in\":60}",
        "{\"request_uri\":\"\",\"expires_in\":60}",
        "{\"request_uri\":42,\"expires_in\":60}",
        "{\"request_uri\":\"urn:x y\",\"expires_in\":60}",
        "{\"request_uri\":\"urn:x\\r\\nSet-Cookie: a\",\"expires_in\":60}",
        "{\"request_uri\":\"urn:x\"}",
        "{\"request_uri\":\"urn:x\",\"expires_in\":0}",
        "{\"request_uri\":\"urn:x\",\"expires_in\":-5}",
        "{\"request_uri\":\"urn:x\",\"expires_in\":\"60\"}",
        "{\"request_uri\":\"urn:x\",\"expires_in\":6.5}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uri = NULL;
        if (par(201, bad[i], &uri, &exp, msg, sizeof msg) != AL_ERR_PROTO)
            fail_msg("accepted: %s", bad[i]);
        assert_null(uri);
        assert_non_null(strstr(msg, "idp.example"));
    }
    /* too long a request_uri */
    char big[AL_PAR_REQUEST_URI_MAX + 100];
    int n = snprintf(big, sizeof big, "{\"request_uri\":\"urn:");
    memset(big + n, 'a', AL_PAR_REQUEST_URI_MAX);
    snprintf(big + n + AL_PAR_REQUEST_URI_MAX, sizeof big - (size_t)n - AL_PAR_REQUEST_URI_MAX,
             "\",\"expires_in\":60}");
    assert_int_equal(par(201, big, &uri, &exp, msg, sizeof msg), AL_ERR_PROTO);
}

static void test_par_wanted_and_url(void **st)
{
    (void)st;
    json_t *meta = json_pack("{s:s, s:b}", "pushed_authorization_request_endpoint",
                             "https://idp.example/par", "require_pushed_authorization_requests", 1);
    json_t *meta_opt =
        json_pack("{s:s}", "pushed_authorization_request_endpoint", "https://idp.example/par");
    json_t *cfg = json_pack("{s:s}", "clientId", "c");
    json_t *cfg_par = json_pack("{s:b, s:s}", "usePar", 1, "parEndpoint", "https://idp.example/p2");
    assert_true(al_par_wanted(meta, cfg));
    assert_false(al_par_wanted(meta_opt, cfg));
    assert_true(al_par_wanted(meta_opt, cfg_par));
    assert_true(al_par_wanted(NULL, cfg_par));
    assert_false(al_par_wanted(NULL, NULL));
    assert_string_equal(al_par_endpoint(meta, cfg), "https://idp.example/par");
    assert_string_equal(al_par_endpoint(meta, cfg_par), "https://idp.example/p2");
    assert_null(al_par_endpoint(NULL, cfg));
    json_decref(meta);
    json_decref(meta_opt);
    json_decref(cfg);
    json_decref(cfg_par);

    char *u =
        al_par_url("https://idp.example/auth", "client 1", "urn:ietf:params:oauth:request_uri:abc");
    assert_string_equal(u, "https://idp.example/auth?client_id=client%201&request_uri=urn%3Aietf%"
                           "3Aparams%3Aoauth%3Arequest_uri%3Aabc");
    free(u);
    u = al_par_url("https://idp.example/auth?tenant=t", "c", "urn:x");
    assert_string_equal(u, "https://idp.example/auth?tenant=t&client_id=c&request_uri=urn%3Ax");
    free(u);
}

static void test_client_authenticated_post(void **st)
{
    (void)st;
    al_token_post p;
    const char *params = "response_type=code&client_id=cid&scope=openid";
    /* client_secret_basic (default): the body is the parameters alone */
    assert_int_equal(al_token_post_init(&p, "{\"clientId\":\"cid\",\"allowPrivateNetwork\":true}",
                                        secret, SECRET_LEN, "https://idp.example/par", params),
                     AL_OK);
    assert_string_equal(p.rq.form, params);
    assert_int_equal(p.rq.form_len, strlen(params));
    assert_string_equal(p.rq.basic_auth, "cid:s3cr3t-CLIENT");
    assert_string_equal(p.rq.url, "https://idp.example/par");
    assert_true(p.fo.allow_private_network);
    assert_false(p.fo.allow_insecure);
    al_token_post_clear(&p);
    assert_null(p.form);
    /* client_secret_post: the secret in the body; client_id not twice */
    const char *cfg = "{\"clientId\":\"c&d\",\"tokenEndpointAuthMethod\":\"client_secret_post\","
                      "\"caFile\":\"/tmp/ca.pem\"}";
    assert_int_equal(
        al_token_post_init(&p, cfg, secret, SECRET_LEN, "https://idp.example/p", "token=abc"),
        AL_OK);
    assert_string_equal(p.rq.form, "token=abc&client_id=c%26d&client_secret=s3cr3t-CLIENT");
    assert_null(p.rq.basic_auth);
    assert_string_equal(p.fo.ca_file, "/tmp/ca.pem");
    al_token_post_clear(&p);
    assert_int_equal(al_token_post_init(&p, cfg, secret, SECRET_LEN, "https://idp.example/p",
                                        "response_type=code&client_id=c%26d"),
                     AL_OK);
    assert_string_equal(p.rq.form,
                        "response_type=code&client_id=c%26d&client_secret=s3cr3t-CLIENT");
    al_token_post_clear(&p);
    /* basic: id and secret form-encoded before joining (RFC 6749 2.3.1) */
    assert_int_equal(al_token_post_init(&p, "{\"clientId\":\"a:b\"}", (const unsigned char *)"x:y",
                                        3, "https://idp.example/p", "a=b"),
                     AL_OK);
    assert_string_equal(p.rq.basic_auth, "a%3Ab:x%3Ay");
    al_token_post_clear(&p);
    /* no client id */
    assert_int_equal(al_token_post_init(&p, "{}", secret, SECRET_LEN, "https://x/", "a=b"),
                     AL_ERR_CONFIG);
    assert_int_equal(al_token_post_init(&p, NULL, secret, SECRET_LEN, "https://x/", "a=b"),
                     AL_ERR_CONFIG);
    assert_int_equal(
        al_token_post_init(&p, "{\"clientId\":\"\"}", secret, SECRET_LEN, "https://x/", "a=b"),
        AL_ERR_CONFIG);
}

static void test_revocation(void **st)
{
    (void)st;
    char *f = al_revoke_form("rt+/=&x", "refresh_token");
    assert_string_equal(f, "token=rt%2B%2F%3D%26x&token_type_hint=refresh_token");
    free(f);
    f = al_revoke_form("at", NULL);
    assert_string_equal(f, "token=at");
    free(f);
    assert_null(al_revoke_form("", NULL));
    assert_null(al_revoke_form(NULL, NULL));

    char msg[512] = "";
    assert_int_equal(
        al_revoke_check(200, "", 0, "idp.example", secret, SECRET_LEN, msg, sizeof msg), AL_OK);
    const char *b =
        "{\"error\":\"unsupported_token_type\",\"error_description\":\"no s3cr3t-CLIENT\"}";
    assert_int_equal(
        al_revoke_check(400, b, strlen(b), "idp.example", secret, SECRET_LEN, msg, sizeof msg),
        AL_ERR_PROTO);
    assert_non_null(strstr(msg, "revocation endpoint idp.example answered 400: "
                                "unsupported_token_type (no "));
    assert_null(strstr(msg, "s3cr3t"));
    assert_int_equal(
        al_revoke_check(503, "busy", 4, "idp.example", secret, SECRET_LEN, msg, sizeof msg),
        AL_ERR_PROTO);
    assert_non_null(strstr(msg, "answered 503 without an OAuth error"));
    assert_int_equal(
        al_revoke_check(204, "", 0, "idp.example", secret, SECRET_LEN, msg, sizeof msg),
        AL_ERR_PROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_par_answer),
        cmocka_unit_test(test_par_wanted_and_url),
        cmocka_unit_test(test_client_authenticated_post),
        cmocka_unit_test(test_revocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
