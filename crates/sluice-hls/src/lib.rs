//! HLS and LL-HLS for Sluice, without I/O.
//!
//! A stream's frames go into one [`segmenter::Segmenter`] (once per stream, never per viewer),
//! which cuts them into GOP-aligned segments made of LL-HLS parts, muxed once into fMP4/CMAF
//! ([`fmp4`]) or MPEG-TS ([`ts`]). What a playlist says about them is the [`window::Window`];
//! [`playlist`] writes the playlists from it and reads the blocking-reload and delta-update
//! query. The bytes of parts and segments are the caller's to cache and serve.

pub mod fmp4;
pub mod mux;
pub mod playlist;
pub mod segmenter;
pub mod ts;
pub mod window;
