/*
 * ds4/http.h - an HTTP/1.1 server on a libuv loop (parser: Debian's libhttp-parser).
 *
 * Serves /health /ready /metrics of every daemon and, on the router, the OpenAI-compatible API
 * with SSE streaming. Keep-alive and pipelining are supported (requests on one connection are
 * answered in order: the next is parsed only after the current exchange ends). Limits: header
 * bytes, body bytes, idle time; a violation is answered (400 / 408 / 413 / 431 / 505) and the
 * connection closed. Everything runs on the loop thread; every function here must be called
 * there.
 *
 * An exchange (one request and its response) belongs to the handler from the handler call until
 * it ends it with ds4_http_respond or ds4_http_stream_end, exactly once; the handle is invalid
 * after that. If the client disconnects first, the close callback fires once (cancel the work
 * behind it) and the handler must still end the exchange (writes are then dropped).
 */
#ifndef DS4_HTTP_H
#define DS4_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "ds4/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_http_server *ds4_http_server_h;
typedef struct ds4_http_exchange *ds4_http_exchange_h;

typedef struct ds4_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* raw path without the query ("/v1/models") */
    const char *query;  /* raw query without '?' ("" when none) */
    const char *body;   /* NUL-terminated copy of the body ("" when none) */
    size_t body_len;
    size_t n_headers;
    const char *const *header_names; /* lowercased */
    const char *const *header_values;
} ds4_http_request_t;

/* Value of the first header `name` (case-insensitive), or NULL. */
const char *ds4_http_request_header(const ds4_http_request_t *req, const char *name);

/* `req` and its strings are valid until the exchange ends. */
typedef void (*ds4_http_handler_cb)(ds4_http_exchange_h ex, const ds4_http_request_t *req,
                                    void *arg);
typedef void (*ds4_http_closed_cb)(ds4_http_exchange_h ex, void *arg);
typedef void (*ds4_http_server_closed_cb)(void *arg);

typedef struct ds4_http_server_params {
    const char *host;         /* "127.0.0.1" */
    int port;                 /* 0 = pick a free one */
    size_t max_header_bytes;  /* request line + headers; default 16 KiB */
    size_t max_body_bytes;    /* default 16 MiB */
    uint32_t idle_timeout_ms; /* a connection with no request in progress; default 60 s */
    size_t max_connections;   /* more are accepted and closed at once; default 1024 */
} ds4_http_server_params_t;

ds4_http_server_params_t ds4_http_server_params_default(void);
/* Binds and listens (DS4_ERR_IO naming the address when it cannot). */
ds4_status_t ds4_http_server_create(uv_loop_t *loop, const ds4_http_server_params_t *params,
                                    ds4_http_handler_cb handler, void *arg, ds4_http_server_h *out);
int ds4_http_server_port(ds4_http_server_h server);
/* Stops listening and closes every connection (open exchanges see their close callback).
 * `closed` fires when all memory is released, which needs every open exchange to be ended. */
void ds4_http_server_close(ds4_http_server_h server, ds4_http_server_closed_cb closed, void *arg);

/* A complete response (Content-Length). `content_type` may be NULL for an empty body. */
void ds4_http_respond(ds4_http_exchange_h ex, int status, const char *content_type,
                      const char *body, size_t body_len);
/* Starts a chunked response ("text/event-stream" also gets Cache-Control: no-cache). */
ds4_status_t ds4_http_stream_begin(ds4_http_exchange_h ex, int status, const char *content_type);
/* One chunk; DS4_ERR_PEER_GONE once the client is gone (nothing written). */
ds4_status_t ds4_http_stream_write(ds4_http_exchange_h ex, const char *data, size_t len);
void ds4_http_stream_end(ds4_http_exchange_h ex);
void ds4_http_exchange_on_close(ds4_http_exchange_h ex, ds4_http_closed_cb cb, void *arg);
bool ds4_http_exchange_closed(ds4_http_exchange_h ex);
/* Bytes queued to the socket and not yet written (flow control for streams). */
size_t ds4_http_exchange_pending_bytes(ds4_http_exchange_h ex);

/* Reason phrase of a status code ("Not Found"). */
const char *ds4_http_reason(int status);

#ifdef __cplusplus
}
#endif
#endif /* DS4_HTTP_H */
