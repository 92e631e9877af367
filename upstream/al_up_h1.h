/* al_up_h1: the HTTP/1.1 client codec, free of I/O (unit-tested and fuzzed alone).
 *
 * Request side: al_up_h1_write_head() serialises the request head (request line,
 * Host, the caller's headers, the body's framing) into a buffer the engine sends
 * in one writev with the first body bytes; al_up_h1_chunk_head() frames a body
 * chunk of an unknown-length body.
 *
 * Response side: al_up_h1_resp is a pull parser. The engine offers the bytes it
 * read; al_up_h1_resp_next() consumes some of them (*used) and returns ONE event:
 * an interim (1xx) head, the final head, a piece of body (pointing into the caller's
 * bytes, so nothing is copied and a paused consumer just keeps those bytes), the
 * trailers, the end, an error, or NEED_MORE once everything offered was consumed.
 * The head is parsed here, strictly and with airlock's framing rules (two different
 * Content-Length values, Content-Length with Transfer-Encoding, a coding other than
 * chunked, a length that is not plain digits: AL_UP_H1_BAD_FRAMING; identical
 * repeated lengths are one length, RFC 9110 section 8.6); a chunked body and its
 * trailers are decoded by libhttp-parser. Memory: the head and the trailers each
 * at most AL_UP_H1_MAX_HEAD bytes and AL_UP_H1_MAX_HEADERS lines. */
#ifndef AL_UP_H1_H
#define AL_UP_H1_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "common/al_buf.h"
#include "common/al_http.h"

#define AL_UP_H1_MAX_HEAD    (64 * 1024)
#define AL_UP_H1_MAX_HEADERS 256

/* The request head. body_length: -1 = a body of unknown length (sent chunked),
 * >= 0 = Content-Length. has_body 0 sends no framing header, except
 * Content-Length: 0 when force_length (a bodiless POST/PUT/PATCH: some servers
 * want it). Host comes from host/port (port omitted when default for https). */
typedef struct al_up_h1_req {
    const char *method, *path, *host;
    uint16_t port;
    int https;
    const al_header *headers;
    size_t header_count;
    int has_body, force_length;
    int64_t body_length;
} al_up_h1_req;

/* Appends the head to out. AL_ERR_INVAL when a name or value holds a byte that may
 * not be sent (CR, LF, NUL; a name not a token), AL_ERR_TOOBIG past out's bound.
 * Host, Content-Length, Transfer-Encoding and the other hop-by-hop headers of the
 * caller's list are dropped (only "TE: trailers" goes); framing is the codec's. */
int al_up_h1_write_head(al_buf *out, const al_up_h1_req *q);
/* "<hex>\r\n" for a chunk of n bytes (n > 0) into out (>= 20 bytes); its length. */
size_t al_up_h1_chunk_head(char *out, size_t n);
#define AL_UP_H1_CHUNK_END "0\r\n\r\n"

enum al_up_h1_ev {
    AL_UP_H1_NEED_MORE = 0, /* all offered bytes consumed; offer more */
    AL_UP_H1_INTERIM,       /* a 1xx head (status, headers) */
    AL_UP_H1_HEAD,          /* the final head (status, headers: hop-by-hop dropped) */
    AL_UP_H1_BODY,          /* data[0..len): body bytes, inside what was offered */
    AL_UP_H1_TRAILERS,      /* headers: the chunked body's trailers (when any) */
    AL_UP_H1_DONE,          /* the response ended; bytes after it are not this response's */
    AL_UP_H1_ERROR,         /* err and detail say why; the connection must not be reused */
};

enum al_up_h1_err {
    AL_UP_H1_OK = 0,
    AL_UP_H1_MALFORMED,   /* not HTTP/1.x, a bad line, a bad chunk, too large, truncated */
    AL_UP_H1_BAD_FRAMING, /* ambiguous body framing in the head */
};

typedef struct al_up_h1_event {
    enum al_up_h1_ev type;
    int status;
    const al_header *headers; /* valid until the next call */
    size_t count;
    const char *data;
    size_t len;
    enum al_up_h1_err err;
    const char *detail; /* static text */
} al_up_h1_event;

enum al_up_h1_body {
    AL_UP_H1_BODY_NONE,
    AL_UP_H1_BODY_LENGTH,
    AL_UP_H1_BODY_CHUNKED,
    AL_UP_H1_BODY_CLOSE
};

typedef struct al_up_h1_resp {
    int head_request; /* the request was HEAD: no body whatever the head says */
    int state;        /* internal */
    enum al_up_h1_body body;
    uint64_t left;  /* LENGTH: bytes still to come */
    int keep_alive; /* the head allows reusing the connection (HTTP/1.1 without
                       "Connection: close", a length-framed body) */
    int status;
    al_buf head; /* the head's bytes, then the trailers' (bounded) */
    al_header hdrs[AL_UP_H1_MAX_HEADERS];
    size_t count;
    http_parser hp; /* the chunked body */
    const char *ev_data;
    size_t ev_len;
    int ev;        /* the event a parser callback produced */
    size_t tr_off; /* trailers: where the current field starts in head */
    int tr_in_value;
} al_up_h1_resp;

/* Ready for one response; head_request: the request was HEAD. Keeps the memory of
 * an earlier use. */
void al_up_h1_resp_init(al_up_h1_resp *p, int head_request);
void al_up_h1_resp_free(al_up_h1_resp *p);
/* One event from data[0..len); *used: the bytes consumed (BODY's data is among them). */
void al_up_h1_resp_next(al_up_h1_resp *p, const char *data, size_t len, size_t *used,
                        al_up_h1_event *ev);
/* The upstream closed its side: DONE for a close-delimited body, else ERROR
 * (truncated). */
void al_up_h1_resp_eof(al_up_h1_resp *p, al_up_h1_event *ev);
/* 1 once the response began (a status line byte was consumed): a connection that
 * dies after that did process the request. */
int al_up_h1_resp_started(const al_up_h1_resp *p);

/* A head's body framing, once found unambiguous. */
typedef struct al_up_framing {
    int chunked;      /* Transfer-Encoding: chunked */
    int has_length;   /* a Content-Length */
    uint64_t length;  /* its value */
    const char *text; /* its first element as written (trimmed): what the agent is told */
    size_t text_len;
} al_up_framing;

/* Why a head's framing is ambiguous (NULL if it is not): the rules above, over
 * h[0..n); h2: Transfer-Encoding is never allowed. Else *f says how the body is
 * framed. Shared with the libcurl engine. */
const char *al_up_framing_problem(const al_header *h, size_t n, int h2, al_up_framing *f);

#endif
