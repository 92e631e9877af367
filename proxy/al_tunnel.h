/* al_tunnel: blind CONNECT tunnels for hosts listed in egress.passthrough.
 *
 * The host goes through the egress guard (al_resolver, private ranges refused),
 * airlock connects to exactly the checked address, answers "200 Connection
 * established" and then copies bytes both ways without looking at them (nothing is
 * injected). Each direction holds at most one connection buffer: the upstream is
 * not read while the agent's output queue is full, and the agent is not read while
 * the upstream socket does not take the bytes. The CONNECT's audit record (written
 * when the tunnel ends) carries the bytes each way and the duration. */
#ifndef AL_TUNNEL_H
#define AL_TUNNEL_H

#include <stdint.h>

#include "al_conn.h"
#include "al_request.h"

typedef struct al_tunnel al_tunnel;

/* Starts resolving and connecting. `req` (the CONNECT) is owned by the tunnel from
 * now on and refused through its sink on failure. While pending, the HTTP/1.1 side
 * holds the tunnel (al_h1_conn_set_tunnel) to abort it if the connection dies. */
int al_tunnel_start(al_conn *c, al_req *req, const char *host, uint16_t port);
/* The connection died before the tunnel took it over. */
void al_tunnel_abort(al_tunnel *t);

#endif
