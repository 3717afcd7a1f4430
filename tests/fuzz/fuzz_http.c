/* libFuzzer target: arbitrary bytes as the client side of one HTTP/1.1
 * connection to the real server (src/http) on a socketpair.
 *
 * One event_base and one http_server live for the whole run (created on
 * the first input). Their routes cover the three body modes:
 *   GET  /ok                   NONE: 200 "ok"
 *   GET  /items/:id/:sub       NONE: echoes the decoded params and ?q=
 *   any  /any/<rest>           NONE: 204 (method "*", tail "*" pattern)
 *   GET  /events               NONE: a short SSE stream (?d= as data; over
 *                              sse_max_queued, the client is dropped)
 *   POST /echo                 JSON: replies with the parsed body
 *   POST /echo/small           JSON, max_body 256: the same
 *   PUT  /upload               STREAM: counts body bytes and replies
 *        ?pause=1              pause before the first piece
 *        ?early=1              answer before reading the body
 *        ?limit=N              refuse (413) past N bytes from on_body
 *        ?chunked=1            answer with a chunked streamed response
 *      a piece whose first byte is a multiple of 4 pauses the flow, and a
 *      zero timer resumes it.
 *
 * Per input: the input is written to the client end in 1-3 pieces (split
 * points derived from the first bytes, so pipelining and partial reads
 * are covered), with loop turns in between; then the client half-closes,
 * everything the server answers is read and discarded, the client end is
 * closed, and the loop runs until no connection remains. Then the reap
 * list is flushed, so each input ends with nothing allocated for it: a
 * connection or a handler-owned request that outlives its input aborts
 * (reported by libFuzzer as a crash with the input saved), and memory
 * that is not freed is reported by LeakSanitizer.
 *
 * The server logs every request at info level to stderr; scripts/fuzz.sh
 * passes -close_fd_mask=2 to keep that quiet (sanitizer reports still
 * show).
 *
 * Build and run: scripts/fuzz.sh [SECONDS] (or `make fuzz`). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/reap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Server timeouts (seconds) and how long an input may take to wind down
 * once the client has closed: past every server timer and the lingering
 * close, yet below the runner's -timeout=10. */
#define FUZZ_TIMEOUT_S 2
#define FUZZ_DRAIN_DEADLINE_MS 8000
#define FUZZ_NONBLOCK_TURNS 4
#define FUZZ_SEND_STALLS 256
#define FUZZ_HALF_CLOSE_TURNS 64

static struct event_base *base;
static struct http_server *srv;
/* STREAM requests handed to the handler and not yet finished by it. */
static long live_uploads;

/* ---- NONE routes ------------------------------------------------------ */

static void h_ok(struct http_req *r)
{
    http_reply(r, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void h_items(struct http_req *r)
{
    struct json_object *o = json_object_new_object();
    const char *q = http_query(r, "q");
    json_object_object_add(o, "id", json_object_new_string(http_param(r, 0)));
    json_object_object_add(o, "sub", json_object_new_string(http_param(r, 1)));
    json_object_object_add(o, "q", q ? json_object_new_string(q) : NULL);
    const char *ua = http_header(r, "User-Agent");
    json_object_object_add(o, "ua", json_object_new_string(ua ? ua : ""));
    http_set_header(r, "X-Echo-Id", http_param(r, 0));
    http_reply_json(r, 200, o);
}

static void h_any(struct http_req *r)
{
    http_reply_empty(r, 204);
}

static void h_events(struct http_req *r)
{
    const char *d = http_query(r, "d");
    if (http_sse_start(r) != 0) {
        http_stream_end(r);
        return;
    }
    http_sse_comment(r, "hello");
    const char *msg = d ? d : "tick";
    http_sse_event(r, "1", "fuzz", msg, strlen(msg));
    http_stream_end(r);
}

/* ---- JSON route ------------------------------------------------------- */

static void h_echo(struct http_req *r)
{
    if (!r->json) {
        http_reply(r, 200, "application/json; charset=utf-8", "null", 4);
        return;
    }
    http_reply_json(r, 200, json_object_get(r->json));
}

/* ---- STREAM route ----------------------------------------------------- */

struct upload {
    struct http_req *req;
    struct event *resume_ev; /* zero timer that resumes a paused body */
    long long bytes, limit;
    int chunked, done;
};

/* Called exactly once per upload, right before the handler finishes the
 * request: after it the request may be freed at the next reap point. */
static void up_release(struct upload *u)
{
    if (u->resume_ev) {
        event_free(u->resume_ev);
        u->resume_ev = NULL;
    }
    u->done = 1;
    live_uploads--;
}

static void up_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upload *u = arg;
    http_body_resume(u->req);
}

static void up_pause(struct upload *u)
{
    if (!u->resume_ev) u->resume_ev = evtimer_new(base, up_resume_cb, u);
    if (!u->resume_ev) return; /* no timer, no pause: the body keeps flowing */
    struct timeval zero = {0, 0};
    http_body_pause(u->req);
    evtimer_add(u->resume_ev, &zero);
}

static void up_reply_count(struct upload *u)
{
    char body[64];
    int n = snprintf(body, sizeof body, "{\"bytes\":%lld}", u->bytes);
    struct http_req *r = u->req;
    up_release(u);
    if (!u->chunked) {
        http_reply(r, 200, "application/json; charset=utf-8", body, (size_t)n);
        return;
    }
    if (http_stream_start(r, 200, "application/json; charset=utf-8", -1) == 0) {
        http_stream_write(r, body, (size_t)n / 2);
        http_stream_write(r, body + n / 2, (size_t)(n - n / 2));
        http_stream_write(r, "", 0);
    }
    http_stream_end(r);
}

static int up_on_body(struct http_req *r, const char *data, size_t len)
{
    struct upload *u = r->data;
    if (u->done) return 0;
    u->bytes += (long long)len;
    if (u->limit >= 0 && u->bytes > u->limit) {
        up_release(u);
        http_reply_error(r, 413, "payload_too_large", "upload over the limit");
        return -1;
    }
    if (len > 0 && (unsigned char)data[0] % 4 == 0) up_pause(u);
    return 0;
}

static void up_on_body_end(struct http_req *r, const char *err)
{
    struct upload *u = r->data;
    if (u->done) return;
    if (err) {
        up_release(u);
        http_reply_error(r, 400, "invalid_request", err);
        return;
    }
    up_reply_count(u);
}

static void up_on_abort(struct http_req *r)
{
    struct upload *u = r->data;
    if (u->done) return;
    up_release(u);
    http_reply_error(r, 400, "invalid_request", "client gone");
}

static void h_upload(struct http_req *r)
{
    struct upload *u = http_req_alloc(r, sizeof *u);
    if (!u) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    u->req = r;
    u->limit = -1;
    const char *lim = http_query(r, "limit");
    if (lim) u->limit = strtoll(lim, NULL, 10);
    u->chunked = http_query(r, "chunked") != NULL;
    r->data = u;
    r->on_body = up_on_body;
    r->on_body_end = up_on_body_end;
    r->on_abort = up_on_abort;
    live_uploads++;
    if (http_query(r, "early")) {
        up_reply_count(u);
        return;
    }
    if (http_query(r, "pause")) up_pause(u);
}

/* ---- harness ---------------------------------------------------------- */

static void init_once(void)
{
    if (srv) return;
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (!base || reap_init(base) != 0) abort();
    struct http_server_opts o = {
        .host = "127.0.0.1",
        .port = 0,
        .max_conns = 16,
        .max_header_bytes = 4096,
        .max_json_bytes = 65536,
        .header_timeout_s = FUZZ_TIMEOUT_S,
        .idle_timeout_s = FUZZ_TIMEOUT_S,
        .body_timeout_s = FUZZ_TIMEOUT_S,
        /* small, so a long ?d= on /events drops the "slow" client from
         * inside the handler */
        .sse_max_queued = 512,
    };
    srv = http_server_new(base, &o);
    if (!srv) abort();
    const struct http_route_opts none = {.body = HTTP_BODY_NONE};
    const struct http_route_opts json = {.body = HTTP_BODY_JSON};
    const struct http_route_opts json_small = {.body = HTTP_BODY_JSON, .max_body = 256};
    const struct http_route_opts stream = {.body = HTTP_BODY_STREAM, .max_body = 1 << 20};
    if (http_route(srv, "GET", "/ok", h_ok, &none) != 0 ||
        http_route(srv, "GET", "/items/:id/:sub", h_items, &none) != 0 ||
        http_route(srv, "*", "/any/*", h_any, &none) != 0 ||
        http_route(srv, "GET", "/events", h_events, &none) != 0 ||
        http_route(srv, "POST", "/echo", h_echo, &json) != 0 ||
        http_route(srv, "POST", "/echo/small", h_echo, &json_small) != 0 ||
        http_route(srv, "PUT", "/upload", h_upload, &stream) != 0)
        abort();
}

static long long conns_open(void)
{
    struct http_stats st;
    http_server_stats(srv, &st);
    return st.conns_open;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads and discards what the server sent. Returns 1 once the server
 * side is closed (EOF or error), else 0. */
static int drain_client(int fd)
{
    char buf[16384];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

/* A few nonblocking loop turns, reading the answers in between. */
static void pump(int fd, int *eof)
{
    for (int i = 0; i < FUZZ_NONBLOCK_TURNS; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (!*eof && drain_client(fd)) *eof = 1;
    }
}

/* Writes one piece, turning the loop while the socket is full. Gives up
 * when the server has closed or stopped reading for good. */
static void send_piece(int fd, const uint8_t *p, size_t len, int *eof)
{
    int stalls = 0;
    while (len > 0 && stalls < FUZZ_SEND_STALLS) {
        ssize_t n = send(fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            stalls = 0;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            stalls++;
        } else {
            return; /* EPIPE / ECONNRESET: the server is gone */
        }
        pump(fd, eof);
    }
    pump(fd, eof);
}

/* Splits the input at up to two points chosen by its first bytes (they
 * stay part of the request: the seeds remain plain HTTP). Returns the
 * number of pieces; cut[] holds the piece boundaries. */
static int split_points(const uint8_t *data, size_t size, size_t cut[3])
{
    if (size < 4) {
        cut[0] = size;
        return 1;
    }
    unsigned h = (unsigned)data[0] * 31u + (unsigned)data[1] * 7u + data[2] + data[3];
    int pieces = 1 + (int)(h % 3);
    size_t a = 1 + ((size_t)data[1] << 8 | data[2]) % (size - 1);
    size_t b = 1 + ((size_t)data[3] << 8 | data[0]) % (size - 1);
    if (a > b) {
        size_t t = a;
        a = b;
        b = t;
    }
    if (pieces == 1) {
        cut[0] = size;
    } else if (pieces == 2) {
        cut[0] = a;
        cut[1] = size;
    } else {
        cut[0] = a;
        cut[1] = b;
        cut[2] = size;
    }
    return pieces;
}

/* After the client closed: turn the loop until the server dropped the
 * connection. Whatever is still there after the deadline (past every
 * server timer) is stuck for good. Once no connection remains, every
 * request the handlers took must be finished: closing a connection tells
 * its handler through on_abort (or on_body_end), synchronously. */
static void wind_down(void)
{
    long long deadline = now_ms() + FUZZ_DRAIN_DEADLINE_MS;
    while (conns_open() > 0 && now_ms() < deadline) {
        if (event_base_loop(base, EVLOOP_ONCE) != 0)
            event_base_loop(base, EVLOOP_NONBLOCK); /* nothing pending: spin */
    }
    if (conns_open() > 0) {
        fprintf(stderr, "fuzz_http: %lld connection(s) still open after the client closed\n",
                conns_open());
        abort();
    }
    /* bufferevents are finalized, and the reap event runs, on a later turn */
    event_base_loop(base, EVLOOP_NONBLOCK);
    reap_flush();
    event_base_loop(base, EVLOOP_NONBLOCK);
    reap_flush();
    if (live_uploads > 0) {
        fprintf(stderr,
                "fuzz_http: %ld upload request(s) taken by the handler were never finished by "
                "it, and no connection remains to tell it (on_abort/on_body_end never ran)\n",
                live_uploads);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    if (http_server_adopt(srv, sv[0]) != 0) {
        close(sv[1]);
        return 0;
    }
    int client = sv[1];
    int eof = 0;
    size_t cut[3];
    int pieces = split_points(data, size, cut);
    size_t off = 0;
    for (int i = 0; i < pieces && !eof; i++) {
        send_piece(client, data + off, cut[i] - off, &eof);
        off = cut[i];
    }
    shutdown(client, SHUT_WR);
    for (int i = 0; i < FUZZ_HALF_CLOSE_TURNS && !eof && conns_open() > 0; i++)
        pump(client, &eof);
    close(client);
    wind_down();
    return 0;
}
