/* libFuzzer harness: the parts of 3LO that read bytes a browser (anyone) sends to
 * airlock's /oauth2/callback, and the page that echoes a provider's error back:
 * identity/al_user_cred's query-parameter parser (state, code, error,
 * error_description: decoded, bounded, never half-written, a duplicate refused) and
 * proxy/al_oauth2_3lo's HTML page (every '<', '>', '&', quote escaped). Input: the query
 * string. */
#include "proxy/al_oauth2_3lo.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"state", "code", "error", "error_description", ""};
    const char *q = (const char *)data;
    char out[96];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        memset(out, 'Z', sizeof out);
        int rc = al_user_query_param(q, size, names[i], out, sizeof out);
        size_t n = strnlen(out, sizeof out);
        if (n == sizeof out)
            __builtin_trap(); /* not terminated */
        if (rc != 0 && n)
            __builtin_trap(); /* a failed parse leaves nothing behind */
        if (rc == 0 && memchr(out, 0, n))
            __builtin_trap();
    }
    /* the error page of whatever error_description said */
    char desc[96], html[1024];
    if (al_user_query_param(q, size, "error_description", desc, sizeof desc) == 0) {
        size_t hl = al_oauth2_3lo_page_html("t", desc, html, sizeof html);
        if (hl >= sizeof html || strlen(html) != hl)
            __builtin_trap();
        const char *body = strstr(html, "<p>");
        const char *end = body ? strstr(body, "</p>") : NULL;
        if (!body || !end)
            __builtin_trap();
        for (const char *p = body + 3; p < end; p++)
            if (*p == '<' || *p == '>' || *p == '"' || *p == '\'')
                __builtin_trap(); /* markup from the provider reached the page */
    }
    return 0;
}
