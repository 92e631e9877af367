/* Unit tests of the metrics module (proxy/al_metrics.c): counts from audit records
 * summed over worker shards, method/status/decision classes, histograms, refusals,
 * egress denials, label escaping, the cardinality cap ("_other"), recent refusals
 * newest first, a writer thread racing the reader, and the whole exposition accepted
 * by Prometheus' own `promtool check metrics`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_metrics.h"

static al_audit_request req(const char *target, const char *method, int status, const char *reason,
                            uint32_t up_ms, uint32_t total_ms)
{
    al_audit_request r;
    memset(&r, 0, sizeof r);
    r.time_ms = 1700000000000;
    r.target = target;
    r.method = method;
    r.status = status;
    r.reason = reason;
    r.decision = reason ? "deny" : "allow";
    r.upstream_addr = up_ms ? "127.0.0.1:443" : NULL;
    r.upstream_ms = up_ms;
    r.total_ms = total_ms;
    r.provider = reason ? NULL : "openai-prod";
    r.provider_version = reason ? 0 : 3;
    return r;
}

static char *render(al_metrics *m, const al_metrics_extra *x)
{
    al_buf b;
    al_buf_init(&b, 1 << 22);
    assert_int_equal(al_metrics_render(m, x, &b), AL_OK);
    return b.data; /* the caller frees */
}

static void assert_has(const char *text, const char *line)
{
    if (!strstr(text, line))
        fail_msg("missing: %s\n--- in ---\n%s", line, text);
}

static void test_counts_summed_over_shards(void **state)
{
    (void)state;
    al_metrics *m;
    assert_int_equal(al_metrics_new(3, &m), AL_OK);
    al_metrics_shard *a = al_metrics_shard_at(m, 0), *b = al_metrics_shard_at(m, 2);
    assert_null(al_metrics_shard_at(m, 3));
    al_audit_request r = req("openai", "POST", 200, NULL, 40, 45);
    for (int i = 0; i < 8; i++)
        al_metrics_count_request(i % 2 ? a : b, &r);
    r = req("openai", "POST", 502, NULL, 3000, 3001);
    al_metrics_count_request(a, &r);
    r = req("openai", "GET", 200, NULL, 2, 3);
    r.scrubbed = 2; /* the upstream echoed the key twice */
    al_metrics_count_request(b, &r);
    r = req("github", "CONNECT", 403, "egress_denied", 0, 1);
    al_metrics_count_request(a, &r);
    r = req(NULL, "GET", 404, "unknown_target", 0, 0);
    al_metrics_count_request(b, &r);
    r = req("github", "BREW", 400, "bad_request", 0, 0);
    al_metrics_count_request(b, &r);
    al_metrics_set_active(a, 4, 2);
    al_metrics_set_active(b, 1, 1);
    al_metrics_count_token(a, "oauth-idp", AL_METRICS_TOKEN_FAILED);
    al_metrics_count_token(b, "oauth-idp", AL_METRICS_TOKEN_FAILED);
    al_metrics_count_token(b, "oauth-idp", AL_METRICS_TOKEN_CACHE_HIT);
    al_metrics_provider prov[] = {{"openai-prod", 3, 1700000000 - 86400, 30 * 86400, NULL}};
    al_metrics_extra x = {.now_ms = 1700000000000,
                          .audit_written = 12,
                          .audit_dropped = 1,
                          .audit_failed = 2,
                          .audit_lag = 5,
                          .table_generation = 4,
                          .providers = prov,
                          .provider_count = 1};
    char *t = render(m, &x);
    assert_has(t, "# TYPE airlock_requests_total counter\n");
    assert_has(t, "airlock_requests_total{target=\"openai\",method=\"write\",status=\"2xx\","
                  "decision=\"allow\"} 8\n");
    assert_has(t, "airlock_requests_total{target=\"openai\",method=\"write\",status=\"5xx\","
                  "decision=\"allow\"} 1\n");
    assert_has(t, "airlock_requests_total{target=\"openai\",method=\"read\",status=\"2xx\","
                  "decision=\"allow\"} 1\n");
    assert_has(t, "airlock_requests_total{target=\"github\",method=\"connect\",status=\"4xx\","
                  "decision=\"deny\"} 1\n");
    assert_has(t, "airlock_requests_total{target=\"github\",method=\"other\",status=\"4xx\","
                  "decision=\"deny\"} 1\n");
    assert_has(t, "airlock_requests_total{target=\"_none\",method=\"read\",status=\"4xx\","
                  "decision=\"deny\"} 1\n");
    /* histograms are cumulative: 1 of 10 under 5 ms, 9 under 50 ms, all under 5 s */
    assert_has(t, "airlock_upstream_duration_seconds_bucket{target=\"openai\",le=\"0.005\"} 1\n");
    assert_has(t, "airlock_upstream_duration_seconds_bucket{target=\"openai\",le=\"0.05\"} 9\n");
    assert_has(t, "airlock_upstream_duration_seconds_bucket{target=\"openai\",le=\"2.5\"} 9\n");
    assert_has(t, "airlock_upstream_duration_seconds_bucket{target=\"openai\",le=\"5\"} 10\n");
    assert_has(t, "airlock_upstream_duration_seconds_bucket{target=\"openai\",le=\"+Inf\"} 10\n");
    assert_has(t, "airlock_upstream_duration_seconds_sum{target=\"openai\"} 3.322\n");
    assert_has(t, "airlock_upstream_duration_seconds_count{target=\"openai\"} 10\n");
    /* no upstream, no upstream histogram; the total one counts every request */
    assert_null(strstr(t, "airlock_upstream_duration_seconds_count{target=\"github\"}"));
    assert_has(t, "airlock_request_duration_seconds_count{target=\"github\"} 2\n");
    assert_has(t, "airlock_refusals_total{reason=\"egress_denied\"} 1\n");
    assert_has(t, "airlock_refusals_total{reason=\"unknown_target\"} 1\n");
    assert_has(t, "airlock_egress_denials_total{target=\"github\"} 1\n");
    assert_has(t, "airlock_egress_denials_total{target=\"openai\"} 0\n");
    assert_has(t, "airlock_scrubbed_secrets_total{target=\"openai\"} 2\n");
    assert_has(t, "airlock_active_connections 5\n");
    assert_has(t, "airlock_active_streams 3\n");
    assert_has(t, "airlock_audit_records_written_total 12\n");
    assert_has(t, "airlock_audit_records_dropped_total 1\n");
    assert_has(t, "airlock_audit_write_failures_total 2\n");
    assert_has(t, "airlock_audit_lag_records 5\n");
    assert_has(t, "airlock_table_generation 4\n");
    assert_has(t, "airlock_token_requests_total{provider=\"oauth-idp\",outcome=\"failed\"} 2\n");
    assert_has(t, "airlock_token_requests_total{provider=\"oauth-idp\",outcome=\"cache_hit\"} 1\n");
    assert_has(t, "airlock_credential_uses_total{provider=\"openai-prod\"} 10\n");
    assert_has(t, "airlock_credential_age_seconds{provider=\"openai-prod\"} 86400\n");
    assert_has(t, "airlock_credential_rotation_max_age_seconds{provider=\"openai-prod\"} "
                  "2592000\n");
    assert_has(t, "airlock_credential_version{provider=\"openai-prod\"} 3\n");
    assert_has(t, "airlock_credential_last_use_timestamp_seconds{provider=\"openai-prod\"} "
                  "1700000000.000\n");
    /* never a path, host or client as a label */
    assert_null(strstr(t, "path="));
    assert_null(strstr(t, "client="));
    assert_int_equal(al_metrics_provider_last_use(m, "openai-prod"), 1700000000000);
    assert_int_equal(al_metrics_provider_last_use(m, "nobody"), 0);

    al_metrics_target_summary sum[8];
    size_t n = al_metrics_targets(m, sum, 8);
    assert_int_equal(n, 3); /* _none, github, openai (sorted) */
    assert_string_equal(sum[2].name, "openai");
    assert_int_equal(sum[2].requests, 10);
    assert_int_equal(sum[2].errors, 1);
    assert_string_equal(sum[1].name, "github");
    assert_int_equal(sum[1].denied, 2);
    assert_int_equal(sum[1].errors, 2);
    assert_int_equal(sum[0].errors, 1); /* _none: the 404 unknown_target */
    free(t);
    al_metrics_free(m);
}

static void test_escaping_and_cap(void **state)
{
    (void)state;
    al_metrics *m;
    assert_int_equal(al_metrics_new(1, &m), AL_OK);
    al_metrics_shard *sh = al_metrics_shard_at(m, 0);
    al_audit_request r = req("we\"ird\\na\nme", "GET", 200, NULL, 1, 1);
    al_metrics_count_request(sh, &r);
    char name[32];
    for (int i = 0; i < AL_METRICS_TARGETS_MAX + 50; i++) {
        snprintf(name, sizeof name, "t%d", i);
        r = req(name, "GET", 200, NULL, 1, 1);
        al_metrics_count_request(sh, &r);
    }
    /* a name longer than the cut still counts under its (cut) self */
    char longname[300];
    memset(longname, 'L', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    char *t = render(m, NULL);
    assert_has(t, "target=\"we\\\"ird\\\\na\\nme\"");
    /* 256 distinct names fit (the weird one + t0..t254); the other 51 are "_other" */
    assert_has(t, "airlock_requests_total{target=\"_other\",method=\"read\",status=\"2xx\","
                  "decision=\"allow\"} 51\n");
    assert_has(t, "target=\"t254\"");
    assert_null(strstr(t, "target=\"t255\""));
    free(t);
    al_metrics_free(m);
}

static void test_recent_refusals(void **state)
{
    (void)state;
    al_metrics *m;
    assert_int_equal(al_metrics_new(2, &m), AL_OK);
    for (int i = 0; i < 40; i++) {
        al_audit_request r = req(i % 2 ? "a" : "b", "GET", 403, "matrix_denied", 0, 0);
        r.time_ms = 1000 + i;
        al_metrics_count_request(al_metrics_shard_at(m, (size_t)(i % 2)), &r);
    }
    al_metrics_refusal out[10];
    size_t n = al_metrics_recent_refusals(m, out, 10);
    assert_int_equal(n, 10);
    assert_int_equal(out[0].time_ms, 1039);
    assert_string_equal(out[0].target, "a");
    assert_string_equal(out[0].reason, "matrix_denied");
    assert_int_equal(out[0].status, 403);
    assert_int_equal(out[9].time_ms, 1030);
    al_metrics_free(m);
}

static void *writer(void *arg)
{
    al_metrics_shard *sh = arg;
    char name[16];
    for (int i = 0; i < 200000; i++) {
        snprintf(name, sizeof name, "w%d", i % 300);
        al_audit_request r = req(name, "POST", i % 10 ? 200 : 503, i % 7 ? NULL : "x", 1, 2);
        al_metrics_count_request(sh, &r);
    }
    return NULL;
}

static void test_reader_races_writer(void **state)
{
    (void)state;
    al_metrics *m;
    assert_int_equal(al_metrics_new(1, &m), AL_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer, al_metrics_shard_at(m, 0)), 0);
    for (int i = 0; i < 20; i++) {
        char *t = render(m, NULL);
        free(t);
        al_metrics_refusal out[4];
        al_metrics_recent_refusals(m, out, 4);
    }
    pthread_join(th, NULL);
    al_metrics_target_summary sum[300];
    size_t n = al_metrics_targets(m, sum, 300);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += sum[i].requests;
    assert_int_equal(total, 200000);
    al_metrics_free(m);
}

static void test_promtool_accepts_it(void **state)
{
    (void)state;
    al_metrics *m;
    assert_int_equal(al_metrics_new(2, &m), AL_OK);
    al_audit_request r = req("openai", "POST", 200, NULL, 40, 45);
    al_metrics_count_request(al_metrics_shard_at(m, 0), &r);
    r = req("git\"hub", "CONNECT", 403, "egress_denied", 0, 1);
    al_metrics_count_request(al_metrics_shard_at(m, 1), &r);
    al_metrics_count_token(al_metrics_shard_at(m, 1), "idp", AL_METRICS_TOKEN_FETCHED);
    al_metrics_provider prov[] = {{"openai-prod", 2, 1699990000, 0, NULL}};
    al_metrics_extra x = {.now_ms = 1700000000000, .providers = prov, .provider_count = 1};
    char *t = render(m, &x);
    char path[] = "/tmp/al_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, t, strlen(t)), (ssize_t)strlen(t));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    int rc = system(cmd); /* prints its complaints; Debian's prometheus package */
    unlink(path);
    assert_int_equal(rc, 0);
    free(t);
    al_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_summed_over_shards),
        cmocka_unit_test(test_escaping_and_cap),
        cmocka_unit_test(test_recent_refusals),
        cmocka_unit_test(test_reader_races_writer),
        cmocka_unit_test(test_promtool_accepts_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
