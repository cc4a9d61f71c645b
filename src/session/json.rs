//! The session's wire form: compact JSON object text, ASCII only.
//!
//! serde_json writes non-ASCII characters as UTF-8 and DEL raw; the protocol
//! wants them as `\uXXXX` (surrogate pairs above U+FFFF) so the text is a
//! valid header value for every upstream. No crate offers that formatter, so it is here.
//! Control characters are escaped by JSON itself, so CR, LF and NUL can
//! never reach a header line raw.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::{Map, Value};

/// Compact JSON (the trait's defaults) with every non-ASCII character escaped.
struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            // DEL is ASCII but not allowed in a header value; JSON leaves it raw.
            if ch.is_ascii() && ch != '\x7f' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Encodes a session as ASCII-only compact JSON.
pub fn encode(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    map.serialize(&mut ser)
        .expect("serialising a JSON map into memory cannot fail");
    out
}

/// Encodes one value the same way (the Redis store keeps values per key).
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising a JSON value into memory cannot fail");
    out
}

/// Decodes stored session text. Only text this module wrote is stored, so a
/// failure means the store was altered by someone else.
pub fn decode(bytes: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: Value) -> String {
        String::from_utf8(encode(v.as_object().unwrap())).unwrap()
    }

    #[test]
    fn non_ascii_is_escaped_and_surrogate_pairs_are_used_above_the_bmp() {
        let text = enc(json!({"k": "é€😀", "ü": 1}));
        assert_eq!(text, r#"{"k":"\u00e9\u20ac\ud83d\ude00","\u00fc":1}"#);
        assert!(text.is_ascii());
    }

    #[test]
    fn control_characters_never_appear_raw() {
        let text = enc(json!({"k": "a\r\nb\u{0}c\u{7f}"}));
        assert!(!text.bytes().any(|b| b < 0x20), "{text}");
        assert!(http::HeaderValue::from_str(&text).is_ok());
    }

    #[test]
    fn round_trips_any_value() {
        let value = json!({"s": "\u{10ffff}\u{0}\"\\", "n": -1.5e300, "a": [null, true, {}], "o": {"x": []}});
        let text = encode(value.as_object().unwrap());
        assert_eq!(Value::Object(decode(&text).unwrap()), value);
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_as_ascii(s in ".*", k in "[a-z]{1,8}") {
            let mut map = Map::new();
            map.insert(k, Value::String(s));
            let text = encode(&map);
            proptest::prop_assert!(text.is_ascii());
            proptest::prop_assert!(http::HeaderValue::from_bytes(&text).is_ok());
            proptest::prop_assert_eq!(decode(&text).unwrap(), map);
        }
    }
}
