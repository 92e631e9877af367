/* libFuzzer harness: identity/al_token's parser of token endpoint answers and
 * identity/al_oidc's checks of discovery metadata and JWKS documents — every byte comes
 * from an identity provider (or whoever answers in its place). Input: byte 0 picks the
 * HTTP status class and the document kind, the rest is the body. */
#include "identity/al_oidc.h"
#include "identity/al_token.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const long statuses[] = {200, 201, 400, 401, 403, 500, 503, 302};
    long status = statuses[data[0] & 7];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    static char *scopes[] = {"read", "write"};
    static const unsigned char secret[] = "fuzz-client-secret";
    al_token_spec spec = {.provider = "p",
                          .version = 1,
                          .secret = secret,
                          .secret_len = sizeof secret - 1,
                          .scopes = scopes,
                          .scope_count = 2};
    al_token *t = NULL;
    char msg[512];
    if (al_token_parse_response(status, body, len, "idp.example", &spec, 0, &t, msg, sizeof msg) ==
        0) {
        if (!t || !t->access_token || strlen(t->access_token) != t->len)
            __builtin_trap();
        for (size_t i = 0; i < t->len; i++)
            if ((unsigned char)t->access_token[i] <= 0x20 ||
                (unsigned char)t->access_token[i] >= 0x7f)
                __builtin_trap(); /* a token that could split a header */
        al_token_release(t);
    } else if (strstr(msg, (const char *)secret)) {
        __builtin_trap(); /* the secret echoed into a message */
    }
    json_error_t je;
    json_t *doc = json_loadb(body, len, 0, &je);
    if (doc) {
        al_fetch_opts o = {.allow_insecure = (data[0] >> 3) & 1};
        al_oidc_check_metadata(doc, "https://idp.example/.well-known/openid-configuration", &o, msg,
                               sizeof msg);
        al_oidc_check_jwks(doc, msg, sizeof msg);
        json_decref(doc);
    }
    return 0;
}
