/* al_reqtarget: the request-target rules, for every way a request names where it
 * goes (pure functions, no I/O, no allocation).
 *
 * HTTP/1.1 (RFC 9112 §3.2): origin-form "/path?query", absolute-form
 * "http(s)://authority/path?query", authority-form "host:port" for CONNECT only,
 * asterisk-form "*" for OPTIONS only. HTTP/2 (RFC 9113 §8.3.1): ":scheme" http or
 * https, ":path" origin-form (or "*" for OPTIONS), ":authority" without user info.
 *
 * Characters (RFC 3986): a path holds pchar and "/" only; a query pchar, "/", "?" and
 * the few bytes clients commonly leave unencoded there ("[]{}|^`"); '%' is followed
 * by two hex digits; no '#', '\', space, control or non-ASCII byte. An authority is
 * a host name or IPv4 address (letters, digits, '-', '.', '_') or a bracketed IPv6
 * address, and an optional port 1..65535; never user info.
 *
 * The path rule (what keeps a path under a target's base path, whatever the
 * upstream decodes): the path is cut into pieces at '/', and also at every spelling
 * of '/' or '\' that some server decodes ("%2f", "%5c", at any depth of
 * percent-encoding such as "%252f", and the full-width U+FF0F/U+FF3C); each piece is
 * cut at its first ';' (path parameters, "..;/"). A piece that, fully decoded, is
 * made only of dots (and spaces, which Windows servers trim), with at least one
 * dot, is refused: ".", "..", "%2e%2E", "%252e%252e", ".%2e;x", "..%2f", U+FF0E
 * full-width dots. So are overlong UTF-8 bytes (%c0%ae...), an encoded NUL, and a
 * path starting with "//" (a network-path reference to some parsers). A path that
 * passes has no piece any decoding turns into a dot segment, so no upstream can
 * resolve it above the prefix the router matched. */
#ifndef AL_REQTARGET_H
#define AL_REQTARGET_H

#include <stddef.h>
#include <stdint.h>

/* Why a target was refused (AL_REQTARGET_OK when it was not). */
enum al_reqtarget_why {
    AL_REQTARGET_OK = 0,
    AL_REQTARGET_BAD_SCHEME,     /* a scheme other than http/https */
    AL_REQTARGET_BAD_FORM,       /* a form this method may not use (or none at all) */
    AL_REQTARGET_BAD_AUTHORITY,  /* user info, a bad host or port */
    AL_REQTARGET_BAD_CHAR,       /* a byte a URI may not hold there, or a bad %XX */
    AL_REQTARGET_NOT_NORMALIZED, /* a dot segment in some spelling, or a leading "//" */
};

enum al_reqtarget_form {
    AL_REQTARGET_ORIGIN = 1, /* "/path?query" */
    AL_REQTARGET_ABSOLUTE,   /* "http://host:port/path?query" */
    AL_REQTARGET_AUTHORITY,  /* "host:port" (CONNECT) */
    AL_REQTARGET_ASTERISK,   /* "*" (OPTIONS) */
};

/* A checked request target; slices point into the caller's strings. */
typedef struct al_reqtarget {
    enum al_reqtarget_form form;
    enum al_reqtarget_why why; /* set when a check fails */
    int https;                 /* absolute-form or :scheme is https */
    const char *authority;     /* the authority as sent (absolute/authority-form, :authority) */
    size_t authority_len;
    const char *host; /* absolute/authority-form, HTTP/2 :authority; IPv6 unbracketed */
    size_t host_len;  /* 0 when no authority was given */
    uint16_t port;    /* the given port, else the scheme's default (80/443) */
    const char *path; /* path[?query]; absolute-form may give "" or "?q" */
    size_t path_len;
} al_reqtarget;

/* An HTTP/1.1 request line's target for `method`. AL_OK, or AL_ERR_INVAL with
 * out->why set. */
int al_reqtarget_parse_h1(const char *method, const char *target, size_t len, al_reqtarget *out);

/* HTTP/2 pseudo-headers (NULL when absent; lengths as given). AL_OK, or
 * AL_ERR_INVAL with out->why set. */
int al_reqtarget_check_h2(const char *method, const char *scheme, size_t scheme_len,
                          const char *authority, size_t authority_len, const char *path,
                          size_t path_len, al_reqtarget *out);

/* "host[:port]" or "[v6][:port]": host slice (brackets stripped) and port
 * (default_port when none is given). AL_OK or AL_ERR_INVAL. */
int al_reqtarget_authority(const char *a, size_t n, uint16_t default_port, const char **host,
                           size_t *host_len, uint16_t *port);

/* An origin-form "path[?query]": characters and the path rule above. AL_OK, or
 * AL_ERR_INVAL with *why set (why may be NULL). */
int al_reqtarget_path(const char *p, size_t n, enum al_reqtarget_why *why);

/* The path rule alone, plus "no encoded '/' or '\' at all", for a configured base
 * path (which must also hold only pchar and '/'). AL_OK or AL_ERR_INVAL. */
int al_reqtarget_base_path(const char *p, size_t n, enum al_reqtarget_why *why);

/* A short stable name for why ("not_normalized", ...). */
const char *al_reqtarget_why_str(enum al_reqtarget_why why);

#endif
