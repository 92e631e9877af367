/* al_h1_conn: the HTTP/1.1 server side of a connection — glue between al_conn's
 * bytes, the al_h1 parser engine and the protocol-neutral al_request path.
 *
 * One request at a time per connection: while a request is in flight, pipelined
 * bytes stay in the connection's input buffer and nothing more is read, so a
 * pipelining client can never make airlock buffer more than one input buffer. */
#ifndef AL_H1_CONN_H
#define AL_H1_CONN_H

#include "al_conn.h"

/* Makes c an HTTP/1.1 connection (bytes already in c->in are parsed on the next
 * on_read). Returns 0 or a negative al_err. */
int al_h1_conn_attach(al_conn *c);

/* A passthrough tunnel is pending on c (al_tunnel.c); h1 aborts it if c dies. */
struct al_tunnel;
void al_h1_conn_set_tunnel(al_conn *c, struct al_tunnel *t);
/* The tunnel failed (its refusal was sent) or took the connection over. */
void al_h1_conn_tunnel_gone(al_conn *c);

#endif
