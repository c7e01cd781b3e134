/* Helpers of the golden-model tests: file loading and comparison metrics. */
#ifndef DS4_TEST_GOLDEN_H
#define DS4_TEST_GOLDEN_H

#include "ds4/alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static inline double golden_corr(const float *a, const float *b, size_t n)
{
    double ma = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        ma += a[i];
        mb += b[i];
    }
    ma /= (double)n;
    mb /= (double)n;
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / sqrt(saa * sbb);
}

static inline double golden_maxdiff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        m = d > m ? d : m;
    }
    return m;
}

static inline double golden_maxabs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

static inline int golden_argmax(const float *a, size_t n)
{
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (a[i] > a[b])
            b = i;
    return (int)b;
}

static inline int golden_cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : (a > b ? 1 : 0);
}

#endif
