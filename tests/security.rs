//! The security of volley's surfaces, tried as an attacker would against a running
//! `volley serve`: cross-site and rebound requests, forged unsubscribe links, a relay
//! that is not the relay, recipients shown to each other, numbers out of range, a queue
//! past its limit, slow or many clients, hostile JSON, and outbound resources.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Running, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use volley::app::App;
use volley::message::UnsubscribeTokens;
use volley_loadtest::{DnsRecords, DnsServer, Sink, SinkConfig};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A volley relaying in clear text to a fresh capturing sink, with `extra` TOML.
async fn setup(extra: &str) -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig {
        capture: true,
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"none\"\n[retry]\nschedule = [\"300ms\"]\n{extra}",
        sink.addrs()[0]
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    (sink, volley, dir)
}

/// Sends `head` (without the final blank line) and `body` as one HTTP/1.1 request and
/// returns the status and the body.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn message(to: &str) -> Value {
    json!({"from": "shop@example.com", "to": [to], "subject": "Receipt", "text": "Thanks."})
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_web_page_can_neither_send_nor_read_through_volley() {
    let (sink, volley, _dir) = setup(
        "[server]\nallowed_hosts = [\"volley.internal\"]\nallowed_origins = [\"https://admin.example.com\"]\n",
    )
    .await;
    let addr = volley.addr;
    let body = message("victim@example.org").to_string();
    let post =
        |host: &str, extra: &str| format!("POST /v1/messages HTTP/1.1\r\nhost: {host}{extra}");
    let own = addr.to_string();
    // A form post from another site: no preflight, text/plain, a foreign Origin.
    let cross_site = post(
        &own,
        "\r\ncontent-type: text/plain\r\norigin: http://evil.example",
    );
    let (status, answer) = raw(addr, &cross_site, body.as_bytes()).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (403, "forbidden_origin")
    );
    // The same without an Origin (an old browser, or a navigation).
    let plain = post(&own, "\r\ncontent-type: text/plain");
    let (status, answer) = raw(addr, &plain, body.as_bytes()).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (415, "unsupported_media_type")
    );
    let form = post(&own, "\r\ncontent-type: application/x-www-form-urlencoded");
    assert_eq!(raw(addr, &form, body.as_bytes()).await.0, 415);
    // DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is same-origin.
    let rebound = post(
        "evil.example:8025",
        "\r\ncontent-type: application/json\r\norigin: http://evil.example:8025",
    );
    let (status, answer) = raw(addr, &rebound, body.as_bytes()).await;
    assert_eq!((status, error_code(&answer).as_str()), (421, "misdirected"));
    for path in [
        "/v1/events",
        "/v1/jobs/x",
        "/v1/suppressions",
        "/metrics",
        "/",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nhost: evil.example");
        assert_eq!(raw(addr, &head, b"").await.0, 421, "{path}");
    }
    // Health checks and unsubscribe links are for anyone.
    let health = "GET /healthz HTTP/1.1\r\nhost: lb.example";
    assert_eq!(raw(addr, health, b"").await.0, 200);
    assert_eq!(sink.stats().messages, 0, "nothing was sent");

    // What is allowed: the API's own origin, listed hosts and origins, and no Origin.
    let json = "\r\ncontent-type: application/json; charset=utf-8";
    for (host, origin) in [
        (own.clone(), format!("\r\norigin: http://{own}")),
        (format!("volley.internal:{}", addr.port()), String::new()),
        (
            "localhost".to_owned(),
            "\r\norigin: https://admin.example.com".to_owned(),
        ),
    ] {
        let head = post(&host, &format!("{json}{origin}"));
        let (status, answer) = raw(addr, &head, body.as_bytes()).await;
        assert_eq!(status, 202, "{host}{origin}: {answer}");
    }
    wait_for(|| sink.stats().messages == 3, "three messages").await;
    volley.stop().await;
}

#[tokio::test]
async fn unsubscribe_links_cannot_be_forged() {
    // A mailto target alone still needs a secret: volley refuses to start without one.
    let dir = tempfile::tempdir().unwrap();
    let mailto = "[unsubscribe]\nmailto = \"mailto:leave@example.com?subject={token}\"\n";
    let refused = App::open(test_config(dir.path(), mailto)).await;
    let error = refused.expect_err("no secret, no start").to_string();
    assert!(error.contains("unsubscribe.secret"), "{error}");
    let short = format!("{mailto}secret = \"short\"\n");
    let error = App::open(test_config(dir.path(), &short))
        .await
        .expect_err("a short secret, no start")
        .to_string();
    assert!(error.contains("unsubscribe.secret"), "{error}");

    let old = "an-old-secret-of-more-than-32-bytes!!";
    let (_sink, volley, _dir) = setup(&format!(
        "{mailto}secret = \"{SECRET}\"\nprevious_secrets = [\"{old}\"]\n"
    ))
    .await;
    let now = SystemTime::now();
    let forged = UnsubscribeTokens::new("", &[]).token("job1", "news", "ann@example.org", now);
    let guessed = UnsubscribeTokens::new("0", &[]).token("job1", "news", "ann@example.org", now);
    for token in [forged, guessed, "a.b.c".to_owned(), String::new()] {
        let path = format!("/v1/unsubscribe/{token}");
        let head = format!("POST {path} HTTP/1.1\r\nhost: x");
        let (status, _) = raw(volley.addr, &head, b"List-Unsubscribe=One-Click").await;
        assert!(status == 404 || status == 405, "{token:?}: {status}");
    }
    let list = volley.get("/v1/suppressions", &[]).await.json();
    assert_eq!(
        list["suppressions"],
        json!([]),
        "nobody unsubscribed: {list}"
    );
    // Genuine tokens, including one made before the secret was rotated, work.
    let current = UnsubscribeTokens::new(SECRET, &[]).token("job1", "news", "ann@example.org", now);
    let rotated = UnsubscribeTokens::new(old, &[]).token("job2", "news", "bob@example.org", now);
    for token in [current, rotated] {
        let head = format!("POST /v1/unsubscribe/{token} HTTP/1.1\r\nhost: x");
        let (status, body) = raw(volley.addr, &head, b"List-Unsubscribe=One-Click").await;
        assert_eq!(status, 200, "{body}");
    }
    for who in ["ann@example.org", "bob@example.org"] {
        let entry = volley.get(&format!("/v1/suppressions/{who}"), &[]).await;
        assert_eq!(entry.status, 200, "{who}: {}", entry.text());
        assert_eq!(
            entry.json()["suppressions"][0]["scope"],
            "list:news",
            "{who}"
        );
    }
    volley.stop().await;
}

#[tokio::test]
async fn relay_credentials_go_only_to_a_verified_relay() {
    // A relay whose certificate volley has no reason to trust (its CA is not given).
    let sink = Sink::start(SinkConfig {
        starttls: true,
        auth: Some(("volley".into(), "s3cret".into())),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"starttls\"\nusername = \"volley\"\npassword = \"s3cret\"\n[retry]\nschedule = [\"1h\"]\n",
        sink.addrs()[0]
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let response = volley
        .post("/v1/messages", &message("a@example.org"), &[])
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley
        .wait_job(&id, &[], |j| j["counts"]["deferred"] == 1)
        .await;
    assert_eq!(job["counts"]["deferred"], 1, "{job}");
    let stats = sink.stats();
    assert_eq!(
        (stats.messages, stats.auth_successes, stats.auth_failures),
        (0, 0, 0),
        "neither mail nor credentials went to an unverified relay: {stats:?}"
    );
    let events = volley.get("/v1/events", &[]).await.text();
    assert!(events.to_lowercase().contains("certificate"), "{events}");
    volley.stop().await;
}

#[tokio::test]
async fn bcc_recipients_appear_in_no_copy() {
    let (sink, volley, _dir) = setup("").await;
    let hidden = ["hidden1@example.net", "hidden2@example.net"];
    let shown = json!({
        "from": "shop@example.com", "to": ["to@example.org"], "cc": ["cc@example.org"],
        "bcc": hidden, "subject": "Minutes", "text": "Attached."
    });
    let only_hidden = json!({
        "from": "shop@example.com", "bcc": ["x@example.net", "y@example.net", "z@example.net"],
        "subject": "Newsletter", "text": "Hello."
    });
    for body in [&shown, &only_hidden] {
        let response = volley.post("/v1/messages", body, &[]).await;
        assert_eq!(response.status, 202, "{}", response.text());
    }
    wait_for(|| sink.stats().messages == 7, "seven copies").await;
    for copy in sink.messages() {
        let text = String::from_utf8_lossy(&copy.data).to_lowercase();
        let head = text.split("\r\n\r\n").next().unwrap();
        let bcc: Vec<&str> = [
            "hidden1@",
            "hidden2@",
            "x@example",
            "y@example",
            "z@example",
        ]
        .into_iter()
        .filter(|a| text.contains(a))
        .collect();
        assert!(bcc.is_empty(), "{:?} shows {bcc:?}:\n{head}", copy.rcpt_to);
        assert!(!head.contains("\r\nbcc:"), "{head}");
        if copy.rcpt_to[0].contains("example.net") && head.contains("newsletter") {
            assert!(head.contains("\r\nto: undisclosed-recipients:;"), "{head}");
        }
    }
    volley.stop().await;
}

#[tokio::test]
async fn numbers_out_of_range_are_refused_by_name() {
    let (sink, volley, _dir) = setup("").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let year = 366 * 86_400;
    for send_at in [
        json!(18_446_744_073_709_551_615u64),
        json!(18_446_744_073_709_552u64),
        json!(-1),
        json!(1e300),
        json!(now + 2 * year),
        json!(now - 3 * 86_400),
        json!("tomorrow"),
    ] {
        let mut body = message("a@example.org");
        body["send_at"] = send_at.clone();
        let response = volley.post("/v1/messages", &body, &[]).await;
        assert_eq!(response.status, 422, "{send_at}: {}", response.text());
        assert_eq!(response.json()["error"]["field"], "send_at", "{send_at}");
    }
    for query in [
        "limit=18446744073709551616",
        "limit=-1",
        "after=99999999999999999999",
    ] {
        let response = volley.get(&format!("/v1/events?{query}"), &[]).await;
        assert!(
            (400..500).contains(&response.status),
            "{query}: {} {}",
            response.status,
            response.text()
        );
    }
    assert_eq!(sink.stats().messages, 0);
    volley.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let (_sink, volley, _dir) = setup("[server]\nmax_queue_depth = 2\n").await;
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut body = message("a@example.org");
    body["send_at"] = json!(later);
    for _ in 0..2 {
        assert_eq!(volley.post("/v1/messages", &body, &[]).await.status, 202);
    }
    let full = volley.post("/v1/messages", &body, &[]).await;
    assert_eq!(full.status, 429, "{}", full.text());
    assert_eq!(full.json()["error"]["code"], "queue_full");
    let wait: u64 = full.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 0);
    volley.stop().await;
}

/// A small deterministic generator, so that a failing case can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

#[tokio::test]
async fn hostile_json_gets_a_4xx_and_the_server_lives() {
    let (_sink, volley, _dir) = setup("[server]\nmax_body = \"4MiB\"\n").await;
    let many: Vec<u64> = (0..10_000).collect();
    let many_recipients: Vec<Value> = (0..10_000).map(|i| json!({"to": i})).collect();
    let mut cases: Vec<Vec<u8>> = vec![
        "[".repeat(100_000).into_bytes(),
        "{\"a\":".repeat(50_000).into_bytes(),
        br#"{"from": "a@example.com", "to": ["b@example.org"], "subject": 1e99999, "text": "x"}"#
            .to_vec(),
        format!(
            r#"{{"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "x", "send_at": {}}}"#,
            "9".repeat(5000)
        )
        .into_bytes(),
        b"{\"from\": \"a@example.com\", \"to\": [\"b\xff\xfe@example.org\"], \"text\": \"x\"}".to_vec(),
        b"{\"from\": \"\xc0\xaf@example.com\"}".to_vec(),
        json!({"from": "a@example.com", "to": many, "subject": "s", "text": "x"})
            .to_string()
            .into_bytes(),
        json!({"template": "welcome", "from": "a@example.com", "recipients": many_recipients})
            .to_string()
            .into_bytes(),
        b"\0\0\0\0".to_vec(),
        b"{\"from\": \"a@example.com\", \"to\": [\"b@example.org\"], \"text\": \"\\ud800\"}"
            .to_vec(),
    ];
    // Mutations of a valid body: flipped, dropped and inserted bytes.
    let valid = message("m@example.org").to_string().into_bytes();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for _ in 0..150 {
        let mut body = valid.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(body.len());
            match rng.below(3) {
                0 => body[at] = u8::try_from(rng.next() & 0xff).unwrap(),
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, b"{[\"\\:,}]\xff0"[rng.below(10)]),
            }
        }
        cases.push(body);
    }
    for (i, body) in cases.iter().enumerate() {
        for path in ["/v1/messages", "/v1/campaigns"] {
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json",
                volley.addr
            );
            let (status, answer) = raw(volley.addr, &head, body).await;
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            assert!(
                status == 202 || (400..500).contains(&status),
                "case {i} on {path}: {status} {answer} for {shown:?}"
            );
            if status != 202 {
                assert!(!error_code(&answer).is_empty(), "case {i}: {answer}");
            }
        }
    }
    assert_eq!(volley.get("/healthz", &[]).await.status, 200, "still alive");
    volley.stop().await;
}

#[tokio::test]
async fn slow_and_numerous_clients_are_bounded() {
    let (_sink, volley, _dir) =
        setup("[server]\nheader_timeout = \"1s\"\nrequest_timeout = \"1s\"\nmax_connections = 2\n")
            .await;
    let addr = volley.addr;
    // Headers that never end: the connection is closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a client that never finishes its headers is cut off"
    );
    // A body that never arrives: 408.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"from\""
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a body that never arrives is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        error_code(answer.split_once("\r\n\r\n").unwrap().1),
        "request_timeout"
    );
    // Two idle connections fill the server: a third waits until one is closed.
    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third =
        tokio::spawn(async move { raw(addr, "GET /healthz HTTP/1.1\r\nhost: x", b"").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    drop(idle);
    let (status, _) = tokio::time::timeout(Duration::from_secs(15), third)
        .await
        .expect("served once a connection is free")
        .unwrap();
    assert_eq!(status, 200);
    volley.stop().await;
}

#[tokio::test]
async fn outbound_connections_are_capped_across_sites() {
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        reply_delay: Duration::from_millis(20),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut records = DnsRecords::new();
    for i in 0..10 {
        records = records
            .mx(&format!("d{i}.test"), 10, &format!("mx.d{i}.test"))
            .a(&format!("mx.d{i}.test"), Ipv4Addr::LOCALHOST);
    }
    let dns = DnsServer::start(records).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "port = {}\nmax_connections = 2\nbatch_size = 2\n[dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n",
        sink.addrs()[0].port(),
        dns.addr()
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let recipients: Vec<Value> = (0..60)
        .map(|i| json!({"to": format!("u{i}@d{}.test", i % 10), "vars": {"name": "U"}}))
        .collect();
    let body = json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
    let response = volley.post("/v1/campaigns", &body, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 60, "{job}");
    let stats = sink.stats();
    assert!(stats.connections >= 2, "{stats:?}");
    assert!(
        stats.peak_connections <= 2,
        "at most two connections over ten sites: {stats:?}"
    );
    volley.stop().await;
}

/// A name server that answers every query with SERVFAIL after `delay`, counting how many
/// queries it holds at once.
async fn slow_servfail(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (p, s) = (Arc::clone(&peak), Arc::clone(&socket));
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // a response
            reply[3] = (reply[3] & 0xf0) | 2; // SERVFAIL
            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let (held, s) = (Arc::clone(&held), Arc::clone(&s));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                held.fetch_sub(1, Ordering::SeqCst);
                let _ = s.send_to(&reply, from).await;
            });
        }
    });
    (addr, peak)
}

#[tokio::test]
async fn dns_lookups_in_flight_are_capped() {
    let (dns, peak) = slow_servfail(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[dns]\nnameservers = [\"{dns}\"]\nmax_lookups = 2\n[retry]\nschedule = [\"1h\"]\n"
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let recipients: Vec<Value> = (0..12)
        .map(|i| json!({"to": format!("u@d{i}.test"), "vars": {"name": "U"}}))
        .collect();
    let body = json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
    let response = volley.post("/v1/campaigns", &body, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley
        .wait_job(&id, &[], |j| j["counts"]["deferred"] == 12)
        .await;
    assert_eq!(job["counts"]["deferred"], 12, "{job}");
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "{peak} lookups at once");
    volley.stop().await;
}
