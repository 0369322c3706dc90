#!/usr/bin/env bash
# Issue 4's cluster benches on one machine: Sluice nodes as separate processes on loopback
# (two origins, an edge pulling from them, a mid tier and an edge behind it), every server
# pinned with `taskset -c 0`, the generators with `taskset -c 1`:
#
#   1. cold start: N streams published to origin 1; for each, time to first frame at the edge
#      that does not have it yet (its first viewer makes it pull) against origin 1 directly;
#      the edge's pull count (sluice-cluster-bench cold);
#   2. one pull per stream: the same with BURST viewers per stream connecting together;
#   3. failover (REPS times): viewers at the edge, the origin its pull uses is SIGKILLed, time
#      to the next keyframe and the largest gap (sluice-cluster-bench failover); the killed
#      origin is restarted before the next repetition;
#   4. latency per tier: sluice-bench publishing to origin 1 and playing at origin 1, at the
#      edge, and at the edge behind the mid tier (origin -> mid -> edge);
#   5. for reference, cold start through nginx-rtmp's own edge (`pull`) in front of origin 1.
#
#   benches/cluster.sh                     # RTMP between nodes
#   TRANSPORT=quic benches/cluster.sh      # QUIC relay between nodes
#   TRANSPORT="rtmp quic" NGINX=0 benches/cluster.sh
#
# Environment:
#   TRANSPORT   rtmp (default), quic, or both space-separated: what edges pull over; empty
#               ("") runs only the nginx-rtmp reference
#   STREAMS     streams of the cold-start runs (default 50)
#   BURST       viewers per stream of the one-pull-per-stream run (default 20; 0 skips it)
#   REPS        failover repetitions (default 5; 0 skips them)
#   FO_VIEWERS  viewers of each failover run (default 5)
#   TIER_VIEWERS, TIER_DURATION   sluice-bench viewers and window (s) per tier (10, 10; 0 skips)
#   NGINX       1 (default): also the nginx-rtmp edge reference; 0: skip it
#   REGISTRY    1: every node joins a stream registry on etcd (Debian's etcd-server, started
#               here on 127.0.0.1:19470, pinned with the generators) and the edge has no
#               static upstreams, so its cold starts resolve through the registry; labels
#               get "-reg". Failover then moves the broadcaster: it publishes to origin 1
#               only, and at the kill of origin 1 publishes to origin 2 instead, so the edge
#               finds the stream's new origin through the registry.
#   FIXTURE     FLV to publish (default: fixtures/h264_aac.flv, 640x360 ~700 kbit/s, 1 s GOP)
#   OUT         results, logs and configs (default target/bench/cluster-<time>)
#   SKIP_BUILD=1  use the existing release binaries
# Ports: 19450-19455 (RTMP), 18450-18454 (HTTP), 19550-19554 (admin), UDP 19460-19463 (QUIC).
# nginx-rtmp as compare-nginx.sh installs it (Debian's nginx + libnginx-mod-rtmp).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

TRANSPORT=${TRANSPORT-rtmp}
STREAMS=${STREAMS:-50}
BURST=${BURST:-20}
REPS=${REPS:-5}
FO_VIEWERS=${FO_VIEWERS:-5}
TIER_VIEWERS=${TIER_VIEWERS:-10}
TIER_DURATION=${TIER_DURATION:-10}
NGINX=${NGINX:-1}
REGISTRY=${REGISTRY:-0}
ETCD_CLIENT=19470
ETCD_PEER=19471
SUF=""
if [[ $REGISTRY == 1 ]]; then SUF="-reg"; fi
FIXTURE=${FIXTURE:-fixtures/h264_aac.flv}
OUT=${OUT:-$root/target/bench/cluster-$(date +%Y%m%d-%H%M%S)}
RTMP_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
TLS=$root/config/examples/tls
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd) # nginx -p and the node configs want it absolute

# node -> ports: rtmp http admin quic
declare -A RTMP=([o1]=19450 [o2]=19451 [edge]=19452 [mid]=19453 [edge2]=19454 [nginx]=19455)
declare -A HTTP=([o1]=18450 [o2]=18451 [edge]=18452 [mid]=18453 [edge2]=18454)
declare -A ADMIN=([o1]=19550 [o2]=19551 [edge]=19552 [mid]=19553 [edge2]=19554)
declare -A QUIC=([o1]=19460 [o2]=19461 [mid]=19463)
declare -A PID=()

say() { echo "cluster: $*" >&2; }

start_etcd() {
  command -v etcd >/dev/null || { say "installing etcd-server"; apt-get install -y -q etcd-server >/dev/null; }
  rm -rf "$OUT/etcd-data"
  taskset -c 1 etcd --name bench --data-dir "$OUT/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" >>"$OUT/etcd.log" 2>&1 &
  PID[etcd]=$!
  for _ in $(seq 100); do
    curl -s --max-time 1 "http://127.0.0.1:$ETCD_CLIENT/health" | grep -q '"health":"true"' && return 0
    sleep 0.1
  done
  say "etcd did not become healthy (see $OUT/etcd.log)"; return 1
}

cleanup() {
  local name pid
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    kill "$pid" 2>/dev/null || true
  done
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------
command -v taskset >/dev/null || { say "taskset missing (apt-get install util-linux)"; exit 1; }
# shellcheck source=benches/nginx-prereqs.sh
. "$root/benches/nginx-prereqs.sh"
install_bench_prereqs $NGINX
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "building release binaries"
  cargo build --release -q -p sluice -p sluice-bench
fi
SLUICE=$root/target/release/sluice
BENCH=$root/target/release/sluice-bench
CBENCH=$root/target/release/sluice-cluster-bench

for port in "${RTMP[@]}" "${HTTP[@]}" "${ADMIN[@]}"; do
  if ss -ltnH "sport = :$port" | grep -q .; then
    say "port $port is already in use: stop whatever listens there first"; exit 1
  fi
done

# --- nodes -------------------------------------------------------------------------------
upstream() { # node transport -> its upstream URL
  if [[ $2 == quic ]]; then echo "quic://127.0.0.1:${QUIC[$1]}/live"
  else echo "rtmp://127.0.0.1:${RTMP[$1]}/live"; fi
}

write_config() { # node transport
  local n=$1 t=$2 f="$OUT/$1-$2.toml" role=origin ups=""
  case $n in
    edge) role=edge; ups="\"$(upstream o1 "$t")\", \"$(upstream o2 "$t")\"" ;;
    mid) role=edge; ups="\"$(upstream o1 "$t")\"" ;;
    edge2) role=edge; ups="\"$(upstream mid "$t")\"" ;;
  esac
  {
    # SIGTERM stops a node at once, as stop_node expects (no drain).
    printf '[server]\ndrain_grace_ms = 0\n'
    printf '[rtmp]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = "127.0.0.1:%s"\n' "${RTMP[$n]}" "${HTTP[$n]}"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[streams]\napps = ["live"]\n' "${ADMIN[$n]}"
    printf '[log]\nlevel = "info"\n[cluster]\nrole = "%s"\nnode_id = "%s"\n' "$role" "$n"
    if [[ $t == quic ]]; then
      printf 'tls_cert = "%s/node.pem"\ntls_key = "%s/node.key"\ntls_ca = "%s/ca.pem"\n' "$TLS" "$TLS" "$TLS"
      [[ -n ${QUIC[$n]:-} ]] && printf 'quic_listen = "127.0.0.1:%s"\n' "${QUIC[$n]}"
    fi
    if [[ $REGISTRY == 1 ]]; then
      printf '[cluster.registry]\nendpoints = ["http://127.0.0.1:%s"]\nprefix = "/bench"\nlease_ttl_s = 2\n' "$ETCD_CLIENT"
      [[ $n == edge ]] && ups=""
    fi
    [[ -n $ups ]] && printf '[cluster.apps.live]\nupstreams = [%s]\n' "$ups"
  } > "$f"
  echo "$f"
}

wait_port() { # node port: until that process (not a stale one) listens on the port
  local pid=${PID[$1]}
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { say "$1 exited at start (see $OUT/$1.log):"; head -4 "$OUT/$1.log" >&2; return 1; }
    ss -ltnpH "sport = :$2" | grep -q "pid=$pid," && return 0
    sleep 0.1
  done
  say "$1 does not listen on port $2"; return 1
}

start_node() { # node transport
  local f
  f=$(write_config "$1" "$2")
  NO_COLOR=1 taskset -c 0 "$SLUICE" serve --config "$f" >>"$OUT/$1.log" 2>&1 &
  PID[$1]=$!
  wait_port "$1" "${RTMP[$1]}"
  wait_port "$1" "${ADMIN[$1]}"
}

stop_node() { # node
  local pid=${PID[$1]:-}
  [[ -n $pid ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PID[$1]"
}

start_nginx() {
  cat > "$OUT/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log info;
load_module $RTMP_MODULE;
events { worker_connections 4096; }
rtmp {
  server {
    listen 127.0.0.1:${RTMP[nginx]};
    chunk_size 4096;
    application live {
      live on;
      record off;
      pull rtmp://127.0.0.1:${RTMP[o1]}/live;
    }
  }
}
CONF
  taskset -c 0 nginx -p "$OUT" -c "$OUT/nginx.conf" -e "$OUT/nginx-error.log" >>"$OUT/nginx.log" 2>&1 &
  PID[nginx]=$!
  wait_port nginx "${RTMP[nginx]}"
}

metric() { # node name: a counter summed over its labels
  curl -s --max-time 3 "http://127.0.0.1:${ADMIN[$1]}/metrics" \
    | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { print s + 0 }'
}

cb() { # sluice-cluster-bench ARGS... (bounded; its JSON line on stdout)
  timeout 600 taskset -c 1 "$CBENCH" "$@" --json --fixture "$FIXTURE"
}

# --- runs --------------------------------------------------------------------------------
run_transport() { # transport
  local t=$1 i killed name
  say "[$t] starting origins, edge, mid, edge2"
  for name in o1 o2 edge mid edge2; do
    start_node "$name" "$t" || { say "[$t] $name did not start: skipping $t"; stop_all; return 1; }
  done

  say "[$t] cold start: $STREAMS streams, 1 viewer each"
  cb cold --label "cold-$t$SUF" --prefix "cold-$t$SUF" --streams "$STREAMS" --viewers 1 \
    --origin "rtmp://127.0.0.1:${RTMP[o1]}/live" --edge "rtmp://127.0.0.1:${RTMP[edge]}/live" \
    --edge-admin "http://127.0.0.1:${ADMIN[edge]}" > "$OUT/cold-$t$SUF.json" || say "[$t] cold: checks failed (exit $?)"
  cat "$OUT/cold-$t$SUF.json"

  if (( BURST > 0 )); then
    say "[$t] one pull per stream: $STREAMS streams, $BURST viewers each"
    cb cold --label "burst-$t$SUF" --prefix "burst-$t$SUF" --streams "$STREAMS" --viewers "$BURST" \
      --origin "rtmp://127.0.0.1:${RTMP[o1]}/live" --edge "rtmp://127.0.0.1:${RTMP[edge]}/live" \
      --edge-admin "http://127.0.0.1:${ADMIN[edge]}" > "$OUT/burst-$t$SUF.json" || say "[$t] burst: checks failed (exit $?)"
    cat "$OUT/burst-$t$SUF.json"
  fi

  for ((i = 1; i <= REPS; i++)); do
    say "[$t] failover $i/$REPS"
    local map=()
    for name in o1 o2; do
      map+=(--kill-upstream "127.0.0.1:${RTMP[$name]}=${PID[$name]}")
      map+=(--kill-upstream "127.0.0.1:${QUIC[$name]}=${PID[$name]}")
    done
    local publish=(--publish "rtmp://127.0.0.1:${RTMP[o1]}/live/fo-$t-$i")
    if [[ $REGISTRY == 1 ]]; then
      # One origin has the stream at a time: the broadcaster moves at the kill.
      publish+=(--republish "rtmp://127.0.0.1:${RTMP[o2]}/live/fo-$t-$i")
    else
      publish+=(--publish "rtmp://127.0.0.1:${RTMP[o2]}/live/fo-$t-$i")
    fi
    cb failover --label "failover-$t$SUF-$i" --viewers "$FO_VIEWERS" --after-ms 3000 --observe-ms 3000 \
      --edge "rtmp://127.0.0.1:${RTMP[edge]}/live/fo-$t-$i" "${publish[@]}" \
      --edge-admin "http://127.0.0.1:${ADMIN[edge]}" "${map[@]}" \
      > "$OUT/failover-$t$SUF-$i.json" || say "[$t] failover $i: checks failed (exit $?)"
    jq -c 'del(.per_viewer)' "$OUT/failover-$t$SUF-$i.json" || true
    killed=$(jq -r '.killed_pid // empty' "$OUT/failover-$t$SUF-$i.json" 2>/dev/null || true)
    for name in o1 o2; do
      if [[ ${PID[$name]} == "$killed" ]]; then
        wait "$killed" 2>/dev/null || true
        unset "PID[$name]"
        say "[$t] restarting $name"
        start_node "$name" "$t" || { say "[$t] $name did not restart"; stop_all; return 1; }
      fi
    done
  done

  if (( TIER_VIEWERS > 0 )); then
    local play
    for tier in direct edge edge2; do
      case $tier in
        direct) play=o1 ;; edge) play=edge ;; edge2) play=edge2 ;;
      esac
      say "[$t] latency at $play (origin o1): $TIER_VIEWERS viewers, ${TIER_DURATION} s"
      timeout $((TIER_DURATION + 60)) taskset -c 1 "$BENCH" --json --label "tier-$t-$tier" \
        --viewers "$TIER_VIEWERS" --duration "$TIER_DURATION" --fixture "$FIXTURE" \
        --publish "rtmp://127.0.0.1:${RTMP[o1]}/live/tier-$t-$tier" \
        --play "rtmp://127.0.0.1:${RTMP[$play]}/live/tier-$t-$tier" --server-pid "${PID[$play]}" \
        > "$OUT/tier-$t-$tier.json" || say "[$t] tier $tier failed (exit $?)"
      jq -c '{label: .label, delivery_ratio, latency_p50_ms, latency_p99_ms, ttff_p99_ms, ts_offset_viewers, unmatched_frames, stalls}' \
        "$OUT/tier-$t-$tier.json" || true
    done
  fi

  for name in mid edge2; do
    echo "[$t] $name pull starts (one stream each): $(metric "$name" sluice_pull_starts_total)" > "$OUT/pulls-$t-$name.txt"
  done
  stop_all
}

stop_all() { local name; for name in edge2 mid edge o2 o1; do stop_node "$name"; done; }

# run_transport checks what must stop it (errexit does not apply inside an `if` condition).
failed=""
if [[ $REGISTRY == 1 ]]; then start_etcd; fi
for t in $TRANSPORT; do
  if ! run_transport "$t"; then failed+=" $t"; fi
done

if [[ $NGINX == 1 ]]; then
  say "reference: cold start through nginx-rtmp's edge pull, $STREAMS streams"
  start_node o1 rtmp
  start_nginx
  cb cold --label cold-nginx --prefix cold-nginx --streams "$STREAMS" --viewers 1 \
    --origin "rtmp://127.0.0.1:${RTMP[o1]}/live" --edge "rtmp://127.0.0.1:${RTMP[nginx]}/live" \
    > "$OUT/cold-nginx.json" || say "nginx: checks failed (exit $?)"
  cat "$OUT/cold-nginx.json"
  stop_node nginx
  stop_node o1
fi

# --- summary -----------------------------------------------------------------------------
echo
echo "summary (results, configs and node logs in $OUT):"
printf '%-22s %-28s %-28s %-14s %s\n' "cold start" "edge ttff p50/p99/max ms" "origin ttff p50/p99/max ms" "ratio p50/p99" "pulls/stream"
for f in "$OUT"/cold-*.json "$OUT"/burst-*.json; do
  [[ -s $f ]] || continue
  jq -r '[.label,
      "\(.edge_cold.ttff.p50_ms) / \(.edge_cold.ttff.p99_ms) / \(.edge_cold.ttff.max_ms) (n=\(.edge_cold.ttff.n), failed \(.edge_cold.failed))",
      "\(.origin_direct.ttff.p50_ms) / \(.origin_direct.ttff.p99_ms) / \(.origin_direct.ttff.max_ms)",
      "\(.ratio_p50) / \(.ratio_p99)",
      "\(.pulls_per_stream // "n/a")"] | @tsv' "$f" \
    | awk -F'\t' '{ printf "%-22s %-28s %-28s %-14s %s\n", $1, $2, $3, $4, $5 }'
done
echo
printf '%-22s %-22s %-18s %-14s %s\n' "failover" "kill->keyframe p50/max" "largest gap ms" "connected" "upstream"
for f in "$OUT"/failover-*.json; do
  [[ -s $f ]] || continue
  jq -r '[.label, "\(.kill_to_keyframe.p50_ms) / \(.kill_to_keyframe.max_ms)", "\(.max_gap_after_kill_ms)",
      "\(.all_stayed_connected)", "\(.killed_upstream) -> \(.upstream_after)"] | @tsv' "$f" \
    | awk -F'\t' '{ printf "%-22s %-22s %-18s %-14s %s\n", $1, $2, $3, $4, $5 }'
done
echo
printf '%-22s %-22s %-10s %-12s %s\n' "latency per tier" "latency p50/p99 ms" "delivery" "ttff p99 ms" "ts offset viewers / unmatched"
for f in "$OUT"/tier-*.json; do
  [[ -s $f ]] || continue
  jq -r '[.label, "\(.latency_p50_ms) / \(.latency_p99_ms)", "\(.delivery_ratio)", "\(.ttff_p99_ms)",
      "\(.ts_offset_viewers) / \(.unmatched_frames)"] | @tsv' "$f" \
    | awk -F'\t' '{ printf "%-22s %-22s %-10s %-12s %s\n", $1, $2, $3, $4, $5 }'
done
cat "$OUT"/pulls-*.txt 2>/dev/null | sed 's/^/  /' || true
if [[ -n $failed ]]; then say "did not run:$failed"; exit 1; fi
