#include "st-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

typedef struct st_shard {
    char *path;                     /* owned */
    _Atomic(ds4__st_file_t *) file; /* set once (release) when opened and valid */
    bool failed;                    /* under ds4_st.lock: the open failed... */
    ds4_status_t fail_status;       /* ...with this status */
    ds4_diag_t fail_diag;           /* ...and these problems (replayed to later callers) */
} st_shard_t;

struct ds4_st {
    st_shard_t *shards;
    size_t n_shards;
    /* Tensor names in index/header order. Owned when from an index, borrowed from the single
     * file's tensors otherwise. */
    char **names;
    uint32_t *shard_of;
    size_t n_names;
    bool owns_names;
    ds4__st_map_t by_name; /* name -> index into names */
    pthread_mutex_t lock;  /* serialises shard opening */
};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

void ds4_st_close(ds4_st_h st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n_shards; i++) {
        ds4__st_file_close(atomic_load_explicit(&st->shards[i].file, memory_order_acquire));
        ds4_diag_free(&st->shards[i].fail_diag);
        ds4_free(st->shards[i].path);
    }
    if (st->owns_names) {
        for (size_t i = 0; i < st->n_names; i++)
            ds4_free(st->names[i]);
    }
    ds4_free(st->names);
    ds4_free(st->shard_of);
    ds4_free(st->shards);
    ds4__st_map_free(&st->by_name);
    pthread_mutex_destroy(&st->lock);
    ds4_free(st);
}

static ds4_status_t build_name_map(ds4_st_h st)
{
    ds4_status_t s = ds4__st_map_init(&st->by_name, st->n_names);
    if (s != DS4_OK)
        return s;
    for (size_t i = 0; i < st->n_names; i++) {
        bool fresh = ds4__st_map_put(&st->by_name, st->names[i], i);
        DS4_ASSERT(fresh); /* both sources reject duplicate names */
    }
    return DS4_OK;
}

static ds4_status_t open_single(ds4_st_h st, const char *path, ds4_diag_t *diag)
{
    ds4__st_file_t *f = NULL;
    ds4_status_t s = ds4__st_file_open(path, &f, diag);
    if (s != DS4_OK)
        return s;
    st->shards = ds4_calloc(1, sizeof(*st->shards));
    st->names = ds4_calloc(f->n_tensors > 0 ? f->n_tensors : 1, sizeof(*st->names));
    st->shard_of = ds4_calloc(f->n_tensors > 0 ? f->n_tensors : 1, sizeof(*st->shard_of));
    if (st->shards == NULL || st->names == NULL || st->shard_of == NULL) {
        ds4__st_file_close(f);
        return DS4_ERR_NO_MEMORY;
    }
    st->n_shards = 1;
    st->shards[0].path = ds4_strdup(path);
    atomic_store_explicit(&st->shards[0].file, f, memory_order_release);
    if (st->shards[0].path == NULL)
        return DS4_ERR_NO_MEMORY;
    for (size_t i = 0; i < f->n_tensors; i++)
        st->names[i] = f->tensors[i].name;
    st->n_names = f->n_tensors;
    st->owns_names = false;
    return build_name_map(st);
}

static ds4_status_t open_index(ds4_st_h st, const char *path, ds4_diag_t *diag)
{
    ds4__st_index_t ix;
    ds4_status_t s = ds4__st_index_load(path, &ix, diag);
    if (s != DS4_OK)
        return s;
    st->shards = ds4_calloc(ix.n_shards, sizeof(*st->shards));
    if (st->shards == NULL) {
        ds4__st_index_free(&ix);
        return DS4_ERR_NO_MEMORY;
    }
    /* Move the index's arrays into the handle. */
    st->n_shards = ix.n_shards;
    for (size_t i = 0; i < ix.n_shards; i++)
        st->shards[i].path = ix.shards[i];
    ds4_free(ix.shards);
    st->names = ix.names;
    st->shard_of = ix.shard_of;
    st->n_names = ix.n_names;
    st->owns_names = true;
    return build_name_map(st);
}

ds4_status_t ds4_st_open(const char *path, ds4_st_h *out, ds4_diag_t *diag)
{
    if (path == NULL || out == NULL || diag == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_st_h st = ds4_calloc(1, sizeof(*st));
    if (st == NULL)
        return DS4_ERR_NO_MEMORY;
    pthread_mutex_init(&st->lock, NULL);

    ds4_status_t s;
    char *joined = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        ds4_diag_addf(diag, path, "cannot open checkpoint: %s", strerror(errno));
        s = errno == ENOENT ? DS4_ERR_NOT_FOUND : DS4_ERR_IO;
    } else if (S_ISDIR(sb.st_mode)) {
        size_t len = strlen(path) + 64;
        joined = ds4_malloc(len);
        if (joined == NULL) {
            s = DS4_ERR_NO_MEMORY;
            goto done;
        }
        const char *sep = ends_with(path, "/") ? "" : "/";
        snprintf(joined, len, "%s%smodel.safetensors.index.json", path, sep);
        if (is_file(joined)) {
            s = open_index(st, joined, diag);
        } else {
            snprintf(joined, len, "%s%smodel.safetensors", path, sep);
            if (is_file(joined)) {
                s = open_single(st, joined, diag);
            } else {
                ds4_diag_addf(diag, path,
                              "directory has neither model.safetensors.index.json nor "
                              "model.safetensors");
                s = DS4_ERR_NOT_FOUND;
            }
        }
    } else if (ends_with(path, ".json")) {
        s = open_index(st, path, diag);
    } else {
        s = open_single(st, path, diag);
    }
done:
    ds4_free(joined);
    if (s != DS4_OK) {
        ds4_st_close(st);
        return s;
    }
    *out = st;
    return DS4_OK;
}

size_t ds4_st_count(ds4_st_h st)
{
    DS4_ASSERT(st != NULL);
    return st->n_names;
}

const char *ds4_st_name(ds4_st_h st, size_t i)
{
    DS4_ASSERT(st != NULL);
    return i < st->n_names ? st->names[i] : NULL;
}

size_t ds4_st_shard_count(ds4_st_h st)
{
    DS4_ASSERT(st != NULL);
    return st->n_shards;
}

/* Returns the opened shard, opening it on first use; failures are remembered and replayed. */
static ds4_status_t shard_get(ds4_st_h st, size_t si, const ds4__st_file_t **out, ds4_diag_t *diag)
{
    st_shard_t *sh = &st->shards[si];
    ds4__st_file_t *f = atomic_load_explicit(&sh->file, memory_order_acquire);
    if (f != NULL) {
        *out = f;
        return DS4_OK;
    }
    ds4_status_t s = DS4_OK;
    pthread_mutex_lock(&st->lock);
    f = atomic_load_explicit(&sh->file, memory_order_relaxed);
    if (f == NULL && !sh->failed) {
        ds4_diag_t d;
        ds4_diag_init(&d);
        s = ds4__st_file_open(sh->path, &f, &d);
        if (s == DS4_OK) {
            atomic_store_explicit(&sh->file, f, memory_order_release);
        } else {
            ds4_diag_log(&d, "safetensors shard");
            sh->failed = true;
            /* An unreadable or invalid shard makes the checkpoint invalid. */
            sh->fail_status = s == DS4_ERR_NO_MEMORY ? s : DS4_ERR_CHECKPOINT;
            sh->fail_diag = d;
        }
    }
    if (f == NULL) {
        for (size_t i = 0; i < sh->fail_diag.count; i++)
            ds4_diag_addf(diag, NULL, "%s", sh->fail_diag.items[i]);
        s = sh->fail_status;
    }
    pthread_mutex_unlock(&st->lock);
    if (s == DS4_OK)
        *out = f;
    return s;
}

/* Resolves entry i of the name list to its tensor in its (opened) shard. */
static ds4_status_t resolve(ds4_st_h st, size_t i, ds4_tensor_view_t *out, ds4_diag_t *diag)
{
    const ds4__st_file_t *f = NULL;
    ds4_status_t s = shard_get(st, st->shard_of[i], &f, diag);
    if (s != DS4_OK)
        return s;
    size_t ti;
    if (!ds4__st_map_get(&f->by_name, st->names[i], &ti)) {
        ds4_diag_addf(diag, f->path, "tensor %s is listed in the index but not in this shard",
                      st->names[i]);
        return DS4_ERR_CHECKPOINT;
    }
    ds4__st_file_view(f, &f->tensors[ti], out);
    out->name = st->names[i];
    return DS4_OK;
}

ds4_status_t ds4_st_get(ds4_st_h st, const char *name, ds4_tensor_view_t *out, ds4_diag_t *diag)
{
    if (st == NULL || name == NULL || out == NULL || diag == NULL)
        return DS4_ERR_INVALID_ARG;
    size_t i;
    if (!ds4__st_map_get(&st->by_name, name, &i)) {
        ds4_diag_addf(diag, NULL, "tensor %s not found", name);
        return DS4_ERR_NOT_FOUND;
    }
    return resolve(st, i, out, diag);
}

static void format_shape(char *buf, size_t cap, int32_t n_dims, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, cap, "[");
    for (int32_t d = 0; d < n_dims && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%" PRId64, d > 0 ? ", " : "", shape[d]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

ds4_status_t ds4_st_expect(ds4_st_h st, const char *name, ds4_dtype_t dtype, int32_t n_dims,
                           const int64_t *shape, ds4_tensor_view_t *out, ds4_diag_t *diag)
{
    if (n_dims < 0 || n_dims > DS4_ST_MAX_DIMS || (n_dims > 0 && shape == NULL))
        return DS4_ERR_INVALID_ARG;
    ds4_tensor_view_t v;
    ds4_status_t s = ds4_st_get(st, name, &v, diag);
    if (s != DS4_OK)
        return s;
    bool shape_ok = v.n_dims == n_dims;
    for (int32_t d = 0; shape_ok && d < n_dims; d++)
        shape_ok = shape[d] == -1 || shape[d] == v.shape[d];
    if (v.dtype == dtype && shape_ok) {
        *out = v;
        return DS4_OK;
    }
    char want[160], got[160];
    format_shape(want, sizeof(want), n_dims, shape);
    format_shape(got, sizeof(got), v.n_dims, v.shape);
    ds4_diag_addf(diag, name, "expected %s %s (-1 = any), found %s %s in %s", ds4_dtype_name(dtype),
                  want, ds4_dtype_name(v.dtype), got, v.file);
    return DS4_ERR_MODEL;
}

ds4_status_t ds4_st_validate_all(ds4_st_h st, ds4_diag_t *diag)
{
    if (st == NULL || diag == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_status_t result = DS4_OK;
    for (size_t si = 0; si < st->n_shards; si++) {
        const ds4__st_file_t *f = NULL;
        ds4_status_t s = shard_get(st, si, &f, diag);
        if (s != DS4_OK && result == DS4_OK)
            result = s;
    }
    size_t missing = 0;
    for (size_t i = 0; i < st->n_names; i++) {
        ds4__st_file_t *f =
            atomic_load_explicit(&st->shards[st->shard_of[i]].file, memory_order_acquire);
        size_t ti;
        if (f != NULL && !ds4__st_map_get(&f->by_name, st->names[i], &ti)) {
            if (missing++ < DS4__ST_MAX_PROBLEMS)
                ds4_diag_addf(diag, f->path,
                              "tensor %s is listed in the index but not in this shard",
                              st->names[i]);
            if (result == DS4_OK)
                result = DS4_ERR_CHECKPOINT;
        }
    }
    if (missing > DS4__ST_MAX_PROBLEMS)
        ds4_diag_addf(diag, NULL, "... and %zu more tensors missing from their shards",
                      missing - DS4__ST_MAX_PROBLEMS);
    return result;
}

uint64_t ds4_st_total_bytes(ds4_st_h st)
{
    DS4_ASSERT(st != NULL);
    uint64_t total = 0;
    for (size_t si = 0; si < st->n_shards; si++) {
        const ds4__st_file_t *f = NULL;
        ds4_diag_t d;
        ds4_diag_init(&d);
        if (shard_get(st, si, &f, &d) == DS4_OK)
            total += f->tensor_bytes;
        ds4_diag_free(&d);
    }
    return total;
}
