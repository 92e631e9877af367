/* al_metrics: Prometheus metrics of `airlock serve` — counted per worker without
 * locks, summed by the admin thread when /metrics (or /status) is read.
 *
 * Each worker owns one shard: only that thread writes it, with relaxed atomic loads
 * and stores (no read-modify-write, no lock prefix, no shared cache line with another
 * worker), and the admin thread reads every shard with relaxed loads. A reader may
 * see one request's counters half updated (its request counted, its histogram not
 * yet): Prometheus counters tolerate that; nothing is ever lost or counted twice.
 *
 * Label cardinality is bounded by design: the only labels are target names (from the
 * table; at most AL_METRICS_TARGETS_MAX per shard, the rest count under
 * target="_other"), provider names (from the store; same rule), airlock's own
 * refusal codes, and fixed classes (method read/write/connect/other, status 1xx..5xx,
 * decision allow/deny). Never a path, host, client or principal.
 *
 * Names are interned per shard in an open-addressing table: a slot's name is written
 * once, before the slot is published with a release store, so a reader that sees the
 * slot sees its name; slots are never reused while the process runs (a target removed
 * by a reload keeps its counters, as Prometheus expects of a counter). */
#ifndef AL_METRICS_H
#define AL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_buf.h"
#include "policy/al_audit.h"

#define AL_METRICS_TARGETS_MAX   256 /* per shard, then "_other" */
#define AL_METRICS_PROVIDERS_MAX 128 /* per shard, then "_other" */
#define AL_METRICS_REASONS_MAX   64  /* refusal codes are airlock's own: few */
#define AL_METRICS_NAME_MAX      96  /* longer names are cut (still distinct enough) */
#define AL_METRICS_RECENT        16  /* recent refusals kept per shard for /status */

typedef struct al_metrics al_metrics;
typedef struct al_metrics_shard al_metrics_shard;

/* One shard per worker. AL_ERR_NOMEM. */
int al_metrics_new(size_t shards, al_metrics **out);
void al_metrics_free(al_metrics *m);
/* Worker i's shard (i < shards), NULL otherwise (or when m is NULL). */
al_metrics_shard *al_metrics_shard_at(al_metrics *m, size_t i);

/* ---- writers: the shard's own worker thread only; each is a no-op on NULL ---- */

/* Counts one finished request from the record the audit log gets (same moment, same
 * values): requests by target, method class, status class and decision; upstream
 * (when it had an upstream) and total latency; refusals by reason and egress-guard
 * denials; echoed credentials scrubbed; the provider's last use. `now_ms` is the wall clock. */
void al_metrics_count_request(al_metrics_shard *sh, const al_audit_request *rec);
/* Live connections and in-flight requests (h1 requests and h2 streams) of the worker. */
void al_metrics_set_active(al_metrics_shard *sh, uint64_t connections, uint64_t streams);
enum al_metrics_token_outcome {
    AL_METRICS_TOKEN_FETCHED,   /* a token endpoint answered with a token */
    AL_METRICS_TOKEN_CACHE_HIT, /* a cached token served the request */
    AL_METRICS_TOKEN_FAILED,    /* the token endpoint failed or refused */
    AL_METRICS_TOKEN_OUTCOMES
};
/* airlock_token_requests_total{provider,outcome} (for the OAuth credential stage). */
void al_metrics_count_token(al_metrics_shard *sh, const char *provider,
                            enum al_metrics_token_outcome outcome);

/* ---- reader: the admin thread ---- */

/* What the admin thread adds from outside the shards. */
typedef struct al_metrics_provider {
    const char *name;
    uint32_t version;        /* current version */
    int64_t created_at;      /* unix s the current version was created; 0 = unknown */
    int64_t max_age_s;       /* its provider's rotation_max_age; 0 = none */
    const char *fingerprint; /* "sha256:..." (never the secret); may be NULL */
} al_metrics_provider;

typedef struct al_metrics_extra {
    int64_t now_ms; /* wall clock */
    uint64_t audit_written, audit_dropped, audit_failed, audit_lag;
    uint64_t table_generation;
    const al_metrics_provider *providers;
    size_t provider_count;
} al_metrics_extra;

/* Appends the whole exposition (text format 0.0.4: HELP, TYPE, samples; label
 * values escaped) to out. AL_ERR_TOOBIG if out's limit is reached. */
int al_metrics_render(al_metrics *m, const al_metrics_extra *x, al_buf *out);

/* Summaries for the status page, summed over the shards. */
typedef struct al_metrics_target_summary {
    char name[AL_METRICS_NAME_MAX];
    uint64_t requests, errors, denied; /* errors: status 4xx/5xx or a refusal */
    int64_t last_ms;                   /* wall clock of the last request, 0 = none */
} al_metrics_target_summary;
typedef struct al_metrics_refusal {
    int64_t time_ms;
    int status;
    char target[AL_METRICS_NAME_MAX];
    char reason[AL_METRICS_NAME_MAX];
} al_metrics_refusal;
/* Fills at most `cap` targets (sorted by name); returns how many. */
size_t al_metrics_targets(al_metrics *m, al_metrics_target_summary *out, size_t cap);
/* The most recent refusals over all shards, newest first; returns how many. */
size_t al_metrics_recent_refusals(al_metrics *m, al_metrics_refusal *out, size_t cap);
/* Wall clock of the provider's last use (ms), 0 if never seen. */
int64_t al_metrics_provider_last_use(al_metrics *m, const char *provider);

/* Escapes a label value for the exposition format (\\, \", \n) into out. */
void al_metrics_label_escape(al_buf *out, const char *v);

#endif
