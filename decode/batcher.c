/* Continuous batching thread of ds4-decode (see batcher.h). */
#include <stdio.h>
#include <string.h>

#include "batcher.h"
#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/log.h"

struct ds4_batcher {
    ds4_batcher_params_t p;
    uv_loop_t *loop;
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    uv_async_t async;
    bool stop;
    ds4_bseq_t *inbox;    /* submitted, not yet in the batch (mu) */
    ds4_bevent_t *events; /* produced, not yet delivered (mu) */
    size_t n_events, cap_events;
    uint32_t active, max_seen; /* atomics */
    uint64_t steps;
};

static void push_event(ds4_batcher_t *b, const ds4_bevent_t *ev)
{
    uv_mutex_lock(&b->mu);
    if (b->n_events == b->cap_events) {
        size_t cap = b->cap_events == 0 ? 64 : b->cap_events * 2;
        ds4_bevent_t *grown = ds4_realloc_array(b->events, cap, sizeof(*grown));
        DS4_ASSERT(grown != NULL); /* a lost FINISH would leak a request forever */
        b->events = grown;
        b->cap_events = cap;
    }
    b->events[b->n_events++] = *ev;
    uv_mutex_unlock(&b->mu);
}

static void finish(ds4_batcher_t *b, ds4_bseq_t *s, ds4_finish_t why, const char *error)
{
    ds4_bevent_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = DS4_BEVENT_FINISH;
    ev.bseq = s;
    ev.finish = why;
    ev.n_generated = s->n_generated;
    if (error != NULL)
        snprintf(ev.error, sizeof(ev.error), "%s", error);
    push_event(b, &ev);
}

static bool is_stop(const ds4_bseq_t *s, int32_t tok)
{
    if (!s->ignore_eos && tok == s->eos_id)
        return true;
    for (size_t i = 0; i < s->n_stop_ids; i++)
        if (s->stop_ids[i] == tok)
            return true;
    return false;
}

static void thread_main(void *arg)
{
    ds4_batcher_t *b = arg;
    ds4_bseq_t *batch = NULL;
    uint32_t n_batch = 0;
    ds4_step_item_t *items = ds4_calloc(b->p.max_batch, sizeof(*items));
    ds4_bseq_t **step_seqs = ds4_calloc(b->p.max_batch, sizeof(*step_seqs));
    DS4_ASSERT(items != NULL && step_seqs != NULL);
    for (;;) {
        uv_mutex_lock(&b->mu);
        while (!b->stop && b->inbox == NULL && batch == NULL)
            uv_cond_wait(&b->cond, &b->mu);
        bool stopping = b->stop;
        /* Move submitted sequences into the batch, keeping arrival order. */
        ds4_bseq_t *in = b->inbox;
        b->inbox = NULL;
        uv_mutex_unlock(&b->mu);
        ds4_bseq_t *rev = NULL;
        while (in != NULL) {
            ds4_bseq_t *next = in->next;
            in->next = rev;
            rev = in;
            in = next;
        }
        ds4_bseq_t **tail = &batch;
        while (*tail != NULL)
            tail = &(*tail)->next;
        *tail = rev;
        n_batch = 0;
        for (ds4_bseq_t *s = batch; s != NULL; s = s->next)
            n_batch++;

        /* Drop cancelled sequences (and everything when stopping). */
        for (ds4_bseq_t **pp = &batch; *pp != NULL;) {
            ds4_bseq_t *s = *pp;
            if (stopping || __atomic_load_n(&s->cancel, __ATOMIC_ACQUIRE)) {
                *pp = s->next;
                finish(b, s, DS4_FINISH_CANCELLED, NULL);
                n_batch--;
                continue;
            }
            pp = &s->next;
        }
        __atomic_store_n(&b->active, n_batch, __ATOMIC_RELEASE);
        if (stopping) {
            uv_async_send(&b->async);
            break;
        }
        if (batch == NULL) {
            uv_async_send(&b->async);
            continue;
        }

        /* One step over (up to max_batch of) the batch. */
        int n_items = 0;
        for (ds4_bseq_t *s = batch; s != NULL && n_items < (int)b->p.max_batch; s = s->next) {
            ds4_step_item_t *it = &items[n_items];
            memset(it, 0, sizeof(*it));
            it->seq = s->seq;
            if (s->n_fed < s->n_prompt) {
                size_t left = s->n_prompt - s->n_fed;
                size_t n = left < b->p.chunk_tokens ? left : b->p.chunk_tokens;
                it->tokens = s->prompt + s->n_fed;
                it->n_tokens = (int32_t)n;
                /* logits only when this chunk ends the prompt */
                it->logits = s->n_fed + n == s->n_prompt ? s->logits : NULL;
            } else {
                it->tokens = &s->last_token;
                it->n_tokens = 1;
                it->logits = s->logits;
            }
            step_seqs[n_items++] = s;
        }
        ds4_status_t st = ds4_model_step(b->p.model, items, n_items, NULL);
        b->steps++;
        if ((uint32_t)n_items > __atomic_load_n(&b->max_seen, __ATOMIC_ACQUIRE))
            __atomic_store_n(&b->max_seen, (uint32_t)n_items, __ATOMIC_RELEASE);
        for (int i = 0; i < n_items; i++) {
            ds4_bseq_t *s = step_seqs[i];
            bool done = false;
            if (st != DS4_OK) {
                char msg[120];
                snprintf(msg, sizeof(msg), "engine step failed: %s", ds4_status_str(st));
                finish(b, s, st == DS4_ERR_CONTEXT_FULL ? DS4_FINISH_LENGTH : DS4_FINISH_ERROR,
                       st == DS4_ERR_CONTEXT_FULL ? NULL : msg);
                done = true;
            } else if (s->n_fed < s->n_prompt) {
                s->n_fed += (size_t)items[i].n_tokens;
                if (s->n_fed < s->n_prompt)
                    continue; /* more prompt to feed */
            }
            if (!done) {
                ds4_bevent_t ev;
                memset(&ev, 0, sizeof(ev));
                ev.kind = DS4_BEVENT_TOKEN;
                ev.bseq = s;
                ds4_status_t sst = ds4_sampler_sample(s->sampler, s->logits, &ev.sample);
                if (sst != DS4_OK) {
                    finish(b, s, DS4_FINISH_ERROR, "sampling failed: non-finite logits");
                    done = true;
                } else {
                    ds4_sampler_accept(s->sampler, ev.sample.token);
                    ev.sampled_ns = ds4_clock_now_ns();
                    ev.batch_size = (uint32_t)n_items;
                    s->last_token = ev.sample.token;
                    s->n_generated++;
                    push_event(b, &ev);
                    if (is_stop(s, ev.sample.token)) {
                        finish(b, s, DS4_FINISH_STOP, NULL);
                        done = true;
                    } else if (s->n_generated >= s->max_tokens) {
                        finish(b, s, DS4_FINISH_LENGTH, NULL);
                        done = true;
                    }
                }
            }
            if (done) {
                for (ds4_bseq_t **pp = &batch; *pp != NULL; pp = &(*pp)->next)
                    if (*pp == s) {
                        *pp = s->next;
                        break;
                    }
            }
        }
        n_batch = 0;
        for (ds4_bseq_t *s = batch; s != NULL; s = s->next)
            n_batch++;
        __atomic_store_n(&b->active, n_batch, __ATOMIC_RELEASE);
        /* Rotate so sequences beyond max_batch get their turn. */
        if (batch != NULL && n_batch > b->p.max_batch) {
            ds4_bseq_t *first = batch;
            batch = first->next;
            ds4_bseq_t **t = &batch;
            while (*t != NULL)
                t = &(*t)->next;
            *t = first;
            first->next = NULL;
        }
        uv_async_send(&b->async);
    }
    ds4_free(items);
    ds4_free(step_seqs);
}

static void deliver(uv_async_t *a)
{
    ds4_batcher_t *b = a->data;
    for (;;) {
        uv_mutex_lock(&b->mu);
        ds4_bevent_t *evs = b->events;
        size_t n = b->n_events;
        b->events = NULL;
        b->n_events = b->cap_events = 0;
        uv_mutex_unlock(&b->mu);
        if (n == 0) {
            ds4_free(evs);
            return;
        }
        b->p.on_events(b->p.arg, evs, n);
        ds4_free(evs);
    }
}

ds4_status_t ds4_batcher_create(uv_loop_t *loop, const ds4_batcher_params_t *p, ds4_batcher_t **out)
{
    if (p->model == NULL || p->max_batch == 0 || p->chunk_tokens == 0 || p->on_events == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_batcher_t *b = ds4_calloc(1, sizeof(*b));
    if (b == NULL)
        return DS4_ERR_NO_MEMORY;
    b->p = *p;
    b->loop = loop;
    uv_mutex_init(&b->mu);
    uv_cond_init(&b->cond);
    uv_async_init(loop, &b->async, deliver);
    b->async.data = b;
    if (uv_thread_create(&b->thread, thread_main, b) != 0) {
        uv_close((uv_handle_t *)&b->async, NULL);
        uv_cond_destroy(&b->cond);
        uv_mutex_destroy(&b->mu);
        /* memory released after the close callback would be cleaner; the loop has not run
         * this handle yet, so the struct must outlive uv_close: keep it (one-off leak on a
         * failed start, process exits). */
        return DS4_ERR_INTERNAL;
    }
    *out = b;
    return DS4_OK;
}

static void batcher_closed(uv_handle_t *h)
{
    ds4_batcher_t *b = h->data;
    ds4_free(b->events);
    ds4_free(b);
}

void ds4_batcher_destroy(ds4_batcher_t *b)
{
    if (b == NULL)
        return;
    uv_mutex_lock(&b->mu);
    b->stop = true;
    uv_cond_signal(&b->cond);
    uv_mutex_unlock(&b->mu);
    uv_thread_join(&b->thread);
    /* Sequences still in the inbox never entered the batch: finish them too. */
    for (ds4_bseq_t *s = b->inbox, *next; s != NULL; s = next) {
        next = s->next;
        finish(b, s, DS4_FINISH_CANCELLED, NULL);
    }
    b->inbox = NULL;
    deliver(&b->async);
    uv_cond_destroy(&b->cond);
    uv_mutex_destroy(&b->mu);
    uv_close((uv_handle_t *)&b->async, batcher_closed);
}

void ds4_batcher_submit(ds4_batcher_t *b, ds4_bseq_t *s)
{
    s->logits = ds4_malloc_array(b->p.n_vocab, sizeof(float));
    DS4_ASSERT(s->logits != NULL);
    uv_mutex_lock(&b->mu);
    s->next = b->inbox;
    b->inbox = s;
    uv_cond_signal(&b->cond);
    uv_mutex_unlock(&b->mu);
}

void ds4_batcher_cancel(ds4_batcher_t *b, ds4_bseq_t *s)
{
    __atomic_store_n(&s->cancel, 1, __ATOMIC_RELEASE);
    uv_mutex_lock(&b->mu);
    uv_cond_signal(&b->cond);
    uv_mutex_unlock(&b->mu);
}

void ds4_batcher_free_seq(ds4_bseq_t *s)
{
    if (s->seq != NULL)
        ds4_seq_destroy(s->seq);
    ds4_sampler_destroy(s->sampler);
    s->sampler = NULL;
    ds4_free(s->prompt);
    ds4_free(s->stop_ids);
    ds4_free(s->logits);
    ds4_free(s);
}

uint32_t ds4_batcher_active(ds4_batcher_t *b)
{
    return __atomic_load_n(&b->active, __ATOMIC_ACQUIRE);
}

uint32_t ds4_batcher_max_batch_seen(ds4_batcher_t *b)
{
    return __atomic_load_n(&b->max_seen, __ATOMIC_ACQUIRE);
}

uint64_t ds4_batcher_steps(ds4_batcher_t *b)
{
    return b->steps;
}
