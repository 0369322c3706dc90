#!/usr/bin/env bash
# Generates the load generator's fixture on demand (it is not checked in: ~3 MB):
#   benches/make-fixture.sh [OUT]        # default OUT: target/bench/bench_720p30.flv
# A 720p30 H.264 (Main, no B-frames) + AAC LC stereo FLV, 10 s long, about 2.5 Mbit/s
# CBR (x264 nal-hrd=cbr pads with filler so every second carries the full rate, even on the
# very compressible testsrc2 picture), a keyframe every GOP_S seconds (default 2, OBS's
# usual setting) and no scene-cut keyframes. Needs Debian's ffmpeg (apt-get install ffmpeg).
# Override: FFMPEG=/path/to/ffmpeg GOP_S=1 VIDEO_KBPS=2400 AUDIO_KBPS=128 DURATION=10.
# Does nothing when OUT exists and is newer than this script (FORCE=1 regenerates).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/bench/bench_720p30.flv}
FFMPEG=${FFMPEG:-ffmpeg}
GOP_S=${GOP_S:-2}
VIDEO_KBPS=${VIDEO_KBPS:-2400}
AUDIO_KBPS=${AUDIO_KBPS:-128}
DURATION=${DURATION:-10}

if [[ -z ${FORCE:-} && -s $out && $out -nt $0 ]]; then
  echo "$out"
  exit 0
fi
if ! command -v "$FFMPEG" >/dev/null; then
  echo "make-fixture: $FFMPEG not found (apt-get install ffmpeg)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$.flv"
trap 'rm -f "$tmp"' EXIT
"$FFMPEG" -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=1280x720:rate=30:duration=$DURATION" \
  -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=$DURATION" \
  -map 0:v -map 1:a -af aformat=channel_layouts=stereo \
  -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p \
  -g $((30 * GOP_S)) -keyint_min $((30 * GOP_S)) -sc_threshold 0 -bf 0 \
  -b:v "${VIDEO_KBPS}k" -minrate "${VIDEO_KBPS}k" -maxrate "${VIDEO_KBPS}k" \
  -bufsize "$((VIDEO_KBPS / 2))k" -x264-params nal-hrd=cbr:force-cfr=1 \
  -c:a aac -b:a "${AUDIO_KBPS}k" -ar 44100 -ac 2 \
  -map_metadata -1 -t "$DURATION" -f flv "$tmp"
mv "$tmp" "$out"
echo "$out"
