//! Verifiable injection: with `[upstream] signing_key` set, every proxied
//! request carries `X-Session-Signature: t=<unix seconds>,v1=<hex>`, an
//! HMAC-SHA256 under that key of
//!
//! ```text
//! v1\n<t>\n<METHOD>\n<path and query as forwarded>\n
//! <name>:<value>\n   (one line per X-Session-* header sent, name lower-case;
//!                     the lines sorted bytewise, as `LC_ALL=C sort` does)
//! ```
//!
//! so an upstream that can also be reached directly can refuse requests
//! that did not pass through sessiongate (and stale replays, by `t`).

use hmac::{Hmac, KeyInit, Mac};
use http::header::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::protocol::HeaderPrefix;

/// The key; no `Debug`: it must never be printed.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub fn new(secret: &[u8]) -> SigningKey {
        SigningKey(Hmac::new_from_slice(secret).expect("HMAC accepts keys of any length"))
    }

    /// The signature value for a request about to be forwarded.
    pub fn sign(
        &self,
        prefix: &HeaderPrefix,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        now_s: u64,
    ) -> HeaderValue {
        let mut lines: Vec<Vec<u8>> = headers
            .iter()
            .filter(|(n, _)| prefix.matches(n.as_str()) && **n != prefix.signature)
            .map(|(n, v)| [n.as_str().as_bytes(), b":", v.as_bytes()].concat())
            .collect();
        lines.sort();
        let mut mac = self.0.clone();
        mac.update(format!("v1\n{now_s}\n{method}\n{path_and_query}\n").as_bytes());
        for line in lines {
            mac.update(&line);
            mac.update(b"\n");
        }
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        HeaderValue::try_from(format!("t={now_s},v1={hex}"))
            .expect("digits and hex are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_vector() {
        // Python: hmac.new(b"k"*32, b"v1\n1700000000\nGET\n/a?b=1\n"
        //   b"x-session-data:{}\nx-session-id:abc\n", sha256).hexdigest()
        let mut h = HeaderMap::new();
        h.insert("x-session-id", HeaderValue::from_static("abc"));
        h.insert("x-session-data", HeaderValue::from_static("{}"));
        h.insert("x-other", HeaderValue::from_static("ignored"));
        let sig = SigningKey::new(&[b'k'; 32]).sign(
            &HeaderPrefix::default(),
            "GET",
            "/a?b=1",
            &h,
            1_700_000_000,
        );
        assert_eq!(
            sig,
            "t=1700000000,v1=3537f1f8c8ea3bf54a96d8b244ed0e66a76afa02c3173b7c5a9f8cc4b81da487"
        );
    }
}
