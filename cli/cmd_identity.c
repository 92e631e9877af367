/* airlock identity: the credential-provider CLI, with AgentCore Identity's verbs
 * (create/update/get/list/delete for api-key, oauth2 and aws credential providers,
 * and rotate-master-key), JSON output like the AWS CLI.
 *
 * Flags are one table (name, which verbs take it, help), so parsing, unknown-flag
 * errors and per-verb --help come from the same rows.
 *
 * Secrets never come from argv: only stdin ("-"), a file (--X-file) or an
 * environment variable (--X-env). A secret written on the command line is refused
 * without echoing it. Secret buffers are wiped before they are freed. */
#include "al_cli.h"
#include "identity/al_store.h"
#include "common/al_err.h"
#include "identity/al_identity.h"
#include "identity/al_revoke.h"
#include "identity/al_token.h"
#include "identity/al_user_token.h"
#include "targets/al_table.h"
#include "upstream/al_egress.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECRET_MAX 16384

enum family { F_NONE = 1, F_API = 2, F_OAUTH = 4, F_AWS = 8 };
enum action {
    A_CREATE = 1,
    A_UPDATE = 2,
    A_GET = 4,
    A_LIST = 8,
    A_DELETE = 16,
    A_ROTATE = 32,
    A_VERIFY = 64,
    A_TEST = 128,
    A_STATUS = 256,
    A_ULIST = 512,
    A_UDEL = 1024
};
#define F_ALL   (F_NONE | F_API | F_OAUTH | F_AWS)
#define F_PROV  (F_API | F_OAUTH | F_AWS)
#define A_ALL                                                                                      \
    (A_CREATE | A_UPDATE | A_GET | A_LIST | A_DELETE | A_ROTATE | A_VERIFY | A_TEST | A_STATUS |  \
     A_ULIST | A_UDEL)
#define A_CU    (A_CREATE | A_UPDATE)
#define A_NAMED (A_CREATE | A_UPDATE | A_GET | A_DELETE | A_TEST)

static const struct verb {
    const char *name;
    int family, action;
    const char *summary;
} verbs[] = {
    {"create-api-key-credential-provider", F_API, A_CREATE, "store a new API key provider"},
    {"update-api-key-credential-provider", F_API, A_UPDATE,
     "rotate the key (new version) or change metadata"},
    {"get-api-key-credential-provider", F_API, A_GET, "show one provider (never the key)"},
    {"list-api-key-credential-providers", F_API, A_LIST, "list API key providers"},
    {"delete-api-key-credential-provider", F_API, A_DELETE, "delete a provider and its key"},
    {"create-oauth2-credential-provider", F_OAUTH, A_CREATE, "store a new OAuth 2.0 client"},
    {"update-oauth2-credential-provider", F_OAUTH, A_UPDATE,
     "rotate the client secret or change settings"},
    {"get-oauth2-credential-provider", F_OAUTH, A_GET, "show one provider (never the secret)"},
    {"list-oauth2-credential-providers", F_OAUTH, A_LIST, "list OAuth 2.0 providers"},
    {"delete-oauth2-credential-provider", F_OAUTH, A_DELETE, "delete a provider"},
    {"test-oauth2-credential-provider", F_OAUTH, A_TEST,
     "request one client-credentials token and show its metadata (never the token)"},
    {"get-oauth2-token-status", F_OAUTH, A_STATUS,
     "the tokens a running serve holds: expiry, scopes, fingerprint (never the token)"},
    {"list-user-tokens", F_OAUTH, A_ULIST,
     "the users' tokens (3LO) of a provider: user, scope, expiry, fingerprint (never a token)"},
    {"delete-user-token", F_OAUTH, A_UDEL,
     "revoke a user's tokens (3LO) at the provider (RFC 7009) and delete them; their next "
     "request asks for consent again"},
    {"create-aws-credential-provider", F_AWS, A_CREATE, "store AWS access keys for SigV4"},
    {"update-aws-credential-provider", F_AWS, A_UPDATE, "rotate the keys or change settings"},
    {"get-aws-credential-provider", F_AWS, A_GET, "show one provider (never the keys)"},
    {"list-aws-credential-providers", F_AWS, A_LIST, "list AWS providers"},
    {"delete-aws-credential-provider", F_AWS, A_DELETE, "delete a provider"},
    {"rotate-master-key", F_NONE, A_ROTATE, "new master key; rewrap every data key"},
    {"verify-store", F_NONE, A_VERIFY,
     "decrypt every usable version and check its fingerprint (prints no secret)"},
};

/* Option values, indexed by enum opt. */
enum opt {
    O_STATE_DIR,
    O_CONFIG,
    O_NAME,
    O_ENV,
    O_DESC,
    O_TAG,
    O_GRACE,
    O_MAX_AGE,
    O_API_KEY,
    O_API_KEY_FILE,
    O_API_KEY_ENV,
    O_VENDOR,
    O_CLIENT_ID,
    O_CLIENT_SECRET,
    O_CLIENT_SECRET_FILE,
    O_CLIENT_SECRET_ENV,
    O_DISCOVERY,
    O_ISSUER,
    O_AUTHZ,
    O_TOKEN_EP,
    O_AUTH_METHOD,
    O_TENANT,
    O_CA_FILE,
    O_ALLOW_INSECURE,
    O_ALLOW_PRIVATE,
    O_ADMIN,
    O_PROVIDER_FILTER,
    O_SCOPE,
    O_AUDIENCE,
    O_RESOURCE,
    O_AKID,
    O_SAK,
    O_SAK_FILE,
    O_SAK_ENV,
    O_STOK,
    O_STOK_FILE,
    O_STOK_ENV,
    O_REGION,
    O_UPROVIDER,
    O_UUSER,
    O_REVOKE_EP,
    O_PAR_EP,
    O_USE_PAR,
    O_REVOKE_REPLACED,
    O_COUNT
};

static const struct flag {
    const char *name;
    int family, action;
    int secret_stdin; /* 1 = a secret flag: only "-" (stdin) is accepted as its value */
    const char *arg, *help;
} flags[O_COUNT] = {
    [O_STATE_DIR] = {"--state-dir", F_ALL, A_ALL, 0, "DIR", "the store's directory"},
    [O_CONFIG] = {"-c", F_ALL, A_ALL, 0, "FILE", "take state_dir and store from this target table"},
    [O_NAME] = {"--name", F_PROV, A_NAMED, 0, "NAME", "provider name (required)"},
    [O_ENV] = {"--environment", F_PROV, A_CU, 0, "ENV",
               "environment, e.g. dev or prod (default: default)"},
    [O_DESC] = {"--description", F_PROV, A_CU, 0, "TEXT", "free text"},
    [O_TAG] = {"--tag", F_PROV, A_CU, 0, "KEY=VALUE", "a tag (repeatable)"},
    [O_GRACE] = {"--grace", F_PROV, A_UPDATE, 0, "DURATION",
                 "how long the previous version stays usable: 24h (default), 30m, 0 = cut off"},
    [O_MAX_AGE] = {"--rotation-max-age", F_PROV, A_CU, 0, "DURATION",
                   "rotate at least this often (e.g. 90d; 0 = no limit): older is flagged"},
    [O_API_KEY] = {"--api-key", F_API, A_CU, 1, "-", "read the API key from standard input"},
    [O_API_KEY_FILE] = {"--api-key-file", F_API, A_CU, 0, "FILE", "read the API key from FILE"},
    [O_API_KEY_ENV] = {"--api-key-env", F_API, A_CU, 0, "VAR", "read the API key from $VAR"},
    [O_VENDOR] = {"--credential-provider-vendor", F_OAUTH, A_CU, 0, "VENDOR",
                  "CustomOauth2 (default), GoogleOauth2, GithubOauth2, MicrosoftOauth2, "
                  "SlackOauth2, SalesforceOauth2"},
    [O_CLIENT_ID] = {"--client-id", F_OAUTH, A_CU, 0, "ID", "OAuth client id (required on create)"},
    [O_CLIENT_SECRET] = {"--client-secret", F_OAUTH, A_CU, 1, "-",
                         "read the client secret from standard input"},
    [O_CLIENT_SECRET_FILE] = {"--client-secret-file", F_OAUTH, A_CU, 0, "FILE",
                              "read the client secret from FILE"},
    [O_CLIENT_SECRET_ENV] = {"--client-secret-env", F_OAUTH, A_CU, 0, "VAR",
                             "read the client secret from $VAR"},
    [O_DISCOVERY] = {"--discovery-url", F_OAUTH, A_CU, 0, "URL", "OpenID discovery document"},
    [O_ISSUER] = {"--issuer", F_OAUTH, A_CU, 0, "URL", "issuer (custom without discovery)"},
    [O_AUTHZ] = {"--authorization-endpoint", F_OAUTH, A_CU, 0, "URL", "authorization endpoint"},
    [O_TOKEN_EP] = {"--token-endpoint", F_OAUTH, A_CU, 0, "URL", "token endpoint"},
    [O_AUTH_METHOD] = {"--token-endpoint-auth-method", F_OAUTH, A_CU, 0, "METHOD",
                       "client_secret_basic (default) or client_secret_post"},
    [O_TENANT] = {"--tenant-id", F_OAUTH, A_CU, 0, "ID", "MicrosoftOauth2 tenant (default common)"},
    [O_CA_FILE] = {"--ca-file", F_OAUTH, A_CU, 0, "FILE",
                   "PEM CA bundle that alone verifies the provider's endpoints (default: system CAs)"},
    /* arg NULL: a switch; "--flag" is true, "--flag=false" turns it off on update */
    [O_ALLOW_INSECURE] = {"--allow-insecure-endpoints", F_OAUTH, A_CU, 0, NULL,
                          "allow http:// discovery and token endpoints (secrets in clear text)"},
    [O_ALLOW_PRIVATE] = {"--allow-private-network", F_OAUTH, A_CU, 0, NULL,
                         "allow endpoints on private/loopback addresses (egress guard)"},
    [O_ADMIN] = {"--admin", F_OAUTH, A_STATUS, 0, "URL",
                 "the admin listener of serve (default: listen.admin of -c FILE)"},
    [O_PROVIDER_FILTER] = {"--name", F_OAUTH, A_STATUS, 0, "NAME", "only this provider's tokens"},
    [O_SCOPE] = {"--scope", F_OAUTH, A_TEST, 0, "SCOPE", "a scope to request (repeatable)"},
    [O_AUDIENCE] = {"--audience", F_OAUTH, A_TEST, 0, "AUD", "audience parameter"},
    [O_RESOURCE] = {"--resource", F_OAUTH, A_TEST, 0, "URL", "RFC 8707 resource parameter"},
    [O_AKID] = {"--access-key-id", F_AWS, A_CU, 0, "ID", "AWS access key id (required on create)"},
    [O_SAK] = {"--secret-access-key", F_AWS, A_CU, 1, "-",
               "read the secret access key from standard input"},
    [O_SAK_FILE] = {"--secret-access-key-file", F_AWS, A_CU, 0, "FILE",
                    "read the secret access key from FILE"},
    [O_SAK_ENV] = {"--secret-access-key-env", F_AWS, A_CU, 0, "VAR",
                   "read the secret access key from $VAR"},
    [O_STOK] = {"--session-token", F_AWS, A_CU, 1, "-", "read a session token from standard input"},
    [O_STOK_FILE] = {"--session-token-file", F_AWS, A_CU, 0, "FILE",
                     "read a session token from FILE"},
    [O_STOK_ENV] = {"--session-token-env", F_AWS, A_CU, 0, "VAR", "read a session token from $VAR"},
    [O_REGION] = {"--region", F_AWS, A_CU, 0, "REGION", "default signing region"},
    [O_UPROVIDER] = {"--provider", F_OAUTH, A_ULIST | A_UDEL, 0, "NAME",
                     "the OAuth provider (required for delete-user-token)"},
    [O_UUSER] = {"--user", F_OAUTH, A_UDEL, 0, "USER",
                 "the end user, as list-user-tokens shows it (\"ISSUER SUB\" or a header's id)"},
    [O_REVOKE_EP] = {"--revocation-endpoint", F_OAUTH, A_CU, 0, "URL",
                     "RFC 7009 revocation endpoint (default: the discovery document's)"},
    [O_PAR_EP] = {"--par-endpoint", F_OAUTH, A_CU, 0, "URL",
                  "RFC 9126 pushed authorization request endpoint (default: discovery's)"},
    [O_USE_PAR] = {"--use-par", F_OAUTH, A_CU, 0, NULL,
                   "push users' authorization requests (RFC 9126) even when the provider "
                   "does not require it"},
    [O_REVOKE_REPLACED] = {"--revoke-replaced-tokens", F_OAUTH, A_CU, 0, NULL,
                           "revoke the refresh token a user's new consent replaced (only for "
                           "providers that revoke one token, not the whole grant)"},
};

static void usage_top(FILE *out)
{
    fprintf(out, "usage: airlock identity <verb> [options]\n\n"
                 "Manage credential providers in the encrypted store (<state_dir>/identity.db).\n"
                 "Store: --state-dir DIR, else $AIRLOCK_STATE_DIR, else state_dir of -c FILE, "
                 "else ./.airlock;\nin PostgreSQL instead when -c FILE's table says store: "
                 "{backend: postgres, ...}.\nMaster key: $AIRLOCK_MASTER_KEY_FILE, else "
                 "<state_dir>/master.key (generated, 0600).\n\nverbs:\n");
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        fprintf(out, "  %-38s %s\n", verbs[i].name, verbs[i].summary);
    fprintf(out, "\nSecrets are read from standard input (--api-key -), a file (--api-key-file "
                 "F) or an\nenvironment variable (--api-key-env VAR), never from the command "
                 "line.\nRun 'airlock identity <verb> --help' for a verb's options.\n");
}

static void usage_verb(FILE *out, const struct verb *v)
{
    fprintf(out, "usage: airlock identity %s [options]\n\n%s\n\noptions:\n", v->name, v->summary);
    for (int i = 0; i < O_COUNT; i++) {
        if (!(flags[i].family & v->family) || !(flags[i].action & v->action))
            continue;
        char left[64];
        snprintf(left, sizeof left, "%s %s", flags[i].name,
                 flags[i].arg ? flags[i].arg : "[=false]");
        fprintf(out, "  %-36s %s\n", left, flags[i].help);
    }
    fprintf(out, "  %-36s %s\n", "--help", "print this help");
}

typedef struct secret_buf {
    unsigned char *p; /* owned; wiped on free */
    size_t len;
} secret_buf;

static void secret_free(secret_buf *s)
{
    if (s->p) {
        OPENSSL_cleanse(s->p, s->len);
        free(s->p);
    }
    s->p = NULL;
    s->len = 0;
}

static int read_fd_secret(int fd, const char *what, secret_buf *out)
{
    unsigned char *buf = malloc(SECRET_MAX + 2);
    size_t len = 0;
    if (!buf)
        return AL_ERR_NOMEM;
    for (;;) {
        ssize_t n = read(fd, buf + len, SECRET_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "airlock: cannot read %s: %s\n", what, strerror(errno));
            OPENSSL_cleanse(buf, SECRET_MAX + 2);
            free(buf);
            return AL_ERR_IO;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > SECRET_MAX) {
            fprintf(stderr, "airlock: the secret from %s is longer than %d bytes\n", what,
                    SECRET_MAX);
            OPENSSL_cleanse(buf, SECRET_MAX + 2);
            free(buf);
            return AL_ERR_TOOBIG;
        }
    }
    /* `echo KEY |` and files written by editors end with a newline that is not part of it. */
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    buf[len] = '\0';
    out->p = buf;
    out->len = len;
    return AL_OK;
}

/* Reads one secret from the "-" (stdin), file or env flag given; 0 if none given. */
static int get_secret(char *const *o, int o_stdin, int o_file, int o_env, int *stdin_used,
                      secret_buf *out, int *given)
{
    int n = !!o[o_stdin] + !!o[o_file] + !!o[o_env], rc = AL_OK;
    *given = 0;
    if (n == 0)
        return AL_OK;
    if (n > 1) {
        fprintf(stderr, "airlock: give only one of %s -, %s, %s\n", flags[o_stdin].name,
                flags[o_file].name, flags[o_env].name);
        return AL_ERR_INVAL;
    }
    *given = 1;
    if (o[o_stdin]) {
        if (*stdin_used) {
            fprintf(stderr, "airlock: only one secret can come from standard input\n");
            return AL_ERR_INVAL;
        }
        *stdin_used = 1;
        rc = read_fd_secret(0, "standard input", out);
    } else if (o[o_file]) {
        int fd = open(o[o_file], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "airlock: cannot open %s: %s\n", o[o_file], strerror(errno));
            return AL_ERR_IO;
        }
        rc = read_fd_secret(fd, o[o_file], out);
        close(fd);
    } else {
        const char *v = getenv(o[o_env]);
        if (!v) {
            fprintf(stderr, "airlock: environment variable %s is not set\n", o[o_env]);
            return AL_ERR_INVAL;
        }
        size_t len = strlen(v);
        if (len > SECRET_MAX)
            return AL_ERR_TOOBIG;
        out->p = malloc(len + 1);
        if (!out->p)
            return AL_ERR_NOMEM;
        memcpy(out->p, v, len + 1);
        out->len = len;
    }
    if (rc == AL_OK && out->len == 0) {
        fprintf(stderr, "airlock: the secret given with %s is empty\n",
                o[o_stdin]  ? flags[o_stdin].name
                : o[o_file] ? flags[o_file].name
                            : flags[o_env].name);
        secret_free(out);
        rc = AL_ERR_INVAL;
    }
    return rc;
}

static int parse_duration(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0)
        return AL_ERR_INVAL;
    int64_t mul = 1;
    if (*end == 's')
        mul = 1, end++;
    else if (*end == 'm')
        mul = 60, end++;
    else if (*end == 'h')
        mul = 3600, end++;
    else if (*end == 'd')
        mul = 86400, end++;
    if (*end || v > 3650LL * 86400 / mul)
        return AL_ERR_INVAL;
    *out = (int64_t)v * mul;
    return AL_OK;
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
    if (s)
        printf("%s\n", s);
    free(s);
}

static const char *family_kind(int f)
{
    return f == F_API ? "api_key" : f == F_OAUTH ? "oauth2" : f == F_AWS ? "aws" : NULL;
}

/* get-oauth2-token-status: GET /oauth2/tokens of the running serve (metadata only). */
static int token_status(char **o, json_t **res)
{
    char url[512];
    al_table *t = NULL;
    al_fetch *f = NULL;
    char *buf = NULL;
    json_t *all = NULL;
    int rc = AL_ERR_INVAL;
    if (o[O_ADMIN]) {
        snprintf(url, sizeof url, "%s/oauth2/tokens", o[O_ADMIN]);
    } else {
        al_diags d = {0};
        if (!o[O_CONFIG] || al_table_load(o[O_CONFIG], &t, &d) != AL_OK || !t->listen.admin) {
            fprintf(stderr, "airlock identity get-oauth2-token-status: give --admin URL, or -c "
                            "FILE of a table with listen.admin\n");
            al_diags_free(&d);
            goto out;
        }
        al_diags_free(&d);
        char base[300];
        al_cli_admin_url(t->listen.admin, base, sizeof base);
        snprintf(url, sizeof url, "%s/oauth2/tokens", base);
    }
    /* the admin listener is local and plain http by design */
    al_fetch_opts fo = {.allow_insecure = 1, .allow_private_network = 1, .timeout_ms = 10000};
    al_fetch_request rq = {.url = url};
    al_fetch_response r;
    if ((rc = al_fetch_new(&f)) != AL_OK)
        goto out;
    rc = al_fetch_wait(f, &rq, &fo, &r, &buf);
    if (rc != AL_OK || r.status != 200 || !(all = json_loadb(r.body, r.body_len, 0, NULL))) {
        fprintf(stderr, "airlock identity: cannot read %s: %s\n", url,
                rc != AL_OK ? r.errmsg : "unexpected answer");
        rc = rc != AL_OK ? rc : AL_ERR_PROTO;
        goto out;
    }
    json_t *out = json_array(), *e;
    size_t i;
    json_array_foreach(json_object_get(all, "tokens"), i, e)
    {
        const char *p = json_string_value(json_object_get(e, "provider"));
        if (!o[O_PROVIDER_FILTER] || (p && strcmp(p, o[O_PROVIDER_FILTER]) == 0))
            json_array_append(out, e);
    }
    *res = json_pack("{s:o}", "tokens", out);
    rc = AL_OK;
out:
    json_decref(all);
    free(buf);
    al_fetch_free(f);
    al_table_unref(t);
    return rc;
}

/* test-oauth2-credential-provider: one token through the same client serve uses (the
 * egress guard, CA and scheme rules included); prints metadata, never the token. The
 * error (with the provider's error and description) goes to stderr. */
static int test_oauth2(al_identity *id, char **o, char **scopes, size_t n_scopes, json_t **res)
{
    al_identity_secret *all = NULL;
    size_t n = 0;
    al_oidc *oidc = NULL;
    al_token_client *tc = NULL;
    al_token *tok = NULL;
    int rc = al_identity_load_secrets(id, &all, &n);
    if (rc != AL_OK)
        return rc;
    const al_identity_secret *sec = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(all[i].name, o[O_NAME]) == 0 && strcmp(all[i].kind, "oauth2") == 0 &&
            all[i].current)
            sec = &all[i];
    rc = AL_ERR_NOTFOUND;
    if (!sec)
        goto out;
    al_token_spec spec = {.provider = sec->name,
                          .version = sec->version,
                          .config_json = sec->config_json,
                          .secret = sec->value,
                          .secret_len = sec->len,
                          .scopes = scopes,
                          .scope_count = n_scopes,
                          .audience = o[O_AUDIENCE],
                          .resource = o[O_RESOURCE]};
    if ((rc = al_oidc_new(&oidc)) != AL_OK || (rc = al_token_client_new(oidc, &tc)) != AL_OK)
        goto out;
    al_fetch_set_guard(al_oidc_fetcher(oidc), al_egress_guard_public, NULL);
    char err[512];
    rc = al_token_get_wait(tc, &spec, &tok, err, sizeof err);
    if (rc != AL_OK) {
        fprintf(stderr, "airlock identity: the token request failed: %s\n", err);
        goto out;
    }
    *res = json_pack("{s:s, s:I, s:s, s:I, s:b, s:s, s:b}", "name", sec->name, "version",
                     (json_int_t)sec->version, "fingerprint", tok->fingerprint, "expiresIn",
                     (json_int_t)tok->lifetime_s, "hasExpiry", tok->has_expiry, "scope",
                     tok->scope, "longLived", tok->long_lived);
out:
    al_token_release(tok);
    if (oidc)
        al_fetch_stop(al_oidc_fetcher(oidc));
    al_token_client_free(tc);
    al_oidc_free(oidc);
    al_identity_secrets_free(all, n);
    return rc;
}

/* delete-user-token, before the delete: revokes the user's refresh token (else access
 * token) at the provider (RFC 7009). Its outcome is reported (*rev, stderr) and audited,
 * but only a missing row stops the delete (AL_ERR_NOTFOUND): a provider that is down or
 * refuses must not keep an operator from cutting a user off in airlock. */
static int revoke_user_token(al_identity *id, const char *provider, const char *user,
                             json_t **rev)
{
    al_user_token t;
    al_identity_secret *all = NULL;
    size_t n = 0;
    al_oidc *oidc = NULL;
    char msg[512] = "";
    const char *outcome = "failed", *type = NULL;
    int rc = al_identity_load_user_token(id, provider, user, &t);
    if (rc == AL_ERR_NOTFOUND)
        return rc;
    if (rc != AL_OK) {
        outcome = "not_opened";
        snprintf(msg, sizeof msg, "the stored tokens do not open (%s), so they cannot be revoked",
                 al_strerror(rc));
        goto out;
    }
    type = t.refresh_token ? "refresh_token" : "access_token";
    const al_identity_secret *sec = NULL;
    if ((rc = al_identity_load_secrets(id, &all, &n)) == AL_OK)
        for (size_t i = 0; i < n; i++)
            if (strcmp(all[i].name, provider) == 0 && strcmp(all[i].kind, "oauth2") == 0 &&
                all[i].current)
                sec = &all[i];
    if (!sec) {
        snprintf(msg, sizeof msg, "no current oauth2 credential provider '%s' to revoke with",
                 provider);
        goto out;
    }
    if ((rc = al_oidc_new(&oidc)) != AL_OK) {
        snprintf(msg, sizeof msg, "%s", al_strerror(rc));
        goto out;
    }
    al_fetch_set_guard(al_oidc_fetcher(oidc), al_egress_guard_public, NULL);
    rc = al_revoke_wait(oidc, sec->config_json, sec->value, sec->len,
                        t.refresh_token ? t.refresh_token : t.access_token, type, msg, sizeof msg);
    outcome = rc == AL_OK ? "revoked" : rc == AL_ERR_NOTFOUND ? "no_endpoint" : "failed";
out:
    al_identity_audit_user_token_revoke(id, provider, user, type, outcome, *msg ? msg : NULL);
    if (strcmp(outcome, "revoked") != 0)
        fprintf(stderr,
                "airlock identity: warning: the user's token was not revoked at the provider "
                "(%s); the tokens are deleted from airlock's store anyway\n",
                msg);
    *rev = json_pack("{s:s, s:s?}", "outcome", outcome, "tokenType", type);
    if (*rev && *msg)
        json_object_set_new(*rev, "error", json_string(msg));
    if (oidc)
        al_fetch_stop(al_oidc_fetcher(oidc));
    al_oidc_free(oidc);
    al_identity_secrets_free(all, n);
    al_user_token_clear(&t);
    return AL_OK;
}

static int exit_for(int rc)
{
    return rc == AL_OK ? 0 : 1;
}

int al_cmd_identity(int argc, char **argv)
{
    char *o[O_COUNT] = {0};
    char *scopes[32];
    size_t n_scopes = 0;
    json_t *tags = NULL, *config = NULL, *res = NULL;
    secret_buf secret = {0}, token = {0};
    al_identity *id = NULL;
    char *state_dir = NULL;
    int ret = 2, rc = AL_OK;

    if (argc < 2) {
        usage_top(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage_top(stdout);
        return 0;
    }
    const struct verb *v = NULL;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strcmp(argv[1], verbs[i].name) == 0)
            v = &verbs[i];
    if (!v) {
        fprintf(stderr, "airlock identity: unknown verb '%s'\n\n", argv[1]);
        usage_top(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage_verb(stdout, v);
            ret = 0;
            goto out;
        }
        int f = -1;
        const char *val = NULL;
        size_t alen = strcspn(a, "=");
        for (int k = 0; k < O_COUNT; k++)
            if (strlen(flags[k].name) == alen && strncmp(a, flags[k].name, alen) == 0 &&
                (flags[k].family & v->family) && (flags[k].action & v->action))
                f = k;
        if (f < 0 && a[0] != '-') {
            /* Never echoed: a stray argument may well be a pasted secret. */
            fprintf(stderr,
                    "airlock identity %s: unexpected argument #%d (not shown: it might be a "
                    "secret); options start with --\n\n",
                    v->name, i - 1);
            usage_verb(stderr, v);
            goto out;
        }
        if (f < 0) {
            /* Only the flag name is echoed, never a value after '='. */
            fprintf(stderr, "airlock identity %s: unknown option '%.*s'\n\n", v->name,
                    (int)(alen < 64 ? alen : 64), a);
            usage_verb(stderr, v);
            goto out;
        }
        if (!flags[f].arg) {
            val = a[alen] == '=' ? a + alen + 1 : "true";
            if (strcmp(val, "true") != 0 && strcmp(val, "false") != 0) {
                fprintf(stderr, "airlock identity %s: %s is a switch: give it alone, or as "
                                "%s=false\n",
                        v->name, flags[f].name, flags[f].name);
                goto out;
            }
        } else if (a[alen] == '=')
            val = a + alen + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "airlock identity %s: %s needs a value\n", v->name, flags[f].name);
            goto out;
        }
        if (flags[f].secret_stdin && strcmp(val, "-") != 0) {
            /* The value itself is never printed. */
            fprintf(stderr,
                    "airlock identity: refusing a secret written on the command line (%s): "
                    "command lines are visible to other users (ps, /proc) and kept in shell "
                    "history. Pass it on standard input (%s -), from a file (%s-file FILE) or "
                    "from an environment variable (%s-env VAR)\n",
                    flags[f].name, flags[f].name, flags[f].name, flags[f].name);
            goto out;
        }
        if (f == O_SCOPE) {
            if (n_scopes >= sizeof scopes / sizeof scopes[0]) {
                fprintf(stderr, "airlock identity: at most 32 --scope\n");
                goto out;
            }
            scopes[n_scopes++] = (char *)val;
            continue;
        }
        if (f == O_TAG) {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                fprintf(stderr, "airlock identity: --tag needs KEY=VALUE\n");
                goto out;
            }
            if (!tags)
                tags = json_object();
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)(eq - val), val);
            json_object_set_new(tags, key, json_string(eq + 1));
            continue;
        }
        o[f] = (char *)val;
    }
    if ((v->action & A_NAMED) && !o[O_NAME]) {
        fprintf(stderr, "airlock identity %s: --name is required\n\n", v->name);
        usage_verb(stderr, v);
        goto out;
    }
    int64_t grace = -1;
    if (o[O_GRACE] && parse_duration(o[O_GRACE], &grace) != AL_OK) {
        fprintf(stderr, "airlock identity: --grace takes a duration like 24h, 30m, 90s or 0\n");
        goto out;
    }

    int64_t max_age = -1;
    if (o[O_MAX_AGE] && parse_duration(o[O_MAX_AGE], &max_age) != AL_OK) {
        fprintf(stderr,
                "airlock identity: --rotation-max-age takes a duration like 90d, 24h or 0\n");
        goto out;
    }
    /* Non-secret settings per kind. */
    const char *cfg_map[][2] = {{"vendor", o[O_VENDOR]},
                                {"clientId", o[O_CLIENT_ID]},
                                {"discoveryUrl", o[O_DISCOVERY]},
                                {"issuer", o[O_ISSUER]},
                                {"authorizationEndpoint", o[O_AUTHZ]},
                                {"tokenEndpoint", o[O_TOKEN_EP]},
                                {"tokenEndpointAuthMethod", o[O_AUTH_METHOD]},
                                {"tenantId", o[O_TENANT]},
                                {"revocationEndpoint", o[O_REVOKE_EP]},
                                {"parEndpoint", o[O_PAR_EP]},
                                {"accessKeyId", o[O_AKID]},
                                {"region", o[O_REGION]}};
    for (size_t i = 0; i < sizeof cfg_map / sizeof cfg_map[0]; i++) {
        if (!cfg_map[i][1])
            continue;
        if (!config)
            config = json_object();
        json_object_set_new(config, cfg_map[i][0], json_string(cfg_map[i][1]));
    }
    if (o[O_CA_FILE]) {
        /* serve runs from another directory: store the absolute path */
        char *abs = realpath(o[O_CA_FILE], NULL);
        if (!abs) {
            fprintf(stderr, "airlock identity: --ca-file %s: %s\n", o[O_CA_FILE],
                    strerror(errno));
            goto out;
        }
        if (!config)
            config = json_object();
        json_object_set_new(config, "caFile", json_string(abs));
        free(abs);
    }
    const struct {
        int flag;
        const char *key;
    } switches[] = {{O_ALLOW_INSECURE, "allowInsecureEndpoints"},
                    {O_ALLOW_PRIVATE, "allowPrivateNetwork"},
                    {O_USE_PAR, "usePar"},
                    {O_REVOKE_REPLACED, "revokeReplacedTokens"}};
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++) {
        const char *val = o[switches[i].flag];
        if (!val)
            continue;
        if (!config)
            config = json_object();
        json_object_set_new(config, switches[i].key, json_boolean(strcmp(val, "true") == 0));
    }
    if (max_age >= 0) { /* kept with the provider's settings; 0 removes the limit */
        if (!config)
            config = json_object();
        json_object_set_new(config, "rotationMaxAge", json_integer(max_age));
    }

    int stdin_used = 0, given = 0, tgiven = 0;
    if (v->family == F_API)
        rc = get_secret(o, O_API_KEY, O_API_KEY_FILE, O_API_KEY_ENV, &stdin_used, &secret, &given);
    else if (v->family == F_OAUTH)
        rc = get_secret(o, O_CLIENT_SECRET, O_CLIENT_SECRET_FILE, O_CLIENT_SECRET_ENV, &stdin_used,
                        &secret, &given);
    else if (v->family == F_AWS) {
        rc = get_secret(o, O_SAK, O_SAK_FILE, O_SAK_ENV, &stdin_used, &secret, &given);
        if (rc == AL_OK)
            rc = get_secret(o, O_STOK, O_STOK_FILE, O_STOK_ENV, &stdin_used, &token, &tgiven);
    }
    if (rc != AL_OK) {
        ret = 1;
        goto out;
    }
    if (v->action == A_CREATE && !given) {
        fprintf(stderr, "airlock identity %s: the secret is required: use %s\n", v->name,
                v->family == F_API     ? "--api-key - (stdin), --api-key-file F or --api-key-env V"
                : v->family == F_OAUTH ? "--client-secret -, --client-secret-file F or "
                                         "--client-secret-env V"
                                       : "--secret-access-key -, --secret-access-key-file F or "
                                         "--secret-access-key-env V");
        goto out;
    }
    if (tgiven && !given) {
        fprintf(stderr, "airlock identity: a new --session-token needs the secret access key "
                        "that goes with it\n");
        goto out;
    }

    state_dir = al_cli_state_dir(o[O_STATE_DIR], o[O_CONFIG]);
    if (!state_dir || al_cli_choose_store(o[O_CONFIG])) {
        ret = 1;
        goto out;
    }
    const char *kind = family_kind(v->family);
    ret = 1;
    if (v->action == A_STATUS) {
        rc = token_status(o, &res);
        if (rc != AL_OK) {
            ret = 1;
            goto out;
        }
    } else if (v->action == A_TEST) {
        rc = al_identity_open(state_dir, AL_IDENTITY_SECRETS, &id);
        if (rc == AL_OK)
            rc = test_oauth2(id, o, scopes, n_scopes, &res);
        if (rc != AL_OK && rc != AL_ERR_NOTFOUND) {
            ret = 1;
            goto out;
        }
    } else if (v->action == A_VERIFY) {
        rc = al_identity_open(state_dir, AL_IDENTITY_SECRETS, &id);
        if (rc == AL_OK) {
            rc = al_identity_verify(id, &res);
            if (rc != AL_OK && res) {
                print_json(res);
                fprintf(stderr, "airlock identity: some versions do not open or do not match "
                                "their fingerprint (\"ok\": false above)\n");
                ret = 1;
                goto out;
            }
        }
    } else if (v->action & (A_ULIST | A_UDEL)) {
        if (v->action == A_UDEL && (!o[O_UPROVIDER] || !o[O_UUSER])) {
            fprintf(stderr, "airlock identity %s: --provider and --user are required\n", v->name);
            ret = 2;
            goto out;
        }
        rc = v->action == A_ULIST
                 ? al_identity_open_readonly(state_dir, &id)
                 : al_identity_open(state_dir, AL_IDENTITY_WRITE | AL_IDENTITY_SECRETS, &id);
        if (rc == AL_ERR_NOTFOUND && v->action == A_ULIST) {
            res = json_pack("{s:[]}", "userTokens");
            rc = AL_OK;
        } else if (rc == AL_OK && v->action == A_ULIST)
            rc = al_identity_list_user_tokens(id, o[O_UPROVIDER], &res);
        else if (rc == AL_OK) {
            json_t *rev = NULL;
            rc = revoke_user_token(id, o[O_UPROVIDER], o[O_UUSER], &rev);
            if (rc == AL_OK)
                rc = al_identity_delete_user_token(id, o[O_UPROVIDER], o[O_UUSER]);
            if (rc == AL_ERR_NOTFOUND) {
                fprintf(stderr, "airlock identity: no tokens of user '%s' for provider '%s'\n",
                        o[O_UUSER], o[O_UPROVIDER]);
                ret = 1;
                goto out;
            }
            if (rc == AL_OK)
                res = json_pack("{s:s, s:s, s:b, s:O}", "provider", o[O_UPROVIDER], "user",
                                o[O_UUSER], "deleted", 1, "revocation", rev);
            json_decref(rev);
        }
    } else if (v->action & (A_GET | A_LIST)) {
        rc = al_identity_open_readonly(state_dir, &id);
        if (rc == AL_ERR_NOTFOUND && v->action == A_LIST) {
            res = json_pack("{s:[]}", "credentialProviders");
            print_json(res);
            ret = 0;
            goto out;
        }
        if (rc == AL_OK && v->action == A_GET)
            rc = al_identity_describe(id, o[O_NAME], kind, &res);
        else if (rc == AL_OK)
            rc = al_identity_list(id, kind, &res);
    } else {
        rc = al_identity_open(state_dir, AL_IDENTITY_WRITE, &id);
        if (rc == AL_OK)
            al_identity_purge_expired(id); /* best effort: wipe versions past their grace */
        al_provider_spec sp = {.name = o[O_NAME],
                               .kind = kind,
                               .environment = o[O_ENV],
                               .description = o[O_DESC],
                               .tags = tags,
                               .config = config,
                               .secret = given ? secret.p : NULL,
                               .secret_len = secret.len,
                               .session_token = tgiven ? token.p : NULL,
                               .session_token_len = token.len,
                               .grace_s = grace};
        size_t count = 0;
        if (rc != AL_OK)
            ;
        else if (v->action == A_CREATE)
            rc = al_identity_create(id, &sp, NULL);
        else if (v->action == A_UPDATE)
            rc = al_identity_update(id, &sp, NULL);
        else if (v->action == A_DELETE)
            rc = al_identity_delete(id, o[O_NAME], kind);
        else if (v->action == A_ROTATE) {
            rc = al_identity_rotate_master_key(id, &count);
            if (rc == AL_OK)
                res = json_pack("{s:b, s:I}", "rotated", 1, "rewrappedDataKeys", (json_int_t)count);
        }
        if (rc == AL_OK && (v->action & A_CU))
            rc = al_identity_describe(id, o[O_NAME], kind, &res);
        if (rc == AL_OK && v->action == A_DELETE)
            res = json_pack("{s:s, s:b}", "name", o[O_NAME], "deleted", 1);
    }
    const al_store_choice *sc = al_store_chosen();
    char where[4400];
    al_store_describe(sc, state_dir, where, sizeof where);
    if (rc == AL_ERR_NOTFOUND) {
        if (o[O_NAME])
            fprintf(stderr, "airlock identity: no %s credential provider named '%s' in %s\n",
                    kind ? kind : "", o[O_NAME], sc->backend ? where : state_dir);
        else
            fprintf(stderr, "airlock identity: no identity store in %s\n",
                    sc->backend ? where : state_dir);
    } else if (rc == AL_ERR_DB && sc->backend == AL_STORE_BACKEND_POSTGRES) {
        fprintf(stderr,
                "airlock identity %s: failed: the store's database, %s, is unreachable or "
                "refused the change (see the message above); nothing was changed — retry "
                "when it is back\n",
                v->name, where);
    } else if (rc != AL_OK) {
        fprintf(stderr, "airlock identity %s: failed: %s\n", v->name, al_strerror(rc));
    } else {
        if (res)
            print_json(res);
    }
    ret = exit_for(rc);
out:
    secret_free(&secret);
    secret_free(&token);
    json_decref(tags);
    json_decref(config);
    json_decref(res);
    al_identity_close(id);
    free(state_dir);
    return ret;
}
