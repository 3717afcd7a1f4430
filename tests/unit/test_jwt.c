/* JWT verification (RS256, ES256), keyset parsing and the dev signer.
 * Every token is built here: ES256 by the dev signer or a test P-256 key,
 * RS256 by a 2048-bit key generated at start. */
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "reeld/jwt.h"
#include "reeld/util.h"
#include "t.h"

#define NOW 1700000000LL

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static mbedtls_rsa_context rsa; /* kid "rsa1" */
static mbedtls_ecp_keypair ec;  /* kid "ec1" */
static struct jwt_signer *dev;  /* kid "dev" */
static struct jwt_keyset *ks_dev, *ks_rsa, *ks_ec, *ks_both;
static char tmpdir[64] = "/tmp/reeld-jwt-test.XXXXXX";
static char rsa_jwk[1024], ec_jwk[512];

static const struct jwt_opts opts = {.now = NOW, .skew = 60};

/* ---- token building ---- */

static char *b64(const void *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    util_b64url_encode(p, n, s);
    return s;
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
    char *s = malloc(n);
    snprintf(s, n, "%s.%s.%s", a, b, c);
    return s;
}

/* "b64(hdr).b64(payload)" in a buffer with room for a signature. */
static char *signing_input(const char *hdr, const char *payload)
{
    char *h = b64(hdr, strlen(hdr)), *p = b64(payload, strlen(payload));
    size_t n = strlen(h) + strlen(p) + 2 + 1024;
    char *s = malloc(n);
    snprintf(s, n, "%s.%s", h, p);
    free(h);
    free(p);
    return s;
}

static char *append_sig(char *input, const unsigned char *sig, size_t siglen)
{
    char *e = b64(sig, siglen);
    strcat(input, ".");
    strcat(input, e);
    free(e);
    return input;
}

static void sha256(const char *s, unsigned char h[32])
{
    mbedtls_sha256_ret((const unsigned char *)s, strlen(s), h, 0);
}

static char *sign_rs(const char *hdr, const char *payload)
{
    char *in = signing_input(hdr, payload);
    unsigned char h[32], sig[256];
    sha256(in, h);
    if (mbedtls_rsa_pkcs1_sign(&rsa, mbedtls_ctr_drbg_random, &drbg, MBEDTLS_RSA_PRIVATE,
                               MBEDTLS_MD_SHA256, 32, h, sig) != 0)
        abort();
    return append_sig(in, sig, sizeof sig);
}

static void ec_sign_raw(const char *in, unsigned char rs[64])
{
    unsigned char h[32];
    sha256(in, h);
    mbedtls_mpi r, s;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    if (mbedtls_ecdsa_sign(&ec.grp, &r, &s, &ec.d, h, 32, mbedtls_ctr_drbg_random, &drbg) != 0 ||
        mbedtls_mpi_write_binary(&r, rs, 32) != 0 || mbedtls_mpi_write_binary(&s, rs + 32, 32) != 0)
        abort();
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
}

static char *sign_ec(const char *hdr, const char *payload)
{
    char *in = signing_input(hdr, payload);
    unsigned char rs[64];
    ec_sign_raw(in, rs);
    return append_sig(in, rs, sizeof rs);
}

static char *hs256(const char *hdr, const char *payload, const unsigned char *key, size_t klen)
{
    char *in = signing_input(hdr, payload);
    unsigned char mac[32];
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, klen,
                    (const unsigned char *)in, strlen(in), mac);
    return append_sig(in, mac, sizeof mac);
}

static const char *claims(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *claims(const char *fmt, ...)
{
    static char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

/* A good claim set valid at NOW. */
static const char *good(void)
{
    return claims("{\"sub\":\"user_1\",\"exp\":%lld,\"iat\":%lld}", NOW + 3600, NOW);
}

static enum jwt_status verify_o(const struct jwt_keyset *ks, const char *tok,
                                const struct jwt_opts *o)
{
    struct json_object *c = NULL;
    char err[128];
    enum jwt_status st = jwt_verify(ks, tok, strlen(tok), o, &c, err, sizeof err);
    if ((st == JWT_OK) != (c != NULL))
        return (enum jwt_status)99; /* claims must be set exactly on success */
    json_object_put(c);
    return st;
}

static enum jwt_status verify(const struct jwt_keyset *ks, const char *tok)
{
    return verify_o(ks, tok, &opts);
}

/* ---- setup ---- */

static void jwk_from_rsa(void)
{
    unsigned char n[256], e[3];
    if (mbedtls_rsa_export_raw(&rsa, n, sizeof n, NULL, 0, NULL, 0, NULL, 0, e, sizeof e) != 0)
        abort();
    char *ns = b64(n, sizeof n), *es = b64(e, sizeof e);
    snprintf(rsa_jwk, sizeof rsa_jwk,
             "{\"kty\":\"RSA\",\"kid\":\"rsa1\",\"n\":\"%s\",\"e\":\"%s\"}", ns, es);
    free(ns);
    free(es);
}

static void jwk_from_ec(void)
{
    unsigned char x[32], y[32];
    mbedtls_mpi_write_binary(&ec.Q.X, x, 32);
    mbedtls_mpi_write_binary(&ec.Q.Y, y, 32);
    char *xs = b64(x, 32), *ys = b64(y, 32);
    snprintf(ec_jwk, sizeof ec_jwk,
             "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"ec1\",\"x\":\"%s\",\"y\":\"%s\"}", xs,
             ys);
    free(xs);
    free(ys);
}

static struct jwt_keyset *parse(const char *json)
{
    char err[128];
    return jwt_keyset_parse(json, strlen(json), err, sizeof err);
}

static void setup(void)
{
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0) != 0) abort();
    mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
    if (mbedtls_rsa_gen_key(&rsa, mbedtls_ctr_drbg_random, &drbg, 2048, 65537) != 0) abort();
    mbedtls_ecp_keypair_init(&ec);
    if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, &ec, mbedtls_ctr_drbg_random, &drbg) != 0)
        abort();
    jwk_from_rsa();
    jwk_from_ec();
    if (!mkdtemp(tmpdir)) abort();
    char path[128], err[128];
    snprintf(path, sizeof path, "%s/dev.pem", tmpdir);
    dev = jwt_signer_load_or_create(path, err, sizeof err);
    if (!dev) {
        fprintf(stderr, "dev signer: %s\n", err);
        abort();
    }
    ks_dev = jwt_signer_keyset(dev);
    ks_rsa = parse(rsa_jwk);
    ks_ec = parse(ec_jwk);
    char both[2048];
    snprintf(both, sizeof both, "{\"keys\":[%s,%s]}", rsa_jwk, ec_jwk);
    ks_both = parse(both);
    if (!ks_dev || !ks_rsa || !ks_ec || !ks_both) abort();
}

/* ---- valid tokens ---- */

static void es256_token_from_dev_signer_verifies(void)
{
    char *t = jwt_sign(dev, good());
    CHECK(t != NULL);
    struct json_object *c = NULL;
    CHECK(jwt_verify(ks_dev, t, strlen(t), &opts, &c, NULL, 0) == JWT_OK);
    struct json_object *sub;
    CHECK(c && json_object_object_get_ex(c, "sub", &sub));
    CHECK_STR(c ? json_object_get_string(sub) : NULL, "user_1");
    json_object_put(c);
    /* The header is exactly the documented one. */
    CHECK(strncmp(t, "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldiJ9.", 52) == 0);
    free(t);
}

static void rs256_token_verifies(void)
{
    char *t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"typ\":\"JWT\"}", good());
    CHECK(verify(ks_rsa, t) == JWT_OK);
    CHECK(verify(ks_both, t) == JWT_OK);
    free(t);
}

static void es256_token_with_test_key_verifies(void)
{
    char *t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", good());
    CHECK(verify(ks_ec, t) == JWT_OK);
    CHECK(verify(ks_both, t) == JWT_OK);
    free(t);
}

/* ---- algorithm attacks ---- */

static void alg_none_rejected(void)
{
    const char *none = "{\"alg\":\"none\",\"kid\":\"rsa1\"}";
    char *h = b64(none, strlen(none));
    char *p = b64(good(), strlen(good()));
    char *t1 = join3(h, p, "");
    char *t2 = join3(h, p, "AAAA");
    CHECK(verify(ks_rsa, t1) != JWT_OK);
    CHECK(verify(ks_rsa, t2) == JWT_BAD_ALG);
    char *t3 = sign_rs("{\"alg\":\"none\",\"kid\":\"rsa1\"}", good());
    CHECK(verify(ks_rsa, t3) == JWT_BAD_ALG);
    free(h);
    free(p);
    free(t1);
    free(t2);
    free(t3);
}

static void hs256_signed_with_rsa_public_key_pem_rejected(void)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    unsigned char pem[2048];
    CHECK(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) == 0);
    CHECK(mbedtls_rsa_copy(mbedtls_pk_rsa(pk), &rsa) == 0);
    CHECK(mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof pem) == 0);
    char *t = hs256("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", good(), pem, strlen((char *)pem));
    CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
    CHECK(verify(ks_both, t) == JWT_BAD_ALG);
    free(t);
    /* Without kid too: a lone RSA key still pins RS256. */
    t = hs256("{\"alg\":\"HS256\"}", good(), pem, strlen((char *)pem));
    CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
    free(t);
    mbedtls_pk_free(&pk);
}

static void hs256_signed_with_rsa_public_key_der_rejected(void)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    unsigned char der[2048];
    CHECK(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) == 0);
    CHECK(mbedtls_rsa_copy(mbedtls_pk_rsa(pk), &rsa) == 0);
    int n = mbedtls_pk_write_pubkey_der(&pk, der, sizeof der);
    CHECK(n > 0);
    if (n > 0) {
        /* mbedtls writes DER at the end of the buffer. */
        char *t =
            hs256("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", good(), der + sizeof der - n, (size_t)n);
        CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
        free(t);
    }
    mbedtls_pk_free(&pk);
}

static void rs256_token_presented_to_ec_key_rejected(void)
{
    char *t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"ec1\"}", good());
    CHECK(verify(ks_both, t) == JWT_BAD_ALG);
    CHECK(verify(ks_ec, t) == JWT_BAD_ALG);
    free(t);
    /* And the other way round: ES256 header on the RSA key's kid. */
    t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", good());
    CHECK(verify(ks_both, t) == JWT_BAD_ALG);
    free(t);
}

static void other_algs_rejected(void)
{
    const char *algs[] = {"RS384", "RS512", "PS256", "ES384", "ES512", "EdDSA", "rs256", "NONE"};
    for (size_t i = 0; i < sizeof algs / sizeof *algs; i++) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\",\"kid\":\"rsa1\"}", algs[i]);
        char *t = sign_rs(hdr, good());
        CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
        free(t);
    }
    char *t = sign_rs("{\"kid\":\"rsa1\"}", good());
    CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
    free(t);
    t = sign_rs("{\"alg\":256,\"kid\":\"rsa1\"}", good());
    CHECK(verify(ks_rsa, t) == JWT_BAD_ALG);
    free(t);
}

/* ---- key selection ---- */

static void unknown_kid_reported(void)
{
    char *t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"rotated-away\"}", good());
    CHECK(verify(ks_rsa, t) == JWT_UNKNOWN_KID);
    CHECK(verify(ks_both, t) == JWT_UNKNOWN_KID);
    free(t);
}

static void kid_required_when_keyset_has_several_keys(void)
{
    char *t = sign_rs("{\"alg\":\"RS256\"}", good());
    CHECK(verify(ks_rsa, t) == JWT_OK);
    CHECK(verify(ks_both, t) == JWT_BAD_HEADER);
    free(t);
}

static void key_without_kid_serves_a_lone_keyset(void)
{
    char jwk[1024];
    snprintf(jwk, sizeof jwk, "%s", rsa_jwk);
    char *kid = strstr(jwk, "\"kid\":\"rsa1\",");
    memmove(kid, kid + 13, strlen(kid + 13) + 1);
    struct jwt_keyset *ks = parse(jwk);
    CHECK(ks && jwt_keyset_count(ks) == 1);
    char *t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"whatever\"}", good());
    CHECK(verify(ks, t) == JWT_OK);
    free(t);
    jwt_keyset_free(ks);
}

/* ---- header checks ---- */

static void check_header_rejected(const char *hdr)
{
    char *t = sign_ec(hdr, good());
    CHECK(verify(ks_ec, t) == JWT_BAD_HEADER);
    free(t);
}

static void crit_header_rejected(void)
{
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":\"ec1\",\"crit\":[\"exp\"]}");
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":\"ec1\",\"crit\":[]}");
}

static void jku_header_rejected_never_fetched(void)
{
    check_header_rejected(
        "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"jku\":\"http://127.0.0.1:1/jwks.json\"}");
}

static void x5u_header_rejected_never_fetched(void)
{
    check_header_rejected(
        "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"x5u\":\"http://127.0.0.1:1/c.pem\"}");
}

static void embedded_jwk_header_rejected(void)
{
    /* The attacker embeds their own key: it must never be used. */
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"jwk\":%s}", ec_jwk);
    check_header_rejected(hdr);
}

static void x5c_header_rejected(void)
{
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":\"ec1\",\"x5c\":[\"MIIB\"]}");
}

static void typ_jwt_or_at_jwt_only(void)
{
    const char *ok[] = {"JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char hdr[128];
        snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"typ\":\"%s\"}", ok[i]);
        char *t = sign_ec(hdr, good());
        CHECK(verify(ks_ec, t) == JWT_OK);
        free(t);
    }
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":\"ec1\",\"typ\":\"JWE\"}");
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":\"ec1\",\"typ\":1}");
    check_header_rejected("{\"alg\":\"ES256\",\"kid\":7}");
}

/* ---- signatures ---- */

static void tampered_payload_bad_sig(void)
{
    char *t = jwt_sign(dev, good());
    char *p = strchr(t, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
    CHECK(verify(ks_dev, t) == JWT_BAD_SIG);
    free(t);
    t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", good());
    p = strchr(t, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
    CHECK(verify(ks_rsa, t) == JWT_BAD_SIG);
    free(t);
}

static void tampered_signature_bad_sig(void)
{
    char *t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", good());
    char *p = strrchr(t, '.') + 3;
    *p = *p == 'A' ? 'B' : 'A';
    CHECK(verify(ks_ec, t) == JWT_BAD_SIG);
    free(t);
}

/* Minimal DER SEQUENCE { INTEGER r, INTEGER s } from r||s. */
static size_t der_from_raw(const unsigned char rs[64], unsigned char *out)
{
    size_t n = 2;
    for (int i = 0; i < 2; i++) {
        const unsigned char *v = rs + 32 * i;
        size_t len = 32;
        while (len > 1 && *v == 0) {
            v++;
            len--;
        }
        int pad = v[0] & 0x80 ? 1 : 0;
        out[n++] = 0x02;
        out[n++] = (unsigned char)(len + (size_t)pad);
        if (pad) out[n++] = 0;
        memcpy(out + n, v, len);
        n += len;
    }
    out[0] = 0x30;
    out[1] = (unsigned char)(n - 2);
    return n;
}

static void es256_der_signature_rejected(void)
{
    const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
    char *in = signing_input(hdr, good());
    unsigned char rs[64], der[80];
    ec_sign_raw(in, rs);
    size_t n = der_from_raw(rs, der);
    /* The DER form is itself a valid signature... */
    unsigned char x[32], y[32];
    mbedtls_mpi_write_binary(&ec.Q.X, x, 32);
    mbedtls_mpi_write_binary(&ec.Q.Y, y, 32);
    CHECK(jwt_verify_es256_der(x, 32, y, 32, (unsigned char *)in, strlen(in), der, n) == 0);
    CHECK(jwt_verify_es256_raw(x, 32, y, 32, (unsigned char *)in, strlen(in), rs, 64) == 0);
    /* ...but JWS wants raw r||s. */
    append_sig(in, der, n);
    CHECK(verify(ks_ec, in) == JWT_BAD_SIG);
    free(in);
}

static void signature_of_wrong_length_rejected(void)
{
    const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
    char *in = signing_input(hdr, good());
    unsigned char rs[66];
    ec_sign_raw(in, rs);
    rs[64] = rs[65] = 0;
    char *base = strdup(in);
    strcpy(in, base);
    CHECK(verify(ks_ec, append_sig(in, rs, 63)) == JWT_BAD_SIG);
    strcpy(in, base);
    CHECK(verify(ks_ec, append_sig(in, rs, 65)) == JWT_BAD_SIG);
    strcpy(in, base);
    CHECK(verify(ks_ec, append_sig(in, rs, 66)) == JWT_BAD_SIG);
    strcpy(in, base);
    CHECK(verify(ks_ec, append_sig(in, rs, 64)) == JWT_OK);
    free(in);
    free(base);
    /* RS256: one byte short or a leading zero byte prepended. */
    char *t = sign_rs("{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", good());
    char *dot = strrchr(t, '.');
    unsigned char sig[260];
    long n = util_b64url_decode(dot + 1, strlen(dot + 1), sig + 1);
    CHECK(n == 256);
    sig[0] = 0;
    dot[0] = '\0';
    char *t2 = signing_input("{}", "{}"); /* scratch with room */
    snprintf(t2, 1024, "%s", t);
    CHECK(verify(ks_rsa, append_sig(t2, sig + 1, 255)) == JWT_BAD_SIG);
    snprintf(t2, 1024, "%s", t);
    CHECK(verify(ks_rsa, append_sig(t2, sig, 257)) == JWT_BAD_SIG);
    free(t);
    free(t2);
}

/* ---- shape and encoding ---- */

static void two_and_four_segments_malformed(void)
{
    char *t = jwt_sign(dev, good());
    char *last = strrchr(t, '.');
    char two[4096], four[4096];
    snprintf(two, sizeof two, "%.*s", (int)(last - t), t);
    snprintf(four, sizeof four, "%s.AAAA", t);
    CHECK(verify(ks_dev, two) == JWT_MALFORMED);
    CHECK(verify(ks_dev, four) == JWT_MALFORMED);
    snprintf(four, sizeof four, "%s.", t);
    CHECK(verify(ks_dev, four) == JWT_MALFORMED);
    CHECK(verify(ks_dev, "") == JWT_MALFORMED);
    CHECK(verify(ks_dev, "..") == JWT_MALFORMED);
    free(t);
}

/* Re-encodes the token's signature with alternative base64 text. */
static void bad_base64url_rejected(void)
{
    char *t = jwt_sign(dev, good());
    CHECK(verify(ks_dev, t) == JWT_OK);
    size_t n = strlen(t);
    char buf[4096];
    /* '=' padding after the header (it is 52 chars, so try pad on the
     * signature: 86 chars -> "==" completes the quantum). */
    snprintf(buf, sizeof buf, "%s==", t);
    CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s", t);
    char *p = strchr(buf, '.');
    memmove(p + 1, p, strlen(p) + 1);
    *p = '='; /* header "...=." */
    CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
    /* '-' and '_' swapped for '+' and '/' (standard alphabet) */
    snprintf(buf, sizeof buf, "%s", t);
    int swapped = 0;
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '-') {
            buf[i] = '+';
            swapped = 1;
        } else if (buf[i] == '_') {
            buf[i] = '/';
            swapped = 1;
        }
    }
    if (swapped) CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
    const char *bad[] = {"+", "/", "!", " ", "\n", "%", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(buf, sizeof buf, "%s", t);
        buf[10] = bad[i][0]; /* in the header */
        CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
        snprintf(buf, sizeof buf, "%s", t);
        buf[n - 10] = bad[i][0]; /* in the signature */
        CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
    }
    /* Non-canonical trailing bits: last char of the 86-char signature
     * carries 4 unused bits. */
    snprintf(buf, sizeof buf, "%s", t);
    char *last = &buf[n - 1];
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(alpha, *last) - alpha);
    *last = alpha[v | 1];
    if ((v | 1) != v) CHECK(verify(ks_dev, buf) == JWT_MALFORMED);
    free(t);
}

static void header_and_payload_must_be_json_objects(void)
{
    const char *h = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
    char *t = sign_ec("[\"alg\",\"ES256\"]", good());
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"} x", good());
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"}{}", good());
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    t = sign_ec(h, "[1,2]");
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    t = sign_ec(h, "\"sub\"");
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    char trailing[512];
    snprintf(trailing, sizeof trailing, "%s garbage", good());
    t = sign_ec(h, trailing);
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    /* Trailing whitespace is still one JSON value. */
    snprintf(trailing, sizeof trailing, "%s \n", good());
    t = sign_ec(h, trailing);
    CHECK(verify(ks_ec, t) == JWT_OK);
    free(t);
}

static void oversized_token_rejected(void)
{
    size_t n = JWT_MAX_TOKEN + 1;
    char *big = malloc(n + 1);
    memset(big, 'A', n);
    big[10] = '.';
    big[20] = '.';
    big[n] = '\0';
    CHECK(verify(ks_dev, big) == JWT_MALFORMED);
    free(big);
    /* A large but bounded claim set still works. */
    char *pad = malloc(8001);
    memset(pad, 'x', 8000);
    pad[8000] = '\0';
    char *c = malloc(9000);
    snprintf(c, 9000, "{\"sub\":\"u\",\"exp\":%lld,\"pad\":\"%s\"}", NOW + 10, pad);
    char *t = jwt_sign(dev, c);
    CHECK(t && verify(ks_dev, t) == JWT_OK);
    free(t);
    free(c);
    free(pad);
}

/* ---- claims ---- */

static enum jwt_status dev_claims(const char *c, const struct jwt_opts *o)
{
    char *t = jwt_sign(dev, c);
    if (!t) return (enum jwt_status)98;
    enum jwt_status st = verify_o(ks_dev, t, o);
    free(t);
    return st;
}

static void expired_beyond_skew_rejected(void)
{
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 61), &opts) == JWT_EXPIRED);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 60), &opts) == JWT_EXPIRED);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 86400), &opts) == JWT_EXPIRED);
}

static void expired_within_skew_accepted(void)
{
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 59), &opts) == JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 30), &opts) == JWT_OK);
    struct jwt_opts strict = opts;
    strict.skew = 0;
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW - 30), &strict) == JWT_EXPIRED);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", NOW + 1), &strict) == JWT_OK);
}

static void times_may_be_decimals(void)
{
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld.5}", NOW + 10), &opts) == JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld.5}", NOW - 100), &opts) == JWT_EXPIRED);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":1.8e9}"), &opts) == JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":\"%lld\"}", NOW + 10), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":true}"), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":null}"), &opts) == JWT_BAD_CLAIM);
}

static void missing_exp_rejected(void)
{
    CHECK(dev_claims("{\"sub\":\"u\"}", &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"iat\":%lld}", NOW), &opts) == JWT_BAD_CLAIM);
}

static void nbf_in_future_rejected(void)
{
    long long exp = NOW + 3600;
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"nbf\":%lld}", exp, NOW + 61), &opts) ==
          JWT_NOT_YET);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"nbf\":%lld}", exp, NOW + 60), &opts) ==
          JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"nbf\":%lld}", exp, NOW - 10), &opts) ==
          JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"nbf\":\"x\"}", exp), &opts) ==
          JWT_BAD_CLAIM);
}

static void iat_in_future_rejected(void)
{
    long long exp = NOW + 3600;
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"iat\":%lld}", exp, NOW + 120), &opts) ==
          JWT_NOT_YET);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"iat\":%lld}", exp, NOW + 30), &opts) ==
          JWT_OK);
}

static void issuer_checked_when_configured(void)
{
    struct jwt_opts o = opts;
    o.issuer = "https://clerk.example.com";
    long long exp = NOW + 3600;
    CHECK(dev_claims(
              claims("{\"sub\":\"u\",\"exp\":%lld,\"iss\":\"https://clerk.example.com\"}", exp),
              &o) == JWT_OK);
    CHECK(
        dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"iss\":\"https://evil.example.com\"}", exp),
                   &o) == JWT_BAD_CLAIM);
    CHECK(dev_claims(
              claims("{\"sub\":\"u\",\"exp\":%lld,\"iss\":\"https://clerk.example.com/\"}", exp),
              &o) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", exp), &o) == JWT_BAD_CLAIM);
    /* An embedded NUL must not truncate the comparison. */
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,"
                            "\"iss\":\"https://clerk.example.com\\u0000.evil\"}",
                            exp),
                     &o) == JWT_BAD_CLAIM);
    /* Not configured: any iss passes. */
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"iss\":\"anyone\"}", exp), &opts) ==
          JWT_OK);
}

static void audience_checked_string_or_array(void)
{
    struct jwt_opts o = opts;
    o.audience = "reeld";
    long long exp = NOW + 3600;
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"aud\":\"reeld\"}", exp), &o) == JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"aud\":[\"other\",\"reeld\"]}", exp),
                     &o) == JWT_OK);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"aud\":\"other\"}", exp), &o) ==
          JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"aud\":[\"other\",1]}", exp), &o) ==
          JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"aud\":[]}", exp), &o) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", exp), &o) == JWT_BAD_CLAIM);
}

static void azp_checked_against_comma_list(void)
{
    struct jwt_opts o = opts;
    o.azp = "https://app.example.com, http://localhost:3000";
    long long exp = NOW + 3600;
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"azp\":\"http://localhost:3000\"}", exp),
                     &o) == JWT_OK);
    CHECK(
        dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"azp\":\"https://app.example.com\"}", exp),
                   &o) == JWT_OK);
    CHECK(
        dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"azp\":\"https://evil.example.com\"}", exp),
                   &o) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"azp\":\"http://localhost\"}", exp),
                     &o) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld,\"azp\":\"\"}", exp), &o) ==
          JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"u\",\"exp\":%lld}", exp), &o) == JWT_BAD_CLAIM);
}

static void missing_or_empty_sub_rejected(void)
{
    long long exp = NOW + 3600;
    CHECK(dev_claims(claims("{\"exp\":%lld}", exp), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"\",\"exp\":%lld}", exp), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":42,\"exp\":%lld}", exp), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":null,\"exp\":%lld}", exp), &opts) == JWT_BAD_CLAIM);
    CHECK(dev_claims(claims("{\"sub\":\"\\u0000x\",\"exp\":%lld}", exp), &opts) == JWT_BAD_CLAIM);
}

/* ---- keysets ---- */

static void keyset_skips_invalid_ec_point(void)
{
    /* Flip a bit of y: (x, y') is not on P-256. */
    char bad[512];
    snprintf(bad, sizeof bad, "%s", ec_jwk);
    char *y = strstr(bad, "\"y\":\"") + 5;
    y[3] = y[3] == 'A' ? 'B' : 'A';
    CHECK(parse(bad) == NULL);
    char doc[2048];
    snprintf(doc, sizeof doc, "{\"keys\":[%s,%s]}", bad, rsa_jwk);
    struct jwt_keyset *ks = parse(doc);
    CHECK(ks && jwt_keyset_count(ks) == 1);
    /* The skipped key's kid is now unknown. */
    char *t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", good());
    CHECK(verify(ks, t) == JWT_UNKNOWN_KID);
    free(t);
    jwt_keyset_free(ks);
    /* The point at infinity / zero coordinates are not keys either. */
    CHECK(parse("{\"kty\":\"EC\",\"crv\":\"P-256\","
                "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}") == NULL);
}

static void keyset_skips_unusable_keys(void)
{
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"keys\":["
             "{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"h\"},"
             "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"
             "7TyWQHOg7hcvPapiMlrwIaaPcHURo\"},"
             "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"},"
             "%s,%s]}",
             rsa_jwk, ec_jwk);
    struct jwt_keyset *ks = parse(doc);
    CHECK(ks && jwt_keyset_count(ks) == 2);
    jwt_keyset_free(ks);
    /* use=enc, key_ops without verify, a foreign alg: skipped. */
    char k[1200];
    snprintf(k, sizeof k, "{\"use\":\"enc\",%s", rsa_jwk + 1);
    CHECK(parse(k) == NULL);
    snprintf(k, sizeof k, "{\"use\":\"sig\",%s", rsa_jwk + 1);
    ks = parse(k);
    CHECK(ks != NULL);
    jwt_keyset_free(ks);
    snprintf(k, sizeof k, "{\"key_ops\":[\"encrypt\"],%s", rsa_jwk + 1);
    CHECK(parse(k) == NULL);
    snprintf(k, sizeof k, "{\"key_ops\":[\"verify\"],%s", rsa_jwk + 1);
    ks = parse(k);
    CHECK(ks != NULL);
    jwt_keyset_free(ks);
    snprintf(k, sizeof k, "{\"alg\":\"PS256\",%s", rsa_jwk + 1);
    CHECK(parse(k) == NULL);
    snprintf(k, sizeof k, "{\"alg\":\"ES256\",%s", rsa_jwk + 1);
    CHECK(parse(k) == NULL);
    snprintf(k, sizeof k, "{\"alg\":\"RS256\",%s", rsa_jwk + 1);
    ks = parse(k);
    CHECK(ks != NULL);
    jwt_keyset_free(ks);
    /* Not JSON, not an object, keys not an array, trailing garbage. */
    CHECK(parse("nope") == NULL);
    CHECK(parse("[]") == NULL);
    CHECK(parse("{\"keys\":{}}") == NULL);
    CHECK(parse("{\"keys\":[]}") == NULL);
    snprintf(k, sizeof k, "%s x", rsa_jwk);
    CHECK(parse(k) == NULL);
    CHECK(jwt_keyset_count(NULL) == 0);
    jwt_keyset_free(NULL);
}

static void keyset_rejects_short_rsa_modulus(void)
{
    mbedtls_rsa_context small;
    mbedtls_rsa_init(&small, MBEDTLS_RSA_PKCS_V15, 0);
    CHECK(mbedtls_rsa_gen_key(&small, mbedtls_ctr_drbg_random, &drbg, 1024, 65537) == 0);
    unsigned char n[128], e[3];
    CHECK(mbedtls_rsa_export_raw(&small, n, sizeof n, NULL, 0, NULL, 0, NULL, 0, e, 3) == 0);
    char *ns = b64(n, sizeof n), *es = b64(e, 3);
    char jwk[512];
    snprintf(jwk, sizeof jwk, "{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"}", ns, es);
    CHECK(parse(jwk) == NULL);
    free(ns);
    free(es);
    mbedtls_rsa_free(&small);
}

/* ---- dev signer ---- */

static void dev_key_file_is_private_and_reloaded(void)
{
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "%s/dev.pem", tmpdir);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    char err[128];
    struct jwt_signer *again = jwt_signer_load_or_create(path, err, sizeof err);
    CHECK(again != NULL);
    if (again) {
        char *t = jwt_sign(again, good());
        CHECK(t && verify(ks_dev, t) == JWT_OK); /* same key as the first load */
        free(t);
        jwt_signer_free(again);
    }
    /* No temporary file left next to it. */
    DIR *d = opendir(tmpdir);
    int entries = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') entries++;
    if (d) closedir(d);
    CHECK(entries == 1);
}

static void dev_signer_refuses_bad_input(void)
{
    char path[128], err[128];
    CHECK(jwt_sign(dev, "not json") == NULL);
    CHECK(jwt_sign(dev, "[1]") == NULL);
    CHECK(jwt_sign(dev, "{} {}") == NULL);
    CHECK(jwt_sign(NULL, "{}") == NULL);
    CHECK(jwt_signer_keyset(NULL) == NULL);
    snprintf(path, sizeof path, "%s/no/such/dir/dev.pem", tmpdir);
    CHECK(jwt_signer_load_or_create(path, err, sizeof err) == NULL);
    snprintf(path, sizeof path, "%s/garbage.pem", tmpdir);
    FILE *f = fopen(path, "w");
    fputs("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", f);
    fclose(f);
    CHECK(jwt_signer_load_or_create(path, err, sizeof err) == NULL);
    unlink(path);
}

static void dev_signatures_are_deterministic(void)
{
    char *a = jwt_sign(dev, good()), *b = jwt_sign(dev, good());
    CHECK(a && b && strcmp(a, b) == 0);
    free(a);
    free(b);
}

static void status_names_are_stable(void)
{
    CHECK_STR(jwt_status_str(JWT_OK), "ok");
    CHECK_STR(jwt_status_str(JWT_UNKNOWN_KID), "unknown_kid");
    CHECK_STR(jwt_status_str(JWT_BAD_SIG), "bad_sig");
    CHECK_STR(jwt_status_str((enum jwt_status)77), "unknown");
}

static void jws_layer_returns_payload_bytes(void)
{
    char *t = sign_ec("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", "not json at all");
    unsigned char *p = NULL;
    size_t n = 0;
    CHECK(jwt_verify_jws(ks_ec, t, strlen(t), &p, &n, NULL, 0) == JWT_OK);
    CHECK(p && n == 15 && memcmp(p, "not json at all", 15) == 0);
    free(p);
    /* The same token is not a JWT. */
    CHECK(verify(ks_ec, t) == JWT_MALFORMED);
    free(t);
    CHECK(jwt_verify(ks_ec, "a.b.c", 5, NULL, NULL, NULL, 0) != JWT_OK);
}

static void teardown(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/dev.pem", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    jwt_keyset_free(ks_dev);
    jwt_keyset_free(ks_rsa);
    jwt_keyset_free(ks_ec);
    jwt_keyset_free(ks_both);
    jwt_signer_free(dev);
    mbedtls_rsa_free(&rsa);
    mbedtls_ecp_keypair_free(&ec);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
}

int main(void)
{
    setup();
    TEST(es256_token_from_dev_signer_verifies);
    TEST(rs256_token_verifies);
    TEST(es256_token_with_test_key_verifies);
    TEST(alg_none_rejected);
    TEST(hs256_signed_with_rsa_public_key_pem_rejected);
    TEST(hs256_signed_with_rsa_public_key_der_rejected);
    TEST(rs256_token_presented_to_ec_key_rejected);
    TEST(other_algs_rejected);
    TEST(unknown_kid_reported);
    TEST(kid_required_when_keyset_has_several_keys);
    TEST(key_without_kid_serves_a_lone_keyset);
    TEST(crit_header_rejected);
    TEST(jku_header_rejected_never_fetched);
    TEST(x5u_header_rejected_never_fetched);
    TEST(embedded_jwk_header_rejected);
    TEST(x5c_header_rejected);
    TEST(typ_jwt_or_at_jwt_only);
    TEST(tampered_payload_bad_sig);
    TEST(tampered_signature_bad_sig);
    TEST(es256_der_signature_rejected);
    TEST(signature_of_wrong_length_rejected);
    TEST(two_and_four_segments_malformed);
    TEST(bad_base64url_rejected);
    TEST(header_and_payload_must_be_json_objects);
    TEST(oversized_token_rejected);
    TEST(expired_beyond_skew_rejected);
    TEST(expired_within_skew_accepted);
    TEST(times_may_be_decimals);
    TEST(missing_exp_rejected);
    TEST(nbf_in_future_rejected);
    TEST(iat_in_future_rejected);
    TEST(issuer_checked_when_configured);
    TEST(audience_checked_string_or_array);
    TEST(azp_checked_against_comma_list);
    TEST(missing_or_empty_sub_rejected);
    TEST(keyset_skips_invalid_ec_point);
    TEST(keyset_skips_unusable_keys);
    TEST(keyset_rejects_short_rsa_modulus);
    TEST(dev_key_file_is_private_and_reloaded);
    TEST(dev_signer_refuses_bad_input);
    TEST(dev_signatures_are_deterministic);
    TEST(status_names_are_stable);
    TEST(jws_layer_returns_payload_bytes);
    teardown();
    T_EXIT();
}
