/* libFuzzer harness for the target table loader: arbitrary bytes into
 * al_table_load_mem(); everything it returns is freed, so ASan reports leaks on any
 * path (success or any mix of errors). Seeds: deploy/examples and the bad tables. */
#include "targets/al_table.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    al_diags d;
    al_table *t = NULL;
    al_diags_init(&d);
    if (al_table_load_mem("fuzz.yaml", (const char *)data, size, &t, &d) == 0) {
        al_table *r = al_table_ref(t);
        al_table_unref(t);
        al_table_unref(r);
    }
    al_diags_free(&d);
    return 0;
}
