//! CEL expressions (`cel-interpreter`) over `event`, `customer`, `agg` and, in a wait's match,
//! `trigger` (the event that started the run). Values come in as JSON and results go out as JSON.
//!
//! Evaluation is pure: the same inputs give the same result, so replay and backtest agree with
//! the live engine.
//!
//! # Limits
//!
//! `cel-interpreter` 0.10 parses and evaluates recursively without a depth limit, so every
//! expression is first measured by [`limits::check`] (a non-recursive lexer) and refused when it
//! is over one of these (see "Limits" in docs/triggers.md):
//!
//! | limit | value | why |
//! |---|---|---|
//! | length | [`limits::MAX_BYTES`] = 4096 bytes | bounds parsing and the size of the tree |
//! | bracket nesting `(` `[` `{` | [`limits::MAX_NESTING`] = 32 | a level costs the parser up to ~10 KB of stack |
//! | operators, `.` and opening brackets | [`limits::MAX_OPERATORS`] = 256 | a chain of them is that deep |
//! | evaluation cost | [`limits::MAX_COST`] = 100,000 | each operator counts once, ×2 inside each function call around it (its argument is evaluated twice), ×1,000 inside a comprehension |
//! | comprehensions (all, exists, exists_one, map, filter) | not nested | a nested one runs items × items times |
//! | items in an input list or map, with a comprehension | [`limits::MAX_ITEMS`] = 1,000 | what the static cost assumes; `map` and `filter` cost items² |
//!
//! The first five are static: checked when the file is checked, so a file over them is never
//! installed. The last is checked before each evaluation against the variables the expression
//! reads, and is an evaluation error like any other. All depend on the expression and its inputs
//! only, so replay gives the same answers as the live engine. At these limits an expression
//! compiles and evaluates in under 384 KiB of stack in a debug build (the test at the limits runs
//! on tokio's default 2 MiB worker stack; it passes on 384 KiB and overflows on 320 KiB), and
//! within ~50 ms (debug build). A panic inside `cel-interpreter` (it has `todo!()`s, e.g. `exists` over a
//! string, and the ANTLR runtime panics on `()`) is caught and becomes an error of that
//! expression. Runs of unary `!` or `-` are refused: cel-interpreter 0.10 reads `!!x` as `!x`.

pub mod limits;

use std::panic::{AssertUnwindSafe, catch_unwind};

use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;

/// A compiled expression and its source (for messages).
pub struct Expr {
    pub source: String,
    program: Program,
    /// Which variables it reads, so callers build only those.
    pub uses_customer: bool,
    pub uses_agg: bool,
    /// With a comprehension, the variables it reads (checked against [`limits::MAX_ITEMS`]).
    comprehension_reads: Option<Vec<String>>,
    /// For a plain path into the event (`event.customer`, `event.data.card_fingerprint`), its
    /// fields after `event`: [`EventScope::key`] reads it from the JSON without CEL.
    event_path: Option<Vec<String>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

thread_local! {
    /// The built-in functions, registered once per thread rather than per evaluation.
    static ROOT: Context<'static> = Context::default();
}

/// The variables an expression sees; each is built only if some expression reads it.
#[derive(Default)]
pub struct Scope {
    pub vars: Vec<(&'static str, Cel)>,
}

impl Scope {
    pub fn with(mut self, name: &'static str, value: &Value) -> Scope {
        self.vars.push((name, to_cel(value)));
        self
    }

    pub fn set(&mut self, name: &'static str, value: Cel) {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value));
    }
}

/// `event.a.b…` with identifiers only: the fields after `event`.
fn event_path(source: &str) -> Option<Vec<String>> {
    let mut parts = source.trim().split('.');
    if parts.next()? != "event" {
        return None;
    }
    let fields: Vec<String> = parts.map(str::to_owned).collect();
    let ident = |f: &String| {
        f.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (!fields.is_empty() && fields.iter().all(ident)).then_some(fields)
}

/// The scope `event` alone makes, built on first use: most aggregate keys are plain paths that
/// need no CEL value of the whole event (building it was a tenth of the engine's CPU with one
/// windowed count per customer).
pub struct EventScope<'a> {
    event: &'a Value,
    scope: Option<Scope>,
}

impl<'a> EventScope<'a> {
    pub fn new(event: &'a Value) -> EventScope<'a> {
        EventScope { event, scope: None }
    }

    pub fn scope(&mut self) -> &Scope {
        let event = self.event;
        self.scope
            .get_or_insert_with(|| Scope::default().with("event", event))
    }

    /// [`Expr::key`] over `event`, without CEL for a plain path.
    pub fn key(&mut self, e: &Expr) -> Result<Option<String>, String> {
        match e.path_key(self.event) {
            Some(k) => k,
            None => e.key(self.scope()),
        }
    }
}

/// JSON into a CEL value. Whole numbers become `int` (signed), so `event.data.total.amount * 2`
/// and `agg.x > 5` work as written (a JSON number is not a CEL `uint`).
pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => n
                .as_u64()
                .map_or_else(|| Cel::Float(n.as_f64().unwrap_or(0.0)), Cel::UInt),
        },
        Value::String(s) => Cel::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => Cel::List(std::sync::Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let map: std::collections::HashMap<String, Cel> =
                o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::from(map)
        }
    }
}

impl Expr {
    /// Checks `source` against the [limits] and compiles it; the error is a message for
    /// the author (over a limit, or does not parse).
    pub fn compile(source: &str) -> Result<Expr, String> {
        let shape = limits::check(source).map_err(|r| match r {
            limits::Refused::Syntax(m) => format!("CEL does not parse: {m}"),
            limits::Refused::Over(m) => {
                format!("CEL is over its limits: {m} (see \"Limits\" in docs/triggers.md)")
            }
        })?;
        // The ANTLR runtime panics on some malformed input (`()`, `1 +`): that is a parse error.
        let program = catch_unwind(|| Program::compile(source))
            .map_err(|p| format!("CEL does not parse ({})", panic_message(&*p)))?
            .map_err(|e| format!("CEL does not parse: {}", e.to_string().replace('\n', "; ")))?;
        let refs = program.references();
        let comprehension_reads = shape
            .comprehension
            .then(|| refs.variables().into_iter().map(str::to_owned).collect());
        Ok(Expr {
            source: source.to_owned(),
            uses_customer: refs.has_variable("customer"),
            uses_agg: refs.has_variable("agg"),
            comprehension_reads,
            event_path: event_path(source),
            program,
        })
    }

    /// [`key`](Self::key) of a plain event path, read from the event's JSON: `None` when the
    /// expression is not one, or its value is a list or a map (those go through CEL). A missing
    /// field, or a field of something that is not a map, is an error, as in CEL.
    fn path_key(&self, event: &Value) -> Option<Result<Option<String>, String>> {
        let path = self.event_path.as_ref()?;
        let mut v = event;
        for field in path {
            match v.as_object().map(|o| o.get(field)) {
                Some(Some(next)) => v = next,
                _ => return Some(Err(format!("'{}': no such key: {field}", self.source))),
            }
        }
        Some(Ok(match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
            Value::Array(_) | Value::Object(_) => return None,
        }))
    }

    fn run(&self, scope: &Scope) -> Result<Cel, String> {
        if let Some(reads) = &self.comprehension_reads {
            let inputs = scope
                .vars
                .iter()
                .filter(|(n, _)| reads.iter().any(|r| r == n));
            if let Some(n) = too_many_items(inputs.map(|(_, v)| v)) {
                return Err(format!(
                    "'{}' has a comprehension, and an input list or map has {n} items; the limit is {}",
                    self.source,
                    limits::MAX_ITEMS
                ));
            }
        }
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            for (name, v) in &scope.vars {
                ctx.add_variable_from_value(*name, v.clone());
            }
            // cel-interpreter has `todo!()`s (a comprehension over a string, a message literal)
            // and, in debug builds, overflow panics: an error of this expression, not a crash.
            catch_unwind(AssertUnwindSafe(|| self.program.execute(&ctx)))
                .map_err(|p| {
                    format!(
                        "'{}' failed inside the CEL interpreter ({})",
                        self.source,
                        panic_message(&*p)
                    )
                })?
                .map_err(|e| e.to_string())
        })
    }

    /// Evaluates a condition: true only for `true` (an error or a non-boolean is an error).
    pub fn test(&self, scope: &Scope) -> Result<bool, String> {
        match self.run(scope)? {
            Cel::Bool(b) => Ok(b),
            other => Err(format!(
                "'{}' gave {other:?}, not true or false",
                self.source
            )),
        }
    }

    /// Evaluates to JSON.
    pub fn value(&self, scope: &Scope) -> Result<Value, String> {
        let v = self.run(scope)?;
        v.json().map_err(|e| format!("'{}': {e:?}", self.source))
    }

    /// Evaluates to a key: strings as they are, other scalars in their JSON form; null is none.
    pub fn key(&self, scope: &Scope) -> Result<Option<String>, String> {
        Ok(match self.value(scope)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        })
    }
}

/// The size of the first list or map (anywhere in `values`) over [`limits::MAX_ITEMS`], if any.
fn too_many_items<'a>(values: impl Iterator<Item = &'a Cel>) -> Option<usize> {
    // A stack, not recursion: the values can be as deep as the JSON they came from.
    let mut todo: Vec<&Cel> = values.collect();
    while let Some(v) = todo.pop() {
        let n = match v {
            Cel::List(l) => {
                todo.extend(l.iter());
                l.len()
            }
            Cel::Map(m) => {
                todo.extend(m.map.values());
                m.map.len()
            }
            _ => 0,
        };
        if n > limits::MAX_ITEMS {
            return Some(n);
        }
    }
    None
}

/// What a caught panic said.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A plain path read from the JSON gives what CEL gives: the same key, and an error where
    /// CEL errs; lists and maps still go through CEL.
    #[test]
    fn a_plain_event_path_keys_as_cel_does() {
        let events = [
            json!({"customer": "c-1", "data": {"card": "fp", "n": 5, "f": 2.5, "w": 3.0,
                    "b": true, "z": null, "big": 18446744073709551615u64, "l": [1], "m": {"a": 1},
                    "s": "x"}}),
            json!({"customer": null, "data": "not a map"}),
            json!({}),
        ];
        let exprs = [
            "event.customer",
            "event.data.card",
            "event.data.n",
            "event.data.f",
            "event.data.w",
            "event.data.b",
            "event.data.z",
            "event.data.big",
            "event.data.l",
            "event.data.m",
            "event.data.missing",
            "event.data.s.deeper",
            "event.nope",
            " event.data.card ",
        ];
        for ev in &events {
            for src in exprs {
                let e = Expr::compile(src).unwrap();
                assert!(e.event_path.is_some(), "{src} is a plain path");
                let by_cel = e.key(&Scope::default().with("event", ev));
                let fast = EventScope::new(ev).key(&e);
                assert_eq!(
                    fast.is_ok(),
                    by_cel.is_ok(),
                    "{src} on {ev}: {fast:?} vs {by_cel:?}"
                );
                if let (Ok(a), Ok(b)) = (&fast, &by_cel) {
                    assert_eq!(a, b, "{src} on {ev}");
                }
            }
        }
        for src in [
            "event.data.n + 1",
            "event['customer']",
            "customer.id",
            "event",
            "agg.x",
        ] {
            assert!(Expr::compile(src).unwrap().event_path.is_none(), "{src}");
        }
    }
    #[test]
    fn conditions_see_event_customer_and_agg() {
        let scope = Scope::default()
            .with(
                "event",
                &json!({ "type": "cart.item_added", "data": { "cart_value": { "amount": 2500 } } }),
            )
            .with("customer", &json!({ "consent": { "email": true } }))
            .with("agg", &json!({ "failed": 6 }));
        let e = Expr::compile(
            "customer.consent.email && event.data.cart_value.amount >= 2000 && agg.failed > 5",
        )
        .unwrap();
        assert!(e.uses_customer && e.uses_agg);
        assert_eq!(e.test(&scope), Ok(true));
        let e = Expr::compile("event.data.cart_value.amount < 2000").unwrap();
        assert_eq!(e.test(&scope), Ok(false));
        assert!(
            Expr::compile("event.data.nope > 1")
                .unwrap()
                .test(&scope)
                .is_err()
        );
        assert!(Expr::compile("event.data.").is_err());
        let e = Expr::compile("event.data.cart_value.amount * 2").unwrap();
        assert_eq!(e.value(&scope), Ok(json!(5000)));
        assert_eq!(
            Expr::compile("'x-' + event.type").unwrap().key(&scope),
            Ok(Some("x-cart.item_added".into()))
        );
    }
}

/// Hostile and boundary expressions: nothing may overflow the stack or panic out.
#[cfg(test)]
mod bounded {
    use super::limits::*;
    use super::*;
    use serde_json::json;

    /// Runs `f` on a thread with tokio's default worker stack (2 MiB): an overflow aborts the
    /// test binary, which fails the test.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn wrap(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn twenty_thousand_deep_expressions_are_refused_with_the_limit_they_are_over() {
        const N: usize = 20_000;
        let cases = [
            (wrap("(", "1", ")", N), "nest 20000 deep"),
            (wrap("[", "1", "]", N), "nest 20000 deep"),
            (wrap("{1:", "1", "}", N), "nest 20000 deep"),
            (wrap("int(", "1", ")", N), "nest 20000 deep"),
            (
                wrap("a.f(", "1", ")", N),
                "evaluation cost is 18446744073709551615",
            ),
            (wrap("!(", "true", ")", N), "nest 20000 deep"),
            (format!("1{}", "+1".repeat(N)), "20000 operators"),
            (format!("1{}", " < 1".repeat(N)), "20000 operators"),
            (format!("a{}", ".b".repeat(N)), "20000 operators"),
            (format!("a{}", "[0]".repeat(N)), "20000 operators"),
            (format!("{}1", "true ? 1 : ".repeat(N)), "20000 operators"),
            (
                wrap("a.exists(x, ", "true", ")", N),
                "`exists(` at character 21 is inside another",
            ),
        ];
        on_small_stack(move || {
            // A run of unary operators is read wrongly by cel-parser 0.10 (`!!x` is `!x`), so it
            // is refused however long; it is flat in the parser, not deep.
            for src in [
                format!("{}true", "!".repeat(N)),
                format!("{}1", "- ".repeat(N)),
            ] {
                let m = Expr::compile(&src).unwrap_err();
                assert!(m.starts_with("CEL does not parse: the unary"), "{m}");
            }
            for (src, says) in cases {
                let m = Expr::compile(&src).expect_err(&src[..20]);
                assert!(m.starts_with("CEL is over its limits: it is "), "{m}");
                assert!(m.contains(says), "{}…: {m}", &src[..20]);
                assert!(m.contains("bytes long (at most 4096)"), "{m}");
            }
        });
    }

    /// Expressions exactly at the limits, of every shape that makes parsing or evaluation deep
    /// (the costliest bracket around the costliest chain; syntax errors deep inside, which take
    /// the parser's longer error path), compile and evaluate on a 2 MiB stack in a debug build;
    /// and the costliest ones evaluate in a bounded time (printed, not asserted).
    #[test]
    fn expressions_at_the_limits_compile_and_evaluate_on_a_two_mib_stack() {
        let chain = |op: &str, n: usize| format!("1{}", op.repeat(n));
        let (d, ops) = (MAX_NESTING, MAX_OPERATORS);
        // Calls nested as deep as the budget allows (2^15 runs of the innermost), in brackets.
        let calls = wrap("(", &wrap("int(", "1", ")", 15), ")", d - 15);
        // The budget spent on a chain inside 10 calls (each of the 96 `+` runs 1,024 times).
        let costly_calls = wrap("int(", &chain(" + 1", 96), ")", 10);
        // The budget spent inside a comprehension, nested as deep as allowed, over MAX_ITEMS.
        let comprehension = format!(
            "a.items.exists(x, {})",
            wrap("(", &format!("x{} == 0", " + 1".repeat(66)), ")", d - 1)
        );
        let calls_in_comprehension = format!(
            "a.items.exists(x, {} == 0)",
            wrap("int(", &format!("x{}", " + 1".repeat(22)), ")", 2)
        );
        let cases: Vec<(String, Option<Value>)> = vec![
            (
                wrap("(", &chain("+1", ops - d), ")", d),
                Some(json!(ops - d + 1)),
            ),
            (
                wrap(
                    "(",
                    &format!("1 < 2{}", " == true".repeat(ops - d - 1)),
                    ")",
                    d,
                ),
                Some(json!(true)),
            ),
            (wrap("[", &chain("*1", ops - d), "]", d), None),
            (wrap("{1:", &chain(" - 1", ops - d), "}", d), None),
            (wrap("!(", "true", ")", d), Some(json!(true))),
            (wrap("-(", "1", ")", d), Some(json!(1))),
            (calls, Some(json!(1))),
            (costly_calls, Some(json!(97))),
            (comprehension, Some(json!(false))),
            (calls_in_comprehension, Some(json!(false))),
            (format!("a{}", ".b".repeat(ops)), None),
            (format!("a{}", "[0]".repeat(ops)), None),
            (format!("{}1", "true ? 2 : ".repeat(ops)), Some(json!(2))),
            (
                format!("{}{}", "a.".repeat(ops - 12), wrap("f(", "1", ")", 12)),
                None,
            ),
            // Syntax errors at the bottom of the deepest nesting.
            (wrap("{", "1:", "}", d), None),
            (wrap("[", ",", "]", d), None),
            (wrap("(", "1 +", ")", d), None),
            (wrap("(", "()", ")", d - 1), None),
            (
                wrap("{1:", &format!("1{}", "<".repeat(ops - d)), "}", d),
                None,
            ),
        ];
        on_small_stack(move || {
            let scope = Scope::default().with("a", &json!({ "b": 1, "items": vec![1; MAX_ITEMS] }));
            for (src, want) in cases {
                let shape = limits::check(&src).unwrap_or_else(|m| panic!("{src}: {m:?}"));
                assert!(
                    shape.nesting == MAX_NESTING
                        || shape.operators == MAX_OPERATORS
                        || shape.cost * 10 >= MAX_COST * 9,
                    "not at a limit: {src} {shape:?}"
                );
                let started = std::time::Instant::now();
                let got = Expr::compile(&src).and_then(|e| e.value(&scope));
                eprintln!("{:>9?} {shape:?} {:.40}", started.elapsed(), src);
                if let Some(want) = want {
                    assert_eq!(got, Ok(want), "{src}");
                }
            }
        });
    }

    /// Random token soup with brackets mostly balanced (so most of it reaches the parser):
    /// strings with quotes, escapes and brackets in them, macros, calls, operators, the odd stray
    /// bracket. Whatever the scanner lets through, the parser and evaluator get through on a
    /// 2 MiB stack without a panic escaping.
    #[test]
    fn random_token_soup_never_crashes() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        const ATOMS: &[&str] = &[
            "1",
            "2.5",
            "-3",
            "x",
            "a",
            "a.b",
            "a.items",
            "true",
            "null",
            "'s(['",
            r#""q\"(""#,
            r"r'\('",
            r"b'[\x41'",
            "'''(\n)'''",
            "`a-b`",
            " ",
            "\n",
            "// ((\n",
            ",",
            ":",
            "?",
            "!",
            "-",
            "+",
            "*",
            "/",
            "%",
            "==",
            "!=",
            "<",
            ">=",
            "&&",
            "||",
            " in ",
            ".",
            "'",
            ")",
            "]",
            "é",
            "#",
        ];
        const OPEN: &[(&str, &str)] = &[
            ("(", ")"),
            ("[", "]"),
            ("{", "}"),
            ("int(", ")"),
            ("size(", ")"),
            ("has(", ")"),
            ("a.exists(x, ", ")"),
            ("a.items.map(x, ", ")"),
            ("x.startsWith(", ")"),
            ("a[", "]"),
            ("{1: ", "}"),
            ("T{a: ", "}"),
        ];
        on_small_stack(|| {
            let atom = proptest::sample::select(ATOMS).prop_map(str::to_owned);
            let soup = atom.prop_recursive(40, 400, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 1..6).prop_map(|v| v.concat()),
                    (proptest::sample::select(OPEN), inner)
                        .prop_map(|((open, close), i)| format!("{open}{i}{close}")),
                ]
            });
            let scope = Scope::default().with("a", &json!({ "b": "s", "items": [1, "x", [2]] }));
            TestRunner::new(Config {
                cases: 1000,
                failure_persistence: None,
                ..Config::default()
            })
            .run(&soup, |src| {
                if let Ok(e) = Expr::compile(&src) {
                    let _ = e.value(&scope);
                }
                Ok(())
            })
            .unwrap();
        });
    }

    #[test]
    fn panics_inside_cel_interpreter_are_errors_of_the_expression() {
        // The ANTLR runtime panics on these; cel-interpreter has `todo!()` for the others.
        for src in ["()", "1 +", "a.b(", "(1]"] {
            let m = Expr::compile(src).expect_err(src);
            assert!(m.starts_with("CEL does not parse"), "{src}: {m}");
        }
        let scope = Scope::default().with("event", &json!({ "data": { "lines": "not a list" } }));
        for src in ["event.data.lines.exists(l, l.sku == 'x')", "Msg{a: 1} == 1"] {
            let e = Expr::compile(src).expect(src);
            let m = e.test(&scope).expect_err(src);
            assert!(
                m.contains("failed inside the CEL interpreter"),
                "{src}: {m}"
            );
        }
    }

    #[test]
    fn a_comprehension_runs_only_over_inputs_within_the_item_limit() {
        let lines = |n: usize| {
            Scope::default().with(
                "event",
                &json!({ "data": { "lines": vec![json!({ "sku": "x" }); n], "other": 1 } }),
            )
        };
        let map = Expr::compile("size(event.data.lines.map(l, l.sku)) > 0").unwrap();
        assert_eq!(map.test(&lines(MAX_ITEMS)), Ok(true));
        let m = map.test(&lines(MAX_ITEMS + 1)).unwrap_err();
        assert!(
            m.contains(
                "has a comprehension, and an input list or map has 1001 items; the limit is 1000"
            ),
            "{m}"
        );
        // Without a comprehension a long list is linear work and fine.
        let size = Expr::compile("size(event.data.lines) > 0").unwrap();
        assert_eq!(size.test(&lines(MAX_ITEMS + 1)), Ok(true));
        // Only the variables an expression reads are looked at.
        let other = Expr::compile("[1, 2].exists(x, x == 2) && agg.n == 1").unwrap();
        let scope = lines(MAX_ITEMS + 1).with("agg", &json!({ "n": 1 }));
        assert_eq!(other.test(&scope), Ok(true));
    }
}
