#include "ds4/status.h"

#define DS4_STATUS_TABLE(X)                                          \
    X(DS4_OK, "ok")                                                  \
    X(DS4_ERR_INTERNAL, "internal error")                            \
    X(DS4_ERR_INVALID_ARG, "invalid argument")                       \
    X(DS4_ERR_NO_MEMORY, "out of memory")                            \
    X(DS4_ERR_IO, "i/o error")                                       \
    X(DS4_ERR_NOT_FOUND, "not found")                                \
    X(DS4_ERR_EXISTS, "already exists")                              \
    X(DS4_ERR_UNSUPPORTED, "unsupported")                            \
    X(DS4_ERR_TIMEOUT, "timed out")                                  \
    X(DS4_ERR_CANCELLED, "cancelled")                                \
    X(DS4_ERR_BUSY, "busy")                                          \
    X(DS4_ERR_NO_DEVICE, "no device")                                \
    X(DS4_ERR_OUT_OF_RANGE, "out of range")                          \
    X(DS4_ERR_SHUTDOWN, "shutting down")                             \
    X(DS4_ERR_PARSE, "parse error")                                  \
    X(DS4_ERR_CONFIG, "invalid config")                              \
    X(DS4_ERR_CHECKPOINT, "invalid checkpoint")                      \
    X(DS4_ERR_INVALID_UTF8, "invalid utf-8")                         \
    X(DS4_ERR_TOKENIZER, "invalid tokenizer")                        \
    X(DS4_ERR_VOCAB, "token id outside vocabulary")                  \
    X(DS4_ERR_TEMPLATE, "chat template error")                       \
    X(DS4_ERR_MODEL, "model error")                                  \
    X(DS4_ERR_CONTEXT_FULL, "context length exceeded")               \
    X(DS4_ERR_NUMERIC, "numeric error")                              \
    X(DS4_ERR_BACKEND, "backend error")                              \
    X(DS4_ERR_TRANSPORT, "transport error")                          \
    X(DS4_ERR_PEER_GONE, "peer gone")                                \
    X(DS4_ERR_KV_CORRUPT, "kv corrupt")                              \
    X(DS4_ERR_KV_MANIFEST, "kv manifest mismatch")                   \
    X(DS4_ERR_STALE, "stale incarnation")                            \
    X(DS4_ERR_NO_BLOCKS, "no free kv blocks")                        \
    X(DS4_ERR_KV_INCOMPLETE, "kv incomplete")                        \
    X(DS4_ERR_PROTOCOL, "protocol error")                            \
    X(DS4_ERR_BAD_REQUEST, "bad request")                            \
    X(DS4_ERR_UNAVAILABLE, "unavailable")                            \
    X(DS4_ERR_VERSION, "version mismatch")                           \
    X(DS4_ERR_OVERLOADED, "overloaded")

const char *ds4_status_str(ds4_status_t status)
{
    switch (status) {
#define X(code, text) case code: return text;
        DS4_STATUS_TABLE(X)
#undef X
    }
    return "unknown status";
}

const char *ds4_status_name(ds4_status_t status)
{
    switch (status) {
#define X(code, text) case code: return #code;
        DS4_STATUS_TABLE(X)
#undef X
    }
    return "DS4_ERR_UNKNOWN";
}
