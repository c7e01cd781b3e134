/*
 * test_proto: the generated protobuf-c code of proto/ against wire bytes worked out by hand from
 * the protobuf encoding rules (varint keys (field << 3 | wire type), packed repeated scalars,
 * little-endian fixed32/fixed64), round trips of every message kind the daemons exchange, and
 * rejection of malformed input.
 */
#include <stdint.h>

#include "ds4.pb-c.h"
#include "ds4_worker.pb-c.h"
#include "health.pb-c.h"
#include "test.h"

static void test_generate_request_wire_bytes(void)
{
    Ds4__V1__GenerateRequest req = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__TokenIds ids = DS4__V1__TOKEN_IDS__INIT;
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    uint32_t id_values[] = {1, 300};
    req.api_version = 1;
    req.model = "tiny";
    ids.n_ids = 2;
    ids.ids = id_values;
    req.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS;
    req.prompt_ids = &ids;
    sp.temperature = 0.5f;
    sp.max_tokens = 16;
    req.sampling = &sp;

    /* By hand: 08 01 | 12 04 "tiny" | 22 05 (0a 03 01 ac 02) | 3a 07 (0d 0000003f 50 10) */
    static const uint8_t want[] = {
        0x08, 0x01,                               /* api_version = 1 */
        0x12, 0x04, 't',  'i',  'n',  'y',        /* model */
        0x22, 0x05, 0x0a, 0x03, 0x01, 0xac, 0x02, /* prompt_ids {ids: [1, 300] packed} */
        0x3a, 0x07, 0x0d, 0x00, 0x00, 0x00, 0x3f, /* sampling {temperature 0.5f */
        0x50, 0x10,                               /*           max_tokens 16} */
    };
    uint8_t buf[64];
    size_t n = ds4__v1__generate_request__get_packed_size(&req);
    DS4_CHECK_EQ_INT(n, sizeof(want));
    DS4_CHECK_EQ_INT(ds4__v1__generate_request__pack(&req, buf), sizeof(want));
    DS4_CHECK(memcmp(buf, want, sizeof(want)) == 0);

    Ds4__V1__GenerateRequest *back = ds4__v1__generate_request__unpack(NULL, sizeof(want), want);
    DS4_CHECK(back != NULL);
    if (back == NULL)
        return;
    DS4_CHECK_EQ_INT(back->api_version, 1);
    DS4_CHECK(strcmp(back->model, "tiny") == 0);
    DS4_CHECK_EQ_INT(back->prompt_case, DS4__V1__GENERATE_REQUEST__PROMPT_PROMPT_IDS);
    DS4_CHECK_EQ_INT(back->prompt_ids->n_ids, 2);
    DS4_CHECK_EQ_INT(back->prompt_ids->ids[1], 300);
    DS4_CHECK(back->sampling != NULL && back->sampling->temperature == 0.5f);
    DS4_CHECK_EQ_INT(back->sampling->max_tokens, 16);
    DS4_CHECK_EQ_INT(back->sampling->top_k, 0);
    ds4__v1__generate_request__free_unpacked(back, NULL);
}

static void test_chat_request_round_trip(void)
{
    Ds4__V1__GenerateRequest req = DS4__V1__GENERATE_REQUEST__INIT;
    Ds4__V1__ChatPrompt chat = DS4__V1__CHAT_PROMPT__INIT;
    Ds4__V1__ChatMessage m0 = DS4__V1__CHAT_MESSAGE__INIT, m1 = DS4__V1__CHAT_MESSAGE__INIT;
    Ds4__V1__ChatMessage *msgs[] = {&m0, &m1};
    Ds4__V1__SamplingParams sp = DS4__V1__SAMPLING_PARAMS__INIT;
    char *stops[] = {"</end>", "\n\n"};
    m0.role = "system";
    m0.content = "be brief";
    m1.role = "user";
    m1.content = "h\xc3\xa9llo";
    chat.n_messages = 2;
    chat.messages = msgs;
    chat.add_generation_prompt = 1;
    req.prompt_case = DS4__V1__GENERATE_REQUEST__PROMPT_CHAT;
    req.chat = &chat;
    req.reasoning = DS4__V1__REASONING_MODE__REASONING_ON;
    sp.seed = 0x0123456789abcdefull;
    sp.seeded = 1;
    sp.n_stop = 2;
    sp.stop = stops;
    sp.top_p = 0.9f;
    req.sampling = &sp;
    req.deadline_ms = 30000;

    size_t n = ds4__v1__generate_request__get_packed_size(&req);
    uint8_t *buf = malloc(n);
    DS4_CHECK_EQ_INT(ds4__v1__generate_request__pack(&req, buf), n);
    Ds4__V1__GenerateRequest *back = ds4__v1__generate_request__unpack(NULL, n, buf);
    DS4_CHECK(back != NULL);
    if (back != NULL) {
        DS4_CHECK_EQ_INT(back->prompt_case, DS4__V1__GENERATE_REQUEST__PROMPT_CHAT);
        DS4_CHECK_EQ_INT(back->chat->n_messages, 2);
        DS4_CHECK(strcmp(back->chat->messages[1]->content, "h\xc3\xa9llo") == 0);
        DS4_CHECK(back->chat->add_generation_prompt);
        DS4_CHECK_EQ_INT(back->reasoning, DS4__V1__REASONING_MODE__REASONING_ON);
        DS4_CHECK(back->sampling->seed == 0x0123456789abcdefull);
        DS4_CHECK_EQ_INT(back->sampling->n_stop, 2);
        DS4_CHECK(strcmp(back->sampling->stop[1], "\n\n") == 0);
        DS4_CHECK_EQ_INT(back->deadline_ms, 30000);
        ds4__v1__generate_request__free_unpacked(back, NULL);
    }
    free(buf);
}

static void test_worker_messages(void)
{
    /* RegisterRequest{info{role DECODE, incarnation fixed64}}: 12 0b (08 02 19 <8 bytes LE>) */
    Ds4__Worker__V1__RegisterRequest reg = DS4__WORKER__V1__REGISTER_REQUEST__INIT;
    Ds4__Worker__V1__WorkerInfo info = DS4__WORKER__V1__WORKER_INFO__INIT;
    info.role = DS4__WORKER__V1__WORKER_ROLE__WORKER_ROLE_DECODE;
    info.incarnation = 0x1122334455667788ull;
    reg.info = &info;
    static const uint8_t want[] = {0x12, 0x0b, 0x08, 0x02, 0x19, 0x88, 0x77,
                                   0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
    uint8_t buf[64];
    DS4_CHECK_EQ_INT(ds4__worker__v1__register_request__get_packed_size(&reg), sizeof(want));
    ds4__worker__v1__register_request__pack(&reg, buf);
    DS4_CHECK(memcmp(buf, want, sizeof(want)) == 0);

    /* ReserveEvent oneof: KvTarget with a binary blob, then a token chunk. */
    Ds4__Worker__V1__ReserveEvent ev = DS4__WORKER__V1__RESERVE_EVENT__INIT;
    Ds4__Worker__V1__KvTarget target = DS4__WORKER__V1__KV_TARGET__INIT;
    uint8_t blob[300];
    for (size_t i = 0; i < sizeof(blob); i++)
        blob[i] = (uint8_t)(i * 7);
    target.blob.len = sizeof(blob);
    target.blob.data = blob;
    target.blocks_reserved = 42;
    ev.event_case = DS4__WORKER__V1__RESERVE_EVENT__EVENT_TARGET;
    ev.target = &target;
    size_t n = ds4__worker__v1__reserve_event__get_packed_size(&ev);
    uint8_t *p = malloc(n);
    ds4__worker__v1__reserve_event__pack(&ev, p);
    Ds4__Worker__V1__ReserveEvent *back = ds4__worker__v1__reserve_event__unpack(NULL, n, p);
    DS4_CHECK(back != NULL);
    if (back != NULL) {
        DS4_CHECK_EQ_INT(back->event_case, DS4__WORKER__V1__RESERVE_EVENT__EVENT_TARGET);
        DS4_CHECK_EQ_INT(back->target->blob.len, sizeof(blob));
        DS4_CHECK(memcmp(back->target->blob.data, blob, sizeof(blob)) == 0);
        DS4_CHECK_EQ_INT(back->target->blocks_reserved, 42);
        ds4__worker__v1__reserve_event__free_unpacked(back, NULL);
    }
    free(p);

    /* grpc.health.v1 response SERVING is 08 01. */
    Grpc__Health__V1__HealthCheckResponse hr = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    hr.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    DS4_CHECK_EQ_INT(grpc__health__v1__health_check_response__pack(&hr, buf), 2);
    DS4_CHECK(buf[0] == 0x08 && buf[1] == 0x01);
}

static void test_malformed_rejected(void)
{
    /* truncated length-delimited field, bad wire type 7, truncated varint */
    static const uint8_t trunc[] = {0x12, 0x10, 't', 'i'};
    static const uint8_t badtype[] = {0x0f, 0x01};
    static const uint8_t badvarint[] = {0x08, 0xff, 0xff};
    DS4_CHECK(ds4__v1__generate_request__unpack(NULL, sizeof(trunc), trunc) == NULL);
    DS4_CHECK(ds4__v1__generate_request__unpack(NULL, sizeof(badtype), badtype) == NULL);
    DS4_CHECK(ds4__v1__generate_request__unpack(NULL, sizeof(badvarint), badvarint) == NULL);
    /* string field with a wrong wire type (varint where LEN is required) */
    static const uint8_t wrongtype[] = {0x10, 0x05};
    DS4_CHECK(ds4__v1__generate_request__unpack(NULL, sizeof(wrongtype), wrongtype) == NULL);
}

int main(void)
{
    DS4_RUN(test_generate_request_wire_bytes);
    DS4_RUN(test_chat_request_round_trip);
    DS4_RUN(test_worker_messages);
    DS4_RUN(test_malformed_rejected);
    return ds4_test_finish();
}
