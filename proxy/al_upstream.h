/* al_upstream: the upstream client — one request to an upstream over libcurl's
 * multi interface, driven by the worker's libev loop, streamed both ways.
 *
 * Each worker owns one al_upstream_pool (a CURLM with its connection cache, so
 * connections to an upstream are reused per worker; HTTP/2 is used with upstreams
 * that offer it over TLS). A request is an al_upstream_req: the caller hands over
 * the method, the URL's parts (scheme, host, port, path: the URL is assembled with
 * libcurl's CURLU part by part, never re-parsed from a string), headers (already filtered and with the credential injected),
 * the checked address to connect to, and callbacks. Bodies stream: the request
 * body is pulled through read_body() as the agent sends it, and response bytes are
 * pushed through on_body() as they arrive; either side returns AL_ERR_AGAIN to
 * pause and calls al_upstream_resume_*() when it can go on, so at most one curl
 * buffer (CURL_MAX_WRITE_SIZE, 16 KiB) plus the caller's own bounded buffer is
 * held per direction.
 *
 * Threading: everything runs on the worker's loop thread; nothing here locks. */
#ifndef AL_UPSTREAM_H
#define AL_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/al_http.h"
#include "upstream/al_up.h" /* the contract: opts, cbs, errors */

struct ev_loop;
typedef struct al_upstream_pool al_upstream_pool;
typedef struct al_upstream_req al_upstream_req;

int al_upstream_pool_new(struct ev_loop *loop, al_upstream_pool **out);
void al_upstream_pool_free(al_upstream_pool *p); /* cancels whatever is in flight */

/* Starts a request; the strings in opts are copied. Returns AL_OK with *out set
 * (owned by the pool until on_done), or a negative al_err without calling anything. */
int al_upstream_start(al_upstream_pool *p, const al_upstream_opts *opts, const al_upstream_cbs *cbs,
                      void *arg, al_upstream_req **out);
/* Per worker and upstream host: transfers in curl at once (the rest wait). */
#define AL_UPSTREAM_MAX_HOST_CONNECTIONS 128
void al_upstream_resume_send(al_upstream_req *r); /* more request body is ready */
void al_upstream_resume_recv(al_upstream_req *r); /* the agent can take more */
void al_upstream_cancel(al_upstream_req *r);      /* no more callbacks; frees r */

/* 1 if HTTP/2 streams to one upstream share a connection with this libcurl; 0 when
 * each HTTP/2 connection carries one stream at a time (libcurl older than 8.14,
 * whose pause of one multiplexed stream stalls the others). */
int al_upstream_multiplexes(void);

/* Milliseconds from start to the first response byte (for audit); 0 if none yet. */
uint32_t al_upstream_elapsed_ms(const al_upstream_req *r);

#endif
