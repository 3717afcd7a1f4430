/* Local embedder: determinism, normalization, similarity, tokenization. */
#include "reeld/embed_local.h"
#include "t.h"

#include <math.h>

#define DIM 1536

static float va[DIM], vb[DIM], vc[DIM];

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static int emb(const char *s, float *out)
{
    return embed_local(s, strlen(s), out, DIM);
}

static void test_same_text_gives_the_same_vector(void)
{
    const char *t = "We deploy the billing service every Tuesday after the review.";
    CHECK(emb(t, va) == 1);
    CHECK(emb(t, vb) == 1);
    CHECK(memcmp(va, vb, sizeof va) == 0);
}

static void test_vectors_have_unit_length(void)
{
    const char *texts[] = {"a", "hello world", "one two three four five six seven eight nine ten",
                           "x x x x x x x x y"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        CHECK(emb(texts[i], va) == 1);
        CHECK(fabs(dot(va, va, DIM) - 1.0) < 1e-5);
    }
}

/* Bucket positions and signs are part of the stored data's format: this
 * pins them (computed independently from the recipe in the header). */
static void test_features_land_in_fixed_buckets(void)
{
    CHECK(emb("reeld", va) == 1);
    CHECK(va[157] == -1.0f);
    CHECK(fabs(dot(va, va, DIM) - 1.0) < 1e-6);

    CHECK(emb("Hello, World!", va) == 1);
    float s = (float)(1.0 / sqrt(3.0));
    CHECK(fabsf(va[1092] + s) < 1e-6f); /* "hello" */
    CHECK(fabsf(va[1429] + s) < 1e-6f); /* "world" */
    CHECK(fabsf(va[344] - s) < 1e-6f);  /* "hello world" */
}

static void test_similar_texts_score_higher_than_unrelated_ones(void)
{
    CHECK(emb("how do we deploy the billing service to production", va) == 1);
    CHECK(emb("to deploy the billing service, run the production deploy script", vb) == 1);
    CHECK(emb("the cat sat quietly in the warm garden all afternoon", vc) == 1);
    double sim = dot(va, vb, DIM), unrel = dot(va, vc, DIM);
    CHECK(sim > 0.3);
    CHECK(sim > unrel + 0.2);
}

static void test_case_and_punctuation_do_not_matter(void)
{
    CHECK(emb("Hello, WORLD! École Привет", va) == 1);
    CHECK(emb("hello world école привет", vb) == 1);
    CHECK(memcmp(va, vb, sizeof va) == 0);
    /* an em dash, curly quotes and a no-break space separate words */
    CHECK(emb("deploy\xE2\x80\x94"
              "billing \xE2\x80\x9Cnow\xE2\x80\x9D\xC2\xA0ok",
              va) == 1);
    CHECK(emb("deploy billing now ok", vb) == 1);
    CHECK(memcmp(va, vb, sizeof va) == 0);
    /* NUL bytes inside the given length are separators too */
    CHECK(embed_local("a\0b", 3, va, DIM) == 1);
    CHECK(emb("a b", vb) == 1);
    CHECK(memcmp(va, vb, sizeof va) == 0);
}

static void test_word_order_matters_through_bigrams(void)
{
    CHECK(emb("alpha beta", va) == 1);
    CHECK(emb("beta alpha", vb) == 1);
    double c = dot(va, vb, DIM);
    CHECK(c > 0.5 && c < 0.99); /* same unigrams, different bigram */
}

static void test_term_frequency_is_sublinear(void)
{
    /* alpha x4, "alpha alpha" x3, "alpha beta" x1, beta x1 */
    static float v[EMBED_LOCAL_MAX_DIM];
    CHECK(embed_local("alpha alpha alpha alpha beta", 28, v, EMBED_LOCAL_MAX_DIM) == 1);
    float mags[8];
    size_t n = 0;
    for (size_t i = 0; i < EMBED_LOCAL_MAX_DIM; i++)
        if (v[i] != 0 && n < 8) mags[n++] = fabsf(v[i]);
    CHECK(n == 4); /* no collision among 4 features in 65536 buckets */
    if (n == 4) {
        float lo = mags[0], hi = mags[0];
        for (size_t i = 1; i < 4; i++) {
            lo = mags[i] < lo ? mags[i] : lo;
            hi = mags[i] > hi ? mags[i] : hi;
        }
        CHECK(fabs(hi / lo - (1.0 + log(4.0))) < 1e-4);
    }
}

static void test_empty_text_gives_a_zero_vector(void)
{
    float z[DIM] = {0};
    va[3] = 7;
    CHECK(embed_local("", 0, va, DIM) == 0);
    CHECK(memcmp(va, z, sizeof z) == 0);
    va[3] = 7;
    CHECK(embed_local(NULL, 0, va, DIM) == 0);
    CHECK(memcmp(va, z, sizeof z) == 0);
    CHECK(emb(" ,.;!? \xE2\x80\x94 ", va) == 0);
    CHECK(memcmp(va, z, sizeof z) == 0);
}

static void test_dims_are_respected_and_bad_arguments_refused(void)
{
    float v[10];
    for (size_t d = 1; d <= 8; d++) {
        for (size_t i = 0; i < 10; i++)
            v[i] = 42.0f;
        CHECK(embed_local("some words here and there", 25, v, d) == 1);
        CHECK(v[d] == 42.0f && v[9] == 42.0f); /* nothing written past dim */
        CHECK(fabs(dot(v, v, d) - 1.0) < 1e-5);
    }
    CHECK(embed_local("x", 1, NULL, 8) == -1);
    CHECK(embed_local("x", 1, v, 0) == -1);
    CHECK(embed_local("x", 1, v, EMBED_LOCAL_MAX_DIM + 1) == -1);
    CHECK(embed_local(NULL, 3, v, 8) == -1);
}

static void test_invalid_utf8_bytes_are_word_bytes(void)
{
    CHECK(embed_local("\xff\xfe", 2, va, DIM) == 1);
    CHECK(embed_local("\xC3(", 2, vb, DIM) == 1); /* truncated sequence */
    CHECK(fabs(dot(va, va, DIM) - 1.0) < 1e-5);
}

int main(void)
{
    TEST(test_same_text_gives_the_same_vector);
    TEST(test_vectors_have_unit_length);
    TEST(test_features_land_in_fixed_buckets);
    TEST(test_similar_texts_score_higher_than_unrelated_ones);
    TEST(test_case_and_punctuation_do_not_matter);
    TEST(test_word_order_matters_through_bigrams);
    TEST(test_term_frequency_is_sublinear);
    TEST(test_empty_text_gives_a_zero_vector);
    TEST(test_dims_are_respected_and_bad_arguments_refused);
    TEST(test_invalid_utf8_bytes_are_word_bytes);
    T_EXIT();
}
