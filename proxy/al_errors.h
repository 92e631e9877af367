/* al_errors: the JSON refusal bodies of the data path.
 *
 * Every refusal the agent sees is {"error":"<code>","message":"<sentence>"} with a
 * fitting status. Messages are built from names, hosts and address classes only;
 * callers never pass a secret. */
#ifndef AL_ERRORS_H
#define AL_ERRORS_H

#include <stddef.h>

#include "common/al_buf.h"

/* Writes the JSON body (with a trailing newline) into b (replacing its contents).
 * The message is printf-formatted and JSON-escaped. */
int al_error_json(al_buf *b, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends s[0..n) JSON-escaped (without quotes) to b. */
int al_json_escape_append(al_buf *b, const char *s, size_t n);

/* The RFC 9209 Proxy-Status error type for an airlock refusal code
 * ("unknown_target" -> "destination_not_found"); unlisted codes map by status. */
const char *al_proxy_status_error(const char *code, int status);

/* Writes a Proxy-Status field value into b (replacing its contents):
 * `airlock; error=<type>; error_code="<code>"; details="<details>"`. details is the
 * refusal's message (never a secret); non-printable bytes become '?' and it is cut
 * at 512 bytes, so the value is always a valid structured field. */
int al_proxy_status(al_buf *b, const char *code, int status, const char *details);

/* The reason phrase for an HTTP status ("Bad Request"); "Unknown" when unlisted. */
const char *al_http_reason(int status);

#endif
