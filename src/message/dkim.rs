//! DKIM signing (RFC 6376; Ed25519 per RFC 8463) with mail-auth, relaxed/relaxed.
//!
//! The key is loaded once from a PEM file — PKCS#8 (`BEGIN PRIVATE KEY`) for both
//! algorithms, or PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA — and every message is
//! signed with it. The signer also renders the DNS TXT record that publishes the
//! public key, so that `volley check` can show what to publish.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner as Signer, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::MessageError;
use super::headers::has_line_break;
use crate::address::Address;

/// The DKIM signing algorithm (`a=`), chosen by `dkim.algorithm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// RSA with SHA-256 (`rsa-sha256`): understood by every verifier. The default.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (`ed25519-sha256`, RFC 8463): small and fast, but not
    /// verified everywhere yet; usually added next to an RSA signature.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::Ed25519Sha256 => "ed25519-sha256",
        })
    }
}

/// The `[dkim]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// The private key, PEM.
    pub key_file: PathBuf,
    /// Default: `rsa-sha256`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// The headers to sign, when present. Default: From, To, Subject, Date,
    /// Message-ID, MIME-Version, Content-Type, List-Unsubscribe,
    /// List-Unsubscribe-Post.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
}

impl DkimConfig {
    /// Settings that sign the default headers.
    pub fn new(
        domain: impl Into<String>,
        selector: impl Into<String>,
        key_file: impl Into<PathBuf>,
        algorithm: DkimAlgorithm,
    ) -> Self {
        Self {
            domain: domain.into(),
            selector: selector.into(),
            key_file: key_file.into(),
            algorithm,
            headers: default_headers(),
        }
    }
}

/// mail-auth may fold the header right before the `;` that ends the `b=` value
/// (`...==\r\n\t;`). That is valid (the `b=` value is hashed with its surrounding
/// whitespace removed), but widely used verifiers such as dkimpy keep whitespace
/// before the `;` when they blank the value, and then fail the signature. Moving
/// the `;` up against the value changes nothing that was signed.
fn tighten_final_semicolon(header: &mut Vec<u8>) {
    const FOLDED_END: &[u8] = b"\r\n\t;\r\n";
    if header.ends_with(FOLDED_END) {
        header.truncate(header.len() - FOLDED_END.len());
        header.extend_from_slice(b";\r\n");
    }
}

/// The headers signed by default; RFC 8058 requires both List-Unsubscribe headers to
/// be covered for one-click unsubscription to be honoured.
fn default_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .map(str::to_owned)
    .to_vec()
}

enum Key {
    Rsa(Signer<RsaKey<Sha256>, Done>),
    Ed25519(Signer<Ed25519Key, Done>),
}

/// Signs messages with one key. `Send + Sync`: share it through an `Arc`.
pub struct DkimSigner {
    key: Key,
    domain: String,
    selector: String,
    /// The public key as published in DNS (`p=`), base64.
    public_key: String,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// Checks the settings and loads the key.
    pub fn from_config(config: &DkimConfig) -> Result<Self, MessageError> {
        check_config(config)?;
        let path = &config.key_file;
        let pem = std::fs::read(path).map_err(|source| MessageError::DkimKeyRead {
            path: path.clone(),
            source,
        })?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_error(path, format!(
            "no PEM private key found ({e}); expected BEGIN PRIVATE KEY (PKCS#8) or, for RSA, BEGIN RSA PRIVATE KEY (PKCS#1)"
        )))?;
        let (key, public_key) = match config.algorithm {
            DkimAlgorithm::RsaSha256 => {
                let key = rsa_key(path, der)?;
                let public = key.public_key();
                (Key::Rsa(signer(key, config)), public)
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let key = ed25519_key(path, der)?;
                let public = key.public_key();
                (Key::Ed25519(signer(key, config)), public)
            }
        };
        Ok(Self {
            key,
            domain: config.domain.clone(),
            selector: config.selector.clone(),
            public_key: STANDARD.encode(public_key),
        })
    }

    /// The message with a `DKIM-Signature` header prepended.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MessageError> {
        sign_all(std::slice::from_ref(self), message)
    }

    /// Appends this key's `DKIM-Signature` header for `message` to `out`.
    fn write_signature(&self, message: &[u8], out: &mut Vec<u8>) -> Result<(), MessageError> {
        let signature = match &self.key {
            Key::Rsa(signer) => signer.sign(message),
            Key::Ed25519(signer) => signer.sign(message),
        }
        .map_err(|e| MessageError::DkimSign {
            reason: e.to_string(),
        })?;
        // The header just written is the end of `out`: tightened there, in place.
        signature.write_header(out);
        tighten_final_semicolon(out);
        Ok(())
    }

    /// The algorithm of the loaded key.
    pub fn algorithm(&self) -> DkimAlgorithm {
        match self.key {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256,
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// Where the public key must be published: `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish at [`dns_name`](Self::dns_name).
    pub fn dns_record(&self) -> String {
        let k = match self.algorithm() {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key)
    }
}

/// The message with one `DKIM-Signature` header per key prepended, in the keys' order:
/// each signs the message as built (none covers another's signature), as large senders
/// sign with RSA for every verifier and Ed25519 for those that know it (RFC 8463).
pub fn sign_all(signers: &[DkimSigner], message: &[u8]) -> Result<Vec<u8>, MessageError> {
    let mut signed = Vec::with_capacity(message.len() + 600 * signers.len());
    for signer in signers {
        signer.write_signature(message, &mut signed)?;
    }
    signed.extend_from_slice(message);
    Ok(signed)
}

/// The `[dkim]` keys: one table (`[dkim]`) or several (`[[dkim]]`, e.g. an RSA and an
/// Ed25519 key, each with its own selector).
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DkimConfig>, D::Error> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<DkimConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a [dkim] table or [[dkim]] tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let one = DkimConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            Ok(vec![one])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(Keys)
}

/// Loads every configured key; two keys may not share a selector of one domain (they
/// would need the same DNS record).
pub fn load_signers(configs: &[DkimConfig]) -> Result<Vec<DkimSigner>, MessageError> {
    for (i, a) in configs.iter().enumerate() {
        if configs[..i].iter().any(|b| {
            a.domain.eq_ignore_ascii_case(&b.domain) && a.selector.eq_ignore_ascii_case(&b.selector)
        }) {
            return Err(MessageError::DkimConfig {
                field: "selector",
                reason: format!(
                    "two keys use {}._domainkey.{}; give each key its own selector",
                    a.selector, a.domain
                ),
            });
        }
    }
    configs.iter().map(DkimSigner::from_config).collect()
}

fn signer<T: SigningKey>(key: T, config: &DkimConfig) -> Signer<T, Done> {
    Signer::from_key(key)
        .domain(config.domain.as_str())
        .selector(config.selector.as_str())
        .headers(config.headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

fn rsa_key(path: &Path, der: PrivateKeyDer<'_>) -> Result<RsaKey<Sha256>, MessageError> {
    if !matches!(der, PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_)) {
        return Err(key_error(
            path,
            "rsa-sha256 needs an RSA key in PKCS#8 or PKCS#1",
        ));
    }
    RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| key_error(path, format!("not a usable RSA key for rsa-sha256: {e}")))
}

fn ed25519_key(path: &Path, der: PrivateKeyDer<'_>) -> Result<Ed25519Key, MessageError> {
    let PrivateKeyDer::Pkcs8(der) = der else {
        return Err(key_error(
            path,
            "ed25519-sha256 needs an Ed25519 key in PKCS#8 (BEGIN PRIVATE KEY)",
        ));
    };
    // OpenSSL writes PKCS#8 v1 (the seed alone); ring's strict parser wants v2 (with
    // the public key). The lenient one takes both and derives the public key.
    Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
        .map_err(|e| key_error(path, format!("not an Ed25519 key for ed25519-sha256: {e}")))
}

fn key_error(path: &Path, reason: impl Into<String>) -> MessageError {
    MessageError::DkimKey {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The domain and selector are written into the signature as they are: refuse what
/// would break its tag list or the header.
fn check_config(config: &DkimConfig) -> Result<(), MessageError> {
    let invalid = |field: &'static str, reason: String| MessageError::DkimConfig { field, reason };
    if Address::parse(&format!("x@{}", config.domain)).is_err() || !config.domain.is_ascii() {
        let reason = format!("{:?} is not an ASCII domain name", config.domain);
        return Err(invalid("domain", reason));
    }
    let selector_ok = !config.selector.is_empty()
        && config.selector.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !selector_ok {
        let reason = format!("{:?} is not a DNS label (or labels)", config.selector);
        return Err(invalid("selector", reason));
    }
    let bad_header = config.headers.iter().find(|h| {
        h.is_empty()
            || has_line_break(h)
            || h.bytes().any(|b| !(33..=126).contains(&b) || b == b':')
    });
    if let Some(header) = bad_header {
        return Err(invalid(
            "headers",
            format!("{header:?} is not a header name"),
        ));
    }
    if !config
        .headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("from"))
    {
        let reason = "must include From (RFC 6376 section 5.4)".to_owned();
        return Err(invalid("headers", reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(domain: &str, selector: &str, headers: &[&str]) -> DkimConfig {
        DkimConfig {
            domain: domain.into(),
            selector: selector.into(),
            key_file: PathBuf::from("/nonexistent/key.pem"),
            algorithm: DkimAlgorithm::RsaSha256,
            headers: headers.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn settings_are_checked_before_the_key_is_read() {
        let table: &[(DkimConfig, &str)] = &[
            (
                config("example.com", "s1", &["From"]),
                "cannot read key file",
            ),
            (config("exa mple.com", "s1", &["From"]), "dkim: domain"),
            (config("example.com; x=1", "s1", &["From"]), "dkim: domain"),
            (
                config("example.com", "s1; d=evil.com", &["From"]),
                "dkim: selector",
            ),
            (config("example.com", "", &["From"]), "dkim: selector"),
            (config("example.com", "s1", &["To"]), "must include From"),
            (
                config("example.com", "s1", &["From", "Sub:ject"]),
                "dkim: headers",
            ),
        ];
        for (cfg, expected) in table {
            let err = DkimSigner::from_config(cfg).unwrap_err().to_string();
            assert!(err.contains(expected), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn config_defaults_and_algorithm_names() {
        let cfg: DkimConfig =
            serde_json::from_str(r#"{"domain": "ex.com", "selector": "s1", "key_file": "k.pem"}"#)
                .unwrap();
        assert_eq!(cfg.algorithm, DkimAlgorithm::RsaSha256);
        assert_eq!(cfg.headers, default_headers());
        for (name, algorithm) in [
            ("rsa-sha256", DkimAlgorithm::RsaSha256),
            ("ed25519-sha256", DkimAlgorithm::Ed25519Sha256),
        ] {
            let parsed: DkimAlgorithm = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!((parsed, parsed.to_string()), (algorithm, name.to_owned()));
        }
        assert!(serde_json::from_str::<DkimAlgorithm>("\"rsa-sha1\"").is_err());
    }
}
