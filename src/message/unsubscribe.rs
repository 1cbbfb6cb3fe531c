//! List-Unsubscribe (RFC 2369) with one-click unsubscription (RFC 8058), and the
//! tokens that identify a recipient in the unsubscribe URL.
//!
//! A token is self-contained: `base64url(payload || HMAC-SHA256(secret, payload)[..16])`
//! where the payload holds the job and the address. The endpoint recovers both without
//! a lookup, and nobody without the secret can make a token for someone else's address.
//! This module builds headers and checks tokens; serving the endpoint is the HTTP
//! layer's business.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::MessageError;

/// Placeholder for the recipient's token in `url` and `mailto`.
const TOKEN: &str = "{token}";
/// Payload format version: lets the format change without accepting old tokens by
/// accident.
const VERSION: u8 = 1;
/// Truncated tag length: 128 bits is far beyond guessing.
const TAG_LEN: usize = 16;
/// Version byte plus the 4-byte job length.
const HEADER_LEN: usize = 5;
/// A secret shorter than this is refused by [`UnsubscribeConfig::validate`].
const MIN_SECRET: usize = 16;

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
    /// The HMAC key for tokens: at least 16 bytes, kept secret, shared by every
    /// volley process that sends or serves the endpoint.
    pub secret: String,
}

impl Default for UnsubscribeConfig {
    fn default() -> Self {
        Self {
            url: None,
            mailto: None,
            one_click: true,
            secret: String::new(),
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
        let uses_tokens = self.url().is_some() || self.mailto().is_some_and(|m| m.contains(TOKEN));
        if uses_tokens && self.secret.len() < MIN_SECRET {
            return Err(MessageError::Unsubscribe {
                field: "secret",
                reason: format!("must be at least {MIN_SECRET} bytes"),
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

/// Makes and checks unsubscribe tokens with one secret.
#[derive(Clone)]
pub struct UnsubscribeTokens {
    /// The keyed state, computed once and cloned per token.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for UnsubscribeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsubscribeTokens(<secret>)")
    }
}

impl UnsubscribeTokens {
    /// Tokens keyed with `secret` (see [`UnsubscribeConfig::validate`] for its length).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let mac = Hmac::new_from_slice(secret.as_ref()).expect("HMAC takes keys of any length");
        Self { mac }
    }

    /// A URL-safe token carrying `job_id` and `address`.
    pub fn token(&self, job_id: &str, address: &str) -> String {
        let job_len = u32::try_from(job_id.len()).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(HEADER_LEN + job_id.len() + address.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&job_len.to_be_bytes());
        bytes.extend_from_slice(&job_id.as_bytes()[..job_len as usize]);
        bytes.extend_from_slice(address.as_bytes());
        let tag = self.tag(&bytes);
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The job and address a token was made for, or `None` when it was not made with
    /// this secret (forged, altered, truncated) or is malformed.
    pub fn verify(&self, token: &str) -> Option<(String, String)> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let split = bytes.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = bytes.split_at(split);
        let mut mac = self.mac.clone();
        mac.update(payload);
        // Constant time: the comparison must not tell a forger how much was right.
        mac.verify_truncated_left(tag).ok()?;
        let (&version, rest) = payload.split_first()?;
        if version != VERSION || rest.len() < 4 {
            return None;
        }
        let (len, rest) = rest.split_at(4);
        let job_len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        if job_len > rest.len() {
            return None;
        }
        let (job, address) = rest.split_at(job_len);
        Some((
            String::from_utf8(job.to_vec()).ok()?,
            String::from_utf8(address.to_vec()).ok()?,
        ))
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// The List-Unsubscribe header values for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUnsubscribe {
    urls: Vec<String>,
    one_click: bool,
}

impl ListUnsubscribe {
    /// The header for `address` in job `job`: the URL (https first, as RFC 8058 asks)
    /// and the mailto, each with the recipient's token. `None` when neither is
    /// configured.
    pub fn for_recipient(
        cfg: &UnsubscribeConfig,
        tokens: &UnsubscribeTokens,
        job: &str,
        address: &str,
    ) -> Result<Option<Self>, MessageError> {
        cfg.validate()?;
        let needs_token = cfg.url().is_some() || cfg.mailto().is_some_and(|m| m.contains(TOKEN));
        let token = needs_token.then(|| tokens.token(job, address));
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

    const SECRET: &str = "0123456789abcdef-test-secret";

    fn config(url: Option<&str>, mailto: Option<&str>, one_click: bool) -> UnsubscribeConfig {
        UnsubscribeConfig {
            url: url.map(str::to_owned),
            mailto: mailto.map(str::to_owned),
            one_click,
            secret: SECRET.to_owned(),
        }
    }

    #[test]
    fn tokens_round_trip() {
        let tokens = UnsubscribeTokens::new(SECRET);
        for (job, address) in [
            ("job-1", "a@example.com"),
            ("", "x@y"),
            ("01J9Z8", "\"quoted local\"@example.com"),
            ("j", "josé@exämple.com"),
        ] {
            let token = tokens.token(job, address);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(
                tokens.verify(&token),
                Some((job.to_owned(), address.to_owned()))
            );
        }
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let tokens = UnsubscribeTokens::new(SECRET);
        let token = tokens.token("job-1", "a@example.com");
        let other_key = UnsubscribeTokens::new("another secret, same length!");
        assert_eq!(other_key.verify(&token), None);

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
        let mut forged = vec![VERSION, 0, 0, 0, 5];
        forged.extend_from_slice(b"job-1victim@example.com");
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
        let tokens = UnsubscribeTokens::new(SECRET);
        let token = tokens.token("j1", "a@example.com");
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
            let got = ListUnsubscribe::for_recipient(cfg, &tokens, "j1", "a@example.com")
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
