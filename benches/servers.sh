# Sourced by the bench scripts: one server at a time, started pinned to core 0 and stopped by
# its PID. The sourcing script sets `say`, OUT, SLUICE (the binary) and the ports
# SLUICE_RTMP, SLUICE_HTTP and SLUICE_ADMIN.

server_pid=""

# Stops the server we started, if it still runs (also from an EXIT trap).
stop_server() {
  [[ -n $server_pid ]] || return 0
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Refuses to start when one of the given ports is taken.
ports_free() { # port...
  local port
  for port in "$@"; do
    if ss -ltnH "sport = :$port" | grep -q .; then
      say "port $port is already in use: stop whatever listens there first"; return 1
    fi
  done
}

wait_port() { # port: until the server we started (not a stale one) listens on it
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || { say "the server exited at start"; return 1; }
    ss -ltnpH "sport = :$1" | grep -q "pid=$server_pid," && return 0
    sleep 0.1
  done
  say "the server does not listen on port $1"; return 1
}

start_sluice() { # config file or ""
  local args=(serve)
  [[ -n $1 ]] && args+=(--config "$1")
  SLUICE__RTMP__LISTEN=127.0.0.1:$SLUICE_RTMP SLUICE__HTTP__LISTEN=127.0.0.1:$SLUICE_HTTP \
    SLUICE__ADMIN__LISTEN=127.0.0.1:$SLUICE_ADMIN SLUICE__LOG__LEVEL=warn \
    taskset -c 0 "$SLUICE" "${args[@]}" 2>>"$OUT/sluice.log" &
  server_pid=$!
  wait_port "$SLUICE_RTMP"
}

profile() { # name -> config path ("" when the example does not exist: defaults)
  local f="config/examples/$1.toml"
  if [[ -e $f ]]; then echo "$f"; else say "$f missing: using the default config"; echo ""; fi
}
