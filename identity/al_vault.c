/* al_vault: envelope encryption for the identity store (see al_vault.h).
 *
 * Invariants: the master key and data keys live only in this module's memory and
 * are wiped (OPENSSL_cleanse) when freed; every blob is authenticated (GCM tag)
 * with associated data naming the row it belongs to, so a wrong key, a flipped
 * byte or a moved ciphertext all fail with AL_ERR_KEY before any plaintext is
 * returned. Nonces are random (96 bits) and each data key seals one message. */
#include "al_vault.h"
#include "common/al_err.h"
#include "common/al_hex.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct al_vault {
    unsigned char key[AL_VAULT_KEY_LEN];
    char *key_path; /* owned; NULL when built from raw bytes */
};

#define AAD_MAX 512

int al_vault_aead_seal(const unsigned char key[AL_VAULT_KEY_LEN], const unsigned char *aad,
                       size_t aad_len, const unsigned char *plain, size_t plain_len,
                       unsigned char **out, size_t *out_len)
{
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *blob = NULL;
    int n = 0, rc = AL_ERR_CRYPTO;
    if (plain_len > 1u << 20)
        return AL_ERR_TOOBIG;
    size_t total = plain_len + AL_VAULT_OVERHEAD;
    blob = malloc(total);
    if (!blob)
        return AL_ERR_NOMEM;
    if (RAND_bytes(blob, AL_VAULT_NONCE_LEN) != 1)
        goto fail;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob) != 1)
        goto fail;
    if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto fail;
    if (plain_len &&
        EVP_EncryptUpdate(ctx, blob + AL_VAULT_NONCE_LEN, &n, plain, (int)plain_len) != 1)
        goto fail;
    if (EVP_EncryptFinal_ex(ctx, blob + AL_VAULT_NONCE_LEN + plain_len, &n) != 1)
        goto fail;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AL_VAULT_TAG_LEN,
                            blob + AL_VAULT_NONCE_LEN + plain_len) != 1)
        goto fail;
    *out = blob;
    *out_len = total;
    blob = NULL;
    rc = AL_OK;
fail:
    EVP_CIPHER_CTX_free(ctx);
    free(blob);
    return rc;
}

int al_vault_aead_open(const unsigned char key[AL_VAULT_KEY_LEN], const unsigned char *aad,
                       size_t aad_len, const unsigned char *blob, size_t blob_len,
                       unsigned char **plain, size_t *plain_len)
{
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *p = NULL;
    int n = 0, rc = AL_ERR_KEY;
    if (!blob || blob_len < AL_VAULT_OVERHEAD || blob_len > (1u << 20) + AL_VAULT_OVERHEAD)
        return AL_ERR_KEY;
    size_t ct_len = blob_len - AL_VAULT_OVERHEAD;
    p = malloc(ct_len + 1);
    if (!p)
        return AL_ERR_NOMEM;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob) != 1) {
        rc = AL_ERR_CRYPTO;
        goto fail;
    }
    if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto fail;
    if (ct_len && EVP_DecryptUpdate(ctx, p, &n, blob + AL_VAULT_NONCE_LEN, (int)ct_len) != 1)
        goto fail;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AL_VAULT_TAG_LEN,
                            (void *)(blob + AL_VAULT_NONCE_LEN + ct_len)) != 1)
        goto fail;
    /* The tag is checked here: until it passes, nothing decrypted leaves. */
    if (EVP_DecryptFinal_ex(ctx, p + ct_len, &n) != 1)
        goto fail;
    p[ct_len] = '\0';
    *plain = p;
    *plain_len = ct_len;
    p = NULL;
    rc = AL_OK;
fail:
    EVP_CIPHER_CTX_free(ctx);
    if (p) {
        OPENSSL_cleanse(p, ct_len + 1);
        free(p);
    }
    return rc;
}

/* "airlock/v1\0<purpose>\0<name>\0<kind>\0<version>" */
static int make_aad(unsigned char *aad, size_t cap, const char *purpose, const char *name,
                    const char *kind, uint32_t version, size_t *len)
{
    int n = snprintf((char *)aad, cap, "airlock/v1%c%s%c%s%c%s%c%u", 0, purpose, 0, name, 0, kind,
                     0, (unsigned)version);
    if (n < 0 || (size_t)n >= cap)
        return AL_ERR_TOOBIG;
    *len = (size_t)n;
    return AL_OK;
}

int al_vault_seal(const al_vault *v, const char *name, const char *kind, uint32_t version,
                  const unsigned char *plain, size_t plain_len, unsigned char **wrapped_key,
                  size_t *wrapped_len, unsigned char **sealed, size_t *sealed_len)
{
    unsigned char dk[AL_VAULT_KEY_LEN], aad[AAD_MAX];
    size_t aad_len;
    unsigned char *w = NULL, *s = NULL;
    size_t wl = 0, sl = 0;
    int rc = make_aad(aad, sizeof aad, "secret", name, kind, version, &aad_len);
    if (rc != AL_OK)
        return rc;
    if (RAND_bytes(dk, sizeof dk) != 1)
        return AL_ERR_CRYPTO;
    rc = al_vault_aead_seal(dk, aad, aad_len, plain, plain_len, &s, &sl);
    if (rc != AL_OK)
        goto fail;
    make_aad(aad, sizeof aad, "data-key", name, kind, version, &aad_len);
    rc = al_vault_aead_seal(v->key, aad, aad_len, dk, sizeof dk, &w, &wl);
    if (rc != AL_OK)
        goto fail;
    *wrapped_key = w;
    *wrapped_len = wl;
    *sealed = s;
    *sealed_len = sl;
    w = s = NULL;
fail:
    OPENSSL_cleanse(dk, sizeof dk);
    free(w);
    free(s);
    return rc;
}

static int unwrap(const al_vault *v, const char *name, const char *kind, uint32_t version,
                  const unsigned char *wrapped, size_t wrapped_len,
                  unsigned char dk[AL_VAULT_KEY_LEN])
{
    unsigned char aad[AAD_MAX];
    size_t aad_len, dl = 0;
    unsigned char *d = NULL;
    int rc = make_aad(aad, sizeof aad, "data-key", name, kind, version, &aad_len);
    if (rc != AL_OK)
        return rc;
    rc = al_vault_aead_open(v->key, aad, aad_len, wrapped, wrapped_len, &d, &dl);
    if (rc != AL_OK)
        return rc;
    if (dl != AL_VAULT_KEY_LEN)
        rc = AL_ERR_KEY;
    else
        memcpy(dk, d, AL_VAULT_KEY_LEN);
    OPENSSL_cleanse(d, dl);
    free(d);
    return rc;
}

int al_vault_unseal(const al_vault *v, const char *name, const char *kind, uint32_t version,
                    const unsigned char *wrapped_key, size_t wrapped_len,
                    const unsigned char *sealed, size_t sealed_len, unsigned char **plain,
                    size_t *plain_len)
{
    unsigned char dk[AL_VAULT_KEY_LEN], aad[AAD_MAX];
    size_t aad_len;
    int rc = unwrap(v, name, kind, version, wrapped_key, wrapped_len, dk);
    if (rc != AL_OK)
        return rc;
    rc = make_aad(aad, sizeof aad, "secret", name, kind, version, &aad_len);
    if (rc == AL_OK)
        rc = al_vault_aead_open(dk, aad, aad_len, sealed, sealed_len, plain, plain_len);
    OPENSSL_cleanse(dk, sizeof dk);
    return rc;
}

int al_vault_rewrap(const al_vault *from, const al_vault *to, const char *name, const char *kind,
                    uint32_t version, const unsigned char *wrapped_key, size_t wrapped_len,
                    unsigned char **out, size_t *out_len)
{
    unsigned char dk[AL_VAULT_KEY_LEN], aad[AAD_MAX];
    size_t aad_len;
    int rc = unwrap(from, name, kind, version, wrapped_key, wrapped_len, dk);
    if (rc != AL_OK)
        return rc;
    rc = make_aad(aad, sizeof aad, "data-key", name, kind, version, &aad_len);
    if (rc == AL_OK)
        rc = al_vault_aead_seal(to->key, aad, aad_len, dk, sizeof dk, out, out_len);
    OPENSSL_cleanse(dk, sizeof dk);
    return rc;
}

static const char check_plain[] = "airlock master key check v1";

static int from_hex(const char *s, size_t n, unsigned char *out)
{
    if (n % 2)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < n / 2; i++) {
        int a = al_hex_value((unsigned char)s[2 * i]), b = al_hex_value((unsigned char)s[2 * i + 1]);
        if (a < 0 || b < 0)
            return AL_ERR_INVAL;
        out[i] = (unsigned char)(a << 4 | b);
    }
    return AL_OK;
}

int al_vault_make_check(const al_vault *v, char **check_hex)
{
    unsigned char *blob = NULL;
    size_t len = 0;
    int rc =
        al_vault_aead_seal(v->key, (const unsigned char *)"check", 5,
                           (const unsigned char *)check_plain, sizeof check_plain - 1, &blob, &len);
    if (rc != AL_OK)
        return rc;
    char *hex = malloc(2 * len + 1);
    if (!hex) {
        free(blob);
        return AL_ERR_NOMEM;
    }
    al_hex_encode(blob, len, hex);
    free(blob);
    *check_hex = hex;
    return AL_OK;
}

int al_vault_verify_check(const al_vault *v, const char *check_hex)
{
    size_t hl = strlen(check_hex);
    unsigned char blob[256], *plain = NULL;
    size_t pl = 0;
    if (hl / 2 > sizeof blob || from_hex(check_hex, hl, blob) != AL_OK)
        return AL_ERR_KEY;
    int rc =
        al_vault_aead_open(v->key, (const unsigned char *)"check", 5, blob, hl / 2, &plain, &pl);
    if (rc == AL_OK && (pl != sizeof check_plain - 1 || memcmp(plain, check_plain, pl) != 0))
        rc = AL_ERR_KEY;
    free(plain);
    return rc;
}

void al_vault_fingerprint(const unsigned char *secret, size_t len, char out[32])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (EVP_Digest(secret, len, md, &mdlen, EVP_sha256(), NULL) != 1) {
        snprintf(out, 32, "sha256:?");
        return;
    }
    al_hex_encode(md, 6, hex);
    memcpy(out, "sha256:", 7);
    memcpy(out + 7, hex, 13); /* 12 hex digits and the NUL */
}

int al_vault_read_key_file(const char *path, unsigned char key[AL_VAULT_KEY_LEN])
{
    char buf[160];
    int rc = AL_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return AL_ERR_NOTFOUND;
        fprintf(stderr, "airlock: cannot open master key file %s: %s\n", path, strerror(errno));
        return AL_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "airlock: master key file %s is not a regular file\n", path);
        rc = AL_ERR_IO;
        goto out;
    }
    if (sb.st_mode & 077) {
        fprintf(stderr,
                "airlock: refusing master key file %s: it is accessible by group or others "
                "(mode %04o); anyone who can read it can decrypt every stored secret. "
                "Run: chmod 600 %s\n",
                path, (unsigned)(sb.st_mode & 07777), path);
        rc = AL_ERR_PERM;
        goto out;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
        rc = AL_ERR_IO;
        goto out;
    }
    size_t len = (size_t)n;
    if (len == AL_VAULT_KEY_LEN) {
        memcpy(key, buf, AL_VAULT_KEY_LEN);
        goto out;
    }
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        len--;
    if (len != 2 * AL_VAULT_KEY_LEN || from_hex(buf, len, key) != AL_OK) {
        fprintf(stderr,
                "airlock: master key file %s must hold 64 hex characters (32 bytes); "
                "create one with: openssl rand -hex 32 > %s && chmod 600 %s\n",
                path, path, path);
        rc = AL_ERR_KEY;
    }
out:
    OPENSSL_cleanse(buf, sizeof buf);
    close(fd);
    return rc;
}

/* exclusive: link() instead of rename(), so two processes generating the first key
 * at once cannot both win: the loser gets AL_ERR_EXISTS and reads the winner's. */
static int write_key_file(const char *path, const unsigned char key[AL_VAULT_KEY_LEN],
                          int exclusive)
{
    char tmp[4096], hex[2 * AL_VAULT_KEY_LEN + 2];
    int rc = AL_OK;
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return AL_ERR_TOOBIG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "airlock: cannot create %s: %s\n", tmp, strerror(errno));
        return AL_ERR_IO;
    }
    al_hex_encode(key, AL_VAULT_KEY_LEN, hex);
    hex[2 * AL_VAULT_KEY_LEN] = '\n';
    if (write(fd, hex, 2 * AL_VAULT_KEY_LEN + 1) != 2 * AL_VAULT_KEY_LEN + 1 || fsync(fd) != 0)
        rc = AL_ERR_IO;
    OPENSSL_cleanse(hex, sizeof hex);
    if (close(fd) != 0)
        rc = AL_ERR_IO;
    if (rc == AL_OK && exclusive) {
        if (link(tmp, path) != 0)
            rc = errno == EEXIST ? AL_ERR_EXISTS : AL_ERR_IO;
        unlink(tmp);
        if (rc == AL_ERR_EXISTS)
            return rc;
    } else if (rc == AL_OK && rename(tmp, path) != 0) {
        rc = AL_ERR_IO;
    }
    if (rc != AL_OK) {
        fprintf(stderr, "airlock: cannot write master key file %s: %s\n", path, strerror(errno));
        unlink(tmp);
    }
    return rc;
}

int al_vault_write_key_file(const char *path, const unsigned char key[AL_VAULT_KEY_LEN])
{
    return write_key_file(path, key, 0);
}

int al_vault_from_key(const unsigned char key[AL_VAULT_KEY_LEN], al_vault **out)
{
    al_vault *v = calloc(1, sizeof *v);
    if (!v)
        return AL_ERR_NOMEM;
    memcpy(v->key, key, AL_VAULT_KEY_LEN);
    *out = v;
    return AL_OK;
}

int al_vault_open(const char *state_dir, int flags, al_vault **out)
{
    unsigned char key[AL_VAULT_KEY_LEN];
    char path[4096];
    al_vault *v = NULL;
    const char *env = getenv("AIRLOCK_MASTER_KEY_FILE");
    int from_env = env && *env;
    int rc;
    if (from_env)
        rc = snprintf(path, sizeof path, "%s", env) >= (int)sizeof path ? AL_ERR_TOOBIG : AL_OK;
    else
        rc = snprintf(path, sizeof path, "%s/master.key", state_dir) >= (int)sizeof path
                 ? AL_ERR_TOOBIG
                 : AL_OK;
    if (rc != AL_OK)
        return rc;
    rc = al_vault_read_key_file(path, key);
    if (rc == AL_ERR_NOTFOUND) {
        if (from_env) {
            fprintf(stderr, "airlock: AIRLOCK_MASTER_KEY_FILE names %s, which does not exist\n",
                    path);
            return AL_ERR_NOTFOUND;
        }
        if (!(flags & AL_VAULT_GENERATE))
            return AL_ERR_NOTFOUND;
        if (mkdir(state_dir, 0700) != 0 && errno != EEXIST)
            return AL_ERR_IO;
        if (RAND_bytes(key, sizeof key) != 1)
            return AL_ERR_CRYPTO;
        rc = write_key_file(path, key, 1);
        if (rc == AL_ERR_EXISTS) /* another process generated it first: use theirs */
            rc = al_vault_read_key_file(path, key);
        else if (rc == AL_OK)
            fprintf(stderr,
                    "airlock: warning: generated a new master key at %s; production should supply "
                    "its own key with AIRLOCK_MASTER_KEY_FILE (kept outside the state dir)\n",
                    path);
        if (rc != AL_OK)
            goto out;
    } else if (rc != AL_OK) {
        return rc;
    }
    rc = al_vault_from_key(key, &v);
    if (rc != AL_OK)
        goto out;
    v->key_path = strdup(path);
    if (!v->key_path) {
        al_vault_free(v);
        rc = AL_ERR_NOMEM;
        goto out;
    }
    *out = v;
out:
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

const char *al_vault_key_path(const al_vault *v)
{
    return v->key_path;
}

void al_vault_free(al_vault *v)
{
    if (!v)
        return;
    OPENSSL_cleanse(v->key, sizeof v->key);
    free(v->key_path);
    free(v);
}
