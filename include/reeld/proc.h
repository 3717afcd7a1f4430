/* Child processes read through the loop (ffprobe, ffmpeg, the local
 * recognizer). The child's stdout is collected (bounded) or streamed;
 * stderr is kept (bounded tail) for error messages; exit is observed
 * without blocking (pidfd on Linux). A timeout kills the child.
 *
 * Exactly one completion callback per started process, from the loop,
 * never inside proc_start; none after proc_cancel (which kills the child
 * and reaps it asynchronously). */
#ifndef REELD_PROC_H
#define REELD_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct event_base;
struct proc;

struct proc_result {
    int exited;      /* 1 when the child exited normally */
    int status;      /* exit status, or the signal number when !exited */
    int timed_out;   /* killed by the timeout */
    const char *out; /* collected stdout (NUL-terminated), "" when streamed */
    size_t out_len;
    const char *err;   /* last bytes of stderr (NUL-terminated) */
    const char *error; /* NULL, or why it could not run / output too large */
};

typedef void (*proc_done_cb)(void *arg, const struct proc_result *res);
/* Streaming stdout: return 0 to go on, -1 to kill the child. */
typedef int (*proc_data_cb)(void *arg, const char *data, size_t len);

struct proc_opts {
    const char *const *argv; /* argv[0] is looked up in PATH */
    const char *stdin_path;  /* file to feed as stdin, or NULL for /dev/null */
    size_t max_out;          /* collected stdout bound; 0 = 1 MiB */
    int timeout_ms;          /* 0 = 60 s */
    proc_data_cb on_data;    /* streaming mode when set */
};

struct proc *proc_start(struct event_base *base, const struct proc_opts *o, proc_done_cb done,
                        void *arg);
void proc_cancel(struct proc *p);
pid_t proc_pid(const struct proc *p);

#endif
