/* Ops endpoints, no auth: /healthz (alive), /readyz (database reachable
 * and migrations applied), /metrics (Prometheus text). */
#include <stdio.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/metrics.h"
#include "reeld/pipeline.h"
#include "reeld/search.h"
#include "reeld/util.h"

static const char ok_body[] = "{\"status\":\"ok\"}\n";

static void healthz(struct http_req *r)
{
    http_reply(r, 200, "application/json; charset=utf-8", ok_body, sizeof ok_body - 1);
}

static struct db_stmt q_schema = {"ops_schema_version",
                                  "SELECT coalesce(max(version), 0) FROM schema_migrations"};

static void readyz_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct http_req *r = arg;
    if (err) {
        http_reply_error(r, 503, "unavailable", "database unreachable");
        return;
    }
    long long v = db_int(res, 0, 0);
    if (v < app.schema_version) {
        char msg[96];
        snprintf(msg, sizeof msg, "migrations pending: database at %lld, code expects %d", v,
                 app.schema_version);
        http_reply_error(r, 503, "unavailable", msg);
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string("ready"));
    json_object_object_add(o, "schema_version", json_object_new_int64(v));
    http_reply_json(r, 200, o);
}

static void readyz(struct http_req *r)
{
    if (!db_ready(app.db)) {
        http_reply_error(r, 503, "unavailable", "database unreachable");
        return;
    }
    if (!db_query(app.db, &q_schema, 0, NULL, readyz_done, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

static void metrics(struct http_req *r)
{
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    pipeline_metrics_render(b);
    search_metrics_render(b);
    http_reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

void api_ops_routes(struct http_server *s)
{
    http_route(s, "GET", "/healthz", healthz, NULL);
    http_route(s, "GET", "/readyz", readyz, NULL);
    http_route(s, "GET", "/metrics", metrics, NULL);
}
