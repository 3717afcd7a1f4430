/* Private to src/api: the two recording transitions that both the REST
 * handlers (recordings.c) and the tus server (uploads.c) perform, kept in
 * rec.c beside the rest of the recording resource (recording.h). */
#ifndef REELD_API_REC_INT_H
#define REELD_API_REC_INT_H

#include <stdint.h>

#include "reeld/recording.h"

/* The largest upload accepted (tus Tus-Max-Size; REST `size`): 10 GiB. */
#define REC_MAX_SIZE (10LL * 1024 * 1024 * 1024)
/* Suggested PATCH size handed to clients in `upload.chunk_size`. */
#define REC_CHUNK_SIZE (5 * 1024 * 1024)

/* Every byte of an upload is durable (upload_offset = size): moves the
 * in-progress bytes to key (storage_upload_finish; when they were moved
 * already by an earlier attempt, the stored object of the right size is
 * accepted), then, in one statement, sets status 'uploaded' and inserts
 * the 'recording.status' event, and starts the duration probe. cb runs
 * exactly once, from the loop and never inside this call, with one row
 * of REC_COLS (the recording as it is now: a concurrent finalize that won
 * is not an error), or with err ("storage" failures have sqlstate "").
 * Returns -1 (cb never runs) when it cannot start. */
int rec_finalize(const char *id, const char *org_id, const char *key, int64_t size, rec_cb cb,
                 void *arg);

/* Deletes a recording of org_id: marks deleted_at and cancels its queued
 * or running jobs (one statement), removes its stored object and any
 * in-progress upload, deletes the row (children cascade) and inserts a
 * 'recording.deleted' event (one statement). done runs exactly once,
 * from the loop, with 204, 404 (no such live recording: a concurrent
 * delete won), 503 or 500 (err set). A crash between the steps leaves a
 * row with deleted_at set, which the upload sweeper finishes later.
 * Returns -1 (done never runs) when it cannot start. */
typedef void (*rec_status_cb)(void *arg, int status, const char *err, const char *sqlstate);
int rec_delete(const char *id, const char *org_id, rec_status_cb done, void *arg);

/* Finishes deletes that a crash interrupted (rows with deleted_at older
 * than a few minutes): files, then rows. Fire and forget; logs. */
void rec_delete_leftovers(void);

/* 1 when ct looks like "type/subtype" (RFC 9110 tokens, optional
 * parameters) with type video or audio. */
int rec_content_type_ok(const char *ct);

#endif
