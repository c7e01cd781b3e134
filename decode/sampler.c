/* Token sampling (see sampler.h for the exact order of operations). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ds4/alloc.h"
#include "sampler.h"

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

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

ds4_status_t ds4_sampler_init(ds4_sampler_t *s, const ds4_sampling_t *p, uint32_t n_vocab,
                              const int32_t *prompt, size_t n_prompt)
{
    memset(s, 0, sizeof(*s));
    s->p = *p;
    s->n_vocab = n_vocab;
    s->counts = ds4_calloc(n_vocab, sizeof(*s->counts));
    s->seen = ds4_calloc(n_vocab, 1);
    s->work = ds4_malloc_array(n_vocab, sizeof(*s->work));
    s->order = ds4_malloc_array(n_vocab, sizeof(*s->order));
    if (s->counts == NULL || s->seen == NULL || s->work == NULL || s->order == NULL) {
        ds4_sampler_free(s);
        return DS4_ERR_NO_MEMORY;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] >= 0 && (uint32_t)prompt[i] < n_vocab)
            s->seen[prompt[i]] = 1;
    return DS4_OK;
}

void ds4_sampler_free(ds4_sampler_t *s)
{
    ds4_free(s->counts);
    ds4_free(s->seen);
    ds4_free(s->work);
    ds4_free(s->order);
    memset(s, 0, sizeof(*s));
}

/* Descending value, ascending id on ties: a total order, so the sort is deterministic. */
static int by_value_desc(const void *a, const void *b, void *key)
{
    const float *sort_key = key;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    float vx = sort_key[x], vy = sort_key[y];
    if (vx > vy)
        return -1;
    if (vx < vy)
        return 1;
    return x < y ? -1 : (x > y);
}

static void fill_logprobs(ds4_sampler_t *s, const float *logits, ds4_sample_out_t *out)
{
    uint32_t n = s->n_vocab;
    float mx = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        mx = fmaxf(mx, logits[i]);
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    out->logprob = (float)((double)logits[out->token] - lse);
    uint32_t want = s->p.n_logprobs > 1 ? s->p.n_logprobs - 1 : 0;
    if (want > DS4_ARRAY_LEN(out->top_ids))
        want = DS4_ARRAY_LEN(out->top_ids);
    /* Top `want` by partial selection (n * want, fine for want <= 20). */
    out->n_top = 0;
    for (uint32_t k = 0; k < want && k < n; k++) {
        int32_t best = -1;
        for (uint32_t i = 0; i < n; i++) {
            bool taken = false;
            for (uint32_t j = 0; j < out->n_top; j++)
                taken = taken || out->top_ids[j] == (int32_t)i;
            if (taken)
                continue;
            if (best < 0 || logits[i] > logits[best])
                best = (int32_t)i;
        }
        out->top_ids[out->n_top] = best;
        out->top_logprobs[out->n_top] = (float)((double)logits[best] - lse);
        out->n_top++;
    }
}

void ds4_sampler_sample(ds4_sampler_t *s, const float *logits, ds4_sample_out_t *out)
{
    uint32_t n = s->n_vocab;
    float *w = s->work;
    memcpy(w, logits, n * sizeof(*w));
    float r = s->p.repetition_penalty;
    if (r > 0 && r != 1) {
        for (uint32_t i = 0; i < n; i++)
            if (s->seen[i])
                w[i] = w[i] > 0 ? w[i] / r : w[i] * r;
    }
    if (s->p.presence_penalty != 0 || s->p.frequency_penalty != 0) {
        for (uint32_t i = 0; i < n; i++)
            if (s->counts[i] > 0)
                w[i] -= s->p.presence_penalty + s->p.frequency_penalty * (float)s->counts[i];
    }
    int32_t tok = 0;
    if (!(s->p.temperature > 0)) {
        for (uint32_t i = 1; i < n; i++)
            if (w[i] > w[tok])
                tok = (int32_t)i;
    } else {
        float mx = -INFINITY;
        for (uint32_t i = 0; i < n; i++) {
            w[i] /= s->p.temperature;
            mx = fmaxf(mx, w[i]);
        }
        double sum = 0;
        for (uint32_t i = 0; i < n; i++) {
            w[i] = (float)exp((double)w[i] - mx);
            sum += w[i];
        }
        for (uint32_t i = 0; i < n; i++) {
            w[i] = (float)(w[i] / sum);
            s->order[i] = i;
        }
        qsort_r(s->order, n, sizeof(*s->order), by_value_desc, w);
        uint32_t keep = n;
        if (s->p.top_k > 0 && s->p.top_k < keep)
            keep = s->p.top_k;
        if (s->p.top_p > 0 && s->p.top_p < 1) {
            double mass = 0;
            for (uint32_t i = 0; i < keep; i++) {
                mass += w[s->order[i]];
                if (mass >= s->p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if (s->p.min_p > 0) {
            float cut = s->p.min_p * w[s->order[0]];
            uint32_t k = 1;
            while (k < keep && w[s->order[k]] >= cut)
                k++;
            keep = k;
        }
        double total = 0;
        for (uint32_t i = 0; i < keep; i++)
            total += w[s->order[i]];
        /* 53 random bits -> u in [0, 1), scaled to the kept mass. */
        double u = (double)(xoshiro_next(s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
        double cum = 0;
        tok = (int32_t)s->order[keep - 1];
        for (uint32_t i = 0; i < keep; i++) {
            cum += w[s->order[i]];
            if (cum > u) {
                tok = (int32_t)s->order[i];
                break;
            }
        }
    }
    out->token = tok;
    out->n_top = 0;
    out->logprob = 0;
    if (s->p.n_logprobs > 0)
        fill_logprobs(s, logits, out);
    s->counts[tok]++;
    s->seen[tok] = 1;
}
