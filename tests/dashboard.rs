//! The dashboard end to end: its JSON endpoints against a running volley and the load-test
//! sink (totals, the per-second series, sites, stages, the newest jobs), and which of its
//! routes need the API key.

mod common;

use std::time::Duration;

use common::{Running, test_config};
use serde_json::{Value, json};
use volley_loadtest::{Sink, SinkConfig};

const KEY: &str = "dashboard-key-0123456789abcdef";

fn auth() -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {KEY}"))]
}

fn headers<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// A volley relaying to a fresh sink; `keys` says whether the API wants [`KEY`].
async fn setup(keys: bool) -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = if keys {
        format!("[server]\napi_keys = [{KEY:?}]\n")
    } else {
        String::new()
    };
    // The first line belongs to [smtp], which `test_config` opens last.
    let toml = format!(
        "max_connections_per_site = 7\n{server}[relay]\nhost = \"{}\"\ntls = \"none\"\n[retry]\nschedule = [\"200ms\"]\nmax_age = \"1m\"\n",
        sink.addrs()[0]
    );
    let running = Running::start(test_config(dir.path(), &toml)).await;
    (sink, running, dir)
}

async fn stats(volley: &Running, h: &[(&str, &str)], query: &str) -> Value {
    let response = volley.get(&format!("/v1/dashboard/stats{query}"), h).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Polls the stats until `done` says so (or 20 s).
async fn wait_stats(volley: &Running, h: &[(&str, &str)], done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(volley, h, "").await;
        if done(&s) || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn series_sum(s: &Value, field: &str) -> u64 {
    s["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum()
}

fn stage<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name}: {s}"))
}

#[tokio::test]
async fn stats_and_jobs_follow_a_campaign() {
    let (_sink, volley, _dir) = setup(true).await;
    let h = auth();
    let h = headers(&h);

    let before = wait_stats(&volley, &h, |s| !s["series"].as_array().unwrap().is_empty()).await;
    for outcome in ["delivered", "deferred", "bounced", "expired", "suppressed"] {
        assert_eq!(before["totals"][outcome], 0, "{before}");
    }
    let point = &before["series"][0];
    for field in [
        "t",
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "suppressed",
        "ready",
        "scheduled",
        "leased",
        "waiting",
        "in_flight",
    ] {
        assert!(point[field].is_u64(), "{field} in {point}");
    }
    assert!(before["now"].as_u64().unwrap() >= point["t"].as_u64().unwrap());
    assert_eq!(
        before["depth"],
        json!({"ready": 0, "scheduled": 0, "leased": 0, "waiting": 0, "in_flight": 0})
    );
    assert_eq!(before["sites"], json!([]));
    assert_eq!(stage(&before, "delivery")["count"], 0);
    assert_eq!(before["stages"].as_array().unwrap().len(), 7);
    assert_eq!(before["histogram"]["stage"], "delivery");
    assert!(
        volley.get("/v1/dashboard/jobs", &h).await.json()["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An older one-off message, then the campaign: the campaign is listed first.
    let message =
        json!({"from": "a@example.com", "to": ["x@example.org"], "subject": "s", "text": "t"});
    let first = volley.post("/v1/messages", &message, &h).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recipients: Vec<Value> = (0..19)
        .map(|i| json!({"to": format!("user{i}@example.org"), "vars": {"name": format!("U{i}")}}))
        .chain([json!({"to": "permfail@example.org", "vars": {"name": "P"}})])
        .collect();
    let campaign =
        json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
    let response = volley.post("/v1/campaigns", &campaign, &h).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let job = volley.wait_job(&id, &h, |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 19, "{job}");

    // The sampler records a point a second: wait until the series has caught up.
    let after = wait_stats(&volley, &h, |s| {
        series_sum(s, "delivered") == 20 && series_sum(s, "bounced") == 1
    })
    .await;
    assert_eq!(after["totals"]["delivered"], 20, "{after}");
    assert_eq!(after["totals"]["bounced"], 1, "{after}");
    assert_eq!(series_sum(&after, "delivered"), 20, "{after}");
    assert_eq!(series_sum(&after, "bounced"), 1, "{after}");
    let times: Vec<u64> = after["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["t"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(times.len() <= 300);

    let sites = after["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "one relay, one site: {after}");
    let site = &sites[0];
    assert_eq!(site["limit"], 7, "{site}");
    assert_eq!(site["allowed"], 7, "{site}");
    assert_eq!(
        (site["delivered"].as_u64(), site["bounced"].as_u64()),
        (Some(20), Some(1))
    );
    assert!(site["open"].as_u64().unwrap() <= 7);
    assert!(site["rate_per_s"].as_f64().is_some(), "{site}");
    assert!(site["paused_until"].is_null(), "{site}");
    assert!(site["last_reply"].is_string(), "{site}");
    // The site lists the domains routed to it; a relay belongs to no provider.
    assert_eq!(site["domains"], json!(["example.org"]), "{site}");
    assert!(site["provider"].is_null(), "{site}");

    let delivery = stage(&after, "delivery");
    assert_eq!(delivery["count"], 21, "{after}");
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(delivery[p].as_f64().unwrap() > 0.0, "{p}: {delivery}");
    }
    assert!(stage(&after, "transaction")["count"].as_u64().unwrap() > 0);
    let buckets = after["histogram"]["buckets"].as_array().unwrap();
    let in_buckets: u64 = buckets.iter().map(|b| b[1].as_u64().unwrap()).sum();
    assert_eq!(in_buckets, 21, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0][0].as_f64() < w[1][0].as_f64())
    );

    // `since` returns only newer points.
    let last = *times.last().unwrap();
    let newer = stats(&volley, &h, &format!("?since={last}")).await;
    assert!(
        newer["series"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["t"].as_u64().unwrap() > last)
    );

    let jobs = volley.get("/v1/dashboard/jobs?limit=5", &h).await.json();
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["kind"], "campaign");
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["counts"]["total"], 20);
    assert_eq!(jobs[0]["counts"]["delivered"], 19);
    assert_eq!(jobs[0]["counts"]["bounced"], 1);
    assert!(jobs[0]["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(jobs[1]["id"], first.as_str());
    assert_eq!(jobs[1]["kind"], "message");
    let one = volley.get("/v1/dashboard/jobs?limit=1", &h).await.json();
    assert_eq!(one["jobs"].as_array().unwrap().len(), 1);
    volley.stop().await;
}

#[tokio::test]
async fn the_page_is_open_and_its_data_needs_the_key() {
    let (_sink, volley, _dir) = setup(true).await;
    let page = volley.get("/", &[]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text();
    assert!(html.contains("data-key-required=\"true\""), "{html}");
    assert!(html.contains("src=\"/dashboard/app.js\""), "{html}");
    assert!(html.contains("href=\"/dashboard/style.css\""), "{html}");
    assert!(!html.contains("{{"), "every placeholder is filled");
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let asset = volley.get(path, &[]).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.header("content-type").unwrap().starts_with(kind));
        assert!(asset.body.len() > 1000, "{path}");
    }
    for path in ["/v1/dashboard/stats", "/v1/dashboard/jobs"] {
        let refused = volley.get(path, &[]).await;
        assert_eq!(refused.status, 401, "{path}: {}", refused.text());
        assert_eq!(refused.json()["error"]["code"], "unauthorized");
        let wrong = [("authorization", "Bearer wrong-key-0123456789abcdef")];
        assert_eq!(volley.get(path, &wrong).await.status, 401, "{path}");
        let h = auth();
        assert_eq!(volley.get(path, &headers(&h)).await.status, 200, "{path}");
    }
    volley.stop().await;

    // Without keys, the page says so and the data needs none.
    let (_sink, volley, _dir) = setup(false).await;
    let html = volley.get("/", &[]).await.text();
    assert!(html.contains("data-key-required=\"false\""), "{html}");
    assert_eq!(volley.get("/v1/dashboard/stats", &[]).await.status, 200);
    assert_eq!(volley.get("/v1/dashboard/jobs", &[]).await.status, 200);
    volley.stop().await;
}

#[tokio::test]
async fn in_flight_is_shown_apart_from_leased_and_waiting() {
    let (_sink, volley, _dir) = setup(false).await;
    // `slow*` recipients get their RCPT reply after 200 ms: at 7 connections, 60 of them
    // keep a few on connections and the rest waiting in the engine for a while.
    let recipients: Vec<Value> = (0..60)
        .map(|i| json!({"to": format!("slow{i}@example.org"), "vars": {"name": "S"}}))
        .collect();
    let campaign =
        json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
    let response = volley.post("/v1/campaigns", &campaign, &[]).await;
    assert_eq!(response.status, 202, "{}", response.text());
    let busy = wait_stats(&volley, &[], |s| s["depth"]["in_flight"].as_u64() > Some(0)).await;
    let depth = &busy["depth"];
    let (leased, waiting, in_flight) = (
        depth["leased"].as_u64().unwrap(),
        depth["waiting"].as_u64().unwrap(),
        depth["in_flight"].as_u64().unwrap(),
    );
    assert!(in_flight > 0, "{depth}");
    assert!(
        in_flight <= 7 * 16,
        "at most a batch per connection: {depth}"
    );
    assert_eq!(waiting, leased.saturating_sub(in_flight), "{depth}");
    let id = response.json()["id"].as_str().unwrap().to_owned();
    volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    let idle = wait_stats(&volley, &[], |s| s["depth"]["in_flight"] == 0).await;
    assert_eq!(idle["depth"]["in_flight"], 0, "{idle}");
    volley.stop().await;
}
