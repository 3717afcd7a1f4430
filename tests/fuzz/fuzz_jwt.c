/* libFuzzer target: arbitrary bytes as a token (jwt_verify and
 * jwt_verify_jws against a fixed RS256 + ES256 keyset, with and without
 * claim options) and as a JWKS document (jwt_keyset_parse). The fixed
 * keys are the public Wycheproof JWS keys, so tokens from that corpus
 * reach the signature code.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
 *   $(pkg-config --cflags json-c) tests/fuzz/fuzz_jwt.c src/auth/jwk.c \
 *   src/auth/jwt.c src/auth/jwt_sign.c src/core/util.c src/core/log.c \
 *   $(pkg-config --libs json-c libevent) -lmbedtls -lmbedx509 \
 *   -lmbedcrypto -o /tmp/fuzz_jwt
 * Run:   /tmp/fuzz_jwt -max_total_time=60 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "reeld/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char keys_json[] =
    "{\"keys\":["
    "{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES256\",\"use\":\"sig\",\"kid\":\"kid-ec-sign\","
    "\"x\":\"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY\","
    "\"y\":\"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw\"},"
    "{\"kty\":\"RSA\",\"alg\":\"RS256\",\"use\":\"sig\",\"kid\":\"kid-rsa-sign\",\"e\":\"AQAB\","
    "\"n\":\"kqGboBfAWttWPCA-0cGRgsY6SaYoIARt0B_PkaEcIq9HPYNdu9n6UuWHuuTHrjF_ZoQW97r5HaAorNvrMEGTG"
    "dxCHZdEtkHvNVVmrtxTBLiQCbCozXhFoIrVcr3qUBrdGnNn_M3jJi7Wg7p_-x62nS5gNG875oyheRkutHsQXikFZwsN"
    "3q_TsPNOVlCiHy8mxzaFTUQGm-X8UYexFyAivlDSjgDJLAZSWfxd7k9Gxuwa3AUfQqQcVcegmgKGCaErQ3qQbh1x7WB6"
    "iopE3_-GZ8HMAVtR9AmrVscqYsnjhaCehfAI0iKKs8zXr8tISc0ORbaalrkk03H1ZrsEnDKEWQ\"}]}";

static struct jwt_keyset *fixed_keys(void)
{
    static struct jwt_keyset *ks;
    if (!ks) ks = jwt_keyset_parse(keys_json, sizeof keys_json - 1, NULL, 0);
    if (!ks) abort(); /* the fixed keyset must parse */
    return ks;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct jwt_keyset *ks = fixed_keys();
    const char *tok = (const char *)data;
    char err[128];

    struct jwt_opts plain = {.now = 1700000000, .skew = 60};
    struct jwt_opts all = {.issuer = "https://issuer.example",
                           .audience = "reeld",
                           .azp = "https://a.example, http://localhost:3000",
                           .now = 1700000000,
                           .skew = 60};
    struct json_object *claims = NULL;
    enum jwt_status st = jwt_verify(ks, tok, size, &plain, &claims, err, sizeof err);
    if ((st == JWT_OK) != (claims != NULL)) abort();
    json_object_put(claims);
    claims = NULL;
    st = jwt_verify(ks, tok, size, &all, &claims, NULL, 0);
    json_object_put(claims);
    (void)jwt_status_str(st);

    unsigned char *payload = NULL;
    size_t plen = 0;
    if (jwt_verify_jws(ks, tok, size, &payload, &plen, err, sizeof err) == JWT_OK &&
        (!payload || payload[plen] != '\0'))
        abort();
    free(payload);

    struct jwt_keyset *parsed = jwt_keyset_parse(tok, size, err, sizeof err);
    if (parsed) {
        if (jwt_keyset_count(parsed) < 1) abort();
        /* A parsed keyset must survive a verification attempt. */
        jwt_verify(parsed, "eyJhbGciOiJFUzI1NiJ9.e30.AAAA", 29, &plain, NULL, NULL, 0);
        jwt_keyset_free(parsed);
    }
    return 0;
}
