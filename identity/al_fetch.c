/* al_fetch: the control-plane HTTP client thread (see al_fetch.h).
 *
 * Owns: one thread, one curl multi handle, every easy handle (created, used and
 * cleaned up on the thread only), the queue of requests.
 *
 * Invariants:
 *  - `lock` covers the request list and each request's state; curl handles are
 *    touched by the fetch thread only, so no curl call happens under the lock except
 *    curl_multi_wakeup (documented thread-safe);
 *  - a request is QUEUED (not yet given to curl), RUNNING, CALLING (its callback runs)
 *    or CANCELLED (RUNNING, to be removed by the thread without a callback);
 *  - POST bodies and basic credentials are wiped (OPENSSL_cleanse) before they are
 *    freed; the response body is wiped too (it may hold a token). */
#include "al_fetch.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_BODY   (1u << 20)

enum req_state { R_QUEUED = 0, R_RUNNING, R_CALLING, R_CANCELLED };

typedef struct req {
    struct req *next;
    uint64_t id;
    enum req_state state;
    pthread_t thread; /* R_CALLING: who runs the callback */
    al_fetch *f;
    CURL *easy;
    struct curl_slist *headers;
    char *url, *host, *form, *auth_header, *ca_file, *accept;
    size_t form_len;
    int allow_private;
    long timeout_ms;
    size_t max_body;
    al_fetch_cb cb;
    void *arg;
    char *body;
    size_t body_len, body_cap;
    int too_big;
    int refused;
    char refused_addr[64];
    long max_age_s;
    int no_store;
    int64_t started_ms;
    char errbuf[CURL_ERROR_SIZE];
} req;

struct al_fetch {
    pthread_mutex_t lock;
    pthread_cond_t called;
    pthread_t thread;
    int started;
    int stop;
    CURLM *multi;
    req *reqs;
    uint64_t next_id;
    al_fetch_guard_fn guard;
    void *guard_arg;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wipe_free(char *s, size_t n)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, n);
    free(s);
}

static void req_free(req *r)
{
    if (r->easy) {
        curl_multi_remove_handle(r->f->multi, r->easy);
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    wipe_free(r->form, r->form ? r->form_len + 1 : 0);
    if (r->auth_header)
        wipe_free(r->auth_header, strlen(r->auth_header));
    wipe_free(r->body, r->body_cap);
    free(r->url);
    free(r->host);
    free(r->ca_file);
    free(r->accept);
    free(r);
}

/* ---- URL rules ------------------------------------------------------------------ */

static int parse_url(const char *url, const al_fetch_opts *o, char **host_out, char *errbuf,
                     size_t errlen)
{
    int rc = AL_ERR_INVAL;
    char *scheme = NULL, *host = NULL, *user = NULL;
    CURLU *u = curl_url();
    if (!u)
        return AL_ERR_NOMEM;
    if (!url || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        snprintf(errbuf, errlen, "'%.200s' is not an absolute URL", url ? url : "");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
        snprintf(errbuf, errlen, "the URL must not carry credentials (user:password@)");
        goto out;
    }
    if (strcasecmp(scheme, "https") != 0) {
        if (strcasecmp(scheme, "http") != 0) {
            snprintf(errbuf, errlen, "scheme '%.20s' is not allowed: use https", scheme);
            goto out;
        }
        if (!o || !o->allow_insecure) {
            snprintf(errbuf, errlen,
                     "http endpoint %.200s refused: use https, or allow it with "
                     "--allow-insecure-endpoints",
                     host);
            goto out;
        }
    }
    if (host_out) {
        *host_out = strdup(host);
        if (!*host_out) {
            rc = AL_ERR_NOMEM;
            goto out;
        }
    }
    rc = AL_OK;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_url_cleanup(u);
    return rc;
}

int al_fetch_check_url(const char *url, const al_fetch_opts *opts, char *errbuf, size_t errlen)
{
    char tmp[8];
    if (!errbuf) {
        errbuf = tmp;
        errlen = sizeof tmp;
    }
    return parse_url(url, opts, NULL, errbuf, errlen);
}

/* ---- curl callbacks (fetch thread) ----------------------------------------------- */

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    req *r = ud;
    size_t len = sz * n;
    if (r->body_len + len > r->max_body) {
        r->too_big = 1;
        return 0;
    }
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + len + 1)
            cap *= 2;
        char *nb = malloc(cap);
        if (!nb)
            return 0;
        if (r->body) {
            memcpy(nb, r->body, r->body_len);
            wipe_free(r->body, r->body_cap);
        }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    r->body[r->body_len] = 0;
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    req *r = ud;
    size_t len = sz * n;
    static const char cc[] = "cache-control:";
    if (len > sizeof cc - 1 && strncasecmp(p, cc, sizeof cc - 1) == 0) {
        char v[256];
        size_t vl = len - (sizeof cc - 1);
        if (vl >= sizeof v)
            vl = sizeof v - 1;
        memcpy(v, p + sizeof cc - 1, vl);
        v[vl] = 0;
        for (char *c = v; *c; c++)
            *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        if (strstr(v, "no-store") || strstr(v, "no-cache"))
            r->no_store = 1;
        char *m = strstr(v, "max-age=");
        if (m) {
            long age = strtol(m + 8, NULL, 10);
            if (age >= 0)
                r->max_age_s = age;
        }
    }
    return len;
}

static curl_socket_t on_opensocket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    req *r = ud;
    (void)purpose;
    if (!r->allow_private) {
        al_fetch *f = r->f;
        int ok = f->guard ? f->guard(&a->addr, f->guard_arg) : 0;
        if (!ok) {
            const void *src = a->family == AF_INET6
                                  ? (const void *)&((struct sockaddr_in6 *)&a->addr)->sin6_addr
                                  : (const void *)&((struct sockaddr_in *)&a->addr)->sin_addr;
            if (!inet_ntop(a->family, src, r->refused_addr, sizeof r->refused_addr))
                snprintf(r->refused_addr, sizeof r->refused_addr, "?");
            r->refused = 1;
            return CURL_SOCKET_BAD;
        }
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- the thread ------------------------------------------------------------------- */

static int setup_easy(req *r)
{
    CURL *e = curl_easy_init();
    if (!e)
        return AL_ERR_NOMEM;
    r->easy = e;
    char accept[300];
    snprintf(accept, sizeof accept, "Accept: %s", r->accept ? r->accept : "application/json");
    struct curl_slist *h = curl_slist_append(NULL, accept);
    if (h && r->auth_header)
        h = curl_slist_append(h, r->auth_header);
    if (!h)
        return AL_ERR_NOMEM;
    r->headers = h;
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https"); /* scheme rule checked before */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "airlock");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (r->ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, r->ca_file);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    if (r->form) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->form);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->form_len);
    }
    if (curl_multi_add_handle(r->f->multi, e) != CURLM_OK)
        return AL_ERR_IO;
    return AL_OK;
}

static int map_curl(req *r, CURLcode cc)
{
    if (r->refused)
        return AL_ERR_EGRESS;
    if (r->too_big)
        return AL_ERR_TOOBIG;
    switch (cc) {
    case CURLE_OK:
        return AL_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return AL_ERR_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
        return AL_ERR_DNS;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        return AL_ERR_CRYPTO;
    default:
        return AL_ERR_IO;
    }
}

/* Runs the callback of a finished request (lock held on entry and exit). */
static void finish(al_fetch *f, req *r, CURLcode cc)
{
    char msg[CURL_ERROR_SIZE + 160];
    al_fetch_response res = {0};
    res.err = map_curl(r, cc);
    if (res.err == AL_OK)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
    res.body = r->body ? r->body : "";
    res.body_len = r->body_len;
    res.max_age_s = r->max_age_s;
    res.no_store = r->no_store;
    res.elapsed_ms = mono_ms() - r->started_ms;
    res.host = r->host;
    if (res.err == AL_ERR_EGRESS)
        snprintf(msg, sizeof msg,
                 "%s resolves to %s, a private or loopback address refused by the egress "
                 "guard (the provider needs --allow-private-network)",
                 r->host, r->refused_addr);
    else if (res.err == AL_ERR_TOOBIG)
        snprintf(msg, sizeof msg, "the answer of %s is larger than %zu bytes", r->host,
                 r->max_body);
    else if (res.err == AL_ERR_TIMEOUT)
        snprintf(msg, sizeof msg, "%s did not answer within %ld ms", r->host, r->timeout_ms);
    else if (res.err != AL_OK)
        snprintf(msg, sizeof msg, "%s: %s", r->host,
                 r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc));
    else
        msg[0] = 0;
    res.errmsg = msg;
    r->state = R_CALLING;
    r->thread = pthread_self();
    pthread_mutex_unlock(&f->lock);
    r->cb(r->arg, &res);
    pthread_mutex_lock(&f->lock);
}

static void unlink_req(al_fetch *f, req *r)
{
    for (req **pp = &f->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            return;
        }
    }
}

static void *fetch_thread(void *arg)
{
    al_fetch *f = arg;
    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        /* New requests to curl; cancelled ones out. */
        for (req *r = f->reqs, *nx; r; r = nx) {
            nx = r->next;
            if (r->state == R_CANCELLED) {
                unlink_req(f, r);
                req_free(r);
            } else if (r->state == R_QUEUED) {
                r->state = R_RUNNING;
                r->started_ms = mono_ms();
                if (setup_easy(r) != AL_OK) {
                    snprintf(r->errbuf, sizeof r->errbuf, "could not start the request");
                    finish(f, r, CURLE_OUT_OF_MEMORY);
                    unlink_req(f, r);
                    req_free(r);
                    pthread_cond_broadcast(&f->called);
                    nx = f->reqs; /* the list may have changed while unlocked */
                }
            }
        }
        pthread_mutex_unlock(&f->lock);
        int running = 0;
        curl_multi_perform(f->multi, &running);
        pthread_mutex_lock(&f->lock);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(f->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            req *r = NULL;
            CURLcode cc = m->data.result;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            curl_multi_remove_handle(f->multi, m->easy_handle);
            if (r->state == R_RUNNING)
                finish(f, r, cc);
            unlink_req(f, r);
            req_free(r);
            pthread_cond_broadcast(&f->called);
        }
        if (f->stop)
            break;
        pthread_mutex_unlock(&f->lock);
        curl_multi_poll(f->multi, NULL, 0, 1000, NULL);
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

int al_fetch_new(al_fetch **out)
{
    al_fetch *f = calloc(1, sizeof *f);
    if (!f)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->called, NULL);
    f->next_id = 1;
    f->multi = curl_multi_init();
    if (!f->multi || pthread_create(&f->thread, NULL, fetch_thread, f) != 0) {
        if (f->multi)
            curl_multi_cleanup(f->multi);
        pthread_cond_destroy(&f->called);
        pthread_mutex_destroy(&f->lock);
        free(f);
        return AL_ERR_NOMEM;
    }
    f->started = 1;
    *out = f;
    return AL_OK;
}

void al_fetch_stop(al_fetch *f)
{
    pthread_mutex_lock(&f->lock);
    f->stop = 1;
    int joinable = f->started;
    f->started = 0;
    pthread_mutex_unlock(&f->lock);
    curl_multi_wakeup(f->multi);
    if (joinable)
        pthread_join(f->thread, NULL);
}

void al_fetch_free(al_fetch *f)
{
    if (!f)
        return;
    al_fetch_stop(f);
    for (req *r = f->reqs, *nx; r; r = nx) {
        nx = r->next;
        req_free(r);
    }
    curl_multi_cleanup(f->multi);
    pthread_cond_destroy(&f->called);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void al_fetch_set_guard(al_fetch *f, al_fetch_guard_fn guard, void *arg)
{
    pthread_mutex_lock(&f->lock);
    f->guard = guard;
    f->guard_arg = arg;
    pthread_mutex_unlock(&f->lock);
}

static char *basic_header(const char *user_pass)
{
    size_t n = strlen(user_pass);
    size_t enc = 4 * ((n + 2) / 3) + 1;
    size_t total = sizeof "Authorization: Basic " + enc;
    char *h = malloc(total);
    if (!h)
        return NULL;
    int w = snprintf(h, total, "Authorization: Basic ");
    EVP_EncodeBlock((unsigned char *)h + w, (const unsigned char *)user_pass, (int)n);
    return h;
}

int al_fetch_start(al_fetch *f, const al_fetch_request *rq, const al_fetch_opts *opts,
                   al_fetch_cb cb, void *arg, uint64_t *id, char *errbuf, size_t errlen)
{
    char tmp[8];
    if (!errbuf) {
        errbuf = tmp;
        errlen = sizeof tmp;
    }
    al_fetch_opts o = opts ? *opts : (al_fetch_opts){0};
    req *r = calloc(1, sizeof *r);
    if (!r)
        return AL_ERR_NOMEM;
    r->f = f;
    int rc = parse_url(rq->url, &o, &r->host, errbuf, errlen);
    if (rc != AL_OK)
        goto fail;
    rc = AL_ERR_NOMEM;
    r->url = strdup(rq->url);
    if (!r->url)
        goto fail;
    if (rq->form) {
        r->form = malloc(rq->form_len + 1);
        if (!r->form)
            goto fail;
        memcpy(r->form, rq->form, rq->form_len);
        r->form[rq->form_len] = 0;
        r->form_len = rq->form_len; /* the NUL after it is wiped too */
    }
    if (rq->basic_auth && !(r->auth_header = basic_header(rq->basic_auth)))
        goto fail;
    if (o.ca_file && !(r->ca_file = strdup(o.ca_file)))
        goto fail;
    if (rq->accept && !(r->accept = strdup(rq->accept)))
        goto fail;
    r->allow_private = o.allow_private_network;
    r->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
    r->max_body = o.max_body ? o.max_body : DEFAULT_MAX_BODY;
    r->max_age_s = -1;
    r->cb = cb;
    r->arg = arg;
    pthread_mutex_lock(&f->lock);
    if (f->stop) {
        pthread_mutex_unlock(&f->lock);
        snprintf(errbuf, errlen, "the fetch thread has stopped");
        rc = AL_ERR_IO;
        req_free(r);
        return rc;
    }
    r->id = f->next_id++;
    r->next = f->reqs;
    f->reqs = r;
    if (id)
        *id = r->id;
    pthread_mutex_unlock(&f->lock);
    curl_multi_wakeup(f->multi);
    return AL_OK;
fail:
    if (rc == AL_ERR_NOMEM)
        snprintf(errbuf, errlen, "out of memory");
    req_free(r);
    return rc;
}

int al_fetch_cancel(al_fetch *f, uint64_t id)
{
    int removed = 0;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        req *r = f->reqs;
        while (r && r->id != id)
            r = r->next;
        if (!r)
            break;
        if (r->state == R_QUEUED) {
            unlink_req(f, r);
            req_free(r);
            removed = 1;
            break;
        }
        if (r->state == R_RUNNING) {
            r->state = R_CANCELLED; /* the thread removes it; its callback never runs */
            removed = 1;
            break;
        }
        if (r->state == R_CANCELLED || pthread_equal(r->thread, pthread_self()))
            break;
        pthread_cond_wait(&f->called, &f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    if (removed)
        curl_multi_wakeup(f->multi);
    return removed;
}

/* ---- synchronous use -------------------------------------------------------------- */

typedef struct waitbox {
    pthread_mutex_t m;
    pthread_cond_t c;
    int done;
    al_fetch_response res;
    char *buf;
} waitbox;

static void wait_cb(void *arg, const al_fetch_response *res)
{
    waitbox *w = arg;
    size_t hl = res->host ? strlen(res->host) : 0, el = res->errmsg ? strlen(res->errmsg) : 0;
    char *buf = malloc(res->body_len + hl + el + 3);
    pthread_mutex_lock(&w->m);
    w->res = *res;
    if (buf) {
        memcpy(buf, res->body, res->body_len);
        buf[res->body_len] = 0;
        w->res.body = buf;
        char *h = buf + res->body_len + 1;
        if (hl)
            memcpy(h, res->host, hl);
        h[hl] = 0;
        w->res.host = h;
        char *e = h + hl + 1;
        if (el)
            memcpy(e, res->errmsg, el);
        e[el] = 0;
        w->res.errmsg = e;
    } else {
        w->res.err = AL_ERR_NOMEM;
        w->res.body = "";
        w->res.body_len = 0;
        w->res.host = "";
        w->res.errmsg = "out of memory";
    }
    w->buf = buf;
    w->done = 1;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

int al_fetch_wait(al_fetch *f, const al_fetch_request *rq, const al_fetch_opts *opts,
                  al_fetch_response *res, char **buf_out)
{
    waitbox w = {.done = 0};
    char eb[256];
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.c, NULL);
    *buf_out = NULL;
    int rc = al_fetch_start(f, rq, opts, wait_cb, &w, NULL, eb, sizeof eb);
    if (rc != AL_OK) {
        memset(res, 0, sizeof *res);
        *buf_out = strdup(eb);
        res->err = rc;
        res->errmsg = *buf_out ? *buf_out : "invalid request";
        res->body = "";
        res->host = "";
        goto out;
    }
    pthread_mutex_lock(&w.m);
    while (!w.done)
        pthread_cond_wait(&w.c, &w.m);
    pthread_mutex_unlock(&w.m);
    *res = w.res;
    *buf_out = w.buf;
    rc = res->err;
out:
    pthread_cond_destroy(&w.c);
    pthread_mutex_destroy(&w.m);
    return rc;
}
