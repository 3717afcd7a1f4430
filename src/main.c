/* reeld: subcommands, start-up, signals and orderly stop. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "reeld/app.h"
#include "reeld/asr.h"
#include "reeld/auth.h"
#include "reeld/config.h"
#include "reeld/db.h"
#include "reeld/fetch.h"
#include "reeld/http.h"
#include "reeld/jwt.h"
#include "reeld/log.h"
#include "reeld/media.h"
#include "reeld/metrics.h"
#include "reeld/migrate.h"
#include "reeld/pipeline.h"
#include "reeld/provider.h"
#include "reeld/search.h"
#include "reeld/reap.h"
#include "reeld/proc.h"
#include "reeld/signurl.h"
#include "reeld/storage.h"
#include "reeld/util.h"

#define REELD_VERSION "0.1.0"

static char conninfo[PATH_MAX + 128];
static char schema_dir[PATH_MAX];
static struct event *hard_stop_ev;

static void usage(FILE *out)
{
    fprintf(out, "usage: reeld [serve]             HTTP API and pipeline workers (default)\n"
                 "       reeld migrate             apply schema/NNN_*.sql in order\n"
                 "       reeld token --sub USER [--org ORG] [--role admin|member] [--ttl S]\n"
                 "                                 print a dev JWT (REELD_AUTH=dev only)\n"
                 "       reeld config-table        print the configuration as a Markdown table\n"
                 "       reeld routes              list the HTTP routes\n"
                 "       reeld asr                 PCM s16le 16 kHz mono on stdin -> JSON words\n"
                 "       reeld guard PID PROG ...  (internal) run PROG, killed when PID dies\n"
                 "       reeld --help | --version\n\n");
    config_help(out);
}

/* The schema directory: REELD_SCHEMA_DIR, else next to the binary
 * (<bin>/../schema, the build tree and the install layout), else ./schema. */
static void find_schema_dir(void)
{
    const char *env = getenv("REELD_SCHEMA_DIR");
    if (env && *env) {
        snprintf(schema_dir, sizeof schema_dir, "%s", env);
        return;
    }
    char exe[PATH_MAX - 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            struct stat st;
            const char *cands[] = {"../schema", "../share/reeld/schema"};
            for (size_t i = 0; i < 2; i++) {
                snprintf(schema_dir, sizeof schema_dir, "%s/%s", exe, cands[i]);
                if (stat(schema_dir, &st) == 0 && S_ISDIR(st.st_mode)) return;
            }
        }
    }
    snprintf(schema_dir, sizeof schema_dir, "schema");
}

static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int setup_common(void)
{
    char err[256];
    if (config_load(err, sizeof err) != 0) {
        fprintf(stderr, "reeld: %s\n", err);
        return -1;
    }
    if (mkdir_p(cfg.data_dir) != 0) {
        fprintf(stderr, "reeld: cannot create REELD_DATA_DIR %s: %s\n", cfg.data_dir,
                strerror(errno));
        return -1;
    }
    if (cfg.database_url) {
        snprintf(conninfo, sizeof conninfo, "%s", cfg.database_url);
    } else {
        char abs[PATH_MAX];
        if (!realpath(cfg.data_dir, abs)) {
            fprintf(stderr, "reeld: REELD_DATA_DIR %s: %s\n", cfg.data_dir, strerror(errno));
            return -1;
        }
        snprintf(conninfo, sizeof conninfo, "host=%s/pg port=5433 user=reeld dbname=reeld", abs);
    }
    find_schema_dir();
    app.schema_dir = schema_dir;
    app.schema_version = migrate_latest_version(schema_dir);
    return 0;
}

static int cmd_migrate(void)
{
    char err[512];
    if (migrate_run(conninfo, schema_dir, err, sizeof err) != 0) {
        fprintf(stderr, "reeld: migrate: %s\n", err);
        return 1;
    }
    return 0;
}

static int cmd_token(int argc, char **argv)
{
    static const struct option opts[] = {{"sub", required_argument, 0, 's'},
                                         {"org", required_argument, 0, 'o'},
                                         {"role", required_argument, 0, 'r'},
                                         {"ttl", required_argument, 0, 't'},
                                         {"email", required_argument, 0, 'e'},
                                         {"name", required_argument, 0, 'n'},
                                         {0, 0, 0, 0}};
    const char *sub = NULL, *org = NULL, *role = "member", *email = NULL, *name = NULL;
    long long ttl = 3600;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            sub = optarg;
            break;
        case 'o':
            org = optarg;
            break;
        case 'r':
            role = optarg;
            break;
        case 'e':
            email = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 't':
            if (util_parse_ll(optarg, -86400 * 365LL, 86400 * 365LL, &ttl) != 0) {
                fprintf(stderr, "reeld token: bad --ttl\n");
                return 2;
            }
            break;
        default:
            return 2;
        }
    }
    if (!sub || !*sub) {
        fprintf(stderr, "reeld token: --sub is required\n");
        return 2;
    }
    if (strcmp(role, "admin") != 0 && strcmp(role, "member") != 0) {
        fprintf(stderr, "reeld token: --role must be admin or member\n");
        return 2;
    }
    if (strcmp(cfg.auth, "dev") != 0) {
        fprintf(stderr, "reeld token: only with REELD_AUTH=dev\n");
        return 2;
    }
    char err[256];
    struct jwt_signer *s = auth_dev_signer(cfg.data_dir, err, sizeof err);
    if (!s) {
        fprintf(stderr, "reeld token: %s\n", err);
        return 1;
    }
    struct json_object *cl = json_object_new_object();
    int64_t now = time(NULL);
    json_object_object_add(cl, "sub", json_object_new_string(sub));
    json_object_object_add(cl, "iss", json_object_new_string(AUTH_DEV_ISSUER));
    json_object_object_add(cl, "iat", json_object_new_int64(now));
    json_object_object_add(cl, "nbf", json_object_new_int64(now - 5));
    json_object_object_add(cl, "exp", json_object_new_int64(now + ttl));
    if (org) {
        char r[16];
        snprintf(r, sizeof r, "org:%s", role);
        json_object_object_add(cl, "org_id", json_object_new_string(org));
        json_object_object_add(cl, "org_role", json_object_new_string(r));
    }
    if (email) json_object_object_add(cl, "email", json_object_new_string(email));
    if (name) json_object_object_add(cl, "name", json_object_new_string(name));
    char *tok = jwt_sign(s, json_object_to_json_string_ext(cl, JSON_C_TO_STRING_PLAIN));
    json_object_put(cl);
    jwt_signer_free(s);
    if (!tok) {
        fprintf(stderr, "reeld token: signing failed\n");
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

static void print_route(void *arg, const char *method, const char *pattern)
{
    (void)arg;
    printf("%s %s\n", method, pattern);
}

/* Lists every route the server registers, one "METHOD /pattern" a line
 * (the OpenAPI consistency test reads it). */
static int cmd_routes(void)
{
    struct http_server_opts o = {.host = "127.0.0.1"};
    struct http_server *s = http_server_new(NULL, &o);
    if (!s) return 1;
    api_register(s);
    http_routes_each(s, print_route, NULL);
    http_server_free(s);
    return 0;
}

/* ---- serve ----------------------------------------------------------- */

/* A graceful stop waits for two things: the connections to drain and the
 * running jobs to be handed back to the queue. */
static int stop_waiting;

static void stop_step(void)
{
    if (--stop_waiting == 0) event_base_loopexit(app.base, NULL);
}

static void on_drained(void *arg)
{
    (void)arg;
    log_msg(LOG_INFO, "all connections closed", NULL, NULL);
    stop_step();
}

static void on_released(void *arg)
{
    (void)arg;
    stop_step();
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    static int stopping;
    if (stopping) {
        log_msg(LOG_WARN, "second signal: exiting now", NULL, NULL);
        event_base_loopbreak(app.base);
        return;
    }
    stopping = 1;
    log_msg(LOG_INFO, "stopping", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    /* the server drains within the grace; the hard stop guarantees exit */
    struct timeval tv = {cfg.shutdown_grace_s + 1, 0};
    evtimer_add(hard_stop_ev, &tv);
    stop_waiting = 2;
    if (pipeline_release(on_released, NULL) != 0) stop_waiting--;
    http_server_shutdown(app.http, cfg.shutdown_grace_s, on_drained, NULL);
}

static void on_hard_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_msg(LOG_WARN, "shutdown deadline reached", NULL, NULL);
    event_base_loopbreak(app.base);
}

static void observe(void *arg, const struct http_req *r, int status, int64_t us)
{
    (void)arg;
    metrics_http(r->route ? r->route : "(none)", r->method, status, us);
}

static double g_conns(void)
{
    struct http_stats st;
    http_server_stats(app.http, &st);
    return (double)st.conns_open;
}

static double g_streams(void)
{
    struct http_stats st;
    http_server_stats(app.http, &st);
    return (double)st.streams_open;
}

static double g_db_ready(void)
{
    struct db_stats st;
    db_stats(app.db, &st);
    return st.conns_ready;
}

static double g_db_queued(void)
{
    struct db_stats st;
    db_stats(app.db, &st);
    return (double)st.queued;
}

static double g_db_inflight(void)
{
    struct db_stats st;
    db_stats(app.db, &st);
    return (double)st.in_flight;
}

static int cmd_serve(void)
{
    char err[512];
    if (migrate_run(conninfo, schema_dir, err, sizeof err) != 0) {
        fprintf(stderr, "reeld: migrate: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    app.started_ms = util_mono_ms();
    app.base = event_base_new();
    if (!app.base || reap_init(app.base) != 0) {
        fprintf(stderr, "reeld: cannot create the event loop\n");
        return 1;
    }
    app.fetch = fetch_new(app.base);
    if (!fetch_async_dns())
        log_msg(LOG_WARN, "libcurl resolves names synchronously: DNS lookups may stall the loop",
                NULL, NULL);
    static char pinned[sizeof conninfo + 64];
    if (db_conninfo_pin(conninfo, pinned, sizeof pinned) != 0) {
        fprintf(stderr, "reeld: DATABASE_URL: cannot use it (see the log line above)\n");
        return 1;
    }
    struct db_pool_opts dbo = {.conninfo = pinned,
                               .size = cfg.db_pool,
                               .connect_timeout_ms = 5000,
                               .queue_timeout_ms = 5000};
    app.db = db_pool_new(app.base, &dbo);
    app.auth = auth_new(app.base, app.fetch, app.db, err, sizeof err);
    if (!app.fetch || !app.db || !app.auth) {
        fprintf(stderr, "reeld: %s\n", app.auth ? "cannot start" : err);
        return 1;
    }
    ssize_t exe_len = readlink("/proc/self/exe", prov_reeld_exe, sizeof prov_reeld_exe - 1);
    if (exe_len > 0) {
        prov_reeld_exe[exe_len] = '\0';
        proc_set_guard(prov_reeld_exe);
    }
    if (signurl_init(cfg.data_dir, err, sizeof err) != 0 ||
        storage_init(app.base, cfg.data_dir, err, sizeof err) != 0 ||
        prov_init(err, sizeof err) != 0 || search_init(err, sizeof err) != 0 ||
        pipeline_start(err, sizeof err) != 0) {
        fprintf(stderr, "reeld: %s\n", err);
        return 1;
    }
    struct http_server_opts ho = {.host = cfg.listen_host,
                                  .port = cfg.listen_port,
                                  .max_conns = cfg.max_conns,
                                  .max_header_bytes = cfg.max_header_bytes,
                                  .max_json_bytes = cfg.max_json_bytes,
                                  .header_timeout_s = cfg.header_timeout_s,
                                  .idle_timeout_s = cfg.idle_timeout_s,
                                  .body_timeout_s = cfg.body_timeout_s,
                                  .sse_max_queued = cfg.sse_max_queued,
                                  .observe = observe};
    app.http = http_server_new(app.base, &ho);
    api_register(app.http);
    if (http_server_listen(app.http) != 0) return 1;
    metrics_gauge("reeld_http_connections_open", "Open client connections.", g_conns);
    metrics_gauge("reeld_http_streams_open", "Open SSE streams.", g_streams);
    metrics_gauge("reeld_db_connections_ready", "Pool connections ready.", g_db_ready);
    metrics_gauge("reeld_db_queries_queued", "Queries waiting for a connection.", g_db_queued);
    metrics_gauge("reeld_db_queries_in_flight", "Queries sent, not yet answered.", g_db_inflight);

    struct event *sigterm = evsignal_new(app.base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(app.base, SIGINT, on_signal, NULL);
    hard_stop_ev = evtimer_new(app.base, on_hard_stop, NULL);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);

    struct log_line *l = log_begin(LOG_INFO, "listening");
    log_str(l, "addr", cfg.listen_host);
    log_int(l, "port", http_server_port(app.http));
    log_str(l, "auth", cfg.auth);
    log_str(l, "version", REELD_VERSION);
    log_end(l);
    /* A machine-readable line for tests and scripts on stdout. */
    printf("reeld listening on %s:%d\n", cfg.listen_host, http_server_port(app.http));
    fflush(stdout);

    event_base_dispatch(app.base);

    /* Pending syncs first (a sync's callback records an upload's durable
     * offset through the pool), then the pool, whose pending callbacks
     * fail and answer their requests through a server that still
     * exists. */
    storage_shutdown();
    reap_flush();
    db_pool_free(app.db);
    app.db = NULL; /* late callbacks find no pool: db_query returns NULL */
    /* After the pool (jobq.h): running stages are cancelled, their
     * children killed; the jobs are taken over after their lease. Then
     * every child left (probes, cancelled ones) is killed and reaped. */
    pipeline_free();
    search_free();
    proc_shutdown();
    media_shutdown();
    auth_free(app.auth);
    http_server_free(app.http);
    fetch_free(app.fetch);
    reap_flush();
    event_free(sigterm);
    event_free(sigint);
    event_free(hard_stop_ev);
    reap_flush();
    event_base_free(app.base);
    curl_global_cleanup();
    log_msg(LOG_INFO, "stopped", NULL, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "serve";
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("reeld %s\n", REELD_VERSION);
        return 0;
    }
    if (strcmp(cmd, "routes") == 0) return cmd_routes();
    if (strcmp(cmd, "asr") == 0) return asr_main(argc - 1, argv + 1);
    if (strcmp(cmd, "guard") == 0) return proc_guard_main(argc - 1, argv + 1);
    if (strcmp(cmd, "config-table") == 0) {
        config_markdown(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "migrate") != 0 && strcmp(cmd, "token") != 0) {
        fprintf(stderr, "reeld: unknown command '%s'\n\n", cmd);
        usage(stderr);
        return 2;
    }
    if (setup_common() != 0) return 1;
    if (strcmp(cmd, "migrate") == 0) return cmd_migrate();
    if (strcmp(cmd, "token") == 0) return cmd_token(argc - 1, argv + 1);
    return cmd_serve();
}
