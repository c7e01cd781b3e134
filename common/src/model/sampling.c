/* Token sampling (see ds4/sampling.h for the order of operations). */
#include "ds4/sampling.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ds4_sampler {
    ds4_sampling_params_t p;
    int32_t V;
    uint64_t rng[4];
    int32_t *counts;  /* occurrences per token among the generated tokens */
    uint8_t *seen;    /* token in the prompt or generated (repetition penalty) */
    float *work;      /* V penalised logits */
    int32_t *order;   /* V ids */
    float *prob;      /* V */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double uniform(uint64_t *s)
{
    return (double)(xoshiro(s) >> 11) * (1.0 / 9007199254740992.0);
}

ds4_sampling_params_t ds4_sampling_params_default(void)
{
    return (ds4_sampling_params_t){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f,
                                   .min_p = 0.0f, .presence_penalty = 0.0f,
                                   .frequency_penalty = 0.0f, .repetition_penalty = 1.0f,
                                   .seed = 0, .n_logprobs = 0};
}

int32_t ds4_argmax(const float *x, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

ds4_status_t ds4_sampler_create(const ds4_sampling_params_t *params, int32_t vocab_size,
                                ds4_sampler_h *out)
{
    const ds4_sampling_params_t *p = params;
    const char *bad = NULL;
    if (p == NULL || vocab_size <= 0)
        bad = "params/vocab_size";
    else if (!isfinite(p->temperature))
        bad = "temperature";
    else if (!(p->top_p > 0.0f) || !isfinite(p->top_p))
        bad = "top_p (must be > 0)";
    else if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        bad = "min_p (must be in [0, 1])";
    else if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        bad = "repetition_penalty (must be > 0)";
    else if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        bad = "presence/frequency penalty";
    else if (p->n_logprobs < 0 || p->n_logprobs > DS4_MAX_LOGPROBS)
        bad = "n_logprobs (0..20)";
    if (bad != NULL) {
        ds4_log_error("sampler: invalid %s", bad);
        return DS4_ERR_INVALID_ARG;
    }
    struct ds4_sampler *s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        return DS4_ERR_NO_MEMORY;
    s->p = *p;
    s->V = vocab_size;
    s->counts = ds4_calloc((size_t)vocab_size, sizeof(int32_t));
    s->seen = ds4_calloc((size_t)vocab_size, 1);
    s->work = ds4_malloc_array((size_t)vocab_size, sizeof(float));
    s->order = ds4_malloc_array((size_t)vocab_size, sizeof(int32_t));
    s->prob = ds4_malloc_array((size_t)vocab_size, sizeof(float));
    if (s->counts == NULL || s->seen == NULL || s->work == NULL || s->order == NULL || s->prob == NULL) {
        ds4_sampler_destroy(s);
        return DS4_ERR_NO_MEMORY;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    *out = s;
    return DS4_OK;
}

void ds4_sampler_destroy(ds4_sampler_h s)
{
    if (s == NULL)
        return;
    ds4_free(s->counts);
    ds4_free(s->seen);
    ds4_free(s->work);
    ds4_free(s->order);
    ds4_free(s->prob);
    ds4_free(s);
}

void ds4_sampler_accept(ds4_sampler_h s, int32_t token)
{
    if (token >= 0 && token < s->V) {
        s->counts[token]++;
        s->seen[token] = 1;
    }
}

void ds4_sampler_accept_prompt(ds4_sampler_h s, const int32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] >= 0 && tokens[i] < s->V)
            s->seen[tokens[i]] = 1;
    }
}

static int by_prob_desc(const void *a, const void *b, void *key)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const float *pk = key;
    float px = pk[x], py = pk[y];
    if (px > py)
        return -1;
    if (px < py)
        return 1;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* Top-n ids of v (descending, lowest id first on ties) by partial selection. */
static int top_n(const float *v, int32_t V, int n, int32_t *ids)
{
    int k = 0;
    for (int32_t i = 0; i < V; i++) {
        int j = k < n ? k++ : n;
        if (j == n && !(v[i] > v[ids[n - 1]]))
            continue;
        if (j == n)
            j = n - 1;
        while (j > 0 && v[i] > v[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    return k;
}

ds4_status_t ds4_sampler_sample(ds4_sampler_h s, const float *logits, ds4_sample_result_t *out)
{
    const ds4_sampling_params_t *p = &s->p;
    int32_t V = s->V;
    float *w = s->work;
    for (int32_t i = 0; i < V; i++) {
        float l = logits[i];
        if (!isfinite(l) && !(l == -INFINITY)) {
            ds4_log_error("sampler: logit %d is not finite", i);
            return DS4_ERR_NUMERIC;
        }
        if (s->seen[i] && p->repetition_penalty != 1.0f)
            l = l > 0.0f ? l / p->repetition_penalty : l * p->repetition_penalty;
        int32_t c = s->counts[i];
        if (c > 0)
            l -= p->frequency_penalty * (float)c + p->presence_penalty;
        w[i] = l;
    }
    /* logprobs: log-softmax of the model's raw logits */
    float lmx = logits[ds4_argmax(logits, V)];
    double z = 0.0;
    for (int32_t i = 0; i < V; i++)
        z += exp((double)(logits[i] - lmx));
    double lz = (double)lmx + log(z);
    float mx = w[ds4_argmax(w, V)];
    int32_t tok;
    if (p->temperature <= 0.0f || p->top_k == 1) {
        tok = ds4_argmax(w, V);
    } else {
        float *pr = s->prob;
        double sum = 0.0;
        for (int32_t i = 0; i < V; i++) {
            pr[i] = (float)exp((double)(w[i] - mx) / (double)p->temperature);
            sum += pr[i];
        }
        for (int32_t i = 0; i < V; i++)
            pr[i] = (float)(pr[i] / sum);
        int32_t n = V;
        int32_t *ord = s->order;
        bool need_sort = (p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f || p->min_p > 0.0f;
        for (int32_t i = 0; i < V; i++)
            ord[i] = i;
        if (need_sort) {
            qsort_r(ord, (size_t)V, sizeof(int32_t), by_prob_desc, pr);
            if (p->top_k > 0 && p->top_k < n)
                n = p->top_k;
            if (p->top_p < 1.0f) {
                double acc = 0.0;
                int32_t k = 0;
                while (k < n) {
                    acc += pr[ord[k++]];
                    if (acc >= p->top_p)
                        break;
                }
                n = k;
            }
            if (p->min_p > 0.0f) {
                float lim = p->min_p * pr[ord[0]];
                int32_t k = 1;
                while (k < n && pr[ord[k]] >= lim)
                    k++;
                n = k;
            }
        }
        double mass = 0.0;
        for (int32_t i = 0; i < n; i++)
            mass += pr[ord[i]];
        double u = uniform(s->rng) * mass, acc = 0.0;
        tok = ord[n - 1];
        for (int32_t i = 0; i < n; i++) {
            acc += pr[ord[i]];
            if (u < acc) {
                tok = ord[i];
                break;
            }
        }
    }
    out->token = tok;
    out->logprob = (float)((double)logits[tok] - lz);
    out->n_top = 0;
    if (p->n_logprobs > 0) {
        out->n_top = top_n(logits, V, p->n_logprobs, out->top_ids);
        for (int i = 0; i < out->n_top; i++)
            out->top_logprobs[i] = (float)((double)logits[out->top_ids[i]] - lz);
    }
    return DS4_OK;
}
