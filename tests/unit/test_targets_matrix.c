/* Unit tests of targets/al_matrix: the embedded matrix.yaml parses and names exactly
 * the code's types and methods; a file that adds, drops, misspells or repeats a name
 * is refused with its position; the allowed-method lists read in file order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "targets/al_matrix.h"

#include <stdio.h>
#include <string.h>

static void test_embedded_in_sync(void **state)
{
    (void)state;
    const al_matrix *m = al_matrix_get();
    if (!m)
        fail_msg("embedded matrix.yaml refused: %s", al_matrix_error());
    assert_null(al_matrix_error());
    /* the embedded bytes are targets/matrix.yaml's */
    assert_true(al_matrix_yaml_len > 50);
    assert_int_equal(strlen(al_matrix_yaml), al_matrix_yaml_len);
    /* every code name round-trips and appears once in the file order */
    int seen_t[AL_TYPE_COUNT] = {0}, seen_m[AL_AUTH_COUNT] = {0};
    for (int i = 0; i < AL_TYPE_COUNT; i++) {
        assert_int_equal(al_matrix_type_from_name(al_target_type_name(i)), i);
        seen_t[m->type_order[i]]++;
    }
    for (int i = 0; i < AL_AUTH_COUNT; i++) {
        assert_int_equal(al_matrix_method_from_name(al_auth_method_name(i)), i);
        seen_m[m->method_order[i]]++;
    }
    for (int i = 0; i < AL_TYPE_COUNT; i++)
        assert_int_equal(seen_t[i], 1);
    for (int i = 0; i < AL_AUTH_COUNT; i++)
        assert_int_equal(seen_m[i], 1);
    assert_int_equal(al_matrix_type_from_name("grpc"), -1);
    assert_int_equal(al_matrix_method_from_name("basic"), -1);
    assert_int_equal(al_matrix_method_from_name(NULL), -1);
}

static void test_allowed_lists(void **state)
{
    (void)state;
    char buf[128];
    const char *want[AL_TYPE_COUNT] = {
        [AL_TYPE_LAMBDA] = "iam",
        [AL_TYPE_API_GATEWAY] = "iam, api_key",
        [AL_TYPE_OPENAPI] = "oauth2_2lo, oauth2_3lo, api_key",
        [AL_TYPE_SMITHY] = "iam, oauth2_2lo, oauth2_3lo",
        [AL_TYPE_MCP_SERVER] = "oauth2_2lo",
    };
    int allowed = 0;
    for (int t = 0; t < AL_TYPE_COUNT; t++) {
        al_matrix_allowed_methods(t, buf, sizeof buf);
        assert_string_equal(buf, want[t]);
        for (int m = 0; m < AL_AUTH_COUNT; m++)
            allowed += al_matrix_allows(t, m);
    }
    assert_int_equal(allowed, 10);
    assert_int_equal(al_matrix_allows(AL_TYPE_COUNT, AL_AUTH_IAM), 0);
    assert_int_equal(al_matrix_allows(AL_TYPE_LAMBDA, AL_AUTH_NONE), 0);
    /* a too small buffer truncates cleanly */
    char tiny[6];
    al_matrix_allowed_methods(AL_TYPE_OPENAPI, tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
}

static void expect_refused(const char *yaml, const char *want)
{
    al_matrix m;
    char err[256];
    assert_int_equal(al_matrix_parse(yaml, strlen(yaml), &m, err, sizeof err), AL_ERR_CONFIG);
    if (strcmp(err, want) != 0)
        fail_msg("want: %s\ngot:  %s", want, err);
}

#define METHODS "methods: [iam, oauth2_2lo, oauth2_3lo, api_key]\n"
#define TYPES_OK                                                                                   \
    "  lambda: [iam]\n  api_gateway: [iam, api_key]\n  openapi: [oauth2_2lo, oauth2_3lo, "         \
    "api_key]\n  smithy: [iam, oauth2_2lo, oauth2_3lo]\n"

static void test_names_must_match_code(void **state)
{
    (void)state;
    al_matrix m;
    char err[256];
    const char *ok = METHODS "types:\n" TYPES_OK "  mcp_server: [oauth2_2lo]\n";
    assert_int_equal(al_matrix_parse(ok, strlen(ok), &m, err, sizeof err), AL_OK);
    assert_true(m.allow[AL_TYPE_MCP_SERVER][AL_AUTH_OAUTH2_2LO]);
    assert_false(m.allow[AL_TYPE_MCP_SERVER][AL_AUTH_API_KEY]);
    /* a new type in the file the code does not know */
    expect_refused(METHODS "types:\n" TYPES_OK "  mcp_server: [oauth2_2lo]\n  grpc: [api_key]\n",
                   "matrix.yaml:8:3: type 'grpc' is not known to the code (al_table.h)");
    /* a type the code knows but the file forgot */
    expect_refused(METHODS "types:\n" TYPES_OK,
                   "matrix.yaml:3:3: type 'mcp_server' is known to the code but not listed");
    /* methods: unknown, missing, repeated */
    expect_refused("methods: [iam, oauth2_2lo, oauth2_3lo, api_key, basic]\ntypes: {}\n",
                   "matrix.yaml:1:49: method 'basic' is not known to the code (al_table.h)");
    expect_refused("methods: [iam, oauth2_2lo, oauth2_3lo]\ntypes: {}\n",
                   "matrix.yaml:1:10: method 'api_key' is known to the code but not listed");
    expect_refused("methods: [iam, iam]\ntypes: {}\n",
                   "matrix.yaml:1:16: method 'iam' listed twice");
    expect_refused(METHODS "types:\n  lambda: [iam, sigv4]\n",
                   "matrix.yaml:3:17: type 'lambda': method 'sigv4' is not known to the code");
    expect_refused(METHODS "types:\n  lambda: [iam]\n  lambda: [iam]\n",
                   "matrix.yaml:4:3: type 'lambda' listed twice");
    expect_refused(METHODS "types:\n  lambda: iam\n",
                   "matrix.yaml:3:11: type 'lambda': expected a list of methods");
    expect_refused(METHODS "types: [lambda]\n",
                   "matrix.yaml:2:8: 'types' must be a mapping of type -> [methods]");
    expect_refused(METHODS, "matrix.yaml:1:1: missing 'types'");
    expect_refused("methods: [", "matrix.yaml: YAML error: did not find expected node content");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_in_sync),
        cmocka_unit_test(test_allowed_lists),
        cmocka_unit_test(test_names_must_match_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
