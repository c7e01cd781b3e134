/*
 * Sequence state in the KV wire format: export mid-stream, import in a fresh engine in another
 * process, continue -> identical logits; exported history bytes per token == the config's KV
 * figure; corrupted states are rejected.
 */
#include "golden.h"
#include "test.h"

#include "ds4/json.h"
#include "ds4/model.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPLIT 150
#define N_CONT 40

static int32_t g_prompt[4096];
static int g_n;
static const char *g_self;

static void load_prompt(void)
{
    char path[8192];
    json_t *pj = NULL;
    snprintf(path, sizeof(path), "%s/prompt.json", ds4_test_fixture("tiny-a"));
    if (ds4_json_load_file(path, 1 << 20, &pj, NULL) != DS4_OK)
        exit(1);
    json_t *ids = json_object_get(pj, "token_ids");
    g_n = (int)json_array_size(ids);
    for (int i = 0; i < g_n; i++)
        g_prompt[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
    json_decref(pj);
}

/* The continuation after SPLIT: a chunk of 37 tokens, then N_CONT-37 single steps; returns the
 * logits of every single step (and of the chunk) concatenated. */
static void continue_seq(ds4_model_h m, ds4_seq_h s, float *out)
{
    int V = ds4_model_config(m)->vocab_size;
    ds4_step_item_t it = {.seq = s, .tokens = g_prompt + SPLIT, .n_tokens = 37, .logits = out};
    DS4_CHECK_STATUS(ds4_model_step(m, &it, 1, NULL), DS4_OK);
    for (int i = 37; i < N_CONT; i++) {
        ds4_step_item_t one = {.seq = s, .tokens = g_prompt + SPLIT + i, .n_tokens = 1,
                               .logits = out + (size_t)(i - 36) * V};
        DS4_CHECK_STATUS(ds4_model_step(m, &one, 1, NULL), DS4_OK);
    }
}

/* Child: fresh engine, import the state file, continue, write logits. */
static int child_main(const char *state_path, const char *out_path)
{
    load_prompt();
    ds4_model_h m;
    if (ds4_model_load(ds4_test_fixture("tiny-a"), NULL, &m, NULL) != DS4_OK)
        return 2;
    size_t len;
    void *buf = ds4_test_read_file(state_path, &len);
    ds4_seq_h s;
    if (buf == NULL || ds4_seq_import(m, buf, len, &s) != DS4_OK)
        return 3;
    int V = ds4_model_config(m)->vocab_size;
    float *out = ds4_malloc_array((size_t)(N_CONT - 36) * V, sizeof(float));
    continue_seq(m, s, out);
    FILE *f = fopen(out_path, "wb");
    if (f == NULL || fwrite(out, sizeof(float), (size_t)(N_CONT - 36) * V, f) !=
                         (size_t)(N_CONT - 36) * V)
        return 4;
    fclose(f);
    ds4_free(out);
    ds4_free(buf);
    ds4_seq_destroy(s);
    ds4_model_free(m);
    return 0;
}

static ds4_model_h g_model;

static void test_export_import_other_process(void)
{
    int V = ds4_model_config(g_model)->vocab_size;
    ds4_seq_h a;
    DS4_CHECK_STATUS(ds4_seq_create(g_model, &a), DS4_OK);
    ds4_step_item_t it = {.seq = a, .tokens = g_prompt, .n_tokens = SPLIT};
    DS4_CHECK_STATUS(ds4_model_step(g_model, &it, 1, NULL), DS4_OK);
    uint64_t n = ds4_seq_export_bytes(a), w = 0;
    void *buf = ds4_malloc(n);
    DS4_CHECK_STATUS(ds4_seq_export(a, buf, n, &w), DS4_OK);
    DS4_CHECK(w == n);
    char state_path[] = "/tmp/ds4-state-XXXXXX";
    int fd = mkstemp(state_path);
    DS4_CHECK(fd >= 0 && write(fd, buf, n) == (ssize_t)n);
    close(fd);
    float *ref = ds4_malloc_array((size_t)(N_CONT - 36) * V, sizeof(float));
    continue_seq(g_model, a, ref);

    char out_path[] = "/tmp/ds4-state-out-XXXXXX";
    fd = mkstemp(out_path);
    close(fd);
    pid_t pid = fork();
    if (pid == 0) {
        execl(g_self, g_self, "--child", state_path, out_path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    DS4_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    size_t len = 0;
    float *got = ds4_test_read_file(out_path, &len);
    DS4_CHECK(got != NULL && len == (size_t)(N_CONT - 36) * V * sizeof(float));
    if (got != NULL && len == (size_t)(N_CONT - 36) * V * sizeof(float)) {
        int same = memcmp(got, ref, len) == 0;
        printf("export at pos %d (%llu bytes), import in another process, %d more tokens: "
               "logits %s\n",
               SPLIT, (unsigned long long)n, N_CONT, same ? "bitwise identical" : "DIFFER");
        DS4_CHECK(same);
    }
    unlink(state_path);
    unlink(out_path);
    ds4_free(got);
    ds4_free(ref);
    ds4_free(buf);
    ds4_seq_destroy(a);
}

static void test_history_bytes_per_token(void)
{
    const ds4_model_config_t *c = ds4_model_config(g_model);
    /* positions a multiple of every compress ratio apart (tiny-a: 4 and 32) */
    int lcm = 1;
    for (int l = 0; l < c->n_layers; l++) {
        int r = c->compress_ratio[l];
        if (r > 0) {
            int a = lcm, b = r;
            while (b != 0) {
                int t = a % b;
                a = b;
                b = t;
            }
            lcm = lcm / a * r;
        }
    }
    int p1 = lcm, p2 = 8 * lcm;
    DS4_CHECK(p2 <= g_n);
    ds4_seq_h s;
    DS4_CHECK_STATUS(ds4_seq_create(g_model, &s), DS4_OK);
    ds4_step_item_t it = {.seq = s, .tokens = g_prompt, .n_tokens = p1};
    DS4_CHECK_STATUS(ds4_model_step(g_model, &it, 1, NULL), DS4_OK);
    uint64_t b1 = ds4_seq_export_bytes(s);
    it.tokens = g_prompt + p1;
    it.n_tokens = p2 - p1;
    DS4_CHECK_STATUS(ds4_model_step(g_model, &it, 1, NULL), DS4_OK);
    uint64_t b2 = ds4_seq_export_bytes(s);
    double per_token = (double)(b2 - b1) / (double)(p2 - p1);
    printf("exported history bytes/token %.4f, config KV figure %.4f\n", per_token,
           ds4_config_history_bytes_per_token(c));
    DS4_CHECK(per_token == ds4_config_history_bytes_per_token(c));
    /* fixed part: header + rings + tails */
    uint64_t fixed = b1 - (uint64_t)(ds4_config_history_bytes_per_token(c) * p1);
    DS4_CHECK(fixed == sizeof(ds4_seq_state_header_t) + ds4_config_fixed_seq_bytes(c));
    ds4_seq_destroy(s);
}

static void test_import_rejects_corruption(void)
{
    ds4_seq_h s, t;
    DS4_CHECK_STATUS(ds4_seq_create(g_model, &s), DS4_OK);
    ds4_step_item_t it = {.seq = s, .tokens = g_prompt, .n_tokens = 45};
    DS4_CHECK_STATUS(ds4_model_step(g_model, &it, 1, NULL), DS4_OK);
    uint64_t n = ds4_seq_export_bytes(s), w;
    uint8_t *buf = ds4_malloc(n + 8);
    DS4_CHECK_STATUS(ds4_seq_export(s, buf, n - 1, &w), DS4_ERR_OUT_OF_RANGE);
    DS4_CHECK_STATUS(ds4_seq_export(s, buf, n, &w), DS4_OK);
    DS4_CHECK_STATUS(ds4_seq_import(g_model, buf, n - 3, &t), DS4_ERR_KV_CORRUPT);
    DS4_CHECK_STATUS(ds4_seq_import(g_model, buf, n + 8, &t), DS4_ERR_KV_CORRUPT);
    DS4_CHECK_STATUS(ds4_seq_import(g_model, buf, 10, &t), DS4_ERR_KV_CORRUPT);
    buf[0] ^= 1;
    DS4_CHECK_STATUS(ds4_seq_import(g_model, buf, n, &t), DS4_ERR_KV_CORRUPT);
    buf[0] ^= 1;
    DS4_CHECK_STATUS(ds4_seq_import(g_model, buf, n, &t), DS4_OK);
    DS4_CHECK(ds4_seq_pos(t) == 45);
    /* per-layer export == the matching slice of the full export */
    uint64_t off = sizeof(ds4_seq_state_header_t);
    int n_layers = ds4_model_config(g_model)->n_layers + ds4_model_config(g_model)->n_mtp_layers;
    for (int l = 0; l < n_layers; l++) {
        uint8_t lb[1 << 17];
        uint64_t lw = 0;
        DS4_CHECK_STATUS(ds4_seq_export_layer(s, l, lb, sizeof(lb), &lw), DS4_OK);
        DS4_CHECK(off + lw <= n && memcmp(lb, buf + off, lw) == 0);
        off += lw;
    }
    DS4_CHECK(off == n);
    ds4_seq_destroy(t);
    ds4_free(buf);
    ds4_seq_destroy(s);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3]);
    g_self = argv[0];
    load_prompt();
    if (ds4_model_load(ds4_test_fixture("tiny-a"), NULL, &g_model, NULL) != DS4_OK)
        return 1;
    DS4_RUN(test_export_import_other_process);
    DS4_RUN(test_history_bytes_per_token);
    DS4_RUN(test_import_rejects_corruption);
    ds4_model_free(g_model);
    return ds4_test_finish();
}
