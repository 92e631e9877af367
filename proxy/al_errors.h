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

/* The reason phrase for an HTTP status ("Bad Request"); "Unknown" when unlisted. */
const char *al_http_reason(int status);

#endif
