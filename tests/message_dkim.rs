//! DKIM round trips: messages built and signed by volley, verified by mail-auth's own
//! verifier against public keys made by OpenSSL (tests/data, test-only keys), served
//! from a filled TXT cache instead of DNS.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::DkimError;
use mail_auth::hickory_resolver::config::{GOOGLE, ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, Error as AuthError, MessageAuthenticator, Parameters,
    ResolverCache, Txt,
};
use volley::address::Address;
use volley::message::{
    DkimAlgorithm, DkimConfig, DkimSigner, ListUnsubscribe, Mailbox, MessageError, MessageSpec,
    UnsubscribeConfig, UnsubscribeTokens, build_message,
};

const DOMAIN: &str = "example.com";
const SELECTOR: &str = "s1";

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

/// `p=` value made by OpenSSL from the same key, independent of mail-auth.
fn openssl_public_key(file: &str) -> String {
    std::fs::read_to_string(data(file))
        .unwrap()
        .trim()
        .to_owned()
}

fn config(algorithm: DkimAlgorithm, key_file: &str) -> DkimConfig {
    DkimConfig::new(DOMAIN, SELECTOR, data(key_file), algorithm)
}

/// TXT records known up front; mail-auth consults the cache before DNS.
struct TxtRecords(HashMap<Box<str>, Txt>);

impl TxtRecords {
    fn with_key(record: &str) -> Self {
        let key = DomainKey::parse(record.as_bytes()).unwrap();
        let name = format!("{SELECTOR}._domainkey.{DOMAIN}.").into_boxed_str();
        Self(HashMap::from([(name, Txt::from(key))]))
    }
}

impl ResolverCache<Box<str>, Txt> for TxtRecords {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
}

async fn verify(message: &[u8], record: &str) -> DkimResult {
    let mut options = ResolverOpts::default();
    // The cache answers; should it not, fail fast instead of waiting on the network.
    options.timeout = Duration::from_millis(50);
    options.attempts = 1;
    let authenticator =
        MessageAuthenticator::new(ResolverConfig::udp_and_tcp(&GOOGLE), options).unwrap();
    let parsed = AuthenticatedMessage::parse(message).expect("parsable message");
    let records = TxtRecords::with_key(record);
    let outputs = authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&records))
        .await;
    assert_eq!(outputs.len(), 1, "one signature expected");
    outputs[0].result().clone()
}

fn message() -> Vec<u8> {
    let cfg = UnsubscribeConfig {
        url: Some("https://example.com/u/{token}".into()),
        mailto: Some("unsubscribe@example.com".into()),
        one_click: true,
        secret: "0123456789abcdef0123456789abcdef".into(),
        previous_secrets: Vec::new(),
    };
    let tokens = UnsubscribeTokens::new(&cfg.secret, &[]);
    let to = Address::parse("alice@example.org").unwrap();
    let spec = MessageSpec {
        from: Mailbox::named("Exämple News", Address::parse("news@example.com").unwrap()),
        list_unsubscribe: ListUnsubscribe::for_recipient(
            &cfg,
            &tokens,
            token_for("job-1", to.as_str()),
        )
        .unwrap(),
        to: vec![Mailbox::named("Alice", to)],
        cc: vec![],
        reply_to: None,
        subject: "Grüße: this week's picks".into(),
        text: Some("Hello Alice,\n\nline with trailing space \nbye\n".into()),
        html: Some("<p>Hello <b>Alice</b>, ünïcode</p>".into()),
        attachments: vec![],
        headers: vec![("X-Campaign".into(), "spring".into())],
    };
    build_message(&spec, DOMAIN).unwrap()
}

/// Replaces the first occurrence of `from` after the DKIM-Signature header.
fn tamper(signed: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(signed.to_vec()).unwrap();
    let start = text.find("\r\nFrom:").unwrap();
    let (head, rest) = text.split_at(start);
    assert!(rest.contains(from), "{from:?} not in message");
    format!("{head}{}", rest.replacen(from, to, 1)).into_bytes()
}

#[tokio::test]
async fn signatures_verify_and_tampering_fails() {
    let table = [
        (
            DkimAlgorithm::RsaSha256,
            "dkim-test-rsa2048.pem",
            "rsa",
            "dkim-test-rsa2048.pub.b64",
        ),
        (
            DkimAlgorithm::RsaSha256,
            "dkim-test-rsa2048-pkcs1.pem",
            "rsa",
            "dkim-test-rsa2048.pub.b64",
        ),
        (
            DkimAlgorithm::Ed25519Sha256,
            "dkim-test-ed25519.pem",
            "ed25519",
            "dkim-test-ed25519.pub.b64",
        ),
    ];
    for (algorithm, key_file, k, public_key) in table {
        let signer = DkimSigner::from_config(&config(algorithm, key_file)).unwrap();
        assert_eq!(signer.algorithm(), algorithm);
        let record = format!("v=DKIM1; k={k}; p={}", openssl_public_key(public_key));
        let signed = signer.sign(&message()).unwrap();

        let header = String::from_utf8_lossy(
            &signed[..signed.windows(7).position(|w| w == b"\r\nFrom:").unwrap()],
        )
        .into_owned();
        assert!(header.starts_with("DKIM-Signature: v=1; a="), "{header}");
        assert!(header.contains(&format!("a={algorithm}")), "{header}");
        assert!(header.contains("c=relaxed/relaxed"), "{header}");
        assert!(
            header.contains("d=example.com") && header.contains("s=s1"),
            "{header}"
        );
        // Every configured header the message has is signed, in some order.
        let unfolded = header.replace("\r\n\t", "").to_ascii_lowercase();
        let h = unfolded
            .split("h=")
            .nth(1)
            .and_then(|v| v.split(';').next())
            .unwrap();
        let mut signed_names: Vec<&str> = h.split(':').collect();
        signed_names.sort_unstable();
        let mut expected = config(algorithm, key_file).headers;
        expected.iter_mut().for_each(|n| n.make_ascii_lowercase());
        expected.sort_unstable();
        assert_eq!(signed_names, expected, "{header}");
        for line in header.split("\r\n") {
            assert!(line.len() <= 998, "{line}");
        }

        assert_eq!(
            verify(&signed, &record).await,
            DkimResult::Pass,
            "{key_file}"
        );
        // The record the signer itself publishes verifies too.
        assert_eq!(
            verify(&signed, &signer.dns_record()).await,
            DkimResult::Pass,
            "{key_file}"
        );

        // A changed body: the body hash no longer matches.
        let body = tamper(&signed, "bye", "BYE");
        assert_eq!(
            verify(&body, &record).await,
            DkimResult::Neutral(AuthError::Dkim(DkimError::FailedBodyHashMatch)),
            "{key_file}"
        );
        // A changed signed header: the signature no longer matches.
        let subject = tamper(&signed, "Subject: ", "Subject: Re: ");
        assert!(
            matches!(verify(&subject, &record).await, DkimResult::Fail(_)),
            "{key_file}"
        );
        // Relaxed canonicalisation: whitespace changes in transit do not matter.
        let relaxed = tamper(&signed, "MIME-Version: 1.0", "mime-version:  1.0 ");
        assert_eq!(
            verify(&relaxed, &record).await,
            DkimResult::Pass,
            "{key_file}"
        );
        // Someone else's key does not verify it.
        let other = match k {
            "rsa" => format!(
                "v=DKIM1; k=ed25519; p={}",
                openssl_public_key("dkim-test-ed25519.pub.b64")
            ),
            _ => format!(
                "v=DKIM1; k=rsa; p={}",
                openssl_public_key("dkim-test-rsa2048.pub.b64")
            ),
        };
        assert_ne!(
            verify(&signed, &other).await,
            DkimResult::Pass,
            "{key_file}"
        );
    }
}

#[test]
fn dns_record_matches_openssl_for_ed25519() {
    let signer = DkimSigner::from_config(&config(
        DkimAlgorithm::Ed25519Sha256,
        "dkim-test-ed25519.pem",
    ))
    .unwrap();
    assert_eq!(
        signer.dns_record(),
        format!(
            "v=DKIM1; k=ed25519; p={}",
            openssl_public_key("dkim-test-ed25519.pub.b64")
        )
    );
    assert_eq!(signer.dns_name(), "s1._domainkey.example.com");
}

#[test]
fn unusable_keys_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let table: &[(DkimAlgorithm, PathBuf, &str)] = &[
        (
            DkimAlgorithm::RsaSha256,
            data("missing.pem"),
            "cannot read key file",
        ),
        (
            DkimAlgorithm::RsaSha256,
            garbage.clone(),
            "no PEM private key found",
        ),
        (
            DkimAlgorithm::RsaSha256,
            data("dkim-test-ec-p256.pem"),
            "rsa-sha256 needs an RSA key",
        ),
        (
            DkimAlgorithm::RsaSha256,
            data("dkim-test-ed25519.pem"),
            "not a usable RSA key",
        ),
        (
            DkimAlgorithm::Ed25519Sha256,
            data("dkim-test-rsa2048.pem"),
            "not an Ed25519 key",
        ),
        (
            DkimAlgorithm::Ed25519Sha256,
            data("dkim-test-rsa2048-pkcs1.pem"),
            "needs an Ed25519 key in PKCS#8",
        ),
        (
            DkimAlgorithm::Ed25519Sha256,
            data("dkim-test-ec-p256.pem"),
            "needs an Ed25519 key",
        ),
    ];
    for (algorithm, path, expected) in table {
        let mut cfg = config(*algorithm, "unused");
        cfg.key_file = path.clone();
        let err = DkimSigner::from_config(&cfg).unwrap_err();
        assert!(
            matches!(
                err,
                MessageError::DkimKeyRead { .. } | MessageError::DkimKey { .. }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(expected), "{path:?}: {message}");
        assert!(message.contains(path.to_str().unwrap()), "{message}");
    }
}

#[test]
fn signer_is_shareable() {
    fn assert_shared<T: Send + Sync + std::fmt::Debug>() {}
    assert_shared::<DkimSigner>();
}

/// The unsubscribe token's subject: `address` of job `job`, leaving the default list.
fn token_for<'a>(job: &'a str, address: &'a str) -> volley::message::TokenFor<'a> {
    volley::message::TokenFor {
        job,
        list: "default",
        address,
        issued: std::time::SystemTime::now(),
    }
}
