//! The SMTP session against the load-test sink on 127.0.0.1: real TCP, real TLS with
//! a generated certificate, real AUTH, and the sink's scripted recipient behaviours.

use std::sync::Arc;

use volley::address::Address;
use volley::outcome::{Disposition, Scope, classify};
use volley::smtp::{
    Credentials, HeloName, Mechanism, RecipientResult, Session, SessionConfig, SmtpError,
    TlsConnectors, TlsPolicy, Transaction,
};
use volley_loadtest::{Sink, SinkConfig};

fn session_config(ca_pem: Option<&str>) -> SessionConfig {
    let connectors =
        TlsConnectors::with_extra_roots_pem(ca_pem.unwrap_or("").as_bytes(), None).unwrap();
    SessionConfig::new(HeloName::new("volley.test").unwrap(), connectors)
}

async fn connect(
    sink: &Sink,
    host: &str,
    config: SessionConfig,
) -> Result<Session<tokio::net::TcpStream>, SmtpError> {
    Session::connect(sink.addrs()[0], host, Arc::new(config)).await
}

fn addrs(list: &[&str]) -> Vec<Address> {
    list.iter().map(|a| Address::parse(a).unwrap()).collect()
}

async fn send_one(
    session: &mut Session<tokio::net::TcpStream>,
    to: &[&str],
    body: &[u8],
) -> Vec<RecipientResult> {
    let from = Address::parse("bounces@volley.test").unwrap();
    let to = addrs(to);
    session
        .send(&[Transaction {
            from: Some(&from),
            to: &to,
            body,
        }])
        .await
        .remove(0)
}

fn capture() -> SinkConfig {
    SinkConfig {
        capture: true,
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn delivers_over_starttls_with_bdat_and_pipelining() {
    let sink = Sink::start(capture()).await.unwrap();
    let mut session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    assert!(session.is_tls(), "opportunistic TLS was offered and taken");
    let from = Address::parse("bounces@volley.test").unwrap();
    let (to1, to2) = (
        addrs(&["a@example.test", "b@example.test"]),
        addrs(&["c@example.test"]),
    );
    let body = b"Subject: hi\n\n.leading dot\nbare lf\r\n";
    let txs = [
        Transaction {
            from: Some(&from),
            to: &to1,
            body,
        },
        Transaction {
            from: Some(&from),
            to: &to2,
            body,
        },
    ];
    let results = session.send(&txs).await;
    for result in results.iter().flatten() {
        assert_eq!(
            classify(result).disposition,
            Disposition::Delivered,
            "{result:?}"
        );
    }
    session.quit().await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.tls && m.bdat));
    assert_eq!(messages[0].rcpt_to, ["a@example.test", "b@example.test"]);
    assert_eq!(
        messages[0].data,
        b"Subject: hi\r\n\r\n.leading dot\r\nbare lf\r\n"
    );
    let stats = sink.stats();
    assert_eq!(
        (stats.tls_sessions, stats.messages, stats.bare_newlines),
        (1, 2, 0)
    );
    assert!(stats.pipelined_groups >= 1);
    assert_eq!(stats.pipelining_violations, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn data_path_dot_stuffs_what_the_sink_unstuffs() {
    let sink = Sink::start(SinkConfig {
        chunking: false,
        ..capture()
    })
    .await
    .unwrap();
    let mut config = session_config(None);
    config.tls = TlsPolicy::Disabled;
    let mut session = connect(&sink, "localhost", config).await.unwrap();
    assert!(!session.is_tls());
    let body = b"Subject: dots\r\n\r\n.\r\n..\r\nx\n.\nMAIL FROM:<evil@x>\r\nend";
    let results = send_one(&mut session, &["a@example.test"], body).await;
    assert!(results[0].is_ok(), "{results:?}");
    let messages = sink.messages();
    assert!(!messages[0].bdat);
    assert_eq!(
        messages[0].data,
        b"Subject: dots\r\n\r\n.\r\n..\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\nend\r\n"
    );
    assert_eq!(
        sink.stats().messages,
        1,
        "the smuggled MAIL stayed inside the content"
    );
    sink.shutdown().await;
}

#[tokio::test]
async fn without_pipelining_the_sink_sees_no_early_commands() {
    let sink = Sink::start(SinkConfig {
        pipelining: false,
        chunking: false,
        ..capture()
    })
    .await
    .unwrap();
    let mut session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    let results = send_one(
        &mut session,
        &["a@example.test", "permfail@example.test", "b@example.test"],
        b"x",
    )
    .await;
    let got: Vec<_> = results.iter().map(|r| classify(r).disposition).collect();
    assert_eq!(
        got,
        [
            Disposition::Delivered,
            Disposition::Permanent,
            Disposition::Delivered
        ]
    );
    assert_eq!(sink.stats().pipelining_violations, 0);
    assert_eq!(sink.stats().pipelined_groups, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn verify_mode_checks_the_certificate() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let ca = sink.ca_pem();

    let mut config = session_config(Some(&ca));
    config.tls = TlsPolicy::Verify;
    let session = connect(&sink, "localhost", config.clone()).await.unwrap();
    assert!(session.is_tls());
    session.quit().await;

    // The right CA but the wrong name, and the right name without the CA: refused.
    for (host, config) in [
        ("wrong.example", config),
        ("localhost", {
            let mut c = session_config(None);
            c.tls = TlsPolicy::Verify;
            c
        }),
    ] {
        let err = connect(&sink, host, config).await.unwrap_err();
        assert!(matches!(err, SmtpError::Tls(_)), "{host}: {err:?}");
        let outcome = classify(&Err(err));
        assert!(outcome.is_transient() && outcome.is_connection_level());
    }
    sink.shutdown().await;
}

#[tokio::test]
async fn required_tls_defers_when_starttls_is_missing() {
    let sink = Sink::start(SinkConfig {
        starttls: false,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut config = session_config(None);
    config.tls = TlsPolicy::Required;
    let err = connect(&sink, "localhost", config).await.unwrap_err();
    assert!(matches!(err, SmtpError::Tls(_)), "{err:?}");
    // Opportunistic goes on in clear text.
    let session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    assert!(!session.is_tls());
    sink.shutdown().await;
}

#[tokio::test]
async fn implicit_tls_like_port_465() {
    let sink = Sink::start(SinkConfig {
        implicit_tls: true,
        ..capture()
    })
    .await
    .unwrap();
    let mut config = session_config(Some(&sink.ca_pem()));
    config.implicit_tls = true;
    config.tls = TlsPolicy::Verify;
    let mut session = connect(&sink, "localhost", config).await.unwrap();
    assert!(session.is_tls());
    let results = send_one(&mut session, &["a@example.test"], b"x").await;
    assert!(results[0].is_ok());
    assert!(sink.messages()[0].tls);
    sink.shutdown().await;
}

#[tokio::test]
async fn auth_with_each_mechanism() {
    let sink = Sink::start(SinkConfig {
        auth: Some(("relay".into(), "s3cret".into())),
        ..capture()
    })
    .await
    .unwrap();
    for mechanism in [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5] {
        let mut config = session_config(None);
        config.credentials = Some(Credentials::new("relay", "s3cret"));
        config.auth_mechanism = Some(mechanism);
        let mut session = connect(&sink, "localhost", config).await.unwrap();
        assert!(
            session.is_authenticated() && session.is_tls(),
            "{mechanism:?}"
        );
        let results = send_one(&mut session, &["a@example.test"], b"x").await;
        assert!(results[0].is_ok(), "{mechanism:?}: {results:?}");
        session.quit().await;
    }
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    assert!(
        messages
            .iter()
            .all(|m| m.authenticated.as_deref() == Some("relay"))
    );
    assert_eq!(sink.stats().auth_successes, 3);

    // A wrong password is the connection's problem, never a bounce.
    let mut config = session_config(None);
    config.credentials = Some(Credentials::new("relay", "wrong"));
    let err = connect(&sink, "localhost", config).await.unwrap_err();
    let outcome = classify(&Err(err));
    assert_eq!(
        (outcome.disposition, outcome.scope),
        (Disposition::Transient, Scope::Connection)
    );
    assert_eq!(outcome.code, Some(535));

    // Credentials never cross a clear-text connection unless explicitly allowed.
    let mut config = session_config(None);
    config.tls = TlsPolicy::Disabled;
    config.credentials = Some(Credentials::new("relay", "s3cret"));
    assert!(matches!(
        connect(&sink, "localhost", config.clone()).await,
        Err(SmtpError::Auth(_))
    ));
    config.auth_without_tls = true;
    let session = connect(&sink, "localhost", config).await.unwrap();
    assert!(session.is_authenticated() && !session.is_tls());
    sink.shutdown().await;
}

#[tokio::test]
async fn scripted_recipients_classify_as_the_sink_decided() {
    let sink = Sink::start(SinkConfig {
        slow_delay: std::time::Duration::from_millis(20),
        ..capture()
    })
    .await
    .unwrap();
    let mut session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    let to = [
        "tempfail-2-a@x.test",
        "permfail@x.test",
        "greylist@x.test",
        "quota@x.test",
        "slow@x.test",
        "ok@x.test",
    ];
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let results = send_one(&mut session, &to, b"Subject: t\r\n\r\nbody\r\n").await;
        rounds.push(results.iter().map(classify).collect::<Vec<_>>());
    }
    use Disposition::{Delivered as D, Permanent as P, Transient as T};
    let expected = [[T, P, T, T, D, D], [T, P, D, T, D, D], [D, P, D, T, D, D]];
    for (round, want) in rounds.iter().zip(expected) {
        let got: Vec<_> = round.iter().map(|o| o.disposition).collect();
        assert_eq!(got, want);
    }
    assert!(rounds[0][1].suppress, "5.1.1 suppresses the address");
    assert!(!rounds[0][0].suppress && !rounds[0][3].suppress);
    assert_eq!(
        rounds[0][3].enhanced.map(|e| e.to_string()).as_deref(),
        Some("4.2.2")
    );
    assert!(session.is_usable());
    sink.shutdown().await;
}

#[tokio::test]
async fn bye_and_drop_are_connection_level() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    for who in ["bye@x.test", "drop@x.test"] {
        let mut session = connect(&sink, "localhost", session_config(None))
            .await
            .unwrap();
        let results = send_one(&mut session, &["ok@x.test", who], b"x").await;
        for result in &results {
            let outcome = classify(result);
            assert!(
                outcome.is_transient() && outcome.is_connection_level(),
                "{who}: {outcome:?}"
            );
        }
        assert!(!session.is_usable(), "{who}");
    }
    let results = {
        let mut session = connect(&sink, "localhost", session_config(None))
            .await
            .unwrap();
        send_one(&mut session, &["bye@x.test"], b"x").await
    };
    assert!(classify(&results[0]).throttle, "a 421 throttles the site");
    sink.shutdown().await;
}

#[tokio::test]
async fn helo_only_server_gets_plain_smtp() {
    let sink = Sink::start(SinkConfig {
        helo_only: true,
        ..capture()
    })
    .await
    .unwrap();
    let mut session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    assert!(!session.is_tls());
    let results = send_one(&mut session, &["a@x.test", "b@x.test"], b"plain").await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sink.messages()[0].helo, "volley.test");
    assert_eq!(sink.stats().pipelining_violations, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn many_transactions_on_one_connection() {
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut session = connect(&sink, "localhost", session_config(None))
        .await
        .unwrap();
    let from = Address::parse("bounces@volley.test").unwrap();
    let recipients: Vec<Vec<Address>> = (0..100)
        .map(|i| addrs(&[&format!("user{i}@x.test")]))
        .collect();
    let body = vec![b'x'; 2000];
    for batch in recipients.chunks(25) {
        let txs: Vec<_> = batch
            .iter()
            .map(|to| Transaction {
                from: Some(&from),
                to,
                body: &body,
            })
            .collect();
        let results = session.send(&txs).await;
        assert!(results.iter().flatten().all(Result::is_ok));
    }
    assert_eq!(session.transactions(), 100);
    session.quit().await;
    let stats = sink.stats();
    assert_eq!((stats.connections, stats.messages), (1, 100));
    let counts = sink.delivery_counts();
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|n| *n == 1));
    sink.shutdown().await;
}
