//! Fuzzes the RTMP chunk reader: arbitrary bytes, pushed in pieces, must never panic, and
//! every message it returns must survive a writer→reader roundtrip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_rtmp::chunk::{ChunkLimits, ChunkReader, ChunkWriter};
use sluice_rtmp::control::Control;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the push size, so split points are explored too; the second the
    // budget for incomplete messages (256 B to 64 KiB), so interleaved messages run into it.
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let Some((&budget, data)) = data.split_first() else {
        return;
    };
    let mut reader = ChunkReader::new(ChunkLimits {
        max_message_size: 1 << 20,
        max_buffered_bytes: (usize::from(budget) + 1) * 256,
        ..ChunkLimits::default()
    });
    let mut got = Vec::new();
    'feed: for piece in data.chunks(usize::from(split).max(1)) {
        reader.push(piece);
        loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    let _ = Control::decode(&m);
                    got.push(m);
                }
                Ok(None) => {
                    assert!(reader.buffered_bytes() <= (usize::from(budget) + 1) * 256);
                    break;
                }
                Err(_) => break 'feed,
            }
        }
    }

    // Roundtrip what was accepted, minus chunk-layer control messages whose values the
    // writer does not mirror (Abort, out-of-range SetChunkSize would be refused by a reader).
    let msgs: Vec<_> = got
        .into_iter()
        .filter(|m| m.type_id != 1 && m.type_id != 2 && (2..=65599).contains(&m.csid))
        .collect();
    let mut writer = ChunkWriter::new();
    let mut out = BytesMut::new();
    for m in &msgs {
        writer.write(m, &mut out);
    }
    let mut again = ChunkReader::new(ChunkLimits::default());
    again.push(&out);
    for m in &msgs {
        assert_eq!(again.next_message().ok().flatten().as_ref(), Some(m));
    }
});
