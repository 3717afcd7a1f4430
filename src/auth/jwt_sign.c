/* Dev-mode ES256 signer (contract: reeld/jwt.h).
 *
 * The key is generated once with CTR_DRBG seeded from mbedTLS entropy and
 * kept as a SEC1 PEM file of mode 0600. It is written to a temporary file
 * first and linked into place, so a crash never leaves a half-written key
 * and two processes starting together end up with the same key. */
#include "reeld/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

#include "jwk.h"
#include "reeld/util.h"

#define KEY_FILE_MAX 8192

struct signer_rng {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
};

struct jwt_signer {
    mbedtls_pk_context pk;
    /* Behind a pointer: signing draws blinding values from the DRBG, which
     * changes its state, while jwt_sign takes a const signer. */
    struct signer_rng *rng;
};

static const char dev_header[] = "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"dev\"}";

void jwt_signer_free(struct jwt_signer *s)
{
    if (!s) return;
    mbedtls_pk_free(&s->pk);
    if (s->rng) {
        mbedtls_ctr_drbg_free(&s->rng->drbg);
        mbedtls_entropy_free(&s->rng->entropy);
        free(s->rng);
    }
    free(s);
}

/* Reads the whole key file (bounded). Returns the length, 0 when the file
 * does not exist, -1 on error. buf gets a terminating NUL (PEM parsing
 * wants it counted in the length). */
static long read_key_file(const char *path, unsigned char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            close(fd);
            if (r < 0 || n == 0) return -1;
            break;
        }
        n += (size_t)r;
        if (n == cap - 1) {
            close(fd);
            return -1;
        }
    }
    buf[n] = '\0';
    return (long)n + 1;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Publishes pem at path without ever exposing a partial file. Returns 0
 * when written, 1 when another process created path first, -1 on error. */
static int store_key_file(const char *path, const unsigned char *pem, size_t len)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    int ok = fchmod(fd, 0600) == 0 && write_all(fd, pem, len) == 0 && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    int rc = -1;
    if (ok) rc = link(tmp, path) == 0 ? 0 : (errno == EEXIST ? 1 : -1);
    int saved = errno;
    unlink(tmp);
    errno = saved; /* the caller reports why the store failed */
    return rc;
}

static int generate_key(struct jwt_signer *s)
{
    if (mbedtls_pk_setup(&s->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0) return -1;
    return mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(s->pk),
                               mbedtls_ctr_drbg_random, &s->rng->drbg);
}

static int parse_key(struct jwt_signer *s, const unsigned char *pem, size_t len, char *err,
                     size_t errlen)
{
    if (mbedtls_pk_parse_key(&s->pk, pem, len, NULL, 0) != 0) {
        jwk_seterr(err, errlen, "dev key file is not a PEM private key");
        return -1;
    }
    if (mbedtls_pk_get_type(&s->pk) != MBEDTLS_PK_ECKEY ||
        mbedtls_pk_ec(s->pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
        jwk_seterr(err, errlen, "dev key file does not hold a P-256 key");
        return -1;
    }
    return 0;
}

static int load_or_create(struct jwt_signer *s, const char *path, char *err, size_t errlen)
{
    unsigned char buf[KEY_FILE_MAX];
    long n = read_key_file(path, buf, sizeof buf);
    if (n < 0) {
        jwk_seterr(err, errlen, "cannot read dev key %s", path);
        return -1;
    }
    if (n > 0) return parse_key(s, buf, (size_t)n, err, errlen);
    if (generate_key(s) != 0 || mbedtls_pk_write_key_pem(&s->pk, buf, sizeof buf) != 0) {
        jwk_seterr(err, errlen, "cannot generate dev key");
        return -1;
    }
    int rc = store_key_file(path, buf, strlen((const char *)buf));
    if (rc < 0) {
        jwk_seterr(err, errlen, "cannot write dev key %s: %s", path, strerror(errno));
        return -1;
    }
    if (rc == 0) return 0;
    /* Lost a creation race: use the key the other process stored. */
    mbedtls_pk_free(&s->pk);
    mbedtls_pk_init(&s->pk);
    n = read_key_file(path, buf, sizeof buf);
    if (n <= 0) {
        jwk_seterr(err, errlen, "cannot read dev key %s", path);
        return -1;
    }
    return parse_key(s, buf, (size_t)n, err, errlen);
}

struct jwt_signer *jwt_signer_load_or_create(const char *path, char *err, size_t errlen)
{
    static const char pers[] = "reeld-jwt-dev";
    if (!path || !*path) {
        jwk_seterr(err, errlen, "no dev key path");
        return NULL;
    }
    struct jwt_signer *s = calloc(1, sizeof *s);
    if (!s || !(s->rng = calloc(1, sizeof *s->rng))) {
        free(s);
        jwk_seterr(err, errlen, "out of memory");
        return NULL;
    }
    mbedtls_pk_init(&s->pk);
    mbedtls_entropy_init(&s->rng->entropy);
    mbedtls_ctr_drbg_init(&s->rng->drbg);
    if (mbedtls_ctr_drbg_seed(&s->rng->drbg, mbedtls_entropy_func, &s->rng->entropy,
                              (const unsigned char *)pers, sizeof pers - 1) != 0) {
        jwk_seterr(err, errlen, "cannot seed the random generator");
        jwt_signer_free(s);
        return NULL;
    }
    if (load_or_create(s, path, err, errlen) != 0) {
        jwt_signer_free(s);
        return NULL;
    }
    return s;
}

struct jwt_keyset *jwt_signer_keyset(const struct jwt_signer *s)
{
    if (!s) return NULL;
    const mbedtls_ecp_keypair *ec = mbedtls_pk_ec(s->pk);
    unsigned char x[32], y[32];
    char xs[48], ys[48], jwk[256];
    if (mbedtls_mpi_write_binary(&ec->Q.X, x, sizeof x) != 0 ||
        mbedtls_mpi_write_binary(&ec->Q.Y, y, sizeof y) != 0)
        return NULL;
    util_b64url_encode(x, sizeof x, xs);
    util_b64url_encode(y, sizeof y, ys);
    int n = snprintf(jwk, sizeof jwk,
                     "{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES256\",\"use\":\"sig\","
                     "\"kid\":\"dev\",\"x\":\"%s\",\"y\":\"%s\"}",
                     xs, ys);
    if (n < 0 || (size_t)n >= sizeof jwk) return NULL;
    return jwt_keyset_parse(jwk, (size_t)n, NULL, 0);
}

/* ECDSA P-256 over SHA-256 of input, as the 64-byte JWS r||s. */
static int es256_sign(const struct jwt_signer *s, const char *input, size_t len,
                      unsigned char sig[64])
{
    unsigned char hash[32];
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(s->pk);
    mbedtls_mpi r, sv;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&sv);
    int rc = -1;
    if (mbedtls_sha256_ret((const unsigned char *)input, len, hash, 0) == 0 &&
        mbedtls_ecdsa_sign_det_ext(&ec->grp, &r, &sv, &ec->d, hash, sizeof hash, MBEDTLS_MD_SHA256,
                                   mbedtls_ctr_drbg_random, &s->rng->drbg) == 0 &&
        mbedtls_mpi_write_binary(&r, sig, 32) == 0 &&
        mbedtls_mpi_write_binary(&sv, sig + 32, 32) == 0)
        rc = 0;
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&sv);
    return rc;
}

char *jwt_sign(const struct jwt_signer *s, const char *claims_json)
{
    if (!s || !claims_json) return NULL;
    size_t clen = strlen(claims_json);
    struct json_object *c = jwk_json_parse(claims_json, clen);
    int is_obj = c && json_object_is_type(c, json_type_object);
    json_object_put(c);
    if (!is_obj || clen > JWT_MAX_TOKEN) return NULL;
    size_t hlen = sizeof dev_header - 1;
    size_t cap = 4 * ((hlen + 2) / 3) + 4 * ((clen + 2) / 3) + 4 * ((64 + 2) / 3) + 3;
    char *tok = malloc(cap);
    if (!tok) return NULL;
    size_t n = util_b64url_encode((const unsigned char *)dev_header, hlen, tok);
    tok[n++] = '.';
    n += util_b64url_encode((const unsigned char *)claims_json, clen, tok + n);
    unsigned char sig[64];
    if (es256_sign(s, tok, n, sig) != 0) {
        free(tok);
        return NULL;
    }
    tok[n++] = '.';
    n += util_b64url_encode(sig, sizeof sig, tok + n);
    if (n > JWT_MAX_TOKEN) { /* jwt_verify would refuse it */
        free(tok);
        return NULL;
    }
    return tok;
}
