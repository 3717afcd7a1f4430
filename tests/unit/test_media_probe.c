/* The duration probe (media_probe_duration in src/api/media.c) end to
 * end: a real 2 s video made by ffmpeg, placed where the local storage
 * backend keeps objects, ffprobe run as a child through the loop, and the
 * row updated through the pool in a real database (REELD_TEST_PGURL). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "reeld/app.h"
#include "reeld/db.h"
#include "reeld/media.h"
#include "reeld/migrate.h"
#include "reeld/storage.h"
#include "reeld/util.h"
#include "t.h"
#include "t_db.h"

static PGconn *pg;
static char dir[64];

/* One value from a blocking query (the test's own connection), or "". */
static const char *scalar(const char *sql, char *out, size_t n)
{
    out[0] = '\0';
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        snprintf(out, n, "%s", PQgetvalue(res, 0, 0));
    else if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fprintf(stderr, "query failed: %s: %s", sql, PQerrorMessage(pg));
    PQclear(res);
    return out;
}

struct wait {
    const char *id;
    char value[32];
    int ticks;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct wait *w = arg;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT duration_ms FROM recordings WHERE id = '%s'", w->id);
    scalar(sql, w->value, sizeof w->value);
    if (w->value[0] || ++w->ticks > 600) event_base_loopbreak(app.base);
}

/* Runs the loop until duration_ms of id is set, at most 30 s. */
static void wait_duration(struct wait *w)
{
    struct event *tick = event_new(app.base, -1, EV_PERSIST, on_tick, w);
    struct timeval tv = {0, 50000};
    event_add(tick, &tv);
    event_base_dispatch(app.base);
    event_free(tick);
}

static int make_recording(const char *org, char id[37], char key[128], int seconds)
{
    util_uuid_v4(id);
    snprintf(key, 128, "org-%s/recordings/%s.mp4", org, id);
    char path[512], cmd[1024], sql[768], out[64];
    snprintf(path, sizeof path, "%s/storage/org-%s/recordings", dir, org);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    if (system(cmd) != 0) return -1;
    snprintf(cmd, sizeof cmd,
             "ffmpeg -nostdin -v error -f lavfi -i testsrc=duration=%d:size=160x120:rate=25 "
             "-pix_fmt yuv420p -y '%s/%s.mp4'",
             seconds, path, id);
    if (system(cmd) != 0) return -1;
    snprintf(sql, sizeof sql,
             "INSERT INTO recordings (id, org_id, title, status, storage_key, content_type)"
             " VALUES ('%s', '%s', 'probe', 'uploaded', '%s', 'video/mp4') RETURNING 1",
             id, org, key);
    return strcmp(scalar(sql, out, sizeof out), "1") == 0 ? 0 : -1;
}

static char org[37];

static void test_probe_fills_duration_ms_of_a_2s_video(void)
{
    char id[37], key[128];
    CHECK(make_recording(org, id, key, 2) == 0);
    media_probe_duration(id, org, key);
    struct wait w = {.id = id};
    wait_duration(&w);
    long long ms = atoll(w.value);
    CHECK(w.value[0] != '\0');
    CHECK(ms >= 1950 && ms <= 2050);
}

static void test_probe_with_bad_arguments_returns_quietly(void)
{
    /* no crash, no child, nothing to wait for */
    media_probe_duration(NULL, org, "k");
    media_probe_duration("x", NULL, "k");
    media_probe_duration("x", org, NULL);
    media_probe_duration("an id far too long to be a recording id at all", org, "k");
    CHECK(1);
}

int main(void)
{
    const char *url = getenv("REELD_TEST_PGURL");
    if (!url) {
        printf("FAIL media_probe_setup: REELD_TEST_PGURL is not set (run through tests/run)\n");
        return 1;
    }
    if (system("command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null") != 0) {
        printf("FAIL media_probe_setup: ffmpeg/ffprobe not installed\n");
        return 1;
    }
    char db[32], conninfo[1024], err[512], out[64];
    PGconn *admin = PQconnectdb(url);
    if (t_db_create(admin, url, "probe", db, conninfo, sizeof conninfo, err, sizeof err) != 0) {
        printf("FAIL media_probe_setup: database: %s\n", err);
        PQfinish(admin);
        return 1;
    }
    pg = PQconnectdb(conninfo);
    snprintf(dir, sizeof dir, "/tmp/reeld-probe.XXXXXX");
    app.base = event_base_new();
    struct db_pool_opts o = {.conninfo = conninfo, .size = 1};
    app.db = db_pool_new(app.base, &o);
    if (!mkdtemp(dir) || !app.db || storage_init(app.base, dir, err, sizeof err) != 0) {
        printf("FAIL media_probe_setup: %s\n", err);
        return 1;
    }
    snprintf(org, sizeof org, "%s",
             scalar("INSERT INTO organizations (name, slug) VALUES ('Probe', 'probe')"
                    " RETURNING id",
                    out, sizeof out));

    TEST(test_probe_fills_duration_ms_of_a_2s_video);
    TEST(test_probe_with_bad_arguments_returns_quietly);

    db_pool_free(app.db);
    storage_shutdown();
    event_base_free(app.base);
    PQfinish(pg);
    t_db_drop(admin, db);
    PQfinish(admin);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
    T_EXIT();
}
