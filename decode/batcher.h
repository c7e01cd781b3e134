/*
 * decode/batcher.h - continuous batching over every sequence of a decode worker, on one compute
 * thread that owns the model.
 *
 * The loop hands over a sequence (ds4_bseq_t: engine state, the prompt tokens not yet fed,
 * sampling and stop rules); from the next step on it is in the batch: every step feeds each
 * sequence either its pending prompt tokens (up to chunk_tokens) or its last sampled token,
 * runs one ds4_model_step over all of them, samples per sequence, and checks stop conditions.
 * Sampled tokens and finishes go back to the loop as events (uv_async_send); a finished or
 * cancelled sequence leaves the batch and its FINISH event is the last one about it.
 */
#ifndef DS4_DECODE_BATCHER_H
#define DS4_DECODE_BATCHER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "ds4/model.h"
#include "ds4/sampling.h"

typedef enum ds4_finish {
    DS4_FINISH_STOP = 1,   /* EOS or a stop id */
    DS4_FINISH_LENGTH = 2, /* max_tokens or the context length */
    DS4_FINISH_CANCELLED = 3,
    DS4_FINISH_ERROR = 4,
} ds4_finish_t;

typedef struct ds4_bseq {
    uint64_t request_id;
    void *owner;     /* loop-side request */
    ds4_seq_h seq;   /* engine state; the batcher destroys it when it finishes */
    int32_t *prompt; /* whole prompt (ds4_free'd by the batcher at finish) */
    size_t n_prompt;
    size_t n_fed;          /* prompt tokens already in `seq` */
    ds4_sampler_h sampler; /* created by the loop (prompt recorded); destroyed by the batcher */
    uint32_t n_logprobs;   /* requested: 0 none, N = the token's logprob + top N-1 */
    uint32_t max_tokens;
    int32_t *stop_ids; /* ds4_free'd by the batcher */
    size_t n_stop_ids;
    int32_t eos_id; /* -1: none */
    bool ignore_eos;
    /* batcher-private */
    uint32_t n_generated;
    int32_t last_token;
    float *logits;
    int cancel; /* set with __atomic by ds4_batcher_cancel */
    struct ds4_bseq *next;
} ds4_bseq_t;

typedef enum ds4_bevent_kind { DS4_BEVENT_TOKEN = 1, DS4_BEVENT_FINISH = 2 } ds4_bevent_kind_t;

typedef struct ds4_bevent {
    ds4_bevent_kind_t kind;
    ds4_bseq_t *bseq;        /* after FINISH the loop owns it again (ds4_batcher_free_seq) */
    ds4_sample_result_t sample; /* TOKEN */
    uint32_t batch_size;     /* TOKEN: sequences in the step that produced it */
    uint64_t sampled_ns;     /* TOKEN: ds4_clock_now_ns() right after sampling */
    ds4_finish_t finish;     /* FINISH */
    uint32_t n_generated;    /* FINISH */
    char error[160];         /* FINISH with ERROR */
} ds4_bevent_t;

typedef void (*ds4_batcher_event_cb)(void *arg, const ds4_bevent_t *events, size_t n);

typedef struct ds4_batcher ds4_batcher_t;

typedef struct ds4_batcher_params {
    ds4_model_h model;
    uint32_t n_vocab;
    uint32_t max_batch;             /* sequences per step */
    uint32_t chunk_tokens;          /* prompt tokens per sequence per step */
    ds4_batcher_event_cb on_events; /* on the loop thread */
    void *arg;
} ds4_batcher_params_t;

ds4_status_t ds4_batcher_create(uv_loop_t *loop, const ds4_batcher_params_t *p,
                                ds4_batcher_t **out);
/* Stops the thread, joins it, and delivers FINISH CANCELLED for every sequence still held
 * (through on_events, from inside this call); then closes the async handle (run the loop
 * afterwards to release the memory). */
void ds4_batcher_destroy(ds4_batcher_t *b);
/* Adds a sequence (ownership moves to the batcher until its FINISH event). */
void ds4_batcher_submit(ds4_batcher_t *b, ds4_bseq_t *s);
/* Asks a submitted sequence to stop; its FINISH (CANCELLED) follows. */
void ds4_batcher_cancel(ds4_batcher_t *b, ds4_bseq_t *s);
/* Frees a finished sequence's remaining memory. */
void ds4_batcher_free_seq(ds4_bseq_t *s);

/* Statistics (any thread). */
uint32_t ds4_batcher_active(ds4_batcher_t *b);
uint32_t ds4_batcher_max_batch_seen(ds4_batcher_t *b);
uint64_t ds4_batcher_steps(ds4_batcher_t *b);

#endif /* DS4_DECODE_BATCHER_H */
