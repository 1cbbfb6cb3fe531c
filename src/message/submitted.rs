//! A message an application submitted whole (over SMTP), made ready to go on: its
//! header section checked, `Bcc` and `Return-Path` removed (a Bcc line must never reach
//! another recipient; the receiving server writes its own Return-Path), and `Date` and
//! `Message-ID` added when the application left them out, as a submission server does
//! (RFC 6409 section 8). The body is kept byte for byte.

use mail_builder::headers::date::Date;

use super::MessageError;

/// Header fields removed from a submitted message.
const REMOVED: [&str; 3] = ["bcc", "resent-bcc", "return-path"];

/// One header field: its name and where its lines (the first and any folded
/// continuations, CRLFs included) are in the message.
struct Field<'a> {
    name: &'a str,
    span: std::ops::Range<usize>,
}

/// Checks a submitted message and prepares it for delivery: see the module docs.
/// `message_id_domain` names the domain of an added `Message-ID`.
pub fn prepare_submitted(raw: &[u8], message_id_domain: &str) -> Result<Vec<u8>, MessageError> {
    let (fields, body) = split(raw)?;
    let has = |name: &str| fields.iter().any(|f| f.name.eq_ignore_ascii_case(name));
    let from = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("from"))
        .count();
    if from != 1 {
        return Err(MessageError::Submitted(format!(
            "a message needs exactly one From header (it has {from})"
        )));
    }
    let mut out = Vec::with_capacity(raw.len() + 128);
    if !has("date") {
        out.extend_from_slice(format!("Date: {}\r\n", Date::now().to_rfc822()).as_bytes());
    }
    if !has("message-id") {
        let id = format!("{:032x}@{message_id_domain}", rand::random::<u128>());
        out.extend_from_slice(format!("Message-ID: <{id}>\r\n").as_bytes());
    }
    for field in &fields {
        if !REMOVED.iter().any(|r| field.name.eq_ignore_ascii_case(r)) {
            out.extend_from_slice(&raw[field.span.clone()]);
        }
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// The header fields and the rest (the empty line and the body; empty when there is no
/// body at all).
fn split(raw: &[u8]) -> Result<(Vec<Field<'_>>, &[u8]), MessageError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut at = 0;
    let mut line_no = 0;
    while at < raw.len() {
        line_no += 1;
        let end = memchr::memmem::find(&raw[at..], b"\r\n").map_or(raw.len(), |i| at + i + 2);
        let line = &raw[at..end];
        if line == b"\r\n" {
            return Ok((fields, &raw[at..]));
        }
        if matches!(line[0], b' ' | b'\t') {
            let Some(last) = fields.last_mut() else {
                return Err(bad(line_no, "a continuation line before any header"));
            };
            last.span.end = end;
        } else {
            let colon = memchr::memchr(b':', line)
                .ok_or_else(|| bad(line_no, "a header line without a colon"))?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
                return Err(bad(line_no, "a header name with spaces or controls"));
            }
            let name = std::str::from_utf8(name).expect("printable ASCII");
            fields.push(Field {
                name,
                span: at..end,
            });
        }
        at = end;
    }
    // Headers only, no body.
    Ok((fields, &raw[raw.len()..]))
}

fn bad(line: usize, what: &str) -> MessageError {
    MessageError::Submitted(format!("header line {line}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcc_and_return_path_go_and_date_and_message_id_come() {
        let raw = b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\nBcc: hidden@example.net,\r\n  other@example.net\r\nReturn-Path: <x@y>\r\nSubject: hi\r\n\r\nBcc: not a header\r\n";
        let out = String::from_utf8(prepare_submitted(raw, "example.com").unwrap()).unwrap();
        assert!(!out.contains("hidden@") && !out.contains("other@"), "{out}");
        assert!(!out.contains("Return-Path"), "{out}");
        assert!(out.starts_with("Date: "), "{out}");
        assert!(
            out.contains("\r\nMessage-ID: <") && out.contains("@example.com>\r\n"),
            "{out}"
        );
        assert!(
            out.ends_with("Subject: hi\r\n\r\nBcc: not a header\r\n"),
            "{out}"
        );
    }

    #[test]
    fn given_date_and_message_id_are_kept() {
        let raw = b"Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <a@b>\r\nFrom: a@example.com\r\n\r\nx\r\n";
        let out = prepare_submitted(raw, "example.com").unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn malformed_headers_are_refused_with_their_line() {
        for (raw, says) in [
            (&b"Subject: x\r\n\r\n"[..], "exactly one From"),
            (b"From: a@x\r\nFrom: b@x\r\n\r\n", "exactly one From"),
            (
                b"From: a@x\r\nnot a header\r\n\r\n",
                "line 2: a header line without a colon",
            ),
            (b" folded\r\nFrom: a@x\r\n\r\n", "line 1: a continuation"),
            (b"From: a@x\r\nBad Name: y\r\n\r\n", "line 2: a header name"),
        ] {
            let e = prepare_submitted(raw, "x.test").unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
