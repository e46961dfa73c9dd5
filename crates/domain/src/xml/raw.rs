//! Elements Vireo keeps without interpreting them: the children of
//! `<metadata>` and device elements that have no effect on the guest
//! (controllers, PS/2 inputs, `<memballoon model='none'/>`).
//!
//! A kept element is stored as a tree and written back normalised the way
//! libvirt formats such XML: comments dropped, whitespace-only text between
//! child elements replaced by Vireo's indentation, everything else (names,
//! attribute order, text) exactly as given. Elements with mixed content
//! (text next to child elements) are written on one line so their text
//! stays exactly as it was. Namespace prefixes declared on an ancestor (such
//! as `<domain xmlns:my='...'>`) are declared again on the kept element, so it
//! stands on its own.

use serde::{Deserialize, Serialize};

use super::tree::{is_xml_space, Element, Node};
use super::writer::{escape_attr, escape_text, XmlWriter};
use crate::error::Result;

/// An element kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawElement {
    /// The qualified name as written, e.g. `libosinfo:libosinfo`.
    pub name: String,
    /// Attributes in document order, namespace declarations included.
    pub attributes: Vec<(String, String)>,
    /// Child elements and text.
    pub children: Vec<RawNode>,
}

/// A child of a [`RawElement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawNode {
    Element(RawElement),
    Text(String),
}

impl RawElement {
    /// The value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The namespace URI of the element, when declared on the element itself
    /// (always the case for `<metadata>` children Vireo keeps).
    pub fn namespace(&self) -> Option<&str> {
        match self.name.split_once(':') {
            Some((prefix, _)) => self.attribute(&format!("xmlns:{prefix}")),
            None => self.attribute("xmlns"),
        }
    }

    /// The element as normalised XML (no indentation, trailing newline).
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        write(&mut w, self);
        w.finish()
    }
}

/// A namespace binding in scope: prefix ("" for the default), URI, and
/// whether it was declared outside the kept subtree.
struct Binding {
    prefix: String,
    uri: String,
    outer: bool,
}

fn prefix_of(name: &str) -> &str {
    name.split_once(':').map_or("", |(p, _)| p)
}

fn declared_prefix(attr: &str) -> Option<&str> {
    if attr == "xmlns" {
        Some("")
    } else {
        attr.strip_prefix("xmlns:")
    }
}

/// Converts a tree element into a kept element. `outer` lists the namespace
/// declarations in scope around it; with `allow_ns` false, namespaces are
/// refused (kept device elements must be plain libvirt XML).
pub(crate) fn from_tree(
    el: Element,
    outer: &[(String, String)],
    allow_ns: bool,
) -> Result<RawElement> {
    let mut scope: Vec<Binding> = outer
        .iter()
        .map(|(p, u)| Binding {
            prefix: p.clone(),
            uri: u.clone(),
            outer: true,
        })
        .collect();
    let mut needed: Vec<(String, String)> = Vec::new();
    let mut raw = convert(el, &mut scope, &mut needed, allow_ns)?;
    let decls: Vec<(String, String)> = needed
        .into_iter()
        .map(|(p, u)| {
            let key = if p.is_empty() {
                "xmlns".to_string()
            } else {
                format!("xmlns:{p}")
            };
            (key, u)
        })
        .collect();
    raw.attributes.splice(0..0, decls);
    Ok(raw)
}

fn resolve(prefix: &str, scope: &[Binding], needed: &mut Vec<(String, String)>) -> Option<()> {
    let b = scope.iter().rev().find(|b| b.prefix == prefix)?;
    if b.outer && !needed.iter().any(|(p, _)| p == prefix) {
        needed.push((b.prefix.clone(), b.uri.clone()));
    }
    Some(())
}

fn convert(
    el: Element,
    scope: &mut Vec<Binding>,
    needed: &mut Vec<(String, String)>,
    allow_ns: bool,
) -> Result<RawElement> {
    let mark = scope.len();
    for a in &el.attrs {
        if let Some(prefix) = declared_prefix(&a.name) {
            if !allow_ns {
                return Err(a.loc.error(format!(
                    "attribute not supported by Vireo ({}): namespaces belong in <metadata>",
                    a.name
                )));
            }
            scope.push(Binding {
                prefix: prefix.to_string(),
                uri: a.value.clone(),
                outer: false,
            });
        }
    }
    let prefix = prefix_of(&el.name);
    if !allow_ns && !prefix.is_empty() {
        return Err(super::tree::unsupported(&el, "element"));
    }
    if resolve(prefix, scope, needed).is_none() && !prefix.is_empty() {
        return Err(el
            .loc
            .error(format!("namespace prefix '{prefix}' is not declared")));
    }
    let mut attributes = Vec::with_capacity(el.attrs.len());
    for a in el.attrs {
        let p = prefix_of(&a.name);
        if !p.is_empty() && p != "xmlns" && p != "xml" {
            if !allow_ns {
                return Err(a
                    .loc
                    .error(format!("attribute not supported by Vireo ({})", a.name)));
            }
            if resolve(p, scope, needed).is_none() {
                return Err(a
                    .loc
                    .error(format!("namespace prefix '{p}' is not declared")));
            }
        }
        attributes.push((a.name, a.value));
    }
    let mut children = Vec::with_capacity(el.children.len());
    for node in el.children {
        children.push(match node {
            Node::Element(e) => RawNode::Element(convert(e, scope, needed, allow_ns)?),
            Node::Text { text, .. } => RawNode::Text(text),
        });
    }
    scope.truncate(mark);
    let has_element = children.iter().any(|c| matches!(c, RawNode::Element(_)));
    let has_content = children
        .iter()
        .any(|c| matches!(c, RawNode::Text(t) if !t.chars().all(is_xml_space)));
    if has_element && !has_content {
        children.retain(|c| matches!(c, RawNode::Element(_)));
    } else if !has_element {
        children.retain(|c| matches!(c, RawNode::Text(t) if !t.is_empty()));
    }
    Ok(RawElement {
        name: el.name,
        attributes,
        children,
    })
}

fn attrs(el: &RawElement) -> Vec<(&str, &str)> {
    el.attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Writes a kept element at the writer's indentation.
pub(crate) fn write(w: &mut XmlWriter, el: &RawElement) {
    let has_element = el.children.iter().any(|c| matches!(c, RawNode::Element(_)));
    let has_text = el.children.iter().any(|c| matches!(c, RawNode::Text(_)));
    if el.children.is_empty() {
        w.empty(&el.name, &attrs(el));
    } else if !has_element {
        let text: String = el
            .children
            .iter()
            .filter_map(|c| match c {
                RawNode::Text(t) => Some(t.as_str()),
                RawNode::Element(_) => None,
            })
            .collect();
        w.text(&el.name, &attrs(el), &text);
    } else if has_text {
        let mut line = String::new();
        inline(&mut line, el);
        w.markup_line(&line);
    } else {
        w.open(&el.name, &attrs(el));
        for c in &el.children {
            if let RawNode::Element(e) = c {
                write(w, e);
            }
        }
        w.close(&el.name);
    }
}

/// Mixed content: the element and all it holds on one line, text untouched.
fn inline(out: &mut String, el: &RawElement) {
    out.push('<');
    out.push_str(&el.name);
    for (k, v) in &el.attributes {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        escape_attr(out, v);
        out.push('\'');
    }
    if el.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in &el.children {
        match c {
            RawNode::Element(e) => inline(out, e),
            RawNode::Text(t) => escape_text(out, t),
        }
    }
    out.push_str("</");
    out.push_str(&el.name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::tree::parse;

    fn first_child(doc: &str) -> Element {
        let mut root = parse(doc).expect("parses");
        let child = root
            .children
            .drain(..)
            .find(|n| matches!(n, Node::Element(_)));
        match child {
            Some(Node::Element(e)) => e,
            _ => panic!("no child"),
        }
    }

    #[test]
    fn inherited_namespaces_are_declared_on_the_kept_element() {
        let doc = "<d xmlns:a='urn:a' xmlns:b='urn:b'><a:x b:k='1'>\n  <a:y>v</a:y>\n</a:x></d>";
        let outer = vec![
            ("a".to_string(), "urn:a".to_string()),
            ("b".to_string(), "urn:b".to_string()),
        ];
        let raw = from_tree(first_child(doc), &outer, true).expect("kept");
        assert_eq!(
            raw.to_xml(),
            "<a:x xmlns:a='urn:a' xmlns:b='urn:b' b:k='1'>\n  <a:y>v</a:y>\n</a:x>\n"
        );
        assert_eq!(raw.namespace(), Some("urn:a"));
        // Written again and read back: the same.
        let again =
            from_tree(first_child(&format!("<d>{}</d>", raw.to_xml())), &[], true).expect("kept");
        assert_eq!(again, raw);
    }

    #[test]
    fn mixed_content_stays_exact() {
        let doc = "<d><m:x xmlns:m='urn:m'>a <b>bold</b>\n c<e/></m:x></d>";
        let raw = from_tree(first_child(doc), &[], true).expect("kept");
        let xml = raw.to_xml();
        assert_eq!(xml, "<m:x xmlns:m='urn:m'>a <b>bold</b>\n c<e/></m:x>\n");
        let again = from_tree(first_child(&format!("<d>{xml}</d>")), &[], true).expect("kept");
        assert_eq!(again, raw);
    }

    #[test]
    fn undeclared_prefixes_and_namespaces_outside_metadata_are_refused() {
        let e = from_tree(first_child("<d><q:x/></d>"), &[], true).expect_err("undeclared");
        assert!(e.message.contains("prefix 'q' is not declared"), "{e}");
        let e = from_tree(first_child("<d><c><q:x xmlns:q='u'/></c></d>"), &[], false)
            .expect_err("namespaced");
        assert!(e.message.contains("namespace"), "{e}");
    }
}
