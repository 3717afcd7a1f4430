/* Prometheus metrics; see include/reeld/metrics.h. Tables are small and
 * searched linearly: a few dozen routes times a few statuses. */
#include "reeld/metrics.h"

#include <string.h>

#include <event2/buffer.h>

#define MAX_HTTP 512
#define MAX_COUNTERS 256
#define MAX_GAUGES 64
#define MAX_HIST 128

static const double buckets_ms[] = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
#define NBUCKETS (sizeof buckets_ms / sizeof buckets_ms[0])

struct http_ctr {
    const char *route;
    char method[8];
    int status;
    long long n;
};
struct hist {
    const char *route;
    long long b[NBUCKETS];
    long long count;
    double sum_ms;
};
struct counter {
    const char *name, *help, *label;
    char value[48];
    long long n;
};
struct gauge {
    const char *name, *help;
    double (*fn)(void);
};

static struct http_ctr http_tab[MAX_HTTP];
static int nhttp;
static struct hist hist_tab[MAX_HIST];
static int nhist;
static struct counter ctr_tab[MAX_COUNTERS];
static int nctr;
static struct gauge gauge_tab[MAX_GAUGES];
static int ngauge;

void metrics_http(const char *route, const char *method, int status, int64_t us)
{
    double ms = (double)us / 1000.0;
    int i;
    for (i = 0; i < nhttp; i++)
        if (http_tab[i].route == route && http_tab[i].status == status &&
            strcmp(http_tab[i].method, method) == 0)
            break;
    if (i == nhttp && nhttp < MAX_HTTP) {
        http_tab[i].route = route;
        strncpy(http_tab[i].method, method, sizeof http_tab[i].method - 1);
        http_tab[i].status = status;
        nhttp++;
    }
    if (i < nhttp) http_tab[i].n++;
    for (i = 0; i < nhist; i++)
        if (hist_tab[i].route == route) break;
    if (i == nhist) {
        if (nhist == MAX_HIST) return;
        hist_tab[nhist++].route = route;
    }
    struct hist *h = &hist_tab[i];
    for (size_t b = 0; b < NBUCKETS; b++)
        if (ms <= buckets_ms[b]) h->b[b]++;
    h->count++;
    h->sum_ms += ms;
}

void metrics_count(const char *name, const char *help, const char *label, const char *value,
                   long long n)
{
    int i;
    for (i = 0; i < nctr; i++)
        if (ctr_tab[i].name == name && strcmp(ctr_tab[i].value, value ? value : "") == 0) break;
    if (i == nctr) {
        if (nctr == MAX_COUNTERS) return;
        ctr_tab[i].name = name;
        ctr_tab[i].help = help;
        ctr_tab[i].label = label;
        strncpy(ctr_tab[i].value, value ? value : "", sizeof ctr_tab[i].value - 1);
        nctr++;
    }
    ctr_tab[i].n += n;
}

void metrics_gauge(const char *name, const char *help, double (*fn)(void))
{
    for (int i = 0; i < ngauge; i++)
        if (gauge_tab[i].name == name) return;
    if (ngauge < MAX_GAUGES) gauge_tab[ngauge++] = (struct gauge){name, help, fn};
}

void metrics_render(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP reeld_http_requests_total HTTP requests by route, method "
                             "and status.\n# TYPE reeld_http_requests_total counter\n");
    for (int i = 0; i < nhttp; i++)
        evbuffer_add_printf(out,
                            "reeld_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} "
                            "%lld\n",
                            http_tab[i].route, http_tab[i].method, http_tab[i].status,
                            http_tab[i].n);
    evbuffer_add_printf(out, "# HELP reeld_http_request_duration_seconds Request latency.\n"
                             "# TYPE reeld_http_request_duration_seconds histogram\n");
    for (int i = 0; i < nhist; i++) {
        const struct hist *h = &hist_tab[i];
        for (size_t b = 0; b < NBUCKETS; b++)
            evbuffer_add_printf(out,
                                "reeld_http_request_duration_seconds_bucket{route=\"%s\","
                                "le=\"%g\"} %lld\n",
                                h->route, buckets_ms[b] / 1000.0, h->b[b]);
        evbuffer_add_printf(out,
                            "reeld_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} "
                            "%lld\nreeld_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
                            "reeld_http_request_duration_seconds_count{route=\"%s\"} %lld\n",
                            h->route, h->count, h->route, h->sum_ms / 1000.0, h->route, h->count);
    }
    const char *last = NULL;
    for (int i = 0; i < nctr; i++) {
        const struct counter *c = &ctr_tab[i];
        if (c->name != last) {
            int seen = 0;
            for (int k = 0; k < i; k++)
                seen |= ctr_tab[k].name == c->name;
            if (!seen)
                evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", c->name, c->help,
                                    c->name);
            last = c->name;
        }
        evbuffer_add_printf(out, "%s{%s=\"%s\"} %lld\n", c->name, c->label, c->value, c->n);
    }
    for (int i = 0; i < ngauge; i++)
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %g\n", gauge_tab[i].name,
                            gauge_tab[i].help, gauge_tab[i].name, gauge_tab[i].name,
                            gauge_tab[i].fn());
}
