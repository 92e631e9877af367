/* airlock env: print, as shell `export` lines, what an agent needs to send its
 * traffic through airlock and trust airlock's CA:
 *
 *   eval "$(airlock env -c airlock.yaml)"
 *
 * HTTPS_PROXY/HTTP_PROXY (and the lower-case names curl reads) point at
 * listen.proxy; NO_PROXY keeps loopback and the proxy itself direct, except hosts
 * that are targets (they must go through airlock); a CA bundle (the system's CAs
 * plus airlock's) is written to <state_dir>/ca-bundle.pem for SSL_CERT_FILE,
 * REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE; NODE_EXTRA_CA_CERTS gets airlock's CA
 * alone (Node adds it to its own roots). The CA is created when there is none.
 *
 * Every value is single-quoted for the shell. Nothing secret is printed: the CA
 * certificate is public, its key never leaves ca.key. */
#include "al_cli.h"
#include "common/al_err.h"
#include "proxy/al_tls.h"
#include "targets/al_table.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
#define SYSTEM_CA_MAX  (16u << 20) /* a system bundle is ~200 KiB; refuse absurd ones */
#define AIRLOCK_CA_MAX (64u << 10)
#define NO_PROXY_MAX   1024

static void usage(FILE *out)
{
    fprintf(out, "usage: airlock env -c FILE [--state-dir DIR] [--bundle-out PATH]\n"
                 "\n"
                 "Print the environment an agent needs, as export lines for the shell:\n"
                 "  eval \"$(airlock env -c airlock.yaml)\"\n"
                 "\n"
                 "Sets HTTPS_PROXY, HTTP_PROXY (and https_proxy, http_proxy) to listen.proxy,\n"
                 "NO_PROXY/no_proxy, and SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE to a\n"
                 "CA bundle (system CAs + airlock's CA) written to <state_dir>/ca-bundle.pem;\n"
                 "NODE_EXTRA_CA_CERTS to airlock's CA certificate. Creates the CA if needed.\n"
                 "\n"
                 "options:\n"
                 "  -c FILE            the target table (required: listen.proxy, state_dir)\n"
                 "  --state-dir DIR    where the CA lives (default: $AIRLOCK_STATE_DIR, the\n"
                 "                     table's state_dir, else ./.airlock)\n"
                 "  --bundle-out PATH  write the CA bundle here instead\n"
                 "  -h, --help         show this help\n");
}

/* Prints `export NAME='value'` with the value safe for any POSIX shell. */
static void print_export(const char *name, const char *value)
{
    printf("export %s='", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*p);
    }
    printf("'\n");
}

/* Reads a whole file of at most `max` bytes into a malloc'd buffer. */
static int read_file(const char *path, size_t max, char **out, size_t *len)
{
    FILE *fp = fopen(path, "re");
    if (!fp)
        return AL_ERR_NOTFOUND;
    int rc = AL_ERR_IO;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        rc = AL_ERR_NOMEM;
        goto fail;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                rc = AL_ERR_TOOBIG;
                goto fail;
            }
            cap = cap * 2 > max ? max : cap * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = AL_ERR_NOMEM;
                goto fail;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp))
                goto fail;
            break;
        }
    }
    fclose(fp);
    *out = buf;
    *len = n;
    return 0;
fail:
    fclose(fp);
    free(buf);
    return rc;
}

/* Writes system CAs + airlock's CA to `path` through a temporary file (0644: it is
 * public), so an agent reading it concurrently sees the old or the new bundle. */
static int write_bundle(const char *path, const char *ca_pem, size_t ca_len)
{
    char tmp[PATH_MAX + 8];
    char *sys = NULL;
    size_t sys_len = 0;
    FILE *fp = NULL;
    int rc = read_file(SYSTEM_CA_FILE, SYSTEM_CA_MAX, &sys, &sys_len);
    if (rc == AL_ERR_NOTFOUND) {
        fprintf(stderr,
                "airlock: %s not found (Debian: apt-get install ca-certificates); the bundle "
                "holds airlock's CA only\n",
                SYSTEM_CA_FILE);
    } else if (rc != 0) {
        fprintf(stderr, "airlock: cannot read %s: %s\n", SYSTEM_CA_FILE, al_strerror(rc));
        return 1;
    }
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        goto fail;
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 || !(fp = fdopen(fd, "w"))) {
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    if (sys_len && (fwrite(sys, 1, sys_len, fp) != sys_len ||
                    (sys[sys_len - 1] != '\n' && fputc('\n', fp) == EOF)))
        goto fail;
    if (fputs("# airlock local CA\n", fp) == EOF || fwrite(ca_pem, 1, ca_len, fp) != ca_len)
        goto fail;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0)
        goto fail;
    int closed = fclose(fp);
    fp = NULL;
    if (closed != 0 || rename(tmp, path) != 0)
        goto fail;
    free(sys);
    return 0;
fail:
    fprintf(stderr, "airlock: cannot write the CA bundle %s: %s\n", path, strerror(errno));
    if (fp)
        fclose(fp);
    (void)unlink(tmp);
    free(sys);
    return 1;
}

/* "host:port" of listen.proxy as an agent reaches it: a wildcard address becomes
 * the loopback of its family. *host gets the bare host (no brackets). */
static int proxy_authority(const char *listen, char *out, size_t outsz, char *host, size_t hostsz)
{
    const char *colon, *h = listen;
    size_t hlen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':')
            return AL_ERR_INVAL;
        h = listen + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon)
            return AL_ERR_INVAL;
        hlen = (size_t)(colon - listen);
    }
    const char *port = colon + 1;
    if (!*port || strspn(port, "0123456789") != strlen(port) || hlen >= hostsz)
        return AL_ERR_INVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (hlen == 0 || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0)
        snprintf(host, hostsz, "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, hostsz, "::1");
    int n = snprintf(out, outsz, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
    return n < 0 || (size_t)n >= outsz ? AL_ERR_TOOBIG : 0;
}

static int is_target_host(const al_table *t, const char *host)
{
    for (size_t i = 0; i < t->target_count; i++)
        if (t->targets[i].host && strcasecmp(t->targets[i].host, host) == 0)
            return 1;
    return 0;
}

/* NO_PROXY: loopback and the proxy's own host go direct, but never a host that is
 * a target: a request for it must reach airlock to get its credential. */
static void build_no_proxy(const al_table *t, const char *proxy_host, char *out, size_t outsz)
{
    const char *names[] = {"localhost", "127.0.0.1", "::1", proxy_host};
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            dup |= strcasecmp(names[j], names[i]) == 0;
        if (dup)
            continue;
        if (is_target_host(t, names[i])) {
            fprintf(stderr,
                    "airlock: %s is left out of NO_PROXY: a target lives there and must go "
                    "through the proxy\n",
                    names[i]);
            continue;
        }
        int n = snprintf(out + off, outsz - off, "%s%s", off ? "," : "", names[i]);
        if (n < 0 || (size_t)n >= outsz - off)
            break;
        off += (size_t)n;
    }
}

/* An absolute form of `path` (it need not exist yet). */
static char *absolute(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    size_t len = strlen(cwd) + strlen(path) + 2;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%s/%s", cwd, path[0] == '.' && path[1] == '/' ? path + 2 : path);
    return out;
}

int al_cmd_env(int argc, char **argv)
{
    const char *flag_state = NULL, *config = NULL, *bundle_flag = NULL;
    char *state_flagged = NULL, *state_dir = NULL, *bundle = NULL, *ca_pem = NULL;
    char ca_path[PATH_MAX + 16], key_path[PATH_MAX + 16];
    char authority[600], proxy_host[300], no_proxy[NO_PROXY_MAX], url[700];
    size_t ca_len = 0;
    struct stat st;
    al_table *table = NULL;
    al_diags diags;
    int status = 2, rc;
    al_diags_init(&diags);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            status = 0;
            goto out;
        } else if (strcmp(a, "-c") == 0 && has_value) {
            config = argv[++i];
        } else if (strcmp(a, "--state-dir") == 0 && has_value) {
            flag_state = argv[++i];
        } else if (strcmp(a, "--bundle-out") == 0 && has_value) {
            bundle_flag = argv[++i];
        } else {
            fprintf(stderr, "airlock env: unknown option or missing value: '%s'\n\n", a);
            usage(stderr);
            goto out;
        }
    }
    if (!config) {
        fprintf(stderr, "airlock env: -c FILE is required (the table's listen.proxy)\n\n");
        usage(stderr);
        goto out;
    }
    status = 1;

    if ((rc = al_table_load(config, &table, &diags)) != 0) {
        al_diags_print(&diags, stderr);
        fprintf(stderr, "airlock: cannot load %s: %s\n", config, al_strerror(rc));
        goto out;
    }
    if (!table->listen.proxy) {
        fprintf(stderr, "airlock: %s has no listen.proxy: agents need a proxy address\n", config);
        goto out;
    }
    if (proxy_authority(table->listen.proxy, authority, sizeof authority, proxy_host,
                        sizeof proxy_host) != 0) {
        fprintf(stderr, "airlock: listen.proxy '%s' is not host:port\n", table->listen.proxy);
        goto out;
    }

    /* Paths go into the agent's environment: make them absolute, so they hold in
     * whatever directory the agent runs. */
    if (!(state_flagged = al_cli_state_dir(flag_state, config)) ||
        !(state_dir = absolute(state_flagged))) {
        fprintf(stderr, "airlock: out of memory\n");
        goto out;
    }
    snprintf(ca_path, sizeof ca_path, "%s/ca.crt", state_dir);
    snprintf(key_path, sizeof key_path, "%s/ca.key", state_dir);
    if (stat(ca_path, &st) != 0) {
        rc = al_ca_init(state_dir, 0);
        if (rc == AL_ERR_EXISTS) {
            fprintf(stderr,
                    "airlock: %s exists without ca.crt; re-create the CA with 'airlock ca init "
                    "--force'\n",
                    key_path);
            goto out;
        }
        if (rc != 0) {
            fprintf(stderr, "airlock: cannot create the CA in %s: %s\n", state_dir,
                    al_strerror(rc));
            goto out;
        }
        fprintf(stderr, "airlock: created a CA in %s\n", state_dir);
    }
    if (stat(key_path, &st) == 0 && (st.st_mode & 077)) {
        fprintf(stderr,
                "airlock: %s is readable by group or others (mode %03o); airlock refuses to "
                "use it.\nFix it with: chmod 600 '%s'\n",
                key_path, (unsigned)(st.st_mode & 0777), key_path);
        goto out;
    }
    if ((rc = read_file(ca_path, AIRLOCK_CA_MAX, &ca_pem, &ca_len)) != 0 || ca_len == 0 ||
        !strstr(ca_pem, "-----BEGIN CERTIFICATE-----")) {
        fprintf(stderr, "airlock: %s is not a CA certificate\n", ca_path);
        goto out;
    }
    if (bundle_flag) {
        bundle = absolute(bundle_flag);
    } else {
        size_t len = strlen(state_dir) + sizeof "/ca-bundle.pem";
        if ((bundle = malloc(len)))
            snprintf(bundle, len, "%s/ca-bundle.pem", state_dir);
    }
    if (!bundle) {
        fprintf(stderr, "airlock: out of memory\n");
        goto out;
    }
    if (write_bundle(bundle, ca_pem, ca_len) != 0)
        goto out;

    build_no_proxy(table, proxy_host, no_proxy, sizeof no_proxy);
    snprintf(url, sizeof url, "http://%s", authority);
    printf("# airlock: route this shell's HTTP(S) clients through %s\n", authority);
    print_export("HTTPS_PROXY", url);
    print_export("https_proxy", url);
    print_export("HTTP_PROXY", url);
    print_export("http_proxy", url);
    print_export("NO_PROXY", no_proxy);
    print_export("no_proxy", no_proxy);
    print_export("SSL_CERT_FILE", bundle);
    print_export("REQUESTS_CA_BUNDLE", bundle);
    print_export("CURL_CA_BUNDLE", bundle);
    print_export("NODE_EXTRA_CA_CERTS", ca_path);
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    al_diags_free(&diags);
    al_table_unref(table);
    free(ca_pem);
    free(bundle);
    free(state_dir);
    free(state_flagged);
    return status;
}
