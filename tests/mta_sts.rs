//! MTA-STS end to end on loopback: a DNS server with the `_mta-sts` TXT records, an
//! HTTPS server with the policies (its own CA, trusted through `[smtp] ca_file`), and
//! sinks with certificates for their MX names, one without STARTTLS (a stripping
//! attacker) and one whose certificate nobody trusts.

mod policy_common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use policy_common::{collect, delivery, has_metric, start_engine};
use volley::engine::{Engine, EngineConfig, SmtpConfig};
use volley::metrics::Metrics;
use volley::outcome::Disposition;
use volley::route::{DnsConfig, MtaStsConfig};
use volley::smtp::TlsPolicy;
use volley_loadtest::policy_server::{Answer, PolicyServer};
use volley_loadtest::{DnsRecords, DnsServer, Sink};

const POLICY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);
const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);
const PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 32);
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 33);

fn policy(mode: &str, mx: &str) -> Answer {
    Answer::policy(&format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"
    ))
}

/// The three sinks on one port: the engine has one SMTP port.
async fn sinks() -> (HashMap<Ipv4Addr, Sink>, u16) {
    policy_common::sinks(&[
        (TRUSTED, "mx.trusted.test", true),
        (PLAIN, "mx.plain.test", false),
        (UNTRUSTED, "mx.untrusted.test", true),
    ])
    .await
}

#[tokio::test]
async fn policies_are_fetched_cached_and_enforced() {
    let (sinks, port) = sinks().await;
    let domains = [
        // domain, its MX host (whose address picks the sink), its policy
        (
            "enforced.test",
            "mx.trusted.test",
            Some(policy("enforce", "mx.trusted.test")),
        ),
        (
            "wildcard.test",
            "mx.trusted.test",
            Some(policy("enforce", "*.trusted.test")),
        ),
        (
            "stripped.test",
            "mx.plain.test",
            Some(policy("enforce", "mx.plain.test")),
        ),
        (
            "forged.test",
            "mx.untrusted.test",
            Some(policy("enforce", "mx.untrusted.test")),
        ),
        (
            "wrongmx.test",
            "mx.trusted.test",
            Some(policy("enforce", "mail.elsewhere.test")),
        ),
        (
            "testing.test",
            "mx.plain.test",
            Some(policy("testing", "mx.other.test")),
        ),
        (
            "testing-forged.test",
            "mx.untrusted.test",
            Some(policy("testing", "mx.untrusted.test")),
        ),
        ("nopolicy.test", "mx.plain.test", None),
        (
            "broken.test",
            "mx.plain.test",
            Some(Answer {
                status: 200,
                content_type: "text/html".into(),
                body: "version: STSv1\nmode: enforce\nmx: nowhere.test\nmax_age: 86400\n".into(),
            }),
        ),
    ];
    let mut records = DnsRecords::new()
        .ttl(300)
        .a("mx.trusted.test", TRUSTED)
        .a("mx.plain.test", PLAIN)
        .a("mx.untrusted.test", UNTRUSTED);
    let mut answers = HashMap::new();
    for (domain, mx, answer) in &domains {
        records = records.mx(domain, 10, mx);
        if let Some(answer) = answer {
            records = records
                .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20261202;")
                .a(&format!("mta-sts.{domain}"), POLICY_IP);
            answers.insert(format!("mta-sts.{domain}"), answer.clone());
        }
    }
    let dns = DnsServer::start(records).await.unwrap();
    let server = PolicyServer::start(POLICY_IP.into(), answers)
        .await
        .unwrap();
    // Trusted: the policy server's CA and the trusted sink's; not the untrusted sink's.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        format!("{}{}", server.ca_pem(), sinks[&TRUSTED].ca_pem()),
    )
    .unwrap();
    let mut smtp = SmtpConfig {
        helo_name: "volley.test".into(),
        port,
        ca_file: Some(ca),
        ..SmtpConfig::default()
    };
    smtp.timeouts.connect = Duration::from_secs(2);
    let config = EngineConfig {
        smtp,
        mta_sts: MtaStsConfig {
            enabled: true,
            port: server.addr().port(),
            ..MtaStsConfig::default()
        },
        ..EngineConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let dns_config = DnsConfig {
        nameservers: vec![dns.addr()],
        ..DnsConfig::default()
    };
    let (engine, mut reports) = start_engine(config, &dns_config, &metrics);
    // Three messages per domain, in two rounds: the policy is fetched once.
    let mut key = 0;
    let mut by_key = HashMap::new();
    for round in 0..2 {
        for (domain, _, _) in &domains {
            for i in 0..if round == 0 { 2 } else { 1 } {
                engine
                    .submit(delivery(key, &format!("r{round}u{i}@{domain}")))
                    .await
                    .unwrap();
                by_key.insert(key, *domain);
                key += 1;
            }
        }
        let n = domains.len() * if round == 0 { 2 } else { 1 };
        let got = collect(&mut reports, n).await;
        for (k, report) in got {
            let domain = by_key[&k];
            let outcome = report.outcome.as_ref().expect("attempted");
            let via = report.via.as_deref();
            match domain {
                "enforced.test" | "wildcard.test" => {
                    assert_eq!(
                        outcome.disposition,
                        Disposition::Delivered,
                        "{domain}: {report:?}"
                    );
                    let via = via.expect("sent on a connection");
                    assert_eq!(
                        (via.tls, via.encrypted, via.policy),
                        (TlsPolicy::Verify, true, Some("mta-sts")),
                        "{domain}"
                    );
                }
                "stripped.test" | "forged.test" => {
                    assert_eq!(
                        outcome.disposition,
                        Disposition::Transient,
                        "{domain}: {report:?}"
                    );
                }
                "wrongmx.test" => {
                    assert_eq!(outcome.disposition, Disposition::Transient);
                    assert!(
                        outcome
                            .detail
                            .starts_with("4.7.5 MTA-STS policy of wrongmx.test (enforce)"),
                        "{}",
                        outcome.detail
                    );
                }
                "testing.test" | "testing-forged.test" => {
                    assert_eq!(
                        outcome.disposition,
                        Disposition::Delivered,
                        "{domain}: {report:?}"
                    );
                    let via = via.expect("sent on a connection");
                    let encrypted = domain == "testing-forged.test";
                    assert_eq!(
                        (via.tls, via.encrypted, via.policy),
                        (TlsPolicy::Opportunistic, encrypted, Some("mta-sts-testing")),
                        "{domain}"
                    );
                }
                "nopolicy.test" | "broken.test" => {
                    assert_eq!(
                        outcome.disposition,
                        Disposition::Delivered,
                        "{domain}: {report:?}"
                    );
                    let via = via.expect("sent on a connection");
                    assert_eq!(
                        (via.tls, via.encrypted, via.policy),
                        (TlsPolicy::Opportunistic, false, None)
                    );
                }
                other => panic!("{other}"),
            }
        }
    }
    engine.shutdown().await;
    for (domain, _, answer) in &domains {
        let host = format!("mta-sts.{domain}");
        let expected = u64::from(answer.is_some());
        assert_eq!(
            server.hits(&host),
            expected,
            "{host}: fetched once, then cached"
        );
    }
    // Nothing reached the MX hosts a policy refused.
    let at = |ip: Ipv4Addr| -> Vec<String> {
        sinks[&ip]
            .messages()
            .iter()
            .map(|m| m.rcpt_to[0].clone())
            .collect()
    };
    let mut untrusted = at(UNTRUSTED);
    untrusted.sort();
    assert_eq!(
        untrusted,
        [
            "r0u0@testing-forged.test",
            "r0u1@testing-forged.test",
            "r1u0@testing-forged.test"
        ],
        "only a testing domain's mail reaches an untrusted certificate"
    );
    let plain = at(PLAIN);
    assert!(
        plain.iter().all(|r| !r.ends_with("@stripped.test")),
        "never in clear text to an enforce domain: {plain:?}"
    );
    let trusted = at(TRUSTED);
    assert!(trusted.iter().all(|r| !r.ends_with("@wrongmx.test")));
    assert_eq!(trusted.len(), 6, "{trusted:?}");
    assert!(sinks[&TRUSTED].messages().iter().all(|m| m.tls));
    let text = metrics.render_prometheus();
    for line in [
        "volley_mta_sts_fetched_total 7",
        "volley_mta_sts_fetch_failures_total 1",
        "volley_mta_sts_refused_total 3",
        "volley_mta_sts_testing_failures_total 3",
        "tls=\"verify\",encrypted=\"true\",policy=\"mta-sts\"} 6",
    ] {
        assert!(has_metric(&text, line), "{line} in {text}");
    }
    // Each handshake with the untrusted certificate of a testing domain's MX was counted
    // (one or more connections).
    let failures: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("volley_mta_sts_testing_tls_failures_total "))
        .expect("counted")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&failures), "{failures}");
}

#[tokio::test]
async fn a_new_txt_id_brings_the_new_policy() {
    let (sinks, port) = sinks().await;
    let zone = |id: &str| {
        DnsRecords::new()
            .ttl(1)
            .mx("rotate.test", 10, "mx.trusted.test")
            .a("mx.trusted.test", TRUSTED)
            .a("mta-sts.rotate.test", POLICY_IP)
            .txt("_mta-sts.rotate.test", &format!("v=STSv1; id={id};"))
    };
    let mut dns = DnsServer::start(zone("1")).await.unwrap();
    let host = "mta-sts.rotate.test";
    let server = PolicyServer::start(
        POLICY_IP.into(),
        HashMap::from([(host.to_owned(), policy("enforce", "mx.trusted.test"))]),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        format!("{}{}", server.ca_pem(), sinks[&TRUSTED].ca_pem()),
    )
    .unwrap();
    let smtp = SmtpConfig {
        helo_name: "volley.test".into(),
        port,
        ca_file: Some(ca),
        ..SmtpConfig::default()
    };
    let recheck = Duration::from_millis(500);
    let config = EngineConfig {
        smtp,
        mta_sts: MtaStsConfig {
            enabled: true,
            port: server.addr().port(),
            recheck,
        },
        ..EngineConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let dns_config = DnsConfig {
        nameservers: vec![dns.addr()],
        ..DnsConfig::default()
    };
    let (engine, mut reports) = start_engine(config, &dns_config, &metrics);
    let mut key = 0;
    let mut send = async |engine: &Engine<u32>| {
        key += 1;
        engine
            .submit(delivery(key, &format!("u{key}@rotate.test")))
            .await
            .unwrap();
        collect(&mut reports, 1).await.remove(&key).unwrap()
    };
    let first = send(&engine).await;
    assert_eq!(
        first.outcome.as_ref().unwrap().disposition,
        Disposition::Delivered
    );
    // The policy file changes, its TXT id does not: the cached policy stays.
    server.set(host, policy("enforce", "mail.elsewhere.test"));
    tokio::time::sleep(recheck + Duration::from_millis(1200)).await;
    let same_id = send(&engine).await;
    assert_eq!(
        same_id.outcome.as_ref().unwrap().disposition,
        Disposition::Delivered,
        "{same_id:?}"
    );
    assert_eq!(server.hits(host), 1, "same id: not fetched again");
    // A new id: the new policy is fetched and enforced.
    dns.replace(zone("2")).unwrap();
    tokio::time::sleep(recheck + Duration::from_millis(1200)).await;
    let new_id = send(&engine).await;
    let outcome = new_id.outcome.as_ref().unwrap();
    assert_eq!(outcome.disposition, Disposition::Transient, "{new_id:?}");
    assert!(
        outcome.detail.contains("policy mx mail.elsewhere.test"),
        "{}",
        outcome.detail
    );
    assert_eq!(server.hits(host), 2);
    engine.shutdown().await;
    assert_eq!(sinks[&TRUSTED].messages().len(), 2);
}
