/* al_schema: the table's YAML schema as one table of rows (HAProxy keyword lists,
 * h2o configurators). Each row is a key path ("targets[].auth.scopes"), its kind,
 * the parser that stores it, its default and a one-line doc. The walker, the
 * unknown-key "did you mean" suggestions, `airlock check --schema` and the README's
 * table reference all read these rows, so adding a key is adding a row.
 *
 * Rows only parse shapes and store values; meaning across keys (URLs, ARNs, the
 * matrix, defaults that depend on other keys) is checked by al_table.c. */
#ifndef AL_SCHEMA_H
#define AL_SCHEMA_H

#include "al_table.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <yaml.h>

/* Row ids; al_schema_rows[id] is the row. The order is the documentation order. */
enum al_schema_id {
    AL_S_LISTEN,
    AL_S_LISTEN_PROXY,
    AL_S_LISTEN_TLS,
    AL_S_LISTEN_ADMIN,
    AL_S_STATE_DIR,
    AL_S_ENVIRONMENT,
    AL_S_STORE,
    AL_S_STORE_BACKEND,
    AL_S_STORE_DSN_FILE,
    AL_S_STORE_DSN_ENV,
    AL_S_INBOUND,
    AL_S_INBOUND_MODE,
    AL_S_INBOUND_JWT,
    AL_S_INBOUND_JWT_DISCOVERY_URL,
    AL_S_INBOUND_JWT_AUDIENCES,
    AL_S_INBOUND_JWT_CLIENTS,
    AL_S_INBOUND_JWT_CA_FILE,
    AL_S_INBOUND_JWT_ALLOW_PRIVATE,
    AL_S_INBOUND_JWT_CLOCK_SKEW,
    AL_S_INBOUND_USER_HEADER,
    AL_S_INBOUND_USER_HEADER_NAME,
    AL_S_INBOUND_USER_HEADER_TRUSTED,
    AL_S_IDENTITY,
    AL_S_IDENTITY_PUBLIC_BASE_URL,
    AL_S_POLICY,
    AL_S_POLICY_RULES,
    AL_S_R_NAME,
    AL_S_R_SUBJECTS,
    AL_S_R_CLIENTS,
    AL_S_R_CLAIMS,
    AL_S_R_TARGETS,
    AL_S_R_METHODS,
    AL_S_R_PATHS,
    AL_S_R_MCP_TOOLS,
    AL_S_EGRESS,
    AL_S_EGRESS_PASSTHROUGH,
    AL_S_AUDIT,
    AL_S_AUDIT_FILE,
    AL_S_AUDIT_START_RECORD_AFTER,
    AL_S_AUDIT_CHAIN,
    AL_S_AUDIT_CHECKPOINT_INTERVAL,
    AL_S_AUDIT_MAX_FILE_BYTES,
    AL_S_AUDIT_MAX_FILES,
    AL_S_AUDIT_ON_FAILURE,
    AL_S_LIMITS,
    AL_S_LIMITS_CONNECT_TIMEOUT,
    AL_S_LIMITS_FIRST_BYTE_TIMEOUT,
    AL_S_LIMITS_IDLE_TIMEOUT,
    AL_S_LIMITS_MAX_HEADER_BYTES,
    AL_S_LIMITS_MAX_BODY_BYTES,
    AL_S_LIMITS_DRAIN_TIMEOUT,
    AL_S_LIMITS_DRAIN_DELAY,
    AL_S_LIMITS_WORKERS,
    AL_S_LIMITS_CLIENT_HANDSHAKE_TIMEOUT,
    AL_S_LIMITS_CLIENT_HEADER_TIMEOUT,
    AL_S_LIMITS_CLIENT_BODY_TIMEOUT,
    AL_S_LIMITS_CLIENT_KEEPALIVE_TIMEOUT,
    AL_S_LIMITS_MAX_UPSTREAM_PER_CLIENT,
    AL_S_LIMITS_QUEUE_TIMEOUT,
    AL_S_LIMITS_SPOOL_MEMORY_BYTES,
    AL_S_LIMITS_RETRY_BODY_MAX_BYTES,
    AL_S_LIMITS_UPSTREAM_ENGINE,
    AL_S_HEADERS,
    AL_S_HEADERS_VIA,
    AL_S_HEADERS_XFF,
    AL_S_TARGETS,
    AL_S_T_NAME,
    AL_S_T_TYPE,
    AL_S_T_URL,
    AL_S_T_FUNCTION_ARN,
    AL_S_T_ENDPOINT,
    AL_S_T_ENVIRONMENT,
    AL_S_T_ALLOW_PRIVATE,
    AL_S_T_ALLOW_INSECURE,
    AL_S_T_SCRUB,
    AL_S_T_CA_FILE,
    AL_S_T_UPSTREAM,
    AL_S_T_UPSTREAM_PROTOCOL,
    AL_S_T_AUTH,
    AL_S_A_METHOD,
    AL_S_A_PROVIDER,
    AL_S_A_FALLBACK,
    AL_S_A_LOCATION,
    AL_S_A_NAME,
    AL_S_A_PREFIX,
    AL_S_A_SCOPES,
    AL_S_A_AUDIENCE,
    AL_S_A_CUSTOM_PARAMETERS,
    AL_S_A_RESOURCE,
    AL_S_A_DEFAULT_TOKEN_LIFETIME,
    AL_S_A_MAX_TOKEN_LIFETIME,
    AL_S_A_BINDING,
    AL_S_A_TOKEN_CACHE,
    AL_S_A_RETURN_URLS,
    AL_S_A_FORCE_AUTHENTICATION,
    AL_S_A_REGION,
    AL_S_A_SERVICE,
    AL_S_A_SOURCE,
    AL_S_A_ROLE_ARN,
    AL_S_A_EXTERNAL_ID,
    AL_S_A_MAX_BODY_BYTES,
    AL_S_COUNT
};

enum al_schema_kind {
    AL_SK_MAP,         /* a mapping whose keys are the rows below it */
    AL_SK_TARGET_LIST, /* the list of target mappings */
    AL_SK_STRING,
    AL_SK_BOOL,
    AL_SK_UINT,
    AL_SK_ADDRESS, /* "host:port" */
    AL_SK_ENUM,
    AL_SK_STRING_LIST,
    AL_SK_STRING_OR_LIST, /* a provider, or a pool of them */
    AL_SK_STRING_MAP,
    AL_SK_EMPTY_MAP, /* reserved section: must be empty for now */
    AL_SK_RULE_LIST, /* the list of policy rule mappings */
};

enum al_schema_scope { AL_SCOPE_TABLE, AL_SCOPE_TARGET, AL_SCOPE_RULE };

typedef struct al_schema_ctx al_schema_ctx;
typedef struct al_schema_row al_schema_row;
typedef int (*al_schema_parse_fn)(al_schema_ctx *c, const al_schema_row *row, yaml_node_t *v);

struct al_schema_row {
    const char *path; /* "listen.proxy", "targets[].auth.scopes" */
    enum al_schema_kind kind;
    al_schema_parse_fn parse; /* NULL for MAP and TARGET_LIST (the walker descends) */
    enum al_schema_scope scope;
    size_t offset;       /* of the field in al_table or al_target */
    size_t count_offset; /* lists: of the size_t count */
    uint64_t min, max;   /* UINT bounds */
    uint64_t def;        /* UINT/BOOL default, applied by al_schema_apply_defaults */
    unsigned methods;    /* auth fields: bit (1 << method) per method that uses it; 0 = all */
    const char *def_doc; /* default as shown in the docs ("" = required / none) */
    const char *doc;     /* one line */
};

extern const al_schema_row al_schema_rows[AL_S_COUNT];

/* Where a key and its value were seen while walking (line 0 = not seen). */
typedef struct al_schema_seen {
    al_mark key, value;
} al_schema_seen;

/* The walker's state; al_table.c owns it. Borrowed pointers unless noted. */
struct al_schema_ctx {
    const char *file; /* name used in diagnostics */
    yaml_document_t *doc;
    al_diags *diags;
    al_table *table;                 /* being built; the walker appends targets to it */
    al_target *target;               /* the target being walked, else NULL */
    al_policy_rule *rule;            /* the policy rule being walked, else NULL */
    al_schema_seen seen[AL_S_COUNT]; /* target rows are reset for each target */
    size_t max_targets;
    /* Called after each target mapping is walked (seen[] still holds its marks). */
    void (*on_target)(al_schema_ctx *c, yaml_node_t *node, void *arg);
    void *on_target_arg;
};

/* Diagnostics cap: past it the walk stops adding (one final "too many errors"). */
#define AL_SCHEMA_MAX_DIAGS 500

/* Adds "FILE:LINE:COL: error: ..." at node n (NULL = no position). */
void al_schema_error(al_schema_ctx *c, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void al_schema_error_at(al_schema_ctx *c, al_mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
al_mark al_schema_mark(const yaml_node_t *n);

/* Sets every UINT/BOOL row of table scope to its default. */
void al_schema_apply_defaults(al_table *t);
/* Walks the root mapping of the table. Errors go to c->diags. */
void al_schema_walk(al_schema_ctx *c, yaml_node_t *root);

/* The key's last component ("scopes" for "targets[].auth.scopes"). */
const char *al_schema_key(const al_schema_row *r);
/* "string", "list of strings"...: the kind as shown in docs and messages. */
const char *al_schema_kind_name(enum al_schema_kind k);
/* Levenshtein distance, case-insensitive, capped at 255. */
unsigned al_schema_distance(const char *a, const char *b);
/* The closest of `names` to `word` if close enough to be a likely typo, else NULL. */
const char *al_schema_suggest(const char *word, const char *const *names, size_t n);

/* The reference as a Markdown table (`airlock check --schema`, the README). */
void al_schema_print_markdown(FILE *out);

/* 1 if a plain scalar means null ("", "~", "null"). */
int al_schema_is_null(const yaml_node_t *n);

#endif
