#include "ds4/kv.h"

#include "ds4/alloc.h"
#include "ds4/crc32c.h"
#include "ds4/log.h"
#include "kv-internal.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

struct ds4_kv_manifest {
    uint32_t n_groups;
    uint64_t config_digest;
    uint64_t digest;
    uint32_t kind_row_bytes[DS4_KV_N_KINDS];
    ds4_kv_group_t *groups;
};

/* Wire layout of an encoded manifest; all integers little-endian. */
typedef struct manifest_wire_hdr {
    char magic[4];          /* "DS4M" */
    uint16_t version;       /* DS4_KV_MANIFEST_VERSION */
    uint16_t hdr_bytes;     /* sizeof(manifest_wire_hdr_t) */
    uint32_t n_groups;
    uint32_t group_bytes;   /* sizeof(manifest_wire_group_t) */
    uint64_t config_digest;
} manifest_wire_hdr_t;
static_assert(sizeof(manifest_wire_hdr_t) == 24, "manifest header is a wire format");

typedef struct manifest_wire_group {
    int32_t layer;
    uint8_t kind;
    uint8_t dtype;
    uint16_t reserved0;
    uint32_t row_bytes;
    uint32_t tokens_per_row;
    uint32_t fixed_rows;
    uint32_t reserved1;
} manifest_wire_group_t;
static_assert(sizeof(manifest_wire_group_t) == 24, "manifest group is a wire format");

#define MANIFEST_MAX_GROUPS (DS4_CONFIG_MAX_LAYERS * 4u)

const char *ds4_kv_kind_name(ds4_kv_group_kind_t kind)
{
    switch (kind) {
    case DS4_KV_WINDOW: return "window";
    case DS4_KV_CSA: return "csa";
    case DS4_KV_INDEX: return "index";
    case DS4_KV_HCA: return "hca";
    case DS4_KV_TAIL: return "tail";
    }
    return "unknown";
}

typedef struct digest_buf {
    uint64_t h;
} digest_buf_t;

static void digest_addf(digest_buf_t *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void digest_addf(digest_buf_t *d, const char *fmt, ...)
{
    char line[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    DS4_ASSERT(n > 0 && (size_t)n < sizeof(line));
    d->h = ds4__fnv1a(d->h, line, (size_t)n);
}

/* Canonical text of every model-defining config field ("key=value\n"), hashed: two configs
 * with the same KV shape but different models still get different digests. */
static uint64_t config_digest(const ds4_model_config_t *c)
{
    digest_buf_t d = {DS4__FNV_OFFSET};
    digest_addf(&d, "vocab_size=%d\n", c->vocab_size);
    digest_addf(&d, "hidden_size=%d\n", c->hidden_size);
    digest_addf(&d, "n_layers=%d\n", c->n_layers);
    digest_addf(&d, "n_mtp_layers=%d\n", c->n_mtp_layers);
    digest_addf(&d, "n_heads=%d\n", c->n_heads);
    digest_addf(&d, "n_kv_heads=%d\n", c->n_kv_heads);
    digest_addf(&d, "head_dim=%d\n", c->head_dim);
    digest_addf(&d, "rope_head_dim=%d\n", c->rope_head_dim);
    digest_addf(&d, "q_lora_rank=%d\n", c->q_lora_rank);
    digest_addf(&d, "o_groups=%d\n", c->o_groups);
    digest_addf(&d, "o_lora_rank=%d\n", c->o_lora_rank);
    digest_addf(&d, "sliding_window=%d\n", c->sliding_window);
    digest_addf(&d, "index_n_heads=%d\n", c->index_n_heads);
    digest_addf(&d, "index_head_dim=%d\n", c->index_head_dim);
    digest_addf(&d, "index_topk=%d\n", c->index_topk);
    digest_addf(&d, "n_routed_experts=%d\n", c->n_routed_experts);
    digest_addf(&d, "n_shared_experts=%d\n", c->n_shared_experts);
    digest_addf(&d, "n_activated_experts=%d\n", c->n_activated_experts);
    digest_addf(&d, "moe_inter_dim=%d\n", c->moe_inter_dim);
    digest_addf(&d, "n_hash_layers=%d\n", c->n_hash_layers);
    digest_addf(&d, "hc_mult=%d\n", c->hc_mult);
    digest_addf(&d, "hc_sinkhorn_iters=%d\n", c->hc_sinkhorn_iters);
    digest_addf(&d, "max_position_embeddings=%" PRId64 "\n", c->max_position_embeddings);
    digest_addf(&d, "hc_eps=%.17g\n", c->hc_eps);
    digest_addf(&d, "rms_norm_eps=%.17g\n", c->rms_norm_eps);
    digest_addf(&d, "rope_theta=%.17g\n", c->rope_theta);
    digest_addf(&d, "compress_rope_theta=%.17g\n", c->compress_rope_theta);
    digest_addf(&d, "routed_scaling_factor=%.17g\n", c->routed_scaling_factor);
    digest_addf(&d, "swiglu_limit=%.17g\n", c->swiglu_limit);
    digest_addf(&d, "has_yarn=%d\n", (int)c->has_yarn);
    if (c->has_yarn) {
        digest_addf(&d, "rope_factor=%.17g\n", c->rope_factor);
        digest_addf(&d, "rope_original_max_pos=%" PRId64 "\n", c->rope_original_max_pos);
        digest_addf(&d, "beta_fast=%.17g\n", c->beta_fast);
        digest_addf(&d, "beta_slow=%.17g\n", c->beta_slow);
    }
    digest_addf(&d, "scoring_func=%d\n", (int)c->scoring_func);
    digest_addf(&d, "norm_topk_prob=%d\n", (int)c->norm_topk_prob);
    digest_addf(&d, "expert_dtype=%d\n", (int)c->expert_dtype);
    digest_addf(&d, "weight_block=%d,%d\n", c->weight_block[0], c->weight_block[1]);
    for (int32_t l = 0; l < ds4_config_n_layers_total(c); l++)
        digest_addf(&d, "layer%d=%d,%d\n", l, c->compress_ratio[l], (int)c->layer_kind[l]);
    return d.h;
}

static void manifest_add(ds4_kv_manifest_h *m, int32_t layer, ds4_kv_group_kind_t kind,
                         ds4_kv_dtype_t dtype, uint32_t row_bytes, uint32_t tokens_per_row,
                         uint32_t fixed_rows)
{
    DS4_ASSERT(m->n_groups < MANIFEST_MAX_GROUPS);
    m->groups[m->n_groups++] = (ds4_kv_group_t){
        .layer = layer,
        .kind = kind,
        .dtype = dtype,
        .row_bytes = row_bytes,
        .tokens_per_row = tokens_per_row,
        .fixed_rows = fixed_rows,
    };
    m->kind_row_bytes[kind] = row_bytes;
}

static void manifest_finish(ds4_kv_manifest_h *m)
{
    void *buf = NULL;
    size_t len = 0;
    /* The digest covers header + groups, i.e. the encoding without its CRC trailer. */
    if (ds4_kv_manifest_encode(m, &buf, &len) == DS4_OK) {
        m->digest = ds4__fnv1a(DS4__FNV_OFFSET, buf, len - sizeof(uint32_t));
        ds4_free(buf);
    }
}

ds4_status_t ds4_kv_manifest_create(const ds4_model_config_t *c, ds4_kv_manifest_h **out)
{
    if (c == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    int32_t n_total = ds4_config_n_layers_total(c);
    if (n_total <= 0 || n_total > DS4_CONFIG_MAX_LAYERS || c->sliding_window <= 0) {
        ds4_log_error("kv manifest: config has %d layers, window %d", n_total,
                      c->sliding_window);
        return DS4_ERR_CONFIG;
    }
    ds4_kv_manifest_h *m = ds4_calloc(1, sizeof(*m));
    if (m == NULL)
        return DS4_ERR_NO_MEMORY;
    m->groups = ds4_calloc(MANIFEST_MAX_GROUPS, sizeof(*m->groups));
    if (m->groups == NULL) {
        ds4_free(m);
        return DS4_ERR_NO_MEMORY;
    }
    uint32_t row = ds4_config_kv_row_bytes(c);
    uint32_t idx_row = ds4_config_index_row_bytes(c);
    for (int32_t l = 0; l < n_total; l++) {
        uint32_t ratio = (uint32_t)c->compress_ratio[l];
        manifest_add(m, l, DS4_KV_WINDOW, DS4_KV_DTYPE_FP8_MAIN, row, 0,
                     (uint32_t)c->sliding_window);
        switch (c->layer_kind[l]) {
        case DS4_LAYER_WINDOW:
            continue;
        case DS4_LAYER_CSA:
            manifest_add(m, l, DS4_KV_CSA, DS4_KV_DTYPE_FP8_MAIN, row, ratio, 0);
            manifest_add(m, l, DS4_KV_INDEX, DS4_KV_DTYPE_FP4_INDEX, idx_row, ratio, 0);
            break;
        case DS4_LAYER_HCA:
            manifest_add(m, l, DS4_KV_HCA, DS4_KV_DTYPE_FP8_MAIN, row, ratio, 0);
            break;
        }
        uint64_t tail = ds4_config_tail_bytes(c, l);
        DS4_ASSERT(tail % 4u == 0 && tail / 4u <= UINT32_MAX);
        manifest_add(m, l, DS4_KV_TAIL, DS4_KV_DTYPE_F32, 4, 0, (uint32_t)(tail / 4u));
    }
    m->config_digest = config_digest(c);
    manifest_finish(m);
    *out = m;
    return DS4_OK;
}

void ds4_kv_manifest_destroy(ds4_kv_manifest_h *m)
{
    if (m == NULL)
        return;
    ds4_free(m->groups);
    ds4_free(m);
}

uint32_t ds4_kv_manifest_n_groups(const ds4_kv_manifest_h *m)
{
    return m->n_groups;
}

const ds4_kv_group_t *ds4_kv_manifest_group(const ds4_kv_manifest_h *m, uint32_t g)
{
    return g < m->n_groups ? &m->groups[g] : NULL;
}

uint64_t ds4_kv_manifest_config_digest(const ds4_kv_manifest_h *m)
{
    return m->config_digest;
}

uint64_t ds4_kv_manifest_digest(const ds4_kv_manifest_h *m)
{
    return m->digest;
}

uint32_t ds4_kv_manifest_kind_row_bytes(const ds4_kv_manifest_h *m, ds4_kv_group_kind_t kind)
{
    return (unsigned)kind < DS4_KV_N_KINDS ? m->kind_row_bytes[kind] : 0;
}

uint64_t ds4_kv_group_rows(const ds4_kv_group_t *g, uint64_t n_tokens)
{
    if (g->tokens_per_row == 0)
        return g->fixed_rows;
    return n_tokens / g->tokens_per_row;
}

uint64_t ds4_kv_group_bytes(const ds4_kv_group_t *g, uint64_t n_tokens)
{
    return ds4_kv_group_rows(g, n_tokens) * g->row_bytes;
}

uint64_t ds4_kv_manifest_seq_bytes(const ds4_kv_manifest_h *m, uint64_t n_tokens)
{
    uint64_t total = 0;
    for (uint32_t g = 0; g < m->n_groups; g++)
        total += ds4_kv_group_bytes(&m->groups[g], n_tokens);
    return total;
}

const char *ds4_kv_group_describe(const ds4_kv_manifest_h *m, uint32_t g, char *buf,
                                  size_t buf_len)
{
    if (g < m->n_groups)
        snprintf(buf, buf_len, "group %u (layer %d %s)", g, m->groups[g].layer,
                 ds4_kv_kind_name(m->groups[g].kind));
    else
        snprintf(buf, buf_len, "group %u (absent)", g);
    return buf;
}

ds4_status_t ds4_kv_manifest_encode(const ds4_kv_manifest_h *m, void **buf, size_t *len)
{
    size_t total = sizeof(manifest_wire_hdr_t) +
                   (size_t)m->n_groups * sizeof(manifest_wire_group_t) + sizeof(uint32_t);
    unsigned char *p = ds4_malloc(total);
    if (p == NULL)
        return DS4_ERR_NO_MEMORY;
    manifest_wire_hdr_t h = {
        .magic = {'D', 'S', '4', 'M'},
        .version = DS4_KV_MANIFEST_VERSION,
        .hdr_bytes = sizeof(manifest_wire_hdr_t),
        .n_groups = m->n_groups,
        .group_bytes = sizeof(manifest_wire_group_t),
        .config_digest = m->config_digest,
    };
    memcpy(p, &h, sizeof(h));
    unsigned char *q = p + sizeof(h);
    for (uint32_t g = 0; g < m->n_groups; g++) {
        const ds4_kv_group_t *src = &m->groups[g];
        manifest_wire_group_t w = {
            .layer = src->layer,
            .kind = (uint8_t)src->kind,
            .dtype = (uint8_t)src->dtype,
            .row_bytes = src->row_bytes,
            .tokens_per_row = src->tokens_per_row,
            .fixed_rows = src->fixed_rows,
        };
        memcpy(q, &w, sizeof(w));
        q += sizeof(w);
    }
    ds4__wr_u32(q, ds4_crc32c(0, p, (size_t)(q - p)));
    *buf = p;
    *len = total;
    return DS4_OK;
}

ds4_status_t ds4_kv_manifest_decode(const void *buf, size_t len, ds4_kv_manifest_h **out,
                                    char *why, size_t why_len)
{
    const unsigned char *p = buf;
    manifest_wire_hdr_t h;
    if (buf == NULL || len < sizeof(h) + sizeof(uint32_t)) {
        snprintf(why, why_len, "manifest: %zu bytes, too short", len);
        return DS4_ERR_PARSE;
    }
    memcpy(&h, p, sizeof(h));
    if (memcmp(h.magic, "DS4M", 4) != 0) {
        snprintf(why, why_len, "manifest: bad magic");
        return DS4_ERR_PARSE;
    }
    if (h.version != DS4_KV_MANIFEST_VERSION) {
        snprintf(why, why_len, "manifest: version %u, this build speaks %u", h.version,
                 DS4_KV_MANIFEST_VERSION);
        return DS4_ERR_VERSION;
    }
    if (h.hdr_bytes != sizeof(h) || h.group_bytes != sizeof(manifest_wire_group_t) ||
        h.n_groups == 0 || h.n_groups > MANIFEST_MAX_GROUPS ||
        len != sizeof(h) + (size_t)h.n_groups * sizeof(manifest_wire_group_t) +
                   sizeof(uint32_t)) {
        snprintf(why, why_len, "manifest: inconsistent sizes (%u groups, %zu bytes)",
                 h.n_groups, len);
        return DS4_ERR_PARSE;
    }
    if (ds4__rd_u32(p + len - 4) != ds4_crc32c(0, p, len - 4)) {
        snprintf(why, why_len, "manifest: crc32c mismatch");
        return DS4_ERR_PARSE;
    }
    ds4_kv_manifest_h *m = ds4_calloc(1, sizeof(*m));
    if (m == NULL)
        return DS4_ERR_NO_MEMORY;
    m->groups = ds4_calloc(MANIFEST_MAX_GROUPS, sizeof(*m->groups));
    if (m->groups == NULL) {
        ds4_free(m);
        return DS4_ERR_NO_MEMORY;
    }
    const unsigned char *q = p + sizeof(h);
    for (uint32_t g = 0; g < h.n_groups; g++, q += sizeof(manifest_wire_group_t)) {
        manifest_wire_group_t w;
        memcpy(&w, q, sizeof(w));
        bool fixed = w.tokens_per_row == 0;
        if (w.kind >= DS4_KV_N_KINDS || w.dtype > DS4_KV_DTYPE_F32 || w.row_bytes == 0 ||
            w.layer < 0 || fixed == (w.fixed_rows == 0)) {
            snprintf(why, why_len, "manifest: group %u is malformed", g);
            ds4_kv_manifest_destroy(m);
            return DS4_ERR_PARSE;
        }
        manifest_add(m, w.layer, (ds4_kv_group_kind_t)w.kind, (ds4_kv_dtype_t)w.dtype,
                     w.row_bytes, w.tokens_per_row, w.fixed_rows);
    }
    m->config_digest = h.config_digest;
    manifest_finish(m);
    *out = m;
    return DS4_OK;
}

ds4_status_t ds4_kv_manifest_compare(const ds4_kv_manifest_h *a, const ds4_kv_manifest_h *b,
                                     char *why, size_t why_len)
{
    uint32_t n = DS4_MIN(a->n_groups, b->n_groups);
    char name[64];
    for (uint32_t g = 0; g < n; g++) {
        const ds4_kv_group_t *x = &a->groups[g], *y = &b->groups[g];
        const char *field = NULL;
        long long vx = 0, vy = 0;
        if (x->layer != y->layer || x->kind != y->kind) {
            snprintf(why, why_len, "group %u differs: local (layer %d %s), remote (layer %d %s)",
                     g, x->layer, ds4_kv_kind_name(x->kind), y->layer, ds4_kv_kind_name(y->kind));
            return DS4_ERR_KV_MANIFEST;
        } else if (x->dtype != y->dtype) {
            field = "dtype", vx = x->dtype, vy = y->dtype;
        } else if (x->row_bytes != y->row_bytes) {
            field = "row_bytes", vx = x->row_bytes, vy = y->row_bytes;
        } else if (x->tokens_per_row != y->tokens_per_row) {
            field = "tokens_per_row", vx = x->tokens_per_row, vy = y->tokens_per_row;
        } else if (x->fixed_rows != y->fixed_rows) {
            field = "fixed_rows", vx = x->fixed_rows, vy = y->fixed_rows;
        }
        if (field != NULL) {
            snprintf(why, why_len, "%s: local %s %lld, remote %s %lld",
                     ds4_kv_group_describe(a, g, name, sizeof(name)), field, vx, field, vy);
            return DS4_ERR_KV_MANIFEST;
        }
    }
    if (a->n_groups != b->n_groups) {
        const ds4_kv_manifest_h *longer = a->n_groups > b->n_groups ? a : b;
        snprintf(why, why_len, "%s: present only on the %s side (local %u groups, remote %u)",
                 ds4_kv_group_describe(longer, n, name, sizeof(name)),
                 longer == a ? "local" : "remote", a->n_groups, b->n_groups);
        return DS4_ERR_KV_MANIFEST;
    }
    if (a->config_digest != b->config_digest) {
        snprintf(why, why_len,
                 "same groups but model config digest differs (local %016" PRIx64
                 ", remote %016" PRIx64 ")",
                 a->config_digest, b->config_digest);
        return DS4_ERR_KV_MANIFEST;
    }
    return DS4_OK;
}
