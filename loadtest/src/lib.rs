//! Load-test tools for volley.
//!
//! * [`Sink`]: a fast in-process (or stand-alone, see the `volley-sink` binary) SMTP server
//!   with scripted per-recipient behaviours, used by volley's integration tests and load tests.
//! * [`blast`]: a minimal pipelined SMTP client that measures the throughput ceiling of the
//!   machine (the `volley-blast` binary).
//! * [`DnsServer`]: a real authoritative DNS server on loopback (UDP and TCP) serving
//!   [`DnsRecords`] (MX, null MX, A, AAAA, TXT, SERVFAIL names), for tests that resolve.
//! * [`process_cpu_seconds`]: CPU accounting for load-test reports.
//! * [`proxy`]: a TCP proxy that delays each direction by half a round trip (a wide-area
//!   network on loopback, `volley-load --rtt-ms`).
//! * [`policy_server`]: an HTTPS server serving one MTA-STS policy file, with a
//!   certificate of its own CA.
//! * [`load`]: the end-to-end load test of `volley serve` against the sink, with the
//!   references measured in the same run (the `volley-load` binary).

// These are measuring tools: they report progress on stderr, and their arithmetic on
// rates and percentiles turns floats into counts on purpose.
#![allow(clippy::print_stderr, clippy::cast_possible_truncation)]

pub mod blast;
mod cpu;
pub mod dns;
pub mod load;
pub mod policy_server;
pub mod proxy;
mod sink;
mod tls;

pub use cpu::process_cpu_seconds;
pub use dns::{DnsRecords, DnsServer};
pub use sink::{Received, Sink, SinkConfig, Stats};
pub use tls::TlsIdentity;
