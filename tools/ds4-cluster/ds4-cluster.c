/*
 * ds4-cluster - runs a local ds4 cluster on loopback: one ds4-router, N ds4-prefill and M
 * ds4-decode with one model, and stops them cleanly.
 *
 *   ds4-cluster [run]  --model DIR [--prefill N] [--decode M] [--port 7000] [--run-dir D]
 *       Foreground: starts everything, waits until the router is ready (/ready), prints
 *       "ready router=127.0.0.1:PORT http=127.0.0.1:PORT run-dir=D", and stays until SIGTERM /
 *       SIGINT; then SIGTERM to the router and workers (they drain), SIGKILL after
 *       --stop-timeout-ms. Children get SIGKILL if ds4-cluster itself dies (PR_SET_PDEATHSIG).
 *   ds4-cluster start  (same options)   the same in the background; returns once ready.
 *   ds4-cluster stop   --run-dir D      stops a cluster started with `start`.
 *
 * Binaries are looked up next to this executable's build tree (../../router/ds4-router, ...),
 * then in its own directory (an install), then $DS4_BIN_DIR. Logs and ports files go to the run
 * directory (default: a new /tmp/ds4-cluster.XXXXXX).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ds4/alloc.h"
#include "ds4/clock.h"
#include "ds4/daemon.h"
#include "ds4/json.h"
#include "ds4/log.h"

#define MAX_CHILDREN 66

typedef struct child {
    pid_t pid;
    char name[32];
} child_t;

static child_t children[MAX_CHILDREN];
static int n_children;
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    stop_requested = 1;
}

static const char *self_dir(void)
{
    static char dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
    if (n <= 0)
        return ".";
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash != NULL)
        *slash = '\0';
    return dir;
}

/* Path of daemon `name` living in `subdir` of a build tree; NULL when not found. */
static const char *find_bin(const char *subdir, const char *name, char *buf, size_t len)
{
    const char *env = getenv("DS4_BIN_DIR");
    const char *cands[3][2] = {
        {self_dir(), "../../%s/%s"},
        {self_dir(), "%.0s%s"},
        {env, "%.0s%s"},
    };
    for (int i = 0; i < 3; i++) {
        if (cands[i][0] == NULL)
            continue;
        char rel[256];
        snprintf(rel, sizeof(rel), cands[i][1], subdir, name);
        snprintf(buf, len, "%s/%s", cands[i][0], rel);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    return NULL;
}

static pid_t spawn(const char *name, char *const argv[], const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* Die with the launcher, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        signal(SIGINT, SIG_IGN); /* Ctrl-C goes to the launcher, which stops us in order */
        execv(argv[0], argv);
        fprintf(stderr, "ds4-cluster: cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (n_children < MAX_CHILDREN) {
        children[n_children].pid = pid;
        snprintf(children[n_children].name, sizeof(children[n_children].name), "%s", name);
        n_children++;
    }
    return pid;
}

/* GET http://127.0.0.1:port/path; returns the status code or -1. */
static int http_get_status(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int status = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        char req[256];
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
        if (write(fd, req, (size_t)n) == n) {
            char buf[64];
            ssize_t got = read(fd, buf, sizeof(buf) - 1);
            if (got > 12) {
                buf[got] = '\0';
                status = atoi(buf + 9);
            }
        }
    }
    close(fd);
    return status;
}

static bool child_alive(pid_t pid)
{
    int st;
    return waitpid(pid, &st, WNOHANG) == 0;
}

static void stop_all(uint32_t timeout_ms)
{
    /* Router first (stops taking requests, drains), then the workers. */
    for (int i = 0; i < n_children; i++)
        if (children[i].pid > 0)
            kill(children[i].pid, SIGTERM);
    uint64_t end = ds4_clock_now_ms() + timeout_ms;
    for (;;) {
        int alive = 0;
        for (int i = 0; i < n_children; i++) {
            if (children[i].pid <= 0)
                continue;
            int st;
            pid_t r = waitpid(children[i].pid, &st, WNOHANG);
            if (r == children[i].pid || (r < 0 && errno == ECHILD))
                children[i].pid = 0;
            else
                alive++;
        }
        if (alive == 0)
            return;
        if (ds4_clock_now_ms() > end) {
            for (int i = 0; i < n_children; i++)
                if (children[i].pid > 0) {
                    fprintf(stderr, "ds4-cluster: %s did not stop, killing it\n", children[i].name);
                    kill(children[i].pid, SIGKILL);
                    waitpid(children[i].pid, NULL, 0);
                    children[i].pid = 0;
                }
            return;
        }
        ds4_clock_sleep_ms(20);
    }
}

typedef struct opts {
    const char *model, *run_dir, *log_level, *host;
    uint32_t prefill, decode, port, http_port, ready_timeout_ms, stop_timeout_ms, chunk_tokens,
        threads, max_sequences;
    bool fallback_local;
} opts_t;

static int run(opts_t *o, int ready_fd)
{
    char router[PATH_MAX], prefill[PATH_MAX], decode[PATH_MAX];
    if (find_bin("router", "ds4-router", router, sizeof(router)) == NULL ||
        find_bin("prefill", "ds4-prefill", prefill, sizeof(prefill)) == NULL ||
        find_bin("decode", "ds4-decode", decode, sizeof(decode)) == NULL) {
        fprintf(stderr,
                "ds4-cluster: cannot find ds4-router/ds4-prefill/ds4-decode next to %s "
                "(set DS4_BIN_DIR)\n",
                self_dir());
        return 1;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    char path[PATH_MAX + 64], log[PATH_MAX + 64], arg_grpc[64], arg_http[64], arg_router[64];
    char arg_threads[16], arg_chunk[16], arg_maxseq[16];
    snprintf(arg_threads, sizeof(arg_threads), "%u", o->threads);
    snprintf(arg_chunk, sizeof(arg_chunk), "%u", o->chunk_tokens);
    snprintf(arg_maxseq, sizeof(arg_maxseq), "%u", o->max_sequences);
    snprintf(path, sizeof(path), "%s/router.ports", o->run_dir);
    unlink(path);
    snprintf(log, sizeof(log), "%s/router.log", o->run_dir);
    snprintf(arg_grpc, sizeof(arg_grpc), "%s:%u", o->host, o->port);
    snprintf(arg_http, sizeof(arg_http), "%s:%u", o->host, o->http_port);
    char *rargv[12] = {router,
                       "--grpc-listen",
                       arg_grpc,
                       "--http-listen",
                       arg_http,
                       "--ports-file",
                       path,
                       "--log-level",
                       (char *)o->log_level,
                       NULL};
    if (o->fallback_local || o->prefill == 0)
        rargv[9] = "--prefill-fallback-local";
    if (spawn("router", rargv, log) < 0)
        return 1;
    int rport = -1, rhttp = -1;
    uint64_t end = ds4_clock_now_ms() + o->ready_timeout_ms;
    while ((rport = ds4_daemon_read_port(path, "grpc_port")) < 0 && ds4_clock_now_ms() < end &&
           !stop_requested && child_alive(children[0].pid))
        ds4_clock_sleep_ms(20);
    rhttp = ds4_daemon_read_port(path, "http_port");
    if (rport < 0 || rhttp < 0) {
        fprintf(stderr, "ds4-cluster: the router did not start (see %s)\n", log);
        stop_all(o->stop_timeout_ms);
        return 1;
    }
    snprintf(arg_router, sizeof(arg_router), "%s:%d", o->host, rport);
    for (uint32_t i = 0; i < o->prefill + o->decode; i++) {
        bool is_p = i < o->prefill;
        uint32_t k = is_p ? i : i - o->prefill;
        char id[32], wlog[PATH_MAX + 64], wports[PATH_MAX + 64];
        snprintf(id, sizeof(id), "%s-%u", is_p ? "prefill" : "decode", k);
        snprintf(wlog, sizeof(wlog), "%s/%s.log", o->run_dir, id);
        snprintf(wports, sizeof(wports), "%s/%s.ports", o->run_dir, id);
        char *wargv[] = {is_p ? prefill : decode,
                         "--model",
                         (char *)o->model,
                         "--router",
                         arg_router,
                         "--worker-id",
                         id,
                         "--ports-file",
                         wports,
                         "--log-level",
                         (char *)o->log_level,
                         "--threads",
                         arg_threads,
                         "--chunk-tokens",
                         arg_chunk,
                         is_p ? "--max-queue" : "--max-sequences",
                         arg_maxseq,
                         NULL};
        if (spawn(id, wargv, wlog) < 0) {
            stop_all(o->stop_timeout_ms);
            return 1;
        }
    }
    bool ready = false;
    while (!ready && ds4_clock_now_ms() < end && !stop_requested) {
        ready = http_get_status(rhttp, "/ready") == 200;
        for (int i = 0; i < n_children && !ready; i++)
            if (!child_alive(children[i].pid)) {
                fprintf(stderr, "ds4-cluster: %s exited during start (see %s/%s.log)\n",
                        children[i].name, o->run_dir, children[i].name);
                children[i].pid = 0;
                stop_all(o->stop_timeout_ms);
                return 1;
            }
        if (!ready)
            ds4_clock_sleep_ms(50);
    }
    if (!ready) {
        fprintf(stderr, "ds4-cluster: not ready after %u ms (logs in %s)\n", o->ready_timeout_ms,
                o->run_dir);
        stop_all(o->stop_timeout_ms);
        return 1;
    }
    char line[PATH_MAX + 128];
    int n = snprintf(line, sizeof(line), "ready router=%s:%d http=%s:%d run-dir=%s\n", o->host,
                     rport, o->host, rhttp, o->run_dir);
    fputs(line, stdout);
    fflush(stdout);
    if (ready_fd >= 0) {
        (void)!write(ready_fd, line, (size_t)n);
        close(ready_fd);
    }
    char pidfile[PATH_MAX + 64];
    snprintf(pidfile, sizeof(pidfile), "%s/ds4-cluster.pid", o->run_dir);
    FILE *f = fopen(pidfile, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    while (!stop_requested) {
        for (int i = 0; i < n_children; i++) {
            if (children[i].pid > 0 && !child_alive(children[i].pid)) {
                fprintf(stderr, "ds4-cluster: %s exited (see %s/%s.log)\n", children[i].name,
                        o->run_dir, children[i].name);
                children[i].pid = 0;
            }
        }
        ds4_clock_sleep_ms(100);
    }
    fprintf(stderr, "ds4-cluster: stopping\n");
    stop_all(o->stop_timeout_ms);
    unlink(pidfile);
    return 0;
}

static int stop_cmd(opts_t *o)
{
    char pidfile[PATH_MAX + 64];
    snprintf(pidfile, sizeof(pidfile), "%s/ds4-cluster.pid", o->run_dir);
    FILE *f = fopen(pidfile, "r");
    int pid = 0;
    if (f == NULL || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "ds4-cluster: no running cluster in %s\n", o->run_dir);
        if (f != NULL)
            fclose(f);
        return 1;
    }
    fclose(f);
    if (kill(pid, SIGTERM) != 0) {
        fprintf(stderr, "ds4-cluster: cannot signal %d: %s\n", pid, strerror(errno));
        return 1;
    }
    uint64_t end = ds4_clock_now_ms() + o->stop_timeout_ms + 2000;
    while (kill(pid, 0) == 0 && ds4_clock_now_ms() < end)
        ds4_clock_sleep_ms(50);
    if (kill(pid, 0) == 0) {
        fprintf(stderr, "ds4-cluster: %d still running\n", pid);
        return 1;
    }
    printf("stopped\n");
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = "run";
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    opts_t o = {.prefill = 1,
                .decode = 1,
                .port = 7000,
                .http_port = 7080,
                .host = "127.0.0.1",
                .log_level = "info",
                .ready_timeout_ms = 60000,
                .stop_timeout_ms = 15000,
                .chunk_tokens = 512,
                .max_sequences = 64};
    const ds4_opt_t opts[] = {
        {"model", DS4_OPT_STR, &o.model, "checkpoint directory (required for run/start)"},
        {"prefill", DS4_OPT_U32, &o.prefill, "prefill workers"},
        {"decode", DS4_OPT_U32, &o.decode, "decode workers"},
        {"port", DS4_OPT_U32, &o.port, "router gRPC port (0: pick a free one)"},
        {"http-port", DS4_OPT_U32, &o.http_port, "router HTTP port (0: pick a free one)"},
        {"run-dir", DS4_OPT_STR, &o.run_dir, "logs, ports and pid files (default: new tmp dir)"},
        {"log-level", DS4_OPT_STR, &o.log_level, "daemons' log level"},
        {"threads", DS4_OPT_U32, &o.threads, "engine threads per worker (0: all cores)"},
        {"chunk-tokens", DS4_OPT_U32, &o.chunk_tokens, "prefill chunk size"},
        {"max-sequences", DS4_OPT_U32, &o.max_sequences, "decode concurrency per worker"},
        {"prefill-fallback-local", DS4_OPT_BOOL, &o.fallback_local,
         "prefill on decode when no prefill worker is available"},
        {"ready-timeout-ms", DS4_OPT_U32, &o.ready_timeout_ms, "wait this long for /ready"},
        {"stop-timeout-ms", DS4_OPT_U32, &o.stop_timeout_ms, "SIGKILL after this long"},
    };
    ds4_diag_t diag;
    ds4_diag_init(&diag);
    ds4_opts_state_t os;
    if (ds4_opts_parse(opts, DS4_ARRAY_LEN(opts), argc, argv, &os, &diag) != DS4_OK) {
        ds4_diag_log(&diag, "ds4-cluster");
        ds4_diag_free(&diag);
        return 2;
    }
    ds4_diag_free(&diag);
    if (os.help) {
        printf("usage: ds4-cluster [run|start|stop] [options]\n");
        ds4_opts_usage("ds4-cluster", opts, DS4_ARRAY_LEN(opts), stdout);
        return 0;
    }
    if (strcmp(cmd, "stop") == 0) {
        if (o.run_dir == NULL) {
            fprintf(stderr, "ds4-cluster: stop needs --run-dir\n");
            return 2;
        }
        return stop_cmd(&o);
    }
    if (strcmp(cmd, "run") != 0 && strcmp(cmd, "start") != 0) {
        fprintf(stderr, "ds4-cluster: unknown command %s (run, start, stop)\n", cmd);
        return 2;
    }
    if (o.model == NULL || o.decode == 0 || o.decode + o.prefill > MAX_CHILDREN - 1) {
        fprintf(stderr, "ds4-cluster: --model is required; 1 <= --decode, prefill+decode <= %d\n",
                MAX_CHILDREN - 1);
        return 2;
    }
    static char tmpl[] = "/tmp/ds4-cluster.XXXXXX";
    if (o.run_dir == NULL) {
        o.run_dir = mkdtemp(tmpl);
        if (o.run_dir == NULL) {
            perror("ds4-cluster: mkdtemp");
            return 1;
        }
    } else {
        mkdir(o.run_dir, 0755);
    }
    char model_abs[PATH_MAX];
    if (realpath(o.model, model_abs) == NULL) {
        fprintf(stderr, "ds4-cluster: --model %s: %s\n", o.model, strerror(errno));
        return 2;
    }
    o.model = model_abs;
    int rc;
    if (strcmp(cmd, "start") == 0) {
        int fds[2];
        if (pipe(fds) != 0)
            return 1;
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            close(fds[0]);
            setsid();
            int null = open("/dev/null", O_RDWR);
            char logp[PATH_MAX + 64];
            snprintf(logp, sizeof(logp), "%s/ds4-cluster.log", o.run_dir);
            int lf = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (null >= 0)
                dup2(null, 0);
            if (lf >= 0) {
                dup2(lf, 1);
                dup2(lf, 2);
            }
            _exit(run(&o, fds[1]));
        }
        close(fds[1]);
        char buf[PATH_MAX + 128];
        ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
        close(fds[0]);
        if (n <= 0) {
            fprintf(stderr, "ds4-cluster: the cluster did not become ready (logs in %s)\n",
                    o.run_dir);
            return 1;
        }
        buf[n] = '\0';
        fputs(buf, stdout);
        rc = 0;
    } else {
        rc = run(&o, -1);
    }
    ds4_opts_free(&os);
    return rc;
}
