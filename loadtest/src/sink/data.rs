//! Message content handling: finding the end of DATA, removing dot-stuffing, detecting bare
//! CR / LF, and accumulating a message's content within the size limit.

use memchr::memmem;

/// The end-of-data marker after the CRLF that ends the last content line.
pub(crate) const END_OF_DATA: &[u8] = b"\r\n.\r\n";

/// Finds `\r\n.\r\n` quickly; built once per process.
pub(crate) fn end_finder() -> &'static memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(END_OF_DATA))
}

/// Removes SMTP dot-stuffing (RFC 5321 4.5.2): the first `.` of every line that starts with one.
pub(crate) fn unstuff(raw: &[u8], out: &mut Vec<u8>) {
    static FINDER: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(b"\r\n."));
    out.reserve(raw.len());
    let mut start = usize::from(raw.first() == Some(&b'.'));
    for pos in finder.find_iter(raw) {
        // Copy through the CRLF, skip the dot.
        out.extend_from_slice(&raw[start..pos + 2]);
        start = pos + 3;
    }
    out.extend_from_slice(&raw[start..]);
}

/// Incremental detector of a CR not followed by LF, or an LF not preceded by CR, over content
/// that arrives in pieces.
#[derive(Debug, Default, Clone)]
pub(crate) struct BareScan {
    found: bool,
    last_was_cr: bool,
}

impl BareScan {
    /// Feeds the next piece of content.
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        let Some(&first) = chunk.first() else {
            return;
        };
        if self.found {
            return;
        }
        if self.last_was_cr && first != b'\n' {
            self.found = true;
            return;
        }
        for i in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            let bare = if chunk[i] == b'\n' {
                let prev_cr = if i == 0 {
                    self.last_was_cr
                } else {
                    chunk[i - 1] == b'\r'
                };
                !prev_cr
            } else {
                // A CR at the very end is judged when the next piece arrives.
                chunk.get(i + 1).is_some_and(|&next| next != b'\n')
            };
            if bare {
                self.found = true;
                return;
            }
        }
        self.last_was_cr = chunk.last() == Some(&b'\r');
    }

    /// Whether the content seen so far (taken as complete) had a bare CR or LF.
    pub(super) fn finish(&self) -> bool {
        self.found || self.last_was_cr
    }
}

/// The content of one message being received, within the size limit.
#[derive(Debug)]
pub(crate) struct Content {
    /// Raw content, kept only when someone (capture, spool) needs it.
    raw: Vec<u8>,
    keep: bool,
    size: usize,
    max_size: usize,
    too_big: bool,
    bare: BareScan,
}

impl Content {
    pub(super) fn new(keep: bool, max_size: usize) -> Self {
        Self {
            raw: Vec::new(),
            keep,
            size: 0,
            max_size,
            too_big: false,
            bare: BareScan::default(),
        }
    }

    /// Appends a piece of content; past the size limit the content is dropped (to keep memory
    /// bounded) and only the verdict is remembered.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len());
        if self.too_big {
            return;
        }
        if self.size > self.max_size {
            self.too_big = true;
            self.raw = Vec::new();
            return;
        }
        self.bare.feed(chunk);
        if self.keep {
            self.raw.extend_from_slice(chunk);
        }
    }

    /// Whether the content exceeded the size limit.
    pub(super) fn too_big(&self) -> bool {
        self.too_big
    }

    /// Whether the content had a bare CR or LF.
    pub(super) fn has_bare_newline(&self) -> bool {
        self.bare.finish()
    }

    /// The raw content (empty when not kept).
    pub(super) fn into_raw(self) -> Vec<u8> {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstuffed(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        unstuff(raw, &mut out);
        out
    }

    #[test]
    fn unstuffs_leading_dots() {
        assert_eq!(unstuffed(b""), b"");
        assert_eq!(unstuffed(b"a\r\n"), b"a\r\n");
        assert_eq!(unstuffed(b"..\r\n"), b".\r\n");
        assert_eq!(
            unstuffed(b"a\r\n..b\r\n...\r\nc.\r\n"),
            b"a\r\n.b\r\n..\r\nc.\r\n"
        );
        assert_eq!(unstuffed(b".x\r\n.\r\n."), b"x\r\n\r\n");
    }

    fn bare(pieces: &[&[u8]]) -> bool {
        let mut scan = BareScan::default();
        for piece in pieces {
            scan.feed(piece);
        }
        scan.finish()
    }

    #[test]
    fn detects_bare_newlines() {
        assert!(!bare(&[b"a\r\nb\r\n"]));
        assert!(bare(&[b"a\nb\r\n"]));
        assert!(bare(&[b"a\rb\r\n"]));
        assert!(bare(&[b"\n"]));
        assert!(bare(&[b"a\r"]));
        // Across piece boundaries.
        assert!(!bare(&[b"a\r", b"\nb\r\n"]));
        assert!(bare(&[b"a\r", b"b\r\n"]));
        assert!(bare(&[b"a", b"\nb"]));
        assert!(!bare(&[b"a\r", b"", b"\n"]));
    }

    /// Reference definition: any CR not followed by LF, or LF not preceded by CR.
    fn bare_reference(bytes: &[u8]) -> bool {
        bytes.iter().enumerate().any(|(i, &b)| match b {
            b'\r' => bytes.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || bytes[i - 1] != b'\r',
            _ => false,
        })
    }

    #[test]
    fn incremental_scan_matches_reference_for_any_split() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5_000 {
            let len = (next() % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'a', b'.'][(next() % 4) as usize])
                .collect();
            let mut scan = BareScan::default();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let cut = 1 + (next() as usize % rest.len());
                scan.feed(&rest[..cut]);
                rest = &rest[cut..];
            }
            assert_eq!(scan.finish(), bare_reference(&bytes), "{bytes:?}");
        }
    }

    #[test]
    fn content_respects_the_limit() {
        let mut content = Content::new(true, 4);
        content.push(b"ab");
        content.push(b"cd");
        assert!(!content.too_big());
        content.push(b"e");
        assert!(content.too_big());
        assert!(content.into_raw().is_empty());
    }
}
