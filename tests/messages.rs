//! Messages end to end: templates rendered, messages built, parsed back with
//! mail-parser and scanned byte by byte — header injection, header counts, MIME
//! structure, line lengths, 7-bit output, List-Unsubscribe.

use std::path::Path;

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;
use volley::address::Address;
use volley::message::{
    Attachment, ListUnsubscribe, Mailbox, MessageError, MessageSpec, UnsubscribeConfig,
    UnsubscribeTokens, build_message,
};
use volley::smtp::body::{BodyEncoder, is_eight_bit};
use volley::template::{TemplateError, Templates};

const DOMAIN: &str = "mail.example.com";

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn spec() -> MessageSpec {
    MessageSpec {
        from: Mailbox::named("Example", addr("news@example.com")),
        to: vec![Mailbox::named("Alice", addr("alice@example.org"))],
        cc: vec![],
        reply_to: None,
        subject: "Hello".into(),
        text: Some("Hello Alice\n".into()),
        html: None,
        attachments: vec![],
        headers: vec![],
        list_unsubscribe: None,
    }
}

/// The top-level header block, unfolded: `(name, value)` in order.
fn headers(message: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(message).expect("7-bit output is UTF-8");
    let end = text.find("\r\n\r\n").expect("a header block");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text[..end].split("\r\n") {
        if line.starts_with([' ', '\t']) {
            headers
                .last_mut()
                .expect("no leading continuation")
                .1
                .push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("name: value");
            headers.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    headers
}

/// mail-builder sends CRLF line ends; compare content with LF.
fn lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

fn count(headers: &[(String, String)], name: &str) -> usize {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// Every line ends in CRLF, has no bare CR or LF and is at most 998 octets; all of it
/// is 7-bit.
fn assert_wire_safe(message: &[u8]) {
    assert!(!is_eight_bit(message), "8-bit octet in output");
    assert!(message.ends_with(b"\r\n"));
    for (i, line) in message.split(|&b| b == b'\n').enumerate() {
        let Some(line) = line.strip_suffix(b"\r") else {
            assert!(line.is_empty(), "bare LF or unterminated line {i}");
            continue;
        };
        assert!(!line.contains(&b'\r'), "bare CR in line {i}");
        assert!(line.len() <= 998, "line {i} is {} octets", line.len());
    }
}

#[test]
fn header_injection_is_refused() {
    let evil = "Hi\r\nBcc: victim@x";
    type Edit = fn(&mut MessageSpec, &str);
    let table: &[(&str, Edit, &str)] = &[
        (
            "subject",
            |s, v| s.subject = v.into(),
            "subject contains CR, LF or NUL",
        ),
        (
            "from name",
            |s, v| s.from.name = Some(v.into()),
            "from.name",
        ),
        (
            "to name",
            |s, v| s.to[0].name = Some(v.into()),
            "to[0].name",
        ),
        (
            "cc name",
            |s, v| s.cc = vec![Mailbox::named(v, addr("c@example.org"))],
            "cc[0].name",
        ),
        (
            "reply-to name",
            |s, v| s.reply_to = Some(Mailbox::named(v, addr("r@example.org"))),
            "reply_to.name",
        ),
        (
            "header value",
            |s, v| s.headers = vec![("X-Tag".into(), v.into())],
            "header X-Tag",
        ),
        (
            "header name",
            |s, v| s.headers = vec![(v.into(), "x".into())],
            "header name",
        ),
        (
            "reserved header",
            |s, _| s.headers = vec![("bcc".into(), "victim@x".into())],
            "header bcc is set by volley",
        ),
        (
            "attachment name",
            |s, v| {
                s.attachments = vec![Attachment {
                    filename: v.into(),
                    content_type: "text/plain".into(),
                    content: b"x".to_vec(),
                }];
            },
            "attachments[0].filename",
        ),
        (
            "attachment type",
            |s, v| {
                s.attachments = vec![Attachment {
                    filename: "a.txt".into(),
                    content_type: format!("text/plain{v}"),
                    content: b"x".to_vec(),
                }];
            },
            "invalid content type",
        ),
    ];
    for (what, edit, expected) in table {
        for value in [evil, "Hi\nBcc: victim@x", "Hi\rBcc: victim@x", "nul\0byte"] {
            let mut s = spec();
            edit(&mut s, value);
            let err = build_message(&s, DOMAIN).expect_err(what).to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
    }
}

#[test]
fn awkward_values_are_encoded_and_parse_back() {
    let table: &[(&str, &str)] = &[
        // (display name, subject)
        ("Plain", "Plain subject"),
        ("Müller, Jörg", "Grüße aus Köln"),
        (
            "\"Quoted\" \\ Name",
            "Subject with \"quotes\", commas; and a \\ backslash",
        ),
        ("Bcc: victim@x", "Bcc: victim@x"),
        ("日本語の名前", "件名 😀"),
        ("a;b<c>d@e", "tab\there"),
    ];
    for (name, subject) in table {
        let mut s = spec();
        s.to = vec![Mailbox::named(*name, addr("alice@example.org"))];
        s.subject = (*subject).into();
        let built = build_message(&s, DOMAIN).unwrap();
        assert_wire_safe(&built);
        let parsed = MessageParser::default().parse(&built).unwrap();
        assert_eq!(parsed.subject(), Some(*subject), "{subject:?}");
        let to = parsed.to().and_then(|to| to.first()).unwrap();
        assert_eq!(
            (to.name(), to.address()),
            (Some(*name), Some("alice@example.org"))
        );
        let h = headers(&built);
        assert_eq!(count(&h, "Bcc"), 0, "{name:?}");
        assert_eq!(count(&h, "To"), 1);
    }
}

#[test]
fn exactly_one_of_each_header() {
    let cfg = UnsubscribeConfig {
        url: Some("https://example.com/unsubscribe/{token}".into()),
        mailto: Some("unsubscribe@example.com".into()),
        one_click: true,
        secret: "a secret of at least thirty-two bytes".into(),
        previous_secrets: Vec::new(),
    };
    let tokens = UnsubscribeTokens::new(&cfg.secret, &[]);
    let mut s = spec();
    s.cc = vec![Mailbox::new(addr("carol@example.org"))];
    s.reply_to = Some(Mailbox::new(addr("replies@example.com")));
    s.html = Some("<p>Hello</p>".into());
    s.headers = vec![
        ("X-Campaign".into(), "spring".into()),
        ("Precedence".into(), "bulk".into()),
    ];
    s.list_unsubscribe =
        ListUnsubscribe::for_recipient(&cfg, &tokens, token_for("job-7", "alice@example.org"))
            .unwrap();
    let built = build_message(&s, DOMAIN).unwrap();
    let h = headers(&built);
    for name in [
        "From",
        "To",
        "Cc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "X-Campaign",
        "Precedence",
    ] {
        assert_eq!(count(&h, name), 1, "{name} in {h:?}");
    }
    assert_eq!(count(&h, "Bcc"), 0);
    assert_eq!(count(&h, "Return-Path"), 0);

    let value = |name: &str| h.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(value("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
    assert_eq!(value("MIME-Version"), "1.0");
    let id = value("Message-ID");
    let local = id
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix(&format!("@{DOMAIN}>")))
        .unwrap_or_else(|| panic!("{id}"));
    assert!(
        local.len() == 32 && local.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );

    // The token in the header leads back to the job and the recipient.
    let unsubscribe = value("List-Unsubscribe");
    let token = unsubscribe
        .split_once("unsubscribe/")
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(token, _)| token)
        .unwrap();
    let who = tokens.verify(token).expect("a genuine token");
    assert_eq!(
        (who.job.as_str(), who.list.as_str(), who.address.as_str()),
        ("job-7", "default", "alice@example.org")
    );
    assert!(
        unsubscribe.ends_with(", <mailto:unsubscribe@example.com>"),
        "{unsubscribe}"
    );

    let parsed = MessageParser::default().parse(&built).unwrap();
    assert!(parsed.date().is_some(), "Date must parse");
    assert_eq!(parsed.message_id(), Some(&id[1..id.len() - 1]));
}

#[test]
fn no_one_click_without_https() {
    for (url, one_click) in [
        (Some("http://example.com/u/{token}"), true),
        (Some("https://example.com/u/{token}"), false),
        (None, true),
    ] {
        let cfg = UnsubscribeConfig {
            url: url.map(String::from),
            mailto: Some("u@example.com".into()),
            one_click,
            secret: "a secret of at least thirty-two bytes".into(),
            previous_secrets: Vec::new(),
        };
        let mut s = spec();
        s.list_unsubscribe = ListUnsubscribe::for_recipient(
            &cfg,
            &UnsubscribeTokens::new(&cfg.secret, &[]),
            token_for("j", "a@b.c"),
        )
        .unwrap();
        let h = headers(&build_message(&s, DOMAIN).unwrap());
        assert_eq!(count(&h, "List-Unsubscribe"), 1, "{url:?}");
        assert_eq!(count(&h, "List-Unsubscribe-Post"), 0, "{url:?} {one_click}");
    }
}

#[test]
fn message_ids_differ_between_messages() {
    let ids: std::collections::HashSet<String> = (0..200)
        .map(|_| {
            let h = headers(&build_message(&spec(), DOMAIN).unwrap());
            h.into_iter().find(|(n, _)| n == "Message-ID").unwrap().1
        })
        .collect();
    assert_eq!(ids.len(), 200);
    let err = build_message(&spec(), "bad domain").unwrap_err();
    assert!(matches!(err, MessageError::MessageIdDomain { .. }), "{err}");
}

#[test]
fn mime_structure() {
    let attachment = Attachment {
        filename: "report.pdf".into(),
        content_type: "application/pdf".into(),
        content: (0..=255u8).cycle().take(3000).collect(),
    };
    let table: &[(bool, bool, bool, &str, usize, usize)] = &[
        // text, html, attachment -> top type, text parts, html parts
        (true, false, false, "text/plain", 1, 0),
        (false, true, false, "text/html", 0, 1),
        (true, true, false, "multipart/alternative", 1, 1),
        (true, true, true, "multipart/mixed", 1, 1),
        (true, false, true, "multipart/mixed", 1, 0),
    ];
    for &(text, html, attach, top, texts, htmls) in table {
        let mut s = spec();
        s.text = text.then(|| "Plain text\n".to_owned());
        s.html = html.then(|| "<p>HTML</p>".to_owned());
        s.attachments = if attach {
            vec![attachment.clone()]
        } else {
            vec![]
        };
        let built = build_message(&s, DOMAIN).unwrap();
        assert_wire_safe(&built);
        let parsed = MessageParser::default().parse(&built).unwrap();
        let ct = parsed.root_part().content_type().unwrap();
        assert_eq!(format!("{}/{}", ct.ctype(), ct.subtype().unwrap()), top);
        assert_eq!(
            parsed
                .text_bodies()
                .filter(|p| p.is_text() && !p.is_text_html())
                .count(),
            texts,
            "{top}"
        );
        assert_eq!(
            parsed.html_bodies().filter(|p| p.is_text_html()).count(),
            htmls,
            "{top}"
        );
        if attach {
            let part = parsed.attachment(0).unwrap();
            assert_eq!(part.attachment_name(), Some("report.pdf"));
            assert_eq!(part.contents(), attachment.content.as_slice());
        }
    }
    let mut s = spec();
    s.text = None;
    assert!(matches!(
        build_message(&s, DOMAIN),
        Err(MessageError::NoBody)
    ));
}

#[test]
fn only_hidden_recipients_show_an_empty_group() {
    let mut s = spec();
    s.to.clear();
    s.cc.clear();
    let built = String::from_utf8(build_message(&s, DOMAIN).unwrap()).unwrap();
    let h = headers(built.as_bytes());
    assert_eq!(count(&h, "To"), 1, "{built}");
    assert!(
        built.contains("To: undisclosed-recipients:;\r\n"),
        "{built}"
    );
    assert!(
        !built.contains("@example.org"),
        "no recipient shown: {built}"
    );
}

#[test]
fn long_lines_stay_under_998_octets() {
    let long_word = "x".repeat(5000);
    let long_words = "word ".repeat(1000);
    let table: &[(&str, MessageSpec)] = &[
        (
            "5000-char body line",
            MessageSpec {
                text: Some(long_word.clone()),
                html: Some(format!("<p>{long_word}</p>")),
                ..spec()
            },
        ),
        (
            "5000-char non-ASCII body line",
            MessageSpec {
                text: Some("é".repeat(5000)),
                ..spec()
            },
        ),
        (
            "long subject, no spaces",
            MessageSpec {
                subject: long_word.clone(),
                ..spec()
            },
        ),
        (
            "long subject, words",
            MessageSpec {
                subject: long_words.clone(),
                ..spec()
            },
        ),
        (
            "long custom header",
            MessageSpec {
                headers: vec![("X-Long".into(), long_word.clone())],
                ..spec()
            },
        ),
        (
            "long display name",
            MessageSpec {
                from: Mailbox::named(long_word.as_str(), addr("a@example.com")),
                ..spec()
            },
        ),
        (
            "many recipients",
            MessageSpec {
                to: (0..300)
                    .map(|i| {
                        Mailbox::named(format!("Person {i}"), addr(&format!("p{i}@example.org")))
                    })
                    .collect(),
                ..spec()
            },
        ),
        (
            "long attachment name",
            MessageSpec {
                attachments: vec![Attachment {
                    filename: format!("{}.txt", "ä".repeat(300)),
                    content_type: "text/plain".into(),
                    content: long_word.clone().into_bytes(),
                }],
                ..spec()
            },
        ),
    ];
    for (what, s) in table {
        let built = build_message(s, DOMAIN).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_wire_safe(&built);
        // The content survives the encoding.
        let parsed = MessageParser::default().parse(&built).unwrap();
        if let Some(text) = &s.text {
            assert_eq!(
                lf(&parsed.body_text(0).unwrap()).trim_end(),
                text.trim_end(),
                "{what}"
            );
        }
        assert_eq!(parsed.subject(), Some(s.subject.as_str()), "{what}");
    }
}

#[test]
fn output_is_seven_bit_and_unchanged_on_the_wire() {
    let s = MessageSpec {
        from: Mailbox::named("Zoë's Café", addr("cafe@example.com")),
        subject: "Ünïcödé 😀 subject".into(),
        text: Some("Grüße\nline two\r\nbare CR\rhere\n".into()),
        html: Some("<p>日本語 &amp; ünïcode</p>".into()),
        attachments: vec![Attachment {
            filename: "résumé.txt".into(),
            content_type: "text/plain; charset=utf-8".into(),
            content: "naïve text".as_bytes().to_vec(),
        }],
        headers: vec![("X-Note".into(), "café".into())],
        ..spec()
    };
    let built = build_message(&s, DOMAIN).unwrap();
    assert_wire_safe(&built);
    // What a server without 8BITMIME receives: the SMTP client's CRLF normalisation
    // leaves the message byte for byte as it is.
    let mut wire = Vec::new();
    let mut encoder = BodyEncoder::crlf_only();
    encoder.push(&built, &mut wire);
    encoder.finish(&mut wire);
    assert_eq!(wire, built);

    let parsed = MessageParser::default().parse(&built).unwrap();
    assert_eq!(parsed.subject(), Some("Ünïcödé 😀 subject"));
    assert_eq!(
        parsed.from().unwrap().first().unwrap().name(),
        Some("Zoë's Café")
    );
    assert_eq!(parsed.body_html(0).unwrap(), "<p>日本語 &amp; ünïcode</p>");
    assert!(lf(&parsed.body_text(0).unwrap()).starts_with("Grüße\nline two\n"));
    assert_eq!(
        parsed.attachment(0).unwrap().attachment_name(),
        Some("résumé.txt")
    );
    // mail-parser decodes encoded words in known headers only: read X-Note's value
    // as a subject.
    let raw = parsed.header_raw("X-Note").unwrap().trim();
    let as_subject = format!("Subject: {raw}\r\n\r\n");
    let reparsed = MessageParser::default()
        .parse(as_subject.as_bytes())
        .unwrap();
    assert_eq!(reparsed.subject(), Some("café"));
    assert!(
        parsed
            .header_raw("X-Note")
            .unwrap()
            .trim()
            .starts_with("=?utf-8?")
    );
}

fn shipped_templates() -> Templates {
    Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")).unwrap()
}

#[test]
fn rendered_templates_build_into_messages() {
    let templates = shipped_templates();
    let evil = "Hi\r\nBcc: victim@x";
    // A line break in a variable: the subject refuses it, naming the template.
    let err = templates
        .render("welcome", &json!({"name": evil}))
        .unwrap_err();
    assert!(matches!(&err, TemplateError::SubjectLineBreak { template } if template == "welcome"));

    let vars = json!({"name": "<script>alert('x')</script> & Tom", "items": [
        {"title": "Rust & email", "url": "https://example.com/a?x=1&y=2"},
        {"title": "Ünïcode", "url": "https://example.com/b"},
    ]});
    let rendered = templates.render("newsletter", &vars).unwrap();
    assert_eq!(
        rendered.subject,
        "This week's picks for <script>alert('x')</script> & Tom"
    );
    let html = rendered.html.as_deref().unwrap();
    assert!(
        html.contains("Hello &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Tom"),
        "{html}"
    );
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(
        rendered
            .text
            .contains("Hello <script>alert('x')</script> & Tom"),
        "{}",
        rendered.text
    );
    assert!(
        rendered
            .text
            .contains("- Rust & email (https://example.com/a?x=1&y=2)"),
        "{}",
        rendered.text
    );
    assert!(
        !rendered.text.contains('<') || rendered.text.contains("<script>"),
        "tags stripped"
    );

    let s = MessageSpec {
        subject: rendered.subject,
        text: Some(rendered.text),
        html: rendered.html,
        ..spec()
    };
    let built = build_message(&s, DOMAIN).unwrap();
    assert_wire_safe(&built);
    let parsed = MessageParser::default().parse(&built).unwrap();
    assert_eq!(parsed.subject(), Some(s.subject.as_str()));
    assert_eq!(parsed.body_html(0).map(|h| lf(&h)), s.html);
}

#[test]
fn missing_variables_are_refused_at_check() {
    let templates = shipped_templates();
    let table = [
        ("welcome", json!({}), "welcome/subject.hbs", "name"),
        (
            "receipt",
            json!({"name": "A"}),
            "receipt/subject.hbs",
            "order_id",
        ),
        (
            "receipt",
            json!({"name": "A", "order_id": "1", "lines": [{"item": "x"}], "total": "1"}),
            "receipt/html.hbs",
            "amount",
        ),
        (
            "newsletter",
            json!({"items": []}),
            "newsletter/subject.hbs",
            "name",
        ),
    ];
    for (name, vars, file, variable) in table {
        let err = templates.check(name, &vars).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(name) && message.contains(file) && message.contains(variable),
            "{message}"
        );
    }
}

/// The unsubscribe token's subject: `address` of job `job`, leaving the default list.
fn token_for<'a>(job: &'a str, address: &'a str) -> volley::message::TokenFor<'a> {
    volley::message::TokenFor {
        job,
        list: "default",
        address,
        issued: std::time::SystemTime::now(),
    }
}
