//! The Sluice node: wiring of listeners, admin API, config reload and shutdown around a config.
//!
//! `main.rs` only parses the command line and calls into here, so integration tests run the
//! same [`App`] in-process on port 0.

pub mod admin;
pub mod app;
pub mod cli;
pub mod registry;
pub mod reload;
pub mod status;

pub use app::App;
