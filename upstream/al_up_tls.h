/* al_up_tls: the transport under an upstream connection — a non-blocking TCP socket,
 * plain or wrapped in OpenSSL TLS — with nothing of HTTP in it. A protocol codec
 * (HTTP/1.1 or HTTP/2) reads and writes through it and asks which
 * event it waits for.
 *
 * TLS: one SSL_CTX per CA source (a target's ca_file, or the system CAs) per worker,
 * verification always on (chain and host name, SNI unless the name is an IP
 * literal), TLS 1.2 at least, ALPN offering what the caller asks ("h2" and/or
 * "http/1.1") and session resumption through the
 * caller's per-host session slot. */
#ifndef AL_UP_TLS_H
#define AL_UP_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct al_up_tls_cache al_up_tls_cache; /* SSL_CTXs by CA file, per worker */

int al_up_tls_cache_new(al_up_tls_cache **out);
void al_up_tls_cache_free(al_up_tls_cache *c);
/* The context for ca_file (NULL: the system CAs), made on first use. NULL when the
 * CA file cannot be loaded (*why says so). */
SSL_CTX *al_up_tls_ctx(al_up_tls_cache *c, const char *ca_file, const char **why);

typedef struct al_up_io {
    int fd;
    SSL *ssl;              /* NULL: plain TCP */
    SSL_SESSION **session; /* the host's resumption slot (may be NULL) */
    int want;              /* EV_READ / EV_WRITE the last call waits for */
    int handshaken;
    char wbuf[16384]; /* TLS: what SSL_write was given (retried as is) */
    size_t wlen;
    int alpn_h2; /* the server chose h2 */
} al_up_io;

/* Starts a non-blocking connect to sa. AL_OK (in progress or done) or AL_ERR_IO
 * with errno. */
int al_up_io_connect(al_up_io *io, const struct sockaddr *sa, socklen_t len);
/* 1 when the TCP connect completed, 0 still waiting, AL_ERR_IO failed (errno). */
int al_up_io_connected(al_up_io *io);
/* Wraps io in TLS for name (SNI + verification). alpn: wire-format list. */
int al_up_io_tls(al_up_io *io, SSL_CTX *ctx, const char *name, const unsigned char *alpn,
                 size_t alpn_len, SSL_SESSION **session);
/* Drives the handshake: 1 done, 0 waiting (io->want), AL_ERR_CRYPTO failed with
 * why (the verification error when there is one). */
int al_up_io_handshake(al_up_io *io, char *why, size_t why_len);
/* Bytes read (> 0), 0 at the peer's end, AL_ERR_AGAIN, or AL_ERR_IO. */
ssize_t al_up_io_read(al_up_io *io, char *buf, size_t cap);
/* Bytes of iov[0..n) taken (> 0), AL_ERR_AGAIN, or AL_ERR_IO. Plain TCP: one writev.
 * TLS: copied into one record (up to 16 KiB) and retried as is after AGAIN. */
ssize_t al_up_io_writev(al_up_io *io, const struct iovec *iov, int n);
/* 1 when an idle connection is still usable: no byte and no end waiting on it. */
int al_up_io_alive(al_up_io *io);
void al_up_io_close(al_up_io *io);

#endif
