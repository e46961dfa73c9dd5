//! JSON written the way qemu-img writes it: four-space indentation, keys in
//! the order given (qemu-img's order, which scripts diffing outputs may
//! rely on), every non-ASCII character escaped.

/// A JSON value with ordered object members.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Object(Vec<(&'static str, Json)>),
    Array(Vec<Json>),
    String(String),
    Int(i128),
    Bool(bool),
}

impl Json {
    pub fn str(s: impl Into<String>) -> Self {
        Self::String(s.into())
    }

    pub fn int(v: impl Into<i128>) -> Self {
        Self::Int(v.into())
    }
}

/// `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value, pretty-printed at nesting `level`, without a final newline.
pub fn pretty(value: &Json) -> String {
    let mut out = String::new();
    write(value, 0, &mut out);
    out
}

fn indent(level: usize, out: &mut String) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write(value: &Json, level: usize, out: &mut String) {
    match value {
        Json::Object(members) => {
            out.push_str("{\n");
            for (i, (key, v)) in members.iter().enumerate() {
                indent(level + 1, out);
                out.push_str(&quote(key));
                out.push_str(": ");
                write(v, level + 1, out);
                if i + 1 < members.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            indent(level, out);
            out.push('}');
        }
        Json::Array(items) => {
            out.push_str("[\n");
            for (i, v) in items.iter().enumerate() {
                indent(level + 1, out);
                write(v, level + 1, out);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            indent(level, out);
            out.push(']');
        }
        Json::String(s) => out.push_str(&quote(s)),
        Json::Int(v) => out.push_str(&v.to_string()),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_escapes() {
        let v = Json::Object(vec![
            ("a", Json::int(1)),
            ("list", Json::Array(vec![])),
            (
                "inner",
                Json::Object(vec![("s", Json::str("we\"ird \u{e9}\\n\u{1f600}\t\u{1f}"))]),
            ),
            ("b", Json::Bool(false)),
        ]);
        assert_eq!(
            pretty(&v),
            "{\n    \"a\": 1,\n    \"list\": [\n    ],\n    \"inner\": {\n        \"s\": \"we\\\"ird \\u00E9\\\\n\\uD83D\\uDE00\\t\\u001F\"\n    },\n    \"b\": false\n}"
        );
    }
}
