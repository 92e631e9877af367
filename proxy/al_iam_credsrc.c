/* al_iam_credsrc: see al_iam_credsrc.h.
 *
 * Invariants: the registry's list only grows (providers live until the registry is
 * freed, so a provider pointer taken under `lock` stays valid); a pending acquire owns
 * its `pend` until on_async delivered it or cancel freed it; cancel first removes the
 * waiter from its provider (after which the fetch thread never touches pend), then
 * stops the async watcher on the loop thread. Grants hold a `hold` naming which source
 * answered, so release/rejected/rest reach the right one. */
#include "al_iam_credsrc.h"

#include "auth/al_aws_creds.h"
#include "common/al_err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store_base {
    al_cred_cache *store;
    char *provider;
};
typedef struct store_base store_base;

typedef struct reg_entry {
    struct reg_entry *next;
    char *source, *role_arn, *external_id; /* the key */
    al_aws_provider *p;
    struct store_base *sb; /* source store + role_arn: the base's provider */
} reg_entry;

struct al_iam_registry {
    al_cred_cache *store;
    pthread_mutex_t lock;
    reg_entry *entries;
};

typedef struct iam_src {
    al_iam_registry *reg;
    struct ev_loop *loop;
    al_credsrc store;
} iam_src;

enum hold_kind { HOLD_STORE, HOLD_AWS };

typedef struct hold {
    enum hold_kind kind;
    void *store_hold;          /* HOLD_STORE: the store source's hold */
    al_aws_credentials *creds; /* HOLD_AWS */
    char config_json[160];
} hold;

typedef struct pend {
    ev_async async;
    al_aws_waiter w;
    iam_src *src;
    al_aws_provider *p;
    al_credsrc_done_fn done;
    void *arg;
    int rc;
} pend;

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static int uses_store(const al_target *t)
{
    return (!t->auth.source || !strcmp(t->auth.source, "store")) && !t->auth.role_arn;
}

int al_iam_registry_new(al_cred_cache *store, al_iam_registry **out)
{
    al_iam_registry *r = calloc(1, sizeof *r);
    if (!r)
        return AL_ERR_NOMEM;
    r->store = store;
    pthread_mutex_init(&r->lock, NULL);
    *out = r;
    return AL_OK;
}

void al_iam_registry_free(al_iam_registry *reg)
{
    if (!reg)
        return;
    while (reg->entries) {
        reg_entry *e = reg->entries;
        reg->entries = e->next;
        al_aws_provider_free(e->p);
        if (e->sb)
            free(e->sb->provider);
        free(e->sb);
        free(e->source);
        free(e->role_arn);
        free(e->external_id);
        free(e);
    }
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}

/* The store's view as the base of an AssumeRole (source store + role_arn): the
 * target's first provider, current version. */

static int base_from_store(void *arg, al_aws_credentials **out)
{
    store_base *b = arg;
    if (!b->store)
        return AL_ERR_DB;
    al_cred_snapshot *snap = al_cred_cache_acquire(b->store);
    al_secret_view v;
    int rc = al_cred_lookup(snap, b->provider, &v);
    if (!rc)
        rc = al_aws_credentials_from_view(&v, out);
    al_cred_snapshot_release(snap);
    return rc;
}

/* The provider for t, made on first use. */
static int provider_for(al_iam_registry *reg, const al_target *t, al_aws_provider **out,
                        const char **detail)
{
    const char *source = t->auth.source ? t->auth.source : "environment";
    int rc = AL_OK;
    pthread_mutex_lock(&reg->lock);
    for (reg_entry *e = reg->entries; e; e = e->next)
        if (!strcmp(e->source, source) && same(e->role_arn, t->auth.role_arn) &&
            same(e->external_id, t->auth.external_id) &&
            (!e->sb ||
             (t->auth.provider_count && !strcmp(e->sb->provider, t->auth.providers[0])))) {
            *out = e->p;
            goto out;
        }
    al_aws_provider_cfg cfg = {.role_arn = t->auth.role_arn, .external_id = t->auth.external_id};
    if (al_aws_source_parse(source, &cfg.source)) {
        rc = AL_ERR_CONFIG;
        *detail = "unknown credential source";
        goto out;
    }
    /* store + role_arn: the base is the provider's secret. Kept with the entry (the
     * provider name is the key's part too: one entry per provider). */
    store_base *sb = NULL;
    if (cfg.source == AL_AWS_SRC_STORE) {
        if (!t->auth.provider_count) {
            rc = AL_ERR_CONFIG;
            *detail = "source store needs a provider";
            goto out;
        }
        sb = calloc(1, sizeof *sb);
        if (!sb || !(sb->provider = strdup(t->auth.providers[0]))) {
            free(sb);
            rc = AL_ERR_NOMEM;
            goto out;
        }
        sb->store = reg->store;
        cfg.base = base_from_store;
        cfg.base_arg = sb;
    }
    reg_entry *e = calloc(1, sizeof *e);
    if (!e) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    e->source = strdup(source);
    e->role_arn = t->auth.role_arn ? strdup(t->auth.role_arn) : NULL;
    e->external_id = t->auth.external_id ? strdup(t->auth.external_id) : NULL;
    if (!e->source || (t->auth.role_arn && !e->role_arn) ||
        (t->auth.external_id && !e->external_id) ||
        (rc = al_aws_provider_new(&cfg, &e->p, detail)) != AL_OK) {
        if (!rc)
            rc = AL_ERR_NOMEM;
        free(e->source);
        free(e->role_arn);
        free(e->external_id);
        free(e);
        if (sb) {
            free(sb->provider);
            free(sb);
        }
        goto out;
    }
    e->sb = sb;
    e->next = reg->entries;
    reg->entries = e;
    *out = e->p;
out:
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

static int fill(al_cred_grant *g, al_aws_provider *p, al_aws_credentials *c)
{
    hold *h = calloc(1, sizeof *h);
    if (!h) {
        al_aws_credentials_unref(c);
        return AL_ERR_NOMEM;
    }
    h->kind = HOLD_AWS;
    h->creds = c;
    snprintf(h->config_json, sizeof h->config_json, "{\"accessKeyId\":\"%.100s\"}",
             c->access_key_id);
    memset(&g->sv, 0, sizeof g->sv);
    g->sv.provider = al_aws_provider_source(p);
    g->sv.kind = "aws";
    g->sv.value = c->secret;
    g->sv.len = c->secret_len;
    g->sv.session_token = c->token;
    g->sv.session_token_len = c->token_len;
    g->sv.config_json = h->config_json;
    g->hold = h;
    return AL_OK;
}

static void pend_free(pend *pd)
{
    ev_async_stop(pd->src->loop, &pd->async);
    free(pd);
}

/* On the loop: the provider answered. */
static void on_async(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    pend *pd = (pend *)((char *)w - offsetof(pend, async));
    al_cred_grant g = {0};
    int rc = pd->rc;
    if (rc == AL_OK) {
        al_aws_credentials *c = NULL;
        const char *detail = NULL;
        rc = al_aws_provider_get(pd->p, &c, NULL, NULL, NULL, &detail);
        if (rc == AL_ERR_AGAIN) { /* expired again before we looked (a clock jump) */
            rc = AL_ERR_TIMEOUT;
            g.detail = "the AWS credentials expired as soon as they were fetched";
        } else if (rc == AL_OK) {
            rc = fill(&g, pd->p, c);
        } else {
            g.detail = detail;
        }
    } else {
        g.detail = "the AWS credential source failed (see the aws.creds.fetch log line)";
    }
    al_credsrc_done_fn done = pd->done;
    void *arg = pd->arg;
    pend_free(pd);
    done(arg, rc, &g);
}

/* On the fetch thread, under the provider's lock: hand over to the loop. */
static void on_fetched(void *arg, int rc)
{
    pend *pd = arg;
    pd->rc = rc;
    ev_async_send(pd->src->loop, &pd->async);
}

static int iam_acquire(void *self, const al_cred_query *q, al_cred_grant *g,
                       al_credsrc_done_fn done, void *arg, void **pending)
{
    iam_src *s = self;
    const al_target *t = q->t;
    if (uses_store(t)) {
        int rc = al_credsrc_acquire(&s->store, q, g, done, arg, pending);
        if (rc)
            return rc;
        hold *h = calloc(1, sizeof *h);
        if (!h) {
            al_credsrc_release(&s->store, g);
            return AL_ERR_NOMEM;
        }
        h->kind = HOLD_STORE;
        h->store_hold = g->hold;
        g->hold = h;
        return AL_OK;
    }
    const char *detail = NULL;
    al_aws_provider *p = NULL;
    int rc = provider_for(s->reg, t, &p, &detail);
    if (rc) {
        g->detail = detail;
        return rc;
    }
    pend *pd = calloc(1, sizeof *pd);
    if (!pd)
        return AL_ERR_NOMEM;
    pd->src = s;
    pd->p = p;
    pd->done = done;
    pd->arg = arg;
    ev_async_init(&pd->async, on_async);
    ev_async_start(s->loop, &pd->async);
    al_aws_credentials *c = NULL;
    rc = al_aws_provider_get(p, &c, &pd->w, on_fetched, pd, &detail);
    if (rc == AL_ERR_AGAIN) {
        *pending = pd;
        return AL_ERR_PENDING;
    }
    pend_free(pd);
    if (rc) {
        g->detail = detail;
        return rc;
    }
    return fill(g, p, c);
}

static void iam_cancel(void *self, void *pending)
{
    (void)self;
    pend *pd = pending;
    al_aws_provider_cancel(pd->p, &pd->w);
    pend_free(pd);
}

static void iam_release(void *self, al_cred_grant *g)
{
    iam_src *s = self;
    hold *h = g->hold;
    if (!h)
        return;
    if (h->kind == HOLD_STORE) {
        g->hold = h->store_hold;
        al_credsrc_release(&s->store, g);
    } else {
        al_aws_credentials_unref(h->creds);
    }
    g->hold = NULL;
    free(h);
}

static int iam_rejected(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                        al_cred_query *next)
{
    iam_src *s = self;
    const hold *h = g->hold;
    if (!h || h->kind != HOLD_STORE)
        return 0; /* fetched credentials: a retry would send the same signature */
    al_cred_grant inner = *g;
    inner.hold = h->store_hold;
    return al_credsrc_rejected(&s->store, q, &inner, status, next);
}

/* Side-effect free: whether rejected() could offer a retry (the body spool keeps the
 * body for it). Fetched credentials: never. */
static int iam_may_retry(void *self, const al_cred_query *q, const al_cred_grant *g)
{
    iam_src *s = self;
    const hold *h = g->hold;
    if (!h || h->kind != HOLD_STORE)
        return 0;
    al_cred_grant inner = *g;
    inner.hold = h->store_hold;
    return al_credsrc_may_retry(&s->store, q, &inner);
}

/* AWS throttles per function, account or API, not per access key: resting the key
 * would refuse every other call it signs. A 429 passes to the agent with its
 * Retry-After, and nothing rests. */
static void iam_rest(void *self, const al_cred_grant *g, uint32_t seconds)
{
    (void)self;
    (void)g;
    (void)seconds;
}

static const al_credsrc_ops iam_ops = {
    .name = "iam",
    .acquire = iam_acquire,
    .cancel = iam_cancel,
    .release = iam_release,
    .rejected = iam_rejected,
    .rest = iam_rest,
    .may_retry = iam_may_retry,
};

int al_iam_credsrc_new(al_iam_registry *reg, struct ev_loop *loop, al_credsrc *out)
{
    iam_src *s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->reg = reg;
    s->loop = loop;
    s->store = al_credsrc_store(reg ? reg->store : NULL);
    *out = (al_credsrc){&iam_ops, s};
    return AL_OK;
}

void al_iam_credsrc_free(al_credsrc *src)
{
    if (src && src->ops == &iam_ops) {
        free(src->self);
        src->self = NULL;
    }
}
