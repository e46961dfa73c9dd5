//! Writes XML the way libvirt does: two-space indentation, attributes in
//! single quotes, one element per line.

/// Appends `s` escaped for character data.
pub(crate) fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A raw CR would be read back as a line feed.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Appends `s` escaped for a single-quoted attribute value.
pub(crate) fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            // Raw whitespace other than a space would be read back as a space.
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

/// An indenting XML writer.
#[derive(Debug, Default)]
pub(crate) struct XmlWriter {
    out: String,
    depth: usize,
}

impl XmlWriter {
    pub fn new() -> XmlWriter {
        XmlWriter::default()
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn start_tag<V: AsRef<str>>(&mut self, name: &str, attrs: &[(&str, V)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("='");
            escape_attr(&mut self.out, value.as_ref());
            self.out.push('\'');
        }
    }

    /// `<name a='v'>` on its own line; what follows is indented one more level.
    pub fn open<V: AsRef<str>>(&mut self, name: &str, attrs: &[(&str, V)]) {
        self.start_tag(name, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    /// `</name>`, ending what [`XmlWriter::open`] began.
    pub fn close(&mut self, name: &str) {
        self.depth = self.depth.saturating_sub(1);
        self.indent();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name a='v'/>`.
    pub fn empty<V: AsRef<str>>(&mut self, name: &str, attrs: &[(&str, V)]) {
        self.start_tag(name, attrs);
        self.out.push_str("/>\n");
    }

    /// `<name a='v'>text</name>`.
    pub fn text<V: AsRef<str>>(&mut self, name: &str, attrs: &[(&str, V)], text: &str) {
        self.start_tag(name, attrs);
        self.out.push('>');
        escape_text(&mut self.out, text);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name>text</name>` without attributes.
    pub fn plain(&mut self, name: &str, text: &str) {
        self.text::<&str>(name, &[], text);
    }

    /// A line of already-formed markup at the current indentation.
    pub fn markup_line(&mut self, markup: &str) {
        self.indent();
        self.out.push_str(markup);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_like_libvirt() {
        let mut w = XmlWriter::new();
        w.open("a", &[("x", "it's <&>")]);
        w.empty("b", &[("y", "1\n2\t3")]);
        w.plain("c", "a<b & c\r\n");
        w.close("a");
        assert_eq!(
            w.finish(),
            "<a x='it&apos;s &lt;&amp;&gt;'>\n  <b y='1&#10;2&#9;3'/>\n  <c>a&lt;b &amp; c&#13;\n</c>\n</a>\n"
        );
    }
}
