/* JWK / JWKS parsing and the RS256 / ES256 signature primitives.
 *
 * A key is checked once, when the document is parsed: RSA moduli of
 * 2048..8192 bits with a small odd exponent, EC points on P-256. Keys are
 * kept as ready mbedTLS contexts so a verification does no parsing. */
#include "jwk.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/md.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "reeld/util.h"

struct jwk_key {
    enum jwk_alg alg;
    char *kid; /* NULL when the JWK has none */
    mbedtls_rsa_context rsa;
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
};

struct jwt_keyset {
    int n;
    struct jwk_key *keys;
};

void jwk_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

struct json_object *jwk_json_parse(const char *buf, size_t len)
{
    if (!buf || len == 0 || len > JWK_MAX_DOC || memchr(buf, '\0', len)) return NULL;
    struct json_tokener *tok = json_tokener_new_ex(32);
    if (!tok) return NULL;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 |
                                    JSON_TOKENER_ALLOW_TRAILING_CHARS);
    struct json_object *obj = json_tokener_parse_ex(tok, buf, (int)len);
    int ok = obj && json_tokener_get_error(tok) == json_tokener_success;
    for (size_t i = ok ? json_tokener_get_parse_end(tok) : len; ok && i < len; i++)
        if (!strchr(" \t\r\n", buf[i])) ok = 0;
    json_tokener_free(tok);
    if (!ok) {
        json_object_put(obj);
        return NULL;
    }
    return obj;
}

/* ---- primitives ---- */

/* Import n/e (big-endian, leading zeros allowed) into an initialized PKCS#1
 * v1.5 context and check it is a key we accept. */
static int rsa_key_init(mbedtls_rsa_context *rsa, const unsigned char *n, size_t nlen,
                        const unsigned char *e, size_t elen, const char **why)
{
    *why = "bad RSA key";
    if (!n || !e || nlen == 0 || elen == 0 || nlen > JWK_RSA_MAX_BITS / 8 + 1 || elen > 16)
        return -1;
    if (mbedtls_rsa_import_raw(rsa, n, nlen, NULL, 0, NULL, 0, NULL, 0, e, elen) != 0 ||
        mbedtls_rsa_complete(rsa) != 0 || mbedtls_rsa_check_pubkey(rsa) != 0)
        return -1;
    mbedtls_mpi N, E;
    mbedtls_mpi_init(&N);
    mbedtls_mpi_init(&E);
    int rc = mbedtls_rsa_export(rsa, &N, NULL, NULL, NULL, &E);
    size_t nbits = mbedtls_mpi_bitlen(&N), ebits = mbedtls_mpi_bitlen(&E);
    mbedtls_mpi_free(&N);
    mbedtls_mpi_free(&E);
    if (rc != 0) return -1;
    if (nbits < JWK_RSA_MIN_BITS || nbits > JWK_RSA_MAX_BITS) {
        *why = "RSA modulus size out of range";
        return -1;
    }
    /* A huge public exponent makes each verification cost a private-key
     * operation: keep it to what real keys use (3, 65537). */
    if (ebits > 64) {
        *why = "RSA exponent too large";
        return -1;
    }
    return 0;
}

static int ec_key_init(mbedtls_ecp_group *grp, mbedtls_ecp_point *q, const unsigned char *x,
                       size_t xlen, const unsigned char *y, size_t ylen, const char **why)
{
    *why = "bad EC key";
    if (!x || !y || xlen == 0 || ylen == 0 || xlen > 33 || ylen > 33) return -1;
    if (mbedtls_ecp_group_load(grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        mbedtls_mpi_read_binary(&q->X, x, xlen) != 0 ||
        mbedtls_mpi_read_binary(&q->Y, y, ylen) != 0 || mbedtls_mpi_lset(&q->Z, 1) != 0)
        return -1;
    if (mbedtls_ecp_check_pubkey(grp, q) != 0) {
        *why = "EC point not on P-256";
        return -1;
    }
    return 0;
}

static int rsa_verify(mbedtls_rsa_context *rsa, const unsigned char hash[32],
                      const unsigned char *sig, size_t siglen)
{
    if (!sig || siglen != mbedtls_rsa_get_len(rsa)) return -1;
    return mbedtls_rsa_pkcs1_verify(rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC, MBEDTLS_MD_SHA256, 32,
                                    hash, sig) == 0
               ? 0
               : -1;
}

static int ec_verify(mbedtls_ecp_group *grp, const mbedtls_ecp_point *q,
                     const unsigned char hash[32], const unsigned char *sig, size_t siglen)
{
    if (!sig || siglen != 64) return -1;
    mbedtls_mpi r, s;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    int rc = -1;
    /* mbedtls_ecdsa_verify rejects r or s outside [1, n-1]. */
    if (mbedtls_mpi_read_binary(&r, sig, 32) == 0 &&
        mbedtls_mpi_read_binary(&s, sig + 32, 32) == 0 &&
        mbedtls_ecdsa_verify(grp, hash, 32, q, &r, &s) == 0)
        rc = 0;
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
    return rc;
}

static int sha256(const unsigned char *msg, size_t len, unsigned char out[32])
{
    static const unsigned char empty = 0;
    return mbedtls_sha256_ret(msg ? msg : &empty, len, out, 0) == 0 ? 0 : -1;
}

int jwk_verify_hash(const struct jwk_key *k, const unsigned char hash[32], const unsigned char *sig,
                    size_t siglen)
{
    /* mbedTLS takes these contexts non-const (RSA blinding state, the
     * comb table cached in the group); the key material never changes. */
    struct jwk_key *mk = (struct jwk_key *)k;
    if (k->alg == JWK_RS256) return rsa_verify(&mk->rsa, hash, sig, siglen);
    return ec_verify(&mk->grp, &mk->q, hash, sig, siglen);
}

int jwt_verify_rs256_raw(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen,
                         const unsigned char *msg, size_t msglen, const unsigned char *sig,
                         size_t siglen)
{
    unsigned char hash[32];
    const char *why;
    mbedtls_rsa_context rsa;
    mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
    int rc = -1;
    if (rsa_key_init(&rsa, n, nlen, e, elen, &why) == 0 && sha256(msg, msglen, hash) == 0)
        rc = rsa_verify(&rsa, hash, sig, siglen);
    mbedtls_rsa_free(&rsa);
    return rc;
}

int jwt_verify_es256_raw(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                         const unsigned char *msg, size_t msglen, const unsigned char *sig,
                         size_t siglen)
{
    unsigned char hash[32];
    const char *why;
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    int rc = -1;
    if (ec_key_init(&grp, &q, x, xlen, y, ylen, &why) == 0 && sha256(msg, msglen, hash) == 0)
        rc = ec_verify(&grp, &q, hash, sig, siglen);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    return rc;
}

/* One DER INTEGER of at most 32 value bytes, minimally encoded and
 * non-negative, right-aligned into out[32]. Advances *p. */
static int der_uint256(const unsigned char **p, const unsigned char *end, unsigned char out[32])
{
    const unsigned char *c = *p;
    if (end - c < 2 || c[0] != 0x02) return -1;
    size_t len = c[1];
    if (len == 0 || len >= 0x80 || len > (size_t)(end - c - 2)) return -1;
    const unsigned char *v = c + 2;
    /* Negative, or a leading zero byte that is not needed: not DER. */
    if (v[0] & 0x80) return -1;
    if (len > 1 && v[0] == 0 && !(v[1] & 0x80)) return -1;
    *p = v + len;
    if (v[0] == 0 && len > 1) {
        v++;
        len--;
    }
    if (len > 32) return -1;
    memset(out, 0, 32);
    memcpy(out + 32 - len, v, len);
    return 0;
}

int jwt_verify_es256_der(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                         const unsigned char *msg, size_t msglen, const unsigned char *der,
                         size_t derlen)
{
    /* SEQUENCE { INTEGER r, INTEGER s } is at most 2 + 2 * 35 = 72 bytes,
     * so DER requires the short length form; BER variants are refused. */
    unsigned char rs[64];
    if (!der || derlen < 8 || derlen > 72 || der[0] != 0x30 || der[1] != derlen - 2) return -1;
    const unsigned char *p = der + 2, *end = der + derlen;
    if (der_uint256(&p, end, rs) != 0 || der_uint256(&p, end, rs + 32) != 0 || p != end) return -1;
    return jwt_verify_es256_raw(x, xlen, y, ylen, msg, msglen, rs, sizeof rs);
}

/* ---- JWK parsing ---- */

const char *jwk_cstr(struct json_object *v)
{
    if (!json_object_is_type(v, json_type_string)) return NULL;
    const char *s = json_object_get_string(v);
    return strlen(s) == (size_t)json_object_get_string_len(v) ? s : NULL;
}

static const char *jstr(struct json_object *o, const char *name)
{
    struct json_object *v;
    return json_object_object_get_ex(o, name, &v) ? jwk_cstr(v) : NULL;
}

/* Base64url member decoded into a malloc'd buffer; NULL when absent or
 * not strict base64url. */
static unsigned char *jb64(struct json_object *o, const char *name, size_t *outlen)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (n == 0 || n > 4096) return NULL;
    unsigned char *buf = malloc(3 * (n / 4) + 3);
    if (!buf) return NULL;
    long m = util_b64url_decode(s, n, buf);
    if (m <= 0) {
        free(buf);
        return NULL;
    }
    *outlen = (size_t)m;
    return buf;
}

static void key_init(struct jwk_key *k)
{
    memset(k, 0, sizeof *k);
    mbedtls_rsa_init(&k->rsa, MBEDTLS_RSA_PKCS_V15, 0);
    mbedtls_ecp_group_init(&k->grp);
    mbedtls_ecp_point_init(&k->q);
}

static void key_free(struct jwk_key *k)
{
    free(k->kid);
    mbedtls_rsa_free(&k->rsa);
    mbedtls_ecp_point_free(&k->q);
    mbedtls_ecp_group_free(&k->grp);
}

/* use must be "sig" and key_ops must contain "verify" when present. */
static int usable_for_verify(struct json_object *jwk)
{
    struct json_object *v;
    if (json_object_object_get_ex(jwk, "use", &v)) {
        const char *use = jwk_cstr(v);
        if (!use || strcmp(use, "sig") != 0) return 0;
    }
    if (json_object_object_get_ex(jwk, "key_ops", &v)) {
        if (!json_object_is_type(v, json_type_array)) return 0;
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            const char *op = jwk_cstr(json_object_array_get_idx(v, i));
            if (op && strcmp(op, "verify") == 0) return 1;
        }
        return 0;
    }
    return 1;
}

static int parse_rsa(struct json_object *jwk, struct jwk_key *k, const char **why)
{
    size_t nlen = 0, elen = 0;
    unsigned char *n = jb64(jwk, "n", &nlen), *e = jb64(jwk, "e", &elen);
    int rc = -1;
    *why = "RSA key without valid n/e";
    if (n && e) rc = rsa_key_init(&k->rsa, n, nlen, e, elen, why);
    free(n);
    free(e);
    return rc;
}

static int parse_ec(struct json_object *jwk, struct jwk_key *k, const char **why)
{
    const char *crv = jstr(jwk, "crv");
    if (!crv || strcmp(crv, "P-256") != 0) {
        *why = "EC curve is not P-256";
        return -1;
    }
    size_t xlen = 0, ylen = 0;
    unsigned char *x = jb64(jwk, "x", &xlen), *y = jb64(jwk, "y", &ylen);
    int rc = -1;
    *why = "EC key x/y are not 32 bytes of base64url";
    if (x && y && xlen == 32 && ylen == 32) rc = ec_key_init(&k->grp, &k->q, x, xlen, y, ylen, why);
    free(x);
    free(y);
    return rc;
}

/* Fill k from one JWK object. Returns 0 when the key is usable, -1 when
 * it is skipped (*why says why). */
static int parse_jwk(struct json_object *jwk, struct jwk_key *k, const char **why)
{
    if (!json_object_is_type(jwk, json_type_object)) {
        *why = "key is not an object";
        return -1;
    }
    const char *kty = jstr(jwk, "kty");
    if (!kty || (strcmp(kty, "RSA") != 0 && strcmp(kty, "EC") != 0)) {
        *why = "unsupported kty";
        return -1;
    }
    if (!usable_for_verify(jwk)) {
        *why = "key not for signature verification (use/key_ops)";
        return -1;
    }
    k->alg = strcmp(kty, "RSA") == 0 ? JWK_RS256 : JWK_ES256;
    struct json_object *v;
    if (json_object_object_get_ex(jwk, "alg", &v)) {
        const char *alg = jwk_cstr(v);
        if (!alg || strcmp(alg, k->alg == JWK_RS256 ? "RS256" : "ES256") != 0) {
            *why = "unsupported alg";
            return -1;
        }
    }
    if (json_object_object_get_ex(jwk, "kid", &v)) {
        const char *kid = jwk_cstr(v);
        if (!kid || strlen(kid) > JWK_MAX_KID) {
            *why = "kid is not a short string";
            return -1;
        }
        k->kid = strdup(kid);
        if (!k->kid) {
            *why = "out of memory";
            return -1;
        }
    }
    return k->alg == JWK_RS256 ? parse_rsa(jwk, k, why) : parse_ec(jwk, k, why);
}

struct jwt_keyset *jwt_keyset_parse(const char *json, size_t len, char *err, size_t errlen)
{
    struct json_object *doc = jwk_json_parse(json, len);
    if (!doc || !json_object_is_type(doc, json_type_object)) {
        jwk_seterr(err, errlen, "JWKS is not a JSON object");
        json_object_put(doc);
        return NULL;
    }
    struct json_object *arr = NULL;
    size_t total = 1;
    if (json_object_object_get_ex(doc, "keys", &arr)) {
        if (!json_object_is_type(arr, json_type_array)) {
            jwk_seterr(err, errlen, "JWKS \"keys\" is not an array");
            json_object_put(doc);
            return NULL;
        }
        total = json_object_array_length(arr);
    }
    struct jwt_keyset *ks = calloc(1, sizeof *ks);
    size_t cap = total < JWK_MAX_KEYS ? total : JWK_MAX_KEYS;
    if (!ks || !(ks->keys = calloc(cap ? cap : 1, sizeof *ks->keys))) {
        free(ks);
        json_object_put(doc);
        jwk_seterr(err, errlen, "out of memory");
        return NULL;
    }
    const char *why = "no keys";
    for (size_t i = 0; i < total && (size_t)ks->n < cap; i++) {
        struct jwk_key *k = &ks->keys[ks->n];
        key_init(k);
        if (parse_jwk(arr ? json_object_array_get_idx(arr, i) : doc, k, &why) == 0)
            ks->n++;
        else
            key_free(k);
    }
    json_object_put(doc);
    if (ks->n == 0) {
        jwk_seterr(err, errlen, "no usable key in JWKS (last: %s)", why);
        jwt_keyset_free(ks);
        return NULL;
    }
    return ks;
}

void jwt_keyset_free(struct jwt_keyset *ks)
{
    if (!ks) return;
    for (int i = 0; i < ks->n; i++)
        key_free(&ks->keys[i]);
    free(ks->keys);
    free(ks);
}

int jwt_keyset_count(const struct jwt_keyset *ks)
{
    return ks ? ks->n : 0;
}

enum jwt_status jwk_select(const struct jwt_keyset *ks, const char *kid, enum jwk_alg alg,
                           const struct jwk_key **out, const char **why)
{
    const struct jwk_key *k = NULL;
    *why = "unknown kid";
    if (!ks || ks->n == 0) return JWT_UNKNOWN_KID;
    if (kid) {
        int seen = 0;
        for (int i = 0; i < ks->n && !k; i++) {
            if (ks->keys[i].kid && strcmp(ks->keys[i].kid, kid) == 0) {
                seen = 1;
                if (ks->keys[i].alg == alg) k = &ks->keys[i];
            }
        }
        if (!k && seen) {
            *why = "alg differs from the key's alg";
            return JWT_BAD_ALG;
        }
        if (!k && ks->n == 1 && !ks->keys[0].kid) k = &ks->keys[0];
        if (!k) return JWT_UNKNOWN_KID;
    } else {
        if (ks->n > 1) {
            *why = "token has no kid and the keyset holds several keys";
            return JWT_BAD_HEADER;
        }
        k = &ks->keys[0];
    }
    if (k->alg != alg) {
        *why = "alg differs from the key's alg";
        return JWT_BAD_ALG;
    }
    *out = k;
    return JWT_OK;
}
