//! Supervision of a node's subsystems: a listener that fails under a running node stops it in
//! order, `App::run` returns an error naming the subsystem (the binary turns that into exit
//! status 1), and `sluice_subsystem_failures_total` counts it.
//!
//! The failure is a real one, caused from outside the code under test and without a hook in
//! it: the test finds the node's listening socket among this process's descriptors (by its
//! port in `/proc/self/net/tcp`, then its inode in `/proc/self/fd`) and shuts it down with
//! shutdown(2), as a stray `ss -K`, a buggy library sharing the process or the kernel
//! tearing the socket down would. From then on every accept fails with `EINVAL` and retrying
//! cannot help: the listener is gone for good, which is what the accept loops must tell
//! from a passing error (out of descriptors) and report.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use sluice::App;
use sluice::app::Addrs;
use sluice_testkit::http;
use sluice_testkit::wait::eventually;

/// Deadline for the node to notice and stop. Generous: CI runs this next to other tests on
/// two cores; a node that never notices fails at once when the deadline passes.
const WAIT: Duration = Duration::from_secs(30);

/// The descriptor of this process's TCP socket listening on `addr` (IPv4).
fn listening_fd(addr: SocketAddr) -> i32 {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("read /proc/self/net/tcp");
    // Columns: sl, local address (hex IP:port), remote address, state (0A = LISTEN), queues,
    // timer, retransmits, uid, timeout, inode.
    let inode = table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, port) = fields.get(1)?.split_once(':')?;
            let listening = fields.get(3) == Some(&"0A");
            (listening && u16::from_str_radix(port, 16).ok()? == addr.port())
                .then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
        })
        .unwrap_or_else(|| panic!("no listening socket on {addr} in /proc/self/net/tcp"));
    let link = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(Result::ok)
        .find_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            (target.to_str() == Some(link.as_str()))
                .then(|| entry.file_name().to_str()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no descriptor of this process is {link} ({addr})"))
}

/// Shuts down the listening socket on `addr` under its owner.
fn shut_down_listener(addr: SocketAddr) {
    let fd = listening_fd(addr);
    // SAFETY: shutdown(2) takes no memory from us. `fd` is the node's listener, which the
    // node keeps open until `run` returns; shutting it down (not closing it) is the failure
    // under test and leaves the descriptor valid.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    assert_eq!(rc, 0, "shutdown({fd}): {}", std::io::Error::last_os_error());
}

/// Starts a node, shuts down the listener `which` picks, and checks that `run` returns an
/// error naming `subsystem` and saying what failed (`context`), that the node stopped in
/// order (its shutdown token cancelled, its other listeners closed) and that the failure
/// was counted once.
async fn a_failed_listener_stops_the_node(
    which: fn(&Addrs) -> SocketAddr,
    subsystem: &str,
    context: &str,
) {
    let app = App::bind(common::test_config(""))
        .await
        .expect("bind the node");
    let addrs = app.addrs();
    let ctx = app.context();
    let run = tokio::spawn(app.run());
    // The node serves before its listener fails.
    let healthy = eventually(WAIT, || async {
        http::get(addrs.admin, "/healthz").await.0 == 200
    })
    .await;
    assert!(healthy, "/healthz never answered");

    shut_down_listener(which(&addrs));
    let error = tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("the node ran on with its {subsystem} listener shut down"))
        .expect("run panicked")
        .expect_err("run must fail when a listener does");

    let text = format!("{error:#}");
    assert!(
        text.starts_with(&format!("subsystem {subsystem} failed: {context}")),
        "{text}"
    );
    assert!(text.contains("os error 22"), "EINVAL, as it came: {text}");
    assert!(
        ctx.shutdown.is_cancelled(),
        "stopped through the shutdown token"
    );
    let metrics = ctx.metrics.encode();
    assert_eq!(
        http::metric_value(
            &metrics,
            &format!("sluice_subsystem_failures_total{{subsystem=\"{subsystem}\"}}")
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.matches("sluice_subsystem_failures_total{").count(),
        1,
        "only {subsystem} failed: {metrics}"
    );
    // Every other listener was closed with the node: connecting is refused.
    for addr in [addrs.rtmp, addrs.http, addrs.admin] {
        if addr != which(&addrs) {
            let connect = tokio::net::TcpStream::connect(addr).await;
            assert!(connect.is_err(), "{addr} still accepts after run returned");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_failing_stops_the_node() {
    a_failed_listener_stops_the_node(|a| a.admin, "admin", "accepting on the admin listener").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtmp_listener_failing_stops_the_node() {
    a_failed_listener_stops_the_node(|a| a.rtmp, "rtmp", "accepting on the RTMP listener").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_failing_stops_the_node() {
    a_failed_listener_stops_the_node(|a| a.http, "http_flv", "accepting on the HTTP listener")
        .await;
}

/// The other side: a node that serves pulls over the QUIC relay and pulls over it too, asked
/// to stop, stops cleanly. Its subsystems ending at shutdown are no failure (`run` is Ok,
/// nothing counted), and closing the relay (going away, then waiting for its connections
/// to be told, bounded by the shutdown deadline) lets `run` return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_quic_relay_stops_cleanly_when_asked() {
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples/tls");
    let file = |name: &str| tls.join(name).display().to_string();
    let config = common::test_config(&format!(
        "[streams]\napps = [\"live\"]\n\
         [cluster]\nrole = \"edge\"\nnode_id = \"edge-1\"\nquic_listen = \"127.0.0.1:0\"\n\
         tls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\n\
         [cluster.apps.live]\nupstreams = [\"quic://127.0.0.1:9\"]\n",
        file("node.pem"),
        file("node.key"),
        file("ca.pem"),
    ));
    let app = App::bind(config).await.expect("bind the node");
    assert!(app.addrs().quic.is_some(), "the relay listens");
    let admin = app.addrs().admin;
    let ctx = app.context();
    let run = tokio::spawn(app.run());
    let healthy = eventually(WAIT, || async {
        http::get(admin, "/healthz").await.0 == 200
    })
    .await;
    assert!(healthy, "/healthz never answered");

    ctx.shutdown.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("the node stopped")
        .expect("run panicked")
        .expect("a node asked to stop stops without error");
    let metrics = ctx.metrics.encode();
    assert!(
        !metrics.contains("sluice_subsystem_failures_total{"),
        "{metrics}"
    );
}
