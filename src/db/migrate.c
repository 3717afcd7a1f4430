/* Schema migrations; see include/reeld/migrate.h. Synchronous libpq on
 * purpose: this runs before the event loop serves. */
#include "reeld/migrate.h"

#include "reeld/log.h"
#include "reeld/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <mbedtls/sha256.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Key of the session advisory lock held during a run: "reeldmig" read as
 * a big-endian int64. The single-bigint key space of advisory locks is
 * separate from the two-int4 one the schema's triggers use. */
#define MIG_LOCK_KEY "8243106209187326311"
#define MIG_MAX_FILES 10000

static const char sql_create_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                       " version int PRIMARY KEY CHECK (version > 0),"
                                       " name text NOT NULL,"
                                       " checksum text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";
static const char sql_select_applied[] =
    "SELECT version, name, checksum FROM schema_migrations ORDER BY version";
static const char sql_table_exists[] = "SELECT to_regclass('schema_migrations') IS NOT NULL";
static const char sql_insert_applied[] =
    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";

struct mig_file {
    int version;
    int applied;
    char name[256]; /* file name, recorded in schema_migrations */
    char *path;     /* schema_dir + "/" + name, for messages */
    char *sql;      /* contents, NUL-terminated; NULL when not loaded */
    size_t len;
    char sum[65]; /* sha256 hex of the contents */
};

struct mig_set {
    struct mig_file *v;
    size_t n, cap;
};

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* one line: server messages may carry newlines */
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == ' ')
        err[--n] = '\0';
}

static void set_free(struct mig_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].path);
        free(s->v[i].sql);
    }
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    int slash = dl > 0 && dir[dl - 1] != '/';
    char *p = malloc(dl + (size_t)slash + nl + 1);
    if (!p) return NULL;
    memcpy(p, dir, dl);
    if (slash) p[dl] = '/';
    memcpy(p + dl + (size_t)slash, name, nl + 1);
    return p;
}

/* NNN_name.sql -> version, or 0 when the name does not follow the rule. */
static int parse_name(const char *name)
{
    size_t len = strlen(name), i = 0;
    long v = 0;
    while (i < len && name[i] >= '0' && name[i] <= '9' && i < 9)
        v = v * 10 + (name[i++] - '0');
    if (i == 0 || i >= len || name[i] != '_') return 0;
    size_t start = ++i, end = len - 4; /* caller checked the ".sql" suffix */
    if (end <= start) return 0;
    for (; i < end; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return (int)v;
}

static int cmp_version(const void *a, const void *b)
{
    const struct mig_file *x = a, *y = b;
    if (x->version != y->version) return x->version < y->version ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int set_add(struct mig_set *s, const char *dir, const char *name, int version)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct mig_file *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    struct mig_file *f = &s->v[s->n];
    memset(f, 0, sizeof *f);
    f->version = version;
    snprintf(f->name, sizeof f->name, "%s", name);
    f->path = path_join(dir, name);
    if (!f->path) return -1;
    s->n++;
    return 0;
}

/* Read f->path whole (bounded) and compute its checksum. */
static int load_file(struct mig_file *f, char *err, size_t errlen)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "%s: %s", f->path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", f->path);
        close(fd);
        return -1;
    }
    if ((unsigned long long)st.st_size > MIGRATE_MAX_FILE_BYTES) {
        seterr(err, errlen, "%s is larger than %u bytes", f->path, MIGRATE_MAX_FILE_BYTES);
        close(fd);
        return -1;
    }
    /* one byte more than the size seen, to notice a file that grows
     * while we read it instead of cutting it silently */
    size_t size = (size_t)st.st_size, len = 0;
    char *buf = malloc(size + 2);
    if (!buf) {
        seterr(err, errlen, "%s: out of memory", f->path);
        close(fd);
        return -1;
    }
    while (len < size + 1) {
        ssize_t r = read(fd, buf + len, size + 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            seterr(err, errlen, "%s: %s", f->path, strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (len != size) {
        seterr(err, errlen, "%s changed while it was being read", f->path);
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        seterr(err, errlen, "%s contains a NUL byte", f->path);
        free(buf);
        return -1;
    }
    unsigned char digest[32];
    if (mbedtls_sha256_ret((const unsigned char *)buf, len, digest, 0) != 0) {
        seterr(err, errlen, "%s: sha256 failed", f->path);
        free(buf);
        return -1;
    }
    util_hex(digest, sizeof digest, f->sum);
    f->sql = buf;
    f->len = len;
    return 0;
}

/* Collect the migration files of dir, sorted and checked for gaps and
 * duplicates; with load, read them and compute their checksums. */
static int scan_dir(const char *dir, int load, struct mig_set *s, char *err, size_t errlen)
{
    if (!dir || !*dir) {
        seterr(err, errlen, "no schema directory given");
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        seterr(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        if (name[0] == '.' || len < 4 || strcmp(name + len - 4, ".sql") != 0) continue;
        int v = parse_name(name);
        if (v <= 0 || len >= sizeof s->v[0].name) {
            seterr(err, errlen, "%s/%s: migration files are named NNN_name.sql, numbered from 1",
                   dir, name);
            rc = -1;
        } else if (s->n >= MIG_MAX_FILES) {
            seterr(err, errlen, "%s: more than %d migration files", dir, MIG_MAX_FILES);
            rc = -1;
        } else if (set_add(s, dir, name, v) != 0) {
            seterr(err, errlen, "%s: out of memory", dir);
            rc = -1;
        }
    }
    closedir(d);
    if (rc != 0) return -1;
    if (s->n > 0) qsort(s->v, s->n, sizeof s->v[0], cmp_version);
    for (size_t i = 0; i < s->n; i++) {
        struct mig_file *f = &s->v[i];
        if (i > 0 && f->version == s->v[i - 1].version) {
            seterr(err, errlen, "%s and %s share the number %d", s->v[i - 1].path, f->path,
                   f->version);
            return -1;
        }
        if (f->version != (int)i + 1) {
            seterr(err, errlen,
                   "%s: no migration numbered %d before %s (numbers run 1, 2, 3, ... "
                   "without gaps)",
                   dir, (int)i + 1, f->path);
            return -1;
        }
    }
    for (size_t i = 0; load && i < s->n; i++)
        if (load_file(&s->v[i], err, errlen) != 0) return -1;
    return 0;
}

/* Server notices (e.g. "relation already exists, skipping") go to our
 * JSON log instead of libpq's default raw stderr print. */
static void on_notice(void *arg, const PGresult *r)
{
    (void)arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    enum log_level lvl = sev && strcmp(sev, "WARNING") == 0 ? LOG_WARN : LOG_DEBUG;
    struct log_line *l = log_begin(lvl, "postgres notice");
    log_str(l, "severity", sev ? sev : "");
    log_str(l, "detail", msg ? msg : "");
    log_end(l);
}

static PGconn *connect_db(const char *conninfo, char *err, size_t errlen)
{
    /* dbname is expanded as a whole conninfo string; the fallback
     * application name applies only when conninfo names none */
    const char *const keys[] = {"fallback_application_name", "dbname", NULL};
    const char *const vals[] = {"reeld-migrate", conninfo ? conninfo : "", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c) {
        seterr(err, errlen, "database connection failed: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        seterr(err, errlen, "database connection failed: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeReceiver(c, on_notice, NULL);
    return c;
}

/* One-line description of a failed result. */
static void describe(char *buf, size_t n, PGconn *c, const PGresult *r)
{
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (!msg) {
        msg = PQerrorMessage(c);
        if (!*msg && r) msg = PQresStatus(PQresultStatus(r));
    }
    if (state)
        snprintf(buf, n, "%s (SQLSTATE %s)", msg, state);
    else
        snprintf(buf, n, "%s", msg);
}

/* Run a statement expected to succeed; on failure err says what for. */
static PGresult *exec_ok(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
    char why[512];
    describe(why, sizeof why, c, r);
    seterr(err, errlen, "%s: %s", what, why);
    PQclear(r);
    return NULL;
}

static int exec_cmd(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *r = exec_ok(c, sql, what, err, errlen);
    PQclear(r);
    return r ? 0 : -1;
}

/* Leave COPY states a file may have started and collect what is left, so
 * the connection can take a ROLLBACK. */
static void drain(PGconn *c, PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COPY_IN) PQputCopyEnd(c, "COPY FROM STDIN is not supported in migrations");
    if (st == PGRES_COPY_OUT) {
        char *buf;
        while (PQgetCopyData(c, &buf, 0) > 0)
            PQfreemem(buf);
    }
    PGresult *x;
    while ((x = PQgetResult(c)) != NULL)
        PQclear(x);
}

/* Line (1-based) of the 1-based character position pos in sql (UTF-8). */
static int line_of(const char *sql, size_t len, long pos)
{
    int line = 1;
    long chars = 0;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)sql[i] & 0xC0) != 0x80 && ++chars >= pos) break;
        if (sql[i] == '\n') line++;
    }
    return line;
}

static int apply_one(PGconn *c, const struct mig_file *f, char *err, size_t errlen)
{
    int64_t t0 = util_mono_ms();
    if (exec_cmd(c, "BEGIN", f->path, err, errlen) != 0) return -1;
    PGresult *r = PQexec(c, f->sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        char why[512];
        describe(why, sizeof why, c, r);
        const char *pos = r ? PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION) : NULL;
        long long p = 0;
        if (pos && util_parse_ll(pos, 1, 1LL << 40, &p) == 0)
            seterr(err, errlen, "%s failed at line %d: %s", f->path, line_of(f->sql, f->len, p),
                   why);
        else
            seterr(err, errlen, "%s failed: %s", f->path, why);
        drain(c, r);
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    PQclear(r);
    if (PQtransactionStatus(c) != PQTRANS_INTRANS) {
        /* the file committed or rolled back itself: our row would land
         * outside its transaction */
        seterr(err, errlen,
               "%s ended the migration's transaction itself (migration files must not "
               "contain BEGIN/COMMIT/ROLLBACK)",
               f->path);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    char ver[16];
    snprintf(ver, sizeof ver, "%d", f->version);
    const char *params[3] = {ver, f->name, f->sum};
    r = PQexecParams(c, sql_insert_applied, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        char why[512];
        describe(why, sizeof why, c, r);
        seterr(err, errlen, "%s: recording it failed: %s", f->path, why);
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    PQclear(r);
    r = PQexec(c, "COMMIT");
    /* an aborted transaction answers COMMIT with a "ROLLBACK" tag */
    if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        char why[512];
        describe(why, sizeof why, c, r);
        seterr(err, errlen, "%s: commit failed: %s", f->path, why);
        PQclear(r);
        return -1;
    }
    PQclear(r);
    struct log_line *l = log_begin(LOG_INFO, "migration applied");
    log_int(l, "version", f->version);
    log_str(l, "file", f->path);
    log_int(l, "ms", (long long)(util_mono_ms() - t0));
    log_end(l);
    return 0;
}

/* Match the rows of schema_migrations against the loaded files and mark
 * the applied ones; refuse the cases listed in the header. */
static int reconcile(struct mig_set *s, const PGresult *rows, const char *dir, int *napplied,
                     char *err, size_t errlen)
{
    int n = PQntuples(rows), maxv = 0;
    for (int i = 0; i < n; i++) {
        long long v = 0;
        const char *name = PQgetvalue(rows, i, 1), *sum = PQgetvalue(rows, i, 2);
        if (util_parse_ll(PQgetvalue(rows, i, 0), 1, 1LL << 30, &v) != 0 || (size_t)v > s->n) {
            seterr(err, errlen,
                   "the database has migration %s (%s) but %s has no such file: this reeld is "
                   "older than its database",
                   PQgetvalue(rows, i, 0), name, dir);
            return -1;
        }
        struct mig_file *f = &s->v[v - 1]; /* numbers run 1..n without gaps */
        if (strcmp(f->name, name) != 0) {
            seterr(err, errlen,
                   "%s: migration %lld was applied as %s; applied files must not be "
                   "renamed",
                   f->path, v, name);
            return -1;
        }
        if (strcmp(f->sum, sum) != 0) {
            seterr(err, errlen,
                   "%s changed after it was applied (checksum %.12s now, %.12s when applied); "
                   "add a new migration instead",
                   f->path, f->sum, sum);
            return -1;
        }
        f->applied = 1;
        if ((int)v > maxv) maxv = (int)v;
    }
    for (size_t i = 0; i < s->n; i++) {
        if (!s->v[i].applied && s->v[i].version < maxv) {
            seterr(err, errlen,
                   "%s is not applied but migration %d already is: renumber it above %d",
                   s->v[i].path, maxv, maxv);
            return -1;
        }
    }
    *napplied = n;
    return 0;
}

static int apply_pending(PGconn *c, struct mig_set *s, const char *dir, char *err, size_t errlen)
{
    if (exec_cmd(c, sql_create_table, "creating schema_migrations", err, errlen) != 0) return -1;
    PGresult *rows = exec_ok(c, sql_select_applied, "reading schema_migrations", err, errlen);
    if (!rows) return -1;
    int already = 0;
    int rc = reconcile(s, rows, dir, &already, err, errlen);
    PQclear(rows);
    if (rc != 0) return -1;
    int done = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].applied) continue;
        if (apply_one(c, &s->v[i], err, errlen) != 0) return -1;
        done++;
    }
    struct log_line *l = log_begin(LOG_INFO, "migrations up to date");
    log_int(l, "version", (long long)s->n);
    log_int(l, "applied", done);
    log_end(l);
    return 0;
}

int migrate_run(const char *conninfo, const char *schema_dir, char *err, size_t errlen)
{
    struct mig_set s = {0};
    if (err && errlen) err[0] = '\0';
    if (scan_dir(schema_dir, 1, &s, err, errlen) != 0) {
        set_free(&s);
        return -1;
    }
    PGconn *c = connect_db(conninfo, err, errlen);
    if (!c) {
        set_free(&s);
        return -1;
    }
    int rc = -1;
    PGresult *r = exec_ok(c, "SELECT pg_try_advisory_lock(" MIG_LOCK_KEY ")",
                          "taking the migration lock", err, errlen);
    if (r) {
        int got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (!got) {
            log_msg(LOG_INFO, "waiting for the migration lock", "holder",
                    "another process is migrating this database");
            if (exec_cmd(c, "SELECT pg_advisory_lock(" MIG_LOCK_KEY ")",
                         "taking the migration lock", err, errlen) == 0)
                got = 1;
        }
        if (got) {
            rc = apply_pending(c, &s, schema_dir, err, errlen);
            /* closing the session releases it too; unlocking first lets a
             * waiter go on without waiting for our disconnect */
            PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIG_LOCK_KEY ")"));
        }
    }
    PQfinish(c);
    set_free(&s);
    return rc;
}

int migrate_status(const char *conninfo, const char *schema_dir, int *applied, int *pending,
                   char *err, size_t errlen)
{
    struct mig_set s = {0};
    if (err && errlen) err[0] = '\0';
    if (!applied || !pending) {
        seterr(err, errlen, "migrate_status: no output given");
        return -1;
    }
    if (scan_dir(schema_dir, 1, &s, err, errlen) != 0) {
        set_free(&s);
        return -1;
    }
    PGconn *c = connect_db(conninfo, err, errlen);
    if (!c) {
        set_free(&s);
        return -1;
    }
    int rc = -1, n = 0;
    PGresult *r = exec_ok(c, sql_table_exists, "reading schema_migrations", err, errlen);
    if (r) {
        int exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (!exists) {
            rc = 0;
        } else if ((r = exec_ok(c, sql_select_applied, "reading schema_migrations", err, errlen)) !=
                   NULL) {
            rc = reconcile(&s, r, schema_dir, &n, err, errlen);
            PQclear(r);
        }
    }
    if (rc == 0) {
        *applied = n;
        *pending = (int)s.n - n;
    }
    PQfinish(c);
    set_free(&s);
    return rc;
}

int migrate_latest_version(const char *schema_dir)
{
    struct mig_set s = {0};
    int rc = scan_dir(schema_dir, 0, &s, NULL, 0) == 0 ? (int)s.n : -1;
    set_free(&s);
    return rc;
}
