/* al_up_h1: the HTTP/1.1 client codec (see al_up_h1.h).
 *
 * The response head is parsed here rather than by http_parser: http_parser 2.9
 * refuses a repeated identical Content-Length ("2, 2", or the header twice), which
 * RFC 9110 section 8.6 makes one length and airlock's tests accept, and it takes
 * "Transfer-Encoding: gzip, chunked" as chunked. The rules below decide instead, and
 * the chunked body (sizes, extensions, trailers) goes to an http_parser that was told
 * "Transfer-Encoding: chunked" in a head of its own. */
#include "al_up_h1.h"
#include "common/al_err.h"
#include "common/al_fmt.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

enum { ST_HEAD, ST_LENGTH, ST_CHUNKED, ST_CLOSE, ST_NONE, ST_DONE_PENDING, ST_DONE, ST_ERROR };

/* ---- request ------------------------------------------------------------------ */

/* tchar (RFC 9110 section 5.6.2): a table, as this runs for every byte of every
 * header name sent and received (a switch cost ~5 instructions a byte). */
static const unsigned char TCHAR[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* controls */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, /* SP ! " # $ % & ' ( ) * + , - . / */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, /* 0-9 : ; < = > ? */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* @ A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, /* P-Z [ \ ] ^ _ */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* ` a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0, /* p-z { | } ~ DEL */
    /* 0x80-0xff: none */
};

static int name_ok(const char *s, size_t n)
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!TCHAR[(unsigned char)s[i]])
            return 0;
    return 1;
}

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* A header value sent: no CR, LF or NUL (they would end the line or the head). Eight
 * bytes at a time (the tail as the last eight, overlapping); a word holding any byte
 * below 0x0e is looked at byte by byte. */
static int value_ok(const char *s, size_t n)
{
    size_t i = 0;
    if (n >= 8) {
        uint64_t x;
        for (; i + 8 <= n; i += 8) {
            memcpy(&x, s + i, 8);
            if ((x - ONES * 0x0e) & ~x & HIGHS)
                goto bytes;
        }
        memcpy(&x, s + n - 8, 8);
        if (i == n || !((x - ONES * 0x0e) & ~x & HIGHS))
            return 1;
    }
bytes:
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == '\0')
            return 0;
    }
    return 1;
}

/* The request side drops what framing and routing own, and the hop-by-hop headers
 * (TE: trailers excepted: it says the agent takes trailers). */
static int request_drops(const al_header *h)
{
    if (al_http_name_is(h->name, h->name_len, "host") ||
        al_http_name_is(h->name, h->name_len, "content-length"))
        return 1;
    if (al_http_name_is(h->name, h->name_len, "te"))
        return !(h->value_len == 8 && strncasecmp(h->value, "trailers", 8) == 0);
    return al_http_hop_by_hop(h->name, h->name_len);
}

/* Appends n bytes at *w (room reserved by the caller). */
static inline void put(char **w, const char *s, size_t n)
{
    memcpy(*w, s, n);
    *w += n;
}

/* Two passes: the checks and the length, then one reservation and plain copies
 * (appending piece by piece cost ~24 bounds checks and, from an empty buffer, four
 * allocations per head). */
int al_up_h1_write_head(al_buf *out, const al_up_h1_req *q)
{
    size_t ml = strlen(q->method), pl = strlen(q->path), hl = strlen(q->host);
    if (!name_ok(q->method, ml) || pl == 0 || hl == 0)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < pl; i++) /* the request line: no space, no control byte */
        if ((unsigned char)q->path[i] <= ' ' || (unsigned char)q->path[i] >= 0x7f)
            return AL_ERR_INVAL;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)q->host[i] <= ' ' || (unsigned char)q->host[i] >= 0x7f ||
            q->host[i] == '/' || q->host[i] == '@')
            return AL_ERR_INVAL;
    int v6 = memchr(q->host, ':', hl) != NULL;
    char port[1 + AL_FMT_U64_MAX] = ":";
    size_t portl = q->port != (q->https ? 443 : 80) ? 1 + al_fmt_u64(port + 1, q->port) : 0;
    char cl[AL_FMT_U64_MAX];
    size_t cll = 0;
    if (!(q->has_body && q->body_length < 0) && (q->has_body || q->force_length))
        cll = al_fmt_u64(cl, q->has_body ? (uint64_t)q->body_length : 0);
    /* "M P HTTP/1.1\r\nHost: [h]:port\r\n" ... "\r\n"; every length below is bounded by
     * the caller's own buffers, so the sum cannot wrap */
    size_t total = ml + 1 + pl + 17 + hl + 2 * (size_t)v6 + portl + 2;
    uint64_t kept = 0; /* the first 64 headers' request_drops, not asked twice */
    for (size_t i = 0; i < q->header_count; i++) {
        const al_header *h = &q->headers[i];
        if (!name_ok(h->name, h->name_len) || !value_ok(h->value, h->value_len))
            return AL_ERR_INVAL;
        if (request_drops(h))
            continue;
        total += h->name_len + 2 + h->value_len + 2;
        if (i < 64)
            kept |= (uint64_t)1 << i;
    }
    if (q->has_body && q->body_length < 0)
        total += 28;
    else if (cll)
        total += 16 + cll + 2;
    total += 2;
    int rc = al_buf_reserve(out, total);
    if (rc != AL_OK)
        return rc;
    char *w = out->data + out->len;
    put(&w, q->method, ml);
    put(&w, " ", 1);
    put(&w, q->path, pl);
    put(&w, " HTTP/1.1\r\nHost: ", 17);
    if (v6)
        put(&w, "[", 1);
    put(&w, q->host, hl);
    if (v6)
        put(&w, "]", 1);
    put(&w, port, portl);
    put(&w, "\r\n", 2);
    for (size_t i = 0; i < q->header_count; i++) {
        const al_header *h = &q->headers[i];
        if (i < 64 ? !(kept >> i & 1) : request_drops(h))
            continue;
        put(&w, h->name, h->name_len);
        put(&w, ": ", 2);
        put(&w, h->value, h->value_len);
        put(&w, "\r\n", 2);
    }
    if (q->has_body && q->body_length < 0) {
        put(&w, "Transfer-Encoding: chunked\r\n", 28);
    } else if (cll) {
        put(&w, "Content-Length: ", 16);
        put(&w, cl, cll);
        put(&w, "\r\n", 2);
    }
    put(&w, "\r\n", 2);
    out->len += total;
    out->data[out->len] = '\0';
    return AL_OK;
}

size_t al_up_h1_chunk_head(char *out, size_t n)
{
    return (size_t)snprintf(out, 20, "%zx\r\n", n);
}

/* ---- framing ------------------------------------------------------------------- */

/* The elements of a comma-separated header value, OWS trimmed: *s..*e on each
 * call, 0 when there are no more. */
static int list_next(const char **p, const char *end, const char **s, const char **e)
{
    while (*p < end && (**p == ',' || **p == ' ' || **p == '\t'))
        (*p)++;
    if (*p >= end)
        return 0;
    *s = *p;
    while (*p < end && **p != ',')
        (*p)++;
    *e = *p;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
        (*e)--;
    return 1;
}

/* airlock frames the agent's response from what it was told here, so an upstream
 * that says two things could make the agent read the tail of this body as the answer
 * to its next request on a kept-alive connection. */
const char *al_up_framing_problem(const al_header *h, size_t n, int h2, al_up_framing *f)
{
    const char *len = NULL;
    size_t len_n = 0, te_elems = 0;
    int te_chunked = 0;
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < n; i++) {
        const al_header *ent = &h[i];
        const char *p = ent->value, *end = p + ent->value_len, *s, *e;
        if (al_http_name_is(ent->name, ent->name_len, "content-length")) {
            int any = 0;
            while (list_next(&p, end, &s, &e)) {
                size_t k = (size_t)(e - s);
                any = 1;
                if (k == 0 || k > 18)
                    return "invalid Content-Length";
                for (const char *d = s; d < e; d++)
                    if (*d < '0' || *d > '9')
                        return "invalid Content-Length";
                if (!f->text) {
                    f->text = s;
                    f->text_len = k;
                }
                /* leading zeros would make "02" and "2" differ as text: compare values */
                while (k > 1 && *s == '0')
                    s++, k--;
                if (len && (k != len_n || memcmp(s, len, k) != 0))
                    return "conflicting Content-Length values";
                len = s;
                len_n = k;
            }
            if (!any)
                return "invalid Content-Length";
        } else if (al_http_name_is(ent->name, ent->name_len, "transfer-encoding")) {
            if (h2)
                return "Transfer-Encoding in an HTTP/2 response";
            while (list_next(&p, end, &s, &e)) {
                te_elems++;
                te_chunked = (size_t)(e - s) == 7 && strncasecmp(s, "chunked", 7) == 0;
            }
            if (!te_elems || !te_chunked)
                return "a Transfer-Encoding other than chunked";
        }
    }
    if (te_elems && (te_elems != 1 || !te_chunked))
        return "a Transfer-Encoding other than chunked";
    if (te_elems && len)
        return "both Content-Length and Transfer-Encoding";
    f->chunked = te_elems != 0;
    f->has_length = len != NULL;
    for (size_t i = 0; i < len_n; i++)
        f->length = f->length * 10 + (uint64_t)(len[i] - '0');
    return NULL;
}

/* ---- response -------------------------------------------------------------------- */

void al_up_h1_resp_init(al_up_h1_resp *p, int head_request)
{
    al_buf keep = p->head;
    int had = keep.data != NULL;
    memset(p, 0, offsetof(al_up_h1_resp, hdrs));
    if (had) {
        p->head = keep;
        al_buf_reset(&p->head);
    } else {
        al_buf_init(&p->head, AL_UP_H1_MAX_HEAD);
    }
    p->count = 0;
    p->head_request = head_request;
    p->state = ST_HEAD;
}

void al_up_h1_resp_free(al_up_h1_resp *p)
{
    al_buf_free(&p->head, 0);
}

int al_up_h1_resp_started(const al_up_h1_resp *p)
{
    return p->state != ST_HEAD || p->head.len > 0 || p->status;
}

static void fail(al_up_h1_resp *p, al_up_h1_event *ev, enum al_up_h1_err err, const char *why)
{
    p->state = ST_ERROR;
    p->keep_alive = 0;
    ev->type = AL_UP_H1_ERROR;
    ev->err = err;
    ev->detail = why;
}

/* conn[0..nconn): the indices of the head's Connection headers (the names they list
 * are hop-by-hop too). */
static int response_drops(const al_up_h1_resp *p, const al_header *h, const unsigned char *conn,
                          size_t nconn)
{
    if (al_http_hop_by_hop(h->name, h->name_len) ||
        al_http_name_is(h->name, h->name_len, "proxy-authenticate"))
        return 1;
    for (size_t j = 0; j < nconn; j++)
        if (al_http_connection_lists(p->hdrs[conn[j]].value, p->hdrs[conn[j]].value_len, h->name,
                                     h->name_len))
            return 1;
    return 0;
}

/* Drops what never crosses a proxy from p->hdrs (decided over the whole list first:
 * a Connection header names others) and keeps one Content-Length, valued cl. The
 * count kept. */
static size_t compact(al_up_h1_resp *p, const char *cl, size_t cl_len)
{
    unsigned char drop[AL_UP_H1_MAX_HEADERS], conn[AL_UP_H1_MAX_HEADERS];
    size_t nconn = 0;
    for (size_t i = 0; i < p->count; i++) /* (found once, not once per header) */
        if (al_http_name_is(p->hdrs[i].name, p->hdrs[i].name_len, "connection"))
            conn[nconn++] = (unsigned char)i;
    for (size_t i = 0; i < p->count; i++)
        drop[i] = (unsigned char)response_drops(p, &p->hdrs[i], conn, nconn);
    size_t k = 0;
    int cl_done = 0;
    for (size_t i = 0; i < p->count; i++) {
        al_header h = p->hdrs[i];
        if (drop[i])
            continue;
        if (al_http_name_is(h.name, h.name_len, "content-length")) {
            if (cl_done || !cl)
                continue;
            cl_done = 1;
            h.value = cl;
            h.value_len = cl_len;
        }
        p->hdrs[k++] = h;
    }
    return k;
}

/* Splits the head in p->head into the status and header slices. NULL or why not. */
static const char *split_head(al_up_h1_resp *p, int *minor)
{
    char *s = p->head.data, *end = s + p->head.len;
    /* obs-fold: a line starting with SP/HTAB continues the previous value; its
     * line break becomes spaces so the value stays one slice */
    char *first_nl = memchr(s, '\n', p->head.len);
    if (!first_nl)
        return "malformed response head";
    for (char *c = first_nl + 1; c + 1 < end && (c = memchr(c, '\n', (size_t)(end - 1 - c)));
         c++)
        if (c[1] == ' ' || c[1] == '\t') {
            if (c == first_nl)
                return "malformed response head";
            if (c[-1] == '\r')
                c[-1] = ' ';
            *c = ' ';
        }
    if (first_nl + 1 < end && (first_nl[1] == ' ' || first_nl[1] == '\t'))
        return "malformed response head";
    /* status line: HTTP/1.x SP 3DIGIT [SP reason] */
    size_t l1 = (size_t)(first_nl - s);
    if (l1 && s[l1 - 1] == '\r')
        l1--;
    if (l1 < 12 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ')
        return "malformed response status line";
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9')
            return "malformed response status line";
        st = st * 10 + (s[i] - '0');
    }
    if (st < 100 || (l1 > 12 && s[12] != ' '))
        return "malformed response status line";
    for (size_t i = 12; i < l1; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < ' ' && c != '\t') || c == 0x7f)
            return "malformed response status line";
    }
    p->status = st;
    *minor = s[7] - '0';
    p->count = 0;
    for (char *line = first_nl + 1; line < end;) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            return "malformed response head";
        char *le = nl;
        if (le > line && le[-1] == '\r')
            le--;
        if (le == line)
            break; /* the empty line */
        char *colon = memchr(line, ':', (size_t)(le - line));
        if (!colon || !name_ok(line, (size_t)(colon - line)))
            return "malformed response header";
        char *v = colon + 1, *ve = le;
        if (!al_http_field_value_ok(v, (size_t)(ve - v)))
            return "malformed response header";
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (p->count == AL_UP_H1_MAX_HEADERS)
            return "response head too large (too many header lines)";
        p->hdrs[p->count++] = (al_header){line, (size_t)(colon - line), v, (size_t)(ve - v)};
        line = nl + 1;
    }
    return NULL;
}

/* The head is complete in p->head: decide the body and produce the event. */
static void finish_head(al_up_h1_resp *p, al_up_h1_event *ev);

static int hp_body(http_parser *hp, const char *at, size_t len)
{
    al_up_h1_resp *p = hp->data;
    p->ev = AL_UP_H1_BODY;
    p->ev_data = at;
    p->ev_len = len;
    http_parser_pause(hp, 1);
    return 0;
}

/* Trailers arrive as field/value pieces (split wherever a read ended); each piece
 * is appended to p->head and the slices are set once the message completes. */
static int hp_field(http_parser *hp, const char *at, size_t len)
{
    al_up_h1_resp *p = hp->data;
    if (p->tr_in_value || p->count == 0) {
        if (p->count == AL_UP_H1_MAX_HEADERS)
            return 1;
        p->hdrs[p->count++] = (al_header){NULL, 0, NULL, 0};
        p->hdrs[p->count - 1].name = (const char *)(uintptr_t)p->head.len;
        p->tr_in_value = 0;
    }
    if (al_buf_append(&p->head, at, len))
        return 1;
    p->hdrs[p->count - 1].name_len += len;
    return 0;
}

static int hp_value(http_parser *hp, const char *at, size_t len)
{
    al_up_h1_resp *p = hp->data;
    if (!p->count)
        return 1;
    al_header *h = &p->hdrs[p->count - 1];
    if (!p->tr_in_value) {
        p->tr_in_value = 1;
        h->value = (const char *)(uintptr_t)p->head.len;
    }
    if (al_buf_append(&p->head, at, len))
        return 1;
    h->value_len += len;
    return 0;
}

static int hp_complete(http_parser *hp)
{
    al_up_h1_resp *p = hp->data;
    p->ev = AL_UP_H1_DONE;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings hp_settings = {
    .on_body = hp_body,
    .on_header_field = hp_field,
    .on_header_value = hp_value,
    .on_message_complete = hp_complete,
};

/* The trailers collected as offsets into p->head, made slices (hop-by-hop dropped). */
static void trailers_event(al_up_h1_resp *p, al_up_h1_event *ev)
{
    size_t k = 0;
    for (size_t i = 0; i < p->count; i++) {
        al_header h = p->hdrs[i];
        h.name = p->head.data + (uintptr_t)h.name;
        h.value = h.value ? p->head.data + (uintptr_t)h.value : "";
        while (h.value_len && (h.value[h.value_len - 1] == ' ' || h.value[h.value_len - 1] == '\t'))
            h.value_len--;
        if (!name_ok(h.name, h.name_len) || al_http_hop_by_hop(h.name, h.name_len) ||
            al_http_name_is(h.name, h.name_len, "content-length"))
            continue;
        p->hdrs[k++] = h;
    }
    p->count = k;
    ev->type = AL_UP_H1_TRAILERS;
    ev->headers = p->hdrs;
    ev->count = k;
}

static void finish_head(al_up_h1_resp *p, al_up_h1_event *ev)
{
    int minor = 1;
    const char *why = split_head(p, &minor);
    if (why) {
        fail(p, ev, AL_UP_H1_MALFORMED, why);
        return;
    }
    int close = 0, ka = 0;
    for (size_t i = 0; i < p->count; i++)
        if (al_http_name_is(p->hdrs[i].name, p->hdrs[i].name_len, "connection")) {
            close |= al_http_connection_lists(p->hdrs[i].value, p->hdrs[i].value_len, "close", 5);
            ka |=
                al_http_connection_lists(p->hdrs[i].value, p->hdrs[i].value_len, "keep-alive", 10);
        }
    if (p->status < 200) {
        if (p->status == 101) {
            fail(p, ev, AL_UP_H1_MALFORMED, "101 Switching Protocols was not asked for");
            return;
        }
        size_t k = compact(p, NULL, 0);
        ev->type = AL_UP_H1_INTERIM;
        ev->status = p->status;
        ev->headers = p->hdrs;
        ev->count = k;
        p->status = 0;
        p->tr_in_value = 1; /* the next call starts the next head afresh */
        return;
    }
    al_up_framing f;
    why = al_up_framing_problem(p->hdrs, p->count, 0, &f);
    if (why) {
        fail(p, ev, AL_UP_H1_BAD_FRAMING, why);
        return;
    }
    p->keep_alive = minor == 1 ? !close : (ka && !close);
    if (p->head_request || p->status == 204 || p->status == 304) {
        p->state = ST_NONE;
    } else if (f.chunked) {
        p->state = ST_CHUNKED;
        http_parser_init(&p->hp, HTTP_RESPONSE);
        p->hp.data = p;
        static const char fake[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        static const http_parser_settings none;
        size_t n = http_parser_execute(&p->hp, &none, fake, sizeof fake - 1);
        if (n != sizeof fake - 1 || HTTP_PARSER_ERRNO(&p->hp) != HPE_OK) {
            fail(p, ev, AL_UP_H1_MALFORMED, "chunked decoder failed");
            return;
        }
    } else if (f.has_length) {
        p->state = f.length ? ST_LENGTH : ST_NONE;
        p->left = f.length;
    } else {
        p->state = ST_CLOSE; /* the body ends when the upstream closes */
        p->keep_alive = 0;
    }
    p->body = p->state == ST_CHUNKED  ? AL_UP_H1_BODY_CHUNKED
              : p->state == ST_CLOSE  ? AL_UP_H1_BODY_CLOSE
              : p->state == ST_LENGTH ? AL_UP_H1_BODY_LENGTH
                                      : AL_UP_H1_BODY_NONE;
    /* what the agent sees: no hop-by-hop, one Content-Length with one value */
    size_t k = compact(p, f.text, f.text_len);
    ev->type = AL_UP_H1_HEAD;
    ev->status = p->status;
    ev->headers = p->hdrs;
    ev->count = k;
    p->count = 0;
    p->tr_in_value = 0;
}

/* Appends head bytes up to the end of the head. */
static void head_bytes(al_up_h1_resp *p, const char *data, size_t len, size_t *used,
                       al_up_h1_event *ev)
{
    if (p->tr_in_value) { /* after an interim head: a new head */
        al_buf_reset(&p->head);
        p->tr_in_value = 0;
    }
    size_t old = p->head.len;
    /* the terminator may straddle the earlier bytes: look from 3 before */
    size_t from = old > 3 ? old - 3 : 0;
    size_t room = AL_UP_H1_MAX_HEAD - old;
    size_t take = len < room ? len : room;
    if (al_buf_append(&p->head, data, take)) {
        fail(p, ev, AL_UP_H1_MALFORMED, "response head too large");
        return;
    }
    const char *s = p->head.data;
    size_t n = p->head.len;
    for (size_t i = from; i < n; i++) {
        const char *nl = memchr(s + i, '\n', n - i);
        if (!nl)
            break;
        i = (size_t)(nl - s);
        /* end: "\n\n" or "\n\r\n" */
        if ((i >= 1 && s[i - 1] == '\n') || (i >= 2 && s[i - 1] == '\r' && s[i - 2] == '\n')) {
            if (i < old) /* cannot happen: an earlier call would have ended there */
                continue;
            *used = i + 1 - old;
            p->head.len = i + 1;
            finish_head(p, ev);
            return;
        }
    }
    if (n >= AL_UP_H1_MAX_HEAD) {
        fail(p, ev, AL_UP_H1_MALFORMED, "response head too large");
        return;
    }
    if (memcmp(s, "HTTP/", n < 5 ? n : 5) != 0) {
        fail(p, ev, AL_UP_H1_MALFORMED, "malformed response status line");
        return;
    }
    *used = take;
    ev->type = AL_UP_H1_NEED_MORE;
}

void al_up_h1_resp_next(al_up_h1_resp *p, const char *data, size_t len, size_t *used,
                        al_up_h1_event *ev)
{
    memset(ev, 0, sizeof *ev);
    *used = 0;
    switch (p->state) {
    case ST_ERROR:
        ev->type = AL_UP_H1_ERROR;
        ev->err = AL_UP_H1_MALFORMED;
        ev->detail = "the response failed earlier";
        return;
    case ST_DONE:
    case ST_DONE_PENDING:
    case ST_NONE:
        p->state = ST_DONE;
        ev->type = AL_UP_H1_DONE;
        return;
    case ST_HEAD:
        if (!len) {
            ev->type = AL_UP_H1_NEED_MORE;
            return;
        }
        head_bytes(p, data, len, used, ev);
        return;
    case ST_LENGTH: {
        if (!len) {
            ev->type = AL_UP_H1_NEED_MORE;
            return;
        }
        size_t n = len < p->left ? len : (size_t)p->left;
        p->left -= n;
        if (!p->left)
            p->state = ST_DONE_PENDING;
        *used = n;
        ev->type = AL_UP_H1_BODY;
        ev->data = data;
        ev->len = n;
        return;
    }
    case ST_CLOSE:
        *used = len;
        ev->type = len ? AL_UP_H1_BODY : AL_UP_H1_NEED_MORE;
        ev->data = data;
        ev->len = len;
        return;
    case ST_CHUNKED: {
        if (!len) {
            ev->type = AL_UP_H1_NEED_MORE;
            return;
        }
        if (HTTP_PARSER_ERRNO(&p->hp) == HPE_PAUSED)
            http_parser_pause(&p->hp, 0);
        p->ev = AL_UP_H1_NEED_MORE;
        size_t n = http_parser_execute(&p->hp, &hp_settings, data, len);
        enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
        *used = n;
        if (e != HPE_OK && e != HPE_PAUSED) {
            fail(p, ev, AL_UP_H1_MALFORMED,
                 e == HPE_CB_header_field || e == HPE_CB_header_value
                     ? "response trailers too large"
                     : "malformed chunked response body");
            return;
        }
        if (p->ev == AL_UP_H1_BODY) {
            ev->type = AL_UP_H1_BODY;
            ev->data = p->ev_data;
            ev->len = p->ev_len;
        } else if (p->ev == AL_UP_H1_DONE) {
            p->state = ST_DONE;
            if (p->count) {
                p->state = ST_DONE_PENDING;
                trailers_event(p, ev);
            } else {
                ev->type = AL_UP_H1_DONE;
            }
        } else {
            ev->type = AL_UP_H1_NEED_MORE;
        }
        return;
    }
    }
    fail(p, ev, AL_UP_H1_MALFORMED, "bad parser state");
}

void al_up_h1_resp_eof(al_up_h1_resp *p, al_up_h1_event *ev)
{
    memset(ev, 0, sizeof *ev);
    if (p->state == ST_CLOSE || p->state == ST_DONE || p->state == ST_DONE_PENDING ||
        p->state == ST_NONE) {
        p->state = ST_DONE;
        p->keep_alive = 0;
        ev->type = AL_UP_H1_DONE;
        return;
    }
    fail(p, ev, AL_UP_H1_MALFORMED,
         p->state == ST_HEAD ? "upstream closed before a complete response head"
                             : "upstream closed before the end of the response body");
}
