//! AMF0 command and data messages (RTMP spec 7.1.1, 7.2): decoding what peers send,
//! encoding what we answer.
//!
//! Values are [`rml_amf0::Amf0Value`]s, but peer bytes never reach `rml_amf0::deserialize`
//! unchecked: it recurses once per nesting level (a few bytes of nested objects overflow the
//! stack, which aborts the process) and silently zero-pads truncated strings. [`decode_values`]
//! first walks the bytes with a bounded, non-recursive-in-depth-beyond-[`MAX_DEPTH`] scanner
//! that accepts only well-formed values of the types `rml_amf0` knows, and hands it exactly
//! that prefix.
//!
//! Encoding is our own small writer rather than `rml_amf0::serialize`: that one fails on
//! strings over 65535 bytes and silently wraps long property names, while ours is infallible
//! (long strings become AMF0 long strings) so building a reply can never fail.
//!
//! Metadata is passed through as the publisher's bytes (`onMetaData` plus its object), not
//! decoded and re-encoded: that keeps types `rml_amf0` lacks (dates, long strings) intact and
//! costs one copy per metadata message.

use std::collections::HashMap;
use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
pub use rml_amf0::Amf0Value;

/// Deepest nesting of objects and arrays we accept in a peer's AMF0 (real clients use 2-3).
pub const MAX_DEPTH: usize = 32;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const REFERENCE: u8 = 0x07;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;
const UNSUPPORTED: u8 = 0x0D;
const XML_DOCUMENT: u8 = 0x0F;
const TYPED_OBJECT: u8 = 0x10;

/// Why a command or data payload was refused.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum CommandError {
    /// An AMF0 value ran past the end of the payload.
    #[error("peer sent an AMF0 value truncated at byte {at}")]
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// A type marker we cannot decode here (AMF3 switch, reserved, or unknown).
    #[error("peer sent unsupported AMF0 type marker {marker:#04x} at byte {at}")]
    UnsupportedMarker {
        /// The marker byte.
        marker: u8,
        /// Its offset.
        at: usize,
    },
    /// Objects or arrays nested deeper than [`MAX_DEPTH`].
    #[error("peer sent AMF0 values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An object-end marker where a value was expected.
    #[error("peer sent an AMF0 object-end marker where a value belongs, at byte {at}")]
    UnexpectedObjectEnd {
        /// Its offset.
        at: usize,
    },
    /// Structurally valid AMF0 that `rml_amf0` still refused (e.g. invalid UTF-8).
    #[error("peer sent invalid AMF0: {0}")]
    Amf0(#[from] rml_amf0::Amf0DeserializationError),
    /// The payload does not start with the command name string.
    #[error("peer sent a command that does not start with a name string")]
    NoName,
    /// A data message that is neither `@setDataFrame onMetaData` nor `onMetaData`.
    #[error("peer sent a data message that is not @setDataFrame/onMetaData")]
    NotMetadata,
    /// `onMetaData` without an object or ECMA array after it.
    #[error("peer sent onMetaData without an object or ECMA array")]
    MissingMetadataObject,
}

/// An AMF0 command: `name, transaction id, command object, args...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Command name (`connect`, `publish`, `_result`, `onStatus`, ...).
    pub name: String,
    /// Transaction id; 0 where the sender expects no answer (or omitted it).
    pub transaction_id: f64,
    /// The command object; `Null` if absent.
    pub command_object: Amf0Value,
    /// Arguments after the command object.
    pub args: Vec<Amf0Value>,
}

impl Command {
    /// A command from its parts.
    pub fn new(
        name: &str,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            transaction_id,
            command_object,
            args,
        }
    }

    /// A `_result` answer to transaction `transaction_id`.
    pub fn result(transaction_id: f64, command_object: Amf0Value, args: Vec<Amf0Value>) -> Self {
        Self::new("_result", transaction_id, command_object, args)
    }

    /// An `_error` answer to transaction `transaction_id`.
    pub fn error(transaction_id: f64, command_object: Amf0Value, args: Vec<Amf0Value>) -> Self {
        Self::new("_error", transaction_id, command_object, args)
    }

    /// `onStatus(0, null, {level, code, description})`.
    pub fn on_status(level: &str, code: &str, description: &str) -> Self {
        Self::new(
            "onStatus",
            0.0,
            Amf0Value::Null,
            vec![status_info(level, code, description)],
        )
    }

    /// Decodes a command payload (AMF0; strip the AMF3 format byte of type 17 first).
    ///
    /// Lenient where clients are sloppy: a missing transaction id reads as 0, and a missing
    /// command object as `Null` (a value that is not an object, null or undefined is taken as
    /// the first argument instead). A payload that does not start with a name string, or that
    /// holds malformed AMF0, is an error.
    pub fn decode(payload: &[u8]) -> Result<Command, CommandError> {
        let mut values = decode_values(payload)?.into_iter();
        let Some(Amf0Value::Utf8String(name)) = values.next() else {
            return Err(CommandError::NoName);
        };
        let mut values = values.peekable();
        let transaction_id = match values.peek() {
            Some(Amf0Value::Number(n)) => {
                let n = *n;
                values.next();
                n
            }
            _ => 0.0,
        };
        let command_object = match values.peek() {
            Some(Amf0Value::Object(_) | Amf0Value::Null | Amf0Value::Undefined) => {
                values.next().unwrap_or(Amf0Value::Null)
            }
            _ => Amf0Value::Null,
        };
        Ok(Command {
            name,
            transaction_id,
            command_object,
            args: values.collect(),
        })
    }

    /// This command as an AMF0 command message on `stream_id`, on the chunk stream both our
    /// sessions send commands on ([`COMMAND_CSID`](crate::server::COMMAND_CSID)).
    pub fn to_message(&self, stream_id: u32) -> crate::message::Message {
        crate::message::Message {
            csid: crate::server::COMMAND_CSID,
            type_id: crate::message::MessageType::CommandAmf0 as u8,
            timestamp: 0,
            stream_id,
            payload: self.encode(),
        }
    }

    /// The AMF0 payload of this command.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        write_string(&self.name, &mut out);
        write_value(&Amf0Value::Number(self.transaction_id), &mut out);
        write_value(&self.command_object, &mut out);
        for arg in &self.args {
            write_value(arg, &mut out);
        }
        out.freeze()
    }

    /// The string argument at `index`, if it is one.
    pub fn arg_str(&self, index: usize) -> Option<&str> {
        match self.args.get(index) {
            Some(Amf0Value::Utf8String(s)) => Some(s),
            _ => None,
        }
    }

    /// The number argument at `index`, if it is one.
    pub fn arg_number(&self, index: usize) -> Option<f64> {
        match self.args.get(index) {
            Some(Amf0Value::Number(n)) => Some(*n),
            _ => None,
        }
    }
}

/// An info object `{level, code, description}` as onStatus, `_result` and `_error` carry.
pub fn status_info(level: &str, code: &str, description: &str) -> Amf0Value {
    object([
        ("level", Amf0Value::Utf8String(level.to_owned())),
        ("code", Amf0Value::Utf8String(code.to_owned())),
        ("description", Amf0Value::Utf8String(description.to_owned())),
    ])
}

/// An AMF0 object from `(name, value)` pairs.
pub fn object<const N: usize>(props: [(&str, Amf0Value); N]) -> Amf0Value {
    Amf0Value::Object(
        props
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>(),
    )
}

/// Decodes a data message payload (type 18, or 15 without its format byte) into its values.
pub fn decode_data(payload: &[u8]) -> Result<Vec<Amf0Value>, CommandError> {
    decode_values(payload)
}

/// Decodes a sequence of AMF0 values after checking them (see the module docs).
///
/// A top-level object-end marker ends the sequence, as in `rml_amf0`.
pub fn decode_values(payload: &[u8]) -> Result<Vec<Amf0Value>, CommandError> {
    let mut pos = 0;
    while pos < payload.len() && payload[pos] != OBJECT_END {
        pos = skip_value(payload, pos, 0, true)?;
    }
    Ok(rml_amf0::deserialize(&mut Cursor::new(&payload[..pos]))?)
}

/// Turns `@setDataFrame, "onMetaData", {obj | ecma array}` (or a bare `onMetaData, obj`) into
/// the body of an `onMetaData` script tag: the AMF0 string `onMetaData` followed by the
/// publisher's object bytes, unchanged. Values after the object are dropped.
pub fn metadata_from_set_data_frame(payload: &[u8]) -> Result<Bytes, CommandError> {
    let (first, mut pos) = read_string(payload, 0)?.ok_or(CommandError::NotMetadata)?;
    if first == "@setDataFrame" {
        let (name, next) = read_string(payload, pos)?.ok_or(CommandError::NotMetadata)?;
        if name != "onMetaData" {
            return Err(CommandError::NotMetadata);
        }
        pos = next;
    } else if first != "onMetaData" {
        return Err(CommandError::NotMetadata);
    }
    if !matches!(payload.get(pos), Some(&(OBJECT | ECMA_ARRAY))) {
        return Err(CommandError::MissingMetadataObject);
    }
    let end = skip_value(payload, pos, 0, false)?;
    let mut out = BytesMut::with_capacity(13 + end - pos);
    write_string("onMetaData", &mut out);
    out.put_slice(&payload[pos..end]);
    Ok(out.freeze())
}

/// The body of an `onMetaData` script tag holding `props` as an ECMA array, in order.
pub fn encode_metadata(props: &[(String, Amf0Value)]) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + props.len() * 24);
    write_string("onMetaData", &mut out);
    out.put_u8(ECMA_ARRAY);
    out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
    for (name, value) in props {
        write_key(name, &mut out);
        write_value(value, &mut out);
    }
    out.put_slice(&[0, 0, OBJECT_END]);
    out.freeze()
}

/// The AMF0 bytes of `value` (our writer; see the module docs).
pub fn encode_value(value: &Amf0Value) -> Bytes {
    let mut out = BytesMut::new();
    write_value(value, &mut out);
    out.freeze()
}

/// Appends `value` as AMF0. Object property order follows the map's iteration order.
pub fn write_value(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::Utf8String(s) => write_string(s, out),
        Amf0Value::Object(props) => {
            out.put_u8(OBJECT);
            for (name, value) in props {
                write_key(name, out);
                write_value(value, out);
            }
            out.put_slice(&[0, 0, OBJECT_END]);
        }
        Amf0Value::StrictArray(items) => {
            out.put_u8(STRICT_ARRAY);
            out.put_u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
            for item in items {
                write_value(item, out);
            }
        }
        Amf0Value::Null => out.put_u8(NULL),
        Amf0Value::Undefined => out.put_u8(UNDEFINED),
    }
}

/// A string value: short form up to 65535 bytes, long-string form above.
fn write_string(s: &str, out: &mut BytesMut) {
    match u16::try_from(s.len()) {
        Ok(len) => {
            out.put_u8(STRING);
            out.put_u16(len);
        }
        Err(_) => {
            out.put_u8(LONG_STRING);
            out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        }
    }
    out.put_slice(s.as_bytes());
}

/// A property name: at most 65535 bytes (cut at a char boundary), never wrapped.
fn write_key(name: &str, out: &mut BytesMut) {
    let mut end = name.len().min(u16::MAX as usize);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&name.as_bytes()[..end]);
}

/// Reads a short string value at `pos`: `Ok(None)` if the value there is not a string.
fn read_string(buf: &[u8], pos: usize) -> Result<Option<(&str, usize)>, CommandError> {
    if buf.get(pos) != Some(&STRING) {
        return Ok(None);
    }
    let len = be_u16(buf, pos + 1)? as usize;
    let end = need(buf, pos + 3, len)?;
    Ok(std::str::from_utf8(&buf[pos + 3..end])
        .ok()
        .map(|s| (s, end)))
}

fn need(buf: &[u8], at: usize, len: usize) -> Result<usize, CommandError> {
    let end = at.checked_add(len).ok_or(CommandError::Truncated { at })?;
    if end > buf.len() {
        return Err(CommandError::Truncated { at });
    }
    Ok(end)
}

fn be_u16(buf: &[u8], at: usize) -> Result<u16, CommandError> {
    let end = need(buf, at, 2)?;
    Ok(u16::from_be_bytes([buf[at], buf[end - 1]]))
}

fn be_u32(buf: &[u8], at: usize) -> Result<u32, CommandError> {
    let end = need(buf, at, 4)?;
    let b = &buf[at..end];
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks the AMF0 value at `pos` and returns the offset after it. With `rml_only`, only the
/// types `rml_amf0` decodes are accepted, so its deserializer sees nothing it mishandles.
/// Recursion is bounded by [`MAX_DEPTH`].
fn skip_value(buf: &[u8], pos: usize, depth: usize, rml_only: bool) -> Result<usize, CommandError> {
    let marker = *buf.get(pos).ok_or(CommandError::Truncated { at: pos })?;
    let at = pos + 1;
    let unsupported = CommandError::UnsupportedMarker { marker, at: pos };
    match marker {
        NUMBER => need(buf, at, 8),
        BOOLEAN => need(buf, at, 1),
        NULL | UNDEFINED => Ok(at),
        STRING => need(buf, at + 2, be_u16(buf, at)? as usize),
        OBJECT => skip_properties(buf, at, depth + 1, rml_only),
        ECMA_ARRAY => skip_properties(buf, need(buf, at, 4)?, depth + 1, rml_only),
        STRICT_ARRAY => {
            if depth + 1 > MAX_DEPTH {
                return Err(CommandError::TooDeep);
            }
            let count = be_u32(buf, at)?;
            let mut pos = at + 4;
            for _ in 0..count {
                // Every element is at least one byte, so a lying count fails here quickly.
                if buf.get(pos) == Some(&OBJECT_END) {
                    return Err(CommandError::UnexpectedObjectEnd { at: pos });
                }
                pos = skip_value(buf, pos, depth + 1, rml_only)?;
            }
            Ok(pos)
        }
        OBJECT_END => Err(CommandError::UnexpectedObjectEnd { at: pos }),
        _ if rml_only => Err(unsupported),
        REFERENCE => need(buf, at, 2),
        DATE => need(buf, at, 10),
        UNSUPPORTED => Ok(at),
        LONG_STRING | XML_DOCUMENT => need(buf, at + 4, be_u32(buf, at)? as usize),
        TYPED_OBJECT => {
            let name_end = need(buf, at + 2, be_u16(buf, at)? as usize)?;
            skip_properties(buf, name_end, depth + 1, rml_only)
        }
        _ => Err(unsupported),
    }
}

/// Skips `name, value` pairs up to and including the `00 00 09` end marker.
fn skip_properties(
    buf: &[u8],
    mut pos: usize,
    depth: usize,
    rml_only: bool,
) -> Result<usize, CommandError> {
    if depth > MAX_DEPTH {
        return Err(CommandError::TooDeep);
    }
    loop {
        let len = be_u16(buf, pos)? as usize;
        if len == 0 {
            let end = need(buf, pos + 2, 1)?;
            if buf[pos + 2] != OBJECT_END {
                return Err(CommandError::UnsupportedMarker {
                    marker: buf[pos + 2],
                    at: pos + 2,
                });
            }
            return Ok(end);
        }
        pos = need(buf, pos + 2, len)?;
        if buf.get(pos) == Some(&OBJECT_END) {
            return Err(CommandError::UnexpectedObjectEnd { at: pos });
        }
        pos = skip_value(buf, pos, depth, rml_only)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Amf0Value {
        Amf0Value::Utf8String(v.to_owned())
    }

    #[test]
    fn command_round_trips() {
        let cmd = Command::new(
            "publish",
            5.0,
            Amf0Value::Null,
            vec![s("key?token=x"), s("live")],
        );
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
    }

    #[test]
    fn short_commands_are_tolerated() {
        let mut out = BytesMut::new();
        write_string("onFI", &mut out);
        let cmd = Command::decode(&out).unwrap();
        assert_eq!((cmd.name.as_str(), cmd.transaction_id), ("onFI", 0.0));
        assert_eq!(cmd.command_object, Amf0Value::Null);
        assert!(cmd.args.is_empty());

        // Name then string args, no transaction id or object.
        write_string("key", &mut out);
        let cmd = Command::decode(&out).unwrap();
        assert_eq!(cmd.args, vec![s("key")]);
    }

    #[test]
    fn non_commands_are_errors() {
        assert!(matches!(Command::decode(&[]), Err(CommandError::NoName)));
        assert!(matches!(
            Command::decode(&encode_value(&Amf0Value::Number(1.0))),
            Err(CommandError::NoName)
        ));
        assert!(matches!(
            Command::decode(&[STRING, 0, 10, b'a']),
            Err(CommandError::Truncated { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        // 100k nested strict arrays would overflow rml_amf0's stack.
        let mut buf = vec![STRING, 0, 1, b'x'];
        for _ in 0..100_000 {
            buf.extend_from_slice(&[STRICT_ARRAY, 0, 0, 0, 1]);
        }
        buf.push(NULL);
        assert!(matches!(Command::decode(&buf), Err(CommandError::TooDeep)));
        let mut buf = vec![STRING, 0, 1, b'x'];
        for _ in 0..100_000 {
            buf.extend_from_slice(&[OBJECT, 0, 1, b'a']);
        }
        assert!(matches!(Command::decode(&buf), Err(CommandError::TooDeep)));
    }

    #[test]
    fn lying_array_count_is_truncated_not_slow() {
        let buf = [
            STRING,
            0,
            1,
            b'x',
            STRICT_ARRAY,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            NULL,
        ];
        assert!(matches!(
            Command::decode(&buf),
            Err(CommandError::Truncated { .. })
        ));
    }

    #[test]
    fn metadata_passes_object_bytes_through() {
        let obj = encode_value(&object([("width", Amf0Value::Number(1280.0))]));
        let mut payload = BytesMut::new();
        write_string("@setDataFrame", &mut payload);
        write_string("onMetaData", &mut payload);
        payload.put_slice(&obj);
        let body = metadata_from_set_data_frame(&payload).unwrap();
        assert_eq!(&body[13..], &obj[..]);
        assert_eq!(
            decode_data(&body).unwrap(),
            vec![
                s("onMetaData"),
                object([("width", Amf0Value::Number(1280.0))])
            ]
        );
        // A bare onMetaData is accepted and yields the same body.
        assert_eq!(metadata_from_set_data_frame(&body[..]).unwrap(), body);
    }

    #[test]
    fn metadata_keeps_types_rml_lacks() {
        // ECMA array with a Date and a long string.
        let mut payload = BytesMut::new();
        write_string("onMetaData", &mut payload);
        payload.put_slice(&[ECMA_ARRAY, 0, 0, 0, 2, 0, 1, b'd', DATE]);
        payload.put_f64(1.0);
        payload.put_i16(0);
        payload.put_slice(&[0, 1, b'l', LONG_STRING, 0, 0, 0, 1, b'z', 0, 0, OBJECT_END]);
        assert_eq!(metadata_from_set_data_frame(&payload).unwrap(), payload);
        assert!(decode_data(&payload).is_err());
    }

    #[test]
    fn malformed_metadata_is_refused() {
        let mut payload = BytesMut::new();
        write_string("@setDataFrame", &mut payload);
        assert!(matches!(
            metadata_from_set_data_frame(&payload),
            Err(CommandError::NotMetadata)
        ));
        write_string("onMetaData", &mut payload);
        assert!(matches!(
            metadata_from_set_data_frame(&payload),
            Err(CommandError::MissingMetadataObject)
        ));
        let mut with_string = payload.clone();
        write_string("nope", &mut with_string);
        assert!(matches!(
            metadata_from_set_data_frame(&with_string),
            Err(CommandError::MissingMetadataObject)
        ));
        payload.put_slice(&[OBJECT, 0, 1, b'a']);
        assert!(matches!(
            metadata_from_set_data_frame(&payload),
            Err(CommandError::Truncated { .. })
        ));
        let mut cue = BytesMut::new();
        write_string("onCuePoint", &mut cue);
        assert!(matches!(
            metadata_from_set_data_frame(&cue),
            Err(CommandError::NotMetadata)
        ));
    }

    #[test]
    fn encode_metadata_keeps_order() {
        let body = encode_metadata(&[
            ("width".into(), Amf0Value::Number(640.0)),
            ("encoder".into(), s("sluice")),
        ]);
        let values = decode_data(&body).unwrap();
        assert_eq!(values[0], s("onMetaData"));
        let w = body.windows(5).position(|w| w == b"width").unwrap();
        let e = body.windows(7).position(|w| w == b"encoder").unwrap();
        assert!(w < e);
        assert_eq!(body[13], ECMA_ARRAY);
    }

    #[test]
    fn long_strings_encode_without_failing() {
        let long = "x".repeat(70_000);
        let bytes = encode_value(&s(&long));
        assert_eq!(bytes[0], LONG_STRING);
        assert_eq!(bytes.len(), 5 + 70_000);
        let mut key = BytesMut::new();
        write_key(&"é".repeat(40_000), &mut key);
        assert_eq!(u16::from_be_bytes([key[0], key[1]]) % 2, 0);
    }
}
