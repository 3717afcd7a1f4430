/* The OpenAI-compatible chat stream (REELD_LLM=openai, provider.h "chat"):
 * one POST to {cfg.openai_base_url}/chat/completions with "stream": true,
 * whose Server-Sent Events are parsed as the bytes come (fetch's streaming
 * mode), so each token reaches the caller at once.
 *
 * The parser takes everything SSE allows: LF, CRLF and CR line ends,
 * comment lines, "data:" with or without its space, an event spread over
 * several data lines (joined with LF), other fields ignored. A line and an
 * event's data are bounded (CH_MAX_EVENT). "data: [DONE]" ends the answer;
 * a stream that stops before it is an error. A non-2xx answer is
 * collected (up to CH_MAX_ERROR_BODY) for its OpenAI error object; its
 * status is known from the first byte (fetch_status).
 *
 * Before the first piece a failure is retried inside the call like the
 * other openai providers do (408, 409, 429 with Retry-After, 5xx,
 * transport errors, garbage and an early end), within
 * cfg.provider_timeout_s, which bounds the time to the first piece; after
 * it only an idle limit applies (CH_IDLE_MS without a byte) and any
 * failure ends the call.
 *
 * Backpressure: when the piece callback asks for a pause, the rest of the
 * bytes in hand (one libcurl write, bounded) are kept and fetch is paused,
 * so upstream stalls in TCP. prov_chat_resume delivers the kept bytes on
 * a later loop turn and then resumes fetch. Every callback to the caller
 * runs from the loop: pieces from fetch's data callback or from the
 * resume event, the end from its own event. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/fetch.h"
#include "reeld/metrics.h"
#include "reeld/provider.h"
#include "reeld/util.h"

#define CH_NAME "openai"
#define CH_ATTEMPTS 3
#define CH_RETRY_BASE_MS 500
#define CH_RETRY_MAX_MS 8000
/* A longer Retry-After is not waited for inside the call: PROV_RETRY
 * carries it to the caller instead. */
#define CH_MAX_WAIT_MS 10000
#define CH_MAX_EVENT ((size_t)1 << 20) /* one line, and one event's data */
#define CH_MAX_ERROR_BODY ((size_t)64 << 10)
#define CH_IDLE_MS 60000
/* fetch's whole-transfer limit: the call's own timers are the real ones,
 * this only keeps a paused stream from living forever. */
#define CH_TRANSFER_MS (3600L * 1000)
#define CH_MAX_MODEL 256

static const struct fetch_retry_policy ch_policy = {
    .max_attempts = CH_ATTEMPTS, .base_ms = CH_RETRY_BASE_MS, .max_ms = CH_RETRY_MAX_MS};

/* A bounded growable byte buffer, NUL-terminated. */
struct cbuf {
    char *p;
    size_t len, cap;
};

/* Appends n bytes; -1 when the result would exceed max bytes or there is
 * no memory. */
static int cbuf_add(struct cbuf *b, const char *s, size_t n, size_t max)
{
    if (b->len > max || n > max - b->len) return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void cbuf_free(struct cbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* How a transfer ended, kept while the caller holds the stream paused. */
struct xfer_end {
    int ended;
    long status;
    long long retry_after_ms;
    int timed_out;
    int has_err;
    char err[256];
};

struct chcall {
    struct prov_call pc;      /* first: the handle */
    struct json_tokener *tok; /* one per call, reset for each event */
    prov_chat_piece_cb on_piece;
    prov_chat_done_cb done;
    void *arg;
    struct fetch_req *req;
    struct event *limit; /* the time to the first piece, then the idle limit */
    struct event *wait;  /* the next attempt (retry backoff) */
    struct event *kick;  /* pieces after a resume, and the end */
    char *url, *body, *auth, *model_req;
    int attempt;
    int64_t deadline_ms; /* monotonic: the first piece must come before */
    size_t pieces;
    /* the attempt in flight */
    long status; /* from the first byte on */
    struct cbuf errbody, line, data;
    int skip_lf;      /* the last line ended with CR: a LF right after belongs to it */
    int done_seen;    /* data: [DONE] */
    int stop;         /* the attempt is over: read nothing more */
    struct cbuf pend; /* bytes taken from fetch while held, not yet parsed */
    size_t pend_off;
    struct xfer_end xe;
    /* the answer */
    char model[CH_MAX_MODEL];
    struct prov_chat_usage usage;
    /* the caller */
    int held;         /* the piece callback asked for a pause: parse nothing more */
    int paused;       /* ... and prov_chat_resume has not come yet */
    int in_cb;        /* inside on_piece */
    int resume_asked; /* prov_chat_resume from inside on_piece */
    int cancelled;    /* prov_cancel from inside on_piece */
    int ended;        /* the outcome is set; done runs from kick */
    enum prov_outcome outcome;
    long long retry_after_ms;
    char err[512];
};

static void count_call(void)
{
    metrics_count("reeld_provider_calls_total", "Requests sent to providers", "provider", CH_NAME,
                  1);
}

static void count_retry(void)
{
    metrics_count("reeld_provider_retries_total", "Provider requests retried within a call",
                  "provider", CH_NAME, 1);
}

static void arm(struct event *ev, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static void ch_free(struct chcall *c)
{
    fetch_cancel(c->req);
    if (c->limit) event_free(c->limit);
    if (c->wait) event_free(c->wait);
    if (c->kick) event_free(c->kick);
    free(c->url);
    free(c->body);
    free(c->auth);
    free(c->model_req);
    cbuf_free(&c->errbody);
    cbuf_free(&c->line);
    cbuf_free(&c->data);
    cbuf_free(&c->pend);
    if (c->tok) json_tokener_free(c->tok);
    free(c);
}

/* Ends the call with c->err (or PROV_OK): the done callback runs from the
 * kick event, and nothing else runs any more. */
static void finish(struct chcall *c, enum prov_outcome o, long long retry_after_ms)
{
    fetch_cancel(c->req);
    c->req = NULL;
    c->stop = 1;
    c->ended = 1;
    c->outcome = o;
    c->retry_after_ms = retry_after_ms;
    evtimer_del(c->limit);
    evtimer_del(c->wait);
    arm(c->kick, 0);
}

/* The attempt failed with c->err. A retryable failure before the first
 * piece is retried when the policy (on resp) and the time left allow;
 * anything else ends the call. */
static void attempt_failed(struct chcall *c, int retryable, const struct fetch_resp *resp)
{
    fetch_cancel(c->req);
    c->req = NULL;
    c->stop = 1;
    if (retryable && c->pieces == 0) {
        int64_t delay = fetch_retry_delay(&ch_policy, c->attempt, resp);
        if (delay >= 0 && delay <= CH_MAX_WAIT_MS && util_mono_ms() + delay < c->deadline_ms) {
            count_retry();
            arm(c->wait, delay);
            return;
        }
    }
    finish(c, retryable ? PROV_RETRY : PROV_FAIL, resp ? resp->retry_after_ms : -1);
}

/* Garbage and an early end are retried like a server error. */
static const struct fetch_resp as_5xx = {.status = 503, .retry_after_ms = -1};

static void malformed(struct chcall *c, const char *why)
{
    snprintf(c->err, sizeof c->err, "openai: malformed stream (%s)", why);
    attempt_failed(c, 1, &as_5xx);
}

/* The message of an OpenAI error object e, and whether it is permanent
 * (insufficient_quota, an invalid request). */
static void error_of(struct json_object *e, char *msg, size_t n, int *quota, int *invalid)
{
    struct json_object *v;
    *quota = *invalid = 0;
    snprintf(msg, n, "%s", "");
    if (!json_object_is_type(e, json_type_object)) return;
    const char *fields[] = {"code", "type"};
    for (int i = 0; i < 2; i++) {
        if (!json_object_object_get_ex(e, fields[i], &v) ||
            !json_object_is_type(v, json_type_string))
            continue;
        const char *s = json_object_get_string(v);
        if (strcmp(s, "insufficient_quota") == 0) *quota = 1;
        if (strcmp(s, "invalid_request_error") == 0) *invalid = 1;
    }
    if (json_object_object_get_ex(e, "message", &v) && json_object_is_type(v, json_type_string))
        snprintf(msg, n, ": %.300s", json_object_get_string(v));
}

/* ---- the stream ------------------------------------------------------------- */

/* One piece to the caller. Returns 1 when parsing must stop (a pause, or
 * the call was cancelled from the callback). */
static int deliver(struct chcall *c, const char *s, size_t n)
{
    if (c->pieces == 0) arm(c->limit, CH_IDLE_MS); /* the idle limit from now on */
    c->pieces++;
    c->in_cb = 1;
    int rc = c->on_piece(c->arg, s, n);
    c->in_cb = 0;
    if (c->cancelled) return 1;
    if (!rc) return 0;
    c->held = 1;
    c->paused = !c->resume_asked;
    c->resume_asked = 0;
    if (c->paused)
        evtimer_del(c->limit); /* a paused caller is not an idle upstream */
    else
        arm(c->kick, 0);
    return 1;
}

static int get_int(struct json_object *o, const char *key, int *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int)) return -1;
    int64_t x = json_object_get_int64(v);
    if (x < 0 || x > 0x7fffffff) return -1;
    *out = (int)x;
    return 0;
}

/* One data event that is not [DONE]. Returns 1 when parsing must stop. */
static int on_chunk(struct chcall *c, const char *d, size_t n)
{
    /* a tokener allocates its parse stack: one per call, not per event */
    if (!c->tok && (c->tok = json_tokener_new()) != NULL)
        json_tokener_set_flags(c->tok, JSON_TOKENER_STRICT);
    struct json_tokener *tok = c->tok;
    if (!tok) {
        snprintf(c->err, sizeof c->err, "%s", "openai: out of memory");
        attempt_failed(c, 1, &as_5xx);
        return 1;
    }
    json_tokener_reset(tok);
    struct json_object *j = n <= 0x7fffffff ? json_tokener_parse_ex(tok, d, (int)n) : NULL;
    int ok = j && json_tokener_get_error(tok) == json_tokener_success &&
             json_object_is_type(j, json_type_object);
    for (size_t i = ok ? json_tokener_get_parse_end(tok) : n; i < n; i++)
        if (d[i] != ' ' && d[i] != '\t' && d[i] != '\n' && d[i] != '\r') ok = 0;
    if (!ok) {
        json_object_put(j);
        malformed(c, "an event is not a JSON object");
        return 1;
    }
    struct json_object *v, *e;
    if (json_object_object_get_ex(j, "error", &e) && !json_object_is_type(e, json_type_null)) {
        char msg[320];
        int quota, invalid;
        error_of(e, msg, sizeof msg, &quota, &invalid);
        snprintf(c->err, sizeof c->err, "openai: error in the stream%s%s",
                 quota ? " (insufficient_quota)" : "", msg);
        json_object_put(j);
        attempt_failed(c, !quota && !invalid, &as_5xx);
        return 1;
    }
    if (!c->model[0] && json_object_object_get_ex(j, "model", &v) &&
        json_object_is_type(v, json_type_string))
        snprintf(c->model, sizeof c->model, "%s", json_object_get_string(v));
    if (json_object_object_get_ex(j, "usage", &v) && json_object_is_type(v, json_type_object)) {
        get_int(v, "prompt_tokens", &c->usage.prompt_tokens);
        get_int(v, "completion_tokens", &c->usage.completion_tokens);
    }
    struct json_object *choices, *ch, *delta, *content;
    int stop = 0;
    if (json_object_object_get_ex(j, "choices", &choices) &&
        json_object_is_type(choices, json_type_array) && json_object_array_length(choices) > 0 &&
        (ch = json_object_array_get_idx(choices, 0)) &&
        json_object_object_get_ex(ch, "delta", &delta) &&
        json_object_object_get_ex(delta, "content", &content) &&
        json_object_is_type(content, json_type_string)) {
        int len = json_object_get_string_len(content);
        if (len > 0) stop = deliver(c, json_object_get_string(content), (size_t)len);
    }
    json_object_put(j);
    return stop;
}

/* A blank line: dispatches the event gathered so far. */
static int dispatch(struct chcall *c)
{
    if (c->data.len == 0) return 0;
    size_t n = c->data.len - 1; /* without the last LF */
    c->data.len = 0;
    if (n == 0) return 0; /* an empty event carries nothing */
    if (n == 6 && memcmp(c->data.p, "[DONE]", 6) == 0) {
        c->done_seen = 1;
        return 1;
    }
    return on_chunk(c, c->data.p, n);
}

/* One complete line (c->line). Returns 1 when parsing must stop. */
static int on_line(struct chcall *c)
{
    size_t n = c->line.len;
    const char *l = c->line.p;
    if (n == 0) return dispatch(c);
    if (l[0] == ':') return 0; /* a comment */
    const char *colon = memchr(l, ':', n);
    size_t flen = colon ? (size_t)(colon - l) : n;
    if (flen != 4 || memcmp(l, "data", 4) != 0) return 0; /* event, id, retry, unknown */
    const char *v = colon ? colon + 1 : l + n;
    size_t vl = (size_t)(l + n - v);
    if (vl && *v == ' ') v++, vl--;
    if (cbuf_add(&c->data, v, vl, CH_MAX_EVENT) < 0 ||
        cbuf_add(&c->data, "\n", 1, CH_MAX_EVENT) < 0) {
        malformed(c, "an event over 1 MiB");
        return 1;
    }
    return 0;
}

/* Parses bytes of the stream; returns how many were taken: all of them,
 * or fewer when parsing stopped (a pause, the end, a failure, a cancel). */
static size_t feed(struct chcall *c, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (c->skip_lf) {
            c->skip_lf = 0;
            if (p[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r')
            j++;
        if (cbuf_add(&c->line, p + i, j - i, CH_MAX_EVENT) < 0) {
            malformed(c, "a line over 1 MiB");
            return n;
        }
        if (j == n) return n;
        c->skip_lf = p[j] == '\r';
        i = j + 1;
        int stop = on_line(c);
        if (c->cancelled) return i;
        c->line.len = 0;
        if (stop) return i;
    }
    return n;
}

static void xfer_end(struct chcall *c, const struct fetch_resp *resp);

static int on_data(void *arg, const char *data, size_t len)
{
    struct chcall *c = arg;
    if (c->stop) return 0;
    if (!c->status) c->status = fetch_status(c->req);
    if (c->status < 200 || c->status >= 300) {
        /* An error answer: its body, bounded, for the message. */
        size_t room = CH_MAX_ERROR_BODY - c->errbody.len;
        size_t take = len < room ? len : room;
        if (cbuf_add(&c->errbody, data, take, CH_MAX_ERROR_BODY) < 0 || take < len) return -1;
        return 0;
    }
    if (c->done_seen) return 0; /* what follows [DONE] is ignored */
    if (c->pieces > 0) arm(c->limit, CH_IDLE_MS);
    size_t used = feed(c, data, len);
    if (c->cancelled) {
        ch_free(c); /* fetch_cancel ran already: fetch ignores what we return */
        return -1;
    }
    if (c->stop || c->done_seen || !c->held) return 0;
    if (used < len && cbuf_add(&c->pend, data + used, len - used, CH_MAX_EVENT) < 0) {
        snprintf(c->err, sizeof c->err, "%s", "openai: out of memory");
        finish(c, PROV_RETRY, -1);
        return -1;
    }
    return 1;
}

static void on_fetch_done(void *arg, const struct fetch_resp *resp)
{
    struct chcall *c = arg;
    c->req = NULL;
    if (c->held) {
        /* Bytes may wait for the caller: the end comes after them. */
        c->xe.ended = 1;
        c->xe.status = resp->status;
        c->xe.retry_after_ms = resp->retry_after_ms;
        c->xe.timed_out = resp->timed_out;
        c->xe.has_err = resp->err != NULL;
        snprintf(c->xe.err, sizeof c->xe.err, "%s", resp->err ? resp->err : "");
        return;
    }
    xfer_end(c, resp);
}

/* The transfer of the attempt ended (the caller holds nothing). */
static void xfer_end(struct chcall *c, const struct fetch_resp *resp)
{
    long s = c->status ? c->status : resp->status;
    if (s != 0 && (s < 200 || s >= 300)) {
        char msg[320] = "";
        int quota = 0, invalid = 0;
        struct json_object *j = c->errbody.len ? json_tokener_parse(c->errbody.p) : NULL, *e;
        if (j && json_object_object_get_ex(j, "error", &e))
            error_of(e, msg, sizeof msg, &quota, &invalid);
        json_object_put(j);
        /* Judged by the status even if the body was cut. */
        struct fetch_resp st = {.status = s, .retry_after_ms = resp->retry_after_ms};
        if (quota) {
            snprintf(c->err, sizeof c->err, "openai: insufficient_quota%s", msg);
            attempt_failed(c, 0, &st);
        } else {
            snprintf(c->err, sizeof c->err, "openai: HTTP %ld%s", s, msg);
            attempt_failed(c, s == 408 || s == 409 || s == 429 || s >= 500, &st);
        }
        return;
    }
    if (c->done_seen) {
        finish(c, PROV_OK, -1);
        return;
    }
    if (resp->err) {
        snprintf(c->err, sizeof c->err, "openai: %s%s%s", resp->err,
                 resp->timed_out ? " (timed out)" : "",
                 c->pieces ? " (the stream ended early)" : "");
        attempt_failed(c, 1, resp);
        return;
    }
    snprintf(c->err, sizeof c->err, "%s", "openai: the stream ended early (no [DONE])");
    attempt_failed(c, 1, &as_5xx);
}

static void xfer_end_saved(struct chcall *c)
{
    struct fetch_resp r = {
        .status = c->xe.status,
        .retry_after_ms = c->xe.retry_after_ms,
        .timed_out = c->xe.timed_out,
        .err = c->xe.has_err ? c->xe.err : NULL,
    };
    c->xe.ended = 0;
    xfer_end(c, &r);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct chcall *c = arg;
    (void)fd;
    (void)what;
    if (c->ended) {
        struct prov_status st = {
            .outcome = c->outcome,
            .error = c->outcome == PROV_OK ? NULL : c->err,
            .retry_after_ms = c->outcome == PROV_OK ? -1 : c->retry_after_ms,
        };
        c->done(c->arg, &st, &c->usage, c->model[0] ? c->model : c->model_req, c->pieces);
        ch_free(c);
        return;
    }
    if (c->paused || !c->held) return;
    /* Resumed: the kept bytes first, then more from upstream. */
    c->held = 0;
    if (c->pend_off < c->pend.len) {
        size_t used = feed(c, c->pend.p + c->pend_off, c->pend.len - c->pend_off);
        if (c->cancelled) {
            ch_free(c);
            return;
        }
        c->pend_off += used;
        if (c->stop || c->held) return;
    }
    c->pend.len = c->pend_off = 0;
    if (c->xe.ended) {
        xfer_end_saved(c);
        return;
    }
    arm(c->limit, CH_IDLE_MS); /* after [DONE] too: a lingering end is cut there */
    fetch_resume(c->req);
}

static void attempt(struct chcall *c)
{
    c->status = 0;
    c->errbody.len = c->line.len = c->data.len = 0;
    c->pend.len = c->pend_off = 0;
    c->skip_lf = c->done_seen = c->stop = 0;
    memset(&c->xe, 0, sizeof c->xe);
    c->model[0] = '\0';
    c->usage.prompt_tokens = c->usage.completion_tokens = -1;
    const char *hdrs[3];
    int h = 0;
    if (c->auth) hdrs[h++] = c->auth;
    hdrs[h++] = "Content-Type: application/json";
    hdrs[h] = NULL;
    struct fetch_opts o = {
        .method = "POST",
        .url = c->url,
        .headers = hdrs,
        .body = c->body,
        .body_len = strlen(c->body),
        .timeout_ms = CH_TRANSFER_MS,
        .on_data = on_data,
    };
    c->attempt++;
    count_call();
    c->req = fetch_start(app.fetch, &o, on_fetch_done, c);
    if (!c->req) {
        snprintf(c->err, sizeof c->err, "openai: cannot start a request to %.200s", c->url);
        finish(c, PROV_RETRY, -1);
    }
}

static void on_wait(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    attempt(arg);
}

static void on_limit(evutil_socket_t fd, short what, void *arg)
{
    struct chcall *c = arg;
    (void)fd;
    (void)what;
    if (c->done_seen) { /* the answer is whole; the connection just lingers */
        finish(c, PROV_OK, -1);
        return;
    }
    if (c->pieces == 0)
        snprintf(c->err, sizeof c->err, "openai: no answer within %d s (REELD_PROVIDER_TIMEOUT_S)",
                 cfg.provider_timeout_s);
    else
        snprintf(c->err, sizeof c->err, "openai: the stream stalled (nothing for %d s)",
                 CH_IDLE_MS / 1000);
    finish(c, PROV_RETRY, -1);
}

static void ch_cancel(struct prov_call *pc)
{
    struct chcall *c = (struct chcall *)pc;
    fetch_cancel(c->req); /* the connection closes on this loop turn */
    c->req = NULL;
    if (c->in_cb) {
        /* From inside on_piece: freed once it returns. */
        c->cancelled = 1;
        c->stop = 1;
        evtimer_del(c->limit);
        evtimer_del(c->wait);
        evtimer_del(c->kick);
        return;
    }
    ch_free(c);
}

static void ch_resume(struct prov_call *pc)
{
    struct chcall *c = (struct chcall *)pc;
    if (c->in_cb) {
        c->resume_asked = 1;
        return;
    }
    if (!c->paused || c->ended) return;
    c->paused = 0;
    arm(c->kick, 0);
}

/* The request body; NULL without memory. */
static char *request_body(const struct prov_chat_in *in, const char *model)
{
    struct json_object *req = json_object_new_object(), *msgs = json_object_new_array();
    struct json_object *so = json_object_new_object();
    if (!req || !msgs || !so) {
        json_object_put(req);
        json_object_put(msgs);
        json_object_put(so);
        return NULL;
    }
    for (size_t i = 0; i < in->nmessages; i++) {
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string(in->messages[i].role));
        json_object_object_add(m, "content", json_object_new_string(in->messages[i].content));
        json_object_array_add(msgs, m);
    }
    json_object_object_add(req, "model", json_object_new_string(model));
    json_object_object_add(req, "messages", msgs);
    json_object_object_add(req, "stream", json_object_new_boolean(1));
    json_object_object_add(so, "include_usage", json_object_new_boolean(1));
    json_object_object_add(req, "stream_options", so);
    if (in->max_tokens > 0)
        json_object_object_add(req, "max_completion_tokens", json_object_new_int(in->max_tokens));
    const char *s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
    char *out = s ? strdup(s) : NULL;
    json_object_put(req);
    return out;
}

static struct prov_call *ch_start(const struct prov_chat_in *in, prov_chat_piece_cb on_piece,
                                  prov_chat_done_cb done, void *arg)
{
    if (!in || !on_piece || !done || !in->messages || in->nmessages == 0) return NULL;
    for (size_t i = 0; i < in->nmessages; i++)
        if (!in->messages[i].role || !in->messages[i].content) return NULL;
    const char *model = in->model && *in->model ? in->model : cfg.llm_model;
    const char *base = cfg.openai_base_url;
    if (!model || !*model || !base || !*base) return NULL;
    struct chcall *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->pc.cancel = ch_cancel;
    c->pc.resume = ch_resume;
    c->on_piece = on_piece;
    c->done = done;
    c->arg = arg;
    c->usage.prompt_tokens = c->usage.completion_tokens = -1;
    c->model_req = strdup(model);
    c->body = request_body(in, model);
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    size_t un = bl + sizeof "/chat/completions";
    c->url = malloc(un);
    if (c->url) snprintf(c->url, un, "%.*s/chat/completions", (int)bl, base);
    if (cfg.openai_api_key && *cfg.openai_api_key) {
        size_t n = strlen(cfg.openai_api_key) + 32;
        c->auth = malloc(n);
        if (c->auth) snprintf(c->auth, n, "Authorization: Bearer %s", cfg.openai_api_key);
    }
    c->limit = evtimer_new(app.base, on_limit, c);
    c->wait = evtimer_new(app.base, on_wait, c);
    c->kick = evtimer_new(app.base, on_kick, c);
    if (!c->model_req || !c->body || !c->url ||
        (cfg.openai_api_key && *cfg.openai_api_key && !c->auth) || !c->limit || !c->wait ||
        !c->kick) {
        ch_free(c);
        return NULL;
    }
    int64_t ms = (int64_t)cfg.provider_timeout_s * 1000;
    c->deadline_ms = util_mono_ms() + ms;
    arm(c->limit, ms);
    arm(c->wait, 0); /* the first attempt, from the loop */
    return &c->pc;
}

const struct prov_chatter prov_openai_chatter = {CH_NAME, ch_start};
