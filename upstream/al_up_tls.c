/* al_up_tls: plain and TLS transport for upstream connections (see al_up_tls.h). */
#include "al_up_tls.h"
#include "common/al_err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct ctx_ent {
    struct ctx_ent *next;
    SSL_CTX *ctx;
    char *ca_file; /* NULL: system CAs */
} ctx_ent;

struct al_up_tls_cache {
    ctx_ent *list;
};

int al_up_tls_cache_new(al_up_tls_cache **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? AL_OK : AL_ERR_NOMEM;
}

void al_up_tls_cache_free(al_up_tls_cache *c)
{
    if (!c)
        return;
    while (c->list) {
        ctx_ent *e = c->list;
        c->list = e->next;
        SSL_CTX_free(e->ctx);
        free(e->ca_file);
        free(e);
    }
    free(c);
}

/* TLS 1.3 tickets arrive after the handshake: the newest one goes to the host's slot. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    al_up_io *io = SSL_get_app_data(ssl);
    if (!io || !io->session)
        return 0;
    if (*io->session)
        SSL_SESSION_free(*io->session);
    *io->session = sess;
    return 1; /* the slot keeps the reference */
}

SSL_CTX *al_up_tls_ctx(al_up_tls_cache *c, const char *ca_file, const char **why)
{
    for (ctx_ent *e = c->list; e; e = e->next)
        if ((!e->ca_file && !ca_file) || (e->ca_file && ca_file && !strcmp(e->ca_file, ca_file)))
            return e->ctx;
    *why = "out of memory";
    ctx_ent *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    if (ca_file && !(e->ca_file = strdup(ca_file)))
        goto fail;
    if (!(e->ctx = SSL_CTX_new(TLS_client_method())))
        goto fail;
    SSL_CTX_set_min_proto_version(e->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(e->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(e->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(e->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(e->ctx, new_session_cb);
    int ok = ca_file ? SSL_CTX_load_verify_locations(e->ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(e->ctx);
    if (ok != 1) {
        *why = "the CA file could not be loaded";
        goto fail;
    }
    e->next = c->list;
    c->list = e;
    return e->ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(e->ctx);
    free(e->ca_file);
    free(e);
    return NULL;
}

int al_up_io_connect(al_up_io *io, const struct sockaddr *sa, socklen_t len)
{
    io->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (io->fd < 0)
        return AL_ERR_IO;
    int one = 1;
    setsockopt(io->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(io->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (connect(io->fd, sa, len) == 0 || errno == EINPROGRESS) {
        io->want = EV_WRITE;
        return AL_OK;
    }
    int e = errno;
    close(io->fd);
    io->fd = -1;
    errno = e;
    return AL_ERR_IO;
}

int al_up_io_connected(al_up_io *io)
{
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
        return AL_ERR_IO;
    if (err == EINPROGRESS || err == EALREADY)
        return 0;
    if (err) {
        errno = err;
        return AL_ERR_IO;
    }
    return 1;
}

static int is_ip_literal(const char *name)
{
    unsigned char b[16];
    return inet_pton(AF_INET, name, b) == 1 || inet_pton(AF_INET6, name, b) == 1;
}

int al_up_io_tls(al_up_io *io, SSL_CTX *ctx, const char *name, const unsigned char *alpn,
                 size_t alpn_len, SSL_SESSION **session)
{
    io->ssl = SSL_new(ctx);
    if (!io->ssl)
        return AL_ERR_NOMEM;
    SSL_set_app_data(io->ssl, io);
    io->session = session;
    int ok = SSL_set_fd(io->ssl, io->fd) == 1;
    if (is_ip_literal(name)) {
        ok &= X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(io->ssl), name) == 1;
    } else {
        ok &= SSL_set_tlsext_host_name(io->ssl, name) == 1;
        ok &= SSL_set1_host(io->ssl, name) == 1;
        X509_VERIFY_PARAM_set_hostflags(SSL_get0_param(io->ssl),
                                        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    if (alpn_len)
        ok &= SSL_set_alpn_protos(io->ssl, alpn, (unsigned)alpn_len) == 0;
    if (session && *session)
        SSL_set_session(io->ssl, *session); /* a failed resumption is a full handshake */
    SSL_set_connect_state(io->ssl);
    if (!ok) {
        ERR_clear_error();
        return AL_ERR_CRYPTO;
    }
    return AL_OK;
}

/* Maps SSL_get_error to want / AGAIN / failure. */
static int ssl_wait(al_up_io *io, int ret)
{
    int e = SSL_get_error(io->ssl, ret);
    if (e == SSL_ERROR_WANT_READ) {
        io->want = EV_READ;
        return AL_ERR_AGAIN;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        io->want = EV_WRITE;
        return AL_ERR_AGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    return AL_ERR_IO;
}

int al_up_io_handshake(al_up_io *io, char *why, size_t why_len)
{
    ERR_clear_error();
    int ret = SSL_do_handshake(io->ssl);
    if (ret == 1) {
        io->handshaken = 1;
        const unsigned char *p = NULL;
        unsigned n = 0;
        SSL_get0_alpn_selected(io->ssl, &p, &n);
        io->alpn_h2 = n == 2 && memcmp(p, "h2", 2) == 0;
        io->want = EV_READ;
        return 1;
    }
    int rc = ssl_wait(io, ret);
    if (rc == AL_ERR_AGAIN)
        return 0;
    long v = SSL_get_verify_result(io->ssl);
    unsigned long e = ERR_peek_error();
    if (v != X509_V_OK)
        snprintf(why, why_len, "certificate verification failed: %s",
                 X509_verify_cert_error_string(v));
    else if (e)
        snprintf(why, why_len, "TLS handshake failed: %s", ERR_reason_error_string(e));
    else
        snprintf(why, why_len, "TLS handshake failed: the connection closed");
    ERR_clear_error();
    return AL_ERR_CRYPTO;
}

ssize_t al_up_io_read(al_up_io *io, char *buf, size_t cap)
{
    if (!io->ssl) {
        ssize_t n = read(io->fd, buf, cap);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            io->want = EV_READ;
            return AL_ERR_AGAIN;
        }
        return AL_ERR_IO;
    }
    ERR_clear_error();
    int n = SSL_read(io->ssl, buf, (int)(cap > 1 << 30 ? 1 << 30 : cap));
    if (n > 0)
        return n;
    int rc = ssl_wait(io, n);
    ERR_clear_error();
    if (rc == AL_ERR_IO && SSL_get_error(io->ssl, n) == SSL_ERROR_SYSCALL && errno == 0)
        return 0; /* EOF without close_notify: the end, the framing decides */
    return rc;
}

ssize_t al_up_io_writev(al_up_io *io, const struct iovec *iov, int n)
{
    if (!io->ssl) {
        ssize_t w = writev(io->fd, iov, n);
        if (w >= 0)
            return w;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            io->want = EV_WRITE;
            return AL_ERR_AGAIN;
        }
        return AL_ERR_IO;
    }
    if (!io->wlen) { /* a new record: as much of iov as fits */
        for (int i = 0; i < n && io->wlen < sizeof io->wbuf; i++) {
            size_t k = iov[i].iov_len;
            if (k > sizeof io->wbuf - io->wlen)
                k = sizeof io->wbuf - io->wlen;
            memcpy(io->wbuf + io->wlen, iov[i].iov_base, k);
            io->wlen += k;
        }
    }
    /* after AGAIN the same bytes go again (OpenSSL wants the same buffer content) */
    ERR_clear_error();
    int w = SSL_write(io->ssl, io->wbuf, (int)io->wlen);
    if (w > 0) {
        size_t took = (size_t)w;
        memmove(io->wbuf, io->wbuf + took, io->wlen - took);
        io->wlen -= took;
        return w;
    }
    int rc = ssl_wait(io, w);
    ERR_clear_error();
    return rc == 0 ? AL_ERR_IO : rc;
}

int al_up_io_alive(al_up_io *io)
{
    char c;
    ssize_t n = recv(io->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void al_up_io_close(al_up_io *io)
{
    if (io->ssl) {
        SSL_set_app_data(io->ssl, NULL);
        SSL_free(io->ssl);
        io->ssl = NULL;
    }
    if (io->fd >= 0)
        close(io->fd);
    io->fd = -1;
    OPENSSL_cleanse(io->wbuf, io->wlen);
    io->wlen = 0;
}
