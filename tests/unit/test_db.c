/* The PostgreSQL pool against a real server (REELD_TEST_PGURL): typed
 * results, pipelining, error isolation, prepared statements, transactions,
 * cancel, LISTEN/NOTIFY, lost backends, a restarted cluster, shutdown. */
#include "reeld/db.h"
#include "t.h"
#include "t_loop.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <unistd.h>

static const char *pgurl;
static struct event_base *base;

/* ---- query helpers ---- */

struct call {
    int calls;
    int failed;
    char err[256];
    char sqlstate[8];
    long long v; /* column 0 of row 0 */
    int nrows;
    long long affected;
    int seq; /* order among all calls of a test */
};

static int call_seq;

static void on_call(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct call *c = arg;
    c->calls++;
    c->seq = ++call_seq;
    if (err) {
        c->failed = 1;
        snprintf(c->err, sizeof c->err, "%s", err);
        snprintf(c->sqlstate, sizeof c->sqlstate, "%s", sqlstate ? sqlstate : "(null)");
        return;
    }
    c->nrows = db_nrows(res);
    c->v = db_int(res, 0, 0);
    c->affected = db_affected(res);
}

static int call_done(void *arg)
{
    return ((struct call *)arg)->calls > 0;
}

/* Queues st and runs the loop until its callback ran. */
static int query_wait(struct db_pool *p, const struct db_stmt *st, int n, const char *const *params,
                      struct call *out)
{
    memset(out, 0, sizeof *out);
    if (!db_query(p, st, n, params, on_call, out)) return -1;
    return t_run_cond(base, call_done, out, 30);
}

static struct db_pool *pool_open(const char *conninfo, int size, int queue_timeout_ms)
{
    struct db_pool_opts o = {conninfo, size, 5000, queue_timeout_ms};
    return db_pool_new(base, &o);
}

/* pgurl with an application_name, so a test can find its own backends. */
static void conninfo_app(char *out, size_t n, const char *app)
{
    if (strstr(pgurl, "://"))
        snprintf(out, n, "%s%sapplication_name=%s", pgurl, strchr(pgurl, '?') ? "&" : "?", app);
    else
        snprintf(out, n, "%s application_name=%s", pgurl, app);
}

/* A plain blocking libpq connection (test side only): first value of sql. */
static long long admin_scalar(const char *sql)
{
    long long v = -1;
    PGconn *c = PQconnectdb(pgurl);
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
            v = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    PQfinish(c);
    return v;
}

static struct db_stmt q_int = {"t_int", "SELECT $1::int"};
static struct db_stmt q_sleep = {"t_sleep", "SELECT pg_sleep($1::float8), 1"};
static struct db_stmt q_notify = {"t_notify", "SELECT pg_notify($1, $2)"};

/* ---- typed access ---- */

struct typed {
    int done, in_query;
    int called_inside;
    const char *err;
    int nrows, col_t, col_missing;
    long long i, n_int;
    int b, b_false, n_null, p_null, t_null;
    const char *n_str;
    char t[64];
    double d;
};

static void on_typed(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct typed *t = arg;
    (void)sqlstate;
    t->done = 1;
    t->called_inside = t->in_query;
    t->err = err ? "failed" : NULL;
    if (err) return;
    t->nrows = db_nrows(res);
    t->col_t = db_col(res, "t");
    t->col_missing = db_col(res, "nope");
    t->i = db_int(res, 0, db_col(res, "i"));
    t->b = db_bool(res, 0, db_col(res, "b"));
    t->b_false = db_bool(res, 0, db_col(res, "f"));
    t->n_null = db_isnull(res, 0, db_col(res, "n"));
    t->n_str = db_str(res, 0, db_col(res, "n"));
    t->n_int = db_int(res, 0, db_col(res, "n"));
    t->t_null = db_isnull(res, 0, t->col_t);
    snprintf(t->t, sizeof t->t, "%s", db_str(res, 0, t->col_t) ? db_str(res, 0, t->col_t) : "");
    t->d = db_dbl(res, 0, db_col(res, "d"));
    t->p_null = db_isnull(res, 0, db_col(res, "p"));
}

static void select_with_params_gives_typed_int_bool_null_text_values(void)
{
    static struct db_stmt q = {"t_typed", "SELECT $1::int AS i, $2::bool AS b, false AS f, "
                                          "NULL::text AS n, $3::text AS t, $4::float8 AS d, "
                                          "$5::int AS p"};
    static struct db_stmt q_series = {"t_series", "SELECT generate_series(1, $1::int)"};
    const char *params[] = {"42", "true", "h\xc3\xa9llo 'x' \"y\"", "2.5", NULL};
    struct typed t = {0};
    struct call series;
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 2, 5000);
    CHECK(p != NULL);
    t.in_query = 1;
    CHECK(db_query(p, &q, 5, params, on_typed, &t) != NULL);
    t.in_query = 0;
    CHECK(!t.done); /* never inside db_query */
    CHECK(t_run_cond(base, t_flag_set, &t.done, 30) == 0);
    CHECK(!t.called_inside);
    CHECK(t.err == NULL);
    CHECK(t.nrows == 1);
    CHECK(t.i == 42);
    CHECK(t.b == 1);
    CHECK(t.b_false == 0);
    CHECK(t.n_null == 1);
    CHECK(t.n_str == NULL);
    CHECK(t.n_int == 0);
    CHECK(t.t_null == 0);
    CHECK_STR(t.t, params[2]);
    CHECK(t.d == 2.5);
    CHECK(t.p_null == 1);
    CHECK(t.col_t == 4);
    CHECK(t.col_missing == -1);
    const char *three[] = {"3"};
    CHECK(query_wait(p, &q_series, 1, three, &series) == 0);
    CHECK(series.nrows == 3 && series.affected == 3 && series.v == 1);
    CHECK(db_ready(p));
    db_pool_free(p);
    event_base_free(base);
}

/* ---- pipelining ---- */

#define MANY 1000

struct many {
    struct db_pool *p;
    int answered, wrong, failed, out_of_order, last;
    int seen[MANY];
    long long in_flight_at_first;
};

struct many_arg {
    struct many *m;
    int i;
};

static void on_many(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct many_arg *a = arg;
    struct many *m = a->m;
    (void)sqlstate;
    if (m->answered == 0) {
        struct db_stats st;
        db_stats(m->p, &st);
        m->in_flight_at_first = st.in_flight;
    }
    m->answered++;
    m->seen[a->i]++;
    if (a->i < m->last) m->out_of_order = 1;
    m->last = a->i;
    if (err)
        m->failed++;
    else if (db_int(res, 0, 0) != 2LL * a->i)
        m->wrong++;
}

static int many_done(void *arg)
{
    return ((struct many *)arg)->answered == MANY;
}

static void run_many(int size, struct many *m)
{
    static struct db_stmt q = {"t_double", "SELECT $1::int * 2"};
    static struct many_arg args[MANY];
    char num[16];
    memset(m, 0, sizeof *m);
    m->last = -1;
    m->p = pool_open(pgurl, size, 10000);
    CHECK(m->p != NULL);
    for (int i = 0; i < MANY; i++) {
        const char *params[] = {num};
        snprintf(num, sizeof num, "%d", i);
        args[i] = (struct many_arg){m, i};
        CHECK(db_query(m->p, &q, 1, params, on_many, &args[i]) != NULL);
    }
    CHECK(t_run_cond(base, many_done, m, 30) == 0);
    for (int i = 0; i < MANY; i++)
        CHECK(m->seen[i] == 1);
    CHECK(m->failed == 0);
    CHECK(m->wrong == 0);
    db_pool_free(m->p);
}

static void thousand_queries_queued_in_one_turn_are_pipelined_and_each_answered_once(void)
{
    static struct many m;
    base = event_base_new();
    run_many(2, &m);
    /* far more queries were on the wire at once than there are connections */
    CHECK(m.in_flight_at_first > 2);
    event_base_free(base);
}

static void pipelined_queries_on_one_connection_answer_in_submission_order(void)
{
    static struct many m;
    base = event_base_new();
    run_many(1, &m);
    CHECK(m.in_flight_at_first > 1);
    CHECK(!m.out_of_order);
    event_base_free(base);
}

/* ---- output larger than the socket buffer ---- */

struct big {
    int answered, wrong;
};

static void on_big(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct big *b = arg;
    (void)sqlstate;
    b->answered++;
    if (err || db_int(res, 0, 0) != 256 * 1024) b->wrong++;
}

static int big_done(void *arg)
{
    return ((struct big *)arg)->answered == 64;
}

static void large_parameters_are_flushed_on_write_readiness_and_answered(void)
{
    static struct db_stmt q = {"t_len", "SELECT length($1)"};
    struct big b = {0};
    char *payload = malloc(256 * 1024 + 1);
    memset(payload, 'x', 256 * 1024);
    payload[256 * 1024] = 0;
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 2, 10000);
    const char *params[] = {payload};
    for (int i = 0; i < 64; i++) /* 16 MB: far beyond what one write takes */
        CHECK(db_query(p, &q, 1, params, on_big, &b) != NULL);
    free(payload); /* parameters were copied */
    CHECK(t_run_cond(base, big_done, &b, 30) == 0);
    CHECK(b.answered == 64 && b.wrong == 0);
    db_pool_free(p);
    event_base_free(base);
}

/* ---- error isolation ---- */

static void failing_query_does_not_abort_its_neighbours_in_the_pipeline(void)
{
    static struct db_stmt q = {"t_div", "SELECT 10 / $1::int"};
    const char *div[] = {"1", "0", "2", "0", "5"};
    struct call c[5] = {0};
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 1, 5000);
    for (int i = 0; i < 5; i++)
        CHECK(db_query(p, &q, 1, &div[i], on_call, &c[i]) != NULL);
    CHECK(t_run_cond(base, call_done, &c[4], 30) == 0);
    for (int i = 0; i < 5; i++)
        CHECK(c[i].calls == 1);
    CHECK(!c[0].failed && c[0].v == 10);
    CHECK(c[1].failed);
    CHECK_STR(c[1].sqlstate, "22012");
    CHECK(strstr(c[1].err, "division by zero") != NULL);
    CHECK(!c[2].failed && c[2].v == 5);
    CHECK(c[3].failed);
    CHECK_STR(c[3].sqlstate, "22012");
    CHECK(!c[4].failed && c[4].v == 2);
    struct db_stats st;
    db_stats(p, &st);
    CHECK(st.failed_total == 2);
    db_pool_free(p);
    event_base_free(base);
}

/* ---- prepared statements ---- */

static void prepared_statement_is_prepared_once_per_connection_and_reused(void)
{
    static struct db_stmt q = {"t_reuse", "SELECT $1::int + 1"};
    static struct db_stmt q_prepared = {"t_prepared_count",
                                        "SELECT count(*) FROM pg_prepared_statements "
                                        "WHERE name = $1"};
    static struct db_stmt q_bad = {"t_bad", "SELEC 1"};
    static struct call c[300];
    struct call cnt, bad1, bad2, after;
    char num[300][12];
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 1, 5000);
    for (int i = 0; i < 300; i++) {
        const char *params[] = {num[i]};
        snprintf(num[i], sizeof num[i], "%d", i);
        memset(&c[i], 0, sizeof c[i]);
        CHECK(db_query(p, &q, 1, params, on_call, &c[i]) != NULL);
    }
    CHECK(t_run_cond(base, call_done, &c[299], 30) == 0);
    for (int i = 0; i < 300; i++)
        CHECK(c[i].calls == 1 && !c[i].failed && c[i].v == i + 1);
    /* a second round on the same connection reuses the statement */
    const char *one[] = {"41"};
    CHECK(query_wait(p, &q, 1, one, &cnt) == 0 && cnt.v == 42);
    const char *name[] = {"t_reuse"};
    CHECK(query_wait(p, &q_prepared, 1, name, &cnt) == 0);
    CHECK(!cnt.failed && cnt.v == 1);
    /* a statement that fails to prepare reports the error each time */
    CHECK(query_wait(p, &q_bad, 0, NULL, &bad1) == 0);
    CHECK(bad1.failed);
    CHECK_STR(bad1.sqlstate, "42601");
    CHECK(query_wait(p, &q_bad, 0, NULL, &bad2) == 0);
    CHECK(bad2.failed);
    CHECK_STR(bad2.sqlstate, "42601");
    CHECK(query_wait(p, &q, 1, one, &after) == 0 && !after.failed && after.v == 42);
    db_pool_free(p);
    event_base_free(base);
}

/* ---- transactions ---- */

static struct db_stmt q_tx_ins = {"t_tx_ins", "INSERT INTO db_test_tx (k) VALUES ($1)"};
static struct db_stmt q_tx_count = {"t_tx_count", "SELECT count(*) FROM db_test_tx WHERE k = $1"};

struct txw {
    int calls;
    struct db_tx *tx;
    char err[128];
};

static void on_tx(void *arg, struct db_tx *tx, const char *err)
{
    struct txw *w = arg;
    w->calls++;
    w->tx = tx;
    snprintf(w->err, sizeof w->err, "%s", err ? err : "");
}

static int tx_done(void *arg)
{
    return ((struct txw *)arg)->calls > 0;
}

static struct db_tx *tx_open(struct db_pool *p, struct txw *w)
{
    memset(w, 0, sizeof *w);
    if (!db_tx_begin(p, on_tx, w) || t_run_cond(base, tx_done, w, 30) < 0) return NULL;
    return w->tx;
}

static int tx_query_wait(struct db_tx *tx, const struct db_stmt *st, int n,
                         const char *const *params, struct call *out)
{
    memset(out, 0, sizeof *out);
    if (db_tx_query(tx, st, n, params, on_call, out) < 0) return -1;
    return t_run_cond(base, call_done, out, 30);
}

static void transaction_commit_is_visible_rollback_is_not_and_pins_its_connection(void)
{
    static struct db_stmt q_create = {"t_tx_create",
                                      "CREATE TABLE IF NOT EXISTS db_test_tx (k text PRIMARY KEY)"};
    static struct db_stmt q_clear = {"t_tx_clear", "DELETE FROM db_test_tx"};
    static struct db_stmt q_div = {"t_tx_div", "SELECT 1 / $1::int"};
    struct call c, outside, inside, cm, div0, next, cnt;
    struct txw w;
    struct db_stats st;
    base = event_base_new();
    /* one connection: while the tx holds it, other queries must wait */
    struct db_pool *p = pool_open(pgurl, 1, 10000);
    CHECK(query_wait(p, &q_create, 0, NULL, &c) == 0 && !c.failed);
    CHECK(query_wait(p, &q_clear, 0, NULL, &c) == 0 && !c.failed);

    struct db_tx *tx = tx_open(p, &w);
    CHECK(tx != NULL);
    const char *committed[] = {"committed"};
    CHECK(tx_query_wait(tx, &q_tx_ins, 1, committed, &c) == 0);
    CHECK(!c.failed && c.affected == 1);
    memset(&outside, 0, sizeof outside);
    CHECK(db_query(p, &q_tx_count, 1, committed, on_call, &outside) != NULL);
    const char *seven[] = {"7"};
    CHECK(tx_query_wait(tx, &q_int, 1, seven, &inside) == 0 && inside.v == 7);
    CHECK(outside.calls == 0); /* queued behind the pinned connection */
    db_stats(p, &st);
    CHECK(st.queued == 1);
    memset(&cm, 0, sizeof cm);
    db_tx_commit(tx, on_call, &cm);
    CHECK(t_run_cond(base, call_done, &outside, 30) == 0);
    CHECK(cm.calls == 1 && !cm.failed);
    CHECK(cm.seq < outside.seq);
    CHECK(!outside.failed && outside.v == 1);

    const char *rolled[] = {"rolled"};
    tx = tx_open(p, &w);
    CHECK(tx != NULL);
    CHECK(tx_query_wait(tx, &q_tx_ins, 1, rolled, &c) == 0 && !c.failed);
    db_tx_rollback(tx);
    CHECK(query_wait(p, &q_tx_count, 1, rolled, &cnt) == 0);
    CHECK(!cnt.failed && cnt.v == 0);

    /* an error inside aborts the tx: later statements and COMMIT fail */
    const char *aborted[] = {"aborted"}, *zero[] = {"0"};
    tx = tx_open(p, &w);
    CHECK(tx != NULL);
    CHECK(tx_query_wait(tx, &q_tx_ins, 1, aborted, &c) == 0 && !c.failed);
    CHECK(tx_query_wait(tx, &q_div, 1, zero, &div0) == 0 && div0.failed);
    CHECK(tx_query_wait(tx, &q_int, 1, seven, &next) == 0 && next.failed);
    CHECK_STR(next.sqlstate, "25P02");
    memset(&cm, 0, sizeof cm);
    db_tx_commit(tx, on_call, &cm);
    CHECK(t_run_cond(base, call_done, &cm, 30) == 0);
    CHECK(cm.failed);
    CHECK_STR(cm.sqlstate, "25P02");
    CHECK(query_wait(p, &q_tx_count, 1, aborted, &cnt) == 0 && cnt.v == 0);
    db_pool_free(p);
    event_base_free(base);
}

/* ---- cancel ---- */

struct canceller {
    struct db_req *victim;
    struct call call;
};

static void on_cancel_victim(void *arg, const struct db_res *res, const char *err,
                             const char *sqlstate)
{
    struct canceller *k = arg;
    on_call(&k->call, res, err, sqlstate);
    db_cancel(k->victim);
}

static void cancelled_query_or_begin_never_calls_back(void)
{
    struct call queued = {0}, sent = {0}, last = {0}, after;
    struct canceller k1 = {0}, k2 = {0};
    struct txw tq = {0}, ts = {0};
    const char *one[] = {"1"}, *two[] = {"2"}, *four[] = {"4"}, *short_sleep[] = {"0.05"};
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 1, 5000);

    /* cancelled while queued */
    struct db_req *r = db_query(p, &q_int, 1, one, on_call, &queued);
    CHECK(r != NULL);
    db_cancel(r);
    struct db_req *b = db_tx_begin(p, on_tx, &tq);
    CHECK(b != NULL);
    db_cancel(b);

    /* cancelled while on the wire: the first answer cancels the second */
    CHECK(db_query(p, &q_int, 1, two, on_cancel_victim, &k1) != NULL);
    k1.victim = db_query(p, &q_sleep, 1, short_sleep, on_call, &sent);
    CHECK(k1.victim != NULL);
    CHECK(db_query(p, &q_int, 1, four, on_call, &last) != NULL);
    CHECK(t_run_cond(base, call_done, &last, 30) == 0);
    CHECK(k1.call.calls == 1 && last.v == 4);

    /* a BEGIN cancelled on the wire is rolled back and its connection freed */
    CHECK(db_query(p, &q_int, 1, two, on_cancel_victim, &k2) != NULL);
    k2.victim = db_tx_begin(p, on_tx, &ts);
    CHECK(k2.victim != NULL);
    CHECK(query_wait(p, &q_int, 1, four, &after) == 0);
    CHECK(!after.failed && after.v == 4);
    CHECK(query_wait(p, &q_int, 1, one, &after) == 0 && after.v == 1);

    CHECK(queued.calls == 0);
    CHECK(sent.calls == 0);
    CHECK(tq.calls == 0);
    CHECK(ts.calls == 0);
    db_pool_free(p);
    CHECK(queued.calls == 0 && sent.calls == 0 && tq.calls == 0 && ts.calls == 0);
    event_base_free(base);
}

/* ---- LISTEN / NOTIFY ---- */

struct lis {
    struct db_pool *p;
    const char *channel;
    const char *want;
    int got, reconnects, others;
    char got_channel[128];
};

static void on_notify(void *arg, const char *channel, const char *payload)
{
    struct lis *l = arg;
    if (l->want && strcmp(payload, l->want) == 0) {
        l->got = 1;
        snprintf(l->got_channel, sizeof l->got_channel, "%s", channel);
    } else {
        l->others++;
    }
}

static void on_reconnect(void *arg)
{
    ((struct lis *)arg)->reconnects++;
}

static void on_notify_retry(evutil_socket_t fd, short what, void *arg)
{
    struct lis *l = arg;
    const char *params[] = {l->channel, l->want};
    (void)fd;
    (void)what;
    db_query(l->p, &q_notify, 2, params, NULL, NULL);
}

static int lis_got(void *arg)
{
    return ((struct lis *)arg)->got;
}

/* Sends NOTIFY payload through the pool until it comes back: LISTEN
 * becomes active at a moment the test cannot see. */
static int await_notify(struct lis *l, const char *payload)
{
    struct event *ev = event_new(base, -1, EV_PERSIST, on_notify_retry, l);
    struct timeval tv = {0, 50000};
    l->want = payload;
    l->got = 0;
    event_add(ev, &tv);
    on_notify_retry(-1, 0, l);
    int rc = t_run_cond(base, lis_got, l, 30);
    event_free(ev);
    return rc;
}

static void listen_receives_notify_sent_through_the_pool_on_a_quoted_channel(void)
{
    struct lis l = {0};
    base = event_base_new();
    l.p = pool_open(pgurl, 2, 5000);
    l.channel = "reeld Test \"chan\"";
    CHECK(db_listen(l.p, l.channel, on_notify, on_reconnect, &l) == 0);
    CHECK(await_notify(&l, "hello") == 0);
    CHECK_STR(l.got_channel, l.channel);
    CHECK(await_notify(&l, "again") == 0);
    CHECK(l.reconnects == 0);
    db_pool_free(l.p);
    event_base_free(base);
}

/* ---- lost backends ---- */

struct sleeps {
    const char *app;
};

static int sleeps_running(void *arg)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND state = 'active' AND query LIKE '%%pg_sleep%%'",
             ((struct sleeps *)arg)->app);
    return admin_scalar(sql) >= 1;
}

static int both_done(void *arg)
{
    struct call *c = arg;
    return c[0].calls && c[1].calls;
}

static int lis_reconnected(void *arg)
{
    return ((struct lis *)arg)->reconnects > 0;
}

static void killed_backends_fail_in_flight_queries_then_pool_and_listen_recover(void)
{
    static const char app[] = "reeld_db_test_kill";
    char conninfo[1024], sql[256];
    struct call sl[2] = {{0}}, after, in_dead_tx, cm;
    struct lis l = {0};
    struct sleeps s = {app};
    struct db_stats st;
    struct txw w;
    const char *long_sleep[] = {"30"}, *seven[] = {"7"};
    base = event_base_new();
    conninfo_app(conninfo, sizeof conninfo, app);
    l.p = pool_open(conninfo, 2, 30000);
    l.channel = "reeld_kill_chan";
    CHECK(db_listen(l.p, l.channel, on_notify, on_reconnect, &l) == 0);
    CHECK(await_notify(&l, "before") == 0);
    struct db_tx *tx = tx_open(l.p, &w); /* pins one of the two connections */
    CHECK(tx != NULL);

    CHECK(db_query(l.p, &q_sleep, 1, long_sleep, on_call, &sl[0]) != NULL);
    CHECK(db_query(l.p, &q_sleep, 1, long_sleep, on_call, &sl[1]) != NULL);
    CHECK(t_run_cond(base, sleeps_running, &s, 30) == 0);
    db_stats(l.p, &st);
    CHECK(st.in_flight == 2);
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = '%s'",
             app);
    CHECK(admin_scalar(sql) >= 2); /* a query connection and the LISTEN one */

    CHECK(t_run_cond(base, both_done, sl, 30) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(sl[i].calls == 1 && sl[i].failed);
        CHECK_STR(sl[i].err, "database unavailable");
        CHECK_STR(sl[i].sqlstate, "08006");
    }
    /* the transaction died with its connection */
    if (tx) {
        CHECK(tx_query_wait(tx, &q_int, 1, seven, &in_dead_tx) == 0);
        CHECK(in_dead_tx.failed);
        CHECK_STR(in_dead_tx.sqlstate, "08006");
        memset(&cm, 0, sizeof cm);
        db_tx_commit(tx, on_call, &cm);
        CHECK(t_run_cond(base, call_done, &cm, 30) == 0);
        CHECK(cm.failed);
        CHECK_STR(cm.err, "database unavailable");
    }
    /* the same pool serves again once it has reconnected */
    CHECK(query_wait(l.p, &q_int, 1, seven, &after) == 0);
    CHECK(!after.failed && after.v == 7);
    CHECK(t_run_cond(base, lis_reconnected, &l, 30) == 0);
    CHECK(await_notify(&l, "after kill") == 0);
    db_stats(l.p, &st);
    CHECK(st.conns_total == 2 && st.failed_total >= 2);
    db_pool_free(l.p);
    event_base_free(base);
}

/* ---- a restarted cluster ---- */

static void stopped_and_restarted_cluster_fails_in_flight_holds_queued_and_recovers(void)
{
    static const char app[] = "reeld_db_test_restart";
    const char *dir = getenv("REELD_TEST_PGDIR"), *port = getenv("REELD_TEST_PGPORT");
    char conninfo[1024], cmd[1024];
    struct call sl = {0}, queued = {0};
    struct lis l = {0};
    struct sleeps s = {app};
    const char *long_sleep[] = {"30"}, *eight[] = {"8"};
    if (!dir || !port) {
        CHECK(!"REELD_TEST_PGDIR and REELD_TEST_PGPORT are set");
        return;
    }
    if (access("scripts/pg.sh", X_OK) != 0) {
        CHECK(!"scripts/pg.sh is reachable (run from the repository root)");
        return;
    }
    base = event_base_new();
    conninfo_app(conninfo, sizeof conninfo, app);
    l.p = pool_open(conninfo, 2, 60000);
    l.channel = "reeld_restart_chan";
    CHECK(db_listen(l.p, l.channel, on_notify, on_reconnect, &l) == 0);
    CHECK(await_notify(&l, "before") == 0);
    CHECK(db_query(l.p, &q_sleep, 1, long_sleep, on_call, &sl) != NULL);
    CHECK(t_run_cond(base, sleeps_running, &s, 30) == 0);

    snprintf(cmd, sizeof cmd, "scripts/pg.sh stop '%s' >/dev/null 2>&1", dir);
    CHECK(system(cmd) == 0);
    CHECK(t_run_cond(base, call_done, &sl, 30) == 0);
    CHECK(sl.failed);
    CHECK_STR(sl.err, "database unavailable");
    CHECK_STR(sl.sqlstate, "08006");

    /* while the server is down, a new query waits instead of failing */
    CHECK(db_query(l.p, &q_int, 1, eight, on_call, &queued) != NULL);
    t_run_for(base, 400);
    CHECK(queued.calls == 0);
    CHECK(!db_ready(l.p));

    snprintf(cmd, sizeof cmd, "PG_FSYNC=off scripts/pg.sh start '%s' '%s' >/dev/null 2>&1", dir,
             port);
    CHECK(system(cmd) == 0);
    CHECK(t_run_cond(base, call_done, &queued, 30) == 0);
    CHECK(!queued.failed && queued.v == 8);
    CHECK(t_run_cond(base, lis_reconnected, &l, 30) == 0);
    CHECK(await_notify(&l, "after restart") == 0);
    CHECK(db_ready(l.p));
    db_pool_free(l.p);
    event_base_free(base);
}

/* ---- unreachable server, bad input ---- */

static void unreachable_database_fails_queued_queries_after_queue_timeout(void)
{
    struct call c = {0};
    struct txw w = {0};
    struct db_stats st;
    struct db_pool_opts bad = {"host=127.0.0.1 port=1 dbname=x user=x", 1, 1000, 200};
    struct db_pool_opts garbage = {"nonsense_key=1", 1, 1000, 200};
    base = event_base_new();
    struct db_pool *p = db_pool_new(base, &bad);
    CHECK(p != NULL);
    CHECK(db_pool_new(base, &garbage) == NULL);
    CHECK(db_query(p, &q_int, 1, NULL, on_call, &c) == NULL); /* params missing */
    CHECK(db_query(NULL, &q_int, 0, NULL, on_call, &c) == NULL);
    CHECK(db_listen(p, "", on_notify, NULL, NULL) == -1);
    CHECK(db_listen(p, "a_channel_name_that_is_longer_than_sixty_three_bytes_xxxxxxxxxxx",
                    on_notify, NULL, NULL) == -1);
    const char *one[] = {"1"};
    CHECK(db_query(p, &q_int, 1, one, on_call, &c) != NULL);
    CHECK(db_tx_begin(p, on_tx, &w) != NULL);
    CHECK(t_run_cond(base, call_done, &c, 30) == 0);
    CHECK(t_run_cond(base, tx_done, &w, 30) == 0);
    CHECK(c.calls == 1 && c.failed);
    CHECK_STR(c.err, "database unavailable");
    CHECK_STR(c.sqlstate, "08006");
    CHECK(w.calls == 1 && w.tx == NULL);
    CHECK_STR(w.err, "database unavailable");
    CHECK(!db_ready(p));
    db_stats(p, &st);
    CHECK(st.conns_ready == 0 && st.queued == 0 && st.failed_total == 2);
    db_pool_free(p);
    event_base_free(base);
}

/* ---- shutdown ---- */

struct at_free {
    struct db_pool *p;
    struct db_tx *tx;
    struct call call, commit;
    int query_refused;
};

static void on_free_fail(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct at_free *f = arg;
    on_call(&f->call, res, err, sqlstate);
    const char *one[] = {"1"};
    f->query_refused = db_query(f->p, &q_int, 1, one, on_call, &f->call) == NULL;
    db_tx_commit(f->tx, on_call, &f->commit);
}

static int any_answered(void *arg)
{
    struct call *c = arg;
    for (int i = 0; i < 20; i++)
        if (c[i].calls) return 1;
    return 0;
}

static void pool_free_fails_every_pending_query_with_one_callback(void)
{
    struct call c[40] = {{0}}, cancelled = {0};
    struct at_free f = {0};
    struct txw w;
    char num[40][12];
    base = event_base_new();
    struct db_pool *p = pool_open(pgurl, 1, 5000);
    f.p = p;
    for (int i = 0; i < 20; i++) {
        const char *params[] = {num[i]};
        snprintf(num[i], sizeof num[i], "%d", i);
        CHECK(db_query(p, &q_int, 1, params, on_call, &c[i]) != NULL);
    }
    CHECK(t_run_cond(base, any_answered, c, 30) == 0);
    f.tx = tx_open(p, &w);
    CHECK(f.tx != NULL);
    const char *one[] = {"1"};
    CHECK(db_tx_query(f.tx, &q_int, 1, one, on_free_fail, &f) == 0);
    for (int i = 20; i < 40; i++) {
        const char *params[] = {num[i]};
        snprintf(num[i], sizeof num[i], "%d", i);
        CHECK(db_query(p, &q_int, 1, params, on_call, &c[i]) != NULL);
    }
    db_cancel(db_query(p, &q_int, 1, one, on_call, &cancelled));
    db_pool_free(p);
    for (int i = 0; i < 40; i++) {
        CHECK(c[i].calls == 1);
        CHECK(i < 20 || (c[i].failed && strcmp(c[i].sqlstate, "08006") == 0));
    }
    CHECK(f.call.calls == 1 && f.call.failed);
    CHECK(f.query_refused);
    CHECK(f.commit.calls == 1 && f.commit.failed);
    CHECK(cancelled.calls == 0);
    event_base_free(base);
}

int main(void)
{
    pgurl = getenv("REELD_TEST_PGURL");
    if (!pgurl || !*pgurl) {
        printf("FAIL db_tests_need_a_database: REELD_TEST_PGURL is not set\n");
        return 1;
    }
    TEST(select_with_params_gives_typed_int_bool_null_text_values);
    TEST(thousand_queries_queued_in_one_turn_are_pipelined_and_each_answered_once);
    TEST(pipelined_queries_on_one_connection_answer_in_submission_order);
    TEST(large_parameters_are_flushed_on_write_readiness_and_answered);
    TEST(failing_query_does_not_abort_its_neighbours_in_the_pipeline);
    TEST(prepared_statement_is_prepared_once_per_connection_and_reused);
    TEST(transaction_commit_is_visible_rollback_is_not_and_pins_its_connection);
    TEST(cancelled_query_or_begin_never_calls_back);
    TEST(listen_receives_notify_sent_through_the_pool_on_a_quoted_channel);
    TEST(unreachable_database_fails_queued_queries_after_queue_timeout);
    TEST(pool_free_fails_every_pending_query_with_one_callback);
    TEST(killed_backends_fail_in_flight_queries_then_pool_and_listen_recover);
    TEST(stopped_and_restarted_cluster_fails_in_flight_holds_queued_and_recovers);
    T_EXIT();
}
