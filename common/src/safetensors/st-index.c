#include "st-internal.h"

#include "ds4/alloc.h"
#include "ds4/json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

void ds4__st_index_free(ds4__st_index_t *index)
{
    for (size_t i = 0; i < index->n_names; i++)
        ds4_free(index->names[i]);
    for (size_t i = 0; i < index->n_shards; i++)
        ds4_free(index->shards[i]);
    ds4_free(index->names);
    ds4_free(index->shard_of);
    ds4_free(index->shards);
    memset(index, 0, sizeof(*index));
}

/* A shard name must stay inside the index's directory: relative, no "." / ".." components. */
static const char *bad_shard_name(const char *name, size_t len)
{
    if (len == 0)
        return "is empty";
    if (len != strlen(name))
        return "contains a NUL byte";
    if (name[0] == '/')
        return "is an absolute path";
    if (strchr(name, '\\') != NULL)
        return "contains a backslash";
    const char *c = name;
    while (*c != '\0') {
        size_t n = strcspn(c, "/");
        if (n == 0)
            return "has an empty path component";
        if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return "has a '.' or '..' path component (must stay inside the index directory)";
        c += n;
        if (*c == '/')
            c++;
        if (*c == '\0' && c[-1] == '/')
            return "ends with '/'";
    }
    return NULL;
}

ds4_status_t ds4__st_index_load(const char *path, ds4__st_index_t *out, ds4_diag_t *diag)
{
    ds4__st_index_t ix;
    memset(&ix, 0, sizeof(ix));
    ds4__st_map_t shard_map = {0};
    json_t *root = NULL;
    size_t problems = 0;

    ds4_status_t st = ds4_json_load_file(path, DS4__ST_MAX_INDEX_BYTES, &root, diag);
    if (st != DS4_OK)
        return st == DS4_ERR_PARSE ? DS4_ERR_CHECKPOINT : st;
    st = DS4_ERR_CHECKPOINT;
    if (!json_is_object(root)) {
        ds4_diag_addf(diag, path, "index has type %s, expected an object",
                      ds4_json_type_name(root));
        goto fail;
    }
    json_t *meta = json_object_get(root, "metadata");
    if (meta != NULL && !json_is_object(meta)) {
        ds4_diag_addf(diag, path, "metadata has type %s, expected an object",
                      ds4_json_type_name(meta));
        problems++;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (wm == NULL) {
        ds4_diag_addf(diag, path, "missing weight_map");
        goto fail;
    }
    if (!json_is_object(wm)) {
        ds4_diag_addf(diag, path, "weight_map has type %s, expected an object",
                      ds4_json_type_name(wm));
        goto fail;
    }

    size_t n = json_object_size(wm);
    ix.names = ds4_calloc(n > 0 ? n : 1, sizeof(*ix.names));
    ix.shard_of = ds4_calloc(n > 0 ? n : 1, sizeof(*ix.shard_of));
    ix.shards = ds4_calloc(n > 0 ? n : 1, sizeof(*ix.shards));
    if (ix.names == NULL || ix.shard_of == NULL || ix.shards == NULL ||
        ds4__st_map_init(&shard_map, n) != DS4_OK) {
        st = DS4_ERR_NO_MEMORY;
        goto fail;
    }
    if (n > UINT32_MAX) {
        ds4_diag_addf(diag, path, "weight_map has %zu entries, too many", n);
        goto fail;
    }

    /* Directory of the index, with its trailing '/', prefixed to shard names. */
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash != NULL ? (size_t)(slash - path) + 1 : 0;

    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach(wm, key, key_len, v)
    {
        if (key_len != strlen(key) || key_len == 0) {
            ds4_diag_addf(diag, path, "weight_map has a tensor name that is empty or has a NUL");
            problems++;
            continue;
        }
        if (!json_is_string(v)) {
            ds4_diag_addf(diag, path, "weight_map.%s has type %s, expected a shard file name", key,
                          ds4_json_type_name(v));
            problems++;
            continue;
        }
        const char *shard = json_string_value(v);
        const char *why = bad_shard_name(shard, json_string_length(v));
        if (why != NULL) {
            ds4_diag_addf(diag, path, "weight_map.%s: shard name '%s' %s", key, shard, why);
            problems++;
            continue;
        }
        size_t si;
        if (!ds4__st_map_get(&shard_map, shard, &si)) {
            size_t len = dir_len + strlen(shard) + 1;
            char *full = ds4_malloc(len);
            if (full == NULL) {
                st = DS4_ERR_NO_MEMORY;
                goto fail;
            }
            snprintf(full, len, "%.*s%s", (int)dir_len, path, shard);
            si = ix.n_shards;
            ix.shards[ix.n_shards++] = full;
            /* Keys borrow the JSON strings; the map dies with root below. */
            ds4__st_map_put(&shard_map, shard, si);
        }
        ix.names[ix.n_names] = ds4_strdup(key);
        if (ix.names[ix.n_names] == NULL) {
            st = DS4_ERR_NO_MEMORY;
            goto fail;
        }
        ix.shard_of[ix.n_names] = (uint32_t)si;
        ix.n_names++;
    }
    if (ix.n_names == 0 && problems == 0) {
        ds4_diag_addf(diag, path, "weight_map is empty");
        problems++;
    }

    /* Every shard must exist now: a checkpoint with a missing file fails at open, not later. */
    for (size_t i = 0; i < ix.n_shards; i++) {
        struct stat sb;
        if (stat(ix.shards[i], &sb) != 0) {
            ds4_diag_addf(diag, path, "shard %s named in weight_map cannot be found: %s",
                          ix.shards[i], strerror(errno));
            problems++;
        } else if (!S_ISREG(sb.st_mode)) {
            ds4_diag_addf(diag, path, "shard %s named in weight_map is not a regular file",
                          ix.shards[i]);
            problems++;
        }
    }
    if (problems > 0)
        goto fail;

    ds4__st_map_free(&shard_map);
    json_decref(root);
    *out = ix;
    return DS4_OK;

fail:
    ds4__st_map_free(&shard_map);
    ds4__st_index_free(&ix);
    json_decref(root);
    return st;
}
