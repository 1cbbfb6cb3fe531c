//! A `volley serve` process for tests that need real processes (several workers on one
//! Redis, SIGKILL, SIGTERM): its config file and log in a test directory, an HTTP client
//! for its API, and a stop that ends only this child, by its PID.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a process or a job.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository's templates directory, as a TOML string.
pub fn templates_toml() -> String {
    format!(
        "{:?}",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
    )
}

/// A running `volley serve`.
pub struct Serve {
    child: Child,
    /// Its API address, `127.0.0.1:PORT`.
    pub api: String,
    log: PathBuf,
}

impl Serve {
    /// Writes `DIR/NAME.toml` from `config` (given the API address to listen on) and
    /// starts `volley serve` on it, logging warnings to `DIR/NAME.log`.
    pub fn spawn(dir: &Path, name: &str, config: impl FnOnce(&str) -> String) -> Self {
        let api = format!("127.0.0.1:{}", free_port());
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config(&api)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_volley"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env("VOLLEY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, api, log }
    }

    /// Waits until `/healthz` answers 200.
    pub async fn ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.get("/healthz").await.is_some_and(|(s, _)| s == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("volley did not start: {}", self.log_text());
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP/1.1 request with a JSON body: the status and the body, `None` when the
    /// process does not answer.
    pub async fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.api).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.api,
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, "").await
    }

    /// `GET path` when it answers 200, as JSON.
    pub async fn json(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(path).await?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Submits a `welcome` campaign to `to`: its job id.
    pub async fn campaign(&self, to: &[String]) -> String {
        let recipients: Vec<serde_json::Value> = to
            .iter()
            .map(|t| serde_json::json!({"to": t, "vars": {"name": "N"}}))
            .collect();
        let body = serde_json::json!({"template": "welcome", "from": "news@example.com", "recipients": recipients});
        let (status, answer) = self
            .request("POST", "/v1/campaigns", &body.to_string())
            .await
            .expect("the API answers");
        assert_eq!(status, 202, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        answer["id"].as_str().unwrap().to_owned()
    }

    /// Waits (at most [`PATIENCE`]) until job `id` is done: the job with its first
    /// recipient.
    pub async fn wait_done(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(job) = self.json(&format!("/v1/jobs/{id}?limit=1")).await
                && job["state"] == "done"
            {
                return job;
            }
            assert!(Instant::now() < deadline, "never done: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal (`TERM`, `KILL`...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most a minute: a stop that hangs is a failure, not a stuck test run)
    /// for the process to end: its exit code and log.
    pub fn wait(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not stop within a minute: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A graceful stop (SIGTERM), waited for; nothing when it already ended.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
            self.wait();
        }
    }

    /// SIGKILL, waited for.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Only our own child, by its PID; nothing to do when it already ended.
        self.kill();
    }
}
