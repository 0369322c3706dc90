//! The `sluice` binary as an operator runs it: `print-config`, `check-config` (files, unknown
//! keys, environment overrides) and `serve` with a SIGTERM that drains viewers and exits 0.
//!
//! Every child runs with a cleared environment plus what the test sets, so a developer's
//! `RUST_LOG` or `SLUICE__…` variables cannot change the outcome.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;
use sluice_core::Config;
use sluice_rtmp::client::ClientEvent;
use sluice_runtime::client::{Client, RtmpUrl};
use sluice_testkit::http;
use sluice_testkit::node::{logged, wait_listening};
use sluice_testkit::process::{self, Child};
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, fixtures, tools};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for a one-shot command (print-config, check-config).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for the server to come up, for viewers to start, for streams to end. Generous:
/// CI runs this next to other tests on two cores.
const WAIT: Duration = Duration::from_secs(60);
/// `server.shutdown_timeout_ms` of the served config.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `sluice <args>` with only `env` in its environment. Panics if it runs past the deadline.
fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().envs(env.iter().copied());
    let what = process_name(args);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(COMMAND_TIMEOUT)
        .unwrap_or_else(|_| panic!("{what} did not finish within {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn process_name(args: &[&str]) -> String {
    format!("sluice {}", args.join(" "))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `sluice <args>` and expects success; returns stdout.
fn sluice_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = sluice(args, env);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        process_name(args),
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `sluice <args>` and expects it to fail with exit code 1; returns stderr.
fn sluice_err(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = sluice(args, env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{} should have failed; stdout:\n{}\nstderr:\n{}",
        process_name(args),
        stdout(&out),
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(&out));
    stderr(&out)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp config");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// The documented reference config, which is also the embedded default.
fn reference_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.toml")
}

#[test]
fn print_config_output_is_accepted_by_check_config() {
    let printed = sluice_ok(&["print-config"], &[]);
    // It is the complete default config.
    let parsed = Config::from_toml(&printed)
        .unwrap_or_else(|e| panic!("print-config output does not parse: {e}\n{printed}"));
    assert_eq!(parsed, Config::default());
    assert!(printed.contains("[streams]"), "{printed}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "printed.toml", &printed);
    let checked = sluice_ok(&["check-config", path_str(&file)], &[]);
    assert_eq!(checked, format!("{}: ok\n", file.display()));

    // Printing that file again gives the same text.
    assert_eq!(
        sluice_ok(&["print-config", "--config", path_str(&file)], &[]),
        printed
    );
}

#[test]
fn check_config_accepts_the_reference_config() {
    let reference = reference_config();
    let checked = sluice_ok(&["check-config", path_str(&reference)], &[]);
    assert!(checked.ends_with("sluice.toml: ok\n"), "{checked}");
    // The embedded default is that file: with or without it, the same effective config.
    assert_eq!(
        sluice_ok(&["print-config", "--config", path_str(&reference)], &[]),
        sluice_ok(&["print-config"], &[])
    );
}

#[test]
fn check_config_refuses_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().expect("tempdir");

    let typo = write(
        dir.path(),
        "typo.toml",
        "[rtmp]\nchunk_size = 8192\nchunk_sise = 4096\n",
    );
    let err = sluice_err(&["check-config", path_str(&typo)], &[]);
    assert!(err.contains("unknown field `chunk_sise`"), "{err}");
    assert!(err.contains("rtmp"), "names the section: {err}");
    assert!(
        err.contains(&typo.display().to_string()),
        "names the file: {err}"
    );

    let section = write(
        dir.path(),
        "section.toml",
        "[rtmpp]\nlisten = \"127.0.0.1:1\"\n",
    );
    let err = sluice_err(&["check-config", path_str(&section)], &[]);
    assert!(err.contains("unknown field `rtmpp`"), "{err}");

    let range = write(dir.path(), "range.toml", "[rtmp]\nchunk_size = 10\n");
    let err = sluice_err(&["check-config", path_str(&range)], &[]);
    assert!(err.contains("rtmp.chunk_size"), "{err}");

    let wrong_type = write(dir.path(), "type.toml", "[streams]\ngop_cache = \"yes\"\n");
    let err = sluice_err(&["check-config", path_str(&wrong_type)], &[]);
    assert!(err.contains("gop_cache"), "{err}");

    let err = sluice_err(
        &["check-config", path_str(&dir.path().join("missing.toml"))],
        &[],
    );
    assert!(err.contains("missing.toml"), "{err}");

    // serve refuses the same file before binding anything.
    let err = sluice_err(&["serve", "--config", path_str(&typo)], &[]);
    assert!(err.contains("chunk_sise"), "{err}");
}

#[test]
fn environment_overrides_the_file_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "file.toml",
        "[rtmp]\nlisten = \"127.0.0.1:1888\"\nchunk_size = 8192\n[log]\nlevel = \"debug\"\n",
    );
    let env = [
        ("SLUICE__RTMP__LISTEN", "127.0.0.1:1999"),
        ("SLUICE__STREAMS__GOP_CACHE", "false"),
        ("SLUICE__STREAMS__APPS", r#"["live", "tv"]"#),
        ("SLUICE__SERVER__SHUTDOWN_TIMEOUT_MS", "1234"),
        // Not TOML: taken as a string.
        ("SLUICE__HTTP__CORS_ALLOW_ORIGIN", "https://example.com"),
        // Single underscore (the testkit's tool overrides): not a config override.
        ("SLUICE_FFMPEG5", "/nonexistent"),
    ];
    let printed = sluice_ok(&["print-config", "--config", path_str(&file)], &env);
    let c = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(
        c.rtmp.listen,
        "127.0.0.1:1999".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.rtmp.chunk_size, 8192, "from the file");
    assert_eq!(c.log.level, "debug", "from the file");
    assert!(!c.streams.gop_cache);
    assert_eq!(c.streams.apps, ["live", "tv"]);
    assert_eq!(c.server.shutdown_timeout_ms, 1234);
    assert_eq!(c.http.cors_allow_origin, "https://example.com");
    // Untouched keys keep their defaults.
    let d = Config::default();
    assert_eq!(c.http.listen, d.http.listen);
    assert_eq!(c.streams.gop_cache_gops, d.streams.gop_cache_gops);

    // Without a file the environment applies over the defaults.
    let printed = sluice_ok(&["print-config"], &env[..1]);
    assert!(printed.contains("listen = \"127.0.0.1:1999\""), "{printed}");

    // check-config applies the environment too: an override naming no key is refused.
    let err = sluice_err(
        &["check-config", path_str(&file)],
        &[("SLUICE__RTMP__NOPE", "1")],
    );
    assert!(err.contains("SLUICE__RTMP__NOPE"), "{err}");
    assert!(err.contains("nope"), "{err}");
    let err = sluice_err(&["print-config"], &[("SLUICE__NOPE__LISTEN", "1")]);
    assert!(err.contains("SLUICE__NOPE__LISTEN"), "{err}");
    // And a value of the wrong type.
    let err = sluice_err(&["print-config"], &[("SLUICE__RTMP__CHUNK_SIZE", "big")]);
    assert!(err.contains("chunk_size"), "{err}");
}

/// Starts `sluice serve` on loopback port 0 (every listener) and waits for its addresses.
async fn serve(dir: &Path, extra: &str) -> (Child, [SocketAddr; 3]) {
    let config = write(
        dir,
        "serve.toml",
        &format!(
            "[server]\nshutdown_timeout_ms = {}\ndrain_grace_ms = 0\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n{extra}",
            SHUTDOWN_TIMEOUT.as_millis()
        ),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", path_str(&config)])
        .env_clear();
    let mut server = Child::spawn(&mut cmd).expect("spawn sluice serve");
    let addrs = wait_listening(&mut server, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (server, [addrs.rtmp, addrs.http, addrs.admin])
}

/// What an RTMP viewer got after its first video frame, until the server closed it.
#[derive(Debug, Default)]
struct ViewerEnd {
    /// Non-media events, in order.
    events: Vec<ClientEvent>,
    /// Audio and video messages (only counted).
    media: usize,
    /// The client read the end of the stream: the server closed the connection.
    closed: bool,
    /// A client error, or "still open" when the deadline passed.
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_viewers_on_sigterm_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, [rtmp, http, admin]) =
        serve(dir.path(), "[streams]\nwait_for_publisher_ms = 60000\n").await;

    // Health first.
    let healthy = eventually(WAIT, || async {
        http::get(admin, "/healthz").await == (200, "ok\n".to_owned())
    })
    .await;
    assert!(
        healthy,
        "/healthz never answered:\n{}",
        server.stderr_tail()
    );

    // A live publisher, an RTMP viewer and an HTTP-FLV viewer.
    let url = format!("rtmp://{rtmp}/live/cli");
    let mut publisher =
        process::publish_looped(tools::ffmpeg5(), &fixture(fixtures::H264_AAC), &url, &[]);
    let mut viewer = Client::play(&RtmpUrl::parse(&url).expect("url"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("RTMP play: {e}\n{}", server.stderr_tail()));
    let first_video = tokio::time::timeout(WAIT, async {
        loop {
            match viewer.next_event().await {
                Ok(Some(ClientEvent::Media { type_id: 9, .. })) => return,
                Ok(Some(_)) => {}
                other => panic!("RTMP viewer ended before any video: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        first_video.is_ok(),
        "no video reached the RTMP viewer; publisher: {}\nserver: {}",
        publisher.stderr_tail(),
        server.stderr_tail()
    );
    let http_viewer = tokio::spawn(async move {
        let mut socket = tokio::net::TcpStream::connect(http).await.expect("connect");
        socket
            .write_all(b"GET /live/cli.flv HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut response = Vec::new();
        let _ = socket.read_to_end(&mut response).await;
        response
    });
    let attached = eventually(WAIT, || async {
        let (_, body) = http::get(admin, "/api/streams").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["streams"][0]["publishing"] == true && v["streams"][0]["viewers"] == 2
    })
    .await;
    assert!(
        attached,
        "viewers did not attach:\n{}",
        server.stderr_tail()
    );

    // The RTMP viewer keeps reading until the server closes it.
    let rtmp_viewer = tokio::spawn(async move {
        let mut end = ViewerEnd::default();
        let read = tokio::time::timeout(SHUTDOWN_TIMEOUT + WAIT, async {
            loop {
                match viewer.next_event().await {
                    Ok(Some(ClientEvent::Media { .. })) => end.media += 1,
                    Ok(Some(event)) => end.events.push(event),
                    Ok(None) => {
                        end.closed = true;
                        return;
                    }
                    Err(e) => {
                        end.error = Some(e.to_string());
                        return;
                    }
                }
            }
        })
        .await;
        if read.is_err() {
            end.error = Some("still open".to_owned());
        }
        end
    });

    // SIGTERM; the server must exit by itself, with 0, within its shutdown deadline (plus
    // slack for a loaded machine). `terminate` SIGKILLs only after that.
    let started = Instant::now();
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.terminate(SHUTDOWN_TIMEOUT + WAIT);
        (status, server)
    })
    .await
    .expect("terminate task");
    let log = server.stderr_tail();
    assert_eq!(
        status.code(),
        Some(0),
        "sluice serve did not exit 0 after SIGTERM ({status}, after {:?}):\n{log}",
        started.elapsed()
    );
    assert!(logged(&log, "SIGTERM received", ""), "{log}");
    assert!(logged(&log, "stopped", ""), "{log}");
    // Every session said goodbye before the deadline.
    assert!(
        !logged(
            &log,
            "shutdown deadline passed with connections still open",
            ""
        ),
        "{log}"
    );

    // The RTMP viewer was told the stream ended, then the connection was closed.
    let end = rtmp_viewer.await.expect("viewer task");
    assert!(
        end.closed,
        "RTMP viewer not closed cleanly: {end:?}\nserver log:\n{log}"
    );
    assert!(
        end.events.contains(&ClientEvent::StreamEof),
        "no StreamEOF before the close: {end:?}"
    );

    // The HTTP-FLV body was ended properly (the last chunk), not cut.
    let response = tokio::time::timeout(WAIT, http_viewer)
        .await
        .expect("HTTP-FLV viewer still open")
        .expect("viewer task");
    let head_len = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..head_len]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        response.ends_with(b"\r\n0\r\n\r\n"),
        "HTTP-FLV body not terminated: {} bytes, ends {:?}",
        response.len(),
        &response[response.len().saturating_sub(16)..]
    );

    // The publisher lost its server and stopped by itself.
    let publisher_exit = tokio::task::spawn_blocking(move || {
        let status = publisher.wait_timeout(WAIT);
        (status, publisher.stderr_tail())
    })
    .await
    .expect("publisher task");
    assert!(
        publisher_exit.0.is_some(),
        "ffmpeg kept publishing to a stopped server: {}",
        publisher_exit.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fails_when_a_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "taken.toml",
        &format!(
            "[rtmp]\nlisten = \"{addr}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    );
    let out =
        tokio::task::spawn_blocking(move || sluice(&["serve", "--config", path_str(&config)], &[]))
            .await
            .expect("serve task");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("binding the RTMP listener"), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    drop(taken);
}
