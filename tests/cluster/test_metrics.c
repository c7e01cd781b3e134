/*
 * test_metrics: the Prometheus text exposition of ds4/metrics.h against text written by hand
 * from the format's rules (HELP/TYPE lines, label escaping, cumulative histogram buckets with
 * le="+Inf", _sum and _count), concurrent updates, and ds4_metrics_text_find.
 */
#include <pthread.h>

#include "ds4/alloc.h"
#include "ds4/metrics.h"
#include "test.h"

static void test_render(void)
{
    ds4_metrics_h reg = NULL;
    DS4_CHECK_STATUS(ds4_metrics_create(&reg), DS4_OK);
    ds4_metric_h errs = ds4_metrics_counter(reg, "ds4_errors_total", "Errors by kind.", "kind");
    ds4_metric_h q = ds4_metrics_gauge(reg, "ds4_queue_depth", "Queued\nrequests \\ now.", NULL);
    const double b[] = {0.1, 1, 2.5};
    ds4_metric_h h = ds4_metrics_histogram(reg, "ds4_ttft_seconds", "TTFT.", "role", b, 3);
    DS4_CHECK(ds4_metrics_counter(reg, "ds4_errors_total", "x", "kind") == errs);

    const char *timeout[] = {"timeout"};
    const char *weird[] = {"a\"b\\c\nd"};
    ds4_series_add(ds4_metric_series(errs, timeout), 2);
    ds4_series_add(ds4_metric_series(errs, timeout), 1);
    ds4_series_add(ds4_metric_series(errs, timeout), -5); /* ignored: counters only go up */
    ds4_series_add(ds4_metric_series(errs, weird), 1);
    ds4_series_set(ds4_metric_default(q), 7);
    ds4_series_add(ds4_metric_default(q), -2.5);
    const char *dec[] = {"decode"};
    ds4_series_h hs = ds4_metric_series(h, dec);
    ds4_series_observe(hs, 0.05);
    ds4_series_observe(hs, 0.1); /* le is inclusive */
    ds4_series_observe(hs, 2);
    ds4_series_observe(hs, 30);

    const char *want = "# HELP ds4_errors_total Errors by kind.\n"
                       "# TYPE ds4_errors_total counter\n"
                       "ds4_errors_total{kind=\"timeout\"} 3\n"
                       "ds4_errors_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n"
                       "# HELP ds4_queue_depth Queued\\nrequests \\\\ now.\n"
                       "# TYPE ds4_queue_depth gauge\n"
                       "ds4_queue_depth 4.5\n"
                       "# HELP ds4_ttft_seconds TTFT.\n"
                       "# TYPE ds4_ttft_seconds histogram\n"
                       "ds4_ttft_seconds_bucket{role=\"decode\",le=\"0.1\"} 2\n"
                       "ds4_ttft_seconds_bucket{role=\"decode\",le=\"1\"} 2\n"
                       "ds4_ttft_seconds_bucket{role=\"decode\",le=\"2.5\"} 3\n"
                       "ds4_ttft_seconds_bucket{role=\"decode\",le=\"+Inf\"} 4\n"
                       "ds4_ttft_seconds_sum{role=\"decode\"} 32.15\n"
                       "ds4_ttft_seconds_count{role=\"decode\"} 4\n";
    char *text = ds4_metrics_render(reg);
    DS4_CHECK(text != NULL);
    DS4_CHECKF(text != NULL && strcmp(text, want) == 0, "got:\n%s", text);

    double v = 0;
    DS4_CHECK(ds4_metrics_text_find(text, "ds4_errors_total{kind=\"timeout\"}", &v) && v == 3);
    DS4_CHECK(ds4_metrics_text_find(text, "ds4_queue_depth", &v) && v == 4.5);
    DS4_CHECK(ds4_metrics_text_find(text, "ds4_ttft_seconds_count{role=\"decode\"}", &v) && v == 4);
    DS4_CHECK(!ds4_metrics_text_find(text, "ds4_queue", &v));
    DS4_CHECK(!ds4_metrics_text_find(text, "ds4_nothing", &v));
    ds4_free(text);
    ds4_metrics_destroy(reg);
}

static ds4_series_h shared_counter;
static ds4_series_h shared_hist;

static void *hammer(void *arg)
{
    for (int i = 0; i < 100000; i++) {
        ds4_series_add(shared_counter, 1);
        ds4_series_observe(shared_hist, (double)(i % 10));
    }
    return NULL;
}

static void test_concurrent(void)
{
    ds4_metrics_h reg = NULL;
    DS4_CHECK_STATUS(ds4_metrics_create(&reg), DS4_OK);
    shared_counter = ds4_metric_default(ds4_metrics_counter(reg, "c_total", "c", NULL));
    shared_hist = ds4_metric_default(ds4_metrics_histogram(
        reg, "h_seconds", "h", NULL, ds4_metrics_latency_buckets, ds4_metrics_n_latency_buckets));
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    DS4_CHECK(ds4_series_value(shared_counter) == 400000);
    DS4_CHECK_EQ_INT(ds4_series_count(shared_hist), 400000);
    /* sum of i%10 over 100000 = 10000 * 45, times 4 threads */
    DS4_CHECK(ds4_series_value(shared_hist) == 1800000);
    ds4_metrics_destroy(reg);
}

int main(void)
{
    DS4_RUN(test_render);
    DS4_RUN(test_concurrent);
    return ds4_test_finish();
}
