/* Media of a recording (SPEC 7): the video endpoint and the duration
 * probe.
 *
 * GET /api/recordings/{id}/video (registered by api_media_routes in
 * api.h) streams the stored file from the loop in bounded memory: pieces
 * of MEDIA_PIECE bytes are read with pread(2) only while the client's
 * output queue holds less than MEDIA_QUEUE_MARK, and the rest follows
 * from the http server's on_drain. A slow reader therefore costs at most
 * about MEDIA_QUEUE_MARK + MEDIA_PIECE bytes, whatever the file size. */
#ifndef REELD_MEDIA_H
#define REELD_MEDIA_H

#define MEDIA_PIECE (64 * 1024)
#define MEDIA_QUEUE_MARK (256 * 1024)
/* Lifetime of the signed video URLs the API hands out (SPEC 7). */
#define MEDIA_URL_TTL_S 3600

/* Duration probes running at once; the others wait in order. */
#define MEDIA_PROBES_MAX 2

/* Fills recordings.duration_ms of a recording whose upload completed: runs
 * `ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1`
 * on the stored file as a child process read through the loop (30 s
 * timeout), then UPDATEs the row (matched by id and org_id). Fire and
 * forget: the call copies its arguments and returns at once; the probe
 * owns its own state and frees it when done. Every failure (no local
 * path, ffprobe missing or failing, unparsable output, database error) is
 * logged with recording_id and leaves duration_ms as it was; nothing is
 * fatal. Needs app.base and app.db (app.h). */
void media_probe_duration(const char *recording_id, const char *org_id, const char *storage_key);

/* At exit, after proc_shutdown: frees the probes still waiting or
 * running (their children are gone, their callbacks never come). */
void media_shutdown(void);

#endif
