/* airlock: the one binary. main() only dispatches to a subcommand (cli/cmd_*.c);
 * each command parses its own flags and returns the exit status. */
#include "al_cli.h"
#include "common/al_log.h"
#include "version.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"serve", al_cmd_serve, "run the proxy on the table given with -c FILE"},
    {"reload", al_cmd_reload, "reload the running serve's table and report the result"},
    {"check", al_cmd_check, "validate a target table and print its targets"},
    {"explain", al_cmd_explain, "say what airlock would do with a request, sending nothing"},
    {"identity", al_cmd_identity, "manage credential providers in the encrypted store"},
    {"ca", al_cmd_ca, "create and print the local CA used for TLS interception"},
    {"env", al_cmd_env, "print the environment an agent needs to use the proxy"},
    {"audit", al_cmd_audit, "verify the hash-chained audit log; export its public key"},
    {"store", al_cmd_store, "copy the identity store between SQLite and PostgreSQL, verified"},
};

void al_cli_usage(FILE *out, const char *command)
{
    if (!command) {
        fprintf(out, "usage: airlock <command> [options]\n\ncommands:\n");
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
        fprintf(out, "  %-9s %s\n  %-9s %s\n\n", "version", "print the version", "help",
                "help [command]: print usage");
        fprintf(out, "Run 'airlock help <command>' for a command's options.\n");
        return;
    }
    /* Each command prints its own usage for --help. */
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, command) == 0) {
            char *argv[] = {(char *)commands[i].name, "--help", NULL};
            commands[i].run(2, argv);
            return;
        }
    }
    if (strcmp(command, "version") == 0) {
        fprintf(out, "usage: airlock version\n");
        return;
    }
    fprintf(out, "airlock: unknown command '%s'\n", command);
    al_cli_usage(out, NULL);
}

int main(int argc, char **argv)
{
    const char *lvl = getenv("AIRLOCK_LOG_LEVEL");
    if (lvl && strcasecmp(lvl, "debug") == 0)
        al_log_set_level(AL_LOG_DEBUG);
    if (argc < 2) {
        al_cli_usage(stderr, NULL);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        al_cli_usage(stdout, NULL);
        return 0;
    }
    if (strcmp(cmd, "help") == 0) {
        if (argc > 2) {
            for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
                if (strcmp(commands[i].name, argv[2]) == 0) {
                    al_cli_usage(stdout, argv[2]);
                    return 0;
                }
            if (strcmp(argv[2], "version") == 0 || strcmp(argv[2], "help") == 0) {
                al_cli_usage(stdout, argv[2]);
                return 0;
            }
            fprintf(stderr, "airlock: unknown command '%s'\n\n", argv[2]);
            al_cli_usage(stderr, NULL);
            return 2;
        }
        al_cli_usage(stdout, NULL);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("airlock %s\n", AIRLOCK_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, cmd) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "airlock: unknown command '%s'\n\n", cmd);
    al_cli_usage(stderr, NULL);
    return 2;
}
