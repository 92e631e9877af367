/* Unit tests of the tamper-evident audit log (policy/al_audit_chain.c and the chained
 * writer in al_audit.c): chain prefixes, the tail a restart continues from, signed
 * checkpoints, and the verifier's verdict (line and reason) on every kind of
 * tampering; the writer's rotation, restart and failure paths against real files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "policy/al_audit.h"
#include "policy/al_audit_chain.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char g_dir[64];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/test_chain_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- an in-memory log ---------------------------------------------------------- */

#define MAXL 64

typedef struct mlog {
    char *line[MAXL]; /* each with its '\n' */
    size_t n;
} mlog;

static void mlog_free(mlog *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->line[i]);
    m->n = 0;
}

static void add_record(mlog *m, al_audit_chain *c, int i)
{
    char raw[128], out[128 + AL_AUDIT_CHAIN_PREFIX_MAX];
    snprintf(raw, sizeof raw, "{\"event\":\"request\",\"status\":200,\"i\":%d}\n", i);
    size_t n = al_audit_chain_line(c, raw, strlen(raw), out);
    out[n] = '\0';
    m->line[m->n++] = strdup(out);
}

static void add_checkpoint(mlog *m, al_audit_chain *c, EVP_PKEY *key, const char *reason)
{
    char out[AL_AUDIT_CHECKPOINT_MAX + 1];
    int n = al_audit_chain_checkpoint(c, key, 1764383400123LL, reason, out, sizeof out - 1);
    assert_true(n > 0);
    out[n] = '\0';
    m->line[m->n++] = strdup(out);
}

/* 20 records with an interval checkpoint after the 10th and a shutdown one at the end:
 * lines 1-10 records, 11 checkpoint, 12-21 records, 22 shutdown checkpoint. */
static void build(mlog *m, EVP_PKEY *key)
{
    al_audit_chain c;
    al_audit_chain_init(&c);
    m->n = 0;
    for (int i = 0; i < 20; i++) {
        add_record(m, &c, i);
        if (i == 9)
            add_checkpoint(m, &c, key, "interval");
    }
    add_checkpoint(m, &c, key, "shutdown");
}

static char *join(const mlog *m, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < m->n; i++)
        total += strlen(m->line[i]);
    char *s = malloc(total + 1), *p = s;
    for (size_t i = 0; i < m->n; i++) {
        size_t l = strlen(m->line[i]);
        memcpy(p, m->line[i], l);
        p += l;
    }
    *p = '\0';
    *len = total;
    return s;
}

static int check(const mlog *m, EVP_PKEY *key, int live, al_audit_verdict *v)
{
    size_t len;
    char *s = join(m, &len);
    al_audit_vfile f = {"t.log", s, len};
    EVP_PKEY *keys[1] = {key};
    int rc = al_audit_verify(&f, 1, keys, key ? 1 : 0, live, v);
    free(s);
    return rc;
}

static void expect(const mlog *m, EVP_PKEY *key, uint64_t line, const char *reason)
{
    al_audit_verdict v;
    assert_int_equal(check(m, key, 0, &v), 1);
    assert_false(v.ok);
    if (v.line != line || strcmp(v.reason, reason) != 0)
        fail_msg("want line %llu %s, got line %llu %s: %s", (unsigned long long)line, reason,
                 (unsigned long long)v.line, v.reason, v.message);
    assert_true(strlen(v.message) > 10);
}

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(k);
    return k;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_chain_line_prefix_and_hash(void **state)
{
    (void)state;
    al_audit_chain c;
    al_audit_chain_init(&c);
    char out[256];
    const char *raw = "{\"event\":\"x\"}\n";
    size_t n = al_audit_chain_line(&c, raw, strlen(raw), out);
    out[n] = '\0';
    assert_string_equal(out, "{\"seq\":0,\"prev\":\"00000000000000000000000000000000000000000000"
                             "00000000000000000000\",\"event\":\"x\"}\n");
    unsigned char md[32];
    unsigned mdlen = 0;
    EVP_Digest(out, n - 1, md, &mdlen, EVP_sha256(), NULL);
    assert_memory_equal(c.prev, md, 32);
    assert_int_equal(c.next_seq, 1);
    /* not an object with a field: wrapped, never spliced */
    const char *bad[] = {"{}\n", "[1]\n", "x\n", "{\"a\":1}", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = al_audit_chain_line(&c, bad[i], strlen(bad[i]), out);
        out[n] = '\0';
        assert_non_null(strstr(out, "\"event\":\"audit.invalid\"}\n"));
        assert_int_equal(out[n - 1], '\n');
    }
    assert_int_equal(c.next_seq, 6);
}

static void test_from_tail(void **state)
{
    (void)state;
    al_audit_chain c, want;
    int partial;
    char buf[1024];
    al_audit_chain_init(&want);
    size_t n = al_audit_chain_line(&want, "{\"event\":\"a\"}\n", 14, buf);
    n += al_audit_chain_line(&want, "{\"event\":\"b\"}\n", 14, buf + n);
    assert_int_equal(al_audit_chain_from_tail(buf, n, &c, &partial), 1);
    assert_int_equal(partial, 0);
    assert_int_equal(c.next_seq, 2);
    assert_memory_equal(c.prev, want.prev, 32);
    /* a half-written line after it: the chain goes on from the last whole one */
    memcpy(buf + n, "{\"seq\":2,\"pr", 12);
    assert_int_equal(al_audit_chain_from_tail(buf, n + 12, &c, &partial), 1);
    assert_int_equal(partial, 1);
    assert_int_equal(c.next_seq, 2);
    assert_memory_equal(c.prev, want.prev, 32);
    /* empty, and a plain (unchained) last line: a new chain */
    assert_int_equal(al_audit_chain_from_tail("", 0, &c, &partial), 0);
    assert_int_equal(c.next_seq, 0);
    assert_int_equal(al_audit_chain_from_tail("{\"event\":\"x\"}\n", 14, &c, &partial), 0);
    assert_int_equal(c.next_seq, 0);
    /* hostile tails: a seq that is not a number, a prev of the wrong length or case */
    const char *bad[] = {
        "{\"seq\":\"1\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\"}\n",
        "{\"seq\":1,\"prev\":\"00\"}\n",
        "{\"seq\":-1,\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\"}\n",
        "{\"seq\":1,\"prev\":\"ABCDEF0000000000000000000000000000000000000000000000000000000000\"}\n",
        "not json\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(al_audit_chain_from_tail(bad[i], strlen(bad[i]), &c, &partial), 0);
        assert_int_equal(c.next_seq, 0);
    }
}

static void test_verify_clean_and_live(void **state)
{
    (void)state;
    EVP_PKEY *key = new_key();
    mlog m;
    al_audit_verdict v;
    build(&m, key);
    assert_int_equal(check(&m, key, 0, &v), 0);
    assert_true(v.ok);
    assert_int_equal(v.records, 22);
    assert_int_equal(v.checkpoints, 2);
    assert_int_equal(v.signatures_checked, 2);
    assert_int_equal(v.first_seq, 0);
    assert_int_equal(v.last_seq, 21);
    /* without a key: chain only */
    assert_int_equal(check(&m, NULL, 0, &v), 0);
    assert_int_equal(v.signatures_checked, 0);
    /* the open tail of a running log: only with live */
    free(m.line[--m.n]);
    free(m.line[--m.n]);
    expect(&m, key, 21, "truncated");
    assert_int_equal(check(&m, key, 1, &v), 0);
    assert_int_equal(v.unsealed, 9);
    mlog_free(&m);
    EVP_PKEY_free(key);
}

static void test_verify_names_each_tampering(void **state)
{
    (void)state;
    EVP_PKEY *key = new_key(), *other = new_key();
    mlog m;
    char *t;
    /* edited content of line 5: named as line 5 (line 6's prev no longer matches) */
    build(&m, key);
    t = strstr(m.line[4], "\"status\":200");
    t[10] = '1';
    expect(&m, key, 5, "edited");
    mlog_free(&m);
    /* the edit on the last record before a checkpoint */
    build(&m, key);
    strstr(m.line[9], "\"status\":200")[10] = '4';
    expect(&m, key, 10, "edited");
    mlog_free(&m);
    /* a seq changed alone */
    build(&m, key);
    t = strstr(m.line[6], "\"seq\":6");
    t[6] = '9';
    expect(&m, key, 7, "edited");
    mlog_free(&m);
    /* removed: line 5 gone, line 5 is now seq 5 where 4 was due */
    build(&m, key);
    free(m.line[4]);
    memmove(&m.line[4], &m.line[5], (m.n - 5) * sizeof m.line[0]);
    m.n--;
    expect(&m, key, 5, "removed");
    mlog_free(&m);
    /* swapped: lines 5 and 6 */
    build(&m, key);
    t = m.line[4];
    m.line[4] = m.line[5];
    m.line[5] = t;
    expect(&m, key, 5, "reordered");
    mlog_free(&m);
    /* inserted: a copy of line 2 before line 5 */
    build(&m, key);
    memmove(&m.line[5], &m.line[4], (m.n - 4) * sizeof m.line[0]);
    m.n++;
    m.line[4] = strdup(m.line[1]);
    expect(&m, key, 5, "inserted");
    mlog_free(&m);
    /* a plain line and garbage */
    build(&m, key);
    memmove(&m.line[5], &m.line[4], (m.n - 4) * sizeof m.line[0]);
    m.n++;
    m.line[4] = strdup("{\"event\":\"request\"}\n");
    expect(&m, key, 5, "not_chained");
    free(m.line[4]);
    m.line[4] = strdup("{\"seq\":4,\n");
    expect(&m, key, 5, "malformed");
    mlog_free(&m);
    /* the tail cut after the interval checkpoint (a sealing reason is needed) */
    build(&m, key);
    while (m.n > 11)
        free(m.line[--m.n]);
    expect(&m, key, 12, "truncated");
    mlog_free(&m);
    /* a signature byte flipped; a signature that is not base64 of 64 bytes */
    build(&m, key);
    t = strstr(m.line[10], "\"sig\":\"") + 7;
    t[3] = t[3] == 'A' ? 'B' : 'A';
    expect(&m, key, 11, "bad_signature");
    mlog_free(&m);
    build(&m, key);
    t = strstr(m.line[21], "\"sig\":\"") + 7;
    memcpy(t, "!!!!", 4);
    expect(&m, key, 22, "bad_signature");
    mlog_free(&m);
    /* another key */
    build(&m, key);
    expect(&m, other, 11, "unknown_key");
    mlog_free(&m);
    /* a genesis line whose prev is not zero */
    build(&m, key);
    t = strstr(m.line[0], "\"prev\":\"0") + 8;
    *t = '1';
    expect(&m, key, 1, "edited");
    mlog_free(&m);
    /* an empty log */
    al_audit_verdict v;
    al_audit_vfile f = {"e.log", "", 0};
    assert_int_equal(al_audit_verify(&f, 1, &key, 1, 0, &v), 1);
    assert_string_equal(v.reason, "empty");
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

/* A forger recomputes every seq and prev after an edit: only the signature tells. */
static void test_verify_rewrite_needs_the_key(void **state)
{
    (void)state;
    EVP_PKEY *key = new_key(), *forger = new_key();
    mlog m, f = {0};
    al_audit_chain c;
    al_audit_verdict v;
    build(&m, key);
    al_audit_chain_init(&c);
    for (size_t i = 0; i < m.n; i++) {
        char raw[512];
        const char *rest = strstr(m.line[i], "\",\"") + 2; /* after prev */
        snprintf(raw, sizeof raw, "{%s", rest);
        if (i == 3)
            strstr(raw, "\"status\":200")[10] = '4';
        char out[512 + AL_AUDIT_CHAIN_PREFIX_MAX];
        size_t n = al_audit_chain_line(&c, raw, strlen(raw), out);
        out[n] = '\0';
        f.line[f.n++] = strdup(out);
    }
    assert_int_equal(check(&f, NULL, 0, &v), 0); /* the chain holds */
    expect(&f, key, 11, "bad_signature");
    /* re-signing with the forger's own key does not help */
    mlog_free(&f);
    al_audit_chain_init(&c);
    for (int i = 0; i < 20; i++)
        add_record(&f, &c, i);
    add_checkpoint(&f, &c, forger, "shutdown");
    expect(&f, key, 21, "unknown_key");
    mlog_free(&f);
    mlog_free(&m);
    EVP_PKEY_free(key);
    EVP_PKEY_free(forger);
}

static void test_verify_series(void **state)
{
    (void)state;
    EVP_PKEY *key = new_key();
    mlog m;
    al_audit_verdict v;
    build(&m, key);
    size_t l1, l2;
    mlog a = {0}, b = {0};
    for (size_t i = 0; i < m.n; i++) {
        if (i < 11)
            a.line[a.n++] = m.line[i];
        else
            b.line[b.n++] = m.line[i];
    }
    char *s1 = join(&a, &l1), *s2 = join(&b, &l2);
    al_audit_vfile fs[2] = {{"a.log", s1, l1}, {"b.log", s2, l2}};
    assert_int_equal(al_audit_verify(fs, 2, &key, 1, 0, &v), 0);
    assert_int_equal(v.records, 22);
    /* the newer file alone: starts above seq 0, verifies */
    assert_int_equal(al_audit_verify(&fs[1], 1, &key, 1, 0, &v), 0);
    assert_int_equal(v.first_seq, 11);
    /* the wrong order */
    al_audit_vfile rev[2] = {fs[1], fs[0]};
    assert_int_equal(al_audit_verify(rev, 2, &key, 1, 0, &v), 1);
    assert_int_equal(v.file, 1);
    assert_int_equal(v.line, 1);
    assert_string_equal(v.reason, "inserted");
    /* a file missing from the middle of three */
    al_audit_vfile three[2] = {fs[0], {"c.log", s2 + strlen(m.line[11]), l2 - strlen(m.line[11])}};
    assert_int_equal(al_audit_verify(three, 2, &key, 1, 0, &v), 1);
    assert_int_equal(v.file, 1);
    assert_string_equal(v.reason, "removed");
    free(s1);
    free(s2);
    mlog_free(&m);
    EVP_PKEY_free(key);
}

/* ---- the writer ------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *len = 0;
        return strdup("");
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return s;
}

static void submit_n(al_audit *a, int n, int base)
{
    char rid[32];
    for (int i = 0; i < n; i++) {
        al_audit_request r = {.time_ms = 1764383400123LL, .method = "GET", .decision = "allow",
                              .status = 200, .request_id = rid};
        snprintf(rid, sizeof rid, "r-%d", base + i);
        al_audit_submit(a, &r);
    }
}

static void wait_written(al_audit *a, uint64_t n)
{
    for (int i = 0; i < 10000 && al_audit_written(a) < n; i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(al_audit_written(a), n);
}

static void test_writer_rotates_restarts_and_verifies(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/w.log", g_dir);
    al_audit_opts o = {.chain = 1, .state_dir = g_dir, .checkpoint_interval_ms = 0,
                       .max_file_bytes = 4096, .max_files = 50};
    al_audit *a = NULL;
    assert_int_equal(al_audit_open_opts(path, &o, &a), AL_OK);
    submit_n(a, 30, 0);
    wait_written(a, 30);
    al_audit_close(a);
    /* a restart continues the chain */
    assert_int_equal(al_audit_open_opts(path, &o, &a), AL_OK);
    submit_n(a, 30, 30);
    wait_written(a, 30);
    al_audit_stats st;
    al_audit_get_stats(a, &st);
    assert_true(st.rotations >= 1);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.failed, 0);
    assert_true(st.writable);
    al_audit_close(a);
    /* the series, oldest first */
    al_audit_vfile fs[64];
    char *names[64];
    size_t n = 0;
    for (int i = 49; i >= 1; i--) {
        char p[160];
        snprintf(p, sizeof p, "%s.%d", path, i);
        if (access(p, F_OK) != 0)
            continue;
        names[n] = strdup(p);
        fs[n].name = names[n];
        fs[n].data = slurp(p, &fs[n].len);
        n++;
    }
    assert_true(n >= 2);
    names[n] = strdup(path);
    fs[n].name = names[n];
    fs[n].data = slurp(path, &fs[n].len);
    n++;
    EVP_PKEY *key = NULL;
    char kp[160];
    snprintf(kp, sizeof kp, "%s/" AL_AUDIT_KEY_FILE, g_dir);
    struct stat sb;
    assert_int_equal(stat(kp, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(al_audit_key_read_public(kp, &key), AL_OK);
    al_audit_verdict v;
    if (al_audit_verify(fs, n, &key, 1, 0, &v) != 0)
        fail_msg("%s:%llu: %s: %s", fs[v.file].name, (unsigned long long)v.line, v.reason,
                 v.message);
    assert_int_equal(v.first_seq, 0);
    for (size_t i = 0; i + 1 < n; i++)
        assert_true(fs[i].len <= 4096);
    for (size_t i = 0; i < n; i++) {
        free((void *)fs[i].data);
        free(names[i]);
    }
    EVP_PKEY_free(key);
}

/* Interval checkpoints between lines near a file's end: the file still stays within
 * max_file_bytes (an interval checkpoint that took the room kept for the rotate one put
 * it up to a checkpoint past; the integration test's rotation run saw it under load). A
 * checkpoint after every line (interval 1 ms, each waited for), and max_file_bytes in
 * steps smaller than that window, make that case certain for some file. */
static void test_writer_interval_checkpoints_keep_max_file_bytes(void **state)
{
    (void)state;
    for (int max = 2048; max < 2048 + 800; max += 100) {
        char path[128];
        snprintf(path, sizeof path, "%s/cp%d.log", g_dir, max);
        al_audit_opts o = {.chain = 1, .state_dir = g_dir, .checkpoint_interval_ms = 1,
                           .max_file_bytes = (uint64_t)max, .max_files = 100};
        al_audit *a = NULL;
        al_audit_stats st;
        assert_int_equal(al_audit_open_opts(path, &o, &a), AL_OK);
        for (int i = 0; i < 16; i++) {
            al_audit_get_stats(a, &st);
            uint64_t cps = st.checkpoints;
            submit_n(a, 1, i);
            wait_written(a, (uint64_t)i + 1);
            for (int t = 0; t < 10000 && st.checkpoints <= cps; t++) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
                al_audit_get_stats(a, &st);
            }
            assert_true(st.checkpoints > cps);
        }
        al_audit_get_stats(a, &st);
        assert_true(st.rotations >= 2);
        al_audit_close(a);
        for (int i = 1; i < 100; i++) {
            char p[160];
            size_t len;
            snprintf(p, sizeof p, "%s.%d", path, i);
            if (access(p, F_OK) != 0)
                continue;
            free(slurp(p, &len));
            if (len > (size_t)max)
                fail_msg("%s: %zu bytes, max_file_bytes %d", p, len, max);
        }
    }
}

/* /dev/full: every write fails with ENOSPC. Lines are held, not dropped; the writer
 * says it is not writable (what on_failure: deny asks) and counts the failures. */
static void test_writer_holds_lines_on_failure(void **state)
{
    (void)state;
    al_audit_opts o = {.chain = 1, .slots = 64};
    al_audit *a = NULL;
    if (al_audit_open_opts("/dev/full", &o, &a) != AL_OK)
        skip();
    assert_true(al_audit_writable(a));
    submit_n(a, 5, 0);
    al_audit_stats st;
    for (int i = 0; i < 5000; i++) {
        al_audit_get_stats(a, &st);
        if (st.failed)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_true(st.failed >= 1);
    assert_false(al_audit_writable(a));
    assert_false(st.writable);
    assert_int_equal(st.written, 0);
    assert_int_equal(st.lag, 5);
    assert_int_equal(st.dropped, 0);
    /* the ring fills while the writer cannot write: drops are counted */
    submit_n(a, 100, 5);
    al_audit_get_stats(a, &st);
    assert_true(st.dropped >= 100 - 64);
    al_audit_close(a);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct busy {
    al_audit *a;
    atomic_int stop;
    int n; /* records submitted */
} busy;

/* Submits records steadily (~10 every 0.1 ms) until told to stop, or 20 s at most so
 * a writer that never lets its lock go fails the test instead of hanging it. */
static void *busy_submit(void *p)
{
    busy *b = p;
    int64_t end = mono_ms() + 20000;
    while (!atomic_load(&b->stop) && mono_ms() < end) {
        submit_n(b->a, 10, b->n);
        b->n += 10;
        struct timespec t = {0, 100000};
        nanosleep(&t, NULL);
    }
    return NULL;
}

/* Store changes from the CLI (al_audit_append_line) while the writer is busy: the
 * writer keeps the file lock across drains while lines flow, for a bounded time, so
 * each append waits briefly and then joins the chain between the writer's lines; the
 * whole log verifies, every line in one chain. */
static void test_cli_appends_join_a_busy_writer(void **state)
{
    (void)state;
    char path[128], obj[96];
    snprintf(path, sizeof path, "%s/busy.log", g_dir);
    al_audit_opts o = {.chain = 1, .state_dir = g_dir};
    busy b = {.n = 0};
    assert_int_equal(al_audit_open_opts(path, &o, &b.a), AL_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, busy_submit, &b), 0);
    int64_t worst = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(obj, sizeof obj, "{\"event\":\"identity.create\",\"i\":%d}", i);
        int64_t t0 = mono_ms();
        assert_int_equal(al_audit_append_line(path, obj), AL_OK);
        if (mono_ms() - t0 > worst)
            worst = mono_ms() - t0;
        struct timespec t = {0, 3000000};
        nanosleep(&t, NULL);
    }
    atomic_store(&b.stop, 1);
    pthread_join(th, NULL);
    /* generous for a slow (sanitized, shared) machine; the hold itself is 20 ms */
    if (worst > 3000)
        fail_msg("a CLI append waited %lld ms for the writer's lock", (long long)worst);
    al_audit_stats st;
    for (int i = 0; i < 10000; i++) {
        al_audit_get_stats(b.a, &st);
        if (st.written + st.dropped >= (uint64_t)b.n)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_true(st.written > 0);
    al_audit_close(b.a);
    EVP_PKEY *key = NULL;
    char kp[160];
    snprintf(kp, sizeof kp, "%s/" AL_AUDIT_KEY_FILE, g_dir);
    assert_int_equal(al_audit_key_read_public(kp, &key), AL_OK);
    al_audit_vfile f = {path, NULL, 0};
    f.data = slurp(path, &f.len);
    al_audit_verdict v;
    if (al_audit_verify(&f, 1, &key, 1, 0, &v) != 0)
        fail_msg("%s:%llu: %s: %s", path, (unsigned long long)v.line, v.reason, v.message);
    assert_int_equal(v.first_seq, 0);
    size_t cli = 0;
    for (const char *q = f.data; (q = strstr(q, "\"event\":\"identity.create\"")); q++)
        cli++;
    assert_int_equal(cli, 20);
    /* (a drop would add an audit.dropped record after the count was read) */
    if (st.dropped == 0)
        assert_int_equal(v.records, st.written + 20 + v.checkpoints);
    else
        assert_true(v.records >= st.written + 20 + v.checkpoints);
    free((void *)f.data);
    EVP_PKEY_free(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_line_prefix_and_hash),
        cmocka_unit_test(test_from_tail),
        cmocka_unit_test(test_verify_clean_and_live),
        cmocka_unit_test(test_verify_names_each_tampering),
        cmocka_unit_test(test_verify_rewrite_needs_the_key),
        cmocka_unit_test(test_verify_series),
        cmocka_unit_test(test_writer_rotates_restarts_and_verifies),
        cmocka_unit_test(test_writer_interval_checkpoints_keep_max_file_bytes),
        cmocka_unit_test(test_writer_holds_lines_on_failure),
        cmocka_unit_test(test_cli_appends_join_a_busy_writer),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
