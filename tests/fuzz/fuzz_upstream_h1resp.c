/* Fuzzes upstream/al_up_h1's response parser with hostile upstream bytes: the first
 * byte picks the read sizes (as a socket would split them), whether the request was
 * HEAD and whether the peer closes at the end; the rest is the response. Checks what
 * the engine relies on: nothing consumed past what was offered, body slices inside
 * the offered bytes, a Content-Length body never longer than its length, one end. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/al_up_h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0];
    size_t step = (mode & 15) ? (mode & 15) * (mode & 16 ? 97 : 1) : size;
    int head_req = (mode & 32) != 0, eof = (mode & 64) != 0;
    data++;
    size--;

    static al_up_h1_resp p; /* reused across inputs, as the engine reuses requests */
    al_up_h1_resp_init(&p, head_req);
    char *buf = malloc(size + 1);
    size_t have = 0, fed = 0, body = 0;
    uint64_t length = 0;
    int length_known = 0, ended = 0;
    for (;;) {
        al_up_h1_event ev;
        size_t used = 0;
        al_up_h1_resp_next(&p, buf, have, &used, &ev);
        if (used > have)
            abort();
        if (ev.type == AL_UP_H1_BODY) {
            if (!ev.len || ev.data < buf || ev.data + ev.len > buf + used)
                abort();
            body += ev.len;
            if (length_known && body > length)
                abort();
        }
        memmove(buf, buf + used, have - used);
        have -= used;
        if (ev.type == AL_UP_H1_HEAD) {
            length_known = p.body == AL_UP_H1_BODY_LENGTH;
            length = p.left;
            for (size_t i = 0; i < ev.count; i++) /* slices are readable */
                if ((ev.headers[i].name_len && !ev.headers[i].name) ||
                    memchr(ev.headers[i].value, '\n', ev.headers[i].value_len))
                    abort();
        }
        if (ev.type == AL_UP_H1_DONE || ev.type == AL_UP_H1_ERROR) {
            ended = 1;
            break;
        }
        if (ev.type == AL_UP_H1_NEED_MORE) {
            if (have)
                abort(); /* NEED_MORE means everything offered was taken */
            if (fed == size)
                break;
            size_t k = step < size - fed ? step : size - fed;
            memcpy(buf, data + fed, k);
            have = k;
            fed += k;
        }
    }
    if (!ended && eof) {
        al_up_h1_event ev;
        al_up_h1_resp_eof(&p, &ev);
        if (ev.type != AL_UP_H1_DONE && ev.type != AL_UP_H1_ERROR)
            abort();
    }
    free(buf);
    return 0;
}
