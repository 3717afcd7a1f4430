/* The OpenAI-compatible providers (provider.h): transcription
 * (/audio/transcriptions, multipart), documents (/chat/completions) and
 * embeddings (/embeddings), against cfg.openai_base_url.
 *
 * Every call is a small state machine on the loop around one request at a
 * time (struct ocall): the request is retried inside the call on
 * transport errors, timeouts, 408, 409, 429, 5xx and garbage answers
 * (fetch_retry_delay, which honours Retry-After; the wait is a libevent
 * timer), within the call's own limit cfg.provider_timeout_s. What still
 * fails becomes PROV_RETRY with the last Retry-After; insufficient_quota
 * and other 4xx become PROV_FAIL at once.
 *
 * Settings that are not in the configuration table:
 * - OAI_TRANSCRIBE_MODEL: the transcription model ("whisper-1", which
 *   gives word timestamps);
 * - OAI_CONTEXT_TOKENS: the chat model's context, for map-reduce. The
 *   environment variable REELD_LLM_CONTEXT_TOKENS, read at each call,
 *   overrides it (tests use it to force the split); it is not part of the
 *   configuration table.
 * Tokens are estimated as 4 characters each. Embeddings are asked for in
 * base64 (a quarter of the size of JSON numbers); an answer with JSON
 * number arrays is accepted too.
 *
 * Transcription sends the stored file as it is when its type is one the
 * API takes (mp3, m4a/mp4, wav, webm, ogg, flac, mpeg) and it fits in
 * cfg.transcribe_max_bytes: no ffmpeg start (a tenth of a second of CPU
 * or more) for the common case. Other media, larger files, and a file the
 * server refuses as it is (400, 415 or 422: a server that reads only some
 * formats) go through ffmpeg: the audio track is extracted as mono 16 kHz
 * MP3 and, when still too large, split into parts sent one after the
 * other, their word times stitched with the parts' offsets. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/fetch.h"
#include "reeld/log.h"
#include "reeld/metrics.h"
#include "reeld/proc.h"
#include "reeld/provider.h"
#include "reeld/util.h"

#define OAI_NAME "openai"
#define OAI_TRANSCRIBE_MODEL "whisper-1"
/* Extracted audio: mono 16 kHz MP3 at a constant 32 kbit/s (4000 bytes a
 * second), small enough for 25 MB to hold about 1 h 44 min. */
#define OAI_AUDIO_BITRATE "32k"
#define OAI_AUDIO_BYTES_PER_S 4000
#define OAI_CONTEXT_TOKENS 100000L
#define OAI_CHARS_PER_TOKEN 4
#define OAI_EMBED_MAX_INPUTS 2048
#define OAI_EMBED_INPUT_TOKENS 8191
#define OAI_EMBED_REQUEST_TOKENS 300000
#define OAI_ATTEMPTS 3
#define OAI_RETRY_BASE_MS 500
#define OAI_RETRY_MAX_MS 8000
/* A longer Retry-After is not waited for inside the call: the job queue
 * waits it out with PROV_RETRY instead of holding a worker. */
#define OAI_MAX_WAIT_MS 10000
#define OAI_MAX_BODY ((size_t)64 << 20)
/* A document is flagged when shorter than min(this, 5% of the transcript)
 * for a transcript of more than OAI_SHORT_WORDS words. */
#define OAI_SHORT_CHARS 200
#define OAI_SHORT_WORDS 300

static const struct fetch_retry_policy oai_policy = {
    .max_attempts = OAI_ATTEMPTS, .base_ms = OAI_RETRY_BASE_MS, .max_ms = OAI_RETRY_MAX_MS};

/* ---- one call, one request at a time --------------------------------------- */

struct ocall;
/* A 2xx JSON answer. Returns 0 when taken (the call may be gone then), or
 * -1 with c->err set when it is garbage (the request is retried). */
typedef int (*oc_answer_fn)(struct ocall *c, struct json_object *j);
/* The request failed for good, or the call's time ran out (c->expired). */
typedef void (*oc_fail_fn)(struct ocall *c, const struct prov_status *st);

struct ocall {
    struct prov_call pc; /* first: the handle */
    struct event *limit; /* the whole call's time limit */
    struct event *wait;  /* retry backoff, and deferred starts */
    void (*on_wait)(struct ocall *c);
    struct fetch_req *req;
    struct proc *proc;
    int64_t deadline_ms; /* monotonic */
    char *auth;          /* "Authorization: Bearer ..." or NULL */
    /* the request */
    char *url;
    char *body;
    size_t body_len;
    struct fetch_part parts[4];
    size_t nparts;
    int attempt;
    oc_answer_fn on_answer;
    oc_fail_fn on_fail;
    int quota;                  /* the last failure was insufficient_quota */
    long status;                /* HTTP status of the last answer, 0 for none */
    int starting, start_failed; /* no callback from inside start */
    int expired;                /* the time limit passed */
    char err[512];
};

static void count_call(void)
{
    metrics_count("reeld_provider_calls_total", "Requests sent to providers", "provider", OAI_NAME,
                  1);
}

static void count_retry(void)
{
    metrics_count("reeld_provider_retries_total", "Provider requests retried within a call",
                  "provider", OAI_NAME, 1);
}

static void oc_attempt(struct ocall *c);

static void oc_on_wait(evutil_socket_t fd, short what, void *arg)
{
    struct ocall *c = arg;
    (void)fd;
    (void)what;
    c->on_wait(c);
}

static void oc_fail_now(struct ocall *c, enum prov_outcome o, long long ra)
{
    if (c->starting) {
        c->start_failed = 1;
        return;
    }
    struct prov_status st = {.outcome = o, .error = c->err, .retry_after_ms = ra};
    c->on_fail(c, &st);
}

static void oc_on_limit(evutil_socket_t fd, short what, void *arg)
{
    struct ocall *c = arg;
    (void)fd;
    (void)what;
    fetch_cancel(c->req);
    c->req = NULL;
    if (c->proc) proc_cancel(c->proc);
    c->proc = NULL;
    evtimer_del(c->wait);
    c->expired = 1;
    snprintf(c->err, sizeof c->err, "openai: no result within %d s (REELD_PROVIDER_TIMEOUT_S)",
             cfg.provider_timeout_s);
    oc_fail_now(c, PROV_RETRY, -1);
}

/* Sets up the shared part of a call; 0 or -1 (then oc_release it). */
static int oc_init(struct ocall *c, void (*cancel)(struct prov_call *))
{
    c->pc.cancel = cancel;
    c->on_wait = oc_attempt;
    c->limit = evtimer_new(app.base, oc_on_limit, c);
    c->wait = evtimer_new(app.base, oc_on_wait, c);
    if (!c->limit || !c->wait) return -1;
    if (cfg.openai_api_key && *cfg.openai_api_key) {
        size_t n = strlen(cfg.openai_api_key) + 32;
        c->auth = malloc(n);
        if (!c->auth) return -1;
        snprintf(c->auth, n, "Authorization: Bearer %s", cfg.openai_api_key);
    }
    int64_t ms = (int64_t)cfg.provider_timeout_s * 1000;
    c->deadline_ms = util_mono_ms() + ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return evtimer_add(c->limit, &tv);
}

/* Stops whatever runs and frees the shared part (not c itself). */
static void oc_release(struct ocall *c)
{
    fetch_cancel(c->req);
    c->req = NULL;
    if (c->proc) proc_cancel(c->proc);
    c->proc = NULL;
    if (c->limit) event_free(c->limit);
    if (c->wait) event_free(c->wait);
    free(c->auth);
    free(c->url);
    free(c->body);
}

static void oc_defer(struct ocall *c, void (*fn)(struct ocall *c))
{
    struct timeval now = {0, 0};
    c->on_wait = fn;
    evtimer_add(c->wait, &now);
}

/* The message of an OpenAI error object, and whether it says
 * insufficient_quota. */
static void oc_error_of(const struct fetch_resp *resp, char *msg, size_t n, int *quota)
{
    *quota = 0;
    snprintf(msg, n, "%s", "");
    struct json_object *j = json_tokener_parse(resp->body ? resp->body : "");
    struct json_object *e, *v;
    if (j && json_object_object_get_ex(j, "error", &e) &&
        json_object_is_type(e, json_type_object)) {
        const char *fields[] = {"code", "type"};
        for (int i = 0; i < 2; i++)
            if (json_object_object_get_ex(e, fields[i], &v) &&
                json_object_is_type(v, json_type_string) &&
                strcmp(json_object_get_string(v), "insufficient_quota") == 0)
                *quota = 1;
        if (json_object_object_get_ex(e, "message", &v) && json_object_is_type(v, json_type_string))
            snprintf(msg, n, ": %.300s", json_object_get_string(v));
    }
    json_object_put(j);
}

/* Retries when the policy and the time left allow; else fails for good
 * with PROV_RETRY. */
static void oc_retry_or_fail(struct ocall *c, const struct fetch_resp *resp)
{
    int64_t delay = fetch_retry_delay(&oai_policy, c->attempt, resp);
    if (delay >= 0 && delay <= OAI_MAX_WAIT_MS && util_mono_ms() + delay < c->deadline_ms) {
        count_retry();
        struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
        c->on_wait = oc_attempt;
        evtimer_add(c->wait, &tv);
        return;
    }
    oc_fail_now(c, PROV_RETRY, resp->retry_after_ms);
}

static void oc_on_done(void *arg, const struct fetch_resp *resp)
{
    struct ocall *c = arg;
    c->req = NULL;
    c->quota = 0;
    c->status = resp->err ? 0 : resp->status;
    if (resp->err) {
        snprintf(c->err, sizeof c->err, "openai: %s%s", resp->err,
                 resp->timed_out ? " (timed out)" : "");
        oc_retry_or_fail(c, resp);
        return;
    }
    if (resp->status >= 200 && resp->status < 300) {
        struct json_tokener *tok = json_tokener_new();
        struct json_object *j =
            tok ? json_tokener_parse_ex(tok, resp->body, (int)resp->body_len) : NULL;
        int complete = tok && json_tokener_get_error(tok) == json_tokener_success;
        for (size_t i = complete ? json_tokener_get_parse_end(tok) : 0;
             complete && i < resp->body_len; i++)
            if (!isspace((unsigned char)resp->body[i])) complete = 0;
        json_tokener_free(tok);
        if (j && complete && json_object_is_type(j, json_type_object)) {
            if (c->on_answer(c, j) == 0) {
                json_object_put(j);
                return;
            }
        } else {
            snprintf(c->err, sizeof c->err, "openai: malformed answer (HTTP %ld, not JSON)",
                     resp->status);
        }
        json_object_put(j);
        /* Garbage is retried like a server error. */
        struct fetch_resp as5xx = {.status = 503, .retry_after_ms = -1};
        oc_retry_or_fail(c, &as5xx);
        return;
    }
    char msg[320];
    oc_error_of(resp, msg, sizeof msg, &c->quota);
    long s = resp->status;
    if (c->quota) {
        snprintf(c->err, sizeof c->err, "openai: insufficient_quota%s", msg);
        oc_fail_now(c, PROV_FAIL, -1);
    } else if (s == 408 || s == 409 || s == 429 || s >= 500) {
        snprintf(c->err, sizeof c->err, "openai: HTTP %ld%s", s, msg);
        oc_retry_or_fail(c, resp);
    } else {
        snprintf(c->err, sizeof c->err, "openai: HTTP %ld%s", s, msg);
        oc_fail_now(c, PROV_FAIL, -1);
    }
}

static void oc_attempt(struct ocall *c)
{
    int64_t left = c->deadline_ms - util_mono_ms();
    if (left <= 0) left = 1; /* the limit timer is about to fire */
    const char *hdrs[3];
    int h = 0;
    if (c->auth) hdrs[h++] = c->auth;
    if (!c->nparts) hdrs[h++] = "Content-Type: application/json";
    hdrs[h] = NULL;
    struct fetch_opts o = {
        .method = "POST",
        .url = c->url,
        .headers = hdrs,
        .body = c->nparts ? NULL : c->body,
        .body_len = c->nparts ? 0 : c->body_len,
        .timeout_ms = (long)left,
        .max_body = OAI_MAX_BODY,
        .parts = c->nparts ? c->parts : NULL,
        .nparts = c->nparts,
    };
    c->attempt++;
    count_call();
    c->req = fetch_start(app.fetch, &o, oc_on_done, c);
    if (!c->req) {
        snprintf(c->err, sizeof c->err, "openai: cannot start a request to %.200s", c->url);
        oc_fail_now(c, PROV_RETRY, -1);
    }
}

/* Sets the next request: path under the base URL and a JSON body (taken)
 * or c->parts; sends it on the next loop turn. 0 or -1 (no memory). */
static int oc_send(struct ocall *c, const char *path, char *body)
{
    const char *base = cfg.openai_base_url;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    free(c->url);
    free(c->body);
    c->body = body;
    c->body_len = body ? strlen(body) : 0;
    size_t n = bl + strlen(path) + 1;
    c->url = malloc(n);
    if (!c->url) return -1;
    snprintf(c->url, n, "%.*s%s", (int)bl, base, path);
    c->attempt = 0;
    oc_defer(c, oc_attempt);
    return 0;
}

static char *json_dup(struct json_object *j)
{
    const char *s = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN);
    return s ? strdup(s) : NULL;
}

/* A number field (int or double) of o; 0 or -1. */
static int json_num(struct json_object *o, const char *key, double *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v)) return -1;
    if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
        return -1;
    *out = json_object_get_double(v);
    return isfinite(*out) ? 0 : -1;
}

static const char *json_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* ---- transcription ---------------------------------------------------------- */

struct tpart {
    char *path;
    int64_t offset_ms;
    const char *filename, *ctype; /* static: what the request calls the file */
};

struct tcall {
    struct ocall oc;
    prov_transcript_cb cb;
    void *arg;
    char *media;
    int direct;  /* the stored file is being sent as it is */
    char *dir;   /* our temp directory, removed at the end */
    char *audio; /* dir/audio.mp3 */
    struct tpart *parts;
    size_t nparts, cur;
    struct evbuffer *text;
    char *language;
    struct json_object *words;
    int64_t last_start;
};

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int rm_pass(const char *dir);

static void rm_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    if (rm_pass(arg) < 0) log_msg(LOG_WARN, "openai: cannot remove", "dir", arg);
    free(arg);
}

/* Removes our temp directory and what ffmpeg wrote into it. A child
 * killed just now may still finish the file it was creating: then one
 * more pass runs a little later. */
static void rm_tree(const char *dir)
{
    if (rm_pass(dir) == 0) return;
    char *d = strdup(dir);
    struct timeval tv = {0, 500000};
    if (!d || event_base_once(app.base, -1, EV_TIMEOUT, rm_later, d, &tv) < 0) {
        log_msg(LOG_WARN, "openai: cannot remove", "dir", dir);
        free(d);
    }
}

static int rm_pass(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char *p = path_join(dir, e->d_name);
            if (p) unlink(p);
            free(p);
        }
        closedir(d);
    }
    return rmdir(dir) < 0 && errno != ENOENT ? -1 : 0;
}

static void t_free(struct tcall *t)
{
    oc_release(&t->oc);
    if (t->dir) rm_tree(t->dir);
    for (size_t i = 0; i < t->nparts; i++)
        free(t->parts[i].path);
    free(t->parts);
    free(t->media);
    free(t->dir);
    free(t->audio);
    if (t->text) evbuffer_free(t->text);
    free(t->language);
    json_object_put(t->words);
    free(t);
}

static void t_cancel(struct prov_call *pc)
{
    t_free((struct tcall *)pc);
}

static int t_extract(struct tcall *t);

static void t_fail(struct ocall *c, const struct prov_status *st)
{
    struct tcall *t = (struct tcall *)c;
    if (t->direct && !c->expired && !c->quota &&
        (c->status == 400 || c->status == 415 || c->status == 422)) {
        /* The server does not read this file as it is: send it the
         * extracted audio instead, within the same call. */
        struct log_line *l = log_begin(LOG_INFO, "openai: media refused as uploaded; extracting");
        log_str(l, "error", c->err);
        log_end(l);
        t->direct = 0;
        for (size_t i = 0; i < t->nparts; i++)
            free(t->parts[i].path);
        t->nparts = t->cur = 0;
        if (t_extract(t) == 0) return;
        snprintf(c->err, sizeof c->err, "%s", "openai: cannot start ffmpeg");
        struct prov_status again = {.outcome = PROV_RETRY, .error = c->err, .retry_after_ms = -1};
        t->cb(t->arg, &again, NULL);
        t_free(t);
        return;
    }
    t->cb(t->arg, st, NULL);
    t_free(t);
}

static void t_fail_msg(struct tcall *t, enum prov_outcome o, const char *msg)
{
    snprintf(t->oc.err, sizeof t->oc.err, "%s", msg);
    oc_fail_now(&t->oc, o, -1);
}

static void t_finish(struct tcall *t)
{
    /* Cleared before the callback: it must not see a half-removed dir. */
    if (t->dir) rm_tree(t->dir);
    free(t->dir);
    t->dir = NULL;
    size_t n = evbuffer_get_length(t->text);
    const char *text = n ? (const char *)evbuffer_pullup(t->text, -1) : "";
    char *s = malloc(n + 1);
    if (!s) {
        t_fail_msg(t, PROV_RETRY, "openai: out of memory");
        return;
    }
    memcpy(s, text, n);
    s[n] = '\0';
    struct prov_status st = {.outcome = PROV_OK, .retry_after_ms = -1};
    struct prov_transcript tr = {.text = s, .language = t->language, .words = t->words};
    t->cb(t->arg, &st, &tr);
    free(s);
    t_free(t);
}

static void t_send_part(struct ocall *c);

/* One part's verbose_json: validated whole before anything is kept. */
static int t_answer(struct ocall *c, struct json_object *j)
{
    struct tcall *t = (struct tcall *)c;
    const char *text = json_str(j, "text");
    struct json_object *words = NULL;
    if (!text) {
        snprintf(c->err, sizeof c->err, "%s", "openai: malformed transcription (no text)");
        return -1;
    }
    if (json_object_object_get_ex(j, "words", &words) &&
        !json_object_is_type(words, json_type_null)) {
        if (!json_object_is_type(words, json_type_array)) words = NULL, text = NULL;
        size_t n = words ? json_object_array_length(words) : 0;
        for (size_t i = 0; i < n && text; i++) {
            struct json_object *w = json_object_array_get_idx(words, i);
            double s, e;
            if (!json_object_is_type(w, json_type_object) || !json_str(w, "word") ||
                json_num(w, "start", &s) < 0 || json_num(w, "end", &e) < 0)
                text = NULL;
        }
        if (!text) {
            snprintf(c->err, sizeof c->err, "%s", "openai: malformed transcription words");
            return -1;
        }
    } else {
        words = NULL;
    }
    int64_t off = t->parts[t->cur].offset_ms;
    size_t n = words ? json_object_array_length(words) : 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *w = json_object_array_get_idx(words, i);
        double s, e;
        json_num(w, "start", &s);
        json_num(w, "end", &e);
        /* Providers can be sloppy: keep the words in order. */
        int64_t sm = off + (s > 0 ? llround(s * 1000) : 0);
        int64_t em = off + (e > 0 ? llround(e * 1000) : 0);
        if (sm < t->last_start) sm = t->last_start;
        if (em < sm) em = sm;
        t->last_start = sm;
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "w", json_object_new_string(json_str(w, "word")));
        json_object_object_add(o, "start_ms", json_object_new_int64(sm));
        json_object_object_add(o, "end_ms", json_object_new_int64(em));
        json_object_array_add(t->words, o);
    }
    while (*text == ' ' || *text == '\n')
        text++;
    size_t tl = strlen(text);
    while (tl > 0 && isspace((unsigned char)text[tl - 1]))
        tl--;
    if (tl) {
        if (evbuffer_get_length(t->text)) evbuffer_add(t->text, " ", 1);
        evbuffer_add(t->text, text, tl);
    }
    const char *lang = json_str(j, "language");
    if (lang && *lang && !t->language) t->language = strdup(lang);
    t->cur++;
    if (t->cur == t->nparts)
        t_finish(t);
    else
        t_send_part(c);
    return 0;
}

static void t_send_part(struct ocall *c)
{
    struct tcall *t = (struct tcall *)c;
    c->parts[0] = (struct fetch_part){.name = "file",
                                      .path = t->parts[t->cur].path,
                                      .filename = t->parts[t->cur].filename,
                                      .content_type = t->parts[t->cur].ctype};
    c->parts[1] = (struct fetch_part){
        .name = "model", .data = OAI_TRANSCRIBE_MODEL, .data_len = strlen(OAI_TRANSCRIBE_MODEL)};
    c->parts[2] = (struct fetch_part){
        .name = "response_format", .data = "verbose_json", .data_len = strlen("verbose_json")};
    c->parts[3] = (struct fetch_part){
        .name = "timestamp_granularities[]", .data = "word", .data_len = strlen("word")};
    c->nparts = 4;
    c->on_answer = t_answer;
    if (oc_send(c, "/audio/transcriptions", NULL) < 0)
        t_fail_msg(t, PROV_RETRY, "openai: out of memory");
}

static int t_proc_failed(struct tcall *t, const struct proc_result *res, const char *what)
{
    enum prov_outcome o = PROV_FAIL;
    if (res->error) {
        snprintf(t->oc.err, sizeof t->oc.err, "openai: ffmpeg %s: %.300s", what, res->error);
        o = PROV_RETRY;
    } else if (res->timed_out || !res->exited) {
        snprintf(t->oc.err, sizeof t->oc.err, "openai: ffmpeg was killed %s", what);
        o = PROV_RETRY;
    } else if (res->status == 0) {
        return 0;
    } else if (strstr(res->err, "matches no streams") ||
               strstr(res->err, "does not contain any stream")) {
        snprintf(t->oc.err, sizeof t->oc.err, "%s", "the media has no audio track");
    } else {
        /* Media ffmpeg cannot read will not get better by retrying. */
        snprintf(t->oc.err, sizeof t->oc.err, "openai: ffmpeg failed %s: %.400s", what, res->err);
    }
    oc_fail_now(&t->oc, o, -1);
    return 1;
}

/* A part to send: path (taken), sent as filename of type ctype. */
static int t_add_path(struct tcall *t, char *path, int64_t offset_ms, const char *filename,
                      const char *ctype)
{
    struct tpart *np = path ? realloc(t->parts, (t->nparts + 1) * sizeof *np) : NULL;
    if (!np) {
        free(path);
        return -1;
    }
    t->parts = np;
    np[t->nparts++] = (struct tpart){path, offset_ms, filename, ctype};
    return 0;
}

/* An extracted MP3 in our directory. */
static int t_add_part(struct tcall *t, const char *name, int64_t offset_ms)
{
    return t_add_path(t, path_join(t->dir, name), offset_ms, "audio.mp3", "audio/mpeg");
}

/* The segment list (csv: file,start,end), read into parts. */
static int t_read_list(struct tcall *t, char *err, size_t errlen)
{
    char *csv = path_join(t->dir, "parts.csv");
    FILE *f = csv ? fopen(csv, "r") : NULL;
    free(csv);
    if (!f) {
        snprintf(err, errlen, "%s", "openai: ffmpeg wrote no segment list");
        return -1;
    }
    char line[512];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        if (line[0] == '\n' || line[0] == '\r') continue;
        char *c1 = strchr(line, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
        char *endp;
        double start = c1 ? strtod(c1 + 1, &endp) : -1;
        if (!c1 || !c2 || endp != c2 || start < 0 || !isfinite(start) || strchr(line, '/')) {
            snprintf(err, errlen, "openai: bad segment list line: %.100s", line);
            rc = -1;
            break;
        }
        *c1 = '\0';
        if (t_add_part(t, line, llround(start * 1000)) < 0) {
            snprintf(err, errlen, "%s", "openai: out of memory");
            rc = -1;
        }
    }
    fclose(f);
    if (rc == 0 && t->nparts == 0) {
        snprintf(err, errlen, "%s", "openai: ffmpeg split the audio into no parts");
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < t->nparts; i++) {
        struct stat sb;
        if (stat(t->parts[i].path, &sb) < 0 || sb.st_size > cfg.transcribe_max_bytes) {
            snprintf(err, errlen, "%s",
                     "openai: a split part is missing or above REELD_TRANSCRIBE_MAX_BYTES");
            rc = -1;
        } else if (i > 0 && t->parts[i].offset_ms < t->parts[i - 1].offset_ms) {
            snprintf(err, errlen, "%s", "openai: segment list out of order");
            rc = -1;
        }
    }
    return rc;
}

static void t_on_split(void *arg, const struct proc_result *res)
{
    struct tcall *t = arg;
    t->oc.proc = NULL;
    if (t_proc_failed(t, res, "splitting the audio")) return;
    if (t_read_list(t, t->oc.err, sizeof t->oc.err) < 0) {
        oc_fail_now(&t->oc, PROV_FAIL, -1);
        return;
    }
    t_send_part(&t->oc);
}

static int t_run(struct tcall *t, const char *const *argv, proc_done_cb done)
{
    int64_t left = t->oc.deadline_ms - util_mono_ms();
    struct proc_opts po = {.argv = argv, .timeout_ms = left > 1 ? (int)left : 1};
    t->oc.proc = proc_start(app.base, &po, done, t);
    return t->oc.proc ? 0 : -1;
}

static void t_on_extract(void *arg, const struct proc_result *res)
{
    struct tcall *t = arg;
    t->oc.proc = NULL;
    if (t_proc_failed(t, res, "extracting the audio")) return;
    struct stat sb;
    if (stat(t->audio, &sb) < 0) {
        t_fail_msg(t, PROV_FAIL, "openai: ffmpeg produced no audio");
        return;
    }
    if (sb.st_size <= cfg.transcribe_max_bytes) {
        if (t_add_part(t, "audio.mp3", 0) < 0) {
            t_fail_msg(t, PROV_RETRY, "openai: out of memory");
            return;
        }
        t_send_part(&t->oc);
        return;
    }
    /* Parts of a tenth less than the limit at the constant bit rate;
     * their real start times come from the segment list. */
    long long seg = (long long)(cfg.transcribe_max_bytes * 9 / 10 / OAI_AUDIO_BYTES_PER_S);
    if (seg < 1) seg = 1;
    char segs[32];
    snprintf(segs, sizeof segs, "%lld", seg);
    char *csv = path_join(t->dir, "parts.csv"), *pat = path_join(t->dir, "part%04d.mp3");
    const char *argv[] = {"ffmpeg",
                          "-nostdin",
                          "-hide_banner",
                          "-loglevel",
                          "error",
                          "-y",
                          "-i",
                          t->audio,
                          "-f",
                          "segment",
                          "-segment_time",
                          segs,
                          "-segment_list",
                          csv,
                          "-segment_list_type",
                          "csv",
                          "-reset_timestamps",
                          "1",
                          "-c",
                          "copy",
                          pat,
                          NULL};
    int rc = csv && pat ? t_run(t, argv, t_on_split) : -1;
    free(csv);
    free(pat);
    if (rc < 0) t_fail_msg(t, PROV_RETRY, "openai: cannot start ffmpeg");
}

/* Media types the transcription API reads as they are, and the file
 * name that tells it the format. */
static const struct {
    const char *ctype, *filename;
} t_direct_types[] = {
    {"audio/mpeg", "audio.mp3"},  {"audio/mp3", "audio.mp3"},   {"audio/mp4", "audio.m4a"},
    {"audio/m4a", "audio.m4a"},   {"audio/x-m4a", "audio.m4a"}, {"audio/wav", "audio.wav"},
    {"audio/x-wav", "audio.wav"}, {"audio/wave", "audio.wav"},  {"audio/webm", "audio.webm"},
    {"audio/ogg", "audio.ogg"},   {"audio/flac", "audio.flac"}, {"audio/x-flac", "audio.flac"},
    {"video/mp4", "video.mp4"},   {"video/webm", "video.webm"}, {"video/mpeg", "video.mpeg"},
};

/* The file name to send the stored file under as it is, or NULL when it
 * must go through ffmpeg (a remote file, another type, too large). */
static const char *t_direct_name(const struct prov_audio *in, const char **ctype)
{
    if (!in->path || !in->content_type) return NULL;
    size_t tl = strcspn(in->content_type, "; ");
    for (size_t i = 0; i < sizeof t_direct_types / sizeof t_direct_types[0]; i++) {
        const char *c = t_direct_types[i].ctype;
        if (strlen(c) != tl || strncasecmp(in->content_type, c, tl) != 0) continue;
        struct stat sb;
        if (stat(in->path, &sb) < 0 || sb.st_size <= 0 || sb.st_size > cfg.transcribe_max_bytes)
            return NULL;
        *ctype = c;
        return t_direct_types[i].filename;
    }
    return NULL;
}

/* Our temp directory and the extracted audio's path in it; 0 or -1. */
static int t_make_dir(struct tcall *t)
{
    char *tmp = path_join(cfg.data_dir, "tmp");
    char *tmpl = tmp ? path_join(tmp, "openai-XXXXXX") : NULL;
    if (tmp && mkdir(tmp, 0700) < 0 && errno != EEXIST) {
        free(tmpl);
        tmpl = NULL;
    }
    free(tmp);
    if (tmpl && mkdtemp(tmpl))
        t->dir = tmpl;
    else
        free(tmpl);
    if (t->dir) t->audio = path_join(t->dir, "audio.mp3");
    return t->audio ? 0 : -1;
}

/* Starts ffmpeg on the media: its first audio track as mono 16 kHz MP3
 * (t_on_extract goes on). 0, or -1 when it cannot start. */
static int t_extract(struct tcall *t)
{
    if (!t->dir && t_make_dir(t) < 0) return -1;
    const char *argv[] = {"ffmpeg",
                          "-nostdin",
                          "-hide_banner",
                          "-loglevel",
                          "error",
                          "-y",
                          "-i",
                          t->media,
                          "-map",
                          "0:a:0",
                          "-vn",
                          "-ac",
                          "1",
                          "-ar",
                          "16000",
                          "-c:a",
                          "libmp3lame",
                          "-b:a",
                          OAI_AUDIO_BITRATE,
                          t->audio,
                          NULL};
    return t_run(t, argv, t_on_extract);
}

static struct prov_call *t_start(const struct prov_audio *in, prov_transcript_cb cb, void *arg)
{
    if (!in || (!in->path && !in->media_url) || !cb) return NULL;
    struct tcall *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cb = cb;
    t->arg = arg;
    t->oc.on_fail = t_fail;
    t->text = evbuffer_new();
    t->words = json_object_new_array();
    /* ffmpeg reads remote media (a signed URL) as well as files. */
    t->media = strdup(in->path ? in->path : in->media_url);
    t->oc.starting = 1;
    if (oc_init(&t->oc, t_cancel) < 0 || !t->text || !t->words || !t->media) {
        t_free(t);
        return NULL;
    }
    const char *ctype = NULL, *name = t_direct_name(in, &ctype);
    int rc;
    if (name) {
        t->direct = 1;
        rc = t_add_path(t, strdup(in->path), 0, name, ctype);
        if (rc == 0) t_send_part(&t->oc);
    } else {
        rc = t_extract(t);
    }
    if (rc < 0 || t->oc.start_failed) {
        t_free(t);
        return NULL;
    }
    t->oc.starting = 0;
    return &t->oc.pc;
}

const struct prov_transcriber prov_openai_transcriber = {
    .name = OAI_NAME,
    .concurrency = 4,
    .start = t_start,
};

/* ---- documents ----------------------------------------------------------------
 *
 * The model is asked for the Markdown document itself (not JSON around
 * it): every OpenAI-compatible server can do that, and the summary is
 * read back from its "## Summary" section (else its first paragraph). An
 * answer without content is garbage (retried); one without a "# " title
 * gets the recording's title on top.
 *
 * Map-reduce: the text given to one request may take three fifths of the
 * context (the rest is for the instructions and the answer). A longer
 * transcript is cut into parts at word boundaries; each part is drafted
 * into notes (map); the notes are merged, as many as fit in a request,
 * at least two, level by level, until one request writes the document
 * from all of them (reduce). Usage is summed over every request that
 * answered, drafts included. */

static const char sys_doc[] =
    "You turn the transcript of a recording into a Markdown document. Answer with the "
    "document only: no preamble, no code fences. The first line is '# ' and a short title. "
    "Then '## Summary' and one short paragraph summarising the recording. Then sections "
    "with '## ' headings covering the content in order. Then '## Key points' with a "
    "bulleted list. Write in the language of the transcript and invent nothing.";
static const char sys_doc_from_notes[] =
    " You are given notes drafted from consecutive parts of the transcript, in order, "
    "instead of the transcript itself.";
static const char sys_draft[] =
    "You take notes on one part of a long recording's transcript; a document will later be "
    "written from the notes of all parts. Answer in Markdown only: '## ' headings for the "
    "topics of this part in order, and under each, as bullet points, the facts, names, "
    "numbers and decisions said. No preamble. Write in the language of the transcript.";
static const char sys_merge[] =
    "You merge notes drafted from consecutive parts of a long recording's transcript into "
    "one set of notes: keep the order and every fact, drop repetitions. Answer in Markdown "
    "only: '## ' headings with bullet points. No preamble.";

struct wcall {
    struct ocall oc;
    prov_document_cb cb;
    void *arg;
    char *recording_id, *title;
    char *transcript;
    size_t len, nwords;
    char *model;
    int on_fallback;
    long budget_chars; /* per request, for the text given to the model */
    /* the level being worked: its inputs, grouped; one answer per group */
    char **items;
    size_t nitems;
    size_t *group_end; /* group g is items [group_end[g-1], group_end[g]) */
    size_t ngroups, cur;
    char **outs;
    int level; /* 0: transcript parts */
    long long prompt_tokens, completion_tokens;
    int have_pt, have_ct;
};

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static void w_level_free(struct wcall *w)
{
    strv_free(w->items, w->nitems);
    strv_free(w->outs, w->ngroups);
    free(w->group_end);
    w->items = w->outs = NULL;
    w->group_end = NULL;
    w->nitems = w->ngroups = w->cur = 0;
}

static void w_free(struct wcall *w)
{
    oc_release(&w->oc);
    w_level_free(w);
    free(w->recording_id);
    free(w->title);
    free(w->transcript);
    free(w->model);
    free(w);
}

static void w_cancel(struct prov_call *pc)
{
    w_free((struct wcall *)pc);
}

static long context_tokens(void)
{
    const char *e = getenv("REELD_LLM_CONTEXT_TOKENS");
    long long v;
    if (e && *e && util_parse_ll(e, 64, 100000000, &v) == 0) return (long)v;
    return OAI_CONTEXT_TOKENS;
}

/* Splits [s, s+len) into pieces of at most max bytes, cut at whitespace
 * when there is some (else at a UTF-8 character start). */
static int split_text(const char *s, size_t len, size_t max, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    while (len > 0) {
        while (len > 0 && isspace((unsigned char)*s))
            s++, len--;
        if (!len) break;
        size_t take = len;
        if (take > max) {
            take = max;
            size_t k = take;
            while (k > 0 && !isspace((unsigned char)s[k]))
                k--;
            if (k > 0)
                take = k;
            else
                while (take > 1 && ((unsigned char)s[take] & 0xC0) == 0x80)
                    take--;
        }
        char **nv = realloc(*out, (*n + 1) * sizeof *nv);
        if (!nv) return -1;
        *out = nv;
        if (!(nv[*n] = strndup(s, take))) return -1;
        (*n)++;
        s += take;
        len -= take;
    }
    return 0;
}

static void w_send(struct wcall *w);

/* Groups this level's items: level 0 one part a call; above, as many
 * consecutive drafts as fit, at least two. */
static int w_group(struct wcall *w)
{
    w->group_end = calloc(w->nitems ? w->nitems : 1, sizeof *w->group_end);
    w->outs = calloc(w->nitems ? w->nitems : 1, sizeof *w->outs);
    if (!w->group_end || !w->outs) return -1;
    w->ngroups = 0;
    size_t i = 0;
    while (i < w->nitems) {
        size_t j = i, sum = 0;
        while (j < w->nitems && (j - i < (w->level ? 2u : 1u) ||
                                 sum + strlen(w->items[j]) <= (size_t)w->budget_chars))
            sum += strlen(w->items[j++]);
        if (w->level == 0) j = i + 1;
        w->group_end[w->ngroups++] = j;
        i = j;
    }
    w->cur = 0;
    return 0;
}

/* Starts (or restarts, for the fallback) the map-reduce from the
 * transcript. */
static int w_begin(struct wcall *w)
{
    w_level_free(w);
    w->level = 0;
    if (split_text(w->transcript, w->len, (size_t)w->budget_chars, &w->items, &w->nitems) < 0)
        return -1;
    if (w->nitems == 0) {
        w->items = malloc(sizeof *w->items);
        if (!w->items || !(w->items[0] = strdup(""))) return -1;
        w->nitems = 1;
    }
    if (w_group(w) < 0) return -1;
    w_send(w);
    return 0;
}

static char *md_trim(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    /* An answer wrapped in a code fence despite the prompt. */
    if (strncmp(s, "```", 3) == 0) {
        const char *nl = strchr(s, '\n');
        if (nl) {
            const char *endf = s + n;
            while (endf > nl && isspace((unsigned char)endf[-1]))
                endf--;
            if (endf - nl >= 3 && strncmp(endf - 3, "```", 3) == 0) {
                s = nl + 1;
                n = (size_t)(endf - 3 - s);
            }
        }
    }
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return strndup(s, n);
}

/* The summary: the paragraph under "## Summary", else the first
 * paragraph that is not a heading. */
static char *md_summary(const char *md)
{
    const char *p = NULL;
    for (const char *l = md; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncasecmp(l, "## summary", 10) == 0 || strncasecmp(l, "## tl;dr", 8) == 0) {
            p = strchr(l, '\n');
            break;
        }
    }
    for (const char *l = p ? p + 1 : md; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        while (*l == ' ' || *l == '\t')
            l++;
        if (*l == '\n' || *l == '#' || *l == '\0') continue;
        /* a paragraph: up to a blank line or a heading */
        const char *e = l;
        while (*e) {
            const char *nl = strchr(e, '\n');
            if (!nl) {
                e += strlen(e);
                break;
            }
            const char *nx = nl + 1;
            while (*nx == ' ' || *nx == '\t')
                nx++;
            if (*nx == '\n' || *nx == '#' || *nx == '\0') {
                e = nl;
                break;
            }
            e = nl + 1;
        }
        return strndup(l, (size_t)(e - l));
    }
    return strdup("");
}

static void w_finish(struct wcall *w, const char *content)
{
    char *md = md_trim(content);
    char *doc = NULL;
    if (md && strncmp(md, "# ", 2) != 0) {
        /* No title line: the recording's title heads the document. */
        const char *title = w->title && *w->title ? w->title : "Untitled recording";
        size_t n = strlen(title) + strlen(md) + 8;
        doc = malloc(n);
        if (doc) snprintf(doc, n, "# %s\n\n%s", title, md);
        free(md);
        md = doc;
    }
    char *summary = md ? md_summary(md) : NULL;
    if (!md || !summary) {
        free(md);
        free(summary);
        snprintf(w->oc.err, sizeof w->oc.err, "%s", "openai: out of memory");
        oc_fail_now(&w->oc, PROV_RETRY, -1);
        return;
    }
    size_t mdlen = strlen(md), limit = w->len * 5 / 100;
    if (limit > OAI_SHORT_CHARS) limit = OAI_SHORT_CHARS;
    struct prov_document d = {
        .markdown = md,
        .summary = summary,
        .model = w->model,
        .prompt_tokens = w->have_pt ? (int)w->prompt_tokens : -1,
        .completion_tokens = w->have_ct ? (int)w->completion_tokens : -1,
        .flagged_short = w->nwords > OAI_SHORT_WORDS && mdlen < limit,
    };
    struct prov_status st = {.outcome = PROV_OK, .retry_after_ms = -1};
    w->cb(w->arg, &st, &d);
    free(md);
    free(summary);
    w_free(w);
}

static int w_is_final(const struct wcall *w)
{
    return w->ngroups == 1;
}

static int w_answer(struct ocall *c, struct json_object *j)
{
    struct wcall *w = (struct wcall *)c;
    struct json_object *choices, *ch, *msg, *usage;
    const char *content = NULL;
    if (json_object_object_get_ex(j, "choices", &choices) &&
        json_object_is_type(choices, json_type_array) && json_object_array_length(choices) > 0 &&
        (ch = json_object_array_get_idx(choices, 0)) &&
        json_object_object_get_ex(ch, "message", &msg))
        content = json_str(msg, "content");
    const char *p = content;
    while (p && isspace((unsigned char)*p))
        p++;
    if (!p || !*p) {
        snprintf(c->err, sizeof c->err, "%s", "openai: malformed chat answer (no content)");
        return -1;
    }
    if (json_object_object_get_ex(j, "usage", &usage)) {
        double v;
        if (json_num(usage, "prompt_tokens", &v) == 0 && v >= 0)
            w->prompt_tokens += (long long)v, w->have_pt = 1;
        if (json_num(usage, "completion_tokens", &v) == 0 && v >= 0)
            w->completion_tokens += (long long)v, w->have_ct = 1;
    }
    if (w_is_final(w)) {
        w_finish(w, content);
        return 0;
    }
    w->outs[w->cur] = md_trim(content);
    if (!w->outs[w->cur]) {
        snprintf(c->err, sizeof c->err, "%s", "openai: out of memory");
        oc_fail_now(c, PROV_RETRY, -1);
        return 0;
    }
    if (++w->cur < w->ngroups) {
        w_send(w);
        return 0;
    }
    /* The level is done: its drafts are the next level's items. */
    char **outs = w->outs;
    size_t n = w->ngroups;
    w->outs = NULL;
    w->ngroups = 0;
    w_level_free(w);
    w->items = outs;
    w->nitems = n;
    w->level++;
    if (w_group(w) < 0) {
        snprintf(c->err, sizeof c->err, "%s", "openai: out of memory");
        oc_fail_now(c, PROV_RETRY, -1);
        return 0;
    }
    w_send(w);
    return 0;
}

/* The request for group w->cur of this level. */
static void w_send(struct wcall *w)
{
    size_t from = w->cur ? w->group_end[w->cur - 1] : 0, to = w->group_end[w->cur];
    const char *title = w->title && *w->title ? w->title : "(untitled)";
    struct evbuffer *u = evbuffer_new();
    char sys[sizeof sys_doc + sizeof sys_doc_from_notes];
    if (w->level == 0 && w_is_final(w)) {
        snprintf(sys, sizeof sys, "%s", sys_doc);
        evbuffer_add_printf(u, "Recording title: %s\n\nTranscript:\n%s", title, w->items[from]);
    } else if (w->level == 0) {
        snprintf(sys, sizeof sys, "%s", sys_draft);
        evbuffer_add_printf(u, "Part %zu of %zu of the transcript of \"%s\":\n\n%s", w->cur + 1,
                            w->ngroups, title, w->items[from]);
    } else {
        if (w_is_final(w))
            snprintf(sys, sizeof sys, "%s%s", sys_doc, sys_doc_from_notes);
        else
            snprintf(sys, sizeof sys, "%s", sys_merge);
        evbuffer_add_printf(u, "Recording title: %s\n\nNotes, in order:", title);
        for (size_t i = from; i < to; i++)
            evbuffer_add_printf(u, "\n\n---\n\n%s", w->items[i]);
    }
    struct json_object *req = json_object_new_object(), *msgs = json_object_new_array();
    struct json_object *m1 = json_object_new_object(), *m2 = json_object_new_object();
    json_object_object_add(m1, "role", json_object_new_string("system"));
    json_object_object_add(m1, "content", json_object_new_string(sys));
    json_object_object_add(m2, "role", json_object_new_string("user"));
    size_t ul = u ? evbuffer_get_length(u) : 0;
    json_object_object_add(
        m2, "content",
        json_object_new_string_len(u ? (const char *)evbuffer_pullup(u, -1) : "", (int)ul));
    json_object_array_add(msgs, m1);
    json_object_array_add(msgs, m2);
    json_object_object_add(req, "model", json_object_new_string(w->model));
    json_object_object_add(req, "messages", msgs);
    char *body = json_dup(req);
    json_object_put(req);
    if (u) evbuffer_free(u);
    w->oc.nparts = 0;
    w->oc.on_answer = w_answer;
    if (!body || oc_send(&w->oc, "/chat/completions", body) < 0) {
        if (!w->oc.body) free(body);
        snprintf(w->oc.err, sizeof w->oc.err, "%s", "openai: out of memory");
        oc_fail_now(&w->oc, PROV_RETRY, -1);
    }
}

/* After the primary model failed (its retries spent): the fallback once,
 * from the start, with retries of its own. Not for a spent quota nor an
 * expired call. */
static void w_fail(struct ocall *c, const struct prov_status *st)
{
    struct wcall *w = (struct wcall *)c;
    const char *fb = cfg.llm_fallback_model;
    if (!w->on_fallback && !c->quota && !c->expired && fb && *fb && strcmp(fb, w->model) != 0) {
        struct log_line *l = log_begin(LOG_WARN, "document model failed, trying the fallback");
        log_str(l, "recording_id", w->recording_id);
        log_str(l, "model", w->model);
        log_str(l, "fallback", fb);
        log_str(l, "error", st->error);
        log_end(l);
        char *m = strdup(fb);
        if (m) {
            free(w->model);
            w->model = m;
            w->on_fallback = 1;
            if (w_begin(w) == 0) return;
        }
    }
    w->cb(w->arg, st, NULL);
    w_free(w);
}

static struct prov_call *w_start(const struct prov_doc_in *in, prov_document_cb cb, void *arg)
{
    if (!in || !cb || (!in->transcript && in->len)) return NULL;
    struct wcall *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->cb = cb;
    w->arg = arg;
    w->oc.on_fail = w_fail;
    w->title = in->title ? strdup(in->title) : NULL;
    w->recording_id = in->recording_id ? strdup(in->recording_id) : NULL;
    w->transcript = strndup(in->transcript ? in->transcript : "", in->len);
    w->len = in->len;
    const char *model = in->model && *in->model ? in->model : cfg.llm_model;
    w->model = strdup(model ? model : "");
    if (in->words) {
        w->nwords = in->nwords;
    } else {
        for (size_t i = 0; i < in->len; i++)
            if (!isspace((unsigned char)in->transcript[i]) &&
                (i == 0 || isspace((unsigned char)in->transcript[i - 1])))
                w->nwords++;
    }
    /* Three fifths of the context for the text, the rest for the
     * instructions and the answer. */
    long text_tokens = context_tokens() * 3 / 5;
    w->budget_chars = text_tokens * OAI_CHARS_PER_TOKEN;
    w->oc.starting = 1;
    if (oc_init(&w->oc, w_cancel) < 0 || !w->transcript || !w->model || w_begin(w) < 0 ||
        w->oc.start_failed) {
        w_free(w);
        return NULL;
    }
    w->oc.starting = 0;
    return &w->oc.pc;
}

const struct prov_writer prov_openai_writer = {
    .name = OAI_NAME,
    .concurrency = 4,
    .start = w_start,
};

/* ---- embeddings --------------------------------------------------------------- */

struct ecall {
    struct ocall oc;
    prov_embed_cb cb;
    void *arg;
    char **texts;
    size_t n;
    size_t dim;
    float *vec;
    size_t from, count; /* the batch in flight */
    char *model;
};

static void e_free(struct ecall *e)
{
    oc_release(&e->oc);
    strv_free(e->texts, e->n);
    free(e->vec);
    free(e->model);
    free(e);
}

static void e_cancel(struct prov_call *pc)
{
    e_free((struct ecall *)pc);
}

static void e_fail(struct ocall *c, const struct prov_status *st)
{
    struct ecall *e = (struct ecall *)c;
    e->cb(e->arg, st, NULL, 0, NULL);
    e_free(e);
}

static void e_finish(struct ocall *c)
{
    struct ecall *e = (struct ecall *)c;
    struct prov_status st = {.outcome = PROV_OK, .retry_after_ms = -1};
    e->cb(e->arg, &st, e->vec, e->n, e->model ? e->model : cfg.embed_model);
    e_free(e);
}

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Standard base64 (padding optional) of exactly dim float32 LE values. */
static int decode_b64_floats(const char *s, size_t dim, float *out)
{
    size_t len = strlen(s);
    while (len > 0 && s[len - 1] == '=')
        len--;
    if (len != (dim * 4 * 4 + 2) / 3) return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t nb = 0;
    unsigned char word[4];
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            word[nb % 4] = (unsigned char)(acc >> bits);
            if (++nb % 4 == 0) {
                uint32_t u = (uint32_t)word[0] | (uint32_t)word[1] << 8 | (uint32_t)word[2] << 16 |
                             (uint32_t)word[3] << 24;
                memcpy(&out[nb / 4 - 1], &u, 4);
            }
        }
    }
    return nb == dim * 4 ? 0 : -1;
}

static void e_send_batch(struct ecall *e);

static int e_answer(struct ocall *c, struct json_object *j)
{
    struct ecall *e = (struct ecall *)c;
    struct json_object *data;
    if (!json_object_object_get_ex(j, "data", &data) ||
        !json_object_is_type(data, json_type_array) || json_object_array_length(data) != e->count) {
        snprintf(c->err, sizeof c->err, "openai: malformed embeddings (want %zu vectors)",
                 e->count);
        return -1;
    }
    unsigned char *seen = calloc(e->count, 1);
    if (!seen) {
        snprintf(c->err, sizeof c->err, "%s", "openai: out of memory");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < e->count && !bad; i++) {
        struct json_object *it = json_object_array_get_idx(data, i), *idx, *emb;
        if (!json_object_is_type(it, json_type_object) ||
            !json_object_object_get_ex(it, "index", &idx) ||
            !json_object_is_type(idx, json_type_int) ||
            !json_object_object_get_ex(it, "embedding", &emb)) {
            bad = 1;
            break;
        }
        int64_t k = json_object_get_int64(idx);
        if (k < 0 || (size_t)k >= e->count || seen[k]) {
            bad = 1;
            break;
        }
        seen[k] = 1;
        float *row = e->vec + (e->from + (size_t)k) * e->dim;
        if (json_object_is_type(emb, json_type_string)) {
            bad = decode_b64_floats(json_object_get_string(emb), e->dim, row) < 0;
        } else if (json_object_is_type(emb, json_type_array) &&
                   json_object_array_length(emb) == e->dim) {
            for (size_t d = 0; d < e->dim && !bad; d++) {
                struct json_object *x = json_object_array_get_idx(emb, d);
                if (!json_object_is_type(x, json_type_double) &&
                    !json_object_is_type(x, json_type_int))
                    bad = 1;
                else
                    row[d] = (float)json_object_get_double(x);
            }
        } else {
            bad = 1;
        }
        for (size_t d = 0; d < e->dim && !bad; d++)
            if (!isfinite(row[d])) bad = 1;
    }
    free(seen);
    if (bad) {
        snprintf(c->err, sizeof c->err,
                 "openai: malformed embeddings (garbage, or not %zu dimensions)", e->dim);
        return -1;
    }
    const char *model = json_str(j, "model");
    if (model && !e->model) e->model = strdup(model);
    e->from += e->count;
    if (e->from == e->n)
        e_finish(c);
    else
        e_send_batch(e);
    return 0;
}

static size_t est_tokens(const char *s)
{
    size_t t = (strlen(s) + OAI_CHARS_PER_TOKEN - 1) / OAI_CHARS_PER_TOKEN;
    return t ? t : 1;
}

static void e_send_batch(struct ecall *e)
{
    struct json_object *req = json_object_new_object(), *in = json_object_new_array();
    size_t tokens = 0, k = e->from;
    while (k < e->n && k - e->from < OAI_EMBED_MAX_INPUTS) {
        size_t t = est_tokens(e->texts[k]);
        if (k > e->from && tokens + t > OAI_EMBED_REQUEST_TOKENS) break;
        tokens += t;
        json_object_array_add(in, json_object_new_string(e->texts[k]));
        k++;
    }
    e->count = k - e->from;
    json_object_object_add(req, "model", json_object_new_string(cfg.embed_model));
    json_object_object_add(req, "input", in);
    json_object_object_add(req, "dimensions", json_object_new_int(cfg.embed_dim));
    json_object_object_add(req, "encoding_format", json_object_new_string("base64"));
    char *body = json_dup(req);
    json_object_put(req);
    e->oc.nparts = 0;
    e->oc.on_answer = e_answer;
    if (!body || oc_send(&e->oc, "/embeddings", body) < 0) {
        if (!e->oc.body) free(body);
        snprintf(e->oc.err, sizeof e->oc.err, "%s", "openai: out of memory");
        oc_fail_now(&e->oc, PROV_RETRY, -1);
    }
}

/* A copy of s cut to the per-input token budget at a word boundary. */
static char *embed_input(const char *s)
{
    size_t max = (size_t)OAI_EMBED_INPUT_TOKENS * OAI_CHARS_PER_TOKEN, n = strlen(s);
    if (n <= max) return strdup(s);
    size_t k = max;
    while (k > 0 && !isspace((unsigned char)s[k]))
        k--;
    if (k == 0) {
        k = max;
        while (k > 1 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
    }
    while (k > 0 && isspace((unsigned char)s[k - 1]))
        k--;
    return strndup(s, k);
}

static struct prov_call *e_start(const char *const *texts, size_t n, prov_embed_cb cb, void *arg)
{
    if (!cb || (n && !texts) || cfg.embed_dim <= 0) return NULL;
    struct ecall *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->cb = cb;
    e->arg = arg;
    e->oc.on_fail = e_fail;
    e->dim = (size_t)cfg.embed_dim;
    e->texts = calloc(n ? n : 1, sizeof *e->texts);
    e->vec = calloc(n ? n * e->dim : 1, sizeof *e->vec);
    e->oc.starting = 1;
    int bad = !e->texts || !e->vec || oc_init(&e->oc, e_cancel) < 0;
    if (e->texts) e->n = n;
    for (size_t i = 0; i < n && !bad; i++)
        if (!texts[i] || !(e->texts[i] = embed_input(texts[i]))) bad = 1;
    if (!bad && n == 0)
        oc_defer(&e->oc, e_finish); /* nothing to ask, but never inside start */
    else if (!bad)
        e_send_batch(e);
    if (bad || e->oc.start_failed) {
        e_free(e);
        return NULL;
    }
    e->oc.starting = 0;
    return &e->oc.pc;
}

const struct prov_embedder prov_openai_embedder = {
    .name = OAI_NAME,
    .concurrency = 4,
    .start = e_start,
};
