//! FLV tags (HELPER: fill in).

use bytes::{BufMut, Bytes, BytesMut};

/// Encodes one FLV tag: 11-byte header, `body`, 4-byte previous-tag-size.
pub fn encode_tag(tag_type: u8, timestamp: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(11 + body.len() + 4);
    out.put_u8(tag_type);
    out.put_uint(body.len() as u64, 3);
    out.put_uint(u64::from(timestamp & 0x00ff_ffff), 3);
    out.put_u8((timestamp >> 24) as u8);
    out.put_uint(0, 3);
    out.put_slice(body);
    out.put_u32(11 + body.len() as u32);
    out.freeze()
}
