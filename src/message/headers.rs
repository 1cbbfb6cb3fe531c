//! Validation of everything a submission can put into a header: free text (subject,
//! display names, file names) and custom headers.
//!
//! The rule is the same everywhere: CR, LF and NUL are refused, never silently
//! removed, so that no value can end a header line and start another one. Headers
//! volley writes itself cannot be supplied, so that the message holds exactly one of
//! each.

use super::MessageError;

/// Longest custom header name: with ": " it still leaves room on a 78-column line.
const MAX_HEADER_NAME: usize = 76;

/// Headers volley writes itself (compared case-insensitively), and prefixes of
/// families it owns.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "dkim-signature",
    "return-path",
    "received",
];
const RESERVED_PREFIXES: &[&str] = &["content-", "list-unsubscribe"];

/// Refuses CR, LF and NUL in a value that ends up in a header.
pub(crate) fn check_line(field: impl FnOnce() -> String, value: &str) -> Result<(), MessageError> {
    if has_line_break(value) {
        return Err(MessageError::LineBreak { field: field() });
    }
    Ok(())
}

pub(crate) fn has_line_break(value: &str) -> bool {
    value.contains(['\r', '\n', '\0'])
}

/// Checks a custom header: the name is RFC 5322 `ftext` and not one volley owns, the
/// value holds no CR, LF or NUL.
pub(crate) fn check_custom_header(name: &str, value: &str) -> Result<(), MessageError> {
    let valid_name = !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !valid_name {
        return Err(MessageError::HeaderName {
            header: name.to_owned(),
        });
    }
    if is_reserved(name) {
        return Err(MessageError::ReservedHeader {
            header: name.to_owned(),
        });
    }
    if has_line_break(value) {
        return Err(MessageError::HeaderValue {
            header: name.to_owned(),
        });
    }
    Ok(())
}

fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Whether `s` is an RFC 2045 token (MIME type names, parameter names).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (33..=126).contains(&b) && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_headers() {
        let table: &[(&str, &str, Option<&str>)] = &[
            ("X-Campaign", "spring-2025", None),
            ("X-Mailer", "volley 😀 non-ASCII is encoded", None),
            ("Precedence", "bulk", None),
            ("Sender", "a@example.com", None),
            ("Feedback-ID", "a:b:c", None),
            ("X-Evil", "Hi\r\nBcc: victim@x", Some("HeaderValue")),
            ("X-Evil", "Hi\nBcc: victim@x", Some("HeaderValue")),
            ("X-Evil", "nul\0", Some("HeaderValue")),
            ("X-Evil\r\nBcc", "victim@x", Some("HeaderName")),
            ("Bcc: victim@x\r\nX", "y", Some("HeaderName")),
            ("X Space", "v", Some("HeaderName")),
            ("X:Colon", "v", Some("HeaderName")),
            ("", "v", Some("HeaderName")),
            ("X-Ünicode", "v", Some("HeaderName")),
            ("bcc", "victim@x", Some("ReservedHeader")),
            ("BCC", "victim@x", Some("ReservedHeader")),
            ("Subject", "s", Some("ReservedHeader")),
            ("Message-Id", "<x@y>", Some("ReservedHeader")),
            ("Content-Type", "text/html", Some("ReservedHeader")),
            ("content-transfer-encoding", "8bit", Some("ReservedHeader")),
            ("List-Unsubscribe-Post", "x", Some("ReservedHeader")),
            ("DKIM-Signature", "x", Some("ReservedHeader")),
            ("Return-Path", "<x@y>", Some("ReservedHeader")),
            ("Received", "from x", Some("ReservedHeader")),
            ("Reply-To", "x@y", Some("ReservedHeader")),
        ];
        for (name, value, expected) in table {
            let result = check_custom_header(name, value);
            let got = result.as_ref().err().map(|e| match e {
                MessageError::HeaderName { .. } => "HeaderName",
                MessageError::HeaderValue { .. } => "HeaderValue",
                MessageError::ReservedHeader { .. } => "ReservedHeader",
                _ => "other",
            });
            assert_eq!(got, *expected, "{name:?}: {value:?}");
        }
        assert!(check_custom_header(&"X".repeat(76), "v").is_ok());
        assert!(check_custom_header(&"X".repeat(77), "v").is_err());
    }

    #[test]
    fn error_names_the_header() {
        let err = check_custom_header("X-Tag", "a\r\nb").unwrap_err();
        assert_eq!(
            err.to_string(),
            "header X-Tag: the value contains CR, LF or NUL"
        );
    }

    #[test]
    fn tokens() {
        for (s, ok) in [
            ("text", true),
            ("vnd.ms-excel", true),
            ("x+y", true),
            ("", false),
            ("a b", false),
            ("a/b", false),
            ("a;b", false),
            ("é", false),
        ] {
            assert_eq!(is_token(s), ok, "{s:?}");
        }
    }
}
