/* bench_targets_router: build time of the routing index over 10,000 targets and the
 * cost of one lookup (hits and misses, random order, a million of each).
 *
 * The table: 10,000 targets on 4,000 hosts (so most hosts carry several base paths
 * and the prefix walk is exercised), mixed-case queries, ports 443 and 8443.
 * Lookups are precomputed into an array so the loop measures the router only.
 * Run it from a Release build: build-rel/bench/bench_targets_router [targets] [lookups] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/al_err.h"
#include "targets/al_router.h"

typedef struct query {
    char host[40];
    size_t host_len;
    uint16_t port;
    char path[48];
    size_t path_len;
    const al_target *want; /* NULL for a miss */
} query;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift64*: deterministic, cheap. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static double run(const al_router *r, const query *q, size_t n, size_t *bad)
{
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        const al_target *t =
            al_router_find(r, q[i].host, q[i].host_len, q[i].port, q[i].path, q[i].path_len);
        if (t != q[i].want)
            (*bad)++;
    }
    return (now_s() - t0) * 1e9 / (double)n;
}

int main(int argc, char **argv)
{
    size_t nt = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
    size_t nq = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
    size_t nhosts = nt * 2 / 5 ? nt * 2 / 5 : 1;
    int rc = 1;
    al_router *r = NULL;
    al_target *ts = calloc(nt, sizeof *ts);
    char *strs = calloc(nt, 3 * 48);
    query *hits = calloc(nq, sizeof *hits);
    query *misses = calloc(nq, sizeof *misses);
    if (!ts || !strs || !hits || !misses)
        goto out;

    for (size_t i = 0; i < nt; i++) {
        char *name = strs + i * 144, *host = name + 48, *base = host + 48;
        size_t h = i % nhosts;
        snprintf(name, 48, "target-%zu", i);
        snprintf(host, 48, "api%zu.service-%zu.example.com", h, h % 97);
        snprintf(base, 48, "/v%zu/svc%zu", i / nhosts, i % 13);
        ts[i] = (al_target){
            .name = name, .host = host, .port = (uint16_t)(h % 2 ? 443 : 8443), .base_path = base};
    }

    double t0 = now_s();
    if (al_router_build(ts, nt, &r) != AL_OK) {
        fprintf(stderr, "al_router_build failed\n");
        goto out;
    }
    double build_ms = (now_s() - t0) * 1e3;

    for (size_t i = 0; i < nq; i++) {
        const al_target *t = &ts[rnd() % nt];
        query *q = &hits[i];
        q->host_len = (size_t)snprintf(q->host, sizeof q->host, "%s", t->host);
        /* Agents send any case; the router must not care. */
        for (size_t k = 0; k < q->host_len; k += 3)
            if (q->host[k] >= 'a' && q->host[k] <= 'z')
                q->host[k] = (char)(q->host[k] - 32);
        q->port = t->port;
        q->path_len = (size_t)snprintf(q->path, sizeof q->path, "%s/items/%u", t->base_path,
                                       (unsigned)(rnd() % 1000));
        q->want = t;

        q = &misses[i];
        uint64_t kind = rnd() % 3;
        const al_target *u = &ts[rnd() % nt];
        if (kind == 0) { /* unknown host */
            q->host_len = (size_t)snprintf(q->host, sizeof q->host, "api%u.unknown.example.org",
                                           (unsigned)(rnd() % 100000));
            q->port = 443;
            q->path_len = (size_t)snprintf(q->path, sizeof q->path, "/v0/svc0/x");
        } else if (kind == 1) { /* known host, wrong port */
            q->host_len = (size_t)snprintf(q->host, sizeof q->host, "%s", u->host);
            q->port = 80;
            q->path_len = (size_t)snprintf(q->path, sizeof q->path, "%s", u->base_path);
        } else { /* known authority, no matching prefix (walks every base) */
            q->host_len = (size_t)snprintf(q->host, sizeof q->host, "%s", u->host);
            q->port = u->port;
            q->path_len = (size_t)snprintf(q->path, sizeof q->path, "/nope%s", u->base_path);
        }
        q->want = NULL;
    }

    size_t bad = 0;
    run(r, hits, nq < 100000 ? nq : 100000, &bad); /* warm caches */
    bad = 0;
    double hit_ns = run(r, hits, nq, &bad);
    double miss_ns = run(r, misses, nq, &bad);
    if (bad) {
        fprintf(stderr, "%zu wrong answers\n", bad);
        goto out;
    }
    t0 = now_s();
    size_t found = 0;
    for (size_t i = 0; i < nq; i++) {
        const al_target *t = &ts[i % nt];
        found += al_router_find_name(r, t->name, strlen(t->name)) == t;
    }
    double name_ns = (now_s() - t0) * 1e9 / (double)nq;
    if (found != nq) {
        fprintf(stderr, "name lookups wrong\n");
        goto out;
    }

    printf("bench_targets_router: targets=%zu hosts=%zu lookups=%zu build_ms=%.2f "
           "hit_ns=%.1f miss_ns=%.1f name_ns=%.1f\n",
           nt, nhosts, nq, build_ms, hit_ns, miss_ns, name_ns);
    rc = 0;
out:
    al_router_free(r);
    free(misses);
    free(hits);
    free(strs);
    free(ts);
    return rc;
}
