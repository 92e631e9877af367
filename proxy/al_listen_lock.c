/* al_listen_lock: one airlock per listen address (see al_listen_lock.h). */
#include "al_listen_lock.h"
#include "al_worker.h"
#include "common/al_err.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

/* "pid 1234 (airlock serve -c t.yaml)" when the other process is visible, else "". */
static void describe_pid(pid_t pid, char *out, size_t cap)
{
    char path[64], cmd[200];
    snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
    ssize_t n = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, cmd, sizeof cmd - 1);
        close(fd);
    }
    if (n <= 0) {
        snprintf(out, cap, "pid %ld", (long)pid);
        return;
    }
    while (n > 0 && cmd[n - 1] == '\0')
        n--;
    for (ssize_t i = 0; i < n; i++) /* argv separators, and nothing unprintable */
        if ((unsigned char)cmd[i] < 0x20 || (unsigned char)cmd[i] == 0x7f)
            cmd[i] = ' ';
    cmd[n] = '\0';
    snprintf(out, cap, "pid %ld: %s", (long)pid, cmd);
}

/* The pid listening on the lock socket `sun`, or 0. */
static pid_t holder_pid(const struct sockaddr_un *sun, socklen_t len)
{
    pid_t pid = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct ucred cr;
    socklen_t crl = sizeof cr;
    if (connect(fd, (const struct sockaddr *)sun, len) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) == 0)
        pid = cr.pid;
    close(fd);
    return pid;
}

int al_listen_claim(const char *hostport, int *lock_fd, char *why, size_t why_cap)
{
    struct addrinfo *ai = NULL;
    int lock = -1, probe = -1, rc = AL_ERR_IO;
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    why[0] = '\0';
    if (al_listen_resolve(hostport, &ai) != AL_OK ||
        getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(why, why_cap, "%s is not a numeric host:port", hostport);
        rc = AL_ERR_CONFIG;
        goto out;
    }

    /* 1. The lock, named after the numeric address ("127.0.0.1:8080", "::1:8080"). */
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int nl =
        snprintf(sun.sun_path + 1, sizeof sun.sun_path - 1, "airlock/listen/%s:%s", host, serv);
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)nl);
    lock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lock < 0) {
        snprintf(why, why_cap, "cannot create the lock for %s: %s", hostport, strerror(errno));
        goto out;
    }
    if (bind(lock, (struct sockaddr *)&sun, sl) != 0) {
        if (errno != EADDRINUSE) {
            snprintf(why, why_cap, "cannot lock %s: %s", hostport, strerror(errno));
            goto out;
        }
        pid_t pid = holder_pid(&sun, sl);
        char who[256] = "another process";
        if (pid > 0)
            describe_pid(pid, who, sizeof who);
        snprintf(why, why_cap,
                 "%s is already served by another airlock (%s); stop it first, or give this "
                 "one another listen address",
                 hostport, who);
        rc = AL_ERR_EXISTS;
        goto out;
    }
    if (listen(lock, 8) != 0) { /* so a second airlock can learn our pid */
        snprintf(why, why_cap, "cannot lock %s: %s", hostport, strerror(errno));
        goto out;
    }

    /* 2. The probe: without SO_REUSEPORT, the bind fails while anyone listens there. */
    probe = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (probe < 0) {
        snprintf(why, why_cap, "cannot create a socket for %s: %s", hostport, strerror(errno));
        goto out;
    }
    setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(probe, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno == EADDRINUSE) {
            snprintf(why, why_cap,
                     "%s is already in use by another process (see: ss -ltnp 'sport = :%s'); "
                     "stop it first, or give airlock another listen address",
                     hostport, serv);
            rc = AL_ERR_EXISTS;
        } else {
            snprintf(why, why_cap, "cannot bind %s: %s", hostport, strerror(errno));
        }
        goto out;
    }
    *lock_fd = lock;
    lock = -1;
    rc = AL_OK;
out:
    if (probe >= 0)
        close(probe);
    if (lock >= 0)
        close(lock);
    if (ai)
        freeaddrinfo(ai);
    return rc;
}
