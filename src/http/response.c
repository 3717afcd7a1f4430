/* Responses: complete, streamed (Content-Length or chunked) and SSE.
 * See include/reeld/http.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "http_int.h"
#include "reeld/util.h"

const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 423:
        return "Locked";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 460:
        return "Checksum Mismatch";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}

/* The buffered connection's output; NULL when the client is gone or the
 * connection is in stream mode (see stream_add). */
static struct evbuffer *out_of(struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    return c && c->bev && !c->closed ? bufferevent_get_output(c->bev) : NULL;
}

static int conn_live(const struct http_req *r)
{
    const struct http_conn *c = r->priv->conn;
    return c && !c->closed && (c->bev || c->stream_mode);
}

/* Response bytes after the head, in either mode: returns the bytes
 * queued to the client afterwards, or -1 when it is gone. */
static long resp_writev(struct http_req *r, struct iovec *iov, int n)
{
    struct http_conn *c = r->priv->conn;
    if (!conn_live(r)) return -1;
    if (c->stream_mode) return http_conn_stream_writev(c, iov, n);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    for (int i = 0; i < n; i++)
        evbuffer_add(out, iov[i].iov_base, iov[i].iov_len);
    return (long)evbuffer_get_length(out);
}

void http_set_header(struct http_req *r, const char *name, const char *value)
{
    struct http_req_priv *rp = r->priv;
    /* CR/LF in a value would split the response: refuse it. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n")) return;
    if (rp->response_started) return; /* the head is gone already */
    if (!rp->out_hdrs && !(rp->out_hdrs = evbuffer_new())) return;
    evbuffer_add_printf(rp->out_hdrs, "%s: %s\r\n", name, value);
}

static const char *http_date(void)
{
    static char buf[40];
    static time_t last;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return buf;
}

/* Writes the status line and headers. len < 0: chunked. */
static void write_head(struct http_req *r, int status, const char *ctype, int64_t len)
{
    struct http_req_priv *rp = r->priv;
    struct http_conn *c = rp->conn;
    rp->status = status;
    rp->response_started = 1;
    struct evbuffer *out = out_of(r);
    if (!out) return;
    if (!rp->message_done) c->closing = 1; /* answering before the request was read whole */
    if (c->srv->shutting_down) c->closing = 1;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nDate: %s\r\nX-Request-Id: %s\r\n", status,
                        http_reason(status), http_date(), r->request_id);
    if (ctype) evbuffer_add_printf(out, "Content-Type: %s\r\n", ctype);
    if (len >= 0) {
        if (status != 204 && status != 304 && !(status >= 100 && status < 200))
            evbuffer_add_printf(out, "Content-Length: %lld\r\n", (long long)len);
    } else {
        evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
        rp->chunked = 1;
    }
    if (c->closing) evbuffer_add_printf(out, "Connection: close\r\n");
    if (rp->out_hdrs) {
        evbuffer_add_buffer(out, rp->out_hdrs);
        evbuffer_free(rp->out_hdrs);
        rp->out_hdrs = NULL;
    }
    evbuffer_add(out, "\r\n", 2);
}

void http_req_finish(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    if (rp->finished) return;
    rp->finished = 1;
    struct http_conn *c = rp->conn;
    if (!c) {
        http_req_free(r);
        return;
    }
    if (rp->counted_stream) {
        c->srv->st.streams_open--;
        rp->counted_stream = 0;
    }
    if (!rp->message_done) {
        /* The body is still coming: it will not be read. */
        c->closing = 1;
        if (!c->in_execute) {
            bufferevent_disable(c->bev, EV_READ);
            http_conn_request_done(c);
        }
        return;
    }
    if (!c->in_execute) http_conn_request_done(c);
    /* inside llhttp_execute: on_message_complete finishes the job */
}

void http_reply(struct http_req *r, int status, const char *ctype, const void *body, size_t len)
{
    struct http_req_priv *rp = r->priv;
    if (rp->finished || rp->response_started) return;
    write_head(r, status, ctype, (int64_t)len);
    struct evbuffer *out = out_of(r);
    if (out && len && !rp->head) evbuffer_add(out, body, len);
    rp->bytes_out += (int64_t)len;
    http_req_finish(r);
}

void http_reply_buf(struct http_req *r, int status, const char *ctype, struct evbuffer *body)
{
    struct http_req_priv *rp = r->priv;
    size_t len = evbuffer_get_length(body);
    if (rp->finished || rp->response_started) {
        evbuffer_drain(body, len);
        return;
    }
    write_head(r, status, ctype, (int64_t)len);
    struct evbuffer *out = out_of(r);
    if (out && !rp->head)
        evbuffer_add_buffer(out, body);
    else
        evbuffer_drain(body, len);
    rp->bytes_out += (int64_t)len;
    http_req_finish(r);
}

void http_reply_json(struct http_req *r, int status, struct json_object *obj)
{
    size_t len;
    const char *s = json_object_to_json_string_length(
        obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    http_reply(r, status, "application/json; charset=utf-8", s, len);
    json_object_put(obj);
}

void http_reply_error(struct http_req *r, int status, const char *code, const char *message)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"error\":{\"code\":");
    util_json_str(b, code);
    evbuffer_add_printf(b, ",\"message\":");
    util_json_str(b, message);
    evbuffer_add_printf(b, ",\"request_id\":");
    util_json_str(b, r->request_id);
    evbuffer_add_printf(b, "}}\n");
    http_reply_buf(r, status, "application/json; charset=utf-8", b);
    evbuffer_free(b);
}

void http_reply_empty(struct http_req *r, int status)
{
    http_reply(r, status, NULL, NULL, 0);
}

void http_send_continue(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    struct evbuffer *out = out_of(r);
    if (rp->continue_sent || rp->response_started || !out) return;
    rp->continue_sent = 1;
    evbuffer_add_printf(out, "HTTP/1.1 100 Continue\r\n\r\n");
}

int http_stream_start(struct http_req *r, int status, const char *ctype, int64_t content_length)
{
    struct http_req_priv *rp = r->priv;
    if (rp->finished || rp->response_started) return -1;
    write_head(r, status, ctype, content_length);
    rp->declared_len = content_length;
    if (rp->head) {
        http_req_finish(r);
        return -1;
    }
    return out_of(r) ? 0 : -1;
}

long http_stream_write(struct http_req *r, const void *data, size_t len)
{
    struct http_req_priv *rp = r->priv;
    if (!conn_live(r) || rp->finished || !rp->response_started) return -1;
    if (len == 0) return (long)http_conn_queued(rp->conn);
    char hdr[24];
    struct iovec iov[3];
    int n = 0;
    if (rp->chunked) {
        /* the chunk size in hex, without printf: this runs once per
         * stream for every event of a fan-out */
        char *h = hdr + sizeof hdr;
        *--h = '\n';
        *--h = '\r';
        size_t v = len;
        do {
            *--h = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v);
        iov[n++] = (struct iovec){h, (size_t)(hdr + sizeof hdr - h)};
    }
    iov[n++] = (struct iovec){(void *)(uintptr_t)data, len};
    if (rp->chunked) iov[n++] = (struct iovec){(void *)(uintptr_t) "\r\n", 2};
    rp->bytes_out += (int64_t)len;
    return resp_writev(r, iov, n);
}

size_t http_stream_queued(const struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    return c ? http_conn_queued(c) : 0;
}

void http_stream_end(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    if (rp->finished) return;
    if (rp->chunked && rp->response_started && conn_live(r)) {
        struct iovec end = {(void *)(uintptr_t) "0\r\n\r\n", 5};
        resp_writev(r, &end, 1);
    }
    if (!rp->response_started) {
        http_reply_error(r, 500, "internal", "stream ended before it started");
        return;
    }
    /* Fewer bytes than the Content-Length promised: only closing the
     * connection tells the client the body is cut short. */
    if (!rp->chunked && rp->declared_len >= 0 && rp->bytes_out < rp->declared_len && rp->conn)
        rp->conn->closing = 1;
    http_req_finish(r);
}

int http_sse_start(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    http_set_header(r, "Cache-Control", "no-cache");
    http_set_header(r, "X-Accel-Buffering", "no");
    if (http_stream_start(r, 200, "text/event-stream; charset=utf-8", -1) != 0) return -1;
    rp->sse = 1;
    rp->counted_stream = 1;
    rp->conn->srv->st.streams_open++;
    /* The request is over as far as the handler is concerned: its fields
     * are cleared now, its memory goes at the next reap point. */
    r->target = NULL;
    r->query = NULL;
    r->headers = NULL;
    r->nheaders = 0;
    memset(r->params, 0, sizeof r->params);
    r->nparams = 0;
    http_conn_stream_want(rp->conn);
    return 0;
}

/* Drop a client whose queue passed the bound (the redis habit: a slow
 * consumer is cut off, not buffered forever). */
static int sse_check_bound(struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    if (!c || c->closed) return -1;
    if ((int64_t)http_conn_queued(c) > c->srv->o.sse_max_queued) {
        http_conn_close(c, "slow consumer");
        return -1;
    }
    return 0;
}

char *http_sse_format(const char *id, const char *event, const char *data, size_t len,
                      size_t *out_len)
{
    size_t idl = id ? strlen(id) : 0, evl = event ? strlen(event) : 0;
    size_t lines = 1;
    for (const char *p = data; (p = memchr(p, '\n', len - (size_t)(p - data))); p++)
        lines++;
    /* "id: " id "\n", "event: " event "\n", per line "data: " "\n", the
     * blank line */
    size_t cap = (id ? 5 + idl : 0) + (event ? 8 + evl : 0) + lines * 7 + len + 1;
    char *f = malloc(cap), *o = f;
    if (!f) return NULL;
    if (id) {
        memcpy(o, "id: ", 4);
        memcpy(o + 4, id, idl);
        o[4 + idl] = '\n';
        o += 5 + idl;
    }
    if (event) {
        memcpy(o, "event: ", 7);
        memcpy(o + 7, event, evl);
        o[7 + evl] = '\n';
        o += 8 + evl;
    }
    size_t i = 0;
    do {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t l = nl ? (size_t)(nl - (data + i)) : len - i;
        memcpy(o, "data: ", 6);
        memcpy(o + 6, data + i, l);
        o[6 + l] = '\n';
        o += 7 + l;
        i += l + (nl ? 1 : 0);
    } while (i < len);
    *o++ = '\n';
    *out_len = (size_t)(o - f);
    return f;
}

int http_sse_send(struct http_req *r, const char *frame, size_t n)
{
    if (!r->priv->conn || r->priv->finished) return -1;
    if (http_stream_write(r, frame, n) < 0) return -1;
    return sse_check_bound(r);
}

int http_sse_event(struct http_req *r, const char *id, const char *event, const char *data,
                   size_t len)
{
    if (!r->priv->conn || r->priv->finished) return -1;
    size_t n;
    char *f = http_sse_format(id, event, data, len, &n);
    if (!f) {
        http_conn_close(r->priv->conn, "out of memory");
        return -1;
    }
    int rc = http_sse_send(r, f, n);
    free(f);
    return rc;
}

int http_sse_comment(struct http_req *r, const char *text)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, ": %s\n\n", text);
    if (n < 0 || (size_t)n >= sizeof buf) return -1;
    if (http_stream_write(r, buf, (size_t)n) < 0) return -1;
    return sse_check_bound(r);
}
