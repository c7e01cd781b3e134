/*
 * ds4/safetensors.h - zero-copy reader of safetensors checkpoints (single file or sharded).
 *
 * Files are mmap'ed read-only; tensor views point into the mapping (valid until the handle is
 * closed). Only the pages a caller touches are read from disk, so opening a 1 TB sharded
 * checkpoint and reading one tensor costs that tensor's bytes. Shards named in an index are
 * opened (header parsed and validated) lazily, on first access of one of their tensors, or all
 * at once with ds4_st_validate_all().
 *
 * Validation is complete and fail closed: header length bound (100 MiB, and inside the file),
 * JSON well-formed, duplicate names, dtype known, shape entries non-negative, byte size ==
 * product(shape) x element size (I8/U8 count bytes: V4's FP4 experts are I8 with two e2m1 codes
 * per byte), data_offsets inside the data section, no two tensors overlapping. Every problem is
 * reported in the ds4_diag_t with the file and tensor name.
 *
 * Thread-safety: lookups may run concurrently after open; lazy shard opening is internally
 * locked.
 */
#ifndef DS4_SAFETENSORS_H
#define DS4_SAFETENSORS_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS4_ST_MAX_DIMS 8

typedef enum ds4_dtype {
    DS4_DTYPE_F32 = 0,
    DS4_DTYPE_F16,
    DS4_DTYPE_BF16,
    DS4_DTYPE_I64,
    DS4_DTYPE_I32,
    DS4_DTYPE_I8,      /* also packed FP4 e2m1 (2 codes per byte, low nibble first) */
    DS4_DTYPE_U8,
    DS4_DTYPE_F8_E4M3,
    DS4_DTYPE_F8_E8M0, /* ue8m0 scales: byte e => 2^(e-127) */
    DS4_DTYPE_COUNT
} ds4_dtype_t;

/* Name as written in safetensors headers ("BF16", "F8_E4M3", ...). */
const char *ds4_dtype_name(ds4_dtype_t dtype);
/* Bytes per element. */
size_t ds4_dtype_size(ds4_dtype_t dtype);
/* Parses a header dtype string; returns -1 for unknown. */
int ds4_dtype_parse(const char *name);

/* A view of one tensor inside a mapped file. */
typedef struct ds4_tensor_view {
    const char *name;               /* owned by the handle */
    ds4_dtype_t dtype;
    int32_t n_dims;
    int64_t shape[DS4_ST_MAX_DIMS];
    int64_t n_elements;
    size_t size_bytes;
    const void *data;               /* into the mmap; never written */
    const char *file;               /* path of the shard holding it, owned by the handle */
} ds4_tensor_view_t;

typedef struct ds4_st *ds4_st_h;

/*
 * Opens `path`: either a .safetensors file, a model.safetensors.index.json (weight_map of
 * tensor name -> shard file relative to the index), or a directory containing one of
 * model.safetensors.index.json / model.safetensors. A single file is validated at open; an index
 * is validated (JSON, shard names, each shard exists) and shards are validated on first use.
 * Shard names must be relative to the index's directory without "." or ".." components.
 * Returns DS4_ERR_NOT_FOUND (path or the directory's files absent), DS4_ERR_IO (unreadable,
 * mmap failed), DS4_ERR_CHECKPOINT (any invalid content: header, JSON, index, missing shard),
 * DS4_ERR_NO_MEMORY; every problem is in diag as "<file>: <problem>". *out set only on success.
 * Tensor data may leave gaps and trailing bytes in a file (allowed by the format) but must be
 * aligned to its element size (every known writer aligns; views are used as typed arrays).
 * The files must not be truncated or rewritten while open (a mapped page past EOF is SIGBUS).
 */
ds4_status_t ds4_st_open(const char *path, ds4_st_h *out, ds4_diag_t *diag);
void ds4_st_close(ds4_st_h st);

/* Number of tensors and the i-th name (index order of the index file or header). */
size_t ds4_st_count(ds4_st_h st);
const char *ds4_st_name(ds4_st_h st, size_t i);

/*
 * Looks up `name`. DS4_ERR_NOT_FOUND (diag: "tensor <name> not found") when absent;
 * DS4_ERR_CHECKPOINT when its shard is invalid (diag names the shard and the problem).
 */
ds4_status_t ds4_st_get(ds4_st_h st, const char *name, ds4_tensor_view_t *out, ds4_diag_t *diag);

/*
 * ds4_st_get plus checks: dtype must equal `dtype`, and shape must equal shape[0..n_dims) (a -1
 * entry matches any size). Errors name the tensor, what was expected and what was found
 * (DS4_ERR_MODEL).
 */
ds4_status_t ds4_st_expect(ds4_st_h st, const char *name, ds4_dtype_t dtype, int32_t n_dims,
                           const int64_t *shape, ds4_tensor_view_t *out, ds4_diag_t *diag);

/* Opens and validates every shard (used by tools and tests; servers stay lazy). */
ds4_status_t ds4_st_validate_all(ds4_st_h st, ds4_diag_t *diag);

/* Bytes of all tensor data across shards (from headers of opened shards; opens them). */
uint64_t ds4_st_total_bytes(ds4_st_h st);

/* Number of shard files (1 for a single file). */
size_t ds4_st_shard_count(ds4_st_h st);

/*
 * Paging hints for a view's bytes (whole pages covering [data, data + size_bytes)):
 *   WILLNEED  start reading it from disk now (before a sequential upload/dequantisation);
 *   DONTNEED  drop it from this process's resident set (e.g. after copying it to the GPU); the
 *             view stays valid and later reads fault the bytes back in from the file.
 * Neighbouring tensors sharing a boundary page are affected the same way (harmless: mappings are
 * read-only). DS4_ERR_INVALID_ARG for an unknown advice, DS4_ERR_IO when madvise fails.
 */
typedef enum ds4_st_advice {
    DS4_ST_WILLNEED = 0,
    DS4_ST_DONTNEED = 1,
} ds4_st_advice_t;

ds4_status_t ds4_st_advise(const ds4_tensor_view_t *view, ds4_st_advice_t advice);

#ifdef __cplusplus
}
#endif
#endif /* DS4_SAFETENSORS_H */
