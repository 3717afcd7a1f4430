/* The recording resource shared by the handlers that create, list, show
 * and change recordings (src/api/recordings.c, uploads.c, media.c,
 * share.c): one column list, one JSON shape (SPEC 7), one insert. */
#ifndef REELD_RECORDING_H
#define REELD_RECORDING_H

#include <stdint.h>

struct db_res;
struct db_req;
struct json_object;
struct http_req;
struct auth_ctx;

/* Columns a query selects (from "recordings r") for rec_json. */
#define REC_COLS                                                                                   \
    "r.id, r.org_id, r.user_id, r.title, r.description, r.status, r.error_stage, "                 \
    "r.error_message, r.content_type, r.size_bytes, r.duration_ms, api_ts(r.created_at), "         \
    "api_ts(r.updated_at), api_ts(r.completed_at), r.published, r.share_id, r.upload_offset, "     \
    "r.filename, api_ts(r.upload_expires_at), r.storage_key"
#define REC_NCOLS 20

/* The recording object of SPEC 7 from columns REC_COLS at row. */
struct json_object *rec_json(const struct db_res *res, int row);

/* A new recording in status 'uploading'. Strings may be NULL; size < 0
 * means unknown (tus creation-defer-length). The title defaults to
 * "Recording on YYYY-MM-DD"; the storage key is
 * org-<org>/recordings/<id>.<ext> with ext from filename or content type;
 * uploads expire after REC_UPLOAD_TTL_S without progress. */
#define REC_UPLOAD_TTL_S (24 * 3600)
struct rec_new {
    const char *title, *description, *filename, *content_type;
    int64_t size;
    const char *metadata_json; /* tus Upload-Metadata as a JSON object, or NULL */
};
/* Inserts it; cb gets one row of REC_COLS. */
typedef void (*rec_cb)(void *arg, const struct db_res *res, const char *err, const char *sqlstate);
struct db_req *rec_create(const struct auth_ctx *ctx, const struct rec_new *n, rec_cb cb,
                          void *arg);

/* Loads a recording of ctx's organization that is not deleted: one row of
 * REC_COLS, or none (the caller answers 404: another org's id never leaks). */
struct db_req *rec_load(const struct auth_ctx *ctx, const char *id, rec_cb cb, void *arg);

/* Owner or org admin may change a recording (row from REC_COLS). */
int rec_may_modify(const struct auth_ctx *ctx, const struct db_res *res, int row);

#endif
