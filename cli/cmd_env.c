/* airlock env: print, as shell `export` lines, what an agent needs to send its
 * traffic through airlock and trust airlock's CA:
 *
 *   eval "$(airlock env -c airlock.yaml)"
 *   eval "$(airlock env --proxy http://airlock.internal:8080 --ca-file airlock-ca.pem)"
 *
 * HTTPS_PROXY/HTTP_PROXY (and the lower-case names curl reads) point at
 * listen.proxy (or --proxy); NO_PROXY keeps loopback and the proxy itself direct,
 * except hosts that are targets (they must go through airlock); a CA bundle (the
 * system's CAs plus airlock's) is written for SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
 * CURL_CA_BUNDLE and GIT_SSL_CAINFO; NODE_EXTRA_CA_CERTS gets airlock's CA alone (Node adds it to
 * its own roots).
 *
 * env never creates a CA: a CA made here (say in another --state-dir, or by an agent
 * running as another user) would be one `serve` does not use, and agents would
 * trust a certificate that signs nothing they see. Without a CA it says how to get
 * one (`airlock ca init`, or --ca-file with the certificate from the admin
 * listener's GET /ca.crt) and writes nothing.
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
    fprintf(out,
            "usage: airlock env -c FILE [--state-dir DIR] [--ca-file PEM] [--bundle-out PATH]\n"
            "       airlock env --proxy URL --ca-file PEM [--no-proxy LIST] [--bundle-out PATH]\n"
            "\n"
            "Print the environment an agent needs, as export lines for the shell:\n"
            "  eval \"$(airlock env -c airlock.yaml)\"\n"
            "\n"
            "Sets HTTPS_PROXY, HTTP_PROXY (and https_proxy, http_proxy) to listen.proxy,\n"
            "NO_PROXY/no_proxy, and SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,\n"
            "GIT_SSL_CAINFO to a CA bundle (system CAs + airlock's CA); NODE_EXTRA_CA_CERTS\n"
            "to airlock's CA certificate. It never creates a CA: run 'airlock ca init'\n"
            "(or 'airlock serve') first. An agent that cannot read the state dir (another\n"
            "user, another machine) fetches the certificate from the admin listener and\n"
            "passes it:\n"
            "  curl -fsS http://127.0.0.1:8081/ca.crt > airlock-ca.pem\n"
            "  eval \"$(airlock env --proxy http://127.0.0.1:8080 --ca-file airlock-ca.pem)\"\n"
            "\n"
            "options:\n"
            "  -c FILE            the target table: listen.proxy, state_dir, and the target\n"
            "                     hosts kept out of NO_PROXY\n"
            "  --proxy URL        the proxy agents use (http://host:port); instead of, or\n"
            "                     overriding, the table's listen.proxy\n"
            "  --ca-file PEM      airlock's CA certificate (instead of <state_dir>/ca.crt)\n"
            "  --state-dir DIR    where the CA lives (default: $AIRLOCK_STATE_DIR, the\n"
            "                     table's state_dir, else ./.airlock)\n"
            "  --no-proxy LIST    NO_PROXY instead of localhost,127.0.0.1,::1 and the\n"
            "                     proxy's host\n"
            "  --bundle-out PATH  write the CA bundle here (default: <state_dir>/ca-bundle.pem;\n"
            "                     with --ca-file, $XDG_CACHE_HOME or ~/.cache/airlock/)\n"
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
    for (size_t i = 0; t && i < t->target_count; i++)
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

/* --proxy URL: "http(s)://host:port[/]" -> *scheme_len, and authority/host as
 * proxy_authority() makes them. */
static int proxy_from_url(const char *url, size_t *scheme_len, char *out, size_t outsz, char *host,
                          size_t hostsz)
{
    size_t sl = strncasecmp(url, "http://", 7) == 0    ? 7
                : strncasecmp(url, "https://", 8) == 0 ? 8
                                                       : 0;
    char a[600];
    size_t al = sl ? strcspn(url + sl, "/?#") : 0;
    if (!sl || al == 0 || al >= sizeof a || memchr(url + sl, '@', al) ||
        strspn(url + sl + al, "/") != strlen(url + sl + al))
        return AL_ERR_INVAL;
    memcpy(a, url + sl, al);
    a[al] = '\0';
    *scheme_len = sl;
    return proxy_authority(a, out, outsz, host, hostsz);
}

/* The default bundle path with --ca-file (the state dir may not be ours):
 * $XDG_CACHE_HOME/airlock/ca-bundle.pem, else ~/.cache/airlock/ca-bundle.pem; the
 * two last directories are made (0700) when missing. NULL after saying why. */
static char *cache_bundle_path(void)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[PATH_MAX], *out = NULL;
    int n = -1;
    if (xdg && xdg[0] == '/')
        n = snprintf(dir, sizeof dir, "%s", xdg);
    else if (home && home[0] == '/')
        n = snprintf(dir, sizeof dir, "%s/.cache", home);
    if (n < 0 || (size_t)n + sizeof "/airlock" >= sizeof dir) {
        fprintf(stderr, "airlock: no cache directory for the CA bundle (neither $XDG_CACHE_HOME "
                        "nor $HOME is an absolute path); pass --bundle-out PATH\n");
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (i == 1)
            strcat(dir, "/airlock");
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr,
                    "airlock: cannot create %s for the CA bundle: %s; pass "
                    "--bundle-out PATH\n",
                    dir, strerror(errno));
            return NULL;
        }
    }
    if (asprintf(&out, "%s/ca-bundle.pem", dir) < 0)
        return NULL;
    return out;
}

/* Says why the CA certificate at ca_path cannot be used, and how to get one. */
static void explain_no_ca(const char *ca_path, int err, int from_state_dir, const char *admin,
                          const char *proxy_url)
{
    if (!admin)
        admin = "ADMIN";
    if (err == ENOENT && from_state_dir)
        fprintf(stderr,
                "airlock: no CA certificate at %s: env never creates one.\n"
                "Create it with 'airlock ca init' (same state dir; 'airlock serve' also creates "
                "it on first start), or pass the certificate serve uses: --ca-file PEM (from the "
                "admin listener: curl http://%s/ca.crt > airlock-ca.pem)\n",
                ca_path, admin);
    else if (err == EACCES && from_state_dir)
        fprintf(stderr,
                "airlock: cannot read %s: %s (the state dir belongs to the user who runs "
                "airlock).\nFetch the certificate from the admin listener instead:\n"
                "  curl -fsS http://%s/ca.crt > airlock-ca.pem\n"
                "  eval \"$(airlock env --proxy %s --ca-file airlock-ca.pem)\"\n",
                ca_path, strerror(err), admin, proxy_url);
    else if (err)
        fprintf(stderr, "airlock: cannot read the CA certificate %s: %s\n", ca_path, strerror(err));
    else
        fprintf(stderr, "airlock: %s is not a PEM certificate\n", ca_path);
}

int al_cmd_env(int argc, char **argv)
{
    const char *flag_state = NULL, *config = NULL, *bundle_flag = NULL, *proxy_flag = NULL,
               *ca_flag = NULL, *no_proxy_flag = NULL;
    char *state_flagged = NULL, *state_dir = NULL, *bundle = NULL, *ca_pem = NULL, *ca_path = NULL;
    char key_path[PATH_MAX + 16];
    char authority[600], proxy_host[300], no_proxy[NO_PROXY_MAX], url[700];
    size_t ca_len = 0, scheme_len = 7;
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
        } else if (strcmp(a, "--proxy") == 0 && has_value) {
            proxy_flag = argv[++i];
        } else if (strcmp(a, "--ca-file") == 0 && has_value) {
            ca_flag = argv[++i];
        } else if (strcmp(a, "--no-proxy") == 0 && has_value) {
            no_proxy_flag = argv[++i];
        } else {
            fprintf(stderr, "airlock env: unknown option or missing value: '%s'\n\n", a);
            usage(stderr);
            goto out;
        }
    }
    if (!config && !proxy_flag) {
        fprintf(stderr, "airlock env: -c FILE (the table's listen.proxy) or --proxy URL is "
                        "required\n\n");
        usage(stderr);
        goto out;
    }
    if (no_proxy_flag && strlen(no_proxy_flag) >= sizeof no_proxy) {
        fprintf(stderr, "airlock env: --no-proxy is longer than %d bytes\n", NO_PROXY_MAX - 1);
        goto out;
    }
    status = 1;

    if (config && (rc = al_table_load(config, &table, &diags)) != 0) {
        al_diags_print(&diags, stderr);
        fprintf(stderr, "airlock: cannot load %s: %s\n", config, al_strerror(rc));
        goto out;
    }
    if (proxy_flag) {
        if (proxy_from_url(proxy_flag, &scheme_len, authority, sizeof authority, proxy_host,
                           sizeof proxy_host) != 0) {
            fprintf(stderr,
                    "airlock: --proxy '%s' is not http://host:port (no user, path or query)\n",
                    proxy_flag);
            goto out;
        }
    } else if (!table->listen.proxy) {
        fprintf(stderr,
                "airlock: %s has no listen.proxy: agents need a proxy address (or pass "
                "--proxy URL)\n",
                config);
        goto out;
    } else if (proxy_authority(table->listen.proxy, authority, sizeof authority, proxy_host,
                               sizeof proxy_host) != 0) {
        fprintf(stderr, "airlock: listen.proxy '%s' is not host:port\n", table->listen.proxy);
        goto out;
    }

    snprintf(url, sizeof url, "%.*s%s", (int)scheme_len, proxy_flag ? proxy_flag : "http://",
             authority);

    /* Paths go into the agent's environment: make them absolute, so they hold in
     * whatever directory the agent runs. */
    if (ca_flag) {
        ca_path = absolute(ca_flag);
        bundle = bundle_flag ? absolute(bundle_flag) : cache_bundle_path();
        if (!bundle && !bundle_flag)
            goto out;
    } else {
        if (!(state_flagged = al_cli_state_dir(flag_state, config)) ||
            !(state_dir = absolute(state_flagged)) ||
            asprintf(&ca_path, "%s/ca.crt", state_dir) < 0) {
            ca_path = NULL;
            goto oom;
        }
        snprintf(key_path, sizeof key_path, "%s/ca.key", state_dir);
        if (stat(key_path, &st) == 0 && (st.st_mode & 077)) {
            fprintf(stderr,
                    "airlock: %s is readable by group or others (mode %03o); airlock refuses "
                    "to use it.\nFix it with: chmod 600 '%s'\n",
                    key_path, (unsigned)(st.st_mode & 0777), key_path);
            goto out;
        }
        if (bundle_flag)
            bundle = absolute(bundle_flag);
        else if (asprintf(&bundle, "%s/ca-bundle.pem", state_dir) < 0)
            bundle = NULL;
    }
    if (!ca_path || !bundle)
        goto oom;
    errno = 0;
    if ((rc = read_file(ca_path, AIRLOCK_CA_MAX, &ca_pem, &ca_len)) != 0 || ca_len == 0 ||
        !strstr(ca_pem, "-----BEGIN CERTIFICATE-----") || strstr(ca_pem, "PRIVATE KEY")) {
        explain_no_ca(ca_path, rc == AL_ERR_NOTFOUND || rc == AL_ERR_IO ? errno : 0, !ca_flag,
                      table ? table->listen.admin : NULL, url);
        goto out;
    }
    if (write_bundle(bundle, ca_pem, ca_len) != 0)
        goto out;

    if (no_proxy_flag)
        snprintf(no_proxy, sizeof no_proxy, "%s", no_proxy_flag);
    else
        build_no_proxy(table, proxy_host, no_proxy, sizeof no_proxy);
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
    print_export("GIT_SSL_CAINFO", bundle); /* git's libcurl reads none of the above */
    print_export("NODE_EXTRA_CA_CERTS", ca_path);
    status = fflush(stdout) == 0 ? 0 : 1;
    goto out;
oom:
    fprintf(stderr, "airlock: out of memory\n");
out:
    al_diags_free(&diags);
    al_table_unref(table);
    free(ca_pem);
    free(ca_path);
    free(bundle);
    free(state_dir);
    free(state_flagged);
    return status;
}
