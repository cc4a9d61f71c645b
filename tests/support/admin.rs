//! Reading the proxy's admin endpoints.

use super::Proxy;
use super::client::{Conn, Reply, request};

/// GET on the admin listener.
pub fn get(proxy: &Proxy, path: &str) -> Reply {
    let addr = proxy.admin.expect("the admin listener is on");
    Conn::open(addr).exchange(
        "GET",
        &request("GET", path, &[("Connection", "close")], b""),
    )
}

/// The value of one metric line (`name{labels}` exactly as exposed), or 0.
pub fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = get(proxy, "/metrics").text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or(0.0)
}

/// Live sessions the store holds.
pub fn sessions_held(proxy: &Proxy) -> u64 {
    metric(proxy, "sessiongate_sessions_held") as u64
}
