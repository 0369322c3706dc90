//! Sluice's node-to-node relay over QUIC: an edge pulls a stream from another Sluice over one
//! connection per peer, each GOP on its own unidirectional QUIC stream so that a GOP the link
//! cannot carry in time is cancelled instead of delaying the next one. The bytes on each
//! stream are `sluice-relay`'s (sans-IO, fuzzed); this module owns the endpoint, TLS, the
//! connection cache, and the tasks that move frames between a stream's ring and QUIC.
//!
//! ## Cluster TLS
//!
//! Relay connections use mutual TLS 1.3 with a private cluster CA: every node has a
//! certificate signed by the CA, carrying the cluster name (`cluster.tls_server_name`,
//! default `sluice-cluster`) as a DNS subject alternative name and allowed for both server
//! and client authentication. A node serving pulls accepts only peers whose client
//! certificate the CA signed; a node pulling checks the upstream's certificate against the
//! CA and the cluster name. No public CA is involved, and any node holding a CA-signed
//! certificate is a trusted peer, so keep the CA key offline.
//!
//! Make the CA once (keep `ca.key` offline; only `ca.pem` goes to the nodes):
//!
//! ```sh
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
//!     -keyout ca.key -out ca.pem -days 3650 -subj "/CN=Sluice cluster CA" \
//!     -addext "basicConstraints=critical,CA:TRUE" \
//!     -addext "keyUsage=critical,keyCertSign,cRLSign"
//! ```
//!
//! Then, per node, a key and a certificate signed by the CA:
//!
//! ```sh
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
//!     -keyout node.key -out node.csr -subj "/CN=sluice-cluster"
//! openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
//!     -out node.pem -days 825 -extfile <(printf '%s\n' \
//!       'subjectAltName=DNS:sluice-cluster' \
//!       'extendedKeyUsage=serverAuth,clientAuth' \
//!       'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature')
//! ```
//!
//! (`deploy/cluster-tls.sh DIR` runs the same.) Configure each node with:
//!
//! ```toml
//! [cluster]
//! quic_listen = "0.0.0.0:1937"        # on nodes others pull from
//! tls_cert = "/etc/sluice/node.pem"   # the node's chain, PEM
//! tls_key = "/etc/sluice/node.key"    # its key (PKCS#8, SEC1 or PKCS#1 PEM)
//! tls_ca = "/etc/sluice/ca.pem"       # the cluster CA
//! tls_server_name = "sluice-cluster"  # the DNS name in every node certificate
//! ```
//!
//! All three files are needed on every relay node, listening or not (the client presents
//! its certificate too). Rotate by issuing new node certificates from the same CA; to
//! change the CA, put both CA certificates in `tls_ca` during the change-over.
//!
//! ## How a pull runs
//!
//! - The edge opens a bidirectional control stream on the peer's connection (made once per
//!   peer address, shared by every pull to it) and sends `Pull` with the via-list. The pull
//!   id is that stream's QUIC id, so the edge can route GOP streams to the pull before the
//!   answer arrives.
//! - The upstream ([`serve`](QuicRelay::serve)) attaches to the stream like a viewer
//!   (`Context::watch`, so pulls chain through tiers), refuses at once when it neither has
//!   nor pulls the stream, waits for the first frames, answers `Accepted`, and then sends
//!   each GOP on a new unidirectional stream of increasing priority, repeating the
//!   sequence headers and metadata in force at its start. A writer task per GOP is fed
//!   through a small bounded queue, so the ring is read without waiting on the network.
//!   When a new GOP begins and the previous one still has frames QUIC does not take within
//!   `LATE_GRACE` (50 ms) (the peer's flow control is full: it is behind), the
//!   previous stream is reset and counted `relay_gops{outcome="cancelled"}`, else finished
//!   (`sent`). A queue that fills up within a GOP cancels that GOP too; sending resumes at
//!   the next keyframe.
//! - Audio-only streams have no keyframes: a new GOP stream is cut every
//!   `AUDIO_GOP` (1 s) of audio.
//! - When the stream's publisher leaves and does not return within
//!   `streams.republish_grace_ms`, the upstream sends `Ended`. Either side finishing or
//!   resetting the control stream ends the pull; the upstream then drops its cursor.
//! - The edge ([`QuicSource`]) reads the newest GOP only: when a newer GOP stream arrives it
//!   finishes the current one if it completes within `SWITCH_GRACE` (100 ms)
//!   (covering packets merely reordered across streams), else abandons it and goes on with
//!   the newer one at its keyframe. Repeated headers equal to those already delivered are
//!   not delivered again.
//! - Frames cross parsed: each record carries the frame's flags, codec and 64-bit dts as the
//!   upstream parsed them, and the edge builds its frames from those parts without parsing
//!   the payload again. A peer of another relay version is refused in its own version
//!   (`Unsupported`, see `sluice-relay`); the pull fails with `PullError::Version`.

mod pull;
mod serve;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Endpoint, TransportConfig, VarInt};
use sluice_core::topology::{ClusterConfig, Via};
use sluice_media::FrameKind;
use sluice_runtime::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::source::PullError;

pub use pull::QuicSource;

/// The ALPN protocol name relay connections negotiate (the wire version is in each
/// stream's preamble, see `sluice-relay`).
const ALPN: &[u8] = b"sluice-relay";

/// QUIC application error codes the relay closes or resets with.
mod code {
    use quinn::VarInt;
    /// Normal end (a pull or connection done).
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// A GOP stream given up for a newer one.
    pub const CANCELLED: VarInt = VarInt::from_u32(1);
    /// The peer broke the wire format.
    pub const PROTOCOL: VarInt = VarInt::from_u32(2);
    /// A GOP stream for no pull this node has.
    pub const UNKNOWN_PULL: VarInt = VarInt::from_u32(3);
    /// This node is shutting down.
    pub const GOING_AWAY: VarInt = VarInt::from_u32(4);
}

/// Pull requests one connection may have open at once.
const MAX_PULLS_PER_CONNECTION: u32 = 512;
/// GOP streams an edge accepts open at once per connection (a pull has one or two).
const MAX_GOP_STREAMS_PER_CONNECTION: u32 = 1024;
/// Relay connections from other nodes served at once; more are refused at the handshake.
const MAX_CONNECTIONS: usize = 1024;
/// Keep-alive on connections this node opens, so an idle cached connection stays up and a
/// dead peer is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A peer silent this long (no keep-alive either) is gone. A killed peer sends nothing, so
/// this is how long its cached connection lingers (pulls on it fail over sooner, after
/// `cluster.pull.no_data_timeout_ms`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// The QUIC relay endpoint of this node: serves pulls from other nodes when it listens, and
/// pulls from them.
pub struct QuicRelay {
    endpoint: Endpoint,
    /// Whether a server config is installed (`cluster.quic_listen` set).
    listening: bool,
    client: quinn::ClientConfig,
    server_name: String,
    /// Connections this node opened, by peer address as configured.
    peers: Mutex<HashMap<String, Arc<pull::Peer>>>,
    /// Tasks of connections this node opened (GOP stream routers).
    tracker: TaskTracker,
    /// Cancelled when the relay is closed or dropped.
    closing: CancellationToken,
}

impl fmt::Debug for QuicRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicRelay")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("listening", &self.listening)
            .field("server_name", &self.server_name)
            .field("peers", &self.peers.lock().len())
            .finish_non_exhaustive()
    }
}

/// Why the relay could not start: which setting, file or socket, and what is wrong with it.
/// Every cause is this node's own (its config, its files, its sockets); no peer is involved.
/// Only a failed bind may go away by itself ([`RelayError::retry_may_help`]); the others
/// need the config or the files fixed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A setting the relay needs is empty.
    #[error("cluster.{key} is empty: the QUIC relay needs {what} (README: Cluster TLS)")]
    Missing {
        /// The setting under `[cluster]`.
        key: &'static str,
        /// What it names.
        what: &'static str,
    },
    /// A PEM file could not be read (missing, unreadable or not PEM).
    #[error("cluster.{key} {path}: {source}")]
    ReadPem {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("cluster.{key} {path}: no PEM certificate in the file")]
    NoCertificate {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: String,
    },
    /// The key file holds no usable private key.
    #[error("cluster.tls_key {path}: no usable private key: {source}")]
    NoKey {
        /// The file.
        path: String,
        /// What went wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds a certificate that cannot be a trust anchor.
    #[error("cluster.tls_ca {path}: not a usable CA certificate: {source}")]
    BadCa {
        /// The file.
        path: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// No client-certificate verifier can be built from the CA certificates.
    #[error("cluster.tls_ca: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The node's certificate and key do not go together (or are unusable).
    #[error("cluster.tls_cert/tls_key do not match: {0}")]
    KeyMismatch(#[source] rustls::Error),
    /// The TLS 1.3 set-up was refused by rustls.
    #[error("QUIC relay TLS set-up: {0}")]
    Tls(#[source] rustls::Error),
    /// The TLS set-up offers no cipher suite QUIC can use.
    #[error("QUIC relay TLS set-up: {0}")]
    QuicCrypto(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The listening UDP socket could not be bound.
    #[error("cannot bind the QUIC relay on UDP {addr} (cluster.quic_listen): {source}")]
    Bind {
        /// `cluster.quic_listen`.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A UDP socket for pulls (client only) could not be bound.
    #[error("cannot bind a UDP socket for QUIC relay pulls: {0}")]
    BindClient(#[source] std::io::Error),
    /// The endpoint stopped accepting connections before shutdown.
    #[error("the QUIC relay endpoint stopped accepting connections")]
    Stopped,
}

impl RelayError {
    /// Whether starting again unchanged may succeed: a bind may fail while the port is
    /// still held, and a stopped endpoint can be bound anew; every other cause is in the
    /// config or the files.
    pub fn retry_may_help(&self) -> bool {
        matches!(
            self,
            RelayError::Bind { .. } | RelayError::BindClient(_) | RelayError::Stopped
        )
    }
}

impl QuicRelay {
    /// Builds the endpoint from `[cluster]`: binds `cluster.quic_listen()` if set (server
    /// and client), else a client-only endpoint on an ephemeral UDP port. Loads `tls_cert`,
    /// `tls_key` and `tls_ca` (PEM files). Mutual TLS: servers require client certificates
    /// signed by `tls_ca`; clients check the server against `tls_ca` and `tls_server_name`.
    /// Call it within a Tokio runtime (the endpoint's driver task is spawned on it).
    pub fn new(cluster: &ClusterConfig) -> Result<Arc<QuicRelay>, RelayError> {
        Self::with_transport(cluster, TransportConfig::default())
    }

    /// [`new`](Self::new), with `transport` as the QUIC transport settings of the
    /// connections this node opens (its pulls): flow-control windows, congestion control,
    /// timeouts. The relay sets the stream limits, keep-alive and idle timeout on top of
    /// it. Tests use this to make a slow link (small receive windows); production uses
    /// [`new`](Self::new) and quinn's defaults.
    pub fn with_transport(
        cluster: &ClusterConfig,
        mut transport: TransportConfig,
    ) -> Result<Arc<QuicRelay>, RelayError> {
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(MAX_GOP_STREAMS_PER_CONNECTION))
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
        let tls = tls::Tls::load(cluster)?;
        let client = tls.client_config(Arc::new(transport))?;
        let listen = cluster.quic_listen();
        let mut endpoint = match listen {
            Some(addr) => {
                let mut server_transport = TransportConfig::default();
                server_transport
                    .max_concurrent_bidi_streams(VarInt::from_u32(MAX_PULLS_PER_CONNECTION))
                    .max_concurrent_uni_streams(VarInt::from_u32(0))
                    .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
                let server = tls.server_config(Arc::new(server_transport))?;
                Endpoint::server(server, addr)
                    .map_err(|source| RelayError::Bind { addr, source })?
            }
            None => bind_client().map_err(RelayError::BindClient)?,
        };
        endpoint.set_default_client_config(client.clone());
        Ok(Arc::new(QuicRelay {
            endpoint,
            listening: listen.is_some(),
            client,
            server_name: cluster.tls_server_name.clone(),
            peers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
        }))
    }

    /// Serves pull requests from other nodes until `ctx.shutdown` is cancelled, then closes
    /// their connections ("going away"); returns at once when this node does not listen.
    /// Connection and pull tasks are tracked by `ctx.tracker`. Fails when the endpoint stops
    /// accepting before shutdown (it was [closed](Self::close), or its socket failed).
    pub async fn serve(self: Arc<Self>, ctx: Arc<Context>) -> Result<(), RelayError> {
        if !self.listening {
            return Ok(());
        }
        serve::run(&self.endpoint, ctx).await
    }

    /// Whether this node serves pulls (`cluster.quic_listen` is set), so that
    /// [`serve`](Self::serve) runs until shutdown rather than returning at once.
    pub fn listening(&self) -> bool {
        self.listening
    }

    /// Opens a pull of `app`/`name` at `addr` (`host:port`), sending `via`; resolves when
    /// the upstream accepted (Ok) or refused, or `deadline` passed. One QUIC connection per
    /// peer address carries every pull to it (made again if it was closed); concurrent first
    /// pulls to a peer share one connection attempt.
    pub async fn pull(
        &self,
        addr: &str,
        app: &str,
        name: &str,
        via: &Via,
        deadline: Duration,
    ) -> Result<QuicSource, PullError> {
        let result =
            match tokio::time::timeout(deadline, pull::open(self, addr, app, name, via)).await {
                Ok(result) => result,
                Err(_) => Err(PullError::Timeout("opening a QUIC relay pull")),
            };
        if matches!(result, Err(PullError::Timeout(_) | PullError::Connect(_))) {
            // A peer that does not answer on its cached connection may have died without a
            // word (a killed process sends no CONNECTION_CLOSE) and come back with no memory
            // of it: the next pull connects afresh instead of waiting for the idle timeout.
            self.peers.lock().remove(addr);
        }
        result
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every relay connection of this node ("going away"), ending its pulls both
    /// ways, and waits up to `deadline` for the peers to be told. Optional: dropping the
    /// last handle closes the connections too, without waiting.
    pub async fn close(&self, deadline: Duration) {
        self.closing.cancel();
        self.endpoint.close(code::GOING_AWAY, b"shutting down");
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, async {
            self.tracker.wait().await;
            self.endpoint.wait_idle().await;
        })
        .await;
    }
}

impl Drop for QuicRelay {
    fn drop(&mut self) {
        self.closing.cancel();
        self.endpoint.close(code::GOING_AWAY, b"shutting down");
    }
}

/// A client-only endpoint on an ephemeral port: dual-stack `[::]:0` where IPv6 exists, else
/// `0.0.0.0:0`.
fn bind_client() -> std::io::Result<Endpoint> {
    Endpoint::client((std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        .or_else(|_| Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into()))
}

/// Why reading a control message failed.
#[derive(Debug, thiserror::Error)]
enum ReadFail {
    /// The peer broke the wire format.
    #[error("bad control message: {0}")]
    Decode(#[from] sluice_relay::DecodeError),
    /// The stream or connection failed.
    #[error("control stream: {0}")]
    Read(#[from] quinn::ReadError),
}

/// Bytes asked of QUIC per read of a control stream.
const CONTROL_READ: usize = 4096;

/// The next message on a control stream; `None` when the peer finished it.
async fn read_control(
    recv: &mut quinn::RecvStream,
    decoder: &mut sluice_relay::ControlDecoder,
) -> Result<Option<sluice_relay::Control>, ReadFail> {
    loop {
        if let Some(msg) = decoder.poll()? {
            return Ok(Some(msg));
        }
        match recv.read_chunk(CONTROL_READ, true).await? {
            Some(chunk) => decoder.feed(chunk.bytes),
            None => {
                decoder.finish()?;
                return Ok(None);
            }
        }
    }
}

/// A stream's header frames by role: its metadata and its video and audio sequence
/// headers. Both ends of a pull keep the latest of each (the upstream to repeat them at
/// every GOP, the edge to skip repeats).
#[derive(Debug, Clone)]
struct HeaderSet<T> {
    metadata: Option<T>,
    video: Option<T>,
    audio: Option<T>,
}

impl<T> Default for HeaderSet<T> {
    fn default() -> Self {
        HeaderSet {
            metadata: None,
            video: None,
            audio: None,
        }
    }
}

impl<T> HeaderSet<T> {
    /// The slot of a frame with `kind` and `seq_header`; None for media.
    fn slot(&mut self, kind: FrameKind, seq_header: bool) -> Option<&mut Option<T>> {
        match kind {
            FrameKind::Script => Some(&mut self.metadata),
            FrameKind::Video if seq_header => Some(&mut self.video),
            FrameKind::Audio if seq_header => Some(&mut self.audio),
            _ => None,
        }
    }

    /// The ones set, metadata first (the order a decoder wants them in).
    fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.metadata, &self.video, &self.audio]
            .into_iter()
            .flatten()
    }
}
