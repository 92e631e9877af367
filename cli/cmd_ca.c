/* airlock ca: create and print the local CA that signs the leaf certificates of
 * intercepted HTTPS tunnels (proxy/al_tls.h does the work).
 *
 *   airlock ca init [--force] [--permit-host NAME]... [--from-table FILE]
 *   airlock ca cert
 *
 * The state dir follows the rule of every command (al_cli_state_dir). `init` never
 * replaces an existing CA without --force: agents trust the old one. A CA key that
 * group or others can read is refused with the chmod that fixes it. */
#include "al_cli.h"
#include "common/al_err.h"
#include "proxy/al_tls.h"
#include "targets/al_table.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PERMIT_MAX 1024

static void usage(FILE *out)
{
    fprintf(out, "usage: airlock ca init [--force] [--permit-host NAME]... [--from-table FILE]\n"
                 "                       [--state-dir DIR | -c FILE]\n"
                 "       airlock ca cert [-o PEM] [--state-dir DIR | -c FILE]\n"
                 "\n"
                 "The local CA used to intercept HTTPS tunnels (CONNECT) so airlock can inject\n"
                 "credentials. Agents must trust its certificate: see 'airlock env'.\n"
                 "\n"
                 "  init   create <state_dir>/ca.key (ECDSA P-256, mode 0600) and ca.crt\n"
                 "         (self-signed, 10 years). Leaves it signs live 24 hours.\n"
                 "  cert   print the CA certificate (PEM) on standard output, or write it\n"
                 "         to -o PEM (only when there is one: no empty file on failure)\n"
                 "\n"
                 "options:\n"
                 "  --state-dir DIR      where the CA lives (default: $AIRLOCK_STATE_DIR, the\n"
                 "                       state_dir of -c FILE, else ./.airlock)\n"
                 "  -c FILE              take state_dir from this target table\n"
                 "  -o, --out PEM        ca cert: write the certificate to PEM instead of stdout\n"
                 "  --force              replace an existing CA (agents must trust the new one)\n"
                 "  --permit-host NAME   name-constrain the CA: it can only vouch for NAME and\n"
                 "                       its subdomains (or that IP); repeatable. localhost,\n"
                 "                       127.0.0.1 and ::1 are always permitted\n"
                 "  --from-table FILE    permit every target host of this table\n"
                 "  -h, --help           show this help\n");
}

/* 0, or 1 after telling the user what is wrong with the key file. */
static int check_key_mode(const char *state_dir)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/ca.key", state_dir);
    if (stat(path, &st) != 0)
        return 0; /* absent: the caller reports what it needs */
    if (st.st_mode & 077) {
        fprintf(stderr,
                "airlock: %s is readable by group or others (mode %03o); airlock refuses "
                "to use it.\nFix it with: chmod 600 '%s'\n",
                path, (unsigned)(st.st_mode & 0777), path);
        return 1;
    }
    return 0;
}

/* Writes the certificate to `path` through a temporary file and rename (0644: it is
 * public), so a failure never leaves an empty or partial file behind. */
static int write_cert_file(X509 *x, const char *path)
{
    char tmp[4096 + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "airlock: output path too long\n");
        return 1;
    }
    (void)remove(tmp);
    FILE *fp = fopen(tmp, "wxe");
    int ok = fp && PEM_write_X509(fp, x);
    if (fp && fclose(fp) != 0)
        ok = 0;
    if (ok && chmod(tmp, 0644) == 0 && rename(tmp, path) == 0)
        return 0;
    fprintf(stderr, "airlock: cannot write %s: %s\n", path, strerror(errno));
    if (fp)
        (void)remove(tmp);
    return 1;
}

static int ca_cert(const char *state_dir, const char *out_path)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/ca.crt", state_dir);
    if (check_key_mode(state_dir))
        return 1;
    FILE *fp = fopen(path, "re");
    if (!fp) {
        fprintf(stderr, "airlock: no CA certificate at %s (%s): run 'airlock ca init'\n", path,
                strerror(errno));
        return 1;
    }
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    if (!x) {
        fprintf(stderr, "airlock: %s is not a PEM certificate\n", path);
        return 1;
    }
    if (out_path) {
        int rc = write_cert_file(x, out_path);
        X509_free(x);
        return rc;
    }
    int ok = PEM_write_X509(stdout, x);
    X509_free(x);
    return ok && fflush(stdout) == 0 ? 0 : 1;
}

static int ca_init(const char *state_dir, int force, const char **permit, size_t n_permit)
{
    int rc = al_ca_init_ex(state_dir, force, permit, n_permit);
    if (rc == AL_ERR_EXISTS) {
        fprintf(stderr,
                "airlock: a CA already exists in %s; agents may trust it already.\n"
                "Use 'airlock ca init --force' to replace it (then re-run 'airlock env').\n",
                state_dir);
        return 1;
    }
    if (rc == AL_ERR_INVAL && n_permit) {
        fprintf(stderr, "airlock: a --permit-host name is not a valid host name or IP\n");
        return 1;
    }
    if (rc != 0) {
        fprintf(stderr, "airlock: cannot create the CA in %s: %s\n", state_dir, al_strerror(rc));
        return 1;
    }
    printf("created the airlock CA in %s\n  certificate: %s/ca.crt\n  key:         %s/ca.key "
           "(mode 0600; never share it)\n",
           state_dir, state_dir, state_dir);
    if (n_permit) {
        printf("  name constraints: localhost, 127.0.0.1, ::1");
        for (size_t i = 0; i < n_permit; i++)
            if (strcmp(permit[i], "localhost") != 0 && strcmp(permit[i], "127.0.0.1") != 0 &&
                strcmp(permit[i], "::1") != 0)
                printf(", %s", permit[i]);
        printf("\n");
    } else {
        printf("  name constraints: none (the CA can vouch for any host; see --permit-host)\n");
    }
    printf("Agents trust it through 'airlock env' (or 'airlock ca cert').\n");
    return 0;
}

/* Appends the target hosts of `file` to permit[] (unique), pointing into *table. */
static int permit_from_table(const char *file, al_table **table, const char **permit,
                             size_t *n_permit)
{
    al_diags diags;
    al_diags_init(&diags);
    int rc = al_table_load(file, table, &diags);
    if (rc != 0) {
        al_diags_print(&diags, stderr);
        fprintf(stderr, "airlock: cannot read the targets of %s: %s\n", file, al_strerror(rc));
        al_diags_free(&diags);
        return 1;
    }
    al_diags_free(&diags);
    for (size_t i = 0; i < (*table)->target_count; i++) {
        const char *host = (*table)->targets[i].host;
        int seen = 0;
        /* Loopback names are always permitted (the HTTPS listener's own names). */
        if (!host || !*host || strcmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 ||
            strcmp(host, "::1") == 0)
            continue;
        for (size_t j = 0; j < *n_permit; j++)
            seen |= strcmp(permit[j], host) == 0;
        if (seen)
            continue;
        if (*n_permit >= PERMIT_MAX) {
            fprintf(stderr, "airlock: more than %d hosts to permit\n", PERMIT_MAX);
            return 1;
        }
        permit[(*n_permit)++] = host;
    }
    if (*n_permit == 0)
        permit[(*n_permit)++] = "localhost"; /* only loopback targets: constrain to loopback */
    return 0;
}

int al_cmd_ca(int argc, char **argv)
{
    const char *verb = NULL, *flag_state = NULL, *config = NULL, *from_table = NULL,
               *out_path = NULL;
    const char **permit = calloc(PERMIT_MAX, sizeof *permit);
    size_t n_permit = 0;
    int force = 0, status = 2;
    char *state_dir = NULL;
    al_table *table = NULL;
    if (!permit) {
        fprintf(stderr, "airlock: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            status = 0;
            goto out;
        } else if (strcmp(a, "--force") == 0) {
            force = 1;
        } else if (strcmp(a, "--state-dir") == 0 && has_value) {
            flag_state = argv[++i];
        } else if (strcmp(a, "-c") == 0 && has_value) {
            config = argv[++i];
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--out") == 0) && has_value) {
            out_path = argv[++i];
        } else if (strcmp(a, "--from-table") == 0 && has_value) {
            from_table = argv[++i];
        } else if (strcmp(a, "--permit-host") == 0 && has_value) {
            if (n_permit >= PERMIT_MAX) {
                fprintf(stderr, "airlock ca: too many --permit-host\n");
                goto out;
            }
            permit[n_permit++] = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "airlock ca: unknown option or missing value: '%s'\n\n", a);
            usage(stderr);
            goto out;
        } else if (!verb) {
            verb = a;
        } else {
            fprintf(stderr, "airlock ca: unexpected argument '%s'\n\n", a);
            usage(stderr);
            goto out;
        }
    }
    if (!verb || (strcmp(verb, "init") != 0 && strcmp(verb, "cert") != 0)) {
        if (verb)
            fprintf(stderr, "airlock ca: unknown subcommand '%s'\n\n", verb);
        usage(stderr);
        goto out;
    }
    int is_init = strcmp(verb, "init") == 0;
    if (is_init && out_path) {
        fprintf(stderr, "airlock ca init: -o is for 'ca cert'\n\n");
        usage(stderr);
        goto out;
    }
    if (!is_init && (force || n_permit || from_table)) {
        fprintf(stderr, "airlock ca cert: --force, --permit-host and --from-table are for "
                        "'ca init'\n\n");
        usage(stderr);
        goto out;
    }
    status = 1;
    if (!(state_dir = al_cli_state_dir(flag_state, config))) {
        fprintf(stderr, "airlock: out of memory\n");
        goto out;
    }
    if (!is_init) {
        status = ca_cert(state_dir, out_path);
        goto out;
    }
    if (from_table && permit_from_table(from_table, &table, permit, &n_permit) != 0)
        goto out;
    status = ca_init(state_dir, force, permit, n_permit);
out:
    al_table_unref(table);
    free(state_dir);
    free(permit);
    return status;
}
