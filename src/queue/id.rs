//! Identifiers: [`JobId`] (unique across machines, sortable by creation time) and
//! [`DeliveryId`] (one recipient of one job).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use rand::Rng;

/// Crockford's base32 alphabet: no I, L, O, U, so ids survive being read aloud or retyped.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A job (one message or one campaign): a 48-bit millisecond timestamp followed by 80 random
/// bits, so ids made on different machines never collide and sort by creation time.
/// Rendered as 26 characters of Crockford base32 (the ULID layout).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(u128);

impl JobId {
    /// A new id for a job created at `now`.
    pub fn new(now: SystemTime) -> Self {
        let ms = crate::time::unix_ms(now);
        let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
        JobId((u128::from(ms & 0xFFFF_FFFF_FFFF) << 80) | random)
    }

    /// The id's 16 bytes, big-endian, so byte order is creation order.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        JobId(u128::from_be_bytes(bytes))
    }

    /// Milliseconds since the Unix epoch when the id was made.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *c = ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

/// The text was not a 26-character Crockford base32 job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {0:?}: expected 26 characters of Crockford base32")]
pub struct ParseIdError(String);

impl FromStr for JobId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError(s.chars().take(40).collect());
        if s.len() != 26 {
            return Err(err());
        }
        let mut v: u128 = 0;
        for (i, b) in s.bytes().enumerate() {
            // Crockford decoding is case-insensitive and reads I/L as 1 and O as 0.
            let d = match b.to_ascii_uppercase() {
                b'O' => 0,
                b'I' | b'L' => 1,
                c => ALPHABET.iter().position(|&a| a == c).ok_or_else(err)? as u128,
            };
            // 26 * 5 = 130 bits: the first character may carry only the top 3.
            if i == 0 && d > 7 {
                return Err(err());
            }
            v = (v << 5) | d;
        }
        Ok(JobId(v))
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One delivery: the recipient at `index` (0-based, in submission order) of `job`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeliveryId {
    /// The job it belongs to.
    pub job: JobId,
    /// The recipient's position in the job.
    pub index: u32,
}

impl DeliveryId {
    /// 20 bytes: the job id then the index, big-endian, so a job's deliveries are contiguous.
    pub(crate) fn to_bytes(self) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..16].copy_from_slice(&self.job.to_bytes());
        k[16..].copy_from_slice(&self.index.to_be_bytes());
        k
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
        let job: [u8; 16] = b.get(..16)?.try_into().ok()?;
        let index: [u8; 4] = b.get(16..20)?.try_into().ok()?;
        Some(DeliveryId {
            job: JobId::from_bytes(job),
            index: u32::from_be_bytes(index),
        })
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.job, self.index)
    }
}

impl FromStr for DeliveryId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (job, index) = s
            .split_once(':')
            .ok_or_else(|| ParseIdError(s.chars().take(40).collect()))?;
        Ok(DeliveryId {
            job: job.parse()?,
            index: index
                .parse()
                .map_err(|_| ParseIdError(s.chars().take(40).collect()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let a = JobId::new(t);
        let b = JobId::new(t + Duration::from_millis(1));
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().len(), 26);
        assert_eq!(a.to_string().parse::<JobId>(), Ok(a));
        assert_eq!(a.to_string().to_lowercase().parse::<JobId>(), Ok(a));
        assert_eq!(a.timestamp_ms(), 1_700_000_000_000);
        assert_eq!(JobId::from_bytes(a.to_bytes()), a);
        let d = DeliveryId { job: a, index: 42 };
        assert_eq!(d.to_string().parse::<DeliveryId>(), Ok(d));
        assert_eq!(DeliveryId::from_bytes(&d.to_bytes()), Some(d));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "0123",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "0000000000000000000000000U",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
        assert_eq!(
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<JobId>(),
            Ok(JobId(u128::MAX))
        );
    }
}
