/* airlock explain: would this request be allowed, and why — without sending it.
 *
 * Not a model of the data path: it runs the data path. The request is built as an
 * agent would send it (absolute-form to the forward proxy, CONNECT + a request inside
 * the tunnel for https://, /t/<name>/... in gateway mode, the token in the header the
 * agent would use) and handed to the same request pipeline `serve` runs
 * (proxy/al_request.c: route, decide with the same hook al_authz_hook_decide, resolve
 * with the egress guard, credential from the store) whose upstream engine is replaced
 * by one that records what would be sent and sends nothing. What it reports comes from
 * that run: the refusal the agent would get, or the request that would leave, plus the
 * audit record's target, principal, rule, provider and checked address.
 *
 * Exit: 0 the request would be forwarded, 1 it would be refused (or the table is
 * invalid), 2 usage. */
#include "al_cli.h"
#include "identity/al_store.h"
#include "common/al_buf.h"
#include "common/al_err.h"
#include "identity/al_cred.h"
#include "identity/al_credsrc.h"
#include "identity/al_inbound.h"
#include "proxy/al_authz.h"
#include "upstream/al_egress.h"
#include "proxy/al_request.h"
#include "targets/al_table.h"

#include <ev.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: airlock explain -c FILE [--token JWT|-|@FILE | --principal K=V,...]\n"
            "                       [--mcp-tool NAME] [--format text|json] [--state-dir DIR]\n"
            "                       METHOD URL\n\n"
            "Says what airlock would do with a request, using the data path's own code\n"
            "(routing, inbound JWT check, policy, egress guard, credential lookup) and\n"
            "sending nothing upstream: the target matched or why none, the policy rule that\n"
            "decided (FILE:LINE), the credential provider and version that would be used,\n"
            "the egress decision, and the status and error code the agent would get.\n\n"
            "URL is what the agent asks for: http://host/path (forward proxy),\n"
            "https://host/path (CONNECT, then the request inside the tunnel) or\n"
            "/t/<target>/path (gateway mode).\n\n"
            "options:\n"
            "  -c, --config FILE   the target table\n"
            "  --token T           the agent's bearer token (checked against the issuer's\n"
            "                      keys, fetched now); '-' reads it from stdin, @FILE from a file\n"
            "  --principal K=V,... decide as this principal without a token: sub=, client_id=,\n"
            "                      iss=, or any other claim (claim values are strings)\n"
            "  --mcp-tool NAME     the request is an MCP tools/call of NAME\n"
            "  --format FORMAT     text (default) or json\n"
            "  --state-dir DIR     the identity store (for the credential that would be used)\n"
            "  -h, --help          this help\n\n"
            "exit status: 0 would be forwarded, 1 would be refused or the table is invalid,\n"
            "2 usage error\n");
}

/* ---- what the run saw ----------------------------------------------------------- */

typedef struct seen {
    struct ev_loop *loop;
    int status;  /* refusal status (0: none) */
    al_buf body; /* refusal body */
    char proxy_status[512];
    char challenge[512];
    int forwarded; /* the upstream engine was asked to send */
    char up_method[32], up_url[2048], up_addr[80];
    int ended;
    /* from the audit record */
    int have_rec;
    char target[128], type[32], auth_method[32], provider[160], rule[512], principal_iss[512],
        principal_sub[512], principal_client_id[512], reason[64];
    uint32_t provider_version;
    int connect_status; /* CONNECT: its verdict status, 0 when none */
} seen;

static void copy(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

static void sink_head(void *arg, int status, const al_header *h, size_t n, int64_t cl)
{
    seen *s = arg;
    (void)cl;
    s->status = status;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)h[i].name_len, h[i].name);
        if (!strcasecmp(name, "proxy-status"))
            snprintf(s->proxy_status, sizeof s->proxy_status, "%.*s", (int)h[i].value_len,
                     h[i].value);
        else if (!strcasecmp(name, "www-authenticate") || !strcasecmp(name, "proxy-authenticate"))
            snprintf(s->challenge, sizeof s->challenge, "%s: %.*s", name, (int)h[i].value_len,
                     h[i].value);
    }
}

static int sink_body(void *arg, const char *data, size_t len)
{
    seen *s = arg;
    (void)al_buf_append(&s->body, data, len);
    return 0;
}

static void sink_end(void *arg, int ok)
{
    seen *s = arg;
    (void)ok;
    s->ended = 1;
    ev_break(s->loop, EVBREAK_ALL);
}

static const al_req_sink explain_sink = {sink_head, sink_body, sink_end, NULL, NULL, NULL, NULL};

/* The upstream engine: records, never sends. */
static int up_start(al_upstream_pool *p, const al_upstream_opts *o, const al_upstream_cbs *cb,
                    void *arg, al_upstream_req **out)
{
    (void)p;
    (void)cb;
    (void)arg;
    extern seen *explain_current;
    seen *s = explain_current;
    s->forwarded = 1;
    copy(s->up_method, sizeof s->up_method, o->method);
    int def = (!strcmp(o->scheme, "https") && o->connect_port == 443) ||
              (!strcmp(o->scheme, "http") && o->connect_port == 80);
    char port[16] = "";
    if (!def)
        snprintf(port, sizeof port, ":%u", (unsigned)o->connect_port);
    snprintf(s->up_url, sizeof s->up_url, "%s://%s%s%s", o->scheme, o->connect_host, port, o->path);
    copy(s->up_addr, sizeof s->up_addr, o->connect_addr);
    *out = (al_upstream_req *)s; /* an opaque handle; never dereferenced */
    ev_break(s->loop, EVBREAK_ALL);
    return AL_OK;
}
static void up_cancel(al_upstream_req *u)
{
    (void)u;
}
static void up_resume(al_upstream_req *u)
{
    (void)u;
}
static uint32_t up_elapsed(const al_upstream_req *u)
{
    (void)u;
    return 0;
}
static const al_req_upstream_ops capture_ops = {up_start, up_cancel, up_resume, up_resume,
                                                up_elapsed};
seen *explain_current;

static void on_finished(void *arg, const al_audit_request *rec)
{
    seen *s = arg;
    if (rec->event && strcmp(rec->event, "request") != 0)
        return;
    s->have_rec = 1;
    if (rec->target)
        copy(s->target, sizeof s->target, rec->target);
    if (rec->type)
        copy(s->type, sizeof s->type, rec->type);
    if (rec->auth_method)
        copy(s->auth_method, sizeof s->auth_method, rec->auth_method);
    if (rec->provider) {
        copy(s->provider, sizeof s->provider, rec->provider);
        s->provider_version = rec->provider_version;
    }
    if (rec->rule)
        copy(s->rule, sizeof s->rule, rec->rule);
    if (rec->principal_iss || rec->principal_sub || rec->principal_client_id) {
        copy(s->principal_iss, sizeof s->principal_iss, rec->principal_iss);
        copy(s->principal_sub, sizeof s->principal_sub, rec->principal_sub);
        copy(s->principal_client_id, sizeof s->principal_client_id, rec->principal_client_id);
    }
    if (rec->reason)
        copy(s->reason, sizeof s->reason, rec->reason);
}

/* ---- the context a worker would give the request ---------------------------------- */

typedef struct explain_owner {
    al_table *table;
} explain_owner;

static al_table *hold(void *owner, void **h)
{
    *h = NULL;
    return ((explain_owner *)owner)->table;
}
static void release(void *owner, void *h)
{
    (void)owner;
    (void)h;
}
static int random_id(void *owner, unsigned char out[16])
{
    (void)owner;
    return RAND_bytes(out, 16) == 1 ? AL_OK : AL_ERR_CRYPTO;
}
static const al_req_ctx_ops explain_ctx_ops = {hold, release, random_id};

/* ---- input --------------------------------------------------------------------- */

static char *read_token(const char *arg)
{
    char buf[20000];
    size_t n = 0;
    FILE *f = NULL;
    if (!strcmp(arg, "-"))
        f = stdin;
    else if (arg[0] == '@')
        f = fopen(arg + 1, "r");
    else
        return strdup(arg);
    if (!f)
        return NULL;
    n = fread(buf, 1, sizeof buf - 1, f);
    if (f != stdin)
        fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return strdup(buf);
}

/* "sub=a,client_id=b,groups=admins" -> a principal. */
static al_principal *parse_principal(const char *spec)
{
    char *dup = strdup(spec), *save = NULL;
    json_t *claims = json_object();
    const char *iss = NULL, *sub = NULL, *cid = NULL;
    int ok = dup && claims;
    for (char *kv = dup ? strtok_r(dup, ",", &save) : NULL; ok && kv;
         kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            ok = 0;
            break;
        }
        *eq = '\0';
        const char *v = eq + 1;
        if (!strcmp(kv, "iss"))
            iss = v;
        else if (!strcmp(kv, "sub"))
            sub = v;
        else if (!strcmp(kv, "client_id"))
            cid = v;
        json_object_set_new(claims, kv, json_string(v));
    }
    al_principal *p = ok && (sub || cid) ? al_principal_new(iss, sub, cid, claims) : NULL;
    json_decref(claims);
    free(dup);
    return p;
}

/* ---- running one request ------------------------------------------------------- */

typedef struct run_in {
    const char *method, *url, *token;
    int gateway, https;
    char host[256];
    uint16_t port;
    const char *path; /* origin-form part of the URL */
    const char *listen;
    const char *tool; /* --mcp-tool: the body is a tools/call of it */
} run_in;

/* Starts r with no body, or with the JSON-RPC tools/call body of --mcp-tool. */
static void start(al_req *r, const run_in *in)
{
    if (!in->tool) {
        al_request_start(r, 0, 0);
        return;
    }
    json_t *m = json_pack("{s:s, s:i, s:s, s:{s:s, s:{}}}", "jsonrpc", "2.0", "id", 1, "method",
                          "tools/call", "params", "name", in->tool, "arguments");
    char *body = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!body) {
        al_request_start(r, 0, 0);
        return;
    }
    al_request_add_header(r, "content-type", 12, "application/json", 16);
    al_request_start(r, 1, (int64_t)strlen(body));
    if (!al_request_finished(r) && al_request_body_room(r) >= strlen(body))
        al_request_body_write(r, body, strlen(body));
    if (!al_request_finished(r))
        al_request_body_end(r);
    free(body);
}

static void add_auth(al_req *r, const run_in *in, int gateway)
{
    if (!in->token)
        return;
    char v[20100];
    snprintf(v, sizeof v, "Bearer %s", in->token);
    const char *name = gateway ? "authorization" : "proxy-authorization";
    al_request_add_header(r, name, strlen(name), v, strlen(v));
}

/* Splits an absolute URL into host, port and path. */
static int split_url(run_in *in)
{
    const char *u = in->url;
    size_t skip = !strncasecmp(u, "https://", 8) ? 8 : !strncasecmp(u, "http://", 7) ? 7 : 0;
    if (!skip)
        return -1;
    in->https = skip == 8;
    const char *a = u + skip, *slash = strchr(a, '/');
    size_t al = slash ? (size_t)(slash - a) : strlen(a);
    if (al == 0 || al >= sizeof in->host)
        return -1;
    const char *colon = memrchr(a, ':', al);
    const char *rb = memrchr(a, ']', al);
    if (colon && (!rb || colon > rb)) {
        in->port = (uint16_t)atoi(colon + 1);
        al = (size_t)(colon - a);
    } else {
        in->port = in->https ? 443 : 80;
    }
    memcpy(in->host, a, al);
    in->host[al] = '\0';
    in->path = slash ? slash : "/";
    return 0;
}

static void run_request(al_req_ctx *ctx, seen *s, const run_in *in)
{
    explain_current = s;
    if (in->gateway) {
        al_req *r = al_request_new(ctx, &explain_sink, s, "http/1.1", "127.0.0.1:0");
        if (!r)
            return;
        al_request_set_head(r, in->method, strlen(in->method), NULL, 0, NULL, 0, in->url,
                            strlen(in->url));
        const char *hostv = in->listen ? in->listen : "127.0.0.1";
        al_request_add_header(r, "host", 4, hostv, strlen(hostv));
        add_auth(r, in, 1);
        start(r, in);
        if (!s->ended && !s->forwarded)
            ev_run(ctx->loop, 0);
        al_request_free(r);
        return;
    }
    char authority[300];
    snprintf(authority, sizeof authority, "%s%s%s:%u", strchr(in->host, ':') ? "[" : "", in->host,
             strchr(in->host, ':') ? "]" : "", (unsigned)in->port);
    if (in->https) {
        /* the agent's CONNECT first, decided as serve decides it */
        al_req *c = al_request_new(ctx, &explain_sink, s, "http/1.1", "127.0.0.1:0");
        if (!c)
            return;
        al_request_set_head(c, "CONNECT", 7, NULL, 0, NULL, 0, authority, strlen(authority));
        al_request_add_header(c, "host", 4, authority, strlen(authority));
        add_auth(c, in, 0);
        enum al_connect_verdict v = al_request_connect(c, authority, strlen(authority), 0, 1);
        if (v != AL_CONNECT_INTERCEPT) {
            if (v == AL_CONNECT_PASSTHROUGH) {
                s->connect_status = 200;
                snprintf(s->up_url, sizeof s->up_url, "blind tunnel to %s", authority);
                s->forwarded = 1;
            }
            al_request_free(c);
            return;
        }
        al_request_note_done(c, 200);
        s->connect_status = 200;
        al_request_free(c);
        memset(s->target, 0, sizeof s->target);
        s->have_rec = 0;
        al_req *r = al_request_new(ctx, &explain_sink, s, "http/1.1", "127.0.0.1:0");
        if (!r)
            return;
        al_request_set_head(r, in->method, strlen(in->method), NULL, 0, NULL, 0, in->path,
                            strlen(in->path));
        al_request_add_header(r, "host", 4, authority, strlen(authority));
        al_request_set_tunnel(r, in->host, in->port);
        if (in->token) {
            char bearer[20100];
            snprintf(bearer, sizeof bearer, "Bearer %s", in->token);
            al_request_set_tunnel_auth(r, bearer, strlen(bearer));
        }
        start(r, in);
        if (!s->ended && !s->forwarded)
            ev_run(ctx->loop, 0);
        al_request_free(r);
        return;
    }
    al_req *r = al_request_new(ctx, &explain_sink, s, "http/1.1", "127.0.0.1:0");
    if (!r)
        return;
    al_request_set_head(r, in->method, strlen(in->method), NULL, 0, NULL, 0, in->url,
                        strlen(in->url));
    al_request_add_header(r, "host", 4, authority, strlen(authority));
    add_auth(r, in, 0);
    start(r, in);
    if (!s->ended && !s->forwarded)
        ev_run(ctx->loop, 0);
    al_request_free(r);
}

/* ---- output -------------------------------------------------------------------- */

static void print_result(const seen *s, const run_in *in, const char *format,
                         const char *token_note)
{
    json_t *err = s->status ? json_loadb(s->body.data, s->body.len, 0, NULL) : NULL;
    const char *code = json_string_value(json_object_get(err, "error"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    json_t *rpc = json_object_get(err, "error"); /* a JSON-RPC error: a denied MCP tool */
    if (json_is_object(rpc)) {
        code = s->reason[0] ? s->reason : "policy_denied";
        msg = json_string_value(json_object_get(rpc, "message"));
    }
    const char *mode = in->gateway ? "gateway"
                       : in->https ? "forward proxy (CONNECT)"
                                   : "forward proxy";
    char principal[1700] = "";
    if (s->principal_iss[0] || s->principal_sub[0] || s->principal_client_id[0])
        snprintf(principal, sizeof principal, "iss=%s sub=%s client_id=%s", s->principal_iss,
                 s->principal_sub, s->principal_client_id);
    if (!strcmp(format, "json")) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "method", in->method, "url", in->url, "mode",
                              mode, "allowed", !s->status);
        json_object_set_new(o, "target", s->target[0] ? json_string(s->target) : json_null());
        json_object_set_new(o, "type", s->type[0] ? json_string(s->type) : json_null());
        if (principal[0])
            json_object_set_new(o, "principal",
                                json_pack("{s:s, s:s, s:s}", "iss", s->principal_iss, "sub",
                                          s->principal_sub, "client_id", s->principal_client_id));
        else
            json_object_set_new(o, "principal", json_null());
        json_object_set_new(o, "rule", s->rule[0] ? json_string(s->rule) : json_null());
        json_object_set_new(o, "auth_method",
                            s->auth_method[0] ? json_string(s->auth_method) : json_null());
        json_object_set_new(o, "provider", s->provider[0] ? json_string(s->provider) : json_null());
        json_object_set_new(o, "provider_version",
                            s->provider[0] && s->provider_version
                                ? json_integer(s->provider_version)
                                : json_null());
        json_object_set_new(o, "egress_address",
                            s->up_addr[0] ? json_string(s->up_addr) : json_null());
        json_object_set_new(o, "status", json_integer(s->status ? s->status : 200));
        json_object_set_new(o, "error", code ? json_string(code) : json_null());
        json_object_set_new(o, "message", msg ? json_string(msg) : json_null());
        json_object_set_new(o, "challenge",
                            s->challenge[0] ? json_string(s->challenge) : json_null());
        json_object_set_new(o, "would_send",
                            s->forwarded && !s->status ? json_string(s->up_url) : json_null());
        if (token_note)
            json_object_set_new(o, "token", json_string(token_note));
        char *text = json_dumps(o, JSON_INDENT(2));
        if (text)
            printf("%s\n", text);
        free(text);
        json_decref(o);
    } else {
        printf("request:     %s %s (%s)\n", in->method, in->url, mode);
        if (token_note)
            printf("token:       %s\n", token_note);
        printf("principal:   %s\n", principal[0] ? principal : "none");
        printf("target:      %s%s%s%s\n", s->target[0] ? s->target : "none", s->type[0] ? " (" : "",
               s->type, s->type[0] ? ")" : "");
        printf("policy rule: %s\n", s->rule[0] ? s->rule : "none");
        if (s->provider[0])
            printf("credential:  %s provider '%s'%s", s->auth_method, s->provider,
                   s->provider_version ? "" : " (not taken)\n");
        if (s->provider[0] && s->provider_version)
            printf(" version %u\n", s->provider_version);
        if (!s->provider[0])
            printf("credential:  %s\n",
                   s->auth_method[0] && strcmp(s->auth_method, "none") ? "not reached" : "none");
        printf("egress:      %s\n", s->up_addr[0]                            ? s->up_addr
                                    : code && !strcmp(code, "egress_denied") ? "refused"
                                                                             : "not reached");
        if (s->status) {
            printf("result:      %d %s\n", s->status, code ? code : "");
            if (msg)
                printf("message:     %s\n", msg);
            if (s->challenge[0])
                printf("challenge:   %s\n", s->challenge);
        } else {
            printf("result:      would forward: %s %s\n",
                   s->up_method[0] ? s->up_method : in->method, s->up_url);
        }
    }
    json_decref(err);
}

int al_cmd_explain(int argc, char **argv)
{
    const char *config = NULL, *format = "text", *token_arg = NULL, *principal_arg = NULL,
               *state_flag = NULL, *tool = NULL;
    const char *pos[2];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int takes = !strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "--format") ||
                    !strcmp(a, "--token") || !strcmp(a, "--principal") ||
                    !strcmp(a, "--state-dir") || !strcmp(a, "--mcp-tool");
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (takes) {
            if (i + 1 >= argc) {
                fprintf(stderr, "airlock explain: %s needs a value\n\n", a);
                usage(stderr);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "-c") || !strcmp(a, "--config"))
                config = v;
            else if (!strcmp(a, "--format"))
                format = v;
            else if (!strcmp(a, "--token"))
                token_arg = v;
            else if (!strcmp(a, "--principal"))
                principal_arg = v;
            else if (!strcmp(a, "--state-dir"))
                state_flag = v;
            else
                tool = v;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "airlock explain: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "airlock explain: too many arguments\n\n");
            usage(stderr);
            return 2;
        }
    }
    if (!config || npos != 2 || (strcmp(format, "text") && strcmp(format, "json")) ||
        (token_arg && principal_arg)) {
        fprintf(stderr, "airlock explain: %s\n\n",
                !config                      ? "-c FILE is required"
                : npos != 2                  ? "give METHOD and URL"
                : token_arg && principal_arg ? "--token and --principal exclude each other"
                                             : "--format must be text or json");
        usage(stderr);
        return 2;
    }
    al_diags d;
    al_diags_init(&d);
    al_table *t = NULL;
    if (al_table_load(config, &t, &d) != AL_OK) {
        al_diags_print(&d, stderr);
        al_diags_free(&d);
        return 1;
    }
    al_diags_free(&d);
    int status = 1;
    char *token = NULL, *state_dir = NULL;
    const char *token_note = NULL;
    char token_err[600] = "";
    al_oidc *oidc = NULL;
    al_authz_state st;
    memset(&st, 0, sizeof st);
    al_cred_cache *creds = NULL;
    al_resolver *resolver = NULL;
    struct ev_loop *loop = NULL;
    seen s;
    memset(&s, 0, sizeof s);
    al_buf_init(&s.body, 1 << 16);
    run_in in = {.method = pos[0], .url = pos[1]};
    in.gateway = pos[1][0] == '/';
    in.listen = t->listen.proxy;
    in.tool = tool;
    if (!in.gateway && split_url(&in) != 0) {
        fprintf(stderr, "airlock explain: URL must be http://host/path, https://host/path or "
                        "/t/<target>/path\n");
        status = 2;
        goto out;
    }
    if (token_arg && !(token = read_token(token_arg))) {
        fprintf(stderr, "airlock explain: cannot read the token from %s\n", token_arg);
        goto out;
    }
    in.token = token;
    if (principal_arg && !(st.assume = parse_principal(principal_arg))) {
        fprintf(stderr, "airlock explain: --principal needs K=V pairs with sub= or client_id=\n");
        status = 2;
        goto out;
    }
    if (t->inbound.mode == AL_INBOUND_JWT && token) {
        al_inbound *inb = NULL;
        if (al_oidc_new(&oidc) != AL_OK || al_inbound_new(t, oidc, &inb) != AL_OK)
            goto out;
        al_fetch_set_guard(al_oidc_fetcher(oidc), al_egress_guard_public, NULL);
        if (al_inbound_prime(inb, token_err, sizeof token_err) != AL_OK)
            token_note = token_err; /* tokens are then refused keys_unavailable, as in serve */
        atomic_store(&st.inbound, inb);
    }
    state_dir = al_cli_state_dir(state_flag, config);
    if (state_dir && (al_store_choose_table(t) != AL_OK ||
                      al_cred_cache_open(state_dir, &creds) != AL_OK))
        creds = NULL;
    loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop || al_resolver_new(loop, &resolver) != AL_OK)
        goto out;
    explain_owner owner = {t};
    al_req_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.loop = loop;
    ctx.resolver = resolver;
    ctx.upstream = &capture_ops;
    for (size_t m = 0; m < AL_AUTH_COUNT; m++)
        ctx.cred[m] = al_credsrc_store(creds);
    ctx.hooks.decide = al_authz_hook_decide;
    ctx.hooks.decide_arg = &st;
    ctx.hooks.finished = on_finished;
    ctx.hooks.finished_arg = &s;
    ctx.ops = &explain_ctx_ops;
    ctx.owner = &owner;
    ctx.table = t;
    s.loop = loop;
    run_request(&ctx, &s, &in);
    al_req_ctx_release(&ctx);
    print_result(&s, &in, format, token_note);
    status = s.status ? 1 : 0;
out:
    if (resolver)
        al_resolver_free(resolver);
    if (loop)
        ev_loop_destroy(loop);
    if (creds)
        al_cred_cache_close(creds);
    al_inbound_free(atomic_load(&st.inbound));
    al_oidc_free(oidc);
    al_principal_unref(st.assume);
    al_buf_free(&s.body, 0);
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
    free(state_dir);
    al_table_unref(t);
    return status;
}
