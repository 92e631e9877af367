/* Unit tests of the SQLite store's user token change log (identity/al_store_sqlite.c,
 * change_drain): what serve's 3LO store thread reads to drop a user token another
 * process (the CLI, another serve) wrote or deleted. Two handles on one database, as
 * serve and the CLI hold: the reader hears each insert, replace and delete the writer
 * committed, in order, nothing before its first drain, and "any" (NULL) when the log
 * was pruned past what it had read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dir[256];

typedef struct heard {
    char names[8][128];
    size_t n;
    int any;
} heard;

static void on_user(void *arg, const char *provider, const char *user)
{
    heard *h = arg;
    if (!provider || !user) {
        h->any++;
        return;
    }
    if (h->n < 8)
        snprintf(h->names[h->n++], sizeof h->names[0], "%s/%s", provider, user);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-stchg-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void put(al_store *s, const char *provider, const char *user, const char *fp)
{
    unsigned char blob[4] = {1, 2, 3, 4};
    al_store_user_token u = {.provider = (char *)provider,
                             .user = (char *)user,
                             .scope = "read",
                             .obtained_at = 1,
                             .expires_at = 2,
                             .updated_at = 1,
                             .wrapped_key = blob,
                             .wrapped_key_len = sizeof blob,
                             .sealed = blob,
                             .sealed_len = sizeof blob};
    snprintf(u.fingerprint, sizeof u.fingerprint, "%s", fp);
    assert_int_equal(s->ops->user_put(s, &u), AL_OK);
}

static int drain(al_store *s, heard *h)
{
    memset(h, 0, sizeof *h);
    return s->ops->change_drain(s, on_user, h);
}

static void test_reader_hears_every_write_and_delete(void **state)
{
    (void)state;
    al_store *w = NULL, *r = NULL;
    heard h;
    assert_int_equal(al_store_sqlite_open(dir, AL_STORE_CREATE, &w), AL_OK);
    assert_int_equal(al_store_sqlite_open(dir, 0, &r), AL_OK);
    assert_non_null(r->ops->change_drain);
    assert_null(r->ops->change_fd); /* polled: al_cred's watcher keeps its generation */
    put(w, "idp", "ISS alice", "sha256:aaaaaaaaaaaa");
    assert_int_equal(drain(r, &h), 0); /* the first drain: only where the log ends */
    assert_int_equal(h.n, 0);
    put(w, "idp", "ISS bob", "sha256:bbbbbbbbbbbb");
    put(w, "idp", "ISS alice", "sha256:cccccccccccc"); /* INSERT OR REPLACE */
    assert_int_equal(w->ops->user_del(w, "idp", "ISS bob"), AL_OK);
    assert_int_equal(w->ops->user_del(w, "idp", "ISS nobody"), AL_ERR_NOTFOUND);
    assert_int_equal(drain(r, &h), 0);
    assert_int_equal(h.n, 3);
    assert_int_equal(h.any, 0);
    assert_string_equal(h.names[0], "idp/ISS bob");
    assert_string_equal(h.names[1], "idp/ISS alice");
    assert_string_equal(h.names[2], "idp/ISS bob");
    assert_int_equal(drain(r, &h), 0); /* nothing new */
    assert_int_equal(h.n, 0);
    /* an UPDATE (a master-key rotation rewraps rows in place) is heard too */
    sqlite3 *db = NULL;
    char path[300];
    snprintf(path, sizeof path, "%s/identity.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(
        sqlite3_exec(db, "UPDATE user_tokens SET sealed = x'05060708'", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(drain(r, &h), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.names[0], "idp/ISS alice");
    /* a reader left behind further than the log keeps (4096 changes) hears "any" */
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < 4100; i++)
        assert_int_equal(sqlite3_exec(db, "UPDATE user_tokens SET updated_at = updated_at + 1",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(drain(r, &h), 0);
    assert_int_equal(h.any, 1);
    /* and reads on from the log's new end in bounded steps */
    for (int i = 0; i < 10 && (h.n || h.any); i++)
        assert_int_equal(drain(r, &h), 0);
    assert_int_equal(h.n + (size_t)h.any, 0);
    put(w, "idp", "ISS carol", "sha256:dddddddddddd");
    assert_int_equal(drain(r, &h), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.names[0], "idp/ISS carol");
    al_store_close(r);
    al_store_close(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reader_hears_every_write_and_delete, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
