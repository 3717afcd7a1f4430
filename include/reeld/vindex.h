/* The in-memory vector index behind search (SPEC 8): each organization's
 * chunk vectors, exact top-k by cosine, bounded memory.
 *
 * Data: an index holds organizations; an organization holds recordings;
 * a recording holds its chunks, each a chunk id and a float32 vector of
 * the index's dim. Organization, recording and chunk ids are canonical
 * UUID strings (36 characters, any case; results give them lower case).
 * Vectors are stored L2-normalized, so the score of a match is its cosine
 * with the query, in [-1, 1].
 *
 * Loading: the index never reads the database. The caller (the search
 * service) loads an organization on first use: vindex_org_create, then
 * vindex_put_recording per recording of its chunks, then
 * vindex_org_set_loaded; searches answer 1 ("not loaded") until then.
 * Changes (NOTIFY) are applied with vindex_put_recording (which replaces
 * the recording's whole chunk set, so applying one twice is harmless) and
 * vindex_remove_recording; both answer 1 and do nothing for an
 * organization that is not held, which is then loaded whole on next use.
 *
 * Memory: every byte of vectors, ids and bookkeeping held is counted
 * against budget_bytes. When a put or a create would exceed it, idle
 * organizations (no search in progress) are evicted whole, least
 * recently used first (a search or a put counts as a use), and the
 * eviction callback fires for each; if the budget still cannot be met,
 * the organization being changed is dropped too (never kept half
 * loaded) and the put answers -1. Searches in progress keep what they
 * scan alive until they end (see below), outside the count.
 *
 * CPU: a search scans every vector of the organization (or of one
 * recording with a scope); vindex_search_step bounds the work per call so
 * that a caller on the event loop can scan a large organization across
 * several loop turns (bench/run search: 4096 vectors of 1536 dims take
 * about 1 ms). A put copies its vectors; a remove or a put that replaces
 * a recording may also compact storage, copying at most 8 MiB.
 *
 * Single-threaded; no call blocks or does I/O. */
#ifndef REELD_VINDEX_H
#define REELD_VINDEX_H

#include <stddef.h>
#include <stdint.h>

struct vindex;
struct vindex_cursor;

/* Largest top_k a search accepts. */
#define VINDEX_MAX_K 1000
/* Largest dim an index accepts. */
#define VINDEX_MAX_DIM 65536
/* Largest rows a kernel is ever called with. */
#define VINDEX_BLOCK 256

struct vindex_match {
    char chunk_id[37];
    char recording_id[37];
    float score; /* cosine similarity with the query */
};

struct vindex_stats {
    size_t orgs;         /* organizations held (loaded or loading) */
    size_t vectors;      /* vectors held */
    size_t bytes;        /* counted against the budget */
    size_t vector_bytes; /* of it, vector storage: rows in use, room not yet
                            used, and rows of removed recordings not yet
                            compacted away */
    size_t budget;       /* budget_bytes */
    uint64_t evictions;  /* organizations evicted for the budget so far */
};

/* The inner-product kernel: out[r] = dot(mat[r*dim .. r*dim+dim), q) for
 * r < rows, mat being rows contiguous row-major vectors (rows <=
 * VINDEX_BLOCK). Replaceable so that a benchmark can measure another
 * implementation through the same path. */
typedef void (*vindex_kernel_fn)(const float *mat, size_t rows, size_t dim, const float *q,
                                 float *out);

/* Called for each organization the index evicts to meet its budget, from
 * inside the vindex call that needed the room (put or create), after the
 * organization is gone. It must not call functions of this index that
 * change it (create, put, remove, evict, search_start). */
typedef void (*vindex_evict_cb)(const char *org_id, void *arg);

/* A new empty index of dim-dimensional vectors (1 <= dim <= VINDEX_MAX_DIM)
 * holding at most budget_bytes. NULL on bad arguments or no memory. */
struct vindex *vindex_new(size_t dim, size_t budget_bytes);

/* Frees the index and everything it holds. Cursors still open stay valid
 * (they own what they scan) and must still be ended with
 * vindex_search_end. NULL is fine. */
void vindex_free(struct vindex *vi);

/* Sets (or with cb NULL clears) the eviction callback. */
void vindex_set_evict_cb(struct vindex *vi, vindex_evict_cb cb, void *arg);

/* Sets the kernel used by searches started from now on; NULL restores
 * the built-in one (vindex_kernel). */
void vindex_set_kernel(struct vindex *vi, vindex_kernel_fn fn);

/* The built-in kernel: hand-written AVX2/FMA when the CPU has both, else a
 * portable loop (see the measurement in vindex.c for why it is not a BLAS
 * call). */
void vindex_kernel(const float *mat, size_t rows, size_t dim, const float *q, float *out);

/* "avx2-fma" or "portable": what vindex_kernel runs on this CPU. */
const char *vindex_kernel_name(void);

/* ---- organizations ----------------------------------------------------- */

/* Holds org_id (empty, not loaded) if it is not held yet; a use in the LRU
 * order either way. Returns 0, or -1 on a bad id, no memory, or when even
 * an empty organization does not fit the budget. */
int vindex_org_create(struct vindex *vi, const char *org_id);

/* Marks a held organization as completely loaded: searches may run.
 * Returns 0, or -1 when it is not held. */
int vindex_org_set_loaded(struct vindex *vi, const char *org_id);

/* 1 when org_id is held and loaded, else 0. No LRU effect. */
int vindex_org_loaded(const struct vindex *vi, const char *org_id);

/* Drops org_id and all its vectors (the callback does not fire). Returns
 * 0, or -1 when it is not held. */
int vindex_evict(struct vindex *vi, const char *org_id);

/* Vectors held for org_id (0 when not held). */
size_t vindex_org_vectors(const struct vindex *vi, const char *org_id);

/* Counters for metrics. */
void vindex_get_stats(const struct vindex *vi, struct vindex_stats *st);

/* ---- recordings -------------------------------------------------------- */

/* Sets the chunks of rec_id in a held organization to n chunks: chunk_ids
 * [0..n) and vectors (n * dim floats, row after row, copied and
 * normalized; an all-zero vector stays zero and scores 0). Replaces what
 * the recording had; n == 0 removes it. Returns 0 on success; 1 when the
 * organization is not held (nothing done); -1 on a bad id, a non-finite
 * vector component, no memory (the organization is unchanged), or when
 * the budget cannot be met (the organization is then dropped, see the
 * top of this file). */
int vindex_put_recording(struct vindex *vi, const char *org_id, const char *rec_id, size_t n,
                         const char *const *chunk_ids, const float *vectors);

/* Removes rec_id's chunks from a held organization. Returns 0 (also when
 * the recording had none), 1 when the organization is not held, -1 on a
 * bad id. */
int vindex_remove_recording(struct vindex *vi, const char *org_id, const char *rec_id);

/* ---- search ------------------------------------------------------------ */

/* Starts a top-k search of org_id for the query vector q (dim floats,
 * need not be normalized), over the whole organization or, when scope is
 * not NULL, over that one recording's chunks. The cursor sees the
 * organization as it is now: later puts, removes and evictions do not
 * change what it scans (it holds references to the vectors), and the
 * organization is not evicted for the budget while the cursor is open.
 * An all-zero query matches nothing (the cursor is done at once with no
 * results); so does a scope the organization does not hold.
 * Returns 0 with *out set; 1 when the organization is not held or not
 * loaded (*out NULL: load it, then start again); -1 on a bad id, k outside
 * 1..VINDEX_MAX_K, a non-finite query component, or no memory. */
int vindex_search_start(struct vindex *vi, const char *org_id, const float *q, size_t k,
                        const char *scope, struct vindex_cursor **out);

/* Scores at most max_vectors more vectors (0 is taken as 1). Returns 1
 * while vectors remain, 0 when the scan is complete. */
int vindex_search_step(struct vindex_cursor *c, size_t max_vectors);

/* The best matches among the vectors scanned so far, best first (ties in
 * scan order), at most cap and at most k of them, into out. Returns how
 * many. */
size_t vindex_search_results(const struct vindex_cursor *c, struct vindex_match *out, size_t cap);

/* Ends a search at any point (a finished one or a cancelled one) and
 * frees the cursor. NULL is fine. */
void vindex_search_end(struct vindex_cursor *c);

/* The whole search in one call: start, scan everything, results into out
 * (which holds k matches), end. Returns 0 with *nout set, or 1 / -1 as
 * vindex_search_start. Its CPU time grows with the organization's size:
 * the loop should use the cursor calls for large organizations. */
int vindex_search(struct vindex *vi, const char *org_id, const float *q, size_t k,
                  const char *scope, struct vindex_match *out, size_t *nout);

#endif
