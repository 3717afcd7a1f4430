/* The tus 1.0.0 server at /api/uploads/ (SPEC 7): core protocol plus
 * creation, creation-with-upload, creation-defer-length, termination,
 * expiration and checksum.
 *
 * An upload is a recording in status 'uploading'; its tus id is the
 * recording id. A PATCH (or a creation with a body) runs as:
 *
 *   auth -> lease (one statement: the row's state, and the lease taken
 *   when free) -> storage_upload_open at the stored offset -> body
 *   pieces written (and hashed) as they arrive, never buffered ->
 *   storage_upload_sync -> UPDATE upload_offset, lease released ->
 *   [last byte: rec_finalize: file moved into place, status 'uploaded'
 *   and its event, duration probe] -> 204 with Upload-Offset.
 *
 * So an offset is durable before it is acknowledged. The lease (the
 * upload_lease_* columns, renewed while the body flows) keeps one PATCH
 * at a time per upload across processes; a list of the uploads this
 * process is writing answers a second local PATCH at once. Both give 423.
 * A body that fails midway (client gone, timeout, full disk) keeps the
 * bytes that arrived, unless a checksum was asked for: bytes that cannot
 * be verified are discarded like a mismatching chunk (460). A HEAD that
 * comes while this process still writes the upload waits for that write
 * to end (bounded), so a client resuming after a drop reads the offset
 * the dropped request ends at.
 *
 * Expiration: each PATCH moves upload_expires_at REC_UPLOAD_TTL_S ahead;
 * the sweeper (every REELD_UPLOAD_SWEEP_S seconds, and at start) removes
 * expired incomplete uploads, bytes and row. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <json-c/json.h>
#include <mbedtls/sha1.h>
#include <mbedtls/sha256.h>

#include "rec_int.h"
#include "tus_wire.h"
#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/recording.h"
#include "reeld/storage.h"
#include "reeld/util.h"

#define TUS_VERSION "1.0.0"
#define TUS_EXTENSIONS                                                                             \
    "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum"
#define TUS_CHECKSUMS "sha1,sha256"
#define TUS_OCTETS "application/offset+octet-stream"
#define LEASE_S 120
#define LEASE_RENEW_S 30
#define HEAD_WAIT_S 5
#define SWEEP_BATCH "500"

static struct db_stmt q_head = {
    "up_head", "SELECT r.status, r.size_bytes, r.upload_offset, r.upload_metadata::text,"
               " extract(epoch FROM r.upload_expires_at)::bigint,"
               " coalesce(r.upload_expires_at < now(), false)"
               " FROM recordings r WHERE r.id = $1 AND r.org_id = $2 AND r.deleted_at IS NULL"};

/* The row's state and, when the lease is free (or expired: a dead
 * process), the lease. FOR UPDATE makes two PATCHes arriving together on
 * two processes see each other: the second waits, then sees the lease. */
static struct db_stmt q_lease = {
    "up_lease",
    "WITH cur AS (SELECT id, user_id, status, size_bytes, upload_offset, storage_key,"
    " coalesce(upload_expires_at < now(), false) AS expired,"
    " (upload_lease_owner IS NULL OR upload_lease_expires_at < now()) AS free"
    " FROM recordings WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR UPDATE),"
    " upd AS (UPDATE recordings r SET upload_lease_owner = $3,"
    " upload_lease_expires_at = now() + make_interval(secs => $4::double precision),"
    " upload_expires_at = now() + make_interval(secs => $5::double precision)"
    " FROM cur WHERE r.id = cur.id AND cur.free AND NOT cur.expired"
    " AND cur.status = 'uploading' AND (cur.user_id = $6::uuid OR $7::boolean) RETURNING r.id)"
    " SELECT cur.user_id, cur.status, cur.size_bytes, cur.upload_offset, cur.storage_key,"
    " cur.expired, EXISTS (SELECT 1 FROM upd) FROM cur"};

static struct db_stmt q_save = {
    "up_save", "UPDATE recordings SET upload_offset = $3, size_bytes = coalesce($4::bigint,"
               " size_bytes), upload_expires_at = now() + make_interval(secs => $5::double"
               " precision), upload_lease_owner = NULL, upload_lease_expires_at = NULL"
               " WHERE id = $1 AND upload_lease_owner = $2 AND deleted_at IS NULL"
               " RETURNING extract(epoch FROM upload_expires_at)::bigint"};

static struct db_stmt q_release = {"up_release", "UPDATE recordings SET upload_lease_owner = NULL,"
                                                 " upload_lease_expires_at = NULL"
                                                 " WHERE id = $1 AND upload_lease_owner = $2"};

static struct db_stmt q_renew = {"up_renew", "UPDATE recordings SET upload_lease_expires_at = now()"
                                             " + make_interval(secs => $3::double precision)"
                                             " WHERE id = $1 AND upload_lease_owner = $2"};

/* Expired incomplete uploads nobody is writing, with their event. */
static struct db_stmt q_sweep = {
    "up_sweep", "WITH d AS (DELETE FROM recordings WHERE id IN (SELECT id FROM recordings"
                " WHERE status = 'uploading' AND upload_expires_at < now()"
                " AND (upload_lease_owner IS NULL OR upload_lease_expires_at < now())"
                " ORDER BY upload_expires_at LIMIT " SWEEP_BATCH " FOR UPDATE SKIP LOCKED)"
                " RETURNING id, org_id),"
                " e AS (INSERT INTO events (org_id, recording_id, type, data)"
                " SELECT org_id, id, 'recording.deleted',"
                " jsonb_build_object('recording_id', id, 'reason', 'upload expired') FROM d)"
                " SELECT id FROM d"};

/* ---- protocol helpers ------------------------------------------------------ */

static void set_i64(struct http_req *r, const char *name, int64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)v);
    http_set_header(r, name, b);
}

static void set_expires(struct http_req *r, int64_t epoch)
{
    if (epoch <= 0) return;
    char b[64];
    tus_http_date(epoch, b, sizeof b);
    http_set_header(r, "Upload-Expires", b);
}

/* Every response of the tus server carries Tus-Resumable; a request
 * speaking another version (or none) gets 412 with the one we speak. */
static int tus_begin(struct http_req *r)
{
    http_set_header(r, "Tus-Resumable", TUS_VERSION);
    const char *v = http_header(r, "Tus-Resumable");
    if (v && strcmp(v, TUS_VERSION) == 0) return 0;
    http_set_header(r, "Tus-Version", TUS_VERSION);
    http_reply_error(r, 412, "invalid_request",
                     v ? "unsupported Tus-Resumable version" : "Tus-Resumable header required");
    return -1;
}

/* The stored metadata back in Upload-Metadata. Strict decoding makes the
 * echo exactly as long as what was sent, so it fits the same bound. */
static void meta_echo(struct http_req *r, const char *json)
{
    char out[TUS_METADATA_MAX + 1];
    if (tus_meta_format(json, out, sizeof out) > 0) http_set_header(r, "Upload-Metadata", out);
}

static const char *meta_get(struct json_object *m, const char *k)
{
    struct json_object *v;
    if (!m || !json_object_object_get_ex(m, k, &v)) return NULL;
    const char *s = json_object_get_string(v);
    return s && *s ? s : NULL;
}

/* ---- one write (PATCH, or a creation with its body) ------------------------- */

enum alg { ALG_NONE, ALG_SHA1, ALG_SHA256 };

struct head_wait;
static void head_wake_all(struct head_wait *w);

struct up {
    struct up *next; /* the uploads this process is writing */
    int listed;
    struct head_wait *waiters; /* HEADs waiting for this write to end */
    struct http_req *r;
    struct auth_ctx ctx;
    char id[37], lease[37], key[200];
    int creating;    /* POST /api/uploads/: 201 and Location */
    int has_body;    /* the request carries bytes */
    int write;       /* the body goes to storage (else a creation without data) */
    int64_t want;    /* Upload-Offset of the request */
    int64_t newlen;  /* Upload-Length sent with a PATCH of a deferred upload, or -1 */
    int64_t start;   /* stored offset when the lease was taken */
    int64_t length;  /* known length, or -1 (deferred) */
    int64_t offset;  /* the offset to report, -1 unknown */
    int64_t expires; /* Upload-Expires (epoch), 0 none */
    int64_t got;     /* body bytes taken */
    enum alg alg;
    unsigned char digest[32];
    mbedtls_sha1_context sha1;
    mbedtls_sha256_context sha256;
    struct storage_upload *su;
    struct event *renew;
    int leased, ended, fail;
    const char *fail_code, *fail_msg;
    const char *body_err;
    char location[256];
};

static struct up *active;

static struct up *active_find(const char *id)
{
    for (struct up *u = active; u; u = u->next)
        if (strcmp(u->id, id) == 0) return u;
    return NULL;
}

static void active_add(struct up *u)
{
    u->next = active;
    active = u;
    u->listed = 1;
}

static void active_remove(struct up *u)
{
    if (!u->listed) return;
    for (struct up **pp = &active; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    }
    u->listed = 0;
}

static void up_free(struct up *u)
{
    active_remove(u);
    head_wake_all(u->waiters);
    if (u->renew) event_free(u->renew);
    if (u->su) storage_upload_close(u->su);
    mbedtls_sha1_free(&u->sha1);
    mbedtls_sha256_free(&u->sha256);
    free(u);
}

/* Answers and forgets the write. Never touch u (or its request) after. */
static void up_reply(struct up *u, int status, const char *code, const char *msg)
{
    struct http_req *r = u->r;
    r->on_body = NULL;
    r->on_body_end = NULL;
    r->on_abort = NULL;
    r->data = NULL;
    if (u->offset >= 0) set_i64(r, "Upload-Offset", u->offset);
    if (status < 300 && u->expires > 0) set_expires(r, u->expires);
    if (u->creating && u->location[0]) http_set_header(r, "Location", u->location);
    up_free(u);
    if (status < 300)
        http_reply_empty(r, status);
    else
        http_reply_error(r, status, code, msg);
}

static void up_db_error(struct up *u, const char *err, const char *sqlstate)
{
    struct http_req *r = u->r;
    r->on_body = NULL;
    r->on_body_end = NULL;
    r->on_abort = NULL;
    r->data = NULL;
    up_free(u);
    api_db_error(r, err, sqlstate);
}

static void released(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)res;
    (void)sqlstate;
    struct up *u = arg;
    if (err) log_msg(LOG_WARN, "upload lease release failed", "recording_id", u->id);
    up_reply(u, u->fail, u->fail_code, u->fail_msg);
}

/* Ends a write that stores nothing new: release the lease, answer u->fail. */
static void up_release_and_reply(struct up *u)
{
    if (u->su) {
        storage_upload_close(u->su);
        u->su = NULL;
    }
    if (!u->fail) { /* the client left before any byte was taken */
        u->fail = 400;
        u->fail_code = "invalid_request";
        u->fail_msg = u->body_err ? u->body_err : "the request ended early";
    }
    if (!u->leased) {
        up_reply(u, u->fail, u->fail_code, u->fail_msg);
        return;
    }
    const char *p[2] = {u->id, u->lease};
    if (!db_query(app.db, &q_release, 2, p, released, u))
        up_reply(u, 503, "unavailable", "shutting down");
}

static void up_fail(struct up *u, int status, const char *code, const char *msg)
{
    u->fail = status;
    u->fail_code = code;
    u->fail_msg = msg;
    up_release_and_reply(u);
}

/* Drops this request's bytes: the file goes back to the offset it had. */
static void up_discard(struct up *u)
{
    if (u->su) {
        storage_upload_close(u->su);
        u->su = NULL;
    }
    char err[160];
    struct storage_upload *s = storage_upload_open(u->id, u->start, err, sizeof err);
    if (s)
        storage_upload_close(s);
    else
        log_msg(LOG_WARN, "upload discard failed", "error", err);
    u->offset = u->start;
}

static void up_finalized(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct up *u = arg;
    if (err) {
        if (sqlstate && *sqlstate)
            up_db_error(u, err, sqlstate);
        else
            up_reply(u, 500, "internal", "the upload could not be completed; retry");
        return;
    }
    (void)res;
    u->expires = 0;
    up_reply(u, u->creating ? 201 : 204, NULL, NULL);
}

static void up_saved(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct up *u = arg;
    u->leased = 0; /* released by the same statement */
    if (err) {
        up_db_error(u, err, sqlstate);
        return;
    }
    if (db_nrows(res) != 1) {
        u->offset = -1;
        up_reply(u, 409, "conflict", "the upload changed while this request ran");
        return;
    }
    u->expires = db_int(res, 0, 0);
    if (u->fail) {
        up_reply(u, u->fail, u->fail_code, u->fail_msg);
        return;
    }
    if (u->length >= 0 && u->offset == u->length) {
        if (rec_finalize(u->id, u->ctx.org_id, u->key, u->length, up_finalized, u) != 0)
            up_reply(u, 503, "unavailable", "shutting down");
        return;
    }
    up_reply(u, u->creating ? 201 : 204, NULL, NULL);
}

/* Records the durable offset (and a length that was deferred) and
 * releases the lease. */
static void up_save(struct up *u)
{
    char off[24], len[24], ttl[16];
    snprintf(off, sizeof off, "%lld", (long long)u->offset);
    snprintf(len, sizeof len, "%lld", (long long)u->newlen);
    snprintf(ttl, sizeof ttl, "%d", REC_UPLOAD_TTL_S);
    const char *p[5] = {u->id, u->lease, off, u->newlen >= 0 ? len : NULL, ttl};
    if (!db_query(app.db, &q_save, 5, p, up_saved, u))
        up_reply(u, 503, "unavailable", "shutting down");
}

static void up_synced(void *arg, int64_t durable, const char *err)
{
    struct up *u = arg;
    storage_upload_close(u->su);
    u->su = NULL;
    if (err) {
        struct log_line *l = log_begin(LOG_ERROR, "upload sync failed");
        log_str(l, "recording_id", u->id);
        log_str(l, "error", err);
        log_end(l);
        up_discard(u);
        if (strcmp(err, STORAGE_ERR_NOSPACE) == 0)
            up_fail(u, 507, "unavailable", "insufficient storage; resume later");
        else
            up_fail(u, 500, "internal", "the bytes could not be stored; resume from HEAD");
        return;
    }
    u->offset = durable;
    up_save(u);
}

/* The body ended (or was cut short): verify, make durable, record. */
static void up_end(struct up *u)
{
    if (u->renew) event_del(u->renew);
    if (!u->su) { /* nothing was opened: the lease phase ends it */
        up_release_and_reply(u);
        return;
    }
    if (u->fail == 413 || u->fail == 500 || (u->alg && (u->body_err || u->fail))) {
        /* not storable, or cannot be verified: nothing of it is kept */
        up_discard(u);
        if (!u->fail) {
            u->fail = 460;
            u->fail_code = "invalid_request";
            u->fail_msg = "the body ended before its checksum could be verified";
        }
        up_release_and_reply(u);
        return;
    }
    if (u->alg && !u->body_err) {
        unsigned char got[32];
        size_t n = u->alg == ALG_SHA1 ? 20 : 32;
        if (u->alg == ALG_SHA1)
            mbedtls_sha1_finish_ret(&u->sha1, got);
        else
            mbedtls_sha256_finish_ret(&u->sha256, got);
        if (util_ct_memcmp(got, u->digest, n) != 0) {
            up_discard(u);
            up_fail(u, 460, "invalid_request", "checksum mismatch: the chunk was discarded");
            return;
        }
    }
    storage_upload_sync(u->su, up_synced, u);
}

static int up_on_body(struct http_req *r, const char *data, size_t len)
{
    struct up *u = r->data;
    if (!u || u->ended) return 0;
    int64_t at = u->start + u->got + (int64_t)len;
    int nospace = 0;
    if ((u->length >= 0 && at > u->length) || at > REC_MAX_SIZE) {
        u->fail = 413;
        u->fail_code = "payload_too_large";
        u->fail_msg = "the body goes beyond Upload-Length";
    } else if (storage_upload_write(u->su, data, len, &nospace) != 0) {
        /* what was written before stays (the piece itself was cut back) */
        u->fail = nospace ? 507 : 500;
        u->fail_code = nospace ? "unavailable" : "internal";
        u->fail_msg = nospace ? "insufficient storage; resume later" : "write failed";
        if (!nospace) log_msg(LOG_ERROR, "upload write failed", "recording_id", u->id);
    } else {
        if (u->alg == ALG_SHA1)
            mbedtls_sha1_update_ret(&u->sha1, (const unsigned char *)data, len);
        else if (u->alg == ALG_SHA256)
            mbedtls_sha256_update_ret(&u->sha256, (const unsigned char *)data, len);
        u->got += (int64_t)len;
        return 0;
    }
    /* stop reading; the answer closes the connection */
    u->ended = 1;
    r->on_body = NULL;
    r->on_body_end = NULL;
    http_body_pause(r);
    up_end(u);
    return -1;
}

static void up_on_body_end(struct http_req *r, const char *err)
{
    struct up *u = r->data;
    if (!u || u->ended) return;
    u->ended = 1;
    u->body_err = err;
    r->on_body = NULL;
    r->on_body_end = NULL;
    if (err && !u->su) return; /* still leasing: lease_done ends it */
    up_end(u);
}

static void up_on_abort(struct http_req *r)
{
    /* Whatever runs (lease, sync, save) finishes the request; its answer
     * is dropped. Bytes already written are still synced and recorded. */
    (void)r;
}

static void renew_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct up *u = arg;
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", LEASE_S);
    const char *p[3] = {u->id, u->lease, ttl};
    db_query(app.db, &q_renew, 3, p, NULL, NULL);
}

/* Lease held and checks passed: open the file and let the body flow. */
static void up_stream(struct up *u)
{
    char err[160];
    u->su = storage_upload_open(u->id, u->start, err, sizeof err);
    if (!u->su) {
        struct log_line *l = log_begin(LOG_ERROR, "upload open failed");
        log_str(l, "recording_id", u->id);
        log_str(l, "error", err);
        log_end(l);
        up_fail(u, 500, "internal", "the upload's bytes are not available");
        return;
    }
    if (u->alg == ALG_SHA1) mbedtls_sha1_starts_ret(&u->sha1);
    if (u->alg == ALG_SHA256) mbedtls_sha256_starts_ret(&u->sha256, 0);
    u->renew = event_new(app.base, -1, EV_PERSIST, renew_cb, u);
    struct timeval tv = {LEASE_RENEW_S, 0};
    if (u->renew) event_add(u->renew, &tv);
    if (u->ended) { /* the client left while we leased */
        up_end(u);
        return;
    }
    http_body_resume(u->r);
}

static void lease_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct up *u = arg;
    if (err) {
        up_db_error(u, err, sqlstate);
        return;
    }
    if (db_nrows(res) != 1) {
        up_reply(u, 404, "not_found", "upload not found");
        return;
    }
    const char *owner = db_str(res, 0, 0);
    int may = u->ctx.admin || (owner && strcmp(owner, u->ctx.user_id) == 0);
    const char *status = db_str(res, 0, 1);
    int64_t stored = db_int(res, 0, 3);
    u->length = db_isnull(res, 0, 2) ? -1 : db_int(res, 0, 2);
    u->leased = db_bool(res, 0, 6);
    snprintf(u->key, sizeof u->key, "%s", db_str(res, 0, 4) ? db_str(res, 0, 4) : "");
    if (!may) {
        up_reply(u, 403, "forbidden", "only the owner or an admin may upload to it");
        return;
    }
    if (strcmp(status, "uploading") != 0) { /* complete already */
        u->offset = stored;
        if (u->want != stored)
            up_reply(u, 409, "conflict", "Upload-Offset does not match the upload's offset");
        else if (u->has_body)
            up_reply(u, 413, "payload_too_large", "the upload is complete");
        else
            up_reply(u, 204, NULL, NULL);
        return;
    }
    if (db_bool(res, 0, 5)) {
        up_reply(u, 410, "not_found", "the upload expired");
        return;
    }
    if (!u->leased) {
        up_reply(u, 423, "conflict", "another request is writing this upload");
        return;
    }
    u->start = stored;
    u->offset = stored;
    if (u->ended) { /* the client left while we leased */
        up_release_and_reply(u);
        return;
    }
    if (u->want != stored) {
        up_fail(u, 409, "conflict", "Upload-Offset does not match the upload's offset");
        return;
    }
    if (u->newlen >= 0) {
        if (u->length >= 0 && u->newlen != u->length) {
            up_fail(u, 400, "invalid_request", "Upload-Length cannot be changed");
            return;
        }
        if (u->newlen < stored) {
            up_fail(u, 400, "invalid_request", "Upload-Length is below the stored offset");
            return;
        }
        if (u->length >= 0)
            u->newlen = -1; /* nothing to record */
        else
            u->length = u->newlen;
    }
    int64_t cl = u->r->content_length;
    if (cl > 0 && ((u->length >= 0 && stored + cl > u->length) || stored + cl > REC_MAX_SIZE)) {
        up_fail(u, 413, "payload_too_large", "the body goes beyond Upload-Length");
        return;
    }
    up_stream(u);
}

static void up_lease(struct up *u)
{
    char lease_s[16], ttl[16];
    snprintf(lease_s, sizeof lease_s, "%d", LEASE_S);
    snprintf(ttl, sizeof ttl, "%d", REC_UPLOAD_TTL_S);
    const char *p[7] = {u->id,
                        u->ctx.org_id,
                        u->lease,
                        lease_s,
                        ttl,
                        u->ctx.user_id,
                        u->ctx.admin ? "true" : "false"};
    if (!db_query(app.db, &q_lease, 7, p, lease_done, u))
        up_reply(u, 503, "unavailable", "shutting down");
}

/* Reads the headers every write shares; answers and returns NULL on a bad
 * one. The body stays paused. */
static struct up *up_new(struct http_req *r, const struct auth_ctx *ctx, int creating)
{
    struct up *u = calloc(1, sizeof *u);
    if (!u) {
        http_reply_error(r, 500, "internal", "out of memory");
        return NULL;
    }
    u->r = r;
    u->ctx = *ctx;
    u->creating = creating;
    u->want = 0;
    u->newlen = u->length = u->offset = -1;
    util_uuid_v4(u->lease);
    mbedtls_sha1_init(&u->sha1);
    mbedtls_sha256_init(&u->sha256);
    u->has_body = r->content_length > 0 ||
                  (r->content_length < 0 && http_header(r, "Transfer-Encoding") != NULL);
    const char *ct = http_header(r, "Content-Type");
    int over;
    const char *why = NULL;
    int status = 400;
    if ((!creating || u->has_body) && (!ct || strcasecmp(ct, TUS_OCTETS) != 0)) {
        status = 415;
        why = "Content-Type must be " TUS_OCTETS;
    }
    if (!why && !creating &&
        tus_parse_u64(http_header(r, "Upload-Offset"), INT64_MAX, &u->want, &over) != 0)
        why = "Upload-Offset must be a non-negative integer";
    const char *ul = http_header(r, "Upload-Length");
    if (!why && !creating && ul && tus_parse_u64(ul, REC_MAX_SIZE, &u->newlen, &over) != 0) {
        status = over ? 413 : 400;
        why = over ? "Upload-Length exceeds Tus-Max-Size" : "Upload-Length must be an integer";
    }
    const char *cs = http_header(r, "Upload-Checksum");
    if (!why && cs) {
        size_t al = strcspn(cs, " ");
        size_t want = 0;
        if (al == 4 && strncmp(cs, "sha1", 4) == 0) {
            u->alg = ALG_SHA1;
            want = 20;
        } else if (al == 6 && strncmp(cs, "sha256", 6) == 0) {
            u->alg = ALG_SHA256;
            want = 32;
        }
        unsigned char d[64];
        const char *b = cs[al] ? cs + al + 1 : cs + al;
        if (!u->alg)
            why = "unsupported checksum algorithm (use sha1 or sha256)";
        else if (strlen(b) > 64 || tus_b64_decode(b, strlen(b), d) != (long)want)
            why = "malformed Upload-Checksum";
        else
            memcpy(u->digest, d, want);
    }
    if (why) {
        if (status == 415)
            http_reply_error(r, status, "unsupported_media_type", why);
        else if (status == 413)
            http_reply_error(r, status, "payload_too_large", why);
        else
            http_reply_error(r, status, "invalid_request", why);
        up_free(u);
        return NULL;
    }
    return u;
}

/* From here on the write owns the request's body callbacks. */
static void up_attach(struct up *u)
{
    struct http_req *r = u->r;
    r->data = u;
    r->on_body = up_on_body;
    r->on_body_end = up_on_body_end;
    r->on_abort = up_on_abort;
}

/* ---- PATCH /api/uploads/{id} ------------------------------------------------ */

static void patch_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *id = http_param(r, 0);
    if (!util_is_uuid(id)) {
        http_reply_error(r, 404, "not_found", "upload not found");
        return;
    }
    struct up *u = up_new(r, ctx, 0);
    if (!u) return;
    snprintf(u->id, sizeof u->id, "%s", id);
    for (char *c = u->id; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    up_attach(u);
    if (active_find(u->id)) {
        up_reply(u, 423, "conflict", "another request is writing this upload");
        return;
    }
    active_add(u);
    u->write = 1;
    up_lease(u);
}

static void tus_patch(struct http_req *r)
{
    http_body_pause(r); /* nothing flows until the lease is held */
    if (tus_begin(r) == 0) auth_request(r, 1, patch_authed);
}

/* ---- POST /api/uploads/ (creation) ------------------------------------------ */

static void created(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct up *u = arg;
    if (err || db_nrows(res) != 1) {
        up_db_error(u, err ? err : "no row", sqlstate);
        return;
    }
    snprintf(u->id, sizeof u->id, "%s", db_str(res, 0, 0));
    snprintf(u->location, sizeof u->location, "%s/api/uploads/%s", cfg.public_url, u->id);
    struct log_line *l = log_begin(LOG_INFO, "upload created");
    log_str(l, "recording_id", u->id);
    log_str(l, "org_id", u->ctx.org_id);
    log_int(l, "length", u->length);
    log_end(l);
    if (!u->write) {
        /* no bytes: answer once the (empty) request has been read whole */
        u->offset = 0;
        u->expires = (int64_t)time(NULL) + REC_UPLOAD_TTL_S;
        if (u->ended)
            up_reply(u, 201, NULL, NULL);
        else
            http_body_resume(u->r);
        return;
    }
    active_add(u);
    up_lease(u);
}

/* A creation without bytes: the empty body's end is the moment to answer. */
static void create_body_end(struct http_req *r, const char *err)
{
    struct up *u = r->data;
    if (!u || u->ended) return;
    u->ended = 1;
    u->body_err = err;
    if (u->id[0]) up_reply(u, 201, NULL, NULL);
}

static void create_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *ul = http_header(r, "Upload-Length");
    const char *dl = http_header(r, "Upload-Defer-Length");
    const char *mh = http_header(r, "Upload-Metadata");
    int64_t length = -1;
    int over = 0;
    if ((ul != NULL) == (dl != NULL)) {
        http_reply_error(r, 400, "invalid_request",
                         "send exactly one of Upload-Length and Upload-Defer-Length");
        return;
    }
    if (dl && strcmp(dl, "1") != 0) {
        http_reply_error(r, 400, "invalid_request", "Upload-Defer-Length must be 1");
        return;
    }
    if (ul && tus_parse_u64(ul, REC_MAX_SIZE, &length, &over) != 0) {
        if (over)
            http_reply_error(r, 413, "payload_too_large", "Upload-Length exceeds Tus-Max-Size");
        else
            http_reply_error(r, 400, "invalid_request", "Upload-Length must be an integer");
        return;
    }
    if (mh && strlen(mh) > TUS_METADATA_MAX) {
        http_reply_error(r, 400, "invalid_request", "Upload-Metadata is larger than 4 KiB");
        return;
    }
    struct json_object *meta = mh && *mh ? tus_meta_parse(mh) : NULL;
    if (mh && *mh && !meta) {
        http_reply_error(r, 400, "invalid_request", "malformed Upload-Metadata");
        return;
    }
    struct rec_new n = {.size = length};
    n.filename = meta_get(meta, "filename") ? meta_get(meta, "filename") : meta_get(meta, "name");
    n.content_type =
        meta_get(meta, "filetype") ? meta_get(meta, "filetype") : meta_get(meta, "type");
    const char *title = meta_get(meta, "title");
    const char *why = NULL;
    size_t chars = 0;
    for (const char *c = title; c && *c; c++)
        chars += ((unsigned char)*c & 0xc0) != 0x80;
    if (n.content_type && !rec_content_type_ok(n.content_type))
        why = "filetype must be a video/* or audio/* media type";
    else if (chars > 500)
        why = "title is longer than 500 characters";
    else if (n.filename && strlen(n.filename) > 255)
        why = "filename is longer than 255 bytes";
    if (why) {
        json_object_put(meta);
        http_reply_error(r, 400, "invalid_request", why);
        return;
    }
    /* the title defaults to the file's name without its extension */
    char tbuf[256];
    if (!title && n.filename) {
        const char *dot = strrchr(n.filename, '.');
        size_t l = dot && dot != n.filename ? (size_t)(dot - n.filename) : strlen(n.filename);
        snprintf(tbuf, sizeof tbuf, "%.*s", (int)l, n.filename);
        title = tbuf;
    }
    while (title && isspace((unsigned char)*title))
        title++;
    n.title = title && *title ? title : NULL;
    n.metadata_json = meta ? json_object_to_json_string_ext(meta, JSON_C_TO_STRING_PLAIN) : NULL;

    struct up *u = up_new(r, ctx, 1);
    if (!u) {
        json_object_put(meta);
        return;
    }
    u->length = length;
    u->write = u->has_body || length == 0;
    up_attach(u);
    if (!u->write) r->on_body_end = create_body_end;
    struct db_req *q = rec_create(ctx, &n, created, u);
    json_object_put(meta); /* rec_create copied the parameters */
    if (!q) up_reply(u, 503, "unavailable", "shutting down");
}

static void tus_post(struct http_req *r);

static void tus_create(struct http_req *r)
{
    /* the tail route also matches deeper paths: only /api/uploads[/] */
    if (strcmp(r->path, "/api/uploads") != 0 && strcmp(r->path, "/api/uploads/") != 0) {
        http_reply_error(r, 404, "not_found", "no such route");
        return;
    }
    tus_post(r);
}

/* ---- HEAD /api/uploads/{id} ------------------------------------------------- */

static void head_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (err) {
        api_db_error(r, err, sqlstate);
        return;
    }
    http_set_header(r, "Cache-Control", "no-store");
    if (db_nrows(res) != 1) {
        http_reply_error(r, 404, "not_found", "upload not found");
        return;
    }
    int uploading = strcmp(db_str(res, 0, 0), "uploading") == 0;
    if (uploading && db_bool(res, 0, 5)) {
        http_reply_error(r, 410, "not_found", "the upload expired");
        return;
    }
    set_i64(r, "Upload-Offset", db_int(res, 0, 2));
    if (db_isnull(res, 0, 1))
        http_set_header(r, "Upload-Defer-Length", "1");
    else
        set_i64(r, "Upload-Length", db_int(res, 0, 1));
    meta_echo(r, db_str(res, 0, 3));
    if (uploading) set_expires(r, db_int(res, 0, 4));
    http_reply_empty(r, 200);
}

static void head_query(struct http_req *r, const char *id, const char *org_id)
{
    const char *p[2] = {id, org_id};
    if (!db_query(app.db, &q_head, 2, p, head_done, r))
        http_reply_error(r, 503, "unavailable", "shutting down");
}

/* A HEAD that arrives while this process writes the same upload waits
 * for that write to end, at most HEAD_WAIT_S: a client that dropped a
 * PATCH and asks where to resume must not see an offset that the old
 * request (still draining what the socket held, or syncing it) moves
 * right after. Past the bound it gets the durable offset as it is. */
struct head_wait {
    struct head_wait *next;
    struct up *u;
    struct http_req *r;
    struct event *timer;
    char id[37], org_id[37];
};

static void head_wake(struct head_wait *w)
{
    event_free(w->timer);
    head_query(w->r, w->id, w->org_id);
}

static void head_wake_all(struct head_wait *w)
{
    while (w) {
        struct head_wait *next = w->next;
        head_wake(w);
        w = next;
    }
}

static void head_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct head_wait *w = arg;
    for (struct head_wait **pp = &w->u->waiters; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    head_wake(w);
}

static void head_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *id = http_param(r, 0);
    if (!util_is_uuid(id)) {
        http_set_header(r, "Cache-Control", "no-store");
        http_reply_error(r, 404, "not_found", "upload not found");
        return;
    }
    struct head_wait *w = http_req_alloc(r, sizeof *w);
    if (!w) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    for (int i = 0; i < 36; i++)
        w->id[i] = (char)tolower((unsigned char)id[i]);
    snprintf(w->org_id, sizeof w->org_id, "%s", ctx->org_id);
    struct up *u = active_find(w->id);
    struct timeval tv = {HEAD_WAIT_S, 0};
    if (u && (w->timer = evtimer_new(app.base, head_wait_timeout, w)) != NULL) {
        w->u = u;
        w->r = r;
        w->next = u->waiters;
        u->waiters = w;
        evtimer_add(w->timer, &tv);
        return;
    }
    head_query(r, w->id, w->org_id);
}

static void tus_head(struct http_req *r)
{
    if (tus_begin(r) == 0) auth_request(r, 1, head_authed);
}

/* ---- DELETE /api/uploads/{id} (termination) ----------------------------------- */

static void terminated(void *arg, int status, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (status == 204)
        http_reply_empty(r, 204);
    else if (status == 404)
        http_reply_error(r, 404, "not_found", "upload not found");
    else
        api_db_error(r, err ? err : "delete failed", sqlstate);
}

static void term_loaded(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct http_req *r = arg;
    if (api_one_row(r, res, err, sqlstate, "upload not found") != 0) return;
    const struct auth_ctx *ctx = r->data;
    if (!rec_may_modify(ctx, res, 0)) {
        http_reply_error(r, 403, "forbidden", "only the owner or an admin may terminate it");
        return;
    }
    if (rec_delete(db_str(res, 0, 0), ctx->org_id, terminated, r) != 0)
        http_reply_error(r, 503, "unavailable", "shutting down");
}

static void term_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *id = http_param(r, 0);
    if (!util_is_uuid(id)) {
        http_reply_error(r, 404, "not_found", "upload not found");
        return;
    }
    struct auth_ctx *c = http_req_alloc(r, sizeof *c);
    if (!c) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    *c = *ctx;
    r->data = c;
    if (!rec_load(c, id, term_loaded, r)) http_reply_error(r, 503, "unavailable", "shutting down");
}

static void tus_delete(struct http_req *r)
{
    if (tus_begin(r) == 0) auth_request(r, 1, term_authed);
}

/* ---- OPTIONS ----------------------------------------------------------------- */

static void options_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    (void)ctx;
    char max[24];
    snprintf(max, sizeof max, "%lld", REC_MAX_SIZE);
    http_set_header(r, "Tus-Version", TUS_VERSION);
    http_set_header(r, "Tus-Extension", TUS_EXTENSIONS);
    http_set_header(r, "Tus-Max-Size", max);
    http_set_header(r, "Tus-Checksum-Algorithm", TUS_CHECKSUMS);
    http_reply_empty(r, 204);
}

/* Discovery needs no Tus-Resumable (the client learns the versions here). */
static void tus_options(struct http_req *r)
{
    http_set_header(r, "Tus-Resumable", TUS_VERSION);
    auth_request(r, 1, options_authed);
}

/* ---- POST with X-HTTP-Method-Override ------------------------------------------ */

/* Clients behind proxies that only pass GET and POST send the real method
 * in X-HTTP-Method-Override; a POST carrying it acts as that method. */
static void tus_post(struct http_req *r)
{
    const char *m = http_header(r, "X-HTTP-Method-Override");
    int collection = r->nparams == 0;
    if (!m || strcasecmp(m, "POST") == 0) {
        if (collection) {
            http_body_pause(r);
            if (tus_begin(r) == 0) auth_request(r, 1, create_authed);
            return;
        }
    } else if (strcasecmp(m, "OPTIONS") == 0) {
        tus_options(r);
        return;
    } else if (!collection && strcasecmp(m, "PATCH") == 0) {
        tus_patch(r);
        return;
    } else if (!collection && strcasecmp(m, "HEAD") == 0) {
        tus_head(r);
        return;
    } else if (!collection && strcasecmp(m, "DELETE") == 0) {
        tus_delete(r);
        return;
    }
    http_set_header(r, "Tus-Resumable", TUS_VERSION);
    http_set_header(r, "Allow", collection ? "POST, OPTIONS" : "HEAD, PATCH, DELETE, OPTIONS");
    http_reply_error(r, 405, "invalid_request", "method not allowed");
}

/* ---- the expiry sweeper ------------------------------------------------------- */

static void sweep_schedule(int seconds);

static void swept(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)arg;
    (void)sqlstate;
    if (err) {
        log_msg(LOG_WARN, "upload sweep failed", "error", err);
    } else {
        int n = db_nrows(res);
        for (int i = 0; i < n; i++)
            storage_upload_remove(db_str(res, i, 0));
        struct log_line *l = log_begin(n ? LOG_INFO : LOG_DEBUG, "upload sweep");
        log_int(l, "removed", n);
        log_end(l);
    }
    sweep_schedule(cfg.upload_sweep_s);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    rec_delete_leftovers();
    if (!db_query(app.db, &q_sweep, 0, NULL, swept, NULL))
        log_msg(LOG_INFO, "upload sweep stopped", NULL, NULL);
}

/* event_base_once: libevent frees a pending one with the base, so the
 * sweeper needs no teardown of its own. */
static void sweep_schedule(int seconds)
{
    struct timeval tv = {seconds, 0};
    if (event_base_once(app.base, -1, EV_TIMEOUT, sweep_cb, NULL, &tv) != 0)
        log_msg(LOG_ERROR, "upload sweep could not be scheduled", NULL, NULL);
}

/* ---- routes ------------------------------------------------------------------- */

void api_upload_routes(struct http_server *s)
{
    struct http_route_opts stream = {.body = HTTP_BODY_STREAM, .max_body = 0};
    /* "/api/uploads/" (tus clients keep the slash) needs the tail form:
     * tus_create refuses deeper paths. */
    http_route(s, "POST", "/api/uploads/:id", tus_post, &stream);
    http_route(s, "POST", "/api/uploads/*", tus_create, &stream);
    http_route(s, "OPTIONS", "/api/uploads/*", tus_options, NULL);
    http_route(s, "HEAD", "/api/uploads/:id", tus_head, NULL);
    http_route(s, "PATCH", "/api/uploads/:id", tus_patch, &stream);
    http_route(s, "DELETE", "/api/uploads/:id", tus_delete, NULL);
    /* the server that serves the uploads sweeps them (not `reeld routes`) */
    if (app.base && app.db) sweep_schedule(0);
}
