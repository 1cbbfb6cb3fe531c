//! Errors of the message module: each names the field, header, file or address at
//! fault.

use std::path::PathBuf;

/// Why a message could not be built or signed, or a message setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A text field that becomes part of a header holds CR, LF or NUL.
    #[error("{field} contains CR, LF or NUL")]
    LineBreak {
        /// The field, e.g. `subject`, `to[1].name`, `attachments[0].filename`.
        field: String,
    },
    /// A custom header name is not RFC 5322 `ftext` (printable ASCII except `:`).
    #[error(
        "header name {header:?} is invalid: use 1 to 76 printable ASCII characters without ':'"
    )]
    HeaderName {
        /// The name as given.
        header: String,
    },
    /// A custom header value holds CR, LF or NUL.
    #[error("header {header}: the value contains CR, LF or NUL")]
    HeaderValue {
        /// The name of the custom header whose value was refused.
        header: String,
    },
    /// A custom header that volley sets itself.
    #[error("header {header} is set by volley and cannot be given")]
    ReservedHeader {
        /// The header name as given.
        header: String,
    },
    /// Neither `text` nor `html` is given.
    #[error("the message has no body: give text, html or both")]
    NoBody,
    /// A body holds NUL, which no message may carry (RFC 5322).
    #[error("{field} contains NUL")]
    NulInBody {
        /// `text` or `html`.
        field: &'static str,
    },
    /// An attachment's content type is not `type/subtype` with optional parameters.
    #[error("attachments[{index}] ({filename:?}): invalid content type {content_type:?}")]
    ContentType {
        /// The attachment's index.
        index: usize,
        /// Its file name.
        filename: String,
        /// The content type as given.
        content_type: String,
    },
    /// The Message-ID domain is not a valid domain.
    #[error("message-id domain {domain:?} is not a valid domain")]
    MessageIdDomain {
        /// The domain as given.
        domain: String,
    },
    /// The DKIM key file cannot be read.
    #[error("dkim: cannot read key file {}: {source}", path.display())]
    DkimKeyRead {
        /// The private key file (`dkim.key_file`) that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The DKIM key file does not hold a usable key for the configured algorithm.
    #[error("dkim: key file {}: {reason}", path.display())]
    DkimKey {
        /// The private key file (`dkim.key_file`) whose contents were refused.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A DKIM setting (domain, selector, headers) is unusable.
    #[error("dkim: {field}: {reason}")]
    DkimConfig {
        /// The DKIM setting at fault: `domain`, `selector` or `headers`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed (the message has none of the headers to sign, ...).
    #[error("dkim: cannot sign the message: {reason}")]
    DkimSign {
        /// What went wrong.
        reason: String,
    },
    /// An unsubscribe setting is unusable.
    #[error("unsubscribe.{field}: {reason}")]
    Unsubscribe {
        /// The setting (`url`, `mailto`, `secret`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message submitted whole (over SMTP) is not one volley can send on.
    #[error("{0}")]
    Submitted(String),
    /// A VERP base address cannot carry a recipient.
    #[error("return path {base}: {reason}")]
    Verp {
        /// The configured return-path address whose local part cannot take a VERP suffix.
        base: String,
        /// What is wrong.
        reason: String,
    },
}
