/* al_table: the target table — loading, validation and the immutable snapshot.
 *
 * al_table_load() parses a YAML file with libyaml, checks every key against the
 * schema (al_schema rows), every target against the embedded type/method matrix,
 * and builds an immutable, reference-counted snapshot. `serve` holds one pointer to
 * the current snapshot and swaps it atomically on reload; a request takes a
 * reference (al_table_ref) for its lifetime, so an old table lives until its last
 * request ends.
 *
 * Errors are collected, not returned on the first one: al_diags holds every
 * "FILE:LINE:COLUMN: error: message" found in one run.
 *
 * Ownership: a snapshot owns every string and array reachable from it. */
#ifndef AL_TABLE_H
#define AL_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct al_router; /* targets/al_router.h */

/* ---- diagnostics ---------------------------------------------------------- */

typedef struct al_diag {
    char *file; /* owned */
    int line;   /* 1-based; 0 when unknown */
    int column; /* 1-based; 0 when unknown */
    char *message; /* owned; never contains a secret */
} al_diag;

typedef struct al_diags {
    al_diag *items; /* owned */
    size_t count;
    size_t cap;
} al_diags;

void al_diags_init(al_diags *d);
void al_diags_add(al_diags *d, const char *file, int line, int column, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Prints every diagnostic as "FILE:LINE:COLUMN: error: message\n". */
void al_diags_print(const al_diags *d, void *stdio_file);
void al_diags_free(al_diags *d);

/* ---- the table ------------------------------------------------------------ */

/* Indices into the matrix; the names come from targets/matrix.yaml. */
enum al_target_type {
    AL_TYPE_LAMBDA,
    AL_TYPE_API_GATEWAY,
    AL_TYPE_OPENAPI,
    AL_TYPE_SMITHY,
    AL_TYPE_MCP_SERVER,
    AL_TYPE_COUNT
};
enum al_auth_method {
    AL_AUTH_IAM,
    AL_AUTH_OAUTH2_2LO,
    AL_AUTH_OAUTH2_3LO,
    AL_AUTH_API_KEY,
    AL_AUTH_COUNT
};
enum al_key_location { AL_KEY_IN_HEADER, AL_KEY_IN_QUERY };

typedef struct al_kv {
    char *key;   /* owned */
    char *value; /* owned */
} al_kv;

typedef struct al_auth {
    enum al_auth_method method;
    /* The credential provider(s) in the identity store. More than one = a pool
     * used round-robin (identity/al_cred.h selects). NULL/0 for iam without one. */
    char **providers; /* owned array of owned strings */
    size_t provider_count;
    char *fallback_provider; /* owned; NULL if none: used after 401/403 */
    /* api_key */
    enum al_key_location location;
    char *name;   /* header or query parameter name; default "Authorization" / "api_key" */
    char *prefix; /* default "Bearer " for Authorization, "" otherwise */
    /* oauth2_2lo / oauth2_3lo */
    char **scopes; /* owned */
    size_t scope_count;
    char *audience; /* owned, 2lo only */
    al_kv *custom_parameters;
    size_t custom_parameter_count;
    /* iam */
    char *region;  /* owned */
    char *service; /* owned; derived for lambda ("lambda") and api_gateway ("execute-api") */
} al_auth;

typedef struct al_target {
    char *name; /* owned; [a-z0-9][a-z0-9-]* */
    enum al_target_type type;
    char *url;         /* owned; normalised upstream base URL ("https://host[:port]/base") */
    char *scheme;      /* owned; "http" or "https" */
    char *host;        /* owned; lower-case, no brackets for IPv6 */
    uint16_t port;     /* explicit or scheme default */
    char *base_path;   /* owned; "" or "/prefix" without trailing slash */
    char *function_arn; /* owned; lambda only */
    char *environment;  /* owned; the target's, else the table's, else "default" */
    int allow_private_network;
    int allow_insecure_upstream;
    char *ca_file; /* owned; NULL = system CAs */
    al_auth auth;
    int line, column; /* where the target was defined, for later diagnostics */
} al_target;

typedef struct al_listen {
    char *proxy; /* owned; "127.0.0.1:8080" style; NULL = disabled */
    char *tls;   /* owned */
    char *admin; /* owned */
} al_listen;

typedef struct al_limits {
    uint32_t connect_timeout_ms;     /* default 5000 */
    uint32_t first_byte_timeout_ms;  /* default 30000 */
    uint32_t idle_timeout_ms;        /* default 60000 */
    uint32_t max_header_bytes;       /* default 65536 -> 431 past it */
    uint64_t max_body_bytes;         /* default 0 = unlimited (streamed) */
    uint32_t drain_timeout_ms;       /* default 10000 */
    uint32_t workers;                /* default 0 = one per core */
} al_limits;

typedef struct al_egress_cfg {
    char **passthrough; /* owned; exact names and "*.suffix" for blind CONNECT tunnels */
    size_t passthrough_count;
} al_egress_cfg;

typedef struct al_audit_cfg {
    char *file; /* owned; NULL = <state_dir>/audit.log */
} al_audit_cfg;

typedef struct al_headers_cfg {
    int add_via;             /* default 1 */
    int add_x_forwarded_for; /* default 0: agents' addresses stay inside */
} al_headers_cfg;

typedef struct al_table {
    atomic_int refs;
    char *path;        /* owned; file it was loaded from */
    char *state_dir;   /* owned; as written (relative to the file's directory when relative) */
    char *environment; /* owned; default "default" */
    al_listen listen;
    al_limits limits;
    al_egress_cfg egress;
    al_audit_cfg audit;
    al_headers_cfg headers;
    al_target *targets; /* owned array */
    size_t target_count;
    struct al_router *router; /* owned; built at load time */
} al_table;

/* Loads and validates `path`. On success *out is a new snapshot with one reference
 * and `diags` is empty; on failure returns AL_ERR_CONFIG (or IO/NOMEM) with every
 * problem in `diags` and *out untouched. */
int al_table_load(const char *path, al_table **out, al_diags *diags);
/* Same, from memory (fuzzing, tests); `name` is used in diagnostics. */
int al_table_load_mem(const char *name, const char *data, size_t len, al_table **out,
                      al_diags *diags);

al_table *al_table_ref(al_table *t);
void al_table_unref(al_table *t); /* frees on the last reference; NULL is fine */

/* The names used in YAML and output. */
const char *al_target_type_name(enum al_target_type t);
const char *al_auth_method_name(enum al_auth_method m);

/* Reads only the `state_dir` of a table file, resolved against the file's
 * directory, without validating the rest (the CLI's state-dir rule). Returns a
 * malloc'd string or NULL if the file has none or cannot be read. */
char *al_table_peek_state_dir(const char *path);

#endif
