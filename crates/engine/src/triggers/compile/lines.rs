//! Line numbers for problems: a problem's `at` is a key path (`trigger[2] "abandoned-cart".when`,
//! `aggregate[0] "x".key`, `trigger[0] "y".steps[1].wait.match`); this finds that key in the TOML
//! source and appends `(line N)`, so a long file's author can go straight to it.
//!
//! The file is parsed a second time with `toml_edit` (which keeps spans) only when there are
//! problems, so the happy path costs nothing.

use toml_edit::{ImDocument, Item, Table, Value};

use crate::triggers::Problem;

/// Appends ` (line N)` to each problem whose key path (or a leading part of it) is in `source`.
pub(super) fn add(source: &str, problems: &mut [Problem]) {
    let Ok(doc) = ImDocument::parse(source) else {
        return;
    };
    for p in problems {
        if let Some(start) = locate(doc.as_table(), &p.at) {
            let line = source.as_bytes()[..start.min(source.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            p.at = format!("{} (line {line})", p.at);
        }
    }
}

/// A place in the document.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn key(self, k: &str) -> Option<Node<'a>> {
        match self {
            Node::Table(t) => t.get(k).map(Node::Item),
            Node::Item(Item::Table(t)) => t.get(k).map(Node::Item),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                t.get(k).map(Node::Value)
            }
            _ => None,
        }
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(i).map(Node::Value)
            }
            _ => None,
        }
    }

    fn name(self) -> Option<&'a str> {
        match self.key("name")? {
            Node::Item(i) => i.as_str(),
            Node::Value(v) => v.as_str(),
            Node::Table(_) => None,
        }
    }

    fn start(self) -> Option<usize> {
        match self {
            Node::Table(t) => t.span(),
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
        .map(|s| s.start)
    }
}

/// Where the deepest part of `path` that is in the document starts (never the root): a missing
/// key (a default) points at its table.
fn locate(root: &Table, path: &str) -> Option<usize> {
    let mut node = Node::Table(root);
    let mut found = None;
    let mut rest = path;
    while !rest.is_empty() {
        let next = if let Some(r) = rest.strip_prefix('[') {
            let (n, r) = r.split_once(']')?;
            rest = r;
            // An element that is not there: the path is not about this document.
            Some(node.index(n.parse().ok()?)?)
        } else if let Some(r) = rest.strip_prefix(" \"") {
            // The name after an index: `trigger[2] "abandoned-cart"`; names may hold anything,
            // so it is matched against the name in the document rather than parsed.
            rest = r.strip_prefix(node.name()?)?.strip_prefix('"')?;
            continue;
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[', ' ']).unwrap_or(r.len());
            rest = &r[end..];
            node.key(&r[..end])
        };
        let Some(n) = next else { break };
        node = n;
        found = node.start().or(found);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: &str, path: &str) -> String {
        let mut p = [Problem {
            at: path.into(),
            message: String::new(),
        }];
        add(source, &mut p);
        p[0].at.clone()
    }

    #[test]
    fn key_paths_get_the_line_of_their_key() {
        let src = r#"
[[aggregate]]
name = "adds"
key = "event.customer"

[[trigger]]
name = "a"
on = "x.y"

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
when = """
  true
"""
cancel_on = [
  "order.placed",
  { event = "cart.item_removed", match = "true" },
]
steps = [
  { wait = { for = "order.placed", within = "1h" }, on_timeout = [
      { deliver = "email", data = { cart = "customer.cart" } },
  ] },
]
"#;
        assert_eq!(
            at(src, "trigger[1] \"abandoned-cart\".when"),
            "trigger[1] \"abandoned-cart\".when (line 13)"
        );
        assert_eq!(
            at(src, "trigger[1] \"abandoned-cart\".cancel_on[1].match"),
            "trigger[1] \"abandoned-cart\".cancel_on[1].match (line 18)"
        );
        assert_eq!(
            at(
                src,
                "trigger[1] \"abandoned-cart\".steps[0].on_timeout[0].data.cart"
            ),
            "trigger[1] \"abandoned-cart\".steps[0].on_timeout[0].data.cart (line 22)"
        );
        assert_eq!(
            at(src, "aggregate[0] \"adds\".key"),
            "aggregate[0] \"adds\".key (line 4)"
        );
        // A key that is not there (a default) points at its table.
        assert_eq!(
            at(src, "trigger[0] \"a\".when"),
            "trigger[0] \"a\".when (line 6)"
        );
        // What is not a key path stays as it is.
        assert_eq!(at(src, "line 3"), "line 3");
        assert_eq!(at(src, "trigger[7] \"b\""), "trigger[7] \"b\"");
    }
}
