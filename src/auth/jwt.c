/* JWS compact verification and JWT claim checks (contract: reeld/jwt.h).
 *
 * Order of checks: shape and base64url, header JSON, alg whitelist,
 * forbidden headers, key selection (alg pinned by the key), signature,
 * then claims. Nothing the token says can pick an algorithm or fetch a
 * key: alg only has to agree with the key chosen by kid. */
#include "reeld/jwt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <json-c/json.h>
#include <mbedtls/sha256.h>

#include "jwk.h"
#include "reeld/util.h"

const char *jwt_status_str(enum jwt_status s)
{
    switch (s) {
    case JWT_OK:
        return "ok";
    case JWT_MALFORMED:
        return "malformed";
    case JWT_BAD_ALG:
        return "bad_alg";
    case JWT_BAD_HEADER:
        return "bad_header";
    case JWT_UNKNOWN_KID:
        return "unknown_kid";
    case JWT_BAD_SIG:
        return "bad_sig";
    case JWT_EXPIRED:
        return "expired";
    case JWT_NOT_YET:
        return "not_yet_valid";
    case JWT_BAD_CLAIM:
        return "bad_claim";
    }
    return "unknown";
}

static enum jwt_status fail(char *err, size_t errlen, enum jwt_status st, const char *why)
{
    jwk_seterr(err, errlen, "%s", why);
    return st;
}

/* Strict base64url segment into a malloc'd, NUL-terminated buffer. */
static unsigned char *b64_segment(const char *s, size_t n, size_t *outlen)
{
    unsigned char *buf = malloc(3 * (n / 4) + 4);
    if (!buf) return NULL;
    long m = util_b64url_decode(s, n, buf);
    if (m < 0) {
        free(buf);
        return NULL;
    }
    buf[m] = '\0';
    *outlen = (size_t)m;
    return buf;
}

static const char *const forbidden_headers[] = {"crit", "jku", "x5u", "jwk", "x5c"};

static int typ_ok(const char *typ)
{
    if (strncasecmp(typ, "application/", 12) == 0) typ += 12;
    return strcasecmp(typ, "JWT") == 0 || strcasecmp(typ, "at+jwt") == 0;
}

/* Header checks; *kid points into hdr (NULL when absent). */
static enum jwt_status check_header(struct json_object *hdr, int is_jwt, enum jwk_alg *alg,
                                    const char **kid, char *err, size_t errlen)
{
    struct json_object *v;
    const char *a = json_object_object_get_ex(hdr, "alg", &v) ? jwk_cstr(v) : NULL;
    if (!a) return fail(err, errlen, JWT_BAD_ALG, "header has no alg");
    if (strcmp(a, "RS256") == 0)
        *alg = JWK_RS256;
    else if (strcmp(a, "ES256") == 0)
        *alg = JWK_ES256;
    else
        return fail(err, errlen, JWT_BAD_ALG, "alg not accepted (RS256, ES256 only)");
    for (size_t i = 0; i < sizeof forbidden_headers / sizeof *forbidden_headers; i++)
        if (json_object_object_get_ex(hdr, forbidden_headers[i], NULL))
            return fail(err, errlen, JWT_BAD_HEADER,
                        "header carries crit/jku/x5u/jwk/x5c (not accepted)");
    *kid = NULL;
    if (json_object_object_get_ex(hdr, "kid", &v)) {
        *kid = jwk_cstr(v);
        if (!*kid || strlen(*kid) > JWK_MAX_KID)
            return fail(err, errlen, JWT_BAD_HEADER, "kid is not a short string");
    }
    if (is_jwt && json_object_object_get_ex(hdr, "typ", &v) &&
        (!jwk_cstr(v) || !typ_ok(jwk_cstr(v))))
        return fail(err, errlen, JWT_BAD_HEADER, "typ is not JWT");
    return JWT_OK;
}

static enum jwt_status verify_jws(const struct jwt_keyset *ks, const char *token, size_t len,
                                  int is_jwt, unsigned char **payload, size_t *payload_len,
                                  char *err, size_t errlen)
{
    *payload = NULL;
    if (!token || len == 0 || len > JWT_MAX_TOKEN)
        return fail(err, errlen, JWT_MALFORMED, "token empty or too long");
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return fail(err, errlen, JWT_MALFORMED, "token is not three segments");
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);
    if (hlen == 0 || slen == 0)
        return fail(err, errlen, JWT_MALFORMED, "empty header or signature");

    size_t hbytes, pbytes, sbytes;
    unsigned char *h = b64_segment(token, hlen, &hbytes);
    struct json_object *hdr = h ? jwk_json_parse((const char *)h, hbytes) : NULL;
    free(h);
    if (!hdr || !json_object_is_type(hdr, json_type_object)) {
        json_object_put(hdr);
        return fail(err, errlen, JWT_MALFORMED, "header is not base64url JSON object");
    }
    enum jwk_alg alg;
    const char *kid, *why;
    const struct jwk_key *key = NULL;
    unsigned char *p = NULL, *sig = NULL, hash[32];
    enum jwt_status st = check_header(hdr, is_jwt, &alg, &kid, err, errlen);
    if (st != JWT_OK) goto out;
    st = JWT_MALFORMED;
    if (!(p = b64_segment(d1 + 1, plen, &pbytes))) {
        fail(err, errlen, st, "payload is not base64url");
        goto out;
    }
    if (!(sig = b64_segment(d2 + 1, slen, &sbytes))) {
        fail(err, errlen, st, "signature is not base64url");
        goto out;
    }
    st = jwk_select(ks, kid, alg, &key, &why);
    if (st != JWT_OK) {
        fail(err, errlen, st, why);
        goto out;
    }
    /* The signing input is the ASCII header.payload as sent. */
    st = JWT_BAD_SIG;
    if (mbedtls_sha256_ret((const unsigned char *)token, (size_t)(d2 - token), hash, 0) != 0 ||
        jwk_verify_hash(key, hash, sig, sbytes) != 0) {
        fail(err, errlen, st, "signature does not verify");
        goto out;
    }
    st = JWT_OK;
    *payload = p;
    *payload_len = pbytes;
    p = NULL;
out:
    json_object_put(hdr);
    free(p);
    free(sig);
    return st;
}

enum jwt_status jwt_verify_jws(const struct jwt_keyset *ks, const char *token, size_t len,
                               unsigned char **payload, size_t *payload_len, char *err,
                               size_t errlen)
{
    return verify_jws(ks, token, len, 0, payload, payload_len, err, errlen);
}

/* A NumericDate claim: 1 when absent, 0 with *t set, -1 when not a finite
 * number. */
static int claim_time(struct json_object *c, const char *name, double *t)
{
    struct json_object *v;
    if (!json_object_object_get_ex(c, name, &v)) return 1;
    if (json_object_is_type(v, json_type_int))
        *t = (double)json_object_get_int64(v);
    else if (json_object_is_type(v, json_type_double))
        *t = json_object_get_double(v);
    else
        return -1;
    return isfinite(*t) ? 0 : -1;
}

static enum jwt_status check_times(struct json_object *c, const struct jwt_opts *o, char *err,
                                   size_t errlen)
{
    double now = (double)o->now, skew = o->skew > 0 ? o->skew : 0, t;
    int r = claim_time(c, "exp", &t);
    if (r != 0) return fail(err, errlen, JWT_BAD_CLAIM, r > 0 ? "exp missing" : "exp not a number");
    if (now - skew >= t) return fail(err, errlen, JWT_EXPIRED, "token expired");
    if ((r = claim_time(c, "nbf", &t)) < 0)
        return fail(err, errlen, JWT_BAD_CLAIM, "nbf not a number");
    if (r == 0 && t > now + skew)
        return fail(err, errlen, JWT_NOT_YET, "token not valid yet (nbf)");
    if ((r = claim_time(c, "iat", &t)) < 0)
        return fail(err, errlen, JWT_BAD_CLAIM, "iat not a number");
    if (r == 0 && t > now + skew)
        return fail(err, errlen, JWT_NOT_YET, "token issued in the future (iat)");
    return JWT_OK;
}

/* A claim's string value (no embedded NUL), or NULL. */
static const char *claim_str(struct json_object *c, const char *name)
{
    struct json_object *v;
    return json_object_object_get_ex(c, name, &v) ? jwk_cstr(v) : NULL;
}

static int str_is(const char *s, const char *want)
{
    return s && strcmp(s, want) == 0;
}

static int aud_ok(struct json_object *c, const char *want)
{
    struct json_object *v;
    if (!json_object_object_get_ex(c, "aud", &v)) return 0;
    if (!json_object_is_type(v, json_type_array)) return str_is(jwk_cstr(v), want);
    size_t n = json_object_array_length(v);
    for (size_t i = 0; i < n; i++)
        if (str_is(jwk_cstr(json_object_array_get_idx(v, i)), want)) return 1;
    return 0;
}

/* 1 when azp equals one entry of the comma list (entries trimmed). */
static int azp_ok(struct json_object *c, const char *list)
{
    const char *azp = claim_str(c, "azp");
    if (!azp) return 0;
    size_t alen = strlen(azp);
    for (const char *s = list; *s;) {
        const char *e = strchr(s, ',');
        const char *end = e ? e : s + strlen(s);
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        const char *t = end;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if (t > s && (size_t)(t - s) == alen && memcmp(s, azp, alen) == 0) return 1;
        if (!e) break;
        s = e + 1;
    }
    return 0;
}

static enum jwt_status check_claims(struct json_object *c, const struct jwt_opts *o, char *err,
                                    size_t errlen)
{
    enum jwt_status st = check_times(c, o, err, errlen);
    if (st != JWT_OK) return st;
    if (o->issuer && !str_is(claim_str(c, "iss"), o->issuer))
        return fail(err, errlen, JWT_BAD_CLAIM, "iss missing or not the configured issuer");
    if (o->audience && !aud_ok(c, o->audience))
        return fail(err, errlen, JWT_BAD_CLAIM, "aud missing or not the configured audience");
    if (o->azp && !azp_ok(c, o->azp))
        return fail(err, errlen, JWT_BAD_CLAIM, "azp missing or not an allowed party");
    const char *sub = claim_str(c, "sub");
    if (!sub || !*sub) return fail(err, errlen, JWT_BAD_CLAIM, "sub missing or empty");
    return JWT_OK;
}

enum jwt_status jwt_verify(const struct jwt_keyset *ks, const char *token, size_t len,
                           const struct jwt_opts *o, struct json_object **claims, char *err,
                           size_t errlen)
{
    if (claims) *claims = NULL;
    if (!o) return fail(err, errlen, JWT_MALFORMED, "no verification options");
    unsigned char *p;
    size_t plen;
    enum jwt_status st = verify_jws(ks, token, len, 1, &p, &plen, err, errlen);
    if (st != JWT_OK) return st;
    struct json_object *c = jwk_json_parse((const char *)p, plen);
    free(p);
    if (!c || !json_object_is_type(c, json_type_object)) {
        json_object_put(c);
        return fail(err, errlen, JWT_MALFORMED, "payload is not a JSON object");
    }
    st = check_claims(c, o, err, errlen);
    if (st == JWT_OK && claims)
        *claims = c;
    else
        json_object_put(c);
    return st;
}
