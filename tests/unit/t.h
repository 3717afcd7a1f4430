/* A tiny unit test harness. Each test binary prints one line per check
 * group: "PASS name" or "FAIL name: reason", and exits 1 if any failed.
 * tests/run counts these lines. */
#ifndef REELD_T_H
#define REELD_T_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failed_total, t_passed_total, t_cur_failed;
static const char *t_cur;

#define T_BEGIN(name) (t_cur = (name), t_cur_failed = 0)
#define T_END()                                                                                    \
    do {                                                                                           \
        if (t_cur_failed)                                                                          \
            t_failed_total++;                                                                      \
        else {                                                                                     \
            t_passed_total++;                                                                      \
            printf("PASS %s\n", t_cur);                                                            \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (!t_cur_failed) printf("FAIL %s: %s:%d: %s\n", t_cur, __FILE__, __LINE__, #cond);   \
            t_cur_failed = 1;                                                                      \
        }                                                                                          \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *t_a_ = (a), *t_b_ = (b);                                                       \
        if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_) != 0) {                                           \
            if (!t_cur_failed)                                                                     \
                printf("FAIL %s: %s:%d: \"%s\" != \"%s\"\n", t_cur, __FILE__, __LINE__,            \
                       t_a_ ? t_a_ : "(null)", t_b_ ? t_b_ : "(null)");                            \
            t_cur_failed = 1;                                                                      \
        }                                                                                          \
    } while (0)
#define TEST(fn)                                                                                   \
    do {                                                                                           \
        T_BEGIN(#fn);                                                                              \
        fn();                                                                                      \
        T_END();                                                                                   \
    } while (0)
#define T_EXIT() return t_failed_total ? 1 : 0

#endif
