//! Delivery semantics end to end, with volley's real queue (embedded and Redis) and the
//! load-test sink: each recipient once even when sending takes several leases, never to a
//! suppressed address (whatever form it arrives in, within its scope), never a bounce
//! blamed on the wrong party, and time counted from the right start.

mod common;
mod queue_common;

use std::time::Duration;

use common::{Running, test_config};
use serde_json::{Value, json};
use volley::app::config::Config;
use volley::queue::Backend;
use volley_loadtest::{Sink, SinkConfig};

/// A volley relaying to a fresh sink that counts deliveries per recipient, its
/// configuration changed by `change`.
async fn setup(change: impl FnOnce(&mut Config)) -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        capture: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"none\"\n[retry]\nschedule = [\"300ms\"]\nmax_age = \"1m\"\n",
        sink.addrs()[0]
    );
    let mut config = test_config(dir.path(), &toml);
    change(&mut config);
    let running = Running::start(config).await;
    (sink, running, dir)
}

async fn submit(volley: &Running, path: &str, body: &Value) -> String {
    let response = volley.post(path, body, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_owned()
}

/// Polls a job until it is done, for up to `patience`.
async fn wait_done(volley: &Running, id: &str, patience: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let job = volley
            .get(&format!("/v1/jobs/{id}?limit=1000"), &[])
            .await
            .json();
        if job["state"] == "done" || tokio::time::Instant::now() > deadline {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn message(to: &str) -> Value {
    json!({"from": "shop@example.com", "to": [to], "subject": "Your receipt", "text": "Thanks."})
}

fn campaign(list: Option<&str>, to: &[&str]) -> Value {
    let recipients: Vec<Value> = to
        .iter()
        .map(|t| json!({"to": t, "vars": {"name": "N"}}))
        .collect();
    let mut body =
        json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
    if let Some(list) = list {
        body["list"] = json!(list);
    }
    body
}

/// A counter without labels of its own (a cluster's worker adds `worker="ID"`).
fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let bare = series.split('{').next()?;
        let labels = series.strip_prefix(bare).unwrap_or("");
        let own = labels.is_empty() || labels.starts_with("{worker=") && !labels.contains(',');
        (bare == name && own).then(|| value.parse().ok())?
    })
}

/// 100 recipients under a global limit of 10/s with a 2 s lease: sending takes five
/// leases, and every recipient must be sent exactly once.
async fn rate_limited_campaign_is_sent_once(redis_prefix: Option<&str>) {
    let (sink, volley, _dir) = setup(|c| {
        c.limits.global = "10/s".parse().unwrap();
        c.queue.lease = Duration::from_secs(2);
        if let Some(prefix) = redis_prefix {
            c.queue.backend = Backend::Redis;
            c.queue.redis_prefix = prefix.to_owned();
        }
    })
    .await;
    let to: Vec<String> = (0..100).map(|i| format!("r{i}@example.org")).collect();
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    let id = submit(&volley, "/v1/campaigns", &campaign(None, &refs)).await;
    let started = std::time::Instant::now();
    let job = wait_done(&volley, &id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(job["counts"]["delivered"], 100, "{job}");
    assert!(took >= Duration::from_secs(9), "the limit held: {took:?}");
    let counts = sink.delivery_counts();
    assert_eq!(counts.len(), 100);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(sink.stats().messages, 100);
    let metrics = volley.get("/metrics", &[]).await.text();
    assert_eq!(
        counter(&metrics, "volley_stale_completions_total"),
        Some(0),
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "volley_leases_lost_total"),
        Some(0),
        "{metrics}"
    );
    volley.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_campaign_longer_than_its_lease_is_sent_once() {
    rate_limited_campaign_is_sent_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_campaign_longer_than_its_lease_is_sent_once_on_redis() {
    if !queue_common::redis_available().await {
        return;
    }
    let prefix = queue_common::unique_prefix();
    rate_limited_campaign_is_sent_once(Some(&prefix)).await;
    queue_common::redis_cleanup(&prefix).await;
}

#[tokio::test]
async fn an_internationalised_hard_bounce_stops_every_form_of_the_address() {
    let (sink, volley, _dir) = setup(|_| {}).await;
    let id = submit(&volley, "/v1/messages", &message("permfail@bücher.example")).await;
    let job = wait_done(&volley, &id, Duration::from_secs(20)).await;
    assert_eq!(job["counts"]["bounced"], 1, "{job}");
    let entry = volley
        .get("/v1/suppressions/permfail@BÜCHER.example", &[])
        .await;
    assert_eq!(entry.status, 200, "{}", entry.text());
    assert_eq!(entry.json()["address"], "permfail@xn--bcher-kva.example");
    let refused_before = sink.stats().recipients_rejected;
    for form in [
        "permfail@bücher.example",
        "Permfail@BÜCHER.example",
        "permfail@xn--bcher-kva.example",
    ] {
        let id = submit(&volley, "/v1/messages", &message(form)).await;
        let job = wait_done(&volley, &id, Duration::from_secs(20)).await;
        assert_eq!(job["counts"]["suppressed"], 1, "{form}: {job}");
    }
    assert_eq!(
        sink.stats().recipients_rejected,
        refused_before,
        "no suppressed address reached the server again"
    );
    volley.stop().await;
}

#[tokio::test]
async fn a_refused_sender_suppresses_no_recipient() {
    let (sink, volley, _dir) = setup(|_| {}).await;
    let body = json!({"from": "refused-sender@example.com", "to": ["ann@example.org", "bob@example.org"],
                      "subject": "s", "text": "t"});
    let id = submit(&volley, "/v1/messages", &body).await;
    let job = wait_done(&volley, &id, Duration::from_secs(20)).await;
    assert_eq!(job["counts"]["bounced"], 2, "the message bounces: {job}");
    let reply = job["recipients"][0]["last_reply"].as_str().unwrap();
    assert!(reply.contains("Sender address rejected"), "{reply}");
    let list = volley.get("/v1/suppressions", &[]).await.json();
    assert_eq!(list["suppressions"], json!([]), "nobody suppressed: {list}");
    // The same recipients from a good sender get their mail.
    let body = json!({"from": "shop@example.com", "to": ["ann@example.org", "bob@example.org"],
                      "subject": "s", "text": "t"});
    let id = submit(&volley, "/v1/messages", &body).await;
    let job = wait_done(&volley, &id, Duration::from_secs(20)).await;
    assert_eq!(job["counts"]["delivered"], 2, "{job}");
    assert_eq!(sink.stats().messages, 2);
    volley.stop().await;
}

#[tokio::test]
async fn a_send_at_beyond_the_maximum_age_still_gets_its_retries() {
    // max_age 3 s; the message is due in 4 s (so more than max_age after submission),
    // and is refused twice before it is accepted.
    let (sink, volley, _dir) = setup(|c| c.retry.max_age = Duration::from_secs(3)).await;
    let at = std::time::SystemTime::now() + Duration::from_secs(4);
    let mut body = message("tempfail-2-ann@example.org");
    body["send_at"] = json!(volley::time::rfc3339(at));
    let id = submit(&volley, "/v1/messages", &body).await;
    let job = wait_done(&volley, &id, Duration::from_secs(30)).await;
    assert_eq!(job["counts"]["delivered"], 1, "{job}");
    assert_eq!(job["recipients"][0]["attempts"], 3, "{job}");
    assert_eq!(sink.stats().messages, 1);
    volley.stop().await;
}

#[tokio::test]
async fn an_unsubscribe_stops_its_list_and_not_transactional_mail() {
    let (sink, volley, _dir) = setup(|_| {}).await;
    let put = volley
        .request(
            "PUT",
            "/v1/suppressions/Ann@Example.org",
            &[("content-type", "application/json")],
            br#"{"scope": "list:news", "reason": "unsubscribed"}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["scope"], "list:news");
    let news = submit(
        &volley,
        "/v1/campaigns",
        &campaign(Some("news"), &["ann@example.org"]),
    )
    .await;
    let other = submit(
        &volley,
        "/v1/campaigns",
        &campaign(Some("offers"), &["ann@example.org"]),
    )
    .await;
    let receipt = submit(&volley, "/v1/messages", &message("ann@example.org")).await;
    let outcome = |job: &Value| {
        let c = &job["counts"];
        (c["delivered"].as_u64(), c["suppressed"].as_u64())
    };
    let news = wait_done(&volley, &news, Duration::from_secs(20)).await;
    assert_eq!(
        outcome(&news),
        (Some(0), Some(1)),
        "the list she left: {news}"
    );
    let other = wait_done(&volley, &other, Duration::from_secs(20)).await;
    assert_eq!(outcome(&other), (Some(1), Some(0)), "another list: {other}");
    let receipt = wait_done(&volley, &receipt, Duration::from_secs(20)).await;
    assert_eq!(
        outcome(&receipt),
        (Some(1), Some(0)),
        "transactional mail: {receipt}"
    );
    assert_eq!(sink.stats().messages, 2);

    // For all mail, she gets nothing; deleted, she gets everything again.
    let put = volley
        .request("PUT", "/v1/suppressions/ann@example.org", &[], b"")
        .await;
    assert_eq!(put.json()["scope"], "all", "{}", put.text());
    let receipt = submit(&volley, "/v1/messages", &message("ann@example.org")).await;
    let receipt = wait_done(&volley, &receipt, Duration::from_secs(20)).await;
    assert_eq!(outcome(&receipt), (Some(0), Some(1)), "{receipt}");
    let listed = volley.get("/v1/suppressions?limit=1", &[]).await.json();
    assert_eq!(listed["suppressions"].as_array().unwrap().len(), 1);
    assert_eq!(listed["next_after"], "ann@example.org");
    let deleted = volley
        .request("DELETE", "/v1/suppressions/ANN@example.org", &[], b"")
        .await;
    assert_eq!(deleted.json()["removed"], 2, "{}", deleted.text());
    let gone = volley.get("/v1/suppressions/ann@example.org", &[]).await;
    assert_eq!(gone.status, 404);
    let receipt = submit(&volley, "/v1/messages", &message("ann@example.org")).await;
    let receipt = wait_done(&volley, &receipt, Duration::from_secs(20)).await;
    assert_eq!(outcome(&receipt), (Some(1), Some(0)), "{receipt}");
    for (method, path, body, field) in [
        (
            "PUT",
            "/v1/suppressions/not-an-address",
            &b""[..],
            "address",
        ),
        (
            "PUT",
            "/v1/suppressions/a@example.org",
            &br#"{"scope": "everyone"}"#[..],
            "scope",
        ),
        (
            "DELETE",
            "/v1/suppressions/a@example.org?scope=list:",
            &b""[..],
            "scope",
        ),
    ] {
        let json = [("content-type", "application/json")];
        let refused = volley.request(method, path, &json, body).await;
        assert_eq!(refused.status, 422, "{path}: {}", refused.text());
        assert_eq!(refused.json()["error"]["field"], field);
    }
    volley.stop().await;
}

#[tokio::test]
async fn duplicates_are_merged_and_campaigns_are_capped() {
    let (sink, volley, _dir) = setup(|c| c.server.max_recipients = 5).await;
    let body = campaign(
        None,
        &[
            "ann@example.org",
            "bob@example.org",
            "Ann@EXAMPLE.org",
            "ann@example.org",
        ],
    );
    let response = volley.post("/v1/campaigns", &body, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let answer = response.json();
    assert_eq!(
        (answer["recipients"].as_u64(), answer["merged"].as_u64()),
        (Some(2), Some(2))
    );
    let id = answer["id"].as_str().unwrap();
    wait_done(&volley, id, Duration::from_secs(20)).await;
    assert_eq!(sink.stats().messages, 2, "each person once");
    let six: Vec<String> = (0..6).map(|i| format!("p{i}@example.org")).collect();
    let refs: Vec<&str> = six.iter().map(String::as_str).collect();
    let too_many = volley
        .post("/v1/campaigns", &campaign(None, &refs), &[])
        .await;
    assert_eq!(too_many.status, 422, "{}", too_many.text());
    assert_eq!(too_many.json()["error"]["field"], "recipients");
    volley.stop().await;
}
