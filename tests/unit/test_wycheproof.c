/* Wycheproof vectors against the JWT primitives and the JWS layer.
 *
 * Files come from $REELD_WYCHEPROOF_DIR or ../shared/testvectors/wycheproof
 * (relative to the repo root, the tests' working directory):
 *   rsa_signature_2048_sha256_test.json  -> jwt_verify_rs256_raw
 *   ecdsa_secp256r1_sha256_test.json     -> jwt_verify_es256_der
 *   json_web_signature_test.json         -> jwt_keyset_parse + jwt_verify_jws
 * "valid" must verify and "invalid" must not; "acceptable" may go either
 * way and how it went is reported. In the JWS file, a case whose header
 * alg is not RS256/ES256 (HS256, PS256, ES512, JSON serialization, ...)
 * must be rejected whatever its expected result, since reeld accepts
 * nothing else. One PASS/FAIL line per file; '#' lines carry counts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "reeld/jwt.h"
#include "reeld/util.h"
#include "t.h"

#define MAX_REPORTED 10

struct tally {
    int cases, valid_ok, invalid_ok, acc_accepted, acc_rejected, foreign_rejected, failed;
};

static char dir[1024];

static struct json_object *load(const char *name)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct json_object *o = json_object_from_file(path);
    if (!o) printf("# cannot read %s\n", path);
    return o;
}

static const char *str(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static struct json_object *member(struct json_object *o, const char *key)
{
    struct json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

/* Hex to a malloc'd buffer (at least 1 byte allocated); -1 on bad hex. */
static long unhex(const char *s, unsigned char **out)
{
    size_t n = s ? strlen(s) : 0;
    *out = malloc(n / 2 + 1);
    if (!s || n % 2) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        (*out)[i] = (unsigned char)v;
    }
    return (long)(n / 2);
}

/* Records one verdict against the expected result. */
static void judge(struct tally *t, const char *file, int tcid, const char *result, int verified,
                  const char *comment)
{
    t->cases++;
    int bad = 0;
    if (strcmp(result, "valid") == 0) {
        if (verified)
            t->valid_ok++;
        else
            bad = 1;
    } else if (strcmp(result, "invalid") == 0) {
        if (!verified)
            t->invalid_ok++;
        else
            bad = 1;
    } else if (verified) {
        t->acc_accepted++;
        printf("# %s tcId %d acceptable (%s): accepted\n", file, tcid, comment);
    } else {
        t->acc_rejected++;
        printf("# %s tcId %d acceptable (%s): rejected\n", file, tcid, comment);
    }
    if (bad && t->failed++ < MAX_REPORTED)
        printf("# %s tcId %d expected %s, got %s (%s)\n", file, tcid, result,
               verified ? "accepted" : "rejected", comment);
}

static int expected_count(struct json_object *doc)
{
    struct json_object *n = member(doc, "numberOfTests");
    return n ? json_object_get_int(n) : -1;
}

static void finish(const char *name, const char *file, struct tally *t, int expected)
{
    printf("# %s: %d cases (file says %d): valid verified %d, invalid rejected %d, "
           "acceptable accepted %d / rejected %d, other-alg rejected %d, wrong %d\n",
           file, t->cases, expected, t->valid_ok, t->invalid_ok, t->acc_accepted, t->acc_rejected,
           t->foreign_rejected, t->failed);
    T_BEGIN(name);
    CHECK(t->cases > 0);
    CHECK(t->cases == expected);
    CHECK(t->failed == 0);
    T_END();
}

static void rsa_pkcs1_2048_sha256(void)
{
    const char *file = "rsa_signature_2048_sha256_test.json";
    struct json_object *doc = load(file);
    struct tally t = {0};
    struct json_object *groups = member(doc, "testGroups");
    for (size_t g = 0; groups && g < json_object_array_length(groups); g++) {
        struct json_object *grp = json_object_array_get_idx(groups, g);
        struct json_object *pk = member(grp, "publicKey");
        const char *nh = pk ? str(pk, "modulus") : str(grp, "n");
        const char *eh = pk ? str(pk, "publicExponent") : str(grp, "e");
        unsigned char *n, *e;
        long nlen = unhex(nh, &n), elen = unhex(eh, &e);
        struct json_object *tests = member(grp, "tests");
        for (size_t i = 0; tests && i < json_object_array_length(tests); i++) {
            struct json_object *tc = json_object_array_get_idx(tests, i);
            unsigned char *msg, *sig;
            long mlen = unhex(str(tc, "msg"), &msg), slen = unhex(str(tc, "sig"), &sig);
            int ok = nlen > 0 && elen > 0 && mlen >= 0 && slen >= 0 &&
                     jwt_verify_rs256_raw(n, (size_t)nlen, e, (size_t)elen, msg, (size_t)mlen, sig,
                                          (size_t)slen) == 0;
            judge(&t, file, json_object_get_int(member(tc, "tcId")), str(tc, "result"), ok,
                  str(tc, "comment"));
            free(msg);
            free(sig);
        }
        free(n);
        free(e);
    }
    finish("wycheproof_rsa_pkcs1_2048_sha256", file, &t, expected_count(doc));
    json_object_put(doc);
}

static void ecdsa_p256_sha256_der(void)
{
    const char *file = "ecdsa_secp256r1_sha256_test.json";
    struct json_object *doc = load(file);
    struct tally t = {0};
    struct json_object *groups = member(doc, "testGroups");
    for (size_t g = 0; groups && g < json_object_array_length(groups); g++) {
        struct json_object *grp = json_object_array_get_idx(groups, g);
        struct json_object *pk = member(grp, "publicKey");
        unsigned char *x, *y;
        long xlen = unhex(str(pk, "wx"), &x), ylen = unhex(str(pk, "wy"), &y);
        struct json_object *tests = member(grp, "tests");
        for (size_t i = 0; tests && i < json_object_array_length(tests); i++) {
            struct json_object *tc = json_object_array_get_idx(tests, i);
            unsigned char *msg, *sig;
            long mlen = unhex(str(tc, "msg"), &msg), slen = unhex(str(tc, "sig"), &sig);
            int ok = xlen > 0 && ylen > 0 && mlen >= 0 && slen >= 0 &&
                     jwt_verify_es256_der(x, (size_t)xlen, y, (size_t)ylen, msg, (size_t)mlen, sig,
                                          (size_t)slen) == 0;
            judge(&t, file, json_object_get_int(member(tc, "tcId")), str(tc, "result"), ok,
                  str(tc, "comment"));
            free(msg);
            free(sig);
        }
        free(x);
        free(y);
    }
    finish("wycheproof_ecdsa_p256_sha256_der", file, &t, expected_count(doc));
    json_object_put(doc);
}

/* The header alg of a compact JWS, or NULL when it has none readable. */
static int header_alg_supported(const char *jws)
{
    const char *dot = strchr(jws, '.');
    if (!dot) return 0;
    size_t n = (size_t)(dot - jws);
    unsigned char *buf = malloc(3 * (n / 4) + 4);
    long m = util_b64url_decode(jws, n, buf);
    int supported = 0;
    if (m > 0) {
        buf[m] = '\0';
        struct json_object *h = json_tokener_parse((char *)buf);
        const char *alg = str(h, "alg");
        supported = alg && (strcmp(alg, "RS256") == 0 || strcmp(alg, "ES256") == 0);
        json_object_put(h);
    }
    free(buf);
    return supported;
}

static void json_web_signature(void)
{
    const char *file = "json_web_signature_test.json";
    struct json_object *doc = load(file);
    struct tally t = {0};
    struct json_object *groups = member(doc, "testGroups");
    for (size_t g = 0; groups && g < json_object_array_length(groups); g++) {
        struct json_object *grp = json_object_array_get_idx(groups, g);
        struct json_object *pub = member(grp, "public");
        struct jwt_keyset *ks = NULL;
        if (pub && json_object_is_type(pub, json_type_object)) {
            const char *js = json_object_to_json_string(pub);
            ks = jwt_keyset_parse(js, strlen(js), NULL, 0);
        }
        struct json_object *tests = member(grp, "tests");
        for (size_t i = 0; tests && i < json_object_array_length(tests); i++) {
            struct json_object *tc = json_object_array_get_idx(tests, i);
            struct json_object *jv = member(tc, "jws");
            const char *jws = json_object_is_type(jv, json_type_string)
                                  ? json_object_get_string(jv)
                                  : json_object_to_json_string(jv);
            unsigned char *payload = NULL;
            size_t plen = 0;
            int ok = ks && jwt_verify_jws(ks, jws, strlen(jws), &payload, &plen, NULL, 0) == JWT_OK;
            free(payload);
            int tcid = json_object_get_int(member(tc, "tcId"));
            if (json_object_is_type(jv, json_type_string) && header_alg_supported(jws)) {
                judge(&t, file, tcid, str(tc, "result"), ok, str(tc, "comment"));
                continue;
            }
            /* Another algorithm or serialization: always rejected. */
            t.cases++;
            if (!ok)
                t.foreign_rejected++;
            else if (t.failed++ < MAX_REPORTED)
                printf("# %s tcId %d: non-RS256/ES256 JWS accepted (%s)\n", file, tcid,
                       str(tc, "comment"));
        }
        jwt_keyset_free(ks);
    }
    finish("wycheproof_json_web_signature", file, &t, expected_count(doc));
    json_object_put(doc);
}

int main(void)
{
    const char *env = getenv("REELD_WYCHEPROOF_DIR");
    snprintf(dir, sizeof dir, "%s", env && *env ? env : "../shared/testvectors/wycheproof");
    rsa_pkcs1_2048_sha256();
    ecdsa_p256_sha256_der();
    json_web_signature();
    T_EXIT();
}
