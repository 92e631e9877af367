/* al_server: `airlock serve` (see al_server.h).
 *
 * The main thread owns: signals (SIGHUP reload and audit log reopen, SIGUSR1 audit
 * log reopen, SIGTERM/SIGINT drain), the admin
 * listener (/healthz, /readyz), and the authoritative table pointer. Workers are
 * told about a new table through al_worker_post_table and stop through
 * al_worker_post_stop; the main thread then joins them, so the drain deadline is
 * enforced by each worker's own timer. The admin listener is tiny and bounded: one
 * read of at most 4 KiB per connection, a fixed answer, close. */
#include "al_server.h"
#include "al_iam_credsrc.h"
#include "identity/al_identity.h"
#include "identity/al_store.h"
#include "identity/al_token.h"
#include "identity/al_user_cred.h"
#include "al_errors.h"
#include "upstream/al_egress.h"
#include "al_listen_lock.h"
#include "al_metrics.h"
#include "al_tls.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef struct admin_conn {
    ev_io io;
    ev_timer timeout;
    al_server *s;
    char buf[4096];
    size_t len;
} admin_conn;

static void log_diags(const al_diags *d)
{
    for (size_t i = 0; i < d->count; i++)
        al_log(AL_LOG_ERROR, "table.invalid", "%s:%d:%d: error: %s", d->items[i].file,
               d->items[i].line, d->items[i].column, d->items[i].message);
}

/* Loaded anyway, but probably a mistake (e.g. an Authorization prefix without its space). */
static void log_warnings(const al_table *t)
{
    const al_diags *w = &t->warnings;
    for (size_t i = 0; i < w->count; i++)
        al_log(AL_LOG_WARN, "table.warning", "%s:%d:%d: warning: %s", w->items[i].file,
               w->items[i].line, w->items[i].column, w->items[i].message);
}

/* Not ready only when serving is impossible: a store database lost after the
 * credentials were loaded leaves them in use (al_cred_cache_ready stays 1). */
static int ready(const al_server *s)
{
    return s->table && s->creds && al_cred_cache_ready(s->creds) && !s->draining &&
           !s->lame_duck &&
           atomic_load(&s->workers_running) == (int)s->worker_count;
}

static void admin_resume(al_server *s)
{
    if (!s->admin_paused)
        return;
    s->admin_paused = 0;
    ev_timer_stop(s->loop, &s->admin_retry);
    if (s->admin_fd >= 0)
        ev_io_start(s->loop, &s->admin_w);
}

static void on_admin_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    admin_resume(t->data);
}

static void admin_close(struct ev_loop *loop, admin_conn *a)
{
    al_server *s = a->s;
    ev_io_stop(loop, &a->io);
    ev_timer_stop(loop, &a->timeout);
    close(a->io.fd);
    free(a);
    admin_resume(s); /* a descriptor came back */
}

/* Content types of the admin answers. The HTML page allows no script, no external
 * load, no framing (it shows credential metadata). */
#define CT_JSON "application/json"
#define CT_PROM "text/plain; version=0.0.4; charset=utf-8"
#define CT_HTML                                                                            \
    "text/html; charset=utf-8\r\ncontent-security-policy: default-src 'none'; style-src "   \
    "'unsafe-inline'; frame-ancestors 'none'\r\nx-content-type-options: nosniff\r\n"       \
    "referrer-policy: no-referrer"

static void admin_reply_ct(admin_conn *a, int status, const char *ctype, const char *body,
                           size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncache-control: "
                     "no-store\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n",
                     status, al_http_reason(status), ctype, len);
    /* Bodies are bounded by the al_buf that built them (up to 256 KiB for /status of a
     * huge table): written blocking with a 2 s send timeout, so a peer that does not
     * read costs the main thread at most that and is then cut off. */
    int fl = fcntl(a->io.fd, F_GETFL);
    if (fl >= 0)
        fcntl(a->io.fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(a->io.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const char *parts[2] = {head, body};
    size_t lens[2] = {(size_t)n, len};
    for (int i = 0; i < 2; i++) {
        for (size_t off = 0; off < lens[i];) {
            ssize_t w = send(a->io.fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return;
            off += (size_t)w;
        }
    }
}

static void admin_reply_n(admin_conn *a, int status, const char *body, size_t len)
{
    admin_reply_ct(a, status, CT_JSON, body, len);
}

static void admin_reply(admin_conn *a, int status, const char *body)
{
    admin_reply_n(a, status, body, strlen(body));
}

/* ---- table status (GET /status, /readyz, POST /reload) ------------------ */

static void put(al_buf *b, const char *lit)
{
    al_buf_append(b, lit, strlen(lit)); /* a full buffer shows as a cut body */
}

static void json_str(al_buf *b, const char *v)
{
    if (!v) {
        put(b, "null");
        return;
    }
    put(b, "\"");
    al_json_escape_append(b, v, strlen(v));
    put(b, "\"");
}

/* Targets of the loaded table whose provider (or fallback_provider) has no current
 * secret in the store right now, as JSON array items [{"target","provider"},...].
 * Live, from the credential snapshot: a provider created after the load is seen at
 * once; the first 200 listed. Returns how many; nothing is checked without a store
 * (/readyz says so). */
static size_t degraded_targets(const al_server *s, al_buf *b)
{
    size_t n = 0;
    if (!s->creds || !s->table)
        return 0;
    al_cred_snapshot *snap = al_cred_cache_acquire(s->creds);
    for (size_t i = 0; i < s->table->target_count; i++) {
        const al_target *t = &s->table->targets[i];
        for (size_t j = 0; j <= t->auth.provider_count; j++) {
            const char *p = j < t->auth.provider_count ? t->auth.providers[j]
                                                       : t->auth.fallback_provider;
            al_secret_view v;
            if (!p || al_cred_lookup(snap, p, &v) == AL_OK)
                continue;
            if (b && n < 200) { /* the count says how many more */
                put(b, n ? ",{\"target\":" : "{\"target\":");
                json_str(b, t->name);
                put(b, ",\"provider\":");
                json_str(b, p);
                put(b, ",\"reason\":\"provider_missing\"}");
            }
            n++;
        }
    }
    al_cred_snapshot_release(snap);
    return n;
}

/* "table":{...} of the loaded table. */
static void table_json(const al_server *s, al_buf *b)
{
    char when[32] = "";
    time_t sec = (time_t)(s->loaded_at_ms / 1000);
    struct tm tm;
    if (gmtime_r(&sec, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    al_buf_appendf(b, "\"table\":{\"generation\":%llu,\"path\":",
                   (unsigned long long)s->table_generation);
    json_str(b, s->config_path);
    put(b, ",\"sha256\":");
    json_str(b, s->table ? s->table->sha256 : NULL);
    put(b, ",\"loaded_at\":");
    json_str(b, when);
    al_buf_appendf(b, ",\"targets\":%zu}", s->table ? s->table->target_count : 0);
}

/* ---- what the security team sees: /metrics, /status.json, /status --------- */

/* A token endpoint answered (fetch thread): airlock_token_requests_total. */
static void on_token_answer(void *arg, const char *provider, int ok)
{
    al_metrics_count_token(arg, provider, ok ? AL_METRICS_TOKEN_FETCHED : AL_METRICS_TOKEN_FAILED);
}

static int64_t wall_ms(void);

/* A provider is "old" past its rotation_max_age; without one, "long-lived" past this. */
#define LONG_LIVED_S (90 * 86400)
#define STATUS_PROVIDERS_MAX 1024
#define STATUS_TARGETS_MAX 512
#define STATUS_REFUSALS 20

/* The providers of the current credential snapshot (held by the caller: *snap is
 * acquired here and released by the caller with al_cred_snapshot_release). */
static size_t providers_now(const al_server *s, al_cred_snapshot **snap,
                            al_cred_provider_info *out, size_t cap)
{
    *snap = s->creds ? al_cred_cache_acquire(s->creds) : NULL;
    size_t n = *snap ? al_cred_providers(*snap, out, cap) : 0;
    return n < cap ? n : cap;
}

/* "old" / "long_lived" / NULL for a provider's current version. */
static const char *provider_flag(const al_cred_provider_info *p, int64_t now_s)
{
    int64_t age = p->created_at ? now_s - p->created_at : 0;
    if (p->rotation_max_age && age > p->rotation_max_age)
        return "old";
    if (!p->rotation_max_age && age > LONG_LIVED_S)
        return "long_lived";
    return NULL;
}

static void iso_ms(int64_t ms, char out[32])
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    out[0] = '\0';
    if (ms > 0 && gmtime_r(&sec, &tm))
        strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void json_time(al_buf *b, int64_t ms)
{
    char t[32];
    iso_ms(ms, t);
    json_str(b, t[0] ? t : NULL);
}

static void admin_metrics(admin_conn *a)
{
    al_server *s = a->s;
    al_cred_provider_info *info = calloc(STATUS_PROVIDERS_MAX, sizeof *info);
    al_metrics_provider *mp = calloc(STATUS_PROVIDERS_MAX, sizeof *mp);
    al_cred_snapshot *snap = NULL;
    size_t n = info && mp ? providers_now(s, &snap, info, STATUS_PROVIDERS_MAX) : 0;
    for (size_t i = 0; i < n; i++)
        mp[i] = (al_metrics_provider){info[i].name, info[i].version, info[i].created_at,
                                      info[i].rotation_max_age, info[i].fingerprint};
    al_audit_stats as = {0};
    if (s->audit)
        al_audit_get_stats(s->audit, &as);
    al_metrics_extra x = {.now_ms = wall_ms(),
                          .audit_written = as.written,
                          .audit_dropped = as.dropped,
                          .audit_failed = as.failed,
                          .audit_lag = as.lag,
                          .table_generation = s->table_generation,
                          .providers = mp,
                          .provider_count = n};
    al_buf b;
    al_buf_init(&b, 8 * 1024 * 1024);
    if (al_metrics_render(s->metrics, &x, &b) == AL_OK && b.data)
        admin_reply_ct(a, 200, CT_PROM, b.data, b.len);
    else
        admin_reply(a, 500,
                    "{\"error\":\"metrics_failed\",\"message\":\"the metrics could not be "
                    "rendered (out of memory or over 8 MiB); see the server log\"}\n");
    al_buf_free(&b, 0);
    if (snap)
        al_cred_snapshot_release(snap);
    free(mp);
    free(info);
}

/* ,"targets":[...],"providers":[...],"recent_refusals":[...],"audit":{...} */
static void status_activity_json(al_server *s, al_buf *b)
{
    int64_t now = wall_ms();
    al_metrics_target_summary *ts = calloc(STATUS_TARGETS_MAX, sizeof *ts);
    al_cred_provider_info *info = calloc(STATUS_PROVIDERS_MAX, sizeof *info);
    al_metrics_refusal rf[STATUS_REFUSALS];
    size_t nt = ts ? al_metrics_targets(s->metrics, ts, STATUS_TARGETS_MAX) : 0;
    put(b, ",\"targets\":[");
    for (size_t i = 0; i < nt; i++) {
        put(b, i ? ",{\"name\":" : "{\"name\":");
        json_str(b, ts[i].name);
        al_buf_appendf(b,
                       ",\"requests\":%llu,\"errors\":%llu,\"denied\":%llu,\"error_rate\":%.4f,"
                       "\"last_request\":",
                       (unsigned long long)ts[i].requests, (unsigned long long)ts[i].errors,
                       (unsigned long long)ts[i].denied,
                       ts[i].requests ? (double)ts[i].errors / (double)ts[i].requests : 0.);
        json_time(b, ts[i].last_ms);
        put(b, "}");
    }
    put(b, "],\"providers\":[");
    al_cred_snapshot *snap = NULL;
    size_t np = info ? providers_now(s, &snap, info, STATUS_PROVIDERS_MAX) : 0;
    for (size_t i = 0; i < np; i++) {
        const al_cred_provider_info *p = &info[i];
        put(b, i ? ",{\"name\":" : "{\"name\":");
        json_str(b, p->name);
        put(b, ",\"kind\":");
        json_str(b, p->kind);
        put(b, ",\"environment\":");
        json_str(b, p->environment);
        al_buf_appendf(b, ",\"version\":%u,\"fingerprint\":", (unsigned)p->version);
        json_str(b, p->fingerprint);
        put(b, ",\"created_at\":");
        json_time(b, p->created_at * 1000);
        al_buf_appendf(b, ",\"age_seconds\":%lld,\"rotation_max_age\":",
                       (long long)(p->created_at ? now / 1000 - p->created_at : 0));
        if (p->rotation_max_age)
            al_buf_appendf(b, "%lld", (long long)p->rotation_max_age);
        else
            put(b, "null");
        put(b, ",\"last_used\":");
        json_time(b, al_metrics_provider_last_use(s->metrics, p->name));
        put(b, ",\"flag\":");
        json_str(b, provider_flag(p, now / 1000));
        put(b, "}");
    }
    if (snap)
        al_cred_snapshot_release(snap);
    put(b, "],\"recent_refusals\":[");
    size_t nr = al_metrics_recent_refusals(s->metrics, rf, STATUS_REFUSALS);
    for (size_t i = 0; i < nr; i++) {
        put(b, i ? ",{\"time\":" : "{\"time\":");
        json_time(b, rf[i].time_ms);
        put(b, ",\"target\":");
        json_str(b, rf[i].target);
        put(b, ",\"reason\":");
        json_str(b, rf[i].reason);
        al_buf_appendf(b, ",\"status\":%d}", rf[i].status);
    }
    al_audit_stats as = {0};
    if (s->audit)
        al_audit_get_stats(s->audit, &as);
    al_buf_appendf(b,
                   "],\"audit\":{\"written\":%llu,\"dropped\":%llu,\"failed_writes\":%llu,"
                   "\"lag\":%llu,\"checkpoints\":%llu,\"writable\":%s}",
                   (unsigned long long)as.written, (unsigned long long)as.dropped,
                   (unsigned long long)as.failed, (unsigned long long)as.lag,
                   (unsigned long long)as.checkpoints, s->audit && !as.writable ? "false" : "true");
    free(info);
    free(ts);
}

/* HTML text: every byte that could open markup is an entity. */
static void html(al_buf *b, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        switch (*p) {
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '&': put(b, "&amp;"); break;
        case '"': put(b, "&quot;"); break;
        case '\'': put(b, "&#39;"); break;
        default: al_buf_append(b, p, 1);
        }
    }
}

static void html_age(al_buf *b, int64_t s)
{
    if (s >= 86400)
        al_buf_appendf(b, "%lldd", (long long)(s / 86400));
    else if (s >= 3600)
        al_buf_appendf(b, "%lldh", (long long)(s / 3600));
    else if (s >= 60)
        al_buf_appendf(b, "%lldm", (long long)(s / 60));
    else
        al_buf_appendf(b, "%llds", (long long)(s > 0 ? s : 0));
}

/* GET /status: one self-contained page (no script, no external asset), refreshed by
 * the browser every 15 s. The same data as /status.json. */
static void admin_status_html(admin_conn *a)
{
    al_server *s = a->s;
    int64_t now = wall_ms();
    char when[32];
    al_buf b;
    al_buf_init(&b, 1024 * 1024);
    put(&b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"refresh\" content=\"15\">"
            "<meta name=\"viewport\" content=\"width=device-width\">"
            "<title>airlock status</title><style>"
            "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}"
            "table{border-collapse:collapse;margin-bottom:1.5em}"
            "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
            "th{background:#f3f3f3}td.n{text-align:right}"
            "tr.warn td{background:#fff4d6}tr.bad td{background:#ffe0e0}"
            ".tag{font-weight:bold;color:#a40000}code{font-size:90%}"
            "</style></head><body>\n<h1>airlock</h1>\n");
    iso_ms(s->loaded_at_ms, when);
    al_buf_appendf(&b, "<p id=\"summary\">status <b>%s</b> &middot; table generation %llu (",
                   ready(s) ? "ready" : "not ready", (unsigned long long)s->table_generation);
    html(&b, s->config_path);
    put(&b, ", loaded ");
    html(&b, when);
    al_audit_stats as = {0};
    if (s->audit)
        al_audit_get_stats(s->audit, &as);
    al_buf_appendf(&b,
                   ") &middot; %zu workers &middot; audit records written %llu, dropped %llu, "
                   "failed writes %llu%s</p>\n",
                   s->worker_count, (unsigned long long)as.written,
                   (unsigned long long)as.dropped, (unsigned long long)as.failed,
                   s->audit && !as.writable ? " &middot; <span class=\"tag\">audit log not "
                                              "writable</span>"
                                            : "");

    /* targets: every target of the table, with its traffic since start */
    al_metrics_target_summary *ts = calloc(STATUS_TARGETS_MAX, sizeof *ts);
    size_t nt = ts ? al_metrics_targets(s->metrics, ts, STATUS_TARGETS_MAX) : 0;
    put(&b, "<h2>Targets</h2>\n<table id=\"targets\"><tr><th>target</th><th>requests</th>"
            "<th>errors</th><th>error rate</th><th>refused</th><th>last request</th></tr>\n");
    for (size_t i = 0; s->table && i < s->table->target_count; i++) {
        const char *name = s->table->targets[i].name;
        const al_metrics_target_summary *t = NULL;
        for (size_t j = 0; j < nt; j++)
            if (!strcmp(ts[j].name, name))
                t = &ts[j];
        double rate = t && t->requests ? (double)t->errors / (double)t->requests : 0.;
        al_buf_appendf(&b, "<tr%s><td>", rate > 0.10 ? " class=\"bad\"" : "");
        html(&b, name);
        iso_ms(t ? t->last_ms : 0, when);
        al_buf_appendf(&b,
                       "</td><td class=\"n\">%llu</td><td class=\"n\">%llu</td><td "
                       "class=\"n\">%.1f %%</td><td class=\"n\">%llu</td><td>%s</td></tr>\n",
                       (unsigned long long)(t ? t->requests : 0),
                       (unsigned long long)(t ? t->errors : 0), rate * 100.,
                       (unsigned long long)(t ? t->denied : 0), when[0] ? when : "never");
    }
    put(&b, "</table>\n");
    free(ts);

    /* providers: metadata only, never a secret */
    al_cred_provider_info *info = calloc(STATUS_PROVIDERS_MAX, sizeof *info);
    al_cred_snapshot *snap = NULL;
    size_t np = info ? providers_now(s, &snap, info, STATUS_PROVIDERS_MAX) : 0;
    put(&b, "<h2>Credential providers</h2>\n<table id=\"providers\"><tr><th>provider</th>"
            "<th>kind</th><th>environment</th><th>version</th><th>fingerprint</th>"
            "<th>age</th><th>rotation max age</th><th>last use</th><th></th></tr>\n");
    for (size_t i = 0; i < np; i++) {
        const al_cred_provider_info *p = &info[i];
        const char *flag = provider_flag(p, now / 1000);
        al_buf_appendf(&b, "<tr%s><td>",
                       !flag ? "" : !strcmp(flag, "old") ? " class=\"bad\"" : " class=\"warn\"");
        html(&b, p->name);
        put(&b, "</td><td>");
        html(&b, p->kind);
        put(&b, "</td><td>");
        html(&b, p->environment);
        al_buf_appendf(&b, "</td><td class=\"n\">%u</td><td><code>", (unsigned)p->version);
        html(&b, p->fingerprint);
        put(&b, "</code></td><td>");
        html_age(&b, p->created_at ? now / 1000 - p->created_at : 0);
        put(&b, "</td><td>");
        if (p->rotation_max_age)
            html_age(&b, p->rotation_max_age);
        else
            put(&b, "&ndash;");
        iso_ms(al_metrics_provider_last_use(s->metrics, p->name), when);
        al_buf_appendf(&b, "</td><td>%s</td><td>%s</td></tr>\n", when[0] ? when : "never",
                       !flag                    ? ""
                       : !strcmp(flag, "old")   ? "<span class=\"tag\">rotation overdue</span>"
                                                : "<span class=\"tag\">long-lived</span>");
    }
    put(&b, "</table>\n");
    if (snap)
        al_cred_snapshot_release(snap);
    free(info);

    al_metrics_refusal rf[STATUS_REFUSALS];
    size_t nr = al_metrics_recent_refusals(s->metrics, rf, STATUS_REFUSALS);
    put(&b, "<h2>Recent refusals</h2>\n<table id=\"refusals\"><tr><th>time</th><th>target</th>"
            "<th>reason</th><th>status</th></tr>\n");
    for (size_t i = 0; i < nr; i++) {
        iso_ms(rf[i].time_ms, when);
        al_buf_appendf(&b, "<tr><td>%s</td><td>", when);
        html(&b, rf[i].target);
        put(&b, "</td><td>");
        html(&b, rf[i].reason);
        al_buf_appendf(&b, "</td><td class=\"n\">%d</td></tr>\n", rf[i].status);
    }
    if (!nr)
        put(&b, "<tr><td colspan=\"4\">none since start</td></tr>\n");
    put(&b, "</table>\n<p>Machine-readable: <a href=\"/status.json\">/status.json</a>, "
            "<a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n");
    if (b.data)
        admin_reply_ct(a, 200, CT_HTML, b.data, b.len);
    else
        admin_reply(a, 500, "{\"error\":\"status_failed\",\"message\":\"out of memory\"}\n");
    al_buf_free(&b, 0);
}

static void admin_status(admin_conn *a, int readyz)
{
    al_server *s = a->s;
    al_buf b;
    al_buf_init(&b, 256 * 1024);
    int ok = ready(s);
    al_buf deg;
    al_buf_init(&deg, 200 * 1024);
    size_t nd = degraded_targets(s, &deg);
    /* A missing provider fails only its targets' requests (502 credential_unavailable),
     * and every replica shares the table: answering 503 would take all of them out of
     * service for one target. So /readyz stays 200 and says "degraded". */
    const char *st = s->draining || s->lame_duck ? "draining"
                     : !ok                       ? "not_ready"
                     : nd                        ? "degraded"
                                                 : "ready";
    put(&b, "{\"status\":");
    json_str(&b, st);
    if (!s->creds)
        put(&b, ",\"reason\":\"credential store not open\"");
    if (nd) {
        al_buf_appendf(&b, ",\"degraded_count\":%zu", nd);
        put(&b, ",\"degraded_targets\":[");
        al_buf_append(&b, deg.data, deg.len);
        put(&b, "]");
    }
    if (!readyz) {
        put(&b, ",");
        table_json(s, &b);
        al_buf_appendf(&b, ",\"workers\":%zu,\"workers_running\":%d,\"draining\":%s",
                       s->worker_count, atomic_load(&s->workers_running),
                       s->draining || s->lame_duck ? "true" : "false");
        put(&b, ",\"last_reload\":");
        json_str(&b, s->last_reload_ok < 0 ? NULL : s->last_reload_ok ? "ok" : "failed");
        status_activity_json(s, &b);
    }
    put(&b, "}\n");
    admin_reply_n(a, ok || !readyz ? 200 : 503, b.data ? b.data : "{}\n", b.data ? b.len : 3);
    al_buf_free(&deg, 0);
    al_buf_free(&b, 0);
}

static void admin_reload(admin_conn *a)
{
    al_server *s = a->s;
    al_diags d;
    al_diags_init(&d);
    int rc = al_server_reload(s, &d);
    al_buf b;
    al_buf_init(&b, 256 * 1024);
    al_buf_appendf(&b, "{\"ok\":%s", rc == AL_OK ? "true" : "false");
    if (rc != AL_OK) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "%s was not loaded (%s): fix the problems listed in diagnostics and reload "
                 "again; the previous table (generation %llu) stays in use",
                 s->config_path, al_strerror(rc), (unsigned long long)s->table_generation);
        put(&b, ",\"error\":\"table_invalid\",\"message\":");
        json_str(&b, msg);
        put(&b, ",\"diagnostics\":[");
        for (size_t i = 0; i < d.count && i < 100; i++) {
            put(&b, i ? ",{\"file\":" : "{\"file\":");
            json_str(&b, d.items[i].file);
            al_buf_appendf(&b, ",\"line\":%d,\"column\":%d,\"message\":", d.items[i].line,
                           d.items[i].column);
            json_str(&b, d.items[i].message);
            put(&b, "}");
        }
        put(&b, "]");
    }
    put(&b, ",");
    table_json(s, &b);
    al_buf deg;
    al_buf_init(&deg, 200 * 1024);
    if (rc == AL_OK && degraded_targets(s, &deg)) {
        put(&b, ",\"degraded_targets\":[");
        al_buf_append(&b, deg.data, deg.len);
        put(&b, "]");
    }
    put(&b, "}\n");
    admin_reply_n(a, rc == AL_OK ? 200 : 422, b.data ? b.data : "{}\n", b.data ? b.len : 3);
    al_buf_free(&deg, 0);
    al_buf_free(&b, 0);
    al_diags_free(&d);
}

/* GET /ca.crt: the CA certificate serve uses (public; never the key), so agents as
 * other users or on other machines can trust it without reading the state dir. */
static void admin_ca_cert(admin_conn *a)
{
    char *pem = NULL, head[256];
    size_t len = 0;
    if (!a->s->ca || al_ca_cert_pem(a->s->ca, &pem, &len) != 0) {
        admin_reply(a, 404,
                    "{\"error\":\"no_ca\",\"message\":\"this airlock has no CA; create one "
                    "with 'airlock ca init' and restart serve\"}\n");
        return;
    }
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\ncontent-type: application/x-pem-file\r\n"
                     "content-length: %zu\r\nconnection: close\r\n\r\n",
                     len);
    if (send(a->io.fd, head, (size_t)n, MSG_NOSIGNAL) == n)
        (void)send(a->io.fd, pem, len, MSG_NOSIGNAL);
    free(pem);
}

/* GET /oauth2/tokens: the token cache's metadata (expiry, scopes, fingerprint, state,
 * last error) — never a token or a secret. */
static void admin_oauth2_tokens(admin_conn *a)
{
    al_server *s = a->s;
    json_t *j = s->tokens ? al_token_status(s->tokens) : json_pack("{s:[]}", "tokens");
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        admin_reply(a, 500, "{\"error\":\"internal_error\",\"message\":\"out of memory\"}\n");
        return;
    }
    size_t n = strlen(text);
    char *body = malloc(n + 2);
    if (body) {
        memcpy(body, text, n);
        body[n] = '\n';
        body[n + 1] = 0;
        admin_reply_n(a, 200, body, n + 1);
    } else {
        admin_reply(a, 500, "{\"error\":\"internal_error\",\"message\":\"out of memory\"}\n");
    }
    free(body);
    free(text);
}

static void on_admin_read(struct ev_loop *loop, ev_io *io, int revents)
{
    admin_conn *a = io->data;
    (void)revents;
    ssize_t r = read(io->fd, a->buf + a->len, sizeof a->buf - 1 - a->len);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        admin_close(loop, a);
        return;
    }
    a->len += (size_t)r;
    a->buf[a->len] = '\0';
    if (!strstr(a->buf, "\r\n\r\n") && !strstr(a->buf, "\n\n")) {
        if (a->len >= sizeof a->buf - 1) {
            admin_reply(a, 431,
                        "{\"error\":\"header_too_large\",\"message\":\"request too large\"}\n");
            admin_close(loop, a);
        }
        return;
    }
    if (strncmp(a->buf, "GET /healthz ", 13) == 0 || strncmp(a->buf, "HEAD /healthz ", 14) == 0) {
        admin_reply(a, 200, "{\"status\":\"ok\"}\n");
    } else if (strncmp(a->buf, "GET /readyz ", 12) == 0) {
        a->s->readyz_asked = 1;
        admin_status(a, 1);
    } else if (strncmp(a->buf, "GET /status.json ", 17) == 0) {
        admin_status(a, 0);
    } else if (strncmp(a->buf, "GET /status ", 12) == 0) {
        admin_status_html(a);
    } else if (strncmp(a->buf, "GET /metrics ", 13) == 0) {
        admin_metrics(a);
    } else if (strncmp(a->buf, "POST /reload ", 13) == 0) {
        /* A browser page may POST here cross-origin without a preflight: requests that
         * carry an Origin are not from `airlock reload`, curl or systemd. */
        if (strcasestr(a->buf, "\norigin:"))
            admin_reply(a, 403,
                        "{\"error\":\"forbidden\",\"message\":\"POST /reload is not accepted "
                        "from a browser (Origin header); use airlock reload\"}\n");
        else
            admin_reload(a);
    } else if (strncmp(a->buf, "GET /ca.crt ", 12) == 0) {
        admin_ca_cert(a);
    } else if (strncmp(a->buf, "GET /oauth2/tokens ", 19) == 0) {
        admin_oauth2_tokens(a);
    } else {
        admin_reply(a, 404,
                    "{\"error\":\"not_found\",\"message\":\"the admin listener serves GET "
                    "/healthz, GET /readyz, GET /status, GET /status.json, GET /metrics, GET "
                    "/ca.crt, GET /oauth2/tokens and POST /reload\"}\n");
    }
    admin_close(loop, a);
}

static void on_admin_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    admin_close(loop, t->data);
}

static void on_admin_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    al_server *s = io->data;
    (void)revents;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)
                return;
            /* out of descriptors: the readable listener would spin the loop; stop it
             * until an admin connection closes or the retry timer */
            int pause = al_accept_must_pause(err);
            al_accept_log_failure(loop, &s->admin_log, "admin", -1, err, pause);
            if (pause && !s->admin_paused) {
                s->admin_paused = 1;
                ev_io_stop(loop, io);
                ev_timer_set(&s->admin_retry, 0.25, 0.);
                ev_timer_start(loop, &s->admin_retry);
            }
            return;
        }
        admin_conn *a = calloc(1, sizeof *a);
        if (!a) {
            close(fd);
            return;
        }
        a->s = s;
        ev_io_init(&a->io, on_admin_read, fd, EV_READ);
        a->io.data = a;
        ev_io_start(loop, &a->io);
        ev_timer_init(&a->timeout, on_admin_timeout, 5., 0.);
        a->timeout.data = a;
        ev_timer_start(loop, &a->timeout);
    }
}

/* Providers named by the table against the store: a wrong environment refuses the
 * table; a missing provider is only logged (it may be created later and is picked up
 * live; until then its requests get 502 credential_unavailable). */

/* The authenticator for table t (mode jwt), made current for the decide hook; the
 * previous one is kept until the server stops. prime: fetch the issuer's documents
 * now (start-up; a failure is logged and tokens get keys_unavailable until a
 * background fetch succeeds). */
static int inbound_apply(al_server *s, const al_table *t, int prime)
{
    al_inbound *in = NULL;
    if (t->inbound.mode == AL_INBOUND_JWT) {
        if (!s->oidc) {
            if (al_oidc_new(&s->oidc) != AL_OK)
                return AL_ERR_NOMEM;
            al_fetch_set_guard(al_oidc_fetcher(s->oidc), al_egress_guard_public, NULL);
        }
        int rc = al_inbound_new(t, s->oidc, &in);
        if (rc != AL_OK)
            return rc;
        char err[512] = "";
        if (prime && (rc = al_inbound_prime(in, err, sizeof err)) != AL_OK)
            al_log(AL_LOG_WARN, "inbound.keys_unavailable",
                   "the issuer's keys could not be fetched from %s (%s): tokens are refused "
                   "(keys_unavailable) until a later fetch succeeds",
                   t->inbound.discovery_url, err);
    }
    al_inbound *old = atomic_exchange_explicit(&s->authz.inbound, in, memory_order_acq_rel);
    if (old) {
        al_inbound **v = realloc(s->inbound_old, (s->inbound_old_count + 1) * sizeof *v);
        if (!v) {
            atomic_store(&s->authz.inbound, old); /* keep the old one: nothing freed in use */
            al_inbound_free(in);
            return AL_ERR_NOMEM;
        }
        v[s->inbound_old_count++] = old;
        s->inbound_old = v;
    }
    return AL_OK;
}

static int check_providers(const char *state_dir, const al_table *t, al_diags *d)
{
    al_diags missing;
    al_diags_init(&missing);
    int rc = al_identity_check_table(state_dir, t, d, &missing);
    for (size_t i = 0; i < missing.count; i++)
        al_log(AL_LOG_WARN, "table.provider_missing", "%s:%d:%d: %s", missing.items[i].file,
               missing.items[i].line, missing.items[i].column, missing.items[i].message);
    al_diags_free(&missing);
    if (rc == AL_ERR_NOTFOUND) {
        al_log(AL_LOG_WARN, "store.missing",
               "providers not checked: no identity store in %s yet; requests needing a "
               "credential get 502 until their providers are created",
               state_dir);
        rc = AL_OK;
    } else if (rc != AL_OK && rc != AL_ERR_CONFIG) {
        al_log(AL_LOG_WARN, "store.unavailable",
               "providers not checked: the store in %s could not be opened (%s)", state_dir,
               al_strerror(rc));
        rc = AL_OK;
    }
    return rc;
}

/* One audit record per table load (at start) and reload, ok or failed: which file,
 * its SHA-256, the generation it became, its target count and how many diagnostics
 * it had. Called where the outcome is known; the records are the audit trail of what
 * the proxy enforced and when. */
static void audit_table_load(al_server *s, const char *event, int rc, const al_table *t,
                             const al_diags *d)
{
    char sha[65] = "";
    if (t && t->sha256[0]) /* the bytes loaded; a refused file as it is now */
        memcpy(sha, t->sha256, sizeof sha);
    else if (al_audit_file_sha256(s->config_path, sha) != AL_OK)
        sha[0] = '\0';
    int have_sha = sha[0] != '\0';
    if (rc == AL_OK)
        s->table_generation++;
    al_audit_field f[] = {
        {"result", AL_AUDIT_STR, rc == AL_OK ? "ok" : "failed", 0},
        {"generation", AL_AUDIT_INT, NULL, (int64_t)s->table_generation},
        {"file", AL_AUDIT_STR, s->config_path, 0},
        {"sha256", AL_AUDIT_STR, have_sha ? sha : NULL, 0},
        {"targets", AL_AUDIT_INT, NULL, t ? (int64_t)t->target_count : 0},
        {"diagnostics", AL_AUDIT_INT, NULL, d ? (int64_t)d->count : 0},
        {"error", AL_AUDIT_STR, rc == AL_OK ? NULL : al_strerror(rc), 0},
    };
    al_audit_submit_event(s->audit, event, f, sizeof f / sizeof f[0]);
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The one reload path, for SIGHUP and POST /reload: load, check, then apply or keep
 * the old table. Every check belongs here so both entry points get it. */
int al_server_reload(al_server *s, al_diags *d)
{
    al_table *t = NULL;
    int rc = al_table_load(s->config_path, &t, d);
    if (rc == AL_OK && (rc = check_providers(s->state_dir, t, d)) != AL_OK) {
        al_table_unref(t);
        t = NULL;
    }
    audit_table_load(s, "table.reload", rc, t, d);
    if (rc) {
        log_diags(d);
        al_log(AL_LOG_ERROR, "table.reload_failed",
               "%s is invalid (%s); the previous table (generation %llu) stays in use",
               s->config_path, al_strerror(rc), (unsigned long long)s->table_generation);
        s->last_reload_ok = 0;
        return rc;
    }
    log_warnings(t);
    if (!same_str(t->listen.proxy, s->table->listen.proxy))
        al_log(AL_LOG_WARN, "table.reload", "listen addresses change only on restart");
    /* The store, CA and audit log stay where they were opened (the writer's chain,
     * checkpoint and rotation settings too; audit.on_failure is read per request). */
    const al_audit_cfg *na = &t->audit, *oa = &s->table->audit;
    if (!same_str(na->file, oa->file) || na->chain != oa->chain ||
        na->checkpoint_interval_ms != oa->checkpoint_interval_ms ||
        na->max_file_bytes != oa->max_file_bytes || na->max_files != oa->max_files)
        al_log(AL_LOG_WARN, "table.reload",
               "audit.file, chain, checkpoint_interval_ms, max_file_bytes and max_files "
               "change only on restart");
    if (!same_str(t->state_dir, s->table->state_dir) && !same_str(t->state_dir, s->state_dir))
        al_log(AL_LOG_WARN, "table.reload",
               "state_dir changed in %s (%s -> %s) but takes effect only on restart; "
               "still using %s",
               s->config_path, s->table->state_dir ? s->table->state_dir : "(none)",
               t->state_dir ? t->state_dir : "(none)", s->state_dir);
    if (al_store_table_differs(t))
        al_log(AL_LOG_WARN, "table.reload",
               "store changed in %s but takes effect only on restart; still using the "
               "store airlock started with",
               s->config_path);
    for (size_t i = 0; i < s->worker_count; i++)
        al_worker_post_table(&s->workers[i], t);
    if (inbound_apply(s, t, 0) != AL_OK)
        al_log(AL_LOG_ERROR, "inbound.reload_failed",
               "out of memory setting up inbound authentication; the previous settings stay");
    al_table_unref(s->table);
    s->table = t;
    s->loaded_at_ms = wall_ms();
    s->last_reload_ok = 1;
    al_log(AL_LOG_INFO, "table.reload", "loaded %s: %zu targets (generation %llu, sha256 %s)",
           s->config_path, t->target_count, (unsigned long long)s->table_generation, t->sha256);
    return AL_OK;
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    al_server *s = w->data;
    (void)loop;
    (void)revents;
    /* logrotate's convention (postrotate: kill -HUP): the writer thread reopens the
     * audit log by name, so records after the rotation go to the new file. */
    al_audit_reopen(s->audit);
    al_diags d;
    al_diags_init(&d);
    al_server_reload(s, &d);
    al_diags_free(&d);
}

static void on_sigusr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    al_server *s = w->data;
    (void)loop;
    (void)revents;
    al_audit_reopen(s->audit); /* reopen only, no table reload */
    al_log(AL_LOG_INFO, "audit.reopen", "reopening the audit log");
}

static void start_drain(al_server *s, struct ev_loop *loop, int signum)
{
    if (s->draining)
        return;
    s->draining = 1;
    ev_timer_stop(loop, &s->delay_timer);
    al_log(AL_LOG_INFO, "serve.drain", "signal %d: draining in-flight requests (up to %u ms)",
           signum, s->table->limits.drain_timeout_ms);
    for (size_t i = 0; i < s->worker_count; i++)
        al_worker_post_stop(&s->workers[i]);
    ev_break(loop, EVBREAK_ALL);
}

static void on_drain_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    start_drain(t->data, loop, SIGTERM);
}

/* SIGTERM first makes the replica a lame duck for limits.drain_delay_ms (see
 * al_server.h); a second SIGTERM/SIGINT, or SIGINT at once, skips what is left of it. */
static void on_sigterm(struct ev_loop *loop, ev_signal *w, int revents)
{
    al_server *s = w->data;
    (void)revents;
    uint32_t delay = s->table->limits.drain_delay_ms;
    if (s->draining)
        return;
    if (s->lame_duck || w->signum != SIGTERM || delay == 0 || !s->readyz_asked) {
        start_drain(s, loop, w->signum);
        return;
    }
    s->lame_duck = 1;
    al_log(AL_LOG_INFO, "serve.lame_duck",
           "signal %d: /readyz answers 503 draining; serving on for %u ms "
           "(limits.drain_delay_ms) before the drain",
           w->signum, delay);
    ev_timer_set(&s->delay_timer, delay / 1000.0, 0.);
    ev_timer_start(loop, &s->delay_timer);
}

static unsigned nproc(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* A provider allowed to use http endpoints is warned about at every start (the secret
 * and tokens may cross the network in clear text). */
static void warn_insecure_providers(al_server *s)
{
    if (!s->creds || !s->table)
        return;
    al_cred_snapshot *snap = al_cred_cache_acquire(s->creds);
    for (size_t i = 0; i < s->table->target_count; i++) {
        const al_target *t = &s->table->targets[i];
        for (size_t k = 0; k < t->auth.provider_count; k++) {
            al_secret_view sv;
            if (al_cred_lookup(snap, t->auth.providers[k], &sv) != AL_OK || !sv.config_json)
                continue;
            json_t *cfg = json_loads(sv.config_json, 0, NULL);
            int insecure = json_is_true(json_object_get(cfg, "allowInsecureEndpoints"));
            json_decref(cfg);
            if (insecure)
                al_log(AL_LOG_WARN, "oauth2.insecure_endpoints",
                       "provider=%s target=%s: allow-insecure-endpoints is set, so its client "
                       "secret and tokens may travel over plain http",
                       sv.provider, t->name);
        }
    }
    al_cred_snapshot_release(snap);
}

/* OAuth on behalf of a user: the user-token vault over a store handle of its own (the
 * credential cache's belongs to its watcher thread), on the table's store backend, when
 * the store exists. */
static void open_user_tokens(al_server *s, const char *state_dir)
{
    al_store *us = NULL;
    al_vault *uv = NULL;
    if (!s->creds)
        return;
    /* lazy: a PostgreSQL store down or still empty at start is used once it is there */
    int rc = al_store_open(state_dir, AL_STORE_LAZY, &us);
    if (rc == AL_OK)
        rc = al_vault_open(state_dir, 0, &uv);
    if (rc == AL_OK)
        rc = al_user_cred_new(us, uv, s->creds, s->oidc, &s->users);
    if (rc != AL_OK) {
        al_store_close(us);
        al_vault_free(uv);
        s->users = NULL;
        al_log(AL_LOG_WARN, "user_tokens.unavailable",
               "the user token vault in %s could not be opened (%s): oauth2_3lo requests get "
               "502 until it is fixed and airlock restarted",
               state_dir, al_strerror(rc));
        return;
    }
    /* a rotate-master-key while serving: user tokens follow the store's new key */
    if (al_user_cred_set_state_dir(s->users, state_dir) != AL_OK)
        al_log(AL_LOG_WARN, "user_tokens.master_key",
               "out of memory: user tokens keep the master key loaded at start");
    al_user_cred_set_audit(s->users, s->audit);
}

int al_server_run(const char *config_path, const char *state_dir, unsigned workers)
{
    al_server srv, *s = &srv;
    memset(s, 0, sizeof *s);
    s->admin_fd = -1;
    s->listen_locks[0] = s->listen_locks[1] = -1;
    int status = 1;
    size_t started = 0;
    al_diags d;
    al_diags_init(&d);
    char *audit_path = NULL;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a spool file past RLIMIT_FSIZE: EFBIG, not death */
    s->last_reload_ok = -1;
    /* Absolute, so /status names the file whatever the operator's cwd. */
    s->config_path = realpath(config_path, NULL);
    if (!s->config_path)
        s->config_path = strdup(config_path);
    s->state_dir = strdup(state_dir);
    if (!s->config_path || !s->state_dir)
        goto out;
    int rc = al_table_load(config_path, &s->table, &d);
    if (rc == AL_OK)
        rc = al_store_choose_table(s->table); /* before anything opens the store */
    if (rc == AL_OK && (rc = check_providers(state_dir, s->table, &d)) != AL_OK) {
        al_table_unref(s->table);
        s->table = NULL;
    }
    if (rc) {
        al_diags_print(&d, stderr);
        fprintf(stderr, "airlock serve: %s is invalid (%s)\n", config_path, al_strerror(rc));
        goto out;
    }
    log_warnings(s->table);
    s->loaded_at_ms = wall_ms();
    if (inbound_apply(s, s->table, 1) != AL_OK) {
        fprintf(stderr, "airlock serve: cannot set up inbound authentication\n");
        goto out;
    }
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "airlock serve: cannot create state dir %s: %s\n", state_dir,
                strerror(errno));
        goto out;
    }
    rc = al_cred_cache_open(state_dir, &s->creds);
    if (rc) {
        s->creds = NULL;
        al_log(AL_LOG_WARN, "store.unavailable",
               "credential store in %s could not be opened (%s): requests needing a "
               "credential get 502 until it is fixed and airlock restarted",
               state_dir, al_strerror(rc));
    }
    if (al_iam_registry_new(s->creds, &s->iam))
        s->iam = NULL; /* iam targets with a non-store source get 502 */
    /* The CA for CONNECT interception: created on first start so it works at once. */
    rc = al_ca_init(state_dir, 0);
    if (rc && rc != AL_ERR_EXISTS)
        al_log(AL_LOG_WARN, "ca.init_failed", "cannot create a CA in %s: %s", state_dir,
               al_strerror(rc));
    al_ca *ca = NULL;
    rc = al_ca_load(state_dir, 1024, &ca);
    if (rc) {
        al_log(AL_LOG_WARN, "ca.unavailable",
               "no usable CA in %s (%s): CONNECT interception and listen.tls are off", state_dir,
               al_strerror(rc));
    } else {
        s->ca = ca;
        s->intercept_ctx = al_tls_intercept_ctx_new(ca);
        if (s->table->listen.tls) {
            char name[256];
            snprintf(name, sizeof name, "%s", s->table->listen.tls);
            char *colon = strrchr(name, ':');
            if (colon)
                *colon = '\0';
            s->listener_ctx = al_tls_listener_ctx_new(ca, NULL, NULL, name);
            if (!s->listener_ctx) {
                fprintf(stderr, "airlock serve: cannot set up TLS for listen.tls %s\n",
                        s->table->listen.tls);
                goto out;
            }
        }
    }
    if (s->table->audit.file) {
        audit_path = strdup(s->table->audit.file);
    } else if (asprintf(&audit_path, "%s/audit.log", state_dir) < 0) {
        audit_path = NULL;
    }
    const al_audit_cfg *ac = &s->table->audit;
    al_audit_opts aopts = {
        .chain = ac->chain,
        .state_dir = state_dir,
        .checkpoint_interval_ms = ac->checkpoint_interval_ms,
        .max_file_bytes = ac->max_file_bytes,
        .max_files = ac->max_files,
    };
    if (!audit_path || al_audit_open_opts(audit_path, &aopts, &s->audit) != 0) {
        fprintf(stderr, "airlock serve: cannot open the audit log %s\n",
                audit_path ? audit_path : "(none)");
        goto out;
    }
    audit_table_load(s, "table.load", AL_OK, s->table, NULL);
    /* OAuth: token endpoints and discovery go through the same egress guard as agent
     * traffic (a provider's allowPrivateNetwork lifts it for that provider only). */
    if ((!s->oidc && al_oidc_new(&s->oidc) != AL_OK) || /* inbound JWT may have made it */
        al_token_client_new(s->oidc, &s->tokens) != AL_OK) {
        fprintf(stderr, "airlock serve: cannot start the OAuth token client\n");
        goto out;
    }
    al_fetch_set_guard(al_oidc_fetcher(s->oidc), al_egress_guard_public, NULL);
    al_token_client_set_audit(s->tokens, s->audit);
    warn_insecure_providers(s);
    open_user_tokens(s, state_dir);
    if (s->users) {
        /* targets[].auth.token_cache: shared — 2LO tokens in the store, fetched by one
         * replica for all, store I/O on the user-token store thread */
        al_token_store ts = {al_user_cred_post, al_user_cred_load_row, al_user_cred_save_row,
                             al_user_cred_lock, s->users};
        al_token_client_set_store(s->tokens, &ts);
    }

    /* One airlock per address: the workers' SO_REUSEPORT would otherwise share it. */
    const char *addrs[2] = {s->table->listen.proxy, s->listener_ctx ? s->table->listen.tls : NULL};
    for (size_t i = 0; i < 2; i++) {
        char why[512];
        if (addrs[i] && al_listen_claim(addrs[i], &s->listen_locks[i], why, sizeof why) != AL_OK) {
            fprintf(stderr, "airlock serve: %s\n", why);
            goto out;
        }
    }

    unsigned n =
        workers ? workers : (s->table->limits.workers ? s->table->limits.workers : nproc());
    s->workers = calloc(n, sizeof *s->workers);
    /* one shard per worker, and one for the token fetch thread (its only writer) */
    if (!s->workers || al_metrics_new(n + 1, &s->metrics) != AL_OK)
        goto out;
    al_token_client_set_observer(s->tokens, on_token_answer, al_metrics_shard_at(s->metrics, n));
    for (size_t i = 0; i < n; i++) {
        rc = al_worker_init(&s->workers[i], (int)i, s, s->table);
        if (rc) {
            fprintf(stderr, "airlock serve: worker %zu: cannot listen on %s (%s)\n", i,
                    s->table->listen.proxy ? s->table->listen.proxy : "-", al_strerror(rc));
            goto out;
        }
        s->worker_count++;
    }

    s->loop = ev_default_loop(EVFLAG_AUTO);
    if (s->table->listen.admin) {
        rc = al_listen_socket(s->table->listen.admin, 0, &s->admin_fd);
        if (rc) {
            fprintf(stderr, "airlock serve: cannot listen on admin %s\n", s->table->listen.admin);
            goto out;
        }
        ev_io_init(&s->admin_w, on_admin_accept, s->admin_fd, EV_READ);
        s->admin_w.data = s;
        ev_io_start(s->loop, &s->admin_w);
        ev_init(&s->admin_retry, on_admin_retry);
        s->admin_retry.data = s;
    }
    ev_init(&s->delay_timer, on_drain_delay);
    s->delay_timer.data = s;
    ev_signal_init(&s->sighup, on_sighup, SIGHUP);
    ev_signal_init(&s->sigterm, on_sigterm, SIGTERM);
    ev_signal_init(&s->sigint, on_sigterm, SIGINT);
    ev_signal_init(&s->sigusr1, on_sigusr1, SIGUSR1);
    s->sighup.data = s->sigterm.data = s->sigint.data = s->sigusr1.data = s;
    ev_signal_start(s->loop, &s->sighup);
    ev_signal_start(s->loop, &s->sigterm);
    ev_signal_start(s->loop, &s->sigint);
    ev_signal_start(s->loop, &s->sigusr1);

    /* Workers never take the process signals: libev delivers them to this loop. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    for (; started < s->worker_count; started++) {
        if (al_worker_start(&s->workers[started]) != AL_OK)
            break;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started < s->worker_count) {
        fprintf(stderr, "airlock serve: cannot start worker threads\n");
        for (size_t i = 0; i < started; i++)
            al_worker_post_stop(&s->workers[i]);
        goto out;
    }
    al_log(AL_LOG_INFO, "serve.start",
           "proxy=%s admin=%s workers=%zu targets=%zu state_dir=%s table=%s sha256=%s",
           s->table->listen.proxy ? s->table->listen.proxy : "-",
           s->table->listen.admin ? s->table->listen.admin : "-", s->worker_count,
           s->table->target_count, state_dir, s->config_path, s->table->sha256);
    ev_run(s->loop, 0);
    status = 0;
out:
    for (size_t i = 0; i < started; i++)
        al_worker_join(&s->workers[i]);
    for (size_t i = 0; i < s->worker_count; i++)
        al_worker_destroy(&s->workers[i]);
    free(s->workers);
    al_metrics_free(s->metrics); /* after the workers: they write it until they stop */
    if (s->admin_fd >= 0)
        close(s->admin_fd);
    for (size_t i = 0; i < 2; i++)
        if (s->listen_locks[i] >= 0)
            close(s->listen_locks[i]);
    if (s->oidc)
        al_fetch_stop(al_oidc_fetcher(s->oidc)); /* no token callback after this */
    /* the store thread first: a shared 2LO load it drops completes in the token cache */
    al_user_cred_free(s->users);
    al_token_client_free(s->tokens);
    al_oidc_free(s->oidc);
    if (s->audit)
        al_audit_close(s->audit);
    al_iam_registry_free(s->iam); /* its fetch threads stop; the workers are gone */
    if (s->creds)
        al_cred_cache_close(s->creds);
    if (s->intercept_ctx)
        SSL_CTX_free(s->intercept_ctx);
    if (s->listener_ctx)
        SSL_CTX_free(s->listener_ctx);
    if (s->ca)
        al_ca_free(s->ca);
    al_inbound_free(atomic_load(&s->authz.inbound));
    for (size_t i = 0; i < s->inbound_old_count; i++)
        al_inbound_free(s->inbound_old[i]);
    free(s->inbound_old); /* (they start loads, never callbacks: nothing ran on the thread) */
    al_table_unref(s->table);
    al_diags_free(&d);
    free(audit_path);
    free(s->config_path);
    free(s->state_dir);
    if (status == 0)
        al_log(AL_LOG_INFO, "serve.stop", "drained and stopped");
    return status;
}
