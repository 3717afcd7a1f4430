/* GET /api/search?q=&scope=&top_k= (SPEC 8): the caller's organization's
 * chunks closest to q, best first. The work is the search service's
 * (search.h); this file reads the parameters and writes the JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/auth.h"
#include "reeld/http.h"
#include "reeld/search.h"
#include "reeld/util.h"

#define SEARCH_DEFAULT_K 10
#define SEARCH_MAX_QUERY 2000

struct sq {
    struct http_req *r;
    struct search_req *s;
};

static void search_aborted(struct http_req *r)
{
    struct sq *q = r->data;
    search_cancel(q->s);
    q->s = NULL;
    /* finishes the request; nobody reads it */
    http_reply_error(r, 503, "unavailable", "the client went away");
}

struct json_object *api_match_json(const struct search_match *m, int with_end)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "recording_id", json_object_new_string(m->recording_id));
    api_json_add_str(o, "title", m->title);
    json_object_object_add(o, "chunk_id", json_object_new_string(m->chunk_id));
    json_object_object_add(o, "snippet", json_object_new_string(m->snippet));
    json_object_object_add(o, "start_ms", json_object_new_int64(m->start_ms));
    if (with_end) json_object_object_add(o, "end_ms", json_object_new_int64(m->end_ms));
    json_object_object_add(o, "score", json_object_new_double((double)m->score));
    return o;
}

static void answered(void *arg, int status, const char *err, const struct search_match *m, size_t n)
{
    struct sq *q = arg;
    q->s = NULL;
    if (status != 0) {
        http_reply_error(q->r, status, status == 503 ? "unavailable" : "internal",
                         status == 503 ? "search is unavailable, try again" : err);
        return;
    }
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(arr, api_match_json(&m[i], 1));
    struct json_object *out = json_object_new_object();
    json_object_object_add(out, "matches", arr);
    http_reply_json(q->r, 200, out);
}

/* "all", "recording:<uuid>" or the seed's "record:<uuid>": the recording,
 * or NULL for all; -1 when malformed. */
int api_parse_scope(const char *scope, const char **rec)
{
    *rec = NULL;
    if (!scope || !*scope || strcmp(scope, "all") == 0) return 0;
    const char *id = NULL;
    if (strncmp(scope, "recording:", 10) == 0)
        id = scope + 10;
    else if (strncmp(scope, "record:", 7) == 0)
        id = scope + 7;
    if (!id || !util_is_uuid(id)) return -1;
    *rec = id;
    return 0;
}

static void search_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *text = http_query(r, "q");
    const char *scope = http_query(r, "scope");
    const char *k = http_query(r, "top_k");
    const char *rec;
    long long top_k = SEARCH_DEFAULT_K;
    if (!text || !*text) {
        http_reply_error(r, 422, "invalid_request", "q is required");
        return;
    }
    if (strlen(text) > SEARCH_MAX_QUERY || !util_utf8_valid(text, strlen(text))) {
        http_reply_error(r, 422, "invalid_request", "q must be UTF-8 of at most 2000 bytes");
        return;
    }
    if (k && util_parse_ll(k, 1, SEARCH_MAX_K, &top_k) != 0) {
        http_reply_error(r, 422, "invalid_request", "top_k must be an integer from 1 to 50");
        return;
    }
    if (api_parse_scope(scope, &rec) != 0) {
        http_reply_error(r, 422, "invalid_request", "scope must be all or recording:<id>");
        return;
    }
    struct sq *q = http_req_alloc(r, sizeof *q);
    if (!q) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    q->r = r;
    r->data = q;
    r->on_abort = search_aborted;
    q->s = search_query(ctx->org_id, text, rec, (int)top_k, answered, q);
    if (!q->s) http_reply_error(r, 503, "unavailable", "search is unavailable, try again");
}

static void search_get(struct http_req *r)
{
    auth_request(r, 1, search_authed);
}

void api_search_routes(struct http_server *s)
{
    http_route(s, "GET", "/api/search", search_get, NULL);
}
