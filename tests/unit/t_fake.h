/* tests/fakes/fake_openai.py as a child of a C unit test, and its control
 * API (tests/fakes/README.md) driven through app.fetch on app.base. */
#ifndef REELD_T_FAKE_H
#define REELD_T_FAKE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/fetch.h"
#include "t_loop.h"

#define T_FAKE_WAIT_MS 60000

static pid_t fake_pid = -1;
static char fake_root[128]; /* http://127.0.0.1:PORT */

/* Starts the fake on a free loopback port (it exits with this process);
 * 0, or -1 when it did not come up. */
static inline int fake_start(void)
{
    int p[2];
    if (pipe(p) < 0) return -1;
    fake_pid = fork();
    if (fake_pid < 0) return -1;
    if (fake_pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execlp("python3", "python3", "tests/fakes/fake_openai.py", "--port", "0", "--host",
               "127.0.0.1", "--exit-with-parent", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    char line[256], host[64];
    int port = 0;
    if (!f || !fgets(line, sizeof line, f) ||
        sscanf(line, "fake_openai listening on %63[^:]:%d", host, &port) != 2) {
        if (f) fclose(f);
        return -1;
    }
    fclose(f);
    snprintf(fake_root, sizeof fake_root, "http://%s:%d", host, port);
    return 0;
}

struct t_fake_ctl {
    int done;
    long status;
    char *body;
};

static inline void t_fake_ctl_done(void *arg, const struct fetch_resp *r)
{
    struct t_fake_ctl *c = arg;
    c->status = r->status;
    c->body = strdup(r->body ? r->body : "");
    c->done = 1;
}

/* A control request (a POST when body is set), answered as parsed JSON
 * (the caller puts it), or NULL on failure. */
static inline struct json_object *ctl(const char *path, const char *body)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", fake_root, path);
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    struct fetch_opts o = {.url = url,
                           .headers = hdrs,
                           .body = body,
                           .body_len = body ? strlen(body) : 0,
                           .max_body = 64 << 20};
    struct t_fake_ctl c = {0};
    if (!fetch_start(app.fetch, &o, t_fake_ctl_done, &c)) return NULL;
    t_run_until(app.base, &c.done, T_FAKE_WAIT_MS);
    struct json_object *j = c.status == 200 ? json_tokener_parse(c.body) : NULL;
    free(c.body);
    return j;
}

static inline void fake_reset(void)
{
    json_object_put(ctl("/_control/reset", "{}"));
}

static inline void fake_script(const char *json)
{
    struct json_object *j = ctl("/_control/script", json);
    if (!j) printf("# script refused: %.200s\n", json);
    json_object_put(j);
}

#endif
