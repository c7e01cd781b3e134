/* The backend registry: the only place that knows which backends are compiled in. */
#include "ds4/backend.h"

#include <string.h>

extern const ds4_backend_ops_t ds4_backend_cpu_ops;
#ifdef DS4_WITH_CUDA
extern const ds4_backend_ops_t ds4_backend_cuda_ops;
int ds4_backend_cuda_device_count(void);
#endif

const ds4_backend_ops_t *ds4_backend_get(const char *name)
{
    if (name == NULL || strcmp(name, "cpu") == 0)
        return &ds4_backend_cpu_ops;
#ifdef DS4_WITH_CUDA
    /* Offered only when a device is present (the backend is compiled without one). */
    if (strcmp(name, "cuda") == 0)
        return ds4_backend_cuda_device_count() > 0 ? &ds4_backend_cuda_ops : NULL;
#endif
    return NULL;
}
