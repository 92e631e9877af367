/* al_sigv4: AWS Signature Version 4 signer; see al_sigv4.h for the rules.
 *
 * Everything is computed from the caller's slices into caller-owned al_bufs; the only
 * state is the key cache the caller passes. Scratch memory (the sorted header index,
 * the canonical request when the caller does not want it) is allocated per call and
 * freed before returning. */
#include "al_sigv4.h"

#include "common/al_err.h"
#include "common/al_hex.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SCRATCH_MAX (1u << 20) /* canonical request / headers: 1 MiB is far above any real one */

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static int name_is(const char *n, size_t len, const char *lit)
{
    size_t l = strlen(lit);
    if (len != l)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (lower((unsigned char)n[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* Percent-encodes p[0..n): unreserved kept, '/' kept when keep_slash. */
static int encode(al_buf *b, const unsigned char *p, size_t n, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = 0;
    while (i < n) {
        size_t run = i; /* a run of bytes kept as they are goes in one append */
        while (run < n && (unreserved(p[run]) || (keep_slash && p[run] == '/')))
            run++;
        int rc = run > i ? al_buf_append(b, p + i, run - i) : AL_OK;
        if (!rc && run < n) {
            char e[3] = {'%', hex[p[run] >> 4], hex[p[run] & 15]};
            rc = al_buf_append(b, e, 3);
            run++;
        }
        if (rc)
            return rc;
        i = run;
    }
    return AL_OK;
}

/* Grows b once to hold `cap` bytes (al_buf has no reserve call: append, then take
 * back), so building a canonical request does not reallocate (and wipe) on the way. */
static void presize(al_buf *b, size_t cap)
{
    static const char zeros[1024];
    if (cap > sizeof zeros)
        cap = sizeof zeros;
    if (al_buf_append(b, zeros, cap) == AL_OK)
        al_buf_reset(b);
}

/* Percent-decodes p[0..n) and re-encodes it into b. A '%' not followed by two hex
 * digits is a literal '%' (encoded as %25), as lenient servers read it. */
static int decode_encode(al_buf *b, const char *p, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%' && i + 2 < n) {
            int h = al_hex_value((unsigned char)p[i + 1]),
                l = al_hex_value((unsigned char)p[i + 2]);
            if (h >= 0 && l >= 0) {
                c = (unsigned char)(h * 16 + l);
                i += 2;
            }
        }
        int rc = encode(b, &c, 1, keep_slash);
        if (rc)
            return rc;
    }
    return AL_OK;
}

/* botocore's remove_dot_segments: '.' and empty segments dropped, '..' pops; the
 * leading '/' kept, a trailing '/' kept when something is left. */
static int normalize_path(const char *p, size_t n, al_buf *out)
{
    if (n == 0)
        return al_buf_append(out, "/", 1);
    /* Segment boundaries (offset, length) on a bounded stack: at most n/2+1 segments. */
    size_t cap = n / 2 + 2, top = 0;
    size_t *seg = malloc(cap * 2 * sizeof *seg);
    if (!seg)
        return AL_ERR_NOMEM;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && p[j] != '/')
            j++;
        size_t len = j - i;
        if (len == 0 || (len == 1 && p[i] == '.')) {
            /* skip */
        } else if (len == 2 && p[i] == '.' && p[i + 1] == '.') {
            if (top)
                top--;
        } else {
            seg[2 * top] = i;
            seg[2 * top + 1] = len;
            top++;
        }
        i = j + 1;
    }
    int rc = AL_OK;
    if (p[0] == '/')
        rc = al_buf_append(out, "/", 1);
    for (size_t k = 0; !rc && k < top; k++) {
        if (k)
            rc = al_buf_append(out, "/", 1);
        if (!rc)
            rc = al_buf_append(out, p + seg[2 * k], seg[2 * k + 1]);
    }
    if (!rc && p[n - 1] == '/' && top)
        rc = al_buf_append(out, "/", 1);
    free(seg);
    return rc;
}

static int canonical_uri(const char *path, size_t len, unsigned flags, al_buf *out)
{
    if (len == 0) {
        path = "/";
        len = 1;
    }
    if (flags & AL_SIGV4_SINGLE_ENCODE) {
        if (flags & AL_SIGV4_KEEP_PATH)
            return decode_encode(out, path, len, 1);
        /* Decoded first, so that the forwarded form (al_sigv4_wire_path) signs alike. */
        al_buf tmp;
        al_buf_init(&tmp, SCRATCH_MAX);
        int rc = decode_encode(&tmp, path, len, 1);
        if (!rc)
            rc = normalize_path(tmp.data, tmp.len, out);
        al_buf_free(&tmp, 0);
        return rc;
    }
    if (flags & AL_SIGV4_KEEP_PATH)
        return encode(out, (const unsigned char *)path, len, 1);
    al_buf tmp;
    al_buf_init(&tmp, SCRATCH_MAX);
    int rc = normalize_path(path, len, &tmp);
    if (!rc)
        rc = encode(out, (const unsigned char *)tmp.data, tmp.len, 1);
    al_buf_free(&tmp, 0);
    return rc;
}

/* ---- query ---- */

typedef struct qpair {
    size_t k, klen, v, vlen; /* offsets into the encoded buffer */
} qpair;

static int qpair_cmp_buf(const char *base, const qpair *a, const qpair *b)
{
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(base + a->k, base + b->k, n);
    if (c)
        return c;
    if (a->klen != b->klen)
        return a->klen < b->klen ? -1 : 1;
    n = a->vlen < b->vlen ? a->vlen : b->vlen;
    c = memcmp(base + a->v, base + b->v, n);
    if (c)
        return c;
    if (a->vlen != b->vlen)
        return a->vlen < b->vlen ? -1 : 1;
    return 0;
}

/* Encodes every pair into enc (key, value, key, value ... back to back) and records
 * their offsets; *np pairs. */
static int split_query(const char *q, size_t n, al_buf *enc, qpair **pairs, size_t *np)
{
    size_t cap = 1;
    for (size_t i = 0; i < n; i++)
        cap += q[i] == '&';
    qpair *ps = malloc(cap * sizeof *ps);
    if (!ps)
        return AL_ERR_NOMEM;
    size_t count = 0, i = 0;
    int rc = AL_OK;
    while (i < n && !rc) {
        size_t j = i;
        while (j < n && q[j] != '&')
            j++;
        if (j > i) {
            size_t eq = i;
            while (eq < j && q[eq] != '=')
                eq++;
            qpair *pp = &ps[count++];
            pp->k = enc->len;
            rc = decode_encode(enc, q + i, eq - i, 0);
            pp->klen = enc->len - pp->k;
            pp->v = enc->len;
            if (!rc && eq < j)
                rc = decode_encode(enc, q + eq + 1, j - eq - 1, 0);
            pp->vlen = enc->len - pp->v;
        }
        i = j + 1;
    }
    if (rc) {
        free(ps);
        return rc;
    }
    *pairs = ps;
    *np = count;
    return AL_OK;
}

/* Re-encodes the query's pairs into out, sorted (canonical) or in arrival order (wire). */
static int rewrite_query(const char *q, size_t n, int sorted, al_buf *out)
{
    if (!q || n == 0)
        return AL_OK;
    al_buf enc;
    al_buf_init(&enc, SCRATCH_MAX);
    qpair *ps = NULL;
    size_t np = 0;
    int rc = split_query(q, n, &enc, &ps, &np);
    if (rc)
        goto out;
    /* Pairs that are all empty ("&&", "=") leave enc without a buffer; offsets
     * into NULL are undefined even when zero (found by fuzz_auth_sigv4). */
    const char *base = enc.data ? enc.data : "";
    /* Insertion sort: queries have a handful of pairs, and qsort has no context arg. */
    for (size_t i = 1; sorted && i < np; i++) {
        qpair x = ps[i];
        size_t j = i;
        while (j > 0 && qpair_cmp_buf(base, &ps[j - 1], &x) > 0) {
            ps[j] = ps[j - 1];
            j--;
        }
        ps[j] = x;
    }
    for (size_t i = 0; i < np && !rc; i++) {
        if (i)
            rc = al_buf_append(out, "&", 1);
        if (!rc)
            rc = al_buf_append(out, base + ps[i].k, ps[i].klen);
        if (!rc)
            rc = al_buf_append(out, "=", 1);
        if (!rc)
            rc = al_buf_append(out, base + ps[i].v, ps[i].vlen);
    }
out:
    free(ps);
    al_buf_free(&enc, 0);
    return rc;
}

int al_sigv4_wire_query(const char *q, size_t n, al_buf *out)
{
    return rewrite_query(q, n, 0, out);
}

int al_sigv4_wire_path(const char *path, size_t len, unsigned flags, al_buf *out)
{
    if (len == 0)
        return al_buf_append(out, "/", 1);
    if (flags & AL_SIGV4_SINGLE_ENCODE)
        return decode_encode(out, path, len, 1);
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)path[i];
        int rc;
        if (c <= 0x20 || c >= 0x7f || strchr("\"<>\\^`{|}#?", c)) {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = al_buf_append(out, e, 3);
        } else {
            rc = al_buf_append(out, &path[i], 1);
        }
        if (rc)
            return rc;
    }
    return AL_OK;
}

int al_sigv4_query_is_presigned(const char *q, size_t n)
{
    if (!q || n == 0)
        return 0;
    al_buf enc;
    al_buf_init(&enc, SCRATCH_MAX);
    qpair *ps = NULL;
    size_t np = 0;
    int found = 0;
    if (split_query(q, n, &enc, &ps, &np)) {
        found = 1; /* cannot tell: refuse rather than forward an agent's signature */
        goto out;
    }
    for (size_t i = 0; i < np; i++) {
        const char *k = (enc.data ? enc.data : "") + ps[i].k;
        size_t kl = ps[i].klen;
        /* The encoded key is canonical: "X-Amz-Signature" has no bytes to encode, so a
         * %58-style spelling arrives here decoded to the same letters. */
        if (name_is(k, kl, "x-amz-signature") || name_is(k, kl, "x-amz-credential") ||
            name_is(k, kl, "x-amz-algorithm") || name_is(k, kl, "x-amz-security-token"))
            found = 1;
    }
out:
    free(ps);
    al_buf_free(&enc, 0);
    return found;
}

/* ---- headers ---- */

typedef struct hent {
    const al_sigv4_header *h;
    size_t order;
} hent;

static int hent_cmp(const void *a, const void *b)
{
    const hent *x = a, *y = b;
    size_t n = x->h->name_len < y->h->name_len ? x->h->name_len : y->h->name_len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = lower((unsigned char)x->h->name[i]),
                      d = lower((unsigned char)y->h->name[i]);
        if (c != d)
            return c < d ? -1 : 1;
    }
    if (x->h->name_len != y->h->name_len)
        return x->h->name_len < y->h->name_len ? -1 : 1;
    return x->order < y->order ? -1 : (x->order > y->order);
}

static int ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Trimmed, whitespace runs collapsed to one space. CR/LF only as obsolete folding
 * (followed by a space or tab); NUL and lone CR/LF are refused. */
static int append_value(al_buf *b, const char *v, size_t n)
{
    size_t i = 0;
    while (i < n && ws((unsigned char)v[i]))
        i++;
    while (n > i && ws((unsigned char)v[n - 1]))
        n--;
    int pending = 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '\0')
            return AL_ERR_INVAL;
        if ((c == '\r' || c == '\n')) {
            size_t j = i;
            while (j < n && (v[j] == '\r' || v[j] == '\n'))
                j++;
            if (j >= n || (v[j] != ' ' && v[j] != '\t'))
                return AL_ERR_INVAL;
        }
        if (ws(c)) {
            pending = 1;
            continue;
        }
        int rc;
        if (pending && (rc = al_buf_append(b, " ", 1)))
            return rc;
        pending = 0;
        size_t run = i + 1; /* the rest of this word in one append */
        while (run < n && !ws((unsigned char)v[run]) && v[run] != '\0')
            run++;
        if ((rc = al_buf_append(b, &v[i], run - i)))
            return rc;
        i = run - 1;
    }
    return AL_OK;
}

static int append_lower(al_buf *b, const char *n, size_t len)
{
    char tmp[128];
    for (size_t i = 0; i < len;) {
        size_t k = 0;
        for (; k < sizeof tmp && i < len; k++, i++) {
            unsigned char c = lower((unsigned char)n[i]);
            if (c <= 0x20 || c == ':' || c >= 0x7f)
                return AL_ERR_INVAL;
            tmp[k] = (char)c;
        }
        int rc = al_buf_append(b, tmp, k);
        if (rc)
            return rc;
    }
    return AL_OK;
}

/* Headers the signer sets itself: dropped from the caller's list. */
static int signer_owned(const al_sigv4_header *h)
{
    return name_is(h->name, h->name_len, "authorization") ||
           name_is(h->name, h->name_len, "x-amz-date") ||
           name_is(h->name, h->name_len, "x-amz-security-token") ||
           name_is(h->name, h->name_len, "x-amz-content-sha256");
}

/* Appends "canonical headers\n\nsigned;headers" pieces: canon gets "name:value\n"
 * lines, signed_h the ';' list. */
static int canonical_headers(const al_sigv4_request *r, const al_sigv4_header *extra, size_t nextra,
                             al_buf *canon, al_buf *signed_h)
{
    size_t n = r->n_headers + nextra;
    hent *e = malloc((n ? n : 1) * sizeof *e);
    if (!e)
        return AL_ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; i < r->n_headers; i++)
        if (!signer_owned(&r->headers[i])) {
            e[m].h = &r->headers[i];
            e[m].order = m;
            m++;
        }
    for (size_t i = 0; i < nextra; i++) {
        e[m].h = &extra[i];
        e[m].order = m;
        m++;
    }
    qsort(e, m, sizeof *e, hent_cmp);
    int rc = AL_OK;
    for (size_t i = 0; i < m && !rc; i++) {
        int same = i > 0 && e[i - 1].h->name_len == e[i].h->name_len &&
                   strncasecmp(e[i - 1].h->name, e[i].h->name, e[i].h->name_len) == 0;
        if (e[i].h->name_len == 0) {
            rc = AL_ERR_INVAL;
            break;
        }
        if (same) {
            rc = al_buf_append(canon, ",", 1);
        } else {
            if (i)
                rc = al_buf_append(canon, "\n", 1);
            if (!rc && signed_h->len)
                rc = al_buf_append(signed_h, ";", 1);
            if (!rc)
                rc = append_lower(canon, e[i].h->name, e[i].h->name_len);
            if (!rc)
                rc = append_lower(signed_h, e[i].h->name, e[i].h->name_len);
            if (!rc)
                rc = al_buf_append(canon, ":", 1);
        }
        if (!rc)
            rc = append_value(canon, e[i].h->value, e[i].h->value_len);
    }
    if (!rc && m)
        rc = al_buf_append(canon, "\n", 1);
    free(e);
    return rc;
}

/* ---- crypto ---- */

/* SHA-256 fetched once: OpenSSL 3's implicit fetch (EVP_sha256() in EVP_Digest, HMAC())
 * takes a lock and a lookup on every call, which was most of a signature's cost. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static int sha256_parts(const void *a, size_t an, const void *b, size_t bn, unsigned char out[32])
{
    pthread_once(&sha256_once, sha256_fetch);
    EVP_MD_CTX *ctx = sha256_md ? EVP_MD_CTX_new() : NULL;
    unsigned int len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, sha256_md, NULL) && EVP_DigestUpdate(ctx, a, an) &&
             (!bn || EVP_DigestUpdate(ctx, b, bn)) && EVP_DigestFinal_ex(ctx, out, &len) &&
             len == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? AL_OK : AL_ERR_CRYPTO;
}

/* HMAC-SHA256 (RFC 2104) over the fetched digest; keys here are at most 64 bytes but
 * the secret-derived first key ("AWS4" + secret), which is hashed when longer. */
static int hmac(const void *key, size_t klen, const void *msg, size_t mlen, unsigned char out[32])
{
    unsigned char k0[64] = {0}, ipad[64], opad[64], inner[32];
    int rc = AL_OK;
    if (klen > 64)
        rc = sha256_parts(key, klen, NULL, 0, k0);
    else
        memcpy(k0, key, klen);
    for (int i = 0; i < 64; i++) {
        ipad[i] = k0[i] ^ 0x36;
        opad[i] = k0[i] ^ 0x5c;
    }
    if (!rc)
        rc = sha256_parts(ipad, 64, msg, mlen, inner);
    if (!rc)
        rc = sha256_parts(opad, 64, inner, 32, out);
    OPENSSL_cleanse(k0, sizeof k0);
    OPENSSL_cleanse(ipad, sizeof ipad);
    OPENSSL_cleanse(opad, sizeof opad);
    OPENSSL_cleanse(inner, sizeof inner);
    return rc;
}

int al_sigv4_sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[32];
    int rc = sha256_parts(p, n, NULL, 0, md);
    if (!rc)
        al_hex_encode(md, 32, out);
    return rc;
}

static int derive_key(const al_sigv4_creds *cr, const char *date, const char *region,
                      const char *service, unsigned char out[32])
{
    unsigned char k[32];
    size_t l = 4 + cr->secret_len;
    unsigned char *ks = malloc(l);
    if (!ks)
        return AL_ERR_NOMEM;
    memcpy(ks, "AWS4", 4);
    memcpy(ks + 4, cr->secret, cr->secret_len);
    int rc = hmac(ks, l, date, strlen(date), k);
    OPENSSL_cleanse(ks, l);
    free(ks);
    if (!rc)
        rc = hmac(k, 32, region, strlen(region), k);
    if (!rc)
        rc = hmac(k, 32, service, strlen(service), k);
    if (!rc)
        rc = hmac(k, 32, "aws4_request", 12, out);
    OPENSSL_cleanse(k, sizeof k);
    return rc;
}

void al_sigv4_key_cache_init(al_sigv4_key_cache *c)
{
    memset(c, 0, sizeof *c);
}

static void slot_wipe(struct al_sigv4_cached_key *s)
{
    if (s->secret) {
        OPENSSL_cleanse(s->secret, s->secret_len);
        free(s->secret);
    }
    OPENSSL_cleanse(s, sizeof *s);
}

void al_sigv4_key_cache_free(al_sigv4_key_cache *c)
{
    for (int i = 0; i < AL_SIGV4_CACHE_SLOTS; i++)
        slot_wipe(&c->slot[i]);
}

static int signing_key(al_sigv4_key_cache *c, const al_sigv4_creds *cr, const char *date,
                       const char *region, const char *service, unsigned char out[32])
{
    if (!c)
        return derive_key(cr, date, region, service, out);
    char scope[96];
    int sl = snprintf(scope, sizeof scope, "%s/%s", region, service);
    if (sl < 0 || (size_t)sl >= sizeof scope)
        return derive_key(cr, date, region, service, out); /* too long to cache */
    for (int i = 0; i < AL_SIGV4_CACHE_SLOTS; i++) {
        struct al_sigv4_cached_key *s = &c->slot[i];
        if (s->secret && s->secret_len == cr->secret_len && !strcmp(s->date, date) &&
            !strcmp(s->scope, scope) && !CRYPTO_memcmp(s->secret, cr->secret, cr->secret_len)) {
            memcpy(out, s->key, 32);
            c->hits++;
            if (i) { /* move to front */
                struct al_sigv4_cached_key t = *s;
                memmove(&c->slot[1], &c->slot[0], (size_t)i * sizeof t);
                c->slot[0] = t;
            }
            return AL_OK;
        }
    }
    c->misses++;
    int rc = derive_key(cr, date, region, service, out);
    if (rc)
        return rc;
    unsigned char *copy = malloc(cr->secret_len ? cr->secret_len : 1);
    if (!copy)
        return AL_OK; /* not cached; the key is still right */
    memcpy(copy, cr->secret, cr->secret_len);
    slot_wipe(&c->slot[AL_SIGV4_CACHE_SLOTS - 1]);
    memmove(&c->slot[1], &c->slot[0], (AL_SIGV4_CACHE_SLOTS - 1) * sizeof c->slot[0]);
    struct al_sigv4_cached_key *s = &c->slot[0];
    memset(s, 0, sizeof *s);
    s->secret = copy;
    s->secret_len = cr->secret_len;
    memcpy(s->date, date, 9);
    memcpy(s->scope, scope, (size_t)sl + 1);
    memcpy(s->key, out, 32);
    return AL_OK;
}

static int valid_hash(const char *h)
{
    if (!h)
        return 0;
    if (!strcmp(h, AL_SIGV4_UNSIGNED_PAYLOAD) || !strcmp(h, AL_SIGV4_STREAMING_UNSIGNED_TRAILER))
        return 1;
    if (strlen(h) != 64)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return 0;
    return 1;
}

static int scope_part_ok(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (*s == '/' || (unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    return 1;
}

/* "date/region/service/aws4_request" */
static int append_scope(al_buf *b, const char *date, const al_sigv4_params *p)
{
    int rc;
    if ((rc = al_buf_append(b, date, 8)) || (rc = al_buf_append(b, "/", 1)) ||
        (rc = al_buf_append(b, p->region, strlen(p->region))) || (rc = al_buf_append(b, "/", 1)) ||
        (rc = al_buf_append(b, p->service, strlen(p->service))))
        return rc;
    return al_buf_append(b, "/aws4_request", 13);
}

int al_sigv4_sign(const al_sigv4_request *r, const al_sigv4_params *p, const al_sigv4_creds *cr,
                  al_sigv4_key_cache *cache, al_sigv4_result *out)
{
    if (!scope_part_ok(p->region) || !scope_part_ok(p->service) || !cr->secret ||
        !cr->access_key_id || !cr->access_key_id_len || !valid_hash(r->payload_hash))
        return AL_ERR_INVAL;
    for (size_t i = 0; i < cr->access_key_id_len; i++)
        if ((unsigned char)cr->access_key_id[i] <= 0x20 || cr->access_key_id[i] == ',' ||
            cr->access_key_id[i] == '/' || (unsigned char)cr->access_key_id[i] >= 0x7f)
            return AL_ERR_INVAL;
    for (size_t i = 0; i < cr->session_token_len; i++)
        if ((unsigned char)cr->session_token[i] < 0x20 || cr->session_token[i] == 0x7f)
            return AL_ERR_INVAL;

    struct tm tm;
    time_t t = (time_t)p->now;
    if (!gmtime_r(&t, &tm) ||
        strftime(out->amz_date, sizeof out->amz_date, "%Y%m%dT%H%M%SZ", &tm) != 16)
        return AL_ERR_INVAL;
    char date[9];
    memcpy(date, out->amz_date, 8);
    date[8] = '\0';

    al_sigv4_header extra[3];
    size_t nextra = 0;
    extra[nextra++] = (al_sigv4_header){"x-amz-date", 10, out->amz_date, 16};
    if (cr->session_token && !(p->flags & AL_SIGV4_TOKEN_UNSIGNED))
        extra[nextra++] = (al_sigv4_header){"x-amz-security-token", 20,
                                            (const char *)cr->session_token, cr->session_token_len};
    if (p->flags & AL_SIGV4_CONTENT_SHA256)
        extra[nextra++] =
            (al_sigv4_header){"x-amz-content-sha256", 20, r->payload_hash, strlen(r->payload_hash)};

    al_buf own_cr, own_sts, signed_h;
    al_buf *creq = out->canonical_request ? out->canonical_request : &own_cr;
    al_buf *sts = out->string_to_sign ? out->string_to_sign : &own_sts;
    al_buf_init(&own_cr, SCRATCH_MAX);
    al_buf_init(&own_sts, 4096);
    al_buf_init(&signed_h, 65536);
    if (!creq->data)
        presize(creq, 1024);
    if (!sts->data)
        presize(sts, 256);
    presize(&signed_h, 256);
    al_buf_reset(creq);
    al_buf_reset(sts);
    unsigned char key[32], sig[32];
    char hexbuf[65];
    int rc;

    if ((rc = al_buf_append(creq, r->method, r->method_len)) ||
        (rc = al_buf_append(creq, "\n", 1)) ||
        (rc = canonical_uri(r->path, r->path_len, p->flags, creq)) ||
        (rc = al_buf_append(creq, "\n", 1)) ||
        (rc = rewrite_query(r->query, r->query_len, 1, creq)) ||
        (rc = al_buf_append(creq, "\n", 1)) ||
        (rc = canonical_headers(r, extra, nextra, creq, &signed_h)) ||
        (rc = al_buf_append(creq, "\n", 1)) ||
        (rc = al_buf_append(creq, signed_h.data, signed_h.len)) ||
        (rc = al_buf_append(creq, "\n", 1)) ||
        (rc = al_buf_append(creq, r->payload_hash, strlen(r->payload_hash))))
        goto out;
    if ((rc = al_sigv4_sha256_hex(creq->data, creq->len, hexbuf)))
        goto out;
    if ((rc = al_buf_append(sts, "AWS4-HMAC-SHA256\n", 17)) ||
        (rc = al_buf_append(sts, out->amz_date, 16)) || (rc = al_buf_append(sts, "\n", 1)) ||
        (rc = append_scope(sts, date, p)) || (rc = al_buf_append(sts, "\n", 1)) ||
        (rc = al_buf_append(sts, hexbuf, 64)))
        goto out;
    if ((rc = signing_key(cache, cr, date, p->region, p->service, key)) ||
        (rc = hmac(key, 32, sts->data, sts->len, sig)))
        goto out;
    al_hex_encode(sig, 32, hexbuf);
    al_buf_reset(out->authorization);
    if ((rc = al_buf_append(out->authorization, "AWS4-HMAC-SHA256 Credential=", 28)) ||
        (rc = al_buf_append(out->authorization, cr->access_key_id, cr->access_key_id_len)) ||
        (rc = al_buf_append(out->authorization, "/", 1)) ||
        (rc = append_scope(out->authorization, date, p)) ||
        (rc = al_buf_append(out->authorization, ", SignedHeaders=", 16)) ||
        (rc = al_buf_append(out->authorization, signed_h.data, signed_h.len)) ||
        (rc = al_buf_append(out->authorization, ", Signature=", 12)) ||
        (rc = al_buf_append(out->authorization, hexbuf, 64)))
        goto out;
out:
    OPENSSL_cleanse(key, sizeof key);
    /* The canonical request holds the session token: wipe our own copy. */
    al_buf_free(&own_cr, 1);
    al_buf_free(&own_sts, 0);
    al_buf_free(&signed_h, 0);
    return rc;
}

int al_sigv4_auth_access_key(const char *v, size_t n, const char **p, size_t *len)
{
    static const char pre[] = "AWS4-HMAC-SHA256";
    size_t i = 0;
    while (i < n && v[i] == ' ')
        i++;
    if (n - i < sizeof pre - 1 || memcmp(v + i, pre, sizeof pre - 1))
        return AL_ERR_NOTFOUND;
    for (; i + 11 <= n; i++) {
        if (!memcmp(v + i, "Credential=", 11)) {
            size_t s = i + 11, e = s;
            while (e < n && v[e] != '/' && v[e] != ',' && v[e] != ' ')
                e++;
            if (e == s)
                return AL_ERR_NOTFOUND;
            *p = v + s;
            *len = e - s;
            return AL_OK;
        }
    }
    return AL_ERR_NOTFOUND;
}
