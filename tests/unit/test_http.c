/* The HTTP server's streaming paths, in process: a server on a loopback
 * port driven by the loop in this thread, clients with blocking sockets
 * in a second thread. The SSE tests look at the connection's internals
 * (src/http/http_int.h) from the server's side. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "../../src/http/http_int.h"
#include "reeld/http.h"
#include "reeld/reap.h"
#include "t.h"

static struct event_base *base;
static struct http_server *srv;
static int port;
static int aborts, sse_dropped;

/* ---- handlers ---------------------------------------------------------- */

struct stream_state {
    struct http_req *r;
    long long bytes;
    int pieces, pauses;
    struct event *ev;
};

static void resume_cb(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    struct stream_state *st = arg;
    http_body_resume(st->r);
}

static int stream_body(struct http_req *r, const char *data, size_t len)
{
    struct stream_state *st = r->data;
    (void)data;
    if (len > HTTP_BODY_PIECE) return -1; /* the contract: bounded pieces */
    st->bytes += (long long)len;
    st->pieces++;
    if (st->pieces % 4 == 1) { /* pause now and then; resume from a timer */
        st->pauses++;
        http_body_pause(r);
        struct timeval tv = {0, 2000};
        evtimer_add(st->ev, &tv);
    }
    return 0;
}

static void stream_end(struct http_req *r, const char *err)
{
    struct stream_state *st = r->data;
    event_free(st->ev);
    st->ev = NULL;
    if (err) return; /* on_abort follows */
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%lld %d", st->bytes, st->pauses > 0);
    http_reply(r, 200, "text/plain", buf, (size_t)n);
}

static void stream_abort(struct http_req *r)
{
    aborts++;
    http_reply_empty(r, 499);
}

static void h_stream(struct http_req *r)
{
    struct stream_state *st = http_req_alloc(r, sizeof *st);
    st->r = r;
    st->ev = evtimer_new(base, resume_cb, st);
    r->data = st;
    r->on_body = stream_body;
    r->on_body_end = stream_end;
    r->on_abort = stream_abort;
}

static void h_chunked(struct http_req *r)
{
    http_stream_start(r, 200, "text/plain", -1);
    for (int i = 0; i < 3; i++)
        http_stream_write(r, "hello ", 6);
    http_stream_end(r);
}

/* Promises 100 bytes, sends 10, ends. */
static void h_short(struct http_req *r)
{
    http_stream_start(r, 200, "text/plain", 100);
    http_stream_write(r, "0123456789", 10);
    http_stream_end(r);
}

static void h_param(struct http_req *r)
{
    char buf[256];
    const char *q = http_query(r, "q");
    int n =
        snprintf(buf, sizeof buf, "%s|%s|%s", http_param(r, 0), http_param(r, 1), q ? q : "(none)");
    http_reply(r, 200, "text/plain", buf, (size_t)n);
}

/* SSE: a timer pushes events forever; a client that stops reading is
 * dropped once its queue passes the bound. */
struct sse_state {
    struct http_req *r;
    struct event *ev;
};

static volatile int sse_was_stream_mode;

static void sse_abort(struct http_req *r)
{
    struct sse_state *st = r->data;
    sse_dropped++;
    event_free(st->ev);
    free(st);
    http_stream_end(r);
}

static void sse_tick(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    struct sse_state *st = arg;
    if (st->r->priv->conn && st->r->priv->conn->stream_mode) sse_was_stream_mode = 1;
    static char payload[4096];
    memset(payload, 'x', sizeof payload - 1);
    for (int i = 0; i < 8; i++)
        if (http_sse_event(st->r, "1", "tick", payload, sizeof payload - 1) != 0)
            return; /* dropped: sse_abort ran */
    struct timeval tv = {0, 1000};
    evtimer_add(st->ev, &tv);
}

static void h_sse(struct http_req *r)
{
    struct sse_state *st = calloc(1, sizeof *st); /* request memory goes with http_sse_start */
    st->r = r;
    st->ev = evtimer_new(base, sse_tick, st);
    r->data = st;
    r->on_abort = sse_abort;
    http_sse_start(r);
    http_sse_comment(r, "hello");
    struct timeval tv = {0, 1000};
    evtimer_add(st->ev, &tv);
}

/* Waits on a timer, so a client can hang up first. */
static void late_reply(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    struct http_req *r = arg;
    http_reply(r, 200, "text/plain", "late", 4);
}

static void slow_abort(struct http_req *r)
{
    aborts++;
    (void)r; /* the timer's reply still comes and frees the request */
}

static void h_slow(struct http_req *r)
{
    r->on_abort = slow_abort;
    struct timeval tv = {0, 300000};
    event_base_once(base, -1, EV_TIMEOUT, late_reply, r, &tv);
}

/* The stream contract: after http_sse_start the request's fields are
 * gone, and at the reap point its memory and the connection's request
 * machinery; a write with nothing queued goes out without a write event;
 * the stream's end returns the connection to keep-alive. */
struct probe_state {
    struct http_req *r;
    struct event *ev;
    char tag[32];
};
static volatile int probe_fields_gone, probe_shed, probe_direct, probe_ran;

static int arena_blocks(const struct http_req *r)
{
    int n = 0;
    for (const struct arena_blk *b = r->priv->arena; b; b = b->next)
        n++;
    return n;
}

static void probe_abort(struct http_req *r)
{
    struct probe_state *st = r->data;
    event_free(st->ev);
    free(st);
    http_stream_end(r);
}

static void probe_tick(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    struct probe_state *st = arg;
    struct http_req *r = st->r;
    struct http_req_priv *p = r->priv;
    struct http_conn *c = p->conn;
    probe_ran = 1;
    probe_shed = c && c->stream_mode && !c->bev && !c->acc && !c->timer && !c->kick &&
                 !c->body_ev && !c->out && !p->out_hdrs && !p->body && arena_blocks(r) == 1 &&
                 r->path && strcmp(r->path, "/probe") == 0;
    http_sse_event(r, NULL, "tag", st->tag, strlen(st->tag));
    probe_direct = c && !c->out && (!c->wr_ev || !event_pending(c->wr_ev, EV_WRITE, NULL)) &&
                   http_stream_queued(r) == 0;
    event_free(st->ev);
    free(st);
    r->data = NULL;
    r->on_abort = NULL;
    http_stream_end(r);
}

static void h_probe(struct http_req *r)
{
    struct probe_state *st = calloc(1, sizeof *st);
    const char *tag = http_header(r, "X-Tag");
    const char *q = http_query(r, "q"); /* request memory, released with the rest */
    snprintf(st->tag, sizeof st->tag, "%s%s", tag ? tag : "", q ? q : "");
    st->r = r;
    st->ev = evtimer_new(base, probe_tick, st);
    r->data = st;
    r->on_abort = probe_abort;
    http_sse_start(r);
    probe_fields_gone = http_header(r, "X-Tag") == NULL && http_query(r, "q") == NULL &&
                        http_param(r, 0) == NULL && r->nheaders == 0;
    struct timeval tv = {0, 30000};
    evtimer_add(st->ev, &tv);
}

/* Backpressure on a stream: a burst the socket cannot take is queued,
 * on_drain runs once it drains, and the stream can end with bytes still
 * queued. */
#define DRAIN_MAX 2000
static volatile int drain_queued, drain_calls, drain_sent;

static void drain_on_drain(struct http_req *r)
{
    drain_calls++;
    r->on_drain = NULL;
    r->on_abort = NULL;
    http_sse_event(r, NULL, "done", "x", 1);
    http_stream_end(r);
}

static void drain_abort(struct http_req *r)
{
    http_stream_end(r);
}

static void drain_fill(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    struct http_req *r = arg;
    struct http_conn *c = r->priv->conn;
    if (!c) return; /* gone: drain_abort ended it */
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    static char payload[1000];
    memset(payload, 'y', sizeof payload);
    /* until the socket stops taking it all (far below the drop bound) */
    for (int i = 0; i < DRAIN_MAX && http_stream_queued(r) == 0; i++) {
        if (http_sse_event(r, NULL, "big", payload, sizeof payload) != 0) return;
        drain_sent++;
    }
    drain_queued = http_stream_queued(r) > 0 && c->wr_ev && event_pending(c->wr_ev, EV_WRITE, NULL);
    r->on_drain = drain_on_drain;
}

static void h_drain(struct http_req *r)
{
    r->on_abort = drain_abort;
    http_sse_start(r);
    struct timeval tv = {0, 30000};
    event_base_once(base, -1, EV_TIMEOUT, drain_fill, r, &tv);
}

/* ---- client side (second thread) ---------------------------------------- */

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

/* Reads until close; returns bytes read into buf (NUL-terminated).
 * last_eof tells whether it ended on the server's close (not a timeout). */
static int last_eof;
static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    last_eof = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        last_eof = r == 0;
        if (r <= 0) break;
        n += (size_t)r;
        if (n + 1 >= cap) break;
    }
    buf[n] = '\0';
    return n;
}

/* Reads until the end of a chunked body ("0\r\n\r\n"), the server's
 * close or the receive timeout; returns bytes read (NUL-terminated). */
static size_t read_chunked_end(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    while (n + 1 < cap && !strstr(buf, "\r\n0\r\n\r\n")) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = '\0';
    }
    return n;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static char big[3 * 1024 * 1024 + 17];
static char resp[1 << 16];

static void test_content_length_body_streams_in_bounded_pieces_with_pauses(void)
{
    int fd = dial();
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     sizeof big);
    send_all(fd, head, (size_t)n);
    send_all(fd, big, sizeof big);
    read_all(fd, resp, sizeof resp);
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "\r\n\r\n%zu 1", sizeof big);
    CHECK(strstr(resp, "HTTP/1.1 200") == resp);
    CHECK(strstr(resp, want) != NULL);
}

static void test_chunked_request_body_streams(void)
{
    int fd = dial();
    const char *head = "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n";
    send_all(fd, head, strlen(head));
    long long total = 0;
    for (int i = 0; i < 40; i++) {
        char ch[32];
        size_t len = 1000 + (size_t)i * 997;
        int n = snprintf(ch, sizeof ch, "%zx\r\n", len);
        send_all(fd, ch, (size_t)n);
        send_all(fd, big, len);
        send_all(fd, "\r\n", 2);
        total += (long long)len;
    }
    send_all(fd, "0\r\n\r\n", 5);
    read_all(fd, resp, sizeof resp);
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "\r\n\r\n%lld ", total);
    CHECK(strstr(resp, want) != NULL);
}

static void test_expect_continue_on_stream_route(void)
{
    int fd = dial();
    const char *head = "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    send_all(fd, head, strlen(head));
    char first[64] = {0};
    recv(fd, first, sizeof first - 1, 0);
    CHECK(strncmp(first, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    send_all(fd, "hello", 5);
    read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strstr(resp, "\r\n\r\n5 ") != NULL);
}

static void test_chunked_response_is_framed(void)
{
    int fd = dial();
    const char *req = "GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strstr(resp, "Transfer-Encoding: chunked") != NULL);
    CHECK(strstr(resp, "\r\n\r\n6\r\nhello \r\n6\r\nhello \r\n6\r\nhello \r\n0\r\n\r\n") != NULL);
}

static void test_short_content_length_stream_closes_the_connection(void)
{
    int fd = dial();
    const char *req = "GET /short HTTP/1.1\r\nHost: x\r\n\r\n"; /* keep-alive */
    send_all(fd, req, strlen(req));
    size_t n = read_all(fd, resp, sizeof resp); /* returns only when the server closes */
    close(fd);
    CHECK(last_eof); /* closed by the server, not our receive timeout */
    CHECK(strstr(resp, "Content-Length: 100\r\n") != NULL);
    CHECK(n > 10 && strcmp(resp + n - 10, "0123456789") == 0);
}

static void test_head_sends_no_body(void)
{
    int fd = dial();
    const char *req = "HEAD /p/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    size_t n = read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strstr(resp, "Content-Length: 10\r\n") != NULL); /* "a|b|(none)" */
    CHECK(n > 4 && strcmp(resp + n - 4, "\r\n\r\n") == 0);
}

static void test_router_params_are_decoded(void)
{
    int fd = dial();
    const char *req = "GET /p/a%20b/c?x=1&q=hello+w%C3%B6rld HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strstr(resp, "\r\n\r\na b|c|hello w\xc3\xb6rld") != NULL);
}

static void test_bad_percent_escape_is_404(void)
{
    int fd = dial();
    const char *req = "GET /p/a%zz/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strncmp(resp, "HTTP/1.1 404", 12) == 0);
}

static void test_sse_client_that_stops_reading_is_dropped(void)
{
    int before = sse_dropped;
    int fd = dial();
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const char *req = "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    send_all(fd, req, strlen(req));
    char first[512] = {0};
    recv(fd, first, sizeof first - 1, 0);
    CHECK(strstr(first, "text/event-stream") != NULL);
    /* stop reading; the server must cut us off rather than buffer */
    for (int i = 0; i < 100 && sse_dropped == before; i++)
        usleep(50000);
    CHECK(sse_dropped == before + 1);
    CHECK(sse_was_stream_mode); /* cut while in stream mode, not buffered */
    struct http_stats st;
    http_server_stats(srv, &st);
    CHECK(st.streams_open == 0); /* the gauge comes back down */
    close(fd);
}

static void test_disconnect_while_waiting_calls_on_abort(void)
{
    int before = aborts;
    int fd = dial();
    const char *req = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    usleep(50000);
    close(fd);
    for (int i = 0; i < 40 && aborts == before; i++)
        usleep(25000);
    CHECK(aborts == before + 1);
    usleep(400000); /* the late reply lands on a detached request */
}

static void test_disconnect_mid_body_calls_on_abort(void)
{
    int before = aborts;
    int fd = dial();
    const char *head = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    send_all(fd, head, strlen(head));
    send_all(fd, big, 100000);
    usleep(50000);
    close(fd);
    for (int i = 0; i < 40 && aborts == before; i++)
        usleep(25000);
    CHECK(aborts == before + 1);
}

static void test_malformed_chunked_body_aborts_the_streaming_handler(void)
{
    int before = aborts;
    int fd = dial();
    const char *req = "POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "zz\r\n";
    send_all(fd, req, strlen(req));
    read_all(fd, resp, sizeof resp); /* the server closes */
    close(fd);
    for (int i = 0; i < 40 && aborts == before; i++)
        usleep(25000);
    CHECK(aborts == before + 1);
}

static void test_sse_stream_releases_the_request_and_writes_directly(void)
{
    int fd = dial();
    /* twice on one connection: the second stream reuses the first's events */
    for (int i = 0; i < 2; i++) {
        probe_ran = probe_fields_gone = probe_shed = probe_direct = 0;
        const char *req = i == 0 ? "GET /probe?q=42 HTTP/1.1\r\nHost: x\r\nX-Tag: hello\r\n\r\n"
                                 : "GET /probe?q=7 HTTP/1.1\r\nHost: x\r\nX-Tag: again\r\n\r\n";
        send_all(fd, req, strlen(req));
        read_chunked_end(fd, resp, sizeof resp);
        CHECK(strstr(resp, "HTTP/1.1 200") == resp);
        CHECK(strstr(resp, "Connection: close") == NULL);
        CHECK(strstr(resp, i == 0 ? "event: tag\ndata: hello42\n\n"
                                  : "event: tag\ndata: again7\n\n") != NULL);
        CHECK(probe_ran);
        CHECK(probe_fields_gone);
        CHECK(probe_shed);
        CHECK(probe_direct);
    }
    /* the same connection serves the next request */
    const char *next = "GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, next, strlen(next));
    read_all(fd, resp, sizeof resp);
    close(fd);
    CHECK(strstr(resp, "HTTP/1.1 200") == resp);
    CHECK(strstr(resp, "6\r\nhello \r\n6\r\nhello \r\n6\r\nhello \r\n0\r\n\r\n") != NULL);
    struct http_stats st;
    http_server_stats(srv, &st);
    CHECK(st.streams_open == 0);
}

/* What a client sends on a stream is discarded, and the connection closes
 * once the stream ends (no answer to it, no parse error). */
static void test_input_on_a_stream_is_discarded_then_closes(void)
{
    int fd = dial();
    const char *req = "GET /probe HTTP/1.1\r\nHost: x\r\nX-Tag: in\r\n\r\n";
    send_all(fd, req, strlen(req));
    char first[512] = {0};
    recv(fd, first, sizeof first - 1, 0); /* the head: the stream is on */
    CHECK(strstr(first, "text/event-stream") != NULL);
    usleep(5000);
    const char *more = "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, more, strlen(more));
    read_all(fd, resp, sizeof resp); /* until the server closes */
    close(fd);
    CHECK(last_eof);
    CHECK(strstr(resp, "event: tag\ndata: in\n\n") != NULL || strstr(first, "data: in") != NULL);
    CHECK(strstr(resp, "HTTP/1.1") == NULL); /* nothing answered the bytes sent on the stream */
}

static char drain_resp[DRAIN_MAX * 1040 + 4096];

static void test_sse_stream_backpressure_runs_on_drain(void)
{
    int fd = dial();
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const char *req = "GET /drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    usleep(200000); /* let the burst fill the socket */
    read_chunked_end(fd, drain_resp, sizeof drain_resp);
    close(fd);
    CHECK(drain_queued);
    CHECK(drain_calls == 1);
    CHECK(drain_sent > 0 && count_of(drain_resp, "event: big\n") == drain_sent);
    CHECK(strstr(drain_resp, "event: done\ndata: x\n\n\r\n0\r\n\r\n") != NULL);
}

static void test_sse_format_once(void)
{
    size_t n = 0;
    char *f = http_sse_format("7", "status", "a\nb", 3, &n);
    CHECK(f != NULL);
    if (!f) return;
    CHECK(n == strlen("id: 7\nevent: status\ndata: a\ndata: b\n\n"));
    CHECK(memcmp(f, "id: 7\nevent: status\ndata: a\ndata: b\n\n", n) == 0);
    free(f);
    f = http_sse_format(NULL, NULL, "", 0, &n);
    CHECK(f && n == 8 && memcmp(f, "data: \n\n", 8) == 0);
    free(f);
}

static volatile int client_done;

static void *client_main(void *arg)
{
    (void)arg;
    memset(big, 'b', sizeof big);
    TEST(test_content_length_body_streams_in_bounded_pieces_with_pauses);
    TEST(test_chunked_request_body_streams);
    TEST(test_expect_continue_on_stream_route);
    TEST(test_chunked_response_is_framed);
    TEST(test_short_content_length_stream_closes_the_connection);
    TEST(test_head_sends_no_body);
    TEST(test_router_params_are_decoded);
    TEST(test_bad_percent_escape_is_404);
    TEST(test_sse_client_that_stops_reading_is_dropped);
    TEST(test_sse_stream_releases_the_request_and_writes_directly);
    TEST(test_sse_stream_backpressure_runs_on_drain);
    TEST(test_input_on_a_stream_is_discarded_then_closes);
    TEST(test_sse_format_once);
    TEST(test_disconnect_while_waiting_calls_on_abort);
    TEST(test_disconnect_mid_body_calls_on_abort);
    TEST(test_malformed_chunked_body_aborts_the_streaming_handler);
    client_done = 1;
    return NULL;
}

static void poll_done(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    (void)arg;
    if (client_done) event_base_loopexit(base, NULL);
}

int main(void)
{
    base = event_base_new();
    reap_init(base);
    struct http_server_opts o = {.host = "127.0.0.1",
                                 .port = 0,
                                 .max_conns = 100,
                                 .max_header_bytes = 8192,
                                 .max_json_bytes = 65536,
                                 .header_timeout_s = 5,
                                 .idle_timeout_s = 30, /* longer than the clients' 10 s waits */
                                 .body_timeout_s = 5,
                                 .sse_max_queued = 65536};
    srv = http_server_new(base, &o);
    struct http_route_opts stream = {.body = HTTP_BODY_STREAM};
    http_route(srv, "POST", "/stream", h_stream, &stream);
    http_route(srv, "GET", "/chunked", h_chunked, NULL);
    http_route(srv, "GET", "/short", h_short, NULL);
    http_route(srv, "GET", "/p/:a/:b", h_param, NULL);
    http_route(srv, "GET", "/sse", h_sse, NULL);
    http_route(srv, "GET", "/probe", h_probe, NULL);
    http_route(srv, "GET", "/drain", h_drain, NULL);
    http_route(srv, "GET", "/slow", h_slow, NULL);
    if (http_server_listen(srv) != 0) return 1;
    port = http_server_port(srv);
    pthread_t th;
    pthread_create(&th, NULL, client_main, NULL);
    struct event *poll = event_new(base, -1, EV_PERSIST, poll_done, NULL);
    struct timeval tv = {0, 20000};
    event_add(poll, &tv);
    event_base_dispatch(base);
    pthread_join(th, NULL);
    event_free(poll);
    http_server_free(srv);
    reap_flush();
    event_base_free(base);
    T_EXIT();
}
