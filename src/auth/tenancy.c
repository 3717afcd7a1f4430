/* auth_request: token → identity → organization context. See
 * include/reeld/auth.h. Known identities are cached for a few minutes so
 * an authenticated request costs no write: users are upserted, and
 * verified organization claims mirrored, only on first sight. Membership
 * lookups (X-Org-Id, only membership) are never cached, so removing a
 * member takes effect at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>
#include <mbedtls/sha256.h>

#include "auth_int.h"
#include "reeld/app.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/util.h"

#define CACHE_BUCKETS 4096
#define CACHE_MAX 100000
#define CACHE_TTL_MS 300000

/* ---- cache: key → small value, with expiry ---------------------------
 * Holds identities ("u|sub" → user id, "o|..." → mirrored org id) and
 * verified tokens ("t|<sha256 of the token>" → the claims we use): an
 * ES256 verify costs about a millisecond of CPU with mbedTLS, which would
 * cap authenticated requests near 1,000/s per core. A token maps to the
 * same verdict for the same keys, so the cache is cleared whenever the
 * keyset changes, and exp/nbf are checked again on every use. */

struct centry {
    char *key;
    char *val; /* NUL-separated fields, val_len bytes */
    size_t val_len;
    int64_t expires;
    struct centry *next;
};
static struct centry *cache[CACHE_BUCKETS];
static int cache_n;

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % CACHE_BUCKETS;
}

void auth_cache_clear(void)
{
    for (int i = 0; i < CACHE_BUCKETS; i++) {
        while (cache[i]) {
            struct centry *e = cache[i];
            cache[i] = e->next;
            free(e->key);
            free(e->val);
            free(e);
        }
    }
    cache_n = 0;
}

static const char *cache_get_n(const char *key, size_t *len)
{
    int64_t now = util_mono_ms();
    for (struct centry *e = cache[hash(key)]; e; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            if (e->expires <= now) return NULL;
            if (len) *len = e->val_len;
            return e->val;
        }
    }
    return NULL;
}

static const char *cache_get(const char *key)
{
    return cache_get_n(key, NULL);
}

static void cache_put_n(const char *key, const char *val, size_t len, int64_t ttl_ms)
{
    unsigned h = hash(key);
    struct centry *e;
    for (e = cache[h]; e; e = e->next)
        if (strcmp(e->key, key) == 0) break;
    char *v = malloc(len + 1);
    if (!v) return;
    memcpy(v, val, len);
    v[len] = '\0';
    if (!e) {
        if (cache_n >= CACHE_MAX) auth_cache_clear(); /* crude but bounded */
        e = calloc(1, sizeof *e);
        if (!e || !(e->key = strdup(key))) {
            free(e);
            free(v);
            return;
        }
        e->next = cache[h];
        cache[h] = e;
        cache_n++;
    }
    free(e->val);
    e->val = v;
    e->val_len = len;
    e->expires = util_mono_ms() + ttl_ms;
}

static void cache_put(const char *key, const char *val)
{
    cache_put_n(key, val, strlen(val), CACHE_TTL_MS);
}

/* ---- statements ------------------------------------------------------- */

static struct db_stmt q_user = {"auth_user_upsert",
                                "INSERT INTO users (external_id, email, name) VALUES ($1, $2, $3) "
                                "ON CONFLICT (external_id) DO UPDATE SET "
                                "email = COALESCE(EXCLUDED.email, users.email), "
                                "name = COALESCE(EXCLUDED.name, users.name), updated_at = now() "
                                "RETURNING id, deleted_at IS NOT NULL"};

/* A verified organization claim: find the organization by Clerk id (or by
 * our own id, for dev tokens naming an organization created through the
 * API), create it on first sight, and mirror the membership and role. */
static struct db_stmt q_org_mirror = {
    "auth_org_mirror",
    "WITH existing AS ("
    "  SELECT id FROM organizations WHERE external_id = $1 OR id::text = $1 LIMIT 1),"
    " ins AS ("
    "  INSERT INTO organizations (external_id, name, slug)"
    "  SELECT $1, $1, coalesce(nullif(trim(both '-' from lower(regexp_replace(left($1, 40),"
    " '[^a-zA-Z0-9]+', '-', 'g'))), ''), 'org') || '-' || substr(md5($1), 1, 8)"
    "  WHERE NOT EXISTS (SELECT 1 FROM existing)"
    "  ON CONFLICT (external_id) DO UPDATE SET updated_at = now() RETURNING id),"
    " org AS (SELECT id FROM existing UNION ALL SELECT id FROM ins),"
    " m AS ("
    "  INSERT INTO memberships (org_id, user_id, role) SELECT id, $2, $3 FROM org"
    "  ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, updated_at = now()"
    "  WHERE memberships.role <> EXCLUDED.role RETURNING org_id)"
    " SELECT id FROM org"};

static struct db_stmt q_membership = {
    "auth_membership", "SELECT m.org_id, m.role FROM memberships m "
                       "JOIN organizations o ON o.id = m.org_id AND o.deleted_at IS NULL "
                       "WHERE m.user_id = $1 AND ($2::uuid IS NULL OR m.org_id = $2::uuid) "
                       "ORDER BY m.created_at LIMIT 2"};

/* ---- the request's journey -------------------------------------------- */

struct pending {
    struct http_req *r;
    int need_org;
    auth_cb cb;
    const char *token;
    struct json_object *claims; /* released as soon as verify copied what it needs */
    const char *org_claim, *role_claim;
    struct auth_ctx ctx;
};

static void pending_release(struct pending *p)
{
    if (p->claims) {
        json_object_put(p->claims);
        p->claims = NULL;
    }
}

static void fail(struct pending *p, int status, const char *code, const char *msg)
{
    pending_release(p);
    if (status == 401) http_set_header(p->r, "WWW-Authenticate", "Bearer");
    http_reply_error(p->r, status, code, msg);
}

static void done(struct pending *p)
{
    struct http_req *r = p->r;
    snprintf(r->log_user, sizeof r->log_user, "%s", p->ctx.user_id);
    snprintf(r->log_org, sizeof r->log_org, "%s", p->ctx.org_id);
    if (p->need_org && !p->ctx.org_id[0]) {
        fail(p, 403, "forbidden", "no organization: create one or pass X-Org-Id");
        return;
    }
    p->cb(r, &p->ctx);
}

static const char *claim_str(struct json_object *o, const char *k)
{
    struct json_object *v;
    if (!o || !json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    return *s ? s : NULL;
}

static const char *req_dup(struct http_req *r, const char *s)
{
    return s ? http_req_strdup(r, s) : NULL;
}

static void membership_done(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    (void)sqlstate;
    struct pending *p = arg;
    if (err) {
        fail(p, 503, "unavailable", "database unavailable");
        return;
    }
    int n = db_nrows(res);
    const char *want = http_header(p->r, "X-Org-Id");
    if (n == 0) {
        if (want) {
            fail(p, 403, "forbidden", "not a member of that organization");
            return;
        }
        done(p); /* no organization yet */
        return;
    }
    if (n > 1) {
        if (p->need_org) {
            fail(p, 400, "invalid_request",
                 "member of several organizations: pass X-Org-Id to choose one");
            return;
        }
        done(p);
        return;
    }
    snprintf(p->ctx.org_id, sizeof p->ctx.org_id, "%s", db_str(res, 0, 0));
    p->ctx.admin = strcmp(db_str(res, 0, 1), "admin") == 0;
    done(p);
}

static void resolve_membership(struct pending *p)
{
    const char *want = http_header(p->r, "X-Org-Id");
    if (want && !util_is_uuid(want)) {
        fail(p, 403, "forbidden", "not a member of that organization");
        return;
    }
    const char *params[2] = {p->ctx.user_id, want};
    if (!db_query(app.db, &q_membership, 2, params, membership_done, p))
        fail(p, 503, "unavailable", "shutting down");
}

static int claim_is_admin(const char *role)
{
    if (!role) return 0;
    return strcmp(role, "admin") == 0 || strcmp(role, "org:admin") == 0;
}

static void mirror_key(struct pending *p, char *key, size_t n)
{
    snprintf(key, n, "o|%s|%s|%s", p->ctx.user_id, p->org_claim,
             claim_is_admin(p->role_claim) ? "admin" : "member");
}

static void org_mirror_done(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    (void)sqlstate;
    struct pending *p = arg;
    if (err || db_nrows(res) != 1) {
        if (err) log_msg(LOG_WARN, "organization mirror failed", "error", err);
        fail(p, 503, "unavailable", "database unavailable");
        return;
    }
    snprintf(p->ctx.org_id, sizeof p->ctx.org_id, "%s", db_str(res, 0, 0));
    char key[512];
    mirror_key(p, key, sizeof key);
    cache_put(key, p->ctx.org_id);
    done(p);
}

static void resolve_org(struct pending *p)
{
    if (!p->org_claim) {
        resolve_membership(p);
        return;
    }
    p->ctx.admin = claim_is_admin(p->role_claim);
    char key[512];
    mirror_key(p, key, sizeof key);
    const char *hit = cache_get(key);
    if (hit) {
        snprintf(p->ctx.org_id, sizeof p->ctx.org_id, "%s", hit);
        done(p);
        return;
    }
    const char *params[3] = {p->org_claim, p->ctx.user_id, p->ctx.admin ? "admin" : "member"};
    if (!db_query(app.db, &q_org_mirror, 3, params, org_mirror_done, p))
        fail(p, 503, "unavailable", "shutting down");
}

static void user_done(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    (void)sqlstate;
    struct pending *p = arg;
    if (err || db_nrows(res) != 1) {
        fail(p, 503, "unavailable", "database unavailable");
        return;
    }
    if (db_bool(res, 0, 1)) {
        fail(p, 401, "unauthenticated", "user was deleted");
        return;
    }
    snprintf(p->ctx.user_id, sizeof p->ctx.user_id, "%s", db_str(res, 0, 0));
    char key[300];
    snprintf(key, sizeof key, "u|%s", p->ctx.sub);
    cache_put(key, p->ctx.user_id);
    resolve_org(p);
}

static void verify(struct http_req *r, int keys_ok);

static void after_refresh(struct http_req *r, int keys_ok)
{
    struct pending *p = r->data;
    if (!keys_ok) {
        fail(p, 401, "unauthenticated", "unknown signing key");
        return;
    }
    verify(r, 2);
}

/* The token is good: find (or create) the user, then the organization. */
static void identified(struct pending *p)
{
    char key[300];
    snprintf(key, sizeof key, "u|%s", p->ctx.sub);
    const char *hit = cache_get(key);
    if (hit) {
        snprintf(p->ctx.user_id, sizeof p->ctx.user_id, "%s", hit);
        resolve_org(p);
        return;
    }
    const char *params[3] = {p->ctx.sub, p->ctx.email, p->ctx.name};
    if (!db_query(app.db, &q_user, 3, params, user_done, p))
        fail(p, 503, "unavailable", "shutting down");
}

static int64_t claim_time(struct json_object *c, const char *k)
{
    struct json_object *v;
    if (!json_object_object_get_ex(c, k, &v) ||
        !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
        return 0;
    return json_object_get_int64(v);
}

/* The verified-token cache entry: exp, not-before, then the five strings
 * the request needs, NUL-separated ("" for absent). */
enum { TF_EXP, TF_NBF, TF_SUB, TF_EMAIL, TF_NAME, TF_ORG, TF_ROLE, TF_N };

static void token_key(const char *token, char key[70])
{
    unsigned char h[32];
    mbedtls_sha256_ret((const unsigned char *)token, strlen(token), h, 0);
    key[0] = 't';
    key[1] = '|';
    util_hex(h, sizeof h, key + 2);
}

static void token_remember(struct pending *p, const char *key, int64_t exp, int64_t nbf,
                           int64_t now, int skew)
{
    char buf[2048];
    const char *f[TF_N] = {NULL,        NULL,         p->ctx.sub,   p->ctx.email,
                           p->ctx.name, p->org_claim, p->role_claim};
    int n = snprintf(buf, sizeof buf, "%lld%c%lld%c", (long long)exp, 0, (long long)nbf, 0);
    for (int i = TF_SUB; i < TF_N && n > 0 && (size_t)n < sizeof buf; i++) {
        const char *v = f[i] ? f[i] : "";
        size_t l = strlen(v);
        if ((size_t)n + l + 1 > sizeof buf) return; /* oversized claims: just verify next time */
        memcpy(buf + n, v, l + 1);
        n += (int)l + 1;
    }
    int64_t ttl = (exp + skew - now) * 1000;
    if (ttl > CACHE_TTL_MS) ttl = CACHE_TTL_MS;
    if (ttl > 0) cache_put_n(key, buf, (size_t)n, ttl);
}

/* A cached verdict for this exact token, if still within its times. */
static int token_recall(struct pending *p, const char *key, int64_t now, int skew)
{
    size_t len;
    const char *v = cache_get_n(key, &len);
    if (!v) return 0;
    const char *f[TF_N];
    size_t off = 0;
    for (int i = 0; i < TF_N; i++) {
        if (off >= len + 1) return 0;
        f[i] = v + off;
        off += strlen(v + off) + 1;
    }
    long long exp = atoll(f[TF_EXP]), nbf = atoll(f[TF_NBF]);
    if (now - skew >= exp || (nbf && nbf > now + skew))
        return 0; /* expired since, or not yet: let jwt_verify say which */
    struct http_req *r = p->r;
    p->ctx.sub = req_dup(r, f[TF_SUB]);
    p->ctx.email = *f[TF_EMAIL] ? req_dup(r, f[TF_EMAIL]) : NULL;
    p->ctx.name = *f[TF_NAME] ? req_dup(r, f[TF_NAME]) : NULL;
    p->org_claim = *f[TF_ORG] ? req_dup(r, f[TF_ORG]) : NULL;
    p->role_claim = *f[TF_ROLE] ? req_dup(r, f[TF_ROLE]) : NULL;
    return p->ctx.sub != NULL;
}

/* keys_ok: 0 no keys, 1 keys, 2 keys after a refresh for this token */
static void verify(struct http_req *r, int keys_ok)
{
    struct pending *p = r->data;
    struct auth *a = app.auth;
    if (!keys_ok) {
        fail(p, 503, "unavailable", "signing keys unavailable");
        return;
    }
    struct jwt_opts o = a->opts;
    o.now = time(NULL);
    char tkey[70];
    token_key(p->token, tkey);
    if (token_recall(p, tkey, o.now, o.skew)) {
        identified(p);
        return;
    }
    char err[128];
    enum jwt_status st =
        jwt_verify(a->keys, p->token, strlen(p->token), &o, &p->claims, err, sizeof err);
    if (st == JWT_UNKNOWN_KID && keys_ok == 1) {
        auth_keys_when_ready(a, r, 1, after_refresh);
        return;
    }
    if (st != JWT_OK) {
        char msg[192];
        snprintf(msg, sizeof msg, "invalid token: %s", err);
        fail(p, 401, "unauthenticated", msg);
        return;
    }
    /* copy what we keep into request memory; the claims go now */
    p->ctx.sub = req_dup(r, claim_str(p->claims, "sub"));
    p->ctx.email = req_dup(r, claim_str(p->claims, "email"));
    p->ctx.name = req_dup(r, claim_str(p->claims, "name"));
    p->org_claim = req_dup(r, claim_str(p->claims, "org_id"));
    p->role_claim = req_dup(r, claim_str(p->claims, "org_role"));
    struct json_object *o2;
    if (!p->org_claim && json_object_object_get_ex(p->claims, "o", &o2)) {
        p->org_claim = req_dup(r, claim_str(o2, "id"));
        p->role_claim = req_dup(r, claim_str(o2, "rol"));
    }
    int64_t exp = claim_time(p->claims, "exp"), nbf = claim_time(p->claims, "nbf"),
            iat = claim_time(p->claims, "iat");
    pending_release(p);
    if (!p->ctx.sub) {
        fail(p, 500, "internal", "out of memory");
        return;
    }
    token_remember(p, tkey, exp, nbf > iat ? nbf : iat, o.now, o.skew);
    identified(p);
}

static void pending_abort(struct http_req *r)
{
    /* The client left while we waited: the pending callback still runs
     * and answers into the void, which frees the request. */
    (void)r;
}

void auth_request(struct http_req *r, int need_org, auth_cb cb)
{
    struct pending *p = http_req_alloc(r, sizeof *p);
    if (!p) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    p->r = r;
    p->need_org = need_org;
    p->cb = cb;
    r->data = p;
    r->on_abort = pending_abort;
    const char *h = http_header(r, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        fail(p, 401, "unauthenticated", "missing bearer token");
        return;
    }
    p->token = h + 7;
    while (*p->token == ' ')
        p->token++;
    auth_keys_when_ready(app.auth, r, 0, verify);
}
