/* al_user_cred: OAuth 2.0 on behalf of a user for serve (see al_user_cred.h).
 *
 * Owns: the store handle and vault (user tokens only), the al_consent table, the
 * al_flight cache of al_user_access values, the jobs in flight (a list, for
 * al_user_cred_free) and a small ring of rejected token fingerprints (an upstream's 401:
 * the next load refreshes even though the token has not expired).
 *
 * Threads: gets run on the caller's thread (a worker); a load is a task for the store
 * thread (store_main), which does every store read and write and takes the refresh
 * lock; jobs' network requests run on the fetch thread, and their answers come back to
 * the store thread to be stored (job_answered). `lock` covers the job list and the
 * rejected ring; `qlock` the store thread's queue. The store thread also takes the
 * store's user token announcements every CHANGES_POLL_MS (PostgreSQL NOTIFY; SQLite's
 * change log, filled by triggers): a user token another replica (or the CLI) wrote or
 * deleted leaves this cache (recheck_user).
 *
 * A job: [the provider's endpoint: configured, or its discovery document] -> then
 * authorize: al_consent_open + the redirect; code / refresh: POST to the token
 * endpoint with client authentication -> al_user_token_parse -> store -> answer;
 * revoke (a consent replaced the user's tokens): POST the replaced refresh token to
 * the revocation endpoint (RFC 7009) -> audit, nobody waits. */
#include "al_user_cred.h"
#include "al_par.h"
#include "al_revoke.h"
#include "al_token.h"
#include "al_identity.h"
#include "al_user_token.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "common/al_return_url.h"
#include "policy/al_audit.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REJECTED_MAX    64
#define CHANGES_POLL_MS 100 /* other processes' user token changes (replicas, the CLI) */
#define FRESH_MAX       256 /* force_authentication: remembered consents (target, user) */
#define NONE_RECHECK_MS 1000

/* ---- values ------------------------------------------------------------------- */

typedef struct access_impl {
    al_user_access pub; /* first */
    atomic_int refs;
    char *token, *provider, *user, *scope;
    char fp[32];
} access_impl;

void al_user_access_retain(al_user_access *a)
{
    if (a)
        atomic_fetch_add(&((access_impl *)a)->refs, 1);
}

void al_user_access_release(al_user_access *a)
{
    access_impl *ai = (access_impl *)a;
    if (!ai || atomic_fetch_sub(&ai->refs, 1) != 1)
        return;
    if (ai->token) {
        OPENSSL_cleanse(ai->token, ai->pub.len);
        free(ai->token);
    }
    free(ai->provider);
    free(ai->user);
    free(ai->scope);
    free(ai);
}

static void v_retain(void *v)
{
    al_user_access_retain(v);
}

static void v_release(void *v)
{
    al_user_access_release(v);
}

/* A value from a stored token (t NULL: "none" with why). */
static access_impl *access_new(const char *provider, const char *user, const al_user_token *t,
                               const char *why)
{
    access_impl *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    atomic_init(&a->refs, 1);
    a->provider = strdup(provider);
    a->user = strdup(user);
    a->scope = strdup(t && t->scope ? t->scope : "");
    if (t) {
        a->token = malloc(t->access_len + 1);
        if (a->token) {
            memcpy(a->token, t->access_token, t->access_len);
            a->token[t->access_len] = 0;
        }
        snprintf(a->fp, sizeof a->fp, "%s", t->fingerprint);
    }
    if (!a->provider || !a->user || !a->scope || (t && !a->token)) {
        al_user_access_release(&a->pub);
        return NULL;
    }
    a->pub.access_token = a->token;
    a->pub.len = t ? t->access_len : 0;
    a->pub.provider = a->provider;
    a->pub.user = a->user;
    a->pub.scope = a->scope;
    a->pub.fingerprint = a->fp;
    a->pub.expires_at = t ? t->expires_at : 0;
    a->pub.none = t == NULL;
    a->pub.why = why;
    return a;
}

/* ---- the engine --------------------------------------------------------------------- */

typedef struct job job;

typedef struct rej_entry {
    char key[512];
    char fp[32];
} rej_entry;

/* force_authentication: the access token a consent for (target, user) produced; the
 * target uses a token only while it is that one (a refresh or another target's consent
 * makes a new one, so a new consent). */
typedef struct fresh_entry {
    char key[512]; /* target \x1f user */
    char fp[32];
} fresh_entry;

/* The user-token vault's master key, shared by the threads that seal and open tokens
 * (the store thread, a worker completing an app session) and replaced when a
 * rotate-master-key (the CLI, maybe on another replica) changed the store's key: a user
 * holds the one it took until it releases it. */
typedef struct vault_ref {
    al_vault *v;
    atomic_int refs;
} vault_ref;

struct al_user_cred {
    al_store *store;
    vault_ref *vault; /* under vlock: swapped when the store's check value changes */
    pthread_mutex_t vlock; /* only "read the pointer + retain" and the swap */
    char *state_dir;       /* where the key file is read again; NULL: never (tests) */
    al_cred_cache *creds;
    al_oidc *oidc;
    struct al_audit *audit;
    al_consent *consent;
    al_flight *cache;
    int64_t (*now_s)(void *arg);
    void *now_arg;
    pthread_mutex_t lock; /* jobs, rejected, fresh */
    job *jobs;
    /* the store thread: every store read and write (a PostgreSQL store is a network
     * round trip; the cross-replica refresh lock blocks), never a worker loop */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    struct task *qhead, *qtail;
    int qstop;
    rej_entry rej[REJECTED_MAX];
    size_t rej_next;
    fresh_entry fresh[FRESH_MAX];
    size_t fresh_next;
};

static int64_t wall_now(void *arg)
{
    (void)arg;
    return (int64_t)time(NULL);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void audit_ev(al_user_cred *uc, const char *event, const char *provider, const char *user,
                     const char *target, const char *outcome, const char *error,
                     const char *fingerprint)
{
    if (!uc->audit)
        return;
    al_audit_field f[] = {
        {"provider", AL_AUDIT_STR, provider, 0},
        {"end_user", AL_AUDIT_STR, user, 0},
        {"target", AL_AUDIT_STR, target, 0},
        {"outcome", AL_AUDIT_STR, outcome, 0},
        {"error", AL_AUDIT_STR, error, 0},
        {"token_fingerprint", AL_AUDIT_STR, fingerprint, 0},
    };
    al_audit_submit_event(uc->audit, event, f, sizeof f / sizeof f[0]);
}

/* The flight key: provider \x1f user (neither holds a control character). */
static int cache_key(const char *provider, const char *user, char *buf, size_t n)
{
    int w = snprintf(buf, n, "%s\x1f%s", provider, user);
    return w > 0 && (size_t)w < n ? AL_OK : AL_ERR_TOOBIG;
}

/* ---- the vault, following master-key rotations ------------------------------------- */

static vault_ref *vault_ref_new(al_vault *v)
{
    vault_ref *r = calloc(1, sizeof *r);
    if (r) {
        r->v = v;
        atomic_init(&r->refs, 1);
    }
    return r;
}

static void vault_release(vault_ref *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        al_vault_free(r->v); /* wipes the key */
        free(r);
    }
}

static vault_ref *vault_get(al_user_cred *uc)
{
    pthread_mutex_lock(&uc->vlock);
    vault_ref *r = uc->vault;
    if (r)
        atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&uc->vlock);
    return r;
}

/* When the store is no longer sealed with `seen` (a rotate-master-key committed), loads
 * the key that opens it (al_identity_store_vault: the key file, or the "<key>.new" of a
 * rotation interrupted after its commit) and makes it the vault. Returns 1 when the
 * vault now differs from `seen`, 0 when `seen` is still the store's key (or no other key
 * can be had: the caller keeps what it has). A store read and a key file read: the store
 * thread's (or a caller that writes the store anyway). */
static int vault_follow(al_user_cred *uc, vault_ref *seen)
{
    al_vault *nv = NULL;
    if (!uc->state_dir || !seen || al_identity_vault_matches(uc->store, seen->v) != 0)
        return 0;
    pthread_mutex_lock(&uc->vlock);
    int moved = uc->vault != seen; /* another thread followed it already */
    pthread_mutex_unlock(&uc->vlock);
    if (moved)
        return 1;
    int rc = al_identity_store_vault(uc->store, uc->state_dir, &nv);
    vault_ref *r = rc == AL_OK ? vault_ref_new(nv) : NULL;
    if (!r) {
        al_vault_free(nv);
        al_log(AL_LOG_ERROR, "user_token.master_key",
               "the identity store was rotated to another master key but the key file does "
               "not open it (%s); users' tokens cannot be opened or stored until it does",
               al_strerror(rc == AL_OK ? AL_ERR_NOMEM : rc));
        return 0;
    }
    pthread_mutex_lock(&uc->vlock);
    vault_ref *old = uc->vault;
    if (old == seen) {
        uc->vault = r;
        r = NULL;
    }
    pthread_mutex_unlock(&uc->vlock);
    if (!r) {
        al_log(AL_LOG_INFO, "user_token.master_key",
               "the identity store's master key was rotated: users' tokens are opened and "
               "sealed with the new one");
        vault_release(old);
    }
    vault_release(r);
    return 1;
}

/* Seals and stores t under the store's current master key. The key is checked before
 * sealing and again after the write: a rotation that committed in between (it rewraps
 * only the rows it read) would leave this row under the old key, so it is sealed again
 * with the new one. */
static int save_token(al_user_cred *uc, const char *provider, const char *user,
                      const al_user_token *t)
{
    int rc = AL_ERR_KEY;
    for (int attempt = 0; attempt < 3; attempt++) {
        vault_ref *v = vault_get(uc);
        if (!v)
            return AL_ERR_KEY;
        if (vault_follow(uc, v)) {
            vault_release(v);
            continue;
        }
        rc = al_user_token_save(uc->store, v->v, provider, user, t);
        int again = rc == AL_OK && vault_follow(uc, v);
        vault_release(v);
        if (!again)
            return rc;
    }
    return rc;
}

/* Opens (provider, user)'s row; a row that does not open with the vault's key is tried
 * again once the vault followed a rotation. */
static int load_token(al_user_cred *uc, const char *provider, const char *user,
                      al_user_token *t)
{
    vault_ref *v = vault_get(uc);
    if (!v)
        return AL_ERR_KEY;
    int rc = al_user_token_load(uc->store, v->v, provider, user, t);
    if (rc == AL_ERR_KEY && vault_follow(uc, v)) {
        vault_release(v);
        if (!(v = vault_get(uc)))
            return AL_ERR_KEY;
        rc = al_user_token_load(uc->store, v->v, provider, user, t);
    }
    vault_release(v);
    return rc;
}

/* ---- the provider, as a job needs it --------------------------------------------- */

typedef struct prov {
    char *name;
    char *config_json;
    json_t *cfg;
    unsigned char *secret;
    size_t secret_len;
    al_fetch_opts fo;
} prov;

static void prov_clear(prov *p)
{
    free(p->name);
    free(p->config_json);
    json_decref(p->cfg);
    if (p->secret) {
        OPENSSL_cleanse(p->secret, p->secret_len);
        free(p->secret);
    }
    memset(p, 0, sizeof *p);
}

/* The provider's current version from the credential snapshot. AL_ERR_NOTFOUND: not in
 * the store; AL_ERR_INVAL: not an OAuth client. */
static int prov_load(al_user_cred *uc, const char *name, prov *p)
{
    memset(p, 0, sizeof *p);
    if (!uc->creds)
        return AL_ERR_DB;
    al_cred_snapshot *snap = al_cred_cache_acquire(uc->creds);
    al_secret_view sv;
    int rc = al_cred_lookup(snap, name, &sv);
    if (rc == AL_OK && (!sv.kind || strcmp(sv.kind, "oauth2") != 0))
        rc = AL_ERR_INVAL;
    if (rc == AL_OK) {
        rc = AL_ERR_NOMEM;
        p->name = strdup(name);
        p->config_json = strdup(sv.config_json ? sv.config_json : "{}");
        p->cfg = p->config_json ? json_loads(p->config_json, 0, NULL) : NULL;
        p->secret = malloc(sv.len + 1);
        if (p->name && p->cfg && p->secret) {
            memcpy(p->secret, sv.value, sv.len);
            p->secret[sv.len] = 0;
            p->secret_len = sv.len;
            p->fo.ca_file = json_string_value(json_object_get(p->cfg, "caFile"));
            p->fo.allow_insecure = json_is_true(json_object_get(p->cfg, "allowInsecureEndpoints"));
            p->fo.allow_private_network =
                json_is_true(json_object_get(p->cfg, "allowPrivateNetwork"));
            rc = AL_OK;
        }
    }
    al_cred_snapshot_release(snap);
    if (rc != AL_OK)
        prov_clear(p);
    return rc;
}

/* ---- the store thread ------------------------------------------------------------ */

typedef struct task {
    struct task *next;
    void (*run)(al_user_cred *uc, void *arg);
    void (*drop)(al_user_cred *uc, void *arg); /* at shutdown, instead of run */
    void *arg;
} task;

/* Queues run(arg) on the store thread. AL_ERR_NOMEM (nothing queued). */
static int store_post(al_user_cred *uc, void (*run)(al_user_cred *, void *),
                      void (*drop)(al_user_cred *, void *), void *arg)
{
    task *t = calloc(1, sizeof *t);
    if (!t)
        return AL_ERR_NOMEM;
    t->run = run;
    t->drop = drop;
    t->arg = arg;
    pthread_mutex_lock(&uc->qlock);
    if (uc->qtail)
        uc->qtail->next = t;
    else
        uc->qhead = t;
    uc->qtail = t;
    pthread_cond_signal(&uc->qcond);
    pthread_mutex_unlock(&uc->qlock);
    return AL_OK;
}

/* User tokens written or deleted by any replica (the store's announcements), gathered
 * while change_drain holds the store handle and checked after it returned. */
#define CHANGES_MAX 64
typedef struct changes {
    char key[CHANGES_MAX][512];
    size_t n;
    int overflow;
} changes;

static void note_user(void *arg, const char *provider, const char *user)
{
    changes *ch = arg;
    if (!provider || !user || ch->n == CHANGES_MAX ||
        cache_key(provider, user, ch->key[ch->n], sizeof ch->key[0]))
        ch->overflow = 1; /* too many, or (NULL) some were missed: read everyone again */
    else
        ch->n++;
}

/* Drops key's cached value when the store now holds another token, or none: a
 * delete-user-token or another replica's refresh reaches this replica within
 * CHANGES_POLL_MS. A value that matches the row (this replica's own write) stays, and so
 * does every value while the store cannot be read (degraded mode keeps serving it). */
static void recheck_user(al_user_cred *uc, const char *key)
{
    al_flight_result res;
    if (al_flight_peek(uc->cache, key, &res) != AL_OK)
        return; /* nothing cached: the next get reads the store anyway */
    const al_user_access *v = res.value;
    char provider[512];
    const char *sep = strchr(key, '\x1f');
    if (!v->none && sep && (size_t)(sep - key) < sizeof provider) {
        al_store_user_token row;
        snprintf(provider, sizeof provider, "%.*s", (int)(sep - key), key);
        int rc = uc->store->ops->user_get(uc->store, provider, sep + 1, &row);
        if (rc == AL_ERR_NOTFOUND || (rc == AL_OK && strcmp(row.fingerprint, v->fingerprint)))
            al_flight_forget(uc->cache, key);
        if (rc == AL_OK)
            al_store_user_token_clear(&row);
    }
    al_flight_release(uc->cache, res.value);
}

/* The store thread, between tasks: the announcements that arrived (never waits for
 * one). */
static void take_changes(al_user_cred *uc)
{
    al_store *st = uc->store;
    changes *ch;
    if (!st->ops->change_drain || (st->ops->change_fd && st->ops->change_fd(st) < 0))
        return;
    if (!(ch = calloc(1, sizeof *ch)))
        return;
    st->ops->change_drain(st, note_user, ch);
    if (ch->overflow)
        al_flight_clear(uc->cache); /* too many at once: read everyone again */
    for (size_t i = 0; !ch->overflow && i < ch->n; i++)
        recheck_user(uc, ch->key[i]);
    free(ch);
}

static void *store_main(void *arg)
{
    al_user_cred *uc = arg;
    int listens = uc->store->ops->change_drain != NULL;
    pthread_mutex_lock(&uc->qlock);
    for (;;) {
        while (!uc->qhead && !uc->qstop) {
            if (!listens) {
                pthread_cond_wait(&uc->qcond, &uc->qlock);
                continue;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += CHANGES_POLL_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&uc->qcond, &uc->qlock, &ts);
            pthread_mutex_unlock(&uc->qlock);
            take_changes(uc);
            pthread_mutex_lock(&uc->qlock);
        }
        if (uc->qstop)
            break;
        task *t = uc->qhead;
        uc->qhead = t->next;
        if (!uc->qhead)
            uc->qtail = NULL;
        pthread_mutex_unlock(&uc->qlock);
        t->run(uc, t->arg);
        free(t);
        pthread_mutex_lock(&uc->qlock);
    }
    pthread_mutex_unlock(&uc->qlock);
    return NULL;
}

/* ---- jobs ------------------------------------------------------------------------ */

enum job_kind { J_AUTHORIZE, J_CODE, J_REFRESH, J_REVOKE };

struct job {
    job *next, *prev;
    al_user_cred *uc;
    enum job_kind kind;
    prov p;
    char *provider, *user, *scope, *target; /* the binding */
    char *return_url;                       /* app binding: where the browser goes back */
    char *authz_endpoint;                   /* J_AUTHORIZE with PAR: for the short URL */
    char *par_endpoint;                     /* J_AUTHORIZE: push here first (RFC 9126) */
    char *chosen_return_url;                /* J_AUTHORIZE: the link opener's choice */
    void *par_pending; /* J_AUTHORIZE: the push in flight (freed if al_fetch_stop drops it) */
    char *form; /* the grant (code, refresh) or the token to revoke: wiped */
    size_t form_cap;
    char *redirect_uri;
    char link_id[AL_CONSENT_ID_LEN + 1];
    al_kv *extra; /* J_AUTHORIZE: the target's custom parameters (copies) */
    size_t extra_n;
    char *old_refresh;   /* J_REFRESH: kept when the answer has no new one */
    char key[512];       /* J_REFRESH: the flight key */
    al_store_lock *lock; /* J_REFRESH: the cross-replica refresh lock, held until stored */
    al_user_page_fn done;
    void *arg;
    char host[256];
    int64_t started_ms;
};

static void wipe_free(char *s, size_t n)
{
    if (s) {
        OPENSSL_cleanse(s, n);
        free(s);
    }
}

static void job_free(job *j)
{
    if (!j)
        return;
    al_user_cred *uc = j->uc;
    pthread_mutex_lock(&uc->lock);
    if (j->prev)
        j->prev->next = j->next;
    else if (uc->jobs == j)
        uc->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    pthread_mutex_unlock(&uc->lock);
    al_store_unlock(j->lock);
    prov_clear(&j->p);
    free(j->provider);
    free(j->user);
    free(j->scope);
    free(j->target);
    free(j->return_url);
    free(j->authz_endpoint);
    free(j->par_endpoint);
    free(j->chosen_return_url);
    al_par_abandon(j->par_pending); /* NULL once its answer came */
    wipe_free(j->form, j->form_cap);
    free(j->redirect_uri);
    for (size_t i = 0; i < j->extra_n; i++) {
        free(j->extra[i].key);
        free(j->extra[i].value);
    }
    free(j->extra);
    if (j->old_refresh)
        wipe_free(j->old_refresh, strlen(j->old_refresh));
    OPENSSL_cleanse(j->link_id, sizeof j->link_id);
    free(j);
}

static job *job_new(al_user_cred *uc, enum job_kind kind)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->uc = uc;
    j->kind = kind;
    j->started_ms = mono_ms();
    pthread_mutex_lock(&uc->lock);
    j->next = uc->jobs;
    if (uc->jobs)
        uc->jobs->prev = j;
    uc->jobs = j;
    pthread_mutex_unlock(&uc->lock);
    return j;
}

/* The binding's strings move from f to the job, with who gets the answer. */
static void job_take_binding(job *j, al_consent_flow *f, al_user_page_fn done, void *arg)
{
    j->provider = f->provider;
    j->user = f->user;
    j->scope = f->scope;
    j->target = f->target;
    j->return_url = f->return_url;
    f->provider = f->user = f->scope = f->target = f->return_url = NULL;
    j->done = done;
    j->arg = arg;
}

static void page_set(al_user_page *pg, int status, const char *reason, const char *title,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void page_set(al_user_page *pg, int status, const char *reason, const char *title,
                     const char *fmt, ...)
{
    va_list ap;
    pg->status = status;
    pg->reason = reason;
    snprintf(pg->title, sizeof pg->title, "%s", title);
    va_start(ap, fmt);
    vsnprintf(pg->message, sizeof pg->message, fmt, ap);
    va_end(ap);
}

void al_user_page_clear(al_user_page *p)
{
    if (p)
        free(p->location);
    if (p)
        memset(p, 0, sizeof *p);
}

static void job_continue(job *j, const char *endpoint);

/* Ends a job that failed before or at its request. */
static void job_fail(job *j, int err, const char *msg);

static void set_host(job *j, const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    snprintf(j->host, sizeof j->host, "%.*s", (int)(n < 200 ? n : 200), p);
}

static const char *endpoint_field(const job *j, int meta)
{
    if (j->kind == J_AUTHORIZE)
        return meta ? "authorization_endpoint" : "authorizationEndpoint";
    if (j->kind == J_REVOKE)
        return meta ? "revocation_endpoint" : "revocationEndpoint";
    return meta ? "token_endpoint" : "tokenEndpoint";
}

/* An authorization request: the endpoint (the provider's setting wins over discovery),
 * and whether it is pushed first (PAR: the metadata requires it, or the provider is set
 * to use it). meta may be NULL (no discovery, or discovery failed while the endpoint is
 * configured). */
static void authorize_meta(job *j, json_t *meta)
{
    const char *url = json_string_value(json_object_get(j->p.cfg, "authorizationEndpoint"));
    if (!url)
        url = json_string_value(json_object_get(meta, "authorization_endpoint"));
    if (!url) {
        job_fail(j, AL_ERR_PROTO, "the provider's discovery document has no authorization_endpoint");
        return;
    }
    if (al_par_wanted(meta, j->p.cfg)) {
        const char *par = al_par_endpoint(meta, j->p.cfg);
        if (!par) {
            job_fail(j, AL_ERR_CONFIG,
                     "the provider wants pushed authorization requests but names no "
                     "pushed_authorization_request_endpoint (set --par-endpoint)");
            return;
        }
        if (!(j->par_endpoint = strdup(par)) || !(j->authz_endpoint = strdup(url))) {
            job_fail(j, AL_ERR_NOMEM, "out of memory");
            return;
        }
    }
    job_continue(j, url);
}

static void with_metadata(job *j, json_t *meta)
{
    if (j->kind == J_AUTHORIZE) {
        authorize_meta(j, meta);
        return;
    }
    const char *url = json_string_value(json_object_get(meta, endpoint_field(j, 1)));
    if (!url) {
        char m[200];
        snprintf(m, sizeof m, "the provider's discovery document has no %s", endpoint_field(j, 1));
        job_fail(j, j->kind == J_REVOKE ? AL_ERR_NOTFOUND : AL_ERR_PROTO, m);
        return;
    }
    job_continue(j, url);
}

static void on_meta(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    job *j = arg;
    (void)gen;
    if (err != AL_OK && j->kind == J_AUTHORIZE &&
        json_object_get(j->p.cfg, "authorizationEndpoint")) {
        authorize_meta(j, NULL); /* the configured endpoint serves without discovery */
        return;
    }
    if (err != AL_OK) {
        char m[400];
        snprintf(m, sizeof m, "discovery failed: %s", msg);
        job_fail(j, err, m);
        return;
    }
    with_metadata(j, value);
}

/* Finds the endpoint the job needs and goes on (now, or on the fetch thread). Returns
 * AL_OK when the job has ended (answered) here, AL_ERR_PENDING when it goes on later. */
static int job_start(job *j)
{
    const char *url = json_string_value(json_object_get(j->p.cfg, endpoint_field(j, 0)));
    const char *disc = json_string_value(json_object_get(j->p.cfg, "discoveryUrl"));
    if (url && j->kind == J_AUTHORIZE && !disc) {
        authorize_meta(j, NULL); /* PAR only as the provider's settings say */
        return AL_OK;
    }
    /* an authorization request reads the metadata even with a configured endpoint: it
     * may require pushed authorization requests */
    if (url && j->kind != J_AUTHORIZE) {
        job_continue(j, url);
        return AL_OK;
    }
    if (!disc) {
        job_fail(j, j->kind == J_REVOKE ? AL_ERR_NOTFOUND : AL_ERR_CONFIG,
                 j->kind == J_AUTHORIZE ? "the provider has neither an authorization endpoint nor "
                                          "a discovery URL"
                 : j->kind == J_REVOKE  ? "the provider has neither a revocation endpoint nor a "
                                          "discovery URL"
                                        : "the provider has neither a token endpoint nor a "
                                          "discovery URL");
        return AL_OK;
    }
    set_host(j, disc);
    al_flight_result r;
    al_oidc *oidc = j->uc->oidc; /* j may be gone after with_metadata */
    int rc = al_oidc_get(oidc, AL_OIDC_METADATA, disc, &j->p.fo, 0, on_meta, j, &r);
    if (rc == AL_OK) {
        with_metadata(j, r.value);
        al_oidc_release(oidc, r.value);
        return AL_OK;
    }
    if (rc == AL_ERR_AGAIN)
        return AL_ERR_PENDING;
    if (url) { /* J_AUTHORIZE: discovery is failing, the configured endpoint serves */
        authorize_meta(j, NULL);
        return AL_OK;
    }
    char m[400];
    snprintf(m, sizeof m, "discovery failed: %s", r.msg);
    job_fail(j, rc, m);
    return AL_OK;
}

/* ---- authorize ---------------------------------------------------------------- */

static void answer(job *j, al_user_page *pg)
{
    j->done(j->arg, pg);
    job_free(j);
}

/* Where the browser goes: the provider's authorization endpoint with the parameters in
 * its query; or, with PAR, nothing yet (AL_ERR_PENDING): the parameters are pushed and
 * on_par answers with the short URL. */
static void on_par(void *arg, int err, const char *request_uri, int64_t expires_in,
                   const char *msg);

static int authorize_redirect(job *j, const char *endpoint, const char *params, char **location)
{
    if (!j->par_endpoint) {
        *location = al_consent_url(endpoint, params);
        return *location ? AL_OK : AL_ERR_NOMEM;
    }
    char m[400];
    set_host(j, j->par_endpoint);
    int rc = al_par_push(al_oidc_fetcher(j->uc->oidc), j->p.config_json, j->p.secret,
                         j->p.secret_len, j->par_endpoint, params, on_par, j, NULL,
                         &j->par_pending, m, sizeof m);
    if (rc != AL_OK) {
        al_user_page pg;
        memset(&pg, 0, sizeof pg);
        page_set(&pg, 502, "par_failed", "Consent could not start",
                 "airlock could not push the authorization request to the provider: %s. Ask "
                 "the agent to make its request again for a new link.",
                 m);
        audit_ev(j->uc, "consent.refused", j->provider, j->user, j->target, pg.reason, m, NULL);
        answer(j, &pg);
    }
    return AL_ERR_PENDING;
}

static void on_par(void *arg, int err, const char *request_uri, int64_t expires_in,
                   const char *msg)
{
    job *j = arg;
    al_user_page pg;
    memset(&pg, 0, sizeof pg);
    const char *client_id = json_string_value(json_object_get(j->p.cfg, "clientId"));
    (void)expires_in;
    j->par_pending = NULL; /* al_par frees its context after this returns */
    if (err == AL_OK && !(pg.location = al_par_url(j->authz_endpoint, client_id, request_uri)))
        err = AL_ERR_NOMEM, msg = "out of memory";
    if (err == AL_OK) {
        pg.status = 302;
        snprintf(pg.title, sizeof pg.title, "Continue at the provider");
        snprintf(pg.message, sizeof pg.message, "Continue at %s to consent.", j->host);
        audit_ev(j->uc, "consent.redirected", j->provider, j->user, j->target, "ok", "par", NULL);
    } else {
        page_set(&pg, err == AL_ERR_TIMEOUT ? 504 : 502, "par_failed", "Consent could not start",
                 "The provider refused the pushed authorization request: %s. Ask the agent to "
                 "make its request again for a new link.",
                 msg);
        audit_ev(j->uc, "consent.refused", j->provider, j->user, j->target, pg.reason, msg, NULL);
    }
    answer(j, &pg);
}

static void authorize_with(job *j, const char *endpoint)
{
    al_user_page pg;
    memset(&pg, 0, sizeof pg);
    const char *client_id = json_string_value(json_object_get(j->p.cfg, "clientId"));
    char *params = NULL;
    const char *vendor = json_string_value(json_object_get(j->p.cfg, "vendor"));
    al_consent_authz a = {
        .client_id = client_id,
        .redirect_uri = j->redirect_uri,
        .extra = j->extra,
        .extra_count = j->extra_n,
        .quirks = al_identity_vendor_quirks(vendor), /* what the vendor needs for a refresh token */
        .return_url = j->chosen_return_url,
    };
    int rc = client_id ? al_consent_open(j->uc->consent, j->link_id, &a, &params) : AL_ERR_CONFIG;
    if (rc == AL_OK)
        rc = authorize_redirect(j, endpoint, params, &pg.location);
    wipe_free(params, params ? strlen(params) : 0);
    if (rc == AL_ERR_PENDING)
        return; /* PAR: on_par (or the push's refusal) answered or will answer */
    if (rc == AL_OK) {
        pg.status = 302;
        snprintf(pg.title, sizeof pg.title, "Continue at the provider");
        snprintf(pg.message, sizeof pg.message, "Continue at %s to consent.", j->host);
    } else if (rc == AL_ERR_NOTFOUND || rc == AL_ERR_TIMEOUT) {
        page_set(&pg, rc == AL_ERR_TIMEOUT ? 410 : 404,
                 rc == AL_ERR_TIMEOUT ? "consent_link_expired" : "consent_link_unknown",
                 "This link cannot be used",
                 "This authorization link %s. Links work once, for %d seconds: ask the agent "
                 "to make its request again for a new one.",
                 rc == AL_ERR_TIMEOUT ? "has expired" : "is unknown or was used already",
                 AL_CONSENT_TTL_S);
    } else {
        page_set(&pg, 500, "consent_failed", "Consent could not start",
                 "airlock could not start the authorization request (%s); see airlock's log.",
                 rc == AL_ERR_CONFIG ? "the provider has no clientId" : al_strerror(rc));
    }
    if (pg.status == 302)
        audit_ev(j->uc, "consent.redirected", j->provider, j->user, j->target, "ok", NULL, NULL);
    else
        audit_ev(j->uc, "consent.refused", j->provider, j->user, j->target, pg.reason, pg.message,
                 NULL);
    answer(j, &pg);
}

/* ---- the token endpoint ------------------------------------------------------------- */

static void refresh_done(job *j, int err, al_user_token *t, const char *msg);
static void finish_code(job *j, int err, al_user_token *t, const char *msg);

/* A code or refresh job's answer, for the store thread (which stores it). */
typedef struct answer_task {
    job *j;
    int err;
    al_user_token t; /* moved in */
    char msg[512];
} answer_task;

static void answer_run(al_user_cred *uc, void *arg)
{
    answer_task *a = arg;
    (void)uc;
    if (a->j->kind == J_CODE) {
        finish_code(a->j, a->err, a->err == AL_OK ? &a->t : NULL, a->msg);
    } else {
        refresh_done(a->j, a->err, &a->t, a->msg);
        job_free(a->j);
    }
    al_user_token_clear(&a->t);
    OPENSSL_cleanse(a, sizeof *a);
    free(a);
}

/* At shutdown: the job's waiter hears "stopping" (a page waiter's worker is gone: its
 * mailbox frees what it is given), then the job goes. */
static void job_abandon(job *j)
{
    if (j->done) {
        al_user_page pg;
        memset(&pg, 0, sizeof pg);
        page_set(&pg, 503, "stopping", "airlock is stopping", "Try again in a moment.");
        j->done(j->arg, &pg);
        al_user_page_clear(&pg);
    } else if (j->kind == J_REFRESH) {
        al_flight_complete(j->uc->cache, j->key, AL_ERR_IO, NULL, 0, 0, "airlock is stopping");
    }
    job_free(j);
}

static void answer_drop(al_user_cred *uc, void *arg)
{
    answer_task *a = arg;
    (void)uc;
    job_abandon(a->j);
    al_user_token_clear(&a->t);
    free(a);
}

/* Any thread: hands the job's outcome (t moved from, may be NULL) to the store thread. */
static void job_answered(job *j, int err, al_user_token *t, const char *msg)
{
    answer_task *a = calloc(1, sizeof *a);
    if (a) {
        a->j = j;
        a->err = err;
        if (t) {
            a->t = *t;
            memset(t, 0, sizeof *t);
        }
        snprintf(a->msg, sizeof a->msg, "%s", msg ? msg : "");
        if (store_post(j->uc, answer_run, answer_drop, a) == AL_OK)
            return;
        if (t)
            *t = a->t; /* given back: the caller clears it */
        free(a);
    }
    /* no memory for the hand-off: the outcome is an error, answered here (no store) */
    if (j->kind == J_CODE) {
        finish_code(j, AL_ERR_NOMEM, NULL, "out of memory");
    } else {
        refresh_done(j, AL_ERR_NOMEM, NULL, "out of memory");
        job_free(j);
    }
}

static void on_token(void *arg, const al_fetch_response *res)
{
    job *j = arg;
    char msg[512] = "";
    al_user_token t;
    memset(&t, 0, sizeof t);
    int err = res->err;
    if (err == AL_ERR_TIMEOUT) {
        snprintf(msg, sizeof msg, "token endpoint %s", res->errmsg);
    } else if (err != AL_OK) {
        snprintf(msg, sizeof msg, "token endpoint unreachable: %s", res->errmsg);
    } else {
        char *scopes[1] = {j->scope};
        al_token_spec spec = {.provider = j->provider,
                              .secret = j->p.secret,
                              .secret_len = j->p.secret_len,
                              .scopes = scopes,
                              .scope_count = j->scope && *j->scope ? 1 : 0};
        err = al_user_token_parse(res->status, res->body, res->body_len, res->host, &spec,
                                  j->uc->now_s(j->uc->now_arg), &t, msg, sizeof msg);
    }
    job_answered(j, err, &t, msg);
    al_user_token_clear(&t); /* moved: empty unless the hand-off failed */
}

static void on_revoked(void *arg, const al_fetch_response *res);

/* POST the grant (or, J_REVOKE, the token to revoke) with the client's authentication
 * (tokenEndpointAuthMethod). */
static void request_token(job *j, const char *endpoint)
{
    al_token_post tp;
    char eb[300];
    set_host(j, endpoint);
    int rc =
        al_token_post_init(&tp, j->p.config_json, j->p.secret, j->p.secret_len, endpoint, j->form);
    if (rc == AL_OK)
        rc = al_fetch_start(al_oidc_fetcher(j->uc->oidc), &tp.rq, &tp.fo,
                            j->kind == J_REVOKE ? on_revoked : on_token, j, NULL, eb, sizeof eb);
    else
        snprintf(eb, sizeof eb, "%s",
                 rc == AL_ERR_CONFIG ? "the provider has no clientId" : al_strerror(rc));
    al_token_post_clear(&tp); /* al_fetch copied what it sends */
    if (rc != AL_OK) {
        char m[400];
        snprintf(m, sizeof m, "%s endpoint refused: %s",
                 j->kind == J_REVOKE ? "revocation" : "token", eb);
        job_fail(j, rc, m);
    }
}

static void job_continue(job *j, const char *endpoint)
{
    set_host(j, endpoint);
    if (j->kind == J_AUTHORIZE)
        authorize_with(j, endpoint);
    else
        request_token(j, endpoint);
}

static void revoke_done(job *j, int err, const char *msg);

static void job_fail(job *j, int err, const char *msg)
{
    if (j->kind == J_REVOKE) {
        revoke_done(j, err, msg);
        return;
    }
    if (j->kind != J_AUTHORIZE) {
        job_answered(j, err == AL_ERR_PERM ? AL_ERR_PROTO : err, NULL, msg);
        return;
    }
    al_user_page pg;
    memset(&pg, 0, sizeof pg);
    page_set(&pg, err == AL_ERR_TIMEOUT ? 504 : 502, "provider_unavailable",
             "The provider could not be reached",
             "airlock could not find where to send you: %s. Try the link again later.", msg);
    audit_ev(j->uc, "consent.refused", j->provider, j->user, j->target, pg.reason, msg, NULL);
    answer(j, &pg);
}

/* ---- the callback: code -> tokens -> the vault ----------------------------------------- */

/* force_authentication: remembers that (target, user)'s consent produced the token
 * with fingerprint fp. */
static void fresh_mark(al_user_cred *uc, const char *target, const char *user, const char *fp)
{
    char key[512];
    if (cache_key(target, user, key, sizeof key) != AL_OK)
        return;
    pthread_mutex_lock(&uc->lock);
    fresh_entry *e = NULL;
    for (size_t i = 0; i < FRESH_MAX && !e; i++)
        if (!strcmp(uc->fresh[i].key, key))
            e = &uc->fresh[i];
    if (!e)
        e = &uc->fresh[uc->fresh_next++ % FRESH_MAX];
    snprintf(e->key, sizeof e->key, "%s", key);
    snprintf(e->fp, sizeof e->fp, "%s", fp);
    pthread_mutex_unlock(&uc->lock);
}

int al_user_cred_fresh(al_user_cred *uc, const char *target, const char *user, const char *fp)
{
    char key[512];
    int hit = 0;
    if (!fp || cache_key(target, user, key, sizeof key) != AL_OK)
        return 0;
    pthread_mutex_lock(&uc->lock);
    for (size_t i = 0; i < FRESH_MAX; i++)
        hit |= !strcmp(uc->fresh[i].key, key) && !strcmp(uc->fresh[i].fp, fp);
    pthread_mutex_unlock(&uc->lock);
    return hit;
}

/* ---- revocation of replaced tokens ------------------------------------------------ */

/* The revocation endpoint answered (fetch thread), or the job ended before asking it:
 * audited and, unless revoked, logged — never a token. The consent it follows is done. */
static void revoke_done(job *j, int err, const char *msg)
{
    const char *outcome = err == AL_OK ? "revoked" : err == AL_ERR_NOTFOUND ? "unsupported"
                                                                            : "error";
    audit_ev(j->uc, "user_token.revoke", j->provider, j->user, NULL, outcome,
             err == AL_OK ? NULL : msg, NULL);
    if (err != AL_OK)
        al_log(err == AL_ERR_NOTFOUND ? AL_LOG_INFO : AL_LOG_WARN, "identity.user_token",
               "provider %s: the refresh token a new consent replaced was not revoked (%s): %s",
               j->provider, outcome, msg && *msg ? msg : al_strerror(err));
    job_free(j);
}

static void on_revoked(void *arg, const al_fetch_response *res)
{
    job *j = arg;
    char msg[512] = "";
    int err = res->err;
    if (err != AL_OK)
        snprintf(msg, sizeof msg, "revocation endpoint unreachable: %s", res->errmsg);
    else
        err = al_revoke_check(res->status, res->body, res->body_len, res->host, j->p.secret,
                              j->p.secret_len, msg, sizeof msg);
    revoke_done(j, err, msg);
}

/* A consent replaced (provider, user)'s tokens: the replaced refresh token would stay
 * valid at the provider, unused by anyone, so it is revoked (RFC 7009) — after the new
 * tokens are stored, on the fetch thread, without making the consent wait. Only for a
 * provider created with --revoke-replaced-tokens: several providers (Google among them)
 * revoke the whole grant for a token, which would end the new consent's tokens too. */
static void revoke_replaced(al_user_cred *uc, const char *provider, const char *user,
                            const char *refresh)
{
    job *j = job_new(uc, J_REVOKE);
    int rc = j ? prov_load(uc, provider, &j->p) : AL_ERR_NOMEM;
    if (rc == AL_OK && !json_is_true(json_object_get(j->p.cfg, "revokeReplacedTokens"))) {
        job_free(j); /* the provider did not ask for it: the replaced token is left alone */
        return;
    }
    if (rc == AL_OK) {
        j->provider = strdup(provider);
        j->user = strdup(user);
        j->form = al_revoke_form(refresh, "refresh_token");
        j->form_cap = j->form ? strlen(j->form) : 0;
        rc = j->provider && j->user && j->form ? AL_OK : AL_ERR_NOMEM;
    }
    if (rc != AL_OK) {
        audit_ev(uc, "user_token.revoke", provider, user, NULL, "error",
                 rc == AL_ERR_NOTFOUND ? "the provider is no longer in the store"
                                       : al_strerror(rc),
                 NULL);
        job_free(j);
        return;
    }
    job_start(j);
}

/* A consent's tokens go into the vault for (provider, user); the cache forgets the old
 * answer so the next request reads them. A refresh token they replace is revoked. */
static int store_tokens(al_user_cred *uc, const char *provider, const char *user,
                        const char *target, const al_user_token *t)
{
    al_user_token old;
    memset(&old, 0, sizeof old);
    /* a row that does not open (another master key) has nothing we could revoke */
    int replaced = load_token(uc, provider, user, &old) == AL_OK && old.refresh_token &&
                   *old.refresh_token &&
                   (!t->refresh_token || strcmp(old.refresh_token, t->refresh_token) != 0);
    int rc = save_token(uc, provider, user, t);
    char key[512];
    if (rc == AL_OK && cache_key(provider, user, key, sizeof key) == AL_OK)
        al_flight_forget(uc->cache, key); /* the next request reads the new tokens */
    if (rc == AL_OK)
        fresh_mark(uc, target, user, t->fingerprint);
    if (rc == AL_OK && replaced)
        revoke_replaced(uc, provider, user, old.refresh_token);
    al_user_token_clear(&old);
    return rc;
}

static int token_dup(const al_user_token *t, al_user_token *out)
{
    memset(out, 0, sizeof *out);
    *out = *t;
    out->access_token = malloc(t->access_len + 1);
    out->refresh_token = t->refresh_token ? strdup(t->refresh_token) : NULL;
    out->scope = strdup(t->scope ? t->scope : "");
    if (out->access_token) {
        memcpy(out->access_token, t->access_token, t->access_len);
        out->access_token[t->access_len] = 0;
    }
    if (!out->access_token || (t->refresh_token && !out->refresh_token) || !out->scope) {
        al_user_token_clear(out);
        return AL_ERR_NOMEM;
    }
    return AL_OK;
}

/* The hook point of the binding modes. `link` stores the tokens of the user the link
 * was made for at once (whoever opened it consented for them). `app` holds them under a
 * new session id and sends the browser to the application's return URL with it
 * (*location); the application completes the session for its signed-in user
 * (al_user_cred_complete). */
static int store_consented(job *j, const al_user_token *t, char **location)
{
    al_user_cred *uc = j->uc;
    *location = NULL;
    if (!j->return_url)
        return store_tokens(uc, j->provider, j->user, j->target, t);
    al_consent_flow f;
    al_user_token held;
    char sid[AL_CONSENT_ID_LEN + 1];
    memset(&f, 0, sizeof f);
    int rc = token_dup(t, &held);
    if (rc == AL_OK) {
        f.provider = strdup(j->provider);
        f.user = strdup(j->user);
        f.scope = strdup(j->scope ? j->scope : "");
        f.target = strdup(j->target);
        f.return_url = strdup(j->return_url);
        rc = al_consent_hold(uc->consent, &f, &held, sid); /* clears f and held */
    } else {
        al_consent_flow_clear(&f);
    }
    if (rc == AL_OK) {
        *location = al_return_url_with_session(j->return_url, sid);
        rc = *location ? AL_OK : AL_ERR_NOMEM;
    }
    OPENSSL_cleanse(sid, sizeof sid);
    return rc;
}

static void finish_code(job *j, int err, al_user_token *t, const char *msg)
{
    al_user_page pg;
    memset(&pg, 0, sizeof pg);
    if (err == AL_OK && t && (err = store_consented(j, t, &pg.location)) != AL_OK)
        msg = err == AL_ERR_AGAIN ? "too many sessions wait for their application"
                                  : "the tokens could not be stored";
    if (err == AL_OK && t && pg.location) {
        pg.status = 302;
        snprintf(pg.title, sizeof pg.title, "Continue in the application");
        snprintf(pg.message, sizeof pg.message,
                 "Continue in the application: it completes the sign-in for you.");
        audit_ev(j->uc, "consent.held", j->provider, j->user, j->target, "ok", NULL,
                 t->fingerprint);
    } else if (err == AL_OK && t) {
        page_set(&pg, 200, NULL, "Access granted",
                 "airlock now holds your access to %s for target '%s'. You can close this "
                 "page; the agent's next request uses it.",
                 j->host, j->target);
        audit_ev(j->uc, "consent.completed", j->provider, j->user, j->target, "ok", NULL,
                 t->fingerprint);
    } else {
        page_set(&pg, err == AL_ERR_TIMEOUT ? 504 : 502, "token_endpoint_error",
                 "Access could not be granted",
                 "The provider did not exchange the authorization code: %s. Nothing was stored; "
                 "ask the agent to make its request again for a new link.",
                 msg && *msg ? msg : al_strerror(err));
        audit_ev(j->uc, "consent.refused", j->provider, j->user, j->target, "token_endpoint_error",
                 pg.message, NULL);
    }
    answer(j, &pg);
}

/* ---- refresh -------------------------------------------------------------------------- */

static int is_rejected(al_user_cred *uc, const char *key, const char *fp, int clear)
{
    int hit = 0;
    pthread_mutex_lock(&uc->lock);
    for (size_t i = 0; i < REJECTED_MAX; i++) {
        rej_entry *r = &uc->rej[i];
        if (r->key[0] && !strcmp(r->key, key) && (!fp || !strcmp(r->fp, fp))) {
            hit = 1;
            if (clear)
                memset(r, 0, sizeof *r);
        }
    }
    pthread_mutex_unlock(&uc->lock);
    return hit;
}

static void complete_value(al_user_cred *uc, const char *key, access_impl *v, int64_t now)
{
    int64_t exp = v->pub.expires_at;
    if (v->pub.none) {
        al_flight_complete(uc->cache, key, AL_OK, v, 0, NONE_RECHECK_MS, NULL);
        return;
    }
    if (!exp) { /* no expiry given: read again (and refresh) after an hour */
        al_flight_complete(uc->cache, key, AL_OK, v, 3600 * 1000, 3600 * 1000, NULL);
        return;
    }
    int64_t left = exp - now;
    int64_t skew = left / 10 < 30 ? left / 10 : 30;
    int64_t usable = (left - skew) * 1000, refresh = left * 8 / 10 * 1000;
    if (usable < 1)
        usable = 1;
    if (refresh > usable)
        refresh = usable;
    al_flight_complete(uc->cache, key, AL_OK, v, refresh, usable, NULL);
}

/* The refresh answered (fetch thread); t is the parsed answer when err is AL_OK. */
static void refresh_done(job *j, int err, al_user_token *t, const char *msg)
{
    al_user_cred *uc = j->uc;
    int64_t now = uc->now_s(uc->now_arg);
    access_impl *v = NULL;
    if (err == AL_OK) {
        /* a rotated refresh token is stored durably before the new access token is used;
         * an answer without one keeps the one we have */
        if (!t->refresh_token && j->old_refresh) {
            t->refresh_token = j->old_refresh;
            j->old_refresh = NULL;
        }
        err = save_token(uc, j->provider, j->user, t);
        if (err != AL_OK)
            msg = "the refreshed tokens could not be stored";
        else if (!(v = access_new(j->provider, j->user, t, NULL)))
            err = AL_ERR_NOMEM;
    }
    if (err == AL_OK) {
        is_rejected(uc, j->key, NULL, 1);
        audit_ev(uc, "user_token.refresh", j->provider, j->user, NULL, "ok", NULL, v->fp);
        complete_value(uc, j->key, v, now);
    } else if (err == AL_ERR_PERM) {
        /* invalid_grant: the grant is gone (revoked, expired, a refresh token reused) */
        if (uc->store->ops->user_del)
            uc->store->ops->user_del(uc->store, j->provider, j->user);
        is_rejected(uc, j->key, NULL, 1);
        audit_ev(uc, "user_token.refresh", j->provider, j->user, NULL, "invalid_grant", msg, NULL);
        v = access_new(j->provider, j->user, NULL,
                       "the provider no longer accepts the user's grant (invalid_grant), so "
                       "their tokens were deleted");
        if (v)
            complete_value(uc, j->key, v, now);
        else
            al_flight_complete(uc->cache, j->key, AL_ERR_NOMEM, NULL, 0, 0, "out of memory");
    } else {
        audit_ev(uc, "user_token.refresh", j->provider, j->user, NULL, "error", msg, NULL);
        al_flight_complete(uc->cache, j->key, err, NULL, 0, 0, msg);
    }
}

/* The flight's loader (the caller's thread): the store, then maybe a refresh. */
typedef struct ukey {
    char *provider, *user;
} ukey;

static void *ukey_dup(const void *p)
{
    const ukey *k = p;
    ukey *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->provider = strdup(k->provider);
    c->user = strdup(k->user);
    if (!c->provider || !c->user) {
        free(c->provider);
        free(c->user);
        free(c);
        return NULL;
    }
    return c;
}

static void ukey_free(void *p)
{
    ukey *k = p;
    if (k) {
        free(k->provider);
        free(k->user);
        free(k);
    }
}

/* What a stored token is good for at `now`. */
enum use { USE_IT, REFRESH_IT, NONE_LEFT };

static enum use classify(const al_user_token *t, int64_t now, int rejected)
{
    int64_t life = t->expires_at ? t->expires_at - t->obtained_at : 0;
    int64_t due = t->expires_at ? t->obtained_at + life * 8 / 10 : 0;
    int64_t skew = life / 10 < 30 ? life / 10 : 30;
    int valid = !t->expires_at || now < t->expires_at - skew;
    if (!rejected && valid && (!t->expires_at || now < due || !t->refresh_token))
        return USE_IT;
    return t->refresh_token ? REFRESH_IT : NONE_LEFT;
}

/* Answers the load of key with t's token, or "none" (t NULL) saying why. */
static void complete_access(al_user_cred *uc, const char *key, const ukey *k,
                            const al_user_token *t, const char *why)
{
    access_impl *v = access_new(k->provider, k->user, t, t ? NULL : why);
    if (v)
        complete_value(uc, key, v, uc->now_s(uc->now_arg));
    else
        al_flight_complete(uc->cache, key, AL_ERR_NOMEM, NULL, 0, 0, "out of memory");
}

/* Reads (provider, user)'s row: 0 with *t, or 1 when a "none" or an error was answered. */
static int read_row(al_user_cred *uc, const char *key, const ukey *k, al_user_token *t)
{
    int rc = load_token(uc, k->provider, k->user, t);
    if (rc == AL_ERR_NOTFOUND || rc == AL_ERR_KEY) {
        if (rc == AL_ERR_KEY)
            al_log(AL_LOG_WARN, "user_token.unreadable",
                   "provider=%s: a user's stored tokens do not open (another master key, or "
                   "tampered); the user is asked to consent again",
                   k->provider);
        complete_access(uc, key, k, NULL, "no token for this user yet");
        return 1;
    }
    if (rc != AL_OK) {
        al_flight_complete(uc->cache, key, rc, NULL, 0, 0,
                           "the user token store could not be read");
        return 1;
    }
    return 0;
}

/* One refresh at a time across replicas (al_store.h's protocol): take the store's
 * refresh lock, then read the row again — another replica may have refreshed (and
 * rotated the refresh token) while this one waited. Returns 0 with *t the row to refresh
 * (and *lock held when the store has locks), or 1 when answered (the token another
 * replica got, none, an error). */
static int lock_for_refresh(al_user_cred *uc, const char *key, const ukey *k, al_user_token *t,
                            al_store_lock **lock)
{
    *lock = NULL;
    if (!uc->store->ops->refresh_lock)
        return 0;
    char name[600];
    snprintf(name, sizeof name, "3lo\n%s\n%s", k->provider, k->user);
    int rc = uc->store->ops->refresh_lock(uc->store, name, 10000, lock);
    if (rc != AL_OK) {
        al_user_token_clear(t);
        al_flight_complete(
            uc->cache, key, rc == AL_ERR_TIMEOUT ? AL_ERR_TIMEOUT : AL_ERR_DB, NULL, 0, 0,
            rc == AL_ERR_TIMEOUT ? "another airlock has been refreshing this user's token for 10 "
                                   "seconds; retry"
                                 : "the store's refresh lock could not be taken");
        return 1;
    }
    char fp[32];
    snprintf(fp, sizeof fp, "%s", t->fingerprint);
    al_user_token_clear(t);
    if (read_row(uc, key, k, t)) {
        al_store_unlock(*lock);
        *lock = NULL;
        return 1;
    }
    if (strcmp(fp, t->fingerprint) != 0 && classify(t, uc->now_s(uc->now_arg), 0) == USE_IT) {
        complete_access(uc, key, k, t, NULL); /* refreshed by another replica meanwhile */
        al_user_token_clear(t);
        al_store_unlock(*lock);
        *lock = NULL;
        return 1;
    }
    return 0;
}

/* The store thread: (provider, user)'s row, then maybe a refresh on the fetch thread. */
static void load_now(al_user_cred *uc, const char *key, const ukey *k)
{
    al_user_token t;
    if (read_row(uc, key, k, &t))
        return;
    int rejected = is_rejected(uc, key, t.fingerprint, 0);
    enum use u = classify(&t, uc->now_s(uc->now_arg), rejected);
    if (u == USE_IT) {
        complete_access(uc, key, k, &t, NULL);
        al_user_token_clear(&t);
        return;
    }
    if (u == NONE_LEFT) {
        al_user_token_clear(&t);
        complete_access(uc, key, k, NULL,
                        rejected ? "the upstream refused the user's token and there is no refresh "
                                   "token"
                                 : "the user's token expired and the provider gave no refresh "
                                   "token");
        return;
    }
    al_store_lock *lock = NULL;
    if (lock_for_refresh(uc, key, k, &t, &lock))
        return;
    /* refresh on the fetch thread; its answer is stored here, then the lock goes */
    job *j = job_new(uc, J_REFRESH);
    int err = j ? prov_load(uc, k->provider, &j->p) : AL_ERR_NOMEM;
    if (j) {
        j->lock = lock;
        lock = NULL;
    }
    if (j && err == AL_OK) {
        err = AL_ERR_NOMEM;
        j->provider = strdup(k->provider);
        j->user = strdup(k->user);
        j->scope = strdup(t.scope ? t.scope : "");
        j->old_refresh = t.refresh_token ? strdup(t.refresh_token) : NULL;
        j->form = al_consent_refresh_form(t.refresh_token, NULL);
        snprintf(j->key, sizeof j->key, "%s", key);
        if (j->provider && j->user && j->scope && j->old_refresh && j->form) {
            j->form_cap = strlen(j->form);
            err = AL_OK;
        }
    }
    al_user_token_clear(&t);
    al_store_unlock(lock);
    if (err != AL_OK) {
        job_free(j);
        al_flight_complete(uc->cache, key, err, NULL, 0, 0,
                           err == AL_ERR_NOTFOUND ? "the provider is not in the store"
                           : err == AL_ERR_INVAL  ? "the provider is not an OAuth client"
                           : err == AL_ERR_DB     ? "the credential store is not open"
                                                  : "out of memory");
        return;
    }
    job_start(j);
}

typedef struct load_task {
    char key[512];
    ukey k;
} load_task;

static void load_task_free(load_task *lt)
{
    free(lt->k.provider);
    free(lt->k.user);
    free(lt);
}

static void load_run(al_user_cred *uc, void *arg)
{
    load_task *lt = arg;
    load_now(uc, lt->key, &lt->k);
    load_task_free(lt);
}

static void load_drop(al_user_cred *uc, void *arg)
{
    load_task *lt = arg;
    al_flight_complete(uc->cache, lt->key, AL_ERR_IO, NULL, 0, 0, "airlock is stopping");
    load_task_free(lt);
}

/* The flight's loader, on the caller's thread (a worker): the work goes to the store
 * thread, and the waiters hear from there. */
static void load_user(void *arg, al_flight *f, const char *key, void *key_data)
{
    al_user_cred *uc = arg;
    const ukey *k = key_data;
    load_task *lt = calloc(1, sizeof *lt);
    if (lt) {
        snprintf(lt->key, sizeof lt->key, "%s", key);
        lt->k.provider = strdup(k->provider);
        lt->k.user = strdup(k->user);
    }
    if (!lt || !lt->k.provider || !lt->k.user || store_post(uc, load_run, load_drop, lt) != AL_OK) {
        if (lt)
            load_task_free(lt);
        al_flight_complete(f, key, AL_ERR_NOMEM, NULL, 0, 0, "out of memory");
    }
}

/* ---- public ---------------------------------------------------------------------------- */

int al_user_cred_new(al_store *store, al_vault *vault, al_cred_cache *creds, al_oidc *oidc,
                     al_user_cred **out)
{
    al_user_cred *uc = calloc(1, sizeof *uc);
    if (!uc)
        return AL_ERR_NOMEM;
    uc->store = store;
    uc->vault = vault_ref_new(vault);
    if (!uc->vault) {
        free(uc);
        return AL_ERR_NOMEM;
    }
    pthread_mutex_init(&uc->vlock, NULL);
    uc->creds = creds;
    uc->oidc = oidc;
    uc->now_s = wall_now;
    pthread_mutex_init(&uc->lock, NULL);
    al_flight_config fc = {
        .value_ops = {v_retain, v_release},
        .key_data_dup = ukey_dup,
        .key_data_free = ukey_free,
        .load = load_user,
        .load_arg = uc,
        .name = "user_token",
    };
    pthread_mutex_init(&uc->qlock, NULL);
    pthread_cond_init(&uc->qcond, NULL);
    int rc = al_consent_new(0, &uc->consent);
    if (rc == AL_OK)
        rc = al_flight_new(&fc, &uc->cache);
    if (rc == AL_OK)
        rc = pthread_create(&uc->thread, NULL, store_main, uc) == 0 ? AL_OK : AL_ERR_IO;
    if (rc != AL_OK) {
        al_flight_free(uc->cache);
        al_consent_free(uc->consent);
        pthread_cond_destroy(&uc->qcond);
        pthread_mutex_destroy(&uc->qlock);
        pthread_mutex_destroy(&uc->lock);
        pthread_mutex_destroy(&uc->vlock);
        free(uc->vault); /* the caller still owns vault on failure */
        free(uc);
        return rc;
    }
    uc->thread_started = 1;
    *out = uc;
    return AL_OK;
}

void al_user_cred_free(al_user_cred *uc)
{
    if (!uc)
        return;
    /* the store thread ends after its current task; what is queued is dropped */
    pthread_mutex_lock(&uc->qlock);
    uc->qstop = 1;
    pthread_cond_signal(&uc->qcond);
    pthread_mutex_unlock(&uc->qlock);
    if (uc->thread_started)
        pthread_join(uc->thread, NULL);
    while (uc->qhead) {
        task *t = uc->qhead;
        uc->qhead = t->next;
        t->drop(uc, t->arg);
        free(t);
    }
    /* jobs whose fetch was dropped by al_fetch_stop: their waiters hear it now (a page
     * waiter's worker is gone: its mailbox frees what it was given) */
    while (uc->jobs)
        job_abandon(uc->jobs);
    al_flight_free(uc->cache);
    al_consent_free(uc->consent);
    al_store_close(uc->store);
    vault_release(uc->vault);
    pthread_mutex_destroy(&uc->vlock);
    free(uc->state_dir);
    pthread_cond_destroy(&uc->qcond);
    pthread_mutex_destroy(&uc->qlock);
    pthread_mutex_destroy(&uc->lock);
    free(uc);
}

int al_user_cred_set_state_dir(al_user_cred *uc, const char *state_dir)
{
    char *d = state_dir ? strdup(state_dir) : NULL;
    if (state_dir && !d)
        return AL_ERR_NOMEM;
    free(uc->state_dir);
    uc->state_dir = d;
    return AL_OK;
}

/* A task of another module (al_user_cred_post). */
typedef struct ext_task {
    void (*run)(void *arg);
    void (*drop)(void *arg);
    void *arg;
} ext_task;

static void ext_run(al_user_cred *uc, void *arg)
{
    ext_task *e = arg;
    (void)uc;
    e->run(e->arg);
    free(e);
}

static void ext_drop(al_user_cred *uc, void *arg)
{
    ext_task *e = arg;
    (void)uc;
    e->drop(e->arg);
    free(e);
}

int al_user_cred_post(void *uc, void (*run)(void *arg), void (*drop)(void *arg), void *arg)
{
    ext_task *e = calloc(1, sizeof *e);
    if (!e)
        return AL_ERR_NOMEM;
    e->run = run;
    e->drop = drop;
    e->arg = arg;
    int rc = store_post(uc, ext_run, ext_drop, e);
    if (rc != AL_OK)
        free(e);
    return rc;
}

int al_user_cred_load_row(void *uc, const char *provider, const char *user, al_user_token *out)
{
    return load_token(uc, provider, user, out);
}

int al_user_cred_save_row(void *uc, const char *provider, const char *user,
                          const al_user_token *t)
{
    return save_token(uc, provider, user, t);
}

int al_user_cred_lock(void *uc, const char *name, int timeout_ms, al_store_lock **out)
{
    al_store *st = ((al_user_cred *)uc)->store;
    *out = NULL;
    return st->ops->refresh_lock ? st->ops->refresh_lock(st, name, timeout_ms, out) : AL_OK;
}

void al_user_cred_set_audit(al_user_cred *uc, struct al_audit *audit)
{
    uc->audit = audit;
}

void al_user_cred_set_clock(al_user_cred *uc, int64_t (*now_s)(void *arg), void *arg)
{
    uc->now_s = now_s ? now_s : wall_now;
    uc->now_arg = arg;
    al_consent_set_clock(uc->consent, now_s, arg);
}

al_consent *al_user_cred_consent(al_user_cred *uc)
{
    return uc->consent;
}

int al_user_cred_get(al_user_cred *uc, const char *provider, const char *user, al_flight_cb cb,
                     void *arg, al_flight_result *res)
{
    char key[512];
    ukey k = {(char *)provider, (char *)user};
    if (cache_key(provider, user, key, sizeof key) != AL_OK) {
        memset(res, 0, sizeof *res);
        snprintf(res->msg, sizeof res->msg, "the provider and user names are too long");
        return AL_ERR_TOOBIG;
    }
    int rc = al_flight_get(uc->cache, key, &k, 0, cb, arg, res);
    if (rc == AL_OK && ((al_user_access *)res->value)->none) {
        /* "none" is never trusted from the cache (it is there for the waiters of a load
         * that ended so): the store may have the user's tokens now, stored by the
         * callback of another worker or replica. One indexed read. */
        al_user_access_release(res->value);
        al_flight_forget(uc->cache, key);
        rc = al_flight_get(uc->cache, key, &k, 0, cb, arg, res);
    }
    return rc;
}

int al_user_cred_get_wait(al_user_cred *uc, const char *provider, const char *user,
                          al_user_access **out, char *errbuf, size_t errlen)
{
    al_flight_sync w;
    al_flight_result r;
    void *v = NULL;
    al_flight_sync_init(&w, uc->cache);
    int rc = al_user_cred_get(uc, provider, user, al_flight_sync_cb, &w, &r);
    rc = al_flight_sync_wait(&w, rc, &r, &v, errbuf, errlen);
    *out = v;
    return rc;
}

int al_user_cred_cancel(al_user_cred *uc, uint64_t wait_id)
{
    return al_flight_cancel(uc->cache, wait_id);
}

void al_user_cred_rejected(al_user_cred *uc, const al_user_access *a, uint64_t gen)
{
    char key[512];
    if (!a || a->none || cache_key(a->provider, a->user, key, sizeof key) != AL_OK)
        return;
    pthread_mutex_lock(&uc->lock);
    rej_entry *r = &uc->rej[uc->rej_next++ % REJECTED_MAX];
    snprintf(r->key, sizeof r->key, "%s", key);
    snprintf(r->fp, sizeof r->fp, "%s", a->fingerprint);
    pthread_mutex_unlock(&uc->lock);
    al_flight_invalidate(uc->cache, key, gen);
}

int al_user_cred_consent_start(al_user_cred *uc, const al_consent_binding *b,
                               char id[AL_CONSENT_ID_LEN + 1], uint32_t *ttl_left)
{
    int reused = 0;
    int rc = al_consent_start_shared(uc->consent, b, id, ttl_left, &reused);
    audit_ev(uc, reused ? "consent.link_reused" : "consent.started", b->provider, b->user,
             b->target,
             rc == AL_OK          ? "ok"
             : rc == AL_ERR_AGAIN ? "too_many_pending"
                                  : "error",
             NULL, NULL);
    return rc;
}

int al_user_cred_authorize(al_user_cred *uc, const al_table *t, const char *link_id,
                           const char *redirect_uri, al_user_page *page, al_user_page_fn done,
                           void *arg)
{
    return al_user_cred_authorize_to(uc, t, link_id, NULL, redirect_uri, page, done, arg);
}

/* The target named `name` in t, or NULL. */
static const al_target *target_named(const al_table *t, const char *name)
{
    for (size_t i = 0; t && name && i < t->target_count; i++)
        if (!strcmp(t->targets[i].name, name))
            return &t->targets[i];
    return NULL;
}

int al_user_cred_authorize_to(al_user_cred *uc, const al_table *t, const char *link_id,
                              const char *return_url, const char *redirect_uri,
                              al_user_page *page, al_user_page_fn done, void *arg)
{
    memset(page, 0, sizeof *page);
    al_consent_flow b;
    int rc = al_consent_link_binding(uc->consent, link_id, &b);
    if (rc == AL_OK && return_url && b.return_url) {
        /* app binding: the application names where its user comes back; only a URL of
         * the target's allow-list (the link stays usable for a good one) */
        const al_target *tg = target_named(t, b.target);
        if (!tg || !al_return_url_allowed(return_url, tg->auth.return_urls,
                                          tg->auth.return_url_count)) {
            page_set(page, 400, "return_url_not_allowed", "This link cannot be used",
                     "The return address given with this link is not one target '%s' allows "
                     "(auth.return_urls). Open the link without it, or ask the operator to add "
                     "the address.",
                     b.target);
            audit_ev(uc, "consent.refused", b.provider, b.user, b.target, page->reason, NULL,
                     NULL);
            al_consent_flow_clear(&b);
            return AL_OK;
        }
    }
    if (rc == AL_ERR_NOTFOUND || rc == AL_ERR_TIMEOUT) {
        page_set(page, rc == AL_ERR_TIMEOUT ? 410 : 404,
                 rc == AL_ERR_TIMEOUT ? "consent_link_expired" : "consent_link_unknown",
                 "This link cannot be used",
                 "This authorization link %s. Links work once, for %d seconds: ask the agent "
                 "to make its request again for a new one.",
                 rc == AL_ERR_TIMEOUT ? "has expired" : "is unknown or was used already",
                 AL_CONSENT_TTL_S);
        audit_ev(uc, "consent.refused", NULL, NULL, NULL, page->reason, NULL, NULL);
        return AL_OK;
    }
    job *j = rc == AL_OK ? job_new(uc, J_AUTHORIZE) : NULL;
    if (j) {
        job_take_binding(j, &b, done, arg);
        snprintf(j->link_id, sizeof j->link_id, "%s", link_id);
        rc = (j->redirect_uri = strdup(redirect_uri)) ? prov_load(uc, j->provider, &j->p)
                                                      : AL_ERR_NOMEM;
        if (rc == AL_OK && return_url && j->return_url &&
            !(j->chosen_return_url = strdup(return_url)))
            rc = AL_ERR_NOMEM;
        const al_target *tg = rc == AL_OK ? target_named(t, j->target) : NULL;
        if (rc == AL_OK && tg && tg->auth.custom_parameter_count) {
            j->extra = calloc(tg->auth.custom_parameter_count, sizeof *j->extra);
            rc = j->extra ? AL_OK : AL_ERR_NOMEM;
            for (size_t i = 0; rc == AL_OK && i < tg->auth.custom_parameter_count; i++) {
                j->extra[i].key = strdup(tg->auth.custom_parameters[i].key);
                j->extra[i].value = strdup(tg->auth.custom_parameters[i].value);
                j->extra_n = i + 1;
                if (!j->extra[i].key || !j->extra[i].value)
                    rc = AL_ERR_NOMEM;
            }
        }
    } else if (rc == AL_OK) {
        rc = AL_ERR_NOMEM;
    }
    al_consent_flow_clear(&b);
    if (rc != AL_OK) {
        page_set(page, rc == AL_ERR_NOMEM ? 503 : 502, "provider_unavailable",
                 "Consent could not start",
                 "the link's provider cannot be used right now (%s); ask the operator to check "
                 "it, then ask the agent for a new link.",
                 rc == AL_ERR_NOTFOUND ? "it is not in the identity store"
                 : rc == AL_ERR_INVAL  ? "it is not an OAuth client"
                                       : al_strerror(rc));
        audit_ev(uc, "consent.refused", j ? j->provider : NULL, j ? j->user : NULL,
                 j ? j->target : NULL, page->reason, page->message, NULL);
        job_free(j);
        return AL_OK;
    }
    /* answered here (done() was called) or later on the fetch thread: the caller sees
     * the answer through done either way */
    rc = job_start(j);
    (void)rc;
    return AL_ERR_PENDING;
}

int al_user_cred_callback(al_user_cred *uc, const char *query, size_t query_len,
                          const char *redirect_uri, al_user_page *page, al_user_page_fn done,
                          void *arg)
{
    memset(page, 0, sizeof *page);
    char state[AL_CONSENT_ID_LEN + 8], err[128], desc[512];
    char *code = NULL;
    size_t code_cap = query_len + 1;
    al_consent_flow f;
    memset(&f, 0, sizeof f);
    int rc = al_user_query_param(query, query_len, "state", state, sizeof state);
    if (rc == AL_OK)
        rc = al_consent_finish(uc->consent, state, &f);
    OPENSSL_cleanse(state, sizeof state);
    if (rc != AL_OK) {
        page_set(page, 400,
                 rc == AL_ERR_TIMEOUT ? "consent_state_expired" : "consent_state_invalid",
                 "This sign-in cannot be completed",
                 "The authorization response %s. Nothing was stored; ask the agent to make its "
                 "request again for a new link.",
                 rc == AL_ERR_TIMEOUT ? "came back too late"
                                      : "is unknown, was used already, or was not started here");
        audit_ev(uc, "consent.refused", NULL, NULL, NULL, page->reason, NULL, NULL);
        return AL_OK;
    }
    /* the provider's own error (RFC 6749 4.1.2.1): shown and audited, nothing stored */
    if (al_user_query_param(query, query_len, "error", err, sizeof err) != AL_ERR_NOTFOUND) {
        char es[80], ds[240];
        if (al_user_query_param(query, query_len, "error_description", desc, sizeof desc) != AL_OK)
            desc[0] = 0;
        al_token_sanitize(err, NULL, 0, es, sizeof es, 64);
        al_token_sanitize(desc, NULL, 0, ds, sizeof ds, 200);
        page_set(page, 400, "provider_error", "Access was not granted",
                 "The provider answered %s%s%s%s. Nothing was stored; ask the agent to make its "
                 "request again for a new link.",
                 es[0] ? es : "an error", ds[0] ? " (" : "", ds, ds[0] ? ")" : "");
        audit_ev(uc, "consent.refused", f.provider, f.user, f.target, "provider_error",
                 page->message, NULL);
        al_consent_flow_clear(&f);
        return AL_OK;
    }
    job *j = NULL;
    if (!(code = malloc(code_cap)) ||
        al_user_query_param(query, query_len, "code", code, code_cap) != AL_OK || !*code) {
        page_set(page, 400, "consent_code_missing", "Access was not granted",
                 "The provider's answer has no authorization code. Nothing was stored; ask the "
                 "agent to make its request again for a new link.");
        audit_ev(uc, "consent.refused", f.provider, f.user, f.target, page->reason, NULL, NULL);
        goto out;
    }
    rc = (j = job_new(uc, J_CODE)) ? prov_load(uc, f.provider, &j->p) : AL_ERR_NOMEM;
    if (rc == AL_OK) {
        job_take_binding(j, &f, done, arg);
        j->form = al_consent_code_form(code, redirect_uri, f.verifier);
        rc = j->form ? AL_OK : AL_ERR_NOMEM;
        if (j->form)
            j->form_cap = strlen(j->form);
    }
    if (rc != AL_OK) {
        page_set(page, 502, "provider_unavailable", "Access could not be granted",
                 "the provider cannot be used right now (%s). Nothing was stored.",
                 al_strerror(rc));
        audit_ev(uc, "consent.refused", j && j->provider ? j->provider : f.provider,
                 j && j->user ? j->user : f.user, j && j->target ? j->target : f.target,
                 page->reason, page->message, NULL);
        job_free(j);
        goto out;
    }
    job_start(j);
    rc = AL_ERR_PENDING;
out:
    wipe_free(code, code_cap);
    al_consent_flow_clear(&f);
    return rc == AL_ERR_PENDING ? AL_ERR_PENDING : AL_OK;
}

/* A session completion for the store thread: the ids are copies (wiped), the answer
 * goes to done. */
typedef struct complete_task {
    char sid[AL_CONSENT_ID_LEN + 1];
    char *user;
    al_user_complete_fn done;
    void *arg;
} complete_task;

static void complete_task_free(complete_task *ct)
{
    free(ct->user);
    OPENSSL_cleanse(ct, sizeof *ct);
    free(ct);
}

static void complete_run(al_user_cred *uc, void *arg)
{
    complete_task *ct = arg;
    al_consent_flow f;
    al_user_token t;
    char target[256] = "";
    int rc = al_consent_complete(uc->consent, ct->sid, ct->user, &f, &t);
    if (rc == AL_OK) {
        rc = store_tokens(uc, f.provider, f.user, f.target, &t);
        audit_ev(uc, rc == AL_OK ? "consent.completed" : "consent.refused", f.provider, f.user,
                 f.target, rc == AL_OK ? "ok" : "store_failed", NULL,
                 rc == AL_OK ? t.fingerprint : NULL);
        snprintf(target, sizeof target, "%s", f.target);
    } else {
        /* who tried is known (authenticated); whose flow it was is not said to them */
        audit_ev(uc, "consent.refused", NULL, ct->user, NULL,
                 rc == AL_ERR_PERM      ? "session_user_mismatch"
                 : rc == AL_ERR_TIMEOUT ? "session_expired"
                                        : "session_unknown",
                 NULL, NULL);
    }
    al_consent_flow_clear(&f);
    al_user_token_clear(&t);
    ct->done(ct->arg, rc, target);
    complete_task_free(ct);
}

static void complete_drop(al_user_cred *uc, void *arg)
{
    complete_task *ct = arg;
    (void)uc;
    ct->done(ct->arg, AL_ERR_IO, "");
    complete_task_free(ct);
}

int al_user_cred_complete(al_user_cred *uc, const char *session_id, const char *user,
                          al_user_complete_fn done, void *arg)
{
    if (strlen(session_id) > AL_CONSENT_ID_LEN)
        return AL_ERR_INVAL;
    complete_task *ct = calloc(1, sizeof *ct);
    if (!ct || !(ct->user = strdup(user))) {
        free(ct);
        return AL_ERR_NOMEM;
    }
    snprintf(ct->sid, sizeof ct->sid, "%s", session_id);
    ct->done = done;
    ct->arg = arg;
    if (store_post(uc, complete_run, complete_drop, ct) != AL_OK) {
        complete_task_free(ct);
        return AL_ERR_NOMEM;
    }
    return AL_ERR_PENDING;
}

/* ---- pure ----------------------------------------------------------------------------- */

static int has_word(const char *list, const char *w)
{
    size_t n = strlen(w);
    for (const char *p = list; p && *p;) {
        while (*p == ' ')
            p++;
        size_t l = strcspn(p, " ");
        if (l == n && !strncmp(p, w, n))
            return 1;
        p += l;
    }
    return 0;
}

int al_user_scope_covers(const char *granted, char *const *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(want[i], "openid") || !strcmp(want[i], "offline_access"))
            continue;
        if (!has_word(granted, want[i]))
            return 0;
    }
    return 1;
}

static int hexv(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int query_param(const char *q, size_t qlen, const char *name, char *out, size_t outlen);

int al_user_query_param(const char *q, size_t qlen, const char *name, char *out, size_t outlen)
{
    int rc = query_param(q, qlen, name, out, outlen);
    if (rc != AL_OK && outlen)
        OPENSSL_cleanse(out, outlen); /* no half value (it may be part of a code) */
    if (rc != AL_OK && outlen)
        out[0] = 0;
    return rc;
}

static int query_param(const char *q, size_t qlen, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    int found = 0;
    if (!outlen)
        return AL_ERR_INVAL;
    out[0] = 0;
    for (size_t i = 0; i < qlen;) {
        size_t e = i;
        while (e < qlen && q[e] != '&')
            e++;
        if (e - i > nl && !memcmp(q + i, name, nl) && q[i + nl] == '=') {
            if (found++)
                return AL_ERR_INVAL; /* twice: which one would the provider mean? */
            size_t o = 0;
            for (size_t k = i + nl + 1; k < e; k++) {
                int c = (unsigned char)q[k];
                if (c == '+')
                    c = ' ';
                else if (c == '%') {
                    int h = k + 2 < e ? hexv(q[k + 1]) : -1, l = k + 2 < e ? hexv(q[k + 2]) : -1;
                    if (h < 0 || l < 0)
                        return AL_ERR_INVAL;
                    c = h * 16 + l;
                    k += 2;
                }
                if (c == 0 || o + 1 >= outlen)
                    return AL_ERR_INVAL;
                out[o++] = (char)c;
            }
            out[o] = 0;
        } else if (e - i == nl && !memcmp(q + i, name, nl)) {
            if (found++)
                return AL_ERR_INVAL;
        }
        i = e + 1;
    }
    return found ? AL_OK : AL_ERR_NOTFOUND;
}
