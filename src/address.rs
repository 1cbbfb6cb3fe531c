//! Envelope addresses, validated against RFC 5321 path syntax before they can reach
//! the wire.
//!
//! An [`Address`] can only be built through [`Address::parse`], which refuses CR, LF,
//! NUL, angle brackets and anything else outside the grammar, so a command built from
//! one can never carry a second line. Non-ASCII local parts and domains are accepted
//! (RFC 6531) and reported by [`Address::needs_smtputf8`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (section 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including the angle brackets (section 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Why a string is not a usable envelope address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Empty input.
    #[error("address is empty")]
    Empty,
    /// No `@`, or nothing before or after it.
    #[error("address {0:?} is not of the form local@domain")]
    NoAt(String),
    /// CR, LF, NUL or another control character.
    #[error("address contains a control character (CR, LF, NUL, ...)")]
    Control,
    /// `<` or `>` inside the address.
    #[error("address contains '<' or '>'")]
    AngleBracket,
    /// Local part over 64 octets.
    #[error("local part is {0} octets; the limit is {MAX_LOCAL_PART}")]
    LocalPartTooLong(usize),
    /// Domain over 255 octets.
    #[error("domain is {0} octets; the limit is {MAX_DOMAIN}")]
    DomainTooLong(usize),
    /// Path over 256 octets.
    #[error("address is {0} octets; the limit for a path is {MAX_PATH}")]
    PathTooLong(usize),
    /// The local part is neither a dot-string nor a quoted string.
    #[error("invalid local part {0:?}")]
    LocalPart(String),
    /// The domain is neither a host name nor an address literal.
    #[error("invalid domain {0:?}")]
    Domain(String),
}

/// A validated RFC 5321 mailbox (`local@domain`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    text: String,
    at: usize,
}

impl Address {
    /// Validates `input` as a mailbox. Surrounding angle brackets are not accepted:
    /// pass the bare address.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        if input.is_empty() {
            return Err(AddressError::Empty);
        }
        if input.chars().any(is_control_or_separator) {
            return Err(AddressError::Control);
        }
        if input.contains(['<', '>']) {
            return Err(AddressError::AngleBracket);
        }
        let at = input
            .rfind('@')
            .ok_or_else(|| AddressError::NoAt(input.to_owned()))?;
        let (local, domain) = (&input[..at], &input[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::NoAt(input.to_owned()));
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong(local.len()));
        }
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong(domain.len()));
        }
        if input.len() + 2 > MAX_PATH {
            return Err(AddressError::PathTooLong(input.len() + 2));
        }
        if !valid_local_part(local) {
            return Err(AddressError::LocalPart(local.to_owned()));
        }
        if !valid_domain(domain) {
            return Err(AddressError::Domain(domain.to_owned()));
        }
        Ok(Self {
            text: input.to_owned(),
            at,
        })
    }

    /// The whole address, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The part before the last `@`.
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// The part after the last `@`: a host name or an address literal.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// The same mailbox with its domain in A-label form (IDNA), so that an ASCII
    /// local part at an internationalised domain needs no SMTPUTF8. Returns the
    /// address unchanged when the domain is ASCII or cannot be converted.
    pub fn with_ascii_domain(&self) -> Address {
        let domain = self.domain();
        if domain.is_ascii() {
            return self.clone();
        }
        match idna::domain_to_ascii(domain) {
            Ok(ascii) => Address::parse(&format!("{}@{ascii}", self.local_part()))
                .unwrap_or_else(|_| self.clone()),
            Err(_) => self.clone(),
        }
    }

    /// Whether this address needs the SMTPUTF8 extension to be sent.
    pub fn needs_smtputf8(&self) -> bool {
        !self.text.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.text)
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Controls (C0, DEL, C1 such as NEL), line and paragraph separators, and the
/// invisible direction marks: none belongs in an address, and some would read as a line
/// break, or reorder the text, in whatever shows a header.
fn is_control_or_separator(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// RFC 5322 atext, extended with UTF-8 by RFC 6531.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn valid_local_part(local: &str) -> bool {
    if let Some(inner) = local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return valid_quoted(inner);
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// qtextSMTP and quoted-pairSMTP (RFC 5321 section 4.1.2); controls were refused
/// before, and so were angle brackets.
fn valid_quoted(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return false,
            },
            '"' => return false,
            ' '..='~' => {}
            c => return !c.is_ascii() && valid_quoted(chars.as_str()),
        }
    }
    true
}

/// A host name (letters, digits, hyphens, U-labels) or an address literal.
pub(crate) fn valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => literal.parse::<Ipv4Addr>().is_ok(),
        };
    }
    domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// The one form an address takes as a suppression key, whatever form it arrived in (a
/// submission, a bounce, an unsubscribe, an import, the API): trimmed, the domain in
/// lower-case A-labels (IDNA), the local part unquoted (`"bob"` and `"b\ob"` are the
/// mailbox `bob`, RFC 5321 section 4.1.2), lower-cased and in Unicode NFC (`é` typed as
/// one character or as `e` and an accent is one mailbox).
///
/// RFC 5321 lets a server treat local parts as case-sensitive; mailbox providers do not,
/// and a suppression list must err on the side of not sending: `Bob@x` and `bob@x` are
/// one key. A text that is not an address is lower-cased whole (it matches nothing).
pub fn suppression_key(address: &str) -> String {
    let a = address.trim();
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase());
            let local = unquoted(local).to_lowercase();
            let local = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(&local);
            format!("{local}@{domain}")
        }
        None => a.to_lowercase(),
    }
}

/// A quoted local part's content, its quoted pairs undone; any other as it is.
fn unquoted(local: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return std::borrow::Cow::Borrowed(local);
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_addresses() {
        for ok in [
            "user@example.com",
            "first.last+tag@sub.example.co.uk",
            "!#$%&'*+-/=?^_`{|}~@example.com",
            "\"john doe\"@example.com",
            "\"quoted\\\"quote\"@example.com",
            "user@[127.0.0.1]",
            "user@[IPv6:::1]",
            "用户@例子.广告",
            "x@a",
        ] {
            let address = Address::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(address.as_str(), ok);
        }
    }

    #[test]
    fn refuses_injection_and_bad_syntax() {
        let table: &[(&str, AddressError)] = &[
            ("", AddressError::Empty),
            (
                "user@example.com\r\nRCPT TO:<evil@x>",
                AddressError::Control,
            ),
            ("user@exam\nple.com", AddressError::Control),
            ("us\0er@example.com", AddressError::Control),
            (
                "\"x\u{2028}Bcc: evil@attacker.example\"@example.org",
                AddressError::Control,
            ),
            ("a\u{85}b@example.org", AddressError::Control),
            ("a\u{202e}gpj.exe@example.org", AddressError::Control),
            ("user@example.com> SIZE=1", AddressError::AngleBracket),
            ("<user@example.com>", AddressError::AngleBracket),
            ("\"a<b\"@example.com", AddressError::AngleBracket),
            (
                "userexample.com",
                AddressError::NoAt("userexample.com".into()),
            ),
            ("@example.com", AddressError::NoAt("@example.com".into())),
            ("user@", AddressError::NoAt("user@".into())),
            ("a b@example.com", AddressError::LocalPart("a b".into())),
            (".user@example.com", AddressError::LocalPart(".user".into())),
            (
                "us..er@example.com",
                AddressError::LocalPart("us..er".into()),
            ),
            (
                "user@-example.com",
                AddressError::Domain("-example.com".into()),
            ),
            (
                "user@example..com",
                AddressError::Domain("example..com".into()),
            ),
            (
                "user@exa_mple.com",
                AddressError::Domain("exa_mple.com".into()),
            ),
            (
                "user@[999.1.1.1]",
                AddressError::Domain("[999.1.1.1]".into()),
            ),
            (
                "user@example.com.",
                AddressError::Domain("example.com.".into()),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(Address::parse(input).as_ref(), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn enforces_rfc5321_lengths() {
        let local64 = "a".repeat(64);
        assert!(Address::parse(&format!("{local64}@example.com")).is_ok());
        let local65 = "a".repeat(65);
        assert_eq!(
            Address::parse(&format!("{local65}@example.com")),
            Err(AddressError::LocalPartTooLong(65))
        );
        // 60 + 1 + 63 + 1 + 63 + 1 + 63 = 252 octets, path 254: fits.
        let label = "b".repeat(63);
        let long = format!("{}@{label}.{label}.{label}", "a".repeat(60));
        assert!(Address::parse(&long).is_ok());
        let too_long = format!("{}@{label}.{label}.{label}.cc", "a".repeat(60));
        assert_eq!(
            Address::parse(&too_long),
            Err(AddressError::PathTooLong(257))
        );
    }

    #[test]
    fn converts_idn_domains_to_a_labels() {
        let a = Address::parse("info@bücher.example")
            .unwrap()
            .with_ascii_domain();
        assert_eq!(a.as_str(), "info@xn--bcher-kva.example");
        assert!(!a.needs_smtputf8());
        let utf8_local = Address::parse("jörg@bücher.example")
            .unwrap()
            .with_ascii_domain();
        assert!(
            utf8_local.needs_smtputf8(),
            "a UTF-8 local part still needs SMTPUTF8"
        );
        let ascii = Address::parse("a@example.com").unwrap();
        assert_eq!(ascii.with_ascii_domain(), ascii);
    }

    #[test]
    fn splits_and_flags_utf8() {
        let a = Address::parse("\"a@b\"@example.com").unwrap();
        assert_eq!((a.local_part(), a.domain()), ("\"a@b\"", "example.com"));
        assert!(!a.needs_smtputf8());
        assert!(Address::parse("josé@example.com").unwrap().needs_smtputf8());
    }

    #[test]
    fn suppression_keys_are_one_form_of_an_address() {
        for (given, key) in [
            ("Bob@Example.COM", "bob@example.com"),
            (" a@B.c ", "a@b.c"),
            ("permfail@bücher.example", "permfail@xn--bcher-kva.example"),
            (
                "permfail@xn--bcher-kva.example",
                "permfail@xn--bcher-kva.example",
            ),
            ("Permfail@BÜCHER.example", "permfail@xn--bcher-kva.example"),
            ("\"x@y\"@Z.org", "x@y@z.org"),
            ("\"bob\"@example.com", "bob@example.com"),
            ("\"B\\ob\"@example.com", "bob@example.com"),
            ("jose\u{301}@example.com", "jos\u{e9}@example.com"),
            ("JOS\u{c9}@example.com", "jos\u{e9}@example.com"),
            ("nodomain", "nodomain"),
        ] {
            assert_eq!(suppression_key(given), key, "{given}");
        }
    }
}
