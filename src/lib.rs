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
//! - [`route`]: MX resolution with hickory-resolver (preference, implicit and null MX,
//!   TTL cache, sites shared by domains with equal MX sets, relay mode).
//! - [`rate`]: rate specs (`"500/s"`) and limiters on tokio's clock.
//! - [`retry`]: the retry schedule and expiry.
//! - [`lane`]: one lane per site: a deadpool pool of sessions (fallback across MX
//!   hosts, a hard connection cap), rate limits, the adaptive throttle, workers that
//!   send pipelined batches and report classified outcomes.
//! - [`engine`]: the delivery engine: routes deliveries to lanes, reports outcomes,
//!   shuts down gracefully.
//! - [`metrics`]: per-phase latency histograms, outcome and site counters, Prometheus
//!   text.
//! - [`template`]: handlebars templates (`templates/NAME/{subject,html,text}.hbs`,
//!   partials), compiled once, rendered in strict mode; text derived from HTML.
//! - [`message`]: MIME messages (mail-builder), DKIM signing, List-Unsubscribe with
//!   one-click tokens, VERP return paths.
//! - [`queue`]: the durable queue of jobs and deliveries (leases, outcomes, events,
//!   suppression list), embedded (redb) or on Redis Streams; payloads are opaque to it.
//! - [`webhooks`]: delivery events pushed to `[webhooks] url` in HMAC-signed batches,
//!   retried with capped backoff in a task of their own; progress saved by cursor.
//!
//! - [`config`]: `volley.toml`: every section assembled, unknown keys refused,
//!   secrets from `VOLLEY_` environment variables.
//! - [`job`]: submissions (API and CLI shapes), their validation, the stored payload.
//! - [`compose`]: from a job and a recipient to signed message bytes.
//! - [`dispatch`]: queue to engine and back: leases, suppression, building, retry
//!   decisions, group commits.
//! - [`http`]: the HTTP API (axum) with one JSON error type.
//! - [`dashboard`]: the operators' live page at `/` (embedded HTML, script and style,
//!   SVG charts), its JSON endpoints and the sampler that keeps five minutes of
//!   per-second points.
//! - [`recipients`]: CSV and JSON Lines recipient lists for `volley send`.
//! - [`send`]: `volley send`: a campaign delivered from the command line.
//! - [`app`]: wiring everything into a running volley and stopping it gracefully.
//!
//! Dependencies point one way: `main` → `app` → `http`, `dispatch` → `engine`
//! (`route`, `lane`), `smtp`, `queue`, `compose` (`template`, `message`), `outcome`,
//! `metrics`, `config`. `smtp` knows nothing of queues, templates or HTTP; `queue`
//! knows nothing of SMTP; `template` and `message` know nothing of the network.

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

pub mod address;
pub mod app;
pub mod compose;
pub mod dispatch;
pub mod engine;
pub mod event;
pub mod http;
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
