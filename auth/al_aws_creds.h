/* al_aws_creds: AWS credentials for SigV4 targets, from wherever the gateway gets them.
 *
 * Sources (al_aws_source):
 *  - STORE:       an `aws` provider of the identity store (the caller hands the base
 *                 credentials in through cfg.base, read from al_cred at each refresh);
 *  - ENVIRONMENT: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (read
 *                 once, when the provider is made);
 *  - CONTAINER:   the ECS/EKS-Pod-Identity container endpoint:
 *                 AWS_CONTAINER_CREDENTIALS_FULL_URI, or http://169.254.170.2 +
 *                 AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; Authorization from
 *                 AWS_CONTAINER_AUTHORIZATION_TOKEN or _TOKEN_FILE; JSON answer;
 *  - IMDS:        the EC2 instance metadata service, IMDSv2 only: PUT
 *                 /latest/api/token, then GET .../iam/security-credentials/[ROLE]
 *                 with the token (never a token-less GET); endpoint
 *                 AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254;
 *  - WEB_IDENTITY: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (+ AWS_ROLE_SESSION_NAME)
 *                 -> STS AssumeRoleWithWebIdentity (unsigned), as EKS IRSA sets up.
 * On top of any of them, cfg.role_arn (+ external_id) is assumed with a signed STS
 * AssumeRole made with the base credentials.
 *
 * These fetches are airlock's own: they do not go through the agents' egress guard
 * (the metadata address stays forbidden to agents, whose requests are checked there).
 * Endpoints come from the standard variables, and AIRLOCK_AWS_STS_ENDPOINT /
 * cfg.sts_endpoint for STS (default https://sts.amazonaws.com), so tests point them
 * at local fakes.
 *
 * Caching and single flight: the provider keeps one current set of credentials and
 * answers from it until `refresh_before_s` before its expiry (at most half its
 * lifetime); inside that window it still answers with the current set and starts one
 * background refresh; only when there is none (or it expired) do callers wait. One
 * fetch at a time, whatever the number of callers; a failed fetch is retried no
 * sooner than 1 s later (callers get the error meanwhile, or the still-valid set).
 *
 * Threads: network sources own one fetch thread that blocks in libcurl (easy
 * interface, bounded timeouts); no worker ever blocks. get() never blocks on the
 * network: it answers AL_OK with a reference, or registers the caller's waiter and
 * answers AL_ERR_AGAIN; the waiter's callback then runs once, on the fetch thread,
 * with the provider's lock held (it must only hand off, e.g. ev_async_send, and must
 * not call back into the provider); the caller then calls get() again.
 * al_aws_provider_cancel() guarantees the callback is not running and will not run.
 *
 * Secrets: credentials are immutable, refcounted, wiped when the last reference goes.
 * Nothing here logs a secret, a token or a signature; errors carry a static detail. */
#ifndef AL_AWS_CREDS_H
#define AL_AWS_CREDS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum al_aws_source {
    AL_AWS_SRC_STORE,
    AL_AWS_SRC_ENVIRONMENT,
    AL_AWS_SRC_CONTAINER,
    AL_AWS_SRC_IMDS,
    AL_AWS_SRC_WEB_IDENTITY,
};

/* "store", "environment", "container", "imds", "web_identity"; NULL if out of range. */
const char *al_aws_source_name(enum al_aws_source s);
/* AL_OK and *out for one of the names above; AL_ERR_INVAL otherwise. */
int al_aws_source_parse(const char *name, enum al_aws_source *out);

typedef struct al_aws_credentials {
    atomic_int refs;
    char *access_key_id;
    unsigned char *secret;
    size_t secret_len;
    unsigned char *token; /* NULL: long-term credentials */
    size_t token_len;
    int64_t expires_at; /* unix seconds; 0 = does not expire */
    const char *source; /* static: "store", "environment", ..., "assume_role" */
} al_aws_credentials;

/* New credentials (refs = 1), copies of the arguments. token may be NULL. */
int al_aws_credentials_new(const char *akid, const unsigned char *secret, size_t secret_len,
                           const unsigned char *token, size_t token_len, int64_t expires_at,
                           const char *source, al_aws_credentials **out);
al_aws_credentials *al_aws_credentials_ref(al_aws_credentials *c);
void al_aws_credentials_unref(al_aws_credentials *c);

/* Credentials from an `aws` provider of the store (identity/al_cred.h view: the
 * secret access key, the optional session token, accessKeyId in config_json).
 * AL_ERR_INVAL when it is not an aws provider or has no accessKeyId. */
struct al_secret_view;
int al_aws_credentials_from_view(const struct al_secret_view *v, al_aws_credentials **out);

/* Parsers (exposed for tests and fuzzing). now is used for a missing expiry. */
/* The container endpoint's and IMDS's JSON: AccessKeyId, SecretAccessKey, Token,
 * Expiration (RFC 3339); IMDS's "Code" must be "Success" when present. */
int al_aws_parse_json_credentials(const char *body, size_t len, const char *source,
                                  al_aws_credentials **out);
/* STS AssumeRole / AssumeRoleWithWebIdentity XML: <Credentials> AccessKeyId,
 * SecretAccessKey, SessionToken, Expiration. An <Error> document is AL_ERR_PERM. */
int al_aws_parse_sts_xml(const char *body, size_t len, const char *source,
                         al_aws_credentials **out);
/* RFC 3339 UTC ("2026-11-29T19:00:00Z", fractional seconds and offsets accepted) to
 * unix seconds; AL_ERR_INVAL otherwise. */
int al_aws_parse_time(const char *s, size_t len, int64_t *out);

typedef struct al_aws_provider al_aws_provider;

typedef struct al_aws_provider_cfg {
    enum al_aws_source source;
    const char *role_arn;     /* optional: assumed through STS AssumeRole on top */
    const char *external_id;  /* optional, with role_arn */
    const char *session_name; /* default "airlock" */
    const char
        *sts_endpoint;      /* default $AIRLOCK_AWS_STS_ENDPOINT, else https://sts.amazonaws.com */
    const char *sts_region; /* default "us-east-1" */
    const char *ca_file; /* CA bundle for the HTTPS fetches; default $AWS_CA_BUNDLE, else system */
    uint32_t refresh_before_s; /* default 300 */
    uint32_t timeout_ms;       /* one fetch, default 5000 */
    /* STORE: the base credentials now (a new reference), or an error. */
    int (*base)(void *arg, al_aws_credentials **out);
    void *base_arg;
    /* Tests: environment lookup (NULL = getenv) and clock (NULL = time()). */
    const char *(*getenv_fn)(const char *name);
    int64_t (*now_fn)(void *arg);
    void *now_arg;
} al_aws_provider_cfg;

/* Reads the environment the source needs now: AL_ERR_CONFIG with *detail saying
 * which variable is missing (static text). No network yet. */
int al_aws_provider_new(const al_aws_provider_cfg *cfg, al_aws_provider **out, const char **detail);
void al_aws_provider_free(al_aws_provider *p);

/* A caller's place in the wait list (caller-owned, e.g. inside its request). */
typedef struct al_aws_waiter {
    struct al_aws_waiter *next, *prev;
    void (*done)(void *arg, int rc);
    void *arg;
    int queued;
} al_aws_waiter;

/* AL_OK: *out is a new reference. AL_ERR_AGAIN: w is queued, its done() runs once
 * with AL_OK (call get again) or the error. Other errors (no waiting): the last fetch
 * failed less than 1 s ago (AL_ERR_PERM, AL_ERR_IO, AL_ERR_TIMEOUT, AL_ERR_PROTO),
 * *detail says why (static, no secret). w may be NULL: then AL_ERR_AGAIN queues
 * nothing (the fetch still starts). */
int al_aws_provider_get(al_aws_provider *p, al_aws_credentials **out, al_aws_waiter *w,
                        void (*done)(void *arg, int rc), void *arg, const char **detail);
/* Removes w if queued; when this returns, w's done() is not running and never will. */
void al_aws_provider_cancel(al_aws_provider *p, al_aws_waiter *w);
/* Fetches made so far (tests: single flight). */
uint64_t al_aws_provider_fetches(al_aws_provider *p);
/* The source's name for the audit ("environment", ... or "assume_role" on top). */
const char *al_aws_provider_source(const al_aws_provider *p);

#endif
