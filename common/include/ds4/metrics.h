/*
 * ds4/metrics.h - Prometheus metrics: counters, gauges and histograms rendered in the text
 * exposition format (version 0.0.4) for /metrics.
 *
 * A registry holds metric families (name, help, type, label names); a family holds series, one
 * per combination of label values, created on first use and kept for the registry's life.
 * Series handles are stable pointers: look one up once (ds4_metric_series) and update it from
 * any thread. Every function is thread-safe (one mutex per registry; updates are a few
 * nanoseconds of work under it).
 *
 * Names follow Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*, units in the name (`_seconds`, `_bytes`),
 * counters end in `_total`. Invalid names are programmer errors (DS4_ASSERT).
 */
#ifndef DS4_METRICS_H
#define DS4_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "ds4/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_metrics *ds4_metrics_h;
typedef struct ds4_metric *ds4_metric_h;
typedef struct ds4_series *ds4_series_h;

typedef enum ds4_metric_type {
    DS4_METRIC_COUNTER = 0,
    DS4_METRIC_GAUGE = 1,
    DS4_METRIC_HISTOGRAM = 2,
} ds4_metric_type_t;

ds4_status_t ds4_metrics_create(ds4_metrics_h *out);
void ds4_metrics_destroy(ds4_metrics_h reg);

/* Families. `labels` is a comma-separated list of label names ("kind" or "role,kind") or NULL.
 * Registering the same name twice returns the existing family (same type required). NULL only
 * on allocation failure. */
ds4_metric_h ds4_metrics_counter(ds4_metrics_h reg, const char *name, const char *help,
                                 const char *labels);
ds4_metric_h ds4_metrics_gauge(ds4_metrics_h reg, const char *name, const char *help,
                               const char *labels);
/* `bounds`: n_bounds strictly increasing upper bounds (the +Inf bucket is implicit). */
ds4_metric_h ds4_metrics_histogram(ds4_metrics_h reg, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t n_bounds);

/* Latency buckets in seconds from 100 us to 100 s (for TTFT, ITL, request time). */
extern const double ds4_metrics_latency_buckets[];
extern const size_t ds4_metrics_n_latency_buckets;

/* The series for the given label values (one per label name, in order; NULL when the family
 * has no labels). Values may hold any UTF-8; they are escaped when rendered. NULL only on
 * allocation failure. */
ds4_series_h ds4_metric_series(ds4_metric_h m, const char *const *label_values);
/* Shorthand for the unlabelled series. */
ds4_series_h ds4_metric_default(ds4_metric_h m);

/* Counter: v >= 0 (negative values are ignored and logged). Gauge: any v. */
void ds4_series_add(ds4_series_h s, double v);
/* Gauge only. */
void ds4_series_set(ds4_series_h s, double v);
/* Histogram only. */
void ds4_series_observe(ds4_series_h s, double v);
/* Counter/gauge value, histogram sum. */
double ds4_series_value(ds4_series_h s);
/* Histogram observation count (0 for other types). */
unsigned long long ds4_series_count(ds4_series_h s);

/* The whole registry as Prometheus text (families in registration order, series in creation
 * order). The caller frees with ds4_free. NULL on allocation failure. */
char *ds4_metrics_render(ds4_metrics_h reg);

/* Finds the sample `series` (exactly as rendered, e.g. `ds4_kv_blocks_used{role="decode"}` or
 * `ds4_requests_total`) in exposition text and parses its value. False when absent. For tests
 * and tools reading another process's /metrics. */
bool ds4_metrics_text_find(const char *text, const char *series, double *out);

#ifdef __cplusplus
}
#endif
#endif /* DS4_METRICS_H */
