/* Unit tests for upstream/al_up_admit: per-host admission shared by both upstream
 * engines. Host slots, the per-client cap, the waiting list's order, the freed slot
 * going to the first waiting request whose client is under its cap (not simply the
 * head), leaving while waiting, the HTTP/2 head-only admission, client entries
 * shared by address and freed with their last ticket, and long client addresses
 * (cut at the entry's size: they share one entry). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "upstream/al_up_admit.h"

#define CAP 2

typedef struct req {
    int id;
    al_up_admit_ticket t;
} req;

/* r joins h and runs or waits, as the engines' start does: 1 ran, 0 waits. */
static int start(al_up_admit_host *h, req *r, int id, const char *client, uint32_t cap)
{
    memset(r, 0, sizeof *r);
    r->id = id;
    assert_int_equal(al_up_admit_join(h, &r->t, r, client, cap), AL_OK);
    if (!al_up_admit_may_run(h, &r->t, CAP)) {
        al_up_admit_wait(h, &r->t);
        return 0;
    }
    al_up_admit_count(h, &r->t);
    return 1;
}

/* r leaves; the id of the request admitted in its place, or 0. */
static int leave(al_up_admit_host *h, req *r)
{
    al_up_admit_ticket *n = al_up_admit_leave(h, &r->t, CAP);
    if (!n)
        return 0;
    assert_true(n->counted);
    assert_false(n->queued);
    assert_null(n->qnext);
    return ((req *)n->owner)->id;
}

static void test_host_slots_in_order(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req r[5];
    assert_true(al_up_admit_unused(&h));
    assert_int_equal(start(&h, &r[0], 1, NULL, 0), 1);
    assert_int_equal(start(&h, &r[1], 2, "", 0), 1);
    assert_int_equal(start(&h, &r[2], 3, NULL, 0), 0);
    assert_int_equal(start(&h, &r[3], 4, NULL, 0), 0);
    assert_int_equal(start(&h, &r[4], 5, NULL, 0), 0);
    assert_false(al_up_admit_client_over(&r[2].t)); /* waits for the host, not a cap */
    assert_int_equal(h.active, 2);
    assert_int_equal(leave(&h, &r[1]), 3);
    assert_int_equal(h.active, 2);
    /* a waiting one leaving (its queue timeout) admits nobody and keeps the order */
    assert_int_equal(leave(&h, &r[3]), 0);
    assert_int_equal(leave(&h, &r[0]), 5);
    assert_int_equal(leave(&h, &r[2]), 0);
    assert_int_equal(leave(&h, &r[4]), 0);
    assert_int_equal(h.active, 0);
    assert_true(al_up_admit_unused(&h));
}

static void test_client_cap_skips_to_others(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req a1, a2, a3, b1;
    assert_int_equal(start(&h, &a1, 1, "10.0.0.1", 1), 1);
    assert_int_equal(start(&h, &a2, 2, "10.0.0.1", 1), 0);
    assert_true(al_up_admit_client_over(&a2.t));
    assert_int_equal(start(&h, &a3, 3, "10.0.0.1", 1), 0);
    assert_int_equal(start(&h, &b1, 4, "10.0.0.2", 1), 1); /* the host has a slot */
    assert_false(al_up_admit_unused(&h));
    /* b1's slot frees: a2 (first waiting) is still over its cap, nobody else waits */
    assert_int_equal(leave(&h, &b1), 0);
    assert_int_equal(h.active, 1);
    /* a1 ends: a2 runs, a3 still waits for a2 */
    assert_int_equal(leave(&h, &a1), 2);
    assert_true(al_up_admit_client_over(&a3.t));
    assert_int_equal(leave(&h, &a2), 3);
    assert_int_equal(leave(&h, &a3), 0);
    assert_true(al_up_admit_unused(&h));
}

static void test_freed_slot_skips_capped_head(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req a1, b1, a2, c1;
    assert_int_equal(start(&h, &a1, 1, "a", 1), 1);
    assert_int_equal(start(&h, &b1, 2, "b", 0), 1);
    assert_int_equal(start(&h, &a2, 3, "a", 1), 0); /* host full and a at its cap */
    assert_int_equal(start(&h, &c1, 4, "c", 1), 0); /* host full */
    /* b's slot goes to c1: a2 in front of it is over a's cap */
    assert_int_equal(leave(&h, &b1), 4);
    assert_ptr_equal(h.head, &a2.t);
    assert_ptr_equal(h.tail, &a2.t);
    assert_int_equal(leave(&h, &c1), 0); /* a2 still over its cap */
    assert_int_equal(leave(&h, &a1), 3);
    assert_null(h.head);
    assert_null(h.tail);
    assert_int_equal(leave(&h, &a2), 0);
    assert_true(al_up_admit_unused(&h));
}

static void test_take_head_only(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req r1, r2, r3, r4;
    assert_null(al_up_admit_take_head(&h, 10));
    assert_int_equal(start(&h, &r1, 1, "a", 1), 1);
    assert_int_equal(start(&h, &r2, 2, "b", 0), 1);
    assert_int_equal(start(&h, &r3, 3, "b", 0), 0);
    assert_int_equal(start(&h, &r4, 4, "a", 1), 0);
    /* more slots (HTTP/2): the head runs, then a's request behind it stops the walk */
    al_up_admit_ticket *t = al_up_admit_take_head(&h, 10);
    assert_non_null(t);
    assert_int_equal(((req *)t->owner)->id, 3);
    assert_null(al_up_admit_take_head(&h, 10));
    assert_int_equal(h.active, 3);
    /* back to CAP slots: b's slot frees, r4 is still over a's cap */
    assert_int_equal(leave(&h, &r2), 0);
    assert_int_equal(leave(&h, &r1), 4);
    assert_null(al_up_admit_take_head(&h, 10));
    assert_int_equal(leave(&h, &r3), 0);
    assert_int_equal(leave(&h, &r4), 0);
    assert_true(al_up_admit_unused(&h));
}

static void test_clients_shared_and_freed(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req a1, a2, b1;
    char long1[100], long2[100];
    memset(long1, 'x', sizeof long1 - 1);
    long1[sizeof long1 - 1] = '\0';
    memcpy(long2, long1, sizeof long2);
    long2[90] = 'y'; /* differs past the entry's size: the same client */
    assert_int_equal(start(&h, &a1, 1, long1, 1), 1);
    assert_int_equal(start(&h, &a2, 2, long2, 1), 0);
    assert_ptr_equal(a1.t.cq, a2.t.cq);
    assert_true(al_up_admit_client_over(&a2.t));
    /* a prefix of an address is another client: it takes the host's second slot */
    assert_int_equal(start(&h, &b1, 3, "xxxx", 1), 1);
    assert_ptr_not_equal(b1.t.cq, a1.t.cq);
    al_up_admit_host h2 = {0};
    req p, q;
    assert_int_equal(start(&h2, &p, 1, "10.0.0.1", 1), 1);
    assert_int_equal(start(&h2, &q, 2, "10.0.0.10", 1), 1); /* not 10.0.0.1's cap */
    assert_ptr_not_equal(p.t.cq, q.t.cq);
    assert_int_equal(leave(&h2, &p), 0);
    assert_int_equal(leave(&h2, &q), 0);
    assert_null(h2.clients);
    assert_true(al_up_admit_unused(&h2));
    assert_int_equal(leave(&h, &a1), 2);
    assert_int_equal(leave(&h, &a2), 0);
    assert_int_equal(leave(&h, &b1), 0);
    assert_null(h.clients);
    assert_true(al_up_admit_unused(&h));
}

static void test_no_cap_without_client(void **state)
{
    (void)state;
    al_up_admit_host h = {0};
    req r1, r2;
    /* a cap with no client address counts nobody per client */
    assert_int_equal(start(&h, &r1, 1, NULL, 1), 1);
    assert_int_equal(start(&h, &r2, 2, NULL, 1), 1);
    assert_null(h.clients);
    assert_int_equal(leave(&h, &r1), 0);
    assert_int_equal(leave(&h, &r2), 0);
    /* leaving twice (an engine's second cleanup pass) changes nothing */
    assert_int_equal(leave(&h, &r2), 0);
    assert_int_equal(h.active, 0);
    assert_true(al_up_admit_unused(&h));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_slots_in_order),
        cmocka_unit_test(test_client_cap_skips_to_others),
        cmocka_unit_test(test_freed_slot_skips_capped_head),
        cmocka_unit_test(test_take_head_only),
        cmocka_unit_test(test_clients_shared_and_freed),
        cmocka_unit_test(test_no_cap_without_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
