/*
 * chat-parse.c - a V4 completion → assistant message, the official
 * parse_message_from_completion_text state machine: reasoning up to </think> (thinking mode),
 * content up to EOS or "\n\n<｜DSML｜tool_calls", then DSML invoke/parameter blocks.
 */
#include "chat-internal.h"

#include "ds4/alloc.h"

#include <stdint.h>
#include <string.h>

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define THINK_START "<think>"
#define THINK_END "</think>"
#define DSML "｜DSML｜"
#define TC_START "\n\n<" DSML "tool_calls"
#define TC_END "</" DSML "tool_calls>"
#define INVOKE "<" DSML "invoke"
#define INVOKE_END "</" DSML "invoke"
#define PARAM "<" DSML "parameter"
#define PARAM_END "/" DSML "parameter"

typedef struct span {
    const char *p;
    size_t n;
} span_t;

typedef struct reader {
    const char *text;
    size_t len;
    size_t pos;
} reader_t;

static const char *find(const char *hay, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    if (nn > hn)
        return NULL;
    return memmem(hay, hn, needle, nn);
}

/*
 * _read_until_stop: the text from pos to the earliest stop string (first listed wins a tie),
 * pos moved past the stop. Returns the index of the stop matched, or -1 (rest of the text).
 */
static int read_until(reader_t *r, const char *const *stops, int n_stops, span_t *content)
{
    const char *best = NULL;
    int which = -1;
    for (int i = 0; i < n_stops; i++) {
        const char *f = find(r->text + r->pos, r->len - r->pos, stops[i]);
        if (f != NULL && (best == NULL || f < best)) {
            best = f;
            which = i;
        }
    }
    content->p = r->text + r->pos;
    if (which < 0) {
        content->n = r->len - r->pos;
        r->pos = r->len;
        return -1;
    }
    content->n = (size_t)(best - (r->text + r->pos));
    r->pos = (size_t)(best - r->text) + strlen(stops[which]);
    return which;
}

static bool span_is(span_t s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static bool is_py_space(const unsigned char *p, size_t n, size_t *len)
{
    /* Python str \s: ASCII \t\n\v\f\r and space, \x1c-\x1f, and Unicode whitespace */
    if (n >= 1 && (p[0] == ' ' || (p[0] >= 0x09 && p[0] <= 0x0D) ||
                   (p[0] >= 0x1C && p[0] <= 0x1F))) {
        *len = 1;
        return true;
    }
    if (n >= 2 && p[0] == 0xC2 && (p[1] == 0x85 || p[1] == 0xA0)) {
        *len = 2;
        return true;
    }
    if (n >= 3) {
        uint32_t cp = ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) |
                      (p[2] & 0x3F);
        if ((p[0] & 0xF0) == 0xE0 &&
            (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
             cp == 0x202F || cp == 0x205F || cp == 0x3000)) {
            *len = 3;
            return true;
        }
    }
    return false;
}

/* re '^\s*name="(.*?)">\n$' (DOTALL) on the invoke header. */
static bool match_tool_name(span_t c, span_t *name)
{
    const unsigned char *p = (const unsigned char *)c.p;
    size_t i = 0, l;
    static const char pre[] = "name=\"";
    /* \s* is greedy but backtracks; the name= literal cannot start with whitespace, so take
     * the longest whitespace run */
    while (i < c.n && is_py_space(p + i, c.n - i, &l))
        i += l;
    if (c.n - i < sizeof(pre) - 1 || memcmp(p + i, pre, sizeof(pre) - 1) != 0)
        return false;
    size_t start = i + sizeof(pre) - 1;
    /* shortest name such that '">\n' is followed by the end, or by one final "\n" ($) */
    for (size_t e = start; e + 3 <= c.n; e++) {
        if (memcmp(p + e, "\">\n", 3) != 0)
            continue;
        size_t after = e + 3;
        if (after == c.n || (after + 1 == c.n && p[after] == '\n')) {
            name->p = c.p + start;
            name->n = e - start;
            return true;
        }
    }
    return false;
}

/* re '^ name="(.*?)" string="(true|false)">(.*?)<$' (DOTALL) on a parameter body. */
static bool match_param(span_t c, span_t *name, bool *is_string, span_t *value)
{
    static const char pre[] = " name=\"";
    if (c.n < sizeof(pre) - 1 || memcmp(c.p, pre, sizeof(pre) - 1) != 0)
        return false;
    size_t start = sizeof(pre) - 1;
    /* the value end: a final '<', or '<' before one final '\n' ($) */
    size_t vend;
    if (c.n >= 1 && c.p[c.n - 1] == '<')
        vend = c.n - 1;
    else if (c.n >= 2 && c.p[c.n - 1] == '\n' && c.p[c.n - 2] == '<')
        vend = c.n - 2;
    else
        return false;
    static const char st[] = "\" string=\"true\">", sf[] = "\" string=\"false\">";
    for (size_t e = start; e < vend; e++) {
        size_t tl = 0;
        if (vend - e >= sizeof(st) - 1 && memcmp(c.p + e, st, sizeof(st) - 1) == 0) {
            tl = sizeof(st) - 1;
            *is_string = true;
        } else if (vend - e >= sizeof(sf) - 1 && memcmp(c.p + e, sf, sizeof(sf) - 1) == 0) {
            tl = sizeof(sf) - 1;
            *is_string = false;
        }
        if (tl == 0)
            continue;
        name->p = c.p + start;
        name->n = e - start;
        value->p = c.p + e + tl;
        value->n = vend - (e + tl);
        return true;
    }
    return false;
}

#define FAIL(...)                                                                          \
    do {                                                                                   \
        ds4__chat_diag(diag, "completion", __VA_ARGS__);                                   \
        st = DS4_ERR_PARSE;                                                                \
        goto fail;                                                                         \
    } while (0)

/* parse_tool_calls: appends {"type","function":{"name","arguments"}} objects to calls. */
static ds4_status_t parse_tool_calls(reader_t *r, json_t *calls, int *last_stop,
                                     ds4_diag_t *diag)
{
    ds4_status_t st = DS4_OK;
    ds4_str_t args = {0};
    span_t *names = NULL;
    size_t n_names = 0, cap_names = 0;
    static const char *const s1[] = {INVOKE, TC_END};
    static const char *const s2[] = {PARAM, INVOKE_END};
    static const char *const s3[] = {PARAM_END};
    *last_stop = -1;
    while (r->pos < r->len) {
        span_t c;
        int stop = read_until(r, s1, 2, &c);
        if (!span_is(c, ">\n"))
            FAIL("tool call format error at byte %zu: expected '>\\n' but got \"%.*s\"",
                 (size_t)(c.p - r->text), (int)DS4_MIN(c.n, 40), c.p);
        *last_stop = stop == 1 ? 100 : stop;
        if (stop == 1)
            break;
        if (stop < 0)
            FAIL("missing </" DSML "tool_calls> after the tool calls");
        span_t header;
        stop = read_until(r, s2, 2, &header);
        span_t name;
        if (!match_tool_name(header, &name))
            FAIL("tool name format error: \"%.*s\"", (int)DS4_MIN(header.n, 80), header.p);
        args.n = 0;
        n_names = 0;
        ds4__str_puts(&args, "{");
        while (stop == 0) {
            span_t body, pname, value;
            bool is_string = false;
            read_until(r, s3, 1, &body);
            if (!match_param(body, &pname, &is_string, &value))
                FAIL("parameter format error: \"%.*s\"", (int)DS4_MIN(body.n, 80), body.p);
            for (size_t k = 0; k < n_names; k++)
                if (names[k].n == pname.n && memcmp(names[k].p, pname.p, pname.n) == 0)
                    FAIL("duplicate parameter name \"%.*s\"", (int)pname.n, pname.p);
            if (n_names == cap_names) {
                size_t cap = cap_names == 0 ? 8 : cap_names * 2;
                span_t *nn = ds4_realloc_array(names, cap, sizeof(*nn));
                if (nn == NULL) {
                    st = DS4_ERR_NO_MEMORY;
                    goto fail;
                }
                names = nn;
                cap_names = cap;
            }
            names[n_names++] = pname;
            if (n_names > 1)
                ds4__str_puts(&args, ", ");
            ds4__pyjson_string(&args, pname.p, pname.n);
            ds4__str_puts(&args, ": ");
            if (is_string)
                ds4__pyjson_string(&args, value.p, value.n);
            else
                ds4__str_put(&args, value.p, value.n);
            span_t tail;
            stop = read_until(r, s2, 2, &tail);
            if (!span_is(tail, ">\n"))
                FAIL("parameter format error: expected '>\\n' but got \"%.*s\"",
                     (int)DS4_MIN(tail.n, 40), tail.p);
        }
        ds4__str_puts(&args, "}");
        if (args.oom) {
            st = DS4_ERR_NO_MEMORY;
            goto fail;
        }
        json_t *fn = json_pack("{s:s%,s:s%}", "name", name.p, name.n, "arguments", args.p,
                               args.n);
        json_t *call = fn != NULL ? json_pack("{s:s,s:o}", "type", "function", "function", fn)
                                  : NULL;
        if (call == NULL || json_array_append_new(calls, call) != 0) {
            st = DS4_ERR_NO_MEMORY;
            goto fail;
        }
    }
fail:
    ds4__str_free(&args);
    ds4_free(names);
    return st;
}

ds4_status_t ds4_chat_parse(const char *text, size_t len, ds4_chat_mode_t mode,
                            json_t **message, ds4_diag_t *diag)
{
    if ((text == NULL && len > 0) || message == NULL)
        return DS4_ERR_INVALID_ARG;
    ds4_status_t st = DS4_OK;
    reader_t r = {.text = text != NULL ? text : "", .len = len, .pos = 0};
    span_t reasoning = {"", 0}, content = {"", 0};
    json_t *calls = json_array();
    if (calls == NULL)
        return DS4_ERR_NO_MEMORY;
    static const char *const think_stops[] = {THINK_END, TC_START};
    static const char *const content_stops[] = {EOS, TC_START};
    static const char *const eos_stop[] = {EOS};
    bool stop_is_eos_or_none;
    if (mode == DS4_CHAT_MODE_THINKING) {
        int stop = read_until(&r, think_stops, 2, &reasoning);
        if (stop != 0)
            FAIL("invalid thinking format: missing " THINK_END);
    }
    int stop = read_until(&r, content_stops, 2, &content);
    if (stop == 1) {
        int last = -1;
        st = parse_tool_calls(&r, calls, &last, diag);
        if (st != DS4_OK)
            goto fail;
        span_t after;
        stop = read_until(&r, eos_stop, 1, &after);
        if (after.n != 0)
            FAIL("unexpected content after the tool calls: \"%.*s\"", (int)DS4_MIN(after.n, 40),
                 after.p);
        stop_is_eos_or_none = true;
    } else {
        if (stop != 0)
            FAIL("invalid format: missing " EOS);
        stop_is_eos_or_none = true;
    }
    if (r.pos != r.len || !stop_is_eos_or_none)
        FAIL("unexpected content at the end (byte %zu of %zu)", r.pos, r.len);
    static const char *const specials[] = {BOS, EOS, THINK_START, THINK_END, DSML};
    for (size_t k = 0; k < DS4_ARRAY_LEN(specials); k++) {
        if (find(content.p, content.n, specials[k]) != NULL)
            FAIL("unexpected special token \"%s\" in content", specials[k]);
        if (find(reasoning.p, reasoning.n, specials[k]) != NULL)
            FAIL("unexpected special token \"%s\" in reasoning_content", specials[k]);
    }
    json_t *msg = json_pack("{s:s,s:s%,s:s%,s:o}", "role", "assistant", "content", content.p,
                            content.n, "reasoning_content", reasoning.p, reasoning.n,
                            "tool_calls", calls);
    if (msg == NULL)
        return DS4_ERR_NO_MEMORY; /* json_pack released calls ("o") */
    *message = msg;
    return DS4_OK;
fail:
    json_decref(calls);
    return st;
}
