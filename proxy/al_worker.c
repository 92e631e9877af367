/* al_worker: worker threads (see al_worker.h).
 *
 * Each worker accepts on its own SO_REUSEPORT socket, so the kernel spreads
 * connections and no accept lock exists. Everything a connection touches lives on
 * this thread. Closed connections are freed by an ev_prepare watcher after the loop
 * iteration, when no callback of theirs can still be on the stack. */
#include "al_worker.h"
#include "al_credsrc_oauth2.h"
#include "al_oauth2_3lo.h"
#include "al_iam_credsrc.h"
#include "upstream/al_egress.h"
#include "al_metrics.h"
#include "al_scrub.h"
#include "al_server.h"
#include "al_upstream.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int al_listen_resolve(const char *hostport, struct addrinfo **out)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        return AL_ERR_CONFIG;
    const char *h = hostport;
    size_t hl = (size_t)(colon - hostport);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(hl ? host : NULL, colon + 1, &hints, &ai) != 0 || !ai)
        return AL_ERR_CONFIG;
    *out = ai;
    return AL_OK;
}

int al_listen_socket(const char *hostport, int reuseport, int *fd_out)
{
    struct addrinfo *ai = NULL;
    if (al_listen_resolve(hostport, &ai) != AL_OK)
        return AL_ERR_CONFIG;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, rc = AL_ERR_IO;
    if (fd < 0)
        goto out;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        goto out;
    }
    *fd_out = fd;
    rc = AL_OK;
out:
    freeaddrinfo(ai);
    return rc;
}

int al_accept_must_pause(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

void al_accept_log_failure(struct ev_loop *loop, al_accept_log *l, const char *listener, int id,
                           int err, int paused)
{
    ev_tstamp now = ev_now(loop);
    if (l->last && now - l->last < 1.0) {
        l->suppressed++;
        return;
    }
    al_log(AL_LOG_WARN, "accept.failed",
           "listener=%s worker=%d errno=%d error=\"%s\"%s not_logged_since_last=%lu", listener, id,
           err, strerror(err),
           paused ? " action=\"accepting paused until a connection closes\"" : "", l->suppressed);
    l->last = now;
    l->suppressed = 0;
}

/* Out of descriptors: stop both listeners (level-triggered, they would fire again at
 * once) until a connection closes (reap) or the retry timer, as nginx and HAProxy
 * do. Clients wait in the kernel's backlog meanwhile. */
static void accept_pause(al_worker *w)
{
    if (w->accept_paused || w->draining)
        return;
    w->accept_paused = 1;
    ev_io_stop(w->loop, &w->accept_w);
    ev_io_stop(w->loop, &w->tls_accept_w);
    ev_timer_set(&w->accept_retry, 0.25, 0.);
    ev_timer_start(w->loop, &w->accept_retry);
}

static void accept_resume(al_worker *w)
{
    if (!w->accept_paused)
        return;
    w->accept_paused = 0;
    ev_timer_stop(w->loop, &w->accept_retry);
    if (w->draining)
        return;
    if (w->listen_fd >= 0)
        ev_io_start(w->loop, &w->accept_w);
    if (w->tls_listen_fd >= 0)
        ev_io_start(w->loop, &w->tls_accept_w);
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    accept_resume(t->data);
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    al_worker *w = io->data;
    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)
                return;
            int pause = al_accept_must_pause(err);
            al_accept_log_failure(w->loop, &w->accept_log,
                                  io->fd == w->tls_listen_fd ? "tls" : "proxy", w->id, err, pause);
            if (pause)
                accept_pause(w);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        al_conn *c = NULL;
        if (al_conn_new(w, fd, (struct sockaddr *)&ss, sl, &c) != AL_OK) {
            close(fd);
            continue;
        }
        if (io->fd == w->tls_listen_fd && w->tls_listen_fd >= 0)
            al_conn_start_tls(c, w->server->listener_ctx, NULL);
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        w->conn_count++;
    }
}

void al_worker_conn_dead(al_worker *w, al_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = NULL;
    c->next = w->dead;
    w->dead = c;
    w->conn_count--;
}

int al_worker_random_id(al_worker *w, unsigned char out[16])
{
    /* RAND_bytes costs about as much for 4 KiB as for 16 bytes (locking, fork
     * check, DRBG call): per request it was 3.6 % of the worker's time. The bytes are
     * the DRBG's own output, so ids stay as unpredictable; they are not secrets. */
    if (w->rid_left < 16) {
        if (RAND_bytes(w->rid_pool, (int)sizeof w->rid_pool) != 1) {
            w->rid_left = 0;
            memset(out, 0, 16);
            return AL_ERR_NOMEM;
        }
        w->rid_left = sizeof w->rid_pool;
    }
    unsigned char *p = w->rid_pool + sizeof w->rid_pool - w->rid_left;
    memcpy(out, p, 16);
    OPENSSL_cleanse(p, 16); /* an id handed out is not kept */
    w->rid_left -= 16;
    return AL_OK;
}

al_worker_table *al_worker_table_acquire(al_worker *w)
{
    w->current->users++;
    return w->current;
}

void al_worker_table_release(al_worker *w, al_worker_table *slot)
{
    if (--slot->users || slot == w->current)
        return;
    for (al_worker_table **p = &w->retired; *p; p = &(*p)->next) {
        if (*p == slot) {
            *p = slot->next;
            al_table_unref(slot->table);
            free(slot);
            return;
        }
    }
}

static al_table *ctx_table_hold(void *owner, void **hold)
{
    al_worker_table *slot = al_worker_table_acquire(owner);
    *hold = slot;
    return slot->table;
}

static void ctx_table_release(void *owner, void *hold)
{
    al_worker_table_release(owner, hold);
}

static int ctx_random_id(void *owner, unsigned char out[16])
{
    return al_worker_random_id(owner, out);
}

static const al_req_ctx_ops req_ctx_ops = {
    .table_hold = ctx_table_hold,
    .table_release = ctx_table_release,
    .random_id = ctx_random_id,
};

/* ---- hooks: metrics and echoed-secret scrubbing ---------------------------- */

/* Once per request, with its final audit record: the worker's metrics shard. */
static void on_request_finished(void *arg, const al_audit_request *rec)
{
    al_worker *w = arg;
    al_metrics_count_request(al_metrics_shard_at(w->server->metrics, (size_t)w->id), rec);
}

/* The response-body filter that replaces the injected credential (al_scrub, same
 * length, so the Content-Length the agent was told holds). */
typedef struct scrub_filter {
    al_scrub s;
    size_t table[]; /* the scrubber's table (secret length entries): one allocation */
} scrub_filter;

static int scrub_run(void *state, const char *in, size_t len, int final, al_buf *out)
{
    scrub_filter *f = state;
    int rc = len ? al_scrub_feed(&f->s, in, len, out) : AL_OK;
    if (rc == AL_OK && final)
        rc = al_scrub_finish(&f->s, out);
    return rc;
}

static int scrub_run_spans(void *state, const char *in, size_t len,
                           int (*emit)(void *arg, const void *p, size_t n), void *arg)
{
    scrub_filter *f = state;
    return al_scrub_feed_spans(&f->s, in, len, emit, arg);
}

static uint64_t scrub_count(void *state)
{
    return ((scrub_filter *)state)->s.count;
}

static void scrub_free(void *state)
{
    scrub_filter *f = state;
    al_scrub_free(&f->s);
    free(f);
}

static int scrub_open(void *arg, const al_target *t, const al_secret_view *sv, int status,
                      const al_header *h, size_t n, al_body_filter *out)
{
    (void)arg, (void)status, (void)h, (void)n;
    memset(out, 0, sizeof *out);
    if (!t || !t->scrub_echoed_credential || !sv || !sv->value || sv->len < AL_SCRUB_MIN_SECRET ||
        sv->len > AL_SCRUB_MAX_SECRET)
        return AL_OK; /* nothing injected, scrubbing off, or a key too short to match */
    /* (al_scrub_init_in sets every field of f->s; the table is written before it is read) */
    scrub_filter *f = malloc(sizeof *f + sv->len * sizeof f->table[0]);
    if (!f)
        return AL_ERR_NOMEM;
    /* the secret view stays valid while the request holds its credential: the filter is
     * closed before the credential is released */
    int rc = al_scrub_init_in(&f->s, sv->value, sv->len, AL_SCRUB_KEEP_LENGTH, f->table);
    if (rc != AL_OK) {
        free(f);
        return rc;
    }
    *out = (al_body_filter){.run = scrub_run, .count = scrub_count, .free = scrub_free,
                            .state = f, .run_spans = scrub_run_spans};
    return AL_OK;
}

/* The native engine's defence in depth: the class of a non-public address. */
static const char *egress_refuses(const struct sockaddr *sa, void *arg)
{
    (void)arg;
    enum al_addr_class c = al_egress_classify(sa);
    return c == AL_ADDR_PUBLIC ? NULL : al_egress_class_name(c);
}

/* What the worker's requests may use: its loop, resolver and pool, the store-backed
 * credential source for every method (OAuth and IAM put their own in their row),
 * the audit log. */
static void init_req_ctx(al_worker *w)
{
    al_req_ctx *x = &w->rctx;
    x->loop = w->loop;
    x->resolver = w->resolver;
    x->pool = w->pool;
    x->native = w->native;
    x->audit = w->server ? w->server->audit : NULL;
    for (size_t m = 0; m < AL_AUTH_COUNT; m++)
        x->cred[m] = al_credsrc_store(w->server ? w->server->creds : NULL);
    if (w->server && w->server->tokens &&
        al_oauth2_src_new(w->loop, w->server->tokens, w->server->creds, &w->oauth2) == AL_OK) {
        al_oauth2_src_set_metrics(w->oauth2,
                                  al_metrics_shard_at(w->server->metrics, (size_t)w->id));
        x->cred[AL_AUTH_OAUTH2_2LO] = al_credsrc_oauth2(w->oauth2);
    }
    /* oauth2_3lo: the user's own token (never the store's client secret); without a
     * user vault every acquire answers "store not open" */
    if (w->server && al_oauth2_3lo_new(w->loop, w->server->users, &w->oauth2_3lo) == AL_OK) {
        x->cred[AL_AUTH_OAUTH2_3LO] = al_credsrc_oauth2_3lo(w->oauth2_3lo);
        x->hooks.local = al_oauth2_3lo_local;
        x->hooks.local_cancel = al_oauth2_3lo_local_cancel;
        x->hooks.local_arg = w->oauth2_3lo;
        /* POST /oauth2/sessions/complete authenticates its caller as the data path does */
        al_oauth2_3lo_set_authz(w->oauth2_3lo, &w->server->authz);
    }
    /* iam: the store's providers, or the AWS credential sources (fetched off-loop) */
    if (w->server && w->server->iam)
        al_iam_credsrc_new(w->server->iam, w->loop, &x->cred[AL_AUTH_IAM]);
    if (w->server && w->server->metrics) {
        x->hooks.finished = on_request_finished;
        x->hooks.finished_arg = w;
    }
    x->hooks.body_filter = scrub_open;
    x->hooks.body_filter_arg = w;
    x->ops = &req_ctx_ops;
    x->owner = w;
    if (w->server) { /* inbound JWT and policy (al_authz): the same code as explain */
        x->hooks.decide = al_authz_hook_decide;
        x->hooks.decide_arg = &w->server->authz;
    }
    x->table = w->table;
}

static void reap(al_worker *w)
{
    int freed = 0;
    while (w->dead) {
        al_conn *c = w->dead;
        w->dead = c->next;
        al_conn_free(c);
        freed = 1;
    }
    if (freed)
        accept_resume(w); /* a descriptor came back */
}

/* Only there to make the next poll return at once (al_conn_run_kicks). */
static void on_kick_wake(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
}

static void on_prepare(struct ev_loop *loop, ev_prepare *chk, int revents)
{
    al_worker *w = chk->data;
    (void)revents;
    al_conn_run_kicks(w); /* first: a kick may close its connection */
    reap(w);
    /* the worker's gauges, published once per loop turn: two relaxed stores */
    if (w->server)
        al_metrics_set_active(al_metrics_shard_at(w->server->metrics, (size_t)w->id),
                              w->conn_count, w->rctx.in_flight);
    if (w->draining && w->conn_count == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void on_drain_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    al_worker *w = t->data;
    (void)revents;
    al_log(AL_LOG_WARN, "drain.timeout", "worker=%d connections_left=%zu", w->id, w->conn_count);
    ev_break(loop, EVBREAK_ALL);
}

static void begin_drain(al_worker *w)
{
    if (w->draining)
        return;
    w->draining = 1;
    ev_timer_stop(w->loop, &w->accept_retry);
    /* Connections the kernel completed are taken first: closing a listener resets those
     * in its backlog, whose first request (a load balancer's POST) is then lost. */
    if (w->listen_fd >= 0)
        on_accept(w->loop, &w->accept_w, EV_READ);
    if (w->tls_listen_fd >= 0)
        on_accept(w->loop, &w->tls_accept_w, EV_READ);
    ev_io_stop(w->loop, &w->accept_w);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    w->listen_fd = -1;
    if (w->tls_listen_fd >= 0) {
        ev_io_stop(w->loop, &w->tls_accept_w);
        close(w->tls_listen_fd);
        w->tls_listen_fd = -1;
    }
    for (al_conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (c->proto && c->proto->drain)
            c->proto->drain(c);
        else
            al_conn_drain_idle(c); /* nothing read yet: its first request is answered */
    }
    uint32_t ms = w->table->limits.drain_timeout_ms ? w->table->limits.drain_timeout_ms : 10000;
    ev_timer_init(&w->drain_timer, on_drain_timeout, ms / 1000.0, 0.);
    w->drain_timer.data = w;
    ev_timer_start(w->loop, &w->drain_timer);
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    al_worker *w = a->data;
    (void)loop;
    (void)revents;
    pthread_mutex_lock(&w->handoff);
    al_table *t = w->pending;
    w->pending = NULL;
    int stop = w->stop_requested;
    pthread_mutex_unlock(&w->handoff);
    if (t) {
        al_worker_table *slot = calloc(1, sizeof *slot);
        if (!slot) {
            al_log(AL_LOG_ERROR, "table.reload", "worker=%d: out of memory, keeps the old table",
                   w->id);
            al_table_unref(t);
        } else {
            /* Requests in flight keep the slot they started on; it goes when they do. */
            slot->table = t;
            al_worker_table *old = w->current;
            w->current = slot;
            w->table = t;
            w->rctx.table = t;
            if (old->users == 0) {
                al_table_unref(old->table);
                free(old);
            } else {
                old->next = w->retired;
                w->retired = old;
            }
        }
    }
    if (stop)
        begin_drain(w);
}

int al_worker_init(al_worker *w, int id, struct al_server *s, al_table *table)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->server = s;
    w->listen_fd = w->tls_listen_fd = -1;
    pthread_mutex_init(&w->handoff, NULL);
    int rc = AL_ERR_NOMEM;
    w->current = calloc(1, sizeof *w->current);
    if (!w->current) {
        pthread_mutex_destroy(&w->handoff);
        return rc;
    }
    w->current->table = al_table_ref(table);
    w->table = table;
    w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!w->loop)
        goto fail;
    if (table->listen.proxy) {
        rc = al_listen_socket(table->listen.proxy, 1, &w->listen_fd);
        if (rc)
            goto fail;
        ev_io_init(&w->accept_w, on_accept, w->listen_fd, EV_READ);
        w->accept_w.data = w;
        ev_io_start(w->loop, &w->accept_w);
    }
    if (table->listen.tls && s->listener_ctx) {
        rc = al_listen_socket(table->listen.tls, 1, &w->tls_listen_fd);
        if (rc)
            goto fail;
        ev_io_init(&w->tls_accept_w, on_accept, w->tls_listen_fd, EV_READ);
        w->tls_accept_w.data = w;
        ev_io_start(w->loop, &w->tls_accept_w);
    }
    rc = al_upstream_pool_new(w->loop, &w->pool);
    if (rc)
        goto fail;
    rc = al_up_engine_new(w->loop, &w->native);
    if (rc)
        goto fail;
    al_up_engine_set_guard(w->native, egress_refuses, NULL);
    rc = al_resolver_new(w->loop, &w->resolver);
    if (rc)
        goto fail;
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_init(&w->accept_retry, on_accept_retry);
    w->accept_retry.data = w;
    ev_prepare_init(&w->reaper, on_prepare);
    w->reaper.data = w;
    ev_prepare_start(w->loop, &w->reaper);
    ev_timer_init(&w->kick_wake, on_kick_wake, 0., 0.);
    init_req_ctx(w);
    return AL_OK;
fail:
    al_worker_destroy(w);
    return rc;
}

static void *worker_main(void *arg)
{
    al_worker *w = arg;
    atomic_fetch_add(&w->server->workers_running, 1);
    ev_run(w->loop, 0);
    /* Whatever is still open after the drain deadline is cut now. */
    for (al_conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        al_conn_close(c, 0);
    }
    reap(w);
    atomic_fetch_sub(&w->server->workers_running, 1);
    return NULL;
}

int al_worker_start(al_worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? AL_OK : AL_ERR_IO;
}

void al_worker_post_table(al_worker *w, al_table *t)
{
    pthread_mutex_lock(&w->handoff);
    al_table *old = w->pending;
    w->pending = al_table_ref(t);
    pthread_mutex_unlock(&w->handoff);
    al_table_unref(old); /* an unclaimed older snapshot */
    ev_async_send(w->loop, &w->wake);
}

void al_worker_post_stop(al_worker *w)
{
    pthread_mutex_lock(&w->handoff);
    w->stop_requested = 1;
    pthread_mutex_unlock(&w->handoff);
    ev_async_send(w->loop, &w->wake);
}

void al_worker_join(al_worker *w)
{
    pthread_join(w->thread, NULL);
}

void al_worker_destroy(al_worker *w)
{
    al_req_ctx_release(&w->rctx); /* while its loop lives (the start-record timer) */
    al_oauth2_src_free(w->oauth2);  /* cancels what waits for a token */
    w->oauth2 = NULL;
    al_oauth2_3lo_free(w->oauth2_3lo); /* cancels what waits for a user's token or page */
    w->oauth2_3lo = NULL;
    al_iam_credsrc_free(&w->rctx.cred[AL_AUTH_IAM]);
    if (w->resolver)
        al_resolver_free(w->resolver);
    if (w->pool)
        al_upstream_pool_free(w->pool);
    al_up_engine_free(w->native);
    w->native = NULL;
    w->resolver = NULL;
    w->pool = NULL;
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    if (w->tls_listen_fd >= 0)
        close(w->tls_listen_fd);
    w->listen_fd = w->tls_listen_fd = -1;
    if (w->loop)
        ev_loop_destroy(w->loop);
    w->loop = NULL;
    al_table_unref(w->pending);
    while (w->retired) { /* every request is gone by now */
        al_worker_table *r = w->retired;
        w->retired = r->next;
        al_table_unref(r->table);
        free(r);
    }
    if (w->current) {
        al_table_unref(w->current->table);
        free(w->current);
    }
    w->current = NULL;
    w->pending = w->table = NULL;
    pthread_mutex_destroy(&w->handoff);
}
