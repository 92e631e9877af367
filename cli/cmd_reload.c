/* airlock reload: asks a running `airlock serve` to reload its table through the
 * admin listener (POST /reload) and reports the result, so `systemctl reload` (an
 * ExecReload= line) fails when the new table is refused. */
#include "al_cli.h"
#include "common/al_err.h"
#include "targets/al_table.h"

#include <curl/curl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: airlock reload -c FILE | --admin URL\n"
            "\n"
            "Reloads the table of the running airlock serve and waits for the result:\n"
            "exit 0 when the new table is in use, 1 when it was refused (the problems are\n"
            "printed as FILE:LINE:COLUMN; the previous table keeps serving) or airlock\n"
            "could not be reached. For a systemd unit: ExecReload=airlock reload -c FILE\n"
            "  -c, --config FILE  the table airlock serves: its listen.admin is asked, and\n"
            "                     it is checked here first\n"
            "  --admin URL        the admin listener (http://127.0.0.1:9090), instead of -c\n");
}

typedef struct body {
    char data[256 * 1024];
    size_t len;
} body;

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    body *b = arg;
    size_t k = size * n;
    if (k > sizeof b->data - 1 - b->len)
        return 0; /* more than any answer of ours: abort */
    memcpy(b->data + b->len, p, k);
    b->len += k;
    return k;
}

/* listen.admin "host:port" -> a URL to reach it from this machine. */
static int report(const char *config, json_t *j, long http)
{
    json_t *ok = json_object_get(j, "ok");
    json_t *table = json_object_get(j, "table");
    const char *path = json_string_value(json_object_get(table, "path"));
    json_int_t gen = json_integer_value(json_object_get(table, "generation"));
    if (!json_is_boolean(ok)) {
        fprintf(stderr, "airlock reload: unexpected answer from the admin listener (HTTP %ld)\n",
                http);
        return 1;
    }
    if (!json_is_true(ok)) {
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(j, "diagnostics"), i, d)
        {
            fprintf(stderr, "%s:%lld:%lld: error: %s\n",
                    json_string_value(json_object_get(d, "file")),
                    (long long)json_integer_value(json_object_get(d, "line")),
                    (long long)json_integer_value(json_object_get(d, "column")),
                    json_string_value(json_object_get(d, "message")));
        }
        fprintf(stderr, "airlock reload: %s\n", json_string_value(json_object_get(j, "message")));
        return 1;
    }
    printf("airlock reload: loaded %s (generation %lld, targets %lld, sha256 %s)\n",
           path ? path : "?", (long long)gen,
           (long long)json_integer_value(json_object_get(table, "targets")),
           json_string_value(json_object_get(table, "sha256")));
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(j, "degraded_targets"), i, d)
    {
        fprintf(stderr,
                "airlock reload: warning: target '%s': provider '%s' is not in the store; its "
                "requests get 502 until it is created\n",
                json_string_value(json_object_get(d, "target")),
                json_string_value(json_object_get(d, "provider")));
    }
    char *mine = config ? realpath(config, NULL) : NULL;
    if (mine && path && strcmp(mine, path) != 0)
        fprintf(stderr,
                "airlock reload: warning: the running airlock serves %s, not %s (it reloads "
                "the file it was started with)\n",
                path, mine);
    free(mine);
    return 0;
}

int al_cmd_reload(int argc, char **argv)
{
    const char *config = NULL, *admin = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(a, "--admin") == 0 && i + 1 < argc) {
            admin = argv[++i];
        } else {
            fprintf(stderr, "airlock reload: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!config && !admin) {
        fprintf(stderr, "airlock reload: give -c FILE (the table airlock serves) or --admin URL\n");
        usage(stderr);
        return 2;
    }
    char url[1024];
    if (config) {
        /* Checked here first: a table that does not load is refused by serve too, and
         * its listen.admin may be unreadable. */
        al_table *t = NULL;
        al_diags d;
        al_diags_init(&d);
        int rc = al_table_load(config, &t, &d);
        if (rc != AL_OK) {
            al_diags_print(&d, stderr);
            al_diags_free(&d);
            fprintf(stderr,
                    "airlock reload: %s is invalid (%s): not sent; the running airlock keeps "
                    "its table\n",
                    config, al_strerror(rc));
            return 1;
        }
        al_diags_free(&d);
        if (!admin && !t->listen.admin) {
            al_table_unref(t);
            fprintf(stderr,
                    "airlock reload: %s has no listen.admin: add one (e.g. 127.0.0.1:9090), "
                    "restart airlock, or send SIGHUP instead (which cannot report failure)\n",
                    config);
            return 1;
        }
        if (!admin)
            al_cli_admin_url(t->listen.admin, url, sizeof url);
        al_table_unref(t);
    }
    if (admin)
        snprintf(url, sizeof url, "%s%s", strstr(admin, "://") ? "" : "http://", admin);
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/')
        url[--ul] = '\0';
    snprintf(url + ul, sizeof url - ul, "/reload");

    body *b = calloc(1, sizeof *b);
    CURL *c = curl_easy_init();
    if (!b || !c) {
        free(b);
        if (c)
            curl_easy_cleanup(c);
        fprintf(stderr, "airlock reload: out of memory\n");
        return 1;
    }
    char err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    CURLcode cc = curl_easy_perform(c);
    long http = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
    curl_easy_cleanup(c);
    int status = 1;
    if (cc != CURLE_OK) {
        fprintf(stderr,
                "airlock reload: cannot reach the admin listener at %s: %s; is airlock serve "
                "running?\n",
                url, err[0] ? err : curl_easy_strerror(cc));
    } else {
        json_t *j = json_loadb(b->data, b->len, 0, NULL);
        if (!j)
            fprintf(stderr, "airlock reload: %s answered HTTP %ld without a JSON body\n", url,
                    http);
        else
            status = report(config, j, http);
        json_decref(j);
    }
    free(b);
    return status;
}
