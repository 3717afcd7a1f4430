/* The recording resource shared by the handlers (recording.h), and the
 * transitions both the REST API and the tus server perform (rec_int.h). */
#include <ctype.h>
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
#include "reeld/log.h"
#include "reeld/media.h"
#include "reeld/pipeline.h"
#include "reeld/recording.h"
#include "reeld/storage.h"
#include "reeld/util.h"

/* A UUID no recording has: rec_load answers "no row" for malformed ids
 * instead of a PostgreSQL cast error, so callers answer 404 either way. */
#define NIL_UUID "00000000-0000-0000-0000-000000000000"

static struct db_stmt q_create = {
    "rec_create",
    "WITH r AS (INSERT INTO recordings (id, org_id, user_id, title, description, filename,"
    " content_type, size_bytes, storage_key, upload_metadata, upload_expires_at)"
    " VALUES ($1, $2, $3, coalesce($4, 'Recording on ' || to_char(now() AT TIME ZONE 'UTC',"
    " 'YYYY-MM-DD')), $5, $6, $7, $8::bigint, $9, $10::jsonb,"
    " now() + make_interval(secs => $11::double precision)) RETURNING *)"
    " SELECT " REC_COLS " FROM r"};

static struct db_stmt q_load = {"rec_load", "SELECT " REC_COLS " FROM recordings r"
                                            " WHERE r.id = $1 AND r.org_id = $2"
                                            " AND r.deleted_at IS NULL"};

/* The status change, its event and the pipeline's first job in one
 * statement, so one transaction: nothing is lost between the last byte and
 * the pipeline (pipeline.h); the triggers NOTIFY at commit. $3 the job's
 * max attempts. */
static struct db_stmt q_uploaded = {
    "rec_uploaded",
    "WITH u AS (UPDATE recordings SET status = 'uploaded', upload_expires_at = NULL,"
    " upload_lease_owner = NULL, upload_lease_expires_at = NULL"
    " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL AND status = 'uploading'"
    " AND size_bytes IS NOT NULL AND upload_offset = size_bytes RETURNING *),"
    " e AS (INSERT INTO events (org_id, recording_id, type, data)"
    " SELECT org_id, id, 'recording.status', jsonb_build_object('recording_id', id,"
    " 'status', status, 'stage', 'upload', 'error', NULL) FROM u),"
    " j AS (INSERT INTO jobs (org_id, recording_id, stage, max_attempts)"
    " SELECT org_id, id, 'transcription', $3::integer FROM u"
    " ON CONFLICT (recording_id, stage) WHERE status IN ('queued', 'running') DO NOTHING)"
    " SELECT " REC_COLS " FROM u r"};

static struct db_stmt q_del_mark = {
    "rec_del_mark", "WITH m AS (UPDATE recordings SET deleted_at = now()"
                    " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
                    " RETURNING id, storage_key, thumbnail_key),"
                    " j AS (UPDATE jobs SET status = 'cancelled', finished_at = now()"
                    " WHERE recording_id IN (SELECT id FROM m) AND status IN ('queued', 'running'))"
                    " SELECT id, storage_key, thumbnail_key FROM m"};

/* The delete event outlives the row (events.recording_id has no foreign
 * key), so an SSE client resuming later still learns of it. */
static struct db_stmt q_del_row = {
    "rec_del_row",
    "WITH d AS (DELETE FROM recordings WHERE id = $1 AND org_id = $2"
    " AND deleted_at IS NOT NULL RETURNING id, org_id)"
    " INSERT INTO events (org_id, recording_id, type, data)"
    " SELECT org_id, id, 'recording.deleted', jsonb_build_object('recording_id', id) FROM d"};

static struct db_stmt q_leftovers = {
    "rec_leftovers",
    "SELECT id, org_id, storage_key, thumbnail_key FROM recordings"
    " WHERE deleted_at < now() - interval '10 minutes' ORDER BY deleted_at LIMIT 100"};

/* ---- JSON ----------------------------------------------------------------- */

static void add_int_or_null(struct json_object *o, const char *k, const struct db_res *res, int row,
                            int col)
{
    json_object_object_add(
        o, k, db_isnull(res, row, col) ? NULL : json_object_new_int64(db_int(res, row, col)));
}

struct json_object *rec_json(const struct db_res *res, int row)
{
    struct json_object *o = json_object_new_object();
    api_json_add_str(o, "id", db_str(res, row, 0));
    api_json_add_str(o, "org_id", db_str(res, row, 1));
    api_json_add_str(o, "user_id", db_str(res, row, 2));
    api_json_add_str(o, "title", db_str(res, row, 3));
    api_json_add_str(o, "description", db_str(res, row, 4));
    api_json_add_str(o, "status", db_str(res, row, 5));
    if (db_isnull(res, row, 6) && db_isnull(res, row, 7)) {
        json_object_object_add(o, "error", NULL);
    } else {
        struct json_object *e = json_object_new_object();
        api_json_add_str(e, "stage", db_str(res, row, 6));
        api_json_add_str(e, "message", db_str(res, row, 7));
        json_object_object_add(o, "error", e);
    }
    api_json_add_str(o, "content_type", db_str(res, row, 8));
    add_int_or_null(o, "size_bytes", res, row, 9);
    add_int_or_null(o, "duration_ms", res, row, 10);
    api_json_add_str(o, "created_at", db_str(res, row, 11));
    api_json_add_str(o, "updated_at", db_str(res, row, 12));
    api_json_add_str(o, "completed_at", db_str(res, row, 13));
    int published = db_bool(res, row, 14);
    json_object_object_add(o, "published", json_object_new_boolean(published));
    const char *share_id = db_str(res, row, 15);
    if (published && share_id) {
        char url[512];
        snprintf(url, sizeof url, "%s/share/%s", cfg.public_url, share_id);
        api_json_add_str(o, "share_url", url);
    } else {
        json_object_object_add(o, "share_url", NULL);
    }
    return o;
}

/* ---- create and load ------------------------------------------------------ */

int rec_content_type_ok(const char *ct)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (!ct || strlen(ct) > 255) return 0;
    if (strncasecmp(ct, "video/", 6) != 0 && strncasecmp(ct, "audio/", 6) != 0) return 0;
    const char *p = ct + 6;
    size_t n = 0;
    while (*p && (isalnum((unsigned char)*p) || strchr(tchar, *p))) {
        p++;
        n++;
    }
    if (n == 0) return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0') return 1;
    if (*p != ';') return 0;
    /* parameters (codecs="vp8, opus" from MediaRecorder): printable ASCII */
    for (; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) return 0;
    return 1;
}

/* The file extension of the stored object: the filename's when it is
 * short and alphanumeric (it becomes part of a path), else one derived
 * from the content type, else "bin". */
static void key_ext(const char *filename, const char *ctype, char *out, size_t n)
{
    const char *dot = filename ? strrchr(filename, '.') : NULL;
    if (dot && dot[1]) {
        size_t l = strlen(dot + 1);
        int ok = l <= 10;
        for (size_t i = 0; ok && i < l; i++)
            ok = isalnum((unsigned char)dot[1 + i]) && (unsigned char)dot[1 + i] < 0x80;
        if (ok && l < n) {
            for (size_t i = 0; i < l; i++)
                out[i] = (char)tolower((unsigned char)dot[1 + i]);
            out[l] = '\0';
            return;
        }
    }
    static const struct {
        const char *ct, *ext;
    } map[] = {{"video/mp4", "mp4"},        {"video/webm", "webm"}, {"video/quicktime", "mov"},
               {"video/x-matroska", "mkv"}, {"video/ogg", "ogv"},   {"video/x-msvideo", "avi"},
               {"video/mpeg", "mpeg"},      {"audio/mpeg", "mp3"},  {"audio/mp4", "m4a"},
               {"audio/x-m4a", "m4a"},      {"audio/wav", "wav"},   {"audio/x-wav", "wav"},
               {"audio/webm", "weba"},      {"audio/ogg", "ogg"},   {"audio/flac", "flac"},
               {"audio/aac", "aac"}};
    if (ctype) {
        size_t l = strcspn(ctype, "; \t");
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
            if (strlen(map[i].ct) == l && strncasecmp(map[i].ct, ctype, l) == 0) {
                snprintf(out, n, "%s", map[i].ext);
                return;
            }
        }
    }
    snprintf(out, n, "bin");
}

struct db_req *rec_create(const struct auth_ctx *ctx, const struct rec_new *n, rec_cb cb, void *arg)
{
    char id[37], ext[16], key[160], size[24], ttl[16];
    util_uuid_v4(id);
    key_ext(n->filename, n->content_type, ext, sizeof ext);
    snprintf(key, sizeof key, "org-%s/recordings/%s.%s", ctx->org_id, id, ext);
    snprintf(size, sizeof size, "%lld", (long long)n->size);
    snprintf(ttl, sizeof ttl, "%d", REC_UPLOAD_TTL_S);
    const char *p[11] = {id,
                         ctx->org_id,
                         ctx->user_id,
                         n->title,
                         n->description,
                         n->filename,
                         n->content_type,
                         n->size >= 0 ? size : NULL,
                         key,
                         n->metadata_json,
                         ttl};
    return db_query(app.db, &q_create, 11, p, cb, arg);
}

struct db_req *rec_load(const struct auth_ctx *ctx, const char *id, rec_cb cb, void *arg)
{
    const char *p[2] = {util_is_uuid(id) ? id : NIL_UUID, ctx->org_id};
    return db_query(app.db, &q_load, 2, p, cb, arg);
}

int rec_may_modify(const struct auth_ctx *ctx, const struct db_res *res, int row)
{
    const char *owner = db_str(res, row, 2);
    return ctx->admin || (owner && strcmp(owner, ctx->user_id) == 0);
}

/* ---- finalize ------------------------------------------------------------- */

struct fin {
    char id[37], org_id[37], key[200];
    int64_t size;
    rec_cb cb;
    void *arg;
};

static void fin_reloaded(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct fin *f = arg;
    f->cb(f->arg, res, err, sqlstate);
    free(f);
}

static void fin_updated(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct fin *f = arg;
    if (err || db_nrows(res) == 1) {
        if (!err) {
            struct log_line *l = log_begin(LOG_INFO, "upload complete");
            log_str(l, "recording_id", f->id);
            log_str(l, "org_id", f->org_id);
            log_int(l, "bytes", f->size);
            log_end(l);
            media_probe_duration(f->id, f->org_id, f->key);
        }
        f->cb(f->arg, res, err, sqlstate);
        free(f);
        return;
    }
    /* someone else finalized it (or it was deleted): report it as it is */
    const char *p[2] = {f->id, f->org_id};
    if (!db_query(app.db, &q_load, 2, p, fin_reloaded, f)) {
        f->cb(f->arg, NULL, "database unavailable", "");
        free(f);
    }
}

static void fin_moved(void *arg, int64_t stored, const char *err)
{
    struct fin *f = arg;
    /* storage_upload_finish is idempotent: an earlier attempt that moved
     * the bytes and crashed before the status change reports the object. */
    if (err || stored != f->size) {
        struct log_line *l = log_begin(LOG_ERROR, "upload finish failed");
        log_str(l, "recording_id", f->id);
        log_str(l, "error", err ? err : "stored size differs from the upload length");
        log_int(l, "stored", stored);
        log_int(l, "size", f->size);
        log_end(l);
        f->cb(f->arg, NULL, "storage error", "");
        free(f);
        return;
    }
    char attempts[16];
    snprintf(attempts, sizeof attempts, "%d", cfg.job_max_attempts);
    const char *p[3] = {f->id, f->org_id, attempts};
    if (!db_query(app.db, &q_uploaded, 3, p, fin_updated, f)) {
        f->cb(f->arg, NULL, "database unavailable", "");
        free(f);
    }
}

int rec_finalize(const char *id, const char *org_id, const char *key, int64_t size, rec_cb cb,
                 void *arg)
{
    if (!id || !org_id || !key || size < 0 || !cb) return -1;
    struct fin *f = calloc(1, sizeof *f);
    if (!f) return -1;
    snprintf(f->id, sizeof f->id, "%s", id);
    snprintf(f->org_id, sizeof f->org_id, "%s", org_id);
    snprintf(f->key, sizeof f->key, "%s", key);
    f->size = size;
    f->cb = cb;
    f->arg = arg;
    if (size == 0) {
        /* an empty upload never saw a write: give it its (empty) file */
        char err[128];
        struct storage_upload *u = storage_upload_open(id, 0, err, sizeof err);
        if (u) storage_upload_close(u);
    }
    storage_upload_finish(f->id, f->key, fin_moved, f);
    return 0;
}

/* ---- delete --------------------------------------------------------------- */

struct del {
    char id[37], org_id[37];
    rec_status_cb done;
    void *arg;
};

static void remove_bytes(const char *id, const char *key, const char *thumbnail_key)
{
    if (key) storage_remove(key);
    if (thumbnail_key) storage_remove(thumbnail_key);
    storage_upload_remove(id);
}

static void del_row_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)res;
    struct del *d = arg;
    d->done(d->arg, err ? 500 : 204, err, sqlstate);
    free(d);
}

static void del_marked(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct del *d = arg;
    if (err || db_nrows(res) != 1) {
        d->done(d->arg, err ? 500 : 404, err, sqlstate);
        free(d);
        return;
    }
    /* Marked and out of every listing: the bytes go before the row, so a
     * crash in between leaves a marked row to finish, never orphan files. */
    remove_bytes(d->id, db_str(res, 0, 1), db_str(res, 0, 2));
    /* running stages here stop now (other processes' at their heartbeat) */
    pipeline_cancel_recording(d->id);
    const char *p[2] = {d->id, d->org_id};
    if (!db_query(app.db, &q_del_row, 2, p, del_row_done, d)) {
        d->done(d->arg, 503, "database unavailable", "");
        free(d);
    }
}

int rec_delete(const char *id, const char *org_id, rec_status_cb done, void *arg)
{
    if (!util_is_uuid(id) || !org_id || !done) return -1;
    struct del *d = calloc(1, sizeof *d);
    if (!d) return -1;
    snprintf(d->id, sizeof d->id, "%s", id);
    snprintf(d->org_id, sizeof d->org_id, "%s", org_id);
    d->done = done;
    d->arg = arg;
    const char *p[2] = {d->id, d->org_id};
    if (!db_query(app.db, &q_del_mark, 2, p, del_marked, d)) {
        free(d);
        return -1;
    }
    return 0;
}

static void leftovers_found(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    (void)arg;
    (void)sqlstate;
    if (err) {
        log_msg(LOG_WARN, "deleted recordings sweep failed", "error", err);
        return;
    }
    for (int i = 0; i < db_nrows(res); i++) {
        const char *id = db_str(res, i, 0);
        remove_bytes(id, db_str(res, i, 2), db_str(res, i, 3));
        const char *p[2] = {id, db_str(res, i, 1)};
        db_query(app.db, &q_del_row, 2, p, NULL, NULL);
        log_msg(LOG_INFO, "finished an interrupted delete", "recording_id", id);
    }
}

void rec_delete_leftovers(void)
{
    db_query(app.db, &q_leftovers, 0, NULL, leftovers_found, NULL);
}
