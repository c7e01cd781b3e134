/* Common runtime: status strings, diagnostics, checked sizes, JSON helpers, thread pool. */
#include "ds4/alloc.h"
#include "ds4/buf.h"
#include "ds4/clock.h"
#include "ds4/diag.h"
#include "ds4/json.h"
#include "ds4/status.h"
#include "ds4/threadpool.h"
#include "test.h"

#include <stdatomic.h>
#include <stdint.h>

static void test_status_strings(void)
{
    DS4_CHECK(strcmp(ds4_status_str(DS4_OK), "ok") == 0);
    DS4_CHECK(strcmp(ds4_status_name(DS4_ERR_KV_CORRUPT), "DS4_ERR_KV_CORRUPT") == 0);
    DS4_CHECK(strcmp(ds4_status_str((ds4_status_t)-9999), "unknown status") == 0);
    /* Every code in a range has a distinct, non-generic string. */
    for (int code = -500; code <= 0; code++) {
        const char *s = ds4_status_str((ds4_status_t)code);
        const char *n = ds4_status_name((ds4_status_t)code);
        DS4_CHECK((strcmp(s, "unknown status") == 0) == (strcmp(n, "DS4_ERR_UNKNOWN") == 0));
    }
}

static void test_size_checks(void)
{
    size_t out;
    DS4_CHECK(ds4_size_mul(1u << 20, 1u << 10, &out) && out == (1u << 30));
    DS4_CHECK(!ds4_size_mul(SIZE_MAX / 2 + 1, 2, &out));
    DS4_CHECK(!ds4_size_add(SIZE_MAX, 1, &out));
    DS4_CHECK(ds4_malloc_array(SIZE_MAX / 4, 8) == NULL);
    void *p = ds4_aligned_alloc(64, 100);
    DS4_CHECK(p != NULL && ((uintptr_t)p & 63) == 0);
    ds4_free(p);
}

static void test_diag(void)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_diag_addf(&d, "a.b", "bad value %d", 3);
    ds4_diag_addf(&d, NULL, "no path");
    DS4_CHECK_EQ_INT(d.count, 2);
    DS4_CHECK(strcmp(d.items[0], "a.b: bad value 3") == 0);
    DS4_CHECK(strcmp(d.items[1], "no path") == 0);
    DS4_CHECK(ds4_diag_contains(&d, "bad value"));
    char *j = ds4_diag_join(&d, "; ");
    DS4_CHECK(j != NULL && strcmp(j, "a.b: bad value 3; no path") == 0);
    ds4_free(j);
    ds4_diag_free(&d);
}

static void test_json_getters(void)
{
    const char *text = "{\"n\": 5, \"f\": 2.5, \"s\": \"x\", \"neg\": -1, \"o\": {\"k\": true}}";
    ds4_diag_t d;
    ds4_diag_init(&d);
    json_t *root = NULL;
    DS4_CHECK_STATUS(ds4_json_load_buf(text, strlen(text), "t", &root, &d), DS4_OK);
    int64_t n = 0;
    double f = 0;
    const char *s = NULL;
    bool b = false;
    DS4_CHECK(ds4_json_get_i64(root, "", "n", true, 0, 10, &n, &d) && n == 5);
    DS4_CHECK(ds4_json_get_f64(root, "", "f", true, 0, 10, &f, &d) && f == 2.5);
    DS4_CHECK(ds4_json_get_str(root, "", "s", true, &s, &d) && strcmp(s, "x") == 0);
    json_t *o = ds4_json_get_typed(root, "", "o", true, JSON_OBJECT, &d);
    DS4_CHECK(o != NULL && ds4_json_get_bool(o, "o", "k", true, &b, &d) && b);
    DS4_CHECK_EQ_INT(d.count, 0);
    DS4_CHECK(!ds4_json_get_i64(root, "", "neg", true, 0, 10, &n, &d));
    DS4_CHECK(!ds4_json_get_i64(root, "", "s", true, 0, 10, &n, &d));
    DS4_CHECK(!ds4_json_get_i64(root, "", "missing", true, 0, 10, &n, &d));
    DS4_CHECK(!ds4_json_get_bool(o, "o", "absent", false, &b, &d));
    DS4_CHECK_EQ_INT(d.count, 3);
    DS4_CHECK(ds4_diag_contains(&d, "neg: value -1 outside"));
    DS4_CHECK(ds4_diag_contains(&d, "s: expected an integer, got string"));
    DS4_CHECK(ds4_diag_contains(&d, "missing: missing required key"));
    json_decref(root);

    /* Duplicate keys and syntax errors are rejected with a position. */
    const char *dup = "{\"a\": 1, \"a\": 2}";
    DS4_CHECK_STATUS(ds4_json_load_buf(dup, strlen(dup), "dup", &root, &d), DS4_ERR_PARSE);
    const char *bad = "{\"a\": }";
    DS4_CHECK_STATUS(ds4_json_load_buf(bad, strlen(bad), "bad", &root, &d), DS4_ERR_PARSE);
    DS4_CHECK(ds4_diag_contains(&d, "bad: invalid JSON at line 1"));
    ds4_diag_free(&d);
}

struct sum_ctx {
    atomic_ullong sum;
    atomic_int calls;
};

static void sum_range(void *arg, size_t begin, size_t end, int thread_index)
{
    struct sum_ctx *ctx = arg;
    unsigned long long s = 0;
    for (size_t i = begin; i < end; i++)
        s += i;
    atomic_fetch_add(&ctx->sum, s);
    atomic_fetch_add(&ctx->calls, 1);
    (void)thread_index;
}

static void test_threadpool(void)
{
    ds4_threadpool_params_t p = ds4_threadpool_params_default();
    p.n_threads = 4;
    ds4_threadpool_h pool = NULL;
    DS4_CHECK_STATUS(ds4_threadpool_create(&p, &pool), DS4_OK);
    DS4_CHECK_EQ_INT(ds4_threadpool_size(pool), 4);
    for (int round = 0; round < 200; round++) {
        struct sum_ctx ctx = {0};
        size_t n = (size_t)round * 37 + 1;
        ds4_threadpool_parallel_for(pool, n, sum_range, &ctx);
        DS4_CHECK_EQ_INT(atomic_load(&ctx.sum), (unsigned long long)n * (n - 1) / 2);
        DS4_CHECK(atomic_load(&ctx.calls) >= 1 && atomic_load(&ctx.calls) <= 4);
    }
    ds4_threadpool_destroy(pool);
    DS4_CHECK(ds4_cpu_count() >= 1);
}

static void test_clock(void)
{
    uint64_t a = ds4_clock_now_ns();
    ds4_clock_sleep_ms(2);
    uint64_t b = ds4_clock_now_ns();
    DS4_CHECK(b - a >= 2000000ull);
}

/* Growable string: contents and NUL after every append, growth across many appends, printf,
 * clear keeps memory, a size that cannot be allocated sets the sticky oom and changes nothing. */
static void test_buf(void)
{
    ds4_buf_t b = {0};
    DS4_CHECK(ds4_buf_str(&b, ""));
    DS4_CHECK(b.p != NULL && b.len == 0 && b.p[0] == '\0');
    char want[4096];
    size_t n = 0;
    for (int i = 0; i < 500; i++) {
        DS4_CHECK(ds4_buf_printf(&b, "%d,", i));
        n += (size_t)snprintf(want + n, sizeof(want) - n, "%d,", i);
    }
    DS4_CHECK_EQ_INT(b.len, n);
    DS4_CHECK(strcmp(b.p, want) == 0);
    DS4_CHECK(ds4_buf_put(&b, "a\0b", 3));
    DS4_CHECK(b.len == n + 3 && memcmp(b.p + n, "a\0b", 4) == 0);
    size_t cap = b.cap;
    ds4_buf_clear(&b);
    DS4_CHECK(b.len == 0 && b.cap == cap && b.p[0] == '\0');
    DS4_CHECK(ds4_buf_str(&b, "kept"));
    DS4_CHECK(!ds4_buf_put(&b, "x", SIZE_MAX - 8));
    DS4_CHECK(b.oom && b.len == 4 && strcmp(b.p, "kept") == 0);
    DS4_CHECK(!ds4_buf_str(&b, "more")); /* sticky */
    DS4_CHECK(strcmp(b.p, "kept") == 0);
    ds4_buf_clear(&b);
    DS4_CHECK(!b.oom && ds4_buf_str(&b, "again") && strcmp(b.p, "again") == 0);
    ds4_buf_free(&b);
    DS4_CHECK(b.p == NULL && b.len == 0 && b.cap == 0 && !b.oom);
}

int main(void)
{
    DS4_RUN(test_buf);
    DS4_RUN(test_status_strings);
    DS4_RUN(test_size_checks);
    DS4_RUN(test_diag);
    DS4_RUN(test_json_getters);
    DS4_RUN(test_threadpool);
    DS4_RUN(test_clock);
    return ds4_test_finish();
}
