//! Rules both backends share, kept in one place so SQLite and PostgreSQL cannot drift apart:
//! what a commit may contain, how a batch collapses to one write per row, and how a key prefix
//! and a page position turn into one range `(lower, upper)` that a B-tree index answers directly.

use std::collections::BTreeMap;

use crate::{Commit, Error, Result, Write};

/// The largest partition (owner) number: PostgreSQL keeps owners in `int4`, and every backend
/// accepts the same commits.
pub(crate) const MAX_PARTITION: u32 = i32::MAX as u32;

/// Checks what a backend could not store faithfully, before anything is written: a partition
/// beyond `int4`, an offset beyond `int8`, or a namespace or key holding NUL (PostgreSQL `text`
/// cannot). Such a commit is a bug in the caller, so the error is not retryable.
pub(crate) fn validate(c: &Commit) -> Result<()> {
    if c.partition > MAX_PARTITION {
        return Err(Error::Config(format!(
            "partition {} is above {MAX_PARTITION}, the largest the state store supports",
            c.partition
        )));
    }
    if i64::try_from(c.from_offset.max(c.to_offset)).is_err() {
        return Err(Error::Config(format!(
            "partition {}: offsets {}..{} are above {}, the largest the state store supports",
            c.partition,
            c.from_offset,
            c.to_offset,
            i64::MAX
        )));
    }
    for w in &c.writes {
        let (Write::Put { ns, key, .. } | Write::Delete { ns, key }) = w;
        if has_nul(ns) || has_nul(key) {
            return Err(Error::Config(format!(
                "partition {}: namespace {ns:?} / key {key:?} contains a NUL character, which \
                 the state store cannot keep (PostgreSQL text cannot hold it)",
                c.partition
            )));
        }
    }
    Ok(())
}

pub(crate) fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

/// A page position must come from a previous page, so it never holds NUL.
pub(crate) fn check_position(parts: &[&str]) -> Result<()> {
    match parts.iter().find(|p| has_nul(p)) {
        Some(p) => Err(Error::Config(format!(
            "page position {p:?} contains a NUL character; pass the last row of the previous page"
        ))),
        None => Ok(()),
    }
}

/// The batch collapsed to its final effect per `(ns, key)`: the last write wins (`Some(value)`
/// for a put, `None` for a delete), in `(ns, key)` order. PostgreSQL needs this because
/// `ON CONFLICT DO UPDATE` may not touch one row twice in a statement; SQLite uses it too so both
/// backends apply exactly the same thing, and sorted keys make B-tree inserts cheap.
pub(crate) fn last_writes(writes: &[Write]) -> BTreeMap<(&str, &str), Option<&[u8]>> {
    let mut out = BTreeMap::new();
    for w in writes {
        match w {
            Write::Put { ns, key, value } => {
                out.insert((ns.as_str(), key.as_str()), Some(&value[..]))
            }
            Write::Delete { ns, key } => out.insert((ns.as_str(), key.as_str()), None),
        };
    }
    out
}

/// The smallest string greater than every string starting with `prefix`, or `None` when no
/// string is (an empty prefix, or one made only of U+10FFFF). UTF-8 orders bytewise like code
/// points, so bumping the last code point that can be bumped is exact: `key >= prefix AND
/// key < upper` holds for precisely the keys starting with `prefix`, with no `LIKE` escaping.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'), // skip the surrogate gap
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The exclusive lower bound `(key, owner)` of a scan: the later of "just before the prefix"
/// (owner -1 sorts before every owner) and the caller's page position.
pub(crate) fn scan_lower(prefix: &str, after: Option<(&str, u32)>) -> (String, i64) {
    let start = (prefix, -1i64);
    match after {
        Some((k, o)) if (k, i64::from(o)) > start => (k.to_owned(), i64::from(o)),
        _ => (prefix.to_owned(), -1),
    }
}

/// A number read back from the database, checked against the Rust type it came from.
pub(crate) fn from_db<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T> {
    T::try_from(v).map_err(|_| {
        Error::Config(format!(
            "the state store holds {what} {v}, which Storeline never writes; \
             was the database changed by something else?"
        ))
    })
}

/// `usize` page limits as SQL `LIMIT`s.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bound_is_the_next_string_after_the_prefix() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}\u{10FFFF}"), None);
        assert_eq!(
            prefix_upper_bound("x\u{D7FF}").as_deref(),
            Some("x\u{E000}")
        );
        assert_eq!(prefix_upper_bound("%").as_deref(), Some("&"));
    }

    #[test]
    fn scan_lower_takes_the_later_bound() {
        assert_eq!(scan_lower("b", None), ("b".to_owned(), -1));
        assert_eq!(scan_lower("b", Some(("a", 9))), ("b".to_owned(), -1));
        assert_eq!(scan_lower("b", Some(("b", 0))), ("b".to_owned(), 0));
        assert_eq!(scan_lower("b", Some(("bz", 3))), ("bz".to_owned(), 3));
    }

    #[test]
    fn last_write_wins_per_row() {
        let put = |k: &str, v: &'static [u8]| Write::Put {
            ns: "n".into(),
            key: k.into(),
            value: bytes::Bytes::from_static(v),
        };
        let del = |k: &str| Write::Delete {
            ns: "n".into(),
            key: k.into(),
        };
        let w = [
            put("a", b"1"),
            del("a"),
            del("b"),
            put("b", b"2"),
            put("c", b"3"),
        ];
        let w = last_writes(&w);
        let got: Vec<_> = w.iter().map(|(k, v)| (k.1, *v)).collect();
        assert_eq!(
            got,
            [("a", None), ("b", Some(&b"2"[..])), ("c", Some(&b"3"[..]))]
        );
    }
}
