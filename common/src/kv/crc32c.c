#include "ds4/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#include <nmmintrin.h>
#endif

#define CRC32C_POLY 0x82F63B78u
/* Bytes per stream in the interleaved hardware loop: LONG for big buffers, SHORT after. */
#define CRC32C_LONG 8192
#define CRC32C_SHORT 256

static uint32_t crc_table[8][256];       /* slicing-by-8 tables of the software path */
static uint32_t crc_shift_long[4][256];  /* raw state -> state after CRC32C_LONG zero bytes */
static uint32_t crc_shift_short[4][256]; /* the same for CRC32C_SHORT zero bytes */
static bool crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* Raw register update over `n` zero bytes (no inversion), bytewise; used only to build tables. */
static uint32_t crc_zeros_slow(uint32_t state, size_t n)
{
    for (size_t i = 0; i < n; i++)
        state = crc_table[0][state & 0xffu] ^ (state >> 8);
    return state;
}

/* The zero-append operator is linear in the state: tabulate it per state byte. */
static void crc_build_shift(uint32_t table[4][256], size_t n)
{
    uint32_t basis[32];
    for (int b = 0; b < 32; b++)
        basis[b] = crc_zeros_slow(1u << b, n);
    for (int k = 0; k < 4; k++) {
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t out = 0;
            for (int b = 0; b < 8; b++) {
                if ((v >> b) & 1u)
                    out ^= basis[8 * k + b];
            }
            table[k][v] = out;
        }
    }
}

static inline uint32_t crc_shift(const uint32_t table[4][256], uint32_t state)
{
    return table[0][state & 0xffu] ^ table[1][(state >> 8) & 0xffu] ^
           table[2][(state >> 16) & 0xffu] ^ table[3][state >> 24];
}

static void crc_init(void)
{
    for (uint32_t v = 0; v < 256; v++) {
        uint32_t c = v;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) != 0 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc_table[0][v] = c;
    }
    for (uint32_t v = 0; v < 256; v++) {
        uint32_t c = crc_table[0][v];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xffu] ^ (c >> 8);
            crc_table[t][v] = c;
        }
    }
    crc_build_shift(crc_shift_long, CRC32C_LONG);
    crc_build_shift(crc_shift_short, CRC32C_SHORT);
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

static uint32_t crc_sw_raw(uint32_t state, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= state; /* little-endian: the state covers the first four bytes */
        state = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
                crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
                crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
                crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len-- > 0)
        state = crc_table[0][(state ^ *p++) & 0xffu] ^ (state >> 8);
    return state;
}

uint32_t ds4_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_sw_raw(~crc, buf, len);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw_streams(uint32_t state,
                                                                   const unsigned char **pp,
                                                                   size_t *plen, size_t chunk,
                                                                   const uint32_t shift[4][256])
{
    const unsigned char *p = *pp;
    size_t len = *plen;
    uint64_t c0 = state;
    while (len >= 3 * chunk) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + chunk;
        do {
            uint64_t a, b, c;
            memcpy(&a, p, 8);
            memcpy(&b, p + chunk, 8);
            memcpy(&c, p + 2 * chunk, 8);
            c0 = _mm_crc32_u64(c0, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, c);
            p += 8;
        } while (p < end);
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * chunk;
        len -= 3 * chunk;
    }
    *pp = p;
    *plen = len;
    return (uint32_t)c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_raw(uint32_t state,
                                                               const unsigned char *p,
                                                               size_t len)
{
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        state = _mm_crc32_u8(state, *p++);
        len--;
    }
    state = crc_hw_streams(state, &p, &len, CRC32C_LONG, crc_shift_long);
    state = crc_hw_streams(state, &p, &len, CRC32C_SHORT, crc_shift_short);
    uint64_t c = state;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    state = (uint32_t)c;
    while (len-- > 0)
        state = _mm_crc32_u8(state, *p++);
    return state;
}
#endif

#if defined(__x86_64__)
/* Three interleaved CRC streams over chunk-sized thirds, each loaded word also stored to the
 * destination (movnti: no read-for-ownership of the destination lines). */
__attribute__((target("sse4.2"))) static uint32_t crc_hw_copy_streams(
    uint32_t state, unsigned char **dd, const unsigned char **pp, size_t *plen, size_t chunk,
    const uint32_t shift[4][256])
{
    const unsigned char *p = *pp;
    unsigned char *d = *dd;
    size_t len = *plen;
    uint64_t c0 = state;
    while (len >= 3 * chunk) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + chunk;
        do {
            uint64_t a, b, c;
            memcpy(&a, p, 8);
            memcpy(&b, p + chunk, 8);
            memcpy(&c, p + 2 * chunk, 8);
            _mm_stream_si64((long long *)(void *)d, (long long)a);
            _mm_stream_si64((long long *)(void *)(d + chunk), (long long)b);
            _mm_stream_si64((long long *)(void *)(d + 2 * chunk), (long long)c);
            c0 = _mm_crc32_u64(c0, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, c);
            p += 8;
            d += 8;
        } while (p < end);
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * chunk;
        d += 2 * chunk;
        len -= 3 * chunk;
    }
    *pp = p;
    *dd = d;
    *plen = len;
    return (uint32_t)c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_copy_raw(uint32_t state,
                                                                    unsigned char *d,
                                                                    const unsigned char *p,
                                                                    size_t len)
{
    /* align the destination for the 8-byte non-temporal stores */
    size_t head = (8u - ((uintptr_t)d & 7u)) & 7u;
    head = head < len ? head : len;
    memcpy(d, p, head);
    state = crc_hw_raw(state, p, head);
    d += head;
    p += head;
    len -= head;
    state = crc_hw_copy_streams(state, &d, &p, &len, CRC32C_LONG, crc_shift_long);
    _mm_sfence();
    memcpy(d, p, len);
    return crc_hw_raw(state, p, len);
}
#endif

uint32_t ds4_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len)
{
    pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
    if (crc_hw)
        return ~crc_hw_copy_raw(~crc, dst, src, len);
#endif
    memcpy(dst, src, len);
    return ~crc_sw_raw(~crc, src, len);
}

uint32_t ds4_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
    if (crc_hw)
        return ~crc_hw_raw(~crc, buf, len);
#endif
    return ~crc_sw_raw(~crc, buf, len);
}

bool ds4_crc32c_is_hw(void)
{
    pthread_once(&crc_once, crc_init);
    return crc_hw;
}
