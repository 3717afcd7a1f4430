/* The local embedder; the recipe is in include/reeld/embed_local.h. */
#include "reeld/embed_local.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define BIGRAM_SALT 0x9e3779b97f4a7c15ULL

static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* The feature hashes of a text, in token order. */
struct feats {
    uint64_t *v;
    size_t n, cap;
    uint64_t tok;  /* FNV state of the token being read */
    uint64_t prev; /* raw hash of the previous token */
    int in_tok, have_prev, oom;
};

static void push(struct feats *f, uint64_t h)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 64;
        uint64_t *nv = realloc(f->v, nc * sizeof *nv);
        if (!nv) {
            f->oom = 1;
            return;
        }
        f->v = nv;
        f->cap = nc;
    }
    f->v[f->n++] = h;
}

static void tok_byte(struct feats *f, unsigned char b)
{
    if (!f->in_tok) {
        f->tok = FNV_OFFSET;
        f->in_tok = 1;
    }
    f->tok = (f->tok ^ b) * FNV_PRIME;
}

static void tok_end(struct feats *f)
{
    if (!f->in_tok) return;
    f->in_tok = 0;
    push(f, fmix64(f->tok));
    if (f->have_prev) push(f, fmix64(rotl64(f->prev, 23) ^ f->tok ^ BIGRAM_SALT));
    f->prev = f->tok;
    f->have_prev = 1;
}

/* Decodes one well-formed UTF-8 sequence at s[0..n) (s[0] >= 0x80):
 * returns its length with *cp set, or 0 when it is not well-formed. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

static int is_separator(uint32_t cp)
{
    return (cp >= 0xA0 && cp <= 0xBF) || (cp >= 0x2000 && cp <= 0x206F) ||
           (cp >= 0x3000 && cp <= 0x303F) || cp == 0xFEFF;
}

/* Lower case of the scripts named in the header; all are two-byte UTF-8
 * on both sides, so folding never changes a token's byte length. */
static uint32_t fold(uint32_t cp)
{
    if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) || (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2) ||
        (cp >= 0x410 && cp <= 0x42F))
        return cp + 0x20;
    return cp;
}

static void scan(struct feats *f, const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c >= 'A' && c <= 'Z')
                tok_byte(f, (unsigned char)(c + 32));
            else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
                tok_byte(f, c);
            else
                tok_end(f);
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_decode(s + i, len - i, &cp);
        if (n == 0) { /* a stray byte is still a word byte */
            tok_byte(f, c);
            i++;
        } else if (is_separator(cp)) {
            tok_end(f);
            i += n;
        } else {
            uint32_t lc = fold(cp);
            if (lc != cp) {
                tok_byte(f, (unsigned char)(0xC0 | (lc >> 6)));
                tok_byte(f, (unsigned char)(0x80 | (lc & 0x3F)));
            } else {
                for (size_t k = 0; k < n; k++)
                    tok_byte(f, s[i + k]);
            }
            i += n;
        }
    }
    tok_end(f);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int embed_local(const char *text, size_t len, float *out, size_t dim)
{
    if (!out) return -1;
    if (dim == 0 || dim > EMBED_LOCAL_MAX_DIM) return -1;
    memset(out, 0, dim * sizeof *out);
    if (!text && len > 0) return -1;

    struct feats f = {0};
    scan(&f, (const unsigned char *)text, len);
    if (f.oom) {
        free(f.v);
        return -1;
    }
    if (f.n == 0) return 0;

    double *acc = calloc(dim, sizeof *acc);
    if (!acc) {
        free(f.v);
        return -1;
    }
    /* sorted, so equal features are adjacent and the order of additions
     * (hence the rounding) does not depend on the token order */
    qsort(f.v, f.n, sizeof *f.v, cmp_u64);
    for (size_t i = 0; i < f.n;) {
        size_t j = i + 1;
        while (j < f.n && f.v[j] == f.v[i])
            j++;
        double w = 1.0 + log((double)(j - i));
        size_t b = (size_t)(f.v[i] % dim);
        acc[b] += (f.v[i] >> 63) ? -w : w;
        i = j;
    }
    double norm = 0;
    for (size_t i = 0; i < dim; i++)
        norm += acc[i] * acc[i];
    norm = sqrt(norm);
    int rc = 0;
    if (norm > 0) { /* 0 only if every feature cancelled out in its bucket */
        for (size_t i = 0; i < dim; i++)
            out[i] = (float)(acc[i] / norm);
        rc = 1;
    }
    free(acc);
    free(f.v);
    return rc;
}
