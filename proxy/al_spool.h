/* al_spool: a replayable, bounded, hashed copy of a request body.
 *
 * A request whose upstream attempt may have to be repeated (a 401/403 retried with
 * another credential, a 429 retried with another key of the pool) or whose
 * credential needs the body's SHA-256 before the request can go (SigV4) keeps its
 * body here instead of in the streaming ring. Bytes are appended as they arrive
 * from the agent; any number of readers, one after the other or interleaved, read
 * them from the start (a reader may run behind the writer: it gets AL_ERR_AGAIN
 * when it has everything written so far and the body has not ended).
 *
 * Storage: the first `memory_max` bytes stay in memory; the rest goes to a
 * temporary file in `dir` ($TMPDIR, else /tmp, when NULL) opened with O_TMPFILE
 * (never has a name; fallback: mkstemp then unlink at once), mode 0600, O_CLOEXEC.
 * The file's bytes are encrypted with AES-256-CTR under a key made for this spool
 * that lives only in memory and is wiped on free, so when the spool is freed the
 * bytes left on the disk's blocks are unreadable (overwriting them would not reach
 * an SSD's or a copy-on-write filesystem's old blocks and would double the I/O);
 * the file is truncated and closed on free. The memory part is wiped on free too.
 *
 * Blocking: file writes and reads are pwrite/pread of at most AL_SPOOL_CHUNK bytes
 * each, on the event loop's thread. That is a deliberate choice: to a local disk or
 * a tmpfs such a call costs microseconds (it lands in the page cache); the spool
 * is meant for a local directory, not a network filesystem.
 *
 * Bounds: at most `max_bytes` in all; a write past it fails with AL_ERR_TOOBIG and
 * changes nothing. A failing disk (full, RLIMIT_FSIZE, I/O error) makes the write
 * return AL_ERR_IO (errno kept) and the spool stays failed: later writes return
 * the same error. SIGXFSZ must be ignored for RLIMIT_FSIZE to come back as EFBIG
 * (airlock ignores it at start).
 *
 * The SHA-256 of the body is computed as bytes arrive (when cfg.sha256 asks for it:
 * a spool kept only for a retry skips the cost) and is available once
 * al_spool_finish() was called. Not thread-safe: one spool belongs to one worker. */
#ifndef AL_SPOOL_H
#define AL_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#define AL_SPOOL_CHUNK (16 * 1024) /* largest single pwrite/pread */

typedef struct al_spool al_spool;

typedef struct al_spool_cfg {
    size_t memory_max;  /* bytes kept in memory before the rest goes to a file */
    uint64_t max_bytes; /* total bound (> 0): past it a write is AL_ERR_TOOBIG */
    const char *dir;    /* directory of the temporary file; NULL: $TMPDIR, else /tmp */
    int sha256;         /* compute the body's SHA-256 as bytes arrive */
} al_spool_cfg;

/* A position in a spool; any number of readers may read one spool. */
typedef struct al_spool_reader {
    al_spool *spool;
    uint64_t off;
} al_spool_reader;

/* AL_ERR_INVAL when max_bytes is 0, AL_ERR_NOMEM, AL_ERR_CRYPTO (no randomness). */
int al_spool_new(const al_spool_cfg *cfg, al_spool **out);
/* Appends len bytes. AL_ERR_TOOBIG past max_bytes (nothing appended), AL_ERR_IO
 * when the temporary file cannot be made or written (sticky), AL_ERR_INVAL after
 * al_spool_finish(). */
int al_spool_write(al_spool *s, const void *data, size_t len);
/* The body has ended: the hash is final. Writes after it are AL_ERR_INVAL. */
int al_spool_finish(al_spool *s);
uint64_t al_spool_size(const al_spool *s);
int al_spool_finished(const al_spool *s);
/* The body's SHA-256 (32 bytes); AL_ERR_AGAIN before al_spool_finish(), AL_ERR_INVAL
 * when cfg.sha256 was not set. */
int al_spool_sha256(const al_spool *s, unsigned char out[32]);
/* The same as 64 lower-case hex digits and a NUL (hex has 65 bytes). */
int al_spool_sha256_hex(const al_spool *s, char hex[65]);
/* The temporary file's descriptor, -1 while everything is in memory (for tests and
 * diagnostics: never write to it). */
int al_spool_fd(const al_spool *s);
/* Wipes and frees; NULL is fine. Readers of s must not be used afterwards. */
void al_spool_free(al_spool *s);

/* A reader at the start of s. */
void al_spool_reader_init(al_spool_reader *rd, al_spool *s);
/* Copies up to cap bytes from the reader's position into buf and advances it.
 * Returns 0 with *got > 0 (bytes copied), 0 with *got == 0 at the end of a finished
 * spool, AL_ERR_AGAIN when the reader has every byte written so far and the body
 * has not ended, AL_ERR_IO when the file cannot be read. */
int al_spool_read(al_spool_reader *rd, void *buf, size_t cap, size_t *got);

/* Opens an unnamed 0600 temporary file in dir (O_TMPFILE when use_o_tmpfile and the
 * filesystem has it, else mkstemp + unlink); *fd_out gets it. The spool's own
 * opener, exposed so the fallback path can be tested. AL_ERR_IO (errno kept). */
int al_spool_open_tmp(const char *dir, int use_o_tmpfile, int *fd_out);

#endif
