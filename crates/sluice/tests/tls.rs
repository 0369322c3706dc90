//! TLS end to end, against the real binary (`sluice serve` child processes with `[tls]`):
//!
//! - RTMPS: ffmpeg 9 publishes over `rtmps://`, Debian's ffprobe plays the stream back over
//!   RTMPS and over clear RTMP (one stream, one ring).
//! - HTTPS: curl over HTTP/2 (ALPN) fetches HTTP-FLV bytes, the HLS playlists, a part and a
//!   held preload-hint part; ffprobe plays the `.flv` and the `.m3u8` over HTTPS (HTTP/1.1).
//! - Renewal: an HTTPS-FLV viewer (a rustls client) keeps receiving across a SIGHUP with new
//!   certificate files, while new connections get the new certificate (its DER compared);
//!   a broken file at reload keeps the certificate in use and the node serving; a changed
//!   file is picked up by the watch without a signal.
//! - A certificate file missing at start: the process exits non-zero naming the file.
//!
//! Certificates come from a CA made here with rcgen; the test's rustls client trusts only it.
//! ffmpeg and ffprobe are told not to verify (`-tls_verify 0`): what they check is the stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::node::{Process, Spec, Transport, logged};
use sluice_testkit::probe::{ProbeReport, probe_with};
use sluice_testkit::process::{self, Child};
use sluice_testkit::rtmp::Publisher;
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, tools};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for anything to happen. Generous: CI runs this beside other tests on two cores.
const WAIT: Duration = Duration::from_secs(30);
/// Deadline of one ffprobe run (it reads a few seconds of a live stream).
const PROBE: Duration = Duration::from_secs(40);
/// The name in every server certificate.
const NAME: &str = "localhost";

/// A test CA and the server certificates it signs.
struct Pki {
    ca: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A server certificate: its PEM files' text, its DER and when it expires.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    not_after: i64,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice TLS test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for [`NAME`] expiring on 1 January of `year`.
    fn leaf(&self, year: i32) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![NAME.to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            not_after: params.not_after.unix_timestamp(),
        }
    }
}

/// The certificate files a node is given.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(leaf: &Leaf) -> Files {
        let files = Files {
            dir: tempfile::Builder::new()
                .prefix("sluice-tls-")
                .tempdir()
                .expect("tempdir"),
        };
        files.write(leaf);
        files
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Overwrites both files in place.
    fn write(&self, leaf: &Leaf) {
        std::fs::write(self.cert(), &leaf.cert_pem).expect("write cert");
        std::fs::write(self.key(), &leaf.key_pem).expect("write key");
    }

    /// Replaces both files by renaming new ones over them, as renewal tools do.
    fn replace(&self, leaf: &Leaf) {
        for (path, text) in [(self.cert(), &leaf.cert_pem), (self.key(), &leaf.key_pem)] {
            let new = path.with_extension("pem.new");
            std::fs::write(&new, text).expect("write new");
            std::fs::rename(&new, &path).expect("rename over");
        }
    }

    /// `[tls]` for a node on loopback port 0.
    fn section(&self, watch: bool) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nrtmps_listen = \"127.0.0.1:0\"\n\
             https_listen = \"127.0.0.1:0\"\nhandshake_timeout_ms = 5000\nwatch = {watch}\n",
            self.cert().display().to_string(),
            self.key().display().to_string()
        )
    }
}

/// A node with TLS from `files`.
async fn node(files: &Files, watch: bool, extra: &str) -> Tls {
    let spec = Spec::origin("tls", Transport::Rtmp)
        .with(&files.section(watch))
        .with(extra);
    let process = Process::start(BIN, spec).await;
    let rtmps = process.rtmps.expect("an RTMPS listener");
    let https = process.https.expect("an HTTPS listener");
    Tls {
        process,
        rtmps,
        https,
    }
}

struct Tls {
    process: Process,
    rtmps: SocketAddr,
    https: SocketAddr,
}

impl Tls {
    async fn wait_metric(&self, series: &str, at_least: f64) {
        let ok = eventually(WAIT, || async {
            self.process.metric(series).await >= at_least
        })
        .await;
        assert!(
            ok,
            "{series} never reached {at_least}; log:\n{}",
            self.process.log()
        );
    }
}

/// A rustls client that trusts only `ca`, offering `alpn`.
fn connector(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA as a root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A verified TLS connection to `addr`.
async fn connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(NAME).expect("server name");
    tokio::time::timeout(WAIT, connector(ca, alpn).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake (the certificate verified against the test CA)")
}

/// The DER of the certificate a new connection to `addr` is shown.
async fn presented(addr: SocketAddr, ca: &CertificateDer<'static>) -> Vec<u8> {
    let stream = connect(addr, ca, &[]).await;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    certs[0].to_vec()
}

/// An HTTP-FLV viewer over HTTPS (HTTP/1.1), counting the bytes it receives.
struct FlvViewer {
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FlvViewer {
    async fn start(addr: SocketAddr, ca: &CertificateDer<'static>, path: &str) -> FlvViewer {
        let mut stream = connect(addr, ca, &[b"http/1.1"]).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(n > 0, "closed before the response head");
            head.extend_from_slice(&buf[..n]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let text = String::from_utf8_lossy(&head[..end]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let received = Arc::new(AtomicU64::new((head.len() - end) as u64));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        FlvViewer { received, task }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `more` bytes arrived after now.
    async fn keeps_receiving(&self, more: u64) -> bool {
        let from = self.received();
        eventually(WAIT, || async { self.received() >= from + more }).await
            && !self.task.is_finished()
    }
}

impl Drop for FlvViewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Debian's ffprobe reading the first 120 packets of a live `url` (TLS unverified).
async fn probe_live(url: String) -> ProbeReport {
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["-read_intervals", "%+#120"];
        if url.starts_with("rtmps:") || url.starts_with("https:") {
            args.extend(["-tls_verify", "0"]);
        }
        probe_with(&url, &args, PROBE).unwrap_or_else(|e| panic!("ffprobe {url}: {e:#}"))
    })
    .await
    .expect("probe task")
}

fn assert_h264_aac(report: &ProbeReport, what: &str) {
    let video = report.video().unwrap_or_else(|| panic!("{what}: no video"));
    let audio = report.audio().unwrap_or_else(|| panic!("{what}: no audio"));
    assert_eq!(video.codec(), "h264", "{what}");
    assert_eq!(audio.codec(), "aac", "{what}");
    assert!(video.frames() > 0, "{what}: no video frame decoded");
    assert!(audio.frames() > 0, "{what}: no audio frame decoded");
}

/// `curl -sk --http2|--http1.1 URL` (10 s at most, or `max_time`): its exit code, the HTTP
/// version and status it reports (`2 200`) and the body.
async fn curl(version: &str, url: String, max_time: &str) -> (Option<i32>, String, Vec<u8>) {
    let version = version.to_owned();
    let max_time = max_time.to_owned();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = dir.path().join("body");
        let mut cmd = Command::new(tools::curl());
        cmd.args(["-sk", &version, "--max-time", &max_time])
            // The version and status go to stderr, which the child wrapper keeps.
            .args(["-w", "%{stderr}%{http_version} %{http_code}", "-o"])
            .arg(&body)
            .arg(&url);
        let mut child = Child::spawn(&mut cmd).expect("spawn curl");
        // curl ends itself at --max-time; this deadline is a backstop.
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("curl {url} did not end"));
        let written = std::fs::read(&body).unwrap_or_default();
        (
            status.code(),
            child.stderr_tail().trim().to_owned(),
            written,
        )
    })
    .await
    .expect("curl task")
}

/// One curl fetching `url` `times` over one HTTP/2 connection: per request, the HTTP version,
/// status and connections made (`2 200 1`, then `2 200 0` for a reused connection).
async fn reused_connection(url: String, times: usize) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(tools::curl());
        cmd.args(["-sk", "--http2", "--max-time", "20"]).args([
            "-w",
            "%{stderr}%{http_version} %{http_code} %{num_connects}\\n",
        ]);
        for _ in 0..times {
            cmd.args(["-o", "/dev/null", &url]);
        }
        let mut child = Child::spawn(&mut cmd).expect("spawn curl");
        child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("curl {url} did not end"));
        child.stderr_tail().lines().map(str::to_owned).collect()
    })
    .await
    .expect("curl task")
}

/// [`curl`] over HTTP/2.
async fn h2(url: String) -> (String, Vec<u8>) {
    let (_, out, body) = curl("--http2", url, "10").await;
    (out, body)
}

/// The value of `KEY="..."` in an HLS tag line.
fn attribute(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &line[at..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_rtmps_and_plays_back_over_rtmps_and_rtmp() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf(2040));
    let tls = node(&files, false, "").await;
    let _publisher = process::publish_looped(
        tools::ffmpeg_modern(),
        &fixture(H264_AAC),
        &format!("rtmps://{}/live/x", tls.rtmps),
        &["-tls_verify", "0"],
    );
    tls.process.wait_publishing("x").await;

    let over_tls = probe_live(format!("rtmps://{}/live/x", tls.rtmps)).await;
    assert_h264_aac(&over_tls, "played over RTMPS");
    let clear = probe_live(tls.process.rtmp_url("x")).await;
    assert_h264_aac(&clear, "played over RTMP");

    // One stream, fed over TLS, read both ways.
    let stream = tls.process.stream("x").await.expect("live/x");
    assert_eq!(stream["publishing"], true);
    assert_eq!(
        tls.process.metric("sluice_streams").await,
        1.0,
        "one stream for both"
    );
    assert!(
        tls.process
            .metric(r#"sluice_tls_handshakes_total{protocol="rtmps",result="ok"}"#)
            .await
            >= 2.0
    );
    // The publisher and both players are RTMP connections to the front end.
    assert!(
        tls.process
            .metric(r#"sluice_connections_total{protocol="rtmp"}"#)
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_flv_and_hls_over_http2_and_http11() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf(2040));
    let tls = node(
        &files,
        false,
        "[hls]\ntarget_duration_ms = 1000\npart_target_ms = 200\n",
    )
    .await;
    let _publisher = Publisher::fixture(tls.process.rtmp_url("x"), H264_AAC)
        .real_time()
        .spawn();
    tls.process.wait_publishing("x").await;
    let base = format!("https://{}/live", tls.https);

    // One HTTP/2 connection polling the media playlist is one HLS viewer, although each of
    // its requests reaches the HTTP handler on a socket of its own.
    let polls = reused_connection(format!("{base}/x/media.m3u8"), 3).await;
    assert_eq!(
        polls,
        ["2 200 1", "2 200 0", "2 200 0"],
        "three requests, one connection"
    );
    assert_eq!(tls.process.metric("sluice_hls_viewers").await, 1.0);

    // HTTP-FLV: an endless body, cut by curl's own deadline (exit 28) after bytes arrived.
    let (code, out, body) = curl("--http2", format!("{base}/x.flv"), "3").await;
    assert_eq!(out, "2 200", "HTTP/2 and a 200 (curl exit {code:?})");
    assert!(
        body.starts_with(b"FLV\x01"),
        "an FLV header: {:?}",
        &body[..body.len().min(16)]
    );
    assert!(body.len() > 9 + 4 + 11, "tags after the header");

    // HLS: the multivariant playlist, the media playlist, a part, the held preload hint.
    let (out, body) = h2(format!("{base}/x.m3u8")).await;
    assert_eq!(out, "2 200");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.starts_with("#EXTM3U") && text.contains("x/media.m3u8"),
        "{text}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let playlist = loop {
        let (out, body) = h2(format!("{base}/x/media.m3u8")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if out == "2 200" && text.contains("#EXT-X-PART:") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no part listed over HTTP/2 ({out}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let part = playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .find_map(|l| attribute(l, "URI"))
        .expect("a part URI");
    let (out, body) = h2(format!("{base}/x/{part}")).await;
    assert_eq!(out, "2 200", "part {part}");
    assert!(body.windows(4).any(|w| w == b"moof"), "an fMP4 fragment");
    let hint = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .and_then(|l| attribute(l, "URI"))
        .expect("a preload hint");
    let (out, body) = h2(format!("{base}/x/{hint}")).await;
    assert_eq!(out, "2 200", "the hinted part {hint}, held until cut");
    assert!(body.windows(4).any(|w| w == b"moof"));

    // HTTP/1.1 over TLS too, for clients without HTTP/2.
    let (_, out, _) = curl("--http1.1", format!("{base}/x.m3u8"), "10").await;
    assert_eq!(out, "1.1 200");

    // Real players over HTTPS (ffmpeg's HTTP client speaks HTTP/1.1).
    assert_h264_aac(&probe_live(format!("{base}/x.flv")).await, "HTTPS-FLV");
    let hls = probe_live(format!("{base}/x.m3u8")).await;
    assert_eq!(
        hls.video().map(|v| v.codec()),
        Some("h264"),
        "HLS over HTTPS"
    );
    assert_eq!(
        hls.audio().map(|a| a.codec()),
        Some("aac"),
        "HLS over HTTPS"
    );

    assert!(
        tls.process
            .metric(r#"sluice_tls_handshakes_total{protocol="https",result="ok"}"#)
            .await
            >= 8.0
    );
    // Every HTTP/2 stream's FLV viewer is gone once its request is.
    let gone = eventually(WAIT, || async {
        tls.process
            .metric(r#"sluice_viewers{protocol="http_flv"}"#)
            .await
            == 0.0
    })
    .await;
    assert!(gone, "an HTTPS-FLV viewer outlived its request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_by_sighup_reaches_new_connections_and_spares_open_ones() {
    let pki = Pki::new();
    let (first, second) = (pki.leaf(2040), pki.leaf(2041));
    let files = Files::new(&first);
    let tls = node(&files, false, "").await;
    let _publisher = Publisher::fixture(tls.process.rtmp_url("x"), H264_AAC)
        .real_time()
        .spawn();
    tls.process.wait_publishing("x").await;
    assert_eq!(presented(tls.https, &pki.ca).await, first.der);
    assert_eq!(presented(tls.rtmps, &pki.ca).await, first.der);
    assert_eq!(
        tls.process
            .metric("sluice_tls_certificate_not_after_seconds")
            .await,
        first.not_after as f64
    );
    let viewer = FlvViewer::start(tls.https, &pki.ca, "/live/x.flv").await;
    assert!(viewer.keeps_receiving(20_000).await, "the viewer receives");

    files.write(&second);
    tls.process.hup();
    tls.wait_metric(r#"sluice_tls_reloads_total{result="ok"}"#, 1.0)
        .await;
    assert_eq!(
        presented(tls.https, &pki.ca).await,
        second.der,
        "HTTPS after the reload"
    );
    assert_eq!(
        presented(tls.rtmps, &pki.ca).await,
        second.der,
        "RTMPS after the reload"
    );
    assert_eq!(
        tls.process
            .metric("sluice_tls_certificate_not_after_seconds")
            .await,
        second.not_after as f64
    );
    assert!(
        viewer.keeps_receiving(20_000).await,
        "the viewer connected before the reload goes on"
    );

    // A renewal gone wrong: the key file broken. The certificate in use stays.
    std::fs::write(files.key(), "not a key\n").expect("break the key");
    tls.process.hup();
    tls.wait_metric(r#"sluice_tls_reloads_total{result="invalid"}"#, 1.0)
        .await;
    let key = files.key().display().to_string();
    assert!(
        logged(
            &tls.process.log(),
            "TLS certificate reload refused; the certificate in use stays",
            &key
        ),
        "the refusal names {key}:\n{}",
        tls.process.log()
    );
    assert_eq!(presented(tls.https, &pki.ca).await, second.der);
    assert!(viewer.keeps_receiving(20_000).await, "still serving");
    let another = FlvViewer::start(tls.https, &pki.ca, "/live/x.flv").await;
    assert!(another.keeps_receiving(20_000).await, "new viewers too");
    assert_eq!(
        tls.process
            .metric("sluice_tls_certificate_not_after_seconds")
            .await,
        second.not_after as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_of_the_files_is_picked_up_without_a_signal() {
    let pki = Pki::new();
    let (first, second) = (pki.leaf(2040), pki.leaf(2041));
    let files = Files::new(&first);
    let tls = node(&files, true, "").await;
    assert_eq!(presented(tls.https, &pki.ca).await, first.der);
    files.replace(&second);
    let renewed = eventually(WAIT, || async {
        presented(tls.https, &pki.ca).await == second.der
    })
    .await;
    assert!(
        renewed,
        "the watch never reloaded; log:\n{}",
        tls.process.log()
    );
    assert_eq!(
        tls.process
            .metric(r#"sluice_tls_reloads_total{result="ok"}"#)
            .await,
        1.0,
        "one reload for the pair"
    );
}

#[tokio::test]
async fn a_certificate_file_missing_at_start_stops_the_node_naming_it() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf(2040));
    std::fs::remove_file(files.cert()).expect("remove the certificate");
    let config = files.dir.path().join("sluice.toml");
    let spec = Spec::origin("tls", Transport::Rtmp).with(&files.section(false));
    std::fs::write(&config, spec.toml()).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&config).env_clear();
    let mut child = Child::spawn(&mut cmd).expect("spawn sluice serve");
    let status = child
        .wait_timeout(WAIT)
        .expect("sluice serve exits on a missing certificate");
    assert!(!status.success(), "{status}");
    let stderr = child.stderr_tail();
    let cert = files.cert().display().to_string();
    assert!(
        stderr.contains(&cert) && stderr.contains("cannot read"),
        "stderr names {cert}:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keys_hold_over_rtmps_and_https_as_over_clear_text() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf(2040));
    let tls = node(
        &files,
        false,
        "[auth.apps.live.publish]\ncheck = \"key\"\nkeys = [\"pub-key\"]\n\
         [auth.apps.live.play]\ncheck = \"key\"\nkeys = [\"view-key\"]\n",
    )
    .await;
    let refused = |reason: &str| {
        format!(r#"sluice_connections_refused_total{{protocol="rtmp",reason="{reason}"}}"#)
    };

    // ffmpeg 9 over RTMPS with a wrong key: refused by the gate, as over RTMP.
    let wrong = process::publish_looped(
        tools::ffmpeg_modern(),
        &fixture(H264_AAC),
        &format!("rtmps://{}/live/x?key=nope", tls.rtmps),
        &["-tls_verify", "0"],
    );
    tls.wait_metric(&refused("auth_invalid"), 1.0).await;
    drop(wrong);
    assert!(
        tls.process
            .stream("x")
            .await
            .is_none_or(|s| s["publishing"] != true),
        "a wrong key published"
    );

    let _publisher = process::publish_looped(
        tools::ffmpeg_modern(),
        &fixture(H264_AAC),
        &format!("rtmps://{}/live/x?key=pub-key", tls.rtmps),
        &["-tls_verify", "0"],
    );
    tls.process.wait_publishing("x").await;

    // HTTPS, both HTTP versions: no key 401, a wrong one 403, the viewer key plays.
    let base = format!("https://{}/live", tls.https);
    for version in ["--http2", "--http1.1"] {
        let v = if version == "--http2" { "2" } else { "1.1" };
        let (_, out, _) = curl(version, format!("{base}/x.flv"), "10").await;
        assert_eq!(out, format!("{v} 401"), "{version} without a key");
        let (_, out, _) = curl(version, format!("{base}/x.flv?key=pub-key"), "10").await;
        assert_eq!(
            out,
            format!("{v} 403"),
            "{version} with the publisher's key"
        );
        let (code, out, body) = curl(version, format!("{base}/x.flv?key=view-key"), "3").await;
        assert_eq!(out, format!("{v} 200"), "{version} (curl exit {code:?})");
        assert!(body.starts_with(b"FLV\x01"), "{version}: an FLV header");
    }

    // RTMPS play: refused without the key, plays with it.
    let before = tls.process.metric(&refused("auth_missing")).await;
    let denied = tokio::task::spawn_blocking({
        let url = format!("rtmps://{}/live/x", tls.rtmps);
        move || probe_with(&url, &["-tls_verify", "0"], PROBE)
    })
    .await
    .expect("probe task");
    assert!(denied.is_err(), "played over RTMPS without a key");
    assert!(tls.process.metric(&refused("auth_missing")).await > before);
    let played = probe_live(format!("rtmps://{}/live/x?key=view-key", tls.rtmps)).await;
    assert_h264_aac(&played, "played over RTMPS with the viewer key");
}
