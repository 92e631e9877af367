/* Unit tests of identity/al_identity over the SQLite store: create/update/delete,
 * rotation and grace expiry with an injected clock, wrong master key, tampered and
 * moved rows, rotate-master-key (and its crash recovery), the environment callback,
 * and concurrent use (a forked child writes while the parent reads). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_identity.h"
#include "identity/al_vault.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[256];
static int64_t fake_now = 1800000000;

static int64_t clock_fn(void *arg)
{
    (void)arg;
    return fake_now;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/al-idstore-XXXXXX");
    assert_non_null(mkdtemp(dir));
    unsetenv("AIRLOCK_MASTER_KEY_FILE");
    char audit[300];
    snprintf(audit, sizeof audit, "%s/audit.log", dir);
    setenv("AIRLOCK_AUDIT_FILE", audit, 1);
    fake_now = 1800000000;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static al_identity *open_w(void)
{
    al_identity *id = NULL;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_OK);
    al_identity_set_clock(id, clock_fn, NULL);
    return id;
}

static void create_key(al_identity *id, const char *name, const char *env, const char *secret)
{
    al_provider_spec sp = {.name = name,
                           .kind = "api_key",
                           .environment = env,
                           .secret = (const unsigned char *)secret,
                           .secret_len = strlen(secret)};
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
}

static int update_key(al_identity *id, const char *name, const char *secret, int64_t grace,
                      uint32_t *version)
{
    al_provider_spec sp = {.name = name,
                           .kind = "api_key",
                           .secret = (const unsigned char *)secret,
                           .secret_len = strlen(secret),
                           .grace_s = grace};
    return al_identity_update(id, &sp, version);
}

/* The usable versions of `name` as "v1=secret,v2=secret" (current first). */
static void usable(al_identity *id, const char *name, char *out, size_t cap)
{
    al_identity_secret *s = NULL;
    size_t n = 0;
    assert_int_equal(al_identity_load_secrets(id, &s, &n), AL_OK);
    out[0] = '\0';
    for (int pass = 1; pass >= 0; pass--)
        for (size_t i = 0; i < n; i++)
            if (strcmp(s[i].name, name) == 0 && s[i].current == pass)
                snprintf(out + strlen(out), cap - strlen(out), "%sv%u=%s", *out ? "," : "",
                         (unsigned)s[i].version, (const char *)s[i].value);
    al_identity_secrets_free(s, n);
}

static void test_create_get_list_delete(void **state)
{
    (void)state;
    al_identity *id = open_w();
    create_key(id, "openai", "prod", "sk-one");
    al_provider_spec dup = {
        .name = "openai", .kind = "api_key", .secret = (const unsigned char *)"x", .secret_len = 1};
    assert_int_equal(al_identity_create(id, &dup, NULL), AL_ERR_EXISTS);
    al_provider_spec bad = {.name = "bad name",
                            .kind = "api_key",
                            .secret = (const unsigned char *)"x",
                            .secret_len = 1};
    assert_int_equal(al_identity_create(id, &bad, NULL), AL_ERR_INVAL);
    al_provider_spec crlf = {.name = "inj",
                             .kind = "api_key",
                             .secret = (const unsigned char *)"a\r\nX-Evil: 1",
                             .secret_len = 13};
    assert_int_equal(al_identity_create(id, &crlf, NULL), AL_ERR_INVAL);

    json_t *d = NULL;
    assert_int_equal(al_identity_describe(id, "openai", "api_key", &d), AL_OK);
    assert_string_equal(json_string_value(json_object_get(d, "environment")), "prod");
    assert_int_equal(json_integer_value(json_object_get(d, "version")), 1);
    char *text = json_dumps(d, 0);
    assert_null(strstr(text, "sk-one"));
    free(text);
    json_decref(d);
    assert_int_equal(al_identity_describe(id, "openai", "oauth2", &d), AL_ERR_NOTFOUND);

    json_t *l = NULL;
    assert_int_equal(al_identity_list(id, "api_key", &l), AL_OK);
    assert_int_equal(json_array_size(json_object_get(l, "credentialProviders")), 1);
    json_decref(l);
    assert_int_equal(al_identity_delete(id, "openai", "oauth2"), AL_ERR_NOTFOUND);
    assert_int_equal(al_identity_delete(id, "openai", "api_key"), AL_OK);
    assert_int_equal(al_identity_delete(id, "openai", NULL), AL_ERR_NOTFOUND);
    al_identity_close(id);

    /* The audit log has one line per change, and never the secret. */
    char path[300], buf[4096];
    snprintf(path, sizeof path, "%s/audit.log", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    assert_non_null(strstr(buf, "\"event\":\"identity.create\""));
    assert_non_null(strstr(buf, "\"event\":\"identity.delete\""));
    assert_non_null(strstr(buf, "\"user\":"));
    assert_null(strstr(buf, "sk-one"));
}

static void test_rotation_and_grace(void **state)
{
    (void)state;
    al_identity *id = open_w();
    char got[256];
    uint32_t v = 0;
    create_key(id, "k", "dev", "secret-v1");
    assert_int_equal(update_key(id, "k", "secret-v2", -1, &v), AL_OK); /* default 24 h */
    assert_int_equal(v, 2);
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v2=secret-v2,v1=secret-v1");
    fake_now += 24 * 3600 - 1;
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v2=secret-v2,v1=secret-v1");
    fake_now += 1; /* grace over: v1 is no longer handed out ... */
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v2=secret-v2");
    /* ... and the purge wipes its key material, keeping the history. */
    assert_int_equal(al_identity_purge_expired(id), AL_OK);
    json_t *d = NULL;
    assert_int_equal(al_identity_describe(id, "k", NULL, &d), AL_OK);
    json_t *h = json_object_get(d, "versions");
    assert_int_equal(json_array_size(h), 2);
    assert_true(json_is_true(json_object_get(json_array_get(h, 0), "wiped")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(h, 0), "state")),
                        "expired");
    json_decref(d);

    /* A short grace, then --grace 0 cuts every older version off at once. */
    assert_int_equal(update_key(id, "k", "secret-v3", 60, &v), AL_OK);
    assert_int_equal(v, 3);
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v3=secret-v3,v2=secret-v2");
    assert_int_equal(update_key(id, "k", "secret-v4", 0, &v), AL_OK);
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v4=secret-v4");

    /* Metadata-only update keeps the version. */
    al_provider_spec meta = {.name = "k", .kind = "api_key", .description = "rotated monthly"};
    assert_int_equal(al_identity_update(id, &meta, &v), AL_OK);
    assert_int_equal(v, 4);
    al_identity_close(id);
}

static void write_key(const char *path, const char *hex, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, hex, strlen(hex)), (ssize_t)strlen(hex));
    close(fd);
    chmod(path, mode);
}

static void test_wrong_master_key_and_permissions(void **state)
{
    (void)state;
    al_identity *id = open_w();
    create_key(id, "k", "prod", "secret-v1");
    al_identity_close(id);
    id = NULL;

    char other[300], mk[300];
    snprintf(other, sizeof other, "%s/other.key", dir);
    snprintf(mk, sizeof mk, "%s/master.key", dir);
    write_key(other, "1111111111111111111111111111111111111111111111111111111111111111\n", 0600);
    setenv("AIRLOCK_MASTER_KEY_FILE", other, 1);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_SECRETS, &id), AL_ERR_KEY);
    assert_null(id);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_ERR_KEY);
    /* Metadata needs no key. */
    assert_int_equal(al_identity_open_readonly(dir, &id), AL_OK);
    assert_string_equal(al_identity_provider_env_cb(id, "k"), "prod");
    assert_null(al_identity_provider_env_cb(id, "nope"));
    al_identity_close(id);
    id = NULL;
    unsetenv("AIRLOCK_MASTER_KEY_FILE");

    /* The key file readable by others: refused, even though it is the right key. */
    chmod(mk, 0644);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_SECRETS, &id), AL_ERR_PERM);
    chmod(mk, 0600);
    /* The key file gone: an error, and no new key is generated over a sealed store. */
    char moved[300];
    snprintf(moved, sizeof moved, "%s/master.key.bak", dir);
    assert_int_equal(rename(mk, moved), 0);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_WRITE, &id), AL_ERR_KEY);
    assert_int_not_equal(access(mk, F_OK), 0);
    assert_int_equal(rename(moved, mk), 0);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_SECRETS, &id), AL_OK);
    al_identity_close(id);
}

static void sql(const char *stmt)
{
    char path[300];
    sqlite3 *db = NULL;
    snprintf(path, sizeof path, "%s/identity.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    int rc = sqlite3_exec(db, stmt, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sql: %s\n", err);
    assert_int_equal(rc, SQLITE_OK);
    sqlite3_close(db);
}

/* Flips one bit of the sealed blob of `provider`'s newest version, in place. */
static void flip_sealed_byte(const char *provider, int offset)
{
    char path[300];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    unsigned char buf[512];
    snprintf(path, sizeof path, "%s/identity.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT sealed FROM versions WHERE provider = ?", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, provider, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_bytes(st, 0);
    assert_true(n > offset && n <= (int)sizeof buf);
    memcpy(buf, sqlite3_column_blob(st, 0), (size_t)n);
    sqlite3_finalize(st);
    buf[offset] ^= 1;
    assert_int_equal(
        sqlite3_prepare_v2(db, "UPDATE versions SET sealed = ? WHERE provider = ?", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_blob(st, 1, buf, n, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, provider, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_tampered_and_moved_rows(void **state)
{
    (void)state;
    al_identity *id = open_w();
    al_identity_secret *s = NULL;
    size_t n = 0;
    create_key(id, "a", "prod", "secret-a");
    create_key(id, "b", "prod", "secret-b");
    /* Flip one bit in a's sealed secret, as an attacker with the file could. */
    flip_sealed_byte("a", 14);
    assert_int_equal(al_identity_load_secrets(id, &s, &n), AL_ERR_KEY);
    assert_null(s);
    /* Restore a by re-creating it, then move b's ciphertext and data key into a's row. */
    assert_int_equal(al_identity_delete(id, "a", NULL), AL_OK);
    create_key(id, "a", "prod", "secret-a");
    assert_int_equal(al_identity_load_secrets(id, &s, &n), AL_OK);
    al_identity_secrets_free(s, n);
    sql("UPDATE versions SET sealed = (SELECT sealed FROM versions WHERE provider='b'), "
        "wrapped_key = (SELECT wrapped_key FROM versions WHERE provider='b') WHERE provider='a'");
    assert_int_equal(al_identity_load_secrets(id, &s, &n), AL_ERR_KEY);
    al_identity_close(id);
}

static void test_rotate_master_key(void **state)
{
    (void)state;
    char mk[300], old_hex[80], got[256];
    snprintf(mk, sizeof mk, "%s/master.key", dir);
    al_identity *id = open_w();
    create_key(id, "k", "prod", "secret-v1");
    assert_int_equal(update_key(id, "k", "secret-v2", 3600, NULL), AL_OK);
    create_key(id, "j", "dev", "secret-j");
    FILE *f = fopen(mk, "r");
    assert_non_null(fgets(old_hex, sizeof old_hex, f));
    fclose(f);
    size_t count = 0;
    assert_int_equal(al_identity_rotate_master_key(id, &count), AL_OK);
    assert_int_equal(count, 3);
    usable(id, "k", got, sizeof got);
    assert_string_equal(got, "v2=secret-v2,v1=secret-v1");
    al_identity_close(id);

    struct stat sb;
    assert_int_equal(stat(mk, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* A fresh open with the new key file reads everything. */
    id = open_w();
    usable(id, "j", got, sizeof got);
    assert_string_equal(got, "v1=secret-j");
    al_identity_close(id);
    id = NULL;
    /* The old key no longer opens the store. */
    char oldp[300];
    snprintf(oldp, sizeof oldp, "%s/old.key", dir);
    write_key(oldp, old_hex, 0600);
    setenv("AIRLOCK_MASTER_KEY_FILE", oldp, 1);
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_SECRETS, &id), AL_ERR_KEY);
    unsetenv("AIRLOCK_MASTER_KEY_FILE");

    /* A crash after the store committed but before the key file was renamed leaves
     * the new key as master.key.new: the next open adopts it. */
    char cur_hex[80], newp[320];
    f = fopen(mk, "r");
    assert_non_null(fgets(cur_hex, sizeof cur_hex, f));
    fclose(f);
    snprintf(newp, sizeof newp, "%s.new", mk);
    assert_int_equal(rename(mk, newp), 0);
    write_key(mk, old_hex, 0600);
    id = open_w();
    usable(id, "j", got, sizeof got);
    assert_string_equal(got, "v1=secret-j");
    al_identity_close(id);
    assert_int_not_equal(access(newp, F_OK), 0);
}

static void test_env_callback_readonly_creates_nothing(void **state)
{
    (void)state;
    al_identity *id = NULL;
    char p[300];
    assert_int_equal(al_identity_open_readonly(dir, &id), AL_ERR_NOTFOUND);
    snprintf(p, sizeof p, "%s/identity.db", dir);
    assert_int_not_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/master.key", dir);
    assert_int_not_equal(access(p, F_OK), 0);
    id = open_w();
    create_key(id, "prod-key", "prod", "s1");
    create_key(id, "dev-key", "dev", "s2");
    al_identity_close(id);
    assert_int_equal(al_identity_open_readonly(dir, &id), AL_OK);
    assert_string_equal(al_identity_provider_env_cb(id, "prod-key"), "prod");
    assert_string_equal(al_identity_provider_env_cb(id, "dev-key"), "dev");
    assert_null(al_identity_provider_env_cb(id, "missing"));
    al_identity_close(id);
}

/* The CLI writes (a forked child updating in a loop) while another process reads:
 * every read sees a complete, decryptable version, and versions only go forward. */
static void test_concurrent_writer_and_reader(void **state)
{
    (void)state;
    al_identity *id = open_w();
    create_key(id, "k", "prod", "secret-1");
    al_identity_close(id);
    /* The parent posts a byte after each read; the child waits for one before it
     * starts and again half-way (after draining), so reads overlap the writes on a
     * machine of any speed. */
    int sync[2];
    assert_int_equal(pipe(sync), 0);
    assert_int_equal(fcntl(sync[1], F_SETFL, O_NONBLOCK), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(sync[1]);
        char b;
        al_identity *w = NULL;
        if (al_identity_open(dir, AL_IDENTITY_WRITE, &w) != AL_OK)
            _exit(3);
        if (read(sync[0], &b, 1) != 1)
            _exit(5);
        for (int i = 2; i <= 60; i++) {
            if (i == 30) {
                int fl = fcntl(sync[0], F_GETFL);
                fcntl(sync[0], F_SETFL, fl | O_NONBLOCK);
                while (read(sync[0], &b, 1) == 1)
                    ;
                fcntl(sync[0], F_SETFL, fl);
                if (read(sync[0], &b, 1) != 1)
                    _exit(5);
            }
            char s[32];
            snprintf(s, sizeof s, "secret-%d", i);
            if (update_key(w, "k", s, 0, NULL) != AL_OK)
                _exit(4);
        }
        al_identity_close(w);
        _exit(0);
    }
    al_identity *r = NULL;
    assert_int_equal(al_identity_open(dir, AL_IDENTITY_SECRETS, &r), AL_OK);
    uint32_t last = 0;
    int reads = 0, status = 0;
    for (;;) {
        al_identity_secret *s = NULL;
        size_t n = 0;
        assert_int_equal(al_identity_load_secrets(r, &s, &n), AL_OK);
        assert_int_equal(n, 1);
        char want[32];
        snprintf(want, sizeof want, "secret-%u", (unsigned)s[0].version);
        assert_string_equal((const char *)s[0].value, want);
        assert_true(s[0].version >= last);
        last = s[0].version;
        al_identity_secrets_free(s, n);
        reads++;
        ssize_t posted = write(sync[1], "r", 1);
        (void)posted; /* a full pipe is fine: the child only needs one */
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
    }
    close(sync[0]);
    close(sync[1]);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    al_identity_secret *s = NULL;
    size_t n = 0;
    assert_int_equal(al_identity_load_secrets(r, &s, &n), AL_OK);
    assert_int_equal(s[0].version, 60);
    al_identity_secrets_free(s, n);
    al_identity_close(r);
    assert_true(reads > 1);
}

/* Several writer processes at once (two updating, the parent rotating the master key):
 * no update is lost and every row stays sealed under the store's current key. */
static void test_concurrent_writers_and_rotation(void **state)
{
    (void)state;
    al_identity *id = open_w();
    create_key(id, "a", "prod", "a-1");
    create_key(id, "b", "prod", "b-1");
    al_identity_close(id);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        assert_true(kids[k] >= 0);
        if (kids[k] == 0) {
            const char *name = k ? "b" : "a";
            al_identity *w = NULL;
            if (al_identity_open(dir, AL_IDENTITY_WRITE, &w) != AL_OK)
                _exit(3);
            for (int i = 2; i <= 25; i++) {
                char s[32];
                snprintf(s, sizeof s, "%s-%d", name, i);
                if (update_key(w, name, s, 0, NULL) != AL_OK)
                    _exit(4);
            }
            al_identity_close(w);
            _exit(0);
        }
    }
    int rotations = 0;
    id = open_w();
    for (int i = 0; i < 4; i++) {
        usleep(20000); /* spread the rotations over the children's updates */
        int rc = al_identity_rotate_master_key(id, NULL);
        assert_true(rc == AL_OK || rc == AL_ERR_AGAIN);
        rotations += rc == AL_OK;
    }
    for (int k = 0; k < 2; k++) {
        int status = 0;
        assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    al_identity_close(id);
    id = open_w();
    char got[256];
    usable(id, "a", got, sizeof got);
    assert_string_equal(got, "v25=a-25");
    usable(id, "b", got, sizeof got);
    assert_string_equal(got, "v25=b-25");
    al_identity_close(id);
    print_message("rotations committed while writers ran: %d of 4\n", rotations);
}

static void test_oauth2_and_aws_specs(void **state)
{
    (void)state;
    al_identity *id = open_w();
    json_t *cfg = json_pack("{s:s, s:s}", "vendor", "GoogleOauth2", "clientId", "cid");
    al_provider_spec sp = {.name = "g",
                           .kind = "oauth2",
                           .config = cfg,
                           .secret = (const unsigned char *)"cs",
                           .secret_len = 2};
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
    json_decref(cfg);
    json_t *d = NULL;
    assert_int_equal(al_identity_describe(id, "g", "oauth2", &d), AL_OK);
    json_t *c = json_object_get(d, "oauth2ProviderConfig");
    assert_string_equal(json_string_value(json_object_get(c, "tokenEndpoint")),
                        "https://oauth2.googleapis.com/token");
    assert_string_equal(json_string_value(json_object_get(c, "tokenEndpointAuthMethod")),
                        "client_secret_basic");
    json_decref(d);
    /* Custom needs endpoints; Microsoft fills the tenant in. */
    cfg = json_pack("{s:s}", "clientId", "cid");
    sp.name = "c";
    sp.config = cfg;
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_ERR_INVAL);
    json_object_set_new(cfg, "discoveryUrl",
                        json_string("https://idp.example/.well-known/openid-configuration"));
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
    json_decref(cfg);
    cfg = json_pack("{s:s, s:s, s:s}", "vendor", "MicrosoftOauth2", "clientId", "cid", "tenantId",
                    "contoso");
    sp.name = "ms";
    sp.config = cfg;
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_OK);
    json_decref(cfg);
    assert_int_equal(al_identity_describe(id, "ms", NULL, &d), AL_OK);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(d, "oauth2ProviderConfig"), "tokenEndpoint")),
                        "https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
    json_decref(d);
    cfg = json_pack("{s:s}", "vendor", "NopeOauth2");
    sp.name = "bad";
    sp.config = cfg;
    assert_int_equal(al_identity_create(id, &sp, NULL), AL_ERR_INVAL);
    json_decref(cfg);

    /* aws: secret access key and session token come back apart. */
    cfg = json_pack("{s:s}", "accessKeyId", "AKIDEXAMPLE");
    al_provider_spec aws = {.name = "aws",
                            .kind = "aws",
                            .config = cfg,
                            .secret = (const unsigned char *)"wJalrXUtnFEMI",
                            .secret_len = 13,
                            .session_token = (const unsigned char *)"tok-1",
                            .session_token_len = 5};
    assert_int_equal(al_identity_create(id, &aws, NULL), AL_OK);
    json_decref(cfg);
    al_identity_secret *s = NULL;
    size_t n = 0;
    assert_int_equal(al_identity_load_secrets(id, &s, &n), AL_OK);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(s[i].name, "aws") == 0) {
            seen = 1;
            assert_int_equal(s[i].len, 13);
            assert_memory_equal(s[i].value, "wJalrXUtnFEMI", 13);
            assert_int_equal(s[i].session_token_len, 5);
            assert_memory_equal(s[i].session_token, "tok-1", 5);
            assert_non_null(strstr(s[i].config_json, "AKIDEXAMPLE"));
        }
    assert_true(seen);
    al_identity_secrets_free(s, n);
    al_identity_close(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_get_list_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_and_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_master_key_and_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_and_moved_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_master_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_callback_readonly_creates_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writer_and_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers_and_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oauth2_and_aws_specs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
