/* Unit tests for the request pipeline's stages (proxy/al_request) with a fake
 * upstream engine (al_req_upstream_ops that records what would be sent and lets the
 * test answer) and a fake credential source that answers *pending*, later, or with
 * an error. What is checked: a request waits for its credential in
 * AL_REQ_CREDENTIAL without the upstream starting, then goes with the injected
 * header; a request freed while its credential is pending cancels it exactly once
 * and the callback never runs; a resting pool is 429 with Retry-After; a 401 is
 * retried once with what the source says (a refreshed credential); the decide hook's
 * 407 carries Proxy-Authenticate and nothing is acquired or sent; every request
 * ends with one audit callback whose decision is apart from its outcome. The body
 * spool: a body that arrived while the credential was pending and the rest that
 * comes while the first attempt reads is replayed whole by the retry; a body is not
 * kept when no retry is possible or it is past limits.retry_body_max_bytes (the 401
 * reaches the agent); a kept body the disk cannot hold is 500 body_spool_failed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include <ev.h>
#include <time.h>

#include "common/al_err.h"
#include "proxy/al_request.h"

static const char TABLE[] = "listen:\n"
                            "  proxy: 127.0.0.1:18080\n"
                            "limits:\n"
                            "  spool_memory_bytes: 1024\n"
                            "targets:\n"
                            "  - name: api\n"
                            "    type: openapi\n"
                            "    url: http://127.0.0.1:9/v1\n"
                            "    allow_insecure_upstream: true\n"
                            "    allow_private_network: true\n"
                            "    auth:\n"
                            "      method: api_key\n"
                            "      provider: key-a\n";

/* ---- the fake credential source ---------------------------------------- */

static struct {
    int acquires, cancels, releases, rejected_calls;
    int answer;     /* what acquire returns: AL_ERR_PENDING, AL_OK, or an error */
    uint32_t retry; /* retry_after_s with AL_ERR_AGAIN */
    al_credsrc_done_fn done;
    void *arg;
    int pending_live;
    int no_retry;      /* may_retry answers 0 */
    const char *token; /* the secret handed out */
    al_cred_attempt last_attempt;
} src;

static int fake_acquire(void *self, const al_cred_query *q, al_cred_grant *g,
                        al_credsrc_done_fn done, void *arg, void **pending)
{
    (void)self;
    src.acquires++;
    src.last_attempt = q->attempt;
    if (src.answer == AL_ERR_PENDING) {
        src.done = done;
        src.arg = arg;
        src.pending_live = 1;
        *pending = &src;
        return AL_ERR_PENDING;
    }
    if (src.answer == AL_OK) {
        g->sv = (al_secret_view){.provider = "key-a", .version = 1, .kind = "api_key",
                                 .value = (const unsigned char *)src.token,
                                 .len = strlen(src.token)};
        g->hold = &src;
        return AL_OK;
    }
    g->retry_after_s = src.retry;
    return src.answer;
}

static void fake_cancel(void *self, void *pending)
{
    (void)self;
    assert_ptr_equal(pending, &src);
    assert_true(src.pending_live);
    src.pending_live = 0;
    src.cancels++;
}

static void fake_release(void *self, al_cred_grant *g)
{
    (void)self;
    (void)g;
    src.releases++;
}

static int fake_rejected(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                         al_cred_query *next)
{
    (void)self;
    (void)g;
    (void)status;
    src.rejected_calls++;
    *next = (al_cred_query){.t = q->t, .attempt = AL_CRED_REFRESH};
    return 1;
}

static int fake_may_retry(void *self, const al_cred_query *q, const al_cred_grant *g)
{
    (void)self;
    (void)q;
    (void)g;
    return !src.no_retry;
}

static const al_credsrc_ops fake_ops = {
    .name = "fake",
    .acquire = fake_acquire,
    .cancel = fake_cancel,
    .release = fake_release,
    .rejected = fake_rejected,
    .may_retry = fake_may_retry,
};

/* The source answers later, as from the loop. */
static void answer_pending(int rc, const char *token)
{
    assert_true(src.pending_live);
    src.pending_live = 0;
    al_cred_grant g = {0};
    if (rc == AL_OK) {
        g.sv = (al_secret_view){.provider = "key-a", .version = 2, .kind = "api_key",
                                .value = (const unsigned char *)token, .len = strlen(token)};
        g.hold = &src;
    }
    src.done(src.arg, rc, &g);
}

/* ---- the fake upstream ---------------------------------------------------- */

static struct {
    int starts, cancels;
    const al_upstream_cbs *cbs;
    void *arg;
    char path[256];
    char auth[256]; /* the Authorization header sent, "" none */
    int live;
} up;

static int fake_start(al_upstream_pool *p, const al_upstream_opts *o, const al_upstream_cbs *cb,
                      void *arg, al_upstream_req **out)
{
    (void)p;
    up.starts++;
    up.cbs = cb;
    up.arg = arg;
    up.live = 1;
    snprintf(up.path, sizeof up.path, "%s", o->path);
    up.auth[0] = '\0';
    for (size_t i = 0; i < o->header_count; i++)
        if (o->headers[i].name_len == 13 && !strncasecmp(o->headers[i].name, "authorization", 13))
            snprintf(up.auth, sizeof up.auth, "%.*s", (int)o->headers[i].value_len,
                     o->headers[i].value);
    *out = (al_upstream_req *)(void *)&up;
    return AL_OK;
}

static void fake_cancel_up(al_upstream_req *u)
{
    (void)u;
    up.live = 0;
    up.cancels++;
}

static void fake_nop(al_upstream_req *u)
{
    (void)u;
}

static uint32_t fake_elapsed(const al_upstream_req *u)
{
    (void)u;
    return 1;
}

static const al_req_upstream_ops fake_up = {fake_start, fake_cancel_up, fake_nop, fake_nop,
                                            fake_elapsed};

/* The upstream answers status with body, then ends. */
static void upstream_answers(int status, const char *body)
{
    char len[24];
    snprintf(len, sizeof len, "%zu", strlen(body));
    al_header h[] = {{"content-length", 14, len, strlen(len)}};
    up.cbs->on_head(up.arg, status, h, 1);
    if (*body)
        up.cbs->on_body(up.arg, body, strlen(body));
    up.live = 0;
    up.cbs->on_done(up.arg, AL_UPSTREAM_OK, NULL);
}

/* ---- the sink and the context ------------------------------------------- */

static struct {
    int status, ended, ok;
    int again; /* body() answers AL_ERR_AGAIN this many times first */
    char headers[1024];
    char body[2048];
    size_t body_len;
} sink;

static void s_head(void *arg, int status, const al_header *h, size_t n, int64_t clen)
{
    (void)arg;
    (void)clen;
    sink.status = status;
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof sink.headers - 1; i++)
        o += (size_t)snprintf(sink.headers + o, sizeof sink.headers - o, "%.*s: %.*s\n",
                              (int)h[i].name_len, h[i].name, (int)h[i].value_len, h[i].value);
}

static int s_body(void *arg, const char *d, size_t n)
{
    (void)arg;
    if (sink.again > 0) {
        sink.again--;
        return AL_ERR_AGAIN;
    }
    if (sink.body_len + n < sizeof sink.body) {
        memcpy(sink.body + sink.body_len, d, n);
        sink.body_len += n;
        sink.body[sink.body_len] = '\0';
    }
    return 0;
}

static void s_end(void *arg, int ok)
{
    (void)arg;
    sink.ended++;
    sink.ok = ok;
}

static const al_req_sink test_sink = {s_head, s_body, s_end, NULL, NULL, NULL, NULL};

static struct {
    int records;
    char decision[16], decided_by[16], reason[64], retry[32];
    int status;
} audit;

static void on_finished(void *arg, const al_audit_request *rec)
{
    (void)arg;
    audit.records++;
    audit.status = rec->status;
    snprintf(audit.decision, sizeof audit.decision, "%s", rec->decision ? rec->decision : "");
    snprintf(audit.decided_by, sizeof audit.decided_by, "%s",
             rec->decided_by ? rec->decided_by : "");
    snprintf(audit.reason, sizeof audit.reason, "%s", rec->reason ? rec->reason : "");
    snprintf(audit.retry, sizeof audit.retry, "%s", rec->retry ? rec->retry : "");
}

static al_table *table;
static int holds;

static al_table *t_hold(void *owner, void **hold)
{
    (void)owner;
    holds++;
    *hold = table;
    return table;
}

static void t_release(void *owner, void *hold)
{
    (void)owner;
    assert_ptr_equal(hold, table);
    holds--;
}

static int t_random(void *owner, unsigned char out[16])
{
    (void)owner;
    memset(out, 0xab, 16);
    return 0;
}

static const al_req_ctx_ops ctx_ops = {t_hold, t_release, t_random};

static struct ev_loop *loop;
static al_req_ctx ctx;

static int setup(void **state)
{
    (void)state;
    al_diags d;
    al_diags_init(&d);
    assert_int_equal(al_table_load_mem("t.yaml", TABLE, strlen(TABLE), &table, &d), AL_OK);
    al_diags_free(&d);
    loop = ev_loop_new(EVFLAG_AUTO);
    memset(&ctx, 0, sizeof ctx);
    ctx.loop = loop;
    assert_int_equal(al_resolver_new(loop, &ctx.resolver), AL_OK);
    ctx.upstream = &fake_up;
    for (size_t m = 0; m < AL_AUTH_COUNT; m++)
        ctx.cred[m] = (al_credsrc){&fake_ops, NULL};
    ctx.hooks.finished = on_finished;
    ctx.ops = &ctx_ops;
    ctx.table = table;
    memset(&src, 0, sizeof src);
    memset(&up, 0, sizeof up);
    memset(&sink, 0, sizeof sink);
    memset(&audit, 0, sizeof audit);
    src.token = "tok-1";
    holds = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(holds, 0);
    al_req_ctx_release(&ctx);
    al_resolver_free(ctx.resolver);
    ev_loop_destroy(loop);
    al_table_unref(table);
    return 0;
}

/* Runs the loop until the request leaves `st` (DNS answers) or 5 s pass. */
static void run_while(al_req *r, enum al_req_state st)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (al_request_state(r) == st) {
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 5)
            fail_msg("still %s after 5 s", al_req_state_name(st));
    }
}

static al_req *start_get(const char *path)
{
    al_req *r = al_request_new(&ctx, &test_sink, NULL, "http/1.1", "127.0.0.1:5555");
    assert_non_null(r);
    assert_int_equal(al_request_set_head(r, "GET", 3, NULL, 0, NULL, 0, path, strlen(path)),
                     AL_OK);
    assert_int_equal(al_request_add_header(r, "Authorization", 13, "Bearer agent-own", 16), AL_OK);
    al_request_start(r, 0, 0);
    run_while(r, AL_REQ_RESOLVING);
    return r;
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(al_req_state_name(AL_REQ_NEW), "new");
    assert_string_equal(al_req_state_name(AL_REQ_CREDENTIAL), "credential");
    assert_string_equal(al_req_state_name(AL_REQ_SPOOLING), "spooling");
    assert_string_equal(al_req_state_name(AL_REQ_DONE), "done");
    assert_string_equal(al_req_state_name((enum al_req_state)99), "?");
}

static void test_pending_then_sent(void **state)
{
    (void)state;
    src.answer = AL_ERR_PENDING;
    al_req *r = start_get("/t/api/items?x=1");
    assert_int_equal(al_request_state(r), AL_REQ_CREDENTIAL);
    assert_int_equal(src.acquires, 1);
    assert_int_equal(up.starts, 0); /* nothing goes before the credential */
    /* the worker's loop keeps running meanwhile */
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(al_request_state(r), AL_REQ_CREDENTIAL);
    answer_pending(AL_OK, "tok-late");
    assert_int_equal(al_request_state(r), AL_REQ_UPSTREAM);
    assert_int_equal(up.starts, 1);
    assert_string_equal(up.auth, "Bearer tok-late"); /* the agent's own is gone */
    assert_string_equal(up.path, "/v1/items?x=1");
    upstream_answers(200, "hello");
    assert_int_equal(sink.status, 200);
    assert_string_equal(sink.body, "hello");
    assert_int_equal(sink.ended, 1);
    assert_int_equal(sink.ok, 1);
    al_request_free(r);
    assert_int_equal(src.releases, 1);
    assert_int_equal(src.cancels, 0);
    assert_int_equal(audit.records, 1);
    assert_string_equal(audit.decision, "allow");
    assert_string_equal(audit.decided_by, "route");
    assert_int_equal(audit.status, 200);
}

static void test_free_while_pending_cancels_once(void **state)
{
    (void)state;
    src.answer = AL_ERR_PENDING;
    al_req *r = start_get("/t/api/x");
    assert_int_equal(al_request_state(r), AL_REQ_CREDENTIAL);
    al_request_free(r); /* the agent went away */
    assert_int_equal(src.cancels, 1);
    assert_false(src.pending_live);
    assert_int_equal(src.releases, 0);
    assert_int_equal(up.starts, 0);
    assert_int_equal(sink.ended, 0);
    assert_int_equal(audit.records, 1);
    assert_string_equal(audit.reason, "client_closed");
}

static void test_pending_error_refused(void **state)
{
    (void)state;
    src.answer = AL_ERR_PENDING;
    al_req *r = start_get("/t/api/x");
    answer_pending(AL_ERR_PERM, NULL);
    assert_int_equal(sink.status, 502);
    assert_non_null(strstr(sink.body, "\"error\":\"credential_unavailable\""));
    assert_int_equal(up.starts, 0);
    assert_int_equal(al_request_state(r), AL_REQ_DONE);
    al_request_free(r);
    assert_int_equal(src.cancels, 0);
    /* allowed by the route; the outcome failed: not a denial */
    assert_string_equal(audit.decision, "allow");
    assert_string_equal(audit.reason, "credential_unavailable");
}

static void test_resting_pool_is_429(void **state)
{
    (void)state;
    src.answer = AL_ERR_AGAIN;
    src.retry = 7;
    al_req *r = start_get("/t/api/x");
    assert_int_equal(sink.status, 429);
    assert_non_null(strstr(sink.headers, "retry-after: 7\n"));
    assert_non_null(strstr(sink.body, "\"error\":\"rate_limited\""));
    assert_null(strstr(sink.body, "create it"));
    assert_int_equal(up.starts, 0);
    al_request_free(r);
}

static void test_401_retried_with_refreshed_credential(void **state)
{
    (void)state;
    src.answer = AL_OK;
    src.token = "stale";
    al_req *r = start_get("/t/api/x");
    assert_int_equal(up.starts, 1);
    assert_string_equal(up.auth, "Bearer stale");
    src.token = "fresh";
    upstream_answers(401, "no");
    assert_int_equal(src.rejected_calls, 1);
    assert_int_equal(src.last_attempt, AL_CRED_REFRESH);
    assert_int_equal(up.starts, 2);
    assert_string_equal(up.auth, "Bearer fresh");
    assert_int_equal(sink.status, 0); /* the 401 never reached the agent */
    upstream_answers(401, "still no");
    assert_int_equal(src.rejected_calls, 1); /* one retry at most */
    assert_int_equal(sink.status, 401);
    al_request_free(r);
    assert_int_equal(src.releases, 2);
    assert_string_equal(audit.retry, "refreshed_credential");
}

static int deny_407(void *arg, const al_decide_req *q, al_decision *d)
{
    (void)arg;
    assert_string_equal(q->method, "GET");
    assert_non_null(q->target);
    assert_string_equal(q->target->name, "api");
    /* the agent's headers, Proxy-Authorization included (it never goes upstream) */
    assert_int_equal(q->header_count, 1);
    assert_int_equal(q->headers[0].name_len, 19);
    d->allow = 0;
    d->decided_by = "policy";
    d->rule = "agents-need-a-token";
    d->refusal = AL_REF_PROXY_AUTH_REQUIRED;
    d->message = "send Proxy-Authorization: Bearer <agent token>";
    d->challenge = "Bearer realm=\"airlock\"";
    return 0;
}

static void test_decide_407_challenge(void **state)
{
    (void)state;
    ctx.hooks.decide = deny_407;
    src.answer = AL_OK;
    al_req *r = al_request_new(&ctx, &test_sink, NULL, "http/1.1", "127.0.0.1:5555");
    assert_int_equal(al_request_set_head(r, "GET", 3, NULL, 0, NULL, 0, "/t/api/x", 8), AL_OK);
    assert_int_equal(al_request_add_header(r, "Proxy-Authorization", 19, "Bearer bad", 10), AL_OK);
    al_request_start(r, 0, 0);
    assert_int_equal(sink.status, 407);
    assert_non_null(strstr(sink.headers, "proxy-authenticate: Bearer realm=\"airlock\"\n"));
    assert_non_null(strstr(sink.body, "\"error\":\"proxy_auth_required\""));
    assert_int_equal(src.acquires, 0);
    assert_int_equal(up.starts, 0);
    al_request_free(r);
    ctx.hooks.decide = NULL;
    assert_string_equal(audit.decision, "deny");
    assert_string_equal(audit.decided_by, "policy");
}

static void test_route_denial_is_a_decision(void **state)
{
    (void)state;
    al_req *r = al_request_new(&ctx, &test_sink, NULL, "http/1.1", "127.0.0.1:5555");
    assert_int_equal(al_request_set_head(r, "GET", 3, NULL, 0, NULL, 0, "/t/nope/x", 9), AL_OK);
    al_request_start(r, 0, 0);
    assert_int_equal(sink.status, 404);
    al_request_free(r);
    assert_string_equal(audit.decision, "deny");
    assert_string_equal(audit.decided_by, "route");
    assert_string_equal(audit.reason, "no_such_target");
}

/* audit.on_failure: deny. The log is /dev/full (every write fails): once the writer
 * has said so, an allowed request is refused 503 audit_unavailable in the decide stage,
 * before a credential is taken or anything goes upstream; with continue it goes on. */
static void test_audit_unwritable_denies(void **state)
{
    (void)state;
    al_audit_opts o = {.chain = 1, .slots = 64};
    al_audit *a = NULL;
    if (al_audit_open_opts("/dev/full", &o, &a) != AL_OK)
        skip();
    al_audit_submit_event(a, "probe", NULL, 0);
    for (int i = 0; i < 5000 && al_audit_writable(a); i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_false(al_audit_writable(a));
    ctx.audit = a;
    src.answer = AL_OK;
    /* continue (the default): the request goes on (upstream, via resolve/credential) */
    al_req *r = start_get("/t/api/x");
    assert_int_equal(sink.status, 0);
    assert_int_equal(al_request_state(r), AL_REQ_UPSTREAM);
    assert_int_equal(up.starts, 1);
    al_request_free(r);
    memset(&up, 0, sizeof up);
    src.acquires = 0;
    /* deny */
    table->audit.on_failure = AL_AUDIT_ON_FAILURE_DENY;
    memset(&sink, 0, sizeof sink);
    r = al_request_new(&ctx, &test_sink, NULL, "http/1.1", "127.0.0.1:5555");
    assert_int_equal(al_request_set_head(r, "GET", 3, NULL, 0, NULL, 0, "/t/api/x", 8), AL_OK);
    al_request_start(r, 0, 0);
    assert_int_equal(sink.status, 503);
    assert_non_null(strstr(sink.body, "\"error\":\"audit_unavailable\""));
    assert_non_null(strstr(sink.headers, "retry-after: 1\n"));
    assert_int_equal(src.acquires, 0);
    assert_int_equal(up.starts, 0);
    al_request_free(r);
    assert_string_equal(audit.decision, "deny");
    assert_string_equal(audit.decided_by, "audit");
    assert_string_equal(audit.reason, "audit_unavailable");
    table->audit.on_failure = AL_AUDIT_ON_FAILURE_CONTINUE;
    ctx.audit = NULL;
    al_audit_close(a);
}

static void test_free_in_upstream_cancels_once(void **state)
{
    (void)state;
    src.answer = AL_OK;
    al_req *r = start_get("/t/api/slow");
    assert_int_equal(al_request_state(r), AL_REQ_UPSTREAM);
    assert_true(up.live);
    al_request_free(r); /* the agent left while the upstream works */
    assert_int_equal(up.cancels, 1);
    assert_int_equal(src.releases, 1);
    assert_int_equal(sink.ended, 0);
    assert_int_equal(audit.records, 1);
    assert_string_equal(audit.decision, "allow");
    assert_string_equal(audit.reason, "client_closed");
}

static void test_free_while_refusal_paused(void **state)
{
    (void)state;
    sink.again = 1000; /* the agent reads nothing */
    al_req *r = al_request_new(&ctx, &test_sink, NULL, "h2", "127.0.0.1:5555");
    assert_int_equal(al_request_set_head(r, "GET", 3, NULL, 0, NULL, 0, "/t/nope/x", 9), AL_OK);
    al_request_start(r, 0, 0);
    assert_int_equal(sink.status, 404);
    assert_int_equal(al_request_state(r), AL_REQ_REFUSING);
    al_request_resume_output(r); /* still paused */
    assert_int_equal(sink.ended, 0);
    al_request_free(r);
    assert_int_equal(audit.records, 1);
    assert_string_equal(audit.decision, "deny");
    assert_string_equal(audit.reason, "no_such_target");
    assert_int_equal(src.acquires, 0);
    assert_int_equal(up.starts, 0);
}

static void test_tls_failure_record(void **state)
{
    (void)state;
    al_request_note_tls_failure(&ctx, "127.0.0.1:9", "api.example");
    assert_int_equal(audit.records, 1);
    assert_string_equal(audit.decision, ""); /* no request, no decision */
    assert_string_equal(audit.reason, "tls_handshake_failed");
}

/* A scrubbing filter: the secret it was opened with becomes '*' of the same length,
 * also across chunk boundaries (it holds back a possible prefix). */
typedef struct scrub {
    char secret[64];
    size_t slen;
    char held[64];
    size_t hlen;
} scrub;

static int scrub_run(void *state, const char *in, size_t len, int final, al_buf *out)
{
    scrub *sc = state;
    char buf[256];
    size_t n = 0;
    memcpy(buf, sc->held, sc->hlen);
    n = sc->hlen;
    assert_true(n + len < sizeof buf);
    memcpy(buf + n, in, len);
    n += len;
    size_t i = 0, emit = 0;
    while (i < n) {
        size_t m = 0;
        while (m < sc->slen && i + m < n && buf[i + m] == sc->secret[m])
            m++;
        if (m == sc->slen) {
            memset(buf + i, '*', m);
            i += m;
            emit = i;
        } else if (i + m == n && m > 0 && !final) {
            break; /* a possible start of the secret: hold it back */
        } else {
            i++;
            emit = i;
        }
    }
    if (final)
        emit = n;
    if (al_buf_append(out, buf, emit))
        return -1;
    sc->hlen = n - emit;
    memcpy(sc->held, buf + emit, sc->hlen);
    return 0;
}

static void scrub_free(void *state)
{
    free(state);
}

static int filter_opens;

static int open_scrub(void *arg, const al_target *t, const al_secret_view *sv, int status,
                      const al_header *h, size_t n, al_body_filter *out)
{
    (void)arg;
    (void)t;
    (void)status;
    (void)h;
    (void)n;
    filter_opens++;
    assert_non_null(sv);
    scrub *sc = calloc(1, sizeof *sc);
    memcpy(sc->secret, sv->value, sv->len);
    sc->slen = sv->len;
    *out = (al_body_filter){scrub_run, scrub_free, sc, NULL, NULL};
    return 0;
}

static void test_body_filter_scrubs_across_chunks(void **state)
{
    (void)state;
    src.answer = AL_OK;
    src.token = "tok-1";
    ctx.hooks.body_filter = open_scrub;
    al_req *r = start_get("/t/api/echo");
    assert_int_equal(up.starts, 1);
    const char *parts[] = {"abc tok", "-1 xyz t", "ok-1", " end tok-"};
    al_header h[] = {{"content-length", 14, "28", 2}};
    up.cbs->on_head(up.arg, 200, h, 1);
    assert_int_equal(filter_opens, 1);
    sink.again = 1; /* the agent is slow once: the same bytes come again */
    for (size_t i = 0; i < 4; i++) {
        int rc = up.cbs->on_body(up.arg, parts[i], strlen(parts[i]));
        if (rc == AL_ERR_AGAIN) {
            al_request_resume_output(r);
            rc = up.cbs->on_body(up.arg, parts[i], strlen(parts[i]));
        }
        assert_int_equal(rc, 0);
    }
    up.cbs->on_done(up.arg, AL_UPSTREAM_OK, NULL);
    assert_int_equal(sink.ended, 1);
    assert_int_equal(sink.ok, 1);
    assert_string_equal(sink.body, "abc ***** xyz ***** end tok-");
    assert_int_equal(sink.body_len, 28);
    al_request_free(r);
    ctx.hooks.body_filter = NULL;
    assert_string_equal(audit.decision, "allow");
}

/* ---- the body spool ------------------------------------------------------ */

static size_t consumed; /* request-body bytes the protocol was told it may read on */

static void s_consumed(void *arg, size_t n)
{
    (void)arg;
    consumed += n;
}

static const al_req_sink body_sink = {s_head, s_body, s_end, s_consumed, NULL, NULL, NULL};

static al_req *start_post(int64_t len)
{
    al_req *r = al_request_new(&ctx, &body_sink, NULL, "http/1.1", "127.0.0.1:5555");
    assert_non_null(r);
    assert_int_equal(al_request_set_head(r, "POST", 4, NULL, 0, NULL, 0, "/t/api/up", 9), AL_OK);
    consumed = 0;
    al_request_start(r, 1, len);
    run_while(r, AL_REQ_RESOLVING);
    return r;
}

/* What the upstream engine pulls until the body pauses (AGAIN) or ends. */
static size_t upstream_reads(char *buf, size_t cap, int *ended)
{
    size_t off = 0;
    *ended = 0;
    for (;;) {
        size_t want = cap - off < 16384 ? cap - off : 16384;
        ssize_t n = up.cbs->read_body(up.arg, buf + off, want);
        if (n == AL_ERR_AGAIN)
            break;
        assert_true(n >= 0);
        if (n == 0) {
            *ended = 1;
            break;
        }
        off += (size_t)n;
        assert_true(off <= cap);
    }
    return off;
}

static void write_body(al_req *r, const char *p, size_t n)
{
    while (n) {
        size_t room = al_request_body_room(r);
        assert_true(room > 0);
        size_t k = n < room ? n : room;
        assert_int_equal(al_request_body_write(r, p, k), AL_OK);
        p += k;
        n -= k;
    }
}

static void test_401_retry_replays_the_kept_body(void **state)
{
    (void)state;
    enum { N = 100000 };
    char *body = malloc(N), *got = malloc(N);
    for (size_t i = 0; i < N; i++)
        body[i] = (char)('a' + i % 23);
    src.answer = AL_ERR_PENDING;
    al_req *r = start_post(N);
    assert_int_equal(al_request_state(r), AL_REQ_CREDENTIAL);
    /* bytes that come while the credential is pending wait in the ring */
    write_body(r, body, 30000);
    assert_int_equal(consumed, 0);
    src.answer = AL_OK; /* the retry's credential answers now */
    answer_pending(AL_OK, "tok-1");
    assert_int_equal(up.starts, 1);
    assert_int_equal(consumed, 30000); /* moved into the spool: the agent may go on */
    int ended;
    assert_int_equal(upstream_reads(got, N, &ended), 30000);
    assert_false(ended);
    /* the rest arrives while the first attempt reads (behind the agent) */
    write_body(r, body + 30000, N - 30000);
    assert_int_equal(consumed, N);
    al_request_body_end(r);
    assert_int_equal(upstream_reads(got + 30000, N - 30000, &ended), N - 30000);
    assert_true(ended);
    assert_memory_equal(got, body, N);
    /* 401: the retry sends the very same body again, from the start */
    upstream_answers(401, "no");
    assert_int_equal(up.starts, 2);
    assert_int_equal(sink.status, 0);
    memset(got, 0, N);
    assert_int_equal(upstream_reads(got, N, &ended), N);
    assert_true(ended);
    assert_memory_equal(got, body, N);
    upstream_answers(200, "ok");
    assert_int_equal(sink.status, 200);
    al_request_free(r);
    assert_string_equal(audit.retry, "refreshed_credential");
    free(body);
    free(got);
}

static void test_body_not_kept_without_a_possible_retry_or_past_the_bound(void **state)
{
    (void)state;
    char body[1000], got[1000];
    memset(body, 'x', sizeof body);
    for (int c = 0; c < 2; c++) {
        memset(&up, 0, sizeof up);
        memset(&sink, 0, sizeof sink);
        src.answer = AL_OK;
        src.no_retry = c == 0;
        /* c == 1: a retry is possible, but the body is past retry_body_max_bytes */
        al_req *r = start_post(c == 0 ? (int64_t)sizeof body : 2 * 1024 * 1024);
        assert_int_equal(up.starts, 1);
        assert_int_equal(al_request_body_room(r), AL_REQ_BODY_BUF);
        write_body(r, body, sizeof body);
        /* streamed through the ring: consumed only as the upstream reads */
        assert_int_equal(consumed, 0);
        assert_int_equal(al_request_body_room(r), AL_REQ_BODY_BUF - sizeof body);
        int ended;
        assert_int_equal(upstream_reads(got, sizeof got, &ended), sizeof body);
        assert_int_equal(consumed, sizeof body);
        upstream_answers(401, "no");
        assert_int_equal(up.starts, 1); /* not retried: the 401 reaches the agent */
        assert_int_equal(sink.status, 401);
        al_request_free(r);
        assert_string_equal(audit.retry, "");
    }
}

static void test_kept_body_disk_failure_and_overflow_are_refused(void **state)
{
    (void)state;
    char body[4096];
    memset(body, 'y', sizeof body);
    /* past spool_memory_bytes (1024) into a $TMPDIR that does not exist */
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", "/nonexistent/airlock-spool-test", 1);
    src.answer = AL_OK;
    al_req *r = start_post(sizeof body);
    assert_int_equal(up.starts, 1);
    assert_int_equal(al_request_body_write(r, body, 1024), AL_OK);
    assert_int_equal(al_request_body_write(r, body, 1), AL_ERR_TOOBIG);
    if (saved)
        setenv("TMPDIR", saved, 1);
    else
        unsetenv("TMPDIR");
    free(saved);
    assert_int_equal(sink.status, 500);
    assert_non_null(strstr(sink.body, "\"error\":\"body_spool_failed\""));
    assert_int_equal(up.live, 0); /* the upstream attempt was cancelled */
    al_request_free(r);
    assert_string_equal(audit.reason, "body_spool_failed");

    /* a kept body longer than its declared length (h2 DATA past content-length) */
    memset(&up, 0, sizeof up);
    memset(&sink, 0, sizeof sink);
    r = start_post(100);
    assert_int_equal(al_request_body_write(r, body, 100), AL_OK);
    assert_int_equal(al_request_body_write(r, body, 1), AL_ERR_TOOBIG);
    assert_int_equal(sink.status, 400);
    al_request_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_names),
        cmocka_unit_test_setup_teardown(test_pending_then_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_pending_cancels_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_error_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resting_pool_is_429, setup, teardown),
        cmocka_unit_test_setup_teardown(test_401_retried_with_refreshed_credential, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_decide_407_challenge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_denial_is_a_decision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_unwritable_denies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_filter_scrubs_across_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_upstream_cancels_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_refusal_paused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_failure_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_401_retry_replays_the_kept_body, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_body_not_kept_without_a_possible_retry_or_past_the_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_body_disk_failure_and_overflow_are_refused,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
