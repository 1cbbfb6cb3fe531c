//! Message content on the wire: CRLF normalisation, dot-stuffing and BDAT framing.
//!
//! [`BodyEncoder`] is a streaming state machine: content may arrive in chunks split
//! anywhere (inside a CRLF, right before a leading dot) and the output is the same as
//! for the whole body at once. Whatever the input holds, the output has no bare CR or
//! bare LF, a line starting with "." is stuffed under DATA, and the end-of-data
//! sequence is exact. That makes SMTP smuggling through the body impossible.

use super::command::Command;

/// Streaming body encoder for DATA (dot-stuffed) or BDAT (CRLF only).
#[derive(Clone, Debug)]
pub struct BodyEncoder {
    stuff: bool,
    at_line_start: bool,
    pending_cr: bool,
}

impl BodyEncoder {
    /// For DATA: normalise line ends and stuff leading dots; [`Self::finish`]
    /// writes the `.` terminator.
    pub fn dot_stuffing() -> Self {
        Self {
            stuff: true,
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// For BDAT: normalise line ends only.
    pub fn crlf_only() -> Self {
        Self {
            stuff: false,
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Encodes the next chunk of content into `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64 + 8);
        let mut i = 0;
        while i < chunk.len() {
            if self.pending_cr {
                // The previous chunk ended in CR: one line end, whether or not LF follows.
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if chunk[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let rest = &chunk[i..];
            if self.at_line_start && self.stuff && rest[0] == b'.' {
                out.push(b'.');
            }
            let Some(k) = memchr::memchr2(b'\r', b'\n', rest) else {
                out.extend_from_slice(rest);
                self.at_line_start = false;
                return;
            };
            out.extend_from_slice(&rest[..k]);
            if rest[k] == b'\n' {
                i += k + 1;
            } else if let Some(&next) = rest.get(k + 1) {
                i += k + if next == b'\n' { 2 } else { 1 };
            } else {
                self.pending_cr = true;
                self.at_line_start = k == 0 && self.at_line_start;
                return;
            }
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
    }

    /// Ends the content: a final CRLF when it did not end with a line break, and for
    /// DATA the `.` line.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        if self.stuff {
            out.extend_from_slice(b".\r\n");
        }
    }
}

/// Appends `body` dot-stuffed and terminated, ready to follow a 354.
pub fn encode_data(body: &[u8], out: &mut Vec<u8>) {
    let mut encoder = BodyEncoder::dot_stuffing();
    encoder.push(body, out);
    encoder.finish(out);
}

/// Appends `BDAT n LAST` and the CRLF-normalised body, `n` being its exact size.
pub fn encode_bdat_last(body: &[u8], out: &mut Vec<u8>) {
    let size = crlf_len(body);
    Command::Bdat { size, last: true }.encode(out);
    let start = out.len();
    let mut encoder = BodyEncoder::crlf_only();
    encoder.push(body, out);
    encoder.finish(out);
    debug_assert_eq!(out.len() - start, size);
}

/// The size of `body` after CRLF normalisation (and a final CRLF when missing): the
/// exact BDAT size, and the SIZE= declared on MAIL.
pub fn crlf_len(body: &[u8]) -> usize {
    let mut extra = 0;
    for pos in memchr::memchr2_iter(b'\r', b'\n', body) {
        let bare = if body[pos] == b'\n' {
            pos == 0 || body[pos - 1] != b'\r'
        } else {
            body.get(pos + 1) != Some(&b'\n')
        };
        extra += usize::from(bare);
    }
    let ends_with_break = matches!(body.last(), None | Some(b'\n' | b'\r'));
    body.len() + extra + if ends_with_break { 0 } else { 2 }
}

/// Whether the content has octets above 127 and so needs `BODY=8BITMIME`.
pub fn is_eight_bit(body: &[u8]) -> bool {
    !body.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_data(body, &mut out);
        out
    }

    #[test]
    fn dot_stuffing_table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"hello", b"hello\r\n.\r\n"),
            (b"hello\r\n", b"hello\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (
                b".first\r\nmiddle\r\n.last",
                b"..first\r\nmiddle\r\n..last\r\n.\r\n",
            ),
            (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
            (b"not.at.start\r\n", b"not.at.start\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
            (b"\r\n\r\n.", b"\r\n\r\n..\r\n.\r\n"),
            // Bare line ends become CRLF.
            (b"a\nb", b"a\r\nb\r\n.\r\n"),
            (b"a\rb", b"a\r\nb\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            // Smuggling attempts: each must end up as a stuffed line, never an end.
            (
                b"a\n.\nMAIL FROM:<x@y>",
                b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n",
            ),
            (b"a\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        ];
        for (input, expected) in table {
            assert_eq!(
                String::from_utf8_lossy(&data(input)),
                String::from_utf8_lossy(expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_output() {
        let bodies: &[&[u8]] = &[
            b"a\r\n.b\r\n..\r\n.",
            b"x\r\r\n.\n.\r.",
            b".\r\n\r\n.\r\n",
            b"\r\n\n\r\r",
        ];
        for body in bodies {
            let whole = data(body);
            for split in 0..=body.len() {
                for stuff in [true, false] {
                    let mut enc = if stuff {
                        BodyEncoder::dot_stuffing()
                    } else {
                        BodyEncoder::crlf_only()
                    };
                    let mut out = Vec::new();
                    enc.push(&body[..split], &mut out);
                    enc.push(&body[split..], &mut out);
                    enc.finish(&mut out);
                    if stuff {
                        assert_eq!(out, whole, "split {split} of {body:?}");
                    } else {
                        assert_eq!(out.len(), crlf_len(body), "split {split} of {body:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn bdat_framing_is_exact() {
        let mut out = Vec::new();
        encode_bdat_last(b"Subject: x\n\n.line\rend", &mut out);
        assert_eq!(out, b"BDAT 26 LAST\r\nSubject: x\r\n\r\n.line\r\nend\r\n");
        out.clear();
        encode_bdat_last(b"", &mut out);
        assert_eq!(out, b"BDAT 0 LAST\r\n");
    }

    #[test]
    fn detects_eight_bit() {
        assert!(!is_eight_bit(b"plain ascii\r\n"));
        assert!(is_eight_bit("café".as_bytes()));
    }
}
