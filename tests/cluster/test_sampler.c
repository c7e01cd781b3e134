/*
 * test_sampler: decode/sampler.c against the definitions, computed independently here:
 * greedy = argmax (lowest id on ties); sampled frequencies follow softmax(logits / T) within a
 * 5-sigma bound; top-k / top-p / min-p never draw a token outside their set; the same seed gives
 * the same tokens and another seed different ones; repetition / presence / frequency penalties
 * change the greedy choice exactly as their formulas say; logprobs are log-softmax.
 */
#include <math.h>

#include "sampler.h"
#include "test.h"

#define V 8

static const float base[V] = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f, 2.0f, -2.0f};

static void test_greedy_and_logprobs(void)
{
    ds4_sampler_t s;
    ds4_sampling_t p = {.temperature = 0, .n_logprobs = 3};
    DS4_CHECK_STATUS(ds4_sampler_init(&s, &p, V, NULL, 0), DS4_OK);
    ds4_sample_out_t o;
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 1); /* ids 1 and 4 tie at 3.0: the lower id */
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    DS4_CHECK_NEAR(o.logprob, 3.0 - log(z), 1e-5);
    DS4_CHECK_EQ_INT(o.n_top, 2);
    DS4_CHECK(o.top_ids[0] == 1 && o.top_ids[1] == 4);
    ds4_sampler_free(&s);
}

static void test_distribution(void)
{
    const float T = 0.7f;
    double q[V], z = 0;
    for (int i = 0; i < V; i++)
        z += q[i] = exp(base[i] / T);
    for (int i = 0; i < V; i++)
        q[i] /= z;
    ds4_sampler_t s;
    ds4_sampling_t p = {.temperature = T, .seed = 99};
    DS4_CHECK_STATUS(ds4_sampler_init(&s, &p, V, NULL, 0), DS4_OK);
    enum { N = 40000 };
    int count[V] = {0};
    ds4_sample_out_t o;
    for (int n = 0; n < N; n++) {
        ds4_sampler_sample(&s, base, &o);
        count[o.token]++;
        memset(s.counts, 0, V * sizeof(*s.counts)); /* no penalties configured anyway */
    }
    for (int i = 0; i < V; i++) {
        double mean = N * q[i], sd = sqrt(N * q[i] * (1 - q[i]));
        DS4_CHECKF(fabs(count[i] - mean) <= 5 * sd + 1, "token %d: %d draws, expected %.0f", i,
                   count[i], mean);
    }
    ds4_sampler_free(&s);
}

static void draws(const ds4_sampling_t *p, int *count, int n)
{
    ds4_sampler_t s;
    ds4_sampler_init(&s, p, V, NULL, 0);
    ds4_sample_out_t o;
    for (int i = 0; i < n; i++) {
        ds4_sampler_sample(&s, base, &o);
        count[o.token]++;
    }
    ds4_sampler_free(&s);
}

static void test_filters(void)
{
    /* top_k 3: ids 1, 4 (3.0) and 2 (2.5) only */
    int c[V] = {0};
    ds4_sampling_t p = {.temperature = 1.5f, .top_k = 3, .seed = 1};
    draws(&p, c, 3000);
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
    ds4_sampling_t pp = {.temperature = 1, .top_p = 0.5f, .seed = 2};
    draws(&pp, c2, 3000);
    DS4_CHECK(c2[1] + c2[4] == 3000);
    /* min_p 0.5: keep tokens with q >= 0.5 * q_max: 1, 4, 2 (e^-0.5 = 0.61) but not 6 (0.37) */
    int c3[V] = {0};
    ds4_sampling_t pm = {.temperature = 1, .min_p = 0.5f, .seed = 3};
    draws(&pm, c3, 3000);
    DS4_CHECK(c3[1] + c3[4] + c3[2] == 3000 && c3[2] > 0);
}

static void test_seeds(void)
{
    ds4_sampling_t p = {.temperature = 1.0f, .seed = 1234};
    ds4_sampler_t a, b, c;
    ds4_sampler_init(&a, &p, V, NULL, 0);
    ds4_sampler_init(&b, &p, V, NULL, 0);
    p.seed = 1235;
    ds4_sampler_init(&c, &p, V, NULL, 0);
    int same_ab = 0, same_ac = 0;
    ds4_sample_out_t x, y, w;
    for (int i = 0; i < 64; i++) {
        ds4_sampler_sample(&a, base, &x);
        ds4_sampler_sample(&b, base, &y);
        ds4_sampler_sample(&c, base, &w);
        same_ab += x.token == y.token;
        same_ac += x.token == w.token;
    }
    DS4_CHECK_EQ_INT(same_ab, 64);
    DS4_CHECK(same_ac < 64);
    ds4_sampler_free(&a);
    ds4_sampler_free(&b);
    ds4_sampler_free(&c);
}

static void test_penalties(void)
{
    /* repetition 2 on prompt token 1: 3.0 -> 1.5, so greedy picks 4 */
    int32_t prompt[1] = {1};
    ds4_sampler_t s;
    ds4_sampling_t p = {.repetition_penalty = 2.0f};
    ds4_sampler_init(&s, &p, V, prompt, 1);
    ds4_sample_out_t o;
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 4);
    /* now 4 was generated too: 1 -> 1.5, 4 -> 1.5, 2 stays 2.5 */
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 2);
    ds4_sampler_free(&s);
    /* presence 0.6 + frequency 0.5 per occurrence on generated tokens only */
    ds4_sampling_t pf = {.presence_penalty = 0.6f, .frequency_penalty = 0.5f};
    ds4_sampler_init(&s, &pf, V, prompt, 1);
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 1); /* prompt tokens are not penalised by presence/frequency */
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 4); /* 1: 3.0 - 0.6 - 0.5 = 1.9 */
    ds4_sampler_sample(&s, base, &o);
    DS4_CHECK_EQ_INT(o.token, 2); /* 4: 1.9 too; 2: 2.5 */
    ds4_sampler_free(&s);
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
