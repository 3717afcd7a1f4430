/* GET /api/events (SPEC 8): each organization's recording status changes
 * as Server-Sent Events.
 *
 * A stream first catches up from the events table (from Last-Event-ID, or
 * from the current end when there is none), then goes live. Live delivery
 * is shared: one process-wide LISTEN on reeld_events (payload
 * "<org_id> <id>"); a notification for an organization with open streams
 * fetches that organization's new rows once (id above the organization's
 * cursor) and fans them out to each of its live streams, each applying its
 * own recording filter and its own last id. Ids become visible in
 * increasing order per organization (schema: the events_id trigger), so a
 * cursor never skips a row that commits later.
 *
 * Going live without a gap: a catching-up stream pages through the table;
 * its last page also returns the organization's highest id in the same
 * snapshot, and the stream joins the live set only when that covers both
 * the organization's cursor and every id already notified; otherwise it
 * reads another page. After a lost LISTEN connection (on_reconnect), and
 * on every heartbeat tick, each organization with streams is fetched from
 * its cursor, so nothing is lost while notifications could not arrive.
 *
 * Memory per stream is one small struct (the http layer keeps a stream's
 * connection small too: see http_sse_start, after which the request's
 * headers and query are gone, so everything a stream keeps is copied
 * first). Each row is formatted once and the same frame goes to every
 * stream; events go straight to the socket, and a client whose queue
 * passes REELD_SSE_MAX_QUEUED is dropped by the http layer (on_abort frees
 * the stream). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/util.h"

#define EV_PAGE 500
#define EV_PAGE_STR "500"
/* Replay pages wait while more than this is queued to the client. */
#define EV_PACE_BYTES 65536

/* A stream's page: the matching rows above $2, with the organization's
 * highest id from the same snapshot on every row (one row with NULL id
 * when nothing matches). */
static struct db_stmt q_page = {
    "events_page",
    "SELECT e.id, e.type, e.data::text, m.max FROM"
    " (SELECT coalesce(max(id), 0) AS max FROM events WHERE org_id = $1) m"
    " LEFT JOIN LATERAL (SELECT id, type, data FROM events WHERE org_id = $1 AND id > $2"
    " AND ($3::uuid IS NULL OR recording_id = $3::uuid) ORDER BY id LIMIT " EV_PAGE_STR ") e"
    " ON true ORDER BY e.id"};

/* The organization's new rows, for every live stream of it at once. */
static struct db_stmt q_fetch = {"events_fetch",
                                 "SELECT id, type, data::text, recording_id FROM events"
                                 " WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT " EV_PAGE_STR};

struct ev_org;

struct ev_stream {
    struct http_req *r;
    struct ev_org *org;
    struct ev_stream *prev, *next; /* in org->streams */
    struct db_req *q;              /* catch-up page in flight */
    char rec[37];                  /* recording filter, "" for all */
    long long last;                /* highest id this stream has passed */
    long long q_bound;             /* org's cursor/notified when the page was sent */
    int fresh;                     /* no Last-Event-ID: start from the end */
    int live;
};

struct ev_org {
    char id[37];
    struct ev_org *next;
    struct ev_stream *streams;
    long long cursor;   /* every row <= cursor went to the live streams */
    int cursor_set;     /* a stream went live, so cursor means something */
    long long notified; /* highest id seen in a notification */
    long long q_notified;
    struct db_req *q; /* fetch in flight */
    int again;        /* fetch again once the one in flight ends */
    int busy;         /* streams being walked: do not free */
};

static struct ev_org *orgs;
static int nstreams;
static int listening;
static struct event *heartbeat_ev;

static void org_fetch(struct ev_org *o);
static void stream_page(struct ev_stream *s);

static struct ev_org *org_find(const char *id)
{
    for (struct ev_org *o = orgs; o; o = o->next)
        if (strcmp(o->id, id) == 0) return o;
    return NULL;
}

static void org_maybe_free(struct ev_org *o)
{
    if (o->streams || o->q || o->busy) return;
    struct ev_org **pp = &orgs;
    while (*pp && *pp != o)
        pp = &(*pp)->next;
    if (*pp) *pp = o->next;
    free(o);
}

/* Unlink and free a stream, then finish its request. */
static void stream_close(struct ev_stream *s)
{
    struct ev_org *o = s->org;
    struct http_req *r = s->r;
    if (s->q) db_cancel(s->q);
    if (s->prev)
        s->prev->next = s->next;
    else
        o->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s);
    r->data = NULL;
    r->on_abort = NULL;
    nstreams--;
    if (nstreams == 0 && heartbeat_ev) event_del(heartbeat_ev);
    org_maybe_free(o);
    http_stream_end(r);
}

static void on_abort(struct http_req *r)
{
    if (r->data) stream_close(r->data);
}

/* Sends one row; returns -1 when the client was dropped (s is freed). */
static int stream_send(struct ev_stream *s, const char *id, const char *type, const char *data)
{
    if (!data) data = "{}";
    return http_sse_event(s->r, id, type, data, strlen(data));
}

/* ---- live fan-out -------------------------------------------------------- */

static void fetch_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct ev_org *o = arg;
    o->q = NULL;
    if (err) {
        /* The next notification, heartbeat tick or reconnect retries. */
        log_msg(LOG_WARN, "events fetch failed", "error", err);
        o->again = 0;
        org_maybe_free(o);
        return;
    }
    int n = db_nrows(res);
    o->busy = 1;
    for (int i = 0; i < n; i++) {
        long long id = db_int(res, i, 0);
        const char *rec = db_str(res, i, 3);
        char *frame = NULL; /* the row's frame, built for its first stream */
        size_t flen = 0;
        for (struct ev_stream *s = o->streams, *next; s; s = next) {
            next = s->next;
            if (!s->live || id <= s->last) continue;
            s->last = id;
            if (s->rec[0] && (!rec || strcmp(rec, s->rec) != 0)) continue;
            if (!frame) {
                const char *data = db_str(res, i, 2);
                if (!data) data = "{}";
                frame = http_sse_format(db_str(res, i, 0), db_str(res, i, 1), data, strlen(data),
                                        &flen);
            }
            if (frame)
                http_sse_send(s->r, frame, flen);
            else /* out of memory: the one-stream path drops the client */
                stream_send(s, db_str(res, i, 0), db_str(res, i, 1), db_str(res, i, 2));
        }
        free(frame);
        if (id > o->cursor) o->cursor = id;
    }
    o->busy = 0;
    if (n < EV_PAGE && o->q_notified > o->cursor) o->cursor = o->q_notified;
    if (n == EV_PAGE || o->again || o->notified > o->cursor) {
        o->again = 0;
        if (o->streams) org_fetch(o);
    }
    org_maybe_free(o);
}

static void org_fetch(struct ev_org *o)
{
    if (!o->cursor_set) return;
    if (o->q) {
        o->again = 1;
        return;
    }
    char cur[24];
    snprintf(cur, sizeof cur, "%lld", o->cursor);
    const char *p[] = {o->id, cur};
    o->q_notified = o->notified;
    o->q = db_query(app.db, &q_fetch, 2, p, fetch_done, o);
}

static void on_notify(void *arg, const char *channel, const char *payload)
{
    (void)arg;
    (void)channel;
    char org[37];
    long long id;
    if (!payload || sscanf(payload, "%36s %lld", org, &id) != 2) return;
    struct ev_org *o = org_find(org);
    if (!o) return;
    if (id > o->notified) o->notified = id;
    if (o->cursor_set && id > o->cursor) org_fetch(o);
}

/* Fetch every organization with streams from its cursor. */
static void fetch_all(void)
{
    for (struct ev_org *o = orgs; o; o = o->next)
        if (o->streams) org_fetch(o);
}

static void on_reconnect(void *arg)
{
    (void)arg;
    log_msg(LOG_INFO, "events catch-up after reconnect", NULL, NULL);
    fetch_all();
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    for (struct ev_org *o = orgs, *onext; o; o = onext) {
        onext = o->next;
        o->busy = 1;
        for (struct ev_stream *s = o->streams, *next; s; s = next) {
            next = s->next;
            http_sse_comment(s->r, "heartbeat");
        }
        o->busy = 0;
        if (o->streams) org_fetch(o);
        org_maybe_free(o);
    }
}

/* ---- catching up ----------------------------------------------------------- */

/* The highest id known to exist in the organization: fetched or notified. */
static long long org_bound(const struct ev_org *o)
{
    long long b = o->cursor_set ? o->cursor : 0;
    return o->notified > b ? o->notified : b;
}

static void stream_go_live(struct ev_stream *s)
{
    struct ev_org *o = s->org;
    if (!o->cursor_set) {
        o->cursor = s->last;
        o->cursor_set = 1;
    }
    s->live = 1;
    /* A fetch in flight was sent from an older cursor; its rows above
     * s->last reach this stream too. */
}

static void on_drain(struct http_req *r)
{
    struct ev_stream *s = r->data;
    r->on_drain = NULL;
    if (s && !s->q) stream_page(s);
}

static void page_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct ev_stream *s = arg;
    s->q = NULL;
    if (err) {
        /* The client reconnects with Last-Event-ID and resumes. */
        log_msg(LOG_WARN, "events catch-up failed", "error", err);
        stream_close(s);
        return;
    }
    int n = db_nrows(res), rows = 0;
    long long max = n > 0 ? db_int(res, 0, 3) : 0;
    for (int i = 0; i < n; i++) {
        if (db_isnull(res, i, 0)) continue;
        rows++;
        s->last = db_int(res, i, 0);
        if (stream_send(s, db_str(res, i, 0), db_str(res, i, 1), db_str(res, i, 2)) != 0) return;
    }
    if (rows == EV_PAGE) {
        /* Pace a long replay by the client: the next page once the socket
         * queue drained, so a reader that keeps up is never cut off. */
        if (http_stream_queued(s->r) > EV_PACE_BYTES)
            s->r->on_drain = on_drain;
        else
            stream_page(s);
        return;
    }
    /* Every row up to max, and up to what was already fetched or notified
     * when the page was sent (committed before its snapshot, so counted in
     * max unless pruned since), is behind this stream now. */
    if (s->fresh || max > s->last) s->last = max;
    if (s->q_bound > s->last) s->last = s->q_bound;
    s->fresh = 0;
    if (org_bound(s->org) > s->last) {
        stream_page(s);
        return;
    }
    stream_go_live(s);
}

static void stream_page(struct ev_stream *s)
{
    s->q_bound = org_bound(s->org);
    char last[24];
    snprintf(last, sizeof last, "%lld", s->fresh ? (long long)INT64_MAX : s->last);
    const char *p[] = {s->org->id, last, s->rec[0] ? s->rec : NULL};
    s->q = db_query(app.db, &q_page, 3, p, page_done, s);
    if (!s->q) stream_close(s);
}

/* ---- GET /api/events --------------------------------------------------------- */

/* A Last-Event-ID: digits only, fitting a bigint. */
static int parse_id(const char *v, long long *out)
{
    if (!v || !*v || strlen(v) > 18) return -1;
    for (const char *p = v; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    *out = atoll(v);
    return 0;
}

static void events_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    if (!http_req_alive(r)) {
        http_stream_end(r); /* detached: only frees the request */
        return;
    }
    const char *rec = http_query(r, "recording_id");
    const char *lei = http_header(r, "Last-Event-ID");
    if (!lei || !*lei) lei = http_query(r, "last_event_id");
    long long last = 0;
    int fresh = !lei || !*lei;
    if (rec && !util_is_uuid(rec)) {
        http_reply_error(r, 422, "invalid_request", "recording_id must be a UUID");
        return;
    }
    if (!fresh && parse_id(lei, &last) != 0) {
        http_reply_error(r, 422, "invalid_request", "Last-Event-ID must be an event id");
        return;
    }
    if (!listening) {
        if (db_listen(app.db, "reeld_events", on_notify, on_reconnect, NULL) != 0) {
            http_reply_error(r, 503, "unavailable", "event notifications unavailable");
            return;
        }
        listening = 1;
    }
    if (!heartbeat_ev) {
        heartbeat_ev = event_new(app.base, -1, EV_PERSIST, heartbeat_cb, NULL);
        if (!heartbeat_ev) {
            http_reply_error(r, 500, "internal", "out of memory");
            return;
        }
    }
    struct ev_org *o = org_find(ctx->org_id);
    if (!o) {
        o = calloc(1, sizeof *o);
        if (!o) {
            http_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        snprintf(o->id, sizeof o->id, "%s", ctx->org_id);
        o->next = orgs;
        orgs = o;
    }
    struct ev_stream *s = calloc(1, sizeof *s);
    /* Copy what the stream keeps: after http_sse_start the request's
     * query and headers are gone (ctx->org_id is in o already). */
    if (s && rec) snprintf(s->rec, sizeof s->rec, "%s", rec);
    if (!s || http_sse_start(r) != 0) {
        free(s);
        org_maybe_free(o);
        if (!s)
            http_reply_error(r, 500, "internal", "out of memory");
        else
            http_stream_end(r);
        return;
    }
    s->r = r;
    s->org = o;
    s->last = last;
    s->fresh = fresh;
    s->next = o->streams;
    if (o->streams) o->streams->prev = s;
    o->streams = s;
    r->data = s;
    r->on_abort = on_abort;
    if (nstreams++ == 0) {
        struct timeval tv = {cfg.sse_heartbeat_s, 0};
        event_add(heartbeat_ev, &tv);
    }
    /* An SSE client learns the stream is open before any event. */
    if (http_sse_comment(r, "ok") != 0) return;
    stream_page(s);
}

static void events_get(struct http_req *r)
{
    auth_request(r, 1, events_authed);
}

void api_events_routes(struct http_server *s)
{
    http_route(s, "GET", "/api/events", events_get, NULL);
}
