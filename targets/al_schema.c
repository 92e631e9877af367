/* al_schema: the rows of the table schema, their parsers and the walker.
 *
 * Owns: al_schema_rows (one row per YAML key), the shape parsers that store a
 * value into al_table / al_target through the row's offset, the walker that matches
 * keys to rows (unknown keys get a did-you-mean from the sibling rows), and the
 * Markdown reference printed by `airlock check --schema`.
 *
 * Invariants: a parser stores only after the value's shape is right, so a failed
 * key leaves the field at its default and owns nothing new; a key seen twice in one
 * mapping is reported and parsed once (no leak, no silent override). Every
 * collection a file can grow has a limit (keys per mapping, list items, string
 * length), so a hostile file costs bounded memory and time. */
#include "al_schema.h"
#include "al_matrix.h"
#include "common/al_err.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STRING 4096 /* longest scalar we store */
#define MAX_LIST   256  /* items in a list of strings / a provider pool */
#define MAX_KEYS   256  /* keys in one mapping */

#define M(m)     (1u << (m))
#define M_APIKEY M(AL_AUTH_API_KEY)
#define M_OAUTH  (M(AL_AUTH_OAUTH2_2LO) | M(AL_AUTH_OAUTH2_3LO))
#define M_IAM    M(AL_AUTH_IAM)
#define TBL(f)   AL_SCOPE_TABLE, offsetof(al_table, f)
#define TGT(f)   AL_SCOPE_TARGET, offsetof(al_target, f)
#define RUL(f)   AL_SCOPE_RULE, offsetof(al_policy_rule, f)
#define MAX_RULES 4096 /* policy rules in one table */

static int parse_string(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_bool(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_uint(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_address(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_string_list(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_return_urls(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_providers(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_passthrough(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_string_map(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_type(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_method(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_location(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_upstream_protocol(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_binding(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_token_cache(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_inbound_mode(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_rule_targets(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_rule_methods(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_rule_paths(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_fallback(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_aws_source(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_audit_on_failure(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_store_backend(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);
static int parse_upstream_engine(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v);

const al_schema_row al_schema_rows[AL_S_COUNT] = {
    [AL_S_LISTEN] = {"listen", AL_SK_MAP, NULL, TBL(listen), 0, 0, 0, 0, 0, "",
                     "Listener addresses, each \"host:port\" (IPv6 as \"[::1]:8080\")."},
    [AL_S_LISTEN_PROXY] = {"listen.proxy", AL_SK_ADDRESS, parse_address, TBL(listen.proxy), 0, 0, 0,
                           0, 0, "off",
                           "Plain HTTP listener: forward proxy (HTTP_PROXY/HTTPS_PROXY, CONNECT) "
                           "and gateway mode (`/t/<name>/...`)."},
    [AL_S_LISTEN_TLS] = {"listen.tls", AL_SK_ADDRESS, parse_address, TBL(listen.tls), 0, 0, 0, 0, 0,
                         "off",
                         "TLS listener: the same protocols over TLS, certificate from airlock's "
                         "CA."},
    [AL_S_LISTEN_ADMIN] = {"listen.admin", AL_SK_ADDRESS, parse_address, TBL(listen.admin), 0, 0, 0,
                           0, 0, "off",
                           "Admin listener (health, metrics, OAuth callbacks); keep it on "
                           "loopback."},
    [AL_S_STATE_DIR] = {"state_dir", AL_SK_STRING, parse_string, TBL(state_dir), 0, 0, 0, 0, 0,
                        "`--state-dir`, `$AIRLOCK_STATE_DIR`, else `./.airlock`",
                        "Identity store, master key, CA and audit log; a relative path is "
                        "resolved against this file's directory."},
    [AL_S_ENVIRONMENT] = {"environment", AL_SK_STRING, parse_string, TBL(environment), 0, 0, 0, 0,
                          0, "`default`",
                          "Environment of targets that name none; a target uses only "
                          "providers of its own environment."},
    [AL_S_STORE] = {"store", AL_SK_MAP, NULL, TBL(store), 0, 0, 0, 0, 0, "",
                    "Where the identity store lives (README \"The identity store in PostgreSQL\")."},
    [AL_S_STORE_BACKEND] = {"store.backend", AL_SK_ENUM, parse_store_backend, TBL(store.backend),
                            0, 0, 0, 0, 0, "`sqlite`",
                            "`sqlite`: `<state_dir>/identity.db`, one host; `postgres`: a "
                            "PostgreSQL database shared by several replicas."},
    [AL_S_STORE_DSN_FILE] = {"store.dsn_file", AL_SK_STRING, parse_string, TBL(store.dsn_file), 0,
                             0, 0, 0, 0, "one of dsn_file, dsn_env for `postgres`",
                             "File holding the libpq connection string (with its password; "
                             "mode 0600); relative to this file's directory. Never the string "
                             "itself."},
    [AL_S_STORE_DSN_ENV] = {"store.dsn_env", AL_SK_STRING, parse_string, TBL(store.dsn_env), 0, 0,
                            0, 0, 0, "",
                            "Name of the environment variable holding the connection string."},
    [AL_S_INBOUND] = {"inbound", AL_SK_MAP, NULL, TBL(inbound), 0, 0, 0, 0, 0, "",
                      "How agents authenticate to airlock."},
    [AL_S_INBOUND_MODE] = {"inbound.mode", AL_SK_ENUM, parse_inbound_mode, TBL(inbound.mode), 0,
                           0, 0, 0, 0, "`none`",
                           "`none`: any client that reaches the listener (keep listeners on "
                           "loopback); `jwt`: a bearer JWT access token from `inbound.jwt`'s "
                           "issuer on every request."},
    [AL_S_INBOUND_JWT] = {"inbound.jwt", AL_SK_MAP, NULL, TBL(inbound), 0, 0, 0, 0, 0, "",
                          "The JWT issuer agents' tokens come from (mode `jwt`)."},
    [AL_S_INBOUND_JWT_DISCOVERY_URL] = {"inbound.jwt.discovery_url", AL_SK_STRING, parse_string,
                                        TBL(inbound.discovery_url), 0, 0, 0, 0, 0,
                                        "required for `jwt`",
                                        "The issuer's OpenID discovery document "
                                        "(`.../.well-known/openid-configuration`); its `issuer` "
                                        "must equal tokens' `iss`, its `jwks_uri` gives the "
                                        "keys."},
    [AL_S_INBOUND_JWT_AUDIENCES] = {"inbound.jwt.allowed_audiences", AL_SK_STRING_LIST,
                                    parse_string_list, TBL(inbound.allowed_audiences),
                                    offsetof(al_table, inbound.allowed_audience_count), 0, 0, 0,
                                    0, "[] (not checked)",
                                    "A token's `aud` must name one of these."},
    [AL_S_INBOUND_JWT_CLIENTS] = {"inbound.jwt.allowed_clients", AL_SK_STRING_LIST,
                                  parse_string_list, TBL(inbound.allowed_clients),
                                  offsetof(al_table, inbound.allowed_client_count), 0, 0, 0, 0,
                                  "[] (not checked)",
                                  "A token's `client_id` (else `azp`) must be one of these."},
    [AL_S_INBOUND_JWT_CA_FILE] = {"inbound.jwt.ca_file", AL_SK_STRING, parse_string,
                                  TBL(inbound.ca_file), 0, 0, 0, 0, 0, "system CAs",
                                  "CA bundle for the discovery and JWKS fetches; relative to "
                                  "this file's directory."},
    [AL_S_INBOUND_JWT_ALLOW_PRIVATE] = {"inbound.jwt.allow_private_network", AL_SK_BOOL,
                                        parse_bool, TBL(inbound.allow_private_network), 0, 0, 1,
                                        0, 0, "false",
                                        "The issuer may resolve to a private or loopback "
                                        "address (and may use http://)."},
    [AL_S_INBOUND_JWT_CLOCK_SKEW] = {"inbound.jwt.clock_skew_s", AL_SK_UINT, parse_uint,
                                     TBL(inbound.clock_skew_s), 0, 0, 600, 60, 0, "60",
                                     "Clock skew (s) allowed on a token's `exp` and `nbf`."},
    [AL_S_INBOUND_USER_HEADER] = {"inbound.user_header", AL_SK_MAP, NULL, TBL(inbound), 0, 0, 0, 0,
                                  0, "none",
                                  "For callers that act for end users (OAuth on behalf of a "
                                  "user, `oauth2_3lo`): a header naming the user, believed only "
                                  "from trusted clients."},
    [AL_S_INBOUND_USER_HEADER_NAME] = {"inbound.user_header.name", AL_SK_STRING, parse_string,
                                       TBL(inbound.user_header), 0, 0, 0, 0, 0, "required",
                                       "The header (e.g. `X-Airlock-User`); never forwarded. Sent "
                                       "by a client not listed below: 403 `policy_denied`."},
    [AL_S_INBOUND_USER_HEADER_TRUSTED] = {"inbound.user_header.trusted_clients", AL_SK_STRING_LIST,
                                          parse_string_list, TBL(inbound.user_header_trusted),
                                          offsetof(al_table, inbound.user_header_trusted_count), 0,
                                          0, 0, 0, "required",
                                          "Inbound principals (`client_id`, else `azp`) whose "
                                          "header is believed; their requests without it act "
                                          "for the token's own `iss` + `sub`."},
    [AL_S_IDENTITY] = {"identity", AL_SK_MAP, NULL, TBL(identity), 0, 0, 0, 0, 0, "",
                       "The control plane of OAuth on behalf of a user (3LO)."},
    [AL_S_IDENTITY_PUBLIC_BASE_URL] = {"identity.public_base_url", AL_SK_STRING, parse_string,
                                       TBL(identity.public_base_url), 0, 0, 0, 0, 0,
                                       "`http://` + `listen.proxy`",
                                       "airlock's URL as users' browsers reach it: consent links "
                                       "are `<base>/oauth2/authorize/<id>`, the provider's "
                                       "redirect URI `<base>/oauth2/callback`."},
    [AL_S_POLICY] = {"policy", AL_SK_MAP, NULL, TBL(policy), 0, 0, 0, 0, 0, "{}",
                     "Who may use what (README \"Policy\"); no rules = everything allowed."},
    [AL_S_POLICY_RULES] = {"policy.rules", AL_SK_RULE_LIST, NULL, TBL(policy.rules), 0, 0, 0, 0,
                           0, "[]",
                           "Allow rules; once there is one, a request no rule allows is "
                           "refused (403 `policy_denied`)."},
    [AL_S_R_NAME] = {"policy.rules[].name", AL_SK_STRING, parse_string, RUL(name), 0, 0, 0, 0, 0,
                     "`FILE:LINE`", "A label for explain, audit and refusals."},
    [AL_S_R_SUBJECTS] = {"policy.rules[].subjects", AL_SK_STRING_LIST, parse_string_list,
                         RUL(subjects), offsetof(al_policy_rule, subject_count), 0, 0, 0, 0,
                         "any", "The rule applies to tokens whose `sub` is one of these."},
    [AL_S_R_CLIENTS] = {"policy.rules[].clients", AL_SK_STRING_LIST, parse_string_list,
                        RUL(clients), offsetof(al_policy_rule, client_count), 0, 0, 0, 0, "any",
                        "... whose `client_id` (else `azp`) is one of these."},
    [AL_S_R_CLAIMS] = {"policy.rules[].claims", AL_SK_STRING_MAP, parse_string_map, RUL(claims),
                       offsetof(al_policy_rule, claim_count), 0, 0, 0, 0, "any",
                       "... whose claims have these values (an array claim, or a `scope` "
                       "string, may hold the value among others)."},
    [AL_S_R_TARGETS] = {"policy.rules[].targets", AL_SK_STRING_LIST, parse_rule_targets,
                        RUL(targets), offsetof(al_policy_rule, target_count), 0, 0, 0, 0,
                        "required", "Target names it allows; `\"*\"` = every target."},
    [AL_S_R_METHODS] = {"policy.rules[].methods", AL_SK_STRING_LIST, parse_rule_methods,
                        RUL(methods), offsetof(al_policy_rule, method_count), 0, 0, 0, 0, "any",
                        "HTTP methods it allows."},
    [AL_S_R_PATHS] = {"policy.rules[].paths", AL_SK_STRING_LIST, parse_rule_paths, RUL(paths),
                      offsetof(al_policy_rule, path_count), 0, 0, 0, 0, "any",
                      "Path patterns it allows, matched per segment on the normalised path "
                      "below the target: `*` = one segment, `**` = any number (last)."},
    [AL_S_R_MCP_TOOLS] = {"policy.rules[].mcp_tools", AL_SK_STRING_LIST, parse_string_list,
                          RUL(mcp_tools), offsetof(al_policy_rule, mcp_tool_count), 0, 0, 0, 0,
                          "any",
                          "`mcp_server` targets: the `tools/call` names it allows; `tools/list` "
                          "answers show only these."},
    [AL_S_EGRESS] = {"egress", AL_SK_MAP, NULL, TBL(egress), 0, 0, 0, 0, 0, "",
                     "Destinations beyond the targets."},
    [AL_S_EGRESS_PASSTHROUGH] = {"egress.passthrough", AL_SK_STRING_LIST, parse_passthrough,
                                 TBL(egress.passthrough),
                                 offsetof(al_table, egress.passthrough_count), 0, 0, 0, 0, "[]",
                                 "Hosts (exact or `*.suffix`) CONNECT may tunnel blindly: no "
                                 "interception, no credential, still egress-checked."},
    [AL_S_AUDIT] = {"audit", AL_SK_MAP, NULL, TBL(audit), 0, 0, 0, 0, 0, "", "The audit log."},
    [AL_S_AUDIT_FILE] = {"audit.file", AL_SK_STRING, parse_string, TBL(audit.file), 0, 0, 0, 0, 0,
                         "`<state_dir>/audit.log`",
                         "Audit log, one JSON record per line; relative to this file's "
                         "directory."},
    [AL_S_AUDIT_START_RECORD_AFTER] = {"audit.start_record_after_ms", AL_SK_UINT, parse_uint,
                                       TBL(audit.start_record_after_ms), 0, 0, 86400000, 10000,
                                       0, "10000",
                                       "A request still running after this long (ms) gets a "
                                       "`request_start` record; 0 = never."},
    [AL_S_AUDIT_CHAIN] = {"audit.chain", AL_SK_BOOL, parse_bool, TBL(audit.chain), 0, 0, 1, 1, 0,
                          "true",
                          "Hash-chain the records (`seq`, `prev`) and sign checkpoints, for "
                          "`airlock audit verify`; false writes plain lines."},
    [AL_S_AUDIT_CHECKPOINT_INTERVAL] = {"audit.checkpoint_interval_ms", AL_SK_UINT, parse_uint,
                                        TBL(audit.checkpoint_interval_ms), 0, 0, 86400000, 60000,
                                        0, "60000",
                                        "A signed checkpoint this often (ms) when records were "
                                        "written; also at rotation, reopen and shutdown. 0 = "
                                        "only then."},
    [AL_S_AUDIT_MAX_FILE_BYTES] = {"audit.max_file_bytes", AL_SK_UINT, parse_uint,
                                   TBL(audit.max_file_bytes), 0, 0, 4294967295u, 0, 0, "0",
                                   "Rotate the log before it passes this size (`file.1`, "
                                   "`file.2`, ...); 0 = never (logrotate + SIGUSR1)."},
    [AL_S_AUDIT_MAX_FILES] = {"audit.max_files", AL_SK_UINT, parse_uint, TBL(audit.max_files), 0,
                              1, 10000, 10, 0, "10",
                              "Rotated files kept; the oldest beyond this is deleted."},
    [AL_S_AUDIT_ON_FAILURE] = {"audit.on_failure", AL_SK_ENUM, parse_audit_on_failure,
                               TBL(audit.on_failure), 0, 0, 0, 0, 0, "`continue`",
                               "When the log cannot be written: `continue` (serve, count, log) "
                               "or `deny` (503 `audit_unavailable` until it can)."},
    [AL_S_LIMITS] = {"limits", AL_SK_MAP, NULL, TBL(limits), 0, 0, 0, 0, 0, "",
                     "Timeouts and sizes of the data path."},
    [AL_S_LIMITS_CONNECT_TIMEOUT] = {"limits.connect_timeout_ms", AL_SK_UINT, parse_uint,
                                     TBL(limits.connect_timeout_ms), 0, 1, 600000, 5000, 0, "5000",
                                     "Upstream connect timeout (ms); past it: 504."},
    [AL_S_LIMITS_FIRST_BYTE_TIMEOUT] = {"limits.first_byte_timeout_ms", AL_SK_UINT, parse_uint,
                                        TBL(limits.first_byte_timeout_ms), 0, 1, 3600000, 30000, 0,
                                        "30000",
                                        "Wait for the upstream's response head (ms); past it: "
                                        "504."},
    [AL_S_LIMITS_IDLE_TIMEOUT] = {"limits.idle_timeout_ms", AL_SK_UINT, parse_uint,
                                  TBL(limits.idle_timeout_ms), 0, 1, 86400000, 60000, 0, "60000",
                                  "No byte either way for this long (ms) ends an upstream "
                                  "exchange (504, or 408 when the agent is the one not "
                                  "sending or reading) or a CONNECT tunnel."},
    [AL_S_LIMITS_MAX_HEADER_BYTES] = {"limits.max_header_bytes", AL_SK_UINT, parse_uint,
                                      TBL(limits.max_header_bytes), 0, 1024, 16777216, 65536, 0,
                                      "65536", "Largest request head (bytes); past it: 431."},
    [AL_S_LIMITS_MAX_BODY_BYTES] = {"limits.max_body_bytes", AL_SK_UINT, parse_uint,
                                    TBL(limits.max_body_bytes), 0, 0, UINT64_C(1) << 50, 0, 0,
                                    "0 (unlimited, streamed)",
                                    "Largest request body (bytes); past it: 413."},
    [AL_S_LIMITS_DRAIN_TIMEOUT] = {"limits.drain_timeout_ms", AL_SK_UINT, parse_uint,
                                   TBL(limits.drain_timeout_ms), 0, 0, 3600000, 10000, 0, "10000",
                                   "On SIGTERM, time (ms) requests in flight get to finish."},
    [AL_S_LIMITS_DRAIN_DELAY] = {"limits.drain_delay_ms", AL_SK_UINT, parse_uint,
                                 TBL(limits.drain_delay_ms), 0, 0, 600000, 5000, 0, "5000",
                                 "On SIGTERM, time (ms) /readyz answers 503 draining while the "
                                 "listeners keep serving, before the drain starts (only once "
                                 "/readyz has been asked; 0: drain at once)."},
    [AL_S_LIMITS_WORKERS] = {"limits.workers", AL_SK_UINT, parse_uint, TBL(limits.workers), 0, 0,
                             1024, 0, 0, "0 (one per core)", "Worker threads."},
    [AL_S_LIMITS_CLIENT_HANDSHAKE_TIMEOUT] = {"limits.client_handshake_timeout_ms", AL_SK_UINT,
                                              parse_uint, TBL(limits.client_handshake_timeout_ms),
                                              0, 1, 600000, 10000, 0, "10000",
                                              "Agent's TLS handshake, and its HTTP/2 preface and "
                                              "first SETTINGS (ms); past it: closed."},
    [AL_S_LIMITS_CLIENT_HEADER_TIMEOUT] = {"limits.client_header_timeout_ms", AL_SK_UINT,
                                           parse_uint, TBL(limits.client_header_timeout_ms), 0, 1,
                                           600000, 20000, 0, "20000",
                                           "Time (ms) for a complete request head from its first "
                                           "byte (from accept on a new connection); past it: 408 "
                                           "and closed."},
    [AL_S_LIMITS_CLIENT_BODY_TIMEOUT] = {"limits.client_body_timeout_ms", AL_SK_UINT, parse_uint,
                                         TBL(limits.client_body_timeout_ms), 0, 1, 3600000, 30000,
                                         0, "30000",
                                         "Longest gap (ms) between request body bytes while "
                                         "airlock waits for them; past it: 408 (or the stream is "
                                         "reset once the response began)."},
    [AL_S_LIMITS_CLIENT_KEEPALIVE_TIMEOUT] = {"limits.client_keepalive_timeout_ms", AL_SK_UINT,
                                              parse_uint, TBL(limits.client_keepalive_timeout_ms),
                                              0, 1, 3600000, 30000, 0, "30000",
                                              "Idle time (ms) of an agent connection between "
                                              "requests (HTTP/2: with no stream, then GOAWAY); "
                                              "past it: closed."},
    [AL_S_LIMITS_MAX_UPSTREAM_PER_CLIENT] = {"limits.max_upstream_per_client", AL_SK_UINT,
                                             parse_uint, TBL(limits.max_upstream_per_client), 0, 0,
                                             128, 64, 0, "64",
                                             "Upstream requests one client address may have in "
                                             "flight to one upstream host, per worker (of 128 "
                                             "slots); more wait in the queue. 0: no cap."},
    [AL_S_LIMITS_QUEUE_TIMEOUT] = {"limits.queue_timeout_ms", AL_SK_UINT, parse_uint,
                                   TBL(limits.queue_timeout_ms), 0, 1, 3600000, 10000, 0, "10000",
                                   "Longest wait (ms) for an upstream slot; past it: 503 "
                                   "`upstream_busy` or `client_over_limit` with Retry-After."},
    [AL_S_LIMITS_SPOOL_MEMORY_BYTES] = {"limits.spool_memory_bytes", AL_SK_UINT, parse_uint,
                                        TBL(limits.spool_memory_bytes), 0, 0, 67108864, 1048576,
                                        0, "1048576",
                                        "Bytes of a kept request body held in memory; the rest "
                                        "goes to an unnamed, encrypted file in `$TMPDIR`."},
    [AL_S_LIMITS_RETRY_BODY_MAX_BYTES] = {"limits.retry_body_max_bytes", AL_SK_UINT, parse_uint,
                                          TBL(limits.retry_body_max_bytes), 0, 0, 1073741824,
                                          1048576, 0, "1048576",
                                          "Largest request body (Content-Length) kept so a "
                                          "401/403/429 can be retried with another key; a "
                                          "larger one is streamed, not retried. 0: never kept."},
    [AL_S_LIMITS_UPSTREAM_ENGINE] = {"limits.upstream_engine", AL_SK_ENUM, parse_upstream_engine,
                                     TBL(limits.upstream_engine), 0, 0, 0, 0, 0, "`native`",
                                     "Who talks to upstreams on the data path: `native` "
                                     "(airlock's own engine: HTTP/1.1 and HTTP/2, OpenSSL, its "
                                     "own pool) or `curl` (libcurl). The control plane always "
                                     "uses libcurl."},
    [AL_S_HEADERS] = {"headers", AL_SK_MAP, NULL, TBL(headers), 0, 0, 0, 0, 0, "",
                      "Headers airlock adds to forwarded requests."},
    [AL_S_HEADERS_VIA] = {"headers.via", AL_SK_BOOL, parse_bool, TBL(headers.add_via), 0, 0, 1, 1,
                          0, "true", "Add `Via: 1.1 airlock`."},
    [AL_S_HEADERS_XFF] = {"headers.x_forwarded_for", AL_SK_BOOL, parse_bool,
                          TBL(headers.add_x_forwarded_for), 0, 0, 1, 0, 0, "false",
                          "Add `X-Forwarded-For` with the agent's address (off: agents' "
                          "addresses stay inside)."},
    [AL_S_TARGETS] = {"targets", AL_SK_TARGET_LIST, NULL, TBL(targets), 0, 0, 0, 0, 0, "[]",
                      "The upstreams agents may reach; nothing else is reachable."},
    [AL_S_T_NAME] = {"targets[].name", AL_SK_STRING, parse_string, TGT(name), 0, 0, 0, 0, 0,
                     "required",
                     "Unique, `[a-z0-9][a-z0-9-]*`, at most 63 characters; gateway URL "
                     "`/t/<name>/`."},
    [AL_S_T_TYPE] = {"targets[].type", AL_SK_ENUM, parse_type, TGT(type), 0, 0, 0, 0, 0, "required",
                     "`lambda`, `api_gateway`, `openapi`, `smithy` or `mcp_server`."},
    [AL_S_T_URL] = {"targets[].url", AL_SK_STRING, parse_string, TGT(url), 0, 0, 0, 0, 0,
                    "required (not for lambda)",
                    "Upstream base URL `http(s)://host[:port][/base]`; no user info, query or "
                    "fragment; a plain base path (no dot segment or encoded `/` `\\`)."},
    [AL_S_T_FUNCTION_ARN] = {"targets[].function_arn", AL_SK_STRING, parse_string,
                             TGT(function_arn), 0, 0, 0, 0, 0, "required for lambda",
                             "`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`; the "
                             "upstream is `<endpoint>/2015-03-31/functions/<arn>`."},
    [AL_S_T_ENDPOINT] = {"targets[].endpoint", AL_SK_STRING, parse_string, TGT(endpoint), 0, 0, 0,
                         0, 0, "`https://lambda.<region>.amazonaws.com`",
                         "lambda only: Lambda API endpoint override."},
    [AL_S_T_ENVIRONMENT] = {"targets[].environment", AL_SK_STRING, parse_string, TGT(environment),
                            0, 0, 0, 0, 0, "the table's `environment`",
                            "The target's environment; its providers must belong to it."},
    [AL_S_T_ALLOW_PRIVATE] = {"targets[].allow_private_network", AL_SK_BOOL, parse_bool,
                              TGT(allow_private_network), 0, 0, 1, 0, 0, "false",
                              "Allow private, loopback and link-local upstream addresses."},
    [AL_S_T_ALLOW_INSECURE] = {"targets[].allow_insecure_upstream", AL_SK_BOOL, parse_bool,
                               TGT(allow_insecure_upstream), 0, 0, 1, 0, 0, "false",
                               "Allow an `http://` upstream (credentials in clear text)."},
    [AL_S_T_SCRUB] = {"targets[].scrub_echoed_credential", AL_SK_BOOL, parse_bool,
                      TGT(scrub_echoed_credential), 0, 0, 1, 1, 0, "true",
                      "Replace the injected credential with `[REDACTED]` where the upstream's "
                      "response echoes it (headers and body)."},
    [AL_S_T_CA_FILE] = {"targets[].ca_file", AL_SK_STRING, parse_string, TGT(ca_file), 0, 0, 0, 0,
                        0, "system CAs",
                        "PEM CA bundle that verifies the upstream; relative to this file's "
                        "directory."},
    [AL_S_T_UPSTREAM] = {"targets[].upstream", AL_SK_MAP, NULL, TGT(upstream_protocol), 0, 0, 0,
                         0, 0, "", "How airlock talks to the upstream (native engine)."},
    [AL_S_T_UPSTREAM_PROTOCOL] = {"targets[].upstream.protocol", AL_SK_ENUM,
                                  parse_upstream_protocol, TGT(upstream_protocol), 0, 0, 0, 0, 0,
                                  "`auto`",
                                  "HTTP version towards the upstream with `limits.upstream_engine: "
                                  "native`: `auto` (ALPN offers `h2` and `http/1.1` over TLS; "
                                  "HTTP/1.1 on `http://`), `h1` (HTTP/1.1 only) or `h2` (HTTP/2 "
                                  "only; with prior knowledge on `http://`). HTTP/2 carries many "
                                  "requests on one connection per upstream address."},
    [AL_S_T_AUTH] = {"targets[].auth", AL_SK_MAP, NULL, TGT(auth), 0, 0, 0, 0, 0,
                     "none (no credential)",
                     "Outbound auth; (type, method) must be allowed by the matrix."},
    [AL_S_A_METHOD] = {"targets[].auth.method", AL_SK_ENUM, parse_method, TGT(auth.method), 0, 0, 0,
                       0, 0, "required", "`iam` (SigV4), `oauth2_2lo`, `oauth2_3lo` or `api_key`."},
    [AL_S_A_PROVIDER] = {"targets[].auth.provider", AL_SK_STRING_OR_LIST, parse_providers,
                         TGT(auth.providers), offsetof(al_target, auth.provider_count), 0, 0, 0, 0,
                         "required (optional for iam)",
                         "Credential provider in the identity store, or a list of them (a pool, "
                         "used round-robin)."},
    [AL_S_A_FALLBACK] = {"targets[].auth.fallback_provider", AL_SK_STRING, parse_fallback,
                         TGT(auth.fallback_provider), 0, 0, 0, 0, 0, "none",
                         "Provider retried once after a 401/403 from the upstream."},
    [AL_S_A_LOCATION] = {"targets[].auth.location", AL_SK_ENUM, parse_location, TGT(auth.location),
                         0, 0, 0, 0, M_APIKEY, "`header`",
                         "`header` or `query`: where the key goes."},
    [AL_S_A_NAME] = {"targets[].auth.name", AL_SK_STRING, parse_string, TGT(auth.name), 0, 0, 0, 0,
                     M_APIKEY, "`Authorization` (header), `api_key` (query)",
                     "Header or query parameter name; not a hop-by-hop, framing or pseudo "
                     "header (`Host`, `Connection`, `Proxy-*`, `Content-Length`, ...)."},
    [AL_S_A_PREFIX] = {"targets[].auth.prefix", AL_SK_STRING, parse_string, TGT(auth.prefix), 0, 0,
                       0, 0, M_APIKEY, "`Bearer ` when name is Authorization, else empty",
                       "Text before the key in the header value."},
    [AL_S_A_SCOPES] = {"targets[].auth.scopes", AL_SK_STRING_LIST, parse_string_list,
                       TGT(auth.scopes), offsetof(al_target, auth.scope_count), 0, 0, 0, M_OAUTH,
                       "[]", "OAuth scopes to request."},
    [AL_S_A_AUDIENCE] = {"targets[].auth.audience", AL_SK_STRING, parse_string, TGT(auth.audience),
                         0, 0, 0, 0, M(AL_AUTH_OAUTH2_2LO), "none",
                         "`audience` parameter of the token request."},
    [AL_S_A_CUSTOM_PARAMETERS] = {"targets[].auth.custom_parameters", AL_SK_STRING_MAP,
                                  parse_string_map, TGT(auth.custom_parameters),
                                  offsetof(al_target, auth.custom_parameter_count), 0, 0, 0,
                                  M_OAUTH, "{}",
                                  "Extra parameters of the token / authorization request."},
    [AL_S_A_RESOURCE] = {"targets[].auth.resource", AL_SK_STRING, parse_string, TGT(auth.resource),
                         0, 0, 0, 0, M(AL_AUTH_OAUTH2_2LO),
                         "the target's `url` for `mcp_server`, else none",
                         "RFC 8707 `resource` of the token request: the API the token is for."},
    [AL_S_A_DEFAULT_TOKEN_LIFETIME] = {"targets[].auth.default_token_lifetime_s", AL_SK_UINT,
                                       parse_uint, TGT(auth.default_token_lifetime_s), 0, 1,
                                       31536000, 0, M(AL_AUTH_OAUTH2_2LO), "3600",
                                       "Lifetime assumed for a token answered without "
                                       "`expires_in`."},
    [AL_S_A_MAX_TOKEN_LIFETIME] = {"targets[].auth.max_token_lifetime_s", AL_SK_UINT, parse_uint,
                                   TGT(auth.max_token_lifetime_s), 0, 1, 315360000, 0,
                                   M(AL_AUTH_OAUTH2_2LO), "2592000 (30 days)",
                                   "A token living longer, or without expiry, is flagged in the "
                                   "audit log and warned about once per provider."},
    [AL_S_A_TOKEN_CACHE] = {"targets[].auth.token_cache", AL_SK_ENUM, parse_token_cache,
                            TGT(auth.token_cache_shared), 0, 0, 0, 0, M(AL_AUTH_OAUTH2_2LO),
                            "`local`",
                            "Where the access token is cached: `local` (per airlock process) "
                            "or `shared` (sealed in the identity store; with several replicas "
                            "one fetches it for all under the store's refresh lock and the "
                            "others read it)."},
    [AL_S_A_BINDING] = {"targets[].auth.binding", AL_SK_ENUM, parse_binding, TGT(auth.binding), 0,
                        0, 0, 0, M(AL_AUTH_OAUTH2_3LO), "`link`",
                        "How a consent is bound to its user: `link` (the single-use link is "
                        "the capability) or `app` (the application completes the session for "
                        "its signed-in user, `POST /oauth2/sessions/complete`)."},
    [AL_S_A_RETURN_URLS] = {"targets[].auth.return_urls", AL_SK_STRING_LIST, parse_return_urls,
                            TGT(auth.return_urls), offsetof(al_target, auth.return_url_count), 0,
                            0, 0, M(AL_AUTH_OAUTH2_3LO), "[] (required with `binding: app`)",
                            "Where the user's browser may be sent back with the session id "
                            "(`app` binding): https URLs (http for loopback), a path and "
                            "what is below it."},
    [AL_S_A_FORCE_AUTHENTICATION] = {"targets[].auth.force_authentication", AL_SK_BOOL,
                                     parse_bool, TGT(auth.force_authentication), 0, 0, 1, 0,
                                     M(AL_AUTH_OAUTH2_3LO), "false",
                                     "Ask for a new consent even when the user has tokens (each "
                                     "request without a finished consent gets `consent_required`)."},
    [AL_S_A_REGION] = {"targets[].auth.region", AL_SK_STRING, parse_string, TGT(auth.region), 0, 0,
                       0, 0, M_IAM, "lambda: from the ARN; api_gateway: from the execute-api host",
                       "AWS region to sign for (required when it cannot be derived)."},
    [AL_S_A_SERVICE] = {"targets[].auth.service", AL_SK_STRING, parse_string, TGT(auth.service), 0,
                        0, 0, 0, M_IAM, "`lambda` (lambda), `execute-api` (api_gateway)",
                        "SigV4 signing name (required for smithy)."},
    [AL_S_A_SOURCE] = {"targets[].auth.source", AL_SK_ENUM, parse_aws_source, TGT(auth.source), 0,
                       0, 0, 0, M_IAM, "`store` with a provider, else `environment`",
                       "Where the AWS credentials come from: `store` (the provider), "
                       "`environment`, `container`, `imds` (IMDSv2) or `web_identity`."},
    [AL_S_A_ROLE_ARN] = {"targets[].auth.role_arn", AL_SK_STRING, parse_string, TGT(auth.role_arn),
                         0, 0, 0, 0, M_IAM, "none",
                         "Role assumed with STS AssumeRole using the source's credentials."},
    [AL_S_A_EXTERNAL_ID] = {"targets[].auth.external_id", AL_SK_STRING, parse_string,
                            TGT(auth.external_id), 0, 0, 0, 0, M_IAM, "none",
                            "ExternalId of the AssumeRole call (needs role_arn)."},
    [AL_S_A_MAX_BODY_BYTES] = {"targets[].auth.max_body_bytes", AL_SK_UINT, parse_uint,
                               TGT(auth.max_body_bytes), 0, 0, UINT32_MAX, 6291456, M_IAM,
                               "6291456 (6 MiB)",
                               "Largest request body signed (buffered to hash it); past it: 413."},
};
/* parse_uint writes a uint64_t at limits.max_body_bytes' offset: no uint32_t target row
 * may share it. */
_Static_assert(offsetof(al_target, auth.max_body_bytes) != offsetof(al_table, limits.max_body_bytes),
               "auth.max_body_bytes shares limits.max_body_bytes' offset");

/* ---- diagnostics helpers --------------------------------------------------- */

al_mark al_schema_mark(const yaml_node_t *n)
{
    al_mark m = {0, 0};
    if (n) {
        m.line = (int)n->start_mark.line + 1;
        m.column = (int)n->start_mark.column + 1;
    }
    return m;
}

static void verror_at(al_schema_ctx *c, al_mark m, const char *fmt, va_list ap)
{
    char msg[1024];
    if (c->diags->count > AL_SCHEMA_MAX_DIAGS)
        return;
    if (c->diags->count == AL_SCHEMA_MAX_DIAGS) {
        al_diags_add(c->diags, c->file, m.line, m.column, "too many errors; stopping here");
        return;
    }
    vsnprintf(msg, sizeof msg, fmt, ap);
    al_diags_add(c->diags, c->file, m.line, m.column, "%s", msg);
}

void al_schema_error_at(al_schema_ctx *c, al_mark m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror_at(c, m, fmt, ap);
    va_end(ap);
}

void al_schema_error(al_schema_ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror_at(c, al_schema_mark(n), fmt, ap);
    va_end(ap);
}

/* ---- names ------------------------------------------------------------------ */

const char *al_schema_key(const al_schema_row *r)
{
    const char *dot = strrchr(r->path, '.');
    return dot ? dot + 1 : r->path;
}

const char *al_schema_kind_name(enum al_schema_kind k)
{
    switch (k) {
    case AL_SK_MAP:
        return "map";
    case AL_SK_TARGET_LIST:
        return "list of targets";
    case AL_SK_STRING:
        return "string";
    case AL_SK_BOOL:
        return "bool";
    case AL_SK_UINT:
        return "integer";
    case AL_SK_ADDRESS:
        return "host:port";
    case AL_SK_ENUM:
        return "enum";
    case AL_SK_STRING_LIST:
        return "list of strings";
    case AL_SK_STRING_OR_LIST:
        return "string or list";
    case AL_SK_STRING_MAP:
        return "map of strings";
    case AL_SK_EMPTY_MAP:
        return "map (empty)";
    case AL_SK_RULE_LIST:
        return "list of rules";
    }
    return "?";
}

unsigned al_schema_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned row[65];
    if (la > 64 || lb > 64)
        return 255;
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j];
            unsigned cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            unsigned best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb] > 255 ? 255 : row[lb];
}

const char *al_schema_suggest(const char *word, const char *const *names, size_t n)
{
    const char *best = NULL;
    unsigned best_d = 255;
    for (size_t i = 0; i < n; i++) {
        unsigned d = al_schema_distance(word, names[i]);
        if (d < best_d) {
            best_d = d;
            best = names[i];
        }
    }
    /* Close enough to be a typo: two edits, or a third of the name for long names. */
    size_t len = best ? strlen(best) : 0;
    if (best && best_d > 0 && (best_d <= 2 || best_d * 3 <= len) && best_d < len)
        return best;
    if (best && best_d == 0)
        return best; /* differs only in case */
    return NULL;
}

int al_schema_is_null(const yaml_node_t *n)
{
    if (!n)
        return 1;
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *s = (const char *)n->data.scalar.value;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* ---- storage ------------------------------------------------------------------ */

static void *field(al_schema_ctx *c, const al_schema_row *r, size_t off)
{
    char *base = r->scope == AL_SCOPE_TABLE    ? (char *)c->table
                 : r->scope == AL_SCOPE_TARGET ? (char *)c->target
                                               : (char *)c->rule;
    return base + off;
}

static const char *row_label(const al_schema_row *r)
{
    return r->scope != AL_SCOPE_TABLE ? al_schema_key(r) : r->path;
}

/* The scalar's text if v is a non-null scalar that fits, else reports and NULL. */
static const char *want_scalar(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    if (al_schema_is_null(v)) {
        al_schema_error(c, v, "'%s' has no value (expected %s)", row_label(r),
                        al_schema_kind_name(r->kind));
        return NULL;
    }
    if (v->type != YAML_SCALAR_NODE) {
        al_schema_error(c, v, "'%s' must be a %s, not a %s", row_label(r),
                        r->kind == AL_SK_STRING_OR_LIST ? "string" : al_schema_kind_name(r->kind),
                        v->type == YAML_MAPPING_NODE ? "mapping" : "list");
        return NULL;
    }
    if (v->data.scalar.length > MAX_STRING) {
        al_schema_error(c, v, "'%s' is too long (at most %d bytes)", row_label(r), MAX_STRING);
        return NULL;
    }
    if (strlen((const char *)v->data.scalar.value) != v->data.scalar.length) {
        al_schema_error(c, v, "'%s' contains a NUL byte", row_label(r));
        return NULL;
    }
    return (const char *)v->data.scalar.value;
}

static int store_string(al_schema_ctx *c, char **dst, const char *s)
{
    char *dup = strdup(s);
    if (!dup)
        return AL_ERR_NOMEM;
    free(*dst);
    *dst = dup;
    (void)c;
    return AL_OK;
}

static int parse_string(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    return store_string(c, field(c, r, r->offset), s);
}

static int parse_bool(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    int val;
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))
        val = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
        val = 0;
    else {
        al_schema_error(c, v, "'%s' must be true or false, not '%s'", row_label(r), s);
        return AL_ERR_CONFIG;
    }
    *(int *)field(c, r, r->offset) = val;
    return AL_OK;
}

static int parse_uint(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end || errno) {
        al_schema_error(c, v, "'%s' must be a whole number, not '%s'", row_label(r), s);
        return AL_ERR_CONFIG;
    }
    if (n < r->min || n > r->max) {
        al_schema_error(c, v, "'%s' must be between %llu and %llu, not %llu", row_label(r),
                        (unsigned long long)r->min, (unsigned long long)r->max, n);
        return AL_ERR_CONFIG;
    }
    if (r->offset == offsetof(al_table, limits.max_body_bytes))
        *(uint64_t *)field(c, r, r->offset) = n;
    else
        *(uint32_t *)field(c, r, r->offset) = (uint32_t)n;
    return AL_OK;
}

/* "host:port": IPv4, [IPv6] or a name; port 1-65535. */
static int parse_address(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    const char *colon = s[0] == '[' ? strstr(s, "]:") : strrchr(s, ':');
    const char *port = colon ? colon + (s[0] == '[' ? 2 : 1) : NULL;
    size_t hlen = colon ? (size_t)(colon - s) + (s[0] == '[') : 0;
    int ok = colon && hlen > 0 && port && *port;
    if (ok && s[0] != '[' && memchr(s, ':', hlen))
        ok = 0; /* a bare IPv6 literal needs brackets */
    for (size_t i = 0; ok && i < hlen; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(".-_[]:", s[i]))
            ok = 0;
    unsigned long p = 0;
    for (const char *q = port; ok && *q; q++) {
        if (!isdigit((unsigned char)*q) || (p = p * 10 + (unsigned)(*q - '0')) > 65535)
            ok = 0;
    }
    if (!ok || p == 0) {
        al_schema_error(c, v,
                        "'%s' must be \"host:port\" (e.g. 127.0.0.1:8080, [::1]:8080), not "
                        "'%s'",
                        row_label(r), s);
        return AL_ERR_CONFIG;
    }
    return store_string(c, field(c, r, r->offset), s);
}

static int parse_string_list(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    if (al_schema_is_null(v))
        return AL_OK;
    if (v->type != YAML_SEQUENCE_NODE) {
        al_schema_error(c, v, "'%s' must be a list of strings", row_label(r));
        return AL_ERR_CONFIG;
    }
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n > MAX_LIST) {
        al_schema_error(c, v, "'%s' has %zu items (at most %d)", row_label(r), n, MAX_LIST);
        return AL_ERR_CONFIG;
    }
    char **items = calloc(n ? n : 1, sizeof *items);
    size_t got = 0;
    int rc = items ? AL_OK : AL_ERR_NOMEM;
    for (size_t i = 0; rc == AL_OK && i < n; i++) {
        yaml_node_t *it = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        const char *s = want_scalar(c, r, it);
        if (!s)
            rc = AL_ERR_CONFIG;
        else if (!*s) {
            al_schema_error(c, it, "'%s' has an empty item", row_label(r));
            rc = AL_ERR_CONFIG;
        } else if (!(items[got++] = strdup(s)))
            rc = AL_ERR_NOMEM;
    }
    if (rc != AL_OK) {
        for (size_t i = 0; i < got; i++)
            free(items[i]);
        free(items);
        return rc;
    }
    *(char ***)field(c, r, r->offset) = items;
    *(size_t *)field(c, r, r->count_offset) = n;
    return AL_OK;
}

/* auth.return_urls: the list, and where each item was written (its check names the
 * element's line:column, not the list's). */
static int parse_return_urls(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    al_auth *a = &c->target->auth;
    int rc = parse_string_list(c, r, v);
    if (rc != AL_OK || !a->return_url_count)
        return rc;
    free(a->return_url_marks); /* a key given twice: the last one counts */
    if (!(a->return_url_marks = calloc(a->return_url_count, sizeof *a->return_url_marks)))
        return AL_ERR_NOMEM;
    for (size_t i = 0; i < a->return_url_count; i++)
        a->return_url_marks[i] =
            al_schema_mark(yaml_document_get_node(c->doc, v->data.sequence.items.start[i]));
    return AL_OK;
}

/* egress.passthrough: exact host names or "*.suffix", each checked where written. */
static int parse_passthrough(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    int bad = 0;
    if (v && v->type == YAML_SEQUENCE_NODE)
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
            yaml_node_t *n = yaml_document_get_node(c->doc, *it);
            if (!n || n->type != YAML_SCALAR_NODE)
                continue; /* parse_string_list reports the shape */
            const char *p = (const char *)n->data.scalar.value;
            const char *h = !strncmp(p, "*.", 2) ? p + 2 : p;
            size_t len = strlen(h);
            int ok = len > 0 && len <= 253 && h[0] != '.' && h[0] != '-';
            for (size_t i = 0; ok && i < len; i++)
                ok = isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-' || h[i] == '_';
            if (!ok) {
                al_schema_error(c, n,
                                "egress.passthrough: '%.80s' is not a host name or "
                                "\"*.suffix\"",
                                p);
                bad = 1;
            }
        }
    return bad ? AL_ERR_CONFIG : parse_string_list(c, r, v);
}

static int parse_providers(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    al_auth *a = &c->target->auth;
    yaml_node_t *one[1] = {v};
    yaml_node_t **nodes = one;
    size_t n = 1;
    if (v && v->type == YAML_SEQUENCE_NODE) {
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        if (n == 0 || n > MAX_LIST) {
            al_schema_error(c, v, "'provider' must name 1 to %d providers", MAX_LIST);
            return AL_ERR_CONFIG;
        }
        nodes = NULL;
    }
    char **names = calloc(n, sizeof *names);
    al_mark *marks = calloc(n, sizeof *marks);
    int rc = names && marks ? AL_OK : AL_ERR_NOMEM;
    for (size_t i = 0; rc == AL_OK && i < n; i++) {
        yaml_node_t *it =
            nodes ? nodes[i] : yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        const char *s = want_scalar(c, r, it);
        if (!s) {
            rc = AL_ERR_CONFIG;
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(names[j], s)) {
                al_schema_error(c, it, "provider '%s' is listed twice in the pool", s);
                rc = AL_ERR_CONFIG;
            }
        marks[i] = al_schema_mark(it);
        if (rc == AL_OK && !(names[i] = strdup(s)))
            rc = AL_ERR_NOMEM;
    }
    if (rc != AL_OK) {
        for (size_t i = 0; names && i < n; i++)
            free(names[i]);
        free(names);
        free(marks);
        return rc;
    }
    a->providers = names;
    a->provider_marks = marks;
    a->provider_count = n;
    return AL_OK;
}

static int parse_fallback(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    int rc = parse_string(c, r, v);
    if (rc == AL_OK)
        c->target->auth.fallback_mark = al_schema_mark(v);
    return rc;
}

static int parse_string_map(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    if (al_schema_is_null(v))
        return AL_OK;
    if (v->type != YAML_MAPPING_NODE) {
        al_schema_error(c, v, "'%s' must be a mapping of names to strings", row_label(r));
        return AL_ERR_CONFIG;
    }
    size_t n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    if (n > MAX_LIST) {
        al_schema_error(c, v, "'%s' has %zu entries (at most %d)", row_label(r), n, MAX_LIST);
        return AL_ERR_CONFIG;
    }
    al_kv *kv = calloc(n ? n : 1, sizeof *kv);
    size_t got = 0;
    int rc = kv ? AL_OK : AL_ERR_NOMEM;
    for (size_t i = 0; rc == AL_OK && i < n; i++) {
        yaml_node_pair_t *p = &v->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *val = yaml_document_get_node(c->doc, p->value);
        const char *ks = want_scalar(c, r, k);
        const char *vs = ks ? want_scalar(c, r, val) : NULL;
        if (!ks || !vs) {
            rc = AL_ERR_CONFIG;
            break;
        }
        for (size_t j = 0; j < got; j++)
            if (!strcmp(kv[j].key, ks)) {
                al_schema_error(c, k, "'%s' names '%s' twice", row_label(r), ks);
                rc = AL_ERR_CONFIG;
            }
        if (rc != AL_OK)
            break;
        kv[got].key = strdup(ks);
        kv[got].value = strdup(vs);
        got++;
        if (!kv[got - 1].key || !kv[got - 1].value)
            rc = AL_ERR_NOMEM;
    }
    if (rc != AL_OK) {
        for (size_t i = 0; i < got; i++) {
            free(kv[i].key);
            free(kv[i].value);
        }
        free(kv);
        return rc;
    }
    *(al_kv **)field(c, r, r->offset) = kv;
    *(size_t *)field(c, r, r->count_offset) = n;
    return AL_OK;
}

/* An enum value from `names`; reports with the accepted list and a suggestion. */
static int parse_enum(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v,
                      const char *const *names, size_t n, int *out)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, names[i])) {
            *out = (int)i;
            return AL_OK;
        }
    char list[256] = "";
    size_t off = 0;
    for (size_t i = 0; i < n && off < sizeof list; i++) {
        int w = snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    const char *near = al_schema_suggest(s, names, n);
    if (near)
        al_schema_error(c, v, "unknown %s '%s'; did you mean '%s'? (one of: %s)", al_schema_key(r),
                        s, near, list);
    else
        al_schema_error(c, v, "unknown %s '%s' (one of: %s)", al_schema_key(r), s, list);
    return AL_ERR_CONFIG;
}

static int parse_type(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *names[AL_TYPE_COUNT];
    for (int i = 0; i < AL_TYPE_COUNT; i++)
        names[i] = al_target_type_name((enum al_target_type)i);
    int t;
    int rc = parse_enum(c, r, v, names, AL_TYPE_COUNT, &t);
    if (rc == AL_OK)
        c->target->type = (enum al_target_type)t;
    return rc;
}

static int parse_method(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *names[AL_AUTH_COUNT];
    for (int i = 0; i < AL_AUTH_COUNT; i++)
        names[i] = al_auth_method_name((enum al_auth_method)i);
    int m;
    int rc = parse_enum(c, r, v, names, AL_AUTH_COUNT, &m);
    if (rc == AL_OK)
        c->target->auth.method = (enum al_auth_method)m;
    return rc;
}

static int parse_upstream_protocol(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"auto", "h1", "h2"};
    int i;
    int rc = parse_enum(c, r, v, names, 3, &i);
    if (rc == AL_OK)
        c->target->upstream_protocol = i == 1   ? AL_UPSTREAM_PROTO_H1
                                       : i == 2 ? AL_UPSTREAM_PROTO_H2
                                                : AL_UPSTREAM_PROTO_AUTO;
    return rc;
}

static int parse_location(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"header", "query"};
    int l;
    int rc = parse_enum(c, r, v, names, 2, &l);
    if (rc == AL_OK)
        c->target->auth.location = l ? AL_KEY_IN_QUERY : AL_KEY_IN_HEADER;
    return rc;
}

static int parse_binding(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"link", "app"};
    int b;
    int rc = parse_enum(c, r, v, names, 2, &b);
    if (rc == AL_OK)
        c->target->auth.binding = b ? AL_BINDING_APP : AL_BINDING_LINK;
    return rc;
}

static int parse_token_cache(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"local", "shared"};
    int b;
    int rc = parse_enum(c, r, v, names, 2, &b);
    if (rc == AL_OK)
        c->target->auth.token_cache_shared = b;
    return rc;
}

static int parse_aws_source(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"store", "environment", "container", "imds",
                                        "web_identity"};
    int i;
    int rc = parse_enum(c, r, v, names, sizeof names / sizeof names[0], &i);
    if (rc == AL_OK)
        rc = store_string(c, field(c, r, r->offset), names[i]);
    return rc;
}

static int parse_inbound_mode(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"none", "jwt"};
    int m;
    int rc = parse_enum(c, r, v, names, 2, &m);
    if (rc == AL_OK) {
        c->table->inbound.mode = m ? AL_INBOUND_JWT : AL_INBOUND_NONE;
        c->table->inbound.mode_mark = al_schema_mark(v);
    }
    return rc;
}

/* The rule's list at row r, after parse_string_list stored it (for in-place checks). */
static char **rule_list(al_schema_ctx *c, const al_schema_row *r, size_t *n)
{
    *n = *(size_t *)field(c, r, r->count_offset);
    return *(char ***)field(c, r, r->offset);
}

static yaml_node_t *seq_item(al_schema_ctx *c, yaml_node_t *v, size_t i)
{
    return yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
}

static int parse_rule_targets(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    int rc = parse_string_list(c, r, v);
    size_t n;
    rule_list(c, r, &n);
    if (rc != AL_OK || n == 0)
        return rc;
    /* the names are checked against the targets once all are known (al_table.c) */
    if (!(c->rule->target_marks = calloc(n, sizeof *c->rule->target_marks)))
        return AL_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        c->rule->target_marks[i] = al_schema_mark(seq_item(c, v, i));
    return AL_OK;
}

static int parse_upstream_engine(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"curl", "native"};
    int i;
    int rc = parse_enum(c, r, v, names, 2, &i);
    if (rc == AL_OK)
        *(int *)field(c, r, r->offset) =
            i ? AL_UPSTREAM_ENGINE_NATIVE : AL_UPSTREAM_ENGINE_CURL;
    return rc;
}

static int parse_audit_on_failure(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    const char *s = want_scalar(c, r, v);
    if (!s)
        return AL_ERR_CONFIG;
    int val;
    if (strcmp(s, "continue") == 0)
        val = AL_AUDIT_ON_FAILURE_CONTINUE;
    else if (strcmp(s, "deny") == 0)
        val = AL_AUDIT_ON_FAILURE_DENY;
    else {
        al_schema_error(c, v, "'%s' must be continue or deny, not '%s'", row_label(r), s);
        return AL_ERR_CONFIG;
    }
    *(int *)field(c, r, r->offset) = val;
    return AL_OK;
}

static int parse_store_backend(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    static const char *const names[] = {"sqlite", "postgres"};
    int b;
    int rc = parse_enum(c, r, v, names, 2, &b);
    if (rc == AL_OK)
        c->table->store.backend = b ? AL_STORE_POSTGRES : AL_STORE_SQLITE;
    return rc;
}

static int parse_rule_methods(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    int rc = parse_string_list(c, r, v);
    size_t n;
    char **m = rule_list(c, r, &n);
    for (size_t i = 0; rc == AL_OK && i < n; i++) {
        int ok = m[i][0] != 0 && strlen(m[i]) <= 32;
        for (char *p = m[i]; ok && *p; p++) {
            ok = isalpha((unsigned char)*p) || *p == '-' || *p == '_';
            *p = (char)toupper((unsigned char)*p); /* methods compare upper-case */
        }
        if (!ok)
            al_schema_error(c, seq_item(c, v, i), "methods: '%.40s' is not an HTTP method",
                            m[i]);
    }
    return rc;
}

/* A path pattern: "/" then segments; "*" and "**" only as whole segments, "**" last. */
static const char *path_pattern_problem(const char *p)
{
    if (p[0] != '/')
        return "must start with '/'";
    if (strpbrk(p, "?#"))
        return "cannot hold a query or fragment ('?', '#')";
    for (const char *s = p + 1; *s;) {
        size_t l = strcspn(s, "/");
        if (memchr(s, '*', l) && strncmp(s, "*", l) != 0 && strncmp(s, "**", l) != 0)
            return "'*' and '**' must be whole segments (\"/v1/*/items\", \"/files/**\")";
        if (l == 2 && !strncmp(s, "**", 2) && s[2])
            return "'**' must be the last segment";
        if ((l == 1 && s[0] == '.') || (l == 2 && !strncmp(s, "..", 2)))
            return "cannot hold '.' or '..' segments (paths are matched normalised)";
        s += l;
        if (*s == '/')
            s++;
    }
    return NULL;
}

static int parse_rule_paths(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    int rc = parse_string_list(c, r, v);
    size_t n;
    char **m = rule_list(c, r, &n);
    for (size_t i = 0; rc == AL_OK && i < n; i++) {
        const char *why = path_pattern_problem(m[i]);
        if (why)
            al_schema_error(c, seq_item(c, v, i), "paths: '%.80s' %s", m[i], why);
    }
    return rc;
}

void al_schema_apply_defaults(al_table *t)
{
    for (size_t i = 0; i < AL_S_COUNT; i++) {
        const al_schema_row *r = &al_schema_rows[i];
        if (r->scope != AL_SCOPE_TABLE)
            continue;
        char *p = (char *)t + r->offset;
        if (r->kind == AL_SK_BOOL)
            *(int *)p = (int)r->def;
        else if (r->kind == AL_SK_UINT && r->offset == offsetof(al_table, limits.max_body_bytes))
            *(uint64_t *)p = r->def;
        else if (r->kind == AL_SK_UINT)
            *(uint32_t *)p = (uint32_t)r->def;
    }
}

/* ---- the walker ----------------------------------------------------------------- */

/* Rows directly under `parent` ("" = top level, "targets[]" = a target). */
static int is_child(const al_schema_row *r, const char *parent, size_t plen)
{
    if (!plen)
        return strchr(r->path, '.') == NULL;
    return !strncmp(r->path, parent, plen) && r->path[plen] == '.' &&
           !strchr(r->path + plen + 1, '.');
}

static void walk_map(al_schema_ctx *c, const char *parent, yaml_node_t *map);

static void unknown_key(al_schema_ctx *c, const char *parent, yaml_node_t *k, const char *ks)
{
    const char *names[AL_S_COUNT];
    size_t n = 0, plen = strlen(parent);
    char known[512] = "";
    size_t off = 0;
    for (size_t i = 0; i < AL_S_COUNT; i++)
        if (is_child(&al_schema_rows[i], parent, plen)) {
            names[n++] = al_schema_key(&al_schema_rows[i]);
            int w =
                snprintf(known + off, sizeof known - off, "%s%s", off ? ", " : "", names[n - 1]);
            if (w > 0 && (size_t)w < sizeof known - off)
                off += (size_t)w;
        }
    const char *where = !plen                                   ? "at the top level"
                        : !strcmp(parent, "targets[]")          ? "in a target"
                        : !strcmp(parent, "targets[].auth")     ? "in 'auth'"
                        : !strcmp(parent, "targets[].upstream") ? "in 'upstream'"
                        : !strcmp(parent, "policy.rules[]")     ? "in a policy rule"
                                                                : NULL;
    char buf[128];
    if (!where) {
        snprintf(buf, sizeof buf, "in '%s'", parent);
        where = buf;
    }
    static const char *const dsn_words[] = {"dsn",     "url",      "uri",
                                            "conninfo", "password", "connection_string"};
    for (size_t i = 0; !strcmp(parent, "store") && i < sizeof dsn_words / sizeof dsn_words[0];
         i++)
        if (!strcmp(ks, dsn_words[i])) {
            al_schema_error(c, k,
                            "'store.%s': the connection string and its password never go in "
                            "the table (it is read by people and tools that must not see it); "
                            "put it in a file named by store.dsn_file (mode 0600) or an "
                            "environment variable named by store.dsn_env",
                            ks);
            return;
        }
    const char *near = al_schema_suggest(ks, names, n);
    if (near)
        al_schema_error(c, k, "unknown key '%s' %s; did you mean '%s'?", ks, where, near);
    else
        al_schema_error(c, k, "unknown key '%s' %s (known: %s)", ks, where, known);
}

/* The shared start of a list of mappings (targets, policy rules): a null value is an
 * empty list, anything but a sequence is an error, at most `max` items. Returns the
 * zeroed array of n elements of `elem` bytes (owned by the caller), or NULL with an
 * error reported (or for a null value). */
static void *list_begin(al_schema_ctx *c, yaml_node_t *v, const char *what, const char *shape,
                        size_t max, size_t elem, size_t *n_out)
{
    *n_out = 0;
    if (al_schema_is_null(v))
        return NULL;
    if (v->type != YAML_SEQUENCE_NODE) {
        al_schema_error(c, v, "'%s' must be a list of %s", what, shape);
        return NULL;
    }
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n > max) {
        al_schema_error(c, v, "too many %s: %zu (at most %zu)", what, n, max);
        return NULL;
    }
    void *a = calloc(n ? n : 1, elem);
    if (!a)
        al_schema_error(c, v, "out of memory");
    else
        *n_out = n;
    return a;
}

/* A new list item: keys seen in the previous item of this scope do not count. */
static void reset_seen(al_schema_ctx *c, int scope)
{
    for (size_t id = 0; id < AL_S_COUNT; id++)
        if ((int)al_schema_rows[id].scope == scope)
            memset(&c->seen[id], 0, sizeof c->seen[id]);
}

static void walk_targets(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    al_table *t = c->table;
    size_t n;
    t->targets = list_begin(c, v, "targets", "targets (\"- name: ...\")", c->max_targets,
                            sizeof *t->targets, &n);
    if (!t->targets)
        return;
    (void)r;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        if (!item || item->type != YAML_MAPPING_NODE) {
            al_schema_error(c, item, "each target must be a mapping (name: ..., type: ...)");
            continue;
        }
        al_target *tg = &t->targets[t->target_count++];
        tg->auth.method = AL_AUTH_NONE;
        tg->type = AL_TYPE_COUNT; /* = not given; the type's parser sets it */
        for (size_t k = 0; k < AL_S_COUNT; k++) /* target booleans that default to true */
            if (al_schema_rows[k].scope == AL_SCOPE_TARGET && al_schema_rows[k].kind == AL_SK_BOOL)
                *(int *)((char *)tg + al_schema_rows[k].offset) = (int)al_schema_rows[k].def;
        al_mark m = al_schema_mark(item);
        tg->line = m.line;
        tg->column = m.column;
        c->target = tg;
        reset_seen(c, AL_SCOPE_TARGET);
        walk_map(c, "targets[]", item);
        if (c->on_target)
            c->on_target(c, item, c->on_target_arg);
        c->target = NULL;
        if (c->diags->count > AL_SCHEMA_MAX_DIAGS)
            return;
    }
}

static void walk_rules(al_schema_ctx *c, const al_schema_row *r, yaml_node_t *v)
{
    al_policy_cfg *pc = &c->table->policy;
    size_t n;
    pc->rules = list_begin(c, v, "policy.rules", "rules (\"- targets: ...\")", MAX_RULES,
                           sizeof *pc->rules, &n);
    if (!pc->rules)
        return;
    (void)r;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        if (!item || item->type != YAML_MAPPING_NODE) {
            al_schema_error(c, item, "each policy rule must be a mapping (targets: ..., ...)");
            continue;
        }
        al_policy_rule *rule = &pc->rules[pc->rule_count++];
        al_mark m = al_schema_mark(item);
        rule->line = m.line;
        rule->column = m.column;
        c->rule = rule;
        reset_seen(c, AL_SCOPE_RULE);
        walk_map(c, "policy.rules[]", item);
        if (!c->seen[AL_S_R_TARGETS].key.line)
            al_schema_error(c, item,
                            "this policy rule names no targets (targets: [name, ...], or "
                            "[\"*\"] for every target)");
        c->rule = NULL;
        if (c->diags->count > AL_SCHEMA_MAX_DIAGS)
            return;
    }
}

static void walk_map(al_schema_ctx *c, const char *parent, yaml_node_t *map)
{
    size_t plen = strlen(parent);
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n > MAX_KEYS) {
        al_schema_error(c, map, "too many keys in one mapping (%zu, at most %d)", n, MAX_KEYS);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (c->diags->count > AL_SCHEMA_MAX_DIAGS)
            return;
        yaml_node_pair_t *p = &map->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
        if (!k || k->type != YAML_SCALAR_NODE) {
            al_schema_error(c, k, "keys must be plain names, not a %s",
                            k && k->type == YAML_MAPPING_NODE ? "mapping" : "list");
            continue;
        }
        const char *ks = (const char *)k->data.scalar.value;
        size_t id = AL_S_COUNT;
        for (size_t j = 0; j < AL_S_COUNT; j++)
            if (is_child(&al_schema_rows[j], parent, plen) &&
                !strcmp(al_schema_key(&al_schema_rows[j]), ks)) {
                id = j;
                break;
            }
        if (id == AL_S_COUNT) {
            unknown_key(c, parent, k, ks);
            continue;
        }
        const al_schema_row *r = &al_schema_rows[id];
        if (c->seen[id].key.line) {
            al_schema_error(c, k, "duplicate key '%s' (first at line %d)", ks,
                            c->seen[id].key.line);
            continue;
        }
        c->seen[id].key = al_schema_mark(k);
        c->seen[id].value = al_schema_mark(v);
        switch (r->kind) {
        case AL_SK_MAP:
            if (al_schema_is_null(v))
                break;
            if (v->type != YAML_MAPPING_NODE) {
                al_schema_error(c, v, "'%s' must be a mapping", ks);
                break;
            }
            walk_map(c, r->path, v);
            break;
        case AL_SK_TARGET_LIST:
            walk_targets(c, r, v);
            break;
        case AL_SK_RULE_LIST:
            walk_rules(c, r, v);
            break;
        default:
            r->parse(c, r, v);
            break;
        }
    }
}

void al_schema_walk(al_schema_ctx *c, yaml_node_t *root)
{
    if (al_schema_is_null(root))
        return; /* an empty file is an empty table */
    if (root->type != YAML_MAPPING_NODE) {
        al_schema_error(c, root, "the table must be a mapping (listen:, targets:, ...)");
        return;
    }
    walk_map(c, "", root);
}

/* ---- docs ------------------------------------------------------------------------ */

void al_schema_print_markdown(FILE *out)
{
    fprintf(out, "| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for (size_t i = 0; i < AL_S_COUNT; i++) {
        const al_schema_row *r = &al_schema_rows[i];
        fprintf(out, "| `%s` | %s | %s | %s", r->path, al_schema_kind_name(r->kind),
                r->def_doc && *r->def_doc ? r->def_doc : "", r->doc);
        if (r->methods) {
            fprintf(out, " Only for:");
            int first = 1;
            for (int m = 0; m < AL_AUTH_COUNT; m++)
                if (r->methods & (1u << m)) {
                    fprintf(out, "%s `%s`", first ? "" : ",",
                            al_auth_method_name((enum al_auth_method)m));
                    first = 0;
                }
            fprintf(out, ".");
        }
        fprintf(out, " |\n");
    }
}
