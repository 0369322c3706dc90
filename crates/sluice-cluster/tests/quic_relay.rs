//! The QUIC relay between two in-process nodes on loopback: an origin serving pulls and an
//! edge (a client-only endpoint) pulling, with a cluster CA made here by rcgen.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::{TransportConfig, VarInt};
use sluice_cluster::quic::{QuicRelay, QuicSource, RelayError};
use sluice_cluster::source::PullError;
use sluice_core::topology::{PullTicket, Puller, Via};
use sluice_core::{Config, Publisher, StreamKey};
use sluice_media::{Frame, FrameKind};
use sluice_runtime::Context;
use sluice_testkit::media;
use sluice_testkit::wait::eventually;

/// A cluster CA and one node certificate (server and client) in `dir`.
fn make_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Sluice test cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let node_key = KeyPair::generate().unwrap();
    let mut node = CertificateParams::new(vec!["sluice-cluster".to_owned()]).unwrap();
    node.distinguished_name
        .push(DnType::CommonName, "sluice-cluster");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node.signed_by(&node_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), node_cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), node_key.serialize_pem()).unwrap();
}

struct Cluster {
    _dir: tempfile::TempDir,
    origin: Arc<Context>,
    origin_relay: Arc<QuicRelay>,
    addr: String,
    edge: Arc<QuicRelay>,
}

fn config(dir: &Path, role: &str, node_id: &str, listen: &str) -> Config {
    let toml = format!(
        r#"
[streams]
apps = ["live"]
republish_grace_ms = 300

[cluster]
role = "{role}"
node_id = "{node_id}"
quic_listen = "{listen}"
tls_cert = "{cert}"
tls_key = "{key}"
tls_ca = "{ca}"
"#,
        cert = dir.join("node.pem").display(),
        key = dir.join("node.key").display(),
        ca = dir.join("ca.pem").display(),
    );
    Config::load(Some(&toml), []).unwrap()
}

/// An origin serving on loopback and an edge relay with `edge_transport`.
async fn cluster(edge_transport: TransportConfig) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let origin = Context::new(config(dir.path(), "origin", "origin-1", "127.0.0.1:0"));
    let origin_relay = QuicRelay::new(&origin.config.load().cluster).unwrap();
    let addr = origin_relay.local_addr().unwrap().to_string();
    origin
        .tracker
        .spawn(origin_relay.clone().serve(origin.clone()));
    let edge_cfg = config(dir.path(), "edge", "edge-1", "");
    let edge = QuicRelay::with_transport(&edge_cfg.cluster, edge_transport).unwrap();
    Cluster {
        _dir: dir,
        origin,
        origin_relay,
        addr,
        edge,
    }
}

impl Cluster {
    /// The edge's pull of `live/NAME` from the origin, with no via-list.
    async fn pull(&self, name: &str) -> QuicSource {
        self.edge
            .pull(
                &self.addr,
                "live",
                name,
                &Via::default(),
                Duration::from_secs(5),
            )
            .await
            .expect("pull")
    }
}

fn key(name: &str) -> StreamKey {
    StreamKey::new("live", name)
}

/// An H.264 video tag body: sequence header, keyframe or inter frame, carrying `marker`
/// and padded to `size` bytes.
fn avc(keyframe: bool, seq: bool, marker: u8, size: usize) -> Bytes {
    let frame_type = if keyframe || seq { 0x17 } else { 0x27 };
    let mut body = vec![frame_type, u8::from(!seq), 0, 0, 0, marker, marker];
    body.resize(size.max(body.len()), marker);
    Bytes::from(body)
}

fn aac(seq: bool, marker: u8) -> Bytes {
    Bytes::from(vec![0xaf, u8::from(!seq), 0x12, marker])
}

const METADATA: &[u8] = b"\x02\x00\x0aonMetaData\x03\x00\x00\x09";

fn publish_headers(p: &mut Publisher, ts: u32) {
    let now = Instant::now();
    p.push_metadata(ts, Bytes::from_static(METADATA), now)
        .unwrap();
    p.push_media(FrameKind::Video, ts, avc(true, true, 0xee, 0), now)
        .unwrap();
    p.push_media(FrameKind::Audio, ts, aac(true, 0xee), now)
        .unwrap();
}

/// One GOP: a keyframe at `ts`, then `inter` inter frames (and an audio frame each) 40 ms
/// apart. Returns the next timestamp.
fn publish_gop(p: &mut Publisher, ts: u32, inter: u32, size: usize) -> u32 {
    let now = Instant::now();
    p.push_media(FrameKind::Video, ts, avc(true, false, 1, size), now)
        .unwrap();
    for i in 1..=inter {
        let t = ts + i * 40;
        p.push_media(FrameKind::Audio, t - 20, aac(false, i as u8), now)
            .unwrap();
        p.push_media(FrameKind::Video, t, avc(false, false, 2, size), now)
            .unwrap();
    }
    ts + (inter + 1) * 40
}

/// [`publish_gop`] in real time, a frame every 10 ms.
async fn publish_gop_live(p: &mut Publisher, ts: u32, inter: u32, size: usize) -> u32 {
    let now = Instant::now();
    p.push_media(FrameKind::Video, ts, avc(true, false, 1, size), now)
        .unwrap();
    for i in 1..=inter {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = ts + i * 40;
        let now = Instant::now();
        p.push_media(FrameKind::Audio, t - 20, aac(false, i as u8), now)
            .unwrap();
        p.push_media(FrameKind::Video, t, avc(false, false, 2, size), now)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    ts + (inter + 1) * 40
}

async fn next(source: &mut QuicSource) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .expect("a frame within 5 s")
        .expect("a frame")
}

/// Whether `f` is a keyframe, by the flag the upstream sent (checked against the payload:
/// the edge does not parse it).
fn is_keyframe(f: &Frame) -> bool {
    let by_payload = f.kind == FrameKind::Video
        && media::is_keyframe(&f.payload)
        && !media::is_avc_config(&f.payload);
    assert_eq!(f.keyframe, by_payload, "keyframe flag of {f:?}");
    f.keyframe
}

/// Whether `f` is a sequence header, by the flag the upstream sent (checked as above).
fn is_seq_header(f: &Frame) -> bool {
    let by_payload = media::is_sequence_header(f.kind.type_id(), &f.payload);
    assert_eq!(f.seq_header, by_payload, "sequence header flag of {f:?}");
    f.seq_header
}

/// A frame's dts, which these tests keep within 32 bits (the origin's timeline starts at 0).
fn dts32(f: &Frame) -> u32 {
    u32::try_from(f.dts).expect("a small dts")
}

/// Waits until `cond` holds, up to 5 s; panics with `what` if it does not.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let held = eventually(Duration::from_secs(5), || std::future::ready(cond())).await;
    assert!(held, "{what}");
}

fn viewers(ctx: &Context, key: &StreamKey) -> usize {
    ctx.registry.get(key).map_or(0, |s| {
        s.stats.viewers.load(std::sync::atomic::Ordering::Acquire)
    })
}

/// A publisher of `live/NAME` on `ctx`.
fn publisher(ctx: &Context, name: &str) -> Publisher {
    ctx.registry
        .publish(&key(name), ctx.cache_settings(), false, Instant::now())
        .expect("publish")
}

fn gops(ctx: &Context, outcome: &'static str) -> u64 {
    ctx.metrics
        .relay_gops
        .get_or_create(&[("outcome", outcome)])
        .get()
}

#[tokio::test]
async fn pulls_headers_then_keyframe_then_every_frame_in_order() {
    let c = cluster(TransportConfig::default()).await;
    let mut p = publisher(&c.origin, "cam");
    publish_headers(&mut p, 0);
    let ts = publish_gop(&mut p, 0, 3, 200);

    let via = Via(vec![Arc::from("edge-1")]);
    let mut source = c
        .edge
        .pull(&c.addr, "live", "cam", &via, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(viewers(&c.origin, &key("cam")), 1, "the pull is a viewer");
    assert_eq!(c.origin.metrics.relay_streams.get(), 1);

    // The stream's headers first, then the cached GOP from its keyframe.
    let mut got = Vec::new();
    for _ in 0..3 + 1 + 6 {
        got.push(next(&mut source).await);
    }
    let kinds: Vec<_> = got.iter().map(|f| f.kind).collect();
    assert_eq!(
        &kinds[..4],
        &[
            FrameKind::Script,
            FrameKind::Video,
            FrameKind::Audio,
            FrameKind::Video
        ]
    );
    assert_eq!(&got[0].payload[..], METADATA);
    assert!(is_seq_header(&got[1]) && is_seq_header(&got[2]));
    assert!(is_keyframe(&got[3]));
    let dts: Vec<u32> = got[3..].iter().map(dts32).collect();
    assert_eq!(dts, [0, 20, 40, 60, 80, 100, 120]);

    // Live GOPs follow in order, each from its keyframe, with the repeated headers
    // (unchanged) not delivered again.
    let mut expected = Vec::new();
    for g in 0..3 {
        let start = ts + g * 200;
        expected.push(start);
        for i in 1..=4 {
            expected.push(start + i * 40 - 20);
            expected.push(start + i * 40);
        }
    }
    // Published while the edge reads, as a pull does.
    let publishing = tokio::spawn(async move {
        let mut ts = ts;
        for _ in 0..3 {
            ts = publish_gop_live(&mut p, ts, 4, 300).await;
        }
        (p, ts)
    });
    let mut live = Vec::new();
    for _ in 0..expected.len() {
        let f = next(&mut source).await;
        assert!(
            !is_seq_header(&f) && f.kind != FrameKind::Script,
            "no repeated headers"
        );
        live.push(f);
    }
    assert_eq!(live.iter().map(dts32).collect::<Vec<_>>(), expected);
    assert!(is_keyframe(&live[0]) && is_keyframe(&live[9]) && is_keyframe(&live[18]));
    let (mut p, mut ts) = publishing.await.unwrap();

    // A burst of GOPs (a read that returns a GOP's tail with the next keyframe) is not
    // late: nothing is cancelled, and the edge ends up on the newest GOP, in order.
    let burst_start = ts;
    ts = publish_gop(&mut p, ts, 4, 300);
    let newest = ts;
    ts = publish_gop(&mut p, ts, 4, 300);
    let mut last = 0;
    loop {
        let f = next(&mut source).await;
        assert!(dts32(&f) > last && dts32(&f) >= burst_start, "in order");
        last = dts32(&f);
        if dts32(&f) == newest {
            assert!(is_keyframe(&f));
        }
        if dts32(&f) == ts - 40 {
            break;
        }
    }
    assert_eq!(gops(&c.origin, "cancelled"), 0);
    wait_for("the GOPs before the live one count as sent", || {
        gops(&c.origin, "sent") >= 5
    })
    .await;

    // A changed sequence header reaches the edge, before the keyframe it applies to.
    p.push_media(
        FrameKind::Video,
        ts,
        avc(true, true, 0xdd, 0),
        Instant::now(),
    )
    .unwrap();
    publish_gop(&mut p, ts, 0, 100);
    let header = next(&mut source).await;
    assert!(is_seq_header(&header) && header.payload[5] == 0xdd);
    assert!(is_keyframe(&next(&mut source).await));

    // The publisher leaves: after its grace the edge hears the stream ended.
    drop(p);
    let end = tokio::time::timeout(Duration::from_secs(5), source.next()).await;
    assert!(matches!(end, Ok(Err(PullError::Ended))), "{end:?}");
    assert!(
        matches!(source.next().await, Err(PullError::Ended)),
        "stays ended"
    );
    wait_for("the upstream dropped its cursor", || {
        viewers(&c.origin, &key("cam")) == 0 && c.origin.metrics.relay_streams.get() == 0
    })
    .await;
}

#[tokio::test]
async fn a_missing_stream_or_application_is_refused_at_once() {
    let c = cluster(TransportConfig::default()).await;
    let started = Instant::now();
    let missing = c
        .edge
        .pull(
            &c.addr,
            "live",
            "nobody",
            &Via::default(),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(&missing, Err(PullError::NotFound(m)) if m.contains("live/nobody")),
        "{missing:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert!(missing.unwrap_err().is_miss());

    let app = c
        .edge
        .pull(
            &c.addr,
            "other",
            "cam",
            &Via::default(),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(&app, Err(PullError::Refused(m)) if m.contains("other")),
        "{app:?}"
    );
    assert_eq!(viewers(&c.origin, &key("nobody")), 0);
}

/// A puller that records the via-lists it is asked with and refuses loops, as the real
/// one does.
#[derive(Debug, Default)]
struct RecordingPuller {
    seen: Mutex<Vec<Via>>,
}

impl Puller for RecordingPuller {
    fn demand(&self, _key: &StreamKey, via: &Via) -> Option<PullTicket> {
        self.seen.lock().push(via.clone());
        via.refuse("origin-1", 4)
            .map(|refusal| PullTicket::failed(refusal.to_string()))
    }
}

#[tokio::test]
async fn the_via_list_reaches_the_upstream_and_a_loop_is_refused() {
    let c = cluster(TransportConfig::default()).await;
    let puller = Arc::new(RecordingPuller::default());
    c.origin.puller.set(puller.clone()).unwrap();

    let looped = Via(vec![Arc::from("edge-1"), Arc::from("origin-1")]);
    let refused = c
        .edge
        .pull(&c.addr, "live", "cam", &looped, Duration::from_secs(5))
        .await;
    assert!(
        matches!(&refused, Err(PullError::Refused(m)) if m.contains("loop")),
        "{refused:?}"
    );
    assert_eq!(*puller.seen.lock(), vec![looped]);
}

#[tokio::test]
async fn pulls_to_one_peer_share_one_connection() {
    let c = cluster(TransportConfig::default()).await;
    let mut publishers = Vec::new();
    for name in ["a", "b"] {
        let mut p = publisher(&c.origin, name);
        publish_headers(&mut p, 0);
        publish_gop(&mut p, 0, 2, 100);
        publishers.push(p);
    }
    // Concurrent first pulls share one connection attempt.
    let none = Via::default();
    let wait = Duration::from_secs(5);
    let (a, b) = tokio::join!(
        c.edge.pull(&c.addr, "live", "a", &none, wait),
        c.edge.pull(&c.addr, "live", "b", &none, wait),
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert_eq!(next(&mut a).await.kind, FrameKind::Script);
    assert_eq!(next(&mut b).await.kind, FrameKind::Script);
    assert_eq!(c.origin.metrics.relay_connections.get(), 1);
    assert_eq!(c.origin.metrics.relay_streams.get(), 2);

    // Dropping a source ends its pull upstream (the cursor goes); the connection stays
    // for the next pull.
    drop(a);
    wait_for("pull a ended upstream", || {
        viewers(&c.origin, &key("a")) == 0 && c.origin.metrics.relay_streams.get() == 1
    })
    .await;
    let mut again = c.pull("a").await;
    assert_eq!(next(&mut again).await.kind, FrameKind::Script);
    assert_eq!(c.origin.metrics.relay_connections.get(), 1);

    // Closing the origin's relay ends the pulls at the edge.
    c.origin_relay.close(Duration::from_secs(1)).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = b.next().await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(closed, Ok(PullError::Closed)), "{closed:?}");
}

#[tokio::test]
async fn a_slow_edge_gets_recent_gops_not_a_backlog() {
    // A link that takes 16 KiB per GOP stream until the edge reads: GOPs of ~40 KiB stall.
    let mut slow = TransportConfig::default();
    slow.stream_receive_window(VarInt::from_u32(16 << 10))
        .receive_window(VarInt::from_u32(256 << 10));
    let c = cluster(slow).await;
    let mut p = publisher(&c.origin, "cam");
    publish_headers(&mut p, 0);
    let mut ts = publish_gop(&mut p, 0, 1, 4000);
    let mut source = c.pull("cam").await;
    for _ in 0..4 {
        next(&mut source).await;
    }

    // The edge stops reading while 10 GOPs of 200 ms (5 frames of 8 KiB each) go out in
    // real time.
    for _ in 0..10 {
        for i in 0..5u32 {
            let t = ts + i * 40;
            p.push_media(
                FrameKind::Video,
                t,
                avc(i == 0, false, 3, 8 << 10),
                Instant::now(),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        ts += 200;
    }
    let newest = ts - 40;
    assert!(
        gops(&c.origin, "cancelled") > 0,
        "late GOPs were cancelled:\n{}",
        c.origin.metrics.encode()
    );

    // Reading again: the edge goes on from a recent keyframe, not from the backlog.
    let first = next(&mut source).await;
    assert!(is_keyframe(&first), "resumes at a keyframe");
    assert!(
        dts32(&first) + 400 >= newest,
        "resumed at {} while the newest frame is {newest}",
        dts32(&first)
    );
    // And keeps up once it reads.
    for i in 0..5u32 {
        p.push_media(
            FrameKind::Video,
            ts + i * 40,
            avc(i == 0, false, 4, 8 << 10),
            Instant::now(),
        )
        .unwrap();
    }
    let mut last = dts32(&first);
    loop {
        let f = next(&mut source).await;
        assert!(dts32(&f) >= last, "in order");
        last = dts32(&f);
        if dts32(&f) == ts + 160 {
            break;
        }
    }
}

#[tokio::test]
async fn an_audio_only_stream_is_cut_into_gops_by_time() {
    let c = cluster(TransportConfig::default()).await;
    let mut p = publisher(&c.origin, "radio");
    p.push_media(FrameKind::Audio, 0, aac(true, 0xee), Instant::now())
        .unwrap();
    // 100 ms of audio every 5 ms of wall time, while the edge pulls.
    let publishing = tokio::spawn(async move {
        for i in 1..=60u32 {
            p.push_media(
                FrameKind::Audio,
                i * 100,
                aac(false, i as u8),
                Instant::now(),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p
    });
    let mut source = c.pull("radio").await;
    let header = next(&mut source).await;
    assert!(is_seq_header(&header));
    let mut last = dts32(&next(&mut source).await);
    let first = last;
    while last < 6000 {
        let f = next(&mut source).await;
        assert_eq!(dts32(&f), last + 100, "every frame, in order");
        last = dts32(&f);
    }
    let _p = publishing.await.unwrap();
    let cut = (6000 - first) / 1000;
    wait_for("a GOP stream per second of audio", || {
        gops(&c.origin, "sent") + 1 >= u64::from(cut)
    })
    .await;
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let c = cluster(TransportConfig::default()).await;
    let mut p = publisher(&c.origin, "cam");
    publish_headers(&mut p, 0);
    publish_gop(&mut p, 0, 2, 100);
    // Same name in its certificate, but signed by another CA: the TLS handshake fails in
    // both directions, so it neither pulls nor learns anything.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let stranger = QuicRelay::new(&config(other.path(), "edge", "stranger", "").cluster).unwrap();
    let refused = stranger
        .pull(
            &c.addr,
            "live",
            "cam",
            &Via::default(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("a certificate from another CA must not pull");
    assert!(matches!(refused, PullError::Connect(_)), "{refused:?}");
    assert_eq!(viewers(&c.origin, &key("cam")), 0);
    // The cluster's own edge still pulls.
    let mut source = c.pull("cam").await;
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(next(&mut source).await);
    }
    assert!(first.iter().any(is_keyframe), "{first:?}");
}

/// The cluster TLS of the node in `dir`, for a raw QUIC peer that speaks relay bytes by
/// hand (another version).
fn raw_tls(dir: &Path) -> (rustls::ClientConfig, rustls::ServerConfig) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("node.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("node.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let roots = Arc::new(roots);
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .unwrap();
    client.alpn_protocols = vec![b"sluice-relay".to_vec()];
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"sluice-relay".to_vec()];
    (client, server)
}

/// A version 1 pull request for `live/cam`, as a version 1 node sends it.
const V1_PULL: &[u8] = b"SLRC\x01\0\0\0\x0e\x01\0\x04live\0\x03cam\0\0";

#[tokio::test]
async fn a_node_of_the_old_version_is_told_in_its_own_version() {
    let c = cluster(TransportConfig::default()).await;
    let (client, _) = raw_tls(c._dir.path());
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut old = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    old.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = old
        .connect(c.addr.parse().unwrap(), "sluice-cluster")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(V1_PULL).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .expect("an answer in time")
        .unwrap();
    // A version 1 node reads only version 1 preambles: the refusal carries one, and the
    // version this node speaks.
    assert_eq!(&answer[..5], b"SLRC\x01", "{answer:02x?}");
    let mut decoder = sluice_relay::ControlDecoder::new(sluice_relay::Limits::default());
    decoder.feed_slice(&answer);
    let refusal = decoder.poll().unwrap();
    assert!(
        matches!(
            &refusal,
            Some(sluice_relay::Control::Refused {
                code: sluice_relay::RefuseCode::Unsupported(sluice_relay::VERSION),
                message,
            }) if message.contains("version 1")
        ),
        "{refusal:?}"
    );
    assert_eq!(viewers(&c.origin, &key("cam")), 0);
}

#[tokio::test]
async fn an_upstream_of_the_old_version_fails_the_pull_with_its_version() {
    let c = cluster(TransportConfig::default()).await;
    let (_, server) = raw_tls(c._dir.path());
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let old = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = old.local_addr().unwrap().to_string();
    // A version 1 upstream: whatever it is asked, it answers that it speaks version 1.
    let upstream = tokio::spawn(async move {
        let conn = old.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let _ = recv.read_chunk(64, true).await;
        send.write_all(b"SLRC\x01\0\0\0\x09\x03\x05\x01\0\x04nope")
            .await
            .unwrap();
        send.finish().unwrap();
        // Held until the edge has read the answer.
        let _ = recv.read_to_end(1024).await;
    });
    let failed = c
        .edge
        .pull(
            &addr,
            "live",
            "cam",
            &Via::default(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("an old upstream cannot serve the pull");
    assert!(matches!(failed, PullError::Version(1)), "{failed:?}");
    assert!(failed.to_string().contains("version 1"), "{failed}");
    upstream.abort();
}

#[tokio::test]
async fn start_up_errors_name_their_cause_and_whether_a_retry_may_help() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut cfg = config(dir.path(), "edge", "edge-1", "");
    cfg.cluster.tls_key.clear();
    let missing = QuicRelay::new(&cfg.cluster).expect_err("no key");
    assert!(
        matches!(missing, RelayError::Missing { key: "tls_key", .. }),
        "{missing:?}"
    );
    assert!(!missing.retry_may_help(), "the config must change");

    // A port another socket holds: the bind fails, and may succeed later.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = config(dir.path(), "origin", "origin-1", &addr);
    let bind = QuicRelay::new(&cfg.cluster).expect_err("the port is taken");
    assert!(matches!(bind, RelayError::Bind { .. }), "{bind:?}");
    assert!(bind.retry_may_help());
    assert!(bind.to_string().contains(&addr), "{bind}");
}
