/*
 * ds4-generate - run a V4 checkpoint on a prompt.
 *
 *   ds4-generate --model DIR --prompt-ids 0,5,7 [--n 16] [--chunk N]
 *       greedy generation, prints the generated ids
 *   ds4-generate --model DIR --prompt-json PROMPT --scenario prefill|split
 *                --force-tokens GENERATED_JSON --dump-logits OUTDIR [--chunk N]
 *       the golden comparison mode: PROMPT is a golden prompt.json (token_ids, split_prefill,
 *       n_decode); GENERATED_JSON a JSON array (or an object with "generated", or a golden
 *       manifest) of the tokens fed at the decode steps; writes OUTDIR/<scenario>_stepNN.bin
 *       (f32 LE logits, one file per forward call, numbered as in the golden manifest).
 *   ds4-generate --model DIR --prompt "text" [--n 32] [--temperature T --top-p P --seed S]
 *                [--tokenizer tokenizer.json] [--spec]
 *       BOS + the V4 tokenizer's ids of the text, then generation; prints the decoded text
 *       (--spec: greedy with MTP speculative decoding, acceptance rate on stderr).
 */
#include "ds4/alloc.h"
#include "ds4/json.h"
#include "ds4/log.h"
#include "ds4/model.h"
#include "ds4/sampling.h"
#include "ds4/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void)
{
    fprintf(stderr,
            "usage: ds4-generate --model DIR (--prompt-ids a,b,c | --prompt-json P --scenario "
            "prefill|split --force-tokens G --dump-logits OUT) [--n N] [--chunk N] "
            "[--threads N]\n");
}

static int read_ids(json_t *arr, int32_t **out, int *n)
{
    if (!json_is_array(arr))
        return -1;
    size_t k = json_array_size(arr);
    int32_t *ids = ds4_malloc_array(k > 0 ? k : 1, sizeof(int32_t));
    if (ids == NULL)
        return -1;
    for (size_t i = 0; i < k; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v)) {
            ds4_free(ids);
            return -1;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    *out = ids;
    *n = (int)k;
    return 0;
}

static int write_logits(const char *dir, const char *scen, int step, const float *x, int n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s_step%02d.bin", dir, scen, step);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "ds4-generate: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t w = fwrite(x, sizeof(float), (size_t)n, f);
    int rc = fclose(f);
    if (w != (size_t)n || rc != 0) {
        fprintf(stderr, "ds4-generate: short write %s\n", path);
        return -1;
    }
    return 0;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Feeds tokens[0..n) in chunks of `chunk` (0 = all at once); logits of the last position. */
static ds4_status_t feed(ds4_model_h m, ds4_seq_h s, const int32_t *tok, int n, int chunk,
                         float *logits)
{
    int step = chunk > 0 ? chunk : n;
    for (int i = 0; i < n; i += step) {
        int k = n - i < step ? n - i : step;
        ds4_step_item_t it = {.seq = s, .tokens = tok + i, .n_tokens = k,
                              .logits = i + k == n ? logits : NULL};
        ds4_status_t st = ds4_model_step(m, &it, 1, NULL);
        if (st != DS4_OK)
            return st;
    }
    return DS4_OK;
}

/* --prompt "text": BOS + tokenizer ids, generate, print the decoded continuation. */
static int run_text(ds4_model_h m, ds4_seq_h s, const char *text, const char *tok_path, int n,
                    int chunk, const ds4_sampling_params_t *sp, int spec)
{
    int rc = 1, V = ds4_model_config(m)->vocab_size;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_tokenizer_h *tok = NULL;
    ds4_tok_scratch_h *scr = NULL;
    ds4_sampler_h smp = NULL;
    int32_t *ids = NULL, *prompt = NULL, *gen = NULL;
    size_t n_ids = 0, err_off = 0;
    char *out_text = NULL;
    size_t out_len = 0;
    float *logits = ds4_malloc_array((size_t)V, sizeof(float));
    ds4_status_t st = tok_path != NULL ? ds4_tokenizer_load(tok_path, &tok, &diag)
                                       : ds4_tokenizer_load_default(&tok, &diag);
    if (st != DS4_OK || ds4_tok_scratch_create(tok, &scr) != DS4_OK ||
        ds4_tokenizer_encode(tok, scr, text, strlen(text), &ids, &n_ids, &err_off, &diag) !=
            DS4_OK) {
        char *msg = ds4_diag_join(&diag, "\n  ");
        fprintf(stderr, "ds4-generate: tokenizer: %s\n  %s\n", ds4_status_str(st),
                msg != NULL ? msg : "");
        ds4_free(msg);
        goto done;
    }
    prompt = ds4_malloc_array(n_ids + 1, sizeof(int32_t));
    gen = ds4_malloc_array((size_t)(n > 0 ? n : 1), sizeof(int32_t));
    if (prompt == NULL || gen == NULL || logits == NULL)
        goto done;
    prompt[0] = ds4_model_config(m)->bos_token_id;
    memcpy(prompt + 1, ids, n_ids * sizeof(int32_t));
    int np = (int)n_ids + 1;
    int step = chunk > 0 ? chunk : np;
    for (int i = 0; i < np; i += step) {
        int k = np - i < step ? np - i : step;
        ds4_step_item_t it = {.seq = s, .tokens = prompt + i, .n_tokens = k,
                              .logits = i + k == np ? logits : NULL,
                              .flags = spec ? DS4_STEP_MTP : 0};
        if ((st = ds4_model_step(m, &it, 1, NULL)) != DS4_OK)
            goto fail;
    }
    if (spec || sp->temperature <= 0.0f) {
        ds4_spec_stats_t stats;
        st = ds4_model_generate_greedy(m, s, logits, n, spec != 0, gen, &stats);
        if (st != DS4_OK)
            goto fail;
        if (spec)
            fprintf(stderr, "mtp: %lld drafts, %lld accepted (%.1f%%)\n",
                    (long long)stats.drafted, (long long)stats.accepted,
                    stats.drafted ? 100.0 * (double)stats.accepted / (double)stats.drafted : 0.0);
    } else {
        if ((st = ds4_sampler_create(sp, V, &smp)) != DS4_OK)
            goto fail;
        ds4_sampler_accept_prompt(smp, prompt, (size_t)np);
        for (int i = 0; i < n; i++) {
            ds4_sample_result_t r;
            if ((st = ds4_sampler_sample(smp, logits, &r)) != DS4_OK)
                goto fail;
            gen[i] = r.token;
            ds4_sampler_accept(smp, r.token);
            if (i + 1 == n)
                break;
            ds4_step_item_t it = {.seq = s, .tokens = &gen[i], .n_tokens = 1, .logits = logits};
            if ((st = ds4_model_step(m, &it, 1, NULL)) != DS4_OK)
                goto fail;
        }
    }
    /* The embedding has 129,280 rows but the tokenizer fewer ids: a random model can emit an
     * id with no text; those are skipped (counted on stderr). */
    int kept = 0;
    for (int i = 0; i < n; i++) {
        char *one = NULL;
        size_t one_len = 0;
        ds4_diag_t d1;
        ds4_diag_init(&d1);
        if (ds4_tokenizer_decode(tok, &gen[i], 1, false, &one, &one_len, &d1) == DS4_OK)
            gen[kept++] = gen[i];
        ds4_free(one);
        ds4_diag_free(&d1);
    }
    if (kept < n)
        fprintf(stderr, "ds4-generate: %d generated ids have no text in the tokenizer\n",
                n - kept);
    if (ds4_tokenizer_decode(tok, gen, (size_t)kept, false, &out_text, &out_len, &diag) !=
        DS4_OK) {
        char *msg = ds4_diag_join(&diag, "\n  ");
        fprintf(stderr, "ds4-generate: cannot decode the generated ids:\n  %s\n",
                msg != NULL ? msg : "");
        ds4_free(msg);
        goto done;
    }
    printf("%s%.*s\n", text, (int)out_len, out_text);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "ds4-generate: %s\n", ds4_status_str(st));
done:
    ds4_free(out_text);
    ds4_free(ids);
    ds4_free(prompt);
    ds4_free(gen);
    ds4_free(logits);
    ds4_sampler_destroy(smp);
    ds4_tok_scratch_destroy(scr);
    ds4_tokenizer_destroy(tok);
    ds4_diag_free(&diag);
    return rc;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *prompt_ids = NULL, *prompt_json = NULL, *scenario = NULL;
    const char *force = NULL, *dump = NULL, *text = NULL, *tok_path = NULL;
    int n_gen = 16, chunk = 0, threads = 0, spec = 0;
    ds4_sampling_params_t sp = ds4_sampling_params_default();
    sp.temperature = 0.0f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--spec") == 0) {
            spec = 1;
            continue;
        }
        if (v == NULL) {
            usage();
            return 2;
        }
        if (strcmp(a, "--model") == 0)
            model_dir = v;
        else if (strcmp(a, "--prompt-ids") == 0)
            prompt_ids = v;
        else if (strcmp(a, "--prompt-json") == 0)
            prompt_json = v;
        else if (strcmp(a, "--scenario") == 0)
            scenario = v;
        else if (strcmp(a, "--force-tokens") == 0)
            force = v;
        else if (strcmp(a, "--dump-logits") == 0)
            dump = v;
        else if (strcmp(a, "--n") == 0)
            n_gen = atoi(v);
        else if (strcmp(a, "--chunk") == 0)
            chunk = atoi(v);
        else if (strcmp(a, "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(a, "--prompt") == 0)
            text = v;
        else if (strcmp(a, "--tokenizer") == 0)
            tok_path = v;
        else if (strcmp(a, "--temperature") == 0)
            sp.temperature = (float)atof(v);
        else if (strcmp(a, "--top-p") == 0)
            sp.top_p = (float)atof(v);
        else if (strcmp(a, "--top-k") == 0)
            sp.top_k = atoi(v);
        else if (strcmp(a, "--seed") == 0)
            sp.seed = strtoull(v, NULL, 10);
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (model_dir == NULL || (prompt_ids == NULL && prompt_json == NULL && text == NULL)) {
        usage();
        return 2;
    }
    int rc = 1;
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_model_h m = NULL;
    ds4_seq_h s = NULL;
    int32_t *prompt = NULL, *gen = NULL;
    int n_prompt = 0, n_force = 0, split = 0;
    float *logits = NULL;
    json_t *pj = NULL, *gj = NULL;
    ds4_model_params_t mp = ds4_model_params_default();
    mp.n_threads = threads;
    ds4_status_t st = ds4_model_load(model_dir, &mp, &m, &diag);
    if (st != DS4_OK) {
        char *msg = ds4_diag_join(&diag, "\n  ");
        fprintf(stderr, "ds4-generate: cannot load %s (%s):\n  %s\n", model_dir,
                ds4_status_str(st), msg != NULL ? msg : "");
        ds4_free(msg);
        goto out;
    }
    int V = ds4_model_config(m)->vocab_size;
    logits = ds4_malloc_array((size_t)V, sizeof(float));
    if (logits == NULL || ds4_seq_create(m, &s) != DS4_OK)
        goto out;
    if (prompt_json != NULL) {
        if (scenario == NULL || force == NULL || dump == NULL ||
            (strcmp(scenario, "prefill") != 0 && strcmp(scenario, "split") != 0)) {
            usage();
            goto out;
        }
        if (ds4_json_load_file(prompt_json, 64u << 20, &pj, &diag) != DS4_OK ||
            read_ids(json_object_get(pj, "token_ids"), &prompt, &n_prompt) != 0 ||
            !json_is_integer(json_object_get(pj, "split_prefill"))) {
            fprintf(stderr, "ds4-generate: %s: needs token_ids and split_prefill\n", prompt_json);
            goto out;
        }
        split = (int)json_integer_value(json_object_get(pj, "split_prefill"));
        int n_decode = json_is_integer(json_object_get(pj, "n_decode")) ?
                           (int)json_integer_value(json_object_get(pj, "n_decode")) :
                           -1;
        if (ds4_json_load_file(force, 64u << 20, &gj, &diag) != DS4_OK) {
            fprintf(stderr, "ds4-generate: cannot read %s\n", force);
            goto out;
        }
        json_t *arr = gj;
        if (json_is_object(gj)) {
            arr = json_object_get(gj, "generated");
            json_t *sc = json_object_get(gj, "scenarios");
            if (arr == NULL && sc != NULL)
                arr = json_object_get(json_object_get(sc, scenario), "generated");
        }
        if (read_ids(arr, &gen, &n_force) != 0) {
            fprintf(stderr, "ds4-generate: %s: not a JSON array of token ids\n", force);
            goto out;
        }
        if (n_decode < 0 || n_decode > n_force)
            n_decode = n_force;
        if (split <= 0 || split > n_prompt)
            split = n_prompt;
        mkdir(dump, 0777);
        int step = 0;
        int first = strcmp(scenario, "prefill") == 0 ? n_prompt : split;
        st = feed(m, s, prompt, first, chunk, logits);
        if (st != DS4_OK || write_logits(dump, scenario, step++, logits, V) != 0)
            goto fail_step;
        for (int i = first; i < n_prompt; i++) {
            st = feed(m, s, prompt + i, 1, 0, logits);
            if (st != DS4_OK || write_logits(dump, scenario, step++, logits, V) != 0)
                goto fail_step;
        }
        for (int i = 0; i < n_decode; i++) {
            st = feed(m, s, gen + i, 1, 0, logits);
            if (st != DS4_OK || write_logits(dump, scenario, step++, logits, V) != 0)
                goto fail_step;
        }
        printf("%s: %d steps written to %s\n", scenario, step, dump);
        rc = 0;
        goto out;
    fail_step:
        fprintf(stderr, "ds4-generate: step %d failed: %s\n", step, ds4_status_str(st));
        goto out;
    }
    if (text != NULL) {
        rc = run_text(m, s, text, tok_path, n_gen, chunk, &sp, spec);
        goto out;
    }
    /* --prompt-ids */
    {
        int cap = 16;
        prompt = ds4_malloc_array((size_t)cap, sizeof(int32_t));
        const char *p = prompt_ids;
        while (prompt != NULL && *p != '\0') {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) {
                fprintf(stderr, "ds4-generate: bad --prompt-ids near '%s'\n", p);
                goto out;
            }
            if (n_prompt == cap) {
                cap *= 2;
                int32_t *np = ds4_realloc_array(prompt, (size_t)cap, sizeof(int32_t));
                if (np == NULL)
                    goto out;
                prompt = np;
            }
            prompt[n_prompt++] = (int32_t)v;
            p = *end == ',' ? end + 1 : end;
        }
        if (n_prompt == 0)
            goto out;
        st = feed(m, s, prompt, n_prompt, chunk, logits);
        for (int i = 0; st == DS4_OK && i < n_gen; i++) {
            int32_t t = argmax(logits, V);
            printf("%s%d", i ? "," : "", t);
            fflush(stdout);
            st = feed(m, s, &t, 1, 0, logits);
        }
        printf("\n");
        if (st != DS4_OK) {
            fprintf(stderr, "ds4-generate: %s\n", ds4_status_str(st));
            goto out;
        }
        rc = 0;
    }
out:
    json_decref(pj);
    json_decref(gj);
    ds4_free(prompt);
    ds4_free(gen);
    ds4_free(logits);
    ds4_seq_destroy(s);
    ds4_model_free(m);
    ds4_diag_free(&diag);
    return rc;
}
