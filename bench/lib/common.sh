# shellcheck shell=bash disable=SC2034
# Shared pieces of the bench runner; sourced by bench/run, never executed.
#
# Every process a benchmark starts is recorded by pid and stopped by that pid
# in bench_cleanup (run from the EXIT trap that bench_init installs); the
# private PostgreSQL cluster is stopped with scripts/pg.sh. Everything lives
# in one temp dir, removed at exit. Only loopback addresses are used.
#
# Globals: ROOT (the repo, set by bench/run); set here: BENCH_TMP (temp dir),
# BENCH_T0 (start, epoch s), PGDIR, PGPORT, PGURL, REELD_PORT, REELD_DATA,
# REELD_PID, NGINX_PORT, NGINX_PID, and the WRK_* / PGB_* results of the last
# bench_wrk / bench_pgbench call.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BENCH_PIDS=()
BENCH_PG_STARTED=""

bench_log() { printf '# %s\n' "$*" >&2; }
bench_die() {
    printf 'bench: %s\n' "$*" >&2
    exit 1
}

# bench_init: temp dir and the EXIT trap. Call once, first.
bench_init() {
    BENCH_TMP=$(mktemp -d /tmp/reeld-bench.XXXXXX)
    BENCH_T0=$(date +%s)
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${BENCH_PIDS[@]}"; do
        # give each process a few seconds for an orderly stop, then insist
        local i
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$BENCH_PG_STARTED" ]; then
        "$ROOT/scripts/pg.sh" stop "$PGDIR" || true
    fi
    if [ -n "${BENCH_TMP:-}" ] && [ -d "$BENCH_TMP" ]; then
        if [ -n "${BENCH_KEEP:-}" ]; then
            bench_log "kept $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# bench_build: `make`, quiet unless it fails.
bench_build() {
    bench_log "building reeld (make)"
    if ! timeout 600 make -C "$ROOT" >"$BENCH_TMP/make.log" 2>&1; then
        tail -30 "$BENCH_TMP/make.log" >&2
        bench_die "make failed"
    fi
}

# bench_machine: the lines that say where and when a figure was measured.
bench_machine() {
    local cpu
    cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    echo "date:    $(date -u '+%F %T UTC')"
    echo "machine: nproc=$(nproc), cpu=\"$cpu\", kernel=$(uname -r), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# bench_pg_start: a private cluster (socket only, fsync off) in the temp dir
# and an empty database "reeld" in it.
bench_pg_start() {
    PGDIR=$BENCH_TMP/pg
    PGPORT=$("$ROOT/scripts/freeport.sh")
    bench_log "starting a private PostgreSQL in $PGDIR (port $PGPORT, unix socket only)"
    BENCH_PG_STARTED=1
    PG_LISTEN="" PG_FSYNC=off timeout 120 "$ROOT/scripts/pg.sh" start "$PGDIR" "$PGPORT" ||
        bench_die "cannot start PostgreSQL"
    PGURL=$("$ROOT/scripts/pg.sh" url "$PGDIR" "$PGPORT")
}

# bench_fake_start [ARGS...]: tests/fakes/fake_openai.py on a free
# loopback port with ARGS added; returns once it listens. Sets FAKE_PORT,
# FAKE_PID. Logs: $BENCH_TMP/fake.out and .err.
bench_fake_start() {
    python3 "$ROOT/tests/fakes/fake_openai.py" --host 127.0.0.1 --port 0 "$@" \
        >"$BENCH_TMP/fake.out" 2>"$BENCH_TMP/fake.err" &
    FAKE_PID=$!
    BENCH_PIDS+=("$FAKE_PID")
    local _
    for _ in $(seq 100); do
        FAKE_PORT=$(sed -n 's/^fake_openai listening on [0-9.]*:\([0-9]*\)$/\1/p' "$BENCH_TMP/fake.out")
        [ -n "$FAKE_PORT" ] && return 0
        kill -0 "$FAKE_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$BENCH_TMP/fake.err" >&2
    bench_die "the fake provider did not start"
}

# bench_psql DB SQL: one query on the private cluster, unaligned output.
bench_psql() {
    "$PGBIN/psql" -X -h "$PGDIR" -p "$PGPORT" -U reeld -d "$1" -v ON_ERROR_STOP=1 -tAc "$2"
}

# bench_reeld_start: build/reeld serve on a free loopback port against the
# private cluster; returns once it printed "reeld listening on".
bench_reeld_start() {
    REELD_PORT=$("$ROOT/scripts/freeport.sh")
    REELD_DATA=$BENCH_TMP/reeld-data
    mkdir -p "$REELD_DATA"
    bench_log "starting reeld on 127.0.0.1:$REELD_PORT"
    REELD_DATA_DIR=$REELD_DATA DATABASE_URL=$PGURL REELD_LISTEN=127.0.0.1:$REELD_PORT \
        REELD_PUBLIC_URL=http://127.0.0.1:$REELD_PORT REELD_LOG=warn \
        "$ROOT/build/reeld" serve >"$BENCH_TMP/reeld.out" 2>"$BENCH_TMP/reeld.err" &
    REELD_PID=$!
    BENCH_PIDS+=("$REELD_PID")
    local i
    for i in $(seq 300); do
        grep -q '^reeld listening on' "$BENCH_TMP/reeld.out" 2>/dev/null && return 0
        kill -0 "$REELD_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$BENCH_TMP/reeld.err" >&2
    bench_die "reeld did not start"
}

# bench_reeld_alive: fail loudly if reeld died (a crash under load is a bug).
bench_reeld_alive() {
    if ! kill -0 "$REELD_PID" 2>/dev/null; then
        local rc=0
        wait "$REELD_PID" || rc=$?
        echo "REELD DIED (exit status $rc); last stderr lines:"
        tail -20 "$BENCH_TMP/reeld.err"
        return 1
    fi
}

# bench_reeld_token ARGS...: a dev JWT from the benchmark's data dir.
bench_reeld_token() {
    REELD_DATA_DIR=$REELD_DATA "$ROOT/build/reeld" token "$@"
}

# bench_nginx_start: the nginx peer from bench/nginx.conf.tmpl on a free
# loopback port, in the foreground of its own pid (daemon off).
bench_nginx_start() {
    NGINX_PORT=$("$ROOT/scripts/freeport.sh")
    local dir=$BENCH_TMP/nginx
    mkdir -p "$dir"
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$NGINX_PORT|g" "$ROOT/bench/nginx.conf.tmpl" >"$dir/nginx.conf"
    if [ "$(id -u)" != 0 ]; then
        sed -i '/^user root;/d' "$dir/nginx.conf"
    fi
    bench_log "starting nginx ($(nginx -v 2>&1 | sed 's/.*\///')) on 127.0.0.1:$NGINX_PORT"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout" 2>&1 &
    NGINX_PID=$!
    BENCH_PIDS+=("$NGINX_PID")
    local i
    for i in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/healthz" 2>/dev/null && return 0
        kill -0 "$NGINX_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null
    bench_die "nginx did not start"
}

# bench_wrk_cmd: the wrk line every HTTP measurement uses (same for peers).
BENCH_WRK_ARGS=(-t2 -c64 -d10s --latency)
BENCH_WRK_WARMUP=(-t2 -c64 -d2s)

# bench_wrk_warmup NAME URL [wrk options...]: 2 s of the same load, not
# reported (connections, caches and prepared statements settle).
bench_wrk_warmup() {
    local name=$1 url=$2
    shift 2
    timeout 30 wrk "${BENCH_WRK_WARMUP[@]}" "$@" "$url" >"$BENCH_TMP/wrk-$name-warmup.txt" 2>&1 || true
}

# bench_wrk NAME URL [wrk options...]: the measured run. Output in
# $BENCH_TMP/wrk-NAME.txt; sets WRK_RPS, WRK_P50, WRK_P99, WRK_REQS,
# WRK_NON2XX (count, 0 when wrk printed no such line) and WRK_SOCKERR
# (wrk's line, or "none").
bench_wrk() {
    local name=$1 url=$2
    shift 2
    local out=$BENCH_TMP/wrk-$name.txt
    timeout 60 wrk "${BENCH_WRK_ARGS[@]}" "$@" "$url" >"$out" 2>&1 || {
        cat "$out" >&2
        bench_die "wrk failed for $name"
    }
    WRK_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    WRK_P50=$(awk '$1 == "50%" {print $2}' "$out")
    WRK_P99=$(awk '$1 == "99%" {print $2}' "$out")
    WRK_REQS=$(awk '/requests in/ {print $1}' "$out")
    WRK_NON2XX=$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$out")
    WRK_NON2XX=${WRK_NON2XX:-0}
    WRK_SOCKERR=$(sed -n 's/^ *Socket errors: *//p' "$out")
    WRK_SOCKERR=${WRK_SOCKERR:-none}
    [ -n "$WRK_RPS" ] || {
        cat "$out" >&2
        bench_die "cannot read wrk output for $name"
    }
}

# bench_cpu_ticks PID: user+system CPU time of PID so far, in clock ticks.
bench_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# bench_cpu_pct T0 T1 SECONDS: CPU ticks T1-T0 as a percentage of one core.
bench_cpu_pct() {
    awk -v a="$1" -v b="$2" -v s="$3" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.0f%%", 100 * (b - a) / hz / s }'
}

# bench_cpu_us T0 T1 N: CPU ticks T1-T0 per operation, in microseconds. A
# cost per request barely depends on how much CPU other processes left.
bench_cpu_us() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", 1e6 * (b - a) / hz / n; else print "n/a" }'
}

# bench_ratio A B: A/B with two decimals.
bench_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# bench_pgbench_init SCALE: `pgbench -i -s SCALE` into a separate database
# "pgb" of the private cluster (never the reeld database).
bench_pgbench_init() {
    bench_log "pgbench -i -s $1 into database pgb"
    "$PGBIN/createdb" -h "$PGDIR" -p "$PGPORT" -U reeld pgb || bench_die "createdb pgb failed"
    timeout 180 "$PGBIN/pgbench" -i -s "$1" -q -h "$PGDIR" -p "$PGPORT" -U reeld pgb \
        >"$BENCH_TMP/pgbench-init.txt" 2>&1 || {
        cat "$BENCH_TMP/pgbench-init.txt" >&2
        bench_die "pgbench -i failed"
    }
}

# bench_pgbench_warmup OPTIONS...: 2 s with the same options (-T N becomes
# -T 2), not reported.
bench_pgbench_warmup() {
    local -a warm=()
    local a skip=""
    for a in "$@"; do
        if [ -n "$skip" ]; then
            warm+=(2)
            skip=""
        elif [ "$a" = -T ]; then
            warm+=(-T)
            skip=1
        else
            warm+=("$a")
        fi
    done
    timeout 30 "$PGBIN/pgbench" "${warm[@]}" -h "$PGDIR" -p "$PGPORT" -U reeld pgb \
        >"$BENCH_TMP/pgbench-warmup.txt" 2>&1 || true
}

# bench_pgbench NAME OPTIONS...: the measured run over the unix socket of
# the private cluster against database pgb. Sets PGB_TPS, PGB_LAT (average
# latency, ms), PGB_XACTS, PGB_FAILED, and PGB_CMD (the command line, with
# the socket directory and port as $PGDIR and $PGPORT).
bench_pgbench() {
    local name=$1
    shift
    PGB_CMD="pgbench $* -h \$PGDIR -p \$PGPORT -U reeld pgb"
    local out=$BENCH_TMP/pgbench-$name.txt
    timeout 60 "$PGBIN/pgbench" "$@" -h "$PGDIR" -p "$PGPORT" -U reeld pgb >"$out" 2>&1 || {
        cat "$out" >&2
        bench_die "pgbench failed"
    }
    PGB_TPS=$(awk '/^tps = / {print $3; exit}' "$out")
    PGB_LAT=$(awk '/^latency average = / {print $4; exit}' "$out")
    PGB_XACTS=$(awk -F': *' '/number of transactions actually processed/ {print $2; exit}' "$out")
    PGB_FAILED=$(awk -F': *' '/number of failed transactions/ {print $2; exit}' "$out")
    PGB_FAILED=${PGB_FAILED:-0}
    [ -n "$PGB_TPS" ] || {
        cat "$out" >&2
        bench_die "cannot read pgbench output"
    }
}

# bench_sys_ticks: "BUSY TOTAL" clock ticks of all CPUs so far (/proc/stat).
bench_sys_ticks() {
    awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat
}

# bench_child_secs: sets BENCH_CHILD_SECS to the user+system CPU seconds of
# this shell's finished children so far (the second line of the `times`
# builtin; it must run in this shell, not in a subshell, hence the file).
bench_child_secs() {
    times >"$BENCH_TMP/times"
    BENCH_CHILD_SECS=$(awk 'NR == 2 {
        s = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); s += p[1] * 60 + p[2] }
        print s
    }' "$BENCH_TMP/times")
}

# bench_pg_ticks: CPU clock ticks so far of the private cluster: the
# postmaster, its live children (backends, checkpointer, ...) and, through
# the postmaster's cutime/cstime, the children it already reaped, so
# short-lived pgbench backends are counted too.
bench_pg_ticks() {
    local pm pid sum t
    pm=$(head -1 "$PGDIR/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
    sum=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$pm/stat" 2>/dev/null) ||
        { echo 0; return; }
    for pid in $(pgrep -P "$pm"); do
        t=$(bench_cpu_ticks "$pid" 2>/dev/null) || continue
        sum=$((sum + t))
    done
    echo "$sum"
}
