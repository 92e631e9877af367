/* Unit tests of identity/al_token's pure parts: the token endpoint's answers (good,
 * OAuth errors with hostile descriptions, not JSON, wrong token types, tokens that
 * would break a header, missing/odd expires_in, long-lived), the sanitizer that keeps
 * secrets and control bytes out of messages, the cache key (secret-free, scope order
 * insensitive, version sensitive), and the spec a target yields (mcp_server resource
 * defaults to the URL). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char SECRET[] = "s3cr3t-client-secret";

static al_token_spec spec(void)
{
    static char *scopes[] = {"write", "read"};
    al_token_spec s = {.provider = "idp",
                       .version = 3,
                       .secret = SECRET,
                       .secret_len = sizeof SECRET - 1,
                       .scopes = scopes,
                       .scope_count = 2,
                       .audience = "api://x",
                       .resource = "https://mcp.example/mcp"};
    return s;
}

static int parse(long status, const char *body, al_token **t, char *msg)
{
    al_token_spec s = spec();
    return al_token_parse_response(status, body, strlen(body), "idp.example", &s, 1000, t, msg,
                                   512);
}

static void test_good_answers(void **state)
{
    (void)state;
    al_token *t;
    char msg[512];
    assert_int_equal(parse(200, "{\"access_token\":\"eyJ.abc.def\",\"token_type\":\"Bearer\","
                                "\"expires_in\":300,\"scope\":\"read\"}",
                           &t, msg),
                     AL_OK);
    assert_string_equal(t->access_token, "eyJ.abc.def");
    assert_int_equal(t->lifetime_s, 300);
    assert_true(t->has_expiry);
    assert_false(t->long_lived);
    assert_string_equal(t->scope, "read");
    assert_int_equal(t->version, 3);
    assert_int_equal(strncmp(t->fingerprint, "sha256:", 7), 0);
    assert_null(strstr(t->fingerprint, "abc"));
    al_token_release(t);
    /* lower-case bearer, expires_in as a string, no scope: the requested one */
    assert_int_equal(
        parse(200, "{\"access_token\":\"x\",\"token_type\":\"bearer\",\"expires_in\":\"60\"}", &t,
              msg),
        AL_OK);
    assert_int_equal(t->lifetime_s, 60);
    assert_string_equal(t->scope, "write read");
    al_token_release(t);
    /* no expires_in: default lifetime, flagged long-lived (it may never expire) */
    assert_int_equal(parse(200, "{\"access_token\":\"x\",\"token_type\":\"Bearer\"}", &t, msg),
                     AL_OK);
    assert_int_equal(t->lifetime_s, 3600);
    assert_false(t->has_expiry);
    assert_true(t->long_lived);
    al_token_release(t);
    /* a year: over the 30-day default maximum */
    assert_int_equal(parse(200, "{\"access_token\":\"x\",\"token_type\":\"Bearer\",\"expires_in\":"
                                "31536000}",
                           &t, msg),
                     AL_OK);
    assert_true(t->long_lived);
    al_token_release(t);
    /* negative or zero expires_in: the default */
    assert_int_equal(
        parse(200, "{\"access_token\":\"x\",\"token_type\":\"Bearer\",\"expires_in\":-5}", &t, msg),
        AL_OK);
    assert_int_equal(t->lifetime_s, 3600);
    al_token_release(t);
}

static void test_bad_answers(void **state)
{
    (void)state;
    al_token *t;
    char msg[512];
    const char *bad[] = {
        "not json",
        "[]",
        "{}",
        "{\"access_token\":\"\",\"token_type\":\"Bearer\"}",
        "{\"access_token\":\"a b\",\"token_type\":\"Bearer\"}",
        "{\"access_token\":\"a\\r\\nX-Evil: 1\",\"token_type\":\"Bearer\"}",
        "{\"access_token\":\"a\\u00e9\",\"token_type\":\"Bearer\"}",
        "{\"access_token\":5,\"token_type\":\"Bearer\"}",
        "{\"access_token\":\"a\",\"token_type\":\"DPoP\"}",
        "{\"access_token\":\"a\",\"token_type\":\"mac\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse(200, bad[i], &t, msg), AL_OK);
        assert_null(t);
        assert_non_null(strstr(msg, "idp.example"));
    }
    assert_int_equal(parse(200, "{\"access_token\":\"a\",\"token_type\":\"DPoP\"}", &t, msg),
                     AL_ERR_PROTO);
    assert_non_null(strstr(msg, "only Bearer"));
}

static void test_errors_name_the_provider_error_without_secrets(void **state)
{
    (void)state;
    al_token *t;
    char msg[512];
    assert_int_not_equal(parse(401, "{\"error\":\"invalid_client\",\"error_description\":"
                                    "\"client authentication failed\"}",
                               &t, msg),
                         AL_OK);
    assert_string_equal(msg, "token endpoint idp.example answered 401: invalid_client (client "
                             "authentication failed)");
    /* a provider that echoes the secret, with control bytes and quotes */
    assert_int_not_equal(parse(400, "{\"error\":\"invalid_request\",\"error_description\":"
                                    "\"bad secret s3cr3t-client-secret\\r\\n\\\"x\\\"\"}",
                               &t, msg),
                         AL_OK);
    assert_null(strstr(msg, "s3cr3t"));
    assert_non_null(strstr(msg, "[redacted]"));
    assert_null(strchr(msg, '\r'));
    assert_null(strchr(msg, '"'));
    /* the secret echoed as a token_type (found by fuzz_identity_token) */
    assert_int_not_equal(parse(200, "{\"access_token\":\"a\",\"token_type\":\"x "
                                    "s3cr3t-client-secret\"}",
                               &t, msg),
                         AL_OK);
    assert_null(strstr(msg, "s3cr3t"));
    /* very long description: cut */
    char body[4096];
    char longd[3000];
    memset(longd, 'A', sizeof longd - 1);
    longd[sizeof longd - 1] = 0;
    snprintf(body, sizeof body, "{\"error\":\"server_error\",\"error_description\":\"%s\"}",
             longd);
    assert_int_not_equal(parse(500, body, &t, msg), AL_OK);
    assert_true(strlen(msg) < 300);
    /* not JSON: the body is never copied (it could reflect the request) */
    assert_int_not_equal(parse(502, "<html>s3cr3t-client-secret</html>", &t, msg), AL_OK);
    assert_string_equal(msg, "token endpoint idp.example answered 502 without an OAuth error");
}

static void test_sanitize(void **state)
{
    (void)state;
    char out[64];
    al_token_sanitize("ok \x01\x7f\xc3\xa9 done", NULL, 0, out, sizeof out, 100);
    assert_string_equal(out, "ok ???? done");
    al_token_sanitize("abcdef", NULL, 0, out, sizeof out, 3);
    assert_string_equal(out, "abc");
    al_token_sanitize(NULL, NULL, 0, out, sizeof out, 3);
    assert_string_equal(out, "");
    al_token_sanitize("xx s3cr3t-client-secretyy", SECRET, sizeof SECRET - 1, out, sizeof out,
                      100);
    assert_string_equal(out, "xx [redacted]yy");
}

static void test_cache_key(void **state)
{
    (void)state;
    al_token_spec a = spec(), b = spec();
    char ka[1024], kb[1024];
    assert_int_equal(al_token_cache_key(&a, ka, sizeof ka), AL_OK);
    assert_null(strstr(ka, "s3cr3t"));
    static char *other_order[] = {"read", "write"};
    b.scopes = other_order;
    assert_int_equal(al_token_cache_key(&b, kb, sizeof kb), AL_OK);
    assert_string_equal(ka, kb);
    b.version = 4; /* a rotated secret gets its own tokens */
    al_token_cache_key(&b, kb, sizeof kb);
    assert_string_not_equal(ka, kb);
    b = spec();
    b.resource = "https://other.example/";
    al_token_cache_key(&b, kb, sizeof kb);
    assert_string_not_equal(ka, kb);
    b = spec();
    b.secret = (const unsigned char *)"another";
    b.secret_len = 7;
    al_token_cache_key(&b, kb, sizeof kb);
    assert_string_equal(ka, kb); /* the key never depends on the secret bytes */
    al_kv kv = {.key = "tenant", .value = "t1"};
    b.custom = &kv;
    b.custom_count = 1;
    al_token_cache_key(&b, kb, sizeof kb);
    assert_string_not_equal(ka, kb);
    assert_int_equal(al_token_cache_key(&a, ka, 10), AL_ERR_TOOBIG);
}

static void test_spec_from_target(void **state)
{
    (void)state;
    al_target t = {0};
    t.type = AL_TYPE_MCP_SERVER;
    t.url = "https://mcp.example/mcp";
    al_token_spec s;
    al_token_spec_from_target(&s, &t, "p", 1, "{}", SECRET, 3);
    assert_string_equal(s.resource, "https://mcp.example/mcp");
    t.auth.resource = "https://explicit.example/";
    al_token_spec_from_target(&s, &t, "p", 1, "{}", SECRET, 3);
    assert_string_equal(s.resource, "https://explicit.example/");
    t.auth.resource = NULL;
    t.type = AL_TYPE_OPENAPI;
    al_token_spec_from_target(&s, &t, "p", 1, "{}", SECRET, 3);
    assert_null(s.resource);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_answers),
        cmocka_unit_test(test_bad_answers),
        cmocka_unit_test(test_errors_name_the_provider_error_without_secrets),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_cache_key),
        cmocka_unit_test(test_spec_from_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
