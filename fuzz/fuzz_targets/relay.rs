//! Fuzzes the relay decoders (node-to-node bytes): arbitrary bytes, fed in pieces, must
//! never panic, and whatever they accept must re-encode to something that decodes the same.
//! A control stream of another version yields refusals only; a GOP stream's frames are
//! built into `Frame`s as the edge builds them (from their parts, without parsing).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_media::{Frame, FrameKind};
use sluice_relay::{
    Control, ControlDecoder, ControlEncoder, GopDecoder, GopEncoder, GopEvent, Limits, StreamKind,
    VERSION,
};

fuzz_target!(|data: &[u8]| {
    // First byte: the piece size (split points) in its low 6 bits; in its top bit, whether to
    // prepend a valid preamble, so the fuzzer reaches the message parsers quickly; in the
    // next, whether the control preamble names version 1 (a peer of the old version).
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(ctl & 0x3f).max(1);
    let control_version = if ctl & 0x40 != 0 { 1 } else { VERSION };
    let limits = Limits {
        max_control: 4096,
        max_frame: 1 << 16,
    };

    let mut control = ControlDecoder::new(limits);
    let mut gop = GopDecoder::new(limits);
    if ctl & 0x80 != 0 {
        control.feed_slice(&StreamKind::Control.preamble(control_version));
        gop.feed_slice(&StreamKind::Gop.preamble(VERSION));
    }
    let mut msgs = Vec::new();
    let mut events = Vec::new();
    let (mut control_ok, mut gop_ok) = (true, true);
    for chunk in data.chunks(piece) {
        let bytes = Bytes::copy_from_slice(chunk);
        if control_ok {
            control.feed(bytes.clone());
            loop {
                match control.poll() {
                    Ok(Some(m)) => msgs.push(m),
                    Ok(None) => break,
                    Err(_) => {
                        control_ok = false;
                        break;
                    }
                }
            }
        }
        if gop_ok {
            gop.feed(bytes);
            loop {
                match gop.poll() {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(_) => {
                        gop_ok = false;
                        break;
                    }
                }
            }
        }
    }
    let _ = control.finish();
    let _ = gop.finish();
    if control.version().is_some_and(|v| v != VERSION) {
        assert!(
            msgs.iter().all(|m| matches!(m, Control::Refused { .. })),
            "only refusals are read from another version: {msgs:?}"
        );
    }
    for e in &events {
        if let GopEvent::Frame(parts) = e {
            let frame = Frame::from_parts(parts.clone());
            assert_eq!(frame.payload.len(), parts.payload.len());
            assert!(!frame.payload.is_empty() || frame.kind == FrameKind::Script);
        }
    }

    // Re-encode what was accepted; it must decode to the same messages.
    let mut enc = ControlEncoder::new();
    let mut again = ControlDecoder::new(limits);
    for m in &msgs {
        again.feed(enc.encode(m).expect("decoded messages re-encode"));
    }
    let back: Vec<Control> =
        std::iter::from_fn(|| again.poll().expect("re-encoded decodes")).collect();
    assert_eq!(back, msgs);

    let mut enc = GopEncoder::new();
    let mut again = GopDecoder::new(limits);
    for e in &events {
        match e {
            GopEvent::Header(h) => again.feed(enc.start(h)),
            GopEvent::Frame(r) => {
                for part in enc.record(r).expect("decoded records re-encode") {
                    again.feed(part);
                }
            }
        }
    }
    let back: Vec<GopEvent> =
        std::iter::from_fn(|| again.poll().expect("re-encoded decodes")).collect();
    assert_eq!(back, events);
});
