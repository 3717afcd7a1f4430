/* The search service (SPEC 8): the query is embedded by the configured
 * embedder (provider.h), scored against the organization's chunk vectors
 * held in memory (vindex.h), and the best chunks are read back with their
 * recording's title. Used by GET /api/search and by the assistant.
 *
 * The index is kept by this module: an organization is loaded from
 * transcript_chunks on its first search (in pages, one loop turn each),
 * then kept current by NOTIFY reeld_chunks '<org_id> <recording_id>'
 * (sent by the table's trigger, so changes made by any reeld process
 * arrive), which re-reads that recording's chunks. After the LISTEN
 * connection was lost every organization is dropped and loaded again on
 * next use, since notifications may have been missed. Memory is bounded
 * by REELD_INDEX_BUDGET_MB: idle organizations are evicted, least
 * recently used first. A search scans at most SEARCH_SLICE vectors per
 * loop turn, so a large organization never stalls the loop.
 *
 * Vectors are stored in transcript_chunks.embedding as float32,
 * little-endian, dim = REELD_EMBED_DIM; rows of another dim are skipped
 * (a changed REELD_EMBED_DIM needs the recordings re-embedded). */
#ifndef REELD_SEARCH_H
#define REELD_SEARCH_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define SEARCH_SLICE 4096
#define SEARCH_MAX_K 50
#define SEARCH_SNIPPET_BYTES 300

struct search_match {
    char recording_id[37];
    char chunk_id[37];
    const char *title;   /* valid during the callback */
    const char *snippet; /* the chunk's text cut at a word, at most SEARCH_SNIPPET_BYTES */
    const char *text;    /* the whole chunk */
    int64_t start_ms, end_ms;
    float score; /* cosine similarity */
};

/* status 0: matches[0..n) best first; otherwise an HTTP status (503 the
 * database or the embedder is unavailable, 500) and err. Called once,
 * from the loop, never inside search_query. */
typedef void (*search_cb)(void *arg, int status, const char *err,
                          const struct search_match *matches, size_t n);

struct search_req;

/* Searches org_id for q (UTF-8 text) among all its recordings, or only
 * recording scope_rec when not NULL; top_k in 1..SEARCH_MAX_K. Returns a
 * handle for search_cancel, or NULL on bad arguments (no callback). */
struct search_req *search_query(const char *org_id, const char *q, const char *scope_rec, int top_k,
                                search_cb cb, void *arg);

/* No callback after this; everything is released. */
void search_cancel(struct search_req *r);

/* Start-up (after app.db and prov_init) and shutdown (after
 * db_pool_free). */
int search_init(char *err, size_t errlen);
void search_free(void);

/* Index figures for /metrics. */
void search_metrics_render(struct evbuffer *out);

#endif
