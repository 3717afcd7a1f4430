/* The openai chat stream (prov_openai_chatter) against
 * tests/fakes/fake_openai.py, run as a child: whole answers with usage,
 * every SSE framing the fake can send, mid-stream failures, retries before
 * the first piece, backpressure (pause and resume) and cancel. A small
 * local server (evhttp) adds what the fake never sends: CR-only lines,
 * event/id/retry fields, and a whole stream in one write, so that the
 * transfer ends while the caller holds the stream paused. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/fetch.h"
#include "reeld/provider.h"
#include "reeld/util.h"
#include "t.h"
#include "t_fake.h"
#include "t_loop.h"

#define WAIT_S 60

/* The chat records with bodies (caller puts). */
static struct json_object *chat_requests(void)
{
    struct json_object *j = ctl("/_control/requests?endpoint=chat&bodies=1", NULL), *reqs = NULL;
    if (j && json_object_object_get_ex(j, "requests", &reqs)) json_object_get(reqs);
    json_object_put(j);
    return reqs;
}

static size_t count_requests(void)
{
    struct json_object *r = chat_requests();
    size_t n = r ? json_object_array_length(r) : (size_t)-1;
    json_object_put(r);
    return n;
}

/* The record of the last chat request, from /_control/stats (caller puts). */
static struct json_object *last_record(void)
{
    struct json_object *s = ctl("/_control/stats?recent=1", NULL), *recent, *rec = NULL;
    if (s && json_object_object_get_ex(s, "recent", &recent) &&
        json_object_array_length(recent) == 1)
        rec = json_object_get(json_object_array_get_idx(recent, 0));
    json_object_put(s);
    return rec;
}

static int rec_bool(struct json_object *rec, const char *key)
{
    struct json_object *v;
    return rec && json_object_object_get_ex(rec, key, &v) && json_object_get_boolean(v);
}

static double rec_num(struct json_object *rec, const char *key)
{
    struct json_object *v;
    return rec && json_object_object_get_ex(rec, key, &v) ? json_object_get_double(v) : -1;
}

/* ---- a call and what it delivered ----------------------------------------- */

struct got {
    struct prov_call *call;
    struct evbuffer *text;
    size_t npieces;
    int done_calls;
    int in_start;
    enum prov_outcome outcome;
    char *error;
    long long retry_after_ms;
    struct prov_chat_usage usage;
    char *model;
    size_t pieces; /* as reported by done */
    /* behaviour of the piece callback */
    size_t pause_at;    /* return 1 on this piece (1-based), 0 = never */
    size_t pause_every; /* and on every nth piece, resumed from a timer */
    size_t cancel_at;   /* prov_cancel on this piece */
    int paused;
    int while_paused; /* pieces that came during a pause */
    int after_cancel; /* callbacks after the cancel */
    int cancelled;
    struct event *resume_ev;
};

static void auto_resume(evutil_socket_t fd, short what, void *arg)
{
    struct got *g = arg;
    (void)fd;
    (void)what;
    g->paused = 0;
    prov_chat_resume(g->call);
}

static int on_piece(void *arg, const char *text, size_t len)
{
    struct got *g = arg;
    if (g->cancelled) g->after_cancel++;
    if (g->paused) g->while_paused++;
    evbuffer_add(g->text, text, len);
    g->npieces++;
    if (g->cancel_at && g->npieces == g->cancel_at) {
        g->cancelled = 1;
        prov_cancel(g->call);
        return 1;
    }
    if (g->pause_at && g->npieces == g->pause_at) {
        g->paused = 1;
        return 1;
    }
    if (g->pause_every && g->npieces % g->pause_every == 0) {
        g->paused = 1;
        struct timeval tv = {0, 1000};
        evtimer_add(g->resume_ev, &tv);
        return 1;
    }
    return 0;
}

static void on_done(void *arg, const struct prov_status *st, const struct prov_chat_usage *usage,
                    const char *model, size_t pieces)
{
    struct got *g = arg;
    if (g->cancelled) g->after_cancel++;
    g->done_calls++;
    if (g->in_start) g->done_calls += 100;
    g->outcome = st->outcome;
    g->error = st->error ? strdup(st->error) : NULL;
    g->retry_after_ms = st->retry_after_ms;
    g->usage = *usage;
    g->model = model ? strdup(model) : NULL;
    g->pieces = pieces;
}

static const struct prov_chat_msg msgs[] = {
    {"system", "Answer from the sources."},
    {"user", "Sources:\n[1] The launch moved to March.\n\nQuestion: when is the launch?"},
};

static void ask_with(struct got *g, const char *model, int max_tokens)
{
    struct prov_chat_in in = {.messages = msgs,
                              .nmessages = 2,
                              .query = "when is the launch?",
                              .model = model,
                              .max_tokens = max_tokens};
    g->text = evbuffer_new();
    g->resume_ev = evtimer_new(app.base, auto_resume, g);
    g->in_start = 1;
    g->call = prov_openai_chatter.start(&in, on_piece, on_done, g);
    g->in_start = 0;
    CHECK(g->call != NULL);
}

static void ask(struct got *g)
{
    ask_with(g, NULL, 0);
}

static int wait_done(struct got *g)
{
    return t_run_cond(app.base, t_flag_set, &g->done_calls, WAIT_S) == 0;
}

/* The text delivered so far (valid until the next piece). */
static const char *text_of(struct got *g)
{
    evbuffer_add(g->text, "", 1);
    const char *s = (const char *)evbuffer_pullup(g->text, -1);
    evbuffer_drain(g->text, 0);
    return s;
}

static int text_is(struct got *g, const char *want)
{
    size_t n = evbuffer_get_length(g->text);
    return n == strlen(want) && memcmp(evbuffer_pullup(g->text, -1), want, n) == 0;
}

static void got_clear(struct got *g)
{
    if (g->text) evbuffer_free(g->text);
    if (g->resume_ev) event_free(g->resume_ev);
    free(g->error);
    free(g->model);
    memset(g, 0, sizeof *g);
}

static double wall_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

#define TEXT "The launch moved to March [1], after the supplier's delay; café ☕ stays open."

/* ---- whole answers ----------------------------------------------------------- */

static void fifty_tokens_with_usage(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":50,\"model\":\"gpt-test-2024\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.done_calls == 1);
    CHECK(g.outcome == PROV_OK);
    CHECK(g.error == NULL);
    CHECK(g.npieces == 50);
    CHECK(g.pieces == 50);
    CHECK(g.usage.completion_tokens == 50);
    CHECK(g.usage.prompt_tokens > 0);
    CHECK_STR(g.model, "gpt-test-2024");
    /* what was sent */
    struct json_object *reqs = chat_requests(), *body, *v, *so;
    CHECK(reqs && json_object_array_length(reqs) == 1);
    if (reqs && json_object_array_length(reqs) == 1 &&
        json_object_object_get_ex(json_object_array_get_idx(reqs, 0), "body", &body)) {
        CHECK(json_object_object_get_ex(body, "stream", &v) && json_object_get_boolean(v));
        CHECK(json_object_object_get_ex(body, "stream_options", &so) &&
              json_object_object_get_ex(so, "include_usage", &v) && json_object_get_boolean(v));
        CHECK(json_object_object_get_ex(body, "model", &v) &&
              strcmp(json_object_get_string(v), cfg.llm_model) == 0);
        CHECK(json_object_object_get_ex(body, "messages", &v) && json_object_array_length(v) == 2);
        CHECK(!json_object_object_get_ex(body, "max_completion_tokens", &v));
    } else {
        CHECK(0);
    }
    json_object_put(reqs);
    CHECK(fetch_active(app.fetch) == 0);
    got_clear(&g);
}

static void text_is_delivered_byte_for_byte(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"text\":\"" TEXT "\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(text_is(&g, TEXT));
    CHECK(g.npieces > 5 && g.npieces == g.pieces);
    CHECK_STR(g.model, cfg.llm_model); /* the fake answers with the requested model */
    got_clear(&g);
}

static void max_tokens_and_model_are_sent(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":50}]}");
    struct got g = {0};
    ask_with(&g, "other-model", 7);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(g.npieces == 7); /* the fake cuts at max_completion_tokens */
    CHECK_STR(g.model, "other-model");
    struct json_object *reqs = chat_requests(), *body, *v;
    CHECK(reqs && json_object_array_length(reqs) == 1 &&
          json_object_object_get_ex(json_object_array_get_idx(reqs, 0), "body", &body) &&
          json_object_object_get_ex(body, "max_completion_tokens", &v) &&
          json_object_get_int(v) == 7 && json_object_object_get_ex(body, "model", &v) &&
          strcmp(json_object_get_string(v), "other-model") == 0);
    json_object_put(reqs);
    got_clear(&g);
}

static void every_sse_framing_is_understood(void)
{
    const char *framings[] = {
        "\"sse_crlf\":true",
        "\"sse_keepalive\":1",
        "\"sse_multiline\":true",
        "\"sse_nospace\":true",
        "\"sse_crlf\":true,\"sse_multiline\":true,\"sse_nospace\":true,\"sse_keepalive\":2",
        /* one byte per write: every line and CRLF cut anywhere */
        "\"sse_crlf\":true,\"sse_multiline\":true,\"fault\":\"drip\",\"drip_bytes\":7,"
        "\"drip_delay_ms\":0",
    };
    for (size_t i = 0; i < sizeof framings / sizeof framings[0]; i++) {
        char script[512];
        snprintf(script, sizeof script, "{\"chat\":[{\"text\":\"%s\",%s}]}", TEXT, framings[i]);
        fake_reset();
        fake_script(script);
        struct got g = {0};
        ask(&g);
        CHECK(wait_done(&g));
        if (g.outcome != PROV_OK || !text_is(&g, TEXT))
            printf("# framing %s: outcome %d error %s text %s\n", framings[i], g.outcome,
                   g.error ? g.error : "-", text_of(&g));
        CHECK(g.outcome == PROV_OK);
        CHECK(text_is(&g, TEXT));
        CHECK(g.usage.completion_tokens > 0 && g.usage.prompt_tokens > 0);
        CHECK(count_requests() == 1);
        got_clear(&g);
    }
}

/* ---- failures ---------------------------------------------------------------- */

static void midstream_error_ends_after_pieces(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":20,\"fault\":\"midstream_error\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "error in the stream"));
    CHECK(g.pieces == 3 && g.npieces == 3);
    CHECK(count_requests() == 1); /* nothing is retried after a piece */
    CHECK(fetch_active(app.fetch) == 0);
    got_clear(&g);
}

static void garbage_midstream_is_malformed(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":20,\"fault\":\"garbage\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "malformed stream"));
    CHECK(g.pieces == 3);
    CHECK(count_requests() == 1);
    got_clear(&g);
}

static void disconnect_is_an_early_end(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":20,\"fault\":\"disconnect\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "ended early"));
    CHECK(g.pieces == 3);
    CHECK(count_requests() == 1);
    got_clear(&g);
}

static void garbage_before_any_piece_is_retried(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":20,\"fault\":\"garbage\",\"fault_after\":0},"
                "{\"text\":\"" TEXT "\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(text_is(&g, TEXT));
    CHECK(count_requests() == 2);
    got_clear(&g);
}

static void server_error_then_ok_is_retried(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":500},{\"text\":\"" TEXT "\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(text_is(&g, TEXT)); /* pieces only from the good attempt */
    CHECK(count_requests() == 2);
    got_clear(&g);
}

static void rate_limit_waits_for_retry_after(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":429,\"retry_after\":1},{\"text\":\"" TEXT "\"}]}");
    struct got g = {0};
    int64_t t0 = util_mono_ms();
    ask(&g);
    CHECK(wait_done(&g));
    int64_t took = util_mono_ms() - t0;
    CHECK(g.outcome == PROV_OK);
    CHECK(text_is(&g, TEXT));
    CHECK(took >= 1000);
    CHECK(count_requests() == 2);
    got_clear(&g);
}

static void long_retry_after_is_left_to_the_caller(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":429,\"retry_after\":30}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.retry_after_ms == 30000);
    CHECK(g.error && strstr(g.error, "429"));
    CHECK(g.pieces == 0);
    CHECK(count_requests() == 1);
    got_clear(&g);
}

static void insufficient_quota_fails_at_once(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"error\":\"insufficient_quota\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_FAIL);
    CHECK(g.error && strstr(g.error, "insufficient_quota"));
    CHECK(g.pieces == 0 && g.npieces == 0);
    CHECK(count_requests() == 1);
    got_clear(&g);
}

static void other_4xx_fails_with_its_message(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"error\":\"model_not_found\"}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_FAIL);
    CHECK(g.error && strstr(g.error, "HTTP 404: "));
    CHECK(count_requests() == 1);
    got_clear(&g);
}

static void server_errors_run_out_of_attempts(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":503},{\"status\":503},{\"status\":503},{\"ok\":true}]}");
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "HTTP 503"));
    CHECK(count_requests() == 3);
    got_clear(&g);
}

static void call_time_limit_gives_retry(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"fault\":\"timeout\"}]}");
    int saved = cfg.provider_timeout_s;
    cfg.provider_timeout_s = 1;
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "within 1 s"));
    CHECK(g.pieces == 0);
    CHECK(fetch_active(app.fetch) == 0);
    cfg.provider_timeout_s = saved;
    got_clear(&g);
}

/* ---- backpressure and cancel ---------------------------------------------------- */

#define MANY 20000

/* " w0 w1 ... w(n-1)" */
static char *numbered_words(int n)
{
    struct evbuffer *b = evbuffer_new();
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(b, " w%d", i);
    size_t len = evbuffer_get_length(b);
    char *s = malloc(len + 1);
    evbuffer_remove(b, s, len);
    s[len] = '\0';
    evbuffer_free(b);
    return s;
}

static int fake_stalled(void *arg)
{
    (void)arg;
    struct json_object *rec = last_record();
    int stalled = rec_bool(rec, "paused");
    json_object_put(rec);
    return stalled;
}

static void pause_stalls_upstream_and_resume_keeps_order(void)
{
    char *words = numbered_words(MANY);
    size_t sl = strlen(words) + 64;
    char *script = malloc(sl);
    snprintf(script, sl, "{\"chat\":[{\"text\":\"%s\"}]}", words);
    fake_reset();
    fake_script(script);
    struct got g = {.pause_at = 1, .pause_every = 1000};
    ask(&g);
    CHECK(t_run_cond(app.base, t_flag_set, &g.paused, WAIT_S) == 0);
    CHECK(g.npieces == 1);
    /* Paused: no piece comes, and the fake's writes stall once the socket
     * buffers are full. */
    CHECK(t_run_cond(app.base, fake_stalled, NULL, 10) == 0);
    t_run_for(app.base, 500);
    CHECK(g.npieces == 1);
    CHECK(g.done_calls == 0);
    struct json_object *rec = last_record();
    CHECK(rec && !rec_bool(rec, "completed"));
    CHECK(rec_num(rec, "tokens_sent") < MANY);
    json_object_put(rec);
    g.paused = 0;
    prov_chat_resume(g.call);
    CHECK(g.npieces == 1); /* never inside prov_chat_resume */
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(g.while_paused == 0);
    CHECK(g.npieces == MANY && g.pieces == MANY);
    CHECK(text_is(&g, words));
    got_clear(&g);
    free(script);
    free(words);
}

static int fake_saw_close(void *arg)
{
    (void)arg;
    struct json_object *rec = last_record();
    int closed = rec_bool(rec, "client_closed");
    json_object_put(rec);
    return closed;
}

static int three_pieces(void *arg)
{
    const struct got *g = arg;
    return g->npieces >= 3 || g->done_calls;
}

static void cancel_closes_the_connection_at_once(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":1000,\"token_delay_ms\":20}]}");
    struct got g = {0};
    ask(&g);
    CHECK(t_run_cond(app.base, three_pieces, &g, WAIT_S) == 0);
    CHECK(g.npieces >= 3 && g.done_calls == 0);
    double t0 = wall_s();
    prov_cancel(g.call);
    g.cancelled = 1;
    CHECK(t_run_cond(app.base, fake_saw_close, NULL, 5) == 0);
    struct json_object *rec = last_record();
    double closed_at = rec_num(rec, "closed_at");
    CHECK(closed_at > 0 && closed_at - t0 < 1.0);
    json_object_put(rec);
    t_run_for(app.base, 200);
    CHECK(g.after_cancel == 0);
    CHECK(fetch_active(app.fetch) == 0);
    got_clear(&g);
}

static void cancel_from_the_piece_callback(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":1000,\"token_delay_ms\":5}]}");
    struct got g = {.cancel_at = 5};
    ask(&g);
    CHECK(t_run_cond(app.base, t_flag_set, &g.cancelled, WAIT_S) == 0);
    CHECK(t_run_cond(app.base, fake_saw_close, NULL, 5) == 0);
    t_run_for(app.base, 200);
    CHECK(g.npieces == 5);
    CHECK(g.after_cancel == 0 && g.done_calls == 0);
    CHECK(fetch_active(app.fetch) == 0);
    got_clear(&g);
}

static void cancel_while_paused(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"tokens\":200}]}");
    struct got g = {.pause_at = 2};
    ask(&g);
    CHECK(t_run_cond(app.base, t_flag_set, &g.paused, WAIT_S) == 0);
    prov_cancel(g.call);
    g.cancelled = 1;
    t_run_for(app.base, 200);
    CHECK(g.after_cancel == 0 && g.npieces == 2);
    CHECK(fetch_active(app.fetch) == 0);
    got_clear(&g);
}

static int resume_inside = 0;

static int on_piece_resuming(void *arg, const char *text, size_t len)
{
    struct got *g = arg;
    int rc = on_piece(arg, text, len);
    if (rc && !g->cancelled && resume_inside) {
        /* A resume before the pause is even returned: pieces go on, from
         * the loop. */
        g->paused = 0;
        prov_chat_resume(g->call);
    }
    return rc;
}

static void resume_from_inside_the_piece_callback(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"text\":\"" TEXT "\"}]}");
    struct got g = {.pause_every = 1};
    struct prov_chat_in in = {.messages = msgs, .nmessages = 2};
    g.text = evbuffer_new();
    g.resume_ev = evtimer_new(app.base, auto_resume, &g);
    resume_inside = 1;
    g.call = prov_openai_chatter.start(&in, on_piece_resuming, on_done, &g);
    CHECK(g.call != NULL);
    CHECK(wait_done(&g));
    resume_inside = 0;
    CHECK(g.outcome == PROV_OK);
    CHECK(g.while_paused == 0);
    CHECK(text_is(&g, TEXT));
    got_clear(&g);
}

static void end_while_paused_comes_after_the_kept_pieces(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"text\":\" one two three\"}]}");
    struct got g = {.pause_at = 1};
    ask(&g);
    CHECK(t_run_cond(app.base, t_flag_set, &g.paused, WAIT_S) == 0);
    /* The rest of the answer is small: the transfer ends meanwhile. */
    t_run_for(app.base, 300);
    CHECK(g.npieces == 1 && g.done_calls == 0);
    g.paused = 0;
    prov_chat_resume(g.call);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(text_is(&g, " one two three"));
    CHECK(g.pieces == 3);
    CHECK(g.usage.completion_tokens == 3);
    got_clear(&g);
}

static void oversized_event_is_malformed(void)
{
    size_t big = ((size_t)1 << 20) + 1000;
    char *script = malloc(big + 64);
    int k = snprintf(script, big + 64, "{\"chat\":[{\"text\":\"ok ");
    memset(script + k, 'x', big);
    snprintf(script + k + big, 64, "\"}]}");
    fake_reset();
    fake_script(script);
    free(script);
    struct got g = {0};
    ask(&g);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_RETRY);
    CHECK(g.error && strstr(g.error, "malformed stream"));
    CHECK(g.pieces == 1 && text_is(&g, "ok"));
    got_clear(&g);
}

/* ---- a whole stream in one write (a local server, not the fake) ------------ */

static struct evhttp *local_http;
static int local_port;

/* The events of " one two three" with usage, every line ended by nl,
 * with the SSE fields OpenAI never sends. */
static void local_stream(struct evbuffer *b, const char *nl)
{
    const char *words[] = {" one", " two", " three"};
    evbuffer_add_printf(b, ": hello%s%sevent: message%sid: 1%sretry: 5000%s", nl, nl, nl, nl, nl);
    for (int i = 0; i < 3; i++)
        evbuffer_add_printf(b,
                            "data:{\"model\":\"local-m\",\"choices\":[{\"index\":0,"
                            "\"delta\":{\"content\":\"%s\"}}]}%s%s",
                            words[i], nl, nl);
    evbuffer_add_printf(b,
                        "data: {\"choices\":[{\"index\":0,\"delta\":{},%sdata: "
                        "\"finish_reason\":\"stop\"}]}%s%s",
                        nl, nl, nl);
    evbuffer_add_printf(b,
                        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,"
                        "\"completion_tokens\":3}}%s%sdata: [DONE]%s%s",
                        nl, nl, nl, nl);
}

static void local_handler(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *b = evbuffer_new();
    local_stream(b, strncmp(uri, "/cr/", 4) == 0 ? "\r" : "\n");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/event-stream");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static int local_start(void)
{
    local_http = evhttp_new(app.base);
    struct evhttp_bound_socket *bs =
        local_http ? evhttp_bind_socket_with_handle(local_http, "127.0.0.1", 0) : NULL;
    if (!bs) return -1;
    evhttp_set_gencb(local_http, local_handler, NULL);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl) < 0) return -1;
    local_port = ntohs(sa.sin_port);
    return 0;
}

/* One call against the local server under prefix ("/lf" or "/cr"). */
static void ask_local(struct got *g, const char *prefix)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", local_port, prefix);
    char *saved = cfg.openai_base_url;
    cfg.openai_base_url = url;
    ask(g);
    cfg.openai_base_url = saved;
}

static void whole_stream_in_one_write_with_cr_lines(void)
{
    const char *prefixes[] = {"/lf", "/cr"};
    for (int i = 0; i < 2; i++) {
        struct got g = {0};
        ask_local(&g, prefixes[i]);
        CHECK(wait_done(&g));
        CHECK(g.outcome == PROV_OK);
        CHECK(text_is(&g, " one two three"));
        CHECK(g.pieces == 3);
        CHECK(g.usage.prompt_tokens == 11 && g.usage.completion_tokens == 3);
        CHECK_STR(g.model, "local-m");
        got_clear(&g);
    }
}

/* The transfer ends while the caller holds the pieces: the end waits for
 * them. */
static void pause_when_the_transfer_ends_meanwhile(void)
{
    struct got g = {.pause_at = 1, .pause_every = 2};
    ask_local(&g, "/cr");
    CHECK(t_run_cond(app.base, t_flag_set, &g.paused, WAIT_S) == 0);
    t_run_for(app.base, 300);
    CHECK(g.npieces == 1 && g.done_calls == 0);
    g.paused = 0;
    prov_chat_resume(g.call);
    CHECK(wait_done(&g));
    CHECK(g.outcome == PROV_OK);
    CHECK(g.while_paused == 0);
    CHECK(text_is(&g, " one two three"));
    CHECK(g.usage.completion_tokens == 3);
    got_clear(&g);
}

static void bad_input_is_refused(void)
{
    struct prov_chat_in none = {.messages = msgs, .nmessages = 0};
    CHECK(prov_openai_chatter.start(&none, on_piece, on_done, NULL) == NULL);
    struct prov_chat_msg bad[] = {{"user", NULL}};
    struct prov_chat_in in = {.messages = bad, .nmessages = 1};
    CHECK(prov_openai_chatter.start(&in, on_piece, on_done, NULL) == NULL);
    struct prov_chat_in ok = {.messages = msgs, .nmessages = 2};
    CHECK(prov_openai_chatter.start(&ok, NULL, on_done, NULL) == NULL);
    CHECK(prov_openai_chatter.start(NULL, on_piece, on_done, NULL) == NULL);
    CHECK(fetch_active(app.fetch) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    app.base = event_base_new();
    app.fetch = app.base ? fetch_new(app.base) : NULL;
    if (!app.fetch || fake_start() < 0 || local_start() < 0) {
        printf("FAIL openai_chat_setup: cannot start tests/fakes/fake_openai.py\n");
        return 1;
    }
    char url[160], err[256];
    snprintf(url, sizeof url, "%s/v1", fake_root);
    setenv("OPENAI_BASE_URL", url, 1);
    setenv("OPENAI_API_KEY", "sk-test", 1);
    if (config_load(err, sizeof err) < 0) {
        printf("FAIL openai_chat_setup: %s\n", err);
        return 1;
    }

    TEST(fifty_tokens_with_usage);
    TEST(text_is_delivered_byte_for_byte);
    TEST(max_tokens_and_model_are_sent);
    TEST(every_sse_framing_is_understood);
    TEST(midstream_error_ends_after_pieces);
    TEST(garbage_midstream_is_malformed);
    TEST(disconnect_is_an_early_end);
    TEST(garbage_before_any_piece_is_retried);
    TEST(server_error_then_ok_is_retried);
    TEST(rate_limit_waits_for_retry_after);
    TEST(long_retry_after_is_left_to_the_caller);
    TEST(insufficient_quota_fails_at_once);
    TEST(other_4xx_fails_with_its_message);
    TEST(server_errors_run_out_of_attempts);
    TEST(call_time_limit_gives_retry);
    TEST(pause_stalls_upstream_and_resume_keeps_order);
    TEST(cancel_closes_the_connection_at_once);
    TEST(cancel_from_the_piece_callback);
    TEST(cancel_while_paused);
    TEST(resume_from_inside_the_piece_callback);
    TEST(end_while_paused_comes_after_the_kept_pieces);
    TEST(oversized_event_is_malformed);
    TEST(whole_stream_in_one_write_with_cr_lines);
    TEST(pause_when_the_transfer_ends_meanwhile);
    TEST(bad_input_is_refused);

    fetch_free(app.fetch);
    evhttp_free(local_http);
    event_base_free(app.base);
    kill(fake_pid, SIGTERM);
    waitpid(fake_pid, NULL, 0);
    config_free();
    T_EXIT();
}
