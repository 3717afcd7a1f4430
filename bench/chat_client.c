/* The streamed-answer load client behind `bench/run chat` (built and run
 * by bench/chat.sh; not part of reeld).
 *
 * One process, one epoll loop: --streams concurrent POST requests whose
 * answers are Server-Sent Events, each read to its end, against either
 *   fake   the fake OpenAI-compatible server directly: POST
 *          /v1/chat/completions {"stream": true}; each `data:` chunk's
 *          delta.content is a token, `data: [DONE]` the end; or
 *   reeld  reeld's assistant: POST /api/chat/query with Accept:
 *          text/event-stream; `event: token` {text} is a token, `event:
 *          done` the end (`event: error` a failure).
 * The fake runs with `stamp: true`: every token's text is its send time,
 * " %.6f" epoch seconds, so the latency of a token is the time the read
 * that brought it returned (CLOCK_REALTIME) minus that stamp. The time to
 * the first token is measured from the request's connect.
 *
 * At most --window connections are connecting at once; each request goes
 * out as soon as its connection is up. A stream is complete when its end
 * arrived after exactly --tokens tokens with status 200; anything else
 * (another status, an error event, a close before the end, --timeout) is
 * a failed stream.
 *
 * Output: one `result key=value ...` line on stdout; errors on stderr.
 * Exit status 0 when every stream completed, 1 otherwise. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 8192
#define HEAD_MAX_BYTES 8192

enum { ST_IDLE, ST_CONNECTING, ST_SENDING, ST_HEAD, ST_BODY, ST_DONE, ST_FAILED };
enum { CH_SIZE, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_END };

struct stream {
    int fd;
    int state;
    size_t woff;
    /* head, then body lines */
    char *buf;
    size_t blen;
    int chunked, chstate;
    size_t chleft;
    unsigned long chsize;
    int status;
    int event_token, event_done, event_error; /* reeld: the current event's name */
    int tokens;
    double t_connect, t_first;
};

static const char *opt_host = "127.0.0.1", *opt_mode, *opt_token = "", *opt_query;
static int opt_port, opt_streams = 1000, opt_tokens = 50, opt_window = 256, opt_timeout = 120;
static int reeld_mode;

static struct stream *st;
static int ep, active, next_open, connecting;
static char req[8192];
static size_t reqlen;
static double *lat; /* token latencies, ms */
static size_t nlat, caplat;
static double *ttft;
static size_t nttft;
static long failed, completed, bad_stamps;
static char first_error[300];

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "chat_client: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void fail(struct stream *s, const char *why)
{
    if (s->state == ST_DONE || s->state == ST_FAILED) return;
    if (s->state == ST_CONNECTING) connecting--;
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "stream %ld: %s (status %d, %d tokens)",
                 (long)(s - st), why, s->status, s->tokens);
    s->state = ST_FAILED;
    failed++;
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    active--;
}

static void finish(struct stream *s)
{
    if (s->tokens != opt_tokens) {
        fail(s, "wrong number of tokens");
        return;
    }
    s->state = ST_DONE;
    completed++;
    close(s->fd);
    s->fd = -1;
    active--;
}

static void add_lat(double ms)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = ms;
}

/* A token's text: a stamp " %.6f". */
static void token(struct stream *s, const char *text, double t_read)
{
    char *end;
    double stamp = strtod(text, &end);
    if (end == text || stamp < 1e9) {
        bad_stamps++;
    } else {
        add_lat((t_read - stamp) * 1000.0);
    }
    if (s->tokens++ == 0) {
        s->t_first = t_read;
        ttft[nttft++] = (t_read - s->t_connect) * 1000.0;
    }
}

/* The string value of "key":"..." in a JSON line (no escapes expected in
 * a stamp), copied into out; 0 when found. */
static int json_str(const char *line, const char *key, char *out, size_t cap)
{
    const char *p = strstr(line, key);
    if (!p) return -1;
    p += strlen(key);
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) >= cap) return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return 0;
}

/* One line of the SSE body (without its end). */
static void sse_line(struct stream *s, char *line, double t_read)
{
    char text[128];
    if (reeld_mode) {
        if (strncmp(line, "event: ", 7) == 0) {
            s->event_token = strcmp(line + 7, "token") == 0;
            s->event_done = strcmp(line + 7, "done") == 0;
            s->event_error = strcmp(line + 7, "error") == 0;
        } else if (strncmp(line, "data: ", 6) == 0) {
            if (s->event_token) {
                if (json_str(line, "\"text\":\"", text, sizeof text) == 0)
                    token(s, text, t_read);
                else
                    fail(s, "token event without text");
            } else if (s->event_done) {
                finish(s);
            } else if (s->event_error) {
                fail(s, "error event");
            }
        }
        return;
    }
    if (strncmp(line, "data: ", 6) != 0) return;
    if (strcmp(line + 6, "[DONE]") == 0) {
        finish(s);
        return;
    }
    if (json_str(line, "\"content\":\"", text, sizeof text) == 0 && text[0]) token(s, text, t_read);
}

/* Body bytes, after chunked decoding. */
static void body_bytes(struct stream *s, const char *p, size_t n, double t_read)
{
    for (size_t i = 0; i < n && s->state == ST_BODY; i++) {
        char c = p[i];
        if (c == '\n') {
            if (s->blen && s->buf[s->blen - 1] == '\r') s->blen--;
            s->buf[s->blen] = '\0';
            sse_line(s, s->buf, t_read);
            s->blen = 0;
        } else if (s->blen + 1 < LINE_MAX_BYTES) {
            s->buf[s->blen++] = c;
        } else {
            fail(s, "line too long");
        }
    }
}

static void chunked_bytes(struct stream *s, const char *p, size_t n, double t_read)
{
    size_t i = 0;
    while (i < n && s->state == ST_BODY) {
        switch (s->chstate) {
        case CH_SIZE: {
            char c = p[i++];
            if (c == '\n') {
                if (s->chsize == 0) {
                    s->chstate = CH_END;
                } else {
                    s->chleft = s->chsize;
                    s->chstate = CH_DATA;
                }
            } else if (c >= '0' && c <= '9') {
                s->chsize = s->chsize * 16 + (unsigned long)(c - '0');
            } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
                s->chsize = s->chsize * 16 + (unsigned long)((c | 0x20) - 'a' + 10);
            } else if (c != '\r') {
                fail(s, "bad chunk size");
            }
            break;
        }
        case CH_DATA: {
            size_t k = n - i < s->chleft ? n - i : s->chleft;
            body_bytes(s, p + i, k, t_read);
            i += k;
            s->chleft -= k;
            if (s->chleft == 0) s->chstate = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
        case CH_DATA_LF:
            if (p[i] == '\n') {
                s->chstate = CH_SIZE;
                s->chsize = 0;
            }
            i++;
            break;
        default:
            i = n;
        }
    }
}

static void on_read(struct stream *s)
{
    static char rb[65536];
    for (;;) {
        ssize_t n = read(s->fd, rb, sizeof rb);
        double t_read = now_real();
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            fail(s, strerror(errno));
            return;
        }
        if (n == 0) {
            fail(s, "closed before the end");
            return;
        }
        size_t off = 0;
        if (s->state == ST_HEAD) {
            /* the head, byte by byte up to its blank line */
            while (off < (size_t)n) {
                if (s->blen + 1 >= HEAD_MAX_BYTES) {
                    fail(s, "head too long");
                    return;
                }
                s->buf[s->blen++] = rb[off++];
                if (s->blen >= 4 && memcmp(s->buf + s->blen - 4, "\r\n\r\n", 4) == 0) break;
            }
            s->buf[s->blen] = '\0';
            if (!strstr(s->buf, "\r\n\r\n")) continue;
            s->status = s->blen > 12 ? atoi(s->buf + 9) : 0;
            s->chunked = strcasestr(s->buf, "transfer-encoding: chunked") != NULL;
            s->blen = 0;
            s->state = ST_BODY;
            if (s->status != 200) {
                fail(s, "status is not 200");
                return;
            }
        }
        if (s->chunked)
            chunked_bytes(s, rb + off, (size_t)n - off, t_read);
        else
            body_bytes(s, rb + off, (size_t)n - off, t_read);
        if (s->state != ST_BODY) return;
    }
}

static void on_write(struct stream *s)
{
    if (s->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fail(s, strerror(err));
            return;
        }
        connecting--;
        s->state = ST_SENDING;
    }
    while (s->woff < reqlen) {
        ssize_t n = write(s->fd, req + s->woff, reqlen - s->woff);
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail(s, strerror(errno));
            return;
        }
        s->woff += (size_t)n;
    }
    s->state = ST_HEAD;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(s - st)};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void open_more(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    inet_pton(AF_INET, opt_host, &a.sin_addr);
    while (next_open < opt_streams && connecting < opt_window) {
        struct stream *s = &st[next_open++];
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->fd < 0) die("socket");
        int one = 1;
        setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s->buf = malloc(LINE_MAX_BYTES > HEAD_MAX_BYTES ? LINE_MAX_BYTES : HEAD_MAX_BYTES);
        if (!s->buf) die("malloc");
        s->t_connect = now_real();
        active++;
        connecting++;
        s->state = ST_CONNECTING;
        if (connect(s->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
            fail(s, strerror(errno));
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(s - st)};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) != 0) die("epoll_ctl");
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    if (n == 0) return 0;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static void usage(void)
{
    fprintf(stderr, "usage: chat_client --mode fake|reeld --port P [--host H] [--streams N]\n"
                    "       [--tokens N] [--window N] [--timeout S] [--query Q]\n"
                    "       (reeld mode: the bearer token in CHAT_TOKEN)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--mode"))
            opt_mode = v;
        else if (!strcmp(a, "--host"))
            opt_host = v;
        else if (!strcmp(a, "--port"))
            opt_port = atoi(v);
        else if (!strcmp(a, "--streams"))
            opt_streams = atoi(v);
        else if (!strcmp(a, "--tokens"))
            opt_tokens = atoi(v);
        else if (!strcmp(a, "--window"))
            opt_window = atoi(v);
        else if (!strcmp(a, "--timeout"))
            opt_timeout = atoi(v);
        else if (!strcmp(a, "--query"))
            opt_query = v;
        else
            usage();
        i++;
    }
    if (!opt_mode || opt_port <= 0 || opt_streams < 1 || opt_tokens < 1 || opt_window < 1) usage();
    reeld_mode = !strcmp(opt_mode, "reeld");
    if (!reeld_mode && strcmp(opt_mode, "fake") != 0) usage();
    if (reeld_mode) {
        const char *t = getenv("CHAT_TOKEN");
        if (!t || !*t) usage();
        opt_token = t;
    }
    if (!opt_query) opt_query = "when do we deploy the billing service?";
    if (strpbrk(opt_query, "\"\\")) usage();

    char body[1024];
    int bl;
    if (reeld_mode) {
        bl = snprintf(body, sizeof body, "{\"query\":\"%s\"}", opt_query);
        reqlen = (size_t)snprintf(req, sizeof req,
                                  "POST /api/chat/query HTTP/1.1\r\nHost: %s:%d\r\n"
                                  "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                                  "Accept: text/event-stream\r\nContent-Length: %d\r\n"
                                  "Connection: close\r\n\r\n%s",
                                  opt_host, opt_port, opt_token, bl, body);
    } else {
        bl = snprintf(body, sizeof body,
                      "{\"model\":\"gpt-5-nano\",\"stream\":true,\"stream_options\":"
                      "{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"%s\"}]}",
                      opt_query);
        reqlen = (size_t)snprintf(req, sizeof req,
                                  "POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n"
                                  "Authorization: Bearer sk-bench\r\nContent-Type: "
                                  "application/json\r\nAccept: text/event-stream\r\n"
                                  "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                                  opt_host, opt_port, bl, body);
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt_streams + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    st = calloc((size_t)opt_streams, sizeof *st);
    ttft = calloc((size_t)opt_streams, sizeof *ttft);
    if (!st || !ttft) die("calloc");
    for (int i = 0; i < opt_streams; i++)
        st[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = now_real(), deadline = t0 + opt_timeout, t_all_open = 0;
    open_more();
    struct epoll_event evs[256];
    while (active > 0 || next_open < opt_streams) {
        double left = deadline - now_real();
        if (left <= 0) break;
        int n = epoll_wait(ep, evs, 256, left > 1 ? 1000 : (int)(left * 1000) + 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct stream *s = &st[evs[i].data.u32];
            if (s->fd < 0) continue;
            if (s->state == ST_CONNECTING || s->state == ST_SENDING)
                on_write(s);
            else if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_read(s);
        }
        open_more();
        if (!t_all_open && next_open == opt_streams) t_all_open = now_real();
    }
    double t1 = now_real();
    long timed_out = 0;
    for (int i = 0; i < opt_streams; i++) {
        if (st[i].state != ST_DONE && st[i].state != ST_FAILED) {
            fail(&st[i], "timed out");
            timed_out++;
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    qsort(lat, nlat, sizeof *lat, cmp_double);
    qsort(ttft, nttft, sizeof *ttft, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += lat[i];
    printf("result mode=%s streams=%d completed=%ld failed=%ld timed_out=%ld tokens=%zu "
           "expected_tokens=%ld bad_stamps=%ld lat_p50_ms=%.3f lat_p90_ms=%.3f "
           "lat_p99_ms=%.3f lat_max_ms=%.3f lat_min_ms=%.3f lat_mean_ms=%.3f "
           "ttft_p50_ms=%.1f ttft_p99_ms=%.1f ttft_max_ms=%.1f secs=%.2f client_cpu_s=%.2f\n",
           opt_mode, opt_streams, completed, failed, timed_out, nlat,
           (long)opt_streams * opt_tokens, bad_stamps, pct(lat, nlat, 50), pct(lat, nlat, 90),
           pct(lat, nlat, 99), nlat ? lat[nlat - 1] : 0, nlat ? lat[0] : 0,
           nlat ? sum / (double)nlat : 0, pct(ttft, nttft, 50), pct(ttft, nttft, 99),
           nttft ? ttft[nttft - 1] : 0, t1 - t0, cpu);
    if (first_error[0]) fprintf(stderr, "chat_client: first failure: %s\n", first_error);
    return completed == opt_streams ? 0 : 1;
}
