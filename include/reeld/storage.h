/* Stored files: recordings (and later thumbnails), written by uploads and
 * read by the media endpoint and the pipeline.
 *
 * Keys name objects: "org-<org_id>/recordings/<recording_id>.<ext>".
 * Backends hide where the bytes live: the local backend keeps objects
 * under <data_dir>/storage/<key> and in-progress uploads under
 * <data_dir>/uploads/<upload_id>.part; an S3 backend (a later issue)
 * implements the same calls with multipart uploads, so handlers never
 * know which one runs.
 *
 * Loop discipline: writes and reads are done in bounded pieces (callers
 * hand at most HTTP_BODY_PIECE bytes at a time); the only call that can
 * take long, making bytes durable (fdatasync), runs off the loop on a
 * helper thread and reports back on the loop. Nothing else blocks.
 *
 * Callbacks (storage_sync_cb) always run on the loop, on a later turn,
 * never inside the call that asked for them (the only exception: when
 * the module is not running or memory is exhausted, the callback runs at
 * once with an error).
 *
 * Names: an upload_id must be a UUID (case-insensitive; stored lower
 * case); a key is a relative path of [A-Za-z0-9._-] segments without
 * empty, "." or ".." segments. Anything else is refused (NULL / -1 /
 * error callback), so no path is built from unchecked input. */
#ifndef REELD_STORAGE_H
#define REELD_STORAGE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct storage_upload;

/* Largest piece storage_upload_write accepts. */
#define STORAGE_PIECE_MAX ((size_t)1 << 20)
/* The err of a sync or finish that failed because the disk is full
 * (compare with strcmp; the handler answers 507 as for *nospace). */
#define STORAGE_ERR_NOSPACE "no space left on device"

/* Sets up the backend chosen by REELD_STORAGE (cfg.storage; NULL means
 * local) under data_dir: creates <data_dir>/storage and
 * <data_dir>/uploads (0700) and starts the helper thread. "s3" is
 * refused in this build. Returns 0 or -1 with err. */
int storage_init(struct event_base *base, const char *data_dir, char *err, size_t errlen);
/* Call after the loop has stopped, while the objects named by pending
 * callbacks' args still exist: lets the helper finish every queued sync
 * and finish (so accepted bytes are made durable), joins it, then runs
 * their callbacks and frees handles closed while a sync was pending.
 * storage_init may be called again afterwards. */
void storage_shutdown(void);

/* ---- uploads in progress ---------------------------------------------- */

/* Opens (creating when absent) the in-progress object of upload_id for
 * appending at offset. Bytes beyond offset (written but never made
 * durable and acknowledged before a crash) are discarded. Returns NULL
 * with err when offset exceeds what is stored or the file cannot be
 * opened. */
struct storage_upload *storage_upload_open(const char *upload_id, int64_t offset, char *err,
                                           size_t errlen);
/* Appends len bytes (len <= STORAGE_PIECE_MAX). Returns 0, or -1 (and
 * the offset is unchanged) with *nospace set when the disk is full: the
 * caller answers 507. The file is cut back to the offset it had before
 * this call, and what was made durable before stays, so the upload can
 * resume from the last durable offset (storage_upload_open at that
 * offset drops anything written after it). nospace may be NULL. */
int storage_upload_write(struct storage_upload *u, const void *data, size_t len, int *nospace);
/* Bytes appended so far, durable or not. */
int64_t storage_upload_offset(const struct storage_upload *u);
/* Makes everything appended so far durable, then runs cb on the loop
 * with the durable offset (err NULL), or with durable_offset -1 and an
 * error (STORAGE_ERR_NOSPACE when the disk is full); after an error,
 * bytes past the previous durable offset are not known to be on disk.
 * At most one sync per upload at a time: a second one while the first
 * is pending reports an error (the first still reports normally). The
 * upload stays open; writes may continue while the sync runs (the
 * reported offset covers only what was appended before the call).
 * cb may call storage_upload_sync again or storage_upload_close. */
typedef void (*storage_sync_cb)(void *arg, int64_t durable_offset, const char *err);
void storage_upload_sync(struct storage_upload *u, storage_sync_cb cb, void *arg);
/* Closes the handle. A pending sync still completes and its callback
 * still runs (keep its arg alive); the handle and its fd are freed after
 * it. The handle must not be used after this call. */
void storage_upload_close(struct storage_upload *u);
/* Moves the completed upload to key atomically (fsync of the file,
 * directories created as needed, rename, fsync of the directory; all off
 * the loop like a sync); cb reports the object's size as
 * durable_offset, or -1 and an error ("upload not found" when neither
 * the upload nor the object exists). Idempotent: when the upload was
 * already moved to key, it reports the object's size. Close the upload's
 * handle first (a handle still open keeps writing to the moved file). */
void storage_upload_finish(const char *upload_id, const char *key, storage_sync_cb cb, void *arg);
/* Removes an in-progress upload's bytes (termination, expiry). Absent
 * is not an error. Returns 0, or -1 for a bad id or an unlink error. */
int storage_upload_remove(const char *upload_id);

/* ---- stored objects ----------------------------------------------------- */

/* Size of a stored object, or -1 when absent. */
int64_t storage_size(const char *key);
/* Opens a stored object for reading: returns an fd (the caller closes it)
 * or -1. Reads are pread() in bounded pieces on the loop: the page cache
 * makes them short; the media endpoint paces them by its output queue. */
int storage_open_read(const char *key, int64_t *size);
/* Local path of a stored object for child processes (ffprobe, ffmpeg),
 * or NULL when the backend has none (S3: the caller uses a signed URL). */
const char *storage_local_path(const char *key, char *buf, size_t buflen);
/* Removes a stored object; absent is not an error. Returns 0 or -1. */
int storage_remove(const char *key);

#endif
