//! The control stream of one pull: the request, the answer, the end.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::Input;
use crate::{DecodeError, EncodeError, Limits, PREAMBLE_LEN, StreamKind, VERSION, check_preamble};

const PULL: u8 = 1;
const ACCEPTED: u8 = 2;
const REFUSED: u8 = 3;
const ENDED: u8 = 4;

/// A message on a control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Edge to upstream, first: pull this stream.
    Pull(Pull),
    /// Upstream to edge: the pull is on; GOP streams carry `pull_id`.
    Accepted {
        /// The id GOP streams of this pull carry.
        pull_id: u64,
    },
    /// Upstream to edge: the pull is refused (the upstream then finishes the stream).
    Refused {
        /// Why, for the edge to act on.
        code: RefuseCode,
        /// Why, for people.
        message: String,
    },
    /// Upstream to edge: the stream's publisher left (and did not return in its grace).
    Ended,
}

/// What an edge asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pull {
    /// The application on the upstream.
    pub app: String,
    /// The stream name.
    pub name: String,
    /// The nodes the request passed through, nearest the viewer first (this edge last).
    pub via: Vec<String>,
}

/// Why an upstream refused a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The upstream does not have the stream (and could not get it).
    NotFound,
    /// The upstream is already on the request's path.
    Loop,
    /// The request passed as many nodes as the upstream allows.
    TooDeep,
    /// The application is not served there.
    NotAllowed,
    /// The request's protocol version is not spoken there; carries the version it speaks.
    Unsupported(u8),
}

impl RefuseCode {
    fn byte(self) -> u8 {
        match self {
            RefuseCode::NotFound => 1,
            RefuseCode::Loop => 2,
            RefuseCode::TooDeep => 3,
            RefuseCode::NotAllowed => 4,
            RefuseCode::Unsupported(_) => 5,
        }
    }
}

/// Writes the control messages of one direction of a control stream; the first one is
/// preceded by the preamble.
#[derive(Debug)]
pub struct ControlEncoder {
    started: bool,
    /// The version the preamble names.
    version: u8,
}

impl Default for ControlEncoder {
    fn default() -> Self {
        ControlEncoder {
            started: false,
            version: VERSION,
        }
    }
}

impl ControlEncoder {
    /// An encoder for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder whose preamble names `version` instead of [`VERSION`]: for answering a
    /// peer of another version with [`Control::Refused`], whose layout every version keeps,
    /// so that the peer reads the refusal. Send nothing else with it.
    pub fn for_version(version: u8) -> Self {
        ControlEncoder {
            started: false,
            version,
        }
    }

    /// The bytes of `msg` (after the preamble, on the first call).
    pub fn encode(&mut self, msg: &Control) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(64);
        if !self.started {
            out.put_slice(&StreamKind::Control.preamble(self.version));
        }
        msg.encode_to(&mut out)?;
        self.started = true;
        Ok(out.freeze())
    }
}

impl Control {
    /// Appends the message (length prefix included, no preamble) to `out`. On error `out`
    /// is left as it was.
    pub fn encode_to(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_u32(0);
        if let Err(e) = self.encode_body(out) {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len() - start - 4;
        let Ok(len32) = u32::try_from(len) else {
            out.truncate(start);
            return Err(EncodeError::TooLong {
                what: "control message",
                len,
                max: u32::MAX as usize,
            });
        };
        out[start..start + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Control::Pull(pull) => {
                out.put_u8(PULL);
                put_str(out, "app", &pull.app)?;
                put_str(out, "name", &pull.name)?;
                let n = u16::try_from(pull.via.len()).map_err(|_| EncodeError::TooLong {
                    what: "via list",
                    len: pull.via.len(),
                    max: u16::MAX as usize,
                })?;
                out.put_u16(n);
                for node in &pull.via {
                    put_str(out, "via entry", node)?;
                }
            }
            Control::Accepted { pull_id } => {
                out.put_u8(ACCEPTED);
                out.put_u64(*pull_id);
            }
            Control::Refused { code, message } => {
                out.put_u8(REFUSED);
                out.put_u8(code.byte());
                if let RefuseCode::Unsupported(v) = code {
                    out.put_u8(*v);
                }
                put_str(out, "refusal message", message)?;
            }
            Control::Ended => out.put_u8(ENDED),
        }
        Ok(())
    }
}

fn put_str(out: &mut BytesMut, what: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
        what,
        len: s.len(),
        max: u16::MAX as usize,
    })?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

#[derive(Debug)]
enum State {
    Preamble,
    Messages,
    Failed(DecodeError),
}

/// Reads the control messages of one direction of a control stream, from any split of its
/// bytes.
#[derive(Debug)]
pub struct ControlDecoder {
    limits: Limits,
    input: Input,
    state: State,
    version: Option<u8>,
}

impl ControlDecoder {
    /// A decoder for a new stream, capping messages at `limits.max_control`.
    pub fn new(limits: Limits) -> Self {
        ControlDecoder {
            limits,
            input: Input::default(),
            state: State::Preamble,
            version: None,
        }
    }

    /// Adds bytes received.
    pub fn feed(&mut self, bytes: Bytes) {
        if !matches!(self.state, State::Failed(_)) {
            self.input.push(bytes);
        }
    }

    /// Adds bytes received (copied).
    pub fn feed_slice(&mut self, bytes: &[u8]) {
        self.feed(Bytes::copy_from_slice(bytes));
    }

    /// The version the peer's preamble named, once read (another than [`VERSION`] when the
    /// peer speaks another version: then only a `Refused` is read).
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// The next complete message; `Ok(None)` until more bytes arrive. After an error, the
    /// same error on every call.
    pub fn poll(&mut self) -> Result<Option<Control>, DecodeError> {
        match self.step() {
            Err(e) => {
                self.input.clear();
                self.state = State::Failed(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    /// Checks that the stream did not end inside a message (call at its end).
    pub fn finish(&self) -> Result<(), DecodeError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ if self.input.len() > 0 => Err(DecodeError::Truncated(self.input.len())),
            _ => Ok(()),
        }
    }

    fn step(&mut self) -> Result<Option<Control>, DecodeError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if matches!(self.state, State::Preamble) {
            let Some(preamble) = self.input.peek::<PREAMBLE_LEN>() else {
                return Ok(None);
            };
            self.version = Some(check_preamble(preamble, StreamKind::Control)?);
            self.input.advance(PREAMBLE_LEN);
            self.state = State::Messages;
        }
        if let Some(foreign) = self.version.filter(|&v| v != VERSION) {
            // Of another version, only a refusal is understood (its layout never changes):
            // anything else is refused as soon as its type byte is here.
            let Some(head) = self.input.peek::<5>() else {
                return Ok(None);
            };
            if head[..4] == [0; 4] || head[4] != REFUSED {
                return Err(DecodeError::UnsupportedVersion(foreign));
            }
        }
        let Some(len) = self.input.peek::<4>().map(u32::from_be_bytes) else {
            return Ok(None);
        };
        // Check then parse: the cap applies before anything is buffered on its account.
        if len as usize > self.limits.max_control {
            return Err(DecodeError::TooLarge {
                what: "control message",
                len: len.into(),
                max: self.limits.max_control,
            });
        }
        let total = 4 + len as usize;
        if self.input.len() < total {
            return Ok(None);
        }
        self.input.advance(4);
        let body = self.input.take(len as usize);
        decode_body(&body).map(Some)
    }
}

fn decode_body(body: &[u8]) -> Result<Control, DecodeError> {
    let mut r = Reader(body);
    let msg = match r.u8("empty control message")? {
        PULL => {
            let app = r.str("pull: app")?;
            let name = r.str("pull: name")?;
            let n = r.u16("pull: via count")?;
            // Each entry takes at least its 2-byte length, so a count the body cannot hold
            // is refused before anything is reserved for it.
            if usize::from(n) * 2 > r.0.len() {
                return Err(DecodeError::Malformed("pull: via count"));
            }
            let mut via = Vec::with_capacity(n.into());
            for _ in 0..n {
                via.push(r.str("pull: via entry")?);
            }
            Control::Pull(Pull { app, name, via })
        }
        ACCEPTED => Control::Accepted {
            pull_id: r.u64("accepted: pull id")?,
        },
        REFUSED => {
            let code = match r.u8("refused: code")? {
                1 => RefuseCode::NotFound,
                2 => RefuseCode::Loop,
                3 => RefuseCode::TooDeep,
                4 => RefuseCode::NotAllowed,
                5 => RefuseCode::Unsupported(r.u8("refused: version")?),
                other => return Err(DecodeError::UnknownRefusal(other)),
            };
            let message = r.str("refused: message")?;
            Control::Refused { code, message }
        }
        ENDED => Control::Ended,
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed("control message: trailing bytes"));
    }
    Ok(msg)
}

/// Reads fields off the front of a message body.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(DecodeError::Malformed(what));
        };
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.bytes::<1>(what).map(|b| b[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.bytes(what).map(u16::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.bytes(what).map(u64::from_be_bytes)
    }

    fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(what)?);
        if self.0.len() < len {
            return Err(DecodeError::Malformed(what));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::Malformed(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msgs: &[Control]) -> Vec<Control> {
        let mut enc = ControlEncoder::new();
        let mut dec = ControlDecoder::new(Limits::default());
        for m in msgs {
            dec.feed(enc.encode(m).unwrap());
        }
        let mut out = Vec::new();
        while let Some(m) = dec.poll().unwrap() {
            out.push(m);
        }
        dec.finish().unwrap();
        assert_eq!(dec.version(), Some(VERSION));
        out
    }

    #[test]
    fn every_message_roundtrips() {
        let msgs = vec![
            Control::Pull(Pull {
                app: "live".into(),
                name: "cam".into(),
                via: vec!["edge-1".into(), "mid-2".into()],
            }),
            Control::Accepted { pull_id: u64::MAX },
            Control::Refused {
                code: RefuseCode::Unsupported(9),
                message: "nope".into(),
            },
            Control::Refused {
                code: RefuseCode::Loop,
                message: String::new(),
            },
            Control::Ended,
        ];
        assert_eq!(roundtrip(&msgs), msgs);
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = ControlEncoder::new()
            .encode(&Control::Accepted { pull_id: 7 })
            .unwrap();
        assert_eq!(
            &bytes[..],
            b"SLRC\x02\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00\x00\x00\x07"
        );
        let mut enc = ControlEncoder::new();
        enc.encode(&Control::Ended).unwrap();
        assert_eq!(&enc.encode(&Control::Ended).unwrap()[..], b"\0\0\0\x01\x04");
    }

    #[test]
    fn a_peer_of_another_version_is_refused_but_its_refusal_is_read() {
        // A version 1 edge's pull request: refused by its type byte, before its body.
        let mut old_pull = StreamKind::Control.preamble(1).to_vec();
        old_pull.extend_from_slice(&[0, 0, 0, 9, PULL]);
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed_slice(&old_pull);
        assert_eq!(dec.poll(), Err(DecodeError::UnsupportedVersion(1)));
        assert_eq!(dec.version(), Some(1));

        // The upstream's answer names the old version in its preamble, so the old node,
        // which reads only its own version, reads it.
        let refusal = Control::Refused {
            code: RefuseCode::Unsupported(VERSION),
            message: "speak 2".into(),
        };
        let bytes = ControlEncoder::for_version(1).encode(&refusal).unwrap();
        assert_eq!(&bytes[..5], b"SLRC\x01");
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed(bytes);
        assert_eq!(
            dec.poll(),
            Ok(Some(refusal)),
            "a refusal is read in any version"
        );
        assert_eq!(dec.version(), Some(1));

        // Anything but a refusal after a foreign preamble is not.
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed(
            ControlEncoder::for_version(7)
                .encode(&Control::Accepted { pull_id: 1 })
                .unwrap(),
        );
        assert_eq!(dec.poll(), Err(DecodeError::UnsupportedVersion(7)));
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed_slice(&[b'S', b'L', b'R', b'C', 1, 0, 0, 0, 0, REFUSED]);
        assert_eq!(
            dec.poll(),
            Err(DecodeError::UnsupportedVersion(1)),
            "an empty message is no refusal"
        );
    }

    #[test]
    fn overlong_fields_are_refused_by_the_encoder() {
        let pull = Control::Pull(Pull {
            app: "a".repeat(70_000),
            ..Pull::default()
        });
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            pull.encode_to(&mut out),
            Err(EncodeError::TooLong { what: "app", .. })
        ));
        assert_eq!(&out[..], b"keep");
    }
}
