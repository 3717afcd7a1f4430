/* Token buckets by key (e.g. a user id): `count` requests per `window_s`
 * seconds, refilled continuously, a burst of at most count. In memory, in
 * one process (each reeld process limits on its own). A key whose bucket
 * is full again is forgotten, so memory follows the keys active within a
 * window. */
#ifndef REELD_RATELIMIT_H
#define REELD_RATELIMIT_H

#include <stdint.h>

struct ratelimit;

/* NULL on bad arguments (count < 1, window_s < 1) or no memory. */
struct ratelimit *ratelimit_new(int count, int window_s);
void ratelimit_free(struct ratelimit *rl);

/* Takes one token of key's bucket at now_ms (monotonic). Returns 0 when
 * taken, else the milliseconds until one is available (> 0; nothing is
 * taken). A key longer than 63 bytes is cut. */
int64_t ratelimit_take(struct ratelimit *rl, const char *key, int64_t now_ms);

#endif
