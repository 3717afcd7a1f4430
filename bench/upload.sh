# shellcheck shell=bash
# `bench/run upload`: a 1 GiB tus upload into reeld against two peers that
# write the same number of bytes to the same disk in the same run:
#   dd    dd if=/dev/zero of=<disk> bs=8M count=128 conv=fdatasync
#         (sequential write plus one fdatasync: what the disk can take);
#   nginx a private nginx receiving the same 1 GiB body as a WebDAV PUT
#         (nginx streams the body into a temp file under
#         client_body_temp_path and renames it into place; it never
#         fsyncs, so its time is also shown with a final fsync of the file).
# reeld is driven by curl (C, one keep-alive connection, PATCHes of
# BENCH_UPLOAD_CHUNK_MB MiB read from the page cache) and, for reference,
# by tus-js-client with the same chunk size. The source is 1 GiB of random
# bytes on the same disk, in the page cache. reeld's VmRSS is sampled every
# 100 ms through each of its uploads: the figure is peak minus the value
# before the upload (target < 16 MiB). The stored object is compared with
# the source (cmp) after each reeld upload.
# Sourced by bench/run after bench/lib/common.sh; entry point bench_main.

BENCH_UPLOAD_BYTES=$((1024 * 1024 * 1024))
BENCH_UPLOAD_CHUNK_MB=${BENCH_UPLOAD_CHUNK_MB:-64}
BENCH_UPLOAD_ROUNDS=${BENCH_UPLOAD_ROUNDS:-3}
declare -A U_SECS U_RSS0 U_RSSPEAK U_RSS1 U_CPU U_SAMPLES

# bench_upload_secs T0 T1: seconds between two `date +%s.%N` readings.
bench_upload_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# bench_upload_mibs SECONDS: MiB/s of the 1 GiB payload.
bench_upload_mibs() {
    awk -v s="$1" -v n="$BENCH_UPLOAD_BYTES" 'BEGIN { if (s > 0) printf "%.1f", n / 1048576 / s; else print "n/a" }'
}

bench_upload_rss() { awk '/^VmRSS:/ {print $2}' "/proc/$REELD_PID/status"; }

# bench_upload_sampler_start / _stop: VmRSS (kB) of reeld every 100 ms into
# $BENCH_TMP/rss-NAME.txt; _stop sets U_RSSPEAK[NAME].
bench_upload_sampler_start() {
    local out=$BENCH_TMP/rss-$1.txt
    (
        while kill -0 "$REELD_PID" 2>/dev/null; do
            awk '/^VmRSS:/ {print $2}' "/proc/$REELD_PID/status" 2>/dev/null
            sleep 0.1
        done
    ) >"$out" &
    SAMPLER_PID=$!
    BENCH_PIDS+=("$SAMPLER_PID")
}
bench_upload_sampler_stop() {
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    U_RSSPEAK[$1]=$(sort -n "$BENCH_TMP/rss-$1.txt" | tail -1)
    U_SAMPLES[$1]=$(wc -l <"$BENCH_TMP/rss-$1.txt")
}

# bench_upload_quiesce: write back what earlier runs left dirty, so that
# it is not flushed during the next measurement, and drop their files.
bench_upload_quiesce() {
    rm -f "$BENCH_TMP/dd.bin" "$BENCH_TMP/nginx/www/u/"* 2>/dev/null || true
    sync
    sleep 1
}

bench_upload_dd() {
    local name=$1 out=$BENCH_TMP/dd-$1.txt t0 t1
    bench_upload_quiesce
    bench_log "dd run $name"
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$BENCH_TMP/dd.bin" bs=8M count=128 conv=fdatasync 2>"$out" ||
        { cat "$out" >&2; bench_die "dd failed"; }
    t1=$(date +%s.%N)
    U_SECS[$name]=$(bench_upload_secs "$t0" "$t1")
}

# bench_upload_org: an organization and its admin's token (UPLOAD_TOKEN).
bench_upload_org() {
    local t org
    t=$(bench_reeld_token --sub uploader) || bench_die "reeld token failed"
    org=$(curl -fsS -X POST "http://127.0.0.1:$REELD_PORT/api/organizations" \
        -H "Authorization: Bearer $t" -H 'Content-Type: application/json' -d '{"name":"Bench"}') ||
        bench_die "POST /api/organizations failed"
    UPLOAD_ORG=$(jq -r '.organization.id // empty' <<<"$org")
    [ -n "$UPLOAD_ORG" ] || bench_die "no organization id in: $org"
    UPLOAD_TOKEN=$(bench_reeld_token --sub uploader --org "$UPLOAD_ORG" --role admin) ||
        bench_die "reeld token failed"
}

# bench_upload_create TITLE: POST /api/uploads/; sets UPLOAD_URL (absolute).
bench_upload_create() {
    local hdr meta
    meta="filename $(printf 'bench.webm' | base64),filetype $(printf 'video/webm' | base64),title $(printf '%s' "$1" | base64)"
    hdr=$(curl -sS -D - -o /dev/null -X POST "http://127.0.0.1:$REELD_PORT/api/uploads/" \
        -H "Authorization: Bearer $UPLOAD_TOKEN" -H 'Tus-Resumable: 1.0.0' \
        -H "Upload-Length: $BENCH_UPLOAD_BYTES" -H "Upload-Metadata: $meta") ||
        bench_die "POST /api/uploads/ failed"
    UPLOAD_URL=$(tr -d '\r' <<<"$hdr" | awk 'tolower($1) == "location:" {print $2}')
    if ! grep -q '^HTTP/1.1 201' <<<"$hdr" || [ -z "$UPLOAD_URL" ]; then
        bench_die "POST /api/uploads/ did not answer 201 with a Location: $hdr"
    fi
    case "$UPLOAD_URL" in
    /*) UPLOAD_URL=http://127.0.0.1:$REELD_PORT$UPLOAD_URL ;;
    esac
}

# bench_upload_verify TITLE: the recording is uploaded and its stored
# object equals the source; then it is deleted (frees the disk).
bench_upload_verify() {
    local id key status
    id=$(bench_psql reeld "SELECT id FROM recordings WHERE title = '$1'")
    [ -n "$id" ] || bench_die "no recording titled $1"
    status=$(bench_psql reeld "SELECT status FROM recordings WHERE id = '$id'")
    key=$(bench_psql reeld "SELECT storage_key FROM recordings WHERE id = '$id'")
    case "$status" in
    uploading | error) bench_die "recording $id is $status after its last PATCH" ;;
    esac
    cmp -s "$BENCH_TMP/src.bin" "$REELD_DATA/storage/$key" ||
        bench_die "stored object $REELD_DATA/storage/$key differs from the source"
    curl -fsS -o /dev/null -X DELETE "http://127.0.0.1:$REELD_PORT/api/recordings/$id" \
        -H "Authorization: Bearer $UPLOAD_TOKEN" || bench_die "DELETE /api/recordings/$id failed"
}

# bench_upload_reeld_run NAME CLIENT: one 1 GiB upload, timed from the
# first PATCH to the last response, with RSS and CPU around it.
bench_upload_reeld_run() {
    local name=$1 client=$2 title="bench $1" t0 t1 c0 c1
    bench_upload_quiesce
    bench_upload_create "$title"
    bench_log "reeld upload $name ($client)"
    U_RSS0[$name]=$(bench_upload_rss)
    bench_upload_sampler_start "$name"
    c0=$(bench_cpu_ticks "$REELD_PID")
    t0=$(date +%s.%N)
    if [ "$client" = curl ]; then
        bench_upload_curl "$name"
    else
        bench_upload_tusjs "$name"
    fi
    t1=$(date +%s.%N)
    c1=$(bench_cpu_ticks "$REELD_PID")
    sleep 1
    bench_upload_sampler_stop "$name"
    U_RSS1[$name]=$(bench_upload_rss)
    bench_reeld_alive || exit 1
    U_SECS[$name]=$(bench_upload_secs "$t0" "$t1")
    U_CPU[$name]=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
    bench_upload_verify "$title"
}

# bench_upload_curl NAME: all PATCHes in one curl process over one
# keep-alive connection (--next), each body streamed from its chunk file.
bench_upload_curl() {
    local -a args=()
    local i off=0 f
    for f in "$BENCH_TMP"/chunk.*; do
        [ "$off" = 0 ] || args+=(--next)
        args+=(-sS -o /dev/null -w '%{http_code} %header{upload-offset}\n' -X PATCH -T "$f"
            -H "Authorization: Bearer $UPLOAD_TOKEN" -H 'Tus-Resumable: 1.0.0'
            -H 'Content-Type: application/offset+octet-stream' -H 'Expect:'
            -H "Upload-Offset: $off" "$UPLOAD_URL")
        off=$((off + $(stat -c %s "$f")))
    done
    curl "${args[@]}" >"$BENCH_TMP/curl-$1.txt" 2>&1 || {
        cat "$BENCH_TMP/curl-$1.txt" >&2
        bench_die "curl PATCHes failed"
    }
    i=$(awk '$1 != 204' "$BENCH_TMP/curl-$1.txt" | wc -l)
    [ "$i" = 0 ] || {
        cat "$BENCH_TMP/curl-$1.txt" >&2
        bench_die "a PATCH did not answer 204"
    }
    [ "$(tail -1 "$BENCH_TMP/curl-$1.txt" | awk '{print $2}')" = "$BENCH_UPLOAD_BYTES" ] ||
        bench_die "the last PATCH did not reach offset $BENCH_UPLOAD_BYTES"
}

# bench_upload_tusjs NAME: tus-js-client (tests/e2e/js/upload.mjs) on the
# same upload URL: it does one HEAD, then its PATCHes.
bench_upload_tusjs() {
    local js=$ROOT/tests/e2e/js opts
    opts=$(jq -cn --arg u "$UPLOAD_URL" --arg t "$UPLOAD_TOKEN" --arg f "$BENCH_TMP/src.bin" \
        --argjson c $((BENCH_UPLOAD_CHUNK_MB * 1048576)) \
        '{endpoint: null, uploadUrl: $u, token: $t, file: $f, chunkSize: $c}')
    (cd "$js" && node upload.mjs "$opts") >"$BENCH_TMP/tusjs-$1.json" 2>&1 || {
        cat "$BENCH_TMP/tusjs-$1.json" >&2
        bench_die "tus-js-client upload failed"
    }
}

bench_upload_nginx_start() {
    NGINX_PORT=$("$ROOT/scripts/freeport.sh")
    local dir=$BENCH_TMP/nginx
    mkdir -p "$dir/www/u" "$dir/client_body"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
$([ "$(id -u)" = 0 ] && echo 'user root;')
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_max_body_size 2g;
    # the body goes to a temp file on the same disk as reeld's data dir,
    # then dav_methods PUT renames it to root/uri
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = /healthz { return 200 "ok\n"; }
        location /u/ {
            root $dir/www;
            dav_methods PUT;
        }
    }
}
EOF
    bench_log "starting nginx ($(nginx -v 2>&1 | sed 's/.*\///')) with dav_methods PUT on 127.0.0.1:$NGINX_PORT"
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

# bench_upload_nginx NAME: one PUT of the source with the same curl
# options; then the time of an fsync of the file nginx wrote.
bench_upload_nginx() {
    local name=$1 t0 t1 t2 code f=$BENCH_TMP/nginx/www/u/$1.bin worker c0 c1
    bench_upload_quiesce
    bench_log "nginx PUT $name"
    worker=$(pgrep -P "$NGINX_PID" | head -1)
    [ -n "$worker" ] || bench_die "no nginx worker process"
    c0=$(bench_cpu_ticks "$worker")
    t0=$(date +%s.%N)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -T "$BENCH_TMP/src.bin" -H 'Expect:' \
        "http://127.0.0.1:$NGINX_PORT/u/$1.bin") || bench_die "curl PUT to nginx failed"
    t1=$(date +%s.%N)
    c1=$(bench_cpu_ticks "$worker")
    U_CPU[$name]=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
    [ "$code" = 201 ] || [ "$code" = 204 ] || bench_die "nginx PUT answered $code"
    sync "$f" || bench_die "fsync of $f failed"
    t2=$(date +%s.%N)
    [ "$(stat -c %s "$f")" = "$BENCH_UPLOAD_BYTES" ] || bench_die "nginx stored $(stat -c %s "$f") bytes"
    U_SECS[$name]=$(bench_upload_secs "$t0" "$t1")
    U_SECS[$name+fsync]=$(bench_upload_secs "$t0" "$t2")
}

bench_upload_line() { # LABEL NAME
    printf '  %-40s %8s s  %8s MiB/s' "$1" "${U_SECS[$2]}" "$(bench_upload_mibs "${U_SECS[$2]}")"
    [ -z "${U_CPU[$2]:-}" ] || printf '   server CPU %s s' "${U_CPU[$2]}"
    printf '\n'
}

bench_upload_rss_line() { # NAME
    local n=$1
    printf '  %-40s VmRSS before %s kB, peak %s kB (%s samples), after %s kB: peak growth %s MiB; reeld CPU %s s\n' \
        "$n" "${U_RSS0[$n]}" "${U_RSSPEAK[$n]}" "${U_SAMPLES[$n]}" "${U_RSS1[$n]}" \
        "$(awk -v a="${U_RSS0[$n]}" -v b="${U_RSSPEAK[$n]}" 'BEGIN { printf "%.1f", (b - a) / 1024 }')" \
        "${U_CPU[$n]}"
}

# bench_upload_median PREFIX [SUFFIX]: median MiB/s of runs PREFIX1SUFFIX
# .. PREFIX<rounds>SUFFIX (the machine is shared: a median resists one
# disturbed run better than a mean).
bench_upload_median() {
    local i
    for i in $(seq "$BENCH_UPLOAD_ROUNDS"); do
        bench_upload_mibs "${U_SECS[$1$i${2:-}]}"
        echo
    done | sort -n | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

bench_main() {
    echo "== bench/run upload =="
    bench_machine
    echo "disk:    $(df -h "$BENCH_TMP" | awk 'NR == 2 {print $1 " (" $2 ", " $4 " free)"}'), $(findmnt -no FSTYPE,OPTIONS -T "$BENCH_TMP")"
    echo
    command -v nginx >/dev/null || bench_die "nginx is not installed"
    nginx -V 2>&1 | grep -q -- --with-http_dav_module || bench_die "this nginx lacks the dav module"
    [ -f "$ROOT/tests/e2e/js/node_modules/tus-js-client/package.json" ] ||
        (cd "$ROOT/tests/e2e/js" && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
        bench_die "cannot install tus-js-client (npm ci in tests/e2e/js)"

    bench_pg_start
    bench_reeld_start
    bench_upload_nginx_start
    bench_upload_org

    bench_log "writing the 1 GiB random source file and its ${BENCH_UPLOAD_CHUNK_MB} MiB chunks"
    head -c "$BENCH_UPLOAD_BYTES" /dev/urandom >"$BENCH_TMP/src.bin"
    split -b "${BENCH_UPLOAD_CHUNK_MB}M" -d -a 3 "$BENCH_TMP/src.bin" "$BENCH_TMP/chunk."

    local i
    for i in $(seq "$BENCH_UPLOAD_ROUNDS"); do
        bench_upload_dd "dd$i"
        bench_upload_reeld_run "reeld$i" curl
        bench_upload_nginx "nginx$i"
    done
    bench_upload_reeld_run tusjs tus-js-client
    bench_upload_quiesce

    local dd_med reeld_med nginx_med nginxs_med
    dd_med=$(bench_upload_median dd)
    reeld_med=$(bench_upload_median reeld)
    nginx_med=$(bench_upload_median nginx)
    nginxs_med=$(bench_upload_median nginx +fsync)

    echo "1 GiB upload (1073741824 random bytes from the page cache) to the same disk"
    echo "  cmd: dd if=/dev/zero of=\$BENCH_TMP/dd.bin bs=8M count=128 conv=fdatasync"
    echo "  cmd: curl -X PATCH -T \$CHUNK -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: \$OFF'" \
        "-H 'Content-Type: application/offset+octet-stream' -H 'Expect:' \$UPLOAD_URL --next ..."
    echo "       ($((BENCH_UPLOAD_BYTES / 1048576 / BENCH_UPLOAD_CHUNK_MB)) PATCHes of ${BENCH_UPLOAD_CHUNK_MB} MiB, one curl process, one keep-alive connection; after POST /api/uploads/)"
    echo "  cmd: node tests/e2e/js/upload.mjs (tus-js-client $(jq -r .version "$ROOT/tests/e2e/js/node_modules/tus-js-client/package.json"), chunkSize ${BENCH_UPLOAD_CHUNK_MB} MiB, node $(node --version))"
    echo "  cmd: curl -X PUT -T \$BENCH_TMP/src.bin -H 'Expect:' http://127.0.0.1:\$NGINX_PORT/u/NAME.bin   (dav_methods PUT), then sync FILE"
    for i in $(seq "$BENCH_UPLOAD_ROUNDS"); do
        echo " round $i:"
        bench_upload_line "dd conv=fdatasync" "dd$i"
        bench_upload_line "reeld tus (curl)" "reeld$i"
        bench_upload_line "nginx dav PUT (no fsync)" "nginx$i"
        bench_upload_line "nginx dav PUT + fsync of the file" "nginx$i+fsync"
    done
    echo " once:"
    bench_upload_line "reeld tus (tus-js-client)" tusjs
    echo " medians over $BENCH_UPLOAD_ROUNDS rounds (MiB/s): dd $dd_med, reeld (curl) $reeld_med," \
        "nginx $nginx_med, nginx + fsync $nginxs_med"
    local ratio
    ratio=$(bench_ratio "$reeld_med" "$dd_med")
    echo "  ratio reeld/dd: $ratio (target >= 0.8: $(awk -v r="$ratio" 'BEGIN { print (r >= 0.8) ? "met" : "NOT met" }'))"
    echo "  ratio reeld/nginx: $(bench_ratio "$reeld_med" "$nginx_med"); reeld/(nginx + fsync): $(bench_ratio "$reeld_med" "$nginxs_med")"
    echo
    echo "reeld memory while 1 GiB streams through it (VmRSS every 100 ms; target: growth < 16 MiB)"
    local worst=0 g n
    for n in $(seq -f 'reeld%g' "$BENCH_UPLOAD_ROUNDS") tusjs; do
        bench_upload_rss_line "$n"
        g=$(awk -v a="${U_RSS0[$n]}" -v b="${U_RSSPEAK[$n]}" 'BEGIN { print b - a }')
        if [ "$g" -gt "$worst" ]; then worst=$g; fi
    done
    echo "  largest peak growth: $(awk -v g="$worst" 'BEGIN { printf "%.1f", g / 1024 }') MiB (target < 16 MiB:" \
        "$(awk -v g="$worst" 'BEGIN { print (g < 16384) ? "met" : "NOT met" }'))"
    echo
    echo "notes:"
    echo "  every reeld upload is checked: each PATCH answered 204, the last offset is 1 GiB, the"
    echo "  recording left 'uploading', and the stored object is byte-identical to the source (cmp)."
    echo "  reeld makes each accepted offset durable before acknowledging it; dd syncs once at the"
    echo "  end; nginx never syncs (hence the + fsync line, which syncs the file it wrote)."
    echo "  each run starts after a sync of what the previous one left dirty."
    echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time of this run: $(($(date +%s) - BENCH_T0)) s"
    echo "  server CPU: user+system seconds of reeld's process / nginx's worker during the transfer."
    local probes
    probes=$(grep -c '"duration probe failed"' "$BENCH_TMP/reeld.err" || true)
    [ "$probes" = 0 ] ||
        echo "  reeld logged $probes 'duration probe failed' warnings: expected, ffprobe is given random bytes."
    if grep -v '"duration probe failed"' "$BENCH_TMP/reeld.err" | grep -q .; then
        echo "  reeld stderr (level warn and above), last lines:"
        grep -v '"duration probe failed"' "$BENCH_TMP/reeld.err" | tail -5 | sed 's/^/    /'
    fi
}
