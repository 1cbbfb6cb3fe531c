//! The `volley` binary: `send` from CSV and JSON Lines with `--json` and `--report`,
//! and `check` on good and broken configurations and templates.

use std::path::Path;
use std::process::Command;

use std::time::{Duration, SystemTime};

use volley::queue::{EmbeddedQueue, Queue};
use volley_loadtest::{Sink, SinkConfig};

fn volley() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.env_remove("VOLLEY_LOG");
    cmd
}

/// `volley send --template welcome` with the list, the config and `extra` flags.
fn send(list: &Path, config: &Path, from: &str, extra: &[&str]) -> std::process::Output {
    volley()
        .args(["send", "--template", "welcome", "--from", from])
        .arg("--recipients")
        .arg(list)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .unwrap()
}

fn templates() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("templates")
        .display()
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, relay: std::net::SocketAddr) -> std::path::PathBuf {
    let text = format!(
        "[queue]\npath = {:?}\n[templates]\npath = {:?}\n[relay]\nhost = \"{relay}\"\ntls = \"none\"\n[smtp]\nhelo_name = \"volley.test\"\n",
        dir.join("data").display().to_string(),
        templates()
    );
    write(dir, "volley.toml", &text)
}

#[tokio::test(flavor = "multi_thread")]
async fn send_from_csv_and_json_lines() {
    let sink = Sink::start(SinkConfig {
        capture: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), sink.addrs()[0]);
    let csv = write(
        dir.path(),
        "list.csv",
        "email,name\nann@example.org,Ann\npermfail@example.org,Pat\nbob@example.org,Bob\n",
    );
    let report = dir.path().join("report.jsonl");
    let report_arg = report.display().to_string();
    let out = send(
        &csv,
        &config,
        "News <news@example.com>",
        &["--json", "--max-wait", "5s", "--report", &report_arg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["delivered"].as_u64(), summary["bounced"].as_u64()),
        (Some(2), Some(1)),
        "{summary}"
    );
    assert_eq!(summary["recipients"], 3, "{summary}");
    assert_eq!(summary["job"].as_str().map(str::len), Some(26), "{summary}");
    for key in [
        "deferred",
        "expired",
        "suppressed",
        "elapsed_s",
        "messages_per_second",
    ] {
        assert!(summary.get(key).is_some(), "{key} in {summary}");
    }
    for p in ["p50", "p90", "p99", "p999"] {
        assert!(summary["latency_ms"][p].as_f64().is_some(), "{p}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["to"], "permfail@example.org");
    assert_eq!(lines[1]["outcome"], "bounced");
    assert!(lines[1]["reply"].as_str().unwrap().contains("5.1.1"));
    let messages = sink.messages();
    let ann = messages
        .iter()
        .find(|m| m.rcpt_to == ["ann@example.org"])
        .expect("Ann's message");
    let text = String::from_utf8_lossy(&ann.data);
    assert!(
        text.contains("Welcome aboard, Ann"),
        "the name variable was rendered: {text}"
    );

    let jsonl = write(
        dir.path(),
        "list.jsonl",
        "{\"to\": \"cy@example.org\", \"vars\": {\"name\": \"Cy\"}}\n",
    );
    let out = send(&jsonl, &config, "news@example.com", &["--max-wait", "5s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("delivered 1"), "{text}");
    assert_eq!(sink.stats().messages, 3);
}

#[tokio::test]
async fn send_refuses_bad_input_before_storing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "127.0.0.1:9".parse().unwrap());
    let csv = write(
        dir.path(),
        "bad.csv",
        "email,name\nann@example.org,Ann\nnot-an-address,Bo\n",
    );
    let out = send(&csv, &config, "news@example.com", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The file's line (the header is line 1) and column, said once, on one line.
    assert!(err.contains("bad.csv:3: email: "), "{err}");
    assert_eq!(err.matches("not-an-address").count(), 1, "said once: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let missing = write(dir.path(), "missing.csv", "email\nann@example.org\n");
    let out = send(&missing, &config, "news@example.com", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("name"),
        "a missing variable is named: {err}"
    );
    let good = write(dir.path(), "good.csv", "email,name\nann@example.org,Ann\n");
    let out = send(&good, &config, "news@example.com", &["--pool", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pool") && err.contains("nope"),
        "an unknown egress pool is refused: {err}"
    );
    // Nothing of the refused campaigns reached the queue.
    let queue = EmbeddedQueue::open(&dir.path().join("data"), Duration::from_secs(60))
        .await
        .unwrap();
    let depth = queue.depth(SystemTime::now()).await.unwrap();
    assert_eq!((depth.ready, depth.scheduled, depth.leased), (0, 0, 0));
    assert!(queue.recent_jobs(10).await.unwrap().is_empty());
}

#[test]
fn check_accepts_good_and_names_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), "127.0.0.1:25".parse().unwrap());
    let out = volley()
        .arg("check")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("welcome"));

    let bad_key = write(
        dir.path(),
        "bad.toml",
        "[smtp]\nhelo_name = \"x.test\"\nmax_conections_per_site = 5\n",
    );
    let out = volley()
        .arg("check")
        .arg("--config")
        .arg(&bad_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_conections_per_site"),
        "{err}"
    );

    let broken = dir.path().join("broken-templates");
    std::fs::create_dir_all(broken.join("promo")).unwrap();
    std::fs::write(broken.join("promo/subject.hbs"), "Hi {{name}").unwrap();
    std::fs::write(broken.join("promo/text.hbs"), "text").unwrap();
    let cfg = write(
        dir.path(),
        "broken.toml",
        &format!("[templates]\npath = {:?}\n", broken.display().to_string()),
    );
    let out = volley()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("promo") && err.contains("subject.hbs"),
        "{err}"
    );
}

#[test]
fn check_refuses_unsafe_configurations_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let templates = format!("[templates]\npath = {:?}\n", templates());
    for (key, section) in [
        (
            "unsubscribe.secret",
            "[unsubscribe]\nmailto = \"mailto:leave@example.com?subject={token}\"\n",
        ),
        (
            "unsubscribe.secret",
            "[unsubscribe]\nurl = \"https://example.com/u/{token}\"\nsecret = \"short\"\n",
        ),
        (
            "webhooks.secret",
            "[webhooks]\nurl = \"https://example.com/hook\"\n",
        ),
        ("server.api_keys", "[server]\nlisten = \"0.0.0.0:8025\"\n"),
        (
            "server.allowed_origins",
            "[server]\nallowed_origins = [\"evil\"]\n",
        ),
        ("server.max_connections", "[server]\nmax_connections = 0\n"),
        (
            "server.request_timeout",
            "[server]\nrequest_timeout = \"0s\"\n",
        ),
        ("smtp.max_connections", "[smtp]\nmax_connections = 0\n"),
        ("egress.default_pool", "[egress]\ndefault_pool = \"bulk\"\n"),
        (
            "submission.users",
            "[submission]\nusers = { app = \"plain\" }\n",
        ),
        (
            "submission.tls_key",
            "[submission]\ntls_cert = \"cert.pem\"\n",
        ),
        (
            "submission.trusted_networks",
            "[submission]\ntrusted_networks = [\"everyone\"]\n",
        ),
        ("bounces.secret", "[bounces]\ndomains = [\"b.example\"]\n"),
        (
            "dane.trust_anchor",
            "[dane]\nenabled = true\ntrust_anchor = \"/nonexistent/anchors.zone\"\n",
        ),
        (
            "message.return_path",
            "[bounces]\ndomains = [\"b.example\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
        ),
    ] {
        let cfg = write(dir.path(), "refused.toml", &format!("{templates}{section}"));
        let out = volley()
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section} was accepted");
        assert!(
            err.starts_with(&format!("volley: {key}: ")),
            "{section}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn hash_password_prints_an_argon2id_hash_of_stdin() {
    use std::io::Write;
    let mut child = volley()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let users = volley::inbound::Users::new([("app".to_owned(), hash.trim().to_owned())]);
    let users = users.expect("a usable hash");
    assert!(users.verify("app", "correct horse"));
    assert!(!users.verify("app", "correct horse\n"));
}

#[test]
fn errors_are_said_once_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = volley()
        .args(["check", "--config"])
        .arg(dir.path().join("nowhere.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("volley: cannot read "), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn check_reads_volley_toml_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "127.0.0.1:25".parse().unwrap());
    let out = volley()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("(volley.toml)"),
        "names the file it read: {said}"
    );

    // A typo in ./volley.toml is found without --config.
    write(
        dir.path(),
        "volley.toml",
        "[smtp]
helo_nmae = \"x.test\"\n",
    );
    let out = volley()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("helo_nmae"), "{err}");
}

/// Starts `volley serve` in `dir`, waits for its start line on stderr, and returns it
/// with the child (stopped by the caller, by PID). Its stderr is closed after that
/// line, as when a log pipe goes away: volley must go on and stop cleanly.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = volley()
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(wait) {
            Ok(line) if line.contains("volley is serving") => return (child, line),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("volley serve never said it was serving: {e}");
            }
        }
    }
}

fn stop(mut child: std::process::Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "volley serve exits cleanly on SIGTERM: {status}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_listens_where_told_and_says_which_file_it_read() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "127.0.0.1:25".parse().unwrap());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, line) = serve(dir.path(), &["--listen", &listen], &[]);
    assert!(line.contains(&format!("listen={listen}")), "{line}");
    assert!(line.contains("config=volley.toml"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes into a pipe: {line:?}"
    );
    assert!(std::net::TcpStream::connect(&listen).is_ok());
    stop(child);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, line) = serve(dir.path(), &[], &[("VOLLEY_LISTEN", &listen)]);
    assert!(line.contains(&format!("listen={listen}")), "{line}");
    stop(child);
}

/// An intake-only `serve` sends nothing, yet refuses to start on a delivery setting
/// that cannot work: it would be found only when delivery is switched back on.
#[test]
fn intake_only_serve_still_checks_the_delivery_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "intake.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[templates]\npath = {:?}\n[queue]\npath = {:?}\n\
             [dispatch]\ndeliver = false\n[dane]\nenabled = true\ntrust_anchor = \"/nonexistent/anchors.zone\"\n",
            free_port(),
            templates(),
            dir.path().join("data")
        ),
    );
    let mut child = volley()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("volley serve started with a trust anchor file that does not exist");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("volley: dane.trust_anchor: "), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_leaves_from_the_pool_it_names() {
    let sink = Sink::start(SinkConfig {
        capture: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), sink.addrs()[0]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[egress.pools.news]\naddresses = [{ address = \"127.0.0.24\", helo_name = \"news.volley.test\" }]\n");
    std::fs::write(&config, text).unwrap();
    let csv = write(
        dir.path(),
        "list.csv",
        "email,name\nann@example.org,Ann\nbo@example.org,Bo\n",
    );
    let out = tokio::task::spawn_blocking(move || {
        send(
            &csv,
            &config,
            "news@example.com",
            &["--pool", "news", "--json"],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(m.peer.unwrap().ip().to_string(), "127.0.0.24");
        assert_eq!(m.helo, "news.volley.test");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_domain_says_what_volley_would_do() {
    let records = volley_loadtest::DnsRecords::new()
        .ttl(60)
        .mx("pools.test", 10, "mx1.pools.test")
        .mx("pools.test", 20, "mx2.pools.test")
        .a("mx1.pools.test", "127.0.0.2".parse().unwrap())
        .a("mx2.pools.test", "127.0.0.3".parse().unwrap())
        .null_mx("nomail.test")
        .mx("sts.test", 10, "mx1.pools.test")
        .mx("gmail.test", 5, "gmail-smtp-in.l.google.com")
        .a("gmail-smtp-in.l.google.com", "127.0.0.2".parse().unwrap())
        .txt("_mta-sts.sts.test", "v=STSv1; id=7;")
        .a("mta-sts.sts.test", "127.0.0.30".parse().unwrap());
    let dns = volley_loadtest::DnsServer::start(records).await.unwrap();
    let policies = volley_loadtest::policy_server::PolicyServer::start(
        "127.0.0.30".parse().unwrap(),
        std::collections::HashMap::from([(
            "mta-sts.sts.test".to_owned(),
            volley_loadtest::policy_server::Answer::policy(
                "version: STSv1\nmode: enforce\nmx: *.pools.test\nmax_age: 604800\n",
            ),
        )]),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", policies.ca_pem());
    let config = write(
        dir.path(),
        "volley.toml",
        &format!(
            "[templates]\npath = {:?}\n[dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n[mta_sts]\nport = {}\n[smtp]\nhelo_name = \"volley.test\"\nca_file = {:?}\n[limits.domains]\n\"pools.test\" = \"100/s\"\n[egress.pools.bulk]\naddresses = [{{ address = \"127.0.0.20\", helo_name = \"bulk1.volley.test\" }}, \"127.0.0.21\"]\nwarmup = [[\"2020-01-01\", \"1000/d\"]]\n",
            templates(),
            dns.addr(),
            policies.addr().port(),
            ca.display().to_string()
        ),
    );
    let check = move |args: &[&str]| {
        let mut cmd = volley();
        cmd.arg("check").arg("--config").arg(&config).args(args);
        cmd.output().unwrap()
    };
    let run = |args: Vec<&'static str>| {
        let check = check.clone();
        tokio::task::spawn_blocking(move || check(&args))
    };
    let out = run(vec!["--domain", "pools.test", "--pool", "bulk"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "domain: pools.test",
        "route: direct to its MX hosts",
        "  mx 10 mx1.pools.test: 127.0.0.2:25",
        "  mx 20 mx2.pools.test: 127.0.0.3:25",
        "site: mx1.pools.test,mx2.pools.test via bulk",
        "pool: bulk from 127.0.0.20 (EHLO bulk1.volley.test), 127.0.0.21 (EHLO volley.test)",
        "  warm-up today: at most 1000/d",
        "domain rate 100/s",
        "mta-sts: no policy",
        "provider: none",
        "tls: opportunistic",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let out = run(vec!["--domain", "pools.test"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("site: mx1.pools.test,mx2.pools.test\n")
            && text.contains("pool: default from the system's choice (EHLO volley.test)"),
        "{text}"
    );
    let out = run(vec!["--domain", "sts.test"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "mta-sts: enforce (id 7, max_age 604800s), mx *.pools.test",
        "tls: verify (MTA-STS enforce): encrypted and the certificate checked against the MX host name, or deferred; only to mx1.pools.test",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let out = run(vec!["--domain", "gmail.test"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "provider: google (20 connections for all its sites, 100 messages per connection, rate 0, 2 reply rules)",
        "limits: 20 connections, 100 messages per connection",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let out = run(vec!["--domain", "nomail.test"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("route: none: 5.1.10") && text.contains("(bounced)"),
        "{text}"
    );
    let out = run(vec!["--domain", "pools.test", "--pool", "nope"])
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown egress pool \"nope\""),
        "{err}"
    );
}
