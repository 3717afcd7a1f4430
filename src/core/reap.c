/* Deferred free; see include/reeld/reap.h. */
#include "reeld/reap.h"

#include <stdlib.h>

#include <event2/event.h>

struct reap_node {
    reap_fn fn;
    void *obj;
    struct reap_node *next;
};

static struct event *reap_ev;
static struct reap_node *head, **tail = &head;

void reap_flush(void)
{
    while (head) {
        struct reap_node *batch = head;
        head = NULL;
        tail = &head;
        while (batch) {
            struct reap_node *n = batch;
            batch = n->next;
            n->fn(n->obj);
            free(n);
        }
    }
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    reap_flush();
}

int reap_init(struct event_base *base)
{
    if (reap_ev) event_free(reap_ev);
    reap_ev = event_new(base, -1, 0, reap_cb, NULL);
    return reap_ev ? 0 : -1;
}

void reap_later(reap_fn fn, void *obj)
{
    struct reap_node *n = malloc(sizeof *n);
    if (!n) abort(); /* out of memory while freeing: nothing sane remains */
    n->fn = fn;
    n->obj = obj;
    n->next = NULL;
    *tail = n;
    tail = &n->next;
    if (reap_ev && !event_pending(reap_ev, EV_TIMEOUT, NULL)) event_active(reap_ev, 0, 0);
}
