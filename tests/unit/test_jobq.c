/* The job queue against a real PostgreSQL (REELD_TEST_PGURL): a fresh
 * database per run, migrated with migrate_run, dropped at the end. Each
 * test empties the jobs table first and frees its pools before its queues
 * (the order jobq.h asks for). "Two processes" are two pools and two
 * queues with different worker ids on one loop: to the database they are
 * two workers on separate connections. A test-only trigger copies every
 * status change of a job into jobs_audit, so delays can be read exactly
 * (run_at - now() inside the UPDATE that requeued the job). */
#include "reeld/db.h"
#include "reeld/jobq.h"
#include "reeld/migrate.h"
#include "reeld/util.h"
#include "t.h"
#include "t_db.h"
#include "t_loop.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <stdarg.h>

static struct event_base *base;
static PGconn *pg; /* the test's own blocking look at the database */
static char conninfo[2048];
static char org_id[37];

#define MAX_JOB_ID 65536
static int run_count[MAX_JOB_ID]; /* handler runs per job id, all workers */

/* ---- the test's own SQL (blocking) */

/* First cell as text; "OK" for a command, "NULL", "ERR:<sqlstate>". */
static const char *q1(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *q1(const char *fmt, ...)
{
    static char out[4096];
    char sql[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, sizeof out, "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        snprintf(out, sizeof out, "OK");
    else {
        const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(out, sizeof out, "ERR:%s", s ? s : "?");
        fprintf(stderr, "# %s: %s", sql, PQerrorMessage(pg));
    }
    PQclear(r);
    return out;
}

static long long qll(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long qll(const char *fmt, ...)
{
    char sql[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    const char *v = q1("%s", sql);
    return (v[0] >= '0' && v[0] <= '9') || v[0] == '-' ? atoll(v) : -999;
}

struct sql_wait {
    char sql[1024];
    const char *want;
};

static int sql_is(void *arg)
{
    struct sql_wait *w = arg;
    return strcmp(q1("%s", w->sql), w->want) == 0;
}

/* Runs the loop until the first cell of sql reads want. */
static int wait_sql(const char *want, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int wait_sql(const char *want, const char *fmt, ...)
{
    struct sql_wait w = {.want = want};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w.sql, sizeof w.sql, fmt, ap);
    va_end(ap);
    return t_run_cond(base, sql_is, &w, 60);
}

/* Waits until the pool opened with application name app LISTENs (the
 * pool sends LISTEN as its own command on its LISTEN connection). */
static int listening(const char *app)
{
    return wait_sql("1",
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = '%s'"
                    " AND query LIKE 'LISTEN%%' AND state = 'idle'",
                    app);
}

static void new_recording(char out[37])
{
    snprintf(out, 37, "%s",
             q1("INSERT INTO recordings (org_id, title) VALUES ('%s', 't') RETURNING id", org_id));
}

static void reset(void)
{
    q1("DELETE FROM jobs");
    q1("DELETE FROM jobs_audit");
    q1("DELETE FROM results");
}

/* A pool whose connections carry application_name app. */
static struct db_pool *pool_new(const char *app)
{
    char ci[sizeof conninfo + 128];
    snprintf(ci, sizeof ci, "%s application_name='%s'", conninfo, app);
    struct db_pool_opts o = {ci, 2, 5000, 5000};
    return db_pool_new(base, &o);
}

/* ---- handlers */

enum mode { M_DONE, M_HOLD, M_FAIL_THEN_DONE, M_FAIL_PERM, M_FAIL_ALWAYS, M_DONE_LATER };

struct worker {
    enum mode mode;
    long long retry_after_ms;
    int hook_breaks; /* the failed hook queues a failing statement */
    int runs, cancels, failed_hooks;
    struct jobq_job *held[8];
    int nheld;
    char payload[256], recording[37], failed_error[256];
};

static void hold(struct worker *w, struct jobq_job *job)
{
    if (w->nheld < 8) w->held[w->nheld++] = job;
}

static void unhold(struct worker *w, struct jobq_job *job)
{
    for (int i = 0; i < w->nheld; i++)
        if (w->held[i] == job) {
            w->held[i] = w->held[--w->nheld];
            return;
        }
}

struct later {
    struct event *ev;
    struct jobq_job *job;
};

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    struct later *l = arg;
    (void)fd;
    (void)what;
    jobq_done(l->job);
    event_free(l->ev);
    free(l);
}

static void h_run(void *arg, struct jobq_job *job)
{
    struct worker *w = arg;
    char msg[64];
    w->runs++;
    if (job->id > 0 && job->id < MAX_JOB_ID) run_count[job->id]++;
    snprintf(w->payload, sizeof w->payload, "%s", job->payload);
    snprintf(w->recording, sizeof w->recording, "%s", job->recording_id);
    switch (w->mode) {
    case M_DONE:
        jobq_done(job);
        break;
    case M_HOLD:
        hold(w, job);
        break;
    case M_FAIL_THEN_DONE:
        if (job->attempt == 1)
            jobq_fail(job, "try later", w->retry_after_ms, 0);
        else
            jobq_done(job);
        break;
    case M_FAIL_PERM:
        jobq_fail(job, "bad input", -1, 1);
        break;
    case M_FAIL_ALWAYS:
        snprintf(msg, sizeof msg, "boom %d", job->attempt);
        jobq_fail(job, msg, -1, 0);
        break;
    case M_DONE_LATER: {
        struct later *l = malloc(sizeof *l);
        unsigned char r = 0;
        util_random(&r, 1);
        struct timeval tv = {0, 1000 + (r % 3) * 1000};
        l->job = job;
        l->ev = evtimer_new(base, on_later, l);
        evtimer_add(l->ev, &tv);
        break;
    }
    }
}

static void h_cancel(void *arg, struct jobq_job *job)
{
    struct worker *w = arg;
    w->cancels++;
    unhold(w, job);
}

static struct db_stmt q_mark_error = {
    "test_mark_error",
    "UPDATE recordings SET status = 'error', error_stage = $2, error_message = $3"
    " WHERE id = $1"};
static struct db_stmt q_broken = {"test_broken", "SELECT 1 / 0"};

static void h_failed(void *arg, struct db_tx *tx, const struct jobq_job *job, const char *error)
{
    struct worker *w = arg;
    w->failed_hooks++;
    snprintf(w->failed_error, sizeof w->failed_error, "%s", error);
    const char *p[3] = {job->recording_id, job->stage, error};
    db_tx_query(tx, &q_mark_error, 3, p, NULL, NULL);
    if (w->hook_breaks) db_tx_query(tx, &q_broken, 0, NULL, NULL, NULL);
}

static struct jobq_stage stage_for(const char *name, struct worker *w, int concurrency,
                                   int with_cancel, int with_failed)
{
    struct jobq_stage s = {
        name, concurrency, h_run, with_cancel ? h_cancel : NULL, with_failed ? h_failed : NULL, w};
    return s;
}

static struct jobq *queue_new(struct db_pool *db, const char *worker_id, struct jobq_stage *st,
                              int n, const struct jobq_opts *extra)
{
    struct jobq_opts o = {0};
    if (extra) o = *extra;
    o.worker_id = worker_id;
    o.stages = st;
    o.nstages = n;
    return jobq_new(base, db, &o);
}

/* ---- queue helpers */

struct enq {
    int calls;
    long long id;
    int already;
    char err[256];
};

static void on_enq(void *arg, long long id, int already, const char *err)
{
    struct enq *e = arg;
    e->calls++;
    e->id = id;
    e->already = already;
    snprintf(e->err, sizeof e->err, "%s", err ? err : "");
}

static int enq_done(void *arg)
{
    return ((struct enq *)arg)->calls > 0;
}

/* Enqueues and waits: the job id, 0 when already queued, -1 on error. */
static long long enqueue_wait(struct jobq *q, const char *rec, const char *stage,
                              const char *payload, long long delay_ms, int max_attempts)
{
    struct enq e = {0};
    struct jobq_new_job s = {org_id, rec, stage, payload, delay_ms, max_attempts};
    if (jobq_enqueue(q, &s, on_enq, &e) != 0 || t_run_cond(base, enq_done, &e, 30) != 0) return -1;
    if (e.err[0]) fprintf(stderr, "# enqueue: %s\n", e.err);
    return e.err[0] ? -1 : e.already ? 0 : e.id;
}

struct stat_wait {
    struct jobq *q;
    long long want;
};

static int done_reached(void *arg)
{
    struct stat_wait *s = arg;
    struct jobq_stage_stats st;
    return jobq_stats(s->q, 0, &st) == 0 && st.done >= s->want;
}

static int held_one(void *arg)
{
    return ((struct worker *)arg)->nheld > 0;
}

static int held_three(void *arg)
{
    return ((struct worker *)arg)->nheld >= 3;
}

/* ---- tests */

static void test_enqueued_job_runs_once_and_is_done(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-basic");
    struct worker w = {.mode = M_DONE};
    struct jobq_stage st[] = {stage_for("transcription", &w, 2, 1, 0)};
    struct jobq *q = queue_new(db, "w-basic", st, 1, NULL);
    CHECK(q != NULL);
    CHECK_STR(jobq_worker_id(q), "w-basic");
    long long id = enqueue_wait(q, rec, "transcription", "{\"model\": \"m1\"}", 0, 0);
    CHECK(id > 0);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    struct stat_wait sw = {q, 1};
    CHECK(t_run_cond(base, done_reached, &sw, 30) == 0);
    CHECK(w.runs == 1);
    CHECK_STR(q1("SELECT attempts || ' ' || leased_by || ' ' || (finished_at IS NOT NULL)"
                 " || ' ' || (lease_expires_at IS NULL) FROM jobs WHERE id = %lld",
                 id),
              "1 w-basic true true");
    CHECK_STR(w.payload, "{\"model\": \"m1\"}");
    CHECK_STR(w.recording, rec);
    struct jobq_stage_stats s;
    CHECK(jobq_stats(q, 0, &s) == 0);
    CHECK(s.claimed == 1 && s.done == 1 && s.running == 0 && s.failed == 0);
    CHECK_STR(s.stage, "transcription");
    CHECK(jobq_stats(q, 1, &s) == -1);
    struct evbuffer *b = evbuffer_new();
    jobq_metrics_render(q, b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    CHECK(strstr(text, "reeld_jobs_total{stage=\"transcription\",outcome=\"done\"} 1\n") != NULL);
    CHECK(strstr(text, "reeld_jobs_running{stage=\"transcription\"} 0\n") != NULL);
    evbuffer_free(b);
    db_pool_free(db);
    jobq_free(q);
}

struct txenq {
    struct jobq *q;
    const char *rec;
    struct enq a, b;
    int committed;
    char commit_err[256];
};

static void on_txenq_commit(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    struct txenq *t = arg;
    (void)res;
    (void)sqlstate;
    t->committed = 1;
    snprintf(t->commit_err, sizeof t->commit_err, "%s", err ? err : "");
}

static void on_txenq_begin(void *arg, struct db_tx *tx, const char *err)
{
    struct txenq *t = arg;
    if (!tx) {
        t->committed = 1;
        snprintf(t->commit_err, sizeof t->commit_err, "begin: %s", err);
        return;
    }
    struct jobq_new_job s = {org_id, t->rec, "document", NULL, 0, 0};
    jobq_enqueue_tx(t->q, tx, &s, on_enq, &t->a);
    jobq_enqueue_tx(t->q, tx, &s, on_enq, &t->b);
    db_tx_commit(tx, on_txenq_commit, t);
}

static void test_duplicate_enqueue_is_reported_as_already_queued(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-dup");
    struct worker w = {.mode = M_DONE};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 0, 0)};
    struct jobq *q = queue_new(db, "w-dup", st, 1, NULL);
    /* document jobs: a stage nobody here works, so they stay queued */
    long long id = enqueue_wait(q, rec, "document", NULL, 0, 0);
    CHECK(id > 0);
    CHECK(enqueue_wait(q, rec, "document", "{}", 0, 0) == 0);
    CHECK(qll("SELECT count(*) FROM jobs WHERE recording_id = '%s'", rec) == 1);
    /* in a transaction, a duplicate neither fails nor aborts it */
    struct txenq t = {.q = q, .rec = rec};
    CHECK(db_tx_begin(db, on_txenq_begin, &t) != NULL);
    CHECK(t_run_cond(base, t_flag_set, &t.committed, 30) == 0);
    CHECK_STR(t.commit_err, "");
    CHECK(t.a.calls == 1 && t.a.already == 1 && t.a.id == 0 && t.a.err[0] == '\0');
    CHECK(t.b.calls == 1 && t.b.already == 1);
    CHECK(qll("SELECT count(*) FROM jobs WHERE recording_id = '%s'", rec) == 1);
    /* a finished job does not block the next one */
    q1("UPDATE jobs SET status = 'done' WHERE id = %lld", id);
    long long id2 = enqueue_wait(q, rec, "document", NULL, 0, 0);
    CHECK(id2 > id);
    db_pool_free(db);
    jobq_free(q);
}

/* jobq_enqueue_tx_many: recs[0] gets a document job with a payload that
 * needs quoting in an array, recs[1] one that is already queued, recs[2]
 * an embedding job 1 h away with 7 attempts. */
struct txmany {
    struct jobq *q;
    const char (*recs)[37];
    int committed, rc;
    char commit_err[256];
};

static void on_txmany_commit(void *arg, const struct db_res *res, const char *err,
                             const char *sqlstate)
{
    struct txmany *t = arg;
    (void)res;
    (void)sqlstate;
    t->committed = 1;
    snprintf(t->commit_err, sizeof t->commit_err, "%s", err ? err : "");
}

static void on_txmany_begin(void *arg, struct db_tx *tx, const char *err)
{
    struct txmany *t = arg;
    (void)err;
    if (!tx) {
        t->committed = 1;
        return;
    }
    struct jobq_new_job s[3] = {
        {org_id, t->recs[0], "document", "{\"model\": \"a \\\"b\\\" \\\\ c\"}", 0, 0},
        {org_id, t->recs[1], "document", NULL, 0, 0},
        {org_id, t->recs[2], "embedding", NULL, 3600000, 7}};
    struct jobq_new_job bad = {org_id, "not-a-uuid", "document", NULL, 0, 0};
    CHECK(jobq_enqueue_tx_many(t->q, tx, &bad, 1) == -1);
    CHECK(jobq_enqueue_tx_many(t->q, tx, s, 0) == -1);
    t->rc = jobq_enqueue_tx_many(t->q, tx, s, 3);
    db_tx_commit(tx, on_txmany_commit, t);
}

static void test_many_jobs_are_enqueued_in_one_statement(void)
{
    char recs[3][37];
    reset();
    for (int i = 0; i < 3; i++)
        new_recording(recs[i]);
    struct db_pool *db = pool_new("w-many");
    struct worker w = {.mode = M_DONE};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 0, 0)};
    struct jobq *q = queue_new(db, "w-many", st, 1, NULL);
    long long dup = enqueue_wait(q, recs[1], "document", NULL, 0, 0);
    CHECK(dup > 0);
    struct txmany t = {.q = q, .recs = (const char(*)[37])recs};
    CHECK(db_tx_begin(db, on_txmany_begin, &t) != NULL);
    CHECK(t_run_cond(base, t_flag_set, &t.committed, 30) == 0);
    CHECK(t.rc == 0);
    CHECK_STR(t.commit_err, "");
    CHECK_STR(q1("SELECT payload->>'model' FROM jobs WHERE recording_id = '%s'", recs[0]),
              "a \"b\" \\ c");
    CHECK(qll("SELECT count(*) FROM jobs WHERE recording_id = '%s'", recs[1]) == 1);
    CHECK_STR(q1("SELECT stage || ' ' || max_attempts || ' ' ||"
                 " (run_at > now() + interval '59 minutes') FROM jobs WHERE recording_id = '%s'",
                 recs[2]),
              "embedding 7 true");
    db_pool_free(db);
    jobq_free(q);
}

static void test_failed_job_is_retried_no_earlier_than_retry_after_then_done(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-retry");
    struct worker w = {.mode = M_FAIL_THEN_DONE, .retry_after_ms = 1200};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 1, 1)};
    /* no poll: the queue's own wake-up must bring the retry back */
    struct jobq_opts o = {.poll_ms = 600000};
    struct jobq *q = queue_new(db, "w-retry", st, 1, &o);
    long long id = enqueue_wait(q, rec, "transcription", NULL, 0, 0);
    CHECK(id > 0);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK(w.runs == 2);
    CHECK(w.failed_hooks == 0);
    CHECK_STR(
        q1("SELECT attempts || ' ' || coalesce(last_error, 'none') FROM jobs WHERE id = %lld", id),
        "2 none");
    /* the requeue put run_at at least retry_after past its own now() */
    CHECK_STR(q1("SELECT delay_ms >= 1200 FROM jobs_audit"
                 " WHERE job_id = %lld AND status = 'queued' AND attempts = 1",
                 id),
              "t");
    CHECK_STR(q1("SELECT last_error FROM jobs_audit"
                 " WHERE job_id = %lld AND status = 'queued' AND attempts = 1",
                 id),
              "try later");
    struct jobq_stage_stats s;
    jobq_stats(q, 0, &s);
    CHECK(s.retried == 1);
    db_pool_free(db);
    jobq_free(q);
}

static int failed_reached(void *arg)
{
    struct jobq_stage_stats s;
    return jobq_stats(arg, 0, &s) == 0 && s.failed >= 1;
}

static void test_backoff_doubles_with_jitter_up_to_the_cap_then_fails_for_good(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-max");
    struct worker w = {.mode = M_FAIL_ALWAYS};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 1, 1)};
    struct jobq_opts o = {.backoff_base_ms = 40, .backoff_cap_ms = 100};
    struct jobq *q = queue_new(db, "w-max", st, 1, &o);
    long long id = enqueue_wait(q, rec, "transcription", NULL, 0, 4);
    CHECK(id > 0);
    CHECK(wait_sql("failed", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || last_error FROM jobs WHERE id = %lld", id), "4 boom 4");
    CHECK(w.runs == 4);
    /* delays drawn from [0, 40], [0, 80], [0, 100 (cap)] */
    CHECK(qll("SELECT count(*) FROM jobs_audit WHERE job_id = %lld AND status = 'queued'", id) ==
          3);
    CHECK_STR(
        q1("SELECT bool_and(delay_ms >= 0 AND delay_ms <= least(40 * 2 ^ (attempts - 1), 100))"
           " FROM jobs_audit WHERE job_id = %lld AND status = 'queued'",
           id),
        "t");
    /* the failed hook ran once, in the transaction that failed the job */
    CHECK(w.failed_hooks == 1);
    CHECK_STR(w.failed_error, "boom 4");
    CHECK(t_run_cond(base, failed_reached, q, 30) == 0); /* counted when the commit is answered */
    CHECK_STR(q1("SELECT status || ' ' || error_stage || ' ' || error_message FROM recordings"
                 " WHERE id = '%s'",
                 rec),
              "error transcription boom 4");
    struct jobq_stage_stats s;
    jobq_stats(q, 0, &s);
    CHECK(s.retried == 3 && s.failed == 1);
    db_pool_free(db);
    jobq_free(q);
}

static void test_permanent_failure_fails_at_once_and_marks_the_recording_atomically(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-perm");
    struct worker w = {.mode = M_FAIL_PERM};
    struct jobq_stage st[] = {stage_for("document", &w, 1, 1, 1)};
    struct jobq *q = queue_new(db, "w-perm", st, 1, NULL);
    long long id = enqueue_wait(q, rec, "document", NULL, 0, 5);
    CHECK(wait_sql("failed", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || last_error || ' ' || (finished_at IS NOT NULL)"
                 " FROM jobs WHERE id = %lld",
                 id),
              "1 bad input true");
    CHECK_STR(q1("SELECT status || ' ' || error_stage FROM recordings WHERE id = '%s'", rec),
              "error document");
    CHECK(w.runs == 1 && w.failed_hooks == 1);
    db_pool_free(db);
    jobq_free(q);
}

static int errors_reached(void *arg)
{
    struct jobq_stage_stats s;
    return jobq_stats(arg, 0, &s) == 0 && s.errors >= 1;
}

static void test_failure_whose_hook_fails_is_not_recorded_at_all(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-hookfail");
    struct worker w = {.mode = M_FAIL_PERM, .hook_breaks = 1};
    struct jobq_stage st[] = {stage_for("document", &w, 1, 1, 1)};
    struct jobq *q = queue_new(db, "w-hookfail", st, 1, NULL);
    long long id = enqueue_wait(q, rec, "document", NULL, 0, 5);
    CHECK(id > 0);
    CHECK(t_run_cond(base, errors_reached, q, 30) == 0);
    /* neither the failure nor the hook's write committed: the job keeps
     * its lease and is taken over when it expires */
    CHECK_STR(q1("SELECT status || ' ' || leased_by FROM jobs WHERE id = %lld", id),
              "running w-hookfail");
    CHECK_STR(q1("SELECT status FROM recordings WHERE id = '%s'", rec), "uploading");
    CHECK(w.failed_hooks == 1);
    db_pool_free(db);
    jobq_free(q);
}

static void test_two_workers_split_200_jobs_and_none_runs_twice(void)
{
    reset();
    memset(run_count, 0, sizeof run_count);
    q1("INSERT INTO recordings (org_id, title) SELECT '%s', 'split' FROM generate_series(1, 200)",
       org_id);
    struct db_pool *db1 = pool_new("w1"), *db2 = pool_new("w2");
    struct worker w1 = {.mode = M_DONE_LATER}, w2 = {.mode = M_DONE_LATER};
    struct jobq_stage s1[] = {stage_for("embedding", &w1, 4, 1, 0)};
    struct jobq_stage s2[] = {stage_for("embedding", &w2, 4, 1, 0)};
    struct jobq_opts o = {.batch = 2};
    struct jobq *q1_ = queue_new(db1, "w1", s1, 1, &o), *q2_ = queue_new(db2, "w2", s2, 1, &o);
    CHECK(q1_ && q2_);
    CHECK(listening("w1") == 0 && listening("w2") == 0); /* both hear the insert */
    CHECK_STR(q1("INSERT INTO jobs (org_id, recording_id, stage)"
                 " SELECT org_id, id, 'embedding' FROM recordings WHERE title = 'split'"),
              "OK");
    CHECK(wait_sql("200",
                   "SELECT count(*) FROM jobs WHERE stage = 'embedding' AND status = 'done'") == 0);
    struct stat_wait a = {q1_, w1.runs}, b = {q2_, w2.runs};
    CHECK(t_run_cond(base, done_reached, &a, 30) == 0 &&
          t_run_cond(base, done_reached, &b, 30) == 0);
    CHECK(w1.runs + w2.runs == 200);
    CHECK(w1.runs > 0 && w2.runs > 0);
    CHECK(qll("SELECT count(*) FROM jobs WHERE stage = 'embedding' AND leased_by = 'w1'") ==
          w1.runs);
    CHECK(qll("SELECT count(*) FROM jobs WHERE stage = 'embedding' AND attempts = 1") == 200);
    PGresult *r = PQexec(pg, "SELECT id FROM jobs WHERE stage = 'embedding'");
    int once = PQntuples(r) == 200;
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = atoll(PQgetvalue(r, i, 0));
        if (id <= 0 || id >= MAX_JOB_ID || run_count[id] != 1) once = 0;
    }
    PQclear(r);
    CHECK(once);
    printf("# split: w1 %d, w2 %d\n", w1.runs, w2.runs);
    db_pool_free(db1);
    db_pool_free(db2);
    jobq_free(q1_);
    jobq_free(q2_);
}

static void test_job_of_a_dead_worker_is_taken_over_after_its_lease(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *dba = pool_new("w-dead");
    struct worker wa = {.mode = M_HOLD}, wb = {.mode = M_DONE};
    struct jobq_stage sa[] = {stage_for("transcription", &wa, 1, 1, 0)};
    struct jobq_opts o = {.lease_ms = 1000, .reap_ms = 100};
    struct jobq *qa = queue_new(dba, "w-dead", sa, 1, &o);
    long long id = enqueue_wait(qa, rec, "transcription", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &wa, 30) == 0);
    /* the worker dies holding the job: no completion, no more heartbeats */
    db_pool_free(dba);
    jobq_free(qa);
    CHECK(wa.cancels == 1);
    CHECK_STR(q1("SELECT status || ' ' || leased_by FROM jobs WHERE id = %lld", id),
              "running w-dead");
    struct db_pool *dbb = pool_new("w-alive");
    struct jobq_stage sb[] = {stage_for("transcription", &wb, 1, 1, 0)};
    struct jobq *qb = queue_new(dbb, "w-alive", sb, 1, &o);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || leased_by FROM jobs WHERE id = %lld", id), "2 w-alive");
    CHECK(wb.runs == 1);
    CHECK_STR(q1("SELECT last_error FROM jobs_audit WHERE job_id = %lld AND status = 'queued'", id),
              "lease of w-dead expired");
    struct jobq_stage_stats s;
    jobq_stats(qb, 0, &s);
    CHECK(s.rescued == 1);
    db_pool_free(dbb);
    jobq_free(qb);
}

static void test_heartbeat_keeps_a_long_job_from_being_taken_over(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *dba = pool_new("w-long"), *dbb = pool_new("w-other");
    struct worker wa = {.mode = M_HOLD}, wb = {.mode = M_DONE};
    struct jobq_stage sa[] = {stage_for("transcription", &wa, 1, 0, 0)};
    struct jobq_stage sb[] = {stage_for("transcription", &wb, 1, 0, 0)};
    struct jobq_opts o = {.lease_ms = 1200, .reap_ms = 100};
    struct jobq *qa = queue_new(dba, "w-long", sa, 1, &o);
    long long id = enqueue_wait(qa, rec, "transcription", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &wa, 30) == 0);
    struct jobq *qb = queue_new(dbb, "w-other", sb, 1, &o);
    t_run_for(base, 3600); /* three leases */
    CHECK(wb.runs == 0);
    struct jobq_stage_stats s;
    jobq_stats(qa, 0, &s);
    CHECK(s.lost == 0);
    CHECK_STR(q1("SELECT status || ' ' || leased_by FROM jobs WHERE id = %lld", id),
              "running w-long");
    CHECK(wa.nheld == 1 && jobq_done(wa.held[0]) == 0);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || leased_by FROM jobs WHERE id = %lld", id), "1 w-long");
    db_pool_free(dba);
    db_pool_free(dbb);
    jobq_free(qa);
    jobq_free(qb);
}

static void test_notify_wakes_a_worker_without_the_poll(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-notify");
    struct worker w = {.mode = M_DONE};
    struct jobq_stage st[] = {stage_for("publication", &w, 1, 1, 0)};
    struct jobq_opts o = {.poll_ms = 600000, .reap_ms = 600000, .stats_ms = -1};
    struct jobq *q = queue_new(db, "w-notify", st, 1, &o);
    CHECK(listening("w-notify") == 0);
    t_run_for(base, 100); /* the start-up claim has come back empty */
    /* inserted behind the queue's back: only the NOTIFY can tell it */
    CHECK_STR(
        q1("INSERT INTO jobs (org_id, recording_id, stage) VALUES ('%s', '%s', 'publication')",
           org_id, rec),
        "OK");
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE recording_id = '%s'", rec) == 0);
    CHECK(w.runs == 1);
    db_pool_free(db);
    jobq_free(q);
}

struct cancel_res {
    int calls, n;
};

static void on_cancelled(void *arg, int n, const char *err)
{
    struct cancel_res *c = arg;
    (void)err;
    c->calls++;
    c->n = n;
}

static void test_cancel_recording_cancels_its_queued_and_running_jobs(void)
{
    char rec[37], rec2[37];
    reset();
    new_recording(rec);
    new_recording(rec2);
    struct db_pool *db = pool_new("w-cancel");
    struct worker wt = {.mode = M_HOLD}, we = {.mode = M_HOLD};
    struct jobq_stage st[] = {stage_for("transcription", &wt, 1, 1, 0),
                              stage_for("embedding", &we, 1, 0, 0)};
    struct jobq *q = queue_new(db, "w-cancel", st, 2, NULL);
    long long running = enqueue_wait(q, rec, "transcription", NULL, 0, 0);
    long long later = enqueue_wait(q, rec, "document", NULL, 60000, 0);
    CHECK(running > 0 && later > 0);
    CHECK(t_run_cond(base, held_one, &wt, 30) == 0);
    struct cancel_res c = {0};
    CHECK(jobq_cancel_recording(q, rec, on_cancelled, &c) == 0);
    CHECK(t_run_cond(base, t_flag_set, &c.calls, 30) == 0);
    CHECK(c.n == 2);
    CHECK(wt.cancels == 1 && wt.nheld == 0); /* the hook ran before the callback */
    CHECK(qll("SELECT count(*) FROM jobs WHERE recording_id = '%s' AND status = 'cancelled'",
              rec) == 2);
    /* a stage without cancel hook runs to its end; its completion is ignored */
    long long e = enqueue_wait(q, rec2, "embedding", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &we, 30) == 0);
    struct cancel_res c2 = {0};
    CHECK(jobq_cancel_recording(q, rec2, on_cancelled, &c2) == 0);
    CHECK(t_run_cond(base, t_flag_set, &c2.calls, 30) == 0 && c2.n == 1);
    CHECK(we.nheld == 1 && jobq_done(we.held[0]) == 0);
    t_run_for(base, 200);
    CHECK_STR(q1("SELECT status FROM jobs WHERE id = %lld", e), "cancelled");
    struct jobq_stage_stats s;
    jobq_stats(q, 1, &s);
    CHECK(s.cancelled == 1 && s.done == 0 && s.running == 0);
    db_pool_free(db);
    jobq_free(q);
}

/* A handler that writes its result with the completion. */
struct txdone {
    struct jobq_job *job;
    int duplicate; /* write the result twice: the transaction fails */
    int called;
    enum jobq_commit_outcome outcome;
    char err[256];
};

static struct db_stmt q_result = {"test_result",
                                  "INSERT INTO results (job_id, worker) VALUES ($1, $2)"};

static void on_outcome(void *arg, enum jobq_commit_outcome outcome, const char *err)
{
    struct txdone *t = arg;
    t->called++;
    t->outcome = outcome;
    snprintf(t->err, sizeof t->err, "%s", err ? err : "");
}

static void on_result_tx(void *arg, struct db_tx *tx, const char *err)
{
    struct txdone *t = arg;
    char id[24];
    (void)err;
    if (!tx) return;
    snprintf(id, sizeof id, "%lld", t->job->id);
    const char *p[2] = {id, "me"};
    CHECK(jobq_done_tx(t->job, tx) == 0);
    db_tx_query(tx, &q_result, 2, p, NULL, NULL);
    if (t->duplicate) db_tx_query(tx, &q_result, 2, p, NULL, NULL);
    CHECK(jobq_commit(t->job, tx, on_outcome, t) == 0);
}

static int outcome_called(void *arg)
{
    return ((struct txdone *)arg)->called > 0;
}

static void test_completion_in_a_transaction_commits_only_while_the_job_is_held(void)
{
    char r1[37], r2[37], r3[37];
    reset();
    new_recording(r1);
    new_recording(r2);
    new_recording(r3);
    struct db_pool *db = pool_new("w-tx");
    struct worker w = {.mode = M_HOLD};
    struct jobq_stage st[] = {stage_for("document", &w, 1, 0, 0)};
    struct jobq *q = queue_new(db, "w-tx", st, 1, NULL);

    /* held: the result and the completion commit together */
    long long id1 = enqueue_wait(q, r1, "document", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &w, 30) == 0);
    struct txdone a = {.job = w.held[0]};
    w.nheld = 0;
    CHECK(db_tx_begin(db, on_result_tx, &a) != NULL);
    CHECK(t_run_cond(base, outcome_called, &a, 30) == 0);
    CHECK(a.called == 1 && a.outcome == JOBQ_COMMITTED);
    CHECK_STR(q1("SELECT status FROM jobs WHERE id = %lld", id1), "done");
    CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", id1) == 1);

    /* taken over meanwhile: nothing is written, the new holder keeps it */
    long long id2 = enqueue_wait(q, r2, "document", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &w, 30) == 0);
    q1("UPDATE jobs SET leased_by = 'thief', lease_expires_at = now() + interval '1 hour'"
       " WHERE id = %lld",
       id2);
    struct txdone b = {.job = w.held[0]};
    w.nheld = 0;
    CHECK(db_tx_begin(db, on_result_tx, &b) != NULL);
    CHECK(t_run_cond(base, outcome_called, &b, 30) == 0);
    CHECK(b.outcome == JOBQ_LOST);
    CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", id2) == 0);
    CHECK_STR(q1("SELECT status || ' ' || leased_by FROM jobs WHERE id = %lld", id2),
              "running thief");

    /* a failing transaction: nothing committed, the job goes back for a retry */
    long long id3 = enqueue_wait(q, r3, "document", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &w, 30) == 0);
    struct txdone c = {.job = w.held[0], .duplicate = 1};
    w.nheld = 0;
    CHECK(db_tx_begin(db, on_result_tx, &c) != NULL);
    CHECK(t_run_cond(base, outcome_called, &c, 30) == 0);
    CHECK(c.outcome == JOBQ_ABORTED && c.err[0] != '\0');
    CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", id3) == 0);
    CHECK(qll("SELECT count(*) FROM jobs_audit WHERE job_id = %lld AND status = 'queued'"
              " AND attempts = 1 AND last_error LIKE 'commit failed:%%'",
              id3) == 1);
    db_pool_free(db);
    jobq_free(q);
}

/* Several jobs' results in one transaction (jobq_done_tx_many). */
struct group {
    struct txdone t[3];
    int n;
};

static void on_group_tx(void *arg, struct db_tx *tx, const char *err)
{
    struct group *g = arg;
    struct jobq_job *jobs[3];
    void *args[3];
    (void)err;
    if (!tx) return;
    for (int i = 0; i < g->n; i++) {
        jobs[i] = g->t[i].job;
        args[i] = &g->t[i];
    }
    CHECK(jobq_done_tx_many(jobs, g->n, tx) == 0);
    for (int i = 0; i < g->n; i++) {
        char id[24];
        snprintf(id, sizeof id, "%lld", g->t[i].job->id);
        const char *p[2] = {id, "me"};
        db_tx_query(tx, &q_result, 2, p, NULL, NULL);
    }
    /* not the same set: refused, nothing changes */
    CHECK(jobq_commit_many(jobs, g->n - 1, tx, on_outcome, args) == -1);
    CHECK(jobq_commit_many(jobs, g->n, tx, on_outcome, args) == 0);
}

static int group_answered(void *arg)
{
    struct group *g = arg;
    for (int i = 0; i < g->n; i++)
        if (!g->t[i].called) return 0;
    return 1;
}

static void test_group_completion_commits_all_or_hands_every_job_back(void)
{
    char r[3][37];
    long long id[3];
    reset();
    struct db_pool *db = pool_new("w-group");
    struct worker w = {.mode = M_HOLD};
    struct jobq_stage st[] = {stage_for("document", &w, 3, 0, 0)};
    struct jobq *q = queue_new(db, "w-group", st, 1, NULL);

    /* all held: the three results and completions commit together */
    for (int i = 0; i < 3; i++) {
        new_recording(r[i]);
        id[i] = enqueue_wait(q, r[i], "document", NULL, 0, 0);
    }
    CHECK(t_run_cond(base, held_three, &w, 30) == 0);
    struct group a = {.n = 3};
    for (int i = 0; i < 3; i++)
        a.t[i].job = w.held[i];
    w.nheld = 0;
    CHECK(db_tx_begin(db, on_group_tx, &a) != NULL);
    CHECK(t_run_cond(base, group_answered, &a, 30) == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(a.t[i].called == 1 && a.t[i].outcome == JOBQ_COMMITTED);
        CHECK_STR(q1("SELECT status FROM jobs WHERE id = %lld", id[i]), "done");
        CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", id[i]) == 1);
    }

    /* one taken over: nothing at all is committed, every job is the
     * handler's again; committed alone, the lost one is LOST and the
     * others commit */
    for (int i = 0; i < 3; i++) {
        new_recording(r[i]);
        id[i] = enqueue_wait(q, r[i], "document", NULL, 0, 0);
    }
    CHECK(t_run_cond(base, held_three, &w, 30) == 0);
    struct group b = {.n = 3};
    for (int i = 0; i < 3; i++)
        b.t[i].job = w.held[i];
    w.nheld = 0;
    long long stolen = b.t[1].job->id;
    q1("UPDATE jobs SET leased_by = 'thief', lease_expires_at = now() + interval '1 hour'"
       " WHERE id = %lld",
       stolen);
    CHECK(db_tx_begin(db, on_group_tx, &b) != NULL);
    CHECK(t_run_cond(base, group_answered, &b, 30) == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(b.t[i].called == 1 && b.t[i].outcome == JOBQ_UNDONE);
        CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", id[i]) == 0);
    }
    CHECK_STR(q1("SELECT string_agg(status, ',' ORDER BY id) FROM jobs WHERE id IN"
                 " (%lld, %lld, %lld)",
                 id[0], id[1], id[2]),
              "running,running,running");
    struct txdone alone[3];
    for (int i = 0; i < 3; i++) {
        alone[i] = (struct txdone){.job = b.t[i].job};
        CHECK(db_tx_begin(db, on_result_tx, &alone[i]) != NULL);
    }
    for (int i = 0; i < 3; i++) {
        CHECK(t_run_cond(base, outcome_called, &alone[i], 30) == 0);
        CHECK(alone[i].outcome == (i == 1 ? JOBQ_LOST : JOBQ_COMMITTED));
    }
    CHECK(qll("SELECT count(*) FROM results WHERE job_id IN (%lld, %lld, %lld)", id[0], id[1],
              id[2]) == 2);
    CHECK(qll("SELECT count(*) FROM results WHERE job_id = %lld", stolen) == 0);
    struct jobq_stage_stats s;
    jobq_stats(q, 0, &s);
    CHECK(s.done == 5 && s.lost == 1 && s.running == 0);
    db_pool_free(db);
    jobq_free(q);
}

static void test_lease_expired_on_the_last_attempt_fails_through_the_hook(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    long long id = qll("INSERT INTO jobs (org_id, recording_id, stage, status, attempts,"
                       " max_attempts, leased_by, lease_expires_at)"
                       " VALUES ('%s', '%s', 'transcription', 'running', 2, 2, 'ghost',"
                       " now() - interval '1 second') RETURNING id",
                       org_id, rec);
    struct db_pool *db = pool_new("w-reaper");
    struct worker w = {.mode = M_DONE};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 1, 1)};
    struct jobq_opts o = {.reap_ms = 100};
    struct jobq *q = queue_new(db, "w-reaper", st, 1, &o);
    CHECK(wait_sql("failed", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || last_error FROM jobs WHERE id = %lld", id),
              "2 lease expired on the last attempt (worker ghost)");
    CHECK(w.runs == 0 && w.failed_hooks == 1);
    CHECK_STR(q1("SELECT status || ' ' || error_stage FROM recordings WHERE id = '%s'", rec),
              "error transcription");
    db_pool_free(db);
    jobq_free(q);
}

static void on_idle(void *arg)
{
    (*(int *)arg)++;
}

static void test_stop_claims_nothing_more_and_reports_idle_when_handlers_end(void)
{
    char r1[37], r2[37];
    reset();
    new_recording(r1);
    new_recording(r2);
    struct db_pool *db = pool_new("w-stop");
    struct worker w = {.mode = M_HOLD};
    struct jobq_stage st[] = {stage_for("transcription", &w, 2, 1, 0)};
    struct jobq *q = queue_new(db, "w-stop", st, 1, NULL);
    long long id1 = enqueue_wait(q, r1, "transcription", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &w, 30) == 0);
    int idle = 0;
    jobq_stop(q, on_idle, &idle);
    long long id2 = enqueue_wait(q, r2, "transcription", NULL, 0, 0);
    t_run_for(base, 300);
    CHECK(idle == 0 && w.runs == 1);
    CHECK(jobq_done(w.held[0]) == 0);
    CHECK(t_run_cond(base, t_flag_set, &idle, 30) == 0);
    CHECK(idle == 1);
    CHECK_STR(q1("SELECT status FROM jobs WHERE id = %lld", id1), "done");
    CHECK_STR(q1("SELECT status FROM jobs WHERE id = %lld", id2), "queued");
    db_pool_free(db);
    jobq_free(q);
}

static void on_released(void *arg, int n)
{
    *(int *)arg = n + 100; /* 100 + jobs released: set even for 0 */
}

static void test_release_hands_running_jobs_back_at_once_with_their_attempt(void)
{
    char r1[37];
    reset();
    new_recording(r1);
    struct db_pool *dba = pool_new("w-going");
    struct worker wa = {.mode = M_HOLD}, wb = {.mode = M_DONE};
    struct jobq_stage sa[] = {stage_for("transcription", &wa, 1, 1, 0)};
    struct jobq_opts o = {.lease_ms = 60000};
    struct jobq *qa = queue_new(dba, "w-going", sa, 1, &o);
    long long id = enqueue_wait(qa, r1, "transcription", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &wa, 30) == 0);
    int released = 0;
    CHECK(jobq_release(qa, on_released, &released) == 0);
    CHECK(wa.cancels == 1 && wa.nheld == 0); /* the handler was told to stop */
    CHECK(t_run_cond(base, t_flag_set, &released, 30) == 0);
    CHECK(released == 101);
    CHECK_STR(q1("SELECT status || ' ' || attempts FROM jobs WHERE id = %lld", id), "queued 0");
    /* another worker takes it at once, not after the minute-long lease */
    struct db_pool *dbb = pool_new("w-next");
    struct jobq_stage sb[] = {stage_for("transcription", &wb, 1, 1, 0)};
    struct jobq *qb = queue_new(dbb, "w-next", sb, 1, &o);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    CHECK_STR(q1("SELECT attempts || ' ' || leased_by FROM jobs WHERE id = %lld", id), "1 w-next");
    /* the stopped queue claims nothing more */
    CHECK(wa.runs == 1);
    db_pool_free(dba);
    jobq_free(qa);
    db_pool_free(dbb);
    jobq_free(qb);
}

struct noted {
    int calls, ok;
};

static void on_noted(void *arg, int ok, const char *err)
{
    struct noted *n = arg;
    (void)err;
    n->calls++;
    n->ok = ok;
}

static void test_provider_job_is_recorded_while_the_job_is_held(void)
{
    char rec[37];
    reset();
    new_recording(rec);
    struct db_pool *db = pool_new("w-provider");
    struct worker w = {.mode = M_HOLD};
    struct jobq_stage st[] = {stage_for("transcription", &w, 1, 1, 0)};
    struct jobq *q = queue_new(db, "w-provider", st, 1, NULL);
    long long id = enqueue_wait(q, rec, "transcription", NULL, 0, 0);
    CHECK(t_run_cond(base, held_one, &w, 30) == 0);
    struct jobq_job *job = w.held[0];
    CHECK(job->provider == NULL && job->provider_job_id == NULL);
    struct noted n = {0};
    CHECK(jobq_note_provider_job(job, "assemblyai", "tr-123", on_noted, &n) == 0);
    CHECK(t_run_cond(base, t_flag_set, &n.calls, 30) == 0 && n.ok == 1);
    CHECK_STR(job->provider_job_id, "tr-123");
    CHECK_STR(q1("SELECT provider || ' ' || provider_job_id FROM jobs WHERE id = %lld", id),
              "assemblyai tr-123");
    CHECK(jobq_done(job) == 0);
    CHECK(wait_sql("done", "SELECT status FROM jobs WHERE id = %lld", id) == 0);
    db_pool_free(db);
    jobq_free(q);
}

/* bench/queue_claim.sql: each "-- jobq:NAME $1=var ..." line is followed
 * by the statement jobq_sql(NAME) with $n written :var. */
static int bench_statement_matches(const char *spec, const char *stmt)
{
    char name[32], vars[9][32];
    int nv = 0;
    const char *p = spec + strlen("-- jobq:");
    if (sscanf(p, "%31s", name) != 1) return 0;
    p += strlen(name);
    for (;;) {
        int k, used;
        char v[32];
        if (sscanf(p, " $%d=%31s%n", &k, v, &used) != 2) break;
        if (k != nv + 1 || nv >= 9) return 0;
        snprintf(vars[nv++], sizeof vars[0], "%s", v);
        p += used;
    }
    const char *want = jobq_sql(name);
    if (!want) return 0;
    char got[4096];
    size_t n = 0;
    for (const char *s = stmt; *s && n + 4 < sizeof got;) {
        int hit = -1;
        if (*s == ':' && s[1] != ':' && (s == stmt || s[-1] != ':'))
            for (int i = 0; i < nv; i++) {
                size_t l = strlen(vars[i]);
                char after = s[1 + l];
                if (strncmp(s + 1, vars[i], l) == 0 &&
                    !((after >= 'a' && after <= 'z') || after == '_' ||
                      (after >= '0' && after <= '9')))
                    hit = i;
            }
        if (hit >= 0) {
            n += (size_t)snprintf(got + n, sizeof got - n, "$%d", hit + 1);
            s += 1 + strlen(vars[hit]);
        } else {
            got[n++] = *s++;
        }
    }
    while (n > 0 && (got[n - 1] == ';' || got[n - 1] == '\n'))
        n--;
    got[n] = '\0';
    if (strcmp(got, want) != 0) {
        printf("# bench %s:\n#  got  %s\n#  want %s\n", name, got, want);
        return 0;
    }
    return 1;
}

static void test_bench_script_runs_the_queues_own_sql(void)
{
    FILE *f = fopen("bench/queue_claim.sql", "r");
    CHECK(f != NULL);
    if (!f) return;
    char line[4096], spec[4096] = "";
    int matched = 0, seen = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "-- jobq:", 8) == 0) {
            snprintf(spec, sizeof spec, "%s", line);
            continue;
        }
        if (spec[0] && strncmp(line, "--", 2) != 0) {
            seen++;
            matched += bench_statement_matches(spec, line);
            spec[0] = '\0';
        }
    }
    fclose(f);
    CHECK(seen == 3 && matched == 3);
    CHECK(jobq_sql("claim") && jobq_sql("reap") && !jobq_sql("nope") && !jobq_sql(NULL));
}

static void noop_run(void *arg, struct jobq_job *job)
{
    (void)arg;
    (void)job;
}

static void test_bad_input_is_refused_without_crashing(void)
{
    struct db_pool *db = pool_new("w-misc");
    struct jobq_stage ok = {"transcription", 1, noop_run, NULL, NULL, NULL};
    struct jobq_stage dup[] = {ok, ok};
    struct jobq_stage noname = {NULL, 1, noop_run, NULL, NULL, NULL};
    struct jobq_stage norun = {"document", 1, NULL, NULL, NULL, NULL};
    struct jobq_stage badname = {"Doc ument", 1, noop_run, NULL, NULL, NULL};
    char longid[300];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    struct jobq_opts o = {.stages = &ok, .nstages = 1};
    CHECK(jobq_new(NULL, db, &o) == NULL);
    CHECK(jobq_new(base, NULL, &o) == NULL);
    CHECK(jobq_new(base, db, NULL) == NULL);
    o.nstages = 0;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.stages = dup;
    o.nstages = 2;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.nstages = 1;
    o.stages = &noname;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.stages = &norun;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.stages = &badname;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.stages = &ok;
    o.worker_id = longid;
    CHECK(jobq_new(base, db, &o) == NULL);
    o.worker_id = NULL; /* a generated id */
    struct jobq *q = jobq_new(base, db, &o);
    CHECK(q != NULL && strchr(jobq_worker_id(q), ':') != NULL);
    struct jobq_new_job bad = {"not-a-uuid", org_id, "transcription", NULL, 0, 0};
    CHECK(jobq_enqueue(q, &bad, NULL, NULL) == -1);
    struct jobq_new_job neg = {org_id, org_id, "transcription", NULL, -1, 0};
    CHECK(jobq_enqueue(q, &neg, NULL, NULL) == -1);
    CHECK(jobq_enqueue(q, NULL, NULL, NULL) == -1);
    CHECK(jobq_enqueue_tx(q, NULL, &neg, NULL, NULL) == -1);
    CHECK(jobq_cancel_recording(q, "x", NULL, NULL) == -1);
    CHECK(jobq_done(NULL) == -1);
    CHECK(jobq_fail(NULL, "x", -1, 0) == -1);
    CHECK(jobq_done_tx(NULL, NULL) == -1);
    CHECK(jobq_commit(NULL, NULL, NULL, NULL) == -1);
    CHECK(jobq_note_provider_job(NULL, "a", "b", NULL, NULL) == -1);
    CHECK(jobq_stats(q, -1, NULL) == -1);
    /* an enqueue the database refuses (unknown stage) answers with an error */
    char rec[37];
    new_recording(rec);
    struct enq e = {0};
    struct jobq_new_job unknown = {org_id, rec, "nosuchstage", NULL, 0, 0};
    CHECK(jobq_enqueue(q, &unknown, on_enq, &e) == 0);
    CHECK(t_run_cond(base, enq_done, &e, 30) == 0 && e.err[0] != '\0' && e.id == 0 &&
          e.already == 0);
    jobq_stop(NULL, NULL, NULL);
    jobq_free(NULL);
    db_pool_free(db);
    jobq_free(q);
}

/* ---- set-up */

static const char *fixtures[] = {
    "CREATE TABLE results (job_id bigint PRIMARY KEY, worker text)",
    "CREATE TABLE jobs_audit (job_id bigint, status text, attempts int, delay_ms numeric,"
    " last_error text)",
    "CREATE FUNCTION jobs_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " INSERT INTO jobs_audit VALUES (NEW.id, NEW.status, NEW.attempts,"
    " extract(epoch FROM NEW.run_at - now()) * 1000, NEW.last_error);"
    " RETURN NULL; END $$",
    "CREATE TRIGGER jobs_audit AFTER UPDATE OF status ON jobs FOR EACH ROW"
    " EXECUTE FUNCTION jobs_audit()",
};

int main(void)
{
    const char *url = getenv("REELD_TEST_PGURL");
    if (!url) {
        printf("FAIL jobq_tests_need_a_database: REELD_TEST_PGURL is not set\n");
        return 1;
    }
    char dbname[32], err[512];
    PGconn *admin = PQconnectdb(url);
    if (t_db_create(admin, url, "jobq", dbname, conninfo, sizeof conninfo, err, sizeof err) != 0) {
        printf("FAIL jobq_setup: database: %s\n", err);
        PQfinish(admin);
        return 1;
    }
    pg = PQconnectdb(conninfo);
    snprintf(org_id, sizeof org_id, "%s",
             q1("INSERT INTO organizations (name, slug) VALUES ('Jobs', 'jobs') RETURNING id"));
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        if (strcmp(q1("%s", fixtures[i]), "OK") != 0) {
            printf("FAIL jobq_setup: fixture %zu\n", i);
            return 1;
        }
    base = event_base_new();

    TEST(test_enqueued_job_runs_once_and_is_done);
    TEST(test_duplicate_enqueue_is_reported_as_already_queued);
    TEST(test_many_jobs_are_enqueued_in_one_statement);
    TEST(test_failed_job_is_retried_no_earlier_than_retry_after_then_done);
    TEST(test_backoff_doubles_with_jitter_up_to_the_cap_then_fails_for_good);
    TEST(test_permanent_failure_fails_at_once_and_marks_the_recording_atomically);
    TEST(test_failure_whose_hook_fails_is_not_recorded_at_all);
    TEST(test_two_workers_split_200_jobs_and_none_runs_twice);
    TEST(test_job_of_a_dead_worker_is_taken_over_after_its_lease);
    TEST(test_heartbeat_keeps_a_long_job_from_being_taken_over);
    TEST(test_notify_wakes_a_worker_without_the_poll);
    TEST(test_cancel_recording_cancels_its_queued_and_running_jobs);
    TEST(test_completion_in_a_transaction_commits_only_while_the_job_is_held);
    TEST(test_group_completion_commits_all_or_hands_every_job_back);
    TEST(test_lease_expired_on_the_last_attempt_fails_through_the_hook);
    TEST(test_stop_claims_nothing_more_and_reports_idle_when_handlers_end);
    TEST(test_release_hands_running_jobs_back_at_once_with_their_attempt);
    TEST(test_provider_job_is_recorded_while_the_job_is_held);
    TEST(test_bench_script_runs_the_queues_own_sql);
    TEST(test_bad_input_is_refused_without_crashing);

    event_base_free(base);
    PQfinish(pg);
    t_db_drop(admin, dbname);
    PQfinish(admin);
    T_EXIT();
}
