#include "ds4/clock.h"

#include <errno.h>
#include <time.h>

uint64_t ds4_clock_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t ds4_clock_now_ms(void)
{
    return ds4_clock_now_ns() / 1000000ull;
}

double ds4_clock_now_s(void)
{
    return (double)ds4_clock_now_ns() * 1e-9;
}

void ds4_clock_sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}
