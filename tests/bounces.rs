//! Bounce and complaint intake end to end: messages go out with signed VERP return paths
//! (as the sink sees them), then DSNs and an ARF complaint come back to the bounce
//! listener over SMTP, and the recipients end as the reports say — and a forged report
//! changes nothing.

mod common;

use std::time::Duration;

use common::{Running, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_loadtest::{Sink, SinkConfig};

async fn setup() -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig {
        capture: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"none\"\n[message]\nreturn_path = {{ address = \"bounces@bounce.volley.test\", verp = true }}\n[bounces]\nlisten = \"127.0.0.1:0\"\ndomains = [\"bounce.volley.test\"]\nsecret = \"a bounce secret of at least 32 bytes!\"\n",
        sink.addrs()[0]
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    (sink, volley, dir)
}

/// Sends one message over SMTP to the bounce listener; returns the final reply to the
/// content, or the refusal of the recipient.
async fn report(volley: &Running, rcpt: &str, content: &str) -> String {
    let mut s = TcpStream::connect(volley.bounces.unwrap()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read = async |s: &mut TcpStream| {
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(read(&mut s).await.starts_with("220"));
    s.write_all(b"EHLO mx.receiver.example\r\n").await.unwrap();
    assert!(read(&mut s).await.contains("250 "));
    s.write_all(format!("MAIL FROM:<>\r\nRCPT TO:<{rcpt}>\r\n").as_bytes())
        .await
        .unwrap();
    let mut replies = String::new();
    while replies.lines().count() < 2 {
        replies.push_str(&read(&mut s).await);
    }
    let rcpt_reply = replies.lines().nth(1).unwrap().to_owned();
    if !rcpt_reply.starts_with("250") {
        return rcpt_reply;
    }
    s.write_all(b"DATA\r\n").await.unwrap();
    assert!(read(&mut s).await.starts_with("354"));
    s.write_all(content.as_bytes()).await.unwrap();
    s.write_all(b".\r\nQUIT\r\n").await.unwrap();
    read(&mut s).await.lines().next().unwrap().to_owned()
}

fn dsn(to: &str, recipient: &str, action: &str, status: &str, diagnostic: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.receiver.example\r\nTo: {to}\r\nSubject: Delivery Status Notification\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\nAbout your message.\r\n--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.receiver.example\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n--R--\r\n"
    )
}

fn arf(original_return_path: &str) -> String {
    feedback_report("abuse", original_return_path)
}

fn feedback_report(feedback_type: &str, original_return_path: &str) -> String {
    format!(
        "From: fbl@provider.example\r\nTo: fbl@bounce.volley.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nA feedback report.\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: {feedback_type}\r\nVersion: 1\r\n\r\n--F\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{original_return_path}>\r\nFrom: shop@example.com\r\nSubject: News\r\n\r\nHello\r\n--F--\r\n"
    )
}

async fn events(volley: &Running) -> Vec<Value> {
    let events = volley.get("/v1/events?limit=1000", &[]).await.json();
    events["events"].as_array().unwrap().clone()
}

async fn suppressed(volley: &Running, address: &str) -> Option<String> {
    let entry = volley
        .get(&format!("/v1/suppressions/{address}"), &[])
        .await;
    (entry.status == 200).then(|| entry.json()["suppressions"][0]["reason"].to_string())
}

#[tokio::test]
async fn reports_come_back_to_their_delivery_and_forgeries_change_nothing() {
    let (sink, volley, _dir) = setup().await;
    let people = ["ann@example.org", "bob@example.org", "cat@example.org"];
    let body = json!({"from": "shop@example.com", "to": people, "subject": "Hi", "text": "Hello."});
    let id = volley.post("/v1/messages", &body, &[]).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 3, "{job}");
    let mut return_paths = std::collections::HashMap::new();
    for copy in sink.messages() {
        assert!(
            copy.mail_from
                .starts_with(&format!("bounces+{}.", id.to_lowercase())),
            "a signed VERP return path: {}",
            copy.mail_from
        );
        return_paths.insert(copy.rcpt_to[0].clone(), copy.mail_from.clone());
    }
    let path = |who: &str| return_paths[who].clone();

    // Ann's mailbox is gone: a failed DSN, 5.1.1.
    let failed = dsn(
        &path("ann@example.org"),
        "ann@example.org",
        "failed",
        "5.1.1",
        "550 5.1.1 user unknown",
    );
    let answer = report(&volley, &path("ann@example.org"), &failed).await;
    assert!(answer.starts_with("250 2.0.0"), "{answer}");
    // Bob's is slow: a delay never suppresses.
    let delayed = dsn(
        &path("bob@example.org"),
        "bob@example.org",
        "delayed",
        "4.4.7",
        "451 4.4.7 later",
    );
    report(&volley, &path("bob@example.org"), &delayed).await;
    // A forged bounce for Cat (a made-up signature) and one to a foreign domain.
    let forged_to = format!(
        "bounces+{}.2.0123456789ab@bounce.volley.test",
        id.to_lowercase()
    );
    let forged = dsn(
        &forged_to,
        "cat@example.org",
        "failed",
        "5.1.1",
        "550 5.1.1 user unknown",
    );
    let answer = report(&volley, &forged_to, &forged).await;
    assert!(answer.starts_with("250"), "accepted and ignored: {answer}");
    let relay = report(&volley, "someone@elsewhere.example", &forged).await;
    assert!(relay.starts_with("550 5.7.1"), "{relay}");

    let late: Vec<(String, String)> = events(&volley)
        .await
        .into_iter()
        .filter(|e| e["async"] == true)
        .map(|e| {
            (
                e["to"].as_str().unwrap().to_owned(),
                e["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        late,
        [
            ("ann@example.org".to_owned(), "bounced".to_owned()),
            ("bob@example.org".to_owned(), "deferred".to_owned()),
        ]
    );
    assert!(
        suppressed(&volley, "ann@example.org")
            .await
            .is_some_and(|r| r.contains("5.1.1"))
    );
    assert_eq!(suppressed(&volley, "bob@example.org").await, None);
    assert_eq!(
        suppressed(&volley, "cat@example.org").await,
        None,
        "a forgery suppresses no one"
    );
    let metrics = volley.get("/metrics", &[]).await.text();
    assert!(metrics.contains("volley_late_reports_total 2"), "{metrics}");
    assert!(
        metrics.contains("volley_late_reports_ignored_total 1"),
        "{metrics}"
    );

    // Cat's provider reports her "not spam" click and a DKIM failure: neither is a
    // complaint, and neither stops her mail.
    for kind in ["not-spam", "auth-failure", "virus"] {
        let report_ = feedback_report(kind, &path("cat@example.org"));
        let answer = report(&volley, "fbl@bounce.volley.test", &report_).await;
        assert!(answer.starts_with("250"), "{kind}: {answer}");
    }
    assert_eq!(suppressed(&volley, "cat@example.org").await, None);
    assert!(
        !events(&volley)
            .await
            .iter()
            .any(|e| e["event"] == "complained"),
        "only abuse and fraud reports are complaints"
    );

    // Bob complains through a feedback loop: the report quotes the original's Return-Path.
    let answer = report(
        &volley,
        "fbl@bounce.volley.test",
        &arf(&path("bob@example.org")),
    )
    .await;
    assert!(answer.starts_with("250"), "{answer}");
    let complaint = events(&volley)
        .await
        .into_iter()
        .find(|e| e["event"] == "complained")
        .expect("a complained event");
    assert_eq!(complaint["to"], "bob@example.org");
    assert_eq!(complaint["async"], true);
    assert!(
        suppressed(&volley, "bob@example.org")
            .await
            .is_some_and(|r| r.contains("complaint"))
    );
    // The dashboard counts what came back: one failed DSN (the delay is not a bounce),
    // one complaint; ignored: one forgery and the three reports that are no complaint.
    let stats = volley.get("/v1/dashboard/stats", &[]).await.json();
    assert_eq!(
        (
            stats["late"]["bounced"].as_u64(),
            stats["late"]["ignored"].as_u64(),
            stats["totals"]["complained"].as_u64()
        ),
        (Some(1), Some(4), Some(1)),
        "{stats}"
    );

    // The next message goes to Cat only.
    let again = volley.post("/v1/messages", &body, &[]).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = volley.wait_job(&again, &[], |j| j["state"] == "done").await;
    assert_eq!(
        (
            job["counts"]["delivered"].as_u64(),
            job["counts"]["suppressed"].as_u64()
        ),
        (Some(1), Some(2)),
        "{job}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    volley.stop().await;
}
