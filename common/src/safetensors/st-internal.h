/*
 * st-internal.h - shared state of the safetensors reader (not installed, not for other modules).
 *
 *   st-dtype.c   dtype names and sizes
 *   st-map.c     string -> index hash table (names are borrowed, never copied)
 *   st-header.c  parsing + validation of one safetensors JSON header (pure, no I/O)
 *   st-file.c    opening, mapping and closing one .safetensors file
 *   st-index.c   parsing + validation of model.safetensors.index.json
 *   st.c         the public ds4_st_* API (handle, lazy shards, lookups)
 */
#ifndef DS4_ST_INTERNAL_H
#define DS4_ST_INTERNAL_H

#include "ds4/safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bound of a safetensors JSON header (as in the reference implementation). */
#define DS4__ST_MAX_HEADER_BYTES ((uint64_t)100 << 20)
/* Upper bound of a model.safetensors.index.json (V4-Pro's is a few MB). */
#define DS4__ST_MAX_INDEX_BYTES ((size_t)256 << 20)
/* A broken header stops being reported after this many problems (a summary line follows). */
#define DS4__ST_MAX_PROBLEMS 64

/* ---- name -> index hash table (open addressing, linear probing) ---- */

typedef struct ds4__st_slot {
    const char *key; /* borrowed; NULL = empty slot */
    size_t value;
} ds4__st_slot_t;

typedef struct ds4__st_map {
    ds4__st_slot_t *slots;
    size_t cap; /* power of two, >= 2 x entries */
} ds4__st_map_t;

/* Sizes the table for up to n entries. DS4_ERR_NO_MEMORY on failure. */
ds4_status_t ds4__st_map_init(ds4__st_map_t *map, size_t n);
void ds4__st_map_free(ds4__st_map_t *map);
/* Inserts key -> value; false when key is already present (the table is unchanged). */
bool ds4__st_map_put(ds4__st_map_t *map, const char *key, size_t value);
/* True and *value set when key is present. Safe to call concurrently (read only). */
bool ds4__st_map_get(const ds4__st_map_t *map, const char *key, size_t *value);

/* ---- one tensor of a header ---- */

typedef struct ds4__st_tensor {
    char *name; /* owned */
    ds4_dtype_t dtype;
    int32_t n_dims;
    int64_t shape[DS4_ST_MAX_DIMS];
    int64_t n_elements;
    uint64_t begin; /* byte offsets relative to the start of the data section, begin <= end */
    uint64_t end;
} ds4__st_tensor_t;

/*
 * Parses and validates the JSON header `json[0..len)` of a file whose data section (the bytes
 * after the header) is `data_bytes` long and starts at file offset `data_start` (used for the
 * alignment check). Every problem goes to diag under `path`. On success (DS4_OK) *tensors is a
 * ds4_malloc'ed array of *n_tensors entries in header order; free with ds4__st_tensors_free.
 * Returns DS4_ERR_CHECKPOINT for any invalid content, DS4_ERR_NO_MEMORY.
 */
ds4_status_t ds4__st_header_parse(const char *json, size_t len, const char *path,
                                  uint64_t data_start, uint64_t data_bytes,
                                  ds4__st_tensor_t **tensors, size_t *n_tensors, ds4_diag_t *diag);
void ds4__st_tensors_free(ds4__st_tensor_t *tensors, size_t n);

/* ---- one mapped .safetensors file ---- */

typedef struct ds4__st_file {
    char *path;          /* owned */
    const uint8_t *map;  /* whole file, PROT_READ, MAP_SHARED */
    size_t map_bytes;    /* file size */
    uint64_t data_start; /* 8 + header length */
    ds4__st_tensor_t *tensors;
    size_t n_tensors;
    ds4__st_map_t by_name; /* name -> index into tensors */
    uint64_t tensor_bytes; /* sum of all tensors' sizes */
} ds4__st_file_t;

/*
 * Opens, maps and validates one safetensors file. DS4_ERR_IO when it cannot be opened or mapped,
 * DS4_ERR_CHECKPOINT when its content is invalid, DS4_ERR_NO_MEMORY. *out set only on success.
 */
ds4_status_t ds4__st_file_open(const char *path, ds4__st_file_t **out, ds4_diag_t *diag);
void ds4__st_file_close(ds4__st_file_t *file);
/* Fills a view of tensor t of file (name and file point into file). */
void ds4__st_file_view(const ds4__st_file_t *file, const ds4__st_tensor_t *t,
                       ds4_tensor_view_t *out);

/* ---- model.safetensors.index.json ---- */

typedef struct ds4__st_index {
    char **names;       /* tensor names in weight_map order, owned */
    uint32_t *shard_of; /* names[i] lives in shards[shard_of[i]] */
    size_t n_names;
    char **shards; /* full paths (index directory + relative name), first-seen order, owned */
    size_t n_shards;
} ds4__st_index_t;

/*
 * Loads and validates an index: JSON object with a "weight_map" object of tensor name -> shard
 * file (relative to the index's directory, no absolute paths, no ".." components) and an optional
 * "metadata" object. Each shard must exist as a regular file. DS4_ERR_IO when the index cannot be
 * read, DS4_ERR_CHECKPOINT for invalid content or missing shards.
 */
ds4_status_t ds4__st_index_load(const char *path, ds4__st_index_t *out, ds4_diag_t *diag);
void ds4__st_index_free(ds4__st_index_t *index);

#endif /* DS4_ST_INTERNAL_H */
