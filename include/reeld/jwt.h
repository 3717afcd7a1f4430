/* JWT (JWS compact) verification with mbedTLS: RS256 and ES256 only.
 *
 * The algorithm is pinned by the key: a token whose header alg differs
 * from the key's alg is rejected, so "alg":"none" and HS256-with-the-RSA-
 * public-key never verify. Headers jku, x5u, jwk and x5c are never
 * followed (a token carrying them is rejected); a crit header is rejected
 * (we understand no extensions). A token is at most JWT_MAX_TOKEN bytes
 * of exactly three strict base64url segments (no padding, no '+' '/').
 *
 * Key choice: a header kid selects the keys carrying that kid (a keyset
 * of one key without kid serves any kid); a header without kid is only
 * accepted when the keyset holds exactly one key.
 *
 * Implementation: src/auth/jwk.c (keys, primitives), src/auth/jwt.c
 * (tokens, claims), src/auth/jwt_sign.c (dev signer). No global state;
 * a keyset is used by one thread at a time (mbedTLS caches tables in it). */
#ifndef REELD_JWT_H
#define REELD_JWT_H

#include <stddef.h>
#include <stdint.h>

struct json_object;
struct jwt_keyset;

#define JWT_MAX_TOKEN 16384

enum jwt_status {
    JWT_OK = 0,
    JWT_MALFORMED,   /* segments, base64url, JSON */
    JWT_BAD_ALG,     /* alg not RS256/ES256 or not the key's */
    JWT_BAD_HEADER,  /* crit/jku/x5u/jwk/x5c, typ, kid */
    JWT_UNKNOWN_KID, /* caller may refresh the keyset once and retry */
    JWT_BAD_SIG,
    JWT_EXPIRED,
    JWT_NOT_YET,   /* nbf (or iat) in the future beyond skew */
    JWT_BAD_CLAIM, /* exp missing; iss, aud, azp, sub missing or wrong */
};

/* Parse a JWKS document ({"keys":[...]}) or a single JWK. Keys of types
 * other than RSA (2048..8192 bits) / EC P-256 (point checked on the
 * curve), with use != sig, key_ops without "verify", an alg other than
 * RS256/ES256, or malformed members are skipped; at most 64 keys are kept.
 * Returns NULL with a message in err on failure or when no usable key
 * remains. The caller frees the keyset with jwt_keyset_free. */
struct jwt_keyset *jwt_keyset_parse(const char *json, size_t len, char *err, size_t errlen);
void jwt_keyset_free(struct jwt_keyset *ks);
int jwt_keyset_count(const struct jwt_keyset *ks);

struct jwt_opts {
    const char *issuer;   /* required iss, or NULL */
    const char *audience; /* required in aud (string or array), or NULL */
    const char *azp;      /* comma list of allowed azp, or NULL */
    int64_t now;          /* seconds since epoch */
    int skew;             /* seconds, 60 */
};

/* Verify token against ks: the JWS layer as jwt_verify_jws, header typ
 * (when present) JWT or at+jwt, then the claims: exp required and
 * now < exp + skew (else JWT_EXPIRED); nbf and iat, when present, not
 * beyond now + skew (else JWT_NOT_YET); iss equal to o->issuer, aud (a
 * string or an array) containing o->audience, azp present and in the
 * comma list o->azp, each only when configured; sub a non-empty string.
 * Times may be integers or decimals. On JWT_OK, *claims (when claims is
 * not NULL) receives the payload object, which the caller releases with
 * json_object_put. On failure err (may be NULL) gets a short reason. */
enum jwt_status jwt_verify(const struct jwt_keyset *ks, const char *token, size_t len,
                           const struct jwt_opts *o, struct json_object **claims, char *err,
                           size_t errlen);

/* Stable lower-case name of a status ("ok", "bad_sig", ...). */
const char *jwt_status_str(enum jwt_status s);

/* The JWS layer only: segments, header (alg RS256/ES256, no crit, jku,
 * x5u, jwk, x5c), key selection and signature. The payload is not read
 * as claims, so this alone authenticates nobody; it exists for the JWS
 * test vectors and for callers that verify non-JWT payloads. On JWT_OK
 * *payload receives the decoded payload (malloc'd, with a NUL after its
 * *payload_len bytes; the caller frees it). */
enum jwt_status jwt_verify_jws(const struct jwt_keyset *ks, const char *token, size_t len,
                               unsigned char **payload, size_t *payload_len, char *err,
                               size_t errlen);

/* Low-level signature checks, exposed for the Wycheproof vectors.
 * msg is hashed with SHA-256 inside. Returns 0 when valid.
 * RS256 applies the keyset's key rules (modulus 2048..8192 bits, exponent
 * odd and at most 64 bits) and wants a signature as long as the modulus.
 * ES256 takes the raw 64-byte r||s (JWS form); the DER variant exists for
 * Wycheproof's ASN.1 ECDSA vectors and accepts strict DER only (minimal
 * lengths and integers, no trailing bytes). x and y are big-endian, leading
 * zeros allowed; the point is checked on P-256. */
int jwt_verify_rs256_raw(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen,
                         const unsigned char *msg, size_t msglen, const unsigned char *sig,
                         size_t siglen);
int jwt_verify_es256_raw(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                         const unsigned char *msg, size_t msglen, const unsigned char *sig,
                         size_t siglen);
int jwt_verify_es256_der(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                         const unsigned char *msg, size_t msglen, const unsigned char *der,
                         size_t derlen);

/* Dev mode: a P-256 key kept as PEM (SEC1) at path, created with mode 0600
 * when missing (the directory must exist) and loaded when present.
 * jwt_signer_keyset returns a new public keyset (kid "dev", ES256) that
 * the caller frees; jwt_sign signs claims_json (a JSON object) as an
 * ES256 token with header {"alg":"ES256","typ":"JWT","kid":"dev"}, a
 * malloc'd string the caller frees, or NULL. Signatures are RFC 6979
 * deterministic. */
struct jwt_signer;
struct jwt_signer *jwt_signer_load_or_create(const char *path, char *err, size_t errlen);
void jwt_signer_free(struct jwt_signer *s);
struct jwt_keyset *jwt_signer_keyset(const struct jwt_signer *s);
char *jwt_sign(const struct jwt_signer *s, const char *claims_json);

#endif
