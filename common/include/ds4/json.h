/*
 * ds4/json.h - JSON through jansson (Debian libjansson-dev), plus the few helpers every ds4
 * parser needs: bounded file loading and typed field reads that record problems in a ds4_diag_t
 * with the field's path instead of stopping at the first one.
 *
 * Values are jansson's json_t (reference counted: json_decref what you own).
 */
#ifndef DS4_JSON_H
#define DS4_JSON_H

#include "ds4/diag.h"
#include "ds4/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Reads and parses a JSON file of at most `max_bytes` bytes. Duplicate object keys are rejected.
 * Problems (missing file, too large, syntax error with line/column) go to `diag` under `path`.
 * Returns DS4_ERR_IO for an unreadable file, DS4_ERR_PARSE for bad JSON; *out is set on success.
 */
ds4_status_t ds4_json_load_file(const char *path, size_t max_bytes, json_t **out,
                                ds4_diag_t *diag);
/* The same for a buffer that is not NUL-terminated. `what` names it in messages. */
ds4_status_t ds4_json_load_buf(const char *buf, size_t len, const char *what, json_t **out,
                               ds4_diag_t *diag);

/* Human name of a JSON value's type ("string", "integer", ...). */
const char *ds4_json_type_name(const json_t *v);

/*
 * Typed reads of obj[key]. `path` is the path of obj ("" for the root); messages name
 * "<path>.<key>". When the key is absent: required → a "missing" problem; not required →
 * *out keeps its value and false is returned. A present key of the wrong type or outside
 * [min, max] is always a problem. Returns true only when *out was set.
 */
bool ds4_json_get_i64(const json_t *obj, const char *path, const char *key, bool required,
                      int64_t min, int64_t max, int64_t *out, ds4_diag_t *diag);
bool ds4_json_get_f64(const json_t *obj, const char *path, const char *key, bool required,
                      double min, double max, double *out, ds4_diag_t *diag);
bool ds4_json_get_bool(const json_t *obj, const char *path, const char *key, bool required,
                       bool *out, ds4_diag_t *diag);
/* *out points into obj (valid while obj lives). */
bool ds4_json_get_str(const json_t *obj, const char *path, const char *key, bool required,
                      const char **out, ds4_diag_t *diag);
/* Borrowed reference to obj[key] checked to be of `type` (JSON_OBJECT, JSON_ARRAY...). */
json_t *ds4_json_get_typed(const json_t *obj, const char *path, const char *key, bool required,
                           json_type type, ds4_diag_t *diag);

/* Joins a path and a key ("a.b" + "c" → "a.b.c"; "" + "c" → "c") into buf. */
const char *ds4_json_path(char *buf, size_t cap, const char *path, const char *key);
/* Path of an array element ("a" + 3 → "a[3]"). */
const char *ds4_json_path_index(char *buf, size_t cap, const char *path, size_t index);

#ifdef __cplusplus
}
#endif
#endif /* DS4_JSON_H */
