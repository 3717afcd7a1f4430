/* Schema migrations: schema/NNN_name.sql applied in numeric order.
 *
 * Files: every `*.sql` in the schema directory must be named
 * `NNN_name.sql` (NNN: 1 to 9 decimal digits, leading zeros allowed;
 * name: letters, digits, '_' and '-'). Numbers run 1, 2, 3, ... without
 * gaps or duplicates; other files (README.md, dot files) are ignored. A
 * file is at most 4 MiB and holds no NUL byte. A file must not contain
 * BEGIN/COMMIT (it runs inside a transaction of ours) nor statements that
 * refuse to run in a transaction block (CREATE INDEX CONCURRENTLY, ...).
 *
 * Tracking: table `schema_migrations(version, name, checksum, applied_at)`
 * (created on the first run) holds one row per applied file; checksum is
 * the SHA-256 (hex) of the file's bytes. Each file is applied in its own
 * transaction together with its row, so a failing file leaves nothing
 * behind and stops the run; the files before it stay applied.
 *
 * Refusals (one-line message in err, nothing applied):
 *   - an applied file whose bytes changed ("schema/001_init.sql changed
 *     after it was applied (checksum ...)") or whose name changed;
 *   - a version recorded in the database with no file: this binary is
 *     older than its database;
 *   - a pending file numbered below an applied one (applied out of order
 *     it would see a schema its author never saw);
 *   - a gap, a duplicate number, a bad name, an oversized file.
 *
 * Blocking: these functions use synchronous libpq (PQconnectdb, PQexec)
 * and read files with plain read(2). That is deliberate and allowed only
 * before the event loop serves: `reeld migrate` and the start of `reeld
 * serve`. Never call them from a loop callback; /readyz should compare
 * the version the database reports (MIGRATE_SQL_VERSION through the async
 * pool) with migrate_latest_version() computed once at start-up.
 *
 * Concurrency: migrate_run holds a session advisory lock (one fixed key)
 * for its whole run, so several reeld processes starting together apply
 * each file exactly once; a process that finds the lock taken logs that
 * it waits, then waits. */
#ifndef REELD_MIGRATE_H
#define REELD_MIGRATE_H

#include <stddef.h>

/* Largest migration file accepted, in bytes. */
#define MIGRATE_MAX_FILE_BYTES (4u << 20)

/* The highest applied version (0 when none), for an async readiness
 * check. Fails with "relation does not exist" before the first run. */
#define MIGRATE_SQL_VERSION "SELECT coalesce(max(version), 0) FROM schema_migrations"

/* Apply every pending file of schema_dir to the database at conninfo
 * (libpq URI or key=value string; NULL or "" means libpq's defaults).
 * Logs one line per applied file ("migration applied": version, file, ms)
 * and one summary line. Returns 0 when the database is up to date; -1
 * with a one-line reason in err (errlen bytes, always NUL-terminated when
 * errlen > 0; err may be NULL). */
int migrate_run(const char *conninfo, const char *schema_dir, char *err, size_t errlen);

/* Compare schema_dir with the database without changing anything and
 * without the lock: *applied = files recorded as applied, *pending =
 * files not yet applied (a database never migrated has every file
 * pending). Returns 0, or -1 with a reason in err when the database is
 * unreachable or in one of the refusal cases above (a changed file, a
 * version unknown to schema_dir, ...); the counts are then unspecified. */
int migrate_status(const char *conninfo, const char *schema_dir, int *applied, int *pending,
                   char *err, size_t errlen);

/* The highest file number in schema_dir (which, numbers having no gaps,
 * is also the number of files), 0 for a directory without migrations, or
 * -1 when the directory cannot be read or breaks the naming rules. Reads
 * names only, not contents. */
int migrate_latest_version(const char *schema_dir);

#endif
