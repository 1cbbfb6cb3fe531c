//! Property tests of the reply parser and the body encoder: arbitrary bytes never
//! panic, memory stays bounded, and encoded content never carries a bare line end
//! or a premature end of data.

use bytes::BytesMut;
use proptest::prelude::*;
use volley::smtp::ReplyParser;
use volley::smtp::body::{BodyEncoder, crlf_len, encode_data};
use volley::smtp::reply::{MAX_LINE, MAX_LINES, MAX_REPLY};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes, fed in any split, either parse, ask for more, or fail cleanly; the
    /// buffer never holds more than one line's cap of unparsed input.
    #[test]
    fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..2048) {
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::new();
        let split = split.min(data.len());
        for part in [&data[..split], &data[split..]] {
            buf.extend_from_slice(part);
            loop {
                match parser.parse(&mut buf) {
                    Ok(Some(reply)) => prop_assert!(reply.text().len() <= MAX_REPLY),
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            prop_assert!(buf.len() <= MAX_LINE + part.len());
        }
    }

    /// Reply-shaped input (digits, separators, text) round-trips codes and never
    /// yields more lines than the cap.
    #[test]
    fn parser_handles_reply_shaped_input(lines in proptest::collection::vec(("[2-5][0-5][0-9]", "[ -]", "[ -~]{0,40}"), 1..20)) {
        let mut wire = Vec::new();
        for (code, sep, text) in &lines {
            wire.extend_from_slice(format!("{code}{sep}{text}\r\n").as_bytes());
        }
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::from(&wire[..]);
        while let Ok(Some(reply)) = parser.parse(&mut buf) {
            prop_assert!(reply.lines().count() <= MAX_LINES);
        }
    }

    /// Whatever the content, DATA encoding has only CRLF line ends, and the only
    /// end-of-data sequence is the final one.
    #[test]
    fn data_encoding_is_transparent(body in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..200), split in 0usize..200) {
        let mut whole = Vec::new();
        encode_data(&body, &mut whole);
        let split = split.min(body.len());
        let mut enc = BodyEncoder::dot_stuffing();
        let mut chunked = Vec::new();
        enc.push(&body[..split], &mut chunked);
        enc.push(&body[split..], &mut chunked);
        enc.finish(&mut chunked);
        prop_assert_eq!(&whole, &chunked);
        for (i, b) in whole.iter().enumerate() {
            if *b == b'\n' { prop_assert!(i > 0 && whole[i - 1] == b'\r'); }
            if *b == b'\r' { prop_assert_eq!(whole.get(i + 1), Some(&b'\n')); }
        }
        let wire = [b"\r\n".as_slice(), &whole].concat();
        let ends: Vec<usize> = wire.windows(5).enumerate().filter(|(_, w)| *w == b"\r\n.\r\n").map(|(i, _)| i).collect();
        prop_assert_eq!(ends, vec![wire.len() - 5]);
        // Un-stuffing gives back the normalised content, whose size is crlf_len.
        let content = &whole[..whole.len() - 3];
        let unstuffed: usize = content.split_inclusive(|b| *b == b'\n').map(|l| l.len() - usize::from(l.starts_with(b"."))).sum();
        prop_assert_eq!(unstuffed, crlf_len(&body));
    }
}

/// A server that sends continuation lines forever is cut off at the cap.
#[test]
fn endless_continuation_lines_are_bounded() {
    let mut parser = ReplyParser::new();
    let mut buf = BytesMut::new();
    for i in 0..100_000 {
        buf.extend_from_slice(b"250-this line never ends the reply\r\n");
        if let Err(e) = parser.parse(&mut buf) {
            assert!(i <= MAX_LINES, "stopped only after {i} lines");
            assert!(e.to_string().contains("longer"), "{e}");
            return;
        }
    }
    panic!("the parser accepted 100000 continuation lines");
}
