//! Session tests over `tokio::io::duplex` against a scripted server that records
//! which commands arrived together, so pipelining is checked exactly: a write of the
//! client arrives whole on a duplex pipe, and the client writes again only after it
//! has read the replies it waits for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::address::Address;

#[derive(Clone, Default)]
struct Script {
    /// EHLO keywords after the greeting line.
    caps: Vec<&'static str>,
    /// Refuse EHLO with 502 so the client must say HELO.
    refuse_ehlo: bool,
    /// Answer DATA with 354 even when no recipient was accepted.
    data_anyway: bool,
    /// Never answer this verb (to test timeouts).
    mute: Option<&'static str>,
    /// After this many messages, answer what came so far and stop reading (a server that
    /// stalls in the middle of a pipelined batch).
    stall_after: Option<usize>,
    /// Wait this long before each read (a slow link).
    read_pause: Option<Duration>,
}

#[derive(Default)]
struct Log {
    /// Commands (and `<data>` / `<bdat>` for content) grouped by arrival.
    groups: Vec<Vec<String>>,
    /// Every MAIL line as received.
    mail_lines: Vec<String>,
    /// Every message content as received, unstuffed.
    messages: Vec<Vec<u8>>,
}

type SharedLog = Arc<Mutex<Log>>;

/// Runs the scripted server on one end of a duplex pipe. Like Postfix, a transaction
/// stays open after its content is refused for want of recipients: until RSET, another
/// MAIL is a nested one.
async fn serve(mut io: DuplexStream, script: Script, log: SharedLog) {
    let mut buf = Vec::new();
    let mut accepted = 0usize;
    let mut open = false;
    let mut in_data = false;
    let mut chunk = vec![0u8; 64 * 1024];
    let _ = io.write_all(b"220 test ESMTP\r\n").await;
    loop {
        if let Some(pause) = script.read_pause {
            tokio::time::sleep(pause).await;
        }
        let n = match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut group = Vec::new();
        loop {
            if in_data {
                let end = if buf.starts_with(b".\r\n") {
                    Some(0)
                } else {
                    find(&buf, b"\r\n.\r\n").map(|i| i + 2)
                };
                let Some(end) = end else { break };
                let content = unstuff(&buf[..end]);
                buf.drain(..end + 3);
                in_data = false;
                group.push("<data>".to_owned());
                log.lock().unwrap().messages.push(content);
                out.extend_from_slice(if accepted > 0 {
                    open = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    b"554 5.5.1 no recipients\r\n"
                });
                accepted = 0;
                continue;
            }
            let Some(end) = find(&buf, b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            group.push(verb.clone());
            if script.mute == Some(verb.as_str()) {
                continue;
            }
            let reply: String = match verb.as_str() {
                "EHLO" if script.refuse_ehlo => "502 5.5.1 no EHLO here\r\n".into(),
                "EHLO" => {
                    let mut r = String::from("250-test\r\n");
                    for (i, cap) in script.caps.iter().enumerate() {
                        let sep = if i + 1 == script.caps.len() { ' ' } else { '-' };
                        r.push_str(&format!("250{sep}{cap}\r\n"));
                    }
                    if script.caps.is_empty() {
                        r = "250 test\r\n".into();
                    }
                    r
                }
                "HELO" => "250 test\r\n".into(),
                "MAIL" if open => "503 5.5.1 nested MAIL command\r\n".into(),
                "MAIL" => {
                    log.lock().unwrap().mail_lines.push(line.clone());
                    accepted = 0;
                    open = true;
                    "250 2.1.0 ok\r\n".into()
                }
                "RCPT" => {
                    let local = line.split('<').nth(1).unwrap_or("").to_owned();
                    if local.starts_with("reject") {
                        "550 5.1.1 no such user\r\n".into()
                    } else if local.starts_with("later") {
                        "451 4.3.0 try later\r\n".into()
                    } else if local.starts_with("close") {
                        let _ = io.write_all(&out).await;
                        return;
                    } else {
                        accepted += 1;
                        "250 2.1.5 ok\r\n".into()
                    }
                }
                "DATA" if accepted > 0 || script.data_anyway => {
                    in_data = true;
                    "354 go ahead\r\n".into()
                }
                "DATA" => "554 5.5.1 no valid recipients\r\n".into(),
                "BDAT" => {
                    let size: usize = line
                        .split(' ')
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < size {
                        if let Some(pause) = script.read_pause {
                            tokio::time::sleep(pause).await;
                        }
                        let n = io.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let content: Vec<u8> = buf.drain(..size).collect();
                    group.push("<bdat>".to_owned());
                    let received = {
                        let mut log = log.lock().unwrap();
                        log.messages.push(content);
                        log.messages.len()
                    };
                    let r = if accepted > 0 {
                        open = false;
                        "250 2.0.0 queued\r\n"
                    } else {
                        "554 5.5.1 no recipients\r\n"
                    };
                    accepted = 0;
                    if script.stall_after == Some(received) {
                        out.extend_from_slice(r.as_bytes());
                        let _ = io.write_all(&out).await;
                        std::future::pending::<()>().await;
                    }
                    r.into()
                }
                "RSET" => {
                    open = false;
                    accepted = 0;
                    "250 2.0.0 ok\r\n".into()
                }
                "NOOP" => "250 2.0.0 ok\r\n".into(),
                "VRFY" => "252 2.5.0 cannot verify\r\n".into(),
                "EXPN" => "502 5.5.1 no\r\n".into(),
                "QUIT" => "221 2.0.0 bye\r\n".into(),
                _ => "500 5.5.1 what\r\n".into(),
            };
            out.extend_from_slice(reply.as_bytes());
        }
        if !group.is_empty() {
            log.lock().unwrap().groups.push(group);
        }
        if !out.is_empty() && io.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

fn config() -> SessionConfig {
    let mut config = SessionConfig::new(
        HeloName::new("client.test").unwrap(),
        TlsConnectors::with_extra_roots_pem(b"", None).unwrap(),
    );
    config.timeouts.data_end = Duration::from_secs(5);
    config
}

async fn start(
    script: Script,
    config: SessionConfig,
) -> (Result<Session<DuplexStream>, SmtpError>, SharedLog) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let log = SharedLog::default();
    tokio::spawn(serve(server, script, log.clone()));
    (
        Session::establish(client, "mx.test", Arc::new(config)).await,
        log,
    )
}

fn addrs(list: &[&str]) -> Vec<Address> {
    list.iter().map(|a| Address::parse(a).unwrap()).collect()
}

fn groups(log: &SharedLog) -> Vec<String> {
    log.lock()
        .unwrap()
        .groups
        .iter()
        .map(|g| g.join(" "))
        .collect()
}

/// How a recipient's result reads at the SMTP level (the classification proper, with
/// its provider quirks, is `outcome`'s and tested there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A 2xx final reply.
    Accepted,
    /// A 4xx reply.
    Transient,
    /// A 5xx reply, from the server or refused locally.
    Permanent,
    /// No reply: the connection failed.
    Connection,
}

fn kind(result: &RecipientResult) -> Kind {
    let reply = match result {
        Ok(reply) => reply,
        Err(SmtpError::Reply { reply, .. } | SmtpError::Local(reply)) => reply,
        Err(_) => return Kind::Connection,
    };
    match reply.code().get() / 100 {
        2 => Kind::Accepted,
        4 => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// The enhanced code of a reply or refusal.
fn enhanced(result: &RecipientResult) -> Option<String> {
    match result {
        Ok(reply) | Err(SmtpError::Reply { reply, .. } | SmtpError::Local(reply)) => {
            reply.enhanced().map(|e| e.to_string())
        }
        Err(_) => None,
    }
}

fn dispositions(results: &[RecipientResult]) -> Vec<Kind> {
    results.iter().map(kind).collect()
}

const PIPE: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SIZE 100000",
    "ENHANCEDSTATUSCODES",
];

#[tokio::test]
async fn pipelines_envelopes_and_joins_content_with_the_next_envelope() {
    let (session, log) = start(
        Script {
            caps: PIPE.to_vec(),
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let from = Address::parse("bounce@sender.test").unwrap();
    let (to1, to2) = (addrs(&["a@x.test", "b@x.test"]), addrs(&["c@x.test"]));
    let txs = [
        Transaction {
            from: Some(&from),
            to: &to1,
            body: b"Subject: one\r\n\r\n.dot line\r\n",
        },
        Transaction {
            from: Some(&from),
            to: &to2,
            body: b"Subject: two\n\nbare lf",
        },
    ];
    let results = session.send(&txs).await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted; 2]);
    assert_eq!(dispositions(&results[1]), [Kind::Accepted]);
    session.quit().await;
    assert_eq!(
        groups(&log),
        [
            "EHLO",
            "MAIL RCPT RCPT DATA",
            "<data> MAIL RCPT DATA",
            "<data>",
            "QUIT"
        ]
    );
    let log = log.lock().unwrap();
    assert_eq!(log.messages[0], b"Subject: one\r\n\r\n.dot line\r\n");
    assert_eq!(log.messages[1], b"Subject: two\r\n\r\nbare lf\r\n");
    assert_eq!(log.mail_lines[0], "MAIL FROM:<bounce@sender.test> SIZE=27");
}

#[tokio::test]
async fn without_pipelining_sends_one_command_at_a_time() {
    let (session, log) = start(
        Script {
            caps: vec!["8BITMIME"],
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let to = addrs(&["a@x.test", "reject@x.test"]);
    let results = session
        .send(&[Transaction {
            from: None,
            to: &to,
            body: b"hi",
        }])
        .await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted, Kind::Permanent]);
    assert_eq!(
        groups(&log),
        ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "<data>"]
    );
    assert_eq!(log.lock().unwrap().mail_lines[0], "MAIL FROM:<>");
}

#[tokio::test]
async fn a_refused_recipient_fails_alone_and_an_all_refused_message_sends_no_body() {
    let (session, log) = start(
        Script {
            caps: PIPE.to_vec(),
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let mixed = addrs(&["a@x.test", "reject@x.test", "later@x.test"]);
    let refused = addrs(&["reject@x.test"]);
    let ok = addrs(&["b@x.test"]);
    let txs = [
        Transaction {
            from: None,
            to: &mixed,
            body: b"one",
        },
        Transaction {
            from: None,
            to: &refused,
            body: b"two",
        },
        Transaction {
            from: None,
            to: &ok,
            body: b"three",
        },
    ];
    let results = session.send(&txs).await;
    assert_eq!(
        dispositions(&results[0]),
        [Kind::Accepted, Kind::Permanent, Kind::Transient]
    );
    assert_eq!(dispositions(&results[1]), [Kind::Permanent]);
    assert_eq!(enhanced(&results[1][0]).as_deref(), Some("5.1.1"));
    assert_eq!(dispositions(&results[2]), [Kind::Accepted]);
    assert_eq!(
        groups(&log),
        [
            "EHLO",
            "MAIL RCPT RCPT RCPT DATA",
            "<data> MAIL RCPT DATA",
            "RSET MAIL RCPT DATA",
            "<data>"
        ]
    );
    assert_eq!(
        log.lock().unwrap().messages.len(),
        2,
        "no content for the refused message"
    );
}

#[tokio::test]
async fn an_unexpected_354_gets_a_lone_dot_then_rset() {
    let script = Script {
        caps: PIPE.to_vec(),
        data_anyway: true,
        ..Script::default()
    };
    let (session, log) = start(script, config()).await;
    let mut session = session.unwrap();
    let (refused, ok) = (addrs(&["reject@x.test"]), addrs(&["a@x.test"]));
    let txs = [
        Transaction {
            from: None,
            to: &refused,
            body: b"secret content",
        },
        Transaction {
            from: None,
            to: &ok,
            body: b"fine",
        },
    ];
    let results = session.send(&txs).await;
    assert_eq!(dispositions(&results[0]), [Kind::Permanent]);
    assert_eq!(dispositions(&results[1]), [Kind::Accepted]);
    assert_eq!(
        groups(&log),
        [
            "EHLO",
            "MAIL RCPT DATA",
            "<data>",
            "RSET MAIL RCPT DATA",
            "<data>"
        ]
    );
    assert_eq!(
        log.lock().unwrap().messages[0],
        b"",
        "the refused content was not sent"
    );
}

#[tokio::test]
async fn bdat_transactions_go_out_together() {
    let caps = vec!["PIPELINING", "CHUNKING", "8BITMIME", "SIZE"];
    let (session, log) = start(
        Script {
            caps,
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let (to1, to2, to3) = (
        addrs(&["a@x.test"]),
        addrs(&["reject@x.test"]),
        addrs(&["b@x.test"]),
    );
    let txs = [
        Transaction {
            from: None,
            to: &to1,
            body: b"first\n.line",
        },
        Transaction {
            from: None,
            to: &to2,
            body: b"second",
        },
        Transaction {
            from: None,
            to: &to3,
            body: "caf\u{e9}".as_bytes(),
        },
    ];
    let results = session.send(&txs).await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted]);
    assert_eq!(dispositions(&results[1]), [Kind::Permanent]);
    assert_eq!(dispositions(&results[2]), [Kind::Accepted]);
    assert_eq!(
        groups(&log),
        [
            "EHLO",
            "MAIL RCPT BDAT <bdat> RSET MAIL RCPT BDAT <bdat> RSET MAIL RCPT BDAT <bdat>"
        ]
    );
    let log = log.lock().unwrap();
    assert_eq!(
        log.messages[0], b"first\r\n.line\r\n",
        "BDAT content is not dot-stuffed"
    );
    assert_eq!(log.mail_lines[2], "MAIL FROM:<> SIZE=7 BODY=8BITMIME");
}

#[tokio::test]
async fn a_server_that_stops_reading_mid_batch_keeps_what_it_accepted() {
    let caps = vec!["PIPELINING", "CHUNKING", "8BITMIME", "SIZE"];
    let mut config = config();
    config.timeouts.data_block = Duration::from_millis(300);
    let (session, log) = start(
        Script {
            caps,
            stall_after: Some(1),
            ..Script::default()
        },
        config,
    )
    .await;
    let mut session = session.unwrap();
    let (to1, to2) = (addrs(&["a@x.test"]), addrs(&["b@x.test"]));
    // Larger than the pipe: its write stalls once the server stops reading.
    let big = vec![b'x'; 3 << 20];
    let txs = [
        Transaction {
            from: None,
            to: &to1,
            body: b"first",
        },
        Transaction {
            from: None,
            to: &to2,
            body: &big,
        },
    ];
    let results = session.send(&txs).await;
    // The first was answered 250 before the write failed: it is delivered, and must
    // not be sent again; the second is a transient failure, tried again later.
    assert_eq!(dispositions(&results[0]), [Kind::Accepted]);
    assert_eq!(dispositions(&results[1]), [Kind::Connection]);
    assert_eq!(log.lock().unwrap().messages.len(), 1);
}

#[tokio::test]
async fn a_large_message_over_a_slow_link_goes_as_long_as_it_moves() {
    let caps = vec!["PIPELINING", "CHUNKING", "8BITMIME", "SIZE"];
    let mut config = config();
    // Each write must progress within a second; the whole message takes longer.
    config.timeouts.data_block = Duration::from_secs(1);
    let (session, log) = start(
        Script {
            caps,
            read_pause: Some(Duration::from_millis(50)),
            ..Script::default()
        },
        config,
    )
    .await;
    let mut session = session.unwrap();
    let to = addrs(&["a@x.test"]);
    let big = vec![b'x'; 3 << 20];
    let txs = [Transaction {
        from: None,
        to: &to,
        body: &big,
    }];
    let results = session.send(&txs).await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted]);
    assert_eq!(log.lock().unwrap().messages[0].len(), (3 << 20) + 2);
}

#[tokio::test]
async fn prefer_data_over_bdat_when_configured() {
    let caps = vec!["PIPELINING", "CHUNKING"];
    let mut config = config();
    config.prefer_chunking = false;
    let (session, log) = start(
        Script {
            caps,
            ..Script::default()
        },
        config,
    )
    .await;
    let mut session = session.unwrap();
    let to = addrs(&["a@x.test"]);
    let results = session
        .send(&[Transaction {
            from: None,
            to: &to,
            body: b"x",
        }])
        .await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted]);
    assert_eq!(groups(&log), ["EHLO", "MAIL RCPT DATA", "<data>"]);
}

#[tokio::test]
async fn a_dropped_connection_gives_every_recipient_one_result() {
    let (session, _log) = start(
        Script {
            caps: PIPE.to_vec(),
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let (to1, to2) = (
        addrs(&["a@x.test", "close@x.test", "b@x.test"]),
        addrs(&["c@x.test"]),
    );
    let txs = [
        Transaction {
            from: None,
            to: &to1,
            body: b"one",
        },
        Transaction {
            from: None,
            to: &to2,
            body: b"two",
        },
    ];
    let results = session.send(&txs).await;
    assert_eq!(results[0].len(), 3);
    assert_eq!(results[1].len(), 1);
    for result in results.iter().flatten() {
        assert_eq!(kind(result), Kind::Connection, "{result:?}");
    }
    assert!(!session.is_usable());
    let again = session
        .send(&[Transaction {
            from: None,
            to: &to2,
            body: b"x",
        }])
        .await;
    assert!(matches!(again[0][0], Err(SmtpError::Unusable)));
}

#[tokio::test]
async fn falls_back_to_helo() {
    let script = Script {
        caps: PIPE.to_vec(),
        refuse_ehlo: true,
        ..Script::default()
    };
    let (session, log) = start(script, config()).await;
    let mut session = session.unwrap();
    assert_eq!(session.capabilities(), &Capabilities::default());
    let to = addrs(&["a@x.test"]);
    let results = session
        .send(&[Transaction {
            from: None,
            to: &to,
            body: b"x",
        }])
        .await;
    assert_eq!(dispositions(&results[0]), [Kind::Accepted]);
    assert_eq!(
        groups(&log),
        ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "<data>"]
    );
}

#[tokio::test]
async fn local_refusals_send_nothing() {
    let (session, log) = start(
        Script {
            caps: vec!["PIPELINING", "SIZE 10"],
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    let ascii = addrs(&["a@x.test"]);
    let utf8 = addrs(&["jos\u{e9}@x.test"]);
    let txs = [
        Transaction {
            from: None,
            to: &ascii,
            body: b"this body is longer than ten octets",
        },
        Transaction {
            from: None,
            to: &ascii,
            body: "8bit \u{e9}".as_bytes(),
        },
        Transaction {
            from: None,
            to: &utf8,
            body: b"short",
        },
    ];
    let results = session.send(&txs).await;
    let codes: Vec<_> = results.iter().map(|r| enhanced(&r[0]).unwrap()).collect();
    assert_eq!(codes, ["5.3.4", "5.6.3", "5.6.7"]);
    assert!(results.iter().all(|r| kind(&r[0]) == Kind::Permanent));
    assert_eq!(groups(&log), ["EHLO"]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out_naming_the_phase() {
    let script = Script {
        caps: PIPE.to_vec(),
        mute: Some("DATA"),
        ..Script::default()
    };
    let (session, _log) = start(script, config()).await;
    let mut session = session.unwrap();
    let to = addrs(&["a@x.test"]);
    let results = session
        .send(&[Transaction {
            from: None,
            to: &to,
            body: b"x",
        }])
        .await;
    match &results[0][0] {
        Err(SmtpError::Timeout { phase }) => assert_eq!(*phase, Phase::Data),
        other => panic!("expected a DATA timeout, got {other:?}"),
    }
    assert!(!session.is_usable());
}

#[tokio::test]
async fn vrfy_expn_noop_rset() {
    let (session, _log) = start(
        Script {
            caps: PIPE.to_vec(),
            ..Script::default()
        },
        config(),
    )
    .await;
    let mut session = session.unwrap();
    assert_eq!(
        session.vrfy("postmaster").await.unwrap().0,
        Verification::CannotVerify
    );
    assert_eq!(
        session.expn("staff").await.unwrap().0,
        Verification::NotImplemented
    );
    assert!(session.vrfy("a\r\nDATA").await.is_err());
    assert!(session.noop().await.unwrap().is_positive());
    assert!(session.rset().await.unwrap().is_positive());
    assert!(session.is_usable());
}

#[tokio::test]
async fn refuses_auth_without_tls_unless_allowed() {
    let mut config = config();
    config.credentials = Some(Credentials::new("user", "secret"));
    let script = Script {
        caps: vec!["AUTH PLAIN"],
        ..Script::default()
    };
    let (session, log) = start(script, config).await;
    assert!(matches!(session, Err(SmtpError::Auth(_))));
    assert_eq!(groups(&log), ["EHLO"], "no credentials went out");
}

#[tokio::test]
async fn required_tls_without_starttls_fails() {
    let mut config = config();
    config.tls = TlsPolicy::Required;
    let (session, _log) = start(
        Script {
            caps: PIPE.to_vec(),
            ..Script::default()
        },
        config,
    )
    .await;
    let err = session.unwrap_err();
    assert!(matches!(err, SmtpError::Tls(_)), "{err:?}");
}
