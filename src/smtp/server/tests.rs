//! The server session driven by scripted input: what a client would see.

use std::sync::Arc;

use super::*;

fn settings(starttls: bool, auth: bool) -> Arc<ServerSettings> {
    Arc::new(ServerSettings {
        hostname: "mx.volley.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        starttls,
        auth,
    })
}

/// Runs the session over `input` (fed at once, as a pipelining client would), accepting
/// every sender and recipient except those containing "refused", storing every message,
/// and taking credentials `ann`/`secret`. Returns the output and the stored messages.
fn run(session: &mut Session, input: &[u8]) -> (String, Vec<Envelope>) {
    session.feed(input);
    let mut stored = Vec::new();
    loop {
        match session.next_event() {
            Event::NeedInput | Event::Close => break,
            Event::StartTls => session.tls_started(),
            Event::Authenticate { user, password } => {
                let ok = user == "ann" && password == "secret";
                session.authenticated(ok.then_some(user));
            }
            Event::Mail { from, .. } => {
                let decision = if from.contains("refused") {
                    Err(ServerReply::new(550, "5.7.1", "relaying denied"))
                } else {
                    Ok(())
                };
                session.mail_decided(from, decision);
            }
            Event::Rcpt { to } => {
                let decision = if to.contains("refused") {
                    Err(ServerReply::new(550, "5.1.1", "no such user"))
                } else {
                    Ok(())
                };
                session.rcpt_decided(to, decision);
            }
            Event::Message(envelope) => {
                let id = format!("JOB{}", envelope.content.len());
                stored.push(envelope);
                session.stored(Ok(id));
            }
        }
    }
    let out = String::from_utf8(session.take_output()).unwrap();
    (out, stored)
}

fn codes(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[test]
fn a_pipelined_transaction_gets_one_reply_per_command_in_order() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"EHLO client.test\r\nMAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<refused@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\nSubject: hi\r\n\r\n..x\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "550", "250", "354", "250", "221"
        ],
        "{out}"
    );
    assert!(
        out.contains("250-PIPELINING\r\n") && out.contains("250 CHUNKING\r\n"),
        "{out}"
    );
    assert!(out.contains("queued as JOB19"), "{out}");
    assert_eq!(
        stored,
        [Envelope {
            from: "a@example.com".into(),
            to: vec!["b@example.org".into(), "c@example.org".into()],
            content: b"Subject: hi\r\n\r\n.x\r\n".to_vec(),
            user: None,
        }]
    );
}

#[test]
fn commands_out_of_order_are_refused_and_the_session_goes_on() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"MAIL FROM:<a@example.com>\r\nEHLO c\r\nRCPT TO:<b@example.org>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\nRSET\r\nNOOP\r\nVRFY ann\r\nEXPN list\r\nFOO\r\nHELO c\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "220", "503", "250", "503", "503", "250", "554", "503", "250", "250", "252", "502",
            "500", "250"
        ],
        "{out}"
    );
    assert!(stored.is_empty());
}

#[test]
fn a_smuggled_end_of_data_is_content_and_the_message_is_refused() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n",
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "550", "250"],
        "{out}"
    );
    assert!(out.contains("550 5.6.0"), "{out}");
    assert!(stored.is_empty(), "neither message is taken");
}

#[test]
fn limits_on_size_recipients_and_line_length() {
    let mut s = Session::new(settings(false, false), false);
    let big = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com> SIZE=5000\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<1@x.org>\r\nRCPT TO:<2@x.org>\r\nRCPT TO:<3@x.org>\r\nRCPT TO:<4@x.org>\r\nDATA\r\n{}\r\n.\r\nNOOP\r\n",
        "y".repeat(2000)
    );
    let (out, stored) = run(&mut s, big.as_bytes());
    assert_eq!(
        codes(&out),
        [
            "220", "250", "552", "250", "250", "250", "250", "452", "354", "552", "250"
        ],
        "{out}"
    );
    assert!(stored.is_empty());
    let mut s = Session::new(settings(false, false), false);
    let long = format!("EHLO {}\r\n", "h".repeat(5000));
    let (out, _) = run(&mut s, long.as_bytes());
    assert!(out.ends_with("500 5.5.6 line too long\r\n"), "{out}");
    assert_eq!(s.next_event(), Event::Close);
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nBDAT 9\r\nSubject: BDAT 9 LAST\r\nx\r\n\r\nyo\r\nNOOP\r\n",
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "250", "250"],
        "{out}"
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].from, "");
    assert_eq!(stored[0].content, b"Subject: x\r\n\r\nyo\r\n");
    // Without a recipient, the chunks are read and refused, and the session stays in step.
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(&mut s, b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(codes(&out), ["220", "250", "503", "250"], "{out}");
    assert!(stored.is_empty());
}

#[test]
fn a_transaction_begun_with_bdat_ends_with_bdat() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 12\r\nSubject: x\r\nDATA\r\nBDAT 6 LAST\r\n\r\nyo\r\n",
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "503", "250"],
        "{out}"
    );
    assert_eq!(stored.len(), 1, "{out}");
    assert_eq!(stored[0].content, b"Subject: x\r\n\r\nyo\r\n");
}

#[test]
fn a_chunk_refused_before_mail_does_not_refuse_the_next_transaction() {
    let mut s = Session::new(settings(false, false), false);
    let (out, stored) = run(
        &mut s,
        b"EHLO c\r\nBDAT 3\r\nabcMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 17 LAST\r\nSubject: y\r\n\r\nz\r\n",
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "503", "250", "250", "250"],
        "{out}"
    );
    assert_eq!(stored.len(), 1, "{out}");
    assert_eq!(stored[0].content, b"Subject: y\r\n\r\nz\r\n");
}

#[test]
fn a_bdat_without_a_readable_size_closes_the_connection() {
    for bdat in [
        "BDAT 20 FOO",
        "BDAT 1000000000000000000000 LAST",
        "BDAT",
        "bdat x",
    ] {
        let mut s = Session::new(settings(false, false), false);
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n{bdat}\r\nRCPT TO:<c@example.org>\r\n"
        );
        let (out, stored) = run(&mut s, input.as_bytes());
        let codes = codes(&out);
        assert_eq!(codes.len(), 6, "{bdat}: {out}");
        assert!(codes[4].starts_with('5'), "{bdat}: {out}");
        assert_eq!(
            codes[5], "421",
            "{bdat}: the chunk is never read as commands: {out}"
        );
        assert!(stored.is_empty());
        assert_eq!(s.next_event(), Event::Close);
    }
}

#[test]
fn a_connection_is_closed_after_three_failed_logins() {
    let mut s = Session::new(settings(false, true), false);
    let wrong = base64::engine::general_purpose::STANDARD.encode(b"\0ann\0guess");
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {wrong}\r\nNOOP\r\n"
    );
    let (out, _) = run(&mut s, input.as_bytes());
    assert_eq!(
        codes(&out),
        ["220", "250", "535", "535", "535", "421"],
        "{out}"
    );
    assert_eq!(s.auth_failures(), 3);
    assert_eq!(s.next_event(), Event::Close);
    // Two failures and then the right password: the user is in.
    let mut s = Session::new(settings(false, true), false);
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0ann\0secret");
    let input =
        format!("EHLO c\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {wrong}\r\nAUTH PLAIN {plain}\r\n");
    let (out, _) = run(&mut s, input.as_bytes());
    assert_eq!(codes(&out), ["220", "250", "535", "535", "235"], "{out}");
    assert_eq!(s.user(), Some("ann"));
}

#[test]
fn auth_needs_tls_first_and_checks_credentials() {
    let mut s = Session::new(settings(true, true), false);
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0ann\0secret");
    let wrong = base64::engine::general_purpose::STANDARD.encode(b"\0ann\0guess");
    let input = format!("EHLO c\r\nAUTH PLAIN {plain}\r\nSTARTTLS\r\nAUTH PLAIN {plain}\r\n");
    let (out, _) = run(&mut s, input.as_bytes());
    assert!(
        out.contains("250 STARTTLS\r\n") && !out.contains("AUTH PLAIN"),
        "{out}"
    );
    assert!(out.contains("538 5.7.11"), "no AUTH in clear text: {out}");
    assert!(
        out.ends_with("220 2.0.0 ready to start TLS\r\n"),
        "input after STARTTLS is dropped: {out}"
    );
    assert!(s.is_tls());
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {wrong}\r\nAUTH LOGIN\r\nYW5u\r\nc2VjcmV0\r\nMAIL FROM:<ann@example.com>\r\n"
    );
    let (out, _) = run(&mut s, input.as_bytes());
    assert!(
        !out.contains("STARTTLS") && out.contains("250 AUTH PLAIN LOGIN\r\n"),
        "{out}"
    );
    assert_eq!(
        codes(&out),
        ["250", "535", "334", "334", "235", "250"],
        "{out}"
    );
    assert_eq!(s.user(), Some("ann"));
}

#[test]
fn replies_never_carry_a_line_break_from_their_text() {
    let mut out = Vec::new();
    ServerReply::new(550, "5.1.1", "no\r\nsuch user").write(&mut out);
    assert_eq!(out, b"550 5.1.1 no  such user\r\n");
}

#[test]
fn input_split_anywhere_gives_the_same_session() {
    let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\n.hi\r\nthere\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 5 LAST\r\nhey\r\nQUIT\r\n";
    let mut whole = Session::new(settings(false, false), false);
    let expected = run(&mut whole, input);
    assert_eq!(expected.1.len(), 2);
    for split in 1..input.len() {
        let mut s = Session::new(settings(false, false), false);
        let (mut out, mut stored) = run(&mut s, &input[..split]);
        let (rest_out, rest_stored) = run(&mut s, &input[split..]);
        out.push_str(&rest_out);
        stored.extend(rest_stored);
        assert_eq!((out, stored), expected, "split at {split}");
    }
}
