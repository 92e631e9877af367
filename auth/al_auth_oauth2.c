/* al_auth_oauth2: the OAuth 2.0 bearer injector (oauth2_2lo): "Authorization: Bearer
 * <access token>" (RFC 6750 2.1) from the credential stage's grant, whose secret view
 * holds the token the OAuth credential source (proxy/al_credsrc_oauth2) took from the
 * per-process token cache (identity/al_token).
 *
 * Pure: no I/O, no logging. The token is checked again here (visible ASCII, no
 * space) although al_token already refused any other: a header value is the last
 * place where CR/LF could split a request. */
#include "al_auth.h"
#include "common/al_err.h"

#include <string.h>

static const char BEARER[] = "Bearer ";

static unsigned oauth2_needs(const al_target *t)
{
    (void)t;
    return AL_AUTH_NEEDS_CREDENTIAL;
}

static int oauth2_prepare(const al_target *t, const al_auth_req *req, const al_secret_view *s,
                          al_auth_out *out)
{
    (void)t;
    (void)req;
    if (!s || !s->value || !s->len)
        return AL_ERR_INVAL;
    for (size_t i = 0; i < s->len; i++)
        if (s->value[i] <= 0x20 || s->value[i] >= 0x7f)
            return AL_ERR_INVAL;
    al_buf *v = al_auth_out_add(out, "Authorization");
    if (!v)
        return AL_ERR_TOOBIG;
    int rc = al_auth_reserve(v, sizeof BEARER - 1 + s->len);
    if (rc == AL_OK)
        rc = al_buf_append(v, BEARER, sizeof BEARER - 1);
    if (rc == AL_OK)
        rc = al_buf_append(v, (const char *)s->value, s->len);
    return rc;
}

const al_auth_injector al_auth_oauth2_injector = {
    .method = AL_AUTH_OAUTH2_2LO,
    .name = "oauth2_2lo",
    .needs = oauth2_needs,
    .prepare = oauth2_prepare,
    .drops_header = NULL, /* Authorization goes whenever a target injects auth */
};
