//! Fuzzes the RTMP handshake in both roles: arbitrary peer bytes, in pieces, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_rtmp::handshake::{Handshake, Progress, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    // Scale the split so whole 1536-byte packets and single bytes are both reachable.
    let piece = usize::from(split).saturating_mul(13).max(1);
    for role in [Role::Server, Role::Client] {
        let mut h = Handshake::new(role);
        if h.start().is_err() {
            return;
        }
        for p in data.chunks(piece) {
            match h.process(p) {
                Ok(Progress::InProgress { .. }) => {}
                Ok(Progress::Done { .. }) | Err(_) => break,
            }
        }
    }
});
