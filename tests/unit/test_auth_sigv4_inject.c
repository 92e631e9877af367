/* Unit tests for auth/al_auth_sigv4 (the iam injector over the outgoing request): what
 * it needs per target, the headers it sets, the request target it rewrites, the SDK
 * headers it drops and signs around (re-signing), S3's UNSIGNED-PAYLOAD, the refusals
 * (presigned query, a credential that is not an aws one). The signature itself is
 * checked against the AWS suite (test_auth_sigv4) and botocore (test_iam_sigv4.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "auth/al_auth.h"
#include "common/al_err.h"

#include <string.h>
#include <strings.h>

static al_target target(const char *service, const char *scheme, uint16_t port)
{
    al_target t;
    memset(&t, 0, sizeof t);
    t.name = "t";
    t.type = AL_TYPE_SMITHY;
    t.scheme = (char *)scheme;
    t.host = "svc.example.com";
    t.port = port;
    t.auth.method = AL_AUTH_IAM;
    t.auth.region = "eu-west-1";
    t.auth.service = (char *)service;
    return t;
}

static const al_secret_view creds = {
    .provider = "environment",
    .kind = "aws",
    .value = (const unsigned char *)"SECRETKEY",
    .len = 9,
    .session_token = (const unsigned char *)"SESSIONTOKEN",
    .session_token_len = 12,
    .config_json = "{\"accessKeyId\": \"ASIAEXAMPLE\"}",
};

static const unsigned char empty_sha[32] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

static const char *value_of(const al_auth_out *o, const char *name)
{
    for (size_t i = 0; i < o->count; i++)
        if (!strcasecmp(o->name[i], name))
            return o->value[i].data;
    return NULL;
}

static int prepare(const al_target *t, const char *target, const al_header *h, size_t n,
                   const al_secret_view *sv, al_auth_out *out, int with_digest)
{
    const char *q = strchr(target, '?');
    al_auth_req r = {
        .method = "GET",
        .scheme = t->scheme,
        .host = t->host,
        .port = t->port,
        .target = target,
        .target_len = strlen(target),
        .path = target,
        .path_len = q ? (size_t)(q - target) : strlen(target),
        .query = q ? q + 1 : NULL,
        .query_len = q ? strlen(q + 1) : 0,
        .headers = h,
        .header_count = n,
        .now_ms = 1440938160000LL,
        .body_sha256 = with_digest ? empty_sha : NULL,
    };
    return al_auth_sigv4_injector.prepare(t, &r, sv, out);
}

static void test_needs(void **state)
{
    (void)state;
    const al_auth_injector *inj = al_auth_injector_for(AL_AUTH_IAM);
    assert_ptr_equal(inj, &al_auth_sigv4_injector);
    al_target t = target("lambda", "https", 443);
    assert_int_equal(inj->needs(&t), AL_AUTH_NEEDS_CREDENTIAL | AL_AUTH_NEEDS_BODY_SHA256);
    t = target("s3", "https", 443); /* S3 over TLS streams: UNSIGNED-PAYLOAD */
    assert_int_equal(inj->needs(&t), AL_AUTH_NEEDS_CREDENTIAL);
    t = target("s3", "http", 80);
    assert_int_equal(inj->needs(&t), AL_AUTH_NEEDS_CREDENTIAL | AL_AUTH_NEEDS_BODY_SHA256);
}

static void test_resigns_sdk_request(void **state)
{
    (void)state;
    al_target t = target("dynamodb", "https", 8443);
    al_header sdk[] = {
        {"Authorization", 13, "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/x, Signature=0", 55},
        {"X-Amz-Date", 10, "19990101T000000Z", 16},
        {"X-Amz-Security-Token", 20, "placeholder-token", 17},
        {"X-Amz-Target", 12, "DynamoDB_20120810.ListTables", 28},
        {"Content-Type", 12, "application/x-amz-json-1.0", 26},
        {"User-Agent", 10, "Boto3", 5},
    };
    al_auth_out o;
    al_auth_out_init(&o);
    assert_int_equal(prepare(&t, "/a b/%7E?z=1&a=x y", sdk, 6, &creds, &o, 1), AL_OK);
    const char *auth = value_of(&o, "Authorization");
    assert_non_null(auth);
    assert_non_null(strstr(auth, "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20150830/eu-west-1/"
                                 "dynamodb/aws4_request, SignedHeaders=content-type;host;"
                                 "x-amz-date;x-amz-security-token;x-amz-target, Signature="));
    assert_null(strstr(auth, "PLACEHOLDER"));
    assert_string_equal(value_of(&o, "X-Amz-Date"), "20150830T123600Z");
    assert_string_equal(value_of(&o, "X-Amz-Security-Token"), "SESSIONTOKEN");
    assert_null(value_of(&o, "X-Amz-Content-Sha256"));
    /* the wire form of the target: what was signed is what goes */
    assert_string_equal(o.target.data, "/a%20b/%7E?z=1&a=x%20y");
    /* the SDK's signing headers never go upstream */
    assert_true(al_auth_drop_request_header(&t, "x-amz-date", 10));
    assert_true(al_auth_drop_request_header(&t, "X-Amz-Security-Token", 20));
    /* x-amz-content-sha256 is replaced (prepare sets it when the agent sent one) */
    assert_false(al_auth_drop_request_header(&t, "x-amz-content-sha256", 20));
    assert_true(al_auth_drop_request_header(&t, "Authorization", 13));
    assert_false(al_auth_drop_request_header(&t, "X-Amz-Target", 12));
    al_auth_out_free(&o);
}

static void test_s3_unsigned_payload_and_single_encoding(void **state)
{
    (void)state;
    al_target t = target("s3", "https", 443);
    al_auth_out o;
    al_auth_out_init(&o);
    al_secret_view lt = creds;
    lt.session_token = NULL;
    lt.session_token_len = 0;
    assert_int_equal(prepare(&t, "/bucket/key%20a//b", NULL, 0, &lt, &o, 0), AL_OK);
    assert_string_equal(value_of(&o, "X-Amz-Content-Sha256"), "UNSIGNED-PAYLOAD");
    assert_null(value_of(&o, "X-Amz-Security-Token"));
    assert_non_null(strstr(value_of(&o, "Authorization"),
                           "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
    assert_string_equal(o.target.data, "/bucket/key%20a//b"); /* not normalised */
    /* an SDK's aws-chunked upload with unsigned chunks: signed with that payload value */
    al_header trailer = {"x-amz-content-sha256", 20, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", 34};
    al_auth_out_free(&o);
    al_auth_out_init(&o);
    assert_int_equal(prepare(&t, "/bucket/k", &trailer, 1, &lt, &o, 0), AL_OK);
    assert_string_equal(value_of(&o, "X-Amz-Content-Sha256"), "STREAMING-UNSIGNED-PAYLOAD-TRAILER");
    al_auth_out_free(&o);
}

static void test_refusals(void **state)
{
    (void)state;
    al_target t = target("lambda", "https", 443);
    al_auth_out o;
    al_auth_out_init(&o);
    assert_int_equal(
        prepare(&t, "/x?X-Amz-Signature=00&X-Amz-Credential=A", NULL, 0, &creds, &o, 1),
        AL_ERR_PERM);
    assert_int_equal(prepare(&t, "/x?x-amz-credential=A%2F1", NULL, 0, &creds, &o, 1), AL_ERR_PERM);
    al_secret_view k = creds;
    k.kind = "api_key";
    assert_int_equal(prepare(&t, "/x", NULL, 0, &k, &o, 1), AL_ERR_INVAL);
    k = creds;
    k.config_json = "{}";
    assert_int_equal(prepare(&t, "/x", NULL, 0, &k, &o, 1), AL_ERR_INVAL);
    assert_int_equal(prepare(&t, "/x", NULL, 0, NULL, &o, 1), AL_ERR_INVAL);
    /* a body signed chunk by chunk with the agent's key cannot be re-signed */
    al_header chunked = {"X-Amz-Content-Sha256", 20, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", 34};
    assert_int_equal(prepare(&t, "/x", &chunked, 1, &creds, &o, 1), AL_ERR_PROTO);
    al_header trailer = {"x-amz-content-sha256", 20, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", 34};
    assert_int_equal(prepare(&t, "/x", &trailer, 1, &creds, &o, 1), AL_OK);
    al_auth_out_free(&o);
    al_auth_out_init(&o);
    /* lambda needs the body digest from the data path */
    assert_int_equal(prepare(&t, "/x", NULL, 0, &creds, &o, 0), AL_ERR_INVAL);
    /* a token with a newline would split headers */
    k = creds;
    k.session_token = (const unsigned char *)"a\r\nX: y";
    k.session_token_len = 7;
    assert_int_equal(prepare(&t, "/x", NULL, 0, &k, &o, 1), AL_ERR_INVAL);
    al_auth_out_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_needs),
        cmocka_unit_test(test_resigns_sdk_request),
        cmocka_unit_test(test_s3_unsigned_payload_and_single_encoding),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
