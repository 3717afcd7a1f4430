/* Unit tests against the real PostgreSQL of tests/run (REELD_TEST_PGURL):
 * connection strings for a database of their own, created and migrated. */
#ifndef REELD_T_DB_H
#define REELD_T_DB_H

#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "reeld/migrate.h"
#include "reeld/util.h"

/* url with its dbname replaced, as key='value' pairs, so any URI or
 * key=value form of REELD_TEST_PGURL works. Returns 0 or -1. */
static inline int t_conninfo_for(const char *url, const char *dbname, char *out, size_t n)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &msg);
    if (!opts) {
        PQfreemem(msg);
        return -1;
    }
    size_t len = 0;
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = strcmp(o->keyword, "dbname") == 0 ? dbname : o->val;
        if (!v) continue;
        len += (size_t)snprintf(out + len, len < n ? n - len : 0, "%s='", o->keyword);
        for (const char *p = v; *p && len + 2 < n; p++) {
            if (*p == '\'' || *p == '\\') out[len++] = '\\';
            out[len++] = *p;
        }
        len += (size_t)snprintf(out + len, len < n ? n - len : 0, "' ");
    }
    PQconninfoFree(opts);
    return len < n ? 0 : -1;
}

/* Creates database <prefix>_<random hex> through admin (connected to url)
 * and applies schema/ to it. Fills dbname[32] and conninfo. Returns 0, or
 * -1 with the reason in err. */
static inline int t_db_create(PGconn *admin, const char *url, const char *prefix, char dbname[32],
                              char *conninfo, size_t n, char *err, size_t errlen)
{
    unsigned char rnd[6];
    char hex[13], sql[96];
    util_random(rnd, sizeof rnd);
    util_hex(rnd, sizeof rnd, hex);
    snprintf(dbname, 32, "%.12s_%s", prefix, hex);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
    PGresult *r = PQexec(admin, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        snprintf(err, errlen, "%s", PQerrorMessage(admin));
        return -1;
    }
    if (t_conninfo_for(url, dbname, conninfo, n) != 0) {
        snprintf(err, errlen, "bad REELD_TEST_PGURL");
        return -1;
    }
    return migrate_run(conninfo, "schema", err, errlen);
}

/* Drops what t_db_create made, even with connections left open. */
static inline void t_db_drop(PGconn *admin, const char *dbname)
{
    char sql[96];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    PQclear(PQexec(admin, sql));
}

#endif
