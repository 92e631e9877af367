/* al_up_admit: per-host admission of upstream requests, shared by both upstream engines
 * (the native al_up_engine and the libcurl al_upstream), free of I/O and timers.
 *
 * A host has a number of slots (the engine says how many each time: the native engine
 * allows more once the host speaks HTTP/2); one client address holds at most its
 * request's client cap of them (0 = no cap). A request that may not run waits in the
 * host's list, in order; when a counted request leaves, the freed slot goes to the
 * first waiting request whose client is under its cap, so one agent stalling its
 * transfers cannot lock the others out. What happens to an admitted request
 * (dispatch, timers, failing one that waited too long) is the engine's.
 *
 * The engine embeds an al_up_admit_host in its host and an al_up_admit_ticket in its
 * request (owner points back at the request). Client entries are allocated here and
 * freed with their last ticket. */
#ifndef AL_UP_ADMIT_H
#define AL_UP_ADMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct al_up_admit_client al_up_admit_client;
typedef struct al_up_admit_ticket al_up_admit_ticket;

typedef struct al_up_admit_host {
    al_up_admit_client *clients;     /* owned */
    size_t active;                   /* counted requests */
    al_up_admit_ticket *head, *tail; /* waiting, linked through qnext */
} al_up_admit_host;

struct al_up_admit_ticket {
    void *owner;               /* the engine's request */
    al_up_admit_ticket *qnext; /* host's waiting list */
    al_up_admit_client *cq;    /* its client's entry (NULL: not counted per client) */
    uint32_t client_cap;       /* max_per_client (0 = none) */
    unsigned counted : 1;      /* counts in the host's active */
    unsigned queued : 1;       /* waits in the host's list */
};

/* t (zeroed) joins h for owner: counted per client when client is not NULL/empty.
 * AL_ERR_NOMEM leaves h as it was. */
int al_up_admit_join(al_up_admit_host *h, al_up_admit_ticket *t, void *owner, const char *client,
                     uint32_t client_cap);

/* May t take a slot of h (host_cap slots) now? */
int al_up_admit_may_run(const al_up_admit_host *h, const al_up_admit_ticket *t, size_t host_cap);

/* t is over its client's cap (why a waiting request still waits). */
int al_up_admit_client_over(const al_up_admit_ticket *t);

/* t takes a slot (counts in h and its client). */
void al_up_admit_count(al_up_admit_host *h, al_up_admit_ticket *t);

/* t waits at the end of h's list. */
void al_up_admit_wait(al_up_admit_host *h, al_up_admit_ticket *t);

/* t leaves h: off the waiting list, or uncounted; its client reference goes. When t
 * was counted, the first waiting ticket that may run now (host_cap slots) is taken
 * off the list, counted and returned for the engine to dispatch; otherwise NULL. */
al_up_admit_ticket *al_up_admit_leave(al_up_admit_host *h, al_up_admit_ticket *t, size_t host_cap);

/* The head of h's waiting list when it may run now (host_cap slots): taken off the
 * list, counted and returned; NULL when the list is empty or its head must wait. */
al_up_admit_ticket *al_up_admit_take_head(al_up_admit_host *h, size_t host_cap);

/* Nothing counted, waiting or attached: the engine may drop its host. */
int al_up_admit_unused(const al_up_admit_host *h);

#endif
