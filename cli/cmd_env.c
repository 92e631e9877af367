/* airlock env: not built yet. */
#include "al_cli.h"

#include <stdio.h>
#include <string.h>

int al_cmd_env(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "airlock env: not built yet\n");
    return 2;
}
