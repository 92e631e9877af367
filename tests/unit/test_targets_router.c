/* Unit tests for targets/al_router: forward-proxy lookups (host case, ports, path
 * prefixes on segment boundaries, trailing slashes, IPv6 literals, misses), gateway
 * names and CONNECT authorities. Cases are data: one row per lookup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/al_err.h"
#include "targets/al_router.h"

#define T(n, h, p, b)                                                                              \
    {                                                                                              \
        .name = (char *)(n), .host = (char *)(h), .port = (p), .base_path = (char *)(b)            \
    }

static al_target g_targets[] = {
    T("root", "api.example.com", 443, ""),
    T("v1", "api.example.com", 443, "/v1"),
    T("v1-deep", "api.example.com", 443, "/v1/deep"),
    T("v10", "api.example.com", 443, "/v10"),
    T("plain", "api.example.com", 80, "/only"),
    T("slash", "slash.example.com", 443, "/s/"),
    T("rootslash", "rs.example.com", 8443, "/"),
    T("v6", "2001:db8::1", 443, "/api"),
    T("v6loop", "::1", 8080, ""),
    T("v4lit", "203.0.113.9", 443, ""),
    T("upper", "MiXeD.Example.COM", 443, "/CaseSensitivePath"),
};
#define NT (sizeof g_targets / sizeof g_targets[0])

typedef struct route_case {
    const char *host;
    uint16_t port;
    const char *path; /* NULL = no path */
    const char *want; /* target name or NULL for a miss */
} route_case;

static const route_case g_cases[] = {
    /* longest prefix on segment boundaries */
    {"api.example.com", 443, "/", "root"},
    {"api.example.com", 443, "", "root"},
    {"api.example.com", 443, NULL, "root"},
    {"api.example.com", 443, "/v1", "v1"},
    {"api.example.com", 443, "/v1/", "v1"},
    {"api.example.com", 443, "/v1/x/y", "v1"},
    {"api.example.com", 443, "/v1?x=1", "v1"},
    {"api.example.com", 443, "/v10", "v10"},
    {"api.example.com", 443, "/v10/a", "v10"},
    {"api.example.com", 443, "/v100", "root"},
    {"api.example.com", 443, "/v1deep", "root"},
    {"api.example.com", 443, "/v1/deep", "v1-deep"},
    {"api.example.com", 443, "/v1/deep/er", "v1-deep"},
    {"api.example.com", 443, "/v1/deeper", "v1"},
    {"api.example.com", 443, "/V1", "root"}, /* paths are case-sensitive */
    {"api.example.com", 443, "/v2", "root"},
    /* hosts are case-insensitive, a trailing dot is the same name */
    {"API.EXAMPLE.COM", 443, "/v1/a", "v1"},
    {"Api.Example.Com", 443, "/v10", "v10"},
    {"api.example.com.", 443, "/v1", "v1"},
    {"mixed.example.com", 443, "/CaseSensitivePath/x", "upper"},
    {"MIXED.EXAMPLE.COM", 443, "/casesensitivepath", NULL},
    /* ports are part of the authority */
    {"api.example.com", 80, "/only", "plain"},
    {"api.example.com", 80, "/only/more", "plain"},
    {"api.example.com", 80, "/", NULL},
    {"api.example.com", 80, "/v1", NULL},
    {"api.example.com", 8443, "/v1", NULL},
    {"api.example.com", 0, "/", NULL},
    /* trailing slashes in the table's base path */
    {"slash.example.com", 443, "/s", "slash"},
    {"slash.example.com", 443, "/s/", "slash"},
    {"slash.example.com", 443, "/s/t", "slash"},
    {"slash.example.com", 443, "/st", NULL},
    {"slash.example.com", 443, "/", NULL},
    {"rs.example.com", 8443, "/", "rootslash"},
    {"rs.example.com", 8443, "/anything/at/all", "rootslash"},
    /* IPv6 literals: with or without brackets, any spelling */
    {"2001:db8::1", 443, "/api", "v6"},
    {"[2001:db8::1]", 443, "/api/x", "v6"},
    {"2001:DB8:0:0::1", 443, "/api", "v6"},
    {"[2001:0db8::0001]", 443, "/api", "v6"},
    {"2001:db8::1", 443, "/apix", NULL},
    {"2001:db8::2", 443, "/api", NULL},
    {"[::1]", 8080, "/", "v6loop"},
    {"0:0:0:0:0:0:0:1", 8080, "/x", "v6loop"},
    {"[::1]", 8081, "/", NULL},
    {"[::1", 8080, "/", NULL},
    {"::zz", 8080, "/", NULL},
    /* IPv4 literal */
    {"203.0.113.9", 443, "/x", "v4lit"},
    {"203.0.113.90", 443, "/x", NULL},
    /* misses */
    {"example.com", 443, "/", NULL},
    {"api.example.co", 443, "/", NULL},
    {"xapi.example.com", 443, "/", NULL},
    {"", 443, "/", NULL},
    {".", 443, "/", NULL},
};

static int setup(void **state)
{
    al_router *r = NULL;
    assert_int_equal(al_router_build(g_targets, NT, &r), AL_OK);
    assert_non_null(r);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    al_router_free(*state);
    return 0;
}

static void test_find_table(void **state)
{
    const al_router *r = *state;
    for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        const route_case *c = &g_cases[i];
        const al_target *t = al_router_find(r, c->host, strlen(c->host), c->port, c->path,
                                            c->path ? strlen(c->path) : 0);
        const char *got = t ? t->name : NULL;
        if ((got == NULL) != (c->want == NULL) || (got && strcmp(got, c->want) != 0))
            fail_msg("case %zu: %s:%u %s -> %s, want %s", i, c->host, c->port,
                     c->path ? c->path : "(null)", got ? got : "miss", c->want ? c->want : "miss");
    }
}

static void test_find_uses_lengths(void **state)
{
    const al_router *r = *state;
    /* Slices, not C strings: the bytes after host_len/path_len must not matter. */
    const char *host = "api.example.com:443";
    const char *path = "/v1/deep?x";
    const al_target *t = al_router_find(r, host, 15, 443, path, 3);
    assert_non_null(t);
    assert_string_equal(t->name, "v1");
    t = al_router_find(r, host, 15, 443, path, 8);
    assert_string_equal(t->name, "v1-deep");
    t = al_router_find(r, host, 14, 443, path, 3);
    assert_null(t);
}

static void test_find_name(void **state)
{
    const al_router *r = *state;
    for (size_t i = 0; i < NT; i++) {
        const al_target *t = al_router_find_name(r, g_targets[i].name, strlen(g_targets[i].name));
        assert_ptr_equal(t, &g_targets[i]);
    }
    assert_null(al_router_find_name(r, "V1", 2));
    assert_null(al_router_find_name(r, "v", 1));
    assert_null(al_router_find_name(r, "v1x", 3));
    assert_null(al_router_find_name(r, "", 0));
    assert_ptr_equal(al_router_find_name(r, "v1/rest", 2), &g_targets[1]);
}

static void test_find_authority(void **state)
{
    const al_router *r = *state;
    const al_target *t = al_router_find_authority(r, "API.example.com", 15, 443);
    assert_non_null(t);
    assert_string_equal(t->name, "root"); /* the most general one */
    t = al_router_find_authority(r, "api.example.com", 15, 80);
    assert_string_equal(t->name, "plain");
    t = al_router_find_authority(r, "[2001:db8::1]", 13, 443);
    assert_string_equal(t->name, "v6");
    assert_null(al_router_find_authority(r, "api.example.com", 15, 8080));
    assert_null(al_router_find_authority(r, "nothing.example", 15, 443));
}

static void test_empty_and_null(void **state)
{
    (void)state;
    al_router *r = NULL;
    assert_int_equal(al_router_build(NULL, 0, &r), AL_OK);
    assert_null(al_router_find(r, "a", 1, 443, "/", 1));
    assert_null(al_router_find_name(r, "a", 1));
    assert_null(al_router_find_authority(r, "a", 1, 443));
    al_router_free(r);
    al_router_free(NULL);
    assert_null(al_router_find(NULL, "a", 1, 443, "/", 1));

    /* Targets without a usable host are reachable by name only, and do not make the
     * others unroutable. */
    al_target odd[] = {
        {.name = (char *)"nohost", .host = NULL, .port = 443},
        {.name = (char *)"badv6", .host = (char *)"fe80::1::2", .port = 443},
        {.name = (char *)"ok", .host = (char *)"ok.example", .port = 443, .base_path = (char *)""},
    };
    r = NULL;
    assert_int_equal(al_router_build(odd, 3, &r), AL_OK);
    assert_ptr_equal(al_router_find_name(r, "nohost", 6), &odd[0]);
    assert_ptr_equal(al_router_find_name(r, "badv6", 5), &odd[1]);
    assert_null(al_router_find_authority(r, "fe80::1::2", 10, 443));
    assert_ptr_equal(al_router_find(r, "ok.example", 10, 443, "/", 1), &odd[2]);
    al_router_free(r);
}

/* Many targets on many hosts and on one host: every one is found by host and name,
 * whatever the table order. */
static void test_many(void **state)
{
    (void)state;
    enum { N = 3000 };
    al_target *ts = calloc(N, sizeof *ts);
    char(*names)[32] = calloc(N, 32);
    char(*hosts)[32] = calloc(N, 32);
    char(*paths)[32] = calloc(N, 32);
    assert_non_null(ts);
    assert_non_null(names);
    assert_non_null(hosts);
    assert_non_null(paths);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], 32, "t-%d", i);
        /* 2/3 on distinct hosts, 1/3 on one shared host with nested prefixes */
        if (i % 3)
            snprintf(hosts[i], 32, "h%d.example.net", i);
        else
            snprintf(hosts[i], 32, "shared.example.net");
        snprintf(paths[i], 32, "/p%d", i);
        ts[i] = (al_target){.name = names[i],
                            .host = hosts[i],
                            .port = (uint16_t)(443 + i % 2),
                            .base_path = paths[i]};
    }
    al_router *r = NULL;
    assert_int_equal(al_router_build(ts, N, &r), AL_OK);
    for (int i = 0; i < N; i++) {
        char path[48];
        int n = snprintf(path, sizeof path, "/p%d/sub", i);
        const al_target *t =
            al_router_find(r, hosts[i], strlen(hosts[i]), (uint16_t)(443 + i % 2), path, (size_t)n);
        assert_ptr_equal(t, &ts[i]);
        assert_ptr_equal(al_router_find_name(r, names[i], strlen(names[i])), &ts[i]);
        /* "/p1" must not catch "/p12" */
        n = snprintf(path, sizeof path, "/p%d0", i);
        t = al_router_find(r, hosts[i], strlen(hosts[i]), (uint16_t)(443 + i % 2), path, (size_t)n);
        if (t)
            assert_string_not_equal(t->name, names[i]);
    }
    al_router_free(r);
    free(ts);
    free(names);
    free(hosts);
    free(paths);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_find_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_uses_lengths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_authority, setup, teardown),
        cmocka_unit_test(test_empty_and_null),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
