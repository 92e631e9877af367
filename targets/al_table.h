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
    char *file;    /* owned */
    int line;      /* 1-based; 0 when unknown */
    int column;    /* 1-based; 0 when unknown */
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
/* Same with another word than "error" (e.g. "warning"). */
void al_diags_print_as(const al_diags *d, void *stdio_file, const char *kind);
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
    AL_AUTH_COUNT,
    /* A target without an `auth` block: forwarded with no credential (the data path
     * injects nothing when provider_count is 0). Not part of the matrix. */
    AL_AUTH_NONE = AL_AUTH_COUNT
};
enum al_key_location { AL_KEY_IN_HEADER, AL_KEY_IN_QUERY };
enum al_consent_binding_mode { AL_BINDING_LINK = 0, AL_BINDING_APP = 1 };

/* Where something was written in the table file (1-based; 0 = unknown). */
typedef struct al_mark {
    int line, column;
} al_mark;

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
    al_mark *provider_marks; /* owned; provider_count entries: where each was written */
    char *fallback_provider; /* owned; NULL if none: used after 401/403 */
    al_mark fallback_mark;
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
    char *resource;                    /* owned, 2lo only (RFC 8707); NULL = see al_token */
    uint32_t default_token_lifetime_s; /* 2lo; 0 = 3600 */
    uint32_t max_token_lifetime_s;     /* 2lo; 0 = 30 days */
    /* 2lo: 1 = the token lives in the identity store (sealed) and one replica fetches it
     * for all under the store's refresh lock (identity/al_token.h); 0 = per process */
    int token_cache_shared;
    /* oauth2_3lo: how a finished consent is bound to its user (identity/al_consent.h):
     * link (the single-use link is the capability) or app (the application completes the
     * session for its signed-in user; return_urls is the allow-list of where the browser
     * may be sent back, common/al_return_url.h) */
    enum al_consent_binding_mode binding;
    char **return_urls; /* owned */
    size_t return_url_count;
    al_mark *return_url_marks; /* owned; return_url_count entries: where each was written */
    int force_authentication; /* a new consent even when the user has tokens */
    /* iam */
    char *region;  /* owned */
    char *service; /* owned; derived for lambda ("lambda") and api_gateway ("execute-api") */
    /* owned; where the AWS credentials come from: "store" (the providers), "environment",
     * "container", "imds", "web_identity" (auth/al_aws_creds.h); NULL = "store" with a
     * provider, else "environment" */
    char *source;
    al_mark method_mark;     /* where auth.method's value was written */
    char *role_arn;          /* owned; assumed with STS AssumeRole on top, NULL = none */
    char *external_id;       /* owned; with role_arn */
    uint32_t max_body_bytes; /* signed bodies are buffered up to this; 413 past it; 6 MiB */
} al_auth;

/* targets[].upstream.protocol: auto = ALPN offers h2 and http/1.1 over TLS (HTTP/1.1
 * on http://); h1 = HTTP/1.1 only; h2 = HTTP/2 only (h2c with prior knowledge on
 * http://). */
enum { AL_UPSTREAM_PROTO_AUTO = 0, AL_UPSTREAM_PROTO_H1 = 1, AL_UPSTREAM_PROTO_H2 = 2 };

typedef struct al_target {
    char *name; /* owned; [a-z0-9][a-z0-9-]* */
    enum al_target_type type;
    char *url;          /* owned; normalised upstream base URL ("https://host[:port]/base") */
    char *scheme;       /* owned; "http" or "https" */
    char *host;         /* owned; lower-case, no brackets for IPv6 */
    uint16_t port;      /* explicit or scheme default */
    char *base_path;    /* owned; "" or "/prefix" without trailing slash */
    char *function_arn; /* owned; lambda only */
    char *endpoint;     /* owned; lambda only: Lambda API endpoint as written, NULL = regional */
    char *environment;  /* owned; the target's, else the table's, else "default" */
    al_mark environment_mark; /* where the target's environment was written, else its start */
    int allow_private_network;
    int allow_insecure_upstream;
    int scrub_echoed_credential; /* default 1: an echoed credential reaches the agent redacted */
    char *ca_file; /* owned; NULL = system CAs */
    int upstream_protocol; /* AL_UPSTREAM_PROTO_*: HTTP version towards the upstream */
    al_auth auth;
    int line, column; /* where the target was defined, for later diagnostics */
} al_target;

/* A listen address read into host and port ("*" as "0.0.0.0"); host points into the
 * address string (or a literal); host NULL = not read. */
typedef struct al_listen_addr {
    const char *host;
    size_t host_len;
    uint16_t port;
} al_listen_addr;

typedef struct al_listen {
    char *proxy; /* owned; "127.0.0.1:8080" style; NULL = disabled */
    char *tls;   /* owned */
    char *admin; /* owned */
    /* proxy and tls read once at load: the request path asks per request whether a
     * target is airlock's own address (a table built by hand leaves them unread) */
    al_listen_addr proxy_addr, tls_addr;
} al_listen;

typedef struct al_limits {
    uint32_t connect_timeout_ms;    /* default 5000 */
    uint32_t first_byte_timeout_ms; /* default 30000 */
    uint32_t idle_timeout_ms;       /* default 60000 */
    uint32_t max_header_bytes;      /* default 65536 -> 431 past it */
    uint64_t max_body_bytes;        /* default 0 = unlimited (streamed) */
    uint32_t drain_timeout_ms;      /* default 10000 */
    uint32_t drain_delay_ms;        /* lame duck before the drain; default 5000 */
    uint32_t workers;               /* default 0 = one per core */
    /* Client side (agent -> airlock), see README "Timeouts". */
    uint32_t client_handshake_timeout_ms; /* TLS handshake, h2 preface + SETTINGS; 10000 */
    uint32_t client_header_timeout_ms;    /* a complete request head; 20000 */
    uint32_t client_body_timeout_ms;      /* between request body bytes; 30000 */
    uint32_t client_keepalive_timeout_ms; /* idle between requests / no h2 stream; 30000 */
    /* Fairness, see README "Fairness limits". */
    uint32_t max_upstream_per_client; /* upstream transfers per client IP, host, worker; 64 */
    uint32_t queue_timeout_ms;        /* wait for an upstream slot before 503; 10000 */
    /* Request bodies kept for a retry, see README "Request bodies and retries". */
    uint32_t spool_memory_bytes;   /* of a spooled body in memory, the rest in a file; 1 MiB */
    uint32_t retry_body_max_bytes; /* largest body kept for a retry; 1 MiB, 0 = never */
    int upstream_engine;           /* AL_UPSTREAM_ENGINE_* (default native) */
} al_limits;

/* limits.upstream_engine: who talks to upstreams on the data path. */
enum { AL_UPSTREAM_ENGINE_NATIVE = 0, AL_UPSTREAM_ENGINE_CURL = 1 };

typedef struct al_egress_cfg {
    char **passthrough; /* owned; exact names and "*.suffix" for blind CONNECT tunnels */
    size_t passthrough_count;
} al_egress_cfg;

typedef struct al_audit_cfg {
    char *file; /* owned; NULL = <state_dir>/audit.log; relative: against the file's directory */
    al_mark file_mark; /* where audit.file was written (line 0 when it was not) */
    uint32_t start_record_after_ms; /* default 10000; 0 = no "request_start" records */
    int chain;                      /* default 1: seq/prev + signed checkpoints */
    uint32_t checkpoint_interval_ms; /* default 60000; 0 = rotation/reopen/shutdown only */
    uint32_t max_file_bytes;        /* default 0: no built-in rotation */
    uint32_t max_files;             /* default 10 */
    int on_failure;                 /* AL_AUDIT_ON_FAILURE_* (default continue) */
} al_audit_cfg;

enum { AL_AUDIT_ON_FAILURE_CONTINUE = 0, AL_AUDIT_ON_FAILURE_DENY = 1 };

typedef struct al_headers_cfg {
    int add_via;             /* default 1 */
    int add_x_forwarded_for; /* default 0: agents' addresses stay inside */
} al_headers_cfg;

/* inbound: how agents authenticate to airlock (README "Inbound authentication"). */
enum al_inbound_mode { AL_INBOUND_NONE, AL_INBOUND_JWT };
typedef struct al_inbound_cfg {
    enum al_inbound_mode mode; /* default none */
    al_mark mode_mark;
    /* mode jwt */
    char *discovery_url; /* owned; https URL of the issuer's openid-configuration */
    al_mark discovery_url_mark;
    char **allowed_audiences; /* owned; empty = aud not checked */
    size_t allowed_audience_count;
    char **allowed_clients; /* owned; empty = client_id/azp not checked */
    size_t allowed_client_count;
    char *ca_file; /* owned; NULL = system CAs, for the discovery and JWKS fetches */
    int allow_private_network; /* the issuer may be on a private address */
    uint32_t clock_skew_s;     /* default 60 */
    /* The end user of a request for a caller that acts for users (3LO): a header that
     * names the user, believed only from inbound principals whose client_id is listed. */
    char *user_header; /* owned; header name, NULL = none */
    al_mark user_header_mark;
    char **user_header_trusted; /* owned; client_id values */
    size_t user_header_trusted_count;
} al_inbound_cfg;

/* identity: what the control plane of OAuth on behalf of a user (3LO) needs. */
typedef struct al_identity_cfg {
    /* owned; what the 3LO authorization links and the callback (redirect_uri) are built
     * from; NULL = "http://" + listen.proxy (al_table_public_base_url) */
    char *public_base_url;
} al_identity_cfg;

/* One allow rule of `policy.rules` (README "Policy"). A rule applies to a principal
 * when every principal selector it has matches (any entry of each list); a request is
 * allowed when some applying rule names its target, method, path and MCP tool. Empty
 * method/path/tool lists mean "any". */
typedef struct al_policy_rule {
    char *name;       /* owned; NULL = none (then it is named by FILE:LINE) */
    char **subjects;  /* owned; `sub` values */
    size_t subject_count;
    char **clients; /* owned; client_id (else azp) values */
    size_t client_count;
    al_kv *claims; /* owned; claim name -> value (an array claim may hold it) */
    size_t claim_count;
    char **targets; /* owned; target names, "*" = every target */
    size_t target_count;
    al_mark *target_marks; /* owned; where each target name was written */
    char **methods;        /* owned; upper-case; empty = any */
    size_t method_count;
    char **paths; /* owned; segment patterns, README "Policy"; empty = any */
    size_t path_count;
    char **mcp_tools; /* owned; tools/call names; empty = any */
    size_t mcp_tool_count;
    int line, column; /* where the rule starts */
} al_policy_rule;

typedef struct al_policy_cfg {
    al_policy_rule *rules; /* owned; none = everything allowed (no policy) */
    size_t rule_count;
} al_policy_cfg;

/* store: which database holds the identity store (README "Running several replicas").
 * The PostgreSQL connection string holds a password: it is read from dsn_file or the
 * variable dsn_env at open time, never written in the table. */
enum { AL_STORE_SQLITE = 0, AL_STORE_POSTGRES = 1 };
typedef struct al_store_cfg {
    int backend;    /* AL_STORE_SQLITE (default) or AL_STORE_POSTGRES */
    char *dsn_file; /* owned; resolved against the table file's directory */
    char *dsn_env;  /* owned; an environment variable's name */
} al_store_cfg;

typedef struct al_table {
    atomic_int refs;
    char *path;        /* owned; file it was loaded from */
    char sha256[65];   /* hex SHA-256 of the bytes loaded ("" for _load_mem) */
    char *state_dir;   /* owned; NULL if the table names none; a relative path is resolved
                          against the table file's directory (as written for _load_mem) */
    char *environment; /* owned; default "default" */
    al_listen listen;
    al_limits limits;
    al_egress_cfg egress;
    al_audit_cfg audit;
    al_headers_cfg headers;
    al_inbound_cfg inbound;
    al_identity_cfg identity;
    al_policy_cfg policy;
    al_store_cfg store;
    al_target *targets; /* owned array */
    size_t target_count;
    struct al_router *router; /* owned; built at load time */
    al_diags warnings;        /* the table loads, but these look like mistakes (check prints
                                 them, serve logs them) */
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

/* Checks every provider a target names against the identity store: `fn` returns the
 * provider's environment, or NULL if the store has no such provider. Adds a
 * line:column diagnostic (at the provider value) for each missing provider and each
 * target whose environment differs from its provider's. Returns AL_OK when all
 * match, AL_ERR_CONFIG otherwise. */
typedef const char *(*al_provider_env_fn)(void *arg, const char *provider);
/* When `missing` is not NULL, a provider absent from the store is reported there and is
 * not an error (serve: it may be created later and is picked up live); environment
 * mismatches always are. */
int al_table_check_providers(const al_table *t, al_provider_env_fn fn, void *arg, al_diags *d,
                             al_diags *missing);

/* The command that creates provider `provider` for target `tg`: the create verb and
 * secret flags of its auth method, and --environment when the target's is not
 * "default", e.g. "airlock identity create-api-key-credential-provider --name k
 * --environment prod --api-key -". Written into buf (n bytes, truncated); returns buf. */
const char *al_table_create_hint(const al_target *tg, const char *provider, char *buf, size_t n);

/* identity.public_base_url, else "http://" + listen.proxy, else "https://" + listen.tls
 * (a wildcard listen address as loopback), without a trailing '/', into buf; "" when
 * there is none (the links are then paths). Returns buf. */
const char *al_table_public_base_url(const al_table *t, char *buf, size_t n);

/* Reads the listen address `listen` ("host:port", "[v6]:port", "*:port") into *out
 * (host pointing into listen, "*" as the literal "0.0.0.0"). AL_ERR_INVAL when it is
 * not one. */
int al_table_listen_addr(const char *listen, al_listen_addr *out);

/* Reads only the `state_dir` of a table file, resolved against the file's
 * directory, without validating the rest (the CLI's state-dir rule). Returns a
 * malloc'd string or NULL if the file has none or cannot be read. */
char *al_table_peek_state_dir(const char *path);
/* 1 when the table file has the top-level key `key` (read without validating). */
int al_table_peek_has(const char *path, const char *key);

#endif
