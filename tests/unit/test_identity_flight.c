/* Unit tests of identity/al_flight: the refresh engine with an injected clock (refresh
 * ahead, expiry, back-off, force rate limit), and the keyed table's single flight,
 * stale-while-failing, invalidation by generation and cancel — with a loader the test
 * completes by hand, and with 32 threads racing a cold key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_flight.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- engine ---------------------------------------------------------------------- */

static void test_engine_cold_loads_once_then_waits(void **state)
{
    (void)state;
    al_refresh r = {0};
    assert_int_equal(al_refresh_decide(&r, 1000, 0, 10000), AL_REFRESH_LOAD_AND_WAIT);
    assert_int_equal(al_refresh_decide(&r, 1001, 0, 10000), AL_REFRESH_WAIT);
    assert_int_equal(al_refresh_decide(&r, 1002, 1, 10000), AL_REFRESH_WAIT);
    al_refresh_succeeded(&r, 2000, 800, 1000);
    assert_int_equal(al_refresh_decide(&r, 2000, 0, 10000), AL_REFRESH_USE);
    assert_int_equal(al_refresh_decide(&r, 2799, 0, 10000), AL_REFRESH_USE);
    /* 80 %: one background load, everyone keeps using the value meanwhile */
    assert_int_equal(al_refresh_decide(&r, 2800, 0, 10000), AL_REFRESH_USE_AND_LOAD);
    assert_int_equal(al_refresh_decide(&r, 2801, 0, 10000), AL_REFRESH_USE);
    assert_int_equal(al_refresh_decide(&r, 2999, 0, 10000), AL_REFRESH_USE);
    /* expired while the refresh still runs: wait for it */
    assert_int_equal(al_refresh_decide(&r, 3000, 0, 10000), AL_REFRESH_WAIT);
    assert_string_equal(al_refresh_action_to_str(AL_REFRESH_WAIT), "wait");
}

static void test_engine_failures_back_off_and_keep_the_value(void **state)
{
    (void)state;
    al_refresh r = {0};
    assert_int_equal(al_refresh_decide(&r, 0, 0, 0), AL_REFRESH_LOAD_AND_WAIT);
    al_refresh_succeeded(&r, 0, 800, 1000);
    assert_int_equal(al_refresh_decide(&r, 900, 0, 0), AL_REFRESH_USE_AND_LOAD);
    assert_int_equal(al_refresh_failed(&r, 900, 100, 350), 100);
    /* still usable, but no new load before the back-off passes */
    assert_int_equal(al_refresh_decide(&r, 950, 0, 0), AL_REFRESH_USE);
    assert_int_equal(al_refresh_decide(&r, 999, 0, 0), AL_REFRESH_USE);
    assert_int_equal(al_refresh_decide(&r, 1000, 0, 0), AL_REFRESH_LOAD_AND_WAIT);
    assert_int_equal(al_refresh_failed(&r, 1000, 100, 350), 200);
    /* expired and backing off: fail fast instead of storming the server */
    assert_int_equal(al_refresh_decide(&r, 1100, 0, 0), AL_REFRESH_FAIL);
    assert_int_equal(al_refresh_decide(&r, 1200, 0, 0), AL_REFRESH_LOAD_AND_WAIT);
    assert_int_equal(al_refresh_failed(&r, 1200, 100, 350), 350); /* capped */
    assert_int_equal(al_refresh_decide(&r, 1550, 0, 0), AL_REFRESH_LOAD_AND_WAIT);
    al_refresh_succeeded(&r, 1600, 800, 1000);
    assert_int_equal(r.failures, 0);
    assert_int_equal(al_refresh_decide(&r, 1601, 0, 0), AL_REFRESH_USE);
}

static void test_engine_force_is_rate_limited_and_drop_reloads(void **state)
{
    (void)state;
    al_refresh r = {0};
    al_refresh_decide(&r, 0, 0, 0);
    al_refresh_succeeded(&r, 0, 60000, 120000);
    assert_int_equal(al_refresh_decide(&r, 5000, 1, 10000), AL_REFRESH_USE); /* too young */
    assert_int_equal(al_refresh_decide(&r, 10000, 1, 10000), AL_REFRESH_LOAD_AND_WAIT);
    al_refresh_succeeded(&r, 11000, 60000, 120000);
    al_refresh_drop(&r);
    assert_int_equal(al_refresh_decide(&r, 11001, 0, 10000), AL_REFRESH_LOAD_AND_WAIT);
}

/* ---- table ----------------------------------------------------------------------- */

typedef struct val {
    atomic_int refs;
    int n;
} val;

static atomic_int live_values;

static void v_retain(void *p)
{
    atomic_fetch_add(&((val *)p)->refs, 1);
}

static void v_release(void *p)
{
    if (atomic_fetch_sub(&((val *)p)->refs, 1) == 1) {
        atomic_fetch_sub(&live_values, 1);
        free(p);
    }
}

static val *v_new(int n)
{
    val *v = calloc(1, sizeof *v);
    atomic_init(&v->refs, 1);
    v->n = n;
    atomic_fetch_add(&live_values, 1);
    return v;
}

typedef struct fixture {
    al_flight *f;
    int64_t now;
    atomic_int loads;
    char last_key[64];
    int sync_result; /* 0: loads stay pending; >0: complete at once with v_new(n) */
} fixture;

static int64_t clock_fn(void *arg)
{
    return ((fixture *)arg)->now;
}

static void load_fn(void *arg, al_flight *f, const char *key, void *key_data)
{
    fixture *fx = arg;
    (void)key_data;
    atomic_fetch_add(&fx->loads, 1);
    snprintf(fx->last_key, sizeof fx->last_key, "%s", key);
    if (fx->sync_result)
        al_flight_complete(f, key, AL_OK, v_new(fx->sync_result), 800, 1000, NULL);
}

static fixture *fx_new(void)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->now = 1000000;
    al_flight_config c = {.value_ops = {v_retain, v_release},
                          .load = load_fn,
                          .load_arg = fx,
                          .base_backoff_ms = 100,
                          .max_backoff_ms = 400,
                          .now_ms = clock_fn,
                          .clock_arg = fx,
                          .name = "test"};
    assert_int_equal(al_flight_new(&c, &fx->f), AL_OK);
    return fx;
}

static void fx_free(fixture *fx)
{
    al_flight_free(fx->f);
    free(fx);
    assert_int_equal(atomic_load(&live_values), 0);
}

typedef struct got {
    int calls, err, n;
    uint64_t gen;
    char msg[256];
} got;

static void got_cb(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    got *g = arg;
    g->calls++;
    g->err = err;
    g->n = value ? ((val *)value)->n : -1;
    g->gen = gen;
    snprintf(g->msg, sizeof g->msg, "%s", msg ? msg : "");
}

static void test_table_single_flight_and_refresh_ahead(void **state)
{
    (void)state;
    fixture *fx = fx_new();
    got g[10] = {{0}};
    al_flight_result r;
    for (int i = 0; i < 10; i++)
        assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, got_cb, &g[i], &r), AL_ERR_AGAIN);
    assert_int_equal(atomic_load(&fx->loads), 1);
    al_flight_complete(fx->f, "k", AL_OK, v_new(7), 800, 1000, NULL);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].err, AL_OK);
        assert_int_equal(g[i].n, 7);
    }
    /* cached: at once, retained for the caller */
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, got_cb, &g[0], &r), AL_OK);
    assert_int_equal(((val *)r.value)->n, 7);
    uint64_t gen = r.gen;
    al_flight_release(fx->f, r.value);
    /* at 80 %: the value at once AND one background load; nobody waits */
    fx->now += 800;
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    al_flight_release(fx->f, r.value);
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    al_flight_release(fx->f, r.value);
    assert_int_equal(atomic_load(&fx->loads), 2);
    al_flight_complete(fx->f, "k", AL_OK, v_new(8), 800, 1000, NULL);
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    assert_int_equal(((val *)r.value)->n, 8);
    assert_true(r.gen != gen);
    al_flight_release(fx->f, r.value);
    fx_free(fx);
}

static void test_table_stale_while_failing_then_backoff_error(void **state)
{
    (void)state;
    fixture *fx = fx_new();
    al_flight_result r;
    got g = {0};
    fx->sync_result = 1;
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    al_flight_release(fx->f, r.value);
    fx->sync_result = 0;
    fx->now += 900; /* refresh due */
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    al_flight_release(fx->f, r.value);
    al_flight_complete(fx->f, "k", AL_ERR_PROTO, NULL, 0, 0, "idp said invalid_client");
    /* provider down, value still valid: still served */
    fx->now += 50;
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, NULL, NULL, &r), AL_OK);
    assert_int_equal(((val *)r.value)->n, 1);
    al_flight_release(fx->f, r.value);
    assert_int_equal(atomic_load(&fx->loads), 2); /* backing off: no new load */
    /* after expiry, a load is allowed again (back-off passed); it fails: waiter told */
    fx->now += 100;
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, got_cb, &g, &r), AL_ERR_AGAIN);
    assert_int_equal(atomic_load(&fx->loads), 3);
    al_flight_complete(fx->f, "k", AL_ERR_TIMEOUT, NULL, 0, 0, "idp.test did not answer");
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.err, AL_ERR_TIMEOUT);
    assert_string_equal(g.msg, "idp.test did not answer");
    /* within the back-off: fails at once with the last error, no load */
    assert_int_equal(al_flight_get(fx->f, "k", NULL, 0, got_cb, &g, &r), AL_ERR_TIMEOUT);
    assert_string_equal(r.msg, "idp.test did not answer");
    assert_int_equal(atomic_load(&fx->loads), 3);
    assert_int_equal(g.calls, 1);
    fx_free(fx);
}

static void test_table_invalidate_drops_one_generation_once(void **state)
{
    (void)state;
    fixture *fx = fx_new();
    al_flight_result r;
    fx->sync_result = 5;
    assert_int_equal(al_flight_get(fx->f, "tok", NULL, 0, NULL, NULL, &r), AL_OK);
    uint64_t gen = r.gen;
    al_flight_release(fx->f, r.value);
    fx->sync_result = 0;
    /* 3 requests saw 401 with the same token: one drop */
    assert_int_equal(al_flight_invalidate(fx->f, "tok", gen), 1);
    assert_int_equal(al_flight_invalidate(fx->f, "tok", gen), 0);
    got g1 = {0}, g2 = {0};
    assert_int_equal(al_flight_get(fx->f, "tok", NULL, 0, got_cb, &g1, &r), AL_ERR_AGAIN);
    assert_int_equal(al_flight_get(fx->f, "tok", NULL, 0, got_cb, &g2, &r), AL_ERR_AGAIN);
    assert_int_equal(atomic_load(&fx->loads), 2);
    /* a late 401 for the old token must not drop the new one */
    al_flight_complete(fx->f, "tok", AL_OK, v_new(6), 800, 1000, NULL);
    assert_int_equal(al_flight_invalidate(fx->f, "tok", gen), 0);
    assert_int_equal(g1.n, 6);
    assert_int_equal(g2.n, 6);
    assert_true(g1.gen != gen);
    fx_free(fx);
}

static void test_table_cancel_and_keys_are_separate(void **state)
{
    (void)state;
    fixture *fx = fx_new();
    al_flight_result r, r2;
    got g1 = {0}, g2 = {0};
    assert_int_equal(al_flight_get(fx->f, "a", NULL, 0, got_cb, &g1, &r), AL_ERR_AGAIN);
    assert_int_equal(al_flight_get(fx->f, "b", NULL, 0, got_cb, &g2, &r2), AL_ERR_AGAIN);
    assert_int_equal(atomic_load(&fx->loads), 2);
    assert_int_equal(al_flight_cancel(fx->f, r.wait_id), 1);
    assert_int_equal(al_flight_cancel(fx->f, r.wait_id), 0);
    al_flight_complete(fx->f, "a", AL_OK, v_new(1), 800, 1000, NULL);
    al_flight_complete(fx->f, "b", AL_OK, v_new(2), 800, 1000, NULL);
    assert_int_equal(g1.calls, 0);
    assert_int_equal(g2.calls, 1);
    assert_int_equal(g2.n, 2);
    assert_int_equal(al_flight_cancel(fx->f, r2.wait_id), 0);
    fx_free(fx);
}

/* 32 threads ask for a cold key at the same moment; a loader thread completes it. */
typedef struct race {
    fixture *fx;
    atomic_int ok;
    pthread_barrier_t b;
} race;

typedef struct race_waiter {
    race *rc;
    pthread_mutex_t m;
    pthread_cond_t c;
    int done;
} race_waiter;

static void race_cb(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    race_waiter *w = arg;
    (void)gen;
    (void)msg;
    pthread_mutex_lock(&w->m);
    if (err == AL_OK && value && ((val *)value)->n == 42)
        atomic_fetch_add(&w->rc->ok, 1);
    w->done = 1;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

static void *race_thread(void *arg)
{
    race *rc = arg;
    race_waiter w = {.rc = rc};
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.c, NULL);
    pthread_barrier_wait(&rc->b);
    al_flight_result r;
    int e = al_flight_get(rc->fx->f, "cold", NULL, 0, race_cb, &w, &r);
    if (e == AL_OK) {
        if (((val *)r.value)->n == 42)
            atomic_fetch_add(&rc->ok, 1);
        al_flight_release(rc->fx->f, r.value);
    } else if (e == AL_ERR_AGAIN) {
        pthread_mutex_lock(&w.m);
        while (!w.done)
            pthread_cond_wait(&w.c, &w.m);
        pthread_mutex_unlock(&w.m);
    }
    pthread_cond_destroy(&w.c);
    pthread_mutex_destroy(&w.m);
    return NULL;
}

static void *completer(void *arg)
{
    race *rc = arg;
    while (atomic_load(&rc->fx->loads) == 0)
        usleep(1000);
    usleep(20000); /* let the others pile up as waiters */
    al_flight_complete(rc->fx->f, "cold", AL_OK, v_new(42), 800, 1000, NULL);
    return NULL;
}

static void test_table_32_threads_cold_key_one_load(void **state)
{
    (void)state;
    race rc = {.fx = fx_new()};
    pthread_barrier_init(&rc.b, NULL, 32);
    pthread_t t[32], c;
    pthread_create(&c, NULL, completer, &rc);
    for (int i = 0; i < 32; i++)
        pthread_create(&t[i], NULL, race_thread, &rc);
    for (int i = 0; i < 32; i++)
        pthread_join(t[i], NULL);
    pthread_join(c, NULL);
    assert_int_equal(atomic_load(&rc.fx->loads), 1);
    assert_int_equal(atomic_load(&rc.ok), 32);
    pthread_barrier_destroy(&rc.b);
    fx_free(rc.fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_cold_loads_once_then_waits),
        cmocka_unit_test(test_engine_failures_back_off_and_keep_the_value),
        cmocka_unit_test(test_engine_force_is_rate_limited_and_drop_reloads),
        cmocka_unit_test(test_table_single_flight_and_refresh_ahead),
        cmocka_unit_test(test_table_stale_while_failing_then_backoff_error),
        cmocka_unit_test(test_table_invalidate_drops_one_generation_once),
        cmocka_unit_test(test_table_cancel_and_keys_are_separate),
        cmocka_unit_test(test_table_32_threads_cold_key_one_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
