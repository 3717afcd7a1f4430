/* Tests of the local extractive document generator (docgen.h). */
#include "reeld/docgen.h"
#include "t.h"

#include <ctype.h>
#include <stdbool.h>

static const char *cooking =
    "Today we start in the kitchen with a simple tomato pasta recipe. Boil salted water in a "
    "large pot before adding the dried pasta. While the pasta cooks, chop garlic and onions "
    "finely for the sauce. Fry the garlic and onions in olive oil until golden and fragrant. "
    "Add crushed tomatoes to the pan and let the sauce simmer gently. Season the tomato sauce "
    "with salt, pepper and fresh basil leaves. Drain the pasta and toss it with the tomato "
    "sauce in the pan. Grate some parmesan cheese over the pasta before serving it warm. ";
static const char *networking =
    "Now let us switch to computer networking and how packets travel. Every packet carries a "
    "source address and a destination address in its header. Routers read the destination "
    "address and forward each packet along the best route. The TCP protocol adds sequence "
    "numbers so lost packets are retransmitted. A firewall filters packets by port and address "
    "to protect the network. DNS servers translate host names into network addresses for "
    "clients. Latency and bandwidth decide how fast packets cross the network. Switches forward "
    "frames inside the local network using hardware addresses. ";
static const char *gardening =
    "Finally we head outside into the garden to plant vegetables. Prepare the soil with compost "
    "so the seeds get nutrients and moisture. Sow the carrot seeds in shallow rows and cover "
    "them with soil. Water the garden beds every morning during dry summer weeks. Pull weeds by "
    "hand so they do not steal water from the seedlings. Mulch around the plants keeps the soil "
    "moist and cool. Tomato plants in the garden need stakes as they grow tall. Harvest the "
    "vegetables when they are ripe and share them with neighbours. ";

static char *cat3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    for (size_t i = 0; s[i]; i++)
        if (!isspace((unsigned char)s[i]) && (i == 0 || isspace((unsigned char)s[i - 1]))) n++;
    return n;
}

/* Number of "## " headings that are sections (not Summary/Key points). */
static size_t count_sections(const char *md)
{
    size_t n = 0;
    for (const char *p = md; (p = strstr(p, "\n## ")) != NULL; p += 4)
        if (strncmp(p + 4, "Summary\n", 8) != 0 && strncmp(p + 4, "Key points\n", 11) != 0) n++;
    return n;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static void same_input_gives_identical_document(void)
{
    char *t = cat3(cooking, networking, gardening);
    struct docgen_result a, b;
    CHECK(t != NULL);
    if (!t) return;
    CHECK(docgen_local(t, strlen(t), NULL, 0, &a) == 0);
    CHECK(docgen_local(t, strlen(t), NULL, 0, &b) == 0);
    CHECK_STR(a.markdown, b.markdown);
    CHECK_STR(a.title, b.title);
    CHECK_STR(a.summary, b.summary);
    docgen_result_free(&a);
    docgen_result_free(&b);
    CHECK(a.markdown == NULL && a.title == NULL && a.summary == NULL);
    free(t);
}

static void title_is_made_of_transcript_words(void)
{
    char *t = cat3(cooking, networking, gardening);
    struct docgen_result r;
    if (!t) return;
    CHECK(docgen_local(t, strlen(t), NULL, 0, &r) == 0);
    CHECK(r.title && r.title[0] != '\0' && strcmp(r.title, "Recording") != 0);
    char *lt = strdup(t), *title = r.title ? strdup(r.title) : NULL;
    if (lt && title) {
        lower(lt);
        lower(title);
        size_t words = 0;
        for (char *w = strtok(title, " "); w; w = strtok(NULL, " ")) {
            CHECK(strstr(lt, w) != NULL);
            words++;
        }
        CHECK(words >= 2 && words <= 6);
    }
    CHECK(r.title && isupper((unsigned char)r.title[0]));
    CHECK(r.markdown && strncmp(r.markdown, "# ", 2) == 0);
    free(lt);
    free(title);
    docgen_result_free(&r);
    free(t);
}

static void summary_sentences_come_from_transcript(void)
{
    char *t = cat3(cooking, networking, gardening);
    struct docgen_result r;
    if (!t) return;
    CHECK(docgen_local(t, strlen(t), NULL, 0, &r) == 0);
    CHECK(r.summary && strlen(r.summary) > 20 && strlen(r.summary) <= DOCGEN_SUMMARY_MAX);
    /* Each summary sentence, minus its capitalized first letter, is a
     * substring of the transcript. */
    char *sum = r.summary ? strdup(r.summary) : NULL;
    size_t nsent = 0;
    for (char *s = sum; s && *s;) {
        char *end = strpbrk(s, ".?!");
        if (!end) break;
        *end = '\0';
        while (*s == ' ')
            s++;
        if (*s) {
            CHECK(strstr(t, s + 1) != NULL);
            nsent++;
        }
        s = end + 1;
    }
    CHECK(nsent >= 1 && nsent <= 3);
    CHECK(r.markdown && strstr(r.markdown, "## Summary") != NULL);
    CHECK(r.markdown && strstr(r.markdown, "## Key points") != NULL);
    free(sum);
    docgen_result_free(&r);
    free(t);
}

/* Word offsets of the section starts in md: each section's first
 * paragraph's first sentence is located in the transcript. */
static size_t section_word_starts(const char *md, const char *t, size_t *starts, size_t max)
{
    size_t n = 0;
    for (const char *p = md; n < max && (p = strstr(p, "\n## ")) != NULL; p += 4) {
        if (strncmp(p + 4, "Summary\n", 8) == 0 || strncmp(p + 4, "Key points\n", 11) == 0)
            continue;
        const char *para = strstr(p + 4, "\n\n");
        if (!para) break;
        para += 2;
        char frag[40];
        size_t k = 0;
        /* skip the capitalized first letter; take a distinctive prefix */
        for (const char *q = para + 1; *q && *q != '\n' && k < sizeof frag - 1; q++)
            frag[k++] = *q;
        frag[k] = '\0';
        const char *at = strstr(t, frag);
        if (!at || at == t) continue;
        at--; /* back to the first letter */
        size_t w = 0;
        for (const char *q = t; q < at; q++)
            if (!isspace((unsigned char)*q) && (q == t || isspace((unsigned char)q[-1]))) w++;
        starts[n++] = w;
    }
    return n;
}

static bool near_any(const size_t *starts, size_t n, size_t target, size_t tol)
{
    for (size_t i = 0; i < n; i++)
        if ((starts[i] > target ? starts[i] - target : target - starts[i]) <= tol) return true;
    return false;
}

static void three_topics_are_cut_near_their_boundaries(void)
{
    char *t = cat3(cooking, networking, gardening);
    struct docgen_result r;
    if (!t) return;
    size_t b1 = count_words(cooking), b2 = b1 + count_words(networking);
    CHECK(docgen_local(t, strlen(t), NULL, 0, &r) == 0);
    CHECK(r.markdown && count_sections(r.markdown) >= 2);
    size_t starts[16];
    size_t n = r.markdown ? section_word_starts(r.markdown, t, starts, 16) : 0;
    CHECK(n >= 2);
    CHECK(near_any(starts, n, 0, 0));
    CHECK(near_any(starts, n, b1, 15) || near_any(starts, n, b2, 15));
    if (n >= 3) CHECK(near_any(starts, n, b1, 15) && near_any(starts, n, b2, 15));
    docgen_result_free(&r);
    free(t);
}

/* pocketsphinx-like output: lowercase, no punctuation at all. */
static char *unpunctuate(const char *s)
{
    char *o = malloc(strlen(s) + 1);
    size_t n = 0;
    if (!o) return NULL;
    for (; *s; s++)
        if (isalnum((unsigned char)*s) || *s == ' ') o[n++] = (char)tolower((unsigned char)*s);
    o[n] = '\0';
    return o;
}

static void unpunctuated_input_gets_sections_and_summary(void)
{
    char *p = cat3(cooking, networking, gardening);
    char *t = p ? unpunctuate(p) : NULL;
    struct docgen_result r;
    if (!t) {
        free(p);
        return;
    }
    CHECK(docgen_local(t, strlen(t), NULL, 0, &r) == 0);
    CHECK(r.summary && strlen(r.summary) > 20 && strlen(r.summary) <= DOCGEN_SUMMARY_MAX);
    CHECK(r.markdown && count_sections(r.markdown) >= 2);
    CHECK(r.title && strcmp(r.title, "Recording") != 0);
    docgen_result_free(&r);
    free(t);
    free(p);
}

static void timed_words_give_section_timestamps_and_pause_splits(void)
{
    char *p = cat3(cooking, networking, gardening);
    char *t = p ? unpunctuate(p) : NULL;
    if (!t) {
        free(p);
        return;
    }
    struct docgen_word words[400];
    size_t n = 0;
    int64_t ms = 0;
    for (char *w = strtok(t, " "); w && n < 400; w = strtok(NULL, " ")) {
        words[n].w = w;
        words[n].start_ms = ms;
        words[n].end_ms = ms + 300;
        ms += (n % 17 == 16) ? 2500 : 400; /* a long pause now and then */
        n++;
    }
    struct docgen_result r;
    CHECK(docgen_local(NULL, 0, words, n, &r) == 0);
    CHECK(r.markdown && strstr(r.markdown, " (00:00)\n") != NULL);
    CHECK(r.markdown && count_sections(r.markdown) >= 2);
    /* Every section heading carries a timestamp. */
    for (const char *q = r.markdown; q && (q = strstr(q, "\n## ")) != NULL; q += 4) {
        if (strncmp(q + 4, "Summary\n", 8) == 0 || strncmp(q + 4, "Key points\n", 11) == 0)
            continue;
        const char *eol = strchr(q + 4, '\n');
        CHECK(eol && eol - q > 9 && eol[-1] == ')' && eol[-7] == '(');
    }
    docgen_result_free(&r);
    free(t);
    free(p);
}

static void hostile_timestamps_do_not_break_generation(void)
{
    struct docgen_word w[6] = {
        {"alpha", INT64_MAX, INT64_MIN}, {"beta", INT64_MIN, INT64_MAX}, {"gamma", -5, -10},
        {"delta", 0, INT64_MAX},         {"alpha", INT64_MAX, 0},        {"beta", 1000, 500}};
    struct docgen_result r;
    CHECK(docgen_local(NULL, 0, w, 6, &r) == 0);
    CHECK(r.markdown && r.title && strstr(r.title, "Alpha") != NULL);
    docgen_result_free(&r);
}

static void markup_in_transcript_is_escaped(void)
{
    /* The first sentence starts the first section's first paragraph. */
    char *t = cat3("# heading injected at a sentence start. ",
                   "Look at this <script>alert(1)</script> and click [x](javascript:y) now. "
                   "- list item? 12. numbered <img src=x onerror=alert(2)> "
                   "is *bold* and _it_ and `code` & more. ",
                   cooking);
    struct docgen_result r;
    if (!t) return;
    CHECK(docgen_local(t, strlen(t), NULL, 0, &r) == 0);
    const char *md = r.markdown ? r.markdown : "";
    CHECK(strstr(md, "<script") == NULL);
    CHECK(strstr(md, "<img") == NULL);
    CHECK(strstr(md, "[x](") == NULL);
    CHECK(strstr(md, "\n# ") == NULL);
    CHECK(strstr(md, "\n- list") == NULL && strstr(md, "\n12. ") == NULL);
    for (const char *q = md; (q = strstr(q, "\n#")) != NULL; q++)
        CHECK(strncmp(q, "\n## ", 4) == 0);
    CHECK(strstr(md, " *bold*") == NULL && strstr(md, "`code`") == NULL);
    /* The injected text is still there, escaped, in its section. */
    CHECK(strstr(md, "&lt;script&gt;") != NULL);
    CHECK(strstr(md, "\\[x\\](javascript:y)") != NULL);
    CHECK(strstr(md, "\\# heading injected") != NULL);
    CHECK(strstr(md, "&amp; more") != NULL);
    docgen_result_free(&r);
    free(t);
}

static void empty_input_says_no_speech(void)
{
    const char *inputs[] = {"", "   \n\t  ", NULL};
    for (size_t i = 0; i < 3; i++) {
        struct docgen_result r;
        const char *s = inputs[i];
        CHECK(docgen_local(s, s ? strlen(s) : 0, NULL, 0, &r) == 0);
        CHECK_STR(r.title, "Recording");
        CHECK_STR(r.summary, "");
        CHECK(r.markdown && strstr(r.markdown, "No speech was detected") != NULL);
        docgen_result_free(&r);
    }
    struct docgen_word blank[2] = {{NULL, 0, 10}, {"  ", 10, 20}};
    struct docgen_result r;
    CHECK(docgen_local(NULL, 0, blank, 2, &r) == 0);
    CHECK_STR(r.title, "Recording");
    docgen_result_free(&r);
    CHECK(docgen_local("x", 1, NULL, 0, NULL) == -1);
}

static void stopword_only_and_tiny_inputs_still_give_a_document(void)
{
    const char *inputs[] = {"hello", "and the of to it is", "um uh yeah okay so",
                            "a\xc3\xa9\xe2\x80\xa6 \xff\xfe broken utf8"};
    for (size_t i = 0; i < 4; i++) {
        struct docgen_result r;
        CHECK(docgen_local(inputs[i], strlen(inputs[i]), NULL, 0, &r) == 0);
        CHECK(r.markdown && r.title && r.summary && r.title[0] != '\0');
        CHECK(r.markdown && strncmp(r.markdown, "# ", 2) == 0);
        docgen_result_free(&r);
    }
}

static void long_sentence_is_truncated_not_copied_whole(void)
{
    size_t n = 200000;
    char *t = malloc(n + 1);
    if (!t) return;
    memset(t, 'a', n); /* one 200 kB "word" */
    t[n] = '\0';
    struct docgen_result r;
    CHECK(docgen_local(t, n, NULL, 0, &r) == 0);
    CHECK(r.markdown && strlen(r.markdown) < 4096);
    CHECK(r.summary && strlen(r.summary) <= DOCGEN_SUMMARY_MAX);
    docgen_result_free(&r);
    free(t);
}

static void twenty_thousand_words_give_bounded_output(void)
{
    static const char *vocab[] = {"server", "deploy",  "pipeline", "queue",   "latency",  "garden",
                                  "tomato", "soil",    "packet",   "router",  "sauce",    "kitchen",
                                  "budget", "invoice", "customer", "release", "rollback", "metric",
                                  "alert",  "the",     "and",      "we",      "to",       "is"};
    size_t nv = sizeof vocab / sizeof vocab[0], cap = 20000 * 12, len = 0;
    char *t = malloc(cap);
    if (!t) return;
    uint32_t x = 12345;
    for (size_t i = 0; i < 20000; i++) {
        x = x * 1103515245u + 12345u;
        size_t topic = (i / 700) % 4; /* drifting topics */
        const char *w = vocab[(topic * 5 + (x >> 16) % 9) % nv];
        len += (size_t)snprintf(t + len, cap - len, "%s%s", w, (x >> 8) % 13 == 0 ? ". " : " ");
    }
    struct docgen_result r;
    CHECK(docgen_local(t, len, NULL, 0, &r) == 0);
    CHECK(r.markdown && strlen(r.markdown) < len / 10 + 8192);
    CHECK(r.markdown && count_sections(r.markdown) >= 10);
    CHECK(r.summary && strlen(r.summary) <= DOCGEN_SUMMARY_MAX);
    docgen_result_free(&r);
    /* The same without any punctuation. */
    for (size_t i = 0; i < len; i++)
        if (t[i] == '.') t[i] = ' ';
    CHECK(docgen_local(t, len, NULL, 0, &r) == 0);
    CHECK(r.markdown && strlen(r.markdown) < len / 10 + 8192);
    docgen_result_free(&r);
    free(t);
}

int main(void)
{
    TEST(same_input_gives_identical_document);
    TEST(title_is_made_of_transcript_words);
    TEST(summary_sentences_come_from_transcript);
    TEST(three_topics_are_cut_near_their_boundaries);
    TEST(unpunctuated_input_gets_sections_and_summary);
    TEST(timed_words_give_section_timestamps_and_pause_splits);
    TEST(hostile_timestamps_do_not_break_generation);
    TEST(markup_in_transcript_is_escaped);
    TEST(empty_input_says_no_speech);
    TEST(stopword_only_and_tiny_inputs_still_give_a_document);
    TEST(long_sentence_is_truncated_not_copied_whole);
    TEST(twenty_thousand_words_give_bounded_output);
    T_EXIT();
}
