/*
 * ds4/tokenizer.h - the DeepSeek byte-level BPE tokenizer: load a Hugging Face tokenizer.json,
 * encode text to ids, decode ids to text, and detokenize a stream one id at a time.
 *
 * Supported tokenizer.json subset (anything else is rejected with DS4_ERR_TOKENIZER or
 * DS4_ERR_UNSUPPORTED and a message naming the feature, never tokenized differently):
 *   model           BPE with vocab + merges ("a b" strings or ["a", "b"] pairs), byte-level
 *                   alphabet (all 256 byte symbols in the vocab), dropout null, no
 *                   continuing_subword_prefix / end_of_word_suffix, byte_fallback false;
 *                   ignore_merges honoured.
 *   added_tokens    matched inside raw text before pre-tokenization, leftmost-longest; tokens
 *                   with normalized=false are matched first, then normalized=true ones on what
 *                   is left (the order of Hugging Face's AddedVocabulary). lstrip, rstrip and
 *                   single_word must be false.
 *   normalizer      null or an empty Sequence.
 *   pre_tokenizer   Split (Regex or String pattern, behavior Isolated, invert false) and
 *                   ByteLevel (add_prefix_space false), alone or in a Sequence. Regexes are in
 *                   Oniguruma syntax (what the Rust library uses) and run on PCRE2 with JIT in
 *                   UTF + UCP mode; \s \S \d \w \h are rewritten to Oniguruma's definitions
 *                   and \p{..} classes widened to its Unicode 16.0 tables so both engines
 *                   split identically (docs/tokenizer.md).
 *   decoder         ByteLevel. post_processor: null, ByteLevel or TemplateProcessing (ignored:
 *                   encode never adds special tokens; the chat encoding adds BOS itself).
 *
 * Threading: a loaded ds4_tokenizer_h is immutable and may be shared by any number of threads.
 * Per-thread mutable state (regex match data, the pre-token cache) lives in a
 * ds4_tok_scratch_h: pass one per thread for speed, or NULL to use a temporary one per call.
 * A ds4_detok_h belongs to one stream and one thread at a time.
 *
 * Errors: every function returns a ds4_status_t; problems are added to `diag` (may be NULL)
 * with a message naming the offending thing (byte offset, id, JSON path). Outputs are set only
 * on success.
 */
#ifndef DS4_TOKENIZER_H
#define DS4_TOKENIZER_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_tokenizer ds4_tokenizer_h;
typedef struct ds4_tok_scratch ds4_tok_scratch_h;
typedef struct ds4_detok ds4_detok_h;

/* Largest tokenizer.json accepted (bytes). */
#define DS4_TOKENIZER_MAX_FILE_BYTES ((size_t)256 << 20)

/*
 * Loads a tokenizer.json file. On failure every problem found is in `diag` (paths like
 * "model.merges[17]"); returns DS4_ERR_IO, DS4_ERR_PARSE (not JSON), DS4_ERR_TOKENIZER
 * (invalid) or DS4_ERR_UNSUPPORTED (a feature ds4 does not implement).
 */
ds4_status_t ds4_tokenizer_load(const char *path, ds4_tokenizer_h **out, ds4_diag_t *diag);
/* The same from a buffer holding the JSON text (`what` names it in messages). */
ds4_status_t ds4_tokenizer_load_buf(const char *json, size_t len, const char *what,
                                    ds4_tokenizer_h **out, ds4_diag_t *diag);
/*
 * Loads the embedded default tokenizer (DeepSeek-V4's, shipped in models/tokenizer/): from
 * $DS4_TOKENIZER when set, else the copy in the source tree this library was built from.
 */
ds4_status_t ds4_tokenizer_load_default(ds4_tokenizer_h **out, ds4_diag_t *diag);
/* Path the default tokenizer is loaded from (never NULL). */
const char *ds4_tokenizer_default_path(void);
void ds4_tokenizer_destroy(ds4_tokenizer_h *tok);

/* One past the largest id that decodes (model vocab and added tokens). */
uint32_t ds4_tokenizer_n_ids(const ds4_tokenizer_h *tok);
/* Id of an added token or vocab entry whose text is exactly `text` (raw UTF-8), or -1. */
int32_t ds4_tokenizer_token_id(const ds4_tokenizer_h *tok, const char *text);
/* True when `id` is an added token marked special (skipped by skip_special_tokens). */
bool ds4_tokenizer_is_special(const ds4_tokenizer_h *tok, int32_t id);

/* Per-thread scratch for encode. Never shared between threads at the same time. */
ds4_status_t ds4_tok_scratch_create(const ds4_tokenizer_h *tok, ds4_tok_scratch_h **out);
void ds4_tok_scratch_destroy(ds4_tok_scratch_h *scratch);

/*
 * Encodes `len` bytes of UTF-8 text (NUL bytes allowed) into ids, without adding special
 * tokens; added tokens written in the text are recognised. *ids is a new array (ds4_free), set
 * with *n_ids only on success (an empty text gives n_ids 0 and a non-NULL array).
 * Invalid UTF-8 → DS4_ERR_INVALID_UTF8, the message names the byte offset (also stored in
 * *err_offset when err_offset is not NULL).
 */
ds4_status_t ds4_tokenizer_encode(const ds4_tokenizer_h *tok, ds4_tok_scratch_h *scratch,
                                  const char *text, size_t len, int32_t **ids, size_t *n_ids,
                                  size_t *err_offset, ds4_diag_t *diag);

/*
 * Decodes ids to UTF-8 text (*text NUL-terminated, ds4_free; *text_len excludes the NUL).
 * Byte sequences that are not valid UTF-8 become U+FFFD, one per maximal invalid subpart (what
 * Rust's String::from_utf8_lossy does). An id outside the vocabulary → DS4_ERR_VOCAB naming
 * the id and its position.
 */
ds4_status_t ds4_tokenizer_decode(const ds4_tokenizer_h *tok, const int32_t *ids, size_t n_ids,
                                  bool skip_special_tokens, char **text, size_t *text_len,
                                  ds4_diag_t *diag);

/* ---- streaming detokenizer ---- */

typedef struct ds4_detok_params {
    bool skip_special_tokens; /* drop added tokens marked special (default false) */
} ds4_detok_params_t;

ds4_detok_params_t ds4_detok_params_default(void);
/* `tok` must outlive the detokenizer. */
ds4_status_t ds4_detok_create(const ds4_tokenizer_h *tok, const ds4_detok_params_t *params,
                              ds4_detok_h **out);
void ds4_detok_destroy(ds4_detok_h *detok);
/*
 * Feeds one id. *text / *text_len receive the text that became complete (possibly empty):
 * always whole, valid UTF-8 code points; bytes of an unfinished code point are held back until
 * a later id completes it. The pointer is owned by the detokenizer and valid until the next
 * call. An unknown id → DS4_ERR_VOCAB and the stream state is unchanged.
 * Concatenating every output and ds4_detok_finish's equals ds4_tokenizer_decode of the ids.
 */
ds4_status_t ds4_detok_feed(ds4_detok_h *detok, int32_t id, const char **text, size_t *text_len,
                            ds4_diag_t *diag);
/* Ends the stream: held-back bytes of an unfinished code point come out as U+FFFD. Resets the
 * detokenizer for a new stream. */
void ds4_detok_finish(ds4_detok_h *detok, const char **text, size_t *text_len);

/* ---- UTF-8 helpers (used by the tokenizer, exported for the router and tests) ---- */

/* True when s[0..len) is valid UTF-8; otherwise *bad_offset = offset of the first bad byte. */
bool ds4_utf8_validate(const char *s, size_t len, size_t *bad_offset);

#ifdef __cplusplus
}
#endif
#endif /* DS4_TOKENIZER_H */
