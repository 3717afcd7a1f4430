/* The search service (search.h): query embedding, the per-org vector
 * index kept from transcript_chunks and NOTIFY, sliced scans, and the
 * matches read back with their text and title. */
#include "reeld/search.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/log.h"
#include "reeld/provider.h"
#include "reeld/util.h"
#include "reeld/vindex.h"

#define CHUNKS_CHANNEL "reeld_chunks"
#define LOAD_PAGE "1000"
#define NIL_UUID "00000000-0000-0000-0000-000000000000"

/* $1 org, $2/$3 the last (recording, idx) read, $4 dim. */
static struct db_stmt q_page = {
    "search_page", "SELECT c.recording_id, c.uid, c.embedding FROM transcript_chunks c"
                   " JOIN recordings r ON r.id = c.recording_id"
                   " WHERE c.org_id = $1 AND (c.recording_id, c.idx) > ($2::uuid, $3::integer)"
                   " AND c.dim = $4::integer AND r.deleted_at IS NULL"
                   " ORDER BY c.recording_id, c.idx LIMIT " LOAD_PAGE};

static struct db_stmt q_recording = {
    "search_recording", "SELECT c.uid, c.embedding, c.idx FROM transcript_chunks c"
                        " JOIN recordings r ON r.id = c.recording_id"
                        " WHERE c.recording_id = $1 AND c.org_id = $2 AND c.dim = $3::integer"
                        " AND r.deleted_at IS NULL ORDER BY c.idx"};

static struct db_stmt q_details = {
    "search_details", "SELECT c.uid, c.recording_id, r.title, c.text, c.start_ms, c.end_ms"
                      " FROM transcript_chunks c JOIN recordings r ON r.id = c.recording_id"
                      " WHERE c.uid = ANY($1::uuid[]) AND c.org_id = $2 AND r.deleted_at IS NULL"};

static struct vindex *vi;
static uint64_t loads, refreshes;

/* ---- decoding stored vectors ----------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* bytea text output ("\x" + hex) of dim float32 little-endian values. */
static int decode_vector(const char *s, float *out, size_t dim)
{
    if (!s || s[0] != '\\' || s[1] != 'x' || strlen(s + 2) != dim * 8) return -1;
    unsigned char *b = (unsigned char *)out;
    s += 2;
    for (size_t i = 0; i < dim * 4; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        b[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* Rows [from, to) of res (uid in col_id, embedding in col_vec) into one
 * recording's put. Returns vindex_put_recording's answer, or -1. */
static int put_rows(const char *org, const char *rec, const struct db_res *res, int from, int to,
                    int col_id, int col_vec)
{
    size_t dim = (size_t)cfg.embed_dim, n = (size_t)(to - from);
    const char **ids = calloc(n ? n : 1, sizeof *ids);
    float *v = malloc((n ? n : 1) * dim * sizeof *v);
    int rc = -1;
    if (ids && v) {
        size_t k = 0;
        for (int i = from; i < to; i++) {
            if (decode_vector(db_str(res, i, col_vec), v + k * dim, dim) != 0) continue;
            ids[k++] = db_str(res, i, col_id);
        }
        rc = vindex_put_recording(vi, org, rec, k, ids, v);
    }
    free(ids);
    free(v);
    return rc;
}

/* ---- loading an organization ------------------------------------------------------- */

struct search_req;

struct load {
    struct load *next;
    char org[37];
    char last_rec[37];
    int last_idx;
    struct search_req *waiters;
    struct db_req *q;
    int restart; /* the index was dropped meanwhile: read from the start */
};
static struct load *loads_list;

static void req_loaded(struct search_req *r, int ok);

static struct load *load_find(const char *org)
{
    for (struct load *l = loads_list; l; l = l->next)
        if (strcmp(l->org, org) == 0) return l;
    return NULL;
}

static void load_end(struct load *l, int ok)
{
    struct load **pp = &loads_list;
    while (*pp != l)
        pp = &(*pp)->next;
    *pp = l->next;
    if (ok) {
        vindex_org_set_loaded(vi, l->org);
        loads++;
    } else {
        vindex_evict(vi, l->org);
    }
    struct log_line *ll = log_begin(ok ? LOG_INFO : LOG_WARN,
                                    ok ? "search index loaded" : "search index load failed");
    log_str(ll, "org_id", l->org);
    log_int(ll, "vectors", (long long)vindex_org_vectors(vi, l->org));
    log_end(ll);
    struct search_req *w = l->waiters;
    free(l);
    /* the waiters go on (or fail) on their own */
    while (w) {
        struct search_req *next = *(struct search_req **)w;
        req_loaded(w, ok);
        w = next;
    }
}

static void load_next(struct load *l);

static int load_restarted(struct load *l)
{
    if (!l->restart) return 0;
    l->restart = 0;
    snprintf(l->last_rec, sizeof l->last_rec, "%s", NIL_UUID);
    l->last_idx = -1;
    load_next(l);
    return 1;
}

static void load_page(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct load *l = arg;
    (void)sqlstate;
    l->q = NULL;
    if (err) {
        load_end(l, 0);
        return;
    }
    if (load_restarted(l)) return;
    int n = db_nrows(res);
    /* One put per recording. A recording cut by the page's end is read
     * again from its start by the next page (keyset on the recording
     * before it), so it is put whole. */
    int last_complete_end = n < atoi(LOAD_PAGE) ? n : 0;
    if (n == atoi(LOAD_PAGE)) {
        const char *tail = db_str(res, n - 1, 0);
        int i = n - 1;
        while (i > 0 && strcmp(db_str(res, i - 1, 0), tail) == 0)
            i--;
        last_complete_end = i;
    }
    int start = 0;
    for (int i = 1; i <= last_complete_end; i++) {
        if (i == last_complete_end || strcmp(db_str(res, i, 0), db_str(res, start, 0)) != 0) {
            if (put_rows(l->org, db_str(res, start, 0), res, start, i, 1, 2) < 0) {
                load_end(l, 0);
                return;
            }
            start = i;
        }
    }
    if (n < atoi(LOAD_PAGE)) {
        load_end(l, 1);
        return;
    }
    if (last_complete_end == 0) {
        /* a single recording larger than a page: fetch it whole */
        snprintf(l->last_rec, sizeof l->last_rec, "%s", db_str(res, 0, 0));
        l->last_idx = -2; /* marker: read l->last_rec whole next */
    } else {
        snprintf(l->last_rec, sizeof l->last_rec, "%s", db_str(res, last_complete_end - 1, 0));
        l->last_idx = 2147483647;
    }
    load_next(l);
}

static void load_whole(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct load *l = arg;
    (void)sqlstate;
    l->q = NULL;
    if (!err && load_restarted(l)) return;
    if (err || put_rows(l->org, l->last_rec, res, 0, db_nrows(res), 0, 1) < 0) {
        load_end(l, 0);
        return;
    }
    l->last_idx = 2147483647;
    load_next(l);
}

static void load_next(struct load *l)
{
    char dim[16], idx[16];
    snprintf(dim, sizeof dim, "%d", cfg.embed_dim);
    if (l->last_idx == -2) {
        const char *p[3] = {l->last_rec, l->org, dim};
        l->q = db_query(app.db, &q_recording, 3, p, load_whole, l);
    } else {
        snprintf(idx, sizeof idx, "%d", l->last_idx);
        const char *p[4] = {l->org, l->last_rec, idx, dim};
        l->q = db_query(app.db, &q_page, 4, p, load_page, l);
    }
    if (!l->q) load_end(l, 0);
}

/* ---- keeping it current ------------------------------------------------------------ */

struct refresh {
    struct refresh *next;
    char org[37], rec[37];
    int again; /* another NOTIFY came while reading */
};
static struct refresh *refreshing;

static void refresh_start(struct refresh *f);

static void refresh_read(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct refresh *f = arg;
    (void)sqlstate;
    if (err) {
        /* the organization may now be stale: load it again on next use */
        if (!load_find(f->org)) vindex_evict(vi, f->org);
    } else if (put_rows(f->org, f->rec, res, 0, db_nrows(res), 0, 1) < 0) {
        if (!load_find(f->org)) vindex_evict(vi, f->org);
    }
    refreshes++;
    if (f->again) {
        f->again = 0;
        refresh_start(f);
        return;
    }
    struct refresh **pp = &refreshing;
    while (*pp != f)
        pp = &(*pp)->next;
    *pp = f->next;
    free(f);
}

static void refresh_start(struct refresh *f)
{
    char dim[16];
    snprintf(dim, sizeof dim, "%d", cfg.embed_dim);
    const char *p[3] = {f->rec, f->org, dim};
    if (!db_query(app.db, &q_recording, 3, p, refresh_read, f)) {
        struct refresh **pp = &refreshing;
        while (*pp != f)
            pp = &(*pp)->next;
        *pp = f->next;
        if (!load_find(f->org)) vindex_evict(vi, f->org);
        free(f);
    }
}

static void on_chunks(void *arg, const char *channel, const char *payload)
{
    (void)arg;
    (void)channel;
    char org[37], rec[37];
    if (!payload || strlen(payload) != 73 || payload[36] != ' ') return;
    memcpy(org, payload, 36);
    org[36] = '\0';
    memcpy(rec, payload + 37, 36);
    rec[36] = '\0';
    if (!util_is_uuid(org) || !util_is_uuid(rec)) return;
    if (!vindex_org_loaded(vi, org) && !load_find(org)) return; /* read whole on first use */
    for (struct refresh *f = refreshing; f; f = f->next) {
        if (strcmp(f->rec, rec) == 0) {
            f->again = 1; /* reads in order: one read at a time per recording */
            return;
        }
    }
    struct refresh *f = calloc(1, sizeof *f);
    if (!f) {
        vindex_evict(vi, org);
        return;
    }
    memcpy(f->org, org, 37);
    memcpy(f->rec, rec, 37);
    f->next = refreshing;
    refreshing = f;
    refresh_start(f);
}

static void drop_org(const char *org_id, void *arg)
{
    (void)arg;
    log_msg(LOG_INFO, "search index evicted an idle organization", "org_id", org_id);
}

static void on_reconnect(void *arg)
{
    (void)arg;
    /* Notifications may have been missed: every organization not being
     * loaded right now is read again on its next search. */
    vindex_free(vi);
    vi = vindex_new((size_t)cfg.embed_dim, (size_t)cfg.index_budget_mb << 20);
    vindex_set_evict_cb(vi, drop_org, NULL);
    for (struct load *l = loads_list; l; l = l->next) {
        vindex_org_create(vi, l->org);
        l->restart = 1;
    }
    log_msg(LOG_INFO, "search index dropped after a LISTEN reconnect", NULL, NULL);
}

/* ---- a search -------------------------------------------------------------------- */

struct search_req {
    struct search_req *next_waiter; /* first: load_end walks the list through it */
    char org[37];
    char scope[37];
    int has_scope;
    int k;
    search_cb cb;
    void *arg;
    struct prov_call *embed;
    float *q;
    int loading; /* waiting in a load's list */
    struct vindex_cursor *cur;
    struct event *slice;
    struct db_req *details;
    struct vindex_match m[SEARCH_MAX_K * 2];
    size_t nm;
};

static void req_free(struct search_req *r)
{
    prov_cancel(r->embed);
    vindex_search_end(r->cur);
    if (r->slice) event_free(r->slice);
    if (r->details) db_cancel(r->details);
    free(r->q);
    free(r);
}

static void req_end(struct search_req *r, int status, const char *err, const struct search_match *m,
                    size_t n)
{
    r->cb(r->arg, status, err, m, n);
    req_free(r);
}

/* Cuts text at a word boundary within SEARCH_SNIPPET_BYTES (UTF-8 safe). */
static size_t snippet_len(const char *t)
{
    size_t n = strlen(t);
    if (n <= SEARCH_SNIPPET_BYTES) return n;
    size_t cut = SEARCH_SNIPPET_BYTES;
    while (cut > 0 && ((unsigned char)t[cut] & 0xC0) == 0x80)
        cut--;
    size_t sp = cut;
    while (sp > SEARCH_SNIPPET_BYTES / 2 && t[sp] != ' ')
        sp--;
    return t[sp] == ' ' ? sp : cut;
}

static void details_read(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct search_req *r = arg;
    (void)sqlstate;
    r->details = NULL;
    if (err) {
        req_end(r, 503, err, NULL, 0);
        return;
    }
    int rows = db_nrows(res);
    struct search_match *out = calloc(r->nm ? r->nm : 1, sizeof *out);
    char **snips = calloc(r->nm ? r->nm : 1, sizeof *snips);
    size_t n = 0;
    for (size_t i = 0; out && snips && i < r->nm && n < (size_t)r->k; i++) {
        for (int j = 0; j < rows; j++) {
            if (strcmp(db_str(res, j, 0), r->m[i].chunk_id) != 0) continue;
            struct search_match *o = &out[n];
            snprintf(o->chunk_id, sizeof o->chunk_id, "%s", r->m[i].chunk_id);
            snprintf(o->recording_id, sizeof o->recording_id, "%s", db_str(res, j, 1));
            o->title = db_str(res, j, 2);
            o->text = db_str(res, j, 3);
            snips[n] = strndup(o->text, snippet_len(o->text));
            o->snippet = snips[n] ? snips[n] : "";
            o->start_ms = db_int(res, j, 4);
            o->end_ms = db_int(res, j, 5);
            o->score = r->m[i].score;
            n++;
            break;
        }
    }
    if (!out || !snips)
        req_end(r, 500, "out of memory", NULL, 0);
    else
        req_end(r, 0, NULL, out, n);
    for (size_t i = 0; snips && i < n; i++)
        free(snips[i]);
    free(snips);
    free(out);
}

static void scan_done(struct search_req *r)
{
    r->nm = vindex_search_results(r->cur, r->m, sizeof r->m / sizeof r->m[0]);
    vindex_search_end(r->cur);
    r->cur = NULL;
    if (r->nm == 0) {
        req_end(r, 0, NULL, NULL, 0);
        return;
    }
    /* {id,id,...} */
    char *arr = malloc(r->nm * 37 + 3);
    if (!arr) {
        req_end(r, 500, "out of memory", NULL, 0);
        return;
    }
    char *p = arr;
    *p++ = '{';
    for (size_t i = 0; i < r->nm; i++) {
        if (i) *p++ = ',';
        memcpy(p, r->m[i].chunk_id, 36);
        p += 36;
    }
    *p++ = '}';
    *p = '\0';
    const char *params[2] = {arr, r->org};
    r->details = db_query(app.db, &q_details, 2, params, details_read, r);
    free(arr);
    if (!r->details) req_end(r, 503, "database unavailable", NULL, 0);
}

static void scan_slice(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct search_req *r = arg;
    if (vindex_search_step(r->cur, SEARCH_SLICE))
        event_active(r->slice, 0, 0); /* the rest on a later turn */
    else
        scan_done(r);
}

static void req_scan(struct search_req *r)
{
    size_t want = (size_t)r->k * 2; /* room for matches of recordings deleted meanwhile */
    int rc = vindex_search_start(vi, r->org, r->q, want, r->has_scope ? r->scope : NULL, &r->cur);
    if (rc < 0) {
        req_end(r, 500, "search failed", NULL, 0);
        return;
    }
    if (rc == 1) {
        /* not held, or being loaded: wait for the load */
        struct load *l = load_find(r->org);
        if (!l) {
            if (vindex_org_create(vi, r->org) != 0) {
                req_end(r, 503, "the search index is full", NULL, 0);
                return;
            }
            l = calloc(1, sizeof *l);
            if (!l) {
                req_end(r, 500, "out of memory", NULL, 0);
                return;
            }
            snprintf(l->org, sizeof l->org, "%s", r->org);
            snprintf(l->last_rec, sizeof l->last_rec, "%s", NIL_UUID);
            l->last_idx = -1;
            l->next = loads_list;
            loads_list = l;
            r->next_waiter = NULL;
            l->waiters = r;
            r->loading = 1;
            load_next(l);
            return;
        }
        r->next_waiter = l->waiters;
        l->waiters = r;
        r->loading = 1;
        return;
    }
    r->slice = event_new(app.base, -1, 0, scan_slice, r);
    if (!r->slice) {
        req_end(r, 500, "out of memory", NULL, 0);
        return;
    }
    event_active(r->slice, 0, 0);
}

static void req_loaded(struct search_req *r, int ok)
{
    r->loading = 0;
    if (!ok) {
        req_end(r, 503, "the search index could not be loaded", NULL, 0);
        return;
    }
    req_scan(r);
}

static void query_embedded(void *arg, const struct prov_status *st, const float *v, size_t n,
                           const char *model)
{
    struct search_req *r = arg;
    (void)model;
    r->embed = NULL;
    if (st->outcome != PROV_OK || n != 1) {
        req_end(r, 503, st->error ? st->error : "the embedder is unavailable", NULL, 0);
        return;
    }
    size_t bytes = (size_t)cfg.embed_dim * sizeof(float);
    r->q = malloc(bytes);
    if (!r->q) {
        req_end(r, 500, "out of memory", NULL, 0);
        return;
    }
    memcpy(r->q, v, bytes);
    req_scan(r);
}

struct search_req *search_query(const char *org_id, const char *q, const char *scope_rec, int top_k,
                                search_cb cb, void *arg)
{
    if (!vi || !util_is_uuid(org_id) || !q || !cb || top_k < 1 || top_k > SEARCH_MAX_K ||
        (scope_rec && !util_is_uuid(scope_rec)))
        return NULL;
    struct search_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->org, sizeof r->org, "%s", org_id);
    for (char *p = r->org; *p; p++)
        if (*p >= 'A' && *p <= 'F') *p = (char)(*p - 'A' + 'a');
    if (scope_rec) {
        snprintf(r->scope, sizeof r->scope, "%s", scope_rec);
        r->has_scope = 1;
    }
    r->k = top_k;
    r->cb = cb;
    r->arg = arg;
    const char *texts[1] = {q};
    r->embed = prov.embedder->start(texts, 1, query_embedded, r);
    if (!r->embed) {
        free(r);
        return NULL;
    }
    return r;
}

void search_cancel(struct search_req *r)
{
    if (!r) return;
    if (r->loading) {
        for (struct load *l = loads_list; l; l = l->next) {
            struct search_req **pp = &l->waiters;
            while (*pp && *pp != r)
                pp = &(*pp)->next_waiter;
            if (*pp) {
                *pp = r->next_waiter;
                break;
            }
        }
    }
    req_free(r);
}

/* ---- start, stop, metrics ------------------------------------------------------- */

int search_init(char *err, size_t errlen)
{
    vi = vindex_new((size_t)cfg.embed_dim, (size_t)cfg.index_budget_mb << 20);
    if (!vi) {
        snprintf(err, errlen, "cannot create the search index");
        return -1;
    }
    vindex_set_evict_cb(vi, drop_org, NULL);
    if (db_listen(app.db, CHUNKS_CHANNEL, on_chunks, on_reconnect, NULL) != 0) {
        snprintf(err, errlen, "cannot listen on %s", CHUNKS_CHANNEL);
        return -1;
    }
    return 0;
}

void search_free(void)
{
    /* the pool is gone: its callbacks failed every load and refresh,
     * which freed themselves */
    vindex_free(vi);
    vi = NULL;
}

void search_metrics_render(struct evbuffer *out)
{
    if (!vi) return;
    struct vindex_stats st;
    vindex_get_stats(vi, &st);
    evbuffer_add_printf(out,
                        "# HELP reeld_index_orgs Organizations held by the search index.\n"
                        "# TYPE reeld_index_orgs gauge\nreeld_index_orgs %zu\n"
                        "# HELP reeld_index_vectors Vectors held by the search index.\n"
                        "# TYPE reeld_index_vectors gauge\nreeld_index_vectors %zu\n"
                        "# HELP reeld_index_bytes Memory counted against REELD_INDEX_BUDGET_MB.\n"
                        "# TYPE reeld_index_bytes gauge\nreeld_index_bytes %zu\n"
                        "# HELP reeld_index_evictions_total Organizations evicted for the "
                        "budget.\n# TYPE reeld_index_evictions_total counter\n"
                        "reeld_index_evictions_total %llu\n"
                        "# HELP reeld_index_loads_total Organizations loaded.\n"
                        "# TYPE reeld_index_loads_total counter\nreeld_index_loads_total %llu\n"
                        "# HELP reeld_index_refreshes_total Recordings re-read after NOTIFY.\n"
                        "# TYPE reeld_index_refreshes_total counter\n"
                        "reeld_index_refreshes_total %llu\n",
                        st.orgs, st.vectors, st.bytes, (unsigned long long)st.evictions,
                        (unsigned long long)loads, (unsigned long long)refreshes);
}
