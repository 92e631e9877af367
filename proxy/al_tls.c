/* al_tls: airlock's local CA, the short-lived leaf certificates it issues for TLS
 * interception, and the server-side TLS contexts (see al_tls.h).
 *
 * Invariants:
 * - The CA key file is never read when group or others can read it; it is written
 *   0600 through a temporary file and rename(), so a crash leaves the old one.
 * - Every leaf is signed by the CA for exactly the names it serves, valid 24 h
 *   (backdated 5 min), CA:FALSE, EKU serverAuth, with an authorityKeyIdentifier. All
 *   leaves of one al_ca share one P-256 key generated at load: it never touches disk.
 * - Names from peers (SNI, CONNECT authority) are normalised and checked against a
 *   strict DNS/IP syntax before they reach a certificate, and SANs are built as
 *   GENERAL_NAME values, never through OpenSSL's config-string parser (no injection).
 * - The leaf cache is a bounded LRU shared by all workers behind one mutex that is
 *   never held while signing; a hit is a lookup and an X509_up_ref. Entries expire
 *   AL_CA_LEAF_RENEW_S after issue, well before the leaf does.
 * - Handshake-time failures (bad SNI, SNI not the tunnel's host, no name) fail that
 *   one handshake with an alert and a log line; they never abort the process. */
#include "al_tls.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/tls1.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_MAX_LEN  253 /* a DNS name; an IPv6 text form is shorter */
#define CA_VALID_DAYS 3650

/* ---- names ---------------------------------------------------------------- */

/* Canonical form of a host: lower-case DNS name without a trailing dot, or the
 * inet_ntop() text of an IP literal (brackets removed). 0 or AL_ERR_INVAL. */
static int name_normalize(const char *in, char *out, size_t outsz, int *is_ip)
{
    char tmp[NAME_MAX_LEN + 3];
    size_t len = in ? strlen(in) : 0;
    if (len == 0 || len > NAME_MAX_LEN + 2 || outsz < NAME_MAX_LEN + 1)
        return AL_ERR_INVAL;
    int bracketed = in[0] == '[';
    if (bracketed) {
        if (len < 3 || in[len - 1] != ']')
            return AL_ERR_INVAL;
        in++;
        len -= 2;
    }
    memcpy(tmp, in, len);
    tmp[len] = '\0';

    unsigned char addr[16];
    if (bracketed || strchr(tmp, ':')) { /* brackets only ever wrap an IPv6 literal */
        if (inet_pton(AF_INET6, tmp, addr) != 1 || !inet_ntop(AF_INET6, addr, out, outsz))
            return AL_ERR_INVAL;
        *is_ip = 1;
        return 0;
    }
    if (inet_pton(AF_INET, tmp, addr) == 1) {
        if (!inet_ntop(AF_INET, addr, out, outsz))
            return AL_ERR_INVAL;
        *is_ip = 1;
        return 0;
    }
    if (tmp[len - 1] == '.')
        tmp[--len] = '\0';
    if (len == 0 || len > NAME_MAX_LEN)
        return AL_ERR_INVAL;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)tmp[i];
        if (c == '.') {
            if (label == 0)
                return AL_ERR_INVAL; /* empty label */
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            label++;
        } else if (c >= 'A' && c <= 'Z') {
            tmp[i] = (char)(c - 'A' + 'a');
            label++;
        } else {
            return AL_ERR_INVAL;
        }
        if (label > 63)
            return AL_ERR_INVAL;
    }
    memcpy(out, tmp, len + 1);
    *is_ip = 0;
    return 0;
}

static GENERAL_NAME *general_name_new(const char *name, int is_ip)
{
    GENERAL_NAME *gn = NULL;
    if (is_ip) {
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
        if (!ip || !(gn = GENERAL_NAME_new())) {
            ASN1_OCTET_STRING_free(ip);
            return NULL;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
        return gn;
    }
    ASN1_IA5STRING *dns = ASN1_IA5STRING_new();
    if (!dns || !ASN1_STRING_set(dns, name, (int)strlen(name)) || !(gn = GENERAL_NAME_new())) {
        ASN1_IA5STRING_free(dns);
        return NULL;
    }
    GENERAL_NAME_set0_value(gn, GEN_DNS, dns);
    return gn;
}

/* ---- files ---------------------------------------------------------------- */

static int path_join(char *out, size_t outsz, const char *dir, const char *file)
{
    int n = snprintf(out, outsz, "%s/%s", dir, file);
    return (n < 0 || (size_t)n >= outsz) ? AL_ERR_TOOBIG : 0;
}

/* mkdir -p with mode 0700 for every directory it creates. */
static int mkdir_private(const char *dir)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp)
        return AL_ERR_TOOBIG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return AL_ERR_IO;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return AL_ERR_IO;
    return 0;
}

/* Writes through path.tmp (created with `mode`, never following a link) and rename(),
 * so readers see the old file or the new one, never half of one. */
static int write_pem_file(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert)
{
    char tmp[PATH_MAX];
    int rc = AL_ERR_IO;
    FILE *fp = NULL;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return AL_ERR_TOOBIG;
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return AL_ERR_IO;
    if (fchmod(fd, mode) != 0 || !(fp = fdopen(fd, "w"))) {
        close(fd);
        goto fail;
    }
    if (key && !PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL)) {
        rc = AL_ERR_CRYPTO;
        goto fail;
    }
    if (cert && !PEM_write_X509(fp, cert)) {
        rc = AL_ERR_CRYPTO;
        goto fail;
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0)
        goto fail;
    int closed = fclose(fp);
    fp = NULL;
    if (closed != 0 || rename(tmp, path) != 0)
        goto fail;
    return 0;
fail:
    if (fp)
        fclose(fp);
    (void)unlink(tmp);
    return rc;
}

/* ---- certificates ----------------------------------------------------------- */

static int set_random_serial(X509 *x)
{
    unsigned char raw[16];
    int rc = AL_ERR_CRYPTO;
    BIGNUM *bn = NULL;
    if (RAND_bytes(raw, sizeof raw) != 1)
        return AL_ERR_CRYPTO;
    raw[0] &= 0x7f; /* positive, and DER keeps all 128 bits in 16 bytes */
    raw[0] |= 0x40; /* never a short serial */
    if (!(bn = BN_bin2bn(raw, sizeof raw, NULL)))
        goto out;
    if (!BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        goto out;
    rc = 0;
out:
    BN_free(bn);
    return rc;
}

/* Adds an extension from a fixed (never peer-controlled) OpenSSL value string. */
static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ex)
        return AL_ERR_CRYPTO;
    int ok = X509_add_ext(x, ex, -1);
    X509_EXTENSION_free(ex);
    return ok ? 0 : AL_ERR_CRYPTO;
}

/* nameConstraints permitting `hosts` plus the listener's loopback names. */
static int add_name_constraints(X509 *x, const char *const *hosts, size_t n)
{
    static const char *const always[] = {"localhost", "127.0.0.1", "::1"};
    int rc = AL_ERR_NOMEM;
    NAME_CONSTRAINTS *nc = NAME_CONSTRAINTS_new();
    if (!nc || !(nc->permittedSubtrees = sk_GENERAL_SUBTREE_new_null()))
        goto out;
    for (size_t i = 0; i < n + 3; i++) {
        const char *h = i < 3 ? always[i] : hosts[i - 3];
        char name[NAME_MAX_LEN + 1];
        int is_ip = 0;
        /* "*.example.com" is what a table would say; the constraint "example.com"
         * already covers every subdomain. */
        if (strncmp(h, "*.", 2) == 0)
            h += 2;
        if (name_normalize(h, name, sizeof name, &is_ip) != 0) {
            rc = AL_ERR_INVAL;
            goto out;
        }
        GENERAL_SUBTREE *st = GENERAL_SUBTREE_new();
        if (!st)
            goto out;
        GENERAL_NAME_free(st->base);
        st->base = NULL;
        if (is_ip) {
            /* An IP constraint is address followed by mask: one exact address. */
            unsigned char buf[32];
            int alen = strchr(name, ':') ? 16 : 4;
            inet_pton(alen == 16 ? AF_INET6 : AF_INET, name, buf);
            memset(buf + alen, 0xff, (size_t)alen);
            ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
            if (os && ASN1_OCTET_STRING_set(os, buf, alen * 2) && (st->base = GENERAL_NAME_new()))
                GENERAL_NAME_set0_value(st->base, GEN_IPADD, os);
            else
                ASN1_OCTET_STRING_free(os);
        } else {
            st->base = general_name_new(name, 0);
        }
        if (!st->base || !sk_GENERAL_SUBTREE_push(nc->permittedSubtrees, st)) {
            GENERAL_SUBTREE_free(st);
            goto out;
        }
    }
    /* RFC 5280 says a name constraint MUST be critical: a client that cannot
     * enforce it must refuse the CA rather than ignore the limit. */
    rc = X509_add1_ext_i2d(x, NID_name_constraints, nc, 1, X509V3_ADD_DEFAULT) == 1 ? 0
                                                                                    : AL_ERR_CRYPTO;
out:
    NAME_CONSTRAINTS_free(nc);
    return rc;
}

static X509 *ca_cert_new(EVP_PKEY *key, const char *const *permit, size_t n_permit, int *err)
{
    char host[HOST_NAME_MAX + 1] = "localhost";
    char cn[65];
    X509 *x = X509_new();
    *err = AL_ERR_CRYPTO;
    if (!x)
        goto fail;
    (void)gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    /* CN is at most 64 characters; the host name is only a hint for the user. */
    snprintf(cn, sizeof cn, "airlock local CA (%.40s)", host);
    X509_NAME *subj = X509_get_subject_name(x);
    time_t now = time(NULL);
    if (!X509_set_version(x, 2) || set_random_serial(x) != 0 ||
        !X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_UTF8, (const unsigned char *)"airlock", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, subj) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), now - AL_CA_LEAF_BACKDATE_S) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), CA_VALID_DAYS, 0, &now) ||
        !X509_set_pubkey(x, key))
        goto fail;
    if (add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, x, NID_authority_key_identifier, "keyid:always") != 0)
        goto fail;
    if (n_permit > 0) {
        int rc = add_name_constraints(x, permit, n_permit);
        if (rc != 0) {
            *err = rc;
            goto fail;
        }
    }
    if (!X509_sign(x, key, EVP_sha256()))
        goto fail;
    *err = 0;
    return x;
fail:
    X509_free(x);
    return NULL;
}

/* ---- the CA --------------------------------------------------------------- */

struct leaf_entry {
    char *key; /* owned: the names joined by ',' */
    uint64_t hash;
    X509 *cert; /* one reference owned by the cache */
    time_t renew_at;
    struct leaf_entry *lru_prev, *lru_next; /* lru_next = less recently used */
    struct leaf_entry *bucket_next;
};

struct al_ca {
    char cert_path[PATH_MAX];
    X509 *cert;               /* owned */
    EVP_PKEY *key;            /* owned; the CA's signing key */
    EVP_PKEY *leaf_key;       /* owned; shared by every leaf */
    NAME_CONSTRAINTS *nc;     /* owned; NULL when the CA is unconstrained */
    X509_EXTENSION *leaf_aki; /* owned; the same authorityKeyIdentifier on every leaf */
    time_t (*now)(void);

    pthread_mutex_t mu; /* guards everything below */
    struct leaf_entry **buckets;
    size_t bucket_count; /* power of two */
    struct leaf_entry *lru_head, *lru_tail;
    size_t count, capacity;
    atomic_ulong signings;
};

static time_t ca_now(const al_ca *ca)
{
    return ca->now ? ca->now() : time(NULL);
}

int al_ca_init_ex(const char *state_dir, int force, const char *const *permit_hosts,
                  size_t n_permit)
{
    char key_path[PATH_MAX], cert_path[PATH_MAX];
    struct stat st;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    int rc;
    if (!state_dir || !*state_dir)
        return AL_ERR_INVAL;
    if ((rc = path_join(key_path, sizeof key_path, state_dir, "ca.key")) != 0 ||
        (rc = path_join(cert_path, sizeof cert_path, state_dir, "ca.crt")) != 0)
        return rc;
    if ((rc = mkdir_private(state_dir)) != 0)
        return rc;
    if (!force && (stat(key_path, &st) == 0 || stat(cert_path, &st) == 0))
        return AL_ERR_EXISTS;
    rc = AL_ERR_CRYPTO;
    if (!(key = EVP_EC_gen("P-256")))
        goto out;
    if (!(cert = ca_cert_new(key, permit_hosts, n_permit, &rc)))
        goto out;
    /* Key first: a cert without its key is useless, a key without a cert is
     * overwritten by the next init. */
    if ((rc = write_pem_file(key_path, 0600, key, NULL)) != 0 ||
        (rc = write_pem_file(cert_path, 0644, NULL, cert)) != 0)
        goto out;
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int al_ca_init(const char *state_dir, int force)
{
    return al_ca_init_ex(state_dir, force, NULL, 0);
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1; /* never prompt on a terminal: airlock's CA key is not encrypted */
}

int al_ca_load(const char *state_dir, size_t cache_capacity, al_ca **out)
{
    char key_path[PATH_MAX];
    struct stat st;
    FILE *fp = NULL;
    int fd = -1, rc;
    al_ca *ca = calloc(1, sizeof *ca);
    if (!ca)
        return AL_ERR_NOMEM;
    pthread_mutex_init(&ca->mu, NULL);
    atomic_init(&ca->signings, 0);
    ca->capacity = cache_capacity ? cache_capacity : 1;
    for (ca->bucket_count = 16; ca->bucket_count < ca->capacity * 2;)
        ca->bucket_count *= 2;
    if (!(ca->buckets = calloc(ca->bucket_count, sizeof *ca->buckets))) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    if ((rc = path_join(key_path, sizeof key_path, state_dir, "ca.key")) != 0 ||
        (rc = path_join(ca->cert_path, sizeof ca->cert_path, state_dir, "ca.crt")) != 0)
        goto fail;

    /* Check the mode of the file we actually opened (fstat), not of a path that
     * could be swapped between the check and the read. */
    rc = AL_ERR_NOTFOUND;
    if ((fd = open(key_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
        al_log(AL_LOG_ERROR, "ca.load", "cannot open %s: %s (run 'airlock ca init')", key_path,
               strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = AL_ERR_IO;
        goto fail;
    }
    if (st.st_mode & 077) {
        al_log(AL_LOG_ERROR, "ca.key_permissions",
               "%s is readable by group or others (mode %03o); fix it with: chmod 600 %s", key_path,
               (unsigned)(st.st_mode & 0777), key_path);
        rc = AL_ERR_PERM;
        goto fail;
    }
    rc = AL_ERR_CRYPTO;
    if (!(fp = fdopen(fd, "r")))
        goto fail;
    fd = -1;
    ca->key = PEM_read_PrivateKey(fp, NULL, no_password, NULL);
    fclose(fp);
    fp = NULL;
    if (!ca->key) {
        al_log(AL_LOG_ERROR, "ca.load", "%s is not a PEM private key", key_path);
        goto fail;
    }
    if (!(fp = fopen(ca->cert_path, "re"))) {
        al_log(AL_LOG_ERROR, "ca.load", "cannot open %s: %s", ca->cert_path, strerror(errno));
        rc = AL_ERR_NOTFOUND;
        goto fail;
    }
    ca->cert = PEM_read_X509(fp, NULL, no_password, NULL);
    fclose(fp);
    fp = NULL;
    if (!ca->cert || X509_check_private_key(ca->cert, ca->key) != 1) {
        al_log(AL_LOG_ERROR, "ca.load", "%s does not match %s", ca->cert_path, key_path);
        goto fail;
    }
    ca->nc = X509_get_ext_d2i(ca->cert, NID_name_constraints, NULL, NULL);
    if (!(ca->leaf_key = EVP_EC_gen("P-256")))
        goto fail;
    /* The leaves' authorityKeyIdentifier is the same for every leaf: build it once. */
    {
        X509V3_CTX v3;
        X509V3_set_ctx(&v3, ca->cert, NULL, NULL, NULL, 0);
        if (!(ca->leaf_aki =
                  X509V3_EXT_conf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always")))
            goto fail;
    }
    ERR_clear_error();
    *out = ca;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    ERR_clear_error();
    al_ca_free(ca);
    return rc;
}

void al_ca_free(al_ca *ca)
{
    if (!ca)
        return;
    for (struct leaf_entry *e = ca->lru_head, *next; e; e = next) {
        next = e->lru_next;
        X509_free(e->cert);
        free(e->key);
        free(e);
    }
    free(ca->buckets);
    X509_EXTENSION_free(ca->leaf_aki);
    NAME_CONSTRAINTS_free(ca->nc);
    EVP_PKEY_free(ca->leaf_key); /* OpenSSL clears private key material on free */
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
    pthread_mutex_destroy(&ca->mu);
    free(ca);
}

const char *al_ca_cert_path(const al_ca *ca)
{
    return ca->cert_path;
}

int al_ca_cert_pem(const al_ca *ca, char **out, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL, *copy = NULL;
    long n;
    int rc = AL_ERR_NOMEM;
    if (!bio)
        return rc;
    if (!PEM_write_bio_X509(bio, ca->cert) || (n = BIO_get_mem_data(bio, &data)) <= 0)
        goto out;
    if (!(copy = malloc((size_t)n + 1)))
        goto out;
    memcpy(copy, data, (size_t)n);
    copy[n] = '\0';
    *out = copy;
    *len = (size_t)n;
    rc = 0;
out:
    BIO_free(bio);
    return rc;
}

EVP_PKEY *al_ca_leaf_key(const al_ca *ca)
{
    return ca->leaf_key;
}

unsigned long al_ca_signings(const al_ca *ca)
{
    return atomic_load(&((al_ca *)ca)->signings);
}

size_t al_ca_cache_count(al_ca *ca)
{
    pthread_mutex_lock(&ca->mu);
    size_t n = ca->count;
    pthread_mutex_unlock(&ca->mu);
    return n;
}

void al_ca_set_clock(al_ca *ca, time_t (*now)(void))
{
    ca->now = now;
}

/* Signs a new leaf for `names` (already normalised; is_ip[i] says which are IPs). */
static int leaf_sign(al_ca *ca, char names[][NAME_MAX_LEN + 1], const int *is_ip, size_t n,
                     X509 **out)
{
    int rc = AL_ERR_CRYPTO;
    GENERAL_NAMES *sans = NULL;
    X509 *x = X509_new();
    time_t now = ca_now(ca);
    if (!x)
        goto fail;
    X509_NAME *subj = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || set_random_serial(x) != 0 ||
        !X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_UTF8,
                                    (const unsigned char *)"airlock interception", -1, -1, 0))
        goto fail;
    /* A CN only for a DNS name that fits (64 chars): an IP in a CN would be checked
     * as a DNS name against the CA's name constraints. Clients use the SAN. */
    if (!is_ip[0] && strlen(names[0]) <= 64 &&
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)names[0], -1,
                                    -1, 0))
        goto fail;
    if (!X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), now - AL_CA_LEAF_BACKDATE_S) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), now + AL_CA_LEAF_LIFETIME_S) ||
        !X509_set_pubkey(x, ca->leaf_key))
        goto fail;
    if (!(sans = sk_GENERAL_NAME_new_null()))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *gn = general_name_new(names[i], is_ip[i]);
        if (!gn || !sk_GENERAL_NAME_push(sans, gn)) {
            GENERAL_NAME_free(gn);
            goto fail;
        }
    }
    /* The subject is never empty (O=...), so the SAN need not be critical. */
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, sans, 0, X509V3_ADD_DEFAULT) != 1 ||
        add_ext(x, ca->cert, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, ca->cert, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, ca->cert, NID_ext_key_usage, "serverAuth") != 0 ||
        !X509_add_ext(x, ca->leaf_aki, -1))
        goto fail;
    if (!X509_sign(x, ca->key, EVP_sha256()))
        goto fail;
    if (ca->nc) {
        /* Check a parsed copy: NAME_CONSTRAINTS_check reads the SANs OpenSSL caches
         * when it parses a certificate, which a certificate being built lacks. */
        X509 *parsed = X509_dup(x);
        int nc_ok = parsed && X509_get_extension_flags(parsed) != 0 &&
                    NAME_CONSTRAINTS_check(parsed, ca->nc) == X509_V_OK;
        X509_free(parsed);
        if (!nc_ok) {
            /* Clients would reject it anyway; say why here, where the fix is known. */
            al_log(AL_LOG_WARN, "ca.name_constraint",
                   "the CA does not permit %s; re-create it with 'airlock ca init --force' "
                   "including this host and hand agents the new bundle",
                   names[0]);
            rc = AL_ERR_PERM;
            goto fail;
        }
    }
    atomic_fetch_add(&ca->signings, 1);
    sk_GENERAL_NAME_pop_free(sans, GENERAL_NAME_free);
    *out = x;
    return 0;
fail:
    sk_GENERAL_NAME_pop_free(sans, GENERAL_NAME_free);
    X509_free(x);
    ERR_clear_error();
    return rc;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Caller holds ca->mu. */
static void lru_unlink(al_ca *ca, struct leaf_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        ca->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        ca->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(al_ca *ca, struct leaf_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = ca->lru_head;
    if (ca->lru_head)
        ca->lru_head->lru_prev = e;
    ca->lru_head = e;
    if (!ca->lru_tail)
        ca->lru_tail = e;
}

/* Caller holds ca->mu; the entry leaves the cache and is freed (a cert still in use
 * by a connection keeps its own reference). */
static void cache_remove(al_ca *ca, struct leaf_entry *e)
{
    struct leaf_entry **pp = &ca->buckets[e->hash & (ca->bucket_count - 1)];
    while (*pp != e)
        pp = &(*pp)->bucket_next;
    *pp = e->bucket_next;
    lru_unlink(ca, e);
    ca->count--;
    X509_free(e->cert);
    free(e->key);
    free(e);
}

static struct leaf_entry *cache_find(al_ca *ca, const char *key, uint64_t hash)
{
    for (struct leaf_entry *e = ca->buckets[hash & (ca->bucket_count - 1)]; e; e = e->bucket_next)
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

/* The leaf for `n` normalised names: cache hit, or sign outside the lock and insert. */
static int leaf_get(al_ca *ca, char names[][NAME_MAX_LEN + 1], const int *is_ip, size_t n,
                    X509 **out)
{
    char key[4 * (NAME_MAX_LEN + 2)]; /* at most 4 names and their commas */
    size_t off = 0;
    if (n == 0 || n > 4)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(key + off, sizeof key - off, "%s%s", i ? "," : "", names[i]);
    uint64_t hash = fnv1a(key);

    pthread_mutex_lock(&ca->mu);
    struct leaf_entry *e = cache_find(ca, key, hash);
    if (e && ca_now(ca) < e->renew_at) {
        lru_unlink(ca, e);
        lru_push_front(ca, e);
        X509_up_ref(e->cert);
        *out = e->cert;
        pthread_mutex_unlock(&ca->mu);
        return 0;
    }
    if (e)
        cache_remove(ca, e); /* due for renewal */
    pthread_mutex_unlock(&ca->mu);

    /* Two workers missing the same name at once may both sign; the second insert
     * replaces the first. Rare, and cheaper than holding the lock while signing. */
    X509 *cert = NULL;
    int rc = leaf_sign(ca, names, is_ip, n, &cert);
    if (rc != 0)
        return rc;
    struct leaf_entry *ne = calloc(1, sizeof *ne);
    if (!ne || !(ne->key = strdup(key))) {
        free(ne);
        *out = cert; /* still usable, just not cached */
        return 0;
    }
    ne->hash = hash;
    ne->cert = cert;
    ne->renew_at = ca_now(ca) + AL_CA_LEAF_RENEW_S;
    X509_up_ref(cert);
    *out = cert;

    pthread_mutex_lock(&ca->mu);
    if ((e = cache_find(ca, key, hash)))
        cache_remove(ca, e);
    while (ca->count >= ca->capacity && ca->lru_tail)
        cache_remove(ca, ca->lru_tail);
    struct leaf_entry **bucket = &ca->buckets[hash & (ca->bucket_count - 1)];
    ne->bucket_next = *bucket;
    *bucket = ne;
    lru_push_front(ca, ne);
    ca->count++;
    pthread_mutex_unlock(&ca->mu);
    return 0;
}

int al_ca_leaf(al_ca *ca, const char *host, X509 **out)
{
    char names[1][NAME_MAX_LEN + 1];
    int is_ip[1];
    if (!ca || !out || name_normalize(host, names[0], sizeof names[0], &is_ip[0]) != 0)
        return AL_ERR_INVAL;
    return leaf_get(ca, names, is_ip, 1, out);
}

/* ---- TLS contexts ---------------------------------------------------------- */

/* What a context's client-hello callback needs; owned by the SSL_CTX (ex_data). */
struct ctx_info {
    al_ca *ca; /* borrowed: outlives the context */
    int listener;
    /* listener only: the fixed names of its leaf */
    char names[4][NAME_MAX_LEN + 1];
    int is_ip[4];
    size_t name_count;
};

static int ssl_name_idx = -1; /* SSL ex_data: the tunnel's normalised host (owned) */
static int ctx_info_idx = -1; /* SSL_CTX ex_data: struct ctx_info (owned) */
static CRYPTO_ONCE ex_once = CRYPTO_ONCE_STATIC_INIT;

static void ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static void ex_init(void)
{
    ssl_name_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, ex_free);
    ctx_info_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ex_free);
}

static int ex_ready(void)
{
    return CRYPTO_THREAD_run_once(&ex_once, ex_init) && ssl_name_idx >= 0 && ctx_info_idx >= 0;
}

int al_tls_set_intercept_name(SSL *ssl, const char *host)
{
    char name[NAME_MAX_LEN + 1];
    int is_ip;
    if (!ssl || !ex_ready() || name_normalize(host, name, sizeof name, &is_ip) != 0)
        return AL_ERR_INVAL;
    char *copy = strdup(name);
    if (!copy)
        return AL_ERR_NOMEM;
    free(SSL_get_ex_data(ssl, ssl_name_idx));
    if (!SSL_set_ex_data(ssl, ssl_name_idx, copy)) {
        free(copy);
        return AL_ERR_NOMEM;
    }
    return 0;
}

/* The host_name entry of a server_name extension (RFC 6066 3), or 0 if none. */
static int client_hello_sni(SSL *ssl, char *out, size_t outsz)
{
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) || len < 5)
        return 0;
    size_t list_len = ((size_t)p[0] << 8) | p[1];
    if (list_len + 2 != len || p[2] != TLSEXT_NAMETYPE_host_name)
        return -1;
    size_t name_len = ((size_t)p[3] << 8) | p[4];
    if (name_len == 0 || name_len + 5 > len || name_len >= outsz)
        return -1;
    memcpy(out, p + 5, name_len);
    out[name_len] = '\0';
    if (memchr(out, '\0', name_len))
        return -1;
    return 1;
}

static int client_hello_cb(SSL *ssl, int *alert, void *arg)
{
    struct ctx_info *info = arg;
    char raw[NAME_MAX_LEN + 3], sni[NAME_MAX_LEN + 1];
    int sni_ip = 0;
    X509 *leaf = NULL;
    int rc;

    int has_sni = client_hello_sni(ssl, raw, sizeof raw);
    if (has_sni < 0 || (has_sni > 0 && name_normalize(raw, sni, sizeof sni, &sni_ip) != 0)) {
        al_log(AL_LOG_WARN, "tls.handshake", "refused: malformed SNI");
        *alert = SSL_AD_DECODE_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (info->listener) {
        rc = leaf_get(info->ca, info->names, info->is_ip, info->name_count, &leaf);
    } else {
        const char *tunnel = SSL_get_ex_data(ssl, ssl_name_idx);
        if (has_sni > 0 && tunnel && strcmp(sni, tunnel) != 0) {
            al_log(AL_LOG_WARN, "tls.handshake",
                   "refused: SNI %s is not the tunnel's host %s (a tunnel is for one host)", sni,
                   tunnel);
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        const char *name = has_sni > 0 ? sni : tunnel;
        if (!name) {
            al_log(AL_LOG_WARN, "tls.handshake", "refused: no SNI and no tunnel host");
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        char names[1][NAME_MAX_LEN + 1];
        int is_ip[1] = {has_sni > 0 ? sni_ip : 0};
        if (has_sni <= 0)
            (void)name_normalize(tunnel, names[0], sizeof names[0], &is_ip[0]);
        else
            memcpy(names[0], sni, strlen(sni) + 1);
        rc = leaf_get(info->ca, names, is_ip, 1, &leaf);
    }
    if (rc != 0) {
        al_log(AL_LOG_WARN, "tls.handshake", "refused: no certificate: %s", al_strerror(rc));
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    /* Leaf only: agents trust the CA itself, so sending it would only cost bytes. */
    int ok = SSL_use_cert_and_key(ssl, leaf, info->ca->leaf_key, NULL, 1);
    X509_free(leaf);
    if (ok != 1) {
        ERR_clear_error();
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* ALPN: our preference ("h2", then "http/1.1"), not the client's order; no common
 * protocol means no ALPN, and the connection speaks HTTP/1.1. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    static const char *const prefs[] = {"h2", "http/1.1"};
    (void)ssl, (void)arg;
    for (size_t k = 0; k < sizeof prefs / sizeof prefs[0]; k++) {
        size_t plen = strlen(prefs[k]);
        for (unsigned int i = 0; i < inlen;) {
            unsigned int l = in[i];
            if (i + 1 + l > inlen)
                return SSL_TLSEXT_ERR_NOACK;
            if (l == plen && memcmp(in + i + 1, prefs[k], plen) == 0) {
                *out = in + i + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
            i += 1 + l;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Common settings: TLS 1.2+, ECDHE + AEAD for 1.2, no renegotiation or compression,
 * session cache and tickets for resumption, ALPN. */
static SSL_CTX *ctx_base_new(const char *session_ctx)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:"
                                      "ECDHE-ECDSA-AES256-GCM-SHA384:"
                                      "ECDHE-ECDSA-CHACHA20-POLY1305:"
                                      "ECDHE-RSA-AES128-GCM-SHA256:"
                                      "ECDHE-RSA-AES256-GCM-SHA384:"
                                      "ECDHE-RSA-CHACHA20-POLY1305") ||
        !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                       "TLS_CHACHA20_POLY1305_SHA256") ||
        !SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") ||
        !SSL_CTX_set_session_id_context(ctx, (const unsigned char *)session_ctx,
                                        (unsigned int)strlen(session_ctx))) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_timeout(ctx, 3600);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    return ctx;
}

static SSL_CTX *ctx_with_info(struct ctx_info *info, const char *session_ctx)
{
    SSL_CTX *ctx = NULL;
    if (!ex_ready() || !(ctx = ctx_base_new(session_ctx)))
        goto fail;
    if (!SSL_CTX_set_ex_data(ctx, ctx_info_idx, info))
        goto fail;
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, info);
    return ctx;
fail:
    if (ctx)
        SSL_CTX_free(ctx);
    free(info);
    ERR_clear_error();
    return NULL;
}

SSL_CTX *al_tls_intercept_ctx_new(al_ca *ca)
{
    if (!ca)
        return NULL;
    struct ctx_info *info = calloc(1, sizeof *info);
    if (!info)
        return NULL;
    info->ca = ca;
    return ctx_with_info(info, "airlock-intercept");
}

SSL_CTX *al_tls_listener_ctx_new(al_ca *ca, const char *cert_file, const char *key_file,
                                 const char *server_name)
{
    if (cert_file && key_file) {
        SSL_CTX *ctx = ctx_base_new("airlock-listener");
        if (!ctx)
            return NULL;
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            al_log(AL_LOG_ERROR, "tls.listener", "cannot use %s with %s", cert_file, key_file);
            SSL_CTX_free(ctx);
            ERR_clear_error();
            return NULL;
        }
        return ctx;
    }
    if (!ca)
        return NULL;
    struct ctx_info *info = calloc(1, sizeof *info);
    if (!info)
        return NULL;
    info->ca = ca;
    info->listener = 1;
    /* The listener's own leaf, re-issued through the cache like any other, so a
     * long-running listener never serves an expired one. Loopback names are always
     * in it: agents reach a local proxy by any of them. */
    /* A wildcard listen address is no name a client uses: it reaches the listener by a
     * loopback name (or by the name given, which a name-constrained CA must permit). */
    if (!server_name || !*server_name || strcmp(server_name, "*") == 0 ||
        strcmp(server_name, "0.0.0.0") == 0 || strcmp(server_name, "::") == 0 ||
        strcmp(server_name, "[::]") == 0)
        server_name = "localhost";
    const char *wanted[4] = {server_name, "localhost", "127.0.0.1", "::1"};
    for (size_t i = 0; i < 4; i++) {
        char name[NAME_MAX_LEN + 1];
        int is_ip, dup = 0;
        if (name_normalize(wanted[i], name, sizeof name, &is_ip) != 0) {
            al_log(AL_LOG_ERROR, "tls.listener", "invalid server name");
            free(info);
            return NULL;
        }
        for (size_t j = 0; j < info->name_count; j++)
            dup |= strcmp(info->names[j], name) == 0;
        if (dup)
            continue;
        memcpy(info->names[info->name_count], name, sizeof name);
        info->is_ip[info->name_count++] = is_ip;
    }
    /* Issue once now so a CA that cannot sign fails at start-up, not per handshake. */
    X509 *leaf = NULL;
    if (leaf_get(ca, info->names, info->is_ip, info->name_count, &leaf) != 0) {
        al_log(AL_LOG_ERROR, "tls.listener", "cannot issue the listener's certificate");
        free(info);
        return NULL;
    }
    X509_free(leaf);
    return ctx_with_info(info, "airlock-listener");
}
