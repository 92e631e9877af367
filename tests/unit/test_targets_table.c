/* Unit tests of the target table loader (targets/al_table.c, al_schema.c).
 *
 * Bad tables are data: tests/data/tables/bad/NAME.yaml with NAME.expected holding
 * the exact diagnostics, walked by one runner. The 20 type/method pairs are checked
 * against the matrix of the design document written out here (not read from
 * matrix.yaml, so a wrong edit of that file fails). Then defaults, derived values,
 * URL normalisation, path resolution, refcounting, providers against a fake store,
 * and the routing index built at load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "targets/al_router.h"
#include "targets/al_schema.h"
#include "targets/al_table.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

/* Loads YAML text; returns the table (or NULL) and the diagnostics as text. */
static al_table *load(const char *yaml, char **diag_text)
{
    al_diags d;
    al_table *t = NULL;
    al_diags_init(&d);
    int rc = al_table_load_mem("t.yaml", yaml, strlen(yaml), &t, &d);
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    assert_non_null(m);
    al_diags_print(&d, m);
    fclose(m);
    if (rc == AL_OK)
        assert_int_equal(d.count, 0);
    else
        assert_null(t);
    al_diags_free(&d);
    if (diag_text)
        *diag_text = buf;
    else
        free(buf);
    return t;
}

static al_table *load_ok(const char *yaml)
{
    char *diags = NULL;
    al_table *t = load(yaml, &diags);
    if (!t)
        fail_msg("expected a valid table, got:\n%s", diags);
    free(diags);
    return t;
}

static void expect_error(const char *yaml, const char *want)
{
    char *diags = NULL;
    al_table *t = load(yaml, &diags);
    assert_null(t);
    if (strcmp(diags, want) != 0)
        fail_msg("diagnostics differ\nwant:\n%sgot:\n%s", want, diags);
    free(diags);
}

/* ---- tests as data ---------------------------------------------------------- */

static void test_bad_tables(void **state)
{
    (void)state;
    const char *data = getenv("AIRLOCK_TEST_DATA");
    assert_non_null(data);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tables/bad", data);
    DIR *dh = opendir(dir);
    assert_non_null(dh);
    struct dirent *e;
    int cases = 0;
    while ((e = readdir(dh))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0)
            continue;
        char yp[1400], ep[1400];
        snprintf(yp, sizeof yp, "%s/%s", dir, e->d_name);
        snprintf(ep, sizeof ep, "%s/%.*s.expected", dir, (int)(l - 5), e->d_name);
        size_t yl = 0;
        char *yaml = slurp(yp, &yl), *want = slurp(ep, NULL);
        if (!yaml || !want)
            fail_msg("%s: missing .yaml or .expected", e->d_name);
        al_diags d;
        al_table *t = NULL;
        al_diags_init(&d);
        /* Run from the case's directory so relative paths (ca_file) mean the same as
         * for `airlock check NAME.yaml` there. */
        char cwd[1024];
        assert_non_null(getcwd(cwd, sizeof cwd));
        assert_int_equal(chdir(dir), 0);
        int rc = al_table_load_mem(e->d_name, yaml, yl, &t, &d);
        assert_int_equal(chdir(cwd), 0);
        char *got = NULL;
        size_t gl = 0;
        FILE *m = open_memstream(&got, &gl);
        al_diags_print(&d, m);
        fclose(m);
        if (rc != AL_ERR_CONFIG || t)
            fail_msg("%s: expected AL_ERR_CONFIG, got %d", e->d_name, rc);
        if (strcmp(got, want) != 0)
            fail_msg("%s: diagnostics differ\nwant:\n%sgot:\n%s", e->d_name, want, got);
        /* every diagnostic of a bad table has a position */
        for (size_t i = 0; i < d.count; i++)
            if (d.items[i].line < 1 || d.items[i].column < 1)
                fail_msg("%s: diagnostic without line:column: %s", e->d_name, d.items[i].message);
        free(got);
        al_diags_free(&d);
        free(yaml);
        free(want);
        cases++;
    }
    closedir(dh);
    assert_true(cases >= 10);
}

static void test_examples_load(void **state)
{
    (void)state;
    const char *src = getenv("AIRLOCK_SOURCE_DIR");
    assert_non_null(src);
    const struct {
        const char *file;
        size_t targets;
    } ex[] = {{"quickstart.yaml", 1}, {"lambda.yaml", 2}, {"api_gateway.yaml", 3},
              {"openapi.yaml", 5},    {"smithy.yaml", 3}, {"mcp_server.yaml", 1}};
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/deploy/examples/%s", src, ex[i].file);
        al_diags d;
        al_table *t = NULL;
        al_diags_init(&d);
        int rc = al_table_load(p, &t, &d);
        if (rc != AL_OK) {
            al_diags_print(&d, stderr);
            fail_msg("%s does not load", ex[i].file);
        }
        assert_int_equal(t->target_count, ex[i].targets);
        assert_non_null(t->router);
        al_table_unref(t);
        al_diags_free(&d);
    }
    /* The quickstart is what the README runs: exactly these values. */
    char p[1024];
    snprintf(p, sizeof p, "%s/deploy/examples/quickstart.yaml", src);
    al_diags d;
    al_table *t = NULL;
    al_diags_init(&d);
    assert_int_equal(al_table_load(p, &t, &d), AL_OK);
    assert_string_equal(t->listen.proxy, "127.0.0.1:8080");
    assert_string_equal(t->listen.tls, "127.0.0.1:8443");
    assert_string_equal(t->listen.admin, "127.0.0.1:8081");
    char want_state[1100];
    snprintf(want_state, sizeof want_state, "%s/deploy/examples/../../.airlock", src);
    assert_string_equal(t->state_dir, want_state);
    const al_target *g = &t->targets[0];
    assert_string_equal(g->name, "demo");
    assert_int_equal(g->type, AL_TYPE_OPENAPI);
    assert_string_equal(g->url, "http://127.0.0.1:9090");
    assert_true(g->allow_insecure_upstream && g->allow_private_network);
    assert_int_equal(g->auth.method, AL_AUTH_API_KEY);
    assert_int_equal(g->auth.provider_count, 1);
    assert_string_equal(g->auth.providers[0], "demo-key");
    assert_int_equal(g->auth.location, AL_KEY_IN_HEADER);
    assert_string_equal(g->auth.name, "Authorization");
    assert_string_equal(g->auth.prefix, "Bearer ");
    al_table_unref(t);
    al_diags_free(&d);
}

/* ---- the 20 pairs ------------------------------------------------------------ */

/* The matrix of ../shared/design.md, written out independently of matrix.yaml. */
static const int documented[AL_TYPE_COUNT][AL_AUTH_COUNT] = {
    /*                 iam 2lo 3lo key */
    [AL_TYPE_LAMBDA] = {1, 0, 0, 0},     [AL_TYPE_API_GATEWAY] = {1, 0, 0, 1},
    [AL_TYPE_OPENAPI] = {0, 1, 1, 1},    [AL_TYPE_SMITHY] = {1, 1, 1, 0},
    [AL_TYPE_MCP_SERVER] = {0, 1, 0, 0},
};
static const char *const documented_allows[AL_TYPE_COUNT] = {
    "iam", "iam, api_key", "oauth2_2lo, oauth2_3lo, api_key", "iam, oauth2_2lo, oauth2_3lo",
    "oauth2_2lo"};

static void test_all_twenty_pairs(void **state)
{
    (void)state;
    static const char *const tn[] = {"lambda", "api_gateway", "openapi", "smithy", "mcp_server"};
    static const char *const mn[] = {"iam", "oauth2_2lo", "oauth2_3lo", "api_key"};
    int accepted = 0, rejected = 0;
    for (int ty = 0; ty < AL_TYPE_COUNT; ty++)
        for (int me = 0; me < AL_AUTH_COUNT; me++) {
            char yaml[1024];
            const char *upstream =
                ty == AL_TYPE_LAMBDA
                    ? "    function_arn: arn:aws:lambda:us-east-1:123456789012:function:f\n"
                : ty == AL_TYPE_API_GATEWAY
                    ? "    url: https://abc123.execute-api.us-east-1.amazonaws.com/prod\n"
                    : "    url: https://svc.example.com\n";
            const char *extra =
                me == AL_AUTH_IAM && ty != AL_TYPE_LAMBDA && ty != AL_TYPE_API_GATEWAY
                    ? "      region: us-east-1\n      service: svc\n"
                    : "";
            snprintf(yaml, sizeof yaml,
                     "targets:\n"
                     "  - name: t\n"
                     "    type: %s\n"
                     "%s"
                     "    auth:\n"
                     "      method: %s\n"
                     "      provider: p\n"
                     "%s%s",
                     tn[ty], upstream, mn[me], extra,
                     /* 3LO needs a way to know the end user (after the target: the
                      * diagnostics' line numbers stay) */
                     me == AL_AUTH_OAUTH2_3LO
                         ? "inbound:\n  mode: jwt\n  jwt:\n    discovery_url: "
                           "https://idp.example.com/.well-known/openid-configuration\n"
                         : "");
            char *diags = NULL;
            al_table *t = load(yaml, &diags);
            if (documented[ty][me]) {
                if (!t)
                    fail_msg("%s + %s must be accepted, got:\n%s", tn[ty], mn[me], diags);
                assert_int_equal(t->targets[0].type, ty);
                assert_int_equal(t->targets[0].auth.method, me);
                al_table_unref(t);
                accepted++;
            } else {
                char want[512];
                snprintf(want, sizeof want,
                         "t.yaml:6:15: error: target 't': type '%s' does not allow auth method "
                         "'%s' (%s allows: %s)\n",
                         tn[ty], mn[me], tn[ty], documented_allows[ty]);
                assert_null(t);
                if (strcmp(diags, want) != 0)
                    fail_msg("%s + %s\nwant: %sgot:  %s", tn[ty], mn[me], want, diags);
                rejected++;
            }
            free(diags);
        }
    assert_int_equal(accepted, 10);
    assert_int_equal(rejected, 10);
}

/* ---- defaults and derived values ----------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    al_table *t = load_ok("targets:\n"
                          "  - name: bearer\n"
                          "    type: openapi\n"
                          "    url: https://A.Example.com:443/v1/\n"
                          "    auth: {method: api_key, provider: k}\n"
                          "  - name: custom\n"
                          "    type: openapi\n"
                          "    url: https://b.example.com:8443\n"
                          "    environment: dev\n"
                          "    auth: {method: api_key, provider: k, name: X-Api-Key}\n"
                          "  - name: query\n"
                          "    type: openapi\n"
                          "    url: http://[::1]:8080/q\n"
                          "    allow_insecure_upstream: true\n"
                          "    scrub_echoed_credential: false\n"
                          "    upstream: {protocol: h2}\n"
                          "    auth: {method: api_key, provider: k, location: query}\n"
                          "  - name: open\n"
                          "    type: openapi\n"
                          "    url: https://open.example.com/\n");
    assert_int_equal(t->target_count, 4);
    const al_target *a = &t->targets[0], *b = &t->targets[1], *q = &t->targets[2],
                    *o = &t->targets[3];
    assert_string_equal(a->url, "https://a.example.com/v1");
    assert_string_equal(a->host, "a.example.com");
    assert_int_equal(a->port, 443);
    assert_string_equal(a->base_path, "/v1");
    assert_string_equal(a->scheme, "https");
    assert_string_equal(a->auth.name, "Authorization");
    assert_string_equal(a->auth.prefix, "Bearer ");
    assert_string_equal(a->environment, "default");
    assert_false(a->allow_private_network);
    assert_false(a->allow_insecure_upstream);
    assert_true(a->scrub_echoed_credential); /* on unless a target turns it off */
    assert_true(o->scrub_echoed_credential);
    assert_false(q->scrub_echoed_credential);
    assert_null(a->ca_file);
    assert_int_equal(a->upstream_protocol, AL_UPSTREAM_PROTO_AUTO);
    assert_int_equal(q->upstream_protocol, AL_UPSTREAM_PROTO_H2);
    assert_string_equal(b->url, "https://b.example.com:8443");
    assert_string_equal(b->base_path, "");
    assert_string_equal(b->auth.name, "X-Api-Key");
    assert_string_equal(b->auth.prefix, "");
    assert_string_equal(b->environment, "dev");
    assert_string_equal(q->host, "::1");
    assert_string_equal(q->url, "http://[::1]:8080/q");
    assert_int_equal(q->auth.location, AL_KEY_IN_QUERY);
    assert_string_equal(q->auth.name, "api_key");
    assert_string_equal(q->auth.prefix, "");
    assert_int_equal(o->auth.method, AL_AUTH_NONE);
    assert_string_equal(al_auth_method_name(o->auth.method), "none");
    assert_int_equal(o->auth.provider_count, 0);
    /* table-level defaults from the schema rows */
    assert_null(t->listen.proxy);
    assert_null(t->state_dir);
    assert_string_equal(t->environment, "default");
    assert_int_equal(t->limits.connect_timeout_ms, 5000);
    assert_int_equal(t->limits.first_byte_timeout_ms, 30000);
    assert_int_equal(t->limits.idle_timeout_ms, 60000);
    assert_int_equal(t->limits.max_header_bytes, 65536);
    assert_int_equal(t->limits.max_body_bytes, 0);
    assert_int_equal(t->limits.drain_timeout_ms, 10000);
    assert_int_equal(t->limits.workers, 0);
    assert_int_equal(t->headers.add_via, 1);
    assert_int_equal(t->headers.add_x_forwarded_for, 0);
    assert_int_equal(t->egress.passthrough_count, 0);
    al_table_unref(t);
}

/* listen.proxy and listen.tls are read once at load into host and port (the request
 * path's own-address check); "*:port" reads as 0.0.0.0, a bracketed IPv6 without its
 * brackets; an absent address stays unread. */
static void test_listen_addresses_read_at_load(void **state)
{
    (void)state;
    al_table *t = load_ok("listen: {proxy: '0.0.0.0:8080', tls: '[::1]:8443', admin: 'localhost:3'}\n"
                          "targets: []\n");
    const al_listen_addr *p = &t->listen.proxy_addr, *s = &t->listen.tls_addr;
    assert_non_null(p->host);
    assert_int_equal(p->host_len, 7);
    assert_memory_equal(p->host, "0.0.0.0", 7);
    assert_int_equal(p->port, 8080);
    assert_non_null(s->host);
    assert_int_equal(s->host_len, 3);
    assert_memory_equal(s->host, "::1", 3);
    assert_int_equal(s->port, 8443);
    al_table_unref(t);
    t = load_ok("listen: {proxy: 'Airlock.Internal:1'}\ntargets: []\n");
    assert_int_equal(t->listen.proxy_addr.host_len, 16);
    assert_memory_equal(t->listen.proxy_addr.host, "Airlock.Internal", 16);
    assert_int_equal(t->listen.proxy_addr.port, 1);
    assert_null(t->listen.tls_addr.host);
    al_table_unref(t);
    al_listen_addr a;
    assert_int_equal(al_table_listen_addr(NULL, &a), AL_ERR_INVAL);
    assert_null(a.host);
    assert_int_equal(al_table_listen_addr("not an address:1", &a), AL_ERR_INVAL);
    assert_null(a.host);
    assert_int_equal(al_table_listen_addr("*:99", &a), AL_OK); /* the wildcard's spelling */
    assert_int_equal(a.host_len, 7);
    assert_memory_equal(a.host, "0.0.0.0", 7);
    assert_int_equal(a.port, 99);
}

static void test_explicit_sections(void **state)
{
    (void)state;
    al_table *t = load_ok("listen: {proxy: '127.0.0.1:1', tls: '[::1]:2', admin: 'localhost:3'}\n"
                          "environment: prod\n"
                          "inbound: {mode: none}\n"
                          "policy: {}\n"
                          "limits: {max_body_bytes: 1048576, workers: 4, max_header_bytes: 8192}\n"
                          "headers: {via: false, x_forwarded_for: true}\n"
                          "egress: {passthrough: [exact.example.com, '*.example.org']}\n"
                          "audit: {file: /var/log/airlock.log}\n"
                          "targets:\n"
                          "  - name: pool\n"
                          "    type: openapi\n"
                          "    url: https://p.example.com\n"
                          "    auth:\n"
                          "      method: oauth2_2lo\n"
                          "      provider: [c1, c2]\n"
                          "      fallback_provider: c3\n"
                          "      scopes: [a, b]\n"
                          "      audience: https://p.example.com\n"
                          "      custom_parameters: {resource: x}\n"
                          "      token_cache: shared\n");
    assert_string_equal(t->listen.tls, "[::1]:2");
    assert_int_equal(t->limits.max_body_bytes, 1048576);
    assert_int_equal(t->limits.workers, 4);
    assert_int_equal(t->limits.max_header_bytes, 8192);
    assert_int_equal(t->headers.add_via, 0);
    assert_int_equal(t->headers.add_x_forwarded_for, 1);
    assert_int_equal(t->egress.passthrough_count, 2);
    assert_string_equal(t->egress.passthrough[1], "*.example.org");
    assert_string_equal(t->audit.file, "/var/log/airlock.log");
    const al_target *g = &t->targets[0];
    assert_string_equal(g->environment, "prod");
    assert_int_equal(g->auth.provider_count, 2);
    assert_string_equal(g->auth.providers[1], "c2");
    assert_int_equal(g->auth.provider_marks[1].line, 15);
    assert_int_equal(g->auth.provider_marks[1].column, 22);
    assert_string_equal(g->auth.fallback_provider, "c3");
    assert_int_equal(g->auth.scope_count, 2);
    assert_string_equal(g->auth.audience, "https://p.example.com");
    assert_int_equal(g->auth.custom_parameter_count, 1);
    assert_string_equal(g->auth.custom_parameters[0].key, "resource");
    assert_int_equal(g->auth.token_cache_shared, 1);
    assert_null(g->auth.name); /* api_key fields stay unset for oauth */
    al_table_unref(t);
}

static void test_iam_derived(void **state)
{
    (void)state;
    al_table *t =
        load_ok("targets:\n"
                "  - name: fn\n"
                "    type: lambda\n"
                "    function_arn: arn:aws:lambda:eu-central-1:123456789012:function:f:$LATEST\n"
                "    auth: {method: iam}\n"
                "  - name: fn-local\n"
                "    type: lambda\n"
                "    function_arn: arn:aws:lambda:eu-central-1:123456789012:function:f:7\n"
                "    endpoint: http://127.0.0.1:9001/\n"
                "    allow_insecure_upstream: true\n"
                "    auth: {method: iam, provider: aws}\n"
                "  - name: gw\n"
                "    type: api_gateway\n"
                "    url: https://x1.execute-api.ap-southeast-2.amazonaws.com/stage\n"
                "    auth: {method: iam}\n");
    const al_target *fn = &t->targets[0], *loc = &t->targets[1], *gw = &t->targets[2];
    assert_string_equal(fn->auth.region, "eu-central-1");
    assert_string_equal(fn->auth.service, "lambda");
    assert_string_equal(fn->host, "lambda.eu-central-1.amazonaws.com");
    assert_string_equal(fn->url, "https://lambda.eu-central-1.amazonaws.com/2015-03-31/functions/"
                                 "arn:aws:lambda:eu-central-1:123456789012:function:f:$LATEST");
    assert_int_equal(fn->auth.provider_count, 0);
    assert_string_equal(loc->host, "127.0.0.1");
    assert_int_equal(loc->port, 9001);
    assert_string_equal(
        loc->base_path,
        "/2015-03-31/functions/arn:aws:lambda:eu-central-1:123456789012:function:f:7");
    assert_string_equal(gw->auth.region, "ap-southeast-2");
    assert_string_equal(gw->auth.service, "execute-api");
    /* credential source: the store with a provider, else the environment; 6 MiB bodies */
    assert_string_equal(fn->auth.source, "environment");
    assert_string_equal(loc->auth.source, "store");
    assert_int_equal(fn->auth.max_body_bytes, 6291456);
    assert_null(fn->auth.role_arn);
    al_table_unref(t);
}

static void test_iam_sources(void **state)
{
    (void)state;
    al_table *t = load_ok("targets:\n"
                          "  - name: s\n"
                          "    type: smithy\n"
                          "    url: https://dynamodb.eu-west-1.amazonaws.com\n"
                          "    auth: {method: iam, region: eu-west-1, service: dynamodb,\n"
                          "           source: web_identity, role_arn: 'arn:aws:iam::1:role/r',\n"
                          "           external_id: x-1, max_body_bytes: 1024}\n");
    const al_auth *a = &t->targets[0].auth;
    assert_string_equal(a->source, "web_identity");
    assert_string_equal(a->role_arn, "arn:aws:iam::1:role/r");
    assert_string_equal(a->external_id, "x-1");
    assert_int_equal(a->max_body_bytes, 1024);
    al_table_unref(t);
    const char *head = "targets:\n  - {name: s, type: smithy, url: 'https://h', auth: {method: iam, "
                       "region: us-east-1, service: s3, ";
    char y[512];
    snprintf(y, sizeof y, "%ssource: imdsv1}}\n", head);
    expect_error(y, "t.yaml:2:107: error: unknown source 'imdsv1'; did you mean 'imds'? (one of: "
                    "store, environment, container, imds, web_identity)\n");
    snprintf(y, sizeof y, "%ssource: imds, provider: p}}\n", head);
    expect_error(y, "t.yaml:2:107: error: target 's': source 'imds' takes no 'provider' (the "
                    "credentials come from the imds); drop one of them\n");
    snprintf(y, sizeof y, "%ssource: store}}\n", head);
    expect_error(y, "t.yaml:2:107: error: target 's': source 'store' needs a 'provider' (an aws "
                    "provider in the identity store)\n");
    snprintf(y, sizeof y, "%srole_arn: 'arn:aws:iam::1:user/u'}}\n", head);
    expect_error(y, "t.yaml:2:109: error: target 's': role_arn 'arn:aws:iam::1:user/u' is not a "
                    "role ARN (arn:aws:iam::ACCOUNT:role/NAME)\n");
    snprintf(y, sizeof y, "%sexternal_id: e}}\n", head);
    expect_error(y, "t.yaml:2:112: error: target 's': external_id needs role_arn (it is a "
                    "parameter of AssumeRole)\n");
    expect_error("targets:\n  - {name: s, type: openapi, url: 'https://h', auth: {method: api_key, "
                 "provider: p, source: environment}}\n",
                 "t.yaml:2:85: error: target 's': 'source' does not apply to auth method "
                 "'api_key' (only to: iam)\n");
}

static void test_positions(void **state)
{
    (void)state;
    /* syntax errors carry line:column too */
    expect_error("targets:\n  - {name: s, type: openapi, url: 'https://h', upstream: {protocol: "
                 "h3}}\n",
                 "t.yaml:2:69: error: unknown protocol 'h3'; did you mean 'h1'? (one of: auto, h1, "
                 "h2)\n");
    expect_error("targets:\n  - {name: s, type: openapi, url: 'https://h', upstream: {protcol: "
                 "h2}}\n",
                 "t.yaml:2:59: error: unknown key 'protcol' in 'upstream'; did you mean "
                 "'protocol'?\n");
    expect_error("targets:\n  - name: [a\n",
                 "t.yaml:3:1: error: YAML syntax error: did not find expected ',' or ']' (while "
                 "parsing a flow sequence at line 2, column 11)\n");
    expect_error("listen:\n  proxy: 127.0.0.1:8080\n  admn: 127.0.0.1:8081\n",
                 "t.yaml:3:3: error: unknown key 'admn' in 'listen'; did you mean 'admin'?\n");
    /* all errors in one run, sorted by position */
    expect_error("targets:\n"
                 "  - {name: a, type: lambda, function_arn: 'arn:aws:lambda:x'}\n"
                 "  - {name: a, type: openapi, url: 'https://h', auth: {method: iam}}\n"
                 "limits: {workers: lots}\n",
                 "t.yaml:2:43: error: target 'a': function_arn: not a Lambda function ARN "
                 "(expected arn:aws:lambda:REGION:ACCOUNT_ID:function:NAME[:QUALIFIER])\n"
                 "t.yaml:3:12: error: duplicate target name 'a' (first defined at line 2)\n"
                 "t.yaml:3:55: error: target 'a': iam needs 'region'\n"
                 "t.yaml:3:55: error: target 'a': iam on type 'openapi' needs 'service' (the "
                 "SigV4 signing name)\n"
                 "t.yaml:3:63: error: target 'a': type 'openapi' does not allow auth method 'iam' "
                 "(openapi allows: oauth2_2lo, oauth2_3lo, api_key)\n"
                 "t.yaml:4:19: error: 'limits.workers' must be a whole number, not 'lots'\n");
}

static void test_empty_and_odd_documents(void **state)
{
    (void)state;
    /* an empty document is a truncated file, never "0 targets" (a reload keeps the old) */
    const char *const empty[] = {"", "\n", "   \n  \n", "# only a comment\n", "\n# a\n\n# b",
                                 "---\n", "--- # c\n...\n", "~\n", "null\n"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++)
        expect_error(empty[i], "t.yaml:1:1: error: the table is empty (no listen:, no targets:); "
                               "write `targets: []` for a table without targets\n");
    al_table *t = load_ok("targets: []\n");
    assert_int_equal(t->target_count, 0);
    assert_non_null(t->router);
    al_table_unref(t);
    expect_error("- a\n- b\n",
                 "t.yaml:1:1: error: the table must be a mapping (listen:, targets:, ...)\n");
    /* anchors and aliases resolve; a key may not repeat */
    t = load_ok("targets:\n"
                "  - name: a\n"
                "    type: openapi\n"
                "    url: https://a\n"
                "    auth: &k {method: api_key, provider: k}\n"
                "  - name: b\n"
                "    type: openapi\n"
                "    url: https://b\n"
                "    auth: *k\n");
    assert_string_equal(t->targets[1].auth.providers[0], "k");
    al_table_unref(t);
}

/* ---- files, refcounts, router, providers ----------------------------------------- */

static void test_paths_resolved_against_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_table_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[128], file[160], ca[160];
    snprintf(sub, sizeof sub, "%s/conf", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(ca, sizeof ca, "%s/ca.pem", sub);
    FILE *f = fopen(ca, "w");
    fputs("not checked here\n", f);
    fclose(f);
    snprintf(file, sizeof file, "%s/table.yaml", sub);
    f = fopen(file, "w");
    fputs("state_dir: ../state\naudit: {file: logs/audit.log}\n"
          "targets:\n  - {name: a, type: openapi, url: 'https://a', ca_file: ca.pem}\n",
          f);
    fclose(f);
    al_diags d;
    al_table *t = NULL;
    al_diags_init(&d);
    assert_int_equal(al_table_load(file, &t, &d), AL_OK);
    char want[256];
    snprintf(want, sizeof want, "%s/../state", sub);
    assert_string_equal(t->state_dir, want);
    snprintf(want, sizeof want, "%s/logs/audit.log", sub);
    assert_string_equal(t->audit.file, want);
    assert_string_equal(t->targets[0].ca_file, ca);
    assert_string_equal(t->path, file);
    al_table_unref(t);
    /* peek: only state_dir, same resolution, even when the rest is invalid */
    char *peek = al_table_peek_state_dir(file);
    snprintf(want, sizeof want, "%s/../state", sub);
    assert_string_equal(peek, want);
    free(peek);
    f = fopen(file, "w");
    fputs("state_dir: /abs/state\ntargets: [ {bogus: 1} ]\n", f);
    fclose(f);
    peek = al_table_peek_state_dir(file);
    assert_string_equal(peek, "/abs/state");
    free(peek);
    f = fopen(file, "w");
    fputs("targets: []\n", f);
    fclose(f);
    assert_null(al_table_peek_state_dir(file));
    assert_null(al_table_peek_state_dir("/nonexistent/table.yaml"));
    /* an unreadable file: one diagnostic without position, AL_ERR_IO */
    assert_int_equal(al_table_load("/nonexistent/table.yaml", &t, &d), AL_ERR_IO);
    assert_int_equal(d.count, 1);
    assert_int_equal(d.items[0].line, 0);
    al_diags_free(&d);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void *ref_unref_many(void *arg)
{
    al_table *t = arg;
    for (int i = 0; i < 20000; i++) {
        al_table *r = al_table_ref(t);
        assert_ptr_equal(r, t);
        al_table_unref(r);
    }
    return NULL;
}

static void test_refcount(void **state)
{
    (void)state;
    al_table *t = load_ok("targets:\n  - {name: a, type: openapi, url: 'https://a'}\n");
    assert_int_equal(atomic_load(&t->refs), 1);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, ref_unref_many, t), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&t->refs), 1);
    /* a request holding a reference keeps the old snapshot alive after a swap */
    al_table *held = al_table_ref(t);
    al_table_unref(t);
    assert_int_equal(atomic_load(&held->refs), 1);
    assert_string_equal(held->targets[0].name, "a"); /* ASan: not freed yet */
    al_table_unref(held);
    al_table_unref(NULL);
}

static void test_router_built(void **state)
{
    (void)state;
    al_table *t = load_ok("targets:\n"
                          "  - {name: root, type: openapi, url: 'https://api.example.com'}\n"
                          "  - {name: v2, type: openapi, url: 'https://api.example.com/v2'}\n");
    const al_target *g = al_router_find(t->router, "API.example.com", 15, 443, "/v2/x", 5);
    assert_non_null(g);
    assert_string_equal(g->name, "v2");
    g = al_router_find(t->router, "api.example.com", 15, 443, "/v3", 3);
    assert_non_null(g);
    assert_string_equal(g->name, "root");
    assert_ptr_equal(al_router_find_name(t->router, "v2", 2), &t->targets[1]);
    al_table_unref(t);
}

static const char *fake_store(void *arg, const char *provider)
{
    (void)arg;
    if (!strcmp(provider, "dev-key"))
        return "dev";
    if (!strcmp(provider, "prod-key"))
        return "prod";
    return NULL;
}

static void test_check_providers(void **state)
{
    (void)state;
    al_table *t = load_ok("environment: dev\n"
                          "targets:\n"
                          "  - name: ok\n"
                          "    type: openapi\n"
                          "    url: https://a\n"
                          "    auth: {method: api_key, provider: dev-key}\n"
                          "  - name: x\n"
                          "    type: openapi\n"
                          "    url: https://b\n"
                          "    auth:\n"
                          "      method: oauth2_2lo\n"
                          "      provider: [dev-key, prod-key]\n"
                          "      fallback_provider: missing\n");
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_check_providers(t, fake_store, NULL, &d, NULL), AL_ERR_CONFIG);
    char *got = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&got, &n);
    al_diags_print(&d, m);
    fclose(m);
    assert_string_equal(got, "t.yaml:12:27: error: target 'x' is in environment 'dev' but provider "
                             "'prod-key' belongs to 'prod'; production keys never reach another "
                             "environment: create a provider in 'dev'\n"
                             "t.yaml:13:26: error: target 'x': provider 'missing' is not in the "
                             "identity store; create it with `airlock identity "
                             "create-oauth2-credential-provider --name missing --environment dev "
                             "--client-id ID --client-secret -`\n");
    free(got);
    al_diags_free(&d);
    /* serve's mode: a missing provider is a warning, a wrong environment still an error */
    al_diags missing;
    al_diags_init(&d);
    al_diags_init(&missing);
    assert_int_equal(al_table_check_providers(t, fake_store, NULL, &d, &missing), AL_ERR_CONFIG);
    assert_int_equal(d.count, 1);
    assert_non_null(strstr(d.items[0].message, "belongs to 'prod'"));
    assert_int_equal(missing.count, 1);
    assert_int_equal(missing.items[0].line, 13);
    assert_non_null(strstr(missing.items[0].message, "'missing' is not in the identity store"));
    al_diags_free(&d);
    al_diags_free(&missing);
    al_table_unref(t);
    t = load_ok("targets:\n  - {name: a, type: openapi, url: 'https://a', environment: dev,"
                " auth: {method: api_key, provider: dev-key}}\n");
    al_diags_init(&d);
    assert_int_equal(al_table_check_providers(t, fake_store, NULL, &d, NULL), AL_OK);
    assert_int_equal(d.count, 0);
    al_table_unref(t);
}

/* The missing-provider hint names the target's environment (else the CLI files the
 * provider under "default", which the target refuses) and its method's create verb. */
static void test_create_hints(void **state)
{
    (void)state;
    al_table *t = load_ok("environment: prod\n"
                          "targets:\n"
                          "  - {name: a, type: openapi, url: 'https://a', auth: {method: api_key, "
                          "provider: k}}\n"
                          "  - {name: b, type: openapi, url: 'https://b', environment: default, "
                          "auth: {method: api_key, provider: k}}\n"
                          "  - {name: c, type: openapi, url: 'https://c', environment: staging, "
                          "auth: {method: oauth2_2lo, provider: o}}\n"
                          "  - {name: d, type: api_gateway, url: "
                          "'https://x1.execute-api.eu-west-1.amazonaws.com/s', environment: "
                          "default, auth: {method: iam, provider: w}}\n");
    char buf[512];
    assert_string_equal(al_table_create_hint(&t->targets[0], "k", buf, sizeof buf),
                        "airlock identity create-api-key-credential-provider --name k "
                        "--environment prod --api-key -");
    assert_string_equal(al_table_create_hint(&t->targets[1], "k", buf, sizeof buf),
                        "airlock identity create-api-key-credential-provider --name k --api-key -");
    assert_string_equal(al_table_create_hint(&t->targets[2], "o", buf, sizeof buf),
                        "airlock identity create-oauth2-credential-provider --name o "
                        "--environment staging --client-id ID --client-secret -");
    assert_string_equal(al_table_create_hint(&t->targets[3], "w", buf, sizeof buf),
                        "airlock identity create-aws-credential-provider --name w "
                        "--access-key-id ID --secret-access-key -");
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_check_providers(t, fake_store, NULL, &d, NULL), AL_ERR_CONFIG);
    assert_int_equal(d.count, 4);
    assert_non_null(strstr(d.items[0].message, "--name k --environment prod --api-key -`"));
    al_diags_free(&d);
    /* truncation is safe */
    assert_int_equal(strlen(al_table_create_hint(&t->targets[0], "k", buf, 10)), 9);
    al_table_unref(t);
}

static void test_suggestions(void **state)
{
    (void)state;
    const char *const names[] = {"listen", "targets", "state_dir", "environment"};
    assert_string_equal(al_schema_suggest("tagrets", names, 4), "targets");
    assert_string_equal(al_schema_suggest("statedir", names, 4), "state_dir");
    assert_string_equal(al_schema_suggest("Listen", names, 4), "listen");
    assert_string_equal(al_schema_suggest("enviroment", names, 4), "environment");
    assert_null(al_schema_suggest("zzz", names, 4));
    assert_null(al_schema_suggest("frobnicate", names, 4));
    assert_int_equal(al_schema_distance("kitten", "sitting"), 3);
}

static void test_schema_rows(void **state)
{
    (void)state;
    /* every row documented; the markdown reference has one line per row */
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    al_schema_print_markdown(m);
    fclose(m);
    size_t lines = 0;
    for (char *p = buf; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, AL_S_COUNT + 2);
    for (size_t i = 0; i < AL_S_COUNT; i++) {
        assert_non_null(al_schema_rows[i].path);
        assert_true(strlen(al_schema_rows[i].doc) > 5);
    }
    assert_non_null(strstr(buf, "| `targets[].auth.prefix` | string | `Bearer ` when name is "
                                "Authorization, else empty |"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_tables),
        cmocka_unit_test(test_listen_addresses_read_at_load),
        cmocka_unit_test(test_examples_load),
        cmocka_unit_test(test_all_twenty_pairs),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_explicit_sections),
        cmocka_unit_test(test_iam_derived),
        cmocka_unit_test(test_iam_sources),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_empty_and_odd_documents),
        cmocka_unit_test(test_paths_resolved_against_file),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_router_built),
        cmocka_unit_test(test_check_providers),
        cmocka_unit_test(test_create_hints),
        cmocka_unit_test(test_suggestions),
        cmocka_unit_test(test_schema_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
