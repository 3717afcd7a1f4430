/* Signed media URLs; see include/reeld/signurl.h.
 *
 * The signature covers "video\n<id>\n<exp>" with exp exactly as it appears
 * in the URL, so a rewritten exp ("+5", "0123") fails the check without a
 * separate canonical-form rule. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/md.h>

#include "reeld/config.h"
#include "reeld/signurl.h"
#include "reeld/util.h"

#define KEY_FILE "url-signing.key"
#define KEY_FILE_BYTES 32
#define KEY_MAX 512
#define SIG_B64_LEN 43 /* base64url of 32 bytes, no padding */

static unsigned char g_key[KEY_MAX];
static size_t g_key_len;

static void seterr(char *err, size_t errlen, const char *what, const char *path)
{
    if (err && errlen) snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
}

/* Reads exactly KEY_FILE_BYTES from path: 1 when read, 0 when absent,
 * -1 on any other failure (errno set, EINVAL for a wrong size). */
static int read_key_file(const char *path, unsigned char *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    unsigned char buf[KEY_FILE_BYTES + 1];
    size_t n = 0;
    while (n < sizeof buf) {
        ssize_t k = read(fd, buf + n, sizeof buf - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    if (n != KEY_FILE_BYTES) {
        errno = EINVAL;
        return -1;
    }
    memcpy(out, buf, KEY_FILE_BYTES);
    return 1;
}

/* Stores a new key atomically: a private temp file, fsynced, then link(2)
 * to the final name, which fails with EEXIST instead of replacing a key
 * another process stored first. Returns 0 stored, 1 lost the race, -1. */
static int store_key_file(const char *path, const unsigned char *key)
{
    char tmp[PATH_MAX];
    char rnd[12];
    util_random_token(rnd, 8);
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.%ld.%s.tmp", path, (long)getpid(), rnd) >=
        sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    size_t off = 0;
    int ok = fchmod(fd, 0600) == 0;
    while (ok && off < KEY_FILE_BYTES) {
        ssize_t k = write(fd, key + off, KEY_FILE_BYTES - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            ok = 0;
            break;
        }
        off += (size_t)k;
    }
    ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    int rc = -1;
    if (ok) rc = link(tmp, path) == 0 ? 0 : (errno == EEXIST ? 1 : -1);
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return rc;
}

int signurl_init(const char *data_dir, char *err, size_t errlen)
{
    g_key_len = 0;
    const char *env = cfg.url_signing_key;
    if (env && *env) {
        size_t n = strlen(env);
        if (n > KEY_MAX) {
            if (err && errlen)
                snprintf(err, errlen, "REELD_URL_SIGNING_KEY is longer than %d bytes", KEY_MAX);
            return -1;
        }
        memcpy(g_key, env, n);
        g_key_len = n;
        return 0;
    }
    if (!data_dir || !*data_dir) {
        if (err && errlen) snprintf(err, errlen, "no data dir for the URL signing key");
        return -1;
    }
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", data_dir, KEY_FILE) >= sizeof path) {
        if (err && errlen) snprintf(err, errlen, "data dir path too long");
        return -1;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int r = read_key_file(path, g_key);
        if (r == 1) {
            g_key_len = KEY_FILE_BYTES;
            return 0;
        }
        if (r < 0) {
            seterr(err, errlen, "cannot read URL signing key", path);
            return -1;
        }
        unsigned char fresh[KEY_FILE_BYTES];
        if (util_random(fresh, sizeof fresh) != 0) {
            if (err && errlen) snprintf(err, errlen, "cannot generate the URL signing key");
            return -1;
        }
        int s = store_key_file(path, fresh);
        if (s == 0) {
            memcpy(g_key, fresh, sizeof fresh);
            g_key_len = sizeof fresh;
            return 0;
        }
        if (s < 0) {
            seterr(err, errlen, "cannot write URL signing key", path);
            return -1;
        }
        /* s == 1: another process stored one first; read theirs */
    }
    if (err && errlen) snprintf(err, errlen, "cannot settle the URL signing key %s", path);
    return -1;
}

/* b64url(HMAC-SHA256(key, "video\n<id>\n<exp>")) into out[SIG_B64_LEN + 1]. */
static int sign(const char *id, const char *exp, char *out)
{
    if (g_key_len == 0) return -1;
    char msg[256];
    int n = snprintf(msg, sizeof msg, "video\n%s\n%s", id, exp);
    if (n < 0 || (size_t)n >= sizeof msg) return -1;
    unsigned char mac[32];
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (!md || mbedtls_md_hmac(md, g_key, g_key_len, (const unsigned char *)msg, (size_t)n, mac))
        return -1;
    util_b64url_encode(mac, sizeof mac, out);
    return 0;
}

/* Ids go into a URL path unescaped: only unreserved characters. */
static int id_ok(const char *id)
{
    if (!id || !*id || strlen(id) > 128) return 0;
    for (const char *p = id; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '~'))
            return 0;
    }
    return 1;
}

int signurl_video(const char *recording_id, int64_t ttl_s, char *out, size_t outlen)
{
    if (!id_ok(recording_id) || ttl_s <= 0 || !out || outlen == 0) return -1;
    char exp[24], sig[SIG_B64_LEN + 1];
    snprintf(exp, sizeof exp, "%lld", (long long)(util_wall_ms() / 1000 + ttl_s));
    if (sign(recording_id, exp, sig) != 0) return -1;
    const char *base = cfg.public_url ? cfg.public_url : "http://127.0.0.1:8080";
    int n = snprintf(out, outlen, "%s/api/recordings/%s/video?exp=%s&sig=%s", base, recording_id,
                     exp, sig);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int signurl_check(const char *recording_id, const char *exp, const char *sig)
{
    if (!id_ok(recording_id) || !exp || !sig) return -1;
    size_t elen = strlen(exp);
    if (elen == 0 || elen > 18) return -1; /* digits only: no sign, no blanks, no overflow */
    long long e = 0;
    for (size_t i = 0; i < elen; i++) {
        if (exp[i] < '0' || exp[i] > '9') return -1;
        e = e * 10 + (exp[i] - '0');
    }
    if (strlen(sig) != SIG_B64_LEN) return -1;
    char want[SIG_B64_LEN + 1];
    if (sign(recording_id, exp, want) != 0) return -1;
    int bad = util_ct_memcmp(want, sig, SIG_B64_LEN) != 0;
    if (bad || e < util_wall_ms() / 1000) return -1;
    return 0;
}
