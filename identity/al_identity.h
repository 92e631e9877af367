/* al_identity: credential providers — the operator-facing side of the identity store.
 *
 * A provider has a name, a kind ("api_key", "oauth2", "aws"), an environment, an
 * optional description and tags, non-secret settings (OAuth endpoints and client
 * id, AWS access key id) and versioned secrets sealed by al_vault. update() adds a
 * version and makes it current at once; the previous one stays usable for a grace
 * period (default 24 h, 0 = cut off now) and is then wiped — its metadata stays as
 * history. Every change appends one audit line (never the secret).
 *
 * Who calls it: the CLI (`airlock identity ...`), `airlock check` and the table
 * loader (environment of a provider, through al_identity_provider_env_cb), and
 * al_cred (the serve-side cache) through al_identity_load_secrets(). */
#ifndef AL_IDENTITY_H
#define AL_IDENTITY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct al_identity al_identity;

#define AL_IDENTITY_DEFAULT_GRACE_S (24 * 3600)

enum al_identity_open_flags {
    /* Create the store (and a master key when none exists yet); needed to change it. */
    AL_IDENTITY_WRITE = 1,
    /* Load the master key so secrets can be opened (serve). Without it (and without
     * WRITE) only metadata is available and no key file is touched. */
    AL_IDENTITY_SECRETS = 2,
};

/* Opens the store under state_dir. Without WRITE a missing store is AL_ERR_NOTFOUND.
 * A master key that does not match the store is AL_ERR_KEY (message on stderr). */
int al_identity_open(const char *state_dir, int flags, al_identity **out);
/* Metadata only, never creates or generates anything: for `airlock check`. */
int al_identity_open_readonly(const char *state_dir, al_identity **out);
/* 3LO user tokens: {"userTokens": [{provider, user, scope, obtainedAt, expiresAt,
 * updatedAt, hasRefreshToken, fingerprint}]} (provider NULL = all), never a token; and
 * deleting one user's tokens (audited as identity.user_token_delete; AL_ERR_NOTFOUND). */
int al_identity_list_user_tokens(al_identity *id, const char *provider, json_t **out);
int al_identity_delete_user_token(al_identity *id, const char *provider, const char *user);
/* One user's tokens, opened (needs AL_IDENTITY_SECRETS or WRITE): for revoking them at
 * the provider before a delete. AL_ERR_NOTFOUND, AL_ERR_KEY (does not open). */
struct al_user_token;
int al_identity_load_user_token(al_identity *id, const char *provider, const char *user,
                                struct al_user_token *out);
/* Audits identity.user_token_revoke: end_user, token_type ("refresh_token" /
 * "access_token"), outcome ("revoked", "failed", "no_endpoint", "not_opened") and the
 * error sentence (never a token). */
void al_identity_audit_user_token_revoke(al_identity *id, const char *provider, const char *user,
                                         const char *token_type, const char *outcome,
                                         const char *error);
void al_identity_close(al_identity *id);

/* Callback for al_table_check_providers (targets/al_table.h): arg is an al_identity*;
 * returns the provider's environment or NULL. */
const char *al_identity_provider_env_cb(void *arg, const char *provider);

/* Checks every provider the table names against the store in state_dir: it must
 * belong to the target's environment, and (unless `missing` collects those instead)
 * exist. Returns AL_OK, AL_ERR_CONFIG with the problems in `d`, AL_ERR_NOTFOUND when
 * the state dir holds no store yet (nothing checked), or the error that kept the
 * store from opening. */
struct al_table;
struct al_diags;
int al_identity_check_table(const char *state_dir, const struct al_table *t, struct al_diags *d,
                            struct al_diags *missing);

/* Tests inject the clock (unix seconds). NULL restores time(). */
void al_identity_set_clock(al_identity *id, int64_t (*now)(void *arg), void *arg);

/* What create/update take. Strings are borrowed. */
typedef struct al_provider_spec {
    const char *name;
    const char *kind;        /* "api_key", "oauth2", "aws" */
    const char *environment; /* create: NULL = "default"; update: NULL = keep */
    const char *description; /* NULL = none / keep */
    json_t *tags;            /* object of strings; NULL = none / keep (borrowed) */
    /* oauth2: {"vendor", "discoveryUrl", "issuer", "authorizationEndpoint",
     * "tokenEndpoint", "clientId", "tokenEndpointAuthMethod", "tenantId", "caFile",
     * "allowInsecureEndpoints", "allowPrivateNetwork"};
     * aws: {"accessKeyId", "region"}. Borrowed; update: NULL = keep. */
    json_t *config;
    /* The secret: api key, OAuth client secret, AWS secret access key. update: NULL
     * keeps the current version (metadata-only change). */
    const unsigned char *secret;
    size_t secret_len;
    const unsigned char *session_token; /* aws only, optional */
    size_t session_token_len;
    int64_t grace_s; /* update: < 0 = default 24 h; 0 = previous version wiped now */
} al_provider_spec;

/* AL_ERR_EXISTS if the name is taken; AL_ERR_INVAL with a message on stderr for a bad
 * spec. *version_out (optional) gets the new version. */
int al_identity_create(al_identity *id, const al_provider_spec *spec, uint32_t *version_out);
int al_identity_update(al_identity *id, const al_provider_spec *spec, uint32_t *version_out);
/* kind NULL = any kind. AL_ERR_NOTFOUND if absent (or of another kind). */
int al_identity_delete(al_identity *id, const char *name, const char *kind);
/* Metadata of one provider as the CLI prints it (no secret). *out is a new reference. */
int al_identity_describe(al_identity *id, const char *name, const char *kind, json_t **out);
/* {"credentialProviders": [...]} of one kind (NULL = all). */
int al_identity_list(al_identity *id, const char *kind, json_t **out);
/* Wipes previous versions whose grace has passed, in every provider. */
int al_identity_purge_expired(al_identity *id);
/* Generates a new master key, rewraps every data key — the providers' versions and the
 * users' 3LO tokens — in one transaction with the new check value, then replaces the
 * key file atomically. A row that does not open with the current key (a provider's
 * version, or a user token: both wrapped key and sealed tokens are checked) aborts it
 * with nothing changed; a user token refreshed meanwhile makes it start again. On any
 * failure the old key keeps working. *rewrapped_out counts provider versions and user
 * tokens. */
int al_identity_rotate_master_key(al_identity *id, size_t *rewrapped_out);

/* The master key that opens `st` (its check value): the key file (state_dir's or
 * $AIRLOCK_MASTER_KEY_FILE), or the "<key>.new" a rotation interrupted after its commit
 * left (adopted: renamed over the key file). AL_ERR_KEY: no key file matches;
 * AL_ERR_NOTFOUND: nothing is sealed in the store yet, or no key file. For serve's
 * user-token vault, which follows rotations made by the CLI (on any replica). */
struct al_store;
struct al_vault;
int al_identity_store_vault(struct al_store *st, const char *state_dir, struct al_vault **out);
/* 1 when v is the master key `st` is sealed with, 0 when a rotation replaced it,
 * negative when the store cannot be read (AL_ERR_NOTFOUND: nothing sealed yet). */
int al_identity_vault_matches(struct al_store *st, const struct al_vault *v);

/* The store's change counter (bumped by every committed change, by any process). */
int al_identity_generation(al_identity *id, uint64_t *out);
/* The store under id (its change notifications, refresh locks, user tokens); owned by
 * id and used by id's thread only. */
struct al_store *al_identity_store(al_identity *id);

/* One usable (current or in-grace) secret version, decrypted. */
typedef struct al_identity_secret {
    char *name, *kind, *environment;
    char *config_json; /* non-secret settings, may be NULL */
    uint32_t version;
    int current;          /* 1 = the provider's current version */
    int64_t expires_at;   /* 0 = no expiry */
    unsigned char *value; /* the secret, NUL-terminated (not counted); wiped when freed */
    size_t len;
    unsigned char *session_token; /* aws, may be NULL */
    size_t session_token_len;
    int64_t created_at;       /* unix s the version was created */
    char fingerprint[32];     /* "sha256:" + 12 hex of the secret; never the secret */
    int64_t rotation_max_age; /* the provider's rotation_max_age in s; 0 = none */
} al_identity_secret;

/* Every usable version of every provider. Fails as a whole (AL_ERR_KEY) if any row
 * does not open: the caller keeps what it had. */
int al_identity_load_secrets(al_identity *id, al_identity_secret **out, size_t *n);
void al_identity_secrets_free(al_identity_secret *s, size_t n);

/* Opens every usable secret version and checks it against its stored fingerprint:
 * {"credentialProviders": [{"name", "version", "fingerprint", "ok"}...]}. AL_ERR_KEY
 * (with the document still filled in) if any does not open. Never includes a secret. */
int al_identity_verify(al_identity *id, json_t **out);

/* The vendor's refresh-token quirks for a user's authorization request (3LO): a row
 * of the vendor table (vendor = the provider config's "vendor"; NULL = CustomOauth2),
 * for al_consent_authz.quirks. NULL for an unknown vendor. */
struct al_consent_quirks;
const struct al_consent_quirks *al_identity_vendor_quirks(const char *vendor);

/* Kind names used on the CLI and in output. */
int al_identity_kind_valid(const char *kind);

#endif
