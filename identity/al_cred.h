/* al_cred: the credentials a running `airlock serve` injects — the data path's
 * read side of the identity store.
 *
 * The data path never touches SQLite on a request. al_cred_cache keeps an
 * immutable, reference-counted snapshot of the decrypted current (and, during a
 * rotation's grace period, previous) secret versions of every provider, swapped
 * atomically when the store changes (checked every 250 ms by a watcher thread),
 * so a rotation reaches requests within one second without restart. acquire takes
 * a tiny mutex only around "load pointer + increment refcount" (the swap takes it
 * too), so a snapshot can never be freed between the load and the increment; no
 * lock is held while a request uses the snapshot.
 *
 * Selection implements pools and fallback: a target may name several providers,
 * used round-robin; one that got 429 is rested until its Retry-After passes;
 * after a 401/403 the data path may retry once with the target's fallback_provider.
 *
 * Secrets: views point into the snapshot, valid while the caller holds the
 * snapshot reference; they are wiped when the snapshot is freed. Never log them. */
#ifndef AL_CRED_H
#define AL_CRED_H

#include <stddef.h>
#include <stdint.h>

#include "common/al_secret.h"
#include "targets/al_table.h"

typedef struct al_cred_cache al_cred_cache;
typedef struct al_cred_snapshot al_cred_snapshot;


/* Opens the store under state_dir read-only for serving and starts the watcher.
 * master key rule as in identity/al_vault.h. */
int al_cred_cache_open(const char *state_dir, al_cred_cache **out);
void al_cred_cache_close(al_cred_cache *c);
/* 1 once the cache has read the store (or found there is none yet): it can serve. 0
 * while the store's database has been unreachable since start (PostgreSQL down): the
 * watcher keeps trying and /readyz says not ready. Once 1, it stays 1 — a database
 * lost later leaves the loaded credentials in use. */
int al_cred_cache_ready(al_cred_cache *c);

/* Current snapshot with a new reference (lock-free: one atomic load + increment). */
al_cred_snapshot *al_cred_cache_acquire(al_cred_cache *c);
void al_cred_snapshot_release(al_cred_snapshot *s);

/* The current version of `provider`. AL_ERR_NOTFOUND if there is none. */
int al_cred_lookup(const al_cred_snapshot *s, const char *provider, al_secret_view *out);

/* Picks the provider for a request to target `t` (pool round-robin, skipping rested
 * providers). `attempt` 0 = normal, 1 = the fallback after a 401/403 (AL_ERR_NOTFOUND
 * when the target has no fallback_provider). */
int al_cred_select(al_cred_cache *c, const al_cred_snapshot *s, const al_target *t, int attempt,
                   al_secret_view *out);
/* Rests `provider` for retry_after_s seconds (429 from upstream). */
void al_cred_rest(al_cred_cache *c, const char *provider, uint32_t retry_after_s);

/* ---- added by the identity module ---- */

/* A specific version that is current or still in its grace period (AL_ERR_NOTFOUND
 * once it has expired). */
int al_cred_lookup_version(const al_cred_snapshot *s, const char *provider, uint32_t version,
                           al_secret_view *out);
/* The newest version of `provider` older than `version` that is still in its grace
 * period after a rotation (AL_ERR_NOTFOUND when none): the data path retries a
 * 401/403 once with it (the upstream may not know the new key yet). */
int al_cred_lookup_previous(const al_cred_snapshot *s, const char *provider, uint32_t version,
                            al_secret_view *out);
/* The store change counter the snapshot was built from. */
uint64_t al_cred_snapshot_generation(const al_cred_snapshot *s);
/* 1 with *generation set when the watcher's latest reload failed (the previous
 * snapshot is kept; generation is the store's change counter it could not load), 0
 * when it succeeded or none failed. Lets a test wait until a refresh was tried. */
int al_cred_cache_failed_generation(al_cred_cache *c, uint64_t *generation);
/* Tests: monotonic clock in ms for rests (NULL = CLOCK_MONOTONIC). */
void al_cred_cache_set_clock(al_cred_cache *c, int64_t (*now_ms)(void *arg), void *arg);
/* What the status page and the metrics show of a provider: never the secret. */
typedef struct al_cred_provider_info {
    const char *name, *kind, *environment;
    uint32_t version;         /* current version */
    int64_t created_at;       /* unix s the current version was created */
    const char *fingerprint;  /* "sha256:" + 12 hex */
    int64_t rotation_max_age; /* s; 0 = none */
} al_cred_provider_info;
/* The current version of every provider of the snapshot, in name order: fills out[i]
 * for i < cap and returns how many there are. Strings live as long as the snapshot
 * reference the caller holds. */
size_t al_cred_providers(const al_cred_snapshot *s, al_cred_provider_info *out, size_t cap);
/* al_cred_select returns AL_ERR_AGAIN when every provider of the pool is resting: the
 * data path answers 429 itself instead of spending a request on a rested key, with
 * Retry-After from al_cred_rest_left_s: whole seconds (rounded up) until the first of
 * t's providers wakes; 0 when none rests. */
uint32_t al_cred_rest_left_s(al_cred_cache *c, const al_target *t);
/* 1 when a provider of t's pool other than `except` is awake (not resting) and has a
 * current version in s: a 429 to `except` can be retried with it. */
int al_cred_pool_awake(al_cred_cache *c, const al_cred_snapshot *s, const al_target *t,
                       const char *except);

#endif
