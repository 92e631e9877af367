/* airlock check: validate a target table and print what it defines.
 *
 * Owns only presentation: the loader (targets/al_table.c) finds every problem and
 * this prints them as "FILE:LINE:COLUMN: error: message" (text) or as JSON, then a
 * summary table of the targets. `--matrix` and `--schema` print the embedded matrix
 * and the schema reference, both generated from data (matrix.yaml, al_schema rows).
 * Exit: 0 valid, 1 invalid or unreadable, 2 usage. */
#include "al_cli.h"
#include "identity/al_store.h"
#include "common/al_err.h"
#include "identity/al_identity.h"
#include "targets/al_matrix.h"
#include "targets/al_schema.h"
#include "targets/al_table.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: airlock check [-c] FILE [--format text|json] [--state-dir DIR] [--strict]\n"
        "       airlock check --matrix [--format text|json]\n"
        "       airlock check --schema [--format text|json]\n\n"
        "Validates a target table: every problem is reported as FILE:LINE:COLUMN: error: ...\n"
        "(all of them, in one run); a valid table prints its targets. When the state dir\n"
        "holds an identity store, every provider a target names must be in it and belong\n"
        "to the target's environment; without a store the providers are not checked (a\n"
        "warning). The audit log's directory must exist (or be the state dir serve\n"
        "creates) and be writable. Warnings (FILE:LINE:COLUMN: warning: ...) go to stderr\n"
        "and do not fail the check unless --strict.\n\n"
        "options:\n"
        "  -c, --config FILE   the target table (or give FILE as the argument)\n"
        "  --format FORMAT     text (default) or json\n"
        "  --state-dir DIR     the identity store to check providers against (default:\n"
        "                      $AIRLOCK_STATE_DIR, else the table's state_dir, else ./.airlock;\n"
        "                      skipped, with a warning, when there is no store)\n"
        "  --strict            warnings are errors (exit 1), e.g. no store to check against\n"
        "  --matrix            print the target-type / auth-method matrix\n"
        "  --schema            print the table reference (Markdown) generated from the schema\n"
        "  -h, --help          this help\n\n"
        "exit status: 0 valid, 1 invalid or unreadable, 2 usage error\n");
}

/* "a, b (fallback c)" or "-"; caller frees. */
static char *providers_text(const al_target *t)
{
    size_t cap = 16;
    for (size_t i = 0; i < t->auth.provider_count; i++)
        cap += strlen(t->auth.providers[i]) + 2;
    if (t->auth.fallback_provider)
        cap += strlen(t->auth.fallback_provider) + 12;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t off = 0;
    s[0] = '\0';
    for (size_t i = 0; i < t->auth.provider_count; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s%s", i ? ", " : "", t->auth.providers[i]);
    if (t->auth.fallback_provider)
        off += (size_t)snprintf(s + off, cap - off, "%s(fallback %s)", off ? " " : "",
                                t->auth.fallback_provider);
    if (!off)
        snprintf(s, cap, "-");
    return s;
}

static int print_text(const al_table *t)
{
    const char *head[5] = {"NAME", "TYPE", "METHOD", "PROVIDER", "UPSTREAM"};
    size_t w[4];
    for (int k = 0; k < 4; k++)
        w[k] = strlen(head[k]);
    char **prov = calloc(t->target_count ? t->target_count : 1, sizeof *prov);
    if (!prov)
        return 1;
    for (size_t i = 0; i < t->target_count; i++) {
        const al_target *g = &t->targets[i];
        if (!(prov[i] = providers_text(g)))
            goto fail;
        size_t l[4] = {strlen(g->name), strlen(al_target_type_name(g->type)),
                       strlen(al_auth_method_name(g->auth.method)), strlen(prov[i])};
        for (int k = 0; k < 4; k++)
            if (l[k] > w[k])
                w[k] = l[k];
    }
    printf("%-*s  %-*s  %-*s  %-*s  %s\n", (int)w[0], head[0], (int)w[1], head[1], (int)w[2],
           head[2], (int)w[3], head[3], head[4]);
    for (size_t i = 0; i < t->target_count; i++) {
        const al_target *g = &t->targets[i];
        printf("%-*s  %-*s  %-*s  %-*s  %s\n", (int)w[0], g->name, (int)w[1],
               al_target_type_name(g->type), (int)w[2], al_auth_method_name(g->auth.method),
               (int)w[3], prov[i], g->url);
    }
    printf("%s: OK, %zu target%s\n", t->path, t->target_count, t->target_count == 1 ? "" : "s");
    for (size_t i = 0; i < t->target_count; i++)
        free(prov[i]);
    free(prov);
    return 0;
fail:
    for (size_t i = 0; i < t->target_count; i++)
        free(prov[i]);
    free(prov);
    return 1;
}

static json_t *strv_json(char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *target_json(const al_target *g)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "name", json_string(g->name));
    json_object_set_new(o, "type", json_string(al_target_type_name(g->type)));
    json_object_set_new(o, "method", json_string(al_auth_method_name(g->auth.method)));
    json_object_set_new(o, "providers", strv_json(g->auth.providers, g->auth.provider_count));
    json_object_set_new(o, "fallback_provider",
                        g->auth.fallback_provider ? json_string(g->auth.fallback_provider)
                                                  : json_null());
    json_object_set_new(o, "upstream", json_string(g->url));
    json_object_set_new(o, "environment", json_string(g->environment));
    json_object_set_new(o, "line", json_integer(g->line));
    if (g->auth.method == AL_AUTH_API_KEY) {
        json_object_set_new(o, "location",
                            json_string(g->auth.location == AL_KEY_IN_QUERY ? "query" : "header"));
        json_object_set_new(o, "key_name", json_string(g->auth.name));
        json_object_set_new(o, "prefix", json_string(g->auth.prefix));
    }
    if (g->auth.method == AL_AUTH_IAM) {
        json_object_set_new(o, "region",
                            g->auth.region ? json_string(g->auth.region) : json_null());
        json_object_set_new(o, "service",
                            g->auth.service ? json_string(g->auth.service) : json_null());
    }
    return o;
}

static json_t *diags_json(const al_diags *d)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < d->count; i++)
        json_array_append_new(a, json_pack("{s:s, s:i, s:i, s:s}", "file", d->items[i].file,
                                           "line", d->items[i].line, "column", d->items[i].column,
                                           "message", d->items[i].message));
    return a;
}

static int print_json(const char *file, const al_table *t, const al_diags *d, const al_diags *w)
{
    json_t *root = json_object(), *errs = diags_json(d), *targets = json_array();
    int rc = 1;
    if (!root || !errs || !targets) {
        json_decref(errs);
        json_decref(targets);
        goto out;
    }
    json_object_set_new(root, "file", json_string(file));
    json_object_set_new(root, "ok", json_boolean(t != NULL));
    for (size_t i = 0; t && i < t->target_count; i++)
        json_array_append_new(targets, target_json(&t->targets[i]));
    json_object_set_new(root, "targets", targets);
    json_object_set_new(root, "errors", errs);
    json_object_set_new(root, "warnings", diags_json(w));
    if (json_dumpf(root, stdout, JSON_INDENT(2)) == 0) {
        fputc('\n', stdout);
        rc = 0;
    }
out:
    json_decref(root);
    return rc;
}

static int print_matrix(int json)
{
    const al_matrix *m = al_matrix_get();
    if (!m) {
        fprintf(stderr, "airlock check: the embedded matrix is invalid: %s\n", al_matrix_error());
        return 1;
    }
    if (json) {
        json_t *root = json_object(), *methods = json_array(), *types = json_object();
        for (int i = 0; i < AL_AUTH_COUNT; i++)
            json_array_append_new(methods, json_string(al_auth_method_name(m->method_order[i])));
        for (int i = 0; i < AL_TYPE_COUNT; i++) {
            int t = m->type_order[i];
            json_t *allowed = json_array();
            for (int j = 0; j < AL_AUTH_COUNT; j++)
                if (m->allow[t][m->method_order[j]])
                    json_array_append_new(allowed,
                                          json_string(al_auth_method_name(m->method_order[j])));
            json_object_set_new(types, al_target_type_name(t), allowed);
        }
        json_object_set_new(root, "methods", methods);
        json_object_set_new(root, "types", types);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(root);
        return 0;
    }
    printf("| target type |");
    for (int i = 0; i < AL_AUTH_COUNT; i++)
        printf(" %s |", al_auth_method_name(m->method_order[i]));
    printf("\n|---|");
    for (int i = 0; i < AL_AUTH_COUNT; i++)
        printf(":---:|");
    printf("\n");
    for (int i = 0; i < AL_TYPE_COUNT; i++) {
        int t = m->type_order[i];
        printf("| `%s` |", al_target_type_name(t));
        for (int j = 0; j < AL_AUTH_COUNT; j++)
            printf(" %s |", m->allow[t][m->method_order[j]] ? "yes" : "no");
        printf("\n");
    }
    return 0;
}

static int print_schema(int json)
{
    if (!json) {
        al_schema_print_markdown(stdout);
        return 0;
    }
    json_t *rows = json_array();
    for (size_t i = 0; i < AL_S_COUNT; i++) {
        const al_schema_row *r = &al_schema_rows[i];
        json_t *methods = json_array();
        for (int m = 0; m < AL_AUTH_COUNT; m++)
            if (r->methods & (1u << m))
                json_array_append_new(methods, json_string(al_auth_method_name(m)));
        json_array_append_new(rows, json_pack("{s:s, s:s, s:s, s:s, s:o}", "key", r->path, "type",
                                              al_schema_kind_name(r->kind), "default",
                                              r->def_doc ? r->def_doc : "", "doc", r->doc,
                                              "methods", methods));
    }
    json_dumpf(rows, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(rows);
    return 0;
}

static int names_providers(const al_table *t)
{
    for (size_t i = 0; i < t->target_count; i++)
        if (t->targets[i].auth.provider_count || t->targets[i].auth.fallback_provider)
            return 1;
    return 0;
}

/* serve opens the audit log at start and exits when it cannot, so the same is an
 * error here: the file must be writable if it exists, else its directory must exist
 * and be writable. The default <state_dir>/audit.log may wait for serve to create
 * the state dir (one level: its parent must exist). Writability is this user's view;
 * serve may run as another. */
static void check_audit_path(const char *file, const al_table *t, const char *state_dir,
                             al_diags *d)
{
    char *path = NULL, *dir = NULL;
    const char *why = NULL;
    struct stat st;
    if (t->audit.file)
        path = strdup(t->audit.file);
    else if (state_dir && asprintf(&path, "%s/audit.log", state_dir) < 0)
        path = NULL;
    if (!path)
        return;
    char *slash = strrchr(path, '/');
    dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        goto out;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            why = "it is a directory";
        else if (access(path, W_OK) != 0)
            why = strerror(errno);
    } else if (errno != ENOENT) {
        why = strerror(errno);
    } else if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            why = "its directory is not a directory";
        else if (access(dir, W_OK | X_OK) != 0)
            why = "its directory is not writable";
    } else if (!t->audit.file) {
        /* the state dir itself: serve creates it if its parent exists */
        char *up = strrchr(dir, '/');
        char *parent = up ? strndup(dir, up == dir ? 1 : (size_t)(up - dir)) : strdup(".");
        if (parent && (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode)))
            why = "neither the state dir nor its parent directory exists";
        free(parent);
    } else {
        why = "its directory does not exist";
    }
    if (why)
        al_diags_add(d, file, t->audit.file_mark.line, t->audit.file_mark.column,
                     "the audit log %s cannot be written (%s), so serve would not start; %s",
                     path, why,
                     t->audit.file ? "create the directory or point audit.file elsewhere"
                                   : "create the state dir or pass --state-dir");
out:
    free(dir);
    free(path);
}

int al_cmd_check(int argc, char **argv)
{
    const char *file = NULL, *format = "text", *state_flag = NULL;
    int matrix = 0, schema = 0, strict = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--state-dir")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "airlock check: %s needs a value\n\n", a);
                usage(stderr);
                return 2;
            }
            state_flag = argv[++i];
        } else if (!strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "--format")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "airlock check: %s needs a value\n\n", a);
                usage(stderr);
                return 2;
            }
            if (!strcmp(a, "--format"))
                format = argv[++i];
            else if (file) {
                fprintf(stderr, "airlock check: one table at a time\n\n");
                usage(stderr);
                return 2;
            } else
                file = argv[++i];
        } else if (!strncmp(a, "--format=", 9)) {
            format = a + 9;
        } else if (!strcmp(a, "--matrix")) {
            matrix = 1;
        } else if (!strcmp(a, "--schema")) {
            schema = 1;
        } else if (!strcmp(a, "--strict")) {
            strict = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "airlock check: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (file) {
            fprintf(stderr, "airlock check: one table at a time\n\n");
            usage(stderr);
            return 2;
        } else {
            file = a;
        }
    }
    int json = !strcmp(format, "json");
    if (!json && strcmp(format, "text") != 0) {
        fprintf(stderr, "airlock check: --format must be text or json\n\n");
        usage(stderr);
        return 2;
    }
    if (matrix + schema + (file != NULL) != 1) {
        fprintf(stderr, "airlock check: give one of: a table FILE, --matrix, --schema\n\n");
        usage(stderr);
        return 2;
    }
    if (matrix)
        return print_matrix(json);
    if (schema)
        return print_schema(json);

    al_diags d, w;
    al_table *t = NULL;
    al_diags_init(&d);
    al_diags_init(&w);
    int rc = al_table_load(file, &t, &d);
    if (rc == 0) {
        for (size_t i = 0; i < t->warnings.count; i++)
            al_diags_add(&w, t->warnings.items[i].file, t->warnings.items[i].line,
                         t->warnings.items[i].column, "%s", t->warnings.items[i].message);
        /* Providers against the store: names that exist, environments that match. */
        char *state_dir = al_cli_state_dir(state_flag, file);
        int src = !state_dir                         ? AL_ERR_NOMEM
                  : al_store_choose_table(t) != AL_OK ? AL_ERR_NOMEM
                                                     : al_identity_check_table(state_dir, t, &d, NULL);
        if (src == AL_ERR_NOTFOUND) {
            if (names_providers(t))
                al_diags_add(&w, file, 0, 0,
                             "providers were not checked: no identity store exists at "
                             "%s/identity.db (create the providers with `airlock identity "
                             "create-...-credential-provider`, or point --state-dir at the "
                             "store)",
                             state_dir);
        } else if (src != AL_OK && src != AL_ERR_CONFIG) {
            al_diags_add(&w, file, 0, 0,
                         "providers were not checked: the identity store in %s could not be "
                         "opened (%s)",
                         state_dir ? state_dir : "?", al_strerror(src));
        }
        check_audit_path(file, t, state_dir, &d);
        if (strict)
            for (size_t i = 0; i < w.count; i++)
                al_diags_add(&d, w.items[i].file, w.items[i].line, w.items[i].column,
                             "%s (--strict)", w.items[i].message);
        if (d.count) {
            al_table_unref(t);
            t = NULL;
            rc = AL_ERR_CONFIG;
        }
        free(state_dir);
    }
    int status;
    if (json)
        status = print_json(file, rc == 0 ? t : NULL, &d, &w) || rc != 0;
    else {
        if (!strict)
            al_diags_print_as(&w, stderr, "warning");
        if (rc != 0) {
            al_diags_print(&d, stderr);
            fprintf(stderr, "%s: %zu error%s\n", file, d.count, d.count == 1 ? "" : "s");
            status = 1;
        } else
            status = print_text(t);
    }
    al_table_unref(t);
    al_diags_free(&d);
    al_diags_free(&w);
    return status;
}
