/* libFuzzer harness for auth/al_aws_creds' parsers: the container endpoint's and
 * IMDS's JSON, STS's XML and RFC 3339 times come from endpoints airlock reaches over
 * the network. Besides crashes and sanitizer reports it checks that accepted
 * credentials can go into a header: no control character in the access key id or
 * the session token, and a non-empty secret.
 *
 * Input: first byte picks the parser, the rest is its input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/al_err.h"
#include "auth/al_aws_creds.h"

static void check(const al_aws_credentials *c)
{
    for (const char *p = c->access_key_id; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            abort();
    for (size_t i = 0; c->token && i < c->token_len; i++)
        if (c->token[i] < 0x20 || c->token[i] == 0x7f)
            abort();
    if (!c->secret_len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    al_aws_credentials *c = NULL;
    int64_t t;
    switch (data[0] % 3) {
    case 0:
        if (al_aws_parse_json_credentials(s, n, "x", &c) == AL_OK)
            check(c);
        break;
    case 1:
        if (al_aws_parse_sts_xml(s, n, "x", &c) == AL_OK)
            check(c);
        break;
    default:
        (void)al_aws_parse_time(s, n, &t);
    }
    al_aws_credentials_unref(c);
    return 0;
}
