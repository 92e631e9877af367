/* libFuzzer harness for policy/al_audit_chain: `airlock audit verify` reads files an
 * attacker may have written, and the writer reads the tail of a file anyone with write
 * access may have changed.
 *
 * Input: byte 0 picks where the data splits into two files of one series; the rest is
 * the files' bytes. Checks, besides crashes and sanitizer reports:
 *  - the verdict is coherent: a failure names a file given, a line >= 1, a reason and a
 *    sentence; success counts at least one record;
 *  - al_audit_chain_from_tail never reads outside its buffer;
 *  - the oracle: the input's lines chained by al_audit_chain_line (as the writer does)
 *    always verify (live, no key) whenever every line that is spliced (not replaced by
 *    an "audit.invalid" record) is a JSON object without its own seq/prev keys. */
#include <jansson.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/al_audit_chain.h"

static EVP_PKEY *fixed_key(void)
{
    static EVP_PKEY *k;
    static const unsigned char seed[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                           17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
    if (!k)
        k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
    return k;
}

static void coherent(const al_audit_verdict *v, int rc, size_t nfiles)
{
    if (rc == 0 && (!v->ok || v->records == 0))
        abort();
    if (rc != 0 && (v->ok || !v->reason || v->line == 0 || v->file >= nfiles || !v->message[0]))
        abort();
}

/* Would al_audit_chain_line splice this line ('\n' included) as it is? */
static int spliced(const char *p, size_t len)
{
    return len >= 4 && p[0] == '{' && p[1] == '"' && p[len - 2] == '}' && p[len - 1] == '\n' &&
           !memchr(p, '\n', len - 1);
}

static int plain_object(const char *p, size_t len)
{
    json_error_t err;
    json_t *j = json_loadb(p, len, JSON_REJECT_DUPLICATES, &err);
    int ok = json_is_object(j) && json_object_size(j) > 0 && !json_object_get(j, "seq") &&
             !json_object_get(j, "prev");
    json_decref(j);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    EVP_PKEY *key = fixed_key();
    const char *d = (const char *)data + 1;
    size_t n = size - 1, split = n ? data[0] % (n + 1) : 0;
    al_audit_vfile fs[2] = {{"a", d, split}, {"b", d + split, n - split}};
    al_audit_verdict v;
    coherent(&v, al_audit_verify(fs, 2, &key, 1, 0, &v), 2);
    coherent(&v, al_audit_verify(fs, 1, NULL, 0, 1, &v), 1);

    al_audit_chain c;
    int partial;
    char *copy = malloc(n ? n : 1); /* exact size: ASan sees any read past the end */
    memcpy(copy, d, n);
    (void)al_audit_chain_from_tail(copy, n, &c, &partial);
    free(copy);

    /* the oracle: chain the input's lines the way the writer does */
    char *out = malloc(n * 2 + 64 + (n + 1) * AL_AUDIT_CHAIN_PREFIX_MAX), line[4096 + 2];
    size_t olen = 0, lines = 0;
    int expect_ok = 1;
    al_audit_chain_init(&c);
    for (size_t i = 0; i < n && lines < 256;) {
        const char *nl = memchr(d + i, '\n', n - i);
        size_t ll = nl ? (size_t)(nl - (d + i)) : n - i;
        if (ll > 4096)
            ll = 4096;
        memcpy(line, d + i, ll);
        line[ll] = '\n';
        if (spliced(line, ll + 1) && !plain_object(line, ll))
            expect_ok = 0;
        olen += al_audit_chain_line(&c, line, ll + 1, out + olen);
        i += ll + (nl && d + i + ll == nl);
        lines++;
    }
    if (lines) {
        al_audit_vfile f = {"chained", out, olen};
        int rc = al_audit_verify(&f, 1, NULL, 0, 1, &v);
        coherent(&v, rc, 1);
        if (expect_ok && rc != 0)
            abort();
    }
    free(out);
    return 0;
}
