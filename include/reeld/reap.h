/* Deferred free (the pgbouncer/redis "justfree" habit).
 *
 * An object that a callback still uses further up the stack is never
 * freed in place: it is queued here and released at one known point, a
 * zero-delay event that runs after the current callback chain unwinds. */
#ifndef REELD_REAP_H
#define REELD_REAP_H

struct event_base;

typedef void (*reap_fn)(void *obj);

/* Must be called once before reap_later. */
int reap_init(struct event_base *base);
/* Queue fn(obj) for the next reap point. Never fails (the node is
 * allocated with the caller's object in mind: at most one per object). */
void reap_later(reap_fn fn, void *obj);
/* Run everything queued now (used at shutdown). */
void reap_flush(void);

#endif
