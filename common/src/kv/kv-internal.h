/* Internal helpers of the kv module (not installed). */
#ifndef DS4_KV_INTERNAL_H
#define DS4_KV_INTERNAL_H

#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ds4 wire formats are little-endian; a big-endian port needs byte swaps here"
#endif

static inline uint32_t ds4__rd_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void ds4__wr_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

/* FNV-1a 64-bit, continued from `h` (start with DS4__FNV_OFFSET). */
#define DS4__FNV_OFFSET 0xcbf29ce484222325ull
static inline uint64_t ds4__fnv1a(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#endif /* DS4_KV_INTERNAL_H */
