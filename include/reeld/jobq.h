/* The durable job queue: the `jobs` table (schema/001_init.sql) worked by
 * every reeld process that shares the database. At-least-once delivery:
 * a job may run more than once (a process died, a lease was lost), so
 * every handler's effects must be idempotent; what the queue guarantees is
 * that a completion commits only while its worker still holds the job, so
 * a doubled run never commits its result twice (see jobq_done_tx).
 *
 * Life of a job (statuses of the jobs row):
 *
 *   queued --claim--> running --jobq_done--> done
 *                        |   --jobq_fail---> queued (run_at = now + backoff)
 *                        |                or failed (last attempt, permanent)
 *                        |   --lease expired (dead worker)--> queued, or
 *                        |        failed when it was the last attempt
 *   queued/running --jobq_cancel_recording--> cancelled
 *
 * Claim: one statement per stage takes up to n due jobs (`FOR UPDATE SKIP
 * LOCKED`, oldest run_at first), sets them running with attempts + 1 and a
 * lease (leased_by = this worker, lease_expires_at = now + lease). A
 * process claims a stage only while it has free slots for it (the stage's
 * concurrency), with at most one claim in flight per stage; it claims
 * again at once while slots are free and the last claim came back full.
 * Claims are triggered by NOTIFY reeld_jobs '<stage>' (sent at commit when
 * a job becomes queued), by a slow poll (poll_ms) as a safety net, after
 * the LISTEN connection came back, when one of this process's own retries
 * comes due, and when a slot frees while work may be left.
 *
 * Lease: while a handler runs, one UPDATE every lease_ms / 3 extends the
 * leases of all of this worker's running jobs. A job the heartbeat no
 * longer finds running under this worker was lost (another worker took it
 * over, or it was cancelled, possibly by another process): its handler is
 * told as for a cancellation. A reaper (every reap_ms, in every process)
 * puts running jobs whose lease expired back to queued with run_at = now
 * (the attempt counts, so a job that kills its process cannot loop
 * forever; max_attempts must leave room for the crashes a job may meet);
 * one that expired on its last attempt is failed ("lease expired on the
 * last attempt"), through the stage's failed hook, by a process that
 * handles the stage.
 *
 * Retry: jobq_fail puts the job back with run_at = now + delay, where
 * delay is drawn uniformly from [0, min(backoff_cap_ms, backoff_base_ms *
 * 2^(attempt-1))] (exponential backoff with full jitter) and raised to
 * retry_after_ms when the provider asked for more (Retry-After). On the
 * last attempt, or when permanent, the job becomes 'failed' with
 * last_error.
 *
 * Threading and callbacks: everything runs on the loop of `base`. A
 * handler's run is called from a database callback; the other hooks are
 * called where documented. No jobq function runs a handler hook inside
 * itself except jobq_free (cancel hooks). Hooks may call any jobq_*
 * function except jobq_free.
 *
 * Shutdown order: jobq_stop (optional: stops claiming, tells when idle),
 * then db_pool_free, then jobq_free. The pool's LISTEN registration keeps
 * the queue as its argument until the pool is freed (db.h has no
 * unlisten), and pending queries call back into the queue while the pool
 * fails them; so the queue must outlive the pool. */
#ifndef REELD_JOBQ_H
#define REELD_JOBQ_H

struct event_base;
struct evbuffer;
struct db_pool;
struct db_tx;
struct jobq;

/* NOTIFY channel of the jobs_notify trigger; payload = the stage. */
#define JOBQ_CHANNEL "reeld_jobs"
/* max_attempts when nothing else says. */
#define JOBQ_DEFAULT_ATTEMPTS 5

/* One claimed job, as its handler sees it. Everything is owned by the
 * queue and read-only for the handler except `data`. Valid from run until
 * the handler hands the job back (jobq_done, jobq_fail, jobq_commit), or
 * until its cancel hook returns. */
struct jobq_job {
    long long id;
    const char *stage; /* the jobq_stage's name */
    char org_id[37];   /* uuid text */
    char recording_id[37];
    int attempt; /* 1 on the first run; counts runs lost to dead workers */
    int max_attempts;
    const char *payload;         /* the payload JSON object as text, never NULL */
    const char *provider;        /* NULL unless noted (jobq_note_provider_job) */
    const char *provider_job_id; /* idem: a resumed job finds its submission here */
    void *data;                  /* the handler's, never touched by the queue */
};

/* One stage this process works on. */
struct jobq_stage {
    const char *stage; /* 'transcription', 'document', ...: [a-z0-9_]{1,64}, copied */
    /* At most this many handlers of the stage run at once in this
     * process: the per-provider limit (<= 0: 1). */
    int concurrency;
    /* Starts the work. The handler owns the job from here and gives it
     * back exactly once with jobq_done, jobq_fail or jobq_done_tx +
     * jobq_commit (possibly inside run). */
    void (*run)(void *arg, struct jobq_job *job);
    /* Optional. The job was cancelled (jobq_cancel_recording), lost (its
     * lease went to another worker, or another process cancelled it), or
     * the queue is being freed. The handler must drop its work (cancel
     * its requests, kill its child) and never touch the job again: the
     * queue frees it when this returns. Without this hook the handler
     * runs to its end and its jobq_done / jobq_fail / jobq_commit is
     * accepted and ignored (nothing is written). Called from a database
     * callback or from jobq_free. */
    void (*cancel)(void *arg, struct jobq_job *job);
    /* Optional. The job has just failed for good (last attempt,
     * permanent, or a lease that expired on the last attempt). Called
     * inside the transaction that marks the job 'failed', after that
     * UPDATE, before the COMMIT the queue sends when this returns: queue
     * statements on tx (db_tx_query; e.g. set the recording to 'error'
     * with its events row) and return; do not end tx. job is valid only
     * during the call (it may be a job this process never ran). */
    void (*failed)(void *arg, struct db_tx *tx, const struct jobq_job *job, const char *error);
    void *arg;
};

struct jobq_opts {
    /* Names this process in leased_by (copied; 1..200 bytes). NULL:
     * "<hostname>:<pid>:<random>". Must differ between processes. */
    const char *worker_id;
    const struct jobq_stage *stages; /* copied; names unique */
    int nstages;
    int lease_ms;        /* <= 0: 30000 (minimum 300) */
    int poll_ms;         /* safety-net claim poll; <= 0: 2000 */
    int reap_ms;         /* expired-lease scan; <= 0: lease_ms / 2 */
    int stats_ms;        /* queued/running count query; 0: 10000; < 0: never */
    int batch;           /* most jobs per claim; <= 0: 16 */
    int backoff_base_ms; /* <= 0: 1000 */
    int backoff_cap_ms;  /* <= 0: 600000 */
    int max_attempts;    /* default for jobq_enqueue; <= 0: 5 */
};

/* Creates the queue, registers LISTEN reeld_jobs on db and, from the next
 * loop turn, reaps expired leases and claims. Returns NULL on bad options
 * (no stage, a stage without name or run, duplicate names, NULL base or
 * db, worker_id too long) or when LISTEN cannot be registered. */
struct jobq *jobq_new(struct event_base *base, struct db_pool *db, const struct jobq_opts *opts);

/* Stops claiming (a running handler goes on and its completion is still
 * written; heartbeats go on). on_idle (may be NULL) runs once, from the
 * loop and never inside this call, when no handler runs, no claim is in
 * flight and every completion has been answered. Calling it again
 * replaces on_idle. */
void jobq_stop(struct jobq *q, void (*on_idle)(void *arg), void *arg);

/* A graceful stop: stops claiming (as jobq_stop, keeping its on_idle),
 * cancels every job whose handler is still running (cancel hooks; a stage
 * without one is left to finish, its result ignored) and puts those jobs
 * back to queued in one statement, their attempt given back, so that
 * another process, or this one restarted, takes them at once instead of
 * after the lease. Jobs whose completion is being written are left to it.
 * cb (may be NULL) gets the number of jobs released, or -1 when the
 * statement failed (they are then taken over after their lease); it runs
 * from the loop, never inside this call. Returns 0, or -1 (no callback)
 * when the queue is being freed or the pool refuses. */
int jobq_release(struct jobq *q, void (*cb)(void *arg, int nreleased), void *arg);

/* Frees the queue after db_pool_free (see the top). Every job whose
 * handler still runs gets its cancel hook; a job whose stage has none
 * stays allocated until its handler gives it back (which then only frees
 * it). Leases of such jobs expire and other processes take them over. */
void jobq_free(struct jobq *q);

/* This process's worker id (as written to leased_by). */
const char *jobq_worker_id(const struct jobq *q);

/* ---- the handler's side */

/* Success, in its own statement: the job becomes 'done' if this worker
 * still holds it (else nothing is written: it was lost or cancelled).
 * The job must not be touched after the call (handing it back twice is a
 * use after free). Returns 0, or -1 (the job is still the handler's) when
 * job is NULL or sits between jobq_done_tx and jobq_commit. */
int jobq_done(struct jobq_job *job);

/* Failure. error (copied; NULL: "failed") becomes last_error.
 * retry_after_ms >= 0: the earliest retry the provider allows (the delay
 * is at least this much); -1: none. permanent: no retry at all. Written
 * only if this worker still holds the job; the failed hook runs when the
 * failure is final. The job must not be touched after the call. Returns 0,
 * or -1 as jobq_done. */
int jobq_fail(struct jobq_job *job, const char *error, long long retry_after_ms, int permanent);

/* Success inside the caller's transaction, so the stage's result and the
 * job's completion commit together or not at all:
 *
 *   db_tx_begin -> jobq_done_tx(job, tx) -> the caller's db_tx_query
 *   writes (results, recording status, events, next stage's
 *   jobq_enqueue_tx) -> jobq_commit(job, tx, cb, arg)
 *
 * jobq_done_tx queues the conditional completion (status 'done' WHERE
 * leased_by = this worker AND status = 'running') on tx; call it first in
 * the transaction: the row lock it takes keeps the job from being taken
 * over until the transaction ends. Returns 0, or -1 (nothing queued; the
 * job is still the handler's) when job or tx is NULL, the job is not
 * running, or db_tx_query refuses. A cancelled or lost job queues nothing
 * and returns 0: jobq_commit will roll back. */
int jobq_done_tx(struct jobq_job *job, struct db_tx *tx);

enum jobq_commit_outcome {
    JOBQ_COMMITTED, /* the caller's writes and the completion are committed */
    JOBQ_LOST,      /* rolled back: this worker no longer held the job */
    JOBQ_ABORTED,   /* the transaction failed (a statement, the commit, the
                       connection): nothing was committed and the job is
                       put back for a retry as by jobq_fail(not permanent) */
    JOBQ_UNDONE,    /* jobq_commit_many only: rolled back because another
                       job of the transaction was lost; nothing was
                       committed and the job is the handler's again, as
                       before jobq_done_tx (commit it alone to learn
                       whether it was the lost one) */
};
typedef void (*jobq_commit_cb)(void *arg, enum jobq_commit_outcome outcome, const char *err);

/* Ends the transaction of jobq_done_tx: the COMMIT goes out at once,
 * right behind the caller's statements (no round trip first: the
 * completion statement raises when the job is no longer this worker's,
 * which makes the server roll everything back, and the outcome is then
 * JOBQ_LOST), or a ROLLBACK when the job was known lost already. So locks
 * the caller's statements take are held only for the server's time; the
 * caller should queue its most contended statement last. tx must not be
 * used after this call (the queue ends it), nor the job. cb (may be NULL) runs once, never inside
 * this call; err is the failure for JOBQ_ABORTED, else NULL. Returns 0, or -1 (nothing done) when
 * the job is not between jobq_done_tx and here or tx is not that transaction. */
int jobq_commit(struct jobq_job *job, struct db_tx *tx, jobq_commit_cb cb, void *arg);

/* Group commit: the completions of n running jobs (distinct, of this
 * queue) in one transaction, with one statement, so that the stage
 * results of several jobs share a transaction and its commit. The same
 * contract as jobq_done_tx / jobq_commit, with two differences: the
 * statement raises unless this worker still holds every one of the n
 * jobs, and then the outcome is JOBQ_UNDONE for all of them (none is
 * known lost; each is the handler's again); and jobq_commit_many must
 * get exactly the n jobs given to jobq_done_tx_many (any order), cb
 * running once per job with args[i] (args may be NULL). n = 1 is
 * jobq_done_tx / jobq_commit, whose lost outcome is JOBQ_LOST. */
int jobq_done_tx_many(struct jobq_job *const *jobs, int n, struct db_tx *tx);
int jobq_commit_many(struct jobq_job *const *jobs, int n, struct db_tx *tx, jobq_commit_cb cb,
                     void *const *args);

/* Records that an asynchronous provider holds the work (AssemblyAI,
 * Deepgram): jobs.provider and provider_job_id, written only while this
 * worker holds the job; a job resumed after a crash sees them in its
 * jobq_job. cb (may be NULL) gets ok = 1 when written, 0 when the job was
 * no longer held or on error (err set). The job stays the handler's.
 * Returns 0, or -1 on bad input or a job not running. */
int jobq_note_provider_job(struct jobq_job *job, const char *provider, const char *provider_job_id,
                           void (*cb)(void *arg, int ok, const char *err), void *arg);

/* ---- producers */

struct jobq_new_job {
    const char *org_id;       /* uuid */
    const char *recording_id; /* uuid; the recording must exist in org_id */
    const char *stage;
    const char *payload; /* JSON object text, or NULL for {} */
    long long delay_ms;  /* run_at = now() + delay (>= 0) */
    int max_attempts;    /* <= 0: the queue's default */
};

/* job_id > 0: inserted. already = 1 (job_id 0): a queued or running job
 * of the same recording and stage exists (jobs_one_active), which is not
 * an error. err set (job_id 0, already 0): the insert failed. */
typedef void (*jobq_enqueue_cb)(void *arg, long long job_id, int already, const char *err);

/* Inserts a job in its own statement. cb may be NULL; it runs once, never
 * inside this call. Returns 0, or -1 (no callback) on bad input (not
 * uuids, empty stage, negative delay) or when the pool refuses. */
int jobq_enqueue(struct jobq *q, const struct jobq_new_job *spec, jobq_enqueue_cb cb, void *arg);

/* The same inside the caller's transaction (the next stage is enqueued
 * with the previous stage's result). q may be NULL here (a process that
 * works on no stage still enqueues): max_attempts <= 0 then means
 * JOBQ_DEFAULT_ATTEMPTS. A duplicate does not abort tx (ON
 * CONFLICT DO NOTHING). cb reports the INSERT, before the commit: the job
 * exists only if tx commits. Workers are woken by the NOTIFY at commit.
 * Returns -1 (no callback) on bad input or when db_tx_query refuses. */
int jobq_enqueue_tx(struct jobq *q, struct db_tx *tx, const struct jobq_new_job *spec,
                    jobq_enqueue_cb cb, void *arg);

/* Several jobs in one statement inside the caller's transaction (the
 * next stages of a batch of results), as jobq_enqueue_tx without
 * callbacks: duplicates are skipped. Returns -1 (nothing queued) when a
 * spec is bad, n <= 0, or db_tx_query refuses. */
int jobq_enqueue_tx_many(struct jobq *q, struct db_tx *tx, const struct jobq_new_job *specs, int n);

/* Cancels every queued or running job of the recording (jobs of any
 * process): they become 'cancelled'. Handlers running them here get their
 * cancel hook (before cb); in other processes at their next heartbeat. cb
 * (may be NULL) gets the number of jobs cancelled, or -1 and err. Returns
 * 0, or -1 (no callback) for a recording_id that is not a uuid or when
 * the pool refuses. */
int jobq_cancel_recording(struct jobq *q, const char *recording_id,
                          void (*cb)(void *arg, int ncancelled, const char *err), void *arg);

/* ---- observation */

struct jobq_stage_stats {
    const char *stage;
    int running;                     /* handlers running in this process */
    long long db_queued, db_running; /* last count over all processes; -1 before it */
    /* outcomes in this process since start */
    long long claimed, done, retried, failed, cancelled, lost, rescued, errors;
};

/* Stats of the i-th stage (0-based, in jobq_opts order): 0, or -1 when i
 * is out of range. */
int jobq_stats(const struct jobq *q, int i, struct jobq_stage_stats *out);

/* Appends the queue's metrics in Prometheus text format:
 * reeld_jobs_running{stage} (this process), reeld_jobs_queued{stage} and
 * reeld_jobs_db_running{stage} (all processes, last count) and
 * reeld_jobs_total{stage,outcome}. */
void jobq_metrics_render(const struct jobq *q, struct evbuffer *out);

/* The text of the queue's statements, for docs, benches and tests:
 * "claim", "done", "fail", "heartbeat", "reap", "enqueue", "cancel";
 * NULL for another name. bench/queue_claim.sql must use "claim", "done"
 * and "enqueue" unchanged (tests/unit/test_jobq.c checks it). */
const char *jobq_sql(const char *which);

#endif
