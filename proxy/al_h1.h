/* al_h1: the HTTP/1.1 request parser engine — no I/O (nghttp2 style).
 *
 * Framing is libhttp-parser's (Debian's libhttp-parser, built strict); on top of it
 * this engine refuses what request smuggling needs and http_parser lets through:
 * bare LF line endings, obs-fold, control bytes in the head, Content-Length and
 * Transfer-Encoding together, more than one Content-Length (even equal ones), any
 * Transfer-Encoding but exactly "chunked", and more than one Host or an invalid or
 * empty Host value (RFC 9112 3.2). A missing Host is the connection's to judge.
 *
 * Use: al_h1_head_scan() on the bytes received so far says whether a complete head
 * is there (or why it can never be); al_h1_parse_head() parses it into slices of
 * that buffer; al_h1_feed_body() then decodes the body (Content-Length or chunked)
 * from the bytes that follow, handing decoded bytes to a callback, and stops at the
 * end of the message so pipelined requests stay in the caller's buffer. */
#ifndef AL_H1_H
#define AL_H1_H

#include <http_parser.h>
#include <stddef.h>

#include "al_errors.h"
#include <stdint.h>

#define AL_H1_MAX_HEADERS 128

typedef struct al_h1_slice {
    uint32_t off; /* from the start of the head buffer */
    uint32_t len;
} al_h1_slice;

typedef struct al_h1_field {
    al_h1_slice name, value;
} al_h1_field;

typedef struct al_h1_head {
    const char *buf;    /* the head bytes the slices point into (borrowed) */
    const char *method; /* static string from http_parser */
    int is_connect;
    al_h1_slice url;
    al_h1_field fields[AL_H1_MAX_HEADERS];
    size_t field_count;
    int http_minor;
    int keep_alive;         /* after this request, per version and Connection */
    int chunked;            /* Transfer-Encoding: chunked */
    int64_t content_length; /* -1 when absent */
    int expect_continue;    /* Expect: 100-continue */
    int host_count;         /* Host fields (more than one is refused) */
} al_h1_head;

/* A refusal: HTTP status (400 or 431), a JSON error code and a short reason. */
typedef struct al_h1_error {
    enum al_refusal ref; /* the refusal (proxy/al_errors.h); status and code are its row's */
    int status;
    const char *code;
    const char *reason;
} al_h1_error;

/* Body callback: decoded body bytes. Return 0; nonzero stops with an error. */
typedef int (*al_h1_body_cb)(void *arg, const char *data, size_t len);

typedef struct al_h1_parser {
    http_parser hp;
    al_h1_head head;
    al_h1_body_cb on_body;
    void *arg;
    int head_done;
    int message_done;
    int cb_failed;
    uint32_t field_state; /* 0 none, 1 in name, 2 in value */
} al_h1_parser;

/* Looks for the end of a request head in buf[0..len). Returns the head length
 * (including the final CRLF CRLF) when complete, 0 when more bytes are needed, or
 * -1 with *err set when the bytes can never form an acceptable head (bare LF,
 * obs-fold, control bytes, or `limit` bytes without an end -> 431). Leading empty
 * lines are the caller's to skip (al_h1_skip_empty_lines). */
long al_h1_head_scan(const char *buf, size_t len, size_t limit, al_h1_error *err);
/* Number of leading CRLF bytes (RFC 9112 2.2 allows ignoring them). */
size_t al_h1_skip_empty_lines(const char *buf, size_t len);

/* Parses the complete head buf[0..head_len) (as found by al_h1_head_scan). On
 * success p->head is filled (slices into buf) and 0 is returned; else -1 with
 * *err. The body callback is used by al_h1_feed_body. */
int al_h1_parse_head(al_h1_parser *p, const char *buf, size_t head_len, al_h1_body_cb on_body,
                     void *arg, al_h1_error *err);

/* Feeds bytes after the head. Returns how many were consumed (it stops right after
 * the end of the message: p->message_done), or -1 with *err for a malformed body
 * (bad chunk framing). A message without a body is done after al_h1_parse_head. */
long al_h1_feed_body(al_h1_parser *p, const char *data, size_t len, al_h1_error *err);

/* Case-insensitive compare of a slice with a NUL-terminated lower-case name. */
int al_h1_slice_is(const char *buf, al_h1_slice s, const char *lower_name);

#endif
