#!/usr/bin/env bash
# Runs every cargo-fuzz target listed in fuzz/Cargo.toml for a bounded time each.
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
# Only a stable toolchain is installed, so RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz
# needs. Exits non-zero if any target finds a crash (artifacts land in fuzz/artifacts/TARGET).
set -euo pipefail

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [seconds-per-target]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

targets=$(sed -n 's/^name *= *"\(.*\)"/\1/p' Cargo.toml | grep -vx 'sluice-fuzz' || true)
if [ -z "$targets" ]; then
  echo "no [[bin]] targets in fuzz/Cargo.toml" >&2
  exit 1
fi

failed=()
for t in $targets; do
  echo "==> fuzzing $t for ${secs}s"
  if ! cargo fuzz run "$t" -- -max_total_time="$secs"; then
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashes or build failures in: ${failed[*]}" >&2
  exit 1
fi
echo "all targets ran ${secs}s without a crash: $(echo $targets)"
