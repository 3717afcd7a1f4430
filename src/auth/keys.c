/* Verification keys: the dev key, a JWKS file, or a JWKS URL fetched
 * through the loop, cached, refetched on an unknown kid (at most once
 * every 10 s, however many tokens carry unknown kids: a flood of forged
 * kids must not turn into a flood of fetches) and refreshed in the
 * background when older than an hour. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth_int.h"
#include "reeld/config.h"
#include "reeld/fetch.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/util.h"

#define REFETCH_MIN_MS 10000
#define MAX_AGE_MS 3600000
#define MAX_WAITERS 10000

struct auth_waiter {
    struct http_req *r;
    void (*fn)(struct http_req *r, int ok);
    struct auth_waiter *next;
};

struct jwt_signer *auth_dev_signer(const char *data_dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/dev-jwt-key.pem", data_dir);
    return jwt_signer_load_or_create(path, err, errlen);
}

static struct jwt_keyset *load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "REELD_JWKS_FILE %s: cannot open", path);
        return NULL;
    }
    char *buf = malloc(1024 * 1024 + 1);
    size_t n = buf ? fread(buf, 1, 1024 * 1024 + 1, f) : 0;
    fclose(f);
    struct jwt_keyset *ks = NULL;
    if (buf && n <= 1024 * 1024)
        ks = jwt_keyset_parse(buf, n, err, errlen);
    else
        snprintf(err, errlen, "REELD_JWKS_FILE %s: too large or unreadable", path);
    free(buf);
    return ks;
}

static void run_waiters(struct auth *a, int ok)
{
    struct auth_waiter *w = a->waiters;
    a->waiters = NULL;
    while (w) {
        struct auth_waiter *next = w->next;
        w->fn(w->r, ok);
        w = next; /* w itself lives in the request's memory */
    }
}

static void jwks_done(void *arg, const struct fetch_resp *resp)
{
    struct auth *a = arg;
    a->inflight = NULL;
    if (!resp->err && resp->status == 200) {
        char err[256];
        struct jwt_keyset *ks = jwt_keyset_parse(resp->body, resp->body_len, err, sizeof err);
        if (ks) {
            jwt_keyset_free(a->keys);
            a->keys = ks;
            auth_cache_clear(); /* cached verdicts were for the old keys */
            a->loaded_ms = util_mono_ms();
            struct log_line *l = log_begin(LOG_INFO, "jwks loaded");
            log_int(l, "keys", jwt_keyset_count(ks));
            log_end(l);
        } else {
            log_msg(LOG_ERROR, "jwks unusable", "error", err);
        }
    } else {
        struct log_line *l = log_begin(LOG_ERROR, "jwks fetch failed");
        log_int(l, "status", resp->status);
        log_str(l, "error", resp->err ? resp->err : "bad status");
        log_end(l);
    }
    run_waiters(a, a->keys != NULL);
}

static void start_fetch(struct auth *a)
{
    if (a->inflight || !cfg.jwks_url) return;
    static const char *const hdrs[] = {"Accept: application/json", NULL};
    struct fetch_opts o = {
        .url = cfg.jwks_url, .headers = hdrs, .timeout_ms = 10000, .max_body = 1024 * 1024};
    a->inflight = fetch_start(a->fetch, &o, jwks_done, a);
}

void auth_keys_when_ready(struct auth *a, struct http_req *r, int force,
                          void (*fn)(struct http_req *r, int ok))
{
    int64_t now = util_mono_ms();
    if (a->keys && cfg.jwks_url && now - a->loaded_ms > MAX_AGE_MS && !a->inflight)
        start_fetch(a); /* background refresh; this request uses what we have */
    if (a->keys && !force) {
        fn(r, 1);
        return;
    }
    if (!cfg.jwks_url) {
        fn(r, a->keys != NULL && !force);
        return;
    }
    if (!a->inflight) {
        if (force && a->last_kid_refresh_ms && now - a->last_kid_refresh_ms < REFETCH_MIN_MS) {
            fn(r, 0);
            return;
        }
        if (force) a->last_kid_refresh_ms = now;
        start_fetch(a);
    }
    int n = 0;
    for (struct auth_waiter *w = a->waiters; w; w = w->next)
        n++;
    struct auth_waiter *w = n < MAX_WAITERS ? http_req_alloc(r, sizeof *w) : NULL;
    if (!a->inflight || !w) {
        fn(r, 0);
        return;
    }
    w->r = r;
    w->fn = fn;
    w->next = a->waiters;
    a->waiters = w;
}

struct auth *auth_new(struct event_base *base, struct fetch *f, struct db_pool *db, char *err,
                      size_t errlen)
{
    struct auth *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->base = base;
    a->fetch = f;
    a->db = db;
    a->opts.skew = 60;
    if (strcmp(cfg.auth, "dev") == 0) {
        struct jwt_signer *s = auth_dev_signer(cfg.data_dir, err, errlen);
        if (!s) {
            free(a);
            return NULL;
        }
        a->keys = jwt_signer_keyset(s);
        jwt_signer_free(s);
        a->opts.issuer = AUTH_DEV_ISSUER;
    } else {
        a->opts.issuer = cfg.jwt_issuer;
        a->opts.audience = cfg.jwt_audience;
        a->opts.azp = cfg.jwt_azp;
        if (cfg.jwks_file) {
            a->keys = load_file(cfg.jwks_file, err, errlen);
            if (!a->keys) {
                free(a);
                return NULL;
            }
        } else {
            start_fetch(a);
        }
    }
    a->loaded_ms = util_mono_ms();
    return a;
}

void auth_free(struct auth *a)
{
    if (!a) return;
    if (a->inflight) fetch_cancel(a->inflight);
    run_waiters(a, 0);
    jwt_keyset_free(a->keys);
    free(a);
}
