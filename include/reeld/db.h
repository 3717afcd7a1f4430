/* Asynchronous PostgreSQL pool over libpq, driven by the libevent loop.
 *
 * Connections are opened with PQconnectStartParams/PQconnectPoll (with a
 * connect timeout of their own), put in nonblocking and pipeline mode, and
 * every query queued by callers is sent on the least-busy ready connection
 * without waiting for earlier answers: the queries that many requests
 * queue in one loop turn go out together in one pipeline, each followed
 * by a sync so one failing query never aborts another's.
 *
 * Statements are declared once as static `struct db_stmt` objects (SQL in
 * one place per module); each connection prepares a statement the first
 * time it is used on it, inside the same pipeline.
 *
 * Callbacks: every accepted query gets exactly one callback, unless it was
 * cancelled with db_cancel first; then it gets none. A callback never runs
 * inside the db_query call that queued it. After a lost connection, the
 * queries in flight on it fail with err = "database unavailable" (callers
 * answer 503); the pool reconnects with backoff on its own.
 *
 * Queries queued while no connection is up wait up to the pool's queue
 * timeout (default 5 s), then fail the same way.
 *
 * Callbacks run from the event loop: from a connection's read event or
 * from the pool's own deferred event. A callback may call any db_*
 * function except db_pool_free. */
#ifndef REELD_DB_H
#define REELD_DB_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct db_pool;
struct db_req;
struct db_tx;
struct pg_result;

/* A named statement. Define as `static struct db_stmt q_x = {"x", "SELECT ..."};`
 * The pool identifies a statement by this object's address, so it must
 * outlive the pool (static) and its name must be unique: two objects with
 * one name would collide on the server. */
struct db_stmt {
    const char *name; /* unique across the program */
    const char *sql;  /* $1..$n parameters, text format */
};

/* Read-only view of one result. Valid only during the callback. */
struct db_res {
    struct pg_result *pg; /* the underlying PGresult */
};

/* err == NULL on success (then sqlstate is ""). On failure err is a
 * message (valid during the callback), sqlstate the 5-char SQLSTATE or ""
 * (e.g. "23505" unique violation, "08006" connection failure: err is then
 * "database unavailable"), res is NULL. */
typedef void (*db_cb)(void *arg, const struct db_res *res, const char *err, const char *sqlstate);

struct db_pool_opts {
    const char *conninfo;   /* libpq URI or key=value string (copied) */
    int size;               /* query connections, >= 1 */
    int connect_timeout_ms; /* per attempt; <= 0: 5000 */
    int queue_timeout_ms;   /* wait for a connection; <= 0: 5000 */
};

/* Starts connecting at once (a LISTEN connection opens on the first
 * db_listen). Returns NULL on bad options or an unparsable conninfo; an
 * unreachable server is not an error: the pool keeps retrying with
 * backoff (100 ms doubling to 5 s, with jitter) and db_ready says 0. */
struct db_pool *db_pool_new(struct event_base *base, const struct db_pool_opts *opts);
/* Fails every pending query and transaction statement with "database
 * unavailable" (their callbacks run inside this call; queries they queue
 * are refused), then closes everything. Call it before freeing what those
 * callbacks use and before the event_base; never from a db callback. */
void db_pool_free(struct db_pool *p);

/* Queue a statement with nparams text parameters (NULL entries are SQL
 * NULL). Parameters are copied. cb may be NULL (fire and forget). Returns
 * a handle usable with db_cancel until the callback starts, or NULL (and
 * cb never runs) on bad input or if the pool is shutting down. */
struct db_req *db_query(struct db_pool *p, const struct db_stmt *st, int nparams,
                        const char *const *params, db_cb cb, void *arg);
/* Drop interest: the callback will not run. The query may still execute;
 * its result is dropped. Harmless from inside the request's own callback.
 * Cancelling a db_tx_begin handle rolls the transaction back if it opened. */
void db_cancel(struct db_req *r);

/* Transactions: several statements on one connection. db_tx_begin
 * (cb required, else NULL is returned) queues a BEGIN like a query; its
 * callback receives the tx (or NULL and err). From BEGIN on, the
 * connection is pinned: other queries go to other connections or wait.
 * db_tx_query queues statements on it (each gets exactly one callback;
 * returns -1, with no callback, on bad input, after the tx was ended, or
 * when the pool is shutting down). db_tx_commit / db_tx_rollback end it:
 * the tx pointer is invalid once they return; commit reports through cb
 * (an error if any statement failed: the server rolled back, sqlstate
 * "25P02"); rollback has no callback. A tx must always be ended. If the
 * connection dies, pending tx statements fail with "database unavailable"
 * and the tx is dead: later statements and the commit fail the same way. */
typedef void (*db_tx_cb)(void *arg, struct db_tx *tx, const char *err);
struct db_req *db_tx_begin(struct db_pool *p, db_tx_cb cb, void *arg);
int db_tx_query(struct db_tx *tx, const struct db_stmt *st, int nparams, const char *const *params,
                db_cb cb, void *arg);
void db_tx_commit(struct db_tx *tx, db_cb cb, void *arg);
void db_tx_rollback(struct db_tx *tx);

/* A text array literal of v[0..n-1] for a $k::type[] parameter: each
 * element in double quotes, a backslash before each double quote and
 * backslash in it, a NULL element as NULL. Returns a malloc'd string
 * (the caller frees it), or NULL when out of memory. */
char *db_array_lit(const char *const *v, int n);

/* Typed row access (row 0-based; col by index or by name via db_col). */
int db_nrows(const struct db_res *r);
int db_col(const struct db_res *r, const char *name); /* -1 if absent */
int db_isnull(const struct db_res *r, int row, int col);
const char *db_str(const struct db_res *r, int row, int col); /* NULL if null */
long long db_int(const struct db_res *r, int row, int col);   /* 0 if null */
double db_dbl(const struct db_res *r, int row, int col);
int db_bool(const struct db_res *r, int row, int col); /* 't' -> 1 */
long long db_affected(const struct db_res *r);         /* cmdTuples */

/* LISTEN/NOTIFY on a dedicated connection (opened on the first call).
 * channel is matched exactly (quoted, case-sensitive; 1..63 bytes of
 * UTF-8, else -1). on_notify runs for each notification on the channel;
 * on_reconnect (may be NULL) runs after the connection came back and every
 * channel was LISTENed again, so subscribers can catch up on what they
 * missed; it does not run for the first LISTEN. Registrations last until
 * db_pool_free. Notifications sent before LISTEN is active are not seen. */
typedef void (*db_notify_cb)(void *arg, const char *channel, const char *payload);
typedef void (*db_reconnect_cb)(void *arg);
int db_listen(struct db_pool *p, const char *channel, db_notify_cb on_notify,
              db_reconnect_cb on_reconnect, void *arg);

/* libpq resolves a host name with a blocking call on every connect, and
 * the pool reconnects from the loop. This resolves it once, at start-up
 * (before the loop runs), and writes conninfo with hostaddr added (libpq
 * then connects without resolving and still checks TLS against host).
 * Socket paths, numeric hosts, host lists and an explicit hostaddr are
 * left alone. A moved database host is followed on restart. Returns 0, or
 * -1 (logged) when the conninfo is bad or the host does not resolve. */
int db_conninfo_pin(const char *conninfo, char *out, size_t outlen);

/* Health and metrics. */
struct db_stats {
    int conns_total, conns_ready;
    long long queued, in_flight, sent_total, failed_total;
};
void db_stats(const struct db_pool *p, struct db_stats *out);
int db_ready(const struct db_pool *p); /* at least one query connection ready */

#endif
