//! Shared pieces of the end-to-end tests: a running volley on loopback with its
//! queue in a temporary directory, and a minimal HTTP/1.1 client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use volley::app::App;
use volley::app::config::Config;

/// The repository's example templates.
pub(crate) fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates")
}

/// A configuration for tests: queue in `data`, example templates, fast retries.
pub(crate) fn test_config(data: &std::path::Path, toml_extra: &str) -> Config {
    let text = format!(
        "[queue]\npath = {:?}\n[templates]\npath = {:?}\n[smtp]\nhelo_name = \"volley.test\"\n{toml_extra}",
        data.display().to_string(),
        templates_dir().display().to_string()
    );
    let mut config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.smtp.timeouts.connect = Duration::from_secs(2);
    config
}

/// Writes the sink's CA certificate to `dir` and returns the file, for `[smtp] ca_file`:
/// relays are verified, and the sink's certificate is signed by its own CA.
pub(crate) fn sink_ca_file(dir: &std::path::Path, sink: &volley_loadtest::Sink) -> PathBuf {
    let path = dir.join("sink-ca.pem");
    std::fs::write(&path, sink.ca_pem()).unwrap();
    path
}

/// A volley serving on 127.0.0.1:0.
pub(crate) struct Running {
    /// The API address.
    pub addr: SocketAddr,
    /// The SMTP submission listener's address, when `[submission]` is configured.
    #[allow(dead_code, reason = "only the submission tests read it")]
    pub submission: Option<SocketAddr>,
    /// The bounce listener's address, when `[bounces]` is configured.
    #[allow(dead_code, reason = "only the bounce tests read it")]
    pub bounces: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Opens and serves `config`.
    pub(crate) async fn start(config: Config) -> Running {
        let submission = match &config.submission {
            Some(c) => Some(TcpListener::bind(c.listen).await.unwrap()),
            None => None,
        };
        let bounces = match &config.bounces {
            Some(c) => Some(TcpListener::bind(c.listen).await.unwrap()),
            None => None,
        };
        let submission_addr = submission.as_ref().map(|s| s.local_addr().unwrap());
        let bounces_addr = bounces.as_ref().map(|s| s.local_addr().unwrap());
        let app = App::open(config).await.expect("volley opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let sockets = volley::app::Sockets {
                http: listener,
                submission,
                bounces,
            };
            app.serve_sockets(sockets, async move {
                let _ = rx.await;
            })
            .await
            .expect("serves");
        });
        Running {
            addr,
            submission: submission_addr,
            bounces: bounces_addr,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful stop (like SIGTERM).
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }

    /// One HTTP request; returns status, headers (lower-case names) and body.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http(self.addr, method, path, headers, body).await
    }

    /// POST JSON.
    pub(crate) async fn post(
        &self,
        path: &str,
        json: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, json.to_string().as_bytes())
            .await
    }

    /// GET.
    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"").await
    }

    /// Polls a job until `done` says so (or 20 s).
    pub(crate) async fn wait_job(
        &self,
        id: &str,
        headers: &[(&str, &str)],
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.get(&format!("/v1/jobs/{id}"), headers).await.json();
            if done(&job) || tokio::time::Instant::now() > deadline {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client (Connection: close), enough for the API's tests.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body and close: ignore that.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}
