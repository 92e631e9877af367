/* Unit tests of identity/al_consent: 3LO consent links and authorization-request state
 * with an injected clock — PKCE S256 against RFC 7636's own example, a link opens once,
 * a state finishes once (replay), forged and truncated states, expiry of links and
 * states, the binding carried through, hostile binding fields, the table bound, the
 * protocol parameters a custom_parameters entry cannot override, and the token forms.
 * App binding mode: a session completed by its own user hands out the tokens once; by
 * another user it is refused, consumed and nothing is handed out; expiry and forged ids;
 * the vendor table's refresh-token quirks (Google, Microsoft, Salesforce, generic OIDC) merged into
 * the authorization request without overriding the protocol's parameters or the table's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_consent.h"
#include "identity/al_identity.h"

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

static const al_consent_binding alice = {.user = "https://idp.example alice",
                                         .provider = "github",
                                         .scope = "openid repo",
                                         .target = "gh"};
static const al_consent_authz authz = {.client_id = "client-1",
                                       .redirect_uri = "https://airlock.example/oauth2/callback"};

/* The value of parameter `name` in a form (not decoded), copied into out: 1, or 0 when
 * absent, -1 when too long or present twice. */
static int param(const char *form, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    int found = 0;
    for (const char *p = form; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1, *e = strchr(v, '&');
            size_t l = e ? (size_t)(e - v) : strlen(v);
            if (l >= cap || found)
                return -1;
            memcpy(out, v, l);
            out[l] = 0;
            found = 1;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return found;
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

/* app binding mode: alice's flow returns to the application */
static const al_consent_binding alice_app = {.user = "https://idp.example alice",
                                             .provider = "google",
                                             .scope = "openid calendar",
                                             .target = "cal",
                                             .return_url = "https://app.example/done"};

/* Runs start + open + finish for b: the consumed flow in *f. */
static void flow(al_consent *c, const al_consent_binding *b, al_consent_flow *f)
{
    char id[AL_CONSENT_ID_LEN + 1], state[128];
    char *form = NULL;
    assert_int_equal(al_consent_start(c, b, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &authz, &form), AL_OK);
    assert_int_equal(param(form, "state", state, sizeof state), 1);
    free(form);
    assert_int_equal(al_consent_finish(c, state, f), AL_OK);
}

static void tokens(al_user_token *t, const char *access, const char *refresh)
{
    memset(t, 0, sizeof *t);
    t->access_token = strdup(access);
    t->access_len = strlen(access);
    t->refresh_token = refresh ? strdup(refresh) : NULL;
    t->scope = strdup("openid calendar");
}

static void test_session_completed_by_its_user(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    al_consent_flow f;
    al_user_token t;
    char sid[AL_CONSENT_ID_LEN + 1];
    flow(c, &alice_app, &f);
    assert_string_equal(f.return_url, "https://app.example/done");
    tokens(&t, "AT-alice", "RT-alice");
    assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_OK);
    /* moved, not copied: nothing left with the caller */
    assert_null(f.user);
    assert_null(t.access_token);
    assert_null(t.refresh_token);
    assert_int_equal(strlen(sid), AL_CONSENT_ID_LEN);
    assert_int_equal(al_consent_pending(c), 1);

    /* a forged or truncated session id, or a state/link id, finds nothing */
    char forged[AL_CONSENT_ID_LEN + 1];
    memcpy(forged, sid, sizeof forged);
    forged[5] = forged[5] == 'A' ? 'B' : 'A';
    al_consent_flow g;
    al_user_token u;
    assert_int_equal(al_consent_complete(c, forged, alice_app.user, &g, &u), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_complete(c, "short", alice_app.user, &g, &u), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_complete(c, NULL, alice_app.user, &g, &u), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_finish(c, sid, &g), AL_ERR_NOTFOUND); /* not a state */

    assert_int_equal(al_consent_complete(c, sid, alice_app.user, &g, &u), AL_OK);
    assert_string_equal(g.user, alice_app.user);
    assert_string_equal(g.provider, "google");
    assert_string_equal(g.target, "cal");
    assert_string_equal(u.access_token, "AT-alice");
    assert_string_equal(u.refresh_token, "RT-alice");
    al_consent_flow_clear(&g);
    al_user_token_clear(&u);
    /* once */
    assert_int_equal(al_consent_complete(c, sid, alice_app.user, &g, &u), AL_ERR_NOTFOUND);
    assert_int_equal(al_consent_pending(c), 0);
    al_consent_free(c);
}

static void test_session_completed_by_another_user_is_refused(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    al_consent_flow f, g;
    al_user_token t, u;
    char sid[AL_CONSENT_ID_LEN + 1];
    const char *others[] = {"https://idp.example bob",
                            "https://idp.example alice ",
                            "https://idp.example Alice",
                            "https://idp.example",
                            "",
                            NULL};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        flow(c, &alice_app, &f);
        tokens(&t, "AT-alice", "RT-alice");
        assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_OK);
        assert_int_equal(al_consent_complete(c, sid, others[i], &g, &u), AL_ERR_PERM);
        assert_null(g.user);
        assert_null(u.access_token);
        /* consumed: not even the right user gets the tokens afterwards */
        assert_int_equal(al_consent_complete(c, sid, alice_app.user, &g, &u), AL_ERR_NOTFOUND);
        assert_null(u.access_token);
        assert_int_equal(al_consent_pending(c), 0);
    }
    al_consent_free(c);
}

static void test_session_expiry_and_bound(void **st)
{
    (void)st;
    al_consent *c = mk(2);
    al_consent_flow f, g;
    al_user_token t, u;
    char sid[AL_CONSENT_ID_LEN + 1], sid2[AL_CONSENT_ID_LEN + 1];
    flow(c, &alice_app, &f);
    tokens(&t, "AT", NULL);
    assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_OK);
    fake_now += AL_CONSENT_SESSION_TTL_S;
    assert_int_equal(al_consent_complete(c, sid, alice_app.user, &g, &u), AL_ERR_TIMEOUT);
    assert_int_equal(al_consent_complete(c, sid, alice_app.user, &g, &u), AL_ERR_NOTFOUND);

    /* a full table refuses to hold more, and wipes what it was given */
    flow(c, &alice_app, &f);
    tokens(&t, "AT1", NULL);
    assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_OK);
    flow(c, &alice_app, &f);
    tokens(&t, "AT2", NULL);
    assert_int_equal(al_consent_hold(c, &f, &t, sid2), AL_OK);
    char id[AL_CONSENT_ID_LEN + 1];
    assert_int_equal(al_consent_start(c, &alice_app, id), AL_ERR_AGAIN);
    memset(&f, 0, sizeof f);
    f.user = strdup("u");
    f.provider = strdup("p");
    f.scope = strdup("");
    f.target = strdup("t");
    tokens(&t, "AT3", NULL);
    assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_ERR_AGAIN);
    assert_null(f.user);
    assert_null(t.access_token);
    al_consent_free(c); /* frees the held tokens (ASan: no leak) */
}

static void test_hold_needs_tokens(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    al_consent_flow f;
    al_user_token t;
    char sid[AL_CONSENT_ID_LEN + 1];
    flow(c, &alice_app, &f);
    memset(&t, 0, sizeof t);
    assert_int_equal(al_consent_hold(c, &f, &t, sid), AL_ERR_INVAL);
    assert_null(f.user);
    assert_int_equal(al_consent_pending(c), 0);
    al_consent_free(c);
}

/* The link's opener may choose another (allow-listed by the caller) return URL of an
 * app binding; a link binding never gains one. */
static void test_return_url_chosen_at_open(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1], state[128];
    al_consent_authz a = authz;
    a.return_url = "https://app.example/other";
    char *form = NULL;
    al_consent_flow f;
    assert_int_equal(al_consent_start(c, &alice_app, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_OK);
    assert_int_equal(param(form, "state", state, sizeof state), 1);
    free(form);
    assert_int_equal(al_consent_finish(c, state, &f), AL_OK);
    assert_string_equal(f.return_url, "https://app.example/other");
    al_consent_flow_clear(&f);
    assert_int_equal(al_consent_start(c, &alice, id), AL_OK); /* link mode */
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_OK);
    assert_int_equal(param(form, "state", state, sizeof state), 1);
    free(form);
    assert_int_equal(al_consent_finish(c, state, &f), AL_OK);
    assert_null(f.return_url);
    al_consent_flow_clear(&f);
    /* a hostile choice is refused and the link is gone */
    a.return_url = "https://app.example/\r\nx";
    assert_int_equal(al_consent_start(c, &alice_app, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_ERR_INVAL);
    assert_null(form);
    assert_int_equal(al_consent_pending(c), 0);
    al_consent_free(c);
}

static void test_return_url_in_binding(void **st)
{
    (void)st;
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1];
    al_consent_binding b = alice_app;
    b.return_url = "https://app.example/\r\nx";
    assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
    b.return_url = "";
    assert_int_equal(al_consent_start(c, &b, id), AL_ERR_INVAL);
    al_consent_flow f;
    b.return_url = NULL; /* link mode */
    flow(c, &b, &f);
    assert_null(f.return_url);
    al_consent_flow_clear(&f);
    al_consent_free(c);
}

/* Opens a link for scope with the vendor's quirks (and extra): the authorization form. */
static char *open_with(const char *vendor, const char *scope, const al_kv *extra, size_t n)
{
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1];
    al_consent_binding b = alice_app;
    b.scope = scope;
    al_consent_authz a = authz;
    a.quirks = al_identity_vendor_quirks(vendor);
    a.extra = extra;
    a.extra_count = n;
    char *form = NULL;
    assert_int_equal(al_consent_start(c, &b, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_OK);
    al_consent_free(c);
    return form;
}

static void test_vendor_quirks(void **st)
{
    (void)st;
    char v[256];
    struct {
        const char *vendor, *scope, *want_scope, *access_type, *prompt;
    } cases[] = {
        /* Google: parameters, no extra scope */
        {"GoogleOauth2", "openid https://www.googleapis.com/auth/calendar",
         "openid%20https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcalendar", "offline", "consent"},
        /* Microsoft: offline_access added, once */
        {"MicrosoftOauth2", "User.Read", "User.Read%20offline_access", NULL, NULL},
        {"MicrosoftOauth2", "offline_access User.Read", "offline_access%20User.Read", NULL, NULL},
        {"MicrosoftOauth2", "", "offline_access", NULL, NULL},
        /* Salesforce: refresh_token scope */
        {"SalesforceOauth2", "api", "api%20refresh_token", NULL, NULL},
        /* generic OpenID Connect: offline_access + prompt=consent, OpenID requests only */
        {NULL, "openid read", "openid%20read%20offline_access", NULL, "consent"},
        {"CustomOauth2", "openid", "openid%20offline_access", NULL, "consent"},
        {"CustomOauth2", "read write", "read%20write", NULL, NULL},
        {"CustomOauth2", "openidx read", "openidx%20read", NULL, NULL},
        /* GitHub, Slack: nothing */
        {"GithubOauth2", "repo", "repo", NULL, NULL},
        {"SlackOauth2", "chat:write", "chat%3Awrite", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *form = open_with(cases[i].vendor, cases[i].scope, NULL, 0);
        if (*cases[i].want_scope) {
            assert_int_equal(param(form, "scope", v, sizeof v), 1);
            if (strcmp(v, cases[i].want_scope) != 0)
                fail_msg("%s %s: scope %s", cases[i].vendor ? cases[i].vendor : "(none)",
                         cases[i].scope, v);
        }
        const char *names[] = {"access_type", "prompt"};
        const char *want[] = {cases[i].access_type, cases[i].prompt};
        for (int k = 0; k < 2; k++) {
            int got = param(form, names[k], v, sizeof v);
            if (want[k] ? (got != 1 || strcmp(v, want[k]) != 0) : got != 0)
                fail_msg("%s: %s %s", cases[i].vendor ? cases[i].vendor : "(none)", names[k],
                         got == 1 ? v : "(absent)");
        }
        /* the protocol's own parameters once each */
        const char *own[] = {"response_type", "client_id",      "redirect_uri",
                             "state",         "code_challenge", "code_challenge_method"};
        for (size_t k = 0; k < sizeof own / sizeof own[0]; k++)
            assert_int_equal(param(form, own[k], v, sizeof v), 1);
        free(form);
    }
    assert_null(al_identity_vendor_quirks("NoSuchVendor"));

    /* the table's custom_parameters win over a quirk, and neither overrides the protocol */
    al_kv extra[] = {{"prompt", "select_account"}, {"state", "attacker"}};
    char *form = open_with("GoogleOauth2", "openid", extra, 2);
    assert_int_equal(param(form, "prompt", v, sizeof v), 1);
    assert_string_equal(v, "select_account");
    assert_int_equal(param(form, "access_type", v, sizeof v), 1);
    assert_string_equal(v, "offline");
    assert_null(strstr(form, "attacker"));
    free(form);

    /* a quirk row cannot override the protocol's parameters either */
    al_consent_quirks evil = {NULL, "x", "state=evil&redirect_uri=evil&=novalue&noequals&ok=1"};
    al_consent *c = mk(0);
    char id[AL_CONSENT_ID_LEN + 1];
    al_consent_authz a = authz;
    a.quirks = &evil;
    assert_int_equal(al_consent_start(c, &alice_app, id), AL_OK);
    assert_int_equal(al_consent_open(c, id, &a, &form), AL_OK);
    assert_null(strstr(form, "evil"));
    assert_null(strstr(form, "noequals"));
    assert_null(strstr(form, "&=novalue"));
    assert_int_equal(param(form, "ok", v, sizeof v), 1);
    free(form);
    al_consent_free(c);
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
        cmocka_unit_test(test_session_completed_by_its_user),
        cmocka_unit_test(test_session_completed_by_another_user_is_refused),
        cmocka_unit_test(test_session_expiry_and_bound),
        cmocka_unit_test(test_hold_needs_tokens),
        cmocka_unit_test(test_return_url_in_binding),
        cmocka_unit_test(test_return_url_chosen_at_open),
        cmocka_unit_test(test_vendor_quirks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
