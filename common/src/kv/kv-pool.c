#include "ds4/kv.h"

#include "ds4/alloc.h"
#include "ds4/crc32c.h"
#include "ds4/log.h"
#include "kv-internal.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>

#define POOL_KIND_ALIGN 4096u

struct ds4_kv_pool {
    pthread_mutex_t lock;
    const ds4_kv_manifest_h *m;
    ds4_kv_pool_params_t p;
    unsigned char *base;
    size_t size;
    bool owns_memory;
    uint64_t kind_offset[DS4_KV_N_KINDS];
    uint64_t block_bytes[DS4_KV_N_KINDS];
    uint32_t *free_ids[DS4_KV_N_KINDS]; /* stack of free block ids per kind */
    uint32_t n_free[DS4_KV_N_KINDS];
    uint64_t n_tables;
};

struct ds4_kv_block_table {
    uint64_t n_tokens;
    uint32_t n_groups;
    uint32_t n_ids;
    uint32_t *group_first; /* n_groups + 1: group g owns ids[group_first[g] .. [g+1]) */
    uint32_t *ids;
};

ds4_kv_pool_params_t ds4_kv_pool_params_default(const ds4_kv_manifest_h *manifest)
{
    ds4_kv_pool_params_t p = {.manifest = manifest};
    uint32_t window_rows = 128;
    if (manifest != NULL) {
        for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(manifest); g++) {
            const ds4_kv_group_t *grp = ds4_kv_manifest_group(manifest, g);
            if (grp->kind == DS4_KV_WINDOW) {
                window_rows = grp->fixed_rows;
                break;
            }
        }
    }
    p.block_rows[DS4_KV_WINDOW] = window_rows;
    p.block_rows[DS4_KV_CSA] = 256;
    p.block_rows[DS4_KV_INDEX] = 256;
    p.block_rows[DS4_KV_HCA] = 256;
    p.block_rows[DS4_KV_TAIL] = 16384;
    return p;
}

static uint64_t group_blocks(const ds4_kv_pool_params_t *p, const ds4_kv_group_t *g,
                             uint64_t n_tokens)
{
    return DS4_DIV_CEIL(ds4_kv_group_rows(g, n_tokens), (uint64_t)p->block_rows[g->kind]);
}

uint64_t ds4_kv_pool_blocks_for(const ds4_kv_pool_params_t *p, ds4_kv_group_kind_t kind,
                                uint64_t n_tokens)
{
    uint64_t total = 0;
    for (uint32_t g = 0; g < ds4_kv_manifest_n_groups(p->manifest); g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(p->manifest, g);
        if (grp->kind == kind)
            total += group_blocks(p, grp, n_tokens);
    }
    return total;
}

ds4_status_t ds4_kv_pool_params_for_tokens(ds4_kv_pool_params_t *p, uint64_t n_tokens,
                                           uint32_t n_seqs)
{
    if (p == NULL || p->manifest == NULL)
        return DS4_ERR_INVALID_ARG;
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        if (p->block_rows[k] == 0)
            return DS4_ERR_INVALID_ARG;
        uint64_t n = ds4_kv_pool_blocks_for(p, (ds4_kv_group_kind_t)k, n_tokens) * n_seqs;
        if (n > UINT32_MAX)
            return DS4_ERR_OUT_OF_RANGE;
        p->n_blocks[k] = (uint32_t)n;
    }
    return DS4_OK;
}

/* Fills per-kind offsets/block sizes; false on overflow or bad params. */
static bool pool_layout(const ds4_kv_pool_params_t *p, uint64_t offset[DS4_KV_N_KINDS],
                        uint64_t block_bytes[DS4_KV_N_KINDS], size_t *total)
{
    uint64_t off = 0;
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        uint64_t row = ds4_kv_manifest_kind_row_bytes(p->manifest, (ds4_kv_group_kind_t)k);
        if (p->block_rows[k] == 0)
            return false;
        block_bytes[k] = row * p->block_rows[k];
        off = DS4_ROUND_UP(off, POOL_KIND_ALIGN);
        offset[k] = off;
        uint64_t bytes;
        if (__builtin_mul_overflow(block_bytes[k], (uint64_t)p->n_blocks[k], &bytes) ||
            __builtin_add_overflow(off, bytes, &off))
            return false;
    }
    off = DS4_ROUND_UP(off, POOL_KIND_ALIGN);
    if (off > SIZE_MAX)
        return false;
    *total = (size_t)off;
    return true;
}

ds4_status_t ds4_kv_pool_memory_bytes(const ds4_kv_pool_params_t *p, size_t *out)
{
    uint64_t off[DS4_KV_N_KINDS], bb[DS4_KV_N_KINDS];
    if (p == NULL || p->manifest == NULL || out == NULL || !pool_layout(p, off, bb, out))
        return DS4_ERR_INVALID_ARG;
    return DS4_OK;
}

ds4_status_t ds4_kv_pool_create(const ds4_kv_pool_params_t *p, ds4_kv_pool_h **out)
{
    ds4_status_t st = DS4_ERR_NO_MEMORY;
    if (p == NULL || p->manifest == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_kv_pool_h *pool = ds4_calloc(1, sizeof(*pool));
    if (pool == NULL)
        return DS4_ERR_NO_MEMORY;
    pool->m = p->manifest;
    pool->p = *p;
    if (!pool_layout(p, pool->kind_offset, pool->block_bytes, &pool->size)) {
        ds4_log_error("kv pool: invalid block sizes or counts");
        st = DS4_ERR_INVALID_ARG;
        goto fail_pool;
    }
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        pool->free_ids[k] = ds4_malloc_array(DS4_MAX(p->n_blocks[k], 1u), sizeof(uint32_t));
        if (pool->free_ids[k] == NULL)
            goto fail_ids;
        /* Stack top is the last element: hand out low ids first. */
        for (uint32_t i = 0; i < p->n_blocks[k]; i++)
            pool->free_ids[k][i] = p->n_blocks[k] - 1u - i;
        pool->n_free[k] = p->n_blocks[k];
    }
    if (p->memory != NULL) {
        pool->base = p->memory;
    } else {
        pool->base = ds4_aligned_alloc(POOL_KIND_ALIGN, DS4_MAX(pool->size, POOL_KIND_ALIGN));
        if (pool->base == NULL)
            goto fail_ids;
        memset(pool->base, 0, pool->size);
        pool->owns_memory = true;
    }
    pthread_mutex_init(&pool->lock, NULL);
    *out = pool;
    return DS4_OK;

fail_ids:
    for (int k = 0; k < DS4_KV_N_KINDS; k++)
        ds4_free(pool->free_ids[k]);
fail_pool:
    ds4_free(pool);
    return st;
}

void ds4_kv_pool_destroy(ds4_kv_pool_h *pool)
{
    if (pool == NULL)
        return;
    DS4_ASSERT(pool->n_tables == 0);
    pthread_mutex_destroy(&pool->lock);
    for (int k = 0; k < DS4_KV_N_KINDS; k++)
        ds4_free(pool->free_ids[k]);
    if (pool->owns_memory)
        ds4_free(pool->base);
    ds4_free(pool);
}

void *ds4_kv_pool_base(const ds4_kv_pool_h *pool)
{
    return pool->base;
}

size_t ds4_kv_pool_size(const ds4_kv_pool_h *pool)
{
    return pool->size;
}

void ds4_kv_pool_stats(ds4_kv_pool_h *pool, ds4_kv_pool_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&pool->lock);
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        out->total_blocks[k] = pool->p.n_blocks[k];
        out->used_blocks[k] = pool->p.n_blocks[k] - pool->n_free[k];
        out->used_blocks_all += out->used_blocks[k];
        out->used_bytes += out->used_blocks[k] * pool->block_bytes[k];
    }
    out->n_tables = pool->n_tables;
    pthread_mutex_unlock(&pool->lock);
}

ds4_status_t ds4_kv_pool_alloc(ds4_kv_pool_h *pool, uint64_t n_tokens,
                               ds4_kv_block_table_h **out)
{
    if (pool == NULL || out == NULL || n_tokens == 0)
        return DS4_ERR_INVALID_ARG;
    uint32_t n_groups = ds4_kv_manifest_n_groups(pool->m);
    uint64_t need[DS4_KV_N_KINDS] = {0};
    uint64_t n_ids = 0;
    for (uint32_t g = 0; g < n_groups; g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(pool->m, g);
        uint64_t b = group_blocks(&pool->p, grp, n_tokens);
        need[grp->kind] += b;
        n_ids += b;
    }
    if (n_ids > UINT32_MAX)
        return DS4_ERR_OUT_OF_RANGE;
    ds4_kv_block_table_h *t = ds4_calloc(1, sizeof(*t));
    if (t == NULL)
        return DS4_ERR_NO_MEMORY;
    t->group_first = ds4_malloc_array((size_t)n_groups + 1u, sizeof(uint32_t));
    t->ids = ds4_malloc_array(DS4_MAX(n_ids, 1u), sizeof(uint32_t));
    if (t->group_first == NULL || t->ids == NULL) {
        ds4_free(t->group_first);
        ds4_free(t->ids);
        ds4_free(t);
        return DS4_ERR_NO_MEMORY;
    }
    t->n_tokens = n_tokens;
    t->n_groups = n_groups;
    t->n_ids = (uint32_t)n_ids;

    pthread_mutex_lock(&pool->lock);
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        if (need[k] > pool->n_free[k]) {
            uint32_t free_now = pool->n_free[k];
            pthread_mutex_unlock(&pool->lock);
            ds4_log_warn("kv pool out of blocks kind %s need %" PRIu64 " free %u n_tokens %" PRIu64,
                         ds4_kv_kind_name((ds4_kv_group_kind_t)k), need[k], free_now,
                         n_tokens);
            ds4_free(t->group_first);
            ds4_free(t->ids);
            ds4_free(t);
            return DS4_ERR_NO_BLOCKS;
        }
    }
    uint32_t pos = 0;
    for (uint32_t g = 0; g < n_groups; g++) {
        const ds4_kv_group_t *grp = ds4_kv_manifest_group(pool->m, g);
        uint64_t b = group_blocks(&pool->p, grp, n_tokens);
        t->group_first[g] = pos;
        for (uint64_t i = 0; i < b; i++)
            t->ids[pos++] = pool->free_ids[grp->kind][--pool->n_free[grp->kind]];
    }
    t->group_first[n_groups] = pos;
    pool->n_tables++;
    pthread_mutex_unlock(&pool->lock);
    *out = t;
    return DS4_OK;
}

void ds4_kv_pool_free(ds4_kv_pool_h *pool, ds4_kv_block_table_h *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    for (uint32_t g = 0; g < t->n_groups; g++) {
        ds4_kv_group_kind_t kind = ds4_kv_manifest_group(pool->m, g)->kind;
        for (uint32_t i = t->group_first[g]; i < t->group_first[g + 1]; i++) {
            DS4_ASSERT(pool->n_free[kind] < pool->p.n_blocks[kind]);
            pool->free_ids[kind][pool->n_free[kind]++] = t->ids[i];
        }
    }
    DS4_ASSERT(pool->n_tables > 0);
    pool->n_tables--;
    pthread_mutex_unlock(&pool->lock);
    ds4_free(t->group_first);
    ds4_free(t->ids);
    ds4_free(t);
}

uint64_t ds4_kv_table_n_tokens(const ds4_kv_block_table_h *t)
{
    return t->n_tokens;
}

void *ds4_kv_table_row_ptr(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t, uint32_t g,
                           uint64_t row, uint64_t *contig_rows)
{
    if (g >= t->n_groups)
        return NULL;
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(pool->m, g);
    if (row >= ds4_kv_group_rows(grp, t->n_tokens))
        return NULL;
    uint32_t rpb = pool->p.block_rows[grp->kind];
    uint64_t blk = row / rpb, in = row % rpb;
    uint32_t id = t->ids[t->group_first[g] + blk];
    if (contig_rows != NULL)
        *contig_rows = DS4_MIN((uint64_t)rpb - in, ds4_kv_group_rows(grp, t->n_tokens) - row);
    return pool->base + pool->kind_offset[grp->kind] + (uint64_t)id * pool->block_bytes[grp->kind] +
           in * grp->row_bytes;
}

uint32_t ds4_kv_table_group_crc(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t, uint32_t g)
{
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(pool->m, g);
    uint64_t rows = ds4_kv_group_rows(grp, t->n_tokens);
    uint32_t crc = 0;
    for (uint64_t r = 0; r < rows;) {
        uint64_t n = 0;
        const void *p = ds4_kv_table_row_ptr(pool, t, g, r, &n);
        DS4_ASSERT(p != NULL && n > 0);
        crc = ds4_crc32c(crc, p, n * grp->row_bytes);
        r += n;
    }
    return crc;
}

/* ------------------------------------------------------------------------- view (wire) */

typedef struct view_wire_kind {
    uint64_t offset;
    uint64_t block_bytes;
    uint32_t block_rows;
    uint32_t n_blocks;
} view_wire_kind_t;
static_assert(sizeof(view_wire_kind_t) == 24, "view kind is a wire format");

typedef struct view_wire_hdr {
    char magic[4];       /* "DS4B" */
    uint16_t version;    /* VIEW_VERSION */
    uint16_t hdr_bytes;  /* sizeof(view_wire_hdr_t) */
    uint32_t n_groups;
    uint32_t n_block_ids;
    uint64_t n_tokens;
    view_wire_kind_t kinds[DS4_KV_N_KINDS];
} view_wire_hdr_t;
static_assert(sizeof(view_wire_hdr_t) == 144, "view header is a wire format");

#define VIEW_VERSION 1u

ds4_status_t ds4_kv_table_encode(ds4_kv_pool_h *pool, const ds4_kv_block_table_h *t,
                                 void **buf, size_t *len)
{
    size_t total = sizeof(view_wire_hdr_t) + ((size_t)t->n_groups + 1u) * 4u +
                   (size_t)t->n_ids * 4u + 4u;
    unsigned char *p = ds4_malloc(total);
    if (p == NULL)
        return DS4_ERR_NO_MEMORY;
    view_wire_hdr_t h = {
        .magic = {'D', 'S', '4', 'B'},
        .version = VIEW_VERSION,
        .hdr_bytes = sizeof(view_wire_hdr_t),
        .n_groups = t->n_groups,
        .n_block_ids = t->n_ids,
        .n_tokens = t->n_tokens,
    };
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        h.kinds[k] = (view_wire_kind_t){
            .offset = pool->kind_offset[k],
            .block_bytes = pool->block_bytes[k],
            .block_rows = pool->p.block_rows[k],
            .n_blocks = pool->p.n_blocks[k],
        };
    }
    memcpy(p, &h, sizeof(h));
    unsigned char *q = p + sizeof(h);
    memcpy(q, t->group_first, ((size_t)t->n_groups + 1u) * 4u);
    q += ((size_t)t->n_groups + 1u) * 4u;
    memcpy(q, t->ids, (size_t)t->n_ids * 4u);
    q += (size_t)t->n_ids * 4u;
    ds4__wr_u32(q, ds4_crc32c(0, p, (size_t)(q - p)));
    *buf = p;
    *len = total;
    return DS4_OK;
}

ds4_status_t ds4_kv_view_decode(const void *buf, size_t len, const ds4_kv_manifest_h *m,
                                ds4_kv_view_t *out, char *why, size_t why_len)
{
    const unsigned char *p = buf;
    view_wire_hdr_t h;
    if (buf == NULL || len < sizeof(h) + 8u) {
        snprintf(why, why_len, "block table: %zu bytes, too short", len);
        return DS4_ERR_PARSE;
    }
    memcpy(&h, p, sizeof(h));
    if (memcmp(h.magic, "DS4B", 4) != 0) {
        snprintf(why, why_len, "block table: bad magic");
        return DS4_ERR_PARSE;
    }
    if (h.version != VIEW_VERSION) {
        snprintf(why, why_len, "block table: version %u, this build speaks %u", h.version,
                 VIEW_VERSION);
        return DS4_ERR_VERSION;
    }
    uint64_t want = sizeof(h) + ((uint64_t)h.n_groups + 1u) * 4u + (uint64_t)h.n_block_ids * 4u +
                    4u;
    if (h.hdr_bytes != sizeof(h) || want != len) {
        snprintf(why, why_len, "block table: inconsistent sizes (%zu bytes)", len);
        return DS4_ERR_PARSE;
    }
    if (ds4__rd_u32(p + len - 4) != ds4_crc32c(0, p, len - 4)) {
        snprintf(why, why_len, "block table: crc32c mismatch");
        return DS4_ERR_PARSE;
    }
    if (h.n_groups != ds4_kv_manifest_n_groups(m)) {
        snprintf(why, why_len, "block table: %u groups, manifest has %u", h.n_groups,
                 ds4_kv_manifest_n_groups(m));
        return DS4_ERR_KV_MANIFEST;
    }
    ds4_kv_view_t v = {
        .n_tokens = h.n_tokens,
        .n_groups = h.n_groups,
        .n_block_ids = h.n_block_ids,
        .group_first = p + sizeof(h),
        .block_ids = p + sizeof(h) + ((size_t)h.n_groups + 1u) * 4u,
    };
    for (int k = 0; k < DS4_KV_N_KINDS; k++) {
        uint32_t row = ds4_kv_manifest_kind_row_bytes(m, (ds4_kv_group_kind_t)k);
        if (h.kinds[k].block_rows == 0 ||
            h.kinds[k].block_bytes != (uint64_t)row * h.kinds[k].block_rows) {
            snprintf(why, why_len, "block table: kind %s block of %u rows is %" PRIu64 " bytes",
                     ds4_kv_kind_name((ds4_kv_group_kind_t)k), h.kinds[k].block_rows,
                     h.kinds[k].block_bytes);
            return DS4_ERR_PARSE;
        }
        v.kind_offset[k] = h.kinds[k].offset;
        v.block_bytes[k] = h.kinds[k].block_bytes;
        v.block_rows[k] = h.kinds[k].block_rows;
        v.n_blocks[k] = h.kinds[k].n_blocks;
    }
    char name[64];
    uint32_t prev = 0;
    for (uint32_t g = 0; g <= h.n_groups; g++) {
        uint32_t first = ds4__rd_u32(v.group_first + 4u * g);
        if (first != prev && g == 0) {
            snprintf(why, why_len, "block table: first group does not start at 0");
            return DS4_ERR_PARSE;
        }
        if (g > 0) {
            const ds4_kv_group_t *grp = ds4_kv_manifest_group(m, g - 1);
            uint64_t need = DS4_DIV_CEIL(ds4_kv_group_rows(grp, h.n_tokens),
                                         (uint64_t)v.block_rows[grp->kind]);
            if (first < prev || first - prev != need) {
                snprintf(why, why_len, "block table: %s has %u blocks, needs %" PRIu64,
                         ds4_kv_group_describe(m, g - 1, name, sizeof(name)), first - prev,
                         need);
                return DS4_ERR_PARSE;
            }
            for (uint32_t i = prev; i < first; i++) {
                if (ds4__rd_u32(v.block_ids + 4u * i) >= v.n_blocks[grp->kind]) {
                    snprintf(why, why_len, "block table: %s block id out of range",
                             ds4_kv_group_describe(m, g - 1, name, sizeof(name)));
                    return DS4_ERR_PARSE;
                }
            }
        }
        prev = first;
    }
    if (prev != h.n_block_ids) {
        snprintf(why, why_len, "block table: %u ids listed, groups use %u", h.n_block_ids, prev);
        return DS4_ERR_PARSE;
    }
    *out = v;
    return DS4_OK;
}

ds4_status_t ds4_kv_view_row_offset(const ds4_kv_view_t *v, const ds4_kv_manifest_h *m,
                                    uint32_t g, uint64_t row, uint64_t *offset,
                                    uint64_t *contig_rows)
{
    const ds4_kv_group_t *grp = ds4_kv_manifest_group(m, g);
    if (grp == NULL || g >= v->n_groups)
        return DS4_ERR_OUT_OF_RANGE;
    uint64_t rows = ds4_kv_group_rows(grp, v->n_tokens);
    if (row >= rows)
        return DS4_ERR_OUT_OF_RANGE;
    uint32_t rpb = v->block_rows[grp->kind];
    uint64_t blk = row / rpb, in = row % rpb;
    uint32_t id = ds4__rd_u32(v->block_ids + 4u * (ds4__rd_u32(v->group_first + 4u * g) + blk));
    *offset = v->kind_offset[grp->kind] + (uint64_t)id * v->block_bytes[grp->kind] +
              in * grp->row_bytes;
    if (contig_rows != NULL)
        *contig_rows = DS4_MIN((uint64_t)rpb - in, rows - row);
    return DS4_OK;
}
