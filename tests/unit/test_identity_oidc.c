/* Unit tests of identity/al_fetch + identity/al_oidc against a small HTTP server the
 * test runs on 127.0.0.1 (a thread per connection, counting hits per path):
 * scheme rules, the egress guard (fail closed without one), the size and time limits,
 * metadata/JWKS validation (issuer binding in both well-known forms, private key
 * members), single flight of a cold document under 16 threads, cached failures that
 * back off, forced JWKS reloads rate-limited, and cancel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_oidc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int srv_fd = -1;
static int srv_port;
static atomic_int hits_meta, hits_jwks, hits_bad, hits_other;
static atomic_int jwks_delay_ms;

static void reply(int fd, int status, const char *ctype, const char *extra, const char *body,
                  size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                     "Connection: close\r\n\r\n",
                     status, ctype, len, extra ? extra : "");
    if (send(fd, head, (size_t)n, MSG_NOSIGNAL) < 0)
        return;
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, body + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static void *conn_thread(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char req[4096];
    size_t got = 0;
    while (got < sizeof req - 1) {
        ssize_t r = read(fd, req + got, sizeof req - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[got] = 0;
    char path[512] = "";
    sscanf(req, "%*s %511s", path);
    char body[2048];
    char issuer[128];
    snprintf(issuer, sizeof issuer, "http://127.0.0.1:%d", srv_port);
    if (strcmp(path, "/.well-known/openid-configuration") == 0) {
        atomic_fetch_add(&hits_meta, 1);
        int n = snprintf(body, sizeof body,
                         "{\"issuer\":\"%s\",\"token_endpoint\":\"%s/token\","
                         "\"jwks_uri\":\"%s/jwks\"}",
                         issuer, issuer, issuer);
        reply(fd, 200, "application/json", "Cache-Control: max-age=120\r\n", body, (size_t)n);
    } else if (strcmp(path, "/.well-known/oauth-authorization-server/tenant1") == 0) {
        int n = snprintf(body, sizeof body, "{\"issuer\":\"%s/tenant1\"}", issuer);
        reply(fd, 200, "application/json", NULL, body, (size_t)n);
    } else if (strcmp(path, "/other/.well-known/openid-configuration") == 0) {
        atomic_fetch_add(&hits_bad, 1);
        int n = snprintf(body, sizeof body, "{\"issuer\":\"https://evil.example\"}");
        reply(fd, 200, "application/json", NULL, body, (size_t)n);
    } else if (strcmp(path, "/jwks") == 0) {
        atomic_fetch_add(&hits_jwks, 1);
        int d = atomic_load(&jwks_delay_ms);
        if (d)
            usleep((useconds_t)d * 1000);
        static const char j[] = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"a\","
                                "\"x\":\"AA\",\"y\":\"AA\"}]}";
        reply(fd, 200, "application/json", NULL, j, sizeof j - 1);
    } else if (strcmp(path, "/jwks-private") == 0) {
        static const char j[] = "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}";
        reply(fd, 200, "application/json", NULL, j, sizeof j - 1);
    } else if (strcmp(path, "/big") == 0) {
        size_t len = 2u << 20;
        char *b = malloc(len);
        memset(b, ' ', len);
        reply(fd, 200, "application/json", NULL, b, len);
        free(b);
    } else if (strcmp(path, "/slow") == 0) {
        usleep(1500 * 1000);
        reply(fd, 200, "application/json", NULL, "{}", 2);
    } else {
        atomic_fetch_add(&hits_other, 1);
        reply(fd, 404, "text/plain", NULL, "no", 2);
    }
    close(fd);
    return NULL;
}

static void *accept_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(srv_fd, NULL, NULL);
        if (c < 0)
            return NULL;
        pthread_t t;
        pthread_create(&t, NULL, conn_thread, (void *)(intptr_t)c);
        pthread_detach(t);
    }
}

static int group_setup(void **state)
{
    (void)state;
    srv_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (bind(srv_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(srv_fd, 128) != 0)
        return -1;
    getsockname(srv_fd, (struct sockaddr *)&a, &l);
    srv_port = ntohs(a.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, accept_thread, NULL);
    pthread_detach(t);
    return 0;
}

static const al_fetch_opts LOCAL = {.allow_insecure = 1, .allow_private_network = 1};

static void url(char *buf, size_t len, const char *path)
{
    snprintf(buf, len, "http://127.0.0.1:%d%s", srv_port, path);
}

static int guard_public_only(const struct sockaddr *sa, void *arg)
{
    (void)arg;
    if (sa->sa_family == AF_INET) {
        uint32_t ip = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        return (ip >> 24) != 127;
    }
    return 0;
}

static void test_fetch_scheme_rules(void **state)
{
    (void)state;
    char eb[256];
    al_fetch_opts strict = {0};
    assert_int_equal(al_fetch_check_url("https://idp.example/token", &strict, eb, sizeof eb),
                     AL_OK);
    assert_int_equal(al_fetch_check_url("http://idp.example/token", &strict, eb, sizeof eb),
                     AL_ERR_INVAL);
    assert_non_null(strstr(eb, "--allow-insecure-endpoints"));
    assert_int_equal(al_fetch_check_url("http://idp.example/token", &LOCAL, eb, sizeof eb), AL_OK);
    assert_int_equal(al_fetch_check_url("ftp://idp.example/x", &LOCAL, eb, sizeof eb),
                     AL_ERR_INVAL);
    assert_int_equal(al_fetch_check_url("file:///etc/passwd", &LOCAL, eb, sizeof eb), AL_ERR_INVAL);
    assert_int_equal(al_fetch_check_url("https://u:p@idp.example/", &strict, eb, sizeof eb),
                     AL_ERR_INVAL);
    assert_int_equal(al_fetch_check_url("/relative", &strict, eb, sizeof eb), AL_ERR_INVAL);
    assert_int_equal(al_fetch_check_url(NULL, &strict, eb, sizeof eb), AL_ERR_INVAL);
}

static void test_fetch_egress_guard_fails_closed(void **state)
{
    (void)state;
    al_fetch *f;
    assert_int_equal(al_fetch_new(&f), AL_OK);
    char u[128];
    url(u, sizeof u, "/jwks");
    al_fetch_request rq = {.url = u};
    al_fetch_response res;
    char *buf;
    al_fetch_opts o = {.allow_insecure = 1};
    int before = atomic_load(&hits_jwks);
    /* no guard installed: only allow_private_network may connect */
    assert_int_equal(al_fetch_wait(f, &rq, &o, &res, &buf), AL_ERR_EGRESS);
    assert_non_null(strstr(res.errmsg, "--allow-private-network"));
    assert_non_null(strstr(res.errmsg, "127.0.0.1"));
    free(buf);
    al_fetch_set_guard(f, guard_public_only, NULL);
    assert_int_equal(al_fetch_wait(f, &rq, &o, &res, &buf), AL_ERR_EGRESS);
    free(buf);
    assert_int_equal(atomic_load(&hits_jwks), before); /* never connected */
    assert_int_equal(al_fetch_wait(f, &rq, &LOCAL, &res, &buf), AL_OK);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.body, "\"keys\""));
    free(buf);
    al_fetch_free(f);
}

static void test_fetch_limits(void **state)
{
    (void)state;
    al_fetch *f;
    assert_int_equal(al_fetch_new(&f), AL_OK);
    char u[128];
    al_fetch_response res;
    char *buf;
    url(u, sizeof u, "/big");
    al_fetch_request rq = {.url = u};
    assert_int_equal(al_fetch_wait(f, &rq, &LOCAL, &res, &buf), AL_ERR_TOOBIG);
    free(buf);
    url(u, sizeof u, "/slow");
    al_fetch_opts quick = LOCAL;
    quick.timeout_ms = 200;
    assert_int_equal(al_fetch_wait(f, &rq, &quick, &res, &buf), AL_ERR_TIMEOUT);
    assert_non_null(strstr(res.errmsg, "200 ms"));
    free(buf);
    /* a POST with basic credentials and a form reaches the server */
    url(u, sizeof u, "/token");
    al_fetch_request post = {.url = u,
                             .form = "grant_type=client_credentials",
                             .form_len = 29,
                             .basic_auth = "id:secret"};
    assert_int_equal(al_fetch_wait(f, &post, &LOCAL, &res, &buf), AL_OK);
    assert_int_equal(res.status, 404);
    free(buf);
    al_fetch_free(f);
}

static void test_metadata_checks(void **state)
{
    (void)state;
    char eb[400];
    al_fetch_opts strict = {0};
    json_t *d = json_pack("{s:s, s:s, s:s}", "issuer", "https://idp.example/realms/a",
                          "token_endpoint", "https://idp.example/realms/a/token", "jwks_uri",
                          "https://idp.example/realms/a/certs");
    assert_int_equal(
        al_oidc_check_metadata(d, "https://idp.example/realms/a/.well-known/openid-configuration",
                               &strict, eb, sizeof eb),
        AL_OK);
    /* RFC 8414, inserted and appended forms */
    assert_int_equal(al_oidc_check_metadata(
                         d, "https://idp.example/.well-known/oauth-authorization-server/realms/a",
                         &strict, eb, sizeof eb),
                     AL_OK);
    assert_int_equal(al_oidc_check_metadata(
                         d, "https://idp.example/realms/a/.well-known/oauth-authorization-server",
                         &strict, eb, sizeof eb),
                     AL_OK);
    assert_int_equal(
        al_oidc_check_metadata(d, "https://idp.example/realms/b/.well-known/openid-configuration",
                               &strict, eb, sizeof eb),
        AL_ERR_PROTO);
    assert_non_null(strstr(eb, "does not match"));
    assert_int_equal(
        al_oidc_check_metadata(d, "https://evil.example/realms/a/.well-known/openid-configuration",
                               &strict, eb, sizeof eb),
        AL_ERR_PROTO);
    /* an http token endpoint is refused unless allowed */
    json_object_set_new(d, "token_endpoint", json_string("http://idp.example/token"));
    assert_int_equal(al_oidc_check_metadata(d, NULL, &strict, eb, sizeof eb), AL_ERR_PROTO);
    assert_non_null(strstr(eb, "token_endpoint"));
    assert_int_equal(al_oidc_check_metadata(d, NULL, &LOCAL, eb, sizeof eb), AL_OK);
    json_object_set_new(d, "jwks_uri", json_integer(3));
    assert_int_equal(al_oidc_check_metadata(d, NULL, &LOCAL, eb, sizeof eb), AL_ERR_PROTO);
    json_decref(d);
    d = json_pack("{s:i}", "issuer", 1);
    assert_int_equal(al_oidc_check_metadata(d, NULL, &LOCAL, eb, sizeof eb), AL_ERR_PROTO);
    json_decref(d);
    d = json_pack("[]");
    assert_int_equal(al_oidc_check_metadata(d, NULL, &LOCAL, eb, sizeof eb), AL_ERR_PROTO);
    assert_int_equal(al_oidc_check_jwks(d, eb, sizeof eb), AL_ERR_PROTO);
    json_decref(d);
    d = json_pack("{s:[{s:s,s:s}]}", "keys", "kty", "RSA", "d", "private");
    assert_int_equal(al_oidc_check_jwks(d, eb, sizeof eb), AL_ERR_PROTO);
    json_decref(d);
    d = json_pack("{s:[{s:s}]}", "keys", "n", "x");
    assert_int_equal(al_oidc_check_jwks(d, eb, sizeof eb), AL_ERR_PROTO);
    json_decref(d);
    assert_int_equal(al_oidc_fresh_s(AL_OIDC_METADATA, -1, 0), 3600);
    assert_int_equal(al_oidc_fresh_s(AL_OIDC_JWKS, -1, 0), 600);
    assert_int_equal(al_oidc_fresh_s(AL_OIDC_JWKS, 5, 0), 60);
    assert_int_equal(al_oidc_fresh_s(AL_OIDC_JWKS, 999999, 0), 86400);
    assert_int_equal(al_oidc_fresh_s(AL_OIDC_JWKS, 300, 1), 60);
}

static void test_oidc_fetches_and_caches_metadata(void **state)
{
    (void)state;
    al_oidc *o;
    assert_int_equal(al_oidc_new(&o), AL_OK);
    char u[128], eb[256];
    url(u, sizeof u, "/.well-known/openid-configuration");
    int before = atomic_load(&hits_meta);
    json_t *doc;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(al_oidc_get_wait(o, AL_OIDC_METADATA, u, &LOCAL, 0, &doc, eb, sizeof eb),
                         AL_OK);
        assert_non_null(json_string_value(json_object_get(doc, "token_endpoint")));
        json_decref(doc);
    }
    assert_int_equal(atomic_load(&hits_meta) - before, 1);
    /* the RFC 8414 inserted form with a path */
    url(u, sizeof u, "/.well-known/oauth-authorization-server/tenant1");
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_METADATA, u, &LOCAL, 0, &doc, eb, sizeof eb),
                     AL_OK);
    json_decref(doc);
    /* a mismatching issuer is a failed load; it is cached (back-off) */
    url(u, sizeof u, "/other/.well-known/openid-configuration");
    before = atomic_load(&hits_bad);
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_METADATA, u, &LOCAL, 0, &doc, eb, sizeof eb),
                     AL_ERR_PROTO);
    assert_non_null(strstr(eb, "does not match"));
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_METADATA, u, &LOCAL, 0, &doc, eb, sizeof eb),
                     AL_ERR_PROTO);
    assert_int_equal(atomic_load(&hits_bad) - before, 1);
    /* a 404 names the host and the status */
    url(u, sizeof u, "/nothing/.well-known/openid-configuration");
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_METADATA, u, &LOCAL, 0, &doc, eb, sizeof eb),
                     AL_ERR_PROTO);
    assert_non_null(strstr(eb, "404"));
    /* private key material in a JWKS */
    url(u, sizeof u, "/jwks-private");
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &LOCAL, 0, &doc, eb, sizeof eb),
                     AL_ERR_PROTO);
    /* http without allow_insecure: refused before any connection */
    url(u, sizeof u, "/jwks");
    al_fetch_opts strict = {.allow_private_network = 1};
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &strict, 0, &doc, eb, sizeof eb),
                     AL_ERR_INVAL);
    al_oidc_free(o);
}

typedef struct racer {
    al_oidc *o;
    char url[128];
    atomic_int ok;
    pthread_barrier_t b;
} racer;

static void *race_thread(void *arg)
{
    racer *r = arg;
    json_t *doc = NULL;
    char eb[256];
    pthread_barrier_wait(&r->b);
    if (al_oidc_get_wait(r->o, AL_OIDC_JWKS, r->url, &LOCAL, 0, &doc, eb, sizeof eb) == AL_OK &&
        json_array_size(json_object_get(doc, "keys")) == 1)
        atomic_fetch_add(&r->ok, 1);
    json_decref(doc);
    return NULL;
}

static void test_oidc_cold_jwks_16_threads_one_fetch(void **state)
{
    (void)state;
    racer r = {.ok = 0};
    assert_int_equal(al_oidc_new(&r.o), AL_OK);
    url(r.url, sizeof r.url, "/jwks");
    pthread_barrier_init(&r.b, NULL, 16);
    atomic_store(&jwks_delay_ms, 100);
    int before = atomic_load(&hits_jwks);
    pthread_t t[16];
    for (int i = 0; i < 16; i++)
        pthread_create(&t[i], NULL, race_thread, &r);
    for (int i = 0; i < 16; i++)
        pthread_join(t[i], NULL);
    atomic_store(&jwks_delay_ms, 0);
    assert_int_equal(atomic_load(&r.ok), 16);
    assert_int_equal(atomic_load(&hits_jwks) - before, 1);
    pthread_barrier_destroy(&r.b);
    al_oidc_free(r.o);
}

static int64_t fake_now;
static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void test_oidc_forced_jwks_reload_is_rate_limited(void **state)
{
    (void)state;
    al_oidc *o;
    assert_int_equal(al_oidc_new(&o), AL_OK);
    fake_now = 1000000;
    al_oidc_set_clock(o, fake_clock, NULL);
    char u[128], eb[256];
    url(u, sizeof u, "/jwks");
    json_t *doc;
    int before = atomic_load(&hits_jwks);
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &LOCAL, 0, &doc, eb, sizeof eb), AL_OK);
    json_decref(doc);
    /* unknown kid right away: the set is too young to fetch again */
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &LOCAL, 1, &doc, eb, sizeof eb), AL_OK);
    json_decref(doc);
    assert_int_equal(atomic_load(&hits_jwks) - before, 1);
    fake_now += 10000;
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &LOCAL, 1, &doc, eb, sizeof eb), AL_OK);
    json_decref(doc);
    assert_int_equal(atomic_load(&hits_jwks) - before, 2);
    /* freshness: 600 s default, then one background refresh, the old set served */
    fake_now += 600 * 1000;
    assert_int_equal(al_oidc_get_wait(o, AL_OIDC_JWKS, u, &LOCAL, 0, &doc, eb, sizeof eb), AL_OK);
    json_decref(doc);
    for (int i = 0; i < 500 && atomic_load(&hits_jwks) - before < 3; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&hits_jwks) - before, 3);
    al_oidc_free(o);
}

static atomic_int cancelled_calls;
static void count_cb(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    (void)arg, (void)err, (void)value, (void)gen, (void)msg;
    atomic_fetch_add(&cancelled_calls, 1);
}

static void test_oidc_cancel_and_free_with_a_load_in_flight(void **state)
{
    (void)state;
    al_oidc *o;
    assert_int_equal(al_oidc_new(&o), AL_OK);
    char u[128];
    url(u, sizeof u, "/slow");
    al_flight_result r;
    assert_int_equal(al_oidc_get(o, AL_OIDC_JWKS, u, &LOCAL, 0, count_cb, NULL, &r), AL_ERR_AGAIN);
    assert_int_equal(al_oidc_cancel(o, r.wait_id), 1);
    assert_int_equal(al_oidc_get(o, AL_OIDC_JWKS, u, &LOCAL, 0, count_cb, NULL, &r), AL_ERR_AGAIN);
    al_oidc_free(o); /* the load is still in flight: dropped, no callback, no leak */
    assert_int_equal(atomic_load(&cancelled_calls), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_scheme_rules),
        cmocka_unit_test(test_fetch_egress_guard_fails_closed),
        cmocka_unit_test(test_fetch_limits),
        cmocka_unit_test(test_metadata_checks),
        cmocka_unit_test(test_oidc_fetches_and_caches_metadata),
        cmocka_unit_test(test_oidc_cold_jwks_16_threads_one_fetch),
        cmocka_unit_test(test_oidc_forced_jwks_reload_is_rate_limited),
        cmocka_unit_test(test_oidc_cancel_and_free_with_a_load_in_flight),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
