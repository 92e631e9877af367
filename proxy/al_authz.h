/* al_authz: the inbound decision for one request — who is calling (the bearer JWT,
 * identity/al_inbound) and may they do this (policy/al_policy) — as one pure-ish
 * function shared by the data path's decide stage and `airlock explain`, so the two
 * can never disagree.
 *
 * Where the token comes from: the forward proxy (absolute-form requests, CONNECT, and
 * requests inside an intercepted tunnel) reads `Proxy-Authorization: Bearer`, and a
 * refusal is 407 with `Proxy-Authenticate: Bearer realm="airlock"`; gateway mode
 * (`/t/<name>/...`) reads `Authorization: Bearer`, and a refusal is 401 with
 * `WWW-Authenticate: Bearer realm="airlock", error="invalid_token",
 * error_description="..."`. Requests inside a tunnel inherit the CONNECT's principal
 * when they carry no token of their own. A policy denial is 403 policy_denied. The
 * message names the failed check or what the policy lacked, never the token. */
#ifndef AL_AUTHZ_H
#define AL_AUTHZ_H

#include "al_request.h"
#include "identity/al_inbound.h"
#include "policy/al_policy.h"
#include "targets/al_table.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct al_authz_in {
    const al_table *table;
    al_inbound *inbound; /* NULL when inbound.mode is none */
    const char *method;
    const al_target *target; /* NULL: no target (never allowed by rules) */
    const char *path;        /* the upstream path[?query] (base path included) or NULL */
    size_t path_len;
    int gateway;               /* 1: gateway mode (Authorization), 0: forward proxy */
    const char *authorization; /* header value or NULL (gateway) */
    size_t authorization_len;
    const char *proxy_authorization; /* header value or NULL (forward) */
    size_t proxy_authorization_len;
    al_principal *inherited; /* the tunnel's principal, or NULL (borrowed) */
    const char *mcp_tool;    /* a tools/call name, or NULL */
    int64_t now;             /* seconds */
} al_authz_in;

typedef struct al_authz_out {
    int allow;
    int status;              /* 0 when allowed; 401, 407 or 403 */
    const char *code;        /* "unauthenticated", "proxy_auth_required", "policy_denied" */
    enum al_jwt_check check; /* the token check that failed (AL_JWT_OK otherwise) */
    al_principal *principal; /* a reference when authenticated (al_authz_out_free) */
    al_policy_decision policy;
    char rule[512];      /* the deciding or nearest rule ("name (FILE:LINE)"), "" when none */
    char message[768];   /* what to do; no token, no policy dump */
    char challenge[384]; /* the WWW-/Proxy-Authenticate value for 401/407, else "" */
} al_authz_out;

void al_authz_decide(const al_authz_in *in, al_authz_out *out);
void al_authz_out_free(al_authz_out *out);

/* The data path's decide hook (al_req_hooks.decide): arg is an al_authz_state whose
 * inbound the server sets for the current table (NULL under mode none). Old inbound
 * objects are kept by the server until it stops, so a request never sees one freed. */
typedef struct al_authz_state {
    _Atomic(al_inbound *) inbound;
    /* `airlock explain --principal`: the principal a request without a token is taken
     * to be (never set by serve). */
    al_principal *assume;
} al_authz_state;
int al_authz_hook_decide(void *arg, const al_decide_req *q, al_decision *d);

/* The end user of a request that is for no target (POST /oauth2/sessions/complete):
 * its `Authorization: Bearer` token authenticated as the data path does, then the
 * trusted client's inbound.user_header or the token's "ISS SUB" (the decide hook's own
 * rule). AL_OK and user; else AL_ERR_PERM with the HTTP status (401 with challenge, 403,
 * 400), an error code and a message (never the token). */
int al_authz_end_user(al_authz_state *st, const al_table *t, const al_header *headers, size_t n,
                      char *user, size_t ulen, int *status, const char **code, char *msg,
                      size_t msglen, char *challenge, size_t chlen);

/* The path below the target's base path, query removed, into buf ("/" at least). */
const char *al_authz_policy_path(const al_target *t, const char *path, size_t len, char *buf,
                                 size_t n);

#endif
