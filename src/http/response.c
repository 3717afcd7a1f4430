/* Responses: complete, streamed (Content-Length or chunked) and SSE.
 * See include/reeld/http.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static struct evbuffer *out_of(struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    return c && c->bev && !c->closed ? bufferevent_get_output(c->bev) : NULL;
}

void http_set_header(struct http_req *r, const char *name, const char *value)
{
    /* CR/LF in a value would split the response: refuse it. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n")) return;
    evbuffer_add_printf(r->priv->out_hdrs, "%s: %s\r\n", name, value);
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
    evbuffer_add_buffer(out, rp->out_hdrs);
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
    struct evbuffer *out = out_of(r);
    if (!out || rp->finished || !rp->response_started) return -1;
    if (len == 0) return (long)evbuffer_get_length(out);
    if (rp->chunked) evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    if (rp->chunked) evbuffer_add(out, "\r\n", 2);
    rp->bytes_out += (int64_t)len;
    return (long)evbuffer_get_length(out);
}

size_t http_stream_queued(const struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    return c && c->bev && !c->closed ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

void http_stream_end(struct http_req *r)
{
    struct http_req_priv *rp = r->priv;
    if (rp->finished) return;
    struct evbuffer *out = out_of(r);
    if (out && rp->chunked && rp->response_started) evbuffer_add(out, "0\r\n\r\n", 5);
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
    return 0;
}

/* Drop a client whose queue passed the bound (the redis habit: a slow
 * consumer is cut off, not buffered forever). */
static int sse_check_bound(struct http_req *r)
{
    struct http_conn *c = r->priv->conn;
    if (!c) return -1;
    if ((int64_t)evbuffer_get_length(bufferevent_get_output(c->bev)) > c->srv->o.sse_max_queued) {
        http_conn_close(c, "slow consumer");
        return -1;
    }
    return 0;
}

int http_sse_event(struct http_req *r, const char *id, const char *event, const char *data,
                   size_t len)
{
    if (!r->priv->conn || r->priv->finished) return -1;
    struct evbuffer *b = evbuffer_new();
    if (id) evbuffer_add_printf(b, "id: %s\n", id);
    if (event) evbuffer_add_printf(b, "event: %s\n", event);
    size_t i = 0;
    do {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t l = nl ? (size_t)(nl - (data + i)) : len - i;
        evbuffer_add(b, "data: ", 6);
        evbuffer_add(b, data + i, l);
        evbuffer_add(b, "\n", 1);
        i += l + (nl ? 1 : 0);
    } while (i < len);
    evbuffer_add(b, "\n", 1);
    size_t n = evbuffer_get_length(b);
    long q = http_stream_write(r, evbuffer_pullup(b, -1), n);
    evbuffer_free(b);
    if (q < 0) return -1;
    return sse_check_bound(r);
}

int http_sse_comment(struct http_req *r, const char *text)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, ": %s\n\n", text);
    if (n < 0 || (size_t)n >= sizeof buf) return -1;
    if (http_stream_write(r, buf, (size_t)n) < 0) return -1;
    return sse_check_bound(r);
}
