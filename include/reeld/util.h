/* Small helpers shared by every module: time, random ids, encodings,
 * JSON escaping into evbuffers, UUID parsing. */
#ifndef REELD_UTIL_H
#define REELD_UTIL_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* Monotonic and wall clocks in milliseconds (and monotonic microseconds). */
int64_t util_mono_ms(void);
int64_t util_mono_us(void);
int64_t util_wall_ms(void);

/* Cryptographically secure random bytes (getrandom). Returns 0 or -1. */
int util_random(void *buf, size_t n);

/* Writes a random RFC 4122 v4 UUID (36 chars + NUL) into out[37]. */
void util_uuid_v4(char out[37]);
/* 1 if s is a canonical UUID (36 chars, hex, hyphens at 8,13,18,23). */
int util_is_uuid(const char *s);
/* A random URL-safe token of nbytes entropy into out (base64url, no pad);
 * out must hold 4*nbytes/3+2 bytes. */
void util_random_token(char *out, size_t nbytes);

/* base64url without padding. Encode: out must hold 4*((n+2)/3)+1 bytes;
 * returns the length written. Decode: accepts no padding and no
 * characters outside the url alphabet; returns the decoded length or -1.
 * out must hold at least 3*(n/4)+3 bytes. */
size_t util_b64url_encode(const unsigned char *in, size_t n, char *out);
long util_b64url_decode(const char *in, size_t n, unsigned char *out);

/* Hex encode n bytes into out[2n+1]. */
void util_hex(const unsigned char *in, size_t n, char *out);

/* Append s as a JSON string literal (with quotes) to buf. */
void util_json_str(struct evbuffer *buf, const char *s);
void util_json_strn(struct evbuffer *buf, const char *s, size_t n);

/* 1 if the n bytes are valid UTF-8 (no overlongs, no surrogates). */
int util_utf8_valid(const char *s, size_t n);

/* Constant-time comparison of two equal-length buffers: 0 when equal. */
int util_ct_memcmp(const void *a, const void *b, size_t n);

/* Parse a decimal integer in [min,max]; returns 0 or -1. */
int util_parse_ll(const char *s, long long min, long long max, long long *out);

#endif
