//! A real Postfix as the receiving server: it accepts volley's message, fails to deliver
//! it afterwards (the next hop, volley's loadtest sink, refuses `permfail@` with
//! `550 5.1.1`), and sends its own DSN to the VERP return path, which its transport map
//! routes to volley's bounce listener. The recipient must end bounced (async) and
//! suppressed.
//!
//! Needs Debian's postfix and root (Postfix starts as root and drops to its user); `.ci/run`
//! installs it. Outside CI the test is skipped when either is missing.

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Running, test_config};
use serde_json::json;
use volley_loadtest::{Sink, SinkConfig};

/// A Postfix instance with its own configuration, queue and log under a temporary
/// directory, stopped when dropped.
struct Postfix {
    conf: PathBuf,
    log: PathBuf,
}

impl Postfix {
    fn start(dir: &Path, smtpd_port: u16, next_hop: SocketAddr, bounce_port: u16) -> Self {
        let (conf, queue) = (dir.join("conf"), dir.join("queue"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&queue).unwrap();
        let log = dir.join("maillog");
        let main = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = mx.receiver.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = inline:{{ receiver.test=smtp:[{next_ip}]:{next_port}, bounce.volley.test=smtp:[127.0.0.1]:{bounce_port} }}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
maillog_file = {log}
maillog_file_prefixes = {dir}
alias_maps =
alias_database =
",
            queue = queue.display(),
            data = dir.join("data").display(),
            log = log.display(),
            dir = dir.display(),
            next_ip = next_hop.ip(),
            next_port = next_hop.port(),
        );
        std::fs::write(conf.join("main.cf"), main).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp ") && l.contains(" inet ") {
                    format!("127.0.0.1:{smtpd_port} inet n - n - - smtpd")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(conf.join("master.cf"), master + "\n").unwrap();
        let postfix = Self { conf, log };
        let status = Command::new("postfix")
            .arg("-c")
            .arg(&postfix.conf)
            .arg("start")
            .status()
            .unwrap();
        assert!(status.success(), "postfix start: {}", postfix.log_text());
        postfix
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .status();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether Postfix can run here; under CI it must.
fn postfix_usable() -> bool {
    let installed = Path::new("/usr/sbin/postfix").exists();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !(installed && root) {
        assert!(
            std::env::var_os("CI").is_none(),
            "Postfix must be installed (apt-get install postfix) and the tests run as root"
        );
    }
    installed && root
}

#[tokio::test]
async fn a_postfix_dsn_bounces_and_suppresses_the_recipient() {
    if !postfix_usable() {
        return;
    }
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (smtpd_port, bounce_port) = (free_port(), free_port());
    let postfix = Postfix::start(
        &dir.path().join("postfix"),
        smtpd_port,
        sink.addrs()[0],
        bounce_port,
    );
    let toml = format!(
        "[relay]\nhost = \"127.0.0.1:{smtpd_port}\"\ntls = \"none\"\n[message]\nreturn_path = {{ address = \"bounces@bounce.volley.test\", verp = true }}\n[bounces]\nlisten = \"127.0.0.1:{bounce_port}\"\ndomains = [\"bounce.volley.test\"]\nsecret = \"a bounce secret of at least 32 bytes!\"\n"
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let body = json!({"from": "shop@example.com", "to": ["permfail-ann@receiver.test"], "subject": "Hi", "text": "Hello."});
    let id = volley.post("/v1/messages", &body, &[]).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["counts"]["delivered"], 1, "Postfix accepted it: {job}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let suppression = loop {
        let entry = volley
            .get("/v1/suppressions/permfail-ann@receiver.test", &[])
            .await;
        if entry.status == 200 {
            break entry.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no bounce came back; Postfix said:\n{}",
            postfix.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reason = suppression["suppressions"][0]["reason"].as_str().unwrap();
    // The far server's own words, relayed through Postfix's DSN.
    assert_eq!(reason, "bounced later: 550 5.1.1 no such user");
    let events = volley.get("/v1/events", &[]).await.json();
    let late = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["async"] == true)
        .cloned()
        .expect("a late event");
    assert_eq!(
        (late["event"].as_str(), late["to"].as_str()),
        (Some("bounced"), Some("permfail-ann@receiver.test"))
    );
    volley.stop().await;
    drop(postfix);
}
