/* al_credsrc_oauth2: oauth2_2lo credentials for one worker (see al_credsrc_oauth2.h).
 *
 * Owns: the pending acquires of this worker (a list, loop thread only, except the
 * `ready` hand-off under `lock`), one ev_async that brings token-cache answers from
 * the fetch thread to the loop, and the grants' holds (a token reference + its
 * generation).
 *
 * Invariants: on_done runs on the loop, never inside acquire, at most once, never
 * after cancel; a pending entry is freed exactly once (by the async handler after
 * on_done, or by cancel). The token is never logged; detail strings carry the token
 * endpoint's host and the provider's sanitised error only. */
#include "al_credsrc_oauth2.h"
#include "al_metrics.h"
#include "common/al_err.h"

#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pend {
    struct pend *next, *prev; /* src->pending (loop thread) */
    struct pend *ready_next;  /* src->ready (under lock) */
    al_oauth2_src *src;
    al_credsrc_done_fn done;
    void *arg;
    uint64_t wait_id;
    int answered; /* under lock: the token cache called back (it is on src->ready) */
    int rc;
    al_token *tok; /* retained when rc == AL_OK */
    uint64_t gen;
    char detail[256];
} pend;

typedef struct hold {
    al_token *tok;
    uint64_t gen;
} hold;

struct al_oauth2_src {
    struct ev_loop *loop;
    ev_async wake;
    al_token_client *tc;
    al_cred_cache *creds;
    pthread_mutex_t lock;
    pend *ready; /* answered, waiting for the loop */
    pend *pending;
    char detail[256]; /* the last immediate failure's message (loop thread) */
    struct al_metrics_shard *metrics; /* the worker's; NULL = not counted */
};

void al_oauth2_src_set_metrics(al_oauth2_src *s, struct al_metrics_shard *sh)
{
    s->metrics = sh;
}

static void unlink_pending(al_oauth2_src *s, pend *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        s->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

static void fill_grant(al_cred_grant *g, al_token *tok, uint64_t gen, hold *h)
{
    memset(g, 0, sizeof *g);
    h->tok = tok;
    h->gen = gen;
    g->sv.provider = tok->provider;
    g->sv.version = tok->version;
    g->sv.kind = "oauth2";
    g->sv.value = (const unsigned char *)tok->access_token;
    g->sv.len = tok->len;
    g->sv.fingerprint = tok->fingerprint;
    g->hold = h;
}

/* The token cache's answer, on the fetch thread: hand it to the loop. */
static void on_token(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    pend *p = arg;
    al_oauth2_src *s = p->src;
    pthread_mutex_lock(&s->lock);
    p->rc = err;
    p->gen = gen;
    if (err == AL_OK && value) {
        p->tok = value;
        al_token_retain(p->tok);
    } else if (err == AL_OK) {
        p->rc = AL_ERR_PROTO;
    }
    snprintf(p->detail, sizeof p->detail, "%s", msg ? msg : "");
    p->answered = 1;
    p->ready_next = s->ready;
    s->ready = p;
    pthread_mutex_unlock(&s->lock);
    ev_async_send(s->loop, &s->wake);
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    al_oauth2_src *s = w->data;
    (void)loop;
    (void)revents;
    pthread_mutex_lock(&s->lock);
    pend *list = s->ready;
    s->ready = NULL;
    pthread_mutex_unlock(&s->lock);
    while (list) {
        pend *p = list;
        list = p->ready_next;
        unlink_pending(s, p);
        al_cred_grant g;
        memset(&g, 0, sizeof g);
        hold *h = NULL;
        int rc = p->rc;
        if (rc == AL_OK && !(h = calloc(1, sizeof *h))) {
            al_token_release(p->tok);
            p->tok = NULL;
            rc = AL_ERR_NOMEM;
        }
        if (rc == AL_OK)
            fill_grant(&g, p->tok, p->gen, h);
        else
            g.detail = p->detail; /* valid during on_done: p is freed after it */
        p->done(p->arg, rc, &g);
        free(p);
    }
}

int al_oauth2_src_new(struct ev_loop *loop, al_token_client *tc, al_cred_cache *creds,
                      al_oauth2_src **out)
{
    al_oauth2_src *s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->loop = loop;
    s->tc = tc;
    s->creds = creds;
    pthread_mutex_init(&s->lock, NULL);
    ev_async_init(&s->wake, on_wake);
    s->wake.data = s;
    ev_async_start(loop, &s->wake);
    ev_unref(loop); /* the watcher alone must not keep the loop running */
    *out = s;
    return AL_OK;
}

/* p was answered already (cancel waited for a running callback): take the answer back
 * off the ready list before the loop sees it. */
static void take_back_answer(al_oauth2_src *s, pend *p)
{
    pthread_mutex_lock(&s->lock);
    for (pend **pp = &s->ready; *pp; pp = &(*pp)->ready_next) {
        if (*pp == p) {
            *pp = p->ready_next;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    al_token_release(p->tok);
    p->tok = NULL;
}

static void cancel_pend(al_oauth2_src *s, pend *p)
{
    if (al_token_cancel(s->tc, p->wait_id) == 0)
        take_back_answer(s, p);
    unlink_pending(s, p);
    free(p);
}

void al_oauth2_src_free(al_oauth2_src *s)
{
    if (!s)
        return;
    while (s->pending)
        cancel_pend(s, s->pending);
    ev_ref(s->loop);
    ev_async_stop(s->loop, &s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* After a client-secret rotation the new version has no token yet: while it is fetched
 * (in the background: the waiter is dropped, the load goes on), a still valid token of
 * the previous version serves, so a rotation never makes requests wait. Returns 1 with
 * g filled (snap released), 0 when there is none (snap kept). */
static int use_previous_version(al_oauth2_src *s, al_cred_snapshot *snap, const al_target *t,
                                const al_secret_view *cur, al_cred_grant *g, hold *h,
                                uint64_t wait_id)
{
    al_secret_view prev;
    if (al_cred_lookup_previous(snap, cur->provider, cur->version, &prev) != AL_OK)
        return 0;
    al_token_spec spec;
    al_token_spec_from_target(&spec, t, prev.provider, prev.version, prev.config_json, prev.value,
                              prev.len);
    al_flight_result res;
    if (al_token_peek(s->tc, &spec, &res) != AL_OK)
        return 0;
    (void)wait_id;
    al_cred_snapshot_release(snap);
    fill_grant(g, res.value, res.gen, h);
    return 1;
}

static int oauth2_acquire(void *self, const al_cred_query *q, al_cred_grant *g,
                          al_credsrc_done_fn done, void *arg, void **pending)
{
    al_oauth2_src *s = self;
    memset(g, 0, sizeof *g);
    if (!s->creds)
        return AL_ERR_DB;
    al_cred_snapshot *snap = al_cred_cache_acquire(s->creds);
    al_secret_view sv;
    int attempt = q->attempt == AL_CRED_FALLBACK ? 1 : 0;
    int rc = al_cred_select(s->creds, snap, q->t, attempt, &sv);
    if (rc != AL_OK) {
        al_cred_snapshot_release(snap);
        return rc;
    }
    if (!sv.kind || strcmp(sv.kind, "oauth2") != 0) {
        snprintf(s->detail, sizeof s->detail,
                 "provider '%s' is an %s provider, not an OAuth 2.0 client", sv.provider,
                 sv.kind ? sv.kind : "unknown");
        g->detail = s->detail;
        al_cred_snapshot_release(snap);
        return AL_ERR_INVAL;
    }
    al_token_spec spec;
    al_token_spec_from_target(&spec, q->t, sv.provider, sv.version, sv.config_json, sv.value,
                              sv.len);
    hold *h = malloc(sizeof *h);
    if (!h) {
        al_cred_snapshot_release(snap);
        return AL_ERR_NOMEM;
    }
    al_flight_result res;
    /* The hot path: a cached token, no waiter allocated (a due refresh starts here). */
    rc = al_token_get(s->tc, &spec, NULL, NULL, &res);
    if (rc == AL_OK) {
        al_metrics_count_token(s->metrics, sv.provider, AL_METRICS_TOKEN_CACHE_HIT);
        al_cred_snapshot_release(snap);
        fill_grant(g, res.value, res.gen, h);
        return AL_OK;
    }
    pend *p = calloc(1, sizeof *p);
    if (!p) {
        free(h);
        al_cred_snapshot_release(snap);
        return AL_ERR_NOMEM;
    }
    p->src = s;
    p->done = done;
    p->arg = arg;
    /* the spec's strings live in the snapshot until this returns; the cache copies */
    if (rc == AL_ERR_AGAIN) /* join the load (or take what arrived meanwhile) */
        rc = al_token_get(s->tc, &spec, on_token, p, &res);
    al_cred_snapshot *snap_prev = snap; /* kept for a rotation's previous version */
    if (rc == AL_OK) {
        al_metrics_count_token(s->metrics, sv.provider, AL_METRICS_TOKEN_CACHE_HIT);
        al_cred_snapshot_release(snap);
        free(p);
        fill_grant(g, res.value, res.gen, h);
        return AL_OK;
    }
    if (rc == AL_ERR_AGAIN && q->attempt == AL_CRED_FIRST &&
        use_previous_version(s, snap_prev, q->t, &sv, g, h, res.wait_id)) {
        /* the new version's load goes on without this waiter */
        if (al_token_cancel(s->tc, res.wait_id) == 0)
            take_back_answer(s, p);
        free(p);
        return AL_OK;
    }
    al_cred_snapshot_release(snap_prev);
    free(h);
    if (rc == AL_ERR_AGAIN) {
        p->wait_id = res.wait_id;
        p->next = s->pending;
        if (s->pending)
            s->pending->prev = p;
        s->pending = p;
        *pending = p;
        return AL_ERR_PENDING;
    }
    free(p);
    snprintf(s->detail, sizeof s->detail, "%s", res.msg);
    g->detail = s->detail;
    return rc;
}

static void oauth2_cancel(void *self, void *pending)
{
    cancel_pend(self, pending);
}

static void oauth2_release(void *self, al_cred_grant *g)
{
    (void)self;
    hold *h = g->hold;
    if (h) {
        al_token_release(h->tok);
        free(h);
    }
    memset(g, 0, sizeof *g);
}

static int oauth2_rejected(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                           al_cred_query *next)
{
    al_oauth2_src *s = self;
    const hold *h = g->hold;
    /* 401: the token is no longer good (revoked, rotated signing keys). A 403 with a
     * valid token means the scope does not allow it: a new token would not help. */
    if (status != 401 || !h)
        return 0;
    al_token_drop(s->tc, h->tok, h->gen);
    memset(next, 0, sizeof *next);
    next->t = q->t;
    next->attempt = AL_CRED_REFRESH;
    return 1;
}

static const al_credsrc_ops oauth2_ops = {
    .name = "oauth2",
    .acquire = oauth2_acquire,
    .cancel = oauth2_cancel,
    .release = oauth2_release,
    .rejected = oauth2_rejected,
    .rest = NULL,
};

al_credsrc al_credsrc_oauth2(al_oauth2_src *s)
{
    al_credsrc c = {.ops = &oauth2_ops, .self = s};
    return c;
}
