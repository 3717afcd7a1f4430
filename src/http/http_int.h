/* Private to src/http: the connection, request internals and router. */
#ifndef REELD_HTTP_INT_H
#define REELD_HTTP_INT_H

#include <llhttp.h>

#include "reeld/http.h"

struct bufferevent;
struct event;
struct evconnlistener;

struct http_route_ent {
    char *method;
    char *pattern;
    char **segs; /* split pattern */
    int nsegs;
    int tail; /* last pattern segment is "*" */
    http_handler h;
    struct http_route_opts o;
};

struct http_server {
    struct event_base *base;
    struct evconnlistener *lis;
    struct http_server_opts o;
    int port;
    struct http_route_ent *routes;
    int nroutes, cap_routes;
    struct http_conn *conns; /* doubly linked */
    struct http_stats st;
    int shutting_down;
    struct event *grace_ev;
    void (*done)(void *arg);
    void *done_arg;
};

struct arena_blk {
    struct arena_blk *next;
};

struct http_req_priv {
    struct http_conn *conn; /* NULL once detached */
    const struct http_route_ent *rt;
    struct evbuffer *body; /* buffered body (JSON / NONE modes) */
    int64_t body_bytes;
    struct evbuffer *out_hdrs; /* headers set by the handler */
    struct arena_blk *arena;
    int status;
    int64_t bytes_out;
    int64_t declared_len; /* Content-Length of a streamed response, -1 chunked */
    unsigned headers_done : 1, message_done : 1, handler_called : 1, finished : 1,
        response_started : 1, chunked : 1, head : 1, keep_alive : 1, expect_continue : 1,
        continue_sent : 1, aborted : 1, sse : 1, body_paused : 1, counted_stream : 1,
        error_sent : 1;
};

enum conn_timer { T_NONE, T_IDLE, T_HEADER, T_BODY };

/* A connection is in one of two modes.
 *
 * Buffered (the usual one): a bufferevent reads and writes the socket;
 * requests are parsed from its input.
 *
 * Stream: an SSE response is under way and nothing more is read (see
 * http_sse_start). The bufferevent, its two buffers, the timer and the
 * parsing scratch are gone; the connection keeps its socket, one read
 * event (it notices the client closing; what the client sends is
 * discarded and the connection closes after the stream) and, only while
 * bytes wait for the socket, an output buffer and a write event. A write
 * with nothing queued goes straight to the socket. When the response ends
 * the connection goes back to buffered mode (keep-alive or a lingering
 * close, as usual). */
struct http_conn {
    struct http_server *srv;
    struct bufferevent *bev; /* buffered mode; NULL in stream mode */
    int fd;                  /* the socket, owned by the connection */
    llhttp_t parser;
    struct http_req *req; /* the request being parsed or handled */
    struct evbuffer *acc; /* url / header field / value being accumulated (lazy) */
    char *cur_field;
    int last_was_value;
    size_t header_bytes;
    struct event *timer;   /* NULL in stream mode */
    struct event *kick;    /* deferred input processing (lazy) */
    struct event *body_ev; /* readable socket while a streamed body flows (lazy) */
    struct event *rd_ev;   /* stream mode: readable socket */
    struct event *wr_ev;   /* stream mode: writable socket, created on the first partial write */
    struct evbuffer *out;  /* stream mode: bytes the socket did not take yet (NULL when none) */
    enum conn_timer tmode;
    unsigned closing : 1, closed : 1, parser_paused : 1, in_execute : 1, dead : 1, lingering : 1,
        direct_mode : 1, stream_mode : 1, stream_queued : 1;
    struct http_conn *prev, *next;
};

/* router.c */
const struct http_route_ent *http_router_match(const struct http_server *s, struct http_req *r,
                                               int *method_mismatch, char *allow, size_t allowlen);
void http_router_free(struct http_server *s);

/* conn.c: percent-decode n bytes into request memory ('+' is a space
 * when form is set); NULL on a bad escape or an encoded NUL. */
char *http_decode(struct http_req *r, const char *s, size_t n, int form);

/* response.c */
void http_req_finish(struct http_req *r);
void http_send_continue(struct http_req *r);
void http_conn_request_done(struct http_conn *c);
void http_conn_close(struct http_conn *c, const char *why);
void http_conn_kick(struct http_conn *c);
void http_req_free(struct http_req *r);

/* conn.c: stream mode (see struct http_conn). http_conn_stream_want
 * releases what only served the request and switches the connection to
 * stream mode at the next reap point (when the callback chain that
 * started the stream has unwound). http_conn_stream_writev sends or
 * queues the bytes; it returns the bytes left queued, or -1. */
struct iovec;
void http_conn_stream_want(struct http_conn *c);
long http_conn_stream_writev(struct http_conn *c, const struct iovec *iov, int n);
size_t http_conn_queued(const struct http_conn *c);

#endif
