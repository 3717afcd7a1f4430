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
 * helper thread and reports back on the loop. Nothing else blocks. */
#ifndef REELD_STORAGE_H
#define REELD_STORAGE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct storage_upload;

/* Sets up the backend chosen by REELD_STORAGE under data_dir (creates the
 * directories). Returns 0 or -1 with err. */
int storage_init(struct event_base *base, const char *data_dir, char *err, size_t errlen);
void storage_shutdown(void);

/* ---- uploads in progress ---------------------------------------------- */

/* Opens (creating when absent) the in-progress object of upload_id for
 * appending at offset. Bytes beyond offset (written but never made
 * durable and acknowledged before a crash) are discarded. Returns NULL
 * with err when offset exceeds what is stored or the file cannot be
 * opened. */
struct storage_upload *storage_upload_open(const char *upload_id, int64_t offset, char *err,
                                           size_t errlen);
/* Appends len bytes (len <= 1 MiB). Returns 0, or -1 with *nospace set
 * when the disk is full (the caller answers 507; what was made durable
 * before stays, so the upload can resume from the last durable offset). */
int storage_upload_write(struct storage_upload *u, const void *data, size_t len, int *nospace);
/* Bytes appended so far, durable or not. */
int64_t storage_upload_offset(const struct storage_upload *u);
/* Makes everything appended durable, then runs cb on the loop with the
 * durable offset (err NULL) or an error. At most one sync per upload at
 * a time. The upload stays open. */
typedef void (*storage_sync_cb)(void *arg, int64_t durable_offset, const char *err);
void storage_upload_sync(struct storage_upload *u, storage_sync_cb cb, void *arg);
/* Closes the handle (a pending sync still reports, then the handle goes). */
void storage_upload_close(struct storage_upload *u);
/* Moves the completed upload to key atomically (rename + directory
 * fsync, off the loop like a sync); cb reports as for sync. */
void storage_upload_finish(const char *upload_id, const char *key, storage_sync_cb cb, void *arg);
/* Removes an in-progress upload's bytes (termination, expiry). */
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
int storage_remove(const char *key);

#endif
