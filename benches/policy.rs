//! What an MTA-STS policy or a DANE verdict costs a message once it is cached: the cache
//! lookups the dispatcher makes for every delivery of a domain, and matching an MX host
//! against the policy's patterns; and what DANE costs a connection (its TLS
//! configuration, built from the host's TLSA records). The first lookup of a domain
//! (TXT record, then the policy over HTTPS; validated MX and TLSA records from a signed
//! zone; all on loopback) is timed once and printed.

// A benchmark reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use volley::metrics::Metrics;
use volley::route::{
    Dane, DaneConfig, DnsConfig, MtaSts, MtaStsConfig, RelayConfig, Router, SecurityConfig,
};
use volley::smtp::dane::TlsaRecord;
use volley::smtp::{TlsConnectors, TlsPolicy};
use volley_loadtest::policy_server::{Answer, PolicyServer};
use volley_loadtest::{DnsRecords, DnsServer};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ip = Ipv4Addr::new(127, 0, 0, 30);
    let anchors = tempfile::NamedTempFile::new().expect("temporary file");
    let (sts, dane, _servers) = runtime.block_on(async {
        let records = DnsRecords::new()
            .sign("secure")
            .mx("ta.secure", 10, "mx.ta.secure")
            .a("mx.ta.secure", ip)
            .tlsa("_25._tcp.mx.ta.secure", 3, 1, 1, &[7; 32])
            .mx("plain.secure", 10, "mx.plain.secure")
            .a("mx.plain.secure", ip)
            .txt("_mta-sts.bench.test", "v=STSv1; id=1;")
            .a("mta-sts.bench.test", ip)
            .mx("bench.test", 10, "mx1.bench.test");
        let dns = DnsServer::start(records).await.expect("dns");
        let policy = "version: STSv1\nmode: enforce\nmx: *.bench.test\nmx: mail.example.com\nmax_age: 86400\n";
        let server = PolicyServer::start(
            ip.into(),
            HashMap::from([("mta-sts.bench.test".to_owned(), Answer::policy(policy))]),
        )
        .await
        .expect("policy server");
        let connectors =
            TlsConnectors::with_extra_roots_pem(server.ca_pem().as_bytes(), None).expect("roots");
        let tls = (**connectors.for_policy(TlsPolicy::Verify).config()).clone();
        let dns_config = DnsConfig {
            nameservers: vec![dns.addr()],
            ..DnsConfig::default()
        };
        let security = SecurityConfig {
            allow_loopback_mx: true,
        };
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(
            &dns_config,
            &RelayConfig::default(),
            &security,
            25,
            Arc::clone(&metrics),
        )
        .expect("router");
        let sts = MtaSts::new(
            Arc::new(router),
            &MtaStsConfig {
                port: server.addr().port(),
                ..MtaStsConfig::default()
            },
            tls,
            metrics,
        );
        let started = Instant::now();
        let policy = sts.policy("bench.test").await.expect("a policy");
        println!(
            "first lookup (TXT, then the policy over HTTPS on loopback): {:?}, mode {}",
            started.elapsed(),
            policy.mode.as_str()
        );
        assert!(sts.policy("nopolicy.bench.test").await.is_none());
        std::fs::write(anchors.path(), dns.trust_anchors()).expect("anchors");
        let dane = Dane::new(
            &dns_config,
            &DaneConfig {
                enabled: true,
                trust_anchor: Some(anchors.path().to_owned()),
            },
            Arc::new(Metrics::default()),
        )
        .expect("DANE resolver");
        let started = Instant::now();
        assert!(dane.verdict("ta.secure").await.is_some());
        println!(
            "first DANE lookup (validated MX, then TLSA, signed zone on loopback): {:?}",
            started.elapsed()
        );
        assert!(dane.verdict("plain.secure").await.is_none());
        (sts, dane, (dns, server))
    });
    c.bench_function("mta-sts cached lookup and MX match", |b| {
        b.iter(|| {
            let policy = sts
                .cached(black_box("bench.test"))
                .expect("cached")
                .expect("a policy");
            black_box(policy.matches(black_box("mx1.bench.test")))
        });
    });
    c.bench_function("mta-sts cached absence", |b| {
        b.iter(|| {
            let answer = sts.cached(black_box("nopolicy.bench.test"));
            black_box(answer.expect("cached").is_none())
        });
    });
    c.bench_function("dane cached verdict", |b| {
        b.iter(|| {
            let verdict = dane.cached(black_box("ta.secure"));
            black_box(verdict.expect("cached").is_some())
        });
    });
    c.bench_function("dane cached absence", |b| {
        b.iter(|| {
            let verdict = dane.cached(black_box("plain.secure"));
            black_box(verdict.expect("cached").is_none())
        });
    });
    let records = [TlsaRecord {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![7; 32],
    }];
    c.bench_function("dane TLS configuration per connection", |b| {
        b.iter(|| black_box(volley::smtp::dane::connectors(black_box(&records)).is_ok()));
    });
    drop(runtime);
}

criterion_group!(benches, bench);
criterion_main!(benches);
