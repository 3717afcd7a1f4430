/* Chunker: window sizes, overlap, timestamps, coverage, sentence cuts. */
#include "reeld/chunker.h"
#include "t.h"

#include <stdint.h>

#define MAXW 2000

static struct chunker_word words[MAXW];
static char wbuf[MAXW][32];

/* n words "w0".."w(n-1)", 300 ms apart, 250 ms long; every word whose
 * index is in ends[] gets a trailing '.'. */
static void make_words(size_t n, const size_t *ends, size_t nends)
{
    for (size_t i = 0; i < n; i++) {
        int dot = 0;
        for (size_t j = 0; j < nends; j++)
            if (ends[j] == i) dot = 1;
        snprintf(wbuf[i], sizeof wbuf[i], "w%zu%s", i, dot ? "." : "");
        words[i] = (struct chunker_word){wbuf[i], (int64_t)i * 300, (int64_t)i * 300 + 250};
    }
}

static void test_no_words_gives_no_chunks(void)
{
    struct chunker_chunk *c = (struct chunker_chunk *)1;
    size_t n = 99;
    CHECK(chunker_split(words, 0, &c, &n) == 0);
    CHECK(c == NULL && n == 0);
    CHECK(chunker_split(NULL, 0, &c, &n) == 0);
    CHECK(c == NULL && n == 0);
    chunker_free(c, n);
}

static void test_only_empty_words_give_no_chunks(void)
{
    struct chunker_word w[3] = {{"", 0, 10}, {NULL, 10, 20}, {"  \t", 20, 30}};
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(w, 3, &c, &n) == 0);
    CHECK(c == NULL && n == 0);
}

static void test_bad_arguments_are_refused(void)
{
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(NULL, 5, &c, &n) == -1);
    CHECK(chunker_split(words, 5, NULL, &n) == -1);
    CHECK(chunker_split(words, 5, &c, NULL) == -1);
}

static void test_ten_words_make_one_chunk_with_their_times(void)
{
    make_words(10, NULL, 0);
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 10, &c, &n) == 0);
    CHECK(n == 1);
    if (n == 1) {
        CHECK_STR(c[0].text, "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
        CHECK(c[0].len == strlen(c[0].text));
        CHECK(c[0].idx == 0);
        CHECK(c[0].start_ms == 0 && c[0].end_ms == 9 * 300 + 250);
        CHECK(c[0].word_first == 0 && c[0].word_last == 9 && c[0].nwords == 10);
    }
    chunker_free(c, n);
}

static void test_words_are_trimmed_and_empty_ones_skipped(void)
{
    struct chunker_word w[5] = {{" Hello", 0, 100},
                                {"", 100, 150},
                                {"world. ", 150, 300},
                                {NULL, 300, 310},
                                {"\tbye", 400, 380}};
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(w, 5, &c, &n) == 0);
    CHECK(n == 1);
    if (n == 1) {
        CHECK_STR(c[0].text, "Hello world. bye");
        CHECK(c[0].nwords == 3 && c[0].word_first == 0 && c[0].word_last == 4);
        CHECK(c[0].start_ms == 0);
        CHECK(c[0].end_ms == 380);
    }
    chunker_free(c, n);

    /* an end before the chunk's start is raised to the start */
    struct chunker_word bad[1] = {{"x", 500, 100}};
    CHECK(chunker_split(bad, 1, &c, &n) == 0);
    CHECK(n == 1);
    if (n == 1) CHECK(c[0].start_ms == 500 && c[0].end_ms == 500);
    chunker_free(c, n);
}

/* Checks shared by every long input: sizes, overlap, order, coverage. */
static void check_invariants(const struct chunker_chunk *c, size_t n, size_t nwords)
{
    CHECK(n > 0);
    if (n == 0) return;
    CHECK(c[0].word_first == 0);
    CHECK(c[n - 1].word_last == nwords - 1);
    for (size_t i = 0; i < n; i++) {
        CHECK(c[i].idx == (int)i);
        CHECK(c[i].nwords == c[i].word_last - c[i].word_first + 1);
        CHECK(c[i].start_ms == words[c[i].word_first].start_ms);
        CHECK(c[i].end_ms == words[c[i].word_last].end_ms);
        CHECK(c[i].nwords >= CHUNKER_WORDS - CHUNKER_SLACK || n == 1 || i == n - 1);
        CHECK(c[i].nwords <= CHUNKER_WORDS + CHUNKER_SLACK + CHUNKER_MIN_TAIL);
        if (i > 0) {
            CHECK(c[i].start_ms > c[i - 1].start_ms);
            /* overlap: the next chunk starts inside the previous one, about
             * CHUNKER_WORDS - CHUNKER_STRIDE words before its end */
            size_t overlap = c[i - 1].word_last + 1 - c[i].word_first;
            CHECK(c[i].word_first <= c[i - 1].word_last);
            CHECK(overlap + CHUNKER_SLACK >= CHUNKER_WORDS - CHUNKER_STRIDE);
            CHECK(overlap <= CHUNKER_WORDS - CHUNKER_STRIDE + CHUNKER_SLACK);
        }
    }
    /* the last chunk brings at least CHUNKER_MIN_TAIL new words */
    if (n > 1) CHECK(c[n - 1].word_last - c[n - 2].word_last >= CHUNKER_MIN_TAIL);
}

static void test_thousand_words_without_sentences_use_nominal_windows(void)
{
    make_words(1000, NULL, 0);
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 1000, &c, &n) == 0);
    check_invariants(c, n, 1000);
    /* windows [0,200) [150,350) [300,500) ... [750,950) would leave 50 new
     * words: [900,1000) is the last one, 7 chunks in all */
    CHECK(n == 7);
    for (size_t i = 0; i + 1 < n && n == 7; i++) {
        CHECK(c[i].word_first == i * CHUNKER_STRIDE);
        CHECK(c[i].nwords == CHUNKER_WORDS);
    }
    if (n == 7) CHECK(c[6].word_first == 900 && c[6].word_last == 999);
    /* every word is in at least one chunk */
    static int seen[1000];
    memset(seen, 0, sizeof seen);
    for (size_t i = 0; i < n; i++)
        for (size_t w = c[i].word_first; w <= c[i].word_last; w++)
            seen[w] = 1;
    int all = 1;
    for (size_t w = 0; w < 1000; w++)
        all &= seen[w];
    CHECK(all);
    /* the text holds exactly the chunk's words in order */
    CHECK(strncmp(c[1].text, "w150 w151 ", 10) == 0);
    chunker_free(c, n);
}

static void test_cuts_move_to_a_nearby_sentence_end(void)
{
    /* sentence ends at word 189 (within 20 of the nominal end 200) and at
     * 139 (within 20 of the nominal next start 190 - 50 = 140); the one at
     * 260 is too far from 200 to matter for the first cut */
    size_t ends[] = {139, 189, 260};
    make_words(1000, ends, 3);
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 1000, &c, &n) == 0);
    check_invariants(c, n, 1000);
    CHECK(n >= 2);
    if (n >= 2) {
        CHECK(c[0].word_last == 189);
        CHECK(c[0].text[c[0].len - 1] == '.');
        CHECK(c[1].word_first == 140); /* starts on a sentence start */
    }
    chunker_free(c, n);
}

static void test_sentence_end_ties_take_the_later_cut_and_far_ones_are_ignored(void)
{
    /* 194 and 204 end sentences: cuts after them are 5 before and 5 after
     * the nominal 200 -> the later (205) wins */
    size_t ends[] = {194, 204};
    make_words(600, ends, 2);
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 600, &c, &n) == 0);
    check_invariants(c, n, 600);
    if (n > 0) CHECK(c[0].word_last == 204);
    chunker_free(c, n);

    size_t far[] = {150, 250};
    make_words(600, far, 2);
    CHECK(chunker_split(words, 600, &c, &n) == 0);
    if (n > 0) CHECK(c[0].word_last == 199);
    chunker_free(c, n);
}

static void test_closing_quotes_and_question_marks_end_sentences(void)
{
    make_words(600, NULL, 0);
    snprintf(wbuf[192], sizeof wbuf[192], "why?\"");
    snprintf(wbuf[205], sizeof wbuf[205], "w205,");
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 600, &c, &n) == 0);
    if (n > 0) CHECK(c[0].word_last == 192);
    chunker_free(c, n);
}

static void test_a_short_tail_is_merged_into_the_last_chunk(void)
{
    /* 240 words: a second window would bring only 40 new words */
    make_words(240, NULL, 0);
    struct chunker_chunk *c;
    size_t n;
    CHECK(chunker_split(words, 240, &c, &n) == 0);
    CHECK(n == 1);
    if (n == 1) CHECK(c[0].nwords == 240);
    chunker_free(c, n);

    /* 260 words: 60 new words make a real second chunk */
    make_words(260, NULL, 0);
    CHECK(chunker_split(words, 260, &c, &n) == 0);
    CHECK(n == 2);
    check_invariants(c, n, 260);
    chunker_free(c, n);
}

static void test_output_is_deterministic(void)
{
    size_t ends[] = {33, 180, 415, 700, 702, 880};
    make_words(1500, ends, 6);
    struct chunker_chunk *a, *b;
    size_t na, nb;
    CHECK(chunker_split(words, 1500, &a, &na) == 0);
    CHECK(chunker_split(words, 1500, &b, &nb) == 0);
    CHECK(na == nb);
    for (size_t i = 0; i < na && na == nb; i++) {
        CHECK_STR(a[i].text, b[i].text);
        CHECK(a[i].start_ms == b[i].start_ms && a[i].end_ms == b[i].end_ms);
    }
    check_invariants(a, na, 1500);
    chunker_free(a, na);
    chunker_free(b, nb);
}

int main(void)
{
    TEST(test_no_words_gives_no_chunks);
    TEST(test_only_empty_words_give_no_chunks);
    TEST(test_bad_arguments_are_refused);
    TEST(test_ten_words_make_one_chunk_with_their_times);
    TEST(test_words_are_trimmed_and_empty_ones_skipped);
    TEST(test_thousand_words_without_sentences_use_nominal_windows);
    TEST(test_cuts_move_to_a_nearby_sentence_end);
    TEST(test_sentence_end_ties_take_the_later_cut_and_far_ones_are_ignored);
    TEST(test_closing_quotes_and_question_marks_end_sentences);
    TEST(test_a_short_tail_is_merged_into_the_last_chunk);
    TEST(test_output_is_deterministic);
    T_EXIT();
}
