/*
 * ds4-config: validates a DeepSeek-V4 config.json and prints what ds4 derives from it: layer
 * kinds, routing, and the KV cache bytes per token in ds4's FP8 storage layout.
 *
 *   ds4-config [--json] CONFIG.json|MODEL_DIR ...
 *
 * Exit status: 0 all valid, 1 a config is invalid (every problem printed), 2 usage error.
 */
#include "ds4/config.h"
#include "ds4/json.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: ds4-config [--json] CONFIG.json|MODEL_DIR ...\n"
               "Validates DeepSeek-V4 config.json files and prints layer kinds and KV sizes.\n");
}

/* "HCA 0-1,3,5" style compact list of the layers of one kind. */
static void print_layer_list(const ds4_model_config_t *c, ds4_layer_kind_t kind)
{
    int first = 1;
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (c->layer_kind[l] != kind)
            continue;
        int32_t end = l;
        while (end + 1 < c->n_layers && c->layer_kind[end + 1] == kind)
            end++;
        printf("%s%d", first ? "" : ",", l);
        if (end > l)
            printf("-%d", end);
        first = 0;
        l = end;
    }
    if (first)
        printf("-");
}

static void print_text(const char *path, const ds4_model_config_t *c)
{
    double bpt = ds4_config_history_bytes_per_token(c);
    double gib_1m = bpt * 1048576.0 / (1024.0 * 1024.0 * 1024.0);
    printf("%s: valid DeepSeek-V4 config\n", path);
    printf("  hidden %d, layers %d + %d MTP, heads %d x %d (rope %d), vocab %d, context %lld\n",
           c->hidden_size, c->n_layers, c->n_mtp_layers, c->n_heads, c->head_dim,
           c->rope_head_dim, c->vocab_size, (long long)c->max_position_embeddings);
    printf("  experts %d routed (%d per token, %s) + %d shared, hash-routed layers 0-%d\n",
           c->n_routed_experts, c->n_activated_experts, ds4_score_func_name(c->scoring_func),
           c->n_shared_experts, c->n_hash_layers - 1);
    printf("  layer kinds: %d window-only, %d CSA, %d HCA\n", c->n_window_layers,
           c->n_csa_layers, c->n_hca_layers);
    printf("    window: ");
    print_layer_list(c, DS4_LAYER_WINDOW);
    printf("\n    csa:    ");
    print_layer_list(c, DS4_LAYER_CSA);
    printf("\n    hca:    ");
    print_layer_list(c, DS4_LAYER_HCA);
    printf("\n");
    for (int32_t m = 0; m < c->n_mtp_layers; m++) {
        int32_t l = c->n_layers + m;
        printf("  mtp %d (layer %d): %s (ratio %d)\n", m, l, ds4_layer_kind_name(c->layer_kind[l]),
               c->compress_ratio[l]);
    }
    printf("  layers:");
    for (int32_t l = 0; l < ds4_config_n_layers_total(c); l++)
        printf(" %d:%s", l, ds4_layer_kind_name(c->layer_kind[l]));
    printf("\n");
    printf("  kv row %u B (e4m3 nope + ue8m0/64 + bf16 rope), index key %u B (e2m1 + ue8m0/32)\n",
           ds4_config_kv_row_bytes(c), ds4_config_index_row_bytes(c));
    printf("  kv history: %.4f B/token = %.2f GiB per 2^20 tokens\n", bpt, gib_1m);
    printf("  kv fixed per sequence (window rings + compressor tails): %.2f MiB\n",
           (double)ds4_config_fixed_seq_bytes(c) / (1024.0 * 1024.0));
}

static void print_json(const char *path, const ds4_model_config_t *c)
{
    json_t *o = json_object();
    json_t *kinds = json_array();
    for (int32_t l = 0; l < ds4_config_n_layers_total(c); l++)
        json_array_append_new(kinds, json_string(ds4_layer_kind_name(c->layer_kind[l])));
    json_object_set_new(o, "path", json_string(path));
    json_object_set_new(o, "layers", json_integer(c->n_layers));
    json_object_set_new(o, "mtp_layers", json_integer(c->n_mtp_layers));
    json_object_set_new(o, "window_layers", json_integer(c->n_window_layers));
    json_object_set_new(o, "csa_layers", json_integer(c->n_csa_layers));
    json_object_set_new(o, "hca_layers", json_integer(c->n_hca_layers));
    json_object_set_new(o, "hash_layers", json_integer(c->n_hash_layers));
    json_object_set_new(o, "layer_kinds", kinds);
    json_object_set_new(o, "kv_row_bytes", json_integer(ds4_config_kv_row_bytes(c)));
    json_object_set_new(o, "index_row_bytes", json_integer(ds4_config_index_row_bytes(c)));
    json_object_set_new(o, "kv_history_bytes_per_token",
                        json_real(ds4_config_history_bytes_per_token(c)));
    json_object_set_new(o, "kv_fixed_bytes_per_sequence",
                        json_integer((json_int_t)ds4_config_fixed_seq_bytes(c)));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s != NULL)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

int main(int argc, char **argv)
{
    int as_json = 0;
    int n_paths = 0;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            as_json = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "ds4-config: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        n_paths++;
        char path[4096];
        struct stat sb;
        if (stat(argv[i], &sb) == 0 && S_ISDIR(sb.st_mode))
            snprintf(path, sizeof(path), "%s/config.json", argv[i]);
        else
            snprintf(path, sizeof(path), "%s", argv[i]);
        ds4_model_config_t c;
        ds4_diag_t d, w;
        ds4_diag_init(&d);
        ds4_diag_init(&w);
        ds4_status_t st = ds4_config_load(path, &c, &d, &w);
        for (size_t k = 0; k < w.count; k++)
            fprintf(stderr, "%s: warning: %s\n", path, w.items[k]);
        if (st != DS4_OK) {
            fprintf(stderr, "%s: invalid (%s), %zu problem(s):\n", path, ds4_status_str(st),
                    d.count);
            for (size_t k = 0; k < d.count; k++)
                fprintf(stderr, "  %s\n", d.items[k]);
            rc = 1;
        } else if (as_json) {
            print_json(path, &c);
        } else {
            print_text(path, &c);
        }
        ds4_diag_free(&d);
        ds4_diag_free(&w);
    }
    if (n_paths == 0) {
        usage(stderr);
        return 2;
    }
    return rc;
}
