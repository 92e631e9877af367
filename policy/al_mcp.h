/* al_mcp: the bits of MCP's JSON-RPC that policy needs, an engine without I/O.
 *
 *  - al_mcp_parse_calls(): the `tools/call` names in a request body (one JSON-RPC
 *    message or a batch), parsed as JSON (not searched as text), bounded in size and
 *    count, duplicate keys refused, so what airlock checks is what the server reads;
 *  - al_mcp_error_response(): the JSON-RPC error a denied call gets instead;
 *  - al_mcp_filter_tools_list() / al_mcp_filter_sse(): a `tools/list` result with
 *    only the tools the principal may call, for a JSON body or for complete
 *    Server-Sent Events (the caller feeds what it has and keeps the unconsumed tail,
 *    so a streamed response is filtered event by event). */
#ifndef AL_MCP_H
#define AL_MCP_H

#include <jansson.h>
#include <stddef.h>

#define AL_MCP_MAX_BODY  (1u << 20) /* request bodies inspected; larger: AL_ERR_TOOBIG */
#define AL_MCP_MAX_CALLS 64         /* messages in one batch */

typedef struct al_mcp_calls {
    size_t count;                  /* tools/call messages found */
    char *names[AL_MCP_MAX_CALLS]; /* owned; "" when params.name is not a string */
    json_t *ids[AL_MCP_MAX_CALLS]; /* owned references; NULL for a notification */
    int batch;                     /* the body was a JSON array */
    int lists_tools;               /* a tools/list request is among the messages */
} al_mcp_calls;

/* AL_OK (count may be 0: no tools/call), AL_ERR_PROTO when the body is not JSON-RPC
 * (not JSON, duplicate keys, not an object or array of objects), AL_ERR_TOOBIG past
 * AL_MCP_MAX_BODY bytes or AL_MCP_MAX_CALLS messages, AL_ERR_NOMEM. *out is always
 * safe to al_mcp_calls_free. */
int al_mcp_parse_calls(const char *body, size_t len, al_mcp_calls *out);
void al_mcp_calls_free(al_mcp_calls *c);

/* A JSON-RPC 2.0 error response for request id `id` (NULL = null). malloc'd, *len
 * set; NULL on allocation failure. */
char *al_mcp_error_response(const json_t *id, int code, const char *message, size_t *len);
/* The code airlock uses for a tool call refused by policy. */
#define AL_MCP_POLICY_ERROR (-32001)

typedef int (*al_mcp_tool_allowed_fn)(void *arg, const char *tool);

/* Rewrites a JSON-RPC response whose result.tools is a list, keeping the tools
 * `allowed` accepts. *out (malloc'd) is NULL with AL_OK when the body needs no change
 * (not a tools list, or nothing removed); AL_ERR_PROTO if not JSON. */
int al_mcp_filter_tools_list(const char *body, size_t len, al_mcp_tool_allowed_fn allowed,
                             void *arg, char **out, size_t *out_len);

/* Filters the complete SSE events at the start of buf[0..len): each event's data is
 * passed through al_mcp_filter_tools_list. Appends the rewritten events to *out
 * (malloc'd, grown) and returns the number of input bytes consumed (a partial event
 * at the end is left for the next call), or a negative al_err. */
long al_mcp_filter_sse(const char *buf, size_t len, al_mcp_tool_allowed_fn allowed, void *arg,
                       char **out, size_t *out_len);

/* Same-length rewrite of a whole response body in place (buf[0..len)), for a response
 * whose Content-Length is already promised: the tools `allowed` refuses are removed
 * from every result.tools list and the JSON is padded with spaces (valid JSON
 * whitespace) to the original length. sse: the body is Server-Sent Events; each
 * one-line `data:` field is rewritten the same way. Returns how many tools were
 * removed; a message it cannot rewrite within its length is left as it was. */
size_t al_mcp_filter_tools_padded(char *buf, size_t len, int sse, al_mcp_tool_allowed_fn allowed,
                                  void *arg);

#endif
