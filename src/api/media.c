/* Media (SPEC 7): GET /api/recordings/{id}/video and the duration probe.
 * See include/reeld/media.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/media.h"
#include "reeld/proc.h"
#include "reeld/recording.h"
#include "reeld/signurl.h"
#include "reeld/storage.h"
#include "reeld/util.h"

/* The signed-URL path has no organization context: it loads by id alone;
 * the signature is what proves the caller may see it. */
static struct db_stmt q_video_by_id = {
    "media_video_by_id",
    "SELECT " REC_COLS " FROM recordings r WHERE r.id = $1 AND r.deleted_at IS NULL"};

static struct db_stmt q_set_duration = {
    "media_set_duration", "UPDATE recordings SET duration_ms = $2 WHERE id = $1 AND org_id = $3"};

/* ---- content type ------------------------------------------------------ */

static const struct {
    const char *ext, *type;
} ext_types[] = {
    {"mp4", "video/mp4"},       {"m4v", "video/mp4"},        {"webm", "video/webm"},
    {"mov", "video/quicktime"}, {"mkv", "video/x-matroska"}, {"ogv", "video/ogg"},
    {"ogg", "audio/ogg"},       {"m4a", "audio/mp4"},        {"mp3", "audio/mpeg"},
    {"wav", "audio/wav"},       {"avi", "video/x-msvideo"},  {"3gp", "video/3gpp"},
};

static int token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$&^_.+-", c) != NULL);
}

/* The stored content type is whatever the uploader claimed. It goes out
 * only when it is a well-formed audio/ or video/ type: anything else
 * (text/html above all) would let an upload run script on our origin. */
static int ctype_ok(const char *t)
{
    if (!t) return 0;
    if (strncasecmp(t, "video/", 6) != 0 && strncasecmp(t, "audio/", 6) != 0) return 0;
    const char *p = t + 6;
    if (!token_char((unsigned char)*p)) return 0;
    while (token_char((unsigned char)*p))
        p++;
    if (*p == '\0') return 1;
    if (*p != ';' && *p != ' ') return 0;
    for (; *p; p++) /* parameters: printable ASCII only */
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) return 0;
    return strlen(t) <= 200;
}

static const char *content_type_for(const char *stored, const char *key)
{
    if (ctype_ok(stored)) return stored;
    const char *dot = key ? strrchr(key, '.') : NULL;
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof ext_types / sizeof ext_types[0]; i++)
            if (strcasecmp(dot + 1, ext_types[i].ext) == 0) return ext_types[i].type;
    return "application/octet-stream";
}

/* ---- Range (RFC 9110 section 14) --------------------------------------- */

/* Digits at *p as a non-negative number (saturating); -1 when none. */
static int64_t parse_pos(const char **p)
{
    const char *s = *p;
    int64_t v = 0;
    if (*s < '0' || *s > '9') return -1;
    for (; *s >= '0' && *s <= '9'; s++)
        v = v > (INT64_MAX - 9) / 10 ? INT64_MAX : v * 10 + (*s - '0');
    *p = s;
    return v;
}

static const char *skip_ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

enum range_kind { RANGE_NONE, RANGE_ONE, RANGE_UNSATISFIABLE };

/* One byte range of a file of size bytes: [*first, *last]. A header that
 * is absent, malformed, of another unit, or asks for several ranges gives
 * RANGE_NONE, and the whole file is sent with 200: RFC 9110 lets a server
 * ignore Range, and a multipart/byteranges answer would buy players
 * nothing (they ask for one range at a time). */
static enum range_kind parse_range(const char *h, int64_t size, int64_t *first, int64_t *last)
{
    if (!h) return RANGE_NONE;
    const char *p = skip_ows(h);
    if (strncasecmp(p, "bytes", 5) != 0) return RANGE_NONE;
    p = skip_ows(p + 5);
    if (*p++ != '=') return RANGE_NONE;
    if (strchr(p, ',')) return RANGE_NONE;
    p = skip_ows(p);
    int64_t a, b;
    if (*p == '-') { /* suffix: the last n bytes */
        p++;
        int64_t n = parse_pos(&p);
        if (n < 0 || *skip_ows(p) != '\0') return RANGE_NONE;
        if (n == 0 || size == 0) return RANGE_UNSATISFIABLE;
        *first = n >= size ? 0 : size - n;
        *last = size - 1;
        return RANGE_ONE;
    }
    a = parse_pos(&p);
    if (a < 0 || *p++ != '-') return RANGE_NONE;
    b = parse_pos(&p); /* -1: open-ended */
    if (*skip_ows(p) != '\0') return RANGE_NONE;
    if (b >= 0 && b < a) return RANGE_NONE; /* invalid range-spec: ignored */
    if (a >= size) return RANGE_UNSATISFIABLE;
    *first = a;
    *last = b < 0 || b >= size ? size - 1 : b;
    return RANGE_ONE;
}

/* ---- GET /api/recordings/{id}/video ------------------------------------- */

struct video {
    int fd;
    int64_t pos, end; /* next byte to send; one past the last */
    char id[37];
};

/* One buffer for every stream: the loop is single-threaded and each piece
 * is copied into the connection's output queue before the next read. */
static char piece[MEDIA_PIECE];

static void video_close(struct http_req *r)
{
    struct video *v = r->data;
    if (v->fd >= 0) close(v->fd);
    v->fd = -1;
    r->on_drain = NULL;
    r->on_abort = NULL;
}

static void video_abort(struct http_req *r)
{
    video_close(r);
    http_stream_end(r); /* detached: this frees the request */
}

/* Queues pieces while the client's queue is below the mark; on_drain
 * brings us back when it has gone down. */
static void video_pump(struct http_req *r)
{
    struct video *v = r->data;
    int failed = 0;
    while (v->pos < v->end && http_stream_queued(r) < MEDIA_QUEUE_MARK) {
        int64_t left = v->end - v->pos;
        size_t want = left < MEDIA_PIECE ? (size_t)left : MEDIA_PIECE;
        ssize_t n = pread(v->fd, piece, want, (off_t)v->pos);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            /* The object is immutable once stored, so this is an I/O
             * error or a file truncated behind our back. The response
             * stays short of its Content-Length: the client sees a
             * truncated body, never wrong bytes. */
            struct log_line *l = log_begin(LOG_ERROR, "video read failed");
            log_str(l, "request_id", r->request_id);
            log_str(l, "recording_id", v->id);
            log_int(l, "offset", (long long)v->pos);
            log_str(l, "error", n < 0 ? strerror(errno) : "unexpected end of file");
            log_end(l);
            failed = 1;
            break;
        }
        if (http_stream_write(r, piece, (size_t)n) < 0) return; /* gone: on_abort finishes */
        v->pos += n;
    }
    if (failed || v->pos >= v->end) {
        video_close(r);
        http_stream_end(r);
    }
}

static void format_http_date(time_t t, char *out, size_t n)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* A row of REC_COLS: open the stored file and answer 200, 206 or 416. */
static void video_send(struct http_req *r, const struct db_res *res)
{
    const char *status = db_str(res, 0, db_col(res, "status"));
    const char *key = db_str(res, 0, db_col(res, "storage_key"));
    if (!status || strcmp(status, "uploading") == 0 || !key) {
        http_reply_error(r, 404, "not_found", "no video yet: the upload is not complete");
        return;
    }
    int64_t size = -1;
    int fd = storage_open_read(key, &size);
    struct stat st;
    if (fd < 0 || size < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) close(fd);
        struct log_line *l = log_begin(LOG_WARN, "stored video missing");
        log_str(l, "request_id", r->request_id);
        log_str(l, "recording_id", db_str(res, 0, 0));
        log_str(l, "key", key);
        log_end(l);
        http_reply_error(r, 404, "not_found", "video not found");
        return;
    }
    const char *ctype = content_type_for(db_str(res, 0, db_col(res, "content_type")), key);

    /* Validators: the object never changes in place, so size + mtime
     * name one version; If-Range with anything else gets the whole file. */
    char etag[64], lastmod[40], hv[96];
    snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)size,
             (unsigned long long)st.st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st.st_mtim.tv_nsec);
    format_http_date(st.st_mtim.tv_sec, lastmod, sizeof lastmod);
    const char *range = http_header(r, "Range");
    const char *if_range = http_header(r, "If-Range");
    if (range && if_range && strcmp(if_range, etag) != 0 && strcmp(if_range, lastmod) != 0)
        range = NULL;

    http_set_header(r, "Accept-Ranges", "bytes");
    http_set_header(r, "ETag", etag);
    http_set_header(r, "Last-Modified", lastmod);
    http_set_header(r, "Cache-Control", "private, no-transform");
    http_set_header(r, "X-Content-Type-Options", "nosniff");

    int64_t first = 0, last = size - 1;
    enum range_kind k = parse_range(range, size, &first, &last);
    if (k == RANGE_UNSATISFIABLE) {
        close(fd);
        snprintf(hv, sizeof hv, "bytes */%lld", (long long)size);
        http_set_header(r, "Content-Range", hv);
        http_reply_error(r, 416, "invalid_request", "range not satisfiable");
        return;
    }
    int code = 200;
    if (k == RANGE_ONE) {
        code = 206;
        snprintf(hv, sizeof hv, "bytes %lld-%lld/%lld", (long long)first, (long long)last,
                 (long long)size);
        http_set_header(r, "Content-Range", hv);
    } else {
        first = 0;
        last = size - 1;
    }

    struct video *v = http_req_alloc(r, sizeof *v);
    if (!v) {
        close(fd);
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    if (http_stream_start(r, code, ctype, last + 1 - first) != 0) {
        /* HEAD (headers sent, request finished) or the client is gone */
        close(fd);
        http_stream_end(r);
        return;
    }
    v->fd = fd;
    v->pos = first;
    v->end = last + 1;
    snprintf(v->id, sizeof v->id, "%s", db_str(res, 0, 0));
    r->data = v;
    r->on_drain = video_pump;
    r->on_abort = video_abort;
    video_pump(r);
}

static void video_loaded(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (api_one_row(r, res, err, sqlstate, "recording not found") != 0) return;
    video_send(r, res);
}

static void video_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    if (!rec_load(ctx, http_param(r, 0), video_loaded, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

/* A request with exp or sig is judged by its signature alone (a browser's
 * <video> sends no Bearer token): a bad or expired one is 403 even if a
 * token came along. Without them, the Bearer token decides (401 without
 * one), and another organization's recording is 404. */
static void video(struct http_req *r)
{
    const char *id = http_param(r, 0);
    const char *exp = http_query(r, "exp"), *sig = http_query(r, "sig");
    if (!exp && !sig) {
        auth_request(r, 1, video_authed); /* rec_load: a malformed id is no row */
        return;
    }
    if (!util_is_uuid(id)) {
        http_reply_error(r, 404, "not_found", "recording not found");
        return;
    }
    if (signurl_check(id, exp, sig) != 0) {
        http_reply_error(r, 403, "forbidden", "invalid or expired video link");
        return;
    }
    const char *p[1] = {id};
    if (!db_query(app.db, &q_video_by_id, 1, p, video_loaded, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

/* ---- duration probe ------------------------------------------------------ */

struct probe {
    struct probe *next; /* waiting for a slot */
    char id[37], org[37];
    char path[4096];
};

/* Probes run at most MEDIA_PROBES_MAX at a time; the rest wait in order
 * (a burst of uploads would otherwise start as many ffprobes at once,
 * and each costs a core for a moment). */
static struct probe *probe_head, *probe_tail;
static struct probe *probe_run[MEDIA_PROBES_MAX]; /* running, NULL slots free */
static int probes_running;

static void probe_next(void);

static void probe_log(const struct probe *pr, const char *msg, const char *error)
{
    struct log_line *l = log_begin(LOG_WARN, msg);
    log_str(l, "recording_id", pr->id);
    log_str(l, "org_id", pr->org);
    log_str(l, "stage", "probe");
    if (error) log_str(l, "error", error);
    log_end(l);
}

static void probe_saved(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct probe *pr = arg;
    if (err)
        probe_log(pr, "duration not saved", err);
    else if (db_affected(res) != 1)
        probe_log(pr, "duration not saved", "recording gone");
    free(pr);
}

static void probe_done(void *arg, const struct proc_result *res)
{
    struct probe *pr = arg;
    for (int i = 0; i < MEDIA_PROBES_MAX; i++)
        if (probe_run[i] == pr) probe_run[i] = NULL;
    probes_running--;
    probe_next();
    if (res->error || !res->exited || res->status != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s%s%s",
                 res->error       ? res->error
                 : res->timed_out ? "timed out"
                                  : "ffprobe failed",
                 res->err && *res->err ? ": " : "", res->err ? res->err : "");
        probe_log(pr, "duration probe failed", why);
        free(pr);
        return;
    }
    char *end = NULL;
    errno = 0;
    double s = strtod(res->out, &end);
    while (end && (*end == '\n' || *end == '\r' || *end == ' '))
        end++;
    if (end == res->out || errno || !end || *end || !isfinite(s) || s < 0 || s > 1e9) {
        probe_log(pr, "duration probe failed", "unparsable ffprobe output");
        free(pr);
        return;
    }
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)llround(s * 1000.0));
    const char *p[3] = {pr->id, ms, pr->org};
    if (!db_query(app.db, &q_set_duration, 3, p, probe_saved, pr)) {
        probe_log(pr, "duration not saved", "database shutting down");
        free(pr);
    }
}

void media_probe_duration(const char *recording_id, const char *org_id, const char *storage_key)
{
    if (!util_is_uuid(recording_id) || !util_is_uuid(org_id) || !storage_key) {
        log_msg(LOG_WARN, "duration probe skipped: bad arguments", "recording_id",
                recording_id ? recording_id : "");
        return;
    }
    struct probe *pr = calloc(1, sizeof *pr);
    if (!pr) return;
    memcpy(pr->id, recording_id, strlen(recording_id));
    memcpy(pr->org, org_id, strlen(org_id));
    if (!storage_local_path(storage_key, pr->path, sizeof pr->path)) {
        probe_log(pr, "duration probe skipped", "no local path for the stored object");
        free(pr);
        return;
    }
    if (probe_tail)
        probe_tail->next = pr;
    else
        probe_head = pr;
    probe_tail = pr;
    probe_next();
}

static void probe_next(void)
{
    while (probes_running < MEDIA_PROBES_MAX && probe_head) {
        struct probe *pr = probe_head;
        probe_head = pr->next;
        if (!probe_head) probe_tail = NULL;
        const char *argv[] = {
            "ffprobe",           "-v",     "error", "-show_entries", "format=duration", "-of",
            "default=nw=1:nk=1", pr->path, NULL};
        struct proc_opts o = {.argv = argv, .max_out = 4096, .timeout_ms = 30000};
        if (!proc_start(app.base, &o, probe_done, pr)) {
            probe_log(pr, "duration probe failed", "cannot start ffprobe");
            free(pr);
            continue;
        }
        for (int i = 0; i < MEDIA_PROBES_MAX; i++)
            if (!probe_run[i]) {
                probe_run[i] = pr;
                break;
            }
        probes_running++;
    }
}

void media_shutdown(void)
{
    /* proc_shutdown ran: no probe callback comes any more */
    for (int i = 0; i < MEDIA_PROBES_MAX; i++) {
        free(probe_run[i]);
        probe_run[i] = NULL;
    }
    while (probe_head) {
        struct probe *pr = probe_head;
        probe_head = pr->next;
        free(pr);
    }
    probe_tail = NULL;
    probes_running = 0;
}

void api_media_routes(struct http_server *s)
{
    http_route(s, "GET", "/api/recordings/:id/video", video, NULL);
}
