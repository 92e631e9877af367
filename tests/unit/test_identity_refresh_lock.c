/* Unit tests of al_store_ops.refresh_lock (issue 17 item 3) and of the store semantics
 * replicas rely on, on SQLite (a temp dir) and — when AIRLOCK_TEST_PG_DSN holds a
 * connection string (test_store_postgres.py runs this binary against its private
 * server) — on PostgreSQL:
 *  - a held lock makes another taker wait and time out (AL_ERR_TIMEOUT after about its
 *    timeout), another key is free, the waiter gets it once it is released;
 *  - a holder that dies (SIGKILL) releases it;
 *  - the refresh protocol of al_store.h: four handles race to refresh one user's token,
 *    exactly one "calls the provider" and the three others read its stored token;
 *  - put with expect_generation is exact across handles (the loser gets AL_ERR_AGAIN). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_store.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static const char *pg_dsn;
static int pg_mode; /* this run's backend: 0 SQLite, 1 PostgreSQL */

static al_store *open_store(void)
{
    al_store *s = NULL;
    int rc = pg_mode ? al_store_pg_open(pg_dsn, "$AIRLOCK_TEST_PG_DSN", AL_STORE_CREATE, &s)
                     : al_store_sqlite_open(dir, AL_STORE_CREATE, &s);
    assert_int_equal(rc, AL_OK);
    return s;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-rlock-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void excludes_and_times_out(void)
{
    al_store *a = open_store(), *b = open_store();
    al_store_lock *la = NULL, *lb = NULL, *lo = NULL;
    const char *key = "3lo\nprov\nhttps://issuer user-1";
    assert_int_equal(a->ops->refresh_lock(a, key, 1000, &la), AL_OK);
    int64_t t0 = now_ms();
    assert_int_equal(b->ops->refresh_lock(b, key, 150, &lb), AL_ERR_TIMEOUT);
    int64_t waited = now_ms() - t0;
    assert_true(waited >= 140 && waited < 5000);
    /* another key is independent */
    assert_int_equal(b->ops->refresh_lock(b, "3lo\nprov\nuser-2", 100, &lo), AL_OK);
    al_store_unlock(lo);
    /* the same process's other handle gets it once released */
    al_store_unlock(la);
    t0 = now_ms();
    assert_int_equal(b->ops->refresh_lock(b, key, 2000, &lb), AL_OK);
    assert_true(now_ms() - t0 < 1000);
    al_store_unlock(lb);
    al_store_close(a);
    al_store_close(b);
}

typedef struct holder {
    al_store *s;
    const char *key;
    int held_ms;
    int taken;
    pthread_mutex_t m;
    pthread_cond_t c;
} holder;

static void *hold(void *arg)
{
    holder *h = arg;
    al_store_lock *l = NULL;
    int rc = h->s->ops->refresh_lock(h->s, h->key, 2000, &l);
    pthread_mutex_lock(&h->m);
    h->taken = rc == AL_OK ? 1 : -1;
    pthread_cond_signal(&h->c);
    pthread_mutex_unlock(&h->m);
    nap_ms(h->held_ms);
    al_store_unlock(l);
    return NULL;
}

static void waiter_gets_it_after_release(void)
{
    holder h = {.s = open_store(), .key = "2lo\nshared-cache", .held_ms = 300};
    al_store *b = open_store();
    al_store_lock *lb = NULL;
    pthread_t t;
    pthread_mutex_init(&h.m, NULL);
    pthread_cond_init(&h.c, NULL);
    assert_int_equal(pthread_create(&t, NULL, hold, &h), 0);
    pthread_mutex_lock(&h.m);
    while (!h.taken)
        pthread_cond_wait(&h.c, &h.m);
    pthread_mutex_unlock(&h.m);
    assert_int_equal(h.taken, 1);
    int64_t t0 = now_ms();
    assert_int_equal(b->ops->refresh_lock(b, h.key, 10000, &lb), AL_OK);
    assert_true(now_ms() - t0 >= 150); /* it waited for the holder */
    al_store_unlock(lb);
    pthread_join(t, NULL);
    pthread_mutex_destroy(&h.m);
    pthread_cond_destroy(&h.c);
    al_store_close(h.s);
    al_store_close(b);
}

static void dead_holder_releases(void)
{
    const char *key = "3lo\nprov\ndies";
    al_store *s = open_store(); /* creates the store the child opens */
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
        al_store *cs = NULL;
        al_store_lock *l = NULL;
        int rc = pg_mode ? al_store_pg_open(pg_dsn, "$AIRLOCK_TEST_PG_DSN", 0, &cs)
                         : al_store_sqlite_open(dir, 0, &cs);
        if (rc == AL_OK)
            rc = cs->ops->refresh_lock(cs, key, 2000, &l);
        char b = rc == AL_OK ? 'y' : 'n';
        if (write(p[1], &b, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(p[1]);
    char b = 0;
    ssize_t got = read(p[0], &b, 1);
    close(p[0]);
    al_store_lock *l = NULL;
    int rc = got == 1 && b == 'y' ? s->ops->refresh_lock(s, key, 100, &l) : AL_ERR_INVAL;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_int_equal(rc, AL_ERR_TIMEOUT); /* the child held it */
    assert_int_equal(s->ops->refresh_lock(s, key, 10000, &l), AL_OK);
    al_store_unlock(l);
    al_store_close(s);
}

/* ---- the refresh protocol ---- */

#define RACERS 4

typedef struct race {
    pthread_barrier_t start;
    pthread_mutex_t m;
    int refreshed, reused, failed;
    char winner_fp[32];
} race;

typedef struct racer {
    race *r;
    int id;
} racer;

static unsigned char blob[16] = "sealed-bytes-xx";

static al_store_user_token token(const char *fp)
{
    al_store_user_token u = {.provider = "prov",
                             .user = "https://issuer u",
                             .scope = "openid",
                             .obtained_at = 1,
                             .expires_at = 2,
                             .updated_at = 3,
                             .has_refresh = 1,
                             .wrapped_key = blob,
                             .wrapped_key_len = 16,
                             .sealed = blob,
                             .sealed_len = 16};
    snprintf(u.fingerprint, sizeof u.fingerprint, "%s", fp);
    return u;
}

static void *refresh_once(void *arg)
{
    racer *me = arg;
    race *r = me->r;
    al_store *s = open_store();
    al_store_user_token seen = {0}, now = {0};
    al_store_lock *l = NULL;
    int ok = s->ops->user_get(s, "prov", "https://issuer u", &seen) == AL_OK;
    pthread_barrier_wait(&r->start);
    ok = ok && s->ops->refresh_lock(s, "3lo\nprov\nhttps://issuer u", 10000, &l) == AL_OK;
    ok = ok && s->ops->user_get(s, "prov", "https://issuer u", &now) == AL_OK;
    if (ok && strcmp(now.fingerprint, seen.fingerprint) != 0) {
        pthread_mutex_lock(&r->m);
        r->reused++; /* another replica refreshed while we waited: use its token */
        pthread_mutex_unlock(&r->m);
    } else if (ok) {
        char fp[32];
        snprintf(fp, sizeof fp, "sha256:winner%05d", me->id);
        nap_ms(50); /* the provider call */
        al_store_user_token nu = token(fp);
        ok = s->ops->user_put(s, &nu) == AL_OK;
        pthread_mutex_lock(&r->m);
        r->refreshed++;
        snprintf(r->winner_fp, sizeof r->winner_fp, "%s", fp);
        pthread_mutex_unlock(&r->m);
    }
    if (!ok) {
        pthread_mutex_lock(&r->m);
        r->failed++;
        pthread_mutex_unlock(&r->m);
    }
    al_store_unlock(l);
    al_store_user_token_clear(&now);
    al_store_user_token_clear(&seen);
    al_store_close(s);
    return NULL;
}

static void one_refresh_of_many(void)
{
    al_store *s = open_store();
    al_store_user_token u = token("sha256:original0000");
    assert_int_equal(s->ops->user_put(s, &u), AL_OK);
    race r = {.refreshed = 0};
    racer who[RACERS];
    pthread_t t[RACERS];
    pthread_barrier_init(&r.start, NULL, RACERS);
    pthread_mutex_init(&r.m, NULL);
    for (int i = 0; i < RACERS; i++) {
        who[i] = (racer){&r, i};
        assert_int_equal(pthread_create(&t[i], NULL, refresh_once, &who[i]), 0);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(r.failed, 0);
    assert_int_equal(r.refreshed, 1);
    assert_int_equal(r.reused, RACERS - 1);
    al_store_user_token got;
    assert_int_equal(s->ops->user_get(s, "prov", "https://issuer u", &got), AL_OK);
    assert_string_equal(got.fingerprint, r.winner_fp);
    al_store_user_token_clear(&got);
    assert_int_equal(s->ops->user_del(s, "prov", "https://issuer u"), AL_OK);
    pthread_barrier_destroy(&r.start);
    pthread_mutex_destroy(&r.m);
    al_store_close(s);
}

static void expect_generation_across_handles(void)
{
    al_store *a = open_store(), *b = open_store();
    uint64_t g0 = 0, g1 = 0;
    al_store_record rec = {.name = "gen-test",
                           .kind = "api_key",
                           .environment = "default",
                           .current_version = 0,
                           .created_at = 1,
                           .updated_at = 1};
    assert_int_equal(a->ops->generation(a, &g0), AL_OK);
    assert_int_equal(a->ops->put(a, &rec, 1, NULL, 0, &g0), AL_OK);
    rec.updated_at = 2;
    assert_int_equal(b->ops->put(b, &rec, 1, NULL, 0, &g0), AL_ERR_AGAIN); /* stale */
    assert_int_equal(b->ops->generation(b, &g1), AL_OK);
    assert_int_equal(g1, g0 + 1);
    assert_int_equal(b->ops->put(b, &rec, 1, NULL, 0, &g1), AL_OK);
    al_store_record got;
    assert_int_equal(a->ops->get(a, "gen-test", &got), AL_OK);
    assert_int_equal(got.updated_at, 2);
    al_store_record_clear(&got);
    assert_int_equal(a->ops->del(a, "gen-test"), AL_OK);
    assert_int_equal(b->ops->del(b, "gen-test"), AL_ERR_NOTFOUND);
    al_store_close(a);
    al_store_close(b);
}

#define BOTH(fn)                                                                                   \
    static void fn##_sqlite(void **state)                                                          \
    {                                                                                              \
        (void)state;                                                                               \
        pg_mode = 0;                                                                               \
        fn();                                                                                      \
    }                                                                                              \
    static void fn##_postgres(void **state)                                                        \
    {                                                                                              \
        (void)state;                                                                               \
        pg_mode = 1;                                                                               \
        fn();                                                                                      \
    }

BOTH(excludes_and_times_out)
BOTH(waiter_gets_it_after_release)
BOTH(dead_holder_releases)
BOTH(one_refresh_of_many)
BOTH(expect_generation_across_handles)

int main(void)
{
    pg_dsn = getenv("AIRLOCK_TEST_PG_DSN");
    const struct CMUnitTest sqlite_tests[] = {
        cmocka_unit_test_setup_teardown(excludes_and_times_out_sqlite, setup, teardown),
        cmocka_unit_test_setup_teardown(waiter_gets_it_after_release_sqlite, setup, teardown),
        cmocka_unit_test_setup_teardown(dead_holder_releases_sqlite, setup, teardown),
        cmocka_unit_test_setup_teardown(one_refresh_of_many_sqlite, setup, teardown),
        cmocka_unit_test_setup_teardown(expect_generation_across_handles_sqlite, setup, teardown),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test(excludes_and_times_out_postgres),
        cmocka_unit_test(waiter_gets_it_after_release_postgres),
        cmocka_unit_test(dead_holder_releases_postgres),
        cmocka_unit_test(one_refresh_of_many_postgres),
        cmocka_unit_test(expect_generation_across_handles_postgres),
    };
    int failed = cmocka_run_group_tests_name("sqlite", sqlite_tests, NULL, NULL);
    if (pg_dsn && *pg_dsn)
        failed += cmocka_run_group_tests_name("postgres", pg_tests, NULL, NULL);
    return failed;
}
