#!/usr/bin/env bash
# Release builds: static Linux binaries of `sluice` for x86_64 and aarch64.
#
#   deploy/release.sh                          # both targets, the `release` profile
#   deploy/release.sh --target aarch64         # one target (x86_64 | aarch64; repeatable)
#   deploy/release.sh --profile release-check  # another cargo profile (the test's fast one)
#   deploy/release.sh --out-dir DIR --target-dir DIR
#
# Output, in --out-dir (default target/release-artifacts; archives of earlier runs there are
# removed first, so SHA256SUMS and the archives are this run's):
#   sluice-VERSION-ARCH-linux-musl.tar.gz   one folder of that name: the binary `sluice`,
#                                           README.md, config/sluice.toml, LICENSE* if any
#   SHA256SUMS                              `sha256sum -c SHA256SUMS` checks the archives
#
# How: the targets are Rust's `ARCH-unknown-linux-musl`, whose binaries link musl libc
# statically and so run on any Linux kernel of that architecture, whatever its libc (glibc of
# any age, musl, none). Cross-compiling and linking go through cargo-zigbuild, which uses Zig's
# `zig cc` as the C compiler (ring builds C and assembly for the target) and linker for every
# target, so no system cross toolchain or musl-gcc is needed. The archives are deterministic
# for given files: sorted entries, owner 0, mtimes from the last commit (SOURCE_DATE_EPOCH),
# gzip without a timestamp.
#
# What it installs when missing (once; later runs find them and install nothing):
#   - the rustup targets x86_64-unknown-linux-musl / aarch64-unknown-linux-musl (rustup)
#   - Zig and cargo-zigbuild from PyPI (`python3 -m pip install ziglang cargo-zigbuild`, the
#     versions pinned just below); an existing `zig` on PATH, or $ZIG, is used instead
#
# Needs: rustup + cargo, python3 with pip, tar, gzip, sha256sum. Run from anywhere.
# The cargo target dir is --target-dir, else $CARGO_TARGET_DIR, else the workspace's target/;
# the two targets share it, so build scripts and proc macros are built once for both.
set -euo pipefail

ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1

root="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
out_dir="$root/target/release-artifacts"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
arches=()

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --target) arches+=("${2:?--target needs x86_64 or aarch64}"); shift 2 ;;
    --target=*) arches+=("${1#*=}"); shift ;;
    --profile) profile="${2:?--profile needs a cargo profile}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --out-dir) out_dir="${2:?--out-dir needs a folder}"; shift 2 ;;
    --out-dir=*) out_dir="${1#*=}"; shift ;;
    --target-dir) target_dir="${2:?--target-dir needs a folder}"; shift 2 ;;
    --target-dir=*) target_dir="${1#*=}"; shift ;;
    -h | --help) usage 0 ;;
    *) echo "release.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[[ ${#arches[@]} -gt 0 ]] || arches=(x86_64 aarch64)
for arch in "${arches[@]}"; do
    case "$arch" in
    x86_64 | aarch64) ;;
    *) echo "release.sh: unknown target '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out_dir" "$target_dir"
out_dir="$(cd "$out_dir" && pwd)"
target_dir="$(cd "$target_dir" && pwd)"

log() { echo "release.sh: $*" >&2; }

# --- tools ---------------------------------------------------------------------------------

ensure_rust_target() {
    local triple="$1"
    if ! rustup target list --installed | grep -qx "$triple"; then
        log "rustup target add $triple"
        rustup target add "$triple"
    fi
}

pip_install() {
    log "python3 -m pip install $*"
    # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
    python3 -m pip install --quiet --disable-pip-version-check "$@" ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# Where pip puts console scripts for this python3 (not always on PATH, e.g. under pyenv or
# for a --user install).
pip_scripts_dirs() {
    python3 - <<'EOF'
import sysconfig, site, os
print(sysconfig.get_path("scripts"))
print(os.path.join(site.getuserbase(), "bin"))
EOF
}

find_cargo_zigbuild() {
    if command -v cargo-zigbuild >/dev/null 2>&1 && cargo-zigbuild --help >/dev/null 2>&1; then
        command -v cargo-zigbuild
        return
    fi
    local dir
    while read -r dir; do
        if [[ -x "$dir/cargo-zigbuild" ]]; then
            echo "$dir/cargo-zigbuild"
            return
        fi
    done < <(pip_scripts_dirs)
    return 1
}

ensure_zig() {
    # cargo-zigbuild finds Zig as $ZIG, `zig` on PATH, or `python3 -m ziglang` (the PyPI
    # package), in that order.
    if [[ -n "${ZIG:-}" ]] || command -v zig >/dev/null 2>&1; then
        return
    fi
    if ! python3 -m ziglang version >/dev/null 2>&1; then
        pip_install "ziglang==$ZIGLANG_VERSION"
    fi
    python3 -m ziglang version >/dev/null
}

ensure_cargo_zigbuild() {
    if ! zigbuild="$(find_cargo_zigbuild)"; then
        pip_install "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
        zigbuild="$(find_cargo_zigbuild)" || {
            log "cargo-zigbuild installed but not found on PATH or in pip's script folders"
            exit 1
        }
    fi
}

for arch in "${arches[@]}"; do
    ensure_rust_target "$arch-unknown-linux-musl"
done
ensure_zig
ensure_cargo_zigbuild

# --- build ---------------------------------------------------------------------------------

cd "$root"
pkgid="$(cargo pkgid --offline -p sluice 2>/dev/null || cargo pkgid -p sluice)"
version="${pkgid##*[#@]}"
# For the archives' mtimes only: not exported, as ring's build script reruns (and everything
# above it rebuilds) whenever SOURCE_DATE_EPOCH changes, i.e. at every commit.
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"

# Only this run's artefacts: a stale archive of another version or profile would otherwise end
# up in SHA256SUMS.
rm -f "$out_dir"/sluice-*-linux-musl.tar.gz "$out_dir/SHA256SUMS"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# Cargo names the output folder of the `dev` profile `debug`; every other after the profile.
profile_dir="$profile"
[[ "$profile" != dev ]] || profile_dir=debug

archives=()
for arch in "${arches[@]}"; do
    triple="$arch-unknown-linux-musl"
    log "building sluice $version for $triple (profile $profile)"
    "$zigbuild" zigbuild --locked --profile "$profile" --target "$triple" \
        --target-dir "$target_dir" -p sluice --bin sluice

    name="sluice-$version-$arch-linux-musl"
    dir="$stage/$name"
    mkdir -p "$dir/config"
    cp "$target_dir/$triple/$profile_dir/sluice" "$dir/sluice"
    cp README.md "$dir/"
    cp config/sluice.toml "$dir/config/"
    for license in LICENSE*; do
        if [[ -f "$license" ]]; then cp "$license" "$dir/"; fi
    done
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$epoch" -cf - "$name" | gzip -9n >"$out_dir/$name.tar.gz"
    archives+=("$name.tar.gz")
    log "wrote $out_dir/$name.tar.gz"
done

(cd "$out_dir" && sha256sum "${archives[@]}" >SHA256SUMS)
log "wrote $out_dir/SHA256SUMS"
cat "$out_dir/SHA256SUMS"
