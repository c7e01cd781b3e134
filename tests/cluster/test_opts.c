/*
 * test_opts: daemon options (ds4/daemon.h): JSON config file + flags overriding it, every
 * problem collected with its name (unknown keys and flags, wrong JSON types, bad numbers,
 * out-of-range values, missing values), --help; and host:port splitting.
 */
#include <stdio.h>
#include <unistd.h>

#include "ds4/alloc.h"
#include "ds4/daemon.h"
#include "ds4/log.h"
#include "test.h"

typedef struct o {
    const char *listen, *name;
    uint32_t n;
    uint64_t big;
    double f;
    bool flag;
} o_t;

static ds4_status_t parse(o_t *o, int argc, char **argv, ds4_diag_t *d, ds4_opts_state_t *st)
{
    const ds4_opt_t opts[] = {
        {"grpc-listen", DS4_OPT_STR, &o->listen, "address"},
        {"name", DS4_OPT_STR, &o->name, "name"},
        {"max-sequences", DS4_OPT_U32, &o->n, "n"},
        {"kv-bytes", DS4_OPT_U64, &o->big, "big"},
        {"ratio", DS4_OPT_F64, &o->f, "f"},
        {"refuse-tcp-only", DS4_OPT_BOOL, &o->flag, "flag"},
    };
    return ds4_opts_parse(opts, DS4_ARRAY_LEN(opts), argc, argv, st, d);
}

static const char *write_config(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/ds4-test-opts-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config_and_flags(void)
{
    const char *cfg = write_config("{\"grpc_listen\": \"0.0.0.0:7000\", \"max-sequences\": 8, "
                                   "\"ratio\": 0.5, \"refuse_tcp_only\": true, "
                                   "\"name\": \"from-config\"}");
    char *argv[] = {"prog", "--config",    (char *)cfg,  "--max-sequences",
                    "16",   "--name=flag", "--kv-bytes", "17179869184",
                    NULL};
    o_t o = {.listen = "default", .n = 1};
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_opts_state_t st;
    DS4_CHECK_STATUS(parse(&o, 8, argv, &d, &st), DS4_OK);
    DS4_CHECK(strcmp(o.listen, "0.0.0.0:7000") == 0); /* config */
    DS4_CHECK_EQ_INT(o.n, 16);                        /* flag overrides config */
    DS4_CHECK(strcmp(o.name, "flag") == 0);
    DS4_CHECK(o.big == 17179869184ull);
    DS4_CHECK(o.f == 0.5 && o.flag);
    DS4_CHECK(!st.help);
    ds4_opts_free(&st);
    ds4_diag_free(&d);
    unlink(cfg);
}

static void test_rejects(void)
{
    const char *cfg = write_config("{\"max_sequences\": -1, \"ratio\": \"x\", \"bogus\": 1, "
                                   "\"refuse-tcp-only\": 1}");
    char *argv[] = {"prog",       "--config", (char *)cfg, "--nope", "--max-sequences",
                    "4294967296", "--ratio",  "1.5x",      "stray",  "--refuse-tcp-only=maybe",
                    "--kv-bytes", "-3",       "--name",    NULL};
    o_t o = {0};
    ds4_diag_t d;
    ds4_diag_init(&d);
    ds4_opts_state_t st;
    DS4_CHECK_STATUS(parse(&o, 13, argv, &d, &st), DS4_ERR_CONFIG);
    DS4_CHECK(ds4_diag_contains(&d, "config.max_sequences: expected a non-negative integer"));
    DS4_CHECK(ds4_diag_contains(&d, "config.ratio: expected a number, got string"));
    DS4_CHECK(ds4_diag_contains(&d, "unknown key \"bogus\""));
    DS4_CHECK(ds4_diag_contains(&d, "config.refuse-tcp-only: expected true or false"));
    DS4_CHECK(ds4_diag_contains(&d, "--nope: unknown option"));
    DS4_CHECK(ds4_diag_contains(&d, "--max-sequences: expected a 32-bit unsigned integer"));
    DS4_CHECK(ds4_diag_contains(&d, "--ratio: expected a number, got \"1.5x\""));
    DS4_CHECK(ds4_diag_contains(&d, "stray: unexpected argument"));
    DS4_CHECK(ds4_diag_contains(&d, "--refuse-tcp-only: expected true or false"));
    DS4_CHECK(ds4_diag_contains(&d, "--kv-bytes: expected a non-negative integer"));
    DS4_CHECK(ds4_diag_contains(&d, "--name: needs a value"));
    DS4_CHECK_EQ_INT(d.count, 11);
    ds4_opts_free(&st);
    ds4_diag_free(&d);

    /* a config that is not an object, and one that is not there */
    const char *arr = write_config("[1, 2]");
    char *argv2[] = {"prog", "--config=/nonexistent/ds4.json", NULL};
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(parse(&o, 2, argv2, &d, &st), DS4_ERR_CONFIG);
    DS4_CHECK(ds4_diag_contains(&d, "/nonexistent/ds4.json"));
    ds4_opts_free(&st);
    ds4_diag_free(&d);
    char *argv3[] = {"prog", "--config", (char *)arr, "-h", NULL};
    ds4_diag_init(&d);
    DS4_CHECK_STATUS(parse(&o, 4, argv3, &d, &st), DS4_ERR_CONFIG);
    DS4_CHECK(ds4_diag_contains(&d, "the config must be a JSON object"));
    DS4_CHECK(st.help);
    ds4_opts_free(&st);
    ds4_diag_free(&d);
    unlink(arr);
}

/* ds4_opts_start: -1 and the options to go on (log level applied), 2 on a bad flag, 0 on --help
 * (usage printed), the state freed whenever it ends the program. */
static void test_start(void)
{
    const char *level = "info";
    uint32_t n = 1;
    const ds4_opt_t opts[] = {
        {"log-level", DS4_OPT_STR, &level, "level"},
        {"max-sequences", DS4_OPT_U32, &n, "n"},
    };
    ds4_opts_state_t st;
    char *ok[] = {"prog", "--log-level", "error", "--max-sequences", "7", NULL};
    DS4_CHECK_EQ_INT(ds4_opts_start("prog", opts, 2, 5, ok, &level, &st), -1);
    DS4_CHECK(n == 7 && strcmp(level, "error") == 0);
    DS4_CHECK_EQ_INT(ds4_log_get_level(), DS4_LOG_ERROR);
    ds4_opts_free(&st);
    char *bad[] = {"prog", "--max-sequences", "x", NULL};
    DS4_CHECK_EQ_INT(ds4_opts_start("prog", opts, 2, 3, bad, &level, &st), 2);
    DS4_CHECK(st.config_json == NULL);
    char *help[] = {"prog", "--help", NULL};
    DS4_CHECK_EQ_INT(ds4_opts_start("prog", opts, 2, 2, help, NULL, &st), 0);
    DS4_CHECK(st.config_json == NULL);
}

static void test_host_port(void)
{
    char host[64];
    int port = 0;
    DS4_CHECK(ds4_split_host_port("127.0.0.1:7000", host, sizeof(host), &port));
    DS4_CHECK(strcmp(host, "127.0.0.1") == 0 && port == 7000);
    DS4_CHECK(ds4_split_host_port("[::1]:0", host, sizeof(host), &port));
    DS4_CHECK(strcmp(host, "::1") == 0 && port == 0);
    DS4_CHECK(!ds4_split_host_port("nohost", host, sizeof(host), &port));
    DS4_CHECK(!ds4_split_host_port(":80", host, sizeof(host), &port));
    DS4_CHECK(!ds4_split_host_port("h:", host, sizeof(host), &port));
    DS4_CHECK(!ds4_split_host_port("h:65536", host, sizeof(host), &port));
    DS4_CHECK(!ds4_split_host_port("h:12x", host, sizeof(host), &port));
    DS4_CHECK(ds4_random_u64() != 0);
}

int main(void)
{
    DS4_RUN(test_config_and_flags);
    DS4_RUN(test_rejects);
    DS4_RUN(test_start);
    DS4_RUN(test_host_port);
    return ds4_test_finish();
}
