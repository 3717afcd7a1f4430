/* Vector index: exact top-k, scope, replace/remove, cursors, budget. */
#include "reeld/vindex.h"
#include "t.h"

#include <math.h>
#include <stdint.h>

#define DIM 24
#define MB (1024 * 1024)

static const char *ORG_A = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *ORG_B = "bbbbbbbb-0000-4000-8000-000000000002";
static const char *ORG_C = "cccccccc-0000-4000-8000-000000000003";
static const char *ORG_D = "dddddddd-0000-4000-8000-000000000004";

static uint64_t rng = 88172645463325252ULL;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void rec_id(int r, char out[37])
{
    snprintf(out, 37, "%08x-1111-4111-8111-%012x", (unsigned)r, (unsigned)r);
}

static void chunk_id(int r, int i, char out[37])
{
    snprintf(out, 37, "%08x-2222-4222-8222-%012x", (unsigned)r, (unsigned)i);
}

/* A recording r of n random chunks; its vectors are kept in vecs. */
struct rec {
    char id[37];
    char cid[64][37];
    const char *cids[64];
    float vecs[64 * DIM];
    size_t n;
};

static void make_rec(struct rec *r, int num, size_t n)
{
    rec_id(num, r->id);
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        chunk_id(num, (int)i, r->cid[i]);
        r->cids[i] = r->cid[i];
        for (size_t d = 0; d < DIM; d++)
            r->vecs[i * DIM + d] = frand();
    }
}

static int put(struct vindex *vi, const char *org, const struct rec *r)
{
    return vindex_put_recording(vi, org, r->id, r->n, r->cids, r->vecs);
}

static double cosine(const float *a, const float *b)
{
    double s = 0, na = 0, nb = 0;
    for (size_t i = 0; i < DIM; i++) {
        s += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    return s / sqrt(na * nb);
}

static struct rec recs[8];

/* An org with 8 recordings of 10..45 chunks. */
static struct vindex *make_index(void)
{
    struct vindex *vi = vindex_new(DIM, 64 * MB);
    vindex_org_create(vi, ORG_A);
    for (int r = 0; r < 8; r++) {
        make_rec(&recs[r], r, 10 + (size_t)r * 5);
        put(vi, ORG_A, &recs[r]);
    }
    vindex_org_set_loaded(vi, ORG_A);
    return vi;
}

/* Brute force: rank of every chunk by cosine, best k into ids/scores. */
static size_t brute(const float *q, const char *scope, size_t k, char ids[][37], double *scores)
{
    size_t n = 0;
    for (int r = 0; r < 8; r++) {
        if (scope && strcmp(scope, recs[r].id) != 0) continue;
        for (size_t i = 0; i < recs[r].n; i++) {
            double s = cosine(q, recs[r].vecs + i * DIM);
            size_t pos = n < k ? n++ : k;
            while (pos > 0 && scores[pos - 1] < s) {
                if (pos < k) {
                    scores[pos] = scores[pos - 1];
                    memcpy(ids[pos], ids[pos - 1], 37);
                }
                pos--;
            }
            if (pos < k) {
                scores[pos] = s;
                memcpy(ids[pos], recs[r].cid[i], 37);
            }
        }
    }
    return n;
}

static void test_search_returns_the_exact_top_k_by_cosine(void)
{
    struct vindex *vi = make_index();
    CHECK(vindex_org_vectors(vi, ORG_A) == 10 + 15 + 20 + 25 + 30 + 35 + 40 + 45);
    for (int t = 0; t < 20; t++) {
        float q[DIM];
        for (size_t d = 0; d < DIM; d++)
            q[d] = frand() * 3.0f; /* not normalized on purpose */
        struct vindex_match m[10];
        size_t n = 0;
        CHECK(vindex_search(vi, ORG_A, q, 10, NULL, m, &n) == 0);
        char ids[10][37];
        double sc[10];
        size_t bn = brute(q, NULL, 10, ids, sc);
        CHECK(n == 10 && bn == 10);
        for (size_t i = 0; i < n && i < bn; i++) {
            CHECK_STR(m[i].chunk_id, ids[i]);
            CHECK(fabs(m[i].score - sc[i]) < 1e-5);
            if (i > 0) CHECK(m[i].score <= m[i - 1].score);
        }
    }
    vindex_free(vi);
}

static void test_scope_limits_the_search_to_one_recording(void)
{
    struct vindex *vi = make_index();
    float q[DIM];
    for (size_t d = 0; d < DIM; d++)
        q[d] = frand();
    struct vindex_match m[50];
    size_t n = 0;
    CHECK(vindex_search(vi, ORG_A, q, 50, recs[3].id, m, &n) == 0);
    CHECK(n == recs[3].n);
    char ids[50][37];
    double sc[50];
    size_t bn = brute(q, recs[3].id, 50, ids, sc);
    CHECK(bn == n);
    for (size_t i = 0; i < n; i++) {
        CHECK_STR(m[i].recording_id, recs[3].id);
        CHECK_STR(m[i].chunk_id, ids[i]);
    }
    /* a recording the org does not have: no matches */
    CHECK(vindex_search(vi, ORG_A, q, 5, "99999999-1111-4111-8111-000000000099", m, &n) == 0);
    CHECK(n == 0);
    vindex_free(vi);
}

static void test_fewer_vectors_than_k_returns_them_all(void)
{
    struct vindex *vi = vindex_new(DIM, MB);
    vindex_org_create(vi, ORG_B);
    vindex_org_set_loaded(vi, ORG_B);
    struct vindex_match m[10];
    size_t n = 5;
    float q[DIM] = {1};
    CHECK(vindex_search(vi, ORG_B, q, 10, NULL, m, &n) == 0 && n == 0); /* empty org */
    struct rec *r = &recs[0];
    make_rec(r, 0, 3);
    CHECK(put(vi, ORG_B, r) == 0);
    CHECK(vindex_search(vi, ORG_B, q, 10, NULL, m, &n) == 0 && n == 3);
    vindex_free(vi);
}

static void test_put_replaces_a_recording_and_remove_deletes_it(void)
{
    struct vindex *vi = make_index();
    size_t total = vindex_org_vectors(vi, ORG_A);
    struct vindex_stats st;
    CHECK(put(vi, ORG_A, &recs[2]) == 0); /* the same again: no duplicates */
    CHECK(vindex_org_vectors(vi, ORG_A) == total);
    vindex_get_stats(vi, &st);
    CHECK(st.vectors == total);

    /* fewer chunks now: the old ones are gone */
    size_t old_n = recs[2].n;
    recs[2].n = 4;
    CHECK(put(vi, ORG_A, &recs[2]) == 0);
    CHECK(vindex_org_vectors(vi, ORG_A) == total - old_n + 4);
    float q[DIM];
    memcpy(q, recs[2].vecs + 8 * DIM, sizeof q); /* chunk 8 of the old set */
    struct vindex_match m[1];
    size_t n;
    CHECK(vindex_search(vi, ORG_A, q, 1, NULL, m, &n) == 0 && n == 1);
    CHECK(strcmp(m[0].chunk_id, recs[2].cid[8]) != 0);

    CHECK(vindex_remove_recording(vi, ORG_A, recs[2].id) == 0);
    CHECK(vindex_org_vectors(vi, ORG_A) == total - old_n);
    CHECK(vindex_remove_recording(vi, ORG_A, recs[2].id) == 0); /* absent: fine */
    CHECK(vindex_search(vi, ORG_A, q, 50, recs[2].id, (struct vindex_match[50]){0}, &n) == 0);
    CHECK(n == 0);
    /* put with n == 0 removes too */
    CHECK(vindex_put_recording(vi, ORG_A, recs[3].id, 0, NULL, NULL) == 0);
    CHECK(vindex_org_vectors(vi, ORG_A) == total - old_n - recs[3].n);
    vindex_free(vi);
}

static void test_an_org_not_held_or_not_loaded_is_reported(void)
{
    struct vindex *vi = vindex_new(DIM, MB);
    make_rec(&recs[0], 0, 2);
    float q[DIM] = {1};
    struct vindex_match m[1];
    size_t n;
    struct vindex_cursor *c = NULL;
    CHECK(put(vi, ORG_C, &recs[0]) == 1);
    CHECK(vindex_remove_recording(vi, ORG_C, recs[0].id) == 1);
    CHECK(vindex_search(vi, ORG_C, q, 1, NULL, m, &n) == 1);
    CHECK(vindex_search_start(vi, ORG_C, q, 1, NULL, &c) == 1 && c == NULL);
    CHECK(!vindex_org_loaded(vi, ORG_C));
    CHECK(vindex_org_set_loaded(vi, ORG_C) == -1);
    CHECK(vindex_evict(vi, ORG_C) == -1);

    CHECK(vindex_org_create(vi, ORG_C) == 0);
    CHECK(put(vi, ORG_C, &recs[0]) == 0); /* loading */
    CHECK(!vindex_org_loaded(vi, ORG_C));
    CHECK(vindex_search(vi, ORG_C, q, 1, NULL, m, &n) == 1);
    CHECK(vindex_org_set_loaded(vi, ORG_C) == 0);
    CHECK(vindex_org_loaded(vi, ORG_C));
    CHECK(vindex_search(vi, ORG_C, q, 1, NULL, m, &n) == 0 && n == 1);
    CHECK(vindex_org_create(vi, ORG_C) == 0); /* again: kept as it is */
    CHECK(vindex_org_loaded(vi, ORG_C) && vindex_org_vectors(vi, ORG_C) == 2);

    CHECK(vindex_evict(vi, ORG_C) == 0);
    CHECK(!vindex_org_loaded(vi, ORG_C) && vindex_org_vectors(vi, ORG_C) == 0);
    vindex_free(vi);
}

static void test_bad_input_is_refused_without_change(void)
{
    struct vindex *vi = make_index();
    size_t total = vindex_org_vectors(vi, ORG_A);
    float q[DIM] = {1};
    struct vindex_match m[2];
    size_t n;
    struct vindex_cursor *c;
    CHECK(vindex_new(0, MB) == NULL);
    CHECK(vindex_new(VINDEX_MAX_DIM + 1, MB) == NULL);
    CHECK(vindex_org_create(vi, "not-a-uuid") == -1);
    CHECK(vindex_org_create(vi, NULL) == -1);
    CHECK(vindex_org_create(vi, "aaaaaaaa-0000-4000-8000-0000000000012") == -1); /* too long */
    CHECK(vindex_org_create(vi, "aaaaaaaa-0000-4000-8000-00000000000g") == -1);
    CHECK(vindex_search(vi, ORG_A, q, 0, NULL, m, &n) == -1);
    CHECK(vindex_search(vi, ORG_A, q, VINDEX_MAX_K + 1, NULL, m, &n) == -1);
    CHECK(vindex_search(vi, ORG_A, NULL, 1, NULL, m, &n) == -1);
    CHECK(vindex_search(vi, ORG_A, q, 1, "nope", m, &n) == -1);
    CHECK(vindex_search(vi, "nope", q, 1, NULL, m, &n) == -1);
    CHECK(vindex_search_start(vi, ORG_A, q, 1, NULL, NULL) == -1);
    q[5] = NAN;
    CHECK(vindex_search(vi, ORG_A, q, 1, NULL, m, &n) == -1);
    q[5] = INFINITY;
    CHECK(vindex_search_start(vi, ORG_A, q, 1, NULL, &c) == -1);

    struct rec *r = &recs[7];
    float saved = r->vecs[3];
    r->vecs[3] = NAN;
    CHECK(put(vi, ORG_A, r) == -1);
    r->vecs[3] = saved;
    r->cid[1][3] = 'x';
    CHECK(put(vi, ORG_A, r) == -1);
    CHECK(vindex_put_recording(vi, ORG_A, r->id, 2, NULL, r->vecs) == -1);
    CHECK(vindex_put_recording(vi, ORG_A, "bad", 2, r->cids, r->vecs) == -1);
    CHECK(vindex_put_recording(vi, "bad", r->id, 2, r->cids, r->vecs) == -1);
    CHECK(vindex_remove_recording(vi, ORG_A, "bad") == -1);
    CHECK(vindex_org_vectors(vi, ORG_A) == total);
    /* the refused put left recording 7 as it was */
    memcpy(q, r->vecs, sizeof q);
    CHECK(vindex_search(vi, ORG_A, q, 1, NULL, m, &n) == 0 && n == 1);
    CHECK_STR(m[0].chunk_id, r->cids[0]);
    CHECK(m[0].score > 0.9999f);
    vindex_free(vi);
}

static void test_zero_vectors_match_nothing_and_score_zero(void)
{
    struct vindex *vi = make_index();
    float q[DIM] = {0};
    struct vindex_match m[5];
    size_t n = 9;
    CHECK(vindex_search(vi, ORG_A, q, 5, NULL, m, &n) == 0 && n == 0);

    struct rec *r = &recs[0];
    memset(r->vecs, 0, sizeof r->vecs);
    r->n = 1;
    CHECK(put(vi, ORG_A, r) == 0);
    q[0] = 1;
    CHECK(vindex_search(vi, ORG_A, q, 5, r->id, m, &n) == 0 && n == 1);
    CHECK(m[0].score == 0.0f);
    vindex_free(vi);
}

static void test_ids_come_back_lower_case(void)
{
    struct vindex *vi = vindex_new(DIM, MB);
    CHECK(vindex_org_create(vi, "ABCDEF01-0000-4000-8000-00000000000A") == 0);
    CHECK(vindex_org_set_loaded(vi, "abcdef01-0000-4000-8000-00000000000a") == 0);
    const char *cid = "CAFEBABE-2222-4222-8222-0000000000FF";
    float v[DIM] = {1};
    CHECK(vindex_put_recording(vi, "abcdef01-0000-4000-8000-00000000000a",
                               "DEADBEEF-1111-4111-8111-0000000000AA", 1, &cid, v) == 0);
    struct vindex_match m[1];
    size_t n;
    CHECK(vindex_search(vi, "ABCDEF01-0000-4000-8000-00000000000A", v, 1, NULL, m, &n) == 0);
    CHECK(n == 1);
    CHECK_STR(m[0].chunk_id, "cafebabe-2222-4222-8222-0000000000ff");
    CHECK_STR(m[0].recording_id, "deadbeef-1111-4111-8111-0000000000aa");
    CHECK(fabsf(m[0].score - 1.0f) < 1e-6f);
    vindex_free(vi);
}

static void test_ties_are_ranked_in_scan_order(void)
{
    struct vindex *vi = vindex_new(DIM, MB);
    vindex_org_create(vi, ORG_B);
    vindex_org_set_loaded(vi, ORG_B);
    struct rec *r = &recs[0];
    make_rec(r, 0, 6);
    for (size_t i = 1; i < 6; i++)
        memcpy(r->vecs + i * DIM, r->vecs, DIM * sizeof(float));
    CHECK(put(vi, ORG_B, r) == 0);
    struct vindex_match m[4];
    size_t n;
    CHECK(vindex_search(vi, ORG_B, r->vecs, 4, NULL, m, &n) == 0 && n == 4);
    for (size_t i = 0; i < n; i++)
        CHECK_STR(m[i].chunk_id, r->cid[i]);
    vindex_free(vi);
}

static void test_many_recordings_stay_findable_through_removals(void)
{
    struct vindex *vi = vindex_new(DIM, 64 * MB);
    vindex_org_create(vi, ORG_A);
    vindex_org_set_loaded(vi, ORG_A);
    static struct rec r;
    make_rec(&r, 0, 2);
    char id[37];
    for (int i = 0; i < 600; i++) {
        rec_id(1000 + i, r.id);
        CHECK(put(vi, ORG_A, &r) == 0);
    }
    for (int i = 0; i < 600; i += 3) {
        rec_id(1000 + i, id);
        CHECK(vindex_remove_recording(vi, ORG_A, id) == 0);
    }
    CHECK(vindex_org_vectors(vi, ORG_A) == 400 * 2);
    struct vindex_match m[2];
    size_t n;
    int ok = 1;
    for (int i = 0; i < 600; i++) {
        rec_id(1000 + i, id);
        if (vindex_search(vi, ORG_A, r.vecs, 2, id, m, &n) != 0) ok = 0;
        if (n != (i % 3 ? 2u : 0u)) ok = 0;
    }
    CHECK(ok);
    /* many orgs too */
    char org[37];
    for (int i = 0; i < 300; i++) {
        snprintf(org, sizeof org, "%08x-0000-4000-8000-000000000000", (unsigned)i);
        CHECK(vindex_org_create(vi, org) == 0);
    }
    for (int i = 0; i < 300; i += 2) {
        snprintf(org, sizeof org, "%08x-0000-4000-8000-000000000000", (unsigned)i);
        CHECK(vindex_evict(vi, org) == 0);
    }
    ok = 1;
    for (int i = 0; i < 300; i++) {
        snprintf(org, sizeof org, "%08x-0000-4000-8000-000000000000", (unsigned)i);
        if (vindex_org_set_loaded(vi, org) != (i % 2 ? 0 : -1)) ok = 0;
    }
    CHECK(ok);
    struct vindex_stats st;
    vindex_get_stats(vi, &st);
    CHECK(st.orgs == 151 && st.vectors == 800);
    vindex_free(vi);
}

/* 40 recordings of 10 chunks fill slabs of 10, 10, 20, 40, 80, 160 and
 * 320 rows (each new slab as large as the org so far); recordings 8..15
 * share the 80-row slab. */
static struct rec many[40];

static void test_removals_compact_slabs_and_release_their_memory(void)
{
    struct vindex *vi = vindex_new(DIM, 64 * MB);
    vindex_org_create(vi, ORG_A);
    vindex_org_set_loaded(vi, ORG_A);
    for (int r = 0; r < 40; r++) {
        make_rec(&many[r], 500 + r, 10);
        CHECK(put(vi, ORG_A, &many[r]) == 0);
    }
    struct vindex_stats st0, st1, st2;
    vindex_get_stats(vi, &st0);
    CHECK(st0.vectors == 400 && st0.vector_bytes >= 640 * DIM * sizeof(float));
    CHECK(st0.bytes > st0.vector_bytes);

    /* a paused search must survive the compaction below */
    struct vindex_cursor *c;
    CHECK(vindex_search_start(vi, ORG_A, many[14].vecs, 3, NULL, &c) == 0);
    CHECK(vindex_search_step(c, 25) == 1);

    /* half of the 80-row slab gone: kept as it is */
    for (int r = 8; r < 12; r++)
        CHECK(vindex_remove_recording(vi, ORG_A, many[r].id) == 0);
    vindex_get_stats(vi, &st1);
    CHECK(st1.vector_bytes == st0.vector_bytes);
    /* below half: 13..15 move to the last slab (which has room) and the
     * 80-row slab is released */
    CHECK(vindex_remove_recording(vi, ORG_A, many[12].id) == 0);
    vindex_get_stats(vi, &st2);
    CHECK(st2.vector_bytes + 80 * DIM * sizeof(float) <= st1.vector_bytes);
    CHECK(st2.vectors == 400 - 50);

    while (vindex_search_step(c, 25))
        ;
    struct vindex_match m[3];
    CHECK(vindex_search_results(c, m, 3) == 3);
    CHECK_STR(m[0].chunk_id, many[14].cids[0]);
    vindex_search_end(c);

    /* every remaining recording, moved or not, still finds itself */
    int ok = 1;
    size_t n;
    for (int r = 0; r < 40; r++) {
        if (r >= 8 && r <= 12) continue;
        for (size_t i = 0; i < 10; i += 9) {
            if (vindex_search(vi, ORG_A, many[r].vecs + i * DIM, 1, many[r].id, m, &n) != 0 ||
                n != 1 || strcmp(m[0].chunk_id, many[r].cids[i]) != 0 || m[0].score < 0.9999f)
                ok = 0;
        }
    }
    CHECK(ok);
    CHECK(vindex_search(vi, ORG_A, many[14].vecs, 1, NULL, m, &n) == 0 && n == 1);
    CHECK_STR(m[0].chunk_id, many[14].cids[0]);

    /* replacing a recording many times does not grow memory without end */
    for (int k = 0; k < 200; k++)
        CHECK(put(vi, ORG_A, &many[20]) == 0);
    vindex_get_stats(vi, &st1);
    CHECK(st1.vectors == 350);
    CHECK(st1.vector_bytes <= 2 * st0.vector_bytes);

    /* everything removed: every slab released */
    for (int r = 0; r < 40; r++)
        CHECK(vindex_remove_recording(vi, ORG_A, many[r].id) == 0);
    vindex_get_stats(vi, &st1);
    CHECK(st1.vectors == 0 && st1.vector_bytes == 0);
    vindex_free(vi);
}

static void test_sliced_scan_equals_the_full_search(void)
{
    struct vindex *vi = make_index();
    size_t total = vindex_org_vectors(vi, ORG_A);
    float q[DIM];
    for (size_t d = 0; d < DIM; d++)
        q[d] = frand();
    struct vindex_match full[20], part[20];
    size_t nf, np;
    CHECK(vindex_search(vi, ORG_A, q, 20, NULL, full, &nf) == 0 && nf == 20);
    struct vindex_cursor *c;
    CHECK(vindex_search_start(vi, ORG_A, q, 20, NULL, &c) == 0);
    size_t calls = 0;
    while (vindex_search_step(c, 7))
        calls++;
    calls++;
    CHECK(calls == (total + 6) / 7);
    CHECK(vindex_search_step(c, 7) == 0); /* done stays done */
    np = vindex_search_results(c, part, 20);
    CHECK(np == 20);
    for (size_t i = 0; i < np; i++) {
        CHECK_STR(part[i].chunk_id, full[i].chunk_id);
        CHECK(part[i].score == full[i].score);
    }
    CHECK(vindex_search_results(c, part, 3) == 3);
    vindex_search_end(c);

    /* a step of 0 still makes progress */
    CHECK(vindex_search_start(vi, ORG_A, q, 20, NULL, &c) == 0);
    size_t steps = 1;
    while (vindex_search_step(c, 0))
        steps++;
    CHECK(steps == total);
    vindex_search_end(c);
    vindex_free(vi);
}

static void test_a_paused_cursor_survives_changes_and_eviction(void)
{
    struct vindex *vi = make_index();
    float q[DIM];
    memcpy(q, recs[5].vecs + 2 * DIM, sizeof q);
    struct vindex_cursor *c;
    CHECK(vindex_search_start(vi, ORG_A, q, 3, NULL, &c) == 0);
    CHECK(vindex_search_step(c, 5) == 1);
    /* while paused: the best match's recording is removed, another
     * replaced, the whole org evicted and reloaded empty */
    CHECK(vindex_remove_recording(vi, ORG_A, recs[5].id) == 0);
    make_rec(&recs[6], 6, 12);
    CHECK(put(vi, ORG_A, &recs[6]) == 0);
    CHECK(vindex_evict(vi, ORG_A) == 0);
    CHECK(vindex_org_create(vi, ORG_A) == 0);
    while (vindex_search_step(c, 5))
        ;
    struct vindex_match m[3];
    CHECK(vindex_search_results(c, m, 3) == 3);
    CHECK_STR(m[0].chunk_id, recs[5].cid[2]); /* it scanned the snapshot */
    CHECK(m[0].score > 0.9999f);
    vindex_search_end(c);

    /* freeing the index under an open cursor is fine too */
    vindex_org_set_loaded(vi, ORG_A);
    CHECK(put(vi, ORG_A, &recs[6]) == 0);
    CHECK(vindex_search_start(vi, ORG_A, q, 3, NULL, &c) == 0);
    vindex_free(vi);
    while (vindex_search_step(c, 4))
        ;
    CHECK(vindex_search_results(c, m, 3) == 3);
    vindex_search_end(c);
}

static char evicted[8][37];
static int nevicted;

static void on_evict(const char *org, void *arg)
{
    (void)arg;
    if (nevicted < 8) snprintf(evicted[nevicted++], 37, "%s", org);
}

/* An org with one recording of 40 chunks of DIM floats. */
static int fill(struct vindex *vi, const char *org, int num)
{
    if (vindex_org_create(vi, org) < 0) return -1;
    make_rec(&recs[0], num, 40);
    int rc = put(vi, org, &recs[0]);
    if (rc == 0) vindex_org_set_loaded(vi, org);
    return rc;
}

static void test_the_least_recently_used_idle_org_is_evicted_for_the_budget(void)
{
    /* measure one org's footprint, then allow three */
    struct vindex *probe = vindex_new(DIM, 64 * MB);
    struct vindex_stats st;
    vindex_get_stats(probe, &st);
    size_t empty = st.bytes;
    fill(probe, ORG_A, 1);
    vindex_get_stats(probe, &st);
    size_t one = st.bytes - empty;
    vindex_free(probe);

    struct vindex *vi = vindex_new(DIM, empty + 3 * one + one / 2);
    vindex_set_evict_cb(vi, on_evict, NULL);
    nevicted = 0;
    CHECK(fill(vi, ORG_A, 1) == 0);
    CHECK(fill(vi, ORG_B, 2) == 0);
    CHECK(fill(vi, ORG_C, 3) == 0);
    CHECK(nevicted == 0);
    /* A is used again: B becomes the least recently used */
    float q[DIM] = {1};
    struct vindex_match m[1];
    size_t n;
    CHECK(vindex_search(vi, ORG_A, q, 1, NULL, m, &n) == 0);
    CHECK(fill(vi, ORG_D, 4) == 0);
    CHECK(nevicted == 1);
    CHECK_STR(evicted[0], ORG_B);
    CHECK(!vindex_org_loaded(vi, ORG_B));
    CHECK(vindex_org_loaded(vi, ORG_A) && vindex_org_loaded(vi, ORG_C) &&
          vindex_org_loaded(vi, ORG_D));
    vindex_get_stats(vi, &st);
    CHECK(st.bytes <= st.budget && st.orgs == 3 && st.evictions == 1 && st.vectors == 120);

    /* an org with a search in progress is not idle: C is the LRU one
     * but pinned, so A goes */
    struct vindex_cursor *c;
    CHECK(vindex_search_start(vi, ORG_C, q, 1, NULL, &c) == 0);
    CHECK(vindex_search(vi, ORG_A, q, 1, NULL, m, &n) == 0);
    CHECK(vindex_search(vi, ORG_D, q, 1, NULL, m, &n) == 0);
    CHECK(fill(vi, ORG_B, 2) == 0);
    CHECK(nevicted == 2);
    CHECK_STR(evicted[1], ORG_A);
    CHECK(vindex_org_loaded(vi, ORG_C));
    vindex_search_end(c);
    vindex_free(vi);
}

static void test_an_org_larger_than_the_budget_is_dropped_not_half_loaded(void)
{
    struct vindex *vi = vindex_new(DIM, 12 * 1024);
    vindex_set_evict_cb(vi, on_evict, NULL);
    nevicted = 0;
    CHECK(vindex_org_create(vi, ORG_A) == 0);
    make_rec(&recs[0], 1, 60);
    make_rec(&recs[1], 2, 60);
    CHECK(put(vi, ORG_A, &recs[0]) == 0); /* 60 x 24 floats: fits */
    CHECK(put(vi, ORG_A, &recs[1]) == -1);
    CHECK(nevicted == 1);
    CHECK_STR(evicted[0], ORG_A);
    CHECK(vindex_org_vectors(vi, ORG_A) == 0 && !vindex_org_loaded(vi, ORG_A));
    CHECK(put(vi, ORG_A, &recs[0]) == 1); /* gone: a later change is ignored */
    struct vindex_stats st;
    vindex_get_stats(vi, &st);
    CHECK(st.bytes <= st.budget && st.vectors == 0 && st.orgs == 0);
    /* a budget too small for even an empty org */
    struct vindex *tiny = vindex_new(DIM, 8);
    CHECK(vindex_org_create(tiny, ORG_A) == -1);
    vindex_free(tiny);
    vindex_free(vi);
}

static void test_builtin_kernel_matches_a_double_reference(void)
{
    static float mat[VINDEX_BLOCK * 1537], q[1537], out[VINDEX_BLOCK];
    size_t dims[] = {1, 7, 8, 31, 33, 64, 100, 1536, 1537};
    for (size_t t = 0; t < sizeof dims / sizeof *dims; t++) {
        size_t dim = dims[t], rows = t % 2 ? VINDEX_BLOCK : 5;
        for (size_t i = 0; i < rows * dim; i++)
            mat[i] = frand();
        for (size_t i = 0; i < dim; i++)
            q[i] = frand();
        vindex_kernel(mat, rows, dim, q, out);
        for (size_t r = 0; r < rows; r++) {
            double s = 0;
            for (size_t i = 0; i < dim; i++)
                s += (double)mat[r * dim + i] * q[i];
            CHECK(fabs(out[r] - s) < 1e-4 * (1 + sqrt((double)dim)));
        }
    }
    const char *name = vindex_kernel_name();
    CHECK(strcmp(name, "avx2-fma") == 0 || strcmp(name, "portable") == 0);
}

static size_t kernel_calls, kernel_max_rows;

static void counting_kernel(const float *mat, size_t rows, size_t dim, const float *q, float *out)
{
    kernel_calls++;
    if (rows > kernel_max_rows) kernel_max_rows = rows;
    vindex_kernel(mat, rows, dim, q, out);
}

static void test_a_replacement_kernel_is_used_in_blocks(void)
{
    struct vindex *vi = vindex_new(DIM, 64 * MB);
    vindex_org_create(vi, ORG_A);
    vindex_org_set_loaded(vi, ORG_A);
    static struct rec big;
    make_rec(&big, 1, 64);
    for (int r = 0; r < 10; r++) { /* 10 recordings of 64: 640 vectors */
        rec_id(100 + r, big.id);
        put(vi, ORG_A, &big);
    }
    vindex_set_kernel(vi, counting_kernel);
    float q[DIM] = {1};
    struct vindex_match m[3];
    size_t n;
    kernel_calls = kernel_max_rows = 0;
    CHECK(vindex_search(vi, ORG_A, q, 3, NULL, m, &n) == 0 && n == 3);
    CHECK(kernel_calls == 10 && kernel_max_rows == 64);
    vindex_set_kernel(vi, NULL);
    kernel_calls = 0;
    CHECK(vindex_search(vi, ORG_A, q, 3, NULL, m, &n) == 0);
    CHECK(kernel_calls == 0);
    vindex_free(vi);
}

int main(void)
{
    TEST(test_search_returns_the_exact_top_k_by_cosine);
    TEST(test_scope_limits_the_search_to_one_recording);
    TEST(test_fewer_vectors_than_k_returns_them_all);
    TEST(test_put_replaces_a_recording_and_remove_deletes_it);
    TEST(test_an_org_not_held_or_not_loaded_is_reported);
    TEST(test_bad_input_is_refused_without_change);
    TEST(test_zero_vectors_match_nothing_and_score_zero);
    TEST(test_ids_come_back_lower_case);
    TEST(test_ties_are_ranked_in_scan_order);
    TEST(test_many_recordings_stay_findable_through_removals);
    TEST(test_removals_compact_slabs_and_release_their_memory);
    TEST(test_sliced_scan_equals_the_full_search);
    TEST(test_a_paused_cursor_survives_changes_and_eviction);
    TEST(test_the_least_recently_used_idle_org_is_evicted_for_the_budget);
    TEST(test_an_org_larger_than_the_budget_is_dropped_not_half_loaded);
    TEST(test_builtin_kernel_matches_a_double_reference);
    TEST(test_a_replacement_kernel_is_used_in_blocks);
    T_EXIT();
}
