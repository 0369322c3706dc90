#!/bin/sh
# Regenerates the FLV fixtures used by sluice-media's tests: 1 s of ffmpeg test pattern per
# codec pair, cut to < 4 KiB by keeping the leading tags that fit (the sequence headers always
# do). Needs an ffmpeg with libx264/libx265/libsvtav1/libvpx-vp9/libopus/libmp3lame and the
# enhanced-FLV muxer (ffmpeg >= 7); FFMPEG overrides the binary.
set -eu
cd "$(dirname "$0")"
FF=${FFMPEG:-ffmpeg}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
V="-f lavfi -i testsrc=rate=25"
A="-f lavfi -i sine=frequency=440"
enc() { name=$1; shift; "$FF" -v error -y "$@" -t 1 -pix_fmt "${PIX:-yuv420p}" -f flv "$TMP/$name.flv"; }
enc h264_aac $V:size=320x240 $A:sample_rate=44100 -c:v libx264 -profile:v high -level 3.1 -bf 2 -c:a aac -ac 2
enc h264_mp3 $V:size=176x144 $A:sample_rate=22050 -c:v libx264 -profile:v baseline -level 2.0 -c:a libmp3lame -ac 1
PIX=yuv444p enc h264_444 $V:size=318x238 -c:v libx264 -profile:v high444
enc hevc_opus $V:size=320x240 $A:sample_rate=48000 -c:v libx265 -x265-params log-level=none -c:a libopus -ac 2
PIX=yuv420p10le enc hevc10 $V:size=320x240 -c:v libx265 -x265-params log-level=none
enc av1_aac $V:size=320x240 $A:sample_rate=48000 -c:v libsvtav1 -svtav1-params log-level=0 -c:a aac -ac 1
enc vp9 $V:size=320x240 -c:v libvpx-vp9
for f in "$TMP"/*.flv; do
python3 - "$f" "$(basename "$f")" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
d = open(src, 'rb').read()
out, p = bytearray(d[:13]), 13
while p + 11 <= len(d):
    tag = d[p:p + 15 + int.from_bytes(d[p + 1:p + 4], 'big')]
    p += len(tag)
    if len(out) + len(tag) <= 4000:
        out += tag
open(dst, 'wb').write(out)
PY
done
