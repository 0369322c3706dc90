//! `deploy/release.sh` builds what it says: one run of the script (both targets, one shared
//! cargo target dir, so build scripts and proc macros are built once), then for each archive:
//!
//! - `SHA256SUMS` names exactly the archives, and `sha256sum -c` accepts it;
//! - the archive holds `sluice-VERSION-ARCH-linux-musl/` with `sluice`, `README.md` and
//!   `config/sluice.toml` (and any `LICENSE*` of the repo);
//! - the binary's ELF header, read here byte by byte: 64-bit little-endian, `e_machine` 62
//!   (x86_64) or 183 (aarch64), statically linked: no `PT_INTERP` program header and no
//!   `DT_NEEDED` entry in its dynamic section (a static-pie has one, without `DT_NEEDED`). The
//!   same check on the test's own (glibc, dynamic) `sluice` must fail, so it can;
//! - the binary runs: `--version` prints `sluice VERSION` and `check-config` accepts the
//!   archive's `config/sluice.toml`: natively for the host's architecture, under Debian's
//!   `qemu-ARCH-static` for the other (installed with apt when missing and root, about 60 MB;
//!   otherwise that run is skipped with the reason printed).
//!
//! The script runs with the `release-check` profile (opt-level 0, no debug info: what is checked
//! here is the target, the linker and static linking, which it shares with `release`), in
//! `$CARGO_TARGET_TMPDIR/release-check`. `SLUICE_RELEASE_PROFILE=release` checks the real profile.
//! Both targets are built by default, in CI too (together about three CPU-minutes cold, see the
//! README's "Release builds"); `SLUICE_RELEASE_AARCH64=0` leaves aarch64 out.

#![allow(clippy::print_stderr)] // timings and skip reasons go to the test log

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_testkit::process::run;
use sluice_testkit::tools::qemu_user;
use tokio::time::Instant;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// A cold build of both targets takes minutes on two busy cores; this only bounds a hang.
const BUILD_DEADLINE: Duration = Duration::from_secs(50 * 60);
const RUN_DEADLINE: Duration = Duration::from_secs(120);

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// An architecture the script builds: its name in the script, file names and
/// `std::env::consts::ARCH`, and its ELF machine number.
#[derive(Debug, Clone, Copy)]
struct Arch {
    name: &'static str,
    machine: u16,
}

const X86_64: Arch = Arch {
    name: "x86_64",
    machine: EM_X86_64,
};
const AARCH64: Arch = Arch {
    name: "aarch64",
    machine: EM_AARCH64,
};

/// How an ELF file is linked, as far as the test cares.
#[derive(Debug, PartialEq, Eq)]
struct Elf {
    machine: u16,
    /// `PT_INTERP`: the dynamic loader the kernel must start first.
    interpreter: Option<String>,
    /// `DT_NEEDED` entries (as string-table offsets: only their presence matters).
    needed: usize,
}

impl Elf {
    fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed == 0
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn usize_at(b: &[u8], at: usize) -> usize {
    usize::try_from(u64_at(b, at)).expect("offset fits usize")
}

/// Parses the parts of a 64-bit little-endian ELF file's header, program headers and dynamic
/// section that say what it runs on and what it needs at load time. Panics (naming `what`) on
/// anything else.
fn parse_elf(what: &str, b: &[u8]) -> Elf {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;

    assert!(
        b.len() >= 64,
        "{what}: {} bytes, shorter than an ELF header",
        b.len()
    );
    assert_eq!(&b[..4], b"\x7fELF", "{what}: no ELF magic");
    assert_eq!(b[4], 2, "{what}: EI_CLASS {} is not ELFCLASS64", b[4]);
    assert_eq!(b[5], 1, "{what}: EI_DATA {} is not little-endian", b[5]);
    let e_type = u16_at(b, 0x10);
    // ET_EXEC, or ET_DYN for a (static-)PIE.
    assert!(
        e_type == 2 || e_type == 3,
        "{what}: e_type {e_type} is not an executable"
    );
    let machine = u16_at(b, 0x12);
    let phoff = usize_at(b, 0x20);
    let phentsize = usize::from(u16_at(b, 0x36));
    let phnum = usize::from(u16_at(b, 0x38));
    assert_eq!(phentsize, 56, "{what}: e_phentsize {phentsize}");
    assert!(
        phoff + phnum * phentsize <= b.len(),
        "{what}: program headers past the end of the file"
    );

    let mut elf = Elf {
        machine,
        interpreter: None,
        needed: 0,
    };
    for i in 0..phnum {
        let ph = &b[phoff + i * phentsize..][..phentsize];
        let offset = usize_at(ph, 8);
        let size = usize_at(ph, 32);
        assert!(
            offset + size <= b.len(),
            "{what}: segment {i} past the end of the file"
        );
        let data = &b[offset..offset + size];
        match u32_at(ph, 0) {
            PT_INTERP => {
                let path = data.split(|&c| c == 0).next().unwrap_or_default();
                elf.interpreter = Some(String::from_utf8_lossy(path).into_owned());
            }
            PT_DYNAMIC => {
                for entry in data.chunks_exact(16) {
                    match u64_at(entry, 0) {
                        DT_NULL => break,
                        DT_NEEDED => elf.needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    elf
}

/// Runs `binary` (under `runner` if given) with `args`; its stdout.
fn run_binary(runner: Option<&Path>, binary: &Path, args: &[&str]) -> String {
    let mut cmd = match runner {
        Some(runner) => {
            let mut cmd = Command::new(runner);
            cmd.arg(binary);
            cmd
        }
        None => Command::new(binary),
    };
    cmd.args(args);
    let out = run(&mut cmd, RUN_DEADLINE)
        .unwrap_or_else(|e| panic!("{} {}: {e:#}", binary.display(), args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn aarch64_enabled() -> bool {
    std::env::var("SLUICE_RELEASE_AARCH64").map_or(true, |v| v != "0")
}

#[test]
fn release_script_builds_static_binaries_for_each_architecture() {
    // The check itself must be able to fail: the test's own binary is glibc-linked.
    let host = parse_elf(
        "the test's own sluice",
        &std::fs::read(env!("CARGO_BIN_EXE_sluice")).expect("the test's own sluice"),
    );
    assert!(
        !host.is_static(),
        "the host (glibc) sluice read as static: {host:?}"
    );

    let mut arches = vec![X86_64];
    if aarch64_enabled() {
        arches.push(AARCH64);
    } else {
        eprintln!("release: aarch64 skipped: SLUICE_RELEASE_AARCH64=0");
    }
    // The one thing this test cannot get from the project's registries (crates.io, PyPI,
    // Debian): the musl standard libraries, from Rust's download server through rustup. A
    // machine that cannot reach it cannot build these targets at all; that is said and the
    // test ends, while every failure after it fails the test.
    let triples: Vec<String> = arches
        .iter()
        .map(|a| format!("{}-unknown-linux-musl", a.name))
        .collect();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add"]).args(&triples);
    if let Err(e) = run(&mut rustup, BUILD_DEADLINE) {
        eprintln!("release: SKIPPED: rustup cannot add {triples:?} here: {e:#}");
        return;
    }
    let profile =
        std::env::var("SLUICE_RELEASE_PROFILE").unwrap_or_else(|_| "release-check".to_owned());
    // Apart from the test's own target dir: the outer `cargo test` may still hold its lock.
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("release-{profile}"));
    let target_dir = work.join("target");
    let out_dir = work.join("artifacts");

    let mut script = Command::new("bash");
    script
        .arg(Path::new(ROOT).join("deploy/release.sh"))
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--out-dir")
        .arg(&out_dir);
    for arch in &arches {
        script.args(["--target", arch.name]);
    }
    let started = Instant::now();
    run(&mut script, BUILD_DEADLINE).unwrap_or_else(|e| panic!("deploy/release.sh: {e:#}"));
    eprintln!(
        "release: deploy/release.sh --profile {profile} ({}) took {:.0?}",
        arches.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        started.elapsed()
    );

    let names: Vec<String> = arches
        .iter()
        .map(|a| format!("sluice-{VERSION}-{}-linux-musl", a.name))
        .collect();
    let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().nth(1).expect("HASH  NAME"))
        .collect();
    let archives: Vec<String> = names.iter().map(|n| format!("{n}.tar.gz")).collect();
    assert_eq!(listed, archives, "SHA256SUMS:\n{sums}");
    run(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&out_dir),
        RUN_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("sha256sum -c SHA256SUMS: {e:#}"));

    let licenses: Vec<String> = std::fs::read_dir(ROOT)
        .expect("repo root")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("LICENSE"))
        .collect();
    let unpacked = tempfile::tempdir().expect("tempdir");
    let mut binaries = Vec::new();
    for (arch, name) in arches.iter().zip(&names) {
        let archive = out_dir.join(format!("{name}.tar.gz"));
        let listing = run(Command::new("tar").arg("tzf").arg(&archive), RUN_DEADLINE)
            .unwrap_or_else(|e| panic!("tar tzf {}: {e:#}", archive.display()));
        let mut entries: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(str::to_owned)
            .collect();
        entries.sort();
        let mut expected: Vec<String> = ["README.md", "config/sluice.toml", "sluice"]
            .iter()
            .map(|f| (*f).to_owned())
            .chain(licenses.iter().cloned())
            .map(|f| format!("{name}/{f}"))
            .collect();
        expected.sort();
        assert_eq!(entries, expected, "{}", archive.display());
        run(
            Command::new("tar")
                .arg("xzf")
                .arg(&archive)
                .arg("-C")
                .arg(unpacked.path()),
            RUN_DEADLINE,
        )
        .unwrap_or_else(|e| panic!("tar xzf {}: {e:#}", archive.display()));
        let dir = unpacked.path().join(name);
        assert_eq!(
            std::fs::read(dir.join("config/sluice.toml")).expect("config"),
            std::fs::read(Path::new(ROOT).join("config/sluice.toml")).expect("repo config"),
            "{name}: config/sluice.toml differs from the repo's"
        );

        let binary = dir.join("sluice");
        let bytes = std::fs::read(&binary).expect("binary");
        let elf = parse_elf(name, &bytes);
        assert_eq!(
            elf.machine, arch.machine,
            "{name}: e_machine {} is not {}'s {}",
            elf.machine, arch.name, arch.machine
        );
        assert!(elf.is_static(), "{name}: not statically linked: {elf:?}");
        eprintln!(
            "release: {name}: ELF64 e_machine {}, static, {} bytes",
            elf.machine,
            bytes.len()
        );
        binaries.push((*arch, name.clone(), dir, bytes));
    }
    if let [(_, a, _, a_bytes), (_, b, _, b_bytes)] = binaries.as_slice() {
        assert_ne!(a_bytes, b_bytes, "{a} and {b} are the same file");
    }

    for (arch, name, dir, _) in &binaries {
        let runner = if arch.name == std::env::consts::ARCH {
            None
        } else {
            match qemu_user(arch.name) {
                Ok(qemu) => Some(qemu),
                Err(why) => {
                    eprintln!("release: not running {name}: {why}");
                    continue;
                }
            }
        };
        let binary = dir.join("sluice");
        let version = run_binary(runner.as_deref(), &binary, &["--version"]);
        assert_eq!(
            version.trim(),
            format!("sluice {VERSION}"),
            "{name} --version"
        );
        let config = dir.join("config/sluice.toml");
        let checked = run_binary(
            runner.as_deref(),
            &binary,
            &["check-config", config.to_str().expect("UTF-8 path")],
        );
        assert!(
            checked.trim_end().ends_with(": ok"),
            "{name} check-config: {checked}"
        );
        eprintln!(
            "release: {name} ran{}: {}",
            runner
                .as_ref()
                .map(|r| format!(" under {}", r.display()))
                .unwrap_or_default(),
            version.trim()
        );
    }
}
