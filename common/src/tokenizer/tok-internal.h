/*
 * tok-internal.h - the loaded tokenizer's tables, shared by the tokenizer's .c files only.
 *
 * All tables are built once by ds4_tokenizer_load and never written afterwards, which is what
 * makes a ds4_tokenizer_h shareable across threads. Token text is stored as raw bytes (the
 * byte-level alphabet already undone), so BPE runs on bytes, not on code points.
 */
#ifndef DS4_TOK_INTERNAL_H
#define DS4_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "ds4/tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>

#define DS4_TOK_MAX_SPLITS 8

enum {
    DS4_TOK_F_VALID = 1u << 0,   /* the id decodes */
    DS4_TOK_F_ADDED = 1u << 1,   /* an added token (matched in raw text) */
    DS4_TOK_F_SPECIAL = 1u << 2, /* an added token marked special */
};

/* A byte trie of added-token contents; node 0 is the root. Children form a sibling list. */
typedef struct ds4_tok_trie_node {
    uint32_t first_child; /* 0 = none (the root is never a child) */
    uint32_t next_sibling;
    int32_t id;           /* token ending here, or -1 */
    uint8_t byte;
} ds4_tok_trie_node_t;

typedef struct ds4_tok_trie {
    ds4_tok_trie_node_t *nodes;
    uint32_t n_nodes, cap;
    uint32_t n_tokens;
    uint8_t first_byte[32]; /* bitmap of bytes that start some token */
} ds4_tok_trie_t;

struct ds4_tokenizer {
    /* id → decoded bytes (what decode emits), flags */
    uint32_t n_ids;
    uint32_t *tok_off;    /* n_ids + 1 offsets into tok_bytes */
    uint8_t *tok_flags;   /* n_ids, DS4_TOK_F_* */
    char *tok_bytes;
    uint32_t n_vocab;     /* model vocab size (ids below it may still be holes) */

    /* model vocab lookup by raw bytes (open addressing; slot = id + 1, 0 = empty) */
    uint32_t *vocab_slots;
    uint32_t vocab_mask;

    /* BPE */
    int32_t byte_id[256];
    uint64_t *merge_keys;  /* (left id << 32 | right id) + 1; 0 = empty slot */
    uint32_t *merge_rank;
    int32_t *merge_new;
    uint32_t merge_mask;
    uint32_t n_merges;
    bool ignore_merges;

    /* added tokens: not normalized (matched first), normalized (matched second) */
    ds4_tok_trie_t trie_raw;
    ds4_tok_trie_t trie_norm;

    /* pre-tokenizer: Isolated splits applied in order. split_re has \p{..} classes widened to
     * Oniguruma's Unicode version (tok-unicode-delta.h); split_re_narrow is the same pattern
     * with PCRE2's own tables, faster, and identical on text without any widened code point
     * (delta_bitmap, NULL when no pattern needed widening). */
    pcre2_code *split_re[DS4_TOK_MAX_SPLITS];
    pcre2_code *split_re_narrow[DS4_TOK_MAX_SPLITS];
    bool split_jit[DS4_TOK_MAX_SPLITS];
    bool split_jit_narrow[DS4_TOK_MAX_SPLITS];
    int n_splits;
    uint8_t *delta_bitmap; /* 0x110000 bits */
};

/* Per-thread encode state. */
struct ds4_tok_scratch {
    const ds4_tokenizer_h *tok;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    /* BPE working arrays (grown on demand) */
    int32_t *sym_id;
    int32_t *sym_prev, *sym_next;
    uint32_t *sym_rank;
    uint64_t *heap;
    size_t sym_cap;
    /* pre-token → ids cache (open addressing, reset when full) */
    struct ds4_tok_cache_entry *cache;
    uint32_t cache_mask, cache_used;
    char *cache_keys;
    size_t cache_keys_used, cache_keys_cap;
    int32_t *cache_ids;
    size_t cache_ids_used, cache_ids_cap;
};

/* Load context: collects problems, remembers whether any was "unsupported". */
typedef struct ds4__tok_load_ctx {
    ds4_diag_t *diag;
    int n_invalid;
    int n_unsupported;
    uint16_t char_byte[512]; /* byte-level alphabet: code point → byte + 1 (0 = not in it) */
} ds4__tok_load_ctx_t;

/* Records an invalid / unsupported tokenizer.json feature at `path` (tok-load.c). */
void ds4__tok_invalid(ds4__tok_load_ctx_t *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ds4__tok_unsupported(ds4__tok_load_ctx_t *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reads "pre_tokenizer" into t's splits (tok-regex.c). */
void ds4__tok_parse_pretok(ds4__tok_load_ctx_t *c, ds4_tokenizer_h *t, const json_t *root);

/* Adds a problem to diag when diag is not NULL. */
void ds4__tok_diag(ds4_diag_t *diag, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline uint32_t ds4__tok_hash_bytes(const char *s, size_t n)
{
    /* FNV-1a folded with a final mix; good enough for short token strings. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

static inline uint64_t ds4__tok_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Rank and result of merging (a, b), or false when the pair is not a merge. */
static inline bool ds4__tok_merge_lookup(const ds4_tokenizer_h *t, int32_t a, int32_t b,
                                         uint32_t *rank, int32_t *new_id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t i = (uint32_t)ds4__tok_mix64(key) & t->merge_mask;
    for (;;) {
        uint64_t k = t->merge_keys[i];
        if (k == key) {
            *rank = t->merge_rank[i];
            *new_id = t->merge_new[i];
            return true;
        }
        if (k == 0)
            return false;
        i = (i + 1) & t->merge_mask;
    }
}

/* Model vocab id of raw bytes, or -1. */
int32_t ds4__tok_vocab_find(const ds4_tokenizer_h *t, const char *s, size_t n);

/* Trie helpers (tok-trie.c). *prev_id gets the id the content had before (-1: new). */
ds4_status_t ds4__tok_trie_insert(ds4_tok_trie_t *trie, const char *s, size_t n, int32_t id,
                                  int32_t *prev_id);
/* Id of exactly s[0..n), or -1. */
int32_t ds4__tok_trie_exact(const ds4_tok_trie_t *trie, const char *s, size_t n);
void ds4__tok_trie_free(ds4_tok_trie_t *trie);
/* Longest token starting at s[0..n): its id and length, or false. */
bool ds4__tok_trie_longest(const ds4_tok_trie_t *trie, const char *s, size_t n, int32_t *id,
                           size_t *len);

/* UTF-8 sequence starting at s[0] (n >= 1 bytes available): valid, invalid (a maximal invalid
 * subpart of *len bytes), or a valid prefix cut off by the end of the input. *len = bytes it
 * spans. */
typedef enum ds4__utf8_kind {
    DS4__U8_VALID,
    DS4__U8_INVALID,
    DS4__U8_INCOMPLETE,
} ds4__utf8_kind_t;
ds4__utf8_kind_t ds4__utf8_classify(const unsigned char *s, size_t n, size_t *len);

#endif /* DS4_TOK_INTERNAL_H */
