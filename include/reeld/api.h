/* Helpers shared by the API handlers in src/api: reading JSON bodies
 * with validation, and answering with the error envelope. */
#ifndef REELD_API_H
#define REELD_API_H

#include <stddef.h>

struct http_req;
struct json_object;

/* Reads an optional string member of req->json. Returns 0 and sets *out
 * (NULL when absent or null); on a wrong type, or a length outside
 * [minlen, maxlen] characters after trimming, answers 422 naming the field
 * and returns -1. The string lives as long as the request. */
int api_opt_str(struct http_req *r, const char *field, size_t minlen, size_t maxlen,
                const char **out);
/* Same, but absent is an error (422). */
int api_req_str(struct http_req *r, const char *field, size_t minlen, size_t maxlen,
                const char **out);
/* The body must be a JSON object (400 otherwise); returns -1 after answering. */
int api_need_object(struct http_req *r);

/* 503 when the database failed, 500 otherwise; logs the detail. */
void api_db_error(struct http_req *r, const char *err, const char *sqlstate);

/* The common ending of a one-row lookup: answers the database error
 * (api_db_error) or 404 not_found with message when res has no single
 * row, and returns -1; returns 0 when there is exactly one row. */
struct db_res;
int api_one_row(struct http_req *r, const struct db_res *res, const char *err, const char *sqlstate,
                const char *message);

/* Timestamps leave the database already formatted by the SQL function
 * api_ts(timestamptz) (schema/002_api.sql): RFC 3339 UTC with ms. */

/* Adds a string member, or null when s is NULL. */
void api_json_add_str(struct json_object *o, const char *k, const char *s);

/* route registration per resource */
struct http_server;
void api_ops_routes(struct http_server *s);
void api_org_routes(struct http_server *s);
void api_media_routes(struct http_server *s);
void api_share_routes(struct http_server *s);
void api_recording_routes(struct http_server *s);
void api_upload_routes(struct http_server *s);
void api_events_routes(struct http_server *s);
void api_search_routes(struct http_server *s);
void api_chat_routes(struct http_server *s);
/* A search or chat scope: "all" (or absent) gives *rec NULL;
 * "recording:<uuid>" (or the seed's "record:<uuid>") points *rec at the
 * uuid inside scope. Returns -1 when malformed. */
int api_parse_scope(const char *scope, const char **rec);
/* A search match as the API shows it (SPEC 8 matches, SPEC 9 references:
 * the same without end_ms). */
struct search_match;
struct json_object *api_match_json(const struct search_match *m, int with_end);

#endif
