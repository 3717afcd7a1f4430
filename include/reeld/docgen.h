/* Local document generator: the no-model "LLM" of REELD_LLM=local (SPEC 8,
 * stage 2). Turns a transcript into a Markdown document with a title, a
 * summary, key points and sections cut at topic shifts, by extraction only.
 *
 * Method, all deterministic (the same input always gives byte-identical
 * output) and linear in the transcript size:
 * - Tokens are the timed words when given, else the transcript split on
 *   whitespace. Sentences end at '.', '?', '!' or U+2026, and at pauses of
 *   more than DOCGEN_PAUSE_MS between timed words. A sentence longer than
 *   DOCGEN_MAX_SENT words (unpunctuated speech, e.g. pocketsphinx output) is
 *   cut into pseudo-sentences of about 20 words, at the longest pause when
 *   the words are timed.
 * - Terms: words lowercased and trimmed of punctuation, minus a built-in
 *   English stopword list; weighted by tf-idf over sentences.
 * - Title: the 2-4 strongest terms, in order of first appearance,
 *   capitalized; "Recording" when there is none.
 * - Summary: the 1-3 sentences closest to the transcript's centroid, in
 *   original order, at most DOCGEN_SUMMARY_MAX bytes.
 * - Key points: up to 7 high-scoring sentences, near-duplicates dropped.
 * - Sections: TextTiling (cosine similarity of adjacent blocks of sentences,
 *   cut at the deepest valleys), each headed by its top terms and the start
 *   time of its first word when words are timed, e.g. "## Pasta, Sauce
 *   (02:15)". Section text is the section's sentences, lightly cleaned;
 *   for long transcripts only each section's best sentences are kept so the
 *   document stays small (about 5 % of the input plus a constant).
 * - The transcript is untrusted: all text placed in the Markdown is escaped
 *   so that no HTML or Markdown markup from it is ever rendered.
 *
 * Pure and loop-safe: no I/O, no global state. */
#ifndef REELD_DOCGEN_H
#define REELD_DOCGEN_H

#include <stddef.h>
#include <stdint.h>

#define DOCGEN_PAUSE_MS 1500
#define DOCGEN_MAX_SENT 40
#define DOCGEN_SUMMARY_MAX 400

/* One timed word (the same shape as SPEC 8 {w, start_ms, end_ms}). Only
 * read; w is a NUL-terminated UTF-8 string or NULL (skipped). */
struct docgen_word {
    const char *w;
    int64_t start_ms;
    int64_t end_ms;
};

/* The generated document. All three strings are malloc'd, NUL-terminated
 * and owned by the caller, who releases them with docgen_result_free.
 * markdown is the whole document (escaped, safe to render); title and
 * summary are plain text (not Markdown-escaped: escape them for wherever
 * they are displayed). summary is "" when there was no speech. */
struct docgen_result {
    char *markdown;
    char *title;
    char *summary;
};

/* Generates the document of a transcript. transcript[0..len) is UTF-8 (it
 * may be NULL when len is 0); words[0..nwords), when words is non-NULL and
 * nwords > 0, replaces the transcript text as the source of tokens and
 * gives sections their timestamps. An empty or blank input yields a short
 * document saying no speech was detected, title "Recording", summary "".
 * Returns 0 with *out filled, or -1 on allocation failure or a NULL out
 * (then *out, if out is non-NULL, holds three NULLs). */
int docgen_local(const char *transcript, size_t len, const struct docgen_word *words, size_t nwords,
                 struct docgen_result *out);

/* Frees the strings of a result and sets them to NULL (NULL r is fine). */
void docgen_result_free(struct docgen_result *r);

#endif
