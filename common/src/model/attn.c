/* Attention of every layer kind (window, CSA, HCA): projections, the chunk's keys decoded once,
 * and the blockwise sparse attention of the reference kernel (attn-sparse.c: blocks of 64
 * entries, online softmax, bf16 probabilities before P.V, sink in the denominator). Scores are
 * sequential fp32 dot products and block sums use the reference's row-reduction order
 * (ds4__sum_row_f32): measured against the golden, both are needed for bit-exact layers. */
#include "attn-sparse.h"
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

/* ---------------- sparse attention ---------------- */

/* Keys of one chunk, decoded once and shared by every query row of the chunk (rows are
 * immutable once written):
 *   window: positions wbase .. p0+T-1 (the ring rows still in some query's window, then the
 *     chunk's own rows), row-major wr[L][hd] and transposed wt[hd][L];
 *   HCA: compressed rows 0 .. (p0+T)/ratio - 1, row-major cr[nc][hd] and transposed tiles of
 *     64 rows ct[nc/64][hd][64] (last tile zero-padded).
 * CSA rows are decoded per query (the 64 selected rows; a whole-sequence cache would be
 * n/4 rows). */
typedef struct attn_job {
    ds4_model_h m;
    const ds4_layer_w_t *L;
    ds4_layer_state_t *ls;
    int64_t T, p0;
    const float *q;      /* [T][H][hd] */
    const int32_t *sel;  /* CSA: [T][topk] */
    const int32_t *n_sel;
    float *o;            /* [T][H][hd] */
    ds4__attn_isa_t isa;
    int64_t wbase, wlen;
    const float *wr, *wt;
    int64_t n_cr;
    const float *cr, *ct;
    bool wr_exact, cr_exact; /* ds4__attn_keys_exact of wr / cr */
} attn_job_t;

static void attn_rows(void *arg, size_t begin, size_t end, int thread_index)
{
    attn_job_t *j = arg;
    const ds4_model_config_t *c = &j->m->cfg;
    const ds4_layer_w_t *L = j->L;
    int H = c->n_heads, hd = c->head_dim, win = c->sliding_window, topk = c->index_topk;
    ds4__attn_shape_t sh = {.n_heads = H, .head_dim = hd,
                            .scale = (float)(1.0 / sqrt((double)hd)), .sink = L->attn_sink};
    int64_t max_comp = L->kind == DS4_LAYER_HCA ? j->n_cr
                       : L->kind == DS4_LAYER_CSA ? topk : 0;
    int64_t n_tiles = L->kind == DS4_LAYER_CSA ? (topk + DS4__ATTN_TILE - 1) / DS4__ATTN_TILE : 0;
    void *scratch = ds4_aligned_alloc(64, ds4__attn_scratch_bytes(&sh, win + max_comp));
    float *kr = ds4_malloc_array((size_t)(topk * hd), sizeof(float));
    float *kt = ds4_calloc((size_t)(n_tiles * DS4__ATTN_TILE * hd), sizeof(float));
    DS4_ASSERT(scratch != NULL && kr != NULL && (kt != NULL || n_tiles == 0));
    for (size_t t = begin; t < end; t++) {
        int64_t p = j->p0 + (int64_t)t;
        /* window: slots 0..nw-1 hold positions tok0..p, slots nw..win-1 are empty */
        int64_t nw = p + 1 < win ? p + 1 : win, tok0 = p + 1 - nw, w0 = tok0 - j->wbase;
        ds4__attn_seg_t segs[3] = {
            {.n = nw, .kt = j->wt + w0, .ld = j->wlen, .tile_stride = DS4__ATTN_TILE,
             .kr = j->wr + w0 * hd, .exact = j->wr_exact},
            {.n = win - nw},
            {.n = 0},
        };
        if (L->kind == DS4_LAYER_HCA) {
            segs[2] = (ds4__attn_seg_t){.n = (p + 1) / L->ratio, .kt = j->ct, .ld = DS4__ATTN_TILE,
                                        .tile_stride = (int64_t)DS4__ATTN_TILE * hd, .kr = j->cr,
                                        .exact = j->cr_exact};
        } else if (L->kind == DS4_LAYER_CSA) {
            int ns = j->n_sel[t];
            for (int i = 0; i < ns; i++) {
                int32_t g = j->sel[(int64_t)t * topk + i];
                ds4__kv_row_decode_isa(j->isa, c, j->ls->comp + (int64_t)g * j->m->row_bytes,
                                       kr + i * hd);
            }
            ds4__attn_transpose_tiles(j->isa, kr, ns, hd, kt);
            bool exact = ds4__attn_keys_exact(j->isa, kr, (int64_t)ns * hd);
            segs[2] = (ds4__attn_seg_t){.n = ns, .kt = kt, .ld = DS4__ATTN_TILE,
                                        .tile_stride = (int64_t)DS4__ATTN_TILE * hd, .kr = kr,
                                        .exact = exact};
        }
        ds4__attn_query(j->isa, &sh, segs, 3, j->q + (int64_t)t * H * hd,
                        j->o + (int64_t)t * H * hd, scratch);
    }
    ds4_free(scratch);
    ds4_free(kr);
    ds4_free(kt);
}

ds4_status_t ds4__attention(ds4_model_h m, ds4_seq_h s, const ds4_layer_w_t *L, const float *x,
                            int64_t T, int64_t p0, float *out, const ds4_step_hooks_t *hooks)
{
    const ds4_model_config_t *c = &m->cfg;
    ds4_layer_state_t *ls = &s->ls[L->index];
    int H = c->n_heads, hd = c->head_dim, rd = c->rope_head_dim, win = c->sliding_window;
    int ql = c->q_lora_rank, G = c->o_groups, ol = c->o_lora_rank;
    int64_t gin = (int64_t)H * hd / G;
    const float *freqs = L->ratio != 0 ? m->rope_freq_comp : m->rope_freq_window;
    ds4_status_t st = DS4_OK;
    float *qr = ds4_malloc_array((size_t)(T * ql), sizeof(float));
    float *tmp = ds4_malloc_array((size_t)(T * (ql > hd ? ql : hd)), sizeof(float));
    float *q = ds4_malloc_array((size_t)(T * H * hd), sizeof(float));
    float *kv = ds4_malloc_array((size_t)(T * hd), sizeof(float));
    uint8_t *rows = ds4_malloc_array((size_t)T, m->row_bytes);
    float *o = ds4_malloc_array((size_t)(T * H * hd), sizeof(float));
    float *og = ds4_malloc_array((size_t)(T * gin), sizeof(float));
    float *z = ds4_malloc_array((size_t)(T * G * ol), sizeof(float));
    float *zg = ds4_malloc_array((size_t)(T * ol), sizeof(float));
    int32_t *sel = NULL, *n_sel = NULL;
    float *wr = NULL, *wt = NULL, *cr = NULL, *ct = NULL;
    /* cos/sin of the chunk's positions, shared by the q heads, kv and the output rotation */
    float *rcs = ds4_malloc_array((size_t)(T * (rd / 2)), sizeof(float));
    float *rsn = ds4_malloc_array((size_t)(T * (rd / 2)), sizeof(float));
    if (qr == NULL || tmp == NULL || q == NULL || kv == NULL || rows == NULL || o == NULL ||
        og == NULL || z == NULL || zg == NULL || rcs == NULL || rsn == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    for (int64_t t = 0; t < T; t++)
        ds4__rope_table(rd, freqs, p0 + t, rcs + t * (rd / 2), rsn + t * (rd / 2));
    /* q path */
    ds4__linear_bf16(m, &L->wq_a, T, x, tmp, 0);
    ds4__rmsnorm_rows(tmp, L->q_norm, T, ql, c->rms_norm_eps, qr);
    ds4__linear_bf16(m, &L->wq_b, T, qr, q, 0);
    const float eps = (float)c->rms_norm_eps;
    for (int64_t i = 0; i < T * H; i++) {
        float *qh = q + i * hd;
        double ss = 0.0;
        for (int k = 0; k < hd; k++)
            ss += (double)ds4_round_bf16(qh[k] * qh[k]);
        float mean = ds4_round_bf16((float)ss / (float)hd);
        float rs = ds4_round_bf16(1.0f / sqrtf(ds4_round_bf16(mean + eps)));
        for (int k = 0; k < hd; k++)
            qh[k] = ds4_round_bf16(qh[k] * rs);
        ds4__rope_apply(qh + hd - rd, rd, rcs + (i / H) * (rd / 2), rsn + (i / H) * (rd / 2),
                        false);
    }
    /* kv path */
    ds4__linear_bf16(m, &L->wkv, T, x, tmp, 0);
    ds4__rmsnorm_rows(tmp, L->kv_norm, T, hd, c->rms_norm_eps, kv);
    for (int64_t t = 0; t < T; t++) {
        ds4__rope_apply(kv + t * hd + hd - rd, rd, rcs + t * (rd / 2), rsn + t * (rd / 2),
                        false);
        ds4__kv_row_encode(c, kv + t * hd, rows + t * m->row_bytes);
    }
    /* compressed entries */
    if (L->kind == DS4_LAYER_CSA) {
        sel = ds4_malloc_array((size_t)(T * c->index_topk), sizeof(int32_t));
        n_sel = ds4_malloc_array((size_t)T, sizeof(int32_t));
        if (sel == NULL || n_sel == NULL) {
            st = DS4_ERR_NO_MEMORY;
            goto out;
        }
        st = ds4__indexer_run(m, s, L, x, qr, T, p0, sel, n_sel);
        if (st != DS4_OK)
            goto out;
        if (hooks != NULL && hooks->csa_topk != NULL) {
            for (int64_t t = 0; t < T; t++)
                hooks->csa_topk(hooks->arg, L->index, p0 + t, sel + t * c->index_topk,
                                n_sel[t]);
        }
    }
    if (L->ratio != 0) {
        st = ds4__compressor_run(m, s, L, false, x, T, p0);
        if (st != DS4_OK)
            goto out;
    }
    /* the chunk's keys, decoded once (see attn_job_t) */
    ds4__attn_isa_t isa = ds4__attn_isa_select();
    int64_t n_old = p0 < win - 1 ? p0 : win - 1;
    int64_t wlen = n_old + T;
    int64_t n_cr = L->kind == DS4_LAYER_HCA ? (p0 + T) / L->ratio : 0;
    int64_t n_ct = (n_cr + DS4__ATTN_TILE - 1) / DS4__ATTN_TILE * DS4__ATTN_TILE;
    DS4_ASSERT(n_cr <= ls->n_comp);
    wr = ds4_malloc_array((size_t)(wlen * hd), sizeof(float));
    wt = ds4_malloc_array((size_t)(wlen * hd), sizeof(float));
    if (n_cr > 0) {
        cr = ds4_malloc_array((size_t)(n_cr * hd), sizeof(float));
        ct = ds4_calloc((size_t)(n_ct * hd), sizeof(float));
    }
    if (wr == NULL || wt == NULL || (n_cr > 0 && (cr == NULL || ct == NULL))) {
        st = DS4_ERR_NO_MEMORY;
        goto out;
    }
    for (int64_t r = 0; r < n_old; r++)
        ds4__kv_row_decode(c, ls->ring + ((p0 - n_old + r) % win) * m->row_bytes, wr + r * hd);
    memcpy(wr + n_old * hd, kv, sizeof(float) * (size_t)(T * hd));
    for (int64_t r = 0; r < wlen; r++)
        for (int i = 0; i < hd; i++)
            wt[i * wlen + r] = wr[r * hd + i];
    for (int64_t g = 0; g < n_cr; g++)
        ds4__kv_row_decode_isa(isa, c, ls->comp + g * m->row_bytes, cr + g * hd);
    ds4__attn_transpose_tiles(isa, cr, n_cr, hd, ct);
    attn_job_t job = {.m = m, .L = L, .ls = ls, .T = T, .p0 = p0, .q = q, .sel = sel,
                      .n_sel = n_sel, .o = o, .isa = isa, .wbase = p0 - n_old,
                      .wlen = wlen, .wr = wr, .wt = wt, .n_cr = n_cr, .cr = cr, .ct = ct,
                      .wr_exact = ds4__attn_keys_exact(isa, wr, wlen * hd),
                      .cr_exact = ds4__attn_keys_exact(isa, cr, n_cr * hd)};
    m->ops->parallel_for(m->be, (size_t)T, attn_rows, &job);
    /* ring update after every query of the chunk has read the old rows */
    for (int64_t t = (T > win ? T - win : 0); t < T; t++)
        memcpy(ls->ring + ((p0 + t) % win) * m->row_bytes, rows + t * m->row_bytes,
               m->row_bytes);
    for (int64_t i = 0; i < T * H; i++)
        ds4__rope_apply(o + i * hd + hd - rd, rd, rcs + (i / H) * (rd / 2),
                        rsn + (i / H) * (rd / 2), true);
    /* grouped output projection: wo_a per group in bf16 (no activation quantisation) */
    for (int g = 0; g < G; g++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(og + t * gin, o + t * H * hd + g * gin, sizeof(float) * (size_t)gin);
        ds4_weight_t wg = ds4_weight_rows(&L->wo_a, (int64_t)g * ol, ol);
        ds4__linear_bf16(m, &wg, T, og, zg, DS4_MATMUL_NO_ACT_QUANT);
        for (int64_t t = 0; t < T; t++)
            memcpy(z + t * G * ol + g * ol, zg + t * ol, sizeof(float) * (size_t)ol);
    }
    ds4__linear_bf16(m, &L->wo_b, T, z, out, 0);
out:
    ds4_free(qr);
    ds4_free(tmp);
    ds4_free(q);
    ds4_free(kv);
    ds4_free(rows);
    ds4_free(o);
    ds4_free(og);
    ds4_free(z);
    ds4_free(zg);
    ds4_free(sel);
    ds4_free(n_sel);
    ds4_free(rcs);
    ds4_free(rsn);
    ds4_free(wr);
    ds4_free(wt);
    ds4_free(cr);
    ds4_free(ct);
    return st;
}
