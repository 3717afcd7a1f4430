/* Organizations (SPEC 6): create, list mine, the current one. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/util.h"

#define ORG_COLS "o.id, o.name, o.slug, o.plan, o.billing_status, api_ts(o.created_at)"

static struct db_stmt q_create = {
    "org_create",
    "WITH o AS (INSERT INTO organizations (name, slug) VALUES ($1, $2) RETURNING *),"
    " m AS (INSERT INTO memberships (org_id, user_id, role) SELECT id, $3, 'admin' FROM o)"
    " SELECT " ORG_COLS " FROM o"};

static struct db_stmt q_list = {"org_list",
                                "SELECT " ORG_COLS ", m.role FROM memberships m"
                                " JOIN organizations o ON o.id = m.org_id AND o.deleted_at IS NULL"
                                " WHERE m.user_id = $1 ORDER BY o.created_at, o.id"};

static struct db_stmt q_get = {
    "org_get", "SELECT " ORG_COLS " FROM organizations o WHERE o.id = $1 AND o.deleted_at IS NULL"};

static struct db_stmt q_members = {
    "org_members", "SELECT u.id, u.name, u.email, m.role, api_ts(m.created_at) FROM memberships m"
                   " JOIN users u ON u.id = m.user_id AND u.deleted_at IS NULL"
                   " WHERE m.org_id = $1 ORDER BY m.created_at, u.id"};

/* One organization row (columns of ORG_COLS from col 0) as JSON. */
static struct json_object *org_json(const struct db_res *res, int row, const char *role)
{
    struct json_object *o = json_object_new_object();
    api_json_add_str(o, "id", db_str(res, row, 0));
    api_json_add_str(o, "name", db_str(res, row, 1));
    api_json_add_str(o, "slug", db_str(res, row, 2));
    api_json_add_str(o, "plan", db_str(res, row, 3));
    api_json_add_str(o, "billing_status", db_str(res, row, 4));
    api_json_add_str(o, "created_at", db_str(res, row, 5));
    if (role) api_json_add_str(o, "role", role);
    return o;
}

/* ---- POST /api/organizations ------------------------------------------- */

struct create_state {
    struct http_req *r;
    const char *name;
    char user_id[37];
    char slug[64];
    int tries;
};

static void slugify(const char *name, char *out, size_t n)
{
    size_t o = 0;
    int dash = 0;
    for (const char *p = name; *p && o + 1 < n && o < 40; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) && c < 0x80) {
            if (dash && o > 0) out[o++] = '-';
            dash = 0;
            out[o++] = (char)tolower(c);
        } else {
            dash = 1;
        }
    }
    if (o == 0) o = (size_t)snprintf(out, n, "org");
    out[o] = '\0';
}

static void create_send(struct create_state *st);

static void create_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct create_state *st = arg;
    struct http_req *r = st->r;
    if (err) {
        if (sqlstate && strcmp(sqlstate, "23505") == 0 && st->tries < 5) {
            /* slug taken: add a random suffix and try again */
            char sfx[8];
            util_random_token(sfx, 3);
            for (char *c = sfx; *c; c++)
                *c = (char)(isalnum((unsigned char)*c) ? tolower((unsigned char)*c) : 'x');
            char base[48];
            slugify(st->name, base, sizeof base);
            snprintf(st->slug, sizeof st->slug, "%s-%s", base, sfx);
            create_send(st);
            return;
        }
        api_db_error(r, err, sqlstate);
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "organization", org_json(res, 0, "admin"));
    http_reply_json(r, 201, o);
}

static void create_send(struct create_state *st)
{
    st->tries++;
    const char *p[3] = {st->name, st->slug, st->user_id};
    if (!db_query(app.db, &q_create, 3, p, create_done, st))
        http_reply_error(st->r, 503, "unavailable", "shutting down");
}

static void create_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *name;
    if (api_need_object(r) || api_req_str(r, "name", 1, 200, &name)) return;
    struct create_state *st = http_req_alloc(r, sizeof *st);
    if (!st) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->r = r;
    st->name = name;
    memcpy(st->user_id, ctx->user_id, sizeof st->user_id);
    slugify(name, st->slug, sizeof st->slug);
    create_send(st);
}

static void create(struct http_req *r)
{
    auth_request(r, 0, create_authed);
}

/* ---- GET /api/organizations ------------------------------------------- */

static void list_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (err) {
        api_db_error(r, err, sqlstate);
        return;
    }
    struct json_object *arr = json_object_new_array();
    for (int i = 0; i < db_nrows(res); i++)
        json_object_array_add(arr, org_json(res, i, db_str(res, i, 6)));
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "organizations", arr);
    http_reply_json(r, 200, o);
}

static void list_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *p[1] = {ctx->user_id};
    if (!db_query(app.db, &q_list, 1, p, list_done, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

static void list(struct http_req *r)
{
    auth_request(r, 0, list_authed);
}

/* ---- GET /api/organizations/current ------------------------------------ */

struct current_state {
    struct http_req *r;
    struct json_object *out;
    int admin;
    char org_id[37];
};

static void current_members_done(void *arg, const struct db_res *res, const char *err,
                                 const char *sqlstate)
{
    struct current_state *st = arg;
    if (err) {
        json_object_put(st->out);
        api_db_error(st->r, err, sqlstate);
        return;
    }
    struct json_object *arr = json_object_new_array();
    for (int i = 0; i < db_nrows(res); i++) {
        struct json_object *m = json_object_new_object();
        api_json_add_str(m, "user_id", db_str(res, i, 0));
        api_json_add_str(m, "name", db_str(res, i, 1));
        api_json_add_str(m, "email", db_str(res, i, 2));
        api_json_add_str(m, "role", db_str(res, i, 3));
        api_json_add_str(m, "joined_at", db_str(res, i, 4));
        json_object_array_add(arr, m);
    }
    json_object_object_add(st->out, "members", arr);
    http_reply_json(st->r, 200, st->out);
}

static void current_org_done(void *arg, const struct db_res *res, const char *err,
                             const char *sqlstate)
{
    struct current_state *st = arg;
    if (api_one_row(st->r, res, err, sqlstate, "organization not found") != 0) return;
    st->out = json_object_new_object();
    json_object_object_add(st->out, "organization",
                           org_json(res, 0, st->admin ? "admin" : "member"));
    if (!st->admin) {
        http_reply_json(st->r, 200, st->out);
        return;
    }
    const char *p[1] = {st->org_id};
    if (!db_query(app.db, &q_members, 1, p, current_members_done, st)) {
        json_object_put(st->out);
        http_reply_error(st->r, 503, "unavailable", "shutting down");
    }
}

static void current_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    struct current_state *st = http_req_alloc(r, sizeof *st);
    if (!st) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->r = r;
    st->admin = ctx->admin;
    memcpy(st->org_id, ctx->org_id, sizeof st->org_id);
    const char *p[1] = {st->org_id};
    if (!db_query(app.db, &q_get, 1, p, current_org_done, st))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

static void current(struct http_req *r)
{
    auth_request(r, 1, current_authed);
}

void api_org_routes(struct http_server *s)
{
    struct http_route_opts json = {.body = HTTP_BODY_JSON, .max_body = 0};
    http_route(s, "POST", "/api/organizations", create, &json);
    http_route(s, "GET", "/api/organizations", list, NULL);
    http_route(s, "GET", "/api/organizations/current", current, NULL);
}
