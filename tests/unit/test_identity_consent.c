/* Unit tests of identity/al_consent: 3LO consent links and authorization-request state
 * with an injected clock — PKCE S256 against RFC 7636's own example, a link opens once,
 * a state finishes once (replay), forged and truncated states, expiry of links and
 * states, the binding carried through, hostile binding fields, the table bound, the
 * protocol parameters a custom_parameters entry cannot override, and the token forms. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_consent.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t fake_now = 1700000000;
static int64_t clock_fn(void *arg)
{
    (void)arg;
    return fake_now;
}

static al_consent *mk(size_t cap)
{
    al_consent *c = NULL;
    assert_int_equal(al_consent_new(cap, &c), AL_OK);
    al_consent_set_clock(c, clock_fn, NULL);
    return c;
}

static const al_consent_binding alice = {"https://idp.example alice", "github", "openid repo",
                                         "gh"};
static const al_consent_authz authz = {"client-1", "https://airlock.example/oauth2/callback", NULL,
                                       0};

/* The value of parameter `name` in a form (not decoded), copied into out. */
static int param(const char *form, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = form; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1, *e = strchr(v, '&');
            size_t l = e ? (size_t)(e - v) : strlen(v);
            if (l >= cap)
                return 0;
            memcpy(out, v, l);
            out[l] = 0;
            return 1;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return 0;
}

static void test_pkce_rfc7636_example(void **st)
{
    (void)st;
    char out[AL_CONSENT_ID_LEN + 1];
    /* RFC 7636 appendix B */
    assert_int_equal(al_consent_pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", out),
                     AL_OK);
    assert_string_equal(out, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

static void test_link_opens_once_and_state_finishes_once(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1];
    assert_int_equal(al_consent_start(c, &alice, id), AL_OK);
    assert_int_equal(strlen(id), AL_CONSENT_ID_LEN);
    assert_int_equal(al_consent_pending(c), 1);
    char *form = NULL;
    assert_int_equal(al_consent_open(c, id, &authz, &form), AL_OK);
    char state[128], chal[128], v[256];
    assert_true(param(form, "state", state, sizeof state));
    assert_true(param(form, "code_challenge", chal, sizeof chal));
    assert_true(param(form, "code_challenge_method", v, sizeof v));
    assert_string_equal(v, "S256");
    assert_true(param(form, "response_type", v, sizeof v));
    assert_string_equal(v, "code");
    assert_true(param(form, "redirect_uri", v, sizeof v));
    assert_string_equal(v, "https%3A%2F%2Fairlock.example%2Foauth2%2Fcallback");
    assert_true(param(form, "scope", v, sizeof v));
    assert_string_equal(v, "openid%20repo");
    assert_true(param(form, "nonce", v, sizeof v)); /* openid asked: a nonce */
    assert_string_not_equal(state, id);             /* the link id never goes to the provider */
    assert_null(strstr(form, id));
    /* the link is consumed */
    char *again = NULL;
    assert_int_equal(al_consent_open(c, id, &authz, &again), AL_ERR_NOTFOUND);
    assert_null(again);
    /* a state is not a link, a link id is not a state */
    assert_int_equal(al_consent_open(c, state, &authz, &again), AL_ERR_NOTFOUND);
    al_consent_flow f;
    assert_int_equal(al_consent_finish(c, id, &f), AL_ERR_NOTFOUND);
    assert_null(f.user);

    assert_int_equal(al_consent_finish(c, state, &f), AL_OK);
    assert_string_equal(f.user, alice.user);
    assert_string_equal(f.provider, "github");
    assert_string_equal(f.scope, "openid repo");
    assert_string_equal(f.target, "gh");
    char s256[AL_CONSENT_ID_LEN + 1];
    assert_int_equal(al_consent_pkce_s256(f.verifier, s256), AL_OK);
    assert_string_equal(s256, chal); /* the verifier matches the challenge sent */
    assert_null(strstr(form, f.verifier));
    al_consent_flow_clear(&f);
    /* replay */
    assert_int_equal(al_consent_finish(c, state, &f), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_pending(c), 0);
    free(form);
    al_consent_free(c);
}

static void test_forged_states_rejected(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1], state[128];
    char *form = NULL;
    assert_int_equal(al_consent_start(c, &alice, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &authz, &form), AL_OK);
    assert_true(param(form, "state", state, sizeof state));
    char forged[160];
    al_consent_flow f;
    /* one character changed, at the start, the middle, the end */
    const size_t pos[] = {0, AL_CONSENT_ID_LEN / 2, AL_CONSENT_ID_LEN - 1};
    for (size_t i = 0; i < 3; i++) {
        strcpy(forged, state);
        forged[pos[i]] = forged[pos[i]] == 'A' ? 'B' : 'A';
        assert_int_equal(al_consent_finish(c, forged, &f), AL_ERR_NOTFOUND);
    }
    /* a prefix, an extension, empty, NULL, a NUL inside */
    strcpy(forged, state);
    forged[AL_CONSENT_ID_LEN - 1] = 0;
    assert_int_equal(al_consent_finish(c, forged, &f), AL_ERR_NOTFOUND);
    snprintf(forged, sizeof forged, "%sA", state);
    assert_int_equal(al_consent_finish(c, forged, &f), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_finish(c, "", &f), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_finish(c, NULL, &f), AL_ERR_NOTFOUND);
    /* the real one still works after all the guesses */
    assert_int_equal(al_consent_finish(c, state, &f), AL_OK);
    al_consent_flow_clear(&f);
    free(form);
    al_consent_free(c);
}

static void test_expiry(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1], id2[AL_CONSENT_ID_LEN + 1], state[128];
    char *form = NULL;
    assert_int_equal(al_consent_start(c, &alice, id), AL_OK);
    fake_now += AL_CONSENT_TTL_S; /* exactly 10 minutes: too late */
    assert_int_equal(al_consent_pending(c), 0);
    assert_int_equal(al_consent_open(c, id, &authz, &form), AL_ERR_TIMEOUT);
    assert_int_equal(al_consent_open(c, id, &authz, &form), AL_ERR_NOTFOUND); /* gone */
    /* a link opened just in time gives its state 10 minutes of its own */
    assert_int_equal(al_consent_start(c, &alice, id2), AL_OK);
    fake_now += AL_CONSENT_TTL_S - 1;
    assert_int_equal(al_consent_open(c, id2, &authz, &form), AL_OK);
    assert_true(param(form, "state", state, sizeof state));
    fake_now += AL_CONSENT_TTL_S;
    al_consent_flow f;
    assert_int_equal(al_consent_finish(c, state, &f), AL_ERR_TIMEOUT);
    assert_null(f.user);
    assert_int_equal(al_consent_finish(c, state, &f), AL_ERR_NOTFOUND);
    free(form);
    al_consent_free(c);
}

static void test_hostile_binding_and_bound(void **st)
{
    (void)st;
    al_consent *c = mk(3);
    char id[AL_CONSENT_ID_LEN + 1];
    const char *bad[] = {"", "a\r\nb", "a\nb", "tab\there", "del\x7f"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        al_consent_binding b = alice;
        b.user = bad[i];
        assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
        b = alice;
        b.provider = bad[i];
        assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
    }
    char big[2000];
    memset(big, 'u', sizeof big - 1);
    big[sizeof big - 1] = 0;
    al_consent_binding b = alice;
    b.user = big;
    assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
    b.user = NULL;
    assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
    /* an empty scope is allowed (the provider's default) */
    b = alice;
    b.scope = "";
    for (int i = 0; i < 3; i++)
        assert_int_equal(al_consent_start(c, &b, id), AL_OK);
    /* full: refused, the pending ones are kept */
    assert_int_equal(al_consent_start(c, &alice, id), AL_ERR_AGAIN);
    assert_int_equal(al_consent_pending(c), 3);
    fake_now += AL_CONSENT_TTL_S; /* expired ones make room */
    assert_int_equal(al_consent_start(c, &alice, id), AL_OK);
    assert_int_equal(al_consent_pending(c), 1);
    al_consent_free(c);
}

static void test_extra_parameters_and_no_nonce(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1], v[256];
    al_consent_binding b = alice;
    b.scope = "read openidx";
    al_kv extra[] = {{"access_type", "offline"},
                     {"prompt", "consent"},
                     {"state", "attacker"},
                     {"code_challenge_method", "plain"},
                     {"redirect_uri", "https://evil.example/"}};
    al_consent_authz a = authz;
    a.extra = extra;
    a.extra_count = sizeof extra / sizeof extra[0];
    char *form = NULL;
    assert_int_equal(al_consent_start(c, &b, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_OK);
    assert_true(param(form, "access_type", v, sizeof v));
    assert_string_equal(v, "offline");
    assert_true(param(form, "prompt", v, sizeof v));
    assert_string_equal(v, "consent");
    assert_null(strstr(form, "attacker"));
    assert_null(strstr(form, "plain"));
    assert_null(strstr(form, "evil"));
    assert_false(param(form, "nonce", v, sizeof v)); /* "openidx" is not openid */
    char *url = al_consent_url("https://idp.example/authorize", form);
    assert_non_null(url);
    assert_int_equal(strncmp(url, "https://idp.example/authorize?response_type=code&", 49), 0);
    free(url);
    url = al_consent_url("https://idp.example/authorize?tenant=x", "a=b");
    assert_string_equal(url, "https://idp.example/authorize?tenant=x&a=b");
    free(url);
    free(form);
    al_consent_free(c);
}

static void test_token_forms(void **st)
{
    (void)st;
    char *f = al_consent_code_form("c&d=e", "https://a.example/cb", "ver");
    assert_string_equal(f, "grant_type=authorization_code&code=c%26d%3De&redirect_uri=https%3A%2F%"
                           "2Fa.example%2Fcb&code_verifier=ver");
    free(f);
    assert_null(al_consent_code_form("", "https://a.example/cb", "ver"));
    assert_null(al_consent_code_form("c", "https://a.example/cb", ""));
    f = al_consent_refresh_form("rt+/=", "read write");
    assert_string_equal(f, "grant_type=refresh_token&refresh_token=rt%2B%2F%3D&scope=read%20write");
    free(f);
    f = al_consent_refresh_form("rt", NULL);
    assert_string_equal(f, "grant_type=refresh_token&refresh_token=rt");
    free(f);
    assert_null(al_consent_refresh_form("", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pkce_rfc7636_example),
        cmocka_unit_test(test_link_opens_once_and_state_finishes_once),
        cmocka_unit_test(test_forged_states_rejected),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_hostile_binding_and_bound),
        cmocka_unit_test(test_extra_parameters_and_no_nonce),
        cmocka_unit_test(test_token_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
