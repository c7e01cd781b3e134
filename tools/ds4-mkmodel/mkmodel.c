/* Deterministic V4 checkpoint writer (see mkmodel.h). */
#include "mkmodel.h"

#include "ds4/alloc.h"
#include "ds4/log.h"
#include "ds4/numeric.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const int k_default_ratios[5] = {0, 4, 128, 4, 0};

ds4_mkmodel_params_t ds4_mkmodel_params_default(void)
{
    return (ds4_mkmodel_params_t){
        .seed = 20260424, .vocab_size = 129280, .hidden = 128, .n_heads = 2, .head_dim = 128,
        .q_lora = 128, .o_groups = 1, .o_lora = 128, .window = 128, .n_experts = 8,
        .n_active = 2, .moe_inter = 128, .n_hash = 2, .index_heads = 4, .index_topk = 64,
        .n_layers = 4, .ratios = k_default_ratios, .n_shards = 1};
}

enum kind { K_F32, K_BF16, K_FP8, K_FP8_SCALE, K_FP4, K_FP4_SCALE, K_I64_TID2EID };

typedef struct tensor {
    char name[96];
    enum kind kind;
    int64_t d0, d1;      /* logical [out, in] of the weight (or shape) */
    int nd;
    float scale;         /* init std (uniform with this std) */
    float mean;          /* added (norm weights: 1) */
    uint64_t seed;
    uint64_t nbytes;
    uint64_t off;
    int shard;
} tensor_t;

typedef struct plan {
    tensor_t *t;
    int n, cap;
} plan_t;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int add(plan_t *p, const char *name, enum kind k, int nd, int64_t d0, int64_t d1,
               float scale, float mean, uint64_t seed)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 256;
        tensor_t *t = ds4_realloc_array(p->t, (size_t)cap, sizeof(tensor_t));
        if (t == NULL)
            return -1;
        p->t = t;
        p->cap = cap;
    }
    tensor_t *t = &p->t[p->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->kind = k;
    t->nd = nd;
    t->d0 = d0;
    t->d1 = d1;
    t->scale = scale;
    t->mean = mean;
    t->seed = mix(seed ^ name_hash(name));
    switch (k) {
    case K_F32: t->nbytes = (uint64_t)d0 * (nd > 1 ? d1 : 1) * 4; break;
    case K_BF16: t->nbytes = (uint64_t)d0 * (nd > 1 ? d1 : 1) * 2; break;
    case K_FP8: t->nbytes = (uint64_t)d0 * d1; break;
    case K_FP8_SCALE: t->nbytes = (uint64_t)((d0 + 127) / 128) * ((d1 + 127) / 128); break;
    case K_FP4: t->nbytes = (uint64_t)d0 * d1 / 2; break;
    case K_FP4_SCALE: t->nbytes = (uint64_t)d0 * (d1 / 32); break;
    case K_I64_TID2EID: t->nbytes = (uint64_t)d0 * d1 * 8; break;
    }
    return 0;
}

/* Linear weight + scale (FP8/FP4) or plain BF16. */
static int add_lin(plan_t *p, const char *base, enum kind k, int64_t out, int64_t in,
                   uint64_t seed)
{
    char n[96];
    snprintf(n, sizeof(n), "%s.weight", base);
    float sd = 1.0f / sqrtf((float)in);
    if (add(p, n, k, 2, out, in, sd, 0.0f, seed) != 0)
        return -1;
    if (k == K_FP8 || k == K_FP4) {
        snprintf(n, sizeof(n), "%s.scale", base);
        return add(p, n, k == K_FP8 ? K_FP8_SCALE : K_FP4_SCALE, 2, out, in, sd, 0.0f, seed);
    }
    return 0;
}

static int elem_size(enum kind k)
{
    return k == K_I64_TID2EID ? 8 : k == K_F32 ? 4 : k == K_BF16 ? 2 : 1;
}

/* Larger elements first, then by name: every tensor stays aligned to its element size. */
static int cmp_name(const void *a, const void *b)
{
    const tensor_t *x = a, *y = b;
    int ex = elem_size(x->kind), ey = elem_size(y->kind);
    if (ex != ey)
        return ey - ex;
    return strcmp(x->name, y->name);
}

static int build_plan(const ds4_mkmodel_params_t *c, plan_t *p)
{
    int64_t d = c->hidden, hc = 4, mixn = (2 + hc) * hc, H = c->n_heads, hd = c->head_dim;
    uint64_t s = c->seed;
    int rc = 0;
    rc |= add(p, "embed.weight", K_BF16, 2, c->vocab_size, d, 1.0f, 0.0f, s);
    rc |= add(p, "head.weight", K_BF16, 2, c->vocab_size, d, 1.0f / sqrtf((float)d), 0.0f, s);
    rc |= add(p, "norm.weight", K_BF16, 1, d, 0, 0.1f, 1.0f, s);
    rc |= add(p, "hc_head_fn", K_F32, 2, hc, hc * d, 0.02f, 0.0f, s);
    rc |= add(p, "hc_head_base", K_F32, 1, hc, 0, 0.1f, 0.0f, s);
    rc |= add(p, "hc_head_scale", K_F32, 1, 1, 0, 0.1f, 1.0f, s);
    for (int l = 0; l <= c->n_layers; l++) {
        char pre[32], n[96];
        bool mtp = l == c->n_layers;
        int r = c->ratios[l];
        if (mtp)
            snprintf(pre, sizeof(pre), "mtp.0.");
        else
            snprintf(pre, sizeof(pre), "layers.%d.", l);
#define NAME(x) (snprintf(n, sizeof(n), "%s%s", pre, x), n)
        rc |= add(p, NAME("attn_norm.weight"), K_BF16, 1, d, 0, 0.1f, 1.0f, s);
        rc |= add(p, NAME("ffn_norm.weight"), K_BF16, 1, d, 0, 0.1f, 1.0f, s);
        const char *sub[2] = {"attn", "ffn"};
        for (int k = 0; k < 2; k++) {
            char x[64];
            snprintf(x, sizeof(x), "hc_%s_fn", sub[k]);
            rc |= add(p, NAME(x), K_F32, 2, mixn, hc * d, 0.02f, 0.0f, s);
            snprintf(x, sizeof(x), "hc_%s_base", sub[k]);
            rc |= add(p, NAME(x), K_F32, 1, mixn, 0, 0.5f, 0.0f, s);
            snprintf(x, sizeof(x), "hc_%s_scale", sub[k]);
            rc |= add(p, NAME(x), K_F32, 1, 3, 0, 0.1f, 1.0f, s);
        }
        rc |= add(p, NAME("attn.attn_sink"), K_F32, 1, H, 0, 0.5f, 0.0f, s);
        rc |= add_lin(p, NAME("attn.wq_a"), K_FP8, c->q_lora, d, s);
        rc |= add(p, NAME("attn.q_norm.weight"), K_BF16, 1, c->q_lora, 0, 0.1f, 1.0f, s);
        rc |= add_lin(p, NAME("attn.wq_b"), K_FP8, H * hd, c->q_lora, s);
        rc |= add_lin(p, NAME("attn.wkv"), K_FP8, hd, d, s);
        rc |= add(p, NAME("attn.kv_norm.weight"), K_BF16, 1, hd, 0, 0.1f, 1.0f, s);
        rc |= add_lin(p, NAME("attn.wo_a"), K_FP8, (int64_t)c->o_groups * c->o_lora,
                      H * hd / c->o_groups, s);
        rc |= add_lin(p, NAME("attn.wo_b"), K_FP8, d, (int64_t)c->o_groups * c->o_lora, s);
        if (!mtp && r != 0) {
            int64_t coff = r == 4 ? 2 : 1;
            rc |= add_lin(p, NAME("attn.compressor.wkv"), K_BF16, coff * hd, d, s);
            rc |= add_lin(p, NAME("attn.compressor.wgate"), K_BF16, coff * hd, d, s);
            rc |= add(p, NAME("attn.compressor.ape"), K_F32, 2, r, coff * hd, 0.5f, 0.0f, s);
            rc |= add(p, NAME("attn.compressor.norm.weight"), K_BF16, 1, hd, 0, 0.1f, 1.0f, s);
        }
        if (!mtp && r == 4) {
            int64_t ih = c->index_heads, ihd = 128;
            rc |= add_lin(p, NAME("attn.indexer.wq_b"), K_FP8, ih * ihd, c->q_lora, s);
            rc |= add_lin(p, NAME("attn.indexer.weights_proj"), K_BF16, ih, d, s);
            rc |= add_lin(p, NAME("attn.indexer.compressor.wkv"), K_BF16, 2 * ihd, d, s);
            rc |= add_lin(p, NAME("attn.indexer.compressor.wgate"), K_BF16, 2 * ihd, d, s);
            rc |= add(p, NAME("attn.indexer.compressor.ape"), K_F32, 2, 4, 2 * ihd, 0.5f, 0.0f,
                      s);
            rc |= add(p, NAME("attn.indexer.compressor.norm.weight"), K_BF16, 1, ihd, 0, 0.1f,
                      1.0f, s);
        }
        rc |= add_lin(p, NAME("ffn.gate"), K_BF16, c->n_experts, d, s);
        if (!mtp && l < c->n_hash)
            rc |= add(p, NAME("ffn.gate.tid2eid"), K_I64_TID2EID, 2, c->vocab_size,
                      c->n_active, (float)c->n_experts, 0.0f, s);
        else
            rc |= add(p, NAME("ffn.gate.bias"), K_F32, 1, c->n_experts, 0, 0.1f, 0.0f, s);
        for (int e = 0; e < c->n_experts; e++) {
            char x[64];
            snprintf(x, sizeof(x), "ffn.experts.%d.w1", e);
            rc |= add_lin(p, NAME(x), K_FP4, c->moe_inter, d, s);
            snprintf(x, sizeof(x), "ffn.experts.%d.w2", e);
            rc |= add_lin(p, NAME(x), K_FP4, d, c->moe_inter, s);
            snprintf(x, sizeof(x), "ffn.experts.%d.w3", e);
            rc |= add_lin(p, NAME(x), K_FP4, c->moe_inter, d, s);
        }
        rc |= add_lin(p, NAME("ffn.shared_experts.w1"), K_FP8, c->moe_inter, d, s);
        rc |= add_lin(p, NAME("ffn.shared_experts.w2"), K_FP8, d, c->moe_inter, s);
        rc |= add_lin(p, NAME("ffn.shared_experts.w3"), K_FP8, c->moe_inter, d, s);
        if (mtp) {
            rc |= add_lin(p, NAME("e_proj"), K_FP8, d, d, s);
            rc |= add_lin(p, NAME("h_proj"), K_FP8, d, d, s);
            rc |= add(p, NAME("enorm.weight"), K_BF16, 1, d, 0, 0.1f, 1.0f, s);
            rc |= add(p, NAME("hnorm.weight"), K_BF16, 1, d, 0, 0.1f, 1.0f, s);
            rc |= add(p, NAME("norm.weight"), K_BF16, 1, d, 0, 0.1f, 1.0f, s);
            rc |= add(p, NAME("hc_head_fn"), K_F32, 2, hc, hc * d, 0.02f, 0.0f, s);
            rc |= add(p, NAME("hc_head_base"), K_F32, 1, hc, 0, 0.1f, 0.0f, s);
            rc |= add(p, NAME("hc_head_scale"), K_F32, 1, 1, 0, 0.1f, 1.0f, s);
        }
#undef NAME
    }
    if (rc != 0)
        return -1;
    qsort(p->t, (size_t)p->n, sizeof(tensor_t), cmp_name);
    return 0;
}

/* Deterministic uniform value with standard deviation `sd` (integer math + exact scaling). */
static float rnd(uint64_t *st, float sd)
{
    *st = mix(*st);
    double u = (double)(*st >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    return (float)((u * 2.0 - 1.0) * 1.7320508075688772 * (double)sd);
}

static int round_scale_exp(float amax, float inv)
{
    uint32_t b = ds4_f32_to_bits(amax * inv);
    return (int)((b >> 23) & 0xffu) - 127 + ((b & 0x7fffffu) != 0);
}

/* Generates the bytes of t (weights regenerated for their scale tensors: same seed). */
static uint8_t *gen(const tensor_t *t, int n_experts)
{
    uint8_t *buf = ds4_malloc(t->nbytes > 0 ? t->nbytes : 1);
    if (buf == NULL)
        return NULL;
    uint64_t st = t->seed;
    int64_t n = t->nd > 1 ? t->d0 * t->d1 : t->d0;
    switch (t->kind) {
    case K_F32:
        for (int64_t i = 0; i < n; i++) {
            float v = t->mean + rnd(&st, t->scale);
            memcpy(buf + 4 * i, &v, 4);
        }
        break;
    case K_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = ds4_f32_to_bf16(t->mean + rnd(&st, t->scale));
            buf[2 * i] = (uint8_t)h;
            buf[2 * i + 1] = (uint8_t)(h >> 8);
        }
        break;
    case K_FP8:
    case K_FP8_SCALE: {
        /* weights generated row-major, quantised per 128x128 block */
        float *w = ds4_malloc_array((size_t)n, sizeof(float));
        if (w == NULL) {
            ds4_free(buf);
            return NULL;
        }
        for (int64_t i = 0; i < n; i++)
            w[i] = rnd(&st, t->scale);
        int64_t rb = (t->d0 + 127) / 128, cb = (t->d1 + 127) / 128;
        for (int64_t bi = 0; bi < rb; bi++)
            for (int64_t bj = 0; bj < cb; bj++) {
                float amax = 0;
                for (int64_t r = bi * 128; r < t->d0 && r < (bi + 1) * 128; r++)
                    for (int64_t c = bj * 128; c < t->d1 && c < (bj + 1) * 128; c++)
                        amax = fmaxf(amax, fabsf(w[r * t->d1 + c]));
                int k = round_scale_exp(fmaxf(amax, 1e-30f), (float)(1.0 / 448.0));
                if (t->kind == K_FP8_SCALE) {
                    buf[bi * cb + bj] = ds4_e8m0_from_exp(k);
                    continue;
                }
                for (int64_t r = bi * 128; r < t->d0 && r < (bi + 1) * 128; r++)
                    for (int64_t c = bj * 128; c < t->d1 && c < (bj + 1) * 128; c++)
                        buf[r * t->d1 + c] = ds4_f32_to_e4m3(ldexpf(w[r * t->d1 + c], -k));
            }
        ds4_free(w);
        break;
    }
    case K_FP4:
    case K_FP4_SCALE:
        for (int64_t r = 0; r < t->d0; r++)
            for (int64_t b = 0; b < t->d1 / 32; b++) {
                float w[32], amax = 0;
                for (int i = 0; i < 32; i++) {
                    w[i] = rnd(&st, t->scale);
                    amax = fmaxf(amax, fabsf(w[i]));
                }
                int k = round_scale_exp(fmaxf(amax, 1e-30f), (float)(1.0 / 6.0));
                if (t->kind == K_FP4_SCALE) {
                    buf[r * (t->d1 / 32) + b] = ds4_e8m0_from_exp(k);
                    continue;
                }
                for (int i = 0; i < 16; i++) {
                    uint8_t lo = ds4_f32_to_e2m1(ldexpf(w[2 * i], -k));
                    uint8_t hi = ds4_f32_to_e2m1(ldexpf(w[2 * i + 1], -k));
                    buf[r * (t->d1 / 2) + b * 16 + i] = (uint8_t)(lo | (hi << 4));
                }
            }
        break;
    case K_I64_TID2EID:
        for (int64_t r = 0; r < t->d0; r++) {
            int64_t used[64];
            for (int64_t k = 0; k < t->d1; k++) {
                int64_t e;
                bool dup;
                do {
                    st = mix(st);
                    e = (int64_t)(st % (uint64_t)n_experts);
                    dup = false;
                    for (int64_t j = 0; j < k; j++)
                        dup |= used[j] == e;
                } while (dup);
                used[k] = e;
                memcpy(buf + 8 * (r * t->d1 + k), &e, 8);
            }
        }
        break;
    }
    return buf;
}

static const char *dtype_str(enum kind k)
{
    switch (k) {
    case K_F32: return "F32";
    case K_BF16: return "BF16";
    case K_FP8: return "F8_E4M3";
    case K_FP8_SCALE:
    case K_FP4_SCALE: return "F8_E8M0";
    case K_FP4: return "I8";
    case K_I64_TID2EID: return "I64";
    }
    return "?";
}

static void shape_of(const tensor_t *t, int64_t *s, int *nd)
{
    *nd = t->nd;
    s[0] = t->d0;
    s[1] = t->d1;
    if (t->kind == K_FP8_SCALE) {
        s[0] = (t->d0 + 127) / 128;
        s[1] = (t->d1 + 127) / 128;
    } else if (t->kind == K_FP4) {
        s[1] = t->d1 / 2;
    } else if (t->kind == K_FP4_SCALE) {
        s[1] = t->d1 / 32;
    }
}

static ds4_status_t write_shard(const char *path, plan_t *p, int shard, int n_experts)
{
    /* header */
    size_t cap = 1 << 16, len = 0;
    char *h = ds4_malloc(cap);
    if (h == NULL)
        return DS4_ERR_NO_MEMORY;
    len += (size_t)snprintf(h, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < p->n; i++) {
        tensor_t *t = &p->t[i];
        if (t->shard != shard)
            continue;
        if (cap - len < 512) {
            cap *= 2;
            char *nh = ds4_realloc_array(h, cap, 1);
            if (nh == NULL) {
                ds4_free(h);
                return DS4_ERR_NO_MEMORY;
            }
            h = nh;
        }
        int64_t s[2];
        int nd;
        shape_of(t, s, &nd);
        t->off = off;
        if (nd == 1)
            len += (size_t)snprintf(h + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],"
                                    "\"data_offsets\":[%llu,%llu]}",
                                    t->name, dtype_str(t->kind), (long long)s[0],
                                    (unsigned long long)off,
                                    (unsigned long long)(off + t->nbytes));
        else
            len += (size_t)snprintf(h + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],"
                                    "\"data_offsets\":[%llu,%llu]}",
                                    t->name, dtype_str(t->kind), (long long)s[0],
                                    (long long)s[1], (unsigned long long)off,
                                    (unsigned long long)(off + t->nbytes));
        off += t->nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8 != 0)
        h[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        ds4_log_error("mkmodel: cannot write %s: %s", path, strerror(errno));
        ds4_free(h);
        return DS4_ERR_IO;
    }
    uint64_t hl = len;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hl >> (8 * i));
    bool ok = fwrite(le, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    ds4_free(h);
    for (int i = 0; ok && i < p->n; i++) {
        if (p->t[i].shard != shard)
            continue;
        uint8_t *b = gen(&p->t[i], n_experts);
        ok = b != NULL && fwrite(b, 1, p->t[i].nbytes, f) == p->t[i].nbytes;
        ds4_free(b);
    }
    if (fclose(f) != 0)
        ok = false;
    return ok ? DS4_OK : DS4_ERR_IO;
}

static ds4_status_t write_config(const char *dir, const ds4_mkmodel_params_t *c)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return DS4_ERR_IO;
    fprintf(f, "{\n  \"architectures\": [\"DeepseekV4ForCausalLM\"],\n"
               "  \"model_type\": \"deepseek_v4\",\n  \"attention_bias\": false,\n"
               "  \"attention_dropout\": 0.0,\n  \"bos_token_id\": 0,\n  \"eos_token_id\": 1,\n"
               "  \"expert_dtype\": \"fp4\",\n  \"hc_eps\": 1e-06,\n  \"hc_mult\": 4,\n"
               "  \"hc_sinkhorn_iters\": 20,\n  \"head_dim\": %d,\n  \"hidden_act\": \"silu\",\n"
               "  \"hidden_size\": %d,\n  \"index_head_dim\": 128,\n  \"index_n_heads\": %d,\n"
               "  \"index_topk\": %d,\n  \"initializer_range\": 0.02,\n"
               "  \"max_position_embeddings\": 1048576,\n  \"moe_intermediate_size\": %d,\n"
               "  \"n_routed_experts\": %d,\n  \"n_shared_experts\": 1,\n"
               "  \"norm_topk_prob\": true,\n  \"num_attention_heads\": %d,\n"
               "  \"num_experts_per_tok\": %d,\n  \"num_hidden_layers\": %d,\n"
               "  \"num_hash_layers\": %d,\n  \"num_key_value_heads\": 1,\n"
               "  \"num_nextn_predict_layers\": 1,\n  \"o_groups\": %d,\n  \"o_lora_rank\": %d,\n"
               "  \"q_lora_rank\": %d,\n  \"qk_rope_head_dim\": 64,\n",
            c->head_dim, c->hidden, c->index_heads, c->index_topk, c->moe_inter, c->n_experts,
            c->n_heads, c->n_active, c->n_layers, c->n_hash, c->o_groups, c->o_lora, c->q_lora);
    fprintf(f, "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", "
               "\"quant_method\": \"fp8\", \"scale_fmt\": \"ue8m0\", "
               "\"weight_block_size\": [128, 128]},\n"
               "  \"rms_norm_eps\": 1e-06,\n  \"rope_scaling\": {\"beta_fast\": 32, "
               "\"beta_slow\": 1, \"factor\": 16, \"original_max_position_embeddings\": 65536, "
               "\"type\": \"yarn\"},\n  \"rope_theta\": 10000,\n  \"routed_scaling_factor\": 1.5,\n"
               "  \"scoring_func\": \"sqrtsoftplus\",\n  \"sliding_window\": %d,\n"
               "  \"swiglu_limit\": 10.0,\n  \"tie_word_embeddings\": false,\n"
               "  \"topk_method\": \"noaux_tc\",\n  \"torch_dtype\": \"bfloat16\",\n"
               "  \"transformers_version\": \"4.57.1\",\n  \"use_cache\": true,\n"
               "  \"vocab_size\": %d,\n  \"compress_rope_theta\": 160000,\n"
               "  \"compress_ratios\": [",
            c->window, c->vocab_size);
    for (int i = 0; i <= c->n_layers; i++)
        fprintf(f, "%s%d", i ? ", " : "", c->ratios[i]);
    fprintf(f, "]\n}\n");
    return fclose(f) == 0 ? DS4_OK : DS4_ERR_IO;
}

ds4_status_t ds4_mkmodel_write(const char *dir, const ds4_mkmodel_params_t *c)
{
    if (c->hidden % 128 != 0 || c->head_dim < 128 || (c->head_dim - 64) % 64 != 0 ||
        c->n_layers < 1 || c->n_shards < 1 || c->n_active > 64 || c->n_heads % c->o_groups) {
        ds4_log_error("mkmodel: unsupported dimensions");
        return DS4_ERR_INVALID_ARG;
    }
    mkdir(dir, 0777);
    plan_t p = {0};
    ds4_status_t st = DS4_OK;
    if (build_plan(c, &p) != 0) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    st = write_config(dir, c);
    if (st != DS4_OK)
        goto out;
    for (int i = 0; i < p.n; i++)
        p.t[i].shard = (int)((int64_t)i * c->n_shards / p.n);
    char path[4096];
    if (c->n_shards == 1) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        st = write_shard(path, &p, 0, c->n_experts);
        goto out;
    }
    for (int s = 0; s < c->n_shards && st == DS4_OK; s++) {
        snprintf(path, sizeof(path), "%s/model-%05d-of-%05d.safetensors", dir, s + 1,
                 c->n_shards);
        st = write_shard(path, &p, s, c->n_experts);
    }
    if (st != DS4_OK)
        goto out;
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        st = DS4_ERR_IO;
        goto out;
    }
    fprintf(f, "{\n  \"metadata\": {},\n  \"weight_map\": {\n");
    for (int i = 0; i < p.n; i++)
        fprintf(f, "    \"%s\": \"model-%05d-of-%05d.safetensors\"%s\n", p.t[i].name,
                p.t[i].shard + 1, c->n_shards, i + 1 < p.n ? "," : "");
    fprintf(f, "  }\n}\n");
    if (fclose(f) != 0)
        st = DS4_ERR_IO;
out:
    ds4_free(p.t);
    return st;
}
