//! SMTP commands and their encoding to wire bytes.
//!
//! Every argument that could come from a user is a validated type ([`Address`],
//! [`HeloName`], [`Argument`]), so encoding cannot fail and cannot emit more than
//! one line per command.

use std::fmt;

use super::capabilities::Mechanism;
use crate::address::{Address, valid_domain};

/// The name a client gives in EHLO/HELO: a domain or an address literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeloName(String);

impl HeloName {
    /// Validates a host name or address literal such as `[192.0.2.1]`.
    pub fn new(name: &str) -> Result<Self, InvalidArgument> {
        if valid_domain(name) && name.is_ascii() {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidArgument(format!("invalid EHLO name {name:?}")))
        }
    }

    /// The validated host name or address literal, as sent in EHLO or HELO.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeloName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A free-form command argument (VRFY, EXPN): printable, no controls, bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argument(String);

impl Argument {
    /// Validates an argument: 1 to 256 octets, no control characters.
    pub fn new(text: &str) -> Result<Self, InvalidArgument> {
        if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
            return Err(InvalidArgument(format!(
                "invalid command argument {text:?}"
            )));
        }
        Ok(Self(text.to_owned()))
    }
}

/// A command argument that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidArgument(pub String);

/// The body type declared on MAIL (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters of MAIL FROM beyond the reverse path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870), when the server declared SIZE.
    pub size: Option<u64>,
    /// `BODY=`, when the content needs it and the server offers it.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// One SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO name`.
    Ehlo(&'a HeloName),
    /// `HELO name`.
    Helo(&'a HeloName),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`; the response is base64, so it is one line.
    Auth(Mechanism, Option<&'a str>),
    /// A base64 line answering a 334 challenge.
    AuthResponse(&'a str),
    /// `MAIL FROM:<path> params`; `None` is the null reverse path `<>`.
    Mail(Option<&'a Address>, MailParams),
    /// `RCPT TO:<path>`.
    Rcpt(&'a Address),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]`; the chunk itself follows separately.
    Bdat {
        /// Exact octet count of the chunk.
        size: usize,
        /// Whether this chunk ends the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `VRFY argument`.
    Vrfy(&'a Argument),
    /// `EXPN argument`.
    Expn(&'a Argument),
    /// `QUIT`.
    Quit,
}

impl Command<'_> {
    /// Appends the command and its CRLF to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ehlo(name) => push_all(out, &[b"EHLO ", name.0.as_bytes()]),
            Self::Helo(name) => push_all(out, &[b"HELO ", name.0.as_bytes()]),
            Self::StartTls => out.extend_from_slice(b"STARTTLS"),
            Self::Auth(mechanism, initial) => {
                push_all(out, &[b"AUTH ", mechanism.name().as_bytes()]);
                if let Some(initial) = initial {
                    push_all(out, &[b" ", initial.as_bytes()]);
                }
            }
            Self::AuthResponse(line) => out.extend_from_slice(line.as_bytes()),
            Self::Mail(from, params) => {
                out.extend_from_slice(b"MAIL FROM:<");
                if let Some(from) = from {
                    out.extend_from_slice(from.as_str().as_bytes());
                }
                out.push(b'>');
                if let Some(size) = params.size {
                    out.extend_from_slice(b" SIZE=");
                    push_number(out, size);
                }
                if params.body == Some(BodyType::EightBitMime) {
                    out.extend_from_slice(b" BODY=8BITMIME");
                }
                if params.smtputf8 {
                    out.extend_from_slice(b" SMTPUTF8");
                }
            }
            Self::Rcpt(to) => push_all(out, &[b"RCPT TO:<", to.as_str().as_bytes(), b">"]),
            Self::Data => out.extend_from_slice(b"DATA"),
            Self::Bdat { size, last } => {
                out.extend_from_slice(b"BDAT ");
                push_number(out, *size as u64);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Rset => out.extend_from_slice(b"RSET"),
            Self::Noop => out.extend_from_slice(b"NOOP"),
            Self::Vrfy(arg) => push_all(out, &[b"VRFY ", arg.0.as_bytes()]),
            Self::Expn(arg) => push_all(out, &[b"EXPN ", arg.0.as_bytes()]),
            Self::Quit => out.extend_from_slice(b"QUIT"),
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The command verb, for errors and logs (never the arguments: they may hold
    /// credentials).
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::StartTls => "STARTTLS",
            Self::Auth(..) | Self::AuthResponse(_) => "AUTH",
            Self::Mail(..) => "MAIL",
            Self::Rcpt(_) => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Vrfy(_) => "VRFY",
            Self::Expn(_) => "EXPN",
            Self::Quit => "QUIT",
        }
    }
}

fn push_all(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(command: Command<'_>) -> String {
        let mut out = Vec::new();
        command.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_command_table() {
        let helo = HeloName::new("mail.example.com").unwrap();
        let from = Address::parse("bounce@example.com").unwrap();
        let to = Address::parse("josé@example.org").unwrap();
        let arg = Argument::new("postmaster").unwrap();
        let params = MailParams {
            size: Some(2048),
            body: Some(BodyType::EightBitMime),
            smtputf8: true,
        };
        let table = [
            (Command::Ehlo(&helo), "EHLO mail.example.com\r\n"),
            (Command::Helo(&helo), "HELO mail.example.com\r\n"),
            (Command::StartTls, "STARTTLS\r\n"),
            (
                Command::Auth(Mechanism::Plain, Some("AGEAYg==")),
                "AUTH PLAIN AGEAYg==\r\n",
            ),
            (Command::Auth(Mechanism::CramMd5, None), "AUTH CRAM-MD5\r\n"),
            (
                Command::Mail(Some(&from), MailParams::default()),
                "MAIL FROM:<bounce@example.com>\r\n",
            ),
            (
                Command::Mail(None, MailParams::default()),
                "MAIL FROM:<>\r\n",
            ),
            (
                Command::Mail(Some(&from), params),
                "MAIL FROM:<bounce@example.com> SIZE=2048 BODY=8BITMIME SMTPUTF8\r\n",
            ),
            (Command::Rcpt(&to), "RCPT TO:<josé@example.org>\r\n"),
            (Command::Data, "DATA\r\n"),
            (
                Command::Bdat {
                    size: 0,
                    last: true,
                },
                "BDAT 0 LAST\r\n",
            ),
            (
                Command::Bdat {
                    size: 18_446,
                    last: false,
                },
                "BDAT 18446\r\n",
            ),
            (Command::Rset, "RSET\r\n"),
            (Command::Noop, "NOOP\r\n"),
            (Command::Vrfy(&arg), "VRFY postmaster\r\n"),
            (Command::Expn(&arg), "EXPN postmaster\r\n"),
            (Command::Quit, "QUIT\r\n"),
        ];
        for (command, expected) in table {
            assert_eq!(wire(command), expected);
        }
    }

    #[test]
    fn validated_arguments_refuse_line_breaks() {
        assert!(HeloName::new("mail.example.com\r\nMAIL FROM:<x@y>").is_err());
        assert!(HeloName::new("").is_err());
        assert!(HeloName::new("[192.0.2.1]").is_ok());
        assert!(Argument::new("user\r\nRCPT TO:<x@y>").is_err());
        assert!(Argument::new("").is_err());
    }
}
