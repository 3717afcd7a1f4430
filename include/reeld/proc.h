/* Child processes read through the loop (ffprobe, ffmpeg, the local
 * recognizer). The child's stdout is collected (bounded) or streamed;
 * stderr is kept (bounded tail) for error messages; exit is observed
 * without blocking (pidfd on Linux). A timeout kills the child.
 *
 * Exactly one completion callback per started process, from the loop,
 * never inside proc_start; none after proc_cancel (which kills the child
 * and reaps it asynchronously).
 *
 * The child runs with stdin from stdin_path (or /dev/null), stdout and
 * stderr to pipes, every other descriptor closed, default signal
 * dispositions and its own process group: kills (timeout, output too
 * large, cancel) are SIGKILL to the whole group, so what it started goes
 * too. The callback runs once the child has exited and been reaped and
 * both pipes reached EOF; after a kill, once it has been reaped (pipes
 * still held by leftovers are not waited for). No zombie is left. */
#ifndef REELD_PROC_H
#define REELD_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct event_base;
struct proc;

/* Passed to the completion callback; every pointer is valid only during
 * the callback (copy what you keep). */
struct proc_result {
    int exited;      /* 1 when the child exited normally */
    int status;      /* exit status, or the signal number when !exited */
    int timed_out;   /* killed by the timeout (error stays NULL) */
    const char *out; /* collected stdout (NUL-terminated), "" when streamed */
    size_t out_len;
    const char *err;   /* last 4 KiB of stderr (NUL-terminated) */
    const char *error; /* NULL, or why it could not run ("cannot run X: ..."),
                          "output too large" (over max_out; killed), or
                          "stopped by the reader" (on_data returned -1) */
};

typedef void (*proc_done_cb)(void *arg, const struct proc_result *res);
/* Streaming stdout: called on the loop with each piece read (at most
 * 64 KiB); return 0 to go on, -1 to kill the child (the completion then
 * carries error "stopped by the reader"). It may call proc_cancel. */
typedef int (*proc_data_cb)(void *arg, const char *data, size_t len);

struct proc_opts {
    const char *const *argv; /* argv[0] is looked up in PATH */
    const char *stdin_path;  /* file to feed as stdin, or NULL for /dev/null */
    size_t max_out;          /* collected stdout bound; 0 = 1 MiB; unused when streaming */
    int timeout_ms;          /* 0 = 60 s */
    proc_data_cb on_data;    /* streaming mode when set */
};

/* Starts argv with o's options. Returns the handle, then done runs
 * exactly once on a later loop turn, also when the program cannot be run
 * (res->error says why). Returns NULL, with no callback, only for bad
 * arguments (NULL argv or done) or when memory is exhausted. The handle
 * is valid until done returns (it is freed then) or until proc_cancel. */
struct proc *proc_start(struct event_base *base, const struct proc_opts *o, proc_done_cb done,
                        void *arg);
/* Kills the child (SIGKILL to its group) and forgets it: no callback
 * runs afterwards; it is reaped in the background. May be called from
 * on_data. Inside done it does nothing; after done returns, or a second
 * time, the handle is gone and must not be passed. */
void proc_cancel(struct proc *p);
/* The child's pid (its process group id too), or -1 if it never ran. */
pid_t proc_pid(const struct proc *p);
/* Runs every child from now on under `exe guard <pid>` (src/proc/guard.c),
 * so that a reeld killed outright (SIGKILL, a crash) does not leave its
 * children working: the guard kills the child's whole group when reeld
 * dies. exe is reeld's own binary; NULL turns it off (the default, as in
 * the unit tests). A program that cannot be run then shows as exit status
 * 127 with "cannot run PROG: ..." on stderr rather than as res->error. */
void proc_set_guard(const char *exe);
/* The `guard` subcommand. */
int proc_guard_main(int argc, char **argv);

/* For process exit, after the loop has stopped: SIGKILLs every child
 * still running (cancelled ones included), waits for each, and frees
 * every handle without a callback. */
void proc_shutdown(void);

#endif
