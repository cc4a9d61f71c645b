//! `X-Forwarded-For`, `-Proto` and `-Host` for the upstream.
//!
//! A client's own values are believed only when the connection comes from a
//! configured trusted proxy (a load balancer in front of us); otherwise they
//! are replaced, and the client's `Forwarded` and `X-Real-IP` are dropped, so
//! an upstream that reads any of them sees the real peer.

use std::net::IpAddr;

use http::header::{FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets the forwarding headers for a request from `peer` received over `proto`.
pub fn set(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    trusted: &[IpNet],
) {
    let peer = canonical(peer);
    let trusted_peer = trusted.iter().any(|net| net.contains(&peer));
    let peer_text = peer.to_string();
    if !trusted_peer {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
            X_REAL_IP,
        ] {
            headers.remove(name);
        }
    }
    let chain = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let xff = if chain.is_empty() {
        peer_text
    } else {
        format!("{chain}, {peer_text}")
    };
    headers.remove(X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(host) = host.or_else(|| headers.get(HOST).cloned())
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
        h.insert(HOST, HeaderValue::from_static("app.example"));
        h
    }

    #[test]
    fn untrusted_peer_values_are_replaced() {
        let mut h = spoofed();
        set(&mut h, "10.0.0.9".parse().unwrap(), "http", None, &[]);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "app.example");
        assert!(!h.contains_key(X_REAL_IP));
    }

    #[test]
    fn trusted_peer_values_are_kept_and_extended() {
        let mut h = spoofed();
        set(
            &mut h,
            "::ffff:10.0.0.9".parse().unwrap(),
            "http",
            None,
            &["10.0.0.0/8".parse().unwrap()],
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }
}
