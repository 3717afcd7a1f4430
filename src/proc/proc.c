/* Child processes read through the loop; see include/reeld/proc.h.
 *
 * A child is started with posix_spawnp (glibc runs it with CLONE_VFORK:
 * no copy of our page tables, and exec failures come back as an error
 * code), in its own process group so a kill reaches what it started too.
 * Three things are watched: stdout, stderr (nonblocking pipe read ends)
 * and the exit (a pidfd). The callback runs when the child has been
 * reaped and both pipes reached EOF, or when it was killed and reaped. */
#include "reeld/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

extern char **environ;

#define ERR_TAIL 4096
#define READ_PIECE 65536
#define READS_PER_WAKE 16 /* at most 1 MiB per wake-up, then yield to the loop */
#define POLL_MS 50
#define DEFAULT_MAX_OUT ((size_t)1 << 20)
#define DEFAULT_TIMEOUT_MS 60000

struct proc {
    struct event_base *base;
    pid_t pid; /* -1 when it never started */
    int pidfd;
    int fd_out, fd_err; /* -1 once at EOF or abandoned */
    struct event *ev_out, *ev_err, *ev_exit, *ev_timeout, *ev_fail;
    proc_data_cb on_data;
    proc_done_cb done;
    void *arg;
    char *out; /* collected stdout, out_cap >= out_len + 1 */
    size_t out_len, out_cap, max_out;
    char tail[ERR_TAIL + 1]; /* the last ERR_TAIL bytes of stderr */
    size_t tail_len;
    int reaped, wstatus, status_lost;
    int killed, timed_out;
    const char *error;
    char errmsg[256];
    int in_cb;        /* a callback of ours is running: proc_cancel defers */
    int cancel_asked; /* proc_cancel was called from that callback */
    int cancelled;    /* no callback; freed once reaped */
    struct proc *prev, *next;
};

/* reeld's binary for proc_set_guard, "" when off. */
#define PROC_MAX_ARGS 64
static char guard_exe[4096];
static struct proc *live; /* every handle not yet freed, for proc_shutdown */

/* ---- teardown ---------------------------------------------------------- */

static void drop_event(struct event **ev)
{
    if (*ev) event_free(*ev);
    *ev = NULL;
}

static void close_out(struct proc *p)
{
    drop_event(&p->ev_out);
    if (p->fd_out >= 0) close(p->fd_out);
    p->fd_out = -1;
}

static void close_err(struct proc *p)
{
    drop_event(&p->ev_err);
    if (p->fd_err >= 0) close(p->fd_err);
    p->fd_err = -1;
}

static void proc_free(struct proc *p)
{
    close_out(p);
    close_err(p);
    drop_event(&p->ev_exit);
    drop_event(&p->ev_timeout);
    drop_event(&p->ev_fail);
    if (p->pidfd >= 0) close(p->pidfd);
    if (p->prev)
        p->prev->next = p->next;
    else
        live = p->next;
    if (p->next) p->next->prev = p->prev;
    free(p->out);
    free(p);
}

/* SIGKILL to the child's group (what it started too). After the child
 * was reaped this is only called while its pipes are still open, which
 * means members of the group are alive and keep its id from reuse. */
static void kill_child(struct proc *p)
{
    p->killed = 1;
    if (p->pid <= 0) return;
    if (kill(-p->pid, SIGKILL) != 0 && !p->reaped) kill(p->pid, SIGKILL);
}

static void reap(struct proc *p)
{
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        p->reaped = 1;
        p->wstatus = st;
    } else if (r < 0 && errno == ECHILD) {
        /* Someone else reaped it (SIGCHLD set to SIG_IGN): it is gone. */
        p->reaped = 1;
        p->status_lost = 1;
    }
    if (p->reaped) drop_event(&p->ev_exit);
}

/* ---- completion -------------------------------------------------------- */

static void complete(struct proc *p)
{
    struct proc_result r = {0};
    if (p->reaped && !p->status_lost) {
        if (WIFEXITED(p->wstatus)) {
            r.exited = 1;
            r.status = WEXITSTATUS(p->wstatus);
        } else if (WIFSIGNALED(p->wstatus)) {
            r.status = WTERMSIG(p->wstatus);
        }
    }
    r.timed_out = p->timed_out;
    r.out = p->out ? p->out : "";
    r.out_len = p->out_len;
    if (p->out) p->out[p->out_len] = '\0';
    p->tail[p->tail_len] = '\0';
    r.err = p->tail;
    r.error = p->error ? p->error : p->status_lost ? "exit status lost" : NULL;
    p->in_cb = 1;
    p->done(p->arg, &r);
    proc_free(p);
}

/* Completes when the child is reaped and both pipes are at EOF, or when
 * it is reaped after a kill (then whatever still holds the pipes is
 * killed and not waited for). May free p. */
static void check_done(struct proc *p)
{
    if (!p->reaped) return;
    if (p->fd_out >= 0 || p->fd_err >= 0) {
        if (!p->killed) return;
        kill_child(p);
        close_out(p);
        close_err(p);
    }
    complete(p);
}

static void cancel_now(struct proc *p)
{
    p->cancelled = 1;
    p->cancel_asked = 0;
    /* Reaped with a pipe still open: what it started is alive; kill it. */
    if (!p->reaped || p->fd_out >= 0 || p->fd_err >= 0) kill_child(p);
    close_out(p);
    close_err(p);
    drop_event(&p->ev_timeout);
    drop_event(&p->ev_fail);
    /* Unreaped: the exit watch stays and frees p after waitpid. */
    if (p->pid <= 0 || p->reaped) proc_free(p);
}

/* ---- events ------------------------------------------------------------ */

static void on_exit_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct proc *p = arg;
    reap(p);
    if (!p->reaped) return;
    if (p->cancelled) {
        proc_free(p);
        return;
    }
    check_done(p);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct proc *p = arg;
    p->timed_out = 1;
    kill_child(p);
    check_done(p);
}

static void on_fail(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    complete(arg);
}

static int keep_out(struct proc *p, const char *d, size_t n)
{
    if (n > p->max_out - p->out_len) return -1;
    if (p->out_len + n + 1 > p->out_cap) {
        size_t cap = p->out_cap ? p->out_cap : 4096;
        while (cap < p->out_len + n + 1)
            cap *= 2;
        if (cap > p->max_out + 1) cap = p->max_out + 1;
        char *o = realloc(p->out, cap);
        if (!o) return -1;
        p->out = o;
        p->out_cap = cap;
    }
    memcpy(p->out + p->out_len, d, n);
    p->out_len += n;
    return 0;
}

static void keep_tail(struct proc *p, const char *d, size_t n)
{
    if (n >= ERR_TAIL) {
        memcpy(p->tail, d + n - ERR_TAIL, ERR_TAIL);
        p->tail_len = ERR_TAIL;
        return;
    }
    if (p->tail_len + n > ERR_TAIL) {
        size_t drop = p->tail_len + n - ERR_TAIL;
        memmove(p->tail, p->tail + drop, p->tail_len - drop);
        p->tail_len -= drop;
    }
    memcpy(p->tail + p->tail_len, d, n);
    p->tail_len += n;
}

/* Hands n bytes of stdout to the reader or the buffer. Returns 0 to go
 * on, 1 when p is gone (cancelled from on_data), -1 to stop reading. */
static int take_out(struct proc *p, const char *d, size_t n)
{
    if (p->on_data) {
        p->in_cb = 1;
        int rc = p->on_data(p->arg, d, n);
        p->in_cb = 0;
        if (p->cancel_asked) {
            cancel_now(p);
            return 1;
        }
        if (rc != 0) {
            if (!p->error) p->error = "stopped by the reader";
            kill_child(p);
            return -1;
        }
        return 0;
    }
    if (keep_out(p, d, n) != 0) {
        if (!p->error) p->error = "output too large";
        kill_child(p);
        return -1;
    }
    return 0;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct proc *p = arg;
    int is_out = fd == p->fd_out;
    char buf[READ_PIECE];
    for (int i = 0; i < READS_PER_WAKE; i++) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { /* EOF, or an error that ends the stream just the same */
            if (is_out)
                close_out(p);
            else
                close_err(p);
            break;
        }
        if (!is_out) {
            keep_tail(p, buf, (size_t)n);
            continue;
        }
        int rc = take_out(p, buf, (size_t)n);
        if (rc == 1) return;
        if (rc < 0) {
            close_out(p);
            break;
        }
    }
    check_done(p);
}

/* ---- start ------------------------------------------------------------- */

/* Keeps our descriptors above 2 so that the child's dup2 onto 0, 1, 2
 * never overwrites one that a later dup2 still needs (possible only when
 * this process runs with 0, 1 or 2 closed). */
static int high_fd(int fd)
{
    if (fd < 0 || fd > 2) return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return h;
}

static int spawn(struct proc *p, const struct proc_opts *o)
{
    const char *in_path = o->stdin_path ? o->stdin_path : "/dev/null";
    int in = -1, po[2] = {-1, -1}, pe[2] = {-1, -1};
    in = high_fd(open(in_path, O_RDONLY | O_CLOEXEC));
    if (in < 0) {
        snprintf(p->errmsg, sizeof p->errmsg, "cannot open %s: %s", in_path, strerror(errno));
        return -1;
    }
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        snprintf(p->errmsg, sizeof p->errmsg, "pipe: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        po[i] = high_fd(po[i]);
        pe[i] = high_fd(pe[i]);
    }
    if (po[0] < 0 || po[1] < 0 || pe[0] < 0 || pe[1] < 0) {
        snprintf(p->errmsg, sizeof p->errmsg, "fcntl: %s", strerror(errno));
        goto fail;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t sa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    /* Everything else goes, CLOEXEC or not: client sockets, database
     * connections and listeners must not leak into the child. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&sa);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    /* Default dispositions (we ignore SIGPIPE; ignored signals survive
     * exec), an empty mask, and a process group of its own. */
    posix_spawnattr_setsigdefault(&sa, &all);
    posix_spawnattr_setsigmask(&sa, &none);
    posix_spawnattr_setpgroup(&sa, 0);
    posix_spawnattr_setflags(&sa, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETPGROUP);
    /* under the guard: exe guard <our pid> argv... */
    const char *gargv[PROC_MAX_ARGS + 4];
    const char *const *av = o->argv;
    char me[24];
    size_t n = 0;
    while (o->argv[n])
        n++;
    if (guard_exe[0] && n <= PROC_MAX_ARGS) {
        snprintf(me, sizeof me, "%ld", (long)getpid());
        gargv[0] = guard_exe;
        gargv[1] = "guard";
        gargv[2] = me;
        memcpy(gargv + 3, o->argv, (n + 1) * sizeof *gargv);
        av = gargv;
    }
    int rc = posix_spawnp(&p->pid, av[0], &fa, &sa, (char *const *)av, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&sa);
    close(in);
    close(po[1]);
    close(pe[1]);
    if (rc != 0) {
        p->pid = -1;
        snprintf(p->errmsg, sizeof p->errmsg, "cannot run %s: %s", o->argv[0], strerror(rc));
        close(po[0]);
        close(pe[0]);
        return -1;
    }
    p->fd_out = po[0];
    p->fd_err = pe[0];
    fcntl(p->fd_out, F_SETFL, O_NONBLOCK);
    fcntl(p->fd_err, F_SETFL, O_NONBLOCK);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0) close(po[i]);
        if (pe[i] >= 0) close(pe[i]);
    }
    close(in);
    return -1;
}

/* Sets up the watches of a started child. On failure the child is
 * killed and reaped here (SIGKILL makes the wait short). */
static int watch(struct proc *p, int timeout_ms)
{
    p->ev_out = event_new(p->base, p->fd_out, EV_READ | EV_PERSIST, on_readable, p);
    p->ev_err = event_new(p->base, p->fd_err, EV_READ | EV_PERSIST, on_readable, p);
    p->ev_timeout = evtimer_new(p->base, on_timeout, p);
    p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
    struct timeval poll = {0, POLL_MS * 1000};
    int ok;
    if (p->pidfd >= 0) {
        p->ev_exit = event_new(p->base, p->pidfd, EV_READ | EV_PERSIST, on_exit_ready, p);
        ok = p->ev_exit && event_add(p->ev_exit, NULL) == 0;
    } else {
        /* No pidfd (Linux before 5.3, or a seccomp filter refusing it):
         * poll waitpid(WNOHANG). A SIGCHLD handler would be process-wide
         * and race with anyone else's children; a short poll is cheap. */
        p->ev_exit = event_new(p->base, -1, EV_PERSIST, on_exit_ready, p);
        ok = p->ev_exit && event_add(p->ev_exit, &poll) == 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    ok = ok && p->ev_out && p->ev_err && p->ev_timeout && event_add(p->ev_out, NULL) == 0 &&
         event_add(p->ev_err, NULL) == 0 && event_add(p->ev_timeout, &tv) == 0;
    if (ok) return 0;
    kill_child(p);
    while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    p->reaped = 1;
    p->status_lost = 1;
    close_out(p);
    close_err(p);
    drop_event(&p->ev_exit);
    drop_event(&p->ev_timeout);
    snprintf(p->errmsg, sizeof p->errmsg, "cannot watch the child: out of memory");
    return -1;
}

struct proc *proc_start(struct event_base *base, const struct proc_opts *o, proc_done_cb done,
                        void *arg)
{
    if (!base || !o || !o->argv || !o->argv[0] || !done) return NULL;
    struct proc *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->base = base;
    p->pid = -1;
    p->pidfd = p->fd_out = p->fd_err = -1;
    p->on_data = o->on_data;
    p->done = done;
    p->arg = arg;
    p->max_out = o->max_out ? o->max_out : DEFAULT_MAX_OUT;
    if (p->max_out > SIZE_MAX / 4)
        p->max_out = SIZE_MAX / 4; /* keeps the growth arithmetic exact */
    p->ev_fail = event_new(base, -1, 0, on_fail, p);
    if (!p->ev_fail) {
        free(p);
        return NULL;
    }
    p->next = live;
    if (live) live->prev = p;
    live = p;
    if (spawn(p, o) != 0 || watch(p, o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS) != 0) {
        p->error = p->errmsg;
        event_active(p->ev_fail, 0, 0);
    }
    return p;
}

void proc_cancel(struct proc *p)
{
    if (!p || p->cancelled) return;
    if (p->in_cb) {
        p->cancel_asked = 1;
        return;
    }
    cancel_now(p);
}

pid_t proc_pid(const struct proc *p)
{
    return p ? p->pid : -1;
}

void proc_set_guard(const char *exe)
{
    snprintf(guard_exe, sizeof guard_exe, "%s", exe ? exe : "");
}

void proc_shutdown(void)
{
    while (live) {
        struct proc *p = live;
        if (!p->reaped && p->pid > 0) {
            kill_child(p);
            while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR) {
            }
        }
        proc_free(p);
    }
}
