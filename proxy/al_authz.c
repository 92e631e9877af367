/* al_authz: authentication + policy for one request. See al_authz.h.
 *
 * Order: with inbound.mode jwt, the token is checked first (a request without a valid
 * one learns nothing about the policy); then the policy decides with the principal
 * (or anonymous under mode none). */
#include "al_authz.h"
#include "common/al_err.h"

#include <stdio.h>
#include <string.h>

const char *al_authz_policy_path(const al_target *t, const char *path, size_t len, char *buf,
                                 size_t n)
{
    if (!path || !len || n < 2) {
        snprintf(buf, n, "/");
        return buf;
    }
    size_t plen = strcspn(path, "?#");
    if (plen > len)
        plen = len;
    const char *bp = t && t->base_path ? t->base_path : "";
    size_t bl = strlen(bp);
    if (bl && plen >= bl && !memcmp(path, bp, bl) && (plen == bl || path[bl] == '/')) {
        path += bl;
        plen -= bl;
    }
    if (plen == 0)
        snprintf(buf, n, "/");
    else
        snprintf(buf, n, "%.*s", (int)plen, path);
    return buf;
}

/* A quoted-string for a challenge: quotes and backslashes dropped (our own text). */
static void quote_safe(char *dst, size_t n, const char *src)
{
    size_t o = 0;
    for (; *src && o + 1 < n; src++)
        if (*src != '"' && *src != '\\' && (unsigned char)*src >= 0x20)
            dst[o++] = *src;
    dst[o] = '\0';
}

void al_authz_decide(const al_authz_in *in, al_authz_out *out)
{
    memset(out, 0, sizeof *out);
    out->allow = 1;
    out->check = AL_JWT_OK;
    const al_table *t = in->table;
    if (t && t->inbound.mode == AL_INBOUND_JWT) {
        const char *hv = in->gateway ? in->authorization : in->proxy_authorization;
        size_t hl = in->gateway ? in->authorization_len : in->proxy_authorization_len;
        const char *tok = NULL;
        size_t tl = 0;
        int have = hv && al_inbound_bearer(hv, hl, &tok, &tl) == AL_OK;
        al_principal *p = NULL;
        enum al_jwt_check why = AL_JWT_MISSING;
        if (have && in->inbound)
            (void)al_inbound_authenticate(in->inbound, tok, tl, in->now, &p, &why);
        else if (have)
            why = AL_JWT_UNAVAILABLE;
        else if (hv)
            why = AL_JWT_MALFORMED; /* a header, but not "Bearer <token>" */
        else if (in->inherited)
            p = al_principal_ref(in->inherited);
        if (!p) {
            out->allow = 0;
            out->check = why;
            out->status = in->gateway ? 401 : 407;
            out->code = in->gateway ? "unauthenticated" : "proxy_auth_required";
            snprintf(out->message, sizeof out->message, "%s (check: %s)", al_jwt_check_text(why),
                     al_jwt_check_name(why));
            char desc[200];
            quote_safe(desc, sizeof desc, al_jwt_check_text(why));
            if (why == AL_JWT_MISSING) /* RFC 6750 §3: no error code without a token */
                snprintf(out->challenge, sizeof out->challenge, "Bearer realm=\"airlock\"");
            else
                snprintf(out->challenge, sizeof out->challenge,
                         "Bearer realm=\"airlock\", error=\"invalid_token\", "
                         "error_description=\"%s: %s\"",
                         al_jwt_check_name(why), desc);
            return;
        }
        out->principal = p;
    }
    if (!al_policy_active(t))
        return;
    char path[2048];
    al_policy_request q = {
        .principal = out->principal,
        .target = in->target ? in->target->name : NULL,
        .method = in->method,
        .path = al_authz_policy_path(in->target, in->path, in->path_len, path, sizeof path),
        .mcp_tool = in->mcp_tool,
    };
    al_policy_decide(t, &q, &out->policy);
    if (out->policy.rule)
        al_policy_rule_label(t, out->policy.rule, out->rule, sizeof out->rule);
    al_policy_explain(t, &q, &out->policy, out->message, sizeof out->message);
    if (!out->policy.allow) {
        out->allow = 0;
        out->status = 403;
        out->code = "policy_denied";
    }
}

void al_authz_out_free(al_authz_out *out)
{
    al_principal_unref(out->principal);
    out->principal = NULL;
}
