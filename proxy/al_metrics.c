/* al_metrics: per-worker counters and the Prometheus exposition (see al_metrics.h).
 *
 * Writers (one worker per shard) update with relaxed load + store: the shard has a
 * single writer, so no atomic read-modify-write is needed and the hot path costs a
 * few plain stores. Readers (the admin thread) use relaxed loads, and acquire loads
 * on a slot's `used` flag, which its writer sets with a release store after the name
 * is in place. Recent refusals are a small ring per shard, each entry under its own
 * sequence counter (a seqlock: odd while being written; the reader skips an entry
 * whose counter moved). */
#include "al_metrics.h"

#include "common/al_err.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef _Atomic uint64_t ctr;

#define METHOD_CLASSES 4 /* read, write, connect, other */
#define STATUS_CLASSES 6 /* none, 1xx .. 5xx */
#define DECISIONS      2 /* allow, deny */
#define BUCKETS        14
static const uint32_t bucket_ms[BUCKETS] = {5,    10,   25,   50,    100,   250,   500,
                                            1000, 2500, 5000, 10000, 30000, 60000, 120000};
static const char *const bucket_le[BUCKETS] = {"0.005", "0.01", "0.025", "0.05", "0.1",
                                               "0.25",  "0.5",  "1",     "2.5",  "5",
                                               "10",    "30",   "60",    "120"};
static const char *const method_names[METHOD_CLASSES] = {"read", "write", "connect", "other"};
static const char *const status_names[STATUS_CLASSES] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
static const char *const decision_names[DECISIONS] = {"allow", "deny"};
static const char *const token_names[AL_METRICS_TOKEN_OUTCOMES] = {"fetched", "cache_hit",
                                                                   "failed"};

#define TARGET_SLOTS   (2 * AL_METRICS_TARGETS_MAX) /* open addressing, load <= 1/2 */
#define PROVIDER_SLOTS (2 * AL_METRICS_PROVIDERS_MAX)
#define REASON_SLOTS   (2 * AL_METRICS_REASONS_MAX)
#define OTHER          "_other" /* the slot past a table's cap */
#define NONE           "_none"  /* a request without a target (unknown_target, ...) */

typedef struct histo {
    ctr b[BUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
    ctr sum_ms, count;
} histo;

typedef struct tslot {
    atomic_int used;
    char name[AL_METRICS_NAME_MAX];
    ctr req[METHOD_CLASSES][STATUS_CLASSES][DECISIONS];
    histo upstream, total;
    ctr egress_denied, scrubbed;
    _Atomic int64_t last_ms;
} tslot;

typedef struct pslot {
    atomic_int used;
    char name[AL_METRICS_NAME_MAX];
    ctr uses;
    ctr token[AL_METRICS_TOKEN_OUTCOMES];
    _Atomic int64_t last_ms;
} pslot;

typedef struct rslot {
    atomic_int used;
    char name[AL_METRICS_NAME_MAX];
    ctr count;
} rslot;

typedef struct recent {
    _Atomic uint32_t seq; /* odd while written */
    _Atomic int64_t time_ms;
    atomic_int status, target, reason; /* slot indexes; -1 = none */
} recent;

struct al_metrics_shard {
    tslot targets[TARGET_SLOTS + 1]; /* the last one is "_other" */
    pslot providers[PROVIDER_SLOTS + 1];
    rslot reasons[REASON_SLOTS + 1];
    size_t target_n, provider_n, reason_n; /* writer only */
    recent recent[AL_METRICS_RECENT];
    uint32_t recent_next; /* writer only */
    ctr connections, streams;
} __attribute__((aligned(64)));

struct al_metrics {
    al_metrics_shard *shards;
    size_t n;
};

/* ---- single-writer counter updates ---------------------------------------- */

static inline void add(ctr *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline uint64_t get(ctr *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

int al_metrics_new(size_t shards, al_metrics **out)
{
    *out = NULL;
    al_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return AL_ERR_NOMEM;
    if (shards && !(m->shards = aligned_alloc(64, ((shards * sizeof *m->shards + 63) / 64) * 64))) {
        free(m);
        return AL_ERR_NOMEM;
    }
    if (shards)
        memset(m->shards, 0, shards * sizeof *m->shards);
    m->n = shards;
    for (size_t i = 0; i < shards; i++) {
        al_metrics_shard *sh = &m->shards[i];
        strcpy(sh->targets[TARGET_SLOTS].name, OTHER);
        strcpy(sh->providers[PROVIDER_SLOTS].name, OTHER);
        strcpy(sh->reasons[REASON_SLOTS].name, OTHER);
        atomic_store(&sh->targets[TARGET_SLOTS].used, 1);
        atomic_store(&sh->providers[PROVIDER_SLOTS].used, 1);
        atomic_store(&sh->reasons[REASON_SLOTS].used, 1);
    }
    *out = m;
    return AL_OK;
}

void al_metrics_free(al_metrics *m)
{
    if (!m)
        return;
    free(m->shards);
    free(m);
}

al_metrics_shard *al_metrics_shard_at(al_metrics *m, size_t i)
{
    return m && i < m->n ? &m->shards[i] : NULL;
}

/* ---- interning ---------------------------------------------------------- */

static uint32_t hash(const char *s, size_t l)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < l; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Finds or adds `name` in a table of `slots` (a power of two) entries of `size` bytes
 * whose first members are `used` and `name`; past `cap` names it returns the overflow
 * entry at index `slots`. Returns the index. Writer only. */
static size_t intern(void *table, size_t size, size_t slots, size_t cap, size_t *n,
                     const char *name)
{
    size_t l = strnlen(name, AL_METRICS_NAME_MAX - 1);
    size_t i = hash(name, l) & (slots - 1);
    for (size_t probe = 0; probe < slots; probe++, i = (i + 1) & (slots - 1)) {
        char *e = (char *)table + i * size;
        atomic_int *used = (atomic_int *)e;
        char *ename = e + offsetof(tslot, name);
        if (atomic_load_explicit(used, memory_order_relaxed)) {
            if (memcmp(ename, name, l) == 0 && ename[l] == '\0')
                return i;
            continue;
        }
        if (*n >= cap)
            break;
        memcpy(ename, name, l);
        ename[l] = '\0';
        atomic_store_explicit(used, 1, memory_order_release); /* name before flag */
        (*n)++;
        return i;
    }
    return slots;
}

_Static_assert(offsetof(tslot, name) == offsetof(pslot, name), "slot layout");
_Static_assert(offsetof(tslot, name) == offsetof(rslot, name), "slot layout");

static size_t target_slot(al_metrics_shard *sh, const char *name)
{
    return intern(sh->targets, sizeof sh->targets[0], TARGET_SLOTS, AL_METRICS_TARGETS_MAX,
                  &sh->target_n, name && *name ? name : NONE);
}

static size_t provider_slot(al_metrics_shard *sh, const char *name)
{
    return intern(sh->providers, sizeof sh->providers[0], PROVIDER_SLOTS, AL_METRICS_PROVIDERS_MAX,
                  &sh->provider_n, name);
}

static size_t reason_slot(al_metrics_shard *sh, const char *name)
{
    return intern(sh->reasons, sizeof sh->reasons[0], REASON_SLOTS, AL_METRICS_REASONS_MAX,
                  &sh->reason_n, name);
}

/* ---- writers ------------------------------------------------------------ */

static int method_class(const char *m)
{
    if (!m)
        return 3;
    if (!strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS"))
        return 0;
    if (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH") || !strcmp(m, "DELETE"))
        return 1;
    if (!strcmp(m, "CONNECT"))
        return 2;
    return 3;
}

static void observe(histo *h, uint32_t ms)
{
    size_t b = 0;
    while (b < BUCKETS && ms > bucket_ms[b])
        b++;
    add(&h->b[b], 1);
    add(&h->sum_ms, ms);
    add(&h->count, 1);
}

void al_metrics_count_request(al_metrics_shard *sh, const al_audit_request *rec)
{
    if (!sh || !rec)
        return;
    tslot *t = &sh->targets[target_slot(sh, rec->target)];
    int sc = rec->status >= 100 && rec->status < 600 ? rec->status / 100 : 0;
    int deny = rec->decision && !strcmp(rec->decision, "deny");
    add(&t->req[method_class(rec->method)][sc][deny], 1);
    if (rec->upstream_addr)
        observe(&t->upstream, rec->upstream_ms);
    observe(&t->total, rec->total_ms);
    atomic_store_explicit(&t->last_ms, rec->time_ms, memory_order_relaxed);
    if (rec->scrubbed)
        add(&t->scrubbed, rec->scrubbed);
    if (rec->provider && rec->provider_version) {
        pslot *p = &sh->providers[provider_slot(sh, rec->provider)];
        add(&p->uses, 1);
        atomic_store_explicit(&p->last_ms, rec->time_ms, memory_order_relaxed);
    }
    if (!rec->reason)
        return;
    size_t ri = reason_slot(sh, rec->reason);
    add(&sh->reasons[ri].count, 1);
    if (!strcmp(rec->reason, "egress_denied"))
        add(&t->egress_denied, 1);
    recent *e = &sh->recent[sh->recent_next++ % AL_METRICS_RECENT];
    uint32_t seq = atomic_load_explicit(&e->seq, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->time_ms, rec->time_ms, memory_order_relaxed);
    atomic_store_explicit(&e->status, rec->status, memory_order_relaxed);
    atomic_store_explicit(&e->target, (int)(t - sh->targets), memory_order_relaxed);
    atomic_store_explicit(&e->reason, (int)ri, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 2, memory_order_release);
}

void al_metrics_set_active(al_metrics_shard *sh, uint64_t connections, uint64_t streams)
{
    if (!sh)
        return;
    atomic_store_explicit(&sh->connections, connections, memory_order_relaxed);
    atomic_store_explicit(&sh->streams, streams, memory_order_relaxed);
}

void al_metrics_count_token(al_metrics_shard *sh, const char *provider,
                            enum al_metrics_token_outcome outcome)
{
    if (sh && provider && outcome < AL_METRICS_TOKEN_OUTCOMES)
        add(&sh->providers[provider_slot(sh, provider)].token[outcome], 1);
}

/* ---- readers: merge the shards by name ------------------------------------ */

typedef struct mtarget {
    const char *name;
    uint64_t req[METHOD_CLASSES][STATUS_CLASSES][DECISIONS];
    uint64_t up_b[BUCKETS + 1], up_sum, up_n, tot_b[BUCKETS + 1], tot_sum, tot_n;
    uint64_t egress, scrubbed;
    int64_t last_ms;
} mtarget;

typedef struct mprovider {
    const char *name;
    uint64_t uses, token[AL_METRICS_TOKEN_OUTCOMES];
    int64_t last_ms;
} mprovider;

typedef struct mreason {
    const char *name;
    uint64_t count;
} mreason;

typedef struct merged {
    mtarget *t;
    size_t tn;
    mprovider *p;
    size_t pn;
    mreason *r;
    size_t rn;
    uint64_t connections, streams;
} merged;

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Index of `name` in an array of structs starting with a name pointer, adding it. */
static size_t find_or_add(void *arr, size_t size, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(*(const char **)((char *)arr + i * size), name))
            return i;
    memset((char *)arr + *n * size, 0, size);
    *(const char **)((char *)arr + *n * size) = name;
    return (*n)++;
}

static int merge(al_metrics *m, merged *g)
{
    memset(g, 0, sizeof *g);
    size_t nt = m->n * (TARGET_SLOTS + 1), np = m->n * (PROVIDER_SLOTS + 1),
           nr = m->n * (REASON_SLOTS + 1);
    g->t = malloc((nt ? nt : 1) * sizeof *g->t);
    g->p = malloc((np ? np : 1) * sizeof *g->p);
    g->r = malloc((nr ? nr : 1) * sizeof *g->r);
    if (!g->t || !g->p || !g->r)
        return AL_ERR_NOMEM;
    for (size_t s = 0; s < m->n; s++) {
        al_metrics_shard *sh = &m->shards[s];
        g->connections += get(&sh->connections);
        g->streams += get(&sh->streams);
        for (size_t i = 0; i <= TARGET_SLOTS; i++) {
            tslot *t = &sh->targets[i];
            if (!atomic_load_explicit(&t->used, memory_order_acquire))
                continue;
            mtarget *o = &g->t[find_or_add(g->t, sizeof *g->t, &g->tn, t->name)];
            for (int a = 0; a < METHOD_CLASSES; a++)
                for (int b = 0; b < STATUS_CLASSES; b++)
                    for (int c = 0; c < DECISIONS; c++)
                        o->req[a][b][c] += get(&t->req[a][b][c]);
            for (int b = 0; b <= BUCKETS; b++) {
                o->up_b[b] += get(&t->upstream.b[b]);
                o->tot_b[b] += get(&t->total.b[b]);
            }
            o->up_sum += get(&t->upstream.sum_ms);
            o->up_n += get(&t->upstream.count);
            o->tot_sum += get(&t->total.sum_ms);
            o->tot_n += get(&t->total.count);
            o->egress += get(&t->egress_denied);
            o->scrubbed += get(&t->scrubbed);
            int64_t last = atomic_load_explicit(&t->last_ms, memory_order_relaxed);
            if (last > o->last_ms)
                o->last_ms = last;
        }
        for (size_t i = 0; i <= PROVIDER_SLOTS; i++) {
            pslot *p = &sh->providers[i];
            if (!atomic_load_explicit(&p->used, memory_order_acquire))
                continue;
            mprovider *o = &g->p[find_or_add(g->p, sizeof *g->p, &g->pn, p->name)];
            o->uses += get(&p->uses);
            for (int k = 0; k < AL_METRICS_TOKEN_OUTCOMES; k++)
                o->token[k] += get(&p->token[k]);
            int64_t last = atomic_load_explicit(&p->last_ms, memory_order_relaxed);
            if (last > o->last_ms)
                o->last_ms = last;
        }
        for (size_t i = 0; i <= REASON_SLOTS; i++) {
            rslot *r = &sh->reasons[i];
            if (!atomic_load_explicit(&r->used, memory_order_acquire))
                continue;
            g->r[find_or_add(g->r, sizeof *g->r, &g->rn, r->name)].count += get(&r->count);
        }
    }
    qsort(g->t, g->tn, sizeof *g->t, by_name);
    qsort(g->p, g->pn, sizeof *g->p, by_name);
    qsort(g->r, g->rn, sizeof *g->r, by_name);
    return AL_OK;
}

static void merged_free(merged *g)
{
    free(g->t);
    free(g->p);
    free(g->r);
}

/* An "_other" row that never counted anything is noise: leave it out. */
static int target_empty(const mtarget *t)
{
    return t->tot_n == 0 && t->scrubbed == 0 && t->egress == 0;
}

/* ---- exposition --------------------------------------------------------- */

void al_metrics_label_escape(al_buf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            al_buf_append(out, "\\\\", 2);
        else if (*p == '"')
            al_buf_append(out, "\\\"", 2);
        else if (*p == '\n')
            al_buf_append(out, "\\n", 2);
        else
            al_buf_append(out, p, 1);
    }
}

static void head(al_buf *o, const char *name, const char *type, const char *help)
{
    al_buf_appendf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void label(al_buf *o, const char *k, const char *v, int first)
{
    al_buf_appendf(o, "%s%s=\"", first ? "" : ",", k);
    al_metrics_label_escape(o, v);
    al_buf_append(o, "\"", 1);
}

static void histogram(al_buf *o, const char *name, const char *target, const uint64_t *b,
                      uint64_t sum_ms, uint64_t n)
{
    uint64_t cum = 0;
    for (int i = 0; i <= BUCKETS; i++) {
        cum += b[i];
        al_buf_appendf(o, "%s_bucket{", name);
        label(o, "target", target, 1);
        al_buf_appendf(o, ",le=\"%s\"} %llu\n", i < BUCKETS ? bucket_le[i] : "+Inf",
                       (unsigned long long)cum);
    }
    al_buf_appendf(o, "%s_sum{", name);
    label(o, "target", target, 1);
    al_buf_appendf(o, "} %llu.%03llu\n", (unsigned long long)(sum_ms / 1000),
                   (unsigned long long)(sum_ms % 1000));
    al_buf_appendf(o, "%s_count{", name);
    label(o, "target", target, 1);
    al_buf_appendf(o, "} %llu\n", (unsigned long long)n);
}

static void scalar(al_buf *o, const char *name, const char *type, const char *help, uint64_t v)
{
    head(o, name, type, help);
    al_buf_appendf(o, "%s %llu\n", name, (unsigned long long)v);
}

int al_metrics_render(al_metrics *m, const al_metrics_extra *x, al_buf *o)
{
    merged g;
    int rc = merge(m, &g);
    if (rc != AL_OK)
        goto out;

    head(o, "airlock_requests_total", "counter",
         "Requests finished, by target, method class, status class and decision.");
    for (size_t i = 0; i < g.tn; i++)
        for (int a = 0; a < METHOD_CLASSES; a++)
            for (int b = 0; b < STATUS_CLASSES; b++)
                for (int c = 0; c < DECISIONS; c++) {
                    if (!g.t[i].req[a][b][c])
                        continue;
                    al_buf_append(o, "airlock_requests_total{", 23);
                    label(o, "target", g.t[i].name, 1);
                    label(o, "method", method_names[a], 0);
                    label(o, "status", status_names[b], 0);
                    label(o, "decision", decision_names[c], 0);
                    al_buf_appendf(o, "} %llu\n", (unsigned long long)g.t[i].req[a][b][c]);
                }

    head(o, "airlock_upstream_duration_seconds", "histogram",
         "Time from sending the request upstream to its end, by target.");
    for (size_t i = 0; i < g.tn; i++)
        if (g.t[i].up_n)
            histogram(o, "airlock_upstream_duration_seconds", g.t[i].name, g.t[i].up_b,
                      g.t[i].up_sum, g.t[i].up_n);
    head(o, "airlock_request_duration_seconds", "histogram",
         "Time from the request's arrival to its end, by target.");
    for (size_t i = 0; i < g.tn; i++)
        if (!target_empty(&g.t[i]))
            histogram(o, "airlock_request_duration_seconds", g.t[i].name, g.t[i].tot_b,
                      g.t[i].tot_sum, g.t[i].tot_n);

    head(o, "airlock_refusals_total", "counter",
         "Requests airlock refused or failed itself, by refusal code.");
    for (size_t i = 0; i < g.rn; i++) {
        if (!g.r[i].count)
            continue;
        al_buf_append(o, "airlock_refusals_total{", 23);
        label(o, "reason", g.r[i].name, 1);
        al_buf_appendf(o, "} %llu\n", (unsigned long long)g.r[i].count);
    }
    head(o, "airlock_egress_denials_total", "counter",
         "Requests the egress guard refused (private, loopback or denied addresses), by "
         "target.");
    for (size_t i = 0; i < g.tn; i++) {
        if (target_empty(&g.t[i]))
            continue;
        al_buf_append(o, "airlock_egress_denials_total{", 29);
        label(o, "target", g.t[i].name, 1);
        al_buf_appendf(o, "} %llu\n", (unsigned long long)g.t[i].egress);
    }
    head(o, "airlock_scrubbed_secrets_total", "counter",
         "Injected credentials found echoed in an upstream response and replaced, by target.");
    for (size_t i = 0; i < g.tn; i++) {
        if (target_empty(&g.t[i]))
            continue;
        al_buf_append(o, "airlock_scrubbed_secrets_total{", 31);
        label(o, "target", g.t[i].name, 1);
        al_buf_appendf(o, "} %llu\n", (unsigned long long)g.t[i].scrubbed);
    }

    scalar(o, "airlock_active_connections", "gauge", "Agent connections open now.", g.connections);
    scalar(o, "airlock_active_streams", "gauge",
           "Requests in flight now (HTTP/1.1 requests and HTTP/2 streams).", g.streams);

    scalar(o, "airlock_audit_records_written_total", "counter",
           "Audit records written to the log file.", x ? x->audit_written : 0);
    scalar(o, "airlock_audit_records_dropped_total", "counter",
           "Audit records lost (queue full or write failed).", x ? x->audit_dropped : 0);
    scalar(o, "airlock_audit_write_failures_total", "counter",
           "Failed writes to the audit log file.", x ? x->audit_failed : 0);
    scalar(o, "airlock_audit_lag_records", "gauge", "Audit records queued and not yet written.",
           x ? x->audit_lag : 0);
    scalar(o, "airlock_table_generation", "gauge",
           "Generation of the target table in use (1 at start, +1 per applied reload).",
           x ? x->table_generation : 0);

    head(o, "airlock_token_requests_total", "counter",
         "Access tokens served to requests, by provider and outcome (fetched, cache_hit, "
         "failed).");
    for (size_t i = 0; i < g.pn; i++)
        for (int k = 0; k < AL_METRICS_TOKEN_OUTCOMES; k++) {
            if (!g.p[i].token[k])
                continue;
            al_buf_append(o, "airlock_token_requests_total{", 29);
            label(o, "provider", g.p[i].name, 1);
            label(o, "outcome", token_names[k], 0);
            al_buf_appendf(o, "} %llu\n", (unsigned long long)g.p[i].token[k]);
        }
    head(o, "airlock_credential_uses_total", "counter",
         "Requests that carried a credential of the provider.");
    for (size_t i = 0; i < g.pn; i++) {
        if (!g.p[i].uses)
            continue;
        al_buf_append(o, "airlock_credential_uses_total{", 30);
        label(o, "provider", g.p[i].name, 1);
        al_buf_appendf(o, "} %llu\n", (unsigned long long)g.p[i].uses);
    }

    if (x && x->provider_count) {
        head(o, "airlock_credential_age_seconds", "gauge",
             "Age of the provider's current secret version.");
        for (size_t i = 0; i < x->provider_count; i++) {
            const al_metrics_provider *p = &x->providers[i];
            if (!p->created_at)
                continue;
            int64_t age = x->now_ms / 1000 - p->created_at;
            al_buf_append(o, "airlock_credential_age_seconds{", 31);
            label(o, "provider", p->name, 1);
            al_buf_appendf(o, "} %lld\n", (long long)(age > 0 ? age : 0));
        }
        head(o, "airlock_credential_rotation_max_age_seconds", "gauge",
             "The provider's rotation_max_age (only providers that set one).");
        for (size_t i = 0; i < x->provider_count; i++) {
            if (!x->providers[i].max_age_s)
                continue;
            al_buf_append(o, "airlock_credential_rotation_max_age_seconds{", 44);
            label(o, "provider", x->providers[i].name, 1);
            al_buf_appendf(o, "} %lld\n", (long long)x->providers[i].max_age_s);
        }
        head(o, "airlock_credential_version", "gauge", "The provider's current secret version.");
        for (size_t i = 0; i < x->provider_count; i++) {
            al_buf_append(o, "airlock_credential_version{", 27);
            label(o, "provider", x->providers[i].name, 1);
            al_buf_appendf(o, "} %u\n", (unsigned)x->providers[i].version);
        }
        head(o, "airlock_credential_last_use_timestamp_seconds", "gauge",
             "When a request last carried the provider's credential (unix seconds).");
        for (size_t i = 0; i < g.pn; i++) {
            if (!g.p[i].last_ms)
                continue;
            al_buf_append(o, "airlock_credential_last_use_timestamp_seconds{", 46);
            label(o, "provider", g.p[i].name, 1);
            al_buf_appendf(o, "} %lld.%03lld\n", (long long)(g.p[i].last_ms / 1000),
                           (long long)(g.p[i].last_ms % 1000));
        }
    }
    if (o->data && o->len >= o->max)
        rc = AL_ERR_TOOBIG;
out:
    merged_free(&g);
    return rc;
}

/* ---- status-page summaries --------------------------------------------- */

size_t al_metrics_targets(al_metrics *m, al_metrics_target_summary *out, size_t cap)
{
    merged g;
    size_t n = 0;
    if (merge(m, &g) == AL_OK) {
        for (size_t i = 0; i < g.tn && n < cap; i++) {
            const mtarget *t = &g.t[i];
            if (target_empty(t))
                continue;
            al_metrics_target_summary *s = &out[n++];
            memset(s, 0, sizeof *s);
            snprintf(s->name, sizeof s->name, "%s", t->name);
            for (int a = 0; a < METHOD_CLASSES; a++)
                for (int b = 0; b < STATUS_CLASSES; b++) {
                    s->requests += t->req[a][b][0] + t->req[a][b][1];
                    s->denied += t->req[a][b][1];
                    /* an error: a 4xx/5xx answer (the upstream's or airlock's own), or
                     * a refusal whatever its status; what the alert rules count */
                    s->errors += b >= 4 ? t->req[a][b][0] + t->req[a][b][1] : t->req[a][b][1];
                }
            s->last_ms = t->last_ms;
        }
    }
    merged_free(&g);
    return n;
}

static int by_time_desc(const void *a, const void *b)
{
    const al_metrics_refusal *x = a, *y = b;
    return x->time_ms < y->time_ms ? 1 : x->time_ms > y->time_ms ? -1 : 0;
}

size_t al_metrics_recent_refusals(al_metrics *m, al_metrics_refusal *out, size_t cap)
{
    size_t total = m ? m->n * AL_METRICS_RECENT : 0, n = 0;
    al_metrics_refusal *all = calloc(total ? total : 1, sizeof *all);
    if (!all)
        return 0;
    for (size_t s = 0; s < (m ? m->n : 0); s++) {
        al_metrics_shard *sh = &m->shards[s];
        for (size_t i = 0; i < AL_METRICS_RECENT; i++) {
            recent *e = &sh->recent[i];
            uint32_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
            if (s1 == 0 || (s1 & 1))
                continue; /* never written, or being written */
            int64_t t = atomic_load_explicit(&e->time_ms, memory_order_relaxed);
            int st = atomic_load_explicit(&e->status, memory_order_relaxed);
            int ti = atomic_load_explicit(&e->target, memory_order_relaxed);
            int ri = atomic_load_explicit(&e->reason, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&e->seq, memory_order_relaxed) != s1)
                continue;
            if (ti < 0 || ti > TARGET_SLOTS || ri < 0 || ri > REASON_SLOTS)
                continue;
            al_metrics_refusal *r = &all[n++];
            r->time_ms = t;
            r->status = st;
            /* slot names are written once before the slot is published */
            snprintf(r->target, sizeof r->target, "%s", sh->targets[ti].name);
            snprintf(r->reason, sizeof r->reason, "%s", sh->reasons[ri].name);
        }
    }
    qsort(all, n, sizeof *all, by_time_desc);
    if (n > cap)
        n = cap;
    memcpy(out, all, n * sizeof *all);
    free(all);
    return n;
}

int64_t al_metrics_provider_last_use(al_metrics *m, const char *provider)
{
    int64_t last = 0;
    size_t l = strnlen(provider, AL_METRICS_NAME_MAX - 1);
    for (size_t s = 0; m && s < m->n; s++) {
        al_metrics_shard *sh = &m->shards[s];
        for (size_t i = 0; i < PROVIDER_SLOTS; i++) {
            pslot *p = &sh->providers[i];
            if (!atomic_load_explicit(&p->used, memory_order_acquire) ||
                memcmp(p->name, provider, l) != 0 || p->name[l] != '\0')
                continue;
            int64_t t = atomic_load_explicit(&p->last_ms, memory_order_relaxed);
            if (t > last)
                last = t;
        }
    }
    return last;
}
