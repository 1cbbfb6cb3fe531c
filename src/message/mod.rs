//! Messages: RFC 5322 / MIME building, DKIM signing, List-Unsubscribe with one-click
//! tokens, and the envelope return path (fixed or VERP).
//!
//! This module owns everything between rendered content and the bytes handed to the
//! SMTP client: header validation (no CR, LF or NUL in any header value, volley's own
//! headers never supplied twice), MIME structure and transfer encodings (the output
//! is 7-bit), signing, and unsubscribe tokens. It knows nothing of the network,
//! queues, templates or HTTP; it reuses the validated [`Address`](crate::address::Address)
//! of the SMTP client, a plain value type.
//!
//! - [`build`](build_message): [`MessageSpec`] to bytes.
//! - [`DkimSigner`]: signs built messages.
//! - [`ListUnsubscribe`], [`UnsubscribeTokens`]: RFC 2369 / RFC 8058 headers and the
//!   tokens the unsubscribe endpoint checks.
//! - [`ReturnPath`], [`verp`], [`parse_verp`]: the envelope sender.
//! - [`prepare_submitted`]: a message submitted whole over SMTP, made ready to go on.

mod build;
mod dkim;
mod error;
mod headers;
mod return_path;
mod submitted;
mod unsubscribe;

pub use build::{Attachment, Mailbox, MessageSpec, build_message};
pub use dkim::{DkimAlgorithm, DkimConfig, DkimSigner, load_signers, one_or_many, sign_all};
pub use error::MessageError;
pub use return_path::{BounceKey, ReturnPath, parse_verp, signed_verp, verify_signed_verp, verp};
pub use submitted::prepare_submitted;
pub use unsubscribe::{
    ListUnsubscribe, MIN_SECRET as MIN_UNSUBSCRIBE_SECRET, TokenFor, UnsubscribeConfig,
    UnsubscribeTokens, Unsubscription,
};
