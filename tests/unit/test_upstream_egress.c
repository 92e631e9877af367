/* Unit tests for upstream/al_egress: the address classes (a table of address -> class)
 * and the resolver on a real libev loop with real c-ares, talking to a tiny DNS
 * server run by this test on 127.0.0.1 (records below). That resolver never reads the
 * hosts file (AL_RESOLVER_DNS_ONLY), so a machine whose /etc/hosts maps one of the
 * names cannot change an answer; only test_localhost uses the default resolver, for
 * "localhost" from /etc/hosts. Waits are bounded polls of the loop, never fixed sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/al_err.h"
#include "upstream/al_egress.h"

/* ---- classification as data ----------------------------------------------- */

typedef struct class_case {
    const char *addr;
    enum al_addr_class want;
} class_case;

#define PUB AL_ADDR_PUBLIC
#define LO  AL_ADDR_LOOPBACK
#define PRV AL_ADDR_PRIVATE
#define LL  AL_ADDR_LINK_LOCAL
#define CG  AL_ADDR_CGNAT
#define MC  AL_ADDR_MULTICAST
#define RSV AL_ADDR_RESERVED

static const class_case g_classes[] = {
    /* IPv4 */
    {"0.0.0.0", RSV},
    {"0.1.2.3", RSV},
    {"127.0.0.1", LO},
    {"127.255.255.254", LO},
    {"10.0.0.1", PRV},
    {"10.255.255.255", PRV},
    {"11.0.0.1", PUB},
    {"9.255.255.255", PUB},
    {"172.16.0.1", PRV},
    {"172.31.255.255", PRV},
    {"172.15.255.255", PUB},
    {"172.32.0.0", PUB},
    {"192.168.1.1", PRV},
    {"192.167.255.255", PUB},
    {"192.169.0.0", PUB},
    {"169.254.169.254", LL},
    {"169.254.0.1", LL},
    {"169.253.255.255", PUB},
    {"100.64.0.1", CG},
    {"100.127.255.255", CG},
    {"100.63.255.255", PUB},
    {"100.128.0.0", PUB},
    {"224.0.0.1", MC},
    {"239.255.255.250", MC},
    {"240.0.0.1", RSV},
    {"255.255.255.255", RSV},
    {"192.0.0.8", RSV},
    {"192.0.2.1", RSV},
    {"198.51.100.7", RSV},
    {"203.0.113.9", RSV},
    {"198.18.0.1", RSV},
    {"198.19.255.255", RSV},
    {"8.8.8.8", PUB},
    {"93.184.216.34", PUB},
    {"1.1.1.1", PUB},
    {"223.255.255.255", PUB},
    /* IPv6 */
    {"::", RSV},
    {"::1", LO},
    {"::2", RSV},
    {"::ffff:127.0.0.1", LO},
    {"::ffff:10.1.2.3", PRV},
    {"::ffff:192.168.0.1", PRV},
    {"::ffff:169.254.169.254", LL},
    {"::ffff:100.64.0.1", CG},
    {"::ffff:224.0.0.1", MC},
    {"::ffff:0.0.0.0", RSV},
    {"::ffff:8.8.8.8", PUB},
    {"::127.0.0.1", LO}, /* IPv4-compatible */
    {"::10.0.0.1", PRV},
    {"::8.8.8.8", PUB},
    {"64:ff9b::7f00:1", LO}, /* NAT64 of 127.0.0.1 */
    {"64:ff9b::10.0.0.1", PRV},
    {"64:ff9b::169.254.169.254", LL},
    {"64:ff9b::8.8.8.8", PUB},
    {"64:ff9b:1::1", PRV},
    {"2002:7f00:1::1", LO}, /* 6to4 of 127.0.0.1 */
    {"2002:a00:1::1", PRV},
    {"2002:808:808::1", PUB},
    {"fe80::1", LL},
    {"febf:ffff::1", LL},
    {"fec0::1", PRV},
    {"fc00::1", PRV},
    {"fd12:3456::1", PRV},
    {"ff02::1", MC},
    {"ff05::1:3", MC},
    {"2001:db8::1", RSV},
    {"3fff::1", RSV},
    {"100::1", RSV},
    {"4000::1", RSV},
    {"2606:4700:4700::1111", PUB},
    {"2001:4860:4860::8888", PUB},
    {"2a00:1450::1", PUB},
};

static void test_classify_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_classes / sizeof g_classes[0]; i++) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, g_classes[i].addr, &in->sin_addr) == 1)
            in->sin_family = AF_INET;
        else if (inet_pton(AF_INET6, g_classes[i].addr, &in6->sin6_addr) == 1)
            in6->sin6_family = AF_INET6;
        else
            fail_msg("bad test address %s", g_classes[i].addr);
        enum al_addr_class got = al_egress_classify((struct sockaddr *)&ss);
        if (got != g_classes[i].want)
            fail_msg("%s: %s, want %s", g_classes[i].addr, al_egress_class_name(got),
                     al_egress_class_name(g_classes[i].want));
    }
}

static void test_classify_odd(void **state)
{
    (void)state;
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_int_equal(al_egress_classify((struct sockaddr *)&un), AL_ADDR_RESERVED);
    assert_int_equal(al_egress_classify(NULL), AL_ADDR_RESERVED);
    const char *seen[8] = {0};
    for (int c = AL_ADDR_PUBLIC; c <= AL_ADDR_RESERVED; c++) {
        seen[c] = al_egress_class_name((enum al_addr_class)c);
        assert_non_null(seen[c]);
        for (int k = 0; k < c; k++)
            assert_string_not_equal(seen[k], seen[c]);
    }
    assert_string_equal(al_egress_class_name(AL_ADDR_LINK_LOCAL), "link-local");
}

/* ---- a small DNS server ---------------------------------------------------- */

typedef struct dns_record {
    const char *name;
    const char *addrs[4]; /* v4 answer A queries, v6 answer AAAA */
    uint32_t ttl;
    int rcode;  /* 0 or 3 (NXDOMAIN) */
    int silent; /* never answer */
} dns_record;

static const dns_record g_records[] = {
    {"public.test", {"93.184.216.34"}, 300, 0, 0},
    {"public2.test", {"93.184.216.36"}, 300, 0, 0},
    {"dual.test", {"2606:2800:220:1::1", "93.184.216.34"}, 300, 0, 0},
    {"v6only.test", {"2606:2800:220:1::1"}, 300, 0, 0},
    {"rebind.test", {"93.184.216.34", "127.0.0.1"}, 300, 0, 0},
    {"mapped.test", {"93.184.216.34", "::ffff:10.0.0.1"}, 300, 0, 0},
    {"nat64.test", {"64:ff9b::a9fe:a9fe"}, 300, 0, 0},
    {"meta.test", {"169.254.169.254"}, 300, 0, 0},
    {"cgnat.test", {"100.64.1.1"}, 300, 0, 0},
    {"short.test", {"93.184.216.35"}, 1, 0, 0},
    {"nx.test", {0}, 0, 3, 0},
    {"silent.test", {0}, 0, 0, 1},
};

typedef struct dns_server {
    ev_io io;
    int fd;
    uint16_t port;
    int queries; /* every query received */
} dns_server;

static const dns_record *find_record(const char *name)
{
    for (size_t i = 0; i < sizeof g_records / sizeof g_records[0]; i++)
        if (strcasecmp(g_records[i].name, name) == 0)
            return &g_records[i];
    return NULL;
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void on_dns(struct ev_loop *loop, ev_io *w, int revents)
{
    dns_server *s = (dns_server *)w;
    unsigned char q[512], a[1024];
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(s->fd, q, sizeof q, 0, (struct sockaddr *)&from, &flen);
    if (n < 12)
        return;
    s->queries++;
    char name[256];
    size_t nl = 0, off = 12;
    while (off < (size_t)n && q[off]) {
        size_t l = q[off++];
        if (off + l > (size_t)n || nl + l + 1 >= sizeof name)
            return;
        if (nl)
            name[nl++] = '.';
        memcpy(name + nl, q + off, l);
        nl += l;
        off += l;
    }
    name[nl] = '\0';
    off++; /* root label */
    if (off + 4 > (size_t)n)
        return;
    unsigned qtype = (unsigned)q[off] << 8 | q[off + 1];
    off += 4;
    const dns_record *rec = find_record(name);
    if (rec && rec->silent)
        return;
    memcpy(a, q, off);                            /* header + question */
    a[2] = (unsigned char)(0x80 | (q[2] & 0x79)); /* QR, opcode, RD */
    a[3] = (unsigned char)(0x80 | (rec ? rec->rcode : 3));
    put16(a + 6, 0);
    put16(a + 8, 0);
    put16(a + 10, 0);
    size_t len = off;
    unsigned count = 0;
    for (int i = 0; rec && i < 4 && rec->addrs[i]; i++) {
        unsigned char raw[16];
        int is4 = inet_pton(AF_INET, rec->addrs[i], raw) == 1;
        if (!is4 && inet_pton(AF_INET6, rec->addrs[i], raw) != 1)
            continue;
        if ((is4 && qtype != 1) || (!is4 && qtype != 28))
            continue;
        size_t rdlen = is4 ? 4 : 16;
        put16(a + len, 0xC00C); /* the question's name */
        put16(a + len + 2, qtype);
        put16(a + len + 4, 1);
        put16(a + len + 6, rec->ttl >> 16);
        put16(a + len + 8, rec->ttl & 0xffff);
        put16(a + len + 10, (unsigned)rdlen);
        memcpy(a + len + 12, raw, rdlen);
        len += 12 + rdlen;
        count++;
    }
    put16(a + 6, count);
    sendto(s->fd, a, len, 0, (struct sockaddr *)&from, flen);
}

/* ---- resolver fixture ------------------------------------------------------ */

typedef struct fixture {
    struct ev_loop *loop;
    dns_server dns;
    ev_timer tick; /* keeps ev_run(ONCE) from blocking when nothing else is active */
    al_resolver *r;
} fixture;

typedef struct waiter {
    int called;
    al_resolve_result res;
} waiter;

static void on_result(void *arg, const al_resolve_result *res)
{
    waiter *w = arg;
    w->called++;
    w->res = *res;
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) {}

static int setup_with(void **state, unsigned flags)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    f->dns.fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(f->dns.fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->dns.fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t sl = sizeof sin;
    assert_int_equal(getsockname(f->dns.fd, (struct sockaddr *)&sin, &sl), 0);
    f->dns.port = ntohs(sin.sin_port);
    ev_io_init(&f->dns.io, on_dns, f->dns.fd, EV_READ);
    ev_io_start(f->loop, &f->dns.io);
    ev_timer_init(&f->tick, on_tick, 0.05, 0.05);
    ev_timer_start(f->loop, &f->tick);
    assert_int_equal(al_resolver_new_ex(f->loop, flags, &f->r), AL_OK);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", f->dns.port);
    assert_int_equal(al_resolver_set_servers(f->r, servers), AL_OK);
    *state = f;
    return 0;
}

/* Every answer from the test's DNS server. */
static int setup(void **state)
{
    return setup_with(state, AL_RESOLVER_DNS_ONLY);
}

/* What airlock runs with: /etc/hosts first, then the DNS server. */
static int setup_hosts(void **state)
{
    return setup_with(state, 0);
}

static int teardown(void **state)
{
    fixture *f = *state;
    al_resolver_free(f->r);
    ev_io_stop(f->loop, &f->dns.io);
    ev_timer_stop(f->loop, &f->tick);
    close(f->dns.fd);
    ev_loop_destroy(f->loop);
    free(f);
    return 0;
}

/* Runs the loop until *flag is set or `secs` pass. */
static void run_until(fixture *f, const int *flag, double secs)
{
    ev_tstamp end = ev_time() + secs;
    while (!*flag && ev_time() < end)
        ev_run(f->loop, EVRUN_ONCE);
}

/* Resolves and waits; returns whether the callback ran before resolve returned. */
static int resolve_wait(fixture *f, const char *host, uint16_t port, int allow_private, waiter *w)
{
    memset(w, 0, sizeof *w);
    void *h = al_resolver_resolve(f->r, host, port, allow_private, on_result, w);
    int sync = w->called == 1;
    if (sync)
        assert_null(h);
    else
        assert_non_null(h);
    run_until(f, &w->called, 5.0);
    assert_int_equal(w->called, 1);
    return sync;
}

typedef struct resolve_case {
    const char *host;
    int allow_private;
    int err;
    enum al_addr_class refused;
    const char *addr; /* expected addr_text: the address, or the refused one */
} resolve_case;

static const resolve_case g_literals[] = {
    {"93.184.216.34", 0, AL_OK, 0, "93.184.216.34"},
    {"[2606:2800:220:1::1]", 0, AL_OK, 0, "2606:2800:220:1::1"},
    {"2606:2800:220:1::1", 0, AL_OK, 0, "2606:2800:220:1::1"},
    {"127.0.0.1", 0, AL_ERR_EGRESS, LO, "127.0.0.1"},
    {"127.0.0.1", 1, AL_OK, 0, "127.0.0.1"},
    {"127.1", 0, AL_ERR_EGRESS, LO, NULL},             /* short form */
    {"2130706433", 0, AL_ERR_EGRESS, LO, "127.0.0.1"}, /* one number */
    {"0x7f.0.0.1", 0, AL_ERR_EGRESS, LO, NULL},        /* hex */
    {"0177.0.0.1", 0, AL_ERR_EGRESS, LO, NULL},        /* octal */
    /* a leading zero is octal (inet_aton's reading, not the decimal fast path's): read as
     * decimal, 010.0.0.1 would be 10.0.0.1 (private) instead of 8.0.0.1 */
    {"010.0.0.1", 0, AL_OK, 0, "8.0.0.1"},
    {"10.0.0.010", 1, AL_OK, 0, "10.0.0.8"},
    {"127.000.000.001", 0, AL_ERR_EGRESS, LO, NULL},
    {"192.168.1.1", 0, AL_ERR_EGRESS, PRV, NULL},
    {"8.8.8.8", 0, AL_OK, 0, "8.8.8.8"},
    {"0.0.0.0", 0, AL_ERR_EGRESS, RSV, NULL},
    {"[::1]", 0, AL_ERR_EGRESS, LO, "::1"},
    {"::1", 1, AL_OK, 0, "::1"},
    {"::ffff:169.254.169.254", 0, AL_ERR_EGRESS, LL, NULL},
    {"169.254.169.254", 0, AL_ERR_EGRESS, LL, NULL},
    {"10.1.2.3", 0, AL_ERR_EGRESS, PRV, NULL},
    {"100.64.0.1", 0, AL_ERR_EGRESS, CG, NULL},
    {"[fd00::1]", 0, AL_ERR_EGRESS, PRV, NULL},
    {"fe80::1%eth0", 1, AL_ERR_DNS, 0, NULL},
    {"[::1", 0, AL_ERR_DNS, 0, NULL},
    {"", 0, AL_ERR_DNS, 0, NULL},
    {"bad host", 0, AL_ERR_DNS, 0, NULL},
    {"nothing.invalid", 0, AL_ERR_DNS, 0, NULL},
    {"Nothing.INVALID.", 1, AL_ERR_DNS, 0, NULL},
    {"invalid", 1, AL_ERR_DNS, 0, NULL},
    {"api.localhost", 0, AL_ERR_EGRESS, LO, "127.0.0.1"}, /* RFC 6761, no DNS asked */
    {"A.B.LocalHost.", 1, AL_OK, 0, "127.0.0.1"},
};

static void check_result(const resolve_case *c, const waiter *w, uint16_t port)
{
    if (w->res.err != c->err)
        fail_msg("%s: err %d, want %d", c->host, w->res.err, c->err);
    if (c->err == AL_ERR_EGRESS && w->res.refused_class != c->refused)
        fail_msg("%s: refused as %s, want %s", c->host, al_egress_class_name(w->res.refused_class),
                 al_egress_class_name(c->refused));
    if (c->err == AL_OK) {
        assert_string_equal(w->res.addr_text, c->addr);
        const struct sockaddr *sa = (const struct sockaddr *)&w->res.addr;
        if (sa->sa_family == AF_INET) {
            assert_int_equal(w->res.addr_len, sizeof(struct sockaddr_in));
            assert_int_equal(ntohs(((const struct sockaddr_in *)sa)->sin_port), port);
        } else {
            assert_int_equal(sa->sa_family, AF_INET6);
            assert_int_equal(w->res.addr_len, sizeof(struct sockaddr_in6));
            assert_int_equal(ntohs(((const struct sockaddr_in6 *)sa)->sin6_port), port);
        }
        /* The address handed back is one that passes the check. */
        if (!c->allow_private)
            assert_int_equal(al_egress_classify(sa), AL_ADDR_PUBLIC);
    } else {
        assert_int_equal(w->res.addr_len, 0);
        if (c->addr)
            assert_string_equal(w->res.addr_text, c->addr);
    }
}

static void test_literals(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < sizeof g_literals / sizeof g_literals[0]; i++) {
        waiter w;
        ev_tstamp t0 = ev_time();
        /* Literals and .invalid never wait for anyone: the callback runs at once. */
        if (!resolve_wait(f, g_literals[i].host, 8443, g_literals[i].allow_private, &w))
            fail_msg("%s: not answered synchronously", g_literals[i].host);
        assert_true(ev_time() - t0 < 0.5);
        check_result(&g_literals[i], &w, 8443);
    }
    assert_int_equal(f->dns.queries, 0);
    assert_int_equal(al_resolver_pending(f->r), 0);
}

static void test_localhost(void **state)
{
    fixture *f = *state;
    waiter w;
    resolve_wait(f, "localhost", 80, 0, &w);
    assert_int_equal(w.res.err, AL_ERR_EGRESS);
    assert_int_equal(w.res.refused_class, AL_ADDR_LOOPBACK);
    resolve_wait(f, "LocalHost", 80, 1, &w);
    assert_int_equal(w.res.err, AL_OK);
    assert_true(strcmp(w.res.addr_text, "127.0.0.1") == 0 || strcmp(w.res.addr_text, "::1") == 0);
    /* From /etc/hosts, not from DNS. */
    assert_int_equal(f->dns.queries, 0);
}

static void test_dns_only_ignores_hosts_file(void **state)
{
    fixture *f = *state;
    /* Every name this machine's /etc/hosts maps (Debian's always holds its hostname) is
     * asked of the DNS server, not answered from the file. ("localhost" is left out:
     * c-ares answers it itself, RFC 6761.) */
    FILE *hosts = fopen("/etc/hosts", "r");
    char line[512];
    int asked = 0;
    while (hosts && fgets(line, sizeof line, hosts) && asked < 8) {
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok || tok[0] == '#')
            continue;
        while ((tok = strtok_r(NULL, " \t\r\n", &save)) && tok[0] != '#') {
            size_t tl = strlen(tok);
            if (strcasecmp(tok, "localhost") == 0 ||
                (tl > 10 && strcasecmp(tok + tl - 10, ".localhost") == 0))
                continue;
            waiter w;
            int before = f->dns.queries;
            if (resolve_wait(f, tok, 443, 1, &w))
                fail_msg("%s: answered from /etc/hosts", tok);
            assert_true(f->dns.queries > before);
            asked++;
        }
    }
    if (hosts)
        fclose(hosts);
    print_message("%d name(s) of /etc/hosts asked of DNS\n", asked);
}

static const resolve_case g_names[] = {
    {"public.test", 0, AL_OK, 0, "93.184.216.34"},
    {"dual.test", 0, AL_OK, 0, "93.184.216.34"}, /* IPv4 preferred */
    {"v6only.test", 0, AL_OK, 0, "2606:2800:220:1::1"},
    {"rebind.test", 0, AL_ERR_EGRESS, LO, "127.0.0.1"}, /* one bad answer is enough */
    {"mapped.test", 0, AL_ERR_EGRESS, PRV, "::ffff:10.0.0.1"},
    {"nat64.test", 0, AL_ERR_EGRESS, LL, NULL},
    {"meta.test", 0, AL_ERR_EGRESS, LL, "169.254.169.254"},
    {"cgnat.test", 0, AL_ERR_EGRESS, CG, NULL},
    {"nx.test", 0, AL_ERR_DNS, 0, NULL},
    {"unknown-name.test", 0, AL_ERR_DNS, 0, NULL},
    {"xlocalhost", 0, AL_ERR_DNS, 0, NULL}, /* not under .localhost: asked, unknown */
};

static void test_dns_answers(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++) {
        waiter w;
        ev_tstamp t0 = ev_time();
        if (resolve_wait(f, g_names[i].host, 443, 0, &w))
            fail_msg("%s: answered before asking DNS", g_names[i].host);
        assert_true(ev_time() - t0 < 2.0);
        check_result(&g_names[i], &w, 443);
    }
    assert_true(f->dns.queries >= (int)(sizeof g_names / sizeof g_names[0]));
}

static void test_allow_private_names(void **state)
{
    fixture *f = *state;
    waiter w;
    resolve_wait(f, "rebind.test", 443, 1, &w);
    assert_int_equal(w.res.err, AL_OK);
    assert_string_equal(w.res.addr_text, "93.184.216.34"); /* the first IPv4 */
    resolve_wait(f, "meta.test", 443, 1, &w);
    assert_int_equal(w.res.err, AL_OK);
    assert_string_equal(w.res.addr_text, "169.254.169.254");
    /* The same cache entry still refuses a target that does not allow private. */
    resolve_wait(f, "meta.test", 443, 0, &w);
    assert_int_equal(w.res.err, AL_ERR_EGRESS);
}

static void test_cache(void **state)
{
    fixture *f = *state;
    waiter w;
    assert_false(resolve_wait(f, "public.test", 443, 0, &w));
    assert_int_equal(w.res.err, AL_OK);
    int asked = f->dns.queries;
    assert_true(asked >= 1);
    /* Second lookup: served synchronously from the cache, any case, any port. */
    assert_true(resolve_wait(f, "public.test", 443, 0, &w));
    assert_true(resolve_wait(f, "PUBLIC.Test", 8080, 0, &w));
    assert_int_equal(w.res.err, AL_OK);
    assert_string_equal(w.res.addr_text, "93.184.216.34");
    assert_int_equal(ntohs(((struct sockaddr_in *)&w.res.addr)->sin_port), 8080);
    assert_int_equal(f->dns.queries, asked);
    /* Refusals are cached too (the answer is, the decision is per lookup). */
    assert_false(resolve_wait(f, "rebind.test", 443, 0, &w));
    asked = f->dns.queries;
    assert_true(resolve_wait(f, "rebind.test", 443, 0, &w));
    assert_int_equal(w.res.err, AL_ERR_EGRESS);
    assert_string_equal(w.res.addr_text, "127.0.0.1");
    assert_int_equal(f->dns.queries, asked);

    /* A 1 s TTL expires: the next lookup asks again. */
    ev_now_update(f->loop);
    assert_false(resolve_wait(f, "short.test", 443, 0, &w));
    ev_tstamp answered = ev_now(f->loop);
    asked = f->dns.queries;
    assert_true(resolve_wait(f, "short.test", 443, 0, &w));
    int expired = 0;
    ev_tstamp end = ev_time() + 3.0;
    while (!expired && ev_time() < end) {
        ev_run(f->loop, EVRUN_ONCE);
        expired = ev_now(f->loop) > answered + 1.05;
    }
    assert_true(expired);
    assert_false(resolve_wait(f, "short.test", 443, 0, &w));
    assert_int_equal(w.res.err, AL_OK);
    assert_true(f->dns.queries > asked);
}

static void test_cancel(void **state)
{
    fixture *f = *state;
    waiter w = {0};
    void *h = al_resolver_resolve(f->r, "public2.test", 443, 0, on_result, &w);
    assert_non_null(h);
    assert_int_equal(al_resolver_pending(f->r), 1);
    al_resolver_cancel(f->r, h);
    /* Wait for c-ares to finish with it (the server does answer). */
    ev_tstamp end = ev_time() + 5.0;
    while (al_resolver_pending(f->r) && ev_time() < end)
        ev_run(f->loop, EVRUN_ONCE);
    assert_int_equal(al_resolver_pending(f->r), 0);
    assert_true(f->dns.queries >= 1);
    assert_int_equal(w.called, 0);
    /* The answer still filled the cache. */
    assert_true(resolve_wait(f, "public2.test", 443, 0, &w));
    assert_int_equal(w.res.err, AL_OK);
    al_resolver_cancel(f->r, NULL); /* harmless */
}

static void test_free_with_pending(void **state)
{
    fixture *f = *state;
    waiter w = {0}, w2 = {0};
    assert_non_null(al_resolver_resolve(f->r, "silent.test", 443, 0, on_result, &w));
    assert_non_null(al_resolver_resolve(f->r, "public.test", 443, 0, on_result, &w2));
    assert_int_equal(al_resolver_pending(f->r), 2);
    /* Let the queries go out, then drop the resolver: no callback, no leak. */
    for (int i = 0; i < 3; i++)
        ev_run(f->loop, EVRUN_NOWAIT);
    al_resolver_free(f->r);
    f->r = NULL;
    assert_int_equal(w.called, 0);
    assert_int_equal(w2.called == 0 || w2.called == 1, 1);
    ev_run(f->loop, EVRUN_NOWAIT); /* no watcher of the resolver is left behind */
}

static void test_bad_servers(void **state)
{
    fixture *f = *state;
    assert_int_equal(al_resolver_set_servers(f->r, "not an address"), AL_ERR_INVAL);
    assert_int_equal(al_resolver_set_servers(f->r, NULL), AL_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_table),
        cmocka_unit_test(test_classify_odd),
        cmocka_unit_test_setup_teardown(test_literals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_localhost, setup_hosts, teardown),
        cmocka_unit_test_setup_teardown(test_dns_only_ignores_hosts_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dns_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allow_private_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_servers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
