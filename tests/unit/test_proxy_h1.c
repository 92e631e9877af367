/* Unit tests of the HTTP/1.1 request engine (proxy/al_h1.c): what is accepted,
 * what is refused as smuggling (400) or too large (431), body decoding and
 * pipelining. The cases are data: one row each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/al_h1.h"

struct head_case {
    const char *name;
    const char *raw;
    int status; /* 0 accepted, else the refusal status */
};

static const struct head_case cases[] = {
    {"simple get", "GET /t/a/x HTTP/1.1\r\nHost: a\r\n\r\n", 0},
    {"absolute form", "GET http://api.example.com/v1?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", 0},
    {"http/1.0", "GET /t/a HTTP/1.0\r\n\r\n", 0},
    {"content-length", "POST /t/a HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 0},
    {"chunked", "POST /t/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
    {"bare LF", "GET / HTTP/1.1\nHost: a\n\n", 400},
    {"bare LF in one header", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400},
    {"obs-fold", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400},
    {"CL and TE", "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     400},
    {"TE and CL", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
     400},
    {"duplicate CL equal", "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
     400},
    {"conflicting CL", "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
    {"CL list", "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", 400},
    {"CL sign", "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400},
    {"TE gzip", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
    {"TE gzip,chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400},
    {"TE chunked twice",
     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
    {"TE xchunked", "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 400},
    {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
    {"NUL in value", "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 400},
    {"control in value",
     "GET / HTTP/1.1\r\nX: a\x01"
     "b\r\n\r\n",
     400},
    {"CR alone", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400},
    {"bad method", "G(T / HTTP/1.1\r\n\r\n", 400},
    {"http/2.0 line", "GET / HTTP/2.0\r\n\r\n", 400},
    {"http/0.9", "GET /\r\n\r\n", 400},
    {"space in url", "GET /a b HTTP/1.1\r\n\r\n", 400},
    /* Host (RFC 9112 3.2): one, with a uri-host value; missing is the connection's call */
    {"host with port", "GET / HTTP/1.1\r\nHost: a.example:8443\r\n\r\n", 0},
    {"host ipv6", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 0},
    {"host OWS", "GET / HTTP/1.1\r\nHost: \t a \t\r\n\r\n", 0},
    {"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
    {"two equal hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400},
    {"two hosts mixed case", "GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n", 400},
    {"two hosts apart", "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhOsT: a\r\n\r\n", 400},
    {"two hosts http/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
    {"two hosts absolute", "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
    {"two hosts connect", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nHost: b:443\r\n\r\n", 400},
    {"empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 400},
    {"blank host", "GET / HTTP/1.1\r\nHost:   \r\n\r\n", 400},
    {"host list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400},
    {"host with path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
    {"host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400},
    {"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
    {"host with backslash", "GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", 400},
};

static int parse(const char *raw, size_t len, al_h1_parser *p, al_h1_error *e)
{
    long n = al_h1_head_scan(raw, len, 65536, e);
    if (n <= 0)
        return n == 0 ? -2 : e->status;
    if (al_h1_parse_head(p, raw, (size_t)n, NULL, NULL, e) != 0)
        return e->status;
    return 0;
}

static size_t raw_len(const char *raw)
{
    /* The NUL case holds an embedded NUL: measure up to the final CRLF CRLF. */
    const char *end = raw;
    for (;;) {
        const char *f = strstr(end, "\r\n\r\n");
        if (f)
            return (size_t)(f - raw) + 4;
        size_t l = strlen(end);
        if (strchr(end, '\n') && strstr(end, "\n\n"))
            return (size_t)(strstr(end, "\n\n") - raw) + 2;
        end += l + 1;
    }
}

static void test_head_cases(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        al_h1_parser p;
        al_h1_error e = {0};
        int got = parse(cases[i].raw, raw_len(cases[i].raw), &p, &e);
        if (got != cases[i].status) {
            printf("case '%s': want %d got %d (%s)\n", cases[i].name, cases[i].status, got,
                   e.reason ? e.reason : "");
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_fields(void **state)
{
    (void)state;
    const char *raw = "POST http://h.example:8443/p?x=1 HTTP/1.1\r\nHost: h.example\r\n"
                      "X-Api-Key: agent-own\r\nContent-Length: 11\r\n\r\nhello world";
    al_h1_parser p;
    al_h1_error e;
    long n = al_h1_head_scan(raw, strlen(raw), 65536, &e);
    assert_true(n > 0);
    assert_int_equal(al_h1_parse_head(&p, raw, (size_t)n, NULL, NULL, &e), 0);
    assert_string_equal(p.head.method, "POST");
    assert_int_equal(p.head.url.len, strlen("http://h.example:8443/p?x=1"));
    assert_memory_equal(raw + p.head.url.off, "http://h.example:8443/p?x=1", p.head.url.len);
    assert_int_equal(p.head.field_count, 3);
    assert_true(al_h1_slice_is(raw, p.head.fields[1].name, "x-api-key"));
    assert_memory_equal(raw + p.head.fields[1].value.off, "agent-own", 9);
    assert_int_equal(p.head.content_length, 11);
    assert_int_equal(p.head.keep_alive, 1);
    assert_int_equal(p.message_done, 0);
}

static void test_head_limit(void **state)
{
    (void)state;
    char raw[300];
    memset(raw, 'a', sizeof raw);
    memcpy(raw, "GET / HTTP/1.1\r\nX: ", 19);
    al_h1_error e;
    assert_int_equal(al_h1_head_scan(raw, 100, 256, &e), 0); /* incomplete, under the limit */
    assert_int_equal(al_h1_head_scan(raw, sizeof raw, 256, &e), -1);
    assert_int_equal(e.status, 431);
}

struct sink {
    char data[256];
    size_t len;
};

static int collect(void *arg, const char *d, size_t n)
{
    struct sink *s = arg;
    memcpy(s->data + s->len, d, n);
    s->len += n;
    return 0;
}

static void test_chunked_body_and_pipelining(void **state)
{
    (void)state;
    const char *raw = "POST /t/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                      "GET /t/a/next HTTP/1.1\r\n\r\n";
    al_h1_parser p;
    al_h1_error e;
    struct sink s = {.len = 0};
    long n = al_h1_head_scan(raw, strlen(raw), 65536, &e);
    assert_int_equal(al_h1_parse_head(&p, raw, (size_t)n, collect, &s, &e), 0);
    assert_int_equal(p.head.chunked, 1);
    const char *body = raw + n;
    /* Byte by byte: framing must survive any split. */
    size_t used = 0;
    while (!p.message_done) {
        long u = al_h1_feed_body(&p, body + used, 1, &e);
        assert_true(u >= 0);
        used += (size_t)u;
    }
    assert_int_equal(s.len, 11);
    assert_memory_equal(s.data, "hello world", 11);
    /* The pipelined request is left untouched. */
    assert_string_equal(body + used, "GET /t/a/next HTTP/1.1\r\n\r\n");
    assert_int_equal(al_h1_feed_body(&p, body + used, strlen(body + used), &e), 0);
}

static void test_content_length_body_stops(void **state)
{
    (void)state;
    const char *raw = "PUT /t/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
    al_h1_parser p;
    al_h1_error e;
    struct sink s = {.len = 0};
    long n = al_h1_head_scan(raw, strlen(raw), 65536, &e);
    assert_int_equal(al_h1_parse_head(&p, raw, (size_t)n, collect, &s, &e), 0);
    long u = al_h1_feed_body(&p, raw + n, strlen(raw + n), &e);
    assert_int_equal(u, 3);
    assert_true(p.message_done);
    assert_memory_equal(s.data, "abc", 3);
}

static void test_bad_chunk(void **state)
{
    (void)state;
    const char *raw = "POST /t/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n";
    al_h1_parser p;
    al_h1_error e;
    struct sink s = {.len = 0};
    long n = al_h1_head_scan(raw, strlen(raw), 65536, &e);
    assert_int_equal(al_h1_parse_head(&p, raw, (size_t)n, collect, &s, &e), 0);
    assert_int_equal(al_h1_feed_body(&p, raw + n, strlen(raw + n), &e), -1);
    assert_int_equal(e.status, 400);
}

static void test_no_body_request_is_done(void **state)
{
    (void)state;
    const char *raw = "GET /t/a HTTP/1.1\r\nConnection: close\r\n\r\n";
    al_h1_parser p;
    al_h1_error e;
    long n = al_h1_head_scan(raw, strlen(raw), 65536, &e);
    assert_int_equal(al_h1_parse_head(&p, raw, (size_t)n, NULL, NULL, &e), 0);
    assert_true(p.message_done);
    assert_int_equal(p.head.keep_alive, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_cases),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_head_limit),
        cmocka_unit_test(test_chunked_body_and_pipelining),
        cmocka_unit_test(test_content_length_body_stops),
        cmocka_unit_test(test_bad_chunk),
        cmocka_unit_test(test_no_body_request_is_done),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
