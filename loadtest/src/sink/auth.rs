//! SASL for the sink: PLAIN, LOGIN and CRAM-MD5 exchanges, as a small state machine that the
//! session drives one line at a time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::Md5;

/// An exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// PLAIN without an initial response: waiting for the credentials.
    Plain,
    /// LOGIN: waiting for the user name.
    LoginUser,
    /// LOGIN: waiting for the password of this user.
    LoginPass { user: String },
    /// CRAM-MD5: waiting for `user hex-digest` of this challenge.
    CramMd5 { challenge: String },
}

/// The result of one step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this `334` line and wait for the client's answer.
    Challenge(String, Pending),
    /// Authenticated as this user.
    Success(String),
    /// Wrong credentials.
    Failure,
    /// The client sent `*`.
    Cancelled,
    /// The client's answer was not valid base64 or not in the mechanism's format.
    Malformed,
    /// Mechanism not offered.
    Unsupported,
}

/// The configured account.
pub(crate) struct Credentials<'a> {
    pub user: &'a str,
    pub pass: &'a str,
}

/// Starts an exchange for `AUTH <mechanism> [initial]`. `nonce` makes CRAM-MD5 challenges
/// unique.
pub(crate) fn start(
    mechanism: &str,
    initial: Option<&str>,
    creds: &Credentials<'_>,
    hostname: &str,
    nonce: u64,
) -> Step {
    if mechanism.eq_ignore_ascii_case("PLAIN") {
        match initial {
            Some(response) => plain(response, creds),
            None => Step::Challenge("334 ".to_owned(), Pending::Plain),
        }
    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
        match initial {
            Some(response) => respond(Pending::LoginUser, response, creds),
            None => Step::Challenge("334 VXNlcm5hbWU6".to_owned(), Pending::LoginUser),
        }
    } else if mechanism.eq_ignore_ascii_case("CRAM-MD5") {
        if initial.is_some() {
            // CRAM-MD5 is server-first; an initial response is a protocol error.
            return Step::Malformed;
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let challenge = format!("<{nonce}.{secs}@{hostname}>");
        let line = format!("334 {}", STANDARD.encode(&challenge));
        Step::Challenge(line, Pending::CramMd5 { challenge })
    } else {
        Step::Unsupported
    }
}

/// Continues an exchange with the client's answer line.
pub(crate) fn respond(pending: Pending, line: &str, creds: &Credentials<'_>) -> Step {
    if line == "*" {
        return Step::Cancelled;
    }
    match pending {
        Pending::Plain => plain(line, creds),
        Pending::LoginUser => match decode_text(line) {
            Some(user) => {
                Step::Challenge("334 UGFzc3dvcmQ6".to_owned(), Pending::LoginPass { user })
            }
            None => Step::Malformed,
        },
        Pending::LoginPass { user } => match decode(line) {
            Some(pass) => verdict(user == creds.user && pass == creds.pass.as_bytes(), creds),
            None => Step::Malformed,
        },
        Pending::CramMd5 { challenge } => {
            let Some(answer) = decode_text(line) else {
                return Step::Malformed;
            };
            let Some((user, digest)) = answer.rsplit_once(' ') else {
                return Step::Malformed;
            };
            let Ok(mut mac) = Hmac::<Md5>::new_from_slice(creds.pass.as_bytes()) else {
                return Step::Malformed;
            };
            mac.update(challenge.as_bytes());
            let expected = hex(&mac.finalize().into_bytes());
            verdict(
                user == creds.user && digest.eq_ignore_ascii_case(&expected),
                creds,
            )
        }
    }
}

/// PLAIN: `authzid NUL authcid NUL passwd`, base64 encoded; `=` stands for an empty response.
fn plain(response: &str, creds: &Credentials<'_>) -> Step {
    let Some(decoded) = decode(response) else {
        return Step::Malformed;
    };
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Malformed;
    };
    let user = creds.user.as_bytes();
    verdict(
        (authzid.is_empty() || authzid == user)
            && authcid == user
            && passwd == creds.pass.as_bytes(),
        creds,
    )
}

fn verdict(ok: bool, creds: &Credentials<'_>) -> Step {
    if ok {
        Step::Success(creds.user.to_owned())
    } else {
        Step::Failure
    }
}

fn decode(response: &str) -> Option<Vec<u8>> {
    if response == "=" {
        return Some(Vec::new());
    }
    STANDARD.decode(response.trim()).ok()
}

fn decode_text(response: &str) -> Option<String> {
    String::from_utf8(decode(response)?).ok()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: Credentials<'static> = Credentials {
        user: "alice",
        pass: "secret",
    };

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain_initial_response() {
        let ok = b64(b"\0alice\0secret");
        assert_eq!(
            start("plain", Some(&ok), &CREDS, "h", 1),
            Step::Success("alice".into())
        );
        let with_authzid = b64(b"alice\0alice\0secret");
        assert_eq!(
            start("PLAIN", Some(&with_authzid), &CREDS, "h", 1),
            Step::Success("alice".into())
        );
        let wrong = b64(b"\0alice\0nope");
        assert_eq!(start("PLAIN", Some(&wrong), &CREDS, "h", 1), Step::Failure);
        let other_authzid = b64(b"bob\0alice\0secret");
        assert_eq!(
            start("PLAIN", Some(&other_authzid), &CREDS, "h", 1),
            Step::Failure
        );
        assert_eq!(start("PLAIN", Some("!!"), &CREDS, "h", 1), Step::Malformed);
        assert_eq!(start("PLAIN", Some("="), &CREDS, "h", 1), Step::Malformed);
        let extra = b64(b"\0alice\0secret\0x");
        assert_eq!(
            start("PLAIN", Some(&extra), &CREDS, "h", 1),
            Step::Malformed
        );
    }

    #[test]
    fn plain_with_challenge_and_cancel() {
        let Step::Challenge(line, pending) = start("PLAIN", None, &CREDS, "h", 1) else {
            panic!("expected a challenge");
        };
        assert_eq!(line, "334 ");
        assert_eq!(respond(pending.clone(), "*", &CREDS), Step::Cancelled);
        assert_eq!(
            respond(pending, &b64(b"\0alice\0secret"), &CREDS),
            Step::Success("alice".into())
        );
    }

    #[test]
    fn login() {
        let Step::Challenge(line, pending) = start("LOGIN", None, &CREDS, "h", 1) else {
            panic!("expected a challenge");
        };
        assert_eq!(line, "334 VXNlcm5hbWU6");
        let Step::Challenge(line, pending) = respond(pending, &b64(b"alice"), &CREDS) else {
            panic!("expected a challenge");
        };
        assert_eq!(line, "334 UGFzc3dvcmQ6");
        assert_eq!(
            respond(pending.clone(), &b64(b"secret"), &CREDS),
            Step::Success("alice".into())
        );
        assert_eq!(respond(pending, &b64(b"wrong"), &CREDS), Step::Failure);
    }

    #[test]
    fn cram_md5() {
        let Step::Challenge(line, pending) = start("CRAM-MD5", None, &CREDS, "sink.test", 7) else {
            panic!("expected a challenge");
        };
        let challenge = STANDARD.decode(&line[4..]).unwrap();
        assert!(challenge.starts_with(b"<7."));
        assert!(challenge.ends_with(b"@sink.test>"));
        let mut mac = Hmac::<Md5>::new_from_slice(b"secret").unwrap();
        mac.update(&challenge);
        let digest = hex(&mac.finalize().into_bytes());
        let answer = b64(format!("alice {digest}").as_bytes());
        assert_eq!(
            respond(pending.clone(), &answer, &CREDS),
            Step::Success("alice".into())
        );
        let wrong = b64(b"alice 00000000000000000000000000000000");
        assert_eq!(respond(pending.clone(), &wrong, &CREDS), Step::Failure);
        assert_eq!(respond(pending, &b64(b"nospace"), &CREDS), Step::Malformed);
    }

    #[test]
    fn rfc2195_example_digest() {
        let mut mac = Hmac::<Md5>::new_from_slice(b"tanstaaftanstaaf").unwrap();
        mac.update(b"<1896.697170952@postoffice.reston.mci.net>");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
    }

    #[test]
    fn unknown_mechanism() {
        assert_eq!(start("XOAUTH2", None, &CREDS, "h", 1), Step::Unsupported);
    }
}
