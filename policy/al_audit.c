/* al_audit: see al_audit.h. (Writer thread and request encoding to be written;
 * the synchronous append used by the CLI is here.) */
#include "al_audit.h"
#include "common/al_err.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int al_audit_append_line(const char *path, const char *json_object)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return AL_ERR_IO;
    size_t n = strlen(json_object);
    /* One write(2) of the whole line: O_APPEND keeps concurrent writers' lines whole. */
    char *line = NULL;
    int rc = AL_OK;
    char stackbuf[4096];
    if (n + 1 <= sizeof stackbuf)
        line = stackbuf;
    else
        return close(fd), AL_ERR_TOOBIG;
    memcpy(line, json_object, n);
    line[n] = '\n';
    ssize_t w = write(fd, line, n + 1);
    if (w != (ssize_t)(n + 1))
        rc = AL_ERR_IO;
    close(fd);
    return rc;
}
