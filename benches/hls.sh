#!/usr/bin/env bash
# HLS and LL-HLS (issue 11): Sluice's LL-HLS against nginx-rtmp's classic HLS in one run, same
# fixture, same viewer count, each server pinned to core 0 and the load generator
# (sluice-bench) to core 1, a fresh server process for every measurement:
#   (a) Sluice, LL-HLS viewers: blocking playlist reloads and every part as it is listed;
#       then again with --hls-preload (each part fetched through the preload hint, held by
#       the server until it is cut, as LL-HLS players do);
#   (a') Sluice with `hls.container = "ts"` and classic viewers: the same work as (b), for the
#       CPU ratio of like against like;
#   (b) nginx-rtmp with `hls on` writing 1 s fragments to a tmpfs directory that the same
#       nginx serves over HTTP, classic viewers polling the playlist every target duration / 2;
#   (c) memory: Sluice with MEM_STREAMS low-bitrate streams (the small checked-in fixture),
#       first with no viewer, then with one LL-HLS viewer per stream so every stream's muxer
#       runs: RSS against /metrics' sluice_hls_cache_bytes (when Sluice exports it) and the
#       bytes the streams' playlists list.
# Prints each result as one JSON line, then one table.
#
#   benches/hls.sh                                   # 1,000 viewers, 15 s windows
#   SKIP_BUILD=1 VIEWERS=10 DURATION=5 MEM_STREAMS=4 benches/hls.sh    # smoke
#
# Environment:
#   VIEWERS      HLS viewers of (a) and (b) (default 1000)
#   DURATION     measured window per run, s (default 15)
#   RAMP_MS      viewer connects spread over this many ms (default 2000)
#   MEM_STREAMS  streams of (c) (default 200; 0 skips it)
#   MEM_DURATION measured window of (c), s (default 10)
#   RUNS         which runs: any of "sluice sluice-preload sluice-ts nginx mem" (default all)
#   FIXTURE      FLV to publish in (a) and (b) (default: make-fixture.sh's 720p30 2.5 Mbit/s)
#   MEM_FIXTURE  FLV each stream of (c) publishes (default fixtures/h264_aac.flv, ~700 kbit/s)
#   SLUICE_CONFIG  Sluice config file (default: config/examples/low-latency.toml); HLS is
#                switched on with SLUICE__HLS__* variables (see sluice_hls_env below)
#   OUT          directory for the results (default: target/bench/hls-<time>)
#   SKIP_BUILD=1 use the existing release binaries
#   SLUICE_BIN   the sluice binary to measure (default: this tree's release build)
#   EXTRA        extra sluice-bench arguments
# Installs nginx and libnginx-mod-rtmp with apt-get when missing (needs root), without
# starting Debian's nginx service. Traffic stays on loopback ports 19371-19372, 18101-18102
# and 19601; nginx's fragments go to a directory under /dev/shm, removed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

VIEWERS=${VIEWERS:-1000}
DURATION=${DURATION:-15}
RAMP_MS=${RAMP_MS:-2000}
MEM_STREAMS=${MEM_STREAMS:-200}
MEM_DURATION=${MEM_DURATION:-10}
RUNS=${RUNS:-sluice sluice-preload sluice-ts nginx mem}
MEM_FIXTURE=${MEM_FIXTURE:-fixtures/h264_aac.flv}
OUT=${OUT:-$root/target/bench/hls-$(date +%Y%m%d-%H%M%S)}
EXTRA=${EXTRA:-}
NGINX_RTMP=19371
NGINX_HTTP=18101
SLUICE_RTMP=19372
SLUICE_HTTP=18102
SLUICE_ADMIN=19601
RTMP_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

say() { echo "hls: $*" >&2; }

# shellcheck source=benches/servers.sh
. "$root/benches/servers.sh"
tmp=$(mktemp -d)
shm=$(mktemp -d /dev/shm/sluice-bench-hls.XXXXXX)
cleanup() {
  stop_server
  rm -rf "$tmp" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------
command -v taskset >/dev/null || { say "taskset missing (apt-get install util-linux)"; exit 1; }
# shellcheck source=benches/nginx-prereqs.sh
. "$root/benches/nginx-prereqs.sh"
install_bench_prereqs 1
FIXTURE=${FIXTURE:-$(benches/make-fixture.sh)}
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "building release binaries"
  cargo build --release -q -p sluice -p sluice-bench
fi
BENCH=$root/target/release/sluice-bench
SLUICE=${SLUICE_BIN:-$root/target/release/sluice}
SLUICE_CONFIG=${SLUICE_CONFIG-$(profile low-latency)}
# 1,000 viewers and 200 publishers are over 1,024 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ports_free $NGINX_RTMP $NGINX_HTTP $SLUICE_RTMP $SLUICE_HTTP $SLUICE_ADMIN || exit 1

# Sluice's HLS settings, on top of SLUICE_CONFIG (the plan's defaults: 1 s target, 200 ms
# parts, fMP4).
sluice_hls_env() {
  export SLUICE__HLS__ENABLED=true
}

start_nginx() {
  mkdir -p "$shm/hls"
  cat > "$tmp/nginx.conf" <<CONF
# One process (no master) so its PID is the one to measure; pinned by taskset. It takes
# RTMP, writes HLS fragments to tmpfs and serves them over HTTP.
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
load_module $RTMP_MODULE;
events { worker_connections 16384; }
rtmp {
  server {
    listen 127.0.0.1:$NGINX_RTMP;
    chunk_size 4096;
    application live {
      live on;
      record off;
      hls on;
      hls_path $shm/hls;
      hls_fragment 1s;
      hls_playlist_length 6s;
    }
  }
}
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$NGINX_HTTP;
    location /hls {
      types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
      root $shm;
      add_header Cache-Control no-cache;
    }
  }
}
CONF
  taskset -c 0 nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" &
  server_pid=$!
  wait_port $NGINX_RTMP
}

# KiB in the memory files (memfd) a process has open: Sluice keeps HLS parts there, outside
# its RSS (they count in the machine's and the cgroup's Shmem).
memfd_kib() { # pid
  local total=0 f size
  for f in /proc/"$1"/fd/*; do
    [[ $(readlink "$f" 2>/dev/null) == /memfd:* ]] || continue
    size=$(stat -L -c %s "$f" 2>/dev/null) || continue
    total=$((total + size))
  done
  echo $((total / 1024))
}

# Runs sluice-bench against the server we started; $metrics_at s after the start it keeps
# Sluice's /metrics and the size of its memory files (while every stream and viewer is still
# there).
run_bench() { # label viewers fixture publish_url play_url proto [sluice-bench args...]
  local label=$1 n=$2 fixture=$3 publish=$4 play=$5 proto=$6 file="$OUT/$1.json"
  shift 6
  # shellcheck disable=SC2086
  timeout $((DURATION + 120)) taskset -c 1 "$BENCH" --json --label "$label" \
    --viewers "$n" --ramp-ms "$RAMP_MS" --fixture "$fixture" --publish "$publish" \
    --play "$play" --proto "$proto" --server-pid "$server_pid" "$@" $EXTRA > "$file" &
  local bench=$!
  if [[ -n ${metrics_at:-} ]]; then
    sleep "$metrics_at"
    curl -s --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN/metrics" > "$OUT/$label.metrics" || true
    memfd_kib "$server_pid" > "$OUT/$label.memfd-kib"
  fi
  wait $bench || say "$label failed (exit $?)"
  cat "$file"
}

# Seconds from the generator's start to the middle of its window: stagger (the fixture's
# keyframe interval, at most 2 s) + warm-up 2.5 s + ramp + settle 2 s + window / 2.
mid_window() { # window_s
  echo $((2 + 3 + RAMP_MS / 1000 + 2 + $1 / 2))
}

has_run() { [[ " $RUNS " == *" $1 "* ]]; }

for run in sluice sluice-preload; do
  has_run $run || continue
  label=sluice-llhls args=()
  if [[ $run == sluice-preload ]]; then label=sluice-llhls-preload args=(--hls-preload); fi
  say "$label, $VIEWERS LL-HLS viewers"
  sluice_hls_env
  start_sluice "$SLUICE_CONFIG"
  metrics_at=$(mid_window "$DURATION") run_bench $label "$VIEWERS" "$FIXTURE" \
    "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" \
    "http://127.0.0.1:$SLUICE_HTTP/live/bench/media.m3u8" hls --duration "$DURATION" "${args[@]}"
  stop_server
done

if has_run sluice-ts; then
  say "sluice-ts, $VIEWERS classic HLS viewers of MPEG-TS segments"
  sluice_hls_env
  SLUICE__HLS__CONTAINER=ts start_sluice "$SLUICE_CONFIG"
  metrics_at=$(mid_window "$DURATION") run_bench sluice-ts-classic "$VIEWERS" "$FIXTURE" \
    "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" \
    "http://127.0.0.1:$SLUICE_HTTP/live/bench/media.m3u8" hls-classic --duration "$DURATION"
  stop_server
fi

if has_run nginx; then
  say "nginx-rtmp, $VIEWERS classic HLS viewers"
  start_nginx
  run_bench nginx-hls "$VIEWERS" "$FIXTURE" "rtmp://127.0.0.1:$NGINX_RTMP/live/bench" \
    "http://127.0.0.1:$NGINX_HTTP/hls/bench.m3u8" hls-classic --duration "$DURATION"
  du -sk "$shm/hls" | cut -f1 > "$OUT/nginx-hls.tmpfs-kib"
  stop_server
  rm -rf "$shm/hls"
fi

if has_run mem && [[ $MEM_STREAMS -gt 0 ]]; then
  sluice_hls_env
  for v in 0 1; do
    label=sluice-mem-${MEM_STREAMS}x$v
    say "sluice, $MEM_STREAMS streams x $v LL-HLS viewers"
    start_sluice "$SLUICE_CONFIG"
    metrics_at=$(mid_window "$MEM_DURATION") run_bench "$label" $((MEM_STREAMS * v)) \
      "$MEM_FIXTURE" "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" \
      "http://127.0.0.1:$SLUICE_HTTP/live/bench/media.m3u8" hls \
      --streams "$MEM_STREAMS" --duration "$MEM_DURATION"
    stop_server
  done
fi

# --- the table ---------------------------------------------------------------------------
field() { # file jq-expression: the value, or "-" when the run left no result
  if [[ -s $1 ]]; then jq -r "($2) // \"-\"" "$1"; else echo "-"; fi
}
metric() { # file name: the sum of a Prometheus metric's samples, or "-"
  [[ -s $1 ]] || { echo "-"; return; }
  awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2; n++ } END { if (n) printf "%.0f", s; else print "-" }' "$1"
}
echo
echo "HLS ($VIEWERS viewers, ${DURATION} s windows; results in $OUT)."
echo "listed / available: playlist listing the part (segment) / its download complete, after"
echo "its last frame was sent (ms). CPU ratio against nginx-rtmp's classic HLS."
printf '%-21s %15s %17s %13s %9s %9s %10s %9s %9s %7s %8s\n' run 'listed p50/p99' 'available p50/p99' \
  'CPU % (x)' 'RSS/v KiB' 'net KiB' 'req/s' 'Gbit/s' '4xx/5xx' samples 'gen CPU'
ngcpu=$(field "$OUT/nginx-hls.json" .server_cpu_pct)
for run in sluice-llhls sluice-llhls-preload sluice-ts-classic nginx-hls; do
  f="$OUT/$run.json"
  [[ -s $f ]] || continue
  cpu=$(field "$f" .server_cpu_pct)
  ratio=$(awk -v c="$cpu" -v n="$ngcpu" 'BEGIN { if (c == "-" || n == "-" || n + 0 == 0) print ""; else printf " (%.2fx)", c / n }')
  gen=$(field "$f" 'if .generator_saturated then "\(.generator_cpu_pct)!" else .generator_cpu_pct end')
  # Sluice starts a stream's segmenter at its first HLS request, so the growth after the
  # warm-up includes the segment cache: "net" takes it out (sluice_hls_cache_bytes), and
  # adds back the memory files it lives in outside the RSS.
  cache=$(metric "$OUT/$run.metrics" sluice_hls_cache_bytes)
  memfd=$(cat "$OUT/$run.memfd-kib" 2>/dev/null || echo 0)
  net=$(jq -r --arg c "$cache" --arg m "$memfd" 'if ($c == "-" or .server_rss_end_kib == null or .viewers_connected == 0) then "-"
    else (((.server_rss_end_kib + ($m | tonumber) - .server_rss_before_viewers_kib - ($c | tonumber) / 1024) / .viewers_connected * 100 | round) / 100) end' "$f")
  printf '%-21s %15s %17s %13s %9s %9s %10s %9s %9s %7s %8s\n' "$run" \
    "$(field "$f" '"\(.hls_listed_p50_ms)/\(.hls_listed_p99_ms)"')" \
    "$(field "$f" '"\(.hls_available_p50_ms)/\(.hls_available_p99_ms)"')" \
    "$cpu$ratio" "$(field "$f" .server_rss_per_viewer_kib)" "$net" "$(field "$f" .hls_requests_per_s)" \
    "$(field "$f" .delivered_gbps)" "$(field "$f" '"\(.hls_http_4xx)/\(.hls_http_5xx)"')" \
    "$(field "$f" .hls_samples)" "$gen"
done
if [[ -s $OUT/nginx-hls.tmpfs-kib ]]; then
  echo "nginx-rtmp's fragments on tmpfs at the end: $(cat "$OUT/nginx-hls.tmpfs-kib") KiB (not in its RSS)."
fi
none="$OUT/sluice-mem-${MEM_STREAMS}x0.json" one="$OUT/sluice-mem-${MEM_STREAMS}x1.json"
if [[ -s $one ]]; then
  echo
  echo "memory, $MEM_STREAMS streams ($MEM_FIXTURE), RSS in KiB at the end of the window:"
  rss0=$(field "$none" .server_rss_end_kib)
  rss1=$(field "$one" .server_rss_end_kib)
  win=$(field "$one" .hls_window_bytes)
  cache=$(metric "$OUT/sluice-mem-${MEM_STREAMS}x1.metrics" sluice_hls_cache_bytes)
  memfd=$(cat "$OUT/sluice-mem-${MEM_STREAMS}x1.memfd-kib" 2>/dev/null || echo 0)
  echo "  no viewer: RSS $rss0; one LL-HLS viewer per stream: RSS $rss1 + memory files $memfd" \
    "(+$(awk -v a="$rss1" -v b="$rss0" -v m="$memfd" 'BEGIN { if (a == "-" || b == "-") print "-"; else print a + m - b }') KiB)"
  echo "  playlists' window bytes (sum over streams): $win" \
    "= $(awk -v w="$win" 'BEGIN { if (w == "-") print "-"; else printf "%.0f", w / 1024 }') KiB;" \
    "sluice_hls_cache_bytes: $cache"
fi
