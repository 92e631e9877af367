/* al_audit: the audit log — one JSON object per line, appended to a file.
 *
 * Two writers share one format:
 *  - the data path: al_audit_submit() copies a finished record into a bounded
 *    in-memory queue and returns at once; a writer thread appends the lines, so
 *    the event loop never waits on the disk. A full queue drops the record and
 *    counts it (al_audit_dropped) — the loop is never blocked.
 *  - the CLI (store changes): al_audit_append_line() appends synchronously.
 *
 * Records never contain a secret: callers pass provider names and versions only. */
#ifndef AL_AUDIT_H
#define AL_AUDIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct al_audit al_audit;

/* One request through the data path. String fields may be NULL (written as null). */
typedef struct al_audit_request {
    int64_t time_ms;        /* wall clock, ms since epoch, at request start */
    const char *request_id;
    const char *client;     /* "ip:port" */
    const char *target;
    const char *type;       /* target type name */
    const char *auth_method;
    const char *provider;
    uint32_t provider_version;
    const char *method;
    const char *host;
    const char *path;       /* path; query *values* removed by the caller (al_audit_redact_query) */
    const char *protocol;   /* "http/1.1", "h2" */
    int status;
    uint64_t bytes_in;      /* from the agent */
    uint64_t bytes_out;     /* to the agent */
    uint32_t upstream_ms;
    uint32_t total_ms;
    const char *decision;   /* "allow" or "deny" */
    const char *reason;     /* error code for denials ("unknown_target"), else NULL */
} al_audit_request;

/* Opens (creates 0600, appends) the log and starts the writer thread. */
int al_audit_open(const char *path, al_audit **out);
/* Flushes what is queued, stops the thread, closes the file. */
void al_audit_close(al_audit *a);
/* Non-blocking; safe from any thread. */
void al_audit_submit(al_audit *a, const al_audit_request *r);
uint64_t al_audit_dropped(const al_audit *a);

/* Encodes `r` as one JSON line (with '\n') into buf; returns length or negative al_err. */
int al_audit_encode_request(const al_audit_request *r, char *buf, size_t cap);
/* Copies `path_and_query` into out with every query value replaced by nothing
 * ("/a?key=&x=") so secrets in query strings never reach the log. */
void al_audit_redact_query(const char *path_and_query, size_t len, char *out, size_t cap);

/* Synchronous append of one already-encoded JSON object (no newline needed), used by
 * the CLI for store events. Creates the file 0600. */
int al_audit_append_line(const char *path, const char *json_object);

#endif
