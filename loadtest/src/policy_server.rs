//! An HTTPS server on loopback that serves MTA-STS policy files, for tests: one answer
//! per policy host (by the request's `Host`) at `/.well-known/mta-sts.txt`, under one
//! certificate for all those hosts signed by a CA of its own (its PEM is what a
//! verifying client must trust). It counts requests per host, and its answers can be
//! changed while it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// `200 text/plain` with `body`.
    pub fn policy(body: &str) -> Self {
        Self {
            status: 200,
            content_type: "text/plain".into(),
            body: body.into(),
        }
    }
}

/// A running policy server.
pub struct PolicyServer {
    addr: SocketAddr,
    ca_pem: String,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PolicyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PolicyServer {
    /// Listens on `ip` (any free port), answering each host of `answers` (`mta-sts.`
    /// and the domain) with its answer, under one certificate for all of them.
    pub async fn start(
        ip: std::net::IpAddr,
        answers: HashMap<String, Answer>,
    ) -> std::io::Result<Self> {
        let hosts: Vec<&str> = answers.keys().map(String::as_str).collect();
        let first = hosts.first().copied().unwrap_or("localhost");
        let material = crate::tls::generate_for(first, &hosts, &[])?;
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let answers = Arc::new(Mutex::new(answers));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let (shared, counted) = (Arc::clone(&answers), Arc::clone(&hits));
        let acceptor = material.acceptor;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, answer, hits) =
                    (acceptor.clone(), Arc::clone(&shared), Arc::clone(&counted));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                        if request.len() > 16 * 1024 {
                            return;
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let host = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let host = host.split(':').next().unwrap_or_default().to_owned();
                    *hits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(host.clone())
                        .or_insert(0) += 1;
                    let found = text.starts_with("GET /.well-known/mta-sts.txt ");
                    let answer = answer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&host)
                        .filter(|_| found)
                        .cloned()
                        .unwrap_or_else(|| Answer {
                            status: 404,
                            content_type: "text/plain".into(),
                            body: "not found".into(),
                        });
                    let response = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        answer.status,
                        answer.content_type,
                        answer.body.len(),
                        answer.body
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem: material.ca_pem,
            answers,
            hits,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed its certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Requests for `host` answered so far.
    pub fn hits(&self, host: &str) -> u64 {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        hits.get(host).copied().unwrap_or(0)
    }

    /// Answers `answer` for `host` from now on.
    pub fn set(&self, host: &str, answer: Answer) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.insert(host.to_owned(), answer);
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
