//! `sluice sign`: the URL it prints passes the signed-URL check of the same config, for the
//! action, stream, key and address it was asked for, and nothing else.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_auth::{Access, Action, Policy, Refusal};
use sluice_core::Config;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `sluice <args>` with a cleared environment, bounded in time.
fn sluice(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(COMMAND_TIMEOUT)
        .expect("sluice sign finishes")
        .expect("sluice runs")
}

fn sign(args: &[&str]) -> Result<(String, String), String> {
    let out = sluice(&[&["sign"], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(stderr)
    }
}

const CONFIG: &str = r#"
[auth.signing_keys]
b-key = "the-b-secret-0123456789"
a-key = "the-a-secret-0123456789"

[auth.apps.live.play]
check = "signed"

[auth.apps.live.publish]
check = "signed"

[auth.apps.bound.play]
check = "signed"
bind_address = true
"#;

fn now_ms() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(now.as_millis()).unwrap()
}

/// Checks a printed URL as the front end would: (app, stream) from the path, the query.
fn check(p: &Policy, action: Action, url: &str, client: IpAddr, now: u64) -> Result<(), Refusal> {
    let (base, query) = url.split_once('?').expect("a query");
    let path = &base[base.find("://").unwrap() + 3..];
    let path = &path[path.find('/').unwrap()..];
    let (app, stream) = sluice_auth::stream_of_url_path(path).expect("a stream path");
    p.check(&Access {
        action,
        app: &app,
        stream: &stream,
        query,
        client,
        now_unix_ms: now,
    })
    .map(|_| ())
}

#[test]
fn signed_urls_pass_the_check_of_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let config = Config::load(Some(CONFIG), std::iter::empty()).unwrap();
    let policy = Policy::load(&config.auth).unwrap();
    let cfg = file.to_str().unwrap();
    let client: IpAddr = "192.0.2.7".parse().unwrap();

    for url in [
        "rtmp://127.0.0.1:1935/live/cam",
        "rtmps://edge.example/live/cam",
        "http://127.0.0.1:8080/live/cam.flv",
        "https://edge.example/live/cam.m3u8",
        "http://127.0.0.1:8080/live/cam/media.m3u8",
    ] {
        let (signed, note) = sign(&["--config", cfg, "--url", url, "--expires-in", "600"]).unwrap();
        assert!(signed.starts_with(&format!("{url}?exp=")), "{signed}");
        assert!(
            signed.contains("&kid=a-key&sig="),
            "the first key: {signed}"
        );
        assert!(note.is_empty(), "{note}");
        let now = now_ms();
        assert_eq!(
            check(&policy, Action::Play, &signed, client, now),
            Ok(()),
            "{signed}"
        );
        assert_eq!(
            check(&policy, Action::Publish, &signed, client, now),
            Err(Refusal::Invalid),
            "a play URL never publishes"
        );
        // Valid for --expires-in (plus the 30 s skew), no longer.
        assert_eq!(
            check(&policy, Action::Play, &signed, client, now + 660_000),
            Err(Refusal::Expired)
        );
    }

    // --publish, --key-id, an existing query.
    let (signed, _) = sign(&[
        "--config",
        cfg,
        "--url",
        "rtmp://127.0.0.1/live/cam?x=1",
        "--expires-in",
        "60",
        "--publish",
        "--key-id",
        "b-key",
    ])
    .unwrap();
    assert!(
        signed.starts_with("rtmp://127.0.0.1/live/cam?x=1&exp="),
        "{signed}"
    );
    assert!(signed.contains("&kid=b-key&"));
    assert_eq!(
        check(&policy, Action::Publish, &signed, client, now_ms()),
        Ok(())
    );
    assert_eq!(
        check(&policy, Action::Play, &signed, client, now_ms()),
        Err(Refusal::Invalid)
    );

    // --client-ip binds the URL.
    let bound_url = "http://127.0.0.1:8080/bound/cam.flv";
    let (signed, note) = sign(&[
        "--config",
        cfg,
        "--url",
        bound_url,
        "--expires-in",
        "60",
        "--client-ip",
        "192.0.2.7",
    ])
    .unwrap();
    assert!(note.is_empty(), "{note}");
    assert!(signed.ends_with("&ip=192.0.2.7"));
    assert_eq!(
        check(&policy, Action::Play, &signed, client, now_ms()),
        Ok(())
    );
    let other: IpAddr = "192.0.2.8".parse().unwrap();
    assert_eq!(
        check(&policy, Action::Play, &signed, other, now_ms()),
        Err(Refusal::Invalid)
    );
    let (_, note) = sign(&["--config", cfg, "--url", bound_url, "--expires-in", "60"]).unwrap();
    assert!(note.contains("bind_address"), "{note}");
    // An app whose rule is not signed gets a note.
    let (_, note) = sign(&[
        "--config",
        cfg,
        "--url",
        "rtmp://h/open/cam",
        "--expires-in",
        "60",
    ])
    .unwrap();
    assert!(note.contains("check = \"open\""), "{note}");
}

#[test]
fn sign_refuses_what_it_cannot_sign() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let cfg = file.to_str().unwrap();
    let err = |args: &[&str]| sign(args).expect_err("refused");
    assert!(
        err(&[
            "--config",
            cfg,
            "--url",
            "rtmp://h/live",
            "--expires-in",
            "60"
        ])
        .contains("/APP/NAME")
    );
    assert!(
        err(&[
            "--config",
            cfg,
            "--url",
            "ftp://h/live/cam",
            "--expires-in",
            "60"
        ])
        .contains("scheme")
    );
    assert!(
        err(&["--config", cfg, "--url", "live/cam", "--expires-in", "60"]).contains("not a URL")
    );
    assert!(
        err(&[
            "--config",
            cfg,
            "--url",
            "rtmp://h/live/cam",
            "--expires-in",
            "60",
            "--key-id",
            "zzz"
        ])
        .contains("no signing key \"zzz\"")
    );
    // No keys at all.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    assert!(
        err(&[
            "--config",
            empty.to_str().unwrap(),
            "--url",
            "rtmp://h/live/cam",
            "--expires-in",
            "60"
        ])
        .contains("no signing key")
    );
    // Keys from signing_key_file count.
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# rotated\nf-key the-f-secret-0123456789\n").unwrap();
    let with_file = dir.path().join("with-file.toml");
    std::fs::write(
        &with_file,
        format!(
            "[auth]\nsigning_key_file = {:?}\n",
            Path::new(&keys).display()
        ),
    )
    .unwrap();
    let (signed, _) = sign(&[
        "--config",
        with_file.to_str().unwrap(),
        "--url",
        "rtmp://h/live/cam",
        "--expires-in",
        "60",
    ])
    .unwrap();
    assert!(signed.contains("&kid=f-key&"), "{signed}");
}
