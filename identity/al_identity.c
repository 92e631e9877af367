/* al_identity: credential providers on top of al_store (records) and al_vault
 * (sealing). See al_identity.h.
 *
 * Invariants:
 *  - every change is one al_store put/del (one transaction): a crash leaves the old
 *    or the new provider, never a half-written one;
 *  - the store's meta "master_key_check" proves which master key sealed it: a store
 *    is never opened with the wrong key, and a key is generated only for a store
 *    that has sealed nothing yet;
 *  - plaintext secrets exist only in buffers this module wipes before freeing;
 *  - audit lines and errors carry names and versions, never secret bytes. */
#include "al_identity.h"
#include "al_consent.h"
#include "al_store.h"
#include "al_user_token.h"
#include "al_vault.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "policy/al_audit.h"
#include "targets/al_table.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK_KEY "master_key_check"

typedef struct env_entry {
    char *name, *environment;
} env_entry;

struct al_identity {
    char *state_dir;
    int flags;
    al_store *store;
    al_vault *vault; /* NULL until needed (metadata-only opens never load it) */
    int64_t (*now)(void *);
    void *now_arg;
    env_entry *envs; /* provider -> environment, loaded once for the table loader */
    size_t env_count;
    int envs_loaded;
};

static const char *const kinds[] = {"api_key", "oauth2", "aws"};

int al_identity_kind_valid(const char *kind)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (kind && strcmp(kind, kinds[i]) == 0)
            return 1;
    return 0;
}

/* ---- OAuth vendors: public endpoints, filled in so operators give only ids. ---- */

typedef struct vendor_row {
    const char *vendor, *issuer, *discovery, *authorization, *token;
    /* What the vendor needs in a user's authorization request (3LO) to hand out a
     * refresh token: merged by al_consent_open, never a branch per vendor. */
    al_consent_quirks refresh;
} vendor_row;

static const vendor_row vendors[] = {
    /* generic OpenID Connect (Core 11): offline_access, which needs prompt=consent;
     * only when the request is an OpenID one (a plain OAuth server may refuse it) */
    {"CustomOauth2", NULL, NULL, NULL, NULL, {"openid", "offline_access", "prompt=consent"}},
    /* Google: no offline_access scope; access_type=offline, and prompt=consent or a
     * second consent returns no refresh token */
    {"GoogleOauth2", "https://accounts.google.com",
     "https://accounts.google.com/.well-known/openid-configuration",
     "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token",
     {NULL, NULL, "access_type=offline&prompt=consent"}},
    /* GitHub: refresh tokens come with expiring user tokens (an app setting) */
    {"GithubOauth2", "https://github.com", NULL, "https://github.com/login/oauth/authorize",
     "https://github.com/login/oauth/access_token", {NULL, NULL, NULL}},
    {"MicrosoftOauth2", "https://login.microsoftonline.com/{tenant}/v2.0",
     "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration",
     "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
     "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
     {NULL, "offline_access", NULL}},
    {"SlackOauth2", "https://slack.com", "https://slack.com/.well-known/openid-configuration",
     "https://slack.com/oauth/v2/authorize", "https://slack.com/api/oauth.v2.access",
     {NULL, NULL, NULL}},
    {"SalesforceOauth2", "https://login.salesforce.com",
     "https://login.salesforce.com/.well-known/openid-configuration",
     "https://login.salesforce.com/services/oauth2/authorize",
     "https://login.salesforce.com/services/oauth2/token", {NULL, "refresh_token", NULL}},
};

const al_consent_quirks *al_identity_vendor_quirks(const char *vendor)
{
    if (!vendor)
        vendor = "CustomOauth2";
    for (size_t i = 0; i < sizeof vendors / sizeof vendors[0]; i++)
        if (strcmp(vendors[i].vendor, vendor) == 0)
            return &vendors[i].refresh;
    return NULL;
}

static const char *const auth_methods[] = {"client_secret_basic", "client_secret_post"};

static int64_t default_now(void *arg)
{
    (void)arg;
    return (int64_t)time(NULL);
}

void al_identity_set_clock(al_identity *id, int64_t (*now)(void *arg), void *arg)
{
    id->now = now ? now : default_now;
    id->now_arg = arg;
}

static int64_t now_s(al_identity *id)
{
    return id->now(id->now_arg);
}

/* ---- opening ------------------------------------------------------------ */

/* A rotation interrupted after its commit leaves the new key in "<key>.new": when that
 * key matches `check`, it replaces the key file and *v (the key file's vault) is
 * reloaded from it. AL_ERR_KEY when neither key matches. */
static int adopt_rotated_key(const char *state_dir, const char *check, al_vault **v)
{
    char next[4200];
    unsigned char key[AL_VAULT_KEY_LEN];
    al_vault *nv = NULL;
    int rc = AL_ERR_KEY;
    snprintf(next, sizeof next, "%s.new", al_vault_key_path(*v));
    if (al_vault_read_key_file(next, key) == AL_OK && al_vault_from_key(key, &nv) == AL_OK &&
        al_vault_verify_check(nv, check) == AL_OK) {
        /* The interrupted rotation committed: adopt its key. */
        if (rename(next, al_vault_key_path(*v)) != 0)
            fprintf(stderr, "airlock: warning: could not finish key rotation: rename %s: %s\n",
                    next, strerror(errno));
        al_vault_free(*v);
        *v = NULL;
        rc = al_vault_open(state_dir, 0, v);
        if (rc == AL_OK)
            rc = al_vault_verify_check(*v, check);
    }
    al_vault_free(nv);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

int al_identity_store_vault(struct al_store *st, const char *state_dir, al_vault **out)
{
    char *check = NULL;
    al_vault *v = NULL;
    int rc = st->ops->meta_get(st, CHECK_KEY, &check);
    if (rc == AL_OK)
        rc = al_vault_open(state_dir, 0, &v);
    if (rc == AL_OK && (rc = al_vault_verify_check(v, check)) == AL_ERR_KEY)
        rc = adopt_rotated_key(state_dir, check, &v);
    free(check);
    if (rc != AL_OK) {
        al_vault_free(v);
        return rc;
    }
    *out = v;
    return AL_OK;
}

int al_identity_vault_matches(struct al_store *st, const al_vault *v)
{
    char *check = NULL;
    int rc = st->ops->meta_get(st, CHECK_KEY, &check);
    if (rc == AL_OK) {
        rc = al_vault_verify_check(v, check);
        rc = rc == AL_OK ? 1 : rc == AL_ERR_KEY ? 0 : rc;
    }
    free(check);
    return rc;
}

/* Loads the master key and checks it against the store. A rotation interrupted
 * after its commit leaves the new key in "<key>.new": finish it here. */
static int ensure_vault(al_identity *id, int generate)
{
    char *check = NULL;
    al_vault *v = NULL;
    int rc;
    if (id->vault)
        return AL_OK;
    rc = id->store->ops->meta_get(id->store, CHECK_KEY, &check);
    if (rc == AL_ERR_NOTFOUND) {
        /* Nothing sealed yet: a key may be generated. */
        rc = al_vault_open(id->state_dir, generate ? AL_VAULT_GENERATE : 0, &v);
        if (rc == AL_ERR_NOTFOUND && !generate)
            rc = AL_OK; /* metadata-only until something is sealed */
        if (rc == AL_OK)
            id->vault = v;
        return rc;
    }
    if (rc != AL_OK)
        return rc;
    rc = al_vault_open(id->state_dir, 0, &v);
    if (rc == AL_ERR_NOTFOUND) {
        fprintf(stderr,
                "airlock: the identity store in %s holds sealed secrets but its master key "
                "(%s) is missing; restore the key file or set AIRLOCK_MASTER_KEY_FILE\n",
                id->state_dir,
                getenv("AIRLOCK_MASTER_KEY_FILE") ? getenv("AIRLOCK_MASTER_KEY_FILE")
                                                  : "<state_dir>/master.key");
        rc = AL_ERR_KEY;
        goto out;
    }
    if (rc != AL_OK)
        goto out;
    rc = al_vault_verify_check(v, check);
    if (rc == AL_ERR_KEY)
        rc = adopt_rotated_key(id->state_dir, check, &v);
    if (rc == AL_ERR_KEY)
        fprintf(stderr,
                "airlock: the master key in %s does not match the identity store in %s "
                "(wrong key file, or the store was tampered with); nothing was decrypted\n",
                v ? al_vault_key_path(v) : "?", id->state_dir);
    if (rc != AL_OK)
        goto out;
    id->vault = v;
    v = NULL;
out:
    al_vault_free(v);
    free(check);
    return rc;
}

static int identity_open(const char *state_dir, int flags, al_identity **out)
{
    al_identity *id = calloc(1, sizeof *id);
    int rc;
    if (!id)
        return AL_ERR_NOMEM;
    id->flags = flags;
    id->now = default_now;
    id->state_dir = strdup(state_dir);
    if (!id->state_dir) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    rc = al_store_open(state_dir, (flags & AL_IDENTITY_WRITE) ? AL_STORE_CREATE : 0, &id->store);
    if (rc != AL_OK)
        goto fail;
    if (flags & (AL_IDENTITY_WRITE | AL_IDENTITY_SECRETS)) {
        rc = ensure_vault(id, flags & AL_IDENTITY_WRITE);
        if (rc != AL_OK)
            goto fail;
    }
    *out = id;
    return AL_OK;
fail:
    al_identity_close(id);
    return rc;
}

int al_identity_open(const char *state_dir, int flags, al_identity **out)
{
    return identity_open(state_dir, flags, out);
}

int al_identity_open_readonly(const char *state_dir, al_identity **out)
{
    return identity_open(state_dir, 0, out);
}

void al_identity_close(al_identity *id)
{
    if (!id)
        return;
    al_store_close(id->store);
    al_vault_free(id->vault);
    for (size_t i = 0; i < id->env_count; i++) {
        free(id->envs[i].name);
        free(id->envs[i].environment);
    }
    free(id->envs);
    free(id->state_dir);
    free(id);
}

const char *al_identity_provider_env_cb(void *arg, const char *provider)
{
    al_identity *id = arg;
    if (!id || !provider)
        return NULL;
    if (!id->envs_loaded) {
        al_store_record *recs = NULL;
        size_t n = 0;
        id->envs_loaded = 1;
        if (id->store->ops->list(id->store, &recs, &n) != AL_OK)
            return NULL;
        id->envs = calloc(n ? n : 1, sizeof *id->envs);
        for (size_t i = 0; id->envs && i < n; i++) {
            /* Ownership moves from the record to the cache. */
            id->envs[i].name = recs[i].name;
            id->envs[i].environment = recs[i].environment;
            recs[i].name = recs[i].environment = NULL;
            id->env_count++;
        }
        al_store_records_free(recs, n);
    }
    for (size_t i = 0; i < id->env_count; i++)
        if (strcmp(id->envs[i].name, provider) == 0)
            return id->envs[i].environment;
    return NULL;
}

al_store *al_identity_store(al_identity *id)
{
    return id->store;
}

int al_identity_generation(al_identity *id, uint64_t *out)
{
    return id->store->ops->generation(id->store, out);
}

/* ---- audit -------------------------------------------------------------- */

/* One store event; `extra` (may be NULL; its reference is taken) adds fields, e.g. what
 * an update changed. */
static void audit_ex(al_identity *id, const char *what, const char *name, const char *kind,
                     uint32_t version, json_t *extra)
{
    char path[4200], ts[32];
    const char *env = getenv("AIRLOCK_AUDIT_FILE");
    if (env && *env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/audit.log", id->state_dir);
    time_t t = (time_t)now_s(id);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct passwd *pw = getpwuid(geteuid());
    json_t *o = json_pack("{s:s, s:s, s:s?, s:s?, s:s, s:s, s:i}", "time", ts, "event", what,
                          "provider", name, "kind", kind, "user", pw ? pw->pw_name : "?", "store",
                          id->state_dir, "uid", (int)geteuid());
    if (o && version)
        json_object_set_new(o, "version", json_integer(version));
    if (o && extra)
        json_object_update(o, extra);
    json_decref(extra);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (!line || al_audit_append_line(path, line) != AL_OK)
        fprintf(stderr, "airlock: warning: could not append to audit log %s\n", path);
    free(line);
    json_decref(o);
}

static void audit(al_identity *id, const char *what, const char *name, const char *kind,
                  uint32_t version)
{
    audit_ex(id, what, name, kind, version, NULL);
}

/* Adds changes[key] = {"old": a, "new": b} when the JSON values differ (NULL = null). */
static void note_change(json_t *changes, const char *key, json_t *a, json_t *b)
{
    json_t *na = a ? a : json_null(), *nb = b ? b : json_null();
    if (!json_equal(na, nb))
        json_object_set_new(changes, key, json_pack("{s:O, s:O}", "old", na, "new", nb));
    json_decref(na);
    json_decref(nb);
}

static json_t *json_or_null_str(const char *s)
{
    return s ? json_string(s) : NULL;
}

/* A config key whose value is recorded only as changed, never as a value: config holds
 * no secret by design (secrets live in the sealed versions), but a key named like one
 * may have been given one by mistake. */
static int key_looks_secret(const char *k)
{
    static const char *const words[] = {"secret", "password", "passwd", "token", "key"};
    static const char *const public_keys[] = {"tokenEndpoint", "accessKeyId"};
    for (size_t i = 0; i < sizeof public_keys / sizeof public_keys[0]; i++)
        if (strcmp(k, public_keys[i]) == 0)
            return 0;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasestr(k, words[i]))
            return 1;
    return 0;
}

/* What an update changed, for its audit record: environment, description, tags and
 * each config key (vendor, endpoints, client id, ...) as old -> new. The secret is
 * never compared here: its change is `secret_changed` and the new version. */
static json_t *record_changes(const al_store_record *old, const al_store_record *now)
{
    json_t *c = json_object();
    if (!c)
        return NULL;
    note_change(c, "environment", json_or_null_str(old->environment),
                json_or_null_str(now->environment));
    note_change(c, "description", json_or_null_str(old->description),
                json_or_null_str(now->description));
    note_change(c, "tags", old->tags_json ? json_loads(old->tags_json, 0, NULL) : NULL,
                now->tags_json ? json_loads(now->tags_json, 0, NULL) : NULL);
    json_t *oc = old->config_json ? json_loads(old->config_json, 0, NULL) : NULL;
    json_t *nc = now->config_json ? json_loads(now->config_json, 0, NULL) : NULL;
    json_t *keys = json_object();
    const char *k;
    json_t *v;
    if (oc && json_is_object(oc))
        json_object_foreach(oc, k, v) json_object_set(keys, k, json_null());
    if (nc && json_is_object(nc))
        json_object_foreach(nc, k, v) json_object_set(keys, k, json_null());
    json_object_foreach(keys, k, v)
    {
        json_t *a = oc ? json_object_get(oc, k) : NULL, *b = nc ? json_object_get(nc, k) : NULL;
        char name[300];
        snprintf(name, sizeof name, "config.%s", k);
        if (key_looks_secret(k)) {
            if (!json_equal(a ? a : json_null(), b ? b : json_null()))
                json_object_set_new(c, name, json_pack("{s:b}", "changed", 1));
            continue;
        }
        note_change(c, name, a ? json_incref(a) : NULL, b ? json_incref(b) : NULL);
    }
    json_decref(keys);
    json_decref(oc);
    json_decref(nc);
    return c;
}

/* ---- validation --------------------------------------------------------- */

static int name_valid(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max || !isalnum((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return 0;
    return 1;
}

static int bytes_clean(const unsigned char *p, size_t n)
{
    /* A secret goes into a header: CR, LF or NUL would let it inject or truncate one. */
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return 0;
    return 1;
}

static int str_in(const char *s, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, set[i]) == 0)
            return 1;
    return 0;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static char *replace_tenant(const char *tmpl, const char *tenant)
{
    const char *at = strstr(tmpl, "{tenant}");
    if (!at)
        return strdup(tmpl);
    size_t n = strlen(tmpl) - 8 + strlen(tenant) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%.*s%s%s", (int)(at - tmpl), tmpl, tenant, at + 8);
    return s;
}

/* Builds the stored oauth2 config: vendor endpoints filled in, custom checked. */
static int oauth2_config(const json_t *in, json_t **out)
{
    json_t *c = json_deep_copy(in ? in : json_object());
    const char *vendor = jstr(c, "vendor");
    const vendor_row *row = NULL;
    int rc = AL_ERR_INVAL;
    if (!c)
        return AL_ERR_NOMEM;
    if (!vendor)
        vendor = "CustomOauth2";
    for (size_t i = 0; i < sizeof vendors / sizeof vendors[0]; i++)
        if (strcmp(vendors[i].vendor, vendor) == 0)
            row = &vendors[i];
    if (!row) {
        fprintf(stderr,
                "airlock: unknown OAuth2 vendor '%s'; use one of CustomOauth2, GoogleOauth2, "
                "GithubOauth2, MicrosoftOauth2, SlackOauth2, SalesforceOauth2\n",
                vendor);
        goto fail;
    }
    json_object_set_new(c, "vendor", json_string(row->vendor));
    const char *tenant = jstr(c, "tenantId");
    if (!tenant)
        tenant = "common";
    const char *fill[][2] = {{"issuer", row->issuer},
                             {"discoveryUrl", row->discovery},
                             {"authorizationEndpoint", row->authorization},
                             {"tokenEndpoint", row->token}};
    for (size_t i = 0; i < 4; i++) {
        if (!fill[i][1] || jstr(c, fill[i][0]))
            continue; /* operator's value wins: e.g. a regional endpoint */
        char *v = replace_tenant(fill[i][1], tenant);
        if (!v) {
            rc = AL_ERR_NOMEM;
            goto fail;
        }
        json_object_set_new(c, fill[i][0], json_string(v));
        free(v);
    }
    if (!jstr(c, "discoveryUrl") &&
        !(jstr(c, "issuer") && jstr(c, "authorizationEndpoint") && jstr(c, "tokenEndpoint"))) {
        fprintf(stderr, "airlock: a CustomOauth2 provider needs --discovery-url, or all of "
                        "--issuer, --authorization-endpoint and --token-endpoint\n");
        goto fail;
    }
    if (!jstr(c, "clientId") || !*jstr(c, "clientId")) {
        fprintf(stderr, "airlock: an oauth2 provider needs --client-id\n");
        goto fail;
    }
    if (!jstr(c, "tokenEndpointAuthMethod"))
        json_object_set_new(c, "tokenEndpointAuthMethod", json_string("client_secret_basic"));
    if (!str_in(jstr(c, "tokenEndpointAuthMethod"), auth_methods, 2)) {
        fprintf(stderr, "airlock: --token-endpoint-auth-method must be client_secret_basic or "
                        "client_secret_post\n");
        goto fail;
    }
    static const char *const switches[] = {"allowInsecureEndpoints", "allowPrivateNetwork",
                                           "usePar", "revokeReplacedTokens"};
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++) {
        json_t *b = json_object_get(c, switches[i]);
        if (b && !json_is_boolean(b)) {
            fprintf(stderr, "airlock: %s must be true or false\n", switches[i]);
            goto fail;
        }
    }
    int insecure = json_is_true(json_object_get(c, "allowInsecureEndpoints"));
    const char *ca = jstr(c, "caFile");
    if (json_object_get(c, "caFile") && (!ca || access(ca, R_OK) != 0)) {
        fprintf(stderr, "airlock: --ca-file %s is not a readable file\n", ca ? ca : "(not a string)");
        goto fail;
    }
    const char *urls[] = {"issuer",        "discoveryUrl",       "authorizationEndpoint",
                          "tokenEndpoint", "revocationEndpoint", "parEndpoint"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        const char *u = jstr(c, urls[i]);
        if (u && strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) {
            fprintf(stderr, "airlock: %s must be an http(s) URL\n", urls[i]);
            goto fail;
        }
        /* The token request carries the client secret: http only when asked for. */
        if (u && strncmp(u, "http://", 7) == 0 && !insecure) {
            fprintf(stderr,
                    "airlock: %s is http://, so the client secret and tokens would cross the "
                    "network in clear text; use https:// or add --allow-insecure-endpoints\n",
                    urls[i]);
            goto fail;
        }
    }
    if (insecure)
        fprintf(stderr, "airlock: warning: --allow-insecure-endpoints: this provider may send "
                        "its client secret and receive tokens over plain http\n");
    *out = c;
    return AL_OK;
fail:
    json_decref(c);
    return rc;
}

static int aws_config(const json_t *in, json_t **out)
{
    const char *akid = in ? jstr((json_t *)in, "accessKeyId") : NULL;
    if (!akid || !*akid) {
        fprintf(stderr, "airlock: an aws provider needs --access-key-id\n");
        return AL_ERR_INVAL;
    }
    *out = json_deep_copy(in);
    return *out ? AL_OK : AL_ERR_NOMEM;
}

/* The kind's stored config from the spec; NULL config for api_key. */
static int build_config(const char *kind, json_t *in, char **out)
{
    json_t *c = NULL;
    int rc = AL_OK;
    *out = NULL;
    if (strcmp(kind, "oauth2") == 0)
        rc = oauth2_config(in, &c);
    else if (strcmp(kind, "aws") == 0)
        rc = aws_config(in, &c);
    else if (in && json_object_size(in))
        c = json_deep_copy(in);
    if (rc != AL_OK)
        return rc;
    if (c) {
        *out = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(c);
        if (!*out)
            return AL_ERR_NOMEM;
    }
    return AL_OK;
}

static int check_secret(const al_provider_spec *sp)
{
    if (sp->secret_len == 0 || sp->secret_len > 16384 || !bytes_clean(sp->secret, sp->secret_len)) {
        fprintf(stderr, "airlock: the secret must be 1..16384 bytes without CR, LF or NUL\n");
        return AL_ERR_INVAL;
    }
    if (sp->session_token &&
        (sp->session_token_len > 16384 || !bytes_clean(sp->session_token, sp->session_token_len))) {
        fprintf(stderr, "airlock: the session token must be at most 16384 bytes without CR, LF "
                        "or NUL\n");
        return AL_ERR_INVAL;
    }
    return AL_OK;
}

/* ---- versions ----------------------------------------------------------- */

/* Plaintext layout: the secret, then for aws an optional "\n" + session token
 * (neither may contain LF, checked above). */
static int add_version(al_identity *id, al_store_record *r, const al_provider_spec *sp,
                       uint32_t version)
{
    size_t n = sp->secret_len + (sp->session_token ? 1 + sp->session_token_len : 0);
    unsigned char *plain = malloc(n ? n : 1);
    int rc;
    if (!plain)
        return AL_ERR_NOMEM;
    memcpy(plain, sp->secret, sp->secret_len);
    if (sp->session_token) {
        plain[sp->secret_len] = '\n';
        memcpy(plain + sp->secret_len + 1, sp->session_token, sp->session_token_len);
    }
    al_store_version *nv = realloc(r->versions, (r->version_count + 1) * sizeof *nv);
    if (!nv) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    r->versions = nv;
    al_store_version *v = &nv[r->version_count];
    memset(v, 0, sizeof *v);
    v->version = version;
    v->created_at = now_s(id);
    al_vault_fingerprint(sp->secret, sp->secret_len, v->fingerprint);
    rc = al_vault_seal(id->vault, r->name, r->kind, version, plain, n, &v->wrapped_key,
                       &v->wrapped_key_len, &v->sealed, &v->sealed_len);
    if (rc == AL_OK)
        r->version_count++;
out:
    OPENSSL_cleanse(plain, n);
    free(plain);
    return rc;
}

static void wipe_version(al_store_version *v)
{
    if (v->wrapped_key)
        OPENSSL_cleanse(v->wrapped_key, v->wrapped_key_len);
    if (v->sealed)
        OPENSSL_cleanse(v->sealed, v->sealed_len);
    free(v->wrapped_key);
    free(v->sealed);
    v->wrapped_key = v->sealed = NULL;
    v->wrapped_key_len = v->sealed_len = 0;
    v->wiped = 1;
}

/* Wipes non-current versions whose grace ended; returns how many. */
static size_t purge_record(al_identity *id, al_store_record *r)
{
    size_t n = 0;
    int64_t now = now_s(id);
    for (size_t i = 0; i < r->version_count; i++) {
        al_store_version *v = &r->versions[i];
        if (v->version != r->current_version && !v->wiped && v->expires_at <= now) {
            wipe_version(v);
            n++;
        }
    }
    return n;
}

static int need_vault(al_identity *id)
{
    if (!(id->flags & AL_IDENTITY_WRITE) || !id->vault) {
        fprintf(stderr, "airlock: the identity store was opened read-only\n");
        return AL_ERR_PERM;
    }
    return AL_OK;
}

/* The meta entries that go into every sealing transaction: the key check. */
static int key_check_meta(al_identity *id, char **check)
{
    return al_vault_make_check(id->vault, check);
}

/* Writes one record if nothing changed since `gen` was read (AL_ERR_AGAIN otherwise).
 * The first sealed record also stores the master-key check. */
static int put_record(al_identity *id, const al_store_record *r, uint64_t gen)
{
    char *check = NULL, *existing = NULL;
    int rc;
    if (id->store->ops->meta_get(id->store, CHECK_KEY, &existing) == AL_OK) {
        free(existing);
        return id->store->ops->put(id->store, r, 1, NULL, 0, &gen);
    }
    rc = key_check_meta(id, &check);
    if (rc != AL_OK)
        return rc;
    const char *kv[2] = {CHECK_KEY, check};
    rc = id->store->ops->put(id->store, r, 1, kv, 1, &gen);
    free(check);
    return rc;
}

/* Starts a read-modify-write: reads the change counter first (so any commit after
 * this point makes our put fail with AL_ERR_AGAIN), then makes sure the loaded
 * master key is still the store's — another process may have rotated it. */
static int begin_write(al_identity *id, uint64_t *gen)
{
    char *check = NULL;
    int rc = id->store->ops->generation(id->store, gen);
    if (rc != AL_OK)
        return rc;
    if (id->vault && id->store->ops->meta_get(id->store, CHECK_KEY, &check) == AL_OK) {
        if (al_vault_verify_check(id->vault, check) != AL_OK) {
            al_vault_free(id->vault);
            id->vault = NULL;
            rc = ensure_vault(id, 0);
        }
        free(check);
    }
    return rc;
}

#define WRITE_RETRIES 50

static int set_str(char **dst, const char *src)
{
    char *d = src ? strdup(src) : NULL;
    if (src && !d)
        return AL_ERR_NOMEM;
    free(*dst);
    *dst = d;
    return AL_OK;
}

static int set_tags(char **dst, json_t *tags)
{
    if (!tags)
        return AL_OK;
    if (!json_is_object(tags)) {
        fprintf(stderr, "airlock: tags must be KEY=VALUE pairs\n");
        return AL_ERR_INVAL;
    }
    char *s = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS);
    if (!s)
        return AL_ERR_NOMEM;
    free(*dst);
    *dst = s;
    return AL_OK;
}

static int create_once(al_identity *id, const al_provider_spec *sp, uint32_t *version_out)
{
    uint64_t gen = 0;
    al_store_record r, old;
    int rc;
    memset(&r, 0, sizeof r);
    if ((rc = need_vault(id)) != AL_OK)
        return rc;
    if (!name_valid(sp->name, AL_STORE_NAME_MAX)) {
        fprintf(stderr, "airlock: invalid provider name; use 1..128 of A-Z a-z 0-9 . _ - "
                        "starting with a letter or digit\n");
        return AL_ERR_INVAL;
    }
    if (!al_identity_kind_valid(sp->kind))
        return AL_ERR_INVAL;
    const char *env = sp->environment ? sp->environment : "default";
    if (!name_valid(env, 64)) {
        fprintf(stderr, "airlock: invalid environment name '%s'\n", env);
        return AL_ERR_INVAL;
    }
    if ((rc = begin_write(id, &gen)) != AL_OK)
        return rc;
    if (!sp->secret) {
        fprintf(stderr, "airlock: a new provider needs its secret\n");
        return AL_ERR_INVAL;
    }
    if ((rc = check_secret(sp)) != AL_OK)
        return rc;
    rc = id->store->ops->get(id->store, sp->name, &old);
    if (rc == AL_OK) {
        al_store_record_clear(&old);
        fprintf(stderr, "airlock: a credential provider named '%s' already exists (kind %s)\n",
                sp->name, sp->kind);
        return AL_ERR_EXISTS;
    }
    if (rc != AL_ERR_NOTFOUND)
        return rc;
    r.name = strdup(sp->name);
    r.kind = strdup(sp->kind);
    r.environment = strdup(env);
    if (!r.name || !r.kind || !r.environment) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    if ((rc = set_str(&r.description, sp->description)) != AL_OK ||
        (rc = set_tags(&r.tags_json, sp->tags)) != AL_OK ||
        (rc = build_config(sp->kind, sp->config, &r.config_json)) != AL_OK)
        goto out;
    r.created_at = r.updated_at = now_s(id);
    r.current_version = 1;
    if ((rc = add_version(id, &r, sp, 1)) != AL_OK)
        goto out;
    if ((rc = put_record(id, &r, gen)) != AL_OK)
        goto out;
    audit(id, "identity.create", r.name, r.kind, 1);
    if (version_out)
        *version_out = 1;
out:
    al_store_record_clear(&r);
    return rc;
}

/* A write that lost the race for the store's change counter (another process wrote
 * first) is redone on the fresh state, a bounded number of times. */
static int with_retries(int (*once)(al_identity *, const al_provider_spec *, uint32_t *),
                        al_identity *id, const al_provider_spec *sp, uint32_t *version_out)
{
    int rc = AL_ERR_AGAIN;
    for (int i = 0; i < WRITE_RETRIES && rc == AL_ERR_AGAIN; i++)
        rc = once(id, sp, version_out);
    return rc;
}

int al_identity_create(al_identity *id, const al_provider_spec *sp, uint32_t *version_out)
{
    return with_retries(create_once, id, sp, version_out);
}

static int get_kind(al_identity *id, const char *name, const char *kind, al_store_record *r)
{
    int rc = id->store->ops->get(id->store, name, r);
    if (rc != AL_OK)
        return rc;
    if (kind && strcmp(r->kind, kind) != 0) {
        al_store_record_clear(r);
        return AL_ERR_NOTFOUND;
    }
    return AL_OK;
}

static int update_once(al_identity *id, const al_provider_spec *sp, uint32_t *version_out)
{
    uint64_t gen = 0;
    al_store_record r;
    int rc;
    memset(&r, 0, sizeof r);
    if ((rc = need_vault(id)) != AL_OK)
        return rc;
    if (!sp->name)
        return AL_ERR_INVAL;
    if ((rc = begin_write(id, &gen)) != AL_OK)
        return rc;
    rc = get_kind(id, sp->name, sp->kind, &r);
    if (rc != AL_OK)
        return rc;
    /* the fields an update may change, as they were (for the audit record) */
    al_store_record before = {.environment = r.environment ? strdup(r.environment) : NULL,
                              .description = r.description ? strdup(r.description) : NULL,
                              .tags_json = r.tags_json ? strdup(r.tags_json) : NULL,
                              .config_json = r.config_json ? strdup(r.config_json) : NULL,
                              .current_version = r.current_version};
    if (sp->environment && !name_valid(sp->environment, 64)) {
        fprintf(stderr, "airlock: invalid environment name '%s'\n", sp->environment);
        rc = AL_ERR_INVAL;
        goto out;
    }
    if (sp->environment && (rc = set_str(&r.environment, sp->environment)) != AL_OK)
        goto out;
    if (sp->description && (rc = set_str(&r.description, sp->description)) != AL_OK)
        goto out;
    if ((rc = set_tags(&r.tags_json, sp->tags)) != AL_OK)
        goto out;
    if (sp->config) {
        /* Merge: the operator names only what changes (e.g. a new client id). */
        json_t *merged = r.config_json ? json_loads(r.config_json, 0, NULL) : json_object();
        char *cfg = NULL;
        if (!merged) {
            rc = AL_ERR_NOMEM;
            goto out;
        }
        json_object_update(merged, sp->config);
        rc = build_config(r.kind, merged, &cfg);
        json_decref(merged);
        if (rc != AL_OK)
            goto out;
        free(r.config_json);
        r.config_json = cfg;
    }
    if (sp->secret) {
        if ((rc = check_secret(sp)) != AL_OK)
            goto out;
        int64_t grace = sp->grace_s < 0 ? AL_IDENTITY_DEFAULT_GRACE_S : sp->grace_s;
        uint32_t prev = r.current_version, next = 0;
        for (size_t i = 0; i < r.version_count; i++)
            if (r.versions[i].version > next)
                next = r.versions[i].version;
        next++;
        for (size_t i = 0; i < r.version_count; i++) {
            al_store_version *v = &r.versions[i];
            if (v->version != prev || v->wiped)
                continue;
            v->expires_at = now_s(id) + grace;
            if (grace == 0)
                wipe_version(v);
        }
        if ((rc = add_version(id, &r, sp, next)) != AL_OK)
            goto out;
        r.current_version = next;
        if (grace == 0) /* "cut off": no older version stays usable either */
            for (size_t i = 0; i < r.version_count; i++)
                if (r.versions[i].version != next && !r.versions[i].wiped) {
                    r.versions[i].expires_at = now_s(id);
                    wipe_version(&r.versions[i]);
                }
    }
    purge_record(id, &r);
    r.updated_at = now_s(id);
    if ((rc = put_record(id, &r, gen)) != AL_OK)
        goto out;
    json_t *extra = json_pack("{s:o*, s:b, s:i}", "changes", record_changes(&before, &r),
                              "secret_changed", sp->secret != NULL, "previous_version",
                              (json_int_t)before.current_version);
    audit_ex(id, sp->secret ? "identity.rotate" : "identity.update", r.name, r.kind,
             r.current_version, extra);
    if (version_out)
        *version_out = r.current_version;
out:
    free(before.environment);
    free(before.description);
    free(before.tags_json);
    free(before.config_json);
    al_store_record_clear(&r);
    return rc;
}

int al_identity_update(al_identity *id, const al_provider_spec *sp, uint32_t *version_out)
{
    return with_retries(update_once, id, sp, version_out);
}

int al_identity_delete(al_identity *id, const char *name, const char *kind)
{
    al_store_record r;
    int rc = get_kind(id, name, kind, &r);
    if (rc != AL_OK)
        return rc;
    uint32_t version = r.current_version;
    char *k = strdup(r.kind);
    al_store_record_clear(&r);
    rc = id->store->ops->del(id->store, name);
    if (rc == AL_OK)
        audit(id, "identity.delete", name, k, version);
    free(k);
    return rc;
}

int al_identity_list_user_tokens(al_identity *id, const char *provider, json_t **out)
{
    al_store_user_token *u = NULL;
    size_t n = 0;
    if (!id->store->ops->user_list)
        return AL_ERR_DB;
    int rc = id->store->ops->user_list(id->store, provider, &u, &n);
    if (rc != AL_OK)
        return rc;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:b, s:s}", "provider", u[i].provider,
                           "user", u[i].user, "scope", u[i].scope, "obtainedAt",
                           (json_int_t)u[i].obtained_at, "expiresAt", (json_int_t)u[i].expires_at,
                           "updatedAt", (json_int_t)u[i].updated_at, "hasRefreshToken",
                           u[i].has_refresh, "fingerprint", u[i].fingerprint));
    al_store_user_tokens_free(u, n);
    *out = arr ? json_pack("{s:o}", "userTokens", arr) : NULL;
    return *out ? AL_OK : AL_ERR_NOMEM;
}

int al_identity_load_user_token(al_identity *id, const char *provider, const char *user,
                                al_user_token *out)
{
    memset(out, 0, sizeof *out);
    if (!id->vault)
        return AL_ERR_KEY;
    return al_user_token_load(id->store, id->vault, provider, user, out);
}

void al_identity_audit_user_token_revoke(al_identity *id, const char *provider, const char *user,
                                         const char *token_type, const char *outcome,
                                         const char *error)
{
    json_t *f = json_pack("{s:s, s:s?, s:s}", "end_user", user, "token_type", token_type,
                          "outcome", outcome);
    if (f && error)
        json_object_set_new(f, "error", json_string(error));
    audit_ex(id, "identity.user_token_revoke", provider, "oauth2", 0, f);
}

int al_identity_delete_user_token(al_identity *id, const char *provider, const char *user)
{
    if (!id->store->ops->user_del)
        return AL_ERR_DB;
    int rc = id->store->ops->user_del(id->store, provider, user);
    if (rc == AL_OK)
        audit_ex(id, "identity.user_token_delete", provider, "oauth2", 0,
                 json_pack("{s:s, s:s}", "end_user", user, "outcome", "deleted"));
    return rc;
}

int al_identity_purge_expired(al_identity *id)
{
    al_store_record *recs = NULL;
    size_t n = 0;
    uint64_t gen = 0;
    int rc = id->store->ops->generation(id->store, &gen);
    if (rc != AL_OK)
        return rc;
    rc = id->store->ops->list(id->store, &recs, &n);
    if (rc != AL_OK)
        return rc;
    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        /* Remember which versions get wiped, for the audit lines. */
        uint32_t wiped[64];
        size_t wn = 0;
        int64_t now = now_s(id);
        for (size_t j = 0; j < recs[i].version_count; j++) {
            al_store_version *v = &recs[i].versions[j];
            if (v->version != recs[i].current_version && !v->wiped && v->expires_at <= now &&
                wn < 64)
                wiped[wn++] = v->version;
        }
        if (purge_record(id, &recs[i]) == 0)
            continue;
        rc = id->store->ops->put(id->store, &recs[i], 1, NULL, 0, &gen);
        if (rc == AL_OK)
            gen++; /* our own commit; a conflict makes the rest wait for the next run */
        for (size_t j = 0; rc == AL_OK && j < wn; j++)
            audit(id, "identity.wipe_expired_version", recs[i].name, recs[i].kind, wiped[j]);
    }
    al_store_records_free(recs, n);
    return rc;
}

/* ---- output ------------------------------------------------------------- */

static json_t *iso_time(int64_t t)
{
    char buf[32];
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

/* The provider's rotation_max_age (seconds, in its config as "rotationMaxAge"), 0 when
 * unset: status pages and alerts flag a current version older than that. */
static int64_t rotation_max_age(const al_store_record *r)
{
    json_t *cfg = r->config_json ? json_loads(r->config_json, 0, NULL) : NULL;
    json_t *v = cfg ? json_object_get(cfg, "rotationMaxAge") : NULL;
    int64_t s = json_is_integer(v) && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
    json_decref(cfg);
    return s;
}

static const al_store_version *current_of(const al_store_record *r)
{
    for (size_t i = 0; i < r->version_count; i++)
        if (r->versions[i].version == r->current_version)
            return &r->versions[i];
    return NULL;
}

static json_t *summary_json(const al_store_record *r)
{
    const al_store_version *cur = current_of(r);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(r->name));
    json_object_set_new(o, "kind", json_string(r->kind));
    json_object_set_new(o, "environment", json_string(r->environment));
    json_object_set_new(o, "version", json_integer(r->current_version));
    json_object_set_new(o, "fingerprint", json_string(cur ? cur->fingerprint : ""));
    json_object_set_new(o, "createdTime", iso_time(r->created_at));
    json_object_set_new(o, "lastUpdatedTime", iso_time(r->updated_at));
    return o;
}

static json_t *describe_json(al_identity *id, const al_store_record *r)
{
    json_t *o = summary_json(r);
    int64_t now = now_s(id);
    if (r->description)
        json_object_set_new(o, "description", json_string(r->description));
    json_t *tags = r->tags_json ? json_loads(r->tags_json, 0, NULL) : NULL;
    json_object_set_new(o, "tags", tags ? tags : json_object());
    if (r->config_json) {
        json_t *cfg = json_loads(r->config_json, 0, NULL);
        if (cfg) {
            const char *key = strcmp(r->kind, "oauth2") == 0 ? "oauth2ProviderConfig"
                              : strcmp(r->kind, "aws") == 0  ? "awsConfig"
                                                             : "config";
            if (strcmp(r->kind, "oauth2") == 0)
                json_object_set(o, "credentialProviderVendor", json_object_get(cfg, "vendor"));
            json_object_set_new(o, key, cfg);
        }
    }
    int64_t max_age = rotation_max_age(r);
    if (max_age) {
        const al_store_version *cur = current_of(r);
        json_object_set_new(o, "rotationMaxAge", json_integer(max_age));
        json_object_set_new(o, "rotationOverdue",
                            json_boolean(cur && now - cur->created_at > max_age));
    }
    json_t *hist = json_array();
    for (size_t i = 0; i < r->version_count; i++) {
        const al_store_version *v = &r->versions[i];
        const char *state = v->version == r->current_version   ? "current"
                            : v->wiped || v->expires_at <= now ? "expired"
                                                               : "grace";
        json_t *h = json_pack("{s:i, s:s, s:s}", "version", (json_int_t)v->version, "state", state,
                              "fingerprint", v->fingerprint);
        json_object_set_new(h, "createdTime", iso_time(v->created_at));
        json_object_set_new(h, "expiresTime",
                            v->expires_at ? iso_time(v->expires_at) : json_null());
        json_object_set_new(h, "wiped", json_boolean(v->wiped));
        json_array_append_new(hist, h);
    }
    json_object_set_new(o, "versions", hist);
    return o;
}

int al_identity_describe(al_identity *id, const char *name, const char *kind, json_t **out)
{
    al_store_record r;
    int rc = get_kind(id, name, kind, &r);
    if (rc != AL_OK)
        return rc;
    *out = describe_json(id, &r);
    al_store_record_clear(&r);
    return *out ? AL_OK : AL_ERR_NOMEM;
}

int al_identity_list(al_identity *id, const char *kind, json_t **out)
{
    al_store_record *recs = NULL;
    size_t n = 0;
    int rc = id->store->ops->list(id->store, &recs, &n);
    if (rc != AL_OK)
        return rc;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        if (!kind || strcmp(recs[i].kind, kind) == 0)
            json_array_append_new(arr, summary_json(&recs[i]));
    al_store_records_free(recs, n);
    *out = json_pack("{s:o}", "credentialProviders", arr);
    return *out ? AL_OK : AL_ERR_NOMEM;
}

/* ---- master key rotation ------------------------------------------------ */

/* 1 when the key file in the state dir opens the store sealed with `check`. */
static int key_file_matches(al_identity *id, const char *check)
{
    al_vault *v = NULL;
    int ok = al_vault_open(id->state_dir, 0, &v) == AL_OK && al_vault_verify_check(v, check) == AL_OK;
    al_vault_free(v);
    return ok;
}

/* Every user token row with its blobs, each checked to open with `from` and rewrapped
 * for `to` (al_user_token_rewrap). *users is an array even when empty (the store's
 * rewrap then also checks that no user row appeared). */
static int rewrap_user_tokens(al_identity *id, const al_vault *to, al_store_user_token **users,
                              size_t *n)
{
    al_store_user_token *meta = NULL;
    size_t mn = 0;
    int rc = AL_OK;
    *users = NULL;
    *n = 0;
    if (id->store->ops->user_list && (rc = id->store->ops->user_list(id->store, NULL, &meta, &mn)))
        return rc;
    al_store_user_token *u = calloc(mn ? mn : 1, sizeof *u);
    if (!u)
        rc = AL_ERR_NOMEM;
    size_t count = 0;
    for (size_t i = 0; i < mn && rc == AL_OK; i++) {
        rc = id->store->ops->user_get(id->store, meta[i].provider, meta[i].user, &u[count]);
        if (rc == AL_ERR_NOTFOUND) {
            rc = AL_OK; /* deleted since the list: nothing to rewrap */
            continue;
        }
        if (rc != AL_OK)
            break;
        count++;
        rc = al_user_token_rewrap(id->vault, to, &u[count - 1]);
        if (rc != AL_OK)
            fprintf(stderr,
                    "airlock: the 3LO tokens of user '%s' for provider '%s' do not open with "
                    "the current master key (damaged or tampered row); rotation aborted, "
                    "nothing changed (delete-user-token --provider %s --user '%s' removes "
                    "them; that user then consents again)\n",
                    meta[i].user, meta[i].provider, meta[i].provider, meta[i].user);
    }
    al_store_user_tokens_free(meta, mn);
    if (rc != AL_OK) {
        al_store_user_tokens_free(u, count);
        return rc;
    }
    *users = u;
    *n = count;
    return AL_OK;
}

#define ROTATE_ATTEMPTS 5 /* a user token refreshed during a rotation: read it again */

int al_identity_rotate_master_key(al_identity *id, size_t *rewrapped_out)
{
    al_store_record *recs = NULL;
    al_store_user_token *users = NULL;
    size_t n = 0, un = 0, count = 0;
    unsigned char key[AL_VAULT_KEY_LEN];
    al_vault *nv = NULL;
    char *check = NULL, next[4200];
    uint64_t gen = 0;
    int lock_fd = -1;
    int rc;
    char path[4096], lock[4200];
    if ((rc = need_vault(id)) != AL_OK)
        return rc;
    if (!al_vault_key_path(id->vault))
        return AL_ERR_INVAL;
    if (!id->store->ops->rewrap)
        return AL_ERR_DB;
    snprintf(path, sizeof path, "%s", al_vault_key_path(id->vault));
    snprintf(next, sizeof next, "%s.new", path);
    snprintf(lock, sizeof lock, "%s.lock", path);
    /* One rotation at a time: both would write "<key>.new". */
    lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
        fprintf(stderr, "airlock: cannot lock %s: %s\n", lock, strerror(errno));
        rc = AL_ERR_IO;
        goto out;
    }
    if (RAND_bytes(key, sizeof key) != 1) {
        rc = AL_ERR_CRYPTO;
        goto out;
    }
    if ((rc = al_vault_from_key(key, &nv)) != AL_OK)
        goto out;
    if ((rc = al_vault_make_check(nv, &check)) != AL_OK)
        goto out;
    for (int attempt = 0;; attempt++) {
        al_store_records_free(recs, n);
        al_store_user_tokens_free(users, un);
        recs = NULL;
        users = NULL;
        n = un = count = 0;
        if ((rc = begin_write(id, &gen)) != AL_OK)
            goto out;
        if ((rc = id->store->ops->list(id->store, &recs, &n)) != AL_OK)
            goto out;
        for (size_t i = 0; i < n; i++) {
            al_store_record *r = &recs[i];
            for (size_t j = 0; j < r->version_count; j++) {
                al_store_version *v = &r->versions[j];
                unsigned char *w = NULL;
                size_t wl = 0;
                if (v->wiped || !v->wrapped_key)
                    continue;
                rc = al_vault_rewrap(id->vault, nv, r->name, r->kind, v->version, v->wrapped_key,
                                     v->wrapped_key_len, &w, &wl);
                if (rc != AL_OK) {
                    fprintf(stderr,
                            "airlock: provider '%s' version %u does not open with the "
                            "current master key; rotation aborted, nothing changed\n",
                            r->name, (unsigned)v->version);
                    goto out;
                }
                free(v->wrapped_key);
                v->wrapped_key = w;
                v->wrapped_key_len = wl;
                count++;
            }
        }
        if ((rc = rewrap_user_tokens(id, nv, &users, &un)) != AL_OK)
            goto out;
        count += un;
        /* Order matters for crash safety: (1) the new key is durable beside the old one,
         * (2) the store switches in one transaction (providers, user tokens, check
         * value), (3) the key file is replaced. A crash after (2) is finished by
         * ensure_vault() adopting "<key>.new" (serve: al_identity_store_vault). */
        if ((rc = al_vault_write_key_file(next, key)) != AL_OK)
            goto out;
        const char *kv[2] = {CHECK_KEY, check};
        rc = id->store->ops->rewrap(id->store, recs, n, users, un, kv, 1, &gen);
        if (rc == AL_OK)
            break;
        unlink(next);
        if (rc != AL_ERR_AGAIN)
            goto out;
        if (attempt + 1 == ROTATE_ATTEMPTS) {
            fprintf(stderr, "airlock: the store kept changing during the rotation (another "
                            "writer, or users' tokens being refreshed); nothing changed, run "
                            "rotate-master-key again\n");
            goto out;
        }
    }
    if (rename(next, path) != 0 && !(errno == ENOENT && key_file_matches(id, check))) {
        /* ENOENT with a matching key: a serving process that read the store between
         * the commit and this rename already adopted "<key>.new" (ensure_vault). */
        fprintf(stderr,
                "airlock: the store was rewrapped but %s could not replace %s (%s); "
                "it will be adopted on the next open\n",
                next, path, strerror(errno));
        rc = AL_ERR_IO;
        goto out;
    }
    al_vault_free(id->vault);
    id->vault = NULL;
    rc = al_vault_open(id->state_dir, 0, &id->vault);
    if (rc != AL_OK)
        goto out;
    audit(id, "identity.rotate_master_key", NULL, NULL, 0);
    if (rewrapped_out)
        *rewrapped_out = count;
out:
    if (lock_fd >= 0)
        close(lock_fd); /* releases the flock */
    OPENSSL_cleanse(key, sizeof key);
    al_vault_free(nv);
    free(check);
    al_store_records_free(recs, n);
    al_store_user_tokens_free(users, un);
    return rc;
}

/* ---- secrets for the serve-side cache ----------------------------------- */

void al_identity_secrets_free(al_identity_secret *s, size_t n)
{
    for (size_t i = 0; s && i < n; i++) {
        free(s[i].name);
        free(s[i].kind);
        free(s[i].environment);
        free(s[i].config_json);
        if (s[i].value) {
            /* value and session_token share one allocation */
            size_t total = s[i].len + (s[i].session_token ? 1 + s[i].session_token_len : 0);
            OPENSSL_cleanse(s[i].value, total);
            free(s[i].value);
        }
    }
    free(s);
}

/* 1 when the store is now sealed under another master key than the one this handle
 * holds (a rotate-master-key by another process committed since it was opened): a
 * row that does not open is then expected, not a sign of tampering. */
static int master_key_replaced(al_identity *id)
{
    char *check = NULL;
    int replaced = id->vault && id->store->ops->meta_get(id->store, CHECK_KEY, &check) == AL_OK &&
                   al_vault_verify_check(id->vault, check) == AL_ERR_KEY;
    free(check);
    return replaced;
}

int al_identity_load_secrets(al_identity *id, al_identity_secret **out, size_t *out_n)
{
    al_store_record *recs = NULL;
    al_identity_secret *res = NULL;
    size_t n = 0, count = 0;
    int rc;
    *out = NULL;
    *out_n = 0;
    if (!id->vault && (rc = ensure_vault(id, 0)) != AL_OK)
        return rc;
    if ((rc = id->store->ops->list(id->store, &recs, &n)) != AL_OK)
        return rc;
    int64_t now = now_s(id);
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += recs[i].version_count;
    if (cap && !id->vault) {
        rc = AL_ERR_KEY; /* sealed rows appeared but the key is still unknown */
        goto out;
    }
    res = calloc(cap ? cap : 1, sizeof *res);
    if (!res) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        al_store_record *r = &recs[i];
        for (size_t j = 0; j < r->version_count; j++) {
            al_store_version *v = &r->versions[j];
            int current = v->version == r->current_version;
            if (v->wiped || !v->sealed || (!current && v->expires_at <= now))
                continue;
            al_identity_secret *s = &res[count];
            unsigned char *plain = NULL;
            size_t pl = 0;
            rc = al_vault_unseal(id->vault, r->name, r->kind, v->version, v->wrapped_key,
                                 v->wrapped_key_len, v->sealed, v->sealed_len, &plain, &pl);
            if (rc != AL_OK) {
                if (rc == AL_ERR_KEY && master_key_replaced(id))
                    goto out; /* rotate-master-key ran: the caller re-reads the key file */
                al_log(AL_LOG_ERROR, "identity.unseal_failed",
                       "provider=%s version=%u does not open: %s", r->name, (unsigned)v->version,
                       al_strerror(rc));
                goto out;
            }
            count++;
            s->value = plain;
            s->len = pl;
            unsigned char *nl = memchr(plain, '\n', pl);
            if (nl && strcmp(r->kind, "aws") == 0) {
                s->len = (size_t)(nl - plain);
                s->session_token = nl + 1;
                s->session_token_len = pl - s->len - 1;
                *nl = '\0';
            }
            s->name = strdup(r->name);
            s->kind = strdup(r->kind);
            s->environment = strdup(r->environment);
            s->config_json = r->config_json ? strdup(r->config_json) : NULL;
            s->created_at = v->created_at;
            memcpy(s->fingerprint, v->fingerprint, sizeof s->fingerprint);
            s->rotation_max_age = rotation_max_age(r);
            s->version = v->version;
            s->current = current;
            s->expires_at = current ? 0 : v->expires_at;
            if (!s->name || !s->kind || !s->environment) {
                rc = AL_ERR_NOMEM;
                goto out;
            }
        }
    }
    *out = res;
    *out_n = count;
    res = NULL;
    rc = AL_OK;
out:
    al_identity_secrets_free(res, count);
    al_store_records_free(recs, n);
    return rc;
}

int al_identity_verify(al_identity *id, json_t **out)
{
    al_store_record *recs = NULL;
    size_t n = 0;
    int rc, bad = 0;
    if (!id->vault && (rc = ensure_vault(id, 0)) != AL_OK)
        return rc;
    if ((rc = id->store->ops->list(id->store, &recs, &n)) != AL_OK)
        return rc;
    json_t *arr = json_array();
    int64_t now = now_s(id);
    for (size_t i = 0; i < n; i++) {
        al_store_record *r = &recs[i];
        for (size_t j = 0; j < r->version_count; j++) {
            al_store_version *v = &r->versions[j];
            int current = v->version == r->current_version;
            if (v->wiped || !v->sealed || (!current && v->expires_at <= now))
                continue;
            unsigned char *plain = NULL;
            size_t pl = 0;
            char fp[32] = "";
            int orc = id->vault ? al_vault_unseal(id->vault, r->name, r->kind, v->version,
                                                  v->wrapped_key, v->wrapped_key_len, v->sealed,
                                                  v->sealed_len, &plain, &pl)
                                : AL_ERR_KEY;
            if (orc == AL_OK) {
                unsigned char *nl = strcmp(r->kind, "aws") == 0 ? memchr(plain, '\n', pl) : NULL;
                al_vault_fingerprint(plain, nl ? (size_t)(nl - plain) : pl, fp);
                OPENSSL_cleanse(plain, pl);
                free(plain);
            }
            int ok = orc == AL_OK && strcmp(fp, v->fingerprint) == 0;
            bad |= !ok;
            json_array_append_new(arr, json_pack("{s:s, s:s, s:i, s:b, s:s, s:b}", "name", r->name,
                                                 "kind", r->kind, "version", (json_int_t)v->version,
                                                 "current", current, "fingerprint", v->fingerprint,
                                                 "ok", ok));
        }
    }
    al_store_records_free(recs, n);
    *out = json_pack("{s:o}", "credentialProviders", arr);
    return bad ? AL_ERR_KEY : AL_OK;
}

int al_identity_check_table(const char *state_dir, const al_table *t, al_diags *d,
                            al_diags *missing)
{
    al_identity *id = NULL;
    int rc = al_identity_open_readonly(state_dir, &id);
    if (rc != AL_OK)
        return rc; /* AL_ERR_NOTFOUND: no store yet, nothing was checked */
    rc = al_table_check_providers(t, al_identity_provider_env_cb, id, d, missing);
    al_identity_close(id);
    return rc;
}
