/* Transcript chunker; the rules are in include/reeld/chunker.h. */
#include "reeld/chunker.h"

#include <stdlib.h>
#include <string.h>

/* A kept word: its index in the caller's array and its trimmed text. */
struct kword {
    size_t src;
    const char *s;
    size_t len;
    int sentence_end;
};

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Whether a trimmed word closes a sentence: its last character, after
 * closing quotes and brackets, is . ? ! or an ellipsis. */
static int sentence_end(const char *s, size_t len)
{
    for (;;) {
        if (len > 0 && strchr("\"')]}", s[len - 1]) && s[len - 1] != '\0')
            len--;
        else if (ends_with(s, len, "\xE2\x80\x9D") || ends_with(s, len, "\xE2\x80\x99"))
            len -= 3; /* U+201D, U+2019 */
        else
            break;
    }
    if (len == 0) return 0;
    char c = s[len - 1];
    return c == '.' || c == '?' || c == '!' || ends_with(s, len, "\xE2\x80\xA6");
}

/* The kept words of words[0..n) into a new array (*m of them). */
static int keep_words(const struct chunker_word *words, size_t n, struct kword **out, size_t *m)
{
    *out = NULL;
    *m = 0;
    if (n == 0) return 0;
    struct kword *k = malloc(n * sizeof *k);
    if (!k) return -1;
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = words[i].w;
        if (!s) continue;
        size_t len = strlen(s);
        while (len > 0 && is_space((unsigned char)*s)) {
            s++;
            len--;
        }
        while (len > 0 && is_space((unsigned char)s[len - 1]))
            len--;
        if (len == 0) continue;
        k[cnt++] = (struct kword){i, s, len, sentence_end(s, len)};
    }
    *out = k;
    *m = cnt;
    return 0;
}

/* A cut position c in [lo, hi] (the chunk ends before kept word c) near
 * nominal: the nearest c whose previous word ends a sentence within
 * CHUNKER_SLACK, the later one on a tie; else nominal clamped. */
static size_t pick_cut(const struct kword *k, size_t nominal, size_t lo, size_t hi)
{
    for (size_t d = 0; d <= CHUNKER_SLACK; d++) {
        size_t c = nominal + d;
        if (c >= lo && c <= hi && c > 0 && k[c - 1].sentence_end) return c;
        if (d <= nominal) {
            c = nominal - d;
            if (c >= lo && c <= hi && c > 0 && k[c - 1].sentence_end) return c;
        }
    }
    if (nominal < lo) return lo;
    if (nominal > hi) return hi;
    return nominal;
}

/* Appends the chunk of kept words [a, b) to *arr. */
static int emit(struct chunker_chunk **arr, size_t *n, size_t *cap, const struct kword *k,
                const struct chunker_word *words, size_t a, size_t b)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        struct chunker_chunk *na = realloc(*arr, nc * sizeof *na);
        if (!na) return -1;
        *arr = na;
        *cap = nc;
    }
    size_t len = b - a - 1; /* separators */
    for (size_t i = a; i < b; i++)
        len += k[i].len;
    char *text = malloc(len + 1);
    if (!text) return -1;
    char *p = text;
    for (size_t i = a; i < b; i++) {
        if (i > a) *p++ = ' ';
        memcpy(p, k[i].s, k[i].len);
        p += k[i].len;
    }
    *p = '\0';
    struct chunker_chunk *c = &(*arr)[*n];
    c->idx = (int)*n;
    c->text = text;
    c->len = len;
    c->word_first = k[a].src;
    c->word_last = k[b - 1].src;
    c->nwords = b - a;
    c->start_ms = words[c->word_first].start_ms;
    c->end_ms = words[c->word_last].end_ms;
    if (c->end_ms < c->start_ms) c->end_ms = c->start_ms;
    (*n)++;
    return 0;
}

int chunker_split(const struct chunker_word *words, size_t n, struct chunker_chunk **out,
                  size_t *nout)
{
    if (!out || !nout) return -1;
    *out = NULL;
    *nout = 0;
    if (!words && n > 0) return -1;

    struct kword *k;
    size_t m;
    if (keep_words(words, n, &k, &m) < 0) return -1;

    struct chunker_chunk *arr = NULL;
    size_t cnt = 0, cap = 0, start = 0;
    int rc = 0;
    while (m > 0) {
        if (m - start <= CHUNKER_WORDS) {
            rc = emit(&arr, &cnt, &cap, k, words, start, m);
            break;
        }
        size_t end = pick_cut(k, start + CHUNKER_WORDS, start + 1, m);
        if (m - end < CHUNKER_MIN_TAIL) {
            rc = emit(&arr, &cnt, &cap, k, words, start, m);
            break;
        }
        if ((rc = emit(&arr, &cnt, &cap, k, words, start, end)) < 0) break;
        /* the next window starts inside this one: at least one word of
         * overlap, and strictly after this window's start (progress) */
        start = pick_cut(k, end - (CHUNKER_WORDS - CHUNKER_STRIDE), start + 1, end - 1);
    }
    free(k);
    if (rc < 0) {
        chunker_free(arr, cnt);
        return -1;
    }
    *out = arr;
    *nout = cnt;
    return 0;
}

void chunker_free(struct chunker_chunk *chunks, size_t n)
{
    if (!chunks) return;
    for (size_t i = 0; i < n; i++)
        free(chunks[i].text);
    free(chunks);
}
