/* Outbound HTTP(S) through the libcurl multi interface on the loop
 * (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION, as in curl's
 * docs/examples/multi-event.c).
 *
 * One fetch_req is one transfer. Exactly one completion callback runs for
 * it, never from inside fetch_start and never from inside a libcurl
 * callback (it is deferred to the loop), unless fetch_cancel ran first;
 * then none. The response body is either collected (bounded by
 * max_body; beyond it the transfer fails with "response too large") or
 * streamed through on_data.
 *
 * Lifetime: the struct fetch_req pointer is valid from fetch_start until
 * its done callback returns or fetch_cancel is called, whichever comes
 * first; the module frees it then. The fetch_resp passed to done (and
 * every string in it) is valid only during that call.
 *
 * Reentrancy: from on_data and done callbacks, user code may call
 * fetch_start, fetch_cancel (on any request, including the one being
 * called back), fetch_pause and fetch_resume; these never call libcurl
 * in place but queue the work for the loop. fetch_free must not be
 * called from inside a fetch callback.
 *
 * Transfers use http and https only, follow no redirects, use no proxy
 * (the http_proxy family of variables is ignored), accept any content
 * encoding libcurl can decode when collecting (none when streaming), and
 * send no "Expect: 100-continue" unless the caller's headers ask for it.
 * libcurl is initialised (curl_global_init) by the first fetch_new and
 * released with the last fetch_free. */
#ifndef REELD_FETCH_H
#define REELD_FETCH_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct fetch;
struct fetch_req;

/* The err strings of the two failures that the module itself causes;
 * every other err is libcurl's message. */
#define FETCH_ERR_TOO_LARGE "response too large"
#define FETCH_ERR_ABORTED "aborted"

struct fetch_resp {
    long status;      /* HTTP status, 0 if no response */
    const char *body; /* collected body (NUL-terminated), "" when streamed */
    size_t body_len;
    const char *content_type; /* or NULL */
    int64_t retry_after_ms;   /* from Retry-After / retry-after-ms, -1 if absent */
    const char *err;          /* NULL on transport success, else message */
    int timed_out;            /* 1 if err is a timeout */
};

/* Streaming body, called from inside libcurl with the next bytes in
 * order. Return 0 to continue; 1 when this chunk was taken but no more
 * should come until fetch_resume (back-pressure); -1 to abort (the
 * completion reports err FETCH_ERR_ABORTED). */
typedef int (*fetch_data_cb)(void *arg, const char *data, size_t len);
typedef void (*fetch_done_cb)(void *arg, const struct fetch_resp *resp);

/* One part of a multipart/form-data body (fetch_opts.parts). Its content
 * is either data (data_len bytes, copied by fetch_start) or the file at
 * path, which libcurl opens and streams when the request is sent: it must
 * be readable at fetch_start (else NULL) and stay until the done
 * callback (one that goes meanwhile fails the transfer with libcurl's read
 * error). Strings are copied. */
struct fetch_part {
    const char *name; /* form field name, required */
    const char *data;
    size_t data_len;
    const char *path;
    const char *filename;     /* optional; for path parts the default is its basename */
    const char *content_type; /* optional */
};

struct fetch_opts {
    const char *method; /* default GET, or POST when body is set */
    const char *url;
    const char *const *headers; /* NULL-terminated "Name: value" list, copied */
    const char *body;           /* body_len bytes, copied */
    size_t body_len;
    long timeout_ms;         /* whole transfer; 0 = 30 s */
    long connect_timeout_ms; /* 0 = 10 s */
    size_t max_body;         /* collected mode; 0 = 8 MiB */
    fetch_data_cb on_data;   /* streaming mode when set */
    /* multipart/form-data body (libcurl's mime API, which also sets the
     * Content-Type with its boundary): nparts parts, in order. Excludes
     * body; the method defaults to POST. */
    const struct fetch_part *parts;
    size_t nparts;
};

/* A transfer engine on base (which stays the caller's and must outlive
 * it). NULL on failure. */
struct fetch *fetch_new(struct event_base *base);
/* Cancels all transfers (no callbacks), cleans up the multi handle and
 * releases every event it put on the base. Call it before freeing the
 * base, and never from inside a fetch callback. NULL is accepted. */
void fetch_free(struct fetch *f);
/* 1 when libcurl resolves names asynchronously (else a warning at start). */
int fetch_async_dns(void);

/* Starts a transfer; the request begins on the next loop turn. done (may
 * be NULL) receives the outcome; arg goes to both o->on_data and done.
 * Returns NULL on bad input (no url, a method or header with CR/LF,
 * body_len without body, both body and parts, a part without a name, with
 * neither or both of data and path, or an unreadable file) or out of memory; then no callback runs.
 */
struct fetch_req *fetch_start(struct fetch *f, const struct fetch_opts *o, fetch_done_cb done,
                              void *arg);
/* After this no callback of r runs and r is gone. Safe from anywhere,
 * including r's own on_data; a no-op from inside r's own done. */
void fetch_cancel(struct fetch_req *r);
/* Stop delivering body data (the same as on_data returning 1). */
void fetch_pause(struct fetch_req *r);
/* Undo a pause; delivery continues from the loop, never from inside this
 * call. */
void fetch_resume(struct fetch_req *r);
/* The HTTP status of r's response as far as it has come: 0 before the
 * status line, then the last one seen (a 1xx is replaced by the final
 * status). Valid from r's first on_data call on, where it is the final
 * status, so a streaming caller can tell an error body from the stream. */
long fetch_status(const struct fetch_req *r);
/* Requests started and neither completed nor cancelled. */
int fetch_active(const struct fetch *f);

/* Retry helper: decides whether and when to retry a finished attempt.
 * Retries transport errors, timeouts, 408, 409, 429 and 5xx; not other
 * statuses, nor FETCH_ERR_TOO_LARGE or FETCH_ERR_ABORTED. Delay:
 * exponential (base_ms * 2^(attempt-1), capped at max_ms) with full
 * jitter, but never less than the server's Retry-After (which may exceed
 * max_ms). attempt counts from 1 (the attempt just finished). Returns
 * the delay in ms, or -1 when no retry should happen. */
struct fetch_retry_policy {
    int max_attempts; /* total attempts, including the first */
    int64_t base_ms;
    int64_t max_ms; /* <= 0: no cap */
};
int64_t fetch_retry_delay(const struct fetch_retry_policy *p, int attempt,
                          const struct fetch_resp *resp);

/* Parse a Retry-After (delta seconds or HTTP date: IMF-fixdate, RFC 850
 * or asctime) or a retry-after-ms value (is_ms: milliseconds, fraction
 * rounded up) into milliseconds from now_wall_ms; a date in the past
 * gives 0; -1 if unparsable. */
int64_t fetch_parse_retry_after(const char *value, int is_ms, int64_t now_wall_ms);

#endif
