/*
 * bench-tokenizer - single-thread encode throughput and load time of ds4's tokenizer.
 *
 *   bench-tokenizer [--tokenizer FILE] --corpus encode-public.jsonl [--times 20]
 *                   [--write-input FILE] [--reps 3] [--rows]
 *
 * The input is every "text" of the corpus concatenated, repeated --times times (what
 * bench/tokenizer/run.sh also feeds the Hugging Face library). Encodes it as one text (or, with
 * --rows, each corpus row as its own text, the serving case), --reps times, and reports the
 * best run. Prints one JSON line: bytes, tokens, an FNV-1a hash of the
 * ids (to check both libraries produced the same ids), load_ms, encode_s, mb_per_s,
 * tokens_per_s. Not a ctest.
 */
#include "ds4/alloc.h"
#include "ds4/tokenizer.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Row boundaries of the input (offsets into it), for --rows. */
static size_t *g_row_off;
static size_t g_n_rows;

static char *build_input(const char *corpus, int times, size_t *len)
{
    size_t *row_len = NULL, n_rows = 0, cap_rows = 0;
    FILE *f = fopen(corpus, "rb");
    if (f == NULL) {
        fprintf(stderr, "bench-tokenizer: cannot open %s\n", corpus);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *one = malloc(cap);
    char *line = NULL;
    size_t lcap = 0;
    ssize_t r;
    while ((r = getline(&line, &lcap, f)) > 0) {
        json_t *row = json_loadb(line, (size_t)r, JSON_ALLOW_NUL, NULL);
        const json_t *t = json_object_get(row, "text");
        size_t tl = json_string_length(t);
        if (t != NULL) {
            if (n_rows == cap_rows)
                row_len = realloc(row_len, (cap_rows = cap_rows * 2 + 64) * sizeof(*row_len));
            row_len[n_rows++] = tl;
            while (n + tl > cap)
                one = realloc(one, cap *= 2);
            memcpy(one + n, json_string_value(t), tl);
            n += tl;
        }
        json_decref(row);
    }
    free(line);
    fclose(f);
    char *all = malloc(n * (size_t)times + 1);
    for (int i = 0; i < times; i++)
        memcpy(all + n * (size_t)i, one, n);
    free(one);
    g_row_off = malloc((n_rows * (size_t)times + 1) * sizeof(*g_row_off));
    size_t off = 0;
    for (int i = 0; i < times; i++)
        for (size_t k = 0; k < n_rows; k++) {
            g_row_off[g_n_rows++] = off;
            off += row_len[k];
        }
    g_row_off[g_n_rows] = off;
    free(row_len);
    *len = n * (size_t)times;
    all[*len] = '\0';
    return all;
}

int main(int argc, char **argv)
{
    const char *tok_path = ds4_tokenizer_default_path();
    const char *corpus = NULL, *write_input = NULL;
    int times = 20, reps = 3;
    bool rows = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            tok_path = argv[++i];
        else if (strcmp(argv[i], "--corpus") == 0 && i + 1 < argc)
            corpus = argv[++i];
        else if (strcmp(argv[i], "--times") == 0 && i + 1 < argc)
            times = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rows") == 0)
            rows = true;
        else if (strcmp(argv[i], "--write-input") == 0 && i + 1 < argc)
            write_input = argv[++i];
        else {
            fprintf(stderr, "usage: bench-tokenizer [--tokenizer FILE] --corpus FILE.jsonl "
                            "[--times N] [--reps N] [--write-input FILE] [--rows]\n");
            return 2;
        }
    }
    if (corpus == NULL || times < 1 || reps < 1) {
        fprintf(stderr, "bench-tokenizer: --corpus is required\n");
        return 2;
    }
    size_t len = 0;
    char *input = build_input(corpus, times, &len);
    if (input == NULL)
        return 1;
    if (write_input != NULL) {
        FILE *f = fopen(write_input, "wb");
        if (f == NULL || fwrite(input, 1, len, f) != len) {
            fprintf(stderr, "bench-tokenizer: cannot write %s\n", write_input);
            return 1;
        }
        fclose(f);
    }

    /* load time: best of 3 */
    double load_best = 1e9;
    ds4_tokenizer_h *tok = NULL;
    for (int i = 0; i < 3; i++) {
        ds4_diag_t diag;
        ds4_diag_init(&diag);
        double t0 = now_s();
        ds4_status_t st = ds4_tokenizer_load(tok_path, &tok, &diag);
        double dt = now_s() - t0;
        if (st != DS4_OK) {
            ds4_diag_log(&diag, "tokenizer");
            return 1;
        }
        ds4_diag_free(&diag);
        if (dt < load_best)
            load_best = dt;
        if (i < 2)
            ds4_tokenizer_destroy(tok);
    }

    double best = 1e9;
    size_t n_ids = 0;
    uint64_t hash = 0;
    for (int r = 0; r < reps; r++) {
        /* a fresh scratch per run: the pre-token cache starts empty every time */
        ds4_tok_scratch_h *scratch = NULL;
        if (ds4_tok_scratch_create(tok, &scratch) != DS4_OK)
            return 1;
        int32_t *ids = NULL;
        ds4_status_t st = DS4_OK;
        double t0 = now_s();
        if (!rows) {
            st = ds4_tokenizer_encode(tok, scratch, input, len, &ids, &n_ids, NULL, NULL);
        } else {
            /* every row on its own; ids gathered for the hash outside the timed loop's cost */
            size_t cap = len / 2 + 16;
            ids = ds4_malloc_array(cap, sizeof(*ids));
            n_ids = 0;
            for (size_t k = 0; k < g_n_rows && st == DS4_OK; k++) {
                int32_t *one = NULL;
                size_t n1 = 0;
                st = ds4_tokenizer_encode(tok, scratch, input + g_row_off[k],
                                          g_row_off[k + 1] - g_row_off[k], &one, &n1, NULL,
                                          NULL);
                if (st == DS4_OK && n_ids + n1 <= cap)
                    memcpy(ids + n_ids, one, n1 * sizeof(*one));
                n_ids += n1;
                ds4_free(one);
            }
        }
        double dt = now_s() - t0;
        ds4_tok_scratch_destroy(scratch);
        if (st != DS4_OK) {
            fprintf(stderr, "bench-tokenizer: encode failed: %s\n", ds4_status_str(st));
            return 1;
        }
        hash = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < n_ids; i++) {
            hash ^= (uint32_t)ids[i];
            hash *= 1099511628211ull;
        }
        ds4_free(ids);
        if (dt < best)
            best = dt;
    }
    printf("{\"impl\": \"ds4\", \"mode\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"ids_fnv\": \"%016llx\", "
           "\"load_ms\": %.1f, \"encode_s\": %.3f, \"mb_per_s\": %.2f, \"tokens_per_s\": %.0f}\n",
           rows ? "rows" : "one-text", len, n_ids, (unsigned long long)hash, load_best * 1e3, best, (double)len / best / 1e6,
           (double)n_ids / best);
    ds4_tokenizer_destroy(tok);
    free(input);
    return 0;
}
