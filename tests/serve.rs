//! `volley serve` end to end: HTTP submission, the embedded queue in a temporary
//! directory, delivery to the load-test sink (through the relay, or direct to MX with
//! a DNS server on loopback), job status, events, metrics, errors, idempotency and
//! one-click unsubscribe.

mod common;

use std::net::Ipv4Addr;

use common::{Running, test_config};
use serde_json::json;
use volley_loadtest::{DnsRecords, DnsServer, Sink, SinkConfig};

const KEY: &str = "test-key-0123456789abcdef";

fn auth() -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {KEY}"))]
}

async fn relay_setup(extra: &str) -> (Sink, Running, tempfile::TempDir) {
    relay_setup_with(extra, "").await
}

async fn relay_setup_with(extra: &str, server: &str) -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig {
        capture: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\napi_keys = [{KEY:?}]\n{server}\n[relay]\nhost = \"{}\"\ntls = \"starttls\"\n[retry]\nschedule = [\"200ms\"]\nmax_age = \"1m\"\n{extra}",
        sink.addrs()[0]
    );
    let mut config = test_config(dir.path(), &toml);
    config.smtp.ca_file = Some(common::sink_ca_file(dir.path(), &sink));
    let running = Running::start(config).await;
    (sink, running, dir)
}

fn headers<'a>(h: &'a [(&'static str, String); 1]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[tokio::test]
async fn a_message_is_delivered_and_its_job_shows_it() {
    let (sink, volley, _dir) = relay_setup("").await;
    let h = auth();
    let h = headers(&h);
    let body = json!({
        "from": "Ann <ann@example.com>",
        "to": ["bob@example.org", "Carol <carol@example.org>"],
        "bcc": ["hidden@example.org"],
        "subject": "Café ☕",
        "text": "Hello\n.\nBye",
        "headers": {"X-Campaign": "spring"}
    });
    let response = volley.post("/v1/messages", &body, &h).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(response.json()["recipients"], 3);
    let job = volley.wait_job(&id, &h, |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 3, "{job}");
    assert_eq!(job["recipients"][0]["state"], "delivered");
    assert!(
        job["recipients"][0]["last_reply"]
            .as_str()
            .unwrap()
            .starts_with("250")
    );

    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    let text = String::from_utf8_lossy(&messages[0].data).into_owned();
    assert!(text.contains("X-Campaign: spring"), "{text}");
    assert!(
        text.contains("To: bob@example.org") || text.contains("<bob@example.org>"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("hidden@example.org"),
        "Bcc never appears in the message"
    );
    assert!(
        messages.iter().all(|m| m.tls),
        "the relay was reached over STARTTLS"
    );

    let events = volley.get("/v1/events?after=0", &h).await.json();
    let delivered = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "delivered")
        .count();
    assert_eq!(delivered, 3);
    let metrics = volley.get("/metrics", &h).await.text();
    assert!(
        metrics.contains("volley_deliveries_total{outcome=\"delivered\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("volley_queue_depth{state=\"ready\"} 0"));
    volley.stop().await;
}

#[tokio::test]
async fn bad_requests_get_exact_status_codes() {
    let (_sink, volley, _dir) = relay_setup_with("", "max_body = \"64KiB\"").await;
    let h = auth();
    let h = headers(&h);
    let good =
        json!({"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"});
    let with = |patch: serde_json::Value| {
        let mut v = good.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    // (path, body, expected status, expected error field)
    let cases: Vec<(&str, serde_json::Value, u16, Option<&str>)> = vec![
        (
            "/v1/messages",
            with(json!({"to": ["not an address"]})),
            422,
            Some("to[0]"),
        ),
        (
            "/v1/messages",
            with(json!({"from": "a@b@c"})),
            422,
            Some("from"),
        ),
        (
            "/v1/messages",
            with(json!({"to": ["x@example.org\r\nRCPT TO:<evil@x>"]})),
            422,
            Some("to[0]"),
        ),
        (
            "/v1/messages",
            with(json!({"subject": "Hi\r\nBcc: victim@example.org"})),
            422,
            Some("subject"),
        ),
        (
            "/v1/messages",
            with(json!({"headers": {"Bcc": "victim@example.org"}})),
            422,
            Some("headers"),
        ),
        (
            "/v1/messages",
            with(json!({"headers": {"X-Ok": "a\r\nBcc: victim@example.org"}})),
            422,
            Some("headers"),
        ),
        (
            "/v1/messages",
            with(json!({"template": "nope", "subject": null})),
            422,
            Some("template"),
        ),
        (
            "/v1/messages",
            with(json!({"template": "welcome", "subject": null, "text": null})),
            422,
            Some("vars"),
        ),
        (
            "/v1/messages",
            with(json!({"attachments": [{"filename": "a.txt", "content": "%%%"}]})),
            422,
            Some("attachments[0].content"),
        ),
        ("/v1/messages", with(json!({"to": 5})), 422, Some("to")),
        ("/v1/messages", with(json!({"unknown_field": 1})), 422, None),
        (
            "/v1/campaigns",
            json!({"template": "nope", "from": "a@example.com", "recipients": [{"to": "b@example.org"}]}),
            422,
            Some("template"),
        ),
        (
            "/v1/campaigns",
            json!({"template": "welcome", "from": "a@example.com", "recipients": [{"to": "b@example.org", "vars": {"name": "B"}}, {"to": "c@example.org"}]}),
            422,
            Some("recipients[1].vars"),
        ),
        (
            "/v1/campaigns",
            json!({"template": "welcome", "from": "a@example.com", "recipients": [{"to": "b@example.org", "vars": {"name": "B"}}, {"to": "c@example.org", "vars": ["name", "C"]}]}),
            422,
            Some("recipients[1].vars"),
        ),
        (
            "/v1/campaigns",
            json!({"template": "welcome", "from": "a@example.com", "recipients": []}),
            422,
            Some("recipients"),
        ),
    ];
    for (path, body, status, field) in cases {
        let response = volley.post(path, &body, &h).await;
        assert_eq!(
            response.status,
            status,
            "{path} {body}: {}",
            response.text()
        );
        let error = &response.json()["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{body}: {error}");
        }
    }
    let malformed = volley
        .request(
            "POST",
            "/v1/messages",
            &[h[0], ("content-type", "application/json")],
            b"{\"from\": ",
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(malformed.json()["error"]["code"], "malformed");
    // Two documents, or text after one, are not half taken.
    for trailing in ["garbage", " {\"to\": [\"c@example.org\"]}"] {
        let body = format!(
            "{{\"from\": \"a@example.com\", \"to\": [\"b@example.org\"], \"subject\": \"s\", \"text\": \"x\"}}{trailing}"
        );
        let refused = volley
            .request(
                "POST",
                "/v1/messages",
                &[h[0], ("content-type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(refused.status, 400, "{trailing}: {}", refused.text());
        assert_eq!(refused.json()["error"]["code"], "malformed");
    }
    // A recipient's variables nested deeper than any parser should follow: refused,
    // named, and the server answers the next request.
    let deep = format!(
        "{{\"template\": \"welcome\", \"from\": \"a@example.com\", \"recipients\": [{{\"to\": \"b@example.org\", \"vars\": {{\"name\": \"B\", \"deep\": {}{}}}}}]}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let refused = volley
        .request(
            "POST",
            "/v1/campaigns",
            &[h[0], ("content-type", "application/json")],
            deep.as_bytes(),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.json()["error"]["field"], "recipients[0].vars");
    let big = vec![b' '; 70 * 1024];
    let json = ("content-type", "application/json");
    let too_large = volley
        .request("POST", "/v1/messages", &[h[0], json], &big)
        .await;
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert_eq!(volley.post("/v1/messages", &good, &[]).await.status, 401);
    assert_eq!(
        volley
            .post(
                "/v1/messages",
                &good,
                &[("authorization", "Bearer wrong-key-0123456789")]
            )
            .await
            .status,
        401
    );
    assert_eq!(volley.get("/metrics", &[]).await.status, 401);
    assert_eq!(
        volley.get("/healthz", &[]).await.status,
        200,
        "health needs no key"
    );
    assert_eq!(
        volley
            .get("/v1/jobs/01M8N4F38VYN2K69KYA5220C9B", &h)
            .await
            .status,
        404
    );
    assert_eq!(volley.get("/v1/jobs/garbage", &h).await.status, 404);
    // Query strings: the documented JSON error naming the parameter; no silent clamp.
    for (path, field) in [
        ("/v1/events?limit=abc", "limit"),
        ("/v1/events?after=-1", "after"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=1001", "limit"),
        ("/v1/dashboard/jobs?limit=201", "limit"),
        ("/v1/dashboard/stats?since=yesterday", "since"),
    ] {
        let response = volley.get(path, &h).await;
        assert_eq!(response.status, 422, "{path}: {}", response.text());
        assert!(
            response
                .header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let error = &response.json()["error"];
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some("invalid"), Some(field)),
            "{path}: {error}"
        );
    }
    assert_eq!(volley.get("/v1/events?limit=1000", &h).await.status, 200);
    // Nothing of the refused requests was stored.
    let events = volley.get("/v1/events?after=0", &h).await.json();
    assert_eq!(events["events"].as_array().unwrap().len(), 0);
    volley.stop().await;
}

#[tokio::test]
async fn idempotency_keys_return_the_first_answer() {
    let (sink, volley, _dir) = relay_setup("").await;
    let h = auth();
    let mut h = headers(&h);
    h.push(("idempotency-key", "order-42"));
    let body =
        json!({"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"});
    let first = volley.post("/v1/messages", &body, &h).await;
    let second = volley.post("/v1/messages", &body, &h).await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.json()["id"], second.json()["id"]);
    let other =
        json!({"from": "a@example.com", "to": ["c@example.org"], "subject": "s", "text": "t"});
    assert_eq!(volley.post("/v1/messages", &other, &h).await.status, 409);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    volley
        .wait_job(&id, &h[..1], |j| j["state"] == "done")
        .await;
    assert_eq!(sink.stats().messages, 1, "one message, not two");
    volley.stop().await;
}

#[tokio::test]
async fn a_campaign_over_twenty_domains_direct_to_mx() {
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let port = sink.addrs()[0].port();
    let mut records = DnsRecords::new();
    for i in 0..20 {
        records = records
            .mx(&format!("d{i}.test"), 10, &format!("mx.d{i}.test"))
            .a(&format!("mx.d{i}.test"), Ipv4Addr::LOCALHOST);
    }
    let dns = DnsServer::start(records).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "port = {port}\n[dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n[retry]\nschedule = [\"200ms\"]\n",
        dns.addr()
    );
    // `port` belongs to [smtp], which test_config opens last.
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let recipients: Vec<_> = (0..100)
        .map(|i| json!({"to": format!("user{i}@d{}.test", i % 20), "vars": {"name": format!("User {i}")}}))
        .chain([json!({"to": "tempfail-1-x@d3.test", "vars": {"name": "T"}}), json!({"to": "permfail@d4.test", "vars": {"name": "P"}})])
        .collect();
    let body = json!({"template": "welcome", "from": "news@example.com", "vars": {}, "recipients": recipients});
    let response = volley.post("/v1/campaigns", &body, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["recipients"], 102);
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 101, "{job}");
    assert_eq!(job["counts"]["bounced"], 1, "{job}");
    let counts = sink.delivery_counts();
    assert_eq!(counts.len(), 101);
    assert!(
        counts.values().all(|n| *n == 1),
        "nobody got the message twice"
    );
    let metrics = volley.get("/metrics", &[]).await.text();
    assert_eq!(
        metrics
            .matches("volley_site_connections_opened_total{site=\"mx.d")
            .count(),
        20,
        "{metrics}"
    );
    volley.stop().await;
}

#[tokio::test]
async fn one_click_unsubscribe_suppresses_the_address() {
    let extra = "[unsubscribe]\nurl = \"https://example.com/u/{token}\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let (sink, volley, _dir) = relay_setup(extra).await;
    let h = auth();
    let h = headers(&h);
    let campaign = json!({"template": "welcome", "from": "news@example.com", "recipients": [{"to": "reader@example.org", "vars": {"name": "R"}}]});
    let id = volley.post("/v1/campaigns", &campaign, &h).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    volley.wait_job(&id, &h, |j| j["state"] == "done").await;
    let message = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(
        message.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{message}"
    );
    let start = message
        .find("https://example.com/u/")
        .expect("the unsubscribe URL")
        + "https://example.com/u/".len();
    let token: String = message[start..].chars().take_while(|c| *c != '>').collect();
    assert_eq!(
        volley
            .request(
                "POST",
                "/v1/unsubscribe/forged-token",
                &[],
                b"List-Unsubscribe=One-Click"
            )
            .await
            .status,
        404
    );
    let page = volley.get(&format!("/v1/unsubscribe/{token}"), &[]).await;
    assert_eq!(page.status, 200);
    let done = volley
        .request(
            "POST",
            &format!("/v1/unsubscribe/{token}"),
            &[("content-type", "application/x-www-form-urlencoded")],
            b"List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let again = volley.post("/v1/campaigns", &campaign, &h).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = volley.wait_job(&again, &h, |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["suppressed"], 1, "{job}");
    assert_eq!(
        sink.stats().messages,
        1,
        "no second message to an unsubscribed reader"
    );
    volley.stop().await;
}

#[tokio::test]
async fn an_accepted_message_survives_a_restart() {
    // Nothing listens on the relay: the message stays deferred, then a restarted
    // volley pointed at a live sink delivers it.
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml =
        format!("[relay]\nhost = \"{dead}\"\ntls = \"none\"\n[retry]\nschedule = [\"100ms\"]\n");
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let body =
        json!({"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"});
    let id = volley.post("/v1/messages", &body, &[]).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    volley
        .wait_job(&id, &[], |j| j["counts"]["deferred"] == 1)
        .await;
    volley.stop().await;

    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"none\"\n[retry]\nschedule = [\"100ms\"]\n",
        sink.addrs()[0]
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 1, "{job}");
    assert_eq!(sink.stats().messages, 1);
    volley.stop().await;
}

#[tokio::test]
async fn webhooks_deliver_signed_events() {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::HeaderMap;

    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;
    let seen: Seen = Arc::default();
    let receiver = {
        let seen = Arc::clone(&seen);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push((headers, body));
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let secret = "whsec-0123456789abcdef";
    let extra = format!("[webhooks]\nurl = \"http://{hook}/hook\"\nsecret = \"{secret}\"\n");
    let (_sink, volley, _dir) = relay_setup(&extra).await;
    let h = auth();
    let h = headers(&h);
    let body = json!({"from": "a@example.com", "to": ["b@example.org", "permfail@example.org"], "subject": "s", "text": "t"});
    assert_eq!(volley.post("/v1/messages", &body, &h).await.status, 202);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut events = Vec::new();
    while events.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        events.clear();
        for (headers, body) in seen.lock().unwrap().iter() {
            let timestamp: u64 = headers["volley-timestamp"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let signature = headers["volley-signature"].to_str().unwrap();
            assert!(
                volley::webhooks::verify(secret, timestamp, body, signature),
                "a valid signature"
            );
            assert!(!volley::webhooks::verify(
                "another-secret-0123",
                timestamp,
                body,
                signature
            ));
            let batch: serde_json::Value = serde_json::from_slice(body).unwrap();
            events.extend(batch["events"].as_array().unwrap().iter().cloned());
        }
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"delivered") && kinds.contains(&"bounced"),
        "{events:?}"
    );
    volley.stop().await;
}

#[tokio::test]
async fn an_html_only_message_gets_a_text_part_and_the_job_shows_send_at() {
    let (sink, volley, _dir) = relay_setup("").await;
    let h = auth();
    let h = headers(&h);
    let body = json!({
        "from": "a@example.com",
        "to": ["b@example.org"],
        "subject": "Only HTML",
        "html": "<h1>Spring sale</h1><p>Everything <b>half</b> price.</p>"
    });
    let response = volley.post("/v1/messages", &body, &h).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley.wait_job(&id, &h, |j| j["state"] == "done").await;
    assert!(job["send_at"].is_null(), "no send_at asked: {job}");
    let messages = sink.messages();
    let parsed = mail_parser::MessageParser::default()
        .parse(&messages[0].data)
        .unwrap();
    assert_eq!(parsed.text_body.len(), 1, "one text part");
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains("Spring sale") && text.contains("half price"),
        "{text}"
    );
    assert!(!text.contains('<'), "no markup in the text part: {text}");
    assert!(parsed.body_html(0).unwrap().contains("<b>half</b>"));

    // A job scheduled for later shows when.
    let at = volley::time::rfc3339(
        std::time::SystemTime::now() + std::time::Duration::from_secs(30 * 86_400),
    );
    let later = json!({
        "from": "a@example.com", "to": ["c@example.org"], "subject": "Later", "text": "t",
        "send_at": at
    });
    let response = volley.post("/v1/messages", &later, &h).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley.get(&format!("/v1/jobs/{id}"), &h).await.json();
    assert_eq!(job["send_at"], at.as_str(), "{job}");
    assert_eq!(job["state"], "queued", "{job}");
    volley.stop().await;
}

#[tokio::test]
async fn a_message_leaves_from_its_egress_pool_and_its_events_say_how() {
    let pools = "[egress]\n[egress.pools.tx]\naddresses = [{ address = \"127.0.0.22\", helo_name = \"tx.volley.test\" }]\n";
    let (sink, volley, _dir) = relay_setup(pools).await;
    let h = auth();
    let h = headers(&h);
    let message = |pool: &str| {
        json!({
            "from": "ann@example.com",
            "to": ["bob@example.org"],
            "subject": "pooled",
            "text": "hi",
            "pool": pool,
        })
    };
    // An unknown pool is refused before anything is stored, naming the field.
    for path in ["/v1/messages", "/v1/campaigns"] {
        let body = if path == "/v1/messages" {
            message("nope")
        } else {
            json!({"template": "welcome", "from": "ann@example.com",
                   "recipients": [{"to": "bob@example.org", "vars": {"name": "Bob"}}],
                   "pool": "nope"})
        };
        let response = volley.post(path, &body, &h).await;
        assert_eq!(response.status, 422, "{path}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["field"], "pool", "{error}");
        assert!(error["message"].as_str().unwrap().contains("tx"), "{error}");
    }
    let response = volley.post("/v1/messages", &message("tx"), &h).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    volley.wait_job(&id, &h, |j| j["state"] == "done").await;
    let response = volley
        .post("/v1/messages", &json!({"from": "ann@example.com", "to": ["carl@example.org"], "subject": "s", "text": "t"}), &h)
        .await;
    let other = response.json()["id"].as_str().unwrap().to_owned();
    volley.wait_job(&other, &h, |j| j["state"] == "done").await;

    let messages = sink.messages();
    let from = |rcpt: &str| {
        let m = messages.iter().find(|m| m.rcpt_to[0] == rcpt).unwrap();
        (m.peer.unwrap().ip().to_string(), m.helo.clone())
    };
    assert_eq!(
        from("bob@example.org"),
        ("127.0.0.22".to_owned(), "tx.volley.test".to_owned())
    );
    assert_ne!(from("carl@example.org").0, "127.0.0.22", "the default pool");
    let events = volley.get("/v1/events?after=0", &h).await.json();
    let events = events["events"].as_array().unwrap();
    let via = |to: &str| {
        events
            .iter()
            .find(|e| e["to"] == to && e["event"] == "delivered")
            .map(|e| e["via"].clone())
            .unwrap()
    };
    assert_eq!(
        via("bob@example.org"),
        json!({"pool": "tx", "source": "127.0.0.22", "tls": "verify", "encrypted": true})
    );
    assert_eq!(via("carl@example.org")["pool"], "default");
    let metrics = volley.get("/metrics", &h).await.text();
    assert!(
        metrics.contains(" via tx\""),
        "the pool's own site: {metrics}"
    );
    assert!(
        metrics.contains("volley_egress_messages_total{pool=\"tx\",source=\"127.0.0.22\",tls=\"verify\",encrypted=\"true\",policy=\"config\"} 1"),
        "{metrics}"
    );
    volley.stop().await;
}
