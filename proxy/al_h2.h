/* al_h2: the HTTP/2 server side of a connection (nghttp2, h2c with prior knowledge,
 * or h2 chosen by ALPN on TLS). Each stream is one al_request.
 *
 * Bounds per stream: the request body ring (AL_REQ_BODY_BUF) matches the stream's
 * flow-control window, which is only given back (nghttp2_session_consume) once
 * the bytes have gone upstream; the response buffer is capped at 64 KiB and the
 * upstream is paused above it. SETTINGS_MAX_CONCURRENT_STREAMS is 1024. */
#ifndef AL_H2_H
#define AL_H2_H

#include "al_conn.h"

int al_h2_attach(al_conn *c);

#endif
