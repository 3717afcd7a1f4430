/* Signed media URLs (src/core/signurl.c): what verifies, what does not,
 * and where the key comes from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/md.h>

#include "reeld/config.h"
#include "reeld/signurl.h"
#include "reeld/util.h"
#include "t.h"

#define ID "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
#define OTHER_ID "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e60"

static char dir_a[64], dir_b[64];

/* Splits a signed URL into its exp and sig values. */
static int parse(const char *url, char *exp, size_t elen, char *sig, size_t slen)
{
    const char *e = strstr(url, "?exp=");
    const char *s = strstr(url, "&sig=");
    if (!e || !s || s < e) return -1;
    size_t en = (size_t)(s - (e + 5));
    if (en >= elen || strlen(s + 5) >= slen) return -1;
    memcpy(exp, e + 5, en);
    exp[en] = '\0';
    strcpy(sig, s + 5);
    return 0;
}

static int init_dir(const char *dir)
{
    char err[256];
    int rc = signurl_init(dir, err, sizeof err);
    if (rc != 0) fprintf(stderr, "signurl_init: %s\n", err);
    return rc;
}

static void test_signed_url_has_public_base_path_and_verifies(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(strncmp(url, "https://reeld.example/api/recordings/" ID "/video?exp=",
                  strlen("https://reeld.example/api/recordings/" ID "/video?exp=")) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    long long e = atoll(exp);
    long long now = util_wall_ms() / 1000;
    CHECK(e >= now + 3599 && e <= now + 3601);
    CHECK(signurl_check(ID, exp, sig) == 0);
}

static void test_tampered_signature_is_rejected(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    for (size_t i = 0; i < strlen(sig); i++) {
        char t[64];
        strcpy(t, sig);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        CHECK(signurl_check(ID, exp, t) == -1);
    }
}

static void test_signature_for_another_recording_is_rejected(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    CHECK(signurl_check(OTHER_ID, exp, sig) == -1);
}

static void test_changed_expiry_is_rejected(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64], later[40];
    CHECK(signurl_video(ID, 60, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    snprintf(later, sizeof later, "%lld", atoll(exp) + 86400);
    CHECK(signurl_check(ID, later, sig) == -1);
    /* the same number written differently is another string: not signed */
    snprintf(later, sizeof later, "0%s", exp);
    CHECK(signurl_check(ID, later, sig) == -1);
    snprintf(later, sizeof later, "+%s", exp);
    CHECK(signurl_check(ID, later, sig) == -1);
}

/* The MAC of the header's contract, computed here independently. */
static void mac_b64(const char *key, const char *id, const char *exp, char out[64])
{
    char msg[256];
    int n = snprintf(msg, sizeof msg, "video\n%s\n%s", id, exp);
    unsigned char mac[32];
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)key,
                    strlen(key), (const unsigned char *)msg, (size_t)n, mac);
    util_b64url_encode(mac, sizeof mac, out);
}

static void test_signature_follows_the_documented_mac(void)
{
    cfg.url_signing_key = "unit-test-key";
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64], want[64];
    CHECK(signurl_video(ID, 600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    mac_b64("unit-test-key", ID, exp, want);
    CHECK_STR(sig, want);
    cfg.url_signing_key = NULL;
}

static void test_expired_signature_is_rejected(void)
{
    CHECK(signurl_video(ID, 0, (char[512]){0}, 512) == -1);
    CHECK(signurl_video(ID, -5, (char[512]){0}, 512) == -1);
    cfg.url_signing_key = "unit-test-key";
    CHECK(init_dir(dir_a) == 0);
    char exp[32], sig[64];
    long long now = util_wall_ms() / 1000;
    /* correctly signed, but expired: a second ago, and long ago */
    snprintf(exp, sizeof exp, "%lld", now - 1);
    mac_b64("unit-test-key", ID, exp, sig);
    CHECK(signurl_check(ID, exp, sig) == -1);
    mac_b64("unit-test-key", ID, "1000", sig);
    CHECK(signurl_check(ID, "1000", sig) == -1);
    /* the same construction with a future exp passes: the MAC was right */
    snprintf(exp, sizeof exp, "%lld", now + 120);
    mac_b64("unit-test-key", ID, exp, sig);
    CHECK(signurl_check(ID, exp, sig) == 0);
    cfg.url_signing_key = NULL;
}

static void test_malformed_exp_and_sig_are_rejected(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    const char *bad_exp[] = {"", " 1", "abc", "-1", "1e9", "99999999999999999999999", NULL};
    for (int i = 0; bad_exp[i]; i++)
        CHECK(signurl_check(ID, bad_exp[i], sig) == -1);
    char shortsig[64], longsig[80];
    strcpy(shortsig, sig);
    shortsig[strlen(shortsig) - 1] = '\0';
    snprintf(longsig, sizeof longsig, "%sA", sig);
    const char *bad_sig[] = {"", shortsig, longsig, "!!!", NULL};
    for (int i = 0; bad_sig[i]; i++)
        CHECK(signurl_check(ID, exp, bad_sig[i]) == -1);
    CHECK(signurl_check(ID, NULL, sig) == -1);
    CHECK(signurl_check(ID, exp, NULL) == -1);
    CHECK(signurl_check(NULL, exp, sig) == -1);
    CHECK(signurl_check("../x", exp, sig) == -1);
    CHECK(signurl_video("bad/id", 60, url, sizeof url) == -1);
    CHECK(signurl_video(ID, 60, url, 20) == -1); /* does not fit */
}

static void test_key_file_persists_across_init_in_one_data_dir(void)
{
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    char path[128];
    snprintf(path, sizeof path, "%s/url-signing.key", dir_a);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 32 && (st.st_mode & 0777) == 0600);
    /* a restart (init again) reads the same key back */
    CHECK(init_dir(dir_a) == 0);
    CHECK(signurl_check(ID, exp, sig) == 0);
    /* another data dir means another key */
    CHECK(init_dir(dir_b) == 0);
    CHECK(signurl_check(ID, exp, sig) == -1);
    CHECK(init_dir(dir_a) == 0);
    CHECK(signurl_check(ID, exp, sig) == 0);
}

static void test_env_key_overrides_the_key_file(void)
{
    cfg.url_signing_key = "shared-across-hosts";
    CHECK(init_dir(dir_a) == 0);
    char url[512], exp[32], sig[64];
    CHECK(signurl_video(ID, 3600, url, sizeof url) == 0);
    CHECK(parse(url, exp, sizeof exp, sig, sizeof sig) == 0);
    /* any data dir agrees when the key comes from the environment */
    CHECK(init_dir(dir_b) == 0);
    CHECK(signurl_check(ID, exp, sig) == 0);
    cfg.url_signing_key = NULL;
    CHECK(init_dir(dir_a) == 0);
    CHECK(signurl_check(ID, exp, sig) == -1);
}

static void test_corrupt_key_file_stops_init(void)
{
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "/tmp/reeld-signurl-c.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/url-signing.key", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("short", f);
        fclose(f);
    }
    char err[256] = "";
    CHECK(signurl_init(dir, err, sizeof err) == -1);
    CHECK(strstr(err, "url-signing.key") != NULL);
    unlink(path);
    rmdir(dir);
}

static void rm_dir(const char *dir)
{
    char path[128];
    snprintf(path, sizeof path, "%s/url-signing.key", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    snprintf(dir_a, sizeof dir_a, "/tmp/reeld-signurl-a.XXXXXX");
    snprintf(dir_b, sizeof dir_b, "/tmp/reeld-signurl-b.XXXXXX");
    if (!mkdtemp(dir_a) || !mkdtemp(dir_b)) {
        printf("FAIL signurl_setup: cannot create temp dirs\n");
        return 1;
    }
    cfg.public_url = "https://reeld.example";
    cfg.url_signing_key = NULL;
    TEST(test_signed_url_has_public_base_path_and_verifies);
    TEST(test_tampered_signature_is_rejected);
    TEST(test_signature_for_another_recording_is_rejected);
    TEST(test_changed_expiry_is_rejected);
    TEST(test_signature_follows_the_documented_mac);
    TEST(test_expired_signature_is_rejected);
    TEST(test_malformed_exp_and_sig_are_rejected);
    TEST(test_key_file_persists_across_init_in_one_data_dir);
    TEST(test_env_key_overrides_the_key_file);
    TEST(test_corrupt_key_file_stops_init);
    rm_dir(dir_a);
    rm_dir(dir_b);
    T_EXIT();
}
