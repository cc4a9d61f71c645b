//! Request path normalisation (RFC 3986 section 6.2.2): the path the proxy
//! forwards, and the one skip paths are matched against, so that
//! `/static/../admin` or `/static/%2e%2e/admin` cannot skip sessions for
//! `/admin`.
//!
//! Percent-encoded unreserved characters are decoded, other escapes get
//! upper-case hex, and dot-segments are removed. Encoded slashes and
//! backslashes stay encoded (their meaning differs between upstreams), and
//! a path holding any never matches a skip path.

use std::borrow::Cow;

/// The normalised form of `path`, or `None` for a malformed escape.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    // Most paths have neither escapes nor dot-segments: nothing to do.
    if !path.contains('%') && !path.contains("/.") {
        return Some(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Some(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether `normalized` may skip session work for one of `prefixes`.
pub fn skips(normalized: &str, prefixes: &[String]) -> bool {
    let ambiguous = || normalized.contains('\\') || has_encoded_slash(normalized);
    prefixes.iter().any(|p| normalized.starts_with(p.as_str())) && !ambiguous()
}

/// Whether `path` holds `%2F` or `%5C`, in either case.
fn has_encoded_slash(path: &str) -> bool {
    let bytes = path.as_bytes();
    memchr::memchr_iter(b'%', bytes).any(|i| {
        bytes
            .get(i + 1..i + 3)
            .is_some_and(|hex| hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c"))
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3)?;
        let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        if is_unreserved(value) {
            out.push(value as char);
        } else {
            out.push('%');
            out.push_str(&std::str::from_utf8(hex).ok()?.to_ascii_uppercase());
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 section 5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    output.push("");
                }
            }
            ".." => {
                output.pop();
                if i == last {
                    output.push("");
                }
            }
            s => output.push(s),
        }
    }
    format!("/{}", output.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_unreserved_escapes_are_resolved() {
        let cases = [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/static/../admin", "/admin"),
            ("/static/%2e%2e/admin", "/admin"),
            ("/static/%2E%2E/admin/", "/admin/"),
            ("/a/./b/../../c", "/c"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("//double", "//double"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(normalize("/bad%zz"), None);
        assert_eq!(normalize("/bad%2"), None);
    }

    #[test]
    fn only_unambiguous_paths_skip() {
        let prefixes = vec!["/static/".to_owned()];
        assert!(skips("/static/app.js", &prefixes));
        assert!(!skips("/admin", &prefixes));
        assert!(!skips("/static/..%2Fadmin", &prefixes));
        assert!(!skips("/static/..%2fadmin", &prefixes));
        assert!(!skips("/static/..%5Cadmin", &prefixes));
        assert!(!skips("/static/..%5cadmin", &prefixes));
        assert!(skips("/static/%25%2", &prefixes));
        assert!(!skips("/static/..\\admin", &prefixes));
        assert!(!skips("/staticx", &prefixes));
    }
}
