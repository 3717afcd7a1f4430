/* The local providers (REELD_TRANSCRIBER / REELD_LLM / REELD_EMBEDDER =
 * local, the no-key defaults):
 * - transcription: ffmpeg decodes the media's audio to 16 kHz mono PCM and
 *   pipes it into `reeld asr` (pocketsphinx, include/reeld/asr.h), both in
 *   one child process group run through the loop (proc.h), so a timeout
 *   or a cancel kills both;
 * - document: the extractive generator (docgen.h), no model;
 * - embedding: hashed lexical features (embed_local.h).
 * The last two are pure and linear in their input; they run on a later
 * loop turn so that their callback never runs inside start. */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/config.h"
#include "reeld/docgen.h"
#include "reeld/embed_local.h"
#include "reeld/proc.h"
#include "reeld/provider.h"

/* ---- transcription ---------------------------------------------------------- */

/* $1 = media file, $2 = the reeld binary. pipefail: a decoding failure is
 * not mistaken for silence. */
#define LOCAL_ASR_SCRIPT                                                                           \
    "set -o pipefail; ffmpeg -nostdin -hide_banner -v error -i \"$1\" -vn -sn -dn -ac 1"           \
    " -ar 16000 -f s16le - | \"$2\" asr"

/* Words JSON of hours of speech stays far below this. */
#define LOCAL_ASR_MAX_OUT (64 << 20)

struct asr_call {
    struct prov_call base;
    struct proc *p;
    prov_transcript_cb cb;
    void *arg;
};

static void asr_cancel(struct prov_call *c)
{
    struct asr_call *a = (struct asr_call *)c;
    proc_cancel(a->p);
    free(a);
}

static void asr_report(struct asr_call *a, enum prov_outcome o, const char *error,
                       const struct prov_transcript *t)
{
    struct prov_status st = {o, error, -1};
    a->cb(a->arg, &st, t);
}

/* Validates the child's JSON (asr.h) and hands it on. */
static void asr_parsed(struct asr_call *a, const char *out)
{
    struct json_object *o = json_tokener_parse(out);
    struct json_object *text, *words, *lang;
    if (!o || !json_object_object_get_ex(o, "text", &text) ||
        !json_object_is_type(text, json_type_string) ||
        !json_object_object_get_ex(o, "words", &words) ||
        !json_object_is_type(words, json_type_array)) {
        asr_report(a, PROV_RETRY, "the recognizer's output is not the expected JSON", NULL);
        json_object_put(o);
        return;
    }
    struct prov_transcript t = {
        .text = json_object_get_string(text),
        .language =
            json_object_object_get_ex(o, "language", &lang) ? json_object_get_string(lang) : NULL,
        .words = words,
    };
    asr_report(a, PROV_OK, NULL, &t);
    json_object_put(o);
}

static void asr_done(void *arg, const struct proc_result *res)
{
    struct asr_call *a = arg;
    if (res->error && !res->timed_out) {
        asr_report(a, PROV_RETRY, res->error, NULL);
    } else if (res->timed_out) {
        asr_report(a, PROV_RETRY, "transcription timed out", NULL);
    } else if (!res->exited) {
        asr_report(a, PROV_RETRY, "the recognizer was killed", NULL);
    } else if (res->status != 0) {
        /* ffmpeg or the recognizer refused the input: the same input
         * fails the same way, so no retry. Media without an audio
         * stream has no speech: an empty transcript, not an error. */
        if (strstr(res->err, "does not contain any stream") ||
            strstr(res->err, "Output file #0 does not contain")) {
            struct json_object *w = json_object_new_array();
            struct prov_transcript t = {.text = "", .language = NULL, .words = w};
            asr_report(a, PROV_OK, NULL, &t);
            json_object_put(w);
        } else {
            char msg[600];
            size_t n = strlen(res->err);
            while (n && (res->err[n - 1] == '\n' || res->err[n - 1] == ' '))
                n--;
            const char *tail = res->err;
            if (n > 400) tail += n - 400, n = 400;
            snprintf(msg, sizeof msg, "cannot decode the media: %.*s", (int)n, tail);
            asr_report(a, PROV_FAIL, msg, NULL);
        }
    } else {
        asr_parsed(a, res->out);
    }
    free(a);
}

static struct prov_call *asr_start(const struct prov_audio *in, prov_transcript_cb cb, void *arg)
{
    if (!in || !in->path || !cb) return NULL;
    struct asr_call *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->base.cancel = asr_cancel;
    a->cb = cb;
    a->arg = arg;
    const char *argv[] = {"bash",         "-c", LOCAL_ASR_SCRIPT, "reeld-asr", in->path,
                          prov_reeld_exe, NULL};
    /* The recognizer runs at about a quarter of real time on one core:
     * allow the whole length, plus the configured limit. */
    long long limit = (long long)cfg.provider_timeout_s * 1000;
    if (in->duration_ms > 0) limit += in->duration_ms;
    if (limit > 24LL * 3600 * 1000) limit = 24LL * 3600 * 1000;
    struct proc_opts o = {.argv = argv, .max_out = LOCAL_ASR_MAX_OUT, .timeout_ms = (int)limit};
    a->p = proc_start(app.base, &o, asr_done, a);
    if (!a->p) {
        free(a);
        return NULL;
    }
    return &a->base;
}

const struct prov_transcriber prov_local_transcriber = {"local", 2, asr_start};

/* ---- deferred pure work ------------------------------------------------------ */

/* The document and embedding calls compute on the next loop turn. */
struct later {
    struct prov_call base;
    struct event *ev;
    void (*work)(struct later *l);
    void (*drop)(struct later *l); /* frees the call's own inputs */
};

static void later_cancel(struct prov_call *c)
{
    struct later *l = (struct later *)c;
    event_free(l->ev);
    l->drop(l);
}

static void later_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct later *l = arg;
    event_free(l->ev);
    l->work(l);
    l->drop(l);
}

static int later_arm(struct later *l)
{
    l->base.cancel = later_cancel;
    l->ev = event_new(app.base, -1, 0, later_fire, l);
    if (!l->ev) return -1;
    event_active(l->ev, 0, 0);
    return 0;
}

/* ---- document --------------------------------------------------------------- */

struct doc_call {
    struct later l; /* first */
    char *text;
    size_t len;
    struct docgen_word *words;
    char *wordbuf;
    size_t nwords;
    prov_document_cb cb;
    void *arg;
};

static void doc_drop(struct later *l)
{
    struct doc_call *d = (struct doc_call *)l;
    free(d->text);
    free(d->words);
    free(d->wordbuf);
    free(d);
}

static void doc_work(struct later *l)
{
    struct doc_call *d = (struct doc_call *)l;
    struct docgen_result r;
    if (docgen_local(d->text, d->len, d->words, d->nwords, &r) != 0) {
        struct prov_status st = {PROV_RETRY, "out of memory", -1};
        d->cb(d->arg, &st, NULL);
        return;
    }
    struct prov_status st = {PROV_OK, NULL, -1};
    struct prov_document doc = {
        .markdown = r.markdown,
        .summary = r.summary,
        .model = "local-extractive",
        .prompt_tokens = -1,
        .completion_tokens = -1,
        .flagged_short = 0,
    };
    d->cb(d->arg, &st, &doc);
    docgen_result_free(&r);
}

static struct prov_call *doc_start(const struct prov_doc_in *in, prov_document_cb cb, void *arg)
{
    if (!in || !cb || (!in->transcript && in->len)) return NULL;
    struct doc_call *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->l.work = doc_work;
    d->l.drop = doc_drop;
    d->cb = cb;
    d->arg = arg;
    d->len = in->len;
    d->text = malloc(in->len + 1);
    if (d->text) {
        if (in->len) memcpy(d->text, in->transcript, in->len);
        d->text[in->len] = '\0';
    }
    /* the words are copied into one buffer of their texts */
    size_t total = 0;
    for (size_t i = 0; in->words && i < in->nwords; i++)
        total += (in->words[i].w ? strlen(in->words[i].w) : 0) + 1;
    if (in->words && in->nwords) {
        d->words = calloc(in->nwords, sizeof *d->words);
        d->wordbuf = malloc(total ? total : 1);
        if (d->words && d->wordbuf) {
            char *p = d->wordbuf;
            for (size_t i = 0; i < in->nwords; i++) {
                size_t n = in->words[i].w ? strlen(in->words[i].w) : 0;
                memcpy(p, in->words[i].w ? in->words[i].w : "", n);
                p[n] = '\0';
                d->words[i].w = p;
                d->words[i].start_ms = in->words[i].start_ms;
                d->words[i].end_ms = in->words[i].end_ms;
                p += n + 1;
            }
            d->nwords = in->nwords;
        }
    }
    if (!d->text || (in->words && in->nwords && (!d->words || !d->wordbuf)) ||
        later_arm(&d->l) != 0) {
        doc_drop(&d->l);
        return NULL;
    }
    return &d->l.base;
}

const struct prov_writer prov_local_writer = {"local", 4, doc_start};

/* ---- embeddings ------------------------------------------------------------- */

struct emb_call {
    struct later l; /* first */
    char **texts;
    size_t n;
    prov_embed_cb cb;
    void *arg;
};

static void emb_drop(struct later *l)
{
    struct emb_call *e = (struct emb_call *)l;
    for (size_t i = 0; e->texts && i < e->n; i++)
        free(e->texts[i]);
    free(e->texts);
    free(e);
}

static void emb_work(struct later *l)
{
    struct emb_call *e = (struct emb_call *)l;
    size_t dim = (size_t)cfg.embed_dim;
    float *v = e->n ? malloc(e->n * dim * sizeof *v) : NULL;
    if (e->n && !v) {
        struct prov_status st = {PROV_RETRY, "out of memory", -1};
        e->cb(e->arg, &st, NULL, 0, NULL);
        return;
    }
    for (size_t i = 0; i < e->n; i++) {
        if (embed_local(e->texts[i], strlen(e->texts[i]), v + i * dim, dim) < 0) {
            struct prov_status st = {PROV_RETRY, "out of memory", -1};
            e->cb(e->arg, &st, NULL, 0, NULL);
            free(v);
            return;
        }
    }
    struct prov_status st = {PROV_OK, NULL, -1};
    e->cb(e->arg, &st, v, e->n, "local-hashed");
    free(v);
}

static struct prov_call *emb_start(const char *const *texts, size_t n, prov_embed_cb cb, void *arg)
{
    if (!cb || (n && !texts)) return NULL;
    struct emb_call *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->l.work = emb_work;
    e->l.drop = emb_drop;
    e->cb = cb;
    e->arg = arg;
    e->texts = calloc(n ? n : 1, sizeof *e->texts);
    int bad = !e->texts;
    for (size_t i = 0; !bad && i < n; i++) {
        e->texts[i] = strdup(texts[i] ? texts[i] : "");
        if (!e->texts[i]) bad = 1;
        e->n = i + 1;
    }
    if (bad || later_arm(&e->l) != 0) {
        emb_drop(&e->l);
        return NULL;
    }
    return &e->l.base;
}

const struct prov_embedder prov_local_embedder = {"local", 4, emb_start};
