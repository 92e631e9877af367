/* al_inject: credential injection, one small vtable per auth method.
 *
 * The data path asks al_injector_for(target->auth.method) for the method's
 * injector and calls its hooks; it never switches on a method name. Adding a method
 * (OAuth, SigV4) is one new file that fills an al_injector and one line in the
 * lookup table of al_inject.c.
 *
 * Injectors are engines without I/O: they take the target and an al_secret_view
 * (identity/al_cred.h; the data path has already selected the provider version) and
 * write what to send into buffers the caller owns. Those buffers hold the secret:
 * the caller frees them with al_buf_free(b, 1) (wipe). Injectors reserve the whole
 * output before copying secret bytes, so growth never leaves a copy of the secret in
 * freed heap memory. Nothing here logs.
 *
 * Typical use by the data path:
 *   const al_injector *inj = al_injector_for(t->auth.method);   // NULL: not built yet
 *   for each agent header: if (al_inject_drop_request_header(t, n, nl)) skip it;
 *   inj->request_target(t, &secret, target, tlen, &new_target);  // len 0: unchanged
 *   inj->header(t, &secret, &hdr, &value);                         // hdr.name NULL: none
 */
#ifndef AL_INJECT_H
#define AL_INJECT_H

#include <stddef.h>

#include "common/al_buf.h"
#include "identity/al_cred.h"
#include "targets/al_table.h"

/* The header an injector sets. `name` is borrowed from the target (lives as long as
 * the table snapshot); the value is in the caller's al_buf. */
typedef struct al_inject_header {
    const char *name; /* NULL = this target gets no header from this injector */
    size_t name_len;
} al_inject_header;

typedef struct al_injector {
    enum al_auth_method method;
    const char *name; /* "api_key", ... as in YAML */

    /* Sets *out to the header to add and writes its full value into `value`
     * (replacing its contents). When the target takes no header from this method
     * (api_key in the query), out->name is NULL and `value` is left empty.
     * AL_ERR_INVAL when the secret or prefix holds bytes not allowed in a header
     * value (CR, LF, NUL, other controls): injecting them would split headers.
     * AL_ERR_TOOBIG when `value`'s limit is too small. */
    int (*header)(const al_target *t, const al_secret_view *s, al_inject_header *out,
                  al_buf *value);

    /* Rewrites the request target "path[?query]" (len bytes, no fragment) into `out`
     * (replacing its contents), or leaves `out` empty when this target's target is
     * sent unchanged. AL_ERR_INVAL for a '#' in the target. */
    int (*request_target)(const al_target *t, const al_secret_view *s, const char *target,
                          size_t len, al_buf *out);

    /* 1 when the agent's request header `name` must not reach the upstream because
     * this method sets it (the agent's own credential); may be NULL (nothing). */
    int (*drops_header)(const al_target *t, const char *name, size_t len);
} al_injector;

/* The injector for method m, or NULL when that method is not built yet. */
const al_injector *al_injector_for(enum al_auth_method m);

/* 1 when the agent's request header `name` (len bytes, any case) must be dropped
 * before the request goes upstream: hop-by-hop headers (Connection, Keep-Alive,
 * Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer,
 * Transfer-Encoding, Upgrade, HTTP2-Settings), Authorization whenever the target
 * injects auth, and whatever the target's injector sets. The names listed inside a
 * Connection header are the caller's job. t may be NULL (hop-by-hop only). */
int al_inject_drop_request_header(const al_target *t, const char *name, size_t len);

/* Appends the RFC 3986 percent-encoding of p[0..n) to b (unreserved characters
 * kept, everything else %XX). Exposed for tests and for other injectors. */
int al_inject_percent_encode(al_buf *b, const unsigned char *p, size_t n);

#endif
