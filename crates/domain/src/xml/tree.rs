//! Reads a document into a small element tree that remembers where each
//! element, attribute and piece of text was (line, column, path).
//!
//! The model parsers *take* what they understand out of the tree
//! ([`Element::take_attr`], [`Element::take_child`], ...) and end each element
//! with [`Element::finish`], which refuses anything left over: this is how
//! nothing a user wrote is ever dropped silently.
//!
//! Bounded: documents over [`MAX_DOCUMENT_BYTES`], nesting deeper than
//! [`MAX_DEPTH`], more than [`MAX_ELEMENTS`] elements, [`MAX_ATTRIBUTES`]
//! attributes on one element or [`MAX_NAMESPACES`] namespace declarations
//! are refused, so memory and time stay linear in a small input; DOCTYPEs (and so custom entities) and processing
//! instructions are refused; characters XML forbids are refused even when
//! written as character references.

use std::cell::Cell;
use std::collections::HashMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use quick_xml::XmlVersion;

use crate::error::{DomainError, Loc, Pos, Result};

/// The largest document accepted (1 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The deepest element nesting accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// The most elements a document may have (a domain with every device Vireo
/// can run has a few hundred; the rest is room for metadata).
pub(crate) const MAX_ELEMENTS: usize = 16384;

/// The most attributes one element may have.
pub(crate) const MAX_ATTRIBUTES: usize = 256;

/// The most namespace declarations a document may have.
pub(crate) const MAX_NAMESPACES: usize = 256;

/// An attribute as written (value unescaped and normalised as XML says).
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub name: String,
    pub value: String,
    pub loc: Loc,
}

/// A child of an element.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Element(Element),
    /// Character data (text, CDATA and references merged, comments removed).
    Text {
        text: String,
        loc: Loc,
    },
}

/// An element with everything that was written in it.
#[derive(Debug, Clone)]
pub(crate) struct Element {
    pub name: String,
    pub loc: Loc,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

/// XML's whitespace (not Unicode's).
pub(crate) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// `s` without leading and trailing XML whitespace.
pub(crate) fn trim_xml(s: &str) -> &str {
    s.trim_matches(is_xml_space)
}

/// A value for a message: quoted, and shortened if long.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 48;
    if s.chars().count() <= MAX {
        format!("'{s}'")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("'{head}...'")
    }
}

/// A hint for elements libvirt knows and Vireo refuses.
fn hint(name: &str) -> Option<&'static str> {
    Some(match name {
        "graphics" | "video" => "Vireo has no display; use a serial or virtio console",
        "sound" | "audio" => "Vireo has no sound devices",
        "hostdev" => "Vireo has no device passthrough yet",
        "filesystem" => "Vireo has no shared filesystems yet",
        "channel" => "Vireo has no virtio-serial channels (guest agent) yet",
        "address" => "Vireo places devices on its PCI bus itself; remove <address>",
        "alias" => "Vireo does not name devices; remove <alias>",
        "maxMemory" => "Vireo has no memory hotplug yet",
        "boot" => "Vireo boots from <os> only",
        _ => return None,
    })
}

impl Element {
    /// The attribute `name`, if written.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// Removes and returns the attribute `name`.
    pub fn take_attr(&mut self, name: &str) -> Option<Attr> {
        let i = self.attrs.iter().position(|a| a.name == name)?;
        Some(self.attrs.remove(i))
    }

    /// Removes and returns the only child element `name`; a second one is an error.
    pub fn take_child(&mut self, name: &str) -> Result<Option<Element>> {
        let mut found = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n, Node::Element(e) if e.name == name))
            .map(|(i, _)| i);
        let Some(first) = found.next() else {
            return Ok(None);
        };
        if let Some(second) = found.next() {
            if let Some(Node::Element(e)) = self.children.get(second) {
                return Err(e.loc.error(format!(
                    "duplicate element <{name}>: only one is allowed here"
                )));
            }
        }
        match self.children.remove(first) {
            Node::Element(e) => Ok(Some(e)),
            Node::Text { .. } => Ok(None),
        }
    }

    /// Removes and returns all child elements `name`, in document order.
    pub fn take_children(&mut self, name: &str) -> Vec<Element> {
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.children.len());
        for node in std::mem::take(&mut self.children) {
            match node {
                Node::Element(e) if e.name == name => taken.push(e),
                other => kept.push(other),
            }
        }
        self.children = kept;
        taken
    }

    /// Removes and returns the element's character data (all of it, joined).
    pub fn take_text(&mut self) -> String {
        let mut text = String::new();
        self.children.retain(|n| match n {
            Node::Text { text: t, .. } => {
                text.push_str(t);
                false
            }
            Node::Element(_) => true,
        });
        text
    }

    /// The text of an element that may hold nothing else (no attributes left,
    /// no child elements).
    pub fn into_text(mut self) -> Result<String> {
        let text = self.take_text();
        self.finish()?;
        Ok(text)
    }

    /// Refuses, in document order, child elements not in `known` (`what`
    /// names them in the message, e.g. "element" or "feature").
    pub fn reject_unknown_children(&self, known: &[&str], what: &str) -> Result<()> {
        for node in &self.children {
            if let Node::Element(e) = node {
                if !known.contains(&e.name.as_str()) {
                    return Err(unsupported(e, what));
                }
            }
        }
        Ok(())
    }

    /// Ends the element: anything not taken is refused, first in document
    /// order. Namespace declarations (`xmlns:p`) are not requests and pass.
    pub fn finish(self) -> Result<()> {
        for a in &self.attrs {
            if a.name.starts_with("xmlns:") {
                continue;
            }
            if a.name == "xmlns" {
                return Err(a.loc.error(
                    "a default namespace (xmlns) is not supported outside <metadata>".to_string(),
                ));
            }
            return Err(a
                .loc
                .error(format!("attribute not supported by Vireo ({})", a.name)));
        }
        for node in &self.children {
            match node {
                Node::Element(e) => return Err(unsupported(e, "element")),
                Node::Text { text, loc } if !trim_xml(text).is_empty() => {
                    return Err(loc.error(format!(
                        "unexpected text {} in <{}>",
                        quote(trim_xml(text)),
                        self.name
                    )))
                }
                Node::Text { .. } => {}
            }
        }
        Ok(())
    }
}

/// The error for an element Vireo does not take.
pub(crate) fn unsupported(e: &Element, what: &str) -> DomainError {
    if e.name.contains(':') {
        return e.loc.error(format!(
            "{what} in a namespace is not supported outside <metadata> ({})",
            e.name
        ));
    }
    let mut message = format!("{what} not supported by Vireo ({})", e.name);
    if let Some(h) = hint(&e.name) {
        message.push_str(": ");
        message.push_str(h);
    }
    e.loc.error(message)
}

/// Byte offsets to lines and columns. Positions are asked for in increasing
/// order while reading, so a cursor makes that linear overall; an earlier
/// position (for an error) starts again from its line.
struct Lines<'a> {
    input: &'a str,
    starts: Vec<usize>,
    /// The last position found: byte offset, line, column.
    cursor: Cell<(usize, u32, u32)>,
}

impl<'a> Lines<'a> {
    fn new(input: &'a str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(input.match_indices('\n').map(|(i, _)| i + 1));
        Lines {
            input,
            starts,
            cursor: Cell::new((0, 1, 1)),
        }
    }

    fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.input.len());
        while !self.input.is_char_boundary(offset) {
            offset -= 1;
        }
        let (mut at, mut line, mut column) = self.cursor.get();
        if offset < at {
            let index = self.starts.partition_point(|&s| s <= offset).max(1);
            at = self.starts.get(index - 1).copied().unwrap_or(0);
            line = u32::try_from(index).unwrap_or(u32::MAX);
            column = 1;
        }
        for c in self.input.get(at..offset).unwrap_or("").chars() {
            if c == '\n' {
                line = line.saturating_add(1);
                column = 1;
            } else {
                column = column.saturating_add(1);
            }
        }
        self.cursor.set((offset, line, column));
        Pos { line, column }
    }

    fn loc(&self, offset: usize, path: String) -> Loc {
        Loc {
            pos: self.pos(offset),
            path,
        }
    }
}

/// Characters XML 1.0 does not allow (Rust strings hold no surrogates).
fn forbidden(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{fffe}' || c == '\u{ffff}'
}

fn check_chars(s: &str, loc: impl Fn(usize) -> Loc) -> Result<()> {
    match s.char_indices().find(|&(_, c)| forbidden(c)) {
        Some((i, c)) => Err(loc(i).error(format!(
            "character U+{:04X} is not allowed in XML",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

fn stack_path(stack: &[Element]) -> String {
    if stack.is_empty() {
        return "/".to_string();
    }
    stack.iter().map(|e| format!("/{}", e.name)).collect()
}

/// Reads `input` (a whole document) into its root element, with paths set.
pub(crate) fn parse(input: &str) -> Result<Element> {
    let lines = Lines::new(input);
    if input.len() > MAX_DOCUMENT_BYTES {
        return Err(lines.loc(0, "/".into()).error(format!(
            "the document is {} bytes; at most {MAX_DOCUMENT_BYTES} (1 MiB) are accepted",
            input.len()
        )));
    }
    check_chars(input, |i| lines.loc(i, "/".into()))?;
    let body = input.strip_prefix('\u{feff}').unwrap_or(input);
    let base = input.len() - body.len();

    let mut reader = Reader::from_str(body);
    reader.config_mut().check_comments = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut first = true;
    let mut counts = Counts::default();
    loop {
        let at = base + reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(e) => {
                let at = base + reader.error_position() as usize;
                return Err(lines
                    .loc(at, stack_path(&stack))
                    .error(format!("malformed XML: {e}")));
            }
        };
        let here = || lines.loc(at, stack_path(&stack));
        match event {
            Event::Decl(d) => {
                if !first {
                    return Err(here().error("the XML declaration must come first"));
                }
                let version = d
                    .version()
                    .map_err(|e| here().error(format!("malformed XML declaration: {e}")))?;
                if version.as_ref() != "1.0" {
                    return Err(here().error(format!(
                        "XML version {} is not supported: use 1.0",
                        quote(&version)
                    )));
                }
                if let Some(enc) = d.encoding() {
                    let enc =
                        enc.map_err(|e| here().error(format!("malformed XML declaration: {e}")))?;
                    if !enc.eq_ignore_ascii_case("utf-8") {
                        return Err(here().error(format!(
                            "encoding {} is not supported: domain XML is UTF-8",
                            quote(&enc)
                        )));
                    }
                }
            }
            Event::Start(s) | Event::Empty(s) if root.is_some() && stack.is_empty() => {
                let name = s.name().0.to_string();
                return Err(here().error(format!(
                    "a second root element <{name}>: a document holds one <domain>"
                )));
            }
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(
                        here().error(format!("elements are nested more than {MAX_DEPTH} deep"))
                    );
                }
                let el = element(&s, at, input, &lines, &stack, &mut counts)?;
                stack.push(el);
            }
            Event::Empty(s) => {
                let el = element(&s, at, input, &lines, &stack, &mut counts)?;
                attach(&mut stack, &mut root, el);
            }
            Event::End(_) => {
                if let Some(el) = stack.pop() {
                    attach(&mut stack, &mut root, el);
                }
            }
            Event::Text(t) => add_text(&mut stack, &t.xml10_content(), at, &lines)?,
            Event::CData(c) => add_text(&mut stack, &c.xml10_content(), at, &lines)?,
            Event::GeneralRef(r) => {
                let text = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) if !forbidden(c) => c.to_string(),
                        _ => {
                            return Err(here()
                                .error(format!("invalid character reference &{};", r.as_ref())))
                        }
                    }
                } else {
                    match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => s.to_string(),
                        None => {
                            return Err(here().error(format!(
                                "unknown entity &{};: only XML's predefined entities are allowed",
                                r.as_ref()
                            )))
                        }
                    }
                };
                add_text(&mut stack, &text, at, &lines)?;
            }
            Event::Comment(_) => {}
            Event::PI(_) => {
                return Err(here().error("processing instructions are not supported"));
            }
            Event::DocType(_) => {
                return Err(here().error("a DOCTYPE is not allowed in domain XML"));
            }
            Event::Eof => break,
        }
        first = false;
    }
    if let Some(open) = stack.last() {
        return Err(open
            .loc
            .error(format!("element <{}> is not closed", open.name)));
    }
    let mut root =
        root.ok_or_else(|| lines.loc(input.len(), "/".into()).error("no root element"))?;
    let path = format!("/{}", root.name);
    assign_paths(&mut root, path);
    Ok(root)
}

/// What the document has used of its limits.
#[derive(Default)]
struct Counts {
    elements: usize,
    namespaces: usize,
}

/// A new element from its start tag at byte `at` (of `input`).
fn element(
    s: &BytesStart<'_>,
    at: usize,
    input: &str,
    lines: &Lines<'_>,
    stack: &[Element],
    counts: &mut Counts,
) -> Result<Element> {
    let name = s.name().0.to_string();
    let loc = lines.loc(
        at,
        format!("{}/{name}", stack_path(stack).trim_end_matches('/')),
    );
    counts.elements += 1;
    if counts.elements > MAX_ELEMENTS {
        return Err(loc.error(format!(
            "the document has more than {MAX_ELEMENTS} elements"
        )));
    }
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| attr_error(&e, at, input, lines, &loc))?;
        if attrs.len() == MAX_ATTRIBUTES {
            return Err(loc.error(format!(
                "<{name}> has more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        let key = a.key.0;
        // The key borrows from `input`: its address gives its offset.
        let offset = key
            .as_ptr()
            .addr()
            .checked_sub(input.as_ptr().addr())
            .filter(|&o| o < input.len())
            .unwrap_or(at);
        let aloc = lines.loc(offset, loc.path.clone());
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| aloc.error(format!("malformed value of attribute {key}: {e}")))?;
        check_chars(&value, |_| aloc.clone())?;
        if key == "xmlns" || key.starts_with("xmlns:") {
            counts.namespaces += 1;
            if counts.namespaces > MAX_NAMESPACES {
                return Err(aloc.error(format!(
                    "the document has more than {MAX_NAMESPACES} namespace declarations"
                )));
            }
        }
        attrs.push(Attr {
            name: key.to_string(),
            value: value.into_owned(),
            loc: aloc,
        });
    }
    Ok(Element {
        name,
        loc,
        attrs,
        children: Vec::new(),
    })
}

/// A malformed attribute, located where the problem is.
fn attr_error(
    e: &quick_xml::events::attributes::AttrError,
    at: usize,
    input: &str,
    lines: &Lines<'_>,
    loc: &Loc,
) -> DomainError {
    use quick_xml::events::attributes::AttrError as E;
    let (pos, what) = match e {
        E::ExpectedEq(p) => (*p, "an attribute name must be followed by ="),
        E::ExpectedValue(p) => (*p, "= must be followed by a quoted value"),
        E::UnquotedValue(p) => (*p, "an attribute value must be quoted"),
        E::ExpectedQuote(p, _) => (*p, "an attribute value is missing its closing quote"),
        E::Duplicated(p, _) => (*p, "duplicate attribute"),
    };
    // Positions count from the character after '<'.
    let offset = at + 1 + pos;
    let name: String = input
        .get(offset..)
        .unwrap_or("")
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '=' && *c != '>' && *c != '/')
        .collect();
    let message = match e {
        E::Duplicated(..) => format!("malformed XML: {what} {name}"),
        _ => format!("malformed XML: {what}"),
    };
    lines.loc(offset, loc.path.clone()).error(message)
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

fn add_text(stack: &mut [Element], text: &str, at: usize, lines: &Lines<'_>) -> Result<()> {
    let path = stack_path(stack);
    let Some(parent) = stack.last_mut() else {
        if trim_xml(text).is_empty() {
            return Ok(());
        }
        return Err(lines.loc(at, path).error(format!(
            "text {} outside the root element",
            quote(trim_xml(text))
        )));
    };
    if let Some(Node::Text { text: t, .. }) = parent.children.last_mut() {
        t.push_str(text);
    } else {
        parent.children.push(Node::Text {
            text: text.to_string(),
            loc: lines.loc(at, path),
        });
    }
    Ok(())
}

/// Sets the XPath-like path of every node: `/domain/devices/disk[2]` where a
/// name repeats among siblings, `/domain/devices/disk` where it does not.
fn assign_paths(el: &mut Element, path: String) {
    for a in &mut el.attrs {
        a.loc.path = format!("{path}/@{}", a.name);
    }
    // Per name: how many siblings have it, and how many were numbered so far.
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for node in &el.children {
        if let Node::Element(e) = node {
            counts.entry(e.name.clone()).or_default().0 += 1;
        }
    }
    for node in &mut el.children {
        match node {
            Node::Element(child) => {
                let entry = counts.entry(child.name.clone()).or_default();
                let child_path = if entry.0 > 1 {
                    entry.1 += 1;
                    format!("{path}/{}[{}]", child.name, entry.1)
                } else {
                    format!("{path}/{}", child.name)
                };
                assign_paths(child, child_path);
            }
            Node::Text { loc, .. } => loc.path = format!("{path}/text()"),
        }
    }
    el.loc.path = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(el: &Element, i: usize) -> &Element {
        match el
            .children
            .iter()
            .filter(|n| matches!(n, Node::Element(_)))
            .nth(i)
        {
            Some(Node::Element(e)) => e,
            _ => panic!("no child {i}"),
        }
    }

    #[test]
    fn positions_and_paths_are_recorded() {
        let doc =
            "<?xml version='1.0'?>\n<a x='1'>\n  <b/>\n  <c>t&amp;u</c>\n  <b  y='2'/>\n</a>\n";
        let root = parse(doc).expect("parses");
        assert_eq!(root.loc.pos, Pos { line: 2, column: 1 });
        assert_eq!(root.attrs[0].loc.pos, Pos { line: 2, column: 4 });
        assert_eq!(root.attrs[0].loc.path, "/a/@x");
        let b1 = child(&root, 0);
        assert_eq!(b1.loc.path, "/a/b[1]");
        assert_eq!(b1.loc.pos, Pos { line: 3, column: 3 });
        let c = child(&root, 1);
        assert_eq!(c.loc.path, "/a/c");
        assert_eq!(c.clone().into_text().expect("text"), "t&u");
        let b2 = child(&root, 2);
        assert_eq!(b2.loc.path, "/a/b[2]");
        assert_eq!(b2.attrs[0].loc.pos, Pos { line: 5, column: 7 });
        assert_eq!(b2.attrs[0].loc.path, "/a/b[2]/@y");
    }

    #[test]
    fn columns_count_characters() {
        let root = parse("<a>\n<é é='1'/></a>").expect("parses");
        let e = child(&root, 0);
        assert_eq!(e.attrs[0].loc.pos, Pos { line: 2, column: 4 });
    }

    #[test]
    fn references_and_cdata_become_text() {
        let root = parse("<a>x&#65;&#x42;<![CDATA[<c>]]>&lt;</a>").expect("parses");
        assert_eq!(root.into_text().expect("text"), "xAB<c><");
        let root = parse("<a v='a&#10;b&lt;\tc'/>").expect("parses");
        assert_eq!(root.attrs[0].value, "a\nb< c");
    }

    #[test]
    fn malformed_documents_are_refused_with_a_line() {
        let cases: &[(&str, &str)] = &[
            ("<a>\n<b>\n</a>", "line 3"),
            ("<a>\n  <b x='1' x='2'/>\n</a>", "line 2"),
            ("<a>&foo;</a>", "unknown entity &foo;"),
            ("<a>&#1;</a>", "invalid character reference"),
            ("<a>\u{1}</a>", "U+0001"),
            ("<!DOCTYPE a>\n<a/>", "DOCTYPE"),
            ("<a/><b/>", "second root"),
            ("<a/>text", "outside the root"),
            ("<a><?pi x?></a>", "processing instructions"),
            (
                "<?xml version='1.0' encoding='ISO-8859-1'?><a/>",
                "encoding",
            ),
            ("<?xml version='1.1'?><a/>", "version"),
            ("", "no root element"),
            ("<a>\n<b>", "line 2"),
            ("<a><!-- a -- b --></a>", "malformed"),
        ];
        for (doc, want) in cases {
            let e = parse(doc).expect_err(doc);
            assert!(e.to_string().contains(want), "{doc:?}: {e}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        let e = parse(&deep).expect_err("too deep");
        assert!(e.message.contains("nested"), "{e}");
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        parse(&ok).expect("deep but allowed");
        let big = format!("<a>{}</a>", "x".repeat(MAX_DOCUMENT_BYTES));
        let e = parse(&big).expect_err("too big");
        assert!(e.message.contains("at most 1048576"), "{e}");
    }

    #[test]
    fn element_attribute_and_namespace_counts_are_bounded() {
        let many = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS));
        let e = parse(&many).expect_err("too many elements");
        assert!(e.message.contains("more than 16384 elements"), "{e}");
        parse(&format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS - 1))).expect("just fits");
        let attrs: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}='1'")).collect();
        let e = parse(&format!("<a{attrs}/>")).expect_err("too many attributes");
        assert!(e.message.contains("more than 256 attributes"), "{e}");
        let decls: String = (0..=MAX_NAMESPACES)
            .map(|i| format!("<b xmlns:p{i}='u'/>"))
            .collect();
        let e = parse(&format!("<a>{decls}</a>")).expect_err("too many namespaces");
        assert!(e.message.contains("namespace declarations"), "{e}");
    }

    #[test]
    fn positions_stay_right_when_asked_out_of_order() {
        let doc = "<a>\n  <b/>\n  <ü x='1'>\n</a>";
        let lines = Lines::new(doc);
        let late = doc.find("x=").expect("x");
        let early = doc.find("<b").expect("b");
        assert_eq!(lines.pos(late), Pos { line: 3, column: 6 });
        assert_eq!(lines.pos(early), Pos { line: 2, column: 3 });
        assert_eq!(lines.pos(late), Pos { line: 3, column: 6 });
        assert_eq!(lines.pos(doc.len()), Pos { line: 4, column: 5 });
    }

    #[test]
    fn take_and_finish_refuse_leftovers() {
        let mut root = parse("<a k='v' z='1'><b/><b/><c/></a>").expect("parses");
        assert_eq!(root.take_attr("k").expect("k").value, "v");
        let e = root.take_child("b").expect_err("duplicate");
        assert!(
            e.to_string().contains("/a/b[2]: duplicate element <b>"),
            "{e}"
        );
        assert_eq!(root.take_children("b").len(), 2);
        let e = root.clone().finish().expect_err("z left");
        assert_eq!(e.path, "/a/@z");
        root.take_attr("z");
        let e = root.finish().expect_err("c left");
        assert_eq!(
            e.to_string(),
            "line 1: /a/c: element not supported by Vireo (c)"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let root = parse("\u{feff}<a/>").expect("parses");
        assert_eq!(root.name, "a");
    }
}
