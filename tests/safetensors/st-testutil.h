/*
 * st-testutil.h - writes safetensors files byte by byte for the reader's tests, independently of
 * the reader: the header is the literal JSON text given by the test, the length field is
 * encoded here, data is appended raw. Also temp directories and RSS readings.
 */
#ifndef DS4_ST_TESTUTIL_H
#define DS4_ST_TESTUTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes `len` raw bytes to dir/name. Returns 0 on success. */
static inline int stt_write_raw(const char *dir, const char *name, const void *bytes, size_t len)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return -1;
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    int rc = (len == 0 || fwrite(bytes, 1, len, f) == len) ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/*
 * Writes dir/name as: u64 LE header length, `header` padded with spaces to a multiple of 8
 * (when pad8), then `data_len` bytes of data (a repeating 0..250 ramp when data is NULL).
 * `declared_len` overrides the length field when non-zero.
 */
static inline int stt_write_st(const char *dir, const char *name, const char *header, int pad8,
                               const void *data, size_t data_len, uint64_t declared_len)
{
    size_t hlen = strlen(header);
    size_t padded = pad8 ? (hlen + 7) / 8 * 8 : hlen;
    size_t total = 8 + padded + data_len;
    unsigned char *buf = malloc(total > 0 ? total : 1);
    if (buf == NULL)
        return -1;
    uint64_t n = declared_len != 0 ? declared_len : (uint64_t)padded;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + padded + i] =
            data != NULL ? ((const unsigned char *)data)[i] : (unsigned char)(i % 251);
    int rc = stt_write_raw(dir, name, buf, total);
    free(buf);
    return rc;
}

/* Creates a fresh temp directory (static buffer per call site is the caller's). */
static inline int stt_mkdtemp(char *buf, size_t cap, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/ds4-st-%s-XXXXXX", base != NULL ? base : "/tmp", tag);
    return mkdtemp(buf) != NULL ? 0 : -1;
}

/* Removes every file of dir (one level) and dir itself. */
static inline void stt_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < sizeof(path))
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Resident set size of this process in KiB from /proc/self/status (-1 when unreadable). */
static inline long stt_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

#endif /* DS4_ST_TESTUTIL_H */
