/*
 * test_http: ds4/http.h over loopback with a raw-socket client thread (the loop runs on the main
 * thread). Responses are compared byte for byte with what HTTP/1.1 (RFC 9112) prescribes:
 * status line, Content-Length framing, chunked framing, keep-alive and pipelining, and the
 * error answers for malformed requests and exceeded limits; a client disconnect mid-stream
 * reaches the handler's close callback.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <uv.h>

#include "ds4/clock.h"
#include "ds4/http.h"
#include "test.h"

static uv_loop_t loop;
static int port;
static int stream_closes;

typedef struct streamer {
    ds4_http_exchange_h ex;
    uv_timer_t timer;
    int sent;
} streamer_t;

static void streamer_free(uv_handle_t *h)
{
    free(h->data);
}

static void stream_tick(uv_timer_t *t)
{
    streamer_t *s = t->data;
    static const char *const parts[] = {"hello", " ", "world!"};
    if (s->ex == NULL)
        return;
    if (s->sent < 3) {
        ds4_http_stream_write(s->ex, parts[s->sent], strlen(parts[s->sent]));
        s->sent++;
        return;
    }
    ds4_http_stream_end(s->ex);
    s->ex = NULL;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, streamer_free);
}

static void stream_closed(ds4_http_exchange_h ex, void *arg)
{
    streamer_t *s = arg;
    stream_closes++;
    uv_timer_stop(&s->timer);
    s->ex = NULL;
    ds4_http_stream_end(ex);
    uv_close((uv_handle_t *)&s->timer, streamer_free);
}

static void handler(ds4_http_exchange_h ex, const ds4_http_request_t *req, void *arg)
{
    char buf[256];
    if (strcmp(req->path, "/health") == 0) {
        ds4_http_respond(ex, 200, "text/plain", "ok\n", 3);
    } else if (strcmp(req->path, "/echo") == 0) {
        const char *h = ds4_http_request_header(req, "X-Test");
        int n = snprintf(buf, sizeof(buf), "%s %s?%s len=%zu x=%s body=%s", req->method, req->path,
                         req->query, req->body_len, h != NULL ? h : "-", req->body);
        ds4_http_respond(ex, 200, "text/plain", buf, (size_t)n);
    } else if (strcmp(req->path, "/stream") == 0) {
        streamer_t *s = calloc(1, sizeof(*s));
        s->ex = ex;
        uv_timer_init(&loop, &s->timer);
        s->timer.data = s;
        ds4_http_exchange_on_close(ex, stream_closed, s);
        ds4_http_stream_begin(ex, 200, "text/event-stream");
        uv_timer_start(&s->timer, stream_tick, 10, 10);
    } else if (strcmp(req->path, "/slowstream") == 0) {
        streamer_t *s = calloc(1, sizeof(*s));
        s->ex = ex;
        s->sent = -1000; /* effectively endless */
        uv_timer_init(&loop, &s->timer);
        s->timer.data = s;
        ds4_http_exchange_on_close(ex, stream_closed, s);
        ds4_http_stream_begin(ex, 200, "text/event-stream");
        uv_timer_start(&s->timer, stream_tick, 10, 10);
    } else {
        ds4_http_respond(ex, 404, "text/plain", "no\n", 3);
    }
}

/* ---- client thread ---- */

typedef struct exchange {
    const char *send;
    size_t send_len;
    char got[8192];
    size_t got_len;
    size_t read_max; /* stop after this many bytes (0: until the server closes) */
    bool closed_by_server;
    bool done;
} exchange_t;

static void *client_main(void *arg)
{
    exchange_t *x = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        if (x->send_len > 0)
            (void)!write(fd, x->send, x->send_len);
        while (x->got_len < sizeof(x->got) - 1 && (x->read_max == 0 || x->got_len < x->read_max)) {
            ssize_t n =
                read(fd, x->got + x->got_len,
                     x->read_max != 0 ? x->read_max - x->got_len : sizeof(x->got) - 1 - x->got_len);
            if (n == 0)
                x->closed_by_server = true;
            if (n <= 0)
                break;
            x->got_len += (size_t)n;
        }
    }
    x->got[x->got_len] = '\0';
    close(fd);
    __atomic_store_n(&x->done, true, __ATOMIC_RELEASE);
    return NULL;
}

static void tick(uv_timer_t *t)
{
}

/* Runs one client exchange against the server while the loop turns. */
static void run_client(exchange_t *x)
{
    if (x->send_len == 0 && x->send != NULL)
        x->send_len = strlen(x->send);
    pthread_t th;
    pthread_create(&th, NULL, client_main, x);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick, 2, 2);
    uint64_t end = ds4_clock_now_ms() + 8000;
    while (!__atomic_load_n(&x->done, __ATOMIC_ACQUIRE) && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    pthread_join(th, NULL);
    /* let the server notice a close */
    uint64_t settle = ds4_clock_now_ms() + 50;
    while (ds4_clock_now_ms() < settle)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_simple_and_keepalive(void)
{
    exchange_t x = {.send = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n", .read_max = 0};
    x.read_max = strlen("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                        "Connection: keep-alive\r\n\r\nok\n");
    run_client(&x);
    DS4_CHECKF(strcmp(x.got, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                             "Connection: keep-alive\r\n\r\nok\n") == 0,
               "got [%s]", x.got);

    /* Two pipelined requests in one write (the second closes): answered in order. */
    exchange_t y = {.send = "POST /echo?a=1 HTTP/1.1\r\nHost: a\r\nX-Test: yes\r\n"
                            "Content-Length: 5\r\n\r\nabcde"
                            "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    run_client(&y);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n"
                       "Connection: keep-alive\r\n\r\nPOST /echo?a=1 len=5 x=yes body=abcde"
                       "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                       "Connection: close\r\n\r\nno\n";
    DS4_CHECKF(strcmp(y.got, want) == 0, "got [%s]", y.got);
    DS4_CHECK(y.closed_by_server);

    /* HTTP/1.0 without keep-alive: answered, then closed. */
    exchange_t z = {.send = "GET /health HTTP/1.0\r\n\r\n"};
    run_client(&z);
    DS4_CHECK_STR_CONTAINS(z.got, "Connection: close\r\n\r\nok\n");
    DS4_CHECK(z.closed_by_server);

    /* Chunked request body. */
    exchange_t w = {.send = "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                            "Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"};
    run_client(&w);
    DS4_CHECK_STR_CONTAINS(w.got, "POST /echo? len=5 x=- body=abcde");
}

static void test_streaming(void)
{
    exchange_t x = {.send = "GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n"};
    run_client(&x);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                       "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
                       "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
                       "5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n";
    DS4_CHECKF(strcmp(x.got, want) == 0, "got [%s]", x.got);
    DS4_CHECK(x.closed_by_server);

    /* Client disconnects mid-stream: the handler's close callback fires. */
    stream_closes = 0;
    exchange_t y = {.send = "GET /slowstream HTTP/1.1\r\n\r\n", .read_max = 150};
    run_client(&y);
    uint64_t end = ds4_clock_now_ms() + 2000;
    while (stream_closes == 0 && ds4_clock_now_ms() < end)
        uv_run(&loop, UV_RUN_NOWAIT);
    DS4_CHECK_EQ_INT(stream_closes, 1);
}

static void test_errors(void)
{
    exchange_t a = {.send = "GARBAGE\r\n\r\n"};
    run_client(&a);
    DS4_CHECK(strncmp(a.got, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    DS4_CHECK(a.closed_by_server);

    /* 20 KiB of headers against the 16 KiB limit. */
    static char big[24000];
    int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 20000);
    strcpy(big + n + 20000, "\r\n\r\n");
    exchange_t b = {.send = big};
    run_client(&b);
    DS4_CHECKF(strncmp(b.got, "HTTP/1.1 431 ", 13) == 0, "got [%.40s]", b.got);

    exchange_t c = {.send = "POST /echo HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n"};
    run_client(&c);
    DS4_CHECKF(strncmp(c.got, "HTTP/1.1 413 ", 13) == 0, "got [%.40s]", c.got);

    exchange_t d = {.send = "GET / HTTP/2.0\r\n\r\n"};
    run_client(&d);
    DS4_CHECKF(strncmp(d.got, "HTTP/1.1 505 ", 13) == 0, "got [%.40s]", d.got);
}

static bool closed_flag;
static void on_closed(void *arg)
{
    closed_flag = true;
}

int main(void)
{
    uv_loop_init(&loop);
    ds4_http_server_params_t p = ds4_http_server_params_default();
    ds4_http_server_h srv = NULL;
    if (ds4_http_server_create(&loop, &p, handler, NULL, &srv) != DS4_OK)
        return 1;
    port = ds4_http_server_port(srv);
    DS4_RUN(test_simple_and_keepalive);
    DS4_RUN(test_streaming);
    DS4_RUN(test_errors);
    ds4_http_server_close(srv, on_closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    DS4_CHECK(closed_flag);
    DS4_CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return ds4_test_finish();
}
