/*
 * ds4/kv.h - the V4 KV cache as transferable data: manifest, block pool, block tables.
 *
 * V4 has no single KV tensor (shared/DESIGN.md "V4 KV cache groups"). A sequence's KV is a list
 * of *groups*; the **manifest** of a model config fixes that list, in this order, for every
 * layer l = 0 .. n_layers + n_mtp_layers - 1 (main stack, then MTP blocks):
 *
 *   1. WINDOW  every layer      the raw sliding-window ring: `sliding_window` rows (fixed),
 *                               token p in row p mod sliding_window; FP8 main rows.
 *   2. CSA     CSA layers       compressed rows, one per `compress_ratio` (4) tokens; FP8 main.
 *   3. INDEX   CSA layers       lightning-indexer keys, one per `compress_ratio` tokens; FP4.
 *   4. HCA     HCA layers       compressed rows, one per `compress_ratio` (128) tokens; FP8 main.
 *   5. TAIL    CSA/HCA layers   the compressor carry state, ds4_config_tail_bytes() bytes of
 *                               fp32 in 4-byte rows (fixed): CSA main kv_state, score_state
 *                               [2r, 2*head_dim] each, then indexer kv_state, score_state
 *                               [2r, 2*index_head_dim] each; HCA kv_state, score_state
 *                               [r, head_dim] each. Row-major, in that order.
 *
 * Row formats (ds4/config.h): FP8 main row = (head_dim - rope) x e4m3, one ue8m0 per 64 nope
 * dims, rope x bf16, zero-padded to 8 bytes (V4: 584 B); FP4 index row = index_head_dim/2 bytes
 * of packed e2m1 + one ue8m0 per 32 dims (V4: 68 B). A history group of a sequence of
 * `n_tokens` tokens holds floor(n_tokens / compress_ratio) complete rows (the partial group
 * lives in TAIL). The engine's export/import of a sequence uses exactly these groups and rows.
 *
 * The manifest carries DS4_KV_MANIFEST_VERSION and two 64-bit digests: of the model config
 * (canonical fields, so two checkpoints of different models never share KV) and of the whole
 * encoded manifest. Peers compare manifests at handshake; ds4_kv_manifest_compare names the
 * first group that differs.
 *
 * The **pool** (decode side) holds one contiguous memory region split per group kind into
 * fixed-size blocks of `block_rows[kind]` rows; a reservation (a **block table**) takes, for
 * every group of the manifest, ceil(rows / block_rows) blocks of its kind, all or nothing. Rows
 * never straddle blocks. The region is allocated by the pool, or supplied by the caller (the
 * transport registers it once, see ds4/xfer.h). Pool calls are thread-safe (one mutex).
 *
 * A block table **view** is the serialisable, read-only form of a block table (magic +
 * version + CRC32C) that the sender uses to address rows in the remote region.
 */
#ifndef DS4_KV_H
#define DS4_KV_H

#include "ds4/config.h"
#include "ds4/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS4_KV_MANIFEST_VERSION 1u

typedef enum ds4_kv_group_kind {
    DS4_KV_WINDOW = 0,
    DS4_KV_CSA = 1,
    DS4_KV_INDEX = 2,
    DS4_KV_HCA = 3,
    DS4_KV_TAIL = 4,
} ds4_kv_group_kind_t;
#define DS4_KV_N_KINDS 5

typedef enum ds4_kv_dtype {
    DS4_KV_DTYPE_FP8_MAIN = 0,  /* e4m3 nope + ue8m0 per 64 + bf16 rope, padded to 8 B */
    DS4_KV_DTYPE_FP4_INDEX = 1, /* e2m1 packed + ue8m0 per 32 */
    DS4_KV_DTYPE_F32 = 2,       /* fp32 compressor state */
} ds4_kv_dtype_t;

/* One group of the manifest (a plain value). */
typedef struct ds4_kv_group {
    int32_t layer;
    ds4_kv_group_kind_t kind;
    ds4_kv_dtype_t dtype;
    uint32_t row_bytes;
    uint32_t tokens_per_row; /* history groups: one row per this many tokens; 0 when fixed */
    uint32_t fixed_rows;     /* fixed groups (WINDOW, TAIL): rows per sequence; 0 for history */
} ds4_kv_group_t;

typedef struct ds4_kv_manifest ds4_kv_manifest_h;

const char *ds4_kv_kind_name(ds4_kv_group_kind_t kind); /* "window" "csa" "index" "hca" "tail" */

/* Builds the manifest of `config` (validated by ds4_config_load). */
ds4_status_t ds4_kv_manifest_create(const ds4_model_config_t *config, ds4_kv_manifest_h **out);
void ds4_kv_manifest_destroy(ds4_kv_manifest_h *m);

uint32_t ds4_kv_manifest_n_groups(const ds4_kv_manifest_h *m);
const ds4_kv_group_t *ds4_kv_manifest_group(const ds4_kv_manifest_h *m, uint32_t g);
uint64_t ds4_kv_manifest_config_digest(const ds4_kv_manifest_h *m);
/* Digest of the encoded manifest (version, config digest and every group). */
uint64_t ds4_kv_manifest_digest(const ds4_kv_manifest_h *m);
/* Row bytes shared by every group of `kind` (0 when the manifest has no such group). */
uint32_t ds4_kv_manifest_kind_row_bytes(const ds4_kv_manifest_h *m, ds4_kv_group_kind_t kind);

/* Rows / bytes of group `g` for a sequence of n_tokens. */
uint64_t ds4_kv_group_rows(const ds4_kv_group_t *g, uint64_t n_tokens);
uint64_t ds4_kv_group_bytes(const ds4_kv_group_t *g, uint64_t n_tokens);
/* Sum over all groups (what a transfer of n_tokens moves). */
uint64_t ds4_kv_manifest_seq_bytes(const ds4_kv_manifest_h *m, uint64_t n_tokens);
/* "group 12 (layer 4 csa)" into buf; returns buf. */
const char *ds4_kv_group_describe(const ds4_kv_manifest_h *m, uint32_t g, char *buf,
                                  size_t buf_len);

/* Wire form (magic "DS4M", version, digests, groups; CRC32C trailer). *buf is ds4_malloc'd. */
ds4_status_t ds4_kv_manifest_encode(const ds4_kv_manifest_h *m, void **buf, size_t *len);
/* Parses a wire form. On failure returns DS4_ERR_PARSE/DS4_ERR_VERSION and a reason in `why`. */
ds4_status_t ds4_kv_manifest_decode(const void *buf, size_t len, ds4_kv_manifest_h **out,
                                    char *why, size_t why_len);
/*
 * DS4_OK when `local` and `remote` describe the same KV; otherwise DS4_ERR_KV_MANIFEST and a
 * message naming the first differing group and field, e.g. "group 9 (layer 2 csa): local
 * tokens_per_row 4, remote 128", or the group count / version / config digest difference.
 */
ds4_status_t ds4_kv_manifest_compare(const ds4_kv_manifest_h *local,
                                     const ds4_kv_manifest_h *remote, char *why, size_t why_len);

/* ---------------------------------------------------------------- pool and block tables */

typedef struct ds4_kv_pool ds4_kv_pool_h;
typedef struct ds4_kv_block_table ds4_kv_block_table_h;

typedef struct ds4_kv_pool_params {
    const ds4_kv_manifest_h *manifest;     /* required; borrowed, must outlive the pool */
    uint32_t block_rows[DS4_KV_N_KINDS];   /* rows per block (defaults: window = one ring,
                                              csa/index/hca 256, tail 16384 = 64 KiB) */
    uint32_t n_blocks[DS4_KV_N_KINDS];     /* blocks per kind (default 0: set them, e.g. with
                                              ds4_kv_pool_params_for_tokens) */
    void *memory;                          /* NULL: the pool allocates (page aligned, zeroed);
                                              else >= ds4_kv_pool_memory_bytes, borrowed */
} ds4_kv_pool_params_t;

ds4_kv_pool_params_t ds4_kv_pool_params_default(const ds4_kv_manifest_h *manifest);
/* Sets n_blocks so that `n_seqs` sequences of `n_tokens` each fit at once. */
ds4_status_t ds4_kv_pool_params_for_tokens(ds4_kv_pool_params_t *p, uint64_t n_tokens,
                                           uint32_t n_seqs);
/* Blocks of `kind` that one sequence of n_tokens takes with these params. */
uint64_t ds4_kv_pool_blocks_for(const ds4_kv_pool_params_t *p, ds4_kv_group_kind_t kind,
                                uint64_t n_tokens);
/* Bytes of memory the region needs (blocks of every kind, each kind 64-byte aligned). */
ds4_status_t ds4_kv_pool_memory_bytes(const ds4_kv_pool_params_t *p, size_t *out);

ds4_status_t ds4_kv_pool_create(const ds4_kv_pool_params_t *p, ds4_kv_pool_h **out);
/* Frees the pool; every block table must have been freed (asserted). */
void ds4_kv_pool_destroy(ds4_kv_pool_h *pool);
void *ds4_kv_pool_base(const ds4_kv_pool_h *pool);
size_t ds4_kv_pool_size(const ds4_kv_pool_h *pool);

typedef struct ds4_kv_pool_stats {
    uint64_t total_blocks[DS4_KV_N_KINDS];
    uint64_t used_blocks[DS4_KV_N_KINDS];
    uint64_t used_blocks_all;  /* sum over kinds */
    uint64_t used_bytes;       /* bytes of the used blocks */
    uint64_t n_tables;         /* live block tables */
} ds4_kv_pool_stats_t;
void ds4_kv_pool_stats(ds4_kv_pool_h *pool, ds4_kv_pool_stats_t *out);

/*
 * Reserves blocks for every group of a sequence of n_tokens, all or nothing.
 * DS4_ERR_NO_BLOCKS (naming the kind in the log) when a kind lacks room.
 */
ds4_status_t ds4_kv_pool_alloc(ds4_kv_pool_h *pool, uint64_t n_tokens,
                               ds4_kv_block_table_h **out);
/* Returns the table's blocks to the pool. NULL is ignored. */
void ds4_kv_pool_free(ds4_kv_pool_h *pool, ds4_kv_block_table_h *table);

uint64_t ds4_kv_table_n_tokens(const ds4_kv_block_table_h *t);
/* Address of row `row` of group `g`; NULL when out of range. Rows of one block are contiguous:
 * *contig_rows (may be NULL) receives how many rows follow in the same block, this one incl. */
void *ds4_kv_table_row_ptr(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t, uint32_t g,
                           uint64_t row, uint64_t *contig_rows);
/* CRC32C of group g's rows in row order (what the sender's completion record carries). */
uint32_t ds4_kv_table_group_crc(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t, uint32_t g);

/* Serialised view: "DS4B" header, per-kind layout, per-group block lists, CRC32C trailer. */
ds4_status_t ds4_kv_table_encode(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t,
                                 void **buf, size_t *len);

/* A decoded view; pointers borrow the buffer given to ds4_kv_view_decode. */
typedef struct ds4_kv_view {
    uint64_t n_tokens;
    uint32_t n_groups;
    uint32_t n_block_ids;
    uint64_t kind_offset[DS4_KV_N_KINDS];  /* byte offset of the kind's blocks in the region */
    uint64_t block_bytes[DS4_KV_N_KINDS];
    uint32_t block_rows[DS4_KV_N_KINDS];
    uint32_t n_blocks[DS4_KV_N_KINDS];     /* blocks of the kind in the region (bounds check) */
    const unsigned char *group_first;      /* n_groups + 1 little-endian u32 */
    const unsigned char *block_ids;        /* n_block_ids little-endian u32 */
} ds4_kv_view_t;

/*
 * Parses and checks a view against `m` (group count, block counts for n_tokens, ids in range).
 * DS4_ERR_PARSE / DS4_ERR_VERSION / DS4_ERR_KV_MANIFEST with a reason in `why`.
 */
ds4_status_t ds4_kv_view_decode(const void *buf, size_t len, const ds4_kv_manifest_h *m,
                                ds4_kv_view_t *out, char *why, size_t why_len);
/* Region offset of row `row` of group g and rows contiguous from it within its block. */
ds4_status_t ds4_kv_view_row_offset(const ds4_kv_view_t *v, const ds4_kv_manifest_h *m,
                                    uint32_t g, uint64_t row, uint64_t *offset,
                                    uint64_t *contig_rows);

#ifdef __cplusplus
}
#endif
#endif /* DS4_KV_H */
