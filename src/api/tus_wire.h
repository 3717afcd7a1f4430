/* Private to src/api: the values of tus 1.0.0 headers that uploads.c
 * reads and writes (offsets and lengths, Upload-Metadata, checksums,
 * Upload-Expires). Pure functions: no I/O, no allocation except the
 * returned JSON object. */
#ifndef REELD_API_TUS_WIRE_H
#define REELD_API_TUS_WIRE_H

#include <stddef.h>
#include <stdint.h>

struct json_object;

/* Upload-Metadata larger than this is refused (400). */
#define TUS_METADATA_MAX 4096

/* A non-negative decimal of digits only (no sign, no spaces), as tus
 * offsets and lengths are. Returns 0 with *out set, or -1 with *over = 1
 * when it is well formed but above max (the caller answers 413), or
 * *over = 0 when malformed (400). */
int tus_parse_u64(const char *s, int64_t max, int64_t *out, int *over);

/* Standard base64 with padding, decoded strictly: a length that is a
 * multiple of 4, only the alphabet, '=' only as the last one or two
 * characters, and unused bits zero (so each value has one encoding).
 * Returns the decoded length, or -1. out holds at least 3 * n / 4 bytes. */
long tus_b64_decode(const char *s, size_t n, unsigned char *out);

/* Upload-Metadata ("key base64,key2 base64,key3") as a JSON object of
 * strings (a bare key has the value ""). Keys: unique, 1 to 255 bytes of
 * printable ASCII without space or comma. Values: strict base64 of UTF-8
 * text without NUL. Spaces around a pair are allowed; an empty pair or a
 * trailing comma is not. Returns a new object (the caller puts it), or
 * NULL when malformed or longer than TUS_METADATA_MAX. */
struct json_object *tus_meta_parse(const char *h);

/* The reverse, from a JSON object text as stored: writes the
 * Upload-Metadata value into out (NUL-terminated) and returns its length;
 * 0 when there is nothing to send, the text is not an object, or it does
 * not fit outlen. */
size_t tus_meta_format(const char *json, char *out, size_t outlen);

/* Upload-Expires: an RFC 9110 HTTP date ("Sun, 06 Nov 1994 08:49:37
 * GMT") of a Unix time, into out (at least 30 bytes). */
void tus_http_date(int64_t epoch, char *out, size_t outlen);

#endif
