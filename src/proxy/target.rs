//! What the browser addressed: the request target's form (RFC 9112
//! section 3.2) and the host the request is for.

use http::header::{HOST, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Uri, Version};

use super::error::Error;

/// Refuses targets an origin server would: authority-form outside CONNECT
/// (which is refused before), `*` outside OPTIONS, and absolute-form with a
/// scheme other than http or https. hyper parses all of them.
pub fn check(method: &Method, uri: &Uri) -> Result<(), Error> {
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(Error::BadRequest(
            "request target with a scheme other than http(s)",
        ));
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(Error::BadRequest(
            "authority-form request target outside CONNECT",
        ));
    }
    if uri.path() == "*" && method != Method::OPTIONS {
        return Err(Error::BadRequest("`*` request target outside OPTIONS"));
    }
    Ok(())
}

/// Sets `Host` to the host the browser addressed and returns it: the
/// target's authority when it has one (absolute-form, HTTP/2's
/// `:authority`), which wins over a `Host` header (RFC 9112 section 3.2.2,
/// RFC 9113 section 8.3.1), else `Host`. An HTTP/1.0 request may name no
/// host; it gets `upstream`'s, as nginx sends its `proxy_pass` host, and
/// `None` comes back (there is nothing to forward as X-Forwarded-Host).
pub fn settle_host(parts: &mut Parts, upstream: &Authority) -> Result<Option<HeaderValue>, Error> {
    if let Some(authority) = parts.uri.authority() {
        let host = HeaderValue::from_str(authority.as_str())
            .ok()
            .filter(|h| is_host(h.as_bytes()))
            .ok_or(Error::BadRequest("invalid host in the request target"))?;
        parts.headers.insert(HOST, host.clone());
        return Ok(Some(host));
    }
    match parts.headers.get(HOST).filter(|h| !h.is_empty()) {
        Some(host) if is_host(host.as_bytes()) => Ok(Some(host.clone())),
        Some(_) => Err(Error::BadRequest("invalid Host")),
        None if parts.version <= Version::HTTP_10 => {
            let host =
                HeaderValue::from_str(upstream.as_str()).expect("an authority is a valid header");
            parts.headers.insert(HOST, host);
            Ok(None)
        }
        None => Err(Error::BadRequest("no Host")),
    }
}

/// Whether `host` can be a URI authority without userinfo (RFC 3986
/// section 3.2): a reg-name or IPv4 address, or a bracketed IPv6 literal,
/// then an optional port of at most 65535. Checked on the bytes: the
/// request's own head is not copied to parse it again, and the upstream
/// gets the text as sent.
fn is_host(host: &[u8]) -> bool {
    let (name, port) = match host.strip_prefix(b"[") {
        Some(literal) => {
            let Some(close) = memchr::memchr(b']', literal) else {
                return false;
            };
            let port = match &literal[close + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return false,
            };
            let ipv6 = &literal[..close];
            if !ipv6
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
            {
                return false;
            }
            (ipv6, port)
        }
        None => match memchr::memrchr(b':', host) {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        p.iter().all(u8::is_ascii_digit) && (p.is_empty() || p.len() <= 5 && atoi(p) <= 65535)
    });
    let name_ok = host.first() == Some(&b'[') || name.iter().all(|&b| REG_NAME[b as usize]);
    !name.is_empty() && port_ok && name_ok
}

fn atoi(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
}

/// The bytes of a reg-name or IPv4 address (unreserved, sub-delims and
/// percent-escapes), as a table: this runs on every request.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(target: &str, host: Option<&str>, version: Version) -> Parts {
        let mut req = http::Request::get(target).version(version);
        if let Some(host) = host {
            req = req.header(HOST, host);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn targets_outside_their_method_or_scheme_are_refused() {
        let ok = |m: Method, t: &str| check(&m, &t.parse().unwrap()).is_ok();
        assert!(ok(Method::GET, "/a?b"));
        assert!(ok(Method::GET, "http://example.com/a"));
        assert!(ok(Method::OPTIONS, "*"));
        assert!(!ok(Method::GET, "*"));
        assert!(!ok(Method::GET, "example.com:80"));
        assert!(!ok(Method::GET, "ftp://example.com/a"));
    }

    #[test]
    fn the_targets_authority_wins_and_bad_hosts_are_refused() {
        let upstream: Authority = "app:3000".parse().unwrap();
        let mut p = parts("http://good.example/x", Some("evil"), Version::HTTP_11);
        assert_eq!(
            settle_host(&mut p, &upstream).unwrap().unwrap(),
            "good.example"
        );
        assert_eq!(p.headers[HOST], "good.example");
        let mut p = parts("/x", Some("a.example:8080"), Version::HTTP_11);
        assert_eq!(
            settle_host(&mut p, &upstream).unwrap().unwrap(),
            "a.example:8080"
        );
        for good in [
            "a",
            "a:8080",
            "a:",
            "[::1]",
            "[::1]:3000",
            "10.0.0.1:80",
            "xn--bcher-kva.example",
        ] {
            let mut p = parts("/x", Some(good), Version::HTTP_11);
            assert!(settle_host(&mut p, &upstream).is_ok(), "{good}");
        }
        for bad in [
            "a b", "evil@a", "a/b", "a:abc", "a:99999", ":80", "[::1", "[::1]x", "[zz]", "a]",
        ] {
            let mut p = parts("/x", Some(bad), Version::HTTP_11);
            assert!(settle_host(&mut p, &upstream).is_err(), "{bad}");
        }
        let mut p = parts("http://u:pw@example.com/x", None, Version::HTTP_11);
        assert!(settle_host(&mut p, &upstream).is_err());
        let mut p = parts("/x", None, Version::HTTP_11);
        assert!(settle_host(&mut p, &upstream).is_err());
        let mut p = parts("/x", None, Version::HTTP_10);
        assert_eq!(settle_host(&mut p, &upstream).unwrap(), None);
        assert_eq!(p.headers[HOST], "app:3000");
    }
}
