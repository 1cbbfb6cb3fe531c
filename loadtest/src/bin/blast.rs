//! `volley-blast`: a minimal pipelined SMTP client; the throughput ceiling reference for load
//! tests. Prints one JSON line `{messages, elapsed_s, messages_per_second, cpu_seconds}`.

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use volley_loadtest::blast::{BlastConfig, blast};

/// Send pre-built messages to an SMTP server as fast as possible.
#[derive(Debug, Parser)]
#[command(name = "volley-blast", version)]
struct Args {
    /// SMTP server address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Total number of messages.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// One command per round trip.
    #[arg(long)]
    no_pipelining: bool,
    /// A new connection per message, one command per round trip (the naive reference).
    #[arg(long)]
    reconnect: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let config = BlastConfig {
        target: args.target,
        messages: args.messages,
        connections: args.connections,
        size: args.size,
        pipelining: !args.no_pipelining,
        reconnect: args.reconnect,
    };
    let report = runtime
        .block_on(blast(&config))
        .context("blast run failed")?;
    println!("{}", report.to_json());
    Ok(())
}
