/* Prometheus metrics. Counters and histograms live in fixed tables keyed
 * by stable strings (route patterns and names owned elsewhere for the
 * process's life); rendering walks them. Gauges are read at scrape time
 * through callbacks. */
#ifndef REELD_METRICS_H
#define REELD_METRICS_H

#include <stdint.h>

struct evbuffer;

/* One completed HTTP request. route must outlive the process (router
 * patterns do). */
void metrics_http(const char *route, const char *method, int status, int64_t us);
/* A named counter with one label value (e.g. "reeld_provider_calls_total",
 * "provider", "openai"); name/help/label must be string literals. */
void metrics_count(const char *name, const char *help, const char *label, const char *value,
                   long long n);
/* A gauge read at scrape time. */
void metrics_gauge(const char *name, const char *help, double (*fn)(void));
/* Prometheus text exposition format 0.0.4. */
void metrics_render(struct evbuffer *out);

#endif
