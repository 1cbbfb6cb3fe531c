//! RFC 5322 messages built with mail-builder from a validated [`MessageSpec`].
//!
//! mail-builder does the encoding work: RFC 2047 encoded words for non-ASCII display
//! names, subjects and custom header values, folding at 78 columns, and
//! quoted-printable or base64 for any body that is not plain short-lined ASCII. The
//! result is 7-bit (every line well under 998 octets) unless an address itself is
//! non-ASCII, which needs SMTPUTF8 anyway. This file adds what mail-builder does not
//! check: no CR, LF or NUL in anything that becomes a header, valid custom header
//! names, and none of the headers volley owns supplied twice.

use std::borrow::Cow;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as HeaderAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::headers::url::URL;
use mail_builder::mime::BodyPart;

use super::MessageError;
use super::headers::{check_custom_header, check_line, is_token};
use super::unsubscribe::ListUnsubscribe;
use crate::address::Address;

/// A header mailbox: an optional display name and a validated address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name; encoded per RFC 2047 when non-ASCII. CR, LF and NUL are
    /// refused when the message is built.
    pub name: Option<String>,
    /// The validated address that goes in the header, after the display name if any.
    pub address: Address,
}

impl Mailbox {
    /// A mailbox without a display name.
    pub fn new(address: Address) -> Self {
        Self {
            name: None,
            address,
        }
    }

    /// A mailbox with a display name.
    pub fn named(name: impl Into<String>, address: Address) -> Self {
        Self {
            name: Some(name.into()),
            address,
        }
    }
}

/// A file attached to the message (base64, or quoted-printable for `text/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The file name shown to the recipient (RFC 2231 encoded when non-ASCII).
    pub filename: String,
    /// `type/subtype`, optionally with `; name=value` parameters.
    pub content_type: String,
    /// The file's bytes as they are; encoded (base64 or quoted-printable) when built.
    pub content: Vec<u8>,
}

/// Everything a message is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSpec {
    /// The author (`From:`).
    pub from: Mailbox,
    /// `To:` recipients.
    pub to: Vec<Mailbox>,
    /// `Cc:` recipients.
    pub cc: Vec<Mailbox>,
    /// `Reply-To:`.
    pub reply_to: Option<Mailbox>,
    /// The subject, one line; encoded when non-ASCII or long.
    pub subject: String,
    /// The plain-text part; at least one of `text` and `html` is required.
    pub text: Option<String>,
    /// The HTML part; with `text`, the two make a `multipart/alternative`.
    pub html: Option<String>,
    /// Attachments; any make the message `multipart/mixed`.
    pub attachments: Vec<Attachment>,
    /// Custom headers, in order. Names volley owns (From, To, Cc, Bcc, Reply-To,
    /// Subject, Date, Message-ID, MIME-Version, Content-*, DKIM-Signature,
    /// List-Unsubscribe*, Return-Path, Received) are refused.
    pub headers: Vec<(String, String)>,
    /// `List-Unsubscribe` (and `List-Unsubscribe-Post`) for this recipient.
    pub list_unsubscribe: Option<ListUnsubscribe>,
}

/// Builds the message: headers (From, To — `undisclosed-recipients:;` when there are
/// neither To nor Cc recipients —, Cc, Reply-To, Subject, Date, a fresh
/// `Message-ID: <random@message_id_domain>`, MIME-Version, List-Unsubscribe, custom
/// headers) and the MIME body, with CRLF line endings.
pub fn build_message(spec: &MessageSpec, message_id_domain: &str) -> Result<Vec<u8>, MessageError> {
    validate(spec, message_id_domain)?;
    let mut builder = MessageBuilder::new().from(mailbox(&spec.from));
    if !spec.to.is_empty() {
        builder = builder.to(mailboxes(&spec.to));
    }
    if !spec.cc.is_empty() {
        builder = builder.cc(mailboxes(&spec.cc));
    }
    if spec.to.is_empty() && spec.cc.is_empty() {
        // Only hidden recipients: an empty group (RFC 5322 3.4), so that no copy shows
        // any of them, and every copy is the same.
        builder = builder.header("To", Raw::new("undisclosed-recipients:;"));
    }
    if let Some(reply_to) = &spec.reply_to {
        builder = builder.reply_to(mailbox(reply_to));
    }
    builder = builder
        .subject(Text::new(spec.subject.as_str()))
        .date(Date::now())
        .message_id(MessageId::new(message_id(message_id_domain)))
        .header("MIME-Version", Raw::new("1.0"));
    if let Some(unsubscribe) = &spec.list_unsubscribe {
        let urls = URL::new_list(unsubscribe.urls().iter().map(String::as_str));
        builder = builder.header("List-Unsubscribe", urls);
        if unsubscribe.one_click() {
            let post = Raw::new("List-Unsubscribe=One-Click");
            builder = builder.header("List-Unsubscribe-Post", post);
        }
    }
    for (name, value) in &spec.headers {
        builder = builder.header(name.as_str(), Text::new(value.as_str()));
    }
    if let Some(text) = &spec.text {
        builder = builder.text_body(mend_bare_cr(text));
    }
    if let Some(html) = &spec.html {
        builder = builder.html_body(mend_bare_cr(html));
    }
    for (index, attachment) in spec.attachments.iter().enumerate() {
        builder = builder.attachment(
            content_type(index, attachment)?,
            attachment.filename.as_str(),
            BodyPart::Binary(Cow::Borrowed(&attachment.content)),
        );
    }
    let mut out = Vec::new();
    builder.serialize(&mut out);
    // A single-part body may end without a line break; the SMTP client would add one
    // after signing. Add it here so that the signed bytes are the bytes sent.
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

fn validate(spec: &MessageSpec, message_id_domain: &str) -> Result<(), MessageError> {
    if Address::parse(&format!("id@{message_id_domain}")).is_err() {
        return Err(MessageError::MessageIdDomain {
            domain: message_id_domain.to_owned(),
        });
    }
    if spec.text.is_none() && spec.html.is_none() {
        return Err(MessageError::NoBody);
    }
    check_name(&spec.from, || "from.name".to_owned())?;
    for (field, list) in [("to", &spec.to), ("cc", &spec.cc)] {
        for (i, mailbox) in list.iter().enumerate() {
            check_name(mailbox, || format!("{field}[{i}].name"))?;
        }
    }
    if let Some(reply_to) = &spec.reply_to {
        check_name(reply_to, || "reply_to.name".to_owned())?;
    }
    check_line(|| "subject".to_owned(), &spec.subject)?;
    for (field, body) in [("text", &spec.text), ("html", &spec.html)] {
        if body.as_deref().is_some_and(|b| b.contains('\0')) {
            return Err(MessageError::NulInBody { field });
        }
    }
    for (name, value) in &spec.headers {
        check_custom_header(name, value)?;
    }
    for (i, attachment) in spec.attachments.iter().enumerate() {
        check_line(
            || format!("attachments[{i}].filename"),
            &attachment.filename,
        )?;
    }
    Ok(())
}

/// A body with each bare CR made a CRLF. mail-builder writes short ASCII text as 7bit
/// byte for byte, mending bare LFs only: a bare CR would go into the message as it is,
/// the DKIM body hash would skip it, and the SMTP encoder would then send it as a line
/// break the hash never saw (`dkim=fail` at the receiver).
fn mend_bare_cr(body: &str) -> Cow<'_, str> {
    let bytes = body.as_bytes();
    let bare = |i: usize| bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n');
    if !(0..bytes.len()).any(bare) {
        return Cow::Borrowed(body);
    }
    let mut mended = String::with_capacity(body.len() + 16);
    for (i, c) in body.char_indices() {
        mended.push(c);
        if c == '\r' && bare(i) {
            mended.push('\n');
        }
    }
    Cow::Owned(mended)
}

fn check_name(mailbox: &Mailbox, field: impl FnOnce() -> String) -> Result<(), MessageError> {
    match &mailbox.name {
        Some(name) => check_line(field, name),
        None => Ok(()),
    }
}

fn mailbox(mailbox: &Mailbox) -> HeaderAddress<'_> {
    HeaderAddress::new_address(mailbox.name.as_deref(), mailbox.address.as_str())
}

fn mailboxes(list: &[Mailbox]) -> HeaderAddress<'_> {
    HeaderAddress::new_list(list.iter().map(mailbox).collect())
}

/// 128 random bits: unique without coordination between processes or machines.
fn message_id(domain: &str) -> String {
    format!("{:032x}@{domain}", rand::random::<u128>())
}

/// Parses `type/subtype; name=value; ...` into mail-builder's form, refusing anything
/// that is not MIME syntax (it would otherwise be written into the header as is).
fn content_type(index: usize, attachment: &Attachment) -> Result<ContentType<'_>, MessageError> {
    let invalid = || MessageError::ContentType {
        index,
        filename: attachment.filename.clone(),
        content_type: attachment.content_type.clone(),
    };
    let mut pieces = attachment.content_type.split(';');
    let essence = pieces.next().unwrap_or_default().trim();
    let (kind, subtype) = essence.split_once('/').ok_or_else(invalid)?;
    if !is_token(kind) || !is_token(subtype) {
        return Err(invalid());
    }
    // mail-builder recognises text parts by a lower-case "text/" prefix.
    let mut parsed = ContentType::new(essence.to_ascii_lowercase());
    for parameter in pieces.map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').ok_or_else(invalid)?;
        let (name, value) = (name.trim(), value.trim());
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(quoted) if !quoted.contains(['"', '\\', '\r', '\n', '\0']) => quoted,
            Some(_) => return Err(invalid()),
            None if is_token(value) => value,
            None => return Err(invalid()),
        };
        if !is_token(name) {
            return Err(invalid());
        }
        parsed = parsed.attribute(name, value);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(content_type: &str) -> Attachment {
        Attachment {
            filename: "f.bin".into(),
            content_type: content_type.into(),
            content: vec![],
        }
    }

    fn plain(text: &str) -> MessageSpec {
        MessageSpec {
            from: Mailbox::new(Address::parse("news@example.com").unwrap()),
            to: vec![Mailbox::new(Address::parse("ann@example.org").unwrap())],
            cc: Vec::new(),
            reply_to: None,
            subject: "Receipt".into(),
            text: Some(text.into()),
            html: None,
            attachments: Vec::new(),
            headers: Vec::new(),
            list_unsubscribe: None,
        }
    }

    #[test]
    fn bare_crs_in_a_body_become_line_breaks_and_nul_is_refused() {
        let built = build_message(&plain("one\rtwo\r\nthree\r"), "example.com").unwrap();
        let text = String::from_utf8(built).unwrap();
        assert!(text.contains("\r\n\r\none\r\ntwo\r\nthree\r\n"), "{text:?}");
        assert!(!text.replace("\r\n", "").contains('\r'), "{text:?}");
        let err = build_message(&plain("a\0b"), "example.com").unwrap_err();
        assert!(
            matches!(err, MessageError::NulInBody { field: "text" }),
            "{err}"
        );
        assert_eq!(mend_bare_cr("é\r"), "é\r\n");
    }

    #[test]
    fn content_types() {
        let table: &[(&str, Option<&str>)] = &[
            ("application/pdf", Some("application/pdf")),
            ("Text/CSV", Some("text/csv")),
            ("text/csv; charset=utf-8", Some("text/csv")),
            ("text/csv; charset=\"utf-8\"", Some("text/csv")),
            ("application/vnd.ms-excel", Some("application/vnd.ms-excel")),
            ("pdf", None),
            ("a/b/c", None),
            ("text/plain\r\nBcc: x", None),
            ("text/plain; charset", None),
            ("text/plain; a b=c", None),
            ("text/plain; charset=\"a\"b\"", None),
            ("text/plain; charset=a\r\nBcc: x", None),
            ("/plain", None),
            ("", None),
        ];
        for (input, expected) in table {
            let attachment = attachment(input);
            let got = content_type(0, &attachment).ok();
            assert_eq!(
                got.as_ref().map(|c| c.c_type.as_ref()),
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn message_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| message_id("x.test")).collect();
        assert_eq!(ids.len(), 1000);
    }
}
