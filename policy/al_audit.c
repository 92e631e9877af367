/* al_audit: the audit log writer and the request-record encoder (see al_audit.h).
 *
 * Queue: a bounded multi-producer / single-consumer ring (Vyukov's bounded queue) of
 * positions, each a CHUNK of bytes in `data` and a slot with a sequence number. A
 * record takes one position per CHUNK of its line (most records one; the longest,
 * AL_AUDIT_LINE_MAX, four): a producer encodes the line on its stack, claims its k
 * positions with one CAS on the enqueue position (they are free when the last one
 * is: the writer frees positions in order), copies the line in and publishes it by
 * storing seq = pos + 1 on the first; the writer thread (the only consumer) takes
 * records in order while seq == pos + 1 and frees each position by storing
 * seq = pos + capacity. No lock anywhere: a worker never waits on the thread that
 * waits on the disk. When the ring is full the record is dropped and counted.
 * (Slots of AL_AUDIT_LINE_MAX bytes each held a ~600-byte record: the same 4 MiB now
 * holds four times the records, so the writer is woken a quarter as often and rides
 * out a four times longer stall before anything is dropped.)
 *
 * Wake-up: the writer sleeps on a futex word `sleeping`. After a drain that found
 * lines it naps (sleeping = NAP) for NAP_NS and drains again; while it naps, producers
 * do not wake it until a quarter of the ring has filled since the nap began, so a
 * busy proxy makes no system call per request and the writer wakes at most 1/NAP_NS
 * times a second or once per quarter ring (a wake per record cost a futex pair per
 * request: measured 10-15 % of the worker's time; a wake at every quarter-ring mark
 * woke it every ~140 records, each wake-up a context switch). After a drain that found nothing it sleeps (IDLE)
 * until a producer wakes it, so an idle proxy costs nothing and the first line after
 * a quiet spell is written at once. Both sides put a seq_cst fence between their store
 * and their load (the producer: publish, then read `sleeping`; the writer: set
 * `sleeping`, then re-check the ring), so at least one sees the other; the timeout
 * is only a backstop.
 *
 * Writes: the writer copies ready lines into one batch buffer and appends it with a
 * single write(2) loop on an O_APPEND fd, so lines are never interleaved or split
 * (256 KiB a batch: one write per wake-up at ~80k requests/s). It appends under the
 * file's flock, which the CLI's synchronous appends take too; the writer keeps it
 * across drains while lines flow (at most LOCK_HOLD_MS, let go before sleeping idle).
 *
 * Invariants: every line in a slot is complete JSON ending in '\n' and at most
 * AL_AUDIT_LINE_MAX bytes (the encoder's field budgets guarantee it). Secrets never
 * reach here: callers pass provider names and versions only. */
#include "al_audit.h"
#include "al_audit_chain.h"
#include "common/al_err.h"
#include "common/al_fmt.h"
#include "common/al_log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BATCH_MAX (256 * 1024)         /* raw bytes taken from the ring per commit */
#define OUT_MAX   (320 * 1024)         /* chained bytes handed to one write(2) */
#define SLEEP_NS  (200 * 1000 * 1000L) /* IDLE backstop (also paces retries, checkpoints) */
#define NAP_NS    (5 * 1000 * 1000L)   /* a line waits at most this long under load */
#define RETRY_MIN_MS 100               /* a failed write is retried after this, doubling */
#define RETRY_MAX_MS 1000
#define LOG_EVERY_MS 30000 /* a failing or dropping log says so at most this often */
#define LOCK_HOLD_MS 20    /* the file lock is kept across drains at most this long */

enum { AWAKE = 0, NAP = 1, IDLE = 2 }; /* values of al_audit.sleeping */

#define CHUNK 1024 /* ring bytes per position */
/* At least this many positions, so that the longest line fits. */
#define MIN_POSITIONS ((AL_AUDIT_LINE_MAX + CHUNK - 1) / CHUNK)

typedef struct audit_slot {
    _Alignas(64) _Atomic size_t seq; /* a line of its own: producers and writer differ */
    uint32_t len;                    /* on a record's first position: its line's length */
} audit_slot;

struct al_audit {
    /* producers' side and consumer's side on separate cache lines */
    _Alignas(64) _Atomic size_t enqueue_pos;
    _Alignas(64) size_t dequeue_pos; /* writer thread only */
    _Atomic size_t consumed;         /* dequeue_pos as others may read it (lag, writable) */
    _Atomic uint64_t dropped;
    _Atomic uint64_t written;
    _Atomic uint64_t failed;      /* write attempts that failed */
    _Atomic uint64_t checkpoints; /* signed checkpoints written */
    _Atomic uint64_t rotations;
    _Atomic uint64_t pending_lines; /* taken from the ring, not yet in the file */
    _Atomic int failing;            /* the last write failed; cleared by the next success */
    _Atomic int sleeping;           /* futex word: AWAKE, NAP or IDLE */
    _Atomic size_t nap_from;        /* dequeue_pos when the writer began its nap */
    _Atomic int stop;
    _Atomic int reopen;
    size_t mask;
    audit_slot *slots; /* owned; mask + 1 of them */
    char *data;        /* owned; (mask + 1) * CHUNK bytes */
    char *path;        /* owned */
    int fd;
    /* writer thread only (and open/close around it) */
    int chain;              /* lines carry seq/prev (al_audit_chain.h) */
    al_audit_chain ch;      /* where the chain stands after the last line in the file */
    EVP_PKEY *key;          /* owned; signs checkpoints; NULL = none */
    uint32_t checkpoint_ms; /* 0 = only at rotation, reopen and close */
    int64_t next_checkpoint_ms;
    uint64_t since_checkpoint; /* lines written since the last checkpoint */
    uint64_t max_bytes;        /* 0 = no size rotation */
    uint32_t max_files;
    int64_t size;            /* bytes in the open file, as of our last write or lock */
    int locked;              /* we hold the file lock (kept across drains, LOCK_HOLD_MS) */
    int64_t locked_at_ms;    /* when we took it */
    size_t pending;          /* bytes of batch not written yet (a write failed) */
    int64_t retry_at_ms;     /* when to try them again */
    int64_t retry_ms;        /* the current back-off */
    int64_t fail_since_ms;   /* first failure of the current run; 0 = writing fine */
    int64_t fail_logged_ms;  /* last log line about it */
    uint64_t fail_run;       /* failed attempts in the current run */
    uint64_t drop_reported;  /* dropped count the last log line / record named */
    int64_t drop_logged_ms;
    pthread_t thread;
    char batch[BATCH_MAX];
    char out[OUT_MAX];
};

static long futex(_Atomic int *word, int op, int val, const struct timespec *ts)
{
    return syscall(SYS_futex, (int *)word, op, val, ts, NULL, 0);
}

/* Asks for the slot and the first bytes of the position the next record will use
 * (`write` on the producers' side, read on the writer's) while this one is finished:
 * the ring is 4 MiB, so they are cold, and the seq was last written by the other
 * thread. Loading it was 91 % of al_audit_submit's own time (perf annotate). */
static void prefetch_slot(const al_audit *a, size_t pos, int write)
{
    const audit_slot *s = &a->slots[pos & a->mask];
    const char *d = a->data + (pos & a->mask) * CHUNK;
    if (write)
        __builtin_prefetch(s, 1);
    else
        __builtin_prefetch(s, 0);
    for (size_t off = 0; off < 640; off += 64) {
        if (write)
            __builtin_prefetch(d + off, 1);
        else
            __builtin_prefetch(d + off, 0);
    }
}

/* Positions a line of len bytes takes. */
static size_t chunks_for(size_t len)
{
    return len ? (len + CHUNK - 1) / CHUNK : 1;
}

/* Copies len bytes between a line and the ring from position pos on (`in`: into the
 * ring), in two pieces when the record wraps past the ring's end. */
static void ring_copy(al_audit *a, size_t pos, char *line, size_t len, int in)
{
    size_t at = (pos & a->mask) * CHUNK, room = (a->mask + 1) * CHUNK - at;
    size_t first = len < room ? len : room;
    if (in) {
        memcpy(a->data + at, line, first);
        memcpy(a->data, line + first, len - first);
    } else {
        memcpy(line, a->data + at, first);
        memcpy(line + first, a->data, len - first);
    }
}

static int open_log(const char *path)
{
    /* read too: the chain's end is read back after a restart or a foreign append */
    return open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* flock(2) serializes us with the CLI's al_audit_append_line (store changes): each
 * holds it while reading the chain's end and appending after it. */
static void lock_fd(int fd)
{
    while (fd >= 0 && flock(fd, LOCK_EX) != 0 && errno == EINTR)
        ;
}

static void unlock_fd(int fd)
{
    if (fd >= 0)
        flock(fd, LOCK_UN);
}

/* Takes the file lock; if someone else appended since our last write, continues the
 * chain after their last line (a chained one; an unchained foreign line is left for
 * verify to report) and starts our next line on a line of its own. */
static void lock_file(al_audit *a)
{
    struct stat st;
    if (a->fd < 0 || a->locked)
        return; /* held since an earlier drain: nobody else can have appended */
    lock_fd(a->fd);
    a->locked = 1;
    a->locked_at_ms = now_ms();
    if (fstat(a->fd, &st) != 0 || st.st_size == a->size)
        return;
    a->size = st.st_size;
    if (!a->chain)
        return;
    al_audit_chain c;
    int64_t size;
    int partial = 0;
    if (al_audit_chain_from_fd(a->fd, &c, &size, &partial) == 1)
        a->ch = c;
    if (partial && write(a->fd, "\n", 1) == 1)
        a->size++;
}

/* Lets the lock go (`force`: now; else once held LOCK_HOLD_MS). Taking it per drain was
 * two flock(2) and an fstat(2) per drain, most of the writer's system calls; kept
 * across drains while lines flow, a CLI store change waits at most LOCK_HOLD_MS (plus
 * one drain) to append. It is let go before the writer sleeps idle, so an idle server
 * never holds it. */
static void unlock_file(al_audit *a, int force)
{
    if (!a->locked || (!force && now_ms() - a->locked_at_ms < LOCK_HOLD_MS))
        return;
    unlock_fd(a->fd);
    a->locked = 0;
}

/* Appends buf whole or not at all: a failed write cuts off the part that reached the
 * file, so the file never ends in half a line and the chain state stays true. */
static int write_all(al_audit *a, const char *buf, size_t len)
{
    size_t off = 0;
    if (a->fd < 0) {
        errno = EBADF;
        return AL_ERR_IO;
    }
    while (off < len) {
        ssize_t w = write(a->fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            if (off && ftruncate(a->fd, (off_t)a->size) != 0)
                a->size += (int64_t)off; /* could not cut: verify will name the line */
            errno = e;
            return AL_ERR_IO;
        }
        off += (size_t)w;
    }
    a->size += (int64_t)len;
    return AL_OK;
}

/* A signed checkpoint for everything written so far (lock held). */
static int write_checkpoint(al_audit *a, const char *reason)
{
    char line[AL_AUDIT_CHECKPOINT_MAX];
    al_audit_chain c = a->ch;
    if (!a->chain || !a->key)
        return AL_OK;
    int64_t now = now_ms();
    int n = al_audit_chain_checkpoint(&c, a->key, now, reason, line, sizeof line);
    if (n < 0)
        return n;
    if (write_all(a, line, (size_t)n) != AL_OK)
        return AL_ERR_IO;
    a->ch = c;
    a->since_checkpoint = 0;
    a->next_checkpoint_ms = now + a->checkpoint_ms;
    atomic_fetch_add(&a->checkpoints, 1);
    return AL_OK;
}

/* Built-in rotation (lock held on the old file): seal it with a checkpoint, shift
 * path.N-1 -> path.N ... path -> path.1 (the oldest beyond max_files goes), open a new
 * path. The chain goes on: the new file's first line names the old file's last. */
static int rotate_file(al_audit *a)
{
    size_t plen = strlen(a->path) + 16;
    char *from = malloc(plen), *to = malloc(plen);
    int rc = AL_ERR_IO, fd = -1;
    if (!from || !to) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if (write_checkpoint(a, "rotate") != AL_OK)
        goto out;
    for (uint32_t i = a->max_files; i >= 1; i--) {
        snprintf(to, plen, "%s.%u", a->path, i);
        if (i == 1)
            snprintf(from, plen, "%s", a->path);
        else
            snprintf(from, plen, "%s.%u", a->path, i - 1);
        if (rename(from, to) != 0 && errno != ENOENT && i == 1)
            goto out;
    }
    if ((fd = open_log(a->path)) < 0)
        goto out;
    lock_fd(fd);
    unlock_fd(a->fd);
    close(a->fd);
    a->fd = fd;
    a->size = 0;
    atomic_fetch_add(&a->rotations, 1);
    rc = AL_OK;
out:
    if (rc != AL_OK)
        al_log(AL_LOG_ERROR, "audit.rotate_failed", "audit log %s: cannot rotate: %s", a->path,
               strerror(errno));
    free(from);
    free(to);
    return rc;
}

/* Writes the raw lines raw[0..len) (each "{...}\n"): chained when the chain is on,
 * rotating before a write would take the file past max_bytes. Lock held. Returns how
 * many bytes of raw are in the file (less than len when a write failed). */
static size_t commit(al_audit *a, const char *raw, size_t len)
{
    size_t done = 0;
    while (done < len) {
        al_audit_chain c = a->ch;
        size_t olen = 0, i = done;
        uint64_t lines = 0;
        int rotate = 0;
        while (i < len) {
            const char *nl = memchr(raw + i, '\n', len - i);
            size_t ll = nl ? (size_t)(nl - (raw + i)) + 1 : len - i;
            size_t need = ll + (a->chain ? AL_AUDIT_CHAIN_PREFIX_MAX : 0);
            if (olen + need > sizeof a->out)
                break;
            if (a->max_bytes && a->size + (int64_t)olen > 0 &&
                (uint64_t)a->size + olen + need + AL_AUDIT_CHECKPOINT_MAX > a->max_bytes) {
                rotate = 1;
                break;
            }
            if (a->chain) {
                olen += al_audit_chain_line(&c, raw + i, ll, a->out + olen);
            } else {
                memcpy(a->out + olen, raw + i, ll);
                olen += ll;
            }
            i += ll;
            lines++;
        }
        if (olen) {
            if (write_all(a, a->out, olen) != AL_OK)
                return done;
            a->ch = c;
            done = i;
            a->since_checkpoint += lines;
            atomic_fetch_add(&a->written, lines);
            atomic_fetch_sub(&a->pending_lines, lines);
        }
        if (rotate && rotate_file(a) != AL_OK)
            return done;
    }
    return done;
}

static void submit_event_now(al_audit *a, const char *event, const al_audit_field *f, size_t n);

/* A write failed: keep the lines (the writer takes no more from the ring until they are
 * written, so a full ring drops and counts, and al_audit_writable() says no), retry
 * with back-off, say so in the log at most every LOG_EVERY_MS. */
static void note_failure(al_audit *a, int err)
{
    int64_t now = now_ms();
    atomic_fetch_add(&a->failed, 1);
    atomic_store(&a->failing, 1);
    a->fail_run++;
    if (!a->fail_since_ms) {
        a->fail_since_ms = now;
        a->retry_ms = RETRY_MIN_MS;
    } else if ((a->retry_ms *= 2) > RETRY_MAX_MS) {
        a->retry_ms = RETRY_MAX_MS;
    }
    a->retry_at_ms = now + a->retry_ms;
    if (a->fail_run == 1 || now - a->fail_logged_ms >= LOG_EVERY_MS) {
        al_log(AL_LOG_ERROR, "audit.write_failed",
               "audit log %s: %s; %llu record(s) held and retried, %llu failed write(s) so far",
               a->path, a->fd >= 0 ? strerror(err) : "not open",
               (unsigned long long)atomic_load(&a->pending_lines),
               (unsigned long long)a->fail_run);
        a->fail_logged_ms = now;
    }
}

/* Writing works again: log it and put the outage into the log itself. */
static void note_recovery(al_audit *a)
{
    if (!a->fail_since_ms)
        return;
    int64_t now = now_ms();
    al_log(AL_LOG_INFO, "audit.write_recovered", "audit log %s writable again after %lld ms",
           a->path, (long long)(now - a->fail_since_ms));
    al_audit_field f[] = {
        {"failed_writes", AL_AUDIT_INT, NULL, (int64_t)a->fail_run},
        {"outage_ms", AL_AUDIT_INT, NULL, now - a->fail_since_ms},
        {"dropped_total", AL_AUDIT_INT, NULL, (int64_t)atomic_load(&a->dropped)},
    };
    a->fail_since_ms = 0;
    a->fail_run = 0;
    atomic_store(&a->failing, 0);
    submit_event_now(a, "audit.write_failed", f, sizeof f / sizeof f[0]);
}

/* Records the ring could not take are counted by the producers; the writer makes the
 * count visible: a log line and an "audit.dropped" record, at most every LOG_EVERY_MS. */
static void report_drops(al_audit *a)
{
    uint64_t d = atomic_load(&a->dropped);
    int64_t now;
    if (d == a->drop_reported || (now = now_ms()) - a->drop_logged_ms < LOG_EVERY_MS)
        return;
    al_log(AL_LOG_WARN, "audit.dropped",
           "audit log %s: %llu record(s) dropped (queue full or log unwritable), %llu in all",
           a->path, (unsigned long long)(d - a->drop_reported), (unsigned long long)d);
    al_audit_field f[] = {
        {"count", AL_AUDIT_INT, NULL, (int64_t)(d - a->drop_reported)},
        {"dropped_total", AL_AUDIT_INT, NULL, (int64_t)d},
    };
    a->drop_reported = d;
    a->drop_logged_ms = now;
    submit_event_now(a, "audit.dropped", f, sizeof f / sizeof f[0]);
}

/* Writes what a failed write left; 1 when nothing is left. Lock held. */
static int flush_pending(al_audit *a, int force)
{
    if (!a->pending)
        return 1;
    if (!force && now_ms() < a->retry_at_ms)
        return 0;
    size_t done = commit(a, a->batch, a->pending);
    if (done < a->pending) {
        memmove(a->batch, a->batch + done, a->pending - done);
        a->pending -= done;
        note_failure(a, errno);
        return 0;
    }
    a->pending = 0;
    note_recovery(a);
    return 1;
}

/* Moves every published line into the batch (committing when it fills); returns how
 * many lines were taken. */
static size_t drain(al_audit *a)
{
    size_t taken = 0, blen = 0;
    lock_file(a);
    if (!flush_pending(a, 0))
        goto out;
    for (;;) {
        size_t pos = a->dequeue_pos;
        audit_slot *s = &a->slots[pos & a->mask];
        if (atomic_load_explicit(&s->seq, memory_order_acquire) != pos + 1)
            break;
        size_t len = s->len, k = chunks_for(len);
        if (blen + len > sizeof a->batch) {
            a->pending = blen;
            if (!flush_pending(a, 1)) {
                blen = 0;
                break;
            }
            blen = 0;
        }
        prefetch_slot(a, pos + k, 0);
        ring_copy(a, pos, a->batch + blen, len, 0);
        blen += len;
        atomic_fetch_add(&a->pending_lines, 1);
        /* in order: a producer's claim looks only at the last position it needs */
        for (size_t i = 0; i < k; i++)
            atomic_store_explicit(&a->slots[(pos + i) & a->mask].seq, pos + i + a->mask + 1,
                                  memory_order_release);
        a->dequeue_pos = pos + k;
        /* published per line, before any write: a line in the batch must not also count
         * as queued in the lag (a failed write below is visible to readers at once, and
         * they saw each held line twice: lag 10 for 5 records) */
        atomic_store_explicit(&a->consumed, a->dequeue_pos, memory_order_release);
        taken++;
    }
    if (blen) {
        a->pending = blen;
        flush_pending(a, 1);
    }
    if (!a->pending && a->chain && a->key && a->checkpoint_ms && a->since_checkpoint &&
        now_ms() >= a->next_checkpoint_ms) {
        /* commit leaves room for one checkpoint, the rotate one that seals the file: an
         * interval one taking that room put the file past max_bytes (by up to a
         * checkpoint) at the next rotation. Without room for both, rotating seals it. */
        int full = a->max_bytes &&
                   (uint64_t)a->size + 2 * AL_AUDIT_CHECKPOINT_MAX > a->max_bytes;
        if ((full ? rotate_file(a) : write_checkpoint(a, "interval")) != AL_OK) {
            note_failure(a, errno);
            a->next_checkpoint_ms = a->retry_at_ms;
        } else {
            note_recovery(a);
        }
    }
out:
    unlock_file(a, 0);
    atomic_store(&a->consumed, a->dequeue_pos);
    report_drops(a);
    return taken;
}

/* SIGUSR1/SIGHUP: seal the old file with a checkpoint, then open the path again. */
static void reopen_file(al_audit *a)
{
    lock_file(a);
    flush_pending(a, 1);
    if (!a->pending)
        write_checkpoint(a, "reopen");
    int fd = open_log(a->path);
    if (fd < 0) {
        al_log(AL_LOG_ERROR, "audit.reopen_failed", "audit log %s: %s; keeping the old file",
               a->path, strerror(errno));
        unlock_file(a, 1);
        return;
    }
    unlock_file(a, 1);
    if (a->fd >= 0)
        close(a->fd);
    a->fd = fd;
    a->size = -1; /* lock_file reads the new file's end (empty, or a chain to continue) */
    /* The new file's first line, written at once: it names the old file's last line,
     * so a CLI append into the empty file cannot start a chain of its own. */
    char line[AL_AUDIT_LINE_MAX];
    if (!a->chain)
        return;
    int n = al_audit_encode_event(now_ms(), "audit.reopen", NULL, 0, line, sizeof line);
    lock_file(a);
    if (n > 0 && !a->pending) {
        atomic_fetch_add(&a->pending_lines, 1);
        if (commit(a, line, (size_t)n) < (size_t)n) {
            atomic_fetch_sub(&a->pending_lines, 1);
            note_failure(a, errno);
        }
    }
    unlock_file(a, 1);
}

static void *writer_main(void *arg)
{
    al_audit *a = arg;
    for (;;) {
        if (atomic_exchange(&a->reopen, 0))
            reopen_file(a);
        if (drain(a)) {
            /* Lines are flowing: let more accumulate rather than being woken per line. */
            atomic_store_explicit(&a->nap_from, a->dequeue_pos, memory_order_relaxed);
            atomic_store(&a->sleeping, NAP);
            if (!atomic_load(&a->stop) && !atomic_load(&a->reopen)) {
                struct timespec nap = {0, NAP_NS};
                futex(&a->sleeping, FUTEX_WAIT_PRIVATE, NAP, &nap);
            }
            atomic_store(&a->sleeping, AWAKE);
            continue;
        }
        if (atomic_load(&a->stop)) {
            /* A producer may have claimed a slot and not published it yet: the owner
             * stops workers before closing, so this settles at once; bound it anyway. */
            for (int i = 0; i < 1000 && atomic_load(&a->enqueue_pos) != a->dequeue_pos; i++) {
                if (!drain(a)) {
                    struct timespec ms = {0, 1000 * 1000};
                    nanosleep(&ms, NULL);
                }
            }
            break;
        }
        unlock_file(a, 1); /* an idle writer holds no lock */
        atomic_store(&a->sleeping, IDLE);
        atomic_thread_fence(memory_order_seq_cst);
        audit_slot *s = &a->slots[a->dequeue_pos & a->mask];
        if (atomic_load_explicit(&s->seq, memory_order_acquire) == a->dequeue_pos + 1 ||
            atomic_load(&a->stop) || atomic_load(&a->reopen)) {
            atomic_store(&a->sleeping, AWAKE);
            continue;
        }
        struct timespec ts = {0, SLEEP_NS};
        futex(&a->sleeping, FUTEX_WAIT_PRIVATE, IDLE, &ts);
        atomic_store(&a->sleeping, AWAKE);
    }
    /* records still in the ring (the writer could not write them in time) are lost:
     * published ones counted by their length, a claim never published as one */
    uint64_t left = 0;
    size_t end = atomic_load(&a->enqueue_pos);
    for (size_t pos = a->dequeue_pos; pos != end; left++) {
        audit_slot *s = &a->slots[pos & a->mask];
        size_t k = atomic_load_explicit(&s->seq, memory_order_acquire) == pos + 1
                       ? chunks_for(s->len)
                       : 1;
        if (k > end - pos)
            break;
        pos += k;
    }
    if (left)
        atomic_fetch_add(&a->dropped, left);
    /* the last word: what is still held gets one more try, then the shutdown checkpoint */
    lock_file(a);
    if (flush_pending(a, 1))
        write_checkpoint(a, "shutdown");
    if (a->pending) {
        uint64_t lost = atomic_exchange(&a->pending_lines, 0);
        atomic_fetch_add(&a->dropped, lost);
        al_log(AL_LOG_ERROR, "audit.lost", "audit log %s: %llu record(s) could not be written",
               a->path, (unsigned long long)lost);
    }
    unlock_file(a, 1);
    return NULL;
}

/* `urgent`: wake a napping writer too (the ring is filling, or a reopen/stop). */
static void wake_writer(al_audit *a, int urgent)
{
    atomic_thread_fence(memory_order_seq_cst);
    int st = atomic_load_explicit(&a->sleeping, memory_order_relaxed);
    if (st == AWAKE || (st == NAP && !urgent))
        return;
    if (atomic_exchange(&a->sleeping, AWAKE) != AWAKE)
        futex(&a->sleeping, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Where the chain goes on at start: the end of the file, or when the file is new or
 * empty (just rotated by us), the end of path.1. */
static void resume_chain(al_audit *a)
{
    int64_t size;
    int partial = 0;
    al_audit_chain_init(&a->ch);
    lock_fd(a->fd);
    int rc = al_audit_chain_from_fd(a->fd, &a->ch, &size, &partial);
    a->size = size;
    if (partial && write(a->fd, "\n", 1) == 1)
        a->size++;
    if (rc != 1 && size == 0 && a->max_files) {
        size_t plen = strlen(a->path) + 4;
        char *prev = malloc(plen);
        int fd = -1;
        if (prev && snprintf(prev, plen, "%s.1", a->path) > 0 &&
            (fd = open(prev, O_RDONLY | O_CLOEXEC)) >= 0) {
            int64_t psize;
            if (al_audit_chain_from_fd(fd, &a->ch, &psize, &partial) != 1)
                al_audit_chain_init(&a->ch);
        }
        if (fd >= 0)
            close(fd);
        free(prev);
    }
    unlock_fd(a->fd);
}

int al_audit_open_opts(const char *path, const al_audit_opts *o, al_audit **out)
{
    int rc = AL_ERR_NOMEM;
    al_audit *a = NULL;
    size_t cap = MIN_POSITIONS, slots = o && o->slots ? o->slots : AL_AUDIT_QUEUE_DEFAULT;
    *out = NULL;
    if (!path || !*path)
        return AL_ERR_INVAL;
    while (cap < slots && cap < ((size_t)1 << 20))
        cap <<= 1;
    a = calloc(1, sizeof *a);
    if (!a)
        goto fail;
    a->fd = -1;
    a->mask = cap - 1;
    a->slots = aligned_alloc(_Alignof(audit_slot), cap * sizeof *a->slots);
    a->data = malloc(cap * CHUNK);
    a->path = strdup(path);
    if (!a->slots || !a->data || !a->path)
        goto fail;
    for (size_t i = 0; i < cap; i++)
        atomic_init(&a->slots[i].seq, i);
    if (o) {
        a->chain = o->chain;
        a->checkpoint_ms = o->checkpoint_interval_ms;
        a->max_bytes = o->max_file_bytes;
        a->max_files = o->max_files ? o->max_files : 1;
    }
    if (a->chain && o->state_dir &&
        (rc = al_audit_key_load_or_create(o->state_dir, &a->key)) != AL_OK) {
        al_log(AL_LOG_ERROR, "audit.key_failed",
               "cannot load or create the audit signing key %s/%s: %s", o->state_dir,
               AL_AUDIT_KEY_FILE, al_strerror(rc));
        goto fail;
    }
    a->fd = open_log(path);
    if (a->fd < 0) {
        al_log(AL_LOG_ERROR, "audit.open_failed", "audit log %s: %s", path, strerror(errno));
        rc = AL_ERR_IO;
        goto fail;
    }
    if (a->chain) {
        resume_chain(a);
    } else {
        struct stat st;
        a->size = fstat(a->fd, &st) == 0 ? st.st_size : 0;
    }
    a->next_checkpoint_ms = now_ms() + a->checkpoint_ms;
    if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    *out = a;
    return AL_OK;
fail:
    if (a) {
        if (a->fd >= 0)
            close(a->fd);
        EVP_PKEY_free(a->key);
        free(a->slots);
        free(a->data);
        free(a->path);
        free(a);
    }
    return rc;
}

int al_audit_open_ex(const char *path, size_t slots, al_audit **out)
{
    al_audit_opts o = {.slots = slots};
    return al_audit_open_opts(path, &o, out);
}

int al_audit_open(const char *path, al_audit **out)
{
    return al_audit_open_ex(path, AL_AUDIT_QUEUE_DEFAULT, out);
}

void al_audit_close(al_audit *a)
{
    if (!a)
        return;
    atomic_store(&a->stop, 1);
    atomic_store(&a->sleeping, 0);
    futex(&a->sleeping, FUTEX_WAKE_PRIVATE, 1, NULL);
    pthread_join(a->thread, NULL);
    if (a->fd >= 0) {
        fdatasync(a->fd);
        close(a->fd);
    }
    EVP_PKEY_free(a->key);
    free(a->slots);
    free(a->data);
    free(a->path);
    free(a);
}

/* Claims k consecutive positions for a producer (one CAS); 0 when the ring has no room
 * for them (counted unless `quiet`: the writer's own reports of drops must not add to
 * them). They are all free when the last one is, as the writer frees in order. */
static int claim(al_audit *a, size_t k, size_t *pos_out, int quiet)
{
    size_t pos = atomic_load_explicit(&a->enqueue_pos, memory_order_relaxed);
    for (;;) {
        size_t last = pos + k - 1;
        size_t seq = atomic_load_explicit(&a->slots[last & a->mask].seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)last;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&a->enqueue_pos, &pos, pos + k,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            if (quiet)
                return 0;
            atomic_fetch_add_explicit(&a->dropped, 1, memory_order_relaxed);
            wake_writer(a, 1);
            return 0;
        } else {
            pos = atomic_load_explicit(&a->enqueue_pos, memory_order_relaxed);
        }
    }
    *pos_out = pos;
    return 1;
}

/* Queues an encoded line (n: its length, or an encoder error). */
static void submit_line(al_audit *a, char *line, int n, int quiet)
{
    size_t pos;
    if (n < 0) /* cannot happen (budgets fit AL_AUDIT_LINE_MAX); keep the trace anyway */
        n = snprintf(line, AL_AUDIT_LINE_MAX, "{\"error\":\"audit_encode_failed\"}\n");
    size_t k = chunks_for((size_t)n);
    if (!claim(a, k, &pos, quiet))
        return;
    ring_copy(a, pos, line, (size_t)n, 1);
    audit_slot *s = &a->slots[pos & a->mask];
    s->len = (uint32_t)n;
    atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
    /* a quarter ring queued since the writer began its nap: it must not let the ring
     * fill (read with `sleeping`'s cache line, written once per nap) */
    size_t napped = pos + k - atomic_load_explicit(&a->nap_from, memory_order_relaxed);
    wake_writer(a, napped >= (a->mask + 1) >> 2);
    prefetch_slot(a, pos + k, 1);
}

void al_audit_submit(al_audit *a, const al_audit_request *r)
{
    char line[AL_AUDIT_LINE_MAX];
    if (!a || !r)
        return;
    submit_line(a, line, al_audit_encode_request(r, line, sizeof line), 0);
}

void al_audit_submit_event(al_audit *a, const char *event, const al_audit_field *f, size_t n)
{
    char line[AL_AUDIT_LINE_MAX];
    struct timespec now;
    if (!a || !event)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    submit_line(a, line, al_audit_encode_event(ms, event, f, n, line, sizeof line), 0);
}

/* The writer's own records (drops, outages) go through the ring like any other. */
static void submit_event_now(al_audit *a, const char *event, const al_audit_field *f, size_t n)
{
    char line[AL_AUDIT_LINE_MAX];
    if (!a->chain)
        return; /* plain logs (tests, benchmarks) keep exactly what was submitted */
    submit_line(a, line, al_audit_encode_event(now_ms(), event, f, n, line, sizeof line), 1);
}

void al_audit_get_stats(const al_audit *ca, al_audit_stats *out)
{
    al_audit *a = (al_audit *)ca;
    memset(out, 0, sizeof *out);
    if (!a)
        return;
    out->written = atomic_load(&a->written);
    out->dropped = atomic_load(&a->dropped);
    out->failed = atomic_load(&a->failed);
    out->checkpoints = atomic_load(&a->checkpoints);
    out->rotations = atomic_load(&a->rotations);
    size_t queued = atomic_load(&a->enqueue_pos) - atomic_load(&a->consumed);
    out->lag = (uint64_t)queued + atomic_load(&a->pending_lines);
    out->writable = al_audit_writable(a);
}

int al_audit_writable(const al_audit *ca)
{
    al_audit *a = (al_audit *)ca;
    if (!a)
        return 1;
    if (atomic_load_explicit(&a->failing, memory_order_relaxed))
        return 0;
    /* a ring seven-eighths full is about to drop records */
    size_t queued = atomic_load_explicit(&a->enqueue_pos, memory_order_relaxed) -
                    atomic_load_explicit(&a->consumed, memory_order_relaxed);
    return queued < a->mask + 1 - ((a->mask + 1) >> 3);
}

uint64_t al_audit_dropped(const al_audit *a)
{
    return a ? atomic_load(&((al_audit *)a)->dropped) : 0;
}

uint64_t al_audit_written(const al_audit *a)
{
    return a ? atomic_load(&((al_audit *)a)->written) : 0;
}

void al_audit_reopen(al_audit *a)
{
    if (!a)
        return;
    atomic_store(&a->reopen, 1);
    wake_writer(a, 1);
}

/* ---- encoding --------------------------------------------------------------------- */

typedef struct enc {
    char *p;
    size_t len, cap;
    int overflow;
    int truncated;
} enc;

static void put(enc *e, const char *s, size_t n)
{
    if (e->overflow || n > e->cap - e->len) {
        e->overflow = 1;
        return;
    }
    memcpy(e->p + e->len, s, n);
    e->len += n;
}

static void puts_(enc *e, const char *s)
{
    put(e, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (at most `left` bytes), 0 if invalid:
 * no overlongs, no surrogates, nothing above U+10FFFF (RFC 3629). */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    unsigned c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* The escaped form of the character at p: sets *piece and *plen (what to write) and
 * returns how many input bytes it consumes. tmp holds at least 8 bytes. */
static size_t escape_one(const unsigned char *p, size_t left, char *tmp, const char **piece,
                         size_t *plen)
{
    unsigned c = *p;
    size_t u;
    if (c == '"' || c == '\\') {
        tmp[0] = '\\';
        tmp[1] = (char)c;
        *piece = tmp, *plen = 2;
        return 1;
    }
    if (c < 0x20 || c == 0x7f) {
        if (c == '\n' || c == '\r' || c == '\t') {
            tmp[0] = '\\';
            tmp[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            *piece = tmp, *plen = 2;
        } else {
            static const char hex[] = "0123456789abcdef";
            memcpy(tmp, "\\u00", 4);
            tmp[4] = hex[c >> 4];
            tmp[5] = hex[c & 15];
            *piece = tmp, *plen = 6;
        }
        return 1;
    }
    u = utf8_len(p, left);
    if (u == 0) {
        *piece = "\\ufffd", *plen = 6; /* not UTF-8: the replacement character */
        return 1;
    }
    *piece = (const char *)p, *plen = u;
    return u;
}

/* 1 for a byte a JSON string holds as it is: printable ASCII but '"' and '\\' (not NUL,
 * control characters, DEL, or bytes >= 0x80, which put_str checks as UTF-8). */
static const unsigned char json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    /* 0x80 - 0xff: 0 */
};

/* Writes s as a JSON string whose content is at most `budget` (>= 3) bytes; a longer
 * value is cut at a character boundary and ends in "..." (and the record is marked
 * "truncated"), so a huge or hostile field cannot push the line past its slot. */
static void put_str(enc *e, const char *s, size_t budget)
{
    char tmp[8];
    const char *piece;
    size_t plen, total = 0, left, adv;
    const unsigned char *p;
    if (!s) {
        puts_(e, "null");
        return;
    }
    /* Fast path (nearly every field): printable ASCII with nothing to escape, within
     * the budget, copied while it is scanned, in one pass (strlen, a scan and a memcpy
     * were ~135 instructions a field, 20 fields a record). A byte that needs more (or
     * a value over budget) leaves what was copied behind unused and takes the path
     * below from the start. */
    if (!e->overflow && e->cap - e->len >= budget + 2) {
        char *o = e->p + e->len + 1;
        size_t i = 0;
        unsigned c = 0;
        for (; i <= budget; i++) {
            c = (unsigned char)s[i];
            if (!json_plain[c])
                break; /* NUL, a control character, DEL, non-ASCII or a quote */
            o[i] = (char)c;
        }
        if (c == '\0' && i <= budget) {
            o[-1] = '"';
            o[i] = '"';
            e->len += i + 2;
            return;
        }
    }
    left = strlen(s);
    for (p = (const unsigned char *)s; left && total <= budget; p += adv, left -= adv) {
        adv = escape_one(p, left, tmp, &piece, &plen);
        total += plen;
    }
    int cut = total > budget;
    size_t limit = cut ? budget - 3 : budget, used = 0;
    left = strlen(s);
    put(e, "\"", 1);
    for (p = (const unsigned char *)s; left; p += adv, left -= adv) {
        adv = escape_one(p, left, tmp, &piece, &plen);
        if (used + plen > limit)
            break;
        put(e, piece, plen);
        used += plen;
    }
    if (cut) {
        put(e, "...", 3);
        e->truncated = 1;
    }
    put(e, "\"", 1);
}

/* Counters are clamped to INT64_MAX: JSON readers (jansson, jq) hold integers as
 * signed 64-bit, and no real byte count comes near it. */
static void put_u64(enc *e, uint64_t v)
{
    char tmp[AL_FMT_U64_MAX];
    if (v > (uint64_t)INT64_MAX)
        v = (uint64_t)INT64_MAX;
    /* not snprintf: six numbers a record, formatted in a tenth of the time; straight
     * into the line when it has room (most are one digit: bytes_in, the times) */
    if (!e->overflow && e->cap - e->len >= sizeof tmp) {
        if (v < 10)
            e->p[e->len++] = (char)('0' + v);
        else
            e->len += al_fmt_u64(e->p + e->len, v);
        return;
    }
    put(e, tmp, al_fmt_u64(tmp, v));
}

static void put_time(enc *e, int64_t ms)
{
    /* The "YYYY-MM-DDTHH:MM:SS." part changes once a second: each thread keeps the
     * last one it formatted (gmtime_r + snprintf per record were ~1.5k instructions). */
    static _Thread_local int64_t cached_sec = -1;
    static _Thread_local char cached[40];
    static _Thread_local int cached_len;
    char tmp[48];
    if (ms < 0) {
        puts_(e, "null");
        return;
    }
    int64_t sec64 = ms / 1000;
    int frac = (int)(ms % 1000);
    if (sec64 != cached_sec) {
        time_t sec = (time_t)sec64;
        struct tm tm;
        if (!gmtime_r(&sec, &tm)) {
            puts_(e, "null");
            return;
        }
        int n =
            snprintf(cached, sizeof cached, "\"%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (n < 0 || (size_t)n >= sizeof cached) {
            puts_(e, "null");
            return;
        }
        cached_len = n;
        cached_sec = sec64;
    }
    memcpy(tmp, cached, (size_t)cached_len);
    tmp[cached_len] = (char)('0' + frac / 100);
    tmp[cached_len + 1] = (char)('0' + frac / 10 % 10);
    tmp[cached_len + 2] = (char)('0' + frac % 10);
    tmp[cached_len + 3] = 'Z';
    tmp[cached_len + 4] = '"';
    put(e, tmp, (size_t)cached_len + 5);
}

/* Closes the record: the "truncated" mark if a field was cut, '}', '\n', NUL. Returns
 * the line's length or AL_ERR_TOOBIG. */
static int end_line(enc *e)
{
    if (e->truncated)
        puts_(e, ",\"truncated\":true");
    puts_(e, "}\n");
    if (e->overflow)
        return AL_ERR_TOOBIG;
    e->p[e->len] = '\0';
    return (int)e->len;
}

static void put_u64_or_null(enc *e, uint64_t v, int present)
{
    if (present)
        put_u64(e, v);
    else
        puts_(e, "null");
}

int al_audit_encode_request(const al_audit_request *r, char *buf, size_t cap)
{
    /* Output budgets per field: their sum plus the keys and numbers stays under
     * AL_AUDIT_LINE_MAX (the unit test encodes a record of huge hostile fields). */
    enc e = {.p = buf, .cap = cap};
    if (!r || !buf || cap < 2)
        return AL_ERR_INVAL;
    e.cap = cap - 1; /* room for the NUL */
    puts_(&e, "{\"event\":");
    put_str(&e, r->event ? r->event : "request", 32);
    puts_(&e, ",\"time\":");
    put_time(&e, r->time_ms);
    puts_(&e, ",\"start_time\":");
    if (r->start_ms > 0)
        put_time(&e, r->start_ms);
    else
        puts_(&e, "null");
    puts_(&e, ",\"request_id\":");
    put_str(&e, r->request_id, 128);
    puts_(&e, ",\"client_request_id\":");
    put_str(&e, r->client_request_id, 128);
    puts_(&e, ",\"client\":");
    put_str(&e, r->client, 64);
    puts_(&e, ",\"target\":");
    put_str(&e, r->target, 128);
    puts_(&e, ",\"type\":");
    put_str(&e, r->type, 32);
    puts_(&e, ",\"auth_method\":");
    put_str(&e, r->auth_method, 32);
    puts_(&e, ",\"provider\":");
    put_str(&e, r->provider, 128);
    /* no version when no credential was taken (e.g. the provider is missing) */
    puts_(&e, ",\"provider_version\":");
    put_u64_or_null(&e, r->provider_version, r->provider && r->provider_version);
    puts_(&e, ",\"method\":");
    put_str(&e, r->method, 32);
    puts_(&e, ",\"host\":");
    put_str(&e, r->host, 256);
    puts_(&e, ",\"port\":");
    put_u64_or_null(&e, r->port, r->port != 0);
    puts_(&e, ",\"path\":");
    put_str(&e, r->path, 1600);
    puts_(&e, ",\"upstream_addr\":");
    put_str(&e, r->upstream_addr, 64);
    puts_(&e, ",\"protocol\":");
    put_str(&e, r->protocol, 16);
    puts_(&e, ",\"status\":");
    put_u64(&e, r->status > 0 ? (uint64_t)r->status : 0);
    puts_(&e, ",\"bytes_in\":");
    put_u64(&e, r->bytes_in);
    puts_(&e, ",\"bytes_out\":");
    put_u64(&e, r->bytes_out);
    puts_(&e, ",\"upstream_ms\":");
    put_u64(&e, r->upstream_ms);
    puts_(&e, ",\"total_ms\":");
    put_u64(&e, r->total_ms);
    puts_(&e, ",\"decision\":");
    put_str(&e, r->decision, 16);
    puts_(&e, ",\"decided_by\":");
    put_str(&e, r->decided_by, 16);
    if (r->rule) { /* present once a policy decided (absent, not null: like retry) */
        puts_(&e, ",\"rule\":");
        put_str(&e, r->rule, 96);
    }
    if (r->principal_iss || r->principal_sub || r->principal_client_id) {
        puts_(&e, ",\"principal\":{\"iss\":");
        put_str(&e, r->principal_iss, 160);
        puts_(&e, ",\"sub\":");
        put_str(&e, r->principal_sub, 96);
        puts_(&e, ",\"client_id\":");
        put_str(&e, r->principal_client_id, 96);
        puts_(&e, "}");
    } else if (r->principal) {
        puts_(&e, ",\"principal\":");
        put_str(&e, r->principal, 160);
    }
    if (r->end_user) {
        puts_(&e, ",\"end_user\":");
        put_str(&e, r->end_user, 256);
    }
    puts_(&e, ",\"outcome\":");
    put_str(&e, r->outcome, 16);
    puts_(&e, ",\"reason\":");
    put_str(&e, r->reason, 64);
    if (r->retry) {
        puts_(&e, ",\"retry\":");
        put_str(&e, r->retry, 32);
    }
    if (r->token_fingerprint) {
        puts_(&e, ",\"token_fingerprint\":");
        put_str(&e, r->token_fingerprint, 32);
    }
    if (r->aws_service) {
        puts_(&e, ",\"aws_access_key_id\":");
        put_str(&e, r->aws_access_key_id, 128);
        puts_(&e, ",\"aws_region\":");
        put_str(&e, r->aws_region, 32);
        puts_(&e, ",\"aws_service\":");
        put_str(&e, r->aws_service, 64);
    }
    if (r->scrubbed) {
        puts_(&e, ",\"scrubbed\":");
        put_u64(&e, r->scrubbed);
    }
    return end_line(&e);
}

int al_audit_encode_event(int64_t time_ms, const char *event, const al_audit_field *f, size_t n,
                          char *buf, size_t cap)
{
    enc e = {.p = buf, .cap = cap};
    size_t strings = 0;
    if (!event || !buf || cap < 2 || (n && !f) || n > AL_AUDIT_EVENT_FIELDS_MAX)
        return AL_ERR_INVAL;
    e.cap = cap - 1;
    for (size_t i = 0; i < n; i++)
        strings += f[i].kind == AL_AUDIT_STR;
    /* Each key costs at most 64 + 4 bytes and each number 20: what is left of a line
     * (less 256 for event and time) is shared by the string values, at most 1024 each. */
    size_t fixed = 256 + n * (64 + 4 + 20), budget = 1024;
    if (strings && fixed < AL_AUDIT_LINE_MAX) {
        size_t share = (AL_AUDIT_LINE_MAX - fixed) / strings;
        if (share < budget)
            budget = share;
    }
    if (budget < 8)
        budget = 8;
    puts_(&e, "{\"event\":");
    put_str(&e, event, 64);
    puts_(&e, ",\"time\":");
    put_time(&e, time_ms);
    for (size_t i = 0; i < n; i++) {
        puts_(&e, ",");
        put_str(&e, f[i].key ? f[i].key : "?", 60);
        puts_(&e, ":");
        switch (f[i].kind) {
        case AL_AUDIT_STR:
            put_str(&e, f[i].str, budget);
            break;
        case AL_AUDIT_INT:
            if (f[i].num < 0) {
                puts_(&e, "-");
                put_u64(&e, f[i].num == INT64_MIN ? (uint64_t)INT64_MAX : (uint64_t)-f[i].num);
            } else {
                put_u64(&e, (uint64_t)f[i].num);
            }
            break;
        case AL_AUDIT_BOOL:
            puts_(&e, f[i].num ? "true" : "false");
            break;
        default:
            puts_(&e, "null");
            break;
        }
    }
    return end_line(&e);
}

int al_audit_file_sha256(const char *path, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[32], chunk[16384];
    unsigned mdlen = 0;
    int rc = AL_ERR_IO;
    hex[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (fd < 0 || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        goto out;
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            break;
        if (!EVP_DigestUpdate(ctx, chunk, (size_t)r))
            goto out;
    }
    if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != sizeof md)
        goto out;
    for (size_t i = 0; i < sizeof md; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
    rc = AL_OK;
out:
    EVP_MD_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    return rc;
}

void al_audit_redact_query(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0, i = 0;
    if (!out || cap == 0)
        return;
    if (!in)
        len = 0;
    /* the path, up to '?' or '#' */
    for (; i < len && in[i] != '?' && in[i] != '#'; i++)
        if (o + 1 < cap)
            out[o++] = in[i];
    if (i < len && in[i] == '?') {
        if (o + 1 < cap)
            out[o++] = '?';
        i++;
        /* each parameter: its name and '=' kept, its value dropped; a parameter
         * without '=' is dropped whole (it may be a bare token) */
        while (i < len && in[i] != '#') {
            size_t start = i, eq = (size_t)-1;
            for (; i < len && in[i] != '&' && in[i] != '#'; i++)
                if (eq == (size_t)-1 && in[i] == '=')
                    eq = i;
            if (eq != (size_t)-1)
                for (size_t k = start; k <= eq; k++)
                    if (o + 1 < cap)
                        out[o++] = in[k];
            if (i < len && in[i] == '&') {
                if (o + 1 < cap)
                    out[o++] = '&';
                i++;
            }
        }
    }
    out[o] = '\0';
}

int al_audit_append_line(const char *path, const char *json_object)
{
    int fd = open_log(path);
    if (fd < 0)
        return AL_ERR_IO;
    size_t n = strlen(json_object);
    char line[AL_AUDIT_LINE_MAX], out[1 + AL_AUDIT_LINE_MAX + AL_AUDIT_CHAIN_PREFIX_MAX];
    int rc = AL_ERR_TOOBIG;
    size_t olen = 0;
    if (n + 1 > sizeof line)
        goto out;
    memcpy(line, json_object, n);
    line[n] = '\n';
    /* Under the same lock as the server's writer: read where the chain stands and
     * append after it. A log whose last line is not chained (written with
     * audit.chain: false) gets a plain line, as before. */
    lock_fd(fd);
    al_audit_chain c;
    int64_t size = 0;
    int partial = 0, chained = al_audit_chain_from_fd(fd, &c, &size, &partial);
    if (partial)
        out[olen++] = '\n';
    if (chained == 1 || (chained == 0 && size == 0)) {
        olen += al_audit_chain_line(&c, line, n + 1, out + olen);
    } else {
        memcpy(out + olen, line, n + 1);
        olen += n + 1;
    }
    /* One write(2) of the whole line: O_APPEND keeps concurrent writers' lines whole. */
    ssize_t w = write(fd, out, olen);
    rc = w == (ssize_t)olen ? AL_OK : AL_ERR_IO;
    unlock_fd(fd);
out:
    close(fd);
    return rc;
}
