/* libFuzzer harness: what a provider or a browser sends to airlock's 3LO extras —
 * identity/al_par's parser of pushed authorization request answers, al_revoke's check of
 * revocation answers (bytes from the provider), and common/al_return_url's allow-list
 * (a URL from the application's request). Input: byte 0 picks the HTTP status and which
 * of them runs, the rest is the body or the URL. */
#include "common/al_return_url.h"
#include "identity/al_par.h"
#include "identity/al_revoke.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const long statuses[] = {200, 201, 400, 401, 500, 503, 302, 204};
    long status = statuses[data[0] & 7];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    static const unsigned char secret[] = "fuzz-client-secret";
    char msg[512], *uri = NULL;
    int64_t exp = 0;
    if (data[0] & 0x80) {
        /* the return URL: NUL-terminated copy; an allowed one must look like an entry */
        char *url = malloc(len + 1);
        if (!url)
            return 0;
        memcpy(url, body, len);
        url[len] = 0;
        char *allow[] = {"https://app.example.com/cb", "http://127.0.0.1:8080/"};
        if (al_return_url_allowed(url, allow, 2)) {
            /* the origin of an entry, then the end of the authority (a port, the path) */
            int a = strncasecmp(url, "https://app.example.com", 23) == 0 &&
                    (url[23] == '/' || url[23] == ':');
            /* an empty path is the entry's "/" (RFC 9110 4.2.3) */
            int b = strncasecmp(url, "http://127.0.0.1:8080", 21) == 0 &&
                    (url[21] == '/' || url[21] == '?' || url[21] == 0);
            if (!a && !b)
                __builtin_trap(); /* allowed a URL to another origin */
            if (strchr(url, '\\') || strchr(url, '#'))
                __builtin_trap();
        }
        free(url);
        return 0;
    }
    if (data[0] & 0x40) {
        if (al_revoke_check(status, body, len, "idp.example", secret, sizeof secret - 1, msg,
                            sizeof msg) != 0 &&
            strstr(msg, (const char *)secret))
            __builtin_trap();
        return 0;
    }
    if (al_par_parse(status, body, len, "idp.example", secret, sizeof secret - 1, &uri, &exp, msg,
                     sizeof msg) == 0) {
        if (!uri || !*uri || exp <= 0 || strlen(uri) > AL_PAR_REQUEST_URI_MAX)
            __builtin_trap();
        for (const char *p = uri; *p; p++)
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
                __builtin_trap(); /* would split the Location header */
        free(uri);
    } else if (uri || strstr(msg, (const char *)secret)) {
        __builtin_trap();
    }
    return 0;
}
