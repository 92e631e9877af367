/* al_store: the narrow storage interface of the identity store.
 *
 * Callers (al_identity, al_cred) see records, never SQL: a backend implements
 * open/get/put/list/delete and a change counter in one vtable, so a PostgreSQL
 * backend for several replicas is one more file (like curl's vtls backends).
 *
 * A record is one credential provider with all its versions. put() replaces the
 * given records (provider row and every version row) in ONE transaction and bumps
 * the change counter in the same transaction, so a crash (SIGKILL) mid-update
 * leaves either the old or the new record, never a mix.
 *
 * Nothing here is plaintext: version blobs are sealed by identity/al_vault.h. */
#ifndef AL_STORE_H
#define AL_STORE_H

#include <stddef.h>
#include <stdint.h>

#define AL_STORE_NAME_MAX 128

typedef struct al_store_version {
    uint32_t version;
    int64_t created_at;   /* unix seconds */
    int64_t expires_at;   /* unix seconds the version stops being usable; 0 = never (current) */
    int wiped;            /* 1 = key material erased; metadata kept for the audit history */
    char fingerprint[32]; /* "sha256:" + 12 hex of the secret; never the secret */
    unsigned char *wrapped_key; /* owned; data key wrapped by the master key (NULL when wiped) */
    size_t wrapped_key_len;
    unsigned char *sealed; /* owned; secret sealed with the data key (NULL when wiped) */
    size_t sealed_len;
} al_store_version;

typedef struct al_store_record {
    char *name;        /* owned */
    char *kind;        /* owned; "api_key", "oauth2", "aws" */
    char *environment; /* owned */
    char *description; /* owned; may be NULL */
    char *tags_json;   /* owned; JSON object text, may be NULL */
    char *config_json; /* owned; non-secret settings as JSON object text, may be NULL */
    uint32_t current_version;
    int64_t created_at;
    int64_t updated_at;
    al_store_version *versions; /* owned array, ascending version */
    size_t version_count;
} al_store_record;

/* Frees the strings and blobs of `r` (blobs are wiped first) but not `r` itself. */
void al_store_record_clear(al_store_record *r);
void al_store_records_free(al_store_record *recs, size_t n);

/* A user's OAuth tokens (3LO), keyed by (provider, user): metadata in clear, the tokens
 * sealed by al_vault (identity/al_user_token.h). Not part of the change counter: serve
 * reads them per request instead of from the provider snapshot. */
typedef struct al_store_user_token {
    char *provider; /* owned */
    char *user;     /* owned */
    char *scope;    /* owned; may be "" */
    int64_t obtained_at, expires_at, updated_at; /* unix seconds; expires_at 0 = unknown */
    int has_refresh;
    char fingerprint[32]; /* of the access token */
    unsigned char *wrapped_key; /* owned; NULL in list() answers */
    size_t wrapped_key_len;
    unsigned char *sealed; /* owned; NULL in list() answers */
    size_t sealed_len;
} al_store_user_token;

void al_store_user_token_clear(al_store_user_token *u);
void al_store_user_tokens_free(al_store_user_token *u, size_t n);

typedef struct al_store al_store;
struct al_store_lock;

typedef struct al_store_ops {
    const char *name;
    void (*close)(al_store *s);
    /* AL_ERR_NOTFOUND if no such provider. *out filled (caller clears it). */
    int (*get)(al_store *s, const char *name, al_store_record *out);
    /* Every record; *out is a malloc'd array the caller frees with al_store_records_free. */
    int (*list)(al_store *s, al_store_record **out, size_t *n);
    /* Replaces the records (provider + all its version rows) atomically, with the meta
     * entries (key, value) in the same transaction; bumps the change counter. With
     * expect_generation, commits only if the counter still has that value, else
     * AL_ERR_AGAIN: optimistic concurrency for read-modify-write by several processes. */
    int (*put)(al_store *s, const al_store_record *recs, size_t n, const char *const *meta_kv,
               size_t meta_n, const uint64_t *expect_generation);
    /* Removes a provider and its versions; AL_ERR_NOTFOUND if absent. Bumps the counter. */
    int (*del)(al_store *s, const char *name);
    /* The change counter: increases on every committed change by any process. */
    int (*generation)(al_store *s, uint64_t *out);
    /* Store-wide metadata (the master-key check value). AL_ERR_NOTFOUND if unset.
     * *out is malloc'd. */
    int (*meta_get)(al_store *s, const char *key, char **out);
    /* User tokens: get (AL_ERR_NOTFOUND), put (insert or replace, durable when it
     * returns), list (provider NULL = all; metadata only), del (AL_ERR_NOTFOUND). */
    int (*user_get)(al_store *s, const char *provider, const char *user, al_store_user_token *out);
    int (*user_put)(al_store *s, const al_store_user_token *u);
    int (*user_list)(al_store *s, const char *provider, al_store_user_token **out, size_t *n);
    int (*user_del)(al_store *s, const char *provider, const char *user);
    /* ---- added for several replicas (PostgreSQL) ---- */
    /* A descriptor that becomes readable when another process may have changed the
     * store (PostgreSQL: the LISTEN connection's socket), or -1 (SQLite: poll the
     * generation). After it is readable, change_drain() consumes what arrived (never
     * blocking) and returns 1 if a provider change was announced, 0 if not, negative on
     * error; it calls on_user(arg, provider, user) for each user token written or
     * deleted by any process, this one included (on_user may be NULL). NULL = none.
     * Call it before polling too: an announcement that came with a query's answer is
     * already taken in (libpq's queue) and leaves the descriptor quiet.
 * SQLite has change_drain without change_fd: its user token change log (triggers on
 * user_tokens) is polled; on_user(arg, NULL, NULL) there means "some were missed: any
 * user's token may have changed". The first call only notes where the log ends. */
    int (*change_fd)(al_store *s);
    int (*change_drain)(al_store *s,
                        void (*on_user)(void *arg, const char *provider, const char *user),
                        void *arg);
    /* The other store-wide meta entries (every key but "generation"): for `store
     * migrate`. *keys and *vals are malloc'd arrays of malloc'd strings. */
    int (*meta_list)(al_store *s, char ***keys, char ***vals, size_t *n);
    /* One refresh at a time across processes and replicas (issue 17 item 3): takes the
     * exclusive lock named `key` (e.g. "3lo\nPROVIDER\nUSER"), waiting at most
     * timeout_ms (AL_ERR_TIMEOUT). Thread-safe — it uses its own database connection
     * (PostgreSQL: a session advisory lock, released if this process dies) or its own
     * open file description (SQLite: an OFD byte-range lock on <state_dir>/identity.db
     * .locks, one host) — and it blocks: never call it on a worker's event loop.
     *
     * The protocol for a refresh that rotates a secret (3LO refresh tokens):
     *   1. refresh_lock(key);
     *   2. re-read the stored row (user_get): if another replica refreshed it while we
     *      waited (its updated_at/fingerprint differ from the copy we started with and
     *      it is still valid), use that token and skip to 5;
     *   3. call the provider;
     *   4. store the answer (user_put, durable) BEFORE using it;
     *   5. al_store_unlock.
     * The loser of a race thus reads the winner's token and never spends the rotated
     * refresh token a second time. */
    int (*refresh_lock)(al_store *s, const char *key, int timeout_ms, struct al_store_lock **out);
    /* Master-key rotation (al_identity_rotate_master_key): in ONE transaction, what
     * put() does (records, meta entries, counter, expect_generation) plus a new
     * wrapped_key for each of the users' token rows. A user row is updated only while
     * it still holds the sealed blob given here (the one the rotation read and checked);
     * a row refreshed or deleted since, or a user row not given here (a consent
     * meanwhile), fails the whole transaction with AL_ERR_AGAIN: nothing is left
     * sealed under the old key. Only wrapped_key of the user rows is written. users
     * NULL: no user row is looked at (put()); a rotation passes an array, even empty. */
    int (*rewrap)(al_store *s, const al_store_record *recs, size_t n,
                  const al_store_user_token *users, size_t users_n, const char *const *meta_kv,
                  size_t meta_n, const uint64_t *expect_generation);
} al_store_ops;

/* A held refresh lock; al_store_unlock releases and frees it (NULL is fine). It may
 * outlive the al_store it came from. */
typedef struct al_store_lock {
    void (*release)(struct al_store_lock *l);
} al_store_lock;

static inline void al_store_unlock(al_store_lock *l)
{
    if (l)
        l->release(l);
}

struct al_store {
    const al_store_ops *ops;
};

enum al_store_open_flags {
    AL_STORE_CREATE = 1, /* create the database (and state dir) if missing */
    /* PostgreSQL: a database unreachable now, or without airlock's tables yet, still
     * gives a handle; it connects on first use and its ops fail (AL_ERR_DB) until the
     * database is there. For serve's long-lived handles, so they recover by themselves.
     * SQLite ignores it. */
    AL_STORE_LAZY = 2,
};

/* Opens <state_dir>/identity.db (SQLite, WAL, busy timeout 5 s). Without
 * AL_STORE_CREATE a missing database is AL_ERR_NOTFOUND. */
int al_store_sqlite_open(const char *state_dir, int flags, al_store **out);

/* ---- backend choice (table key `store`, identity/al_store.c) ----
 *
 * The backend is a process-wide choice made once at start, before any thread opens
 * the store (serve from its table, the CLI from -c FILE): every opener — serve's
 * credential watcher, the CLI, the 3LO refresh — must see the same store, so they all
 * go through al_store_open. The DSN is read from its file or variable at open time
 * and is never logged, printed or put in an error. */
enum al_store_backend { AL_STORE_BACKEND_SQLITE = 0, AL_STORE_BACKEND_POSTGRES = 1 };

typedef struct al_store_choice {
    int backend;          /* enum al_store_backend */
    const char *dsn_file; /* postgres: file holding the libpq connection string */
    const char *dsn_env;  /* postgres: environment variable holding it */
} al_store_choice;

/* Copies `c` as the process-wide choice (NULL = SQLite). Not thread-safe: call before
 * any store is opened. */
int al_store_choose(const al_store_choice *c);
/* The choice written in a loaded table's `store` (targets/al_table.h). */
struct al_table;
int al_store_choose_table(const struct al_table *t);
/* 1 when the table's `store` differs from the current choice (serve: a restart is
 * needed to switch). */
int al_store_table_differs(const struct al_table *t);
/* The current choice (strings valid until the next al_store_choose). */
const al_store_choice *al_store_chosen(void);
/* Opens the chosen backend. SQLite: <state_dir>/identity.db. PostgreSQL: the database
 * of the DSN; without AL_STORE_CREATE a database without airlock's schema is
 * AL_ERR_NOTFOUND (the schema is created and migrated only by writers). */
int al_store_open(const char *state_dir, int flags, al_store **out);
/* Opens a given choice (store migrate opens two). */
int al_store_open_choice(const al_store_choice *c, const char *state_dir, int flags,
                         al_store **out);
/* A short human name of the chosen store for messages: "<state_dir>/identity.db" or
 * "PostgreSQL (DSN from FILE|$VAR)"; never the DSN. Written into buf. */
const char *al_store_describe(const al_store_choice *c, const char *state_dir, char *buf,
                              size_t n);

/* PostgreSQL (identity/al_store_pg.c). `dsn` is the libpq connection string (key=value
 * or postgresql:// URI); `origin` says where it came from for messages ("file F",
 * "$VAR"). The schema is versioned (table schema_version) and migrated in one
 * transaction under an advisory lock at an AL_STORE_CREATE open. */
int al_store_pg_open(const char *dsn, const char *origin, int flags, al_store **out);

/* Convenience wrappers over the vtable. */
static inline void al_store_close(al_store *s)
{
    if (s)
        s->ops->close(s);
}

#endif
