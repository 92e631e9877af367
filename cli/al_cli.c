/* al_cli: the state-dir rule shared by every command (see al_cli.h).
 * The table's state_dir comes back already resolved against the table file's
 * directory (al_table_peek_state_dir), so `-c deploy/examples/quickstart.yaml`
 * finds the same store from any working directory layout the README uses. */
#include "al_cli.h"
#include "targets/al_table.h"

#include <stdlib.h>
#include <string.h>

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
