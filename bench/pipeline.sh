# shellcheck shell=bash
# `bench/run pipeline`: recordings through the whole pipeline
# (transcription -> document -> embedding -> publication: 4 jobs each)
# against the fake OpenAI-compatible provider (tests/fakes/fake_openai.py)
# with a fixed latency on every answer, and, as the peer in the same run on
# the same PostgreSQL cluster, `pgbench` running the job queue's own
# claim-and-complete SQL (bench/queue_claim.sql): the database's ceiling
# for jobs/s. Target: reeld's jobs/s >= 0.7x pgbench's. pgbench runs
# BENCH_PIPELINE_PGB_S seconds (default 5) right before the measured reeld
# and again right after it; the peer's rate is the mean of the two, so
# that a shared, noisy machine weighs on both sides alike.
#
# N recordings (BENCH_PIPELINE_N, default 1,000), everything as in
# production for audio: the OpenAI transcriber sends the stored MP3 as it
# is (no ffmpeg), publication takes no thumbnail of audio, so the measured
# reeld spawns no child; what is measured is reeld's own cost: the queue,
# the database writes, the provider round trips.
#
# Where the clock runs. Uploads are not the pipeline, so they are done
# first, by a reeld with REELD_WORKERS=off (the API only: no process works
# the queue); the script waits until every upload's duration probe has
# ended (stored, or failed with a warning), then stops that reeld. That
# reeld finds on its PATH an `ffprobe` script (written below) that prints
# the duration the real ffprobe measured for the file: one real ffprobe
# start costs ~0.3 s of CPU here (216 shared libraries), so 1,000 of them
# would be minutes of set-up outside the measurement. The measured reeld
# is started with its workers on, on the same database and data dir, and
# finds N transcription jobs queued. The clock runs from its first claim
# (the earliest jobs.started_at) to the last recording's completed_at,
# both read from the database: its start-up (loading, the migrations
# check, connecting the pool, ~0.15-0.2 s here) is left out, as pgbench
# leaves out its connections ("tps ... without initial connection time").
# The rates from its spawn are printed too. psql polls the statuses every
# 0.5 s to know when all are done. Its peak RSS (VmHWM) and CPU are its
# own over the whole run (start-up included); the CPU of the children it
# spawned is its cutime/cstime.
#
# Media: one 1 s mono sine MP3 (~4.5 KB) made with ffmpeg, uploaded N times
# with different titles by bench/pipeline_upload.py (one tus
# creation-with-upload POST per recording, 8 keep-alive connections).
#
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

BENCH_PIPELINE_N=${BENCH_PIPELINE_N:-1000}
BENCH_PIPELINE_LATENCY_MS=${BENCH_PIPELINE_LATENCY_MS:-20}
BENCH_PIPELINE_CONCURRENCY=${BENCH_PIPELINE_CONCURRENCY:-64}
BENCH_PIPELINE_POOL=${BENCH_PIPELINE_POOL:-8}
BENCH_PIPELINE_UPLOADERS=${BENCH_PIPELINE_UPLOADERS:-8}
BENCH_PIPELINE_TIMEOUT_S=${BENCH_PIPELINE_TIMEOUT_S:-600}
# 1: profile run, not for figures: the cluster loads pg_stat_statements and
# the statements of the last round's pipeline are printed at the end
BENCH_PIPELINE_PGSS=${BENCH_PIPELINE_PGSS:-0}
BENCH_PIPELINE_PGB_S=${BENCH_PIPELINE_PGB_S:-5}
BENCH_PIPELINE_PGB=(-n -M prepared -D stage=transcription -f bench/queue_claim.sql
    -c "$BENCH_PIPELINE_POOL" -j 2 -T "$BENCH_PIPELINE_PGB_S")
BENCH_PIPELINE_TARGET=0.7
declare -A R_N R_UP R_UPSECS R_UPCPU R_APIHWM R_SECS R_SPAWN_SECS R_SPAWN_RATES R_FIRST R_DONE R_ERR R_JOBS R_RECS R_JOBSS
declare -A R_PROBEFAIL R_LOCKW R_HWM R_RSS0 R_RSS1 R_CPU R_CCPU R_PGCPU R_FAKECPU R_BUSY R_XPJ R_COUNTS R_FAKEREQ R_STAGES

bench_pipeline_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# bench_pipeline_reeld NAME DB DATA [VAR=VALUE...]: build/reeld serve on
# database DB of the private cluster and data dir DATA, with the given
# settings added; returns once it printed "reeld listening on". Sets
# REELD_PID, REELD_PORT, REELD_DATA, PIPE_T0 (epoch seconds just before
# the spawn). Logs: $BENCH_TMP/reeld-NAME.out and .err.
bench_pipeline_reeld() {
    local name=$1 db=$2
    REELD_DATA=$3
    shift 3
    REELD_PORT=$("$ROOT/scripts/freeport.sh")
    mkdir -p "$REELD_DATA"
    local shown="$*"
    bench_log "starting reeld ($name) on 127.0.0.1:$REELD_PORT: ${shown//:$PATH/:\$PATH}"
    PIPE_T0=$(date +%s.%N)
    env REELD_DATA_DIR="$REELD_DATA" DATABASE_URL="host=$PGDIR port=$PGPORT user=reeld dbname=$db" \
        REELD_LISTEN="127.0.0.1:$REELD_PORT" REELD_PUBLIC_URL="http://127.0.0.1:$REELD_PORT" \
        REELD_LOG=warn "$@" \
        "$ROOT/build/reeld" serve >"$BENCH_TMP/reeld-$name.out" 2>"$BENCH_TMP/reeld-$name.err" &
    REELD_PID=$!
    BENCH_PIDS+=("$REELD_PID")
    local _
    for _ in $(seq 300); do
        grep -q '^reeld listening on' "$BENCH_TMP/reeld-$name.out" 2>/dev/null && return 0
        kill -0 "$REELD_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$BENCH_TMP/reeld-$name.err" >&2
    bench_die "reeld ($name) did not start"
}

# bench_pipeline_reeld_stop: SIGTERM to the current reeld, wait for it.
bench_pipeline_reeld_stop() {
    kill -TERM "$REELD_PID" 2>/dev/null || true
    local _
    for _ in $(seq 150); do
        kill -0 "$REELD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$REELD_PID" 2>/dev/null || true
    wait "$REELD_PID" 2>/dev/null || true
}

bench_pipeline_alive() { # NAME
    kill -0 "$REELD_PID" 2>/dev/null && return 0
    echo "REELD DIED ($1); last stderr lines:"
    tail -20 "$BENCH_TMP/reeld-$1.err"
    return 1
}

# bench_pipeline_counts DB: "completed error other" over the recordings.
bench_pipeline_counts() {
    bench_psql "$1" "SELECT count(*) FILTER (WHERE status = 'completed'),
        count(*) FILTER (WHERE status = 'error'),
        count(*) FILTER (WHERE status NOT IN ('completed', 'error')) FROM recordings" | tr '|' ' '
}

bench_pipeline_xacts() { # DB
    bench_psql postgres "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$1'"
}


# bench_pipeline_probe DIR DURATION: an `ffprobe` script in DIR that
# prints DURATION (what the real ffprobe measured on the bench's file), for
# the API-only reeld of the uploads.
bench_pipeline_probe() {
    mkdir -p "$1"
    printf '#!/bin/bash\n# bench/run pipeline: stands in for ffprobe at upload (see bench/pipeline.sh)\necho %s\n' \
        "$2" >"$1/ffprobe"
    chmod +x "$1/ffprobe"
}

# bench_pipeline_round NAME N DB [VAR=VALUE...]: N uploads by an API-only
# reeld, then the measured pipeline run by a reeld with workers, both on
# database DB (created here) with the given settings; fills R_*[NAME].
bench_pipeline_round() {
    local name=$1 n=$2 db=$3
    shift 3
    local -a extra=("$@")
    local data=$BENCH_TMP/data-$name hz
    hz=$(getconf CLK_TCK)
    R_N[$name]=$n
    [ "$db" = reeld ] || "$PGBIN/createdb" -h "$PGDIR" -p "$PGPORT" -U reeld "$db" ||
        bench_die "createdb $db failed"

    # ---- uploads, with no worker in any process
    bench_pipeline_reeld "$name-api" "$db" "$data" REELD_WORKERS=off REELD_DB_POOL="$BENCH_PIPELINE_POOL" \
        "${PROV_ENV[@]}" "${extra[@]}" PATH="$BENCH_TMP/probe-bin:$PATH"
    local t org token
    t=$(bench_reeld_token --sub pipeline-bench) || bench_die "reeld token failed"
    org=$(curl -fsS -X POST "http://127.0.0.1:$REELD_PORT/api/organizations" \
        -H "Authorization: Bearer $t" -H 'Content-Type: application/json' -d '{"name":"Bench"}') ||
        bench_die "POST /api/organizations failed"
    org=$(jq -r '.organization.id // empty' <<<"$org")
    [ -n "$org" ] || bench_die "no organization id"
    token=$(bench_reeld_token --sub pipeline-bench --org "$org" --role admin) || bench_die "reeld token failed"
    bench_log "$name: uploading $(stat -c %s "$MEDIA") bytes $n times ($BENCH_PIPELINE_UPLOADERS connections)"
    local c0 c1 t0 t1 line
    c0=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$REELD_PID/stat")
    t0=$(date +%s.%N)
    line=$(timeout 600 python3 "$ROOT/bench/pipeline_upload.py" --port "$REELD_PORT" --token "$token" \
        --file "$MEDIA" --count "$n" --clients "$BENCH_PIPELINE_UPLOADERS" --type audio/mpeg \
        --title-prefix "$name") || {
        echo "$line"
        bench_pipeline_alive "$name-api" || true
        bench_die "uploads failed"
    }
    # the duration probes (ffprobe children of the API process, one per
    # upload, 30 s limit each) end: stored, or given up with a warning
    local stored failed probe_deadline=$(($(date +%s) + BENCH_PIPELINE_TIMEOUT_S))
    while :; do
        stored=$(bench_psql "$db" "SELECT count(*) FROM recordings WHERE duration_ms IS NOT NULL")
        failed=$(grep -c -e '"duration probe failed"' -e '"duration not saved"' "$BENCH_TMP/reeld-$name-api.err") || true
        [ $((stored + failed)) -ge "$n" ] && break
        [ "$(date +%s)" -lt "$probe_deadline" ] || bench_die "$name: $((n - stored - failed)) duration probes still running"
        sleep 0.2
    done
    R_PROBEFAIL[$name]=$failed
    t1=$(date +%s.%N)
    c1=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$REELD_PID/stat")
    bench_pipeline_alive "$name-api" || exit 1
    R_UP[$name]=$line
    R_UPSECS[$name]=$(bench_pipeline_secs "$t0" "$t1")
    R_UPCPU[$name]=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz }')
    R_APIHWM[$name]=$(awk '/^VmHWM:/ {print $2}' "/proc/$REELD_PID/status")
    bench_pipeline_reeld_stop
    local queued
    queued=$(bench_psql "$db" "SELECT count(*) FROM jobs WHERE stage = 'transcription' AND status = 'queued'")
    if [ "$(bench_pipeline_counts "$db")" != "0 0 $n" ] || [ "$queued" != "$n" ]; then
        bench_die "$name, after the uploads: counts $(bench_pipeline_counts "$db"), $queued transcription jobs queued (want $n)"
    fi
    bench_psql "$db" "VACUUM ANALYZE" >/dev/null
    # the peer's first run, right before the measured one; its dead rows
    # are vacuumed so that no autovacuum of pgb runs during the round
    bench_pipeline_peer_run before
    bench_psql pgb "VACUUM ANALYZE" >/dev/null
    bench_psql reeld "CHECKPOINT" >/dev/null
    [ -z "${FAKE_PORT:-}" ] || curl -fsS -o /dev/null -X POST "http://127.0.0.1:$FAKE_PORT/_control/reset" ||
        bench_die "cannot reset the fake's counters"

    # ---- the measured run: one reeld with its workers on
    local x0 x1 p0 p1 s0 s1 f0 f1
    x0=$(bench_pipeline_xacts "$db")
    p0=$(bench_pg_ticks)
    s0=$(bench_sys_ticks)
    f0=$(bench_cpu_ticks "$FAKE_PID")
    bench_log "$name: pipeline, $n recordings"
    bench_pipeline_reeld "$name-workers" "$db" "$data" REELD_DB_POOL="$BENCH_PIPELINE_POOL" \
        REELD_STAGE_CONCURRENCY="$BENCH_PIPELINE_CONCURRENCY" "${PROV_ENV[@]}" "${extra[@]}"
    local pid=$REELD_PID t0p=$PIPE_T0
    R_RSS0[$name]=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    # each poll also samples the database's sessions of this round: how
    # many run a statement, how many of those wait for the advisory lock
    # that orders an organization's events (schema/001_init.sql)
    local deadline=$(($(date +%s) + BENCH_PIPELINE_TIMEOUT_S)) c e o a w polls=0 act=0 adv=0
    while :; do
        read -r c e o a w <<<"$(bench_psql "$db" "SELECT count(*) FILTER (WHERE status = 'completed'),
            count(*) FILTER (WHERE status = 'error'),
            count(*) FILTER (WHERE status NOT IN ('completed', 'error')),
            (SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND state = 'active'
                AND pid <> pg_backend_pid()),
            (SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND state = 'active'
                AND wait_event_type = 'Lock' AND wait_event = 'advisory')
            FROM recordings" | tr '|' ' ')"
        polls=$((polls + 1)) act=$((act + a)) adv=$((adv + w))
        [ $((c + e)) -ge "$n" ] && break
        bench_pipeline_alive "$name-workers" || exit 1
        [ "$(date +%s)" -lt "$deadline" ] ||
            bench_die "$name: timeout: $c completed, $e error, $o in progress after ${BENCH_PIPELINE_TIMEOUT_S}s"
        # each poll is a psql and a backend started: not too often, as the
        # figure comes from completed_at, not from when the poll saw it
        sleep 0.5
    done
    local t1p cpu
    t1p=$(date +%s.%N)
    # reeld's own CPU (utime+stime) and its reaped children's (cutime+cstime)
    cpu=$(awk '{ sub(/^.*\) /, ""); print $12 + $13, $14 + $15 }' "/proc/$pid/stat")
    R_HWM[$name]=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    R_RSS1[$name]=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    s1=$(bench_sys_ticks)
    p1=$(bench_pg_ticks)
    f1=$(bench_cpu_ticks "$FAKE_PID")
    local done_at first_at
    done_at=$(bench_psql "$db" "SELECT extract(epoch FROM max(completed_at)) FROM recordings")
    first_at=$(bench_psql "$db" "SELECT extract(epoch FROM min(started_at)) FROM jobs")
    R_SPAWN_SECS[$name]=$(bench_pipeline_secs "$t0p" "$done_at")
    R_FIRST[$name]=$(bench_pipeline_secs "$t0p" "$first_at")
    R_SECS[$name]=$(bench_pipeline_secs "$first_at" "$done_at")
    R_DONE[$name]=$c
    R_ERR[$name]=$e
    R_COUNTS[$name]=$(bench_psql "$db" "SELECT stage || ':' || status || '=' || count(*) FROM jobs
        GROUP BY stage, status ORDER BY stage, status" | tr '\n' ' ')
    R_FAKEREQ[$name]=$(curl -fsS "http://127.0.0.1:$FAKE_PORT/_control/stats?recent=0" |
        jq -r '.requests | to_entries | map("\(.key)=\(.value)") | join(" ")') || R_FAKEREQ[$name]="n/a"
    R_STAGES[$name]=$(curl -fsS "http://127.0.0.1:$REELD_PORT/metrics" 2>/dev/null | awk '
        /^reeld_stage_duration_seconds_sum/ { match($0, /stage="[a-z]+"/); s[substr($0, RSTART + 7, RLENGTH - 8)] = $2 }
        /^reeld_stage_duration_seconds_count/ { match($0, /stage="[a-z]+"/); k[substr($0, RSTART + 7, RLENGTH - 8)] = $2 }
        END { for (x in s) if (k[x] > 0) printf "%s %.0f ms, ", x, 1000 * s[x] / k[x] }' | sed 's/, $//') || R_STAGES[$name]=""
    bench_pipeline_alive "$name-workers" || exit 1
    bench_pipeline_reeld_stop
    sleep 1.5 # idle backends flush their statistics
    x1=$(bench_pipeline_xacts "$db")
    local cself cchild jobs
    read -r cself cchild <<<"$cpu"
    jobs=$(bench_psql "$db" "SELECT count(*) FROM jobs WHERE status = 'done'")
    R_JOBS[$name]=$jobs
    R_RECS[$name]=$(awk -v n="$c" -v s="${R_SECS[$name]}" 'BEGIN { printf "%.1f", n / s }')
    R_JOBSS[$name]=$(awk -v n="$jobs" -v s="${R_SECS[$name]}" 'BEGIN { printf "%.1f", n / s }')
    R_SPAWN_RATES[$name]=$(awk -v n="$c" -v j="$jobs" -v s="${R_SPAWN_SECS[$name]}" \
        'BEGIN { printf "%.1f recordings/s, %.1f jobs/s", n / s, j / s }')
    R_CPU[$name]=$(awk -v t="$cself" -v hz="$hz" -v n="$jobs" 'BEGIN { printf "%.2f s (%.0f us/job)", t / hz, 1e6 * t / hz / n }')
    R_CCPU[$name]=$(awk -v t="$cchild" -v hz="$hz" -v n="$n" 'BEGIN { printf "%.2f s (%.0f ms/recording)", t / hz, 1e3 * t / hz / n }')
    R_PGCPU[$name]=$(awk -v a="$p0" -v b="$p1" -v hz="$hz" -v n="$jobs" 'BEGIN { printf "%.2f s (%.0f us/job)", (b - a) / hz, 1e6 * (b - a) / hz / n }')
    R_FAKECPU[$name]=$(awk -v a="$f0" -v b="$f1" -v hz="$hz" 'BEGIN { printf "%.2f s", (b - a) / hz }')
    # other load: the CPU of every process but reeld (and the children it
    # reaped), the cluster and the fake, in cores: the machine is shared
    R_BUSY[$name]=$(awk -v s0="$s0" -v s1="$s1" -v hz="$hz" -v t="$(bench_pipeline_secs "$t0p" "$t1p")" \
        -v ours="$((cself + cchild + p1 - p0 + f1 - f0))" 'BEGIN { split(s0, a, " "); split(s1, b, " ")
            o = (b[1] - a[1] - ours) / hz / t; if (o < 0) o = 0
            printf "%.2f of %d cores busy, other load %.2f cores", (b[1] - a[1]) / hz / t, '"$(nproc)"', o }')
    R_LOCKW[$name]=$(awk -v p="$polls" -v a="$act" -v w="$adv" \
        'BEGIN { printf "%.2f running a statement, %.2f of them waiting for the events lock (mean of %d samples)", a / p, w / p, p }')
    R_XPJ[$name]=$(awk -v a="$x0" -v b="$x1" -v n="$jobs" 'BEGIN { printf "%.2f", (b - a) / n }')
}

# bench_pipeline_peer_setup: database pgb for pgbench with
# bench/queue_claim.sql (schema by `reeld migrate`, seeded as the script's
# header says), vacuumed, and pgbench's warm-up.
bench_pipeline_peer_setup() {
    bench_log "pgbench: bench/queue_claim.sql in database pgb"
    "$PGBIN/createdb" -h "$PGDIR" -p "$PGPORT" -U reeld pgb || bench_die "createdb pgb failed"
    DATABASE_URL="host=$PGDIR port=$PGPORT user=reeld dbname=pgb" REELD_DATA_DIR="$BENCH_TMP/data-pgb" \
        "$ROOT/build/reeld" migrate >"$BENCH_TMP/migrate-pgb.txt" 2>&1 ||
        { cat "$BENCH_TMP/migrate-pgb.txt" >&2; bench_die "reeld migrate into pgb failed"; }
    bench_psql pgb "INSERT INTO organizations (name, slug) VALUES ('bench', 'bench');
        INSERT INTO recordings (org_id, title)
          SELECT o.id, 'r' || g FROM organizations o, generate_series(1, 1000) g WHERE o.slug = 'bench';
        INSERT INTO jobs (org_id, recording_id, stage) SELECT org_id, id, 'transcription' FROM recordings" \
        >/dev/null || bench_die "cannot seed pgb"
    bench_psql pgb "VACUUM ANALYZE" >/dev/null
    bench_psql pgb "CHECKPOINT" >/dev/null
    bench_pgbench_warmup "${BENCH_PIPELINE_PGB[@]}"
}

# bench_pipeline_peer_run WHEN: one measured pgbench run (WHEN: before or
# after the round); sets PEER_TPS[WHEN], PEER_LINE[WHEN], PEER_CPU[WHEN].
declare -A PEER_TPS PEER_LINE PEER_CPU
bench_pipeline_peer_run() {
    local when=$1 p0 p1 t0 t1
    p0=$(bench_pg_ticks)
    t0=$(date +%s.%N)
    bench_pgbench "queue-$when" "${BENCH_PIPELINE_PGB[@]}"
    t1=$(date +%s.%N)
    p1=$(bench_pg_ticks)
    PEER_TPS[$when]=$PGB_TPS
    PEER_LINE[$when]="$PGB_TPS tps, latency average $PGB_LAT ms, $PGB_XACTS transactions, failed: $PGB_FAILED"
    PEER_CPU[$when]=$(awk -v a="$p0" -v b="$p1" -v hz="$(getconf CLK_TCK)" -v n="$PGB_XACTS" -v t="$(bench_pipeline_secs "$t0" "$t1")" \
        'BEGIN { printf "%.2f s over %.1f s (%.0f us/job)", (b - a) / hz, t, (n > 0) ? 1e6 * (b - a) / hz / n : 0 }')
}

bench_pipeline_report() { # NAME LABEL
    local n=$1 ratio
    ratio=$(bench_ratio "${R_JOBSS[$n]}" "$PGB_TPS")
    echo "$2"
    printf '  uploads (not timed as the pipeline): %s\n' "${R_UP[$n]}"
    printf '    until every duration probe ended: %s s (%s of them failed); API reeld CPU %s s incl. children; VmHWM %s kB\n' \
        "${R_UPSECS[$n]}" "${R_PROBEFAIL[$n]}" "${R_UPCPU[$n]}" "${R_APIHWM[$n]}"
    printf '  wall time:             %s s (first job claimed -> last completed_at)\n' "${R_SECS[$n]}"
    printf '  from the spawn:        %s s (the first claim %s s after it): %s\n' \
        "${R_SPAWN_SECS[$n]}" "${R_FIRST[$n]}" "${R_SPAWN_RATES[$n]}"
    printf '  recordings/s:          %s   (%s completed, %s error of %s)\n' "${R_RECS[$n]}" "${R_DONE[$n]}" "${R_ERR[$n]}" "${R_N[$n]}"
    printf '  jobs/s:                %s   (%s jobs done)   ratio to pgbench: %s (target >= %s: %s)\n' \
        "${R_JOBSS[$n]}" "${R_JOBS[$n]}" "$ratio" "$BENCH_PIPELINE_TARGET" \
        "$(awk -v r="$ratio" -v t="$BENCH_PIPELINE_TARGET" 'BEGIN { print (r >= t) ? "met" : "NOT met" }')"
    printf '  reeld peak RSS:        VmHWM %s kB (%.1f MiB); VmRSS %s kB after start-up, %s kB at the end\n' \
        "${R_HWM[$n]}" "$(awk -v k="${R_HWM[$n]}" 'BEGIN { print k / 1024 }')" "${R_RSS0[$n]}" "${R_RSS1[$n]}"
    printf '  CPU:                   reeld %s; its children %s\n' "${R_CPU[$n]}" "${R_CCPU[$n]}"
    printf '                         postgres %s; fake provider %s; machine: %s\n' \
        "${R_PGCPU[$n]}" "${R_FAKECPU[$n]}" "${R_BUSY[$n]}"
    printf '  db transactions/job:   %s (pg_stat_database xact_commit + xact_rollback / jobs)\n' "${R_XPJ[$n]}"
    printf '  database sessions:     %s\n' "${R_LOCKW[$n]}"
    printf '  mean stage time:       %s (reeld_stage_duration_seconds: claim -> result committed)\n' "${R_STAGES[$n]}"
    echo "  jobs: ${R_COUNTS[$n]}"
    echo "  fake provider requests: ${R_FAKEREQ[$n]}"
}

bench_main() {
    echo "== bench/run pipeline =="
    bench_machine
    echo
    local v
    for v in BENCH_PIPELINE_N BENCH_PIPELINE_LATENCY_MS BENCH_PIPELINE_CONCURRENCY \
        BENCH_PIPELINE_POOL BENCH_PIPELINE_UPLOADERS BENCH_PIPELINE_TIMEOUT_S; do
        case "${!v}" in
        "" | *[!0-9]*) bench_die "$v must be a whole number (got '${!v}')" ;;
        esac
    done
    [ "$BENCH_PIPELINE_N" -ge 1 ] || bench_die "BENCH_PIPELINE_N must be at least 1"
    for v in BENCH_PIPELINE_CONCURRENCY BENCH_PIPELINE_POOL BENCH_PIPELINE_UPLOADERS; do
        [ "${!v}" -ge 1 ] || bench_die "$v must be at least 1"
    done
    local tool
    for tool in ffmpeg ffprobe python3; do
        command -v "$tool" >/dev/null || bench_die "$tool is not installed"
    done

    bench_pg_start
    if [ "$BENCH_PIPELINE_PGSS" = 1 ]; then
        printf "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\n" \
            >>"$PGDIR/data/postgresql.conf"
        "$ROOT/scripts/pg.sh" stop "$PGDIR"
        PG_LISTEN="" PG_FSYNC=off timeout 120 "$ROOT/scripts/pg.sh" start "$PGDIR" "$PGPORT" ||
            bench_die "cannot restart PostgreSQL with pg_stat_statements"
        bench_psql reeld "CREATE EXTENSION pg_stat_statements" >/dev/null
    fi
    # the fake provider with a fixed latency on every answer
    bench_fake_start --latency-ms "$BENCH_PIPELINE_LATENCY_MS"
    PROV_ENV=(REELD_TRANSCRIBER=openai REELD_LLM=openai REELD_EMBEDDER=openai
        OPENAI_BASE_URL="http://127.0.0.1:$FAKE_PORT/v1" OPENAI_API_KEY=sk-bench)

    # the media: 1 s of a 440 Hz sine, mono 16 kHz MP3 at 32 kbit/s
    MEDIA=$BENCH_TMP/tone.mp3
    ffmpeg -nostdin -loglevel error -f lavfi -i "sine=frequency=440:duration=1" -ac 1 -ar 16000 \
        -c:a libmp3lame -b:a 32k "$MEDIA" || bench_die "cannot make the media file with ffmpeg"
    local dur
    dur=$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$MEDIA") ||
        bench_die "ffprobe failed on the media file"

    bench_pipeline_probe "$BENCH_TMP/probe-bin" "$dur"
    bench_pipeline_peer_setup
    bench_pipeline_round real "$BENCH_PIPELINE_N" reeld
    bench_pipeline_peer_run after
    # the peer's rate: the mean of its runs right before and right after
    # the round, so that both sides meet the same machine
    PGB_TPS=$(awk -v a="${PEER_TPS[before]}" -v b="${PEER_TPS[after]}" 'BEGIN { printf "%.1f", (a + b) / 2 }')

    echo "settings:"
    echo "  media: 1 s 440 Hz sine, mono 16 kHz MP3 32 kbit/s, $(stat -c %s "$MEDIA") bytes, uploaded as audio/mpeg"
    echo "  providers: REELD_TRANSCRIBER=openai REELD_LLM=openai REELD_EMBEDDER=openai OPENAI_API_KEY=sk-bench"
    echo "    OPENAI_BASE_URL=http://127.0.0.1:\$FAKE_PORT/v1: python3 tests/fakes/fake_openai.py --port 0 --latency-ms $BENCH_PIPELINE_LATENCY_MS"
    echo "    (every answer, transcription, chat and embeddings, waits $BENCH_PIPELINE_LATENCY_MS ms before its first byte)"
    echo "  reeld: REELD_STAGE_CONCURRENCY=$BENCH_PIPELINE_CONCURRENCY (each of the 4 stages), REELD_DB_POOL=$BENCH_PIPELINE_POOL," \
        "claim batch 16, REELD_LOG=warn, other settings default"
    echo "  a job holds a slot of its stage from its claim to its stored result (\"mean stage time\" below: the"
    echo "  provider's $BENCH_PIPELINE_LATENCY_MS ms plus the database work and the waits for the CPU), so a stage does at most"
    echo "  $BENCH_PIPELINE_CONCURRENCY / that time jobs/s (Little's law); BENCH_PIPELINE_CONCURRENCY sets the slots."
    echo "  cmd: reeld serve with REELD_WORKERS=off; python3 bench/pipeline_upload.py --port \$API_PORT --token \$TOKEN" \
        "--file tone.mp3 --count N --clients $BENCH_PIPELINE_UPLOADERS --type audio/mpeg; stop it"
    echo "  cmd: REELD_STAGE_CONCURRENCY=$BENCH_PIPELINE_CONCURRENCY REELD_DB_POOL=$BENCH_PIPELINE_POOL build/reeld serve" \
        "(same database and data dir); psql every 0.5 s until all N are completed"
    echo "  cmd: $PGB_CMD"
    echo "       database pgb: schema by \`reeld migrate\`, 1,000 recordings with one queued transcription job each"
    echo "       (bench/queue_claim.sql's seed); -c = reeld's REELD_DB_POOL; after a 2 s warm-up (-T 2), run right"
    echo "       before the measured reeld is spawned (then pgb is vacuumed) and right after it finished"
    echo
    echo "peer: pgbench running the queue's claim-and-complete SQL (one transaction = one job)"
    printf '  before the round:      %s\n' "${PEER_LINE[before]}"
    printf '                         postgres CPU %s\n' "${PEER_CPU[before]}"
    printf '  after the round:       %s\n' "${PEER_LINE[after]}"
    printf '                         postgres CPU %s\n' "${PEER_CPU[after]}"
    printf '  pgbench jobs/s:        %s (the mean of the two)\n' "$PGB_TPS"
    echo
    bench_pipeline_report real "reeld: ${R_N[real]} recordings through the 4 stages"
    echo
    if [ "$BENCH_PIPELINE_PGSS" = 1 ]; then
        local db=reeld
        echo "profile (BENCH_PIPELINE_PGSS=1): pg_stat_statements of database $db (uploads included)"
        echo "  calls | total ms | ms per call | rows | statement"
        bench_psql reeld "SELECT calls, round(total_exec_time::numeric, 1), round((total_exec_time / calls)::numeric, 3),
            rows, left(regexp_replace(query, '\s+', ' ', 'g'), 100) FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db') ORDER BY total_exec_time DESC LIMIT 25" |
            sed 's/^/  /'
        echo
    fi
    echo "notes:"
    echo "  the clock runs from the workers' reeld's first claim to the last completed_at (once every upload and"
    echo "  its duration probe were in: an API-only reeld took them and was stopped); its start-up is left out as"
    echo "  pgbench leaves out its connections; \"from the spawn\" gives the rates with the start-up in."
    echo "  CPU in clock ticks of $(getconf CLK_TCK) Hz; children = the workers' reeld cutime+cstime (the processes it"
    echo "  spawned and reaped: none for audio); postgres = the whole private cluster."
    echo "  one ffmpeg start here: $(/usr/bin/env time -f '%e s wall, %U s user + %S s system' ffmpeg -nostdin -version 2>&1 >/dev/null | tail -1)" \
        "(ffmpeg -version, $(ldd "$(command -v ffmpeg)" | wc -l) shared libraries)"
    echo "  cluster: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync=off, other settings default."
    echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time of this run: $(($(date +%s) - BENCH_T0)) s"
    local f
    for f in real-api real-workers; do
        if [ -s "$BENCH_TMP/reeld-$f.err" ]; then
            echo "  reeld ($f) stderr (level warn and above): $(wc -l <"$BENCH_TMP/reeld-$f.err") lines, last:"
            tail -2 "$BENCH_TMP/reeld-$f.err" | cut -c1-240 | sed 's/^/    /'
        fi
    done
    [ "${R_DONE[real]}" = "${R_N[real]}" ] || exit 1
}
