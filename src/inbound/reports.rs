//! Reading the mail that comes back: delivery status notifications (RFC 3464,
//! `multipart/report; report-type=delivery-status`), complaints (RFC 5965 ARF,
//! `report-type=feedback-report`), and plain-text bounces without a report, parsed with
//! mail-parser. Which delivery a report is about is not taken from its content (anybody
//! can write anything there) but from a signed VERP address: the one the report was sent
//! to, or one found in the original message it quotes.

use std::collections::HashSet;

use mail_parser::{MessageParser, MimeHeaders};

/// Signed-address candidates taken from one message at most: a real report quotes a
/// handful; a made-up one must not make us check millions of tags.
const MAX_CANDIDATES: usize = 64;

/// Feedback types that are a recipient's complaint (RFC 5965): `not-spam` (RFC 6430),
/// `auth-failure` (RFC 6591), `virus` and `other` are not, and change nothing.
pub const COMPLAINTS: [&str; 2] = ["abuse", "fraud"];

/// What a received message reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A delivery status notification: one entry per recipient it speaks of.
    Delivery(Vec<DsnRecipient>),
    /// A feedback report: its feedback type (`abuse`, `fraud`, `not-spam`, ...); only
    /// those in [`COMPLAINTS`] are complaints.
    Complaint {
        /// `Feedback-Type`, lower case; empty when the report has none (malformed).
        feedback_type: String,
    },
    /// A bounce without a report: the first SMTP reply it quotes that carries a 5xx
    /// code and an enhanced status code, if any.
    Plain {
        /// The quoted reply, e.g. `550 5.1.1 no such user`.
        reply: Option<String>,
    },
}

/// One recipient block of a DSN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsnRecipient {
    /// `Final-Recipient`, without its address type.
    pub final_recipient: String,
    /// `Action`: failed, delayed, delivered, relayed, expanded.
    pub action: String,
    /// `Status`: an enhanced status code.
    pub status: String,
    /// `Diagnostic-Code`, without its type (`smtp; 550 5.1.1 ...` → `550 5.1.1 ...`).
    pub diagnostic: String,
}

/// A parsed message: its report, and every address-like token in it (for finding a
/// signed VERP address in the quoted original).
#[derive(Debug)]
pub struct Parsed {
    /// What it reports.
    pub report: Report,
    /// Tokens with an `@` and a `+`, in order of appearance.
    pub candidates: Vec<String>,
}

/// Parses a received message; `None` when it is not a message at all.
pub fn parse(raw: &[u8]) -> Option<Parsed> {
    let message = MessageParser::default().parse(raw)?;
    let report_type = message
        .content_type()
        .filter(|c| c.ctype().eq_ignore_ascii_case("multipart"))
        .and_then(|c| c.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    let part_of = |subtype: &str| {
        message.parts.iter().find(|p| {
            p.content_type().is_some_and(|c| {
                c.ctype().eq_ignore_ascii_case("message")
                    && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case(subtype))
            })
        })
    };
    let report = match report_type.as_deref() {
        Some("delivery-status") => {
            let status = part_of("delivery-status")
                .or_else(|| part_of("global-delivery-status"))
                .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
                .unwrap_or_default();
            Report::Delivery(delivery_status(&status))
        }
        Some("feedback-report") => {
            let fields = part_of("feedback-report")
                .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
                .unwrap_or_default();
            let feedback_type = field_groups(&fields)
                .into_iter()
                .flatten()
                .find(|(name, _)| name == "feedback-type")
                .map(|(_, v)| v.trim().to_ascii_lowercase())
                .unwrap_or_default();
            Report::Complaint { feedback_type }
        }
        _ => Report::Plain {
            reply: message
                .body_text(0)
                .and_then(|text| quoted_reply(before_the_returned_message(&text))),
        },
    };
    Some(Parsed {
        report,
        candidates: candidates(raw),
    })
}

/// The recipient blocks of a `message/delivery-status` body: groups of header-style
/// fields separated by blank lines, the first group being about the message.
fn delivery_status(body: &str) -> Vec<DsnRecipient> {
    field_groups(body)
        .into_iter()
        .skip(1)
        .filter_map(|group| {
            let mut r = DsnRecipient::default();
            for (name, value) in group {
                let after_type = |v: &str| {
                    v.split_once(';')
                        .map_or(v, |(_, rest)| rest)
                        .trim()
                        .to_owned()
                };
                match name.as_str() {
                    "final-recipient" => r.final_recipient = after_type(&value),
                    "action" => r.action = value.trim().to_ascii_lowercase(),
                    "status" => r.status = value.trim().to_owned(),
                    "diagnostic-code" => r.diagnostic = after_type(&value),
                    _ => {}
                }
            }
            (!r.action.is_empty()).then_some(r)
        })
        .collect()
}

/// Header-style fields (`Name: value`, folded lines joined) in groups separated by blank
/// lines; names lower case.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut group: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// A plain bounce's own text, without the copy of the returned message that many
/// append after a ruled line (`--- Below this line is a copy of the message.`, `-----
/// Original message follows -----`): a refusal quoted in that copy is not the bounce's.
/// Any ruled line that speaks of a message ends the text, so a bounce that puts one
/// before its reason is not acted on: erring that way suppresses nobody.
fn before_the_returned_message(text: &str) -> &str {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let lower = line.trim().to_ascii_lowercase();
        let ruled = ["---", "===", "***"].iter().any(|r| lower.starts_with(r));
        let marker = (ruled && (lower.contains("message") || lower.contains("headers")))
            || lower.starts_with("original message headers");
        if marker {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// The first line that quotes an SMTP refusal with an enhanced code: `5xx 5.x.x ...`
/// (or `5xx-5.x.x`, or `#5.x.x` after a 5xx). Only permanent ones: a bounce that quotes
/// nothing so clear is not acted on.
fn quoted_reply(text: &str) -> Option<String> {
    for line in text.lines() {
        let bytes = line.as_bytes();
        for at in 0..bytes.len().saturating_sub(8) {
            let w = &bytes[at..];
            let code = w[0] == b'5' && w[1].is_ascii_digit() && w[2].is_ascii_digit();
            let start = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
            if code && start && matches!(w[3], b' ' | b'-') {
                let rest = &line[at + 4..];
                let status = rest.trim_start_matches('#');
                let ok = status.starts_with("5.")
                    && status.as_bytes().get(2).is_some_and(u8::is_ascii_digit);
                if ok {
                    return Some(format!("{} {}", &line[at..at + 3], status.trim()));
                }
            }
        }
    }
    None
}

/// Tokens that could be addresses with a `+` tag, in order, each once, at most
/// [`MAX_CANDIDATES`].
fn candidates(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let separators = |c: char| c.is_whitespace() || "<>\"'();,:[]".contains(c);
    let mut seen = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for token in text.split(separators) {
        let token = token.trim_end_matches('.');
        if token.contains('@') && token.contains('+') && seen.insert(token) {
            out.push(token.to_owned());
            if out.len() == MAX_CANDIDATES {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DSN as Postfix writes one (abridged).
    const DSN: &str = "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r
To: bounces+01m8tqn3qcpb74qt8sp7rf4ky9.3.0123456789ab@bounce.example.com\r
Subject: Undelivered Mail Returned to Sender\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"B1\"\r
\r
--B1\r
Content-Type: text/plain\r
\r
I'm sorry to have to inform you that your message could not be delivered.\r
\r
--B1\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.org\r
Arrival-Date: Wed,  2 Dec 2026 08:00:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; ann@example.org\r
Original-Recipient: rfc822;ann@example.org\r
Action: failed\r
Status: 5.1.1\r
Diagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: Recipient address\r
    rejected: User unknown\r
\r
--B1\r
Content-Type: text/rfc822-headers\r
\r
Return-Path: <bounces+01m8tqn3qcpb74qt8sp7rf4ky9.3.0123456789ab@bounce.example.com>\r
From: news@example.com\r
\r
--B1--\r
";

    #[test]
    fn a_dsn_gives_its_recipients() {
        let parsed = parse(DSN.as_bytes()).unwrap();
        assert_eq!(
            parsed.report,
            Report::Delivery(vec![DsnRecipient {
                final_recipient: "ann@example.org".into(),
                action: "failed".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown"
                    .into(),
            }])
        );
        assert_eq!(
            parsed.candidates,
            ["bounces+01m8tqn3qcpb74qt8sp7rf4ky9.3.0123456789ab@bounce.example.com"]
        );
    }

    #[test]
    fn a_complaint_gives_its_feedback_type() {
        let arf = "From: feedback@provider.example\r
To: fbl@bounce.example.com\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r
\r
--F\r
Content-Type: text/plain\r
\r
This is an email abuse report.\r
--F\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: SomeGenerator/1.0\r
Version: 1\r
\r
--F\r
Content-Type: message/rfc822\r
\r
Return-Path: <bounces+abc.1.0123456789ab@bounce.example.com>\r
From: news@example.com\r
To: reader@example.net\r
Subject: News\r
\r
Hello\r
--F--\r
";
        let parsed = parse(arf.as_bytes()).unwrap();
        assert_eq!(
            parsed.report,
            Report::Complaint {
                feedback_type: "abuse".into()
            }
        );
        assert!(
            parsed
                .candidates
                .contains(&"bounces+abc.1.0123456789ab@bounce.example.com".to_owned())
        );
    }

    #[test]
    fn candidates_are_each_taken_once_and_bounded() {
        let mut raw = String::from("From: x@y.example\r\nSubject: many\r\n\r\n");
        for i in 0..100_000 {
            raw.push_str(&format!("a+{i}@b.example a+1@b.example\r\n"));
        }
        let found = parse(raw.as_bytes()).unwrap().candidates;
        assert_eq!(found.len(), MAX_CANDIDATES);
        assert_eq!(found[0], "a+0@b.example");
        assert_eq!(found[1], "a+1@b.example");
        assert_eq!(found[2], "a+2@b.example");
    }

    #[test]
    fn a_plain_bounce_quotes_a_permanent_reply_or_nothing() {
        let plain = "From: postmaster@old.example\r\nSubject: failure notice\r\n\r\nHi. This is the qmail-send program.\r\n<ann@old.example>:\r\nRemote host said: 550-5.1.1 The email account does not exist\r\n";
        assert_eq!(
            parse(plain.as_bytes()).unwrap().report,
            Report::Plain {
                reply: Some("550 5.1.1 The email account does not exist".into())
            }
        );
        // A refusal quoted in the returned copy, or in the headers, is not the bounce's.
        let quoted_copy = "From: postmaster@old.example\r\nX-Note: 550 5.1.1 in a header\r\nSubject: failure notice\r\n\r\nHi. This is the qmail-send program.\r\nSorry, I could not deliver it; I will keep trying.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\nSubject: news\r\n\r\nWe got 550 5.1.1 errors last month.\r\n";
        assert_eq!(
            parse(quoted_copy.as_bytes()).unwrap().report,
            Report::Plain { reply: None }
        );
        // sendmail's plain bounce: the transcript comes before the returned message.
        let sendmail = "From: MAILER-DAEMON@old.example\r\nSubject: Returned mail\r\n\r\nThe original message was received at Thu, 3 Dec 2026 10:00:00 GMT\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<ann@old.example>\r\n\r\n   ----- Transcript of session follows -----\r\n<<< 550 5.1.1 <ann@old.example>... User unknown\r\n\r\n   ----- Original message follows -----\r\n\r\nSubject: news\r\n\r\n552 5.2.2 quoted in the copy\r\n";
        assert_eq!(
            parse(sendmail.as_bytes()).unwrap().report,
            Report::Plain {
                reply: Some("550 5.1.1 <ann@old.example>... User unknown".into())
            }
        );
        let vague =
            "From: a@b.example\r\nSubject: out of office\r\n\r\nI am away until 5 December.\r\n";
        assert_eq!(
            parse(vague.as_bytes()).unwrap().report,
            Report::Plain { reply: None }
        );
    }
}
