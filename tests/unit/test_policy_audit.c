/* Unit tests of policy/al_audit: the record encoder (valid JSON for any bytes, field
 * budgets), query redaction, and the writer (many producers, full queue drops without
 * blocking, close flushes, reopen). Encoded lines are parsed back with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "policy/al_audit.h"
#include "common/al_err.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A directory of its own for every test (main() sets the setup and teardown on each):
 * no test sees another's files, so any order, any subset, or a test run twice behaves
 * the same. */
static char tmpl_dir[64];

static int setup_dir(void **state)
{
    strcpy(tmpl_dir, "/tmp/test_audit_XXXXXX");
    if (!mkdtemp(tmpl_dir))
        return -1;
    return 0;
}

static int teardown_dir(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpl_dir, name);
}

static al_audit_request sample(void)
{
    al_audit_request r = {
        .time_ms = 1764383400123LL, /* 2025-11-29T02:30:00.123Z */
        .request_id = "rid-1",
        .client = "127.0.0.1:5555",
        .target = "demo",
        .type = "openapi",
        .auth_method = "api_key",
        .provider = "demo-key",
        .provider_version = 3,
        .method = "GET",
        .host = "api.example.com",
        .path = "/v1/x?key=",
        .protocol = "h2",
        .status = 200,
        .bytes_in = 10,
        .bytes_out = 12345678901ULL,
        .upstream_ms = 7,
        .total_ms = 9,
        .decision = "allow",
        .reason = NULL,
    };
    return r;
}

/* Parses one encoded line (must end in exactly one '\n') with jansson in strict mode. */
static json_t *parse_line(const char *line, int len)
{
    assert_true(len > 0);
    assert_int_equal((int)strlen(line), len);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', (size_t)len - 1));
    json_error_t err;
    json_t *j = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        fail_msg("not JSON: %s at %d: %s", err.text, err.position, line);
    assert_true(json_is_object(j));
    return j;
}

static void test_encode_fields(void **state)
{
    char buf[AL_AUDIT_LINE_MAX];
    al_audit_request r = sample();
    int n = al_audit_encode_request(&r, buf, sizeof buf);
    json_t *j = parse_line(buf, n);
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2025-11-29T02:30:00.123Z");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "rid-1");
    assert_string_equal(json_string_value(json_object_get(j, "client")), "127.0.0.1:5555");
    assert_string_equal(json_string_value(json_object_get(j, "target")), "demo");
    assert_string_equal(json_string_value(json_object_get(j, "type")), "openapi");
    assert_string_equal(json_string_value(json_object_get(j, "auth_method")), "api_key");
    assert_string_equal(json_string_value(json_object_get(j, "provider")), "demo-key");
    assert_int_equal(json_integer_value(json_object_get(j, "provider_version")), 3);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(j, "host")), "api.example.com");
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/v1/x?key=");
    assert_string_equal(json_string_value(json_object_get(j, "protocol")), "h2");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    assert_int_equal(json_integer_value(json_object_get(j, "bytes_in")), 10);
    assert_int_equal(json_integer_value(json_object_get(j, "bytes_out")), 12345678901LL);
    assert_int_equal(json_integer_value(json_object_get(j, "upstream_ms")), 7);
    assert_int_equal(json_integer_value(json_object_get(j, "total_ms")), 9);
    assert_string_equal(json_string_value(json_object_get(j, "decision")), "allow");
    assert_true(json_is_null(json_object_get(j, "reason")));
    assert_null(json_object_get(j, "truncated"));
    assert_null(json_object_get(j, "scrubbed")); /* only when something was replaced */
    json_decref(j);
    r.scrubbed = 3;
    n = al_audit_encode_request(&r, buf, sizeof buf);
    j = parse_line(buf, n);
    assert_int_equal(json_integer_value(json_object_get(j, "scrubbed")), 3);
    json_decref(j);
    r.scrubbed = 0;

    /* NULL strings are null; no provider means no version */
    al_audit_request d = {
        .time_ms = 0, .status = 403, .decision = "deny", .reason = "unknown_target"};
    n = al_audit_encode_request(&d, buf, sizeof buf);
    j = parse_line(buf, n);
    assert_true(json_is_null(json_object_get(j, "target")));
    assert_true(json_is_null(json_object_get(j, "provider_version")));
    assert_string_equal(json_string_value(json_object_get(j, "time")), "1970-01-01T00:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "unknown_target");
    json_decref(j);

    /* too small a buffer is an error, not a cut line */
    assert_int_equal(al_audit_encode_request(&r, buf, 50), AL_ERR_TOOBIG);
}

static void test_encode_hostile_strings(void **state)
{
    char buf[AL_AUDIT_LINE_MAX];
    /* round trips: what is valid UTF-8 comes back byte for byte */
    static const char *const same[] = {
        "a\"b\\c",          "line\nbreak\r\t",
        "\x01\x02\x1f\x7f", "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82",
        "</script>",        "\\u0000",
        "{\"injected\":1}",
    };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        al_audit_request r = sample();
        r.path = same[i];
        r.host = same[i];
        int n = al_audit_encode_request(&r, buf, sizeof buf);
        json_t *j = parse_line(buf, n);
        assert_string_equal(json_string_value(json_object_get(j, "path")), same[i]);
        assert_string_equal(json_string_value(json_object_get(j, "host")), same[i]);
        json_decref(j);
    }
    /* not UTF-8: overlong, surrogate, above U+10FFFF, cut sequences, lone continuation */
    static const struct {
        const char *in, *out;
    } bad[] = {
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"a\xed\xa0\x80z", "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe6\x97", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\x80x", "\xef\xbf\xbdx"},
        {"\xff\xfe", "\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        al_audit_request r = sample();
        r.request_id = bad[i].in;
        int n = al_audit_encode_request(&r, buf, sizeof buf);
        json_t *j = parse_line(buf, n);
        assert_string_equal(json_string_value(json_object_get(j, "request_id")), bad[i].out);
        json_decref(j);
    }
    /* random bytes in every field: always one valid JSON line */
    unsigned seed = 12345;
    char fields[12][300];
    for (int round = 0; round < 3000; round++) {
        for (int f = 0; f < 12; f++) {
            int len = (int)(rand_r(&seed) % 299);
            for (int k = 0; k < len; k++)
                fields[f][k] = (char)(1 + rand_r(&seed) % 255);
            fields[f][len] = '\0';
        }
        al_audit_request r = {
            .time_ms = rand_r(&seed),
            .request_id = fields[0],
            .client = fields[1],
            .target = fields[2],
            .type = fields[3],
            .auth_method = fields[4],
            .provider = fields[5],
            .method = fields[6],
            .host = fields[7],
            .path = fields[8],
            .protocol = fields[9],
            .decision = fields[10],
            .reason = fields[11],
        };
        int n = al_audit_encode_request(&r, buf, sizeof buf);
        json_decref(parse_line(buf, n));
    }
}

static void test_encode_huge_fields_fit(void **state)
{
    /* every field at its worst: 6 output bytes per input byte, far over budget */
    size_t big = 100000;
    char *ctl = malloc(big + 1), *multi = malloc(big + 1);
    assert_non_null(ctl);
    assert_non_null(multi);
    memset(ctl, 0x01, big);
    ctl[big] = '\0';
    for (size_t i = 0; i + 3 <= big; i += 3)
        memcpy(multi + i, "\xe6\x97\xa5", 3);
    multi[big - big % 3] = '\0';
    const char *vals[] = {ctl, multi};
    for (int v = 0; v < 2; v++) {
        const char *s = vals[v];
        al_audit_request r = {
            .time_ms = INT64_MAX / 1000000,
            .request_id = s,
            .client = s,
            .target = s,
            .type = s,
            .auth_method = s,
            .provider = s,
            .provider_version = UINT32_MAX,
            .method = s,
            .host = s,
            .path = s,
            .protocol = s,
            .status = 599,
            .bytes_in = UINT64_MAX,
            .bytes_out = UINT64_MAX,
            .upstream_ms = UINT32_MAX,
            .total_ms = UINT32_MAX,
            .decision = s,
            .reason = s,
            .event = s,
            .client_request_id = s,
            .upstream_addr = s,
            .start_ms = INT64_MAX / 1000000,
            .port = UINT16_MAX,
        };
        char *buf = malloc(AL_AUDIT_LINE_MAX);
        assert_non_null(buf);
        int n = al_audit_encode_request(&r, buf, AL_AUDIT_LINE_MAX);
        assert_true(n > 0 && n < AL_AUDIT_LINE_MAX);
        json_t *j = parse_line(buf, n);
        assert_true(json_is_true(json_object_get(j, "truncated")));
        assert_int_equal(json_integer_value(json_object_get(j, "bytes_in")), INT64_MAX);
        const char *path = json_string_value(json_object_get(j, "path"));
        assert_non_null(path);
        size_t pl = strlen(path);
        assert_true(pl > 200);
        assert_string_equal(path + pl - 3, "...");
        json_decref(j);
        free(buf);
    }
    free(ctl);
    free(multi);
}

/* The encoder's one-pass copy of plain strings and its byte-by-byte path agree: a
 * value exactly at its budget comes whole, one byte over is cut with "..."; and a
 * buffer too small for a field's whole budget (the slow path then writes it) gives the
 * same bytes or AL_ERR_TOOBIG, never a different line. */
static void test_encode_budget_edges_and_tight_buffers(void **state)
{
    char path[1602], buf[AL_AUDIT_LINE_MAX];
    for (size_t k = 0; k < sizeof path - 1; k++)
        path[k] = (char)('a' + k % 26);
    /* path's budget is 1600 bytes of output */
    for (size_t len = 1598; len <= 1601; len++) {
        char v[sizeof path];
        memcpy(v, path, len);
        v[len] = '\0';
        al_audit_request r = sample();
        r.path = v;
        int n = al_audit_encode_request(&r, buf, sizeof buf);
        json_t *j = parse_line(buf, n);
        const char *got = json_string_value(json_object_get(j, "path"));
        if (len <= 1600) {
            assert_string_equal(got, v);
            assert_null(json_object_get(j, "truncated"));
        } else {
            assert_int_equal(strlen(got), 1600);
            assert_memory_equal(got, v, 1597);
            assert_string_equal(got + 1597, "...");
            assert_true(json_is_true(json_object_get(j, "truncated")));
        }
        json_decref(j);
    }
    /* the same record into buffers (of exactly cap bytes: ASan sees a byte written past
     * one) from roomy to too small; plain and escaped values, a path at its budget */
    static const char *const hosts[] = {"api.example.com", "a\"b\\c\x01" "caf\xc3\xa9"};
    path[1600] = '\0';
    for (size_t h = 0; h < 3; h++) {
        al_audit_request r = sample();
        r.host = hosts[h % 2];
        if (h == 2)
            r.path = path;
        int n = al_audit_encode_request(&r, buf, sizeof buf);
        json_decref(parse_line(buf, n));
        for (size_t cap = (size_t)n + 300; cap >= 2; cap--) {
            char *tight = malloc(cap);
            assert_non_null(tight);
            int m = al_audit_encode_request(&r, tight, cap);
            if (cap > (size_t)n) {
                assert_int_equal(m, n);
                assert_string_equal(tight, buf);
            } else {
                assert_int_equal(m, AL_ERR_TOOBIG);
            }
            free(tight);
        }
    }
}

static void redact(const char *in, const char *want)
{
    char out[256];
    al_audit_redact_query(in, strlen(in), out, sizeof out);
    assert_string_equal(out, want);
}

static void test_redact_query(void **state)
{
    redact("/v1/chat", "/v1/chat");
    redact("/a?key=sk-secret&x=1", "/a?key=&x=");
    redact("/a?key=sk-secret", "/a?key=");
    redact("/a?sk-bare-token", "/a?");
    redact("/a?x=1&sk-bare&y=2", "/a?x=&&y=");
    redact("/a?x=a=b=c", "/a?x=");
    redact("/a?", "/a?");
    redact("/a?x=1#frag", "/a?x=");
    redact("/a#frag?x=1", "/a");
    redact("http://h:8/p?token=abc", "http://h:8/p?token=");
    redact("", "");
    /* the length is honoured (no NUL needed) and the output is always terminated */
    char out[8];
    al_audit_redact_query("/abc?k=secret", 7, out, sizeof out);
    assert_string_equal(out, "/abc?k=");
    al_audit_redact_query("/a-very-long-path?k=v", 21, out, sizeof out);
    assert_string_equal(out, "/a-very");
    al_audit_redact_query(NULL, 0, out, sizeof out);
    assert_string_equal(out, "");
    /* a secret value never survives, whatever the layout */
    const char *secret = "SUPERSECRET";
    char in[128], got[128];
    const char *layouts[] = {"/p?a=%s", "/p?a=1&b=%s", "/p?%s", "/p?a=1&%s&c=2", "/p?a=%s#x"};
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        snprintf(in, sizeof in, layouts[i], secret);
        al_audit_redact_query(in, strlen(in), got, sizeof got);
        assert_null(strstr(got, secret));
    }
}

/* Reads the whole file; caller frees. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return s;
}

/* The producers' records vary in size, so that they take one to four ring positions
 * (1 KiB each) and wrap around the ring's end: record q's path is '/' and
 * path_len(q) letters ('a' + (thread + q) % 26), every seventh record also has long
 * host, target, provider and principal fields (a line near AL_AUDIT_LINE_MAX). */
static size_t path_len(int q)
{
    static const size_t lens[] = {5, 900, 1500, 1590, 40, 1100};
    return lens[q % 6];
}

static char *filled(char *buf, size_t n, char c)
{
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

/* Checks every line parses; fills seen[thread * per + seq] from request_id "t<T>-<S>";
 * returns the number of lines. Each thread's lines must be in submission order, each
 * path as it was submitted. */
static size_t check_lines(const char *path, unsigned char *seen, int threads, int per)
{
    size_t len, lines = 0;
    char *s = slurp(path, &len);
    int last[64];
    for (int i = 0; i < 64; i++)
        last[i] = -1;
    char *p = s;
    while (*p) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl); /* whole lines only */
        json_error_t err;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &err);
        if (!j)
            fail_msg("line %zu not JSON: %s", lines + 1, err.text);
        int t, q;
        assert_int_equal(
            sscanf(json_string_value(json_object_get(j, "request_id")), "t%d-%d", &t, &q), 2);
        assert_true(t >= 0 && t < threads && q >= 0 && q < per);
        const char *rpath = json_string_value(json_object_get(j, "path"));
        assert_non_null(rpath);
        if (strcmp(rpath, sample().path) != 0) { /* (not sample()'s: a produce() record) */
            assert_int_equal(strlen(rpath), path_len(q) + 1);
            for (size_t k = 1; k <= path_len(q); k++)
                assert_int_equal(rpath[k], 'a' + (t + q) % 26);
        }
        assert_int_equal(seen[t * per + q], 0); /* no duplicates */
        seen[t * per + q] = 1;
        assert_true(q > last[t]);
        last[t] = q;
        json_decref(j);
        lines++;
        p = nl + 1;
    }
    free(s);
    return lines;
}

typedef struct producer {
    al_audit *a;
    int id, count;
} producer;

static void *produce(void *arg)
{
    producer *pr = arg;
    char rid[32], path[1600], host[256], target[128], provider[128], principal[160];
    for (int i = 0; i < pr->count; i++) {
        al_audit_request r = sample();
        snprintf(rid, sizeof rid, "t%d-%d", pr->id, i);
        r.request_id = rid;
        path[0] = '/';
        filled(path + 1, path_len(i), (char)('a' + (pr->id + i) % 26));
        r.path = path;
        if (i % 7 == 0) {
            r.host = filled(host, 250, 'h');
            r.target = filled(target, 120, 't');
            r.provider = filled(provider, 120, 'p');
            r.principal = filled(principal, 150, 'u');
            r.client_request_id = r.target;
            r.end_user = r.host;
        }
        al_audit_submit(pr->a, &r);
    }
    return NULL;
}

static void run_producers(al_audit *a, int threads, int per)
{
    pthread_t th[64];
    producer pr[64];
    for (int t = 0; t < threads; t++) {
        pr[t] = (producer){a, t, per};
        assert_int_equal(pthread_create(&th[t], NULL, produce, &pr[t]), 0);
    }
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
}

static void test_many_threads_all_lines_whole(void **state)
{
    /* queue big enough for everything (four 1 KiB positions a record at most): nothing
     * may be dropped */
    enum { THREADS = 8, PER = 1000 };
    char path[128];
    path_in_dir(path, sizeof path, "many.log");
    al_audit *a = NULL;
    assert_int_equal(al_audit_open_ex(path, 4 * THREADS * PER, &a), AL_OK);
    run_producers(a, THREADS, PER);
    al_audit_close(a);
    unsigned char *seen = calloc(THREADS * PER, 1);
    assert_int_equal(check_lines(path, seen, THREADS, PER), THREADS * PER);
    for (int i = 0; i < THREADS * PER; i++)
        assert_int_equal(seen[i], 1);
    free(seen);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_small_queue_counts_what_it_drops(void **state)
{
    /* a queue much smaller than the burst: written + dropped == submitted, and
     * whatever was written is whole, unique and in order per producer */
    enum { THREADS = 6, PER = 3000 };
    char path[128];
    path_in_dir(path, sizeof path, "small.log");
    al_audit *a = NULL;
    assert_int_equal(al_audit_open_ex(path, 16, &a), AL_OK);
    run_producers(a, THREADS, PER);
    uint64_t dropped, written;
    /* the writer catches up: wait (bounded) until every accepted line is written */
    for (int i = 0; i < 5000; i++) {
        dropped = al_audit_dropped(a);
        written = al_audit_written(a);
        if (dropped + written == THREADS * PER)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    al_audit_close(a);
    unsigned char *seen = calloc(THREADS * PER, 1);
    size_t lines = check_lines(path, seen, THREADS, PER);
    assert_int_equal(lines, written);
    assert_int_equal(written + dropped, THREADS * PER);
    free(seen);
}

static void *close_in_thread(void *a)
{
    al_audit_close(a);
    return NULL;
}

static void test_full_queue_drops_without_blocking(void **state)
{
    /* The "disk" is a FIFO nobody reads: the writer blocks in write(2) once the pipe
     * is full. Submitting must still return at once, dropping and counting. */
    char path[128];
    path_in_dir(path, sizeof path, "fifo");
    assert_int_equal(mkfifo(path, 0600), 0);
    int rfd = open(path, O_RDONLY | O_NONBLOCK);
    assert_true(rfd >= 0);
    al_audit *a = NULL;
    assert_int_equal(al_audit_open_ex(path, 8, &a), AL_OK);
    enum { N = 5000 };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char rid[32];
    for (int i = 0; i < N; i++) {
        al_audit_request r = sample();
        snprintf(rid, sizeof rid, "t0-%d", i);
        r.request_id = rid;
        al_audit_submit(a, &r);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(secs < 2.0); /* never waited on the blocked writer */
    uint64_t dropped = al_audit_dropped(a);
    /* pipe (64 KiB) + batch + 8 slots hold at most a few hundred lines */
    assert_true(dropped >= N - 1000);
    /* now read everything: close must flush what was accepted */
    int flags = fcntl(rfd, F_GETFL);
    fcntl(rfd, F_SETFL, flags & ~O_NONBLOCK);
    pthread_t closer;
    assert_int_equal(pthread_create(&closer, NULL, close_in_thread, a), 0);
    size_t got = 0, cap = 1 << 20, len = 0;
    char *all = malloc(cap);
    for (;;) {
        if (len == cap)
            all = realloc(all, cap *= 2);
        ssize_t n = read(rfd, all + len, cap - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    pthread_join(closer, NULL);
    close(rfd);
    for (size_t i = 0; i < len; i++)
        got += all[i] == '\n';
    free(all);
    assert_int_equal(got + dropped, N);
    assert_true(got > 0);
}

static void test_close_flushes_and_reopen_follows_rotation(void **state)
{
    char path[128], moved[128];
    path_in_dir(path, sizeof path, "rot.log");
    path_in_dir(moved, sizeof moved, "rot.log.1");
    al_audit *a = NULL;
    assert_int_equal(al_audit_open(path, &a), AL_OK);
    char rid[32];
    for (int i = 0; i < 100; i++) {
        al_audit_request r = sample();
        snprintf(rid, sizeof rid, "t0-%d", i);
        r.request_id = rid;
        al_audit_submit(a, &r);
    }
    /* wait (bounded) for the writer, then rotate */
    for (int i = 0; i < 5000 && al_audit_written(a) < 100; i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(al_audit_written(a), 100);
    assert_int_equal(rename(path, moved), 0);
    al_audit_reopen(a);
    for (int i = 0; i < 3; i++) {
        al_audit_request r = sample();
        snprintf(rid, sizeof rid, "t0-%d", i);
        r.request_id = rid;
        al_audit_submit(a, &r);
    }
    al_audit_close(a); /* straight after submit: close must flush */
    unsigned char seen[100] = {0};
    assert_int_equal(check_lines(moved, seen, 1, 100), 100);
    memset(seen, 0, sizeof seen);
    assert_int_equal(check_lines(path, seen, 1, 100), 3);
}

/* Issue 9 items 13, 14, 17: the record's new fields and their null rules. */
static void test_encode_identity_addressing_and_times(void **state)
{
    char buf[AL_AUDIT_LINE_MAX];
    al_audit_request r = sample();
    r.start_ms = 1764383400123LL - 75000; /* a 75 s stream */
    r.client_request_id = "forged-id-123";
    r.port = 8443;
    r.upstream_addr = "[2001:db8::1]:8443";
    int n = al_audit_encode_request(&r, buf, sizeof buf);
    json_t *j = parse_line(buf, n);
    /* the event comes first, so a reader can dispatch on it */
    assert_memory_equal(buf, "{\"event\":\"request\",", 19);
    assert_string_equal(json_string_value(json_object_get(j, "event")), "request");
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2025-11-29T02:30:00.123Z");
    assert_string_equal(json_string_value(json_object_get(j, "start_time")),
                        "2025-11-29T02:28:45.123Z");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "rid-1");
    assert_string_equal(json_string_value(json_object_get(j, "client_request_id")),
                        "forged-id-123");
    assert_int_equal(json_integer_value(json_object_get(j, "port")), 8443);
    assert_string_equal(json_string_value(json_object_get(j, "upstream_addr")),
                        "[2001:db8::1]:8443");
    json_decref(j);

    /* a start record; unknown start, port and address are null; a provider that was
     * wanted but gave no credential (version 0) has a null version */
    al_audit_request d = sample();
    d.event = "request_start";
    d.start_ms = 0;
    d.provider = "missing-key";
    d.provider_version = 0;
    n = al_audit_encode_request(&d, buf, sizeof buf);
    j = parse_line(buf, n);
    assert_string_equal(json_string_value(json_object_get(j, "event")), "request_start");
    assert_true(json_is_null(json_object_get(j, "start_time")));
    assert_true(json_is_null(json_object_get(j, "client_request_id")));
    assert_true(json_is_null(json_object_get(j, "port")));
    assert_true(json_is_null(json_object_get(j, "upstream_addr")));
    assert_string_equal(json_string_value(json_object_get(j, "provider")), "missing-key");
    assert_true(json_is_null(json_object_get(j, "provider_version")));
    json_decref(j);

    /* a hostile client id cannot forge another field or break the line */
    static const char *const ids[] = {
        "x\",\"request_id\":\"forged", "a\nb\r\n{\"event\":\"request\"}", "\xff\xfe\x01",
        "\\\"", "</script><!--",
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        al_audit_request h = sample();
        h.client_request_id = ids[i];
        n = al_audit_encode_request(&h, buf, sizeof buf);
        j = parse_line(buf, n);
        assert_string_equal(json_string_value(json_object_get(j, "request_id")), "rid-1");
        assert_non_null(json_string_value(json_object_get(j, "client_request_id")));
        json_decref(j);
    }
}

static void test_encode_event_records(void **state)
{
    char buf[AL_AUDIT_LINE_MAX];
    al_audit_field f[] = {
        {"result", AL_AUDIT_STR, "ok", 0},
        {"generation", AL_AUDIT_INT, NULL, 7},
        {"file", AL_AUDIT_STR, "/etc/airlock/t\"able\n.yaml", 0},
        {"sha256", AL_AUDIT_STR, NULL, 0},
        {"negative", AL_AUDIT_INT, NULL, -42},
        {"min", AL_AUDIT_INT, NULL, INT64_MIN},
        {"flag", AL_AUDIT_BOOL, NULL, 1},
        {"off", AL_AUDIT_BOOL, NULL, 0},
    };
    int n = al_audit_encode_event(1764383400123LL, "table.reload", f, sizeof f / sizeof f[0], buf,
                                  sizeof buf);
    json_t *j = parse_line(buf, n);
    assert_memory_equal(buf, "{\"event\":\"table.reload\",\"time\":", 31);
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2025-11-29T02:30:00.123Z");
    assert_string_equal(json_string_value(json_object_get(j, "result")), "ok");
    assert_int_equal(json_integer_value(json_object_get(j, "generation")), 7);
    assert_string_equal(json_string_value(json_object_get(j, "file")), "/etc/airlock/t\"able\n.yaml");
    assert_true(json_is_null(json_object_get(j, "sha256")));
    assert_int_equal(json_integer_value(json_object_get(j, "negative")), -42);
    assert_int_equal(json_integer_value(json_object_get(j, "min")), -INT64_MAX);
    assert_true(json_is_true(json_object_get(j, "flag")));
    assert_true(json_is_false(json_object_get(j, "off")));
    assert_null(json_object_get(j, "truncated"));
    json_decref(j);

    /* the most fields, every string huge and hostile: one valid line within the slot */
    size_t big = 50000;
    char *ctl = malloc(big + 1);
    assert_non_null(ctl);
    memset(ctl, 0x01, big);
    ctl[big] = '\0';
    al_audit_field many[AL_AUDIT_EVENT_FIELDS_MAX];
    char keys[AL_AUDIT_EVENT_FIELDS_MAX][16];
    for (int i = 0; i < AL_AUDIT_EVENT_FIELDS_MAX; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        many[i] = (al_audit_field){keys[i], i % 3 ? AL_AUDIT_STR : AL_AUDIT_INT, ctl, INT64_MAX};
    }
    n = al_audit_encode_event(INT64_MAX / 1000000, ctl, many, AL_AUDIT_EVENT_FIELDS_MAX, buf,
                              sizeof buf);
    assert_true(n > 0 && n < AL_AUDIT_LINE_MAX);
    j = parse_line(buf, n);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    assert_int_equal(json_integer_value(json_object_get(j, "k0")), INT64_MAX);
    json_decref(j);
    /* few fields: a long value keeps up to 1024 bytes of output */
    al_audit_field one = {"file", AL_AUDIT_STR, ctl, 0};
    n = al_audit_encode_event(0, "x", &one, 1, buf, sizeof buf);
    j = parse_line(buf, n);
    assert_true(strlen(json_string_value(json_object_get(j, "file"))) >= 150);
    json_decref(j);
    free(ctl);

    /* random bytes in keys, event and values: always one valid JSON line */
    unsigned seed = 777;
    char vals[8][400];
    for (int round = 0; round < 2000; round++) {
        al_audit_field rf[8];
        for (int i = 0; i < 8; i++) {
            int len = (int)(rand_r(&seed) % 399);
            for (int k = 0; k < len; k++)
                vals[i][k] = (char)(1 + rand_r(&seed) % 255);
            vals[i][len] = '\0';
            rf[i] = (al_audit_field){i == 7 ? vals[0] : keys[i], (enum al_audit_field_kind)(i % 3),
                                     vals[i], (int64_t)rand_r(&seed) - RAND_MAX / 2};
        }
        n = al_audit_encode_event(rand_r(&seed), vals[1], rf, 8, buf, sizeof buf);
        json_t *rj = json_loadb(buf, (size_t)n, 0, NULL); /* random keys may repeat */
        assert_non_null(rj);
        json_decref(rj);
    }

    assert_int_equal(al_audit_encode_event(0, "x", many, AL_AUDIT_EVENT_FIELDS_MAX + 1, buf,
                                           sizeof buf),
                     AL_ERR_INVAL);
    assert_int_equal(al_audit_encode_event(0, NULL, NULL, 0, buf, sizeof buf), AL_ERR_INVAL);
    assert_int_equal(al_audit_encode_event(0, "x", f, 2, buf, 20), AL_ERR_TOOBIG);
}

static void test_submit_event_and_file_sha256(void **state)
{
    char path[128], data[128], hex[65];
    path_in_dir(path, sizeof path, "events.log");
    path_in_dir(data, sizeof data, "abc.txt");
    FILE *fp = fopen(data, "w");
    assert_non_null(fp);
    fputs("abc", fp);
    fclose(fp);
    assert_int_equal(al_audit_file_sha256(data, hex), AL_OK);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(al_audit_file_sha256("/nonexistent/x.yaml", hex), AL_ERR_IO);
    assert_string_equal(hex, "");

    al_audit *a = NULL;
    assert_int_equal(al_audit_open(path, &a), AL_OK);
    al_audit_request r = sample();
    al_audit_submit(a, &r);
    al_audit_field f[] = {{"result", AL_AUDIT_STR, "failed", 0}, {"diagnostics", AL_AUDIT_INT, NULL, 3}};
    al_audit_submit_event(a, "table.reload", f, 2);
    al_audit_submit_event(a, NULL, f, 2); /* ignored */
    al_audit_submit_event(NULL, "x", f, 2);
    al_audit_close(a);
    size_t len;
    char *s = slurp(path, &len);
    char *second = strchr(s, '\n');
    assert_non_null(second);
    second++;
    json_t *j = parse_line(second, (int)strlen(second));
    assert_string_equal(json_string_value(json_object_get(j, "event")), "table.reload");
    assert_string_equal(json_string_value(json_object_get(j, "result")), "failed");
    assert_int_equal(json_integer_value(json_object_get(j, "diagnostics")), 3);
    assert_non_null(json_string_value(json_object_get(j, "time")));
    json_decref(j);
    free(s);
}

static void test_open_errors_and_append_line(void **state)
{
    al_audit *a = (al_audit *)1;
    assert_int_equal(al_audit_open("/nonexistent-dir/x/audit.log", &a), AL_ERR_IO);
    assert_null(a);
    assert_int_equal(al_audit_open("", &a), AL_ERR_INVAL);
    al_audit_close(NULL);
    al_audit_submit(NULL, NULL);
    char path[128];
    path_in_dir(path, sizeof path, "cli.log");
    assert_int_equal(al_audit_append_line(path, "{\"event\":\"provider.create\"}"), AL_OK);
    assert_int_equal(al_audit_append_line(path, "{\"event\":\"provider.rotate\"}"), AL_OK);
    size_t len;
    char *s = slurp(path, &len);
    /* a new (empty) log is chained from its first line; the second line follows it */
    char want[512], hex[65];
    const char *first = "{\"seq\":0,\"prev\":\"0000000000000000000000000000000000000000000000"
                        "000000000000000000\",\"event\":\"provider.create\"}";
    unsigned char md[32];
    unsigned mdlen = 0;
    EVP_Digest(first, strlen(first), md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(want, sizeof want, "%s\n{\"seq\":1,\"prev\":\"%s\",\"event\":\"provider.rotate\"}\n",
             first, hex);
    assert_string_equal(s, want);
    free(s);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_fields),
        cmocka_unit_test(test_encode_hostile_strings),
        cmocka_unit_test(test_encode_huge_fields_fit),
        cmocka_unit_test(test_encode_budget_edges_and_tight_buffers),
        cmocka_unit_test(test_redact_query),
        cmocka_unit_test(test_many_threads_all_lines_whole),
        cmocka_unit_test(test_small_queue_counts_what_it_drops),
        cmocka_unit_test(test_full_queue_drops_without_blocking),
        cmocka_unit_test(test_close_flushes_and_reopen_follows_rotation),
        cmocka_unit_test(test_open_errors_and_append_line),
        cmocka_unit_test(test_encode_identity_addressing_and_times),
        cmocka_unit_test(test_encode_event_records),
        cmocka_unit_test(test_submit_event_and_file_sha256),
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        tests[i].setup_func = setup_dir;
        tests[i].teardown_func = teardown_dir;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
