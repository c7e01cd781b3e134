/*
 * tok-trie.c - the byte trie of added-token contents: insertion at load time, leftmost-longest
 * matching at encode time (read-only, shareable between threads).
 */
#include "tok-internal.h"

#include "ds4/alloc.h"

#include <string.h>

void ds4__tok_trie_free(ds4_tok_trie_t *trie)
{
    ds4_free(trie->nodes);
    memset(trie, 0, sizeof(*trie));
}

ds4_status_t ds4__tok_trie_insert(ds4_tok_trie_t *t, const char *s, size_t n, int32_t id,
                                int32_t *prev_id)
{
    if (t->nodes == NULL) {
        t->cap = 256;
        t->nodes = ds4_calloc(t->cap, sizeof(*t->nodes));
        if (t->nodes == NULL)
            return DS4_ERR_NO_MEMORY;
        t->nodes[0].id = -1;
        t->n_nodes = 1;
    }
    uint32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t ch = t->nodes[cur].first_child;
        while (ch != 0 && t->nodes[ch].byte != b)
            ch = t->nodes[ch].next_sibling;
        if (ch == 0) {
            if (t->n_nodes == t->cap) {
                ds4_tok_trie_node_t *nn = ds4_realloc_array(t->nodes, t->cap * 2, sizeof(*nn));
                if (nn == NULL)
                    return DS4_ERR_NO_MEMORY;
                t->nodes = nn;
                t->cap *= 2;
            }
            ch = t->n_nodes++;
            t->nodes[ch] = (ds4_tok_trie_node_t){.first_child = 0,
                                                 .next_sibling = t->nodes[cur].first_child,
                                                 .id = -1,
                                                 .byte = b};
            t->nodes[cur].first_child = ch;
        }
        cur = ch;
    }
    *prev_id = t->nodes[cur].id;
    if (t->nodes[cur].id < 0)
        t->n_tokens++;
    t->nodes[cur].id = id;
    t->first_byte[(uint8_t)s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)s[0] & 7));
    return DS4_OK;
}

bool ds4__tok_trie_longest(const ds4_tok_trie_t *t, const char *s, size_t n, int32_t *id,
                           size_t *len)
{
    uint32_t cur = 0;
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t ch = t->nodes[cur].first_child;
        while (ch != 0 && t->nodes[ch].byte != b)
            ch = t->nodes[ch].next_sibling;
        if (ch == 0)
            break;
        cur = ch;
        if (t->nodes[cur].id >= 0) {
            *id = t->nodes[cur].id;
            *len = i + 1;
            found = true;
        }
    }
    return found;
}

int32_t ds4__tok_trie_exact(const ds4_tok_trie_t *t, const char *s, size_t n)
{
    if (t->nodes == NULL || n == 0)
        return -1;
    int32_t id;
    size_t len;
    if (ds4__tok_trie_longest(t, s, n, &id, &len) && len == n)
        return id;
    return -1;
}
