//! Page cursors (`next` in a page, `?after=` in the request for the next one): opaque to the
//! client, and safe in a URL as they are. The internal position (a store key, which may hold
//! the `\x1f` separator) travels as base64url without padding; anything else is refused with a
//! 400 that says what to send, so a client cannot build positions of its own.
//!
//! The events' `next_cursor` is not one of these: it is a documented `partition:offset` list,
//! shared with SSE ids, `Last-Event-ID` and `?min_offset=`, and is URL-safe already.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ApiError;

/// The cursor that stands for `position`.
pub(crate) fn encode(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// The position of a cursor given as `?{param}=`; a 400 `invalid_query` if it is not one this
/// server gave.
pub(crate) fn decode(param: &str, cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        // The store refuses NUL in a key; no position holds one.
        .filter(|p| !p.is_empty() && !p.contains('\0'))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{param}: '{}' is not a page cursor; pass the `next` of the previous page as it is",
                    cursor.chars().take(64).collect::<String>()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_with_a_separator_round_trips_as_url_safe_text() {
        let position = "0003\u{1f}0001767225600000\u{1f}dlv_01jd";
        let c = encode(position);
        assert!(
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{c}"
        );
        assert_eq!(decode("after", &c).ok().as_deref(), Some(position));
    }

    #[test]
    fn anything_else_is_a_clear_400() {
        let raw = "0003\u{1f}0001767225600000";
        for bad in [raw, "x", "a+b/", "AA==", "%00", "", "AA"] {
            let e = decode("after", bad).err();
            let e = e.unwrap_or_else(|| panic!("'{bad}' was accepted"));
            assert_eq!(e.code, "invalid_query");
            assert!(e.message.starts_with("after: '"), "{}", e.message);
            assert!(e.message.contains("the `next` of the previous page"));
        }
    }
}
