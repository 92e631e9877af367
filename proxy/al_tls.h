/* al_tls: airlock's local CA, the leaf certificates it issues for TLS interception,
 * and the server-side TLS contexts (OpenSSL 3).
 *
 * - `airlock ca init` creates <state_dir>/ca.key (ECDSA P-256, mode 0600) and
 *   <state_dir>/ca.crt. The proxy loads them with al_ca_load().
 * - Leaves are issued on demand for the SNI name of an intercepted CONNECT tunnel
 *   (or the CONNECT authority when the client sends no SNI), signed by the CA, and
 *   kept in a bounded LRU cache shared by all workers (one small mutex; a hit does
 *   no signing).
 * - Contexts allow TLS 1.2 and 1.3 only, modern ciphers, session resumption, and
 *   ALPN "h2" / "http/1.1" (the connection reads the result with
 *   SSL_get0_alpn_selected()).
 *
 * Ownership: al_ca is shared read-mostly by all workers and freed after them. */
#ifndef AL_TLS_H
#define AL_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

typedef struct al_ca al_ca;

/* Creates the CA in state_dir (mkdir 0700 if needed). AL_ERR_EXISTS if there is one
 * and `force` is 0. */
int al_ca_init(const char *state_dir, int force);
/* Loads ca.key/ca.crt; refuses a key file readable by group or others (AL_ERR_PERM). */
int al_ca_load(const char *state_dir, size_t cache_capacity, al_ca **out);
void al_ca_free(al_ca *ca);
/* Path of the CA certificate file (static storage inside ca). */
const char *al_ca_cert_path(const al_ca *ca);

/* Context for intercepted tunnels: its certificate callback picks the leaf for the
 * client's SNI, falling back to the name set with al_tls_set_intercept_name(). */
SSL_CTX *al_tls_intercept_ctx_new(al_ca *ca);
/* Before SSL_accept on an intercepted tunnel: the CONNECT authority's host, used for
 * the leaf when the client sends no SNI, and checked against the SNI (a mismatch
 * fails the handshake: a tunnel is for one host). */
int al_tls_set_intercept_name(SSL *ssl, const char *host);

/* Context for the HTTPS proxy listener (listen.tls): cert_file/key_file when given,
 * else a leaf issued by the CA for `server_name` (e.g. "localhost" / "127.0.0.1"). */
SSL_CTX *al_tls_listener_ctx_new(al_ca *ca, const char *cert_file, const char *key_file,
                                 const char *server_name);

#endif
