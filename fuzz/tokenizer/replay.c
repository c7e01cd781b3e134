/*
 * replay - runs a fuzz entry point (LLVMFuzzerTestOneInput) deterministically, without
 * libFuzzer: every file of the corpus directories given as arguments, then a fixed number of
 * seeded mutations of each (byte flips, truncation, insertion of tokenizer-sensitive
 * fragments, splices of two files). This is the ctest that keeps the fuzz targets exercised in
 * CI (under ASan/UBSan in the sanitizer build).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUTATIONS_PER_FILE 40
#define MAX_FILES 256

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

static const char *const FRAGMENTS[] = {
    "<｜", "｜>", "<｜User｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>", "\xf0\x9f",
    "\xe4\xb8", "\xff", "\n\n<｜DSML｜tool_calls>\n", "<｜DSML｜invoke name=\"", "\">\n",
    "<｜DSML｜parameter name=\"k\" string=\"true\">", "</｜DSML｜parameter>", "\"role\"", "{",
    "}", "[", "]", "\"tool\"", "\"tool_calls\"", "   ", "\r\n", "1234567", "é", "\\u0000",
};

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    char *files[MAX_FILES];
    size_t n_files = 0;
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (d == NULL) {
            fprintf(stderr, "replay: cannot open corpus directory %s\n", argv[i]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n_files < MAX_FILES) {
            if (e->d_name[0] == '.')
                continue;
            size_t l = strlen(argv[i]) + strlen(e->d_name) + 2;
            files[n_files] = malloc(l);
            snprintf(files[n_files], l, "%s/%s", argv[i], e->d_name);
            n_files++;
        }
        closedir(d);
    }
    qsort(files, n_files, sizeof(files[0]), cmp_str); /* deterministic order */
    size_t runs = 0;
    uint8_t *prev = NULL;
    size_t prev_len = 0;
    for (size_t f = 0; f < n_files; f++) {
        size_t len = 0;
        uint8_t *buf = read_all(files[f], &len);
        if (buf == NULL) {
            fprintf(stderr, "replay: cannot read %s\n", files[f]);
            return 1;
        }
        LLVMFuzzerTestOneInput(buf, len);
        runs++;
        for (int m = 0; m < MUTATIONS_PER_FILE; m++) {
            size_t cap = len + prev_len + 64;
            uint8_t *mut = malloc(cap);
            size_t n = len;
            memcpy(mut, buf, len);
            int edits = 1 + (int)(rnd() % 4);
            for (int k = 0; k < edits; k++) {
                uint32_t op = rnd() % 5;
                if (op == 0 && n > 0) { /* flip a byte */
                    mut[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
                } else if (op == 1 && n > 0) { /* truncate */
                    n = rnd() % n;
                } else if (op == 2) { /* insert a fragment */
                    const char *fr = FRAGMENTS[rnd() % (sizeof(FRAGMENTS) / sizeof(*FRAGMENTS))];
                    size_t fl = strlen(fr), at = n > 0 ? rnd() % (n + 1) : 0;
                    if (n + fl <= cap) {
                        memmove(mut + at + fl, mut + at, n - at);
                        memcpy(mut + at, fr, fl);
                        n += fl;
                    }
                } else if (op == 3 && prev != NULL) { /* splice the previous file's tail */
                    size_t at = n > 0 ? rnd() % n : 0, from = rnd() % (prev_len + 1);
                    size_t take = prev_len - from;
                    if (at + take <= cap) {
                        memcpy(mut + at, prev + from, take);
                        n = at + take;
                    }
                } else if (n > 1) { /* delete a range */
                    size_t a = rnd() % n, b = a + rnd() % (n - a);
                    memmove(mut + a, mut + b, n - b);
                    n -= b - a;
                }
            }
            LLVMFuzzerTestOneInput(mut, n);
            runs++;
            free(mut);
        }
        free(prev);
        prev = buf;
        prev_len = len;
    }
    free(prev);
    for (size_t f = 0; f < n_files; f++)
        free(files[f]);
    printf("replayed %zu inputs from %zu corpus files\n", runs, n_files);
    return n_files > 0 ? 0 : 1;
}
