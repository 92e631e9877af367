/* al_oidc: OpenID Connect discovery / RFC 8414 authorization-server metadata and JWKS
 * documents, fetched asynchronously and cached per process — shared by the OAuth
 * token client (al_token.h) and inbound JWT validation.
 *
 * How to use it (one al_oidc per process, created by serve; the CLI may make its own):
 *
 *   al_oidc *o;  al_oidc_new(&o);                       // starts the fetch thread
 *   al_fetch_set_guard(al_oidc_fetcher(o), guard, arg); // serve: the egress guard
 *   al_fetch_opts fo = {.ca_file = NULL};               // or a provider's ca_file...
 *   al_flight_result r;
 *   int rc = al_oidc_get(o, AL_OIDC_METADATA, "https://idp/.well-known/openid-configuration",
 *                        &fo, 0, my_cb, my_arg, &r);
 *   AL_OK        -> r.value is the json_t* document now (retained: al_oidc_release(o, r.value))
 *   AL_ERR_AGAIN -> my_cb(my_arg, err, json_t *doc (borrowed), gen, msg) runs once, later,
 *                   ON THE FETCH THREAD: copy/retain what you need and hand it to your own
 *                   loop (ev_async); r.wait_id cancels it (al_oidc_cancel)
 *   other        -> failing and backing off; r.msg says why (no secrets)
 *
 *   JWKS: al_oidc_get(o, AL_OIDC_JWKS, jwks_uri, &fo, force, ...). Pass force = 1 when a
 *   token names a kid the cached set lacks: the set is fetched again unless it is
 *   younger than 10 s (so forged kids cannot make airlock hammer the provider).
 *   al_oidc_get_wait() is the blocking form (start-up, CLI, tests — never a worker).
 *
 * What is checked: the answer is 200 with a JSON object; metadata has a string
 * `issuer`, which must match the discovery URL (OIDC: URL == issuer +
 * "/.well-known/openid-configuration"; RFC 8414: the well-known segment inserted
 * after the host), and its token_endpoint / jwks_uri obey the same scheme rules as the
 * fetch (https, or http with allow_insecure); a JWKS has a `keys` array of objects
 * with a string `kty`, and no private-key members.
 *
 * Caching (al_flight.h): per (kind, URL, ca_file, flags). Fresh for the answer's
 * Cache-Control max-age clamped to [60 s, 24 h] (default: metadata 1 h, JWKS 10 min),
 * then refreshed in the background on the next use; a document stays usable 24 h past
 * that while refreshes fail, with exponential back-off (1 s .. 60 s) between tries and a
 * warning log line per failure ("identity.fetch_failed"). Fetch rules (https, CA file,
 * egress guard, size and time limits) are al_fetch.h's. */
#ifndef AL_OIDC_H
#define AL_OIDC_H

#include <jansson.h>
#include <stdint.h>

#include "identity/al_fetch.h"
#include "identity/al_flight.h"

typedef struct al_oidc al_oidc;

enum al_oidc_kind { AL_OIDC_METADATA = 0, AL_OIDC_JWKS = 1 };

int al_oidc_new(al_oidc **out);
/* Stops the fetch thread (no callback runs after this returns), then frees. */
void al_oidc_free(al_oidc *o);
/* The fetch thread, for other control-plane requests (token requests) and the guard. */
al_fetch *al_oidc_fetcher(al_oidc *o);
/* Tests: the clock of the document cache (ms, monotonic) and its back-off base. */
void al_oidc_set_clock(al_oidc *o, int64_t (*now_ms)(void *arg), void *arg);

/* See the top comment. cb gets the json_t* document as `value` (borrowed). */
int al_oidc_get(al_oidc *o, enum al_oidc_kind kind, const char *url, const al_fetch_opts *opts,
                int force, al_flight_cb cb, void *arg, al_flight_result *res);
int al_oidc_cancel(al_oidc *o, uint64_t wait_id);
void al_oidc_release(al_oidc *o, json_t *doc);
/* Blocking form: AL_OK and *doc (a new reference: json_decref it), or the error with a
 * sentence in errbuf. */
int al_oidc_get_wait(al_oidc *o, enum al_oidc_kind kind, const char *url, const al_fetch_opts *opts,
                     int force, json_t **doc, char *errbuf, size_t errlen);

/* Pure checks used by the loader (exposed for unit tests and fuzzing): AL_OK, or
 * AL_ERR_PROTO with a sentence in errbuf. */
int al_oidc_check_metadata(const json_t *doc, const char *url, const al_fetch_opts *opts,
                           char *errbuf, size_t errlen);
int al_oidc_check_jwks(const json_t *doc, char *errbuf, size_t errlen);
/* The freshness of an answer in seconds from its max-age (-1 = none) and no-store. */
long al_oidc_fresh_s(enum al_oidc_kind kind, long max_age_s, int no_store);

#endif
