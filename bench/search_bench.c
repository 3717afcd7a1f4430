/* The search benchmark behind `bench/run search` (built and run by
 * bench/search.sh; not part of reeld).
 *
 * One organization of --chunks random vectors of --dim floats, in
 * recordings of --per-rec chunks, held by src/search/vindex.c. Random
 * queries, top --k, measured through the index's real path with each
 * kernel in turn:
 *   builtin   vindex_kernel (hand-written AVX2/FMA, or portable)
 *   openblas  cblas_sgemv on each block, one thread
 * plus, for the built-in kernel, the same searches scanned in slices of
 * --slice vectors (vindex_search_step, as the event loop would run it),
 * and, for reference, both kernels in one call over a single contiguous
 * matrix (no index, no top-k). The machine's memory-read bandwidth is
 * measured in the same run, interleaved with the queries: a single-thread
 * AVX2 sum over a 1 GiB buffer. Query i runs with each kernel in turn (in
 * an order rotating with i), each run preceded by one read of the buffer:
 * load from other processes hits all of them alike, and every query starts
 * with a cache holding none of the index (the read evicted it), as every
 * read of the buffer starts with a cache holding little of it. Figures
 * are given by CPU time of the thread (the machine may be shared: time
 * spent descheduled is not a property of the scan) and by wall time.
 * Recall@k is checked against a double-precision brute force over the
 * raw vectors for the first --check queries. */
#include "reeld/vindex.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static const char *ORG = "0b0b0b0b-0000-4000-8000-000000000001";
static const uint64_t SEED = 0x5eed5eed12345678ULL;

static size_t n_chunks = 100000, dim = 1536, per_rec = 50, n_queries = 200, n_check = 25,
              top_k = 10, slice = 4096, memread_mib = 1024;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Component d of vector i of stream s, uniform in [-1, 1): counter based,
 * so the reference can regenerate any vector without storing it. */
static float gen(uint64_t s, size_t i, size_t d)
{
    uint64_t x = splitmix64(SEED ^ (s << 56) ^ ((uint64_t)i * dim + d));
    return (float)((double)(x >> 40) * (1.0 / 8388608.0) - 1.0);
}

static void gen_vec(uint64_t s, size_t i, float *out)
{
    for (size_t d = 0; d < dim; d++)
        out[d] = gen(s, i, d);
}

static void uuid_of(unsigned kind, size_t i, char out[37])
{
    snprintf(out, 37, "%08x-0000-4000-8000-%012zx", kind, i);
}

static size_t index_of(const char *uuid)
{
    return (size_t)strtoull(uuid + 24, NULL, 16);
}

/* ---- kernels ------------------------------------------------------------ */

static void blas_kernel(const float *mat, size_t rows, size_t d, const float *q, float *out)
{
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)rows, (blasint)d, 1.0f, mat, (blasint)d, q, 1,
                0.0f, out, 1);
}

/* ---- memory read bandwidth --------------------------------------------- */

#if defined(__x86_64__)
__attribute__((target("avx2"))) static float sum_avx2(const float *b, size_t n)
{
    __m256 s[8];
    for (int j = 0; j < 8; j++)
        s[j] = _mm256_setzero_ps();
    for (size_t i = 0; i + 64 <= n; i += 64)
        for (int j = 0; j < 8; j++)
            s[j] = _mm256_add_ps(s[j], _mm256_load_ps(b + i + 8 * j));
    for (int j = 1; j < 8; j++)
        s[0] = _mm256_add_ps(s[0], s[j]);
    float t[8];
    _mm256_storeu_ps(t, s[0]);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static float sum_portable(const float *b, size_t n)
{
    float s[16] = {0};
    for (size_t i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            s[j] += b[i + j];
    float t = 0;
    for (int j = 0; j < 16; j++)
        t += s[j];
    return t;
}

static const char *memread_how;

static float sum_buffer(const float *b, size_t n)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        memread_how = "AVX2 (8 accumulators)";
        return sum_avx2(b, n);
    }
#endif
    memread_how = "portable (16 accumulators)";
    return sum_portable(b, n);
}

/* ---- figures ------------------------------------------------------------ */

struct series {
    double *v;
    size_t n;
    double total; /* seconds */
};

static void series_add(struct series *s, double x)
{
    s->v[s->n++] = x;
    s->total += x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (nearest rank) of the values. */
static double quantile(const struct series *s, double q)
{
    if (s->n == 0) return 0;
    double *t = malloc(s->n * sizeof *t);
    memcpy(t, s->v, s->n * sizeof *t);
    qsort(t, s->n, sizeof *t, cmp_double);
    size_t i = (size_t)ceil(q * (double)s->n);
    double r = t[i > 0 ? i - 1 : 0];
    free(t);
    return r;
}

static double max_of(const struct series *s)
{
    double m = 0;
    for (size_t i = 0; i < s->n; i++)
        m = s->v[i] > m ? s->v[i] : m;
    return m;
}

/* ---- the run ------------------------------------------------------------ */

static void die(const char *msg)
{
    fprintf(stderr, "search_bench: %s\n", msg);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: search_bench [--chunks N] [--dim D] [--per-rec N] [--queries N] "
                    "[--check N] [--k N] [--slice N] [--memread-mib N]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct {
        const char *name;
        size_t *value;
    } opts[] = {
        {"--chunks", &n_chunks}, {"--dim", &dim},
        {"--per-rec", &per_rec}, {"--queries", &n_queries},
        {"--check", &n_check},   {"--k", &top_k},
        {"--slice", &slice},     {"--memread-mib", &memread_mib},
    };
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) usage();
        char *end;
        unsigned long long v = strtoull(argv[i + 1], &end, 10);
        if (*end || v == 0) usage();
        size_t j = 0;
        while (j < sizeof opts / sizeof *opts && strcmp(argv[i], opts[j].name) != 0)
            j++;
        if (j == sizeof opts / sizeof *opts) usage();
        *opts[j].value = (size_t)v;
    }
    if (n_check > n_queries) n_check = n_queries;
    if (top_k > VINDEX_MAX_K || top_k > n_chunks) usage();
}

static struct vindex *build_index(void)
{
    struct vindex *vi = vindex_new(dim, (size_t)8 << 30);
    if (!vi || vindex_org_create(vi, ORG) < 0) die("vindex_new failed");
    float *vecs = malloc(per_rec * dim * sizeof *vecs);
    char(*ids)[37] = malloc(per_rec * sizeof *ids);
    const char **idp = malloc(per_rec * sizeof *idp);
    if (!vecs || !ids || !idp) die("out of memory");
    for (size_t first = 0, r = 0; first < n_chunks; first += per_rec, r++) {
        size_t n = n_chunks - first < per_rec ? n_chunks - first : per_rec;
        for (size_t j = 0; j < n; j++) {
            gen_vec(0, first + j, vecs + j * dim);
            uuid_of(2, first + j, ids[j]);
            idp[j] = ids[j];
        }
        char rec[37];
        uuid_of(1, r, rec);
        if (vindex_put_recording(vi, ORG, rec, n, idp, vecs) != 0) die("put failed");
    }
    vindex_org_set_loaded(vi, ORG);
    free(vecs);
    free(ids);
    free(idp);
    return vi;
}

/* The true top-k of each check query: double precision over the raw
 * vectors, regenerated. ref[c * top_k + i] = chunk index. */
static size_t *reference(const float *queries)
{
    size_t *ref = malloc(n_check * top_k * sizeof *ref);
    double *best = malloc(n_check * top_k * sizeof *best);
    double *qn = malloc(n_check * sizeof *qn);
    float *v = malloc(dim * sizeof *v);
    if (!ref || !best || !qn || !v) die("out of memory");
    for (size_t c = 0; c < n_check; c++) {
        double s = 0;
        for (size_t d = 0; d < dim; d++)
            s += (double)queries[c * dim + d] * queries[c * dim + d];
        qn[c] = sqrt(s);
        for (size_t i = 0; i < top_k; i++)
            best[c * top_k + i] = -INFINITY;
    }
    for (size_t i = 0; i < n_chunks; i++) {
        gen_vec(0, i, v);
        double vn = 0;
        for (size_t d = 0; d < dim; d++)
            vn += (double)v[d] * v[d];
        vn = sqrt(vn);
        for (size_t c = 0; c < n_check; c++) {
            const float *q = queries + c * dim;
            double s = 0;
            for (size_t d = 0; d < dim; d++)
                s += (double)v[d] * q[d];
            s /= vn * qn[c];
            double *b = best + c * top_k;
            size_t *r = ref + c * top_k;
            if (s <= b[top_k - 1]) continue;
            size_t p = top_k - 1;
            while (p > 0 && b[p - 1] < s) {
                b[p] = b[p - 1];
                r[p] = r[p - 1];
                p--;
            }
            b[p] = s;
            r[p] = i;
        }
    }
    free(best);
    free(qn);
    free(v);
    return ref;
}

/* Matches of the reference found in one result list. */
static size_t hits(const size_t *ref, const struct vindex_match *m, size_t n)
{
    size_t h = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < top_k; j++)
            if (index_of(m[i].chunk_id) == ref[j]) h++;
    return h;
}

/* Wall-clock and thread CPU time of one measured piece. */
struct clock2 {
    double wall, cpu;
};

static struct clock2 clock2_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (struct clock2){now(), (double)t.tv_sec + (double)t.tv_nsec * 1e-9};
}

/* Durations of a series of pieces, both clocks. */
struct timing {
    struct series wall, cpu;
};

static void timing_init(struct timing *t, size_t cap)
{
    t->wall = (struct series){malloc(cap * sizeof(double)), 0, 0};
    t->cpu = (struct series){malloc(cap * sizeof(double)), 0, 0};
    if (!t->wall.v || !t->cpu.v) die("out of memory");
}

static void timing_add(struct timing *t, struct clock2 a)
{
    struct clock2 b = clock2_now();
    series_add(&t->wall, b.wall - a.wall);
    series_add(&t->cpu, b.cpu - a.cpu);
}

static void timing_free(struct timing *t)
{
    free(t->wall.v);
    free(t->cpu.v);
}

struct kernel_run {
    const char *name;
    vindex_kernel_fn fn;
    size_t step; /* 0: vindex_search; else vectors per vindex_search_step */
    struct timing q;
    struct timing slices;
    size_t hits;
    size_t checked;
};

static void run_query(struct vindex *vi, struct kernel_run *k, const float *queries, size_t qi,
                      const size_t *ref)
{
    struct vindex_match m[VINDEX_MAX_K];
    const float *q = queries + qi * dim;
    size_t got = 0;
    vindex_set_kernel(vi, k->fn);
    struct clock2 t0 = clock2_now();
    if (k->step == 0) {
        if (vindex_search(vi, ORG, q, top_k, NULL, m, &got) != 0) die("search failed");
    } else {
        struct vindex_cursor *c;
        if (vindex_search_start(vi, ORG, q, top_k, NULL, &c) != 0) die("search failed");
        int more;
        do {
            struct clock2 s0 = clock2_now();
            more = vindex_search_step(c, k->step);
            timing_add(&k->slices, s0);
        } while (more);
        got = vindex_search_results(c, m, top_k);
        vindex_search_end(c);
    }
    timing_add(&k->q, t0);
    if (got != top_k) die("short result");
    if (qi < n_check) {
        k->hits += hits(ref + qi * top_k, m, got);
        k->checked += top_k;
    }
}

/* GB/s of a piece of gb gigabytes at the q-quantile of a duration series
 * (q = 0: the fastest piece). */
static double rate(double gb, const struct series *s, double q)
{
    return gb / quantile(s, q);
}

static void report_kernel(const struct kernel_run *k, double gb, const struct timing *mem,
                          double mem_gb)
{
    const struct timing *t = &k->q;
    printf("kernel %s: %zu queries, %.1f queries/s wall (%.1f per CPU-second), p50 %.1f ms, "
           "p99 %.1f ms wall; recall@%zu %.4f (%zu/%zu)\n",
           k->name, t->wall.n, (double)t->wall.n / t->wall.total, (double)t->cpu.n / t->cpu.total,
           quantile(&t->wall, 0.5) * 1e3, quantile(&t->wall, 0.99) * 1e3, top_k,
           k->checked ? (double)k->hits / (double)k->checked : 0.0, k->hits, k->checked);
    printf("  scan GB/s, CPU time: median %.2f, best %.2f; wall: median %.2f, best %.2f\n",
           rate(gb, &t->cpu, 0.5), rate(gb, &t->cpu, 0), rate(gb, &t->wall, 0.5),
           rate(gb, &t->wall, 0));
    printf("  ratio to memory read, CPU time: median %.2f, best %.2f; wall: median %.2f, best "
           "%.2f\n",
           rate(gb, &t->cpu, 0.5) / rate(mem_gb, &mem->cpu, 0.5),
           rate(gb, &t->cpu, 0) / rate(mem_gb, &mem->cpu, 0),
           rate(gb, &t->wall, 0.5) / rate(mem_gb, &mem->wall, 0.5),
           rate(gb, &t->wall, 0) / rate(mem_gb, &mem->wall, 0));
    if (k->step)
        printf("  slices of %zu vectors: %zu, CPU p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", k->step,
               k->slices.cpu.n, quantile(&k->slices.cpu, 0.5) * 1e3,
               quantile(&k->slices.cpu, 0.99) * 1e3, max_of(&k->slices.cpu) * 1e3);
}

/* One call per query over a contiguous matrix: the kernels alone; the
 * fastest of nq queries, CPU time, each after a read of the buffer (not
 * timed) as in the main loop. */
static double raw_best(vindex_kernel_fn fn, const float *mat, const float *queries, size_t nq,
                       float *scores, const float *mem, size_t mem_floats)
{
    double best = INFINITY;
    for (size_t qi = 0; qi < nq; qi++) {
        scores[0] += sum_buffer(mem, mem_floats);
        struct clock2 a = clock2_now();
        fn(mat, n_chunks, dim, queries + qi * dim, scores);
        struct clock2 b = clock2_now();
        best = b.cpu - a.cpu < best ? b.cpu - a.cpu : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    openblas_set_num_threads(1);
    double gb = (double)n_chunks * (double)dim * sizeof(float) / 1e9;

    printf("openblas: %s (core %s), threads %d\n", openblas_get_config(), openblas_get_corename(),
           openblas_get_num_threads());
    printf("built-in kernel: %s\n", vindex_kernel_name());

    double t0 = now();
    struct vindex *vi = build_index();
    struct vindex_stats st;
    vindex_get_stats(vi, &st);
    printf("index: %zu chunks x %zu dims in %zu recordings of %zu; %.1f MB of float32 scanned "
           "per query (%.1f MiB); %.1f MiB held (vectors, ids, bookkeeping); built in %.1f s\n",
           st.vectors, dim, (n_chunks + per_rec - 1) / per_rec, per_rec, gb * 1e3,
           gb * 1e9 / 1048576.0, (double)st.bytes / 1048576.0, now() - t0);

    float *queries = malloc(n_queries * dim * sizeof *queries);
    if (!queries) die("out of memory");
    for (size_t i = 0; i < n_queries; i++)
        gen_vec(1, i, queries + i * dim);

    t0 = now();
    size_t *ref = reference(queries);
    printf("reference: top-%zu of %zu queries in double precision over the raw vectors (%.1f s)\n",
           top_k, n_check, now() - t0);

    size_t mem_floats = memread_mib * 1048576 / sizeof(float);
    double mem_gb = (double)mem_floats * sizeof(float) / 1e9;
    float *mem = aligned_alloc(64, mem_floats * sizeof(float));
    if (!mem) die("out of memory");
    for (size_t i = 0; i < mem_floats; i++)
        mem[i] = (float)(i & 7);
    volatile float sink = 0;

    struct kernel_run runs[3] = {
        {.name = "builtin", .fn = NULL},
        {.name = "openblas", .fn = blas_kernel},
        {.name = "builtin-sliced", .fn = NULL, .step = slice},
    };
    for (int r = 0; r < 3; r++) {
        timing_init(&runs[r].q, n_queries);
        timing_init(&runs[r].slices, n_queries * ((n_chunks + slice - 1) / slice + 1));
    }
    struct timing mem_t;
    timing_init(&mem_t, 3 * n_queries);

    /* warm-up, not counted: one read of the buffer, one query each */
    sink += sum_buffer(mem, mem_floats);
    for (int r = 0; r < 3; r++) {
        struct vindex_match m[VINDEX_MAX_K];
        size_t got;
        vindex_set_kernel(vi, runs[r].fn);
        vindex_search(vi, ORG, queries, top_k, NULL, m, &got);
    }

    for (size_t qi = 0; qi < n_queries; qi++) {
        for (size_t j = 0; j < 3; j++) {
            struct clock2 m0 = clock2_now();
            sink += sum_buffer(mem, mem_floats);
            timing_add(&mem_t, m0);
            run_query(vi, &runs[(qi + j) % 3], queries, qi, ref);
        }
    }

    printf("memory read: %zu MiB buffer, %s sum, 1 thread, %zu passes (one before each "
           "query); GB/s, CPU time: median %.2f, best %.2f; wall: median %.2f, best %.2f\n",
           memread_mib, memread_how, mem_t.cpu.n, rate(mem_gb, &mem_t.cpu, 0.5),
           rate(mem_gb, &mem_t.cpu, 0), rate(mem_gb, &mem_t.wall, 0.5),
           rate(mem_gb, &mem_t.wall, 0));
    for (int r = 0; r < 3; r++)
        report_kernel(&runs[r], gb, &mem_t, mem_gb);

    /* the kernels alone over one contiguous matrix (no index, no top-k) */
    float *mat = aligned_alloc(64, ((n_chunks * dim * sizeof(float) + 63) & ~(size_t)63));
    float *scores = malloc(n_chunks * sizeof *scores);
    if (!mat || !scores) die("out of memory");
    for (size_t i = 0; i < n_chunks; i++)
        gen_vec(0, i, mat + i * dim);
    size_t nraw = n_queries < 20 ? n_queries : 20;
    printf("raw kernels, one call per query over one contiguous %zu x %zu matrix, fastest of %zu "
           "queries (CPU time): builtin %.2f GB/s, openblas %.2f GB/s\n",
           n_chunks, dim, nraw,
           gb / raw_best(vindex_kernel, mat, queries, nraw, scores, mem, mem_floats),
           gb / raw_best(blas_kernel, mat, queries, nraw, scores, mem, mem_floats));
    sink += scores[0];
    (void)sink;

    free(mem);
    free(mat);
    free(scores);
    free(ref);
    free(queries);
    timing_free(&mem_t);
    for (int r = 0; r < 3; r++) {
        timing_free(&runs[r].q);
        timing_free(&runs[r].slices);
    }
    vindex_free(vi);
    return 0;
}
