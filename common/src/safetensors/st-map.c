#include "st-internal.h"

#include "ds4/alloc.h"

#include <string.h>

/* FNV-1a, 64 bit. */
static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s != '\0'; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

ds4_status_t ds4__st_map_init(ds4__st_map_t *map, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) {
        if (cap > SIZE_MAX / 4)
            return DS4_ERR_NO_MEMORY;
        cap *= 2;
    }
    map->slots = ds4_calloc(cap, sizeof(*map->slots));
    if (map->slots == NULL)
        return DS4_ERR_NO_MEMORY;
    map->cap = cap;
    return DS4_OK;
}

void ds4__st_map_free(ds4__st_map_t *map)
{
    ds4_free(map->slots);
    memset(map, 0, sizeof(*map));
}

bool ds4__st_map_put(ds4__st_map_t *map, const char *key, size_t value)
{
    size_t mask = map->cap - 1;
    for (size_t i = (size_t)hash_str(key) & mask;; i = (i + 1) & mask) {
        ds4__st_slot_t *s = &map->slots[i];
        if (s->key == NULL) {
            s->key = key;
            s->value = value;
            return true;
        }
        if (strcmp(s->key, key) == 0)
            return false;
    }
}

bool ds4__st_map_get(const ds4__st_map_t *map, const char *key, size_t *value)
{
    if (map->cap == 0)
        return false;
    size_t mask = map->cap - 1;
    /* The table is never more than half full, so an empty slot ends every probe. */
    for (size_t i = (size_t)hash_str(key) & mask;; i = (i + 1) & mask) {
        const ds4__st_slot_t *s = &map->slots[i];
        if (s->key == NULL)
            return false;
        if (strcmp(s->key, key) == 0) {
            *value = s->value;
            return true;
        }
    }
}
