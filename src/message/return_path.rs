//! The envelope sender (return path): a fixed address, or VERP — an address per
//! recipient, `bounces+alice=example.org@bounce.example.com`, so that an asynchronous
//! bounce names the recipient it is about even when its content is useless — or, when
//! volley reads its own bounces, a signed VERP naming the delivery,
//! `bounces+JOB.INDEX.MAC@bounce.example.com`, which nobody else can make up.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

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
    /// Signed VERP: the delivery (job and index) and an HMAC of it under the key are
    /// encoded into the base's local part.
    Signed {
        /// The base address.
        base: Address,
        /// The HMAC key (`[bounces] secret`).
        key: BounceKey,
    },
}

/// The key that signs VERP return paths.
#[derive(Clone, PartialEq, Eq)]
pub struct BounceKey(Arc<[u8]>);

impl fmt::Debug for BounceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BounceKey(..)")
    }
}

impl BounceKey {
    /// A key from the configured secret.
    pub fn new(secret: &[u8]) -> Self {
        Self(Arc::from(secret))
    }

    fn mac(&self, job: &str, index: u32) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(format!("{job}.{index}").as_bytes());
        mac
    }
}

/// Bytes of the HMAC kept in a signed address (hex): 48 bits, so a forger must guess
/// among 2^48 values for each delivery.
const MAC_BYTES: usize = 6;

/// The signed VERP address of a delivery under `base`, or `None` when it would not be a
/// valid address (a base local part too long to carry it).
pub fn signed_verp(base: &Address, job: &str, index: u32, key: &BounceKey) -> Option<Address> {
    let job = job.to_ascii_lowercase();
    let tag = key.mac(&job, index).finalize().into_bytes();
    let hex: String = tag[..MAC_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let local = format!("{}+{job}.{index}.{hex}", base.local_part());
    Address::parse(&format!("{local}@{}", base.domain())).ok()
}

/// The delivery (job text, lower case, and index) a signed VERP address names, when its
/// MAC is right under `key`; `None` for any other address. Case-insensitive: some
/// servers change the case of the address they bounce to.
pub fn verify_signed_verp(addr: &str, key: &BounceKey) -> Option<(String, u32)> {
    let address = Address::parse(addr.trim_matches(['<', '>'])).ok()?;
    let (_, signed) = address.local_part().split_once('+')?;
    let signed = signed.to_ascii_lowercase();
    let mut parts = signed.split('.');
    let (job, index, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || hex.len() != MAC_BYTES * 2 {
        return None;
    }
    let index: u32 = index.parse().ok()?;
    let tag: Vec<u8> = (0..MAC_BYTES)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    key.mac(job, index).verify_truncated_left(&tag).ok()?;
    Some((job.to_owned(), index))
}

impl ReturnPath {
    /// A VERP return path; refuses a base that cannot carry recipients.
    pub fn verp(base: Address) -> Result<Self, MessageError> {
        check_base(&base)?;
        Ok(Self::Verp(base))
    }

    /// A signed VERP return path; refuses a base that cannot carry a delivery.
    pub fn signed(base: Address, key: BounceKey) -> Result<Self, MessageError> {
        check_base(&base)?;
        // The longest a job and index can be: 26 characters and u32::MAX.
        if signed_verp(&base, &"z".repeat(26), u32::MAX, &key).is_none() {
            return Err(MessageError::Verp {
                base: base.to_string(),
                reason: "the local part is too long to carry a signed delivery id (keep it \
                         under 15 characters)"
                    .to_owned(),
            });
        }
        Ok(Self::Signed { base, key })
    }

    /// The envelope sender for delivery `index` of `job`, to `recipient`.
    pub fn envelope_sender(&self, job: &str, index: u32, recipient: &Address) -> Address {
        match self {
            Self::Fixed(address) => address.clone(),
            // The base was checked when this value was made.
            Self::Verp(base) => verp(base, recipient).unwrap_or_else(|_| base.clone()),
            Self::Signed { base, key } => {
                signed_verp(base, job, index, key).unwrap_or_else(|| base.clone())
            }
        }
    }

    /// The base address (the fixed one for `Fixed`).
    pub fn base(&self) -> &Address {
        match self {
            Self::Fixed(address) | Self::Verp(address) | Self::Signed { base: address, .. } => {
                address
            }
        }
    }
}

impl fmt::Display for ReturnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(address) => write!(f, "{address}"),
            Self::Verp(base) => write!(f, "{base} (VERP)"),
            Self::Signed { base, .. } => write!(f, "{base} (signed VERP)"),
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

    #[test]
    fn signed_verp_names_the_delivery_and_cannot_be_forged() {
        let key = BounceKey::new(b"0123456789abcdef0123456789abcdef");
        let base = Address::parse("bounces@bounce.example.com").unwrap();
        let path = ReturnPath::signed(base.clone(), key.clone()).unwrap();
        let to = Address::parse("ann@example.org").unwrap();
        let job = "01M8TQN3QCPB74QT8SP7RF4KY9";
        let signed = path.envelope_sender(job, 42, &to);
        assert!(
            signed
                .as_str()
                .starts_with("bounces+01m8tqn3qcpb74qt8sp7rf4ky9.42."),
            "{signed}"
        );
        assert!(signed.as_str().ends_with("@bounce.example.com"));
        let named = Some((job.to_ascii_lowercase(), 42));
        assert_eq!(verify_signed_verp(signed.as_str(), &key), named);
        let upper = signed.as_str().to_ascii_uppercase();
        assert_eq!(verify_signed_verp(&format!("<{upper}>"), &key), named);
        // Another index, another key, a made-up MAC, or plain VERP: nothing.
        let other = signed.as_str().replace(".42.", ".43.");
        assert_eq!(verify_signed_verp(&other, &key), None);
        assert_eq!(
            verify_signed_verp(signed.as_str(), &BounceKey::new(b"other")),
            None
        );
        let forged = format!(
            "bounces+{}.42.000000000000@bounce.example.com",
            job.to_ascii_lowercase()
        );
        assert_eq!(verify_signed_verp(&forged, &key), None);
        assert_eq!(
            verify_signed_verp("bounces+ann=example.org@bounce.example.com", &key),
            None
        );
        let long = Address::parse("a-very-long-bounce-local-part@x.example").unwrap();
        assert!(ReturnPath::signed(long, key).is_err());
    }

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
            assert_eq!(
                path.envelope_sender("job", 0, &addr(recipient)).as_str(),
                *expected
            );
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
            fixed.envelope_sender("job", 0, &addr("a@b.c")).as_str(),
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
