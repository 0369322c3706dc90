#!/usr/bin/env bash
# Access control (issue 12): HTTP-FLV joins per second against one Sluice node, same run,
# a fresh server process per case, the server pinned to core 0 and the publisher plus the
# joining clients (sluice-joins-bench) to core 1:
#   open     no [auth] rule (the embedded default);
#   signed   play needs a signed URL (HMAC-SHA256 checked per join);
#   webhook  play asks an on_play webhook (a receiver inside sluice-joins-bench answering 200
#            at once; every join has its own query, so the node's answer cache never hits);
#   key      play needs a static key.
# Prints each result as one JSON line, then a table with each case's rate against open's.
#
#   benches/access.sh                                  # 32 joining at once, 10 s per case
#   SKIP_BUILD=1 DURATION=3 benches/access.sh          # smoke
#
# Environment:
#   CONCURRENCY  clients joining at once (default 32)
#   DURATION     seconds per case (default 10)
#   CASES        any of "open signed webhook key" (default all)
#   OUT          directory for the results (default: target/bench/access-<time>)
#   SKIP_BUILD=1 use the existing release binaries
# Traffic stays on loopback ports 19381, 18111, 19611 and 19612 (the hook receiver).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10}
CASES=${CASES:-open signed webhook key}
OUT=${OUT:-$root/target/bench/access-$(date +%Y%m%d-%H%M%S)}
SLUICE_RTMP=19381
SLUICE_HTTP=18111
SLUICE_ADMIN=19611
HOOK=19612
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

say() { echo "access: $*" >&2; }

# shellcheck source=benches/servers.sh
. "$root/benches/servers.sh"
tmp=$(mktemp -d)
publisher=""
cleanup() {
  [[ -n $publisher ]] && kill "$publisher" 2>/dev/null || true
  stop_server
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v taskset >/dev/null || { say "taskset missing (apt-get install util-linux)"; exit 1; }
command -v ffmpeg >/dev/null || { say "ffmpeg missing (apt-get install ffmpeg)"; exit 1; }
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "building release binaries"
  cargo build --release -q -p sluice -p sluice-bench
fi
SLUICE=$root/target/release/sluice
JOINS=$root/target/release/sluice-joins-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ports_free $SLUICE_RTMP $SLUICE_HTTP $SLUICE_ADMIN $HOOK || exit 1

key="bench-signing-key-0123456789"
config() { # case -> config file
  local f="$tmp/$1.toml"
  {
    echo "[auth.signing_keys]"
    echo "bench = \"$key\""
    case $1 in
      signed) printf '[auth.apps.live.play]\ncheck = "signed"\n' ;;
      key) printf '[auth.apps.live.play]\ncheck = "key"\nkeys = ["viewer-key"]\n' ;;
      webhook) printf '[auth.apps.live.play]\nhook = "http://127.0.0.1:%s/on_play"\n' "$HOOK" ;;
    esac
  } > "$f"
  echo "$f"
}

base="http://127.0.0.1:$SLUICE_HTTP/live/bench.flv"
for case in $CASES; do
  cfg=$(config "$case")
  url=$base
  case $case in
    signed) url=$("$SLUICE" sign --config "$cfg" --url "$base" --expires-in 3600) ;;
    key) url="$base?key=viewer-key" ;;
  esac
  hook=()
  [[ $case == webhook ]] && hook=(--hook-listen "127.0.0.1:$HOOK")
  say "$case: $CONCURRENCY joining at once for ${DURATION}s"
  start_sluice "$cfg"
  taskset -c 1 ffmpeg -hide_banner -nostdin -loglevel error -re -stream_loop -1 \
    -i fixtures/h264_aac.flv -c copy -f flv "rtmp://127.0.0.1:$SLUICE_RTMP/live/bench" &
  publisher=$!
  sleep 3
  taskset -c 1 timeout $((DURATION + 60)) "$JOINS" --url "$url" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --server-pid "$server_pid" "${hook[@]}" \
    | sed "s/^{/{\"case\":\"$case\",/" | tee "$OUT/$case.json"
  kill "$publisher" 2>/dev/null || true
  wait "$publisher" 2>/dev/null || true
  publisher=""
  stop_server
done

python3 - "$OUT" $CASES <<'PY'
import json, sys, os
out, cases = sys.argv[1], sys.argv[2:]
rows = {c: json.load(open(os.path.join(out, c + ".json"))) for c in cases
        if os.path.exists(os.path.join(out, c + ".json"))}
base = rows.get("open", {}).get("joins_per_s")
print(f"{'case':<8} {'joins/s':>9} {'vs open':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms/join':>11} {'failures':>8}")
for c, r in rows.items():
    ratio = f"{r['joins_per_s'] / base:.2f}x" if base else "-"
    cpu = r.get("server_cpu_ms_per_join")
    print(f"{c:<8} {r['joins_per_s']:>9.0f} {ratio:>8} {r['join_p50_ms']:>7.2f} {r['join_p99_ms']:>7.2f} "
          f"{cpu if cpu is None else round(cpu, 3)!s:>11} {r['failures']:>8}")
PY
