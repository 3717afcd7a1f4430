/* tus header values (src/api/tus_wire.c): offsets and lengths, strict
 * base64, Upload-Metadata both ways, Upload-Expires. */
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "../../src/api/tus_wire.h"
#include "t.h"

static void offsets_are_plain_digits_within_the_maximum(void)
{
    int64_t v = -1;
    int over = -1;
    CHECK(tus_parse_u64("0", 100, &v, &over) == 0 && v == 0 && over == 0);
    CHECK(tus_parse_u64("100", 100, &v, &over) == 0 && v == 100);
    CHECK(tus_parse_u64("9223372036854775807", INT64_MAX, &v, &over) == 0 && v == INT64_MAX);
    const char *bad[] = {"", "-1", "+1", " 1", "1 ", "1e3", "0x10", "1.0", "١"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(tus_parse_u64(bad[i], 100, &v, &over) == -1);
        CHECK(over == 0);
    }
    CHECK(tus_parse_u64(NULL, 100, &v, &over) == -1 && over == 0);
    CHECK(tus_parse_u64("101", 100, &v, &over) == -1 && over == 1);
    CHECK(tus_parse_u64("9223372036854775808", INT64_MAX, &v, &over) == -1 && over == 1);
    CHECK(tus_parse_u64("99999999999999999999999", 100, &v, &over) == -1 && over == 1);
    CHECK(tus_parse_u64("99999999999999999999x", 100, &v, &over) == -1 && over == 0);
}

static void base64_is_decoded_strictly(void)
{
    unsigned char out[64];
    CHECK(tus_b64_decode("", 0, out) == 0);
    CHECK(tus_b64_decode("Zm9v", 4, out) == 3 && memcmp(out, "foo", 3) == 0);
    CHECK(tus_b64_decode("Zm8=", 4, out) == 2 && memcmp(out, "fo", 2) == 0);
    CHECK(tus_b64_decode("Zg==", 4, out) == 1 && out[0] == 'f');
    CHECK(tus_b64_decode("+/+/", 4, out) == 3 && out[0] == 0xfb && out[2] == 0xbf);
    const char *bad[] = {"Zm9",  "Zm9v=",    "Zm9=", "Zh==", "Zg=",  "Z===",
                         "=Zm9", "Zg==Zm9v", "Zm-v", "Zm_v", "Zm 9", "Zm9v\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(tus_b64_decode(bad[i], strlen(bad[i]), out) == -1);
}

static const char *get(struct json_object *o, const char *k)
{
    struct json_object *v;
    return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

static void metadata_pairs_and_bare_keys_are_read(void)
{
    struct json_object *o =
        tus_meta_parse("filename bXkubXA0,is_confidential, title w6lsw6h2ZQ== ");
    CHECK(o != NULL);
    if (!o) return;
    CHECK(json_object_object_length(o) == 3);
    CHECK_STR(get(o, "filename"), "my.mp4");
    CHECK_STR(get(o, "is_confidential"), "");
    CHECK_STR(get(o, "title"), "\xc3\xa9l\xc3\xa8ve");
    json_object_put(o);
    o = tus_meta_parse("");
    CHECK(o && json_object_object_length(o) == 0);
    json_object_put(o);
}

static void malformed_metadata_is_refused(void)
{
    const char *bad[] = {
        "filename !!!",   /* not base64 */
        "a Zm9v,a YmFy",  /* duplicate key */
        "a Zm9v,",        /* trailing comma */
        ",a Zm9v",        /* empty pair */
        "a Zm9v,,b YmFy", /* empty pair */
        "a  Zm9v",        /* two spaces */
        "a Zm 9v",        /* space inside */
        "a //79",         /* not UTF-8 */
        "a AA==",         /* NUL */
        "a\x01 Zm9v",     /* control in key */
        "k\xc3\xa9 Zm9v", /* non-ASCII key */
        "a Zm9=",         /* non-canonical */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct json_object *o = tus_meta_parse(bad[i]);
        if (o) printf("# accepted: %s\n", bad[i]);
        CHECK(o == NULL);
        json_object_put(o);
    }
    char big[TUS_METADATA_MAX + 8];
    memset(big, 'A', sizeof big - 1);
    memcpy(big, "a ", 2);
    big[TUS_METADATA_MAX + 1] = '\0'; /* one byte over the bound */
    CHECK(tus_meta_parse(big) == NULL);
    CHECK(tus_meta_parse(NULL) == NULL);
}

static void metadata_round_trips(void)
{
    const char *h = "filename bXkubXA0,is_confidential,title w6lsw6h2ZQ==";
    struct json_object *o = tus_meta_parse(h);
    CHECK(o != NULL);
    if (!o) return;
    char out[TUS_METADATA_MAX + 1];
    size_t n = tus_meta_format(json_object_to_json_string(o), out, sizeof out);
    CHECK(n == strlen(h));
    struct json_object *back = tus_meta_parse(out);
    CHECK(back && json_object_equal(o, back));
    char small[8];
    CHECK(tus_meta_format(json_object_to_json_string(o), small, sizeof small) == 0);
    CHECK(small[0] == '\0');
    CHECK(tus_meta_format("[1]", out, sizeof out) == 0);
    CHECK(tus_meta_format("{}", out, sizeof out) == 0);
    CHECK(tus_meta_format(NULL, out, sizeof out) == 0);
    json_object_put(o);
    json_object_put(back);
}

static void expiry_is_an_http_date(void)
{
    char b[40];
    tus_http_date(784111777, b, sizeof b);
    CHECK_STR(b, "Sun, 06 Nov 1994 08:49:37 GMT");
}

int main(void)
{
    TEST(offsets_are_plain_digits_within_the_maximum);
    TEST(base64_is_decoded_strictly);
    TEST(metadata_pairs_and_bare_keys_are_read);
    TEST(malformed_metadata_is_refused);
    TEST(metadata_round_trips);
    TEST(expiry_is_an_http_date);
    T_EXIT();
}
