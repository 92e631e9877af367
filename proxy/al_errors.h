/* al_errors: the JSON refusal bodies of the data path.
 *
 * Every refusal the agent sees is {"error":"<code>","message":"<sentence>"} with a
 * fitting status. Messages are built from names, hosts and address classes only;
 * callers never pass a secret. */
#ifndef AL_ERRORS_H
#define AL_ERRORS_H

#include <stddef.h>

#include "common/al_buf.h"

/* Every refusal airlock answers itself, one row each: the enum name, the HTTP
 * status, the code in the JSON body and Proxy-Status, the RFC 9209 Proxy-Status
 * error type, and who denied it — "request" (malformed), "route" (nothing in the
 * table allows it), "policy" (the decide stage), "egress" (the SSRF guard), "limits",
 * "audit" (audit.on_failure: deny while the log cannot be written)
 * — or NULL when it is not a denial but an outcome: the request was allowed and
 * something failed (the upstream, a credential, the agent itself). The audit's
 * decision/outcome come from this column. */
#define AL_REFUSALS(X)                                                                         \
    X(BAD_REQUEST, 400, "bad_request", "http_request_error", "request")                        \
    X(PATH_NOT_NORMALIZED, 400, "path_not_normalized", "http_request_error", "request")        \
    X(PRESIGNED_URL, 400, "presigned_url_refused", "http_request_denied", "request")           \
    X(UNAUTHENTICATED, 401, "unauthenticated", "http_request_denied", "policy")                \
    X(CONSENT_REQUIRED, 401, "consent_required", "http_request_denied", NULL)                  \
    X(POLICY_DENIED, 403, "policy_denied", "http_request_denied", "policy")                    \
    X(UNKNOWN_TARGET, 403, "unknown_target", "destination_not_found", "route")                 \
    X(EGRESS_DENIED, 403, "egress_denied", "destination_ip_prohibited", "egress")              \
    X(TUNNEL_HOST_MISMATCH, 403, "tunnel_host_mismatch", "http_request_denied", "route")       \
    X(NO_SUCH_TARGET, 404, "no_such_target", "destination_not_found", "route")                 \
    X(PROXY_AUTH_REQUIRED, 407, "proxy_auth_required", "http_request_denied", "policy")        \
    X(REQUEST_TIMEOUT, 408, "request_timeout", "http_request_error", NULL)                     \
    X(BODY_TIMEOUT, 408, "body_timeout", "http_request_error", NULL)                           \
    X(CLIENT_TIMEOUT, 408, "client_timeout", "http_request_error", NULL)                       \
    X(BODY_TOO_LARGE, 413, "body_too_large", "http_request_denied", "limits")                  \
    X(URI_TOO_LONG, 414, "uri_too_long", "http_request_error", "limits")                       \
    X(RATE_LIMITED, 429, "rate_limited", "http_request_denied", NULL)                          \
    X(HEADER_TOO_LARGE, 431, "header_too_large", "http_request_error", "limits")               \
    X(INTERNAL_ERROR, 500, "internal_error", "proxy_internal_error", NULL)                     \
    X(BODY_SPOOL_FAILED, 500, "body_spool_failed", "proxy_internal_error", NULL)               \
    X(CREDENTIAL_UNAVAILABLE, 502, "credential_unavailable", "proxy_configuration_error", NULL) \
    X(CREDENTIAL_INVALID, 502, "credential_invalid", "proxy_configuration_error", NULL)        \
    X(AUTH_METHOD_UNAVAILABLE, 502, "auth_method_unavailable", "proxy_configuration_error",    \
      NULL)                                                                                    \
    X(TOKEN_ENDPOINT_ERROR, 502, "token_endpoint_error", "proxy_configuration_error", NULL)    \
    X(INTERCEPTION_UNAVAILABLE, 502, "interception_unavailable", "proxy_configuration_error",  \
      NULL)                                                                                    \
    X(UPSTREAM_DNS_FAILED, 502, "upstream_dns_failed", "dns_error", NULL)                      \
    X(UPSTREAM_CONNECT_FAILED, 502, "upstream_connect_failed", "connection_refused", NULL)     \
    X(UPSTREAM_TLS_FAILED, 502, "upstream_tls_failed", "tls_protocol_error", NULL)             \
    X(UPSTREAM_RESET, 502, "upstream_reset", "connection_terminated", NULL)                    \
    X(FUNCTION_ERROR, 502, "function_error", "proxy_internal_response", NULL)                  \
    X(UPSTREAM_BAD_FRAMING, 502, "upstream_bad_framing", "http_protocol_error", NULL)          \
    X(UPSTREAM_BUSY, 503, "upstream_busy", "connection_limit_reached", NULL)                   \
    X(CLIENT_OVER_LIMIT, 503, "client_over_limit", "connection_limit_reached", NULL)           \
    X(AUDIT_UNAVAILABLE, 503, "audit_unavailable", "proxy_internal_error", "audit")            \
    X(UPSTREAM_CONNECT_TIMEOUT, 504, "upstream_connect_timeout", "connection_timeout", NULL)   \
    X(TOKEN_ENDPOINT_TIMEOUT, 504, "token_endpoint_timeout", "connection_timeout", NULL)     \
    X(UPSTREAM_TIMEOUT, 504, "upstream_timeout", "http_response_timeout", NULL)

enum al_refusal {
#define AL_REFUSAL_ENUM(name, status, code, ps, by) AL_REF_##name,
    AL_REFUSALS(AL_REFUSAL_ENUM)
#undef AL_REFUSAL_ENUM
        AL_REF_COUNT
};

typedef struct al_refusal_info {
    int status;
    const char *code;
    const char *proxy_status; /* RFC 9209 error type */
    const char *denied_by;    /* NULL: an outcome, not a denial */
} al_refusal_info;

/* The row of r (AL_REF_INTERNAL_ERROR's for an out-of-range value). */
const al_refusal_info *al_refusal(enum al_refusal r);
/* The refusal with this code, AL_REF_COUNT when none. */
enum al_refusal al_refusal_by_code(const char *code);

/* Writes the JSON body (with a trailing newline) into b (replacing its contents).
 * The message is printf-formatted and JSON-escaped. */
int al_error_json(al_buf *b, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends s[0..n) JSON-escaped (without quotes) to b. */
int al_json_escape_append(al_buf *b, const char *s, size_t n);

/* The RFC 9209 Proxy-Status error type for an airlock refusal code
 * ("unknown_target" -> "destination_not_found", from AL_REFUSALS); unlisted codes map
 * by status. */
const char *al_proxy_status_error(const char *code, int status);

/* Writes a Proxy-Status field value into b (replacing its contents):
 * `airlock; error=<type>; error_code="<code>"; details="<details>"`. details is the
 * refusal's message (never a secret); non-printable bytes become '?' and it is cut
 * at 512 bytes, so the value is always a valid structured field. */
int al_proxy_status(al_buf *b, const char *code, int status, const char *details);

/* The reason phrase for an HTTP status ("Bad Request"); "Unknown" when unlisted. */
const char *al_http_reason(int status);

#endif
