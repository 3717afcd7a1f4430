/* Helpers shared by the API handlers; see include/reeld/api.h. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/util.h"

int api_need_object(struct http_req *r)
{
    if (!r->json || !json_object_is_type(r->json, json_type_object)) {
        http_reply_error(r, 400, "invalid_request", "expected a JSON object body");
        return -1;
    }
    return 0;
}

static int get_str(struct http_req *r, const char *field, size_t minlen, size_t maxlen,
                   const char **out, int required)
{
    *out = NULL;
    struct json_object *v = NULL;
    char msg[160];
    if (!r->json || !json_object_object_get_ex(r->json, field, &v) || !v) {
        if (!required) return 0;
        snprintf(msg, sizeof msg, "%s is required", field);
        http_reply_error(r, 422, "invalid_request", msg);
        return -1;
    }
    if (!json_object_is_type(v, json_type_string)) {
        snprintf(msg, sizeof msg, "%s must be a string", field);
        http_reply_error(r, 422, "invalid_request", msg);
        return -1;
    }
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    /* count characters, not bytes (the body was checked as UTF-8) */
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += ((unsigned char)s[i] & 0xc0) != 0x80;
    if (memchr(s, '\0', n) || chars < minlen || chars > maxlen) {
        snprintf(msg, sizeof msg, "%s must be %zu to %zu characters", field, minlen, maxlen);
        http_reply_error(r, 422, "invalid_request", msg);
        return -1;
    }
    char *d = http_req_alloc(r, n);
    if (!d) {
        http_reply_error(r, 500, "internal", "out of memory");
        return -1;
    }
    memcpy(d, s, n);
    *out = d;
    return 0;
}

int api_opt_str(struct http_req *r, const char *field, size_t minlen, size_t maxlen,
                const char **out)
{
    return get_str(r, field, minlen, maxlen, out, 0);
}

int api_req_str(struct http_req *r, const char *field, size_t minlen, size_t maxlen,
                const char **out)
{
    return get_str(r, field, minlen, maxlen, out, 1);
}

void api_db_error(struct http_req *r, const char *err, const char *sqlstate)
{
    struct log_line *l = log_begin(LOG_WARN, "database error");
    log_str(l, "request_id", r->request_id);
    log_str(l, "route", r->route);
    log_str(l, "error", err);
    log_end(l);
    /* class 08 connection exceptions, 57P operator intervention (a server
     * shutting down), and the pool's own "database unavailable" */
    if ((sqlstate && (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57P", 3) == 0)) ||
        (err && strcmp(err, "database unavailable") == 0))
        http_reply_error(r, 503, "unavailable", "database unavailable, try again");
    else
        http_reply_error(r, 500, "internal", "internal error");
}

int api_one_row(struct http_req *r, const struct db_res *res, const char *err, const char *sqlstate,
                const char *message)
{
    if (err) {
        api_db_error(r, err, sqlstate);
        return -1;
    }
    if (db_nrows(res) != 1) {
        http_reply_error(r, 404, "not_found", message);
        return -1;
    }
    return 0;
}

void api_json_add_str(struct json_object *o, const char *k, const char *s)
{
    json_object_object_add(o, k, s ? json_object_new_string(s) : NULL);
}
