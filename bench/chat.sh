# shellcheck shell=bash
# `bench/run chat`: 1,000 concurrent streamed answers of the assistant
# (POST /api/chat/query, Accept: text/event-stream, REELD_LLM=openai)
# relayed by one reeld from the fake OpenAI-compatible provider
# (tests/fakes/fake_openai.py), each answer 50 tokens sent 20 ms apart.
#
# Measured:
#   completion  every stream ends with `done` after exactly 50 tokens;
#   latency     per token, the time bench/chat_client read it minus the
#               time the fake sent it: the fake runs with `stamp: true`,
#               so every token's text is its own send time (' %.6f' epoch
#               seconds, one clock on this machine). The peer, measured in
#               the same run against the same fake, is the same client
#               reading 1,000 streams of the fake directly (POST
#               /v1/chat/completions, stream: true); reeld's added latency
#               is the difference of the two (p50, p99);
#   CPU         reeld's utime+stime (/proc/PID/stat) over the relayed
#               phase, per token relayed. It includes, per question, the
#               retrieval (the question's embedding from the fake, the
#               vector search), the upstream request and the stored
#               exchange (one INSERT), spread over its 50 tokens.
#
# Setup: a private PostgreSQL, the fake (transcription, embeddings and
# chat), reeld with every provider `openai` against the fake and
# REELD_CHAT_RATE high enough for the load; one organization with one
# recording (a 1 s sine MP3 uploaded with tus, whose transcript is the
# fake's fixed text) taken through the whole pipeline to `completed`, so
# that retrieval finds a source for the question. Then the fake's chat
# defaults become the answer above (`tokens`, `token_delay_ms`, `stamp`).
#
# bench/chat_client.c (built here with the Makefile's warning flags) holds
# the streams on one epoll loop. A failed or missing stream fails the run.
# BENCH_CHAT_STREAMS (default 1,000) sets the streams of both phases.
# reeld's run-queue wait over the relayed phase (/proc/PID/schedstat) is
# printed too: on a shared machine it says how much of the latency is
# waiting for a CPU rather than reeld's own work.
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

BENCH_CHAT_STREAMS=${BENCH_CHAT_STREAMS:-1000}
BENCH_CHAT_TOKENS=50
BENCH_CHAT_DELAY_MS=20
BENCH_CHAT_TRANSCRIPT="Welcome to the release walkthrough. Today we deploy the billing service to production after the review, and the support team watches the error dashboard."
BENCH_CHAT_QUERY="when do we deploy the billing service?"

# bench_chat_build: $BENCH_TMP/chat_client, or die. Sets CHAT_CC.
bench_chat_build() {
    local -a cmd
    cmd=(cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
        -Wmissing-prototypes -Wformat=2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong
        -o "$BENCH_TMP/chat_client" bench/chat_client.c)
    CHAT_CC="${cmd[*]}"
    CHAT_CC=${CHAT_CC//$BENCH_TMP/\$BENCH_TMP}
    bench_log "building bench/chat_client.c"
    "${cmd[@]}" >"$BENCH_TMP/chat-cc.log" 2>&1 || {
        cat "$BENCH_TMP/chat-cc.log" >&2
        bench_die "cannot build bench/chat_client.c"
    }
}

# bench_chat_defaults JSON: POST /_control/defaults to the fake.
bench_chat_defaults() {
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$FAKE_PORT/_control/defaults" \
        -H 'Content-Type: application/json' -d "$1" || bench_die "cannot set the fake's defaults"
}

# bench_chat_field PHASE KEY: KEY=... of chat_client's result line of PHASE.
bench_chat_field() {
    awk -v k="$2" '$1 == "result" { for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) {
        print substr($i, length(k) + 2); exit } }' "$BENCH_TMP/chat-$1.txt"
}

# bench_chat_run PHASE ARGS...: chat_client into $BENCH_TMP/chat-PHASE.txt;
# its failure is recorded (CHAT_FAILED), not fatal, so both phases print.
bench_chat_run() {
    local phase=$1
    shift
    timeout 300 "$BENCH_TMP/chat_client" "$@" >"$BENCH_TMP/chat-$phase.txt" 2>"$BENCH_TMP/chat-$phase.err" ||
        CHAT_FAILED="$CHAT_FAILED $phase"
    [ -n "$(bench_chat_field "$phase" streams)" ] || {
        cat "$BENCH_TMP/chat-$phase.txt" "$BENCH_TMP/chat-$phase.err" >&2
        bench_die "chat_client ($phase) printed no result"
    }
}

bench_main() {
    echo "== bench/run chat =="
    bench_machine
    echo

    local need=$((2 * BENCH_CHAT_STREAMS + 256))
    ulimit -n "$need" 2>/dev/null ||
        bench_die "cannot raise the open-file limit to $need (hard limit $(ulimit -Hn))"
    export REELD_MAX_CONNS=$need
    command -v ffmpeg >/dev/null || bench_die "ffmpeg is not installed"

    bench_chat_build
    bench_pg_start
    bench_fake_start
    bench_chat_defaults "$(jq -cn --arg t "$BENCH_CHAT_TRANSCRIPT" '{transcript: $t}')"

    export REELD_TRANSCRIBER=openai REELD_LLM=openai REELD_EMBEDDER=openai
    export OPENAI_BASE_URL=http://127.0.0.1:$FAKE_PORT/v1 OPENAI_API_KEY=sk-bench
    export REELD_CHAT_RATE=100000/1s REELD_JOB_BACKOFF_MS=200
    bench_reeld_start

    # the organization (mirrored on the token's first request) and its recording
    local base=http://127.0.0.1:$REELD_PORT token media len meta st
    token=$(bench_reeld_token --sub chat-bench --org org_chat_bench --role member) ||
        bench_die "reeld token failed"
    curl -fsS -o /dev/null "$base/api/organizations/current" -H "Authorization: Bearer $token" ||
        bench_die "GET /api/organizations/current failed"
    media=$BENCH_TMP/walkthrough.mp3
    ffmpeg -nostdin -loglevel error -f lavfi -i sine=frequency=440:duration=1 -ac 1 \
        -c:a libmp3lame -b:a 32k "$media" || bench_die "ffmpeg could not make the media file"
    len=$(stat -c %s "$media")
    meta="filename $(printf walkthrough.mp3 | base64 -w0),filetype $(printf audio/mpeg | base64 -w0),title $(printf 'Release walkthrough' | base64 -w0)"
    st=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$base/api/uploads/" \
        -H "Authorization: Bearer $token" -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $len" \
        -H "Upload-Metadata: $meta" -H 'Content-Type: application/offset+octet-stream' \
        --data-binary "@$media") || bench_die "the upload failed"
    [ "$st" = 201 ] || bench_die "the upload answered $st"
    bench_log "waiting for the recording to complete the pipeline"
    for _ in $(seq 600); do
        st=$(bench_psql reeld "SELECT status FROM recordings WHERE title = 'Release walkthrough'")
        if [ "$st" = completed ] || [ "$st" = error ]; then break; fi
        sleep 0.2
    done
    [ "$st" = completed ] || bench_die "the recording ended '$st', not completed"

    # the answers: 50 stamped tokens, 20 ms apart
    bench_chat_defaults "$(jq -cn --argjson n "$BENCH_CHAT_TOKENS" --argjson d "$BENCH_CHAT_DELAY_MS" \
        '{tokens: $n, token_delay_ms: $d, stamp: true}')"
    local check
    check=$(curl -fsS -N -m 30 -X POST "$base/api/chat/query" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' -H 'Accept: text/event-stream' \
        -d "$(jq -cn --arg q "$BENCH_CHAT_QUERY" '{query: $q}')") || bench_die "a first question failed"
    if ! grep -q '"recording_id"' <<<"$check" || ! grep -q '^event: done' <<<"$check"; then
        bench_die "a first question found no source or did not end with done: ${check:0:300}"
    fi
    local answered0
    answered0=$(bench_psql reeld "SELECT count(*) FROM chat_messages WHERE outcome = 'answered'")

    CHAT_FAILED=""
    local -a common=(--streams "$BENCH_CHAT_STREAMS" --tokens "$BENCH_CHAT_TOKENS" --query "$BENCH_CHAT_QUERY")
    bench_log "peer: $BENCH_CHAT_STREAMS streams read from the fake directly"
    bench_chat_run direct --mode fake --port "$FAKE_PORT" "${common[@]}"
    sleep 1
    bench_log "$BENCH_CHAT_STREAMS streams relayed by reeld"
    local c0 c1 f0 f1 w0 w1 l0
    c0=$(bench_cpu_ticks "$REELD_PID")
    f0=$(bench_cpu_ticks "$FAKE_PID")
    w0=$(awk '{print $2}' "/proc/$REELD_PID/schedstat")
    l0=$(cut -d' ' -f1 /proc/loadavg)
    CHAT_TOKEN=$token bench_chat_run reeld --mode reeld --port "$REELD_PORT" "${common[@]}"
    c1=$(bench_cpu_ticks "$REELD_PID")
    f1=$(bench_cpu_ticks "$FAKE_PID")
    w1=$(awk '{print $2}' "/proc/$REELD_PID/schedstat")
    bench_reeld_alive || exit 1
    local answered
    answered=$(($(bench_psql reeld "SELECT count(*) FROM chat_messages WHERE outcome = 'answered'") - answered0))

    local ph f
    declare -A R
    for ph in direct reeld; do
        for f in streams completed failed timed_out tokens expected_tokens bad_stamps lat_p50_ms \
            lat_p90_ms lat_p99_ms lat_max_ms lat_mean_ms ttft_p50_ms ttft_p99_ms secs client_cpu_s; do
            R[$ph.$f]=$(bench_chat_field "$ph" "$f")
        done
    done
    local hz relayed
    hz=$(getconf CLK_TCK)
    relayed=${R[reeld.tokens]}

    echo "cmd: $CHAT_CC"
    local shown="--streams $BENCH_CHAT_STREAMS --tokens $BENCH_CHAT_TOKENS --query '$BENCH_CHAT_QUERY'"
    echo "cmd: \$BENCH_TMP/chat_client --mode fake --port \$FAKE_PORT $shown"
    echo "cmd: CHAT_TOKEN=\$(build/reeld token --sub chat-bench --org org_chat_bench --role member) \\"
    echo "       \$BENCH_TMP/chat_client --mode reeld --port \$REELD_PORT $shown"
    echo "fake: python3 tests/fakes/fake_openai.py, defaults {tokens: $BENCH_CHAT_TOKENS, token_delay_ms: $BENCH_CHAT_DELAY_MS, stamp: true}"
    echo "reeld: REELD_LLM=openai REELD_EMBEDDER=openai REELD_TRANSCRIBER=openai (all against the fake),"
    echo "       REELD_CHAT_RATE=$REELD_CHAT_RATE, REELD_MAX_CONNS=$REELD_MAX_CONNS, REELD_LOG=warn, other settings default"
    echo
    printf '%-34s %12s %12s\n' "" "fake direct" "via reeld"
    printf '%-34s %12s %12s\n' "streams complete" "${R[direct.completed]}/${R[direct.streams]}" "${R[reeld.completed]}/${R[reeld.streams]}"
    printf '%-34s %12s %12s\n' "tokens read" "${R[direct.tokens]}/${R[direct.expected_tokens]}" "${R[reeld.tokens]}/${R[reeld.expected_tokens]}"
    printf '%-34s %12s %12s\n' "per-token latency p50 (ms)" "${R[direct.lat_p50_ms]}" "${R[reeld.lat_p50_ms]}"
    printf '%-34s %12s %12s\n' "per-token latency p90 (ms)" "${R[direct.lat_p90_ms]}" "${R[reeld.lat_p90_ms]}"
    printf '%-34s %12s %12s\n' "per-token latency p99 (ms)" "${R[direct.lat_p99_ms]}" "${R[reeld.lat_p99_ms]}"
    printf '%-34s %12s %12s\n' "per-token latency max (ms)" "${R[direct.lat_max_ms]}" "${R[reeld.lat_max_ms]}"
    printf '%-34s %12s %12s\n' "first token after connect p50 (ms)" "${R[direct.ttft_p50_ms]}" "${R[reeld.ttft_p50_ms]}"
    printf '%-34s %12s %12s\n' "first token after connect p99 (ms)" "${R[direct.ttft_p99_ms]}" "${R[reeld.ttft_p99_ms]}"
    printf '%-34s %12s %12s\n' "wall time of the phase (s)" "${R[direct.secs]}" "${R[reeld.secs]}"
    printf '%-34s %12s %12s\n' "chat_client CPU (s)" "${R[direct.client_cpu_s]}" "${R[reeld.client_cpu_s]}"
    echo
    echo "reeld's added latency per token: p50 $(awk -v a="${R[reeld.lat_p50_ms]}" -v b="${R[direct.lat_p50_ms]}" 'BEGIN { printf "%.3f", a - b }') ms," \
        "p99 $(awk -v a="${R[reeld.lat_p99_ms]}" -v b="${R[direct.lat_p99_ms]}" 'BEGIN { printf "%.3f", a - b }') ms" \
        "(ratio p99 via reeld / direct: $(bench_ratio "${R[reeld.lat_p99_ms]}" "${R[direct.lat_p99_ms]}"))"
    echo "reeld CPU over the relayed phase: $(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }') s" \
        "= $(bench_cpu_us "$c0" "$c1" "$relayed") us per token relayed ($relayed tokens, ${R[reeld.completed]} questions);" \
        "the fake $(awk -v a="$f0" -v b="$f1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }') s"
    echo "reeld's time runnable but waiting for a CPU (/proc/PID/schedstat) over the relayed phase:" \
        "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }') s; load average before it: $l0"
    echo "exchanges stored as answered during the relayed phase: $answered"
    echo
    echo "notes:"
    echo "  a token's latency: chat_client's read time minus the fake's send stamp (CLOCK_REALTIME,"
    echo "  one machine). Direct, it is the fake's send() to the client's read; via reeld it adds reeld's"
    echo "  read from the fake, its parse, the SSE event and its write. Both phases load the fake alike"
    echo "  (1,000 streams, 50,000 tokens; the fake needs ~2 cores for that rate, see tests/fakes/README.md),"
    echo "  so a busy fake slows both phases' wall time alike; its sending late is not in the latency."
    echo "  first token after connect includes, via reeld, auth, the rate limit, the question's embedding"
    echo "  (a request to the fake), the vector search and the upstream request."
    echo "  reeld is one libevent loop on one core; the fake is one Python process; chat_client one epoll"
    echo "  loop; all share the machine's $(nproc) CPUs."
    echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time of this run: $(($(date +%s) - BENCH_T0)) s"
    for ph in direct reeld; do
        if grep -q . "$BENCH_TMP/chat-$ph.err"; then
            echo "  chat_client ($ph) stderr:"
            sed 's/^/    /' "$BENCH_TMP/chat-$ph.err" | tail -5
        fi
    done
    if grep -q . "$BENCH_TMP/reeld.err"; then
        echo "  reeld stderr (level warn and above), last lines:"
        tail -5 "$BENCH_TMP/reeld.err" | cut -c1-300 | sed 's/^/    /'
    fi
    if [ -n "$CHAT_FAILED" ] || [ "$answered" != "${R[reeld.streams]}" ]; then
        echo "FAILURE: streams failed in:${CHAT_FAILED:- none}; answered exchanges $answered of ${R[reeld.streams]}"
        exit 1
    fi
    echo "all ${R[reeld.streams]} relayed streams completed with $BENCH_CHAT_TOKENS tokens and done; so did all ${R[direct.streams]} direct ones"
}
