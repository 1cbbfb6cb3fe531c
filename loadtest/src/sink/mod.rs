//! The load-test SMTP sink: configuration, server, per-connection sessions, scripted
//! recipient behaviours, counters and the record of received messages.

mod auth;
mod behaviour;
mod command;
mod config;
mod data;
mod server;
mod session;
mod stats;
mod store;

pub use config::SinkConfig;
pub use server::Sink;
pub use stats::Stats;
pub use store::Received;
