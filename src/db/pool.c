/* Asynchronous PostgreSQL pool; the contract is include/reeld/db.h.
 *
 * Every connection (the query connections and the LISTEN one) is a small
 * state machine DOWN -> CONNECTING -> READY -> DOWN, driven by a read and
 * a write event on its socket and one timer (connect timeout, then
 * reconnect backoff).
 *
 * A request travels through lists: the pool's wait queue (or its
 * transaction's queue) -> the FIFO of a connection (sent, awaiting its
 * results) -> its callback. A request that fails without an answer from
 * the server (lost connection, queue timeout, shutdown) goes to the done
 * list instead. The pool's "kick" event is the one place where the done
 * list is delivered and queued requests are written to connections, so an
 * API call never runs a callback nor touches a socket: callbacks run from
 * a connection's read event (results) or from the kick (the rest). This is
 * also what batches the queries of one loop turn into one pipeline.
 *
 * Each query is followed by its own sync, so an error aborts nothing but
 * that query. Results are matched to the FIFO head: an optional Prepare
 * (first use of the statement on this connection), the query, then
 * PGRES_PIPELINE_SYNC (which, unlike the others, is not followed by NULL).
 *
 * Note: PQconnectStartParams resolves host names with getaddrinfo, which
 * blocks; deployments that care use hostaddr= or a Unix socket. */
#include "reeld/db.h"
#include "reeld/log.h"
#include "reeld/util.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#define DB_UNAVAILABLE "database unavailable"
#define SQLSTATE_CONN "08006"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define DEFAULT_TIMEOUT_MS 5000
#define MAX_PARAMS 65535
#define MAX_CHANNEL 63 /* NAMEDATALEN - 1: longer names would be truncated */

enum req_kind { RK_QUERY, RK_BEGIN, RK_COMMIT, RK_ROLLBACK };
enum req_state { RS_QUEUED, RS_SENT, RS_DONE, RS_RUNNING };
enum req_phase { PH_PREP, PH_QUERY, PH_SYNC };

struct rlist {
    struct db_req *head, *tail;
    long long n;
};

struct db_req {
    struct db_req *prev, *next;
    struct rlist *list; /* the list holding it, NULL when none */
    struct db_pool *pool;
    enum req_kind kind;
    enum req_state state;
    enum req_phase phase; /* which result group is expected next */
    int seen;             /* a result of the current group arrived */
    int cancelled;
    const struct db_stmt *st;
    int nparams;
    char **params; /* owned copy, released once sent */
    db_cb cb;
    db_tx_cb tx_cb;
    void *arg;
    struct db_tx *tx; /* RK_BEGIN only: the transaction it opens */
    int64_t deadline; /* mono ms: when waiting for a connection ends */
    PGresult *res;    /* the query's result, or the first error */
    const char *err;  /* failure decided locally (static strings) */
    const char *sqlstate;
};

enum tx_state { TX_BEGINNING, TX_OPEN, TX_ENDING, TX_DEAD };

struct db_tx {
    struct db_tx *prev, *next; /* pool's list of live transactions */
    struct db_pool *pool;
    struct db_conn *conn; /* pinned connection, NULL once lost */
    struct rlist queue;   /* statements not yet sent */
    enum tx_state state;
    struct db_req *end; /* COMMIT/ROLLBACK, preallocated so ending never fails */
};

struct stmt_set {
    const struct db_stmt **slot; /* open addressing, linear probing */
    size_t cap, n;
};

enum conn_state { CS_DOWN, CS_CONNECTING, CS_READY };

struct db_conn {
    struct db_pool *pool;
    int idx; /* -1 for the LISTEN connection */
    PGconn *pg;
    enum conn_state state;
    int fd;
    struct event *rev, *wev, *timer;
    int writing; /* wev is added */
    int backoff_ms;
    int started;
    struct rlist fifo;     /* sent, awaiting results */
    struct db_tx *tx;      /* pinned by this transaction */
    struct stmt_set stmts; /* prepared on this connection */
    int listen_busy;       /* LISTEN connection: a LISTEN command is out */
};

struct listener {
    struct listener *next;
    char *channel;
    db_notify_cb on_notify;
    db_reconnect_cb on_reconnect;
    void *arg;
    int active, sending, ever_active, owe_reconnect;
};

struct db_pool {
    struct event_base *base;
    char *conninfo;
    int size, connect_timeout_ms, queue_timeout_ms;
    struct db_conn *conns;
    struct db_conn lconn;
    struct listener *listeners, **listeners_tail;
    struct rlist wait, done;
    struct db_tx *txs;
    struct event *kick, *qtimer;
    int closing;
    long long sent_total, failed_total;
};

static void conn_down(struct db_conn *c);
static void conn_start(struct db_conn *c);
static void listen_step(struct db_conn *c);

/* One log line about a connection; err is a libpq message (first line). */
static void log_pq(enum log_level lvl, const char *msg, const struct db_conn *c, const char *err)
{
    struct log_line *l = log_begin(lvl, msg);
    size_t n = err ? strcspn(err, "\n") : 0; /* libpq adds hint lines */
    log_int(l, "conn", c->idx);
    if (n) log_strn(l, "error", err, n);
    log_end(l);
}

/* ---- request lists ---- */

static void rlist_push(struct rlist *l, struct db_req *r)
{
    r->list = l;
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void rlist_remove(struct db_req *r)
{
    struct rlist *l = r->list;
    if (!l) return;
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    r->list = NULL;
    l->n--;
}

static struct db_req *rlist_pop(struct rlist *l)
{
    struct db_req *r = l->head;
    if (r) rlist_remove(r);
    return r;
}

/* ---- prepared statement set (keyed by the db_stmt's address) ---- */

static size_t stmt_hash(const struct db_stmt *st)
{
    uint64_t x = (uint64_t)(uintptr_t)st;
    x ^= x >> 29;
    x *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(x >> 32);
}

static int stmt_find(const struct stmt_set *s, const struct db_stmt *st, size_t *at)
{
    if (!s->cap) return 0;
    for (size_t i = stmt_hash(st) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slot[i]) return 0;
        if (s->slot[i] == st) {
            *at = i;
            return 1;
        }
    }
}

static void stmt_put(struct stmt_set *s, const struct db_stmt *st)
{
    size_t i = stmt_hash(st) & (s->cap - 1);
    while (s->slot[i])
        i = (i + 1) & (s->cap - 1);
    s->slot[i] = st;
    s->n++;
}

static int stmt_add(struct stmt_set *s, const struct db_stmt *st)
{
    if ((s->n + 1) * 2 > s->cap) {
        struct stmt_set g = {NULL, s->cap ? s->cap * 2 : 16, 0};
        g.slot = calloc(g.cap, sizeof *g.slot);
        if (!g.slot) return -1;
        for (size_t i = 0; i < s->cap; i++)
            if (s->slot[i]) stmt_put(&g, s->slot[i]);
        free(s->slot);
        *s = g;
    }
    stmt_put(s, st);
    return 0;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void stmt_del(struct stmt_set *s, const struct db_stmt *st)
{
    size_t i, mask = s->cap - 1;
    if (!stmt_find(s, st, &i)) return;
    s->slot[i] = NULL;
    s->n--;
    for (size_t j = (i + 1) & mask; s->slot[j]; j = (j + 1) & mask) {
        size_t k = stmt_hash(s->slot[j]) & mask;
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        s->slot[i] = s->slot[j];
        s->slot[j] = NULL;
        i = j;
    }
}

static void stmt_clear(struct stmt_set *s)
{
    free(s->slot);
    s->slot = NULL;
    s->cap = s->n = 0;
}

/* ---- requests ---- */

static void pool_kick(struct db_pool *p)
{
    if (!p->closing) event_active(p->kick, EV_TIMEOUT, 0);
}

static struct db_req *req_new(struct db_pool *p, enum req_kind kind)
{
    struct db_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->pool = p;
    r->kind = kind;
    return r;
}

static char **params_copy(int n, const char *const *src)
{
    size_t total = (size_t)n * sizeof(char *);
    for (int i = 0; i < n; i++)
        if (src[i]) total += strlen(src[i]) + 1;
    char **out = malloc(total);
    if (!out) return NULL;
    char *s = (char *)(out + n);
    for (int i = 0; i < n; i++) {
        if (!src[i]) {
            out[i] = NULL;
            continue;
        }
        size_t len = strlen(src[i]) + 1;
        memcpy(s, src[i], len);
        out[i] = s;
        s += len;
    }
    return out;
}

static void tx_free(struct db_tx *tx);

static void req_free(struct db_req *r)
{
    if (r->kind == RK_BEGIN && r->tx) tx_free(r->tx);
    free(r->params);
    PQclear(r->res);
    free(r);
}

/* The request ends without an answer from the server: its callback runs
 * from the next kick (a cancelled one is simply released). */
static void req_fail_later(struct db_req *r, const char *err, const char *sqlstate)
{
    struct db_pool *p = r->pool;
    if (r->cancelled) {
        req_free(r);
        return;
    }
    PQclear(r->res);
    r->res = NULL;
    if (r->kind == RK_BEGIN && r->tx) {
        tx_free(r->tx);
        r->tx = NULL;
    }
    r->err = err;
    r->sqlstate = sqlstate;
    r->state = RS_DONE;
    rlist_push(&p->done, r);
    pool_kick(p);
}

static const char *res_error(const PGresult *res, const char **sqlstate)
{
    const char *s, *m;
    *sqlstate = "";
    if (!res) return "no result from the server";
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
        return NULL;
    case PGRES_PIPELINE_ABORTED:
        return "query aborted by an earlier error in its pipeline";
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        *sqlstate = s ? s : "";
        if (!m || !*m) m = PQresultErrorMessage(res);
        return *m ? m : "query failed";
    default:
        return "unexpected result (COPY is not supported)";
    }
}

static void tx_end(struct db_tx *tx, enum req_kind kind, db_cb cb, void *arg);

/* Runs the request's callback (unless cancelled) and releases it. The
 * request is on no list. res is r->res or NULL with err set. */
static void req_finish(struct db_req *r)
{
    struct db_pool *p = r->pool;
    const char *sqlstate = r->sqlstate ? r->sqlstate : "";
    const char *err = r->err;
    if (!err) err = res_error(r->res, &sqlstate);
    if (!err && r->kind == RK_COMMIT && strcmp(PQcmdStatus(r->res), "ROLLBACK") == 0) {
        err = "transaction rolled back after an earlier error";
        sqlstate = "25P02";
    }
    if (err) p->failed_total++;
    if (r->kind == RK_BEGIN) {
        struct db_tx *tx = r->tx;
        r->tx = NULL;
        if (err) {
            if (tx) tx_free(tx);
            tx = NULL;
        } else {
            tx->state = TX_OPEN;
        }
        if (r->cancelled) {
            if (tx) tx_end(tx, RK_ROLLBACK, NULL, NULL);
        } else if (r->tx_cb) {
            r->state = RS_RUNNING;
            r->tx_cb(r->arg, tx, err);
        }
    } else if (!r->cancelled && r->cb) {
        struct db_res dr = {r->res};
        r->state = RS_RUNNING;
        r->cb(r->arg, err ? NULL : &dr, err, err ? sqlstate : "");
    }
    req_free(r);
}

/* Delivers what was on the done list when called; requests that the
 * callbacks add wait for the next kick, so a callback that keeps failing
 * cannot hold the loop. */
static void pool_deliver_done(struct db_pool *p)
{
    long long n = p->done.n;
    struct db_req *r;
    while (n-- > 0 && (r = rlist_pop(&p->done)))
        req_finish(r);
}

/* ---- transactions ---- */

static void tx_free(struct db_tx *tx)
{
    struct db_pool *p = tx->pool;
    struct db_req *r;
    if (tx->conn) {
        tx->conn->tx = NULL;
        tx->conn = NULL;
        pool_kick(p); /* the connection can take waiting queries again */
    }
    while ((r = rlist_pop(&tx->queue)))
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
    if (tx->end) req_free(tx->end);
    if (tx->prev)
        tx->prev->next = tx->next;
    else
        p->txs = tx->next;
    if (tx->next) tx->next->prev = tx->prev;
    free(tx);
}

/* The transaction's connection is gone: fail what it still queues. */
static void tx_kill(struct db_tx *tx)
{
    struct db_req *r;
    tx->conn = NULL;
    while ((r = rlist_pop(&tx->queue)))
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
    if (tx->state == TX_ENDING)
        tx_free(tx);
    else
        tx->state = TX_DEAD;
}

static void tx_end(struct db_tx *tx, enum req_kind kind, db_cb cb, void *arg)
{
    struct db_req *r = tx->end;
    if (!r) return; /* already ending */
    tx->end = NULL;
    r->kind = kind;
    r->cb = cb;
    r->arg = arg;
    if (tx->state == TX_OPEN) {
        tx->state = TX_ENDING;
        r->state = RS_QUEUED;
        rlist_push(&tx->queue, r);
        pool_kick(tx->pool);
        return;
    }
    /* dead (or misused): the transaction is over either way */
    tx_free(tx);
    if (cb)
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
    else
        req_free(r);
}

/* ---- connections: sending and receiving ---- */

static int conn_flush(struct db_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0) return -1;
    if (rc > 0 && !c->writing) {
        if (event_add(c->wev, NULL) < 0) return -1;
        c->writing = 1;
    } else if (rc == 0 && c->writing) {
        event_del(c->wev);
        c->writing = 0;
    }
    return 0;
}

static int pipeline_sync(PGconn *pg)
{
#ifdef LIBPQ_HAS_SEND_PIPELINE_SYNC
    return PQsendPipelineSync(pg); /* libpq >= 17: no flush per query */
#else
    return PQpipelineSync(pg);
#endif
}

/* Writes r (and its Prepare on first use) plus a sync into the pipeline.
 * r is on the FIFO first, so a failure here fails it with the rest. */
static int conn_send(struct db_conn *c, struct db_req *r)
{
    static const char *const sql[] = {
        [RK_BEGIN] = "BEGIN", [RK_COMMIT] = "COMMIT", [RK_ROLLBACK] = "ROLLBACK"};
    PGconn *pg = c->pg;
    size_t at;
    r->state = RS_SENT;
    r->phase = PH_QUERY;
    r->seen = 0;
    rlist_push(&c->fifo, r);
    c->pool->sent_total++;
    if (r->kind == RK_QUERY) {
        if (!stmt_find(&c->stmts, r->st, &at)) {
            if (stmt_add(&c->stmts, r->st) < 0 ||
                !PQsendPrepare(pg, r->st->name, r->st->sql, 0, NULL))
                return -1;
            r->phase = PH_PREP;
        }
        if (!PQsendQueryPrepared(pg, r->st->name, r->nparams, (const char *const *)r->params, NULL,
                                 NULL, 0))
            return -1;
    } else {
        if (r->kind == RK_BEGIN) {
            c->tx = r->tx;
            r->tx->conn = c;
        }
        if (!PQsendQueryParams(pg, sql[r->kind], 0, NULL, NULL, NULL, NULL, 0)) return -1;
    }
    free(r->params);
    r->params = NULL;
    return pipeline_sync(pg) ? 0 : -1;
}

/* Sends what the pinned transaction queued; the COMMIT/ROLLBACK ends it
 * and unpins the connection (the server sees it before anything sent
 * after it). */
static int conn_send_tx(struct db_conn *c)
{
    struct db_tx *tx = c->tx;
    struct db_req *r;
    while (tx && (r = rlist_pop(&tx->queue))) {
        if (conn_send(c, r) < 0) return -1;
        if (r->kind == RK_COMMIT || r->kind == RK_ROLLBACK) {
            tx_free(tx);
            tx = NULL;
        }
    }
    return 0;
}

/* One result (or the NULL that ends a result group) for the FIFO head. */
static void conn_take_result(struct db_conn *c, struct db_req *r, PGresult *res)
{
    ExecStatusType s = PQresultStatus(res);
    int failed = s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE;
    r->seen = 1;
    if (r->phase == PH_PREP) {
        if (failed) {
            /* not prepared after all: the next use prepares again */
            stmt_del(&c->stmts, r->st);
            PQclear(r->res);
            r->res = res;
        } else {
            PQclear(res);
        }
        return;
    }
    if (r->res && PQresultStatus(r->res) != PGRES_COMMAND_OK &&
        PQresultStatus(r->res) != PGRES_TUPLES_OK) {
        PQclear(res); /* keep the first error */
        return;
    }
    PQclear(r->res);
    r->res = res;
}

/* Reads every complete result; callbacks run here. Returns -1 when the
 * connection broke. */
static int conn_read_results(struct db_conn *c)
{
    PGconn *pg = c->pg;
    while (PQstatus(pg) != CONNECTION_BAD && !PQisBusy(pg)) {
        struct db_req *r = c->fifo.head;
        PGresult *res = PQgetResult(pg);
        if (!r) {
            if (!res) break;
            PQclear(res); /* nothing of ours is outstanding */
            continue;
        }
        if (!res) {
            if (!r->seen) break; /* nothing new: wait for input */
            r->seen = 0;
            if (r->phase != PH_SYNC) r->phase++;
            continue;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            rlist_remove(r);
            req_finish(r);
            continue;
        }
        conn_take_result(c, r, res);
    }
    return PQstatus(pg) == CONNECTION_BAD ? -1 : 0;
}

/* ---- LISTEN connection ---- */

static void listen_sent_done(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    struct listener *l;
    c->listen_busy = 0;
    for (l = p->listeners; l; l = l->next) {
        if (!l->sending) continue;
        l->sending = 0;
        l->active = 1;
        l->owe_reconnect = l->ever_active;
        l->ever_active = 1;
    }
    for (l = p->listeners; l; l = l->next) {
        if (!l->owe_reconnect) continue;
        l->owe_reconnect = 0;
        if (l->on_reconnect) l->on_reconnect(l->arg);
    }
}

/* Reads the LISTEN command's results and delivers notifications; the
 * callbacks run here. Returns -1 when the connection broke. */
static int listen_read(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    PGconn *pg = c->pg;
    PGnotify *n;
    int finished = 0;
    while (PQstatus(pg) != CONNECTION_BAD && !PQisBusy(pg)) {
        PGresult *res = PQgetResult(pg);
        if (!res) {
            finished = c->listen_busy;
            break;
        }
        const char *sqlstate, *err = res_error(res, &sqlstate);
        if (err) {
            struct log_line *l = log_begin(LOG_ERROR, "db listen failed");
            log_str(l, "error", err);
            log_str(l, "sqlstate", sqlstate);
            log_end(l);
        }
        PQclear(res);
    }
    if (PQstatus(pg) == CONNECTION_BAD) return -1;
    if (finished) listen_sent_done(c);
    while ((n = PQnotifies(pg))) {
        for (struct listener *l = p->listeners; l; l = l->next)
            if (l->on_notify && strcmp(l->channel, n->relname) == 0)
                l->on_notify(l->arg, n->relname, n->extra);
        PQfreemem(n);
    }
    return 0;
}

/* Sends one LISTEN command for every channel not listened yet on this
 * connection (all of them after a reconnect). */
static void listen_step(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    struct evbuffer *sql;
    int any = 0;
    if (c->state != CS_READY || c->listen_busy || !p->listeners) return;
    sql = evbuffer_new();
    if (!sql) return;
    for (struct listener *l = p->listeners; l; l = l->next) {
        if (l->active || l->sending) continue;
        char *id = PQescapeIdentifier(c->pg, l->channel, strlen(l->channel));
        if (!id) {
            log_pq(LOG_ERROR, "db listen failed", c, PQerrorMessage(c->pg));
            l->active = 1; /* retrying cannot help */
            continue;
        }
        evbuffer_add_printf(sql, "LISTEN %s;", id);
        PQfreemem(id);
        l->sending = 1;
        any = 1;
    }
    if (any) {
        evbuffer_add(sql, "", 1);
        if (!PQsendQuery(c->pg, (const char *)evbuffer_pullup(sql, -1)) || conn_flush(c) < 0) {
            evbuffer_free(sql);
            conn_down(c);
            return;
        }
        c->listen_busy = 1;
    }
    evbuffer_free(sql);
}

/* ---- connections: lifecycle ---- */

static void conn_free_events(struct db_conn *c)
{
    if (c->rev) event_free(c->rev);
    if (c->wev) event_free(c->wev);
    c->rev = c->wev = NULL;
    c->fd = -1;
    c->writing = 0;
}

static void conn_on_io(evutil_socket_t fd, short what, void *arg);

/* Waits for `what` on libpq's socket, which may change while connecting. */
static int conn_watch(struct db_conn *c, short what)
{
    struct event_base *base = c->pool->base;
    int fd = PQsocket(c->pg);
    if (fd < 0) return -1;
    if (fd != c->fd || !c->rev) {
        conn_free_events(c);
        c->rev = event_new(base, fd, EV_READ | EV_PERSIST, conn_on_io, c);
        c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, conn_on_io, c);
        if (!c->rev || !c->wev) return -1;
        c->fd = fd;
    }
    /* always re-add: libpq may have closed and reopened the same number */
    event_del(c->rev);
    event_del(c->wev);
    c->writing = 0;
    if ((what & EV_READ) && event_add(c->rev, NULL) < 0) return -1;
    if (what & EV_WRITE) {
        if (event_add(c->wev, NULL) < 0) return -1;
        c->writing = 1;
    }
    return 0;
}

static void conn_on_notice(void *arg, const char *msg)
{
    log_pq(LOG_DEBUG, "db notice", arg, msg);
}

static void conn_close(struct db_conn *c)
{
    conn_free_events(c);
    if (c->pg) PQfinish(c->pg);
    c->pg = NULL;
    c->state = CS_DOWN;
    c->listen_busy = 0;
    stmt_clear(&c->stmts);
}

static void conn_retry_later(struct db_conn *c)
{
    unsigned rnd = 0;
    int half;
    if (c->pool->closing) return;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS) c->backoff_ms = BACKOFF_MAX_MS;
    util_random(&rnd, sizeof rnd);
    /* jitter keeps a pool's connections from reconnecting in lockstep */
    half = c->backoff_ms / 2;
    int ms = half + (int)(rnd % (unsigned)(half + 1));
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* The connection failed (while connecting or later): everything sent on
 * it fails with "database unavailable", its transaction dies, and a
 * reconnect is scheduled. */
static void conn_down(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    struct db_tx *tx = c->tx;
    struct db_req *r;
    if (!p->closing)
        log_pq(LOG_WARN, c->state == CS_READY ? "db connection lost" : "db connect failed", c,
               c->pg ? PQerrorMessage(c->pg) : NULL);
    if (tx) {
        c->tx = NULL;
        tx->conn = NULL;
        if (tx->state == TX_BEGINNING) tx = NULL; /* its BEGIN is in the FIFO and frees it */
    }
    while ((r = rlist_pop(&c->fifo)))
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
    if (tx) tx_kill(tx);
    for (struct listener *l = c->idx < 0 ? p->listeners : NULL; l; l = l->next)
        l->active = l->sending = 0;
    conn_close(c);
    conn_retry_later(c);
    pool_kick(p);
}

static void conn_ready(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    evtimer_del(c->timer);
    if (PQsetnonblocking(c->pg, 1) < 0 || (c->idx >= 0 && !PQenterPipelineMode(c->pg)) ||
        conn_watch(c, EV_READ) < 0) {
        conn_down(c);
        return;
    }
    c->state = CS_READY;
    c->backoff_ms = 0;
    log_pq(LOG_INFO, "db connected", c, NULL);
    if (c->idx < 0) listen_step(c);
    pool_kick(p);
}

static void conn_poll(struct db_conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (conn_watch(c, EV_READ) < 0) conn_down(c);
        break;
    case PGRES_POLLING_WRITING:
        if (conn_watch(c, EV_WRITE) < 0) conn_down(c);
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    default:
        conn_down(c);
        break;
    }
}

static void conn_start(struct db_conn *c)
{
    struct db_pool *p = c->pool;
    const char *const kw[] = {"dbname", "fallback_application_name", NULL};
    const char *const val[] = {p->conninfo, "reeld", NULL};
    int ms = p->connect_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    c->started = 1;
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_down(c);
        return;
    }
    PQsetNoticeProcessor(c->pg, conn_on_notice, c);
    c->state = CS_CONNECTING;
    evtimer_add(c->timer, &tv);
    /* libpq: start as if PQconnectPoll had asked for write readiness */
    if (conn_watch(c, EV_WRITE) < 0) conn_down(c);
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct db_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == CS_CONNECTING) {
        log_pq(LOG_WARN, "db connect timed out", c, NULL);
        conn_down(c);
    } else if (c->state == CS_DOWN) {
        conn_start(c);
    }
}

/* Handles every complete result and notification libpq holds, whether
 * it came from PQconsumeInput or was read by PQflush (which reads when it
 * cannot write, so that input may be buffered with no event to come). */
static void conn_process(struct db_conn *c)
{
    PGnotify *n;
    if (c->idx < 0) {
        if (listen_read(c) < 0)
            conn_down(c);
        else
            listen_step(c); /* channels added meanwhile */
        return;
    }
    if (conn_read_results(c) < 0) {
        conn_down(c);
        return;
    }
    while ((n = PQnotifies(c->pg))) /* not ours to deliver; do not hoard */
        PQfreemem(n);
}

/* Flushes output, then processes what the flush may have read. */
static void conn_push(struct db_conn *c)
{
    if (conn_flush(c) < 0)
        conn_down(c);
    else
        conn_process(c);
}

static void conn_on_io(evutil_socket_t fd, short what, void *arg)
{
    struct db_conn *c = arg;
    (void)fd;
    if (c->state == CS_CONNECTING) {
        conn_poll(c);
    } else if (c->state != CS_READY) {
        return;
    } else if (what & EV_WRITE) {
        conn_push(c);
    } else if (!PQconsumeInput(c->pg)) {
        conn_down(c);
    } else {
        conn_process(c);
        if (c->state == CS_READY && c->writing) conn_push(c);
    }
}

static void conn_init(struct db_pool *p, struct db_conn *c, int idx)
{
    c->pool = p;
    c->idx = idx;
    c->fd = -1;
    c->timer = evtimer_new(p->base, conn_on_timer, c);
}

static void conn_destroy(struct db_conn *c)
{
    conn_down(c); /* pool is closing: fails everything, no retry */
    if (c->timer) event_free(c->timer);
    c->timer = NULL;
}

/* ---- the pool ---- */

static struct db_conn *pool_pick(struct db_pool *p)
{
    struct db_conn *best = NULL;
    for (int i = 0; i < p->size; i++) {
        struct db_conn *c = &p->conns[i];
        if (c->state == CS_READY && !c->tx && (!best || c->fifo.n < best->fifo.n)) best = c;
    }
    return best;
}

static void pool_arm_qtimer(struct db_pool *p)
{
    if (!p->wait.head || evtimer_pending(p->qtimer, NULL)) return;
    int64_t ms = p->wait.head->deadline - util_mono_ms();
    if (ms < 0) ms = 0;
    struct timeval tv = {(long)(ms / 1000), (long)(ms % 1000) * 1000};
    evtimer_add(p->qtimer, &tv);
}

static void pool_dispatch(struct db_pool *p)
{
    struct db_conn *c;
    struct db_req *r;
    for (int i = 0; i < p->size; i++) {
        c = &p->conns[i];
        if (c->state == CS_READY && c->tx && c->tx->queue.n && conn_send_tx(c) < 0) conn_down(c);
    }
    while (p->wait.head && (c = pool_pick(p))) {
        r = rlist_pop(&p->wait);
        if (conn_send(c, r) < 0) conn_down(c);
    }
    for (int i = 0; i < p->size; i++) {
        c = &p->conns[i];
        if (c->state == CS_READY && c->fifo.n) conn_push(c);
    }
}

static void pool_on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct db_pool *p = arg;
    (void)fd;
    (void)what;
    pool_deliver_done(p);
    pool_dispatch(p);
    listen_step(&p->lconn);
    pool_arm_qtimer(p);
}

static void pool_on_qtimer(evutil_socket_t fd, short what, void *arg)
{
    struct db_pool *p = arg;
    int64_t now = util_mono_ms();
    (void)fd;
    (void)what;
    while (p->wait.head && p->wait.head->deadline <= now)
        req_fail_later(rlist_pop(&p->wait), DB_UNAVAILABLE, SQLSTATE_CONN);
    pool_arm_qtimer(p);
}

struct db_pool *db_pool_new(struct event_base *base, const struct db_pool_opts *opts)
{
    char *errmsg = NULL;
    PQconninfoOption *parsed;
    struct db_pool *p;
    if (!base || !opts || !opts->conninfo || opts->size < 1 || opts->size > 1000) return NULL;
    parsed = PQconninfoParse(opts->conninfo, &errmsg);
    if (!parsed) {
        log_msg(LOG_ERROR, "db conninfo invalid", "error", errmsg ? errmsg : "out of memory");
        PQfreemem(errmsg);
        return NULL;
    }
    PQconninfoFree(parsed);
    p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->base = base;
    p->size = opts->size;
    p->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : DEFAULT_TIMEOUT_MS;
    p->queue_timeout_ms = opts->queue_timeout_ms > 0 ? opts->queue_timeout_ms : DEFAULT_TIMEOUT_MS;
    p->listeners_tail = &p->listeners;
    p->conninfo = strdup(opts->conninfo);
    p->conns = calloc((size_t)p->size, sizeof *p->conns);
    p->kick = event_new(base, -1, 0, pool_on_kick, p);
    p->qtimer = evtimer_new(base, pool_on_qtimer, p);
    conn_init(p, &p->lconn, -1);
    for (int i = 0; p->conns && i < p->size; i++)
        conn_init(p, &p->conns[i], i);
    int ok = p->conninfo && p->conns && p->kick && p->qtimer && p->lconn.timer;
    for (int i = 0; ok && i < p->size; i++)
        ok = p->conns[i].timer != NULL;
    if (!ok) {
        db_pool_free(p);
        return NULL;
    }
    for (int i = 0; i < p->size; i++)
        conn_start(&p->conns[i]);
    return p;
}

void db_pool_free(struct db_pool *p)
{
    struct db_req *r;
    if (!p) return;
    p->closing = 1;
    for (int i = 0; p->conns && i < p->size; i++)
        conn_destroy(&p->conns[i]);
    conn_destroy(&p->lconn);
    while ((r = rlist_pop(&p->wait)))
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
    for (struct db_tx *tx = p->txs, *next; tx; tx = next) {
        next = tx->next;
        if (tx->state != TX_DEAD) tx_kill(tx);
    }
    /* callbacks may end transactions, which queues their callbacks here;
     * then the transactions their owners never ended go */
    while (p->done.head || p->txs) {
        while (p->done.head)
            pool_deliver_done(p);
        if (p->txs) tx_free(p->txs);
    }
    while (p->listeners) {
        struct listener *l = p->listeners;
        p->listeners = l->next;
        free(l->channel);
        free(l);
    }
    if (p->kick) event_free(p->kick);
    if (p->qtimer) event_free(p->qtimer);
    free(p->conns);
    free(p->conninfo);
    free(p);
}

struct db_req *db_query(struct db_pool *p, const struct db_stmt *st, int nparams,
                        const char *const *params, db_cb cb, void *arg)
{
    struct db_req *r;
    if (!p || p->closing || !st || !st->name || !*st->name || !st->sql || nparams < 0 ||
        nparams > MAX_PARAMS || (nparams && !params))
        return NULL;
    r = req_new(p, RK_QUERY);
    if (!r) return NULL;
    if (nparams && !(r->params = params_copy(nparams, params))) {
        free(r);
        return NULL;
    }
    r->st = st;
    r->nparams = nparams;
    r->cb = cb;
    r->arg = arg;
    r->state = RS_QUEUED;
    r->deadline = util_mono_ms() + p->queue_timeout_ms;
    rlist_push(&p->wait, r);
    pool_kick(p);
    return r;
}

void db_cancel(struct db_req *r)
{
    if (!r) return;
    switch (r->state) {
    case RS_QUEUED:
    case RS_DONE:
        rlist_remove(r);
        req_free(r);
        break;
    case RS_SENT:
        r->cancelled = 1; /* released when its result arrives */
        break;
    case RS_RUNNING:
        break;
    }
}

struct db_req *db_tx_begin(struct db_pool *p, db_tx_cb cb, void *arg)
{
    struct db_req *r;
    struct db_tx *tx;
    if (!p || p->closing || !cb) return NULL;
    r = req_new(p, RK_BEGIN);
    tx = calloc(1, sizeof *tx);
    if (!r || !tx || !(tx->end = req_new(p, RK_ROLLBACK))) {
        free(r);
        free(tx);
        return NULL;
    }
    tx->pool = p;
    tx->state = TX_BEGINNING;
    tx->next = p->txs;
    if (p->txs) p->txs->prev = tx;
    p->txs = tx;
    r->tx = tx;
    r->tx_cb = cb;
    r->arg = arg;
    r->state = RS_QUEUED;
    r->deadline = util_mono_ms() + p->queue_timeout_ms;
    rlist_push(&p->wait, r);
    pool_kick(p);
    return r;
}

int db_tx_query(struct db_tx *tx, const struct db_stmt *st, int nparams, const char *const *params,
                db_cb cb, void *arg)
{
    struct db_pool *p;
    struct db_req *r;
    if (!tx || tx->pool->closing || !st || !st->name || !*st->name || !st->sql || nparams < 0 ||
        nparams > MAX_PARAMS || (nparams && !params) ||
        (tx->state != TX_OPEN && tx->state != TX_DEAD))
        return -1;
    p = tx->pool;
    r = req_new(p, RK_QUERY);
    if (!r) return -1;
    if (nparams && !(r->params = params_copy(nparams, params))) {
        free(r);
        return -1;
    }
    r->st = st;
    r->nparams = nparams;
    r->cb = cb;
    r->arg = arg;
    if (tx->state == TX_DEAD) {
        req_fail_later(r, DB_UNAVAILABLE, SQLSTATE_CONN);
        return 0;
    }
    r->state = RS_QUEUED;
    rlist_push(&tx->queue, r);
    pool_kick(p);
    return 0;
}

void db_tx_commit(struct db_tx *tx, db_cb cb, void *arg)
{
    if (tx) tx_end(tx, RK_COMMIT, cb, arg);
}

void db_tx_rollback(struct db_tx *tx)
{
    if (tx) tx_end(tx, RK_ROLLBACK, NULL, NULL);
}

int db_listen(struct db_pool *p, const char *channel, db_notify_cb on_notify,
              db_reconnect_cb on_reconnect, void *arg)
{
    struct listener *l;
    size_t len = channel ? strlen(channel) : 0;
    if (!p || p->closing || len == 0 || len > MAX_CHANNEL || !util_utf8_valid(channel, len))
        return -1;
    l = calloc(1, sizeof *l);
    if (!l || !(l->channel = strdup(channel))) {
        free(l);
        return -1;
    }
    l->on_notify = on_notify;
    l->on_reconnect = on_reconnect;
    l->arg = arg;
    *p->listeners_tail = l;
    p->listeners_tail = &l->next;
    if (!p->lconn.started)
        conn_start(&p->lconn);
    else
        pool_kick(p);
    return 0;
}

/* ---- results ---- */

static int res_cell_ok(const struct db_res *r, int row, int col)
{
    return r && r->pg && row >= 0 && col >= 0 && row < PQntuples(r->pg) && col < PQnfields(r->pg);
}

int db_nrows(const struct db_res *r)
{
    return r && r->pg ? PQntuples(r->pg) : 0;
}

int db_col(const struct db_res *r, const char *name)
{
    if (!r || !r->pg || !name) return -1;
    for (int i = 0, n = PQnfields(r->pg); i < n; i++) /* exact: no case folding */
        if (strcmp(PQfname(r->pg, i), name) == 0) return i;
    return -1;
}

int db_isnull(const struct db_res *r, int row, int col)
{
    return res_cell_ok(r, row, col) ? PQgetisnull(r->pg, row, col) : 1;
}

const char *db_str(const struct db_res *r, int row, int col)
{
    if (db_isnull(r, row, col)) return NULL;
    return PQgetvalue(r->pg, row, col);
}

long long db_int(const struct db_res *r, int row, int col)
{
    const char *s = db_str(r, row, col);
    return s ? strtoll(s, NULL, 10) : 0;
}

double db_dbl(const struct db_res *r, int row, int col)
{
    const char *s = db_str(r, row, col);
    return s ? strtod(s, NULL) : 0.0;
}

int db_bool(const struct db_res *r, int row, int col)
{
    const char *s = db_str(r, row, col);
    return s && s[0] == 't';
}

long long db_affected(const struct db_res *r)
{
    const char *s = r && r->pg ? PQcmdTuples(r->pg) : NULL;
    return s && *s ? strtoll(s, NULL, 10) : 0;
}

/* ---- health ---- */

void db_stats(const struct db_pool *p, struct db_stats *out)
{
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!p) return;
    out->conns_total = p->size;
    out->queued = p->wait.n;
    for (int i = 0; i < p->size; i++) {
        out->conns_ready += p->conns[i].state == CS_READY;
        out->in_flight += p->conns[i].fifo.n;
    }
    for (const struct db_tx *tx = p->txs; tx; tx = tx->next)
        out->queued += tx->queue.n;
    out->sent_total = p->sent_total;
    out->failed_total = p->failed_total;
}

int db_ready(const struct db_pool *p)
{
    for (int i = 0; p && i < p->size; i++)
        if (p->conns[i].state == CS_READY) return 1;
    return 0;
}
