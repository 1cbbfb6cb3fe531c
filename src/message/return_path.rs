//! The envelope sender (return path): a fixed address, or VERP — an address per
//! recipient, `bounces+alice=example.org@bounce.example.com`, so that an asynchronous
//! bounce names the recipient it is about even when its content is useless.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::MessageError;
use crate::address::Address;

/// Which envelope sender messages are sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnPath {
    /// The same envelope sender for every message.
    Fixed(Address),
    /// VERP: the recipient is encoded into this base address's local part.
    Verp(Address),
}

impl ReturnPath {
    /// A VERP return path; refuses a base that cannot carry recipients.
    pub fn verp(base: Address) -> Result<Self, MessageError> {
        check_base(&base)?;
        Ok(Self::Verp(base))
    }

    /// The envelope sender for a message to `recipient`.
    pub fn envelope_sender(&self, recipient: &Address) -> Address {
        match self {
            Self::Fixed(address) => address.clone(),
            // The base was checked when this value was made.
            Self::Verp(base) => verp(base, recipient).unwrap_or_else(|_| base.clone()),
        }
    }
}

impl fmt::Display for ReturnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(address) => write!(f, "{address}"),
            Self::Verp(base) => write!(f, "{base} (VERP)"),
        }
    }
}

/// `return_path = { address = "bounces@bounce.example.com", verp = true }`.
impl<'de> Deserialize<'de> for ReturnPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            address: String,
            #[serde(default)]
            verp: bool,
        }
        let raw = Raw::deserialize(deserializer)?;
        let address = Address::parse(&raw.address)
            .map_err(|e| serde::de::Error::custom(format!("return path: {e}")))?;
        match raw.verp {
            true => Self::verp(address).map_err(serde::de::Error::custom),
            false => Ok(Self::Fixed(address)),
        }
    }
}

/// The VERP address of `recipient` under `base`: `base-local+rlocal=rdomain@base-domain`.
/// Falls back to `base` itself when the result would not be a valid address (over the
/// RFC 5321 length limits, a quoted local part, an address literal).
pub fn verp(base: &Address, recipient: &Address) -> Result<Address, MessageError> {
    check_base(base)?;
    let candidate = format!(
        "{}+{}={}@{}",
        base.local_part(),
        recipient.local_part(),
        recipient.domain(),
        base.domain()
    );
    Ok(Address::parse(&candidate).unwrap_or_else(|_| base.clone()))
}

/// The recipient a VERP address was made for, or `None` when `addr` is not one.
pub fn parse_verp(addr: &str) -> Option<String> {
    let address = Address::parse(addr).ok()?;
    let (_, encoded) = address.local_part().split_once('+')?;
    // The recipient's domain cannot hold '=', its local part can: split at the last.
    let (local, domain) = encoded.rsplit_once('=')?;
    let recipient = Address::parse(&format!("{local}@{domain}")).ok()?;
    Some(recipient.to_string())
}

/// `parse_verp` splits at the first '+': the base's own local part must not hold one,
/// nor '=', nor be quoted.
fn check_base(base: &Address) -> Result<(), MessageError> {
    if base.local_part().contains(['+', '=', '"']) {
        return Err(MessageError::Verp {
            base: base.to_string(),
            reason: "a VERP base local part cannot contain '+', '=' or quotes".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn verp_addresses() {
        let base = addr("bounces@bounce.example.com");
        let long_local = "a".repeat(50);
        let table: &[(&str, &str)] = &[
            (
                "alice@example.org",
                "bounces+alice=example.org@bounce.example.com",
            ),
            (
                "a.b+tag@ex.org",
                "bounces+a.b+tag=ex.org@bounce.example.com",
            ),
            ("x=y@ex.org", "bounces+x=y=ex.org@bounce.example.com"),
            // Over 64 octets of local part: the base itself.
            (
                &format!("{long_local}@example.org"),
                "bounces@bounce.example.com",
            ),
            // A quoted local part cannot be embedded in a dot-atom.
            ("\"john doe\"@ex.org", "bounces@bounce.example.com"),
            ("user@[127.0.0.1]", "bounces@bounce.example.com"),
        ];
        for (recipient, expected) in table {
            let got = verp(&base, &addr(recipient)).unwrap();
            assert_eq!(got.as_str(), *expected, "{recipient}");
            let path = ReturnPath::Verp(base.clone());
            assert_eq!(path.envelope_sender(&addr(recipient)).as_str(), *expected);
            if got != base {
                assert_eq!(parse_verp(got.as_str()).as_deref(), Some(*recipient));
            }
        }
    }

    #[test]
    fn parse_verp_refuses_other_addresses() {
        for input in [
            "bounces@bounce.example.com",
            "bounces+noequals@bounce.example.com",
            "bounces+=example.org@bounce.example.com",
            "bounces+alice=@bounce.example.com",
            "not an address",
            "bounces+a=b_c@x.com",
        ] {
            assert_eq!(parse_verp(input), None, "{input}");
        }
    }

    #[test]
    fn unusable_bases_are_refused() {
        let recipient = addr("a@example.org");
        for base in ["b+x@ex.com", "b=x@ex.com", "\"b x\"@ex.com"] {
            assert!(verp(&addr(base), &recipient).is_err(), "{base}");
            assert!(ReturnPath::verp(addr(base)).is_err(), "{base}");
        }
    }

    #[test]
    fn fixed_return_path() {
        let fixed = ReturnPath::Fixed(addr("bounces@ex.com"));
        assert_eq!(
            fixed.envelope_sender(&addr("a@b.c")).as_str(),
            "bounces@ex.com"
        );
    }

    #[test]
    fn deserializes_from_config() {
        let table: &[(&str, Option<ReturnPath>)] = &[
            (
                r#"{"address": "b@ex.com"}"#,
                Some(ReturnPath::Fixed(addr("b@ex.com"))),
            ),
            (
                r#"{"address": "b@ex.com", "verp": true}"#,
                Some(ReturnPath::Verp(addr("b@ex.com"))),
            ),
            (r#"{"address": "b+x@ex.com", "verp": true}"#, None),
            (r#"{"address": "not an address"}"#, None),
            (r#"{"address": "b@ex.com", "typo": 1}"#, None),
        ];
        for (json, expected) in table {
            let got: Option<ReturnPath> = serde_json::from_str(json).ok();
            assert_eq!(&got, expected, "{json}");
        }
    }
}
