/* JSON-lines logger; see include/reeld/log.h. Each line is assembled in
 * a fixed buffer and written with one write(2), so lines from a child and
 * the parent never interleave mid-line. Overlong values are truncated. */
#include "reeld/log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

struct log_line {
    char buf[LOG_LINE_MAX];
    size_t len;
};

static enum log_level min_level = LOG_INFO;
static struct log_line the_line; /* one thread, and lines never nest */
static const char *const names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level lvl)
{
    min_level = lvl;
}

int log_set_level_name(const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            min_level = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_enabled(enum log_level lvl)
{
    return lvl >= min_level;
}

static void put(struct log_line *l, const char *s, size_t n)
{
    /* keep room for the closing "}\n" */
    if (l->len + n > LOG_LINE_MAX - 3) n = LOG_LINE_MAX - 3 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_escaped(struct log_line *l, const char *s, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    put(l, "\"", 1);
    for (size_t i = 0; i < n && l->len < LOG_LINE_MAX - 10; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[7];
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            put(l, e, 2);
        } else if (c == '\n') {
            put(l, "\\n", 2);
        } else if (c < 0x20) {
            memcpy(e, "\\u00", 4);
            e[4] = hx[c >> 4];
            e[5] = hx[c & 15];
            put(l, e, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, "\"", 1);
}

static void put_key(struct log_line *l, const char *key)
{
    put(l, ",", 1);
    put_escaped(l, key, strlen(key));
    put(l, ":", 1);
}

struct log_line *log_begin(enum log_level lvl, const char *msg)
{
    if (lvl < min_level) return NULL;
    struct log_line *l = &the_line;
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    l->len = 0;
    char head[64];
    int n = snprintf(head, sizeof head, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000);
    put(l, head, (size_t)n);
    log_str(l, "level", names[lvl]);
    log_str(l, "msg", msg);
    return l;
}

void log_strn(struct log_line *l, const char *key, const char *val, size_t n)
{
    if (!l) return;
    put_key(l, key);
    if (!val)
        put(l, "null", 4);
    else
        put_escaped(l, val, n);
}

void log_str(struct log_line *l, const char *key, const char *val)
{
    log_strn(l, key, val, val ? strlen(val) : 0);
}

void log_int(struct log_line *l, const char *key, long long val)
{
    if (!l) return;
    char b[32];
    int n = snprintf(b, sizeof b, "%lld", val);
    put_key(l, key);
    put(l, b, (size_t)n);
}

void log_dbl(struct log_line *l, const char *key, double val)
{
    if (!l) return;
    char b[48];
    int n = snprintf(b, sizeof b, "%.3f", val);
    put_key(l, key);
    put(l, b, (size_t)n);
}

void log_end(struct log_line *l)
{
    if (!l) return;
    l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    size_t off = 0;
    while (off < l->len) {
        ssize_t w = write(STDERR_FILENO, l->buf + off, l->len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    l->len = 0;
}

void log_msg(enum log_level lvl, const char *msg, const char *key, const char *val)
{
    struct log_line *l = log_begin(lvl, msg);
    if (key) log_str(l, key, val);
    log_end(l);
}
