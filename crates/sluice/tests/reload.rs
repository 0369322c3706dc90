//! Hot reload of the config file, against the real binary: a changed file (seen by the file
//! watch, or re-read on SIGHUP) applies to a running node without disconnecting its viewers; a
//! broken file is refused and changes nothing; a setting fixed at startup is kept and said to
//! need a restart; SIGHUP without a file is harmless.
//!
//! Children run with a cleared environment, so a developer's `RUST_LOG` or `SLUICE__…`
//! variables cannot change the outcome. Waits poll with generous deadlines; nothing asserts on
//! how long a reload takes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_runtime::client::Client;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::http;
use sluice_testkit::node::wait_listening;
use sluice_testkit::process::Child;
use sluice_testkit::rtmp::{Player, Publisher};
use sluice_testkit::wait::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for anything to happen: the server to come up, a reload to be seen, media to
/// arrive. Generous: CI runs this next to other tests on two cores.
const WAIT: Duration = Duration::from_secs(60);
const ONE: &str = "https://one.example";
const TWO: &str = "https://two.example";
const REFUSED: &str = "config reload refused; the running config stays";
const RELOADED: &str = "config reloaded";
const RESTART: &str =
    "config keys changed that apply only after a restart; their running values are kept";

/// The settings the tests change; everything else is fixed (loopback, port 0, JSON logs).
#[derive(Debug, Clone)]
struct Settings {
    cors: &'static str,
    apps: &'static [&'static str],
    rtmp_listen: &'static str,
    /// `rtmp.chunk_size`: applies to connections made after a reload.
    chunk_size: u32,
    wait_for_publisher_ms: u64,
    /// Appended as is (whole sections).
    extra: &'static str,
}

const INITIAL: Settings = Settings {
    cors: ONE,
    apps: &["live", "other"],
    rtmp_listen: "127.0.0.1:0",
    chunk_size: 4096,
    wait_for_publisher_ms: 500,
    extra: "",
};

fn config_text(s: &Settings) -> String {
    let apps: Vec<String> = s.apps.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[server]\nshutdown_timeout_ms = 5000\n\
         [rtmp]\nlisten = \"{}\"\nchunk_size = {}\n\
         [http]\nlisten = \"127.0.0.1:0\"\ncors_allow_origin = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [streams]\napps = [{}]\nwait_for_publisher_ms = {}\nrepublish_grace_ms = 500\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n{}",
        s.rtmp_listen,
        s.chunk_size,
        s.cors,
        apps.join(", "),
        s.wait_for_publisher_ms,
        s.extra
    )
}

/// A `sluice serve` child and where it listens.
struct Server {
    child: Child,
    rtmp: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    /// The config file (absent without one).
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `sluice serve --config FILE <args>` with `settings` in FILE.
    async fn start(settings: &Settings, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, config_text(settings)).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_clear();
        Self::spawn(cmd, config, dir).await
    }

    /// `sluice serve` with no file: everything from the environment.
    async fn start_without_file() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").env_clear().envs([
            ("SLUICE__RTMP__LISTEN", "127.0.0.1:0"),
            ("SLUICE__HTTP__LISTEN", "127.0.0.1:0"),
            ("SLUICE__ADMIN__LISTEN", "127.0.0.1:0"),
            ("SLUICE__LOG__FORMAT", "json"),
        ]);
        let config = dir.path().join("none.toml");
        Self::spawn(cmd, config, dir).await
    }

    async fn spawn(mut cmd: Command, config: PathBuf, dir: tempfile::TempDir) -> Server {
        let mut child = Child::spawn(&mut cmd).expect("spawn sluice serve");
        let addrs = wait_listening(&mut child, WAIT)
            .await
            .unwrap_or_else(|e| panic!("sluice serve did not start: {e}"));
        Server {
            rtmp: addrs.rtmp,
            http: addrs.http,
            admin: addrs.admin,
            child,
            config,
            _dir: dir,
        }
    }

    fn log(&self) -> Vec<Value> {
        log_of(&self.child)
    }

    /// Waits for a log line with `message` whose fields satisfy `matches`; its fields.
    async fn logged(&self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let seen = eventually(WAIT, || async {
            find(&self.log(), message, &matches).is_some()
        })
        .await;
        assert!(
            seen,
            "no {message:?} log line as expected:\n{}",
            self.child.stderr_tail()
        );
        find(&self.log(), message, &matches).expect("seen")
    }

    /// How many log lines carry `message`.
    fn count(&self, message: &str) -> usize {
        self.log()
            .iter()
            .filter(|f| f["message"] == message)
            .count()
    }

    /// Rewrites the config file in place, as most editors and `echo >` do.
    fn write_in_place(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// Replaces the config file by renaming a new one over it, as config managers do.
    fn replace(&self, text: &str) {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write new config");
        std::fs::rename(&tmp, &self.config).expect("rename over config");
    }

    fn sighup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        #[allow(unsafe_code)]
        // SAFETY: kill(2) takes plain integers; the PID is our own unreaped child, so it
        // cannot have been recycled for another process.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP {pid}");
    }

    fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    async fn metrics(&self) -> String {
        http::get(self.admin, "/metrics").await.1
    }

    /// The Access-Control-Allow-Origin of an HTTP-FLV preflight, if any.
    async fn cors(&self) -> Option<String> {
        let head = http::request(self.http, "OPTIONS", "/live/s.flv")
            .await
            .head;
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("access-control-allow-origin")
                .then(|| value.trim().to_owned())
        })
    }

    /// The `connections_closed` series of RTMP: empty while no RTMP connection has closed.
    async fn rtmp_closed(&self) -> Vec<String> {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("sluice_connections_closed_total{protocol=\"rtmp\""))
            .map(str::to_owned)
            .collect()
    }

    /// Publishes the fixture in a loop on `live/s` and waits until the node has it.
    async fn publish(&self) -> tokio::task::JoinHandle<Client> {
        let publisher = Publisher::fixture(format!("rtmp://{}/live/s", self.rtmp), H264_AAC)
            .gap(Duration::from_millis(10))
            .loops(10_000)
            .spawn();
        let live = eventually(WAIT, || async {
            let (_, body) = http::get(self.admin, "/api/streams").await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["streams"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["stream"] == "s" && s["publishing"] == true)
            })
        })
        .await;
        assert!(
            live,
            "publisher never attached:\n{}",
            self.child.stderr_tail()
        );
        publisher
    }
}

fn log_of(child: &Child) -> Vec<Value> {
    child
        .stderr_tail()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut v| v["fields"].take())
        .collect()
}

fn find(log: &[Value], message: &str, matches: impl Fn(&Value) -> bool) -> Option<Value> {
    log.iter()
        .find(|f| f["message"] == message && matches(f))
        .cloned()
}

fn field_has(fields: &Value, key: &str, part: &str) -> bool {
    fields[key].as_str().is_some_and(|v| v.contains(part))
}

/// Plays live/s on `server` and checks that media arrives.
async fn play(server: &Server) -> Player {
    let viewer = Player::start(&format!("rtmp://{}/live/s", server.rtmp), WAIT).await;
    assert_receiving(&viewer, server, "after play").await;
    viewer
}

/// Asserts that media keeps arriving (20 more messages) on the viewer's connection.
async fn assert_receiving(viewer: &Player, server: &Server, when: &str) {
    if let Err(e) = viewer.keeps_receiving(20).await {
        panic!(
            "the viewer stopped receiving {when}: {e}\n{}",
            server.child.stderr_tail()
        );
    }
}

/// How the tests make the node re-read its file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    /// Rewrite the file; the node's file watch sees it.
    Watch,
    /// Rewrite the file with the watch off, then SIGHUP.
    Sighup,
}

/// Changes `http.cors_allow_origin` (seen in HTTP-FLV response headers) and `streams.apps`
/// (an application removed is refused) on a running node with a publisher and a viewer.
async fn reload_applies_without_disconnecting(trigger: Trigger) {
    let args: &[&str] = match trigger {
        Trigger::Watch => &[],
        Trigger::Sighup => &["--no-watch"],
    };
    let server = Server::start(&INITIAL, args).await;
    let publisher = server.publish().await;
    let viewer = play(&server).await;
    assert_eq!(server.cors().await.as_deref(), Some(ONE));
    // `other` is served: a request waits for a publisher, then is a plain 404.
    assert_eq!(
        http::get(server.http, "/other/x.flv").await,
        (404, "stream not found\n".to_owned())
    );

    let changed = config_text(&Settings {
        cors: TWO,
        apps: &["live"],
        ..INITIAL
    });
    server.write_in_place(&changed);
    if trigger == Trigger::Sighup {
        server.sighup();
    }
    let label = match trigger {
        Trigger::Watch => "file_watch",
        Trigger::Sighup => "sighup",
    };
    let reloaded = server
        .logged(RELOADED, |f| {
            f["trigger"] == label && field_has(f, "changed", "http")
        })
        .await;
    assert_eq!(
        reloaded["changed"], "http.cors_allow_origin, streams.apps",
        "{reloaded}"
    );
    assert_eq!(
        reloaded["file"].as_str(),
        server.config.to_str(),
        "{reloaded}"
    );

    // The new values are in force for new requests...
    assert_eq!(server.cors().await.as_deref(), Some(TWO));
    assert_eq!(
        http::get(server.http, "/other/x.flv").await,
        (404, "application not served here\n".to_owned())
    );
    // ...and the viewer that was there before never noticed.
    assert_receiving(&viewer, &server, "after the reload").await;
    assert_eq!(server.rtmp_closed().await, Vec::<String>::new());
    let metrics = server.metrics().await;
    assert_eq!(
        http::metric_value(&metrics, "sluice_config_reloads_total{result=\"ok\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(server.count(REFUSED), 0);
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_applies_to_a_running_node_without_disconnecting_viewers() {
    reload_applies_without_disconnecting(Trigger::Watch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file_without_disconnecting_viewers() {
    reload_applies_without_disconnecting(Trigger::Sighup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_and_the_running_config_stays() {
    let server = Server::start(&INITIAL, &[]).await;
    let publisher = server.publish().await;
    let viewer = play(&server).await;
    let path = server.config.to_str().expect("UTF-8 path").to_owned();

    let with_two = config_text(&Settings {
        cors: TWO,
        ..INITIAL
    });
    // Each broken file also asks for the second origin, which must not take effect.
    let broken: [(&str, String, &str); 4] = [
        ("not TOML", format!("{with_two}[http\n"), "TOML parse error"),
        (
            "an unknown key",
            format!("{with_two}[schedule.default]\nmax_latency_msec = 100\n"),
            "max_latency_msec",
        ),
        (
            "a bad value",
            with_two.replace("chunk_size = 4096\n", "chunk_size = 10\n"),
            "rtmp.chunk_size must be within",
        ),
        ("no file", String::new(), "No such file"),
    ];
    for (n, (what, text, error)) in broken.iter().enumerate() {
        if *what == "no file" {
            std::fs::remove_file(&server.config).expect("remove config");
        } else {
            server.replace(text);
        }
        let refused = server
            .logged(REFUSED, |f| field_has(f, "error", error))
            .await;
        assert_eq!(refused["file"], path.as_str(), "{what}: {refused}");
        assert!(
            field_has(&refused, "error", &path),
            "{what}: the error names the file: {refused}"
        );
        assert_eq!(server.count(REFUSED), n + 1, "{what}");
        assert_eq!(server.cors().await.as_deref(), Some(ONE), "{what}");
        assert_receiving(&viewer, &server, &format!("after {what}")).await;
    }
    assert_eq!(server.count(RELOADED), 0);
    let metrics = server.metrics().await;
    assert_eq!(
        http::metric_value(&metrics, "sluice_config_reloads_total{result=\"invalid\"}"),
        4.0,
        "{metrics}"
    );

    // The watch survived the file's removal: a good file applies.
    server.replace(&with_two);
    server
        .logged(RELOADED, |f| f["changed"] == "http.cors_allow_origin")
        .await;
    assert_eq!(server.cors().await.as_deref(), Some(TWO));
    assert_receiving(&viewer, &server, "after the fix").await;
    assert_eq!(server.rtmp_closed().await, Vec::<String>::new());
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_listen_address_needs_a_restart_and_the_old_listener_keeps_serving() {
    let server = Server::start(&INITIAL, &[]).await;
    let publisher = server.publish().await;
    let viewer = play(&server).await;

    // A new RTMP address and a new connection limit (both fixed at startup), with a change
    // that does apply.
    server.replace(
        &config_text(&Settings {
            cors: TWO,
            rtmp_listen: "127.0.0.1:1",
            extra: "",
            ..INITIAL
        })
        .replace("[rtmp]\n", "[rtmp]\nmax_connections = 3\n"),
    );
    let restart = server.logged(RESTART, |_| true).await;
    assert_eq!(
        restart["keys"], "rtmp.listen, rtmp.max_connections",
        "{restart}"
    );
    let reloaded = server.logged(RELOADED, |_| true).await;
    assert_eq!(reloaded["changed"], "http.cors_allow_origin", "{reloaded}");
    assert_eq!(server.cors().await.as_deref(), Some(TWO));

    // The old listener still serves new viewers (more than the new limit, which is not in
    // force), and the old viewer is still there.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(play(&server).await);
    }
    assert_receiving(&viewer, &server, "after the reload").await;
    assert_eq!(server.rtmp_closed().await, Vec::<String>::new());
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_is_logged_and_harmless() {
    let mut server = Server::start_without_file().await;
    assert!(!Path::new(&server.config).exists());
    server.sighup();
    server
        .logged(
            "serve was started without --config: no config file to reload",
            |_| true,
        )
        .await;
    assert!(server.is_running(), "{}", server.child.stderr_tail());
    assert_eq!(
        http::get(server.admin, "/healthz").await,
        (200, "ok\n".to_owned())
    );
}

/// The defect a reload of `rtmp.chunk_size` used to cause: a frame's RTMP bytes were cached
/// once, at whichever chunk size asked first, so a viewer that connected after the reload
/// got bytes chunked for another size and ffmpeg failed ("RTMP packet size mismatch"). Now
/// wire forms are keyed by every parameter they depend on.
///
/// Three ffprobe (5.1) viewers connect one after another, with the file changed between
/// them (4096, then 128, then 60000), and wait for the publisher; ffmpeg then publishes the
/// fixture in real time, and all three play it at once. Each must decode every frame (50
/// video, 88 audio: waiting since before the first frame, a viewer gets the stream whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_chunk_sizes_set_by_reloads_all_decode_every_frame() {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
    let settings = |chunk_size| Settings {
        chunk_size,
        wait_for_publisher_ms: 120_000,
        ..INITIAL
    };
    let server = Server::start(&settings(4096), &[]).await;
    let url = format!("rtmp://{}/live/chunks", server.rtmp);
    let mut probes = Vec::new();
    for (i, chunk_size) in [4096u32, 128, 60000].into_iter().enumerate() {
        if i > 0 {
            server.write_in_place(&config_text(&settings(chunk_size)));
            server
                .logged(RELOADED, |f| {
                    field_has(f, "changed", "rtmp.chunk_size") && server.count(RELOADED) == i
                })
                .await;
        }
        let probe_url = url.clone();
        probes.push((
            chunk_size,
            tokio::task::spawn_blocking(move || {
                sluice_testkit::probe::probe(&probe_url, PROBE_TIMEOUT)
            }),
        ));
        let viewers = i + 1;
        let attached = eventually(WAIT, || async {
            let (_, body) = http::get(server.admin, "/api/streams").await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["streams"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["stream"] == "chunks" && s["viewers"].as_u64() == Some(viewers as u64)
                })
            })
        })
        .await;
        assert!(
            attached,
            "viewer {viewers} (chunk size {chunk_size}) did not attach:\n{}",
            server.child.stderr_tail()
        );
    }

    let mut publisher = sluice_testkit::process::publish(
        sluice_testkit::tools::ffmpeg5(),
        &sluice_testkit::fixture(H264_AAC),
        &url,
        true,
        &[],
    );
    tokio::task::spawn_blocking(move || publisher.wait_success(WAIT))
        .await
        .expect("publisher task")
        .expect("the publisher finishes");

    for (chunk_size, probe) in probes {
        let report = probe
            .await
            .expect("probe task")
            .unwrap_or_else(|e| panic!("the viewer on chunk size {chunk_size}: {e:#}"));
        let what = format!("the viewer on chunk size {chunk_size}: {report:?}");
        let video = report.video().unwrap_or_else(|| panic!("{what}: no video"));
        let audio = report.audio().unwrap_or_else(|| panic!("{what}: no audio"));
        assert_eq!((video.codec(), audio.codec()), ("h264", "aac"), "{what}");
        assert_eq!((video.frames(), audio.frames()), (50, 88), "{what}");
    }
    // Bytes chunked for another size would break the session: a protocol error. (An
    // io_error is not counted: at the end of the stream ffprobe may close before the
    // server's goodbye is written, which a loaded machine shows now and then.)
    assert_eq!(
        server
            .rtmp_closed()
            .await
            .iter()
            .filter(|l| l.contains("protocol_error"))
            .count(),
        0,
        "{}",
        server.child.stderr_tail()
    );
}
