/*
 * decode/sampler.h - per-sequence token sampling: penalties, temperature, top-k, top-p, min-p,
 * a seeded RNG, logprobs. Used by ds4-decode's batcher and by the single-process reference
 * (tests, bench) so both draw the same tokens from the same logits.
 *
 * Order (fixed, documented because outputs depend on it):
 *   1. repetition_penalty r (r > 0, != 1) on every token seen (prompt + generated):
 *      logit > 0 -> logit / r, else logit * r;
 *   2. presence p and frequency f on generated tokens: logit -= p + f * count;
 *   3. temperature 0 -> argmax (lowest id wins ties), stop here;
 *   4. logit / T, softmax (max-subtracted, double accumulation);
 *   5. top_k (k > 0): keep the k most likely (ties by lower id);
 *   6. top_p (0 < p < 1): keep the smallest prefix (most likely first) whose mass >= p;
 *   7. min_p (m > 0): drop tokens with prob < m * max prob;
 *   8. renormalise; draw u in [0, 1) from xoshiro256** seeded by splitmix64(seed); walk the kept
 *      tokens in descending probability (ties by lower id) until the cumulative mass > u.
 * Logprobs are log-softmax of the raw logits (before penalties and temperature).
 * Not thread-safe per sampler; one sampler per sequence.
 */
#ifndef DS4_DECODE_SAMPLER_H
#define DS4_DECODE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4/status.h"

typedef struct ds4_sampling {
    float temperature;        /* 0 = greedy */
    uint32_t top_k;           /* 0 = off */
    float top_p;              /* 0 or 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 0 or 1 = off */
    float presence_penalty;
    float frequency_penalty;
    uint64_t seed;
    uint32_t n_logprobs; /* 0 = none; N = the sampled token + top N-1 */
} ds4_sampling_t;

typedef struct ds4_sampler {
    ds4_sampling_t p;
    uint32_t n_vocab;
    uint64_t rng[4];
    uint32_t *counts; /* generated occurrences per token */
    uint8_t *seen;    /* token appeared in the prompt or output */
    float *work;      /* n_vocab scratch */
    uint32_t *order;  /* n_vocab scratch */
} ds4_sampler_t;

typedef struct ds4_sample_out {
    int32_t token;
    float logprob; /* of `token` under the raw model distribution */
    uint32_t n_top;
    int32_t top_ids[20];
    float top_logprobs[20];
} ds4_sample_out_t;

ds4_status_t ds4_sampler_init(ds4_sampler_t *s, const ds4_sampling_t *p, uint32_t n_vocab,
                              const int32_t *prompt, size_t n_prompt);
void ds4_sampler_free(ds4_sampler_t *s);
/* Picks the next token from `logits` (n_vocab floats, left unchanged) and records it. */
void ds4_sampler_sample(ds4_sampler_t *s, const float *logits, ds4_sample_out_t *out);

#endif /* DS4_DECODE_SAMPLER_H */
