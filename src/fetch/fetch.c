/* libcurl multi on the libevent loop; see include/reeld/fetch.h.
 *
 * The socket/timer dance follows curl's docs/examples/multi-event.c: each
 * socket libcurl wants watched gets one event, stored with
 * curl_multi_assign and handed back as socketp; the timer callback arms
 * one libevent timer (0 ms becomes 1 ms, -1 deletes it); the event
 * callbacks call curl_multi_socket_action and then drain
 * curl_multi_info_read.
 *
 * libcurl is only ever called from three places, none of them inside a
 * libcurl callback: the socket and timer event callbacks, and the
 * "deferred work" event. Everything user code may ask for (start,
 * cancel, resume) and every completion is queued on that event, so user
 * callbacks run either inside the write callback (on_data) or from the
 * deferred event (done), and whatever they call only flags and queues. */
#include "reeld/fetch.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "reeld/util.h"

#define FETCH_TIMEOUT_MS 30000L
#define FETCH_CONNECT_TIMEOUT_MS 10000L
#define FETCH_MAX_BODY ((size_t)8 << 20)

/* Work queued for the deferred event. */
enum { OP_ADD = 1, OP_RESUME = 2, OP_DONE = 4 };

struct fetch_sock {
    struct fetch *f;
    struct event *ev;
    LIST_ENTRY(fetch_sock) link;
};

struct fetch_req {
    struct fetch *f;
    CURL *easy;
    curl_mime *mime; /* multipart body, or NULL */
    struct curl_slist *hdrs;
    fetch_data_cb on_data;
    fetch_done_cb done;
    void *arg;
    size_t max_body;
    char *body;
    size_t body_len, body_cap;
    char *content_type;
    int64_t retry_after_ms;
    unsigned ops;
    unsigned queued : 1;      /* on a pending list */
    unsigned in_multi : 1;    /* added to the multi handle */
    unsigned cancelled : 1;   /* no callback may run any more */
    unsigned completing : 1;  /* done is running */
    unsigned paused : 1;      /* the user wants no data */
    unsigned curl_paused : 1; /* libcurl holds data for us */
    unsigned too_large : 1;
    unsigned aborted : 1;
    unsigned ra_from_ms : 1; /* retry-after-ms wins over Retry-After */
    CURLcode result;
    long status;
    char errbuf[CURL_ERROR_SIZE];
    TAILQ_ENTRY(fetch_req) all;
    TAILQ_ENTRY(fetch_req) q;
};

TAILQ_HEAD(fetch_req_list, fetch_req);

struct fetch {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct event *defer;
    struct fetch_req_list reqs;
    struct fetch_req_list pending;
    LIST_HEAD(, fetch_sock) socks;
    int running;
    int active;
};

static int global_refs;

/* ---- queueing ---------------------------------------------------------- */

static void queue_op(struct fetch_req *r, unsigned op)
{
    struct fetch *f = r->f;
    r->ops |= op;
    if (!r->queued) {
        r->queued = 1;
        TAILQ_INSERT_TAIL(&f->pending, r, q);
    }
    event_active(f->defer, EV_TIMEOUT, 0);
}

static void req_destroy(struct fetch_req *r)
{
    struct fetch *f = r->f;
    TAILQ_REMOVE(&f->reqs, r, all);
    if (r->in_multi) curl_multi_remove_handle(f->multi, r->easy);
    curl_easy_cleanup(r->easy);
    /* After the easy handle, as curl_mime_free's documentation asks. */
    curl_mime_free(r->mime);
    curl_slist_free_all(r->hdrs);
    free(r->body);
    free(r->content_type);
    free(r);
}

/* ---- libcurl data callbacks -------------------------------------------- */

static size_t collect(struct fetch_req *r, const char *data, size_t n)
{
    if (n > r->max_body - r->body_len) {
        r->too_large = 1;
        return 0;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 16384;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb) return 0;
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct fetch_req *r = ud;
    size_t n = size * nmemb;
    if (r->cancelled) return 0;
    if (r->paused) {
        /* Never curl_easy_pause from a callback: this return pauses the
         * transfer and libcurl keeps these bytes for the resume. */
        r->curl_paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (!r->on_data) return collect(r, data, n);
    int rc = r->on_data(r->arg, data, n);
    if (r->cancelled) return 0;
    if (rc < 0) {
        r->aborted = 1;
        return 0;
    }
    if (rc > 0) r->paused = 1;
    return n;
}

static char *trimmed_dup(const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    char *v = malloc(n + 1);
    if (v) {
        memcpy(v, s, n);
        v[n] = '\0';
    }
    return v;
}

static int header_is(const char *line, size_t name_len, const char *name)
{
    return strlen(name) == name_len && strncasecmp(line, name, name_len) == 0;
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    struct fetch_req *r = ud;
    size_t n = size * nitems;
    if (r->cancelled) return 0;
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a 1xx): forget the previous one's. The
         * status line is "HTTP/x[.y] NNN[ reason]". */
        const char *sp = memchr(line, ' ', n);
        long st = 0;
        for (size_t i = sp ? (size_t)(sp - line) + 1 : n, k = 0; i < n && k < 3; i++, k++) {
            if (line[i] < '0' || line[i] > '9') {
                st = 0;
                break;
            }
            st = st * 10 + (line[i] - '0');
        }
        r->status = st;
        free(r->content_type);
        r->content_type = NULL;
        r->retry_after_ms = -1;
        r->ra_from_ms = 0;
        return n;
    }
    const char *colon = memchr(line, ':', n);
    if (!colon) return n;
    size_t name_len = (size_t)(colon - line);
    const char *val = colon + 1;
    size_t val_len = n - name_len - 1;
    if (header_is(line, name_len, "Content-Type")) {
        char *v = trimmed_dup(val, val_len);
        if (v) {
            free(r->content_type);
            r->content_type = v;
        }
    } else if (header_is(line, name_len, "retry-after-ms") ||
               (!r->ra_from_ms && header_is(line, name_len, "Retry-After"))) {
        int is_ms = name_len == strlen("retry-after-ms");
        char *v = trimmed_dup(val, val_len);
        int64_t ms = v ? fetch_parse_retry_after(v, is_ms, util_wall_ms()) : -1;
        free(v);
        if (ms >= 0) {
            r->retry_after_ms = ms;
            r->ra_from_ms = is_ms;
        }
    }
    return n;
}

/* ---- completion -------------------------------------------------------- */

/* Drain finished transfers. Called right after a libcurl call returns,
 * never from inside one. */
static void drain(struct fetch *f)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(f->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        struct fetch_req *r = (struct fetch_req *)priv;
        /* m is invalid after remove_handle: everything is copied above. */
        curl_multi_remove_handle(f->multi, easy);
        if (!r) continue;
        r->in_multi = 0;
        r->result = rc;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r->status);
        queue_op(r, OP_DONE);
    }
}

static void deliver(struct fetch_req *r)
{
    struct fetch_resp resp = {
        .status = r->status,
        .body = r->body && !r->on_data ? r->body : "",
        .body_len = r->on_data ? 0 : r->body_len,
        .content_type = r->content_type,
        .retry_after_ms = r->retry_after_ms,
    };
    if (r->result != CURLE_OK) {
        if (r->too_large || r->result == CURLE_FILESIZE_EXCEEDED) {
            resp.err = FETCH_ERR_TOO_LARGE;
        } else if (r->aborted) {
            resp.err = FETCH_ERR_ABORTED;
        } else {
            size_t n = strlen(r->errbuf);
            while (n > 0 && (r->errbuf[n - 1] == '\n' || r->errbuf[n - 1] == '\r'))
                r->errbuf[--n] = '\0';
            resp.err = n ? r->errbuf : curl_easy_strerror(r->result);
            resp.timed_out = r->result == CURLE_OPERATION_TIMEDOUT;
        }
    }
    r->completing = 1;
    r->f->active--;
    if (r->done) r->done(r->arg, &resp);
    req_destroy(r);
}

static void start_in_multi(struct fetch_req *r)
{
    if (curl_multi_add_handle(r->f->multi, r->easy) == CURLM_OK) {
        r->in_multi = 1;
        return;
    }
    r->result = CURLE_FAILED_INIT;
    snprintf(r->errbuf, sizeof r->errbuf, "%s", "cannot start transfer");
    queue_op(r, OP_DONE);
}

static void resume_in_curl(struct fetch_req *r)
{
    if (r->paused || !r->curl_paused || !r->in_multi) return;
    /* Cleared first: the unpause may call on_write at once, which may
     * pause again. */
    r->curl_paused = 0;
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
    drain(r->f);
}

/* The deferred event: runs what was queued, on a snapshot of the queue so
 * work queued meanwhile waits for the next turn. */
static void on_defer(evutil_socket_t fd, short what, void *arg)
{
    struct fetch *f = arg;
    struct fetch_req_list work;
    struct fetch_req *r;
    (void)fd;
    (void)what;
    TAILQ_INIT(&work);
    TAILQ_CONCAT(&work, &f->pending, q);
    while ((r = TAILQ_FIRST(&work)) != NULL) {
        TAILQ_REMOVE(&work, r, q);
        r->queued = 0;
        unsigned ops = r->ops;
        r->ops = 0;
        if (r->cancelled) {
            req_destroy(r);
            continue;
        }
        if (ops & OP_ADD) start_in_multi(r);
        if (ops & OP_RESUME) resume_in_curl(r);
        /* A cancel from inside on_data during the resume: r waits on the
         * queue again and is destroyed there. */
        if ((ops & OP_DONE) && !r->cancelled) deliver(r);
    }
}

/* ---- the socket/timer dance (multi-event.c) ---------------------------- */

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    struct fetch_sock *fs = arg;
    struct fetch *f = fs->f; /* fs may be freed by socket_action */
    int action =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(f->multi, fd, action, &f->running);
    drain(f);
}

static void sock_free(struct fetch_sock *fs)
{
    LIST_REMOVE(fs, link);
    event_free(fs->ev);
    free(fs);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct fetch *f = userp;
    struct fetch_sock *fs = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (fs) {
            sock_free(fs);
            curl_multi_assign(f->multi, s, NULL);
        }
        return 0;
    }
    if (!fs) {
        fs = calloc(1, sizeof *fs);
        if (!fs) return -1;
        fs->f = f;
        fs->ev = event_new(f->base, s, 0, on_sock_event, fs);
        if (!fs->ev) {
            free(fs);
            return -1;
        }
        LIST_INSERT_HEAD(&f->socks, fs, link);
        curl_multi_assign(f->multi, s, fs);
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    event_del(fs->ev);
    event_assign(fs->ev, f->base, s, kind, on_sock_event, fs);
    event_add(fs->ev, NULL);
    return 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct fetch *f = arg;
    (void)fd;
    (void)what;
    curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &f->running);
    drain(f);
}

static int on_timer_set(CURLM *multi, long timeout_ms, void *userp)
{
    struct fetch *f = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(f->timer);
        return 0;
    }
    if (timeout_ms == 0) timeout_ms = 1; /* "now", but after this call has returned */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    evtimer_add(f->timer, &tv);
    return 0;
}

/* ---- public API -------------------------------------------------------- */

struct fetch *fetch_new(struct event_base *base)
{
    if (!base) return NULL;
    if (global_refs == 0 && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
    global_refs++;
    struct fetch *f = calloc(1, sizeof *f);
    if (!f) goto fail;
    f->base = base;
    TAILQ_INIT(&f->reqs);
    TAILQ_INIT(&f->pending);
    LIST_INIT(&f->socks);
    f->multi = curl_multi_init();
    f->timer = evtimer_new(base, on_timer, f);
    f->defer = event_new(base, -1, 0, on_defer, f);
    if (!f->multi || !f->timer || !f->defer) goto fail;
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
    return f;
fail:
    fetch_free(f);
    if (!f && --global_refs == 0) curl_global_cleanup();
    return NULL;
}

void fetch_free(struct fetch *f)
{
    if (!f) return;
    struct fetch_req *r;
    while ((r = TAILQ_FIRST(&f->reqs)) != NULL) {
        if (r->queued) TAILQ_REMOVE(&f->pending, r, q);
        req_destroy(r);
    }
    /* The multi goes first: its cleanup may still call on_socket and
     * on_timer_set, which use the events below. */
    if (f->multi) curl_multi_cleanup(f->multi);
    while (!LIST_EMPTY(&f->socks))
        sock_free(LIST_FIRST(&f->socks));
    if (f->timer) event_free(f->timer);
    if (f->defer) event_free(f->defer);
    free(f);
    if (--global_refs == 0) curl_global_cleanup();
}

int fetch_async_dns(void)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    return v && (v->features & CURL_VERSION_ASYNCHDNS) ? 1 : 0;
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static int parts_ok(const struct fetch_opts *o)
{
    if (!o->nparts) return 1;
    if (!o->parts || o->body) return 0;
    for (size_t i = 0; i < o->nparts; i++) {
        const struct fetch_part *p = &o->parts[i];
        if (!p->name || !*p->name || (p->data && p->path) || (!p->data && !p->path) ||
            (!p->data && p->data_len))
            return 0;
    }
    return 1;
}

static int method_ok(const char *m)
{
    if (!*m) return 0;
    for (; *m; m++)
        if (*m <= ' ' || *m >= 127) return 0;
    return 1;
}

static int set_headers(struct fetch_req *r, const char *const *headers)
{
    int has_expect = 0;
    for (const char *const *h = headers; h && *h; h++) {
        if (has_crlf(*h) || !strchr(*h, ':')) return -1;
        if (strncasecmp(*h, "Expect:", 7) == 0) has_expect = 1;
        struct curl_slist *l = curl_slist_append(r->hdrs, *h);
        if (!l) return -1;
        r->hdrs = l;
    }
    /* libcurl would otherwise wait for "100 Continue" before a large
     * body, which many servers never send. */
    if (!has_expect) {
        struct curl_slist *l = curl_slist_append(r->hdrs, "Expect:");
        if (!l) return -1;
        r->hdrs = l;
    }
    return 0;
}

static int set_mime(struct fetch_req *r, const struct fetch_opts *o)
{
    r->mime = curl_mime_init(r->easy);
    if (!r->mime) return -1;
    for (size_t i = 0; i < o->nparts; i++) {
        const struct fetch_part *p = &o->parts[i];
        curl_mimepart *mp = curl_mime_addpart(r->mime);
        if (!mp || curl_mime_name(mp, p->name) != CURLE_OK) return -1;
        if (p->path) {
            if (curl_mime_filedata(mp, p->path) != CURLE_OK) return -1;
        } else if (curl_mime_data(mp, p->data, p->data_len) != CURLE_OK) {
            return -1;
        }
        if (p->filename && curl_mime_filename(mp, p->filename) != CURLE_OK) return -1;
        if (p->content_type && curl_mime_type(mp, p->content_type) != CURLE_OK) return -1;
    }
    return curl_easy_setopt(r->easy, CURLOPT_MIMEPOST, r->mime) == CURLE_OK ? 0 : -1;
}

static int set_method(CURL *e, const char *method, const struct fetch_opts *o)
{
    int bad = 0;
    if (o->nparts) {
        /* MIMEPOST makes it a POST; another verb rides on top of it. */
        if (strcmp(method, "POST") != 0)
            bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
        return bad ? -1 : 0;
    }
    if (strcmp(method, "GET") == 0 && !o->body) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK;
        return bad ? -1 : 0;
    }
    if (strcmp(method, "HEAD") == 0 && !o->body) {
        bad |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L) != CURLE_OK;
        return bad ? -1 : 0;
    }
    if (strcmp(method, "POST") == 0)
        bad |= curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK;
    else
        bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
    if (o->body || strcmp(method, "POST") == 0) {
        /* The size first: the copy then takes exactly body_len bytes. */
        bad |=
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "") != CURLE_OK;
    }
    return bad ? -1 : 0;
}

static int set_options(struct fetch_req *r, const struct fetch_opts *o, const char *method)
{
    CURL *e = r->easy;
    long timeout = o->timeout_ms > 0 ? o->timeout_ms : FETCH_TIMEOUT_MS;
    long connect = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : FETCH_CONNECT_TIMEOUT_MS;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075500
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) !=
           CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) !=
           CURLE_OK;
#endif
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "reeld") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)r) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, (void *)r) != CURLE_OK;
    if (!o->on_data) {
        bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body) != CURLE_OK;
        /* Compressed responses only when collecting: a compressing server
         * may hold back a stream's small pieces. */
        bad |= curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "") != CURLE_OK;
    }
    if (bad || set_headers(r, o->headers) < 0 || (o->nparts && set_mime(r, o) < 0) ||
        set_method(e, method, o) < 0)
        return -1;
    return curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs) == CURLE_OK ? 0 : -1;
}

struct fetch_req *fetch_start(struct fetch *f, const struct fetch_opts *o, fetch_done_cb done,
                              void *arg)
{
    if (!f || !o || !o->url || !*o->url || has_crlf(o->url) || (!o->body && o->body_len) ||
        !parts_ok(o))
        return NULL;
    const char *method = o->method ? o->method : (o->body || o->nparts ? "POST" : "GET");
    if (!method_ok(method)) return NULL;
    struct fetch_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->f = f;
    r->on_data = o->on_data;
    r->done = done;
    r->arg = arg;
    r->max_body = o->max_body ? o->max_body : FETCH_MAX_BODY;
    r->retry_after_ms = -1;
    r->easy = curl_easy_init();
    TAILQ_INSERT_TAIL(&f->reqs, r, all);
    if (!r->easy || set_options(r, o, method) < 0) {
        req_destroy(r);
        return NULL;
    }
    f->active++;
    /* Added from the loop: fetch_start may be called from inside a
     * libcurl callback (on_data), where the multi handle is off limits. */
    queue_op(r, OP_ADD);
    return r;
}

void fetch_cancel(struct fetch_req *r)
{
    if (!r || r->cancelled || r->completing) return;
    r->cancelled = 1;
    r->done = NULL;
    r->on_data = NULL;
    r->f->active--;
    queue_op(r, 0);
}

void fetch_pause(struct fetch_req *r)
{
    if (r && !r->cancelled && !r->completing) r->paused = 1;
}

void fetch_resume(struct fetch_req *r)
{
    if (!r || r->cancelled || r->completing || !r->paused) return;
    r->paused = 0;
    if (r->curl_paused) queue_op(r, OP_RESUME);
}

long fetch_status(const struct fetch_req *r)
{
    return r ? r->status : 0;
}

int fetch_active(const struct fetch *f)
{
    return f ? f->active : 0;
}
