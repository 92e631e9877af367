/* Unit tests of identity/al_user_cred (3LO for serve) without the network: the pure
 * parts (scope coverage, the callback's query parameters, hostile spellings), the token
 * cache over a real store (none -> consent; a stored token served; a consent stored
 * elsewhere seen at once; an expired token without refresh token -> none again; a
 * rejected one not served again), and the callback's refusals that store nothing: a
 * forged, replayed, missing, doubled or expired state (the clock is injected), the
 * provider's own error; a link peeked is not consumed, an expired link says so. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_user_cred.h"
#include "identity/al_user_token.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static al_user_cred *uc;
static al_store *st; /* a second handle, as another process would have */
static al_vault *vault;
static int64_t now_s = 1000000;

static int64_t clock_fn(void *arg)
{
    (void)arg;
    return now_s;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-usercred-XXXXXX");
    assert_non_null(mkdtemp(dir));
    al_store *s1;
    al_vault *v1;
    unsigned char key[AL_VAULT_KEY_LEN];
    memset(key, 9, sizeof key);
    assert_int_equal(al_store_sqlite_open(dir, AL_STORE_CREATE, &s1), AL_OK);
    assert_int_equal(al_vault_from_key(key, &v1), AL_OK);
    assert_int_equal(al_store_sqlite_open(dir, 0, &st), AL_OK);
    assert_int_equal(al_vault_from_key(key, &vault), AL_OK);
    assert_int_equal(al_user_cred_new(s1, v1, NULL, NULL, &uc), AL_OK);
    now_s = 1000000;
    al_user_cred_set_clock(uc, clock_fn, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    al_user_cred_free(uc);
    al_store_close(st);
    al_vault_free(vault);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_scope_covers(void **state)
{
    (void)state;
    char *want[] = {"openid", "offline_access", "read", "write"};
    assert_true(al_user_scope_covers("read write", want, 4));
    assert_true(al_user_scope_covers("openid  write offline_access read", want, 4));
    assert_false(al_user_scope_covers("read", want, 4));
    assert_false(al_user_scope_covers("readwrite", want, 4));
    assert_false(al_user_scope_covers("read writer", want, 4));
    assert_false(al_user_scope_covers("", want, 4));
    assert_true(al_user_scope_covers("", want, 2)); /* openid, offline_access only */
    assert_true(al_user_scope_covers(NULL, want, 0));
}

static void test_query_param(void **state)
{
    (void)state;
    char out[64];
    const char *q = "code=a%2Bb+c&state=XYZ&states=no&error";
    assert_int_equal(al_user_query_param(q, strlen(q), "code", out, sizeof out), AL_OK);
    assert_string_equal(out, "a+b c");
    assert_int_equal(al_user_query_param(q, strlen(q), "state", out, sizeof out), AL_OK);
    assert_string_equal(out, "XYZ");
    assert_int_equal(al_user_query_param(q, strlen(q), "error", out, sizeof out), AL_OK);
    assert_string_equal(out, "");
    assert_int_equal(al_user_query_param(q, strlen(q), "stat", out, sizeof out), AL_ERR_NOTFOUND);
    assert_int_equal(al_user_query_param("", 0, "state", out, sizeof out), AL_ERR_NOTFOUND);
    /* hostile spellings: twice, an encoded NUL, a broken escape, too long */
    const char *bad[] = {"state=a&state=a",
                         "state=a%00b",
                         "state=a%zz",
                         "state=a%4",
                         "state=a&state",
                         "state="
                         "0123456789012345678901234567890123456789"
                         "0123456789012345678901234567890123456789"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(out, 'X', sizeof out);
        assert_int_equal(al_user_query_param(bad[i], strlen(bad[i]), "state", out, sizeof out),
                         AL_ERR_INVAL);
        assert_string_equal(out, ""); /* nothing half-decoded is left */
    }
    /* the length given is the end: bytes past it are not read */
    assert_int_equal(al_user_query_param("state=abcdef", 9, "state", out, sizeof out), AL_OK);
    assert_string_equal(out, "abc");
}

/* Loads go to the store thread: the blocking form waits for them. */
static al_user_access *get(const char *user, int *rc_out)
{
    al_user_access *a = NULL;
    char err[256];
    *rc_out = al_user_cred_get_wait(uc, "idp", user, &a, err, sizeof err);
    return *rc_out == AL_OK ? a : NULL;
}

static void save(const char *user, const char *at, const char *rt, int64_t obtained,
                 int64_t expires)
{
    al_user_token t;
    memset(&t, 0, sizeof t);
    t.access_token = (char *)at;
    t.access_len = strlen(at);
    t.refresh_token = (char *)rt;
    t.scope = "read";
    t.obtained_at = obtained;
    t.expires_at = expires;
    snprintf(t.fingerprint, sizeof t.fingerprint, "sha256:%.12s", at);
    assert_int_equal(al_user_token_save(st, vault, "idp", user, &t), AL_OK);
}

static void test_cache_over_the_store(void **state)
{
    (void)state;
    int rc;
    al_user_access *a = get("iss alice", &rc);
    assert_int_equal(rc, AL_OK);
    assert_true(a->none);
    assert_null(a->access_token);
    assert_non_null(a->why);
    al_user_access_release(a);
    /* another process stores alice's tokens: a "none" is never kept, the next get
     * reads the store */
    save("iss alice", "alice-access-0001", "alice-refresh", now_s, now_s + 3600);
    a = get("iss alice", &rc);
    assert_int_equal(rc, AL_OK);
    assert_false(a->none);
    assert_string_equal(a->access_token, "alice-access-0001");
    assert_string_equal(a->user, "iss alice");
    assert_string_equal(a->scope, "read");
    al_user_access_release(a);
    /* bob has none; alice's never answers for him */
    a = get("iss bob", &rc);
    assert_int_equal(rc, AL_OK);
    assert_true(a->none);
    al_user_access_release(a);
    /* an expired token without a refresh token: none again (consent) */
    save("iss carol", "carol-access-0001", NULL, now_s - 7200, now_s - 3600);
    a = get("iss carol", &rc);
    assert_int_equal(rc, AL_OK);
    assert_true(a->none);
    assert_non_null(strstr(a->why, "expired"));
    al_user_access_release(a);
    /* a valid token without refresh token that the upstream rejected: not served again */
    save("iss dave", "dave-access-00001", NULL, now_s, now_s + 3600);
    a = get("iss dave", &rc);
    assert_int_equal(rc, AL_OK);
    assert_false(a->none);
    al_user_cred_rejected(uc, a, 1);
    al_user_access_release(a);
    a = get("iss dave", &rc);
    assert_int_equal(rc, AL_OK);
    assert_true(a->none);
    assert_non_null(strstr(a->why, "refused"));
    al_user_access_release(a);
    /* due for refresh, but the provider is not in any store here: an error, not a token */
    save("iss erin", "erin-access-00001", "erin-refresh", now_s - 3000, now_s + 600);
    a = get("iss erin", &rc);
    assert_null(a);
    assert_int_equal(rc, AL_ERR_DB);
}

/* Another replica refreshes frank's token while this one waits for the store's refresh
 * lock: once it has the lock, this one reads the row again and uses the new token —
 * no second refresh (here there is no provider at all: a refresh would fail). */
typedef struct waiter_arg {
    int rc;
    al_user_access *a;
} waiter_arg;

static void *wait_for_frank(void *arg)
{
    waiter_arg *w = arg;
    char err[256];
    w->rc = al_user_cred_get_wait(uc, "idp", "iss frank", &w->a, err, sizeof err);
    return NULL;
}

static void test_refresh_lock_reads_the_other_replicas_token(void **state)
{
    (void)state;
    /* due for refresh: 3000 s into a one-hour token */
    save("iss frank", "old1-frank-access", "frank-refresh-1", now_s - 3000, now_s + 600);
    al_store_lock *other = NULL;
    assert_non_null(st->ops->refresh_lock);
    assert_int_equal(st->ops->refresh_lock(st, "3lo\nidp\niss frank", 1000, &other), AL_OK);
    waiter_arg w = {0, NULL};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wait_for_frank, &w), 0);
    usleep(200 * 1000); /* the store thread now waits for the lock (or soon will) */
    save("iss frank", "new2-frank-access", "frank-refresh-2", now_s, now_s + 3600);
    al_store_unlock(other);
    pthread_join(th, NULL);
    assert_int_equal(w.rc, AL_OK);
    assert_false(w.a->none);
    assert_string_equal(w.a->access_token, "new2-frank-access");
    al_user_access_release(w.a);
}

static al_consent_binding binding = {
    .user = "iss alice", .provider = "idp", .scope = "openid read", .target = "api"};

/* An authorization request as if the link had been opened: its state. */
static void open_link(char state[AL_CONSENT_ID_LEN + 1])
{
    al_consent *c = al_user_cred_consent(uc);
    char id[AL_CONSENT_ID_LEN + 1];
    uint32_t ttl;
    assert_int_equal(al_user_cred_consent_start(uc, &binding, id, &ttl), AL_OK);
    /* peeking at the link does not consume it */
    al_consent_flow f;
    assert_int_equal(al_consent_link_binding(c, id, &f), AL_OK);
    assert_string_equal(f.user, "iss alice");
    assert_string_equal(f.target, "api");
    assert_string_equal(f.verifier, "");
    al_consent_flow_clear(&f);
    assert_int_equal(al_consent_link_binding(c, id, &f), AL_OK);
    al_consent_flow_clear(&f);
    al_consent_authz az = {.client_id = "cid", .redirect_uri = "http://a/oauth2/callback"};
    char *params = NULL;
    assert_int_equal(al_consent_open(c, id, &az, &params), AL_OK);
    const char *s = strstr(params, "state=");
    assert_non_null(s);
    memcpy(state, s + 6, AL_CONSENT_ID_LEN);
    state[AL_CONSENT_ID_LEN] = 0;
    free(params);
    /* opened: the link is gone */
    assert_int_equal(al_consent_link_binding(c, id, &f), AL_ERR_NOTFOUND);
}

static void done_never(void *arg, al_user_page *p)
{
    (void)arg;
    (void)p;
    fail_msg("no job may start for a refused callback");
}

static int callback(const char *query, al_user_page *pg)
{
    int rc = al_user_cred_callback(uc, query, strlen(query), "http://a/oauth2/callback", pg,
                                   done_never, NULL);
    assert_int_equal(rc, AL_OK); /* answered now: nothing was exchanged */
    return pg->status;
}

static void assert_nothing_stored(void)
{
    al_store_user_token *rows = NULL;
    size_t n = 0;
    assert_int_equal(st->ops->user_list(st, NULL, &rows, &n), AL_OK);
    al_store_user_tokens_free(rows, n);
    assert_int_equal(n, 0);
}

static void test_callback_refusals_store_nothing(void **state)
{
    (void)state;
    al_user_page pg;
    char st1[AL_CONSENT_ID_LEN + 1], q[256];
    open_link(st1);
    /* forged, missing, doubled, cut, extended: 400, the real state survives them */
    const char *forged[] = {"code=c&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "code=c",
                            "code=c&state=", "state=&code=c"};
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        assert_int_equal(callback(forged[i], &pg), 400);
        assert_string_equal(pg.reason, "consent_state_invalid");
        assert_null(strstr(pg.message, "AAAA"));
        al_user_page_clear(&pg);
    }
    snprintf(q, sizeof q, "code=c&state=%s&state=%s", st1, st1);
    assert_int_equal(callback(q, &pg), 400);
    al_user_page_clear(&pg);
    snprintf(q, sizeof q, "code=c&state=%.42s", st1);
    assert_int_equal(callback(q, &pg), 400);
    al_user_page_clear(&pg);
    snprintf(q, sizeof q, "code=c&state=%sA", st1);
    assert_int_equal(callback(q, &pg), 400);
    al_user_page_clear(&pg);
    /* the provider's own error, with the real state: shown (escaping is the page's),
     * the state consumed, nothing stored */
    snprintf(q, sizeof q, "error=access_denied&error_description=the+user+said+no&state=%s", st1);
    assert_int_equal(callback(q, &pg), 400);
    assert_string_equal(pg.reason, "provider_error");
    assert_non_null(strstr(pg.message, "access_denied (the user said no)"));
    assert_null(strstr(pg.message, st1));
    al_user_page_clear(&pg);
    /* replayed: the state is spent */
    snprintf(q, sizeof q, "code=c&state=%s", st1);
    assert_int_equal(callback(q, &pg), 400);
    assert_string_equal(pg.reason, "consent_state_invalid");
    al_user_page_clear(&pg);
    /* a code without a usable provider: refused now, nothing stored */
    char st2[AL_CONSENT_ID_LEN + 1];
    open_link(st2);
    snprintf(q, sizeof q, "state=%s", st2);
    assert_int_equal(callback(q, &pg), 400);
    assert_string_equal(pg.reason, "consent_code_missing");
    al_user_page_clear(&pg);
    /* expired: 10 minutes and a second later */
    char st3[AL_CONSENT_ID_LEN + 1];
    open_link(st3);
    now_s += AL_CONSENT_TTL_S + 1;
    snprintf(q, sizeof q, "code=c&state=%s", st3);
    assert_int_equal(callback(q, &pg), 400);
    assert_string_equal(pg.reason, "consent_state_expired");
    al_user_page_clear(&pg);
    assert_nothing_stored();
}

static void test_authorize_refusals(void **state)
{
    (void)state;
    al_user_page pg;
    al_table t;
    memset(&t, 0, sizeof t);
    char id[AL_CONSENT_ID_LEN + 1];
    uint32_t ttl;
    /* unknown, empty, and expired links: answered now, no job */
    assert_int_equal(al_user_cred_authorize(uc, &t, "B", "http://a/cb", &pg, done_never, NULL),
                     AL_OK);
    assert_int_equal(pg.status, 404);
    al_user_page_clear(&pg);
    assert_int_equal(al_user_cred_consent_start(uc, &binding, id, &ttl), AL_OK);
    now_s += AL_CONSENT_TTL_S;
    assert_int_equal(al_user_cred_authorize(uc, &t, id, "http://a/cb", &pg, done_never, NULL),
                     AL_OK);
    assert_int_equal(pg.status, 410);
    assert_string_equal(pg.reason, "consent_link_expired");
    al_user_page_clear(&pg);
    /* a live link whose provider is not there (no store snapshot): 502, and the link is
     * kept for when it is */
    assert_int_equal(al_user_cred_consent_start(uc, &binding, id, &ttl), AL_OK);
    assert_int_equal(al_user_cred_authorize(uc, &t, id, "http://a/cb", &pg, done_never, NULL),
                     AL_OK);
    assert_int_equal(pg.status, 502);
    al_user_page_clear(&pg);
    al_consent_flow f;
    assert_int_equal(al_consent_link_binding(al_user_cred_consent(uc), id, &f), AL_OK);
    al_consent_flow_clear(&f);
}

static void test_link_reused_until_opened(void **state)
{
    (void)state;
    char a[AL_CONSENT_ID_LEN + 1], b[AL_CONSENT_ID_LEN + 1], c[AL_CONSENT_ID_LEN + 1];
    uint32_t ttl = 0;
    assert_int_equal(al_user_cred_consent_start(uc, &binding, a, &ttl), AL_OK);
    assert_int_equal(ttl, AL_CONSENT_TTL_S);
    now_s += 100;
    /* the agent retries before its user consented: the same link, with what is left */
    assert_int_equal(al_user_cred_consent_start(uc, &binding, b, &ttl), AL_OK);
    assert_string_equal(a, b);
    assert_int_equal(ttl, AL_CONSENT_TTL_S - 100);
    /* another user, scope or target: another link */
    al_consent_binding other = binding;
    other.user = "iss bob";
    assert_int_equal(al_user_cred_consent_start(uc, &other, c, &ttl), AL_OK);
    assert_string_not_equal(a, c);
    other = binding;
    other.scope = "openid read write";
    assert_int_equal(al_user_cred_consent_start(uc, &other, c, &ttl), AL_OK);
    assert_string_not_equal(a, c);
    /* less than a minute left: a fresh link rather than one about to die */
    now_s += AL_CONSENT_TTL_S - 100 - 59;
    assert_int_equal(al_user_cred_consent_start(uc, &binding, b, &ttl), AL_OK);
    assert_string_not_equal(a, b);
    assert_int_equal(ttl, AL_CONSENT_TTL_S);
    /* once opened, a link is never handed out again */
    al_consent_authz az = {.client_id = "cid", .redirect_uri = "http://a/oauth2/callback"};
    char *params = NULL;
    assert_int_equal(al_consent_open(al_user_cred_consent(uc), b, &az, &params), AL_OK);
    free(params);
    assert_int_equal(al_user_cred_consent_start(uc, &binding, c, &ttl), AL_OK);
    assert_string_not_equal(b, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scope_covers),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test_setup_teardown(test_cache_over_the_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_refusals_store_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorize_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_reused_until_opened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_lock_reads_the_other_replicas_token, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
