/* al_vault: envelope encryption of the identity store's secrets (OpenSSL EVP).
 *
 * Each secret version gets a fresh random 256-bit data key. The secret is sealed
 * with AES-256-GCM under the data key, with associated data = provider name, kind
 * and version, so a ciphertext copied into another row fails to open. The data key
 * is itself sealed (wrapped) with AES-256-GCM under the master key, bound to the
 * same associated data. Blob format: 12-byte nonce | ciphertext | 16-byte tag.
 *
 * Master key: 32 bytes, stored as 64 hex characters (or 32 raw bytes) in
 * $AIRLOCK_MASTER_KEY_FILE, else in <state_dir>/master.key, generated on first use
 * (0600, with a warning). A key file that group or others can read is refused.
 * A wrong key or a tampered blob is AL_ERR_KEY, never garbage. */
#ifndef AL_VAULT_H
#define AL_VAULT_H

#include <stddef.h>
#include <stdint.h>

#define AL_VAULT_KEY_LEN   32
#define AL_VAULT_NONCE_LEN 12
#define AL_VAULT_TAG_LEN   16
#define AL_VAULT_OVERHEAD  (AL_VAULT_NONCE_LEN + AL_VAULT_TAG_LEN)

typedef struct al_vault al_vault;

enum al_vault_flags {
    AL_VAULT_GENERATE = 1, /* create <state_dir>/master.key when no key exists */
};

/* Loads the master key by the rule above. *key_path_out (optional, malloc'd) names
 * the file used. AL_ERR_PERM for a group/other-readable file, AL_ERR_NOTFOUND when
 * there is none and AL_VAULT_GENERATE is not set. Errors are printed to stderr. */
int al_vault_open(const char *state_dir, int flags, al_vault **out);
/* From 32 raw bytes (tests, rotation). */
int al_vault_from_key(const unsigned char key[AL_VAULT_KEY_LEN], al_vault **out);
void al_vault_free(al_vault *v); /* wipes the key */
/* The file the key came from (NULL for al_vault_from_key). */
const char *al_vault_key_path(const al_vault *v);

/* Reads a key file, refusing group/other-readable modes. */
int al_vault_read_key_file(const char *path, unsigned char key[AL_VAULT_KEY_LEN]);
/* Writes a key file atomically (temp file 0600, fsync, rename). */
int al_vault_write_key_file(const char *path, const unsigned char key[AL_VAULT_KEY_LEN]);

/* Seals `plain` for (name, kind, version): *wrapped_key and *sealed are malloc'd blobs. */
int al_vault_seal(const al_vault *v, const char *name, const char *kind, uint32_t version,
                  const unsigned char *plain, size_t plain_len, unsigned char **wrapped_key,
                  size_t *wrapped_len, unsigned char **sealed, size_t *sealed_len);
/* Opens a sealed secret; *plain is malloc'd (NUL-terminated, not counted); the caller
 * wipes it with OPENSSL_cleanse before free. AL_ERR_KEY on wrong key or tampering. */
int al_vault_unseal(const al_vault *v, const char *name, const char *kind, uint32_t version,
                    const unsigned char *wrapped_key, size_t wrapped_len,
                    const unsigned char *sealed, size_t sealed_len, unsigned char **plain,
                    size_t *plain_len);
/* Re-wraps a data key from `from` to `to` without touching the sealed secret. */
int al_vault_rewrap(const al_vault *from, const al_vault *to, const char *name, const char *kind,
                    uint32_t version, const unsigned char *wrapped_key, size_t wrapped_len,
                    unsigned char **out, size_t *out_len);

/* A hex check value proving which master key a store was sealed with (stored in the
 * store's meta table), and its verification: AL_ERR_KEY if `check` was made by another key. */
int al_vault_make_check(const al_vault *v, char **check_hex);
int al_vault_verify_check(const al_vault *v, const char *check_hex);

/* "sha256:" + first 12 hex digits of SHA-256(secret): lets an operator tell versions
 * apart without revealing the secret. */
void al_vault_fingerprint(const unsigned char *secret, size_t len, char out[32]);

/* Low level, exposed for tests: AES-256-GCM with a random nonce. */
int al_vault_aead_seal(const unsigned char key[AL_VAULT_KEY_LEN], const unsigned char *aad,
                       size_t aad_len, const unsigned char *plain, size_t plain_len,
                       unsigned char **out, size_t *out_len);
int al_vault_aead_open(const unsigned char key[AL_VAULT_KEY_LEN], const unsigned char *aad,
                       size_t aad_len, const unsigned char *blob, size_t blob_len,
                       unsigned char **plain, size_t *plain_len);

#endif
