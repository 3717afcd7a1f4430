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

struct http_conn {
    struct http_server *srv;
    struct bufferevent *bev;
    llhttp_t parser;
    struct http_req *req; /* the request being parsed or handled */
    struct evbuffer *acc; /* url / header field / value being accumulated */
    char *cur_field;
    int last_was_value;
    size_t header_bytes;
    struct event *timer;
    struct event *kick;    /* deferred input processing */
    struct event *body_ev; /* readable socket while a streamed body flows */
    enum conn_timer tmode;
    char peer[64];
    unsigned closing : 1, closed : 1, parser_paused : 1, in_execute : 1, dead : 1, lingering : 1,
        direct_mode : 1;
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

#endif
