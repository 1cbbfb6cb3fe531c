//! List-Unsubscribe (RFC 2369) with one-click unsubscription (RFC 8058), and the
//! tokens that identify a recipient in the unsubscribe URL.
//!
//! A token is self-contained: `base64url(payload || HMAC-SHA256(secret, payload)[..16])`
//! where the payload holds the job, the list the recipient leaves, the issue time and
//! the address. The endpoint recovers them without a lookup, and nobody without the
//! secret can make a token for someone else's address: whenever an unsubscribe target is
//! configured, a secret of at least 32 bytes is required. Secrets can be rotated: tokens
//! made under a `previous_secrets` entry still verify. This module builds headers and
//! checks tokens; serving the endpoint is the HTTP layer's business.

use std::fmt;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::MessageError;

/// Placeholder for the recipient's token in `url` and `mailto`.
const TOKEN: &str = "{token}";
/// Payload format version: lets the format change without accepting old tokens by
/// accident. Version 2 binds the list and the issue time.
const VERSION: u8 = 2;
/// Truncated tag length: 128 bits is far beyond guessing.
const TAG_LEN: usize = 16;
/// A secret shorter than this is refused by [`UnsubscribeConfig::validate`]: 256 bits.
pub const MIN_SECRET: usize = 32;

/// The `[unsubscribe]` section of the configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// The unsubscribe URL, with `{token}` where the recipient's token goes, e.g.
    /// `https://example.com/unsubscribe/{token}`. Empty or absent: no URL.
    pub url: Option<String>,
    /// A mailto target: an address or a `mailto:` URI, `{token}` allowed (e.g.
    /// `mailto:unsubscribe@example.com?subject={token}`). Empty or absent: none.
    pub mailto: Option<String>,
    /// Add `List-Unsubscribe-Post: List-Unsubscribe=One-Click` when `url` is https.
    /// Default: true.
    pub one_click: bool,
    /// The HMAC key for tokens: at least 32 bytes, kept secret, shared by every
    /// volley process that sends or serves the endpoint. Required whenever `url` or
    /// `mailto` is set.
    pub secret: String,
    /// Secrets used before a rotation: tokens made under them still verify (new tokens
    /// use `secret`). Each at least 32 bytes.
    pub previous_secrets: Vec<String>,
}

impl Default for UnsubscribeConfig {
    fn default() -> Self {
        Self {
            url: None,
            mailto: None,
            one_click: true,
            secret: String::new(),
            previous_secrets: Vec::new(),
        }
    }
}

impl fmt::Debug for UnsubscribeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsubscribeConfig")
            .field("url", &self.url)
            .field("mailto", &self.mailto)
            .field("one_click", &self.one_click)
            .field("secret", &"<redacted>")
            .field("previous_secrets", &self.previous_secrets.len())
            .finish()
    }
}

impl UnsubscribeConfig {
    /// Checks the settings: URIs usable inside `<...>` of a header, `url` with a
    /// `{token}` and an http(s) scheme, a long enough secret when tokens are used.
    pub fn validate(&self) -> Result<(), MessageError> {
        if let Some(url) = self.url() {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || !url.contains(TOKEN) {
                return Err(MessageError::Unsubscribe {
                    field: "url",
                    reason: format!("{url:?} must be an http(s) URL containing {TOKEN}"),
                });
            }
            check_uri("url", url)?;
        }
        if let Some(mailto) = self.mailto() {
            check_uri("mailto", mailto)?;
        }
        let configured = self.url().is_some() || self.mailto().is_some();
        if configured && self.secret.len() < MIN_SECRET {
            return Err(MessageError::Unsubscribe {
                field: "secret",
                reason: format!(
                    "must be at least {MIN_SECRET} bytes whenever url or mailto is set \
                     (it keys the tokens that say who unsubscribes; VOLLEY_UNSUBSCRIBE_SECRET)"
                ),
            });
        }
        if self.previous_secrets.iter().any(|s| s.len() < MIN_SECRET) {
            return Err(MessageError::Unsubscribe {
                field: "previous_secrets",
                reason: format!("each must be at least {MIN_SECRET} bytes"),
            });
        }
        Ok(())
    }

    fn url(&self) -> Option<&str> {
        self.url.as_deref().filter(|u| !u.is_empty())
    }

    fn mailto(&self) -> Option<&str> {
        self.mailto.as_deref().filter(|m| !m.is_empty())
    }
}

/// A URI goes between `<` and `>` in a comma-separated list: refuse what would end it
/// early, split it or start a new header line.
fn check_uri(field: &'static str, uri: &str) -> Result<(), MessageError> {
    let bad = |c: char| !c.is_ascii_graphic() || matches!(c, '<' | '>' | ',' | '"');
    if uri.chars().any(bad) || uri.len() > 500 {
        return Err(MessageError::Unsubscribe {
            field,
            reason: format!(
                "{uri:?}: use at most 500 printable ASCII characters without spaces, '<', '>', ',' or '\"'"
            ),
        });
    }
    Ok(())
}

/// What a genuine token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscription {
    /// The job whose message carried it.
    pub job: String,
    /// The list the recipient leaves.
    pub list: String,
    /// The address that asks to leave the list, as recorded in the token.
    pub address: String,
    /// When the token was made (the message was built).
    pub issued: SystemTime,
}

/// Makes unsubscribe tokens with the current secret and checks them against it and the
/// previous ones.
#[derive(Clone)]
pub struct UnsubscribeTokens {
    /// The keyed states, computed once and cloned per token: the current secret first.
    macs: Vec<Hmac<Sha256>>,
}

impl fmt::Debug for UnsubscribeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsubscribeTokens(<secret>)")
    }
}

impl UnsubscribeTokens {
    /// Tokens keyed with `secret`, still accepting those made with `previous` (see
    /// [`UnsubscribeConfig::validate`] for their length).
    pub fn new(secret: impl AsRef<[u8]>, previous: &[String]) -> Self {
        let mac = |key: &[u8]| Hmac::new_from_slice(key).expect("HMAC takes keys of any length");
        let mut macs = vec![mac(secret.as_ref())];
        macs.extend(previous.iter().map(|p| mac(p.as_bytes())));
        Self { macs }
    }

    /// A URL-safe token for `address` leaving `list`, from a message of `job` built at
    /// `issued`. Fields longer than a byte can count are cut (job ids and list names
    /// are short; a list name is checked at submission).
    pub fn token(&self, job: &str, list: &str, address: &str, issued: SystemTime) -> String {
        let job = &job.as_bytes()[..job.len().min(255)];
        let list = &list.as_bytes()[..list.len().min(255)];
        let mut bytes = Vec::with_capacity(11 + job.len() + list.len() + address.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&(crate::time::unix_ms(issued) / 1000).to_be_bytes());
        for field in [job, list] {
            bytes.push(u8::try_from(field.len()).unwrap_or(u8::MAX));
            bytes.extend_from_slice(field);
        }
        bytes.extend_from_slice(address.as_bytes());
        let tag = self.tag(&bytes);
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// What a token says, or `None` when it was not made with the current or a previous
    /// secret (forged, altered, truncated) or is malformed.
    pub fn verify(&self, token: &str) -> Option<Unsubscription> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let split = bytes.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = bytes.split_at(split);
        // Constant time: the comparison must not tell a forger how much was right.
        let genuine = self.macs.iter().any(|mac| {
            let mut mac = mac.clone();
            mac.update(payload);
            mac.verify_truncated_left(tag).is_ok()
        });
        if !genuine {
            return None;
        }
        let (&version, rest) = payload.split_first()?;
        if version != VERSION || rest.len() < 8 {
            return None;
        }
        let (secs, mut rest) = rest.split_at(8);
        let issued =
            crate::time::from_unix_ms(u64::from_be_bytes(secs.try_into().ok()?).checked_mul(1000)?);
        let mut field = || {
            let (&len, tail) = rest.split_first()?;
            let len = usize::from(len);
            if len > tail.len() {
                return None;
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            String::from_utf8(value.to_vec()).ok()
        };
        let job = field()?;
        let list = field()?;
        Some(Unsubscription {
            job,
            list,
            address: String::from_utf8(rest.to_vec()).ok()?,
            issued,
        })
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac = self.macs[0].clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// Whom an unsubscribe header is for.
#[derive(Clone, Copy, Debug)]
pub struct TokenFor<'a> {
    /// The id of the job whose message carries the header; recorded in the token.
    pub job: &'a str,
    /// The list the recipient would leave.
    pub list: &'a str,
    /// The recipient's address.
    pub address: &'a str,
    /// When the message is built.
    pub issued: SystemTime,
}

/// The List-Unsubscribe header values for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUnsubscribe {
    urls: Vec<String>,
    one_click: bool,
}

impl ListUnsubscribe {
    /// The header for `address` leaving `list` in job `job`: the URL (https first, as
    /// RFC 8058 asks) and the mailto, each with the recipient's token made at `issued`.
    /// `None` when neither is configured.
    pub fn for_recipient(
        cfg: &UnsubscribeConfig,
        tokens: &UnsubscribeTokens,
        recipient: TokenFor<'_>,
    ) -> Result<Option<Self>, MessageError> {
        cfg.validate()?;
        let needs_token = cfg.url().is_some() || cfg.mailto().is_some_and(|m| m.contains(TOKEN));
        let token = needs_token.then(|| {
            tokens.token(
                recipient.job,
                recipient.list,
                recipient.address,
                recipient.issued,
            )
        });
        let fill = |template: &str| match &token {
            Some(token) => template.replace(TOKEN, token),
            None => template.to_owned(),
        };
        let mut urls = Vec::with_capacity(2);
        if let Some(url) = cfg.url() {
            urls.push(fill(url));
        }
        if let Some(mailto) = cfg.mailto() {
            let mailto = fill(mailto);
            urls.push(match mailto.starts_with("mailto:") {
                true => mailto,
                false => format!("mailto:{mailto}"),
            });
        }
        if urls.is_empty() {
            return Ok(None);
        }
        let one_click = cfg.one_click && cfg.url().is_some_and(|u| u.starts_with("https://"));
        Ok(Some(Self { urls, one_click }))
    }

    /// The URIs, in header order, without angle brackets.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Whether `List-Unsubscribe-Post: List-Unsubscribe=One-Click` goes with it.
    pub fn one_click(&self) -> bool {
        self.one_click
    }

    /// The `List-Unsubscribe` value: `<uri>, <uri>`.
    pub fn header_value(&self) -> String {
        let quoted: Vec<String> = self.urls.iter().map(|u| format!("<{u}>")).collect();
        quoted.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test-secret-32b";

    fn config(url: Option<&str>, mailto: Option<&str>, one_click: bool) -> UnsubscribeConfig {
        UnsubscribeConfig {
            url: url.map(str::to_owned),
            mailto: mailto.map(str::to_owned),
            one_click,
            secret: SECRET.to_owned(),
            previous_secrets: Vec::new(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    #[test]
    fn tokens_round_trip() {
        let tokens = UnsubscribeTokens::new(SECRET, &[]);
        for (job, list, address) in [
            ("job-1", "default", "a@example.com"),
            ("", "news", "x@y"),
            ("01J9Z8", "weekly.digest", "\"quoted local\"@example.com"),
            ("j", "default", "josé@exämple.com"),
        ] {
            let token = tokens.token(job, list, address, at(1_800_000_000));
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(
                tokens.verify(&token),
                Some(Unsubscription {
                    job: job.to_owned(),
                    list: list.to_owned(),
                    address: address.to_owned(),
                    issued: at(1_800_000_000),
                })
            );
        }
    }

    #[test]
    fn rotated_secrets_still_verify_old_tokens() {
        let old = UnsubscribeTokens::new(SECRET, &[]);
        let token = old.token("j", "default", "a@example.com", at(1));
        let rotated =
            UnsubscribeTokens::new("a-brand-new-secret-of-32-bytes!!", &[SECRET.to_owned()]);
        assert_eq!(
            rotated.verify(&token).map(|u| u.address),
            Some("a@example.com".into())
        );
        let fresh = rotated.token("j", "default", "a@example.com", at(1));
        assert_eq!(old.verify(&fresh), None, "new tokens use the new secret");
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let tokens = UnsubscribeTokens::new(SECRET, &[]);
        let token = tokens.token("job-1", "default", "a@example.com", at(1));
        let other_key = UnsubscribeTokens::new("another secret, same length!!!!!", &[]);
        assert_eq!(other_key.verify(&token), None);
        // Keyed with an empty secret (what an unconfigured one used to give).
        let empty = UnsubscribeTokens::new("", &[]);
        let forged = empty.token("job-1", "default", "victim@example.com", at(1));
        assert_eq!(tokens.verify(&forged), None);

        // Flip each byte of the decoded token: payload or tag, all must fail.
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 1;
            assert_eq!(
                tokens.verify(&URL_SAFE_NO_PAD.encode(&altered)),
                None,
                "byte {i}"
            );
        }
        // A forger who knows the format but not the secret.
        let mut forged = vec![VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 5];
        forged.extend_from_slice(b"job-1\x07defaultvictim@example.com");
        forged.extend_from_slice(&[0; TAG_LEN]);
        let table = [
            URL_SAFE_NO_PAD.encode(&forged),
            token[..token.len() - 1].to_owned(),
            format!("{token}A"),
            String::new(),
            "!!!".to_owned(),
            "AAAA".to_owned(),
        ];
        for candidate in &table {
            assert_eq!(tokens.verify(candidate), None, "{candidate:?}");
        }
    }

    #[test]
    fn headers_for_a_recipient() {
        let tokens = UnsubscribeTokens::new(SECRET, &[]);
        let recipient = TokenFor {
            job: "j1",
            list: "default",
            address: "a@example.com",
            issued: at(5),
        };
        let token = tokens.token("j1", "default", "a@example.com", at(5));
        let https = "https://ex.com/u/{token}";
        let table: &[(UnsubscribeConfig, Option<(String, bool)>)] = &[
            (
                config(Some(https), Some("unsub@ex.com"), true),
                Some((
                    format!("<https://ex.com/u/{token}>, <mailto:unsub@ex.com>"),
                    true,
                )),
            ),
            (
                config(Some(https), None, false),
                Some((format!("<https://ex.com/u/{token}>"), false)),
            ),
            (
                config(Some("http://ex.com/u/{token}"), None, true),
                Some((format!("<http://ex.com/u/{token}>"), false)),
            ),
            (
                config(None, Some("mailto:u@ex.com?subject={token}"), true),
                Some((format!("<mailto:u@ex.com?subject={token}>"), false)),
            ),
            (config(Some(""), Some(""), true), None),
            (config(None, None, true), None),
        ];
        for (cfg, expected) in table {
            let got = ListUnsubscribe::for_recipient(cfg, &tokens, recipient)
                .unwrap()
                .map(|l| (l.header_value(), l.one_click()));
            assert_eq!(&got, expected, "{cfg:?}");
        }
    }

    #[test]
    fn invalid_settings_are_refused() {
        let short = UnsubscribeConfig {
            secret: "short".into(),
            ..config(Some("https://ex.com/{token}"), None, true)
        };
        let table: &[(UnsubscribeConfig, &str)] = &[
            (
                config(Some("https://ex.com/unsubscribe"), None, true),
                "url",
            ),
            (config(Some("ftp://ex.com/{token}"), None, true), "url"),
            (
                config(Some("https://ex.com/{token}>\r\nBcc: x"), None, true),
                "url",
            ),
            (
                config(Some("https://ex.com/a,b/{token}"), None, true),
                "url",
            ),
            (
                config(None, Some("u@ex.com>, <https://evil"), true),
                "mailto",
            ),
            (short, "secret"),
            (
                UnsubscribeConfig {
                    secret: String::new(),
                    ..config(None, Some("unsubscribe@ex.com"), true)
                },
                "secret",
            ),
            (
                UnsubscribeConfig {
                    previous_secrets: vec!["old".into()],
                    ..config(Some("https://ex.com/{token}"), None, true)
                },
                "previous_secrets",
            ),
        ];
        for (cfg, field) in table {
            match cfg.validate() {
                Err(MessageError::Unsubscribe { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{cfg:?}: {other:?}"),
            }
        }
        let debug = format!("{:?}", config(None, None, true));
        assert!(!debug.contains(SECRET), "{debug}");
    }
}
