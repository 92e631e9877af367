/* Unit tests of proxy/al_tls: the CA on disk, leaf certificates as a client checks
 * them (chain, hostname/IP, EKU, validity), the leaf cache (hits sign nothing, the
 * bound holds, entries renew before the leaf expires), name constraints, and real
 * in-memory TLS handshakes over a BIO pair (verification, ALPN, SNI rules, session
 * resumption, refusal of old protocol versions and untrusting clients). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char state_dir[512];

static void rm_rf(const char *dir)
{
    char cmd[sizeof state_dir + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int setup_dir(void **st)
{
    (void)st;
    char tmpl[] = "/tmp/al_tls_test.XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    /* A sub-directory that does not exist yet: init must create it 0700. */
    snprintf(state_dir, sizeof state_dir, "%s/state", tmpl);
    return 0;
}

static int teardown_dir(void **st)
{
    (void)st;
    char parent[512];
    snprintf(parent, sizeof parent, "%s", state_dir);
    *strrchr(parent, '/') = '\0';
    rm_rf(parent);
    return 0;
}

static X509 *read_ca_cert(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/ca.crt", state_dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    return x;
}

static al_ca *new_ca(size_t capacity)
{
    al_ca *ca = NULL;
    assert_int_equal(al_ca_init(state_dir, 0), 0);
    assert_int_equal(al_ca_load(state_dir, capacity, &ca), 0);
    return ca;
}

/* X509_verify_cert of `leaf` against the CA as trust anchor, for a TLS server named
 * host (DNS) or ip. Returns the X509_V_* result. */
static int verify_leaf(X509 *ca_cert, X509 *leaf, const char *host, const char *ip)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    assert_true(X509_STORE_add_cert(store, ca_cert));
    assert_true(X509_STORE_CTX_init(ctx, store, leaf, NULL));
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
    if (host)
        X509_VERIFY_PARAM_set1_host(param, host, 0);
    if (ip)
        X509_VERIFY_PARAM_set1_ip_asc(param, ip);
    int ok = X509_verify_cert(ctx);
    int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    if (ok != 1 && err == X509_V_OK)
        err = -1;
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return err;
}

static void test_init_and_load(void **st)
{
    (void)st;
    struct stat sb;
    char path[600];
    assert_int_equal(al_ca_init(state_dir, 0), 0);
    assert_int_equal(stat(state_dir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    snprintf(path, sizeof path, "%s/ca.key", state_dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    X509 *first = read_ca_cert();
    /* A second init must not destroy the CA agents already trust... */
    assert_int_equal(al_ca_init(state_dir, 0), AL_ERR_EXISTS);
    X509 *same = read_ca_cert();
    assert_int_equal(X509_cmp(first, same), 0);
    /* ...unless forced: then it is a new CA. */
    assert_int_equal(al_ca_init(state_dir, 1), 0);
    X509 *second = read_ca_cert();
    assert_int_not_equal(X509_cmp(first, second), 0);

    /* What the CA certificate must say. */
    assert_int_equal(X509_check_ca(second), 1);
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(second, NID_basic_constraints, NULL, NULL);
    assert_non_null(bc);
    assert_true(bc->ca);
    assert_int_equal(ASN1_INTEGER_get(bc->pathlen), 0);
    BASIC_CONSTRAINTS_free(bc);
    assert_int_equal(X509_get_key_usage(second), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    assert_non_null(X509_get0_subject_key_id(second));
    assert_int_equal(EVP_PKEY_get_bits(X509_get0_pubkey(second)), 256);
    assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(second)), EVP_PKEY_EC);
    char cn[128];
    X509_NAME_get_text_by_NID(X509_get_subject_name(second), NID_commonName, cn, sizeof cn);
    assert_non_null(strstr(cn, "airlock local CA ("));
    int days = 0, secs = 0;
    assert_true(
        ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(second), X509_get0_notAfter(second)));
    assert_true(days >= 3649 && days <= 3651);
    const ASN1_INTEGER *serial = X509_get0_serialNumber(second);
    assert_true(serial->length >= 15); /* ~128 random bits */
    /* Self-signed: it verifies against itself. */
    assert_int_equal(X509_check_issued(second, second), X509_V_OK);

    al_ca *ca = NULL;
    assert_int_equal(al_ca_load(state_dir, 8, &ca), 0);
    snprintf(path, sizeof path, "%s/ca.crt", state_dir);
    assert_string_equal(al_ca_cert_path(ca), path);
    al_ca_free(ca);
    X509_free(first);
    X509_free(same);
    X509_free(second);
}

static void test_key_permissions_refused(void **st)
{
    (void)st;
    char path[600];
    al_ca *ca = NULL;
    assert_int_equal(al_ca_init(state_dir, 0), 0);
    snprintf(path, sizeof path, "%s/ca.key", state_dir);
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(al_ca_load(state_dir, 8, &ca), AL_ERR_PERM);
    assert_null(ca);
    assert_int_equal(chmod(path, 0604), 0);
    assert_int_equal(al_ca_load(state_dir, 8, &ca), AL_ERR_PERM);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(al_ca_load(state_dir, 8, &ca), 0);
    al_ca_free(ca);
}

static void test_load_missing(void **st)
{
    (void)st;
    al_ca *ca = NULL;
    assert_int_equal(al_ca_load(state_dir, 8, &ca), AL_ERR_NOTFOUND);
    assert_null(ca);
}

static void check_leaf_shape(X509 *leaf, al_ca *ca)
{
    assert_int_equal(X509_check_ca(leaf), 0);
    assert_true(X509_get_extension_flags(leaf) & EXFLAG_XKUSAGE);
    assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    assert_non_null(X509_get0_authority_key_id(leaf));
    int days = 0, secs = 0;
    assert_true(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf)));
    assert_int_equal(days * 86400 + secs, AL_CA_LEAF_LIFETIME_S + AL_CA_LEAF_BACKDATE_S);
    /* Already valid (backdated) and not expired. */
    assert_true(X509_cmp_current_time(X509_get0_notBefore(leaf)) < 0);
    assert_true(X509_cmp_current_time(X509_get0_notAfter(leaf)) > 0);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(leaf), al_ca_leaf_key(ca)), 1);
}

static void test_leaf_dns(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    X509 *ca_cert = read_ca_cert();
    X509 *leaf = NULL;
    assert_int_equal(al_ca_leaf(ca, "API.Example.com.", &leaf), 0);
    check_leaf_shape(leaf, ca);
    assert_int_equal(verify_leaf(ca_cert, leaf, "api.example.com", NULL), X509_V_OK);
    /* The leaf is for that one name only. */
    assert_int_equal(verify_leaf(ca_cert, leaf, "other.example.com", NULL),
                     X509_V_ERR_HOSTNAME_MISMATCH);
    assert_int_equal(X509_check_host(leaf, "example.com", 0, 0, NULL), 0);
    GENERAL_NAMES *sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    assert_int_equal(sk_GENERAL_NAME_num(sans), 1);
    assert_int_equal(sk_GENERAL_NAME_value(sans, 0)->type, GEN_DNS);
    GENERAL_NAMES_free(sans);
    /* Another airlock CA (another machine) does not vouch for it. */
    char saved[512], other[512];
    snprintf(saved, sizeof saved, "%s", state_dir);
    snprintf(other, sizeof other, "%.400s-other", saved);
    snprintf(state_dir, sizeof state_dir, "%s", other);
    assert_int_equal(al_ca_init(state_dir, 0), 0);
    X509 *other_ca = read_ca_cert();
    snprintf(state_dir, sizeof state_dir, "%s", saved);
    assert_int_not_equal(verify_leaf(other_ca, leaf, "api.example.com", NULL), X509_V_OK);
    X509_free(other_ca);
    X509_free(leaf);
    X509_free(ca_cert);
    al_ca_free(ca);
}

static void test_leaf_ip(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    X509 *ca_cert = read_ca_cert();
    X509 *v4 = NULL, *v6 = NULL;
    assert_int_equal(al_ca_leaf(ca, "127.0.0.1", &v4), 0);
    assert_int_equal(al_ca_leaf(ca, "[::1]", &v6), 0);
    check_leaf_shape(v4, ca);
    assert_int_equal(verify_leaf(ca_cert, v4, NULL, "127.0.0.1"), X509_V_OK);
    assert_int_equal(verify_leaf(ca_cert, v4, NULL, "127.0.0.2"), X509_V_ERR_IP_ADDRESS_MISMATCH);
    assert_int_equal(verify_leaf(ca_cert, v6, NULL, "::1"), X509_V_OK);
    GENERAL_NAMES *sans = X509_get_ext_d2i(v6, NID_subject_alt_name, NULL, NULL);
    assert_int_equal(sk_GENERAL_NAME_num(sans), 1);
    assert_int_equal(sk_GENERAL_NAME_value(sans, 0)->type, GEN_IPADD);
    GENERAL_NAMES_free(sans);
    /* No CN that a client could mistake for a DNS name. */
    assert_int_equal(X509_NAME_get_index_by_NID(X509_get_subject_name(v4), NID_commonName, -1), -1);
    X509_free(v4);
    X509_free(v6);
    X509_free(ca_cert);
    al_ca_free(ca);
}

static void test_leaf_rejects_bad_names(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    const char *bad[] = {"",           "a..b",        ".a",   "a b",        "*.example.com",
                         "x,DNS:evil", "evil\n.com",  "[::1", "[1.2.3.4x]", "::zz",
                         "a/b",        "\xc3\xa9.com"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        X509 *leaf = NULL;
        assert_int_equal(al_ca_leaf(ca, bad[i], &leaf), AL_ERR_INVAL);
        assert_null(leaf);
    }
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    X509 *leaf = NULL;
    assert_int_equal(al_ca_leaf(ca, longname, &leaf), AL_ERR_INVAL);
    assert_int_equal(al_ca_signings(ca), 0);
    al_ca_free(ca);
}

static void test_cache_hit_does_not_sign(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    X509 *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(al_ca_leaf(ca, "api.example.com", &a), 0);
    assert_int_equal(al_ca_signings(ca), 1);
    assert_int_equal(al_ca_leaf(ca, "api.example.com", &b), 0);
    assert_int_equal(al_ca_leaf(ca, "API.EXAMPLE.COM.", &c), 0);
    assert_int_equal(al_ca_signings(ca), 1);
    assert_ptr_equal(a, b);
    assert_ptr_equal(a, c);
    assert_int_equal(al_ca_cache_count(ca), 1);
    X509_free(a);
    X509_free(b);
    X509_free(c);
    al_ca_free(ca);
}

static void test_cache_bound(void **st)
{
    (void)st;
    al_ca *ca = new_ca(4);
    char name[64];
    X509 *held = NULL;
    for (int i = 0; i < 10; i++) {
        X509 *leaf = NULL;
        snprintf(name, sizeof name, "h%d.example.com", i);
        assert_int_equal(al_ca_leaf(ca, name, &leaf), 0);
        assert_true(al_ca_cache_count(ca) <= 4);
        if (i == 0)
            held = leaf; /* evicted later: our reference must stay valid */
        else
            X509_free(leaf);
    }
    assert_int_equal(al_ca_cache_count(ca), 4);
    assert_int_equal(al_ca_signings(ca), 10);
    /* The most recent four are hits... */
    for (int i = 6; i < 10; i++) {
        X509 *leaf = NULL;
        snprintf(name, sizeof name, "h%d.example.com", i);
        assert_int_equal(al_ca_leaf(ca, name, &leaf), 0);
        X509_free(leaf);
    }
    assert_int_equal(al_ca_signings(ca), 10);
    /* ...the first was evicted and is signed again. */
    X509 *again = NULL;
    assert_int_equal(al_ca_leaf(ca, "h0.example.com", &again), 0);
    assert_int_equal(al_ca_signings(ca), 11);
    assert_ptr_not_equal(again, held);
    assert_int_equal(X509_check_host(held, "h0.example.com", 0, 0, NULL), 1);
    X509_free(again);
    X509_free(held);
    al_ca_free(ca);
}

struct worker_arg {
    al_ca *ca;
    int id;
    int failures;
};

static void *cache_worker(void *p)
{
    struct worker_arg *w = p;
    char name[64];
    for (int i = 0; i < 300; i++) {
        X509 *leaf = NULL;
        snprintf(name, sizeof name, "w%d.example.com", (i * 7 + w->id) % 12);
        if (al_ca_leaf(w->ca, name, &leaf) != 0 || X509_check_host(leaf, name, 0, 0, NULL) != 1)
            w->failures++;
        X509_free(leaf);
    }
    return NULL;
}

/* Workers share one cache: concurrent hits, misses and evictions stay consistent
 * (run under ASan/UBSan; every leaf handed out is for the name asked). */
static void test_cache_shared_by_threads(void **st)
{
    (void)st;
    al_ca *ca = new_ca(5);
    pthread_t t[4];
    struct worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct worker_arg){ca, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, cache_worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(args[i].failures, 0);
    }
    assert_true(al_ca_cache_count(ca) <= 5);
    assert_true(al_ca_signings(ca) >= 12);
    assert_true(al_ca_signings(ca) < 1200); /* some lookups were hits */
    al_ca_free(ca);
}

static time_t fake_now;
static time_t fake_clock(void)
{
    return fake_now;
}

static void test_cache_renews_before_expiry(void **st)
{
    (void)st;
    al_ca *ca = new_ca(4);
    fake_now = time(NULL);
    al_ca_set_clock(ca, fake_clock);
    X509 *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(al_ca_leaf(ca, "api.example.com", &a), 0);
    fake_now += AL_CA_LEAF_RENEW_S - 1;
    assert_int_equal(al_ca_leaf(ca, "api.example.com", &b), 0);
    assert_ptr_equal(a, b);
    assert_int_equal(al_ca_signings(ca), 1);
    fake_now += 2;
    assert_int_equal(al_ca_leaf(ca, "api.example.com", &c), 0);
    assert_int_equal(al_ca_signings(ca), 2);
    assert_ptr_not_equal(a, c);
    /* The cached leaf is renewed while it still had half its life. */
    assert_true(AL_CA_LEAF_RENEW_S < AL_CA_LEAF_LIFETIME_S);
    assert_true(ASN1_TIME_cmp_time_t(X509_get0_notAfter(a), fake_now) > 0);
    assert_true(ASN1_TIME_compare(X509_get0_notAfter(c), X509_get0_notAfter(a)) > 0);
    X509_free(a);
    X509_free(b);
    X509_free(c);
    al_ca_free(ca);
}

static void test_name_constraints(void **st)
{
    (void)st;
    const char *permit[] = {"example.com", "*.api.test", "10.1.2.3"};
    al_ca *ca = NULL;
    assert_int_equal(al_ca_init_ex(state_dir, 0, permit, 3), 0);
    assert_int_equal(al_ca_load(state_dir, 8, &ca), 0);
    X509 *ca_cert = read_ca_cert();
    X509_EXTENSION *ext =
        X509_get_ext(ca_cert, X509_get_ext_by_NID(ca_cert, NID_name_constraints, -1));
    assert_non_null(ext);
    assert_true(X509_EXTENSION_get_critical(ext));

    struct {
        const char *host;
        int ok;
    } cases[] = {{"example.com", 1},  {"api.example.com", 1}, {"x.api.test", 1},
                 {"10.1.2.3", 1},     {"localhost", 1},       {"127.0.0.1", 1},
                 {"evil.com", 0},     {"notexample.com", 0},  {"10.1.2.4", 0},
                 {"api.test.evil", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        X509 *leaf = NULL;
        int rc = al_ca_leaf(ca, cases[i].host, &leaf);
        if ((rc == 0) != cases[i].ok)
            fail_msg("name constraint case %s: rc %d", cases[i].host, rc);
        if (cases[i].ok) {
            assert_int_equal(rc, 0);
            int is_ip = cases[i].host[0] >= '0' && cases[i].host[0] <= '9';
            assert_int_equal(verify_leaf(ca_cert, leaf, is_ip ? NULL : cases[i].host,
                                         is_ip ? cases[i].host : NULL),
                             X509_V_OK);
            X509_free(leaf);
        } else {
            assert_int_equal(rc, AL_ERR_PERM);
            assert_null(leaf);
        }
    }
    /* A malformed host is refused at init. */
    const char *bad[] = {"ex ample.com"};
    assert_int_equal(al_ca_init_ex(state_dir, 1, bad, 1), AL_ERR_INVAL);
    X509_free(ca_cert);
    al_ca_free(ca);
}

/* ---- handshakes over a BIO pair ------------------------------------------- */

struct hs {
    SSL_CTX *client_ctx;
    SSL *client, *server;
};

static SSL_CTX *client_ctx_new(int trust_ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (trust_ca) {
        char path[600];
        snprintf(path, sizeof path, "%s/ca.crt", state_dir);
        assert_int_equal(SSL_CTX_load_verify_locations(ctx, path, NULL), 1);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    return ctx;
}

/* Sets up client and server over an in-memory BIO pair. */
static void hs_setup(struct hs *h, SSL_CTX *client_ctx, SSL_CTX *server_ctx, const char *sni,
                     const char *verify_host, const char *verify_ip, const char *alpn,
                     size_t alpn_len)
{
    BIO *cb = NULL, *sb = NULL;
    h->client_ctx = client_ctx;
    h->client = SSL_new(client_ctx);
    h->server = SSL_new(server_ctx);
    assert_non_null(h->client);
    assert_non_null(h->server);
    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    SSL_set_bio(h->client, cb, cb);
    SSL_set_bio(h->server, sb, sb);
    SSL_set_connect_state(h->client);
    SSL_set_accept_state(h->server);
    if (sni)
        SSL_set_tlsext_host_name(h->client, sni);
    if (verify_host)
        SSL_set1_host(h->client, verify_host);
    if (verify_ip)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(h->client), verify_ip);
    if (alpn)
        assert_int_equal(
            SSL_set_alpn_protos(h->client, (const unsigned char *)alpn, (unsigned int)alpn_len), 0);
}

/* Drives both sides until both finish or one fails; 1 = both completed. */
static int hs_run(struct hs *h)
{
    int c_done = 0, s_done = 0;
    for (int i = 0; i < 100 && !(c_done && s_done); i++) {
        if (!c_done) {
            int r = SSL_do_handshake(h->client);
            if (r == 1)
                c_done = 1;
            else if (SSL_get_error(h->client, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
        if (!s_done) {
            int r = SSL_do_handshake(h->server);
            if (r == 1)
                s_done = 1;
            else if (SSL_get_error(h->server, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
    }
    return c_done && s_done;
}

/* After a completed handshake: one byte each way (also delivers TLS 1.3 tickets). */
static void hs_exchange(struct hs *h)
{
    char byte = 'x', got = 0;
    assert_int_equal(SSL_write(h->server, &byte, 1), 1);
    assert_int_equal(SSL_read(h->client, &got, 1), 1);
    assert_int_equal(got, 'x');
    byte = 'y';
    assert_int_equal(SSL_write(h->client, &byte, 1), 1);
    assert_int_equal(SSL_read(h->server, &got, 1), 1);
    assert_int_equal(got, 'y');
}

static void hs_free(struct hs *h)
{
    /* A clean close: OpenSSL marks a session not resumable when the SSL is freed
     * without close_notify. */
    if (SSL_is_init_finished(h->client) && SSL_is_init_finished(h->server)) {
        (void)SSL_shutdown(h->client);
        (void)SSL_shutdown(h->server);
        (void)SSL_shutdown(h->client);
    }
    SSL_free(h->client);
    SSL_free(h->server);
    ERR_clear_error();
}

static void assert_alpn(SSL *ssl, const char *want)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    if (!want) {
        assert_int_equal(len, 0);
        return;
    }
    assert_int_equal(len, strlen(want));
    assert_memory_equal(p, want, len);
}

#define ALPN_BOTH "\x02h2\x08http/1.1"

static void test_handshake_h2(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    assert_non_null(sctx);
    SSL_CTX *cctx = client_ctx_new(1);
    struct hs h;
    /* The client lists http/1.1 first: the server still prefers h2. */
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, "\x08http/1.1\x02h2", 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(hs_run(&h), 1);
    assert_int_equal(SSL_get_verify_result(h.client), X509_V_OK);
    assert_alpn(h.client, "h2");
    assert_alpn(h.server, "h2");
    assert_true(SSL_version(h.client) >= TLS1_2_VERSION);
    X509 *peer = SSL_get1_peer_certificate(h.client);
    assert_non_null(peer);
    assert_int_equal(X509_check_host(peer, "api.example.com", 0, 0, NULL), 1);
    X509_free(peer);
    hs_exchange(&h);
    hs_free(&h);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

/* TLS 1.3 HelloRetryRequest: the client's first key share is for a group the server
 * does not take, so there are two ClientHellos (the callback runs twice). */
static void test_handshake_hello_retry(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(1);
    assert_int_equal(SSL_CTX_set1_groups_list(cctx, "P-521:P-256"), 1);
    struct hs h;
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(hs_run(&h), 1);
    assert_int_equal(SSL_version(h.server), TLS1_3_VERSION);
    /* The client's only key share was P-521: P-256 means a retry happened. */
    assert_int_equal(SSL_get_negotiated_group(h.server), NID_X9_62_prime256v1);
    assert_int_equal(SSL_get_verify_result(h.client), X509_V_OK);
    assert_alpn(h.server, "h2");
    hs_exchange(&h);
    hs_free(&h);
    assert_int_equal(al_ca_signings(ca), 1);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_handshake_http11_and_no_alpn(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(1);
    struct hs h;
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, "\x08http/1.1", 9);
    assert_int_equal(hs_run(&h), 1);
    assert_alpn(h.server, "http/1.1");
    hs_free(&h);
    /* No protocol in common: no ALPN, the handshake still succeeds (HTTP/1.1). */
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, "\x06spdy/3", 7);
    assert_int_equal(hs_run(&h), 1);
    assert_alpn(h.server, NULL);
    hs_free(&h);
    /* Both handshakes used one signing: the second was a cache hit. */
    assert_int_equal(al_ca_signings(ca), 1);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_handshake_sni_mismatch_fails(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(1);
    struct hs h;
    hs_setup(&h, cctx, sctx, "evil.example", "evil.example", NULL, ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(hs_run(&h), 0);
    assert_int_equal(SSL_is_init_finished(h.server), 0);
    assert_int_equal(SSL_is_init_finished(h.client), 0);
    hs_free(&h);
    assert_int_equal(al_ca_signings(ca), 0);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_handshake_no_sni_uses_tunnel_name(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(1);
    struct hs h;
    /* An IP literal: clients send no SNI for it; the leaf carries an IP SAN. */
    hs_setup(&h, cctx, sctx, NULL, NULL, "127.0.0.1", ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "127.0.0.1"), 0);
    assert_int_equal(hs_run(&h), 1);
    assert_int_equal(SSL_get_verify_result(h.client), X509_V_OK);
    hs_free(&h);
    /* A DNS name without SNI works the same way. */
    hs_setup(&h, cctx, sctx, NULL, "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(hs_run(&h), 1);
    hs_free(&h);
    /* Neither SNI nor a tunnel name: refused, no crash. */
    hs_setup(&h, cctx, sctx, NULL, NULL, NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 0);
    hs_free(&h);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_handshake_untrusting_client_fails(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(0);
    struct hs h;
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 0);
    assert_int_not_equal(SSL_get_verify_result(h.client), X509_V_OK);
    hs_free(&h);
    /* The context still serves the next, trusting client. */
    SSL_CTX *good = client_ctx_new(1);
    hs_setup(&h, good, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    hs_free(&h);
    SSL_CTX_free(good);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_handshake_old_tls_refused(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL_CTX *cctx = client_ctx_new(1);
    SSL_CTX_set_security_level(cctx, 0);
    SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION);
    struct hs h;
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, NULL, 0);
    assert_int_equal(hs_run(&h), 0);
    hs_free(&h);
    /* TLS 1.2 exactly is accepted, with an ECDHE + AEAD suite. */
    SSL_CTX_set_min_proto_version(cctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    assert_int_equal(SSL_version(h.server), TLS1_2_VERSION);
    const SSL_CIPHER *c = SSL_get_current_cipher(h.server);
    assert_true(SSL_CIPHER_is_aead(c));
    assert_int_equal(SSL_CIPHER_get_kx_nid(c), NID_kx_ecdhe);
    hs_free(&h);
    /* A client offering only CBC suites in TLS 1.2 is refused. */
    SSL_CTX_set_cipher_list(cctx, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA");
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 0);
    hs_free(&h);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void resumption_case(al_ca *ca, SSL_CTX *sctx, int max_version)
{
    SSL_CTX *cctx = client_ctx_new(1);
    SSL_CTX_set_max_proto_version(cctx, max_version);
    struct hs h;
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(hs_run(&h), 1);
    hs_exchange(&h);
    assert_int_equal(SSL_session_reused(h.client), 0);
    SSL_SESSION *sess = SSL_get1_session(h.client);
    assert_non_null(sess);
    assert_int_equal(SSL_SESSION_is_resumable(sess), 1);
    hs_free(&h);

    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(al_tls_set_intercept_name(h.server, "api.example.com"), 0);
    assert_int_equal(SSL_set_session(h.client, sess), 1);
    assert_int_equal(hs_run(&h), 1);
    assert_int_equal(SSL_session_reused(h.client), 1);
    assert_int_equal(SSL_session_reused(h.server), 1);
    assert_alpn(h.server, "h2");
    hs_free(&h);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    (void)ca;
}

static void test_session_resumption(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    resumption_case(ca, sctx, TLS1_2_VERSION);
    resumption_case(ca, sctx, TLS1_3_VERSION);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_listener_ctx(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_listener_ctx_new(ca, NULL, NULL, "proxy.internal");
    assert_non_null(sctx);
    SSL_CTX *cctx = client_ctx_new(1);
    struct hs h;
    /* Whatever name the agent uses for the local proxy verifies. */
    hs_setup(&h, cctx, sctx, "proxy.internal", "proxy.internal", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    assert_alpn(h.client, "h2");
    hs_free(&h);
    hs_setup(&h, cctx, sctx, "localhost", "localhost", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    hs_free(&h);
    hs_setup(&h, cctx, sctx, NULL, NULL, "127.0.0.1", ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    hs_free(&h);
    /* ...but it is no leaf for other sites. */
    hs_setup(&h, cctx, sctx, "api.example.com", "api.example.com", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 0);
    hs_free(&h);
    assert_int_equal(al_ca_signings(ca), 1);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);

    /* A wildcard listen address gets the loopback names. */
    sctx = al_tls_listener_ctx_new(ca, NULL, NULL, "0.0.0.0");
    assert_non_null(sctx);
    hs_setup(&h, cctx = client_ctx_new(1), sctx, "localhost", "localhost", NULL, ALPN_BOTH, 12);
    assert_int_equal(hs_run(&h), 1);
    hs_free(&h);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);

    /* A given certificate file is used as is; a missing one is an error. */
    assert_null(al_tls_listener_ctx_new(ca, "/nonexistent.crt", "/nonexistent.key", NULL));
    char crt[600], key[600];
    snprintf(crt, sizeof crt, "%s/given.crt", state_dir);
    snprintf(key, sizeof key, "%s/given.key", state_dir);
    X509 *given = NULL;
    assert_int_equal(al_ca_leaf(ca, "given.example", &given), 0);
    FILE *fp = fopen(crt, "w");
    assert_non_null(fp);
    assert_true(PEM_write_X509(fp, given));
    fclose(fp);
    assert_non_null(fp = fopen(key, "w"));
    assert_true(PEM_write_PrivateKey(fp, al_ca_leaf_key(ca), NULL, NULL, 0, NULL, NULL));
    fclose(fp);
    X509_free(given);
    unsigned long signed_before = al_ca_signings(ca);
    assert_non_null(sctx = al_tls_listener_ctx_new(ca, crt, key, NULL));
    hs_setup(&h, cctx = client_ctx_new(1), sctx, "given.example", "given.example", NULL, ALPN_BOTH,
             12);
    assert_int_equal(hs_run(&h), 1);
    assert_alpn(h.server, "h2");
    hs_free(&h);
    assert_int_equal(al_ca_signings(ca), signed_before); /* the file's cert, not a new leaf */
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

static void test_bad_intercept_name(void **st)
{
    (void)st;
    al_ca *ca = new_ca(16);
    SSL_CTX *sctx = al_tls_intercept_ctx_new(ca);
    SSL *ssl = SSL_new(sctx);
    assert_int_equal(al_tls_set_intercept_name(ssl, "bad host"), AL_ERR_INVAL);
    assert_int_equal(al_tls_set_intercept_name(ssl, "a.example"), 0);
    assert_int_equal(al_tls_set_intercept_name(ssl, "b.example"), 0); /* replaces, no leak */
    SSL_free(ssl);
    SSL_CTX_free(sctx);
    al_ca_free(ca);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_init_and_load),
        T(test_key_permissions_refused),
        T(test_load_missing),
        T(test_leaf_dns),
        T(test_leaf_ip),
        T(test_leaf_rejects_bad_names),
        T(test_cache_hit_does_not_sign),
        T(test_cache_bound),
        T(test_cache_shared_by_threads),
        T(test_cache_renews_before_expiry),
        T(test_name_constraints),
        T(test_handshake_h2),
        T(test_handshake_hello_retry),
        T(test_handshake_http11_and_no_alpn),
        T(test_handshake_sni_mismatch_fails),
        T(test_handshake_no_sni_uses_tunnel_name),
        T(test_handshake_untrusting_client_fails),
        T(test_handshake_old_tls_refused),
        T(test_session_resumption),
        T(test_listener_ctx),
        T(test_bad_intercept_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
