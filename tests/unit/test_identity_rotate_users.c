/* Unit tests of rotate-master-key over the users' 3LO tokens (al_identity_rotate_master_key
 * and al_store_ops.rewrap), on SQLite (a temp dir) and — when AIRLOCK_TEST_PG_DSN holds a
 * connection string to an EMPTY database (test_store_postgres.py creates one and runs
 * this binary) — on PostgreSQL:
 *  - a user token row that does not open with the current key (its tokens sealed for
 *    another user) aborts the rotation: the check value, the key file, every provider
 *    version and every user row are byte for byte unchanged, and no "<key>.new" is left;
 *  - without that row the rotation rewraps the provider's version and every user token
 *    in one transaction: the old key opens nothing any more, the new key (the key file,
 *    al_identity_store_vault) opens each user's own tokens;
 *  - the store's rewrap is all or nothing: a user row that changed since it was read, or
 *    one the rotation did not see, is AL_ERR_AGAIN with nothing written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_identity.h"
#include "identity/al_store.h"
#include "identity/al_user_token.h"
#include "identity/al_vault.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static int pg_mode;

/* PostgreSQL: one database for both tests, so one state dir (its master key) too. */
static int setup(void **state)
{
    (void)state;
    if (!pg_mode || !dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/al-rotusers-XXXXXX");
        if (!mkdtemp(dir))
            return -1;
    }
    char audit[128];
    snprintf(audit, sizeof audit, "%s/audit.log", dir);
    setenv("AIRLOCK_AUDIT_FILE", audit, 1);
    unsetenv("AIRLOCK_MASTER_KEY_FILE");
    al_store_choice c = {AL_STORE_BACKEND_POSTGRES, NULL, "AIRLOCK_TEST_PG_DSN"};
    return al_store_choose(pg_mode ? &c : NULL) == AL_OK ? 0 : -1;
}

static int rm_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    dir[0] = 0;
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    al_store_choose(NULL);
    return pg_mode ? 0 : rm_dir();
}

static void save_user(al_store *s, const al_vault *v, const char *user, const char *access)
{
    al_user_token t = {.access_token = (char *)access,
                       .access_len = strlen(access),
                       .refresh_token = "rt-for-test",
                       .scope = "openid api",
                       .obtained_at = 1800000000,
                       .expires_at = 1800003600};
    snprintf(t.fingerprint, sizeof t.fingerprint, "sha256:%012zx", strlen(user));
    assert_int_equal(al_user_token_save(s, v, "prov", user, &t), AL_OK);
}

static void read_file(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = 0;
    fclose(f);
}

/* Everything a failed rotation must leave as it was. */
typedef struct state_copy {
    char *check;
    char key[200];
    al_store_record rec;
    al_store_user_token u[3];
} state_copy;

static const char *const users[3] = {"https://issuer alice", "https://issuer bob",
                                     "https://issuer mallory"};

static void take(al_store *s, state_copy *c, size_t nusers)
{
    char path[128];
    memset(c, 0, sizeof *c);
    assert_int_equal(s->ops->meta_get(s, "master_key_check", &c->check), AL_OK);
    snprintf(path, sizeof path, "%s/master.key", dir);
    read_file(path, c->key, sizeof c->key);
    assert_int_equal(s->ops->get(s, "p1", &c->rec), AL_OK);
    for (size_t i = 0; i < nusers; i++)
        assert_int_equal(s->ops->user_get(s, "prov", users[i], &c->u[i]), AL_OK);
}

static void same_blob(const unsigned char *a, size_t al, const unsigned char *b, size_t bl)
{
    assert_int_equal(al, bl);
    assert_memory_equal(a, b, al);
}

static void assert_unchanged(al_store *s, const state_copy *before, size_t nusers)
{
    state_copy now;
    take(s, &now, nusers);
    assert_string_equal(now.check, before->check);
    assert_string_equal(now.key, before->key);
    assert_int_equal(now.rec.version_count, before->rec.version_count);
    for (size_t j = 0; j < now.rec.version_count; j++)
        same_blob(now.rec.versions[j].wrapped_key, now.rec.versions[j].wrapped_key_len,
                  before->rec.versions[j].wrapped_key, before->rec.versions[j].wrapped_key_len);
    for (size_t i = 0; i < nusers; i++) {
        same_blob(now.u[i].wrapped_key, now.u[i].wrapped_key_len, before->u[i].wrapped_key,
                  before->u[i].wrapped_key_len);
        same_blob(now.u[i].sealed, now.u[i].sealed_len, before->u[i].sealed,
                  before->u[i].sealed_len);
    }
    char next[128];
    snprintf(next, sizeof next, "%s/master.key.new", dir);
    assert_int_not_equal(access(next, F_OK), 0);
    free(now.check);
    al_store_record_clear(&now.rec);
    for (size_t i = 0; i < 3; i++)
        al_store_user_token_clear(&now.u[i]);
}

static void state_clear(state_copy *c)
{
    free(c->check);
    al_store_record_clear(&c->rec);
    for (size_t i = 0; i < 3; i++)
        al_store_user_token_clear(&c->u[i]);
}

static void rotation_covers_user_tokens(void **state)
{
    (void)state;
    al_identity *id = NULL;
    al_vault *v0 = NULL, *v1 = NULL;
    size_t count = 0;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    al_provider_spec sp = {.name = "p1",
                           .kind = "api_key",
                           .secret = (const unsigned char *)"sk-provider-secret",
                           .secret_len = 18};
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
    al_store *s = al_identity_store(id);
    assert_int_equal(al_identity_store_vault(s, dir, &v0), AL_OK);
    save_user(s, v0, users[0], "at-alice-0123456789");
    save_user(s, v0, users[1], "at-bob-0123456789");

    /* mallory's row holds bob's sealed tokens: it does not open (the user is in the
     * associated data), as a damaged or tampered row would not */
    al_store_user_token moved;
    assert_int_equal(s->ops->user_get(s, "prov", users[1], &moved), AL_OK);
    free(moved.user);
    moved.user = strdup(users[2]);
    assert_int_equal(s->ops->user_put(s, &moved), AL_OK);
    al_store_user_token_clear(&moved);

    state_copy before;
    take(s, &before, 3);
    assert_int_equal(al_identity_rotate_master_key(id, &count), AL_ERR_KEY);
    assert_unchanged(s, &before, 3);
    al_user_token t;
    assert_int_equal(al_user_token_load(s, v0, "prov", users[0], &t), AL_OK);
    al_user_token_clear(&t);
    assert_int_equal(al_identity_vault_matches(s, v0), 1);

    /* the store's rewrap: a user row not given, or one that changed since it was read,
     * writes nothing */
    al_store_user_token rows[3];
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(s->ops->user_get(s, "prov", users[i], &rows[i]), AL_OK);
    uint64_t gen = 0;
    assert_int_equal(s->ops->generation(s, &gen), AL_OK);
    const char *kv[2] = {"master_key_check", "00"};
    rows[0].wrapped_key[0] ^= 1;
    assert_int_equal(s->ops->rewrap(s, NULL, 0, rows, 2, kv, 1, &gen), AL_ERR_AGAIN);
    rows[1].sealed[3] ^= 1; /* not the row the store holds */
    assert_int_equal(s->ops->rewrap(s, NULL, 0, rows, 3, kv, 1, &gen), AL_ERR_AGAIN);
    rows[1].sealed[3] ^= 1;
    /* every row as the store holds it (one wrapped key changed): it commits ... */
    assert_int_equal(s->ops->rewrap(s, NULL, 0, rows, 3, kv, 1, NULL), AL_OK);
    /* ... so put it back as it was */
    rows[0].wrapped_key[0] ^= 1;
    assert_int_equal(s->ops->rewrap(s, NULL, 0, rows, 3,
                                    (const char *const[]){"master_key_check", before.check}, 1,
                                    NULL),
                     AL_OK);
    for (size_t i = 0; i < 3; i++)
        al_store_user_token_clear(&rows[i]);
    assert_unchanged(s, &before, 3);
    state_clear(&before);

    /* without the bad row the rotation goes through: one provider version + two users */
    assert_int_equal(s->ops->user_del(s, "prov", users[2]), AL_OK);
    assert_int_equal(al_identity_rotate_master_key(id, &count), AL_OK);
    assert_int_equal(count, 3);
    assert_int_equal(al_identity_vault_matches(s, v0), 0);
    assert_int_equal(al_user_token_load(s, v0, "prov", users[0], &t), AL_ERR_KEY);
    assert_int_equal(al_identity_store_vault(s, dir, &v1), AL_OK);
    assert_int_equal(al_identity_vault_matches(s, v1), 1);
    assert_int_equal(al_user_token_load(s, v1, "prov", users[0], &t), AL_OK);
    assert_string_equal(t.access_token, "at-alice-0123456789");
    assert_string_equal(t.refresh_token, "rt-for-test");
    al_user_token_clear(&t);
    assert_int_equal(al_user_token_load(s, v1, "prov", users[1], &t), AL_OK);
    assert_string_equal(t.access_token, "at-bob-0123456789");
    al_user_token_clear(&t);
    al_identity_secret *sec = NULL;
    size_t n = 0;
    assert_int_equal(al_identity_load_secrets(id, &sec, &n), AL_OK);
    assert_int_equal(n, 1);
    assert_string_equal((const char *)sec[0].value, "sk-provider-secret");
    al_identity_secrets_free(sec, n);
    al_vault_free(v0);
    al_vault_free(v1);
    al_identity_close(id);
}

/* "<key>.new" from a rotation that committed but was not renamed: serve's vault adopts
 * it (al_identity_store_vault), as ensure_vault does for the CLI. */
static void store_vault_adopts_an_interrupted_rotation(void **state)
{
    (void)state;
    al_identity *id = NULL;
    al_vault *v = NULL;
    char path[128], next[140], saved[200];
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    al_provider_spec sp = {.name = "p1",
                           .kind = "api_key",
                           .secret = (const unsigned char *)"sk-provider-secret",
                           .secret_len = 18};
    if (!pg_mode)
        assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
    snprintf(path, sizeof path, "%s/master.key", dir);
    snprintf(next, sizeof next, "%s.new", path);
    read_file(path, saved, sizeof saved);
    assert_int_equal(al_identity_rotate_master_key(id, NULL), AL_OK);
    /* put the old key back as the key file and the new one beside it */
    assert_int_equal(rename(path, next), 0);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, saved, strlen(saved)), (ssize_t)strlen(saved));
    close(fd);
    al_store *s = al_identity_store(id);
    assert_int_equal(al_identity_store_vault(s, dir, &v), AL_OK);
    assert_int_equal(al_identity_vault_matches(s, v), 1);
    assert_int_not_equal(access(next, F_OK), 0); /* renamed over the key file */
    al_vault_free(v);
    al_identity_close(id);
}

int main(void)
{
    const char *dsn = getenv("AIRLOCK_TEST_PG_DSN");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(rotation_covers_user_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(store_vault_adopts_an_interrupted_rotation, setup,
                                        teardown),
    };
    int failed = cmocka_run_group_tests_name("sqlite", tests, NULL, NULL);
    if (dsn && *dsn) {
        pg_mode = 1;
        failed += cmocka_run_group_tests_name("postgres", tests, NULL, NULL);
        if (dir[0])
            rm_dir();
    }
    return failed;
}
