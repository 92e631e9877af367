/* al_auth: the method -> injector table, the header drop rule and the helpers
 * injectors share (see al_auth.h).
 *
 * Invariants: pure functions, no I/O, no logging, no global state. */
#include "al_auth.h"
#include "common/al_err.h"

#include <openssl/crypto.h>
#include <string.h>
#include <strings.h>

/* One row per method that is built; NULL: the data path refuses such a target
 * (auth_method_unavailable) rather than guessing. */
static const al_auth_injector *const injectors[AL_AUTH_COUNT] = {
    [AL_AUTH_API_KEY] = &al_auth_api_key_injector,
    [AL_AUTH_OAUTH2_2LO] = &al_auth_oauth2_injector,
    /* the user's access token, as a Bearer like 2LO's (the source differs) */
    [AL_AUTH_OAUTH2_3LO] = &al_auth_oauth2_injector,
    [AL_AUTH_IAM] = &al_auth_sigv4_injector,
};

const al_auth_injector *al_auth_injector_for(enum al_auth_method m)
{
    if ((unsigned)m >= AL_AUTH_COUNT)
        return NULL;
    return injectors[m];
}

/* Value buffers are set up when a header is added (most requests set one): the hot
 * path touches only what it uses. */
void al_auth_out_init(al_auth_out *o)
{
    o->count = 0;
    o->value_max = 0;
    al_buf_init(&o->target, 64 * 1024);
}

void al_auth_out_free(al_auth_out *o)
{
    for (size_t i = 0; i < o->count; i++)
        al_buf_free(&o->value[i], 1);
    al_buf_free(&o->target, 1);
    o->count = 0;
}

al_buf *al_auth_out_add(al_auth_out *o, const char *name)
{
    if (o->count >= AL_AUTH_MAX_HEADERS || !name)
        return NULL;
    o->name[o->count] = name;
    o->name_len[o->count] = strlen(name);
    al_buf_init(&o->value[o->count], o->value_max ? o->value_max : 16 * 1024);
    return &o->value[o->count++];
}

int al_auth_out_sets(const al_auth_out *o, const char *name, size_t len)
{
    for (size_t i = 0; i < o->count; i++)
        if (al_http_name_eq(name, len, o->name[i], o->name_len[i]))
            return 1;
    return 0;
}

/* al_buf has no reserve call: append zeros, then take them back. */
int al_auth_reserve(al_buf *b, size_t total)
{
    /* one growth to the room needed (al_buf wipes a block it leaves), not appends of
     * zeros 256 bytes at a time */
    if (total > b->len) {
        int rc = al_buf_reserve(b, total - b->len);
        if (rc)
            return rc;
    }
    if (b->data)
        b->data[b->len] = '\0';
    return AL_OK;
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

int al_auth_percent_encode(al_buf *b, const unsigned char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += unreserved(p[i]) ? 1 : 3;
    int rc = al_auth_reserve(b, b->len + need);
    if (rc)
        return rc;
    /* Capacity is reserved: these appends copy, they never reallocate. */
    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        if (unreserved(p[i])) {
            rc = al_buf_append(b, &p[i], 1);
        } else {
            char e[3] = {'%', hex[p[i] >> 4], hex[p[i] & 15]};
            rc = al_buf_append(b, e, 3);
        }
    }
    return rc;
}

int al_auth_drop_request_header(const al_target *t, const char *name, size_t len)
{
    static const struct {
        const char *s;
        size_t n;
    } req_only[] = {
#define H(x) {x, sizeof x - 1}
        H("proxy-authorization"), H("proxy-authenticate"), H("trailer"), H("http2-settings"),
#undef H
    };
    if (!name)
        return 0;
    if (al_http_hop_by_hop(name, len))
        return 1;
    for (size_t i = 0; i < sizeof req_only / sizeof req_only[0]; i++)
        if (al_http_name_eq(name, len, req_only[i].s, req_only[i].n))
            return 1;
    if (!t)
        return 0;
    /* Every valid target injects some auth, and every method either sets
     * Authorization or must not let the agent's own reach the upstream. */
    if ((unsigned)t->auth.method < AL_AUTH_COUNT && al_http_name_is(name, len, "authorization"))
        return 1;
    const al_auth_injector *inj = al_auth_injector_for(t->auth.method);
    return inj && inj->drops_header && inj->drops_header(t, name, len);
}
