/* Unit tests for proxy/al_spool: the replayable request-body spool. Memory only,
 * the spill to an unnamed 0600 file (and its mkstemp fallback), the exact bounds,
 * SHA-256 against known vectors, replay by several readers (also behind the
 * writer), refusal past max_bytes, a failing disk (RLIMIT_FSIZE), and that the file
 * holds no plaintext and nothing is left in its directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_err.h"
#include "proxy/al_spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fixture {
    char dir[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/al-spool-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

/* entries in dir other than . and .. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int n = dir_entries(f->dir);
    rmdir(f->dir);
    free(f);
    return n == 0 ? 0 : -1; /* a file left behind fails the test */
}

static al_spool *spool_new(const fixture *f, size_t memory_max, uint64_t max_bytes)
{
    al_spool_cfg cfg = {
        .memory_max = memory_max, .max_bytes = max_bytes, .dir = f->dir, .sha256 = 1};
    al_spool *s = NULL;
    assert_int_equal(al_spool_new(&cfg, &s), AL_OK);
    assert_non_null(s);
    return s;
}

/* n bytes of a pattern that repeats only every 251 bytes */
static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)((i * 7 + seed) % 251);
    return p;
}

/* Writes p in pieces of the given sizes (cycling). */
static void write_pieces(al_spool *s, const unsigned char *p, size_t n, const size_t *sizes,
                         size_t nsizes)
{
    size_t off = 0, i = 0;
    while (off < n) {
        size_t k = sizes[i++ % nsizes];
        if (k > n - off)
            k = n - off;
        assert_int_equal(al_spool_write(s, p + off, k), AL_OK);
        off += k;
    }
}

/* Reads the whole spool with reads of at most cap bytes; returns the bytes. */
static unsigned char *read_all(al_spool *s, size_t cap, size_t *len)
{
    al_spool_reader rd;
    al_spool_reader_init(&rd, s);
    size_t total = (size_t)al_spool_size(s);
    unsigned char *out = malloc(total + 1), buf[40000];
    assert_true(cap <= sizeof buf);
    size_t off = 0, got;
    for (;;) {
        assert_int_equal(al_spool_read(&rd, buf, cap, &got), AL_OK);
        if (got == 0)
            break;
        assert_true(got <= cap);
        assert_true(off + got <= total);
        memcpy(out + off, buf, got);
        off += got;
    }
    *len = off;
    return out;
}

static void assert_sha(al_spool *s, const unsigned char *p, size_t n)
{
    unsigned char want[32], got[32];
    SHA256(p, n, want);
    assert_int_equal(al_spool_sha256(s, got), AL_OK);
    assert_memory_equal(got, want, 32);
}

static void test_spool_memory_only(void **state)
{
    fixture *f = *state;
    al_spool *s = spool_new(f, 4096, 1 << 20);
    unsigned char *p = pattern(4000, 1);
    const size_t sizes[] = {1, 17, 500, 3};
    write_pieces(s, p, 4000, sizes, 4);
    assert_int_equal(al_spool_fd(s), -1);
    assert_int_equal(al_spool_size(s), 4000);
    assert_int_equal(al_spool_finish(s), AL_OK);
    size_t n;
    unsigned char *back = read_all(s, 333, &n);
    assert_int_equal(n, 4000);
    assert_memory_equal(back, p, 4000);
    assert_sha(s, p, 4000);
    assert_int_equal(dir_entries(f->dir), 0);
    free(back);
    al_spool_free(s);

    /* kept only for a retry: no hash asked for, none computed, the bytes the same */
    al_spool_cfg cfg = {.memory_max = 100, .max_bytes = 1 << 20, .dir = f->dir};
    assert_int_equal(al_spool_new(&cfg, &s), AL_OK);
    write_pieces(s, p, 4000, sizes, 4);
    assert_int_equal(al_spool_finish(s), AL_OK);
    unsigned char d[32];
    assert_int_equal(al_spool_sha256(s, d), AL_ERR_INVAL);
    back = read_all(s, 999, &n);
    assert_int_equal(n, 4000);
    assert_memory_equal(back, p, 4000);
    free(back);
    al_spool_free(s);
    free(p);
}

static void test_spool_spills_to_file_and_reads_back_at_any_boundary(void **state)
{
    fixture *f = *state;
    const size_t total = 300000;
    unsigned char *p = pattern(total, 5);
    /* odd sizes: file offsets that fall inside AES blocks, pieces larger than a chunk */
    const size_t sizes[] = {1, 15, 17, 4099, 40000, 3, 16384, 16385};
    const size_t caps[] = {1, 7, 16, 4095, 16384, 40000};
    for (size_t memory_max = 0; memory_max <= 1000; memory_max += 999) {
        al_spool *s = spool_new(f, memory_max, 1 << 20);
        write_pieces(s, p, total, sizes, sizeof sizes / sizeof *sizes);
        assert_true(al_spool_fd(s) >= 0);
        assert_int_equal(al_spool_size(s), total);
        assert_int_equal(al_spool_finish(s), AL_OK);
        for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
            if (caps[c] == 1 && memory_max == 0)
                continue; /* 300k one-byte reads: slow under ASan, nothing new */
            size_t n;
            unsigned char *back = read_all(s, caps[c], &n);
            assert_int_equal(n, total);
            assert_memory_equal(back, p, total);
            free(back);
        }
        assert_sha(s, p, total);
        al_spool_free(s);
    }
    free(p);
}

static void test_spool_exact_bounds(void **state)
{
    fixture *f = *state;
    unsigned char *p = pattern(2001, 9);
    al_spool *s = spool_new(f, 1000, 2000);
    /* exactly memory_max bytes stay in memory, the next byte makes the file */
    assert_int_equal(al_spool_write(s, p, 1000), AL_OK);
    assert_int_equal(al_spool_fd(s), -1);
    assert_int_equal(al_spool_write(s, p + 1000, 1), AL_OK);
    assert_true(al_spool_fd(s) >= 0);
    /* exactly max_bytes is accepted; one byte more is refused and changes nothing */
    assert_int_equal(al_spool_write(s, p + 1001, 999), AL_OK);
    assert_int_equal(al_spool_size(s), 2000);
    assert_int_equal(al_spool_write(s, p + 2000, 1), AL_ERR_TOOBIG);
    assert_int_equal(al_spool_size(s), 2000);
    assert_int_equal(al_spool_write(s, p, 0), AL_OK);
    assert_int_equal(al_spool_finish(s), AL_OK);
    size_t n;
    unsigned char *back = read_all(s, 4096, &n);
    assert_int_equal(n, 2000);
    assert_memory_equal(back, p, 2000);
    assert_sha(s, p, 2000); /* the refused byte is not in the hash */
    free(back);
    al_spool_free(s);

    /* memory_max larger than max_bytes: everything in memory, bounded by max_bytes */
    s = spool_new(f, 1 << 20, 10);
    assert_int_equal(al_spool_write(s, p, 10), AL_OK);
    assert_int_equal(al_spool_write(s, p, 1), AL_ERR_TOOBIG);
    assert_int_equal(al_spool_fd(s), -1);
    al_spool_free(s);
    free(p);
}

static void test_spool_sha256_known_vectors(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *in;
        const char *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    char hex[65];
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        /* whole, and one byte at a time through the file (memory_max 1) */
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            al_spool *s = spool_new(f, bytewise ? 1 : 64, 1000);
            size_t len = strlen(v[i].in);
            if (bytewise)
                for (size_t k = 0; k < len; k++)
                    assert_int_equal(al_spool_write(s, v[i].in + k, 1), AL_OK);
            else
                assert_int_equal(al_spool_write(s, v[i].in, len), AL_OK);
            assert_int_equal(al_spool_sha256_hex(s, hex), AL_ERR_AGAIN); /* not ended yet */
            assert_int_equal(al_spool_finish(s), AL_OK);
            assert_int_equal(al_spool_sha256_hex(s, hex), AL_OK);
            assert_string_equal(hex, v[i].hex);
            al_spool_free(s);
        }
    }
    /* one million 'a' (FIPS 180-2 vector), across memory and file */
    al_spool *s = spool_new(f, 100000, 1000000);
    unsigned char a[7001];
    memset(a, 'a', sizeof a);
    size_t left = 1000000;
    while (left) {
        size_t k = left < sizeof a ? left : sizeof a;
        assert_int_equal(al_spool_write(s, a, k), AL_OK);
        left -= k;
    }
    assert_int_equal(al_spool_finish(s), AL_OK);
    assert_int_equal(al_spool_sha256_hex(s, hex), AL_OK);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    al_spool_free(s);
}

static void test_spool_replays_to_several_readers(void **state)
{
    fixture *f = *state;
    const size_t total = 100000;
    unsigned char *p = pattern(total, 3);
    al_spool *s = spool_new(f, 10000, total);
    al_spool_reader a, b;
    al_spool_reader_init(&a, s);
    al_spool_reader_init(&b, s);
    unsigned char buf[5000];
    size_t got, a_off = 0;
    /* a reader that has everything written so far waits (AGAIN), then goes on */
    assert_int_equal(al_spool_read(&a, buf, sizeof buf, &got), AL_ERR_AGAIN);
    assert_int_equal(got, 0);
    for (size_t off = 0; off < total; off += 2500) {
        assert_int_equal(al_spool_write(s, p + off, 2500), AL_OK);
        int rc;
        while ((rc = al_spool_read(&a, buf, 1700, &got)) == AL_OK && got > 0) {
            assert_memory_equal(buf, p + a_off, got);
            a_off += got;
        }
        assert_int_equal(rc, AL_ERR_AGAIN);
        assert_int_equal(a_off, off + 2500);
    }
    assert_int_equal(al_spool_finish(s), AL_OK);
    assert_int_equal(al_spool_read(&a, buf, sizeof buf, &got), AL_OK);
    assert_int_equal(got, 0); /* the end */
    /* b starts only now and reads everything; a second pass of a fresh reader too */
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        while (al_spool_read(&b, buf, sizeof buf, &got) == AL_OK && got > 0) {
            assert_memory_equal(buf, p + off, got);
            off += got;
        }
        assert_int_equal(off, total);
        al_spool_reader_init(&b, s);
    }
    /* a zero-sized read moves nothing */
    assert_int_equal(al_spool_read(&b, buf, 0, &got), AL_OK);
    assert_int_equal(got, 0);
    assert_int_equal(b.off, 0);
    al_spool_free(s);
    free(p);
}

static void test_spool_refuses_a_huge_body(void **state)
{
    fixture *f = *state;
    al_spool_cfg bad = {.memory_max = 10, .max_bytes = 0, .dir = f->dir};
    al_spool *s = (al_spool *)1;
    assert_int_equal(al_spool_new(&bad, &s), AL_ERR_INVAL); /* a spool is always bounded */
    assert_null(s);

    s = spool_new(f, 64 * 1024, 1 << 20);
    unsigned char *p = pattern(2 << 20, 0);
    assert_int_equal(al_spool_write(s, p, 2 << 20), AL_ERR_TOOBIG);
    assert_int_equal(al_spool_size(s), 0);
    assert_int_equal(al_spool_fd(s), -1); /* refused before anything went to disk */
    assert_int_equal(al_spool_write(s, p, SIZE_MAX), AL_ERR_TOOBIG); /* no wrap-around */
    /* in pieces: accepted up to the bound, then refused */
    size_t off = 0;
    int rc;
    while ((rc = al_spool_write(s, p + off, 30000)) == AL_OK)
        off += 30000;
    assert_int_equal(rc, AL_ERR_TOOBIG);
    assert_int_equal(off, (1 << 20) / 30000 * 30000);
    assert_int_equal(al_spool_size(s), off);
    /* the spool is still whole and usable: fill to the bound and end */
    assert_int_equal(al_spool_write(s, p + off, (1 << 20) - off), AL_OK);
    assert_int_equal(al_spool_finish(s), AL_OK);
    assert_int_equal(al_spool_write(s, p, 1), AL_ERR_INVAL); /* after the end */
    assert_sha(s, p, 1 << 20);
    al_spool_free(s);
    free(p);
}

static void assert_unnamed_0600(int fd, const char *dir)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_nlink, 0); /* no name anywhere */
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(dir_entries(dir), 0);
    assert_int_equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
}

static void test_spool_file_is_unnamed_0600_and_holds_no_plaintext(void **state)
{
    fixture *f = *state;
    mode_t old = umask(0); /* the mode must not depend on the umask */
    al_spool *s = spool_new(f, 16, 1 << 20);
    const char secret[] = "Authorization: Bearer sk-THE-AGENTS-BODY-SECRET-0123456789";
    for (int i = 0; i < 100; i++)
        assert_int_equal(al_spool_write(s, secret, sizeof secret - 1), AL_OK);
    int fd = al_spool_fd(s);
    assert_true(fd >= 0);
    assert_unnamed_0600(fd, f->dir);
    /* what is on the disk: as long as what is in the file, and none of it readable */
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, al_spool_size(s) - 16);
    char *raw = calloc(1, (size_t)st.st_size + 1);
    assert_int_equal(pread(fd, raw, (size_t)st.st_size, 0), st.st_size);
    assert_null(memmem(raw, (size_t)st.st_size, "THE-AGENTS", 10));
    assert_null(memmem(raw, (size_t)st.st_size, "Bearer", 6));
    free(raw);
    al_spool_free(s);
    /* the descriptor is closed: nothing of the file remains reachable */
    errno = 0;
    assert_int_equal(fcntl(fd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(dir_entries(f->dir), 0);

    /* the mkstemp fallback (filesystems without O_TMPFILE): unlinked at once, 0600 */
    int fd2 = -1;
    assert_int_equal(al_spool_open_tmp(f->dir, 0, &fd2), AL_OK);
    assert_unnamed_0600(fd2, f->dir);
    close(fd2);
    umask(old);
}

static void test_spool_disk_errors_are_clean(void **state)
{
    fixture *f = *state;
    unsigned char *p = pattern(256 * 1024, 2);
    /* a directory that does not exist: the spill fails with AL_ERR_IO, for good */
    al_spool_cfg cfg = {
        .memory_max = 1000, .max_bytes = 1 << 20, .dir = "/nonexistent/al-spool", .sha256 = 1};
    al_spool *s = NULL;
    assert_int_equal(al_spool_new(&cfg, &s), AL_OK);
    assert_int_equal(al_spool_write(s, p, 1000), AL_OK); /* memory only so far */
    assert_int_equal(al_spool_write(s, p, 1), AL_ERR_IO);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(al_spool_write(s, p, 1), AL_ERR_IO);
    assert_int_equal(al_spool_finish(s), AL_ERR_IO);
    assert_int_equal(al_spool_sha256_hex(s, (char[65]){0}), AL_ERR_AGAIN);
    al_spool_free(s);

    /* a full disk, as RLIMIT_FSIZE: EFBIG (SIGXFSZ ignored, as airlock does) */
    struct rlimit old, tiny;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    tiny = old;
    tiny.rlim_cur = 40000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &tiny), 0);
    s = spool_new(f, 1000, 1 << 20);
    int rc = al_spool_write(s, p, 256 * 1024);
    int e = errno;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(rc, AL_ERR_IO);
    assert_int_equal(e, EFBIG);
    /* sticky: the hash saw bytes the spool does not hold */
    assert_int_equal(al_spool_write(s, p, 10), AL_ERR_IO);
    assert_int_equal(al_spool_finish(s), AL_ERR_IO);
    /* what was stored before the failure still reads back correctly */
    al_spool_reader rd;
    al_spool_reader_init(&rd, s);
    unsigned char buf[16384];
    size_t got, off = 0;
    while (al_spool_read(&rd, buf, sizeof buf, &got) == AL_OK && got > 0) {
        assert_memory_equal(buf, p + off, got);
        off += got;
    }
    assert_int_equal(off, al_spool_size(s));
    assert_true(off >= 1000 && off < 256 * 1024);
    al_spool_free(s);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spool_memory_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_spills_to_file_and_reads_back_at_any_boundary,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_exact_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_sha256_known_vectors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_replays_to_several_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_refuses_a_huge_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_file_is_unnamed_0600_and_holds_no_plaintext,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_disk_errors_are_clean, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
