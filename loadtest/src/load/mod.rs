//! The end-to-end load test (the `volley-load` binary and the CI smoke test): volley run as
//! a user runs it — `volley serve` as its own process with its durable queue, templates, MIME
//! and delivery — against the `volley-sink` process on N loopback addresses and a DNS server
//! on loopback, then the reference clients against the same sink.
//!
//! [`run`] is the whole run; it returns a [`Report`] (figures and correctness checks) or a
//! [`LoadError`] when the run itself could not be carried out. Network traffic stays on
//! 127.0.0.0/8; every wait is bounded, and the run as a whole is bounded by
//! [`LoadOptions::timeout`], after which the children are killed.
//!
//! # Layout
//! * `options`: [`LoadOptions`] and its defaults.
//! * `driver`: the sequence of a run.
//! * `children`: starting and stopping the sink and volley processes.
//! * `process`: child guards (killed on drop), `/proc` CPU and memory readings.
//! * `setup`: temporary directory, DNS records, `volley.toml`, Redis clean-up.
//! * `workload`: addresses, campaign bodies, the generated template, the sink's permfail rule.
//! * `http`: a minimal HTTP/1.1 client for volley's API.
//! * `events`: the event log read back, per-recipient verdicts and latencies.
//! * `metrics`: volley's `/metrics` parsed.
//! * `report`: [`Report`], its table and its JSON.

mod children;
mod driver;
mod error;
mod events;
mod http;
mod metrics;
mod options;
mod process;
mod report;
mod setup;
mod workload;

pub use error::LoadError;
pub use events::{EventsSummary, Quantiles};
pub use metrics::{Scraped, StageSummary};
pub use options::{
    CAMPAIGN_CHUNK, DkimMode, EVENTS_LIMIT, LoadOptions, QueueBackend, REFERENCE_CONNECTIONS,
};
pub use report::{Check, Counts, Reference, Report, SinkUsage, VolleyUsage};

/// Runs one load test. Must be called inside a multi-threaded tokio runtime (the DNS server
/// and the reference clients run on it). Fails with [`LoadError::Timeout`] when
/// [`LoadOptions::timeout`] passes; every child process is killed before it returns.
pub async fn run(options: &LoadOptions) -> Result<Report, LoadError> {
    validate(options)?;
    match tokio::time::timeout(options.timeout, driver::run(options)).await {
        Ok(result) => result,
        // Dropping the run's future dropped every guard: the children are killed.
        Err(_) => Err(LoadError::Timeout(options.timeout, "running".into())),
    }
}

fn validate(options: &LoadOptions) -> Result<(), LoadError> {
    let fail = |m: &str| Err(LoadError::Options(m.to_owned()));
    if options.recipients == 0 {
        return fail("--recipients must be at least 1");
    }
    if options.domains == 0 {
        return fail("--domains must be at least 1");
    }
    if options.sink_addresses == 0 || options.sink_addresses > 240 {
        return fail("--sink-addresses must be 1 to 240");
    }
    if options.concurrency == 0 {
        return fail("--concurrency must be at least 1");
    }
    if !(0.0..=100.0).contains(&options.tempfail_percent)
        || !(0.0..=100.0).contains(&options.permfail_percent)
    {
        return fail("failure percentages must be between 0 and 100");
    }
    if options.tempfail_percent >= 100.0 {
        return fail("--tempfail-percent 100 would never deliver anything");
    }
    for (what, path) in [
        ("volley", &options.volley_bin),
        ("volley-sink", &options.sink_bin),
    ] {
        if !path.is_file() {
            return Err(LoadError::Options(format!(
                "{what} executable not found at {}",
                path.display()
            )));
        }
    }
    Ok(())
}
