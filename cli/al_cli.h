/* al_cli: what the subcommands share — the state-dir rule, usage printing, and
 * reading secrets from stdin/file/env (never from argv).
 *
 * Each subcommand is `int al_cmd_NAME(int argc, char **argv)` where argv[0] is the
 * command name; it returns the process exit status: 0 ok, 1 failure the user must
 * fix (bad table, not found), 2 usage error. */
#ifndef AL_CLI_H
#define AL_CLI_H

#include <stddef.h>
#include <stdio.h>

int al_cmd_serve(int argc, char **argv);
int al_cmd_check(int argc, char **argv);
int al_cmd_explain(int argc, char **argv);
int al_cmd_identity(int argc, char **argv);
int al_cmd_ca(int argc, char **argv);
int al_cmd_env(int argc, char **argv);
int al_cmd_reload(int argc, char **argv);
int al_cmd_audit(int argc, char **argv);
int al_cmd_store(int argc, char **argv);

/* Usage text of a command (NULL name = the top-level usage). */
void al_cli_usage(FILE *out, const char *command);

/* The state-dir rule every command uses: --state-dir DIR, else $AIRLOCK_STATE_DIR,
 * else the state_dir of the table given with -c FILE, else ./.airlock.
 * Either argument may be NULL. Returns a malloc'd path (never NULL unless OOM). */
char *al_cli_state_dir(const char *flag_state_dir, const char *config_path);

/* The store rule: the `store` of the table given with -c FILE chooses the backend
 * (identity/al_store.h); without -c, or a table without `store`, it is the SQLite
 * store in the state dir. Returns 0, or 1 after printing the table's problems. */
int al_cli_choose_store(const char *config_path);

/* "http://HOST:PORT" of an admin listen address ("0.0.0.0:9090" and "[::]:9090" are
 * asked on the loopback address of their family). */
void al_cli_admin_url(const char *listen, char *out, size_t cap);

#endif
