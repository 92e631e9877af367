/* al_authz: authentication + policy for one request. See al_authz.h.
 *
 * Order: with inbound.mode jwt, the token is checked first (a request without a valid
 * one learns nothing about the policy); then the policy decides with the principal
 * (or anonymous under mode none). */
#include "al_authz.h"
#include "common/al_err.h"
#include "common/al_http.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

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
    int connect = in->method && !strcmp(in->method, "CONNECT");
    /* An intercepted CONNECT only authenticates: each request inside the tunnel is
     * routed and decided on its own (several targets may share one host:port). A
     * passthrough CONNECT (no target) is never seen again, so the policy decides it. */
    if (!al_policy_active(t) || (connect && in->target))
        return;
    char path[2048];
    al_policy_request q = {
        .principal = out->principal,
        .target = in->target ? in->target->name : NULL,
        .method = connect ? NULL : in->method,
        .path = connect
                    ? NULL
                    : al_authz_policy_path(in->target, in->path, in->path_len, path, sizeof path),
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

/* ---- the data path's decide hook ------------------------------------------------- */

static const al_header *header(const al_decide_req *q, const char *name)
{
    for (size_t i = 0; i < q->header_count; i++)
        if (al_http_name_is(q->headers[i].name, q->headers[i].name_len, name))
            return &q->headers[i];
    return NULL;
}

/* A user header's value: 1..256 bytes of printable ASCII, no space at either end (it
 * becomes the key of the user's tokens and a field of audit lines). */
static int user_value_ok(const char *v, size_t n)
{
    if (n == 0 || n > 256 || v[0] == ' ' || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return 0;
    return 1;
}

/* The end user of an allowed request (OAuth on behalf of a user): the trusted client's
 * inbound.user_header, else the token's "ISS SUB". A user header from anyone else is
 * refused, not ignored: a caller that believes it acts for a user must learn it does
 * not. Returns 0, or -1 with d set to refuse. */
static int end_user(const al_table *t, const al_decide_req *q, const char *iss, const char *sub,
                    const char *cid, al_decision *d)
{
    static _Thread_local char user[1100];
    static _Thread_local char msg[512];
    const al_header *uh = NULL;
    size_t seen = 0;
    for (size_t i = 0; t->inbound.user_header && i < q->header_count; i++)
        if (al_http_name_is(q->headers[i].name, q->headers[i].name_len, t->inbound.user_header)) {
            uh = uh ? uh : &q->headers[i];
            seen++;
        }
    if (uh) {
        int trusted = 0;
        for (size_t i = 0; cid && i < t->inbound.user_header_trusted_count; i++)
            trusted |= !strcmp(cid, t->inbound.user_header_trusted[i]);
        d->allow = 0;
        d->refusal = trusted ? AL_REF_BAD_REQUEST : AL_REF_POLICY_DENIED;
        d->message = msg;
        if (!trusted) {
            snprintf(msg, sizeof msg,
                     "the request names an end user in %s, but its caller (client '%.100s') "
                     "is not in inbound.user_header.trusted_clients; send the request without "
                     "that header (it then acts for the token's own subject), or ask the "
                     "operator to trust this client",
                     t->inbound.user_header, cid ? cid : "none");
            return -1;
        }
        if (seen > 1 || !user_value_ok(uh->value, uh->value_len)) {
            snprintf(msg, sizeof msg,
                     "%s must appear once, with 1 to 256 printable ASCII characters and no "
                     "space at either end",
                     t->inbound.user_header);
            return -1;
        }
        /* "2lo:..." names the shared 2LO token rows in the user-token store (al_token.h):
         * a user of that name would be handed the client's own token */
        if (uh->value_len >= 4 && memcmp(uh->value, "2lo:", 4) == 0) {
            snprintf(msg, sizeof msg,
                     "%s values starting with '2lo:' are reserved (airlock's shared client "
                     "credentials tokens); name the end user differently",
                     t->inbound.user_header);
            return -1;
        }
        d->allow = 1;
        snprintf(user, sizeof user, "%.*s", (int)uh->value_len, uh->value);
        if (q->target && q->target->auth.method == AL_AUTH_OAUTH2_3LO)
            d->end_user = user;
        return 0;
    }
    /* only a target that acts for a user has one (the principal says who called) */
    if (iss && sub && *iss && *sub && q->target && q->target->auth.method == AL_AUTH_OAUTH2_3LO) {
        snprintf(user, sizeof user, "%s %s", iss, sub);
        d->end_user = user;
    }
    return 0;
}

int al_authz_end_user(al_authz_state *st, const al_table *t, const al_header *headers, size_t n,
                      char *user, size_t ulen, int *status, const char **code, char *msg,
                      size_t msglen, char *challenge, size_t chlen)
{
    static _Thread_local al_authz_out out;
    /* end_user() names a user only for a target that acts for one: this request is about
     * such a target's consent */
    static const al_target acts_for_user = {.auth = {.method = AL_AUTH_OAUTH2_3LO}};
    al_decide_req q = {
        .headers = headers, .header_count = n, .table = t, .gateway = 1, .target = &acts_for_user};
    const al_header *az = header(&q, "authorization");
    al_authz_in in = {
        .table = t,
        .inbound = st ? atomic_load_explicit(&st->inbound, memory_order_acquire) : NULL,
        .method = "POST",
        .gateway = 1,
        .authorization = az ? az->value : NULL,
        .authorization_len = az ? az->value_len : 0,
        .now = (int64_t)time(NULL),
        .inherited = st ? st->assume : NULL,
    };
    user[0] = msg[0] = challenge[0] = 0;
    *status = 0;
    *code = NULL;
    if (!t || t->inbound.mode != AL_INBOUND_JWT) {
        *status = 403;
        *code = "policy_denied";
        snprintf(msg, msglen, "no end user can be named: inbound.mode is not jwt");
        return AL_ERR_PERM;
    }
    /* authentication only: no target is involved, so the policy has nothing to decide */
    al_authz_decide(&in, &out);
    if (!out.principal) {
        *status = 401;
        *code = "unauthenticated";
        snprintf(msg, msglen, "%s", out.message);
        snprintf(challenge, chlen, "%s", out.challenge);
        al_authz_out_free(&out);
        return AL_ERR_PERM;
    }
    al_decision d = {.allow = 1};
    const al_principal *p = out.principal;
    int rc = end_user(t, &q, p->iss, p->sub, p->client_id, &d);
    al_authz_out_free(&out);
    if (rc != 0) {
        *status = d.refusal == AL_REF_POLICY_DENIED ? 403 : 400;
        *code = d.refusal == AL_REF_POLICY_DENIED ? "policy_denied" : "bad_request";
        snprintf(msg, msglen, "%s", d.message ? d.message : "the end user is not valid");
        return AL_ERR_PERM;
    }
    if (!d.end_user || (size_t)snprintf(user, ulen, "%s", d.end_user) >= ulen) {
        *status = 403;
        *code = "policy_denied";
        snprintf(msg, msglen, "the token names no end user (no iss and sub)");
        user[0] = 0;
        return AL_ERR_PERM;
    }
    return AL_OK;
}

int al_authz_hook_decide(void *arg, const al_decide_req *q, al_decision *d)
{
    al_authz_state *st = arg;
    const al_table *t = q->table;
    if (!t || (t->inbound.mode == AL_INBOUND_NONE && !al_policy_active(t)))
        return AL_OK; /* the route decides */
    /* The decision's strings must live until the request copied them (before this
     * returns to stage_decide's caller): one set per thread. */
    static _Thread_local al_authz_out out;
    static _Thread_local char label[256], iss[512], sub[512], cid[512];
    const al_header *az = header(q, "authorization"), *paz = header(q, "proxy-authorization");
    al_authz_in in = {
        .table = t,
        .inbound = st ? atomic_load_explicit(&st->inbound, memory_order_acquire) : NULL,
        .method = q->method,
        .target = q->target,
        .path = q->path,
        .path_len = q->path_len,
        .gateway = q->gateway && !q->in_tunnel,
        .authorization = az ? az->value : NULL,
        .authorization_len = az ? az->value_len : 0,
        .proxy_authorization = paz ? paz->value : NULL,
        .proxy_authorization_len = paz ? paz->value_len : 0,
        .now = (int64_t)time(NULL),
        .inherited = st ? st->assume : NULL,
        .mcp_tool = q->mcp_tool,
    };
    if (q->in_tunnel) { /* the CONNECT's token: the tunnel's principal */
        in.proxy_authorization = q->tunnel_authorization;
        in.proxy_authorization_len = q->tunnel_authorization_len;
    }
    al_authz_decide(&in, &out);
    d->decided_by = "policy";
    d->rule = out.rule[0] ? out.rule : NULL;
    if (out.principal) {
        al_principal_label(out.principal, label, sizeof label);
        snprintf(iss, sizeof iss, "%s", out.principal->iss ? out.principal->iss : "");
        snprintf(sub, sizeof sub, "%s", out.principal->sub ? out.principal->sub : "");
        snprintf(cid, sizeof cid, "%s", out.principal->client_id ? out.principal->client_id : "");
        d->principal = label;
        d->principal_iss = out.principal->iss ? iss : NULL;
        d->principal_sub = out.principal->sub ? sub : NULL;
        d->principal_client_id = out.principal->client_id ? cid : NULL;
    }
    al_authz_out_free(&out);
    if (out.allow && !q->mcp_tool && q->target && q->target->type == AL_TYPE_MCP_SERVER &&
        al_policy_active(t)) {
        /* would a tools/call of a tool no rule names be refused? then the policy limits
         * tools here and the body must be read (a second, cheap decision: the token is
         * cached) */
        static _Thread_local al_authz_out probe;
        in.mcp_tool = "";
        al_authz_decide(&in, &probe);
        d->inspect_mcp_body = !probe.allow && probe.policy.missing == AL_POLICY_MISS_TOOL;
        al_authz_out_free(&probe);
    }
    if (out.allow) {
        end_user(t, q, d->principal_iss, d->principal_sub, d->principal_client_id, d);
        return AL_OK;
    }
    d->allow = 0;
    d->refusal = out.status == 401   ? AL_REF_UNAUTHENTICATED
                 : out.status == 407 ? AL_REF_PROXY_AUTH_REQUIRED
                                     : AL_REF_POLICY_DENIED;
    d->message = out.message;
    d->challenge = out.challenge[0] ? out.challenge : NULL;
    return AL_OK;
}
