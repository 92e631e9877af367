/* al_cli: the state-dir rule shared by every command (see al_cli.h).
 * The table's state_dir comes back already resolved against the table file's
 * directory (al_table_peek_state_dir), so `-c deploy/examples/quickstart.yaml`
 * finds the same store from any working directory layout the README uses. */
#include "al_cli.h"
#include "common/al_err.h"
#include "identity/al_store.h"
#include "targets/al_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void al_cli_admin_url(const char *listen, char *out, size_t cap)
{
    const char *colon = strrchr(listen, ':');
    size_t hl = colon ? (size_t)(colon - listen) : 0;
    const char *host = "127.0.0.1";
    if (hl && !(hl == 7 && strncmp(listen, "0.0.0.0", 7) == 0) &&
        !(hl == 4 && strncmp(listen, "[::]", 4) == 0)) {
        snprintf(out, cap, "http://%s", listen);
        return;
    }
    if (hl == 4)
        host = "[::1]";
    snprintf(out, cap, "http://%s:%s", host, colon ? colon + 1 : "");
}

int al_cli_choose_store(const char *config_path)
{
    al_table *t = NULL;
    al_diags d;
    if (!config_path || !al_table_peek_has(config_path, "store"))
        return 0;
    al_diags_init(&d);
    int rc = al_table_load(config_path, &t, &d);
    if (rc == AL_OK)
        rc = al_store_choose_table(t);
    else
        al_diags_print(&d, stderr);
    if (rc != AL_OK)
        fprintf(stderr, "airlock: cannot use the store of %s (%s)\n", config_path,
                al_strerror(rc));
    al_diags_free(&d);
    al_table_unref(t);
    return rc == AL_OK ? 0 : 1;
}

char *al_cli_state_dir(const char *flag_state_dir, const char *config_path)
{
    if (flag_state_dir && *flag_state_dir)
        return strdup(flag_state_dir);
    const char *env = getenv("AIRLOCK_STATE_DIR");
    if (env && *env)
        return strdup(env);
    if (config_path) {
        char *from_table = al_table_peek_state_dir(config_path);
        if (from_table)
            return from_table;
    }
    return strdup("./.airlock");
}
