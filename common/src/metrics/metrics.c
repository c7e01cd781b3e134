/* Prometheus registry and text exposition. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/buf.h"
#include "ds4/log.h"
#include "ds4/metrics.h"

struct ds4_series {
    struct ds4_metric *family;
    char *labels; /* rendered label pairs without braces: a="x",b="y" ("" if none) */
    double value; /* counter/gauge value; histogram sum */
    unsigned long long count;
    unsigned long long *buckets; /* histogram: per-bucket (not cumulative) counts, n_bounds+1 */
    struct ds4_series *next;
};

struct ds4_metric {
    struct ds4_metrics *reg;
    char *name;
    char *help;
    ds4_metric_type_t type;
    char **label_names;
    size_t n_labels;
    double *bounds;
    size_t n_bounds;
    struct ds4_series *series, *series_tail;
    struct ds4_metric *next;
};

struct ds4_metrics {
    pthread_mutex_t mu;
    struct ds4_metric *head, *tail;
};

const double ds4_metrics_latency_buckets[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25,   0.5,     1,      2.5,   5,      10,    25,   50,    100,
};
const size_t ds4_metrics_n_latency_buckets = DS4_ARRAY_LEN(ds4_metrics_latency_buckets);

ds4_status_t ds4_metrics_create(ds4_metrics_h *out)
{
    if (out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_metrics_h reg = ds4_calloc(1, sizeof(*reg));
    if (reg == NULL)
        return DS4_ERR_NO_MEMORY;
    pthread_mutex_init(&reg->mu, NULL);
    *out = reg;
    return DS4_OK;
}

static void series_free(struct ds4_series *s)
{
    ds4_free(s->labels);
    ds4_free(s->buckets);
    ds4_free(s);
}

static void metric_free(struct ds4_metric *m)
{
    for (struct ds4_series *s = m->series, *next; s != NULL; s = next) {
        next = s->next;
        series_free(s);
    }
    for (size_t i = 0; i < m->n_labels; i++)
        ds4_free(m->label_names[i]);
    ds4_free(m->label_names);
    ds4_free(m->bounds);
    ds4_free(m->name);
    ds4_free(m->help);
    ds4_free(m);
}

void ds4_metrics_destroy(ds4_metrics_h reg)
{
    if (reg == NULL)
        return;
    for (struct ds4_metric *m = reg->head, *next; m != NULL; m = next) {
        next = m->next;
        metric_free(m);
    }
    pthread_mutex_destroy(&reg->mu);
    ds4_free(reg);
}

static bool valid_name(const char *name, bool allow_colon)
{
    if (name == NULL || name[0] == '\0' || isdigit((unsigned char)name[0]))
        return false;
    for (const char *p = name; *p != '\0'; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || (allow_colon && *p == ':')))
            return false;
    return true;
}

static ds4_metric_h family(ds4_metrics_h reg, ds4_metric_type_t type, const char *name,
                           const char *help, const char *labels, const double *bounds,
                           size_t n_bounds)
{
    DS4_ASSERT(reg != NULL && valid_name(name, true));
    pthread_mutex_lock(&reg->mu);
    for (struct ds4_metric *m = reg->head; m != NULL; m = m->next) {
        if (strcmp(m->name, name) == 0) {
            DS4_ASSERT(m->type == type);
            pthread_mutex_unlock(&reg->mu);
            return m;
        }
    }
    struct ds4_metric *m = ds4_calloc(1, sizeof(*m));
    if (m == NULL)
        goto fail;
    m->reg = reg;
    m->type = type;
    m->name = ds4_strdup(name);
    m->help = ds4_strdup(help != NULL ? help : "");
    if (m->name == NULL || m->help == NULL)
        goto fail_metric;
    if (labels != NULL && labels[0] != '\0') {
        const char *p = labels;
        while (p != NULL) {
            const char *comma = strchr(p, ',');
            size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
            char **grown = ds4_realloc_array(m->label_names, m->n_labels + 1, sizeof(*grown));
            if (grown == NULL)
                goto fail_metric;
            m->label_names = grown;
            m->label_names[m->n_labels] = ds4_strndup(p, len);
            if (m->label_names[m->n_labels] == NULL)
                goto fail_metric;
            DS4_ASSERT(valid_name(m->label_names[m->n_labels], false));
            m->n_labels++;
            p = comma != NULL ? comma + 1 : NULL;
        }
    }
    if (type == DS4_METRIC_HISTOGRAM) {
        DS4_ASSERT(bounds != NULL && n_bounds > 0);
        for (size_t i = 1; i < n_bounds; i++)
            DS4_ASSERT(bounds[i] > bounds[i - 1]);
        m->bounds = ds4_malloc_array(n_bounds, sizeof(*m->bounds));
        if (m->bounds == NULL)
            goto fail_metric;
        memcpy(m->bounds, bounds, n_bounds * sizeof(*bounds));
        m->n_bounds = n_bounds;
    }
    if (reg->tail != NULL)
        reg->tail->next = m;
    else
        reg->head = m;
    reg->tail = m;
    pthread_mutex_unlock(&reg->mu);
    return m;

fail_metric:
    metric_free(m);
fail:
    pthread_mutex_unlock(&reg->mu);
    return NULL;
}

ds4_metric_h ds4_metrics_counter(ds4_metrics_h reg, const char *name, const char *help,
                                 const char *labels)
{
    return family(reg, DS4_METRIC_COUNTER, name, help, labels, NULL, 0);
}

ds4_metric_h ds4_metrics_gauge(ds4_metrics_h reg, const char *name, const char *help,
                               const char *labels)
{
    return family(reg, DS4_METRIC_GAUGE, name, help, labels, NULL, 0);
}

ds4_metric_h ds4_metrics_histogram(ds4_metrics_h reg, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t n_bounds)
{
    return family(reg, DS4_METRIC_HISTOGRAM, name, help, labels, bounds, n_bounds);
}

/* Label values escape \ " and newline; HELP text escapes \ and newline. */
static void sb_escaped(ds4_buf_t *b, const char *s, bool quote)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            ds4_buf_str(b, "\\\\");
        else if (*s == '\n')
            ds4_buf_str(b, "\\n");
        else if (quote && *s == '"')
            ds4_buf_str(b, "\\\"");
        else
            ds4_buf_put(b, s, 1);
    }
}

/* Prometheus float text: integers exactly, others with round-trip precision, +Inf/-Inf/NaN. */
static void sb_value(ds4_buf_t *b, double v)
{
    if (isnan(v))
        ds4_buf_str(b, "NaN");
    else if (isinf(v))
        ds4_buf_str(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        ds4_buf_printf(b, "%.0f", v);
    else {
        /* Shortest of %.15g / %.17g that reads back as the same double. */
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.15g", v);
        if (strtod(tmp, NULL) != v)
            snprintf(tmp, sizeof(tmp), "%.17g", v);
        ds4_buf_str(b, tmp);
    }
}

ds4_series_h ds4_metric_series(ds4_metric_h m, const char *const *values)
{
    DS4_ASSERT(m != NULL);
    DS4_ASSERT(m->n_labels == 0 || values != NULL);
    ds4_buf_t lb = {0};
    ds4_buf_str(&lb, "");
    for (size_t i = 0; i < m->n_labels; i++) {
        if (i > 0)
            ds4_buf_str(&lb, ",");
        ds4_buf_str(&lb, m->label_names[i]);
        ds4_buf_str(&lb, "=\"");
        sb_escaped(&lb, values[i] != NULL ? values[i] : "", true);
        ds4_buf_str(&lb, "\"");
    }
    if (lb.oom) {
        ds4_free(lb.p);
        return NULL;
    }
    pthread_mutex_lock(&m->reg->mu);
    for (struct ds4_series *s = m->series; s != NULL; s = s->next) {
        if (strcmp(s->labels, lb.p) == 0) {
            pthread_mutex_unlock(&m->reg->mu);
            ds4_free(lb.p);
            return s;
        }
    }
    struct ds4_series *s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        goto fail;
    s->family = m;
    s->labels = lb.p;
    lb.p = NULL;
    if (m->type == DS4_METRIC_HISTOGRAM) {
        s->buckets = ds4_calloc(m->n_bounds + 1, sizeof(*s->buckets));
        if (s->buckets == NULL) {
            series_free(s);
            goto fail;
        }
    }
    if (m->series_tail != NULL)
        m->series_tail->next = s;
    else
        m->series = s;
    m->series_tail = s;
    pthread_mutex_unlock(&m->reg->mu);
    return s;
fail:
    pthread_mutex_unlock(&m->reg->mu);
    ds4_free(lb.p);
    return NULL;
}

ds4_series_h ds4_metric_default(ds4_metric_h m)
{
    return ds4_metric_series(m, NULL);
}

void ds4_series_add(ds4_series_h s, double v)
{
    if (s == NULL)
        return;
    DS4_ASSERT(s->family->type != DS4_METRIC_HISTOGRAM);
    if (s->family->type == DS4_METRIC_COUNTER && !(v >= 0)) {
        ds4_log_warn("metrics: counter %s decrement %g ignored", s->family->name, v);
        return;
    }
    pthread_mutex_lock(&s->family->reg->mu);
    s->value += v;
    pthread_mutex_unlock(&s->family->reg->mu);
}

void ds4_series_set(ds4_series_h s, double v)
{
    if (s == NULL)
        return;
    DS4_ASSERT(s->family->type == DS4_METRIC_GAUGE);
    pthread_mutex_lock(&s->family->reg->mu);
    s->value = v;
    pthread_mutex_unlock(&s->family->reg->mu);
}

void ds4_series_observe(ds4_series_h s, double v)
{
    if (s == NULL)
        return;
    struct ds4_metric *m = s->family;
    DS4_ASSERT(m->type == DS4_METRIC_HISTOGRAM);
    size_t i = 0;
    while (i < m->n_bounds && v > m->bounds[i])
        i++;
    pthread_mutex_lock(&m->reg->mu);
    s->buckets[i]++;
    s->count++;
    s->value += v;
    pthread_mutex_unlock(&m->reg->mu);
}

double ds4_series_value(ds4_series_h s)
{
    pthread_mutex_lock(&s->family->reg->mu);
    double v = s->value;
    pthread_mutex_unlock(&s->family->reg->mu);
    return v;
}

unsigned long long ds4_series_count(ds4_series_h s)
{
    pthread_mutex_lock(&s->family->reg->mu);
    unsigned long long n = s->count;
    pthread_mutex_unlock(&s->family->reg->mu);
    return n;
}

static void render_histogram(ds4_buf_t *b, const struct ds4_metric *m, const struct ds4_series *s)
{
    unsigned long long cum = 0;
    const char *sep = s->labels[0] != '\0' ? "," : "";
    for (size_t i = 0; i <= m->n_bounds; i++) {
        cum += s->buckets[i];
        ds4_buf_printf(b, "%s_bucket{%s%sle=\"", m->name, s->labels, sep);
        if (i < m->n_bounds)
            sb_value(b, m->bounds[i]);
        else
            ds4_buf_str(b, "+Inf");
        ds4_buf_printf(b, "\"} %llu\n", cum);
    }
    ds4_buf_printf(b, "%s_sum", m->name);
    if (s->labels[0] != '\0')
        ds4_buf_printf(b, "{%s}", s->labels);
    ds4_buf_str(b, " ");
    sb_value(b, s->value);
    ds4_buf_printf(b, "\n%s_count", m->name);
    if (s->labels[0] != '\0')
        ds4_buf_printf(b, "{%s}", s->labels);
    ds4_buf_printf(b, " %llu\n", s->count);
}

char *ds4_metrics_render(ds4_metrics_h reg)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    ds4_buf_t b = {0};
    ds4_buf_str(&b, "");
    pthread_mutex_lock(&reg->mu);
    for (struct ds4_metric *m = reg->head; m != NULL; m = m->next) {
        ds4_buf_printf(&b, "# HELP %s ", m->name);
        sb_escaped(&b, m->help, false);
        ds4_buf_printf(&b, "\n# TYPE %s %s\n", m->name, type_names[m->type]);
        for (struct ds4_series *s = m->series; s != NULL; s = s->next) {
            if (m->type == DS4_METRIC_HISTOGRAM) {
                render_histogram(&b, m, s);
                continue;
            }
            ds4_buf_str(&b, m->name);
            if (s->labels[0] != '\0')
                ds4_buf_printf(&b, "{%s}", s->labels);
            ds4_buf_str(&b, " ");
            sb_value(&b, s->value);
            ds4_buf_str(&b, "\n");
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (b.oom) {
        ds4_free(b.p);
        return NULL;
    }
    return b.p;
}

bool ds4_metrics_text_find(const char *text, const char *series, double *out)
{
    size_t n = strlen(series);
    for (const char *line = text; line != NULL && *line != '\0';) {
        const char *eol = strchr(line, '\n');
        if (line[0] != '#' && strncmp(line, series, n) == 0 && line[n] == ' ') {
            char *end = NULL;
            double v = strtod(line + n + 1, &end);
            if (end != line + n + 1) {
                *out = v;
                return true;
            }
        }
        line = eol != NULL ? eol + 1 : NULL;
    }
    return false;
}
