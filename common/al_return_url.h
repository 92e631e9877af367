/* al_return_url: where OAuth's app binding mode (3LO, identity/al_consent.h) may send a
 * user's browser back to: the target's `auth.return_urls` allow-list, checked when the
 * table loads (al_return_url_valid) and against the URL an application asks for
 * (al_return_url_allowed). Pure functions.
 *
 * An allow-list entry is an absolute http(s) URL without userinfo, query or fragment
 * (http only for a loopback host: the session id would cross the network in clear);
 * al_return_url_valid says why not in errbuf. A candidate is allowed when its scheme,
 * host (case-insensitive) and port (default ports filled in) equal an entry's and its
 * path is the entry's path or lies under it ("/cb" allows "/cb" and "/cb/x", not
 * "/cbx"); a query is allowed. Any spelling that parsers disagree on is refused
 * outright: userinfo ('@'), backslashes, control or non-ASCII bytes, fragments, "//" or
 * dot segments or encoded '.', '/', '\' or '%' in the path, a host that is not plain
 * letters, digits, '-' and '.' (or a bracketed IPv6 address). */
#ifndef AL_RETURN_URL_H
#define AL_RETURN_URL_H

#include <stddef.h>

#define AL_RETURN_URL_MAX 2048

int al_return_url_valid(const char *url, char *errbuf, size_t errlen);
int al_return_url_allowed(const char *url, char *const *allow, size_t n);
/* return_url + ('?' or '&') + "session_id=" + id, malloc'd. */
char *al_return_url_with_session(const char *return_url, const char *session_id);

#endif
