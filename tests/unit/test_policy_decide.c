/* Policy decisions: tables with policy.rules loaded through the real loader, then
 * many requests (principals, targets, methods, paths, MCP tools) decided. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "policy/al_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char table_yaml[] =
    "inbound:\n"
    "  mode: jwt\n"
    "  jwt:\n"
    "    discovery_url: https://idp.example.com/.well-known/openid-configuration\n"
    "policy:\n"
    "  rules:\n"
    "    - name: a-reads\n" /* line 7 */
    "      clients: [agent-a]\n"
    "      targets: [echo-a]\n"
    "      methods: [get, HEAD]\n"
    "      paths: [\"/v1/*/items\", \"/files/**\", \"/\"]\n"
    "    - clients: [agent-b]\n" /* line 12 */
    "      targets: [echo-b, tools]\n"
    "    - clients: [agent-b]\n" /* line 14 */
    "      targets: [tools]\n"
    "      mcp_tools: [search]\n"
    "    - claims: {groups: admins}\n" /* line 17 */
    "      subjects: [alice]\n"
    "      targets: [\"*\"]\n"
    "targets:\n"
    "  - name: echo-a\n"
    "    type: openapi\n"
    "    url: https://a.example.com\n"
    "  - name: echo-b\n"
    "    type: openapi\n"
    "    url: https://b.example.com\n"
    "  - name: tools\n"
    "    type: mcp_server\n"
    "    url: https://mcp.example.com/mcp\n";

static al_table *table;

static int setup(void **state)
{
    (void)state;
    al_diags d;
    al_diags_init(&d);
    int rc = al_table_load_mem("t.yaml", table_yaml, sizeof table_yaml - 1, &table, &d);
    if (rc != AL_OK) {
        al_diags_print(&d, stderr);
        fail();
    }
    al_diags_free(&d);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    al_table_unref(table);
    return 0;
}

static al_principal *client(const char *id)
{
    return al_principal_new("https://idp.example.com", id, id, NULL);
}

/* Decides; returns allow and sets *missing / *line. */
static int decide(const al_principal *p, const char *target, const char *method, const char *path,
                  const char *tool, enum al_policy_missing *missing, int *line)
{
    al_policy_request q = {p, target, method, path, tool};
    al_policy_decision d;
    al_policy_decide(table, &q, &d);
    if (missing)
        *missing = d.missing;
    if (line)
        *line = d.rule ? d.rule->line : 0;
    char buf[512];
    al_policy_explain(table, &q, &d, buf, sizeof buf);
    assert_true(strlen(buf) > 10);
    return d.allow;
}

static void test_rules_loaded(void **state)
{
    (void)state;
    assert_int_equal(table->policy.rule_count, 4);
    const al_policy_rule *r = &table->policy.rules[0];
    assert_string_equal(r->name, "a-reads");
    assert_int_equal(r->line, 7);
    assert_string_equal(r->methods[0], "GET"); /* upper-cased */
    assert_int_equal(r->target_marks[0].line, 9);
    assert_int_equal(r->target_marks[0].column, 17);
    assert_int_equal(table->inbound.mode, AL_INBOUND_JWT);
    assert_int_equal(table->inbound.clock_skew_s, 60);
}

static void test_decisions(void **state)
{
    (void)state;
    al_principal *a = client("agent-a"), *b = client("agent-b"), *c = client("agent-c");
    enum al_policy_missing m;
    int line;
    /* agent A: echo-a, GET/HEAD, its paths */
    assert_true(decide(a, "echo-a", "GET", "/v1/x/items", NULL, &m, &line));
    assert_int_equal(line, 7);
    assert_true(decide(a, "echo-a", "HEAD", "/files", NULL, NULL, NULL));
    assert_true(decide(a, "echo-a", "GET", "/files/a/b/c", NULL, NULL, NULL));
    assert_true(decide(a, "echo-a", "GET", "/", NULL, NULL, NULL));
    assert_true(decide(a, "echo-a", "GET", "/v1/x/items?q=1", NULL, NULL, NULL));
    assert_false(decide(a, "echo-a", "POST", "/v1/x/items", NULL, &m, &line));
    assert_int_equal(m, AL_POLICY_MISS_METHOD);
    assert_int_equal(line, 7);
    assert_false(decide(a, "echo-a", "get", "/v1/x/items", NULL, &m, NULL));
    assert_int_equal(m, AL_POLICY_MISS_METHOD);
    assert_false(decide(a, "echo-a", "GET", "/v1/items", NULL, &m, NULL));
    assert_int_equal(m, AL_POLICY_MISS_PATH);
    assert_false(decide(a, "echo-a", "GET", "/v1/x/y/items", NULL, &m, NULL));
    assert_false(decide(a, "echo-a", "GET", "/v10/x/items", NULL, &m, NULL));
    assert_false(decide(a, "echo-a", "GET", "/filesystem", NULL, &m, NULL));
    assert_false(decide(a, "echo-a", "GET", "/v1//items", NULL, &m, NULL));
    assert_false(decide(a, "echo-b", "GET", "/", NULL, &m, &line));
    assert_int_equal(m, AL_POLICY_MISS_TARGET);
    assert_int_equal(line, 7);
    assert_false(decide(a, NULL, "GET", "/", NULL, &m, NULL));
    assert_int_equal(m, AL_POLICY_MISS_TARGET);
    /* agent B: echo-b and tools with any method/path; tools restricted by rule 14 only */
    assert_true(decide(b, "echo-b", "DELETE", "/anything/at/all", NULL, NULL, NULL));
    assert_false(decide(b, "echo-a", "GET", "/", NULL, &m, NULL));
    assert_int_equal(m, AL_POLICY_MISS_TARGET);
    /* rule 12 gives B every tool of `tools` (no mcp_tools): the first allowing rule wins */
    assert_true(decide(b, "tools", "POST", "/mcp", "delete", NULL, &line));
    assert_int_equal(line, 12);
    /* an unknown client */
    assert_false(decide(c, "echo-a", "GET", "/", NULL, &m, &line));
    assert_int_equal(m, AL_POLICY_MISS_PRINCIPAL);
    assert_int_equal(line, 0);
    assert_false(decide(NULL, "echo-a", "GET", "/", NULL, &m, NULL));
    assert_int_equal(m, AL_POLICY_MISS_PRINCIPAL);
    /* alice needs both her sub and the admins group */
    json_t *cl = json_pack("{s:[s,s]}", "groups", "eng", "admins");
    al_principal *alice = al_principal_new("i", "alice", "cli", cl);
    al_principal *alice_nogroup = al_principal_new("i", "alice", "cli", NULL);
    json_t *cl2 = json_pack("{s:s}", "groups", "admins");
    al_principal *bob = al_principal_new("i", "bob", "cli", cl2);
    assert_true(decide(alice, "tools", "POST", "/x", "anything", NULL, &line));
    assert_int_equal(line, 17);
    assert_false(decide(alice_nogroup, "echo-a", "GET", "/", NULL, NULL, NULL));
    assert_false(decide(bob, "echo-a", "GET", "/", NULL, NULL, NULL));
    json_decref(cl);
    json_decref(cl2);
    al_principal_unref(alice);
    al_principal_unref(alice_nogroup);
    al_principal_unref(bob);
    al_principal_unref(a);
    al_principal_unref(b);
    al_principal_unref(c);
}

static void test_mcp_tools(void **state)
{
    (void)state;
    static const char y[] =
        "inbound: {mode: jwt, jwt: {discovery_url: 'https://i.example.com/.well-known/x'}}\n"
        "policy:\n"
        "  rules:\n"
        "    - clients: [agent-a]\n"
        "      targets: [tools]\n"
        "      mcp_tools: [search, fetch]\n"
        "targets:\n"
        "  - {name: tools, type: mcp_server, url: 'https://mcp.example.com/mcp'}\n";
    al_table *t = NULL;
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_load_mem("m.yaml", y, sizeof y - 1, &t, &d), AL_OK);
    al_diags_free(&d);
    al_principal *a = client("agent-a");
    al_policy_decision dec;
    al_policy_request q = {a, "tools", "POST", "/", "search"};
    al_policy_decide(t, &q, &dec);
    assert_true(dec.allow);
    q.mcp_tool = "delete";
    al_policy_decide(t, &q, &dec);
    assert_false(dec.allow);
    assert_int_equal(dec.missing, AL_POLICY_MISS_TOOL);
    char buf[512];
    al_policy_explain(t, &q, &dec, buf, sizeof buf);
    assert_non_null(strstr(buf, "'delete'"));
    assert_non_null(strstr(buf, "m.yaml:4"));
    assert_null(strstr(buf, "search")); /* says what was missing, not the policy */
    q.mcp_tool = "Search";
    al_policy_decide(t, &q, &dec);
    assert_false(dec.allow);
    q.mcp_tool = ""; /* a tools/call without a string name */
    al_policy_decide(t, &q, &dec);
    assert_false(dec.allow);
    q.mcp_tool = NULL; /* initialize, tools/list: not a tool call */
    al_policy_decide(t, &q, &dec);
    assert_true(dec.allow);
    al_principal_unref(a);
    al_table_unref(t);
}

static void test_no_rules(void **state)
{
    (void)state;
    static const char y[] = "targets: []\n";
    al_table *t = NULL;
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_load_mem("n.yaml", y, sizeof y - 1, &t, &d), AL_OK);
    al_diags_free(&d);
    al_policy_request q = {NULL, "x", "GET", "/", NULL};
    al_policy_decision dec;
    al_policy_decide(t, &q, &dec);
    assert_true(dec.allow);
    assert_null(dec.rule);
    assert_false(al_policy_active(t));
    al_table_unref(t);
    /* rules without principal selectors work with mode none (method/path limits) */
    static const char y2[] = "policy: {rules: [{targets: [e], methods: [GET]}]}\n"
                             "targets: [{name: e, type: openapi, url: 'https://e.example.com'}]\n";
    al_diags_init(&d);
    assert_int_equal(al_table_load_mem("n2.yaml", y2, sizeof y2 - 1, &t, &d), AL_OK);
    al_diags_free(&d);
    q.target = "e";
    al_policy_decide(t, &q, &dec);
    assert_true(dec.allow);
    q.method = "PUT";
    al_policy_decide(t, &q, &dec);
    assert_false(dec.allow);
    assert_int_equal(dec.missing, AL_POLICY_MISS_METHOD);
    al_table_unref(t);
}

static void test_path_match(void **state)
{
    (void)state;
    struct {
        const char *pat, *path;
        int want;
    } c[] = {
        {"/", "/", 1},
        {"/", "/a", 0},
        {"/a", "/a", 1},
        {"/a", "/a/", 0},
        {"/a/", "/a/", 1},
        {"/a/", "/a", 0},
        {"/a", "/ab", 0},
        {"/a", "/A", 0},
        {"/*", "/x", 1},
        {"/*", "/", 0},
        {"/*", "/x/y", 0},
        {"/*/b", "/x/b", 1},
        {"/*/b", "//b", 0},
        {"/**", "/", 1},
        {"/**", "/a/b/c", 1},
        {"/a/**", "/a", 1},
        {"/a/**", "/a/", 1},
        {"/a/**", "/a/b/c", 1},
        {"/a/**", "/ab", 0},
        {"/a/**", "/b/a", 0},
        {"/a/*/c/**", "/a/b/c", 1},
        {"/a/*/c/**", "/a/b/d", 0},
        {"/a", "/a?x=/b", 1},
        {"/a", "/a#f", 1},
        {"/a%2Fb", "/a%2Fb", 1},
        {"/a/b", "/a%2Fb", 0},
        {"/a", "", 0},
        {"/a", "a", 0},
        {"a", "/a", 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
        if (al_policy_path_match(c[i].pat, c[i].path) != c[i].want)
            fail_msg("'%s' vs '%s': want %d", c[i].pat, c[i].path, c[i].want);
    assert_false(al_policy_path_match(NULL, "/"));
    assert_false(al_policy_path_match("/", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_loaded), cmocka_unit_test(test_decisions),
        cmocka_unit_test(test_mcp_tools),    cmocka_unit_test(test_no_rules),
        cmocka_unit_test(test_path_match),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
