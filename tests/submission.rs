//! SMTP submission with independent clients: swaks (STARTTLS, AUTH, wrong passwords,
//! relaying without AUTH) and Postfix's smtp-source (many pipelined sessions from a
//! trusted network), each message followed to the sink volley relays to.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Running, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_loadtest::{Sink, SinkConfig};

const PASSWORD: &str = "correct horse battery";

/// An independent client program: its path, or `None` (skip) outside CI. Under CI a
/// missing tool is a failure: `.ci/run` installs swaks and postfix.
fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing (apt-get install swaks postfix)"
        );
        #[allow(clippy::print_stderr, reason = "a skipped test says why")]
        {
            eprintln!("NOTICE: {name} is not installed: skipping");
        }
    }
    found
}

/// A sink, and a volley relaying to it with a submission listener: STARTTLS with a
/// fresh certificate, one user `app`, and `extra` TOML in `[submission]`.
async fn setup(extra: &str) -> (Sink, Running, tempfile::TempDir) {
    let sink = Sink::start(SinkConfig {
        capture: true,
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let hash = volley::inbound::hash_password(PASSWORD);
    let toml = format!(
        "[relay]\nhost = \"{}\"\ntls = \"none\"\n[submission]\nlisten = \"127.0.0.1:0\"\nhostname = \"submit.volley.test\"\ntls_cert = {:?}\ntls_key = {:?}\nusers = {{ app = \"{hash}\" }}\n{extra}",
        sink.addrs()[0],
        cert.display().to_string(),
        key_file.display().to_string(),
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    (sink, volley, dir)
}

/// Runs a client program off the test's runtime (which also runs volley).
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

async fn swaks(volley: &Running, args: &[&str]) -> Option<(bool, String)> {
    let swaks = tool("swaks")?;
    let port = volley.submission.unwrap().port().to_string();
    let mut command = Command::new(swaks);
    command
        .args(["--server", "127.0.0.1", "--port", &port])
        .args(["--helo", "client.test", "--timeout", "20"])
        .args(args);
    let out = run(command).await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn swaks_submits_over_starttls_with_auth_and_bcc_stays_hidden() {
    let (sink, volley, _dir) = setup("").await;
    let Some((ok, transcript)) = swaks(
        &volley,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "app",
            "--auth-password",
            PASSWORD,
            "--from",
            "app@example.com",
            "--to",
            "bob@example.org,hidden@example.net",
            "--header",
            "Subject: via swaks",
            "--header",
            "To: bob@example.org",
            "--header",
            "Bcc: hidden@example.net",
            "--body",
            "Hello from swaks.",
        ],
    )
    .await
    else {
        return;
    };
    assert!(ok, "{transcript}");
    let id = transcript
        .split("queued as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in the 250: {transcript}"))
        .to_owned();
    let job = volley.wait_job(&id, &[], |j| j["state"] == "done").await;
    assert_eq!(job["kind"], "smtp", "{job}");
    assert_eq!(job["counts"]["delivered"], 2, "{job}");
    let copies = sink.messages();
    assert_eq!(copies.len(), 2);
    for copy in copies {
        let text = String::from_utf8_lossy(&copy.data).into_owned();
        assert!(text.contains("Subject: via swaks") && text.contains("Hello from swaks."));
        assert!(
            !text.contains("hidden@") && !text.to_lowercase().contains("\nbcc:"),
            "{text}"
        );
        assert_eq!(copy.mail_from, "app@example.com");
    }
    volley.stop().await;
}

#[tokio::test]
async fn wrong_passwords_and_relaying_without_auth_are_refused() {
    let (sink, volley, _dir) = setup("").await;
    let message = ["--from", "app@example.com", "--to", "bob@example.org"];
    let Some((ok, transcript)) = swaks(
        &volley,
        &[
            &[
                "--tls",
                "--auth",
                "LOGIN",
                "--auth-user",
                "app",
                "--auth-password",
                "guess",
            ][..],
            &message[..],
        ]
        .concat(),
    )
    .await
    else {
        return;
    };
    assert!(!ok && transcript.contains("535 5.7.8"), "{transcript}");
    let (ok, transcript) = swaks(&volley, &[&["--tls"][..], &message[..]].concat())
        .await
        .unwrap();
    assert!(!ok && transcript.contains("530 5.7.0"), "{transcript}");
    let (ok, transcript) = swaks(&volley, &message).await.unwrap();
    assert!(!ok && transcript.contains("530 5.7.0"), "{transcript}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.stats().messages, 0, "nothing relayed");
    volley.stop().await;
}

/// Reads replies until one whose fourth byte is a space (the last line of a reply).
async fn reply(stream: &mut TcpStream) -> String {
    let mut text = String::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).await.unwrap();
        text.push(char::from(byte[0]));
        if text.ends_with("\r\n") {
            let last = text.trim_end().rsplit("\r\n").next().unwrap_or("");
            if last.as_bytes().get(3) == Some(&b' ') {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn no_password_in_clear_text_and_no_smuggled_message() {
    let (sink, volley, _dir) = setup("trusted_networks = [\"127.0.0.1\"]\n").await;
    let mut s = TcpStream::connect(volley.submission.unwrap())
        .await
        .unwrap();
    assert!(reply(&mut s).await.starts_with("220 submit.volley.test"));
    s.write_all(b"EHLO c\r\n").await.unwrap();
    let ehlo = reply(&mut s).await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    s.write_all(b"AUTH PLAIN AGFwcABndWVzcw==\r\n")
        .await
        .unwrap();
    assert!(reply(&mut s).await.starts_with("538 5.7.11"));
    // A trusted client: a message hiding a second one behind bare line ends.
    s.write_all(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        .await
        .unwrap();
    for expected in ["250", "250", "354"] {
        assert!(reply(&mut s).await.starts_with(expected));
    }
    s.write_all(b"From: app@example.com\r\n\r\nhi\n.\nMAIL FROM:<x@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n.\r\n")
        .await
        .unwrap();
    let refused = reply(&mut s).await;
    assert!(refused.starts_with("550 5.6.0"), "{refused}");
    s.write_all(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        .await
        .unwrap();
    for expected in ["250", "250", "354"] {
        assert!(reply(&mut s).await.starts_with(expected));
    }
    s.write_all(b"From: app@example.com\r\nSubject: fine\r\n\r\n..dotted\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    let stored = reply(&mut s).await;
    assert!(stored.starts_with("250 2.0.0 queued as "), "{stored}");
    wait_for("one message at the sink", || sink.stats().messages == 1).await;
    let copy = &sink.messages()[0];
    assert_eq!(copy.rcpt_to, ["bob@example.org"]);
    let text = String::from_utf8_lossy(&copy.data);
    assert!(
        text.contains("\r\n.dotted\r\n") && text.contains("Message-ID: <"),
        "{text}"
    );
    volley.stop().await;
}

#[tokio::test]
async fn smtp_source_sessions_from_a_trusted_network_are_all_delivered() {
    let Some(smtp_source) = tool("smtp-source") else {
        return;
    };
    let (sink, volley, _dir) = setup("trusted_networks = [\"127.0.0.0/8\"]\n").await;
    let target = volley.submission.unwrap().to_string();
    let mut command = Command::new(smtp_source);
    command
        .args([
            "-s",
            "5",
            "-m",
            "60",
            "-l",
            "2048",
            "-f",
            "load@example.com",
        ])
        .args(["-t", "rcpt@example.org", &target]);
    let out = run(command).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("sixty messages at the sink", || sink.stats().messages == 60).await;
    let jobs = volley.get("/v1/dashboard/jobs?limit=100", &[]).await.json();
    let jobs = jobs["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 60);
    assert!(jobs.iter().all(|j| j["kind"] == "smtp"));
    volley.stop().await;
}

#[tokio::test]
async fn submitted_mail_leaves_from_the_submission_pool() {
    let (sink, volley, _dir) = setup(
        "trusted_networks = [\"127.0.0.1\"]\npool = \"relayed\"\n[egress.pools.relayed]\naddresses = [\"127.0.0.23\"]\n",
    )
    .await;
    let mut s = TcpStream::connect(volley.submission.unwrap())
        .await
        .unwrap();
    assert!(reply(&mut s).await.starts_with("220"));
    s.write_all(b"EHLO c\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        .await
        .unwrap();
    for expected in ["250", "250", "250", "354"] {
        assert!(reply(&mut s).await.starts_with(expected));
    }
    s.write_all(b"From: app@example.com\r\nSubject: pooled\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert!(reply(&mut s).await.starts_with("250 2.0.0 queued as "));
    wait_for("one message at the sink", || sink.stats().messages == 1).await;
    let peer = sink.messages()[0].peer.unwrap().ip();
    assert_eq!(peer.to_string(), "127.0.0.23");
    volley.stop().await;
}
