/* Unit tests of identity/al_user_token and the store's user_tokens table: a user's
 * tokens round-trip sealed (the database file never holds them in clear), two users of
 * one provider keep their own, a row copied onto another user's key does not open,
 * list is metadata only, delete, a refresh rewrite replaces the row; and the token
 * endpoint's authorization_code / refresh_token answers (refresh token kept, missing,
 * invalid_grant, other errors without the client secret). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_user_token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dir[64];
static al_store *st;
static al_vault *vault;

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-usertok-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(al_store_sqlite_open(dir, AL_STORE_CREATE, &st), AL_OK);
    unsigned char key[AL_VAULT_KEY_LEN];
    memset(key, 7, sizeof key);
    assert_int_equal(al_vault_from_key(key, &vault), AL_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    al_store_close(st);
    al_vault_free(vault);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static al_user_token mk(const char *at, const char *rt)
{
    al_user_token t;
    memset(&t, 0, sizeof t);
    t.access_token = (char *)at;
    t.access_len = strlen(at);
    t.refresh_token = (char *)rt;
    t.scope = "openid read";
    t.obtained_at = 1000;
    t.expires_at = 1300;
    snprintf(t.fingerprint, sizeof t.fingerprint, "sha256:%s", "0123456789ab");
    return t;
}

/* 1 when the bytes of s occur in any file of the store's directory. */
static int on_disk(const char *s)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "grep -rqa -- '%s' '%s'", s, dir);
    return system(cmd) == 0;
}

static void test_round_trip_two_users(void **state)
{
    (void)state;
    al_user_token a = mk("AT-alice-secret-1", "RT-alice-secret-1");
    al_user_token b = mk("AT-bob-secret-1", NULL);
    assert_int_equal(al_user_token_save(st, vault, "gh", "iss alice", &a), AL_OK);
    assert_int_equal(al_user_token_save(st, vault, "gh", "iss bob", &b), AL_OK);
    al_user_token got;
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss alice", &got), AL_OK);
    assert_string_equal(got.access_token, "AT-alice-secret-1");
    assert_int_equal(got.access_len, 17);
    assert_string_equal(got.refresh_token, "RT-alice-secret-1");
    assert_string_equal(got.scope, "openid read");
    assert_int_equal(got.expires_at, 1300);
    al_user_token_clear(&got);
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss bob", &got), AL_OK);
    assert_string_equal(got.access_token, "AT-bob-secret-1");
    assert_null(got.refresh_token);
    al_user_token_clear(&got);
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss carol", &got), AL_ERR_NOTFOUND);
    assert_int_equal(al_user_token_load(st, vault, "other", "iss alice", &got), AL_ERR_NOTFOUND);
    /* sealed: the database and its WAL never hold a token in clear */
    assert_false(on_disk("AT-alice-secret"));
    assert_false(on_disk("RT-alice-secret"));
    assert_true(on_disk("iss alice")); /* (the grep works: metadata is in clear) */

    /* a rotated refresh token replaces the row */
    al_user_token a2 = mk("AT-alice-secret-2", "RT-alice-secret-2");
    assert_int_equal(al_user_token_save(st, vault, "gh", "iss alice", &a2), AL_OK);
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss alice", &got), AL_OK);
    assert_string_equal(got.refresh_token, "RT-alice-secret-2");
    al_user_token_clear(&got);

    /* list: metadata only */
    al_store_user_token *l = NULL;
    size_t n = 0;
    assert_int_equal(st->ops->user_list(st, "gh", &l, &n), AL_OK);
    assert_int_equal(n, 2);
    assert_string_equal(l[0].user, "iss alice");
    assert_int_equal(l[0].has_refresh, 1);
    assert_int_equal(l[1].has_refresh, 0);
    assert_null(l[0].sealed);
    assert_null(l[0].wrapped_key);
    assert_string_equal(l[0].fingerprint, "sha256:0123456789ab");
    al_store_user_tokens_free(l, n);
    assert_int_equal(st->ops->user_list(st, "none", &l, &n), AL_OK);
    assert_int_equal(n, 0);
    al_store_user_tokens_free(l, n);

    assert_int_equal(st->ops->user_del(st, "gh", "iss bob"), AL_OK);
    assert_int_equal(st->ops->user_del(st, "gh", "iss bob"), AL_ERR_NOTFOUND);
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss bob", &got), AL_ERR_NOTFOUND);
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss alice", &got), AL_OK);
    al_user_token_clear(&got);
}

static void test_row_moved_to_another_user_does_not_open(void **state)
{
    (void)state;
    al_user_token a = mk("AT-mallory-wants", "RT-x");
    assert_int_equal(al_user_token_save(st, vault, "gh", "iss alice", &a), AL_OK);
    al_store_user_token row;
    assert_int_equal(st->ops->user_get(st, "gh", "iss alice", &row), AL_OK);
    free(row.user);
    row.user = strdup("iss mallory");
    assert_int_equal(st->ops->user_put(st, &row), AL_OK);
    al_store_user_token_clear(&row);
    al_user_token got;
    assert_int_equal(al_user_token_load(st, vault, "gh", "iss mallory", &got), AL_ERR_KEY);
    assert_null(got.access_token);
    /* and another master key opens nothing */
    unsigned char key[AL_VAULT_KEY_LEN];
    memset(key, 8, sizeof key);
    al_vault *other = NULL;
    assert_int_equal(al_vault_from_key(key, &other), AL_OK);
    assert_int_equal(al_user_token_load(st, other, "gh", "iss alice", &got), AL_ERR_KEY);
    al_vault_free(other);
}

static void test_parse_answers(void **state)
{
    (void)state;
    al_token_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.provider = "gh";
    spec.secret = (const unsigned char *)"CLIENT-SECRET";
    spec.secret_len = 13;
    al_user_token t;
    char msg[512];
    const char *ok = "{\"access_token\":\"at1\",\"token_type\":\"Bearer\",\"expires_in\":60,"
                     "\"refresh_token\":\"rt1\",\"scope\":\"openid read\"}";
    assert_int_equal(
        al_user_token_parse(200, ok, strlen(ok), "idp", &spec, 5000, &t, msg, sizeof msg), AL_OK);
    assert_string_equal(t.access_token, "at1");
    assert_string_equal(t.refresh_token, "rt1");
    assert_string_equal(t.scope, "openid read");
    assert_int_equal(t.expires_at, 5060);
    assert_int_equal(strncmp(t.fingerprint, "sha256:", 7), 0);
    al_user_token_clear(&t);
    const char *norefresh = "{\"access_token\":\"at2\",\"token_type\":\"bearer\"}";
    assert_int_equal(al_user_token_parse(200, norefresh, strlen(norefresh), "idp", &spec, 5000, &t,
                                         msg, sizeof msg),
                     AL_OK);
    assert_null(t.refresh_token);
    assert_int_equal(t.expires_at, 0);
    al_user_token_clear(&t);
    const char *ig = "{\"error\":\"invalid_grant\",\"error_description\":\"grant request is "
                     "invalid CLIENT-SECRET\"}";
    assert_int_equal(
        al_user_token_parse(400, ig, strlen(ig), "idp", &spec, 5000, &t, msg, sizeof msg),
        AL_ERR_PERM);
    assert_non_null(strstr(msg, "invalid_grant"));
    assert_null(strstr(msg, "CLIENT-SECRET"));
    const char *ic = "{\"error\":\"invalid_client\"}";
    int rc = al_user_token_parse(401, ic, strlen(ic), "idp", &spec, 5000, &t, msg, sizeof msg);
    assert_true(rc != AL_OK && rc != AL_ERR_PERM);
    assert_non_null(strstr(msg, "invalid_client"));
    const char *bad[] = {"", "[]", "{\"access_token\":\"a b\"}", "{\"access_token\":\"\"}",
                         "{\"access_token\":\"x\",\"token_type\":\"mac\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = al_user_token_parse(200, bad[i], strlen(bad[i]), "idp", &spec, 5000, &t, msg,
                                 sizeof msg);
        assert_true(rc != AL_OK && rc != AL_ERR_PERM);
        assert_null(t.access_token);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_two_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_row_moved_to_another_user_does_not_open, setup,
                                        teardown),
        cmocka_unit_test(test_parse_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
