/*
 * kv-synth.h - deterministic synthetic KV rows for the transfer tests and benchmark.
 *
 * Byte j of row r of group g of request q is a fixed function of (q, g, r, j) (splitmix64), so
 * the decode side checks every received byte against an independent regeneration, never
 * against what the sender claims. Header-only; shared by tools/ds4-xfer-peer, tests/xfer and
 * bench/xfer.
 */
#ifndef DS4_KV_SYNTH_H
#define DS4_KV_SYNTH_H

#include "ds4/kv.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t ds4_synth_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Fills n_rows rows of row_bytes starting at row `row_begin` of group g of request q. */
static inline void ds4_synth_rows(void *dst, uint64_t q, uint32_t g, uint64_t row_begin,
                                  uint64_t n_rows, uint32_t row_bytes)
{
    unsigned char *p = dst;
    for (uint64_t r = row_begin; r < row_begin + n_rows; r++) {
        uint64_t seed = ds4_synth_mix(q * 0x100000001B3ull ^ ((uint64_t)g << 40) ^ r);
        uint32_t j = 0;
        for (; j + 8 <= row_bytes; j += 8) {
            uint64_t v = ds4_synth_mix(seed + j);
            memcpy(p + j, &v, 8);
        }
        if (j < row_bytes) {
            uint64_t v = ds4_synth_mix(seed + j);
            memcpy(p + j, &v, row_bytes - j);
        }
        p += row_bytes;
    }
}

/* True when every row of every group of `t` holds the synthetic bytes of request q. */
static inline bool ds4_synth_check_table(ds4_kv_pool_h *pool, const ds4_kv_manifest_h *m,
                                         const ds4_kv_block_table_h *t, uint64_t q,
                                         uint64_t *bad_group)
{
    static unsigned char buf[1u << 20];
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(m); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(m, g);
        uint64_t rows = ds4_kv_group_rows(grp, ds4_kv_table_n_tokens(t));
        uint64_t per = sizeof(buf) / grp->row_bytes;
        for (uint64_t r = 0; r < rows;) {
            uint64_t contig = 0;
            const void *p = ds4_kv_table_row_ptr(pool, t, g, r, &contig);
            uint64_t n = contig < per ? contig : per;
            ds4_synth_rows(buf, q, g, r, n, grp->row_bytes);
            if (p == NULL || memcmp(p, buf, n * grp->row_bytes) != 0) {
                if (bad_group != NULL)
                    *bad_group = g;
                return false;
            }
            r += n;
        }
    }
    return true;
}

#endif /* DS4_KV_SYNTH_H */
