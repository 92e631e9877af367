/* al_store_sqlite: the embedded SQLite backend of al_store (identity/al_store.h).
 *
 * Schema: providers (one row per provider), versions (one row per secret version,
 * blobs sealed by al_vault), meta (key/value: the change counter "generation" and
 * the master-key check). WAL mode lets `serve` read while the CLI writes; the busy
 * timeout makes concurrent writers wait instead of failing. Every write is one
 * BEGIN IMMEDIATE ... COMMIT, so SIGKILL at any point leaves the old or the new
 * state; SQLite's journal is the only recovery mechanism we need.
 *
 * Wiped versions keep their row with NULL blobs: the history is metadata only.
 * secure_delete is on so freed pages holding old ciphertexts are zeroed. */
#include "al_store.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct al_store_sqlite {
    al_store base;
    sqlite3 *db;
    char lock_path[4200]; /* <state_dir>/identity.db.locks: refresh locks */
    int64_t changes_seen; /* user_token_changes: the last seq change_drain reported */
    int changes_started;
} al_store_sqlite;

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS providers ("
    " name TEXT PRIMARY KEY, kind TEXT NOT NULL, environment TEXT NOT NULL,"
    " description TEXT, tags TEXT, config TEXT, current_version INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS versions ("
    " provider TEXT NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL, wiped INTEGER NOT NULL, fingerprint TEXT NOT NULL,"
    " wrapped_key BLOB, sealed BLOB, PRIMARY KEY (provider, version));"
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS user_tokens ("
    " provider TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,"
    " obtained_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    " has_refresh INTEGER NOT NULL, fingerprint TEXT NOT NULL, wrapped_key BLOB NOT NULL,"
    " sealed BLOB NOT NULL, PRIMARY KEY (provider, user));"
    "INSERT OR IGNORE INTO meta (k, v) VALUES ('generation', '0');"
    /* Every user token written or deleted, by any process, in the writer's own
     * statement (triggers): serve's store thread reads what is new every 100 ms
     * (change_drain) and drops its cached copy, so a delete-user-token reaches it within
     * a second, as PostgreSQL's NOTIFY does. The last USER_CHANGES_KEEP stay. */
    "CREATE TABLE IF NOT EXISTS user_token_changes ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, provider TEXT NOT NULL, user TEXT NOT NULL);"
    "CREATE TRIGGER IF NOT EXISTS user_tokens_changed_ins AFTER INSERT ON user_tokens BEGIN"
    " INSERT INTO user_token_changes (provider, user) VALUES (NEW.provider, NEW.user);"
    " DELETE FROM user_token_changes WHERE seq <= last_insert_rowid() - 4096; END;"
    "CREATE TRIGGER IF NOT EXISTS user_tokens_changed_upd AFTER UPDATE ON user_tokens BEGIN"
    " INSERT INTO user_token_changes (provider, user) VALUES (NEW.provider, NEW.user);"
    " DELETE FROM user_token_changes WHERE seq <= last_insert_rowid() - 4096; END;"
    "CREATE TRIGGER IF NOT EXISTS user_tokens_changed_del AFTER DELETE ON user_tokens BEGIN"
    " INSERT INTO user_token_changes (provider, user) VALUES (OLD.provider, OLD.user);"
    " DELETE FROM user_token_changes WHERE seq <= last_insert_rowid() - 4096; END;";

static char *dup_col(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? strdup((const char *)t) : NULL;
}

static unsigned char *dup_blob(sqlite3_stmt *st, int col, size_t *len)
{
    const void *b = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    *len = 0;
    if (!b || n <= 0)
        return NULL;
    unsigned char *p = malloc((size_t)n);
    if (!p)
        return NULL;
    memcpy(p, b, (size_t)n);
    *len = (size_t)n;
    return p;
}

void al_store_record_clear(al_store_record *r)
{
    if (!r)
        return;
    free(r->name);
    free(r->kind);
    free(r->environment);
    free(r->description);
    free(r->tags_json);
    free(r->config_json);
    for (size_t i = 0; i < r->version_count; i++) {
        al_store_version *v = &r->versions[i];
        if (v->wrapped_key)
            OPENSSL_cleanse(v->wrapped_key, v->wrapped_key_len);
        if (v->sealed)
            OPENSSL_cleanse(v->sealed, v->sealed_len);
        free(v->wrapped_key);
        free(v->sealed);
    }
    free(r->versions);
    memset(r, 0, sizeof *r);
}

void al_store_records_free(al_store_record *recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        al_store_record_clear(&recs[i]);
    free(recs);
}

static int db_err(al_store_sqlite *s, const char *what)
{
    al_log(AL_LOG_ERROR, "identity.store", "%s: %s", what, sqlite3_errmsg(s->db));
    return AL_ERR_DB;
}

static int load_versions(al_store_sqlite *s, al_store_record *r)
{
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT version, created_at, expires_at, wiped, fingerprint, "
                           "wrapped_key, sealed FROM versions WHERE provider = ? ORDER BY version",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare versions");
    sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        al_store_version *nv = realloc(r->versions, (r->version_count + 1) * sizeof *nv);
        if (!nv) {
            rc = AL_ERR_NOMEM;
            goto out;
        }
        r->versions = nv;
        al_store_version *v = &nv[r->version_count++];
        memset(v, 0, sizeof *v);
        v->version = (uint32_t)sqlite3_column_int64(st, 0);
        v->created_at = sqlite3_column_int64(st, 1);
        v->expires_at = sqlite3_column_int64(st, 2);
        v->wiped = sqlite3_column_int(st, 3);
        const unsigned char *fp = sqlite3_column_text(st, 4);
        snprintf(v->fingerprint, sizeof v->fingerprint, "%s", fp ? (const char *)fp : "");
        v->wrapped_key = dup_blob(st, 5, &v->wrapped_key_len);
        v->sealed = dup_blob(st, 6, &v->sealed_len);
    }
    if (step != SQLITE_DONE)
        rc = db_err(s, "read versions");
out:
    sqlite3_finalize(st);
    return rc;
}

#define PROVIDER_COLS                                                                              \
    "SELECT name, kind, environment, description, tags, config, current_version, created_at, "     \
    "updated_at FROM providers"

static int row_to_record(sqlite3_stmt *st, al_store_record *r)
{
    memset(r, 0, sizeof *r);
    r->name = dup_col(st, 0);
    r->kind = dup_col(st, 1);
    r->environment = dup_col(st, 2);
    r->description = dup_col(st, 3);
    r->tags_json = dup_col(st, 4);
    r->config_json = dup_col(st, 5);
    r->current_version = (uint32_t)sqlite3_column_int64(st, 6);
    r->created_at = sqlite3_column_int64(st, 7);
    r->updated_at = sqlite3_column_int64(st, 8);
    return (r->name && r->kind && r->environment) ? AL_OK : AL_ERR_NOMEM;
}

/* Reads happen inside one deferred transaction so a provider and its versions come
 * from the same committed state even while another process writes. */
static int sq_get(al_store *base, const char *name, al_store_record *out)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_err(s, "begin");
    if (sqlite3_prepare_v2(s->db, PROVIDER_COLS " WHERE name = ?", -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(s, "prepare get");
        goto out;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = AL_ERR_NOTFOUND;
        goto out;
    }
    if (step != SQLITE_ROW) {
        rc = db_err(s, "get");
        goto out;
    }
    rc = row_to_record(st, out);
    if (rc == AL_OK)
        rc = load_versions(s, out);
out:
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (rc != AL_OK)
        al_store_record_clear(out);
    return rc;
}

static int sq_list(al_store *base, al_store_record **out, size_t *n)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    al_store_record *recs = NULL;
    size_t count = 0;
    int rc = AL_OK, step;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_err(s, "begin");
    if (sqlite3_prepare_v2(s->db, PROVIDER_COLS " ORDER BY name", -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(s, "prepare list");
        goto out;
    }
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        al_store_record *nr = realloc(recs, (count + 1) * sizeof *nr);
        if (!nr) {
            rc = AL_ERR_NOMEM;
            goto out;
        }
        recs = nr;
        rc = row_to_record(st, &recs[count]);
        count++;
        if (rc == AL_OK)
            rc = load_versions(s, &recs[count - 1]);
        if (rc != AL_OK)
            goto out;
    }
    if (step != SQLITE_DONE)
        rc = db_err(s, "list");
out:
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (rc != AL_OK) {
        al_store_records_free(recs, count);
        return rc;
    }
    *out = recs;
    *n = count;
    return AL_OK;
}

static int bump_generation(al_store_sqlite *s)
{
    return sqlite3_exec(s->db, "UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'generation'",
                        NULL, NULL, NULL) == SQLITE_OK
               ? AL_OK
               : db_err(s, "generation");
}

static int put_one(al_store_sqlite *s, const al_store_record *r)
{
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM versions WHERE provider = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, "prepare delete versions");
    sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_err(s, "delete versions");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT OR REPLACE INTO providers (name, kind, environment, "
                           "description, tags, config, current_version, created_at, updated_at) "
                           "VALUES (?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(s, "prepare put");
        goto out;
    }
    sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->environment, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->description, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->tags_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->config_json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, r->current_version);
    sqlite3_bind_int64(st, 8, r->created_at);
    sqlite3_bind_int64(st, 9, r->updated_at);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_err(s, "put provider");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO versions (provider, version, created_at, expires_at, "
                           "wiped, fingerprint, wrapped_key, sealed) VALUES (?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(s, "prepare put version");
        goto out;
    }
    for (size_t i = 0; i < r->version_count; i++) {
        const al_store_version *v = &r->versions[i];
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        sqlite3_bind_text(st, 1, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, v->version);
        sqlite3_bind_int64(st, 3, v->created_at);
        sqlite3_bind_int64(st, 4, v->expires_at);
        sqlite3_bind_int(st, 5, v->wiped);
        sqlite3_bind_text(st, 6, v->fingerprint, -1, SQLITE_STATIC);
        if (v->wrapped_key && !v->wiped)
            sqlite3_bind_blob(st, 7, v->wrapped_key, (int)v->wrapped_key_len, SQLITE_STATIC);
        if (v->sealed && !v->wiped)
            sqlite3_bind_blob(st, 8, v->sealed, (int)v->sealed_len, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = db_err(s, "put version");
            goto out;
        }
    }
out:
    sqlite3_finalize(st);
    return rc;
}

static int put_meta(al_store_sqlite *s, const char *k, const char *v)
{
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        return db_err(s, "prepare meta");
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(s, "put meta");
    sqlite3_finalize(st);
    return rc;
}

static int sq_generation(al_store *base, uint64_t *out);

/* Rotation: a user row gets its new wrapped key only while it still holds the sealed
 * blob the rotation read; and no user row may be left out. Else AL_ERR_AGAIN. */
static int rewrap_users(al_store_sqlite *s, const al_store_user_token *u, size_t n)
{
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE user_tokens SET wrapped_key = ? WHERE provider = ? AND "
                           "user = ? AND sealed = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare rewrap user token");
    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (!u[i].wrapped_key || !u[i].sealed) {
            rc = AL_ERR_INVAL;
            break;
        }
        sqlite3_bind_blob(st, 1, u[i].wrapped_key, (int)u[i].wrapped_key_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, u[i].provider, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, u[i].user, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 4, u[i].sealed, (int)u[i].sealed_len, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_err(s, "rewrap user token");
        else if (sqlite3_changes(s->db) != 1)
            rc = AL_ERR_AGAIN; /* refreshed or deleted since it was read */
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == AL_OK &&
        sqlite3_prepare_v2(s->db, "SELECT COUNT(*) FROM user_tokens", -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare count user tokens");
    if (rc == AL_OK && sqlite3_step(st) != SQLITE_ROW)
        rc = db_err(s, "count user tokens");
    if (rc == AL_OK && (uint64_t)sqlite3_column_int64(st, 0) != n)
        rc = AL_ERR_AGAIN; /* a consent stored a row the rotation did not see */
    sqlite3_finalize(st);
    return rc;
}

static int sq_rewrap(al_store *base, const al_store_record *recs, size_t n,
                     const al_store_user_token *users, size_t users_n, const char *const *meta_kv,
                     size_t meta_n, const uint64_t *expect_generation)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    int rc = AL_OK;
    uint64_t gen = 0;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_err(s, "begin immediate");
    /* Inside the write lock: nobody can commit between this check and our COMMIT. */
    if (expect_generation && (rc = sq_generation(base, &gen)) == AL_OK && gen != *expect_generation)
        rc = AL_ERR_AGAIN;
    if (rc == AL_OK && users)
        rc = rewrap_users(s, users, users_n);
    for (size_t i = 0; i < n && rc == AL_OK; i++)
        rc = put_one(s, &recs[i]);
    for (size_t i = 0; i < meta_n && rc == AL_OK; i++)
        rc = put_meta(s, meta_kv[2 * i], meta_kv[2 * i + 1]);
    if (rc == AL_OK)
        rc = bump_generation(s);
    if (rc == AL_OK && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = db_err(s, "commit");
    if (rc != AL_OK)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int sq_put(al_store *base, const al_store_record *recs, size_t n, const char *const *meta_kv,
                  size_t meta_n, const uint64_t *expect_generation)
{
    return sq_rewrap(base, recs, n, NULL, 0, meta_kv, meta_n, expect_generation);
}

static int sq_del(al_store *base, const char *name)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_err(s, "begin immediate");
    if (sqlite3_prepare_v2(s->db, "DELETE FROM providers WHERE name = ?", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = db_err(s, "prepare delete");
        goto out;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_err(s, "delete");
        goto out;
    }
    if (sqlite3_changes(s->db) == 0) {
        rc = AL_ERR_NOTFOUND;
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM versions WHERE provider = ?", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = db_err(s, "prepare delete versions");
        goto out;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_err(s, "delete versions");
        goto out;
    }
    rc = bump_generation(s);
out:
    sqlite3_finalize(st);
    if (rc == AL_OK && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = db_err(s, "commit");
    if (rc != AL_OK)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int sq_meta_get(al_store *base, const char *key, char **out)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db, "SELECT v FROM meta WHERE k = ?", -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare meta");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *out = dup_col(st, 0);
        if (!*out)
            rc = AL_ERR_NOMEM;
    } else if (step == SQLITE_DONE) {
        rc = AL_ERR_NOTFOUND;
    } else {
        rc = db_err(s, "meta");
    }
    sqlite3_finalize(st);
    return rc;
}

static int sq_generation(al_store *base, uint64_t *out)
{
    char *v = NULL;
    int rc = sq_meta_get(base, "generation", &v);
    if (rc == AL_OK)
        *out = strtoull(v, NULL, 10);
    free(v);
    return rc;
}

static void sq_close(al_store *base)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_close(s->db);
    free(s);
}

void al_store_user_token_clear(al_store_user_token *u)
{
    if (!u)
        return;
    free(u->provider);
    free(u->user);
    free(u->scope);
    if (u->wrapped_key)
        OPENSSL_cleanse(u->wrapped_key, u->wrapped_key_len);
    if (u->sealed)
        OPENSSL_cleanse(u->sealed, u->sealed_len);
    free(u->wrapped_key);
    free(u->sealed);
    memset(u, 0, sizeof *u);
}

void al_store_user_tokens_free(al_store_user_token *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        al_store_user_token_clear(&u[i]);
    free(u);
}

#define USER_COLS                                                                                  \
    "SELECT provider, user, scope, obtained_at, expires_at, updated_at, has_refresh, "             \
    "fingerprint"

static int user_row(sqlite3_stmt *st, al_store_user_token *u, int blobs)
{
    memset(u, 0, sizeof *u);
    u->provider = dup_col(st, 0);
    u->user = dup_col(st, 1);
    u->scope = dup_col(st, 2);
    u->obtained_at = sqlite3_column_int64(st, 3);
    u->expires_at = sqlite3_column_int64(st, 4);
    u->updated_at = sqlite3_column_int64(st, 5);
    u->has_refresh = sqlite3_column_int(st, 6);
    const unsigned char *fp = sqlite3_column_text(st, 7);
    snprintf(u->fingerprint, sizeof u->fingerprint, "%s", fp ? (const char *)fp : "");
    if (blobs) {
        u->wrapped_key = dup_blob(st, 8, &u->wrapped_key_len);
        u->sealed = dup_blob(st, 9, &u->sealed_len);
        if (!u->wrapped_key || !u->sealed)
            return AL_ERR_NOMEM;
    }
    return (u->provider && u->user && u->scope) ? AL_OK : AL_ERR_NOMEM;
}

static int sq_user_get(al_store *base, const char *provider, const char *user,
                       al_store_user_token *out)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    if (sqlite3_prepare_v2(s->db,
                           USER_COLS ", wrapped_key, sealed FROM user_tokens "
                                     "WHERE provider = ? AND user = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare user get");
    sqlite3_bind_text(st, 1, provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, user, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        rc = user_row(st, out, 1);
    else
        rc = step == SQLITE_DONE ? AL_ERR_NOTFOUND : db_err(s, "user get");
    sqlite3_finalize(st);
    if (rc != AL_OK)
        al_store_user_token_clear(out);
    return rc;
}

/* One statement: SQLite commits it atomically (and, with synchronous=FULL, durably
 * before it returns), so a rotated refresh token is on disk before it is used. */
static int sq_user_put(al_store *base, const al_store_user_token *u)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (!u->wrapped_key || !u->sealed)
        return AL_ERR_INVAL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT OR REPLACE INTO user_tokens (provider, user, scope, "
                           "obtained_at, expires_at, updated_at, has_refresh, fingerprint, "
                           "wrapped_key, sealed) VALUES (?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare user put");
    sqlite3_bind_text(st, 1, u->provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, u->user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, u->scope ? u->scope : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, u->obtained_at);
    sqlite3_bind_int64(st, 5, u->expires_at);
    sqlite3_bind_int64(st, 6, u->updated_at);
    sqlite3_bind_int(st, 7, u->has_refresh);
    sqlite3_bind_text(st, 8, u->fingerprint, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 9, u->wrapped_key, (int)u->wrapped_key_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 10, u->sealed, (int)u->sealed_len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(s, "user put");
    sqlite3_finalize(st);
    return rc;
}

static int sq_user_list(al_store *base, const char *provider, al_store_user_token **out,
                        size_t *n)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    al_store_user_token *v = NULL;
    size_t count = 0;
    int rc = AL_OK, step;
    if (sqlite3_prepare_v2(s->db,
                           provider ? USER_COLS " FROM user_tokens WHERE provider = ? "
                                                "ORDER BY provider, user"
                                    : USER_COLS " FROM user_tokens ORDER BY provider, user",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare user list");
    if (provider)
        sqlite3_bind_text(st, 1, provider, -1, SQLITE_STATIC);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        al_store_user_token *nv = realloc(v, (count + 1) * sizeof *nv);
        if (!nv) {
            rc = AL_ERR_NOMEM;
            break;
        }
        v = nv;
        rc = user_row(st, &v[count++], 0);
        if (rc != AL_OK)
            break;
    }
    if (rc == AL_OK && step != SQLITE_DONE)
        rc = db_err(s, "user list");
    sqlite3_finalize(st);
    if (rc != AL_OK) {
        al_store_user_tokens_free(v, count);
        return rc;
    }
    *out = v;
    *n = count;
    return AL_OK;
}

static int sq_user_del(al_store *base, const char *provider, const char *user)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc = AL_OK;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM user_tokens WHERE provider = ? AND user = ?", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare user delete");
    sqlite3_bind_text(st, 1, provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, user, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_err(s, "user delete");
    else if (sqlite3_changes(s->db) == 0)
        rc = AL_ERR_NOTFOUND;
    sqlite3_finalize(st);
    return rc;
}

static int sq_meta_list(al_store *base, char ***keys, char ***vals, size_t *n)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    char **k = NULL, **v = NULL;
    size_t count = 0;
    int rc = AL_OK, step;
    if (sqlite3_prepare_v2(s->db, "SELECT k, v FROM meta WHERE k <> 'generation' ORDER BY k", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare meta list");
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        char **nk = realloc(k, (count + 1) * sizeof *nk);
        if (nk)
            k = nk;
        char **nv = nk ? realloc(v, (count + 1) * sizeof *nv) : NULL;
        if (nv)
            v = nv;
        if (!nk || !nv) {
            rc = AL_ERR_NOMEM;
            break;
        }
        k[count] = dup_col(st, 0);
        v[count] = dup_col(st, 1);
        count++;
        if (!k[count - 1] || !v[count - 1]) {
            rc = AL_ERR_NOMEM;
            break;
        }
    }
    if (rc == AL_OK && step != SQLITE_DONE)
        rc = db_err(s, "meta list");
    sqlite3_finalize(st);
    if (rc != AL_OK) {
        for (size_t i = 0; i < count; i++) {
            free(k[i]);
            free(v[i]);
        }
        free(k);
        free(v);
        return rc;
    }
    *keys = k;
    *vals = v;
    *n = count;
    return AL_OK;
}

/* Refresh locks on one host: an open file description lock (F_OFD_SETLK) on one byte of
 * the lock file chosen by the key's hash. OFD locks belong to the open file, not the
 * process, so two threads of one serve exclude each other as two processes do, and
 * the kernel drops the lock when the holder dies. */
typedef struct sq_lock {
    al_store_lock base;
    int fd;
} sq_lock;

static void sq_lock_release(al_store_lock *l)
{
    sq_lock *sl = (sq_lock *)l;
    close(sl->fd); /* closing the description releases its OFD locks */
    free(sl);
}

static int sq_refresh_lock(al_store *base, const char *key, int timeout_ms, al_store_lock **out)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    unsigned char md[SHA256_DIGEST_LENGTH];
    uint32_t slot;
    SHA256((const unsigned char *)key, strlen(key), md);
    memcpy(&slot, md, sizeof slot);
    sq_lock *l = calloc(1, sizeof *l);
    if (!l)
        return AL_ERR_NOMEM;
    l->base.release = sq_lock_release;
    mode_t old = umask(077);
    l->fd = open(s->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    umask(old);
    if (l->fd < 0) {
        al_log(AL_LOG_ERROR, "identity.store", "refresh lock %s: %s", s->lock_path,
               strerror(errno));
        free(l);
        return AL_ERR_IO;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)(slot >> 1),
                       .l_len = 1};
    struct timespec start, now, nap = {0, 5 * 1000000L};
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (fcntl(l->fd, F_OFD_SETLK, &fl) == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t waited = (int64_t)(now.tv_sec - start.tv_sec) * 1000 +
                         (now.tv_nsec - start.tv_nsec) / 1000000;
        if ((errno != EAGAIN && errno != EACCES && errno != EINTR) || waited >= timeout_ms) {
            int rc = errno == EAGAIN || errno == EACCES ? AL_ERR_TIMEOUT : AL_ERR_IO;
            close(l->fd);
            free(l);
            return rc;
        }
        nanosleep(&nap, NULL); /* OFD locks have no timed wait */
    }
    *out = &l->base;
    return AL_OK;
}

/* The user tokens changed since the last call (user_token_changes, filled by the
 * triggers): on_user for each. The first call only notes where the log ends. A reader
 * that fell more than the log's length behind hears on_user(arg, NULL, NULL): "any". */
static int sq_change_drain(al_store *base,
                           void (*on_user)(void *arg, const char *provider, const char *user),
                           void *arg)
{
    al_store_sqlite *s = (al_store_sqlite *)base;
    sqlite3_stmt *st = NULL;
    int rc = AL_OK, step;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT seq, provider, user FROM user_token_changes WHERE seq > ? "
                           "UNION ALL SELECT -1, MIN(seq), NULL FROM user_token_changes "
                           "ORDER BY 1 LIMIT 1000",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "prepare user token changes");
    sqlite3_bind_int64(st, 1, s->changes_started ? s->changes_seen : INT64_MAX);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *provider = (const char *)sqlite3_column_text(st, 1);
        const char *user = (const char *)sqlite3_column_text(st, 2);
        if (seq < 0) { /* the oldest kept: was anything pruned before we read it? */
            int64_t oldest = sqlite3_column_int64(st, 1);
            if (s->changes_started && provider && oldest > s->changes_seen + 1 && on_user)
                on_user(arg, NULL, NULL);
            continue;
        }
        if (s->changes_started && on_user && provider && user)
            on_user(arg, provider, user);
        s->changes_seen = seq;
    }
    if (step != SQLITE_DONE)
        rc = db_err(s, "user token changes");
    sqlite3_finalize(st);
    if (rc == AL_OK && !s->changes_started) {
        /* where the log ends now: changes before this handle opened are not news */
        if (sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(seq), 0) FROM user_token_changes", -1,
                               &st, NULL) != SQLITE_OK)
            return db_err(s, "prepare user token changes");
        if (sqlite3_step(st) == SQLITE_ROW) {
            s->changes_seen = sqlite3_column_int64(st, 0);
            s->changes_started = 1;
        }
        sqlite3_finalize(st);
    }
    return rc == AL_OK ? 0 : rc;
}

static const al_store_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .get = sq_get,
    .list = sq_list,
    .put = sq_put,
    .del = sq_del,
    .generation = sq_generation,
    .meta_get = sq_meta_get,
    .user_get = sq_user_get,
    .user_put = sq_user_put,
    .user_list = sq_user_list,
    .user_del = sq_user_del,
    .change_drain = sq_change_drain,
    .meta_list = sq_meta_list,
    .refresh_lock = sq_refresh_lock,
    .rewrap = sq_rewrap,
};

int al_store_sqlite_open(const char *state_dir, int flags, al_store **out)
{
    al_store_sqlite *s = NULL;
    char path[4096];
    int rc;
    if (snprintf(path, sizeof path, "%s/identity.db", state_dir) >= (int)sizeof path)
        return AL_ERR_TOOBIG;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (!(flags & AL_STORE_CREATE))
            return AL_ERR_NOTFOUND;
        if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
            al_log(AL_LOG_ERROR, "identity.store", "cannot create state dir %s: %s", state_dir,
                   strerror(errno));
            return AL_ERR_IO;
        }
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return AL_ERR_NOMEM;
    s->base.ops = &sqlite_ops;
    snprintf(s->lock_path, sizeof s->lock_path, "%s.locks", path);
    /* The database holds only ciphertext, but nobody else needs to read it. */
    mode_t old = umask(077);
    int orc = sqlite3_open_v2(path, &s->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX |
                                  ((flags & AL_STORE_CREATE) ? SQLITE_OPEN_CREATE : 0),
                              NULL);
    umask(old);
    if (orc != SQLITE_OK) {
        al_log(AL_LOG_ERROR, "identity.store", "cannot open %s: %s", path,
               s->db ? sqlite3_errmsg(s->db) : "out of memory");
        rc = AL_ERR_DB;
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if (sqlite3_exec(s->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA secure_delete=ON;",
                     NULL, NULL, NULL) != SQLITE_OK) {
        rc = db_err(s, "pragmas");
        goto fail;
    }
    if (sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
        rc = db_err(s, "schema");
        goto fail;
    }
    *out = &s->base;
    return AL_OK;
fail:
    if (s->db)
        sqlite3_close(s->db);
    free(s);
    return rc;
}
