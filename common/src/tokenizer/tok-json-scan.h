/*
 * tok-json-scan.h - fast extraction of model.vocab and model.merges from tokenizer.json text.
 *
 * These two values are ~99% of the file; parsing them into jansson objects dominated load
 * time. The scanner finds their spans, decodes them straight into flat arrays, and blanks the
 * spans (to {} and [], keeping line/column positions) so jansson parses only the rest.
 */
#ifndef DS4_TOK_JSON_SCAN_H
#define DS4_TOK_JSON_SCAN_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ds4_tok_vocab_ent {
    uint32_t off, len; /* decoded key in the arena */
    int64_t id;
    bool id_ok;        /* the value was an integer */
} ds4_tok_vocab_ent_t;

typedef struct ds4_tok_merge_ent {
    uint32_t a_off, a_len, b_off, b_len; /* in the arena */
    bool ok;                             /* "a b" with one space, or ["a", "b"] */
} ds4_tok_merge_ent_t;

typedef struct ds4_tok_raw {
    char *arena;
    size_t arena_used, arena_cap;
    ds4_tok_vocab_ent_t *vocab;
    size_t n_vocab, cap_vocab;
    ds4_tok_merge_ent_t *merges;
    size_t n_merges, cap_merges;
    bool have_vocab, have_merges; /* extracted (else left to jansson) */
    bool oom;
} ds4_tok_raw_t;

/*
 * Scans buf (modified in place: the extracted spans are blanked) and fills raw. Returns
 * DS4_ERR_PARSE with a problem in diag when the vocab or merges value is malformed; anything
 * else it does not understand is left for jansson to parse and report.
 */
ds4_status_t ds4__tok_scan(char *buf, size_t len, ds4_tok_raw_t *raw, ds4_diag_t *diag);
/* Fills raw from jansson values (used when the scanner left them in the document). */
ds4_status_t ds4__tok_raw_from_json(ds4_tok_raw_t *raw, const json_t *vocab,
                                    const json_t *merges);
void ds4__tok_raw_free(ds4_tok_raw_t *raw);

#endif /* DS4_TOK_JSON_SCAN_H */
