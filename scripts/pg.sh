#!/usr/bin/env bash
# A private PostgreSQL 15 cluster in a directory, no system service.
#   scripts/pg.sh start DIR PORT   initdb if needed, start, create db "reeld"
#   scripts/pg.sh stop DIR
#   scripts/pg.sh url DIR PORT     print the libpq conninfo
# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# unprivileged system user "reeld-pg" (created when missing).
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=$1 dir=$(realpath -m "$2") port=${3:-5432}
PGUSER_OS=reeld-pg

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PGUSER_OS" -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    if [ "$(id -u)" = 0 ] && ! id "$PGUSER_OS" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PGUSER_OS"
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown "$PGUSER_OS" "$dir"
        chmod 755 "$dir"
        # every parent must be traversable by the cluster's owner
        p=$dir
        while [ "$p" != / ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$PGBIN/initdb" -D "$dir/data" -U reeld --auth=trust -E UTF8 \
            --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if ! as_owner "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses='${PG_LISTEN-127.0.0.1}' -c fsync=${PG_FSYNC:-on} -c max_connections=200" \
            start >/dev/null || { tail -20 "$dir/postgres.log" >&2; exit 1; }
    fi
    if ! "$PGBIN/psql" -h "$dir" -p "$port" -U reeld -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='reeld'" | grep -q 1; then
        "$PGBIN/createdb" -h "$dir" -p "$port" -U reeld reeld
    fi
    ;;
stop)
    if [ -f "$dir/data/PG_VERSION" ]; then
        as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    ;;
url)
    echo "host=$dir port=$port user=reeld dbname=reeld"
    ;;
*)
    echo "usage: $0 start|stop|url DIR [PORT]" >&2
    exit 2
    ;;
esac
