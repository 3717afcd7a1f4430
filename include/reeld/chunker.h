/* Transcript chunker: cuts a transcript's timed words into overlapping
 * windows of about CHUNKER_WORDS words, the units that are embedded and
 * searched (SPEC 8, transcript_chunks).
 *
 * Rules, all deterministic (the same words always give the same chunks):
 * - Words whose text is NULL, empty or only ASCII whitespace are skipped;
 *   the others are trimmed of leading and trailing ASCII whitespace (some
 *   providers send " word") and joined with single spaces.
 * - Windows target CHUNKER_WORDS words; each next window starts about
 *   CHUNKER_WORDS - CHUNKER_STRIDE words before the previous one ended
 *   (~25 % overlap).
 * - A cut (the end of a window, and the start of the next) moves to a
 *   sentence boundary when one lies within CHUNKER_SLACK words of the
 *   nominal position: the nearest one, the later one on a tie. A word ends
 *   a sentence when its last character, ignoring closing quotes and
 *   brackets, is '.', '?', '!' or U+2026 (…).
 * - No tiny tail: when fewer than CHUNKER_MIN_TAIL words would follow a
 *   window, that window is extended to the end instead. A transcript of at
 *   most CHUNKER_WORDS kept words is one chunk.
 * - start_ms is the first word's start_ms, end_ms the last word's end_ms
 *   (raised to start_ms if a provider gave a smaller value).
 *
 * Pure and loop-safe: no I/O, work linear in the input size. */
#ifndef REELD_CHUNKER_H
#define REELD_CHUNKER_H

#include <stddef.h>
#include <stdint.h>

#define CHUNKER_WORDS 200
#define CHUNKER_STRIDE 150
#define CHUNKER_SLACK 20
#define CHUNKER_MIN_TAIL 50

/* One timed word of a transcript (SPEC 8: {w, start_ms, end_ms}). The
 * chunker only reads it; w is a NUL-terminated UTF-8 string or NULL. */
struct chunker_word {
    const char *w;
    int64_t start_ms;
    int64_t end_ms;
};

/* One chunk. text is owned by the array that chunker_split returned and is
 * freed by chunker_free. word_first and word_last are indices into the
 * caller's words array (inclusive; both are kept words); nwords counts the
 * kept words of the chunk. */
struct chunker_chunk {
    int idx; /* 0, 1, 2, ... in order */
    char *text;
    size_t len; /* strlen(text) */
    int64_t start_ms;
    int64_t end_ms;
    size_t word_first;
    size_t word_last;
    size_t nwords;
};

/* Splits words[0..n) into chunks. On success returns 0 with *out a new
 * array of *nout chunks (NULL and 0 when no word has text), which the
 * caller frees with chunker_free. Returns -1 (with *out NULL, *nout 0) when
 * words is NULL while n > 0, an argument pointer is NULL, or memory runs
 * out. */
int chunker_split(const struct chunker_word *words, size_t n, struct chunker_chunk **out,
                  size_t *nout);

/* Frees an array returned by chunker_split (NULL is fine). */
void chunker_free(struct chunker_chunk *chunks, size_t n);

#endif
