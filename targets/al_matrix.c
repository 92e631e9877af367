/* al_matrix: the type/method matrix as data.
 *
 * Owns: the code's names of the enum values in al_table.h (the only place they are
 * spelled) and the parsed copy of the embedded targets/matrix.yaml. Which pairs are
 * allowed comes only from the YAML; the code contributes nothing but the names, and
 * parsing fails unless the file's names and the code's names are the same sets, so a
 * new type added on one side only is caught by the first test run.
 *
 * The embedded matrix is parsed once (pthread_once) and read-only afterwards. */
#include "al_matrix.h"
#include "common/al_err.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

static const char *const type_names[AL_TYPE_COUNT] = {
    [AL_TYPE_LAMBDA] = "lambda",         [AL_TYPE_API_GATEWAY] = "api_gateway",
    [AL_TYPE_OPENAPI] = "openapi",       [AL_TYPE_SMITHY] = "smithy",
    [AL_TYPE_MCP_SERVER] = "mcp_server",
};
static const char *const method_names[AL_AUTH_COUNT] = {
    [AL_AUTH_IAM] = "iam",
    [AL_AUTH_OAUTH2_2LO] = "oauth2_2lo",
    [AL_AUTH_OAUTH2_3LO] = "oauth2_3lo",
    [AL_AUTH_API_KEY] = "api_key",
};

const char *al_target_type_name(enum al_target_type t)
{
    return (unsigned)t < AL_TYPE_COUNT ? type_names[t] : "?";
}

const char *al_auth_method_name(enum al_auth_method m)
{
    if (m == AL_AUTH_NONE)
        return "none";
    return (unsigned)m < AL_AUTH_COUNT ? method_names[m] : "?";
}

int al_matrix_type_from_name(const char *name)
{
    for (int i = 0; name && i < AL_TYPE_COUNT; i++)
        if (strcmp(name, type_names[i]) == 0)
            return i;
    return -1;
}

int al_matrix_method_from_name(const char *name)
{
    for (int i = 0; name && i < AL_AUTH_COUNT; i++)
        if (strcmp(name, method_names[i]) == 0)
            return i;
    return -1;
}

static int fail_at(char *err, size_t cap, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(char *err, size_t cap, const yaml_node_t *n, const char *fmt, ...)
{
    if (err && cap) {
        int off = n ? snprintf(err, cap, "matrix.yaml:%zu:%zu: ", n->start_mark.line + 1,
                               n->start_mark.column + 1)
                    : snprintf(err, cap, "matrix.yaml: ");
        if (off < 0 || (size_t)off >= cap)
            off = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + off, cap - (size_t)off, fmt, ap);
        va_end(ap);
    }
    return AL_ERR_CONFIG;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Reads `methods: [..]` into m->method_order; every code method exactly once. */
static int parse_methods(yaml_document_t *doc, yaml_node_t *seq, al_matrix *m, char *err,
                         size_t cap)
{
    if (seq->type != YAML_SEQUENCE_NODE)
        return fail_at(err, cap, seq, "'methods' must be a list");
    int seen[AL_AUTH_COUNT] = {0};
    size_t n = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        yaml_node_t *v = yaml_document_get_node(doc, *it);
        int id = al_matrix_method_from_name(scalar(v));
        if (id < 0)
            return fail_at(err, cap, v, "method '%s' is not known to the code (al_table.h)",
                           scalar(v) ? scalar(v) : "?");
        if (seen[id]++)
            return fail_at(err, cap, v, "method '%s' listed twice", method_names[id]);
        m->method_order[n++] = id;
    }
    for (int i = 0; i < AL_AUTH_COUNT; i++)
        if (!seen[i])
            return fail_at(err, cap, seq, "method '%s' is known to the code but not listed",
                           method_names[i]);
    return AL_OK;
}

int al_matrix_parse(const char *yaml, size_t len, al_matrix *out, char *err, size_t errcap)
{
    yaml_parser_t p;
    yaml_document_t doc;
    int rc = AL_ERR_CONFIG, have_doc = 0;
    al_matrix m;
    memset(&m, 0, sizeof m);
    if (err && errcap)
        err[0] = '\0';
    if (!yaml_parser_initialize(&p))
        return AL_ERR_NOMEM;
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&p, &doc)) {
        rc = fail_at(err, errcap, NULL, "YAML error: %s", p.problem ? p.problem : "?");
        goto out;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        rc = fail_at(err, errcap, root, "the matrix must be a mapping with methods and types");
        goto out;
    }
    yaml_node_t *methods = NULL, *types = NULL;
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
        const char *ks = scalar(k);
        if (ks && strcmp(ks, "methods") == 0 && !methods)
            methods = yaml_document_get_node(&doc, pr->value);
        else if (ks && strcmp(ks, "types") == 0 && !types)
            types = yaml_document_get_node(&doc, pr->value);
        else {
            rc = fail_at(err, errcap, k, "unexpected key '%s'", ks ? ks : "?");
            goto out;
        }
    }
    if (!methods || !types) {
        rc = fail_at(err, errcap, root, "missing '%s'", methods ? "types" : "methods");
        goto out;
    }
    if ((rc = parse_methods(&doc, methods, &m, err, errcap)) != AL_OK)
        goto out;
    rc = AL_ERR_CONFIG;
    if (types->type != YAML_MAPPING_NODE) {
        fail_at(err, errcap, types, "'types' must be a mapping of type -> [methods]");
        goto out;
    }
    int seen[AL_TYPE_COUNT] = {0};
    size_t n = 0;
    for (yaml_node_pair_t *pr = types->data.mapping.pairs.start; pr < types->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(&doc, pr->value);
        int t = al_matrix_type_from_name(scalar(k));
        if (t < 0) {
            fail_at(err, errcap, k, "type '%s' is not known to the code (al_table.h)",
                    scalar(k) ? scalar(k) : "?");
            goto out;
        }
        if (seen[t]++) {
            fail_at(err, errcap, k, "type '%s' listed twice", type_names[t]);
            goto out;
        }
        m.type_order[n++] = t;
        if (!v || v->type != YAML_SEQUENCE_NODE) {
            fail_at(err, errcap, v, "type '%s': expected a list of methods", type_names[t]);
            goto out;
        }
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
            yaml_node_t *mv = yaml_document_get_node(&doc, *it);
            int id = al_matrix_method_from_name(scalar(mv));
            if (id < 0) {
                fail_at(err, errcap, mv, "type '%s': method '%s' is not known to the code",
                        type_names[t], scalar(mv) ? scalar(mv) : "?");
                goto out;
            }
            if (m.allow[t][id]++) {
                fail_at(err, errcap, mv, "type '%s': method '%s' listed twice", type_names[t],
                        method_names[id]);
                goto out;
            }
        }
    }
    for (int i = 0; i < AL_TYPE_COUNT; i++)
        if (!seen[i]) {
            fail_at(err, errcap, types, "type '%s' is known to the code but not listed",
                    type_names[i]);
            goto out;
        }
    *out = m;
    rc = AL_OK;
out:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return rc;
}

static pthread_once_t embedded_once = PTHREAD_ONCE_INIT;
static al_matrix embedded;
static int embedded_ok;
static char embedded_err[256];

static void load_embedded(void)
{
    embedded_ok = al_matrix_parse(al_matrix_yaml, al_matrix_yaml_len, &embedded, embedded_err,
                                  sizeof embedded_err) == AL_OK;
}

const al_matrix *al_matrix_get(void)
{
    pthread_once(&embedded_once, load_embedded);
    return embedded_ok ? &embedded : NULL;
}

const char *al_matrix_error(void)
{
    pthread_once(&embedded_once, load_embedded);
    return embedded_ok ? NULL : embedded_err;
}

int al_matrix_allows(enum al_target_type type, enum al_auth_method method)
{
    const al_matrix *m = al_matrix_get();
    if (!m || (unsigned)type >= AL_TYPE_COUNT || (unsigned)method >= AL_AUTH_COUNT)
        return 0;
    return m->allow[type][method];
}

void al_matrix_allowed_methods(enum al_target_type type, char *buf, size_t cap)
{
    const al_matrix *m = al_matrix_get();
    size_t off = 0;
    if (!cap)
        return;
    buf[0] = '\0';
    if (!m || (unsigned)type >= AL_TYPE_COUNT)
        return;
    for (int i = 0; i < AL_AUTH_COUNT; i++) {
        int id = m->method_order[i];
        if (!m->allow[type][id])
            continue;
        int w = snprintf(buf + off, cap - off, "%s%s", off ? ", " : "", method_names[id]);
        if (w < 0 || (size_t)w >= cap - off)
            return;
        off += (size_t)w;
    }
}
