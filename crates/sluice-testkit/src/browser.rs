//! A real browser for tests of the player page: Debian's headless Chromium driven by
//! `playwright-core` (over CDP) through `browser/play.mjs`.
//!
//! Everything is found or installed on first use, like [`crate::tools`] (same lock, root
//! only; not root: panic with what to install):
//! * [`chromium`]: `/usr/bin/chromium` (`apt-get install chromium`);
//! * [`playwright`]: `playwright-core` [`PLAYWRIGHT_CORE`], installed with npm into
//!   [`cache_dir`] (under the cargo target directory, so it is reused across runs); it brings
//!   no browser of its own;
//! * [`player_assets`]: hls.js and mpegts.js, fetched by `deploy/player-assets.sh` into
//!   [`cache_dir`], for `player.assets_dir`.
//!
//! Environment overrides (skip lookup and installation): `SLUICE_CHROMIUM`,
//! `SLUICE_PLAYWRIGHT` (a directory with `node_modules/playwright-core`),
//! `SLUICE_PLAYER_ASSETS`, and `SLUICE_BROWSER_CACHE` for the cache directory itself.
//!
//! [`play_page`] (the player page) and [`drive_page`] (any page, step by step: waits,
//! evaluations, form input, screenshots measured by the browser's own PNG decoder) start
//! Chromium themselves (fresh profile, headless, muted autoplay allowed) as a [`Child`], so it
//! is killed by PID whatever happens, and have their script (`browser/play.mjs`,
//! `browser/page.mjs`, with what they share in `browser/session.mjs`) connect to it.

#![allow(clippy::print_stderr)] // progress of first-use installs goes to the test log

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::process::{self, Child};
use crate::tools::{apt_install, require_root, with_install_lock};

/// The pinned `playwright-core` (the driver only: the browser is Debian's).
pub const PLAYWRIGHT_CORE: &str = "1.65.2";

const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";
/// The page-driving script, kept beside this crate's sources.
const PLAY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/play.mjs");
/// The step-driving script (see [`drive_page`]).
const PAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/page.mjs");
const ASSETS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/player-assets.sh");
/// How long Chromium may take to open its DevTools port.
const BROWSER_START: Duration = Duration::from_secs(30);
/// What the script may take beyond the requested duration: page load and waiting to play.
const PLAY_SLACK: Duration = Duration::from_secs(45);
const NPM_TIMEOUT: Duration = Duration::from_secs(600);

/// What [`play_page`] saw.
#[derive(Debug, Clone)]
pub struct PlayReport {
    /// The video played (`sluicePlayer.state()` was `playing` and its time moved).
    pub playing: bool,
    /// From navigation to playing.
    pub time_to_play: Option<Duration>,
    /// `sluicePlayer.engine()`: `hls.js`, `native` or `mpegts.js`.
    pub engine: Option<String>,
    /// `sluicePlayer.state()` at the end.
    pub state: Option<String>,
    /// Screenshots of the video element, in order.
    pub screenshots: Vec<Screenshot>,
    /// The decoded frame differed between screenshots.
    pub picture_changed: bool,
    /// `sluicePlayer.latency()` samples in seconds, every ~250 ms while playing.
    pub latency: Vec<f64>,
    /// Console errors and warnings, page errors, failed requests, the player's own errors.
    pub errors: Vec<String>,
    /// A screenshot of the whole page (status line included) at the end, when it played.
    pub page_screenshot: Option<PathBuf>,
    /// The whole JSON the script printed.
    pub raw: Value,
}

/// One screenshot.
#[derive(Debug, Clone)]
pub struct Screenshot {
    /// The PNG file.
    pub path: PathBuf,
    /// SHA-256 of the PNG (the element as shown, controls included).
    pub sha256: String,
    /// Hash of the decoded video frame alone, scaled down.
    pub frame_hash: String,
    /// The video's currentTime when it was taken.
    pub current_time: f64,
}

impl PlayReport {
    /// The median latency sample, if any.
    pub fn median_latency(&self) -> Option<f64> {
        let mut samples = self.latency.clone();
        samples.sort_by(f64::total_cmp);
        samples.get(samples.len() / 2).copied()
    }

    /// The largest latency sample, if any.
    pub fn max_latency(&self) -> Option<f64> {
        self.latency.iter().copied().reduce(f64::max)
    }

    fn from_json(raw: Value) -> anyhow::Result<PlayReport> {
        let strings = |key: &str| -> Vec<String> {
            raw[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let screenshots = raw["screenshots"]
            .as_array()
            .context("no screenshots array")?
            .iter()
            .map(|s| Screenshot {
                path: PathBuf::from(s["path"].as_str().unwrap_or_default()),
                sha256: s["sha256"].as_str().unwrap_or_default().to_owned(),
                frame_hash: s["frameHash"].as_str().unwrap_or_default().to_owned(),
                current_time: s["currentTime"].as_f64().unwrap_or_default(),
            })
            .collect();
        Ok(PlayReport {
            playing: raw["playing"].as_bool().context("no `playing`")?,
            time_to_play: raw["timeToPlayMs"].as_u64().map(Duration::from_millis),
            engine: raw["engine"].as_str().map(str::to_owned),
            state: raw["state"].as_str().map(str::to_owned),
            screenshots,
            picture_changed: raw["pictureChanged"].as_bool().unwrap_or(false),
            latency: raw["latency"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            errors: strings("errors"),
            page_screenshot: raw["pageScreenshot"].as_str().map(PathBuf::from),
            raw,
        })
    }
}

/// Opens `url` in a fresh headless Chromium, waits for the player page's video to play, and
/// watches it for `duration` (5 screenshots spread over it, latency sampled throughout).
/// Blocking (run it with `spawn_blocking` from async tests). Errors when the browser or the
/// script could not run at all; a page that never plays is a report with `playing: false`.
pub fn play_page(url: &str, duration: Duration) -> anyhow::Result<PlayReport> {
    let mut session = Session::start()?;
    let args = serde_json::json!({
        "playwright": session.playwright.join("node_modules/playwright-core"),
        "cdp": session.cdp(),
        "url": url,
        "durationMs": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        "shots": 5,
        "outDir": session.run.join("shots"),
        "timeoutMs": u64::try_from((duration + PLAY_SLACK).as_millis()).unwrap_or(u64::MAX),
    });
    let line = session.script(PLAY_SCRIPT, &args, duration + PLAY_SLACK)?;
    PlayReport::from_json(serde_json::from_str(&line).context("play.mjs report")?)
}

/// One step of [`drive_page`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Opens a URL (waits for its `load` event).
    Goto(String),
    /// Resizes the page to width × height CSS pixels (the window is 1280×900).
    Viewport(u32, u32),
    /// Waits until a JavaScript expression is truthy (polled every 100 ms).
    WaitFor(String),
    /// Evaluates a JavaScript expression; its JSON value goes to [`PageReport::values`].
    Eval(String),
    /// Types text into the input a CSS selector finds.
    Fill(String, String),
    /// Clicks what a CSS selector finds.
    Click(String),
    /// A screenshot of the whole page, named (`NAME.png`), measured into
    /// [`PageReport::shots`].
    Screenshot(String),
}

impl Step {
    fn json(&self) -> Value {
        use serde_json::json;
        match self {
            Step::Goto(url) => json!({ "goto": url }),
            Step::Viewport(w, h) => json!({ "viewport": [w, h] }),
            Step::WaitFor(expr) => json!({ "waitFor": expr }),
            Step::Eval(expr) => json!({ "eval": expr }),
            Step::Fill(selector, text) => json!({ "fill": [selector, text] }),
            Step::Click(selector) => json!({ "click": selector }),
            Step::Screenshot(name) => json!({ "screenshot": name }),
        }
    }
}

/// What [`drive_page`] found.
#[derive(Debug, Clone)]
pub struct PageReport {
    /// Steps that completed.
    pub completed: usize,
    /// The step that failed, and why (a wait that timed out, a selector not found).
    pub failure: Option<String>,
    /// The values of the [`Step::Eval`] steps, in order.
    pub values: Vec<Value>,
    /// The screenshots, in order.
    pub shots: Vec<PageShot>,
    /// Console errors and warnings, page errors, failed requests.
    pub errors: Vec<String>,
}

/// A page screenshot and its pixels as the browser decoded them.
#[derive(Debug, Clone)]
pub struct PageShot {
    /// The PNG file.
    pub path: PathBuf,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Standard deviation of the pixels' luma (0 for a blank page).
    pub stddev_luma: f64,
    /// Distinct colours, each channel quantised to 4 bits.
    pub colors: u32,
}

impl PageReport {
    fn from_json(raw: &Value) -> anyhow::Result<PageReport> {
        let u32_of = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        Ok(PageReport {
            completed: raw["completed"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .context("no `completed`")?,
            failure: raw["failure"].as_str().map(str::to_owned),
            values: raw["values"].as_array().cloned().unwrap_or_default(),
            shots: raw["shots"]
                .as_array()
                .map(|shots| {
                    shots
                        .iter()
                        .map(|s| PageShot {
                            path: PathBuf::from(s["path"].as_str().unwrap_or_default()),
                            width: u32_of(&s["width"]),
                            height: u32_of(&s["height"]),
                            stddev_luma: s["stddevLuma"].as_f64().unwrap_or_default(),
                            colors: u32_of(&s["colors"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            errors: raw["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Runs `steps` in one page of a fresh headless Chromium, all within `timeout`. Blocking
/// (use `spawn_blocking` from async tests). Errors when the browser or the script could not
/// run at all; a step that fails ends the run and is [`PageReport::failure`].
pub fn drive_page(steps: &[Step], timeout: Duration) -> anyhow::Result<PageReport> {
    let mut session = Session::start()?;
    let args = serde_json::json!({
        "playwright": session.playwright.join("node_modules/playwright-core"),
        "cdp": session.cdp(),
        "outDir": session.run.join("shots"),
        "timeoutMs": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
    });
    let line = session.script(PAGE_SCRIPT, &args, timeout)?;
    PageReport::from_json(&serde_json::from_str(&line).context("page.mjs report")?)
}

/// A headless Chromium with a fresh profile in its own run directory, killed by PID when
/// dropped (or when its script ends).
struct Session {
    browser: Child,
    port: u16,
    run: PathBuf,
    playwright: &'static Path,
}

impl Session {
    fn start() -> anyhow::Result<Session> {
        let chromium = chromium();
        let playwright = playwright();
        forget_old_runs();
        let run = cache_dir().join("runs").join(format!(
            "{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let profile = run.join("profile");
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&profile).with_context(|| format!("creating {}", run.display()))?;
        let mut browser = Child::spawn(
            Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--mute-audio",
                    "--autoplay-policy=no-user-gesture-required",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "--window-size=1280,900",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank"),
        )?;
        let port = devtools_port(&profile, &mut browser)?;
        Ok(Session {
            browser,
            port,
            run,
            playwright,
        })
    }

    fn cdp(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a script under node with `args`, kills the browser, and returns the JSON line
    /// the script printed last.
    fn script(&mut self, script: &str, args: &Value, limit: Duration) -> anyhow::Result<String> {
        let out = process::run(
            Command::new("node").arg(script).arg(args.to_string()),
            limit + Duration::from_secs(15),
        );
        // Killed by PID (SIGTERM, then SIGKILL), before anything can fail below.
        self.browser.terminate(process::DROP_GRACE);
        let name = Path::new(script)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let out = out.with_context(|| format!("browser/{name}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{name} printed no report: {stdout}"))?;
        let _ = std::fs::remove_dir_all(self.run.join("profile"));
        Ok(line.to_owned())
    }
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Removes (once per process) the screenshots and profiles of test processes that have
/// exited, so runs do not pile up in the cache.
fn forget_old_runs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(cache_dir().join("runs")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_string_lossy().split('-').next().map(str::to_owned);
            let alive = pid.is_some_and(|pid| Path::new("/proc").join(pid).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Waits for Chromium to write the port it chose into `DevToolsActivePort`.
fn devtools_port(profile: &Path, browser: &mut Child) -> anyhow::Result<u16> {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + BROWSER_START;
    loop {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok())
        {
            return Ok(port);
        }
        if !browser.is_running() {
            bail!(
                "chromium exited before opening its DevTools port; stderr:\n{}",
                browser.stderr_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "chromium opened no DevTools port within {BROWSER_START:?}; stderr:\n{}",
                browser.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's Chromium, installed with apt if missing.
pub fn chromium() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(path) = from_env("SLUICE_CHROMIUM") {
            return path;
        }
        let path = PathBuf::from(DEBIAN_CHROMIUM);
        if path.is_file() {
            return path;
        }
        require_root("chromium is missing: install Debian's chromium (apt-get install chromium)");
        with_install_lock(|| {
            if !path.is_file() {
                apt_install(&["chromium"]);
            }
        });
        assert!(
            path.is_file(),
            "{DEBIAN_CHROMIUM} still missing after apt-get install chromium"
        );
        path
    })
}

/// A directory whose `node_modules/playwright-core` is [`PLAYWRIGHT_CORE`], installed with
/// npm into [`cache_dir`] on first use.
pub fn playwright() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(path) = from_env("SLUICE_PLAYWRIGHT") {
            return path;
        }
        let dir = cache_dir().join(format!("playwright-core-{PLAYWRIGHT_CORE}"));
        let installed = |dir: &Path| {
            dir.join("node_modules/playwright-core/package.json")
                .is_file()
        };
        if installed(&dir) {
            return dir;
        }
        with_install_lock(|| {
            if installed(&dir) {
                return;
            }
            node_and_npm();
            let partial = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).expect("creating the playwright cache dir");
            eprintln!("sluice-testkit: npm install playwright-core@{PLAYWRIGHT_CORE}");
            process::run(
                Command::new("npm")
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        "--loglevel=error",
                        "--prefix",
                    ])
                    .arg(&partial)
                    .arg(format!("playwright-core@{PLAYWRIGHT_CORE}")),
                NPM_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("npm install playwright-core: {e:#}"));
            // Complete or absent: a run killed mid-install leaves only `.partial`.
            std::fs::rename(&partial, &dir).expect("moving playwright-core into place");
        });
        assert!(
            installed(&dir),
            "playwright-core missing in {}",
            dir.display()
        );
        dir
    })
}

/// A directory with `hls.min.js` and `mpegts.js` (for `player.assets_dir`), fetched by
/// `deploy/player-assets.sh` into [`cache_dir`] on first use (again when the script's pins
/// change).
pub fn player_assets() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(path) = from_env("SLUICE_PLAYER_ASSETS") {
            return path;
        }
        let script =
            std::fs::read(ASSETS_SCRIPT).unwrap_or_else(|e| panic!("reading {ASSETS_SCRIPT}: {e}"));
        let dir = cache_dir().join(format!("player-assets-{:016x}", fnv1a(&script)));
        let complete =
            |dir: &Path| dir.join("hls.min.js").is_file() && dir.join("mpegts.js").is_file();
        if complete(&dir) {
            return dir;
        }
        with_install_lock(|| {
            if complete(&dir) {
                return;
            }
            node_and_npm();
            let partial = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            eprintln!("sluice-testkit: deploy/player-assets.sh {}", dir.display());
            process::run(
                Command::new("bash").arg(ASSETS_SCRIPT).arg(&partial),
                NPM_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("deploy/player-assets.sh: {e:#}"));
            std::fs::rename(&partial, &dir).expect("moving the player assets into place");
        });
        assert!(complete(&dir), "player assets missing in {}", dir.display());
        dir
    })
}

/// Where the browser kit keeps what it installs: `SLUICE_BROWSER_CACHE`, else
/// `sluice-browser/` in the cargo target directory of the running test (found from the test
/// binary's path), else in `<workspace>/target`.
pub fn cache_dir() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::var_os("SLUICE_BROWSER_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                // Cargo marks its target directory with CACHEDIR.TAG.
                let exe = std::env::current_exe().ok()?;
                exe.ancestors()
                    .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                    .map(|target| target.join("sluice-browser"))
            })
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sluice-browser")
            });
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    })
}

/// Node (≥ 20, for playwright-core) and npm; Debian's when missing and root. Called with the
/// install lock held.
fn node_and_npm() {
    let works = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("node") && works("npm") {
        return;
    }
    require_root("node and npm are missing: install them (apt-get install nodejs npm)");
    apt_install(&["nodejs", "npm"]);
}

fn from_env(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(path.exists(), "{var}={} does not exist", path.display());
    Some(path)
}

/// FNV-1a, to name a cache directory after the content that filled it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_from_the_scripts_json() {
        let raw = serde_json::json!({
            "playing": true, "timeToPlayMs": 1200, "engine": "mpegts.js", "state": "playing",
            "screenshots": [
                {"path": "/tmp/a.png", "sha256": "aa", "frameHash": "01", "currentTime": 1.5},
                {"path": "/tmp/b.png", "sha256": "bb", "frameHash": "02", "currentTime": 2.5}
            ],
            "pictureChanged": true, "latency": [0.9, 0.4, 0.6], "errors": ["console.error: x"]
        });
        let report = PlayReport::from_json(raw).unwrap();
        assert!(report.playing && report.picture_changed);
        assert_eq!(report.time_to_play, Some(Duration::from_millis(1200)));
        assert_eq!(report.screenshots[1].frame_hash, "02");
        assert_eq!(report.median_latency(), Some(0.6));
        assert_eq!(report.max_latency(), Some(0.9));
        assert_eq!(report.errors, ["console.error: x"]);
        assert!(PlayReport::from_json(serde_json::json!({"screenshots": []})).is_err());
    }

    #[test]
    fn a_page_report_is_read_from_the_scripts_json() {
        let raw = serde_json::json!({
            "completed": 3, "failure": "step 3 {\"waitFor\":\"x\"}: Timeout",
            "values": [true, {"a": 1}],
            "shots": [{"name": "wide", "path": "/tmp/wide.png", "width": 1280, "height": 900,
                       "meanLuma": 240.5, "stddevLuma": 31.2, "colors": 57}],
            "errors": ["console.error: y"]
        });
        let report = PageReport::from_json(&raw).unwrap();
        assert_eq!(report.completed, 3);
        assert!(report.failure.as_deref().unwrap().ends_with("Timeout"));
        assert_eq!(report.values[1]["a"], 1);
        assert_eq!(
            (
                report.shots[0].width,
                report.shots[0].height,
                report.shots[0].colors
            ),
            (1280, 900, 57)
        );
        assert!((report.shots[0].stddev_luma - 31.2).abs() < 1e-9);
        assert_eq!(report.errors, ["console.error: y"]);
        assert_eq!(
            Step::Fill("#token".into(), "t".into()).json(),
            serde_json::json!({"fill": ["#token", "t"]})
        );
        assert!(PageReport::from_json(&serde_json::json!({})).is_err());
    }

    #[test]
    fn cache_names_follow_the_content() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"hls.js 1.7.4"), fnv1a(b"hls.js 1.7.5"));
    }
}
