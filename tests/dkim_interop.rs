//! DKIM signatures checked by an independent verifier (Python's dkimpy), over many
//! messages so that header folding lands in every position: RSA, Ed25519, and both on
//! one message (two `[[dkim]]` keys). Needs `python3` with
//! `dkimpy` and `pynacl` (`.ci/run` installs them); with `CI` set their absence is
//! a failure, otherwise the test says so and returns.

// Outside CI a missing verifier skips the test, saying so on stderr.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::process::Command;

use volley::address::Address;
use volley::message::{DkimAlgorithm, DkimConfig, DkimSigner, Mailbox, MessageSpec, build_message};

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn dkimpy_verifies_our_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let signers = [
        DkimSigner::from_config(&DkimConfig::new(
            "example.com",
            "s1",
            data("dkim-test-rsa2048.pem"),
            DkimAlgorithm::RsaSha256,
        ))
        .unwrap(),
        DkimSigner::from_config(&DkimConfig::new(
            "example.com",
            "s1",
            data("dkim-test-ed25519.pem"),
            DkimAlgorithm::Ed25519Sha256,
        ))
        .unwrap(),
    ];
    // Both keys at once, as `[[dkim]]` twice: one RSA and one Ed25519 signature.
    let dual = volley::message::load_signers(&[
        DkimConfig::new(
            "example.com",
            "rsa",
            data("dkim-test-rsa2048.pem"),
            DkimAlgorithm::RsaSha256,
        ),
        DkimConfig::new(
            "example.com",
            "ed",
            data("dkim-test-ed25519.pem"),
            DkimAlgorithm::Ed25519Sha256,
        ),
    ])
    .unwrap();
    let mut n = 0;
    let keys: [&[DkimSigner]; 3] = [&signers[..1], &signers[1..], &dual];
    for (k, signers) in keys.iter().enumerate() {
        for i in 0..40 {
            let spec = MessageSpec {
                from: Mailbox::named("News", Address::parse("news@example.com").unwrap()),
                to: vec![Mailbox::new(
                    Address::parse(&format!("{}@example.org", "r".repeat(1 + i))).unwrap(),
                )],
                cc: Vec::new(),
                reply_to: None,
                subject: format!("Issue {i} {}", "x".repeat(i * 3)),
                // Some with bare CRs (old Mac line ends, a pasted receipt): they must be
                // mended before signing, or the receiver hashes other line breaks.
                text: Some(format!(
                    "Hello,\n\n{}\n.\nBye{}",
                    "line of text ".repeat(i),
                    if i % 4 == 1 { "\rTotal:\r12 EUR\r" } else { "" }
                )),
                html: (i % 2 == 0).then(|| format!("<p>Hello {i}</p>")),
                attachments: Vec::new(),
                headers: vec![("X-Seq".into(), i.to_string())],
                list_unsubscribe: None,
            };
            let built = build_message(&spec, "example.com").unwrap();
            let signed = volley::message::sign_all(signers, &built).unwrap();
            let count = String::from_utf8_lossy(&signed)
                .lines()
                .filter(|l| l.starts_with("DKIM-Signature:"))
                .count();
            assert_eq!(count, signers.len());
            // What is signed is what goes on the wire: no bare CR or LF for the SMTP
            // encoder to mend after the signature was made.
            let bare = signed.iter().enumerate().any(|(j, b)| {
                (*b == b'\r' && signed.get(j + 1) != Some(&b'\n'))
                    || (*b == b'\n' && (j == 0 || signed[j - 1] != b'\r'))
            });
            assert!(!bare, "message {i} has a bare line end");
            std::fs::write(dir.path().join(format!("{k}-{i:02}.eml")), signed).unwrap();
            n += 1;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dkim_verify.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .arg(data("dkim-test-rsa2048.pub.b64"))
        .arg(data("dkim-test-ed25519.pub.b64"))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: python3 is not available ({e})");
            return;
        }
        Err(e) => panic!("python3 is required in CI: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(3) {
        assert!(
            std::env::var_os("CI").is_none(),
            "dkimpy is required in CI: {stdout}"
        );
        eprintln!("skipping: {stdout}");
        return;
    }
    assert!(
        output.status.success(),
        "dkimpy rejected signatures:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(" ok")).count(),
        n,
        "{stdout}"
    );
}
