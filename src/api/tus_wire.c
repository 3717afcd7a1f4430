/* tus header values; see tus_wire.h. */
#include "tus_wire.h"

#include <string.h>
#include <time.h>

#include <json-c/json.h>
#include <mbedtls/base64.h>

#include "reeld/util.h"

int tus_parse_u64(const char *s, int64_t max, int64_t *out, int *over)
{
    *over = 0;
    if (!s || !*s) return -1;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        if (v > (INT64_MAX - (*p - '0')) / 10) {
            /* keep checking the syntax: "99999999999999999999x" is malformed */
            *over = strspn(p, "0123456789") == strlen(p);
            return -1;
        }
        v = v * 10 + (*p - '0');
    }
    if (v > max) {
        *over = 1;
        return -1;
    }
    *out = v;
    return 0;
}

long tus_b64_decode(const char *s, size_t n, unsigned char *out)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = s[i + (size_t)k];
            const char *at = c ? strchr(al, c) : NULL;
            if (c == '=' && i + 4 == n && k >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!at || pad) return -1;
            v = v << 6 | (unsigned)(at - al);
        }
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff))) return -1;
        out[o++] = (unsigned char)(v >> 16);
        if (pad < 2) out[o++] = (unsigned char)(v >> 8);
        if (pad < 1) out[o++] = (unsigned char)v;
    }
    return (long)o;
}

/* One "key[ value]" pair of length pl at p into o; -1 when malformed. */
static int meta_pair(struct json_object *o, const char *p, size_t pl)
{
    unsigned char val[TUS_METADATA_MAX];
    char key[256];
    while (pl > 0 && p[pl - 1] == ' ')
        pl--;
    size_t kl = strcspn(p, " ,");
    if (kl > pl) kl = pl;
    if (kl == 0 || kl >= sizeof key) return -1;
    for (size_t i = 0; i < kl; i++)
        if (p[i] <= 0x20 || p[i] >= 0x7f) return -1;
    memcpy(key, p, kl);
    key[kl] = '\0';
    if (json_object_object_get_ex(o, key, NULL)) return -1;
    /* " value" follows the key, or nothing */
    const char *v = kl < pl ? p + kl + 1 : p + kl;
    size_t vl = kl < pl ? pl - kl - 1 : 0;
    long n = tus_b64_decode(v, vl, val);
    if (n < 0 || !util_utf8_valid((const char *)val, (size_t)n) || memchr(val, 0, (size_t)n))
        return -1;
    json_object_object_add(o, key, json_object_new_string_len((const char *)val, (int)n));
    return 0;
}

struct json_object *tus_meta_parse(const char *h)
{
    if (!h || strlen(h) > TUS_METADATA_MAX) return NULL;
    struct json_object *o = json_object_new_object();
    const char *p = h;
    while (o && *p) {
        while (*p == ' ')
            p++;
        size_t pl = strcspn(p, ",");
        if (meta_pair(o, p, pl) != 0 || (p[pl] == ',' && !p[pl + 1])) {
            json_object_put(o);
            return NULL;
        }
        p += pl + (p[pl] == ',');
    }
    return o;
}

size_t tus_meta_format(const char *json, char *out, size_t outlen)
{
    struct json_object *o = json ? json_tokener_parse(json) : NULL;
    size_t len = 0;
    if (!o || !json_object_is_type(o, json_type_object) || outlen == 0) {
        json_object_put(o);
        return 0;
    }
    json_object_object_foreach(o, k, v)
    {
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
        size_t kl = strlen(k), sl = strlen(s), olen = 0;
        if (len + 1 + kl + 1 + 4 * ((sl + 2) / 3) + 1 > outlen) {
            len = 0;
            break;
        }
        if (len) out[len++] = ',';
        memcpy(out + len, k, kl);
        len += kl;
        if (sl) {
            out[len++] = ' ';
            mbedtls_base64_encode((unsigned char *)out + len, outlen - len, &olen,
                                  (const unsigned char *)s, sl);
            len += olen;
        }
    }
    out[len] = '\0';
    json_object_put(o);
    return len;
}

void tus_http_date(int64_t epoch, char *out, size_t outlen)
{
    time_t t = (time_t)epoch;
    struct tm tm;
    gmtime_r(&t, &tm);
    /* strftime's %a and %b follow the locale; reeld never sets one (C) */
    strftime(out, outlen, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}
