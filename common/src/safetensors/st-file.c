#include "st-internal.h"

#include "ds4/alloc.h"
#include "ds4/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t load_le64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

void ds4__st_file_close(ds4__st_file_t *file)
{
    if (file == NULL)
        return;
    if (file->map != NULL)
        munmap((void *)file->map, file->map_bytes);
    ds4__st_map_free(&file->by_name);
    ds4__st_tensors_free(file->tensors, file->n_tensors);
    ds4_free(file->path);
    ds4_free(file);
}

ds4_status_t ds4__st_file_open(const char *path, ds4__st_file_t **out, ds4_diag_t *diag)
{
    ds4_status_t st = DS4_ERR_IO;
    ds4__st_file_t *f = ds4_calloc(1, sizeof(*f));
    if (f == NULL)
        return DS4_ERR_NO_MEMORY;
    f->path = ds4_strdup(path);
    if (f->path == NULL) {
        st = DS4_ERR_NO_MEMORY;
        goto free_file;
    }

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ds4_diag_addf(diag, path, "cannot open: %s", strerror(errno));
        goto free_file;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        ds4_diag_addf(diag, path, "cannot stat: %s", strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(sb.st_mode)) {
        ds4_diag_addf(diag, path, "not a regular file");
        goto close_fd;
    }
    uint64_t size = (uint64_t)sb.st_size;
    st = DS4_ERR_CHECKPOINT;
    if (size == 0) {
        ds4_diag_addf(diag, path, "file is empty (0 bytes), not a safetensors file");
        goto close_fd;
    }
    if (size < 8) {
        ds4_diag_addf(diag, path,
                      "file is truncated: %" PRIu64 " bytes, shorter than the 8-byte header "
                      "length",
                      size);
        goto close_fd;
    }
    if (size > SIZE_MAX) {
        ds4_diag_addf(diag, path, "file of %" PRIu64 " bytes cannot be mapped", size);
        goto close_fd;
    }
    uint8_t lenbuf[8];
    ssize_t got = pread(fd, lenbuf, sizeof(lenbuf), 0);
    if (got != (ssize_t)sizeof(lenbuf)) {
        ds4_diag_addf(diag, path, "cannot read the header length: %s",
                      got < 0 ? strerror(errno) : "short read");
        st = DS4_ERR_IO;
        goto close_fd;
    }
    uint64_t header_bytes = load_le64(lenbuf);
    if (header_bytes > DS4__ST_MAX_HEADER_BYTES) {
        ds4_diag_addf(diag, path,
                      "header length %" PRIu64 " exceeds the limit of %" PRIu64
                      " bytes (100 MiB); not a safetensors file?",
                      header_bytes, DS4__ST_MAX_HEADER_BYTES);
        goto close_fd;
    }
    if (header_bytes > size - 8) {
        ds4_diag_addf(diag, path,
                      "file is truncated: header length %" PRIu64 " is beyond the end of the "
                      "file (%" PRIu64 " bytes after the length field)",
                      header_bytes, size - 8);
        goto close_fd;
    }

    /* No MAP_POPULATE: only the pages callers touch are read. The header is parsed through the
     * mapping, so opening costs the header's pages. */
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        ds4_diag_addf(diag, path, "cannot mmap %" PRIu64 " bytes: %s", size, strerror(errno));
        st = DS4_ERR_IO;
        goto close_fd;
    }
    f->map = map;
    f->map_bytes = (size_t)size;
    f->data_start = 8 + header_bytes;

    st = ds4__st_header_parse((const char *)f->map + 8, (size_t)header_bytes, path, f->data_start,
                              size - f->data_start, &f->tensors, &f->n_tensors, diag);
    if (st != DS4_OK)
        goto close_fd;
    st = ds4__st_map_init(&f->by_name, f->n_tensors);
    if (st != DS4_OK)
        goto close_fd;
    for (size_t i = 0; i < f->n_tensors; i++) {
        /* Duplicate names were rejected by the JSON parser (JSON_REJECT_DUPLICATES). */
        bool fresh = ds4__st_map_put(&f->by_name, f->tensors[i].name, i);
        DS4_ASSERT(fresh);
        f->tensor_bytes += f->tensors[i].end - f->tensors[i].begin;
    }
    /* The header is read once; its pages are not needed any more. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t header_pages = (size_t)(f->data_start / page) * page;
    if (header_pages > 0)
        (void)madvise(map, header_pages, MADV_DONTNEED);
    close(fd); /* the mapping keeps the file */
    *out = f;
    return DS4_OK;

close_fd:
    close(fd);
free_file:
    ds4__st_file_close(f);
    return st;
}

void ds4__st_file_view(const ds4__st_file_t *file, const ds4__st_tensor_t *t,
                       ds4_tensor_view_t *out)
{
    memset(out, 0, sizeof(*out));
    out->name = t->name;
    out->dtype = t->dtype;
    out->n_dims = t->n_dims;
    for (int32_t d = 0; d < t->n_dims; d++)
        out->shape[d] = t->shape[d];
    out->n_elements = t->n_elements;
    out->size_bytes = (size_t)(t->end - t->begin);
    out->data = file->map + file->data_start + t->begin;
    out->file = file->path;
}

ds4_status_t ds4_st_advise(const ds4_tensor_view_t *view, ds4_st_advice_t advice)
{
    if (view == NULL || (advice != DS4_ST_WILLNEED && advice != DS4_ST_DONTNEED))
        return DS4_ERR_INVALID_ARG;
    if (view->size_bytes == 0)
        return DS4_OK;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)view->data & ~(page - 1);
    uintptr_t hi = ((uintptr_t)view->data + view->size_bytes + page - 1) & ~(page - 1);
    int how = advice == DS4_ST_WILLNEED ? MADV_WILLNEED : MADV_DONTNEED;
    if (madvise((void *)lo, (size_t)(hi - lo), how) != 0) {
        ds4_log_warn("madvise failed tensor %s: %s", view->name != NULL ? view->name : "?",
                     strerror(errno));
        return DS4_ERR_IO;
    }
    return DS4_OK;
}
