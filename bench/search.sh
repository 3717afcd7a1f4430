# shellcheck shell=bash
# `bench/run search`: the vector index's exact top-k search against the
# machine's memory-read bandwidth, measured in the same run.
#   index     src/search/vindex.c holding one organization of 100,000 random
#             vectors of 1536 float32 (585.9 MiB), in recordings of 50;
#   queries   200 random queries, top-10, with each kernel: the built-in
#             one (hand-written AVX2/FMA), OpenBLAS cblas_sgemv (one
#             thread), and the built-in one scanned in slices of 4096
#             vectors through the resumable cursor, as the event loop runs
#             it;
#   peer      a single-thread AVX2 sum over a 1 GiB buffer, read once
#             before every query of every kernel (interleaved, so load
#             from other processes hits both alike);
#   recall    recall@10 of the first 25 queries against a double-precision
#             brute force over the raw vectors.
# bench/search_bench.c is built here with the Makefile's flags and linked
# with OpenBLAS (libopenblas-dev); reeld itself does not link it (see the
# measurement in src/search/vindex.c). No database, no server.
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

BENCH_SEARCH_ARGS=(--chunks 100000 --dim 1536 --per-rec 50 --queries 200 --check 25 --k 10
    --slice 4096 --memread-mib 1024)

# bench_search_build: $BENCH_TMP/search_bench, or die with the compiler's
# output. Sets SEARCH_CC (the command line).
bench_search_build() {
    pkg-config --exists openblas ||
        bench_die "OpenBLAS is not installed (Debian: apt-get install libopenblas-dev)"
    local -a cmd
    # shellcheck disable=SC2207
    cmd=(cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
        -Wmissing-prototypes -Wformat=2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong -Iinclude
        $(pkg-config --cflags openblas) -o "$BENCH_TMP/search_bench" bench/search_bench.c
        src/search/vindex.c $(pkg-config --libs openblas) -lm)
    SEARCH_CC="${cmd[*]}"
    SEARCH_CC=${SEARCH_CC//$BENCH_TMP/\$BENCH_TMP}
    bench_log "building bench/search_bench.c"
    "${cmd[@]}" >"$BENCH_TMP/search-cc.log" 2>&1 || {
        cat "$BENCH_TMP/search-cc.log" >&2
        bench_die "cannot build bench/search_bench.c"
    }
}

bench_main() {
    echo "== bench/run search =="
    bench_machine
    echo "openblas: Debian $(dpkg-query -W -f='${Package} ${Version}' libopenblas0-pthread 2>/dev/null ||
        echo '(version unknown)')"
    echo

    bench_search_build

    local s0 s1 c0 c1 t0 t1 hz
    hz=$(getconf CLK_TCK)
    s0=$(bench_sys_ticks)
    bench_child_secs
    c0=$BENCH_CHILD_SECS
    t0=$(date +%s.%N)
    bench_log "search_bench ${BENCH_SEARCH_ARGS[*]} (about a minute)"
    OPENBLAS_NUM_THREADS=1 timeout 1200 "$BENCH_TMP/search_bench" "${BENCH_SEARCH_ARGS[@]}" \
        >"$BENCH_TMP/search.txt" 2>&1 || {
        cat "$BENCH_TMP/search.txt" >&2
        bench_die "search_bench failed"
    }
    t1=$(date +%s.%N)
    bench_child_secs
    c1=$BENCH_CHILD_SECS
    s1=$(bench_sys_ticks)
    cat "$BENCH_TMP/search.txt"

    echo
    # CPU that other processes used meanwhile: all busy ticks minus ours
    awk -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
        -v n="$(nproc)" 'BEGIN {
            split(s0, a, " "); split(s1, b, " ")
            wall = t1 - t0; busy = (b[1] - a[1]) / hz; own = c1 - c0
            printf "run: %.1f s wall, %.1f s CPU of search_bench; other processes used %.2f of the %d cores meanwhile\n",
                wall, own, (busy - own) / wall, n
        }'
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "commands:"
    echo "  $SEARCH_CC"
    echo "  OPENBLAS_NUM_THREADS=1 \$BENCH_TMP/search_bench ${BENCH_SEARCH_ARGS[*]}"
}
