//! Webhooks end to end: `run` posts to a real axum receiver on 127.0.0.1 and is judged
//! by what that receiver sees (batches, signatures, retries) and by the cursors the
//! event source is asked to save.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use volley::event::EventKind;
use volley::queue::{Event, JobId};
use volley::time::rfc3339;
use volley::webhooks::{self, EventSource, WebhookClient, WebhookError, WebhooksConfig};

const SECRET: &str = "whsec_test";
/// Generous: these bound how long a test may wait for something that should take
/// milliseconds, on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// What happened, in order: posts as the receiver answered them, and cursor saves.
#[derive(Clone, Debug)]
enum Seen {
    Post {
        status: u16,
        timestamp: u64,
        signature: String,
        body: Bytes,
    },
    Saved(u64),
}

/// One log shared by the receiver and the event source, so that a test can tell
/// whether a cursor was saved before or after the post that acknowledged it.
/// A std mutex: held for a push or a copy, never across an `.await`.
type Log = Arc<Mutex<Vec<Seen>>>;

#[derive(Clone)]
struct Receiver {
    log: Log,
    /// Statuses to answer with, in order; 200 once they run out.
    script: Arc<Mutex<VecDeque<StatusCode>>>,
}

async fn receive(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = rx
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(StatusCode::OK);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    rx.log.lock().unwrap().push(Seen::Post {
        status: status.as_u16(),
        timestamp: header("volley-timestamp").parse().unwrap_or(0),
        signature: header("volley-signature"),
        body,
    });
    status
}

/// Starts a receiver answering `script` then 200; returns its URL.
async fn receiver(log: &Log, script: &[u16]) -> String {
    let state = Receiver {
        log: log.clone(),
        script: Arc::new(Mutex::new(
            script
                .iter()
                .map(|&s| StatusCode::from_u16(s).unwrap())
                .collect(),
        )),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

/// An in-memory event log, as the serve layer would provide over the queue.
struct Store {
    events: Vec<Event>,
    log: Log,
    reads: Mutex<Vec<u64>>,
}

impl EventSource for Store {
    fn events_after(
        &self,
        cursor: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, String>> + Send {
        self.reads.lock().unwrap().push(cursor);
        let batch = self
            .events
            .iter()
            .filter(|e| e.cursor > cursor)
            .take(limit)
            .cloned()
            .collect();
        async move { Ok(batch) }
    }

    fn save_cursor(&self, cursor: u64) -> impl Future<Output = Result<(), String>> + Send {
        self.log.lock().unwrap().push(Seen::Saved(cursor));
        async { Ok(()) }
    }
}

fn store(log: &Log, count: u64) -> Arc<Store> {
    let job = JobId::new(SystemTime::now());
    let events = (1..=count)
        .map(|cursor| Event {
            cursor,
            job,
            index: u32::try_from(cursor % 10).unwrap(),
            to: format!("rcpt{cursor}@example.com"),
            kind: EventKind::ALL[usize::try_from(cursor).unwrap() % EventKind::ALL.len()],
            reply: (cursor % 2 == 0).then(|| "250 2.0.0 ok".to_owned()),
            at: SystemTime::now(),
            late: cursor % 7 == 0,
            via: None,
        })
        .collect();
    Arc::new(Store {
        events,
        log: log.clone(),
        reads: Mutex::new(Vec::new()),
    })
}

fn config(url: &str, batch_size: usize) -> WebhooksConfig {
    WebhooksConfig {
        url: url.to_owned(),
        secret: SECRET.to_owned(),
        batch_size,
        timeout: Duration::from_secs(5),
        // Retries come within 50 ms instead of 1 s, 2 s, 4 s…
        max_backoff: Duration::from_millis(100),
    }
}

fn start(config: &WebhooksConfig, source: &Arc<Store>) -> (JoinHandle<()>, watch::Sender<bool>) {
    let client = WebhookClient::new(config).unwrap();
    let (stop, shutdown) = watch::channel(false);
    let poll = Duration::from_millis(20);
    let task = tokio::spawn(webhooks::run(client, source.clone(), 0, poll, shutdown));
    (task, stop)
}

async fn stop(task: JoinHandle<()>, stop: watch::Sender<bool>) {
    stop.send(true).unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("run ends promptly after shutdown")
        .unwrap();
}

async fn wait_for(log: &Log, what: &str, done: impl Fn(&[Seen]) -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done(&log.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    if waited.await.is_err() {
        panic!("never saw {what}; log: {:#?}", log.lock().unwrap());
    }
}

/// Waits until the loop has asked the source for the events after `cursor`.
async fn wait_for_read(source: &Store, cursor: u64) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !source.reads.lock().unwrap().contains(&cursor) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    if waited.await.is_err() {
        panic!(
            "the loop never read after cursor {cursor}: {:?}",
            source.reads.lock().unwrap()
        );
    }
}

fn posts(log: &Log) -> Vec<(u16, u64, String, Bytes)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|seen| match seen {
            Seen::Post {
                status,
                timestamp,
                signature,
                body,
            } => Some((*status, *timestamp, signature.clone(), body.clone())),
            Seen::Saved(_) => None,
        })
        .collect()
}

/// One event as a receiver reads it: exactly these fields.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    cursor: u64,
    job: String,
    index: u32,
    to: String,
    event: String,
    reply: Option<String>,
    at: String,
    /// Present (and true) only on reports that arrived after the handoff.
    #[serde(rename = "async", default)]
    late: bool,
}

impl From<&Event> for Posted {
    fn from(e: &Event) -> Self {
        Posted {
            cursor: e.cursor,
            job: e.job.to_string(),
            index: e.index,
            to: e.to.clone(),
            event: e.kind.as_str().to_owned(),
            reply: e.reply.clone(),
            at: rfc3339(e.at),
            late: e.late,
        }
    }
}

fn events_in(body: &[u8]) -> Vec<Posted> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        events: Vec<Posted>,
    }
    serde_json::from_slice::<Batch>(body).unwrap().events
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn events_arrive_in_signed_batches_of_batch_size_and_the_cursor_follows() {
    let log = Log::default();
    let url = receiver(&log, &[]).await;
    let source = store(&log, 250);
    let (task, stopper) = start(&config(&url, 100), &source);
    wait_for(&log, "cursor 250 saved", |l| {
        matches!(l.last(), Some(Seen::Saved(250)))
    })
    .await;
    stop(task, stopper).await;

    let posts = posts(&log);
    let sizes: Vec<usize> = posts.iter().map(|p| events_in(&p.3).len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    for (status, timestamp, signature, body) in &posts {
        assert_eq!(*status, 200);
        assert!(
            webhooks::verify(SECRET, *timestamp, body, signature),
            "bad signature {signature:?} at {timestamp}"
        );
        assert!(!webhooks::verify(
            "another secret",
            *timestamp,
            body,
            signature
        ));
        assert!(
            unix_now().abs_diff(*timestamp) <= 60,
            "timestamp {timestamp} is not within a minute of now"
        );
    }
    let delivered: Vec<Posted> = posts.iter().flat_map(|p| events_in(&p.3)).collect();
    let expected: Vec<Posted> = source.events.iter().map(Posted::from).collect();
    assert_eq!(delivered, expected, "every event once, in order");

    // Each save comes right after the post that acknowledged its batch.
    let order: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|seen| match seen {
            Seen::Post { status, .. } => format!("post {status}"),
            Seen::Saved(c) => format!("saved {c}"),
        })
        .collect();
    assert_eq!(
        order,
        [
            "post 200",
            "saved 100",
            "post 200",
            "saved 200",
            "post 200",
            "saved 250"
        ]
    );
}

#[tokio::test]
async fn the_wire_format_is_as_documented_and_tampering_breaks_the_signature() {
    let log = Log::default();
    let url = receiver(&log, &[]).await;
    let events = store(&log, 7).events.clone();
    let client = WebhookClient::new(&config(&url, 100)).unwrap();
    client.post(&events).await.unwrap();

    let (_, timestamp, signature, body) = posts(&log).remove(0);
    assert!(
        signature.starts_with("v1=") && signature.len() == 3 + 64,
        "{signature}"
    );
    assert!(webhooks::verify(SECRET, timestamp, &body, &signature));

    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let first = &json["events"][0];
    assert_eq!(first["cursor"], 1);
    assert_eq!(first["to"], "rcpt1@example.com");
    assert_eq!(first["event"], "deferred");
    assert!(
        first["reply"].is_null(),
        "no reply is null, not absent: {first}"
    );
    assert_eq!(json["events"][1]["reply"], "250 2.0.0 ok");
    assert!(
        first.get("async").is_none(),
        "`async` appears only on late reports: {first}"
    );
    assert_eq!(
        json["events"][6]["async"], true,
        "cursor 7 is a late report"
    );

    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\"deferred\"", "\"delivered\"");
    assert_ne!(tampered.as_bytes(), &body[..]);
    assert!(!webhooks::verify(
        SECRET,
        timestamp,
        tampered.as_bytes(),
        &signature
    ));
    assert!(!webhooks::verify(SECRET, timestamp + 1, &body, &signature));
}

#[tokio::test]
async fn a_refused_batch_is_retried_until_acknowledged_and_only_then_saved() {
    let log = Log::default();
    let url = receiver(&log, &[500, 500]).await;
    let source = store(&log, 3);
    let (task, stopper) = start(&config(&url, 10), &source);
    wait_for(&log, "cursor 3 saved", |l| {
        l.iter().any(|s| matches!(s, Seen::Saved(3)))
    })
    .await;
    // Once the loop asks for events after 3 it is done with the batch: any repeated
    // post would have come before that read.
    wait_for_read(&source, 3).await;
    stop(task, stopper).await;

    let posts = posts(&log);
    let statuses: Vec<u16> = posts.iter().map(|p| p.0).collect();
    assert_eq!(
        statuses,
        [500, 500, 200],
        "retried twice, then acknowledged once"
    );
    for (_, _, _, body) in &posts {
        let expected: Vec<Posted> = source.events.iter().map(Posted::from).collect();
        assert_eq!(events_in(body), expected, "the same batch each time");
    }
    let saves: Vec<(usize, u64)> = log
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Seen::Saved(c) => Some((i, *c)),
            Seen::Post { .. } => None,
        })
        .collect();
    assert_eq!(saves, [(3, 3)], "one save, after the acknowledging post");
}

#[tokio::test]
async fn a_non_2xx_answer_is_an_error_naming_the_status() {
    let log = Log::default();
    let url = receiver(&log, &[503]).await;
    let events = store(&log, 1).events.clone();
    let client = WebhookClient::new(&config(&url, 100)).unwrap();
    let err = client.post(&events).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    client.post(&events).await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_drops_connections_is_retried_without_blocking_and_shutdown_ends_run() {
    // Every connection is closed at once, before any answer: a transport failure.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(Mutex::new(0usize));
    let counted = Arc::clone(&attempts);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
            *counted.lock().unwrap() += 1;
        }
    });
    let log = Log::default();
    let source = store(&log, 5);
    let (task, stopper) = start(&config(&format!("http://{addr}/hook"), 10), &source);

    // This task, on the same runtime, keeps running while `run` retries.
    let waited = tokio::time::timeout(PATIENCE, async {
        while *attempts.lock().unwrap() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("run keeps retrying a failing receiver");
    assert!(!task.is_finished(), "run gave up on a failing receiver");
    assert_eq!(
        *source.reads.lock().unwrap(),
        [0],
        "the failing batch is retried, not skipped"
    );
    assert!(log.lock().unwrap().is_empty(), "nothing saved: {log:?}");
    stop(task, stopper).await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    // Accepts and reads nothing, answers nothing; keeps the sockets open.
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    let config = WebhooksConfig {
        timeout: Duration::from_millis(300),
        ..config(&format!("http://{addr}/hook"), 10)
    };
    let err = WebhookClient::new(&config)
        .unwrap()
        .post(&[])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    let log = Log::default();
    let source = store(&log, 5);
    let (task, stopper) = start(&config, &source);
    let waited = tokio::time::timeout(PATIENCE, async {
        while accepted.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await.expect("run keeps retrying after timeouts");
    assert!(log.lock().unwrap().is_empty(), "nothing saved: {log:?}");
    stop(task, stopper).await;
}

#[tokio::test]
async fn https_receivers_get_a_real_tls_handshake_on_ring() {
    // A self-signed certificate is not in the webpki roots: the client must refuse it
    // (rather than panic for want of a process-wide crypto provider, or skip checks).
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        acceptor.accept(socket).await.map(drop)
    });

    let url = format!("https://127.0.0.1:{port}/hook");
    let client = WebhookClient::new(&config(&url, 10)).unwrap();
    let err = client.post(&[]).await.unwrap_err();
    assert!(matches!(err, WebhookError::Transport(_)), "{err}");
    assert!(
        format!("{err:?}").contains("UnknownIssuer"),
        "refused for the certificate: {err:?}"
    );
    let handshake = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    assert!(handshake.is_err(), "the client aborted the handshake");
}

#[test]
fn rfc3339_formats_utc_to_the_second() {
    let table = [
        (0, "1970-01-01T00:00:00Z"),
        (1_709_164_800, "2024-02-29T00:00:00Z"),
        (1_709_208_000, "2024-02-29T12:00:00Z"),
        (1_796_042_096, "2026-11-30T12:34:56Z"),
    ];
    for (secs, want) in table {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc3339(t), want, "{secs}");
    }
}
