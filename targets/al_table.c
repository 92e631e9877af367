/* al_table: loading and validating the target table into an immutable snapshot.
 *
 * Owns: reading the file (bounded), libyaml parsing with marks, the checks that
 * span keys (URLs, Lambda ARNs, the type/method matrix, per-method fields and
 * defaults, duplicate names, routing conflicts), the snapshot's lifetime
 * (refcount) and its routing index. The walk over keys is al_schema's.
 *
 * Invariants: a load either returns a complete snapshot with no diagnostics or no
 * snapshot and every problem found (sorted by line:column); a snapshot is never
 * modified after al_table_load returns, so workers share it without locks and free
 * it with the last al_table_unref. The table holds no secrets: providers are names.
 * Diagnostics never echo a URL (it might carry user info). */
#include "al_table.h"
#include "al_matrix.h"
#include "al_router.h"
#include "al_schema.h"
#include "common/al_err.h"
#include "common/al_hex.h"
#include "common/al_reqtarget.h"
#include "common/al_return_url.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define MAX_FILE_BYTES (16u << 20) /* a table bigger than this is a mistake */
#define MAX_TARGETS    100000
#define MAX_URL        2048
#define NAME_MAX_LEN   63
#define PROVIDER_MAX   128 /* AL_STORE_NAME_MAX in identity/ */
#define ENV_MAX        64
#define MAX_DEPTH      32 /* the schema needs 5; anything deeper is not a table */

/* ---- diagnostics -------------------------------------------------------------- */

void al_diags_init(al_diags *d)
{
    memset(d, 0, sizeof *d);
}

void al_diags_add(al_diags *d, const char *file, int line, int column, const char *fmt, ...)
{
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        al_diag *items = realloc(d->items, cap * sizeof *items);
        if (!items)
            return; /* out of memory: the load still fails, with fewer messages */
        d->items = items;
        d->cap = cap;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    al_diag *it = &d->items[d->count];
    it->file = strdup(file ? file : "-");
    it->message = strdup(msg);
    it->line = line;
    it->column = column;
    if (!it->file || !it->message) {
        free(it->file);
        free(it->message);
        return;
    }
    d->count++;
}

void al_diags_print_as(const al_diags *d, void *stdio_file, const char *kind)
{
    FILE *f = stdio_file;
    for (size_t i = 0; i < d->count; i++) {
        const al_diag *it = &d->items[i];
        if (it->line > 0)
            fprintf(f, "%s:%d:%d: %s: %s\n", it->file, it->line, it->column, kind, it->message);
        else
            fprintf(f, "%s: %s: %s\n", it->file, kind, it->message);
    }
}

void al_diags_print(const al_diags *d, void *stdio_file)
{
    al_diags_print_as(d, stdio_file, "error");
}

void al_diags_free(al_diags *d)
{
    for (size_t i = 0; i < d->count; i++) {
        free(d->items[i].file);
        free(d->items[i].message);
    }
    free(d->items);
    al_diags_init(d);
}

/* Stable insertion sort by position from index `from` on: diagnostics are found per
 * pass (keys, then cross-target checks), but people read them top to bottom. */
static void diags_sort(al_diags *d, size_t from)
{
    for (size_t i = from + 1; i < d->count; i++) {
        al_diag x = d->items[i];
        size_t j = i;
        while (j > from && (d->items[j - 1].line > x.line || (d->items[j - 1].line == x.line &&
                                                              d->items[j - 1].column > x.column))) {
            d->items[j] = d->items[j - 1];
            j--;
        }
        d->items[j] = x;
    }
}

/* ---- snapshot lifetime ---------------------------------------------------------- */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static void target_free(al_target *t)
{
    free(t->name);
    free(t->url);
    free(t->scheme);
    free(t->host);
    free(t->base_path);
    free(t->function_arn);
    free(t->endpoint);
    free(t->environment);
    free(t->ca_file);
    al_auth *a = &t->auth;
    free_strv(a->providers, a->provider_count);
    free(a->provider_marks);
    free(a->fallback_provider);
    free(a->name);
    free(a->prefix);
    free_strv(a->scopes, a->scope_count);
    free_strv(a->return_urls, a->return_url_count);
    free(a->return_url_marks);
    free(a->audience);
    free(a->resource);
    for (size_t i = 0; i < a->custom_parameter_count; i++) {
        free(a->custom_parameters[i].key);
        free(a->custom_parameters[i].value);
    }
    free(a->custom_parameters);
    free(a->region);
    free(a->service);
    free(a->source);
    free(a->role_arn);
    free(a->external_id);
}

static void table_free(al_table *t)
{
    if (!t)
        return;
    al_router_free(t->router);
    for (size_t i = 0; i < t->target_count; i++)
        target_free(&t->targets[i]);
    free(t->targets);
    free(t->path);
    free(t->state_dir);
    free(t->environment);
    free(t->listen.proxy);
    free(t->listen.tls);
    free(t->listen.admin);
    free_strv(t->egress.passthrough, t->egress.passthrough_count);
    free(t->audit.file);
    free(t->store.dsn_file);
    free(t->store.dsn_env);
    free(t->inbound.discovery_url);
    free_strv(t->inbound.allowed_audiences, t->inbound.allowed_audience_count);
    free_strv(t->inbound.allowed_clients, t->inbound.allowed_client_count);
    free(t->inbound.ca_file);
    free(t->inbound.user_header);
    free_strv(t->inbound.user_header_trusted, t->inbound.user_header_trusted_count);
    free(t->identity.public_base_url);
    for (size_t i = 0; i < t->policy.rule_count; i++) {
        al_policy_rule *r = &t->policy.rules[i];
        free(r->name);
        free_strv(r->subjects, r->subject_count);
        free_strv(r->clients, r->client_count);
        for (size_t j = 0; j < r->claim_count; j++) {
            free(r->claims[j].key);
            free(r->claims[j].value);
        }
        free(r->claims);
        free_strv(r->targets, r->target_count);
        free(r->target_marks);
        free_strv(r->methods, r->method_count);
        free_strv(r->paths, r->path_count);
        free_strv(r->mcp_tools, r->mcp_tool_count);
    }
    free(t->policy.rules);
    al_diags_free(&t->warnings);
    free(t);
}

al_table *al_table_ref(al_table *t)
{
    if (t)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void al_table_unref(al_table *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        table_free(t);
}

/* ---- small checks ----------------------------------------------------------------- */

static int name_ok(const char *s, size_t max, const char *extra)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || !isalnum((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
            return 0;
    return 1;
}

static int target_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (ch == '-' && i > 0)))
            return 0;
    }
    return 1;
}

/* AWS region: two letters, one or more "-word", then "-digits" (us-gov-west-1). */
static int region_ok(const char *s, size_t n)
{
    size_t i = 0, parts = 0;
    if (n < 4 || !islower((unsigned char)s[0]) || !islower((unsigned char)s[1]) || s[2] != '-')
        return 0;
    i = 2;
    while (i < n && s[i] == '-') {
        size_t start = ++i;
        while (i < n && islower((unsigned char)s[i]))
            i++;
        if (i == start)
            break;
        parts++;
    }
    if (i >= n || parts == 0)
        return 0;
    /* the last "-" was consumed by the loop; digits follow */
    size_t d = i;
    while (i < n && isdigit((unsigned char)s[i]))
        i++;
    return i == n && i > d && i - d <= 2 && s[d - 1] == '-';
}

static int all_chars(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
            return 0;
    return 1;
}

/* Checks arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]; on success copies
 * the region. Returns NULL or what is wrong. */
static const char *lambda_arn_check(const char *arn, char *region, size_t rcap)
{
    const char *part[9];
    size_t len[9], n = 0;
    const char *p = arn;
    while (n < 9) {
        const char *c = strchr(p, ':');
        part[n] = p;
        len[n] = c ? (size_t)(c - p) : strlen(p);
        n++;
        if (!c)
            break;
        p = c + 1;
    }
    if (n < 7 || n > 8 || strncmp(arn, "arn:", 4) != 0)
        return "not a Lambda function ARN";
    if (len[1] != 3 || strncmp(part[1], "aws", 3) != 0)
        return "partition must be 'aws'";
    if (len[2] != 6 || strncmp(part[2], "lambda", 6) != 0)
        return "service must be 'lambda'";
    if (!region_ok(part[3], len[3]))
        return "region is not an AWS region (e.g. us-east-1)";
    if (len[4] != 12 || !all_chars(part[4], 12, "") || !isdigit((unsigned char)part[4][0]))
        return "account id must be 12 digits";
    for (size_t i = 0; i < 12; i++)
        if (!isdigit((unsigned char)part[4][i]))
            return "account id must be 12 digits";
    if (len[5] != 8 || strncmp(part[5], "function", 8) != 0)
        return "resource type must be 'function'";
    if (len[6] == 0 || len[6] > 64 || !all_chars(part[6], len[6], "-_"))
        return "function name must be 1-64 letters, digits, '-' or '_'";
    if (n == 8 && !(len[7] == 7 && strncmp(part[7], "$LATEST", 7) == 0) &&
        (len[7] == 0 || len[7] > 128 || !all_chars(part[7], len[7], "-_")))
        return "qualifier must be a version, an alias or $LATEST";
    if (len[3] >= rcap)
        return "region too long";
    memcpy(region, part[3], len[3]);
    region[len[3]] = '\0';
    return NULL;
}

static char *dupfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dupfmt(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* A path from the table, relative to the table file's directory (NULL = as is). */
static char *resolve(const char *base_dir, const char *path)
{
    if (!base_dir || path[0] == '/')
        return strdup(path);
    return dupfmt("%s/%s", base_dir, path);
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return NULL;
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* ---- loader state -------------------------------------------------------------- */

typedef struct loader {
    al_schema_ctx c;
    const char *base_dir; /* NULL: relative paths stay as written */
    al_mark *name_marks;  /* per target */
    al_mark *url_marks;
    size_t marks_cap;
    int oom;
} loader;

static al_mark seen_val(const al_schema_ctx *c, enum al_schema_id id)
{
    return c->seen[id].value;
}

static al_mark seen_key(const al_schema_ctx *c, enum al_schema_id id)
{
    return c->seen[id].key;
}

/* Parses an upstream URL into t->scheme/host/port/base_path/url. `what` names the
 * key for messages. Never echoes the URL. */
static int set_upstream(loader *L, al_target *t, const char *label, const char *what, al_mark at,
                        const char *url)
{
    al_schema_ctx *c = &L->c;
    CURLU *h = NULL;
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *part = NULL;
    int rc = AL_ERR_CONFIG;
    size_t n = strlen(url);
    if (n > MAX_URL) {
        al_schema_error_at(c, at, "target %s: '%s' is too long (at most %d bytes)", label, what,
                           MAX_URL);
        goto out;
    }
    int secure = !strncasecmp(url, "https://", 8);
    if (!secure && strncasecmp(url, "http://", 7) != 0) {
        al_schema_error_at(c, at, "target %s: '%s' must start with https:// (or http://)", label,
                           what);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f) {
            al_schema_error_at(c, at, "target %s: '%s' contains a space or control character",
                               label, what);
            goto out;
        }
    const char *auth_start = url + (secure ? 8 : 7);
    size_t auth_len = strcspn(auth_start, "/?#");
    if (auth_len == 0) {
        al_schema_error_at(c, at, "target %s: '%s' has no host", label, what);
        goto out;
    }
    if (memchr(auth_start, '@', auth_len)) {
        al_schema_error_at(c, at,
                           "target %s: '%s' must not contain user info (credentials belong in "
                           "a provider)",
                           label, what);
        goto out;
    }
    /* The base path as written (curl would resolve "/v1/../x" on its own): the same rule
     * as request paths, and no encoded '/' or '\' at all, so the prefix the router
     * matches is the one every upstream sees. */
    const char *raw_path = auth_start + auth_len;
    if (al_reqtarget_base_path(raw_path, strcspn(raw_path, "?#"), NULL) != AL_OK) {
        al_schema_error_at(c, at,
                           "target %s: '%s' has a base path that is not plain: a '.' or '..' "
                           "segment in some spelling (%%2e, %%252e, '..;'), an encoded '/' or "
                           "'\\' (%%2f, %%5c), or a byte a URL path may not hold; write the "
                           "path as the upstream serves it, e.g. /v1",
                           label, what);
        goto out;
    }
    if (!(h = curl_url())) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    CURLUcode uc = curl_url_set(h, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        const char *why = uc == CURLUE_BAD_PORT_NUMBER ? "bad port number"
                          : uc == CURLUE_NO_HOST       ? "no host"
                                                       : curl_url_strerror(uc);
        al_schema_error_at(c, at, "target %s: '%s' is not a valid URL: %s", label, what, why);
        goto out;
    }
    if (curl_url_get(h, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK) {
        al_schema_error_at(c, at, "target %s: '%s' must not contain a fragment ('#...')", label,
                           what);
        goto out;
    }
    if (curl_url_get(h, CURLUPART_QUERY, &part, 0) == CURLUE_OK) {
        al_schema_error_at(c, at, "target %s: '%s' must not contain a query ('?...')", label, what);
        goto out;
    }
    if (curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0]) {
        al_schema_error_at(c, at, "target %s: '%s' has no host", label, what);
        goto out;
    }
    if (curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_PATH, &path, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        al_schema_error_at(c, at, "target %s: '%s' is not a valid URL", label, what);
        goto out;
    }
    long pn = strtol(port, NULL, 10);
    if (pn <= 0 || pn > 65535) {
        al_schema_error_at(c, at, "target %s: '%s' is not a valid URL: bad port number", label,
                           what);
        goto out;
    }
    /* Host: bracketed IPv6 or a DNS name / IPv4; lower-case, brackets dropped. */
    size_t hl = strlen(host);
    int v6 = host[0] == '[';
    if (v6) {
        if (hl < 3 || host[hl - 1] != ']' || !all_chars(host + 1, hl - 2, ":.")) {
            al_schema_error_at(c, at, "target %s: '%s' has an invalid IPv6 host", label, what);
            goto out;
        }
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    } else if (!all_chars(host, hl, ".-_")) {
        al_schema_error_at(c, at, "target %s: '%s' has characters not allowed in a host name",
                           label, what);
        goto out;
    }
    for (char *q = host; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    size_t pl = strlen(path);
    while (pl > 0 && path[pl - 1] == '/')
        path[--pl] = '\0';
    int default_port = (secure && pn == 443) || (!secure && pn == 80);
    char portbuf[8] = "";
    if (!default_port)
        snprintf(portbuf, sizeof portbuf, ":%ld", pn);
    free(t->scheme);
    free(t->host);
    free(t->base_path);
    free(t->url);
    t->scheme = strdup(secure ? "https" : "http");
    t->host = strdup(host);
    t->base_path = strdup(path);
    t->port = (uint16_t)pn;
    t->url = dupfmt("%s://%s%s%s%s%s", secure ? "https" : "http", v6 ? "[" : "", host,
                    v6 ? "]" : "", portbuf, path);
    if (!t->scheme || !t->host || !t->base_path || !t->url) {
        rc = AL_ERR_NOMEM;
        L->oom = 1;
        goto out;
    }
    if (!secure && !t->allow_insecure_upstream)
        al_schema_error_at(c, at,
                           "target %s: upstream is http://, so credentials would cross the "
                           "network in clear text; use https:// or set "
                           "allow_insecure_upstream: true",
                           label);
    rc = AL_OK;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(part);
    curl_url_cleanup(h);
    return rc;
}

static const char *method_list(unsigned mask, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int m = 0; m < AL_AUTH_COUNT; m++)
        if (mask & (1u << m)) {
            int w = snprintf(buf + off, cap - off, "%s%s", off ? ", " : "",
                             al_auth_method_name((enum al_auth_method)m));
            if (w < 0 || (size_t)w >= cap - off)
                break;
            off += (size_t)w;
        }
    return buf;
}

static int header_token_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return 0;
    return 1;
}

/* Header names the key cannot travel in: hop-by-hop headers (RFC 9110 §7.6.1) and
 * Proxy-*, which airlock strips; framing and routing headers (Host, Content-Length,
 * Transfer-Encoding, Expect, HTTP2-Settings), which airlock and libcurl set
 * themselves. A table naming one would load and silently never send the key. */
static int header_reserved(const char *name)
{
    static const char *const reserved[] = {
        "host",    "connection",        "keep-alive", "te",         "trailer",
        "upgrade", "transfer-encoding", "content-length", "expect", "http2-settings",
    };
    if (name[0] == ':' || !strncasecmp(name, "proxy-", 6))
        return 1;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (!strcasecmp(name, reserved[i]))
            return 1;
    return 0;
}

/* Per-method checks and defaults of one target's auth block. */
static void check_auth(loader *L, al_target *t, const char *label, yaml_node_t *node)
{
    al_schema_ctx *c = &L->c;
    al_auth *a = &t->auth;
    char buf[128];
    if (!seen_key(c, AL_S_T_AUTH).line)
        return; /* no auth block: no credential */
    if (!seen_key(c, AL_S_A_METHOD).line) {
        al_schema_error_at(c, seen_key(c, AL_S_T_AUTH),
                           "target %s: 'auth' needs a 'method' (iam, oauth2_2lo, oauth2_3lo or "
                           "api_key)",
                           label);
        return;
    }
    if ((unsigned)a->method >= AL_AUTH_COUNT)
        return; /* the value was bad; already reported */
    a->method_mark = seen_val(c, AL_S_A_METHOD);
    if (seen_key(c, AL_S_T_TYPE).line && (unsigned)t->type < AL_TYPE_COUNT &&
        !al_matrix_allows(t->type, a->method)) {
        char allowed[128];
        al_matrix_allowed_methods(t->type, allowed, sizeof allowed);
        al_schema_error_at(c, seen_val(c, AL_S_A_METHOD),
                           "target %s: type '%s' does not allow auth method '%s' (%s allows: %s)",
                           label, al_target_type_name(t->type), al_auth_method_name(a->method),
                           al_target_type_name(t->type), allowed);
    }
    /* Fields of other methods. */
    for (size_t id = AL_S_A_METHOD; id < AL_S_COUNT; id++) {
        const al_schema_row *r = &al_schema_rows[id];
        if (!r->methods || !c->seen[id].key.line || (r->methods & (1u << a->method)))
            continue;
        if (id == AL_S_A_LOCATION && a->location == AL_KEY_IN_HEADER)
            continue; /* "header" is where every other method puts its credential anyway */
        al_schema_error_at(c, c->seen[id].key,
                           "target %s: '%s%s' does not apply to auth method '%s' (only to: %s)",
                           label, al_schema_key(r), id == AL_S_A_LOCATION ? ": query" : "",
                           al_auth_method_name(a->method),
                           method_list(r->methods, buf, sizeof buf));
    }
    /* Providers. */
    if (a->method != AL_AUTH_IAM && !seen_key(c, AL_S_A_PROVIDER).line)
        al_schema_error_at(c, seen_key(c, AL_S_A_METHOD),
                           "target %s: auth method '%s' needs a 'provider' (a credential provider "
                           "in the identity store)",
                           label, al_auth_method_name(a->method));
    for (size_t i = 0; i < a->provider_count; i++)
        if (!name_ok(a->providers[i], PROVIDER_MAX, "-_."))
            al_schema_error_at(c, a->provider_marks[i],
                               "target %s: provider '%s' is not a valid provider name "
                               "(letters, digits, '-', '_', '.')",
                               label, a->providers[i]);
    if (a->fallback_provider) {
        if (!name_ok(a->fallback_provider, PROVIDER_MAX, "-_."))
            al_schema_error_at(c, a->fallback_mark,
                               "target %s: fallback_provider '%s' is not a valid provider name",
                               label, a->fallback_provider);
        for (size_t i = 0; i < a->provider_count; i++)
            if (!strcmp(a->providers[i], a->fallback_provider))
                al_schema_error_at(c, a->fallback_mark,
                                   "target %s: fallback_provider '%s' is already a provider of "
                                   "this target",
                                   label, a->fallback_provider);
    }
    for (size_t i = 0; i < a->scope_count; i++)
        if (strpbrk(a->scopes[i], " \t\r\n\"\\"))
            al_schema_error_at(c, seen_val(c, AL_S_A_SCOPES),
                               "target %s: scope '%s' must not contain spaces or quotes", label,
                               a->scopes[i]);
    /* oauth2_3lo app binding: where the browser may go back to, checked now (exactly the
     * rule the callback applies to the URL an application asks for) */
    if (a->binding == AL_BINDING_APP && !a->return_url_count)
        al_schema_error_at(c, seen_val(c, AL_S_A_BINDING),
                           "target %s: binding 'app' needs 'return_urls' (the application's "
                           "URLs the user's browser may be sent back to with the session id)",
                           label);
    if (a->binding != AL_BINDING_APP && a->return_url_count)
        al_schema_error_at(c, seen_key(c, AL_S_A_RETURN_URLS),
                           "target %s: 'return_urls' is used only with 'binding: app'", label);
    for (size_t i = 0; i < a->return_url_count; i++) {
        char why[300];
        if (al_return_url_valid(a->return_urls[i], why, sizeof why) != AL_OK)
            al_schema_error_at(c,
                               a->return_url_marks ? a->return_url_marks[i]
                                                   : seen_val(c, AL_S_A_RETURN_URLS),
                               "target %s: return_urls[%zu] %s", label, i, why);
    }
    /* api_key defaults (AgentCore Gateway's API key configuration). */
    if (a->method == AL_AUTH_API_KEY) {
        int query = a->location == AL_KEY_IN_QUERY;
        if (!a->name && !(a->name = strdup(query ? "api_key" : "Authorization")))
            L->oom = 1;
        if (a->name && !query && header_reserved(a->name))
            al_schema_error_at(c, seen_val(c, AL_S_A_NAME),
                               "target %s: auth.name '%s' is a hop-by-hop, framing or pseudo "
                               "header that airlock removes or sets itself, so the key would "
                               "never reach the upstream; use the header the API documents (e.g. "
                               "Authorization or X-Api-Key)",
                               label, a->name);
        else if (a->name && !(query ? (*a->name && all_chars(a->name, strlen(a->name), "-._~"))
                                    : header_token_ok(a->name)))
            al_schema_error_at(c, seen_val(c, AL_S_A_NAME),
                               "target %s: '%s' is not a valid %s name", label, a->name,
                               query ? "query parameter" : "header");
        if (!a->prefix && !(a->prefix = strdup(
                                a->name && !strcasecmp(a->name, "Authorization") ? "Bearer " : "")))
            L->oom = 1;
        for (const char *q = a->prefix; q && *q; q++)
            if ((unsigned char)*q < 0x20 || *q == 0x7f) {
                al_schema_error_at(c, seen_val(c, AL_S_A_PREFIX),
                                   "target %s: 'prefix' must not contain control characters",
                                   label);
                break;
            }
        /* `prefix: token` loses its trailing space to YAML (plain scalars are trimmed):
         * the header would go out as "tokenKEY". A prefix ending in a letter or digit is
         * a scheme name missing its space ("Token token=" is a complete one). Legal, so
         * a warning, not an error. */
        size_t pl = a->prefix ? strlen(a->prefix) : 0;
        al_mark pm = seen_val(c, AL_S_A_PREFIX);
        if (pl && pm.line && isalnum((unsigned char)a->prefix[pl - 1]) && a->name &&
            !strcasecmp(a->name, "Authorization"))
            al_diags_add(&c->table->warnings, c->file, pm.line, pm.column,
                         "target %s: prefix '%s' of the Authorization header does not end in a "
                         "space, so the header goes out as '%s<key>' (YAML drops trailing "
                         "spaces of unquoted values); write prefix: \"%s \"",
                         label, a->prefix, a->prefix, a->prefix);
    }
    /* iam: region and signing name, derived where the type allows. */
    if (a->method == AL_AUTH_IAM) {
        if (a->region && !region_ok(a->region, strlen(a->region)))
            al_schema_error_at(c, seen_val(c, AL_S_A_REGION),
                               "target %s: region '%s' is not an AWS region (e.g. us-east-1)",
                               label, a->region);
        if (!a->region && t->type == AL_TYPE_API_GATEWAY && t->host) {
            const char *e = strstr(t->host, ".execute-api.");
            if (e) {
                const char *r0 = e + 13, *r1 = strchr(r0, '.');
                if (r1 && region_ok(r0, (size_t)(r1 - r0)) &&
                    !(a->region = strndup(r0, (size_t)(r1 - r0))))
                    L->oom = 1;
            }
        }
        if (!a->region && t->type != AL_TYPE_LAMBDA)
            al_schema_error_at(c, seen_key(c, AL_S_A_METHOD), "target %s: iam needs 'region'%s",
                               label,
                               t->type == AL_TYPE_API_GATEWAY
                                   ? " (the host is not <id>.execute-api.<region>.amazonaws.com)"
                                   : "");
        if (a->service && !name_ok(a->service, 64, "-"))
            al_schema_error_at(c, seen_val(c, AL_S_A_SERVICE),
                               "target %s: service '%s' is not a signing name (e.g. execute-api)",
                               label, a->service);
        const char *derived = t->type == AL_TYPE_LAMBDA        ? "lambda"
                              : t->type == AL_TYPE_API_GATEWAY ? "execute-api"
                                                               : NULL;
        if (!a->service && derived && !(a->service = strdup(derived)))
            L->oom = 1;
        if (!a->service && !derived)
            al_schema_error_at(c, seen_key(c, AL_S_A_METHOD),
                               "target %s: iam on type '%s' needs 'service' (the SigV4 signing "
                               "name)",
                               label, al_target_type_name(t->type));
        /* Credentials: the store's providers, or another source; a role on top. */
        if (a->source && strcmp(a->source, "store") && a->provider_count)
            al_schema_error_at(c, seen_val(c, AL_S_A_SOURCE),
                               "target %s: source '%s' takes no 'provider' (the credentials come "
                               "from the %s); drop one of them",
                               label, a->source, a->source);
        if (a->source && !strcmp(a->source, "store") && !a->provider_count)
            al_schema_error_at(c, seen_val(c, AL_S_A_SOURCE),
                               "target %s: source 'store' needs a 'provider' (an aws provider in "
                               "the identity store)",
                               label);
        if (!a->source && !(a->source = strdup(a->provider_count ? "store" : "environment")))
            L->oom = 1;
        if (a->role_arn && (strncmp(a->role_arn, "arn:aws", 7) || !strstr(a->role_arn, ":role/") ||
                            strpbrk(a->role_arn, " \t\r\n")))
            al_schema_error_at(c, seen_val(c, AL_S_A_ROLE_ARN),
                               "target %s: role_arn '%s' is not a role ARN "
                               "(arn:aws:iam::ACCOUNT:role/NAME)",
                               label, a->role_arn);
        if (a->external_id && !a->role_arn)
            al_schema_error_at(c, seen_val(c, AL_S_A_EXTERNAL_ID),
                               "target %s: external_id needs role_arn (it is a parameter of "
                               "AssumeRole)",
                               label);
        if (!seen_key(c, AL_S_A_MAX_BODY_BYTES).line)
            a->max_body_bytes = (uint32_t)al_schema_rows[AL_S_A_MAX_BODY_BYTES].def;
    }
    (void)node;
}

/* Called by the walker after each target mapping. */
static void on_target(al_schema_ctx *c, yaml_node_t *node, void *arg)
{
    loader *L = arg;
    al_table *tab = c->table;
    al_target *t = c->target;
    size_t idx = (size_t)(t - tab->targets);
    char label[96];
    al_mark start = {t->line, t->column};

    if (idx >= L->marks_cap) {
        size_t cap = L->marks_cap ? L->marks_cap * 2 : 16;
        al_mark *nm = realloc(L->name_marks, cap * sizeof *nm);
        if (nm)
            L->name_marks = nm;
        al_mark *um = nm ? realloc(L->url_marks, cap * sizeof *um) : NULL;
        if (!nm || !um) {
            L->oom = 1;
            return;
        }
        L->url_marks = um;
        L->marks_cap = cap;
    }
    L->name_marks[idx] = seen_val(c, AL_S_T_NAME);
    L->url_marks[idx] = seen_val(c, AL_S_T_URL);

    if (t->name)
        snprintf(label, sizeof label, "'%.63s'", t->name);
    else
        snprintf(label, sizeof label, "#%zu", idx + 1);
    if (!seen_key(c, AL_S_T_NAME).line)
        al_schema_error_at(c, start, "target %s: missing 'name'", label);
    else if (t->name && !target_name_ok(t->name))
        al_schema_error_at(c, seen_val(c, AL_S_T_NAME),
                           "target name '%.80s' must match [a-z0-9][a-z0-9-]* (at most %d "
                           "characters)",
                           t->name, NAME_MAX_LEN);
    int have_type = (unsigned)t->type < AL_TYPE_COUNT; /* AL_TYPE_COUNT until parsed */
    if (!seen_key(c, AL_S_T_TYPE).line) {
        al_schema_error_at(c, start,
                           "target %s: missing 'type' (lambda, api_gateway, openapi, smithy or "
                           "mcp_server)",
                           label);
        t->type = AL_TYPE_COUNT;
    }
    /* Upstream. */
    if (have_type && t->type == AL_TYPE_LAMBDA) {
        if (seen_key(c, AL_S_T_URL).line)
            al_schema_error_at(c, seen_key(c, AL_S_T_URL),
                               "target %s: lambda targets take 'function_arn' (and an optional "
                               "'endpoint'), not 'url'",
                               label);
        char region[32];
        const char *why = NULL;
        if (!t->function_arn) {
            if (!seen_key(c, AL_S_T_FUNCTION_ARN).line)
                al_schema_error_at(c, start, "target %s: lambda needs 'function_arn'", label);
        } else if ((why = lambda_arn_check(t->function_arn, region, sizeof region))) {
            al_schema_error_at(c, seen_val(c, AL_S_T_FUNCTION_ARN),
                               "target %s: function_arn: %s (expected "
                               "arn:aws:lambda:REGION:ACCOUNT_ID:function:NAME[:QUALIFIER])",
                               label, why);
        } else {
            if (t->auth.region && t->auth.method == AL_AUTH_IAM &&
                strcmp(t->auth.region, region) != 0)
                al_schema_error_at(c, seen_val(c, AL_S_A_REGION),
                                   "target %s: region '%s' differs from the function ARN's "
                                   "region '%s'",
                                   label, t->auth.region, region);
            if (!t->auth.region && t->auth.method == AL_AUTH_IAM &&
                !(t->auth.region = strdup(region)))
                L->oom = 1;
            char *base = t->endpoint ? strdup(t->endpoint)
                                     : dupfmt("https://lambda.%s.amazonaws.com", region);
            if (!base) {
                L->oom = 1;
            } else {
                size_t bl = strlen(base);
                while (bl > 0 && base[bl - 1] == '/')
                    base[--bl] = '\0';
                int plain = !strncasecmp(base, "https://", 8) || !strncasecmp(base, "http://", 7);
                const char *rest = plain ? strstr(base, "://") + 3 : "";
                if (plain && strpbrk(rest, "?#")) {
                    al_schema_error_at(c, seen_val(c, AL_S_T_ENDPOINT),
                                       "target %s: 'endpoint' must not contain a query or "
                                       "fragment",
                                       label);
                } else if (!plain) {
                    al_schema_error_at(c, seen_val(c, AL_S_T_ENDPOINT),
                                       "target %s: 'endpoint' must start with https:// (or "
                                       "http://)",
                                       label);
                } else {
                    char *full = dupfmt("%s/2015-03-31/functions/%s", base, t->function_arn);
                    al_mark at = t->endpoint ? seen_val(c, AL_S_T_ENDPOINT)
                                             : seen_val(c, AL_S_T_FUNCTION_ARN);
                    if (!full)
                        L->oom = 1;
                    else
                        set_upstream(L, t, label, t->endpoint ? "endpoint" : "function_arn", at,
                                     full);
                    free(full);
                    L->url_marks[idx] = at;
                }
                free(base);
            }
        }
    } else if (have_type) {
        if (seen_key(c, AL_S_T_FUNCTION_ARN).line)
            al_schema_error_at(c, seen_key(c, AL_S_T_FUNCTION_ARN),
                               "target %s: only lambda targets take 'function_arn'", label);
        if (seen_key(c, AL_S_T_ENDPOINT).line)
            al_schema_error_at(c, seen_key(c, AL_S_T_ENDPOINT),
                               "target %s: only lambda targets take 'endpoint' (use 'url')", label);
        if (!seen_key(c, AL_S_T_URL).line)
            al_schema_error_at(c, start, "target %s: missing 'url' (the upstream base URL)", label);
        else if (t->url) {
            char *url = t->url;
            t->url = NULL;
            set_upstream(L, t, label, "url", seen_val(c, AL_S_T_URL), url);
            free(url);
        }
    }
    /* Environment. */
    const char *env = t->environment          ? t->environment
                      : c->table->environment ? c->table->environment
                                              : "default";
    t->environment_mark = t->environment ? seen_val(c, AL_S_T_ENVIRONMENT) : start;
    if (t->environment && !name_ok(t->environment, ENV_MAX, "-_."))
        al_schema_error_at(c, seen_val(c, AL_S_T_ENVIRONMENT),
                           "target %s: environment '%.80s' must be letters, digits, '-', '_' "
                           "or '.'",
                           label, t->environment);
    if (!t->environment && !(t->environment = strdup(env)))
        L->oom = 1;
    /* CA file. */
    if (t->ca_file) {
        char *p = resolve(L->base_dir, t->ca_file);
        if (!p) {
            L->oom = 1;
        } else {
            free(t->ca_file);
            t->ca_file = p;
            if (access(p, R_OK) != 0)
                al_schema_error_at(c, seen_val(c, AL_S_T_CA_FILE),
                                   "target %s: ca_file '%.200s' cannot be read: %s", label, p,
                                   strerror(errno));
        }
    }
    check_auth(L, t, label, node);
}

/* ---- cross-target and table-level checks ------------------------------------------ */

static int cmp_index(size_t a, size_t b)
{
    return (a > b) - (a < b);
}

static int cmp_name(const void *a, const void *b, void *arg)
{
    const al_table *t = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int r = strcmp(t->targets[i].name, t->targets[j].name);
    return r ? r : cmp_index(i, j);
}

static int same_upstream(const al_target *x, const al_target *y)
{
    return x->port == y->port && !strcmp(x->host, y->host) && !strcmp(x->base_path, y->base_path);
}

static int cmp_upstream(const void *a, const void *b, void *arg)
{
    const al_table *t = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    const al_target *x = &t->targets[i], *y = &t->targets[j];
    int r = strcmp(x->host, y->host);
    if (!r)
        r = (x->port > y->port) - (x->port < y->port);
    if (!r)
        r = strcmp(x->base_path, y->base_path);
    return r ? r : cmp_index(i, j);
}

/* Duplicate names and two targets on one host+port+path (the router could not tell
 * them apart). Sorting keeps this O(n log n) for big tables; the error goes on each
 * later definition, naming the first. */
static void check_unique(loader *L)
{
    al_table *t = L->c.table;
    size_t n = 0, *idx = calloc(t->target_count ? t->target_count : 1, sizeof *idx);
    if (!idx) {
        L->oom = 1;
        return;
    }
    for (size_t i = 0; i < t->target_count; i++)
        if (t->targets[i].name)
            idx[n++] = i;
    qsort_r(idx, n, sizeof *idx, cmp_name, t);
    for (size_t i = 1; i < n; i++) {
        size_t first = idx[i - 1];
        while (i < n && !strcmp(t->targets[idx[i]].name, t->targets[first].name)) {
            al_schema_error_at(&L->c, L->name_marks[idx[i]],
                               "duplicate target name '%.63s' (first defined at line %d)",
                               t->targets[first].name, L->name_marks[first].line);
            i++;
        }
    }
    n = 0;
    for (size_t i = 0; i < t->target_count; i++)
        if (t->targets[i].host && t->targets[i].base_path)
            idx[n++] = i;
    qsort_r(idx, n, sizeof *idx, cmp_upstream, t);
    for (size_t i = 1; i < n; i++) {
        const al_target *a = &t->targets[idx[i - 1]];
        while (i < n && same_upstream(&t->targets[idx[i]], a)) {
            const al_target *b = &t->targets[idx[i]];
            al_schema_error_at(&L->c, L->url_marks[idx[i]],
                               "target '%.63s': same upstream host, port and path as target "
                               "'%.63s' (line %d); requests could not be told apart",
                               b->name ? b->name : "?", a->name ? a->name : "?", a->line);
            i++;
        }
    }
    free(idx);
}

static void check_table(loader *L)
{
    al_schema_ctx *c = &L->c;
    al_table *t = c->table;
    struct {
        const char *addr;
        enum al_schema_id id;
    } ls[] = {{t->listen.proxy, AL_S_LISTEN_PROXY},
              {t->listen.tls, AL_S_LISTEN_TLS},
              {t->listen.admin, AL_S_LISTEN_ADMIN}};
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < i; j++)
            if (ls[i].addr && ls[j].addr && !strcmp(ls[i].addr, ls[j].addr))
                al_schema_error_at(c, seen_val(c, ls[i].id), "'%s' uses the same address as '%s'",
                                   al_schema_rows[ls[i].id].path, al_schema_rows[ls[j].id].path);
    if (t->environment && !name_ok(t->environment, ENV_MAX, "-_."))
        al_schema_error_at(c, seen_val(c, AL_S_ENVIRONMENT),
                           "environment '%.80s' must be letters, digits, '-', '_' or '.'",
                           t->environment);
    if (!t->environment && !(t->environment = strdup("default")))
        L->oom = 1;
    if (t->state_dir) {
        char *p = resolve(L->base_dir, t->state_dir);
        if (!p)
            L->oom = 1;
        else {
            free(t->state_dir);
            t->state_dir = p;
        }
    }
    t->audit.file_mark = seen_val(c, AL_S_AUDIT_FILE);
    if (t->audit.file) {
        char *p = resolve(L->base_dir, t->audit.file);
        if (!p)
            L->oom = 1;
        else {
            free(t->audit.file);
            t->audit.file = p;
        }
    }
}

/* A value that is a connection string, not a file name or a variable name: refused so
 * the password is not left in the table (the message never echoes it). */
static int looks_like_dsn(const char *v)
{
    return strstr(v, "://") || strstr(v, "password") || strstr(v, "host=") ||
           strstr(v, "dbname=") || strstr(v, "user=");
}

/* store: postgres needs exactly one source of its connection string; sqlite none. */
static void check_store(loader *L)
{
    al_schema_ctx *c = &L->c;
    al_store_cfg *st = &c->table->store;
    al_mark fm = seen_val(c, AL_S_STORE_DSN_FILE), em = seen_val(c, AL_S_STORE_DSN_ENV);
    if (st->dsn_file && looks_like_dsn(st->dsn_file))
        al_schema_error_at(c, fm,
                           "store.dsn_file names the file holding the connection string, but "
                           "this value looks like the connection string itself: never put it "
                           "(or its password) in the table");
    if (st->dsn_env) {
        int ok = (isalpha((unsigned char)st->dsn_env[0]) || st->dsn_env[0] == '_') &&
                 strlen(st->dsn_env) <= 128;
        for (const char *p = st->dsn_env; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || *p == '_';
        if (!ok)
            al_schema_error_at(c, em,
                               "store.dsn_env must be the NAME of an environment variable "
                               "(letters, digits, '_'), e.g. AIRLOCK_STORE_DSN%s",
                               looks_like_dsn(st->dsn_env)
                                   ? "; this looks like the connection string itself, which "
                                     "never goes in the table"
                                   : "");
    }
    if (st->backend == AL_STORE_POSTGRES) {
        if (!st->dsn_file && !st->dsn_env)
            al_schema_error_at(c, seen_val(c, AL_S_STORE_BACKEND),
                               "store.backend postgres needs store.dsn_file (a file holding the "
                               "connection string) or store.dsn_env (an environment variable "
                               "holding it)");
        else if (st->dsn_file && st->dsn_env)
            al_schema_error_at(c, em, "give store.dsn_file or store.dsn_env, not both");
    } else if (st->dsn_file || st->dsn_env) {
        al_schema_error_at(c, st->dsn_file ? fm : em,
                           "store.%s is for store.backend postgres (the backend is sqlite)",
                           st->dsn_file ? "dsn_file" : "dsn_env");
    }
    if (st->dsn_file) {
        char *p = resolve(L->base_dir, st->dsn_file);
        if (!p)
            L->oom = 1;
        else {
            free(st->dsn_file);
            st->dsn_file = p;
        }
    }
}

/* inbound: jwt needs its issuer; jwt keys without mode jwt are a mistake. */
static void check_inbound(loader *L)
{
    al_schema_ctx *c = &L->c;
    al_inbound_cfg *in = &c->table->inbound;
    if (in->mode != AL_INBOUND_JWT) {
        if (seen_key(c, AL_S_INBOUND_JWT).line)
            al_schema_error_at(c, seen_key(c, AL_S_INBOUND_JWT),
                               "'inbound.jwt' is set but inbound.mode is not jwt; add "
                               "`mode: jwt` or remove it");
        return;
    }
    if (!in->discovery_url) {
        al_schema_error_at(c, in->mode_mark,
                           "inbound.mode jwt needs inbound.jwt.discovery_url (the issuer's "
                           "https://.../.well-known/openid-configuration)");
        return;
    }
    al_mark m = seen_val(c, AL_S_INBOUND_JWT_DISCOVERY_URL);
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    if (!u) {
        L->oom = 1;
        return;
    }
    if (curl_url_set(u, CURLUPART_URL, in->discovery_url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        al_schema_error_at(c, m, "inbound.jwt.discovery_url is not a valid URL");
    else if (strcmp(scheme, "https") != 0 && !(in->allow_private_network && !strcmp(scheme, "http")))
        al_schema_error_at(c, m,
                           "inbound.jwt.discovery_url must be https:// (http:// only with "
                           "allow_private_network: true, for a test issuer)");
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    if (in->ca_file) {
        char *p = resolve(L->base_dir, in->ca_file);
        if (!p)
            L->oom = 1;
        else {
            free(in->ca_file);
            in->ca_file = p;
        }
    }
}

/* OAuth on behalf of a user (3LO): inbound.user_header is whole and needs principals to
 * trust; identity.public_base_url is an http(s) base; an oauth2_3lo target needs a way
 * to know the end user (inbound.mode jwt: the token's iss + sub, or a trusted
 * user_header), else every request would be anonymous and share one user's tokens. */
static void check_user_identity(loader *L)
{
    al_schema_ctx *c = &L->c;
    al_table *t = c->table;
    al_inbound_cfg *in = &t->inbound;
    al_mark uh = seen_key(c, AL_S_INBOUND_USER_HEADER);
    if (uh.line) {
        if (!in->user_header)
            al_schema_error_at(c, uh, "inbound.user_header needs 'name' (the header that names "
                                      "the end user, e.g. X-Airlock-User)");
        else if (!header_token_ok(in->user_header) || header_reserved(in->user_header) ||
                 !strcasecmp(in->user_header, "host") ||
                 !strcasecmp(in->user_header, "authorization") ||
                 !strcasecmp(in->user_header, "cookie") ||
                 !strcasecmp(in->user_header, "content-length") ||
                 !strcasecmp(in->user_header, "content-type"))
            al_schema_error_at(c, seen_val(c, AL_S_INBOUND_USER_HEADER_NAME),
                               "inbound.user_header.name '%.63s' must be a header name of "
                               "your own (not Host, Authorization, Cookie, a Proxy-* or a "
                               "framing header)",
                               in->user_header);
        if (!in->user_header_trusted_count)
            al_schema_error_at(c, uh,
                               "inbound.user_header needs 'trusted_clients' (the client_id of "
                               "each caller allowed to name users)");
        if (in->mode != AL_INBOUND_JWT)
            al_schema_error_at(c, uh,
                               "inbound.user_header is believed only from authenticated "
                               "trusted clients, and inbound.mode is not jwt; set inbound.mode: "
                               "jwt");
        in->user_header_mark = uh;
    }
    const char *base = t->identity.public_base_url;
    if (base) {
        size_t n = strlen(base);
        while (n && base[n - 1] == '/')
            t->identity.public_base_url[--n] = '\0';
        if ((strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) ||
            strpbrk(base, "?#\"' <>\\") || n < 9)
            al_schema_error_at(c, seen_val(c, AL_S_IDENTITY_PUBLIC_BASE_URL),
                               "identity.public_base_url must be an http:// or https:// URL "
                               "without query or fragment (e.g. https://airlock.example.com)");
    }
    for (size_t i = 0; i < t->target_count; i++) {
        const al_target *tg = &t->targets[i];
        /* (a target refused for its type or its missing provider already says why) */
        if (tg->auth.method != AL_AUTH_OAUTH2_3LO || !tg->auth.method_mark.line ||
            !tg->auth.provider_count || (unsigned)tg->type >= AL_TYPE_COUNT ||
            !al_matrix_allows(tg->type, tg->auth.method))
            continue;
        if (in->mode != AL_INBOUND_JWT)
            al_schema_error_at(c, tg->auth.method_mark,
                               "target '%.63s': oauth2_3lo acts for the end user of each "
                               "request, and with inbound.mode none airlock cannot know who "
                               "that is; set inbound.mode: jwt (the user is the token's iss + "
                               "sub, or inbound.user_header from a trusted client)",
                               tg->name ? tg->name : "?");
    }
}

int al_table_listen_addr(const char *listen, al_listen_addr *out)
{
    const char *lh;
    size_t lhl;
    uint16_t lport;
    char any[80];
    const char *l = listen;
    *out = (al_listen_addr){0};
    if (!listen)
        return AL_ERR_INVAL;
    if (listen[0] == '*') { /* "*:port": every address, as 0.0.0.0 */
        snprintf(any, sizeof any, "0.0.0.0%s", listen + 1);
        l = any;
    }
    if (al_reqtarget_authority(l, strlen(l), 0, &lh, &lhl, &lport) != AL_OK)
        return AL_ERR_INVAL;
    /* (a host in `any` is the literal's: it must not point into the stack) */
    *out = (al_listen_addr){l == any ? "0.0.0.0" : lh, lhl, lport};
    return AL_OK;
}

const char *al_table_public_base_url(const al_table *t, char *buf, size_t n)
{
    if (!n)
        return buf;
    buf[0] = '\0';
    if (t->identity.public_base_url) {
        snprintf(buf, n, "%s", t->identity.public_base_url);
        return buf;
    }
    const char *l = t->listen.proxy ? t->listen.proxy : t->listen.tls;
    const char *scheme = t->listen.proxy ? "http" : "https";
    if (!l)
        return buf;
    if (!strncmp(l, "0.0.0.0:", 8) || !strncmp(l, "*:", 2))
        snprintf(buf, n, "%s://127.0.0.1%s", scheme, strchr(l, ':'));
    else if (!strncmp(l, "[::]:", 5))
        snprintf(buf, n, "%s://[::1]%s", scheme, l + 4);
    else
        snprintf(buf, n, "%s://%s", scheme, l);
    return buf;
}

static const al_target *find_target(const al_table *t, const char *name)
{
    for (size_t i = 0; i < t->target_count; i++)
        if (t->targets[i].name && !strcmp(t->targets[i].name, name))
            return &t->targets[i];
    return NULL;
}

/* policy: every target a rule names exists; mcp_tools only on mcp_server targets;
 * principal selectors need an inbound mode that names principals. */
static void check_policy(loader *L)
{
    al_schema_ctx *c = &L->c;
    al_table *t = c->table;
    for (size_t i = 0; i < t->policy.rule_count; i++) {
        al_policy_rule *r = &t->policy.rules[i];
        if (t->inbound.mode == AL_INBOUND_NONE &&
            (r->subject_count || r->client_count || r->claim_count))
            al_schema_error_at(c, (al_mark){r->line, r->column},
                               "this rule names principals (subjects/clients/claims) but "
                               "inbound.mode is none, so no request has one; set inbound.mode: "
                               "jwt");
        for (size_t j = 0; j < r->target_count; j++) {
            const char *name = r->targets[j];
            al_mark m = r->target_marks ? r->target_marks[j] : (al_mark){r->line, r->column};
            if (!strcmp(name, "*"))
                continue;
            const al_target *tg = find_target(t, name);
            if (!tg) {
                const char *names[64];
                size_t n = 0;
                for (size_t k = 0; k < t->target_count && n < 64; k++)
                    if (t->targets[k].name)
                        names[n++] = t->targets[k].name;
                const char *near = al_schema_suggest(name, names, n);
                if (near)
                    al_schema_error_at(c, m, "policy rule names unknown target '%.63s'; did you "
                                             "mean '%s'?",
                                       name, near);
                else
                    al_schema_error_at(c, m, "policy rule names unknown target '%.63s'", name);
            } else if (r->mcp_tool_count && tg->type != AL_TYPE_MCP_SERVER) {
                al_schema_error_at(c, m,
                                   "this rule has mcp_tools but target '%.63s' is %s, not "
                                   "mcp_server; put MCP tools in a rule of their own",
                                   name, al_target_type_name(tg->type));
            }
        }
    }
}

/* ---- YAML --------------------------------------------------------------------------- */

static void yaml_problem(al_diags *d, const char *file, const yaml_parser_t *p)
{
    const char *what = p->error == YAML_MEMORY_ERROR ? "out of memory"
                       : p->problem                  ? p->problem
                                                     : "unknown error";
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
    if (p->error == YAML_READER_ERROR) {
        al_diags_add(d, file, 0, 0, "YAML error: %s at byte %zu", what, p->problem_offset);
        return;
    }
    if (p->context)
        al_diags_add(d, file, line, col, "YAML syntax error: %s (%s at line %d, column %d)", what,
                     p->context, (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    else
        al_diags_add(d, file, line, col, "YAML syntax error: %s", what);
}

/* libyaml has no nesting limit and its scanner slows down with depth, so one cheap
 * event pass refuses deep nesting before the document is built. Returns 0 or 1
 * (reported). Syntax errors are left to the load that follows. */
static int too_deep(const char *name, const char *data, size_t len, al_diags *d)
{
    yaml_parser_t p;
    yaml_event_t ev;
    int depth = 0, bad = 0;
    if (!yaml_parser_initialize(&p))
        return 0;
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    while (yaml_parser_parse(&p, &ev)) {
        yaml_event_type_t type = ev.type;
        if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) {
            if (++depth > MAX_DEPTH) {
                al_diags_add(d, name, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                             "nesting deeper than %d levels", MAX_DEPTH);
                bad = 1;
            }
        } else if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        yaml_event_delete(&ev);
        if (bad || type == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&p);
    return bad;
}

static int load_impl(const char *name, const char *data, size_t len, const char *base_dir,
                     al_table **out, al_diags *diags)
{
    yaml_parser_t p;
    yaml_document_t doc, extra;
    int have_doc = 0, rc = AL_ERR_CONFIG;
    size_t first_diag = diags->count;
    loader L;
    memset(&L, 0, sizeof L);
    al_table *t = calloc(1, sizeof *t);
    if (!t || !yaml_parser_initialize(&p)) {
        free(t);
        return AL_ERR_NOMEM;
    }
    atomic_init(&t->refs, 1);
    al_schema_apply_defaults(t);
    if (!(t->path = strdup(name))) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if (!al_matrix_get()) {
        al_diags_add(diags, name, 0, 0, "internal error: the embedded matrix is invalid: %s",
                     al_matrix_error());
        goto out;
    }
    if (too_deep(name, data, len, diags))
        goto out;
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    if (!yaml_parser_load(&p, &doc)) {
        yaml_problem(diags, name, &p);
        goto out;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    /* An empty document (0 bytes, blanks, comments, a bare null) is what a truncated or
     * half-written file looks like: refused, so a reload never swaps a working table
     * for "0 targets". A table with no targets must say so (`targets: []`). */
    if (al_schema_is_null(root)) {
        al_diags_add(diags, name, 1, 1,
                     "the table is empty (no listen:, no targets:); write `targets: []` for a "
                     "table without targets");
        goto out;
    }
    if (root) {
        if (!yaml_parser_load(&p, &extra)) {
            yaml_problem(diags, name, &p);
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&extra);
            if (r2)
                al_diags_add(diags, name, (int)r2->start_mark.line + 1,
                             (int)r2->start_mark.column + 1,
                             "only one YAML document per table file ('---' starts another)");
            yaml_document_delete(&extra);
        }
    }
    L.base_dir = base_dir;
    L.c.file = name;
    L.c.doc = &doc;
    L.c.diags = diags;
    L.c.table = t;
    L.c.max_targets = MAX_TARGETS;
    L.c.on_target = on_target;
    L.c.on_target_arg = &L;
    al_schema_walk(&L.c, root);
    check_table(&L);
    check_store(&L);
    check_inbound(&L);
    check_user_identity(&L);
    check_policy(&L);
    if (!L.oom)
        check_unique(&L); /* also next to other errors: all problems in one run */
    if (L.oom) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    diags_sort(diags, first_diag);
    if (diags->count > first_diag)
        goto out;
    if ((rc = al_router_build(t->targets, t->target_count, &t->router)) != AL_OK)
        goto out;
    /* (an address that does not read stays unread: the request path reads it again
     * and finds it is no address, as before) */
    (void)al_table_listen_addr(t->listen.proxy, &t->listen.proxy_addr);
    (void)al_table_listen_addr(t->listen.tls, &t->listen.tls_addr);
    *out = t;
    t = NULL;
    rc = AL_OK;
out:
    if (rc != AL_OK && rc != AL_ERR_NOMEM && diags->count == first_diag)
        al_diags_add(diags, name, 0, 0, "%s", al_strerror(rc));
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    free(L.name_marks);
    free(L.url_marks);
    table_free(t);
    return rc;
}

int al_table_load_mem(const char *name, const char *data, size_t len, al_table **out,
                      al_diags *diags)
{
    return load_impl(name ? name : "-", data, len, NULL, out, diags);
}

/* Reads a whole file of at most MAX_FILE_BYTES into *data (NUL-terminated). */
static int read_file(const char *path, char **data, size_t *len, al_diags *d)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        al_diags_add(d, path, 0, 0, "cannot read the table: %s", strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MAX_FILE_BYTES) {
        al_diags_add(d, path, 0, 0, "cannot read the table: %s",
                     S_ISREG(st.st_mode) ? "larger than 16 MiB" : "not a regular file");
        goto fail;
    }
    if (!(buf = malloc((size_t)st.st_size + 1)))
        goto fail;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            al_diags_add(d, path, 0, 0, "cannot read the table: %s",
                         r < 0 ? strerror(errno) : "file shrank while reading");
            goto fail;
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    *data = buf;
    *len = got;
    return AL_OK;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return AL_ERR_IO;
}

int al_table_load(const char *path, al_table **out, al_diags *diags)
{
    char *data = NULL, *dir = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len, diags);
    if (rc != AL_OK)
        return rc;
    dir = dir_of(path);
    rc = load_impl(path, data, len, dir, out, diags);
    if (rc == AL_OK) { /* what was parsed, not the file as it may be now (status, reload) */
        unsigned char md[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)data, len, md);
        al_hex_encode(md, sizeof md, (*out)->sha256);
    }
    free(dir);
    free(data);
    return rc;
}

int al_table_peek_has(const char *path, const char *key)
{
    char *data = NULL;
    size_t len = 0;
    int found = 0;
    al_diags d;
    al_diags_init(&d);
    yaml_parser_t p;
    yaml_document_t doc;
    int rc = read_file(path, &data, &len, &d);
    al_diags_free(&d);
    if (rc != AL_OK)
        return 0;
    if (!yaml_parser_initialize(&p)) {
        free(data);
        return 0;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    if (yaml_parser_load(&p, &doc)) {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        for (yaml_node_pair_t *pr =
                 root && root->type == YAML_MAPPING_NODE ? root->data.mapping.pairs.start : NULL;
             pr && pr < root->data.mapping.pairs.top && !found; pr++) {
            yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
            found = k && k->type == YAML_SCALAR_NODE && !strcmp((char *)k->data.scalar.value, key);
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    free(data);
    return found;
}

char *al_table_peek_state_dir(const char *path)
{
    char *data = NULL, *dir = NULL, *res = NULL;
    size_t len = 0;
    al_diags d;
    al_diags_init(&d);
    yaml_parser_t p;
    yaml_document_t doc;
    if (read_file(path, &data, &len, &d) != AL_OK) {
        al_diags_free(&d);
        return NULL;
    }
    if (!yaml_parser_initialize(&p)) {
        free(data);
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    if (yaml_parser_load(&p, &doc)) {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        for (yaml_node_pair_t *pr =
                 root && root->type == YAML_MAPPING_NODE ? root->data.mapping.pairs.start : NULL;
             pr && pr < root->data.mapping.pairs.top; pr++) {
            yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
            yaml_node_t *v = yaml_document_get_node(&doc, pr->value);
            if (k && k->type == YAML_SCALAR_NODE &&
                !strcmp((char *)k->data.scalar.value, "state_dir") && v &&
                v->type == YAML_SCALAR_NODE && !al_schema_is_null(v) &&
                strlen((char *)v->data.scalar.value) == v->data.scalar.length) {
                dir = dir_of(path);
                res = resolve(dir, (char *)v->data.scalar.value);
                break;
            }
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    free(dir);
    free(data);
    return res;
}

/* ---- providers against the identity store ---------------------------------------------- */

const char *al_table_create_hint(const al_target *tg, const char *provider, char *buf, size_t n)
{
    const char *verb, *secret;
    switch (tg->auth.method) {
    case AL_AUTH_API_KEY:
        verb = "create-api-key-credential-provider";
        secret = "--api-key -";
        break;
    case AL_AUTH_IAM:
        verb = "create-aws-credential-provider";
        secret = "--access-key-id ID --secret-access-key -";
        break;
    default:
        verb = "create-oauth2-credential-provider";
        secret = "--client-id ID --client-secret -";
        break;
    }
    /* Without --environment the CLI files the provider under "default", which a
     * target of another environment refuses. */
    int other_env = tg->environment && strcmp(tg->environment, "default") != 0;
    snprintf(buf, n, "airlock identity %s --name %s%s%s %s", verb, provider,
             other_env ? " --environment " : "", other_env ? tg->environment : "", secret);
    return buf;
}

static int check_one_provider(const al_table *t, const al_target *tg, const char *p, al_mark m,
                              al_provider_env_fn fn, void *arg, al_diags *d, al_diags *missing)
{
    const char *env = fn(arg, p);
    if (!env) {
        char hint[512];
        al_diags_add(missing ? missing : d, t->path, m.line, m.column,
                     "target '%s': provider '%s' is not in the identity store; create it with "
                     "`%s`",
                     tg->name, p, al_table_create_hint(tg, p, hint, sizeof hint));
        return missing ? 0 : 1;
    }
    if (strcmp(env, tg->environment) != 0) {
        al_diags_add(d, t->path, m.line, m.column,
                     "target '%s' is in environment '%s' but provider '%s' belongs to '%s'; "
                     "production keys never reach another environment: create a provider in "
                     "'%s'",
                     tg->name, tg->environment, p, env, tg->environment);
        return 1;
    }
    return 0;
}

int al_table_check_providers(const al_table *t, al_provider_env_fn fn, void *arg, al_diags *d,
                             al_diags *missing)
{
    int bad = 0;
    for (size_t i = 0; t && i < t->target_count; i++) {
        const al_target *tg = &t->targets[i];
        for (size_t j = 0; j < tg->auth.provider_count; j++)
            bad += check_one_provider(t, tg, tg->auth.providers[j], tg->auth.provider_marks[j], fn,
                                      arg, d, missing);
        if (tg->auth.fallback_provider)
            bad += check_one_provider(t, tg, tg->auth.fallback_provider, tg->auth.fallback_mark, fn,
                                      arg, d, missing);
    }
    return bad ? AL_ERR_CONFIG : AL_OK;
}
