/* The recording pipeline (pipeline.h): the state table, the stage
 * handlers on the job queue (jobq.h) and the transactions that store each
 * stage's result with the status, the event and the next job. */
#include "reeld/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/chunker.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/jobq.h"
#include "reeld/log.h"
#include "reeld/metrics.h"
#include "reeld/proc.h"
#include "reeld/provider.h"
#include "reeld/signurl.h"
#include "reeld/storage.h"
#include "reeld/util.h"

/* ---- the state table ------------------------------------------------------- */

struct work;

struct stage_def {
    const char *stage;   /* jobs.stage */
    const char *running; /* recordings.status while it runs (NULL: unchanged) */
    const char *done;    /* status its success commits (NULL: unchanged) */
    const char *next;    /* stage enqueued with its success */
    /* Stage enqueued when it fails for good, the failure kept in
     * error_stage; NULL: the recording ends 'error' at once. */
    const char *next_on_failure;
    const char *before; /* status a retry of this stage starts from */
    void (*run)(struct work *w);
    int (*concurrency)(void);
};

static void run_transcription(struct work *w);
static void run_document(struct work *w);
static void run_embedding(struct work *w);
static void run_publication(struct work *w);
static int conc_transcription(void)
{
    return prov.transcriber->concurrency;
}
static int conc_document(void)
{
    return prov.writer->concurrency;
}
static int conc_embedding(void)
{
    return prov.embedder->concurrency;
}
static int conc_publication(void)
{
    return 2;
}

static const struct stage_def stages[] = {
    {"transcription", "transcribing", "transcribed", "document", NULL, "uploaded",
     run_transcription, conc_transcription},
    {"document", "doc_generating", NULL, "embedding", "embedding", "transcribed", run_document,
     conc_document},
    {"embedding", "embedding", NULL, "publication", NULL, "transcribed", run_embedding,
     conc_embedding},
    /* "completed" becomes "error" when an earlier stage left error_stage */
    {"publication", NULL, "completed", NULL, NULL, "embedding", run_publication, conc_publication},
};
#define NSTAGES ((int)(sizeof stages / sizeof stages[0]))

static const struct stage_def *stage_find(const char *name)
{
    for (int i = 0; name && i < NSTAGES; i++)
        if (strcmp(stages[i].stage, name) == 0) return &stages[i];
    return NULL;
}

int pipeline_is_stage(const char *stage)
{
    return stage_find(stage) != NULL;
}

/* ---- statements ---------------------------------------------------------------- */

/* The recording.status event of the rows of u (SPEC 8 data). */
#define EVENT_FROM_U(stage_expr)                                                                   \
    " INSERT INTO events (org_id, recording_id, type, data)"                                       \
    " SELECT org_id, id, 'recording.status', jsonb_build_object('recording_id', id,"               \
    " 'status', status, 'stage', " stage_expr ", 'error', CASE WHEN error_stage IS NULL"           \
    " THEN NULL ELSE jsonb_build_object('stage', error_stage, 'message', error_message) END)"      \
    " FROM u"

/* A batch of claimed jobs of one stage starts: $1 the job ids, $2 this
 * worker, $3 the stage's running status (NULL: none), $4 the stage. For
 * the jobs still this worker's, the running status is set with its event
 * (so its event comes before the result's, and a handler that lost its
 * job unnoticed cannot set the status back), and the answer is what each
 * job's stage needs of its recording: one row per job still held, with
 * the recording's columns NULL when it was deleted (the transcript only
 * for the stages that read it). */
#define BEGIN_EVENTS " e AS (" EVENT_FROM_U("$4::text") ")"
static struct db_stmt q_begin = {
    "pipe_begin",
    "WITH j AS (SELECT id, recording_id, org_id FROM jobs"
    " WHERE id = ANY($1::bigint[]) AND leased_by = $2 AND status = 'running'),"
    " u AS (UPDATE recordings r SET status = $3 FROM j"
    " WHERE $3::text IS NOT NULL AND r.id = j.recording_id AND r.org_id = j.org_id"
    " AND r.deleted_at IS NULL AND r.status <> $3::text"
    " RETURNING r.id, r.org_id, r.status, r.error_stage, r.error_message)," BEGIN_EVENTS
    " SELECT j.id, r.id IS NOT NULL, r.storage_key, r.content_type, r.title, r.duration_ms,"
    " CASE WHEN $4::text IN ('document', 'embedding') THEN t.text END,"
    " CASE WHEN $4::text IN ('document', 'embedding') THEN t.words::text END,"
    " coalesce((o.settings->>'auto_publish')::boolean, false), t.text IS NOT NULL"
    " FROM j LEFT JOIN recordings r ON r.id = j.recording_id AND r.org_id = j.org_id"
    " AND r.deleted_at IS NULL"
    " LEFT JOIN organizations o ON o.id = r.org_id"
    " LEFT JOIN transcripts t ON t.recording_id = r.id"};
enum { B_ID, B_PRESENT, B_KEY, B_CTYPE, B_TITLE, B_DURATION, B_TEXT, B_WORDS, B_AUTOPUB, B_HAS_T };

/* Sets the statuses of several recordings, each with its event, where it
 * changes: $1 recording ids, $2 their organizations, $3 the statuses
 * ('completed' means 'error' when error_stage is set; completed_at is
 * set with 'completed'), $4 the stages named in the events. */
#define TARGET                                                                                     \
    "CASE WHEN v.target = 'completed' AND r.error_stage IS NOT NULL THEN 'error'"                  \
    " ELSE v.target END"
static struct db_stmt q_status = {
    "pipe_status",
    "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])"
    " AS v(id, org_id, target, stage)),"
    " u AS (UPDATE recordings r SET status = " TARGET ","
    " completed_at = CASE WHEN " TARGET " = 'completed' THEN now() ELSE r.completed_at END"
    " FROM v WHERE r.id = v.id AND r.org_id = v.org_id AND r.deleted_at IS NULL"
    " AND r.status <> " TARGET
    " RETURNING r.id, r.org_id, r.status, r.error_stage, r.error_message, v.stage)" EVENT_FROM_U(
        "stage")};
#undef TARGET

/* The recording ends 'error' ($3 stage, $4 message). */
static struct db_stmt q_error = {
    "pipe_error", "WITH u AS (UPDATE recordings SET status = 'error', error_stage = $3,"
                  " error_message = $4, completed_at = NULL"
                  " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
                  " RETURNING id, org_id, status, error_stage, error_message)" EVENT_FROM_U("$3")};

/* A failure that lets the pipeline go on ($3 stage, $4 message). */
static struct db_stmt q_soft_error = {"pipe_soft_error",
                                      "UPDATE recordings SET error_stage = $3, error_message = $4"
                                      " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"};

static struct db_stmt q_clear_error = {
    "pipe_clear_error", "UPDATE recordings SET error_stage = NULL, error_message = NULL"
                        " WHERE id = $1 AND org_id = $2 AND error_stage = $3"};

static struct db_stmt q_transcript = {
    "pipe_transcript",
    "INSERT INTO transcripts (recording_id, org_id, text, language, words, provider,"
    " provider_job_id) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)"
    " ON CONFLICT (recording_id) DO UPDATE SET text = EXCLUDED.text,"
    " language = EXCLUDED.language, words = EXCLUDED.words, provider = EXCLUDED.provider,"
    " provider_job_id = EXCLUDED.provider_job_id, transcribed_at = now()"};

static struct db_stmt q_document = {
    "pipe_document",
    "INSERT INTO documents (recording_id, org_id, content, summary, model, prompt_tokens,"
    " completion_tokens, generation_ms, flagged_short)"
    " VALUES ($1, $2, $3, $4, $5, $6::integer, $7::integer, $8::integer, $9::boolean)"
    " ON CONFLICT (recording_id) DO UPDATE SET content = EXCLUDED.content,"
    " summary = EXCLUDED.summary, model = EXCLUDED.model,"
    " prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,"
    " generation_ms = EXCLUDED.generation_ms, flagged_short = EXCLUDED.flagged_short"};

static struct db_stmt q_chunks_del = {"pipe_chunks_del",
                                      "DELETE FROM transcript_chunks WHERE recording_id = $1"};

/* $3 dim, $4 model, $5 every vector (float32, little-endian) one after
 * the other, $6 [{idx, text, start_ms, end_ms}]. */
static struct db_stmt q_chunks_ins = {
    "pipe_chunks_ins",
    "INSERT INTO transcript_chunks (recording_id, org_id, idx, text, start_ms, end_ms,"
    " embedding, dim, model)"
    " SELECT $1, $2, c.idx, c.text, c.start_ms, c.end_ms,"
    " substring($5::bytea FROM c.idx * 4 * $3::integer + 1 FOR 4 * $3::integer), $3::integer, $4"
    " FROM jsonb_to_recordset($6::jsonb) AS c(idx integer, text text, start_ms bigint,"
    " end_ms bigint)"};

static struct db_stmt q_thumbnail = {
    "pipe_thumbnail", "UPDATE recordings SET thumbnail_key = $3 WHERE id = $1 AND org_id = $2"};

static struct db_stmt q_autopublish = {
    "pipe_autopublish", "UPDATE recordings SET published = true, share_id = coalesce(share_id, $3),"
                        " published_at = now() WHERE id = $1 AND org_id = $2 AND NOT published"};

static struct db_stmt q_timings = {
    "pipe_timings",
    "SELECT stage, attempts, (extract(epoch FROM finished_at - started_at) * 1000)::bigint"
    " FROM recording_stages WHERE recording_id = $1 ORDER BY started_at"};

/* ---- metrics ------------------------------------------------------------------- */

static const double dur_buckets_s[] = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
#define NDUR (sizeof dur_buckets_s / sizeof dur_buckets_s[0])
static struct {
    unsigned long long b[NDUR], n;
    double sum;
} dur[NSTAGES];

static void observe_stage(const struct stage_def *d, int64_t ms)
{
    int i = (int)(d - stages);
    double s = (double)ms / 1000.0;
    for (size_t k = 0; k < NDUR; k++)
        if (s <= dur_buckets_s[k]) dur[i].b[k]++;
    dur[i].n++;
    dur[i].sum += s;
}

/* ---- the work of one job ------------------------------------------------------- */

static struct jobq *queue;

/* ---- batches --------------------------------------------------------------------
 *
 * The database work of the jobs is done in batches: the claimed jobs of a
 * stage start with one statement (q_begin), and the results ready in the
 * same loop turn, or while earlier results' transactions are out, are
 * stored in one transaction (group commit: one BEGIN, one completion
 * statement, one status statement and one COMMIT for all of them, the
 * organization's events lock taken once). A work waits on a list (starts
 * per stage, results) until the flush (a deferred event) sends its batch;
 * a cancelled work leaves its list, or its batch's slot is cleared. */

#define BATCH_MAX 32
/* Result transactions out at once; more results wait and join a later,
 * larger batch. */
#define RESULT_TXS 2

struct batch;

struct work {
    struct jobq_job *job;
    const struct stage_def *def;
    struct work *prev, *next; /* on a waiting list */
    struct wlist *list;       /* that list, or NULL */
    struct batch *batch;      /* the batch it is in (b->w[bidx] == this), or NULL */
    int bidx;
    int alone;              /* its result goes in a transaction of its own */
    struct prov_call *call; /* provider call in flight */
    struct proc *proc;      /* publication's ffmpeg */
    int64_t t0;
    char *key, *ctype, *title;
    int64_t duration_ms;
    int auto_publish;
    struct json_object *words; /* parsed transcript words (document, embedding) */
    char *text;
    /* the result waiting for its transaction */
    void (*write)(struct work *w, struct db_tx *tx);
    struct json_object *result;
    char *thumb_key;
};

struct wlist {
    struct work *head, *tail;
    int n;
};

struct batch {
    int n, left;
    struct work *w[]; /* NULL where the work was cancelled */
};

static struct wlist starting[NSTAGES], results;
static int results_out; /* result transactions out */
static struct event *flush_ev;

static void wl_add(struct wlist *l, struct work *w)
{
    w->prev = l->tail;
    w->next = NULL;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
    l->n++;
    w->list = l;
}

static void wl_del(struct work *w)
{
    struct wlist *l = w->list;
    if (!l) return;
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    l->n--;
    w->prev = w->next = NULL;
    w->list = NULL;
}

/* Up to max works off the head of l into a new batch; a work whose
 * result must be stored alone makes a batch of its own. */
static struct batch *batch_take(struct wlist *l, int max)
{
    int n = 0;
    for (struct work *w = l->head; w && n < max; w = w->next) {
        if (w->alone && n > 0) break;
        n++;
        if (w->alone) break;
    }
    struct batch *b = n ? calloc(1, sizeof *b + (size_t)n * sizeof b->w[0]) : NULL;
    if (!b) return NULL;
    b->n = n;
    for (int i = 0; i < n; i++) {
        struct work *w = l->head;
        wl_del(w);
        b->w[i] = w;
        w->batch = b;
        w->bidx = i;
    }
    return b;
}

/* The work leaves its batch (it was cancelled, or its part is over). */
static void batch_leave(struct work *w)
{
    if (w->batch) w->batch->w[w->bidx] = NULL;
    w->batch = NULL;
}

static void flush_soon(void)
{
    if (flush_ev) event_active(flush_ev, EV_TIMEOUT, 0);
}

static void work_free(struct work *w)
{
    wl_del(w);
    batch_leave(w);
    free(w->key);
    free(w->ctype);
    free(w->title);
    free(w->text);
    free(w->thumb_key);
    json_object_put(w->words);
    json_object_put(w->result);
    free(w);
}

static void log_stage(int level, const struct work *w, const char *msg, const char *error)
{
    struct log_line *l = log_begin(level, msg);
    log_str(l, "stage", w->def->stage);
    log_str(l, "recording_id", w->job->recording_id);
    log_int(l, "job_id", w->job->id);
    log_int(l, "attempt", w->job->attempt);
    if (error) log_str(l, "error", error);
    log_end(l);
}

/* The provider or the step failed: the queue retries or fails the job. */
static void work_fail(struct work *w, const char *error, long long retry_after_ms, int permanent)
{
    log_stage(LOG_WARN, w, permanent ? "stage failed" : "stage attempt failed", error);
    jobq_fail(w->job, error, retry_after_ms, permanent);
    work_free(w);
}

static void fail_status(struct work *w, const struct prov_status *st)
{
    work_fail(w, st->error ? st->error : "provider failed", st->retry_after_ms,
              st->outcome == PROV_FAIL);
}

static void log_timings(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    char *rec = arg;
    (void)sqlstate;
    if (!err) {
        struct log_line *l = log_begin(LOG_INFO, "pipeline finished");
        log_str(l, "recording_id", rec);
        for (int i = 0; i < db_nrows(res); i++) {
            char k[48];
            snprintf(k, sizeof k, "%s_ms", db_str(res, i, 0));
            log_int(l, k, db_int(res, i, 2));
        }
        log_end(l);
    }
    free(rec);
}

static void committed(void *arg, enum jobq_commit_outcome outcome, const char *err)
{
    struct work *w = arg;
    if (outcome == JOBQ_COMMITTED) {
        int64_t ms = util_mono_ms() - w->t0;
        observe_stage(w->def, ms);
        struct log_line *l = log_begin(LOG_INFO, "stage done");
        log_str(l, "stage", w->def->stage);
        log_str(l, "recording_id", w->job->recording_id);
        log_int(l, "ms", ms);
        log_end(l);
        if (!w->def->next && log_enabled(LOG_INFO)) {
            /* the stage timings of the whole recording, for the log */
            char *rec = strdup(w->job->recording_id);
            const char *p[1] = {rec};
            if (rec && !db_query(app.db, &q_timings, 1, p, log_timings, rec)) free(rec);
        }
    } else if (outcome == JOBQ_ABORTED) {
        log_stage(LOG_WARN, w, "stage result not stored; the job is retried", err);
    } else {
        log_stage(LOG_INFO, w, "stage result dropped: the job was taken over or cancelled", NULL);
    }
    work_free(w);
}

/* Queues q_status for n recordings (see there). */
static void status_tx(struct db_tx *tx, int n, const char *const *recs, const char *const *orgs,
                      const char *const *targets, const char *const *stage_names)
{
    const char *const *cols[4] = {recs, orgs, targets, stage_names};
    char *p[4];
    int ok = 1;
    for (int k = 0; k < 4; k++)
        ok = (p[k] = db_array_lit(cols[k], n)) != NULL && ok;
    if (ok) db_tx_query(tx, &q_status, 4, (const char *const *)p, NULL, NULL);
    for (int k = 0; k < 4; k++)
        free(p[k]);
}

static void set_status(struct db_tx *tx, const struct jobq_job *job, const char *status,
                       const char *stage)
{
    const char *rec = job->recording_id, *org = job->org_id;
    status_tx(tx, 1, &rec, &org, &status, &stage);
}

static int is_regenerate(const struct jobq_job *job)
{
    return strstr(job->payload, "\"regenerate\"") != NULL;
}

static void flush_results(void);

/* One result batch's transaction is over (every work in it answered). */
static void results_batch_end(struct batch *b)
{
    free(b);
    results_out--;
    flush_results();
}

static void result_answered(void *arg, enum jobq_commit_outcome outcome, const char *err)
{
    struct work *w = arg;
    struct batch *b = w->batch;
    w->batch = NULL;
    if (outcome == JOBQ_UNDONE) {
        /* another job of the transaction was lost: store this one alone */
        log_stage(LOG_INFO, w, "stage result stored again alone: its batch had a lost job", NULL);
        w->alone = 1;
        wl_add(&results, w);
    } else {
        committed(w, outcome, err);
    }
    if (--b->left == 0) results_batch_end(b);
}

static void results_begun(void *arg, struct db_tx *tx, const char *err)
{
    struct batch *b = arg;
    struct jobq_job *jobs[BATCH_MAX];
    void *args[BATCH_MAX];
    int n = 0;
    for (int i = 0; i < b->n; i++)
        if (b->w[i]) {
            jobs[n] = b->w[i]->job;
            args[n++] = b->w[i];
        }
    if (!tx || n == 0 || jobq_done_tx_many(jobs, n, tx) != 0) {
        if (tx) db_tx_rollback(tx);
        for (int i = 0; i < n; i++) {
            struct work *w = args[i];
            batch_leave(w);
            work_fail(w, !tx ? (err ? err : "database unavailable") : "cannot complete the job", -1,
                      0);
        }
        results_batch_end(b);
        return;
    }
    const char *recs[BATCH_MAX], *orgs[BATCH_MAX], *targets[BATCH_MAX], *names[BATCH_MAX];
    struct jobq_new_job next[BATCH_MAX];
    int ns = 0, nn = 0;
    for (int i = 0; i < n; i++) {
        struct work *w = args[i];
        w->write(w, tx);
        if (w->def->next && !(strcmp(w->def->stage, "document") == 0 && is_regenerate(w->job)))
            next[nn++] = (struct jobq_new_job){.org_id = w->job->org_id,
                                               .recording_id = w->job->recording_id,
                                               .stage = w->def->next,
                                               .max_attempts = cfg.job_max_attempts};
        if (w->def->done) {
            recs[ns] = w->job->recording_id;
            orgs[ns] = w->job->org_id;
            targets[ns] = w->def->done;
            names[ns++] = w->def->stage;
        }
    }
    if (nn) jobq_enqueue_tx_many(queue, tx, next, nn);
    /* last: the events' insert takes the organization's events lock,
     * held until the COMMIT that follows it in the same pipeline */
    if (ns) status_tx(tx, ns, recs, orgs, targets, names);
    b->left = n;
    jobq_commit_many(jobs, n, tx, result_answered, args);
}

/* Sends the waiting results' transactions, RESULT_TXS at most at once. */
static void flush_results(void)
{
    while (results_out < RESULT_TXS && results.n > 0) {
        struct batch *b = batch_take(&results, BATCH_MAX);
        if (!b) return; /* out of memory: the next flush tries again */
        results_out++;
        if (!db_tx_begin(app.db, results_begun, b)) results_begun(b, NULL, "database unavailable");
    }
}

/* The stage's result is ready (write knows how to store it). */
static void commit_result(struct work *w, void (*write)(struct work *w, struct db_tx *tx))
{
    w->write = write;
    wl_add(&results, w);
    flush_soon();
}

/* ---- transcription --------------------------------------------------------------- */

static void write_transcript(struct work *w, struct db_tx *tx)
{
    struct json_object *o = w->result, *v;
    const char *text = json_object_object_get_ex(o, "text", &v) ? json_object_get_string(v) : "";
    const char *lang =
        json_object_object_get_ex(o, "language", &v) && v ? json_object_get_string(v) : NULL;
    const char *pjob =
        json_object_object_get_ex(o, "provider_job_id", &v) && v ? json_object_get_string(v) : NULL;
    json_object_object_get_ex(o, "words", &v);
    const char *p[7] = {w->job->recording_id,
                        w->job->org_id,
                        text,
                        lang,
                        json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN),
                        prov.transcriber->name,
                        pjob};
    db_tx_query(tx, &q_transcript, 7, p, NULL, NULL);
}

/* Keeps only well-formed words, with monotonic times. */
static struct json_object *clean_words(struct json_object *in)
{
    struct json_object *out = json_object_new_array();
    int64_t last_end = 0;
    size_t n = in && json_object_is_type(in, json_type_array) ? json_object_array_length(in) : 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(in, i), *w, *s, *t;
        if (!json_object_object_get_ex(e, "w", &w) || !json_object_is_type(w, json_type_string))
            continue;
        int64_t st = json_object_object_get_ex(e, "start_ms", &s) ? json_object_get_int64(s) : 0;
        int64_t en = json_object_object_get_ex(e, "end_ms", &t) ? json_object_get_int64(t) : st;
        if (st < last_end) st = last_end;
        if (en < st) en = st;
        last_end = en;
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "w", json_object_get(w));
        json_object_object_add(o, "start_ms", json_object_new_int64(st));
        json_object_object_add(o, "end_ms", json_object_new_int64(en));
        json_object_array_add(out, o);
    }
    return out;
}

static void transcribed(void *arg, const struct prov_status *st, const struct prov_transcript *t)
{
    struct work *w = arg;
    w->call = NULL;
    if (st->outcome == PROV_SUBMITTED) {
        /* The result comes by webhook: keep the job (and its lease) and
         * remember the submission so that a resumed job checks on it. */
        jobq_note_provider_job(w->job, prov.transcriber->name,
                               t && t->provider_job_id ? t->provider_job_id : "", NULL, NULL);
        return;
    }
    if (st->outcome != PROV_OK) {
        fail_status(w, st);
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "text", json_object_new_string(t->text ? t->text : ""));
    json_object_object_add(o, "language", t->language ? json_object_new_string(t->language) : NULL);
    json_object_object_add(o, "words", clean_words(t->words));
    json_object_object_add(o, "provider_job_id",
                           t->provider_job_id ? json_object_new_string(t->provider_job_id) : NULL);
    w->result = o;
    commit_result(w, write_transcript);
}

static void run_transcription(struct work *w)
{
    char path[4096], url[2048];
    if (!w->key || !storage_local_path(w->key, path, sizeof path)) {
        work_fail(w, "the recording has no stored media", -1, 1);
        return;
    }
    char rel[1024];
    if (signurl_video(w->job->recording_id, 3600, rel, sizeof rel) == 0)
        snprintf(url, sizeof url, "%s%s", cfg.public_url, rel);
    else
        url[0] = '\0';
    struct prov_audio in = {.recording_id = w->job->recording_id,
                            .org_id = w->job->org_id,
                            .path = path,
                            .content_type = w->ctype,
                            .media_url = url[0] ? url : NULL,
                            .provider_job_id = w->job->provider_job_id,
                            .duration_ms = w->duration_ms};
    w->call = prov.transcriber->start(&in, transcribed, w);
    if (!w->call) work_fail(w, "cannot start the transcription", -1, 0);
}

/* ---- document -------------------------------------------------------------------- */

static void write_document(struct work *w, struct db_tx *tx)
{
    struct json_object *o = w->result, *v;
#define S(k) (json_object_object_get_ex(o, k, &v) && v ? json_object_get_string(v) : NULL)
    const char *p[9] = {w->job->recording_id,   w->job->org_id,     S("markdown"),
                        S("summary"),           S("model"),         S("prompt_tokens"),
                        S("completion_tokens"), S("generation_ms"), S("flagged_short")};
#undef S
    db_tx_query(tx, &q_document, 9, p, NULL, NULL);
    const char *c[3] = {w->job->recording_id, w->job->org_id, "document"};
    db_tx_query(tx, &q_clear_error, 3, c, NULL, NULL);
    if (is_regenerate(w->job)) set_status(tx, w->job, "completed", "document");
}

static struct json_object *int_or_null(int v)
{
    return v >= 0 ? json_object_new_int(v) : NULL;
}

static void documented(void *arg, const struct prov_status *st, const struct prov_document *d)
{
    struct work *w = arg;
    w->call = NULL;
    if (st->outcome != PROV_OK || !d || !d->markdown) {
        if (st->outcome == PROV_OK) {
            struct prov_status bad = {PROV_RETRY, "the writer returned no document", -1};
            fail_status(w, &bad);
        } else {
            fail_status(w, st);
        }
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "markdown", json_object_new_string(d->markdown));
    json_object_object_add(o, "summary", d->summary ? json_object_new_string(d->summary) : NULL);
    json_object_object_add(o, "model", json_object_new_string(d->model ? d->model : "unknown"));
    json_object_object_add(o, "prompt_tokens", int_or_null(d->prompt_tokens));
    json_object_object_add(o, "completion_tokens", int_or_null(d->completion_tokens));
    json_object_object_add(o, "generation_ms", json_object_new_int64(util_mono_ms() - w->t0));
    json_object_object_add(o, "flagged_short",
                           json_object_new_string(d->flagged_short ? "true" : "false"));
    w->result = o;
    commit_result(w, write_document);
}

/* The words of the transcript, or its text split on blanks when the
 * provider gave no timed words. Returns the count; *out points into
 * w->words / w->text, valid while w lives. */
static size_t transcript_words(struct work *w, struct chunker_word **out)
{
    size_t n = w->words ? json_object_array_length(w->words) : 0;
    struct chunker_word *cw = NULL;
    if (n > 0) {
        cw = calloc(n, sizeof *cw);
        if (!cw) return 0;
        for (size_t i = 0; i < n; i++) {
            struct json_object *e = json_object_array_get_idx(w->words, i), *v;
            cw[i].w = json_object_object_get_ex(e, "w", &v) ? json_object_get_string(v) : NULL;
            cw[i].start_ms =
                json_object_object_get_ex(e, "start_ms", &v) ? json_object_get_int64(v) : 0;
            cw[i].end_ms =
                json_object_object_get_ex(e, "end_ms", &v) ? json_object_get_int64(v) : 0;
        }
    } else if (w->text && *w->text) {
        /* split the text in place: w->text is ours */
        size_t cap = 0;
        for (char *p = w->text; *p; p++)
            if (*p == ' ' || *p == '\n' || *p == '\t') cap++;
        cw = calloc(cap + 1, sizeof *cw);
        if (!cw) return 0;
        char *save = NULL;
        for (char *t = strtok_r(w->text, " \n\t\r", &save); t && n <= cap;
             t = strtok_r(NULL, " \n\t\r", &save))
            cw[n++].w = t;
    }
    *out = cw;
    return n;
}

static void run_document(struct work *w)
{
    struct chunker_word *cw = NULL;
    /* the text is handed whole; words give the sections their times */
    size_t len = w->text ? strlen(w->text) : 0;
    char *text = w->text ? strdup(w->text) : strdup("");
    size_t n = w->words ? transcript_words(w, &cw) : 0;
    struct prov_doc_word *dw = n ? calloc(n, sizeof *dw) : NULL;
    for (size_t i = 0; dw && i < n; i++) {
        dw[i].w = cw[i].w;
        dw[i].start_ms = cw[i].start_ms;
        dw[i].end_ms = cw[i].end_ms;
    }
    struct json_object *payload = json_tokener_parse(w->job->payload), *m;
    const char *model = payload && json_object_object_get_ex(payload, "model", &m) && m
                            ? json_object_get_string(m)
                            : NULL;
    struct prov_doc_in in = {.recording_id = w->job->recording_id,
                             .title = w->title,
                             .transcript = text,
                             .len = len,
                             .words = dw,
                             .nwords = dw ? n : 0,
                             .model = model};
    if (text) w->call = prov.writer->start(&in, documented, w);
    json_object_put(payload);
    free(dw);
    free(cw);
    free(text);
    if (!w->call) work_fail(w, "cannot start the document writer", -1, 0);
}

/* ---- embedding ------------------------------------------------------------------- */

static void write_chunks(struct work *w, struct db_tx *tx)
{
    const char *p[1] = {w->job->recording_id};
    db_tx_query(tx, &q_chunks_del, 1, p, NULL, NULL);
    struct json_object *o = w->result, *chunks, *vec, *model;
    json_object_object_get_ex(o, "chunks", &chunks);
    if (json_object_array_length(chunks) == 0) return;
    json_object_object_get_ex(o, "vectors", &vec);
    json_object_object_get_ex(o, "model", &model);
    char dim[16];
    snprintf(dim, sizeof dim, "%d", cfg.embed_dim);
    const char *q[6] = {w->job->recording_id,
                        w->job->org_id,
                        dim,
                        json_object_get_string(model),
                        json_object_get_string(vec),
                        json_object_to_json_string_ext(chunks, JSON_C_TO_STRING_PLAIN)};
    db_tx_query(tx, &q_chunks_ins, 6, q, NULL, NULL);
}

static void embedded(void *arg, const struct prov_status *st, const float *vectors, size_t n,
                     const char *model)
{
    struct work *w = arg;
    w->call = NULL;
    if (st->outcome != PROV_OK) {
        fail_status(w, st);
        return;
    }
    struct json_object *chunks;
    json_object_object_get_ex(w->result, "chunks", &chunks);
    if (n != json_object_array_length(chunks)) {
        struct prov_status bad = {PROV_RETRY, "the embedder returned a wrong number of vectors",
                                  -1};
        fail_status(w, &bad);
        return;
    }
    /* bytea in hex: "\x" then two digits a byte, float32 little-endian */
    size_t bytes = n * (size_t)cfg.embed_dim * sizeof(float);
    char *hex = malloc(2 * bytes + 3);
    if (!hex) {
        work_fail(w, "out of memory", -1, 0);
        return;
    }
    hex[0] = '\\';
    hex[1] = 'x';
    util_hex((const unsigned char *)vectors, bytes, hex + 2);
    hex[2 + 2 * bytes] = '\0';
    json_object_object_add(w->result, "vectors",
                           json_object_new_string_len(hex, (int)(2 + 2 * bytes)));
    json_object_object_add(w->result, "model", json_object_new_string(model ? model : "unknown"));
    free(hex);
    commit_result(w, write_chunks);
}

static void run_embedding(struct work *w)
{
    struct chunker_word *cw = NULL;
    size_t nw = transcript_words(w, &cw);
    struct chunker_chunk *ch = NULL;
    size_t nch = 0;
    if (chunker_split(cw, nw, &ch, &nch) != 0) {
        free(cw);
        work_fail(w, "out of memory", -1, 0);
        return;
    }
    struct json_object *chunks = json_object_new_array();
    const char **texts = calloc(nch ? nch : 1, sizeof *texts);
    for (size_t i = 0; i < nch; i++) {
        struct json_object *c = json_object_new_object();
        json_object_object_add(c, "idx", json_object_new_int(ch[i].idx));
        json_object_object_add(c, "text", json_object_new_string_len(ch[i].text, (int)ch[i].len));
        json_object_object_add(c, "start_ms", json_object_new_int64(ch[i].start_ms));
        json_object_object_add(c, "end_ms", json_object_new_int64(ch[i].end_ms));
        json_object_array_add(chunks, c);
        if (texts) texts[i] = ch[i].text;
    }
    w->result = json_object_new_object();
    json_object_object_add(w->result, "chunks", chunks);
    if (nch == 0) {
        /* no speech: no chunks (an earlier run's are removed) */
        json_object_object_add(w->result, "model", json_object_new_string(prov.embedder->name));
        free(texts);
        chunker_free(ch, nch);
        free(cw);
        commit_result(w, write_chunks);
        return;
    }
    if (texts) w->call = prov.embedder->start(texts, nch, embedded, w);
    free(texts);
    chunker_free(ch, nch);
    free(cw);
    if (!w->call) work_fail(w, "cannot start the embedder", -1, 0);
}

/* ---- publication ----------------------------------------------------------------- */

static void write_publication(struct work *w, struct db_tx *tx)
{
    if (w->thumb_key) {
        const char *p[3] = {w->job->recording_id, w->job->org_id, w->thumb_key};
        db_tx_query(tx, &q_thumbnail, 3, p, NULL, NULL);
    }
    if (w->auto_publish) {
        unsigned char raw[18];
        char share[32];
        util_random(raw, sizeof raw);
        util_b64url_encode(raw, sizeof raw, share);
        const char *p[3] = {w->job->recording_id, w->job->org_id, share};
        db_tx_query(tx, &q_autopublish, 3, p, NULL, NULL);
    }
}

/* $1 media, $2 thumbnail file, $3 position in seconds, $4 its directory.
 * Written beside and renamed in place when it is not empty. */
#define THUMB_SCRIPT                                                                               \
    "mkdir -p \"$4\" && ffmpeg -nostdin -hide_banner -v error -y -ss \"$3\" -i \"$1\""             \
    " -frames:v 1 -vf \"scale=min(640\\,iw):-2\" -q:v 4 \"$2.tmp.jpg\""                            \
    " && test -s \"$2.tmp.jpg\" && exec mv -f \"$2.tmp.jpg\" \"$2\""

static void thumbnailed(void *arg, const struct proc_result *res)
{
    struct work *w = arg;
    w->proc = NULL;
    if (res->error || !res->exited || res->status != 0) {
        /* audio only, or no frame at that time: no thumbnail */
        log_stage(LOG_INFO, w, "no thumbnail", res->error ? res->error : res->err);
        free(w->thumb_key);
        w->thumb_key = NULL;
    }
    commit_result(w, write_publication);
}

static void run_publication(struct work *w)
{
    char src[4096], dst[4096], key[256], pos[32];
    snprintf(key, sizeof key, "org-%s/thumbnails/%s.jpg", w->job->org_id, w->job->recording_id);
    if (!w->key || !storage_local_path(w->key, src, sizeof src) ||
        !storage_local_path(key, dst, sizeof dst)) {
        commit_result(w, write_publication);
        return;
    }
    if (w->ctype && strncmp(w->ctype, "audio/", 6) == 0) {
        /* no picture to take a frame of */
        commit_result(w, write_publication);
        return;
    }
    /* SPEC 8: a frame at 10 s, or the middle of a shorter recording */
    int64_t at = w->duration_ms >= 20000 ? 10000 : w->duration_ms > 0 ? w->duration_ms / 2 : 0;
    snprintf(pos, sizeof pos, "%.3f", (double)at / 1000.0);
    w->thumb_key = strdup(key);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", dst);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    const char *argv[] = {"bash", "-c", THUMB_SCRIPT, "reeld-thumb", src, dst, pos, dir, NULL};
    struct proc_opts o = {.argv = argv, .timeout_ms = 60000};
    w->proc = proc_start(app.base, &o, thumbnailed, w);
    if (!w->proc) commit_result(w, write_publication);
}

/* ---- the queue's hooks ------------------------------------------------------------ */

/* Fills w from its q_begin row and runs its stage. */
static void work_begin(struct work *w, const struct db_res *res, int row)
{
    if (!db_bool(res, row, B_PRESENT)) {
        /* deleted meanwhile: nothing left to do */
        log_stage(LOG_INFO, w, "recording gone; job dropped", NULL);
        jobq_done(w->job);
        work_free(w);
        return;
    }
    const char *s;
    w->key = (s = db_str(res, row, B_KEY)) ? strdup(s) : NULL;
    w->ctype = (s = db_str(res, row, B_CTYPE)) ? strdup(s) : NULL;
    w->title = (s = db_str(res, row, B_TITLE)) ? strdup(s) : NULL;
    w->duration_ms = db_isnull(res, row, B_DURATION) ? -1 : db_int(res, row, B_DURATION);
    w->auto_publish = db_bool(res, row, B_AUTOPUB);
    w->text = (s = db_str(res, row, B_TEXT)) ? strdup(s) : NULL;
    if ((s = db_str(res, row, B_WORDS))) w->words = json_tokener_parse(s);
    if (w->words && !json_object_is_type(w->words, json_type_array)) {
        json_object_put(w->words);
        w->words = NULL;
    }
    int needs_transcript =
        strcmp(w->def->stage, "document") == 0 || strcmp(w->def->stage, "embedding") == 0;
    if (needs_transcript && !db_bool(res, row, B_HAS_T)) {
        work_fail(w, "no transcript", -1, 1);
        return;
    }
    log_stage(LOG_INFO, w, "stage started", NULL);
    w->def->run(w);
}

static void begun(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct batch *b = arg;
    (void)sqlstate;
    int nrows = err ? 0 : db_nrows(res);
    for (int i = 0; i < b->n; i++) {
        struct work *w = b->w[i];
        if (!w) continue; /* cancelled meanwhile */
        batch_leave(w);
        if (err) {
            work_fail(w, err, -1, 0);
            continue;
        }
        int row = -1;
        for (int r = 0; r < nrows && row < 0; r++)
            if (db_int(res, r, B_ID) == w->job->id) row = r;
        if (row < 0) {
            /* no longer this worker's: its completion writes nothing */
            log_stage(LOG_INFO, w, "job no longer held at its start; dropped", NULL);
            jobq_done(w->job);
            work_free(w);
            continue;
        }
        work_begin(w, res, row);
    }
    free(b);
}

/* Sends the waiting starts of one stage, BATCH_MAX a statement. */
static void flush_starts(struct wlist *l, const struct stage_def *d)
{
    while (l->n > 0) {
        struct batch *b = batch_take(l, BATCH_MAX);
        if (!b) return;
        struct evbuffer *ids = evbuffer_new();
        if (ids) {
            evbuffer_add(ids, "{", 1);
            for (int i = 0; i < b->n; i++)
                evbuffer_add_printf(ids, "%s%lld", i ? "," : "", b->w[i]->job->id);
            evbuffer_add(ids, "}", 2);
        }
        const char *p[4] = {ids ? (const char *)evbuffer_pullup(ids, -1) : NULL,
                            jobq_worker_id(queue), d->running, d->stage};
        struct db_req *r = ids ? db_query(app.db, &q_begin, 4, p, begun, b) : NULL;
        if (ids) evbuffer_free(ids);
        if (!r) begun(b, NULL, "database unavailable", "");
    }
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    for (int i = 0; i < NSTAGES; i++)
        flush_starts(&starting[i], &stages[i]);
    flush_results();
}

static void job_run(void *arg, struct jobq_job *job)
{
    const struct stage_def *d = arg;
    struct work *w = calloc(1, sizeof *w);
    if (!w) {
        jobq_fail(job, "out of memory", -1, 0);
        return;
    }
    w->job = job;
    job->data = w;
    w->def = d;
    w->t0 = util_mono_ms();
    /* the other jobs of the claim join it: one q_begin for them all */
    wl_add(&starting[d - stages], w);
    flush_soon();
}

static void job_cancel(void *arg, struct jobq_job *job)
{
    (void)arg;
    struct work *w = job->data;
    if (!w) return;
    log_stage(LOG_INFO, w, "stage cancelled", NULL);
    prov_cancel(w->call);
    if (w->proc) proc_cancel(w->proc);
    work_free(w);
}

static void job_failed(void *arg, struct db_tx *tx, const struct jobq_job *job, const char *error)
{
    const struct stage_def *d = arg;
    char msg[1001];
    snprintf(msg, sizeof msg, "%s", error ? error : "failed");
    struct log_line *l = log_begin(LOG_WARN, "stage failed for good");
    log_str(l, "stage", d->stage);
    log_str(l, "recording_id", job->recording_id);
    log_str(l, "error", msg);
    log_end(l);
    const char *p[4] = {job->recording_id, job->org_id, d->stage, msg};
    if (d->next_on_failure && !(strcmp(d->stage, "document") == 0 && is_regenerate(job))) {
        db_tx_query(tx, &q_soft_error, 4, p, NULL, NULL);
        struct jobq_new_job nj = {.org_id = job->org_id,
                                  .recording_id = job->recording_id,
                                  .stage = d->next_on_failure,
                                  .max_attempts = cfg.job_max_attempts};
        jobq_enqueue_tx(queue, tx, &nj, NULL, NULL);
    } else {
        db_tx_query(tx, &q_error, 4, p, NULL, NULL);
    }
}

/* ---- start and stop ------------------------------------------------------------ */

int pipeline_start(char *err, size_t errlen)
{
    if (strcmp(cfg.workers, "off") == 0) {
        log_msg(LOG_INFO, "pipeline workers off in this process", NULL, NULL);
        return 0;
    }
    struct jobq_stage js[NSTAGES];
    for (int i = 0; i < NSTAGES; i++) {
        js[i] =
            (struct jobq_stage){.stage = stages[i].stage,
                                .concurrency = cfg.stage_concurrency > 0 ? cfg.stage_concurrency
                                                                         : stages[i].concurrency(),
                                .run = job_run,
                                .cancel = job_cancel,
                                .failed = job_failed,
                                .arg = (void *)&stages[i]};
    }
    struct jobq_opts o = {.stages = js,
                          .nstages = NSTAGES,
                          .lease_ms = cfg.job_lease_s * 1000,
                          .backoff_base_ms = cfg.job_backoff_ms,
                          .backoff_cap_ms = 600000,
                          .max_attempts = cfg.job_max_attempts};
    flush_ev = event_new(app.base, -1, 0, on_flush, NULL);
    queue = flush_ev ? jobq_new(app.base, app.db, &o) : NULL;
    if (!queue) {
        snprintf(err, errlen, "cannot start the job queue");
        return -1;
    }
    struct log_line *l = log_begin(LOG_INFO, "pipeline workers started");
    log_str(l, "worker", jobq_worker_id(queue));
    log_str(l, "transcriber", prov.transcriber->name);
    log_str(l, "writer", prov.writer->name);
    log_str(l, "embedder", prov.embedder->name);
    log_end(l);
    return 0;
}

struct release_cb {
    void (*done)(void *arg);
    void *arg;
};

static void released(void *arg, int n)
{
    struct release_cb *rc = arg;
    if (n >= 0) {
        struct log_line *l = log_begin(LOG_INFO, "running jobs released for other workers");
        log_int(l, "jobs", n);
        log_end(l);
    }
    rc->done(rc->arg);
    free(rc);
}

int pipeline_release(void (*done)(void *arg), void *arg)
{
    struct release_cb *rc = queue ? malloc(sizeof *rc) : NULL;
    if (!rc) return -1;
    rc->done = done;
    rc->arg = arg;
    if (jobq_release(queue, released, rc) != 0) {
        free(rc);
        return -1;
    }
    return 0;
}

void pipeline_free(void)
{
    jobq_free(queue);
    queue = NULL;
    if (flush_ev) event_free(flush_ev);
    flush_ev = NULL;
}

void pipeline_cancel_recording(const char *recording_id)
{
    if (queue) jobq_cancel_recording(queue, recording_id, NULL, NULL);
}

void pipeline_metrics_render(struct evbuffer *out)
{
    if (queue) jobq_metrics_render(queue, out);
    evbuffer_add_printf(out, "# HELP reeld_stage_duration_seconds Time from a stage's start to "
                             "its stored result, in this process.\n"
                             "# TYPE reeld_stage_duration_seconds histogram\n");
    for (int i = 0; i < NSTAGES; i++) {
        for (size_t k = 0; k < NDUR; k++)
            evbuffer_add_printf(
                out, "reeld_stage_duration_seconds_bucket{stage=\"%s\",le=\"%g\"} %llu\n",
                stages[i].stage, dur_buckets_s[k], dur[i].b[k]);
        evbuffer_add_printf(out,
                            "reeld_stage_duration_seconds_bucket{stage=\"%s\",le=\"+Inf\"} %llu\n"
                            "reeld_stage_duration_seconds_sum{stage=\"%s\"} %.3f\n"
                            "reeld_stage_duration_seconds_count{stage=\"%s\"} %llu\n",
                            stages[i].stage, dur[i].n, stages[i].stage, dur[i].sum, stages[i].stage,
                            dur[i].n);
    }
}

/* ---- retry and regenerate ------------------------------------------------------ */

static struct db_stmt q_lock = {
    "pipe_lock", "SELECT r.status, r.error_stage, t.recording_id IS NOT NULL FROM recordings r"
                 " LEFT JOIN transcripts t ON t.recording_id = r.id"
                 " WHERE r.id = $1 AND r.org_id = $2 AND r.deleted_at IS NULL FOR UPDATE OF r"};

/* Back to the status before the stage ($3), error cleared, with the
 * event ($4 the stage). */
static struct db_stmt q_rewind = {
    "pipe_rewind", "WITH u AS (UPDATE recordings SET status = $3, error_stage = NULL,"
                   " error_message = NULL, completed_at = NULL"
                   " WHERE id = $1 AND org_id = $2 RETURNING id, org_id, status, error_stage,"
                   " error_message)" EVENT_FROM_U("$4::text")};

struct again {
    char org[37], rec[37];
    char stage[32];
    char *model; /* regenerate */
    int regenerate;
    pipeline_done_cb done;
    void *arg;
};

static void again_end(struct again *a, int status, const char *msg)
{
    a->done(a->arg, status, msg);
    free(a->model);
    free(a);
}

static void again_committed(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    (void)res;
    (void)sqlstate;
    struct again *a = arg;
    if (err) {
        again_end(a, strcmp(err, "database unavailable") == 0 ? 503 : 500, err);
        return;
    }
    struct log_line *l =
        log_begin(LOG_INFO, a->regenerate ? "document regeneration queued" : "stage retry queued");
    log_str(l, "recording_id", a->rec);
    log_str(l, "stage", a->stage);
    log_end(l);
    again_end(a, 202, NULL);
}

static int stage_index(const char *s)
{
    const struct stage_def *d = stage_find(s);
    return d ? (int)(d - stages) : -1;
}

/* Decides under the row lock; returns NULL when it may go on, else why
 * not (409). */
static const char *again_refusal(struct again *a, const char *status, const char *error_stage,
                                 int has_transcript)
{
    if (a->regenerate) {
        if (strcmp(status, "completed") != 0 && strcmp(status, "error") != 0)
            return "the recording is still being processed";
        if (!has_transcript) return "the recording has no transcript";
        return NULL;
    }
    if (strcmp(status, "error") != 0) return "only a recording in error can be retried";
    if (!a->stage[0]) {
        if (!error_stage || !pipeline_is_stage(error_stage))
            return "the upload failed; upload the recording again";
        snprintf(a->stage, sizeof a->stage, "%s", error_stage);
    }
    int want = stage_index(a->stage);
    int failed = error_stage ? stage_index(error_stage) : -1;
    if (failed < 0) return "the upload failed; upload the recording again";
    if (want > failed) return "a stage after the failed one cannot run before it";
    if (want > 0 && !has_transcript) return "the recording has no transcript: retry transcription";
    return NULL;
}

static void again_locked(void *arg, const struct db_res *res, const char *err,
                         const char *sqlstate);

static void again_begun(void *arg, struct db_tx *tx, const char *err)
{
    struct again *a = arg;
    if (!tx) {
        again_end(a, 503, err ? err : "database unavailable");
        return;
    }
    const char *p[2] = {a->rec, a->org};
    struct {
        struct again *a;
        struct db_tx *tx;
    } *ctx = malloc(sizeof *ctx);
    if (!ctx || db_tx_query(tx, &q_lock, 2, p, again_locked, ctx) != 0) {
        free(ctx);
        db_tx_rollback(tx);
        again_end(a, 503, "database unavailable");
        return;
    }
    ctx->a = a;
    ctx->tx = tx;
}

static void again_locked(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct {
        struct again *a;
        struct db_tx *tx;
    } *ctx = arg;
    struct again *a = ctx->a;
    struct db_tx *tx = ctx->tx;
    free(ctx);
    if (err) {
        db_tx_rollback(tx);
        again_end(a, strcmp(err, "database unavailable") == 0 ? 503 : 500, err);
        return;
    }
    if (db_nrows(res) != 1) {
        db_tx_rollback(tx);
        again_end(a, 404, "recording not found");
        return;
    }
    const char *why = again_refusal(a, db_str(res, 0, 0), db_str(res, 0, 1), db_bool(res, 0, 2));
    if (why) {
        db_tx_rollback(tx);
        again_end(a, 409, why);
        return;
    }
    char payload[512] = "{}";
    if (a->regenerate) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "regenerate", json_object_new_boolean(1));
        if (a->model) json_object_object_add(o, "model", json_object_new_string(a->model));
        snprintf(payload, sizeof payload, "%s",
                 json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        const char *p[4] = {a->rec, a->org, stage_find(a->stage)->before, a->stage};
        db_tx_query(tx, &q_rewind, 4, p, NULL, NULL);
    }
    struct jobq_new_job nj = {.org_id = a->org,
                              .recording_id = a->rec,
                              .stage = a->stage,
                              .payload = payload,
                              .max_attempts = cfg.job_max_attempts};
    jobq_enqueue_tx(queue, tx, &nj, NULL, NULL);
    db_tx_commit(tx, again_committed, a);
}

static int again_start(const char *org_id, const char *recording_id, const char *stage,
                       const char *model, int regenerate, pipeline_done_cb done, void *arg)
{
    if (!util_is_uuid(org_id) || !util_is_uuid(recording_id) || !done) return -1;
    if (stage && *stage && !pipeline_is_stage(stage)) return -1;
    struct again *a = calloc(1, sizeof *a);
    if (!a) return -1;
    snprintf(a->org, sizeof a->org, "%s", org_id);
    snprintf(a->rec, sizeof a->rec, "%s", recording_id);
    snprintf(a->stage, sizeof a->stage, "%s", regenerate ? "document" : stage ? stage : "");
    a->model = model ? strdup(model) : NULL;
    a->regenerate = regenerate;
    a->done = done;
    a->arg = arg;
    if (!db_tx_begin(app.db, again_begun, a)) {
        free(a->model);
        free(a);
        return -1;
    }
    return 0;
}

int pipeline_retry(const char *org_id, const char *recording_id, const char *stage,
                   pipeline_done_cb done, void *arg)
{
    return again_start(org_id, recording_id, stage, NULL, 0, done, arg);
}

int pipeline_regenerate(const char *org_id, const char *recording_id, const char *model,
                        pipeline_done_cb done, void *arg)
{
    return again_start(org_id, recording_id, NULL, model, 1, done, arg);
}
