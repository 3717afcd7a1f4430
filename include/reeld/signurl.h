/* Signed media URLs: /api/recordings/<id>/video?exp=<unix s>&sig=<b64url
 * HMAC-SHA256(key, "video\n<id>\n<exp>")>. The key is
 * REELD_URL_SIGNING_KEY, else a random key kept in <data_dir>/url-signing.key
 * (created 0600 on first start), so links survive restarts and several
 * processes sharing the data dir agree. Checks are constant-time. */
#ifndef REELD_SIGNURL_H
#define REELD_SIGNURL_H

#include <stddef.h>
#include <stdint.h>

int signurl_init(const char *data_dir, char *err, size_t errlen);
/* Writes the absolute URL (REELD_PUBLIC_URL + path + query) valid for
 * ttl_s seconds into out; returns 0 or -1 when it does not fit. */
int signurl_video(const char *recording_id, int64_t ttl_s, char *out, size_t outlen);
/* 0 when sig is valid for the recording and exp has not passed. */
int signurl_check(const char *recording_id, const char *exp, const char *sig);

#endif
