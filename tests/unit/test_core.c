/* Core helpers: encodings, ids, UTF-8, JSON escaping, config parsing,
 * metrics rendering. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "reeld/config.h"
#include "reeld/metrics.h"
#include "reeld/ratelimit.h"
#include "reeld/util.h"
#include "t.h"

static void test_b64url_round_trips_every_length(void)
{
    unsigned char in[64], out[64];
    char enc[100];
    for (size_t n = 0; n < sizeof in; n++) {
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(i * 37 + n);
        size_t el = util_b64url_encode(in, n, enc);
        CHECK(el == (4 * n + 2) / 3);
        CHECK(strchr(enc, '=') == NULL && strchr(enc, '+') == NULL && strchr(enc, '/') == NULL);
        long dl = util_b64url_decode(enc, el, out);
        CHECK(dl == (long)n && memcmp(in, out, n) == 0);
    }
}

static void test_b64url_rejects_padding_std_alphabet_and_noncanonical(void)
{
    unsigned char out[16];
    CHECK(util_b64url_decode("YQ==", 4, out) == -1);
    CHECK(util_b64url_decode("a+b/", 4, out) == -1);
    CHECK(util_b64url_decode("Y", 1, out) == -1);
    CHECK(util_b64url_decode("YR", 2, out) == -1); /* trailing bits set */
    CHECK(util_b64url_decode("YQ", 2, out) == 1 && out[0] == 'a');
}

static void test_uuid_v4_is_canonical_and_random(void)
{
    char a[37], b[37];
    util_uuid_v4(a);
    util_uuid_v4(b);
    CHECK(util_is_uuid(a) && util_is_uuid(b));
    CHECK(strcmp(a, b) != 0);
    CHECK(a[14] == '4');
    CHECK(strchr("89ab", a[19]) != NULL);
    CHECK(!util_is_uuid("not-a-uuid"));
    CHECK(!util_is_uuid("0123456789abcdef0123456789abcdef0123"));
    CHECK(!util_is_uuid("01234567-89ab-cdef-0123-456789abcdef0"));
}

static void test_utf8_validation(void)
{
    static const char ok[] = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    CHECK(util_utf8_valid(ok, sizeof ok - 1));
    CHECK(!util_utf8_valid("\xc0\xaf", 2));         /* overlong */
    CHECK(!util_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!util_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    CHECK(!util_utf8_valid("\xe2\x82", 2));         /* truncated */
    CHECK(!util_utf8_valid("\xff", 1));
}

static void test_json_escaping(void)
{
    struct evbuffer *b = evbuffer_new();
    util_json_str(b, "a\"b\\c\n\x01/");
    util_json_str(b, NULL);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    CHECK_STR(s, "\"a\\\"b\\\\c\\n\\u0001/\"null");
    free(s);
    evbuffer_free(b);
}

static void test_ct_memcmp(void)
{
    CHECK(util_ct_memcmp("abc", "abc", 3) == 0);
    CHECK(util_ct_memcmp("abc", "abd", 3) != 0);
}

static void test_config_defaults_and_errors_name_the_variable(void)
{
    char err[256];
    unsetenv("REELD_LISTEN");
    setenv("REELD_CHAT_RATE", "7/30s", 1);
    CHECK(config_load(err, sizeof err) == 0);
    CHECK_STR(cfg.listen_host, "127.0.0.1");
    CHECK(cfg.listen_port == 8080);
    CHECK(cfg.chat_rate_count == 7 && cfg.chat_rate_window_s == 30);
    CHECK(cfg.embed_dim == 1536);
    CHECK_STR(cfg.openai_base_url, "https://api.openai.com/v1");

    setenv("REELD_LISTEN", "nohost", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "REELD_LISTEN") != NULL);
    unsetenv("REELD_LISTEN");
    setenv("REELD_DB_POOL", "0", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "REELD_DB_POOL") != NULL);
    unsetenv("REELD_DB_POOL");
    setenv("REELD_LLM", "gpt", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "REELD_LLM") != NULL);
    unsetenv("REELD_LLM");
    setenv("OPENAI_BASE_URL", "ftp://x", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "OPENAI_BASE_URL") != NULL);
    unsetenv("OPENAI_BASE_URL");
    setenv("REELD_CHAT_RATE", "five", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "REELD_CHAT_RATE") != NULL);
    unsetenv("REELD_CHAT_RATE");
    setenv("REELD_AUTH", "jwks", 1);
    CHECK(config_load(err, sizeof err) == -1 && strstr(err, "REELD_JWKS") != NULL);
    unsetenv("REELD_AUTH");
    CHECK(config_load(err, sizeof err) == 0);
}

static double seven(void)
{
    return 7;
}

static void test_metrics_render_prometheus_text(void)
{
    static const char route[] = "/x/:id";
    metrics_http(route, "GET", 200, 3000);
    metrics_http(route, "GET", 200, 30000);
    metrics_http(route, "GET", 404, 1000);
    metrics_count("reeld_t_total", "Test.", "kind", "a", 2);
    metrics_gauge("reeld_t_gauge", "Gauge.", seven);
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *s = (const char *)evbuffer_pullup(b, -1);
    CHECK(
        strstr(s, "reeld_http_requests_total{route=\"/x/:id\",method=\"GET\",status=\"200\"} 2") !=
        NULL);
    CHECK(strstr(s, "status=\"404\"} 1") != NULL);
    CHECK(
        strstr(s, "reeld_http_request_duration_seconds_bucket{route=\"/x/:id\",le=\"0.005\"} 2") !=
        NULL);
    CHECK(strstr(s, "reeld_http_request_duration_seconds_count{route=\"/x/:id\"} 3") != NULL);
    CHECK(strstr(s, "reeld_t_total{kind=\"a\"} 2") != NULL);
    CHECK(strstr(s, "reeld_t_gauge 7") != NULL);
    evbuffer_free(b);
}

static void test_ratelimit_bursts_then_refills_per_key(void)
{
    struct ratelimit *rl = ratelimit_new(5, 10); /* REELD_CHAT_RATE's default */
    CHECK(ratelimit_new(0, 10) == NULL && ratelimit_new(5, 0) == NULL);
    int64_t t = 1000000;
    for (int i = 0; i < 5; i++)
        CHECK(ratelimit_take(rl, "alice", t) == 0);
    int64_t wait = ratelimit_take(rl, "alice", t);
    CHECK(wait > 1900 && wait <= 2001);       /* one token per 2 s */
    CHECK(ratelimit_take(rl, "bob", t) == 0); /* buckets are per key */
    CHECK(ratelimit_take(rl, "alice", t + 1000) > 0);
    CHECK(ratelimit_take(rl, "alice", t + 2001) == 0);
    CHECK(ratelimit_take(rl, "alice", t + 2002) > 0);
    /* a long pause refills to the burst, not beyond */
    t += 3600 * 1000;
    for (int i = 0; i < 5; i++)
        CHECK(ratelimit_take(rl, "alice", t) == 0);
    CHECK(ratelimit_take(rl, "alice", t) > 0);
    /* many keys: buckets full again are swept, a drained one is kept */
    char key[32];
    int ok = 1;
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        ok &= ratelimit_take(rl, key, t) == 0;
    }
    CHECK(ok);
    CHECK(ratelimit_take(rl, "alice", t + 1) > 0);
    ratelimit_free(rl);
    ratelimit_free(NULL);
}

int main(void)
{
    TEST(test_b64url_round_trips_every_length);
    TEST(test_b64url_rejects_padding_std_alphabet_and_noncanonical);
    TEST(test_uuid_v4_is_canonical_and_random);
    TEST(test_utf8_validation);
    TEST(test_json_escaping);
    TEST(test_ct_memcmp);
    TEST(test_config_defaults_and_errors_name_the_variable);
    TEST(test_metrics_render_prometheus_text);
    TEST(test_ratelimit_bursts_then_refills_per_key);
    T_EXIT();
}
