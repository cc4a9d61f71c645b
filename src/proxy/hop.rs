//! Hop-by-hop headers (RFC 9110 section 7.6.1): meant for one connection,
//! never forwarded. The fixed set plus every field the sender names in
//! `Connection`, in both directions.

use http::header::{self, HeaderMap, HeaderName};

/// Always hop-by-hop, whether or not `Connection` names them.
const FIXED: [HeaderName; FIXED_LEN] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const FIXED_LEN: usize = 6;
// `strip` keeps a bit per fixed name in a u8.
const _: () = assert!(FIXED_LEN <= 8);

/// Fields a peer cannot make hop-by-hop by naming them: the proxy needs them
/// to route and frame the message (hyper re-frames the body itself).
const PROTECTED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

/// The tokens of every `Connection` header, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether `Connection` names `token` (case-insensitively).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// Removes the hop-by-hop headers from `headers`.
pub fn strip(headers: &mut HeaderMap) {
    // Only names found in one pass over the map are removed: a removal
    // hashes and probes, and most messages carry one or none of the six.
    // A bit per fixed name rather than a list: no allocation.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = FIXED.iter().position(|fixed| fixed == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Tokens naming a fixed field (like the common "keep-alive") or a
    // protected one are passed over before a name is made: a name outside
    // http's standard set is an allocation. Most messages name no other.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|token| !is_fixed_or_protected(token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for (i, name) in FIXED.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
}

fn is_fixed_or_protected(token: &str) -> bool {
    FIXED
        .iter()
        .chain(&PROTECTED)
        .any(|name| token.eq_ignore_ascii_case(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_fixed_and_named_fields_but_not_routing_ones() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Private, host, Content-Length"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
            ("x-other", "1"),
            ("host", "example.com"),
            ("content-length", "0"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "content-length", "host"]);
    }
}
