/* The openai providers against tests/fakes/fake_openai.py, run as a
 * child: transcription (one part and split), documents (map-reduce,
 * fallback, errors), embeddings (batches, dimensions, order), cancel and
 * the call's time limit. Audio comes from ffmpeg's lavfi sources. */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/fetch.h"
#include "reeld/proc.h"
#include "reeld/provider.h"
#include "t.h"
#include "t_fake.h"
#include "t_loop.h"

#define WAIT_S 60

static char dir[] = "/tmp/reeld-openai-XXXXXX";
static char tmpdir[256]; /* cfg.data_dir/tmp */

/* The records of one endpoint with bodies (caller puts). */
static struct json_object *fake_requests(const char *endpoint)
{
    char path[128];
    snprintf(path, sizeof path, "/_control/requests?endpoint=%s&bodies=1", endpoint);
    struct json_object *j = ctl(path, NULL), *reqs = NULL;
    if (j && json_object_object_get_ex(j, "requests", &reqs)) json_object_get(reqs);
    json_object_put(j);
    return reqs;
}

static const char *field_str(struct json_object *o, const char *a, const char *b)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, a, &v)) return NULL;
    if (b && !json_object_object_get_ex(v, b, &v)) return NULL;
    return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The user message of a recorded chat request. */
static const char *chat_user(struct json_object *rec)
{
    struct json_object *body, *msgs;
    if (!json_object_object_get_ex(rec, "body", &body) ||
        !json_object_object_get_ex(body, "messages", &msgs) || json_object_array_length(msgs) < 2)
        return "";
    const char *s = field_str(json_object_array_get_idx(msgs, 1), "content", NULL);
    return s ? s : "";
}

static size_t count_requests(const char *endpoint)
{
    struct json_object *r = fake_requests(endpoint);
    size_t n = r ? json_object_array_length(r) : (size_t)-1;
    json_object_put(r);
    return n;
}

static int tmp_empty(void)
{
    DIR *d = opendir(tmpdir);
    if (!d) return 1; /* never made */
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n == 0;
}

static int run_ffmpeg(const char *args, const char *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ffmpeg -nostdin -hide_banner -loglevel error -y %s %s", args, out);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- outcomes ------------------------------------------------------------ */

struct out {
    int calls;
    enum prov_outcome outcome;
    char *error;
    long long retry_after_ms;
    /* transcript */
    char *text, *language;
    struct json_object *words;
    /* document */
    char *markdown, *summary, *model;
    int prompt_tokens, completion_tokens, flagged_short;
    /* embeddings */
    float *vec;
    size_t n;
};

static int in_start;

static void out_status(struct out *o, const struct prov_status *st)
{
    o->calls++;
    if (in_start) o->calls += 100; /* never inside start */
    o->outcome = st->outcome;
    o->error = st->error ? strdup(st->error) : NULL;
    o->retry_after_ms = st->retry_after_ms;
}

static void on_transcript(void *arg, const struct prov_status *st, const struct prov_transcript *t)
{
    struct out *o = arg;
    out_status(o, st);
    if (st->outcome != PROV_OK) return;
    o->text = strdup(t->text);
    o->language = t->language ? strdup(t->language) : NULL;
    o->words = json_object_get(t->words);
}

static void on_document(void *arg, const struct prov_status *st, const struct prov_document *d)
{
    struct out *o = arg;
    out_status(o, st);
    if (st->outcome != PROV_OK) return;
    o->markdown = strdup(d->markdown);
    o->summary = strdup(d->summary);
    o->model = strdup(d->model);
    o->prompt_tokens = d->prompt_tokens;
    o->completion_tokens = d->completion_tokens;
    o->flagged_short = d->flagged_short;
}

static void on_embed(void *arg, const struct prov_status *st, const float *v, size_t n,
                     const char *model)
{
    struct out *o = arg;
    out_status(o, st);
    if (st->outcome != PROV_OK) return;
    o->n = n;
    o->vec = malloc(n * (size_t)cfg.embed_dim * sizeof *v + 1);
    memcpy(o->vec, v, n * (size_t)cfg.embed_dim * sizeof *v);
    o->model = strdup(model);
}

static void out_clear(struct out *o)
{
    free(o->error);
    free(o->text);
    free(o->language);
    json_object_put(o->words);
    free(o->markdown);
    free(o->summary);
    free(o->model);
    free(o->vec);
    memset(o, 0, sizeof *o);
}

static int wait_out(struct out *o)
{
    return t_run_cond(app.base, t_flag_set, &o->calls, WAIT_S) == 0;
}

/* Transcribes the file at path, uploaded as ctype (may be NULL). */
static struct prov_call *transcribe_as(const char *path, const char *ctype, struct out *o)
{
    struct prov_audio in = {.recording_id = "r1",
                            .org_id = "o1",
                            .path = path,
                            .content_type = ctype,
                            .duration_ms = -1};
    in_start = 1;
    struct prov_call *c = prov_openai_transcriber.start(&in, on_transcript, o);
    in_start = 0;
    return c;
}

static struct prov_call *transcribe(const char *path, struct out *o)
{
    return transcribe_as(path, NULL, o);
}

static struct prov_call *write_doc(const char *transcript, struct out *o)
{
    struct prov_doc_in in = {.recording_id = "r1",
                             .title = "Weekly sync",
                             .transcript = transcript,
                             .len = strlen(transcript)};
    in_start = 1;
    struct prov_call *c = prov_openai_writer.start(&in, on_document, o);
    in_start = 0;
    return c;
}

static struct prov_call *embed(const char *const *texts, size_t n, struct out *o)
{
    in_start = 1;
    struct prov_call *c = prov_openai_embedder.start(texts, n, on_embed, o);
    in_start = 0;
    return c;
}

/* Words are {w, start_ms, end_ms} with ints, monotonic. */
static int words_ok(struct json_object *words)
{
    int64_t last = 0;
    size_t n = json_object_array_length(words);
    for (size_t i = 0; i < n; i++) {
        struct json_object *w = json_object_array_get_idx(words, i), *s, *e, *t;
        if (!json_object_object_get_ex(w, "w", &t) || !json_object_is_type(t, json_type_string) ||
            !json_object_object_get_ex(w, "start_ms", &s) ||
            !json_object_is_type(s, json_type_int) || !json_object_object_get_ex(w, "end_ms", &e) ||
            !json_object_is_type(e, json_type_int))
            return 0;
        int64_t sm = json_object_get_int64(s), em = json_object_get_int64(e);
        if (sm < last || em < sm) return 0;
        last = sm;
    }
    return 1;
}

static int64_t word_start(struct json_object *words, const char *w)
{
    size_t n = json_object_array_length(words);
    for (size_t i = 0; i < n; i++) {
        struct json_object *o = json_object_array_get_idx(words, i), *v;
        if (json_object_object_get_ex(o, "w", &v) && strcmp(json_object_get_string(v), w) == 0 &&
            json_object_object_get_ex(o, "start_ms", &v))
            return json_object_get_int64(v);
    }
    return -1;
}

/* ---- transcription -------------------------------------------------------- */

static void transcribes_short_audio_with_words_in_ms(void)
{
    char wav[300];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    CHECK(run_ffmpeg("-f lavfi -i sine=frequency=440:duration=3", wav) == 0);
    fake_reset();
    fake_script("{\"transcriptions\":[{\"transcript\":\"hello world this is a test\","
                "\"duration\":3.0,\"language\":\"english\"}]}");
    struct out o = {0};
    CHECK(transcribe(wav, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.calls == 1);
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.text, "hello world this is a test");
    CHECK_STR(o.language, "english");
    CHECK(o.words && json_object_array_length(o.words) == 6);
    CHECK(o.words && words_ok(o.words));
    CHECK(o.words && word_start(o.words, "hello") == 0);
    CHECK(o.words && word_start(o.words, "test") == 2500);
    struct json_object *r = fake_requests("transcriptions");
    CHECK(r && json_object_array_length(r) == 1);
    if (r && json_object_array_length(r) == 1) {
        struct json_object *rec = json_object_array_get_idx(r, 0), *body, *v;
        CHECK_STR(field_str(rec, "auth", NULL), "Bearer sk-test");
        CHECK(json_object_object_get_ex(rec, "body", &body));
        CHECK(json_object_object_get_ex(body, "model", &v) &&
              strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "whisper-1") == 0);
        CHECK(json_object_object_get_ex(body, "response_format", &v) &&
              strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "verbose_json") == 0);
        CHECK(json_object_object_get_ex(body, "timestamp_granularities[]", &v) &&
              strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "word") == 0);
        CHECK(json_object_object_get_ex(body, "file", &v) &&
              strncmp(json_object_get_string(json_object_array_get_idx(v, 0)), "<file audio.mp3, ",
                      17) == 0);
    }
    json_object_put(r);
    CHECK(tmp_empty());
    out_clear(&o);
}

static void long_audio_is_split_and_stitched_with_offsets(void)
{
    char wav[300];
    snprintf(wav, sizeof wav, "%s/long.wav", dir);
    CHECK(run_ffmpeg("-f lavfi -i sine=frequency=300:duration=40", wav) == 0);
    int64_t saved = cfg.transcribe_max_bytes;
    cfg.transcribe_max_bytes = 65536;
    fake_reset();
    fake_script("{\"transcriptions\":[{\"transcript\":\"alpha one\",\"duration\":10},"
                "{\"transcript\":\"beta two\",\"duration\":10},"
                "{\"transcript\":\"gamma three\",\"duration\":10},"
                "{\"transcript\":\"delta four\",\"duration\":10}]}");
    struct out o = {0};
    CHECK(transcribe(wav, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    /* 40 s at 4000 bytes/s in parts of ~14 s: three parts, in order. */
    CHECK(count_requests("transcriptions") == 3);
    CHECK_STR(o.text, "alpha one beta two gamma three");
    CHECK(o.words && words_ok(o.words));
    int64_t a = o.words ? word_start(o.words, "alpha") : -1;
    int64_t b = o.words ? word_start(o.words, "beta") : -1;
    int64_t g = o.words ? word_start(o.words, "gamma") : -1;
    int64_t one = o.words ? word_start(o.words, "one") : -1;
    CHECK(a == 0 && one == 5000);
    /* each later part starts where ffmpeg cut it, near 14 s and 28 s */
    CHECK(b >= 12000 && b <= 16000);
    CHECK(g >= 26000 && g <= 30000);
    struct json_object *r = fake_requests("transcriptions");
    for (size_t i = 0; r && i < json_object_array_length(r); i++) {
        struct json_object *bb;
        CHECK(json_object_object_get_ex(json_object_array_get_idx(r, i), "body_bytes", &bb) &&
              json_object_get_int64(bb) < 65536 + 4096);
    }
    json_object_put(r);
    CHECK(tmp_empty());
    cfg.transcribe_max_bytes = saved;
    out_clear(&o);
}

/* The file field of the i-th transcription request ("<file NAME, N
 * bytes>"), copied into out. */
static void upload_field(int i, char *out, size_t n)
{
    struct json_object *r = fake_requests("transcriptions"), *body, *v;
    snprintf(out, n, "%s", "");
    if (r && (int)json_object_array_length(r) > i &&
        json_object_object_get_ex(json_object_array_get_idx(r, i), "body", &body) &&
        json_object_object_get_ex(body, "file", &v))
        snprintf(out, n, "%s", json_object_get_string(json_object_array_get_idx(v, 0)));
    json_object_put(r);
}

static void accepted_audio_is_sent_as_it_is(void)
{
    char wav[300], want[64], got[128];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    struct stat sb;
    CHECK(stat(wav, &sb) == 0);
    fake_reset();
    fake_script("{\"transcriptions\":[{\"transcript\":\"as it is\",\"duration\":3.0}]}");
    struct out o = {0};
    CHECK(transcribe_as(wav, "audio/wav; codecs=1", &o) != NULL);
    CHECK(tmp_empty()); /* no ffmpeg, no temp directory */
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.text, "as it is");
    CHECK(count_requests("transcriptions") == 1);
    upload_field(0, got, sizeof got);
    snprintf(want, sizeof want, "<file audio.wav, %lld bytes>", (long long)sb.st_size);
    CHECK_STR(got, want);
    CHECK(tmp_empty());
    out_clear(&o);
}

static void refused_as_it_is_then_extracted(void)
{
    char wav[300], got[128];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    fake_reset();
    fake_script("{\"transcriptions\":[{\"status\":400,\"error\":{\"message\":\"Invalid file "
                "format.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}},"
                "{\"transcript\":\"after extraction\",\"duration\":3.0}]}");
    struct out o = {0};
    CHECK(transcribe_as(wav, "audio/x-wav", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.calls == 1);
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.text, "after extraction");
    CHECK(count_requests("transcriptions") == 2);
    upload_field(0, got, sizeof got);
    CHECK(strncmp(got, "<file audio.wav, ", 17) == 0);
    upload_field(1, got, sizeof got);
    CHECK(strncmp(got, "<file audio.mp3, ", 17) == 0);
    CHECK(tmp_empty());
    out_clear(&o);
}

static void large_or_unknown_media_is_extracted(void)
{
    char wav[300], got[128];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    int64_t saved = cfg.transcribe_max_bytes;
    struct stat sb;
    CHECK(stat(wav, &sb) == 0);
    /* above the limit as it is; its 32 kbit/s extraction is far below */
    cfg.transcribe_max_bytes = sb.st_size - 1;
    const char *types[] = {"audio/wav", "application/octet-stream"};
    for (int i = 0; i < 2; i++) {
        if (i == 1) cfg.transcribe_max_bytes = saved;
        fake_reset();
        struct out o = {0};
        CHECK(transcribe_as(wav, types[i], &o) != NULL);
        CHECK(!tmp_empty()); /* ffmpeg's directory */
        CHECK(wait_out(&o));
        CHECK(o.outcome == PROV_OK);
        CHECK(count_requests("transcriptions") == 1);
        upload_field(0, got, sizeof got);
        CHECK(strncmp(got, "<file audio.mp3, ", 17) == 0);
        CHECK(tmp_empty());
        out_clear(&o);
    }
    cfg.transcribe_max_bytes = saved;
}

static void media_without_audio_fails(void)
{
    char mp4[300];
    snprintf(mp4, sizeof mp4, "%s/video.mkv", dir);
    CHECK(run_ffmpeg("-f lavfi -i testsrc=duration=1:size=64x64:rate=5 -c:v mpeg4", mp4) == 0);
    fake_reset();
    struct out o = {0};
    CHECK(transcribe(mp4, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.calls == 1);
    CHECK(o.outcome == PROV_FAIL);
    CHECK(o.error && strstr(o.error, "no audio"));
    CHECK(count_requests("transcriptions") == 0);
    CHECK(tmp_empty());
    out_clear(&o);
}

static void cancel_during_ffmpeg_leaves_nothing(void)
{
    char wav[300];
    snprintf(wav, sizeof wav, "%s/long.wav", dir);
    fake_reset();
    struct out o = {0};
    struct prov_call *c = transcribe(wav, &o);
    CHECK(c != NULL);
    CHECK(!tmp_empty());
    prov_cancel(c);
    CHECK(tmp_empty());
    t_run_for(app.base, 300);
    CHECK(o.calls == 0);
    out_clear(&o);
}

static void transcription_429s_end_in_retry_with_retry_after(void)
{
    char wav[300];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    fake_reset();
    fake_script("{\"transcriptions\":[{\"status\":429,\"retry_after\":1},{\"status\":429,"
                "\"retry_after\":1},{\"status\":429,\"retry_after\":1}]}");
    struct out o = {0};
    CHECK(transcribe(wav, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_RETRY);
    CHECK(o.retry_after_ms > 0 && o.retry_after_ms <= 1000);
    CHECK(o.error && strstr(o.error, "HTTP 429"));
    CHECK(count_requests("transcriptions") == 3);
    CHECK(tmp_empty());
    out_clear(&o);
}

static int fake_saw_close_on(const char *endpoint)
{
    struct json_object *r = fake_requests(endpoint), *v;
    int closed = r && json_object_array_length(r) == 1 &&
                 json_object_object_get_ex(json_object_array_get_idx(r, 0), "client_closed", &v) &&
                 json_object_get_boolean(v);
    json_object_put(r);
    return closed;
}

static int fake_has_upload(void *arg)
{
    (void)arg;
    return count_requests("transcriptions") == 1;
}

static int fake_saw_upload_close(void *arg)
{
    (void)arg;
    return fake_saw_close_on("transcriptions");
}

static void cancel_during_upload_leaves_nothing(void)
{
    char wav[300];
    snprintf(wav, sizeof wav, "%s/tone.wav", dir);
    fake_reset();
    fake_script("{\"transcriptions\":[{\"fault\":\"timeout\"}]}");
    struct out o = {0};
    struct prov_call *c = transcribe(wav, &o);
    CHECK(c != NULL);
    CHECK(t_run_cond(app.base, fake_has_upload, NULL, WAIT_S) == 0);
    CHECK(!tmp_empty());
    prov_cancel(c);
    CHECK(tmp_empty());
    CHECK(t_run_cond(app.base, fake_saw_upload_close, NULL, WAIT_S) == 0);
    CHECK(o.calls == 0);
    CHECK(fetch_active(app.fetch) == 0);
    out_clear(&o);
}

/* ---- documents ------------------------------------------------------------ */

static char *words_text(int n)
{
    static const char *vocab[] = {"budget",  "park", "council", "trees", "school",
                                  "library", "road", "vote",    "plan",  "river"};
    char *s = malloc((size_t)n * 12 + 1);
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)sprintf(s + len, "%s%s", i ? " " : "", vocab[(i * 7 + i / 10) % 10]);
    return s;
}

static void writes_a_document(void)
{
    fake_reset();
    char *t = words_text(120);
    struct out o = {0};
    CHECK(write_doc(t, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.calls == 1);
    CHECK(o.outcome == PROV_OK);
    CHECK(o.markdown && strncmp(o.markdown, "# ", 2) == 0);
    CHECK(o.summary && strlen(o.summary) > 0 && o.summary[0] != '#');
    CHECK_STR(o.model, cfg.llm_model);
    CHECK(o.prompt_tokens > 0 && o.completion_tokens > 0);
    CHECK(o.flagged_short == 0);
    struct json_object *r = fake_requests("chat");
    CHECK(r && json_object_array_length(r) == 1);
    if (r && json_object_array_length(r) == 1) {
        struct json_object *rec = json_object_array_get_idx(r, 0);
        CHECK_STR(field_str(rec, "body", "model"), cfg.llm_model);
        CHECK(strstr(chat_user(rec), "Transcript:") && strstr(chat_user(rec), "Weekly sync"));
    }
    json_object_put(r);
    out_clear(&o);
    free(t);
}

static void short_answer_for_long_transcript_is_flagged(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"text\":\"# Sync\\n\\nShort.\"}]}");
    char *t = words_text(400);
    struct out o = {0};
    CHECK(write_doc(t, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.markdown, "# Sync\n\nShort.");
    CHECK_STR(o.summary, "Short.");
    CHECK(o.flagged_short == 1);
    out_clear(&o);
    free(t);
}

static void long_transcript_is_mapped_then_reduced(void)
{
    fake_reset();
    setenv("REELD_LLM_CONTEXT_TOKENS", "400", 1); /* 240 tokens, 960 chars a part */
    char *t = words_text(400);                    /* ~2700 chars: three parts */
    fake_script("{\"chat\":[{\"text\":\"## A\\n- note one\"},{\"text\":\"## B\\n- note two\"},"
                "{\"text\":\"## C\\n- note three\"}]}");
    struct out o = {0};
    CHECK(write_doc(t, &o) != NULL);
    CHECK(wait_out(&o));
    unsetenv("REELD_LLM_CONTEXT_TOKENS");
    CHECK(o.outcome == PROV_OK);
    CHECK(o.markdown && strncmp(o.markdown, "# ", 2) == 0);
    struct json_object *r = fake_requests("chat");
    size_t n = r ? json_object_array_length(r) : 0;
    CHECK(n == 4);
    if (n == 4) {
        CHECK(strstr(chat_user(json_object_array_get_idx(r, 0)), "Part 1 of 3"));
        CHECK(strstr(chat_user(json_object_array_get_idx(r, 2)), "Part 3 of 3"));
        const char *last = chat_user(json_object_array_get_idx(r, 3));
        const char *p1 = strstr(last, "note one"), *p2 = strstr(last, "note two"),
                   *p3 = strstr(last, "note three");
        CHECK(p1 && p2 && p3 && p1 < p2 && p2 < p3);
        CHECK(strstr(last, "budget") == NULL); /* the notes, not the transcript */
    }
    /* Every word of the transcript went to exactly one part. */
    size_t sum = 0;
    for (size_t i = 0; i < 3 && i < n; i++) {
        const char *u = strstr(chat_user(json_object_array_get_idx(r, i)), ":\n\n");
        sum += u ? strlen(u + 3) : 0;
    }
    CHECK(sum + 2 == strlen(t));
    json_object_put(r);
    /* usage summed over the four calls */
    CHECK(o.prompt_tokens > 0);
    out_clear(&o);
    free(t);
}

static void falls_back_after_primary_keeps_failing(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":500},{\"status\":503},{\"status\":500}]}");
    char *t = words_text(50);
    struct out o = {0};
    CHECK(write_doc(t, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.model, cfg.llm_fallback_model);
    struct json_object *r = fake_requests("chat");
    size_t n = r ? json_object_array_length(r) : 0;
    CHECK(n == 4);
    for (size_t i = 0; i < n; i++)
        CHECK_STR(field_str(json_object_array_get_idx(r, i), "body", "model"),
                  i < 3 ? cfg.llm_model : cfg.llm_fallback_model);
    json_object_put(r);
    out_clear(&o);
    free(t);
}

static void insufficient_quota_fails_at_once(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"error\":\"insufficient_quota\"}]}");
    struct out o = {0};
    CHECK(write_doc("a few words", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_FAIL);
    CHECK(o.error && strstr(o.error, "insufficient_quota"));
    CHECK(count_requests("chat") == 1);
    out_clear(&o);
}

static void rate_limit_is_retried_after_retry_after(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":429,\"retry_after\":1}]}");
    struct out o = {0};
    CHECK(write_doc("a few words about the park", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    CHECK_STR(o.model, cfg.llm_model);
    struct json_object *r = fake_requests("chat");
    CHECK(r && json_object_array_length(r) == 2);
    if (r && json_object_array_length(r) == 2) {
        struct json_object *a, *b;
        json_object_object_get_ex(json_object_array_get_idx(r, 0), "started_at", &a);
        json_object_object_get_ex(json_object_array_get_idx(r, 1), "started_at", &b);
        /* the second attempt honoured Retry-After: 1 */
        CHECK(json_object_get_double(b) - json_object_get_double(a) >= 0.95);
    }
    json_object_put(r);
    out_clear(&o);
}

static void long_retry_after_is_left_to_the_queue(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"status\":503,\"retry_after\":30},{\"status\":503,"
                "\"retry_after\":30}]}");
    struct out o = {0};
    CHECK(write_doc("a few words", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_RETRY);
    CHECK(o.retry_after_ms > 25000 && o.retry_after_ms <= 30000);
    /* no wait inside the call: one request on the model, one on the fallback */
    CHECK(count_requests("chat") == 2);
    out_clear(&o);
}

static void garbage_is_retried_then_retry(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"fault\":\"garbage\"},{\"fault\":\"garbage\"},{\"fault\":"
                "\"garbage\"},{\"fault\":\"garbage\"},{\"fault\":\"garbage\"},{\"fault\":"
                "\"garbage\"}]}");
    struct out o = {0};
    CHECK(write_doc("a few words", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_RETRY);
    CHECK(o.error && strstr(o.error, "malformed"));
    /* three attempts on the model, three on the fallback */
    CHECK(count_requests("chat") == 6);
    out_clear(&o);
}

static void other_4xx_fails(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"error\":\"invalid_request_error\"},{\"error\":"
                "\"invalid_request_error\"}]}");
    struct out o = {0};
    CHECK(write_doc("a few words", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_FAIL);
    CHECK(o.error && strstr(o.error, "HTTP 400"));
    CHECK(count_requests("chat") == 2); /* the model, then the fallback, once each */
    out_clear(&o);
}

static int fake_has_chat_in_flight(void *arg)
{
    (void)arg;
    return count_requests("chat") == 1;
}

static int fake_saw_close(void *arg)
{
    (void)arg;
    return fake_saw_close_on("chat");
}

static void cancel_mid_request_closes_the_connection(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"fault\":\"timeout\"}]}");
    struct out o = {0};
    struct prov_call *c = write_doc("a few words", &o);
    CHECK(c != NULL);
    CHECK(t_run_cond(app.base, fake_has_chat_in_flight, NULL, WAIT_S) == 0);
    prov_cancel(c);
    CHECK(t_run_cond(app.base, fake_saw_close, NULL, WAIT_S) == 0);
    CHECK(o.calls == 0);
    CHECK(fetch_active(app.fetch) == 0);
    out_clear(&o);
}

static void call_time_limit_gives_retry(void)
{
    fake_reset();
    fake_script("{\"chat\":[{\"fault\":\"timeout\"}]}");
    int saved = cfg.provider_timeout_s;
    cfg.provider_timeout_s = 1;
    struct out o = {0};
    CHECK(write_doc("a few words", &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_RETRY);
    CHECK(o.error && strstr(o.error, "within 1 s"));
    CHECK(count_requests("chat") == 1); /* no fallback without time left */
    CHECK(fetch_active(app.fetch) == 0);
    cfg.provider_timeout_s = saved;
    out_clear(&o);
}

/* ---- embeddings ------------------------------------------------------------- */

static void embeds_in_batches_in_order(void)
{
    fake_reset();
    /* answers listed backwards: rows must follow index, not position */
    fake_script("{\"embeddings\":[{\"embed_reverse\":true}]}");
    enum { N = 2100 };
    static char bufs[N][32];
    const char *texts[N];
    for (int i = 0; i < N; i++) {
        if (i % 7 == 0)
            snprintf(bufs[i], sizeof bufs[i], "the same text");
        else
            snprintf(bufs[i], sizeof bufs[i], "text number w%d", i);
        texts[i] = bufs[i];
    }
    struct out o = {0};
    CHECK(embed(texts, N, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK);
    CHECK(o.n == N);
    CHECK_STR(o.model, cfg.embed_model);
    size_t d = (size_t)cfg.embed_dim;
    int same = 1, differ = 1, unit = 1;
    for (size_t i = 0; o.vec && i < N; i++) {
        double norm = 0;
        for (size_t k = 0; k < d; k++)
            norm += (double)o.vec[i * d + k] * o.vec[i * d + k];
        if (fabs(norm - 1.0) > 1e-3) unit = 0;
        int eq = memcmp(o.vec + i * d, o.vec, d * sizeof(float)) == 0;
        if (i % 7 == 0 && !eq) same = 0;
        if (i % 7 != 0 && eq) differ = 0;
    }
    CHECK(same && differ && unit);
    struct json_object *r = fake_requests("embeddings");
    CHECK(r && json_object_array_length(r) == 2);
    if (r && json_object_array_length(r) == 2) {
        struct json_object *b0, *b1, *in, *dims;
        json_object_object_get_ex(json_object_array_get_idx(r, 0), "body", &b0);
        json_object_object_get_ex(json_object_array_get_idx(r, 1), "body", &b1);
        CHECK(json_object_object_get_ex(b0, "input", &in) && json_object_array_length(in) == 2048);
        CHECK(json_object_object_get_ex(b1, "input", &in) && json_object_array_length(in) == 52);
        CHECK(json_object_object_get_ex(b0, "dimensions", &dims) &&
              json_object_get_int(dims) == cfg.embed_dim);
        CHECK_STR(field_str(b0, "model", NULL), cfg.embed_model);
    }
    json_object_put(r);
    out_clear(&o);
}

static void wrong_dimension_is_retry(void)
{
    fake_reset();
    fake_script("{\"embeddings\":[{\"embed_ignore_dimensions\":true,\"embed_dim\":8},"
                "{\"embed_ignore_dimensions\":true,\"embed_dim\":8},"
                "{\"embed_ignore_dimensions\":true,\"embed_dim\":8}]}");
    const char *texts[] = {"one", "two"};
    struct out o = {0};
    CHECK(embed(texts, 2, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_RETRY);
    CHECK(o.error && strstr(o.error, "dimensions"));
    CHECK(count_requests("embeddings") == 3);
    out_clear(&o);
}

static void overlong_input_is_cut_at_a_word(void)
{
    fake_reset();
    size_t n = 40000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = i % 10 == 9 ? ' ' : 'a' + (char)(i % 26);
    big[n] = '\0';
    const char *texts[] = {big, ""};
    struct out o = {0};
    CHECK(embed(texts, 2, &o) != NULL);
    CHECK(wait_out(&o));
    CHECK(o.outcome == PROV_OK && o.n == 2);
    struct json_object *r = fake_requests("embeddings"), *body, *in;
    CHECK(r && json_object_array_length(r) == 1);
    if (r && json_object_array_length(r) == 1 &&
        json_object_object_get_ex(json_object_array_get_idx(r, 0), "body", &body) &&
        json_object_object_get_ex(body, "input", &in)) {
        const char *s = json_object_get_string(json_object_array_get_idx(in, 0));
        size_t len = strlen(s);
        CHECK(len <= 8191 * 4 && len > 8000 * 4);
        CHECK(big[len] == ' ' && strncmp(s, big, len) == 0);
    }
    json_object_put(r);
    out_clear(&o);
    free(big);
}

static void no_texts_answers_from_the_loop(void)
{
    struct out o = {0};
    CHECK(embed(NULL, 0, &o) != NULL);
    CHECK(o.calls == 0);
    CHECK(wait_out(&o));
    CHECK(o.calls == 1 && o.outcome == PROV_OK && o.n == 0);
    out_clear(&o);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(dir)) {
        printf("FAIL openai_setup: mkdtemp\n");
        return 1;
    }
    app.base = event_base_new();
    app.fetch = app.base ? fetch_new(app.base) : NULL;
    if (!app.fetch || fake_start() < 0) {
        printf("FAIL openai_setup: cannot start tests/fakes/fake_openai.py\n");
        return 1;
    }
    char url[160], err[256];
    snprintf(url, sizeof url, "%s/v1", fake_root);
    setenv("OPENAI_BASE_URL", url, 1);
    setenv("OPENAI_API_KEY", "sk-test", 1);
    setenv("REELD_DATA_DIR", dir, 1);
    setenv("REELD_EMBED_DIM", "64", 1);
    unsetenv("REELD_LLM_CONTEXT_TOKENS");
    if (config_load(err, sizeof err) < 0) {
        printf("FAIL openai_setup: %s\n", err);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "%s/tmp", dir);

    TEST(transcribes_short_audio_with_words_in_ms);
    TEST(long_audio_is_split_and_stitched_with_offsets);
    TEST(accepted_audio_is_sent_as_it_is);
    TEST(refused_as_it_is_then_extracted);
    TEST(large_or_unknown_media_is_extracted);
    TEST(media_without_audio_fails);
    TEST(cancel_during_ffmpeg_leaves_nothing);
    TEST(transcription_429s_end_in_retry_with_retry_after);
    TEST(cancel_during_upload_leaves_nothing);
    TEST(writes_a_document);
    TEST(short_answer_for_long_transcript_is_flagged);
    TEST(long_transcript_is_mapped_then_reduced);
    TEST(falls_back_after_primary_keeps_failing);
    TEST(insufficient_quota_fails_at_once);
    TEST(rate_limit_is_retried_after_retry_after);
    TEST(long_retry_after_is_left_to_the_queue);
    TEST(garbage_is_retried_then_retry);
    TEST(other_4xx_fails);
    TEST(cancel_mid_request_closes_the_connection);
    TEST(call_time_limit_gives_retry);
    TEST(embeds_in_batches_in_order);
    TEST(wrong_dimension_is_retry);
    TEST(overlong_input_is_cut_at_a_word);
    TEST(no_texts_answers_from_the_loop);

    fetch_free(app.fetch);
    proc_shutdown();
    event_base_free(app.base);
    kill(fake_pid, SIGTERM);
    waitpid(fake_pid, NULL, 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    config_free();
    T_EXIT();
}
