//! The limits every CEL expression is checked against before `cel-interpreter` sees it.
//!
//! `cel-interpreter` 0.10 parses with a recursive ANTLR parser and evaluates recursively, with no
//! depth limit of its own: `((((…1…))))` 20,000 deep overflows the stack and aborts the process.
//! It also evaluates the first argument of every function call twice (so calls nested `n` deep
//! cost `2^n`), and `map`/`filter` copy their result at every item (items²). This module is a
//! small lexer over the source text (string literals with their escapes, raw and triple-quoted
//! strings, bytes, comments, backquoted names: brackets inside them do not count) that measures
//! what makes parsing and evaluation deep or long, without recursion, and refuses what is over a
//! limit. It is strict: anything the CEL lexer would not read (an unterminated string, a bad
//! escape, a stray character, unbalanced brackets) is refused here too, so the brackets counted
//! are exactly those the parser sees.
//!
//! Stack, measured in a debug build (dependencies at opt-level 2, as the workspace builds them)
//! on a 2 MiB thread, compile + evaluate: a bracket level costs up to ~10.6 KB (a `{` with a
//! syntax error inside; `(` ~7.6 KB, `[` ~9 KB), an operator in a chain up to ~0.93 KB (`<`), a
//! `.` ~0.7 KB; the first overflow came at 198 nested maps, 234 lists, 274 parentheses, 2,244
//! chained `<` and 3,036 chained `.`. The test of expressions at the limits below needs under
//! 384 KiB (it passes on a 384 KiB stack and overflows on 320 KiB): over 5× margin on 2 MiB.
//! (With dependencies at opt-level 0 the frames are ~15× larger and 14 parentheses overflow
//! 2 MiB; the workspace's dev profile builds dependencies at opt-level 2, and so do the tests.)

/// The longest expression, in bytes.
pub const MAX_BYTES: usize = 4096;
/// How deep brackets `(` `[` `{` (calls, indexes, lists, maps, grouping) may nest.
pub const MAX_NESTING: usize = 32;
/// How many operators one expression may have: each of `+ - * / % == != < <= > >= in ! && || ?`,
/// each `.` and each opening bracket counts one. A chain of operators is at most this deep.
pub const MAX_OPERATORS: usize = 256;
/// The evaluation budget: the sum over operators of how often each may run. An operator runs
/// once; twice as often inside each function call around it (the argument is evaluated again),
/// and [`MAX_ITEMS`] times inside a comprehension.
pub const MAX_COST: u64 = 100_000;
/// The most items a list or map in an expression's inputs may have when the expression has a
/// comprehension (the one thing the static budget cannot see: how long the input lists are).
pub const MAX_ITEMS: usize = 1_000;

/// The comprehension macros: expanded by the parser into loops, never called as functions.
const COMPREHENSIONS: [&str; 6] = ["all", "exists", "exists_one", "existsOne", "map", "filter"];

/// What the scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Brackets nest this deep.
    pub nesting: usize,
    /// Operators, `.` and opening brackets.
    pub operators: usize,
    /// The evaluation cost (see [`MAX_COST`]).
    pub cost: u64,
    /// It has a comprehension (so evaluation checks [`MAX_ITEMS`] first).
    pub comprehension: bool,
}

/// Why an expression is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not CEL the parser could read (an unterminated string, unbalanced brackets, ...).
    Syntax(String),
    /// Over one or more limits; each is named, with where it was first over.
    Over(String),
}

/// An open bracket on the scanner's stack.
struct Open {
    byte: u8,
    at: usize,
    comprehension: bool,
    /// The weight outside it, restored when it closes.
    outer: u64,
}

/// The token before the current one, as far as calls and unary operators are concerned.
#[derive(Clone, Copy, PartialEq)]
enum Prev<'a> {
    /// An operator, an opening bracket, `,` or `:` (or the start).
    Other,
    /// A literal or a closing bracket: what follows is not a call, and `-` is binary.
    Operand,
    Dot,
    Name {
        name: &'a str,
        after_dot: bool,
    },
    Not,
    Negate,
}

/// Measures `src` against the limits.
pub fn check(src: &str) -> Result<Shape, Refused> {
    let b = src.as_bytes();
    let pos = |at: usize| src[..at].chars().count() + 1;
    let syntax = |m: String| Refused::Syntax(m);
    let mut shape = Shape::default();
    let mut stack: Vec<Open> = Vec::new();
    // How often an operator here may run: 2^(calls open) × MAX_ITEMS^(comprehensions open).
    let mut weight: u64 = 1;
    let mut first_deep = None;
    let mut comprehensions = 0;
    let mut nested_comprehension = None;
    let mut prev = Prev::Other;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let ops_before = shape.operators;
        let weight_before = weight;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if next == Some(b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
                continue;
            }
            b'"' | b'\'' => {
                i = string_end(b, i, false)
                    .map_err(|(at, m)| syntax(format!("{m} (at character {})", pos(at))))?;
                prev = Prev::Operand;
            }
            b'`' => {
                let len = b[i + 1..]
                    .iter()
                    .take_while(|x| x.is_ascii_alphanumeric() || b"_.-/ ".contains(x))
                    .count();
                if len == 0 || b.get(i + 1 + len) != Some(&b'`') {
                    return Err(syntax(format!(
                        "the quoted name at character {} is not closed by ` (it may hold letters, digits, _ . - / and spaces)",
                        pos(i)
                    )));
                }
                i += len + 2;
                prev = Prev::Operand;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = i + b[i..]
                    .iter()
                    .take_while(|x| x.is_ascii_alphanumeric() || **x == b'_')
                    .count();
                let name = &src[i..end];
                let quote = matches!(b.get(end), Some(b'"' | b'\''));
                let prefix = matches!(name, "r" | "R" | "b" | "B" | "br" | "bR" | "Br" | "BR");
                if quote && prefix {
                    let raw = name.contains(['r', 'R']);
                    i = string_end(b, end, raw)
                        .map_err(|(at, m)| syntax(format!("{m} (at character {})", pos(at))))?;
                    prev = Prev::Operand;
                    continue;
                }
                if name == "in" {
                    shape.operators += 1;
                    prev = Prev::Other;
                } else {
                    prev = Prev::Name {
                        name,
                        after_dot: prev == Prev::Dot,
                    };
                }
                i = end;
            }
            c if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|d| d.is_ascii_digit())) => {
                i = number_end(b, i);
                prev = Prev::Operand;
            }
            b'.' => {
                shape.operators += 1;
                prev = Prev::Dot;
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                shape.operators += 1;
                let (call, comprehension, name) = match prev {
                    Prev::Name { name, after_dot } if c == b'(' => {
                        let comprehension = after_dot && COMPREHENSIONS.contains(&name);
                        // has() and the comprehensions are macros (no function of those names
                        // exists), so their argument is not evaluated twice.
                        (!comprehension && name != "has", comprehension, name)
                    }
                    _ => (false, false, ""),
                };
                if comprehension {
                    shape.comprehension = true;
                    if nested_comprehension.is_none() && comprehensions > 0 {
                        nested_comprehension = Some((i, name));
                    }
                    comprehensions += 1;
                }
                stack.push(Open {
                    byte: c,
                    at: i,
                    comprehension,
                    outer: weight,
                });
                if call {
                    weight = weight.saturating_mul(2);
                } else if comprehension {
                    weight = weight.saturating_mul(MAX_ITEMS as u64);
                }
                shape.nesting = shape.nesting.max(stack.len());
                if stack.len() > MAX_NESTING && first_deep.is_none() {
                    first_deep = Some(i);
                }
                prev = Prev::Other;
                i += 1;
            }
            b')' | b']' | b'}' => {
                let want = match c {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                match stack.pop() {
                    Some(open) if open.byte == want => {
                        weight = open.outer;
                        comprehensions -= usize::from(open.comprehension);
                    }
                    Some(open) => {
                        return Err(syntax(format!(
                            "`{}` at character {} closes the `{}` at character {}",
                            c as char,
                            pos(i),
                            open.byte as char,
                            pos(open.at)
                        )));
                    }
                    None => {
                        return Err(syntax(format!(
                            "`{}` at character {} closes no bracket",
                            c as char,
                            pos(i)
                        )));
                    }
                }
                prev = Prev::Operand;
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' if next == Some(b'=') => {
                shape.operators += 1;
                prev = Prev::Other;
                i += 2;
            }
            b'&' | b'|' if next == Some(c) => {
                shape.operators += 1;
                prev = Prev::Other;
                i += 2;
            }
            // cel-parser 0.10 reads a run of unary `!` (or `-`) as one: `!!x` is `!x`.
            b'!' | b'-' => {
                let unary = c == b'!' || !matches!(prev, Prev::Operand | Prev::Name { .. });
                let run = match c {
                    b'!' => prev == Prev::Not,
                    _ => unary && prev == Prev::Negate,
                };
                if run {
                    let (op, x) = if c == b'!' {
                        ("!", "!(!x)")
                    } else {
                        ("-", "-(-x)")
                    };
                    return Err(syntax(format!(
                        "the unary `{op}` at character {} follows another: cel-interpreter 0.10 reads a run of them as one `{op}`; write {x}, or leave both out",
                        pos(i)
                    )));
                }
                shape.operators += 1;
                prev = match (c, unary) {
                    (b'!', _) => Prev::Not,
                    (_, true) => Prev::Negate,
                    _ => Prev::Other,
                };
                i += 1;
            }
            b'<' | b'>' | b'+' | b'*' | b'/' | b'%' | b'?' => {
                shape.operators += 1;
                prev = Prev::Other;
                i += 1;
            }
            b',' | b':' => {
                prev = Prev::Other;
                i += 1;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let hint = match c {
                    b'=' => " (compare with ==)",
                    b'&' => " (and is &&)",
                    b'|' => " (or is ||)",
                    _ => "",
                };
                return Err(syntax(format!(
                    "`{ch}` at character {} is not part of CEL{hint}",
                    pos(i)
                )));
            }
        }
        // An opening bracket runs as often as what is around it, not what is inside it.
        let added = (shape.operators - ops_before) as u64;
        shape.cost = shape
            .cost
            .saturating_add(added.saturating_mul(weight_before));
    }
    if let Some(open) = stack.last() {
        return Err(syntax(format!(
            "the `{}` at character {} is never closed",
            open.byte as char,
            pos(open.at)
        )));
    }
    let mut over = Vec::new();
    if b.len() > MAX_BYTES {
        over.push(format!(
            "it is {} bytes long (at most {MAX_BYTES})",
            b.len()
        ));
    }
    if let Some(at) = first_deep {
        over.push(format!(
            "brackets ( [ {{ nest {} deep from character {} (at most {MAX_NESTING})",
            shape.nesting,
            pos(at)
        ));
    }
    if shape.operators > MAX_OPERATORS {
        over.push(format!(
            "it has {} operators, `.` and brackets (at most {MAX_OPERATORS})",
            shape.operators
        ));
    }
    if let Some((at, name)) = nested_comprehension {
        over.push(format!(
            "the comprehension `{name}(` at character {} is inside another (all, exists, exists_one, map and filter may not nest)",
            pos(at)
        ));
    } else if shape.cost > MAX_COST {
        over.push(format!(
            "its evaluation cost is {} (at most {MAX_COST}): each operator counts once, twice inside each function call around it, and {MAX_ITEMS} times inside a comprehension",
            shape.cost
        ));
    }
    if over.is_empty() {
        Ok(shape)
    } else {
        Err(Refused::Over(over.join("; ")))
    }
}

/// The end (exclusive) of the string literal whose opening quote is at `b[q]`, as the CEL lexer
/// reads it: `'…'`, `"…"` (one line, escapes), `'''…'''`, `"""…"""` (any lines, escapes), and
/// with `raw`, the same without escapes. Errors are (where, what).
fn string_end(b: &[u8], q: usize, raw: bool) -> Result<usize, (usize, &'static str)> {
    let quote = b[q];
    let triple = b.get(q + 1) == Some(&quote) && b.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    loop {
        let Some(&c) = b.get(i) else {
            return Err((q, "a string is never closed"));
        };
        if c == quote && (!triple || (b.get(i + 1) == Some(&quote) && b.get(i + 2) == Some(&quote)))
        {
            return Ok(if triple { i + 3 } else { i + 1 });
        }
        if !triple && (c == b'\n' || c == b'\r') {
            return Err((
                q,
                "a string in '…' or \"…\" must end on its line (use ''' or \"\"\" for more lines)",
            ));
        }
        if c == b'\\' && !raw {
            i += escape_len(&b[i..]).ok_or((
                i,
                "an invalid escape in a string (write \\\\ for a backslash)",
            ))?;
        } else {
            i += 1;
        }
    }
}

/// The length of the escape sequence at the start of `b` (which starts with `\`), if valid CEL.
fn escape_len(b: &[u8]) -> Option<usize> {
    let hex = |n: usize| b.len() > n && b[2..=n].iter().all(u8::is_ascii_hexdigit);
    match *b.get(1)? {
        b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'"' | b'\'' | b'\\' | b'?' | b'`' => {
            Some(2)
        }
        b'0'..=b'3' if b.len() > 3 && b[2..4].iter().all(|d| (b'0'..=b'7').contains(d)) => Some(4),
        b'x' | b'X' if hex(3) => Some(4),
        b'u' if hex(5) => Some(6),
        b'U' if hex(9) => Some(10),
        _ => None,
    }
}

/// The end of the number starting at `b[i]` (a digit, or `.` and a digit): ints, hex, floats
/// with fraction and exponent, a `u` suffix. Only where it ends matters here.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |i: usize| i + b[i..].iter().take_while(|d| d.is_ascii_digit()).count();
    if b[i] == b'0'
        && matches!(b.get(i + 1), Some(b'x' | b'X'))
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
        i += b[i..].iter().take_while(|d| d.is_ascii_hexdigit()).count();
        return i + usize::from(matches!(b.get(i), Some(b'u' | b'U')));
    }
    i = digits(i);
    let mut float = false;
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits(i + 1);
        float = true;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
            float = true;
        }
    }
    if !float && matches!(b.get(i), Some(b'u' | b'U')) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(src: &str) -> String {
        match check(src) {
            Err(Refused::Over(m) | Refused::Syntax(m)) => m,
            Ok(s) => panic!("{src}: {s:?}"),
        }
    }

    #[test]
    fn each_limit_is_reached_and_one_more_is_over() {
        let chain = |n: usize| format!("1{}", "+1".repeat(n));
        let at = check(&chain(MAX_OPERATORS)).unwrap();
        assert_eq!((at.operators, at.nesting, at.cost), (MAX_OPERATORS, 0, 256));
        assert!(over(&chain(MAX_OPERATORS + 1)).contains("257 operators"));

        let parens = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(check(&parens(MAX_NESTING)).unwrap().nesting, MAX_NESTING);
        let m = over(&parens(MAX_NESTING + 1));
        assert!(
            m.contains("nest 33 deep from character 33 (at most 32)"),
            "{m}"
        );
        let mixed = format!("[{{1: [{}1{}]}}]", "(".repeat(30), ")".repeat(30));
        assert!(over(&mixed).contains("nest 33 deep from character 36"));

        // The budget: a call doubles what is inside it, a comprehension multiplies it by
        // MAX_ITEMS; the opening bracket itself runs as often as what is around it.
        let body = |n: usize| format!("[1].exists(x, x{})", " + 1".repeat(n));
        assert_eq!(check(&body(99)).unwrap().cost, 3 + 99 * 1000);
        let m = over(&body(100));
        assert!(
            m.contains("its evaluation cost is 100003 (at most 100000)"),
            "{m}"
        );
        let calls = |n: usize| format!("{}x{}", "int(".repeat(n), ")".repeat(n));
        assert_eq!(check(&calls(16)).unwrap().cost, (1 << 16) - 1);
        assert!(over(&calls(17)).contains("evaluation cost is 131071"));
        // Member calls double too; has() and the macros are not calls, brackets neither.
        assert_eq!(check("a.f(b.g(c.h(d.i(e))))").unwrap().cost, 30);
        let s = check("has(a.b) && [(1)][0] == 1").unwrap();
        assert_eq!((s.cost, s.comprehension), (s.operators as u64, false));
        let nested = "has(a.b) && a.all(x, a.exists(y, int([(x)][0])))";
        assert!(
            over(nested).contains("the comprehension `exists(` at character 30 is inside another")
        );
        // Chained comprehensions are not nested.
        let chained = check("a.filter(x, x > 1).map(x, x * 2).exists(x, x == 4)").unwrap();
        assert_eq!((chained.cost, chained.comprehension), (3006, true));
        assert!(!check("map(a, b)").unwrap().comprehension);

        let long = format!("'{}'", "x".repeat(MAX_BYTES - 2));
        assert_eq!(check(&long).unwrap().operators, 0);
        assert!(over(&format!("{long} ")).contains("4097 bytes long (at most 4096)"));
    }

    #[test]
    fn every_limit_that_is_over_is_named() {
        let src = format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000));
        let m = over(&src);
        assert!(m.contains("40001 bytes long"), "{m}");
        assert!(m.contains("nest 20000 deep from character 33"), "{m}");
        assert!(m.contains("20000 operators"), "{m}");
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let strings = [
            r#"'(((([[[[{{{{'"#,
            r#""(((\"(((\\""#,
            r#"'\'(((\u0041\x41\101\?'"#,
            r#"r'((((\'"#,
            r#"R"((((\""#,
            r#"b'((((\377'"#,
            r#"br"((((""#,
            "'''(((\n'' ((( ''\\''''",
            "\"\"\"(((\n\"\" ((( \"\"\"",
            "r'''((\\'''",
            "`a.b-c/d e`",
        ];
        for s in strings {
            let shape = check(&format!("{s} + {s} // (((((\n + {s}"))
                .unwrap_or_else(|e| panic!("{s}: {e:?}"));
            assert_eq!((shape.nesting, shape.operators), (0, 2), "{s}");
            // The CEL parser reads each as one literal too (the brackets in it unbalanced).
            if !s.starts_with('`') {
                let single = cel_interpreter::Program::compile(s);
                assert!(single.is_ok(), "{s}: {single:?}");
            }
        }
        // Numbers are not field accesses; `.` before a name is.
        assert_eq!(
            check("1.5e+3 + .5 + 0x1Fu + 3u + 1e9").unwrap().operators,
            4
        );
        assert_eq!(check("a.b.c").unwrap().operators, 2);
        assert_eq!(
            check("a in b && !c || d ? -e : f <= g").unwrap().operators,
            7
        );
        // Unary operators one at a time, or a binary `-` before a unary one, are fine.
        assert!(check("!(!a) && -(-b) == 1 - -c && d[-1] - 1 == -2").is_ok());
    }

    #[test]
    fn what_the_cel_lexer_would_not_read_is_refused() {
        for (src, says) in [
            ("'abc", "a string is never closed (at character 1)"),
            (
                "x + 'ab\ncd'",
                "must end on its line (use ''' or \"\"\" for more lines) (at character 5)",
            ),
            ("'''abc''", "never closed"),
            (
                r#""\q((((""#,
                "an invalid escape in a string (write \\\\ for a backslash) (at character 2)",
            ),
            (r"'\x4'", "invalid escape"),
            (r"'\477'", "invalid escape"),
            ("(1]", "`]` at character 3 closes the `(` at character 1"),
            ("1)", "`)` at character 2 closes no bracket"),
            ("((1)", "the `(` at character 1 is never closed"),
            (
                "a = b",
                "`=` at character 3 is not part of CEL (compare with ==)",
            ),
            ("a & b", "(and is &&)"),
            ("a # b", "`#` at character 3 is not part of CEL"),
            ("é", "`é` at character 1"),
            ("!!a", "the unary `!` at character 2 follows another"),
            ("! ! a", "write !(!x), or leave both out"),
            ("1 + --a", "the unary `-` at character 6 follows another"),
            ("[- -1]", "write -(-x)"),
            ("`a", "quoted name at character 1 is not closed"),
        ] {
            let m = over(src);
            assert!(m.contains(says), "{src}: {m}");
        }
    }
}
