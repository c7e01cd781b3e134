/*
 * ds4/sampling.h - token sampling from logits: greedy, temperature, top-k, top-p, min-p,
 * presence / frequency / repetition penalties, seeded RNG, top-n logprobs.
 *
 * Order of operations (the common serving convention, vLLM/llama.cpp):
 *   1. penalties: repetition on every token seen in the prompt or the output
 *      (logit > 0 ? /r : *r), then on generated tokens only
 *      logit -= frequency * count + presence * (count > 0) (OpenAI / vLLM semantics);
 *   2. temperature <= 0 (or top_k == 1) -> greedy argmax (ties: lowest id);
 *   3. logits / temperature, softmax;
 *   4. top-k, then top-p (smallest prefix of the sorted distribution with mass >= top_p),
 *      then min-p (drop p < min_p * p_max); renormalise;
 *   5. draw with the sampler's RNG (xoshiro256** seeded by splitmix64(seed)): deterministic for
 *      a seed on every platform.
 * Logprobs (of the chosen token and the top n) are log-softmax of the model's raw logits, before
 * penalties, temperature and truncation (the model's own distribution, as vLLM reports it).
 *
 * The caller feeds the history: ds4_sampler_accept_prompt() once with the prompt, then
 * ds4_sampler_accept() with every generated token (sampling does not record it by itself, so a
 * speculative or rejected draw leaves no trace).
 */
#ifndef DS4_SAMPLING_H
#define DS4_SAMPLING_H

#include "ds4/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_sampling_params {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float presence_penalty;   /* 0: off */
    float frequency_penalty;  /* 0: off */
    float repetition_penalty; /* 1: off */
    uint64_t seed;
    int32_t n_logprobs;       /* top-n logprobs to report (0..DS4_MAX_LOGPROBS) */
} ds4_sampling_params_t;

#define DS4_MAX_LOGPROBS 20

ds4_sampling_params_t ds4_sampling_params_default(void);

typedef struct ds4_sampler *ds4_sampler_h;

typedef struct ds4_sample_result {
    int32_t token;
    float logprob;                        /* of the chosen token */
    int32_t n_top;
    int32_t top_ids[DS4_MAX_LOGPROBS];
    float top_logprobs[DS4_MAX_LOGPROBS];
} ds4_sample_result_t;

/* Validates params (DS4_ERR_INVALID_ARG naming the field via the log). */
ds4_status_t ds4_sampler_create(const ds4_sampling_params_t *params, int32_t vocab_size,
                                ds4_sampler_h *out);
void ds4_sampler_destroy(ds4_sampler_h s);
/* Records a generated token (frequency/presence counts and repetition). */
void ds4_sampler_accept(ds4_sampler_h s, int32_t token);
/* Records prompt tokens (repetition penalty only). Ids outside the vocabulary are ignored. */
void ds4_sampler_accept_prompt(ds4_sampler_h s, const int32_t *tokens, size_t n);
/* Samples from logits[vocab_size] (not modified). */
ds4_status_t ds4_sampler_sample(ds4_sampler_h s, const float *logits, ds4_sample_result_t *out);

/* Greedy argmax (lowest id on ties). */
int32_t ds4_argmax(const float *logits, int32_t n);

#ifdef __cplusplus
}
#endif
#endif /* DS4_SAMPLING_H */
