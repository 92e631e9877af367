/* airlock audit: check the tamper-evident audit log and hand out the key that
 * checks it.
 *
 *   verify [--key PUB]... [--live] [--format text|json] FILE...
 *       one file or a rotated series (oldest first: audit.log.2 audit.log.1 audit.log);
 *       the checks are al_audit_verify's (policy/al_audit_chain.h). Exit 0 when all
 *       holds, 1 with the first bad line named, 2 on usage errors.
 *   export-key [--state-dir DIR | -c FILE]
 *       prints the public half of <state_dir>/audit-signing.key as PEM (creating the
 *       key on first use, as serve would). */
#include "al_cli.h"
#include "common/al_err.h"
#include "policy/al_audit_chain.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 1000
#define MAX_KEYS  16

static void usage(FILE *out)
{
    fprintf(out,
            "usage: airlock audit verify [--key PUB]... [--live] [--format text|json] FILE...\n"
            "       airlock audit export-key [--state-dir DIR | -c FILE]\n"
            "\n"
            "verify checks a hash-chained audit log: every line's seq follows the one\n"
            "before and its prev is the SHA-256 of the line before; with --key every\n"
            "checkpoint's Ed25519 signature must verify. Give a rotated series oldest\n"
            "first (audit.log.2 audit.log.1 audit.log). The first bad line is named with\n"
            "its line number and reason (edited, removed, reordered, inserted, truncated,\n"
            "bad_signature, unknown_key, not_chained, malformed). Exit 0 only when all\n"
            "holds.\n"
            "  --key PUB        public key PEM from export-key (repeat for older keys);\n"
            "                   without it signatures are not checked, so a log rewritten\n"
            "                   with recomputed hashes is not detected\n"
            "  --live           the log is still being written: records after the last\n"
            "                   checkpoint are accepted (they are not yet signed); without\n"
            "                   it the series must end with a shutdown/rotate/reopen\n"
            "                   checkpoint, so a cut tail is detected\n"
            "  --format json    one JSON object on stdout instead of text\n"
            "\n"
            "export-key prints the public key that verifies this airlock's checkpoints\n"
            "(from <state_dir>/" AL_AUDIT_KEY_FILE ", created on first use, mode 0600).\n"
            "  --state-dir DIR  (default: $AIRLOCK_STATE_DIR, the state_dir of -c FILE,\n"
            "                   else ./.airlock)\n"
            "  -c FILE          take state_dir from this target table\n");
}

static int export_key(int argc, char **argv)
{
    const char *flag_state = NULL, *config = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--state-dir") && i + 1 < argc) {
            flag_state = argv[++i];
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            config = argv[++i];
        } else {
            fprintf(stderr, "airlock audit export-key: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    char *state_dir = al_cli_state_dir(flag_state, config);
    EVP_PKEY *key = NULL;
    int status = 1;
    if (!state_dir)
        return 1;
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "airlock audit export-key: cannot create %s: %s\n", state_dir,
                strerror(errno));
        goto out;
    }
    int rc = al_audit_key_load_or_create(state_dir, &key);
    if (rc) {
        fprintf(stderr, "airlock audit export-key: cannot read or create %s/%s: %s\n", state_dir,
                AL_AUDIT_KEY_FILE, al_strerror(rc));
        goto out;
    }
    if (PEM_write_PUBKEY(stdout, key) != 1 || fflush(stdout) != 0)
        goto out;
    status = 0;
out:
    EVP_PKEY_free(key);
    free(state_dir);
    return status;
}

static void print_json(const al_audit_verdict *v, const al_audit_vfile *files, size_t nkeys)
{
    json_t *o = json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}", "ok", v->ok, "records",
                          (json_int_t)v->records, "checkpoints", (json_int_t)v->checkpoints,
                          "signatures_checked", (json_int_t)v->signatures_checked, "first_seq",
                          (json_int_t)v->first_seq, "last_seq", (json_int_t)v->last_seq,
                          "unsealed", (json_int_t)v->unsealed, "legacy_lines",
                          (json_int_t)v->legacy, "signatures", nkeys != 0);
    if (o && !v->ok) {
        json_object_set_new(o, "file", json_string(files[v->file].name));
        json_object_set_new(o, "line", json_integer((json_int_t)v->line));
        json_object_set_new(o, "reason", json_string(v->reason));
        json_object_set_new(o, "message", json_string(v->message));
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

static int verify(int argc, char **argv)
{
    const char *keypaths[MAX_KEYS];
    EVP_PKEY *keys[MAX_KEYS];
    al_audit_vfile files[MAX_FILES];
    size_t nkeys = 0, nfiles = 0;
    int live = 0, json = 0, status = 2;
    memset(files, 0, sizeof files);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--key") && i + 1 < argc) {
            if (nkeys == MAX_KEYS) {
                fprintf(stderr, "airlock audit verify: at most %d --key\n", MAX_KEYS);
                return 2;
            }
            keypaths[nkeys++] = argv[++i];
        } else if (!strcmp(argv[i], "--live")) {
            live = 1;
        } else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            const char *f = argv[++i];
            if (strcmp(f, "json") != 0 && strcmp(f, "text") != 0) {
                fprintf(stderr, "airlock audit verify: --format is text or json, not '%s'\n", f);
                return 2;
            }
            json = !strcmp(f, "json");
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "airlock audit verify: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (nfiles == MAX_FILES) {
            fprintf(stderr, "airlock audit verify: at most %d files\n", MAX_FILES);
            return 2;
        } else {
            files[nfiles++].name = argv[i];
        }
    }
    if (!nfiles) {
        fprintf(stderr, "airlock audit verify: name the log file(s)\n");
        usage(stderr);
        return 2;
    }
    size_t loaded = 0, mapped = 0;
    for (; loaded < nkeys; loaded++) {
        int rc = al_audit_key_read_public(keypaths[loaded], &keys[loaded]);
        if (rc) {
            fprintf(stderr,
                    "airlock audit verify: %s is not an Ed25519 public key PEM (%s); get it "
                    "with 'airlock audit export-key'\n",
                    keypaths[loaded], al_strerror(rc));
            goto out;
        }
    }
    for (; mapped < nfiles; mapped++) {
        struct stat st;
        int fd = open(files[mapped].name, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0) {
            fprintf(stderr, "airlock audit verify: cannot read %s: %s\n", files[mapped].name,
                    strerror(errno));
            if (fd >= 0)
                close(fd);
            status = 1;
            goto out;
        }
        files[mapped].len = (size_t)st.st_size;
        if (st.st_size > 0) {
            void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                fprintf(stderr, "airlock audit verify: cannot map %s: %s\n",
                        files[mapped].name, strerror(errno));
                close(fd);
                status = 1;
                goto out;
            }
            files[mapped].data = p;
        }
        close(fd);
    }
    al_audit_verdict v;
    al_audit_verify(files, nfiles, keys, nkeys, live, &v);
    if (json) {
        print_json(&v, files, nkeys);
    } else if (v.ok) {
        printf("ok: %llu records (seq %llu..%llu) in %zu file(s), %llu checkpoint(s)",
               (unsigned long long)v.records, (unsigned long long)v.first_seq,
               (unsigned long long)v.last_seq, nfiles, (unsigned long long)v.checkpoints);
        if (nkeys)
            printf(", %llu signature(s) verified\n", (unsigned long long)v.signatures_checked);
        else
            printf("; signatures NOT checked (give --key PUB from 'airlock audit export-key')\n");
        if (v.first_seq)
            printf("note: the chain starts at seq %llu: earlier files were not given\n",
                   (unsigned long long)v.first_seq);
        if (live && v.unsealed)
            printf("note: %llu record(s) after the last checkpoint are not signed yet\n",
                   (unsigned long long)v.unsealed);
        if (v.legacy)
            printf("note: %llu line(s) before the chain starts are not chained\n",
                   (unsigned long long)v.legacy);
    } else {
        printf("%s:%llu: %s: %s\n", files[v.file].name, (unsigned long long)v.line, v.reason,
               v.message);
    }
    status = v.ok ? 0 : 1;
out:
    for (size_t i = 0; i < mapped; i++)
        if (files[i].data)
            munmap((void *)files[i].data, files[i].len);
    for (size_t i = 0; i < loaded; i++)
        EVP_PKEY_free(keys[i]);
    return status;
}

int al_cmd_audit(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "verify"))
        return verify(argc - 1, argv + 1);
    if (!strcmp(argv[1], "export-key"))
        return export_key(argc - 1, argv + 1);
    fprintf(stderr, "airlock audit: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
