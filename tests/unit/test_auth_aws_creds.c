/* Unit tests for auth/al_aws_creds: the parsers, then every credential source
 * against a local fake endpoint (an HTTP server thread in this file that records
 * what it was asked and answers from a route table): the container endpoint with its
 * authorization token, IMDSv2 (the fake refuses a GET without the session token, as
 * IMDS with v1 disabled does, and the test checks none was sent), STS
 * AssumeRoleWithWebIdentity and AssumeRole (signed with the base credentials),
 * expiry and refresh ahead of it, single flight under concurrency, failure backoff
 * and cancellation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "auth/al_aws_creds.h"
#include "identity/al_cred.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- a fake HTTP endpoint ---- */

#define MAX_LOG 64

typedef struct route {
    const char *method, *path; /* path: exact match */
    int status;
    char body[4096];
    const char *need_header; /* "Name: value" that must be present (any case name), else 401 */
    int delay_ms;
} route;

typedef struct fake {
    int fd, port;
    pthread_t th;
    pthread_mutex_t mu;
    route routes[8];
    int nroutes;
    char log[MAX_LOG][8192]; /* full request heads + bodies */
    int nlog;
    atomic_int stop;
} fake;

static void *fake_main(void *arg)
{
    fake *f = arg;
    while (!atomic_load(&f->stop)) {
        int c = accept(f->fd, NULL, NULL);
        if (c < 0)
            continue;
        char buf[8192];
        size_t n = 0;
        char *hend = NULL;
        while (n < sizeof buf - 1) {
            ssize_t r = read(c, buf + n, sizeof buf - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            buf[n] = 0;
            if ((hend = strstr(buf, "\r\n\r\n"))) {
                const char *cl = strcasestr(buf, "\r\ncontent-length:");
                size_t want = cl ? (size_t)atol(cl + 17) : 0;
                if (n >= (size_t)(hend + 4 - buf) + want)
                    break;
            }
        }
        buf[n] = 0;
        char method[16] = "", path[2048] = "";
        sscanf(buf, "%15s %2047s", method, path);
        pthread_mutex_lock(&f->mu);
        if (f->nlog < MAX_LOG)
            snprintf(f->log[f->nlog++], sizeof f->log[0], "%s", buf);
        route rt = {.status = 404};
        snprintf(rt.body, sizeof rt.body, "not found");
        for (int i = 0; i < f->nroutes; i++)
            if (!strcmp(f->routes[i].method, method) && !strcmp(f->routes[i].path, path)) {
                rt = f->routes[i];
                break;
            }
        pthread_mutex_unlock(&f->mu);
        if (rt.need_header && !strcasestr(buf, rt.need_header)) {
            rt.status = 401;
            snprintf(rt.body, sizeof rt.body, "missing %s", rt.need_header);
        }
        if (rt.delay_ms)
            usleep((useconds_t)rt.delay_ms * 1000);
        char out[8192];
        int len = snprintf(out, sizeof out,
                           "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                           rt.status, strlen(rt.body), rt.body);
        if (write(c, out, (size_t)len) < 0) {
            /* the client went away: nothing to do */
        }
        close(c);
    }
    return NULL;
}

static fake *fake_start(void)
{
    fake *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(f->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(f->fd, (struct sockaddr *)&a, &l);
    f->port = ntohs(a.sin_port);
    assert_int_equal(listen(f->fd, 64), 0);
    pthread_create(&f->th, NULL, fake_main, f);
    return f;
}

static void fake_stop(fake *f)
{
    atomic_store(&f->stop, 1);
    /* wake accept() with one connection */
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)f->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(c, (struct sockaddr *)&a, sizeof a) == 0)
        close(c);
    else
        close(c);
    pthread_join(f->th, NULL);
    close(f->fd);
    free(f);
}

static void fake_route(fake *f, const char *method, const char *path, int status, const char *body,
                       const char *need, int delay_ms)
{
    pthread_mutex_lock(&f->mu);
    route *r = NULL;
    for (int i = 0; i < f->nroutes; i++)
        if (!strcmp(f->routes[i].method, method) && !strcmp(f->routes[i].path, path))
            r = &f->routes[i];
    if (!r)
        r = &f->routes[f->nroutes++];
    r->method = method;
    r->path = path;
    r->status = status;
    snprintf(r->body, sizeof r->body, "%s", body);
    r->need_header = need;
    r->delay_ms = delay_ms;
    pthread_mutex_unlock(&f->mu);
}

static int fake_count(fake *f, const char *prefix)
{
    pthread_mutex_lock(&f->mu);
    int n = 0;
    for (int i = 0; i < f->nlog; i++)
        if (!strncmp(f->log[i], prefix, strlen(prefix)))
            n++;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* ---- environment and clock for the providers ---- */

static const char *env_names[16], *env_values[16];
static int nenv;

static void env_set(const char *name, const char *value)
{
    for (int i = 0; i < nenv; i++)
        if (!strcmp(env_names[i], name)) {
            env_values[i] = value;
            return;
        }
    env_names[nenv] = name;
    env_values[nenv++] = value;
}

static const char *fake_env(const char *name)
{
    for (int i = 0; i < nenv; i++)
        if (!strcmp(env_names[i], name))
            return env_values[i];
    return NULL;
}

static atomic_llong fake_now;

static int64_t clock_fn(void *arg)
{
    (void)arg;
    return atomic_load(&fake_now);
}

static int setup(void **state)
{
    (void)state;
    nenv = 0;
    atomic_store(&fake_now, 1764440000); /* 2025-11-29T18:13:20Z */
    return 0;
}

static void iso(int64_t t, char *out, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A waiter that records its callback. */
typedef struct waitrec {
    al_aws_waiter w;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int called, rc;
} waitrec;

static void waitrec_init(waitrec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void on_done(void *arg, int rc)
{
    waitrec *r = arg;
    pthread_mutex_lock(&r->mu);
    r->called++;
    r->rc = rc;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Waits (deadline 10 s) for the callback; returns its rc. */
static int waitrec_wait(waitrec *r)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&r->mu);
    while (!r->called)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl))
            break;
    int rc = r->called ? r->rc : 999;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* get(), waiting for a pending answer; returns the final rc. */
static int get_wait(al_aws_provider *p, al_aws_credentials **out)
{
    waitrec r;
    waitrec_init(&r);
    const char *detail;
    int rc = al_aws_provider_get(p, out, &r.w, on_done, &r, &detail);
    if (rc != AL_ERR_AGAIN)
        return rc;
    rc = waitrec_wait(&r);
    if (rc)
        return rc;
    return al_aws_provider_get(p, out, NULL, NULL, NULL, &detail);
}

/* ---- parsers ---- */

static void test_parse_time(void **state)
{
    (void)state;
    int64_t t;
    assert_int_equal(al_aws_parse_time("2015-08-30T12:36:00Z", 20, &t), 0);
    assert_int_equal(t, 1440938160);
    assert_int_equal(al_aws_parse_time("2015-08-30T12:36:00.123Z", 24, &t), 0);
    assert_int_equal(t, 1440938160);
    assert_int_equal(al_aws_parse_time("2015-08-30T14:36:00+02:00", 25, &t), 0);
    assert_int_equal(t, 1440938160);
    const char *bad[] = {"",
                         "2015-08-30",
                         "2015-08-30T12:36:00",
                         "2015-13-30T12:36:00Z",
                         "2015-08-30T12:36:00Zx",
                         "2015-08-30T12:36:00.Z",
                         "2O15-08-30T12:36:00Z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(al_aws_parse_time(bad[i], strlen(bad[i]), &t), AL_ERR_INVAL);
}

static void test_parse_json(void **state)
{
    (void)state;
    al_aws_credentials *c = NULL;
    const char *ok =
        "{\"Code\":\"Success\",\"AccessKeyId\":\"ASIAX\",\"SecretAccessKey\":\"s/k+1\","
        "\"Token\":\"tok\",\"Expiration\":\"2015-08-30T12:36:00Z\"}";
    assert_int_equal(al_aws_parse_json_credentials(ok, strlen(ok), "imds", &c), 0);
    assert_string_equal(c->access_key_id, "ASIAX");
    assert_memory_equal(c->secret, "s/k+1", 5);
    assert_string_equal((char *)c->token, "tok");
    assert_int_equal(c->expires_at, 1440938160);
    assert_string_equal(c->source, "imds");
    al_aws_credentials_unref(c);
    const char *bad[] = {
        "{\"Code\":\"Failure\",\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\"}",
        "{\"AccessKeyId\":\"A\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\",\"Token\":\"a\\r\\nX: y\"}",
        "{\"AccessKeyId\":\"A\\n\",\"SecretAccessKey\":\"s\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\",\"Expiration\":\"tomorrow\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":7}",
        "[]",
        "not json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (al_aws_parse_json_credentials(bad[i], strlen(bad[i]), "x", &c) == AL_OK)
            fail_msg("accepted: %s", bad[i]);
}

static const char *sts_xml_fmt =
    "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
    "  <AssumeRoleResult>\n"
    "    <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/airlock</Arn>"
    "<AssumedRoleId>AROA:airlock</AssumedRoleId></AssumedRoleUser>\n"
    "    <Credentials>\n"
    "      <AccessKeyId>%s</AccessKeyId>\n"
    "      <SecretAccessKey>%s</SecretAccessKey>\n"
    "      <SessionToken>%s</SessionToken>\n"
    "      <Expiration>%s</Expiration>\n"
    "    </Credentials>\n"
    "  </AssumeRoleResult>\n"
    "</AssumeRoleResponse>\n";

static void test_parse_sts_xml(void **state)
{
    (void)state;
    char xml[4096];
    snprintf(xml, sizeof xml, sts_xml_fmt, "ASIAROLE", "sec&amp;ret&lt;",
             "TOKEN/+=", "2015-08-30T12:36:00Z");
    al_aws_credentials *c = NULL;
    assert_int_equal(al_aws_parse_sts_xml(xml, strlen(xml), "assume_role", &c), 0);
    assert_string_equal(c->access_key_id, "ASIAROLE");
    assert_string_equal((char *)c->secret, "sec&ret<");
    assert_string_equal((char *)c->token, "TOKEN/+=");
    assert_int_equal(c->expires_at, 1440938160);
    al_aws_credentials_unref(c);
    const char *err = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
                      "<Message>no</Message></Error></ErrorResponse>";
    assert_int_equal(al_aws_parse_sts_xml(err, strlen(err), "x", &c), AL_ERR_PERM);
    snprintf(xml, sizeof xml, sts_xml_fmt, "A", "s", "", "2015-08-30T12:36:00Z");
    assert_int_equal(al_aws_parse_sts_xml(xml, strlen(xml), "x", &c), AL_ERR_PROTO);
    snprintf(xml, sizeof xml, sts_xml_fmt, "A", "s", "t&#10;x", "2015-08-30T12:36:00Z");
    assert_int_equal(al_aws_parse_sts_xml(xml, strlen(xml), "x", &c), AL_ERR_PROTO);
    snprintf(xml, sizeof xml, sts_xml_fmt, "A", "s", "t", "later");
    assert_int_equal(al_aws_parse_sts_xml(xml, strlen(xml), "x", &c), AL_ERR_PROTO);
    assert_int_equal(al_aws_parse_sts_xml("<Credentials>", 13, "x", &c), AL_ERR_PROTO);
}

/* A fake STS answering POST / with credentials `akid` valid for `life` seconds from
 * the fake clock; ep gets its URL. */
static fake *sts_fake(const char *akid, int64_t life, const char *need, int delay_ms, char ep[128])
{
    fake *f = fake_start();
    char xml[4096], exp[64];
    iso(atomic_load(&fake_now) + life, exp, sizeof exp);
    snprintf(xml, sizeof xml, sts_xml_fmt, akid, "s", "t", exp);
    fake_route(f, "POST", "/", 200, xml, need, delay_ms);
    snprintf(ep, 128, "http://127.0.0.1:%d", f->port);
    return f;
}

/* ---- sources ---- */

static int store_base(void *arg, al_aws_credentials **out)
{
    return al_aws_credentials_from_view(arg, out);
}

static void test_store_source(void **state)
{
    (void)state;
    al_secret_view v = {.provider = "prod-aws",
                        .kind = "aws",
                        .value = (const unsigned char *)"storesecret",
                        .len = 11,
                        .session_token = (const unsigned char *)"storetok",
                        .session_token_len = 8,
                        .config_json = "{\"accessKeyId\":\"AKIDSTORE\",\"region\":\"eu-west-1\"}"};
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_STORE, .base = store_base, .base_arg = &v};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    al_aws_credentials *c = NULL;
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), 0);
    assert_string_equal(c->access_key_id, "AKIDSTORE");
    assert_memory_equal(c->secret, "storesecret", 11);
    assert_string_equal((char *)c->token, "storetok");
    assert_string_equal(c->source, "store");
    al_aws_credentials_unref(c);
    /* not an aws provider, or no access key id: no credentials */
    v.kind = "api_key";
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), AL_ERR_INVAL);
    v.kind = "aws";
    v.config_json = "{}";
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), AL_ERR_INVAL);
    v.config_json = "{\"accessKeyId\":\"AK\\r\\nX\"}";
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), AL_ERR_INVAL);
    al_aws_provider_free(p);
    cfg.base = NULL;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
}

static void test_environment_source(void **state)
{
    (void)state;
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_ENVIRONMENT, .getenv_fn = fake_env};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
    assert_non_null(strstr(detail, "AWS_SECRET_ACCESS_KEY"));
    env_set("AWS_ACCESS_KEY_ID", "AKIDENV");
    env_set("AWS_SECRET_ACCESS_KEY", "secretenv");
    env_set("AWS_SESSION_TOKEN", "tokenenv");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    al_aws_credentials *c = NULL;
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), 0);
    assert_string_equal(c->access_key_id, "AKIDENV");
    assert_string_equal((char *)c->token, "tokenenv");
    assert_int_equal(c->expires_at, 0);
    assert_string_equal(al_aws_provider_source(p), "environment");
    al_aws_credentials_unref(c);
    al_aws_provider_free(p);
    env_set("AWS_SESSION_TOKEN", "bad\ntoken");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
}

static void test_container_source(void **state)
{
    (void)state;
    fake *f = fake_start();
    char url[256], body[1024], exp[64];
    iso(atomic_load(&fake_now) + 3600, exp, sizeof exp);
    snprintf(
        body, sizeof body,
        "{\"AccessKeyId\":\"ASIACONT\",\"SecretAccessKey\":\"contsecret\",\"Token\":\"conttok\","
        "\"Expiration\":\"%s\"}",
        exp);
    fake_route(f, "GET", "/v2/credentials/abc", 200, body, "Authorization: Bearer podtoken", 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/credentials/abc", f->port);
    env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI", url);
    al_aws_provider_cfg cfg = {
        .source = AL_AWS_SRC_CONTAINER, .getenv_fn = fake_env, .now_fn = clock_fn};
    al_aws_provider *p = NULL;
    const char *detail;
    /* without the token: the endpoint says 401, the caller gets AL_ERR_PERM */
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    al_aws_credentials *c = NULL;
    assert_int_equal(get_wait(p, &c), AL_ERR_PERM);
    /* within a second of a failure: the error again, no new fetch */
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), AL_ERR_PERM);
    assert_non_null(strstr(detail, "container"));
    assert_int_equal(al_aws_provider_fetches(p), 1);
    al_aws_provider_free(p);

    env_set("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer podtoken");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    assert_int_equal(get_wait(p, &c), 0);
    assert_string_equal(c->access_key_id, "ASIACONT");
    assert_string_equal((char *)c->token, "conttok");
    assert_string_equal(c->source, "container");
    al_aws_credentials_unref(c);
    al_aws_provider_free(p);

    /* the token file wins over the variable, and is read at each fetch */
    char tf[] = "/tmp/al_test_tokXXXXXX";
    int fd = mkstemp(tf);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "Bearer podtoken\n", 16), 16);
    close(fd);
    env_set("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer wrong");
    env_set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tf);
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    assert_int_equal(get_wait(p, &c), 0);
    al_aws_credentials_unref(c);
    al_aws_provider_free(p);
    unlink(tf);
    /* neither URI set */
    env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI", NULL);
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
    env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "no-slash");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
    fake_stop(f);
}

static void test_imds_v2_only(void **state)
{
    (void)state;
    fake *f = fake_start();
    char ep[128], body[1024], exp[64];
    iso(atomic_load(&fake_now) + 3600, exp, sizeof exp);
    snprintf(body, sizeof body,
             "{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAIMDS\","
             "\"SecretAccessKey\":\"imdssecret\",\"Token\":\"imdstok\",\"Expiration\":\"%s\"}",
             exp);
    /* IMDS with v1 disabled: the token PUT needs its TTL header, every GET the token. */
    fake_route(f, "PUT", "/latest/api/token", 200, "IMDSTOKEN123",
               "X-aws-ec2-metadata-token-ttl-seconds:", 0);
    fake_route(f, "GET", "/latest/meta-data/iam/security-credentials/", 200, "my-role\n",
               "X-aws-ec2-metadata-token: IMDSTOKEN123", 0);
    fake_route(f, "GET", "/latest/meta-data/iam/security-credentials/my-role", 200, body,
               "X-aws-ec2-metadata-token: IMDSTOKEN123", 0);
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/", f->port);
    env_set("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep);
    al_aws_provider_cfg cfg = {
        .source = AL_AWS_SRC_IMDS, .getenv_fn = fake_env, .now_fn = clock_fn};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    al_aws_credentials *c = NULL;
    assert_int_equal(get_wait(p, &c), 0);
    assert_string_equal(c->access_key_id, "ASIAIMDS");
    assert_string_equal((char *)c->token, "imdstok");
    al_aws_credentials_unref(c);
    /* the first request is the PUT; no GET went without the token (the fake would
     * have answered 401, and the log would show it) */
    assert_int_equal(fake_count(f, "PUT /latest/api/token"), 1);
    assert_int_equal(fake_count(f, "GET "), 2);
    pthread_mutex_lock(&f->mu);
    assert_true(!strncmp(f->log[0], "PUT ", 4));
    for (int i = 0; i < f->nlog; i++)
        if (!strncmp(f->log[i], "GET ", 4))
            assert_non_null(strcasestr(f->log[i], "X-aws-ec2-metadata-token: IMDSTOKEN123"));
    pthread_mutex_unlock(&f->mu);
    al_aws_provider_free(p);

    /* an IMDS that refuses the PUT (v1-only fake): no fallback to a token-less GET */
    fake_route(f, "PUT", "/latest/api/token", 403, "forbidden", NULL, 0);
    int gets_before = fake_count(f, "GET ");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    assert_int_equal(get_wait(p, &c), AL_ERR_PERM);
    assert_int_equal(fake_count(f, "GET "), gets_before);
    al_aws_provider_free(p);
    env_set("AWS_EC2_METADATA_DISABLED", "true");
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
    fake_stop(f);
}

static void test_web_identity_source(void **state)
{
    (void)state;
    char ep[128];
    fake *f = sts_fake("ASIAWEB", 3600, "Action=AssumeRoleWithWebIdentity", 0, ep);
    char tf[] = "/tmp/al_test_witXXXXXX";
    int fd = mkstemp(tf);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "eyJhbGciOi.jwt+/=\n", 18), 18);
    close(fd);
    env_set("AWS_WEB_IDENTITY_TOKEN_FILE", tf);
    env_set("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/irsa");
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_WEB_IDENTITY,
                               .getenv_fn = fake_env,
                               .now_fn = clock_fn,
                               .sts_endpoint = ep};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    al_aws_credentials *c = NULL;
    assert_int_equal(get_wait(p, &c), 0);
    assert_string_equal(c->access_key_id, "ASIAWEB");
    assert_string_equal(c->source, "web_identity");
    al_aws_credentials_unref(c);
    pthread_mutex_lock(&f->mu);
    assert_non_null(strstr(f->log[0], "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Firsa"));
    assert_non_null(strstr(f->log[0], "WebIdentityToken=eyJhbGciOi.jwt%2B%2F%3D"));
    assert_null(strcasestr(f->log[0], "Authorization:")); /* unsigned */
    pthread_mutex_unlock(&f->mu);
    al_aws_provider_free(p);
    unlink(tf);
    env_set("AWS_ROLE_ARN", NULL);
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), AL_ERR_CONFIG);
    fake_stop(f);
}

/* AssumeRole on top of environment credentials: signed with them (their token too). */
static void test_assume_role_signed_with_base(void **state)
{
    (void)state;
    char ep[128];
    fake *f = sts_fake("ASIAROLE", 900, "Action=AssumeRole&", 0, ep);
    env_set("AWS_ACCESS_KEY_ID", "AKIDBASE");
    env_set("AWS_SECRET_ACCESS_KEY", "basesecret");
    env_set("AWS_SESSION_TOKEN", "basetoken");
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_ENVIRONMENT,
                               .getenv_fn = fake_env,
                               .now_fn = clock_fn,
                               .sts_endpoint = ep,
                               .role_arn = "arn:aws:iam::1:role/r",
                               .external_id = "ext-1"};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    assert_string_equal(al_aws_provider_source(p), "assume_role");
    al_aws_credentials *c = NULL;
    assert_int_equal(get_wait(p, &c), 0);
    assert_string_equal(c->access_key_id, "ASIAROLE");
    assert_string_equal((char *)c->secret, "s");
    al_aws_credentials_unref(c);
    pthread_mutex_lock(&f->mu);
    const char *req = f->log[0];
    assert_non_null(strstr(req, "Authorization: AWS4-HMAC-SHA256 Credential=AKIDBASE/"));
    assert_non_null(strstr(req, "/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;"
                                "x-amz-date;x-amz-security-token, Signature="));
    assert_non_null(strstr(req, "X-Amz-Security-Token: basetoken"));
    assert_non_null(strstr(req, "ExternalId=ext-1"));
    assert_non_null(strstr(req, "RoleSessionName=airlock"));
    assert_null(strstr(req, "basesecret"));
    pthread_mutex_unlock(&f->mu);
    al_aws_provider_free(p);
    fake_stop(f);
}

typedef struct racer {
    al_aws_provider *p;
    int rc;
    char akid[64];
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    al_aws_credentials *c = NULL;
    r->rc = get_wait(r->p, &c);
    if (!r->rc) {
        snprintf(r->akid, sizeof r->akid, "%s", c->access_key_id);
        al_aws_credentials_unref(c);
    }
    return NULL;
}

/* Short-lived STS credentials: fetched once for many concurrent callers, served from
 * the cache, refreshed (once) ahead of expiry while callers keep the current set, a
 * failed refresh after expiry reaches the waiters and is not retried within 1 s. */
static void test_expiry_refresh_single_flight(void **state)
{
    (void)state;
    char ep[128], xml[4096], exp[64];
    int64_t t0 = atomic_load(&fake_now);
    fake *f = sts_fake("ASIAONE", 100, NULL, 300, ep); /* slow: callers pile up */
    env_set("AWS_ACCESS_KEY_ID", "AKIDBASE");
    env_set("AWS_SECRET_ACCESS_KEY", "basesecret");
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_ENVIRONMENT,
                               .getenv_fn = fake_env,
                               .now_fn = clock_fn,
                               .sts_endpoint = ep,
                               .role_arn = "arn:aws:iam::1:role/r",
                               .refresh_before_s = 30};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    enum { N = 12 };
    racer rs[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        rs[i] = (racer){.p = p};
        pthread_create(&th[i], NULL, race, &rs[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rs[i].rc, 0);
        assert_string_equal(rs[i].akid, "ASIAONE");
    }
    assert_int_equal(al_aws_provider_fetches(p), 1);
    assert_int_equal(fake_count(f, "POST "), 1);

    /* before the refresh window (expiry 100, window 30): cached, no fetch */
    atomic_store(&fake_now, t0 + 60);
    al_aws_credentials *c = NULL;
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), 0);
    al_aws_credentials_unref(c);
    assert_int_equal(al_aws_provider_fetches(p), 1);

    /* inside the window: answered now with the current set, one refresh starts */
    iso(t0 + 200, exp, sizeof exp);
    snprintf(xml, sizeof xml, sts_xml_fmt, "ASIATWO", "s2", "t2", exp);
    fake_route(f, "POST", "/", 200, xml, NULL, 300);
    atomic_store(&fake_now, t0 + 75);
    for (int i = 0; i < N; i++) {
        assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), 0);
        assert_string_equal(c->access_key_id, "ASIAONE");
        al_aws_credentials_unref(c);
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (int i = 0; i < 500 && al_aws_provider_fetches(p) < 2; i++)
        nanosleep(&ts, NULL);
    assert_int_equal(al_aws_provider_fetches(p), 2);
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), 0);
    assert_string_equal(c->access_key_id, "ASIATWO");
    al_aws_credentials_unref(c);
    assert_int_equal(fake_count(f, "POST "), 2);

    /* expired, and STS now refuses: the waiters get the error, then the error is
     * answered at once for a second, without a new fetch */
    fake_route(f, "POST", "/", 403,
               "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>", NULL, 0);
    atomic_store(&fake_now, t0 + 300);
    assert_int_equal(get_wait(p, &c), AL_ERR_PERM);
    assert_int_equal(al_aws_provider_get(p, &c, NULL, NULL, NULL, &detail), AL_ERR_PERM);
    assert_non_null(strstr(detail, "STS refused"));
    assert_int_equal(al_aws_provider_fetches(p), 3);
    atomic_store(&fake_now, t0 + 302);
    assert_int_equal(get_wait(p, &c), AL_ERR_PERM);
    assert_int_equal(al_aws_provider_fetches(p), 4);
    al_aws_provider_free(p);
    fake_stop(f);
}

static void test_cancel_means_no_callback(void **state)
{
    (void)state;
    char ep[128];
    fake *f = sts_fake("ASIAX", 3600, NULL, 300, ep);
    env_set("AWS_ACCESS_KEY_ID", "AKIDBASE");
    env_set("AWS_SECRET_ACCESS_KEY", "basesecret");
    al_aws_provider_cfg cfg = {.source = AL_AWS_SRC_ENVIRONMENT,
                               .getenv_fn = fake_env,
                               .now_fn = clock_fn,
                               .sts_endpoint = ep,
                               .role_arn = "arn:aws:iam::1:role/r"};
    al_aws_provider *p = NULL;
    const char *detail;
    assert_int_equal(al_aws_provider_new(&cfg, &p, &detail), 0);
    waitrec a, b;
    waitrec_init(&a);
    waitrec_init(&b);
    al_aws_credentials *c = NULL;
    assert_int_equal(al_aws_provider_get(p, &c, &a.w, on_done, &a, &detail), AL_ERR_AGAIN);
    assert_int_equal(al_aws_provider_get(p, &c, &b.w, on_done, &b, &detail), AL_ERR_AGAIN);
    al_aws_provider_cancel(p, &a.w);
    assert_int_equal(waitrec_wait(&b), 0);
    assert_int_equal(a.called, 0);
    assert_int_equal(al_aws_provider_fetches(p), 1);
    al_aws_provider_free(p);
    fake_stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_parse_json),
        cmocka_unit_test(test_parse_sts_xml),
        cmocka_unit_test_setup(test_store_source, setup),
        cmocka_unit_test_setup(test_environment_source, setup),
        cmocka_unit_test_setup(test_container_source, setup),
        cmocka_unit_test_setup(test_imds_v2_only, setup),
        cmocka_unit_test_setup(test_web_identity_source, setup),
        cmocka_unit_test_setup(test_assume_role_signed_with_base, setup),
        cmocka_unit_test_setup(test_expiry_refresh_single_flight, setup),
        cmocka_unit_test_setup(test_cancel_means_no_callback, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
