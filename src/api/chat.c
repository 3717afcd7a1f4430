/* The assistant (SPEC 9): POST /api/chat/query and /api/chat/feedback.
 *
 * A query is rate-limited per user (REELD_CHAT_RATE), retrieved from the
 * organization's recordings through the search service (search.h; scope
 * "all" or one recording), kept above a relevance floor, and answered by
 * the configured answerer (provider.h "chat": a model streamed from an
 * OpenAI-compatible server, or the local extractive answerer) from a
 * prompt that numbers the sources and asks for [n] citations. With no
 * relevant source the answer says so and no model is called.
 *
 * With `Accept: text/event-stream` the answer is relayed as it comes:
 * `references`, then `token` events, then `done` (or `error`). The
 * headers go out with the first piece of the answer, so a provider that
 * fails before answering gets a plain 503 `unavailable`; one that fails
 * later ends the stream with an `error` event. Backpressure is end to end:
 * when the client's queue passes CHAT_QUEUE_MARK the answerer is paused
 * (its upstream transfer stalls in TCP) until the queue drains; a client
 * that leaves cancels the upstream call at once. Without it, the answer
 * is collected and returned as JSON.
 *
 * Every exchange is stored in chat_messages (query, answer, references,
 * outcome, model, latency, usage) before its last event or its JSON goes
 * out, so that feedback can name it by message_id at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/http.h"
#include "reeld/log.h"
#include "reeld/metrics.h"
#include "reeld/provider.h"
#include "reeld/ratelimit.h"
#include "reeld/search.h"
#include "reeld/util.h"

#define CHAT_MAX_QUERY 4000
#define CHAT_DEFAULT_K 6
#define CHAT_MAX_K 20
/* Sources scoring below this cosine are not relevant (both embedders
 * give unrelated texts scores near 0). */
#define CHAT_MIN_SCORE 0.10f
#define CHAT_HISTORY_MAX 10         /* most recent messages kept */
#define CHAT_HISTORY_CHARS 2000     /* per message */
#define CHAT_MAX_ANSWER (1 << 20)   /* JSON mode collects at most this */
#define CHAT_QUEUE_MARK (64 * 1024) /* pause the answerer beyond this */
#define CHAT_NO_CONTEXT "I could not find anything about that in your organization's recordings."
#define CHAT_UNAVAILABLE "Assistant is currently unavailable, try again"

static struct ratelimit *limiter;

static struct db_stmt q_store = {
    "chat_store",
    "INSERT INTO chat_messages (id, org_id, user_id, query, answer, refs, outcome, model,"
    " latency_ms, prompt_tokens, completion_tokens, scope)"
    " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::integer, $10::integer, $11::integer,"
    " $12)"};

static struct db_stmt q_feedback = {
    "chat_feedback",
    "INSERT INTO chat_feedback (org_id, user_id, message_id, query, answer, feedback, comment)"
    " SELECT $1, $2, $3::uuid, $4, $5, $6, $7"
    " WHERE $3::uuid IS NULL OR EXISTS (SELECT 1 FROM chat_messages"
    " WHERE id = $3::uuid AND org_id = $1)"
    " RETURNING id, api_ts(created_at)"};

struct chat {
    struct http_req *r;
    char org[37], user[37], msg_id[37];
    char *query;
    char scope[48];
    char *scope_rec; /* into scope, or NULL */
    int top_k;
    int sse;
    struct json_object *history; /* [{role, content}] kept */
    struct search_req *search;
    struct prov_call *call;
    struct json_object *refs; /* the references array */
    struct prov_chat_source *src;
    size_t nsrc;
    struct evbuffer *answer;
    size_t pieces;
    int started; /* SSE headers sent */
    int paused;
    int gone; /* the client left */
    int64_t t0;
    char model[128];
    struct prov_chat_usage usage;
    const char *outcome;
    char error[300];
};

static void chat_free(struct chat *c)
{
    if (c->search) search_cancel(c->search);
    prov_cancel(c->call);
    for (size_t i = 0; i < c->nsrc; i++) {
        free((char *)c->src[i].title);
        free((char *)c->src[i].text);
    }
    free(c->src);
    free(c->query);
    json_object_put(c->history);
    json_object_put(c->refs);
    if (c->answer) evbuffer_free(c->answer);
    free(c);
}

static void detach(struct chat *c)
{
    if (c->r) {
        c->r->data = NULL;
        c->r->on_abort = NULL;
        c->r->on_drain = NULL;
    }
    c->r = NULL;
}

/* ---- the end: stored, then told ---------------------------------------------- */

static char *answer_text(struct chat *c)
{
    size_t n = evbuffer_get_length(c->answer);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    evbuffer_copyout(c->answer, s, n);
    s[n] = '\0';
    return s;
}

static struct json_object *usage_json(const struct prov_chat_usage *u)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "prompt_tokens",
                           u->prompt_tokens >= 0 ? json_object_new_int(u->prompt_tokens) : NULL);
    json_object_object_add(o, "completion_tokens",
                           u->completion_tokens >= 0 ? json_object_new_int(u->completion_tokens)
                                                     : NULL);
    return o;
}

/* The [n] that the answer cites, in order of first use, within 1..nsrc. */
static struct json_object *citations(const char *a, size_t nsrc)
{
    struct json_object *arr = json_object_new_array();
    int seen[CHAT_MAX_K + 1] = {0};
    for (const char *p = a; (p = strchr(p, '[')); p++) {
        char *end;
        long n = strtol(p + 1, &end, 10);
        if (*end == ']' && n >= 1 && (size_t)n <= nsrc && !seen[n]) {
            seen[n] = 1;
            json_object_array_add(arr, json_object_new_int((int)n));
        }
    }
    return arr;
}

static void send_final(struct chat *c, struct http_req *r)
{
    char *a = answer_text(c);
    if (!r || !a) {
        free(a);
        if (r) http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    int ok = strcmp(c->outcome, "error") != 0;
    if (!ok && !c->started) {
        http_set_header(r, "Retry-After", "5");
        http_reply_error(r, 503, "unavailable", CHAT_UNAVAILABLE);
    } else if (!ok) {
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "code", json_object_new_string("unavailable"));
        json_object_object_add(e, "message", json_object_new_string(CHAT_UNAVAILABLE));
        json_object_object_add(e, "message_id", json_object_new_string(c->msg_id));
        const char *js = json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN);
        http_sse_event(r, NULL, "error", js, strlen(js));
        json_object_put(e);
        http_stream_end(r);
    } else if (c->sse) {
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "answer", json_object_new_string(a));
        json_object_object_add(d, "usage", usage_json(&c->usage));
        json_object_object_add(d, "message_id", json_object_new_string(c->msg_id));
        json_object_object_add(d, "model", c->model[0] ? json_object_new_string(c->model) : NULL);
        json_object_object_add(d, "citations", citations(a, c->nsrc));
        /* The whole answer rides in this one event: it may pass the
         * slow-consumer bound (REELD_SSE_MAX_QUEUED) that http_sse_event
         * enforces, though the answer itself is bounded (CHAT_MAX_ANSWER)
         * and the stream was paced until here; so it is written as a
         * plain stream write. JSON without pretty-printing has no
         * newline: one data line. */
        const char *js = json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN);
        struct evbuffer *f = evbuffer_new();
        if (f) {
            evbuffer_add_printf(f, "event: done\ndata: ");
            evbuffer_add(f, js, strlen(js));
            evbuffer_add(f, "\n\n", 2);
            size_t n = evbuffer_get_length(f);
            http_stream_write(r, evbuffer_pullup(f, -1), n);
            evbuffer_free(f);
        }
        json_object_put(d);
        http_stream_end(r);
    } else {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "answer", json_object_new_string(a));
        json_object_object_add(o, "references", json_object_get(c->refs));
        json_object_object_add(o, "message_id", json_object_new_string(c->msg_id));
        json_object_object_add(o, "model", c->model[0] ? json_object_new_string(c->model) : NULL);
        json_object_object_add(o, "usage", usage_json(&c->usage));
        json_object_object_add(o, "citations", citations(a, c->nsrc));
        http_reply_json(r, 200, o);
    }
    free(a);
}

static void stored(void *arg, const struct db_res *res, const char *err, const char *sqlstate)
{
    struct chat *c = arg;
    (void)res;
    (void)sqlstate;
    if (err) log_msg(LOG_WARN, "chat message not stored", "error", err);
    struct http_req *r = c->r;
    detach(c);
    if (r) send_final(c, r);
    chat_free(c);
}

/* Stores the exchange (whatever its outcome), then answers. */
static void finish(struct chat *c, const char *outcome)
{
    c->outcome = outcome;
    if (c->r) {
        /* from here the request is answered once, after the store; a
         * client leaving meanwhile only makes that answer go nowhere */
        c->r->on_abort = NULL;
        c->r->on_drain = NULL;
    }
    char *a = answer_text(c);
    char lat[24], pt[16], ct[16];
    snprintf(lat, sizeof lat, "%lld", (long long)(util_mono_ms() - c->t0));
    snprintf(pt, sizeof pt, "%d", c->usage.prompt_tokens);
    snprintf(ct, sizeof ct, "%d", c->usage.completion_tokens);
    const char *p[12] = {c->msg_id,
                         c->org,
                         c->user[0] ? c->user : NULL,
                         c->query,
                         a,
                         json_object_to_json_string_ext(c->refs, JSON_C_TO_STRING_PLAIN),
                         outcome,
                         c->model[0] ? c->model : NULL,
                         lat,
                         c->usage.prompt_tokens >= 0 ? pt : NULL,
                         c->usage.completion_tokens >= 0 ? ct : NULL,
                         c->scope};
    metrics_count("reeld_chat_queries_total", "Assistant queries by outcome.", "outcome", outcome,
                  1);
    if (!db_query(app.db, &q_store, 12, p, stored, c)) {
        free(a);
        stored(c, NULL, "database unavailable", "");
        return;
    }
    free(a);
}

/* ---- relaying the answer --------------------------------------------------------- */

/* The client left (on_abort, or a write found it gone): the upstream call
 * goes at once; the exchange is still stored, as cancelled. */
static void lost(struct chat *c)
{
    if (c->gone) return;
    c->gone = 1;
    if (c->search) {
        search_cancel(c->search);
        c->search = NULL;
    }
    prov_cancel(c->call);
    c->call = NULL;
    struct http_req *r = c->r;
    detach(c);
    if (r && c->started)
        http_stream_end(r);
    else if (r)
        http_reply_error(r, 503, "unavailable", "the client went away");
    finish(c, "cancelled");
}

static int start_stream(struct chat *c)
{
    if (http_sse_start(c->r) != 0) return -1;
    c->started = 1;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "references", json_object_get(c->refs));
    const char *js = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    int rc = http_sse_event(c->r, NULL, "references", js, strlen(js));
    json_object_put(o);
    return rc < 0 ? -1 : 0;
}

static int on_piece(void *arg, const char *text, size_t len)
{
    struct chat *c = arg;
    if (c->gone) return 1;
    c->pieces++;
    if (evbuffer_get_length(c->answer) + len > CHAT_MAX_ANSWER) {
        /* a runaway answer: stop here, as an error */
        prov_cancel(c->call);
        c->call = NULL;
        finish(c, "error");
        return 1;
    }
    evbuffer_add(c->answer, text, len);
    if (!c->sse) return 0;
    if (!c->started && start_stream(c) != 0) {
        lost(c);
        return 1;
    }
    /* {"text":"..."} escaped straight into a buffer: one per token */
    struct evbuffer *b = evbuffer_new();
    int rc = -1;
    if (b) {
        evbuffer_add(b, "{\"text\":", 8);
        util_json_strn(b, text, len);
        evbuffer_add(b, "}", 1);
        size_t n = evbuffer_get_length(b);
        rc = http_sse_event(c->r, NULL, "token", (const char *)evbuffer_pullup(b, -1), n);
        evbuffer_free(b);
    }
    if (rc < 0) {
        lost(c); /* nothing when on_abort did it already */
        return 1;
    }
    if (http_stream_queued(c->r) > CHAT_QUEUE_MARK) {
        c->paused = 1;
        return 1;
    }
    return 0;
}

static void on_drain(struct http_req *r)
{
    struct chat *c = r->data;
    if (c && c->paused && c->call) {
        c->paused = 0;
        prov_chat_resume(c->call);
    }
}

static void on_answered(void *arg, const struct prov_status *st,
                        const struct prov_chat_usage *usage, const char *model, size_t pieces)
{
    struct chat *c = arg;
    (void)pieces;
    c->call = NULL;
    if (usage) c->usage = *usage;
    if (model) snprintf(c->model, sizeof c->model, "%s", model);
    if (st->outcome != PROV_OK) {
        snprintf(c->error, sizeof c->error, "%s", st->error ? st->error : "provider failed");
        struct log_line *l = log_begin(LOG_WARN, "assistant answer failed");
        log_str(l, "error", c->error);
        log_int(l, "pieces", (long long)c->pieces);
        log_end(l);
        finish(c, "error");
        return;
    }
    if (c->sse && !c->started && start_stream(c) != 0) { /* an empty answer */
        lost(c);
        return;
    }
    finish(c, "answered");
}

/* ---- the prompt -------------------------------------------------------------------- */

static char *system_prompt(const struct chat *c)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) return NULL;
    evbuffer_add_printf(
        b, "You are the assistant of a team's recorded walkthroughs. Answer the question using "
           "only the numbered sources below, which are excerpts of the organization's "
           "recordings. Cite the source of each statement with its number in square brackets, "
           "like [1] or [2][3]. If the sources do not contain the answer, say that you could not "
           "find it in the recordings. Be concise.\n\nSources:\n");
    for (size_t i = 0; i < c->nsrc; i++) {
        int64_t s = c->src[i].start_ms / 1000;
        evbuffer_add_printf(b, "\n[%zu] \"%s\" (at %02lld:%02lld):\n%s\n", i + 1, c->src[i].title,
                            (long long)(s / 60), (long long)(s % 60), c->src[i].text);
    }
    size_t n = evbuffer_get_length(b);
    char *out = malloc(n + 1);
    if (out) {
        evbuffer_remove(b, out, n);
        out[n] = '\0';
    }
    evbuffer_free(b);
    return out;
}

static void ask(struct chat *c)
{
    char *sys = system_prompt(c);
    size_t nh = json_object_array_length(c->history);
    struct prov_chat_msg *m = calloc(nh + 2, sizeof *m);
    if (!sys || !m) {
        free(sys);
        free(m);
        finish(c, "error");
        return;
    }
    size_t n = 0;
    m[n++] = (struct prov_chat_msg){"system", sys};
    for (size_t i = 0; i < nh; i++) {
        struct json_object *e = json_object_array_get_idx(c->history, i), *v;
        json_object_object_get_ex(e, "role", &v);
        m[n].role = json_object_get_string(v);
        json_object_object_get_ex(e, "content", &v);
        m[n++].content = json_object_get_string(v);
    }
    m[n++] = (struct prov_chat_msg){"user", c->query};
    struct prov_chat_in in = {
        .messages = m, .nmessages = n, .sources = c->src, .nsources = c->nsrc, .query = c->query};
    c->call = prov.chatter->start(&in, on_piece, on_answered, c);
    free(sys);
    free(m);
    if (!c->call) finish(c, "error");
}

/* ---- retrieval ---------------------------------------------------------------------- */

static void retrieved(void *arg, int status, const char *err, const struct search_match *m,
                      size_t n)
{
    struct chat *c = arg;
    c->search = NULL;
    if (status != 0) {
        snprintf(c->error, sizeof c->error, "%s", err ? err : "search failed");
        finish(c, "error");
        return;
    }
    c->src = calloc(n ? n : 1, sizeof *c->src);
    if (!c->src) {
        finish(c, "error");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].score < CHAT_MIN_SCORE) break; /* best first: the rest are lower */
        json_object_array_add(c->refs, api_match_json(&m[i], 0));
        struct prov_chat_source *s = &c->src[c->nsrc++];
        s->title = strdup(m[i].title ? m[i].title : "");
        s->text = strdup(m[i].text ? m[i].text : "");
        s->start_ms = m[i].start_ms;
        s->score = m[i].score;
        if (!s->title || !s->text) {
            finish(c, "error");
            return;
        }
    }
    if (c->nsrc == 0) {
        /* nothing relevant: say so, without a model */
        evbuffer_add(c->answer, CHAT_NO_CONTEXT, strlen(CHAT_NO_CONTEXT));
        c->pieces = 1;
        if (c->sse) {
            if (start_stream(c) != 0) {
                lost(c);
                return;
            }
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "text", json_object_new_string(CHAT_NO_CONTEXT));
            const char *js = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
            int rc = http_sse_event(c->r, NULL, "token", js, strlen(js));
            json_object_put(o);
            if (rc < 0) {
                lost(c);
                return;
            }
        }
        finish(c, "no_context");
        return;
    }
    ask(c);
}

/* ---- the request ------------------------------------------------------------------- */

static void on_abort(struct http_req *r)
{
    struct chat *c = r->data;
    if (c) lost(c);
}

/* history: at most CHAT_HISTORY_MAX {role: user|assistant, content}
 * messages, the most recent, each cut at CHAT_HISTORY_CHARS bytes (at a
 * character boundary). Returns NULL after answering 422. */
static struct json_object *read_history(struct http_req *r)
{
    struct json_object *h, *out = json_object_new_array();
    if (!json_object_object_get_ex(r->json, "history", &h) || !h) return out;
    if (!json_object_is_type(h, json_type_array) || json_object_array_length(h) > 100) {
        json_object_put(out);
        http_reply_error(r, 422, "invalid_request", "history must be an array of at most 100");
        return NULL;
    }
    size_t n = json_object_array_length(h);
    size_t from = n > CHAT_HISTORY_MAX ? n - CHAT_HISTORY_MAX : 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(h, i), *role, *content;
        if (!json_object_is_type(e, json_type_object) ||
            !json_object_object_get_ex(e, "role", &role) ||
            !json_object_object_get_ex(e, "content", &content) ||
            !json_object_is_type(role, json_type_string) ||
            !json_object_is_type(content, json_type_string) ||
            (strcmp(json_object_get_string(role), "user") != 0 &&
             strcmp(json_object_get_string(role), "assistant") != 0)) {
            json_object_put(out);
            http_reply_error(r, 422, "invalid_request",
                             "history entries must be {role: user|assistant, content: string}");
            return NULL;
        }
        if (i < from) continue;
        const char *s = json_object_get_string(content);
        size_t len = strlen(s);
        if (len > CHAT_HISTORY_CHARS) {
            len = CHAT_HISTORY_CHARS;
            while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
                len--;
        }
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "role", json_object_get(role));
        json_object_object_add(o, "content", json_object_new_string_len(s, (int)len));
        json_object_array_add(out, o);
    }
    return out;
}

static int wants_sse(struct http_req *r)
{
    const char *a = http_header(r, "Accept");
    return a && strstr(a, "text/event-stream") != NULL;
}

static void query_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *q, *scope;
    long long top_k = CHAT_DEFAULT_K;
    struct json_object *k;
    if (api_need_object(r) || api_req_str(r, "query", 1, CHAT_MAX_QUERY, &q) ||
        api_opt_str(r, "scope", 1, 60, &scope))
        return;
    const char *rec;
    if (api_parse_scope(scope, &rec) != 0) {
        http_reply_error(r, 422, "invalid_request", "scope must be all or recording:<id>");
        return;
    }
    if (json_object_object_get_ex(r->json, "top_k", &k) && k) {
        if (!json_object_is_type(k, json_type_int) || (top_k = json_object_get_int64(k)) < 1 ||
            top_k > CHAT_MAX_K) {
            http_reply_error(r, 422, "invalid_request", "top_k must be an integer from 1 to 20");
            return;
        }
    }
    struct json_object *history = read_history(r);
    if (!history) return;
    int64_t wait = ratelimit_take(limiter, ctx->user_id, util_mono_ms());
    if (wait > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%lld", (long long)((wait + 999) / 1000));
        http_set_header(r, "Retry-After", ra);
        http_reply_error(r, 429, "rate_limited", "too many questions; try again shortly");
        json_object_put(history);
        return;
    }
    struct chat *c = calloc(1, sizeof *c);
    if (!c || !(c->query = strdup(q)) || !(c->answer = evbuffer_new()) ||
        !(c->refs = json_object_new_array())) {
        if (c) {
            c->history = history;
            chat_free(c);
        } else {
            json_object_put(history);
        }
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    c->r = r;
    c->history = history;
    c->t0 = util_mono_ms();
    c->sse = wants_sse(r);
    c->top_k = (int)top_k;
    c->usage = (struct prov_chat_usage){-1, -1};
    snprintf(c->org, sizeof c->org, "%s", ctx->org_id);
    snprintf(c->user, sizeof c->user, "%s", ctx->user_id);
    util_uuid_v4(c->msg_id);
    if (rec) {
        snprintf(c->scope, sizeof c->scope, "recording:%s", rec);
        for (char *p = c->scope; *p; p++)
            if (*p >= 'A' && *p <= 'F') *p = (char)(*p - 'A' + 'a');
        c->scope_rec = c->scope + 10;
    } else {
        snprintf(c->scope, sizeof c->scope, "all");
    }
    r->data = c;
    r->on_abort = on_abort;
    r->on_drain = on_drain;
    c->search = search_query(c->org, c->query, c->scope_rec, c->top_k, retrieved, c);
    if (!c->search) {
        detach(c);
        chat_free(c);
        http_set_header(r, "Retry-After", "5");
        http_reply_error(r, 503, "unavailable", CHAT_UNAVAILABLE);
    }
}

static void query_post(struct http_req *r)
{
    auth_request(r, 1, query_authed);
}

/* ---- feedback ---------------------------------------------------------------------- */

static void feedback_stored(void *arg, const struct db_res *res, const char *err,
                            const char *sqlstate)
{
    struct http_req *r = arg;
    if (api_one_row(r, res, err, sqlstate, "no such message") != 0) return;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(db_str(res, 0, 0)));
    json_object_object_add(o, "created_at", json_object_new_string(db_str(res, 0, 1)));
    struct json_object *out = json_object_new_object();
    json_object_object_add(out, "feedback", o);
    http_reply_json(r, 201, out);
}

static void feedback_authed(struct http_req *r, const struct auth_ctx *ctx)
{
    const char *mid, *query, *answer, *fb, *comment;
    if (api_need_object(r) || api_opt_str(r, "message_id", 36, 36, &mid) ||
        api_opt_str(r, "query", 1, CHAT_MAX_QUERY, &query) ||
        api_opt_str(r, "answer", 0, CHAT_MAX_ANSWER, &answer) ||
        api_req_str(r, "feedback", 2, 4, &fb) || api_opt_str(r, "comment", 0, 10000, &comment))
        return;
    if (strcmp(fb, "up") != 0 && strcmp(fb, "down") != 0) {
        http_reply_error(r, 422, "invalid_request", "feedback must be up or down");
        return;
    }
    if (mid && !util_is_uuid(mid)) {
        http_reply_error(r, 422, "invalid_request", "message_id must be a UUID");
        return;
    }
    if (!mid && !query) {
        http_reply_error(r, 422, "invalid_request", "message_id or query is required");
        return;
    }
    const char *p[7] = {ctx->org_id, ctx->user_id[0] ? ctx->user_id : NULL, mid, query, answer, fb,
                        comment};
    if (!db_query(app.db, &q_feedback, 7, p, feedback_stored, r))
        http_reply_error(r, 503, "unavailable", "database unavailable");
}

static void feedback_post(struct http_req *r)
{
    auth_request(r, 1, feedback_authed);
}

void api_chat_routes(struct http_server *s)
{
    if (!limiter) limiter = ratelimit_new(cfg.chat_rate_count, cfg.chat_rate_window_s);
    struct http_route_opts json = {.body = HTTP_BODY_JSON, .max_body = 0};
    http_route(s, "POST", "/api/chat/query", query_post, &json);
    http_route(s, "POST", "/api/chat/feedback", feedback_post, &json);
}
