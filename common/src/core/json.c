#include "ds4/json.h"
#include "ds4/alloc.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *ds4_json_path(char *buf, size_t cap, const char *path, const char *key)
{
    if (path == NULL || path[0] == '\0')
        snprintf(buf, cap, "%s", key);
    else
        snprintf(buf, cap, "%s.%s", path, key);
    return buf;
}

const char *ds4_json_path_index(char *buf, size_t cap, const char *path, size_t index)
{
    snprintf(buf, cap, "%s[%zu]", path != NULL ? path : "", index);
    return buf;
}

const char *ds4_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

ds4_status_t ds4_json_load_buf(const char *buf, size_t len, const char *what, json_t **out,
                               ds4_diag_t *diag)
{
    json_error_t err;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (root == NULL) {
        ds4_diag_addf(diag, what, "invalid JSON at line %d column %d: %s", err.line, err.column,
                      err.text);
        return DS4_ERR_PARSE;
    }
    *out = root;
    return DS4_OK;
}

ds4_status_t ds4_json_load_file(const char *path, size_t max_bytes, json_t **out,
                                ds4_diag_t *diag)
{
    ds4_status_t st = DS4_ERR_IO;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        ds4_diag_addf(diag, path, "cannot open: %s", strerror(errno));
        return DS4_ERR_IO;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        ds4_diag_addf(diag, path, "cannot stat: %s", strerror(errno));
        goto close_file;
    }
    if (!S_ISREG(sb.st_mode)) {
        ds4_diag_addf(diag, path, "not a regular file");
        goto close_file;
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        ds4_diag_addf(diag, path, "file is %lld bytes, more than the limit of %zu",
                      (long long)sb.st_size, max_bytes);
        st = DS4_ERR_PARSE;
        goto close_file;
    }
    size_t len = (size_t)sb.st_size;
    buf = ds4_malloc(len + 1);
    if (buf == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto close_file;
    }
    if (len > 0 && fread(buf, 1, len, f) != len) {
        ds4_diag_addf(diag, path, "short read");
        goto free_buf;
    }
    st = ds4_json_load_buf(buf, len, path, out, diag);
free_buf:
    ds4_free(buf);
close_file:
    fclose(f);
    return st;
}

static const json_t *get_present(const json_t *obj, const char *path, const char *key,
                                 bool required, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (v == NULL && required)
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key), "missing required key");
    return v;
}

bool ds4_json_get_i64(const json_t *obj, const char *path, const char *key, bool required,
                      int64_t min, int64_t max, int64_t *out, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = get_present(obj, path, key, required, diag);
    if (v == NULL)
        return false;
    int64_t val;
    if (json_is_integer(v)) {
        val = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
               fabs(json_real_value(v)) < 9.0e15) {
        val = (int64_t)json_real_value(v);
    } else {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "expected an integer, got %s", ds4_json_type_name(v));
        return false;
    }
    if (val < min || val > max) {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "value %lld outside the allowed range [%lld, %lld]", (long long)val,
                      (long long)min, (long long)max);
        return false;
    }
    *out = val;
    return true;
}

bool ds4_json_get_f64(const json_t *obj, const char *path, const char *key, bool required,
                      double min, double max, double *out, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = get_present(obj, path, key, required, diag);
    if (v == NULL)
        return false;
    if (!json_is_number(v)) {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "expected a number, got %s", ds4_json_type_name(v));
        return false;
    }
    double val = json_number_value(v);
    if (!isfinite(val) || val < min || val > max) {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "value %g outside the allowed range [%g, %g]", val, min, max);
        return false;
    }
    *out = val;
    return true;
}

bool ds4_json_get_bool(const json_t *obj, const char *path, const char *key, bool required,
                       bool *out, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = get_present(obj, path, key, required, diag);
    if (v == NULL)
        return false;
    if (!json_is_boolean(v)) {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "expected a boolean, got %s", ds4_json_type_name(v));
        return false;
    }
    *out = json_is_true(v);
    return true;
}

bool ds4_json_get_str(const json_t *obj, const char *path, const char *key, bool required,
                      const char **out, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = get_present(obj, path, key, required, diag);
    if (v == NULL)
        return false;
    if (!json_is_string(v)) {
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key),
                      "expected a string, got %s", ds4_json_type_name(v));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

json_t *ds4_json_get_typed(const json_t *obj, const char *path, const char *key, bool required,
                           json_type type, ds4_diag_t *diag)
{
    char p[256];
    const json_t *v = get_present(obj, path, key, required, diag);
    if (v == NULL)
        return NULL;
    if (json_typeof(v) != type) {
        static const char *const names[] = {"object", "array", "string", "integer",
                                            "number", "boolean", "boolean", "null"};
        ds4_diag_addf(diag, ds4_json_path(p, sizeof(p), path, key), "expected %s, got %s",
                      (unsigned)type < 8 ? names[type] : "?", ds4_json_type_name(v));
        return NULL;
    }
    return (json_t *)v;
}
