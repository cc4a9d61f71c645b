//! `X-Forwarded-For`, `-Proto` and `-Host` for the upstream.
//!
//! A client's own values are believed only when the connection comes from a
//! configured trusted proxy (a load balancer in front of us); otherwise they
//! are replaced, and the client's `Forwarded` and `X-Real-IP` are dropped, so
//! an upstream that reads any of them sees the real peer.

use std::net::IpAddr;

use http::header::{FORWARDED, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The connection's peer as the forwarding headers name it, rendered once
/// per connection rather than once per request.
#[derive(Clone, Debug)]
pub struct Peer {
    ip: IpAddr,
    text: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Peer {
        let ip = canonical(ip);
        Peer { ip, text: text(ip) }
    }
}

/// `ip` as text. IPv4, nearly every peer, is written with itoa: std's
/// `Display` goes through the formatter, about 1,300 instructions for
/// every new connection, ten times this.
fn text(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string())
            .expect("an IP address is a valid header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

/// Headers only a trusted proxy may send.
const SPOOFABLE: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    FORWARDED,
    X_REAL_IP,
];

/// Sets the forwarding headers for a request from `peer` received over `proto`.
pub fn set(
    headers: &mut HeaderMap,
    peer: &Peer,
    proto: &'static str,
    host: Option<HeaderValue>,
    trusted: &[IpNet],
) {
    let trusted_peer = trusted.iter().any(|net| net.contains(&peer.ip));
    // One pass over the names is cheaper than five removals (each hashes
    // and probes), and most requests carry none of them.
    let any_present = headers.keys().any(|n| SPOOFABLE.contains(n));
    if !trusted_peer && any_present {
        for name in SPOOFABLE {
            headers.remove(name);
        }
    }
    let kept = trusted_peer && any_present;
    let xff = match kept.then(|| chain(headers)).flatten() {
        Some(mut chain) => {
            // The peer's text was rendered once, for the connection.
            chain.push_str(", ");
            chain.push_str(peer.text.to_str().expect("an IP address is ASCII"));
            HeaderValue::try_from(chain).ok()
        }
        None => Some(peer.text.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !kept || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if (!kept || !headers.contains_key(X_FORWARDED_HOST))
        && let Some(host) = host
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// The client's address as far as trusted proxies vouch for it: the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (entries
/// left of it were written by that client, so they prove nothing), or the
/// leftmost if all are trusted. Read after [`set`] appended the peer.
pub fn client(headers: &HeaderMap, trusted: &[IpNet]) -> Option<String> {
    let is_trusted = |entry: &str| {
        entry
            .parse::<IpAddr>()
            .is_ok_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
    };
    let mut leftmost = None;
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else { continue };
        for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !is_trusted(entry) {
                return Some(entry.to_owned());
            }
            leftmost = Some(entry);
        }
    }
    leftmost.map(str::to_owned)
}

/// The `X-Forwarded-For` values a trusted proxy sent, joined; `None` if none.
fn chain(headers: &HeaderMap) -> Option<String> {
    let chain = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    (!chain.is_empty()).then_some(chain)
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

    use proptest::prelude::any;

    proptest::proptest! {
        #[test]
        fn a_peer_reads_as_std_writes_it(octets in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            for ip in [IpAddr::from(octets), IpAddr::from(v6)] {
                let written = text(ip);
                proptest::prop_assert_eq!(written.to_str().unwrap(), ip.to_string());
            }
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
        h
    }

    #[test]
    fn untrusted_peer_values_are_replaced() {
        let mut h = spoofed();
        set(
            &mut h,
            &Peer::new("10.0.0.9".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("app.example")),
            &[],
        );
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
            &Peer::new("::ffff:10.0.0.9".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("app.example")),
            &["10.0.0.0/8".parse().unwrap()],
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn trusted_peer_without_headers_gets_its_own() {
        let mut h = HeaderMap::new();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        set(
            &mut h,
            &Peer::new("10.0.0.9".parse().unwrap()),
            "https",
            Some(HeaderValue::from_static("app.example")),
            &trusted,
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "app.example");
    }
}
