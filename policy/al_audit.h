/* al_audit: the audit log — one JSON object per line, appended to a file.
 *
 * Two writers share one format:
 *  - the data path: al_audit_submit() copies a finished record into a bounded
 *    in-memory queue and returns at once; a writer thread appends the lines, so
 *    the event loop never waits on the disk. A full queue drops the record and
 *    counts it (al_audit_dropped) — the loop is never blocked.
 *  - the CLI (store changes): al_audit_append_line() appends synchronously.
 * Besides request records (al_audit_submit), the server writes event records
 * (al_audit_submit_event: table loads and reloads) through the same queue.
 * SIGHUP / SIGUSR1 make the server call al_audit_reopen() (logrotate's convention).
 *
 * With the chain on (al_audit_opts.chain, the server's default) the writer gives each
 * line a seq and the hash of the line before (al_audit_chain.h), signs a checkpoint
 * every checkpoint_interval_ms, at rotation, reopen and close, rotates by size, and
 * holds lines whose write failed (disk full) and retries them in order: records are
 * lost only when the ring is full, and that is counted, logged and recorded.
 *
 * Records never contain a secret: callers pass provider names and versions only. */
#ifndef AL_AUDIT_H
#define AL_AUDIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct al_audit al_audit;

/* One request through the data path. String fields may be NULL (written as null). */
typedef struct al_audit_request {
    const char *event; /* "request" (NULL) for the final record, "request_start" for the
                          record of a request still running past audit.start_record_after_ms */
    int64_t time_ms;   /* wall clock, ms since epoch, when the record is written (the end) */
    int64_t start_ms;  /* wall clock at request start; 0 = unknown (null) */
    const char *request_id;        /* airlock's own id (always generated) */
    const char *client_request_id; /* the agent's X-Request-Id as sent, NULL if none */
    const char *client; /* "ip:port" */
    const char *target;
    const char *type; /* target type name */
    const char *auth_method;
    const char *provider;
    uint32_t provider_version;
    const char *method;
    const char *host;     /* the host the agent addressed (CONNECT: its authority's host) */
    uint16_t port;        /* its port; 0 = unknown (null) */
    const char *path;     /* path; query *values* removed by the caller (al_audit_redact_query) */
    const char *upstream_addr; /* "ip:port" airlock connected to, NULL if none */
    const char *protocol;      /* "http/1.1", "h2" */
    int status;
    uint64_t bytes_in;  /* from the agent */
    uint64_t bytes_out; /* to the agent */
    uint32_t upstream_ms;
    uint32_t total_ms;
    /* The decision (would airlock let this through, and which check said so) apart
     * from the outcome (what happened to it): a policy denial never reads like an
     * outage. */
    const char *decision;   /* "allow", "deny", NULL (ended before any decision) */
    const char *decided_by; /* "route", "policy", "egress", "request", "limits", or NULL */
    const char *rule;       /* the policy rule that decided, NULL when none (key left out) */
    const char *principal;  /* who the caller is (inbound auth), NULL when unknown (left out) */
    const char *outcome;    /* "ok", "refused" (denied), "error" (allowed, then airlock
                               answered an error), "aborted" (cut after the head),
                               "client_closed", NULL while running (request_start) */
    const char *reason;     /* the error code the agent got ("unknown_target",
                               "upstream_timeout"), "client_closed", else NULL */
    /* The request was retried after a 401/403: "grace_previous_version" (with the
     * provider's previous version, provider_version says which) or "fallback_provider";
     * NULL when not retried (the key is then left out). */
    const char *retry;
    /* oauth2_2lo: "sha256:" + 12 hex of the access token that was sent (never the
     * token), linking the request to its token_request event; NULL leaves it out. */
    const char *token_fingerprint;
    /* iam targets: the access key id that signed, the region and signing name (never
     * the secret, the session token or the signature); NULL for other methods (the keys
     * are then left out). */
    const char *aws_access_key_id;
    const char *aws_region;
    const char *aws_service;
    /* Inbound JWT: the principal's parts; when any is set, "principal" is written as
     * {"iss","sub","client_id"} instead of the string above. */
    const char *principal_iss, *principal_sub, *principal_client_id;
    /* OAuth on behalf of a user (3LO): the end user the request acts for ("ISS SUB" or a
     * trusted client's user header), NULL when none (the key is left out). */
    const char *end_user;
    /* Echoed credentials replaced in the response (headers and body); 0 = none (the key
     * is then left out). */
    uint32_t scrubbed;
} al_audit_request;

/* The longest line al_audit_encode_request() writes (newline included). Every string
 * field has an output budget (longer values are cut at a character boundary and the
 * record gets "truncated":true), so any record fits: a hostile request cannot make
 * its own audit line disappear by being large. */
#define AL_AUDIT_LINE_MAX 4096
/* One field of an event record (al_audit_submit_event): a string (NULL = null), an
 * integer or a boolean. Keys are the caller's constants. */
enum al_audit_field_kind { AL_AUDIT_STR, AL_AUDIT_INT, AL_AUDIT_BOOL };
typedef struct al_audit_field {
    const char *key;
    enum al_audit_field_kind kind;
    const char *str;
    int64_t num; /* INT value; BOOL: nonzero = true */
} al_audit_field;
/* At most this many fields in one event record. */
#define AL_AUDIT_EVENT_FIELDS_MAX 32

/* Queue capacity of al_audit_open(), in ring positions of 1 KiB (a power of two): a
 * record takes one per KiB of its line, most records one (4 MiB: ~4,000 records). */
#define AL_AUDIT_QUEUE_DEFAULT 4096

/* How the server opens the log (README "Tamper-evident audit log"). */
typedef struct al_audit_opts {
    size_t slots;                    /* ring positions; 0 = AL_AUDIT_QUEUE_DEFAULT */
    int chain;                       /* seq/prev on every line, signed checkpoints */
    const char *state_dir;           /* where the signing key lives; NULL = no checkpoints */
    uint32_t checkpoint_interval_ms; /* 0 = only at rotation, reopen and close */
    uint64_t max_file_bytes;         /* rotate before a write would pass it; 0 = never */
    uint32_t max_files;              /* rotated files kept, path.1 .. path.N (>= 1) */
} al_audit_opts;

/* What the writer has done, for /metrics and the status page. */
typedef struct al_audit_stats {
    uint64_t written;     /* records appended (checkpoints not counted) */
    uint64_t dropped;     /* records lost: the ring was full (or unwritable at close) */
    uint64_t failed;      /* write attempts that failed (each is retried) */
    uint64_t lag;         /* records queued (ring positions: one per KiB of a line) or held,
                             not yet in the file */
    uint64_t checkpoints; /* signed checkpoints written */
    uint64_t rotations;   /* size rotations */
    int writable;         /* al_audit_writable() */
} al_audit_stats;

int al_audit_open_opts(const char *path, const al_audit_opts *o, al_audit **out);
/* Copies the counters (atomics; safe from any thread). */
void al_audit_get_stats(const al_audit *a, al_audit_stats *out);
/* 0 while the last write failed (until a retry succeeds) or the ring is nearly full:
 * with audit.on_failure: deny the data path refuses requests (503 audit_unavailable)
 * rather than forward what may go unaudited. Two relaxed atomic loads. */
int al_audit_writable(const al_audit *a);

/* Opens (creates 0600, appends) the log and starts the writer thread (no chain). */
int al_audit_open(const char *path, al_audit **out);
/* Same with a queue of `slots` positions (rounded up to a power of two, >= 4: room
 * for the longest line). */
int al_audit_open_ex(const char *path, size_t slots, al_audit **out);
/* Flushes what is queued, stops the thread, closes the file. */
void al_audit_close(al_audit *a);
/* Non-blocking; safe from any thread. */
void al_audit_submit(al_audit *a, const al_audit_request *r);
/* Records dropped because the queue was full or the write failed. */
uint64_t al_audit_dropped(const al_audit *a);
/* Lines written to the file so far. */
uint64_t al_audit_written(const al_audit *a);
/* Asks the writer to reopen the file (after logrotate moved it); non-blocking. Lines
 * queued before the call go to whichever file is open when the writer reaches them:
 * none is lost or written twice. */
void al_audit_reopen(al_audit *a);
/* Queues one event record {"event":..,"time":..,<fields>} (same queue, same
 * non-blocking rules as al_audit_submit). Safe from any thread. */
void al_audit_submit_event(al_audit *a, const char *event, const al_audit_field *f, size_t n);

/* Encodes `r` as one JSON line (with '\n', NUL-terminated) into buf; returns the length
 * or AL_ERR_TOOBIG if cap is too small (cap >= AL_AUDIT_LINE_MAX always suffices).
 * Valid JSON and UTF-8 for any input bytes: control characters are escaped and bytes
 * that are not valid UTF-8 become U+FFFD. Field names: event, time and start_time
 * (ISO 8601 UTC), request_id, client_request_id, client, target, type, auth_method,
 * provider, provider_version (null without a credential version), method, host, port,
 * path, upstream_addr, protocol, status, bytes_in, bytes_out, upstream_ms, total_ms,
 * decision, reason (README "Audit log" documents each). */
int al_audit_encode_request(const al_audit_request *r, char *buf, size_t cap);
/* Encodes an event record: {"event":event,"time":time_ms,<f[0..n)>}. Same guarantees
 * as al_audit_encode_request (string values share a budget so any record fits
 * AL_AUDIT_LINE_MAX); AL_ERR_INVAL for n > AL_AUDIT_EVENT_FIELDS_MAX. */
int al_audit_encode_event(int64_t time_ms, const char *event, const al_audit_field *f, size_t n,
                          char *buf, size_t cap);
/* SHA-256 of the file's bytes as 64 lower-case hex digits (+ NUL), for records that
 * name the exact table that was loaded. AL_ERR_IO if it cannot be read. */
int al_audit_file_sha256(const char *path, char hex[65]);
/* Copies `path_and_query` into out with every query value replaced by nothing
 * ("/a?key=&x=") so secrets in query strings never reach the log. A parameter without
 * '=' ("/a?sk-123") could itself be a secret: it is dropped ("/a?"). A fragment is
 * dropped. Always NUL-terminates when cap > 0 (a long input is cut). */
void al_audit_redact_query(const char *path_and_query, size_t len, char *out, size_t cap);

/* Synchronous append of one already-encoded JSON object (no newline needed), used by
 * the CLI for store events. Creates the file 0600. Under the writer's flock: when the
 * log is chained (or empty) the line joins the chain. */
int al_audit_append_line(const char *path, const char *json_object);

#endif
