/* Child processes read through the loop: collected and streamed stdout,
 * stderr tail, exit status, timeouts, output bound, cancel (no callback,
 * no zombie), spawn failures, stdin from a file, no leaked descriptors,
 * and a real ffprobe run. Waits have generous safety deadlines only;
 * nothing asserts on timing. */
#include "reeld/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "t.h"
#include "t_loop.h"

#define WAIT_MS 20000

static struct event_base *base;
static char tmpdir[] = "/tmp/reeld-proc.XXXXXX";

/* ---- one run's outcome -------------------------------------------------- */

struct outcome {
    int calls;
    int exited, status, timed_out;
    char *out, *err, *error;
    size_t out_len;
    /* streaming */
    char *streamed;
    size_t streamed_len, streamed_cap;
    int stop_after; /* on_data returns -1 on this call (1-based), 0 = never */
    int cancel_in_data;
    int data_calls;
    struct proc *p;
};

static void on_done(void *arg, const struct proc_result *res)
{
    struct outcome *o = arg;
    o->calls++;
    o->exited = res->exited;
    o->status = res->status;
    o->timed_out = res->timed_out;
    free(o->out);
    free(o->err);
    free(o->error);
    o->out = malloc(res->out_len + 1);
    memcpy(o->out, res->out, res->out_len + 1);
    o->out_len = res->out_len;
    o->err = strdup(res->err);
    o->error = res->error ? strdup(res->error) : NULL;
}

static int on_data(void *arg, const char *data, size_t len)
{
    struct outcome *o = arg;
    o->data_calls++;
    if (o->cancel_in_data) {
        proc_cancel(o->p);
        return 0;
    }
    if (o->stop_after && o->data_calls >= o->stop_after) return -1;
    if (o->streamed_len + len > o->streamed_cap) {
        o->streamed_cap = (o->streamed_len + len) * 2;
        o->streamed = realloc(o->streamed, o->streamed_cap);
    }
    memcpy(o->streamed + o->streamed_len, data, len);
    o->streamed_len += len;
    return 0;
}

static void outcome_free(struct outcome *o)
{
    free(o->out);
    free(o->err);
    free(o->error);
    free(o->streamed);
    memset(o, 0, sizeof *o);
}

/* Starts argv and runs the loop until its callback. */
static struct proc *start(struct outcome *o, const char *const *argv, struct proc_opts *opts)
{
    struct proc_opts def = {0};
    if (!opts) opts = &def;
    opts->argv = argv;
    o->p = proc_start(base, opts, on_done, o);
    return o->p;
}

static int run(struct outcome *o, const char *const *argv, struct proc_opts *opts)
{
    if (!start(o, argv, opts)) return 0;
    if (o->calls != 0) return 0; /* never inside proc_start */
    return t_run_until(base, &o->calls, WAIT_MS);
}

/* 1 once pid is fully gone (reaped: a zombie still answers kill 0). */
static int wait_gone(pid_t pid)
{
    for (int i = 0; i < WAIT_MS / 20; i++) {
        if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
        t_run_for(base, 20);
    }
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void proc_collects_stdout_of_echo(void)
{
    struct outcome o = {0};
    const char *argv[] = {"echo", "hello", NULL};
    CHECK(run(&o, argv, NULL));
    CHECK(o.calls == 1);
    CHECK(o.exited == 1 && o.status == 0 && !o.timed_out);
    CHECK_STR(o.out, "hello\n");
    CHECK(o.out_len == 6);
    CHECK(o.error == NULL);
    CHECK_STR(o.err, "");
    outcome_free(&o);
}

static void proc_reports_exit_status(void)
{
    struct outcome o = {0};
    const char *argv[] = {"sh", "-c", "exit 3", NULL};
    CHECK(run(&o, argv, NULL));
    CHECK(o.exited == 1 && o.status == 3);
    CHECK(o.error == NULL);
    outcome_free(&o);
}

static void proc_keeps_stderr(void)
{
    struct outcome o = {0};
    const char *argv[] = {"sh", "-c", "echo oops >&2; exit 1", NULL};
    CHECK(run(&o, argv, NULL));
    CHECK(o.exited == 1 && o.status == 1);
    CHECK_STR(o.err, "oops\n");
    CHECK_STR(o.out, "");
    outcome_free(&o);
}

static void proc_stderr_keeps_last_4k(void)
{
    struct outcome o = {0};
    const char *argv[] = {"sh", "-c", "head -c 10000 /dev/zero | tr '\\000' a >&2; echo END >&2",
                          NULL};
    CHECK(run(&o, argv, NULL));
    CHECK(o.err && strlen(o.err) == 4096);
    CHECK(o.err && strcmp(o.err + 4092, "END\n") == 0);
    CHECK(o.err && o.err[0] == 'a');
    outcome_free(&o);
}

static void proc_timeout_kills_child(void)
{
    struct outcome o = {0};
    const char *argv[] = {"sleep", "5", NULL};
    struct proc_opts opts = {.timeout_ms = 200};
    CHECK(start(&o, argv, &opts));
    pid_t pid = proc_pid(o.p);
    CHECK(pid > 0);
    CHECK(t_run_until(base, &o.calls, WAIT_MS));
    CHECK(o.timed_out == 1);
    CHECK(o.exited == 0 && o.status == SIGKILL);
    CHECK(o.error == NULL);
    CHECK(kill(pid, 0) != 0 && errno == ESRCH); /* reaped, not a zombie */
    outcome_free(&o);
}

static void proc_leftover_holding_pipe_is_killed_at_timeout(void)
{
    /* sh exits at once, but the subshell it started keeps stdout open:
     * the timeout kills the whole group and completes. */
    struct outcome o = {0};
    const char *argv[] = {"sh", "-c", "(sleep 30; echo late) & echo early", NULL};
    struct proc_opts opts = {.timeout_ms = 300};
    CHECK(run(&o, argv, &opts));
    CHECK(o.timed_out == 1);
    CHECK(o.exited == 1 && o.status == 0);
    CHECK(o.out && strstr(o.out, "early") && !strstr(o.out, "late"));
    outcome_free(&o);
}

static void proc_output_over_max_out_is_error(void)
{
    struct outcome o = {0};
    const char *argv[] = {"head", "-c", "5000000", "/dev/zero", NULL};
    struct proc_opts opts = {.max_out = 1 << 20};
    CHECK(run(&o, argv, &opts));
    CHECK_STR(o.error, "output too large");
    CHECK(o.out_len <= (size_t)1 << 20);
    CHECK(!(o.exited && o.status == 0));
    outcome_free(&o);
}

static void proc_collects_output_up_to_max_out(void)
{
    struct outcome o = {0};
    const char *argv[] = {"head", "-c", "3000000", "/dev/zero", NULL};
    struct proc_opts opts = {.max_out = 3000000};
    CHECK(run(&o, argv, &opts));
    CHECK(o.error == NULL);
    CHECK(o.out_len == 3000000);
    CHECK(o.exited == 1 && o.status == 0);
    outcome_free(&o);
}

static void proc_streams_every_byte(void)
{
    struct outcome o = {0};
    const char *argv[] = {"seq", "1", "300000", NULL};
    struct proc_opts opts = {.on_data = on_data, .max_out = 16};
    CHECK(run(&o, argv, &opts));
    CHECK(o.error == NULL);
    CHECK(o.exited == 1 && o.status == 0);
    CHECK_STR(o.out, ""); /* streamed, not collected; max_out does not apply */
    size_t cap = 300000 * 7 + 1, len = 0;
    char *want = malloc(cap);
    for (int i = 1; i <= 300000; i++)
        len += (size_t)snprintf(want + len, cap - len, "%d\n", i);
    CHECK(o.streamed_len == len);
    CHECK(o.streamed && memcmp(o.streamed, want, len) == 0);
    CHECK(o.data_calls > 1);
    free(want);
    outcome_free(&o);
}

static void proc_reader_can_stop_child(void)
{
    struct outcome o = {0};
    const char *argv[] = {"yes", NULL};
    struct proc_opts opts = {.on_data = on_data};
    o.stop_after = 3;
    CHECK(run(&o, argv, &opts));
    CHECK_STR(o.error, "stopped by the reader");
    CHECK(o.exited == 0 && o.status == SIGKILL);
    outcome_free(&o);
}

static void proc_cancel_kills_and_reaps_without_callback(void)
{
    struct outcome o = {0};
    const char *argv[] = {"sleep", "5", NULL};
    CHECK(start(&o, argv, NULL));
    pid_t pid = proc_pid(o.p);
    CHECK(pid > 0);
    t_run_for(base, 50);
    proc_cancel(o.p);
    CHECK(wait_gone(pid));
    t_run_for(base, 200);
    CHECK(o.calls == 0);
    outcome_free(&o);
}

static void proc_cancel_from_on_data_is_safe(void)
{
    struct outcome o = {0};
    const char *argv[] = {"yes", NULL};
    struct proc_opts opts = {.on_data = on_data};
    o.cancel_in_data = 1;
    CHECK(start(&o, argv, &opts));
    pid_t pid = proc_pid(o.p);
    for (int i = 0; i < WAIT_MS / 20 && !o.data_calls; i++)
        t_run_for(base, 20);
    CHECK(o.data_calls == 1); /* nothing more after the cancel */
    CHECK(wait_gone(pid));
    t_run_for(base, 100);
    CHECK(o.calls == 0);
    CHECK(o.data_calls == 1);
    outcome_free(&o);
}

static void proc_missing_program_reports_error(void)
{
    const char *progs[] = {"reeld-no-such-program-xyz", "/nonexistent/reeld-prog"};
    for (int i = 0; i < 2; i++) {
        struct outcome o = {0};
        const char *argv[] = {progs[i], "arg", NULL};
        CHECK(run(&o, argv, NULL));
        CHECK(o.calls == 1);
        CHECK(o.error && strstr(o.error, "cannot run"));
        CHECK(o.exited == 0);
        outcome_free(&o);
    }
    /* bad arguments: NULL, and no callback */
    struct proc_opts none = {0};
    CHECK(proc_start(base, &none, on_done, NULL) == NULL);
    CHECK(proc_start(base, NULL, on_done, NULL) == NULL);
    CHECK(proc_pid(NULL) == -1);
    proc_cancel(NULL);
}

static void proc_cancel_after_spawn_failure_has_no_callback(void)
{
    struct outcome o = {0};
    const char *argv[] = {"reeld-no-such-program-xyz", NULL};
    CHECK(start(&o, argv, NULL));
    proc_cancel(o.p);
    t_run_for(base, 100);
    CHECK(o.calls == 0);
    outcome_free(&o);
}

static void proc_feeds_stdin_from_file(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/input.txt", tmpdir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("line one\nline two\n", f);
    fclose(f);
    struct outcome o = {0};
    const char *argv[] = {"cat", NULL};
    struct proc_opts opts = {.stdin_path = path};
    CHECK(run(&o, argv, &opts));
    CHECK_STR(o.out, "line one\nline two\n");
    outcome_free(&o);

    /* default stdin is /dev/null: cat ends at once */
    CHECK(run(&o, argv, NULL));
    CHECK_STR(o.out, "");
    CHECK(o.exited == 1 && o.status == 0);
    outcome_free(&o);

    struct proc_opts missing = {.stdin_path = "/nonexistent/input"};
    CHECK(run(&o, argv, &missing));
    CHECK(o.error && strstr(o.error, "cannot open"));
    outcome_free(&o);
}

static void proc_child_inherits_no_other_descriptors(void)
{
    /* A descriptor without CLOEXEC, like a socket someone forgot to mark. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    CHECK(dup2(fds[0], 77) == 77);
    struct outcome o = {0};
    const char *argv[] = {"ls", "/proc/self/fd", NULL};
    CHECK(run(&o, argv, NULL));
    int max = -1;
    for (char *s = o.out; s && *s;) {
        int n = atoi(s);
        if (n > max) max = n;
        s = strchr(s, '\n');
        if (s) s++;
    }
    CHECK(o.out && max >= 2 && max <= 3); /* 0-2, plus ls's own directory fd */
    close(77);
    close(fds[0]);
    close(fds[1]);
    outcome_free(&o);
}

static void proc_runs_many_at_once(void)
{
    enum { N = 24 };
    struct outcome o[N];
    char num[N][16];
    const char *argv[N][3];
    memset(o, 0, sizeof o);
    for (int i = 0; i < N; i++) {
        snprintf(num[i], sizeof num[i], "%d", i);
        argv[i][0] = "echo";
        argv[i][1] = num[i];
        argv[i][2] = NULL;
        CHECK(start(&o[i], argv[i], NULL));
    }
    for (int i = 0; i < N; i++) {
        CHECK(t_run_until(base, &o[i].calls, WAIT_MS));
        char want[16];
        snprintf(want, sizeof want, "%d\n", i);
        CHECK_STR(o[i].out, want);
        CHECK(o[i].calls == 1);
        outcome_free(&o[i]);
    }
}

static void proc_shutdown_kills_and_reaps_everything(void)
{
    struct outcome a = {0}, b = {0};
    const char *argv[] = {"sleep", "5", NULL};
    CHECK(start(&a, argv, NULL));
    CHECK(start(&b, argv, NULL));
    pid_t pa = proc_pid(a.p), pb = proc_pid(b.p);
    proc_cancel(b.p);
    proc_shutdown();
    CHECK(kill(pa, 0) != 0 && errno == ESRCH);
    CHECK(kill(pb, 0) != 0 && errno == ESRCH);
    t_run_for(base, 100);
    CHECK(a.calls == 0 && b.calls == 0);
    outcome_free(&a);
    outcome_free(&b);
}

static void proc_ffprobe_reads_duration_of_generated_video(void)
{
    char video[256];
    snprintf(video, sizeof video, "%s/out.mp4", tmpdir);
    struct outcome o = {0};
    const char *gen[] = {
        "ffmpeg",   "-nostdin", "-y",  "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=10",
        "-pix_fmt", "yuv420p",  video, NULL};
    struct proc_opts gopts = {.timeout_ms = 60000};
    CHECK(run(&o, gen, &gopts));
    CHECK(o.exited == 1 && o.status == 0);
    if (o.status != 0) printf("# ffmpeg stderr: %s\n", o.err ? o.err : "");
    CHECK(o.err && strlen(o.err) > 0); /* ffmpeg talks on stderr */
    outcome_free(&o);

    const char *probe[] = {
        "ffprobe",           "-v",  "error", "-show_entries", "format=duration", "-of",
        "default=nw=1:nk=1", video, NULL};
    CHECK(run(&o, probe, NULL));
    CHECK(o.exited == 1 && o.status == 0);
    double d = o.out ? strtod(o.out, NULL) : 0;
    CHECK(d > 0.9 && d < 1.1);
    outcome_free(&o);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as reeld does; children must not inherit it */
    if (!mkdtemp(tmpdir)) {
        printf("FAIL proc_setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    base = event_base_new();
    TEST(proc_collects_stdout_of_echo);
    TEST(proc_reports_exit_status);
    TEST(proc_keeps_stderr);
    TEST(proc_stderr_keeps_last_4k);
    TEST(proc_timeout_kills_child);
    TEST(proc_leftover_holding_pipe_is_killed_at_timeout);
    TEST(proc_output_over_max_out_is_error);
    TEST(proc_collects_output_up_to_max_out);
    TEST(proc_streams_every_byte);
    TEST(proc_reader_can_stop_child);
    TEST(proc_cancel_kills_and_reaps_without_callback);
    TEST(proc_cancel_from_on_data_is_safe);
    TEST(proc_missing_program_reports_error);
    TEST(proc_cancel_after_spawn_failure_has_no_callback);
    TEST(proc_feeds_stdin_from_file);
    TEST(proc_child_inherits_no_other_descriptors);
    TEST(proc_runs_many_at_once);
    TEST(proc_shutdown_kills_and_reaps_everything);
    TEST(proc_ffprobe_reads_duration_of_generated_video);
    proc_shutdown();
    event_base_free(base);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    T_EXIT();
}
