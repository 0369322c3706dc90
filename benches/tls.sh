#!/usr/bin/env bash
# What TLS costs Sluice: N viewers of one publisher in clear text against the same N over
# TLS (RTMP vs RTMPS, HTTP-FLV vs HTTPS-FLV), the server pinned to core 0 and the load
# generator (sluice-bench) to core 1, a fresh server for every measurement. Prints each result
# as one JSON line, then the server's CPU per 1,000 viewers for both and their ratio.
#
#   benches/tls.sh                               # 1,000 viewers, 15 s windows
#   VIEWERS="100 1000" PROTOS=flv benches/tls.sh
#
# Environment:
#   VIEWERS   viewer counts, space-separated (default 1000)
#   PROTOS    rtmp and/or flv (default "rtmp flv")
#   PROFILE   config/examples/NAME.toml the server runs with (default efficient; "" for the
#             embedded defaults)
#   DURATION  measured window per run, s (default 15)
#   RAMP_MS   viewer connects spread over this many ms (default 2000; TLS handshakes are in
#             the ramp, not in the window)
#   FIXTURE   FLV to publish (default: benches/make-fixture.sh's 720p30 2.5 Mbit/s file)
#   KEY       server key type: ec (P-256, default) or rsa (2048)
#   OUT       directory for the JSON results (default: target/bench/tls-<time>)
#   SKIP_BUILD=1  use the existing release binaries
#   EXTRA     extra sluice-bench arguments
# The certificate is self-signed, made here with openssl; the generator accepts any. Installs
# jq with apt-get when missing. Traffic stays on loopback ports 19372, 18092, 19592, 19373,
# 18493.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

VIEWERS=${VIEWERS:-1000}
PROTOS=${PROTOS:-rtmp flv}
PROFILE=${PROFILE-efficient}
DURATION=${DURATION:-15}
RAMP_MS=${RAMP_MS:-2000}
KEY=${KEY:-ec}
OUT=${OUT:-$root/target/bench/tls-$(date +%Y%m%d-%H%M%S)}
EXTRA=${EXTRA:-}
SLUICE_RTMP=19372
SLUICE_HTTP=18092
SLUICE_ADMIN=19592
SLUICE_RTMPS=19373
SLUICE_HTTPS=18493
mkdir -p "$OUT"

say() { echo "tls-bench: $*" >&2; }

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
command -v openssl >/dev/null || { say "openssl missing (apt-get install openssl)"; exit 1; }
# shellcheck source=benches/nginx-prereqs.sh
. "$root/benches/nginx-prereqs.sh"
install_bench_prereqs 0
FIXTURE=${FIXTURE:-$(benches/make-fixture.sh)}
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "building release binaries"
  cargo build --release -q -p sluice -p sluice-bench
fi
BENCH=$root/target/release/sluice-bench
SLUICE=${SLUICE_BIN:-$root/target/release/sluice}

ports_free $SLUICE_RTMP $SLUICE_HTTP $SLUICE_ADMIN $SLUICE_RTMPS $SLUICE_HTTPS || exit 1

# --- the certificate and the config ------------------------------------------------------
case $KEY in
  ec) keyopts=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  rsa) keyopts=(-newkey rsa:2048) ;;
  *) say "KEY must be ec or rsa"; exit 1 ;;
esac
openssl req -x509 "${keyopts[@]}" -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
config="$tmp/sluice.toml"
{
  if [[ -n $PROFILE ]]; then cat "$(profile "$PROFILE")"; fi
  cat <<CONF

[tls]
cert_file = "$tmp/cert.pem"
key_file = "$tmp/key.pem"
rtmps_listen = "127.0.0.1:$SLUICE_RTMPS"
https_listen = "127.0.0.1:$SLUICE_HTTPS"
watch = false
CONF
} > "$config"

run_bench() { # label viewers play_url
  local label=$1 n=$2 play=$3 file="$OUT/$1-$2.json"
  # shellcheck disable=SC2086
  timeout $((DURATION + 90)) taskset -c 1 "$BENCH" --json --label "$label" \
    --viewers "$n" --duration "$DURATION" --ramp-ms "$RAMP_MS" --fixture "$FIXTURE" \
    --publish "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" --play "$play" \
    --server-pid "$server_pid" $EXTRA > "$file" || { say "$label with $n viewers failed (exit $?)"; }
  cat "$file"
}

play_url() { # proto tls(0|1)
  case "$1-$2" in
    rtmp-0) echo "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" ;;
    rtmp-1) echo "rtmps://127.0.0.1:$SLUICE_RTMPS/live/bench" ;;
    flv-0) echo "http://127.0.0.1:$SLUICE_HTTP/live/bench.flv" ;;
    flv-1) echo "https://127.0.0.1:$SLUICE_HTTPS/live/bench.flv" ;;
  esac
}

for n in $VIEWERS; do
  for proto in $PROTOS; do
    for tls in 0 1; do
      label="$proto-$([[ $tls == 1 ]] && echo tls || echo clear)"
      say "$label, $n viewers"
      start_sluice "$config"
      wait_port $SLUICE_HTTPS
      run_bench "$label" "$n" "$(play_url "$proto" "$tls")"
      curl -s --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN/metrics" > "$OUT/$label-$n.metrics" || true
      stop_server
    done
  done
done

# --- CPU per 1,000 viewers -----------------------------------------------------------------
echo
echo "server CPU per 1,000 viewers, clear text against TLS (results in $OUT):"
for n in $VIEWERS; do
  for proto in $PROTOS; do
    clear="$OUT/$proto-clear-$n.json" tls="$OUT/$proto-tls-$n.json"
    if [[ ! -s $clear || ! -s $tls ]]; then echo "  $proto, $n viewers: a run is missing"; continue; fi
    jq -r --slurpfile c "$clear" --arg proto "$proto" '
      def per_k(r): if (r.server_cpu_pct == null or r.viewers_connected == 0) then null
        else (r.server_cpu_pct / r.viewers_connected * 1000 * 100 | round) / 100 end;
      ($c[0]) as $c
      | (per_k($c)) as $a | (per_k(.)) as $b
      | "  \($proto), \(.viewers_requested) viewers: clear \($a)% of a core per 1,000 viewers"
        + " (\($c.viewers_connected) connected), TLS \($b)% (\(.viewers_connected) connected)"
        + (if ($a == null or $b == null or $a == 0) then "" else " = \(($b / $a * 100 | round) / 100)x" end)
        + " | latency p99 \($c.latency_p99_ms) vs \(.latency_p99_ms) ms"
        + " | rss/viewer \($c.server_rss_per_viewer_kib) vs \(.server_rss_per_viewer_kib) KiB"
        + " | delivery \($c.delivery_ratio) vs \(.delivery_ratio)"' "$tls"
  done
done
