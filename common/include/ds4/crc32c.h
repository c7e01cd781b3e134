/*
 * ds4/crc32c.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of KV
 * completion records (ds4/xfer.h) and of serialised blobs.
 *
 * ds4_crc32c(crc, buf, len) continues a running CRC: start with 0, and
 * ds4_crc32c(ds4_crc32c(0, a, na), b, nb) == ds4_crc32c(0, a||b, na + nb). The pre/post
 * inversion is internal, so the values are the standard ones (CRC of "123456789" = 0xE3069283).
 *
 * Uses the SSE4.2 crc32 instruction (three interleaved streams, combined with precomputed
 * shift tables) when the CPU has it, a table-driven software path otherwise. Thread-safe.
 */
#ifndef DS4_CRC32C_H
#define DS4_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

uint32_t ds4_crc32c(uint32_t crc, const void *buf, size_t len);
/*
 * Copies `len` bytes from `src` to `dst` (non-overlapping) and returns the CRC continued over
 * them, in one pass over the data: the sender's path into a peer's directly mapped memory.
 * Large copies use non-temporal stores (the destination is read by another process, not by
 * this core); the stores are fenced before returning.
 */
uint32_t ds4_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);
/* The portable table-driven path (always available; for tests and CPUs without SSE4.2). */
uint32_t ds4_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* True when ds4_crc32c uses the hardware instruction. */
bool ds4_crc32c_is_hw(void);

#ifdef __cplusplus
}
#endif
#endif /* DS4_CRC32C_H */
