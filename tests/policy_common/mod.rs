//! What the TLS-policy tests (MTA-STS, DANE) share: sinks with their own host names and
//! certificates on several loopback addresses and one port (the engine has one SMTP
//! port), an engine routed through a test DNS server, and its reports.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use volley::address::Address;
use volley::engine::{Delivery, Engine, EngineConfig, Report};
use volley::metrics::Metrics;
use volley::route::{DnsConfig, Router, SecurityConfig};
use volley_loadtest::{Sink, SinkConfig};

/// Starts one capturing sink per `(address, host name, offers STARTTLS)`, all on one
/// free port; returns them by address, with the port.
pub async fn sinks(configs: &[(Ipv4Addr, &str, bool)]) -> (HashMap<Ipv4Addr, Sink>, u16) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((configs[0].0, 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut started = HashMap::new();
        for &(ip, name, starttls) in configs {
            let config = SinkConfig {
                listen: vec![SocketAddr::from((ip, port))],
                hostname: name.into(),
                starttls,
                capture: true,
                ..SinkConfig::default()
            };
            match Sink::start(config).await {
                Ok(sink) => {
                    started.insert(ip, sink);
                }
                Err(_) => break,
            }
        }
        if started.len() == configs.len() {
            return (started, port);
        }
    }
    panic!("no common free port");
}

/// A small message to `to`, from a bounce address.
pub fn delivery(key: u32, to: &str) -> Delivery<u32> {
    Delivery {
        key,
        from: Some(Address::parse("bounces@volley.test").unwrap()),
        to: Address::parse(to).unwrap(),
        body: Arc::from(&b"Subject: policy\r\n\r\nhello\r\n"[..]),
        queued_at: Instant::now(),
        cancelled: Default::default(),
        pool: None,
    }
}

/// The next `n` reports, by key (each within 30 s).
pub async fn collect(
    reports: &mut UnboundedReceiver<Report<u32>>,
    n: usize,
) -> HashMap<u32, Report<u32>> {
    let mut out = HashMap::new();
    while out.len() < n {
        let report = tokio::time::timeout(Duration::from_secs(30), reports.recv())
            .await
            .expect("a report within 30 s")
            .expect("running");
        out.insert(report.key, report);
    }
    out
}

/// An engine with `config`, resolving through `dns` with loopback MX hosts allowed.
pub fn start_engine(
    config: EngineConfig,
    dns: &DnsConfig,
    metrics: &Arc<Metrics>,
) -> (Engine<u32>, UnboundedReceiver<Report<u32>>) {
    let security = SecurityConfig {
        allow_loopback_mx: true,
    };
    let port = config.smtp.port;
    let router = Router::new(dns, &config.relay, &security, port, Arc::clone(metrics)).unwrap();
    Engine::start(config, Arc::new(router), Arc::clone(metrics)).unwrap()
}

/// A metric line of `text`, whole, or the end of one after its first labels.
pub fn has_metric(text: &str, line: &str) -> bool {
    text.lines()
        .any(|l| l == line || l.ends_with(&format!(",{line}")))
}
