/* The process-wide objects every API handler reaches: one loop, one
 * server, one pool, one outbound client, one authenticator. Like redis's
 * `server`, a single instance built by main.c. */
#ifndef REELD_APP_H
#define REELD_APP_H

#include <stdint.h>

struct event_base;
struct http_server;
struct db_pool;
struct fetch;
struct auth;

struct app {
    struct event_base *base;
    struct http_server *http;
    struct db_pool *db;
    struct fetch *fetch;
    struct auth *auth;
    const char *schema_dir;
    int schema_version; /* highest migration this binary knows */
    int64_t started_ms;
};

extern struct app app;

/* Registers every route (src/api/routes.c). */
void api_register(struct http_server *s);

#endif
