/*
 * ds4/status.h - the one status type of ds4.
 *
 * Every fallible function returns ds4_status_t. DS4_OK is 0; errors are negative and grouped in
 * ranges so a caller can classify without listing codes:
 *   -1   .. -99   generic / argument / resource
 *   -100 .. -199  parsing and files (configs, checkpoints, tokenizer, JSON)
 *   -200 .. -299  model / engine
 *   -300 .. -399  transport (UCX, KV transfer, network peers)
 *   -400 .. -499  protocol / requests (gRPC, HTTP, admission)
 * New codes go at the end of their range; numbers are never reused (they appear in logs and on
 * the wire).
 */
#ifndef DS4_STATUS_H
#define DS4_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ds4_status {
    DS4_OK = 0,

    /* generic / resource */
    DS4_ERR_INTERNAL = -1,        /* a bug or an impossible state was detected */
    DS4_ERR_INVALID_ARG = -2,     /* caller passed a bad argument */
    DS4_ERR_NO_MEMORY = -3,       /* allocation failed */
    DS4_ERR_IO = -4,              /* read/write/open/mmap failed (errno logged) */
    DS4_ERR_NOT_FOUND = -5,       /* a named thing does not exist */
    DS4_ERR_EXISTS = -6,          /* a named thing already exists */
    DS4_ERR_UNSUPPORTED = -7,     /* a feature ds4 does not implement, named in the message */
    DS4_ERR_TIMEOUT = -8,         /* a deadline passed */
    DS4_ERR_CANCELLED = -9,       /* the operation was cancelled */
    DS4_ERR_BUSY = -10,           /* try again later (queue full, no free blocks) */
    DS4_ERR_NO_DEVICE = -11,      /* no accelerator present for the requested backend */
    DS4_ERR_OUT_OF_RANGE = -12,   /* an index or length outside its bounds */
    DS4_ERR_SHUTDOWN = -13,       /* the component is stopping */

    /* parsing and files */
    DS4_ERR_PARSE = -100,         /* malformed input (syntax) */
    DS4_ERR_CONFIG = -101,        /* a config is well-formed but invalid */
    DS4_ERR_CHECKPOINT = -102,    /* a checkpoint/safetensors file is invalid */
    DS4_ERR_INVALID_UTF8 = -103,  /* text is not valid UTF-8 (offset in the message) */
    DS4_ERR_TOKENIZER = -104,     /* tokenizer.json invalid or unsupported */
    DS4_ERR_VOCAB = -105,         /* a token id outside the vocabulary */
    DS4_ERR_TEMPLATE = -106,      /* chat messages cannot be rendered */

    /* model / engine */
    DS4_ERR_MODEL = -200,         /* tensor missing, mis-shaped or mis-typed */
    DS4_ERR_CONTEXT_FULL = -201,  /* sequence would exceed the context length */
    DS4_ERR_NUMERIC = -202,       /* non-finite values where finite ones are required */
    DS4_ERR_BACKEND = -203,       /* a compute backend failed */

    /* transport */
    DS4_ERR_TRANSPORT = -300,     /* the transport failed (UCX status logged) */
    DS4_ERR_PEER_GONE = -301,     /* the peer disconnected or restarted */
    DS4_ERR_KV_CORRUPT = -302,    /* KV payload failed verification (CRC/sequence) */
    DS4_ERR_KV_MANIFEST = -303,   /* KV manifests of two peers differ */
    DS4_ERR_STALE = -304,         /* message from an old incarnation of a peer */
    DS4_ERR_NO_BLOCKS = -305,     /* the KV pool has no room */
    DS4_ERR_KV_INCOMPLETE = -306, /* KV not complete and verified */

    /* protocol / requests */
    DS4_ERR_PROTOCOL = -400,      /* a peer broke the protocol */
    DS4_ERR_BAD_REQUEST = -401,   /* a client request is invalid (field named) */
    DS4_ERR_UNAVAILABLE = -402,   /* no worker can serve now */
    DS4_ERR_VERSION = -403,       /* wire version mismatch */
    DS4_ERR_OVERLOADED = -404,    /* admission control rejected the request */
} ds4_status_t;

/* Short, stable, lowercase name of a status ("ok", "invalid argument", ...). Never NULL. */
const char *ds4_status_str(ds4_status_t status);

/* Stable identifier of a status ("DS4_ERR_KV_CORRUPT"). Never NULL. */
const char *ds4_status_name(ds4_status_t status);

#ifdef __cplusplus
}
#endif
#endif /* DS4_STATUS_H */
