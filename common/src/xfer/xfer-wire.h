/*
 * Messages of the KV transfer protocol (internal). Every message starts with xfer_hdr_t; all
 * integers little-endian; sizes are static_assert'ed because these cross processes.
 * docs/kv-transfer.md has the sequence diagram.
 */
#ifndef DS4_XFER_WIRE_H
#define DS4_XFER_WIRE_H

#include <assert.h>
#include <stdint.h>

#define XFER_MAGIC 0x58345344u /* "DS4X" */
#define XFER_WIRE_VERSION 1u

typedef enum xfer_msg_type {
    XFER_MSG_HELLO = 1,     /* P->D  manifest; first message of a connection */
    XFER_MSG_WELCOME = 2,   /* D->P  status (manifest/policy), scratch region + rkey */
    XFER_MSG_PING = 3,      /* P->D  preflight latency probe */
    XFER_MSG_PONG = 4,      /* D->P  echo */
    XFER_MSG_BEGIN = 5,     /* P->D  binds a reservation to this connection + incarnation */
    XFER_MSG_RECORD = 6,    /* P->D  completion record of one group */
    XFER_MSG_RESULT = 7,    /* D->P  every group verified (status OK) */
    XFER_MSG_ABORT = 8,     /* both  the transfer ended with an error; after a flush from P */
    XFER_MSG_ABORT_ACK = 9, /* P->D  the sender stopped writing (flushed) after D's ABORT */
    XFER_MSG_PROGRESS = 10, /* P->D  rows [0, row_end) of a group are written (lets decode
                               checksum them while they are still in cache) */
} xfer_msg_type_t;

typedef struct xfer_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint64_t sender_inc;   /* incarnation of the process sending this message */
    uint64_t receiver_inc; /* incarnation the sender believes the receiver has (0 in HELLO) */
    uint64_t request_id;   /* 0 for connection-level messages */
} xfer_hdr_t;
static_assert(sizeof(xfer_hdr_t) == 32, "xfer header is a wire format");

typedef struct xfer_hello {
    xfer_hdr_t hdr;
    uint32_t manifest_len; /* encoded manifest follows */
    uint32_t flags;        /* reserved, 0 */
} xfer_hello_t;
static_assert(sizeof(xfer_hello_t) == 40, "hello is a wire format");

typedef struct xfer_welcome {
    xfer_hdr_t hdr;
    int32_t status;        /* ds4_status_t; non-zero: refused, text says why */
    uint32_t text_len;
    uint64_t scratch_addr; /* preflight area at the end of the region (valid when status == 0) */
    uint32_t scratch_bytes;
    uint32_t rkey_len;     /* rkey of the whole region follows, then the text */
    uint64_t region_addr;  /* the registered region (pool blocks + scratch) */
    uint64_t region_bytes;
} xfer_welcome_t;
static_assert(sizeof(xfer_welcome_t) == 72, "welcome is a wire format");

typedef struct xfer_ping {
    xfer_hdr_t hdr;
    uint64_t t_ns; /* sender's clock, echoed */
    uint32_t seq;
    uint32_t reserved;
} xfer_ping_t;
static_assert(sizeof(xfer_ping_t) == 48, "ping is a wire format");

typedef struct xfer_begin {
    xfer_hdr_t hdr;
    uint64_t n_tokens;
    uint64_t manifest_digest;
} xfer_begin_t;
static_assert(sizeof(xfer_begin_t) == 48, "begin is a wire format");

typedef struct xfer_record {
    xfer_hdr_t hdr;
    uint32_t seq;   /* 0, 1, 2 ... per transfer, in sending order */
    uint32_t group; /* manifest group index */
    uint64_t n_rows;
    uint32_t crc;   /* CRC32C of the group's rows in row order */
    uint32_t reserved;
} xfer_record_t;
static_assert(sizeof(xfer_record_t) == 56, "record is a wire format");

typedef struct xfer_progress {
    xfer_hdr_t hdr;
    uint32_t group;
    uint32_t reserved;
    uint64_t row_end;
} xfer_progress_t;
static_assert(sizeof(xfer_progress_t) == 48, "progress is a wire format");

typedef struct xfer_status_msg {
    xfer_hdr_t hdr;
    int32_t status; /* ds4_status_t */
    uint32_t text_len; /* text follows (not NUL-terminated) */
} xfer_status_msg_t;
static_assert(sizeof(xfer_status_msg_t) == 40, "result/abort is a wire format");

#define XFER_TEXT_MAX 512u

#endif /* DS4_XFER_WIRE_H */
