/* al_listen_lock: one airlock per listen address.
 *
 * Workers bind their listeners with SO_REUSEPORT, so a second `airlock serve` on the
 * same address would start fine and the kernel would split connections between the
 * two. Before binding, `serve` claims each address:
 *   1. a lock: an abstract unix socket named after the numeric address, held (and
 *      listening, so a second airlock can ask its pid with SO_PEERCRED) for the
 *      process lifetime; the kernel drops it when the process dies, and it is the
 *      same for every state dir and user in the network namespace;
 *   2. a probe: bind without SO_REUSEPORT, which fails while anything else (another
 *      airlock on an overlapping address such as 0.0.0.0, nginx...) listens there.
 * Two airlocks starting at the same instant on the same address both try step 1;
 * exactly one wins. */
#ifndef AL_LISTEN_LOCK_H
#define AL_LISTEN_LOCK_H

#include <stddef.h>

/* Claims "host:port". AL_OK: *lock_fd holds the lock (close it at exit).
 * AL_ERR_EXISTS: held by another process; `why` (a sentence naming the address and,
 * when known, the other process's pid and command line) says what to do.
 * AL_ERR_CONFIG: not a numeric host:port. AL_ERR_IO: another failure (why says). */
int al_listen_claim(const char *hostport, int *lock_fd, char *why, size_t why_cap);

#endif
