/* al_err: texts for the error codes of al_err.h. */
#include "al_err.h"

const char *al_strerror(int err)
{
    switch (err) {
    case AL_OK: return "success";
    case AL_ERR_NOMEM: return "out of memory";
    case AL_ERR_INVAL: return "invalid argument";
    case AL_ERR_IO: return "input/output error";
    case AL_ERR_NOTFOUND: return "not found";
    case AL_ERR_EXISTS: return "already exists";
    case AL_ERR_CRYPTO: return "cryptographic operation failed";
    case AL_ERR_PERM: return "permission denied";
    case AL_ERR_TOOBIG: return "too large";
    case AL_ERR_CONFIG: return "invalid configuration";
    case AL_ERR_DB: return "database error";
    case AL_ERR_AGAIN: return "not ready, try again";
    case AL_ERR_PROTO: return "protocol error";
    case AL_ERR_TIMEOUT: return "timed out";
    case AL_ERR_DNS: return "name resolution failed";
    case AL_ERR_EGRESS: return "destination refused by the egress guard";
    case AL_ERR_KEY: return "wrong master key or tampered data";
    case AL_ERR_PENDING: return "pending: the answer comes later";
    }
    return "unknown error";
}
