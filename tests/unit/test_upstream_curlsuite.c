/* The libcurl engine's unit suite (test_proxy_upstream.c) run against the native
 * engine: the same server, the same cases, the same expectations (headers as sent,
 * bodies streamed both ways through pauses, error mapping, cancel inside callbacks,
 * reuse, the egress re-check, 1xx/hop-by-hop/trailers, head limit, TLS failures,
 * invalid input, the client cap, the agent stall), HTTP/2 against nghttpd included
 * (ALPN h2: every stream on one connection). */
#define AL_UP_NATIVE_SUITE 1
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "upstream/al_up_engine.h"

typedef al_up_engine al_upstream_pool;
typedef al_up_req al_upstream_req;
#define AL_UPSTREAM_MAX_HOST_CONNECTIONS AL_UP_MAX_HOST_CONNECTIONS
#define SUITE_MAX_CHUNK AL_UP_MAX_BODY_CHUNK /* (64 KiB reads of a large body) */

/* What the worker installs (upstream/al_egress's classes), reduced to what the suite
 * checks: loopback and private addresses are refused. */
static const char *suite_guard(const struct sockaddr *sa, void *arg)
{
    (void)arg;
    if (sa->sa_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        if ((a >> 24) == 127)
            return "loopback";
        if ((a >> 24) == 10 || (a >> 20) == 0xac1 || (a >> 16) == 0xc0a8)
            return "private";
        return NULL;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a6) ? "loopback" : NULL;
}

static int suite_pool_new(struct ev_loop *loop, al_up_engine **out)
{
    int rc = al_up_engine_new(loop, out);
    if (rc == 0)
        al_up_engine_set_guard(*out, suite_guard, NULL);
    return rc;
}

#define al_upstream_pool_new      suite_pool_new
#define al_upstream_pool_free     al_up_engine_free
#define al_upstream_start         al_up_start
#define al_upstream_cancel        al_up_cancel
#define al_upstream_resume_send   al_up_resume_send
#define al_upstream_resume_recv   al_up_resume_recv
#define al_upstream_elapsed_ms    al_up_elapsed_ms
#define al_upstream_multiplexes() 1

#include "test_proxy_upstream.c"
