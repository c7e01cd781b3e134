/* HTTP/1.1 server: libuv TCP + libhttp-parser, one exchange at a time per connection. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <http_parser.h>

#include "ds4/alloc.h"
#include "ds4/buf.h"
#include "ds4/http.h"
#include "ds4/log.h"

typedef struct conn conn_t;

struct ds4_http_exchange {
    conn_t *conn; /* NULL once the connection is gone */
    ds4_http_server_h server;
    ds4_http_request_t req;
    char *method, *path, *query, *body;
    char **names, **values;
    bool keep_alive, head, streaming, closed;
    ds4_http_closed_cb closed_cb;
    void *closed_arg;
};

struct conn {
    ds4_http_server_h server;
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_parser parser;
    conn_t *prev, *next;
    /* the request being parsed */
    ds4_buf_t url, body, field, value;
    char **names, **values;
    size_t n_headers;
    size_t header_bytes;
    bool in_value, message_ready;
    int error_status; /* an HTTP status to answer before closing, 0 = none */
    ds4_buf_t pending;    /* received, not yet parsed */
    size_t pending_off;
    struct ds4_http_exchange *ex;
    bool closing, in_feed, reading;
    int open_handles;
    size_t write_bytes;
};

struct ds4_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    ds4_http_server_params_t params;
    ds4_http_handler_cb handler;
    void *arg;
    int port;
    conn_t *conns;
    size_t n_conns;
    size_t n_exchanges; /* exchanges not yet ended by their handler */
    bool closing, listener_closed;
    ds4_http_server_closed_cb closed_cb;
    void *closed_arg;
};

typedef struct write_req {
    uv_write_t req;
    conn_t *conn;
    size_t len;
    char data[];
} write_req_t;

static http_parser_settings settings;
static void conn_close(conn_t *c);
static void conn_feed(conn_t *c);
static void server_maybe_closed(ds4_http_server_h s);
static void listener_closed(uv_handle_t *h);

const char *ds4_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

const char *ds4_http_request_header(const ds4_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->header_names[i], name) == 0)
            return req->header_values[i];
    return NULL;
}

ds4_http_server_params_t ds4_http_server_params_default(void)
{
    ds4_http_server_params_t p = {
        .host = "127.0.0.1",
        .port = 0,
        .max_header_bytes = 16u << 10,
        .max_body_bytes = 16u << 20,
        .idle_timeout_ms = 60000,
        .max_connections = 1024,
    };
    return p;
}

/* ---- writing ---- */

static void write_done(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)(void *)req; /* req is the first member */
    conn_t *c = w->conn;
    c->write_bytes -= w->len;
    ds4_free(w);
    if (status != 0 && !c->closing)
        conn_close(c);
}

static bool conn_write(conn_t *c, const char *a, size_t alen, const char *b, size_t blen,
                       const char *d, size_t dlen)
{
    if (c == NULL || c->closing)
        return false;
    size_t len = alen + blen + dlen;
    write_req_t *w = ds4_malloc(sizeof(*w) + len);
    if (w == NULL) {
        conn_close(c);
        return false;
    }
    memcpy(w->data, a, alen);
    if (blen > 0)
        memcpy(w->data + alen, b, blen);
    if (dlen > 0)
        memcpy(w->data + alen + blen, d, dlen);
    w->conn = c;
    w->len = len;
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, write_done) != 0) {
        ds4_free(w);
        conn_close(c);
        return false;
    }
    c->write_bytes += len;
    return true;
}

/* ---- connection life ---- */

static void conn_reset_request(conn_t *c)
{
    ds4_buf_free(&c->url);
    ds4_buf_free(&c->body);
    ds4_buf_free(&c->field);
    ds4_buf_free(&c->value);
    for (size_t i = 0; i < c->n_headers; i++) {
        ds4_free(c->names[i]);
        ds4_free(c->values[i]);
    }
    ds4_free(c->names);
    ds4_free(c->values);
    c->names = c->values = NULL;
    c->n_headers = 0;
    c->header_bytes = 0;
    c->in_value = false;
    c->message_ready = false;
}

static void handle_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    ds4_http_server_h s = c->server;
    conn_reset_request(c);
    ds4_buf_free(&c->pending);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->n_conns--;
    ds4_free(c);
    server_maybe_closed(s);
}

static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct ds4_http_exchange *ex = c->ex;
    if (ex != NULL) {
        c->ex = NULL;
        ex->conn = NULL;
        ex->closed = true;
        if (ex->closed_cb != NULL)
            ex->closed_cb(ex, ex->closed_arg);
    }
    uv_close((uv_handle_t *)&c->timer, handle_closed);
    uv_close((uv_handle_t *)&c->tcp, handle_closed);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    ds4_free(req);
    conn_close(c);
}

/* Closes after the queued writes are flushed. */
static void conn_finish(conn_t *c)
{
    if (c->closing)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_shutdown_t *req = ds4_malloc(sizeof(*req));
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_done) != 0) {
        ds4_free(req);
        conn_close(c);
        return;
    }
    req->data = c;
}

static void idle_expired(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (c->ex == NULL)
        conn_close(c);
}

static void error_response(conn_t *c, int status, const char *why)
{
    char head[256], body[160];
    int bl =
        snprintf(body, sizeof(body), "{\"error\":{\"message\":\"%s\",\"code\":%d}}\n", why, status);
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n",
                      status, ds4_http_reason(status), bl);
    conn_write(c, head, (size_t)hl, body, (size_t)bl, NULL, 0);
    conn_finish(c);
}

/* ---- parser callbacks ---- */

static bool count_header(conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->server->params.max_header_bytes) {
        c->error_status = 431;
        return false;
    }
    return true;
}

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    conn_reset_request(c);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (!count_header(c, n) || !ds4_buf_put(&c->url, at, n))
        return -1;
    return 0;
}

static bool push_header(conn_t *c)
{
    if (c->field.p == NULL)
        return true;
    char **names = ds4_realloc_array(c->names, c->n_headers + 1, sizeof(*names));
    if (names == NULL)
        return false;
    c->names = names;
    char **values = ds4_realloc_array(c->values, c->n_headers + 1, sizeof(*values));
    if (values == NULL)
        return false;
    c->values = values;
    for (char *q = c->field.p; *q != '\0'; q++)
        *q = (char)tolower((unsigned char)*q);
    c->names[c->n_headers] = c->field.p;
    c->values[c->n_headers] = c->value.p != NULL ? c->value.p : ds4_strdup("");
    if (c->values[c->n_headers] == NULL)
        return false;
    c->n_headers++;
    memset(&c->field, 0, sizeof(c->field));
    memset(&c->value, 0, sizeof(c->value));
    return true;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->in_value) {
        if (!push_header(c))
            return -1;
        c->in_value = false;
    }
    if (!count_header(c, n) || !ds4_buf_put(&c->field, at, n))
        return -1;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    c->in_value = true;
    if (!count_header(c, n) || !ds4_buf_put(&c->value, at, n))
        return -1;
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    if (c->in_value && !push_header(c))
        return -1;
    c->in_value = false;
    if (p->http_major != 1) {
        c->error_status = 505;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) != 0 &&
        p->content_length > (uint64_t)c->server->params.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->body.len + n > c->server->params.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (!ds4_buf_put(&c->body, at, n))
        return -1;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->message_ready = true;
    http_parser_pause(p, 1);
    return 0;
}

/* Moves the parsed request into a new exchange and calls the handler. */
static void dispatch(conn_t *c)
{
    ds4_http_server_h s = c->server;
    struct ds4_http_exchange *ex = ds4_calloc(1, sizeof(*ex));
    if (ex == NULL) {
        error_response(c, 500, "out of memory");
        return;
    }
    const char *url = c->url.p != NULL ? c->url.p : "/";
    const char *q = strchr(url, '?');
    ex->method = ds4_strdup(http_method_str((enum http_method)c->parser.method));
    ex->path = q != NULL ? ds4_strndup(url, (size_t)(q - url)) : ds4_strdup(url);
    ex->query = ds4_strdup(q != NULL ? q + 1 : "");
    ex->body = c->body.p != NULL ? c->body.p : ds4_strdup("");
    size_t body_len = c->body.len;
    memset(&c->body, 0, sizeof(c->body));
    ex->names = c->names;
    ex->values = c->values;
    ex->req.n_headers = c->n_headers;
    c->names = c->values = NULL;
    c->n_headers = 0;
    ex->server = s;
    if (ex->method == NULL || ex->path == NULL || ex->query == NULL || ex->body == NULL) {
        ex->conn = NULL;
        s->n_exchanges++;
        ds4_http_respond(ex, 500, NULL, NULL, 0);
        error_response(c, 500, "out of memory");
        return;
    }
    ex->req.method = ex->method;
    ex->req.path = ex->path;
    ex->req.query = ex->query;
    ex->req.body = ex->body;
    ex->req.body_len = body_len;
    ex->req.header_names = (const char *const *)ex->names;
    ex->req.header_values = (const char *const *)ex->values;
    ex->keep_alive = http_should_keep_alive(&c->parser) != 0 && !s->closing;
    ex->head = c->parser.method == HTTP_HEAD;
    ex->conn = c;
    ex->server = s;
    c->ex = ex;
    s->n_exchanges++;
    uv_timer_stop(&c->timer);
    s->handler(ex, &ex->req, s->arg);
}

static void conn_feed(conn_t *c)
{
    if (c->in_feed)
        return;
    c->in_feed = true;
    while (!c->closing && c->ex == NULL && c->pending_off < c->pending.len) {
        const char *data = c->pending.p + c->pending_off;
        size_t avail = c->pending.len - c->pending_off;
        size_t n = http_parser_execute(&c->parser, &settings, data, avail);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        c->pending_off += n;
        if (e == HPE_PAUSED && c->message_ready) {
            c->message_ready = false;
            http_parser_pause(&c->parser, 0);
            dispatch(c);
            continue;
        }
        if (e != HPE_OK) {
            int status = c->error_status != 0 ? c->error_status : 400;
            ds4_log_debug("http: bad request status %d: %s", status, http_errno_description(e));
            error_response(c, status,
                           status == 400 ? http_errno_description(e) : ds4_http_reason(status));
            break;
        }
        if (n < avail)
            break;
    }
    if (c->pending_off == c->pending.len) {
        c->pending.len = 0;
        c->pending_off = 0;
    }
    c->in_feed = false;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    conn_t *c = h->data;
    size_t want = 64u << 10;
    if (c->pending.cap - c->pending.len < want + 1) {
        /* Compact before growing. */
        if (c->pending_off > 0) {
            memmove(c->pending.p, c->pending.p + c->pending_off, c->pending.len - c->pending_off);
            c->pending.len -= c->pending_off;
            c->pending_off = 0;
        }
        if (c->pending.cap - c->pending.len < want + 1) {
            char *grown = ds4_realloc_array(c->pending.p, c->pending.len + want + 1, 1);
            if (grown == NULL) {
                *out = uv_buf_init(NULL, 0);
                return;
            }
            c->pending.p = grown;
            c->pending.cap = c->pending.len + want + 1;
        }
    }
    *out = uv_buf_init(c->pending.p + c->pending.len, (unsigned)want);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    conn_t *c = stream->data;
    if (nread < 0) {
        /* EOF or reset: a client that goes away mid-exchange has disconnected. */
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    c->pending.len += (size_t)nread;
    size_t limit =
        c->server->params.max_header_bytes + c->server->params.max_body_bytes + (64u << 10);
    if (c->ex != NULL && c->pending.len - c->pending_off > limit) {
        /* Pipelined input piling up behind a long exchange: stop reading for now. */
        uv_read_stop(stream);
        c->reading = false;
        return;
    }
    conn_feed(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    ds4_http_server_h s = listener->data;
    if (status != 0)
        return;
    conn_t *c = ds4_calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->server = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        s->n_conns > s->params.max_connections) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, idle_expired, s->params.idle_timeout_ms, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    c->reading = true;
}

ds4_status_t ds4_http_server_create(uv_loop_t *loop, const ds4_http_server_params_t *params,
                                    ds4_http_handler_cb handler, void *arg, ds4_http_server_h *out)
{
    if (loop == NULL || params == NULL || handler == NULL || out == NULL)
        return DS4_ERR_INVALID_ARG;
    http_parser_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;

    ds4_http_server_h s = ds4_calloc(1, sizeof(*s));
    if (s == NULL)
        return DS4_ERR_NO_MEMORY;
    s->loop = loop;
    s->params = *params;
    ds4_http_server_params_t d = ds4_http_server_params_default();
    if (s->params.host == NULL)
        s->params.host = d.host;
    if (s->params.max_header_bytes == 0)
        s->params.max_header_bytes = d.max_header_bytes;
    if (s->params.max_body_bytes == 0)
        s->params.max_body_bytes = d.max_body_bytes;
    if (s->params.idle_timeout_ms == 0)
        s->params.idle_timeout_ms = d.idle_timeout_ms;
    if (s->params.max_connections == 0)
        s->params.max_connections = d.max_connections;
    s->handler = handler;
    s->arg = arg;

    struct sockaddr_storage addr;
    int rc = uv_ip4_addr(s->params.host, params->port, (struct sockaddr_in *)&addr);
    if (rc != 0)
        rc = uv_ip6_addr(s->params.host, params->port, (struct sockaddr_in6 *)&addr);
    if (rc != 0) {
        ds4_log_error("http: bad listen address %s", s->params.host);
        ds4_free(s);
        return DS4_ERR_INVALID_ARG;
    }
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc != 0) {
        ds4_log_error("http: cannot listen on %s:%d: %s", s->params.host, params->port,
                      uv_strerror(rc));
        /* The handle is registered with the loop: close it, and free in its close callback. */
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, listener_closed);
        return DS4_ERR_IO;
    }
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
    s->port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&got)->sin_port);
    *out = s;
    return DS4_OK;
}

int ds4_http_server_port(ds4_http_server_h s)
{
    return s->port;
}

static void server_maybe_closed(ds4_http_server_h s)
{
    if (!s->closing || !s->listener_closed || s->n_conns != 0 || s->n_exchanges != 0)
        return;
    ds4_http_server_closed_cb cb = s->closed_cb;
    void *arg = s->closed_arg;
    ds4_free(s);
    if (cb != NULL)
        cb(arg);
}

static void listener_closed(uv_handle_t *h)
{
    ds4_http_server_h s = h->data;
    s->listener_closed = true;
    server_maybe_closed(s);
}

void ds4_http_server_close(ds4_http_server_h s, ds4_http_server_closed_cb closed, void *arg)
{
    if (s == NULL || s->closing)
        return;
    s->closing = true;
    s->closed_cb = closed;
    s->closed_arg = arg;
    uv_close((uv_handle_t *)&s->listener, listener_closed);
    for (conn_t *c = s->conns; c != NULL; c = c->next)
        conn_close(c);
}

/* ---- responses ---- */

static void exchange_end(struct ds4_http_exchange *ex)
{
    ds4_http_server_h s = ex->server;
    conn_t *c = ex->conn;
    bool keep = ex->keep_alive;
    ds4_free(ex->method);
    ds4_free(ex->path);
    ds4_free(ex->query);
    ds4_free(ex->body);
    for (size_t i = 0; i < ex->req.n_headers; i++) {
        ds4_free(ex->names[i]);
        ds4_free(ex->values[i]);
    }
    ds4_free(ex->names);
    ds4_free(ex->values);
    ds4_free(ex);
    s->n_exchanges--;
    if (c != NULL) {
        c->ex = NULL;
        if (!keep || s->closing) {
            conn_finish(c);
        } else {
            uv_timer_start(&c->timer, idle_expired, s->params.idle_timeout_ms, 0);
            if (!c->reading) {
                uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
                c->reading = true;
            }
            conn_feed(c);
        }
    }
    server_maybe_closed(s);
}

void ds4_http_respond(ds4_http_exchange_h ex, int status, const char *content_type,
                      const char *body, size_t body_len)
{
    DS4_ASSERT(!ex->streaming);
    if (ex->conn != NULL) {
        char head[512];
        int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n", status, ds4_http_reason(status));
        if (content_type != NULL)
            n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: %s\r\n", content_type);
        n += snprintf(head + n, sizeof(head) - (size_t)n,
                      "Content-Length: %zu\r\nConnection: %s\r\n\r\n", body_len,
                      ex->keep_alive ? "keep-alive" : "close");
        conn_write(ex->conn, head, (size_t)n, ex->head ? NULL : body, ex->head ? 0 : body_len, NULL,
                   0);
    }
    exchange_end(ex);
}

ds4_status_t ds4_http_stream_begin(ds4_http_exchange_h ex, int status, const char *content_type)
{
    DS4_ASSERT(!ex->streaming);
    ex->streaming = true;
    if (ex->conn == NULL)
        return DS4_ERR_PEER_GONE;
    char head[512];
    bool sse = content_type != NULL && strncmp(content_type, "text/event-stream", 17) == 0;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n%s"
                     "Connection: %s\r\n\r\n",
                     status, ds4_http_reason(status),
                     content_type != NULL ? content_type : "application/octet-stream",
                     sse ? "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n" : "",
                     ex->keep_alive ? "keep-alive" : "close");
    return conn_write(ex->conn, head, (size_t)n, NULL, 0, NULL, 0) ? DS4_OK : DS4_ERR_PEER_GONE;
}

ds4_status_t ds4_http_stream_write(ds4_http_exchange_h ex, const char *data, size_t len)
{
    DS4_ASSERT(ex->streaming);
    if (ex->conn == NULL)
        return DS4_ERR_PEER_GONE;
    if (len == 0)
        return DS4_OK; /* a zero-length chunk would end the stream */
    char size[32];
    int n = snprintf(size, sizeof(size), "%zx\r\n", len);
    return conn_write(ex->conn, size, (size_t)n, data, len, "\r\n", 2) ? DS4_OK : DS4_ERR_PEER_GONE;
}

void ds4_http_stream_end(ds4_http_exchange_h ex)
{
    DS4_ASSERT(ex->streaming);
    if (ex->conn != NULL)
        conn_write(ex->conn, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
    exchange_end(ex);
}

void ds4_http_exchange_on_close(ds4_http_exchange_h ex, ds4_http_closed_cb cb, void *arg)
{
    ex->closed_cb = cb;
    ex->closed_arg = arg;
}

bool ds4_http_exchange_closed(ds4_http_exchange_h ex)
{
    return ex->closed;
}

size_t ds4_http_exchange_pending_bytes(ds4_http_exchange_h ex)
{
    return ex->conn != NULL ? ex->conn->write_bytes : 0;
}
