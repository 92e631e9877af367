/* al_router: the routing index, built once per table snapshot and read-only after.
 *
 * Forward proxy: hash lookup on (host, port) — host compared case-insensitively —
 * then the longest base-path prefix that matches the request path on a segment
 * boundary. Gateway mode: lookup by target name. Both are O(1) + O(targets on
 * that host:port). The router points into the table's targets; it never owns them. */
#ifndef AL_ROUTER_H
#define AL_ROUTER_H

#include "al_table.h"

#include <stddef.h>
#include <stdint.h>

typedef struct al_router al_router;

/* Builds an index over targets[0..count). Returns AL_OK or AL_ERR_NOMEM.
 * Conflicts (same host+port+path prefix) are found by the loader, not here. */
int al_router_build(const al_target *targets, size_t count, al_router **out);
void al_router_free(al_router *r);

/* Forward proxy: host (len bytes, no port), port, path (up to '?' or end).
 * Returns the target or NULL. */
const al_target *al_router_find(const al_router *r, const char *host, size_t host_len,
                                uint16_t port, const char *path, size_t path_len);
/* Gateway mode: /t/<name>/... */
const al_target *al_router_find_name(const al_router *r, const char *name, size_t name_len);
/* CONNECT: any target on host:port (regardless of path). */
const al_target *al_router_find_authority(const al_router *r, const char *host, size_t host_len,
                                          uint16_t port);

#endif
