/*
 * bench_proxy_tlsload: a small HTTPS load generator that can go through CONNECT, for
 * bench/run-tls-bench.sh (h2load and wrk cannot send CONNECT, so every peer is driven
 * by this one tool and the client's cost is the same for all of them).
 *
 * Per connection: TCP connect to --addr; optionally "CONNECT host:port" and its 200;
 * a TLS client handshake (SNI, verification against --cafile, ALPN http/1.1, never a
 * resumed session); then --requests keep-alive HTTP/1.1 GETs, each response read whole
 * (Content-Length or chunked); then close and start over. --requests 1 measures new
 * handshakes, a large --requests measures requests on kept-alive tunnels, --requests 0
 * stops after the handshake.
 *
 * Invariants: --threads threads, each running --conns connections as non-blocking state
 * machines in one poll() loop; nothing is shared between threads but the start/stop
 * flags and the results merged at the end. Every buffer the peer fills has a fixed
 * limit (response head 16 KiB, CONNECT reply 4 KiB); a peer exceeding it is an error
 * and the connection is dropped. Only completions inside the measuring window (after
 * --warmup) are counted. Latency: per request in request mode, per whole connection
 * (TCP + CONNECT + handshake + request) when --requests is 0 or 1; kept in a
 * log-linear histogram (~1.5 % resolution) so memory does not grow with the run.
 *
 * Not airlock code: it only needs OpenSSL and pthreads.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TL_HEAD_MAX    16384
#define TL_CONNECT_MAX 4096
#define TL_MAX_CONNS   4096
#define TL_HOSTS_MAX   1024
#define TL_HIST_SUB    64 /* sub-buckets per power of two */
#define TL_HIST_N      (TL_HIST_SUB + 58 * TL_HIST_SUB)

struct tl_opts {
    struct sockaddr_in addr;
    const char *connect_hosts[TL_HOSTS_MAX]; /* "host:port" for CONNECT, cycled */
    int n_connect;
    const char *sni;         /* NULL: the host part of the CONNECT target */
    const char *host_header; /* NULL: the CONNECT target */
    const char *cafile;
    const char *path;
    const char *ciphersuites; /* TLS 1.3 suites offered, in order */
    int threads, conns;
    long requests;
    double duration, warmup;
    int once;            /* one connection, one request, print the body */
    int max_conns_total; /* stop after this many completed connections (0 = by time) */
};

enum tl_state {
    TL_TCP,
    TL_CONNECT_SEND,
    TL_CONNECT_RECV,
    TL_HANDSHAKE,
    TL_REQ_SEND,
    TL_RESP_HEAD,
    TL_RESP_BODY,
    TL_SHUTDOWN,
};

enum tl_chunk { CK_SIZE, CK_EXT, CK_DATA, CK_DATA_CR, CK_DATA_LF, CK_TRAILER };

struct tl_conn {
    int fd;
    SSL *ssl;
    enum tl_state st;
    short want; /* poll events */
    char buf[TL_HEAD_MAX];
    size_t len, off;
    long reqs_done;
    uint64_t t_conn, t_req; /* ns */
    const char *target;     /* CONNECT target for this connection */
    /* response body */
    int chunked;
    long long remaining; /* content-length left, or chunk bytes left */
    enum tl_chunk ck;
    int ck_line; /* chars on the current trailer line */
    int status, close_after;
    char *body_out; /* --once: the body goes here (bounded) */
    size_t body_len;
};

struct tl_stats {
    uint64_t hist[TL_HIST_N];
    uint64_t conns_done, handshakes, requests, errors, bad_status;
    char proto[128];
};

struct tl_thread {
    pthread_t tid;
    int idx;
    const struct tl_opts *o;
    SSL_CTX *ctx;
    struct tl_stats s;
    char last_err[256];
};

static atomic_int g_measuring, g_stop;
static atomic_uint_fast64_t g_conns_total;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int hist_index(uint64_t us)
{
    if (us < TL_HIST_SUB)
        return (int)us;
    int e = 63 - __builtin_clzll(us); /* >= 6 */
    int idx = TL_HIST_SUB + (e - 6) * TL_HIST_SUB + (int)((us >> (e - 6)) & (TL_HIST_SUB - 1));
    return idx < TL_HIST_N ? idx : TL_HIST_N - 1;
}

static double hist_value_us(int idx)
{
    if (idx < TL_HIST_SUB)
        return idx;
    int e = (idx - TL_HIST_SUB) / TL_HIST_SUB + 6;
    int m = (idx - TL_HIST_SUB) % TL_HIST_SUB;
    /* middle of the bucket */
    return ((double)(TL_HIST_SUB + m) + 0.5) * (double)(1ull << (e - 6));
}

static double hist_pct(const uint64_t *h, double p)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i < TL_HIST_N; i++)
        total += h[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(p * (double)total);
    if (want < 1)
        want = 1;
    for (int i = 0; i < TL_HIST_N; i++) {
        acc += h[i];
        if (acc >= want)
            return hist_value_us(i);
    }
    return hist_value_us(TL_HIST_N - 1);
}

static void conn_close(struct tl_conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void set_err(struct tl_thread *t, const char *what, const struct tl_conn *c)
{
    unsigned long e = ERR_peek_last_error();
    char es[160] = "";
    if (e)
        ERR_error_string_n(e, es, sizeof(es));
    snprintf(t->last_err, sizeof(t->last_err), "%s (state %d%s%s%s%s)", what, (int)c->st,
             errno ? ", " : "", errno ? strerror(errno) : "", e ? ", " : "", es);
    ERR_clear_error();
}

static int conn_start(struct tl_thread *t, struct tl_conn *c, uint64_t seq)
{
    const struct tl_opts *o = t->o;
    memset(c, 0, offsetof(struct tl_conn, body_out));
    c->body_len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->t_conn = now_ns();
    c->target = o->n_connect ? o->connect_hosts[seq % (uint64_t)o->n_connect] : NULL;
    if (connect(c->fd, (const struct sockaddr *)&o->addr, sizeof(o->addr)) < 0 &&
        errno != EINPROGRESS)
        return -1;
    c->st = TL_TCP;
    c->want = POLLOUT;
    return 0;
}

/* The host part of "host:port" (or "[v6]:port") into out. */
static void host_of(const char *target, char *out, size_t n)
{
    const char *end = strrchr(target, ':');
    size_t l = end ? (size_t)(end - target) : strlen(target);
    if (l >= 2 && target[0] == '[') {
        target++;
        l -= 2;
    }
    if (l >= n)
        l = n - 1;
    memcpy(out, target, l);
    out[l] = 0;
}

static int tls_begin(struct tl_thread *t, struct tl_conn *c)
{
    const struct tl_opts *o = t->o;
    char host[256];
    c->ssl = SSL_new(t->ctx);
    if (!c->ssl)
        return -1;
    SSL_set_fd(c->ssl, c->fd);
    if (o->sni)
        snprintf(host, sizeof(host), "%s", o->sni);
    else if (c->target)
        host_of(c->target, host, sizeof(host));
    else
        snprintf(host, sizeof(host), "localhost");
    struct in_addr ia;
    if (inet_pton(AF_INET, host, &ia) != 1)
        SSL_set_tlsext_host_name(c->ssl, host);
    SSL_set1_host(c->ssl, host); /* verify the leaf names this host (DNS or IP) */
    SSL_set_connect_state(c->ssl);
    c->st = TL_HANDSHAKE;
    return 0;
}

static void req_begin(struct tl_thread *t, struct tl_conn *c)
{
    const struct tl_opts *o = t->o;
    const char *host = o->host_header ? o->host_header : (c->target ? c->target : "localhost");
    int n = snprintf(c->buf, sizeof(c->buf),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tlsload\r\n\r\n", o->path, host);
    c->len = (size_t)n;
    c->off = 0;
    c->t_req = now_ns();
    c->st = TL_REQ_SEND;
}

/* Response head in c->buf[0..hlen): status, Content-Length / chunked, Connection. */
static int parse_head(struct tl_conn *c, size_t hlen)
{
    c->buf[hlen - 1] = 0;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0 || hlen < 12)
        return -1;
    c->status = atoi(c->buf + 9);
    c->chunked = 0;
    c->remaining = -1;
    c->close_after = c->buf[7] == '0';
    for (char *line = strstr(c->buf, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (!strncasecmp(line, "content-length:", 15))
            c->remaining = strtoll(line + 15, NULL, 10);
        else if (!strncasecmp(line, "transfer-encoding:", 18) && strcasestr(line, "chunked"))
            c->chunked = 1;
        else if (!strncasecmp(line, "connection:", 11)) {
            char *v = line + 11;
            while (*v == ' ')
                v++;
            if (!strncasecmp(v, "close", 5))
                c->close_after = 1;
        }
    }
    if (c->status == 204 || c->status == 304)
        c->remaining = 0;
    if (c->chunked) {
        c->ck = CK_SIZE;
        c->remaining = 0;
    } else if (c->remaining < 0) {
        return -1; /* read-until-close bodies are not supported: keep-alive only */
    }
    return 0;
}

static void body_keep(struct tl_conn *c, const char *p, size_t n)
{
    if (!c->body_out)
        return;
    size_t room = 65535 - c->body_len;
    if (n > room)
        n = room;
    memcpy(c->body_out + c->body_len, p, n);
    c->body_len += n;
    c->body_out[c->body_len] = 0;
}

/* Consumes body bytes; returns 1 when the response is complete, 0 for more, -1 bad. */
static int body_feed(struct tl_conn *c, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    if (!c->chunked) {
        size_t take = (long long)n < c->remaining ? n : (size_t)c->remaining;
        body_keep(c, p, take);
        c->remaining -= (long long)take;
        *used = take;
        return c->remaining == 0;
    }
    while (i < n) {
        char ch = p[i];
        switch (c->ck) {
        case CK_SIZE:
            if (ch >= '0' && ch <= '9')
                c->remaining = c->remaining * 16 + (ch - '0');
            else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
                c->remaining = c->remaining * 16 + ((ch | 0x20) - 'a' + 10);
            else if (ch == '\n')
                c->ck = c->remaining ? CK_DATA : CK_TRAILER;
            else
                c->ck = CK_EXT;
            if (c->remaining > (1ll << 40))
                return -1;
            i++;
            break;
        case CK_EXT:
            if (ch == '\n')
                c->ck = c->remaining ? CK_DATA : CK_TRAILER;
            i++;
            break;
        case CK_DATA: {
            size_t take = (long long)(n - i) < c->remaining ? n - i : (size_t)c->remaining;
            body_keep(c, p + i, take);
            c->remaining -= (long long)take;
            i += take;
            if (!c->remaining)
                c->ck = CK_DATA_CR;
            break;
        }
        case CK_DATA_CR:
        case CK_DATA_LF:
            if (ch == '\n') {
                c->ck = CK_SIZE;
                c->remaining = 0;
            }
            i++;
            break;
        case CK_TRAILER:
            i++;
            if (ch == '\n') {
                if (c->ck_line == 0) {
                    *used = i;
                    return 1;
                }
                c->ck_line = 0;
            } else if (ch != '\r') {
                c->ck_line++;
            }
            break;
        }
    }
    *used = i;
    return 0;
}

static void record(struct tl_thread *t, uint64_t start_ns)
{
    uint64_t us = (now_ns() - start_ns) / 1000;
    t->s.hist[hist_index(us)]++;
}

/* One completed response on c; returns 1 to keep the connection, 0 to close it. */
static int resp_done(struct tl_thread *t, struct tl_conn *c)
{
    const struct tl_opts *o = t->o;
    int counting = atomic_load(&g_measuring);
    c->reqs_done++;
    if (counting) {
        t->s.requests++;
        if (c->status != 200)
            t->s.bad_status++;
        if (o->requests > 1)
            record(t, c->t_req);
    }
    if (c->close_after || c->reqs_done >= o->requests)
        return 0;
    return 1;
}

/* Drives c as far as it goes without blocking; returns 0 (wait for c->want), 1 (the
 * connection finished normally), -1 (error). */
static int conn_step(struct tl_thread *t, struct tl_conn *c)
{
    const struct tl_opts *o = t->o;
    for (;;) {
        errno = 0;
        switch (c->st) {
        case TL_TCP: {
            int err = 0;
            socklen_t l = sizeof(err);
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
                errno = err;
                set_err(t, "tcp connect", c);
                return -1;
            }
            if (c->target) {
                c->len = (size_t)snprintf(c->buf, sizeof(c->buf),
                                          "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", c->target,
                                          c->target);
                c->off = 0;
                c->st = TL_CONNECT_SEND;
            } else if (tls_begin(t, c) < 0) {
                return -1;
            }
            break;
        }
        case TL_CONNECT_SEND: {
            ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN) {
                    c->want = POLLOUT;
                    return 0;
                }
                set_err(t, "send CONNECT", c);
                return -1;
            }
            c->off += (size_t)n;
            if (c->off == c->len) {
                c->len = 0;
                c->st = TL_CONNECT_RECV;
            }
            break;
        }
        case TL_CONNECT_RECV: {
            /* Peek, then take only up to the end of the reply: bytes after it belong to
             * TLS. Peeked bytes without the end are taken whole, so poll cannot spin. */
            ssize_t n = recv(c->fd, c->buf + c->len, TL_CONNECT_MAX - c->len, MSG_PEEK);
            if (n < 0 && errno == EAGAIN) {
                c->want = POLLIN;
                return 0;
            }
            if (n <= 0) {
                set_err(t, "CONNECT reply", c);
                return -1;
            }
            size_t from = c->len > 3 ? c->len - 3 : 0, upto = c->len + (size_t)n;
            char *end = memmem(c->buf + from, upto - from, "\r\n\r\n", 4);
            size_t take = end ? (size_t)(end - c->buf) + 4 - c->len : (size_t)n;
            if (recv(c->fd, c->buf + c->len, take, 0) != (ssize_t)take) {
                set_err(t, "CONNECT reply", c);
                return -1;
            }
            c->len += take;
            if (end) {
                c->buf[c->len] = 0;
                if (strncmp(c->buf, "HTTP/1.1 200", 12) && strncmp(c->buf, "HTTP/1.0 200", 12)) {
                    snprintf(t->last_err, sizeof(t->last_err), "CONNECT refused: %.80s", c->buf);
                    return -1;
                }
                if (tls_begin(t, c) < 0)
                    return -1;
            } else if (c->len >= TL_CONNECT_MAX) {
                snprintf(t->last_err, sizeof(t->last_err), "CONNECT reply too long");
                return -1;
            }
            break;
        }
        case TL_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    c->want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
                    return 0;
                }
                set_err(t, "TLS handshake", c);
                if (SSL_get_verify_result(c->ssl) != X509_V_OK)
                    snprintf(t->last_err, sizeof(t->last_err), "TLS verify: %s",
                             X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
                return -1;
            }
            if (atomic_load(&g_measuring))
                t->s.handshakes++;
            if (!t->s.proto[0]) {
                const unsigned char *alpn;
                unsigned alen;
                SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
                char grp[64] = "?";
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
                int nid = SSL_get_negotiated_group(c->ssl);
                if (nid)
                    snprintf(grp, sizeof(grp), "%s", OBJ_nid2sn(nid));
#endif
                snprintf(t->s.proto, sizeof(t->s.proto), "%s %s %s alpn=%.*s resumed=%d",
                         SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl), grp, (int)alen,
                         alen ? (const char *)alpn : "", SSL_session_reused(c->ssl));
            }
            if (o->requests == 0) {
                if (atomic_load(&g_measuring))
                    record(t, c->t_conn);
                return 1;
            }
            req_begin(t, c);
            break;
        }
        case TL_REQ_SEND: {
            size_t w = 0;
            int r = SSL_write_ex(c->ssl, c->buf + c->off, c->len - c->off, &w);
            if (!r) {
                int e = SSL_get_error(c->ssl, 0);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    c->want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
                    return 0;
                }
                set_err(t, "TLS write", c);
                return -1;
            }
            c->off += w;
            if (c->off == c->len) {
                c->len = 0;
                c->st = TL_RESP_HEAD;
            }
            break;
        }
        case TL_RESP_HEAD:
        case TL_RESP_BODY: {
            /* Bytes already buffered after the head (or a previous response) come first. */
            if (c->st == TL_RESP_HEAD && c->len > 0) {
                char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (end) {
                    size_t hlen = (size_t)(end - c->buf) + 4;
                    if (parse_head(c, hlen) < 0) {
                        snprintf(t->last_err, sizeof(t->last_err), "bad response head");
                        return -1;
                    }
                    memmove(c->buf, c->buf + hlen, c->len - hlen);
                    c->len -= hlen;
                    c->st = TL_RESP_BODY;
                    continue;
                }
                if (c->len >= sizeof(c->buf) - 1) {
                    snprintf(t->last_err, sizeof(t->last_err), "response head over %d bytes",
                             TL_HEAD_MAX);
                    return -1;
                }
            }
            if (c->st == TL_RESP_BODY) {
                size_t used = 0;
                int r = c->len ? body_feed(c, c->buf, c->len, &used) : 0;
                if (r < 0) {
                    snprintf(t->last_err, sizeof(t->last_err), "bad chunked body");
                    return -1;
                }
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
                if (r == 1 || (!c->chunked && c->remaining == 0)) {
                    if (!resp_done(t, c))
                        return 1;
                    if (c->len) {
                        snprintf(t->last_err, sizeof(t->last_err), "unrequested response bytes");
                        return -1;
                    }
                    req_begin(t, c);
                    continue;
                }
            }
            size_t got = 0;
            int r = SSL_read_ex(c->ssl, c->buf + c->len, sizeof(c->buf) - 1 - c->len, &got);
            if (!r) {
                int e = SSL_get_error(c->ssl, 0);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    c->want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
                    return 0;
                }
                set_err(t, "TLS read (peer closed mid-response?)", c);
                return -1;
            }
            c->len += got;
            break;
        }
        case TL_SHUTDOWN:
            return 1;
        }
    }
}

static void *thread_main(void *arg)
{
    struct tl_thread *t = arg;
    const struct tl_opts *o = t->o;
    int n = o->conns;
    struct tl_conn *cs = calloc((size_t)n, sizeof(*cs));
    struct pollfd *pf = calloc((size_t)n, sizeof(*pf));
    uint64_t seq = (uint64_t)t->idx * 1000003u;
    if (!cs || !pf)
        goto out;
    for (int i = 0; i < n; i++) {
        cs[i].fd = -1;
        if (o->once) {
            cs[i].body_out = malloc(65536);
            if (!cs[i].body_out)
                goto out;
            cs[i].body_out[0] = 0;
        }
    }
    for (int i = 0; i < n; i++) {
        if (conn_start(t, &cs[i], seq++) < 0) {
            t->s.errors++;
            conn_close(&cs[i]);
        }
    }
    while (!atomic_load(&g_stop)) {
        for (int i = 0; i < n; i++) {
            pf[i].fd = cs[i].fd;
            pf[i].events = cs[i].want;
            pf[i].revents = 0;
        }
        int r = poll(pf, (nfds_t)n, 100);
        if (r < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n && !atomic_load(&g_stop); i++) {
            struct tl_conn *c = &cs[i];
            if (c->fd >= 0 && !pf[i].revents)
                continue;
            int s = c->fd >= 0 ? conn_step(t, c) : -1;
            if (s == 0)
                continue;
            int counting = atomic_load(&g_measuring);
            if (s < 0) {
                if (counting)
                    t->s.errors++;
            } else {
                if (counting) {
                    t->s.conns_done++;
                    if (o->requests == 1)
                        record(t, c->t_conn);
                }
                uint64_t total = atomic_fetch_add(&g_conns_total, 1) + 1;
                if (o->once) {
                    if (c->status)
                        printf("%s", c->body_out);
                    atomic_store(&g_stop, 1);
                    break;
                }
                if (o->max_conns_total && total >= (uint64_t)o->max_conns_total) {
                    atomic_store(&g_stop, 1);
                    break;
                }
                if (c->ssl)
                    SSL_shutdown(c->ssl); /* one close_notify, not waiting for the peer's */
            }
            if (s < 0 && o->once) {
                atomic_store(&g_stop, 1);
                break;
            }
            conn_close(c);
            if (conn_start(t, c, seq++) < 0) {
                if (atomic_load(&g_measuring))
                    t->s.errors++;
                conn_close(c);
            }
        }
    }
out:
    if (cs) {
        for (int i = 0; i < n; i++) {
            conn_close(&cs[i]);
            free(cs[i].body_out);
        }
    }
    free(cs);
    free(pf);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_proxy_tlsload --addr IP:PORT --cafile PEM [--connect HOST:PORT]...\n"
               "         [--sni NAME] [--host-header H] [--path /p] [--threads N] [--conns M]\n"
               "         [--requests K] [--duration S] [--warmup S] [--total C] [--once]\n"
               "         [--ciphersuites LIST]\n"
               "  --connect    send CONNECT HOST:PORT first (repeat to cycle through names)\n"
               "  --requests   GETs per connection: 1 = handshake rate, 0 = handshake only,\n"
               "               large = requests on kept-alive connections (default 1)\n"
               "  --total      stop after C completed connections instead of --duration\n"
               "  --once       one connection, one request; print the response body\n"
               "  --ciphersuites  TLS 1.3 suites offered (default AES-128-GCM first)\n");
}

int main(int argc, char **argv)
{
    static struct tl_opts o;
    o.path = "/";
    o.ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    o.threads = 1;
    o.conns = 1;
    o.requests = 1;
    o.duration = 5;
    const char *addr = NULL;
    static const struct option lo[] = {
        {"addr", 1, 0, 'a'},     {"connect", 1, 0, 'C'},
        {"sni", 1, 0, 's'},      {"host-header", 1, 0, 'H'},
        {"cafile", 1, 0, 'c'},   {"path", 1, 0, 'p'},
        {"threads", 1, 0, 't'},  {"conns", 1, 0, 'm'},
        {"requests", 1, 0, 'k'}, {"duration", 1, 0, 'd'},
        {"warmup", 1, 0, 'w'},   {"once", 0, 0, 'o'},
        {"total", 1, 0, 'T'},    {"ciphersuites", 1, 0, 'S'},
        {"help", 0, 0, 'h'},     {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'a':
            addr = optarg;
            break;
        case 'C':
            if (o.n_connect >= TL_HOSTS_MAX) {
                fprintf(stderr, "tlsload: at most %d --connect\n", TL_HOSTS_MAX);
                return 2;
            }
            o.connect_hosts[o.n_connect++] = optarg;
            break;
        case 's':
            o.sni = optarg;
            break;
        case 'H':
            o.host_header = optarg;
            break;
        case 'c':
            o.cafile = optarg;
            break;
        case 'p':
            o.path = optarg;
            break;
        case 't':
            o.threads = atoi(optarg);
            break;
        case 'm':
            o.conns = atoi(optarg);
            break;
        case 'k':
            o.requests = atol(optarg);
            break;
        case 'd':
            o.duration = atof(optarg);
            break;
        case 'w':
            o.warmup = atof(optarg);
            break;
        case 'o':
            o.once = 1;
            break;
        case 'T':
            o.max_conns_total = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!addr || !o.cafile || o.threads < 1 || o.threads > 256 || o.conns < 1 ||
        o.threads * o.conns > TL_MAX_CONNS || o.requests < 0 || o.duration <= 0 || optind != argc) {
        usage(stderr);
        return 2;
    }
    {
        char ip[64];
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof(ip)) {
            usage(stderr);
            return 2;
        }
        memcpy(ip, addr, (size_t)(colon - addr));
        ip[colon - addr] = 0;
        o.addr.sin_family = AF_INET;
        o.addr.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, ip, &o.addr.sin_addr) != 1) {
            fprintf(stderr, "tlsload: --addr wants IPv4:PORT\n");
            return 2;
        }
    }
    if (o.once) {
        o.threads = o.conns = 1;
        o.requests = 1;
    }

    int rc = 1;
    struct tl_thread *ts = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        goto out;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* every handshake is a full one: no session cache, no tickets */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    /* One suite for every peer (servers follow the client's order unless they prefer
     * their own), so the record cost is the same for all of them. */
    if (SSL_CTX_set_ciphersuites(ctx, o.ciphersuites) != 1) {
        fprintf(stderr, "tlsload: bad --ciphersuites\n");
        goto out;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    if (SSL_CTX_load_verify_locations(ctx, o.cafile, NULL) != 1) {
        fprintf(stderr, "tlsload: cannot load CA file %s\n", o.cafile);
        goto out;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    ts = calloc((size_t)o.threads, sizeof(*ts));
    if (!ts)
        goto out;
    if (o.once || o.max_conns_total || o.warmup <= 0)
        atomic_store(&g_measuring, 1);
    uint64_t t0 = now_ns(), t1;
    for (int i = 0; i < o.threads; i++) {
        ts[i].idx = i;
        ts[i].o = &o;
        ts[i].ctx = ctx;
        if (pthread_create(&ts[i].tid, NULL, thread_main, &ts[i]) != 0) {
            atomic_store(&g_stop, 1);
            o.threads = i;
            break;
        }
    }
    if (!o.once && !o.max_conns_total) {
        if (o.warmup > 0) {
            struct timespec w = {(time_t)o.warmup, (long)((o.warmup - (long)o.warmup) * 1e9)};
            nanosleep(&w, NULL);
            atomic_store(&g_measuring, 1);
            t0 = now_ns();
        }
        struct timespec d = {(time_t)o.duration, (long)((o.duration - (long)o.duration) * 1e9)};
        nanosleep(&d, NULL);
        atomic_store(&g_stop, 1);
    } else {
        /* --once / --total end themselves; bound them by --duration anyway */
        uint64_t deadline = t0 + (uint64_t)(o.duration * 1e9);
        while (!atomic_load(&g_stop) && now_ns() < deadline) {
            struct timespec s = {0, 1000000};
            nanosleep(&s, NULL);
        }
        atomic_store(&g_stop, 1);
    }
    t1 = now_ns();
    for (int i = 0; i < o.threads; i++)
        pthread_join(ts[i].tid, NULL);

    struct tl_stats all;
    memset(&all, 0, sizeof(all));
    const char *err = "";
    for (int i = 0; i < o.threads; i++) {
        for (int b = 0; b < TL_HIST_N; b++)
            all.hist[b] += ts[i].s.hist[b];
        all.conns_done += ts[i].s.conns_done;
        all.handshakes += ts[i].s.handshakes;
        all.requests += ts[i].s.requests;
        all.errors += ts[i].s.errors;
        all.bad_status += ts[i].s.bad_status;
        if (!all.proto[0])
            memcpy(all.proto, ts[i].s.proto, sizeof(all.proto));
        if (ts[i].last_err[0])
            err = ts[i].last_err;
    }
    double secs = (double)(t1 - t0) / 1e9;
    if (o.once) {
        rc = all.requests == 1 && all.bad_status == 0 ? 0 : 1;
        if (rc)
            fprintf(stderr, "tlsload: failed: %s\n", err[0] ? err : "no response");
        goto out;
    }
    printf("RESULT secs=%.3f conns=%llu handshakes=%llu requests=%llu errors=%llu "
           "bad_status=%llu hs_per_s=%.1f req_per_s=%.1f p50_ms=%.3f p99_ms=%.3f\n",
           secs, (unsigned long long)all.conns_done, (unsigned long long)all.handshakes,
           (unsigned long long)all.requests, (unsigned long long)all.errors,
           (unsigned long long)all.bad_status, (double)all.handshakes / secs,
           (double)all.requests / secs, hist_pct(all.hist, 0.50) / 1000,
           hist_pct(all.hist, 0.99) / 1000);
    printf("TLS %s\n", all.proto[0] ? all.proto : "none");
    if (err[0])
        printf("LAST_ERROR %s\n", err);
    rc = all.requests || all.handshakes ? 0 : 1;
out:
    free(ts);
    SSL_CTX_free(ctx);
    return rc;
}
