/* Migrations against the real PostgreSQL of REELD_TEST_PGURL: each test
 * gets a fresh database (CREATE DATABASE migtest_<random>), dropped at
 * its end. Runs with cwd = repo root, so "schema" is the real directory. */
#include "reeld/migrate.h"
#include "reeld/util.h"
#include "t.h"
#include "t_db.h"

#include <dirent.h>
#include <libpq-fe.h>
#include <mbedtls/sha256.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *base_url;
static PGconn *admin; /* on the base database: creates and drops */

struct testdb {
    char name[64];
    char conninfo[2048];
    PGconn *c; /* our own look at it */
};

/* First cell of the result as text, "OK" for a command, "ERR:<sqlstate>"
 * for a failure, "NULL" for SQL NULL. Copied into a static buffer. */
static const char *q1(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *q1(PGconn *c, const char *fmt, ...)
{
    static char out[4096];
    char sql[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, sizeof out, "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        snprintf(out, sizeof out, "OK");
    else {
        const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(out, sizeof out, "ERR:%s", s ? s : "?");
    }
    PQclear(r);
    return out;
}

static int db_create(struct testdb *db)
{
    unsigned char rnd[8];
    char hex[17];
    memset(db, 0, sizeof *db);
    if (util_random(rnd, sizeof rnd) != 0) return -1;
    util_hex(rnd, sizeof rnd, hex);
    snprintf(db->name, sizeof db->name, "migtest_%s", hex);
    if (strcmp(q1(admin, "CREATE DATABASE %s", db->name), "OK") != 0) return -1;
    if (t_conninfo_for(base_url, db->name, db->conninfo, sizeof db->conninfo) != 0) return -1;
    db->c = PQconnectdb(db->conninfo);
    if (PQstatus(db->c) != CONNECTION_OK) {
        printf("# connect %s: %s", db->name, PQerrorMessage(db->c));
        return -1;
    }
    return 0;
}

static void db_drop(struct testdb *db)
{
    if (db->c) PQfinish(db->c);
    db->c = NULL;
    if (db->name[0]) q1(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db->name);
}

/* ---- temporary schema directories */

static int tmp_dir(char path[64])
{
    snprintf(path, 64, "/tmp/reeld-migtest.XXXXXX");
    return mkdtemp(path) ? 0 : -1;
}

static int put_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void rm_file(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) rm_file(dir, de->d_name);
    closedir(d);
    rmdir(dir);
}

static void sha256_hex(const char *text, char out[65])
{
    unsigned char d[32];
    mbedtls_sha256_ret((const unsigned char *)text, strlen(text), d, 0);
    util_hex(d, sizeof d, out);
}

static int sha256_file_hex(const char *path, char out[65])
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[MIGRATE_MAX_FILE_BYTES + 1];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    sha256_hex(buf, out);
    return 0;
}

static int has_table(PGconn *c, const char *name)
{
    return strcmp(q1(c, "SELECT to_regclass('%s') IS NOT NULL", name), "t") == 0;
}

/* ---- tests */

static void migrate_applies_every_repo_schema_file_with_its_checksum(void)
{
    struct testdb db;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    int latest = migrate_latest_version("schema");
    CHECK(latest >= 1);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    if (err[0]) printf("# %s\n", err);
    char n[16];
    snprintf(n, sizeof n, "%d", latest);
    CHECK_STR(q1(db.c, "SELECT count(*) FROM schema_migrations"), n);
    CHECK_STR(q1(db.c, "SELECT max(version) FROM schema_migrations"), n);
    char sum[65] = "";
    CHECK(sha256_file_hex("schema/001_init.sql", sum) == 0);
    CHECK_STR(q1(db.c, "SELECT checksum FROM schema_migrations WHERE version = 1"), sum);
    CHECK_STR(q1(db.c, "SELECT name FROM schema_migrations WHERE version = 1"), "001_init.sql");
    static const char *const tables[] = {"organizations",
                                         "users",
                                         "memberships",
                                         "invites",
                                         "recordings",
                                         "transcripts",
                                         "documents",
                                         "transcript_chunks",
                                         "jobs",
                                         "events",
                                         "chat_messages",
                                         "chat_feedback",
                                         "plans",
                                         "usage_counters",
                                         "processed_webhook_events"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
        CHECK(has_table(db.c, tables[i]));
    int applied = -1, pending = -1;
    CHECK(migrate_status(db.conninfo, "schema", &applied, &pending, err, sizeof err) == 0);
    CHECK(applied == latest);
    CHECK(pending == 0);
    db_drop(&db);
}

static void migrate_status_counts_everything_pending_on_a_fresh_database(void)
{
    struct testdb db;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    int applied = -1, pending = -1;
    CHECK(migrate_status(db.conninfo, "schema", &applied, &pending, err, sizeof err) == 0);
    CHECK(applied == 0);
    CHECK(pending == migrate_latest_version("schema"));
    /* status changes nothing, not even the tracking table */
    CHECK(!has_table(db.c, "schema_migrations"));
    db_drop(&db);
}

static void migrate_second_run_applies_nothing(void)
{
    struct testdb db;
    char err[512] = "", before[4096] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    const char *agg = "SELECT string_agg(version || '@' || applied_at::text, ',' ORDER BY "
                      "version) FROM schema_migrations";
    snprintf(before, sizeof before, "%s", q1(db.c, "%s", agg));
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK_STR(q1(db.c, "%s", agg), before);
    db_drop(&db);
}

static void migrate_refuses_an_applied_file_that_changed_naming_it(void)
{
    struct testdb db;
    char dir[64], err[512] = "", want[256];
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "001_a.sql", "CREATE TABLE a (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == 0);
    CHECK(put_file(dir, "001_a.sql", "CREATE TABLE a (x int, y int);\n") == 0);
    CHECK(put_file(dir, "002_b.sql", "CREATE TABLE b (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    snprintf(want, sizeof want, "%s/001_a.sql changed after it was applied (checksum", dir);
    CHECK(strstr(err, want) != NULL);
    CHECK(strchr(err, '\n') == NULL);
    /* nothing after the refusal ran */
    CHECK(!has_table(db.c, "b"));
    int applied, pending;
    err[0] = '\0';
    CHECK(migrate_status(db.conninfo, dir, &applied, &pending, err, sizeof err) == -1);
    CHECK(strstr(err, want) != NULL);
    if (t_cur_failed) printf("# err: %s\n", err);
    rm_dir(dir);
    db_drop(&db);
}

/* 1_..10_ without padding: a name sort would run 10 before 2 and fail,
 * since every table references the one before it. */
static void migrate_applies_files_in_numeric_order(void)
{
    struct testdb db;
    char dir[64], err[512] = "", name[64], sql[512];
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "1_start.sql",
                   "CREATE TABLE seen (seq serial, v int);\n"
                   "CREATE TABLE t1 (id int PRIMARY KEY);\nINSERT INTO seen (v) VALUES (1);\n") ==
          0);
    for (int k = 2; k <= 10; k++) {
        snprintf(name, sizeof name, "%d_step.sql", k);
        snprintf(sql, sizeof sql,
                 "CREATE TABLE t%d (id int PRIMARY KEY REFERENCES t%d (id));\n"
                 "INSERT INTO seen (v) VALUES (%d);\n",
                 k, k - 1, k);
        CHECK(put_file(dir, name, sql) == 0);
    }
    CHECK(migrate_latest_version(dir) == 10);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == 0);
    if (err[0]) printf("# %s\n", err);
    CHECK_STR(q1(db.c, "SELECT string_agg(v::text, ',' ORDER BY seq) FROM seen"),
              "1,2,3,4,5,6,7,8,9,10");
    CHECK_STR(q1(db.c, "SELECT string_agg(version::text, ',' ORDER BY applied_at, version) FROM "
                       "schema_migrations"),
              "1,2,3,4,5,6,7,8,9,10");
    rm_dir(dir);
    db_drop(&db);
}

static void migrate_rejects_gaps_and_duplicate_numbers(void)
{
    struct testdb db;
    char dir[64], err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "001_a.sql", "CREATE TABLE a (x int);\n") == 0);
    CHECK(put_file(dir, "003_c.sql", "CREATE TABLE c (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "no migration numbered 2") != NULL);
    CHECK(migrate_latest_version(dir) == -1);
    rm_file(dir, "003_c.sql");
    CHECK(put_file(dir, "1_again.sql", "CREATE TABLE d (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "share the number 1") != NULL);
    CHECK(migrate_latest_version(dir) == -1);
    rm_file(dir, "1_again.sql");
    CHECK(put_file(dir, "002-bad name.sql", "SELECT 1;\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "002-bad name.sql") != NULL);
    /* refused before touching the database */
    CHECK(!has_table(db.c, "schema_migrations"));
    CHECK(!has_table(db.c, "a"));
    if (t_cur_failed) printf("# err: %s\n", err);
    rm_dir(dir);
    db_drop(&db);
}

static void migrate_failing_file_rolls_back_completely_and_stops(void)
{
    struct testdb db;
    char dir[64], err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "1_ok.sql", "CREATE TABLE t1 (x int);\n") == 0);
    CHECK(put_file(dir, "2_bad.sql",
                   "CREATE TABLE t2 (x int);\nINSERT INTO t2 VALUES (1);\n"
                   "SELECT * FROM no_such_table;\n") == 0);
    CHECK(put_file(dir, "3_later.sql", "CREATE TABLE t3 (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    char want[128];
    snprintf(want, sizeof want, "%s/2_bad.sql failed at line 3", dir);
    CHECK(strstr(err, want) != NULL);
    CHECK(strstr(err, "no_such_table") != NULL);
    CHECK(has_table(db.c, "t1"));
    CHECK(!has_table(db.c, "t2"));
    CHECK(!has_table(db.c, "t3"));
    CHECK_STR(q1(db.c, "SELECT string_agg(version::text, ',') FROM schema_migrations"), "1");
    /* fixed, the run resumes where it stopped */
    CHECK(put_file(dir, "2_bad.sql", "CREATE TABLE t2 (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == 0);
    CHECK(has_table(db.c, "t2"));
    CHECK(has_table(db.c, "t3"));
    CHECK_STR(q1(db.c, "SELECT count(*) FROM schema_migrations"), "3");
    if (t_cur_failed) printf("# err: %s\n", err);
    rm_dir(dir);
    db_drop(&db);
}

static void migrate_refuses_a_file_that_commits_itself(void)
{
    struct testdb db;
    char dir[64], err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "1_commits.sql", "CREATE TABLE t1 (x int);\nCOMMIT;\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "1_commits.sql ended the migration's transaction") != NULL);
    CHECK(!has_table(db.c, "schema_migrations") ||
          strcmp(q1(db.c, "SELECT count(*) FROM schema_migrations"), "0") == 0);
    rm_dir(dir);
    db_drop(&db);
}

static void migrate_refuses_database_newer_than_its_files(void)
{
    struct testdb db;
    char dir[64], err[512] = "", sum[65];
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "1_a.sql", "CREATE TABLE a (x int);\n") == 0);
    CHECK(put_file(dir, "2_b.sql", "CREATE TABLE b (x int);\n") == 0);
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == 0);
    rm_file(dir, "2_b.sql");
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "older than its database") != NULL);
    /* a file numbered below an applied one is refused too */
    const char *c3 = "CREATE TABLE c (x int);\n";
    sha256_hex(c3, sum);
    CHECK(put_file(dir, "2_b.sql", "CREATE TABLE b (x int);\n") == 0);
    CHECK(put_file(dir, "3_c.sql", c3) == 0);
    CHECK_STR(q1(db.c, "DELETE FROM schema_migrations WHERE version = 2"), "OK");
    CHECK_STR(q1(db.c,
                 "INSERT INTO schema_migrations (version, name, checksum) VALUES (3, '3_c.sql', "
                 "'%s')",
                 sum),
              "OK");
    CHECK(migrate_run(db.conninfo, dir, err, sizeof err) == -1);
    CHECK(strstr(err, "2_b.sql is not applied but migration 3 already is") != NULL);
    if (t_cur_failed) printf("# err: %s\n", err);
    rm_dir(dir);
    db_drop(&db);
}

/* Two processes released at the same moment: the advisory lock makes one
 * wait, and each file runs once (a second run of 2_ would add a row). */
static void migrate_concurrent_processes_apply_each_file_once(void)
{
    struct testdb db;
    char dir[64];
    CHECK(db_create(&db) == 0);
    CHECK(tmp_dir(dir) == 0);
    CHECK(put_file(dir, "1_slow.sql", "CREATE TABLE hits (n int);\nSELECT pg_sleep(0.3);\n") == 0);
    CHECK(put_file(dir, "2_hit.sql", "INSERT INTO hits VALUES (2);\n") == 0);
    CHECK(put_file(dir, "3_hit.sql", "INSERT INTO hits VALUES (3);\n") == 0);
    int go[2];
    CHECK(pipe(go) == 0);
    fflush(stdout);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            char e[512] = "", b;
            close(go[1]);
            if (read(go[0], &b, 1) < 0) _exit(3);
            int rc = migrate_run(db.conninfo, dir, e, sizeof e);
            if (rc != 0) fprintf(stderr, "child %d: %s\n", i, e);
            _exit(rc == 0 ? 0 : 1);
        }
    }
    close(go[0]);
    close(go[1]); /* both children's read returns now */
    for (int i = 0; i < 2; i++) {
        int status = 0;
        CHECK(pids[i] > 0 && waitpid(pids[i], &status, 0) == pids[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK_STR(q1(db.c, "SELECT string_agg(n::text, ',' ORDER BY n) FROM hits"), "2,3");
    CHECK_STR(q1(db.c, "SELECT count(*) FROM schema_migrations"), "3");
    rm_dir(dir);
    db_drop(&db);
}

/* ---- the data model's own guarantees */

struct fixture {
    char org[40], org2[40], user[40], rec[40];
};

static int fixture(PGconn *c, struct fixture *f)
{
    snprintf(f->org, sizeof f->org, "%s",
             q1(c, "INSERT INTO organizations (name, slug) VALUES ('A', 'a') RETURNING id"));
    snprintf(f->org2, sizeof f->org2, "%s",
             q1(c, "INSERT INTO organizations (name, slug) VALUES ('B', 'b') RETURNING id"));
    snprintf(f->user, sizeof f->user, "%s",
             q1(c, "INSERT INTO users (external_id) VALUES ('user_1') RETURNING id"));
    snprintf(f->rec, sizeof f->rec, "%s",
             q1(c,
                "INSERT INTO recordings (org_id, user_id, title) VALUES ('%s', '%s', 't') "
                "RETURNING id",
                f->org, f->user));
    return util_is_uuid(f->org) && util_is_uuid(f->org2) && util_is_uuid(f->user) &&
                   util_is_uuid(f->rec)
               ? 0
               : -1;
}

static void schema_deleting_a_recording_cascades_to_its_rows_but_keeps_events(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
    CHECK_STR(q1(db.c,
                 "INSERT INTO transcripts (recording_id, org_id, text, provider) VALUES ('%s', "
                 "'%s', 'hello', 'local')",
                 f.rec, f.org),
              "OK");
    CHECK_STR(q1(db.c,
                 "INSERT INTO documents (recording_id, org_id, content, model) VALUES ('%s', "
                 "'%s', '# t', 'local')",
                 f.rec, f.org),
              "OK");
    CHECK_STR(q1(db.c,
                 "INSERT INTO transcript_chunks (recording_id, org_id, idx, text, start_ms, "
                 "end_ms, embedding, dim) VALUES ('%s', '%s', 0, 'hello', 0, 900, "
                 "'\\x0000803f0000803f', 2)",
                 f.rec, f.org),
              "OK");
    CHECK_STR(q1(db.c,
                 "INSERT INTO jobs (org_id, recording_id, stage) VALUES ('%s', '%s', "
                 "'transcription')",
                 f.org, f.rec),
              "OK");
    CHECK_STR(q1(db.c,
                 "INSERT INTO events (org_id, recording_id, type, data) VALUES ('%s', '%s', "
                 "'recording.deleted', '{}')",
                 f.org, f.rec),
              "OK");
    CHECK_STR(q1(db.c, "DELETE FROM recordings WHERE id = '%s'", f.rec), "OK");
    CHECK_STR(q1(db.c, "SELECT (SELECT count(*) FROM transcripts) + (SELECT count(*) FROM "
                       "documents) + (SELECT count(*) FROM transcript_chunks) + (SELECT count(*) "
                       "FROM jobs)"),
              "0");
    CHECK_STR(q1(db.c, "SELECT count(*) FROM events"), "1");
    db_drop(&db);
}

static void schema_allows_one_active_job_per_recording_and_stage(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
#define ins "INSERT INTO jobs (org_id, recording_id, stage) VALUES ('%s', '%s', '%s')"
    CHECK_STR(q1(db.c, ins, f.org, f.rec, "document"), "OK");
    CHECK_STR(q1(db.c, ins, f.org, f.rec, "document"), "ERR:23505");
    CHECK_STR(q1(db.c, ins, f.org, f.rec, "embedding"), "OK");
    CHECK_STR(q1(db.c, "UPDATE jobs SET status = 'failed' WHERE stage = 'document'"), "OK");
    CHECK_STR(q1(db.c, ins, f.org, f.rec, "document"), "OK");
    /* the stages view shows the latest job of each stage */
    CHECK_STR(q1(db.c, "SELECT status FROM recording_stages WHERE stage = 'document'"), "queued");
    CHECK_STR(q1(db.c, ins, f.org, f.rec, "thumbnails"), "ERR:23514");
#undef ins
    db_drop(&db);
}

static void schema_keeps_child_rows_in_their_recordings_organization(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
    CHECK_STR(q1(db.c,
                 "INSERT INTO transcript_chunks (recording_id, org_id, idx, text, start_ms, "
                 "end_ms, embedding, dim) VALUES ('%s', '%s', 0, 'x', 0, 1, '\\x0000803f', 1)",
                 f.rec, f.org2),
              "ERR:23503");
    CHECK_STR(q1(db.c,
                 "INSERT INTO jobs (org_id, recording_id, stage) VALUES ('%s', '%s', "
                 "'transcription')",
                 f.org2, f.rec),
              "ERR:23503");
    /* an embedding whose length disagrees with dim is refused */
    CHECK_STR(q1(db.c,
                 "INSERT INTO transcript_chunks (recording_id, org_id, idx, text, start_ms, "
                 "end_ms, embedding, dim) VALUES ('%s', '%s', 0, 'x', 0, 1, '\\x0000803f', 2)",
                 f.rec, f.org),
              "ERR:23514");
    db_drop(&db);
}

static void schema_checks_enumerations_and_touches_updated_at(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
    CHECK_STR(q1(db.c, "UPDATE recordings SET status = 'bogus' WHERE id = '%s'", f.rec),
              "ERR:23514");
    CHECK_STR(q1(db.c, "UPDATE recordings SET status = 'error' WHERE id = '%s'", f.rec),
              "ERR:23514"); /* error needs its stage */
    CHECK_STR(q1(db.c,
                 "INSERT INTO memberships (org_id, user_id, role) VALUES ('%s', '%s', 'owner')",
                 f.org, f.user),
              "ERR:23514");
    CHECK_STR(q1(db.c,
                 "INSERT INTO memberships (org_id, user_id, role) VALUES ('%s', '%s', 'admin')",
                 f.org, f.user),
              "OK");
    CHECK_STR(q1(db.c, "SELECT plan FROM organizations WHERE id = '%s'", f.org), "free");
    CHECK_STR(q1(db.c, "UPDATE organizations SET plan = 'gold' WHERE id = '%s'", f.org),
              "ERR:23503");
    /* updated_at follows every update (now() is the transaction start) */
    CHECK_STR(q1(db.c, "UPDATE recordings SET updated_at = 'epoch' WHERE id = '%s'", f.rec), "OK");
    CHECK_STR(q1(db.c, "SELECT updated_at > 'epoch' FROM recordings WHERE id = '%s'", f.rec), "t");
    /* deleting the organization removes its members and recordings */
    CHECK_STR(q1(db.c, "DELETE FROM organizations WHERE id = '%s'", f.org), "OK");
    CHECK_STR(q1(db.c, "SELECT (SELECT count(*) FROM memberships) + (SELECT count(*) FROM "
                       "recordings)"),
              "0");
    db_drop(&db);
}

static void schema_event_ids_increase_within_an_organization(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "", first[32];
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
#define ins                                                                                        \
    "INSERT INTO events (org_id, type, data) VALUES ('%s', 'recording.status', '{}') RETURNING id"
    snprintf(first, sizeof first, "%s", q1(db.c, ins, f.org));
    const char *second = q1(db.c, ins, f.org);
    CHECK(atoll(second) > atoll(first));
    CHECK_STR(q1(db.c, "INSERT INTO events (org_id, type) VALUES ('%s', 'Bad Type')", f.org),
              "ERR:23514");
#undef ins
    db_drop(&db);
}

/* An event of an organization cannot be numbered while an earlier one of
 * the same organization is uncommitted (else a reader resuming after the
 * later id would skip it); other organizations do not wait. */
static void schema_event_insert_waits_for_an_uncommitted_event_of_its_org(void)
{
    struct testdb db;
    struct fixture f;
    char err[512] = "", first[32] = "";
    CHECK(db_create(&db) == 0);
    CHECK(migrate_run(db.conninfo, "schema", err, sizeof err) == 0);
    CHECK(fixture(db.c, &f) == 0);
#define ins                                                                                        \
    "INSERT INTO events (org_id, type, data) VALUES ('%s', 'recording.status', '{}') RETURNING id"
    PGconn *b = PQconnectdb(db.conninfo), *o = PQconnectdb(db.conninfo);
    CHECK(PQstatus(b) == CONNECTION_OK && PQstatus(o) == CONNECTION_OK);
    CHECK_STR(q1(db.c, "BEGIN"), "OK");
    snprintf(first, sizeof first, "%s", q1(db.c, ins, f.org));
    char sql[256];
    snprintf(sql, sizeof sql, ins, f.org);
    CHECK(PQsendQuery(b, sql) == 1);
    /* wait (bounded) until b is seen waiting on the organization's lock */
    int waiting = 0;
    for (int i = 0; i < 1000 && !waiting; i++) {
        waiting = strcmp(q1(o, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                               "NOT granted"),
                         "1") == 0;
        if (!waiting) usleep(10000);
    }
    CHECK(waiting);
    /* another organization goes through meanwhile (bounded, not a hang) */
    CHECK_STR(q1(o, "SET statement_timeout = '10s'"), "OK");
    CHECK(atoll(q1(o, ins, f.org2)) > 0);
    CHECK_STR(q1(db.c, "COMMIT"), "OK");
    PGresult *r = PQgetResult(b);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        CHECK(atoll(PQgetvalue(r, 0, 0)) > atoll(first));
    PQclear(r);
    while ((r = PQgetResult(b)) != NULL)
        PQclear(r);
#undef ins
    PQfinish(b);
    PQfinish(o);
    db_drop(&db);
}

int main(void)
{
    base_url = getenv("REELD_TEST_PGURL");
    if (!base_url || !*base_url) {
        printf("FAIL migrate: REELD_TEST_PGURL is not set (run through tests/run)\n");
        return 1;
    }
    admin = PQconnectdb(base_url);
    if (PQstatus(admin) != CONNECTION_OK) {
        printf("FAIL migrate: cannot connect to REELD_TEST_PGURL: %s", PQerrorMessage(admin));
        PQfinish(admin);
        return 1;
    }
    TEST(migrate_applies_every_repo_schema_file_with_its_checksum);
    TEST(migrate_status_counts_everything_pending_on_a_fresh_database);
    TEST(migrate_second_run_applies_nothing);
    TEST(migrate_refuses_an_applied_file_that_changed_naming_it);
    TEST(migrate_applies_files_in_numeric_order);
    TEST(migrate_rejects_gaps_and_duplicate_numbers);
    TEST(migrate_failing_file_rolls_back_completely_and_stops);
    TEST(migrate_refuses_a_file_that_commits_itself);
    TEST(migrate_refuses_database_newer_than_its_files);
    TEST(migrate_concurrent_processes_apply_each_file_once);
    TEST(schema_deleting_a_recording_cascades_to_its_rows_but_keeps_events);
    TEST(schema_allows_one_active_job_per_recording_and_stage);
    TEST(schema_keeps_child_rows_in_their_recordings_organization);
    TEST(schema_checks_enumerations_and_touches_updated_at);
    TEST(schema_event_ids_increase_within_an_organization);
    TEST(schema_event_insert_waits_for_an_uncommitted_event_of_its_org);
    PQfinish(admin);
    T_EXIT();
}
