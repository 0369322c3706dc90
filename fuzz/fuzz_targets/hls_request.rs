//! What an HLS request names: the file under `/APP/NAME/` and the LL-HLS query, both straight
//! from the peer's request line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_hls::playlist::{parse_query, parse_resource};
use sluice_hls::window::{Container, Window};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for container in [Container::Fmp4, Container::Ts] {
        let _ = parse_resource(text, container);
    }
    if let Ok(directives) = parse_query(text) {
        let _ = sluice_hls::playlist::directive_state(&Window::default(), &directives);
    }
});
