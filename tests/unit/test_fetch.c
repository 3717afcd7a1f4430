/* fetch against a real HTTP server on loopback: libevent's evhttp bound to
 * 127.0.0.1 on a kernel-chosen port, in the same event_base as the client.
 * Plus the pure retry helpers. Waits have generous safety deadlines only;
 * nothing asserts on timing. */
#include "reeld/fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "t.h"
#include "t_loop.h"

#define BIG_LEN ((size_t)5 << 20)
#define DRIP_PIECES 20
#define DRIP_PIECE_LEN 10 /* "piece-NNN\n" */
#define SLOW_MS 1000
#define WAIT_MS 15000

static struct event_base *base;
static struct evhttp *http;
static int port;
static int server_pending; /* delayed replies still owed by the server */
static unsigned char *big;

static unsigned char big_byte(size_t i)
{
    return (unsigned char)((i * 31 + i / 4099) & 0xff);
}

static void url_of(char *out, size_t n, const char *path)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", port, path);
}

/* ---- the server --------------------------------------------------------- */

static void reply(struct evhttp_request *req, int code, const char *ctype, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    if (ctype) evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, "X", b);
    evbuffer_free(b);
}

static void h_ok(struct evhttp_request *req, void *arg)
{
    (void)arg;
    reply(req, 200, "application/json", "{\"ok\":true}");
}

static void h_big(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_reference(b, big, BIG_LEN, NULL, NULL);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

struct slow {
    struct evhttp_request *req;
    struct event *ev;
};

static void slow_fire(evutil_socket_t fd, short what, void *arg)
{
    struct slow *s = arg;
    (void)fd;
    (void)what;
    reply(s->req, 200, "text/plain", "slow");
    event_free(s->ev);
    free(s);
    server_pending--;
}

static void h_slow(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct slow *s = calloc(1, sizeof *s);
    s->req = req;
    s->ev = evtimer_new(base, slow_fire, s);
    struct timeval tv = {SLOW_MS / 1000, (SLOW_MS % 1000) * 1000};
    evtimer_add(s->ev, &tv);
    server_pending++;
}

static void h_429(struct evhttp_request *req, void *arg)
{
    (void)arg;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "2");
    reply(req, 429, "application/json", "{}");
}

static void h_ms(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "retry-after-ms", "1500");
    evhttp_add_header(h, "Retry-After", "2");
    reply(req, 429, "application/json", "{}");
}

static void h_500(struct evhttp_request *req, void *arg)
{
    (void)arg;
    reply(req, 500, "text/plain", "boom");
}

static void h_echo(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *hdr = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Test");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s|%s|",
                        evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST" : "OTHER",
                        hdr ? hdr : "");
    evbuffer_add_buffer(b, in);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* Answers "<Content-Type>|<body>" for a multipart upload. */
static void h_form(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s|", ct ? ct : "");
    evbuffer_add_buffer(b, evhttp_request_get_input_buffer(req));
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* Chunked reply, one piece per timer tick. The client may go away
 * mid-stream (cancel, max_body): the close callback stops the ticks. */
struct drip {
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    struct event *ev;
    int sent;
};

static void drip_release(struct drip *d)
{
    event_free(d->ev);
    free(d);
    server_pending--;
}

static void drip_closed(struct evhttp_connection *conn, void *arg)
{
    struct drip *d = arg;
    (void)conn;
    /* A request detached from its dead connection is ours to free. */
    if (evhttp_request_get_connection(d->req) == NULL) evhttp_request_free(d->req);
    drip_release(d);
}

static void drip_tick(evutil_socket_t fd, short what, void *arg)
{
    struct drip *d = arg;
    (void)fd;
    (void)what;
    if (d->sent == DRIP_PIECES) {
        evhttp_connection_set_closecb(d->conn, NULL, NULL);
        evhttp_send_reply_end(d->req);
        drip_release(d);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "piece-%03d\n", d->sent++);
    evhttp_send_reply_chunk(d->req, b);
    evbuffer_free(b);
}

static void h_drip(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct drip *d = calloc(1, sizeof *d);
    d->req = req;
    d->conn = evhttp_request_get_connection(req);
    d->ev = event_new(base, -1, EV_PERSIST, drip_tick, d);
    struct timeval tv = {0, 10000};
    evtimer_add(d->ev, &tv);
    evhttp_connection_set_closecb(d->conn, drip_closed, d);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply_start(req, 200, "OK");
    server_pending++;
}

static int server_start(void)
{
    http = evhttp_new(base);
    if (!http) return -1;
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    if (!bs) return -1;
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len) < 0) return -1;
    port = ntohs(sin.sin_port);
    evhttp_set_cb(http, "/ok", h_ok, NULL);
    evhttp_set_cb(http, "/big", h_big, NULL);
    evhttp_set_cb(http, "/slow", h_slow, NULL);
    evhttp_set_cb(http, "/429", h_429, NULL);
    evhttp_set_cb(http, "/ms", h_ms, NULL);
    evhttp_set_cb(http, "/500", h_500, NULL);
    evhttp_set_cb(http, "/echo", h_echo, NULL);
    evhttp_set_cb(http, "/drip", h_drip, NULL);
    evhttp_set_cb(http, "/form", h_form, NULL);
    return 0;
}

/* ---- client helpers ----------------------------------------------------- */

static struct fetch *f;
static int in_start; /* set around fetch_start: done must never run there */

struct result {
    int calls;
    int during_start;
    long status;
    char *body;
    size_t body_len;
    char *ctype;
    int64_t ra;
    char *err;
    int timed_out;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void on_done(void *arg, const struct fetch_resp *resp)
{
    struct result *r = arg;
    r->calls++;
    r->during_start |= in_start;
    r->status = resp->status;
    free(r->body);
    r->body = malloc(resp->body_len + 1);
    memcpy(r->body, resp->body, resp->body_len + 1);
    r->body_len = resp->body_len;
    free(r->ctype);
    r->ctype = dup_or_null(resp->content_type);
    r->ra = resp->retry_after_ms;
    free(r->err);
    r->err = dup_or_null(resp->err);
    r->timed_out = resp->timed_out;
}

static void result_clear(struct result *r)
{
    free(r->body);
    free(r->ctype);
    free(r->err);
    memset(r, 0, sizeof *r);
}

static struct fetch_req *start(const struct fetch_opts *o, fetch_done_cb done, void *arg)
{
    in_start = 1;
    struct fetch_req *req = fetch_start(f, o, done, arg);
    in_start = 0;
    return req;
}

/* GET path in collected mode and wait for the outcome. */
static void get(const char *path, struct result *res)
{
    char url[128];
    url_of(url, sizeof url, path);
    struct fetch_opts o = {.url = url};
    CHECK(start(&o, on_done, res) != NULL);
    CHECK(t_run_until(base, &res->calls, WAIT_MS));
}

/* ---- transfer tests ----------------------------------------------------- */

static void get_ok_reports_status_body_and_content_type(void)
{
    struct result res = {0};
    get("/ok", &res);
    CHECK(res.calls == 1);
    CHECK(res.during_start == 0);
    CHECK(res.err == NULL);
    CHECK(res.status == 200);
    CHECK_STR(res.body, "{\"ok\":true}");
    CHECK(res.body_len == strlen("{\"ok\":true}"));
    CHECK_STR(res.ctype, "application/json");
    CHECK(res.ra == -1);
    CHECK(fetch_active(f) == 0);
    result_clear(&res);
}

static void post_sends_body_and_custom_header(void)
{
    struct result res = {0};
    char url[128];
    url_of(url, sizeof url, "/echo");
    const char *hdrs[] = {"X-Test: hello there", "Content-Type: application/json", NULL};
    static const char body[] = "{\"a\":1,\"b\":\"\\u0000\"}";
    struct fetch_opts o = {.url = url, .headers = hdrs, .body = body, .body_len = sizeof body - 1};
    CHECK(start(&o, on_done, &res) != NULL);
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.err == NULL);
    CHECK(res.status == 200);
    CHECK_STR(res.body, "POST|hello there|{\"a\":1,\"b\":\"\\u0000\"}");
    result_clear(&res);
}

static void post_large_body_is_sent_whole(void)
{
    struct result res = {0};
    char url[128];
    url_of(url, sizeof url, "/echo");
    size_t n = 300000;
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + i % 26);
    struct fetch_opts o = {.url = url, .method = "POST", .body = body, .body_len = n};
    CHECK(start(&o, on_done, &res) != NULL);
    free(body); /* copied by fetch_start */
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.err == NULL);
    CHECK(res.body_len == n + strlen("POST||"));
    CHECK(res.body_len > 6 && res.body[6] == 'a' &&
          res.body[res.body_len - 1] == (char)('a' + (n - 1) % 26));
    result_clear(&res);
}

static void multipart_sends_data_and_file_parts(void)
{
    struct result res = {0};
    char url[128], path[] = "/tmp/reeld-fetch-XXXXXX";
    url_of(url, sizeof url, "/form");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    /* Binary content, NULs included, bigger than one read. */
    size_t flen = 100000;
    unsigned char *fdata = malloc(flen);
    for (size_t i = 0; i < flen; i++)
        fdata[i] = big_byte(i);
    CHECK(write(fd, fdata, flen) == (ssize_t)flen);
    close(fd);
    char model[] = "whisper-1";
    struct fetch_part parts[] = {
        {.name = "file", .path = path, .filename = "audio.mp3", .content_type = "audio/mpeg"},
        {.name = "model", .data = model, .data_len = strlen(model)},
        {.name = "timestamp_granularities[]", .data = "word", .data_len = 4},
    };
    struct fetch_opts o = {.url = url, .parts = parts, .nparts = 3};
    CHECK(start(&o, on_done, &res) != NULL);
    memset(model, 'x', strlen(model)); /* copied by fetch_start */
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.err == NULL);
    CHECK(res.status == 200);
    const char *bnd = res.body ? strstr(res.body, "boundary=") : NULL;
    CHECK(res.body && strncmp(res.body, "multipart/form-data; boundary=", 30) == 0 && bnd);
    if (bnd && res.body) {
        bnd += strlen("boundary=");
        const char *bar = strchr(bnd, '|');
        CHECK(bar != NULL);
        char b[128];
        snprintf(b, sizeof b, "--%.*s", (int)(bar - bnd), bnd);
        const char *body = bar + 1;
        size_t blen = res.body_len - (size_t)(body - res.body);
        CHECK(blen > flen && memcmp(body, b, strlen(b)) == 0);
        const char *h1 = "Content-Disposition: form-data; name=\"file\"; filename=\"audio.mp3\"\r\n"
                         "Content-Type: audio/mpeg\r\n\r\n";
        const char *p1 = memmem(body, blen, h1, strlen(h1));
        CHECK(p1 != NULL);
        if (p1) {
            const char *c = p1 + strlen(h1);
            CHECK((size_t)(body + blen - c) > flen + 2 && memcmp(c, fdata, flen) == 0 &&
                  memcmp(c + flen, "\r\n", 2) == 0);
        }
        const char *f2 = "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n";
        CHECK(memmem(body, blen, f2, strlen(f2)) != NULL);
        const char *f3 = "name=\"timestamp_granularities[]\"\r\n\r\nword\r\n";
        CHECK(memmem(body, blen, f3, strlen(f3)) != NULL);
        char end[160];
        snprintf(end, sizeof end, "%s--\r\n", b);
        CHECK(blen >= strlen(end) && memcmp(body + blen - strlen(end), end, strlen(end)) == 0);
    }
    result_clear(&res);

    /* A file that cannot be read is bad input: no request, no callback. */
    unlink(path);
    CHECK(start(&o, on_done, &res) == NULL);

    /* Bad parts are refused at start, with no callback. */
    struct fetch_part noname = {.data = "x", .data_len = 1};
    struct fetch_part both = {.name = "a", .data = "x", .data_len = 1, .path = path};
    struct fetch_part neither = {.name = "a"};
    struct fetch_opts bad = {.url = url, .parts = &noname, .nparts = 1};
    CHECK(start(&bad, on_done, &res) == NULL);
    bad.parts = &both;
    CHECK(start(&bad, on_done, &res) == NULL);
    bad.parts = &neither;
    CHECK(start(&bad, on_done, &res) == NULL);
    struct fetch_opts with_body = {
        .url = url, .body = "x", .body_len = 1, .parts = parts, .nparts = 1};
    CHECK(start(&with_body, on_done, &res) == NULL);
    t_run_for(base, 50);
    CHECK(res.calls == 0);
    CHECK(fetch_active(f) == 0);
    free(fdata);
}

static void status_429_carries_retry_after_seconds(void)
{
    struct result res = {0};
    get("/429", &res);
    CHECK(res.err == NULL);
    CHECK(res.status == 429);
    CHECK(res.ra == 2000);
    result_clear(&res);
}

static void retry_after_ms_header_wins(void)
{
    struct result res = {0};
    get("/ms", &res);
    CHECK(res.status == 429);
    CHECK(res.ra == 1500);
    result_clear(&res);
}

static void status_500_is_a_response_not_an_error(void)
{
    struct result res = {0};
    get("/500", &res);
    CHECK(res.err == NULL);
    CHECK(res.status == 500);
    CHECK_STR(res.body, "boom");
    result_clear(&res);
}

static void timeout_is_reported_as_timed_out(void)
{
    struct result res = {0};
    char url[128];
    url_of(url, sizeof url, "/slow");
    struct fetch_opts o = {.url = url, .timeout_ms = 200};
    CHECK(start(&o, on_done, &res) != NULL);
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.calls == 1);
    CHECK(res.err != NULL);
    CHECK(res.timed_out == 1);
    result_clear(&res);
}

static void connection_refused_is_an_error(void)
{
    /* A port that was just free: nobody listens there. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    CHECK(bind(s, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0);
    close(s);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(sin.sin_port));
    struct result res = {0};
    struct fetch_opts o = {.url = url};
    CHECK(start(&o, on_done, &res) != NULL);
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.calls == 1);
    CHECK(res.during_start == 0);
    CHECK(res.err != NULL);
    CHECK(res.status == 0);
    CHECK(res.timed_out == 0);
    result_clear(&res);
}

static void non_http_scheme_is_refused(void)
{
    struct result res = {0};
    struct fetch_opts o = {.url = "file:///etc/passwd"};
    CHECK(start(&o, on_done, &res) != NULL);
    CHECK(t_run_until(base, &res.calls, WAIT_MS));
    CHECK(res.err != NULL);
    CHECK(res.body_len == 0);
    result_clear(&res);
}

static void bad_input_is_rejected_without_callback(void)
{
    struct result res = {0};
    char url[128];
    url_of(url, sizeof url, "/ok");
    const char *bad_hdrs[] = {"X-A: b\r\nX-Injected: 1", NULL};
    struct fetch_opts no_url = {0};
    struct fetch_opts bad_hdr = {.url = url, .headers = bad_hdrs};
    struct fetch_opts bad_method = {.url = url, .method = "GE T"};
    struct fetch_opts len_without_body = {.url = url, .body_len = 3};
    CHECK(start(NULL, on_done, &res) == NULL);
    CHECK(fetch_start(NULL, &no_url, on_done, &res) == NULL);
    CHECK(start(&no_url, on_done, &res) == NULL);
    CHECK(start(&bad_hdr, on_done, &res) == NULL);
    CHECK(start(&bad_method, on_done, &res) == NULL);
    CHECK(start(&len_without_body, on_done, &res) == NULL);
    t_run_for(base, 50);
    CHECK(res.calls == 0);
    CHECK(fetch_active(f) == 0);
    fetch_cancel(NULL);
    fetch_pause(NULL);
    fetch_resume(NULL);
    fetch_free(NULL);
}

static void collected_body_over_max_body_fails(void)
{
    /* Announced length (Content-Length) and chunked without a length. */
    const char *paths[] = {"/big", "/drip"};
    size_t limits[] = {1 << 20, 25};
    for (int i = 0; i < 2; i++) {
        struct result res = {0};
        char url[128];
        url_of(url, sizeof url, paths[i]);
        struct fetch_opts o = {.url = url, .max_body = limits[i]};
        CHECK(start(&o, on_done, &res) != NULL);
        CHECK(t_run_until(base, &res.calls, WAIT_MS));
        CHECK(res.calls == 1);
        CHECK_STR(res.err, FETCH_ERR_TOO_LARGE);
        CHECK(res.body_len <= limits[i]);
        result_clear(&res);
    }
}

static void big_body_is_collected_whole(void)
{
    struct result res = {0};
    get("/big", &res);
    CHECK(res.err == NULL);
    CHECK(res.body_len == BIG_LEN);
    CHECK(res.body_len == BIG_LEN && memcmp(res.body, big, BIG_LEN) == 0);
    result_clear(&res);
}

/* One arg serves both callbacks: the result comes first so on_done can
 * take the same pointer. */
struct stream {
    struct result res;
    struct fetch_req *req;
    size_t off;
    int chunks;
    int out_of_order;
    int after_cancel;
    int cancel_at;   /* cancel inside the nth on_data, 0 = never */
    int pause_first; /* pause after each of the first n chunks */
    int pauses;
    int resumes;
    int paused_now;
    int late; /* data arrived while paused */
    struct event *resume_ev;
    char text[512];
    size_t text_len;
};

static void stream_resume(evutil_socket_t fd, short what, void *arg)
{
    struct stream *s = arg;
    (void)fd;
    (void)what;
    s->resumes++;
    s->paused_now = 0;
    fetch_resume(s->req);
}

static int on_big_data(void *arg, const char *data, size_t len)
{
    struct stream *s = arg;
    s->late |= s->paused_now;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != big_byte(s->off + i)) s->out_of_order = 1;
    s->off += len;
    s->chunks++;
    if (s->pauses < s->pause_first) {
        s->pauses++;
        s->paused_now = 1;
        struct timeval tv = {0, 2000};
        evtimer_add(s->resume_ev, &tv);
        return 1;
    }
    return 0;
}

static void stream_big(struct stream *s)
{
    char url[128];
    url_of(url, sizeof url, "/big");
    s->resume_ev = evtimer_new(base, stream_resume, s);
    struct fetch_opts o = {.url = url, .on_data = on_big_data, .max_body = 16};
    s->req = start(&o, on_done, s);
    CHECK(s->req != NULL);
    CHECK(t_run_until(base, &s->res.calls, WAIT_MS));
    event_free(s->resume_ev);
}

static void streaming_delivers_all_bytes_in_order(void)
{
    struct stream s = {0};
    stream_big(&s);
    CHECK(s.res.calls == 1);
    CHECK(s.res.err == NULL);
    CHECK(s.res.status == 200);
    CHECK(s.res.body_len == 0 && s.res.body[0] == '\0');
    CHECK(s.off == BIG_LEN);
    CHECK(s.out_of_order == 0);
    CHECK(s.chunks > 1);
    result_clear(&s.res);
}

static void pause_then_resume_delivers_everything(void)
{
    struct stream s = {.pause_first = 40};
    stream_big(&s);
    CHECK(s.res.calls == 1);
    CHECK(s.res.err == NULL);
    CHECK(s.off == BIG_LEN);
    CHECK(s.out_of_order == 0);
    CHECK(s.pauses == 40);
    CHECK(s.resumes == 40);
    CHECK(s.late == 0);
    result_clear(&s.res);
}

static int on_drip_data(void *arg, const char *data, size_t len)
{
    struct stream *s = arg;
    if (s->cancel_at && s->chunks >= s->cancel_at) s->after_cancel = 1;
    s->chunks++;
    if (s->text_len + len < sizeof s->text) {
        memcpy(s->text + s->text_len, data, len);
        s->text_len += len;
    }
    if (s->cancel_at && s->chunks == s->cancel_at) fetch_cancel(s->req);
    if (s->pause_first && s->pauses < s->pause_first) {
        s->pauses++;
        fetch_pause(s->req);
        struct timeval tv = {0, 30000};
        evtimer_add(s->resume_ev, &tv);
    }
    return 0;
}

struct status_seen {
    struct result res;
    struct fetch_req *req;
    long before;     /* fetch_status right after fetch_start */
    long first_data; /* fetch_status in the first on_data, -1 if none */
};

static int on_status_data(void *arg, const char *data, size_t len)
{
    struct status_seen *s = arg;
    (void)data;
    (void)len;
    if (s->first_data < 0) s->first_data = fetch_status(s->req);
    return 0;
}

static void status_of(const char *path, struct status_seen *s)
{
    char url[128];
    url_of(url, sizeof url, path);
    struct fetch_opts o = {.url = url, .on_data = on_status_data};
    s->first_data = -1;
    s->req = start(&o, on_done, s);
    CHECK(s->req != NULL);
    s->before = fetch_status(s->req);
    CHECK(t_run_until(base, &s->res.calls, WAIT_MS));
}

static void status_is_known_from_the_first_on_data(void)
{
    struct status_seen ok = {0}, bad = {0}, many = {0};
    status_of("/ok", &ok);
    CHECK(ok.before == 0);
    CHECK(ok.first_data == 200);
    CHECK(ok.res.status == 200);
    status_of("/500", &bad);
    CHECK(bad.before == 0);
    CHECK(bad.first_data == 500);
    CHECK(bad.res.status == 500);
    status_of("/429", &many);
    CHECK(many.first_data == 429);
    CHECK(many.res.ra == 2000);
    CHECK(fetch_status(NULL) == 0);
    result_clear(&ok.res);
    result_clear(&bad.res);
    result_clear(&many.res);
}

static void drip_streams_every_piece(void)
{
    struct stream s = {.pause_first = 3};
    char url[128];
    url_of(url, sizeof url, "/drip");
    s.resume_ev = evtimer_new(base, stream_resume, &s);
    struct fetch_opts o = {.url = url, .on_data = on_drip_data};
    s.req = start(&o, on_done, &s);
    CHECK(t_run_until(base, &s.res.calls, WAIT_MS));
    event_free(s.resume_ev);
    CHECK(s.res.err == NULL);
    CHECK(s.text_len == DRIP_PIECES * DRIP_PIECE_LEN);
    CHECK(s.text_len > 0 && memcmp(s.text, "piece-000\npiece-001\n", 20) == 0);
    CHECK(s.text_len == DRIP_PIECES * DRIP_PIECE_LEN &&
          memcmp(s.text + s.text_len - DRIP_PIECE_LEN, "piece-019\n", DRIP_PIECE_LEN) == 0);
    CHECK(s.resumes == 3);
    result_clear(&s.res);
}

static void cancel_inside_on_data_runs_no_done(void)
{
    struct stream s = {.cancel_at = 2};
    char url[128];
    url_of(url, sizeof url, "/drip");
    struct fetch_opts o = {.url = url, .on_data = on_drip_data};
    s.req = start(&o, on_done, &s);
    CHECK(s.req != NULL);
    CHECK(t_run_until(base, &s.chunks, WAIT_MS));
    t_run_for(base, 400);
    CHECK(s.chunks == 2);
    CHECK(s.after_cancel == 0);
    CHECK(s.res.calls == 0);
    CHECK(fetch_active(f) == 0);
    /* The engine still works afterwards. */
    get("/ok", &s.res);
    CHECK(s.res.status == 200);
    result_clear(&s.res);
}

struct canceller {
    struct fetch_req *victim;
    struct result res;
};

static void on_done_cancel_other(void *arg, const struct fetch_resp *resp)
{
    struct canceller *c = arg;
    on_done(&c->res, resp);
    fetch_cancel(c->victim);
}

static void cancel_from_another_done_runs_no_done(void)
{
    char slow[128], ok[128];
    url_of(slow, sizeof slow, "/slow");
    url_of(ok, sizeof ok, "/ok");
    struct result victim = {0};
    struct canceller c = {0};
    struct fetch_opts vo = {.url = slow};
    struct fetch_opts co = {.url = ok};
    c.victim = start(&vo, on_done, &victim);
    CHECK(start(&co, on_done_cancel_other, &c) != NULL);
    CHECK(t_run_until(base, &c.res.calls, WAIT_MS));
    t_run_for(base, 200);
    CHECK(c.res.status == 200);
    CHECK(victim.calls == 0);
    CHECK(fetch_active(f) == 0);
    result_clear(&victim);
    result_clear(&c.res);
}

static void on_done_cancel_self(void *arg, const struct fetch_resp *resp)
{
    struct canceller *c = arg;
    on_done(&c->res, resp);
    fetch_cancel(c->victim);
}

static void cancel_right_after_start_and_inside_own_done_are_safe(void)
{
    char ok[128];
    url_of(ok, sizeof ok, "/ok");
    struct result res = {0};
    struct fetch_opts o = {.url = ok};
    fetch_cancel(start(&o, on_done, &res));
    struct canceller c = {0};
    c.victim = start(&o, on_done_cancel_self, &c);
    CHECK(t_run_until(base, &c.res.calls, WAIT_MS));
    t_run_for(base, 100);
    CHECK(res.calls == 0);
    CHECK(c.res.calls == 1);
    CHECK(fetch_active(f) == 0);
    result_clear(&res);
    result_clear(&c.res);
}

#define MANY 100

static int many_done, all_done;

static void on_done_count(void *arg, const struct fetch_resp *resp)
{
    on_done(arg, resp);
    all_done = ++many_done == MANY;
}

static void hundred_concurrent_requests_all_complete(void)
{
    static struct result res[MANY];
    char url[128];
    url_of(url, sizeof url, "/ok");
    struct fetch_opts o = {.url = url};
    many_done = all_done = 0;
    for (int i = 0; i < MANY; i++)
        CHECK(start(&o, on_done_count, &res[i]) != NULL);
    CHECK(fetch_active(f) == MANY);
    CHECK(t_run_until(base, &all_done, WAIT_MS));
    CHECK(many_done == MANY);
    int ok = 0;
    for (int i = 0; i < MANY; i++) {
        ok += res[i].calls == 1 && res[i].status == 200 && res[i].err == NULL;
        result_clear(&res[i]);
    }
    CHECK(ok == MANY);
    CHECK(fetch_active(f) == 0);
}

static int first_piece;

static int on_first_piece(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    first_piece = 1;
    return 0;
}

static void free_with_transfers_in_flight_runs_no_callback(void)
{
    struct fetch *g = fetch_new(base);
    CHECK(g != NULL);
    char drip[128], slow[128], ok[128];
    url_of(drip, sizeof drip, "/drip");
    url_of(slow, sizeof slow, "/slow");
    url_of(ok, sizeof ok, "/ok");
    struct result res = {0};
    struct fetch_opts d = {.url = drip, .on_data = on_first_piece};
    struct fetch_opts s = {.url = slow};
    struct fetch_opts o = {.url = ok};
    first_piece = 0;
    CHECK(fetch_start(g, &d, on_done, &res) != NULL);
    CHECK(fetch_start(g, &s, on_done, &res) != NULL);
    CHECK(t_run_until(base, &first_piece, WAIT_MS));
    CHECK(fetch_start(g, &o, on_done, &res) != NULL); /* queued, never added */
    fetch_free(g);
    t_run_for(base, 100);
    CHECK(res.calls == 0);
    result_clear(&res);
}

static void async_dns_is_reported(void)
{
    int a = fetch_async_dns();
    CHECK(a == 0 || a == 1);
}

/* ---- retry helpers ------------------------------------------------------ */

/* Sun, 06 Nov 1994 08:49:37 GMT */
#define DATE_MS 784111777000LL

static void retry_after_parses_seconds_dates_ms_and_rejects_garbage(void)
{
    CHECK(fetch_parse_retry_after("2", 0, 0) == 2000);
    CHECK(fetch_parse_retry_after(" 120 ", 0, 0) == 120000);
    CHECK(fetch_parse_retry_after("0", 0, 0) == 0);
    CHECK(fetch_parse_retry_after("1500", 1, 0) == 1500);
    CHECK(fetch_parse_retry_after("20.2", 1, 0) == 21);
    CHECK(fetch_parse_retry_after("20.000", 1, 0) == 20);
    CHECK(fetch_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0, DATE_MS - 5000) == 5000);
    CHECK(fetch_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 0, DATE_MS - 7000) == 7000);
    CHECK(fetch_parse_retry_after("Sun Nov  6 08:49:37 1994", 0, DATE_MS - 1000) == 1000);
    CHECK(fetch_parse_retry_after("Tue, 29 Feb 2028 00:00:00 GMT", 0, 0) > 0);
    CHECK(fetch_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0, DATE_MS + 9000) == 0);
    CHECK(fetch_parse_retry_after("99999999999999999999", 0, 0) > 0);
    const char *garbage[] = {"",
                             "soon",
                             "-5",
                             "12abc",
                             "1.5",
                             "Sun, 32 Nov 1994 08:49:37 GMT",
                             "Sun, 29 Feb 2027 08:49:37 GMT",
                             "Sun, 06 Foo 1994 08:49:37 GMT",
                             "Sun, 06 Nov 1994 25:49:37 GMT",
                             "Sun, 06 Nov 1994 08:49:37 UTC",
                             "Sun, 06 Nov 1994 08:49:37 GMT junk",
                             "Sun Nov  6 08:49:37",
                             NULL};
    for (int i = 0; garbage[i]; i++)
        if (fetch_parse_retry_after(garbage[i], 0, 0) != -1) CHECK_STR(garbage[i], "(rejected)");
    CHECK(fetch_parse_retry_after(NULL, 0, 0) == -1);
    CHECK(fetch_parse_retry_after("abc", 1, 0) == -1);
    CHECK(fetch_parse_retry_after("1.", 1, 0) == -1);
}

static struct fetch_resp resp_status(long status)
{
    struct fetch_resp r = {.status = status, .body = "", .retry_after_ms = -1};
    return r;
}

static void retry_skips_client_errors_and_retries_transient_ones(void)
{
    struct fetch_retry_policy p = {.max_attempts = 5, .base_ms = 100, .max_ms = 1000};
    long no[] = {200, 400, 401, 403, 404, 422};
    long yes[] = {408, 409, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        struct fetch_resp r = resp_status(no[i]);
        CHECK(fetch_retry_delay(&p, 1, &r) == -1);
    }
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        struct fetch_resp r = resp_status(yes[i]);
        int64_t d = fetch_retry_delay(&p, 1, &r);
        CHECK(d >= 0 && d <= 100);
    }
    struct fetch_resp t = resp_status(0);
    t.err = "Couldn't connect to server";
    CHECK(fetch_retry_delay(&p, 1, &t) >= 0);
    t.err = "Operation timed out";
    t.timed_out = 1;
    CHECK(fetch_retry_delay(&p, 2, &t) >= 0);
    struct fetch_resp big_resp = resp_status(200);
    big_resp.err = FETCH_ERR_TOO_LARGE;
    CHECK(fetch_retry_delay(&p, 1, &big_resp) == -1);
    CHECK(fetch_retry_delay(NULL, 1, &t) == -1);
    CHECK(fetch_retry_delay(&p, 1, NULL) == -1);
    CHECK(fetch_retry_delay(&p, 0, &t) == -1);
}

static void retry_honours_retry_after_and_max_attempts(void)
{
    struct fetch_retry_policy p = {.max_attempts = 3, .base_ms = 100, .max_ms = 1000};
    struct fetch_resp r = resp_status(429);
    r.retry_after_ms = 5000;
    for (int i = 0; i < 50; i++)
        CHECK(fetch_retry_delay(&p, 1, &r) == 5000);
    r.retry_after_ms = 50;
    for (int i = 0; i < 50; i++) {
        int64_t d = fetch_retry_delay(&p, 2, &r);
        CHECK(d >= 50 && d <= 200);
    }
    CHECK(fetch_retry_delay(&p, 2, &r) >= 0);
    CHECK(fetch_retry_delay(&p, 3, &r) == -1);
    CHECK(fetch_retry_delay(&p, 4, &r) == -1);
    struct fetch_resp bad = resp_status(400);
    bad.retry_after_ms = 1000;
    CHECK(fetch_retry_delay(&p, 1, &bad) == -1);
}

static void retry_delays_grow_and_stay_under_max(void)
{
    struct fetch_retry_policy p = {.max_attempts = 12, .base_ms = 100, .max_ms = 1000};
    struct fetch_resp r = resp_status(503);
    int64_t prev_ceiling = 0;
    for (int attempt = 1; attempt < 12; attempt++) {
        int64_t ceiling = 100LL << (attempt - 1);
        if (ceiling > 1000) ceiling = 1000;
        int64_t max_seen = -1;
        for (int i = 0; i < 2000; i++) {
            int64_t d = fetch_retry_delay(&p, attempt, &r);
            CHECK(d >= 0 && d <= ceiling);
            if (d > max_seen) max_seen = d;
        }
        /* Full jitter: half the draws lie above the previous ceiling. */
        if (ceiling > prev_ceiling) CHECK(max_seen > prev_ceiling);
        prev_ceiling = ceiling;
    }
    struct fetch_retry_policy huge = {.max_attempts = 100, .base_ms = 1000, .max_ms = 60000};
    CHECK(fetch_retry_delay(&huge, 99, &r) <= 60000);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    big = malloc(BIG_LEN);
    for (size_t i = 0; i < BIG_LEN; i++)
        big[i] = big_byte(i);
    base = event_base_new();
    if (!base || server_start() < 0) {
        printf("FAIL fetch_test_server_starts: cannot listen on 127.0.0.1\n");
        return 1;
    }
    f = fetch_new(base);
    if (!f) {
        printf("FAIL fetch_new_works: fetch_new returned NULL\n");
        return 1;
    }

    TEST(get_ok_reports_status_body_and_content_type);
    TEST(post_sends_body_and_custom_header);
    TEST(post_large_body_is_sent_whole);
    TEST(multipart_sends_data_and_file_parts);
    TEST(status_429_carries_retry_after_seconds);
    TEST(retry_after_ms_header_wins);
    TEST(status_500_is_a_response_not_an_error);
    TEST(timeout_is_reported_as_timed_out);
    TEST(connection_refused_is_an_error);
    TEST(non_http_scheme_is_refused);
    TEST(bad_input_is_rejected_without_callback);
    TEST(collected_body_over_max_body_fails);
    TEST(big_body_is_collected_whole);
    TEST(streaming_delivers_all_bytes_in_order);
    TEST(pause_then_resume_delivers_everything);
    TEST(status_is_known_from_the_first_on_data);
    TEST(drip_streams_every_piece);
    TEST(cancel_inside_on_data_runs_no_done);
    TEST(cancel_from_another_done_runs_no_done);
    TEST(cancel_right_after_start_and_inside_own_done_are_safe);
    TEST(hundred_concurrent_requests_all_complete);
    TEST(free_with_transfers_in_flight_runs_no_callback);
    TEST(async_dns_is_reported);
    TEST(retry_after_parses_seconds_dates_ms_and_rejects_garbage);
    TEST(retry_skips_client_errors_and_retries_transient_ones);
    TEST(retry_honours_retry_after_and_max_attempts);
    TEST(retry_delays_grow_and_stay_under_max);

    fetch_free(f);
    /* Let the server finish what it still owes before it goes. */
    for (int i = 0; i < 200 && server_pending > 0; i++)
        t_run_for(base, 50);
    if (server_pending > 0) {
        printf("FAIL fetch_test_server_drains: %d replies still owed\n", server_pending);
        t_failed_total++;
    }
    evhttp_free(http);
    event_base_free(base);
    free(big);
    T_EXIT();
}
