/* MCP JSON-RPC inspection: tools/call names from single and batch bodies, hostile
 * spellings, the error response, and tools/list filtering (JSON and SSE). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "policy/al_mcp.h"

#include <stdlib.h>
#include <string.h>

static int parse(const char *body, al_mcp_calls *c)
{
    return al_mcp_parse_calls(body, strlen(body), c);
}

static void test_calls(void **state)
{
    (void)state;
    al_mcp_calls c;
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
                           "\"params\":{\"name\":\"search\",\"arguments\":{\"q\":\"x\"}}}",
                           &c),
                     AL_OK);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.names[0], "search");
    assert_int_equal(json_integer_value(c.ids[0]), 1);
    assert_false(c.batch);
    al_mcp_calls_free(&c);
    /* other methods: no calls */
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}", &c), AL_OK);
    assert_int_equal(c.count, 0);
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", &c),
                     AL_OK);
    assert_int_equal(c.count, 0);
    /* escapes are decoded as the server decodes them */
    assert_int_equal(parse("{\"method\":\"tools\\/call\",\"id\":\"x\",\"params\":{\"name\":"
                           "\"del\\u0065te\"}}",
                           &c),
                     AL_OK);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.names[0], "delete");
    al_mcp_calls_free(&c);
    /* a batch: every call is seen */
    assert_int_equal(parse("[{\"method\":\"tools/call\",\"id\":1,\"params\":{\"name\":\"search\"}},"
                           "{\"method\":\"ping\",\"id\":2},"
                           "{\"method\":\"tools/call\",\"id\":3,\"params\":{\"name\":\"delete\"}}]",
                           &c),
                     AL_OK);
    assert_true(c.batch);
    assert_int_equal(c.count, 2);
    assert_string_equal(c.names[1], "delete");
    al_mcp_calls_free(&c);
    /* name not a string: "" (which no rule names) */
    assert_int_equal(parse("{\"method\":\"tools/call\",\"params\":{\"name\":[\"search\"]}}", &c),
                     AL_OK);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.names[0], "");
    assert_null(c.ids[0]);
    al_mcp_calls_free(&c);
    /* hostile shapes */
    const char *proto[] = {
        "",
        "not json",
        "{\"method\":\"tools/call\",\"params\":{\"name\":\"search\",\"name\":\"delete\"}}",
        "{\"method\":\"tools/call\",\"method\":\"ping\"}",
        "[]",
        "[1]",
        "\"tools/call\"",
        "{\"method\":\"tools/call\",\"params\":{\"name\":\"search\"}} trailing",
        "{\"method\":\"tools/call\",\"params\":{\"name\":\"a\\u0000b\"}}",
    };
    for (size_t i = 0; i < sizeof proto / sizeof *proto; i++) {
        int rc = parse(proto[i], &c);
        if (rc != AL_ERR_PROTO)
            fail_msg("'%s': %d", proto[i], rc);
        assert_int_equal(c.count, 0);
    }
    /* bounds */
    char *big = malloc(AL_MCP_MAX_BODY + 2);
    memset(big, ' ', AL_MCP_MAX_BODY + 1);
    big[AL_MCP_MAX_BODY + 1] = 0;
    assert_int_equal(parse(big, &c), AL_ERR_TOOBIG);
    free(big);
    char many[65 * 64 + 8];
    size_t off = 0;
    many[off++] = '[';
    for (int i = 0; i < 65; i++)
        off +=
            (size_t)sprintf(many + off, "%s{\"method\":\"tools/call\",\"id\":%d}", i ? "," : "", i);
    many[off++] = ']';
    many[off] = 0;
    assert_int_equal(parse(many, &c), AL_ERR_TOOBIG);
    assert_int_equal(c.count, 0);
}

static void test_error_response(void **state)
{
    (void)state;
    json_t *id = json_string("req-7");
    size_t len = 0;
    char *s = al_mcp_error_response(id, AL_MCP_POLICY_ERROR, "tool 'delete' is not allowed", &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(s));
    json_t *j = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "jsonrpc")), "2.0");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "req-7");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "error"), "code")),
                     AL_MCP_POLICY_ERROR);
    json_decref(j);
    free(s);
    s = al_mcp_error_response(NULL, -32600, "x", NULL);
    assert_non_null(strstr(s, "\"id\":null"));
    free(s);
    json_decref(id);
}

static int only_search(void *arg, const char *tool)
{
    (void)arg;
    return !strcmp(tool, "search");
}

static void test_filter(void **state)
{
    (void)state;
    const char *body = "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":["
                       "{\"name\":\"search\",\"inputSchema\":{}},{\"name\":\"delete\"},"
                       "{\"title\":\"no name\"}],\"nextCursor\":\"c\"}}";
    char *out = NULL;
    size_t ol = 0;
    assert_int_equal(al_mcp_filter_tools_list(body, strlen(body), only_search, NULL, &out, &ol),
                     AL_OK);
    assert_non_null(out);
    json_t *j = json_loads(out, 0, NULL);
    json_t *tools = json_object_get(json_object_get(j, "result"), "tools");
    assert_int_equal(json_array_size(tools), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(tools, 0), "name")),
                        "search");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "result"), "nextCursor")), "c");
    json_decref(j);
    free(out);
    /* nothing to remove, or not a tools list: untouched */
    const char *ok = "{\"result\":{\"tools\":[{\"name\":\"search\"}]}}";
    assert_int_equal(al_mcp_filter_tools_list(ok, strlen(ok), only_search, NULL, &out, &ol), AL_OK);
    assert_null(out);
    assert_int_equal(al_mcp_filter_tools_list("{}", 2, only_search, NULL, &out, &ol), AL_OK);
    assert_null(out);
    assert_int_equal(al_mcp_filter_tools_list("nope", 4, only_search, NULL, &out, &ol),
                     AL_ERR_PROTO);
    /* SSE: complete events filtered, the partial tail left */
    const char *sse = "event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":"
                      "{\"tools\":[{\"name\":\"delete\"},{\"name\":\"search\"}]}}\r\n\r\n"
                      ": comment\n\n"
                      "data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n"
                      "data: {\"partial";
    out = NULL;
    ol = 0;
    long used = al_mcp_filter_sse(sse, strlen(sse), only_search, NULL, &out, &ol);
    assert_int_equal(used, (long)(strstr(sse, "data: {\"partial") - sse));
    assert_non_null(out);
    assert_null(strstr(out, "delete"));
    assert_non_null(strstr(out, "search"));
    assert_non_null(strstr(out, "event: message\r\n"));
    assert_non_null(strstr(out, ": comment\n\n"));
    assert_non_null(strstr(out, "\"id\":3"));
    free(out);
    /* a data field split over two lines is joined before parsing */
    const char *split = "data: {\"result\":{\"tools\":\ndata: [{\"name\":\"delete\"}]}}\n\n";
    out = NULL;
    ol = 0;
    assert_int_equal(al_mcp_filter_sse(split, strlen(split), only_search, NULL, &out, &ol),
                     (long)strlen(split));
    assert_null(strstr(out, "delete"));
    free(out);
}

static void test_filter_padded(void **state)
{
    (void)state;
    char body[] = "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"delete\","
                  "\"description\":\"x\"},{\"name\":\"search\",\"n\":0.1}]}}";
    size_t len = strlen(body);
    assert_int_equal(al_mcp_filter_tools_padded(body, len, 0, only_search, NULL), 1);
    assert_int_equal(strlen(body), len); /* same length: the Content-Length holds */
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j); /* trailing spaces are JSON whitespace */
    json_t *tools = json_object_get(json_object_get(j, "result"), "tools");
    assert_int_equal(json_array_size(tools), 1);
    json_decref(j);
    assert_null(strstr(body, "delete"));
    /* SSE: each data line rewritten in place; nothing to remove: untouched */
    char sse[] = "event: message\r\ndata: {\"result\":{\"tools\":[{\"name\":\"delete\"},"
                 "{\"name\":\"search\"}]}}\r\n\r\ndata: {\"result\":{}}\n\n";
    char copy[sizeof sse];
    memcpy(copy, sse, sizeof sse);
    assert_int_equal(al_mcp_filter_tools_padded(sse, strlen(sse), 1, only_search, NULL), 1);
    assert_int_equal(strlen(sse), strlen(copy));
    assert_null(strstr(sse, "delete"));
    assert_non_null(strstr(sse, "\r\n\r\ndata: {\"result\":{}}\n\n"));
    char ok[] = "{\"result\":{\"tools\":[{\"name\":\"search\"}]}}";
    assert_int_equal(al_mcp_filter_tools_padded(ok, strlen(ok), 0, only_search, NULL), 0);
    char junk[] = "not json";
    assert_int_equal(al_mcp_filter_tools_padded(junk, strlen(junk), 0, only_search, NULL), 0);
    assert_string_equal(junk, "not json");
    /* tools/list requests are noticed */
    al_mcp_calls c;
    const char *list = "{\"method\":\"tools/list\",\"id\":1}";
    assert_int_equal(al_mcp_parse_calls(list, strlen(list), &c), AL_OK);
    assert_true(c.lists_tools);
    al_mcp_calls_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_error_response),
        cmocka_unit_test(test_filter),
        cmocka_unit_test(test_filter_padded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
