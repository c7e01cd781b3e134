/*
 * ds4/log.h - leveled logging and the always-on assertion.
 *
 * Messages are lowercase with key/value pairs: ds4_log_warn("kv push failed request %" PRIu64
 * " peer %s: %s", id, peer, ds4_status_str(st)). One line per call, written atomically to stderr
 * (or the sink set with ds4_log_set_sink) with a monotonic timestamp, level and thread id.
 * Thread-safe. The level comes from DS4_LOG_LEVEL (error|warn|info|debug) at first use, or
 * ds4_log_set_level().
 *
 * DS4_ASSERT(cond) is for programmer invariants only (never for bad input): always compiled in,
 * prints file:line and the condition, then aborts.
 */
#ifndef DS4_LOG_H
#define DS4_LOG_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds4_log_level {
    DS4_LOG_ERROR = 0,
    DS4_LOG_WARN = 1,
    DS4_LOG_INFO = 2,
    DS4_LOG_DEBUG = 3,
} ds4_log_level_t;

/* Receives every formatted line (no trailing newline). Called on the logging thread. */
typedef void (*ds4_log_sink_cb)(ds4_log_level_t level, const char *line, void *arg);

void ds4_log_set_level(ds4_log_level_t level);
ds4_log_level_t ds4_log_get_level(void);
/* NULL restores stderr. */
void ds4_log_set_sink(ds4_log_sink_cb sink, void *arg);
/* Parses "error" "warn" "info" "debug"; returns -1 for anything else. */
int ds4_log_level_parse(const char *name);

void ds4_log_write(ds4_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define ds4_log_at(lvl, ...)                                            \
    do {                                                                \
        if ((int)(lvl) <= (int)ds4_log_get_level())                     \
            ds4_log_write((lvl), __FILE__, __LINE__, __VA_ARGS__);      \
    } while (0)
#define ds4_log_error(...) ds4_log_at(DS4_LOG_ERROR, __VA_ARGS__)
#define ds4_log_warn(...) ds4_log_at(DS4_LOG_WARN, __VA_ARGS__)
#define ds4_log_info(...) ds4_log_at(DS4_LOG_INFO, __VA_ARGS__)
#define ds4_log_debug(...) ds4_log_at(DS4_LOG_DEBUG, __VA_ARGS__)

__attribute__((noreturn)) void ds4__assert_fail(const char *cond, const char *file, int line);

#define DS4_ASSERT(cond)                                                \
    do {                                                                \
        if (__builtin_expect(!(cond), 0))                               \
            ds4__assert_fail(#cond, __FILE__, __LINE__);                \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif /* DS4_LOG_H */
