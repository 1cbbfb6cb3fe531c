//! What a server offers, read from its EHLO reply (RFC 5321 section 4.1.1.1).

use super::reply::Reply;

/// SASL mechanisms volley can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616: user and password in one base64 line.
    Plain,
    /// The old two-prompt exchange most relays still offer.
    Login,
    /// RFC 2195: challenge-response; the password never crosses the wire.
    CramMd5,
}

impl Mechanism {
    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Plain => 1,
            Self::Login => 2,
            Self::CramMd5 => 4,
        }
    }
}

/// Extensions as bit flags; see the constants on [`Capabilities`].
type Flags = u16;

/// The extensions a server advertised. An empty value means "plain RFC 5321" (the
/// server answered HELO, or nothing we know).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    flags: Flags,
    auth: u8,
    /// `SIZE n`; `None` when not advertised, `Some(0)` when advertised without limit.
    size: Option<u64>,
}

impl Capabilities {
    /// RFC 2920 command pipelining.
    pub const PIPELINING: Flags = 1;
    /// RFC 3030 BDAT.
    pub const CHUNKING: Flags = 1 << 1;
    /// RFC 6152 8-bit bodies.
    pub const EIGHT_BIT_MIME: Flags = 1 << 2;
    /// RFC 6531 UTF-8 addresses and headers.
    pub const SMTPUTF8: Flags = 1 << 3;
    /// RFC 3207.
    pub const STARTTLS: Flags = 1 << 4;
    /// RFC 2034 enhanced status codes in replies.
    pub const ENHANCED_STATUS_CODES: Flags = 1 << 5;
    /// RFC 3461 delivery status notifications.
    pub const DSN: Flags = 1 << 6;
    /// RFC 1870 SIZE declaration.
    pub const SIZE: Flags = 1 << 7;
    /// RFC 3030 BINARYMIME.
    pub const BINARYMIME: Flags = 1 << 8;

    /// Reads the keywords of an EHLO reply (every line after the first).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines().skip(1) {
            caps.add_line(line);
        }
        caps
    }

    fn add_line(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else { return };
        let keyword = keyword.to_ascii_uppercase();
        // "AUTH=LOGIN PLAIN" is what some old servers send instead of "AUTH LOGIN PLAIN".
        if let Some(first) = keyword.strip_prefix("AUTH=") {
            self.add_mechanisms(std::iter::once(first).chain(words));
            return;
        }
        match keyword.as_str() {
            "PIPELINING" => self.flags |= Self::PIPELINING,
            "CHUNKING" => self.flags |= Self::CHUNKING,
            "8BITMIME" => self.flags |= Self::EIGHT_BIT_MIME,
            "SMTPUTF8" => self.flags |= Self::SMTPUTF8,
            "STARTTLS" => self.flags |= Self::STARTTLS,
            "ENHANCEDSTATUSCODES" => self.flags |= Self::ENHANCED_STATUS_CODES,
            "DSN" => self.flags |= Self::DSN,
            "BINARYMIME" => self.flags |= Self::BINARYMIME,
            "SIZE" => {
                self.flags |= Self::SIZE;
                self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            }
            "AUTH" => self.add_mechanisms(words),
            _ => {}
        }
    }

    fn add_mechanisms<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        for name in names {
            let mechanism = match name.to_ascii_uppercase().as_str() {
                "PLAIN" => Mechanism::Plain,
                "LOGIN" => Mechanism::Login,
                "CRAM-MD5" => Mechanism::CramMd5,
                _ => continue,
            };
            self.auth |= mechanism.bit();
        }
    }

    /// Whether every flag in `flags` was advertised.
    pub fn has(&self, flags: Flags) -> bool {
        self.flags & flags == flags
    }

    /// Whether the server offered this SASL mechanism.
    pub fn has_auth(&self, mechanism: Mechanism) -> bool {
        self.auth & mechanism.bit() != 0
    }

    /// Whether the server offered any SASL mechanism at all.
    pub fn offers_auth(&self) -> bool {
        self.auth != 0
    }

    /// The largest message the server accepts, when it declared one (`SIZE n`, n > 0).
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|n| *n > 0)
    }

    /// Whether SIZE was advertised, with or without a limit.
    pub fn declares_size(&self) -> bool {
        self.has(Self::SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::ReplyParser;

    fn caps(wire: &str) -> Capabilities {
        Capabilities::from_ehlo(&ReplyParser::parse_slice(wire.as_bytes()).unwrap().unwrap())
    }

    #[test]
    fn reads_a_postfix_ehlo() {
        let c = caps(
            "250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
             250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        for flag in [
            Capabilities::PIPELINING,
            Capabilities::CHUNKING,
            Capabilities::EIGHT_BIT_MIME,
            Capabilities::SMTPUTF8,
            Capabilities::STARTTLS,
            Capabilities::ENHANCED_STATUS_CODES,
            Capabilities::DSN,
        ] {
            assert!(c.has(flag), "flag {flag}");
        }
        assert_eq!(c.size_limit(), Some(10_240_000));
        assert!(c.has_auth(Mechanism::Plain) && c.has_auth(Mechanism::Login));
        assert!(c.has_auth(Mechanism::CramMd5));
    }

    #[test]
    fn reads_odd_spellings() {
        let c = caps("250-mx\r\n250-auth=login\r\n250-size\r\n250 pipelining\r\n");
        assert!(c.has_auth(Mechanism::Login) && !c.has_auth(Mechanism::Plain));
        assert!(c.declares_size());
        assert_eq!(c.size_limit(), None);
        assert!(c.has(Capabilities::PIPELINING));
    }

    #[test]
    fn the_greeting_line_is_not_a_keyword() {
        let c = caps("250 PIPELINING\r\n");
        assert!(!c.has(Capabilities::PIPELINING));
        assert_eq!(c, Capabilities::default());
    }

    #[test]
    fn unknown_keywords_and_mechanisms_are_ignored() {
        let c = caps("250-mx\r\n250-XCLIENT NAME\r\n250 AUTH XOAUTH2 GSSAPI\r\n");
        assert!(!c.offers_auth());
    }
}
