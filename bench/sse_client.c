/* The SSE load client behind `bench/run sse` (built and run by
 * bench/sse.sh; not part of reeld).
 *
 * One process, one epoll loop, holding many GET /api/events streams of one
 * organization open against one reeld, and inserting that organization's
 * events rows itself through libpq (asynchronously, on the same loop, so a
 * delivery is timestamped when it is read, whatever the INSERT is doing).
 *
 * Phases, in order:
 *   one    open 1 stream, make it live, insert --events events spaced
 *          --interval-ms apart: fan-out latency with 1 stream;
 *   open   read reeld's VmRSS (before), open --streams - 1 more streams
 *          (at most --window connecting at once), wait until every one has
 *          its 200 response headers and is live, read VmRSS (after);
 *   many   the same events with every stream open: fan-out latency with
 *          --streams streams; VmRSS and reeld's CPU around it;
 *   many_fast  (with --fast-interval-ms) the same again, the events
 *          spaced that much apart: a sustained rate of status changes.
 *
 * "Live": a stream without Last-Event-ID starts at the current end of the
 * table once its first page query ran, so an event committed before that
 * may not reach it. Sync events (data {"bench_sync": k}) are inserted every
 * 100 ms until every stream has received one, then one more that every
 * stream must receive; only then are the measured events (data
 * {"bench_seq": k}) inserted, and every stream must receive every one.
 *
 * Latency of a delivery: the time the stream's read returned the event,
 * minus the time the INSERT's result (autocommit: the COMMIT) came back to
 * this client (lat_commit), and minus the time just before the INSERT was
 * sent (lat_send). All times are CLOCK_MONOTONIC of this process.
 *
 * Output: key=value lines for bench/sse.sh; errors on stderr, exit 1. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 64
#define CARRY 512
#define PG_TAG UINT32_MAX

enum { ST_CONNECTING, ST_HEADERS, ST_LIVE, ST_DEAD };

struct stream {
    int fd;
    uint8_t state;
    uint16_t woff;     /* request bytes sent */
    uint16_t clen;     /* bytes in carry */
    int synced;        /* highest bench_sync seen, 0 none */
    uint64_t mask;     /* bench_seq values seen in the current phase */
    char carry[CARRY]; /* headers so far, then the current partial line */
};

static const char *opt_host = "127.0.0.1", *opt_token, *opt_conninfo, *opt_org;
static int opt_port, opt_streams = 10000, opt_events = 20, opt_interval_ms = 200, opt_window = 512;
static int opt_pid, opt_fast_interval_ms, opt_hold_ms;

static struct stream *st;
static int nst; /* streams created */
static int ep;
static char req[4096];
static size_t reqlen;
static PGconn *pg;

/* the current phase's measured events */
static int phase_events;
static double t_send[MAX_EVENTS + 1], t_commit[MAX_EVENTS + 1];
static double *t_recv; /* [stream * MAX_EVENTS + seq - 1], 0 = not received */
static long dups, dead, bad_status, unexpected;
static char bad_line[160];

/* the INSERT in flight */
static int pg_busy, pg_seq, pg_sync;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sse_client: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- reeld's figures from /proc ------------------------------------------ */

static long proc_status_kb(const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", opt_pid);
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read %s: %s", path, strerror(errno));
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    if (v < 0) die("no %s in %s", key, path);
    return v;
}

static long proc_cpu_ticks(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", opt_pid);
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read %s", path);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) die("cannot parse %s", path);
    /* after ") ": state is field 3; utime and stime are fields 14 and 15 */
    long utime = 0, stime = 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14) utime = atol(tok);
        if (field == 15) {
            stime = atol(tok);
            break;
        }
    }
    return utime + stime;
}

/* Busy and total clock ticks of all CPUs so far (/proc/stat). */
static void sys_ticks(double *busy, double *total)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) die("cannot read /proc/stat");
    double v[8] = {0};
    if (fscanf(f, "cpu %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7]) != 8)
        die("cannot parse /proc/stat");
    fclose(f);
    *busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    *total = *busy + v[3] + v[4];
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void print_rss(const char *when)
{
    printf("rss when=%s vmrss_kb=%ld rssanon_kb=%ld streams=%d\n", when, proc_status_kb("VmRSS"),
           proc_status_kb("RssAnon"), nst - (int)dead);
    fflush(stdout);
}

/* ---- events rows through libpq ------------------------------------------- */

static void pg_insert(int seq, int sync)
{
    char data[96];
    snprintf(data, sizeof data, "{\"status\": \"ready\", \"%s\": %d}",
             sync ? "bench_sync" : "bench_seq", seq);
    const char *p[] = {opt_org, data};
    if (!sync) t_send[seq] = now();
    if (!PQsendQueryParams(pg,
                           "INSERT INTO events (org_id, recording_id, type, data)"
                           " VALUES ($1, gen_random_uuid(), 'recording.status', $2::jsonb)",
                           2, NULL, p, NULL, NULL, 0))
        die("INSERT: %s", PQerrorMessage(pg));
    pg_busy = 1;
    pg_seq = seq;
    pg_sync = sync;
}

static void pg_readable(double t)
{
    if (!PQconsumeInput(pg)) die("libpq: %s", PQerrorMessage(pg));
    while (pg_busy && !PQisBusy(pg)) {
        PGresult *res = PQgetResult(pg);
        if (!res) {
            pg_busy = 0;
            break;
        }
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            die("INSERT failed: %s", PQresultErrorMessage(res));
        if (!pg_sync) t_commit[pg_seq] = t;
        PQclear(res);
    }
}

/* ---- streams ---------------------------------------------------------------- */

static void stream_kill(struct stream *s, const char *why)
{
    if (s->state == ST_DEAD) return;
    if (dead < 5) fprintf(stderr, "sse_client: stream %ld lost: %s\n", (long)(s - st), why);
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->state = ST_DEAD;
    dead++;
}

static void stream_open(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    if (inet_pton(AF_INET, opt_host, &a.sin_addr) != 1) die("bad host %s", opt_host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s (raise ulimit -n)", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct stream *s = &st[nst];
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->state = ST_CONNECTING;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)nst};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) die("epoll_ctl: %s", strerror(errno));
    nst++;
}

static void stream_write(struct stream *s)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (s->woff == 0 && (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err)) {
        stream_kill(s, strerror(err ? err : errno));
        return;
    }
    while (s->woff < reqlen) {
        ssize_t n = write(s->fd, req + s->woff, reqlen - s->woff);
        if (n < 0) {
            if (errno == EAGAIN) return;
            stream_kill(s, strerror(errno));
            return;
        }
        s->woff = (uint16_t)(s->woff + n);
    }
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)(s - st)};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
    s->state = ST_HEADERS;
}

/* One complete line of the (chunked) body: SSE lines, chunk sizes, blanks. */
static void stream_line(struct stream *s, const char *l, size_t n, double t)
{
    if (n < 6 || memcmp(l, "data: ", 6) != 0) return;
    const char *k;
    if ((k = memmem(l, n, "\"bench_sync\": ", 14))) {
        int v = atoi(k + 14);
        if (v > s->synced) s->synced = v;
    } else if ((k = memmem(l, n, "\"bench_seq\": ", 13))) {
        int v = atoi(k + 13);
        if (v < 1 || v > phase_events) {
            unexpected++;
            return;
        }
        uint64_t bit = 1ULL << (v - 1);
        if (s->mask & bit) {
            dups++;
            return;
        }
        s->mask |= bit;
        t_recv[(size_t)(s - st) * MAX_EVENTS + (size_t)(v - 1)] = t;
    }
}

static void stream_read(struct stream *s, double t)
{
    char buf[8192];
    for (;;) {
        ssize_t n = read(s->fd, buf, sizeof buf);
        if (n == 0) {
            stream_kill(s, "closed by the server");
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN) stream_kill(s, strerror(errno));
            return;
        }
        size_t i = 0;
        if (s->state == ST_HEADERS) {
            size_t take = (size_t)n;
            if (take > CARRY - 1u - s->clen) take = CARRY - 1u - s->clen;
            memcpy(s->carry + s->clen, buf, take);
            s->clen = (uint16_t)(s->clen + take);
            s->carry[s->clen] = 0;
            char *end = strstr(s->carry, "\r\n\r\n");
            if (!end) {
                if (s->clen >= CARRY - 1) {
                    stream_kill(s, "response headers too long");
                    return;
                }
                continue;
            }
            if (strncmp(s->carry, "HTTP/1.1 200 ", 13) != 0) {
                if (!bad_status) {
                    char *eol = strstr(s->carry, "\r\n");
                    snprintf(bad_line, sizeof bad_line, "%.*s", (int)(eol - s->carry), s->carry);
                }
                bad_status++;
                stream_kill(s, "status not 200");
                return;
            }
            /* what followed the headers, in this read */
            size_t hdr = (size_t)(end + 4 - s->carry);
            size_t before = s->clen - take; /* carried from earlier reads */
            i = hdr - before;
            s->clen = 0;
            s->state = ST_LIVE;
        }
        for (size_t j = i; j < (size_t)n; j++) {
            if (buf[j] != '\n') continue;
            if (s->clen) {
                size_t add = j - i;
                if (s->clen + add > CARRY) add = CARRY - s->clen;
                memcpy(s->carry + s->clen, buf + i, add);
                stream_line(s, s->carry, s->clen + add, t);
                s->clen = 0;
            } else {
                stream_line(s, buf + i, j - i, t);
            }
            i = j + 1;
        }
        if (i < (size_t)n) {
            size_t add = (size_t)n - i;
            if (s->clen + add > CARRY)
                add = CARRY - s->clen; /* long lines: only their start matters */
            memcpy(s->carry + s->clen, buf + i, add);
            s->clen = (uint16_t)(s->clen + add);
        }
        if ((size_t)n < sizeof buf) return;
    }
}

/* One turn of the loop, waiting at most until `until`. */
static void turn(double until)
{
    struct epoll_event evs[1024];
    double left = until - now();
    int ms = left > 0 ? (int)(left * 1000) + 1 : 0;
    int n = epoll_wait(ep, evs, 1024, ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        double t = now();
        uint32_t k = evs[i].data.u32;
        if (k == PG_TAG) {
            pg_readable(t);
            continue;
        }
        struct stream *s = &st[k];
        if (s->state == ST_CONNECTING) {
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) stream_write(s);
            if (s->state == ST_CONNECTING || s->state == ST_DEAD) continue;
        }
        if (s->state != ST_DEAD && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            stream_read(s, t);
    }
}

static int count_state(int from, int state)
{
    int c = 0;
    for (int i = from; i < nst; i++)
        c += st[i].state == state;
    return c;
}

/* Open streams until `target` exist, at most opt_window without headers. */
static void open_streams(int target, double timeout_s)
{
    double t0 = now(), until = t0 + timeout_s;
    int first = nst;
    for (;;) {
        int pending = count_state(first, ST_CONNECTING) + count_state(first, ST_HEADERS);
        while (nst < target && pending < opt_window) {
            stream_open();
            pending++;
        }
        if (nst == target && pending == 0) break;
        if (now() > until)
            die("after %.0f s, %d of %d streams still without response headers", timeout_s, pending,
                target - first);
        turn(now() + 0.05);
    }
    printf("open streams=%d new=%d secs=%.3f dead=%ld\n", nst, nst - first, now() - t0, dead);
    fflush(stdout);
    if (bad_status) die("%ld streams answered other than 200, the first: %s", bad_status, bad_line);
    if (dead) die("%ld streams were lost while opening", dead);
}

static void wait_pg(double until)
{
    while (pg_busy) {
        if (now() > until) die("INSERT did not complete in time");
        turn(until);
    }
}

/* Every open stream has received a sync event inserted after it went live. */
static void sync_streams(double timeout_s)
{
    static int sync_seq;
    double t0 = now(), until = t0 + timeout_s;
    int base = sync_seq, rounds = 0;
    for (;;) {
        pg_insert(++sync_seq, 1);
        rounds++;
        wait_pg(until);
        double next = now() + 0.1;
        int behind = 0;
        while (now() < next) {
            turn(next);
        }
        for (int i = 0; i < nst; i++)
            if (st[i].state != ST_DEAD && st[i].synced <= base) behind++;
        if (!behind) break;
        if (now() > until) die("after %.0f s, %d streams are not live yet", timeout_s, behind);
    }
    /* one more, which every stream must get now */
    int last = ++sync_seq;
    pg_insert(last, 1);
    wait_pg(until);
    for (;;) {
        int behind = 0;
        for (int i = 0; i < nst; i++)
            if (st[i].state != ST_DEAD && st[i].synced < last) behind++;
        if (!behind) break;
        if (now() > until)
            die("after %.0f s, %d live streams missed sync event %d", timeout_s, behind, last);
        turn(now() + 0.05);
    }
    printf("sync streams=%d rounds=%d secs=%.3f\n", nst - (int)dead, rounds + 1, now() - t0);
    fflush(stdout);
    if (dead) die("%ld streams were lost before the measurement", dead);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    if (!n) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/* Insert the measured events and report the deliveries. */
static void measure(const char *name, int interval_ms)
{
    phase_events = opt_events;
    for (int i = 0; i < nst; i++)
        st[i].mask = 0;
    memset(t_recv, 0, (size_t)nst * MAX_EVENTS * sizeof *t_recv);
    memset(t_commit, 0, sizeof t_commit);
    long dups0 = dups;
    long c0 = proc_cpu_ticks();
    double b0, s0, b1, s1, u0 = self_cpu();
    sys_ticks(&b0, &s0);
    double t0 = now();
    for (int k = 1; k <= opt_events; k++) {
        double at = t0 + (k - 1) * interval_ms / 1000.0;
        while (now() < at)
            turn(at);
        if (pg_busy) wait_pg(now() + 10);
        pg_insert(k, 0);
    }
    wait_pg(now() + 10);
    /* then wait for the deliveries (at most 10 s) */
    size_t want = (size_t)(nst - dead) * (size_t)opt_events, got = 0;
    double until = now() + 10;
    for (;;) {
        got = 0;
        for (int i = 0; i < nst; i++)
            if (st[i].state != ST_DEAD) got += (size_t)__builtin_popcountll(st[i].mask);
        if (got >= want || now() > until) break;
        turn(now() + 0.02);
    }
    double t1 = now();
    long c1 = proc_cpu_ticks();
    double u1 = self_cpu();
    sys_ticks(&b1, &s1);

    double *lc = malloc(want * sizeof *lc), *ls = malloc(want * sizeof *ls);
    if (!lc || !ls) die("out of memory");
    size_t n = 0;
    int missing_streams = 0;
    for (int i = 0; i < nst; i++) {
        if (st[i].state == ST_DEAD) continue;
        if (__builtin_popcountll(st[i].mask) != opt_events) missing_streams++;
        for (int k = 1; k <= opt_events; k++) {
            double r = t_recv[(size_t)i * MAX_EVENTS + (size_t)(k - 1)];
            if (r == 0) continue;
            lc[n] = (r - t_commit[k]) * 1000;
            ls[n] = (r - t_send[k]) * 1000;
            n++;
        }
    }
    double rtt[MAX_EVENTS], last[MAX_EVENTS];
    for (int k = 1; k <= opt_events; k++) {
        rtt[k - 1] = (t_commit[k] - t_send[k]) * 1000;
        last[k - 1] = 0;
        for (int i = 0; i < nst; i++) {
            double r = t_recv[(size_t)i * MAX_EVENTS + (size_t)(k - 1)];
            if (r != 0 && (r - t_commit[k]) * 1000 > last[k - 1])
                last[k - 1] = (r - t_commit[k]) * 1000;
        }
    }
    /* how long each event took to reach its last stream, in order */
    printf("fanout phase=%s last_ms=", name);
    for (int k = 0; k < opt_events; k++)
        printf("%s%.1f", k ? "," : "", last[k]);
    printf("\n");
    qsort(last, (size_t)opt_events, sizeof *last, cmp_double);
    qsort(lc, n, sizeof *lc, cmp_double);
    qsort(ls, n, sizeof *ls, cmp_double);
    qsort(rtt, (size_t)opt_events, sizeof *rtt, cmp_double);
    long hz = sysconf(_SC_CLK_TCK);
    printf("latency phase=%s streams=%d events=%d deliveries=%zu expected=%zu missing_streams=%d"
           " dead=%ld dups=%ld unexpected=%ld"
           " commit_p50_ms=%.3f commit_p99_ms=%.3f commit_max_ms=%.3f commit_min_ms=%.3f"
           " send_p50_ms=%.3f send_p99_ms=%.3f send_max_ms=%.3f insert_rtt_p50_ms=%.3f"
           " last_p50_ms=%.3f last_max_ms=%.3f"
           " reeld_cpu_s=%.2f client_cpu_s=%.2f busy_cores=%.2f secs=%.3f\n",
           name, nst - (int)dead, opt_events, n, want, missing_streams, dead, dups - dups0,
           unexpected, pct(lc, n, 0.5), pct(lc, n, 0.99), n ? lc[n - 1] : 0, n ? lc[0] : 0,
           pct(ls, n, 0.5), pct(ls, n, 0.99), n ? ls[n - 1] : 0, pct(rtt, (size_t)opt_events, 0.5),
           pct(last, (size_t)opt_events, 0.5), last[opt_events - 1], (double)(c1 - c0) / (double)hz,
           u1 - u0, (b1 - b0) / (double)hz / (t1 - t0), t1 - t0);
    fflush(stdout);
    free(lc);
    free(ls);
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: sse_client --port P --pid REELD_PID --org ORG_UUID [--streams N] [--events E]\n"
        "                  [--interval-ms MS] [--fast-interval-ms MS] [--window W] [--host IP]\n"
        "                  [--hold-ms MS: keep the streams open that long before the events]\n"
        "       (env SSE_TOKEN: the bearer token; env SSE_PGURL: libpq conninfo)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (strcmp(a, "--host") == 0)
            opt_host = v;
        else if (strcmp(a, "--port") == 0)
            opt_port = atoi(v);
        else if (strcmp(a, "--pid") == 0)
            opt_pid = atoi(v);
        else if (strcmp(a, "--org") == 0)
            opt_org = v;
        else if (strcmp(a, "--streams") == 0)
            opt_streams = atoi(v);
        else if (strcmp(a, "--events") == 0)
            opt_events = atoi(v);
        else if (strcmp(a, "--interval-ms") == 0)
            opt_interval_ms = atoi(v);
        else if (strcmp(a, "--fast-interval-ms") == 0)
            opt_fast_interval_ms = atoi(v);
        else if (strcmp(a, "--hold-ms") == 0)
            opt_hold_ms = atoi(v);
        else if (strcmp(a, "--window") == 0)
            opt_window = atoi(v);
        else
            usage();
        i++;
    }
    opt_token = getenv("SSE_TOKEN");
    opt_conninfo = getenv("SSE_PGURL");
    if (opt_port <= 0 || opt_pid <= 0 || !opt_org || !opt_token || !opt_conninfo) usage();
    if (opt_streams < 1 || opt_events < 1 || opt_events > MAX_EVENTS || opt_interval_ms < 1 ||
        opt_window < 1)
        die("--streams >= 1, 1 <= --events <= %d, --interval-ms >= 1, --window >= 1", MAX_EVENTS);

    int rl = snprintf(req, sizeof req,
                      "GET /api/events HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                      "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                      opt_host, opt_port, opt_token);
    if (rl < 0 || (size_t)rl >= sizeof req) die("token too long");
    reqlen = (size_t)rl;

    st = calloc((size_t)opt_streams, sizeof *st);
    t_recv = calloc((size_t)opt_streams * MAX_EVENTS, sizeof *t_recv);
    if (!st || !t_recv) die("out of memory");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));

    pg = PQconnectdb(opt_conninfo);
    if (PQstatus(pg) != CONNECTION_OK) die("libpq: %s", PQerrorMessage(pg));
    struct epoll_event pe = {.events = EPOLLIN, .data.u32 = PG_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, PQsocket(pg), &pe) != 0) die("epoll_ctl: %s", strerror(errno));

    /* one stream: warms reeld up (LISTEN, statements, token cache) and gives
     * the fan-out-of-1 figure */
    open_streams(1, 30);
    sync_streams(30);
    measure("one", opt_interval_ms);

    print_rss("before");
    open_streams(opt_streams, 90);
    sync_streams(60);
    print_rss("after");
    if (opt_hold_ms > 0) { /* inspection time, streams open and served */
        double until = now() + opt_hold_ms / 1000.0;
        while (now() < until)
            turn(until);
    }
    measure("many", opt_interval_ms);
    print_rss("after_events");
    if (opt_fast_interval_ms > 0) measure("many_fast", opt_fast_interval_ms);

    for (int i = 0; i < nst; i++)
        if (st[i].state != ST_DEAD) close(st[i].fd);
    PQfinish(pg);
    return 0;
}
