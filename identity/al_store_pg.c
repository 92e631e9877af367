/* al_store_pg: the PostgreSQL backend of al_store (identity/al_store.h), for several
 * airlock replicas sharing one store.
 *
 * Schema: the SQLite backend's tables (providers, versions, meta, user_tokens) with
 * BYTEA blobs, plus schema_version: migrations[] are applied in order, in ONE
 * transaction that first takes a transaction advisory lock, so replicas starting
 * together migrate once and a failed migration leaves the previous schema.
 *
 * Every write is one transaction that locks the meta "generation" row (SELECT ... FOR
 * UPDATE: writers queue there, which makes expect_generation exact), bumps it and
 * sends NOTIFY airlock_store in the same transaction: PostgreSQL delivers the
 * notification only if, and when, the change commits. Readers use one REPEATABLE READ
 * transaction per get/list, so a provider and its versions come from one snapshot.
 *
 * Connection: libpq, parameters from the operator's DSN plus our defaults where the
 * DSN sets none (connect_timeout 3 s, TCP keepalives, tcp_user_timeout 10 s), so a
 * dead server costs a bounded wait. A broken connection is re-opened on the next call
 * (at most once a second); the transitions down/up are logged once, without the DSN.
 * libpq's messages name host and user, never the password, but every message is
 * still passed through redact(), which cuts the password and the DSN out.
 *
 * Threads: a handle may be shared (serve's user-token vault: its store thread and the
 * fetch thread): every op holds the handle's mutex, so its one PGconn runs one
 * statement at a time (as SQLite's FULLMUTEX); refresh_lock opens its own connection.
 * Ops block on the network: never call them on a worker's event loop. */
#include "al_store.h"
#include "common/al_err.h"
#include "common/al_log.h"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHANNEL      "airlock_store"
#define MIGRATE_LOCK "1634888811" /* "arlk": the advisory lock key of migrations */

/* Schema versions, applied in order; a released entry is never edited, only appended. */
static const char *const migrations[] = {
    /* 1: the SQLite backend's model */
    "CREATE TABLE providers ("
    " name TEXT PRIMARY KEY, kind TEXT NOT NULL, environment TEXT NOT NULL,"
    " description TEXT, tags TEXT, config TEXT, current_version BIGINT NOT NULL,"
    " created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);"
    "CREATE TABLE versions ("
    " provider TEXT NOT NULL, version BIGINT NOT NULL, created_at BIGINT NOT NULL,"
    " expires_at BIGINT NOT NULL, wiped INTEGER NOT NULL, fingerprint TEXT NOT NULL,"
    " wrapped_key BYTEA, sealed BYTEA, PRIMARY KEY (provider, version));"
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
    "CREATE TABLE user_tokens ("
    " provider TEXT NOT NULL, end_user TEXT NOT NULL, scope TEXT NOT NULL,"
    " obtained_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,"
    " has_refresh INTEGER NOT NULL, fingerprint TEXT NOT NULL, wrapped_key BYTEA NOT NULL,"
    " sealed BYTEA NOT NULL, PRIMARY KEY (provider, end_user));"
    "INSERT INTO meta (k, v) VALUES ('generation', '0');",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* Connection parameters shared (read-only) by the store and its lock connections. */
typedef struct pg_params {
    const char **kw, **val; /* NULL-terminated; point into opts or static defaults */
    PQconninfoOption *opts; /* owned (PQconninfoFree); holds the password */
    const char *password;   /* into opts; NULL if the DSN has none */
    char *dsn;              /* owned copy, wiped on free: redact() cuts it from messages */
    char origin[256];       /* "file F" / "$VAR": what messages name */
} pg_params;

typedef struct al_store_pg {
    al_store base;
    PGconn *conn;
    pg_params p;
    int listening;       /* LISTEN asked for: re-issued on every new connection */
    int64_t next_try_ms; /* no reconnect before this (monotonic) */
    pthread_mutex_t mu;  /* one PGconn, one statement at a time: callers may share it */
} al_store_pg;

/* One "down" log line per outage per process, however many handles fail. */
static atomic_int pg_down_logged;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- messages --------------------------------------------------------------- */

static void cut(char *s, const char *secret)
{
    size_t n = secret ? strlen(secret) : 0;
    if (n == 0)
        return;
    for (char *p = strstr(s, secret); p; p = strstr(p, secret)) {
        static const char mark[] = "[REDACTED]";
        size_t tail = strlen(p + n);
        if (n >= sizeof mark - 1) {
            memcpy(p, mark, sizeof mark - 1);
            memmove(p + sizeof mark - 1, p + n, tail + 1);
            p += sizeof mark - 1;
        } else { /* a very short password: blank it without growing the message */
            memset(p, '*', n);
            p += n;
        }
    }
}

/* libpq's message in one line, with the password and the DSN cut out. */
static const char *redact(const pg_params *p, const char *msg, char *out, size_t n)
{
    snprintf(out, n, "%s", msg && *msg ? msg : "unknown error");
    cut(out, p->dsn);
    cut(out, p->password);
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t')
            *c = ' ';
    for (size_t l = strlen(out); l && out[l - 1] == ' '; l--)
        out[l - 1] = 0;
    return out;
}

static void conn_down(al_store_pg *s, const char *what, const char *msg)
{
    char buf[512];
    if (atomic_exchange(&pg_down_logged, 1) == 0)
        al_log(AL_LOG_ERROR, "identity.store_unavailable",
               "PostgreSQL (connection string from %s) %s: %s; store reads and writes fail "
               "until it is back (a running serve keeps the credentials it loaded)",
               s->p.origin, what, redact(&s->p, msg, buf, sizeof buf));
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
}

static int db_fail(al_store_pg *s, const char *what, PGresult *r)
{
    char buf[512];
    if (!s->conn || PQstatus(s->conn) != CONNECTION_OK) {
        conn_down(s, what, s->conn ? PQerrorMessage(s->conn) : "no connection");
    } else {
        al_log(
            AL_LOG_ERROR, "identity.store", "PostgreSQL %s: %s", what,
            redact(&s->p, r ? PQresultErrorMessage(r) : PQerrorMessage(s->conn), buf, sizeof buf));
    }
    PQclear(r);
    return AL_ERR_DB;
}

/* ---- connection --------------------------------------------------------------- */

static void params_free(pg_params *p)
{
    free(p->kw);
    free(p->val);
    if (p->opts) {
        for (PQconninfoOption *o = p->opts; o->keyword; o++)
            if (o->val)
                OPENSSL_cleanse(o->val, strlen(o->val));
        PQconninfoFree(p->opts);
    }
    if (p->dsn) {
        OPENSSL_cleanse(p->dsn, strlen(p->dsn));
        free(p->dsn);
    }
    memset(p, 0, sizeof *p);
}

static int params_init(pg_params *p, const char *dsn, const char *origin)
{
    static const char *const defaults[][2] = {
        {"connect_timeout", "3"},      {"application_name", "airlock"}, {"keepalives", "1"},
        {"keepalives_idle", "10"},     {"keepalives_interval", "3"},    {"keepalives_count", "3"},
        {"tcp_user_timeout", "10000"},
    };
    char *err = NULL;
    memset(p, 0, sizeof *p);
    snprintf(p->origin, sizeof p->origin, "%s", origin);
    p->opts = PQconninfoParse(dsn, &err);
    if (!p->opts) {
        /* err may quote part of the string (with the password): never print it */
        if (err)
            OPENSSL_cleanse(err, strlen(err));
        PQfreemem(err);
        al_log(AL_LOG_ERROR, "identity.store",
               "the PostgreSQL connection string from %s is not valid (expected libpq's "
               "key=value form or a postgresql:// URI)",
               origin);
        return AL_ERR_CONFIG;
    }
    size_t n = 0;
    for (PQconninfoOption *o = p->opts; o->keyword; o++)
        n++;
    n += sizeof defaults / sizeof defaults[0] + 1;
    p->kw = calloc(n, sizeof *p->kw);
    p->val = calloc(n, sizeof *p->val);
    p->dsn = strdup(dsn);
    if (!p->kw || !p->val || !p->dsn) {
        params_free(p);
        return AL_ERR_NOMEM;
    }
    size_t k = 0;
    for (PQconninfoOption *o = p->opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "password"))
            p->password = o->val;
        p->kw[k] = o->keyword;
        p->val[k++] = o->val;
    }
    for (size_t d = 0; d < sizeof defaults / sizeof defaults[0]; d++) {
        int set = 0;
        for (size_t i = 0; i < k && !set; i++)
            set = !strcmp(p->kw[i], defaults[d][0]);
        if (!set) {
            p->kw[k] = defaults[d][0];
            p->val[k++] = defaults[d][1];
        }
    }
    return AL_OK;
}

/* A new connection, or NULL with the reason in *why (libpq's, unredacted: the caller
 * passes it through redact). */
static PGconn *connect_params(const pg_params *p, char *why, size_t n)
{
    PGconn *c = PQconnectdbParams(p->kw, p->val, 0);
    if (c && PQstatus(c) == CONNECTION_OK) {
        /* Our statements carry their own deadlines; a stuck lock wait must not hang us. */
        PGresult *r = PQexec(c, "SET statement_timeout = '30s'");
        PQclear(r);
        return c;
    }
    snprintf(why, n, "%s", c ? PQerrorMessage(c) : "out of memory");
    PQfinish(c);
    return NULL;
}

static int listen_on(al_store_pg *s)
{
    PGresult *r = PQexec(s->conn, "LISTEN " CHANNEL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return db_fail(s, "listen", r);
    PQclear(r);
    return AL_OK;
}

/* A working connection, reconnecting when the last one broke (at most once a second). */
static int ensure(al_store_pg *s)
{
    char why[512];
    if (s->conn && PQstatus(s->conn) == CONNECTION_OK)
        return AL_OK;
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    int64_t now = mono_ms();
    if (now < s->next_try_ms)
        return AL_ERR_DB;
    s->next_try_ms = now + 1000;
    s->conn = connect_params(&s->p, why, sizeof why);
    if (!s->conn) {
        conn_down(s, "cannot be reached or refused the connection", why);
        return AL_ERR_DB;
    }
    if (atomic_exchange(&pg_down_logged, 0))
        al_log(AL_LOG_INFO, "identity.store_reconnected",
               "PostgreSQL (connection string from %s) is reachable again", s->p.origin);
    if (s->listening && listen_on(s) != AL_OK)
        return AL_ERR_DB;
    return AL_OK;
}

/* ---- statements --------------------------------------------------------------- */

/* Runs sql with text parameters (a NULL value is SQL NULL; lens/fmts may be NULL for all
 * text). Returns the result when its status is `want`, else reports and NULL. */
static PGresult *run(al_store_pg *s, const char *what, const char *sql, int n,
                     const char *const *vals, const int *lens, const int *fmts, ExecStatusType want)
{
    PGresult *r = PQexecParams(s->conn, sql, n, NULL, vals, lens, fmts, 0);
    if (PQresultStatus(r) != want) {
        db_fail(s, what, r);
        return NULL;
    }
    return r;
}

static int exec0(al_store_pg *s, const char *what, const char *sql)
{
    PGresult *r = run(s, what, sql, 0, NULL, NULL, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r ? AL_OK : AL_ERR_DB;
}

static void rollback(al_store_pg *s)
{
    if (s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE) {
        PGresult *r = PQexec(s->conn, "ROLLBACK");
        PQclear(r);
    }
}

static char *col_dup(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

static int64_t col_i64(PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static unsigned char *col_blob(PGresult *r, int row, int col, size_t *len)
{
    *len = 0;
    if (PQgetisnull(r, row, col))
        return NULL;
    size_t n = 0;
    unsigned char *t = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, col), &n);
    if (!t || n == 0) {
        PQfreemem(t);
        return NULL;
    }
    unsigned char *p = malloc(n);
    if (p) {
        memcpy(p, t, n);
        *len = n;
    }
    OPENSSL_cleanse(t, n);
    PQfreemem(t);
    return p;
}

/* ---- providers ------------------------------------------------------------------ */

#define PROVIDER_COLS                                                                              \
    "SELECT name, kind, environment, description, tags, config, current_version, created_at, "     \
    "updated_at FROM providers"
#define VERSION_COLS                                                                               \
    "SELECT provider, version, created_at, expires_at, wiped, fingerprint, wrapped_key, sealed "   \
    "FROM versions"

static int row_to_record(PGresult *r, int i, al_store_record *out)
{
    memset(out, 0, sizeof *out);
    out->name = col_dup(r, i, 0);
    out->kind = col_dup(r, i, 1);
    out->environment = col_dup(r, i, 2);
    out->description = col_dup(r, i, 3);
    out->tags_json = col_dup(r, i, 4);
    out->config_json = col_dup(r, i, 5);
    out->current_version = (uint32_t)col_i64(r, i, 6);
    out->created_at = col_i64(r, i, 7);
    out->updated_at = col_i64(r, i, 8);
    return out->name && out->kind && out->environment ? AL_OK : AL_ERR_NOMEM;
}

static int add_version(al_store_record *rec, PGresult *r, int i)
{
    al_store_version *nv = realloc(rec->versions, (rec->version_count + 1) * sizeof *nv);
    if (!nv)
        return AL_ERR_NOMEM;
    rec->versions = nv;
    al_store_version *v = &nv[rec->version_count++];
    memset(v, 0, sizeof *v);
    v->version = (uint32_t)col_i64(r, i, 1);
    v->created_at = col_i64(r, i, 2);
    v->expires_at = col_i64(r, i, 3);
    v->wiped = (int)col_i64(r, i, 4);
    snprintf(v->fingerprint, sizeof v->fingerprint, "%s", PQgetvalue(r, i, 5));
    v->wrapped_key = col_blob(r, i, 6, &v->wrapped_key_len);
    v->sealed = col_blob(r, i, 7, &v->sealed_len);
    return AL_OK;
}

/* Loads providers (one by name, or all) with their versions from one snapshot. */
static int load(al_store_pg *s, const char *name, al_store_record **out, size_t *n)
{
    al_store_record *recs = NULL;
    size_t count = 0;
    PGresult *pr = NULL, *vr = NULL;
    const char *params[1] = {name};
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    if ((rc = exec0(s, "begin", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")) != AL_OK)
        return rc;
    pr = run(s, "read providers",
             name ? PROVIDER_COLS " WHERE name = $1" : PROVIDER_COLS " ORDER BY name", name ? 1 : 0,
             params, NULL, NULL, PGRES_TUPLES_OK);
    vr = pr ? run(s, "read versions",
                  name ? VERSION_COLS " WHERE provider = $1 ORDER BY version"
                       : VERSION_COLS " ORDER BY provider, version",
                  name ? 1 : 0, params, NULL, NULL, PGRES_TUPLES_OK)
            : NULL;
    if (!pr || !vr) {
        rc = AL_ERR_DB;
        goto out;
    }
    int np = PQntuples(pr), nv = PQntuples(vr);
    recs = calloc(np ? (size_t)np : 1, sizeof *recs);
    if (!recs) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < np && rc == AL_OK; i++)
        rc = row_to_record(pr, i, &recs[count++]);
    /* Both are ordered by provider name: one merge pass. */
    size_t j = 0;
    for (int i = 0; i < nv && rc == AL_OK; i++) {
        const char *p = PQgetvalue(vr, i, 0);
        while (j < count && strcmp(recs[j].name, p) < 0)
            j++;
        if (j < count && !strcmp(recs[j].name, p))
            rc = add_version(&recs[j], vr, i);
    }
    if (rc == AL_OK)
        rc = exec0(s, "commit", "COMMIT");
out:
    PQclear(pr);
    PQclear(vr);
    rollback(s);
    if (rc != AL_OK) {
        al_store_records_free(recs, count);
        return rc;
    }
    *out = recs;
    *n = count;
    return AL_OK;
}

static int pg_get_(al_store *base, const char *name, al_store_record *out)
{
    al_store_record *recs = NULL;
    size_t n = 0;
    memset(out, 0, sizeof *out);
    int rc = load((al_store_pg *)base, name, &recs, &n);
    if (rc != AL_OK)
        return rc;
    if (n == 0) {
        free(recs);
        return AL_ERR_NOTFOUND;
    }
    *out = recs[0];
    free(recs);
    return AL_OK;
}

static int pg_list_(al_store *base, al_store_record **out, size_t *n)
{
    return load((al_store_pg *)base, NULL, out, n);
}

/* Inside a write transaction: waits for the generation row (writers queue here). */
static int lock_generation(al_store_pg *s, uint64_t *gen)
{
    PGresult *r = run(s, "lock generation", "SELECT v FROM meta WHERE k = 'generation' FOR UPDATE",
                      0, NULL, NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    int rc = PQntuples(r) == 1 ? AL_OK : AL_ERR_DB;
    if (rc == AL_OK)
        *gen = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return rc;
}

/* Bumps the counter and announces it; both take effect at COMMIT. */
static int bump_and_notify(al_store_pg *s, const char *what)
{
    const char *params[1] = {what};
    PGresult *r = run(s, "generation",
                      "WITH g AS (UPDATE meta SET v = (v::bigint + 1)::text "
                      "WHERE k = 'generation' RETURNING v) "
                      "SELECT pg_notify('" CHANNEL "', $1 || ' ' || v) FROM g",
                      1, params, NULL, NULL, PGRES_TUPLES_OK);
    PQclear(r);
    return r ? AL_OK : AL_ERR_DB;
}

static int put_one(al_store_pg *s, const al_store_record *rec)
{
    char cv[24], ca[24], ua[24];
    const char *del[1] = {rec->name};
    PGresult *r = run(s, "delete versions", "DELETE FROM versions WHERE provider = $1", 1, del,
                      NULL, NULL, PGRES_COMMAND_OK);
    if (!r)
        return AL_ERR_DB;
    PQclear(r);
    snprintf(cv, sizeof cv, "%u", rec->current_version);
    snprintf(ca, sizeof ca, "%lld", (long long)rec->created_at);
    snprintf(ua, sizeof ua, "%lld", (long long)rec->updated_at);
    const char *pv[9] = {rec->name,
                         rec->kind,
                         rec->environment,
                         rec->description,
                         rec->tags_json,
                         rec->config_json,
                         cv,
                         ca,
                         ua};
    r = run(s, "put provider",
            "INSERT INTO providers (name, kind, environment, description, tags, config, "
            "current_version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) "
            "ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, environment = "
            "EXCLUDED.environment, description = EXCLUDED.description, tags = EXCLUDED.tags, "
            "config = EXCLUDED.config, current_version = EXCLUDED.current_version, created_at = "
            "EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
            9, pv, NULL, NULL, PGRES_COMMAND_OK);
    if (!r)
        return AL_ERR_DB;
    PQclear(r);
    for (size_t i = 0; i < rec->version_count; i++) {
        const al_store_version *v = &rec->versions[i];
        char ver[24], vc[24], ve[24], vw[4];
        snprintf(ver, sizeof ver, "%u", v->version);
        snprintf(vc, sizeof vc, "%lld", (long long)v->created_at);
        snprintf(ve, sizeof ve, "%lld", (long long)v->expires_at);
        snprintf(vw, sizeof vw, "%d", v->wiped ? 1 : 0);
        int keep = !v->wiped;
        const char *vals[8] = {rec->name,
                               ver,
                               vc,
                               ve,
                               vw,
                               v->fingerprint,
                               keep && v->wrapped_key ? (const char *)v->wrapped_key : NULL,
                               keep && v->sealed ? (const char *)v->sealed : NULL};
        int lens[8] = {0, 0, 0, 0, 0, 0, (int)v->wrapped_key_len, (int)v->sealed_len};
        int fmts[8] = {0, 0, 0, 0, 0, 0, 1, 1};
        r = run(s, "put version",
                "INSERT INTO versions (provider, version, created_at, expires_at, wiped, "
                "fingerprint, wrapped_key, sealed) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                8, vals, lens, fmts, PGRES_COMMAND_OK);
        if (!r)
            return AL_ERR_DB;
        PQclear(r);
    }
    return AL_OK;
}

static int put_meta(al_store_pg *s, const char *k, const char *v)
{
    const char *vals[2] = {k, v};
    PGresult *r = run(s, "put meta",
                      "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = "
                      "EXCLUDED.v",
                      2, vals, NULL, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r ? AL_OK : AL_ERR_DB;
}

/* Rotation: a user row gets its new wrapped key only while it still holds the sealed
 * blob the rotation read (the UPDATE row-locks it until COMMIT); and no user row may be
 * left out. Else AL_ERR_AGAIN. */
static int rewrap_users(al_store_pg *s, const al_store_user_token *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!u[i].wrapped_key || !u[i].sealed)
            return AL_ERR_INVAL;
        const char *vals[4] = {u[i].provider, u[i].user, (const char *)u[i].wrapped_key,
                               (const char *)u[i].sealed};
        int lens[4] = {0, 0, (int)u[i].wrapped_key_len, (int)u[i].sealed_len};
        int fmts[4] = {0, 0, 1, 1};
        PGresult *r = run(s, "rewrap user token",
                          "UPDATE user_tokens SET wrapped_key = $3 WHERE provider = $1 AND "
                          "end_user = $2 AND sealed = $4",
                          4, vals, lens, fmts, PGRES_COMMAND_OK);
        if (!r)
            return AL_ERR_DB;
        int changed = strcmp(PQcmdTuples(r), "1") == 0;
        PQclear(r);
        if (!changed)
            return AL_ERR_AGAIN; /* refreshed or deleted since it was read */
    }
    PGresult *r = run(s, "count user tokens", "SELECT COUNT(*) FROM user_tokens", 0, NULL, NULL,
                      NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    int rc = strtoull(PQgetvalue(r, 0, 0), NULL, 10) == n ? AL_OK : AL_ERR_AGAIN;
    PQclear(r);
    return rc; /* AL_ERR_AGAIN: a consent stored a row the rotation did not see */
}

static int pg_rewrap_(al_store *base, const al_store_record *recs, size_t n,
                      const al_store_user_token *users, size_t users_n,
                      const char *const *meta_kv, size_t meta_n,
                      const uint64_t *expect_generation)
{
    al_store_pg *s = (al_store_pg *)base;
    uint64_t gen = 0;
    int rc = ensure(s);
    if (rc == AL_OK)
        rc = exec0(s, "begin", "BEGIN");
    if (rc != AL_OK)
        return rc;
    rc = lock_generation(s, &gen);
    if (rc == AL_OK && expect_generation && gen != *expect_generation)
        rc = AL_ERR_AGAIN;
    if (rc == AL_OK && users)
        rc = rewrap_users(s, users, users_n);
    for (size_t i = 0; i < n && rc == AL_OK; i++)
        rc = put_one(s, &recs[i]);
    for (size_t i = 0; i < meta_n && rc == AL_OK; i++)
        rc = strcmp(meta_kv[2 * i], "generation") ? put_meta(s, meta_kv[2 * i], meta_kv[2 * i + 1])
                                                  : AL_ERR_INVAL;
    if (rc == AL_OK)
        rc = bump_and_notify(s, "providers");
    if (rc == AL_OK)
        rc = exec0(s, "commit", "COMMIT");
    rollback(s);
    return rc;
}

static int pg_put_(al_store *base, const al_store_record *recs, size_t n,
                   const char *const *meta_kv, size_t meta_n, const uint64_t *expect_generation)
{
    return pg_rewrap_(base, recs, n, NULL, 0, meta_kv, meta_n, expect_generation);
}

static int pg_del_(al_store *base, const char *name)
{
    al_store_pg *s = (al_store_pg *)base;
    uint64_t gen;
    const char *vals[1] = {name};
    int rc = ensure(s);
    if (rc == AL_OK)
        rc = exec0(s, "begin", "BEGIN");
    if (rc != AL_OK)
        return rc;
    rc = lock_generation(s, &gen);
    PGresult *r = rc == AL_OK ? run(s, "delete", "DELETE FROM providers WHERE name = $1", 1, vals,
                                    NULL, NULL, PGRES_COMMAND_OK)
                              : NULL;
    if (rc == AL_OK && !r)
        rc = AL_ERR_DB;
    if (rc == AL_OK && strcmp(PQcmdTuples(r), "0") == 0)
        rc = AL_ERR_NOTFOUND;
    PQclear(r);
    if (rc == AL_OK) {
        r = run(s, "delete versions", "DELETE FROM versions WHERE provider = $1", 1, vals, NULL,
                NULL, PGRES_COMMAND_OK);
        rc = r ? AL_OK : AL_ERR_DB;
        PQclear(r);
    }
    if (rc == AL_OK)
        rc = bump_and_notify(s, "providers");
    if (rc == AL_OK)
        rc = exec0(s, "commit", "COMMIT");
    rollback(s);
    return rc;
}

static int pg_meta_get_(al_store *base, const char *key, char **out)
{
    al_store_pg *s = (al_store_pg *)base;
    const char *vals[1] = {key};
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "read meta", "SELECT v FROM meta WHERE k = $1", 1, vals, NULL, NULL,
                      PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    if (PQntuples(r) == 0)
        rc = AL_ERR_NOTFOUND;
    else if (!(*out = strdup(PQgetvalue(r, 0, 0))))
        rc = AL_ERR_NOMEM;
    PQclear(r);
    return rc;
}

static int pg_meta_list_(al_store *base, char ***keys, char ***vals, size_t *n)
{
    al_store_pg *s = (al_store_pg *)base;
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "read meta", "SELECT k, v FROM meta WHERE k <> 'generation' ORDER BY k", 0,
                      NULL, NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    size_t m = (size_t)PQntuples(r);
    char **k = calloc(m + 1, sizeof *k), **v = calloc(m + 1, sizeof *v);
    rc = k && v ? AL_OK : AL_ERR_NOMEM;
    for (size_t i = 0; i < m && rc == AL_OK; i++)
        if (!(k[i] = col_dup(r, (int)i, 0)) || !(v[i] = col_dup(r, (int)i, 1)))
            rc = AL_ERR_NOMEM;
    PQclear(r);
    if (rc != AL_OK) {
        for (size_t i = 0; i < m && k && v; i++) {
            free(k[i]);
            free(v[i]);
        }
        free(k);
        free(v);
        return rc;
    }
    *keys = k;
    *vals = v;
    *n = m;
    return AL_OK;
}

static int pg_generation_(al_store *base, uint64_t *out)
{
    char *v = NULL;
    int rc = pg_meta_get_(base, "generation", &v);
    if (rc == AL_OK)
        *out = strtoull(v, NULL, 10);
    free(v);
    return rc;
}

/* ---- user tokens ------------------------------------------------------------------- */

#define USER_COLS                                                                                  \
    "SELECT provider, end_user, scope, obtained_at, expires_at, updated_at, has_refresh, "         \
    "fingerprint"

static int user_row(PGresult *r, int i, al_store_user_token *u, int blobs)
{
    memset(u, 0, sizeof *u);
    u->provider = col_dup(r, i, 0);
    u->user = col_dup(r, i, 1);
    u->scope = col_dup(r, i, 2);
    u->obtained_at = col_i64(r, i, 3);
    u->expires_at = col_i64(r, i, 4);
    u->updated_at = col_i64(r, i, 5);
    u->has_refresh = (int)col_i64(r, i, 6);
    snprintf(u->fingerprint, sizeof u->fingerprint, "%s", PQgetvalue(r, i, 7));
    if (blobs) {
        u->wrapped_key = col_blob(r, i, 8, &u->wrapped_key_len);
        u->sealed = col_blob(r, i, 9, &u->sealed_len);
        if (!u->wrapped_key || !u->sealed)
            return AL_ERR_NOMEM;
    }
    return u->provider && u->user && u->scope ? AL_OK : AL_ERR_NOMEM;
}

static int pg_user_get_(al_store *base, const char *provider, const char *user,
                        al_store_user_token *out)
{
    al_store_pg *s = (al_store_pg *)base;
    const char *vals[2] = {provider, user};
    memset(out, 0, sizeof *out);
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "read user token",
                      USER_COLS ", wrapped_key, sealed FROM user_tokens WHERE provider = $1 AND "
                                "end_user = $2",
                      2, vals, NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    rc = PQntuples(r) == 1 ? user_row(r, 0, out, 1) : AL_ERR_NOTFOUND;
    PQclear(r);
    if (rc != AL_OK)
        al_store_user_token_clear(out);
    return rc;
}

/* One autocommit statement plus its announcement: durable (synchronous_commit is the
 * server's; its default, on, waits for the WAL flush) when it returns. */
static int pg_user_put_(al_store *base, const al_store_user_token *u)
{
    al_store_pg *s = (al_store_pg *)base;
    if (!u->wrapped_key || !u->sealed)
        return AL_ERR_INVAL;
    char oa[24], ea[24], ua[24], hr[4];
    snprintf(oa, sizeof oa, "%lld", (long long)u->obtained_at);
    snprintf(ea, sizeof ea, "%lld", (long long)u->expires_at);
    snprintf(ua, sizeof ua, "%lld", (long long)u->updated_at);
    snprintf(hr, sizeof hr, "%d", u->has_refresh ? 1 : 0);
    const char *vals[10] = {u->provider,
                            u->user,
                            u->scope ? u->scope : "",
                            oa,
                            ea,
                            ua,
                            hr,
                            u->fingerprint,
                            (const char *)u->wrapped_key,
                            (const char *)u->sealed};
    int lens[10] = {0, 0, 0, 0, 0, 0, 0, 0, (int)u->wrapped_key_len, (int)u->sealed_len};
    int fmts[10] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "put user token",
                      "WITH w AS (INSERT INTO user_tokens (provider, end_user, scope, obtained_at, "
                      "expires_at, updated_at, has_refresh, fingerprint, wrapped_key, sealed) "
                      "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (provider, end_user) "
                      "DO UPDATE SET scope = EXCLUDED.scope, obtained_at = EXCLUDED.obtained_at, "
                      "expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at, "
                      "has_refresh = EXCLUDED.has_refresh, fingerprint = EXCLUDED.fingerprint, "
                      "wrapped_key = EXCLUDED.wrapped_key, sealed = EXCLUDED.sealed RETURNING 1) "
                      "SELECT pg_notify('" CHANNEL "', 'u ' || $1 || chr(31) || $2) FROM w",
                      10, vals, lens, fmts, PGRES_TUPLES_OK);
    PQclear(r);
    return r ? AL_OK : AL_ERR_DB;
}

static int pg_user_list_(al_store *base, const char *provider, al_store_user_token **out, size_t *n)
{
    al_store_pg *s = (al_store_pg *)base;
    const char *vals[1] = {provider};
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "list user tokens",
                      provider ? USER_COLS " FROM user_tokens WHERE provider = $1 ORDER BY "
                                           "provider, end_user"
                               : USER_COLS " FROM user_tokens ORDER BY provider, end_user",
                      provider ? 1 : 0, vals, NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    size_t m = (size_t)PQntuples(r), count = 0;
    al_store_user_token *v = calloc(m ? m : 1, sizeof *v);
    rc = v ? AL_OK : AL_ERR_NOMEM;
    for (size_t i = 0; i < m && rc == AL_OK; i++)
        rc = user_row(r, (int)i, &v[count++], 0);
    PQclear(r);
    if (rc != AL_OK) {
        al_store_user_tokens_free(v, count);
        return rc;
    }
    *out = v;
    *n = count;
    return AL_OK;
}

static int pg_user_del_(al_store *base, const char *provider, const char *user)
{
    al_store_pg *s = (al_store_pg *)base;
    const char *vals[2] = {provider, user};
    int rc = ensure(s);
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "delete user token",
                      "WITH d AS (DELETE FROM user_tokens WHERE provider = $1 AND end_user = $2 "
                      "RETURNING 1) SELECT pg_notify('" CHANNEL "', 'u ' || $1 || chr(31) || $2) "
                      "FROM d",
                      2, vals, NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    rc = PQntuples(r) > 0 ? AL_OK : AL_ERR_NOTFOUND;
    PQclear(r);
    return rc;
}

/* ---- change notifications ------------------------------------------------------------ */

static int pg_change_fd_(al_store *base)
{
    al_store_pg *s = (al_store_pg *)base;
    if (!s->listening) {
        s->listening = 1;
        if (s->conn && PQstatus(s->conn) == CONNECTION_OK && listen_on(s) != AL_OK)
            return -1;
    }
    if (ensure(s) != AL_OK)
        return -1; /* the caller polls the generation until we are back */
    return PQsocket(s->conn);
}

/* Payloads: "providers GEN", or "u PROVIDER\x1fUSER" for a user token (neither name
 * holds a control character). */
static int pg_change_drain_(al_store *base,
                            void (*on_user)(void *arg, const char *provider, const char *user),
                            void *arg)
{
    al_store_pg *s = (al_store_pg *)base;
    int changed = 0;
    if (!s->conn)
        return AL_ERR_DB;
    if (!PQconsumeInput(s->conn))
        return db_fail(s, "notification", NULL);
    PGnotify *nf;
    while ((nf = PQnotifies(s->conn)) != NULL) {
        char *sep = nf->extra ? strchr(nf->extra, '\x1f') : NULL;
        if (nf->extra && !strncmp(nf->extra, "u ", 2) && sep) {
            *sep = 0;
            if (on_user)
                on_user(arg, nf->extra + 2, sep + 1);
        } else {
            changed = 1;
        }
        PQfreemem(nf);
    }
    return changed;
}

/* ---- refresh lock ---------------------------------------------------------------------- */

typedef struct pg_lock {
    al_store_lock base;
    PGconn *conn;
    char key[24];
} pg_lock;

static void pg_lock_release(al_store_lock *l)
{
    pg_lock *pl = (pg_lock *)l;
    const char *vals[1] = {pl->key};
    /* Closing the session would release it too; unlocking first returns it at once
     * even if the server is slow to notice the close. */
    PGresult *r = PQexecParams(pl->conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, vals,
                               NULL, NULL, 0);
    PQclear(r);
    PQfinish(pl->conn);
    free(pl);
}

static int pg_refresh_lock(al_store *base, const char *key, int timeout_ms, al_store_lock **out)
{
    al_store_pg *s = (al_store_pg *)base;
    unsigned char md[SHA256_DIGEST_LENGTH];
    char why[512], buf[512], tmo[32];
    int64_t k = 0;
    SHA256((const unsigned char *)key, strlen(key), md);
    memcpy(&k, md, sizeof k);
    pg_lock *l = calloc(1, sizeof *l);
    if (!l)
        return AL_ERR_NOMEM;
    l->base.release = pg_lock_release;
    snprintf(l->key, sizeof l->key, "%lld", (long long)k);
    l->conn = connect_params(&s->p, why, sizeof why);
    if (!l->conn) {
        al_log(AL_LOG_ERROR, "identity.store", "refresh lock: PostgreSQL unreachable: %s",
               redact(&s->p, why, buf, sizeof buf));
        free(l);
        return AL_ERR_DB;
    }
    snprintf(tmo, sizeof tmo, "%d", timeout_ms > 0 ? timeout_ms : 1);
    const char *set[1] = {tmo};
    PGresult *r = PQexecParams(l->conn, "SELECT set_config('lock_timeout', $1, false)", 1, NULL,
                               set, NULL, NULL, 0);
    PQclear(r);
    const char *vals[1] = {l->key};
    r = PQexecParams(l->conn, "SELECT pg_advisory_lock($1::bigint)", 1, NULL, vals, NULL, NULL, 0);
    int rc = AL_OK;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        rc = state && !strcmp(state, "55P03") ? AL_ERR_TIMEOUT : AL_ERR_DB; /* lock_not_available */
        if (rc == AL_ERR_DB)
            al_log(AL_LOG_ERROR, "identity.store", "refresh lock: %s",
                   redact(&s->p, PQresultErrorMessage(r), buf, sizeof buf));
    }
    PQclear(r);
    if (rc != AL_OK) {
        PQfinish(l->conn);
        free(l);
        return rc;
    }
    *out = &l->base;
    return AL_OK;
}

/* ---- opening ---------------------------------------------------------------------------- */

static void pg_close(al_store *base)
{
    al_store_pg *s = (al_store_pg *)base;
    PQfinish(s->conn);
    params_free(&s->p);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- the vtable: every op holds the handle's mutex ---------------------------------------
 * Like SQLite's FULLMUTEX: a handle may be shared by threads (serve's user-token vault is
 * used by its store thread and the fetch thread); each op runs alone on the connection. */
#define LOCKED(name, params, args)                                                                 \
    static int pg_##name params                                                                    \
    {                                                                                              \
        al_store_pg *s_ = (al_store_pg *)base;                                                     \
        pthread_mutex_lock(&s_->mu);                                                               \
        int rc_ = pg_##name##_ args;                                                               \
        pthread_mutex_unlock(&s_->mu);                                                             \
        return rc_;                                                                                \
    }
LOCKED(get, (al_store * base, const char *name, al_store_record *out), (base, name, out))
LOCKED(list, (al_store * base, al_store_record **out, size_t *n), (base, out, n))
LOCKED(put,
       (al_store * base, const al_store_record *recs, size_t n, const char *const *meta_kv,
        size_t meta_n, const uint64_t *expect_generation),
       (base, recs, n, meta_kv, meta_n, expect_generation))
LOCKED(rewrap,
       (al_store * base, const al_store_record *recs, size_t n, const al_store_user_token *users,
        size_t users_n, const char *const *meta_kv, size_t meta_n,
        const uint64_t *expect_generation),
       (base, recs, n, users, users_n, meta_kv, meta_n, expect_generation))
LOCKED(del, (al_store * base, const char *name), (base, name))
LOCKED(generation, (al_store * base, uint64_t *out), (base, out))
LOCKED(meta_get, (al_store * base, const char *key, char **out), (base, key, out))
LOCKED(meta_list, (al_store * base, char ***keys, char ***vals, size_t *n), (base, keys, vals, n))
LOCKED(user_get,
       (al_store * base, const char *provider, const char *user, al_store_user_token *out),
       (base, provider, user, out))
LOCKED(user_put, (al_store * base, const al_store_user_token *u), (base, u))
LOCKED(user_list, (al_store * base, const char *provider, al_store_user_token **out, size_t *n),
       (base, provider, out, n))
LOCKED(user_del, (al_store * base, const char *provider, const char *user), (base, provider, user))
LOCKED(change_fd, (al_store * base), (base))
LOCKED(change_drain,
       (al_store * base, void (*on_user)(void *, const char *, const char *), void *arg),
       (base, on_user, arg))

static const al_store_ops pg_ops = {
    .name = "postgres",
    .close = pg_close,
    .get = pg_get,
    .list = pg_list,
    .put = pg_put,
    .del = pg_del,
    .generation = pg_generation,
    .meta_get = pg_meta_get,
    .user_get = pg_user_get,
    .user_put = pg_user_put,
    .user_list = pg_user_list,
    .user_del = pg_user_del,
    .change_fd = pg_change_fd,
    .change_drain = pg_change_drain,
    .meta_list = pg_meta_list,
    .refresh_lock = pg_refresh_lock,
    .rewrap = pg_rewrap,
};

/* The schema's version: 0 when airlock's tables are not there. */
static int schema_version(al_store_pg *s, int *out)
{
    PGresult *r = run(s, "schema", "SELECT to_regclass('schema_version') IS NOT NULL", 0, NULL,
                      NULL, NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    int exists = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    *out = 0;
    if (!exists)
        return AL_OK;
    r = run(s, "schema", "SELECT coalesce(max(version), 0) FROM schema_version", 0, NULL, NULL,
            NULL, PGRES_TUPLES_OK);
    if (!r)
        return AL_ERR_DB;
    *out = (int)col_i64(r, 0, 0);
    PQclear(r);
    return AL_OK;
}

/* Applies the missing migrations in one transaction; replicas starting together wait
 * on the advisory lock and then find nothing left to do. */
static int migrate(al_store_pg *s)
{
    int cur = 0, rc = exec0(s, "begin", "BEGIN");
    if (rc != AL_OK)
        return rc;
    PGresult *r = run(s, "migration lock", "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", 0,
                      NULL, NULL, NULL, PGRES_TUPLES_OK);
    rc = r ? AL_OK : AL_ERR_DB;
    PQclear(r);
    if (rc == AL_OK)
        rc = exec0(s, "schema",
                   "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER "
                   "PRIMARY KEY, applied_at BIGINT NOT NULL)");
    if (rc == AL_OK)
        rc = schema_version(s, &cur);
    for (int v = cur + 1; rc == AL_OK && v <= SCHEMA_VERSION; v++) {
        char ver[16], at[24];
        snprintf(ver, sizeof ver, "%d", v);
        snprintf(at, sizeof at, "%lld", (long long)time(NULL));
        const char *vals[2] = {ver, at};
        r = PQexec(s->conn, migrations[v - 1]);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = db_fail(s, "schema migration", r);
            break;
        }
        PQclear(r);
        r = run(s, "schema", "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", 2,
                vals, NULL, NULL, PGRES_COMMAND_OK);
        rc = r ? AL_OK : AL_ERR_DB;
        PQclear(r);
        if (rc == AL_OK)
            al_log(AL_LOG_INFO, "identity.store_migrated", "PostgreSQL schema version %d", v);
    }
    if (rc == AL_OK)
        rc = exec0(s, "commit", "COMMIT");
    rollback(s);
    return rc;
}

int al_store_pg_open(const char *dsn, const char *origin, int flags, al_store **out)
{
    al_store_pg *s = calloc(1, sizeof *s);
    int rc, ver = 0;
    if (!s)
        return AL_ERR_NOMEM;
    s->base.ops = &pg_ops;
    pthread_mutex_init(&s->mu, NULL);
    if ((rc = params_init(&s->p, dsn, origin)) != AL_OK)
        goto fail;
    if ((rc = ensure(s)) == AL_OK)
        rc = schema_version(s, &ver);
    if (rc == AL_ERR_DB && (flags & AL_STORE_LAZY)) {
        *out = &s->base; /* unreachable now: connects on first use */
        return AL_OK;
    }
    if (rc != AL_OK)
        goto fail;
    if (ver > SCHEMA_VERSION) {
        al_log(AL_LOG_ERROR, "identity.store",
               "the PostgreSQL store has schema version %d, newer than this airlock's %d: "
               "upgrade airlock",
               ver, SCHEMA_VERSION);
        rc = AL_ERR_CONFIG;
        goto fail;
    }
    if (ver == 0 && !(flags & AL_STORE_CREATE)) {
        if (flags & AL_STORE_LAZY) {
            *out = &s->base; /* the tables come with the first write (the CLI) */
            return AL_OK;
        }
        rc = AL_ERR_NOTFOUND; /* nothing written yet: like a missing identity.db */
        goto fail;
    }
    if (ver < SCHEMA_VERSION && (rc = migrate(s)) != AL_OK)
        goto fail;
    *out = &s->base;
    return AL_OK;
fail:
    pg_close(&s->base);
    return rc;
}
