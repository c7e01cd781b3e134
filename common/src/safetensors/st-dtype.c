#include "ds4/safetensors.h"

#include <string.h>

/* Indexed by ds4_dtype_t; names are the strings the safetensors library writes. */
static const struct {
    const char *name;
    size_t size;
} k_dtypes[DS4_DTYPE_COUNT] = {
    [DS4_DTYPE_F32] = {"F32", 4},         [DS4_DTYPE_F16] = {"F16", 2},
    [DS4_DTYPE_BF16] = {"BF16", 2},       [DS4_DTYPE_I64] = {"I64", 8},
    [DS4_DTYPE_I32] = {"I32", 4},         [DS4_DTYPE_I8] = {"I8", 1},
    [DS4_DTYPE_U8] = {"U8", 1},           [DS4_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [DS4_DTYPE_F8_E8M0] = {"F8_E8M0", 1},
};

const char *ds4_dtype_name(ds4_dtype_t dtype)
{
    if ((int)dtype < 0 || dtype >= DS4_DTYPE_COUNT)
        return "unknown";
    return k_dtypes[dtype].name;
}

size_t ds4_dtype_size(ds4_dtype_t dtype)
{
    if ((int)dtype < 0 || dtype >= DS4_DTYPE_COUNT)
        return 0;
    return k_dtypes[dtype].size;
}

int ds4_dtype_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < DS4_DTYPE_COUNT; i++) {
        if (strcmp(name, k_dtypes[i].name) == 0)
            return i;
    }
    return -1;
}
