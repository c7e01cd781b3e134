/* tok-utf8.c - the one UTF-8 classifier (RFC 3629: no overlongs, no surrogates, <= U+10FFFF),
 * used by the encoder's input check and the decoder's lossy conversion. */
#include "tok-internal.h"

#include <stdint.h>
#include <string.h>

ds4__utf8_kind_t ds4__utf8_classify(const unsigned char *s, size_t n, size_t *len)
{
    unsigned char b = s[0];
    if (b < 0x80) {
        *len = 1;
        return DS4__U8_VALID;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else {
        *len = 1;
        return DS4__U8_INVALID;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *len = k;
            return DS4__U8_INCOMPLETE;
        }
        unsigned char c = s[k];
        unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (c < l || c > h) {
            *len = k;
            return DS4__U8_INVALID;
        }
    }
    *len = need + 1;
    return DS4__U8_VALID;
}

bool ds4_utf8_validate(const char *str, size_t len, size_t *bad_offset)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) != 0)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        size_t n;
        if (ds4__utf8_classify(s + i, len - i, &n) != DS4__U8_VALID) {
            if (bad_offset != NULL)
                *bad_offset = i;
            return false;
        }
        i += n;
    }
    return true;
}
