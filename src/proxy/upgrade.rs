//! WebSocket (HTTP/1.1 `Upgrade: websocket`) passes through: the upgrade
//! request goes upstream with the session injected like any other, and on a
//! `101 Switching Protocols` the two connections are joined byte for byte.
//! No other protocol is tunnelled; in particular `Upgrade: h2c` from a
//! client is dropped with the other hop-by-hop headers (RFC 9113 section
//! 3.1 removed h2c upgrades; tunnelling it would skip session handling).

use http::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::server::deadline::Busy;

/// Whether the request asks to become a WebSocket.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    super::hop::connection_has(headers, "upgrade")
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub fn restore_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Joins the two upgraded connections once both sides have switched; the
/// connection counts as busy (no idle deadline) while the tunnel lasts.
pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade, busy: Busy) {
    tokio::spawn(async move {
        let _busy = busy;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(error = %e, "websocket tunnel ended with an error");
        }
    });
}
