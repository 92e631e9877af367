/* Unit tests for common/: the bounded buffer (its limit is the 413/431 path), the
 * hex helpers and the error texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/al_buf.h"
#include "common/al_err.h"
#include "common/al_hex.h"

#include <stdio.h>
#include <string.h>

static void test_buf_grows_to_its_limit_and_no_further(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 100);
    for (int i = 0; i < 10; i++)
        assert_int_equal(al_buf_append(&b, "0123456789", 10), AL_OK);
    assert_int_equal(b.len, 100);
    assert_int_equal(b.data[100], '\0');
    /* one byte over the limit fails and leaves the contents as they were */
    assert_int_equal(al_buf_append(&b, "x", 1), AL_ERR_TOOBIG);
    assert_int_equal(b.len, 100);
    assert_memory_equal(b.data + 90, "0123456789", 10);
    al_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(al_buf_appendf(&b, "%s=%d", "n", 42), AL_OK);
    assert_string_equal(b.data, "n=42");
    assert_int_equal(al_buf_appendf(&b, "%0200d", 1), AL_ERR_TOOBIG);
    assert_string_equal(b.data, "n=42");
    al_buf_free(&b, 1);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_buf_keeps_contents_across_growth(void **state)
{
    (void)state;
    al_buf b;
    al_buf_init(&b, 1 << 20);
    char chunk[1000];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (char)('a' + i % 26);
    for (int i = 0; i < 300; i++)
        assert_int_equal(al_buf_append(&b, chunk, sizeof chunk), AL_OK);
    for (int i = 0; i < 300; i++)
        assert_memory_equal(b.data + (size_t)i * sizeof chunk, chunk, sizeof chunk);
    al_buf_free(&b, 0);
}

static void test_hex(void **state)
{
    (void)state;
    const unsigned char in[] = {0x00, 0x7f, 0xab, 0xff};
    char out[9];
    al_hex_encode(in, sizeof in, out);
    assert_string_equal(out, "007fabff");
    /* every byte value, as printf spells it */
    unsigned char all[256];
    char hex[513], want[3];
    for (int b = 0; b < 256; b++)
        all[b] = (unsigned char)b;
    al_hex_encode(all, sizeof all, hex);
    assert_int_equal(strlen(hex), 512);
    for (int b = 0; b < 256; b++) {
        snprintf(want, sizeof want, "%02x", b);
        assert_memory_equal(hex + 2 * b, want, 2);
    }
    assert_int_equal(al_hex_value('0'), 0);
    assert_int_equal(al_hex_value('f'), 15);
    assert_int_equal(al_hex_value('F'), 15);
    assert_int_equal(al_hex_value('g'), -1);
    assert_int_equal(al_hex_value('/'), -1);
}

static void test_every_error_has_a_text(void **state)
{
    (void)state;
    for (int e = AL_ERR_KEY; e <= AL_OK; e++)
        assert_string_not_equal(al_strerror(e), "unknown error");
    assert_string_equal(al_strerror(-9999), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_grows_to_its_limit_and_no_further),
        cmocka_unit_test(test_buf_keeps_contents_across_growth),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_every_error_has_a_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
