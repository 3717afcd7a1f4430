/* The durable job queue; the contract is include/reeld/jobq.h.
 *
 * In-process, a claimed job is a `struct job` on the queue's list from
 * its claim until the answer to its last statement; its state says who
 * holds it:
 *
 *   J_RUNNING    the handler works on it (holds a slot of its stage)
 *   J_ORPHAN     cancelled or lost, stage without cancel hook: the handler
 *                still works; its hand-back writes nothing
 *   J_DROPPING   inside the stage's cancel hook
 *   J_TX         jobq_done_tx queued the completion in the handler's tx
 *   J_COMMITTING jobq_commit called: the COMMIT is out (sent right behind
 *                the caller's statements), or a ROLLBACK when the job
 *                was known lost already
 *   J_WRITING    the handler let go; the done/fail statement is out
 *
 * A handler's slot is given back when the handler lets go (jobq_done,
 * jobq_fail, jobq_commit), not when the database answers: the provider
 * concurrency is what the slots bound.
 *
 * Claims: per stage, `dirty` says due jobs may be waiting (a NOTIFY, the
 * poll, a full batch, a retry coming due); pump() sends one claim when
 * the stage is dirty, has free slots and has no claim out. */
#include "reeld/jobq.h"
#include "reeld/db.h"
#include "reeld/log.h"
#include "reeld/util.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_WORKER_ID 200
#define MAX_STAGE_NAME 64
#define MAX_ERROR_BYTES 1000
#define REAP_BATCH 100
#define MAX_DELAY_MS (30LL * 24 * 3600 * 1000) /* a month: keeps the interval sane */
#define WAKE_MARGIN_MS 5

/* ---- statements (the queue's SQL, in one place) */

/* $1 worker, $2 lease ms, $3 stage, $4 how many. The CTE locks the due
 * rows first (skipping rows other workers hold) and is evaluated once, so
 * the UPDATE takes exactly the rows it locked. */
static struct db_stmt q_claim = {
    "jobq_claim",
    "WITH next AS (SELECT id FROM jobs"
    " WHERE status = 'queued' AND stage = $3 AND run_at <= now()"
    " ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
    " UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, leased_by = $1,"
    " lease_expires_at = now() + $2::integer * interval '1 millisecond',"
    " started_at = coalesce(j.started_at, now()), finished_at = NULL"
    " FROM next WHERE j.id = next.id"
    " RETURNING j.id, j.org_id, j.recording_id, j.stage, j.attempts, j.max_attempts,"
    " j.payload::text AS payload, j.provider, j.provider_job_id"};

/* $1 job, $2 worker. Conditional: a worker that lost the job writes
 * nothing (0 rows). */
static struct db_stmt q_done = {"jobq_done",
                                "UPDATE jobs SET status = 'done', lease_expires_at = NULL,"
                                " finished_at = now(), last_error = NULL"
                                " WHERE id = $1 AND leased_by = $2 AND status = 'running'"};

/* The completion inside a caller's transaction: the same UPDATE, but a
 * job this worker no longer holds raises division_by_zero (22012), which
 * aborts the transaction on the server. So the COMMIT can follow the
 * caller's statements in the same pipeline, without a round trip to look
 * at the answer first: rows locked by the caller's statements (the
 * events trigger's per-organization lock among them) are held only for
 * the server's own time. */
#define LOST_SQLSTATE "22012"
/* $1 job ids, $2 worker, $3 how many: all of them or it raises. */
static struct db_stmt q_done_tx = {
    "jobq_done_tx", "WITH u AS (UPDATE jobs SET status = 'done',"
                    " lease_expires_at = NULL, finished_at = now(), last_error = NULL"
                    " WHERE id = ANY($1::bigint[]) AND leased_by = $2 AND status = 'running'"
                    " RETURNING 1) SELECT 1 / (count(*) = $3::integer)::integer FROM u"};

/* $1 job, $2 worker, $3 permanent, $4 delay ms, $5 error. */
static struct db_stmt q_fail = {
    "jobq_fail",
    "UPDATE jobs SET"
    " status = CASE WHEN $3::boolean OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,"
    " run_at = CASE WHEN $3::boolean OR attempts >= max_attempts THEN run_at"
    " ELSE now() + $4::bigint * interval '1 millisecond' END,"
    " finished_at = CASE WHEN $3::boolean OR attempts >= max_attempts THEN now() END,"
    " lease_expires_at = NULL, last_error = $5"
    " WHERE id = $1 AND leased_by = $2 AND status = 'running'"
    " RETURNING status"};

/* $1 worker, $2 job ids. The run did not fail: its attempt is given
 * back. */
static struct db_stmt q_release = {
    "jobq_release",
    "UPDATE jobs SET status = 'queued', run_at = now(), attempts = greatest(attempts - 1, 0),"
    " lease_expires_at = NULL, last_error = 'released by ' || $1 || ' at shutdown'"
    " WHERE id = ANY($2::bigint[]) AND leased_by = $1 AND status = 'running'"};

/* $1 worker, $2 lease ms, $3 job ids. */
static struct db_stmt q_heartbeat = {
    "jobq_heartbeat",
    "UPDATE jobs SET lease_expires_at = now() + $2::integer * interval '1 millisecond'"
    " WHERE id = ANY($3::bigint[]) AND leased_by = $1 AND status = 'running'"
    " RETURNING id"};

/* $1 worker, $2 lease ms, $3 how many, $4 the stages this process works.
 * Expired leases go back to queued; one that expired on the last attempt
 * is leased to this worker (status stays running) so that it fails
 * through the stage's failed hook like any final failure. */
static struct db_stmt q_reap = {
    "jobq_reap", "WITH expired AS (SELECT id, leased_by FROM jobs"
                 " WHERE status = 'running' AND lease_expires_at < now()"
                 " AND (attempts < max_attempts OR stage = ANY($4::text[]))"
                 " ORDER BY lease_expires_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
                 " UPDATE jobs j SET"
                 " status = CASE WHEN j.attempts < j.max_attempts THEN 'queued' ELSE 'running' END,"
                 " run_at = CASE WHEN j.attempts < j.max_attempts THEN now() ELSE j.run_at END,"
                 " leased_by = CASE WHEN j.attempts < j.max_attempts THEN j.leased_by ELSE $1 END,"
                 " lease_expires_at = CASE WHEN j.attempts < j.max_attempts THEN NULL"
                 " ELSE now() + $2::integer * interval '1 millisecond' END,"
                 " last_error = 'lease of ' || coalesce(e.leased_by, '?') || ' expired'"
                 " FROM expired e WHERE j.id = e.id"
                 " RETURNING j.id, j.org_id, j.recording_id, j.stage, j.attempts, j.max_attempts,"
                 " j.payload::text AS payload, j.provider, j.provider_job_id, j.status,"
                 " e.leased_by AS previous"};

/* $1 org, $2 recording, $3 stage, $4 payload, $5 delay ms, $6 max attempts. */
static struct db_stmt q_enqueue = {
    "jobq_enqueue",
    "INSERT INTO jobs (org_id, recording_id, stage, payload, run_at, max_attempts)"
    " VALUES ($1, $2, $3, coalesce($4::jsonb, '{}'),"
    " now() + $5::bigint * interval '1 millisecond', $6)"
    " ON CONFLICT (recording_id, stage) WHERE status IN ('queued', 'running') DO NOTHING"
    " RETURNING id"};

/* The same for several jobs: $1 orgs, $2 recordings, $3 stages, $4
 * payloads (NULL: {}), $5 delays ms, $6 max attempts, as arrays. */
static struct db_stmt q_enqueue_many = {
    "jobq_enqueue_many",
    "INSERT INTO jobs (org_id, recording_id, stage, payload, run_at, max_attempts)"
    " SELECT v.o, v.r, v.s, coalesce(v.p::jsonb, '{}'), now() + v.d * interval '1 millisecond',"
    " v.m FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],"
    " $6::integer[]) AS v(o, r, s, p, d, m)"
    " ON CONFLICT (recording_id, stage) WHERE status IN ('queued', 'running') DO NOTHING"};

/* $1 recording. */
static struct db_stmt q_cancel = {
    "jobq_cancel",
    "UPDATE jobs SET status = 'cancelled', lease_expires_at = NULL, finished_at = now()"
    " WHERE recording_id = $1 AND status IN ('queued', 'running')"
    " RETURNING id"};

/* $1 job, $2 worker, $3 provider, $4 provider job id. */
static struct db_stmt q_provider = {"jobq_provider",
                                    "UPDATE jobs SET provider = $3, provider_job_id = $4"
                                    " WHERE id = $1 AND leased_by = $2 AND status = 'running'"};

static struct db_stmt q_stats = {"jobq_stats",
                                 "SELECT stage, status, count(*) FROM jobs"
                                 " WHERE status IN ('queued', 'running') GROUP BY stage, status"};

/* ---- objects */

enum jstate { J_RUNNING, J_ORPHAN, J_DROPPING, J_TX, J_COMMITTING, J_WRITING };

struct stage {
    struct jobq_stage def;
    char *name;
    struct jobq *q;
    int running; /* slots held */
    int dirty, inflight, asked;
    struct db_req *claim;
    struct event *wake; /* one of our retries comes due */
    int64_t wake_at;    /* mono ms, 0 when not armed */
    long long db_queued, db_running;
    long long claimed, done, retried, failed, cancelled, lost, rescued, errors;
};

/* The jobs completed in one transaction (jobq_done_tx_many), and what
 * the answer to their completion statement said. */
struct txg {
    int owned; /* -1 unknown, 1 all held, 0 one was lost, -2 error */
    char *err; /* owned == -2 */
    int n;
    struct job *jobs[];
};

struct job {
    struct jobq_job pub; /* first member: handlers get &pub */
    struct jobq *q;      /* NULL once detached by jobq_free */
    struct job *prev, *next;
    struct job *dnext; /* on the queue's deferred list */
    int si;            /* stage index */
    enum jstate state;
    int holds_slot;
    int orphan;             /* was cancelled or lost while the handler held it */
    struct txg *g;          /* J_TX/J_COMMITTING: its transaction's jobs */
    unsigned long long gen; /* claim order, to match heartbeat answers */
    int64_t claimed_ms;
    struct db_tx *tx;
    char *err;
    long long delay_ms;
    int permanent;
    int aborted; /* jobq_commit failed: report JOBQ_ABORTED when the fail ends */
    int final;   /* the fail transaction marks the job 'failed' */
    jobq_commit_cb ccb;
    void *carg;
    char *stage_name, *payload, *provider, *provider_job_id;
};

struct jobq {
    struct event_base *base;
    struct db_pool *db;
    char worker_id[MAX_WORKER_ID + 1];
    char lease_str[16];
    char stages_lit[512]; /* {a,b}: the reaper's $4 */
    struct stage *stages;
    int nstages;
    int lease_ms, poll_ms, reap_ms, stats_ms, batch, backoff_base_ms, backoff_cap_ms;
    int max_attempts;
    struct job *jobs;
    int njobs;
    unsigned long long gen;
    struct event *poll_ev, *reap_ev, *hb_ev, *stats_ev, *defer_ev;
    struct db_req *hb, *reap, *stats;
    long long *hb_ids;
    int hb_n;
    unsigned long long hb_gen;
    struct job *deferred; /* jobq_commit outcomes to deliver (JOBQ_LOST) */
    int starting;
    int stopping, freeing;
    int idle_due;
    void (*on_idle)(void *arg);
    void *idle_arg;
    int trouble; /* the last periodic statement failed: log transitions only */
};

static void fail_start(struct job *j, const char *error, long long retry_after_ms, int permanent);

/* ---- small helpers */

static void log_job(struct log_line *l, const struct job *j)
{
    log_str(l, "stage", j->pub.stage);
    log_int(l, "job_id", j->pub.id);
    log_str(l, "recording_id", j->pub.recording_id);
    log_str(l, "org_id", j->pub.org_id);
    log_int(l, "attempt", j->pub.attempt);
}

/* The periodic statements fail every few seconds while the database is
 * down: say so once, and once when it works again. */
static void note_trouble(struct jobq *q, const char *what, const char *err)
{
    struct log_line *l = log_begin(q->trouble ? LOG_DEBUG : LOG_WARN, "jobq query failed");
    log_str(l, "query", what);
    log_str(l, "error", err);
    log_end(l);
    q->trouble = 1;
}

static void note_fine(struct jobq *q)
{
    if (!q->trouble) return;
    q->trouble = 0;
    log_msg(LOG_INFO, "jobq queries work again", NULL, NULL);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* last_error: at most MAX_ERROR_BYTES, cut on a character boundary, and
 * valid UTF-8 (a provider's body may be anything; PostgreSQL refuses
 * invalid text). */
static char *error_copy(const char *s)
{
    if (!s || !*s) s = "failed";
    size_t n = strlen(s);
    if (n > MAX_ERROR_BYTES) {
        n = MAX_ERROR_BYTES;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, s, n);
    out[n] = '\0';
    if (!util_utf8_valid(out, n))
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)out[i] >= 0x80) out[i] = '?';
    return out;
}

static int stage_index(const struct jobq *q, const char *name)
{
    for (int i = 0; name && i < q->nstages; i++)
        if (strcmp(q->stages[i].name, name) == 0) return i;
    return -1;
}

static struct job *find_job(const struct jobq *q, long long id)
{
    for (struct job *j = q->jobs; j; j = j->next)
        if (j->pub.id == id) return j;
    return NULL;
}

static void timer_add(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

/* Backoff with full jitter, never under retry_after_ms. */
static long long backoff_ms(const struct jobq *q, int attempt, long long retry_after_ms)
{
    long long cap = q->backoff_cap_ms, exp = q->backoff_base_ms;
    for (int i = 1; i < attempt && exp < cap; i++)
        exp *= 2;
    if (exp > cap) exp = cap;
    unsigned long long r = 0;
    if (util_random(&r, sizeof r) != 0) r = (unsigned long long)util_mono_us();
    long long d = (long long)(r % (unsigned long long)(exp + 1));
    if (retry_after_ms > d) d = retry_after_ms;
    return d > MAX_DELAY_MS ? MAX_DELAY_MS : d;
}

/* ---- job objects */

static void job_unlink(struct job *j)
{
    struct jobq *q = j->q;
    if (!q) return;
    if (j->prev)
        j->prev->next = j->next;
    else
        q->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    q->njobs--;
}

static void job_free(struct job *j)
{
    job_unlink(j);
    free(j->err);
    free(j->stage_name);
    free(j->payload);
    free(j->provider);
    free(j->provider_job_id);
    free(j);
}

/* A row of the claim or reap answer. */
static struct job *job_from_row(struct jobq *q, int si, const struct db_res *res, int row)
{
    struct job *j = calloc(1, sizeof *j);
    const char *org = db_str(res, row, db_col(res, "org_id"));
    const char *rec = db_str(res, row, db_col(res, "recording_id"));
    const char *payload = db_str(res, row, db_col(res, "payload"));
    if (!j) return NULL;
    j->q = q;
    j->si = si;
    j->gen = ++q->gen;
    j->claimed_ms = util_mono_ms();
    j->stage_name = strdup(q->stages[si].name);
    j->payload = strdup(payload ? payload : "{}");
    j->provider = dup_or_null(db_str(res, row, db_col(res, "provider")));
    j->provider_job_id = dup_or_null(db_str(res, row, db_col(res, "provider_job_id")));
    if (!j->stage_name || !j->payload) {
        j->q = NULL;
        job_free(j);
        return NULL;
    }
    j->pub.id = db_int(res, row, db_col(res, "id"));
    j->pub.stage = j->stage_name;
    snprintf(j->pub.org_id, sizeof j->pub.org_id, "%s", org ? org : "");
    snprintf(j->pub.recording_id, sizeof j->pub.recording_id, "%s", rec ? rec : "");
    j->pub.attempt = (int)db_int(res, row, db_col(res, "attempts"));
    j->pub.max_attempts = (int)db_int(res, row, db_col(res, "max_attempts"));
    j->pub.payload = j->payload;
    j->pub.provider = j->provider;
    j->pub.provider_job_id = j->provider_job_id;
    j->next = q->jobs;
    if (q->jobs) q->jobs->prev = j;
    q->jobs = j;
    q->njobs++;
    return j;
}

/* ---- claiming */

static void on_claim(void *arg, const struct db_res *res, const char *err, const char *sqlstate);

static void pump(struct stage *st)
{
    struct jobq *q = st->q;
    if (q->stopping || q->freeing || st->inflight || !st->dirty) return;
    int free_slots = st->def.concurrency - st->running;
    if (free_slots <= 0) return;
    int n = free_slots < q->batch ? free_slots : q->batch;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", n);
    const char *p[4] = {q->worker_id, q->lease_str, st->name, lim};
    st->dirty = 0; /* a failed claim waits for the next trigger */
    st->claim = db_query(q->db, &q_claim, 4, p, on_claim, st);
    if (!st->claim) return;
    st->inflight = 1;
    st->asked = n;
}

static void trigger(struct stage *st)
{
    st->dirty = 1;
    pump(st);
}

static void trigger_all(struct jobq *q)
{
    for (int i = 0; i < q->nstages; i++)
        trigger(&q->stages[i]);
}

static void check_idle(struct jobq *q)
{
    if (!q->stopping || q->freeing || !q->on_idle || q->njobs > 0) return;
    for (int i = 0; i < q->nstages; i++)
        if (q->stages[i].inflight) return;
    q->idle_due = 1;
    event_active(q->defer_ev, EV_TIMEOUT, 0);
}

static void release_slot(struct job *j)
{
    if (!j->holds_slot || !j->q) return;
    struct stage *st = &j->q->stages[j->si];
    j->holds_slot = 0;
    st->running--;
    pump(st);
}

static void on_claim(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct stage *st = arg;
    struct jobq *q = st->q;
    (void)sqlstate;
    st->claim = NULL;
    if (err) {
        st->inflight = 0;
        note_trouble(q, "claim", err);
        check_idle(q);
        return;
    }
    note_fine(q);
    int n = db_nrows(res), si = (int)(st - q->stages);
    /* slots first: a handler that finishes inside run must not let a new
     * claim take slots the rest of this batch is about to use */
    st->running += n;
    for (int i = 0; i < n; i++) {
        struct job *j = job_from_row(q, si, res, i);
        if (!j) {
            st->running--;
            log_msg(LOG_ERROR, "jobq: out of memory; the job's lease will expire", "stage",
                    st->name);
            continue;
        }
        j->holds_slot = 1;
        st->claimed++;
        struct log_line *l = log_begin(LOG_DEBUG, "job claimed");
        log_job(l, j);
        log_end(l);
        st->def.run(st->def.arg, &j->pub);
    }
    st->inflight = 0;
    if (n >= st->asked) st->dirty = 1; /* a full batch: there may be more */
    pump(st);
    check_idle(q);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct stage *st = arg;
    (void)fd;
    (void)what;
    st->wake_at = 0;
    trigger(st);
}

/* One of our retries is due in delay_ms: claim then, without waiting for
 * the poll (its NOTIFY came when it was requeued, before it was due). */
static void wake_in(struct stage *st, long long delay_ms)
{
    int64_t at = util_mono_ms() + delay_ms + WAKE_MARGIN_MS;
    if (st->q->stopping || st->q->freeing) return;
    if (st->wake_at && st->wake_at <= at) return;
    st->wake_at = at;
    long long ms = delay_ms + WAKE_MARGIN_MS;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    event_add(st->wake, &tv);
}

/* ---- losing a job: cancelled here, or its lease is gone */

static void job_drop(struct job *j, int lost)
{
    struct jobq *q = j->q;
    struct stage *st = &q->stages[j->si];
    if (lost)
        st->lost++;
    else
        st->cancelled++;
    struct log_line *l = log_begin(LOG_WARN, lost ? "job lost" : "job cancelled");
    log_job(l, j);
    log_end(l);
    if (st->def.cancel) {
        j->state = J_DROPPING;
        st->def.cancel(st->def.arg, &j->pub);
        release_slot(j);
        job_free(j);
        check_idle(q);
    } else {
        j->state = J_ORPHAN;
        j->orphan = 1;
    }
}

/* ---- the handler's side */

static void finish(struct job *j, enum jobq_commit_outcome outcome, const char *err)
{
    struct jobq *q = j->q;
    if (j->ccb) j->ccb(j->carg, outcome, err);
    job_free(j);
    if (q) check_idle(q);
}

static void on_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct job *j = arg;
    struct jobq *q = j->q;
    (void)sqlstate;
    if (q) {
        struct stage *st = &q->stages[j->si];
        struct log_line *l;
        if (err) {
            st->errors++;
            l = log_begin(LOG_WARN, "job completion failed; the lease will expire");
            log_str(l, "error", err);
        } else if (db_affected(res) != 1) {
            st->lost++;
            l = log_begin(LOG_WARN, "job lost before its completion");
        } else {
            st->done++;
            l = log_begin(LOG_INFO, "job done");
        }
        log_job(l, j);
        log_int(l, "ms", util_mono_ms() - j->claimed_ms);
        log_end(l);
    }
    finish(j, JOBQ_COMMITTED, NULL);
}

int jobq_done(struct jobq_job *pub)
{
    struct job *j = (struct job *)pub;
    if (!pub) return -1;
    struct jobq *q = j->q;
    if (!q || j->state == J_ORPHAN) { /* nothing to write */
        release_slot(j);
        job_free(j);
        if (q) check_idle(q);
        return 0;
    }
    if (j->state != J_RUNNING) return -1;
    char id[24];
    snprintf(id, sizeof id, "%lld", j->pub.id);
    const char *p[2] = {id, q->worker_id};
    j->state = J_WRITING;
    release_slot(j);
    if (!db_query(q->db, &q_done, 2, p, on_done, j)) {
        q->stages[j->si].errors++;
        finish(j, JOBQ_COMMITTED, NULL);
    }
    return 0;
}

int jobq_fail(struct jobq_job *pub, const char *error, long long retry_after_ms, int permanent)
{
    struct job *j = (struct job *)pub;
    if (!pub) return -1;
    if (!j->q || j->state == J_ORPHAN) return jobq_done(pub); /* nothing to write */
    if (j->state != J_RUNNING) return -1;
    fail_start(j, error, retry_after_ms, permanent);
    return 0;
}

/* Counts and logs the outcome of a failure: status is the row's new
 * status ("queued", "failed"), NULL when the job was no longer ours (or
 * on err). */
static void fail_result(struct job *j, const char *status, const char *err)
{
    struct jobq *q = j->q;
    if (!q) return;
    struct stage *st = &q->stages[j->si];
    struct log_line *l;
    if (err) {
        st->errors++;
        l = log_begin(LOG_WARN, "job failure not recorded; the lease will expire");
        log_str(l, "db_error", err);
    } else if (!status) {
        st->lost++;
        l = log_begin(LOG_WARN, "job lost before its failure was recorded");
    } else if (strcmp(status, "failed") == 0) {
        st->failed++;
        l = log_begin(LOG_ERROR, "job failed");
    } else {
        st->retried++;
        l = log_begin(LOG_WARN, "job will be retried");
        log_int(l, "delay_ms", j->delay_ms);
        wake_in(st, j->delay_ms);
    }
    log_job(l, j);
    log_str(l, "error", j->err);
    log_end(l);
}

static void fail_finish(struct job *j)
{
    if (j->aborted)
        finish(j, JOBQ_ABORTED, j->err);
    else
        finish(j, JOBQ_COMMITTED, NULL);
}

static void on_fail(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct job *j = arg;
    (void)sqlstate;
    fail_result(j, err || db_nrows(res) == 0 ? NULL : db_str(res, 0, 0), err);
    fail_finish(j);
}

static void on_fail_commit(void *arg, const struct db_res *res, const char *err,
                           const char *sqlstate)
{
    struct job *j = arg;
    (void)res;
    (void)sqlstate;
    fail_result(j, j->final ? "failed" : "queued", err);
    fail_finish(j);
}

static void on_fail_tx(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct job *j = arg;
    struct db_tx *tx = j->tx;
    (void)sqlstate;
    j->tx = NULL;
    if (err || db_nrows(res) == 0 || !j->q) {
        db_tx_rollback(tx);
        fail_result(j, NULL, err);
        fail_finish(j);
        return;
    }
    const char *status = db_str(res, 0, 0);
    const struct stage *st = &j->q->stages[j->si];
    j->final = status && strcmp(status, "failed") == 0;
    if (j->final) st->def.failed(st->def.arg, tx, &j->pub, j->err);
    db_tx_commit(tx, on_fail_commit, j);
}

static void fail_params(struct job *j, char id[24], char perm[2], char delay[24], const char *p[5])
{
    snprintf(id, 24, "%lld", j->pub.id);
    snprintf(perm, 2, "%s", j->permanent ? "t" : "f");
    snprintf(delay, 24, "%lld", j->delay_ms);
    p[0] = id;
    p[1] = j->q->worker_id;
    p[2] = perm;
    p[3] = delay;
    p[4] = j->err;
}

static void on_fail_begin(void *arg, struct db_tx *tx, const char *err)
{
    struct job *j = arg;
    char id[24], perm[2], delay[24];
    const char *p[5];
    if (!tx || !j->q) {
        if (tx) db_tx_rollback(tx);
        fail_result(j, NULL, err ? err : "queue freed");
        fail_finish(j);
        return;
    }
    fail_params(j, id, perm, delay, p);
    j->tx = tx;
    if (db_tx_query(tx, &q_fail, 5, p, on_fail_tx, j) != 0) {
        j->tx = NULL;
        db_tx_rollback(tx);
        fail_result(j, NULL, "database unavailable");
        fail_finish(j);
    }
}

/* Writes the failure: a retry or, final, 'failed' (with the stage's
 * failed hook in the same transaction). The handler has let go. */
static void fail_start(struct job *j, const char *error, long long retry_after_ms, int permanent)
{
    struct jobq *q = j->q;
    const struct stage *st = &q->stages[j->si];
    char id[24], perm[2], delay[24];
    const char *p[5];
    char *copy = error_copy(error); /* error may be j->err itself */
    j->state = J_WRITING;
    release_slot(j);
    free(j->err);
    j->err = copy;
    j->permanent = permanent ? 1 : 0;
    j->delay_ms = permanent ? 0 : backoff_ms(q, j->pub.attempt, retry_after_ms);
    if (!j->err) {
        q->stages[j->si].errors++;
        fail_finish(j);
        return;
    }
    if (st->def.failed) {
        if (!db_tx_begin(q->db, on_fail_begin, j)) {
            q->stages[j->si].errors++;
            fail_finish(j);
        }
        return;
    }
    fail_params(j, id, perm, delay, p);
    if (!db_query(q->db, &q_fail, 5, p, on_fail, j)) {
        q->stages[j->si].errors++;
        fail_finish(j);
    }
}

static void on_done_tx(void *arg, const struct db_res *res, const char *err, const char *sqlstate);

/* A group for n jobs, empty until txg_join. */
static struct txg *txg_new(int n)
{
    struct txg *g = malloc(sizeof *g + (size_t)n * sizeof g->jobs[0]);
    if (!g) return NULL;
    g->owned = -1;
    g->err = NULL;
    g->n = n;
    return g;
}

/* The group's n jobs join it: their completion is queued on tx. */
static void txg_join(struct txg *g, struct jobq_job *const *pubs, struct db_tx *tx)
{
    for (int i = 0; i < g->n; i++) {
        struct job *j = (struct job *)pubs[i];
        g->jobs[i] = j;
        j->g = g;
        j->tx = tx;
        j->state = J_TX;
    }
}

static void txg_free(struct txg *g)
{
    free(g->err);
    free(g);
}

/* "{id,id,...}" of the jobs, or NULL when one is not a running job of
 * q or comes twice. */
static char *running_ids(const struct jobq *q, struct jobq_job *const *pubs, int n)
{
    size_t cap = (size_t)n * 21 + 3, len = 0;
    char *lit = malloc(cap);
    if (!lit) return NULL;
    lit[len++] = '{';
    for (int i = 0; i < n; i++) {
        const struct job *j = (const struct job *)pubs[i];
        int twice = 0;
        for (int k = 0; k < i; k++)
            twice |= pubs[k] == pubs[i];
        if (!j || j->q != q || j->state != J_RUNNING || twice) {
            free(lit);
            return NULL;
        }
        len += (size_t)snprintf(lit + len, cap - len, "%s%lld", i ? "," : "", j->pub.id);
    }
    lit[len++] = '}';
    lit[len] = '\0';
    return lit;
}

int jobq_done_tx_many(struct jobq_job *const *pubs, int n, struct db_tx *tx)
{
    if (!pubs || n <= 0 || !tx || !pubs[0]) return -1;
    const struct job *first = (const struct job *)pubs[0];
    struct jobq *q = first->q;
    if (!q) return -1;
    if (n == 1 && first->state == J_ORPHAN) {
        /* lost or cancelled already: nothing to queue; jobq_commit rolls back */
        struct txg *g = txg_new(1);
        if (!g) return -1;
        g->owned = 0;
        txg_join(g, pubs, tx);
        return 0;
    }
    char *lit = running_ids(q, pubs, n), count[16];
    if (!lit) return -1;
    snprintf(count, sizeof count, "%d", n);
    /* the group exists before the statement (its callback's argument);
     * the jobs join it only once the statement is queued */
    struct txg *g = txg_new(n);
    const char *p[3] = {lit, q->worker_id, count};
    int rc = g ? db_tx_query(tx, &q_done_tx, 3, p, on_done_tx, g) : -1;
    free(lit);
    if (rc != 0) {
        free(g);
        return -1;
    }
    txg_join(g, pubs, tx);
    return 0;
}

int jobq_done_tx(struct jobq_job *pub, struct db_tx *tx)
{
    return jobq_done_tx_many(&pub, 1, tx);
}

/* The job was not this worker's any more: nothing was committed. */
static void lost_before_commit(struct job *j)
{
    struct jobq *q = j->q;
    if (!j->orphan) {
        q->stages[j->si].lost++;
        struct log_line *l = log_begin(LOG_WARN, "job lost before its completion");
        log_job(l, j);
        log_end(l);
    }
    j->dnext = q->deferred; /* the outcome is delivered from the loop */
    q->deferred = j;
    event_active(q->defer_ev, EV_TIMEOUT, 0);
}

/* The transaction of a group of several jobs was rolled back because one
 * of them was lost: the others are their handlers' again, as before
 * jobq_done_tx. */
static void undone(struct job *j)
{
    j->state = J_RUNNING;
    j->g = NULL;
    j->tx = NULL;
    jobq_commit_cb cb = j->ccb;
    void *arg = j->carg;
    j->ccb = NULL;
    j->carg = NULL;
    if (cb) cb(arg, JOBQ_UNDONE, NULL);
}

static void on_commit(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct txg *g = arg;
    (void)res;
    (void)sqlstate;
    int n = g->n, owned = g->owned;
    char msg[MAX_ERROR_BYTES];
    if (err) snprintf(msg, sizeof msg, "commit failed: %s", owned == -2 && g->err ? g->err : err);
    g->n = 0; /* the jobs leave the group one by one below */
    for (int i = 0; i < n; i++) {
        struct job *j = g->jobs[i];
        j->g = NULL;
        if (!j->q) {
            job_free(j);
        } else if (err && owned == 0 && n == 1) {
            lost_before_commit(j); /* the completion raised: rolled back */
        } else if (err && owned == 0) {
            undone(j);
        } else if (err) {
            j->aborted = 1;
            fail_start(j, msg, -1, 0);
        } else {
            struct stage *st = &j->q->stages[j->si];
            st->done++;
            struct log_line *l = log_begin(LOG_INFO, "job done");
            log_job(l, j);
            log_int(l, "ms", util_mono_ms() - j->claimed_ms);
            log_end(l);
            finish(j, JOBQ_COMMITTED, NULL);
        }
    }
    txg_free(g);
}

static void on_done_tx(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct txg *g = arg;
    (void)res;
    /* only noted: the COMMIT behind it says whether anything held */
    if (err && strcmp(sqlstate, LOST_SQLSTATE) == 0) {
        g->owned = 0;
    } else if (err) {
        g->owned = -2;
        free(g->err);
        g->err = error_copy(err);
    } else {
        g->owned = 1;
    }
}

int jobq_commit_many(struct jobq_job *const *pubs, int n, struct db_tx *tx, jobq_commit_cb cb,
                     void *const *args)
{
    if (!pubs || n <= 0 || !tx || !pubs[0]) return -1;
    struct txg *g = ((struct job *)pubs[0])->g;
    if (!g || g->n != n) return -1;
    for (int i = 0; i < n; i++) {
        const struct job *j = (const struct job *)pubs[i];
        if (!j || j->state != J_TX || j->tx != tx || j->g != g) return -1;
    }
    /* n distinct members of a group of n: exactly the group */
    if (!g->jobs[0]->q) { /* the queue was freed meanwhile */
        db_tx_rollback(tx);
        for (int i = 0; i < n; i++)
            job_free(g->jobs[i]);
        txg_free(g);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        struct job *j = (struct job *)pubs[i];
        j->tx = NULL;
        j->ccb = cb;
        j->carg = args ? args[i] : NULL;
        j->state = J_COMMITTING;
        release_slot(j);
    }
    if (g->owned == 0 && n == 1) { /* lost or cancelled before jobq_done_tx */
        db_tx_rollback(tx);
        on_commit(g, NULL, "the job was lost", LOST_SQLSTATE);
        return 0;
    }
    db_tx_commit(tx, on_commit, g);
    return 0;
}

int jobq_commit(struct jobq_job *pub, struct db_tx *tx, jobq_commit_cb cb, void *arg)
{
    return jobq_commit_many(&pub, 1, tx, cb, &arg);
}

struct provider_op {
    void (*cb)(void *arg, int ok, const char *err);
    void *arg;
};

static void on_provider(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct provider_op *op = arg;
    (void)sqlstate;
    if (op->cb) op->cb(op->arg, !err && db_affected(res) == 1, err);
    free(op);
}

int jobq_note_provider_job(struct jobq_job *pub, const char *provider, const char *provider_job_id,
                           void (*cb)(void *arg, int ok, const char *err), void *arg)
{
    struct job *j = (struct job *)pub;
    if (!pub || !j->q || j->state != J_RUNNING || !provider || !*provider || !provider_job_id ||
        !*provider_job_id)
        return -1;
    char *pv = strdup(provider), *pj = strdup(provider_job_id);
    struct provider_op *op = malloc(sizeof *op);
    if (!pv || !pj || !op) {
        free(pv);
        free(pj);
        free(op);
        return -1;
    }
    char id[24];
    snprintf(id, sizeof id, "%lld", j->pub.id);
    const char *p[4] = {id, j->q->worker_id, provider, provider_job_id};
    op->cb = cb;
    op->arg = arg;
    if (!db_query(j->q->db, &q_provider, 4, p, on_provider, op)) {
        free(pv);
        free(pj);
        free(op);
        return -1;
    }
    free(j->provider);
    free(j->provider_job_id);
    j->pub.provider = j->provider = pv;
    j->pub.provider_job_id = j->provider_job_id = pj;
    return 0;
}

/* ---- producers */

struct enqueue_op {
    struct jobq *q;
    int si; /* our stage to wake, -1: none */
    jobq_enqueue_cb cb;
    void *arg;
};

static void on_enqueue(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct enqueue_op *op = arg;
    (void)sqlstate;
    long long id = err ? 0 : db_nrows(res) > 0 ? db_int(res, 0, 0) : 0;
    if (id > 0 && op->si >= 0) trigger(&op->q->stages[op->si]);
    if (op->cb) op->cb(op->arg, id, !err && id == 0, err);
    free(op);
}

static int spec_ok(const struct jobq_new_job *s)
{
    return s && s->org_id && s->recording_id && util_is_uuid(s->org_id) &&
           util_is_uuid(s->recording_id) && s->stage && *s->stage &&
           strlen(s->stage) <= MAX_STAGE_NAME && s->delay_ms >= 0 && s->delay_ms <= MAX_DELAY_MS;
}

static int spec_attempts(const struct jobq *q, const struct jobq_new_job *s)
{
    return s->max_attempts > 0 ? s->max_attempts : q ? q->max_attempts : JOBQ_DEFAULT_ATTEMPTS;
}

static int enqueue(struct jobq *q, struct db_tx *tx, const struct jobq_new_job *s,
                   jobq_enqueue_cb cb, void *arg)
{
    if ((!q && !tx) || !spec_ok(s)) return -1;
    struct enqueue_op *op = malloc(sizeof *op);
    if (!op) return -1;
    char delay[24], max[16];
    snprintf(delay, sizeof delay, "%lld", s->delay_ms);
    snprintf(max, sizeof max, "%d", spec_attempts(q, s));
    const char *p[6] = {s->org_id, s->recording_id, s->stage, s->payload, delay, max};
    op->q = q;
    /* our own insert wakes our claim at once; a transaction's waits for
     * its commit's NOTIFY */
    op->si = q && !tx && s->delay_ms == 0 ? stage_index(q, s->stage) : -1;
    op->cb = cb;
    op->arg = arg;
    int rc = tx ? db_tx_query(tx, &q_enqueue, 6, p, on_enqueue, op)
                : (db_query(q->db, &q_enqueue, 6, p, on_enqueue, op) ? 0 : -1);
    if (rc != 0) free(op);
    return rc;
}

int jobq_enqueue(struct jobq *q, const struct jobq_new_job *spec, jobq_enqueue_cb cb, void *arg)
{
    return enqueue(q, NULL, spec, cb, arg);
}

int jobq_enqueue_tx(struct jobq *q, struct db_tx *tx, const struct jobq_new_job *spec,
                    jobq_enqueue_cb cb, void *arg)
{
    return tx ? enqueue(q, tx, spec, cb, arg) : -1;
}

int jobq_enqueue_tx_many(struct jobq *q, struct db_tx *tx, const struct jobq_new_job *specs, int n)
{
    if (!tx || !specs || n <= 0) return -1;
    for (int i = 0; i < n; i++)
        if (!spec_ok(&specs[i])) return -1;
    /* the six columns, n values each, then the numbers' text */
    const char **col = malloc((size_t)n * 6 * sizeof *col);
    char(*num)[2][24] = malloc((size_t)n * sizeof *num);
    char *p[6] = {0};
    int ok = col && num;
    for (int i = 0; ok && i < n; i++) {
        const struct jobq_new_job *s = &specs[i];
        snprintf(num[i][0], sizeof num[i][0], "%lld", s->delay_ms);
        snprintf(num[i][1], sizeof num[i][1], "%d", spec_attempts(q, s));
        const char *v[6] = {s->org_id, s->recording_id, s->stage, s->payload, num[i][0], num[i][1]};
        for (int k = 0; k < 6; k++)
            col[k * n + i] = v[k];
    }
    for (int k = 0; ok && k < 6; k++)
        ok = (p[k] = db_array_lit(col + k * n, n)) != NULL;
    int rc = ok ? db_tx_query(tx, &q_enqueue_many, 6, (const char *const *)p, NULL, NULL) : -1;
    for (int k = 0; k < 6; k++)
        free(p[k]);
    free(col);
    free(num);
    return rc;
}

struct cancel_op {
    struct jobq *q;
    void (*cb)(void *arg, int ncancelled, const char *err);
    void *arg;
};

static void on_cancel(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct cancel_op *op = arg;
    (void)sqlstate;
    int n = err ? -1 : db_nrows(res);
    /* look each one up afresh: a cancel hook may hand back other jobs */
    for (int i = 0; i < n; i++) {
        struct job *j = find_job(op->q, db_int(res, i, 0));
        if (j && j->state == J_RUNNING) job_drop(j, 0);
    }
    if (op->cb) op->cb(op->arg, n, err);
    free(op);
}

int jobq_cancel_recording(struct jobq *q, const char *recording_id,
                          void (*cb)(void *arg, int ncancelled, const char *err), void *arg)
{
    if (!q || !recording_id || !util_is_uuid(recording_id)) return -1;
    struct cancel_op *op = malloc(sizeof *op);
    if (!op) return -1;
    const char *p[1] = {recording_id};
    op->q = q;
    op->cb = cb;
    op->arg = arg;
    if (!db_query(q->db, &q_cancel, 1, p, on_cancel, op)) {
        free(op);
        return -1;
    }
    return 0;
}

/* ---- heartbeat */

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void on_heartbeat(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct jobq *q = arg;
    long long *sent = q->hb_ids;
    int nsent = q->hb_n;
    (void)sqlstate;
    q->hb = NULL;
    q->hb_ids = NULL;
    q->hb_n = 0;
    if (err) {
        note_trouble(q, "heartbeat", err);
        free(sent);
        return;
    }
    note_fine(q);
    int nr = db_nrows(res);
    long long *got = malloc(sizeof *got * (size_t)(nr > 0 ? nr : 1));
    if (!got) {
        free(sent);
        return;
    }
    for (int i = 0; i < nr; i++)
        got[i] = db_int(res, i, 0);
    qsort(got, (size_t)nr, sizeof *got, cmp_ll);
    for (int i = 0; i < nsent; i++) {
        if (bsearch(&sent[i], got, (size_t)nr, sizeof *got, cmp_ll)) continue;
        /* a job claimed after the heartbeat went out is not in its answer */
        struct job *j = find_job(q, sent[i]);
        if (j && j->state == J_RUNNING && j->gen <= q->hb_gen) job_drop(j, 1);
    }
    free(got);
    free(sent);
}

static void on_hb_timer(evutil_socket_t fd, short what, void *arg)
{
    struct jobq *q = arg;
    (void)fd;
    (void)what;
    if (q->hb) return;
    int n = 0;
    for (struct job *j = q->jobs; j; j = j->next)
        if (j->state == J_RUNNING) n++;
    if (n == 0) return;
    long long *ids = malloc(sizeof *ids * (size_t)n);
    char *lit = malloc((size_t)n * 21 + 3);
    if (!ids || !lit) {
        free(ids);
        free(lit);
        return;
    }
    size_t len = 0;
    int k = 0;
    lit[len++] = '{';
    for (struct job *j = q->jobs; j; j = j->next)
        if (j->state == J_RUNNING) {
            ids[k] = j->pub.id;
            len += (size_t)sprintf(lit + len, "%s%lld", k ? "," : "", j->pub.id);
            k++;
        }
    lit[len++] = '}';
    lit[len] = '\0';
    const char *p[3] = {q->worker_id, q->lease_str, lit};
    q->hb = db_query(q->db, &q_heartbeat, 3, p, on_heartbeat, q);
    free(lit);
    if (!q->hb) {
        free(ids);
        return;
    }
    q->hb_ids = ids;
    q->hb_n = n;
    q->hb_gen = q->gen;
}

/* ---- reaper */

static void reap(struct jobq *q);

static void on_reap(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct jobq *q = arg;
    (void)sqlstate;
    q->reap = NULL;
    if (err) {
        note_trouble(q, "reap", err);
        return;
    }
    note_fine(q);
    int n = db_nrows(res);
    int c_status = db_col(res, "status"), c_prev = db_col(res, "previous"),
        c_stage = db_col(res, "stage");
    for (int i = 0; i < n; i++) {
        const char *status = db_str(res, i, c_status), *prev = db_str(res, i, c_prev);
        int si = stage_index(q, db_str(res, i, c_stage));
        struct log_line *l;
        if (status && strcmp(status, "queued") == 0) {
            l = log_begin(LOG_WARN, "job lease expired; requeued");
            if (si >= 0) {
                q->stages[si].rescued++;
                trigger(&q->stages[si]);
            }
        } else {
            l = log_begin(LOG_WARN, "job lease expired on its last attempt");
        }
        log_str(l, "stage", db_str(res, i, c_stage));
        log_int(l, "job_id", db_int(res, i, db_col(res, "id")));
        log_str(l, "recording_id", db_str(res, i, db_col(res, "recording_id")));
        log_str(l, "previous_worker", prev);
        log_end(l);
        if (!status || strcmp(status, "running") != 0 || si < 0) continue;
        /* now leased to us, on its last attempt: fail it for good */
        struct job *j = job_from_row(q, si, res, i);
        if (!j) continue;
        char msg[MAX_WORKER_ID + 64];
        snprintf(msg, sizeof msg, "lease expired on the last attempt (worker %s)",
                 prev ? prev : "?");
        fail_start(j, msg, -1, 1);
    }
    if (n >= REAP_BATCH) reap(q); /* more are waiting */
}

static void reap(struct jobq *q)
{
    char lim[16];
    if (q->reap || q->stopping || q->freeing) return;
    snprintf(lim, sizeof lim, "%d", REAP_BATCH);
    const char *p[4] = {q->worker_id, q->lease_str, lim, q->stages_lit};
    q->reap = db_query(q->db, &q_reap, 4, p, on_reap, q);
}

/* ---- timers, LISTEN, stats */

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    trigger_all(arg);
}

static void on_reap_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reap(arg);
}

static void on_stats(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct jobq *q = arg;
    (void)sqlstate;
    q->stats = NULL;
    if (err) {
        note_trouble(q, "stats", err);
        return;
    }
    note_fine(q);
    for (int i = 0; i < q->nstages; i++)
        q->stages[i].db_queued = q->stages[i].db_running = 0;
    for (int r = 0; r < db_nrows(res); r++) {
        int si = stage_index(q, db_str(res, r, 0));
        const char *status = db_str(res, r, 1);
        if (si < 0 || !status) continue;
        if (strcmp(status, "queued") == 0)
            q->stages[si].db_queued = db_int(res, r, 2);
        else
            q->stages[si].db_running = db_int(res, r, 2);
    }
}

static void stats_query(struct jobq *q)
{
    if (q->stats || q->freeing || q->stats_ms < 0) return;
    q->stats = db_query(q->db, &q_stats, 0, NULL, on_stats, q);
}

static void on_stats_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    stats_query(arg);
}

static void on_notify(void *arg, const char *channel, const char *payload)
{
    struct jobq *q = arg;
    (void)channel;
    int si = stage_index(q, payload);
    if (si >= 0) trigger(&q->stages[si]);
}

static void on_listen_reconnect(void *arg)
{
    struct jobq *q = arg;
    trigger_all(q); /* what was queued while we were not listening */
    reap(q);
}

/* Deferred work, run from the loop: the first claims and reaping, the
 * jobq_commit outcomes decided inside the call, on_idle. */
static void on_defer(evutil_socket_t fd, short what, void *arg)
{
    struct jobq *q = arg;
    (void)fd;
    (void)what;
    if (q->starting) {
        q->starting = 0;
        trigger_all(q);
        reap(q);
        stats_query(q);
    }
    while (q->deferred) {
        struct job *j = q->deferred;
        q->deferred = j->dnext;
        finish(j, JOBQ_LOST, NULL);
    }
    if (q->idle_due) {
        q->idle_due = 0;
        void (*cb)(void *) = q->on_idle;
        int busy = q->njobs > 0;
        for (int i = 0; i < q->nstages; i++)
            busy |= q->stages[i].inflight;
        if (cb && !busy) {
            q->on_idle = NULL;
            cb(q->idle_arg);
        }
    }
}

/* ---- life */

static int stage_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MAX_STAGE_NAME) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

static int opts_ok(const struct jobq_opts *o)
{
    if (!o || !o->stages || o->nstages <= 0) return 0;
    if (o->worker_id && (!*o->worker_id || strlen(o->worker_id) > MAX_WORKER_ID)) return 0;
    if (o->worker_id && !util_utf8_valid(o->worker_id, strlen(o->worker_id))) return 0;
    for (int i = 0; i < o->nstages; i++) {
        if (!stage_name_ok(o->stages[i].stage) || !o->stages[i].run) return 0;
        for (int k = 0; k < i; k++)
            if (strcmp(o->stages[k].stage, o->stages[i].stage) == 0) return 0;
    }
    return 1;
}

static void default_worker_id(char *out, size_t n)
{
    char host[64] = "", rnd[16];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "host");
    host[sizeof host - 1] = '\0';
    util_random_token(rnd, 6);
    snprintf(out, n, "%s:%ld:%s", host, (long)getpid(), rnd);
}

static int q_events(struct jobq *q)
{
    struct event_base *b = q->base;
    q->poll_ev = event_new(b, -1, EV_PERSIST, on_poll, q);
    q->reap_ev = event_new(b, -1, EV_PERSIST, on_reap_timer, q);
    q->hb_ev = event_new(b, -1, EV_PERSIST, on_hb_timer, q);
    q->defer_ev = event_new(b, -1, 0, on_defer, q);
    if (q->stats_ms > 0) q->stats_ev = event_new(b, -1, EV_PERSIST, on_stats_timer, q);
    if (!q->poll_ev || !q->reap_ev || !q->hb_ev || !q->defer_ev ||
        (q->stats_ms > 0 && !q->stats_ev))
        return -1;
    for (int i = 0; i < q->nstages; i++)
        if (!(q->stages[i].wake = evtimer_new(b, on_wake, &q->stages[i]))) return -1;
    timer_add(q->poll_ev, q->poll_ms);
    timer_add(q->reap_ev, q->reap_ms);
    timer_add(q->hb_ev, q->lease_ms / 3);
    if (q->stats_ev) timer_add(q->stats_ev, q->stats_ms);
    q->starting = 1;
    event_active(q->defer_ev, EV_TIMEOUT, 0);
    return 0;
}

static void q_destroy(struct jobq *q)
{
    struct event *evs[] = {q->poll_ev, q->reap_ev, q->hb_ev, q->stats_ev, q->defer_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i]) event_free(evs[i]);
    for (int i = 0; q->stages && i < q->nstages; i++) {
        if (q->stages[i].wake) event_free(q->stages[i].wake);
        free(q->stages[i].name);
    }
    free(q->stages);
    free(q->hb_ids);
    free(q);
}

struct jobq *jobq_new(struct event_base *base, struct db_pool *db, const struct jobq_opts *o)
{
    if (!base || !db || !opts_ok(o)) return NULL;
    struct jobq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->base = base;
    q->db = db;
    if (o->worker_id)
        snprintf(q->worker_id, sizeof q->worker_id, "%s", o->worker_id);
    else
        default_worker_id(q->worker_id, sizeof q->worker_id);
    q->lease_ms = o->lease_ms > 0 ? (o->lease_ms < 300 ? 300 : o->lease_ms) : 30000;
    q->poll_ms = o->poll_ms > 0 ? o->poll_ms : 2000;
    q->reap_ms = o->reap_ms > 0 ? o->reap_ms : q->lease_ms / 2;
    q->stats_ms = o->stats_ms == 0 ? 10000 : o->stats_ms;
    q->batch = o->batch > 0 ? o->batch : 16;
    q->backoff_base_ms = o->backoff_base_ms > 0 ? o->backoff_base_ms : 1000;
    q->backoff_cap_ms = o->backoff_cap_ms > 0 ? o->backoff_cap_ms : 600000;
    if (q->backoff_cap_ms < q->backoff_base_ms) q->backoff_cap_ms = q->backoff_base_ms;
    q->max_attempts = o->max_attempts > 0 ? o->max_attempts : JOBQ_DEFAULT_ATTEMPTS;
    snprintf(q->lease_str, sizeof q->lease_str, "%d", q->lease_ms);
    q->nstages = o->nstages;
    q->stages = calloc((size_t)o->nstages, sizeof *q->stages);
    if (!q->stages) {
        q_destroy(q);
        return NULL;
    }
    size_t len = 0;
    q->stages_lit[len++] = '{';
    for (int i = 0; i < o->nstages; i++) {
        struct stage *st = &q->stages[i];
        st->def = o->stages[i];
        if (st->def.concurrency <= 0) st->def.concurrency = 1;
        st->q = q;
        st->db_queued = st->db_running = -1;
        st->name = strdup(o->stages[i].stage);
        if (!st->name || len + strlen(st->name) + 3 > sizeof q->stages_lit) {
            q_destroy(q);
            return NULL;
        }
        len += (size_t)sprintf(q->stages_lit + len, "%s%s", i ? "," : "", st->name);
    }
    q->stages_lit[len++] = '}';
    q->stages_lit[len] = '\0';
    if (q_events(q) != 0 || db_listen(db, JOBQ_CHANNEL, on_notify, on_listen_reconnect, q) != 0) {
        q_destroy(q);
        return NULL;
    }
    struct log_line *l = log_begin(LOG_INFO, "jobq started");
    log_str(l, "worker", q->worker_id);
    log_str(l, "stages", q->stages_lit);
    log_int(l, "lease_ms", q->lease_ms);
    log_end(l);
    return q;
}

void jobq_stop(struct jobq *q, void (*on_idle)(void *arg), void *arg)
{
    if (!q) return;
    q->stopping = 1;
    q->on_idle = on_idle;
    q->idle_arg = arg;
    event_del(q->poll_ev);
    event_del(q->reap_ev);
    for (int i = 0; i < q->nstages; i++)
        event_del(q->stages[i].wake);
    check_idle(q);
}

struct release_op {
    void (*cb)(void *arg, int nreleased);
    void *arg;
};

static void on_release(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct release_op *op = arg;
    (void)sqlstate;
    int n = err ? -1 : (int)db_affected(res);
    if (err)
        log_msg(LOG_WARN, "jobs not released; they are taken over after their lease", "error", err);
    if (op->cb) op->cb(op->arg, n);
    free(op);
}

int jobq_release(struct jobq *q, void (*cb)(void *arg, int nreleased), void *arg)
{
    if (!q || q->freeing) return -1;
    jobq_stop(q, q->on_idle, q->idle_arg);
    /* {id,id,...} of the jobs whose handler still works, cancelled first
     * so that none of them writes after the release */
    size_t cap = 3 + (size_t)q->njobs * 21, len = 0;
    char *ids = malloc(cap);
    if (!ids) return -1;
    ids[len++] = '{';
    for (;;) {
        struct job *j = q->jobs;
        while (j && j->state != J_RUNNING)
            j = j->next;
        if (!j) break;
        const struct stage *st = &q->stages[j->si];
        len += (size_t)snprintf(ids + len, cap - len, "%s%lld", len > 1 ? "," : "", j->pub.id);
        if (st->def.cancel) {
            j->state = J_DROPPING;
            st->def.cancel(st->def.arg, &j->pub);
            release_slot(j);
            job_free(j);
        } else {
            j->state = J_ORPHAN;
            j->orphan = 1;
        }
    }
    ids[len++] = '}';
    ids[len] = '\0';
    struct release_op *op = malloc(sizeof *op);
    const char *p[2] = {q->worker_id, ids};
    if (!op || !db_query(q->db, &q_release, 2, p, on_release, op)) {
        free(op);
        free(ids);
        return -1;
    }
    op->cb = cb;
    op->arg = arg;
    free(ids);
    check_idle(q);
    return 0;
}

void jobq_free(struct jobq *q)
{
    if (!q) return;
    q->freeing = 1;
    /* With the pool freed first (the contract) nothing is out; these
     * handles are set only while their callback is pending. */
    for (int i = 0; i < q->nstages; i++)
        if (q->stages[i].claim) db_cancel(q->stages[i].claim);
    if (q->hb) db_cancel(q->hb);
    if (q->reap) db_cancel(q->reap);
    if (q->stats) db_cancel(q->stats);
    while (q->deferred) {
        struct job *j = q->deferred;
        q->deferred = j->dnext;
        finish(j, JOBQ_LOST, NULL);
    }
    /* look jobs up afresh after each hook: a hook may hand back others */
    for (;;) {
        struct job *j = q->jobs;
        while (j && j->state != J_RUNNING && j->state != J_ORPHAN)
            j = j->next;
        if (!j) break;
        const struct stage *st = &q->stages[j->si];
        if (j->state == J_RUNNING && st->def.cancel) {
            j->state = J_DROPPING;
            st->def.cancel(st->def.arg, &j->pub);
            job_free(j);
        } else {
            job_unlink(j); /* the handler's hand-back frees it */
            j->q = NULL;
            j->holds_slot = 0;
        }
    }
    /* whatever is left waits for a database answer that, the pool being
     * gone, came already; detach it all the same */
    while (q->jobs) {
        struct job *j = q->jobs;
        job_unlink(j);
        j->q = NULL;
        j->holds_slot = 0;
    }
    q_destroy(q);
}

const char *jobq_worker_id(const struct jobq *q)
{
    return q ? q->worker_id : NULL;
}

/* ---- observation */

int jobq_stats(const struct jobq *q, int i, struct jobq_stage_stats *out)
{
    if (!q || !out || i < 0 || i >= q->nstages) return -1;
    const struct stage *st = &q->stages[i];
    out->stage = st->name;
    out->running = st->running;
    out->db_queued = st->db_queued;
    out->db_running = st->db_running;
    out->claimed = st->claimed;
    out->done = st->done;
    out->retried = st->retried;
    out->failed = st->failed;
    out->cancelled = st->cancelled;
    out->lost = st->lost;
    out->rescued = st->rescued;
    out->errors = st->errors;
    return 0;
}

void jobq_metrics_render(const struct jobq *q, struct evbuffer *out)
{
    if (!q || !out) return;
    evbuffer_add_printf(out, "# HELP reeld_jobs_running Jobs whose handler runs in this "
                             "process.\n# TYPE reeld_jobs_running gauge\n");
    for (int i = 0; i < q->nstages; i++)
        evbuffer_add_printf(out, "reeld_jobs_running{stage=\"%s\"} %d\n", q->stages[i].name,
                            q->stages[i].running);
    evbuffer_add_printf(out, "# HELP reeld_jobs_queued Queued jobs in the database, all "
                             "processes (last count).\n# TYPE reeld_jobs_queued gauge\n");
    for (int i = 0; i < q->nstages; i++)
        if (q->stages[i].db_queued >= 0)
            evbuffer_add_printf(out, "reeld_jobs_queued{stage=\"%s\"} %lld\n", q->stages[i].name,
                                q->stages[i].db_queued);
    evbuffer_add_printf(out, "# HELP reeld_jobs_db_running Running jobs in the database, all "
                             "processes (last count).\n# TYPE reeld_jobs_db_running gauge\n");
    for (int i = 0; i < q->nstages; i++)
        if (q->stages[i].db_running >= 0)
            evbuffer_add_printf(out, "reeld_jobs_db_running{stage=\"%s\"} %lld\n",
                                q->stages[i].name, q->stages[i].db_running);
    evbuffer_add_printf(out, "# HELP reeld_jobs_total Jobs by stage and outcome in this "
                             "process.\n# TYPE reeld_jobs_total counter\n");
    for (int i = 0; i < q->nstages; i++) {
        const struct stage *st = &q->stages[i];
        const struct {
            const char *name;
            long long n;
        } o[] = {{"claimed", st->claimed}, {"done", st->done},           {"retried", st->retried},
                 {"failed", st->failed},   {"cancelled", st->cancelled}, {"lost", st->lost},
                 {"rescued", st->rescued}, {"error", st->errors}};
        for (size_t k = 0; k < sizeof o / sizeof o[0]; k++)
            evbuffer_add_printf(out, "reeld_jobs_total{stage=\"%s\",outcome=\"%s\"} %lld\n",
                                st->name, o[k].name, o[k].n);
    }
}

const char *jobq_sql(const char *which)
{
    static const struct {
        const char *name;
        const struct db_stmt *st;
    } tab[] = {{"claim", &q_claim},         {"done", &q_done}, {"fail", &q_fail},
               {"heartbeat", &q_heartbeat}, {"reap", &q_reap}, {"enqueue", &q_enqueue},
               {"cancel", &q_cancel}};
    for (size_t i = 0; which && i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(tab[i].name, which) == 0) return tab[i].st->sql;
    return NULL;
}
