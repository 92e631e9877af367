/* al_egress: the egress (SSRF) guard and the resolver it checks.
 *
 * al_egress_classify() is a pure function: given an address, is it public, or in a
 * range airlock refuses by default (loopback, RFC 1918, link-local incl. the cloud
 * metadata address 169.254.169.254, CGNAT 100.64/10, unique-local fc00::/7,
 * multicast, unspecified, and the IPv4-mapped/compatible IPv6 forms of those)?
 *
 * al_resolver is per worker (not thread-safe by design): asynchronous lookups with
 * c-ares on the worker's libev loop, with a cache that respects the record TTL.
 * The address handed to the callback is the one that was checked; the data path
 * connects to it (the native engine directly, libcurl pinned with CURLOPT_RESOLVE) so
 * there is no second lookup. It lives beside the upstream engine (upstream/): the
 * engine asks al_egress_classify again before connecting (al_up_engine_set_guard). */
#ifndef AL_EGRESS_H
#define AL_EGRESS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum al_addr_class {
    AL_ADDR_PUBLIC = 0,
    AL_ADDR_LOOPBACK,
    AL_ADDR_PRIVATE,    /* RFC 1918, unique-local */
    AL_ADDR_LINK_LOCAL, /* incl. metadata */
    AL_ADDR_CGNAT,
    AL_ADDR_MULTICAST,
    AL_ADDR_RESERVED, /* unspecified, broadcast, documentation, etc. */
};

enum al_addr_class al_egress_classify(const struct sockaddr *sa);
const char *al_egress_class_name(enum al_addr_class c);
/* 1 when sa is public: the guard serve installs on the control-plane fetcher
 * (identity/al_fetch.h al_fetch_set_guard: OIDC discovery, JWKS, token endpoints). */
int al_egress_guard_public(const struct sockaddr *sa, void *arg);

struct ev_loop;
typedef struct al_resolver al_resolver;

/* The outcome of a lookup. On success `addr` is a checked address (port set). */
typedef struct al_resolve_result {
    int err; /* AL_OK, AL_ERR_DNS, AL_ERR_EGRESS */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    /* "203.0.113.7" or "2001:db8::1" (no brackets); when refused, the address
     * that was refused (addr itself is then left empty: nothing to connect to). */
    char addr_text[64];
    enum al_addr_class refused_class; /* when err == AL_ERR_EGRESS */
} al_resolve_result;

typedef void (*al_resolve_cb)(void *arg, const al_resolve_result *res);

int al_resolver_new(struct ev_loop *loop, al_resolver **out);
/* al_resolver_new with flags. AL_RESOLVER_DNS_ONLY: answers come only from the DNS
 * servers, never from the hosts file (al_resolver_new reads /etc/hosts first), so a
 * test that serves every answer from its own DNS server does not depend on what the
 * machine's /etc/hosts maps. */
#define AL_RESOLVER_DNS_ONLY 1u
int al_resolver_new_ex(struct ev_loop *loop, unsigned flags, al_resolver **out);
void al_resolver_free(al_resolver *r);
/* Resolves host (a name or a literal address) and checks it. The callback may run
 * before this returns (cache hit or literal). When allow_private is 0 any address
 * of a refused class fails with AL_ERR_EGRESS. Returns a handle to cancel, or NULL
 * when the callback already ran. */
void *al_resolver_resolve(al_resolver *r, const char *host, uint16_t port, int allow_private,
                          al_resolve_cb cb, void *arg);
/* After cancel the callback never runs. A handle is valid only until its callback
 * has run. al_resolver_free() drops pending lookups without calling them back; a
 * callback must not free the resolver. Failures (bad name, NXDOMAIN, timeout:
 * AL_ERR_DNS; refused: AL_ERR_EGRESS) come through the callback too. */
void al_resolver_cancel(al_resolver *r, void *handle);

/* Uses these DNS servers instead of /etc/resolv.conf's ("127.0.0.1:5353,[::1]:53"),
 * for tests and for an operator-chosen resolver. Clears the cache. AL_ERR_INVAL
 * when the list does not parse. */
int al_resolver_set_servers(al_resolver *r, const char *servers_csv);
/* Lookups in flight, cancelled ones included until c-ares has finished with them
 * (draining, tests). */
size_t al_resolver_pending(const al_resolver *r);

#endif
