/* al_audit_chain: the tamper-evident form of the audit log, without I/O policy.
 *
 * Format (README "Tamper-evident audit log"): every line is one JSON object that
 * starts with {"seq":N,"prev":"<64 hex>", followed by the record's own fields.
 *  - seq counts from 0 and goes up by one per line, across restarts and rotated files;
 *  - prev is the lower-case hex SHA-256 of the previous line's exact bytes (without its
 *    '\n'); the first line of a chain (seq 0) has 64 zeros;
 *  - a checkpoint line {"seq":..,"prev":..,"event":"audit.checkpoint","time":..,
 *    "reason":"interval|rotate|reopen|shutdown","key_id":"<16 hex>","sig":"<base64>"}
 *    carries an Ed25519 signature over its own bytes up to (not including) ,"sig":" —
 *    which covers seq and prev, so every line before it.
 * Whoever holds the public key can then tell a log cut short or rewritten from the one
 * airlock wrote. The writer (al_audit.c), the CLI's synchronous append and
 * `airlock audit verify` all use these functions. */
#ifndef AL_AUDIT_CHAIN_H
#define AL_AUDIT_CHAIN_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/* Where the chain stands: the seq of the next line and the hash of the last one. */
typedef struct al_audit_chain {
    uint64_t next_seq;
    unsigned char prev[32];
} al_audit_chain;

/* What al_audit_chain_line adds to a line at most: {"seq":<20>,"prev":"<64>", */
#define AL_AUDIT_CHAIN_PREFIX_MAX 112
/* The longest checkpoint line (with '\n'). */
#define AL_AUDIT_CHECKPOINT_MAX 384
/* The signing key's file in the state dir (PKCS#8 PEM, 0600). */
#define AL_AUDIT_KEY_FILE "audit-signing.key"

/* A new chain: seq 0, prev all zeros. */
void al_audit_chain_init(al_audit_chain *c);
/* Writes line (a JSON object "{...}\n", len bytes) into out with the chain prefix
 * inserted after its '{', advances c and returns the new length. out holds at least
 * len + AL_AUDIT_CHAIN_PREFIX_MAX bytes. A line that does not have the encoders' shape
 * ({" ... }\n, one '\n') is replaced by {"seq":..,"prev":..,"event":"audit.invalid"}. */
size_t al_audit_chain_line(al_audit_chain *c, const char *line, size_t len, char *out);
/* Builds a signed checkpoint line (with '\n') into out (AL_AUDIT_CHECKPOINT_MAX bytes)
 * and advances c. Returns its length or a negative al_err. */
int al_audit_chain_checkpoint(al_audit_chain *c, EVP_PKEY *key, int64_t time_ms,
                              const char *reason, char *out, size_t cap);
/* Sets c from the end of a log: `tail` is the file's last bytes (at least the last two
 * lines; `at_start` says the buffer starts at the file's start). Returns 1 when the
 * last complete line is chained (c continues after it), 0 when the log is empty or its
 * last line is not chained (c is a new chain), AL_ERR_PARSE never. *partial is set when
 * the file does not end in '\n' (a write cut short). */
int al_audit_chain_from_tail(const char *tail, size_t len, al_audit_chain *c, int *partial);
/* Reads the tail of an open file and sets c as al_audit_chain_from_tail; also returns
 * the file's size. AL_ERR_IO when it cannot be read. */
int al_audit_chain_from_fd(int fd, al_audit_chain *c, int64_t *size, int *partial);

/* The signing key: loads <state_dir>/audit-signing.key, or creates it (0600, O_EXCL)
 * on first use. */
int al_audit_key_load_or_create(const char *state_dir, EVP_PKEY **out);
/* Reads a public key (PEM SubjectPublicKeyInfo) or a private key PEM from a file. */
int al_audit_key_read_public(const char *path, EVP_PKEY **out);
/* The key's id: the first 8 bytes of SHA-256 of its raw 32-byte public key, as 16 hex
 * digits (+ NUL). */
int al_audit_key_id(EVP_PKEY *key, char id[17]);

/* ---- verification (pure: buffers in, a verdict out) ---- */

typedef struct al_audit_vfile {
    const char *name;
    const char *data;
    size_t len;
} al_audit_vfile;

typedef struct al_audit_verdict {
    int ok;             /* 1 when every check holds */
    size_t file;        /* index of the file of the first problem */
    uint64_t line;      /* its line number (1-based) */
    const char *reason; /* malformed, not_chained, edited, removed, reordered, inserted,
                           truncated, bad_signature, unknown_key, empty */
    char message[320];  /* one sentence */
    uint64_t records;   /* chained lines read */
    uint64_t checkpoints;
    uint64_t signatures_checked;
    uint64_t first_seq, last_seq;
    uint64_t unsealed; /* records after the last checkpoint */
    uint64_t legacy;   /* unchained lines before the chain starts (first file only) */
} al_audit_verdict;

/* Checks the files as one series in the order given (oldest first): every line chained,
 * seq +1 each line, prev = SHA-256 of the line before; with keys (nkeys > 0) every
 * checkpoint is signed by one of them. Unless `live`, the series must end with a
 * checkpoint whose reason is shutdown, rotate or reopen (a log cut after its last
 * checkpoint, or a tail that no signature covers, fails as "truncated"). Fills v and
 * returns 0 when all holds, AL_ERR_INTEGRITY-like 1 otherwise. */
int al_audit_verify(const al_audit_vfile *files, size_t nfiles, EVP_PKEY *const *keys,
                    size_t nkeys, int live, al_audit_verdict *v);

#endif
