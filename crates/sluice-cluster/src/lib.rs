//! Sluice's cluster: an edge pulls the streams its viewers ask for and it lacks, once per
//! stream, from upstream nodes (any RTMP server, or another Sluice over the QUIC relay), and
//! fails over between them.

pub mod quic;
pub mod source;
