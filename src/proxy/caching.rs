//! Cache safety for session responses: `Vary: Cookie` on every response that
//! went through session handling, and `Cache-Control: private` on every
//! response that carries the session's `Set-Cookie` (RFC 9111 section 7.3:
//! `Set-Cookie` alone does not stop a shared cache from storing it).

use http::header::{CACHE_CONTROL, HeaderMap, HeaderValue, VARY};

/// Adds `Cookie` to `Vary` unless it is there already (or `Vary: *`).
pub fn vary_on_cookie(headers: &mut HeaderMap) {
    let covered = directives(headers, VARY).any(|d| d.eq_ignore_ascii_case("cookie") || d == "*");
    if !covered {
        headers.append(VARY, HeaderValue::from_static("Cookie"));
    }
}

/// Makes the response unstorable by shared caches: keeps `private` or
/// `no-store` if present, otherwise drops `public` and `s-maxage` (which
/// would contradict it) and adds `private`.
pub fn make_private(headers: &mut HeaderMap) {
    let already = directives(headers, CACHE_CONTROL)
        .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"));
    if already {
        return;
    }
    let private = HeaderValue::from_static("private");
    let mut kept: Vec<&str> = directives(headers, CACHE_CONTROL)
        .filter(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("public") && !name.eq_ignore_ascii_case("s-maxage")
        })
        .collect();
    // Most responses have no Cache-Control to keep: nothing to join then.
    let value = match kept.is_empty() {
        true => private,
        false => {
            kept.push("private");
            HeaderValue::try_from(kept.join(", ")).unwrap_or(private)
        }
    };
    headers.insert(CACHE_CONTROL, value);
}

/// The comma-separated members of every `name` header, trimmed.
fn directives(headers: &HeaderMap, name: http::header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(members)
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

/// Splits a list header on the commas outside quoted strings (RFC 9110
/// section 5.6.1), so `no-cache="X-Foo, private"` stays one member and its
/// quoted `private` is not mistaken for the directive. Written here: the
/// `http` crate does not parse lists, and this split is all we need.
fn members(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in text.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: http::header::HeaderName, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn vary_is_added_to_not_replaced() {
        let mut h = with(VARY, &["Accept-Encoding"]);
        vary_on_cookie(&mut h);
        let all: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(all, ["Accept-Encoding", "Cookie"]);
        let mut h = with(VARY, &["accept, COOKIE"]);
        vary_on_cookie(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn public_becomes_private() {
        let mut h = with(CACHE_CONTROL, &["public, max-age=600", "s-maxage=60"]);
        make_private(&mut h);
        assert_eq!(h[CACHE_CONTROL], "max-age=600, private");
        let mut h = with(CACHE_CONTROL, &["no-store"]);
        make_private(&mut h);
        assert_eq!(h[CACHE_CONTROL], "no-store");
        let mut h = HeaderMap::new();
        make_private(&mut h);
        assert_eq!(h[CACHE_CONTROL], "private");
        let mut h = with(CACHE_CONTROL, &["public", "s-maxage=60"]);
        make_private(&mut h);
        let all: Vec<_> = h.get_all(CACHE_CONTROL).iter().collect();
        assert_eq!(all, ["private"]);
    }

    #[test]
    fn commas_inside_quotes_do_not_split_members() {
        let all: Vec<_> = members(r#"a, b="x, \"y, z", c"#).map(str::trim).collect();
        assert_eq!(all, ["a", r#"b="x, \"y, z""#, "c"]);
        let mut h = with(CACHE_CONTROL, &[r#"no-cache="Set-Cookie, private""#]);
        make_private(&mut h);
        assert_eq!(
            h[CACHE_CONTROL],
            r#"no-cache="Set-Cookie, private", private"#
        );
    }
}
