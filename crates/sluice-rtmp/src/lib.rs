//! Sluice's RTMP protocol core, without I/O.
//!
//! Bytes and `now` go in, events and bytes come out: no socket, clock or spawn in here.
//! The network-facing layers (chunk streams, commands, sessions) are our own; rml_rtmp is
//! used only for the handshake digest and rml_amf0 for AMF0 values.

pub mod chunk;
pub mod client;
pub mod command;
pub mod connection;
pub mod control;
pub mod handshake;
pub mod message;
pub mod server;

pub use message::{Message, MessageType};
