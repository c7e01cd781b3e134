/*
 * ds4-mkmodel - writes the embedded default DeepSeek-V4 model (tiny, random, deterministic)
 * in the Hugging Face layout.
 *
 *   ds4-mkmodel OUTDIR [--seed N] [--shards N] [--vocab N]
 */
#include "mkmodel.h"

#include "ds4/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ds4-mkmodel OUTDIR [--seed N] [--shards N] [--vocab N]\n");
        return 2;
    }
    ds4_mkmodel_params_t p = ds4_mkmodel_params_default();
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seed") == 0)
            p.seed = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--shards") == 0)
            p.n_shards = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--vocab") == 0)
            p.vocab_size = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "ds4-mkmodel: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    ds4_status_t st = ds4_mkmodel_write(argv[1], &p);
    if (st != DS4_OK) {
        fprintf(stderr, "ds4-mkmodel: %s\n", ds4_status_str(st));
        return 1;
    }
    printf("wrote %s (vocab %d, hidden %d, %d layers + MTP, seed %llu)\n", argv[1], p.vocab_size,
           p.hidden, p.n_layers, (unsigned long long)p.seed);
    return 0;
}
