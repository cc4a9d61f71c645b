//! PROTOCOL.md section 2: what the upstream receives.

mod support;

use support::client::{Conn, request};
use support::{COOKIE, Proxy, Upstream, config, config_with_upstream};

#[test]
fn spoofed_session_headers_never_reach_the_upstream_in_any_spelling() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let spoofs = [
        ("X-Session-Id", "attacker"),
        ("x-session-data", "{\"admin\":true}"),
        ("X-SESSION-NEW", "0"),
        ("X_Session_Data", "{\"admin\":true}"),
        ("x_session-id", "attacker"),
        ("X-Session-User", "root"),
        ("X-Session", "x"),
        ("X-Session-Set", "admin=true"),
    ];
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange("GET", &request("GET", "/", &spoofs, b""));
    assert_eq!(reply.status, 200);
    let seen = up.last();
    let mut ours: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.replace('_', "-").starts_with("x-session"))
        .map(|(n, _)| n.as_str())
        .collect();
    ours.sort();
    // Only what the proxy injects for a new session arrives: no user, no spoof.
    assert_eq!(
        ours,
        [
            "x-session-created",
            "x-session-data",
            "x-session-id",
            "x-session-new"
        ]
    );
    assert_ne!(seen.session_id(), "attacker");
    assert!(seen.is_new());
    assert_eq!(seen.header("x-session-data"), Some("{}"));
}

#[test]
fn headers_named_in_connection_are_removed_but_injected_ones_still_arrive() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let headers = [
        ("Connection", "keep-alive, X-Private, X-Session-Data"),
        ("X-Private", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Kept", "1"),
    ];
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &headers, b""));
    let seen = up.last();
    for gone in ["x-private", "keep-alive", "te"] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded");
    }
    assert_eq!(seen.header("x-kept"), Some("1"));
    assert_eq!(seen.header("x-session-data"), Some("{}"));
    assert!(seen.header("x-session-id").is_some());
}

#[test]
fn the_session_cookie_is_removed_upstream_and_other_cookies_pass_unchanged() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let value = proxy.browser().get("/").session_cookie_value().unwrap();
    let cookie = format!("theme=dark; {COOKIE}={value}; csrftoken=\"abc=\"");
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &[("Cookie", &cookie)], b""));
    assert_eq!(up.last().all("cookie"), ["theme=dark; csrftoken=\"abc=\""]);
    // A Cookie header holding only the session cookie disappears.
    Conn::open(proxy.addr).exchange(
        "GET",
        &request("GET", "/", &[("Cookie", &format!("{COOKIE}={value}"))], b""),
    );
    assert!(up.last().all("cookie").is_empty());
}

#[test]
fn the_session_cookie_can_be_forwarded_when_configured() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(
        up.addr,
        "[cookie]\nsecure = false\nforward_to_upstream = true\n",
    ));
    let value = proxy.browser().get("/").session_cookie_value().unwrap();
    let cookie = format!("{COOKIE}={value}");
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &[("Cookie", &cookie)], b""));
    assert_eq!(up.last().header("cookie"), Some(cookie.as_str()));
}

#[test]
fn forwarding_headers_are_set_and_client_values_are_not_trusted_by_default() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let spoof = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
    ];
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/p?q=1", &spoof, b""));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(
        seen.header("host"),
        Some("localhost"),
        "the original Host is forwarded"
    );
    assert_eq!(seen.target, "/p?q=1");
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "trusted_proxies = [\"127.0.0.0/8\"]\n"));
    let via_lb = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
    ];
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &via_lb, b""));
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn request_bodies_stream_through_unchanged() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let reply = Conn::open(proxy.addr).exchange("POST", &request("POST", "/upload", &[], &body));
    assert_eq!(reply.status, 200);
    assert_eq!(up.last().body, body);
    // Chunked request bodies too.
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(conn.read("POST").unwrap().status, 200);
    assert_eq!(up.last().body, b"hello world");
}

/// An upstream that counts connections; `/both` answers with both framings
/// (refused by the proxy), `/last` closes its connection after answering.
fn counting_upstream() -> Upstream {
    support::upstream::raw(|r| {
        match r.target.as_str() {
        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        "/last" => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
    })
}

fn upstream_connections(up: &Upstream) -> usize {
    up.connections.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn browser_connections_take_turns_on_one_upstream_connection_and_a_broken_one_is_dropped() {
    let up = counting_upstream();
    // One worker: a connection is given back in the same poll that writes
    // the response, so the next browser's request always finds it idle
    // (with two, it may arrive on the other worker a moment before).
    let proxy = Proxy::start(&config(up.addr, "[server]\nworkers = 1\n"));
    let mut a = Conn::open(proxy.addr);
    let mut b = Conn::open(proxy.addr);
    // One request at a time: every browser connection borrows the same
    // idle upstream connection, one exchange at a time.
    for _ in 0..3 {
        assert_eq!(a.get("/").status, 200);
        assert_eq!(b.get("/").status, 200);
    }
    assert_eq!(upstream_connections(&up), 1);
    // A refused response's connection is never lent again.
    assert_eq!(a.get("/both").status, 502);
    assert_eq!(b.get("/").status, 200);
    assert_eq!(upstream_connections(&up), 2);
    // One the upstream closes is replaced on the next request.
    assert_eq!(b.get("/last").status, 200);
    for _ in 0..3 {
        assert_eq!(a.get("/").status, 200);
        assert_eq!(b.get("/").status, 200);
    }
    assert_eq!(upstream_connections(&up), 3);
}

#[test]
fn an_idle_upstream_connection_is_closed() {
    let up = counting_upstream();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..3 {
        assert_eq!(conn.get("/").status, 200);
    }
    assert_eq!(upstream_connections(&up), 1);
    // Idle for IDLE_RELEASE (2 s), checked every second: closed by 3 s.
    std::thread::sleep(std::time::Duration::from_millis(4_000));
    assert_eq!(conn.get("/").status, 200);
    assert_eq!(
        upstream_connections(&up),
        2,
        "the next request needed a fresh upstream connection"
    );
}

#[test]
fn with_no_paired_connections_every_request_uses_the_pool() {
    let up = counting_upstream();
    let proxy = Proxy::start(&config_with_upstream(up.addr, "paired_connections = 0", ""));
    let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(proxy.addr)).collect();
    for _ in 0..3 {
        for conn in &mut conns {
            assert_eq!(conn.get("/").status, 200);
        }
    }
    assert_eq!(
        upstream_connections(&up),
        1,
        "one pooled connection served all"
    );
}

#[test]
fn after_an_http_1_0_response_uploads_are_still_framed_and_browsers_get_http_1_1() {
    let up = support::upstream::raw(|_| {
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok".to_vec()
    });
    let pooled = config_with_upstream(up.addr, "paired_connections = 0", "");
    for text in [config(up.addr, ""), pooled] {
        let proxy = Proxy::start(&text);
        let mut conn = Conn::open(proxy.addr);
        let first = conn.exchange("GET", b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((first.version.as_str(), first.status), ("HTTP/1.1", 200));
        let upload = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(conn.exchange("POST", upload).status, 200);
        let seen = up.last();
        assert_eq!(seen.target, "/up");
        // hyper would have sent it as HTTP/1.0 on the reused connection,
        // unframed: no length, no chunked, the body lost.
        assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    }
}

#[test]
fn the_upstream_gets_the_host_the_browser_addressed() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut conn = Conn::open(proxy.addr);
    // Absolute-form: the target's authority wins over Host (RFC 9112 3.2.2).
    conn.exchange(
        "GET",
        b"GET http://good.example/a HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    );
    let seen = up.last();
    assert_eq!(seen.target, "/a");
    assert_eq!(seen.all("host"), ["good.example"]);
    assert_eq!(seen.header("x-forwarded-host"), Some("good.example"));
    // HTTP/1.0 may name no host: the upstream gets its own address.
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange("GET", b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), None);
}
