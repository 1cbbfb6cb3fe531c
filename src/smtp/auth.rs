//! SASL for relays: PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195).
//!
//! Only the encodings live here; the exchange runs in the session. Every line we
//! produce is base64, so credentials cannot inject a command.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};

use super::capabilities::{Capabilities, Mechanism};

/// A user name and password for AUTH.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (authentication identity).
    pub username: String,
    /// The password in clear text; left out of the Debug output.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password, whatever logs the config.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from a user and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Picks the mechanism to use: over TLS the simplest one offered (PLAIN, LOGIN,
/// CRAM-MD5); in clear text CRAM-MD5 first, as it keeps the password off the wire.
pub fn choose(caps: &Capabilities, encrypted: bool) -> Option<Mechanism> {
    let order: [Mechanism; 3] = if encrypted {
        [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5]
    } else {
        [Mechanism::CramMd5, Mechanism::Plain, Mechanism::Login]
    };
    order.into_iter().find(|m| caps.has_auth(*m))
}

/// The PLAIN initial response: base64 of `\0user\0password`.
pub fn plain(creds: &Credentials) -> String {
    let mut raw = Vec::with_capacity(creds.username.len() + creds.password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(creds.username.as_bytes());
    raw.push(0);
    raw.extend_from_slice(creds.password.as_bytes());
    B64.encode(raw)
}

/// A base64 line of one LOGIN answer (the user name, then the password).
pub fn login_line(text: &str) -> String {
    B64.encode(text.as_bytes())
}

/// The CRAM-MD5 answer to a base64 challenge: base64 of `user hex(HMAC-MD5(password,
/// challenge))`. `None` when the challenge is not base64.
pub fn cram_md5(creds: &Credentials, challenge_b64: &str) -> Option<String> {
    let challenge = B64.decode(challenge_b64.trim()).ok()?;
    let mut mac = Hmac::<md5::Md5>::new_from_slice(creds.password.as_bytes()).ok()?;
    mac.update(&challenge);
    let digest = mac.finalize().into_bytes();
    let mut answer = creds.username.clone();
    answer.push(' ');
    for byte in digest {
        answer.push_str(&format!("{byte:02x}"));
    }
    Some(B64.encode(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::ReplyParser;

    #[test]
    fn plain_matches_rfc4616() {
        let creds = Credentials::new("tim", "tanstaaftanstaaf");
        assert_eq!(
            B64.decode(plain(&creds)).unwrap(),
            b"\0tim\0tanstaaftanstaaf"
        );
    }

    #[test]
    fn cram_md5_matches_rfc2195_example() {
        let creds = Credentials::new("tim", "tanstaaftanstaaf");
        let challenge = B64.encode("<1896.697170952@postoffice.reston.mci.net>");
        let answer = B64.decode(cram_md5(&creds, &challenge).unwrap()).unwrap();
        assert_eq!(answer, b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert_eq!(cram_md5(&creds, "%%%"), None);
    }

    #[test]
    fn chooses_by_encryption() {
        let reply = ReplyParser::parse_slice(b"250-mx\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n")
            .unwrap()
            .unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert_eq!(choose(&caps, true), Some(Mechanism::Plain));
        assert_eq!(choose(&caps, false), Some(Mechanism::CramMd5));
        assert_eq!(choose(&Capabilities::default(), true), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", Credentials::new("u", "secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
