/* al_credsrc: the credential-source interface's dispatch and the store-backed source
 * (see al_credsrc.h). The store source is al_cred_cache's selection (pools,
 * rests, fallback, grace versions) behind the acquire/release interface; it never
 * pends. */
#include "al_credsrc.h"

#include <string.h>

const char *al_cred_attempt_retry_name(al_cred_attempt a)
{
    switch (a) {
    case AL_CRED_FALLBACK:
        return "fallback_provider";
    case AL_CRED_GRACE:
        return "grace_previous_version";
    case AL_CRED_REFRESH:
        return "refreshed_credential";
    case AL_CRED_OTHER_KEY:
        return "another_pool_key";
    default:
        return NULL;
    }
}

int al_credsrc_acquire(const al_credsrc *s, const al_cred_query *q, al_cred_grant *g,
                       al_credsrc_done_fn done, void *arg, void **pending)
{
    memset(g, 0, sizeof *g);
    *pending = NULL;
    return s->ops->acquire(s->self, q, g, done, arg, pending);
}

void al_credsrc_cancel(const al_credsrc *s, void *pending)
{
    if (pending && s->ops->cancel)
        s->ops->cancel(s->self, pending);
}

void al_credsrc_release(const al_credsrc *s, al_cred_grant *g)
{
    if (g->hold || g->sv.provider)
        s->ops->release(s->self, g);
    memset(g, 0, sizeof *g);
}

int al_credsrc_rejected(const al_credsrc *s, const al_cred_query *q, const al_cred_grant *g,
                        int status, al_cred_query *next)
{
    return s->ops->rejected ? s->ops->rejected(s->self, q, g, status, next) : 0;
}

void al_credsrc_rest(const al_credsrc *s, const al_cred_grant *g, uint32_t seconds)
{
    if (s->ops->rest && g->sv.provider)
        s->ops->rest(s->self, g, seconds);
}

int al_credsrc_may_retry(const al_credsrc *s, const al_cred_query *q, const al_cred_grant *g)
{
    if (s->ops->may_retry)
        return s->ops->may_retry(s->self, q, g);
    return s->ops->rejected != NULL;
}

/* ---- the store ---------------------------------------------------------- */

static int store_acquire(void *self, const al_cred_query *q, al_cred_grant *g,
                         al_credsrc_done_fn done, void *arg, void **pending)
{
    al_cred_cache *c = self;
    (void)done;
    (void)arg;
    (void)pending;
    if (!c) {
        g->detail = "the credential store is not open";
        return AL_ERR_DB;
    }
    al_cred_snapshot *snap = al_cred_cache_acquire(c);
    int rc = q->attempt == AL_CRED_GRACE
                 ? al_cred_lookup_version(snap, q->provider, q->version, &g->sv)
                 : al_cred_select(c, snap, q->t, q->attempt == AL_CRED_FALLBACK, &g->sv);
    /* (AL_CRED_OTHER_KEY selects like AL_CRED_FIRST: the key that got the 429 rests) */
    if (rc) {
        al_cred_snapshot_release(snap);
        memset(&g->sv, 0, sizeof g->sv);
        if (rc == AL_ERR_AGAIN)
            g->retry_after_s = al_cred_rest_left_s(c, q->t);
        return rc;
    }
    g->hold = snap;
    return AL_OK;
}

static void store_release(void *self, al_cred_grant *g)
{
    (void)self;
    if (g->hold)
        al_cred_snapshot_release(g->hold);
}

static int store_rejected(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                          al_cred_query *next)
{
    al_secret_view prev;
    if (q->attempt != AL_CRED_FIRST)
        return 0;
    /* 429: the data path rested that key first; another awake key of the pool may
     * answer (a pool of one: the upstream's 429 reaches the agent). */
    if (status == 429) {
        if (q->t->auth.provider_count > 1 && g->hold &&
            al_cred_pool_awake(self, g->hold, q->t, g->sv.provider)) {
            *next = (al_cred_query){.t = q->t, .attempt = AL_CRED_OTHER_KEY};
            return 1;
        }
        return 0;
    }
    if (status != 401 && status != 403)
        return 0;
    /* A rotated key the upstream does not know yet is the likelier cause: the
     * previous version first, then the fallback provider. */
    if (g->hold && g->sv.provider &&
        al_cred_lookup_previous(g->hold, g->sv.provider, g->sv.version, &prev) == AL_OK) {
        *next = (al_cred_query){
            .t = q->t, .attempt = AL_CRED_GRACE, .provider = prev.provider, .version = prev.version};
        return 1;
    }
    if (q->t->auth.fallback_provider) {
        *next = (al_cred_query){.t = q->t, .attempt = AL_CRED_FALLBACK};
        return 1;
    }
    return 0;
}

/* store_rejected only looks: asking it is side-effect free. */
static int store_may_retry(void *self, const al_cred_query *q, const al_cred_grant *g)
{
    al_cred_query next;
    return store_rejected(self, q, g, 401, &next) ||
           (q->attempt == AL_CRED_FIRST && q->t->auth.provider_count > 1);
}

static void store_rest(void *self, const al_cred_grant *g, uint32_t seconds)
{
    if (self)
        al_cred_rest(self, g->sv.provider, seconds);
}

static const al_credsrc_ops store_ops = {
    .name = "store",
    .acquire = store_acquire,
    .release = store_release,
    .rejected = store_rejected,
    .rest = store_rest,
    .may_retry = store_may_retry,
};

al_credsrc al_credsrc_store(al_cred_cache *c)
{
    return (al_credsrc){&store_ops, c};
}
