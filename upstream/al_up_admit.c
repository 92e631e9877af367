/* al_up_admit: per-host admission of upstream requests (see al_up_admit.h). */
#include "al_up_admit.h"

#include "common/al_err.h"

#include <stdlib.h>
#include <string.h>

/* One client address's requests to a host: `active` counted, `refs` tickets attached
 * (counted or waiting); freed with its last ticket. */
struct al_up_admit_client {
    al_up_admit_client *next;
    size_t active, refs;
    char addr[48];
};

static al_up_admit_client *client_get(al_up_admit_host *h, const char *addr)
{
    size_t n = strnlen(addr, sizeof((al_up_admit_client *)0)->addr - 1);
    for (al_up_admit_client *c = h->clients; c; c = c->next)
        if (c->addr[n] == '\0' && !memcmp(c->addr, addr, n))
            return c;
    al_up_admit_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    memcpy(c->addr, addr, n);
    c->next = h->clients;
    h->clients = c;
    return c;
}

static void client_unref(al_up_admit_host *h, al_up_admit_client *c)
{
    if (--c->refs)
        return;
    for (al_up_admit_client **pp = &h->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            free(c);
            return;
        }
}

int al_up_admit_join(al_up_admit_host *h, al_up_admit_ticket *t, void *owner, const char *client,
                     uint32_t client_cap)
{
    t->owner = owner;
    t->client_cap = client_cap;
    if (client && client[0]) {
        if (!(t->cq = client_get(h, client)))
            return AL_ERR_NOMEM;
        t->cq->refs++;
    }
    return AL_OK;
}

int al_up_admit_client_over(const al_up_admit_ticket *t)
{
    return t->client_cap && t->cq && t->cq->active >= t->client_cap;
}

int al_up_admit_may_run(const al_up_admit_host *h, const al_up_admit_ticket *t, size_t host_cap)
{
    return h->active < host_cap && !al_up_admit_client_over(t);
}

void al_up_admit_count(al_up_admit_host *h, al_up_admit_ticket *t)
{
    t->counted = 1;
    h->active++;
    if (t->cq)
        t->cq->active++;
}

void al_up_admit_wait(al_up_admit_host *h, al_up_admit_ticket *t)
{
    t->queued = 1;
    t->qnext = NULL;
    if (h->tail)
        h->tail->qnext = t;
    else
        h->head = t;
    h->tail = t;
}

/* n (after prev, or the head) off the waiting list. */
static void unlink_waiting(al_up_admit_host *h, al_up_admit_ticket *prev, al_up_admit_ticket *n)
{
    if (prev)
        prev->qnext = n->qnext;
    else
        h->head = n->qnext;
    if (h->tail == n)
        h->tail = prev;
    n->qnext = NULL;
    n->queued = 0;
}

al_up_admit_ticket *al_up_admit_leave(al_up_admit_host *h, al_up_admit_ticket *t, size_t host_cap)
{
    al_up_admit_ticket *next = NULL;
    if (t->queued) {
        al_up_admit_ticket *prev = NULL;
        for (al_up_admit_ticket *n = h->head; n; prev = n, n = n->qnext)
            if (n == t) {
                unlink_waiting(h, prev, t);
                break;
            }
        t->queued = 0;
    } else if (t->counted) {
        t->counted = 0;
        h->active--;
        if (t->cq)
            t->cq->active--;
        /* one slot of the host and one of t's client came free: at most one waiting
         * request can use them (the first in order whose client is under its cap) */
        al_up_admit_ticket *prev = NULL;
        for (al_up_admit_ticket *n = h->head; n; prev = n, n = n->qnext)
            if (al_up_admit_may_run(h, n, host_cap)) {
                unlink_waiting(h, prev, n);
                al_up_admit_count(h, n);
                next = n;
                break;
            }
    }
    t->qnext = NULL;
    if (t->cq)
        client_unref(h, t->cq);
    t->cq = NULL;
    return next;
}

al_up_admit_ticket *al_up_admit_take_head(al_up_admit_host *h, size_t host_cap)
{
    al_up_admit_ticket *t = h->head;
    if (!t || !al_up_admit_may_run(h, t, host_cap))
        return NULL;
    unlink_waiting(h, NULL, t);
    al_up_admit_count(h, t);
    return t;
}

int al_up_admit_unused(const al_up_admit_host *h)
{
    return !h->active && !h->head && !h->clients;
}
