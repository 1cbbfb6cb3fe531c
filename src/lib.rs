//! volley: a high-throughput bulk email sending engine.
//!
//! Submissions (one message, or a campaign of a template and recipients) are stored
//! in a durable queue, rendered, and delivered over pooled, pipelined SMTP
//! connections grouped per destination MX, with every reply classified into
//! delivered, retry later or bounce.
//!
//! # Layout
//! The modules follow a delivery from submission to the wire and back:
//!
//! 1. [`submit`]: what users hand volley (API and command-line request shapes, CSV and
//!    JSON Lines recipient lists), validated before anything is stored.
//! 2. [`queue`]: the durable queue of jobs and deliveries (leases, outcomes, events,
//!    suppression list), embedded (redb) or on Redis Streams; payloads are opaque to it.
//! 3. [`dispatch`]: queue to engine and back: leases, suppression, message building,
//!    retry decisions, group commits.
//! 4. [`compose`]: the stored job spec and, from it and one recipient, signed message
//!    bytes, with [`template`] (handlebars, strict) and [`message`] (MIME, DKIM,
//!    List-Unsubscribe, VERP).
//! 5. [`engine`]: routes deliveries to per-site lanes (under it: `engine::lane`, a
//!    deadpool pool of sessions per site with rate limits and the adaptive throttle),
//!    with [`route`] beside it (MX resolution, TTL cache, sites, relay mode).
//! 6. [`smtp`]: the SMTP client. A sans-IO core (reply parser, EHLO capabilities,
//!    commands, dot-stuffing and BDAT framing) under a session that owns the
//!    connection: STARTTLS or implicit TLS, AUTH, PIPELINING, CHUNKING, per-phase
//!    timeouts.
//! 7. [`outcome`]: the one classification of a result: delivered, transient or
//!    permanent; recipient-, message- or connection-level; suppress; throttle; and what
//!    a failure to connect means for the next host.
//!
//! Around them: [`inbound`] (the SMTP submission listener, on the server session of
//! [`smtp`]), [`http`] (the API with one JSON error type, its guard against
//! cross-site and rebound requests, its server with timeouts, and the operators'
//! dashboard), [`webhooks`] (events pushed in signed batches), [`metrics`] (per-phase
//! histograms, counters, Prometheus text, the last five minutes for the dashboard),
//! [`rate`] (`"500/s"` specs and limiters), [`retry`] (the schedule and expiry),
//! [`cluster`] (workers on one Redis sharing connection slots, rates, the webhook
//! sender and a heartbeat), and [`app`], the wiring: configuration, the running
//! process, `volley send`.
//!
//! Small shared values sit at the bottom: [`address`] (validated RFC 5321 addresses),
//! [`event`] (the one vocabulary of outcomes) and [`time`] (Unix milliseconds and RFC
//! 3339).
//!
//! Dependencies point one way, and `tests/architecture.rs` holds them: `app` on top;
//! `http` and `dispatch` under it; `engine` (`route`, `smtp`, `outcome`) and `compose`
//! (`template`, `message`) below; `queue`, `address`, `event` and `time` at the bottom.
//! `smtp` knows nothing of queues, templates, messages or HTTP; `queue` knows nothing of
//! SMTP or the engine; `template` and `message` know nothing of the network or the queue.

// The lint list is the workspace's, in Cargo.toml ([workspace.lints]).

pub mod address;
pub mod app;
pub mod cluster;
pub mod compose;
pub mod dispatch;
pub mod engine;
pub mod event;
pub mod http;
pub mod inbound;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod queue;
pub mod rate;
pub mod retry;
pub mod route;
pub mod smtp;
pub mod submit;
pub mod template;
pub mod time;
pub mod webhooks;
