/* The recording pipeline (SPEC 8): the state table that says which stage
 * follows which, the stage handlers that call the providers (provider.h),
 * and the transactions that store each stage's result together with the
 * recording's new status, its `events` row and the next stage's job.
 *
 *   status      uploaded -> transcribing -> transcribed -> doc_generating
 *                        -> embedding -> completed            (any -> error)
 *   stage       transcription -> document -> embedding -> publication
 *
 * A stage's job (jobq.h) sets the recording to the stage's running status
 * when it starts (one statement with its event; nothing is written when
 * the status is already that), and on success commits, in one
 * transaction: the job's completion, the stage's rows (replacing what an
 * earlier run of the same stage stored, so a doubled run never duplicates
 * rows), the status that follows, its event, and the next stage's job. A
 * stage that fails for good sets the recording to `error` with
 * error.stage, except the document stage: its failure is recorded in
 * error_stage and embedding still runs, so search works; publication then
 * ends the recording `error` instead of `completed`.
 *
 * The upload path enqueues the first job (rec_finalize, in the statement
 * that sets `uploaded`), so nothing is lost between the last byte and the
 * pipeline. */
#ifndef REELD_PIPELINE_H
#define REELD_PIPELINE_H

#include <stddef.h>

struct evbuffer;

/* Starts the stage workers of this process on app.base / app.db (unless
 * REELD_WORKERS=off). The providers must be chosen (prov_init). Returns 0,
 * or -1 with err. */
int pipeline_start(char *err, size_t errlen);

/* SIGTERM: stops claiming, cancels the stages running here and puts
 * their jobs back in the queue for another process (or this one after a
 * restart) at once (jobq_release). done runs from the loop when that is
 * written (or failed: the jobs are then taken over after their lease).
 * Returns -1 (done never runs) when there is nothing to release (workers
 * off) or it cannot start. */
int pipeline_release(void (*done)(void *arg), void *arg);

/* After db_pool_free (jobq.h's order): frees the workers, cancelling
 * handlers still running (their jobs are taken over after the lease). */
void pipeline_free(void);

/* Cancels the recording's queued and running jobs in every process (its
 * running handlers here are cancelled at once). Fire and forget. */
void pipeline_cancel_recording(const char *recording_id);

/* POST /api/recordings/{id}/retry and /document/regenerate: enqueue a
 * stage of a recording of org_id anew (with fresh attempts). The recording
 * must not be deleted, and must be in a state where it makes sense:
 * retry: status `error` (stage: the given one, or error.stage; a stage
 * after a failed transcription is refused); the recording goes back to the
 * status before that stage, error cleared, with its event.
 * regenerate: status `completed` or `error` with a transcript; only the
 * document is written again (model: the one asked, or the configured one).
 * done gets 202, 404 (no such recording), 409 (not in such a state, msg
 * says why), 503 or 500. */
typedef void (*pipeline_done_cb)(void *arg, int status, const char *msg);
int pipeline_retry(const char *org_id, const char *recording_id, const char *stage,
                   pipeline_done_cb done, void *arg);
int pipeline_regenerate(const char *org_id, const char *recording_id, const char *model,
                        pipeline_done_cb done, void *arg);

/* 1 when stage names a pipeline stage. */
int pipeline_is_stage(const char *stage);

/* The job queue's and the stages' metrics (Prometheus text). */
void pipeline_metrics_render(struct evbuffer *out);

#endif
