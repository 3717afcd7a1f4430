/* The local answerer (REELD_LLM=local, provider.h "chat"): no model. The
 * answer is extracted from the numbered sources: the sentences that share
 * the most terms with the question, at most LC_SENTENCES of them, best
 * sources first, each followed by its citation [n]. It is streamed word by
 * word like a model's answer (LC_BATCH pieces per loop turn), and honours
 * pauses, so the relay and its clients behave the same with either
 * answerer. Deterministic: the same sources and question give the same
 * answer. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "reeld/app.h"
#include "reeld/provider.h"

#define LC_SENTENCES 3
#define LC_BATCH 8
#define LC_MAX_TERMS 32
#define LC_SENTENCE_WORDS 40 /* unpunctuated speech is cut into windows */

struct lc_call {
    struct prov_call base; /* first */
    struct event *ev;
    char *answer;
    size_t len, pos;
    size_t pieces;
    int paused;
    prov_chat_piece_cb on_piece;
    prov_chat_done_cb done;
    void *arg;
};

/* ---- building the answer ------------------------------------------------------ */

/* Lower-cased terms of at least 3 bytes, without a few very common words. */
static int terms_of(const char *q, char terms[][32], int max)
{
    static const char *common[] = {
        "the",   "and",   "for",  "are", "was",  "what",  "how",   "who",   "why",  "when",
        "where", "which", "does", "did", "with", "this",  "that",  "about", "from", "have",
        "has",   "you",   "our",  "can", "tell", "there", "their", "they",  "into"};
    int n = 0;
    while (*q && n < max) {
        while (*q && !isalnum((unsigned char)*q) && !((unsigned char)*q & 0x80))
            q++;
        size_t k = 0;
        char t[32];
        while (*q && (isalnum((unsigned char)*q) || ((unsigned char)*q & 0x80))) {
            if (k < sizeof t - 1) t[k++] = (char)tolower((unsigned char)*q);
            q++;
        }
        t[k] = '\0';
        if (k < 3) continue;
        int skip = 0;
        for (size_t i = 0; i < sizeof common / sizeof common[0] && !skip; i++)
            skip = strcmp(t, common[i]) == 0;
        for (int i = 0; i < n && !skip; i++)
            skip = strcmp(t, terms[i]) == 0;
        if (!skip) memcpy(terms[n++], t, k + 1);
    }
    return n;
}

/* Distinct terms found as words in s[0..len). */
static int overlap(const char *s, size_t len, char terms[][32], int nterms)
{
    int hit[LC_MAX_TERMS] = {0}, n = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && !isalnum((unsigned char)s[i]) && !((unsigned char)s[i] & 0x80))
            i++;
        char w[32];
        size_t k = 0;
        while (i < len && (isalnum((unsigned char)s[i]) || ((unsigned char)s[i] & 0x80))) {
            if (k < sizeof w - 1) w[k++] = (char)tolower((unsigned char)s[i]);
            i++;
        }
        w[k] = '\0';
        for (int t = 0; t < nterms; t++)
            if (!hit[t] && strcmp(w, terms[t]) == 0) hit[t] = 1, n++;
    }
    return n;
}

struct cand {
    int src; /* 0-based */
    const char *s;
    size_t len;
    int score;
};

/* Sentences of text: ends at . ? ! or after LC_SENTENCE_WORDS words. */
static size_t sentence_len(const char *s)
{
    size_t i = 0;
    int words = 0, in_word = 0;
    while (s[i]) {
        char c = s[i++];
        if (c == ' ') {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            if (++words > LC_SENTENCE_WORDS) return i - 1;
        }
        if ((c == '.' || c == '?' || c == '!') && (s[i] == ' ' || s[i] == '\0')) return i;
    }
    return i;
}

static void add_trimmed(struct evbuffer *out, const char *s, size_t len)
{
    while (len && (*s == ' ' || *s == '\n'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\n'))
        len--;
    evbuffer_add(out, s, len);
}

static char *build_answer(const struct prov_chat_in *in, size_t *len)
{
    char terms[LC_MAX_TERMS][32];
    int nterms = terms_of(in->query ? in->query : "", terms, LC_MAX_TERMS);
    struct cand best[LC_SENTENCES];
    int nbest = 0;
    for (size_t si = 0; si < in->nsources; si++) {
        const char *t = in->sources[si].text ? in->sources[si].text : "";
        while (*t) {
            size_t l = sentence_len(t);
            int sc = overlap(t, l, terms, nterms);
            /* keep the LC_SENTENCES best; earlier (better source) wins ties */
            if (sc > 0) {
                int pos = nbest;
                while (pos > 0 && best[pos - 1].score < sc)
                    pos--;
                if (pos < LC_SENTENCES) {
                    int last = nbest < LC_SENTENCES ? nbest : LC_SENTENCES - 1;
                    for (int k = last; k > pos; k--)
                        best[k] = best[k - 1];
                    best[pos] = (struct cand){(int)si, t, l, sc};
                    if (nbest < LC_SENTENCES) nbest++;
                }
            }
            t += l;
        }
    }
    struct evbuffer *out = evbuffer_new();
    if (!out) return NULL;
    if (nbest == 0 && in->nsources > 0) {
        /* nothing shares a term: the best source's opening, cited */
        const char *t = in->sources[0].text ? in->sources[0].text : "";
        best[0] = (struct cand){0, t, sentence_len(t), 0};
        nbest = 1;
    }
    /* in source order, then text order */
    for (int a = 0; a < nbest; a++)
        for (int b = a + 1; b < nbest; b++)
            if (best[b].src < best[a].src ||
                (best[b].src == best[a].src && best[b].s < best[a].s)) {
                struct cand x = best[a];
                best[a] = best[b];
                best[b] = x;
            }
    evbuffer_add_printf(out, "From the recordings:");
    for (int k = 0; k < nbest; k++) {
        const struct prov_chat_source *src = &in->sources[best[k].src];
        if (k == 0 || best[k].src != best[k - 1].src) {
            int64_t s = src->start_ms / 1000;
            evbuffer_add_printf(out, " In \"%s\" (at %02lld:%02lld):", src->title ? src->title : "",
                                (long long)(s / 60), (long long)(s % 60));
        }
        evbuffer_add(out, " ", 1);
        add_trimmed(out, best[k].s, best[k].len);
        evbuffer_add_printf(out, " [%d]", best[k].src + 1);
    }
    *len = evbuffer_get_length(out);
    char *s = malloc(*len + 1);
    if (s) {
        evbuffer_remove(out, s, *len);
        s[*len] = '\0';
    }
    evbuffer_free(out);
    return s;
}

/* ---- streaming it -------------------------------------------------------------- */

static void lc_free(struct lc_call *c)
{
    event_free(c->ev);
    free(c->answer);
    free(c);
}

static void lc_cancel(struct prov_call *pc)
{
    lc_free((struct lc_call *)pc);
}

static void lc_resume(struct prov_call *pc)
{
    struct lc_call *c = (struct lc_call *)pc;
    if (!c->paused) return;
    c->paused = 0;
    event_active(c->ev, 0, 0);
}

static void lc_step(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lc_call *c = arg;
    for (int n = 0; n < LC_BATCH && c->pos < c->len; n++) {
        /* a piece: leading spaces, then the word */
        size_t e = c->pos;
        while (e < c->len && c->answer[e] == ' ')
            e++;
        while (e < c->len && c->answer[e] != ' ')
            e++;
        size_t from = c->pos;
        c->pos = e;
        c->pieces++;
        c->paused = 1; /* set first: after a 1, c may be gone (cancelled) */
        if (c->on_piece(c->arg, c->answer + from, e - from)) return;
        c->paused = 0;
    }
    if (c->pos < c->len) {
        event_active(c->ev, 0, 0);
        return;
    }
    struct prov_status st = {PROV_OK, NULL, -1};
    struct prov_chat_usage u = {-1, -1};
    c->done(c->arg, &st, &u, "local-extractive", c->pieces);
    lc_free(c);
}

static struct prov_call *lc_start(const struct prov_chat_in *in, prov_chat_piece_cb on_piece,
                                  prov_chat_done_cb done, void *arg)
{
    if (!in || !on_piece || !done) return NULL;
    struct lc_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.cancel = lc_cancel;
    c->base.resume = lc_resume;
    c->on_piece = on_piece;
    c->done = done;
    c->arg = arg;
    c->answer = build_answer(in, &c->len);
    c->ev = event_new(app.base, -1, 0, lc_step, c);
    if (!c->answer || !c->ev) {
        if (c->ev) event_free(c->ev);
        free(c->answer);
        free(c);
        return NULL;
    }
    event_active(c->ev, 0, 0);
    return &c->base;
}

const struct prov_chatter prov_local_chatter = {"local", lc_start};
