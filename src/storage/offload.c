/* The storage helper thread; see offload.h.
 *
 * Why a thread and not libevent's threading support: the event_base
 * already exists when storage starts, and libevent needs
 * evthread_use_pthreads() before a base is created to make it safe to
 * touch from another thread. So the thread never calls libevent: it
 * appends finished jobs to a mutex-protected list and writes to an
 * eventfd whose read side is an ordinary event on the loop. */
#include "offload.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

static struct {
    int running;
    int efd;
    struct event *ev;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stopping;
    struct offload_job *queued, **queued_tail; /* loop → thread */
    struct offload_job *done, **done_tail;     /* thread → loop */
} ol = {.efd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void poke_loop(void)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: the loop is woken anyway. */
    while (write(ol.efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

static void *thread_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ol.mu);
    for (;;) {
        while (!ol.queued && !ol.stopping)
            pthread_cond_wait(&ol.cond, &ol.mu);
        struct offload_job *j = ol.queued;
        if (!j) break; /* stopping, and everything queued is done */
        ol.queued = j->next;
        if (!ol.queued) ol.queued_tail = &ol.queued;
        pthread_mutex_unlock(&ol.mu);

        if (j->work) j->work(j);

        pthread_mutex_lock(&ol.mu);
        j->next = NULL;
        *ol.done_tail = j;
        ol.done_tail = &j->next;
        poke_loop();
    }
    pthread_mutex_unlock(&ol.mu);
    return NULL;
}

/* Delivers every finished job. done() may submit new jobs: those are
 * picked up by a later wake-up, never by this pass. */
static void deliver(void)
{
    pthread_mutex_lock(&ol.mu);
    struct offload_job *batch = ol.done;
    ol.done = NULL;
    ol.done_tail = &ol.done;
    pthread_mutex_unlock(&ol.mu);
    while (batch) {
        struct offload_job *j = batch;
        batch = j->next;
        j->done(j);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    uint64_t n;
    while (read(fd, &n, sizeof n) < 0 && errno == EINTR) {
    }
    deliver();
}

int offload_start(struct event_base *base, char *err, size_t errlen)
{
    if (ol.running) {
        snprintf(err, errlen, "storage helper already running");
        return -1;
    }
    ol.queued = ol.done = NULL;
    ol.queued_tail = &ol.queued;
    ol.done_tail = &ol.done;
    ol.stopping = 0;
    ol.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ol.efd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    ol.ev = event_new(base, ol.efd, EV_READ | EV_PERSIST, on_wake, NULL);
    if (!ol.ev || event_add(ol.ev, NULL) != 0) {
        snprintf(err, errlen, "cannot watch the storage helper");
        goto fail;
    }
    /* Signals stay with the loop's thread: the helper blocks them all. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&ol.thread, NULL, thread_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the storage helper thread: %s", strerror(rc));
        goto fail;
    }
    ol.running = 1;
    return 0;
fail:
    if (ol.ev) event_free(ol.ev);
    ol.ev = NULL;
    close(ol.efd);
    ol.efd = -1;
    return -1;
}

void offload_submit(struct offload_job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&ol.mu);
    *ol.queued_tail = j;
    ol.queued_tail = &j->next;
    pthread_cond_signal(&ol.cond);
    pthread_mutex_unlock(&ol.mu);
}

void offload_stop(void)
{
    if (!ol.running) return;
    pthread_mutex_lock(&ol.mu);
    ol.stopping = 1;
    pthread_cond_signal(&ol.cond);
    pthread_mutex_unlock(&ol.mu);
    pthread_join(ol.thread, NULL);
    ol.running = 0;
    /* A done() may still submit (a sync from a callback): with the thread
     * gone, run those jobs here until nothing is left. */
    for (;;) {
        deliver();
        pthread_mutex_lock(&ol.mu);
        struct offload_job *j = ol.queued;
        ol.queued = NULL;
        ol.queued_tail = &ol.queued;
        pthread_mutex_unlock(&ol.mu);
        if (!j) break;
        while (j) {
            struct offload_job *next = j->next;
            if (j->work) j->work(j);
            j->next = NULL;
            *ol.done_tail = j;
            ol.done_tail = &j->next;
            j = next;
        }
    }
    event_free(ol.ev);
    ol.ev = NULL;
    close(ol.efd);
    ol.efd = -1;
}
