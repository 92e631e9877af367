/* al_credsrc_oauth2: the credential source of oauth2_2lo targets (identity/al_credsrc.h
 * interface), one per worker, over the per-process token cache (identity/al_token.h).
 *
 * acquire picks the target's provider from the store snapshot (pools and
 * fallback_provider as for api keys), then asks the token cache:
 *   - a cached token answers now (the per-request cost is a lookup);
 *   - otherwise AL_ERR_PENDING: the token cache fetches (single flight across every
 *     worker) on the control-plane fetch thread; its answer is handed to this worker's
 *     loop with an ev_async and on_done runs there;
 *   - a failing provider answers at once with the cached error (back-off): the data
 *     path answers 502 token_endpoint_error, or 504 when the endpoint timed out.
 * rejected(401) drops that exact token (generation) from the cache and asks for one
 * retry with AL_CRED_REFRESH: acquire then waits for a new token.
 *
 * A grant's secret view holds the access token (sv.value), provider and secret version
 * of the client secret that obtained it, and the token's fingerprint (sv.fingerprint)
 * for the audit record. Loop-thread only, except the token cache's callback. */
#ifndef AL_CREDSRC_OAUTH2_H
#define AL_CREDSRC_OAUTH2_H

#include "identity/al_credsrc.h"
#include "identity/al_token.h"

struct ev_loop;
typedef struct al_oauth2_src al_oauth2_src;

int al_oauth2_src_new(struct ev_loop *loop, al_token_client *tc, al_cred_cache *creds,
                      al_oauth2_src **out);
/* The worker's metrics shard: a request answered from the token cache is counted as
 * airlock_token_requests_total{outcome="cache_hit"} (NULL: not counted). */
struct al_metrics_shard;
void al_oauth2_src_set_metrics(al_oauth2_src *s, struct al_metrics_shard *sh);
/* Cancels what is pending (no on_done after this). */
void al_oauth2_src_free(al_oauth2_src *s);
al_credsrc al_credsrc_oauth2(al_oauth2_src *s);

#endif
