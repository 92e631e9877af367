/* airlock store: operations on the identity store as a whole.
 *
 *   airlock store migrate --from sqlite[:DIR]|postgres --to sqlite[:DIR]|postgres
 *                         [-c FILE] [--state-dir DIR] [--dsn-file F | --dsn-env VAR]
 *
 * Copies every provider (with all its versions), every store-wide meta entry (the
 * master-key check value) and every user token, as sealed bytes: nothing is decrypted,
 * so no master key is needed. Providers and meta go in one transaction; then each row
 * is read back from the destination and compared with the source, field by field and
 * byte by byte. Running it again rewrites the same rows: it is idempotent. A
 * destination sealed by another master key (a different check value) is refused.
 *
 * "postgres" is the table's store (-c FILE with store.backend postgres), or the DSN
 * given with --dsn-file / --dsn-env; the connection string never comes from argv. */
#include "al_cli.h"
#include "common/al_err.h"
#include "identity/al_store.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: airlock store migrate --from SPEC --to SPEC [-c FILE] [--state-dir DIR]\n"
            "                             [--dsn-file FILE | --dsn-env VAR]\n\n"
            "Copies the identity store (providers, versions, meta, user tokens; sealed, never\n"
            "decrypted) and verifies every row by reading it back. Idempotent.\n\n"
            "SPEC: sqlite:DIR  the SQLite store DIR/identity.db\n"
            "      sqlite      the SQLite store of the state dir (--state-dir, else\n"
            "                  $AIRLOCK_STATE_DIR, else state_dir of -c FILE, else ./.airlock)\n"
            "      postgres    PostgreSQL: the connection string from --dsn-file / --dsn-env,\n"
            "                  else from the `store` of the table given with -c FILE\n");
}

typedef struct endpoint {
    al_store_choice choice;
    char *dir; /* owned; sqlite */
    char label[4400];
} endpoint;

static int parse_spec(const char *spec, const char *state_dir, const al_store_choice *pg,
                      endpoint *e)
{
    memset(e, 0, sizeof *e);
    if (!strncmp(spec, "sqlite", 6) && (spec[6] == 0 || spec[6] == ':')) {
        e->choice.backend = AL_STORE_BACKEND_SQLITE;
        e->dir = strdup(spec[6] == ':' && spec[7] ? spec + 7 : state_dir);
        if (!e->dir)
            return AL_ERR_NOMEM;
    } else if (!strcmp(spec, "postgres")) {
        if (!pg) {
            fprintf(stderr, "airlock store: 'postgres' needs --dsn-file FILE, --dsn-env VAR or "
                            "-c FILE with store.backend postgres\n");
            return AL_ERR_INVAL;
        }
        e->choice = *pg;
    } else {
        fprintf(stderr, "airlock store: '%s' is not sqlite, sqlite:DIR or postgres\n", spec);
        return AL_ERR_INVAL;
    }
    al_store_describe(&e->choice, e->dir, e->label, sizeof e->label);
    return AL_OK;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static int same_blob(const unsigned char *a, size_t al, const unsigned char *b, size_t bl)
{
    return al == bl && (al == 0 || (a && b && !memcmp(a, b, al)));
}

static int same_record(const al_store_record *a, const al_store_record *b)
{
    if (!same_str(a->name, b->name) || !same_str(a->kind, b->kind) ||
        !same_str(a->environment, b->environment) || !same_str(a->description, b->description) ||
        !same_str(a->tags_json, b->tags_json) || !same_str(a->config_json, b->config_json) ||
        a->current_version != b->current_version || a->created_at != b->created_at ||
        a->updated_at != b->updated_at || a->version_count != b->version_count)
        return 0;
    for (size_t i = 0; i < a->version_count; i++) {
        const al_store_version *x = &a->versions[i], *y = &b->versions[i];
        if (x->version != y->version || x->created_at != y->created_at ||
            x->expires_at != y->expires_at || !x->wiped != !y->wiped ||
            strcmp(x->fingerprint, y->fingerprint) ||
            !same_blob(x->wrapped_key, x->wrapped_key_len, y->wrapped_key, y->wrapped_key_len) ||
            !same_blob(x->sealed, x->sealed_len, y->sealed, y->sealed_len))
            return 0;
    }
    return 1;
}

static int same_user(const al_store_user_token *a, const al_store_user_token *b)
{
    return same_str(a->provider, b->provider) && same_str(a->user, b->user) &&
           same_str(a->scope, b->scope) && a->obtained_at == b->obtained_at &&
           a->expires_at == b->expires_at && a->updated_at == b->updated_at &&
           !a->has_refresh == !b->has_refresh && !strcmp(a->fingerprint, b->fingerprint) &&
           same_blob(a->wrapped_key, a->wrapped_key_len, b->wrapped_key, b->wrapped_key_len) &&
           same_blob(a->sealed, a->sealed_len, b->sealed, b->sealed_len);
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* The copy and its verification; counts go into *res. */
static int migrate(al_store *src, al_store *dst, const endpoint *to, json_t *res)
{
    al_store_record *recs = NULL, got;
    al_store_user_token *users = NULL;
    char **mk = NULL, **mv = NULL, *check = NULL, *dcheck = NULL;
    const char **kv = NULL;
    size_t nrec = 0, nusers = 0, nmeta = 0, versions = 0;
    int rc;

    if ((rc = src->ops->meta_list(src, &mk, &mv, &nmeta)) != AL_OK)
        goto out;
    for (size_t i = 0; i < nmeta; i++)
        if (!strcmp(mk[i], "master_key_check"))
            check = mv[i];
    rc = dst->ops->meta_get(dst, "master_key_check", &dcheck);
    if (rc == AL_OK && check && strcmp(check, dcheck)) {
        fprintf(stderr,
                "airlock store migrate: %s holds secrets sealed by another master key; "
                "refusing to mix them (migrate into an empty store)\n",
                to->label);
        rc = AL_ERR_KEY;
        goto out;
    }
    if (rc != AL_OK && rc != AL_ERR_NOTFOUND)
        goto out;
    if ((rc = src->ops->list(src, &recs, &nrec)) != AL_OK)
        goto out;
    if (!(kv = calloc(2 * nmeta + 1, sizeof *kv))) {
        rc = AL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < nmeta; i++) {
        kv[2 * i] = mk[i];
        kv[2 * i + 1] = mv[i];
    }
    /* Providers and meta in one transaction: a failure leaves the destination as it was. */
    if ((rc = dst->ops->put(dst, recs, nrec, kv, nmeta, NULL)) != AL_OK)
        goto out;
    if ((rc = src->ops->user_list(src, NULL, &users, &nusers)) != AL_OK)
        goto out;
    for (size_t i = 0; i < nusers && rc == AL_OK; i++) {
        al_store_user_token full, back;
        if ((rc = src->ops->user_get(src, users[i].provider, users[i].user, &full)) != AL_OK)
            break;
        rc = dst->ops->user_put(dst, &full);
        if (rc == AL_OK &&
            (rc = dst->ops->user_get(dst, full.provider, full.user, &back)) == AL_OK) {
            if (!same_user(&full, &back)) {
                fprintf(stderr,
                        "airlock store migrate: user token (%s, %s) differs after the "
                        "copy\n",
                        full.provider, full.user);
                rc = AL_ERR_DB;
            }
            al_store_user_token_clear(&back);
        }
        al_store_user_token_clear(&full);
    }
    if (rc != AL_OK)
        goto out;
    /* Verify: every provider read back equals the source, byte for byte. */
    for (size_t i = 0; i < nrec && rc == AL_OK; i++) {
        versions += recs[i].version_count;
        if ((rc = dst->ops->get(dst, recs[i].name, &got)) != AL_OK)
            break;
        if (!same_record(&recs[i], &got)) {
            fprintf(stderr, "airlock store migrate: provider '%s' differs after the copy\n",
                    recs[i].name);
            rc = AL_ERR_DB;
        }
        al_store_record_clear(&got);
    }
    for (size_t i = 0; i < nmeta && rc == AL_OK; i++) {
        char *v = NULL;
        if ((rc = dst->ops->meta_get(dst, mk[i], &v)) == AL_OK && strcmp(v, mv[i])) {
            fprintf(stderr, "airlock store migrate: meta '%s' differs after the copy\n", mk[i]);
            rc = AL_ERR_DB;
        }
        free(v);
    }
    if (rc == AL_OK) {
        json_object_set_new(res, "providers", json_integer((json_int_t)nrec));
        json_object_set_new(res, "versions", json_integer((json_int_t)versions));
        json_object_set_new(res, "userTokens", json_integer((json_int_t)nusers));
        json_object_set_new(res, "meta", json_integer((json_int_t)nmeta));
        json_object_set_new(res, "verified", json_true());
    }
out:
    al_store_records_free(recs, nrec);
    al_store_user_tokens_free(users, nusers);
    free_strs(mk, nmeta);
    free_strs(mv, nmeta);
    free(kv);
    free(dcheck);
    return rc;
}

int al_cmd_store(int argc, char **argv)
{
    const char *from = NULL, *to = NULL, *config = NULL, *state_flag = NULL, *dsn_file = NULL,
               *dsn_env = NULL;
    char *state_dir = NULL;
    endpoint a = {0}, b = {0};
    al_store *src = NULL, *dst = NULL;
    json_t *res = NULL;
    int ret = 2, rc;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "migrate")) {
        fprintf(stderr, "airlock store: unknown verb '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i += 2) { /* every option takes a value */
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = !strcmp(o, "--from")                         ? &from
                            : !strcmp(o, "--to")                         ? &to
                            : !strcmp(o, "-c") || !strcmp(o, "--config") ? &config
                            : !strcmp(o, "--state-dir")                  ? &state_flag
                            : !strcmp(o, "--dsn-file")                   ? &dsn_file
                            : !strcmp(o, "--dsn-env")                    ? &dsn_env
                                                                         : NULL;
        if (!slot || !v) {
            fprintf(stderr, "airlock store migrate: %s '%s'\n\n",
                    slot ? "missing value for" : "unknown option", o);
            usage(stderr);
            return 2;
        }
        *slot = v;
    }
    if (!from || !to || (dsn_file && dsn_env)) {
        fprintf(stderr, "airlock store migrate: give --from and --to (and at most one of "
                        "--dsn-file, --dsn-env)\n\n");
        usage(stderr);
        return 2;
    }
    ret = 1;
    state_dir = al_cli_state_dir(state_flag, config);
    if (!state_dir || al_cli_choose_store(config))
        goto out;
    al_store_choice pg = {AL_STORE_BACKEND_POSTGRES, dsn_file, dsn_env};
    const al_store_choice *pgp = dsn_file || dsn_env ? &pg : NULL;
    if (!pgp && al_store_chosen()->backend == AL_STORE_BACKEND_POSTGRES)
        pgp = al_store_chosen();
    if (parse_spec(from, state_dir, pgp, &a) != AL_OK ||
        parse_spec(to, state_dir, pgp, &b) != AL_OK) {
        ret = 2;
        goto out;
    }
    if (a.choice.backend == b.choice.backend &&
        (a.choice.backend == AL_STORE_BACKEND_POSTGRES || !strcmp(a.dir, b.dir))) {
        fprintf(stderr, "airlock store migrate: --from and --to are the same store\n");
        ret = 2;
        goto out;
    }
    rc = al_store_open_choice(&a.choice, a.dir, 0, &src);
    if (rc == AL_ERR_NOTFOUND) {
        fprintf(stderr, "airlock store migrate: there is no identity store in %s\n", a.label);
        goto out;
    }
    if (rc == AL_OK)
        rc = al_store_open_choice(&b.choice, b.dir, AL_STORE_CREATE, &dst);
    res = json_pack("{s:s, s:s}", "from", a.label, "to", b.label);
    if (rc == AL_OK)
        rc = res ? migrate(src, dst, &b, res) : AL_ERR_NOMEM;
    if (rc != AL_OK) {
        fprintf(stderr, "airlock store migrate: failed: %s (%s -> %s)%s\n", al_strerror(rc),
                a.label, b.label,
                rc == AL_ERR_DB ? "; see the message above. Nothing half-copied: the providers "
                                  "go in one transaction, and running it again is safe"
                                : "");
        goto out;
    }
    char *txt = json_dumps(res, JSON_INDENT(4));
    if (txt)
        printf("%s\n", txt);
    free(txt);
    ret = 0;
out:
    al_store_close(src);
    al_store_close(dst);
    json_decref(res);
    free(a.dir);
    free(b.dir);
    free(state_dir);
    return ret;
}
