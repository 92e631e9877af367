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
/* The CA certificate in use, as PEM (public part only; never the key), in a
 * malloc'd NUL-terminated buffer the caller frees. */
int al_ca_cert_pem(const al_ca *ca, char **out, size_t *len);

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

/* ---- additions (helper "tls"): name constraints, direct leaf access, test hooks ---- */

#include <time.h>

/* Leaves are short-lived so a leaked leaf (or a CA key leaked for a short time) is
 * worth little: valid AL_CA_LEAF_LIFETIME_S, backdated AL_CA_LEAF_BACKDATE_S for
 * clock skew; the cache re-issues after AL_CA_LEAF_RENEW_S, so a leaf handed to a
 * client always has at least half its life left. */
#define AL_CA_LEAF_LIFETIME_S (24 * 3600)
#define AL_CA_LEAF_BACKDATE_S (5 * 60)
#define AL_CA_LEAF_RENEW_S    (12 * 3600)

/* al_ca_init() with an optional name constraint: when n_permit > 0 the CA gets a
 * critical nameConstraints extension permitting only these hosts (a DNS name also
 * permits its subdomains; an IP literal permits that one address) plus localhost,
 * 127.0.0.1 and ::1 (the HTTPS listener's own names). A leaked CA key can then not
 * impersonate any other site to clients that enforce name constraints (OpenSSL,
 * so curl, Python and Node, all do). AL_ERR_INVAL for a malformed host. */
int al_ca_init_ex(const char *state_dir, int force, const char *const *permit_hosts,
                  size_t n_permit);

/* The leaf for `host` (DNS name or IP literal, brackets allowed), from the cache or
 * freshly signed. *out gets a new reference: the caller X509_free()s it. Its key is
 * al_ca_leaf_key(). AL_ERR_INVAL for a malformed name, AL_ERR_PERM when the CA's
 * name constraints do not permit it. */
int al_ca_leaf(al_ca *ca, const char *host, X509 **out);
/* The one leaf key shared by every leaf of this CA (borrowed; lives as long as ca). */
EVP_PKEY *al_ca_leaf_key(const al_ca *ca);
/* Number of leaves signed since load (a cache hit signs nothing). */
unsigned long al_ca_signings(const al_ca *ca);
/* Entries in the leaf cache now (never more than the capacity given to al_ca_load). */
size_t al_ca_cache_count(al_ca *ca);
/* Test hook: the clock used for validity and cache expiry (NULL = time()). */
void al_ca_set_clock(al_ca *ca, time_t (*now)(void));

#endif
