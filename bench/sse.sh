# shellcheck shell=bash
# `bench/run sse`: 10,000 idle GET /api/events streams held by one reeld:
#   memory    reeld's VmRSS with 1 stream open, then with all of them open
#             (every one has its 200 headers and is live): the growth per
#             stream, against the 2 KiB target;
#   fan-out   events rows of the streams' organization inserted one by one
#             (--events of them, --interval-ms apart: longer than one
#             event's fan-out to 10,000 streams takes on a core of its own,
#             though not on a busy machine; each a
#             recording.status row, whose AFTER INSERT trigger NOTIFYs
#             reeld_events): the time from the INSERT's commit coming back
#             to the inserting client to each stream reading the event,
#             over every (stream, event) delivery; the peer measured in the
#             same run is the same events with 1 stream open (fan-out 1).
#             Then the same events --fast-interval-ms apart (a sustained
#             rate of status changes, near what one core can fan out).
# bench/sse_client.c (built here with the Makefile's warning flags, linked
# with libpq) holds the streams on one epoll loop and sends the INSERTs
# itself through libpq on the same loop, so it timestamps the commit and
# every delivery on one clock. Every stream must receive every event; a
# lost stream or a missing delivery fails the run.
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

BENCH_SSE_STREAMS=${BENCH_SSE_STREAMS:-10000}
BENCH_SSE_ARGS=(--streams "$BENCH_SSE_STREAMS" --events 20 --interval-ms 500 --fast-interval-ms 200
    --window 512)
BENCH_SSE_TARGET_KIB=2

# bench_sse_build: $BENCH_TMP/sse_client, or die with the compiler's output.
# Sets SSE_CC (the command line).
bench_sse_build() {
    command -v pg_config >/dev/null || bench_die "pg_config is not installed (Debian: libpq-dev)"
    local -a cmd
    cmd=(cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
        -Wmissing-prototypes -Wformat=2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong
        "-I$(pg_config --includedir)" -o "$BENCH_TMP/sse_client" bench/sse_client.c -lpq)
    SSE_CC="${cmd[*]}"
    SSE_CC=${SSE_CC//$BENCH_TMP/\$BENCH_TMP}
    bench_log "building bench/sse_client.c"
    "${cmd[@]}" >"$BENCH_TMP/sse-cc.log" 2>&1 || {
        cat "$BENCH_TMP/sse-cc.log" >&2
        bench_die "cannot build bench/sse_client.c"
    }
}

# bench_sse_field LINE_PREFIX KEY: the value of KEY=... on the client's
# output line starting with LINE_PREFIX.
bench_sse_field() {
    awk -v p="$1" -v k="$2" 'index($0, p) == 1 {
        for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit }
    }' "$BENCH_TMP/sse.txt"
}

bench_main() {
    echo "== bench/run sse =="
    bench_machine
    echo

    local need=$((BENCH_SSE_STREAMS + 256))
    ulimit -n "$need" 2>/dev/null ||
        bench_die "cannot raise the open-file limit to $need (hard limit $(ulimit -Hn))"
    export REELD_MAX_CONNS=$need

    bench_sse_build
    bench_pg_start
    bench_reeld_start

    # the organization: its claim is mirrored into organizations on the
    # token's first authenticated request
    local base=http://127.0.0.1:$REELD_PORT org
    SSE_TOKEN=$(bench_reeld_token --sub sse-bench --org org_sse_bench --role member) ||
        bench_die "reeld token failed"
    curl -fsS -o /dev/null "$base/api/organizations/current" -H "Authorization: Bearer $SSE_TOKEN" ||
        bench_die "GET /api/organizations/current failed"
    org=$(bench_psql reeld "SELECT id FROM organizations WHERE external_id = 'org_sse_bench'")
    [ -n "$org" ] || bench_die "organization org_sse_bench was not created"

    local rss_idle c0 c1 t0 t1
    rss_idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$REELD_PID/status")
    bench_log "sse_client ${BENCH_SSE_ARGS[*]} (about a minute)"
    c0=$(bench_cpu_ticks "$REELD_PID")
    t0=$(date +%s.%N)
    SSE_TOKEN=$SSE_TOKEN SSE_PGURL=$PGURL timeout 300 "$BENCH_TMP/sse_client" --port "$REELD_PORT" \
        --pid "$REELD_PID" --org "$org" "${BENCH_SSE_ARGS[@]}" >"$BENCH_TMP/sse.txt" 2>"$BENCH_TMP/sse.err" || {
        cat "$BENCH_TMP/sse.txt" "$BENCH_TMP/sse.err" >&2
        bench_reeld_alive || true
        bench_die "sse_client failed"
    }
    t1=$(date +%s.%N)
    c1=$(bench_cpu_ticks "$REELD_PID")
    sleep 1
    bench_reeld_alive || exit 1
    local rss_closed healthz
    rss_closed=$(awk '/^VmRSS:/ {print $2}' "/proc/$REELD_PID/status")
    healthz=$(curl -fsS -m 5 "$base/healthz") || bench_die "reeld does not answer /healthz after the run"

    local before after after_ev streams new opensecs syncsecs
    before=$(bench_sse_field 'rss when=before' vmrss_kb)
    after=$(bench_sse_field 'rss when=after ' vmrss_kb)
    after_ev=$(bench_sse_field 'rss when=after_events' vmrss_kb)
    streams=$(bench_sse_field 'rss when=after ' streams)
    new=$(awk '/^open / && $2 != "streams=1" { for (i = 1; i <= NF; i++) if ($i ~ /^new=/) print substr($i, 5) }' "$BENCH_TMP/sse.txt")
    opensecs=$(awk '/^open / && $2 != "streams=1" { for (i = 1; i <= NF; i++) if ($i ~ /^secs=/) print substr($i, 6) }' "$BENCH_TMP/sse.txt")
    syncsecs=$(awk '/^sync / && $2 != "streams=1" { for (i = 1; i <= NF; i++) if ($i ~ /^secs=/) print substr($i, 6) }' "$BENCH_TMP/sse.txt")
    local anon_b anon_a
    anon_b=$(bench_sse_field 'rss when=before' rssanon_kb)
    anon_a=$(bench_sse_field 'rss when=after ' rssanon_kb)
    local per per_anon
    per=$(awk -v a="$before" -v b="$after" -v n="$new" 'BEGIN { printf "%.2f", (b - a) / n }')
    per_anon=$(awk -v a="$anon_b" -v b="$anon_a" -v n="$new" 'BEGIN { printf "%.2f", (b - a) / n }')

    local f ph ok=1
    declare -A L
    for ph in one many many_fast; do
        for f in streams deliveries expected missing_streams dead dups unexpected commit_p50_ms \
            commit_p99_ms commit_max_ms commit_min_ms send_p50_ms send_p99_ms send_max_ms \
            insert_rtt_p50_ms last_p50_ms last_max_ms reeld_cpu_s client_cpu_s busy_cores secs; do
            L[$ph.$f]=$(bench_sse_field "latency phase=$ph " "$f")
        done
        if [ -z "${L[$ph.deliveries]}" ] || [ "${L[$ph.deliveries]}" != "${L[$ph.expected]}" ] ||
            [ "${L[$ph.dead]}" != 0 ] ||
            [ "${L[$ph.dups]}" != 0 ]; then
            ok=""
        fi
    done

    echo "cmd: $SSE_CC"
    echo "cmd: SSE_TOKEN=\$(build/reeld token --sub sse-bench --org org_sse_bench --role member) SSE_PGURL=\$PGURL \\"
    echo "       \$BENCH_TMP/sse_client --port \$REELD_PORT --pid \$REELD_PID --org \$ORG_UUID ${BENCH_SSE_ARGS[*]}"
    echo "     each stream: GET /api/events, Authorization: Bearer \$TOKEN, Accept: text/event-stream (no Last-Event-ID)"
    echo "     each event:  INSERT INTO events (org_id, recording_id, type, data) VALUES (\$ORG_UUID, gen_random_uuid(),"
    echo "                  'recording.status', '{\"status\": \"ready\", \"bench_seq\": K}') (autocommit, libpq, async)"
    echo "reeld: REELD_MAX_CONNS=$REELD_MAX_CONNS, ulimit -n $(ulimit -n), REELD_LOG=warn, other settings default"
    echo
    echo "(a) memory: streams held by one reeld"
    printf '  streams held:          %s (opened %s after the first in %s s; all live after %s s more)\n' \
        "$streams" "$new" "$opensecs" "$syncsecs"
    printf '  reeld VmRSS:           %s KiB idle, %s KiB with 1 stream, %s KiB with %s streams, %s KiB after the events, %s KiB once all closed\n' \
        "$rss_idle" "$before" "$after" "$streams" "$after_ev" "$rss_closed"
    printf '  per stream:            %s KiB VmRSS (%s KiB RssAnon)   target %s KiB   ratio to target: %s\n' \
        "$per" "$per_anon" "$BENCH_SSE_TARGET_KIB" "$(bench_ratio "$per" "$BENCH_SSE_TARGET_KIB")"
    echo
    local lbl
    echo "(b) fan-out latency: commit of the INSERT (its result back at the client) -> event read by a stream"
    echo "    20 events each; every (stream, event) delivery counted"
    for ph in many one many_fast; do
        case $ph in
        many_fast) lbl="$streams streams, events 200 ms apart" ;;
        *) lbl="${L[$ph.streams]} stream(s), events 500 ms apart" ;;
        esac
        printf '  %-38s p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms  (min %.2f)\n' "$lbl" \
            "${L[$ph.commit_p50_ms]}" "${L[$ph.commit_p99_ms]}" "${L[$ph.commit_max_ms]}" "${L[$ph.commit_min_ms]}"
        printf '  %-38s deliveries %s/%s, streams missing any %s, lost streams %s, duplicates %s\n' "" \
            "${L[$ph.deliveries]}" "${L[$ph.expected]}" "${L[$ph.missing_streams]}" "${L[$ph.dead]}" "${L[$ph.dups]}"
        printf '  %-38s per event, time to its last stream: median %s ms, max %s ms; reeld CPU %s s (%s us per delivery)\n' "" \
            "${L[$ph.last_p50_ms]}" "${L[$ph.last_max_ms]}" "${L[$ph.reeld_cpu_s]}" \
            "$(awk -v c="${L[$ph.reeld_cpu_s]}" -v n="${L[$ph.deliveries]}" 'BEGIN { if (n >= 1000) printf "%.1f", c * 1e6 / n; else print "n/a" }')"
        printf '  %-38s CPU over the phase (%s s): reeld %s s, sse_client %s s; all CPUs %s of %s cores busy (postgres and other processes ~%s)\n' "" \
            "${L[$ph.secs]}" "${L[$ph.reeld_cpu_s]}" "${L[$ph.client_cpu_s]}" "${L[$ph.busy_cores]}" "$(nproc)" \
            "$(awk -v b="${L[$ph.busy_cores]}" -v r="${L[$ph.reeld_cpu_s]}" -v c="${L[$ph.client_cpu_s]}" -v s="${L[$ph.secs]}" \
                'BEGIN { o = b - (r + c) / s; if (o < 0) o = 0; printf "%.2f", o }')"
        printf '  %-38s from just before the INSERT was sent: p50 %s / p99 %s / max %s ms; INSERT round trip p50 %s ms\n' "" \
            "${L[$ph.send_p50_ms]}" "${L[$ph.send_p99_ms]}" "${L[$ph.send_max_ms]}" "${L[$ph.insert_rtt_p50_ms]}"
    done
    echo "  ratio p99 $streams streams / 1 stream: $(bench_ratio "${L[many.commit_p99_ms]}" "${L[one.commit_p99_ms]}")" \
        "(p50: $(bench_ratio "${L[many.commit_p50_ms]}" "${L[one.commit_p50_ms]}"))"
    echo "  per event, time to its last stream (ms, in order):"
    for ph in one many many_fast; do
        printf '    %-10s %s\n' "$ph" "$(bench_sse_field "fanout phase=$ph " last_ms)"
    done
    echo
    if [ -n "$ok" ]; then
        echo "deliveries: every stream received every event (${L[many.deliveries]} + ${L[many_fast.deliveries]} + ${L[one.deliveries]})"
    else
        echo "DELIVERY FAILURE: missing, duplicate deliveries or lost streams (see the lines above)"
    fi
    echo "reeld /healthz after the run: $healthz"
    echo
    echo "notes:"
    echo "  reeld is one libevent loop on one core; sse_client is one epoll loop on another; both,"
    echo "  and PostgreSQL, share the machine's $(nproc) CPUs. A delivery's time includes the client"
    echo "  reading the sockets one after another, so p99/max with $streams streams include up to the"
    echo "  client's own time to read them all."
    echo "  commit time: when the INSERT's result reached sse_client. PostgreSQL signals the listening"
    echo "  reeld at commit, before it answers the inserting client, so with a fast fan-out a delivery"
    echo "  can be read first (a negative min); the figures from just before sending bound it from above."
    echo "  reeld writes a ': heartbeat' comment to every stream every 15 s (REELD_SSE_HEARTBEAT_S"
    echo "  default); a tick that falls inside a phase delays the event behind it."
    echo "  loopback: each write's TCP receive path runs in the writer's context, so reeld's CPU per"
    echo "  delivery includes the client side's kernel receive work."
    echo "  VmRSS from /proc/PID/status of reeld, read by sse_client; per stream = (with all - with 1) / $new."
    echo "  reeld CPU over the whole client run: $(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }') s in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s wall."
    echo "  cluster: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), fsync=off, other settings default."
    echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time of this run: $(($(date +%s) - BENCH_T0)) s"
    if grep -q . "$BENCH_TMP/sse.err"; then
        echo "  sse_client stderr:"
        sed 's/^/    /' "$BENCH_TMP/sse.err" | tail -10
    fi
    if grep -q . "$BENCH_TMP/reeld.err"; then
        echo "  reeld stderr (level warn and above), last lines:"
        tail -5 "$BENCH_TMP/reeld.err" | sed 's/^/    /'
    fi
    [ -n "$ok" ] || exit 1
}
