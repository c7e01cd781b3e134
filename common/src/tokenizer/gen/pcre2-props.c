/*
 * pcre2-props.c - prints, for each Unicode property the tokenizer's regex rewriting covers,
 * the code-point ranges the linked PCRE2 puts in it ("L 0041-005A 0061-007A ..."). Input to
 * gen-unicode-delta.js; not part of the build.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <string.h>

static const char *const PROPS[] = {"L", "M", "N", "P", "S", "Z", "Nd", "Pc", "Lu", "Ll",
                                    "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nl", "No"};

int main(void)
{
    for (size_t k = 0; k < sizeof(PROPS) / sizeof(*PROPS); k++) {
        char pat[32];
        snprintf(pat, sizeof(pat), "^\\p{%s}$", PROPS[k]);
        int err;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err,
                                       &off, NULL);
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        pcre2_match_data *md = pcre2_match_data_create(1, NULL);
        printf("%s", PROPS[k]);
        long start = -1;
        for (long cp = 0; cp <= 0x110000; cp++) {
            int in = 0;
            if (cp < 0x110000 && !(cp >= 0xD800 && cp <= 0xDFFF)) {
                unsigned char b[4];
                size_t n;
                if (cp < 0x80) { b[0] = (unsigned char)cp; n = 1; }
                else if (cp < 0x800) { b[0] = 0xC0 | (cp >> 6); b[1] = 0x80 | (cp & 0x3F); n = 2; }
                else if (cp < 0x10000) {
                    b[0] = 0xE0 | (cp >> 12); b[1] = 0x80 | ((cp >> 6) & 0x3F);
                    b[2] = 0x80 | (cp & 0x3F); n = 3;
                } else {
                    b[0] = 0xF0 | (cp >> 18); b[1] = 0x80 | ((cp >> 12) & 0x3F);
                    b[2] = 0x80 | ((cp >> 6) & 0x3F); b[3] = 0x80 | (cp & 0x3F); n = 4;
                }
                in = pcre2_match(re, b, n, 0, 0, md, NULL) >= 0;
            }
            if (in && start < 0)
                start = cp;
            if (!in && start >= 0) {
                printf(" %04lX-%04lX", start, cp - 1);
                start = -1;
            }
        }
        printf("\n");
        pcre2_match_data_free(md);
        pcre2_code_free(re);
    }
    return 0;
}
