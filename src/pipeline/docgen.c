/* Local extractive document generator; the contract is in docgen.h. */
#include "reeld/docgen.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TERM_MAX 48       /* longer tokens are not terms (URLs, noise) */
#define PSEUDO_LEN 20     /* target pseudo-sentence length */
#define PSEUDO_SLACK 5    /* a pseudo cut may move this far for a pause */
#define BLOCK_WORDS 60    /* TextTiling block size, in words */
#define SEC_MIN_WORDS 60  /* no section shorter than this */
#define SEC_MAX_WORDS 400 /* a longer section gets a forced cut */
#define SEC_PER_WORDS 120 /* at most one section per this many words */
#define SEC_MAX 50
#define KEYPOINTS_MAX 7
#define EMIT_SENT_MAX 400 /* one sentence in the output, in bytes */
#define BODY_BASE 2000    /* section text budget: base + input / 20 */

struct tok {
    const char *s;
    size_t n;
    int64_t t0, t1; /* read only when c->timed */
    int term;       /* content term id, or -1 */
};

struct sent {
    size_t first, count; /* tokens */
    size_t vo, vn;       /* sparse tf-idf vector in vid[]/vw[] */
    double norm, score;
};

struct term {
    size_t key, klen; /* normalized form in normbuf */
    size_t tf, df, first;
    size_t last_sent; /* for df counting: sentence index + 1 */
    bool stop;
    double idf;
};

struct ctx {
    struct tok *tok;
    size_t ntok, textbytes;
    bool timed;
    struct sent *sent;
    size_t nsent;
    struct term *term;
    size_t nterm;
    char *normbuf;
    size_t normlen;
    int *htab;
    size_t hcap;
    int *vid; /* sentence vectors, sorted by term id */
    double *vw;
    double *dense, *dense2; /* nterm scratch, kept all-zero between uses */
    int *touched;
    size_t ntouched;
};

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static const char *const stopwords[] = {
    "a",       "about",     "above",  "actually", "after",   "again",     "against", "all",
    "also",    "am",        "an",     "and",      "any",     "are",       "around",  "as",
    "at",      "basically", "be",     "because",  "been",    "before",    "being",   "below",
    "between", "both",      "but",    "by",       "can",     "could",     "did",     "do",
    "does",    "doing",     "don't",  "done",     "down",    "during",    "each",    "even",
    "every",   "few",       "first",  "for",      "from",    "further",   "get",     "gets",
    "getting", "go",        "goes",   "going",    "gonna",   "good",      "got",     "had",
    "has",     "have",      "having", "he",       "her",     "here",      "hers",    "him",
    "his",     "how",       "i",      "i'm",      "if",      "in",        "into",    "is",
    "it",      "it's",      "its",    "just",     "kind",    "know",      "like",    "lot",
    "make",    "many",      "may",    "maybe",    "me",      "might",     "more",    "most",
    "much",    "must",      "my",     "need",     "new",     "no",        "nor",     "not",
    "now",     "of",        "off",    "okay",     "on",      "once",      "one",     "only",
    "or",      "other",     "our",    "ours",     "out",     "over",      "own",     "people",
    "pretty",  "put",       "quite",  "really",   "right",   "same",      "say",     "says",
    "see",     "she",       "should", "so",       "some",    "something", "sort",    "still",
    "such",    "sure",      "take",   "than",     "that",    "that's",    "the",     "their",
    "theirs",  "them",      "then",   "there",    "there's", "these",     "they",    "thing",
    "things",  "think",     "this",   "those",    "through", "time",      "to",      "too",
    "two",     "uh",        "um",     "under",    "until",   "up",        "us",      "use",
    "used",    "using",     "very",   "want",     "was",     "way",       "we",      "we're",
    "well",    "were",      "what",   "when",     "where",   "which",     "while",   "who",
    "whom",    "why",       "will",   "with",     "would",   "yeah",      "yes",     "yet",
    "you",     "you're",    "your",   "yours",
};

/* ---- output buffer ---- */

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static char *buf_take(struct buf *b)
{
    if (!b->oom && !b->p) buf_add(b, "", 0);
    if (b->oom) {
        free(b->p);
        b->p = NULL;
    }
    return b->p;
}

/* Appends plain text escaped for Markdown and HTML. at_line_start says
 * whether s begins a line, where block markers ('#', '-', '1.') matter. */
static void buf_escaped(struct buf *b, const char *s, size_t n, bool at_line_start)
{
    size_t i = 0;
    if (at_line_start && n > 0) {
        if (s[0] != '\0' && strchr("#-+=", s[0])) {
            buf_add(b, "\\", 1);
        } else if (s[0] >= '0' && s[0] <= '9') {
            size_t j = 0;
            while (j < n && s[j] >= '0' && s[j] <= '9')
                j++;
            if (j < n && (s[j] == '.' || s[j] == ')')) {
                buf_add(b, s, j);
                buf_add(b, "\\", 1);
                i = j;
            }
        }
    }
    for (; i < n; i++) {
        char c = s[i];
        switch (c) {
        case '<':
            buf_str(b, "&lt;");
            break;
        case '>':
            buf_str(b, "&gt;");
            break;
        case '&':
            buf_str(b, "&amp;");
            break;
        case '\\':
        case '*':
        case '_':
        case '`':
        case '[':
        case ']':
        case '|':
        case '~':
            buf_add(b, "\\", 1);
            buf_add(b, &c, 1);
            break;
        default:
            buf_add(b, &c, 1);
        }
    }
}

/* ---- tokens and terms ---- */

static bool is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

static bool is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static bool tok_ends_sentence(const char *s, size_t n)
{
    while (n > 0 && strchr("\"')]}", s[n - 1]) && s[n - 1] != '\0')
        n--;
    if (n >= 3 && (unsigned char)s[n - 3] == 0xe2 && (unsigned char)s[n - 2] == 0x80 &&
        ((unsigned char)s[n - 1] == 0x9d || (unsigned char)s[n - 1] == 0x99))
        n -= 3; /* closing curly quote */
    if (n == 0) return false;
    if (s[n - 1] == '.' || s[n - 1] == '?' || s[n - 1] == '!') return true;
    return n >= 3 && (unsigned char)s[n - 3] == 0xe2 && (unsigned char)s[n - 2] == 0x80 &&
           (unsigned char)s[n - 1] == 0xa6;
}

/* Normalizes a token into dst (TERM_MAX bytes): edges trimmed of
 * non-alphanumerics, ASCII lowercased. Returns the length, or 0 when the
 * token is no term (too long, inner punctuation other than ' and -). */
static size_t normalize(const char *s, size_t n, char *dst)
{
    size_t a = 0, z = n, len = 0;
    bool alpha = false;
    while (a < z && !is_alnum((unsigned char)s[a]))
        a++;
    while (z > a && !is_alnum((unsigned char)s[z - 1]))
        z--;
    if (z - a > TERM_MAX || z == a) return 0;
    for (size_t i = a; i < z; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (!is_alnum(c) && c != '\'' && c != '-') return 0;
        if (!(c >= '0' && c <= '9')) alpha = true;
        dst[len++] = (char)c;
    }
    return alpha ? len : 0;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static bool is_stopword(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof stopwords / sizeof stopwords[0]; i++)
        if (strlen(stopwords[i]) == n && memcmp(stopwords[i], s, n) == 0) return true;
    return false;
}

/* Returns the term id of a normalized form, adding it when new. */
static int term_intern(struct ctx *c, const char *s, size_t n, size_t tokidx)
{
    size_t h = (size_t)hash_bytes(s, n) & (c->hcap - 1);
    for (;;) {
        int id = c->htab[h];
        if (id < 0) break;
        struct term *t = &c->term[id];
        if (t->klen == n && memcmp(c->normbuf + t->key, s, n) == 0) return id;
        h = (h + 1) & (c->hcap - 1);
    }
    struct term *t = &c->term[c->nterm];
    memset(t, 0, sizeof *t);
    t->key = c->normlen;
    t->klen = n;
    t->first = tokidx;
    t->stop = n < 3 || is_stopword(s, n);
    memcpy(c->normbuf + c->normlen, s, n);
    c->normlen += n;
    c->htab[h] = (int)c->nterm;
    return (int)c->nterm++;
}

static void tok_push(struct ctx *c, const char *s, size_t n, int64_t t0, int64_t t1)
{
    struct tok *t = &c->tok[c->ntok++];
    t->s = s;
    t->n = n;
    /* Provider timestamps are untrusted: clamp so differences never
     * overflow. */
    const int64_t hi = INT64_MAX / 4;
    t0 = t0 < 0 ? 0 : t0 > hi ? hi : t0;
    t1 = t1 < t0 ? t0 : t1 > hi ? hi : t1;
    t->t0 = t0;
    t->t1 = t1;
    t->term = -1;
    c->textbytes += n + 1;
}

/* Fills c->tok from the words, or from the transcript. */
static int tokenize(struct ctx *c, const char *text, size_t len, const struct docgen_word *words,
                    size_t nwords)
{
    size_t cap = 0;
    if (words && nwords > 0) {
        cap = nwords;
    } else {
        for (size_t i = 0; i < len; i++)
            if (!is_space((unsigned char)text[i]) &&
                (i == 0 || is_space((unsigned char)text[i - 1])))
                cap++;
    }
    c->tok = calloc(cap ? cap : 1, sizeof *c->tok);
    if (!c->tok) return -1;
    if (words && nwords > 0) {
        c->timed = true;
        for (size_t i = 0; i < nwords; i++) {
            const char *s = words[i].w;
            if (!s) continue;
            size_t n = strlen(s);
            while (n > 0 && is_space((unsigned char)*s)) {
                s++;
                n--;
            }
            while (n > 0 && is_space((unsigned char)s[n - 1]))
                n--;
            if (n > 0) tok_push(c, s, n, words[i].start_ms, words[i].end_ms);
        }
    } else {
        size_t i = 0;
        while (i < len) {
            while (i < len && is_space((unsigned char)text[i]))
                i++;
            size_t a = i;
            while (i < len && !is_space((unsigned char)text[i]))
                i++;
            if (i > a) tok_push(c, text + a, i - a, 0, 0);
        }
    }
    return 0;
}

static int build_terms(struct ctx *c)
{
    c->hcap = 16;
    while (c->hcap < 2 * c->ntok)
        c->hcap *= 2;
    c->htab = malloc(c->hcap * sizeof *c->htab);
    c->term = calloc(c->ntok ? c->ntok : 1, sizeof *c->term);
    c->normbuf = malloc(c->textbytes + 1);
    if (!c->htab || !c->term || !c->normbuf) return -1;
    memset(c->htab, 0xff, c->hcap * sizeof *c->htab);
    char norm[TERM_MAX];
    for (size_t i = 0; i < c->ntok; i++) {
        size_t n = normalize(c->tok[i].s, c->tok[i].n, norm);
        if (n == 0) continue;
        int id = term_intern(c, norm, n, i);
        if (!c->term[id].stop) {
            c->tok[i].term = id;
            c->term[id].tf++;
        }
    }
    return 0;
}

/* ---- sentences ---- */

static int sent_push(struct ctx *c, size_t *cap, size_t first, size_t count)
{
    if (c->nsent == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct sent *p = realloc(c->sent, ncap * sizeof *p);
        if (!p) return -1;
        c->sent = p;
        *cap = ncap;
    }
    struct sent *s = &c->sent[c->nsent++];
    memset(s, 0, sizeof *s);
    s->first = first;
    s->count = count;
    return 0;
}

static int64_t pause_after(const struct ctx *c, size_t i)
{
    if (!c->timed || i + 1 >= c->ntok) return 0;
    return c->tok[i + 1].t0 - c->tok[i].t1;
}

/* Adds tokens [a, b) as one sentence, or as pseudo-sentences of about
 * PSEUDO_LEN tokens when longer than DOCGEN_MAX_SENT. */
static int add_segment(struct ctx *c, size_t *cap, size_t a, size_t b)
{
    while (b - a > DOCGEN_MAX_SENT) {
        size_t cut = a + PSEUDO_LEN;
        int64_t best = pause_after(c, cut - 1);
        for (size_t k = a + PSEUDO_LEN - PSEUDO_SLACK; k <= a + PSEUDO_LEN + PSEUDO_SLACK; k++) {
            int64_t p = pause_after(c, k - 1);
            if (p > best) {
                best = p;
                cut = k;
            }
        }
        if (sent_push(c, cap, a, cut - a) < 0) return -1;
        a = cut;
    }
    return b > a ? sent_push(c, cap, a, b - a) : 0;
}

static int split_sentences(struct ctx *c)
{
    size_t cap = 0, a = 0;
    for (size_t i = 0; i < c->ntok; i++) {
        bool end = i + 1 == c->ntok || tok_ends_sentence(c->tok[i].s, c->tok[i].n) ||
                   pause_after(c, i) > DOCGEN_PAUSE_MS;
        if (end) {
            if (add_segment(c, &cap, a, i + 1) < 0) return -1;
            a = i + 1;
        }
    }
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Computes df, idf and each sentence's sparse tf-idf vector. */
static int build_vectors(struct ctx *c)
{
    size_t total = 0;
    for (size_t s = 0; s < c->nsent; s++)
        total += c->sent[s].count;
    c->vid = malloc((total ? total : 1) * sizeof *c->vid);
    c->vw = malloc((total ? total : 1) * sizeof *c->vw);
    c->dense = calloc(c->nterm ? c->nterm : 1, sizeof *c->dense);
    c->dense2 = calloc(c->nterm ? c->nterm : 1, sizeof *c->dense2);
    c->touched = malloc((c->nterm ? c->nterm : 1) * sizeof *c->touched);
    if (!c->vid || !c->vw || !c->dense || !c->dense2 || !c->touched) return -1;
    size_t off = 0;
    for (size_t s = 0; s < c->nsent; s++) {
        struct sent *st = &c->sent[s];
        st->vo = off;
        for (size_t i = st->first; i < st->first + st->count; i++)
            if (c->tok[i].term >= 0) c->vid[off++] = c->tok[i].term;
        qsort(c->vid + st->vo, off - st->vo, sizeof *c->vid, cmp_int);
        size_t w = st->vo; /* collapse runs into (id, count) */
        for (size_t r = st->vo; r < off;) {
            size_t e = r;
            while (e < off && c->vid[e] == c->vid[r])
                e++;
            c->vid[w] = c->vid[r];
            c->vw[w] = (double)(e - r);
            struct term *t = &c->term[c->vid[r]];
            if (t->last_sent != s + 1) {
                t->last_sent = s + 1;
                t->df++;
            }
            w++;
            r = e;
        }
        st->vn = w - st->vo;
        off = w;
    }
    for (size_t t = 0; t < c->nterm; t++)
        if (c->term[t].df) c->term[t].idf = log(1.0 + (double)c->nsent / (double)c->term[t].df);
    for (size_t s = 0; s < c->nsent; s++) {
        struct sent *st = &c->sent[s];
        double n2 = 0;
        for (size_t k = st->vo; k < st->vo + st->vn; k++) {
            c->vw[k] *= c->term[c->vid[k]].idf;
            n2 += c->vw[k] * c->vw[k];
        }
        st->norm = sqrt(n2);
    }
    return 0;
}

static double sent_cosine(const struct ctx *c, size_t a, size_t b)
{
    const struct sent *x = &c->sent[a], *y = &c->sent[b];
    if (x->norm == 0 || y->norm == 0) return 0;
    double dot = 0;
    size_t i = x->vo, j = y->vo;
    while (i < x->vo + x->vn && j < y->vo + y->vn) {
        if (c->vid[i] == c->vid[j])
            dot += c->vw[i++] * c->vw[j++];
        else if (c->vid[i] < c->vid[j])
            i++;
        else
            j++;
    }
    return dot / (x->norm * y->norm);
}

/* Scores each sentence by its cosine to the centroid of all sentences,
 * damped for very short sentences. */
static void score_sentences(struct ctx *c)
{
    double *cen = c->dense, n2 = 0;
    for (size_t s = 0; s < c->nsent; s++)
        for (size_t k = c->sent[s].vo; k < c->sent[s].vo + c->sent[s].vn; k++)
            cen[c->vid[k]] += c->vw[k];
    for (size_t t = 0; t < c->nterm; t++)
        n2 += cen[t] * cen[t];
    double cn = sqrt(n2);
    for (size_t s = 0; s < c->nsent; s++) {
        struct sent *st = &c->sent[s];
        double dot = 0;
        for (size_t k = st->vo; k < st->vo + st->vn; k++)
            dot += c->vw[k] * cen[c->vid[k]];
        double len = st->count >= 8 ? 1.0 : (double)st->count / 8.0;
        st->score = (cn > 0 && st->norm > 0) ? dot / (cn * st->norm) * len : 0;
    }
    memset(cen, 0, c->nterm * sizeof *cen);
}

static int cmp_by_score(const void *a, const void *b, void *arg)
{
    const struct ctx *c = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    double sx = c->sent[x].score, sy = c->sent[y].score;
    if (sx != sy) return sx < sy ? 1 : -1;
    return (x > y) - (x < y);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* ---- sentence text ---- */

/* Appends sentence s, cleaned (control bytes become spaces, first letter
 * capitalized, end punctuation ensured, at most max bytes) and escaped. */
static void emit_sentence(const struct ctx *c, struct buf *b, size_t s, size_t max,
                          bool at_line_start)
{
    char tmp[EMIT_SENT_MAX + 8];
    size_t n = 0;
    bool cut = false;
    const struct sent *st = &c->sent[s];
    if (max > EMIT_SENT_MAX) max = EMIT_SENT_MAX;
    for (size_t i = st->first; i < st->first + st->count && !cut; i++) {
        const struct tok *t = &c->tok[i];
        if (n > 0) tmp[n++] = ' ';
        for (size_t k = 0; k < t->n; k++) {
            if (n >= max) {
                cut = true;
                break;
            }
            unsigned char ch = (unsigned char)t->s[k];
            tmp[n++] = (char)((ch < 0x20 || ch == 0x7f) ? ' ' : ch);
        }
    }
    if (cut) { /* back off to a word end, else to a character boundary */
        size_t sp = n;
        while (sp > 0 && tmp[sp - 1] != ' ')
            sp--;
        if (sp > max / 2) {
            n = sp - 1;
        } else {
            while (n > 0 && ((unsigned char)tmp[n - 1] & 0xc0) == 0x80)
                n--;
            if (n > 0 && (unsigned char)tmp[n - 1] >= 0xc0) n--;
        }
        memcpy(tmp + n, "\xe2\x80\xa6", 3);
        n += 3;
    } else if (n > 0 && !tok_ends_sentence(tmp, n)) {
        tmp[n++] = '.';
    }
    if (n > 0 && tmp[0] >= 'a' && tmp[0] <= 'z') tmp[0] = (char)(tmp[0] - 'a' + 'A');
    buf_escaped(b, tmp, n, at_line_start);
}

/* Appends the display form of a term: its normalized form, capitalized. */
static void emit_term(const struct ctx *c, struct buf *b, int id)
{
    const struct term *t = &c->term[id];
    char tmp[TERM_MAX];
    memcpy(tmp, c->normbuf + t->key, t->klen);
    if (tmp[0] >= 'a' && tmp[0] <= 'z') tmp[0] = (char)(tmp[0] - 'a' + 'A');
    buf_escaped(b, tmp, t->klen, false);
}

/* ---- title and summary ---- */

static int cmp_term_weight(const void *a, const void *b, void *arg)
{
    const struct ctx *c = arg;
    int x = *(const int *)a, y = *(const int *)b;
    double wx = c->dense[x], wy = c->dense[y];
    if (wx != wy) return wx < wy ? 1 : -1;
    return (x > y) - (x < y);
}

static int cmp_term_first(const void *a, const void *b, void *arg)
{
    const struct ctx *c = arg;
    int x = *(const int *)a, y = *(const int *)b;
    size_t fx = c->term[x].first, fy = c->term[y].first;
    return (fx > fy) - (fx < fy);
}

/* Sorts the touched terms by their weight in dense[] and keeps the top
 * max, then clears dense[] and touched. Returns how many were kept in
 * top[]. */
static size_t top_touched(struct ctx *c, int *top, size_t max)
{
    qsort_r(c->touched, c->ntouched, sizeof *c->touched, cmp_term_weight, c);
    size_t n = c->ntouched < max ? c->ntouched : max;
    memcpy(top, c->touched, n * sizeof *top);
    for (size_t i = 0; i < c->ntouched; i++)
        c->dense[c->touched[i]] = 0;
    c->ntouched = 0;
    return n;
}

static void touch(struct ctx *c, int id, double w)
{
    if (c->dense[id] == 0) c->touched[c->ntouched++] = id;
    c->dense[id] += w;
}

static char *make_title(struct ctx *c)
{
    struct buf b = {0};
    int top[4];
    size_t repeated = 0;
    for (size_t t = 0; t < c->nterm; t++)
        if (c->term[t].tf >= 2) repeated++;
    for (size_t t = 0; t < c->nterm; t++)
        if (c->term[t].tf > 0 && (repeated < 2 || c->term[t].tf >= 2))
            touch(c, (int)t, (double)c->term[t].tf * c->term[t].idf + 1e-9);
    size_t n = top_touched(c, top, repeated >= 4 ? 4 : 3);
    qsort_r(top, n, sizeof *top, cmp_term_first, c);
    for (size_t i = 0; i < n; i++) {
        if (i) buf_add(&b, " ", 1);
        const struct term *t = &c->term[top[i]];
        size_t at = b.len;
        buf_add(&b, c->normbuf + t->key, t->klen);
        if (!b.oom && b.p[at] >= 'a' && b.p[at] <= 'z') b.p[at] = (char)(b.p[at] - 'a' + 'A');
    }
    if (n == 0) buf_str(&b, "Recording");
    return buf_take(&b);
}

/* Picks the summary sentences (indices in original order) into pick[3]. */
static size_t pick_summary(const struct ctx *c, const size_t *order, size_t *pick)
{
    size_t n = 0, used = 0;
    for (size_t i = 0; i < c->nsent && n < 3; i++) {
        size_t s = order[i], len = 0;
        if (c->sent[s].score <= 0 && n > 0) break;
        for (size_t k = c->sent[s].first; k < c->sent[s].first + c->sent[s].count; k++)
            len += c->tok[k].n + 1;
        if (n > 0 && used + len + 1 > DOCGEN_SUMMARY_MAX) continue;
        pick[n++] = s;
        used += len + 1;
    }
    qsort(pick, n, sizeof *pick, cmp_size);
    return n;
}

/* The plain-text summary: the picked sentences, cleaned, unescaped. */
static char *make_summary(const struct ctx *c, const size_t *pick, size_t n)
{
    struct buf b = {0};
    for (size_t i = 0; i < n && !b.oom; i++) {
        const struct sent *st = &c->sent[pick[i]];
        size_t at = b.len;
        if (i) buf_add(&b, " ", 1);
        for (size_t k = st->first; k < st->first + st->count; k++) {
            if (k > st->first) buf_add(&b, " ", 1);
            buf_add(&b, c->tok[k].s, c->tok[k].n);
        }
        if (b.oom) break;
        for (size_t k = at; k < b.len; k++)
            if ((unsigned char)b.p[k] < 0x20 || b.p[k] == 0x7f) b.p[k] = ' ';
        size_t first = at + (i ? 1 : 0);
        if (b.p[first] >= 'a' && b.p[first] <= 'z') b.p[first] = (char)(b.p[first] - 'a' + 'A');
        if (!tok_ends_sentence(b.p + first, b.len - first)) buf_add(&b, ".", 1);
        if (b.len > DOCGEN_SUMMARY_MAX) { /* one very long sentence */
            size_t cut = DOCGEN_SUMMARY_MAX - 3;
            while (cut > 0 && ((unsigned char)b.p[cut] & 0xc0) == 0x80)
                cut--;
            b.len = cut;
            buf_add(&b, "\xe2\x80\xa6", 3);
            break;
        }
    }
    return buf_take(&b);
}

/* ---- sections (TextTiling) ---- */

static size_t sent_words_before(const struct ctx *c, size_t s)
{
    return s < c->nsent ? c->sent[s].first : c->ntok;
}

/* Cosine between the blocks of k sentences before and after gap g
 * (between sentences g-1 and g). */
static double gap_similarity(struct ctx *c, size_t g, size_t k)
{
    size_t a = g > k ? g - k : 0, z = g + k < c->nsent ? g + k : c->nsent;
    double *l = c->dense, *r = c->dense2, dot = 0, nl = 0, nr = 0;
    for (size_t s = a; s < z; s++) {
        double *d = s < g ? l : r;
        for (size_t i = c->sent[s].vo; i < c->sent[s].vo + c->sent[s].vn; i++) {
            int id = c->vid[i];
            if (l[id] == 0 && r[id] == 0) c->touched[c->ntouched++] = id;
            d[id] += c->vw[i];
        }
    }
    for (size_t i = 0; i < c->ntouched; i++) {
        int id = c->touched[i];
        dot += l[id] * r[id];
        nl += l[id] * l[id];
        nr += r[id] * r[id];
        l[id] = r[id] = 0;
    }
    c->ntouched = 0;
    return (nl > 0 && nr > 0) ? dot / sqrt(nl * nr) : 0;
}

static int cmp_by_depth(const void *a, const void *b, void *arg)
{
    const double *depth = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    if (depth[x] != depth[y]) return depth[x] < depth[y] ? 1 : -1;
    return (x > y) - (x < y);
}

/* Whether a cut at gap g keeps every section at least SEC_MIN_WORDS long. */
static bool cut_fits(const struct ctx *c, const size_t *cuts, size_t ncuts, size_t g)
{
    size_t w = sent_words_before(c, g);
    if (w < SEC_MIN_WORDS || c->ntok - w < SEC_MIN_WORDS) return false;
    for (size_t i = 0; i < ncuts; i++) {
        size_t o = sent_words_before(c, cuts[i]);
        if ((o > w ? o - w : w - o) < SEC_MIN_WORDS) return false;
    }
    return true;
}

/* Chooses section starts (sentence indices, ascending, cuts[0] = 0).
 * Returns the number of sections, or 0 on allocation failure. */
static size_t choose_sections(struct ctx *c, size_t *cuts)
{
    size_t maxsec = c->ntok / SEC_PER_WORDS + 1, ncuts = 0, G = c->nsent;
    if (maxsec > SEC_MAX) maxsec = SEC_MAX;
    cuts[ncuts++] = 0;
    if (G < 2 || maxsec < 2) return ncuts;
    double *sim = calloc(G, sizeof *sim), *lp = calloc(G, sizeof *lp);
    double *rp = calloc(G + 1, sizeof *rp), *depth = calloc(G, sizeof *depth);
    size_t *order = malloc(G * sizeof *order);
    if (!sim || !lp || !rp || !depth || !order) {
        ncuts = 0;
        goto out;
    }
    size_t k = (size_t)((double)BLOCK_WORDS * (double)c->nsent / (double)c->ntok + 0.5);
    k = k < 2 ? 2 : k > 6 ? 6 : k;
    for (size_t g = 1; g < G; g++)
        sim[g] = gap_similarity(c, g, k);
    /* Depth: how far the similarity climbs on each side of the gap. */
    for (size_t g = 1; g < G; g++)
        lp[g] = (g > 1 && sim[g - 1] >= sim[g]) ? lp[g - 1] : sim[g];
    for (size_t g = G - 1; g >= 1; g--)
        rp[g] = (g + 1 < G && sim[g + 1] >= sim[g]) ? rp[g + 1] : sim[g];
    double mean = 0, var = 0;
    for (size_t g = 1; g < G; g++) {
        depth[g] = (lp[g] - sim[g]) + (rp[g] - sim[g]);
        mean += depth[g];
    }
    mean /= (double)(G - 1);
    for (size_t g = 1; g < G; g++)
        var += (depth[g] - mean) * (depth[g] - mean);
    double thresh = mean - sqrt(var / (double)(G - 1)) / 2;
    if (thresh < 0.1) thresh = 0.1;
    size_t n = 0;
    for (size_t g = 1; g < G; g++)
        order[n++] = g;
    qsort_r(order, n, sizeof *order, cmp_by_depth, depth);
    for (size_t i = 0; i < n && ncuts < maxsec; i++)
        if (depth[order[i]] >= thresh && cut_fits(c, cuts, ncuts, order[i]))
            cuts[ncuts++] = order[i];
    /* No section may run far beyond SEC_MAX_WORDS: cut the deepest gap
     * inside one that does, while the section budget lasts. */
    bool added = true;
    while (added && ncuts < maxsec) {
        added = false;
        qsort(cuts, ncuts, sizeof *cuts, cmp_size);
        for (size_t i = 0; i < ncuts && !added; i++) {
            size_t a = cuts[i], z = i + 1 < ncuts ? cuts[i + 1] : G;
            if (sent_words_before(c, z) - sent_words_before(c, a) <= SEC_MAX_WORDS) continue;
            size_t best = 0;
            for (size_t g = a + 1; g < z; g++)
                if (cut_fits(c, cuts, ncuts, g) && (best == 0 || depth[g] > depth[best])) best = g;
            if (best) {
                cuts[ncuts++] = best;
                added = true;
            }
        }
    }
    qsort(cuts, ncuts, sizeof *cuts, cmp_size);
out:
    free(sim);
    free(lp);
    free(rp);
    free(depth);
    free(order);
    return ncuts;
}

static void emit_timestamp(struct buf *b, int64_t ms)
{
    char tmp[48];
    if (ms < 0) ms = 0;
    int64_t s = ms / 1000;
    if (s >= 3600)
        snprintf(tmp, sizeof tmp, " (%lld:%02lld:%02lld)", (long long)(s / 3600),
                 (long long)(s / 60 % 60), (long long)(s % 60));
    else
        snprintf(tmp, sizeof tmp, " (%02lld:%02lld)", (long long)(s / 60), (long long)(s % 60));
    buf_str(b, tmp);
}

/* Emits section [a, z): heading from its top terms, then its sentences
 * (its best ones in original order when over budget), in paragraphs. */
static void emit_section(struct ctx *c, struct buf *b, size_t a, size_t z, size_t budget,
                         size_t *order, bool *keep)
{
    int top[3];
    for (size_t s = a; s < z; s++)
        for (size_t i = c->sent[s].vo; i < c->sent[s].vo + c->sent[s].vn; i++)
            touch(c, c->vid[i], c->vw[i]);
    size_t nt = top_touched(c, top, 3);
    buf_str(b, "\n## ");
    for (size_t i = 0; i < nt; i++) {
        if (i) buf_str(b, ", ");
        emit_term(c, b, top[i]);
    }
    if (nt == 0) buf_str(b, "Part");
    if (c->timed) emit_timestamp(b, c->tok[c->sent[a].first].t0);
    buf_str(b, "\n");

    size_t n = z - a, used = 0;
    for (size_t i = 0; i < n; i++) {
        order[i] = a + i;
        keep[i] = false;
    }
    qsort_r(order, n, sizeof *order, cmp_by_score, c);
    for (size_t i = 0; i < n; i++) {
        const struct sent *st = &c->sent[order[i]];
        size_t len = 0;
        for (size_t k = st->first; k < st->first + st->count; k++)
            len += c->tok[k].n + 1;
        if (len > EMIT_SENT_MAX) len = EMIT_SENT_MAX;
        if (i > 0 && used + len > budget) continue;
        keep[order[i] - a] = true;
        used += len;
    }
    size_t in_para = 0;
    for (size_t i = 0; i < n; i++) {
        if (!keep[i] || in_para == 4) {
            if (in_para) buf_str(b, "\n");
            in_para = 0;
            if (!keep[i]) continue;
        }
        buf_str(b, in_para ? " " : "\n");
        emit_sentence(c, b, a + i, EMIT_SENT_MAX, in_para == 0);
        in_para++;
    }
    if (in_para) buf_str(b, "\n");
}

/* ---- key points ---- */

static size_t pick_keypoints(const struct ctx *c, const size_t *order, size_t *pick)
{
    size_t want = c->nsent / 5;
    want = want < 3 ? 3 : want > KEYPOINTS_MAX ? KEYPOINTS_MAX : want;
    size_t n = 0;
    /* Only the best candidates are compared, so this stays linear. */
    for (size_t i = 0; i < c->nsent && i < 8 * KEYPOINTS_MAX && n < want; i++) {
        size_t s = order[i];
        if (c->sent[s].score <= 0 || c->sent[s].count < 4) continue;
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = sent_cosine(c, s, pick[j]) > 0.5;
        if (!dup) pick[n++] = s;
    }
    qsort(pick, n, sizeof *pick, cmp_size);
    return n;
}

/* ---- assembly ---- */

static int build_document(struct ctx *c, struct docgen_result *out)
{
    size_t *order = malloc(c->nsent * sizeof *order);
    size_t *scratch = malloc(c->nsent * sizeof *scratch);
    bool *keep = malloc(c->nsent * sizeof *keep);
    size_t *cuts = malloc((SEC_MAX + 1) * sizeof *cuts);
    struct buf b = {0};
    int rc = -1;
    if (!order || !scratch || !keep || !cuts) goto out;
    for (size_t s = 0; s < c->nsent; s++)
        order[s] = s;
    qsort_r(order, c->nsent, sizeof *order, cmp_by_score, c);

    size_t sum[3], kp[KEYPOINTS_MAX];
    size_t nsum = pick_summary(c, order, sum);
    size_t nkp = pick_keypoints(c, order, kp);
    out->title = make_title(c);
    out->summary = make_summary(c, sum, nsum);
    size_t nsec = choose_sections(c, cuts);
    if (!out->title || !out->summary || nsec == 0) goto out;

    buf_str(&b, "# ");
    buf_escaped(&b, out->title, strlen(out->title), false);
    buf_str(&b, "\n\n## Summary\n\n");
    for (size_t i = 0; i < nsum; i++) {
        if (i) buf_str(&b, " ");
        emit_sentence(c, &b, sum[i], EMIT_SENT_MAX, i == 0);
    }
    buf_str(&b, "\n");
    if (nkp > 0) {
        buf_str(&b, "\n## Key points\n\n");
        for (size_t i = 0; i < nkp; i++) {
            buf_str(&b, "- ");
            emit_sentence(c, &b, kp[i], 300, true);
            buf_str(&b, "\n");
        }
    }
    size_t budget = (BODY_BASE + c->textbytes / 20) / nsec;
    for (size_t i = 0; i < nsec; i++)
        emit_section(c, &b, cuts[i], i + 1 < nsec ? cuts[i + 1] : c->nsent, budget, scratch, keep);
    out->markdown = buf_take(&b);
    rc = out->markdown ? 0 : -1;
out:
    if (rc < 0) free(b.p);
    free(order);
    free(scratch);
    free(keep);
    free(cuts);
    return rc;
}

static int empty_document(struct docgen_result *out)
{
    out->markdown = strdup("# Recording\n\nNo speech was detected in this recording.\n");
    out->title = strdup("Recording");
    out->summary = strdup("");
    return (out->markdown && out->title && out->summary) ? 0 : -1;
}

int docgen_local(const char *transcript, size_t len, const struct docgen_word *words, size_t nwords,
                 struct docgen_result *out)
{
    if (!out) return -1;
    out->markdown = out->title = out->summary = NULL;
    if (!transcript) len = 0;
    struct ctx c = {0};
    int rc = -1;
    if (tokenize(&c, transcript, len, words, nwords) < 0) goto out;
    if (c.ntok == 0) {
        rc = empty_document(out);
        goto out;
    }
    if (build_terms(&c) < 0 || split_sentences(&c) < 0 || build_vectors(&c) < 0) goto out;
    score_sentences(&c);
    rc = build_document(&c, out);
out:
    if (rc < 0) docgen_result_free(out);
    free(c.tok);
    free(c.sent);
    free(c.term);
    free(c.normbuf);
    free(c.htab);
    free(c.vid);
    free(c.vw);
    free(c.dense);
    free(c.dense2);
    free(c.touched);
    return rc;
}

void docgen_result_free(struct docgen_result *r)
{
    if (!r) return;
    free(r->markdown);
    free(r->title);
    free(r->summary);
    r->markdown = r->title = r->summary = NULL;
}
