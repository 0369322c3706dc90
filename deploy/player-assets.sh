#!/usr/bin/env bash
# Fetches the web player's libraries for Sluice's player page (`/play/APP/NAME`).
#
#   deploy/player-assets.sh DIR
#
# Puts hls.js (DIR/hls.min.js) and mpegts.js (DIR/mpegts.js), the pinned versions below,
# into DIR, taken from their npm packages with `npm pack` (so npm checks each tarball
# against the registry's integrity hash). Then set `player.assets_dir = "DIR"` and the page
# loads them from Sluice itself (`/play/assets/…`) instead of from `player.script_base`.
# Both libraries are Apache-2.0; their LICENSE files are copied beside them.
set -euo pipefail
HLS_JS_VERSION=1.7.4
MPEGTS_JS_VERSION=1.8.2

dir=${1:?usage: $0 DIR}
command -v npm >/dev/null || { echo "$0: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "hls.js@$HLS_JS_VERSION" "mpegts.js@$MPEGTS_JS_VERSION" >/dev/null)
mkdir "$work/hls" "$work/mpegts"
tar -xzf "$work/hls.js-$HLS_JS_VERSION.tgz" -C "$work/hls"
tar -xzf "$work/mpegts.js-$MPEGTS_JS_VERSION.tgz" -C "$work/mpegts"

# Into place by rename, so a server reading DIR never sees half a file.
install -m 0644 "$work/hls/package/dist/hls.min.js" "$dir/.hls.min.js.new"
install -m 0644 "$work/mpegts/package/dist/mpegts.js" "$dir/.mpegts.js.new"
install -m 0644 "$work/hls/package/LICENSE" "$dir/hls.js.LICENSE"
install -m 0644 "$work/mpegts/package/LICENSE" "$dir/mpegts.js.LICENSE"
mv -f "$dir/.hls.min.js.new" "$dir/hls.min.js"
mv -f "$dir/.mpegts.js.new" "$dir/mpegts.js"
echo "hls.js $HLS_JS_VERSION, mpegts.js $MPEGTS_JS_VERSION -> $dir"
