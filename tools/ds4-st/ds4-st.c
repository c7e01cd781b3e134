/*
 * ds4-st: inspects safetensors checkpoints (a .safetensors file, a model.safetensors.index.json,
 * or a model directory).
 *
 *   ds4-st list PATH             one line per tensor: name, dtype, shape, bytes, shard file
 *   ds4-st validate PATH ...     opens and validates every shard of every PATH, prints a summary
 *   ds4-st show PATH NAME [N]    one tensor's layout and its first N (default 8) values decoded
 *                                (I8 tensors are shown both as int8 and as packed FP4 e2m1)
 *
 * Exit status: 0 ok, 1 invalid checkpoint or tensor not found (every problem printed),
 * 2 usage error.
 */
#include "ds4/numeric.h"
#include "ds4/safetensors.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: ds4-st list PATH\n"
               "       ds4-st validate PATH ...\n"
               "       ds4-st show PATH TENSOR [N]\n"
               "PATH: a .safetensors file, a model.safetensors.index.json or a model directory.\n"
               "exit status: 0 ok, 1 invalid checkpoint or missing tensor, 2 usage error\n");
}

static void print_problems(const ds4_diag_t *d)
{
    for (size_t i = 0; i < d->count; i++)
        fprintf(stderr, "  %s\n", d->items[i]);
    if (d->oom)
        fprintf(stderr, "  (some problems could not be recorded: out of memory)\n");
}

static void format_shape(const ds4_tensor_view_t *v, char *buf, size_t cap)
{
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int32_t i = 0; i < v->n_dims && used < cap; i++)
        used +=
            (size_t)snprintf(buf + used, cap - used, "%s%" PRId64, i > 0 ? "," : "", v->shape[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

static ds4_st_h open_or_report(const char *path)
{
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_st_h st = NULL;
    ds4_status_t s = ds4_st_open(path, &st, &d);
    if (s != DS4_OK) {
        fprintf(stderr, "%s: invalid (%s)\n", path, ds4_status_str(s));
        print_problems(&d);
    }
    ds4_diag_free(&d);
    return st;
}

static int cmd_list(const char *path)
{
    ds4_st_h st = open_or_report(path);
    if (st == NULL)
        return 1;
    int rc = 0;
    ds4_diag_t d;
    ds4_diag_init(&d);
    for (size_t i = 0; i < ds4_st_count(st); i++) {
        ds4_tensor_view_t v;
        const char *name = ds4_st_name(st, i);
        if (ds4_st_get(st, name, &v, &d) != DS4_OK) {
            printf("%-48s (invalid)\n", name);
            rc = 1;
            continue;
        }
        char shape[256];
        format_shape(&v, shape, sizeof(shape));
        printf("%-48s %-8s %-20s %12zu  %s\n", v.name, ds4_dtype_name(v.dtype), shape, v.size_bytes,
               base_name(v.file));
    }
    if (rc != 0) {
        fprintf(stderr, "%s: invalid\n", path);
        print_problems(&d);
    }
    ds4_diag_free(&d);
    ds4_st_close(st);
    return rc;
}

static int cmd_validate(const char *path)
{
    ds4_st_h st = open_or_report(path);
    if (st == NULL)
        return 1;
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_status_t s = ds4_st_validate_all(st, &d);
    int rc = 0;
    if (s != DS4_OK) {
        fprintf(stderr, "%s: invalid (%s)\n", path, ds4_status_str(s));
        print_problems(&d);
        rc = 1;
    } else {
        size_t per_dtype[DS4_DTYPE_COUNT] = {0};
        for (size_t i = 0; i < ds4_st_count(st); i++) {
            ds4_tensor_view_t v;
            if (ds4_st_get(st, ds4_st_name(st, i), &v, &d) == DS4_OK)
                per_dtype[v.dtype]++;
        }
        uint64_t bytes = ds4_st_total_bytes(st);
        printf("%s: valid, %zu tensors in %zu shard(s), %" PRIu64 " bytes (%.2f GiB)\n", path,
               ds4_st_count(st), ds4_st_shard_count(st), bytes,
               (double)bytes / (1024.0 * 1024.0 * 1024.0));
        printf("  dtypes:");
        for (int t = 0; t < DS4_DTYPE_COUNT; t++) {
            if (per_dtype[t] > 0)
                printf(" %s %zu", ds4_dtype_name((ds4_dtype_t)t), per_dtype[t]);
        }
        printf("\n");
    }
    ds4_diag_free(&d);
    ds4_st_close(st);
    return rc;
}

/* Value i of a view as a double (little-endian host assumed, as everywhere in ds4). */
static double value_at(const ds4_tensor_view_t *v, size_t i)
{
    const unsigned char *p = (const unsigned char *)v->data + i * ds4_dtype_size(v->dtype);
    uint16_t u16;
    uint32_t u32;
    int32_t i32;
    int64_t i64;
    switch (v->dtype) {
    case DS4_DTYPE_F32:
        memcpy(&u32, p, 4);
        return ds4_bits_to_f32(u32);
    case DS4_DTYPE_F16:
        memcpy(&u16, p, 2);
        return ds4_f16_to_f32(u16);
    case DS4_DTYPE_BF16:
        memcpy(&u16, p, 2);
        return ds4_bf16_to_f32(u16);
    case DS4_DTYPE_I64:
        memcpy(&i64, p, 8);
        return (double)i64;
    case DS4_DTYPE_I32:
        memcpy(&i32, p, 4);
        return i32;
    case DS4_DTYPE_I8:
        return (int8_t)p[0];
    case DS4_DTYPE_U8:
        return p[0];
    case DS4_DTYPE_F8_E4M3:
        return ds4_e4m3_to_f32(p[0]);
    case DS4_DTYPE_F8_E8M0:
        return ds4_e8m0_to_f32(p[0]);
    case DS4_DTYPE_COUNT:
        break;
    }
    return 0.0;
}

static int cmd_show(const char *path, const char *name, size_t n)
{
    ds4_st_h st = open_or_report(path);
    if (st == NULL)
        return 1;
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_tensor_view_t v;
    ds4_status_t s = ds4_st_get(st, name, &v, &d);
    if (s != DS4_OK) {
        fprintf(stderr, "%s: %s\n", path, ds4_status_str(s));
        print_problems(&d);
        ds4_diag_free(&d);
        ds4_st_close(st);
        return 1;
    }
    char shape[256];
    format_shape(&v, shape, sizeof(shape));
    printf("%s: %s %s, %" PRId64 " elements, %zu bytes, in %s\n", v.name, ds4_dtype_name(v.dtype),
           shape, v.n_elements, v.size_bytes, v.file);
    size_t count = (size_t)v.n_elements < n ? (size_t)v.n_elements : n;
    printf("  first %zu:", count);
    for (size_t i = 0; i < count; i++)
        printf(" %.9g", value_at(&v, i));
    printf("\n");
    if (v.dtype == DS4_DTYPE_I8) {
        /* V4 routed experts: two e2m1 codes per byte, element 2k in the low nibble. */
        size_t codes = 2 * (size_t)v.n_elements < n ? 2 * (size_t)v.n_elements : n;
        printf("  as FP4 e2m1 (unscaled):");
        for (size_t i = 0; i < codes; i++) {
            uint8_t byte = ((const uint8_t *)v.data)[i / 2];
            printf(" %g", ds4_e2m1_to_f32((i % 2 == 0) ? (byte & 0x0f) : (byte >> 4)));
        }
        printf("\n");
    }
    ds4_diag_free(&d);
    ds4_st_close(st);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "list") == 0)
        return cmd_list(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "validate") == 0) {
        int rc = 0;
        for (int i = 2; i < argc; i++) {
            if (cmd_validate(argv[i]) != 0)
                rc = 1;
        }
        return rc;
    }
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "show") == 0) {
        size_t n = 8;
        if (argc == 5) {
            char *end = NULL;
            unsigned long long v = strtoull(argv[4], &end, 10);
            if (end == argv[4] || *end != '\0' || v > 1000000) {
                fprintf(stderr, "ds4-st: N must be an integer in [0, 1000000]\n");
                return 2;
            }
            n = (size_t)v;
        }
        return cmd_show(argv[2], argv[3], n);
    }
    usage(stderr);
    return 2;
}
