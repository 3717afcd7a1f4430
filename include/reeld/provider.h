/* Providers: what turns stored media into a transcript, a transcript into a
 * document, and texts into vectors (SPEC 8). The pipeline's stages call
 * them through the three tables below and never know which provider runs;
 * REELD_TRANSCRIBER, REELD_LLM and REELD_EMBEDDER pick one of each at
 * start-up (prov_init).
 *
 * One shape fits both kinds of provider:
 * - synchronous ones (local, OpenAI-compatible) answer the call itself:
 *   the callback gets PROV_OK with the result, or an error outcome;
 * - submit-then-callback ones (AssemblyAI, Deepgram) answer
 *   PROV_SUBMITTED with the provider's job id once the work is accepted;
 *   the result arrives later on the transcription webhook, which hands
 *   it to the pipeline (pipeline.h) like a synchronous result. A call
 *   started again with that id (a resumed job) checks on the submission
 *   instead of submitting twice.
 *
 * Errors are classified by the provider, which knows its wire: PROV_RETRY
 * (the job is retried later with backoff, at least retry_after_ms when the
 * provider asked for it: timeouts, 408, 409, 429, 5xx, garbage), PROV_FAIL
 * (permanent: a 4xx that will not change, `insufficient_quota`, media
 * without an audio track). A provider may retry briefly inside one call
 * (seconds), never for longer than the call's own time limit.
 *
 * Calls and callbacks: start returns a handle, or NULL when it could not
 * start (then the callback never runs). The callback runs exactly once,
 * from the loop, never inside start, unless prov_cancel ran first; then
 * never. Every pointer passed to a callback is valid only during it. The
 * handle is gone once the callback returns or prov_cancel returns. */
#ifndef REELD_PROVIDER_H
#define REELD_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

struct json_object;

enum prov_outcome {
    PROV_OK,
    PROV_SUBMITTED, /* transcription only: the result comes by webhook */
    PROV_RETRY,
    PROV_FAIL,
};

struct prov_status {
    enum prov_outcome outcome;
    const char *error;        /* why (PROV_RETRY, PROV_FAIL), for logs and the API */
    long long retry_after_ms; /* PROV_RETRY: the provider's Retry-After, or -1 */
};

/* Every provider's call handle starts with this. */
struct prov_call {
    void (*cancel)(struct prov_call *c); /* drop the work, free the handle */
    void (*resume)(struct prov_call *c); /* chat calls only (prov_chat_resume) */
};

/* Cancels a call: its requests and children go, no callback runs. NULL is
 * fine. Not from inside the call's own callback. */
void prov_cancel(struct prov_call *c);

/* ---- transcription -------------------------------------------------------- */

struct prov_audio {
    const char *recording_id, *org_id;
    const char *path;            /* the stored media file (local storage) */
    const char *content_type;    /* as uploaded, may be NULL */
    const char *media_url;       /* signed absolute URL of the media, for remote fetchers */
    const char *provider_job_id; /* an earlier submission of this job, or NULL */
    int64_t duration_ms;         /* -1 when unknown */
};

struct prov_transcript {
    const char *text;
    const char *language;        /* may be NULL */
    struct json_object *words;   /* array of {w, start_ms, end_ms}, monotonic */
    const char *provider_job_id; /* PROV_SUBMITTED: the provider's id; else may be NULL */
};

typedef void (*prov_transcript_cb)(void *arg, const struct prov_status *st,
                                   const struct prov_transcript *t);

struct prov_transcriber {
    const char *name; /* stored in transcripts.provider */
    int concurrency;  /* jobs of this provider at once in one process */
    struct prov_call *(*start)(const struct prov_audio *in, prov_transcript_cb cb, void *arg);
};

/* ---- document ------------------------------------------------------------- */

struct prov_doc_word {
    const char *w;
    int64_t start_ms, end_ms;
};

struct prov_doc_in {
    const char *recording_id;
    const char *title;      /* the recording's title, a hint */
    const char *transcript; /* UTF-8 text */
    size_t len;
    const struct prov_doc_word *words; /* may be NULL */
    size_t nwords;
    const char *model; /* requested by /document/regenerate, or NULL */
};

struct prov_document {
    const char *markdown;
    const char *summary;
    const char *model;                    /* what actually wrote it (the fallback, if used) */
    int prompt_tokens, completion_tokens; /* -1 when unknown */
    int flagged_short;                    /* suspiciously short for its transcript */
};

typedef void (*prov_document_cb)(void *arg, const struct prov_status *st,
                                 const struct prov_document *d);

struct prov_writer {
    const char *name;
    int concurrency;
    struct prov_call *(*start)(const struct prov_doc_in *in, prov_document_cb cb, void *arg);
};

/* ---- embeddings ----------------------------------------------------------- */

/* vectors: n rows of cfg.embed_dim floats, row i for texts[i]. */
typedef void (*prov_embed_cb)(void *arg, const struct prov_status *st, const float *vectors,
                              size_t n, const char *model);

struct prov_embedder {
    const char *name;
    int concurrency; /* every vector has cfg.embed_dim (REELD_EMBED_DIM) floats */
    /* texts[0..n) are copied before start returns. */
    struct prov_call *(*start)(const char *const *texts, size_t n, prov_embed_cb cb, void *arg);
};

/* ---- chat (the assistant's streamed answers, SPEC 9) ---------------------- */

struct prov_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
};

/* A numbered source of the prompt (sources[i] is [i + 1]). The prompt in
 * messages already holds them; a provider without a model (local) answers
 * from these instead. */
struct prov_chat_source {
    const char *title;
    const char *text;
    int64_t start_ms;
    float score;
};

struct prov_chat_in {
    const struct prov_chat_msg *messages; /* system first, the question last */
    size_t nmessages;
    const struct prov_chat_source *sources;
    size_t nsources;
    const char *query; /* the question, as asked */
    const char *model; /* NULL: REELD_LLM_MODEL */
    int max_tokens;    /* <= 0: the provider's default */
};

struct prov_chat_usage {
    int prompt_tokens, completion_tokens; /* -1 when unknown */
};

/* Each piece of the answer, in order (UTF-8; a piece may be cut inside a
 * character only if the upstream cut it so; the concatenation is the
 * answer). Return 0 to go on, or 1 to pause: no more pieces come (and the
 * provider reads nothing more from upstream, so the transfer stalls in TCP
 * instead of in memory) until prov_chat_resume. The callback may call
 * prov_cancel on its own call (then return 1). */
typedef int (*prov_chat_piece_cb)(void *arg, const char *text, size_t len);

/* Once, at the end: PROV_OK when the whole answer came (usage and the
 * model that answered); else PROV_RETRY / PROV_FAIL with error. pieces is
 * how many pieces were delivered before the end: a failure before any
 * piece may be answered as "unavailable", one after it only as an error
 * at the end of the stream. Failures before the first piece are retried
 * inside the call (408, 409, 429 with Retry-After, 5xx, transport errors,
 * timeouts) a few times within the call's time limit; after the first
 * piece nothing is retried. */
typedef void (*prov_chat_done_cb)(void *arg, const struct prov_status *st,
                                  const struct prov_chat_usage *usage, const char *model,
                                  size_t pieces);

struct prov_chatter {
    const char *name;
    struct prov_call *(*start)(const struct prov_chat_in *in, prov_chat_piece_cb on_piece,
                               prov_chat_done_cb done, void *arg);
};

/* Undoes a pause (the piece callback returned 1); pieces continue from the
 * loop, never inside this call. */
void prov_chat_resume(struct prov_call *c);

/* ---- selection ------------------------------------------------------------ */

/* The providers chosen by the configuration (cfg), set by prov_init. */
struct providers {
    const struct prov_transcriber *transcriber;
    const struct prov_writer *writer;
    const struct prov_embedder *embedder;
    const struct prov_chatter *chatter; /* by REELD_LLM */
};
extern struct providers prov;

/* Picks the providers from cfg. Needs app.base and app.fetch to be set
 * before a call starts, not before this. Returns 0, or -1 with one line in
 * err (a provider that is not built, or one that needs a key it lacks). */
int prov_init(char *err, size_t errlen);

/* The providers themselves (src/providers/). */
extern const struct prov_transcriber prov_local_transcriber, prov_openai_transcriber;
extern const struct prov_writer prov_local_writer, prov_openai_writer;
extern const struct prov_embedder prov_local_embedder, prov_openai_embedder;
extern const struct prov_chatter prov_local_chatter, prov_openai_chatter;

/* Path of the reeld binary, for the local transcriber's `reeld asr` child
 * (set by main from /proc/self/exe; tests may point it elsewhere). */
extern char prov_reeld_exe[4096];

#endif
