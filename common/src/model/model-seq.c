/* Per-sequence state in the KV wire format: window rings, compressed rows, index rows,
 * compressor tails; clone, export and import. */
#include "model-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <math.h>
#include <string.h>

void ds4__seq_tail_reset(ds4_model_h m, int layer, float *tail)
{
    const ds4_model_config_t *c = &m->cfg;
    const ds4_layer_w_t *L = &m->layers[layer];
    if (L->ratio == 0)
        return;
    int64_t coff = L->ratio == 4 ? 2 : 1;
    int64_t n = coff * L->ratio * coff * c->head_dim;
    float *p = tail;
    memset(p, 0, sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        p[n + i] = -INFINITY;
    if (L->kind == DS4_LAYER_CSA) {
        p += 2 * n;
        int64_t ni = 8 * 2 * (int64_t)c->index_head_dim;
        memset(p, 0, sizeof(float) * (size_t)ni);
        for (int64_t i = 0; i < ni; i++)
            p[ni + i] = -INFINITY;
    }
}

static void seq_free_layers(ds4_seq_h s)
{
    if (s->ls == NULL)
        return;
    for (int i = 0; i < s->model->n_total; i++) {
        ds4_free(s->ls[i].ring);
        ds4_free(s->ls[i].comp);
        ds4_free(s->ls[i].idx);
        ds4_free(s->ls[i].tail);
    }
    ds4_free(s->ls);
}

ds4_status_t ds4_seq_create(ds4_model_h m, ds4_seq_h *out)
{
    const ds4_model_config_t *c = &m->cfg;
    struct ds4_seq *s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        return DS4_ERR_NO_MEMORY;
    s->model = m;
    s->ls = ds4_calloc((size_t)m->n_total, sizeof(ds4_layer_state_t));
    s->last_streams = ds4_calloc((size_t)c->hc_mult * c->hidden_size, sizeof(float));
    if (s->ls == NULL || s->last_streams == NULL)
        goto oom;
    for (int i = 0; i < m->n_total; i++) {
        ds4_layer_state_t *ls = &s->ls[i];
        ls->ring = ds4_calloc((size_t)c->sliding_window, m->row_bytes);
        if (ls->ring == NULL)
            goto oom;
        ls->tail_floats = (int64_t)(ds4_config_tail_bytes(c, i) / sizeof(float));
        if (ls->tail_floats > 0) {
            ls->tail = ds4_malloc_array((size_t)ls->tail_floats, sizeof(float));
            if (ls->tail == NULL)
                goto oom;
            ds4__seq_tail_reset(m, i, ls->tail);
        }
    }
    *out = s;
    return DS4_OK;
oom:
    ds4_seq_destroy(s);
    return DS4_ERR_NO_MEMORY;
}

void ds4_seq_destroy(ds4_seq_h s)
{
    if (s == NULL)
        return;
    seq_free_layers(s);
    ds4_free(s->last_streams);
    ds4_free(s);
}

int64_t ds4_seq_pos(ds4_seq_h s)
{
    return s->pos;
}

const float *ds4_seq_last_streams(ds4_seq_h s)
{
    return s->last_streams;
}

ds4_status_t ds4__seq_reserve(ds4_seq_h s, int layer, int64_t n_comp)
{
    ds4_model_h m = s->model;
    ds4_layer_state_t *ls = &s->ls[layer];
    if (n_comp <= ls->cap_comp)
        return DS4_OK;
    int64_t cap = ls->cap_comp > 0 ? ls->cap_comp : 64;
    while (cap < n_comp)
        cap *= 2;
    uint8_t *comp = ds4_realloc_array(ls->comp, (size_t)cap, m->row_bytes);
    if (comp == NULL)
        return DS4_ERR_NO_MEMORY;
    ls->comp = comp;
    if (m->layers[layer].kind == DS4_LAYER_CSA) {
        uint8_t *idx = ds4_realloc_array(ls->idx, (size_t)cap, m->index_row_bytes);
        if (idx == NULL)
            return DS4_ERR_NO_MEMORY;
        ls->idx = idx;
    }
    ls->cap_comp = cap;
    return DS4_OK;
}

ds4_status_t ds4_seq_clone(ds4_seq_h s, ds4_seq_h *out)
{
    ds4_model_h m = s->model;
    const ds4_model_config_t *c = &m->cfg;
    ds4_seq_h n;
    ds4_status_t st = ds4_seq_create(m, &n);
    if (st != DS4_OK)
        return st;
    n->pos = s->pos;
    n->mtp_pos = s->mtp_pos;
    memcpy(n->last_streams, s->last_streams,
           sizeof(float) * (size_t)c->hc_mult * (size_t)c->hidden_size);
    for (int i = 0; i < m->n_total; i++) {
        ds4_layer_state_t *a = &s->ls[i], *b = &n->ls[i];
        memcpy(b->ring, a->ring, (size_t)c->sliding_window * m->row_bytes);
        if (a->tail_floats > 0)
            memcpy(b->tail, a->tail, sizeof(float) * (size_t)a->tail_floats);
        st = ds4__seq_reserve(n, i, a->n_comp);
        if (st != DS4_OK) {
            ds4_seq_destroy(n);
            return st;
        }
        b->n_comp = a->n_comp;
        if (a->n_comp > 0) {
            memcpy(b->comp, a->comp, (size_t)a->n_comp * m->row_bytes);
            if (a->idx != NULL)
                memcpy(b->idx, a->idx, (size_t)a->n_comp * m->index_row_bytes);
        }
    }
    *out = n;
    return DS4_OK;
}

static int64_t expected_comp(ds4_model_h m, int layer, int64_t pos)
{
    const ds4_layer_w_t *L = &m->layers[layer];
    return L->ratio == 0 || L->is_mtp ? 0 : pos / L->ratio;
}

void ds4_seq_layer_bytes(ds4_seq_h s, int layer, ds4_seq_layer_bytes_t *out)
{
    ds4_model_h m = s->model;
    const ds4_layer_state_t *ls = &s->ls[layer];
    out->window = (uint64_t)m->cfg.sliding_window * m->row_bytes;
    out->compressed = (uint64_t)ls->n_comp * m->row_bytes;
    out->index = m->layers[layer].kind == DS4_LAYER_CSA ?
                     (uint64_t)ls->n_comp * m->index_row_bytes : 0;
    out->tail = (uint64_t)ls->tail_floats * sizeof(float);
}

uint64_t ds4_seq_export_bytes(ds4_seq_h s)
{
    uint64_t total = sizeof(ds4_seq_state_header_t);
    for (int i = 0; i < s->model->n_total; i++) {
        ds4_seq_layer_bytes_t b;
        ds4_seq_layer_bytes(s, i, &b);
        total += b.window + b.compressed + b.index + b.tail;
    }
    return total;
}

/* Writes layer `layer`'s groups (window ring, compressed rows, index rows, tail) to p in the
 * wire order; returns the bytes written (ds4_seq_layer_bytes' sum). */
static uint64_t layer_export(ds4_seq_h s, int layer, uint8_t *p)
{
    const ds4_layer_state_t *ls = &s->ls[layer];
    ds4_seq_layer_bytes_t b;
    ds4_seq_layer_bytes(s, layer, &b);
    memcpy(p, ls->ring, b.window);
    p += b.window;
    if (b.compressed > 0)
        memcpy(p, ls->comp, b.compressed);
    p += b.compressed;
    if (b.index > 0)
        memcpy(p, ls->idx, b.index);
    p += b.index;
    if (b.tail > 0)
        memcpy(p, ls->tail, b.tail);
    return b.window + b.compressed + b.index + b.tail;
}

ds4_status_t ds4_seq_export(ds4_seq_h s, void *buf, uint64_t cap, uint64_t *written)
{
    ds4_model_h m = s->model;
    uint64_t need = ds4_seq_export_bytes(s);
    if (cap < need) {
        ds4_log_error("seq export needs %llu bytes, buffer has %llu", (unsigned long long)need,
                      (unsigned long long)cap);
        return DS4_ERR_OUT_OF_RANGE;
    }
    uint8_t *p = buf;
    ds4_seq_state_header_t h = {.magic = DS4_SEQ_STATE_MAGIC,
                                .version = DS4_SEQ_STATE_VERSION,
                                .pos = s->pos,
                                .mtp_pos = s->mtp_pos,
                                .n_layers = (uint32_t)m->n_total,
                                .row_bytes = m->row_bytes,
                                .index_row_bytes = m->index_row_bytes};
    memcpy(p, &h, sizeof(h));
    p += sizeof(h);
    for (int i = 0; i < m->n_total; i++)
        p += layer_export(s, i, p);
    *written = need;
    return DS4_OK;
}

ds4_status_t ds4_seq_export_layer(ds4_seq_h s, int layer, void *buf, uint64_t cap,
                                  uint64_t *written)
{
    if (layer < 0 || layer >= s->model->n_total)
        return DS4_ERR_INVALID_ARG;
    ds4_seq_layer_bytes_t b;
    ds4_seq_layer_bytes(s, layer, &b);
    uint64_t need = b.window + b.compressed + b.index + b.tail;
    if (cap < need)
        return DS4_ERR_OUT_OF_RANGE;
    *written = layer_export(s, layer, buf);
    return DS4_OK;
}

ds4_status_t ds4_seq_import(ds4_model_h m, const void *buf, uint64_t len, ds4_seq_h *out)
{
    const uint8_t *p = buf;
    ds4_seq_state_header_t h;
    if (len < sizeof(h)) {
        ds4_log_error("seq import: %llu bytes, shorter than the header", (unsigned long long)len);
        return DS4_ERR_KV_CORRUPT;
    }
    memcpy(&h, p, sizeof(h));
    if (h.magic != DS4_SEQ_STATE_MAGIC || h.version != DS4_SEQ_STATE_VERSION ||
        h.n_layers != (uint32_t)m->n_total || h.row_bytes != m->row_bytes ||
        h.index_row_bytes != m->index_row_bytes || h.pos < 0 || h.mtp_pos < 0 ||
        h.mtp_pos > h.pos ||
        h.pos > m->cfg.max_position_embeddings) {
        ds4_log_error("seq import: header does not match this model (magic %08x version %u "
                      "layers %u row %u index row %u)",
                      h.magic, h.version, h.n_layers, h.row_bytes, h.index_row_bytes);
        return DS4_ERR_KV_CORRUPT;
    }
    ds4_seq_h s;
    ds4_status_t st = ds4_seq_create(m, &s);
    if (st != DS4_OK)
        return st;
    s->pos = h.pos;
    s->mtp_pos = h.mtp_pos;
    p += sizeof(h);
    uint64_t left = len - sizeof(h);
    for (int i = 0; i < m->n_total; i++) {
        ds4_layer_state_t *ls = &s->ls[i];
        int64_t nc = expected_comp(m, i, h.pos);
        st = ds4__seq_reserve(s, i, nc);
        if (st != DS4_OK)
            goto fail;
        ls->n_comp = nc;
        ds4_seq_layer_bytes_t b;
        ds4_seq_layer_bytes(s, i, &b);
        uint64_t need = b.window + b.compressed + b.index + b.tail;
        if (left < need) {
            ds4_log_error("seq import: layer %d truncated (%llu bytes left, %llu needed)", i,
                          (unsigned long long)left, (unsigned long long)need);
            st = DS4_ERR_KV_CORRUPT;
            goto fail;
        }
        memcpy(ls->ring, p, b.window);
        p += b.window;
        if (b.compressed > 0)
            memcpy(ls->comp, p, b.compressed);
        p += b.compressed;
        if (b.index > 0)
            memcpy(ls->idx, p, b.index);
        p += b.index;
        if (b.tail > 0)
            memcpy(ls->tail, p, b.tail);
        p += b.tail;
        left -= need;
    }
    if (left != 0) {
        ds4_log_error("seq import: %llu trailing bytes", (unsigned long long)left);
        st = DS4_ERR_KV_CORRUPT;
        goto fail;
    }
    *out = s;
    return DS4_OK;
fail:
    ds4_seq_destroy(s);
    return st;
}
