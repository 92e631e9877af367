/* al_mcp: MCP JSON-RPC inspection for policy. See al_mcp.h.
 *
 * Invariants: bodies are parsed with jansson (escapes decoded, so "tools\/call" is
 * tools/call here as in the server), duplicate keys refused (two "name"s must not
 * be read one way here and another way upstream), sizes and counts bounded before
 * anything is allocated per message. */
#include "al_mcp.h"
#include "common/al_err.h"

#include <stdlib.h>
#include <string.h>

void al_mcp_calls_free(al_mcp_calls *c)
{
    for (size_t i = 0; i < c->count; i++) {
        free(c->names[i]);
        json_decref(c->ids[i]);
    }
    c->count = 0;
}

static int one_message(json_t *m, al_mcp_calls *out)
{
    if (!json_is_object(m))
        return AL_ERR_PROTO;
    const char *method = json_string_value(json_object_get(m, "method"));
    if (method && !strcmp(method, "tools/list"))
        out->lists_tools = 1;
    if (!method || strcmp(method, "tools/call") != 0)
        return AL_OK;
    if (out->count == AL_MCP_MAX_CALLS)
        return AL_ERR_TOOBIG;
    const char *name = json_string_value(json_object_get(json_object_get(m, "params"), "name"));
    char *dup = strdup(name ? name : "");
    if (!dup)
        return AL_ERR_NOMEM;
    json_t *id = json_object_get(m, "id");
    out->names[out->count] = dup;
    out->ids[out->count] = id ? json_incref(id) : NULL;
    out->count++;
    return AL_OK;
}

int al_mcp_parse_calls(const char *body, size_t len, al_mcp_calls *out)
{
    memset(out, 0, sizeof *out);
    if (len > AL_MCP_MAX_BODY)
        return AL_ERR_TOOBIG;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (!doc)
        return AL_ERR_PROTO;
    int rc = AL_OK;
    if (json_is_array(doc)) {
        out->batch = 1;
        if (json_array_size(doc) == 0 || json_array_size(doc) > AL_MCP_MAX_CALLS)
            rc = json_array_size(doc) ? AL_ERR_TOOBIG : AL_ERR_PROTO;
        size_t i;
        json_t *m;
        json_array_foreach(doc, i, m)
        {
            if (rc != AL_OK)
                break;
            rc = one_message(m, out);
        }
    } else {
        rc = one_message(doc, out);
    }
    json_decref(doc);
    if (rc != AL_OK)
        al_mcp_calls_free(out);
    return rc;
}

char *al_mcp_error_response(const json_t *id, int code, const char *message, size_t *len)
{
    json_t *r =
        json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id",
                  id ? (json_t *)id : json_null(), "error", "code", code, "message", message);
    char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* Keeps the allowed tools of msg.result.tools; returns how many were removed. */
static size_t filter_message(json_t *msg, al_mcp_tool_allowed_fn allowed, void *arg)
{
    json_t *tools = json_object_get(json_object_get(msg, "result"), "tools");
    size_t removed = 0;
    if (!json_is_array(tools))
        return 0;
    for (size_t i = 0; i < json_array_size(tools);) {
        const char *name = json_string_value(json_object_get(json_array_get(tools, i), "name"));
        if (!name || !allowed(arg, name)) {
            json_array_remove(tools, i);
            removed++;
        } else {
            i++;
        }
    }
    return removed;
}

/* filter_message over one message or each message of a batch. */
static size_t filter_doc(json_t *doc, al_mcp_tool_allowed_fn allowed, void *arg)
{
    size_t removed = 0, i;
    json_t *m;
    if (!json_is_array(doc))
        return filter_message(doc, allowed, arg);
    json_array_foreach(doc, i, m) removed += filter_message(m, allowed, arg);
    return removed;
}

int al_mcp_filter_tools_list(const char *body, size_t len, al_mcp_tool_allowed_fn allowed,
                             void *arg, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (!doc)
        return AL_ERR_PROTO;
    size_t removed = filter_doc(doc, allowed, arg);
    int rc = AL_OK;
    if (removed) {
        *out = json_dumps(doc, JSON_COMPACT);
        if (!*out)
            rc = AL_ERR_NOMEM;
        else
            *out_len = strlen(*out);
    }
    json_decref(doc);
    return rc;
}

static int append(char **out, size_t *out_len, const char *s, size_t n)
{
    char *p = realloc(*out, *out_len + n + 1);
    if (!p)
        return AL_ERR_NOMEM;
    memcpy(p + *out_len, s, n);
    *out_len += n;
    p[*out_len] = '\0';
    *out = p;
    return AL_OK;
}

/* End of the first event in buf (just past its blank line), or NULL. */
static const char *event_end(const char *buf, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (buf[i] == '\n' && buf[i + 1] == '\n')
            return buf + i + 2;
        if (i + 3 < len && !memcmp(buf + i, "\r\n\r\n", 4))
            return buf + i + 4;
    }
    return NULL;
}

long al_mcp_filter_sse(const char *buf, size_t len, al_mcp_tool_allowed_fn allowed, void *arg,
                       char **out, size_t *out_len)
{
    size_t used = 0;
    while (used < len) {
        const char *ev = buf + used, *end = event_end(ev, len - used);
        if (!end)
            break;
        size_t evlen = (size_t)(end - ev);
        /* gather the data lines (joined by '\n', SSE's rule) */
        char *data = NULL;
        size_t dlen = 0;
        int ndata = 0, rc = AL_OK;
        for (const char *l = ev; l < end && rc == AL_OK;) {
            const char *nl = memchr(l, '\n', (size_t)(end - l));
            size_t ll = (size_t)((nl ? nl : end) - l);
            if (ll && l[ll - 1] == '\r')
                ll--;
            if (ll >= 5 && !memcmp(l, "data:", 5)) {
                const char *v = l + 5 + (ll > 5 && l[5] == ' ');
                size_t vl = ll - (size_t)(v - l);
                if (ndata++)
                    rc = append(&data, &dlen, "\n", 1);
                if (rc == AL_OK)
                    rc = append(&data, &dlen, v, vl);
            }
            l = nl ? nl + 1 : end;
        }
        char *filtered = NULL;
        size_t flen = 0;
        if (rc == AL_OK && data)
            (void)al_mcp_filter_tools_list(data, dlen, allowed, arg, &filtered, &flen);
        if (rc == AL_OK && filtered) {
            /* the other fields (event:, id:) are kept; the data becomes one line */
            for (const char *l = ev; l < end && rc == AL_OK;) {
                const char *nl = memchr(l, '\n', (size_t)(end - l));
                size_t ll = (size_t)((nl ? nl + 1 : end) - l);
                size_t body = ll - (nl ? 1 : 0);
                int blank = body == 0 || (body == 1 && l[0] == '\r');
                if (!blank && !(ll >= 5 && !memcmp(l, "data:", 5)))
                    rc = append(out, out_len, l, ll);
                l = nl ? nl + 1 : end;
            }
            if (rc == AL_OK)
                rc = append(out, out_len, "data: ", 6);
            if (rc == AL_OK)
                rc = append(out, out_len, filtered, flen);
            if (rc == AL_OK)
                rc = append(out, out_len, "\n\n", 2);
        } else if (rc == AL_OK) {
            rc = append(out, out_len, ev, evlen);
        }
        free(filtered);
        free(data);
        if (rc != AL_OK)
            return rc;
        used += evlen;
    }
    return (long)used;
}

/* Rewrites one JSON text in place (same length); returns the tools removed. */
static size_t pad_one(char *p, size_t len, al_mcp_tool_allowed_fn allowed, void *arg)
{
    char *out = NULL;
    size_t ol = 0, removed = 0;
    json_t *doc = json_loadb(p, len, JSON_REJECT_DUPLICATES, NULL);
    if (!doc)
        return 0;
    removed = filter_doc(doc, allowed, arg);
    if (removed && (out = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(17))) &&
        (ol = strlen(out)) <= len) {
        memcpy(p, out, ol);
        memset(p + ol, ' ', len - ol);
    } else {
        removed = 0;
    }
    free(out);
    json_decref(doc);
    return removed;
}

size_t al_mcp_filter_tools_padded(char *buf, size_t len, int sse, al_mcp_tool_allowed_fn allowed,
                                  void *arg)
{
    if (!sse)
        return pad_one(buf, len, allowed, arg);
    size_t removed = 0;
    for (size_t i = 0; i < len;) {
        char *nl = memchr(buf + i, '\n', len - i);
        size_t ll = (size_t)((nl ? nl : buf + len) - (buf + i));
        char *line = buf + i;
        size_t body = ll && line[ll - 1] == '\r' ? ll - 1 : ll;
        if (body > 5 && !memcmp(line, "data:", 5)) {
            size_t off = 5 + (line[5] == ' ');
            removed += pad_one(line + off, body - off, allowed, arg);
        }
        i += ll + (nl ? 1 : 0);
    }
    return removed;
}
