#!/usr/bin/env bash
# Many streams against one: does ingest inline in the publisher's connection task (no shard
# workers, see crates/sluice-core/src/lib.rs) still hold when the viewers are spread over
# many publishers? Sluice pinned to core 0, the load generator (sluice-bench --streams) to
# core 1, a fresh server for every measurement, both example profiles. For each profile it
# runs S publishers x V viewers each and S publishers with no viewer (ingest alone), then
# prints a table: CPU %, Gbit/s delivered, CPU % per Gbit/s (all of it, and net of ingest),
# p99 latency, delivery, and ingest µs per frame.
#
#   benches/streams.sh                                  # 1x1000 20x50 200x5, 1x0 20x0 200x0
#   SKIP_BUILD=1 DURATION=3 SETS="2x4 4x0" PROFILES=low-latency benches/streams.sh   # smoke
#
# Environment:
#   SETS      runs as STREAMSxVIEWERS_PER_STREAM, space-separated
#             (default "1x1000 20x50 200x5 1x0 20x0 200x0"; a run with 0 viewers per stream
#             measures ingest alone, and gives the ingest column of its stream count)
#   PROFILES  config/examples/<name>.toml profiles (default "low-latency efficient")
#   PROTO     rtmp (default) or flv: how viewers play
#   DURATION  measured window per run, s (default 10)
#   RAMP_MS   viewer connects spread over this many ms (default 2000)
#   FIXTURE   FLV to publish (default: benches/make-fixture.sh's 720p30 2.5 Mbit/s file)
#   OUT       directory for the JSON results (default: target/bench/streams-<time>)
#   SKIP_BUILD=1  use the existing release binaries
#   SLUICE_BIN  the sluice binary to measure (default: this tree's release build); a
#             before/after comparison points it at the old build, same generator
#   EXTRA     extra sluice-bench arguments (e.g. --stagger-ms 0 for publishers in phase)
# Traffic stays on loopback ports 19362 (RTMP), 18092 (HTTP), 19592 (admin).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

SETS=${SETS:-1x1000 20x50 200x5 1x0 20x0 200x0}
PROFILES=${PROFILES:-low-latency efficient}
PROTO=${PROTO:-rtmp}
DURATION=${DURATION:-10}
RAMP_MS=${RAMP_MS:-2000}
OUT=${OUT:-$root/target/bench/streams-$(date +%Y%m%d-%H%M%S)}
EXTRA=${EXTRA:-}
SLUICE_RTMP=19362
SLUICE_HTTP=18092
SLUICE_ADMIN=19592
mkdir -p "$OUT"

say() { echo "streams: $*" >&2; }

# shellcheck source=benches/servers.sh
. "$root/benches/servers.sh"
trap stop_server EXIT
trap 'exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------
command -v taskset >/dev/null || { say "taskset missing (apt-get install util-linux)"; exit 1; }
case $PROTO in rtmp | flv) ;; *) say "PROTO must be rtmp or flv"; exit 1 ;; esac
for set in $SETS; do
  [[ $set =~ ^[1-9][0-9]*x[0-9]+$ ]] || { say "bad set '$set' (want STREAMSxVIEWERS, e.g. 20x50)"; exit 1; }
done
# shellcheck source=benches/nginx-prereqs.sh
. "$root/benches/nginx-prereqs.sh"
install_bench_prereqs 0 # jq
FIXTURE=${FIXTURE:-$(benches/make-fixture.sh)}
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "building release binaries"
  cargo build --release -q -p sluice -p sluice-bench
fi
BENCH=$root/target/release/sluice-bench
SLUICE=${SLUICE_BIN:-$root/target/release/sluice}
# 1,000 viewers and 200 publishers are over 1,024 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ports_free $SLUICE_RTMP $SLUICE_HTTP $SLUICE_ADMIN || exit 1

play_url() {
  if [[ $PROTO == flv ]]; then
    echo "http://127.0.0.1:$SLUICE_HTTP/live/bench.flv"
  else
    echo "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench"
  fi
}

run_bench() { # profile streams viewers_per_stream
  local p=$1 s=$2 v=$3 name="$1-$2x$3"
  local file="$OUT/$name.json"
  # Every phase of a run is bounded; the timeout is a last resort (stagger + warm-up +
  # ramp + settle + window + drain is about DURATION + 10 s).
  # shellcheck disable=SC2086
  timeout $((DURATION + 120)) taskset -c 1 "$BENCH" --json --label "$name" \
    --streams "$s" --viewers $((s * v)) --duration "$DURATION" --ramp-ms "$RAMP_MS" \
    --fixture "$FIXTURE" --publish "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" \
    --play "$(play_url)" --server-pid "$server_pid" $EXTRA > "$file" || {
      say "$name failed (exit $?)"; }
  cat "$file"
  # Keep /metrics: its skip and drop counters say why delivery is below 1.
  curl -s --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN/metrics" > "$OUT/$name.metrics" || true
  grep -E '^sluice_(viewer_skips|frames_dropped)_total' "$OUT/$name.metrics" | sed "s/^/  $name: /" >&2 || true
}

for p in $PROFILES; do
  cfg=$(profile "$p")
  for set in $SETS; do
    s=${set%x*} v=${set#*x}
    say "sluice $p: $s streams x $v $PROTO viewers"
    start_sluice "$cfg"
    run_bench "$p" "$s" "$v"
    stop_server
  done
done

# --- the table ---------------------------------------------------------------------------
field() { # file jq-expression: the value, or "-" when the run left no result
  if [[ -s $1 ]]; then jq -r "$2 // \"-\"" "$1"; else echo "-"; fi
}
echo
echo "streams x viewers ($PROTO viewers, ${DURATION} s windows; results in $OUT)."
echo "fan-out %/Gbit/s = (CPU % - the same stream count's ingest-only CPU %) / Gbit/s."
printf '%-12s %-10s %8s %9s %10s %14s %9s %9s %11s %8s\n' profile set 'CPU %' 'Gbit/s' '%/Gbit/s' \
  'fan-out %/Gb' 'p99 ms' delivery 'ingest µs/f' 'gen CPU'
for p in $PROFILES; do
  for set in $SETS; do
    s=${set%x*} v=${set#*x}
    f="$OUT/$p-$set.json" ingest="$OUT/$p-${s}x0.json"
    cpu=$(field "$f" .server_cpu_pct)
    gbps=$(field "$f" .delivered_gbps)
    per=$(field "$f" .server_cpu_pct_per_gbps)
    ingest_cpu=$(field "$ingest" .server_cpu_pct)
    fanout=$(awk -v c="$cpu" -v i="$ingest_cpu" -v g="$gbps" -v v="$v" 'BEGIN {
      if (v == 0 || c == "-" || i == "-" || g == "-" || g + 0 == 0) print "-";
      else printf "%.1f", (c - i) / g }')
    if [[ $v == 0 ]]; then
      p99=- delivery=- per=-
      us=$(field "$f" .ingest_us_per_frame)
    else
      p99=$(field "$f" .latency_p99_ms)
      delivery=$(field "$f" .delivery_ratio)
      us=$(field "$ingest" .ingest_us_per_frame)
    fi
    gen=$(field "$f" 'if .generator_saturated then "\(.generator_cpu_pct)!" else .generator_cpu_pct end')
    printf '%-12s %-10s %8s %9s %10s %14s %9s %9s %11s %8s\n' "$p" "$set" "$cpu" "$gbps" "$per" \
      "$fanout" "$p99" "$delivery" "$us" "$gen"
  done
done
echo "(gen CPU: the generator's core; '!' = saturated, over 90 %: its numbers are suspect.)"
