/* Every external library ds4 depends on is linked and answers one real call. */
#include "test.h"

#include <cblas.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <ucp/api/ucp.h>
#include <uv.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

static void test_grpc(void)
{
    grpc_init();
    DS4_CHECK(grpc_version_string() != NULL && grpc_version_string()[0] != '\0');
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    DS4_CHECK(cq != NULL);
    grpc_completion_queue_shutdown(cq);
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    DS4_CHECK(ev.type == GRPC_QUEUE_SHUTDOWN);
    grpc_completion_queue_destroy(cq);
    grpc_shutdown();
}

static void test_ucx(void)
{
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    DS4_CHECK(major >= 1);
    ucp_config_t *cfg = NULL;
    DS4_CHECK(ucp_config_read(NULL, NULL, &cfg) == UCS_OK);
    if (cfg != NULL)
        ucp_config_release(cfg);
}

static void test_uv(void)
{
    uv_loop_t loop;
    DS4_CHECK(uv_loop_init(&loop) == 0);
    DS4_CHECK(uv_run(&loop, UV_RUN_DEFAULT) == 0);
    DS4_CHECK(uv_loop_close(&loop) == 0);
    DS4_CHECK(uv_version() > 0);
}

static void test_openblas(void)
{
    const float a[6] = {1, 2, 3, 4, 5, 6};       /* 2x3 */
    const float b[6] = {7, 8, 9, 10, 11, 12};    /* 3x2 */
    float c[4] = {0};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2);
    DS4_CHECK(c[0] == 58 && c[1] == 64 && c[2] == 139 && c[3] == 154);
}

static void test_pcre2(void)
{
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR) "\\p{L}+", PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err,
                                   &off, NULL);
    DS4_CHECK(re != NULL);
    if (re == NULL)
        return;
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    const char *subject = "12 h\xc3\xa9llo";
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, NULL);
    DS4_CHECK(rc == 1);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    DS4_CHECK(ov[0] == 3 && ov[1] == strlen(subject));
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

static void test_protobuf_c(void)
{
    DS4_CHECK(protobuf_c_version_number() >= 1000000);
}

int main(void)
{
    DS4_RUN(test_grpc);
    DS4_RUN(test_ucx);
    DS4_RUN(test_uv);
    DS4_RUN(test_openblas);
    DS4_RUN(test_pcre2);
    DS4_RUN(test_protobuf_c);
    return ds4_test_finish();
}
