/* HTTP/1.1 server on libevent bufferevents and llhttp.
 *
 * One connection carries one request at a time: pipelined requests wait,
 * parsed in order, until the response before them is complete. A route
 * chooses how its body arrives:
 *   HTTP_BODY_NONE   the handler runs at end of message; a body is refused.
 *   HTTP_BODY_JSON   buffered up to the route's max_body (413 beyond), then
 *                    checked as UTF-8 and parsed (400 on bad JSON); the
 *                    handler runs with req->json set.
 *   HTTP_BODY_STREAM the handler runs as soon as the headers are in and
 *                    receives the body through req->on_body / on_body_end,
 *                    in pieces of at most HTTP_BODY_PIECE bytes; it may
 *                    pause and resume the flow (backpressure down to TCP).
 *
 * Lifetime. The handler owns the request from the moment it is called
 * until it finishes the response: http_reply_* (complete responses) or
 * http_stream_end (streamed ones). Every request is finished exactly once.
 * If the client goes away first, the request is detached from its
 * connection and req->on_abort (when set) runs once; whatever the handler
 * writes afterwards is dropped, and its finish call frees the request. So
 * a handler waiting on the database simply replies when the answer comes:
 * nothing is written and nothing leaks. Requests and connections are
 * freed through reap_later, never inside a callback that may still use
 * them. */
#ifndef REELD_HTTP_H
#define REELD_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct json_object;
struct http_server;
struct http_conn;
struct http_req;

#define HTTP_BODY_PIECE 262144
#define HTTP_MAX_PARAMS 4

enum http_body_mode { HTTP_BODY_NONE, HTTP_BODY_JSON, HTTP_BODY_STREAM };

typedef void (*http_handler)(struct http_req *req);

struct http_route_opts {
    enum http_body_mode body;
    int64_t max_body; /* JSON: 0 = the server's default; STREAM: 0 = unlimited */
};

struct http_header {
    char *name, *value;
};

struct http_req {
    /* Request, read-only for handlers */
    const char *method; /* "GET", ... */
    char *target;       /* raw request target */
    char *path;         /* target up to '?', not decoded */
    char *query;        /* after '?', or NULL */
    const char *route;  /* the matched pattern, for logs and metrics */
    struct http_header *headers;
    int nheaders;
    const char *params[HTTP_MAX_PARAMS]; /* path parameters, percent-decoded */
    int nparams;
    char request_id[65];
    int64_t start_us;         /* monotonic */
    int64_t content_length;   /* -1 when absent (chunked or none) */
    struct json_object *json; /* HTTP_BODY_JSON: the parsed body (owned by req) */

    /* Handler state */
    void *data;
    /* Client gone (or server shutting down an endless stream): stop work,
     * then finish the request (possibly right here). */
    void (*on_abort)(struct http_req *req);
    /* HTTP_BODY_STREAM: body pieces; return 0 to go on, or call
     * http_body_pause first to stop the flow after this piece. */
    int (*on_body)(struct http_req *req, const char *data, size_t len);
    /* HTTP_BODY_STREAM: the whole body arrived (err NULL), or it failed
     * (client gone or timed out: err says which; on_abort follows). */
    void (*on_body_end)(struct http_req *req, const char *err);
    /* Streamed response: the output queue drained below the low mark. */
    void (*on_drain)(struct http_req *req);

    /* For the access log: who called (set by the auth layer). */
    char log_user[64], log_org[64];

    /* private to the http module */
    struct http_req_priv *priv;
};

struct http_server_opts {
    const char *host;
    int port;
    int max_conns;
    int max_header_bytes;
    int64_t max_json_bytes;
    int header_timeout_s, idle_timeout_s, body_timeout_s;
    int64_t sse_max_queued;
    /* Runs for every completed request (metrics). */
    void (*observe)(void *arg, const struct http_req *r, int status, int64_t us);
    void *observe_arg;
};

struct http_server *http_server_new(struct event_base *base, const struct http_server_opts *o);
/* Binds and listens; returns 0 or -1 (logged). */
int http_server_listen(struct http_server *s);
/* Serve an already-connected socket as if accepted (fuzzing, tests).
 * Returns 0, or -1 after closing fd. */
int http_server_adopt(struct http_server *s, int fd);
/* Port actually bound (useful with port 0). */
int http_server_port(const struct http_server *s);
void http_server_free(struct http_server *s);

/* Register a route. pattern: "/api/recordings/:id/video" (":name" matches
 * one non-empty segment; a last segment "*" matches the rest). Method "*"
 * matches any method. Unknown paths → 404, known path with another method
 * → 405 with Allow, both in the error envelope. */
int http_route(struct http_server *s, const char *method, const char *pattern, http_handler h,
               const struct http_route_opts *o);
/* Visit every registered route (for the OpenAPI consistency check). */
void http_routes_each(const struct http_server *s,
                      void (*fn)(void *arg, const char *method, const char *pattern), void *arg);

/* Graceful stop: stop accepting, close idle connections, let in-flight
 * requests finish (Connection: close), abort SSE/streams via on_abort.
 * done runs once no connection remains or grace_s passed. */
void http_server_shutdown(struct http_server *s, int grace_s, void (*done)(void *arg), void *arg);

struct http_stats {
    long long conns_open, conns_total, conns_rejected, streams_open;
};
void http_server_stats(const struct http_server *s, struct http_stats *out);

/* Request accessors */
const char *http_header(const struct http_req *r, const char *name); /* case-insensitive */
const char *http_param(const struct http_req *r, int i);
/* Query parameter, percent-decoded (allocated with the request); NULL if absent. */
const char *http_query(struct http_req *r, const char *name);
/* 1 while the client is connected. */
int http_req_alive(const struct http_req *r);
/* Memory that lives as long as the request. */
void *http_req_alloc(struct http_req *r, size_t n);
char *http_req_strdup(struct http_req *r, const char *s);

/* Complete responses. Headers added with http_set_header before. */
void http_set_header(struct http_req *r, const char *name, const char *value);
void http_reply(struct http_req *r, int status, const char *content_type, const void *body,
                size_t len);
void http_reply_buf(struct http_req *r, int status, const char *content_type,
                    struct evbuffer *body);                                    /* drains body */
void http_reply_json(struct http_req *r, int status, struct json_object *obj); /* takes obj */
void http_reply_error(struct http_req *r, int status, const char *code, const char *message);
void http_reply_empty(struct http_req *r, int status);

/* Streamed responses. content_length >= 0 sends Content-Length, -1 uses
 * chunked encoding. http_stream_write returns the bytes queued to the
 * client after the write (callers pace themselves with on_drain, which
 * runs when the queue drains to HTTP_WRITE_LOW bytes), or -1 when the
 * client is gone. */
#define HTTP_WRITE_LOW 16384
int http_stream_start(struct http_req *r, int status, const char *content_type,
                      int64_t content_length);
long http_stream_write(struct http_req *r, const void *data, size_t len);
void http_stream_end(struct http_req *r);
size_t http_stream_queued(const struct http_req *r);

/* Server-Sent Events on top of a streamed response (chunked).
 *
 * http_sse_start sends the headers and ends the request part of the
 * exchange. From that call on, the request's fields are gone: headers
 * (http_header returns NULL), target, query (http_query returns NULL),
 * params; at the next reap point (once the callback chain that called
 * http_sse_start has unwound) the request's memory follows: everything
 * from http_req_alloc / http_req_strdup / http_query, req->json, and the
 * strings pointing there. A handler copies what its stream keeps (ids,
 * filters) before the call, into memory of its own (malloc), and does not
 * keep stream state in request memory. What stays: method, path (a copy,
 * for the access log), route, request_id, log_user/log_org, data and the
 * callbacks. The connection then holds only its socket and a small state:
 * an idle stream costs well under 2 KiB. Writes go straight to the
 * socket while nothing is queued; the rest waits in a buffer that exists
 * only while it is not empty (the kernel's send buffer of a stream is
 * bounded too, so a client that stops reading shows in that queue and
 * meets sse_max_queued). What the client sends on a stream is
 * discarded, and the connection closes after the stream's end (otherwise
 * it stays open for the next request, as after any response).
 *
 * http_sse_event formats one event (id may be NULL; data may hold
 * newlines: each line becomes a data: line). http_sse_format builds the
 * same frame once (malloc'd, *len its length; free it) and http_sse_send
 * writes a frame to one stream: an event for many streams is formatted
 * once. When the client's queue would exceed sse_max_queued the client is
 * dropped (on_abort runs, possibly before the call returns) and -1 is
 * returned; -1 always means the client is gone. on_drain works as for
 * http_stream_*: it runs once the queue drained to HTTP_WRITE_LOW bytes
 * after a write the socket could not take at once. */
int http_sse_start(struct http_req *r);
int http_sse_event(struct http_req *r, const char *id, const char *event, const char *data,
                   size_t len);
char *http_sse_format(const char *id, const char *event, const char *data, size_t len,
                      size_t *out_len);
int http_sse_send(struct http_req *r, const char *frame, size_t len);
int http_sse_comment(struct http_req *r, const char *text);

/* Body flow control for HTTP_BODY_STREAM routes. */
void http_body_pause(struct http_req *r);
void http_body_resume(struct http_req *r);

/* Status reason phrase. */
const char *http_reason(int status);

#endif
