/* al_authz and the bearer parser: where the token is read from, what a refusal says,
 * the policy path below a target's base path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_authz.h"

#include <string.h>

static void test_bearer(void **state)
{
    (void)state;
    const char *tok;
    size_t tl;
    assert_int_equal(al_inbound_bearer("Bearer abc.def-_~+/=", 20, &tok, &tl), AL_OK);
    assert_int_equal(tl, 13);
    assert_memory_equal(tok, "abc.def-_~+/=", 13);
    assert_int_equal(al_inbound_bearer("bearer   x  ", 12, &tok, &tl), AL_OK);
    assert_int_equal(tl, 1);
    const char *bad[] = {"Bearer",      "Bearer ",    "Basic abc",  "Bearerabc", "Bearer a b",
                         "Bearer a\"b", "Bearer a=b", "Bearer \tx", "Token x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (al_inbound_bearer(bad[i], strlen(bad[i]), &tok, &tl) != AL_ERR_NOTFOUND)
            fail_msg("'%s' accepted", bad[i]);
    assert_int_equal(al_inbound_bearer(NULL, 0, &tok, &tl), AL_ERR_NOTFOUND);
}

static void test_policy_path(void **state)
{
    (void)state;
    al_target t;
    memset(&t, 0, sizeof t);
    char b[64];
    t.base_path = "/api";
    assert_string_equal(al_authz_policy_path(&t, "/api/v1/x?q=1", 13, b, sizeof b), "/v1/x");
    assert_string_equal(al_authz_policy_path(&t, "/api", 4, b, sizeof b), "/");
    assert_string_equal(al_authz_policy_path(&t, "/api?x", 6, b, sizeof b), "/");
    assert_string_equal(al_authz_policy_path(&t, "/apiary/x", 9, b, sizeof b), "/apiary/x");
    t.base_path = "";
    assert_string_equal(al_authz_policy_path(&t, "/v1", 3, b, sizeof b), "/v1");
    assert_string_equal(al_authz_policy_path(NULL, NULL, 0, b, sizeof b), "/");
}

static void test_decide_without_keys(void **state)
{
    (void)state;
    static const char y[] =
        "inbound: {mode: jwt, jwt: {discovery_url: 'https://idp.example.com/.well-known/x'}}\n"
        "policy: {rules: [{clients: [a], targets: [e]}]}\n"
        "targets: [{name: e, type: openapi, url: 'https://e.example.com/base'}]\n";
    al_table *t = NULL;
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_load_mem("a.yaml", y, sizeof y - 1, &t, &d), AL_OK);
    al_diags_free(&d);
    al_authz_out out;
    /* no token: 407 on the forward proxy, 401 in gateway mode, no error= (RFC 6750) */
    al_authz_in in = {
        .table = t, .method = "GET", .target = &t->targets[0], .path = "/base/x", .path_len = 7};
    al_authz_decide(&in, &out);
    assert_false(out.allow);
    assert_int_equal(out.status, 407);
    assert_string_equal(out.code, "proxy_auth_required");
    assert_int_equal(out.check, AL_JWT_MISSING);
    assert_string_equal(out.challenge, "Bearer realm=\"airlock\"");
    in.gateway = 1;
    in.authorization = "Basic eDp5";
    in.authorization_len = 10;
    al_authz_decide(&in, &out);
    assert_int_equal(out.status, 401);
    assert_int_equal(out.check, AL_JWT_MALFORMED);
    assert_non_null(strstr(out.challenge, "error=\"invalid_token\""));
    /* a token but no authenticator (keys never fetched): keys_unavailable, token not echoed */
    in.authorization = "Bearer secret-token-value";
    in.authorization_len = strlen(in.authorization);
    al_authz_decide(&in, &out);
    assert_int_equal(out.check, AL_JWT_UNAVAILABLE);
    assert_null(strstr(out.message, "secret-token-value"));
    assert_null(strstr(out.challenge, "secret-token-value"));
    /* a principal (explain --principal / a tunnel's) goes on to the policy */
    al_principal *a = al_principal_new("i", "a", "a", NULL),
                 *b = al_principal_new("i", "b", "b", NULL);
    in.authorization = NULL;
    in.inherited = a;
    al_authz_decide(&in, &out);
    assert_true(out.allow);
    assert_non_null(strstr(out.rule, "a.yaml:2"));
    al_authz_out_free(&out);
    in.inherited = b;
    al_authz_decide(&in, &out);
    assert_false(out.allow);
    assert_int_equal(out.status, 403);
    assert_string_equal(out.code, "policy_denied");
    assert_non_null(strstr(out.message, "'e'"));
    al_authz_out_free(&out);
    /* CONNECT to a target only authenticates: the requests inside are decided */
    in.method = "CONNECT";
    al_authz_decide(&in, &out);
    assert_true(out.allow);
    al_authz_out_free(&out);
    al_principal_unref(a);
    al_principal_unref(b);
    al_table_unref(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_policy_path),
        cmocka_unit_test(test_decide_without_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
