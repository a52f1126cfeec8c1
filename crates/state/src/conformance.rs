//! The conformance suite: one check per rule of the [`StateStore`] contract, run by every
//! backend, so SQLite and PostgreSQL are held to the same observable behaviour.
//!
//! A backend's test implements [`Harness`] (hand out fresh empty stores, clean up afterwards) and
//! expands [`conformance_tests!`](crate::conformance_tests), which makes one `#[tokio::test]` per
//! check, so each rule passes or fails under its own name. Checks panic naming the broken rule.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::{Commit, Error, Row, StateStore, Write, digest};

/// What a backend's tests provide to the suite.
pub trait Harness {
    type Store: StateStore;
    /// A new, empty store, independent of every other one this harness made.
    fn store(&self) -> impl Future<Output = Self::Store>;
    /// Removes what the stores left behind (called after the check passed).
    fn finish(self) -> impl Future<Output = ()>;
}

/// One `#[tokio::test]` per check: `conformance_tests!(MyHarness::new());`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness; atomic_commit, fencing, ownership,
            read_after_commit, order_and_prefixes, pagination, exact_bytes, last_write_wins,
            digest_equality, large_commit, concurrent_partitions);
    };
    (@each $harness:expr; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let harness = $harness;
            $crate::conformance::$check(&harness).await;
            $crate::conformance::Harness::finish(harness).await;
        }
    )*};
}

/// Keys that tell bytewise order from locale order, and a true prefix test from `LIKE`.
#[rustfmt::skip]
pub const KEYS: &[&str] = &[
    "", "a", "A", "b", "B", "Z", "z", "_", "%", "a%", "a%b", "a_", "a_b", "aXb", "ab", "abc", "ac",
    "ab\u{10FFFF}x", "a b", "a\u{7F}", "a\u{80}", "é", "e\u{301}", "E", "€", "\u{7FF}", "\u{800}",
    "\u{FFFF}", "𝄞", "\u{10FFFF}", "\u{10FFFF}\u{10FFFF}", "\u{D7FF}a", "\u{E000}", "~", "0",
    "10", "2", "9", "ß", "SS", "ǅ",
];

/// Prefixes of no key in [`KEYS`] (or of several), space-separated.
const EXTRA_PREFIXES: &str = "a% a_ % _ zzz \u{D7FF} ab\u{10FFFF} A e";

/// A [`Write::Put`].
pub fn put(ns: &str, key: &str, value: impl AsRef<[u8]>) -> Write {
    let value = Bytes::copy_from_slice(value.as_ref());
    let (ns, key) = (ns.to_owned(), key.to_owned());
    Write::Put { ns, key, value }
}

/// A [`Write::Delete`].
pub fn del(ns: &str, key: &str) -> Write {
    let (ns, key) = (ns.to_owned(), key.to_owned());
    Write::Delete { ns, key }
}

/// Writes to `ns` from a script of space-separated `+key=value` (put) and `-key` (delete).
pub fn ops(ns: &str, script: &str) -> Vec<Write> {
    let op = |op: &str| match op[1..].split_once('=') {
        Some((k, v)) if op.starts_with('+') => put(ns, k, v),
        _ => del(ns, &op[1..]),
    };
    script.split(' ').map(op).collect()
}

/// A [`Commit`].
pub fn commit(partition: u32, from_offset: u64, to_offset: u64, writes: Vec<Write>) -> Commit {
    Commit {
        partition,
        from_offset,
        to_offset,
        writes,
    }
}

/// Varied batches of partitions 0, 1, 2 and 7 (overwrites, deletes, unicode keys, binary
/// values), each partition ending at offset 400: content for comparing stores and backends.
pub fn sample_commits() -> Vec<Commit> {
    let mut out = Vec::new();
    for round in 0..4usize {
        for p in [0u32, 1, 2, 7] {
            let mut w = vec![put("cust", "shared", format!("{p}/{round}"))];
            for i in 0..30usize {
                let key = KEYS[(i * 7 + round * 3 + p as usize) % KEYS.len()];
                let ns = ["cust", "order", "inv"][i % 3];
                w.push(match (i + round).is_multiple_of(5) {
                    true => del(ns, key),
                    false => put(ns, key, [p as u8, round as u8, i as u8, 0, 255]),
                });
            }
            let from = round as u64 * 100;
            out.push(commit(p, from, from + 100, w));
        }
    }
    out
}

/// The rows `commits` leave, in contract order.
pub fn model(commits: &[Commit]) -> Vec<Row> {
    let mut m = BTreeMap::new();
    for c in commits {
        for w in &c.writes {
            match w {
                Write::Put { ns, key, value } => {
                    m.insert((ns.clone(), key.clone(), c.partition), value.clone())
                }
                Write::Delete { ns, key } => m.remove(&(ns.clone(), key.clone(), c.partition)),
            };
        }
    }
    let row = |((ns, key, owner), value)| Row {
        ns,
        key,
        owner,
        value,
    };
    m.into_iter().map(row).collect()
}

/// Every row, through `dump` pages of `page` rows.
pub async fn dump_all<S: StateStore>(s: &S, page: usize) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    loop {
        let after = out.last().map(|r| (r.ns.as_str(), r.key.as_str(), r.owner));
        let got = s.dump(after, page).await.expect("dump");
        assert!(got.len() <= page, "rule 5: dump exceeded its limit");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// Every row of `ns` under `prefix`, through `scan` pages of `page` rows.
pub async fn scan_all<S: StateStore>(s: &S, ns: &str, prefix: &str, page: usize) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    loop {
        let after = out.last().map(|r| (r.key.as_str(), r.owner));
        let got = s.scan(ns, prefix, after, page).await.expect("scan");
        assert!(got.len() <= page, "rule 5: scan exceeded its limit");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// Shorthands that panic on errors, so the checks read like the rules they test.
trait Check: StateStore + Sized {
    async fn ok(&self, partition: u32, from: u64, to: u64, writes: Vec<Write>) {
        let c = commit(partition, from, to, writes);
        self.commit(c).await.expect("commit");
    }
    async fn hash(&self) -> crate::Digest {
        digest(self).await.expect("digest")
    }
    /// The numbers of the [`Error::Fenced`] the commit must fail with.
    async fn fenced(&self, c: Commit) -> (u32, u64, u64) {
        match self.commit(c).await {
            Err(e @ Error::Fenced { .. }) if e.is_retryable() => panic!("retryable: {e}"),
            Err(Error::Fenced {
                partition,
                expected,
                stored,
            }) => (partition, expected, stored),
            other => panic!("rule 2: expected Fenced, got {other:?}"),
        }
    }
    async fn rows(&self, ns: &str, key: &str) -> Vec<(u32, Vec<u8>)> {
        let rows = self.get(ns, key).await.expect("get");
        rows.into_iter().map(|(o, v)| (o, v.to_vec())).collect()
    }
    async fn owned(&self, ns: &str, owner: u32, keys: &[&str]) -> Vec<Option<Vec<u8>>> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let got = self.get_owned(ns, owner, &keys).await.expect("get_owned");
        assert_eq!(got.len(), keys.len(), "get_owned: one answer per key");
        got.into_iter().map(|v| v.map(|v| v.to_vec())).collect()
    }
    /// The distinct keys of `ns` starting with `prefix`, in order.
    async fn keys(&self, ns: &str, prefix: &str) -> Vec<String> {
        let rows = self.scan(ns, prefix, None, 100_000).await.expect("scan");
        let mut keys: Vec<String> = rows.into_iter().map(|r| r.key).collect();
        keys.dedup();
        keys
    }
    async fn offs(&self) -> BTreeMap<u32, u64> {
        self.offsets().await.expect("offsets")
    }
    async fn snap(&self) -> (Vec<Row>, BTreeMap<u32, u64>) {
        (dump_all(self, 1000).await, self.offs().await)
    }
}

impl<S: StateStore> Check for S {}

async fn fresh<H: Harness>(h: &H) -> H::Store {
    let s = h.store().await;
    assert_eq!(s.snap().await, Default::default(), "not empty");
    s
}

async fn apply<S: StateStore>(s: &S, commits: &[Commit]) {
    for c in commits {
        s.commit(c.clone()).await.expect("commit");
    }
}

fn only(rows: &[Row], keep: impl Fn(&Row) -> bool) -> Vec<Row> {
    rows.iter().filter(|r| keep(r)).cloned().collect()
}

fn at(rows: &[Row]) -> Vec<(&str, &str, u32)> {
    rows.iter()
        .map(|r| (r.ns.as_str(), r.key.as_str(), r.owner))
        .collect()
}

/// Rule 1: a commit that fails (fenced, or refused) writes nothing at all.
pub async fn atomic_commit<H: Harness>(h: &H) {
    let s = fresh(h).await;
    s.ok(1, 0, 2, ops("a", "+k1=1 +k2=2")).await;
    let before = s.snap().await;
    let w = ops("a", "+k3=x -k1 +k2=y");
    assert_eq!(s.fenced(commit(1, 0, 9, w)).await, (1, 0, 2));
    assert_eq!(s.snap().await, before, "rule 1: a fenced commit wrote");
    // What no backend can store (NUL in a key, a partition beyond int4) refuses the whole
    // batch before anything is written, and retrying cannot help.
    let nul = ops("a", "+ok=x +bad\0key=x");
    for bad in [commit(1, 2, 3, nul), commit(u32::MAX, 0, 1, vec![])] {
        let err = s.commit(bad).await.expect_err("must be refused");
        let refused = matches!(err, Error::Config(_)) && !err.is_retryable();
        assert!(refused, "{err}");
    }
    assert_eq!(s.snap().await, before, "rule 1: a refused commit wrote");
    assert!(s.rows("a", "bad\0key").await.is_empty());
    s.ok(1, 2, 3, vec![del("a", "k1")]).await;
    assert!(s.rows("a", "k1").await.is_empty(), "rule 4");
    assert_eq!(s.offs().await, BTreeMap::from([(1, 3)]));
}

/// Rule 2: only `from_offset == stored offset` commits; replays and rival writers are fenced.
pub async fn fencing<H: Harness>(h: &H) {
    let s = fresh(h).await;
    s.ok(3, 0, 5, ops("f", "+a=1")).await;
    let replay = commit(3, 0, 5, ops("f", "+a=1"));
    assert_eq!(s.fenced(replay).await, (3, 0, 5), "replay");
    assert_eq!(s.fenced(commit(3, 4, 9, vec![])).await, (3, 4, 5), "behind");
    assert_eq!(s.fenced(commit(3, 6, 9, vec![])).await, (3, 6, 5), "ahead");
    assert_eq!(s.fenced(commit(4, 7, 9, vec![])).await, (4, 7, 0), "new");
    s.ok(3, 5, 9, vec![put("f", "a", "2")]).await;
    assert_eq!(s.offs().await, BTreeMap::from([(3, 9)]));
    assert_eq!(s.rows("f", "a").await, [(3, b"2".to_vec())]);
    // Two writers racing with the same batch: exactly one wins, on first and later commits.
    for p in 10..16 {
        for from in 0..3 {
            let c = commit(p, from, from + 1, vec![put("f", "race", "x")]);
            let (a, b) = tokio::join!(s.commit(c.clone()), s.commit(c));
            assert!(a.is_ok() != b.is_ok(), "rule 2: one winner: {a:?} {b:?}");
            let lost = if a.is_ok() { b } else { a };
            let fenced = matches!(lost, Err(Error::Fenced { stored, .. }) if stored == from + 1);
            assert!(fenced, "rule 2: the loser is fenced: {lost:?}");
        }
    }
}

/// Rule 3: a commit touches only its own partition's rows; `get` orders owners numerically.
pub async fn ownership<H: Harness>(h: &H) {
    let s = fresh(h).await;
    for (p, v) in [(2, "two"), (10, "ten"), (1, "one")] {
        s.ok(p, 0, 1, vec![put("o", "k", v)]).await;
    }
    let v = |o: u32, v: &str| (o, v.as_bytes().to_vec());
    let all = [v(1, "one"), v(2, "two"), v(10, "ten")];
    assert_eq!(s.rows("o", "k").await, all, "rule 5: by owner");
    let two = Some(b"two".to_vec());
    let got = s.owned("o", 2, &["k", "-", "k"]).await;
    assert_eq!(got, [two.clone(), None, two]);
    assert_eq!(s.owned("o", 3, &["k"]).await, [None]);
    assert!(s.owned("o", 2, &[]).await.is_empty());
    s.ok(1, 1, 2, vec![del("o", "k")]).await;
    let left = [v(2, "two"), v(10, "ten")];
    assert_eq!(s.rows("o", "k").await, left, "rule 3: delete by owner 1");
    s.ok(2, 1, 2, vec![put("o", "k", "TWO")]).await;
    let left = [v(2, "TWO"), v(10, "ten")];
    assert_eq!(s.rows("o", "k").await, left, "rule 3: put by owner 2");
    s.ok(1, 2, 3, vec![del("o", "k")]).await; // a row it no longer has
    assert_eq!(s.rows("o", "k").await, left, "rule 3: delete by owner 1");
    assert_eq!(s.offs().await, BTreeMap::from([(1, 3), (2, 2), (10, 1)]));
}

/// Rule 4: every read sees a commit as soon as it returned.
pub async fn read_after_commit<H: Harness>(h: &H) {
    let s = fresh(h).await;
    for i in 0..40u64 {
        let (v, k) = (i.to_string(), format!("k/{i:02}"));
        let w = vec![put("r", "k", &v), put("r", &k, &v), del("r", "x")];
        s.ok(7, i, i + 1, w).await;
        let v = v.into_bytes();
        assert_eq!(s.rows("r", "k").await, [(7, v.clone())], "rule 4: get");
        assert_eq!(s.owned("r", 7, &[&k]).await, [Some(v)], "rule 4: get_owned");
        assert_eq!(s.offs().await[&7], i + 1, "rule 4: offsets");
        assert_eq!(s.keys("r", "k/").await.len() as u64, i + 1, "rule 4: scan");
        assert_eq!(dump_all(&s, 100).await.len() as u64, i + 2, "rule 4: dump");
    }
}

/// Rule 5: bytewise order everywhere, and prefixes that are exactly prefixes.
pub async fn order_and_prefixes<H: Harness>(h: &H) {
    let s = fresh(h).await;
    let mut commits = Vec::new();
    for (i, ns) in (0..).zip(["o", "O", "o2", "\u{e9}", ""]) {
        for (p, step) in [(1, 1), (2, 3), (10, 4)] {
            let keys = KEYS.iter().step_by(step);
            let w = keys.map(|k| put(ns, k, format!("{ns}:{k}")));
            commits.push(commit(p, i, i + 1, w.collect()));
        }
    }
    apply(&s, &commits).await;
    let all = model(&commits);
    assert_eq!(dump_all(&s, 10_000).await, all, "rule 5: dump order");
    let o = only(&all, |r| r.ns == "o");
    assert_eq!(scan_all(&s, "o", "", 10_000).await, o, "rule 5: scan order");
    // Every prefix of every key, and some that are no key's.
    let mut prefixes: Vec<&str> = EXTRA_PREFIXES.split(' ').collect();
    for k in KEYS {
        prefixes.extend(k.char_indices().map(|(i, c)| &k[..i + c.len_utf8()]));
    }
    for p in prefixes {
        let want = only(&o, |r| r.key.starts_with(p));
        let got = s.scan("o", p, None, 10_000).await.expect("scan");
        assert_eq!(got, want, "rule 5: prefix {p:?}");
    }
    assert!(!s.keys("o", "a").await.iter().any(|k| k.starts_with('b')));
    assert_eq!(s.keys("o", "ab").await, ["ab", "abc", "ab\u{10FFFF}x"]);
    assert_eq!(s.keys("o", "a%").await, ["a%", "a%b"], "not LIKE");
    assert_eq!(s.keys("o", "a_").await, ["a_", "a_b"], "not LIKE");
    assert_eq!(s.keys("o", "\u{D7FF}").await, ["\u{D7FF}a"], "surrogates");
}

/// Rule 5: pages of `scan` and `dump` join up to the full listing.
pub async fn pagination<H: Harness>(h: &H) {
    let s = fresh(h).await;
    let mut commits = Vec::new();
    for (i, ns) in (0..).zip(["p1", "p2", "p3"]) {
        for p in [1, 2] {
            let w = ["a", "aa", "ab", "b", "ba", "é", "𝄞"].map(|k| put(ns, k, format!("{p}{k}")));
            commits.push(commit(p, i, i + 1, w.to_vec()));
        }
    }
    apply(&s, &commits).await;
    let all = model(&commits);
    let p2 = only(&all, |r| r.ns == "p2");
    let p2a = only(&p2, |r| r.key.starts_with('a'));
    for n in [1, 2, 3, 5, 100] {
        assert_eq!(dump_all(&s, n).await, all, "rule 5: dump pages of {n}");
        assert_eq!(scan_all(&s, "p2", "", n).await, p2, "rule 5: {n}");
        assert_eq!(scan_all(&s, "p2", "a", n).await, p2a, "rule 5: {n}");
    }
    // Positions need not exist, and may lie before the prefix.
    let got = s.scan("p1", "", Some(("ab", 5)), 2).await.expect("scan");
    assert_eq!(at(&got), [("p1", "b", 1), ("p1", "b", 2)]);
    let got = s.scan("p1", "b", Some(("a", 9)), 1).await.expect("scan");
    assert_eq!(at(&got), [("p1", "b", 1)]);
    let end = ("p1", "\u{10FFFF}", 9);
    let got = s.dump(Some(end), 1).await.expect("dump");
    assert_eq!(at(&got), [("p2", "a", 1)]);
    let got = s.dump(Some(("p3", "𝄞", 2)), 9).await.expect("dump");
    assert!(got.is_empty(), "{got:?}");
    assert!(s.scan("p1", "", None, 0).await.expect("scan").is_empty());
    assert!(s.dump(None, 0).await.expect("dump").is_empty());
}

/// Rule 6: values come back byte for byte.
pub async fn exact_bytes<H: Harness>(h: &H) {
    let s = fresh(h).await;
    let noise = |i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("all", (0..=255).collect()),
        ("empty", vec![]),
        ("bad-utf8", b"\xff\xfe\0\xc3".to_vec()),
        ("nul", vec![0]),
        ("big", (0..1 << 20).map(noise).collect()),
    ];
    let w = values.iter().map(|(k, v)| put("b", k, v)).collect();
    s.ok(4, 0, 1, w).await;
    let keys: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
    let owned = s.owned("b", 4, &keys).await;
    for ((k, v), got) in values.iter().zip(owned) {
        assert_eq!(s.rows("b", k).await, [(4, v.clone())], "rule 6: get {k}");
        assert_eq!(got.as_ref(), Some(v), "rule 6: get_owned {k}");
    }
    for r in dump_all(&s, 2).await {
        let v = &values.iter().find(|(k, _)| *k == r.key).expect("written").1;
        assert_eq!(&r.value[..], v, "rule 6: dump {}", r.key);
    }
    s.ok(4, 1, 2, vec![put("b", "all", b"")]).await;
    assert_eq!(s.rows("b", "all").await, [(4, vec![])], "rule 6: emptied");
}

/// Within one commit, the last write to a row wins.
pub async fn last_write_wins<H: Harness>(h: &H) {
    let s = fresh(h).await;
    s.ok(1, 0, 1, ops("l", "+k4=old +k5=old")).await;
    // put-delete, delete-put, put-put, then on existing rows put-delete and delete-put, then
    // four writes to one row.
    let script = "+k1=a -k1 -k2 +k2=b +k3=x +k3=y +k4=new -k4 -k5 +k5=again +k6=1 -k6 +k6=2 -k6";
    let mut w = ops("l", script);
    w.push(put("m", "k1", "other"));
    s.ok(1, 1, 2, w).await;
    let rows = dump_all(&s, 100).await;
    let show = |r: &Row| format!("{}/{}={}", r.ns, r.key, String::from_utf8_lossy(&r.value));
    let got: Vec<String> = rows.iter().map(show).collect();
    let want = "l/k2=b l/k3=y l/k5=again m/k1=other";
    assert_eq!(got.join(" "), want, "last write wins within a commit");
}

/// [`digest`] depends on content and offsets only, not on how the batches were split.
pub async fn digest_equality<H: Harness>(h: &H) {
    let commits = sample_commits();
    let a = fresh(h).await;
    apply(&a, &commits).await;
    assert_eq!(dump_all(&a, 7).await, model(&commits), "sample content");
    let da = a.hash().await;
    assert_eq!((da.rows, da.partitions), (model(&commits).len() as u64, 4));
    let of = |p: u32| commits.iter().filter(move |c| c.partition == p);
    let writes = |p: u32| -> Vec<Write> { of(p).flat_map(|c| c.writes.clone()).collect() };
    // The same content as one commit per partition, partitions in reverse order.
    let b = fresh(h).await;
    for p in [7, 2, 1, 0] {
        b.ok(p, 0, 400, writes(p)).await;
    }
    assert_eq!(b.hash().await, da, "one commit per partition");
    // The same content one write per commit.
    let c = fresh(h).await;
    for p in [0, 1, 2, 7] {
        let w = writes(p);
        let last = w.len() as u64 - 1;
        for (i, w) in (0..).zip(w) {
            let to = if i == last { 400 } else { i + 1 };
            c.ok(p, i, to, vec![w]).await;
        }
    }
    assert_eq!(c.hash().await, da, "one write per commit");
    // An offset alone changes the digest, and so does a value alone.
    c.ok(1, 400, 401, vec![]).await;
    b.ok(1, 400, 401, vec![put("cust", "shared", "x")]).await;
    let (db, dc) = (b.hash().await, c.hash().await);
    assert_ne!(dc, da, "an offset must change the digest");
    assert_ne!(db, dc, "a value must change the digest");
}

/// Large batches commit in one piece (the time they take is printed).
pub async fn large_commit<H: Harness>(h: &H) {
    let s = fresh(h).await;
    let key = |i: usize| format!("k{i:06}");
    let puts = (0..20_000).map(|i| put("big", &key(i), [i as u8; 100]));
    let t = Instant::now();
    s.ok(1, 0, 1, puts.collect()).await;
    eprintln!("commit of 20000 puts: {:?}", t.elapsed());
    let w = |i: usize| match i.is_multiple_of(2) {
        true => del("big", &key(i)),
        false => put("big", &key(i), "new"),
    };
    let t = Instant::now();
    s.ok(1, 1, 2, (0..10_000).map(w).collect()).await;
    eprintln!("commit of 10000 writes (half deletes): {:?}", t.elapsed());
    assert_eq!(scan_all(&s, "big", "k", 4096).await.len(), 15_000);
    let keys: Vec<String> = (9_990..10_010).map(key).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for (i, v) in (9_990..10_010usize).zip(s.owned("big", 1, &keys).await) {
        let want = match i {
            10_000.. => Some(vec![i as u8; 100]),
            _ if i.is_multiple_of(2) => None,
            _ => Some(b"new".to_vec()),
        };
        assert_eq!(v, want, "row {i}");
    }
}

/// Partitions commit concurrently without losing anything.
pub async fn concurrent_partitions<H: Harness>(h: &H) {
    let s = Arc::new(fresh(h).await);
    let writer = |p: u32| {
        let s = s.clone();
        async move {
            for i in 0..25u64 {
                let key = |j| format!("{p}/{i}/{j}");
                let mut w: Vec<Write> = (0..40).map(|j| put("c", &key(j), "v")).collect();
                w.push(put("c", "shared", i.to_string()));
                let c = commit(p, i * 40, (i + 1) * 40, w);
                s.commit(c).await.expect("concurrent commit");
            }
        }
    };
    let tasks: Vec<_> = (0..8).map(|p| tokio::spawn(writer(p))).collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    let offsets: BTreeMap<u32, u64> = (0..8).map(|p| (p, 1000)).collect();
    assert_eq!(s.offs().await, offsets);
    let shared = s.rows("c", "shared").await;
    let owners: Vec<u32> = shared.iter().map(|r| r.0).collect();
    assert_eq!(owners, (0..8).collect::<Vec<_>>(), "rule 5: by owner");
    assert_eq!(scan_all(&*s, "c", "", 1000).await.len(), 8 * 25 * 40 + 8);
}
