//! The RTMP handshake (C0/C1/C2 and S0/S1/S2), both roles, as a sans-IO state machine.
//!
//! The digest (FP9) and plain (spec, FFmpeg-style) handshakes are rml_rtmp's; this module
//! owns the wrapper: version byte check with a clear error, role-specific start rules and a
//! stable error type. rml_rtmp's handshake was read for panics (digest offsets stay inside
//! the 1536-byte packet, HMAC accepts any key length) and is fuzzed through this wrapper.
//! It does not validate the peer's C2/S2, matching what deployed servers do.

use rml_rtmp::handshake::{
    Handshake as RmlHandshake, HandshakeError as RmlError, HandshakeProcessResult, PeerType,
};

/// The only RTMP version we speak: plain, unencrypted RTMP.
const RTMP_VERSION: u8 = 3;

/// Which side of the handshake we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection: wait for C0/C1, answer S0/S1/S2.
    Server,
    /// We opened the connection: send C0/C1 first.
    Client,
}

/// Outcome of feeding bytes to a [`Handshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not done yet; send `out` (possibly empty) to the peer.
    InProgress {
        /// Bytes to send to the peer.
        out: Vec<u8>,
    },
    /// Done; send `out`, then feed `remaining` (the peer's first chunk bytes) to the chunk
    /// reader.
    Done {
        /// Bytes to send to the peer.
        out: Vec<u8>,
        /// Bytes received after the handshake.
        remaining: Vec<u8>,
    },
}

/// Why a handshake failed. All variants are the peer's fault except [`NotStarted`],
/// [`AlreadyStarted`] and [`AlreadyDone`], which are caller misuse; none is retryable on the
/// same connection.
///
/// [`NotStarted`]: HandshakeError::NotStarted
/// [`AlreadyStarted`]: HandshakeError::AlreadyStarted
/// [`AlreadyDone`]: HandshakeError::AlreadyDone
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum HandshakeError {
    /// The peer's C0/S0 asked for a version other than 3 (6 is encrypted RTMPE, 0x16 is TLS).
    #[error("peer asked for RTMP version {0:#04x}; only 3 (plain RTMP) is supported")]
    BadVersion(u8),
    /// A client's `process` was called before `start`.
    #[error("client handshake fed bytes before start()")]
    NotStarted,
    /// A client's `start` was called twice.
    #[error("handshake already started")]
    AlreadyStarted,
    /// Bytes were fed after the handshake had completed.
    #[error("handshake already completed")]
    AlreadyDone,
    /// rml_rtmp refused the peer's handshake packets.
    #[error("handshake refused: {0}")]
    Refused(#[source] RmlError),
}

/// One connection's handshake.
pub struct Handshake {
    role: Role,
    inner: RmlHandshake,
    /// The peer's version byte has been checked.
    version_seen: bool,
    started: bool,
    done: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("started", &self.started)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake for a fresh connection.
    pub fn new(role: Role) -> Self {
        let peer_type = match role {
            Role::Server => PeerType::Server,
            Role::Client => PeerType::Client,
        };
        Self {
            role,
            inner: RmlHandshake::new(peer_type),
            version_seen: false,
            started: false,
            done: false,
        }
    }

    /// Client: C0+C1 to send first. Server: empty (the server answers after C0/C1 arrive).
    pub fn start(&mut self) -> Result<Vec<u8>, HandshakeError> {
        if self.started {
            return Err(HandshakeError::AlreadyStarted);
        }
        self.started = true;
        match self.role {
            Role::Client => self
                .inner
                .generate_outbound_p0_and_p1()
                .map_err(HandshakeError::Refused),
            Role::Server => Ok(Vec::new()),
        }
    }

    /// Feeds bytes from the peer; returns what to send back and, when done, the bytes that
    /// followed the handshake.
    pub fn process(&mut self, data: &[u8]) -> Result<Progress, HandshakeError> {
        if self.done {
            return Err(HandshakeError::AlreadyDone);
        }
        match self.role {
            Role::Client if !self.started => return Err(HandshakeError::NotStarted),
            // rml_rtmp would emit S0/S1 on an empty first call; the spec has the server wait
            // for C0.
            Role::Server if data.is_empty() && !self.version_seen => {
                return Ok(Progress::InProgress { out: Vec::new() });
            }
            _ => {}
        }
        self.started = true;
        if !self.version_seen
            && let Some(&version) = data.first()
        {
            if version != RTMP_VERSION {
                return Err(HandshakeError::BadVersion(version));
            }
            self.version_seen = true;
        }
        match self.inner.process_bytes(data) {
            Ok(HandshakeProcessResult::InProgress { response_bytes }) => Ok(Progress::InProgress {
                out: response_bytes,
            }),
            Ok(HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            }) => {
                self.done = true;
                Ok(Progress::Done {
                    out: response_bytes,
                    remaining: remaining_bytes,
                })
            }
            Err(RmlError::BadVersionId) => Err(HandshakeError::BadVersion(0)),
            Err(e) => Err(HandshakeError::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: usize = 1536;

    fn in_progress(p: Progress) -> Vec<u8> {
        match p {
            Progress::InProgress { out } => out,
            other => panic!("expected InProgress, got {other:?}"),
        }
    }

    fn done(p: Progress) -> (Vec<u8>, Vec<u8>) {
        match p {
            Progress::Done { out, remaining } => (out, remaining),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn our_server_against_rml_client() {
        let mut client = RmlHandshake::new(PeerType::Client);
        let mut server = Handshake::new(Role::Server);
        assert!(server.start().unwrap().is_empty());
        assert!(in_progress(server.process(&[]).unwrap()).is_empty());
        let c0c1 = client.generate_outbound_p0_and_p1().unwrap();
        let s012 = in_progress(server.process(&c0c1).unwrap());
        assert_eq!(s012.len(), 1 + 2 * PACKET);
        let c2 = match client.process_bytes(&s012).unwrap() {
            HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
            other => panic!("{other:?}"),
        };
        let mut tail = c2;
        tail.extend_from_slice(&[0x02, 0xAB]);
        let (out, remaining) = done(server.process(&tail).unwrap());
        assert!(out.is_empty());
        assert_eq!(remaining, vec![0x02, 0xAB]);
        assert!(matches!(
            server.process(&[1]),
            Err(HandshakeError::AlreadyDone)
        ));
    }

    #[test]
    fn our_client_against_rml_server() {
        let mut client = Handshake::new(Role::Client);
        let mut server = RmlHandshake::new(PeerType::Server);
        let c0c1 = client.start().unwrap();
        assert_eq!(c0c1.len(), 1 + PACKET);
        let s012 = match server.process_bytes(&c0c1).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => response_bytes,
            other => panic!("{other:?}"),
        };
        let (c2, remaining) = done(client.process(&s012).unwrap());
        assert_eq!(c2.len(), PACKET);
        assert!(remaining.is_empty());
        assert!(matches!(
            server.process_bytes(&c2).unwrap(),
            HandshakeProcessResult::Completed { .. }
        ));
    }

    #[test]
    fn our_client_against_our_server_byte_by_byte() {
        let mut client = Handshake::new(Role::Client);
        let mut server = Handshake::new(Role::Server);
        let c0c1 = client.start().unwrap();
        let mut s012 = Vec::new();
        for b in &c0c1 {
            s012.extend(in_progress(server.process(&[*b]).unwrap()));
        }
        let (mut c2, mut finished) = (Vec::new(), false);
        for b in &s012 {
            assert!(!finished);
            match client.process(&[*b]).unwrap() {
                Progress::InProgress { out } => c2.extend(out),
                Progress::Done { out, .. } => {
                    c2.extend(out);
                    finished = true;
                }
            }
        }
        assert!(finished);
        assert_eq!(c2.len(), PACKET);
        let (_, rest) = done(server.process(&c2).unwrap());
        assert!(rest.is_empty());
    }

    #[test]
    fn plain_ffmpeg_style_c1_is_echoed() {
        // Time 0, zero version field, zero "random" bytes: no digest to find.
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0; PACKET]);
        let mut server = Handshake::new(Role::Server);
        let s012 = in_progress(server.process(&c0c1).unwrap());
        assert_eq!(s012[0], 3);
        assert_eq!(&s012[1 + PACKET..], &c0c1[1..], "S2 echoes C1");
        let s1 = &s012[1..1 + PACKET];
        let (_, rest) = done(server.process(s1).unwrap());
        assert!(rest.is_empty());
    }

    #[test]
    fn our_client_against_plain_echo_server() {
        let mut client = Handshake::new(Role::Client);
        let c0c1 = client.start().unwrap();
        let mut s012 = vec![3u8];
        s012.extend_from_slice(&[0; PACKET]); // plain S1
        s012.extend_from_slice(&c0c1[1..]); // S2 echoes C1
        let (c2, _) = done(client.process(&s012).unwrap());
        assert_eq!(c2, vec![0; PACKET], "C2 echoes a plain S1");
    }

    #[test]
    fn bad_version_and_misuse() {
        for v in [0u8, 6, 0x16, b'G'] {
            let mut server = Handshake::new(Role::Server);
            assert!(matches!(
                server.process(&[v, 0, 0]),
                Err(HandshakeError::BadVersion(x)) if x == v
            ));
        }
        let mut client = Handshake::new(Role::Client);
        assert!(matches!(
            client.process(&[3]),
            Err(HandshakeError::NotStarted)
        ));
        client.start().unwrap();
        assert!(matches!(
            client.start(),
            Err(HandshakeError::AlreadyStarted)
        ));
        assert!(matches!(
            client.process(&[6]),
            Err(HandshakeError::BadVersion(6))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Random input in random pieces never panics, for either role.
        #[test]
        fn random_input_never_panics(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(1usize..2000, 0..6),
            valid_c0 in proptest::prelude::any::<bool>(),
        ) {
            let mut data = data;
            if valid_c0 && !data.is_empty() {
                data[0] = 3;
            }
            for role in [Role::Server, Role::Client] {
                let mut h = Handshake::new(role);
                let _ = h.start();
                let mut rest = &data[..];
                for &c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                    let (piece, tail) = rest.split_at(c.min(rest.len()));
                    rest = tail;
                    if h.process(piece).is_err() {
                        break;
                    }
                }
            }
        }
    }
}
