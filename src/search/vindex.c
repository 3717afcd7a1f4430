/* The in-memory vector index; the contract is in include/reeld/vindex.h.
 *
 * Layout: an organization's vectors live in a few large row-major slabs
 * (see struct slab); each recording's chunks are one run of rows in a slab
 * (a "segment"), so a full search streams slab after slab, a scoped
 * search scans one run, and a put appends. Removed or replaced runs leave
 * holes, compacted away when a slab falls below half full. Segments and
 * slabs are reference counted: the organization holds one reference, and
 * an open cursor holds one on every segment it may scan (each segment on
 * its slab), so a recording replaced, compacted or removed while a search
 * is paused between loop turns stays readable until that search ends.
 * Organizations and each organization's segments are found through
 * open-addressing tables keyed by the 16 bytes of their UUID. */
#include "reeld/vindex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VINDEX_X86 1
#endif

/* ---- ids ---------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A canonical UUID string (8-4-4-4-12 hex digits) into 16 bytes. */
static int parse_uuid(const char *s, uint8_t out[16])
{
    if (!s) return -1;
    size_t j = 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return -1;
            continue;
        }
        int hi = hexval(s[i]);
        if (hi < 0) return -1;
        int lo = hexval(s[++i]);
        if (lo < 0) return -1;
        out[j++] = (uint8_t)(hi << 4 | lo);
    }
    return s[36] == '\0' ? 0 : -1;
}

static void format_uuid(const uint8_t id[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = hex[id[i] >> 4];
        *p++ = hex[id[i] & 15];
    }
    *p = '\0';
}

static size_t hash_id(const uint8_t id[16])
{
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    uint64_t k = a ^ (b * 0x9e3779b97f4a7c15ULL);
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

/* ---- a table of pointers to objects whose first member is uint8_t[16] --- */

struct ptab {
    void **slot;
    size_t cap; /* 0 or a power of two */
    size_t n;
};

static const uint8_t *key_of(const void *p)
{
    return (const uint8_t *)p;
}

/* The slot holding key, or (size_t)-1. */
static size_t ptab_find(const struct ptab *t, const uint8_t key[16])
{
    if (t->cap == 0) return (size_t)-1;
    size_t mask = t->cap - 1;
    for (size_t i = hash_id(key) & mask;; i = (i + 1) & mask) {
        if (!t->slot[i]) return (size_t)-1;
        if (memcmp(key_of(t->slot[i]), key, 16) == 0) return i;
    }
}

static void *ptab_get(const struct ptab *t, const uint8_t key[16])
{
    size_t i = ptab_find(t, key);
    return i == (size_t)-1 ? NULL : t->slot[i];
}

/* Bytes the slot array grows by if one more entry is inserted. */
static size_t ptab_grow_bytes(const struct ptab *t)
{
    if ((t->n + 1) * 2 <= t->cap) return 0;
    return (t->cap ? t->cap : 8) * sizeof(void *);
}

static void ptab_place(void **slot, size_t mask, void *p)
{
    size_t i = hash_id(key_of(p)) & mask;
    while (slot[i])
        i = (i + 1) & mask;
    slot[i] = p;
}

/* Inserts p, whose key is not in the table. 0 or -1 (no memory). */
static int ptab_insert(struct ptab *t, void *p)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 16;
        void **ns = calloc(nc, sizeof *ns);
        if (!ns) return -1;
        for (size_t i = 0; i < t->cap; i++)
            if (t->slot[i]) ptab_place(ns, nc - 1, t->slot[i]);
        free(t->slot);
        t->slot = ns;
        t->cap = nc;
    }
    ptab_place(t->slot, t->cap - 1, p);
    t->n++;
    return 0;
}

/* Empties slot i, shifting later entries of its probe run back (linear
 * probing needs no tombstones then). */
static void ptab_remove_at(struct ptab *t, size_t i)
{
    size_t mask = t->cap - 1;
    t->slot[i] = NULL;
    t->n--;
    for (size_t j = (i + 1) & mask; t->slot[j]; j = (j + 1) & mask) {
        size_t home = hash_id(key_of(t->slot[j])) & mask;
        /* move j into the hole at i unless its home lies in (i, j] */
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slot[i] = t->slot[j];
            t->slot[j] = NULL;
            i = j;
        }
    }
}

static size_t ptab_bytes(const struct ptab *t)
{
    return t->cap * sizeof(void *);
}

/* ---- storage: slabs, segments, organizations ---------------------------- */

/* The three lists below (an org's slabs, a slab's segments, the LRU order
 * of orgs) are doubly linked through prev/next members. */
#define DLIST_UNLINK(first, last, node)                                                            \
    do {                                                                                           \
        if ((node)->prev)                                                                          \
            (node)->prev->next = (node)->next;                                                     \
        else                                                                                       \
            (first) = (node)->next;                                                                \
        if ((node)->next)                                                                          \
            (node)->next->prev = (node)->prev;                                                     \
        else                                                                                       \
            (last) = (node)->prev;                                                                 \
        (node)->prev = (node)->next = NULL;                                                        \
    } while (0)

#define DLIST_APPEND(first, last, node)                                                            \
    do {                                                                                           \
        (node)->next = NULL;                                                                       \
        (node)->prev = (last);                                                                     \
        if (last)                                                                                  \
            (last)->next = (node);                                                                 \
        else                                                                                       \
            (first) = (node);                                                                      \
        (last) = (node);                                                                           \
    } while (0)

/* A slab: one contiguous block of vector rows of one organization, filled
 * in order by the recordings put into it, so that a full scan streams
 * through a few long blocks. (Scanning 100,000 vectors kept as 2,000
 * separate blocks of one recording each measured about 15 % slower than
 * one block here, most likely because every jump restarts the hardware
 * prefetcher's stream.) Slabs grow with the organization (the first one
 * fits its first recording; each new one holds as many rows as the
 * organization has) up to SLAB_BYTES. */
#define SLAB_BYTES ((size_t)16 << 20)

struct slab {
    unsigned refs;            /* segments placed in it, + 1 while its org holds it */
    size_t cap, used, live;   /* rows */
    size_t bytes;             /* counted while its org holds it */
    float *vecs;              /* cap * dim, 64-byte aligned */
    struct seg *first, *last; /* its org's segments in it, in row order */
    struct slab *prev, *next; /* its org's slabs, oldest first */
};

/* A recording's chunks: n rows of a slab and their chunk ids. */
struct seg {
    uint8_t rec[16]; /* key: first member */
    unsigned refs;   /* 1 while its org holds it, + 1 per cursor */
    size_t n;
    size_t bytes; /* ids and bookkeeping, counted while its org holds it */
    uint8_t *ids; /* n * 16 */
    struct slab *slab;
    float *vecs;             /* its n rows inside slab */
    struct seg *prev, *next; /* in slab->first..last while its org holds it */
};

struct org {
    uint8_t id[16]; /* key: first member */
    int loaded;
    int dead;      /* dropped from the index, kept for open cursors */
    unsigned pins; /* open cursors */
    struct ptab segs;
    struct slab *slab_first, *slab_last;
    size_t nvec;
    size_t bytes;
    struct org *prev, *next; /* LRU list, most recent first */
};

struct vindex {
    size_t dim;
    size_t budget;
    size_t bytes;
    size_t vbytes; /* of slabs */
    size_t nvec;
    struct ptab orgs;
    struct org *lru_head, *lru_tail;
    vindex_evict_cb cb;
    void *cb_arg;
    vindex_kernel_fn kernel;
    uint64_t evictions;
};

static size_t round64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static size_t slab_bytes(size_t rows, size_t dim)
{
    return sizeof(struct slab) + round64(rows * dim * sizeof(float));
}

static size_t seg_bytes(size_t n)
{
    return sizeof(struct seg) + n * 16;
}

static void slab_unref(struct slab *sl)
{
    if (--sl->refs > 0) return;
    free(sl->vecs);
    free(sl);
}

static void seg_unref(struct seg *s)
{
    if (--s->refs > 0) return;
    slab_unref(s->slab);
    free(s->ids);
    free(s);
}

static void org_add(struct vindex *vi, struct org *o, size_t bytes, size_t nvec)
{
    o->bytes += bytes;
    vi->bytes += bytes;
    o->nvec += nvec;
    vi->nvec += nvec;
}

static void org_sub(struct vindex *vi, struct org *o, size_t bytes, size_t nvec)
{
    o->bytes -= bytes;
    vi->bytes -= bytes;
    o->nvec -= nvec;
    vi->nvec -= nvec;
}

/* Rows of the slab to create for a recording of n rows. */
static size_t slab_rows(size_t dim, size_t n, size_t org_rows)
{
    size_t max = SLAB_BYTES / (dim * sizeof(float));
    size_t rows = org_rows < max ? org_rows : max;
    return rows > n ? rows : n;
}

/* The slab that n more rows go to: o's last one when it has room, else
 * NULL with *new_rows the size of the slab to create. */
static struct slab *room_for(const struct org *o, size_t dim, size_t n, size_t *new_rows)
{
    struct slab *sl = o->slab_last;
    if (sl && sl->cap - sl->used >= n) return sl;
    *new_rows = slab_rows(dim, n, o->nvec);
    return NULL;
}

static struct slab *org_new_slab(struct vindex *vi, struct org *o, size_t rows)
{
    struct slab *sl = calloc(1, sizeof *sl);
    if (!sl) return NULL;
    sl->vecs = aligned_alloc(64, round64(rows * vi->dim * sizeof(float)));
    if (!sl->vecs) {
        free(sl);
        return NULL;
    }
    sl->refs = 1;
    sl->cap = rows;
    sl->bytes = slab_bytes(rows, vi->dim);
    DLIST_APPEND(o->slab_first, o->slab_last, sl);
    org_add(vi, o, sl->bytes, 0);
    vi->vbytes += sl->bytes;
    return sl;
}

/* Takes an empty slab out of o (cursors may still hold its rows). */
static void org_release_slab(struct vindex *vi, struct org *o, struct slab *sl)
{
    DLIST_UNLINK(o->slab_first, o->slab_last, sl);
    org_sub(vi, o, sl->bytes, 0);
    vi->vbytes -= sl->bytes;
    slab_unref(sl);
}

/* Places s (n rows, not yet filled) at the end of sl, which has room. */
static void slab_place(struct slab *sl, struct seg *s, size_t dim)
{
    s->slab = sl;
    sl->refs++;
    s->vecs = sl->vecs + sl->used * dim;
    sl->used += s->n;
    sl->live += s->n;
    DLIST_APPEND(sl->first, sl->last, s);
}

/* Takes s, no longer in o's table, out of its slab and drops o's
 * reference (the slab itself is left to the caller). */
static void org_detach_seg(struct vindex *vi, struct org *o, struct seg *s)
{
    struct slab *sl = s->slab;
    DLIST_UNLINK(sl->first, sl->last, s);
    sl->live -= s->n;
    org_sub(vi, o, s->bytes, s->n);
    seg_unref(s);
}

static void lru_touch(struct vindex *vi, struct org *o)
{
    if (vi->lru_head == o) return;
    if (o->prev) DLIST_UNLINK(vi->lru_head, vi->lru_tail, o); /* linked (a new one is not yet) */
    o->next = vi->lru_head;
    if (vi->lru_head)
        vi->lru_head->prev = o;
    else
        vi->lru_tail = o;
    vi->lru_head = o;
}

static void org_free(struct org *o)
{
    free(o->segs.slot);
    free(o);
}

/* Takes o out of the index and releases its segments; the struct itself
 * goes when the last cursor pinning it ends. */
static void org_drop(struct vindex *vi, struct org *o)
{
    size_t i = ptab_find(&vi->orgs, o->id);
    if (i != (size_t)-1) ptab_remove_at(&vi->orgs, i);
    DLIST_UNLINK(vi->lru_head, vi->lru_tail, o);
    for (size_t j = 0; j < o->segs.cap; j++)
        if (o->segs.slot[j]) seg_unref(o->segs.slot[j]);
    free(o->segs.slot);
    o->segs = (struct ptab){0};
    while (o->slab_first) {
        struct slab *sl = o->slab_first;
        o->slab_first = sl->next;
        vi->vbytes -= sl->bytes;
        slab_unref(sl);
    }
    o->slab_last = NULL;
    vi->bytes -= o->bytes;
    vi->nvec -= o->nvec;
    o->dead = 1;
    if (o->pins == 0) org_free(o);
}

static void evict_for_budget(struct vindex *vi, struct org *o)
{
    char id[37];
    format_uuid(o->id, id);
    org_drop(vi, o);
    vi->evictions++;
    if (vi->cb) vi->cb(id, vi->cb_arg);
}

/* Evicts idle organizations other than keep, least recent first, until
 * `more` bytes fit. 0, or -1 when they cannot. */
static int make_room(struct vindex *vi, const struct org *keep, size_t more)
{
    while (vi->bytes + more > vi->budget) {
        struct org *o = vi->lru_tail;
        while (o && (o == keep || o->pins > 0))
            o = o->prev;
        if (!o) return -1;
        evict_for_budget(vi, o);
    }
    return 0;
}

static struct org *find_org(const struct vindex *vi, const char *org_id, int *bad)
{
    uint8_t id[16];
    *bad = parse_uuid(org_id, id) < 0;
    return *bad ? NULL : ptab_get(&vi->orgs, id);
}

/* ---- kernels ------------------------------------------------------------ */

/* Why the built-in kernel is a hand-written loop and not OpenBLAS: it is
 * faster here. bench/run search measures both through this same path
 * (2026-11-23, 2-core AMD EPYC VM with AVX2/FMA/AVX-512; Debian OpenBLAS
 * 0.3.21, which runs its Haswell kernels on this CPU; cblas_sgemv row-major
 * on each block, one thread). 100,000 x 1536 vectors, 200 queries, median
 * scan rate by CPU time, against a 1 GiB AVX2 read of 28.1 GB/s measured
 * in the same run:
 *   this loop (avx2-fma)     28.0 GB/s   1.00 of the memory read
 *   OpenBLAS cblas_sgemv     21.8 GB/s   0.78
 * (a second run: 1.00 against 0.79), and one call over a single contiguous
 * matrix, fastest query: 31.9 GB/s against 25.0 GB/s. Recall@10 was 1.0
 * with both. OpenBLAS's sgemv_t kernel reads four rows at a time; a
 * four-row variant of this loop was as slow in a trial, so one row at a
 * time with four independent FMA chains (one sequential stream for the
 * prefetchers) it is; software prefetching did not help either. Being
 * memory-bound, the loop has nothing left to gain from AVX-512. The kernel
 * stays replaceable (vindex_set_kernel) so that the benchmark keeps
 * measuring the library beside it. */

static void dot_portable(const float *mat, size_t rows, size_t dim, const float *q, float *out)
{
    for (size_t r = 0; r < rows; r++) {
        const float *a = mat + r * dim;
        float s[8] = {0};
        size_t i = 0;
        for (; i + 8 <= dim; i += 8)
            for (size_t l = 0; l < 8; l++)
                s[l] += a[i + l] * q[i + l];
        float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (; i < dim; i++)
            t += a[i] * q[i];
        out[r] = t;
    }
}

#ifdef VINDEX_X86
__attribute__((target("avx2,fma"))) static void dot_avx2(const float *mat, size_t rows, size_t dim,
                                                         const float *q, float *out)
{
    for (size_t r = 0; r < rows; r++) {
        const float *a = mat + r * dim;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t i = 0;
        for (; i + 32 <= dim; i += 32) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(q + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(q + i + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(q + i + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(q + i + 24), s3);
        }
        for (; i + 8 <= dim; i += 8)
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(q + i), s0);
        __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float t = _mm_cvtss_f32(h);
        for (; i < dim; i++)
            t += a[i] * q[i];
        out[r] = t;
    }
}
#endif

static vindex_kernel_fn builtin_kernel;
static const char *builtin_name;

static void pick_kernel(void)
{
    if (builtin_kernel) return;
    builtin_kernel = dot_portable;
    builtin_name = "portable";
#ifdef VINDEX_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        builtin_kernel = dot_avx2;
        builtin_name = "avx2-fma";
    }
#endif
}

void vindex_kernel(const float *mat, size_t rows, size_t dim, const float *q, float *out)
{
    pick_kernel();
    builtin_kernel(mat, rows, dim, q, out);
}

const char *vindex_kernel_name(void)
{
    pick_kernel();
    return builtin_name;
}

/* ---- the index ---------------------------------------------------------- */

struct vindex *vindex_new(size_t dim, size_t budget_bytes)
{
    if (dim == 0 || dim > VINDEX_MAX_DIM) return NULL;
    struct vindex *vi = calloc(1, sizeof *vi);
    if (!vi) return NULL;
    pick_kernel();
    vi->dim = dim;
    vi->budget = budget_bytes;
    vi->kernel = builtin_kernel;
    return vi;
}

void vindex_free(struct vindex *vi)
{
    if (!vi) return;
    while (vi->lru_head)
        org_drop(vi, vi->lru_head);
    free(vi->orgs.slot);
    free(vi);
}

void vindex_set_evict_cb(struct vindex *vi, vindex_evict_cb cb, void *arg)
{
    vi->cb = cb;
    vi->cb_arg = arg;
}

void vindex_set_kernel(struct vindex *vi, vindex_kernel_fn fn)
{
    vi->kernel = fn ? fn : builtin_kernel;
}

int vindex_org_create(struct vindex *vi, const char *org_id)
{
    uint8_t id[16];
    if (parse_uuid(org_id, id) < 0) return -1;
    struct org *o = ptab_get(&vi->orgs, id);
    if (o) {
        lru_touch(vi, o);
        return 0;
    }
    size_t need = sizeof *o + ptab_grow_bytes(&vi->orgs);
    if (make_room(vi, NULL, need) < 0) return -1;
    o = calloc(1, sizeof *o);
    if (!o) return -1;
    memcpy(o->id, id, 16);
    size_t before = ptab_bytes(&vi->orgs);
    if (ptab_insert(&vi->orgs, o) < 0) {
        free(o);
        return -1;
    }
    o->bytes = sizeof *o;
    vi->bytes += o->bytes + ptab_bytes(&vi->orgs) - before;
    lru_touch(vi, o);
    return 0;
}

int vindex_org_set_loaded(struct vindex *vi, const char *org_id)
{
    int bad;
    struct org *o = find_org(vi, org_id, &bad);
    if (!o) return -1;
    o->loaded = 1;
    return 0;
}

int vindex_org_loaded(const struct vindex *vi, const char *org_id)
{
    int bad;
    const struct org *o = find_org(vi, org_id, &bad);
    return o && o->loaded;
}

int vindex_evict(struct vindex *vi, const char *org_id)
{
    int bad;
    struct org *o = find_org(vi, org_id, &bad);
    if (!o) return -1;
    org_drop(vi, o);
    return 0;
}

size_t vindex_org_vectors(const struct vindex *vi, const char *org_id)
{
    int bad;
    const struct org *o = find_org(vi, org_id, &bad);
    return o ? o->nvec : 0;
}

void vindex_get_stats(const struct vindex *vi, struct vindex_stats *st)
{
    st->orgs = vi->orgs.n;
    st->vectors = vi->nvec;
    st->bytes = vi->bytes;
    st->vector_bytes = vi->vbytes;
    st->budget = vi->budget;
    st->evictions = vi->evictions;
}

/* Moves segment m out of its slab into o's last slab (or a new one, only
 * if that fits the budget without evicting anything). 0 or -1. */
static int move_seg(struct vindex *vi, struct org *o, struct seg *m)
{
    size_t rows = 0;
    struct slab *dst = room_for(o, vi->dim, m->n, &rows);
    if (!dst) {
        if (vi->bytes + slab_bytes(rows, vi->dim) > vi->budget) return -1;
        if (!(dst = org_new_slab(vi, o, rows))) return -1;
    }
    struct seg *c = calloc(1, sizeof *c);
    uint8_t *ids = malloc(m->n * 16);
    if (!c || !ids) {
        free(c);
        free(ids);
        return -1;
    }
    memcpy(c->rec, m->rec, 16);
    c->refs = 1;
    c->n = m->n;
    c->bytes = m->bytes;
    c->ids = ids;
    memcpy(ids, m->ids, m->n * 16);
    slab_place(dst, c, vi->dim);
    memcpy(c->vecs, m->vecs, m->n * vi->dim * sizeof(float));
    o->segs.slot[ptab_find(&o->segs, m->rec)] = c; /* same key, same slot */
    org_add(vi, o, c->bytes, c->n);
    org_detach_seg(vi, o, m);
    return 0;
}

/* After a removal from sl: an empty slab is released; one less than half
 * full (but the last, which is still being filled) has its segments moved
 * to the last slab, then is released. The copy is at most half a slab
 * (SLAB_BYTES / 2), so a removal stays cheap on the loop. */
static void slab_tidy(struct vindex *vi, struct org *o, struct slab *sl)
{
    if (sl->live > 0 && (sl == o->slab_last || sl->live * 2 >= sl->cap)) return;
    while (sl->first)
        if (move_seg(vi, o, sl->first) < 0) return; /* left as it is: still valid */
    org_release_slab(vi, o, sl);
}

/* Removes the segment in slot i of o's table. */
static void org_remove_seg(struct vindex *vi, struct org *o, size_t i)
{
    struct seg *s = o->segs.slot[i];
    struct slab *sl = s->slab;
    ptab_remove_at(&o->segs, i);
    org_detach_seg(vi, o, s);
    slab_tidy(vi, o, sl);
}

/* The chunk ids parsed into a new array, and the vectors checked finite;
 * NULL (with *bad set for refused input, clear for no memory). */
static uint8_t *check_input(size_t dim, size_t n, const char *const *chunk_ids,
                            const float *vectors, int *bad)
{
    *bad = 1;
    if (!chunk_ids || !vectors) return NULL;
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(vectors[i])) return NULL;
    uint8_t *ids = malloc(n * 16);
    if (!ids) {
        *bad = 0;
        return NULL;
    }
    for (size_t r = 0; r < n; r++) {
        if (parse_uuid(chunk_ids[r], ids + r * 16) < 0) {
            free(ids);
            return NULL;
        }
    }
    *bad = 0;
    return ids;
}

/* Normalized copies of n vectors into dst. */
static void copy_normalized(float *dst, const float *src, size_t n, size_t dim)
{
    for (size_t r = 0; r < n; r++) {
        const float *v = src + r * dim;
        float *d = dst + r * dim;
        double norm = 0;
        for (size_t i = 0; i < dim; i++)
            norm += (double)v[i] * v[i];
        norm = sqrt(norm);
        for (size_t i = 0; i < dim; i++)
            d[i] = norm > 0 ? (float)(v[i] / norm) : 0.0f;
    }
}

/* The held organization and the recording key named by a put or remove:
 * 0, 1 (organization not held) or -1 (a bad id). */
static int find_rec(const struct vindex *vi, const char *org_id, const char *rec_id, struct org **o,
                    uint8_t rec[16])
{
    int bad;
    *o = find_org(vi, org_id, &bad);
    if (bad || parse_uuid(rec_id, rec) < 0) return -1;
    return *o ? 0 : 1;
}

int vindex_put_recording(struct vindex *vi, const char *org_id, const char *rec_id, size_t n,
                         const char *const *chunk_ids, const float *vectors)
{
    struct org *o;
    uint8_t rec[16];
    int rc = find_rec(vi, org_id, rec_id, &o, rec);
    if (rc != 0) return rc;
    if (n == 0) return vindex_remove_recording(vi, org_id, rec_id);
    int bad;
    if (n > UINT32_MAX || n > (SIZE_MAX / 4) / vi->dim / sizeof(float)) return -1;
    uint8_t *ids = check_input(vi->dim, n, chunk_ids, vectors, &bad);
    if (!ids) return -1;
    lru_touch(vi, o);

    size_t i = ptab_find(&o->segs, rec), rows = 0;
    struct seg *old = i == (size_t)-1 ? NULL : o->segs.slot[i];
    struct slab *sl = room_for(o, vi->dim, n, &rows);
    /* the old rows stay allocated until their slab is tidied: not
     * counted as freed */
    size_t want =
        seg_bytes(n) + (old ? 0 : ptab_grow_bytes(&o->segs)) + (sl ? 0 : slab_bytes(rows, vi->dim));
    size_t freed = old ? old->bytes : 0;
    if (want > freed && make_room(vi, o, want - freed) < 0) {
        free(ids);
        evict_for_budget(vi, o);
        return -1;
    }
    struct seg *s = calloc(1, sizeof *s);
    if (!s || (!sl && !(sl = org_new_slab(vi, o, rows)))) {
        free(s);
        free(ids);
        return -1;
    }
    memcpy(s->rec, rec, 16);
    s->refs = 1;
    s->n = n;
    s->bytes = seg_bytes(n);
    s->ids = ids;
    slab_place(sl, s, vi->dim);
    copy_normalized(s->vecs, vectors, n, vi->dim);
    org_add(vi, o, s->bytes, n);

    if (old) {
        o->segs.slot[i] = s; /* same key, same slot */
        struct slab *osl = old->slab;
        org_detach_seg(vi, o, old);
        slab_tidy(vi, o, osl);
        return 0;
    }
    size_t before = ptab_bytes(&o->segs);
    if (ptab_insert(&o->segs, s) < 0) { /* no memory: undo */
        org_detach_seg(vi, o, s);
        slab_tidy(vi, o, sl);
        return -1;
    }
    org_add(vi, o, ptab_bytes(&o->segs) - before, 0);
    return 0;
}

int vindex_remove_recording(struct vindex *vi, const char *org_id, const char *rec_id)
{
    struct org *o;
    uint8_t rec[16];
    int rc = find_rec(vi, org_id, rec_id, &o, rec);
    if (rc != 0) return rc;
    size_t i = ptab_find(&o->segs, rec);
    if (i != (size_t)-1) org_remove_seg(vi, o, i);
    return 0;
}

/* ---- search ------------------------------------------------------------- */

/* A candidate: segment index in the cursor's snapshot and row. */
struct hent {
    float score;
    uint32_t seg;
    uint32_t row;
};

struct vindex_cursor {
    struct org *org; /* pinned */
    size_t dim, k;
    vindex_kernel_fn kernel;
    struct seg **snap;
    size_t nsnap;
    size_t si, row;    /* next vector to score */
    float *q;          /* normalized query */
    struct hent *heap; /* min-heap: the worst kept candidate at the root */
    size_t nheap;
    float scores[VINDEX_BLOCK];
};

/* a is a better match than b: higher score, or equal and scanned first */
static int better(const struct hent *a, const struct hent *b)
{
    if (a->score != b->score) return a->score > b->score;
    if (a->seg != b->seg) return a->seg < b->seg;
    return a->row < b->row;
}

static void heap_sift_down(struct hent *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, w = i;
        if (l < n && better(&h[w], &h[l])) w = l;
        if (l + 1 < n && better(&h[w], &h[l + 1])) w = l + 1;
        if (w == i) return;
        struct hent t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void heap_offer(struct vindex_cursor *c, float score, uint32_t seg, uint32_t row)
{
    struct hent e = {score, seg, row};
    struct hent *h = c->heap;
    if (c->nheap < c->k) {
        size_t i = c->nheap++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!better(&h[p], &e)) break;
            h[i] = h[p];
            i = p;
        }
        h[i] = e;
        return;
    }
    /* scanned after every kept candidate, so a tie loses */
    if (score <= h[0].score) return;
    h[0] = e;
    heap_sift_down(h, c->nheap, 0);
}

static void cursor_free(struct vindex_cursor *c)
{
    for (size_t i = 0; i < c->nsnap; i++)
        seg_unref(c->snap[i]);
    if (c->org && --c->org->pins == 0 && c->org->dead) org_free(c->org);
    free(c->snap);
    free(c->q);
    free(c->heap);
    free(c);
}

/* The normalized query into c->q; 0 (zero query), 1 (usable) or -1. */
static int cursor_query(struct vindex_cursor *c, const float *q)
{
    double norm = 0;
    for (size_t i = 0; i < c->dim; i++) {
        if (!isfinite(q[i])) return -1;
        norm += (double)q[i] * q[i];
    }
    if (norm == 0) return 0;
    norm = sqrt(norm);
    c->q = aligned_alloc(64, round64(c->dim * sizeof(float)));
    if (!c->q) return -1;
    for (size_t i = 0; i < c->dim; i++)
        c->q[i] = (float)(q[i] / norm);
    return 1;
}

/* References to the segments to scan: all of the organization's, or the
 * scope's alone. */
static int cursor_snapshot(struct vindex_cursor *c, struct org *o, const uint8_t *scope)
{
    size_t n = scope ? 1 : o->segs.n;
    if (n == 0) return 0;
    c->snap = malloc(n * sizeof *c->snap);
    if (!c->snap) return -1;
    if (scope) {
        struct seg *s = ptab_get(&o->segs, scope);
        if (s) c->snap[c->nsnap++] = s;
    } else { /* in memory order: one stream per slab */
        for (struct slab *sl = o->slab_first; sl; sl = sl->next)
            for (struct seg *s = sl->first; s && c->nsnap < n; s = s->next)
                c->snap[c->nsnap++] = s;
    }
    for (size_t i = 0; i < c->nsnap; i++)
        c->snap[i]->refs++;
    return 0;
}

int vindex_search_start(struct vindex *vi, const char *org_id, const float *q, size_t k,
                        const char *scope, struct vindex_cursor **out)
{
    if (!out) return -1;
    *out = NULL;
    int bad;
    struct org *o = find_org(vi, org_id, &bad);
    uint8_t sid[16];
    if (bad || !q || k == 0 || k > VINDEX_MAX_K) return -1;
    if (scope && parse_uuid(scope, sid) < 0) return -1;
    if (!o || !o->loaded) return 1;

    struct vindex_cursor *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->dim = vi->dim;
    c->k = k;
    c->kernel = vi->kernel;
    int qs = cursor_query(c, q);
    if (qs < 0) goto fail;
    if (qs > 0) {
        c->heap = malloc(k * sizeof *c->heap);
        if (!c->heap || cursor_snapshot(c, o, scope ? sid : NULL) < 0) goto fail;
    }
    c->org = o;
    o->pins++;
    lru_touch(vi, o);
    *out = c;
    return 0;
fail:
    cursor_free(c);
    return -1;
}

int vindex_search_step(struct vindex_cursor *c, size_t max_vectors)
{
    if (!c) return 0;
    size_t left = max_vectors ? max_vectors : 1;
    while (left > 0 && c->si < c->nsnap) {
        const struct seg *s = c->snap[c->si];
        size_t take = s->n - c->row;
        if (take > left) take = left;
        if (take > VINDEX_BLOCK) take = VINDEX_BLOCK;
        c->kernel(s->vecs + c->row * c->dim, take, c->dim, c->q, c->scores);
        for (size_t j = 0; j < take; j++)
            heap_offer(c, c->scores[j], (uint32_t)c->si, (uint32_t)(c->row + j));
        c->row += take;
        left -= take;
        if (c->row == s->n) {
            c->si++;
            c->row = 0;
        }
    }
    return c->si < c->nsnap;
}

static int cmp_hent(const void *a, const void *b)
{
    const struct hent *x = a, *y = b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

size_t vindex_search_results(const struct vindex_cursor *c, struct vindex_match *out, size_t cap)
{
    if (!c || !out || c->nheap == 0 || cap == 0) return 0;
    struct hent sorted[VINDEX_MAX_K];
    memcpy(sorted, c->heap, c->nheap * sizeof *sorted);
    qsort(sorted, c->nheap, sizeof *sorted, cmp_hent);
    size_t n = c->nheap < cap ? c->nheap : cap;
    for (size_t i = 0; i < n; i++) {
        const struct seg *s = c->snap[sorted[i].seg];
        format_uuid(s->ids + (size_t)sorted[i].row * 16, out[i].chunk_id);
        format_uuid(s->rec, out[i].recording_id);
        out[i].score = sorted[i].score;
    }
    return n;
}

void vindex_search_end(struct vindex_cursor *c)
{
    if (c) cursor_free(c);
}

int vindex_search(struct vindex *vi, const char *org_id, const float *q, size_t k,
                  const char *scope, struct vindex_match *out, size_t *nout)
{
    struct vindex_cursor *c;
    if (!out || !nout) return -1;
    *nout = 0;
    int rc = vindex_search_start(vi, org_id, q, k, scope, &c);
    if (rc != 0) return rc;
    while (vindex_search_step(c, SIZE_MAX))
        ;
    *nout = vindex_search_results(c, out, k);
    vindex_search_end(c);
    return 0;
}
