//! A readable text part derived from rendered HTML, for templates without
//! `text.hbs`.
//!
//! Not an HTML parser: a single pass that strips tags, drops `script`, `style`, `head`
//! and comments, turns block elements into line breaks and paragraphs, writes links
//! as `text (url)`, keeps `pre` whitespace and decodes entities. Good enough for
//! e-mail markup, which is simple and comes from our own templates.

/// Elements whose content is never shown.
const HIDDEN: &[&str] = &["script", "style", "head", "title", "template", "noscript"];
/// Elements that start and end a paragraph (a blank line around them).
const PARAGRAPHS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "ul",
    "ol",
    "blockquote",
    "pre",
    "hr",
];
/// Elements that start and end a line.
const LINES: &[&str] = &[
    "div", "tr", "li", "section", "article", "header", "footer", "center", "dt", "dd", "address",
    "nav", "main", "aside", "form", "body", "html",
];

/// Converts HTML to readable plain text.
pub fn html_to_text(html: &str) -> String {
    let mut out = TextWriter::default();
    let mut link: Option<Link> = None;
    let mut pre = 0usize;
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.text(&rest[..lt], pre > 0);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        let Some(end) = tag_end(rest) else {
            // A '<' that opens no tag is text.
            out.text("<", pre > 0);
            rest = &rest[1..];
            continue;
        };
        let tag = Tag::parse(&rest[1..end]);
        rest = &rest[end + 1..];
        if !tag.closing && HIDDEN.contains(&tag.name.as_str()) {
            rest = skip_element(rest, &tag.name);
            continue;
        }
        match (tag.name.as_str(), tag.closing) {
            ("br", _) => out.line_break(),
            ("li", false) => {
                out.block(1);
                out.literal("- ");
            }
            ("td" | "th", true) => out.space(),
            ("img", false) => {
                if let Some(alt) = tag.attr("alt").filter(|a| !a.trim().is_empty()) {
                    out.text(&alt, false);
                }
            }
            ("a", false) => {
                link = tag.attr("href").map(|href| Link {
                    href,
                    start: out.len(),
                });
            }
            ("a", true) => {
                if let Some(link) = link.take() {
                    out.link_target(&link);
                }
            }
            ("pre", closing) => {
                out.block(2);
                pre = if closing {
                    pre.saturating_sub(1)
                } else {
                    pre + 1
                };
            }
            (name, _) if PARAGRAPHS.contains(&name) => out.block(2),
            (name, _) if LINES.contains(&name) => out.block(1),
            _ => {}
        }
    }
    out.text(rest, pre > 0);
    out.finish()
}

struct Link {
    href: String,
    /// Where the link's text starts in the output.
    start: usize,
}

/// The output, with whitespace collapsed as a browser would.
#[derive(Default)]
struct TextWriter {
    out: String,
    /// A space is due before the next word.
    space: bool,
    /// Line breaks due before the next word (2 = a blank line).
    breaks: usize,
}

impl TextWriter {
    fn len(&self) -> usize {
        self.out.len()
    }

    /// Text between tags: entities decoded, whitespace collapsed unless in `pre`.
    fn text(&mut self, raw: &str, preformatted: bool) {
        let decoded = decode_entities(raw);
        if preformatted {
            self.literal(&decoded);
            return;
        }
        for (i, word) in decoded.split(is_html_space).enumerate() {
            if i > 0 {
                self.space = true;
            }
            if !word.is_empty() {
                self.literal(word);
            }
        }
    }

    /// Writes `s` as it is, after any pending break or space.
    fn literal(&mut self, s: &str) {
        if self.out.is_empty() {
            // Nothing to separate from yet.
        } else if self.breaks > 0 {
            for _ in 0..self.breaks {
                self.out.push('\n');
            }
        } else if self.space && !self.out.ends_with([' ', '\n']) {
            self.out.push(' ');
        }
        self.breaks = 0;
        self.space = false;
        self.out.push_str(s);
    }

    fn space(&mut self) {
        self.space = true;
    }

    /// A `<br>`: one more line break, so that two of them make a blank line.
    fn line_break(&mut self) {
        self.breaks = (self.breaks + 1).min(2);
        if self.out.is_empty() {
            self.breaks = 0;
        }
    }

    /// A block boundary: at least `breaks` line breaks before the next word.
    fn block(&mut self, breaks: usize) {
        if !self.out.is_empty() {
            self.breaks = self.breaks.max(breaks);
        }
    }

    /// Appends ` (url)` after a link's text, unless the text already is the URL or
    /// the link goes nowhere a reader of plain text could follow.
    fn link_target(&mut self, link: &Link) {
        let href = link.href.trim();
        if href.is_empty() || href.starts_with('#') || href.starts_with("javascript:") {
            return;
        }
        let text = self.out[link.start..].trim();
        let bare = href.strip_prefix("mailto:").unwrap_or(href);
        if text == href || text == bare {
            return;
        }
        if text.is_empty() {
            self.literal(href);
        } else {
            self.space = true;
            self.literal(&format!("({href})"));
        }
    }

    /// One `\n` after every line, no trailing blanks (leading ones are kept: `pre`).
    fn finish(self) -> String {
        let mut text = String::with_capacity(self.out.len() + 1);
        for line in self.out.lines() {
            text.push_str(line.trim_end());
            text.push('\n');
        }
        while text.ends_with("\n\n") {
            text.pop();
        }
        if text.trim().is_empty() {
            text.clear();
        }
        text
    }
}

fn is_html_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// The index of the `>` closing the tag that starts `s` (at its `<`), honouring
/// quoted attribute values; `None` when `s` does not start a tag.
fn tag_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    match bytes.get(1) {
        Some(b) if b.is_ascii_alphabetic() || matches!(b, b'/' | b'!' | b'?') => {}
        _ => return None,
    }
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Skips past the end tag of a hidden element (`</script>`), or to the end.
fn skip_element<'a>(rest: &'a str, name: &str) -> &'a str {
    let lower = rest.to_ascii_lowercase();
    let close = format!("</{name}");
    match lower.find(&close) {
        Some(at) => rest[at..].find('>').map_or("", |gt| &rest[at + gt + 1..]),
        None => "",
    }
}

struct Tag {
    name: String,
    closing: bool,
    /// Everything after the name, unparsed.
    attributes: String,
}

impl Tag {
    fn parse(inner: &str) -> Self {
        let (closing, inner) = match inner.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, inner),
        };
        let name_end = inner
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(inner.len());
        Self {
            name: inner[..name_end].to_ascii_lowercase(),
            closing,
            attributes: inner[name_end..].to_owned(),
        }
    }

    /// The decoded value of attribute `wanted`.
    fn attr(&self, wanted: &str) -> Option<String> {
        let mut rest = self.attributes.as_str();
        loop {
            rest = rest.trim_start_matches(|c: char| is_html_space(c) || c == '/');
            if rest.is_empty() {
                return None;
            }
            let name_end = rest
                .find(|c: char| is_html_space(c) || c == '=' || c == '/')
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            rest = rest[name_end..].trim_start_matches(is_html_space);
            let value = match rest.strip_prefix('=') {
                Some(after) => {
                    let after = after.trim_start_matches(is_html_space);
                    let (value, remaining) = attribute_value(after);
                    rest = remaining;
                    value
                }
                None => "",
            };
            if name.eq_ignore_ascii_case(wanted) {
                return Some(decode_entities(value));
            }
        }
    }
}

/// Splits a quoted or unquoted attribute value from what follows it.
fn attribute_value(s: &str) -> (&str, &str) {
    for quote in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(quote) {
            return match inner.find(quote) {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => (inner, ""),
            };
        }
    }
    let end = s.find(is_html_space).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Decodes character references: the common named ones and all numeric ones.
/// Anything unrecognised is kept as written.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest
            .find(';')
            .filter(|&semi| semi <= 32)
            .and_then(|semi| entity(&rest[1..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        // NUL and other controls would be invisible at best: show a replacement.
        return Some(match char::from_u32(code) {
            Some(c) if !c.is_control() || c == '\n' || c == '\t' => c,
            _ => char::REPLACEMENT_CHARACTER,
        });
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        // A plain space reads the same in a text part and keeps it ASCII.
        "nbsp" => ' ',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "deg" => '°',
        "middot" => '·',
        "bull" => '•',
        "hellip" => '…',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "times" => '×',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_html_to_readable_text() {
        let table: &[(&str, &str)] = &[
            ("plain", "plain\n"),
            ("<p>One</p><p>Two</p>", "One\n\nTwo\n"),
            ("<p>a\n   b\tc</p>", "a b c\n"),
            ("line<br>next<br/>last", "line\nnext\nlast\n"),
            ("a<br><br>b", "a\n\nb\n"),
            ("<div>x</div><div>y</div>", "x\ny\n"),
            (
                "<p>Read <a href=\"https://ex.com/a?b=1&amp;c=2\">the post</a>.</p>",
                "Read the post (https://ex.com/a?b=1&c=2).\n",
            ),
            (
                "<a href='https://ex.com'>https://ex.com</a>",
                "https://ex.com\n",
            ),
            ("<a href=mailto:a@ex.com>a@ex.com</a>", "a@ex.com\n"),
            ("<a href=\"#top\">top</a>", "top\n"),
            ("<a href=\"https://ex.com/x\"></a>", "https://ex.com/x\n"),
            (
                "<ul><li>one</li><li>two</li></ul>after",
                "- one\n- two\n\nafter\n",
            ),
            (
                "<head><title>T</title><style>p{color:red}</style></head><p>body</p>",
                "body\n",
            ),
            ("<SCRIPT>alert(1)</SCRIPT>ok", "ok\n"),
            ("a<!-- hidden <p> -->b", "ab\n"),
            (
                "&lt;tag&gt; &amp; &quot;q&quot; &#233;&#xE9; &hellip;",
                "<tag> & \"q\" éé …\n",
            ),
            ("&unknown; & alone &#xD800;", "&unknown; & alone \u{fffd}\n"),
            ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2\n"),
            (
                "<pre>  keep\n    this</pre>after",
                "  keep\n    this\n\nafter\n",
            ),
            (
                "<table><tr><td>Item</td><td>9.99</td></tr><tr><td>Tax</td><td>1</td></tr></table>",
                "Item 9.99\nTax 1\n",
            ),
            ("<img src=x alt=\"Logo\"> text", "Logo text\n"),
            (
                "<p title=\"a>b\">quoted &gt; in attribute</p>",
                "quoted > in attribute\n",
            ),
            ("Größe: <b>groß</b>", "Größe: groß\n"),
            ("", ""),
        ];
        for (html, text) in table {
            assert_eq!(html_to_text(html), *text, "{html:?}");
        }
    }

    #[test]
    fn never_panics_on_truncated_markup() {
        for html in [
            "<",
            "<p",
            "<a href=\"x",
            "&",
            "&#",
            "&#x;",
            "<script>",
            "<!--",
            "é<",
        ] {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a <p"), "a <p\n");
    }
}
