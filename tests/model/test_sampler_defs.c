/*
 * test_sampler_defs: ds4/sampling.h against the definitions, computed independently here:
 * greedy = argmax (lowest id on ties); sampled frequencies follow softmax(logits / T) within a
 * 5-sigma bound; top-k / top-p / min-p never draw a token outside their set; the same seed gives
 * the same tokens and another seed different ones; repetition / presence / frequency penalties
 * change the greedy choice exactly as their formulas say; logprobs are log-softmax.
 */
#include <math.h>

#include "ds4/sampling.h"
#include "test.h"

#define V 8

static const float base[V] = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f, 2.0f, -2.0f};

/* A sampler from the given fields (everything else off), with `prompt` recorded. */
static ds4_sampler_h mk(float temperature, int32_t top_k, float top_p, float min_p,
                        float repetition, float presence, float frequency, uint64_t seed,
                        int32_t n_logprobs, const int32_t *prompt, size_t n_prompt)
{
    ds4_sampling_params_t p = ds4_sampling_params_default();
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = repetition;
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    p.seed = seed;
    p.n_logprobs = n_logprobs;
    ds4_sampler_h s = NULL;
    DS4_CHECK_STATUS(ds4_sampler_create(&p, V, &s), DS4_OK);
    if (s != NULL && prompt != NULL)
        ds4_sampler_accept_prompt(s, prompt, n_prompt);
    return s;
}

/* Samples and records the token as generated (what a decode loop does). */
static int32_t draw(ds4_sampler_h s, ds4_sample_result_t *o)
{
    DS4_CHECK_STATUS(ds4_sampler_sample(s, base, o), DS4_OK);
    ds4_sampler_accept(s, o->token);
    return o->token;
}

static void test_greedy_and_logprobs(void)
{
    ds4_sampler_h s = mk(0, 0, 1, 0, 1, 0, 0, 0, 2, NULL, 0);
    ds4_sample_result_t o;
    draw(s, &o);
    DS4_CHECK_EQ_INT(o.token, 1); /* ids 1 and 4 tie at 3.0: the lower id */
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    DS4_CHECK_NEAR(o.logprob, 3.0 - log(z), 1e-5);
    DS4_CHECK_EQ_INT(o.n_top, 2);
    DS4_CHECK(o.top_ids[0] == 1 && o.top_ids[1] == 4);
    ds4_sampler_destroy(s);
}

static void test_distribution(void)
{
    const float T = 0.7f;
    double q[V], z = 0;
    for (int i = 0; i < V; i++)
        z += q[i] = exp(base[i] / T);
    for (int i = 0; i < V; i++)
        q[i] /= z;
    ds4_sampler_h s = mk(T, 0, 1, 0, 1, 0, 0, 99, 0, NULL, 0);
    enum { N = 40000 };
    int count[V] = {0};
    ds4_sample_result_t o;
    for (int n = 0; n < N; n++)
        count[draw(s, &o)]++; /* no penalties configured */
    for (int i = 0; i < V; i++) {
        double mean = N * q[i], sd = sqrt(N * q[i] * (1 - q[i]));
        DS4_CHECKF(fabs(count[i] - mean) <= 5 * sd + 1, "token %d: %d draws, expected %.0f", i,
                   count[i], mean);
    }
    ds4_sampler_destroy(s);
}

static void draws(ds4_sampler_h s, int *count, int n)
{
    ds4_sample_result_t o;
    for (int i = 0; i < n; i++)
        count[draw(s, &o)]++;
    ds4_sampler_destroy(s);
}

static void test_filters(void)
{
    /* top_k 3: ids 1, 4 (3.0) and 2 (2.5) only */
    int c[V] = {0};
    draws(mk(1.5f, 3, 1, 0, 1, 0, 0, 1, 0, NULL, 0), c, 3000);
    DS4_CHECK(c[0] == 0 && c[3] == 0 && c[5] == 0 && c[6] == 0 && c[7] == 0);
    DS4_CHECK(c[1] > 0 && c[4] > 0 && c[2] > 0);
    /* top_p: probabilities at T=1; smallest prefix with mass >= 0.5 */
    double q[V], z = 0;
    for (int i = 0; i < V; i++)
        z += q[i] = exp(base[i]);
    for (int i = 0; i < V; i++)
        q[i] /= z;
    /* order: 1, 4 (tie, id order), 2, 6, 0, 5, 3, 7; q1 + q4 = 0.58 >= 0.5 -> {1, 4} */
    DS4_CHECK(q[1] + q[4] >= 0.5 && q[1] < 0.5);
    int c2[V] = {0};
    draws(mk(1, 0, 0.5f, 0, 1, 0, 0, 2, 0, NULL, 0), c2, 3000);
    DS4_CHECK(c2[1] + c2[4] == 3000);
    /* min_p 0.5: keep tokens with q >= 0.5 * q_max: 1, 4, 2 (e^-0.5 = 0.61) but not 6 (0.37) */
    int c3[V] = {0};
    draws(mk(1, 0, 1, 0.5f, 1, 0, 0, 3, 0, NULL, 0), c3, 3000);
    DS4_CHECK(c3[1] + c3[4] + c3[2] == 3000 && c3[2] > 0);
}

static void test_seeds(void)
{
    ds4_sampler_h a = mk(1, 0, 1, 0, 1, 0, 0, 1234, 0, NULL, 0);
    ds4_sampler_h b = mk(1, 0, 1, 0, 1, 0, 0, 1234, 0, NULL, 0);
    ds4_sampler_h c = mk(1, 0, 1, 0, 1, 0, 0, 1235, 0, NULL, 0);
    int same_ab = 0, same_ac = 0;
    ds4_sample_result_t x, y, w;
    for (int i = 0; i < 64; i++) {
        draw(a, &x);
        draw(b, &y);
        draw(c, &w);
        same_ab += x.token == y.token;
        same_ac += x.token == w.token;
    }
    DS4_CHECK_EQ_INT(same_ab, 64);
    DS4_CHECK(same_ac < 64);
    ds4_sampler_destroy(a);
    ds4_sampler_destroy(b);
    ds4_sampler_destroy(c);
}

static void test_penalties(void)
{
    /* repetition 2 on prompt token 1: 3.0 -> 1.5, so greedy picks 4 */
    int32_t prompt[1] = {1};
    ds4_sampler_h s = mk(0, 0, 1, 0, 2.0f, 0, 0, 0, 0, prompt, 1);
    ds4_sample_result_t o;
    DS4_CHECK_EQ_INT(draw(s, &o), 4);
    /* now 4 was generated too: 1 -> 1.5, 4 -> 1.5, 2 stays 2.5 */
    DS4_CHECK_EQ_INT(draw(s, &o), 2);
    ds4_sampler_destroy(s);
    /* presence 0.6 + frequency 0.5 per occurrence on generated tokens only */
    s = mk(0, 0, 1, 0, 1, 0.6f, 0.5f, 0, 0, prompt, 1);
    DS4_CHECK_EQ_INT(draw(s, &o), 1); /* prompt tokens are not penalised by presence/frequency */
    DS4_CHECK_EQ_INT(draw(s, &o), 4); /* 1: 3.0 - 0.6 - 0.5 = 1.9 */
    DS4_CHECK_EQ_INT(draw(s, &o), 2); /* 4: 1.9 too; 2: 2.5 */
    ds4_sampler_destroy(s);
}

int main(void)
{
    DS4_RUN(test_greedy_and_logprobs);
    DS4_RUN(test_distribution);
    DS4_RUN(test_filters);
    DS4_RUN(test_seeds);
    DS4_RUN(test_penalties);
    return ds4_test_finish();
}
