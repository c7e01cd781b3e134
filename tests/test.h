/*
 * tests/test.h - the minimal test harness of ds4's C tests.
 *
 * A test binary defines test functions `static void test_x(void)` and runs them from main with
 * DS4_RUN(test_x). Checks record a failure (file:line and message) and continue;
 * ds4_test_finish() prints "N passed, N failed" and returns the exit code (0, or 1 on failure).
 * Return DS4_TEST_SKIP (77) from main to report "skipped" to ctest.
 */
#ifndef DS4_TEST_H
#define DS4_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS4_TEST_SKIP 77

static int ds4_test_checks_failed;
static int ds4_test_failed;
static int ds4_test_passed;

#define DS4_CHECK(cond)                                                                  \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
            ds4_test_checks_failed++;                                                    \
        }                                                                                \
    } while (0)

#define DS4_CHECKF(cond, ...)                                                            \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            ds4_test_checks_failed++;                                                    \
        }                                                                                \
    } while (0)

#define DS4_CHECK_EQ_INT(a, b)                                                           \
    DS4_CHECKF((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a),         \
               (long long)(b))
#define DS4_CHECK_STATUS(st, want)                                                       \
    DS4_CHECKF((st) == (want), "status %s, want %s", ds4_status_name(st),                \
               ds4_status_name(want))
#define DS4_CHECK_STR_CONTAINS(hay, needle)                                              \
    DS4_CHECKF((hay) != NULL && strstr((hay), (needle)) != NULL, "\"%s\" lacks \"%s\"",   \
               (hay) != NULL ? (hay) : "(null)", (needle))
#define DS4_CHECK_NEAR(a, b, tol)                                                        \
    DS4_CHECKF(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)",         \
               (double)(a), (double)(b), (double)(tol))

#define DS4_RUN(fn)                                                                      \
    do {                                                                                 \
        int before_ = ds4_test_checks_failed;                                            \
        fprintf(stderr, "[ RUN  ] %s\n", #fn);                                           \
        fn();                                                                            \
        if (ds4_test_checks_failed == before_) {                                         \
            ds4_test_passed++;                                                           \
            fprintf(stderr, "[  OK  ] %s\n", #fn);                                       \
        } else {                                                                         \
            ds4_test_failed++;                                                           \
            fprintf(stderr, "[ FAIL ] %s\n", #fn);                                       \
        }                                                                                \
    } while (0)

/* Fails on a failed DS4_RUN and on any failed check made outside one (straight-line tests). */
static inline int ds4_test_finish(void)
{
    printf("%d passed, %d failed (%d failed checks)\n", ds4_test_passed, ds4_test_failed,
           ds4_test_checks_failed);
    return ds4_test_failed == 0 && ds4_test_checks_failed == 0 ? 0 : 1;
}

/* Path of a file under tests/fixtures (DS4_FIXTURES, set by ctest). Static buffer. */
static inline const char *ds4_test_fixture(const char *rel)
{
    static char buf[4096];
    const char *dir = getenv("DS4_FIXTURES");
    snprintf(buf, sizeof(buf), "%s/%s", dir != NULL ? dir : "tests/fixtures", rel);
    return buf;
}

/* Reads a whole file into a malloc'd buffer (free with free/ds4_free), NUL-terminated for
 * text; *len = its size (may be NULL). NULL when it cannot be opened or read. */
static inline void *ds4_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf == NULL)
        return NULL;
    buf[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    return buf;
}

#endif /* DS4_TEST_H */
