/* airlock serve: parses the flags and hands over to proxy/al_server.c, which owns
 * the workers, signals and listeners. */
#include "al_cli.h"
#include "proxy/al_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: airlock serve -c FILE [--state-dir DIR] [--workers N]\n"
        "\n"
        "Runs the proxy on the target table FILE: listen.proxy (HTTP/1.1 and h2c,\n"
        "forward proxy and /t/<target>/ gateway mode) and listen.admin (/healthz,\n"
        "/readyz, /status, /status.json, /metrics, POST /reload).\n"
        "  -c, --config FILE  the target table (required)\n"
        "  --state-dir DIR    credential store, CA and audit log (default: $AIRLOCK_STATE_DIR,\n"
        "                     else the table's state_dir, else ./.airlock)\n"
        "  --workers N        worker threads (default: limits.workers, 0 = one per core)\n"
        "Signals: SIGHUP reloads the table (an invalid one is refused and the old one\n"
        "kept; 'airlock reload' does the same and reports the result) and reopens the\n"
        "audit log; SIGUSR1 only reopens the audit log (after logrotate moved it);\n"
        "SIGTERM/SIGINT stop accepting and drain in-flight requests. A second serve on\n"
        "an address another process listens on exits with status 1.\n");
}

int al_cmd_serve(int argc, char **argv)
{
    const char *config = NULL, *state_flag = NULL;
    long workers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(a, "--state-dir") == 0 && i + 1 < argc) {
            state_flag = argv[++i];
        } else if (strcmp(a, "--workers") == 0 && i + 1 < argc) {
            char *end = NULL;
            workers = strtol(argv[++i], &end, 10);
            if (!end || *end || workers < 0 || workers > 1024) {
                fprintf(stderr, "airlock serve: --workers takes a number from 0 to 1024\n");
                return 2;
            }
        } else {
            fprintf(stderr, "airlock serve: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!config) {
        fprintf(stderr, "airlock serve: -c FILE is required\n");
        usage(stderr);
        return 2;
    }
    char *state_dir = al_cli_state_dir(state_flag, config);
    if (!state_dir) {
        fprintf(stderr, "airlock serve: out of memory\n");
        return 1;
    }
    int rc = al_server_run(config, state_dir, (unsigned)workers);
    free(state_dir);
    return rc;
}
