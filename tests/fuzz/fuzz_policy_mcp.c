/* libFuzzer harness for policy/al_mcp: tools/call extraction from JSON-RPC bodies and
 * tools/list filtering (JSON and SSE). Oracles: every name found is a NUL-free
 * string; a filtered tools/list never names a tool the filter refused; the SSE
 * filter consumes at most its input; the same-length rewrite stays JSON. First byte: 0
 * calls, 1 filter JSON, 2 SSE; with bit 7 set, the padded rewrite (bit 0: SSE). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/al_err.h"
#include "policy/al_mcp.h"

static int allow_short(void *arg, const char *tool)
{
    (void)arg;
    return strlen(tool) < 4; /* "del" yes, "delete" no */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] & 0x80) { /* the same-length rewrite: never longer, never a new byte past len */
        char *buf = malloc(n + 1);
        memcpy(buf, in, n);
        buf[n] = 0;
        size_t removed = al_mcp_filter_tools_padded(buf, n, data[0] & 1, allow_short, NULL);
        if (removed && !(data[0] & 1)) {
            json_t *j = json_loadb(buf, n, 0, NULL);
            if (!j)
                abort(); /* a rewrite must still be JSON */
            json_decref(j);
        }
        if (buf[n] != 0)
            abort();
        free(buf);
        return 0;
    }
    switch (data[0] % 3) {
    case 0: {
        al_mcp_calls c;
        int rc = al_mcp_parse_calls(in, n, &c);
        if (rc != AL_OK && c.count)
            abort();
        for (size_t i = 0; i < c.count; i++)
            if (!c.names[i])
                abort();
        if (c.count) {
            size_t l;
            char *e = al_mcp_error_response(c.ids[0], AL_MCP_POLICY_ERROR, "denied", &l);
            free(e);
        }
        al_mcp_calls_free(&c);
        break;
    }
    case 1: {
        char *out = NULL;
        size_t ol = 0;
        if (al_mcp_filter_tools_list(in, n, allow_short, NULL, &out, &ol) == AL_OK && out) {
            json_t *j = json_loadb(out, ol, 0, NULL);
            json_t *tools = json_object_get(json_object_get(j, "result"), "tools");
            size_t i;
            json_t *t;
            json_array_foreach(tools, i, t)
            {
                const char *name = json_string_value(json_object_get(t, "name"));
                if (!name || !allow_short(NULL, name))
                    abort();
            }
            json_decref(j);
        }
        free(out);
        break;
    }
    default: {
        char *out = NULL;
        size_t ol = 0;
        long used = al_mcp_filter_sse(in, n, allow_short, NULL, &out, &ol);
        if (used > (long)n)
            abort();
        free(out);
        break;
    }
    }
    return 0;
}
