/* `reeld guard PARENT_PID PROG [ARGS...]`: the first process of every
 * child group that reeld starts (proc_set_guard). It runs PROG in its own
 * process group, waits for it and exits as it did; and when reeld dies,
 * however it dies (SIGKILL included), the kernel tells the guard
 * (PR_SET_PDEATHSIG) and the guard kills the whole group: ffmpeg, the
 * recognizer and whatever a script started go with their parent instead
 * of working on for nobody. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reeld/proc.h"

static void parent_gone(int sig)
{
    (void)sig;
    kill(0, SIGKILL); /* the group, this process included */
    _exit(137);
}

int proc_guard_main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: reeld guard PARENT_PID PROG [ARGS...]\n");
        return 2;
    }
    pid_t parent = (pid_t)strtol(argv[1], NULL, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = parent_gone;
    sigaction(SIGTERM, &sa, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) parent_gone(0);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "cannot run %s: %s\n", argv[2], strerror(errno));
        return 127;
    }
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        execvp(argv[2], argv + 2);
        fprintf(stderr, "cannot run %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return 127;
    if (WIFSIGNALED(st)) {
        /* die the same way, so that reeld sees what the program saw */
        signal(WTERMSIG(st), SIG_DFL);
        raise(WTERMSIG(st));
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
