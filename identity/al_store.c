/* al_store: the backend choice (table key `store`) and the dispatch to the SQLite or
 * PostgreSQL implementation of identity/al_store.h.
 *
 * Owns: the process-wide choice (copied strings), reading the PostgreSQL connection
 * string from its file or environment variable.
 *
 * Invariants: the connection string is held only in buffers wiped before they are
 * freed and never appears in a log line or message — messages name its file or
 * variable instead. */
#include "al_store.h"
#include "common/al_err.h"
#include "common/al_log.h"
#include "targets/al_table.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DSN_MAX 8192 /* a libpq connection string is a few hundred bytes */

static struct {
    int backend;
    char *dsn_file, *dsn_env;
    al_store_choice view;
} chosen;

int al_store_choose(const al_store_choice *c)
{
    char *f = c && c->dsn_file ? strdup(c->dsn_file) : NULL;
    char *e = c && c->dsn_env ? strdup(c->dsn_env) : NULL;
    if ((c && c->dsn_file && !f) || (c && c->dsn_env && !e)) {
        free(f);
        free(e);
        return AL_ERR_NOMEM;
    }
    free(chosen.dsn_file);
    free(chosen.dsn_env);
    chosen.backend = c ? c->backend : AL_STORE_BACKEND_SQLITE;
    chosen.dsn_file = f;
    chosen.dsn_env = e;
    chosen.view = (al_store_choice){chosen.backend, f, e};
    return AL_OK;
}

int al_store_choose_table(const al_table *t)
{
    al_store_choice c = {t->store.backend == AL_STORE_POSTGRES ? AL_STORE_BACKEND_POSTGRES
                                                               : AL_STORE_BACKEND_SQLITE,
                         t->store.dsn_file, t->store.dsn_env};
    return al_store_choose(&c);
}

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

int al_store_table_differs(const al_table *t)
{
    int b =
        t->store.backend == AL_STORE_POSTGRES ? AL_STORE_BACKEND_POSTGRES : AL_STORE_BACKEND_SQLITE;
    return b != chosen.backend || !same(t->store.dsn_file, chosen.dsn_file) ||
           !same(t->store.dsn_env, chosen.dsn_env);
}

const al_store_choice *al_store_chosen(void)
{
    chosen.view = (al_store_choice){chosen.backend, chosen.dsn_file, chosen.dsn_env};
    return &chosen.view;
}

const char *al_store_describe(const al_store_choice *c, const char *state_dir, char *buf, size_t n)
{
    if (!c || c->backend != AL_STORE_BACKEND_POSTGRES)
        snprintf(buf, n, "%s/identity.db", state_dir ? state_dir : ".");
    else if (c->dsn_file)
        snprintf(buf, n, "PostgreSQL (connection string from %s)", c->dsn_file);
    else
        snprintf(buf, n, "PostgreSQL (connection string from $%s)", c->dsn_env ? c->dsn_env : "?");
    return buf;
}

/* Reads the DSN into a malloc'd string the caller wipes and frees. Trailing
 * whitespace (the file's newline) is cut. */
static int read_dsn(const al_store_choice *c, char **out, char *origin, size_t on)
{
    char *buf = NULL;
    size_t len = 0;
    if (c->dsn_file) {
        snprintf(origin, on, "file %s", c->dsn_file);
        int fd = open(c->dsn_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            al_log(AL_LOG_ERROR, "identity.store",
                   "cannot read the PostgreSQL connection "
                   "string from %s: %s",
                   c->dsn_file, strerror(errno));
            return AL_ERR_IO;
        }
        struct stat sb;
        if (fstat(fd, &sb) == 0 && (sb.st_mode & 077))
            al_log(AL_LOG_WARN, "identity.store",
                   "%s (the PostgreSQL connection string, with its password) is readable by "
                   "other users: chmod 600 it",
                   c->dsn_file);
        buf = malloc(DSN_MAX + 1);
        ssize_t r = 0;
        while (buf && len < DSN_MAX && (r = read(fd, buf + len, DSN_MAX - len)) > 0)
            len += (size_t)r;
        close(fd);
        if (!buf)
            return AL_ERR_NOMEM;
        if (r < 0 || len >= DSN_MAX) {
            OPENSSL_cleanse(buf, DSN_MAX + 1);
            free(buf);
            al_log(AL_LOG_ERROR, "identity.store", "%s: %s", c->dsn_file,
                   r < 0 ? strerror(errno) : "too long for a connection string");
            return AL_ERR_IO;
        }
    } else {
        snprintf(origin, on, "$%s", c->dsn_env ? c->dsn_env : "");
        const char *v = c->dsn_env ? getenv(c->dsn_env) : NULL;
        if (!v || !*v) {
            al_log(AL_LOG_ERROR, "identity.store",
                   "the environment variable %s holding the PostgreSQL connection string is "
                   "not set",
                   c->dsn_env ? c->dsn_env : "(none)");
            return AL_ERR_CONFIG;
        }
        len = strlen(v);
        if (len >= DSN_MAX)
            return AL_ERR_TOOBIG;
        buf = malloc(len + 1);
        if (!buf)
            return AL_ERR_NOMEM;
        memcpy(buf, v, len);
    }
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                   buf[len - 1] == '\t'))
        len--;
    buf[len] = 0;
    if (!len || memchr(buf, 0, len)) {
        al_log(AL_LOG_ERROR, "identity.store", "the PostgreSQL connection string in %s is %s",
               origin, len ? "not text (NUL byte)" : "empty");
        OPENSSL_cleanse(buf, len);
        free(buf);
        return AL_ERR_CONFIG;
    }
    *out = buf;
    return AL_OK;
}

int al_store_open_choice(const al_store_choice *c, const char *state_dir, int flags, al_store **out)
{
    if (!c || c->backend != AL_STORE_BACKEND_POSTGRES)
        return al_store_sqlite_open(state_dir, flags, out);
    char *dsn = NULL, origin[4200];
    int rc = read_dsn(c, &dsn, origin, sizeof origin);
    if (rc != AL_OK)
        return rc;
    rc = al_store_pg_open(dsn, origin, flags, out);
    OPENSSL_cleanse(dsn, strlen(dsn));
    free(dsn);
    return rc;
}

int al_store_open(const char *state_dir, int flags, al_store **out)
{
    return al_store_open_choice(al_store_chosen(), state_dir, flags, out);
}
