/* Driving a unit test's event loop: run it until a flag or a condition
 * holds, with a deadline so a hang fails the test instead of the run. */
#ifndef REELD_T_LOOP_H
#define REELD_T_LOOP_H

#include <event2/event.h>

static inline void t_loop_set_flag(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

static inline void t_loop_nothing(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until *flag is set or ms pass; returns *flag. */
static inline int t_run_until(struct event_base *base, const int *flag, int ms)
{
    int expired = 0;
    struct event *t = evtimer_new(base, t_loop_set_flag, &expired);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t, &tv);
    while (!*flag && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag;
}

/* Lets the loop run for ms milliseconds. */
static inline void t_run_for(struct event_base *base, int ms)
{
    int never = 0;
    t_run_until(base, &never, ms);
}

/* Runs the loop until cond(arg) holds, checked at least every 20 ms and
 * once per turn (it may query). Returns 0, or -1 when it still does not
 * hold after limit_s: a hang. */
static inline int t_run_cond(struct event_base *base, int (*cond)(void *), void *arg, int limit_s)
{
    int expired = 0, ok;
    struct event *guard = evtimer_new(base, t_loop_set_flag, &expired);
    struct event *tick = event_new(base, -1, EV_PERSIST, t_loop_nothing, NULL);
    struct timeval g = {limit_s, 0}, t = {0, 20000};
    evtimer_add(guard, &g);
    evtimer_add(tick, &t);
    while (!(ok = cond(arg)) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
    event_free(tick);
    return ok ? 0 : -1;
}

/* A cond for t_run_cond: the int at arg is nonzero. */
static inline int t_flag_set(void *arg)
{
    return *(const int *)arg != 0;
}

#endif
