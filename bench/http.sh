# shellcheck shell=bash
# `bench/run http`: reeld's HTTP path against two peers measured in the same
# run on the same machine:
#   (a) GET /healthz (static answer) against nginx, same wrk line;
#   (b) GET /api/organizations/current (JWT verify + queries) against
#       `pgbench -S` on the same private PostgreSQL cluster.
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

# Figures per run name: req/s, p50, p99, requests, non-2xx, socket errors,
# server CPU (percent of one core), database transactions per request.
# H_US / H_PGUS: CPU microseconds per request of the server / the cluster.
# H_PG: CPU of the PostgreSQL cluster during the run (percent of one core);
# H_OTHER: CPU used during the run by everything but the server, the
# cluster and wrk (other processes on this shared machine), in cores.
declare -A H_RPS H_P50 H_P99 H_REQS H_N2 H_SE H_CPU H_XPR H_PG H_OTHER H_US H_PGUS

# bench_http_org_setup: alice creates an organization (admin); bob's first
# token carries the org claim, which reeld mirrors into a membership on
# first sight. Sets ORG_ID, ALICE_TOKEN, BOB_CLAIM_TOKEN (org claim in the
# token) and BOB_TOKEN (no org claim: reeld looks the membership up).
bench_http_org_setup() {
    local base=http://127.0.0.1:$REELD_PORT org cur
    ALICE_TOKEN=$(bench_reeld_token --sub alice) || bench_die "reeld token failed"
    org=$(curl -fsS -X POST "$base/api/organizations" -H "Authorization: Bearer $ALICE_TOKEN" \
        -H 'Content-Type: application/json' -d '{"name":"Acme"}') ||
        bench_die "POST /api/organizations failed"
    ORG_ID=$(jq -r '.organization.id // empty' <<<"$org")
    [ -n "$ORG_ID" ] || bench_die "no organization id in: $org"
    BOB_CLAIM_TOKEN=$(bench_reeld_token --sub bob --org "$ORG_ID" --role member) ||
        bench_die "reeld token for bob failed"
    BOB_TOKEN=$(bench_reeld_token --sub bob) || bench_die "reeld token for bob failed"
    local t
    for t in "$BOB_CLAIM_TOKEN" "$BOB_TOKEN"; do
        cur=$(curl -fsS "$base/api/organizations/current" -H "Authorization: Bearer $t") ||
            bench_die "GET /api/organizations/current as bob failed"
        [ "$(jq -r '.organization.id' <<<"$cur")" = "$ORG_ID" ] || bench_die "bob sees another org: $cur"
        [ "$(jq -r 'has("members")' <<<"$cur")" = false ] ||
            bench_die "a plain member got the member list: $cur"
    done
    cur=$(curl -fsS "$base/api/organizations/current" -H "Authorization: Bearer $ALICE_TOKEN") ||
        bench_die "GET /api/organizations/current as alice failed"
    [ "$(jq -r '.members | length' <<<"$cur")" = 2 ] || bench_die "the admin does not see 2 members: $cur"
}

# bench_http_xacts: committed transactions of database reeld so far. Idle
# backends flush their statistics within a second; reeld sends each query
# with its own pipeline sync, so one query is one transaction.
bench_http_xacts() {
    sleep 1.5
    bench_psql postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = 'reeld'"
}

# bench_http_run NAME SERVER_PID URL [wrk options...]: warm-up, then the
# measured wrk run with the server's CPU time (and, for reeld, the
# database transactions) counted around it alone.
bench_http_run() {
    local name=$1 pid=$2 url=$3
    shift 3
    bench_wrk_warmup "$name" "$url" "$@"
    local x0="" x1 c0 c1 t0 t1 s0 s1 w0 w1 p0 p1
    [ "$pid" = "$REELD_PID" ] && x0=$(bench_http_xacts)
    p0=$(bench_pg_ticks)
    c0=$(bench_cpu_ticks "$pid")
    s0=$(bench_sys_ticks)
    bench_child_secs
    w0=$BENCH_CHILD_SECS
    t0=$(date +%s.%N)
    bench_wrk "$name" "$url" "$@"
    t1=$(date +%s.%N)
    bench_child_secs
    w1=$BENCH_CHILD_SECS
    s1=$(bench_sys_ticks)
    c1=$(bench_cpu_ticks "$pid")
    p1=$(bench_pg_ticks)
    H_OTHER[$name]=$(awk -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$((c1 + p1 - p0))" \
        -v w0="$w0" -v w1="$w1" \
        -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {
            split(s0, a, " "); split(s1, b, " ")
            o = ((b[1] - a[1]) - (c1 - c0)) / hz - (w1 - w0)
            if (o < 0) o = 0
            printf "%.2f", o / (t1 - t0)
        }')
    H_RPS[$name]=$WRK_RPS H_P50[$name]=$WRK_P50 H_P99[$name]=$WRK_P99 H_REQS[$name]=$WRK_REQS
    H_N2[$name]=$WRK_NON2XX H_SE[$name]=$WRK_SOCKERR
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    H_CPU[$name]=$(bench_cpu_pct "$c0" "$c1" "$secs")
    H_PG[$name]=$(bench_cpu_pct "$p0" "$p1" "$secs")
    H_US[$name]=$(bench_cpu_us "$c0" "$c1" "$WRK_REQS")
    H_PGUS[$name]=$(bench_cpu_us "$p0" "$p1" "$WRK_REQS")
    H_XPR[$name]="n/a"
    if [ -n "$x0" ]; then
        bench_reeld_alive || exit 1
        x1=$(bench_http_xacts)
        H_XPR[$name]=$(awk -v a="$x0" -v b="$x1" -v n="$WRK_REQS" \
            'BEGIN { if (n > 0) printf "%.2f", (b - a) / n; else print "n/a" }')
    fi
}

# bench_http_pgbench OPTIONS...: warm-up, then the measured pgbench run,
# with the cluster's CPU and the other load counted around it alone.
bench_http_pgbench() {
    bench_pgbench_warmup "$@"
    local p0 p1 s0 s1 w0 w1 t0 t1
    p0=$(bench_pg_ticks)
    s0=$(bench_sys_ticks)
    bench_child_secs
    w0=$BENCH_CHILD_SECS
    t0=$(date +%s.%N)
    bench_pgbench select "$@"
    t1=$(date +%s.%N)
    bench_child_secs
    w1=$BENCH_CHILD_SECS
    s1=$(bench_sys_ticks)
    p1=$(bench_pg_ticks)
    PGB_PG=$(bench_cpu_pct "$p0" "$p1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    PGB_US=$(bench_cpu_us "$p0" "$p1" "$PGB_XACTS")
    PGB_OTHER=$(awk -v s0="$s0" -v s1="$s1" -v p="$((p1 - p0))" -v w0="$w0" -v w1="$w1" \
        -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {
            split(s0, a, " "); split(s1, b, " ")
            o = ((b[1] - a[1]) - p) / hz - (w1 - w0)
            if (o < 0) o = 0
            printf "%.2f", o / (t1 - t0)
        }')
}

# bench_http_line LABEL NAME: one result line and its error line.
bench_http_line() {
    local n=$2
    printf '  %-22s %9s req/s  p50 %-8s p99 %-8s' "$1" "${H_RPS[$n]}" "${H_P50[$n]}" "${H_P99[$n]}"
    printf '  %s requests, Non-2xx or 3xx responses: %s, Socket errors: %s\n' \
        "${H_REQS[$n]}" "${H_N2[$n]}" "${H_SE[$n]}"
    printf '  %-22s CPU: server %s (%s us/req), postgres %s (%s us/req), other load %s cores' \
        "" "${H_CPU[$n]}" "${H_US[$n]}" "${H_PG[$n]}" "${H_PGUS[$n]}" "${H_OTHER[$n]}"
    [ "${H_XPR[$n]}" = n/a ] || printf ', db xacts/req ~%s' "${H_XPR[$n]}"
    printf '\n'
}

bench_main() {
    echo "== bench/run http =="
    bench_machine
    echo

    bench_pg_start
    bench_pgbench_init 10
    bench_psql pgb "CHECKPOINT" >/dev/null
    bench_reeld_start
    bench_nginx_start
    local nginx_worker
    nginx_worker=$(pgrep -P "$NGINX_PID" | head -1)
    [ -n "$nginx_worker" ] || bench_die "no nginx worker process"

    local hz_reeld hz_nginx
    hz_reeld=$(curl -fsS "http://127.0.0.1:$REELD_PORT/healthz") || bench_die "reeld /healthz failed"
    hz_nginx=$(curl -fsS "http://127.0.0.1:$NGINX_PORT/healthz") || bench_die "nginx /healthz failed"
    [ "$hz_reeld" = "$hz_nginx" ] ||
        bench_log "note: /healthz bodies differ: reeld '$hz_reeld' nginx '$hz_nginx'"

    # (a) static answer
    bench_log "wrk: reeld GET /healthz"
    bench_http_run reeld-healthz "$REELD_PID" "http://127.0.0.1:$REELD_PORT/healthz"
    bench_log "wrk: nginx GET /healthz"
    bench_http_run nginx-healthz "$nginx_worker" "http://127.0.0.1:$NGINX_PORT/healthz"

    # (b) authenticated, database-backed GET
    bench_http_org_setup
    local cur=http://127.0.0.1:$REELD_PORT/api/organizations/current
    bench_log "wrk: reeld GET /api/organizations/current, member, membership looked up"
    bench_http_run member "$REELD_PID" "$cur" -H "Authorization: Bearer $BOB_TOKEN"
    bench_log "wrk: reeld GET /api/organizations/current, member, org claim in the token"
    bench_http_run member-claim "$REELD_PID" "$cur" -H "Authorization: Bearer $BOB_CLAIM_TOKEN"
    bench_log "wrk: reeld GET /api/organizations/current, admin (adds the member list)"
    bench_http_run admin "$REELD_PID" "$cur" -H "Authorization: Bearer $ALICE_TOKEN"

    bench_log "pgbench -S"
    bench_http_pgbench -S -c 16 -j 2 -T 10 -M prepared

    local wrk_line="wrk ${BENCH_WRK_ARGS[*]}"
    echo "(a) GET /healthz, static answer: reeld vs nginx"
    echo "  cmd: $wrk_line http://127.0.0.1:\$REELD_PORT/healthz"
    echo "  cmd: $wrk_line http://127.0.0.1:\$NGINX_PORT/healthz"
    bench_http_line "reeld /healthz" reeld-healthz
    bench_http_line "nginx /healthz" nginx-healthz
    echo "  ratio reeld/nginx req/s: $(bench_ratio "${H_RPS[reeld-healthz]}" "${H_RPS[nginx-healthz]}")"
    echo
    echo "(b) GET /api/organizations/current (ES256 JWT verify + DB) vs pgbench -S, same cluster"
    echo "  cmd: $wrk_line -H \"Authorization: Bearer \$TOKEN\" http://127.0.0.1:\$REELD_PORT/api/organizations/current"
    echo "       member:       TOKEN=\$(build/reeld token --sub bob)   (membership lookup + org row)"
    echo "       member-claim: TOKEN=\$(build/reeld token --sub bob --org \$ORG --role member)   (org row)"
    echo "       admin:        TOKEN=\$(build/reeld token --sub alice)   (membership + org row + member list)"
    echo "  cmd: pgbench -i -s 10 -q pgb   (separate database pgb of the same cluster)"
    echo "  cmd: $PGB_CMD   (unix socket)"
    bench_http_line "reeld member" member
    printf '  %-22s %9.2f tps    latency average %s ms, %s transactions, failed: %s\n' \
        "pgbench -S" "$PGB_TPS" "$PGB_LAT" "$PGB_XACTS" "$PGB_FAILED"
    printf '  %-22s CPU: postgres %s (%s us/xact, 16 backends), pgbench itself not counted, other load %s cores\n' \
        "" "$PGB_PG" "$PGB_US" "$PGB_OTHER"
    echo "  ratio reeld member req/s / pgbench tps: $(bench_ratio "${H_RPS[member]}" "$PGB_TPS")"
    echo "  same wrk line, other identities:"
    bench_http_line "reeld member-claim" member-claim
    bench_http_line "reeld admin" admin
    echo "  ratio reeld member-claim/pgbench: $(bench_ratio "${H_RPS[member-claim]}" "$PGB_TPS");" \
        "reeld admin/pgbench: $(bench_ratio "${H_RPS[admin]}" "$PGB_TPS")"
    echo
    echo "notes:"
    echo "  reeld is single-threaded: one libevent loop on one core (server CPU 100% = one core"
    echo "  saturated), REELD_DB_POOL=4 connections. nginx runs worker_processes 1 (its worker's CPU"
    echo "  is shown). pgbench runs 16 connections, hence 16 backends on all cores."
    echo "  wrk (2 threads) and pgbench (-j 2) share the machine's $(nproc) CPUs with the server they load."
    echo "  each wrk run follows a 2 s warm-up (wrk ${BENCH_WRK_WARMUP[*]}), pgbench one with -T 2."
    echo "  db xacts/req: pg_stat_database.xact_commit of database reeld across the measured run, per request"
    echo "  (approximate: PostgreSQL flushes these counters lazily); reeld syncs each query alone, so 1 query = 1 xact."
    echo "  CPU: percent of one core over the measured run, and CPU microseconds per request (server:"
    echo "  reeld's process or nginx's worker; postgres: the whole private cluster; clock ticks of"
    echo "  $(getconf CLK_TCK) Hz). other load: CPU used by every other process (/proc/stat"
    echo "  minus server, cluster and wrk), in cores out of $(nproc): the machine is shared, and figures"
    echo "  taken under other load are lower than on a quiet machine."
    echo "  cluster: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync=off, other settings default."
    echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time of this run: $(($(date +%s) - BENCH_T0)) s"
    if grep -q . "$BENCH_TMP/reeld.err"; then
        echo "  reeld stderr (level warn and above), last lines:"
        tail -5 "$BENCH_TMP/reeld.err" | sed 's/^/    /'
    fi
}
