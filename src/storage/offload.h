/* Private to src/storage: one helper thread for the calls that may block
 * (fdatasync, fsync, rename into place), with completions handed back to
 * the loop.
 *
 * A job's work() runs on the helper thread and must touch nothing but the
 * job itself (no libevent, no loop-owned state); its done() runs on the
 * loop afterwards and frees the job. Jobs run one at a time, in
 * submission order. A job submitted with work == NULL is passed straight
 * to done() on a later loop turn: that is how errors found on the loop
 * are reported without calling back inside the caller. */
#ifndef REELD_STORAGE_OFFLOAD_H
#define REELD_STORAGE_OFFLOAD_H

#include <stddef.h>

struct event_base;

struct offload_job {
    void (*work)(struct offload_job *j);
    void (*done)(struct offload_job *j);
    struct offload_job *next;
};

/* Starts the helper thread; completions are delivered on base. */
int offload_start(struct event_base *base, char *err, size_t errlen);
/* Queues a job. Never fails and never runs done() before returning. */
void offload_submit(struct offload_job *j);
/* Lets the thread finish every queued job, joins it, then runs the
 * done() of every job not yet delivered (on the caller's thread, which
 * must be the loop's, with the loop stopped). */
void offload_stop(void);

#endif
