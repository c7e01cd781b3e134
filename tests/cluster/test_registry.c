/*
 * test_registry: the router's worker registry: registration, idempotent re-registration, a new
 * incarnation replacing (and reporting dead) the old one, heartbeats from unknown
 * incarnations rejected, liveness timeout, and the least-loaded choice (capacity-relative
 * load, draining and context-length exclusions, digest match, deterministic ties).
 */
#include "registry.h"
#include "test.h"

static int gone_count;
static char gone_last[128];

static void on_gone(void *arg, ds4_worker_t *w, const char *why)
{
    gone_count++;
    snprintf(gone_last, sizeof(gone_last), "%s:%s", w->id, why);
}

static ds4_worker_t *reg(ds4_registry_t *r, const char *id, ds4_role_t role, uint64_t inc,
                         uint32_t cap, uint64_t now)
{
    ds4_worker_info_t in = {.id = id,
                            .rpc_address = "127.0.0.1:1",
                            .incarnation = inc,
                            .role = role,
                            .max_sequences = cap,
                            .max_context = 1000};
    ds4_worker_t *w = NULL;
    bool is_new = false;
    char why[128];
    DS4_CHECK_STATUS(ds4_registry_register(r, &in, NULL, now, &w, &is_new, why, sizeof(why)),
                     DS4_OK);
    return w;
}

static void test_incarnations(void)
{
    ds4_registry_t r;
    gone_count = 0;
    ds4_registry_init(&r, 1000, on_gone, NULL);
    ds4_worker_t *a = reg(&r, "decode-0", DS4_ROLE_DECODE, 11, 4, 0);
    DS4_CHECK(a != NULL && a->incarnation == 11);
    /* same incarnation again: same entry */
    DS4_CHECK(reg(&r, "decode-0", DS4_ROLE_DECODE, 11, 4, 10) == a);
    DS4_CHECK_EQ_INT(gone_count, 0);
    DS4_CHECK(ds4_registry_heartbeat(&r, "decode-0", 11, NULL, 20));
    DS4_CHECK(!ds4_registry_heartbeat(&r, "decode-0", 12, NULL, 20));
    DS4_CHECK(!ds4_registry_heartbeat(&r, "decode-9", 11, NULL, 20));
    /* restart: new incarnation replaces, the old is reported gone */
    ds4_worker_t *b = reg(&r, "decode-0", DS4_ROLE_DECODE, 12, 4, 30);
    DS4_CHECK_EQ_INT(gone_count, 1);
    DS4_CHECK_STR_CONTAINS(gone_last, "decode-0:replaced");
    DS4_CHECK(b->incarnation == 12);
    DS4_CHECK(!ds4_registry_heartbeat(&r, "decode-0", 11, NULL, 40));
    DS4_CHECK_EQ_INT(ds4_registry_count(&r, DS4_ROLE_DECODE), 1);

    /* bad registrations name the field */
    ds4_worker_info_t bad = {
        .id = "x", .rpc_address = "nohost", .incarnation = 1, .role = DS4_ROLE_DECODE};
    ds4_worker_t *w = NULL;
    bool is_new;
    char why[128] = "";
    DS4_CHECK_STATUS(ds4_registry_register(&r, &bad, NULL, 0, &w, &is_new, why, sizeof(why)),
                     DS4_ERR_BAD_REQUEST);
    DS4_CHECK_STR_CONTAINS(why, "info.rpc_address");
    bad.rpc_address = "h:1";
    bad.incarnation = 0;
    DS4_CHECK_STATUS(ds4_registry_register(&r, &bad, NULL, 0, &w, &is_new, why, sizeof(why)),
                     DS4_ERR_STALE);
    bad.incarnation = 1;
    bad.role = 7;
    DS4_CHECK_STATUS(ds4_registry_register(&r, &bad, NULL, 0, &w, &is_new, why, sizeof(why)),
                     DS4_ERR_BAD_REQUEST);
    DS4_CHECK_STR_CONTAINS(why, "info.role");

    /* liveness: silent for more than 1000 ms -> gone */
    reg(&r, "prefill-0", DS4_ROLE_PREFILL, 5, 1, 500);
    DS4_CHECK_EQ_INT(ds4_registry_sweep(&r, 1000), 0);
    DS4_CHECK(ds4_registry_heartbeat(&r, "prefill-0", 5, NULL, 1000));
    DS4_CHECK_EQ_INT(ds4_registry_sweep(&r, 1500), 1); /* decode-0 last seen at 40 */
    DS4_CHECK_STR_CONTAINS(gone_last, "decode-0:no heartbeat");
    DS4_CHECK_EQ_INT(ds4_registry_sweep(&r, 2001), 1);
    DS4_CHECK(r.head == NULL);
    ds4_registry_clear(&r);
}

static void test_pick(void)
{
    ds4_registry_t r;
    ds4_registry_init(&r, 1000, NULL, NULL);
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == NULL);
    ds4_worker_t *a = reg(&r, "d-a", DS4_ROLE_DECODE, 1, 8, 0);
    ds4_worker_t *b = reg(&r, "d-b", DS4_ROLE_DECODE, 2, 2, 0);
    ds4_worker_t *p = reg(&r, "p-a", DS4_ROLE_PREFILL, 3, 1, 0);
    /* both idle: tie -> more free blocks, then id */
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == a);
    b->load.kv_blocks_free = 10;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == b);
    /* a: 3/8 busy, b: 1/2 busy -> a */
    a->load.running = 3;
    b->load.running = 1;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == a);
    /* router-side assignments count before the next heartbeat reports them: a 5/8 > b 1/2 */
    a->assigned = 5;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == b);
    /* draining is never picked */
    b->load.draining = true;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, NULL, 0) == a);
    /* context too long for every worker */
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 5000, NULL, 0) == NULL);
    /* exclusion (a retry avoids the worker that just failed) */
    DS4_CHECK(ds4_registry_pick_except(&r, DS4_ROLE_DECODE, 1, NULL, 0, "d-a") == NULL);
    b->load.draining = false;
    DS4_CHECK(ds4_registry_pick_except(&r, DS4_ROLE_DECODE, 1, NULL, 0, "d-a") == b);
    b->load.draining = true;
    /* roles are separate */
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_PREFILL, 1, NULL, 0) == p);
    /* digest must match */
    uint8_t dg[2] = {1, 2};
    memcpy(a->digest, dg, 2);
    a->digest_len = 2;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, dg, 2) == a);
    dg[1] = 3;
    DS4_CHECK(ds4_registry_pick(&r, DS4_ROLE_DECODE, 1, dg, 2) == NULL);
    ds4_registry_clear(&r);
}

int main(void)
{
    DS4_RUN(test_incarnations);
    DS4_RUN(test_pick);
    return ds4_test_finish();
}
