#include "st-internal.h"

#include "ds4/alloc.h"
#include "ds4/json.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Problem collector: reports at most DS4__ST_MAX_PROBLEMS entries, counts the rest. */
typedef struct problems {
    ds4_diag_t *diag;
    const char *path;
    size_t count;
} problems_t;

__attribute__((format(printf, 2, 3))) static void problem(problems_t *p, const char *fmt, ...)
{
    p->count++;
    if (p->count > DS4__ST_MAX_PROBLEMS)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ds4_diag_addf(p->diag, p->path, "%s", msg);
}

void ds4__st_tensors_free(ds4__st_tensor_t *tensors, size_t n)
{
    if (tensors == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        ds4_free(tensors[i].name);
    ds4_free(tensors);
}

/* Reads a non-negative JSON integer (jansson integers are signed 64-bit). */
static bool get_nonneg(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

static void check_metadata(problems_t *p, const json_t *meta)
{
    if (!json_is_object(meta)) {
        problem(p, "__metadata__ has type %s, expected an object of strings",
                ds4_json_type_name(meta));
        return;
    }
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach((json_t *)meta, key, key_len, v)
    {
        if (key_len != strlen(key))
            problem(p, "__metadata__ has a key with a NUL byte");
        else if (!json_is_string(v))
            problem(p, "__metadata__.%s has type %s, expected a string", key,
                    ds4_json_type_name(v));
    }
}

/*
 * Parses one tensor entry into *t (name not set). Reports every problem of the entry; returns
 * true when the entry is valid.
 */
static bool parse_tensor(problems_t *p, const char *name, const json_t *entry, uint64_t data_start,
                         uint64_t data_bytes, ds4__st_tensor_t *t)
{
    size_t before = p->count;
    if (!json_is_object(entry)) {
        problem(p, "tensor '%s': entry has type %s, expected an object", name,
                ds4_json_type_name(entry));
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)entry, key, v)
    {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            problem(p, "tensor '%s': unknown key '%s'", name, key);
    }

    /* dtype */
    const json_t *jdtype = json_object_get(entry, "dtype");
    int dtype = -1;
    if (jdtype == NULL) {
        problem(p, "tensor '%s': missing dtype", name);
    } else if (!json_is_string(jdtype)) {
        problem(p, "tensor '%s': dtype has type %s, expected a string", name,
                ds4_json_type_name(jdtype));
    } else if (strlen(json_string_value(jdtype)) != json_string_length(jdtype)) {
        problem(p, "tensor '%s': dtype contains a NUL byte", name);
    } else {
        dtype = ds4_dtype_parse(json_string_value(jdtype));
        if (dtype < 0)
            problem(p,
                    "tensor '%s': unknown dtype '%s' (supported: BF16 F16 F32 I64 I32 I8 U8 "
                    "F8_E4M3 F8_E8M0)",
                    name, json_string_value(jdtype));
    }

    /* shape: product computed with overflow checks; stays valid only if every entry is. */
    const json_t *jshape = json_object_get(entry, "shape");
    bool shape_ok = false;
    uint64_t n_elements = 1;
    if (jshape == NULL) {
        problem(p, "tensor '%s': missing shape", name);
    } else if (!json_is_array(jshape)) {
        problem(p, "tensor '%s': shape has type %s, expected an array", name,
                ds4_json_type_name(jshape));
    } else if (json_array_size(jshape) > DS4_ST_MAX_DIMS) {
        problem(p, "tensor '%s': shape has %zu dimensions, at most %d are supported", name,
                json_array_size(jshape), DS4_ST_MAX_DIMS);
    } else {
        shape_ok = true;
        bool overflow = false;
        t->n_dims = (int32_t)json_array_size(jshape);
        for (int32_t d = 0; d < t->n_dims; d++) {
            const json_t *je = json_array_get(jshape, (size_t)d);
            int64_t e;
            if (!get_nonneg(je, &e)) {
                problem(p, "tensor '%s': shape[%d] %s %s, expected a non-negative integer", name,
                        (int)d, json_is_integer(je) ? "is" : "has type",
                        json_is_integer(je) ? "negative" : ds4_json_type_name(je));
                shape_ok = false;
                continue;
            }
            t->shape[d] = e;
            if (!overflow && __builtin_mul_overflow(n_elements, (uint64_t)e, &n_elements))
                overflow = true;
        }
        if (shape_ok && (overflow || n_elements > (uint64_t)INT64_MAX)) {
            problem(p, "tensor '%s': shape element count overflows 64 bits", name);
            shape_ok = false;
        }
    }

    /* data_offsets */
    const json_t *joff = json_object_get(entry, "data_offsets");
    bool off_ok = false;
    int64_t begin = 0, end = 0;
    if (joff == NULL) {
        problem(p, "tensor '%s': missing data_offsets", name);
    } else if (!json_is_array(joff) || json_array_size(joff) != 2) {
        problem(p, "tensor '%s': data_offsets must be an array [begin, end]", name);
    } else if (!get_nonneg(json_array_get(joff, 0), &begin) ||
               !get_nonneg(json_array_get(joff, 1), &end)) {
        problem(p, "tensor '%s': data_offsets must be non-negative integers", name);
    } else if (begin > end) {
        problem(p, "tensor '%s': data_offsets begin %" PRId64 " > end %" PRId64, name, begin, end);
    } else if ((uint64_t)end > data_bytes) {
        problem(p,
                "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 ") past the end of the data "
                "section (%" PRIu64 " bytes; file truncated?)",
                name, begin, end, data_bytes);
    } else {
        off_ok = true;
    }

    if (dtype >= 0 && shape_ok && off_ok) {
        uint64_t elsize = ds4_dtype_size((ds4_dtype_t)dtype);
        uint64_t want;
        if (__builtin_mul_overflow(n_elements, elsize, &want)) {
            problem(p, "tensor '%s': byte size of shape overflows 64 bits", name);
        } else if (want != (uint64_t)(end - begin)) {
            problem(p,
                    "tensor '%s': size mismatch: data_offsets span %" PRIu64 " bytes but shape "
                    "x %s (%" PRIu64 " bytes/element) needs %" PRIu64,
                    name, (uint64_t)(end - begin), ds4_dtype_name((ds4_dtype_t)dtype), elsize,
                    want);
        } else if ((data_start + (uint64_t)begin) % elsize != 0) {
            /* Writers (the safetensors library, DeepSeek's) align every tensor; views are cast
             * to typed pointers by the engine, so a misaligned tensor is refused. */
            problem(p,
                    "tensor '%s': data at file offset %" PRIu64 " is not aligned to %" PRIu64
                    " bytes (%s)",
                    name, data_start + (uint64_t)begin, elsize, ds4_dtype_name((ds4_dtype_t)dtype));
        }
    }
    if (p->count != before)
        return false;
    t->dtype = (ds4_dtype_t)dtype;
    t->n_elements = (int64_t)n_elements;
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    return true;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const ds4__st_tensor_t *x = *(const ds4__st_tensor_t *const *)a;
    const ds4__st_tensor_t *y = *(const ds4__st_tensor_t *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Reports every pair of non-empty tensors whose byte ranges intersect (the first in each run). */
static ds4_status_t check_overlaps(problems_t *p, ds4__st_tensor_t *tensors, size_t n)
{
    if (n < 2)
        return DS4_OK;
    ds4__st_tensor_t **order = ds4_malloc_array(n, sizeof(*order));
    if (order == NULL)
        return DS4_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++)
        order[i] = &tensors[i];
    qsort(order, n, sizeof(*order), cmp_by_offset);
    const ds4__st_tensor_t *reach = NULL; /* the tensor reaching furthest so far */
    for (size_t i = 0; i < n; i++) {
        const ds4__st_tensor_t *t = order[i];
        if (t->begin == t->end)
            continue; /* empty tensors occupy no bytes */
        if (reach != NULL && t->begin < reach->end)
            problem(p,
                    "tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64
                    ") overlap",
                    reach->name, reach->begin, reach->end, t->name, t->begin, t->end);
        if (reach == NULL || t->end > reach->end)
            reach = t;
    }
    ds4_free(order);
    return DS4_OK;
}

ds4_status_t ds4__st_header_parse(const char *json, size_t len, const char *path,
                                  uint64_t data_start, uint64_t data_bytes,
                                  ds4__st_tensor_t **tensors, size_t *n_tensors, ds4_diag_t *diag)
{
    problems_t p = {.diag = diag, .path = path, .count = 0};
    ds4_status_t st = DS4_ERR_CHECKPOINT;
    json_t *root = NULL;
    ds4__st_tensor_t *ts = NULL;
    size_t n = 0;

    if (len == 0 || json[0] != '{') {
        /* The format requires the header to start with '{' (then JSON, then space padding). */
        problem(&p, "header does not start with '{' (not a safetensors file?)");
        goto fail;
    }
    ds4_diag_t jd;
    ds4_diag_init(&jd);
    st = ds4_json_load_buf(json, len, "header", &root, &jd);
    for (size_t i = 0; i < jd.count; i++)
        problem(&p, "%s", jd.items[i]);
    ds4_diag_free(&jd);
    if (st != DS4_OK) {
        st = DS4_ERR_CHECKPOINT;
        goto fail;
    }
    st = DS4_ERR_CHECKPOINT;
    if (!json_is_object(root)) {
        problem(&p, "header has type %s, expected an object", ds4_json_type_name(root));
        goto fail;
    }

    size_t cap = json_object_size(root);
    ts = ds4_calloc(cap > 0 ? cap : 1, sizeof(*ts));
    if (ts == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto fail;
    }
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach(root, key, key_len, v)
    {
        if (key_len != strlen(key)) {
            problem(&p, "header has a tensor name with a NUL byte");
            continue;
        }
        if (strcmp(key, "__metadata__") == 0) {
            check_metadata(&p, v);
            continue;
        }
        if (key_len == 0) {
            problem(&p, "header has a tensor with an empty name");
            continue;
        }
        ds4__st_tensor_t t;
        memset(&t, 0, sizeof(t));
        if (!parse_tensor(&p, key, v, data_start, data_bytes, &t))
            continue;
        t.name = ds4_strdup(key);
        if (t.name == NULL) {
            st = DS4_ERR_NO_MEMORY;
            goto fail;
        }
        ts[n++] = t;
    }
    st = check_overlaps(&p, ts, n);
    if (st != DS4_OK)
        goto fail;
    if (p.count > 0) {
        if (p.count > DS4__ST_MAX_PROBLEMS)
            ds4_diag_addf(diag, path, "... and %zu more problems", p.count - DS4__ST_MAX_PROBLEMS);
        st = DS4_ERR_CHECKPOINT;
        goto fail;
    }
    json_decref(root);
    *tensors = ts;
    *n_tensors = n;
    return DS4_OK;

fail:
    ds4__st_tensors_free(ts, n);
    json_decref(root);
    return st;
}
