//! DANE end to end on loopback: a DNS server whose zone `secure.` is DNSSEC-signed
//! (its key given to volley as `[dane] trust_anchor`) and holds TLSA records, a zone
//! `forged.` signed with a key nobody trusts, an MTA-STS policy server, and sinks whose
//! certificates no CA volley knows has signed: only the TLSA records vouch for them.

mod policy_common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use policy_common::{collect, delivery, has_metric, start_engine};
use sha2::{Digest, Sha256};
use volley::engine::{EngineConfig, SmtpConfig};
use volley::metrics::Metrics;
use volley::outcome::Disposition;
use volley::route::{Dane, DaneConfig, DnsConfig, MtaStsConfig};
use volley::smtp::TlsPolicy;
use volley_loadtest::policy_server::{Answer, PolicyServer};
use volley_loadtest::{DnsRecords, DnsServer, Sink};

const POLICY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 40);
const GOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 41);
const PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 42);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 43);
/// A host without TLSA records whose certificate `smtp.ca_file` trusts.
const PKI: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 44);

/// The four sinks on one port: the engine has one SMTP port.
async fn sinks() -> (HashMap<Ipv4Addr, Sink>, u16) {
    policy_common::sinks(&[
        (GOOD, "mx.good.secure", true),
        (PLAIN, "mx.plain.secure", false),
        (OTHER, "mx.other.secure", true),
        (PKI, "mx.pki.secure", true),
    ])
    .await
}

/// What each domain must come to: delivered with this (TLS policy, encrypted, policy
/// label), or deferred.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Sent(TlsPolicy, bool, Option<&'static str>),
    Deferred,
}

#[tokio::test]
async fn tlsa_records_decide_tls_and_failures_defer() {
    let (sinks, port) = sinks().await;
    let good = sinks[&GOOD].tls_identity();
    let sha = |data: &[u8]| Sha256::digest(data).to_vec();
    let records = DnsRecords::new()
        .ttl(300)
        .sign("secure")
        .sign_badly("forged")
        .a("mx.good.secure", GOOD)
        .a("ee.good.secure", GOOD)
        .a("pkix.good.secure", GOOD)
        .a("mx.plain.secure", PLAIN)
        .a("mx.flaky.secure", PLAIN)
        .a("mx.other.secure", OTHER)
        .a("mx.forged", GOOD)
        // DANE-TA: the sink's CA, in the chain it sends; the name is checked.
        .tlsa("_25._tcp.mx.good.secure", 2, 0, 1, &sha(&good.ca))
        // DANE-EE: the sink's key, under a name its certificate does not carry.
        .tlsa("_25._tcp.ee.good.secure", 3, 1, 1, &sha(&good.leaf_spki))
        // PKIX-EE only: unusable in SMTP, so TLS without authentication.
        .tlsa("_25._tcp.pkix.good.secure", 1, 1, 1, &sha(&good.leaf_spki))
        // The good sink's key, where another sink answers, or one without STARTTLS.
        .tlsa("_25._tcp.mx.other.secure", 3, 1, 1, &sha(&good.leaf_spki))
        .tlsa("_25._tcp.mx.plain.secure", 3, 1, 1, &sha(&good.leaf_spki))
        .servfail("_25._tcp.mx.flaky.secure")
        .mx("ta.secure", 10, "mx.good.secure")
        .mx("ee.secure", 10, "ee.good.secure")
        .mx("pkix.secure", 10, "pkix.good.secure")
        .mx("wrongkey.secure", 10, "mx.other.secure")
        .mx("stripped.secure", 10, "mx.plain.secure")
        // No TLSA records at all: delivered as `[smtp] tls` says, here in clear text.
        .mx("notlsa.secure", 10, "mx.nothing.secure")
        .a("mx.nothing.secure", PLAIN)
        // One host's TLSA lookup fails: that host is left out, the other one used.
        .mx("flaky.secure", 10, "mx.flaky.secure")
        .mx("flaky.secure", 20, "mx.good.secure")
        // An MTA-STS policy that would refuse its MX host: DANE goes first.
        .mx("both.secure", 10, "mx.good.secure")
        .txt("_mta-sts.both.secure", "v=STSv1; id=1;")
        .a("mta-sts.both.secure", POLICY_IP)
        // A preferred host without TLSA records that the domain's MTA-STS policy does
        // not name: DANE does not lift the policy for it; the DANE host takes the mail.
        .mx("mixed.secure", 10, "mx.nothing.secure")
        .mx("mixed.secure", 20, "mx.good.secure")
        .txt("_mta-sts.mixed.secure", "v=STSv1; id=1;")
        .a("mta-sts.mixed.secure", POLICY_IP)
        // No MX: the domain is its own host, and its TLSA records count.
        .a("implicit.secure", GOOD)
        .tlsa("_25._tcp.implicit.secure", 3, 1, 1, &sha(&good.leaf_spki))
        // Two domains on the same MX hosts, one with an MTA-STS policy naming the host
        // without TLSA records: that host is verified for it alone, on its own lane.
        .a("mx.pki.secure", PKI)
        .mx("stsmix.secure", 10, "mx.pki.secure")
        .mx("stsmix.secure", 20, "mx.good.secure")
        .txt("_mta-sts.stsmix.secure", "v=STSv1; id=1;")
        .a("mta-sts.stsmix.secure", POLICY_IP)
        .mx("nopolicymix.secure", 10, "mx.pki.secure")
        .mx("nopolicymix.secure", 20, "mx.good.secure")
        // A host whose TLSA name is a CNAME into the zone that does not validate.
        .mx("cnamed.secure", 10, "mx.cnamed.secure")
        .a("mx.cnamed.secure", GOOD)
        .cname("_25._tcp.mx.cnamed.secure", "tlsa.forged")
        .a("tlsa.forged", GOOD)
        // A zone whose signatures do not validate: nothing goes.
        .mx("d.forged", 10, "mx.forged");
    let dns = DnsServer::start(records).await.unwrap();
    let policies = HashMap::from([
        (
            "mta-sts.both.secure".to_owned(),
            Answer::policy(
                "version: STSv1\r\nmode: enforce\r\nmx: elsewhere.test\r\nmax_age: 86400\r\n",
            ),
        ),
        (
            "mta-sts.stsmix.secure".to_owned(),
            Answer::policy(
                "version: STSv1\r\nmode: enforce\r\nmx: mx.pki.secure\r\nmax_age: 86400\r\n",
            ),
        ),
        (
            "mta-sts.mixed.secure".to_owned(),
            Answer::policy(
                "version: STSv1\r\nmode: enforce\r\nmx: mx.good.secure\r\nmax_age: 86400\r\n",
            ),
        ),
    ]);
    let server = PolicyServer::start(POLICY_IP.into(), policies)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchors.zone");
    std::fs::write(&anchor, dns.trust_anchors()).unwrap();
    let ca = dir.path().join("ca.pem");
    // The policy server is trusted, and the host without TLSA records; no other sink.
    std::fs::write(&ca, format!("{}{}", server.ca_pem(), sinks[&PKI].ca_pem())).unwrap();

    let metrics = Arc::new(Metrics::default());
    let dns_config = DnsConfig {
        nameservers: vec![dns.addr()],
        ..DnsConfig::default()
    };
    let dane = Dane::new(
        &dns_config,
        &DaneConfig {
            enabled: true,
            trust_anchor: Some(anchor),
        },
        Arc::clone(&metrics),
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
        dane: Some(Arc::new(dane)),
        ..EngineConfig::default()
    };
    let (engine, mut reports) = start_engine(config, &dns_config, &metrics);

    let dane = Some("dane");
    let domains = [
        ("ta.secure", Expect::Sent(TlsPolicy::Verify, true, dane)),
        ("ee.secure", Expect::Sent(TlsPolicy::Verify, true, dane)),
        ("pkix.secure", Expect::Sent(TlsPolicy::Required, true, dane)),
        ("wrongkey.secure", Expect::Deferred),
        ("stripped.secure", Expect::Deferred),
        (
            "notlsa.secure",
            Expect::Sent(TlsPolicy::Opportunistic, false, None),
        ),
        ("flaky.secure", Expect::Sent(TlsPolicy::Verify, true, dane)),
        ("both.secure", Expect::Sent(TlsPolicy::Verify, true, dane)),
        ("mixed.secure", Expect::Sent(TlsPolicy::Verify, true, dane)),
        (
            "implicit.secure",
            Expect::Sent(TlsPolicy::Verify, true, dane),
        ),
        (
            "stsmix.secure",
            Expect::Sent(TlsPolicy::Verify, true, Some("mta-sts")),
        ),
        (
            "nopolicymix.secure",
            Expect::Sent(TlsPolicy::Opportunistic, true, None),
        ),
        ("cnamed.secure", Expect::Deferred),
        // An address literal has no name for DANE to ask about: as configured.
        (
            "[127.0.0.44]",
            Expect::Sent(TlsPolicy::Opportunistic, true, None),
        ),
        ("d.forged", Expect::Deferred),
    ];
    // Two rounds: the second one runs on cached answers.
    let mut key = 0;
    let mut by_key = HashMap::new();
    for round in 0..2 {
        for (domain, expect) in domains {
            engine
                .submit(delivery(key, &format!("r{round}@{domain}")))
                .await
                .unwrap();
            by_key.insert(key, (domain, expect));
            key += 1;
        }
        for (k, report) in collect(&mut reports, domains.len()).await {
            let (domain, expect) = by_key[&k];
            let outcome = report.outcome.as_ref().expect("attempted");
            match expect {
                Expect::Sent(tls, encrypted, policy) => {
                    assert_eq!(
                        outcome.disposition,
                        Disposition::Delivered,
                        "{domain}: {report:?}"
                    );
                    let via = report.via.as_deref().expect("sent on a connection");
                    assert_eq!(
                        (via.tls, via.encrypted, via.policy),
                        (tls, encrypted, policy),
                        "{domain}"
                    );
                }
                Expect::Deferred => assert_eq!(
                    outcome.disposition,
                    Disposition::Transient,
                    "{domain}: {report:?}"
                ),
            }
            if domain == "d.forged" {
                assert!(
                    outcome.detail.starts_with("4.7.5 DANE for d.forged"),
                    "{}",
                    outcome.detail
                );
            }
        }
    }
    engine.shutdown().await;

    let at = |ip: Ipv4Addr| -> Vec<String> {
        sinks[&ip]
            .messages()
            .iter()
            .map(|m| m.rcpt_to[0].clone())
            .collect()
    };
    let mut good_rcpts = at(GOOD);
    good_rcpts.sort();
    assert_eq!(
        good_rcpts,
        [
            "r0@both.secure",
            "r0@ee.secure",
            "r0@flaky.secure",
            "r0@implicit.secure",
            "r0@mixed.secure",
            "r0@pkix.secure",
            "r0@ta.secure",
            "r1@both.secure",
            "r1@ee.secure",
            "r1@flaky.secure",
            "r1@implicit.secure",
            "r1@mixed.secure",
            "r1@pkix.secure",
            "r1@ta.secure",
        ],
        "the forged zone's mail never reached the host it named"
    );
    assert!(sinks[&GOOD].messages().iter().all(|m| m.tls));
    assert!(at(OTHER).is_empty(), "a key the TLSA records do not name");
    let mut pki = at(PKI);
    pki.sort();
    assert_eq!(
        pki,
        [
            "r0@[127.0.0.44]",
            "r0@nopolicymix.secure",
            "r0@stsmix.secure",
            "r1@[127.0.0.44]",
            "r1@nopolicymix.secure",
            "r1@stsmix.secure"
        ]
    );
    assert_eq!(
        at(PLAIN),
        ["r0@notlsa.secure", "r1@notlsa.secure"],
        "never in clear text to a DANE host, nor to one whose TLSA lookup failed"
    );
    assert_eq!(
        server.hits("mta-sts.both.secure"),
        1,
        "fetched once, and overruled by DANE for the host with TLSA records"
    );
    let text = metrics.render_prometheus();
    for line in [
        "volley_dane_failures_total 3",
        "volley_dane_refused_total 4",
        "tls=\"verify\",encrypted=\"true\",policy=\"dane\"} 12",
        "tls=\"required\",encrypted=\"true\",policy=\"dane\"} 2",
    ] {
        assert!(has_metric(&text, line), "{line} in {text}");
    }
}

#[tokio::test]
async fn check_prints_each_hosts_verdict() {
    let key = [7u8; 32];
    let records = DnsRecords::new()
        .sign("secure")
        .sign_badly("forged")
        .mx("ta.secure", 10, "mx.good.secure")
        .a("mx.good.secure", GOOD)
        .tlsa("_25._tcp.mx.good.secure", 2, 0, 1, &key)
        .mx("flaky.secure", 10, "mx.flaky.secure")
        .mx("flaky.secure", 20, "mx.pkix.secure")
        .a("mx.flaky.secure", PLAIN)
        .servfail("_25._tcp.mx.flaky.secure")
        .a("mx.pkix.secure", OTHER)
        .tlsa("_25._tcp.mx.pkix.secure", 1, 1, 1, &key)
        .mx("notlsa.secure", 10, "mx.nothing.secure")
        .a("mx.nothing.secure", PLAIN)
        .mx("d.forged", 10, "mx.forged")
        .a("mx.forged", GOOD);
    let dns = DnsServer::start(records).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchors.zone");
    std::fs::write(&anchor, dns.trust_anchors()).unwrap();
    let mut config = volley::app::config::Config::default();
    config.dns.nameservers = vec![dns.addr()];
    config.security.allow_loopback_mx = true;
    config.dane = DaneConfig {
        enabled: true,
        trust_anchor: Some(anchor),
    };
    let check = |domain: &'static str| {
        let config = config.clone();
        async move {
            volley::app::check::domain(&config, domain, None)
                .await
                .unwrap()
        }
    };
    let out = check("ta.secure").await;
    for line in [
        "dane: applies (the MX answer is DNSSEC-secure: mx.good.secure)",
        "  mx.good.secure: verify: encrypted and the certificate checked against TLSA 2 0 1, or deferred",
        "mta-sts: none (DANE decides)",
        "tls: per MX host, as DANE says above",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let out = check("flaky.secure").await;
    for line in [
        "  mx.flaky.secure: TLSA lookup failed (",
        "  mx.pkix.secure: required: no TLSA record usable in SMTP; encrypted, not authenticated",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let out = check("notlsa.secure").await;
    assert!(out.contains("dane: does not apply"), "{out}");
    let out = check("d.forged").await;
    for line in [
        "dane: failed: the MX answer of d.forged could not be validated",
        "tls: none: mail is deferred (4.7.5)",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
}
