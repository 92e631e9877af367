/* al_oauth2_3lo: 3LO credentials and consent endpoints for one worker (see
 * al_oauth2_3lo.h).
 *
 * Owns: the pending acquires and page requests of this worker (pend), the mailbox the
 * fetch thread answers into, and the grants' holds (a user access reference + its
 * generation).
 *
 * Invariants: on_done / done run on the loop, never inside acquire or the local hook,
 * at most once, never after a cancel; a pend is freed once — by the loop after it
 * answered, by cancel (credential waits: al_flight_cancel tells whether the answer is
 * already on the mailbox), or, for a cancelled page request, when its job answers. The
 * mailbox is reference-counted: this object and every page job in flight hold it, so
 * an answer after al_oauth2_3lo_free is dropped, not delivered into freed memory. */
#include "al_oauth2_3lo.h"
#include "al_authz.h"
#include "common/al_err.h"
#include "common/al_http.h"
#include "common/al_log.h"
#include "common/al_return_url.h"

#include <ev.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pend_kind { P_CRED, P_PAGE };

typedef struct mailbox mailbox;

typedef struct pend {
    struct pend *next, *prev; /* s->pending (loop thread; live requests) */
    struct pend *ready_next;  /* mb->ready (under mb->lock) */
    mailbox *mb;
    al_oauth2_3lo *s;
    enum pend_kind kind;
    int cancelled; /* under mb->lock: nobody waits any more (page requests) */
    /* P_CRED */
    al_credsrc_done_fn done;
    void *arg;
    al_cred_query q;
    uint64_t wait_id;
    int rc;
    al_user_access *acc; /* retained when rc == AL_OK */
    uint64_t gen;
    char msg[256];
    /* P_PAGE */
    al_local_done_fn ldone;
    void *req;
    const char *audit_path;
    al_user_page page;
    /* P_PAGE of sessions/complete: the store thread's answer */
    int complete;
    int complete_rc;
    char complete_target[256];
} pend;

struct mailbox {
    atomic_int refs;
    pthread_mutex_t lock;
    pend *ready;
    int dead; /* the worker's object is gone: answers are dropped */
    struct ev_loop *loop;
    ev_async *wake;
};

typedef struct hold {
    al_user_access *acc;
    uint64_t gen;
} hold;

struct al_oauth2_3lo {
    struct ev_loop *loop;
    ev_async wake;
    al_user_cred *uc;
    mailbox *mb;
    pend *pending;
    char detail[512];       /* the last failure's message (loop thread) */
    char consent_url[1200]; /* the last consent link (loop thread) */
    char html[8192];        /* the last page (loop thread) */
    char *location;         /* the last redirect (loop thread) */
    char challenge[384];    /* the last 401's WWW-Authenticate (loop thread) */
    al_authz_state *authz;  /* the server's (sessions/complete), NULL in tests */
};

/* ---- mailbox -------------------------------------------------------------------- */

static void mb_unref(mailbox *mb)
{
    if (atomic_fetch_sub(&mb->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&mb->lock);
    free(mb);
}

static void pend_free(pend *p)
{
    if (!p)
        return;
    if (p->acc)
        al_user_access_release(p->acc);
    al_user_page_clear(&p->page);
    free(p);
}

/* Any thread: an answer for p. Dropped when the worker is gone or nobody waits. */
static void mb_post(pend *p)
{
    mailbox *mb = p->mb;
    pthread_mutex_lock(&mb->lock);
    if (mb->dead || p->cancelled) {
        pthread_mutex_unlock(&mb->lock);
        pend_free(p);
        mb_unref(mb);
        return;
    }
    p->ready_next = mb->ready;
    mb->ready = p;
    ev_async_send(mb->loop, mb->wake);
    pthread_mutex_unlock(&mb->lock);
}

static void link_pending(al_oauth2_3lo *s, pend *p)
{
    p->next = s->pending;
    if (s->pending)
        s->pending->prev = p;
    s->pending = p;
}

static void unlink_pending(al_oauth2_3lo *s, pend *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (s->pending == p)
        s->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

static pend *pend_new(al_oauth2_3lo *s, enum pend_kind kind)
{
    pend *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->s = s;
    p->mb = s->mb;
    p->kind = kind;
    atomic_fetch_add(&s->mb->refs, 1);
    return p;
}

/* ---- the credential ------------------------------------------------------------- */

static void fill_grant(al_cred_grant *g, al_user_access *a, uint64_t gen, hold *h)
{
    memset(g, 0, sizeof *g);
    h->acc = a;
    h->gen = gen;
    g->sv.provider = a->provider;
    g->sv.kind = "oauth2";
    g->sv.value = (const unsigned char *)a->access_token;
    g->sv.len = a->len;
    g->sv.fingerprint = a->fingerprint;
    g->hold = h;
}

/* No usable token for q's user: a consent link in g (AL_ERR_PERM). */
static int need_consent(al_oauth2_3lo *s, const al_cred_query *q, const char *provider,
                        const char *why, al_cred_grant *g)
{
    const al_target *t = q->t;
    char scope[1024] = "", id[AL_CONSENT_ID_LEN + 1], base[512];
    size_t u = 0;
    for (size_t i = 0; i < t->auth.scope_count && u < sizeof scope; i++) {
        int n = snprintf(scope + u, sizeof scope - u, "%s%s", i ? " " : "", t->auth.scopes[i]);
        if (n > 0)
            u += (size_t)n;
    }
    memset(g, 0, sizeof *g);
    /* app binding: the callback sends the browser back to the application (the first
     * allow-listed URL unless the link is opened with another allowed one) */
    al_consent_binding b = {.user = q->user,
                            .provider = provider,
                            .scope = scope,
                            .target = t->name,
                            .return_url = t->auth.binding == AL_BINDING_APP &&
                                                  t->auth.return_url_count
                                              ? t->auth.return_urls[0]
                                              : NULL};
    uint32_t ttl = AL_CONSENT_TTL_S;
    int rc = al_user_cred_consent_start(s->uc, &b, id, &ttl);
    if (rc != AL_OK) {
        snprintf(s->detail, sizeof s->detail,
                 rc == AL_ERR_AGAIN ? "too many consents are pending; retry in a few minutes"
                                    : "a consent link could not be made (%s)",
                 al_strerror(rc));
        g->detail = s->detail;
        return rc == AL_ERR_AGAIN ? AL_ERR_IO : rc;
    }
    al_table_public_base_url(q->table, base, sizeof base);
    snprintf(s->consent_url, sizeof s->consent_url, "%s/oauth2/authorize/%s", base, id);
    OPENSSL_cleanse(id, sizeof id);
    snprintf(s->detail, sizeof s->detail, "%s", why);
    g->consent_url = s->consent_url;
    g->consent_expires_in = ttl;
    g->detail = s->detail;
    return AL_ERR_PERM;
}

/* A token from the cache (or its error) becomes the request's grant or refusal. */
static int access_to_grant(al_oauth2_3lo *s, const al_cred_query *q, int rc, al_user_access *a,
                           uint64_t gen, const char *msg, al_cred_grant *g)
{
    const al_target *t = q->t;
    memset(g, 0, sizeof *g);
    if (rc != AL_OK) {
        snprintf(s->detail, sizeof s->detail, "%s", msg && *msg ? msg : al_strerror(rc));
        g->detail = s->detail;
        if (a)
            al_user_access_release(a);
        return rc == AL_ERR_PERM ? AL_ERR_PROTO : rc;
    }
    if (a->none) {
        rc = need_consent(s, q, a->provider, a->why ? a->why : "no token", g);
        al_user_access_release(a);
        return rc;
    }
    if (t->auth.force_authentication &&
        !al_user_cred_fresh(s->uc, t->name, q->user, a->fingerprint)) {
        rc = need_consent(s, q, a->provider,
                          "this target asks for a new consent (force_authentication) and the "
                          "user's token did not come from one made for it",
                          g);
        al_user_access_release(a);
        return rc;
    }
    if (!al_user_scope_covers(a->scope, t->auth.scopes, t->auth.scope_count)) {
        rc = need_consent(s, q, a->provider,
                          "the user's token was granted for fewer scopes than this target asks", g);
        al_user_access_release(a);
        return rc;
    }
    hold *h = malloc(sizeof *h);
    if (!h) {
        al_user_access_release(a);
        return AL_ERR_NOMEM;
    }
    fill_grant(g, a, gen, h);
    return AL_OK;
}

/* The cache's answer, on whichever thread completed the load. */
static void on_access(void *arg, int err, void *value, uint64_t gen, const char *msg)
{
    pend *p = arg;
    p->rc = err;
    p->gen = gen;
    if (err == AL_OK && value) {
        p->acc = value;
        al_user_access_retain(p->acc);
    } else if (err == AL_OK) {
        p->rc = AL_ERR_PROTO;
    }
    snprintf(p->msg, sizeof p->msg, "%s", msg ? msg : "");
    mb_post(p);
}

static void deliver_cred(al_oauth2_3lo *s, pend *p)
{
    al_cred_grant g;
    al_user_access *a = p->acc;
    p->acc = NULL;
    int rc = access_to_grant(s, &p->q, p->rc, a, p->gen, p->msg, &g);
    p->done(p->arg, rc, &g);
}

static void render(al_oauth2_3lo *s, pend *p, al_local_resp *resp);
static void complete_answer(al_oauth2_3lo *s, int rc, const char *target, al_local_resp *resp);

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    al_oauth2_3lo *s = w->data;
    (void)loop;
    (void)revents;
    pthread_mutex_lock(&s->mb->lock);
    pend *list = s->mb->ready;
    s->mb->ready = NULL;
    pthread_mutex_unlock(&s->mb->lock);
    /* oldest first */
    pend *rev = NULL;
    while (list) {
        pend *n = list->ready_next;
        list->ready_next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        pend *p = rev;
        rev = p->ready_next;
        unlink_pending(s, p);
        if (p->kind == P_CRED) {
            deliver_cred(s, p);
        } else {
            al_local_resp resp;
            if (p->complete)
                complete_answer(s, p->complete_rc, p->complete_target, &resp);
            else
                render(s, p, &resp);
            p->ldone(p->req, &resp);
        }
        pend_free(p);
        mb_unref(s->mb);
    }
}

static int src_acquire(void *self, const al_cred_query *q, al_cred_grant *g,
                       al_credsrc_done_fn done, void *arg, void **pending)
{
    al_oauth2_3lo *s = self;
    const al_target *t = q->t;
    memset(g, 0, sizeof *g);
    const char *provider = t->auth.provider_count ? t->auth.providers[0] : NULL;
    if (!provider)
        return AL_ERR_NOTFOUND;
    if (!s->uc) {
        g->detail = "the user token vault is not open";
        return AL_ERR_DB;
    }
    if (!q->user || !q->table) {
        /* the table check makes this rare: a request without a principal (a policy-less
         * table cannot name one) has no user to act for */
        snprintf(s->detail, sizeof s->detail,
                 "the request has no end user (no inbound token subject and no trusted user "
                 "header), so no user's token can be chosen");
        g->detail = s->detail;
        return AL_ERR_INVAL;
    }
    pend *p = pend_new(s, P_CRED);
    if (!p)
        return AL_ERR_NOMEM;
    p->done = done;
    p->arg = arg;
    p->q = *q;
    al_flight_result res;
    int rc = al_user_cred_get(s->uc, provider, q->user, on_access, p, &res);
    if (rc == AL_ERR_AGAIN) {
        p->wait_id = res.wait_id;
        link_pending(s, p);
        *pending = p;
        return AL_ERR_PENDING;
    }
    pend_free(p);
    mb_unref(s->mb);
    return access_to_grant(s, q, rc, rc == AL_OK ? res.value : NULL, res.gen, res.msg, g);
}

/* p's answer is on the mailbox already (cancel waited for the callback): take it off. */
static void take_back(al_oauth2_3lo *s, pend *p)
{
    pthread_mutex_lock(&s->mb->lock);
    for (pend **pp = &s->mb->ready; *pp; pp = &(*pp)->ready_next)
        if (*pp == p) {
            *pp = p->ready_next;
            break;
        }
    pthread_mutex_unlock(&s->mb->lock);
}

static void cancel_pend(al_oauth2_3lo *s, pend *p)
{
    unlink_pending(s, p);
    if (p->kind == P_CRED) {
        if (al_user_cred_cancel(s->uc, p->wait_id) == 0)
            take_back(s, p);
        pend_free(p);
        mb_unref(s->mb);
        return;
    }
    /* a page job cannot be stopped (the code exchange finishes and stores the tokens):
     * its answer is dropped when it comes */
    pthread_mutex_lock(&s->mb->lock);
    int answered = 0;
    for (pend **pp = &s->mb->ready; *pp; pp = &(*pp)->ready_next)
        if (*pp == p) {
            *pp = p->ready_next;
            answered = 1;
            break;
        }
    p->cancelled = 1;
    pthread_mutex_unlock(&s->mb->lock);
    if (answered) {
        pend_free(p);
        mb_unref(s->mb);
    }
}

static void src_cancel(void *self, void *pending)
{
    cancel_pend(self, pending);
}

static void src_release(void *self, al_cred_grant *g)
{
    (void)self;
    hold *h = g->hold;
    if (h) {
        al_user_access_release(h->acc);
        free(h);
    }
    memset(g, 0, sizeof *g);
}

static int src_rejected(void *self, const al_cred_query *q, const al_cred_grant *g, int status,
                        al_cred_query *next)
{
    al_oauth2_3lo *s = self;
    const hold *h = g->hold;
    /* 401: the token is no longer good (revoked, expired early): refresh it. A 403
     * with a valid token is the user's permissions: a new token would not help. */
    if (status != 401 || !h || q->attempt != AL_CRED_FIRST)
        return 0;
    al_user_cred_rejected(s->uc, h->acc, h->gen);
    *next = *q;
    next->attempt = AL_CRED_REFRESH;
    next->provider = NULL;
    return 1;
}

static int src_may_retry(void *self, const al_cred_query *q, const al_cred_grant *g)
{
    (void)self;
    return g->hold && q->attempt == AL_CRED_FIRST;
}

static const al_credsrc_ops src_ops = {
    .name = "oauth2_3lo",
    .acquire = src_acquire,
    .cancel = src_cancel,
    .release = src_release,
    .rejected = src_rejected,
    .may_retry = src_may_retry,
};

al_credsrc al_credsrc_oauth2_3lo(al_oauth2_3lo *s)
{
    return (al_credsrc){&src_ops, s};
}

/* ---- endpoints -------------------------------------------------------------------- */

static size_t esc_append(char *buf, size_t u, size_t cap, const char *s)
{
    for (; s && *s && u + 7 < cap; s++) {
        const char *e = NULL;
        switch (*s) {
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '&':
            e = "&amp;";
            break;
        case '"':
            e = "&quot;";
            break;
        case '\'':
            e = "&#39;";
            break;
        default:
            break;
        }
        if (e) {
            size_t n = strlen(e);
            memcpy(buf + u, e, n);
            u += n;
        } else if ((unsigned char)*s >= 0x20 && *s != 0x7f) {
            buf[u++] = *s;
        }
    }
    return u;
}

static size_t lit_append(char *buf, size_t u, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (u + n >= cap)
        n = cap > u + 1 ? cap - u - 1 : 0;
    memcpy(buf + u, s, n);
    return u + n;
}

size_t al_oauth2_3lo_page_html(const char *title, const char *message, char *buf, size_t cap)
{
    size_t u = 0;
    if (!cap)
        return 0;
    u = lit_append(buf, u, cap,
                   "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>airlock: ");
    u = esc_append(buf, u, cap, title);
    u = lit_append(buf, u, cap, "</title></head>\n<body><h1>");
    u = esc_append(buf, u, cap, title);
    u = lit_append(buf, u, cap, "</h1>\n<p>");
    u = esc_append(buf, u, cap, message);
    u = lit_append(buf, u, cap, "</p></body></html>\n");
    buf[u < cap ? u : cap - 1] = 0;
    return u;
}

/* The response for a page result (strings live in s until the next render). */
static void render(al_oauth2_3lo *s, pend *p, al_local_resp *resp)
{
    al_user_page *pg = &p->page;
    memset(resp, 0, sizeof *resp);
    free(s->location);
    s->location = pg->location; /* moved */
    pg->location = NULL;
    resp->status = pg->status ? pg->status : 500;
    resp->location = s->location;
    resp->reason = pg->reason;
    resp->audit_path = p->audit_path;
    resp->body = s->html;
    resp->body_len = al_oauth2_3lo_page_html(pg->title[0] ? pg->title : "airlock", pg->message,
                                             s->html, sizeof s->html);
}

/* A job's answer (fetch thread, or inside the call that started it). */
static void on_page(void *arg, al_user_page *page)
{
    pend *p = arg;
    p->page = *page; /* moves location */
    memset(page, 0, sizeof *page);
    mb_post(p);
}

static int page_now(al_oauth2_3lo *s, pend *p, al_local_resp *resp)
{
    render(s, p, resp);
    pend_free(p);
    mb_unref(s->mb);
    return 1;
}

void al_oauth2_3lo_set_authz(al_oauth2_3lo *s, struct al_authz_state *authz)
{
    s->authz = authz;
}

/* A JSON answer of sessions/complete ({"error", "message"} for a refusal); a 401 carries
 * the gateway's Bearer challenge (RFC 6750). */
static void json_fill(al_oauth2_3lo *s, al_local_resp *resp, int status, const char *reason,
                      const char *body)
{
    memset(resp, 0, sizeof *resp);
    snprintf(s->html, sizeof s->html, "%s\n", body);
    resp->status = status;
    resp->content_type = "application/json";
    resp->reason = reason;
    resp->audit_path = "/oauth2/sessions/complete";
    resp->body = s->html;
    resp->body_len = strlen(s->html);
    if (status == 401) {
        if (!s->challenge[0])
            snprintf(s->challenge, sizeof s->challenge, "Bearer realm=\"airlock\"");
        resp->www_authenticate = s->challenge;
    }
}

static void json_error_fill(al_oauth2_3lo *s, al_local_resp *resp, int status, const char *code,
                            const char *message)
{
    json_t *j = json_pack("{s:s, s:s}", "error", code, "message", message);
    char *b = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_fill(s, resp, status, code, b ? b : "{\"error\":\"internal_error\"}");
    free(b);
    json_decref(j);
}

static int json_error(al_oauth2_3lo *s, pend *p, al_local_resp *resp, int status,
                      const char *code, const char *message)
{
    json_error_fill(s, resp, status, code, message);
    pend_free(p);
    mb_unref(s->mb);
    return 1;
}

/* The store thread's answer to a session completion (loop thread). */
static void complete_answer(al_oauth2_3lo *s, int rc, const char *target, al_local_resp *resp)
{
    if (rc == AL_OK) {
        json_t *j = json_pack("{s:s, s:s}", "status", "completed", "target", target);
        char *b = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_fill(s, resp, 200, NULL, b ? b : "{\"status\":\"completed\"}");
        free(b);
        json_decref(j);
    } else if (rc == AL_ERR_PERM) {
        json_error_fill(s, resp, 403, "session_user_mismatch",
                        "this session was started for another user; nothing was stored and "
                        "the session is gone: the user who asked must sign in again");
    } else if (rc == AL_ERR_NOTFOUND || rc == AL_ERR_TIMEOUT) {
        json_error_fill(s, resp, rc == AL_ERR_TIMEOUT ? 410 : 404,
                        rc == AL_ERR_TIMEOUT ? "session_expired" : "session_not_found",
                        rc == AL_ERR_TIMEOUT
                            ? "the session expired (sessions wait 10 minutes); ask the agent "
                              "for a new link"
                            : "no such session (unknown, or completed already); ask the agent "
                              "for a new link");
    } else if (rc == AL_ERR_IO) {
        json_error_fill(s, resp, 503, "stopping", "airlock is stopping; try again in a moment");
    } else {
        json_error_fill(s, resp, 500, "internal_error",
                        "the tokens could not be stored; see airlock's log");
    }
}

/* The store thread: the completion's outcome goes to the worker's mailbox. */
static void on_completed(void *arg, int rc, const char *target)
{
    pend *p = arg;
    p->complete_rc = rc;
    snprintf(p->complete_target, sizeof p->complete_target, "%s", target ? target : "");
    mb_post(p);
}

/* POST /oauth2/sessions/complete (app binding): the caller's end user completes the
 * session named by X-Airlock-Session-Id. The refusals that need no store are answered
 * now; the completion itself (a store write) runs on the store thread. */
static int sessions_complete(al_oauth2_3lo *s, pend *p, const al_local_req *q,
                             al_local_resp *resp, al_local_done_fn done, void *req,
                             void **pending)
{
    char user[1100], msg[768];
    const char *code = NULL;
    int status = 0;
    if (strcmp(q->method, "POST") != 0)
        return json_error(s, p, resp, 405, "method_not_allowed",
                          "complete a session with POST /oauth2/sessions/complete and the "
                          "X-Airlock-Session-Id header");
    s->challenge[0] = 0;
    if (al_authz_end_user(s->authz, q->table, q->headers, q->header_count, user, sizeof user,
                          &status, &code, msg, sizeof msg, s->challenge,
                          sizeof s->challenge) != AL_OK)
        return json_error(s, p, resp, status, code, msg);
    const al_header *sh = NULL;
    size_t seen = 0;
    for (size_t i = 0; i < q->header_count; i++)
        if (al_http_name_is(q->headers[i].name, q->headers[i].name_len, "x-airlock-session-id")) {
            sh = sh ? sh : &q->headers[i];
            seen++;
        }
    char sid[AL_CONSENT_ID_LEN + 1];
    if (!sh || seen != 1 || sh->value_len != AL_CONSENT_ID_LEN)
        return json_error(s, p, resp, 400, "bad_request",
                          "send the session id from the return URL's session_id parameter, "
                          "once, in the X-Airlock-Session-Id header");
    memcpy(sid, sh->value, AL_CONSENT_ID_LEN);
    sid[AL_CONSENT_ID_LEN] = 0;
    p->complete = 1;
    p->ldone = done;
    p->req = req;
    int rc = al_user_cred_complete(s->uc, sid, user, on_completed, p);
    OPENSSL_cleanse(sid, sizeof sid);
    if (rc != AL_ERR_PENDING) {
        complete_answer(s, rc, "", resp);
        pend_free(p);
        mb_unref(s->mb);
        return 1;
    }
    link_pending(s, p);
    *pending = p;
    return 2;
}

int al_oauth2_3lo_local(void *arg, const al_local_req *q, al_local_resp *resp,
                        al_local_done_fn done, void *req, void **pending)
{
    al_oauth2_3lo *s = arg;
    static const char az[] = "/oauth2/authorize/", cb[] = "/oauth2/callback",
                      sc[] = "/oauth2/sessions/complete";
    const char *path = q->path;
    size_t plen = q->path_len, qmark = plen;
    for (size_t i = 0; i < plen; i++)
        if (path[i] == '?') {
            qmark = i;
            break;
        }
    int is_az = qmark > sizeof az - 1 && !memcmp(path, az, sizeof az - 1);
    int is_cb = qmark == sizeof cb - 1 && !memcmp(path, cb, sizeof cb - 1);
    int is_sc = qmark == sizeof sc - 1 && !memcmp(path, sc, sizeof sc - 1);
    if (!is_az && !is_cb && !is_sc)
        return 0;
    pend *p = pend_new(s, P_PAGE);
    if (!p)
        return 0;
    if (is_sc && !s->uc)
        return json_error(s, p, resp, 503, "user_tokens_unavailable",
                          "airlock's user token vault is not open; tell airlock's operator");
    if (is_sc)
        return sessions_complete(s, p, q, resp, done, req, pending);
    if (!s->uc) {
        p->page.status = 503;
        p->page.reason = "user_tokens_unavailable";
        snprintf(p->page.title, sizeof p->page.title, "Not available");
        snprintf(p->page.message, sizeof p->page.message,
                 "airlock's user token vault is not open; tell airlock's operator.");
        return page_now(s, p, resp);
    }
    p->audit_path = is_az ? "/oauth2/authorize" : "/oauth2/callback";
    p->ldone = done;
    p->req = req;
    char base[512], redirect[600];
    al_table_public_base_url(q->table, base, sizeof base);
    snprintf(redirect, sizeof redirect, "%s/oauth2/callback", base);
    if (strcmp(q->method, "GET") != 0) {
        p->page.status = 405;
        p->page.reason = "method_not_allowed";
        snprintf(p->page.title, sizeof p->page.title, "Method not allowed");
        snprintf(p->page.message, sizeof p->page.message, "Open this address in a browser (GET).");
        return page_now(s, p, resp);
    }
    int rc;
    if (is_az) {
        char id[AL_CONSENT_ID_LEN + 1] = "", ret[AL_RETURN_URL_MAX + 1];
        size_t il = qmark - (sizeof az - 1);
        if (il == AL_CONSENT_ID_LEN)
            memcpy(id, path + sizeof az - 1, il);
        /* app binding: the application may name its return URL (checked against the
         * target's allow-list); a malformed or doubled one is refused like a bad one */
        const char *qs = qmark < plen ? path + qmark + 1 : "";
        size_t ql = qmark < plen ? plen - qmark - 1 : 0;
        int prc = al_user_query_param(qs, ql, "return_url", ret, sizeof ret);
        if (prc == AL_ERR_INVAL)
            snprintf(ret, sizeof ret, "%s", "invalid:");
        rc = al_user_cred_authorize_to(s->uc, q->table, id, prc == AL_ERR_NOTFOUND ? NULL : ret,
                                       redirect, &p->page, on_page, p);
        OPENSSL_cleanse(id, sizeof id);
    } else {
        const char *qs = qmark < plen ? path + qmark + 1 : "";
        size_t ql = qmark < plen ? plen - qmark - 1 : 0;
        rc = al_user_cred_callback(s->uc, qs, ql, redirect, &p->page, on_page, p);
    }
    if (rc != AL_ERR_PENDING)
        return page_now(s, p, resp);
    link_pending(s, p);
    *pending = p;
    return 2;
}

void al_oauth2_3lo_local_cancel(void *arg, void *pending)
{
    if (pending)
        cancel_pend(arg, pending);
}

/* ---- life ---------------------------------------------------------------------------- */

int al_oauth2_3lo_new(struct ev_loop *loop, al_user_cred *uc, al_oauth2_3lo **out)
{
    al_oauth2_3lo *s = calloc(1, sizeof *s);
    mailbox *mb = calloc(1, sizeof *mb);
    if (!s || !mb) {
        free(s);
        free(mb);
        return AL_ERR_NOMEM;
    }
    atomic_init(&mb->refs, 1);
    pthread_mutex_init(&mb->lock, NULL);
    mb->loop = loop;
    mb->wake = &s->wake;
    s->mb = mb;
    s->loop = loop;
    s->uc = uc;
    ev_async_init(&s->wake, on_wake);
    s->wake.data = s;
    ev_async_start(loop, &s->wake);
    ev_unref(loop); /* the watcher alone must not keep the loop running */
    *out = s;
    return AL_OK;
}

void al_oauth2_3lo_free(al_oauth2_3lo *s)
{
    if (!s)
        return;
    while (s->pending)
        cancel_pend(s, s->pending);
    pthread_mutex_lock(&s->mb->lock);
    s->mb->dead = 1;
    pend *left = s->mb->ready; /* answered meanwhile: nobody takes them now */
    s->mb->ready = NULL;
    pthread_mutex_unlock(&s->mb->lock);
    while (left) {
        pend *n = left->ready_next;
        pend_free(left);
        mb_unref(s->mb);
        left = n;
    }
    ev_ref(s->loop);
    ev_async_stop(s->loop, &s->wake);
    free(s->location);
    mb_unref(s->mb);
    free(s);
}
