/*
 * ds4/clock.h - monotonic time. All durations in ds4 are measured with these; wall-clock time
 * is used only for log/metric timestamps shown to people.
 */
#ifndef DS4_CLOCK_H
#define DS4_CLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nanoseconds on CLOCK_MONOTONIC (arbitrary origin, never goes backwards). */
uint64_t ds4_clock_now_ns(void);
/* Milliseconds on CLOCK_MONOTONIC. */
uint64_t ds4_clock_now_ms(void);
/* Seconds (double) on CLOCK_MONOTONIC, for benchmarks. */
double ds4_clock_now_s(void);
/* Sleeps at least `ms` milliseconds (restarts on EINTR). */
void ds4_clock_sleep_ms(uint64_t ms);

#ifdef __cplusplus
}
#endif
#endif /* DS4_CLOCK_H */
