#!/usr/bin/env bash
# Sluice (config/examples/low-latency.toml and efficient.toml) against nginx-rtmp (Debian's
# nginx with libnginx-mod-rtmp) in one run: same machine, same fixture, same viewer counts,
# each server pinned to core 0 and the load generator (sluice-bench) to core 1, one server
# at a time, a fresh server process for every measurement. Prints each result as one JSON
# line and the ratios against nginx-rtmp.
#
#   benches/compare-nginx.sh                       # 1,000 viewers, 15 s windows
#   VIEWERS="1 100 1000" DURATION=20 benches/compare-nginx.sh
#
# Environment:
#   VIEWERS   viewer counts, space-separated (default 1000)
#   DURATION  measured window per run, s (default 15)
#   RAMP_MS   viewer connects spread over this many ms (default 2000)
#   FLV       1 (default): also measure Sluice with HTTP-FLV viewers (nginx-rtmp has no
#             HTTP-FLV, so those runs have no nginx counterpart); 0: RTMP only
#   FIXTURE   FLV to publish (default: benches/make-fixture.sh's 720p30 2.5 Mbit/s file)
#   OUT       directory for the JSON results (default: target/bench/compare-<time>)
#   SKIP_BUILD=1  use the existing release binaries
#   SLUICE_BIN  the sluice binary to measure (default: this tree's release build); a
#             before/after comparison points it at the old build, same generator
#   EXTRA     extra sluice-bench arguments
# Installs nginx and libnginx-mod-rtmp with apt-get when missing (needs root), without
# starting Debian's nginx service. Traffic stays on loopback ports 19351-19353, 18082, 19582.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

VIEWERS=${VIEWERS:-1000}
DURATION=${DURATION:-15}
RAMP_MS=${RAMP_MS:-2000}
FLV=${FLV:-1}
OUT=${OUT:-$root/target/bench/compare-$(date +%Y%m%d-%H%M%S)}
EXTRA=${EXTRA:-}
NGINX_PORT=19351
SLUICE_RTMP=19352
SLUICE_HTTP=18082
SLUICE_ADMIN=19582
RTMP_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
mkdir -p "$OUT"

say() { echo "compare-nginx: $*" >&2; }

# shellcheck source=benches/servers.sh
. "$root/benches/servers.sh"
tmp=$(mktemp -d)
cleanup() {
  stop_server
  rm -rf "$tmp"
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

ports_free $NGINX_PORT $SLUICE_RTMP $SLUICE_HTTP $SLUICE_ADMIN || exit 1

start_nginx() {
  cat > "$tmp/nginx.conf" <<CONF
# One process (no master) so its PID is the one to measure; pinned by taskset.
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
    listen 127.0.0.1:$NGINX_PORT;
    chunk_size 4096;
    application live {
      live on;
      record off;
    }
  }
}
CONF
  taskset -c 0 nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" &
  server_pid=$!
  wait_port $NGINX_PORT
}

run_bench() { # label viewers publish_url play_url
  local label=$1 n=$2 publish=$3 play=$4 file="$OUT/$1-$2.json"
  # shellcheck disable=SC2086
  timeout $((DURATION + 90)) taskset -c 1 "$BENCH" --json --label "$label" \
    --viewers "$n" --duration "$DURATION" --ramp-ms "$RAMP_MS" --fixture "$FIXTURE" \
    --publish "$publish" --play "$play" --server-pid "$server_pid" $EXTRA > "$file" || {
      say "$label with $n viewers failed (exit $?)"; }
  cat "$file"
}

sluice_counters() { # name: keep Sluice's /metrics; show why frames were skipped or dropped
  curl -s --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN/metrics" > "$OUT/$1.metrics" || return 0
  grep -E '^sluice_(viewer_skips|frames_dropped)_total' "$OUT/$1.metrics" | sed "s/^/  $1: /" >&2 || true
}

for n in $VIEWERS; do
  say "nginx-rtmp, $n RTMP viewers"
  start_nginx
  run_bench nginx-rtmp "$n" "rtmp://127.0.0.1:$NGINX_PORT/live/bench" "rtmp://127.0.0.1:$NGINX_PORT/live/bench"
  stop_server
  for p in low-latency efficient; do
    cfg=$(profile $p)
    say "sluice $p, $n RTMP viewers"
    start_sluice "$cfg"
    run_bench "sluice-$p-rtmp" "$n" "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench"
    sluice_counters "sluice-$p-rtmp-$n"
    stop_server
    if [[ $FLV == 1 ]]; then
      say "sluice $p, $n HTTP-FLV viewers"
      start_sluice "$cfg"
      run_bench "sluice-$p-flv" "$n" "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" "http://127.0.0.1:$SLUICE_HTTP/live/bench.flv"
      sluice_counters "sluice-$p-flv-$n"
      stop_server
    fi
  done
done

# --- ratios ------------------------------------------------------------------------------
echo
echo "ratios against nginx-rtmp (same viewers, RTMP; results in $OUT):"
for n in $VIEWERS; do
  nginx="$OUT/nginx-rtmp-$n.json"
  [[ -s $nginx ]] || { echo "  $n viewers: no nginx-rtmp result"; continue; }
  for f in "$OUT"/sluice-*-"$n".json; do
    [[ -s $f ]] || continue
    jq -r --slurpfile ng "$nginx" --arg n "$n" '
      def r(a; b): if (a == null or b == null or b == 0) then "n/a" else ((a / b * 100 | round) / 100 | tostring) end;
      ($ng[0]) as $g
      | "  \($n) viewers \(.label): cpu \(.server_cpu_pct)% vs \($g.server_cpu_pct)% = \(r(.server_cpu_pct; $g.server_cpu_pct))x"
        + " | latency p99 \(.latency_p99_ms) vs \($g.latency_p99_ms) ms = \(r(.latency_p99_ms; $g.latency_p99_ms))x"
        + " | ttff p99 \(.ttff_p99_ms) vs \($g.ttff_p99_ms) ms"
        + " | delivery \(.delivery_ratio) vs \($g.delivery_ratio)"
        + " | rss/viewer \(.server_rss_per_viewer_kib) vs \($g.server_rss_per_viewer_kib) KiB"
        + " | writes/viewer-s \(.server_writes_per_viewer_s) vs \($g.server_writes_per_viewer_s)"
        + (if .proto == "flv" then " (HTTP-FLV against nginx RTMP)" else "" end)' "$f"
  done
done
