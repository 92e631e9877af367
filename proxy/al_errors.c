/* al_errors: JSON refusal bodies and reason phrases (see al_errors.h).
 * Bodies are bounded (al_buf with a 4 KiB limit set by the caller); a message that
 * would not fit is truncated by vsnprintf into a stack buffer first. */
#include "al_errors.h"
#include "common/al_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int al_json_escape_append(al_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = AL_OK;
    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = al_buf_append(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rc = al_buf_append(b, e, 6);
        } else {
            rc = al_buf_append(b, &s[i], 1);
        }
    }
    return rc;
}

int al_error_json(al_buf *b, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return AL_ERR_INVAL;
    if ((size_t)n >= sizeof msg)
        n = (int)sizeof msg - 1;
    al_buf_reset(b);
    int rc = al_buf_append(b, "{\"error\":\"", 10);
    if (!rc)
        rc = al_json_escape_append(b, code, strlen(code));
    if (!rc)
        rc = al_buf_append(b, "\",\"message\":\"", 13);
    if (!rc)
        rc = al_json_escape_append(b, msg, (size_t)n);
    if (!rc)
        rc = al_buf_append(b, "\"}\n", 3);
    return rc;
}

static const al_refusal_info refusals[AL_REF_COUNT] = {
#define AL_REFUSAL_ROW(name, st, c, ps, by) [AL_REF_##name] = {st, c, ps, by},
    AL_REFUSALS(AL_REFUSAL_ROW)
#undef AL_REFUSAL_ROW
};

const al_refusal_info *al_refusal(enum al_refusal r)
{
    return (unsigned)r < AL_REF_COUNT ? &refusals[r] : &refusals[AL_REF_INTERNAL_ERROR];
}

enum al_refusal al_refusal_by_code(const char *code)
{
    for (size_t i = 0; code && i < AL_REF_COUNT; i++)
        if (strcmp(code, refusals[i].code) == 0)
            return (enum al_refusal)i;
    return AL_REF_COUNT;
}

/* airlock's refusal codes -> RFC 9209 Proxy-Status error types (section 2.3). */
const char *al_proxy_status_error(const char *code, int status)
{
    enum al_refusal r = al_refusal_by_code(code);
    if (r != AL_REF_COUNT)
        return refusals[r].proxy_status;
    return status >= 500 ? "proxy_internal_error" : "http_request_denied";
}

/* An sf-string holds printable ASCII only: other bytes become '?', '"' and '\\' are
 * escaped, so nothing an agent sent can end the header or the parameter. */
static int sf_string_append(al_buf *b, const char *s, size_t max)
{
    int rc = al_buf_append(b, "\"", 1);
    for (size_t i = 0; s && s[i] && i < max && rc == AL_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = al_buf_append(b, e, 2);
        } else {
            char o = c >= 0x20 && c < 0x7f ? (char)c : '?';
            rc = al_buf_append(b, &o, 1);
        }
    }
    return rc ? rc : al_buf_append(b, "\"", 1);
}

int al_proxy_status(al_buf *b, const char *code, int status, const char *details)
{
    al_buf_reset(b);
    int rc = al_buf_append(b, "airlock; error=", 15);
    const char *type = al_proxy_status_error(code, status);
    if (!rc)
        rc = al_buf_append(b, type, strlen(type));
    if (!rc)
        rc = al_buf_append(b, "; error_code=", 13);
    if (!rc)
        rc = sf_string_append(b, code ? code : "", 64);
    if (!rc && details && details[0]) {
        rc = al_buf_append(b, "; details=", 10);
        if (!rc)
            rc = sf_string_append(b, details, 512);
    }
    return rc;
}

const char *al_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 102:
        return "Processing";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}
