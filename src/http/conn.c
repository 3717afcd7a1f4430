/* The HTTP server: listener, connections, request parsing with llhttp,
 * timeouts and graceful shutdown. Responses are in response.c, routing in
 * router.c. See include/reeld/http.h for the contract. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <json-c/json.h>

#include "http_int.h"
#include "reeld/log.h"
#include "reeld/reap.h"
#include "reeld/util.h"

#define READ_HIGH_WATER (256 * 1024)
/* SO_SNDBUF of a connection in stream mode (the kernel doubles it). */
#define HTTP_STREAM_SNDBUF 65536

static llhttp_settings_t settings;
static int settings_ready;

static void conn_process(struct http_conn *c);
static void conn_arm(struct http_conn *c, enum conn_timer mode);
static void body_read_cb(evutil_socket_t fd, short what, void *arg);
static void kick_cb(evutil_socket_t fd, short what, void *arg);

/* ---- requests ------------------------------------------------------- */

static struct http_req *req_new(struct http_conn *c)
{
    struct http_req *r = calloc(1, sizeof *r);
    struct http_req_priv *p = calloc(1, sizeof *p);
    if (!r || !p) {
        free(r);
        free(p);
        return NULL;
    }
    r->priv = p;
    p->conn = c;
    p->status = 0;
    r->start_us = util_mono_us();
    r->content_length = -1;
    r->method = "GET";
    return r;
}

void *http_req_alloc(struct http_req *r, size_t n)
{
    struct arena_blk *b = malloc(sizeof *b + n + 1);
    if (!b) return NULL;
    b->next = r->priv->arena;
    r->priv->arena = b;
    memset(b + 1, 0, n + 1);
    return b + 1;
}

char *http_req_strdup(struct http_req *r, const char *s)
{
    size_t n = strlen(s);
    char *d = http_req_alloc(r, n);
    if (d) memcpy(d, s, n);
    return d;
}

static void req_free_now(void *obj)
{
    struct http_req *r = obj;
    struct http_req_priv *p = r->priv;
    while (p->arena) {
        struct arena_blk *b = p->arena;
        p->arena = b->next;
        free(b);
    }
    if (p->body) evbuffer_free(p->body);
    if (p->out_hdrs) evbuffer_free(p->out_hdrs);
    if (r->json) json_object_put(r->json);
    free(p);
    free(r);
}

void http_req_free(struct http_req *r)
{
    reap_later(req_free_now, r);
}

/* Release what only served the request of a stream: the request memory
 * (keeping a copy of the path for the access log), the body and the
 * response headers' buffer. The fields that pointed there are cleared
 * by http_sse_start already. */
static void req_shed(struct http_req *r)
{
    struct http_req_priv *p = r->priv;
    size_t pl = r->path ? strlen(r->path) : 0;
    struct arena_blk *keep = r->path ? malloc(sizeof *keep + pl + 1) : NULL;
    if (keep) {
        keep->next = NULL;
        memcpy(keep + 1, r->path, pl + 1);
    }
    while (p->arena) {
        struct arena_blk *b = p->arena;
        p->arena = b->next;
        free(b);
    }
    p->arena = keep;
    r->path = keep ? (char *)(keep + 1) : NULL;
    if (r->json) {
        json_object_put(r->json);
        r->json = NULL;
    }
    if (p->body) {
        evbuffer_free(p->body);
        p->body = NULL;
    }
    if (p->out_hdrs) {
        evbuffer_free(p->out_hdrs);
        p->out_hdrs = NULL;
    }
}

const char *http_header(const struct http_req *r, const char *name)
{
    for (int i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

const char *http_param(const struct http_req *r, int i)
{
    return i >= 0 && i < r->nparams ? r->params[i] : NULL;
}

int http_req_alive(const struct http_req *r)
{
    return r->priv->conn != NULL && !r->priv->aborted;
}

static int hexv(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode n bytes into a request-owned string; '+' is a space
 * when form is set (query strings). Returns NULL on a bad escape or NUL. */
char *http_decode(struct http_req *r, const char *s, size_t n, int form)
{
    char *d = http_req_alloc(r, n);
    if (!d) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexv((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexv((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) return NULL;
            d[o] = (char)(hi << 4 | lo);
            if (d[o] == '\0') return NULL;
            o++;
            i += 2;
        } else if (form && s[i] == '+') {
            d[o++] = ' ';
        } else {
            d[o++] = s[i];
        }
    }
    d[o] = '\0';
    return d;
}

const char *http_query(struct http_req *r, const char *name)
{
    const char *q = r->query;
    size_t nl = strlen(name);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t kl = eq ? (size_t)(eq - q) : len;
        if (kl == nl && strncmp(q, name, nl) == 0) {
            if (!eq) return "";
            return http_decode(r, eq + 1, len - kl - 1, 1);
        }
        q = amp ? amp + 1 : NULL;
    }
    return NULL;
}

/* ---- parser callbacks ------------------------------------------------ */

static struct http_conn *PC(llhttp_t *p)
{
    return p->data;
}

/* Replies to a request that the handler never saw (parse-level errors).
 * The connection closes after the answer since the stream is unusable. */
static int local_error(struct http_conn *c, int status, const char *code, const char *msg)
{
    struct http_req *r = c->req;
    if (!r) {
        r = c->req = req_new(c);
        if (!r) {
            http_conn_close(c, "oom");
            return HPE_USER;
        }
    }
    c->closing = 1;
    if (!r->priv->error_sent) {
        r->priv->error_sent = 1;
        r->priv->handler_called = 1; /* the reply stands in for the handler */
        http_reply_error(r, status, code, msg);
    }
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *c = PC(p);
    c->req = req_new(c);
    if (!c->req) return HPE_USER;
    if (!c->acc && !(c->acc = evbuffer_new())) return HPE_USER;
    c->header_bytes = 0;
    c->last_was_value = 0;
    evbuffer_drain(c->acc, evbuffer_get_length(c->acc));
    conn_arm(c, T_HEADER);
    return 0;
}

static int count_header(struct http_conn *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > (size_t)c->srv->o.max_header_bytes)
        return local_error(c, 431, "invalid_request", "request headers too large");
    return 0;
}

static char *acc_take(struct http_conn *c)
{
    size_t n = evbuffer_get_length(c->acc);
    char *s = http_req_alloc(c->req, n);
    if (s) evbuffer_remove(c->acc, s, n);
    return s;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = PC(p);
    if (count_header(c, len)) return HPE_USER;
    evbuffer_add(c->acc, at, len);
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct http_conn *c = PC(p);
    struct http_req *r = c->req;
    r->target = acc_take(c);
    if (!r->target) return HPE_USER;
    return 0;
}

static int push_header(struct http_conn *c)
{
    struct http_req *r = c->req;
    char *value = acc_take(c);
    if (!value || !c->cur_field) return -1;
    if (r->nheaders % 16 == 0) {
        struct http_header *h = http_req_alloc(r, sizeof *h * (size_t)(r->nheaders + 16));
        if (!h) return -1;
        if (r->nheaders) memcpy(h, r->headers, sizeof *h * (size_t)r->nheaders);
        r->headers = h;
    }
    r->headers[r->nheaders].name = c->cur_field;
    r->headers[r->nheaders].value = value;
    r->nheaders++;
    c->cur_field = NULL;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = PC(p);
    if (count_header(c, len)) return HPE_USER;
    evbuffer_add(c->acc, at, len);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_conn *c = PC(p);
    c->cur_field = acc_take(c);
    return c->cur_field ? 0 : HPE_USER;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = PC(p);
    if (count_header(c, len + 4)) return HPE_USER;
    evbuffer_add(c->acc, at, len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    return push_header(PC(p)) == 0 ? 0 : HPE_USER;
}

static void set_request_id(struct http_req *r)
{
    const char *rid = http_header(r, "X-Request-Id");
    size_t n = rid ? strlen(rid) : 0;
    int ok = n > 0 && n < sizeof r->request_id;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = rid[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_' || ch == '.' || ch == ':';
    }
    if (ok)
        memcpy(r->request_id, rid, n + 1);
    else
        util_uuid_v4(r->request_id);
}

static int body_expected(llhttp_t *p)
{
    return (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = PC(p);
    struct http_req *r = c->req;
    struct http_req_priv *rp = r->priv;
    rp->headers_done = 1;
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    rp->head = p->method == HTTP_HEAD;
    rp->keep_alive = llhttp_should_keep_alive(p) && !c->srv->shutting_down;
    if (!rp->keep_alive) c->closing = 1;
    if (p->flags & F_CONTENT_LENGTH) r->content_length = (int64_t)p->content_length;
    set_request_id(r);
    if (!r->target || r->target[0] != '/')
        return local_error(c, 400, "invalid_request", "bad request target");
    char *q = strchr(r->target, '?');
    r->path = q ? http_req_alloc(r, (size_t)(q - r->target)) : r->target;
    if (!r->path) return HPE_USER;
    if (q) {
        memcpy(r->path, r->target, (size_t)(q - r->target));
        r->query = q + 1;
    }
    const char *expect = http_header(r, "Expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue") != 0)
            return local_error(c, 417, "invalid_request", "unsupported Expect");
        rp->expect_continue = 1;
    }

    int mismatch = 0;
    char allow[128];
    rp->rt = http_router_match(c->srv, r, &mismatch, allow, sizeof allow);
    if (!rp->rt) {
        r->route = mismatch ? "(405)" : "(404)";
        if (mismatch) {
            http_set_header(r, "Allow", allow);
            return local_error(c, 405, "invalid_request", "method not allowed");
        }
        return local_error(c, 404, "not_found", "no such route");
    }
    r->route = rp->rt->pattern;
    const struct http_route_opts *o = &rp->rt->o;
    if (o->body != HTTP_BODY_STREAM) {
        int64_t max = o->max_body > 0 ? o->max_body : c->srv->o.max_json_bytes;
        if (r->content_length > max)
            return local_error(c, 413, "payload_too_large", "request body too large");
        if (body_expected(p) && o->body == HTTP_BODY_NONE && r->content_length > 65536)
            return local_error(c, 413, "payload_too_large", "this route takes no body");
        if (body_expected(p) && o->body == HTTP_BODY_JSON) {
            const char *ct = http_header(r, "Content-Type");
            if (ct && strncasecmp(ct, "application/json", 16) != 0 && !strstr(ct, "+json"))
                return local_error(c, 415, "unsupported_media_type",
                                   "expected Content-Type: application/json");
        }
        if (body_expected(p) && !(rp->body = evbuffer_new()))
            return local_error(c, 500, "internal", "out of memory");
        if (rp->expect_continue && body_expected(p)) http_send_continue(r);
        conn_arm(c, body_expected(p) ? T_BODY : T_NONE);
        return 0;
    }
    /* Streaming route: the handler takes over now. */
    if (o->max_body > 0 && r->content_length > o->max_body)
        return local_error(c, 413, "payload_too_large", "request body too large");
    conn_arm(c, body_expected(p) ? T_BODY : T_NONE);
    rp->handler_called = 1;
    rp->rt->h(r);
    if (c->closed || c->dead) return HPE_USER;
    if (rp->finished && !rp->message_done && body_expected(p)) {
        /* answered before reading the body: the rest is not ours to parse */
        c->closing = 1;
        return HPE_USER;
    }
    if (rp->body_paused) return HPE_PAUSED;
    if (rp->expect_continue && body_expected(p) && !rp->response_started) http_send_continue(r);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = PC(p);
    struct http_req *r = c->req;
    struct http_req_priv *rp = r->priv;
    rp->body_bytes += (int64_t)len;
    conn_arm(c, T_BODY);
    const struct http_route_opts *o = &rp->rt->o;
    if (o->body != HTTP_BODY_STREAM) {
        int64_t max = o->max_body > 0 ? o->max_body : c->srv->o.max_json_bytes;
        if (o->body == HTTP_BODY_NONE) max = 65536;
        if (rp->body_bytes > max)
            return local_error(c, 413, "payload_too_large", "request body too large");
        if (!rp->body && !(rp->body = evbuffer_new()))
            return local_error(c, 500, "internal", "out of memory");
        evbuffer_add(rp->body, at, len);
        return 0;
    }
    if (o->max_body > 0 && rp->body_bytes > o->max_body) {
        if (r->on_body_end) r->on_body_end(r, "request body too large");
        if (!rp->finished) http_reply_error(r, 413, "payload_too_large", "request body too large");
        c->closing = 1;
        return HPE_USER;
    }
    if (rp->finished) return 0; /* handler answered already; discard */
    if (r->on_body && r->on_body(r, at, len) != 0) {
        c->closing = 1;
        return HPE_USER;
    }
    if (c->closed || c->dead) return HPE_USER;
    return rp->body_paused ? HPE_PAUSED : 0;
}

static void run_json_handler(struct http_conn *c, struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    size_t n = rp->body ? evbuffer_get_length(rp->body) : 0;
    if (rp->rt->o.body == HTTP_BODY_JSON && n > 0) {
        const char *s = (const char *)evbuffer_pullup(rp->body, -1);
        if (!util_utf8_valid(s, n)) {
            local_error(c, 400, "invalid_request", "body is not valid UTF-8");
            return;
        }
        struct json_tokener *tok = json_tokener_new_ex(64);
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        struct json_object *j = json_tokener_parse_ex(tok, s, (int)n);
        enum json_tokener_error jerr = json_tokener_get_error(tok);
        size_t used = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        while (j && used < n &&
               (s[used] == ' ' || s[used] == '\n' || s[used] == '\r' || s[used] == '\t'))
            used++;
        if (!j || jerr != json_tokener_success || used != n) {
            if (j) json_object_put(j);
            rp->handler_called = 1;
            rp->error_sent = 1;
            http_reply_error(r, 400, "invalid_request", "malformed JSON body");
            return;
        }
        r->json = j;
    }
    rp->handler_called = 1;
    rp->rt->h(r);
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *c = PC(p);
    struct http_req *r = c->req;
    struct http_req_priv *rp = r->priv;
    rp->message_done = 1;
    conn_arm(c, T_NONE);
    if (!rp->handler_called) {
        run_json_handler(c, r);
    } else if (rp->rt && rp->rt->o.body == HTTP_BODY_STREAM && !rp->finished && r->on_body_end) {
        r->on_body_end(r, NULL);
    }
    if (c->closed || c->dead) return HPE_USER;
    if (rp->finished) {
        /* answered synchronously: move on after execute returns */
        http_conn_request_done(c);
    }
    return HPE_PAUSED;
}

static void settings_init(void)
{
    if (settings_ready) return;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_url_complete = on_url_complete;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    settings_ready = 1;
}

/* ---- connection ------------------------------------------------------ */

static void conn_free_now(void *obj)
{
    struct http_conn *c = obj;
    if (c->timer) event_free(c->timer);
    if (c->kick) event_free(c->kick);
    if (c->body_ev) event_free(c->body_ev);
    if (c->rd_ev) event_free(c->rd_ev);
    if (c->wr_ev) event_free(c->wr_ev);
    if (c->out) evbuffer_free(c->out);
    if (c->acc) evbuffer_free(c->acc);
    free(c);
}

static void maybe_shutdown_done(struct http_server *s);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* Detach and drop the connection. The current request, if its handler
 * runs, is told through on_abort and finishes on its own later. */
void http_conn_close(struct http_conn *c, const char *why)
{
    if (c->closed) return;
    c->closed = 1;
    struct http_server *s = c->srv;
    struct http_req *r = c->req;
    c->req = NULL;
    if (r) {
        struct http_req_priv *rp = r->priv;
        if (rp->counted_stream) { /* the finish that follows has no conn */
            s->st.streams_open--;
            rp->counted_stream = 0;
        }
        rp->conn = NULL;
        rp->aborted = 1;
        if (!rp->handler_called || rp->finished) {
            http_req_free(r);
        } else {
            if (rp->rt && rp->rt->o.body == HTTP_BODY_STREAM && !rp->message_done &&
                r->on_body_end) {
                void (*end)(struct http_req *, const char *) = r->on_body_end;
                r->on_body_end = NULL;
                end(r, why ? why : "client disconnected");
            }
            /* a finish that already ran freed the request itself */
            if (!rp->finished && r->on_abort) r->on_abort(r);
        }
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->timer) event_del(c->timer);
    if (c->kick) event_del(c->kick);
    if (c->body_ev) event_del(c->body_ev);
    if (c->rd_ev) event_del(c->rd_ev);
    if (c->wr_ev) event_del(c->wr_ev);
    if (c->fd >= 0) {
        evutil_closesocket(c->fd);
        c->fd = -1;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->st.conns_open--;
    reap_later(conn_free_now, c);
    maybe_shutdown_done(s);
}

static void linger_read_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* Everything is answered: send what is queued, then half-close and
 * discard what the client still sends for a moment (a lingering close:
 * closing with unread input makes the kernel send RST, which can destroy
 * the response before the client reads it). */
static void conn_finish_output(struct http_conn *c)
{
    if (c->closed || c->lingering) return;
    c->dead = 1;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
        return; /* write_cb comes back here */
    c->lingering = 1;
    if (c->direct_mode) {
        event_del(c->body_ev);
        c->direct_mode = 0;
    }
    shutdown(c->fd, SHUT_WR);
    bufferevent_setcb(c->bev, linger_read_cb, NULL, event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_enable(c->bev, EV_READ);
    /* the event callback closes on EOF; the timer on a silent peer */
    struct timeval tv = {2, 0};
    c->tmode = T_NONE;
    if (c->timer) evtimer_add(c->timer, &tv);
}

static int stream_leave(struct http_conn *c);

void http_conn_request_done(struct http_conn *c)
{
    struct http_req *r = c->req;
    c->req = NULL;
    if (r) {
        struct http_req_priv *rp = r->priv;
        struct log_line *l = log_begin(LOG_INFO, "request");
        log_str(l, "method", r->method);
        log_str(l, "route", r->route ? r->route : "(none)");
        log_str(l, "path", r->path ? r->path : "(none)");
        log_int(l, "status", rp->status);
        log_int(l, "bytes", rp->bytes_out);
        int64_t us = util_mono_us() - r->start_us;
        log_dbl(l, "ms", (double)us / 1000.0);
        log_str(l, "request_id", r->request_id);
        if (r->log_user[0]) log_str(l, "user", r->log_user);
        if (r->log_org[0]) log_str(l, "org", r->log_org);
        log_end(l);
        if (c->srv->o.observe) c->srv->o.observe(c->srv->o.observe_arg, r, rp->status, us);
        rp->conn = NULL;
        http_req_free(r);
    }
    if (c->stream_mode && stream_leave(c) != 0) {
        http_conn_close(c, "out of memory");
        return;
    }
    if (c->closing || c->srv->shutting_down) {
        conn_finish_output(c);
        return;
    }
    conn_arm(c, T_IDLE);
    http_conn_kick(c);
}

/* libevent 2.1 reads at most 4 KiB per read(2) (EVBUFFER_MAX_READ), so a
 * streamed upload would cost a syscall, a loop turn and a handler call
 * per 4 KiB. While a streaming body is in progress and nothing is
 * buffered, read straight into reserved buffer space in large gulps.
 * Returns bytes read, 0 when the socket has nothing now, -1 when the
 * connection was closed here (EOF or error). */
#define DIRECT_READ 262144
static ssize_t direct_body_read(struct http_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[2];
    /* bufferevent_socket keeps the end of its input frozen except while
     * it reads; do as it does */
    evbuffer_unfreeze(in, 0);
    int nv = evbuffer_reserve_space(in, DIRECT_READ, v, 2);
    if (nv <= 0) {
        evbuffer_freeze(in, 0);
        return 0;
    }
    struct iovec iov[2];
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    ssize_t n = readv(c->fd, iov, nv);
    if (n <= 0) {
        int again = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        evbuffer_commit_space(in, v, 0);
        evbuffer_freeze(in, 0);
        if (again) return 0;
        http_conn_close(c, n == 0 ? "client disconnected" : "connection error");
        return -1;
    }
    size_t left = (size_t)n;
    for (int i = 0; i < nv; i++) {
        size_t take = left < v[i].iov_len ? left : v[i].iov_len;
        v[i].iov_len = take;
        left -= take;
    }
    evbuffer_commit_space(in, v, nv);
    evbuffer_freeze(in, 0);
    return n;
}

static int streaming_body(const struct http_conn *c)
{
    const struct http_req *r = c->req;
    return r && r->priv->headers_done && !r->priv->message_done && !r->priv->finished &&
           !r->priv->body_paused && r->priv->rt && r->priv->rt->o.body == HTTP_BODY_STREAM;
}

/* While a streamed body flows, the socket is read by body_ev in large
 * gulps instead of by the bufferevent (whose reads are 4 KiB); the
 * bufferevent takes over again for everything else. */
static void conn_sync_read_mode(struct http_conn *c)
{
    if (c->closed || c->dead || !c->bev) return;
    int want = streaming_body(c);
    if (want == (int)c->direct_mode) return;
    if (want && !c->body_ev) {
        c->body_ev = event_new(c->srv->base, c->fd, EV_READ | EV_PERSIST, body_read_cb, c);
        if (!c->body_ev) {
            http_conn_close(c, "out of memory");
            return;
        }
    }
    if (want) {
        bufferevent_disable(c->bev, EV_READ);
        event_add(c->body_ev, NULL);
    } else {
        event_del(c->body_ev);
        bufferevent_enable(c->bev, EV_READ);
    }
    c->direct_mode = (unsigned)want;
}

static void conn_process_inner(struct http_conn *c);

static void conn_process(struct http_conn *c)
{
    if (!c->bev) return; /* stream mode reads nothing */
    conn_process_inner(c);
    conn_sync_read_mode(c);
}

static void conn_process_inner(struct http_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t direct = 0; /* bounded per turn, so one upload cannot starve others */
    while (!c->closed && !c->dead) {
        int resumed = 0;
        if (c->parser_paused) {
            /* paused at a message end: wait for the response; paused in a
             * body: wait for the handler's resume */
            if (c->req && (c->req->priv->message_done || c->req->priv->body_paused)) return;
            c->parser_paused = 0;
            llhttp_resume(&c->parser);
            resumed = 1;
        }
        if (c->req && c->req->priv->body_paused) return;
        size_t avail = evbuffer_get_length(in);
        /* After a pause inside a body the parser may owe callbacks that
         * need no input (the message end right after the last body
         * byte): run it once on nothing. */
        if (avail == 0 && !resumed) {
            if (!streaming_body(c) || direct >= 8 * DIRECT_READ) return;
            ssize_t got = direct_body_read(c, in);
            if (got <= 0) return;
            direct += (size_t)got;
            continue;
        }
        size_t n = avail < HTTP_BODY_PIECE ? avail : HTTP_BODY_PIECE;
        const char *data = n ? (const char *)evbuffer_pullup(in, (ssize_t)n) : "";
        c->in_execute = 1;
        llhttp_errno_t err = llhttp_execute(&c->parser, data, n);
        c->in_execute = 0;
        if (c->closed) return;
        if (err == HPE_OK) {
            evbuffer_drain(in, n);
            continue;
        }
        if (err == HPE_PAUSED) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            evbuffer_drain(in, pos ? (size_t)(pos - data) : n);
            c->parser_paused = 1;
            continue;
        }
        /* HPE_USER: our callbacks already answered or closed. */
        if (err != HPE_USER && !c->dead) {
            evbuffer_drain(in, avail);
            struct http_req *r = c->req;
            if (r && r->priv->handler_called && !r->priv->finished) {
                /* A malformed body under a streaming handler: the handler
                 * owns the response, so it learns as from a hang-up
                 * (on_body_end with an error, then on_abort). */
                http_conn_close(c, "malformed request body");
                return;
            }
            local_error(c, 400, "invalid_request", llhttp_errno_name(err));
        }
        if (!c->closed && !c->dead) {
            c->closing = 1;
            bufferevent_disable(c->bev, EV_READ);
            if (!c->req || c->req->priv->finished) http_conn_request_done(c);
        }
        return;
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (!c->closed && !c->dead) conn_process(c);
}

static void body_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (!c->closed && !c->dead) conn_process(c);
}

void http_conn_kick(struct http_conn *c)
{
    if (c->closed) return;
    if (!c->kick && !(c->kick = event_new(c->srv->base, -1, 0, kick_cb, c))) {
        http_conn_close(c, "out of memory");
        return;
    }
    event_active(c->kick, 0, 0);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct http_conn *c = arg;
    if (c->tmode == T_IDLE) conn_arm(c, T_HEADER);
    conn_process(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct http_conn *c = arg;
    if (c->dead) {
        conn_finish_output(c);
        return;
    }
    struct http_req *r = c->req;
    if (r && r->priv->response_started && !r->priv->finished && r->on_drain) r->on_drain(r);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct http_conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        http_conn_close(c, (what & BEV_EVENT_EOF) ? "client disconnected" : "connection error");
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (c->dead) {
        http_conn_close(c, "linger done");
        return;
    }
    switch (c->tmode) {
    case T_IDLE:
        http_conn_close(c, "idle timeout");
        break;
    case T_HEADER:
        if (c->req && !c->req->priv->handler_called) {
            bufferevent_disable(c->bev, EV_READ);
            local_error(c, 408, "invalid_request", "timed out reading request headers");
        } else {
            http_conn_close(c, "header timeout");
        }
        break;
    case T_BODY:
        if (c->req && !c->req->priv->handler_called) {
            bufferevent_disable(c->bev, EV_READ);
            local_error(c, 408, "invalid_request", "timed out reading request body");
        } else {
            http_conn_close(c, "body timeout");
        }
        break;
    case T_NONE:
        break;
    }
}

static void conn_arm(struct http_conn *c, enum conn_timer mode)
{
    if (c->tmode == mode && mode != T_BODY) return;
    c->tmode = mode;
    int s = 0;
    switch (mode) {
    case T_IDLE:
        s = c->srv->o.idle_timeout_s;
        break;
    case T_HEADER:
        s = c->srv->o.header_timeout_s;
        break;
    case T_BODY:
        s = c->srv->o.body_timeout_s;
        break;
    case T_NONE:
        if (c->timer) event_del(c->timer);
        return;
    }
    struct timeval tv = {s, 0};
    if (c->timer) evtimer_add(c->timer, &tv);
}

void http_body_pause(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    rp->body_paused = 1;
    if (rp->conn && !rp->conn->in_execute) conn_arm(rp->conn, T_NONE);
}

void http_body_resume(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    if (!rp->body_paused) return;
    rp->body_paused = 0;
    struct http_conn *c = rp->conn;
    if (!c) return;
    if (rp->expect_continue && !rp->response_started) http_send_continue(r);
    if (!rp->message_done) conn_arm(c, T_BODY);
    http_conn_kick(c);
}

/* ---- buffered and stream modes ------------------------------------------ */

/* Buffered mode: a bufferevent on the socket (the connection keeps the
 * socket; freeing the bufferevent does not close it). */
static int conn_buffered(struct http_conn *c)
{
    c->bev = bufferevent_socket_new(c->srv->base, c->fd, 0);
    if (!c->bev) return -1;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, READ_HIGH_WATER);
    bufferevent_setwatermark(c->bev, EV_WRITE, HTTP_WRITE_LOW, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    return 0;
}

size_t http_conn_queued(const struct http_conn *c)
{
    if (c->closed) return 0;
    if (c->bev) return evbuffer_get_length(bufferevent_get_output(c->bev));
    return c->out ? evbuffer_get_length(c->out) : 0;
}

static int io_again(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Stream mode, socket writable: send what is queued; once it is all
 * gone, drop the buffer and the write interest. Below the low mark the
 * handler's on_drain runs, as in buffered mode. */
static void event_free_later(void *ev)
{
    event_free(ev);
}

static int stream_flush(struct http_conn *c)
{
    struct evbuffer_iovec v[16];
    int nv = evbuffer_peek(c->out, -1, NULL, v, 16);
    if (nv > 16) nv = 16;
    struct iovec iov[16];
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)nv};
    ssize_t w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) return io_again() ? 0 : -1;
    evbuffer_drain(c->out, (size_t)w);
    if (evbuffer_get_length(c->out) == 0) {
        /* nothing waits: the buffer and the write event go (the event at
         * the reap point, since this may run in its callback) */
        if (c->wr_ev) {
            event_del(c->wr_ev);
            reap_later(event_free_later, c->wr_ev);
            c->wr_ev = NULL;
        }
        evbuffer_free(c->out);
        c->out = NULL;
    }
    return 0;
}

static void stream_write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (c->closed || !c->out) return;
    if (stream_flush(c) != 0) {
        http_conn_close(c, "connection error");
        return;
    }
    size_t left = c->out ? evbuffer_get_length(c->out) : 0;
    struct http_req *r = c->req;
    if (left <= HTTP_WRITE_LOW && r && r->priv->response_started && !r->priv->finished &&
        r->on_drain)
        r->on_drain(r);
}

/* Stream mode, socket readable: the client closed, or sent something,
 * which a stream has no use for: it is discarded, and the connection
 * closes once the stream ends. */
static void stream_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct http_conn *c = arg;
    char buf[256];
    for (int i = 0; i < 64 && !c->closed; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            c->closing = 1;
            continue;
        }
        if (n == 0)
            http_conn_close(c, "client disconnected");
        else if (!io_again())
            http_conn_close(c, "connection error");
        return;
    }
}

long http_conn_stream_writev(struct http_conn *c, const struct iovec *iov, int n)
{
    if (c->closed || !c->stream_mode) return -1;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    size_t sent = 0;
    if (!c->out) {
        struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        /* An error other than a full socket is left to the write event,
         * which meets it again and closes the connection from the loop. */
        if (w > 0) sent = (size_t)w;
        if (sent == total) return 0;
        if (!c->wr_ev)
            c->wr_ev = event_new(c->srv->base, c->fd, EV_WRITE | EV_PERSIST, stream_write_cb, c);
        if (!c->wr_ev || !(c->out = evbuffer_new())) {
            http_conn_close(c, "out of memory"); /* part of the bytes went out */
            return -1;
        }
        event_add(c->wr_ev, NULL);
    }
    size_t skip = sent;
    for (int i = 0; i < n; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        if (evbuffer_add(c->out, (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip) !=
            0) {
            http_conn_close(c, "out of memory");
            return -1;
        }
        skip = 0;
    }
    return (long)evbuffer_get_length(c->out);
}

/* Into stream mode: what the bufferevent still holds to send moves to
 * c->out, and the bufferevent goes. Stays buffered when anything stands in
 * the way (input waiting, a body being read). */
static void stream_enter(struct http_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (c->in_execute || c->direct_mode || c->dead || evbuffer_get_length(in) > 0) return;
    /* the read event of an earlier stream on this connection is reused */
    if (!c->rd_ev)
        c->rd_ev = event_new(c->srv->base, c->fd, EV_READ | EV_PERSIST, stream_read_cb, c);
    if (!c->rd_ev) return;
    struct evbuffer *bout = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(bout) > 0) {
        if (!c->wr_ev)
            c->wr_ev = event_new(c->srv->base, c->fd, EV_WRITE | EV_PERSIST, stream_write_cb, c);
        if (!c->wr_ev || !(c->out = evbuffer_new())) return;
        /* bufferevent_socket keeps the front of its output frozen except
         * while it writes; do as it does */
        evbuffer_unfreeze(bout, 1);
        int moved = evbuffer_add_buffer(c->out, bout);
        evbuffer_freeze(bout, 1);
        if (moved != 0) {
            evbuffer_free(c->out);
            c->out = NULL;
            return;
        }
    }
    bufferevent_free(c->bev);
    c->bev = NULL;
    event_add(c->rd_ev, NULL);
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
    c->tmode = T_NONE;
    if (c->kick) {
        event_free(c->kick);
        c->kick = NULL;
    }
    if (c->body_ev) {
        event_free(c->body_ev);
        c->body_ev = NULL;
    }
    c->stream_mode = 1;
    /* Bound what the kernel keeps for a client that does not read (its
     * send buffer would otherwise grow to megabytes): beyond it, bytes
     * queue here, where sse_max_queued cuts a slow consumer off. */
    int sndbuf = HTTP_STREAM_SNDBUF;
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    /* The head (usually) goes out when the socket is writable, as it
     * would have from the bufferevent: after the queries the handler
     * started, which are sent in this loop turn. A client that reads the
     * head then knows those queries are on their way (an events stream
     * has asked where "now" is). */
    if (c->out) event_add(c->wr_ev, NULL);
}

/* The reap point after http_sse_start: the handler's callback chain is
 * done with the request's memory. */
static void stream_enter_later(void *obj)
{
    struct http_conn *c = obj;
    c->stream_queued = 0;
    struct http_req *r = c->req;
    if (c->closed || !r || !r->priv->sse || r->priv->finished || c->stream_mode) return;
    req_shed(r);
    if (!r->priv->message_done) return; /* still parsing: stays buffered */
    if (c->acc) {
        evbuffer_free(c->acc);
        c->acc = NULL;
    }
    c->cur_field = NULL;
    stream_enter(c);
}

void http_conn_stream_want(struct http_conn *c)
{
    if (c->closed || c->stream_queued || c->stream_mode) return;
    c->stream_queued = 1;
    reap_later(stream_enter_later, c);
}

/* Back to buffered mode once the stream's response is complete. */
static int stream_leave(struct http_conn *c)
{
    if (!c->timer && !(c->timer = evtimer_new(c->srv->base, timer_cb, c))) return -1;
    if (conn_buffered(c) != 0) return -1;
    if (c->out) {
        evbuffer_add_buffer(bufferevent_get_output(c->bev), c->out);
        evbuffer_free(c->out);
        c->out = NULL;
    }
    /* the read event is deleted, not freed: this may run inside a
     * callback of the connection (conn_free_now frees it, or the next
     * stream uses it again); the write event goes at the reap point */
    event_del(c->rd_ev);
    if (c->wr_ev) {
        event_del(c->wr_ev);
        reap_later(event_free_later, c->wr_ev);
        c->wr_ev = NULL;
    }
    c->stream_mode = 0;
    return 0;
}

/* ---- accept ------------------------------------------------------------ */

static const char busy_503[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    "Connection: close\r\nRetry-After: 1\r\nContent-Length: 92\r\n\r\n"
    "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many "
    "connections\",\"request_id\":\"\"}}\n";

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    struct http_server *s = arg;
    http_server_adopt(s, fd);
}

int http_server_adopt(struct http_server *s, int fd)
{
    if (s->st.conns_open >= s->o.max_conns || s->shutting_down) {
        /* Best effort, never blocking: one nonblocking send, then close. */
        ssize_t w = send(fd, busy_503, sizeof busy_503 - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w;
        evutil_closesocket(fd);
        s->st.conns_rejected++;
        return -1;
    }
    evutil_make_socket_nonblocking(fd);
    struct http_conn *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return -1;
    }
    c->srv = s;
    c->fd = fd;
    c->timer = evtimer_new(s->base, timer_cb, c);
    if (!c->timer || conn_buffered(c) != 0) {
        if (c->bev) bufferevent_free(c->bev);
        evutil_closesocket(fd);
        conn_free_now(c);
        return -1;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->st.conns_open++;
    s->st.conns_total++;
    c->tmode = T_NONE;
    conn_arm(c, T_HEADER);
    return 0;
}

struct http_server *http_server_new(struct event_base *base, const struct http_server_opts *o)
{
    settings_init();
    struct http_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base = base;
    s->o = *o;
    return s;
}

int http_server_listen(struct http_server *s)
{
    struct evutil_addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", s->o.port);
    const char *host = s->o.host;
    if (host[0] == '[') { /* [::1] */
        static char h6[64];
        snprintf(h6, sizeof h6, "%.*s", (int)strcspn(host + 1, "]"), host + 1);
        host = h6;
    }
    int rc = evutil_getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        log_msg(LOG_ERROR, "listen address must be numeric", "addr", s->o.host);
        return -1;
    }
    s->lis =
        evconnlistener_new_bind(s->base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                1024, ai->ai_addr, (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (!s->lis) {
        struct log_line *l = log_begin(LOG_ERROR, "cannot listen");
        log_str(l, "addr", s->o.host);
        log_int(l, "port", s->o.port);
        log_str(l, "error", strerror(errno));
        log_end(l);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&ss, &sl);
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

int http_server_port(const struct http_server *s)
{
    return s->port;
}

void http_server_stats(const struct http_server *s, struct http_stats *out)
{
    *out = s->st;
}

static void maybe_shutdown_done(struct http_server *s)
{
    if (!s->shutting_down || s->conns || !s->done) return;
    void (*done)(void *) = s->done;
    s->done = NULL;
    if (s->grace_ev) event_del(s->grace_ev);
    done(s->done_arg);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_server *s = arg;
    log_msg(LOG_WARN, "shutdown grace expired; closing remaining connections", NULL, NULL);
    while (s->conns)
        http_conn_close(s->conns, "shutdown");
    maybe_shutdown_done(s);
}

void http_server_shutdown(struct http_server *s, int grace_s, void (*done)(void *), void *arg)
{
    s->shutting_down = 1;
    s->done = done;
    s->done_arg = arg;
    if (s->lis) evconnlistener_disable(s->lis);
    s->grace_ev = evtimer_new(s->base, grace_cb, s);
    struct timeval tv = {grace_s, 0};
    evtimer_add(s->grace_ev, &tv);
    struct http_conn *c = s->conns;
    while (c) {
        struct http_conn *next = c->next;
        c->closing = 1;
        if (!c->req) {
            http_conn_close(c, "shutdown");
        } else if (c->req->priv->sse || !c->req->priv->headers_done) {
            struct http_req *r = c->req;
            if (r->priv->handler_called && !r->priv->finished && r->on_abort) {
                r->priv->aborted = 1;
                r->on_abort(r);
            } else if (!r->priv->handler_called) {
                http_conn_close(c, "shutdown");
            }
        }
        c = next;
    }
    maybe_shutdown_done(s);
}

void http_server_free(struct http_server *s)
{
    if (!s) return;
    while (s->conns)
        http_conn_close(s->conns, "server freed");
    if (s->lis) evconnlistener_free(s->lis);
    if (s->grace_ev) event_free(s->grace_ev);
    http_router_free(s);
    free(s);
}
