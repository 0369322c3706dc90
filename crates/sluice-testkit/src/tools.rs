//! The real clients the tests drive, found once per process and installed when missing.
//!
//! * [`ffmpeg5`] / [`ffprobe`]: Debian 12's ffmpeg 5.1 (`apt-get install ffmpeg`). Legacy
//!   RTMP/FLV only: it cannot demux enhanced FLV (HEVC/AV1/Opus) — its ffprobe misreads an
//!   enhanced HEVC video tag as codec "vp6f".
//! * [`curl`]: Debian 12's curl (`apt-get install curl`; OpenSSL and nghttp2, so HTTPS and
//!   HTTP/2).
//! * [`etcd`]: Debian's etcd server (`apt-get install etcd-server`), for the stream
//!   registry's tests (see [`crate::etcd`]).
//! * [`ffmpeg_modern`]: the static ffmpeg inside the PyPI package `imageio-ffmpeg`
//!   (`python3 -m pip install imageio-ffmpeg`); it muxes and demuxes enhanced FLV/RTMP. It has
//!   no ffprobe: see [`crate::probe::probe_via_modern`].
//!
//! * [`qemu_user`]: Debian's `qemu-ARCH-static` user-mode emulators (`apt-get install
//!   qemu-user-static`, about 60 MB), to run another architecture's static binaries; unlike
//!   the others it never panics: where it cannot be had it says why, for the test to skip.
//!
//! Environment overrides (skip lookup and installation): `SLUICE_FFMPEG5`, `SLUICE_FFPROBE`,
//! `SLUICE_FFMPEG_MODERN`, `SLUICE_ETCD`.
//!
//! When a tool is missing and the process runs as root (CI), it is installed; installs are
//! serialised across concurrently running test binaries by an exclusive `flock` on
//! [`INSTALL_LOCK`], and each process re-checks after taking the lock. Not root: panic with the
//! command to run.

#![allow(clippy::print_stderr)] // progress of multi-minute installs goes to the test log

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Lock file that serialises tool installs across processes.
pub const INSTALL_LOCK: &str = "/tmp/sluice-testkit-install.lock";

const DEBIAN_FFMPEG: &str = "/usr/bin/ffmpeg";
const DEBIAN_FFPROBE: &str = "/usr/bin/ffprobe";

/// Debian's ffmpeg 5.1 (`/usr/bin/ffmpeg`), installed with apt if missing.
pub fn ffmpeg5() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        from_env("SLUICE_FFMPEG5").unwrap_or_else(|| debian_tool(DEBIAN_FFMPEG, "ffmpeg"))
    })
}

/// Debian's ffprobe 5.1 (`/usr/bin/ffprobe`), installed with apt if missing.
pub fn ffprobe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        from_env("SLUICE_FFPROBE").unwrap_or_else(|| debian_tool(DEBIAN_FFPROBE, "ffmpeg"))
    })
}

/// Debian's curl (`/usr/bin/curl`), installed with apt if missing.
pub fn curl() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| debian_tool("/usr/bin/curl", "curl"))
}

/// Debian's etcd server (`/usr/bin/etcd`, package `etcd-server`), installed with apt if
/// missing; `SLUICE_ETCD` overrides.
pub fn etcd() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        from_env("SLUICE_ETCD").unwrap_or_else(|| debian_tool("/usr/bin/etcd", "etcd-server"))
    })
}

/// Debian's `/usr/bin/qemu-{arch}-static` (`arch` as in `std::env::consts::ARCH`, e.g.
/// `aarch64`), installed with apt (package `qemu-user-static`) if missing and running as root.
/// `Err` says why it is not available, for the caller to skip with that reason.
pub fn qemu_user(arch: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(format!("/usr/bin/qemu-{arch}-static"));
    if path.is_file() {
        return Ok(path);
    }
    if !is_root() {
        return Err(format!(
            "{} is missing and this is not root: apt-get install qemu-user-static",
            path.display()
        ));
    }
    let mut result = Ok(());
    with_install_lock(|| {
        if !path.is_file() {
            result = try_apt_install(&["qemu-user-static"]);
        }
    });
    result?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "qemu-user-static installed but has no {}",
            path.display()
        ))
    }
}

/// The modern static ffmpeg from `imageio-ffmpeg`, installed with pip if missing.
pub fn ffmpeg_modern() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| from_env("SLUICE_FFMPEG_MODERN").unwrap_or_else(modern_ffmpeg))
}

/// First line of `<path> -version`, e.g. `ffmpeg version 5.1.9-0+deb12u1 Copyright …`.
/// Panics if the tool cannot be run.
pub fn version(path: &Path) -> String {
    let out = crate::process::run(Command::new(path).arg("-version"), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{} -version: {e:#}", path.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn from_env(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    Some(path)
}

/// `path`, from Debian's `package`, installed if missing.
fn debian_tool(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_file() {
        return path;
    }
    require_root(&format!(
        "{} is missing: install Debian's {package} (apt-get install {package})",
        path.display()
    ));
    with_install_lock(|| {
        if path.is_file() {
            return;
        }
        apt_install(&[package]);
    });
    assert!(
        path.is_file(),
        "{} still missing after apt-get install {package}",
        path.display()
    );
    path
}

fn modern_ffmpeg() -> PathBuf {
    if let Some(path) = imageio_ffmpeg_exe() {
        return path;
    }
    require_root(
        "the modern ffmpeg is missing: install it with `python3 -m pip install imageio-ffmpeg` \
         (or set SLUICE_FFMPEG_MODERN=/path/to/a/recent/ffmpeg)",
    );
    with_install_lock(|| {
        if imageio_ffmpeg_exe().is_some() {
            return;
        }
        let pip = |extra: &[&str]| {
            eprintln!(
                "sluice-testkit: python3 -m pip install imageio-ffmpeg {}",
                extra.join(" ")
            );
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "imageio-ffmpeg",
                ])
                .args(extra)
                .status()
                .is_ok_and(|s| s.success())
        };
        if pip(&[]) || pip(&["--break-system-packages"]) {
            return;
        }
        // Fresh Debian: python3 and/or pip may not be there at all.
        apt_install(&["python3-pip"]);
        assert!(
            pip(&["--break-system-packages"]) || pip(&[]),
            "python3 -m pip install imageio-ffmpeg failed"
        );
    });
    imageio_ffmpeg_exe().expect("imageio-ffmpeg installed but its ffmpeg binary was not found")
}

fn imageio_ffmpeg_exe() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub(crate) fn require_root(what: &str) {
    assert!(
        is_root(),
        "sluice-testkit: {what}; not running as root, so not installing it myself"
    );
}

pub(crate) fn apt_install(packages: &[&str]) {
    if let Err(e) = try_apt_install(packages) {
        panic!("{e}");
    }
}

fn try_apt_install(packages: &[&str]) -> Result<(), String> {
    let apt = |args: &[&str]| {
        eprintln!("sluice-testkit: apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            // Wait for another apt/dpkg (e.g. a provisioning script) instead of failing.
            .args(["-o", "DPkg::Lock::Timeout=900"])
            .args(args)
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("apt-get {} failed: {other:?}", args.join(" "))),
        }
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)
}

/// Runs `f` holding the exclusive cross-process install lock.
pub(crate) fn with_install_lock(f: impl FnOnce()) {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(INSTALL_LOCK)
        .unwrap_or_else(|e| panic!("opening {INSTALL_LOCK}: {e}"));
    flock_exclusive(&file);
    f();
    // Closing the file releases the lock (also if `f` panics and unwinds).
    drop(file);
}

#[allow(unsafe_code)]
fn flock_exclusive(file: &File) {
    loop {
        // SAFETY: flock(2) on a file descriptor we own for the duration of the call; no memory
        // is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            panic!("flock {INSTALL_LOCK}: {err}");
        }
    }
}
