/* When to retry an outbound call, and the server's Retry-After hints;
 * see include/reeld/fetch.h. */
#include "reeld/fetch.h"

#include <stdint.h>
#include <string.h>

#include "reeld/util.h"

/* A Retry-After beyond this is clamped: 30 years is "much later". */
#define RETRY_MAX_SECONDS 1000000000LL

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Reads 1..maxd digits into *out; returns the number read (0 if none). */
static int read_num(const char **s, int maxd, int *out)
{
    int n = 0, v = 0;
    while (n < maxd && is_digit((*s)[n])) {
        v = v * 10 + ((*s)[n] - '0');
        n++;
    }
    *s += n;
    *out = v;
    return n;
}

static int read_month(const char **s)
{
    static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int m = 0; m < 12; m++) {
        if (strncmp(*s, names + 3 * m, 3) == 0) {
            *s += 3;
            return m + 1;
        }
    }
    return -1;
}

/* "HH:MM:SS" */
static int read_time(const char **s, int *h, int *mi, int *sec)
{
    if (read_num(s, 2, h) != 2 || **s != ':') return -1;
    (*s)++;
    if (read_num(s, 2, mi) != 2 || **s != ':') return -1;
    (*s)++;
    if (read_num(s, 2, sec) != 2) return -1;
    return (*h <= 23 && *mi <= 59 && *sec <= 60) ? 0 : -1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

/* RFC 9110 HTTP-date in its three forms:
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"
 *   asctime      "Sun Nov  6 08:49:37 1994"
 * Returns milliseconds since the epoch, or -1. */
static int64_t parse_http_date(const char *s)
{
    int day, mon, year, h, mi, sec, nd;
    const char *w = s;
    while (is_alpha(*s))
        s++;
    if (s - w < 3) return -1;
    if (*s == ',') {
        s = skip_ws(s + 1);
        if (!read_num(&s, 2, &day) || (*s != ' ' && *s != '-')) return -1;
        char sep = *s++;
        if ((mon = read_month(&s)) < 0 || *s++ != sep) return -1;
        nd = read_num(&s, 4, &year);
        if (nd == 2)
            year += year < 70 ? 2000 : 1900;
        else if (nd != 4)
            return -1;
        if (*s++ != ' ' || read_time(&s, &h, &mi, &sec) < 0) return -1;
        s = skip_ws(s);
        if (strncmp(s, "GMT", 3) != 0) return -1;
        s += 3;
    } else {
        s = skip_ws(s);
        if ((mon = read_month(&s)) < 0) return -1;
        s = skip_ws(s);
        if (!read_num(&s, 2, &day) || *s++ != ' ' || read_time(&s, &h, &mi, &sec) < 0) return -1;
        s = skip_ws(s);
        if (read_num(&s, 4, &year) != 4) return -1;
    }
    if (*skip_ws(s) != '\0' || day < 1 || day > days_in_month(year, mon)) return -1;
    int64_t days = days_from_civil(year, mon, day);
    return ((days * 24 + h) * 60 + mi) * 60000 + (int64_t)sec * 1000;
}

/* Digits with an optional fraction (is_ms only); value scaled by unit and
 * rounded up. */
static int64_t parse_amount(const char *s, int allow_fraction, int64_t unit)
{
    int64_t v = 0;
    if (!is_digit(*s)) return -1;
    while (is_digit(*s)) {
        if (v < RETRY_MAX_SECONDS) v = v * 10 + (*s - '0');
        s++;
    }
    int frac = 0;
    if (allow_fraction && *s == '.') {
        s++;
        if (!is_digit(*s)) return -1;
        while (is_digit(*s)) {
            frac |= *s != '0';
            s++;
        }
    }
    if (*skip_ws(s) != '\0') return -1;
    if (v > RETRY_MAX_SECONDS) v = RETRY_MAX_SECONDS;
    return v * unit + frac;
}

int64_t fetch_parse_retry_after(const char *value, int is_ms, int64_t now_wall_ms)
{
    if (!value) return -1;
    const char *s = skip_ws(value);
    if (is_ms) return parse_amount(s, 1, 1);
    if (is_digit(*s)) return parse_amount(s, 0, 1000);
    int64_t at = parse_http_date(s);
    if (at < 0) return -1;
    int64_t d = at - now_wall_ms;
    if (d < 0) return 0;
    return d > RETRY_MAX_SECONDS * 1000 ? RETRY_MAX_SECONDS * 1000 : d;
}

static int retryable(const struct fetch_resp *resp)
{
    if (resp->err)
        return strcmp(resp->err, FETCH_ERR_TOO_LARGE) != 0 &&
               strcmp(resp->err, FETCH_ERR_ABORTED) != 0;
    long s = resp->status;
    return s == 0 || s == 408 || s == 409 || s == 429 || (s >= 500 && s <= 599);
}

int64_t fetch_retry_delay(const struct fetch_retry_policy *p, int attempt,
                          const struct fetch_resp *resp)
{
    if (!p || !resp || attempt < 1 || attempt >= p->max_attempts || !retryable(resp)) return -1;
    int64_t cap = p->max_ms > 0 ? p->max_ms : INT64_MAX;
    int64_t top = p->base_ms > 0 ? p->base_ms : 0;
    for (int i = 1; i < attempt && top < cap; i++)
        top = top > cap / 2 ? cap : top * 2;
    if (top > cap) top = cap;
    /* Full jitter: spreads the retries of many clients hit by the same
     * outage; without randomness, fall back to the ceiling. */
    int64_t d = top;
    uint64_t rnd;
    if (top > 0 && util_random(&rnd, sizeof rnd) == 0) d = (int64_t)(rnd % ((uint64_t)top + 1));
    if (resp->retry_after_ms > d) d = resp->retry_after_ms;
    return d;
}
