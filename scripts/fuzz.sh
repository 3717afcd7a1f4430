#!/usr/bin/env bash
# Build and run every libFuzzer target tests/fuzz/fuzz_*.c.
#
#   scripts/fuzz.sh [SECONDS]      (default 60 per target; `make fuzz`
#                                   passes FUZZ_SECONDS)
#
# Everything goes under build-fuzz/: objects (src/**/*.c except src/main.c
# and llhttp's C sources, built with ASan+UBSan and coverage) in an
# archive that each target links against, one binary
# per target, a working corpus per target (build-fuzz/corpus-<name>,
# seeded from tests/fuzz/corpus/<name>; the repository is never written),
# logs and crashing inputs (build-fuzz/artifacts/<name>/).
#
# Prints "PASS fuzz_<name>" or "FAIL fuzz_<name>: <reason>" per target,
# then "N passed, N failed"; exits 1 when a target failed to build or
# crashed (crash, leak, timeout, out of memory), else 0. A source file
# that does not compile is reported and left out; only the targets that
# need it fail (at link time).
#
# Environment: CC (default clang), JOBS (parallel compiles, default nproc),
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2" or "-max_len=16384").
set -u

cd "$(dirname "$0")/.." || exit 2

DURATION=${1:-60}
case $DURATION in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 2
    ;;
esac
[ "$DURATION" -gt 0 ] || DURATION=60

CC=${CC:-clang}
# make exports CC=cc by default; libFuzzer needs clang.
case $("$CC" --version 2>/dev/null | head -n1) in
*clang*) ;;
*) CC=clang ;;
esac
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
OUT=build-fuzz
LLHTTP=/usr/share/llhttp
LLHTTPI=/usr/share/include/llhttp

read -r -a PKGS <<<"libevent libevent_openssl libpq libcurl json-c"
if ! PKG_CFLAGS=$(pkg-config --cflags "${PKGS[@]}") ||
    ! PKG_LIBS=$(pkg-config --libs "${PKGS[@]}"); then
    echo "FAIL fuzz: pkg-config cannot find ${PKGS[*]} (run scripts/deps.sh)" >&2
    exit 2
fi
read -r -a PKG_CFLAGS <<<"$PKG_CFLAGS"
read -r -a PKG_LIBS <<<"$PKG_LIBS"

# The Makefile's language and warning flags, without -Werror (warnings
# are the normal build's business; this build looks for runtime faults)
# and without _FORTIFY_SOURCE (it hides overflows from ASan).
WARN=(-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2)
SAN=("-fsanitize=address,undefined" -fno-sanitize-recover=undefined)
OPTS=(-g -O1 -fno-omit-frame-pointer)
CFLAGS=(-std=c11 -D_GNU_SOURCE "${OPTS[@]}" "${WARN[@]}" "${SAN[@]}" -Iinclude "-I$LLHTTPI"
    "${PKG_CFLAGS[@]}")
LLFLAGS=(-std=c11 "${OPTS[@]}" "${SAN[@]}" -fsanitize=fuzzer-no-link "-I$LLHTTPI")
LIBS=("${PKG_LIBS[@]}" -lmbedtls -lmbedx509 -lmbedcrypto -lm)

mkdir -p "$OUT/obj" "$OUT/artifacts"

# Rebuild everything when the flags or the compiler change; otherwise an
# object is rebuilt when its source or any project header is newer.
STAMP="$OUT/flags"
printf '%s\n' "$("$CC" --version | head -n1)" "${CFLAGS[*]}" "${LLFLAGS[*]}" >"$STAMP.new"
if ! cmp -s "$STAMP.new" "$STAMP"; then
    rm -rf "$OUT/obj"
    mkdir -p "$OUT/obj"
fi
mv "$STAMP.new" "$STAMP"

newest_header=$(find include src -name '*.h' -printf '%T@ %p\n' 2>/dev/null | sort -n |
    tail -n1 | cut -d' ' -f2-)

# obj_of SRC -> object path under build-fuzz/obj
obj_of() {
    case $1 in
    "$LLHTTP"/*) echo "$OUT/obj/llhttp/$(basename "${1%.c}").o" ;;
    *) echo "$OUT/obj/${1%.c}.o" ;;
    esac
}

# compile_one SRC: the compiler's output goes to OBJ.log; OBJ.failed
# marks a failure.
compile_one() {
    local s=$1 o
    o=$(obj_of "$s")
    mkdir -p "$(dirname "$o")"
    rm -f "$o" "$o.failed"
    case $s in
    "$LLHTTP"/*) "$CC" "${LLFLAGS[@]}" -c -o "$o" "$s" 2>"$o.log" || : >"$o.failed" ;;
    *) "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link -c -o "$o" "$s" 2>"$o.log" ||
        : >"$o.failed" ;;
    esac
}

mapfile -t SRCS < <(find src -name '*.c' ! -path src/main.c | sort)
LLSRCS=("$LLHTTP/llhttp.c" "$LLHTTP/api.c" "$LLHTTP/http.c")
for s in "${SRCS[@]}" "${LLSRCS[@]}"; do
    o=$(obj_of "$s")
    if [ ! -f "$o" ] || [ "$s" -nt "$o" ] ||
        { [ -n "$newest_header" ] && [ "$newest_header" -nt "$o" ]; }; then
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
            wait -n
        done
        compile_one "$s" &
    fi
done
wait

# A source that does not compile (someone's file in progress) stays out
# of the archive: only a target that needs it fails, at link time.
skipped=""
LIBOBJS=()
for s in "${SRCS[@]}" "${LLSRCS[@]}"; do
    o=$(obj_of "$s")
    if [ -f "$o.failed" ] || [ ! -f "$o" ]; then
        echo "--- $s does not compile; left out of the fuzz build:" >&2
        head -n 20 "$o.log" >&2
        skipped="${skipped:+$skipped, }$s"
    else
        LIBOBJS+=("$o")
    fi
done

# Targets link against an archive, so each pulls in only the modules it
# reaches (a module that is half-written elsewhere in the tree, or needs
# a library the fuzz build does not link, stays out).
LIB="$OUT/libreeld-fuzz.a"
rm -f "$LIB"
build_err=""
ar rcs "$LIB" "${LIBOBJS[@]}" || build_err="cannot archive $LIB"

shopt -s nullglob
TARGETS=(tests/fuzz/fuzz_*.c)
if [ ${#TARGETS[@]} -eq 0 ]; then
    echo "no fuzz targets in tests/fuzz/"
    echo "0 passed, 0 failed"
    exit 0
fi

# reason_of LOG: the sanitizer's or libFuzzer's one-line verdict
reason_of() {
    local log=$1 line
    line=$(grep -m1 -E '^SUMMARY: ' "$log")
    [ -n "$line" ] || line=$(grep -m1 -E '==[0-9]+==ERROR: |^==[0-9]+== ERROR: libFuzzer' "$log")
    [ -n "$line" ] || line=$(grep -m1 -E 'ERROR|error:' "$log")
    [ -n "$line" ] || line="exit status $2"
    echo "$line" | sed -E 's/^==[0-9]+== ?//'
}

passed=0
failed=0
for t in "${TARGETS[@]}"; do
    base=$(basename "$t" .c)
    name=${base#fuzz_}
    bin="$OUT/$base"
    log="$OUT/$base.log"
    if [ -n "$build_err" ]; then
        echo "FAIL $base: $build_err"
        failed=$((failed + 1))
        continue
    fi
    if ! "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer -o "$bin" "$t" "$LIB" "${LIBS[@]}" \
        2>"$log"; then
        echo "FAIL $base: build failed (see $log)${skipped:+; not compiled: $skipped}"
        head -n 20 "$log" >&2
        failed=$((failed + 1))
        continue
    fi
    corpus="$OUT/corpus-$name"
    mkdir -p "$corpus"
    # Seeds join what earlier runs found (kept: it makes later runs deeper).
    if [ -d "tests/fuzz/corpus/$name" ]; then
        cp -n tests/fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null
    fi
    art="$OUT/artifacts/$name"
    rm -rf "$art"
    mkdir -p "$art"
    # -close_fd_mask=2: the targets' own stderr (server logs) is discarded;
    # libFuzzer and sanitizer reports still reach the log.
    read -r -a extra <<<"${FUZZ_ARGS:-}"
    "$bin" "$corpus" -max_total_time="$DURATION" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$art/" -close_fd_mask=2 -print_final_stats=1 \
        "${extra[@]}" >"$log" 2>&1
    rc=$?
    found=("$art"/*)
    if [ $rc -eq 0 ] && [ ${#found[@]} -eq 0 ]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        echo "PASS $base (${runs:-?} runs in ${DURATION}s)"
        passed=$((passed + 1))
    else
        what=$(reason_of "$log" $rc)
        input=${found[0]:-none saved}
        if [ -f "$input" ]; then
            # Replay with stderr kept: a harness states its own verdict on
            # a line starting with "fuzz_<name>: " (-close_fd_mask hid it).
            "$bin" "$input" >"$log.replay" 2>&1
            verdict=$(grep -m1 "^$base: " "$log.replay")
            [ -z "$verdict" ] || what="$what; ${verdict#"$base: "}"
        fi
        echo "FAIL $base: $what (input: $input, log: $log)"
        failed=$((failed + 1))
    fi
done

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
