/* Internal to src/auth/jwt*.c and jwk.c: the parsed key type shared by
 * keyset parsing (jwk.c), token verification (jwt.c) and the dev signer
 * (jwt_sign.c). Nothing outside src/auth includes this file; the public
 * contract is include/reeld/jwt.h. */
#ifndef REELD_AUTH_JWK_H
#define REELD_AUTH_JWK_H

#include <stddef.h>

#include "reeld/jwt.h"

struct json_object;
struct jwt_keyset;

enum jwk_alg {
    JWK_RS256 = 1,
    JWK_ES256 = 2,
};

/* One usable verification key. Opaque outside jwk.c. */
struct jwk_key;

/* Bounds applied everywhere a token or key document is read. */
#define JWK_MAX_DOC (1024 * 1024) /* a JWKS document */
#define JWK_MAX_KEYS 64           /* keys kept from one document */
#define JWK_MAX_KID 256           /* bytes of a kid */
#define JWK_RSA_MIN_BITS 2048
#define JWK_RSA_MAX_BITS 8192 /* bounds the CPU one verification costs */

/* Strict JSON parse of exactly len bytes: one object or array, nothing
 * after it but JSON whitespace, no NUL bytes, valid UTF-8, nesting depth
 * <= 32, len <= JWK_MAX_DOC. (A bare number at the very end of the input
 * is not recognised; callers only want objects.) Returns a new reference
 * or NULL. */
struct json_object *jwk_json_parse(const char *buf, size_t len);

/* The value of a JSON string without embedded NUL bytes, else NULL:
 * a "\u0000" must not make two different strings compare equal. */
const char *jwk_cstr(struct json_object *v);

/* printf into err[errlen] when err is not NULL and errlen > 0. */
void jwk_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Key selection for a token header; kid is NULL when the header has none.
 * A kid selects the keys carrying it; a keyset of one key without a kid
 * serves any kid. Without a kid, the keyset must hold exactly one key:
 * guessing among several would let a token pick its own key.
 * Returns JWT_OK with the key in *out; JWT_UNKNOWN_KID when no key carries
 * kid; JWT_BAD_ALG when the selected key is pinned to another alg;
 * JWT_BAD_HEADER when kid is NULL and the keyset holds several keys.
 * *why gets a static reason on failure. */
enum jwt_status jwk_select(const struct jwt_keyset *ks, const char *kid, enum jwk_alg alg,
                           const struct jwk_key **out, const char **why);

/* Verify a SHA-256 digest with k. ES256 takes the 64-byte r||s, RS256 a
 * signature exactly as long as the modulus. Returns 0 when valid. */
int jwk_verify_hash(const struct jwk_key *k, const unsigned char hash[32], const unsigned char *sig,
                    size_t siglen);

#endif
