#include "ds4/log.h"
#include "ds4/clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -1 = not read from the environment yet. */
static atomic_int g_level = -1;
static pthread_mutex_t g_sink_lock = PTHREAD_MUTEX_INITIALIZER;
static ds4_log_sink_cb g_sink;
static void *g_sink_arg;

int ds4_log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (name == NULL)
        return -1;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0)
            return i;
    }
    return -1;
}

ds4_log_level_t ds4_log_get_level(void)
{
    int lvl = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (lvl < 0) {
        lvl = ds4_log_level_parse(getenv("DS4_LOG_LEVEL"));
        if (lvl < 0)
            lvl = DS4_LOG_INFO;
        atomic_store(&g_level, lvl);
    }
    return (ds4_log_level_t)lvl;
}

void ds4_log_set_level(ds4_log_level_t level)
{
    atomic_store(&g_level, (int)level);
}

void ds4_log_set_sink(ds4_log_sink_cb sink, void *arg)
{
    pthread_mutex_lock(&g_sink_lock);
    g_sink = sink;
    g_sink_arg = arg;
    pthread_mutex_unlock(&g_sink_lock);
}

void ds4_log_write(ds4_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    static const char tags[] = "EWID";
    char buf[2048];
    const char *base = strrchr(file, '/');
    base = base != NULL ? base + 1 : file;
    uint64_t now_us = ds4_clock_now_ns() / 1000;
    int n = snprintf(buf, sizeof(buf), "%c %llu.%06llu [%ld] %s:%d ", tags[level & 3],
                     (unsigned long long)(now_us / 1000000), (unsigned long long)(now_us % 1000000),
                     (long)syscall(SYS_gettid), base, line);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    if ((size_t)n < sizeof(buf))
        vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&g_sink_lock);
    if (g_sink != NULL) {
        g_sink(level, buf, g_sink_arg);
    } else {
        /* One fputs of the whole line keeps lines from interleaving across threads. */
        size_t len = strnlen(buf, sizeof(buf) - 2);
        buf[len] = '\n';
        buf[len + 1] = '\0';
        fputs(buf, stderr);
    }
    pthread_mutex_unlock(&g_sink_lock);
}

void ds4__assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "ds4: assertion failed at %s:%d: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}
