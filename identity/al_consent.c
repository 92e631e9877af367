/* al_consent: pending 3LO consents (see al_consent.h).
 *
 * Owns: a fixed array of entries, each a link (not yet opened: `id` set), an
 * authorization request waiting for its callback (`state` set), or (app binding mode)
 * the tokens of a finished flow waiting for the application (`session id` set), with
 * its binding strings, PKCE verifier and nonce, or held tokens.
 *
 * Invariants: an entry is consumed exactly once (open clears the id, finish frees the
 * entry); a lookup scans every live entry with CRYPTO_memcmp so timing does not tell
 * how much of a guessed id matched; expired entries are freed when met (and then
 * answer AL_ERR_TIMEOUT once, so the user learns the link is old, not forged). */
#include "al_consent.h"
#include "al_token.h"
#include "common/al_err.h"
#include "common/al_return_url.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum entry_kind { K_LINK = 0, K_STATE = 1, K_SESSION = 2 };

typedef struct entry {
    int used;
    int opened;                      /* enum entry_kind: what `key` is */
    int64_t expires_s;               /* unix seconds */
    char key[AL_CONSENT_ID_LEN + 1]; /* the link id, then the state */
    char *user, *provider, *scope, *target, *return_url;
    char verifier[AL_CONSENT_ID_LEN + 1];
    char nonce[AL_CONSENT_ID_LEN + 1];
    al_user_token tok; /* K_SESSION: the held tokens (wiped when cleared) */
} entry;

struct al_consent {
    pthread_mutex_t lock;
    entry *e;
    size_t cap;
    int64_t (*now_s)(void *arg);
    void *now_arg;
};

static int64_t wall_now(void *arg)
{
    (void)arg;
    return (int64_t)time(NULL);
}

static void b64url(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = tab[v >> 6 & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = tab[v >> 6 & 63];
    }
    out[o] = 0;
}

/* 32 random bytes as 43 base64url chars: an id, a state, a verifier (RFC 7636 4.1
 * recommends exactly this), a nonce. */
static int random_id(char out[AL_CONSENT_ID_LEN + 1])
{
    unsigned char r[32];
    if (RAND_bytes(r, sizeof r) != 1)
        return AL_ERR_CRYPTO;
    b64url(r, sizeof r, out);
    OPENSSL_cleanse(r, sizeof r);
    return AL_OK;
}

int al_consent_pkce_s256(const char *verifier, char out[AL_CONSENT_ID_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(verifier, strlen(verifier), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return AL_ERR_CRYPTO;
    b64url(md, mdlen, out);
    return AL_OK;
}

static void entry_clear(entry *e)
{
    free(e->user);
    free(e->provider);
    free(e->scope);
    free(e->target);
    free(e->return_url);
    al_user_token_clear(&e->tok);
    OPENSSL_cleanse(e, sizeof *e);
}

int al_consent_new(size_t max_pending, al_consent **out)
{
    al_consent *c = calloc(1, sizeof *c);
    if (!c)
        return AL_ERR_NOMEM;
    c->cap = max_pending ? max_pending : 1024;
    c->e = calloc(c->cap, sizeof *c->e);
    if (!c->e) {
        free(c);
        return AL_ERR_NOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->now_s = wall_now;
    *out = c;
    return AL_OK;
}

void al_consent_free(al_consent *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->cap; i++)
        if (c->e[i].used)
            entry_clear(&c->e[i]);
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void al_consent_set_clock(al_consent *c, int64_t (*now_s)(void *arg), void *arg)
{
    c->now_s = now_s ? now_s : wall_now;
    c->now_arg = arg;
}

/* A binding field: non-empty, at most 1024 bytes, no control characters (it ends up
 * in audit lines and in the store's key). */
static int field_ok_max(const char *s, int may_be_empty, size_t max)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    if ((!n && !may_be_empty) || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int field_ok(const char *s, int may_be_empty)
{
    return field_ok_max(s, may_be_empty, 1024);
}

/* A free slot (expired entries are freed on the way), or NULL when the table is full.
 * Called with the lock held. */
static entry *free_slot(al_consent *c, int64_t now)
{
    entry *e = NULL;
    for (size_t i = 0; i < c->cap; i++) {
        if (c->e[i].used && c->e[i].expires_s <= now)
            entry_clear(&c->e[i]); /* expired: its slot is free */
        if (!c->e[i].used && !e)
            e = &c->e[i];
    }
    return e;
}

int al_consent_start(al_consent *c, const al_consent_binding *b, char id[AL_CONSENT_ID_LEN + 1])
{
    if (!field_ok(b->user, 0) || !field_ok(b->provider, 0) || !field_ok(b->scope, 1) ||
        !field_ok(b->target, 0) ||
        (b->return_url && !field_ok_max(b->return_url, 0, AL_RETURN_URL_MAX)))
        return AL_ERR_INVAL;
    int rc = AL_ERR_AGAIN;
    pthread_mutex_lock(&c->lock);
    int64_t now = c->now_s(c->now_arg);
    entry *e = free_slot(c, now);
    if (!e)
        goto out;
    e->user = strdup(b->user);
    e->provider = strdup(b->provider);
    e->scope = strdup(b->scope);
    e->target = strdup(b->target);
    e->return_url = b->return_url ? strdup(b->return_url) : NULL;
    rc = AL_ERR_NOMEM;
    if (!e->user || !e->provider || !e->scope || !e->target || (b->return_url && !e->return_url))
        goto fail;
    if ((rc = random_id(e->key)) != AL_OK)
        goto fail;
    e->used = 1;
    e->expires_s = now + AL_CONSENT_TTL_S;
    memcpy(id, e->key, sizeof e->key);
    rc = AL_OK;
    goto out;
fail:
    entry_clear(e);
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

int al_consent_start_shared(al_consent *c, const al_consent_binding *b,
                            char id[AL_CONSENT_ID_LEN + 1], uint32_t *ttl_left, int *reused)
{
    int found = 0;
    pthread_mutex_lock(&c->lock);
    int64_t now = c->now_s(c->now_arg);
    for (size_t i = 0; i < c->cap && !found; i++) {
        entry *e = &c->e[i];
        if (e->used && !e->opened && e->expires_s - now >= AL_CONSENT_REUSE_MIN_S &&
            same(e->user, b->user) && same(e->provider, b->provider) &&
            same(e->scope, b->scope) && same(e->target, b->target) &&
            same(e->return_url, b->return_url)) {
            memcpy(id, e->key, sizeof e->key);
            *ttl_left = (uint32_t)(e->expires_s - now);
            found = 1;
        }
    }
    pthread_mutex_unlock(&c->lock);
    *reused = found;
    if (found)
        return AL_OK;
    *ttl_left = AL_CONSENT_TTL_S;
    return al_consent_start(c, b, id);
}

/* The live entry of kind `opened` whose key is `key` (constant-time compare over every
 * entry), or NULL. *expired is set when it matched an expired one (then freed). */
static entry *find(al_consent *c, const char *key, int opened, int64_t now, int *expired)
{
    entry *hit = NULL;
    *expired = 0;
    if (!key || strlen(key) != AL_CONSENT_ID_LEN)
        return NULL;
    for (size_t i = 0; i < c->cap; i++) {
        entry *e = &c->e[i];
        if (!e->used || e->opened != opened)
            continue;
        if (CRYPTO_memcmp(e->key, key, AL_CONSENT_ID_LEN) == 0)
            hit = e;
    }
    if (hit && hit->expires_s <= now) {
        entry_clear(hit);
        *expired = 1;
        hit = NULL;
    }
    return hit;
}

/* scope (space-separated) holds the scope word w */
static int has_scope(const char *scope, const char *w)
{
    size_t n = strlen(w);
    if (!n)
        return 0;
    for (const char *p = scope; (p = strstr(p, w)) != NULL; p += n)
        if ((p == scope || p[-1] == ' ') && (p[n] == 0 || p[n] == ' '))
            return 1;
    return 0;
}

/* the protocol's own parameters are airlock's: neither a table nor a quirk overrides them */
static int own_param(const char *k, size_t n)
{
    static const char *const own[] = {"response_type",  "client_id",
                                      "redirect_uri",   "scope",
                                      "state",          "code_challenge",
                                      "code_challenge_method", "nonce",
                                      "request_uri",    "request"};
    for (size_t j = 0; j < sizeof own / sizeof own[0]; j++)
        if (strlen(own[j]) == n && memcmp(k, own[j], n) == 0)
            return 1;
    return 0;
}

static int extra_has(const al_consent_authz *a, const char *k, size_t n)
{
    for (size_t i = 0; i < a->extra_count; i++)
        if (strlen(a->extra[i].key) == n && memcmp(a->extra[i].key, k, n) == 0)
            return 1;
    return 0;
}

/* The scope of the request: the binding's, plus the quirk's add_scope words it lacks.
 * malloc'd. */
static char *request_scope(const char *scope, const al_consent_quirks *q)
{
    size_t n = strlen(scope), cap = n + (q && q->add_scope ? strlen(q->add_scope) : 0) + 2;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    memcpy(s, scope, n + 1);
    if (!q || !q->add_scope)
        return s;
    for (const char *p = q->add_scope; *p;) {
        size_t w = strcspn(p, " ");
        char word[128];
        if (w && w < sizeof word) {
            memcpy(word, p, w);
            word[w] = 0;
            if (!has_scope(s, word)) {
                if (n)
                    s[n++] = ' ';
                memcpy(s + n, word, w + 1);
                n += w;
            }
        }
        p += w;
        p += *p == ' ';
    }
    return s;
}

/* The vendor quirk applies to this request (its when_scope is requested, or it has none). */
static const al_consent_quirks *quirks_for(const al_consent_authz *a, const char *scope)
{
    const al_consent_quirks *q = a->quirks;
    if (!q || (q->when_scope && !has_scope(scope, q->when_scope)))
        return NULL;
    return q;
}

static size_t param_len(const char *v)
{
    return v ? strlen(v) * 3 + 64 : 64;
}

int al_consent_open(al_consent *c, const char *id, const al_consent_authz *a, char **params)
{
    *params = NULL;
    if (!a->client_id || !a->redirect_uri)
        return AL_ERR_INVAL;
    pthread_mutex_lock(&c->lock);
    int64_t now = c->now_s(c->now_arg);
    int expired = 0, rc;
    char *form = NULL, *scope = NULL;
    entry *e = find(c, id, K_LINK, now, &expired);
    if (!e) {
        rc = expired ? AL_ERR_TIMEOUT : AL_ERR_NOTFOUND;
        goto out;
    }
    char challenge[AL_CONSENT_ID_LEN + 1];
    if ((rc = random_id(e->key)) != AL_OK || (rc = random_id(e->verifier)) != AL_OK ||
        (rc = al_consent_pkce_s256(e->verifier, challenge)) != AL_OK)
        goto fail;
    int oid = has_scope(e->scope, "openid");
    if (oid && (rc = random_id(e->nonce)) != AL_OK)
        goto fail;
    const al_consent_quirks *q = quirks_for(a, e->scope);
    rc = AL_ERR_NOMEM;
    if (!(scope = request_scope(e->scope, q)))
        goto fail;
    size_t cap = 512 + param_len(a->client_id) + param_len(a->redirect_uri) + param_len(scope);
    for (size_t i = 0; i < a->extra_count; i++)
        cap += param_len(a->extra[i].key) + param_len(a->extra[i].value);
    if (q && q->params)
        cap += strlen(q->params) + 2;
    if (!(form = malloc(cap)))
        goto fail;
    size_t u = 0;
    al_token_form_append(form, &u, cap, "response_type", "code", 4);
    al_token_form_append(form, &u, cap, "client_id", a->client_id, strlen(a->client_id));
    al_token_form_append(form, &u, cap, "redirect_uri", a->redirect_uri, strlen(a->redirect_uri));
    if (*scope)
        al_token_form_append(form, &u, cap, "scope", scope, strlen(scope));
    al_token_form_append(form, &u, cap, "state", e->key, AL_CONSENT_ID_LEN);
    al_token_form_append(form, &u, cap, "code_challenge", challenge, AL_CONSENT_ID_LEN);
    al_token_form_append(form, &u, cap, "code_challenge_method", "S256", 4);
    if (oid)
        al_token_form_append(form, &u, cap, "nonce", e->nonce, AL_CONSENT_ID_LEN);
    for (size_t i = 0; i < a->extra_count; i++) {
        const char *k = a->extra[i].key;
        if (!own_param(k, strlen(k)))
            al_token_form_append(form, &u, cap, k, a->extra[i].value, strlen(a->extra[i].value));
    }
    /* the vendor's parameters (already form-encoded data), unless the table set them */
    for (const char *p = q ? q->params : NULL; p && *p;) {
        size_t n = strcspn(p, "&"), k = strcspn(p, "=&");
        if (k && k < n && !own_param(p, k) && !extra_has(a, p, k) && u + n + 1 < cap) {
            form[u++] = '&';
            memcpy(form + u, p, n);
            u += n;
        }
        p += n;
        p += *p == '&';
    }
    form[u < cap ? u : cap - 1] = 0;
    if (a->return_url && e->return_url && strcmp(a->return_url, e->return_url) != 0) {
        char *ru = field_ok_max(a->return_url, 0, AL_RETURN_URL_MAX) ? strdup(a->return_url) : NULL;
        if (!ru) {
            rc = AL_ERR_INVAL;
            goto fail;
        }
        free(e->return_url);
        e->return_url = ru;
    }
    e->opened = 1;
    e->expires_s = now + AL_CONSENT_TTL_S;
    *params = form;
    form = NULL;
    rc = AL_OK;
    goto out;
fail:
    entry_clear(e); /* a link that failed half-way is not reusable */
out:
    pthread_mutex_unlock(&c->lock);
    free(scope);
    if (form) { /* terminated: only the return-URL check fails after the form is built */
        OPENSSL_cleanse(form, strlen(form));
        free(form);
    }
    return rc;
}

/* The binding strings move from e to f (the entry is consumed by the caller). */
static void take_binding(entry *e, al_consent_flow *f)
{
    f->user = e->user;
    f->provider = e->provider;
    f->scope = e->scope;
    f->target = e->target;
    f->return_url = e->return_url;
    e->user = e->provider = e->scope = e->target = e->return_url = NULL;
}

int al_consent_link_binding(al_consent *c, const char *id, al_consent_flow *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_lock(&c->lock);
    int expired = 0, rc = AL_OK;
    entry *e = find(c, id, 0, c->now_s(c->now_arg), &expired);
    if (!e) {
        rc = expired ? AL_ERR_TIMEOUT : AL_ERR_NOTFOUND;
    } else {
        f->user = strdup(e->user);
        f->provider = strdup(e->provider);
        f->scope = strdup(e->scope);
        f->target = strdup(e->target);
        f->return_url = e->return_url ? strdup(e->return_url) : NULL;
        if (!f->user || !f->provider || !f->scope || !f->target ||
            (e->return_url && !f->return_url))
            rc = AL_ERR_NOMEM;
    }
    pthread_mutex_unlock(&c->lock);
    if (rc != AL_OK)
        al_consent_flow_clear(f);
    return rc;
}

int al_consent_finish(al_consent *c, const char *state, al_consent_flow *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_lock(&c->lock);
    int expired = 0, rc = AL_OK;
    entry *e = find(c, state, K_STATE, c->now_s(c->now_arg), &expired);
    if (!e) {
        rc = expired ? AL_ERR_TIMEOUT : AL_ERR_NOTFOUND;
    } else {
        memcpy(f->verifier, e->verifier, sizeof f->verifier);
        memcpy(f->nonce, e->nonce, sizeof f->nonce);
        take_binding(e, f);
        entry_clear(e);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void al_consent_flow_clear(al_consent_flow *f)
{
    free(f->user);
    free(f->provider);
    free(f->scope);
    free(f->target);
    free(f->return_url);
    OPENSSL_cleanse(f, sizeof *f);
}

int al_consent_hold(al_consent *c, al_consent_flow *f, al_user_token *t,
                    char session_id[AL_CONSENT_ID_LEN + 1])
{
    int rc = AL_ERR_INVAL;
    if (!f->user || !f->provider || !f->scope || !f->target || !t->access_token)
        goto out_unlocked;
    rc = AL_ERR_AGAIN;
    pthread_mutex_lock(&c->lock);
    int64_t now = c->now_s(c->now_arg);
    entry *e = free_slot(c, now);
    if (!e)
        goto out;
    if ((rc = random_id(e->key)) != AL_OK) {
        OPENSSL_cleanse(e->key, sizeof e->key);
        goto out;
    }
    /* the strings and the tokens move: nothing is copied, nothing left behind in f, t */
    e->user = f->user;
    e->provider = f->provider;
    e->scope = f->scope;
    e->target = f->target;
    e->return_url = f->return_url;
    f->user = f->provider = f->scope = f->target = f->return_url = NULL;
    e->tok = *t;
    memset(t, 0, sizeof *t);
    e->used = 1;
    e->opened = K_SESSION;
    e->expires_s = now + AL_CONSENT_SESSION_TTL_S;
    memcpy(session_id, e->key, sizeof e->key);
out:
    pthread_mutex_unlock(&c->lock);
out_unlocked:
    al_consent_flow_clear(f);
    al_user_token_clear(t);
    return rc;
}

int al_consent_complete(al_consent *c, const char *session_id, const char *user,
                        al_consent_flow *f, al_user_token *t)
{
    memset(f, 0, sizeof *f);
    memset(t, 0, sizeof *t);
    pthread_mutex_lock(&c->lock);
    int expired = 0, rc = AL_OK;
    entry *e = find(c, session_id, K_SESSION, c->now_s(c->now_arg), &expired);
    if (!e) {
        rc = expired ? AL_ERR_TIMEOUT : AL_ERR_NOTFOUND;
    } else if (!user || strcmp(user, e->user) != 0) {
        /* another user (a forwarded link, a stolen session id): the tokens belong to
         * whoever consented at the provider, never to this caller; wiped now */
        rc = AL_ERR_PERM;
        entry_clear(e);
    } else {
        take_binding(e, f);
        *t = e->tok;
        memset(&e->tok, 0, sizeof e->tok);
        entry_clear(e);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

size_t al_consent_pending(al_consent *c)
{
    size_t n = 0;
    pthread_mutex_lock(&c->lock);
    int64_t now = c->now_s(c->now_arg);
    for (size_t i = 0; i < c->cap; i++)
        n += c->e[i].used && c->e[i].expires_s > now;
    pthread_mutex_unlock(&c->lock);
    return n;
}

char *al_consent_url(const char *endpoint, const char *params)
{
    size_t a = strlen(endpoint), b = strlen(params);
    char *u = malloc(a + b + 2);
    if (!u)
        return NULL;
    memcpy(u, endpoint, a);
    u[a] = strchr(endpoint, '?') ? '&' : '?';
    memcpy(u + a + 1, params, b + 1);
    return u;
}

static char *form2(const char *n1, const char *v1, const char *n2, const char *v2, const char *n3,
                   const char *v3, const char *n4, const char *v4)
{
    size_t cap = 64 + param_len(v1) + param_len(v2) + param_len(v3) + param_len(v4);
    char *f = malloc(cap);
    if (!f)
        return NULL;
    size_t u = 0;
    const char *n[] = {n1, n2, n3, n4}, *v[] = {v1, v2, v3, v4};
    for (int i = 0; i < 4; i++)
        if (n[i] && v[i] && *v[i])
            al_token_form_append(f, &u, cap, n[i], v[i], strlen(v[i]));
    f[u < cap ? u : cap - 1] = 0;
    return f;
}

char *al_consent_code_form(const char *code, const char *redirect_uri, const char *verifier)
{
    if (!code || !*code || !redirect_uri || !verifier || !*verifier)
        return NULL;
    return form2("grant_type", "authorization_code", "code", code, "redirect_uri", redirect_uri,
                 "code_verifier", verifier);
}

char *al_consent_refresh_form(const char *refresh_token, const char *scope)
{
    if (!refresh_token || !*refresh_token)
        return NULL;
    return form2("grant_type", "refresh_token", "refresh_token", refresh_token, "scope", scope,
                 NULL, NULL);
}
