/* Publication (SPEC 7): POST /api/recordings/{id}/publish and the public
 * share page GET /share/{share_id}.
 *
 * Share ids are 24 characters of base64url (18 random bytes, 144 bits):
 * unguessable, and matching the column's CHECK. Publishing an unpublished
 * recording draws a new id; unpublishing clears it. So a link, once
 * unpublished, is dead for good, even if the recording is published
 * again; republishing while published keeps the link. The page is sent
 * with Cache-Control: no-store, so an unpublish takes effect at the next
 * load. Signed video URLs handed out by the page are stateless and stay
 * valid until they expire (MEDIA_URL_TTL_S). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmark-gfm-core-extensions.h>
#include <cmark-gfm-extension_api.h>
#include <cmark-gfm.h>
#include <event2/buffer.h>
#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/media.h"
#include "reeld/recording.h"
#include "reeld/signurl.h"
#include "reeld/util.h"

#define SHARE_ID_BYTES 18

/* First publish (or publish after an unpublish) takes the new id $3;
 * includeVideo ($4) absent keeps the current choice (false at first). */
static struct db_stmt q_publish = {
    "share_publish",
    "UPDATE recordings SET published = true,"
    " share_id = CASE WHEN published THEN share_id ELSE $3 END,"
    " published_at = CASE WHEN published THEN published_at ELSE now() END,"
    " share_include_video = COALESCE($4::boolean, share_include_video)"
    " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING published, share_id"};

static struct db_stmt q_unpublish = {
    "share_unpublish",
    "UPDATE recordings SET published = false, share_id = NULL, published_at = NULL,"
    " share_include_video = COALESCE($3::boolean, share_include_video)"
    " WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING published, share_id"};

static struct db_stmt q_page = {
    "share_page",
    "SELECT r.id, r.title, r.description, api_ts(r.created_at), r.share_include_video,"
    " r.status, r.storage_key, d.content, d.summary, api_ts(d.updated_at),"
    " d.recording_id IS NOT NULL"
    " FROM recordings r"
    " JOIN organizations o ON o.id = r.org_id AND o.deleted_at IS NULL"
    " LEFT JOIN documents d ON d.recording_id = r.id AND d.org_id = r.org_id"
    " WHERE r.share_id = $1 AND r.published AND r.deleted_at IS NULL"};

enum {
    P_ID,
    P_TITLE,
    P_DESC,
    P_CREATED,
    P_VIDEO,
    P_STATUS,
    P_KEY,
    P_CONTENT,
    P_SUMMARY,
    P_DOC_UPDATED,
    P_HAS_DOC
};

static struct json_object *share_url_json(const char *share_id)
{
    if (!share_id) return NULL;
    size_t n = strlen(cfg.public_url) + strlen(share_id) + 8;
    char *u = malloc(n);
    if (!u) return NULL;
    snprintf(u, n, "%s/share/%s", cfg.public_url, share_id);
    struct json_object *o = json_object_new_string(u);
    free(u);
    return o;
}

/* ---- POST /api/recordings/{id}/publish ------------------------------------ */

struct publish {
    struct http_req *r;
    int publish;
    const char *include_video; /* "true", "false" or NULL (absent) */
    char share_id[4 * SHARE_ID_BYTES / 3 + 2];
    struct auth_ctx ctx;
};

static void publish_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct publish *st = arg;
    if (err) {
        api_db_error(st->r, err, sqlstate);
        return;
    }
    if (db_nrows(res) != 1) { /* deleted meanwhile */
        http_reply_error(st->r, 404, "not_found", "recording not found");
        return;
    }
    int published = db_bool(res, 0, 0);
    const char *sid = db_str(res, 0, 1);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "published", json_object_new_boolean(published));
    json_object_object_add(o, "share_url", published ? share_url_json(sid) : NULL);
    http_reply_json(st->r, 200, o);
}

static void publish_loaded(void *arg, const struct db_res *res, const char *err,
                           const char *sqlstate)
{
    struct publish *st = arg;
    struct http_req *r = st->r;
    if (api_one_row(r, res, err, sqlstate, "recording not found") != 0) return;
    if (!rec_may_modify(&st->ctx, res, 0)) {
        http_reply_error(r, 403, "forbidden", "only the owner or an admin may publish");
        return;
    }
    const char *id = db_str(res, 0, 0);
    struct db_req *q;
    if (st->publish) {
        util_random_token(st->share_id, SHARE_ID_BYTES);
        const char *p[4] = {id, st->ctx.org_id, st->share_id, st->include_video};
        q = db_query(app.db, &q_publish, 4, p, publish_done, st);
    } else {
        const char *p[3] = {id, st->ctx.org_id, st->include_video};
        q = db_query(app.db, &q_unpublish, 3, p, publish_done, st);
    }
    if (!q) http_reply_error(r, 503, "unavailable", "shutting down");
}

/* A boolean member: 1/0, -1 when absent or null, -2 (after answering
 * 422) for another type. */
static int get_bool(struct http_req *r, const char *field, int required)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(r->json, field, &v) || !v) {
        if (!required) return -1;
    } else if (json_object_is_type(v, json_type_boolean)) {
        return json_object_get_boolean(v) ? 1 : 0;
    }
    char msg[96];
    snprintf(msg, sizeof msg, "%s %s a boolean", field,
             required ? "is required and must be" : "must be");
    http_reply_error(r, 422, "invalid_request", msg);
    return -2;
}

static void publish_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    if (api_need_object(r)) return;
    int pub = get_bool(r, "publish", 1);
    if (pub == -2) return;
    int inc = get_bool(r, "includeVideo", 0);
    if (inc == -2) return;
    struct publish *st = http_req_alloc(r, sizeof *st);
    if (!st) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->r = r;
    st->publish = pub;
    st->include_video = inc < 0 ? NULL : inc ? "true" : "false";
    st->ctx = *ctx;
    if (!rec_load(&st->ctx, http_param(r, 0), publish_loaded, st))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

/* Malformed ids are left to rec_load (no row: 404), after authentication,
 * so a caller without a token gets 401 whatever the id. */
static void publish(struct http_req *r)
{
    auth_request(r, 1, publish_authed);
}

/* ---- GET /share/{share_id} ---------------------------------------------- */

static void html_escape(struct evbuffer *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        switch (*s) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#39;";
            break;
        default:
            continue;
        }
        evbuffer_add(b, run, (size_t)(s - run));
        evbuffer_add(b, rep, strlen(rep));
        run = s + 1;
    }
    evbuffer_add(b, run, (size_t)(s - run));
}

/* Markdown to HTML with GitHub's extensions. Without CMARK_OPT_UNSAFE,
 * cmark-gfm replaces raw HTML (blocks and inline) by a comment and drops
 * javascript:, vbscript:, file: and non-image data: link targets; the
 * Content-Security-Policy of the page is the second wall. Returns a
 * malloc'd string or NULL. */
static char *render_markdown(const char *md)
{
    static const char *const exts[] = {"table", "strikethrough", "autolink", "tasklist"};
    cmark_gfm_core_extensions_ensure_registered();
    cmark_parser *p = cmark_parser_new(CMARK_OPT_DEFAULT | CMARK_OPT_VALIDATE_UTF8);
    if (!p) return NULL;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        cmark_syntax_extension *e = cmark_find_syntax_extension(exts[i]);
        if (e) cmark_parser_attach_syntax_extension(p, e);
    }
    cmark_parser_feed(p, md, strlen(md));
    cmark_node *doc = cmark_parser_finish(p);
    char *html =
        doc ? cmark_render_html(doc, CMARK_OPT_DEFAULT, cmark_parser_get_syntax_extensions(p))
            : NULL;
    if (doc) cmark_node_free(doc);
    cmark_parser_free(p);
    return html;
}

static const char page_style[] =
    "body{font:16px/1.6 system-ui,-apple-system,Segoe UI,sans-serif;max-width:48rem;"
    "margin:2rem auto;padding:0 1rem;color:#1f2328;background:#fff}"
    "h1{line-height:1.25}.meta{color:#59636e}"
    "video{display:block;width:100%;max-height:70vh;background:#000;border-radius:6px;"
    "margin:1rem 0}"
    "pre{background:#f6f8fa;padding:.8rem;overflow:auto;border-radius:6px}"
    "code{font-family:ui-monospace,monospace;font-size:90%}"
    "table{border-collapse:collapse}th,td{border:1px solid #d0d7de;padding:.3rem .6rem}"
    "blockquote{margin-left:0;padding-left:1rem;border-left:.25rem solid #d0d7de;color:#59636e}"
    ".pending{padding:1rem;background:#fff8c5;border-radius:6px}";

static void page_html(struct http_req *r, const struct db_res *res, const char *video_url)
{
    const char *title = db_str(res, 0, P_TITLE);
    const char *desc = db_str(res, 0, P_DESC);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    evbuffer_add_printf(b,
                        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                        "<meta name=\"referrer\" content=\"no-referrer\">\n<title>");
    html_escape(b, title ? title : "");
    evbuffer_add_printf(b, "</title>\n<style>%s</style>\n</head>\n<body>\n<main>\n<h1>",
                        page_style);
    html_escape(b, title ? title : "");
    evbuffer_add_printf(b, "</h1>\n");
    if (desc && *desc) {
        evbuffer_add_printf(b, "<p class=\"meta\">");
        html_escape(b, desc);
        evbuffer_add_printf(b, "</p>\n");
    }
    if (video_url) {
        evbuffer_add_printf(b, "<video controls preload=\"metadata\" src=\"");
        html_escape(b, video_url);
        evbuffer_add_printf(b, "\"></video>\n");
    }
    const char *content = db_str(res, 0, P_CONTENT);
    char *html = content ? render_markdown(content) : NULL;
    if (html) {
        evbuffer_add_printf(b, "<article>\n%s</article>\n", html);
        free(html);
    } else {
        if (content) log_msg(LOG_ERROR, "markdown rendering failed", "request_id", r->request_id);
        evbuffer_add_printf(b, "<p class=\"pending\">The document for this recording is not "
                               "ready yet. Check back in a few minutes.</p>\n");
    }
    evbuffer_add_printf(b, "</main>\n</body>\n</html>\n");
    http_reply_buf(r, 200, "text/html; charset=utf-8", b);
    evbuffer_free(b);
}

static void page_json(struct http_req *r, const struct db_res *res, const char *video_url)
{
    struct json_object *o = json_object_new_object();
    api_json_add_str(o, "title", db_str(res, 0, P_TITLE));
    api_json_add_str(o, "description", db_str(res, 0, P_DESC));
    struct json_object *doc = NULL;
    if (db_bool(res, 0, P_HAS_DOC)) {
        doc = json_object_new_object();
        api_json_add_str(doc, "content", db_str(res, 0, P_CONTENT));
        api_json_add_str(doc, "summary", db_str(res, 0, P_SUMMARY));
        api_json_add_str(doc, "updated_at", db_str(res, 0, P_DOC_UPDATED));
    }
    json_object_object_add(o, "document", doc);
    api_json_add_str(o, "video_url", video_url);
    api_json_add_str(o, "created_at", db_str(res, 0, P_CREATED));
    http_reply_json(r, 200, o);
}

static void page_loaded(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (api_one_row(r, res, err, sqlstate, "no such shared recording") != 0) return;
    char url[1024];
    const char *video_url = NULL;
    const char *status = db_str(res, 0, P_STATUS);
    if (db_bool(res, 0, P_VIDEO) && status && strcmp(status, "uploading") != 0 &&
        db_str(res, 0, P_KEY) &&
        signurl_video(db_str(res, 0, P_ID), MEDIA_URL_TTL_S, url, sizeof url) == 0)
        video_url = url;
    const char *accept = http_header(r, "Accept");
    if (accept && strcasestr(accept, "application/json"))
        page_json(r, res, video_url);
    else
        page_html(r, res, video_url);
}

static int share_id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 8 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static void share_page(struct http_req *r)
{
    /* Every answer of this public route, errors included: never cached
     * (unpublish acts at once), never sniffed, and a page that can load
     * nothing but its own inline style and our media. */
    http_set_header(r, "Cache-Control", "no-store");
    http_set_header(r, "X-Content-Type-Options", "nosniff");
    http_set_header(r, "Content-Security-Policy",
                    "default-src 'none'; media-src 'self'; style-src 'unsafe-inline'; "
                    "base-uri 'none'; form-action 'none'");
    http_set_header(r, "Referrer-Policy", "no-referrer");
    http_set_header(r, "Vary", "Accept");
    const char *sid = http_param(r, 0);
    if (!share_id_ok(sid)) {
        http_reply_error(r, 404, "not_found", "no such shared recording");
        return;
    }
    const char *p[1] = {sid};
    if (!db_query(app.db, &q_page, 1, p, page_loaded, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

void api_share_routes(struct http_server *s)
{
    struct http_route_opts json = {.body = HTTP_BODY_JSON, .max_body = 0};
    http_route(s, "POST", "/api/recordings/:id/publish", publish, &json);
    http_route(s, "GET", "/share/:share_id", share_page, NULL);
}
