//! volley: a high-throughput bulk email sending engine.
//!
//! Submissions (one message, or a campaign of a template and recipients) are stored
//! in a durable queue, rendered, and delivered over pooled, pipelined SMTP
//! connections grouped per destination MX, with every reply classified into
//! delivered, retry later or bounce.
//!
//! # Layout
//! - [`smtp`]: the SMTP client. A sans-IO core (reply parser, EHLO capabilities,
//!   command encoding with validated addresses, dot-stuffing and BDAT framing) under
//!   a session that owns the connection: STARTTLS or implicit TLS, AUTH, PIPELINING,
//!   CHUNKING, per-phase timeouts.
//! - [`outcome`]: the one classification of a recipient's result: delivered,
//!   transient or permanent; recipient-, message- or connection-level; suppress;
//!   throttle.
//!
//! Dependencies point one way: `outcome` reads `smtp`'s types; `smtp` knows nothing
//! of queues, templates or HTTP.

#![forbid(unsafe_code)]
#![deny(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    unused_qualifications,
    clippy::dbg_macro,
    clippy::todo,
    clippy::unimplemented,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::mem_forget,
    clippy::needless_pass_by_ref_mut
)]
#![warn(clippy::semicolon_if_nothing_returned, clippy::manual_let_else)]

pub mod outcome;
pub mod smtp;
