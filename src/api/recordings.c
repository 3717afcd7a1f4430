/* Recordings (SPEC 7): create (also as the seed's POST /api/upload-url),
 * list, detail, update, complete, delete. The bytes arrive through the
 * tus server (uploads.c); the media endpoints live in media.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "rec_int.h"
#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/media.h"
#include "reeld/pipeline.h"
#include "reeld/recording.h"
#include "reeld/signurl.h"
#include "reeld/util.h"

#define LIST_DEFAULT 20
#define LIST_MAX 100

static const char *const statuses[] = {"uploading",      "uploaded",  "transcribing", "transcribed",
                                       "doc_generating", "embedding", "completed",    "error"};

/* Filters are NULL-able parameters so one prepared statement serves every
 * combination; the LEFT JOIN keeps the total when the page is empty. */
#define LIST_FILTER                                                                                \
    "org_id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR status = $2)"                     \
    " AND ($3::uuid IS NULL OR user_id = $3)"
static struct db_stmt q_list = {
    "rec_list", "SELECT " REC_COLS ", t.total FROM (SELECT count(*) AS total FROM recordings"
                " WHERE " LIST_FILTER ") t LEFT JOIN LATERAL (SELECT * FROM recordings"
                " WHERE " LIST_FILTER " ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5) r"
                " ON true ORDER BY r.created_at DESC, r.id DESC"};

/* Columns after REC_COLS in q_detail. */
enum {
    D_HAS_T = REC_NCOLS,
    D_T_TEXT,
    D_T_LANG,
    D_T_WORDS,
    D_HAS_D,
    D_D_CONTENT,
    D_D_SUMMARY,
    D_D_MODEL,
    D_D_UPDATED,
    D_STAGES
};
static struct db_stmt q_detail = {
    "rec_detail",
    "SELECT " REC_COLS ", t.recording_id IS NOT NULL, t.text, t.language,"
    " CASE WHEN $3::boolean THEN t.words::text END,"
    " d.recording_id IS NOT NULL, d.content, d.summary, d.model, api_ts(d.updated_at),"
    " (SELECT coalesce(json_agg(json_build_object('stage', s.stage, 'status', s.status,"
    " 'attempts', s.attempts, 'started_at', api_ts(s.started_at),"
    " 'finished_at', api_ts(s.finished_at), 'error', s.error)"
    " ORDER BY array_position(ARRAY['transcription', 'document', 'embedding', 'publication'],"
    " s.stage)), '[]') FROM recording_stages s"
    " WHERE s.recording_id = r.id AND s.org_id = r.org_id)::text"
    " FROM recordings r LEFT JOIN transcripts t ON t.recording_id = r.id"
    " LEFT JOIN documents d ON d.recording_id = r.id"
    " WHERE r.id = $1 AND r.org_id = $2 AND r.deleted_at IS NULL"};

static struct db_stmt q_update = {
    "rec_update", "UPDATE recordings r SET title = coalesce($3, title),"
                  " description = coalesce($4, description)"
                  " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING " REC_COLS};

/* Per-request state of the handlers below (request memory). */
struct rq {
    struct http_req *r;
    struct auth_ctx ctx;
    const char *id;
    struct rec_new n;
    const char *title, *description; /* PUT */
    int words;
};

static struct rq *rq_new(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = http_req_alloc(r, sizeof *q);
    if (!q) {
        http_reply_error(r, 500, "internal", "out of memory");
        return NULL;
    }
    q->r = r;
    q->ctx = *ctx;
    q->id = r->nparams > 0 ? http_param(r, 0) : NULL;
    r->data = q;
    return q;
}

static void busy(struct http_req *r)
{
    http_reply_error(r, 503, "unavailable", "shutting down");
}

static void not_found(struct http_req *r)
{
    http_reply_error(r, 404, "not_found", "recording not found");
}

/* 0 when the query found the one recording; else answers (503/500, or
 * 404) and returns -1. */
static int one_row(struct http_req *r, const struct db_res *res, const char *err,
                   const char *sqlstate)
{
    if (err) {
        api_db_error(r, err, sqlstate);
        return -1;
    }
    if (db_nrows(res) != 1) {
        not_found(r);
        return -1;
    }
    return 0;
}

/* ---- create ------------------------------------------------------------- */

/* Optional integer `size` in [0, REC_MAX_SIZE]; *out = -1 when absent. */
static int get_size(struct http_req *r, int required, int64_t *out)
{
    struct json_object *v = NULL;
    *out = -1;
    if (!json_object_object_get_ex(r->json, "size", &v) || !v) {
        if (!required) return 0;
        http_reply_error(r, 422, "invalid_request", "size is required");
        return -1;
    }
    int64_t s = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
    if (s < 0 || s > REC_MAX_SIZE) {
        char msg[96];
        snprintf(msg, sizeof msg, "size must be an integer from 0 to %lld", REC_MAX_SIZE);
        http_reply_error(r, 422, "invalid_request", msg);
        return -1;
    }
    *out = s;
    return 0;
}

static int check_ctype(struct http_req *r, const char *field, const char *ct)
{
    if (!ct || rec_content_type_ok(ct)) return 0;
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be a video/* or audio/* media type", field);
    http_reply_error(r, 422, "invalid_request", msg);
    return -1;
}

static void created(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct rq *q = arg;
    if (err || db_nrows(res) != 1) {
        api_db_error(q->r, err ? err : "no row", sqlstate);
        return;
    }
    char url[256];
    snprintf(url, sizeof url, "%s/api/uploads/%s", cfg.public_url, db_str(res, 0, 0));
    struct json_object *up = json_object_new_object();
    api_json_add_str(up, "protocol", "tus");
    api_json_add_str(up, "url", url);
    json_object_object_add(up, "chunk_size", json_object_new_int(REC_CHUNK_SIZE));
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "recording", rec_json(res, 0));
    json_object_object_add(o, "upload", up);
    http_set_header(q->r, "Location", url);
    http_reply_json(q->r, 201, o);
}

static void create_send(struct rq *q)
{
    if (!rec_create(&q->ctx, &q->n, created, q)) busy(q->r);
}

static void create_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q;
    if (api_need_object(r) || !(q = rq_new(r, ctx))) return;
    struct rec_new *n = &q->n;
    if (api_opt_str(r, "title", 1, 500, &n->title) ||
        api_opt_str(r, "description", 0, 10000, &n->description) ||
        api_opt_str(r, "filename", 1, 255, &n->filename) ||
        api_opt_str(r, "content_type", 3, 255, &n->content_type) ||
        check_ctype(r, "content_type", n->content_type) || get_size(r, 0, &n->size))
        return;
    create_send(q);
}

static void create(struct http_req *r)
{
    auth_request(r, 1, create_authed);
}

/* The seed's name for the same step: {name, size, content_type}; the
 * title is the name without its extension. */
static void upload_url_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q;
    if (api_need_object(r) || !(q = rq_new(r, ctx))) return;
    struct rec_new *n = &q->n;
    if (api_req_str(r, "name", 1, 255, &n->filename) ||
        api_req_str(r, "content_type", 3, 255, &n->content_type) ||
        check_ctype(r, "content_type", n->content_type) || get_size(r, 1, &n->size))
        return;
    const char *dot = strrchr(n->filename, '.');
    size_t len = dot && dot != n->filename ? (size_t)(dot - n->filename) : strlen(n->filename);
    char *title = http_req_alloc(r, len);
    if (!title) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    memcpy(title, n->filename, len);
    n->title = title;
    create_send(q);
}

static void upload_url(struct http_req *r)
{
    auth_request(r, 1, upload_url_authed);
}

/* ---- list --------------------------------------------------------------- */

static void listed(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct rq *q = arg;
    if (err) {
        api_db_error(q->r, err, sqlstate);
        return;
    }
    struct json_object *arr = json_object_new_array();
    long long total = 0;
    for (int i = 0; i < db_nrows(res); i++) {
        total = db_int(res, i, REC_NCOLS);
        if (!db_isnull(res, i, 0)) json_object_array_add(arr, rec_json(res, i));
    }
    const char *lim = http_query(q->r, "limit"), *off = http_query(q->r, "offset");
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "recordings", arr);
    json_object_object_add(o, "total", json_object_new_int64(total));
    json_object_object_add(o, "limit", json_object_new_int(lim ? atoi(lim) : LIST_DEFAULT));
    json_object_object_add(o, "offset", json_object_new_int(off ? atoi(off) : 0));
    http_reply_json(q->r, 200, o);
}

static int bad_query(struct http_req *r, const char *msg)
{
    http_reply_error(r, 422, "invalid_request", msg);
    return -1;
}

static void list_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (!q) return;
    const char *lim = http_query(r, "limit"), *off = http_query(r, "offset");
    const char *status = http_query(r, "status"), *user = http_query(r, "user_id");
    long long v;
    if (lim && util_parse_ll(lim, 1, LIST_MAX, &v) != 0) {
        bad_query(r, "limit must be an integer from 1 to 100");
        return;
    }
    if (off && util_parse_ll(off, 0, 1000000000, &v) != 0) {
        bad_query(r, "offset must be a non-negative integer");
        return;
    }
    if (status) {
        size_t i = 0;
        while (i < sizeof statuses / sizeof statuses[0] && strcmp(statuses[i], status) != 0)
            i++;
        if (i == sizeof statuses / sizeof statuses[0]) {
            bad_query(r, "status is not a known recording status");
            return;
        }
    }
    if (user && !util_is_uuid(user)) {
        bad_query(r, "user_id must be a UUID");
        return;
    }
    char limbuf[8] = "20";
    const char *p[5] = {ctx->org_id, status, user, lim ? lim : limbuf, off ? off : "0"};
    if (!db_query(app.db, &q_list, 5, p, listed, q)) busy(r);
}

static void list(struct http_req *r)
{
    auth_request(r, 1, list_authed);
}

/* ---- detail ------------------------------------------------------------- */

/* Parses JSON text the database built; NULL (JSON null) when absent. */
static struct json_object *json_col(const struct db_res *res, int col)
{
    const char *s = db_str(res, 0, col);
    return s ? json_tokener_parse(s) : NULL;
}

static void detailed(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct rq *q = arg;
    if (one_row(q->r, res, err, sqlstate)) return;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "recording", rec_json(res, 0));
    struct json_object *t = NULL, *d = NULL;
    if (db_bool(res, 0, D_HAS_T)) {
        t = json_object_new_object();
        api_json_add_str(t, "text", db_str(res, 0, D_T_TEXT));
        api_json_add_str(t, "language", db_str(res, 0, D_T_LANG));
        if (q->words) json_object_object_add(t, "words", json_col(res, D_T_WORDS));
    }
    if (db_bool(res, 0, D_HAS_D)) {
        d = json_object_new_object();
        api_json_add_str(d, "content", db_str(res, 0, D_D_CONTENT));
        api_json_add_str(d, "summary", db_str(res, 0, D_D_SUMMARY));
        api_json_add_str(d, "model", db_str(res, 0, D_D_MODEL));
        api_json_add_str(d, "updated_at", db_str(res, 0, D_D_UPDATED));
    }
    json_object_object_add(o, "transcript", t);
    json_object_object_add(o, "document", d);
    struct json_object *stages = json_col(res, D_STAGES);
    json_object_object_add(o, "stages", stages ? stages : json_object_new_array());
    /* a link only once the bytes are all stored */
    const char *status = db_str(res, 0, 5);
    char url[512];
    int stored = strcmp(status, "uploading") != 0 && !db_isnull(res, 0, 9) &&
                 db_int(res, 0, 16) == db_int(res, 0, 9);
    if (stored && signurl_video(db_str(res, 0, 0), MEDIA_URL_TTL_S, url, sizeof url) == 0)
        api_json_add_str(o, "video_url", url);
    else
        json_object_object_add(o, "video_url", NULL);
    http_reply_json(q->r, 200, o);
}

static void detail_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (!q) return;
    if (!util_is_uuid(q->id)) {
        not_found(r);
        return;
    }
    const char *w = http_query(r, "words");
    q->words = w && (strcmp(w, "1") == 0 || strcmp(w, "true") == 0);
    const char *p[3] = {q->id, ctx->org_id, q->words ? "true" : "false"};
    if (!db_query(app.db, &q_detail, 3, p, detailed, q)) busy(r);
}

static void detail(struct http_req *r)
{
    auth_request(r, 1, detail_authed);
}

/* ---- mutations: load, check the caller may, act --------------------------- */

typedef void (*rq_act)(struct rq *q, const struct db_res *res);

struct mut {
    struct rq *q;
    rq_act act;
};

static void mut_loaded(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct mut *m = arg;
    struct rq *q = m->q;
    if (one_row(q->r, res, err, sqlstate)) return;
    if (!rec_may_modify(&q->ctx, res, 0)) {
        http_reply_error(q->r, 403, "forbidden", "only the owner or an admin may change it");
        return;
    }
    m->act(q, res);
}

/* Loads q->id of the caller's organization, answers 404/403, else act. */
static void mut_start(struct rq *q, rq_act act)
{
    if (!util_is_uuid(q->id)) {
        not_found(q->r);
        return;
    }
    struct mut *m = http_req_alloc(q->r, sizeof *m);
    if (!m) {
        http_reply_error(q->r, 500, "internal", "out of memory");
        return;
    }
    m->q = q;
    m->act = act;
    if (!rec_load(&q->ctx, q->id, mut_loaded, m)) busy(q->r);
}

static void reply_recording(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    struct rq *q = arg;
    if (one_row(q->r, res, err, sqlstate)) return;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "recording", rec_json(res, 0));
    http_reply_json(q->r, 200, o);
}

/* PUT /api/recordings/{id} */
static void update_act(struct rq *q, const struct db_res *res)
{
    (void)res;
    const char *p[4] = {q->id, q->ctx.org_id, q->title, q->description};
    if (!db_query(app.db, &q_update, 4, p, reply_recording, q)) busy(q->r);
}

static void update_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q;
    if (!(q = rq_new(r, ctx))) return;
    if (!util_is_uuid(q->id)) {
        not_found(r);
        return;
    }
    if (api_need_object(r) || api_opt_str(r, "title", 1, 500, &q->title) ||
        api_opt_str(r, "description", 0, 10000, &q->description))
        return;
    mut_start(q, update_act);
}

static void update(struct http_req *r)
{
    auth_request(r, 1, update_authed);
}

/* POST /api/recordings/{id}/complete: idempotent. */
static void complete_act(struct rq *q, const struct db_res *res)
{
    if (strcmp(db_str(res, 0, 5), "uploading") != 0) {
        reply_recording(q, res, NULL, "");
        return;
    }
    if (db_isnull(res, 0, 9) || db_int(res, 0, 16) != db_int(res, 0, 9)) {
        http_reply_error(q->r, 409, "conflict", "the upload is not complete: bytes are missing");
        return;
    }
    if (rec_finalize(q->id, q->ctx.org_id, db_str(res, 0, 19), db_int(res, 0, 9), reply_recording,
                     q) != 0)
        busy(q->r);
}

static void complete_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (q) mut_start(q, complete_act);
}

static void complete(struct http_req *r)
{
    auth_request(r, 1, complete_authed);
}

/* DELETE /api/recordings/{id} */
static void deleted(void *arg, int status, const char *err, const char *sqlstate)
{
    struct rq *q = arg;
    if (status == 204)
        http_reply_empty(q->r, 204);
    else if (status == 404)
        not_found(q->r);
    else
        api_db_error(q->r, err ? err : "delete failed", sqlstate);
}

static void delete_act(struct rq *q, const struct db_res *res)
{
    (void)res;
    if (rec_delete(q->id, q->ctx.org_id, deleted, q) != 0) busy(q->r);
}

static void delete_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (q) mut_start(q, delete_act);
}

static void destroy(struct http_req *r)
{
    auth_request(r, 1, delete_authed);
}

/* POST /api/recordings/{id}/retry {stage?} and /document/regenerate
 * {model?} (owner or admin): 202 once the job is queued. */
static void again_done(void *arg, int status, const char *msg)
{
    struct rq *q = arg;
    if (status == 202) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "accepted", json_object_new_boolean(1));
        http_reply_json(q->r, 202, o);
    } else if (status == 404) {
        not_found(q->r);
    } else if (status == 409) {
        http_reply_error(q->r, 409, "conflict", msg);
    } else {
        api_db_error(q->r, msg ? msg : "failed", "");
    }
}

static void retry_act(struct rq *q, const struct db_res *res)
{
    (void)res;
    if (pipeline_retry(q->ctx.org_id, q->id, q->title, again_done, q) != 0) busy(q->r);
}

static void regenerate_act(struct rq *q, const struct db_res *res)
{
    (void)res;
    if (pipeline_regenerate(q->ctx.org_id, q->id, q->title, again_done, q) != 0) busy(q->r);
}

/* An empty body is an empty object here: both members are optional. */
static int opt_body_str(struct http_req *r, const char *field, size_t maxlen, const char **out)
{
    *out = NULL;
    if (!r->json) return 0;
    if (api_need_object(r)) return -1;
    return api_opt_str(r, field, 1, maxlen, out);
}

static void retry_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (!q || opt_body_str(r, "stage", 32, &q->title)) return;
    if (q->title && !pipeline_is_stage(q->title)) {
        http_reply_error(r, 422, "invalid_request",
                         "stage must be transcription, document, embedding or publication");
        return;
    }
    mut_start(q, retry_act);
}

static void regenerate_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct rq *q = rq_new(r, ctx);
    if (!q || opt_body_str(r, "model", 200, &q->title)) return;
    mut_start(q, regenerate_act);
}

static void retry(struct http_req *r)
{
    auth_request(r, 1, retry_authed);
}

static void regenerate(struct http_req *r)
{
    auth_request(r, 1, regenerate_authed);
}

void api_recording_routes(struct http_server *s)
{
    struct http_route_opts json = {.body = HTTP_BODY_JSON, .max_body = 0};
    http_route(s, "POST", "/api/recordings", create, &json);
    http_route(s, "POST", "/api/upload-url", upload_url, &json);
    http_route(s, "GET", "/api/recordings", list, NULL);
    http_route(s, "GET", "/api/recordings/:id", detail, NULL);
    http_route(s, "PUT", "/api/recordings/:id", update, &json);
    http_route(s, "POST", "/api/recordings/:id/complete", complete, &json);
    http_route(s, "DELETE", "/api/recordings/:id", destroy, NULL);
    http_route(s, "POST", "/api/recordings/:id/retry", retry, &json);
    http_route(s, "POST", "/api/recordings/:id/document/regenerate", regenerate, &json);
}
