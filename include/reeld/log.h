/* JSON-lines logging on stderr.
 *
 * A line is built field by field and written with one write(2):
 *
 *   struct log_line *l = log_begin(LOG_INFO, "request");
 *   log_str(l, "method", "GET");
 *   log_int(l, "status", 200);
 *   log_end(l);
 *
 * Keys are stable (ts, level, msg, request_id, org_id, ...). log_begin
 * returns NULL when the level is filtered out; every other call accepts
 * NULL and does nothing, so callers never branch on the level. */
#ifndef REELD_LOG_H
#define REELD_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

struct log_line;

/* Set the lowest level written. Parses "debug", "info", "warn", "error";
 * returns -1 for anything else. */
int log_set_level_name(const char *name);
void log_set_level(enum log_level lvl);
int log_enabled(enum log_level lvl);

struct log_line *log_begin(enum log_level lvl, const char *msg);
void log_str(struct log_line *l, const char *key, const char *val);
void log_strn(struct log_line *l, const char *key, const char *val, size_t n);
void log_int(struct log_line *l, const char *key, long long val);
void log_dbl(struct log_line *l, const char *key, double val);
/* Writes the line and releases it. */
void log_end(struct log_line *l);

/* One-field shortcuts: log_msg(LOG_WARN, "msg", "key", "value") */
void log_msg(enum log_level lvl, const char *msg, const char *key, const char *val);

#endif
