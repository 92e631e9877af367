/* al_h1: HTTP/1.1 request parsing without I/O (see al_h1.h).
 *
 * Invariant: a head is only handed to http_parser after al_h1_head_scan accepted
 * every byte of it, and http_parser sees the head in one call, so each header name
 * and value arrives as one contiguous slice of the caller's buffer (no copies).
 * Body decoding runs http_parser on the following bytes and pauses it at the end of
 * the message, so bytes of a pipelined next request are never consumed. */
#include "al_h1.h"
#include "al_errors.h"

#include <string.h>
#include <strings.h>

static void set_err(al_h1_error *err, enum al_refusal ref, const char *reason)
{
    if (err) {
        err->ref = ref;
        err->status = al_refusal(ref)->status;
        err->code = al_refusal(ref)->code;
        err->reason = reason;
    }
}

size_t al_h1_skip_empty_lines(const char *buf, size_t len)
{
    size_t i = 0;
    while (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
        i += 2;
    return i;
}

long al_h1_head_scan(const char *buf, size_t len, size_t limit, al_h1_error *err)
{
    size_t line_start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (i >= limit) {
            set_err(err, AL_REF_HEADER_TOO_LARGE,
                    "the request head is larger than limits.max_header_bytes");
            return -1;
        }
        if (c == '\n') {
            if (i == 0 || buf[i - 1] != '\r') {
                set_err(err, AL_REF_BAD_REQUEST, "bare LF line ending in the request head");
                return -1;
            }
            if (i - line_start == 1) /* an empty line: the end of the head */
                return (long)(i + 1);
            line_start = i + 1;
            if (line_start < len && (buf[line_start] == ' ' || buf[line_start] == '\t')) {
                set_err(err, AL_REF_BAD_REQUEST, "obsolete line folding in the request head");
                return -1;
            }
        } else if (c == '\r') {
            if (i + 1 < len && buf[i + 1] != '\n') {
                set_err(err, AL_REF_BAD_REQUEST, "CR not followed by LF in the request head");
                return -1;
            }
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            set_err(err, AL_REF_BAD_REQUEST, "control byte in the request head");
            return -1;
        }
    }
    if (len >= limit) {
        set_err(err, AL_REF_HEADER_TOO_LARGE,
                "the request head is larger than limits.max_header_bytes");
        return -1;
    }
    return 0;
}

int al_h1_slice_is(const char *buf, al_h1_slice s, const char *lower_name)
{
    size_t n = strlen(lower_name);
    return s.len == n && strncasecmp(buf + s.off, lower_name, n) == 0;
}

static al_h1_parser *parser_of(http_parser *hp)
{
    return (al_h1_parser *)((char *)hp - offsetof(al_h1_parser, hp));
}

static int on_url(http_parser *hp, const char *at, size_t len)
{
    al_h1_parser *p = parser_of(hp);
    if (p->head.url.len == 0)
        p->head.url.off = (uint32_t)(at - p->head.buf);
    p->head.url.len += (uint32_t)len;
    return 0;
}

static int on_field(http_parser *hp, const char *at, size_t len)
{
    al_h1_parser *p = parser_of(hp);
    if (p->field_state != 1) {
        if (p->head.field_count >= AL_H1_MAX_HEADERS) {
            p->cb_failed = 431;
            return 1;
        }
        al_h1_field *f = &p->head.fields[p->head.field_count++];
        f->name.off = (uint32_t)(at - p->head.buf);
        f->name.len = 0;
        f->value.off = 0;
        f->value.len = 0;
        p->field_state = 1;
    }
    p->head.fields[p->head.field_count - 1].name.len += (uint32_t)len;
    return 0;
}

static int on_value(http_parser *hp, const char *at, size_t len)
{
    al_h1_parser *p = parser_of(hp);
    al_h1_field *f = &p->head.fields[p->head.field_count - 1];
    if (p->field_state != 2) {
        f->value.off = (uint32_t)(at - p->head.buf);
        p->field_state = 2;
    }
    f->value.len += (uint32_t)len;
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    al_h1_parser *p = parser_of(hp);
    p->head_done = 1;
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    al_h1_parser *p = parser_of(hp);
    if (p->on_body && p->on_body(p->arg, at, len) != 0) {
        p->cb_failed = 500;
        return 1;
    }
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    al_h1_parser *p = parser_of(hp);
    p->message_done = 1;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static int trimmed_is(const char *s, size_t n, const char *word)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n == strlen(word) && strncasecmp(s, word, n) == 0;
}

/* RFC 9110 token: "Host :" (space before the colon) is not one, and must be refused. */
static int is_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c)) ||
            c == 0)
            return 0;
    }
    return 1;
}

/* RFC 9112 3.2 / RFC 3986 3.2.2: a Host value is uri-host [":" port] — reg-name,
 * IPv4 or [IPv6] characters only, never empty (http and https URIs have an
 * authority). Surrounding blanks (OWS) are allowed. */
static int host_value_ok(const char *v, size_t n)
{
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("-._~%!$&'()*+,;=:[]", c))))
            return 0;
    }
    return 1;
}

/* The smuggling rules http_parser does not enforce by itself. */
static int check_framing(al_h1_parser *p, al_h1_error *err)
{
    al_h1_head *h = &p->head;
    int cl = 0, te = 0;
    h->content_length = -1;
    for (size_t i = 0; i < h->field_count; i++) {
        const al_h1_field *f = &h->fields[i];
        const char *v = h->buf + f->value.off;
        if (!is_token(h->buf + f->name.off, f->name.len)) {
            set_err(err, AL_REF_BAD_REQUEST, "invalid header field name");
            return -1;
        }
        if (al_h1_slice_is(h->buf, f->name, "content-length")) {
            if (++cl > 1) {
                set_err(err, AL_REF_BAD_REQUEST, "more than one Content-Length header");
                return -1;
            }
            int64_t n = 0;
            size_t digits = 0;
            for (uint32_t k = 0; k < f->value.len; k++) {
                char c = v[k];
                if (c == ' ' || c == '\t')
                    continue;
                if (c < '0' || c > '9' || n > (INT64_MAX - 9) / 10) {
                    set_err(err, AL_REF_BAD_REQUEST, "invalid Content-Length");
                    return -1;
                }
                n = n * 10 + (c - '0');
                digits++;
            }
            if (!digits) {
                set_err(err, AL_REF_BAD_REQUEST, "invalid Content-Length");
                return -1;
            }
            h->content_length = n;
        } else if (al_h1_slice_is(h->buf, f->name, "transfer-encoding")) {
            if (++te > 1 || !trimmed_is(v, f->value.len, "chunked")) {
                set_err(err, AL_REF_BAD_REQUEST,
                        "Transfer-Encoding other than a single \"chunked\" is not accepted");
                return -1;
            }
            h->chunked = 1;
        } else if (al_h1_slice_is(h->buf, f->name, "host")) {
            /* Two Hosts are two answers to "which server": peers may pick differently. */
            if (++h->host_count > 1) {
                set_err(err, AL_REF_BAD_REQUEST, "more than one Host header");
                return -1;
            }
            if (!host_value_ok(v, f->value.len)) {
                set_err(err, AL_REF_BAD_REQUEST, "invalid Host header value");
                return -1;
            }
        } else if (al_h1_slice_is(h->buf, f->name, "expect")) {
            h->expect_continue = trimmed_is(v, f->value.len, "100-continue");
        }
    }
    if (cl && te) {
        set_err(err, AL_REF_BAD_REQUEST, "both Content-Length and Transfer-Encoding");
        return -1;
    }
    return 0;
}

int al_h1_parse_head(al_h1_parser *p, const char *buf, size_t head_len, al_h1_body_cb cb, void *arg,
                     al_h1_error *err)
{
    memset(p, 0, sizeof *p);
    http_parser_init(&p->hp, HTTP_REQUEST);
    p->on_body = cb;
    p->arg = arg;
    p->head.buf = buf;
    p->head.content_length = -1;
    size_t n = http_parser_execute(&p->hp, &settings, buf, head_len);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (p->cb_failed == 431) {
        set_err(err, AL_REF_HEADER_TOO_LARGE, "too many header fields");
        return -1;
    }
    if ((e != HPE_OK && e != HPE_PAUSED) || !p->head_done || n != head_len) {
        set_err(err, AL_REF_BAD_REQUEST, http_errno_description(e));
        return -1;
    }
    if (p->hp.http_major != 1 || p->hp.http_minor > 1) {
        set_err(err, AL_REF_BAD_REQUEST, "only HTTP/1.0 and HTTP/1.1 are accepted");
        return -1;
    }
    if (check_framing(p, err) != 0)
        return -1;
    p->head.method = http_method_str((enum http_method)p->hp.method);
    p->head.is_connect = p->hp.method == HTTP_CONNECT;
    p->head.http_minor = p->hp.http_minor;
    p->head.keep_alive = http_should_keep_alive(&p->hp);
    if (p->head.url.len == 0) {
        set_err(err, AL_REF_BAD_REQUEST, "empty request target");
        return -1;
    }
    /* http_parser resumes with the body on the next execute. */
    if (HTTP_PARSER_ERRNO(&p->hp) == HPE_PAUSED && !p->message_done)
        http_parser_pause(&p->hp, 0);
    return 0;
}

long al_h1_feed_body(al_h1_parser *p, const char *data, size_t len, al_h1_error *err)
{
    if (p->message_done || len == 0)
        return 0;
    size_t n = http_parser_execute(&p->hp, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (e != HPE_OK && !(e == HPE_PAUSED && p->message_done)) {
        set_err(err, AL_REF_BAD_REQUEST,
                p->cb_failed ? "request body could not be taken" : http_errno_description(e));
        return -1;
    }
    return (long)n;
}
