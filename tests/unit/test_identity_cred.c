/* Unit tests of identity/al_cred: the serve-side cache picks up a change within
 * one second, keeps the old snapshot when a refresh cannot decrypt, survives
 * readers racing the swap, and selects pool members round-robin with rests and
 * fallback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_cred.h"
#include "identity/al_identity.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-idcred-XXXXXX");
    assert_non_null(mkdtemp(dir));
    unsetenv("AIRLOCK_MASTER_KEY_FILE");
    char audit[300];
    snprintf(audit, sizeof audit, "%s/audit.log", dir);
    setenv("AIRLOCK_AUDIT_FILE", audit, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_key(const char *name, const char *secret, int create)
{
    al_identity *id = NULL;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    al_provider_spec sp = {.name = name,
                           .kind = "api_key",
                           .environment = "prod",
                           .secret = (const unsigned char *)secret,
                           .secret_len = strlen(secret),
                           .grace_s = 3600};
    assert_int_equal(create ? al_identity_create(id, &sp, NULL) : al_identity_update(id, &sp, NULL),
                     AL_OK);
    al_identity_close(id);
}

/* Polls (bounded) until `name` has value `want`; returns the ms it took, -1 on timeout. */
static int64_t wait_for(al_cred_cache *c, const char *name, const char *want, int64_t limit_ms)
{
    int64_t start = mono_ms();
    while (mono_ms() - start < limit_ms) {
        al_cred_snapshot *s = al_cred_cache_acquire(c);
        al_secret_view v;
        int ok = al_cred_lookup(s, name, &v) == AL_OK && v.len == strlen(want) &&
                 memcmp(v.value, want, v.len) == 0;
        al_cred_snapshot_release(s);
        if (ok)
            return mono_ms() - start;
        usleep(10000);
    }
    return -1;
}

static void test_picks_up_changes_within_one_second(void **state)
{
    (void)state;
    al_cred_cache *c = NULL;
    /* No store yet: serve starts with no credentials and finds the store later. */
    assert_int_equal(al_cred_cache_open(dir, &c), AL_OK);
    al_cred_snapshot *s = al_cred_cache_acquire(c);
    al_secret_view v;
    assert_int_equal(al_cred_lookup(s, "openai", &v), AL_ERR_NOTFOUND);
    al_cred_snapshot_release(s);

    put_key("openai", "sk-first", 1);
    int64_t t = wait_for(c, "openai", "sk-first", 3000);
    assert_true(t >= 0 && t < 1000);

    /* Hold the old snapshot across the rotation: it stays valid and unchanged. */
    al_cred_snapshot *held = al_cred_cache_acquire(c);
    put_key("openai", "sk-second", 0);
    t = wait_for(c, "openai", "sk-second", 3000);
    assert_true(t >= 0 && t < 1000);
    assert_int_equal(al_cred_lookup(held, "openai", &v), AL_OK);
    assert_memory_equal(v.value, "sk-first", v.len);
    assert_int_equal(v.version, 1);
    al_cred_snapshot_release(held);

    /* The previous version is still usable during its grace period. */
    s = al_cred_cache_acquire(c);
    assert_int_equal(al_cred_lookup(s, "openai", &v), AL_OK);
    assert_int_equal(v.version, 2);
    assert_string_equal(v.kind, "api_key");
    assert_string_equal(v.environment, "prod");
    assert_int_equal(al_cred_lookup_version(s, "openai", 1, &v), AL_OK);
    assert_memory_equal(v.value, "sk-first", v.len);
    assert_int_equal(al_cred_lookup_version(s, "openai", 7, &v), AL_ERR_NOTFOUND);
    al_cred_snapshot_release(s);
    al_cred_cache_close(c);
}

static void flip_current_sealed_byte(const char *provider)
{
    char path[300];
    sqlite3 *db = NULL;
    snprintf(path, sizeof path, "%s/identity.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char sql[512];
    /* zeroblob-overwrite the sealed secret of the current version and bump the change
     * counter, as a corrupt or hostile write would. */
    snprintf(sql, sizeof sql,
             "UPDATE versions SET sealed = zeroblob(length(sealed)) WHERE provider = '%s' AND "
             "version = (SELECT current_version FROM providers WHERE name = '%s');"
             "UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'generation';",
             provider, provider);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_failed_refresh_keeps_old_snapshot(void **state)
{
    (void)state;
    al_cred_cache *c = NULL;
    put_key("k", "good-secret", 1);
    assert_int_equal(al_cred_cache_open(dir, &c), AL_OK);
    assert_true(wait_for(c, "k", "good-secret", 100) >= 0);
    al_cred_snapshot *s = al_cred_cache_acquire(c);
    uint64_t gen = al_cred_snapshot_generation(s);
    al_cred_snapshot_release(s);
    flip_current_sealed_byte("k");
    /* wait (bounded) until the watcher has tried the changed store and failed, rather
     * than sleeping and hoping it has */
    uint64_t failed = 0;
    int64_t start = mono_ms();
    while (!(al_cred_cache_failed_generation(c, &failed) && failed > gen) &&
           mono_ms() - start < 10000)
        usleep(10000);
    assert_true(failed > gen);
    s = al_cred_cache_acquire(c);
    assert_int_equal(al_cred_snapshot_generation(s), gen);
    al_secret_view v;
    assert_int_equal(al_cred_lookup(s, "k", &v), AL_OK);
    assert_memory_equal(v.value, "good-secret", v.len);
    al_cred_snapshot_release(s);
    /* A good write afterwards is picked up again. */
    al_identity *id = NULL;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    al_provider_spec sp = {.name = "k",
                           .kind = "api_key",
                           .secret = (const unsigned char *)"fixed",
                           .secret_len = 5,
                           .grace_s = 0};
    assert_int_equal(al_identity_update(id, &sp, NULL), AL_OK);
    al_identity_close(id);
    assert_true(wait_for(c, "k", "fixed", 10000) >= 0);
    al_cred_cache_close(c);
}

static void test_follows_master_key_rotation(void **state)
{
    (void)state;
    al_cred_cache *c = NULL;
    put_key("k", "before-rotation", 1);
    assert_int_equal(al_cred_cache_open(dir, &c), AL_OK);
    al_identity *id = NULL;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    assert_int_equal(al_identity_rotate_master_key(id, NULL), AL_OK);
    al_identity_close(id);
    /* The running cache re-reads the key file and keeps serving new versions. */
    put_key("k", "after-rotation", 0);
    int64_t t = wait_for(c, "k", "after-rotation", 3000);
    assert_true(t >= 0 && t < 1000);
    al_cred_cache_close(c);
}

typedef struct race {
    al_cred_cache *c;
    atomic_int stop;
    atomic_long lookups;
} race;

static void *reader(void *arg)
{
    race *r = arg;
    while (!atomic_load(&r->stop)) {
        al_cred_snapshot *s = al_cred_cache_acquire(r->c);
        al_secret_view v;
        if (al_cred_lookup(s, "k", &v) == AL_OK) {
            /* Touch every byte: ASan reports a use after free if the swap freed it. */
            volatile unsigned sum = 0;
            for (size_t i = 0; i < v.len; i++)
                sum += v.value[i];
            (void)sum;
            if (v.len < 4 || memcmp(v.value, "val-", 4) != 0)
                abort();
        }
        al_cred_snapshot_release(s);
        atomic_fetch_add(&r->lookups, 1);
    }
    return NULL;
}

static void test_readers_race_the_swap(void **state)
{
    (void)state;
    race r = {0};
    pthread_t th[3];
    put_key("k", "val-0", 1);
    assert_int_equal(al_cred_cache_open(dir, &r.c), AL_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &r), 0);
    for (int i = 1; i <= 8; i++) {
        char v[16];
        snprintf(v, sizeof v, "val-%d", i);
        put_key("k", v, 0);
        assert_true(wait_for(r.c, "k", v, 2000) >= 0);
    }
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_true(atomic_load(&r.lookups) > 100);

    /* Cost of acquire + release, uncontended (printed, not asserted: shared machine). */
    int64_t t0 = mono_ms();
    for (int i = 0; i < 1000000; i++)
        al_cred_snapshot_release(al_cred_cache_acquire(r.c));
    int64_t dt = mono_ms() - t0;
    print_message("acquire+release: %.1f ns each (1e6 iterations, %lld ms)\n",
                  (double)dt * 1e6 / 1e6, (long long)dt);
    al_cred_cache_close(r.c);
}

static int64_t fake_ms = 1000000;
static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_ms;
}

static void test_pool_rest_and_fallback(void **state)
{
    (void)state;
    al_cred_cache *c = NULL;
    put_key("a", "key-a", 1);
    put_key("b", "key-b", 1);
    put_key("c", "key-c", 1);
    put_key("fb", "key-fb", 1);
    assert_int_equal(al_cred_cache_open(dir, &c), AL_OK);
    al_cred_cache_set_clock(c, fake_clock, NULL);
    char *pool[] = {"a", "b", "c"};
    al_target t;
    memset(&t, 0, sizeof t);
    t.name = "llm";
    t.auth.providers = pool;
    t.auth.provider_count = 3;
    al_cred_snapshot *s = al_cred_cache_acquire(c);
    al_secret_view v;
    int counts[3] = {0};
    char seq[16] = {0};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_OK);
        counts[v.provider[0] - 'a']++;
        seq[i] = v.provider[0];
    }
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 2);
    assert_int_equal(counts[2], 2);
    assert_true(seq[0] != seq[1] && seq[1] != seq[2] && seq[0] == seq[3]); /* rotates */

    /* b got 429 with Retry-After: 30 -> skipped for 30 s, then back. */
    al_cred_rest(c, "b", 30);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_OK);
        assert_string_not_equal(v.provider, "b");
    }
    fake_ms += 30 * 1000;
    int saw_b = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_OK);
        saw_b |= strcmp(v.provider, "b") == 0;
    }
    assert_true(saw_b);
    /* Every member resting: AL_ERR_AGAIN, the data path answers 429 itself. */
    /* A 429 to one member can be retried while another is awake (al_cred_pool_awake). */
    al_cred_rest(c, "a", 5);
    assert_true(al_cred_pool_awake(c, s, &t, "a"));
    al_cred_rest(c, "b", 5);
    assert_true(al_cred_pool_awake(c, s, &t, "a")); /* c */
    assert_false(al_cred_pool_awake(c, s, &t, "c"));
    al_cred_rest(c, "c", 5);
    assert_false(al_cred_pool_awake(c, s, &t, NULL));
    assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_ERR_AGAIN);
    fake_ms += 5000;
    assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_OK);
    assert_true(al_cred_pool_awake(c, s, &t, "a"));

    /* A pool member missing from the store is skipped. */
    char *pool2[] = {"missing", "a"};
    t.auth.providers = pool2;
    t.auth.provider_count = 2;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(al_cred_select(c, s, &t, 0, &v), AL_OK);
        assert_string_equal(v.provider, "a");
    }
    assert_false(al_cred_pool_awake(c, s, &t, "a")); /* "missing" has no key */
    /* Fallback after 401/403. */
    assert_int_equal(al_cred_select(c, s, &t, 1, &v), AL_ERR_NOTFOUND);
    t.auth.fallback_provider = "fb";
    assert_int_equal(al_cred_select(c, s, &t, 1, &v), AL_OK);
    assert_string_equal(v.provider, "fb");
    assert_memory_equal(v.value, "key-fb", v.len);
    al_cred_snapshot_release(s);
    al_cred_cache_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_picks_up_changes_within_one_second, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_refresh_keeps_old_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follows_master_key_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readers_race_the_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_rest_and_fallback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
