/* Unit tests of identity/al_vault: sealing and opening, tampering, moved
 * ciphertexts, wrong master key, key-file permissions and format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "identity/al_vault.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char secret[] = "sk-test-VAULT-0123456789abcdef";

static al_vault *vault_with(unsigned char fill)
{
    unsigned char key[AL_VAULT_KEY_LEN];
    al_vault *v = NULL;
    memset(key, fill, sizeof key);
    assert_int_equal(al_vault_from_key(key, &v), AL_OK);
    return v;
}

typedef struct sealed {
    unsigned char *w, *s;
    size_t wl, sl;
} sealed;

static sealed seal_one(al_vault *v, const char *name, uint32_t version)
{
    sealed x = {0};
    assert_int_equal(al_vault_seal(v, name, "api_key", version, (const unsigned char *)secret,
                                   strlen(secret), &x.w, &x.wl, &x.s, &x.sl),
                     AL_OK);
    return x;
}

static void sealed_free(sealed *x)
{
    free(x->w);
    free(x->s);
}

static void test_round_trip(void **state)
{
    (void)state;
    al_vault *v = vault_with(7);
    sealed x = seal_one(v, "openai", 3);
    /* The ciphertext must not contain the plaintext. */
    assert_null(memmem(x.s, x.sl, secret, strlen(secret)));
    assert_int_equal(x.sl, strlen(secret) + AL_VAULT_OVERHEAD);
    unsigned char *p = NULL;
    size_t pl = 0;
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 3, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_OK);
    assert_int_equal(pl, strlen(secret));
    assert_memory_equal(p, secret, pl);
    free(p);
    /* Two seals of the same secret differ (fresh data key and nonce). */
    sealed y = seal_one(v, "openai", 3);
    assert_true(x.sl == y.sl && memcmp(x.s, y.s, x.sl) != 0);
    sealed_free(&x);
    sealed_free(&y);
    al_vault_free(v);
}

static void test_tampering(void **state)
{
    (void)state;
    al_vault *v = vault_with(7);
    sealed x = seal_one(v, "openai", 1);
    unsigned char *p = NULL;
    size_t pl = 0;
    /* Flip every byte position of the sealed secret in turn: none may open. */
    for (size_t i = 0; i < x.sl; i++) {
        x.s[i] ^= 0x01;
        assert_int_equal(al_vault_unseal(v, "openai", "api_key", 1, x.w, x.wl, x.s, x.sl, &p, &pl),
                         AL_ERR_KEY);
        assert_null(p);
        x.s[i] ^= 0x01;
    }
    x.w[AL_VAULT_NONCE_LEN + 3] ^= 0x80; /* the wrapped data key */
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 1, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    x.w[AL_VAULT_NONCE_LEN + 3] ^= 0x80;
    /* Truncated blobs. */
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 1, x.w, x.wl, x.s, 10, &p, &pl),
                     AL_ERR_KEY);
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 1, x.w, x.wl - 1, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    sealed_free(&x);
    al_vault_free(v);
}

static void test_moved_ciphertext(void **state)
{
    (void)state;
    al_vault *v = vault_with(9);
    sealed x = seal_one(v, "openai", 1);
    unsigned char *p = NULL;
    size_t pl = 0;
    /* Same blobs presented as another provider, another version, another kind. */
    assert_int_equal(al_vault_unseal(v, "anthropic", "api_key", 1, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 2, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    assert_int_equal(al_vault_unseal(v, "openai", "oauth2", 1, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    /* Swap the data key of one row with another's: also refused. */
    sealed y = seal_one(v, "openai", 2);
    assert_int_equal(al_vault_unseal(v, "openai", "api_key", 2, x.w, x.wl, y.s, y.sl, &p, &pl),
                     AL_ERR_KEY);
    sealed_free(&x);
    sealed_free(&y);
    al_vault_free(v);
}

static void test_wrong_master_key(void **state)
{
    (void)state;
    al_vault *a = vault_with(1), *b = vault_with(2);
    sealed x = seal_one(a, "openai", 1);
    unsigned char *p = NULL;
    size_t pl = 0;
    assert_int_equal(al_vault_unseal(b, "openai", "api_key", 1, x.w, x.wl, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    assert_null(p);
    char *check = NULL;
    assert_int_equal(al_vault_make_check(a, &check), AL_OK);
    assert_int_equal(al_vault_verify_check(a, check), AL_OK);
    assert_int_equal(al_vault_verify_check(b, check), AL_ERR_KEY);
    assert_int_equal(al_vault_verify_check(a, "zz"), AL_ERR_KEY);
    free(check);
    /* Rewrap moves the data key to b; a can no longer open it, b can. */
    unsigned char *w2 = NULL;
    size_t wl2 = 0;
    assert_int_equal(al_vault_rewrap(a, b, "openai", "api_key", 1, x.w, x.wl, &w2, &wl2), AL_OK);
    assert_int_equal(al_vault_unseal(b, "openai", "api_key", 1, w2, wl2, x.s, x.sl, &p, &pl),
                     AL_OK);
    assert_memory_equal(p, secret, pl);
    free(p);
    p = NULL;
    assert_int_equal(al_vault_unseal(a, "openai", "api_key", 1, w2, wl2, x.s, x.sl, &p, &pl),
                     AL_ERR_KEY);
    free(w2);
    sealed_free(&x);
    al_vault_free(a);
    al_vault_free(b);
}

static char tmpdir[256];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/al-vault-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    unsetenv("AIRLOCK_MASTER_KEY_FILE");
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_key_file_generate_and_permissions(void **state)
{
    (void)state;
    al_vault *v = NULL;
    char path[300];
    snprintf(path, sizeof path, "%s/master.key", tmpdir);
    /* No key and no permission to generate: not found, nothing created. */
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_ERR_NOTFOUND);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_equal(al_vault_open(tmpdir, AL_VAULT_GENERATE, &v), AL_OK);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(sb.st_size, 65); /* 64 hex + newline */
    sealed x = seal_one(v, "p", 1);
    al_vault_free(v);
    /* Reopening reads the same key. */
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_OK);
    unsigned char *p = NULL;
    size_t pl = 0;
    assert_int_equal(al_vault_unseal(v, "p", "api_key", 1, x.w, x.wl, x.s, x.sl, &p, &pl), AL_OK);
    free(p);
    al_vault_free(v);
    v = NULL;
    /* Group- or world-readable key files are refused. */
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(al_vault_open(tmpdir, AL_VAULT_GENERATE, &v), AL_ERR_PERM);
    assert_null(v);
    assert_int_equal(chmod(path, 0604), 0);
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_ERR_PERM);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_OK);
    al_vault_free(v);
    sealed_free(&x);
}

static void test_key_file_from_env(void **state)
{
    (void)state;
    char path[300];
    al_vault *v = NULL;
    snprintf(path, sizeof path, "%s/operator.key", tmpdir);
    setenv("AIRLOCK_MASTER_KEY_FILE", path, 1);
    /* Named but missing: an error, never a silently generated key. */
    assert_int_equal(al_vault_open(tmpdir, AL_VAULT_GENERATE, &v), AL_ERR_NOTFOUND);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    const char *hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    assert_int_equal(write(fd, hex, strlen(hex)), (ssize_t)strlen(hex));
    close(fd);
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_OK);
    assert_string_equal(al_vault_key_path(v), path);
    al_vault_free(v);
    /* Not hex: a clear error, not a key made of garbage. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "not a key\n", 10), 10);
    close(fd);
    assert_int_equal(al_vault_open(tmpdir, 0, &v), AL_ERR_KEY);
    unsetenv("AIRLOCK_MASTER_KEY_FILE");
}

static void test_fingerprint(void **state)
{
    (void)state;
    char fp[32], fp2[32];
    al_vault_fingerprint((const unsigned char *)secret, strlen(secret), fp);
    al_vault_fingerprint((const unsigned char *)"other", 5, fp2);
    assert_int_equal(strlen(fp), 19);
    assert_memory_equal(fp, "sha256:", 7);
    assert_string_not_equal(fp, fp2);
    assert_null(strstr(fp, "VAULT"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_moved_ciphertext),
        cmocka_unit_test(test_wrong_master_key),
        cmocka_unit_test_setup_teardown(test_key_file_generate_and_permissions, setup_dir,
                                        teardown_dir),
        cmocka_unit_test_setup_teardown(test_key_file_from_env, setup_dir, teardown_dir),
        cmocka_unit_test(test_fingerprint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
