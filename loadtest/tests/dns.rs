//! End-to-end tests of [`DnsServer`]: a real hickory resolver queries it over UDP and TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{TokioResolver, lookup::Lookup};
use volley_loadtest::dns::DnsRecordError;
use volley_loadtest::{DnsRecords, DnsServer};

/// A resolver that asks only `server`, over the transports of `ns`.
fn resolver_with(server: &DnsServer, mut ns: NameServerConfig) -> TokioResolver {
    for connection in &mut ns.connections {
        connection.port = server.addr().port();
    }
    let config = ResolverConfig::from_name_servers(vec![ns]);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .expect("resolver")
}

/// A resolver that asks only `server`, over UDP (TCP on truncation).
fn resolver(server: &DnsServer) -> TokioResolver {
    resolver_with(server, NameServerConfig::udp_and_tcp(server.addr().ip()))
}

fn records() -> DnsRecords {
    DnsRecords::new()
        .ttl(123)
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 20, "mx2.example.test")
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .aaaa("mx2.example.test", Ipv6Addr::LOCALHOST)
        .null_mx("nomail.test")
        .ttl(77)
        .txt("sel._domainkey.example.test", "v=DKIM1; k=rsa; p=abc")
        .a("other.example", Ipv4Addr::new(127, 0, 0, 9))
        .servfail("broken.test")
}

fn mx_of(lookup: &Lookup) -> Vec<(u16, String, u32)> {
    let mut mx: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_string(), record.ttl)),
            _ => None,
        })
        .collect();
    mx.sort();
    mx
}

fn txt_of(lookup: &Lookup) -> Vec<String> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn expect_err(result: Result<Lookup, NetError>) -> NetError {
    match result {
        Ok(lookup) => panic!("expected an error, got {:?}", lookup.answers()),
        Err(err) => err,
    }
}

/// The response code behind `err`, and whether the negative answer carried an SOA.
fn rcode_of(err: &NetError) -> Option<(ResponseCode, bool)> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some((no.response_code, no.soa.is_some())),
        NetError::Dns(DnsError::ResponseCode(code)) => Some((*code, false)),
        _ => None,
    }
}

#[tokio::test]
async fn mx_answers_carry_preference_exchange_and_ttl() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    let lookup = resolver
        .lookup("example.test.", RecordType::MX)
        .await
        .unwrap();
    let mx = mx_of(&lookup);
    assert_eq!(mx.len(), 2, "{mx:?}");
    assert_eq!((mx[0].0, mx[0].1.as_str()), (10, "mx1.example.test."));
    assert_eq!((mx[1].0, mx[1].1.as_str()), (20, "mx2.example.test."));
    // Served with the configured TTL; the cache may have aged it by a second at most.
    for (_, _, ttl) in &mx {
        assert!((122..=123).contains(ttl), "ttl {ttl}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn names_are_case_insensitive_and_dot_optional() {
    let server = DnsServer::start(DnsRecords::new().mx("Example.TEST.", 5, "MX.example.test"))
        .await
        .unwrap();
    let lookup = resolver(&server)
        .lookup("EXAMPLE.test.", RecordType::MX)
        .await
        .unwrap();
    let mx = mx_of(&lookup);
    assert_eq!(mx.len(), 1);
    assert_eq!(mx[0].0, 5);
    assert!(mx[0].1.eq_ignore_ascii_case("mx.example.test."), "{mx:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn null_mx_has_root_exchange() {
    let server = DnsServer::start(records()).await.unwrap();
    let lookup = resolver(&server)
        .lookup("nomail.test.", RecordType::MX)
        .await
        .unwrap();
    let mx = mx_of(&lookup);
    assert_eq!(mx.len(), 1);
    assert_eq!((mx[0].0, mx[0].1.as_str()), (0, "."));
    server.shutdown().await;
}

#[tokio::test]
async fn a_and_aaaa_answers() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("mx1.example.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);

    let mut ips: Vec<IpAddr> = resolver
        .lookup_ip("mx2.example.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );

    let aaaa = resolver
        .lookup("mx2.example.test.", RecordType::AAAA)
        .await
        .unwrap();
    let v6: Vec<_> = aaaa
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(ip) => Some(ip.0),
            _ => None,
        })
        .collect();
    assert_eq!(v6, vec![Ipv6Addr::LOCALHOST]);

    // Another top-level suffix gets its own zone.
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("other.example.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))]);
    server.shutdown().await;
}

#[tokio::test]
async fn txt_answers_and_ttl() {
    let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
    let server = DnsServer::start(records().txt("long._domainkey.example.test", &long))
        .await
        .unwrap();
    let resolver = resolver(&server);
    let lookup = resolver
        .lookup("sel._domainkey.example.test.", RecordType::TXT)
        .await
        .unwrap();
    assert_eq!(txt_of(&lookup), vec!["v=DKIM1; k=rsa; p=abc".to_owned()]);
    let ttl = lookup.answers()[0].ttl;
    assert!((76..=77).contains(&ttl), "ttl {ttl}");

    // Longer than 255 bytes: served as several character-strings of one record.
    let lookup = resolver
        .lookup("long._domainkey.example.test.", RecordType::TXT)
        .await
        .unwrap();
    assert_eq!(txt_of(&lookup), vec![long.clone()]);
    let RData::TXT(txt) = &lookup.answers()[0].data else {
        panic!("not a TXT record");
    };
    assert_eq!(txt.txt_data.len(), long.len().div_ceil(255));
    assert!(txt.txt_data.iter().all(|chunk| chunk.len() <= 255));
    server.shutdown().await;
}

#[tokio::test]
async fn other_type_only_is_nodata() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    let err = expect_err(resolver.lookup("mx1.example.test.", RecordType::MX).await);
    assert!(err.is_no_records_found(), "{err:?}");
    assert!(!err.is_nx_domain(), "{err:?}");
    assert_eq!(
        rcode_of(&err),
        Some((ResponseCode::NoError, true)),
        "{err:?}"
    );

    let err = expect_err(resolver.lookup("example.test.", RecordType::A).await);
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_name_is_nxdomain() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    for name in [
        "nowhere.test.",
        "deep.under.nowhere.test.",
        "x.other.example.",
    ] {
        let err = expect_err(resolver.lookup(name, RecordType::MX).await);
        assert!(err.is_nx_domain(), "{name}: {err:?}");
        // Authoritative negative answer: the zone's SOA is in the authority section.
        assert_eq!(
            rcode_of(&err),
            Some((ResponseCode::NXDomain, true)),
            "{err:?}"
        );
    }
    let err = resolver.lookup_ip("nowhere.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn servfail_names_and_names_under_them() {
    let server = DnsServer::start(
        records()
            .mx("broken.test", 10, "mx.broken.test")
            .a("mx.broken.test", Ipv4Addr::LOCALHOST),
    )
    .await
    .unwrap();
    let resolver = resolver(&server);
    for (name, rtype) in [
        ("broken.test.", RecordType::MX),
        ("broken.test.", RecordType::TXT),
        ("mx.broken.test.", RecordType::A),
        ("nothing.broken.test.", RecordType::MX),
    ] {
        let err = expect_err(resolver.lookup(name, rtype).await);
        assert!(!err.is_nx_domain(), "{name} {rtype}: {err:?}");
        assert!(!err.is_no_records_found(), "{name} {rtype}: {err:?}");
        assert_eq!(
            rcode_of(&err),
            Some((ResponseCode::ServFail, false)),
            "{err:?}"
        );
    }
    // Siblings are unaffected.
    assert!(
        resolver
            .lookup("example.test.", RecordType::MX)
            .await
            .is_ok()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_only_resolver() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver_with(&server, NameServerConfig::tcp(server.addr().ip()));
    let lookup = resolver
        .lookup("example.test.", RecordType::MX)
        .await
        .unwrap();
    assert_eq!(mx_of(&lookup).len(), 2);
    let err = expect_err(resolver.lookup("nowhere.test.", RecordType::MX).await);
    assert!(err.is_nx_domain(), "{err:?}");
    let err = expect_err(resolver.lookup("mx1.example.test.", RecordType::MX).await);
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn udp_and_tcp_share_the_port() {
    let server = DnsServer::start(records()).await.unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());
    // Both transports answer on addr.
    for ns in [
        NameServerConfig::udp(addr.ip()),
        NameServerConfig::tcp(addr.ip()),
    ] {
        let lookup = resolver_with(&server, ns)
            .lookup("nomail.test.", RecordType::MX)
            .await
            .unwrap();
        assert_eq!(mx_of(&lookup).len(), 1);
    }
    let debug = format!("{server:?}");
    assert!(debug.contains("DnsServer") && debug.contains(&addr.to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn empty_server_refuses_and_shuts_down() {
    let server = DnsServer::start(DnsRecords::new()).await.unwrap();
    let err = expect_err(
        resolver(&server)
            .lookup("example.test.", RecordType::MX)
            .await,
    );
    assert!(!err.is_nx_domain(), "{err:?}");
    assert_eq!(
        rcode_of(&err),
        Some((ResponseCode::Refused, false)),
        "{err:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_input_is_an_error_not_a_panic() {
    for records in [
        DnsRecords::new().a("", Ipv4Addr::LOCALHOST),
        DnsRecords::new().a(".", Ipv4Addr::LOCALHOST),
        DnsRecords::new().mx("bad..name.test", 10, "mx.test"),
        DnsRecords::new().mx("ok.test", 10, "bad..exchange"),
        DnsRecords::new().txt(&format!("{}.test", "x".repeat(64)), "label too long"),
        DnsRecords::new().servfail("a..b"),
    ] {
        let err = DnsServer::start(records.clone()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{records:?}");
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<DnsRecordError>());
        assert!(inner.is_some(), "{err:?}");
    }
}

#[tokio::test]
async fn dropping_the_handle_keeps_serving() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    drop(server);
    let lookup = resolver
        .lookup("example.test.", RecordType::MX)
        .await
        .unwrap();
    assert_eq!(mx_of(&lookup).len(), 2);
}

#[tokio::test]
async fn empty_non_terminal_and_zone_apex_are_nodata() {
    let server = DnsServer::start(records()).await.unwrap();
    let resolver = resolver(&server);
    // `_domainkey.example.test` only has names under it (sel._domainkey): it exists.
    for (name, rtype) in [
        ("_domainkey.example.test.", RecordType::TXT),
        ("test.", RecordType::MX),
    ] {
        let err = expect_err(resolver.lookup(name, rtype).await);
        assert!(
            err.is_no_records_found() && !err.is_nx_domain(),
            "{name}: {err:?}"
        );
        assert_eq!(
            rcode_of(&err),
            Some((ResponseCode::NoError, true)),
            "{name}: {err:?}"
        );
    }
    server.shutdown().await;
}
