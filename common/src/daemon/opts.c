/* Options from a JSON config file and command-line flags. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4/alloc.h"
#include "ds4/daemon.h"
#include "ds4/json.h"
#include "ds4/log.h"

/* "grpc_listen" and "grpc-listen" name the same option. */
static bool name_eq(const char *opt, const char *given, size_t given_len)
{
    size_t n = strlen(opt);
    if (n != given_len)
        return false;
    for (size_t i = 0; i < n; i++) {
        char a = opt[i] == '_' ? '-' : opt[i];
        char b = given[i] == '_' ? '-' : given[i];
        if (a != b)
            return false;
    }
    return true;
}

static const ds4_opt_t *find_opt(const ds4_opt_t *opts, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (name_eq(opts[i].name, name, len))
            return &opts[i];
    return NULL;
}

static void set_from_text(const ds4_opt_t *o, const char *v, const char *where, ds4_diag_t *diag)
{
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case DS4_OPT_STR:
        *(const char **)o->ptr = v;
        return;
    case DS4_OPT_U32:
    case DS4_OPT_U64: {
        if (v[0] == '-' || v[0] == '\0') {
            ds4_diag_addf(diag, where, "expected a non-negative integer, got \"%s\"", v);
            return;
        }
        unsigned long long x = strtoull(v, &end, 10);
        if (errno != 0 || *end != '\0' || (o->type == DS4_OPT_U32 && x > UINT32_MAX)) {
            ds4_diag_addf(diag, where, "expected a %s integer, got \"%s\"",
                          o->type == DS4_OPT_U32 ? "32-bit unsigned" : "64-bit unsigned", v);
            return;
        }
        if (o->type == DS4_OPT_U32)
            *(uint32_t *)o->ptr = (uint32_t)x;
        else
            *(uint64_t *)o->ptr = (uint64_t)x;
        return;
    }
    case DS4_OPT_F64: {
        double x = strtod(v, &end);
        if (errno != 0 || *end != '\0' || v[0] == '\0') {
            ds4_diag_addf(diag, where, "expected a number, got \"%s\"", v);
            return;
        }
        *(double *)o->ptr = x;
        return;
    }
    case DS4_OPT_BOOL:
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
            *(bool *)o->ptr = true;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
            *(bool *)o->ptr = false;
        else
            ds4_diag_addf(diag, where, "expected true or false, got \"%s\"", v);
        return;
    }
}

static void set_from_json(const ds4_opt_t *o, json_t *v, const char *key, ds4_diag_t *diag)
{
    char where[160];
    snprintf(where, sizeof(where), "config.%s", key);
    switch (o->type) {
    case DS4_OPT_STR:
        if (!json_is_string(v)) {
            ds4_diag_addf(diag, where, "expected a string, got %s", ds4_json_type_name(v));
            return;
        }
        *(const char **)o->ptr = json_string_value(v);
        return;
    case DS4_OPT_U32:
    case DS4_OPT_U64:
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            (o->type == DS4_OPT_U32 && json_integer_value(v) > (json_int_t)UINT32_MAX)) {
            ds4_diag_addf(diag, where, "expected a non-negative integer%s, got %s",
                          o->type == DS4_OPT_U32 ? " < 2^32" : "", ds4_json_type_name(v));
            return;
        }
        if (o->type == DS4_OPT_U32)
            *(uint32_t *)o->ptr = (uint32_t)json_integer_value(v);
        else
            *(uint64_t *)o->ptr = (uint64_t)json_integer_value(v);
        return;
    case DS4_OPT_F64:
        if (!json_is_number(v)) {
            ds4_diag_addf(diag, where, "expected a number, got %s", ds4_json_type_name(v));
            return;
        }
        *(double *)o->ptr = json_number_value(v);
        return;
    case DS4_OPT_BOOL:
        if (!json_is_boolean(v)) {
            ds4_diag_addf(diag, where, "expected true or false, got %s", ds4_json_type_name(v));
            return;
        }
        *(bool *)o->ptr = json_is_true(v);
        return;
    }
}

ds4_status_t ds4_opts_parse(const ds4_opt_t *opts, size_t n_opts, int argc, char **argv,
                            ds4_opts_state_t *state, ds4_diag_t *diag)
{
    memset(state, 0, sizeof(*state));
    size_t before = diag->count;
    /* The config file first, wherever --config appears, so flags override it. */
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
        if (path == NULL)
            continue;
        json_t *root = NULL;
        if (ds4_json_load_file(path, 1u << 20, &root, diag) != DS4_OK)
            break;
        if (!json_is_object(root)) {
            ds4_diag_addf(diag, path, "the config must be a JSON object");
            json_decref(root);
            break;
        }
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v)
        {
            const ds4_opt_t *o = find_opt(opts, n_opts, key, strlen(key));
            if (o == NULL) {
                ds4_diag_addf(diag, path, "unknown key \"%s\"", key);
                continue;
            }
            set_from_json(o, v, key, diag);
        }
        state->config_json = root;
        break;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            state->help = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            ds4_diag_addf(diag, a, "unexpected argument (options start with --)");
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        if (name_eq("config", name, len)) {
            if (eq == NULL)
                i++;
            continue;
        }
        const ds4_opt_t *o = find_opt(opts, n_opts, name, len);
        char where[128];
        snprintf(where, sizeof(where), "--%.*s", (int)DS4_MIN(len, (size_t)100), name);
        if (o == NULL) {
            ds4_diag_addf(diag, where, "unknown option");
            continue;
        }
        const char *value = NULL;
        if (eq != NULL) {
            value = eq + 1;
        } else if (o->type == DS4_OPT_BOOL) {
            value = "true";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            ds4_diag_addf(diag, where, "needs a value");
            continue;
        }
        set_from_text(o, value, where, diag);
    }
    return diag->count == before && !diag->oom ? DS4_OK : DS4_ERR_CONFIG;
}

void ds4_opts_free(ds4_opts_state_t *state)
{
    if (state->config_json != NULL)
        json_decref((json_t *)state->config_json);
    state->config_json = NULL;
}

int ds4_opts_start(const char *prog, const ds4_opt_t *opts, size_t n_opts, int argc, char **argv,
                   const char *const *log_level, ds4_opts_state_t *state)
{
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    int rc = -1;
    if (ds4_opts_parse(opts, n_opts, argc, argv, state, &diag) != DS4_OK) {
        char what[128];
        snprintf(what, sizeof(what), "%s: bad options", prog);
        ds4_diag_log(&diag, what);
        rc = 2;
    } else if (state->help) {
        ds4_opts_usage(prog, opts, n_opts, stdout);
        rc = 0;
    } else if (log_level != NULL && *log_level != NULL) {
        int lvl = ds4_log_level_parse(*log_level);
        if (lvl >= 0)
            ds4_log_set_level((ds4_log_level_t)lvl);
    }
    ds4_diag_free(&diag);
    if (rc >= 0)
        ds4_opts_free(state);
    return rc;
}

void ds4_opts_usage(const char *prog, const ds4_opt_t *opts, size_t n_opts, void *file)
{
    FILE *f = file;
    fprintf(f, "usage: %s [--config FILE.json] [options]\n", prog);
    for (size_t i = 0; i < n_opts; i++) {
        const ds4_opt_t *o = &opts[i];
        char def[96];
        switch (o->type) {
        case DS4_OPT_STR: {
            const char *s = *(const char **)o->ptr;
            snprintf(def, sizeof(def), "%s", s != NULL ? s : "");
            break;
        }
        case DS4_OPT_U32:
            snprintf(def, sizeof(def), "%" PRIu32, *(uint32_t *)o->ptr);
            break;
        case DS4_OPT_U64:
            snprintf(def, sizeof(def), "%" PRIu64, *(uint64_t *)o->ptr);
            break;
        case DS4_OPT_F64:
            snprintf(def, sizeof(def), "%g", *(double *)o->ptr);
            break;
        case DS4_OPT_BOOL:
            snprintf(def, sizeof(def), "%s", *(bool *)o->ptr ? "true" : "false");
            break;
        }
        fprintf(f, "  --%-24s %s (default: %s)\n", o->name, o->help, def);
    }
}
