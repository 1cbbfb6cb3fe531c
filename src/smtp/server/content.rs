//! Message content as a server receives it: DATA lines up to the `CRLF . CRLF` that
//! ends them, dot-unstuffed, and BDAT chunks taken byte for byte; both refuse a bare CR
//! or LF (the SMTP smuggling defence: a message whose end other servers would see
//! elsewhere) and stop keeping bytes past the size limit while still reading to the
//! end, so that the session stays in step with the client.

/// Bytes without a line end held back before they are taken as content: a DATA line
/// longer than this is read in pieces.
const MAX_HELD: usize = 64 * 1024;

/// What a finished message's content is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Well formed and within the limit.
    Fine,
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnd,
    /// Larger than the limit.
    TooBig,
}

/// One message's content, as it arrives.
#[derive(Debug)]
pub(super) struct Content {
    bytes: Vec<u8>,
    limit: usize,
    size: usize,
    bare: bool,
    /// DATA: whether the next byte starts a line (a dot there is stuffing).
    line_start: bool,
    /// DATA: whether the last line ended with CRLF: only then can `.` CRLF end the
    /// content. After a bare LF it cannot, or a client's `\n.\r\n` in a message
    /// would end it early and what follows would be taken as commands.
    after_crlf: bool,
    /// BDAT: whether the last byte of the previous chunk was a CR.
    cr_pending: bool,
}

impl Content {
    /// Empty content that may grow to `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            size: 0,
            bare: false,
            line_start: true,
            after_crlf: true,
            cr_pending: false,
        }
    }

    /// Bytes received so far (kept or not).
    pub(super) fn size(&self) -> usize {
        self.size
    }

    fn keep(&mut self, piece: &[u8]) {
        self.size = self.size.saturating_add(piece.len());
        if self.size <= self.limit {
            self.bytes.extend_from_slice(piece);
        }
    }

    /// Reads DATA lines from `input`; returns how many bytes were used and whether the
    /// terminating `.` line was among them. Bytes after it are left for the caller.
    pub(super) fn read_data(&mut self, input: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // No line end yet: wait for it, unless the line is very long. A final CR
                // is held back: its LF may be in the next read.
                if rest.len() > MAX_HELD {
                    let take = rest.len() - 1;
                    self.line(&rest[..take], false);
                    used += take;
                }
                return (used, false);
            };
            let line = &rest[..=lf];
            used += line.len();
            if self.after_crlf && line == b".\r\n" {
                return (used, true);
            }
            self.line(line, true);
        }
        (used, false)
    }

    /// One line (`complete`: through its LF) or a piece of a long one.
    fn line(&mut self, piece: &[u8], complete: bool) {
        let ends_crlf = complete && piece.ends_with(b"\r\n");
        let body = if ends_crlf {
            &piece[..piece.len() - 2]
        } else if complete {
            self.bare = true; // an LF without its CR
            &piece[..piece.len() - 1]
        } else {
            piece
        };
        if memchr::memchr2(b'\r', b'\n', body).is_some() {
            self.bare = true;
        }
        let unstuffed = if self.line_start {
            piece.strip_prefix(b".").unwrap_or(piece)
        } else {
            piece
        };
        self.keep(unstuffed);
        self.line_start = complete;
        self.after_crlf = ends_crlf;
    }

    /// Takes one BDAT chunk (exactly its bytes).
    pub(super) fn read_chunk(&mut self, chunk: &[u8]) {
        let mut previous_cr = self.cr_pending;
        for &b in chunk {
            match b {
                b'\n' if !previous_cr => self.bare = true,
                _ if previous_cr && b != b'\n' => self.bare = true,
                _ => {}
            }
            previous_cr = b == b'\r';
        }
        if !chunk.is_empty() {
            self.cr_pending = previous_cr;
        }
        self.keep(chunk);
    }

    /// The content and its verdict, once the message has ended.
    pub(super) fn finish(self) -> (Vec<u8>, Verdict) {
        let verdict = if self.bare || self.cr_pending {
            Verdict::BareLineEnd
        } else if self.size > self.limit {
            Verdict::TooBig
        } else {
            Verdict::Fine
        };
        (self.bytes, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(input: &[u8]) -> (Vec<u8>, Verdict, usize) {
        let mut content = Content::new(1000);
        let (used, done) = content.read_data(input);
        assert!(done, "{:?}", String::from_utf8_lossy(input));
        let (bytes, verdict) = content.finish();
        (bytes, verdict, used)
    }

    #[test]
    fn data_ends_only_at_crlf_dot_crlf_and_is_unstuffed() {
        let (bytes, verdict, used) = data(b"Subject: x\r\n\r\n..dot\r\n.\r\nMAIL");
        assert_eq!(bytes, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(verdict, Verdict::Fine);
        assert_eq!(used, 24, "MAIL is the next command");
        // Smuggling attempts: an end marker with bare line ends is content, and the
        // message is refused at its real end.
        for smuggled in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\r\n.\nMAIL\r\n.\r\n",
            b"a\n.\r\nMAIL\r\n.\r\n",
            b"a\r.\rMAIL\r\n.\r\n",
        ] {
            let (_, verdict, used) = data(smuggled);
            assert_eq!(verdict, Verdict::BareLineEnd, "{smuggled:?}");
            assert_eq!(used, smuggled.len());
        }
    }

    #[test]
    fn data_in_pieces_is_the_same() {
        let input = b"line one\r\n.hidden\r\nline three\r\n.\r\n";
        let mut content = Content::new(1000);
        let mut at = 0;
        let mut pending = Vec::new();
        for b in input {
            pending.push(*b);
            let (used, done) = content.read_data(&pending);
            pending.drain(..used);
            at += used;
            if done {
                break;
            }
        }
        assert_eq!(at, input.len());
        let (bytes, verdict) = content.finish();
        assert_eq!(bytes, b"line one\r\nhidden\r\nline three\r\n");
        assert_eq!(verdict, Verdict::Fine);
    }

    #[test]
    fn oversized_content_is_read_to_its_end_and_refused() {
        let mut content = Content::new(10);
        let (used, done) = content.read_data(b"0123456789abcdef\r\n.\r\n");
        assert!(done);
        assert_eq!(used, 21);
        let (bytes, verdict) = content.finish();
        assert_eq!(verdict, Verdict::TooBig);
        assert!(bytes.is_empty());
    }

    #[test]
    fn bdat_chunks_are_exact_and_checked_across_boundaries() {
        let mut content = Content::new(100);
        content.read_chunk(b"a\r");
        content.read_chunk(b"\nb\r\n");
        assert_eq!(content.finish(), (b"a\r\nb\r\n".to_vec(), Verdict::Fine));
        let mut content = Content::new(100);
        content.read_chunk(b"a\r");
        content.read_chunk(b"b\r\n");
        assert_eq!(content.finish().1, Verdict::BareLineEnd);
        let mut content = Content::new(100);
        content.read_chunk(b"a\nb");
        assert_eq!(content.finish().1, Verdict::BareLineEnd);
        let mut content = Content::new(100);
        content.read_chunk(b"ends with CR\r");
        assert_eq!(content.finish().1, Verdict::BareLineEnd);
    }
}
