/* al_spool: see al_spool.h for the contract.
 *
 * Layout: bytes [0, mem.len) are in `mem` (an al_buf bounded by memory_max, wiped
 * when it grows or is freed); bytes [mem.len, size) are in the file at offset
 * (position - mem.len), encrypted with AES-256-CTR. The counter block for file
 * offset o is nonce(8 bytes) || big-endian(o / 16), and o % 16 keystream bytes are
 * skipped, so any offset can be read or written without touching its neighbours;
 * the cipher context keeps the key schedule and only the IV is set per call.
 *
 * Invariants: size == mem.len + file_len; the file exists only once mem is full;
 * `err` (0 or a negative al_err) is sticky for writes; the digest is final only
 * when `finished`. */
#include "al_spool.h"
#include "common/al_err.h"
#include "common/al_buf.h"
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

struct al_spool {
    al_buf mem;
    size_t memory_max;
    uint64_t max_bytes;
    uint64_t size;     /* bytes written in all */
    uint64_t file_len; /* of which in the file */
    int fd;            /* -1 until the first byte past memory_max */
    char *dir;         /* owned; where the file goes */
    int err;           /* sticky write error */
    int finished;
    EVP_MD_CTX *md;
    unsigned char digest[32];
    EVP_CIPHER_CTX *cipher; /* NULL until the file is made */
    unsigned char key[32], nonce[8];
    unsigned char *scratch; /* AL_SPOOL_CHUNK bytes: ciphertext on its way to the file */
};

int al_spool_open_tmp(const char *dir, int use_o_tmpfile, int *fd_out)
{
    int fd = -1;
#ifdef O_TMPFILE
    if (use_o_tmpfile) {
        fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
        /* Filesystems without O_TMPFILE say EOPNOTSUPP (or EISDIR/EINVAL on older
         * kernels); anything else (no such dir, no permission, full) is final. */
        if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
            return AL_ERR_IO;
    }
#else
    (void)use_o_tmpfile;
#endif
    if (fd < 0) {
        char path[4200];
        int n = snprintf(path, sizeof path, "%s/.airlock-spool-XXXXXX", dir);
        if (n < 0 || (size_t)n >= sizeof path) {
            errno = ENAMETOOLONG;
            return AL_ERR_IO;
        }
        fd = mkostemp(path, O_CLOEXEC); /* mode 0600 */
        if (fd < 0)
            return AL_ERR_IO;
        if (unlink(path) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return AL_ERR_IO;
        }
    }
    /* O_TMPFILE applies the umask to 0600, mkstemp makes 0600: make sure anyway. */
    if (fchmod(fd, 0600) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return AL_ERR_IO;
    }
    *fd_out = fd;
    return AL_OK;
}

int al_spool_new(const al_spool_cfg *cfg, al_spool **out)
{
    *out = NULL;
    if (!cfg || cfg->max_bytes == 0)
        return AL_ERR_INVAL;
    al_spool *s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->fd = -1;
    s->memory_max = cfg->memory_max;
    if ((uint64_t)s->memory_max > cfg->max_bytes)
        s->memory_max = (size_t)cfg->max_bytes;
    s->max_bytes = cfg->max_bytes;
    al_buf_init(&s->mem, s->memory_max);
    const char *dir = cfg->dir;
    if (!dir || !*dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    int rc = AL_ERR_NOMEM;
    if (!(s->dir = strdup(dir)))
        goto fail;
    if (cfg->sha256) {
        if (!(s->md = EVP_MD_CTX_new()))
            goto fail;
        rc = AL_ERR_CRYPTO;
        if (EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1)
            goto fail;
    }
    *out = s;
    return AL_OK;
fail:
    al_spool_free(s);
    return rc;
}

/* Sets the cipher's counter for file offset off and skips off % 16 keystream bytes. */
static int cipher_seek(al_spool *s, uint64_t off)
{
    unsigned char iv[16];
    memcpy(iv, s->nonce, 8);
    uint64_t block = off / 16;
    for (int i = 0; i < 8; i++)
        iv[15 - i] = (unsigned char)(block >> (8 * i));
    if (EVP_EncryptInit_ex(s->cipher, NULL, NULL, NULL, iv) != 1)
        return AL_ERR_CRYPTO;
    unsigned char skip[16] = {0};
    int n = (int)(off % 16), outl;
    if (n && EVP_EncryptUpdate(s->cipher, skip, &outl, skip, n) != 1)
        return AL_ERR_CRYPTO;
    return AL_OK;
}

/* Encrypts (or decrypts: CTR is its own inverse) n bytes for file offset off. */
static int cipher_apply(al_spool *s, uint64_t off, const unsigned char *in, unsigned char *out,
                        size_t n)
{
    int rc = cipher_seek(s, off);
    if (rc)
        return rc;
    int outl;
    if (EVP_EncryptUpdate(s->cipher, out, &outl, in, (int)n) != 1 || (size_t)outl != n)
        return AL_ERR_CRYPTO;
    return AL_OK;
}

/* The first byte past memory: the file, its key and its scratch buffer. */
static int open_file(al_spool *s)
{
    int rc = AL_ERR_NOMEM;
    if (!(s->scratch = malloc(AL_SPOOL_CHUNK)) || !(s->cipher = EVP_CIPHER_CTX_new()))
        return rc;
    rc = AL_ERR_CRYPTO;
    if (RAND_bytes(s->key, sizeof s->key) != 1 || RAND_bytes(s->nonce, sizeof s->nonce) != 1)
        return rc;
    if (EVP_EncryptInit_ex(s->cipher, EVP_aes_256_ctr(), NULL, s->key, NULL) != 1)
        return rc;
    return al_spool_open_tmp(s->dir, 1, &s->fd);
}

static int file_write(al_spool *s, const unsigned char *p, size_t len)
{
    while (len > 0) {
        size_t n = len < AL_SPOOL_CHUNK ? len : AL_SPOOL_CHUNK;
        int rc = cipher_apply(s, s->file_len, p, s->scratch, n);
        if (rc)
            return rc;
        size_t done = 0;
        while (done < n) {
            ssize_t w = pwrite(s->fd, s->scratch + done, n - done, (off_t)(s->file_len + done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (w == 0)
                    errno = ENOSPC;
                return AL_ERR_IO;
            }
            done += (size_t)w;
        }
        /* only whole chunks count: a failure above leaves file_len where it was */
        s->file_len += n;
        s->size += n;
        p += n;
        len -= n;
    }
    return AL_OK;
}

int al_spool_write(al_spool *s, const void *data, size_t len)
{
    if (s->finished)
        return AL_ERR_INVAL;
    if (s->err)
        return s->err;
    if (len > s->max_bytes - s->size)
        return AL_ERR_TOOBIG;
    if (len == 0)
        return AL_OK;
    const unsigned char *p = data;
    int rc = AL_ERR_CRYPTO;
    if (s->md && EVP_DigestUpdate(s->md, p, len) != 1)
        goto fail;
    size_t room = s->memory_max - s->mem.len;
    size_t to_mem = len < room ? len : room;
    if (to_mem) {
        rc = al_buf_append(&s->mem, p, to_mem);
        if (rc)
            goto fail;
        s->size += to_mem;
        p += to_mem;
        len -= to_mem;
    }
    if (len) {
        if (s->fd < 0 && (rc = open_file(s)) != AL_OK)
            goto fail;
        if ((rc = file_write(s, p, len)) != AL_OK)
            goto fail;
    }
    return AL_OK;
fail:
    /* The digest has seen bytes the spool may not hold: nothing after this is
     * trustworthy, so the spool stays failed. */
    s->err = rc;
    return rc;
}

int al_spool_finish(al_spool *s)
{
    if (s->err)
        return s->err;
    if (s->finished)
        return AL_OK;
    unsigned int n = sizeof s->digest;
    if (s->md && (EVP_DigestFinal_ex(s->md, s->digest, &n) != 1 || n != sizeof s->digest))
        return s->err = AL_ERR_CRYPTO;
    s->finished = 1;
    return AL_OK;
}

uint64_t al_spool_size(const al_spool *s)
{
    return s->size;
}

int al_spool_finished(const al_spool *s)
{
    return s->finished;
}

int al_spool_sha256(const al_spool *s, unsigned char out[32])
{
    if (!s->md)
        return AL_ERR_INVAL;
    if (!s->finished)
        return AL_ERR_AGAIN;
    memcpy(out, s->digest, sizeof s->digest);
    return AL_OK;
}

int al_spool_sha256_hex(const al_spool *s, char hex[65])
{
    unsigned char d[32];
    int rc = al_spool_sha256(s, d);
    if (rc)
        return rc;
    al_hex_encode(d, sizeof d, hex);
    return AL_OK;
}

int al_spool_fd(const al_spool *s)
{
    return s->fd;
}

void al_spool_free(al_spool *s)
{
    if (!s)
        return;
    if (s->fd >= 0) {
        /* gives the blocks back now; what they held is ciphertext under a key that
         * is wiped below */
        if (ftruncate(s->fd, 0) != 0) {
            /* nothing to do: close() releases the unnamed file anyway */
        }
        close(s->fd);
    }
    al_buf_free(&s->mem, 1);
    if (s->scratch) {
        OPENSSL_cleanse(s->scratch, AL_SPOOL_CHUNK);
        free(s->scratch);
    }
    EVP_CIPHER_CTX_free(s->cipher);
    EVP_MD_CTX_free(s->md);
    free(s->dir);
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

void al_spool_reader_init(al_spool_reader *rd, al_spool *s)
{
    rd->spool = s;
    rd->off = 0;
}

int al_spool_read(al_spool_reader *rd, void *buf, size_t cap, size_t *got)
{
    al_spool *s = rd->spool;
    *got = 0;
    if (rd->off >= s->size)
        return s->finished ? AL_OK : AL_ERR_AGAIN;
    if (cap == 0)
        return AL_OK;
    uint64_t avail = s->size - rd->off;
    if (cap > avail)
        cap = (size_t)avail;
    if (rd->off < s->mem.len) {
        size_t n = s->mem.len - (size_t)rd->off;
        if (n > cap)
            n = cap;
        memcpy(buf, s->mem.data + rd->off, n);
        rd->off += n;
        *got = n;
        return AL_OK;
    }
    uint64_t foff = rd->off - s->mem.len;
    size_t n = cap < AL_SPOOL_CHUNK ? cap : AL_SPOOL_CHUNK;
    ssize_t r;
    do
        r = pread(s->fd, buf, n, (off_t)foff);
    while (r < 0 && errno == EINTR);
    if (r <= 0) {
        if (r == 0)
            errno = EIO; /* the file is shorter than what was written to it */
        return AL_ERR_IO;
    }
    int rc = cipher_apply(s, foff, buf, buf, (size_t)r);
    if (rc)
        return rc;
    rd->off += (uint64_t)r;
    *got = (size_t)r;
    return AL_OK;
}
