//! SMTP replies: the typed value and an incremental, resumable parser.
//!
//! The parser is sans-IO: it consumes complete lines from a caller-owned buffer and
//! keeps the lines of a multi-line reply it has already seen, so a reply split across
//! any number of reads is assembled without re-scanning. Memory is bounded by
//! [`MAX_LINE`], [`MAX_LINES`] and [`MAX_REPLY`]: a server that sends endless
//! continuation lines or a line without end gets an error, not our memory.

use std::fmt;

use bytes::{Buf, BytesMut};

/// Longest reply line accepted, terminator excluded. RFC 5321 allows 512; real servers
/// send longer texts, so we are generous but bounded.
pub const MAX_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply (an EHLO reply has about twenty).
pub const MAX_LINES: usize = 128;
/// Most text octets accepted in one reply.
pub const MAX_REPLY: usize = 64 * 1024;

/// A three-digit reply code (RFC 5321 section 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// Builds a code; `None` unless it has the RFC 5321 shape `[2-5][0-5][0-9]`.
    pub fn new(code: u16) -> Option<Self> {
        let (first, second) = (code / 100, (code / 10) % 10);
        ((2..=5).contains(&first) && second <= 5).then_some(Self(code))
    }

    /// The numeric value, e.g. 250.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The first digit: 2 completion, 3 intermediate, 4 transient, 5 permanent.
    pub fn class(self) -> u8 {
        // Codes are 200..=599 (checked when parsed): the class is one digit.
        u8::try_from(self.0 / 100).unwrap_or(u8::MAX)
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(self) -> bool {
        self.class() == 2
    }

    /// 3xx: send more (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(self) -> bool {
        self.class() == 3
    }

    /// 4xx: try again later.
    pub fn is_transient(self) -> bool {
        self.class() == 4
    }

    /// 5xx: do not try again as is.
    pub fn is_permanent(self) -> bool {
        self.class() == 5
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    /// The subject: 1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol,
    /// 6 content, 7 security or policy.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `c.s.d` at the start of `text`, returning the code and the octets it
    /// used. Subject and detail have at most three digits each (RFC 3463).
    pub fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let class = match text.first()? {
            b @ (b'2' | b'4' | b'5') => b - b'0',
            _ => return None,
        };
        if text.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, s_len) = number(&text[2..])?;
        if text.get(2 + s_len) != Some(&b'.') {
            return None;
        }
        let (detail, d_len) = number(&text[3 + s_len..])?;
        let used = 3 + s_len + d_len;
        match text.get(used) {
            None | Some(b' ' | b'\t') => Some((Self::new(class, subject, detail), used)),
            _ => None,
        }
    }
}

/// One to three ASCII digits at the start of `s`.
fn number(s: &[u8]) -> Option<(u16, usize)> {
    let len = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 3 {
        return None;
    }
    let value = s[..len]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, len))
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete server reply: code, optional enhanced code, and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    enhanced: Option<EnhancedCode>,
    /// The text of every line without code and enhanced code, joined by `\n`.
    text: String,
}

impl Reply {
    /// A reply built in code (used by tests and by local refusals).
    pub fn new(code: ReplyCode, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// The basic reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The enhanced status code, when the server sent one whose class matches the
    /// basic code.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text, lines joined by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text line by line, each without its reply code or enhanced status code.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.code.is_positive()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for (i, line) in self.lines().enumerate() {
            if i == 0 {
                write!(f, " {line}")?;
            } else {
                write!(f, " / {line}")?;
            }
        }
        Ok(())
    }
}

/// Why a reply could not be parsed. Every variant means the reply stream can no
/// longer be trusted: the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line does not start with a valid three-digit code.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A line longer than [`MAX_LINE`].
    #[error("reply line longer than {MAX_LINE} octets")]
    LineTooLong,
    /// More than [`MAX_LINES`] lines or [`MAX_REPLY`] octets in one reply.
    #[error("reply longer than {MAX_LINES} lines or {MAX_REPLY} octets")]
    TooLong,
}

/// Incremental reply parser; one per connection, reused for every reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<ReplyCode>,
    enhanced: Option<EnhancedCode>,
    text: String,
    lines: usize,
}

impl ReplyParser {
    /// A parser with no partial reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes complete lines from `buf`. Returns `Ok(Some(reply))` once a last line
    /// arrives, `Ok(None)` when more bytes are needed (the incomplete tail stays in
    /// `buf`), or an error when the input is not an SMTP reply.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(end) = memchr::memchr(b'\n', buf) else {
                if buf.len() > MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            let mut line = &buf[..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let last = self.push_line(line)?;
            buf.advance(end + 1);
            if last {
                return Ok(Some(self.take()));
            }
        }
    }

    /// Parses a whole reply from a slice; for tests and one-shot uses.
    pub fn parse_slice(bytes: &[u8]) -> Result<Option<Reply>, ReplyError> {
        Self::new().parse(&mut BytesMut::from(bytes))
    }

    /// Adds one line (terminator removed); returns whether it was the last line.
    fn push_line(&mut self, line: &[u8]) -> Result<bool, ReplyError> {
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let value = line[..3]
            .iter()
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        let code = ReplyCode::new(value).ok_or_else(malformed)?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        self.lines += 1;
        if self.lines > MAX_LINES || self.text.len() + line.len() > MAX_REPLY {
            self.reset();
            return Err(ReplyError::TooLong);
        }
        // A continuation line with another code is a broken server; the first line's
        // code is the one the reply is about, as most clients read it.
        let code = *self.code.get_or_insert(code);
        let mut text = line.get(4..).unwrap_or_default();
        if let Some((enhanced, used)) = EnhancedCode::parse_prefix(text)
            && enhanced.class == code.class()
        {
            self.enhanced.get_or_insert(enhanced);
            text = text[used..].strip_prefix(b" ").unwrap_or(&text[used..]);
        }
        if self.lines > 1 {
            self.text.push('\n');
        }
        self.text.push_str(&String::from_utf8_lossy(text));
        Ok(last)
    }

    fn take(&mut self) -> Reply {
        let reply = Reply {
            code: self.code.take().unwrap_or(ReplyCode(500)),
            enhanced: self.enhanced.take(),
            text: std::mem::take(&mut self.text),
        };
        self.lines = 0;
        reply
    }

    fn reset(&mut self) {
        self.code = None;
        self.enhanced = None;
        self.text.clear();
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(reply) = parser.parse(&mut buf)? {
            out.push(reply);
        }
        Ok(out)
    }

    /// (input, code, enhanced code, text)
    type Row = (&'static [u8], u16, Option<(u8, u16, u16)>, &'static str);

    #[test]
    fn parses_reply_table() {
        // (input, code, enhanced, text)
        let table: &[Row] = &[
            (b"250 OK\r\n", 250, None, "OK"),
            (b"250\r\n", 250, None, ""),
            (b"250 2.1.0 Sender ok\r\n", 250, Some((2, 1, 0)), "Sender ok"),
            (b"550 5.1.1 <a@b>: Recipient address rejected\r\n", 550, Some((5, 1, 1)), "<a@b>: Recipient address rejected"),
            (b"421-4.7.28 Gmail has detected an unusual rate\r\n421 4.7.28 of unsolicited mail.\r\n", 421, Some((4, 7, 28)), "Gmail has detected an unusual rate\nof unsolicited mail."),
            (b"451 4.7.500 Server busy. Please try again later\r\n", 451, Some((4, 7, 500)), "Server busy. Please try again later"),
            // Class mismatch: the enhanced code is kept as text, not trusted.
            (b"550 4.7.1 odd server\r\n", 550, None, "4.7.1 odd server"),
            // A number that only looks like an enhanced code.
            (b"250 2.0 ok\r\n", 250, None, "2.0 ok"),
            (b"354 End data with <CR><LF>.<CR><LF>\r\n", 354, None, "End data with <CR><LF>.<CR><LF>"),
            // Bare LF line ends are tolerated.
            (b"220 mx ESMTP\n", 220, None, "mx ESMTP"),
            (b"250 caf\xc3\xa9 \xff\r\n", 250, None, "caf\u{e9} \u{fffd}"),
        ];
        for (input, code, enhanced, text) in table {
            let reply = ReplyParser::parse_slice(input).unwrap().unwrap();
            assert_eq!(reply.code().get(), *code, "{input:?}");
            assert_eq!(
                reply.enhanced(),
                enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d))
            );
            assert_eq!(reply.text(), *text, "{input:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"2500 x\r\n",
            b"250x\r\n",
            b"199 too low\r\n",
            b"260 bad second digit\r\n",
            b"\xff\xfe\xfd\r\n",
            b"\r\n",
        ] {
            assert!(ReplyParser::parse_slice(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn needs_more_until_last_line() {
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::new();
        let whole = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n";
        for (i, byte) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = parser.parse(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(got.is_none(), "reply complete too early at {i}");
            } else {
                let reply = got.unwrap();
                assert_eq!(
                    reply.lines().collect::<Vec<_>>(),
                    ["mx.example", "PIPELINING", "SIZE 100"]
                );
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn pipelined_replies_come_out_in_order() {
        let replies =
            parse_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n").unwrap();
        let codes: Vec<u16> = replies.iter().map(|r| r.code().get()).collect();
        assert_eq!(codes, [250, 250, 550, 354]);
    }

    #[test]
    fn leaves_bytes_after_the_reply_in_the_buffer() {
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::from(&b"250 ok\r\n220 partial"[..]);
        assert!(parser.parse(&mut buf).unwrap().is_some());
        assert_eq!(&buf[..], b"220 partial");
        assert!(parser.parse(&mut buf).unwrap().is_none());
    }

    #[test]
    fn bounds_line_length_and_line_count() {
        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::from(&vec![b'2'; MAX_LINE + 1][..]);
        assert_eq!(parser.parse(&mut buf), Err(ReplyError::LineTooLong));

        let mut parser = ReplyParser::new();
        let mut buf = BytesMut::new();
        let mut result = Ok(None);
        for _ in 0..=MAX_LINES {
            buf.extend_from_slice(b"250-more\r\n");
            result = parser.parse(&mut buf);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReplyError::TooLong));
    }

    #[test]
    fn displays_like_the_wire() {
        let reply = ReplyParser::parse_slice(b"550-5.1.1 first\r\n550 5.1.1 second\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(reply.to_string(), "550 5.1.1 first / second");
    }
}
