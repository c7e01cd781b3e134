/* Sampling: greedy, temperature, top-k/top-p/min-p truncation, penalties, seeded determinism,
 * logprobs; checked against distributions computed here independently. */
#include "test.h"

#include "ds4/sampling.h"

#include <math.h>
#include <string.h>

#define V 16

static const float k_logits[V] = {1.0f, 3.0f, 2.5f, -1.0f, 0.0f, 3.0f, 0.5f, -2.0f,
                                   1.5f, 2.0f, -0.5f, 0.2f, 0.1f, -3.0f, 2.9f, 1.2f};

static void softmax(const float *l, double t, double *p)
{
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < V; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < V; i++)
        z += (p[i] = exp((l[i] - mx) / t));
    for (int i = 0; i < V; i++)
        p[i] /= z;
}

static void freq(ds4_sampling_params_t sp, int n, double *f)
{
    ds4_sampler_h s;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    memset(f, 0, sizeof(double) * V);
    for (int i = 0; i < n; i++) {
        ds4_sample_result_t r;
        DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
        f[r.token] += 1.0 / n;
    }
    ds4_sampler_destroy(s);
}

static void test_greedy(void)
{
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.temperature = 0.0f;
    double f[V];
    freq(sp, 10, f);
    DS4_CHECK(f[1] > 0.999); /* 3.0 at ids 1 and 5: lowest id wins */
    sp.temperature = 1.0f;
    sp.top_k = 1;
    freq(sp, 10, f);
    DS4_CHECK(f[1] > 0.999);
}

static void test_temperature_distribution(void)
{
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.temperature = 0.7f;
    sp.seed = 42;
    double f[V], p[V];
    freq(sp, 200000, f);
    softmax(k_logits, 0.7, p);
    double worst = 0;
    for (int i = 0; i < V; i++)
        worst = fmax(worst, fabs(f[i] - p[i]));
    printf("temperature 0.7: max |freq - softmax| %.4f\n", worst);
    DS4_CHECK(worst < 0.006);
}

static void test_truncation(void)
{
    double f[V], p[V];
    softmax(k_logits, 1.0, p);
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.seed = 7;
    sp.top_k = 3; /* ids 1, 5 (3.0), 14 (2.9) */
    freq(sp, 50000, f);
    double m3 = p[1] + p[5] + p[14];
    DS4_CHECK(fabs(f[1] - p[1] / m3) < 0.01 && fabs(f[14] - p[14] / m3) < 0.01);
    DS4_CHECK(f[1] + f[5] + f[14] > 0.999999);
    sp.top_k = 0;
    sp.top_p = 0.5f; /* sorted: 1,5,14,2,9,... cumulative mass */
    freq(sp, 50000, f);
    double acc = 0;
    int order[] = {1, 5, 14, 2, 9, 8, 15, 0};
    int k = 0;
    while (acc < 0.5)
        acc += p[order[k++]];
    double kept = 0;
    for (int i = 0; i < k; i++)
        kept += f[order[i]];
    DS4_CHECK(kept > 0.999999);
    DS4_CHECK(f[order[k]] == 0.0);
    sp.top_p = 1.0f;
    sp.min_p = 0.5f; /* keep p >= 0.5 * p_max: logits >= 3 - ln 2 = 2.307 */
    freq(sp, 20000, f);
    for (int i = 0; i < V; i++)
        DS4_CHECK((f[i] > 0) == (k_logits[i] >= 3.0f - logf(2.0f)));
}

static void test_penalties_and_logprobs(void)
{
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.temperature = 0.0f;
    sp.repetition_penalty = 2.0f;
    sp.n_logprobs = 3;
    ds4_sampler_h s;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    ds4_sampler_accept(s, 1);
    ds4_sampler_accept(s, 5); /* both 3.0 -> 1.5: best is now 14 (2.9) */
    ds4_sample_result_t r;
    DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
    DS4_CHECK_EQ_INT(r.token, 14);
    DS4_CHECK_EQ_INT(r.n_top, 3);
    /* logprobs are of the raw model distribution: top ids 1, 5 (3.0), 14 (2.9) */
    DS4_CHECK(r.top_ids[0] == 1 && r.top_ids[1] == 5 && r.top_ids[2] == 14);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(k_logits[i]);
    DS4_CHECK_NEAR(r.logprob, 2.9 - log(z), 1e-5);
    DS4_CHECK_NEAR(r.top_logprobs[0], 3.0 - log(z), 1e-5);
    ds4_sampler_destroy(s);
    /* prompt tokens get the repetition penalty, not presence/frequency */
    sp.repetition_penalty = 1.0f;
    sp.presence_penalty = 5.0f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    const int32_t prompt[2] = {1, 5};
    ds4_sampler_accept_prompt(s, prompt, 2);
    DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
    DS4_CHECK_EQ_INT(r.token, 1);
    ds4_sampler_accept(s, 1); /* generated: 3.0 - 5.0 */
    DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
    DS4_CHECK_EQ_INT(r.token, 5);
    ds4_sampler_destroy(s);
    sp.presence_penalty = 0.0f;
    sp.repetition_penalty = 2.0f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    ds4_sampler_accept_prompt(s, prompt, 2); /* 1 and 5: 3.0 -> 1.5 */
    DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
    DS4_CHECK_EQ_INT(r.token, 14);
    ds4_sampler_destroy(s);
    sp.repetition_penalty = 1.0f;
    sp.frequency_penalty = 0.3f;
    sp.presence_penalty = 0.5f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    ds4_sampler_accept(s, 14);
    ds4_sampler_accept(s, 14); /* 2.9 - 0.6 - 0.5 = 1.8 */
    ds4_sampler_accept(s, 1);  /* 3.0 - 0.8 = 2.2 */
    DS4_CHECK_STATUS(ds4_sampler_sample(s, k_logits, &r), DS4_OK);
    DS4_CHECK_EQ_INT(r.token, 5);
    DS4_CHECK(r.top_ids[0] == 1 && r.top_ids[1] == 5 && r.top_ids[2] == 14); /* raw logits */
    ds4_sampler_destroy(s);
}

static void test_seed_determinism_and_validation(void)
{
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.seed = 1234;
    sp.top_p = 0.9f;
    int a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        sp.seed = run == 2 ? 99 : 1234;
        ds4_sampler_h s;
        DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
        for (int i = 0; i < 64; i++) {
            ds4_sample_result_t r;
            ds4_sampler_sample(s, k_logits, &r);
            (run == 0 ? a : run == 1 ? b : c)[i] = r.token;
        }
        ds4_sampler_destroy(s);
    }
    DS4_CHECK(memcmp(a, b, sizeof(a)) == 0);
    DS4_CHECK(memcmp(a, c, sizeof(a)) != 0);
    ds4_sampler_h s;
    sp.top_p = 0.0f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_ERR_INVALID_ARG);
    sp.top_p = 1.0f;
    sp.n_logprobs = 21;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_ERR_INVALID_ARG);
    sp.n_logprobs = 0;
    sp.repetition_penalty = 0.0f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_ERR_INVALID_ARG);
    sp.repetition_penalty = 1.0f;
    DS4_CHECK_STATUS(ds4_sampler_create(&sp, V, &s), DS4_OK);
    float bad[V];
    memcpy(bad, k_logits, sizeof(bad));
    bad[3] = NAN;
    ds4_sample_result_t r;
    DS4_CHECK_STATUS(ds4_sampler_sample(s, bad, &r), DS4_ERR_NUMERIC);
    ds4_sampler_destroy(s);
}

int main(void)
{
    DS4_RUN(test_greedy);
    DS4_RUN(test_temperature_distribution);
    DS4_RUN(test_truncation);
    DS4_RUN(test_penalties_and_logprobs);
    DS4_RUN(test_seed_determinism_and_validation);
    return ds4_test_finish();
}
