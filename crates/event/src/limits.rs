//! The limits every event and command is held to at the door, and the record types and sources
//! only Storeline itself may write.
//!
//! The ingest key is public (storefronts embed it), so whatever it sends must be something the
//! engine can store and apply, or be refused with a 400 that names the field:
//!
//! - **Identifiers** (ids, sources, subjects, partition keys, SKUs, order/customer ids, e-mail
//!   addresses) hold no control characters at all (C0, DEL): they become keys in the state store,
//!   and PostgreSQL `text` cannot hold NUL.
//! - **Free text** anywhere in `data` (and in every object key) holds no C0 control character
//!   except tab, line feed and carriage return.
//! - **Nesting**: `data` is at most [`MAX_DEPTH`] arrays/objects deep (serde_json refuses
//!   128 levels when the engine parses it; a deep payload must never be acknowledged first).
//! - **Numbers**: money and stock within ±[`MAX_AMOUNT`] minor units, quantities at most
//!   [`MAX_QUANTITY`]: sums over millions of events then stay far inside `i64`, and every sum the
//!   views keep is checked anyway.
//!
//! **Reserved**: the engine's own record types (`storeline.*`, `connector.*`,
//! `customer.unmerged`), the `storeline/…` sources and the attributes commands stamp on their
//! events are written only by Storeline. Its own records carry the stored attribute
//! `storeline_internal`, which no producer can set (ingest refuses it), and the engine honours
//! reserved types only on records that carry it.

use crate::FieldError;
use crate::envelope::{Event, Incoming, Scalar};

/// The largest amount of money, or count of stock, in minor units or units: 10^15.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// The largest quantity of one line, reservation or return: 10^9.
pub const MAX_QUANTITY: u64 = 1_000_000_000;

/// The deepest nesting of arrays and objects in `data`.
pub const MAX_DEPTH: usize = 64;

/// The longest identifier inside `data` (an order id, a SKU, a URL), in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 1024;

/// Extension attributes that commands stamp on their events (the idempotency record is derived
/// from them), so a producer may not send them.
pub const COMMAND_ATTRIBUTES: &[&str] = &["command", "idempotencykey", "commandhash"];

/// Whether only Storeline may write records of this type.
pub fn is_reserved_type(ty: &str) -> bool {
    ty.starts_with("storeline.") || ty.starts_with("connector.") || ty == "customer.unmerged"
}

/// Whether only Storeline may use this source (`storeline/engine`, `storeline/commands`, …).
pub fn is_reserved_source(source: &str) -> bool {
    source
        .get(..10)
        .is_some_and(|p| p.eq_ignore_ascii_case("storeline/"))
}

/// The fields of `ev` that name something only Storeline may write; empty for an ordinary
/// event. Ingest answers them with `400 reserved_type`.
pub fn reserved_fields(ev: &Event) -> Vec<FieldError> {
    reserved(
        Some(&ev.ty),
        Some(&ev.source),
        ev.extensions.iter().map(|(k, _)| k.as_str()),
    )
}

/// [`reserved_fields`] of an event as it arrived, before it is validated: a reserved type is
/// answered as such whatever else is wrong with the event.
pub fn reserved_in(inc: &Incoming) -> Vec<FieldError> {
    fn text(s: &Option<Scalar>) -> Option<&str> {
        match s {
            Some(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }
    reserved(
        text(&inc.ty),
        text(&inc.source),
        inc.extensions.iter().map(|(k, _)| k.as_str()),
    )
}

fn reserved<'a>(
    ty: Option<&str>,
    source: Option<&str>,
    extensions: impl Iterator<Item = &'a str>,
) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(ty) = ty
        && is_reserved_type(ty)
    {
        out.push(FieldError::new(
            "type",
            format!(
                "'{ty}' is reserved: storeline.*, connector.* and customer.unmerged records are \
                 written only by Storeline itself (unmerge with POST /v1/customers/{{id}}/unmerge)"
            ),
        ));
    }
    if let Some(source) = source
        && is_reserved_source(source)
    {
        out.push(FieldError::new(
            "source",
            format!("'{source}' is reserved: sources starting with storeline/ are Storeline's own"),
        ));
    }
    for name in extensions {
        if COMMAND_ATTRIBUTES.contains(&name) {
            out.push(FieldError::new(
                name,
                "is reserved: commands set it on the events they write (POST /v1/commands/…)",
            ));
        }
    }
    out
}

fn describe(c: char) -> String {
    match c {
        '\0' => "NUL (U+0000)".to_owned(),
        '\t' => "a tab".to_owned(),
        '\n' => "a line feed".to_owned(),
        '\r' => "a carriage return".to_owned(),
        c => format!("the control character U+{:04X}", u32::from(c)),
    }
}

/// An identifier: no control character at all.
pub fn check_identifier(s: &str) -> Result<(), String> {
    // Control characters are ASCII, and no byte of a multi-byte UTF-8 character is below 0x80:
    // a byte scan settles the common case.
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Ok(());
    }
    match s.chars().find(|c| c.is_ascii_control()) {
        Some(c) => Err(format!(
            "contains {}; identifiers may not hold control characters",
            describe(c)
        )),
        None => Ok(()),
    }
}

/// Free text: no C0 control character but tab, line feed and carriage return.
pub fn check_text(s: &str) -> Result<(), String> {
    if !s.bytes().any(|b| forbidden_in_text(u32::from(b))) {
        return Ok(());
    }
    match s.chars().find(|c| forbidden_in_text(u32::from(*c))) {
        Some(c) => Err(format!(
            "contains {}; text may not hold control characters other than tab and line breaks",
            describe(c)
        )),
        None => Ok(()),
    }
}

fn forbidden_in_text(code: u32) -> bool {
    code < 0x20 && !matches!(code, 0x09 | 0x0A | 0x0D)
}

/// Checks JSON text (valid JSON, as serde accepted it) in one pass without parsing it: no array
/// or object deeper than [`MAX_DEPTH`], and no string or key holding a control character other
/// than tab and line breaks. JSON escapes control characters (`\u0000`, `\b`, `\f`), so those
/// escapes are what the scan looks for.
pub fn scan_json(raw: &str) -> Result<(), String> {
    let b = raw.as_bytes();
    // The common case in one vectorizable pass: without a backslash there is no escape (and a
    // raw control character is not valid JSON), and with at most MAX_DEPTH opening brackets in
    // all (some may be inside strings) nothing can be deeper.
    let (mut escapes, mut opening) = (false, 0usize);
    for &c in b {
        escapes |= c == b'\\';
        opening += usize::from(c == b'[' || c == b'{');
    }
    if !escapes && opening <= MAX_DEPTH {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'"' => break,
                        b'\\' => {
                            let code = match b.get(i + 1) {
                                Some(b'u') => {
                                    let hex = raw.get(i + 2..i + 6).unwrap_or("");
                                    i += 4;
                                    u32::from_str_radix(hex, 16).unwrap_or(0x20)
                                }
                                Some(b'b') => 0x08,
                                Some(b'f') => 0x0C,
                                _ => 0x20,
                            };
                            if forbidden_in_text(code) {
                                let c = char::from_u32(code).unwrap_or('\0');
                                return Err(format!(
                                    "a string holds {}; text may not hold control characters \
                                     other than tab and line breaks",
                                    describe(c)
                                ));
                            }
                            i += 2;
                            continue;
                        }
                        c if c < 0x20 => {
                            return Err(format!("a string holds {}", describe(char::from(c))));
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "is nested more than {MAX_DEPTH} arrays/objects deep; flatten it"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Checks a money amount or stock count against [`MAX_AMOUNT`].
pub fn check_amount(n: i64) -> Result<(), String> {
    if n.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
        return Err(format!(
            "{n} is outside the supported range of ±{MAX_AMOUNT} (10^15) minor units"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_every_control_character() {
        assert!(check_identifier("cus-1 with spaces é").is_ok());
        for bad in ["a\0b", "a\tb", "a\nb", "a\u{7f}", "\u{1f}"] {
            let e = check_identifier(bad).unwrap_err();
            assert!(
                e.contains("control")
                    || e.contains("NUL")
                    || e.contains("tab")
                    || e.contains("line"),
                "{e}"
            );
        }
        assert!(check_identifier("x\0").unwrap_err().contains("NUL"));
    }

    #[test]
    fn text_keeps_tabs_and_line_breaks_only() {
        assert!(check_text("line one\r\n\tline two").is_ok());
        assert!(check_text("bell\u{7}").is_err());
        assert!(check_text("nul\0").is_err());
    }

    #[test]
    fn the_scan_finds_escaped_controls_and_depth_but_not_escaped_backslashes() {
        assert!(scan_json(r#"{"a":"tab\tand\nnewline\r","b":[1,{"c":"\u00e9"}]}"#).is_ok());
        // An escaped backslash followed by the text u0000 is not a control character.
        assert!(scan_json(r#"{"a":"\\u0000"}"#).is_ok());
        for bad in [
            r#"{"a":"x\u0000"}"#,
            r#"{"a\u001f":1}"#,
            r#"["\b"]"#,
            r#"["\f"]"#,
        ] {
            assert!(scan_json(bad).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(scan_json(&deep).is_ok());
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(scan_json(&deeper).unwrap_err().contains("nested"));
        // Brackets inside strings do not count.
        let quoted = format!("[\"{}\"]", "[".repeat(1000));
        assert!(scan_json(&quoted).is_ok());
    }

    #[test]
    fn reserved_types_and_sources() {
        for t in [
            "storeline.triggers",
            "storeline.tick",
            "connector.disabled",
            "customer.unmerged",
        ] {
            assert!(is_reserved_type(t), "{t}");
        }
        for t in [
            "order.placed",
            "customer.identified",
            "storelinex.y",
            "track.storeline.triggers",
        ] {
            assert!(!is_reserved_type(t), "{t}");
        }
        assert!(is_reserved_source("storeline/engine"));
        assert!(is_reserved_source("Storeline/Engine"));
        assert!(!is_reserved_source("storeline:http"));
        assert!(!is_reserved_source("web-shop"));
        assert!(check_amount(MAX_AMOUNT).is_ok() && check_amount(-MAX_AMOUNT).is_ok());
        assert!(check_amount(MAX_AMOUNT + 1).is_err() && check_amount(i64::MIN).is_err());
    }
}
