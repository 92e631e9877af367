/* Unit tests for auth/ (moved from targets/al_inject): the api_key injector (header
 * and query, and through prepare()), the header drop rule, and percent-encoding. Query cases are data: agent's request
 * target in, upstream request target out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "auth/al_auth.h"

/* The old two-hook shape of the api_key injector, over al_auth_api_key_header and
 * al_auth_api_key_target, so the cases below read as before the move. */
typedef struct al_inject_header {
    const char *name;
    size_t name_len;
} al_inject_header;

typedef struct al_injector {
    enum al_auth_method method;
    const char *name;
    int (*header)(const al_target *t, const al_secret_view *s, al_inject_header *out,
                  al_buf *value);
    int (*request_target)(const al_target *t, const al_secret_view *s, const char *target,
                          size_t len, al_buf *out);
} al_injector;

static int shim_header(const al_target *t, const al_secret_view *s, al_inject_header *h,
                       al_buf *v)
{
    al_auth_out o;
    al_auth_out_init(&o);
    o.value_max = v->max; /* the caller's limit */
    int rc = al_auth_api_key_header(t, s, &o);
    size_t max = v->max;
    al_buf_free(v, 1); /* replaced, as the old hook did */
    int set = o.count > 0;
    if (set) {
        *v = o.value[0];
        o.count = 0;
    } else {
        al_buf_init(v, max);
    }
    h->name = rc == AL_OK && set ? o.name[0] : NULL;
    h->name_len = h->name ? strlen(h->name) : 0;
    al_auth_out_free(&o);
    return rc;
}

static const al_injector api_key_shim = {AL_AUTH_API_KEY, "api_key", shim_header,
                                         al_auth_api_key_target};

static const al_injector *al_injector_for(enum al_auth_method m)
{
    const al_auth_injector *inj = al_auth_injector_for(m);
    return inj && inj == &al_auth_api_key_injector ? &api_key_shim : NULL;
}
#define al_inject_drop_request_header al_auth_drop_request_header
#define al_inject_percent_encode al_auth_percent_encode

static al_target header_target(const char *name, const char *prefix)
{
    al_target t = {.name = (char *)"t", .host = (char *)"api.example.com", .port = 443};
    t.auth.method = AL_AUTH_API_KEY;
    t.auth.location = AL_KEY_IN_HEADER;
    t.auth.name = (char *)name;
    t.auth.prefix = (char *)prefix;
    return t;
}

static al_target query_target(const char *name)
{
    al_target t = header_target(name, NULL);
    t.auth.location = AL_KEY_IN_QUERY;
    return t;
}

static al_secret_view secret(const char *v)
{
    return (al_secret_view){.provider = "p",
                            .version = 3,
                            .kind = "api_key",
                            .value = (const unsigned char *)v,
                            .len = strlen(v)};
}

static void test_injector_for(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    assert_non_null(inj);
    assert_int_equal(inj->method, AL_AUTH_API_KEY);
    assert_string_equal(inj->name, "api_key");
    assert_non_null(inj->header);
    assert_non_null(inj->request_target);
    /* Not built yet: the data path must refuse, not guess. */
    assert_null(al_injector_for(AL_AUTH_IAM));
    assert_null(al_injector_for(AL_AUTH_OAUTH2_2LO));
    assert_null(al_injector_for(AL_AUTH_OAUTH2_3LO));
    assert_null(al_injector_for(AL_AUTH_COUNT));
    assert_null(al_injector_for((enum al_auth_method) - 1));
}

static void test_header_values(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    static const struct {
        const char *name, *prefix, *secret, *want_name, *want_value;
    } cases[] = {
        {"Authorization", "Bearer ", "sk-abc123", "Authorization", "Bearer sk-abc123"},
        {NULL, NULL, "sk-abc123", "Authorization", "Bearer sk-abc123"}, /* defaults */
        {"X-Api-Key", "", "k/+=&?%", "X-Api-Key", "k/+=&?%"},           /* sent raw */
        {"x-goog-api-key", NULL, "AIza", "x-goog-api-key", "AIza"},
        {"Authorization", "Token ", "t\tab", "Authorization", "Token t\tab"},
        {"Authorization", "Bearer ", "", "Authorization", "Bearer "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        al_target t = header_target(cases[i].name, cases[i].prefix);
        al_secret_view s = secret(cases[i].secret);
        al_inject_header h;
        al_buf v;
        al_buf_init(&v, 1024);
        assert_int_equal(inj->header(&t, &s, &h, &v), AL_OK);
        assert_non_null(h.name);
        assert_int_equal(h.name_len, strlen(cases[i].want_name));
        assert_memory_equal(h.name, cases[i].want_name, h.name_len);
        assert_int_equal(v.len, strlen(cases[i].want_value));
        assert_memory_equal(v.data, cases[i].want_value, v.len);
        /* The request target is untouched for a header key. */
        al_buf q;
        al_buf_init(&q, 1024);
        assert_int_equal(inj->request_target(&t, &s, "/x?api_key=1", 12, &q), AL_OK);
        assert_int_equal(q.len, 0);
        al_buf_free(&q, 1);
        al_buf_free(&v, 1);
    }
}

static void test_header_refuses_splitting(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    const char *bad[] = {"abc\r\nX-Evil: 1", "abc\n", "a\rb", "del\x7f"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        al_target t = header_target("X-Api-Key", "");
        al_secret_view s = secret(bad[i]);
        al_inject_header h;
        al_buf v;
        al_buf_init(&v, 1024);
        assert_int_equal(inj->header(&t, &s, &h, &v), AL_ERR_INVAL);
        assert_null(h.name);
        assert_int_equal(v.len, 0);
        al_buf_free(&v, 1);
    }
    /* NUL inside the secret (views are not C strings). */
    al_target t = header_target("X-Api-Key", "");
    al_secret_view s = {.value = (const unsigned char *)"ab\0cd", .len = 5};
    al_inject_header h;
    al_buf v;
    al_buf_init(&v, 1024);
    assert_int_equal(inj->header(&t, &s, &h, &v), AL_ERR_INVAL);
    /* A prefix from the table is checked too. */
    t = header_target("Authorization", "Bearer\r\n");
    s = secret("ok");
    assert_int_equal(inj->header(&t, &s, &h, &v), AL_ERR_INVAL);
    al_buf_free(&v, 1);
}

static void test_header_limit(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    al_target t = header_target("Authorization", "Bearer ");
    al_secret_view s = secret("0123456789abcdef");
    al_inject_header h;
    al_buf v;
    al_buf_init(&v, 10);
    assert_int_equal(inj->header(&t, &s, &h, &v), AL_ERR_TOOBIG);
    assert_null(h.name);
    assert_int_equal(v.len, 0);
    al_buf_free(&v, 1);
    /* Exactly enough. */
    al_buf_init(&v, 7 + 16);
    assert_int_equal(inj->header(&t, &s, &h, &v), AL_OK);
    assert_string_equal(v.data, "Bearer 0123456789abcdef");
    /* The buffer is replaced, not appended to. */
    assert_int_equal(inj->header(&t, &s, &h, &v), AL_OK);
    assert_string_equal(v.data, "Bearer 0123456789abcdef");
    al_buf_free(&v, 1);
}

typedef struct query_case {
    const char *name;   /* parameter name in the table (NULL = default api_key) */
    const char *secret; /* from the store */
    const char *in;     /* agent's request target */
    const char *out;    /* upstream request target; NULL = AL_ERR_INVAL */
} query_case;

static const query_case g_query[] = {
    {"key", "abc", "/v1/x", "/v1/x?key=abc"},
    {NULL, "abc", "/v1/x", "/v1/x?api_key=abc"},
    {"key", "abc", "/", "/?key=abc"},
    {"key", "abc", "/p?", "/p?key=abc"},
    {"key", "abc", "/p?a=1", "/p?a=1&key=abc"},
    {"key", "abc", "/p?a=1&b=&c", "/p?a=1&b=&c&key=abc"},
    /* characters that need encoding */
    {"key", "s3cr+t&x=y z/?#%", "/p", "/p?key=s3cr%2Bt%26x%3Dy%20z%2F%3F%23%25"},
    {"key", "\xc3\xa9\x01\xff~._-", "/p", "/p?key=%C3%A9%01%FF~._-"},
    {"my key", "v", "/p?a=1", "/p?a=1&my%20key=v"},
    /* the agent sends its own key: every copy goes */
    {"key", "ours", "/p?key=agents", "/p?key=ours"},
    {"key", "ours", "/p?a=1&key=agents&b=2", "/p?a=1&b=2&key=ours"},
    {"key", "ours", "/p?key=1&key=2&a=3&key=4", "/p?a=3&key=ours"},
    {"key", "ours", "/p?key", "/p?key=ours"},
    {"key", "ours", "/p?key=", "/p?key=ours"},
    {"key", "ours", "/p?KEY=x&Key=y", "/p?key=ours"},
    {"key", "ours", "/p?%6Bey=x&k%65y=y&%4B%45%59=z", "/p?key=ours"},
    {"my key", "ours", "/p?my+key=x&my%20key=y&my%2bkey=z", "/p?my%2bkey=z&my%20key=ours"},
    {"api_key", "ours", "/p?api%5Fkey=x&api_key2=y", "/p?api_key2=y&api_key=ours"},
    /* spellings a lenient framework reads as ours (issue 8, finding 9) */
    {"appid", "ours", "/p?;appid=X", "/p?appid=ours"},
    {"appid", "ours", "/p?a=1&b=2;appid=X&c=3", "/p?a=1&c=3&appid=ours"},
    {"appid", "ours", "/p?appid+=X", "/p?appid=ours"},
    {"appid", "ours", "/p?+appid=X&%20appid%20=Y&appid%09=Z&appid%00=W", "/p?appid=ours"},
    {"appid", "ours", "/p?APPID=X&ApPiD=Y", "/p?appid=ours"},
    {"appid", "ours", "/p?appid%3D=X&appid%3DX", "/p?appid=ours"},
    {"appid", "ours", "/p?app%69d=X&%61%70%70%69%64=Y", "/p?appid=ours"},
    {"appid", "ours", "/p?app%2569d=X&%2561ppid=Y&%252561ppid=Z", "/p?appid=ours"},
    {"appid", "ours", "/p?appid[]=X&appid%5B0%5D=Y", "/p?appid=ours"},
    {"appid", "ours", "/p?x%26appid%3DX&y=1%26appid=Z&z=%3Bappid=W", "/p?appid=ours"},
    {"appid", "ours", "/p?appidx=1&xappid=2&app+id=3&appid%2B=4",
     "/p?appidx=1&xappid=2&app+id=3&appid%2B=4&appid=ours"},
    /* look-alikes are kept */
    {"key", "ours", "/p?keys=1&akey=2&ke=3", "/p?keys=1&akey=2&ke=3&key=ours"},
    {"key", "ours", "/p?a=key&b=key%3D1", "/p?a=key&b=key%3D1&key=ours"},
    {"key", "ours", "/p?%zzkey=1&key%=2", "/p?%zzkey=1&key%=2&key=ours"},
    /* empty parameters are dropped, order is kept */
    {"key", "ours", "/p?&&a=1&&b=2&", "/p?a=1&b=2&key=ours"},
    {"key", "ours", "/p?key=x&", "/p?key=ours"},
    /* a fragment has no place in a request target */
    {"key", "ours", "/p#frag", NULL},
    {"key", "ours", "/p?a=1#key=x", NULL},
};

static void test_query_table(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    for (size_t i = 0; i < sizeof g_query / sizeof g_query[0]; i++) {
        const query_case *c = &g_query[i];
        al_target t = query_target(c->name);
        al_secret_view s = secret(c->secret);
        al_buf out;
        al_buf_init(&out, 4096);
        int rc = inj->request_target(&t, &s, c->in, strlen(c->in), &out);
        if (!c->out) {
            if (rc != AL_ERR_INVAL || out.len != 0)
                fail_msg("case %zu: %s: rc %d len %zu, want INVAL", i, c->in, rc, out.len);
        } else if (rc != AL_OK || out.len != strlen(c->out) ||
                   memcmp(out.data, c->out, out.len) != 0) {
            fail_msg("case %zu: %s -> rc %d '%s', want '%s'", i, c->in, rc,
                     out.data ? out.data : "", c->out);
        }
        /* No header for a query key. */
        al_inject_header h = {.name = "x"};
        al_buf v;
        al_buf_init(&v, 64);
        assert_int_equal(inj->header(&t, &s, &h, &v), AL_OK);
        assert_null(h.name);
        assert_int_equal(v.len, 0);
        al_buf_free(&v, 1);
        al_buf_free(&out, 1);
    }
}

static void test_query_uses_length_and_limit(void **state)
{
    (void)state;
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    al_target t = query_target("key");
    al_secret_view s = secret("abc");
    al_buf out;
    al_buf_init(&out, 4096);
    /* Only the first len bytes are the target. */
    const char *in = "/p?key=x&a=1 HTTP/1.1";
    assert_int_equal(inj->request_target(&t, &s, in, 12, &out), AL_OK);
    assert_string_equal(out.data, "/p?a=1&key=abc");
    /* Replaced on a second call, not appended. */
    assert_int_equal(inj->request_target(&t, &s, "/q", 2, &out), AL_OK);
    assert_string_equal(out.data, "/q?key=abc");
    al_buf_free(&out, 1);
    al_buf_init(&out, 8);
    assert_int_equal(inj->request_target(&t, &s, "/q", 2, &out), AL_ERR_TOOBIG);
    assert_int_equal(out.len, 0);
    al_buf_free(&out, 1);
}

static void test_drop_request_header(void **state)
{
    (void)state;
    al_target hdr = header_target("X-Api-Key", "");
    al_target def = header_target(NULL, NULL);
    al_target qry = query_target("x-api-key");
    static const struct {
        const char *name;
        int hdr, def, qry, none;
    } cases[] = {
        /* hop-by-hop: always */
        {"Connection", 1, 1, 1, 1},
        {"keep-alive", 1, 1, 1, 1},
        {"Proxy-Connection", 1, 1, 1, 1},
        {"PROXY-AUTHORIZATION", 1, 1, 1, 1},
        {"Proxy-Authenticate", 1, 1, 1, 1},
        {"TE", 1, 1, 1, 1},
        {"Trailer", 1, 1, 1, 1},
        {"Transfer-Encoding", 1, 1, 1, 1},
        {"upgrade", 1, 1, 1, 1},
        {"HTTP2-Settings", 1, 1, 1, 1},
        /* the agent's own credential */
        {"Authorization", 1, 1, 1, 0},
        {"authorization", 1, 1, 1, 0},
        {"X-Api-Key", 1, 0, 0, 0},
        {"x-api-key", 1, 0, 0, 0},
        {"X-API-KEY", 1, 0, 0, 0},
        /* look-alikes and ordinary headers pass */
        {"X-Api-Key2", 0, 0, 0, 0},
        {"X-Api-Ke", 0, 0, 0, 0},
        {"Upgrade-Insecure-Requests", 0, 0, 0, 0},
        {"Tex", 0, 0, 0, 0},
        {"T", 0, 0, 0, 0},
        {"Content-Type", 0, 0, 0, 0},
        {"Content-Length", 0, 0, 0, 0},
        {"Host", 0, 0, 0, 0},
        {"Cookie", 0, 0, 0, 0},
        {"X-Request-Id", 0, 0, 0, 0},
        {"Authorizations", 0, 0, 0, 0},
        {"", 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *n = cases[i].name;
        size_t l = strlen(n);
        if (al_inject_drop_request_header(&hdr, n, l) != cases[i].hdr ||
            al_inject_drop_request_header(&def, n, l) != cases[i].def ||
            al_inject_drop_request_header(&qry, n, l) != cases[i].qry ||
            al_inject_drop_request_header(NULL, n, l) != cases[i].none)
            fail_msg("case %zu: %s", i, n);
    }
    /* Slices: "X-Api-Key: value" with the name's length. */
    assert_int_equal(al_inject_drop_request_header(&hdr, "X-Api-Key: v", 9), 1);
    assert_int_equal(al_inject_drop_request_header(&hdr, "X-Api-Key: v", 8), 0);
    /* A method without an injector still has Authorization dropped. */
    al_target iam = hdr;
    iam.auth.method = AL_AUTH_IAM;
    assert_int_equal(al_inject_drop_request_header(&iam, "Authorization", 13), 1);
    assert_int_equal(al_inject_drop_request_header(&iam, "X-Api-Key", 9), 0);
}

static void test_percent_encode(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 64);
    assert_int_equal(al_buf_append(&b, "x=", 2), AL_OK);
    assert_int_equal(al_inject_percent_encode(&b, (const unsigned char *)"aZ09-._~ !*'()", 14),
                     AL_OK);
    assert_string_equal(b.data, "x=aZ09-._~%20%21%2A%27%28%29");
    al_buf_free(&b, 1);
    al_buf_init(&b, 5);
    assert_int_equal(al_inject_percent_encode(&b, (const unsigned char *)"ab//", 4), AL_ERR_TOOBIG);
    al_buf_free(&b, 1);
}

/* Property check over random agent targets: whatever the agent sends, the upstream
 * target carries exactly one parameter whose decoded name is ours (any case), it
 * is the last one and holds our key, and the path is untouched. */
static int decoded_key_is(const char *k, size_t n, const char *name)
{
    char d[256];
    size_t j = 0;
    for (size_t i = 0; i < n && j < sizeof d - 1; i++) {
        char c = k[i];
        unsigned hi, lo;
        if (c == '+')
            c = ' ';
        else if (c == '%' && i + 2 < n && sscanf(k + i + 1, "%1x%1x", &hi, &lo) == 2) {
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        d[j++] = c;
    }
    d[j] = '\0';
    return strcasecmp(d, name) == 0;
}

static void test_query_random(void **state)
{
    (void)state;
    static const char *const atoms[] = {"key", "KEY", "k", "ey", "=",    "&",     "%6b", "%6B",
                                        "%",   "%4",  "a", "1",  "&&",   "?",     "/",   "+",
                                        "%20", "%3D", "x", "=",  "key=", "&key=", "%26"};
    const al_injector *inj = al_injector_for(AL_AUTH_API_KEY);
    al_target t = query_target("key");
    al_secret_view s = secret("S&=%+ k");
    const char *enc = "key=S%26%3D%25%2B%20k";
    uint64_t x = 88172645463325252ULL;
    for (int round = 0; round < 20000; round++) {
        char in[256] = "/p";
        size_t len = 2;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int natoms = (int)(x % 12);
        for (int i = 0; i < natoms; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const char *a = atoms[x % (sizeof atoms / sizeof atoms[0])];
            size_t al = strlen(a);
            memcpy(in + len, a, al);
            len += al;
        }
        in[len] = '\0';
        al_buf out;
        al_buf_init(&out, 4096);
        assert_int_equal(inj->request_target(&t, &s, in, len, &out), AL_OK);
        const char *q = strchr(in, '?');
        size_t path_len = q ? (size_t)(q - in) : len;
        if (memcmp(out.data, in, path_len) != 0 || out.data[path_len] != '?')
            fail_msg("path changed: %s -> %s", in, out.data);
        int ours = 0, last_is_ours = 0;
        char *p = out.data + path_len + 1;
        while (*p) {
            char *amp = strchr(p, '&');
            size_t pl = amp ? (size_t)(amp - p) : strlen(p);
            char *eq = memchr(p, '=', pl);
            size_t kl = eq ? (size_t)(eq - p) : pl;
            if (pl == 0)
                fail_msg("empty parameter in %s", out.data);
            last_is_ours = decoded_key_is(p, kl, "key");
            if (last_is_ours) {
                ours++;
                if (pl != strlen(enc) || memcmp(p, enc, pl) != 0)
                    fail_msg("agent's key survived: %s -> %s", in, out.data);
            }
            p += pl + (amp ? 1 : 0);
        }
        if (ours != 1 || !last_is_ours)
            fail_msg("%s -> %s: %d of ours", in, out.data, ours);
        al_buf_free(&out, 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_injector_for),
        cmocka_unit_test(test_header_values),
        cmocka_unit_test(test_header_refuses_splitting),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_query_table),
        cmocka_unit_test(test_query_uses_length_and_limit),
        cmocka_unit_test(test_query_random),
        cmocka_unit_test(test_drop_request_header),
        cmocka_unit_test(test_percent_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
