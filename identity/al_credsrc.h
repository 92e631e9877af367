/* al_credsrc: where a request's credential comes from — the credential stage's
 * interface. A source answers now (a key in the store), or later (an OAuth token
 * fetched over the network, AWS credentials), without blocking the worker:
 *
 *   rc = al_credsrc_acquire(src, &q, &grant, on_done, arg, &pending);
 *   AL_OK           grant is filled now; on_done is never called.
 *   AL_ERR_PENDING  the source works on it; on_done(arg, rc, &grant) runs later, once,
 *                   on the worker's loop thread (never inside acquire), unless
 *                   al_credsrc_cancel(src, pending) is called first (after cancel,
 *                   on_done is never called and the source frees what it held).
 *   other           no credential: AL_ERR_NOTFOUND (the provider has none),
 *                   AL_ERR_AGAIN (every key of the pool rests after a 429;
 *                   grant->retry_after_s says for how long), AL_ERR_DB (the store is
 *                   not open), AL_ERR_PERM (the source refused: consent missing, a
 *                   token endpoint said no), AL_ERR_IO/AL_ERR_TIMEOUT (it could not
 *                   reach what it needed). grant->detail may say why (no secret).
 *
 * A grant's secret view stays valid until al_credsrc_release(src, &grant). After the
 * upstream answered 401/403, al_credsrc_rejected() says whether one retry may help
 * and with which query (the store: the previous key version in its rotation grace
 * period, else the target's fallback_provider; an OAuth source drops the cached
 * token and answers AL_CRED_REFRESH: acquire again fetches a new one). After a 429,
 * al_credsrc_rest() rests the key for the upstream's Retry-After, then
 * al_credsrc_rejected(..., 429, ...) says whether another key of the pool is awake
 * (the store: AL_CRED_OTHER_KEY).
 *
 * Sources are per worker or thread-safe; a pending answer always comes back on the
 * loop the source was created for. */
#ifndef AL_CREDSRC_H
#define AL_CREDSRC_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_err.h"
#include "identity/al_cred.h"
#include "targets/al_table.h"

typedef enum al_cred_attempt {
    AL_CRED_FIRST = 0,     /* the normal choice (a pool: round-robin, rested keys skipped) */
    AL_CRED_FALLBACK = 1,  /* the target's fallback_provider, after a 401/403 */
    AL_CRED_GRACE = 2,     /* q.provider's version q.version, in its rotation grace period */
    AL_CRED_REFRESH = 3,   /* the source dropped what it gave before: a fresh credential */
    AL_CRED_OTHER_KEY = 4, /* after a 429: another key of the pool (the one that got it rests) */
} al_cred_attempt;

/* The audit's "retry" value for an attempt (NULL for AL_CRED_FIRST). */
const char *al_cred_attempt_retry_name(al_cred_attempt a);

typedef struct al_cred_query {
    const al_target *t;
    al_cred_attempt attempt;
    const char *provider; /* AL_CRED_GRACE: the provider and version wanted */
    uint32_t version;
    /* OAuth on behalf of a user (oauth2_3lo): the end user ("ISS SUB" or a trusted
     * client's user header; NULL = unknown) and the table the request runs on. */
    const char *user;
    const al_table *table;
} al_cred_query;

typedef struct al_cred_grant {
    al_secret_view sv;      /* valid until release */
    void *hold;             /* the source's reference (the store: its snapshot) */
    uint32_t retry_after_s; /* with AL_ERR_AGAIN: seconds until a key wakes */
    const char *detail;     /* with an error: why, for the refusal message (static) */
    /* AL_ERR_PERM from an oauth2_3lo source: the user has not consented yet (or the
     * grant is gone): airlock's single-use authorization link for them, valid
     * consent_expires_in seconds (the 401 consent_required's authorization_url). */
    const char *consent_url;
    uint32_t consent_expires_in;
} al_cred_grant;

typedef void (*al_credsrc_done_fn)(void *arg, int rc, al_cred_grant *g);

typedef struct al_credsrc_ops {
    const char *name; /* "store", "oauth2", ... */
    int (*acquire)(void *self, const al_cred_query *q, al_cred_grant *g, al_credsrc_done_fn done,
                   void *arg, void **pending);
    void (*cancel)(void *self, void *pending);   /* may be NULL: never pends */
    void (*release)(void *self, al_cred_grant *g);
    /* 1 and *next filled when one retry after `status` (401/403) may help; next's
     * strings are borrowed from g (copy them before release). May be NULL (never). */
    int (*rejected)(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                    al_cred_query *next);
    void (*rest)(void *self, const al_cred_grant *g, uint32_t seconds); /* may be NULL */
    /* 1 when a 401/403 to a request sent with g could be retried (rejected() might
     * answer 1), without side effects: the data path keeps the request body for that
     * retry only then. May be NULL: "maybe" when rejected is set. */
    int (*may_retry)(void *self, const al_cred_query *q, const al_cred_grant *g);
} al_credsrc_ops;

typedef struct al_credsrc {
    const al_credsrc_ops *ops;
    void *self;
} al_credsrc;

int al_credsrc_acquire(const al_credsrc *s, const al_cred_query *q, al_cred_grant *g,
                       al_credsrc_done_fn done, void *arg, void **pending);
void al_credsrc_cancel(const al_credsrc *s, void *pending);
void al_credsrc_release(const al_credsrc *s, al_cred_grant *g);
int al_credsrc_rejected(const al_credsrc *s, const al_cred_query *q, const al_cred_grant *g,
                        int status, al_cred_query *next);
void al_credsrc_rest(const al_credsrc *s, const al_cred_grant *g, uint32_t seconds);
int al_credsrc_may_retry(const al_credsrc *s, const al_cred_query *q, const al_cred_grant *g);

/* The store-backed source (api_key, and any method whose secret is the store's
 * current version): answers now. c may be NULL (the store is not open: every
 * acquire answers AL_ERR_DB). Thread-safe (the cache is). */
al_credsrc al_credsrc_store(al_cred_cache *c);

#endif
