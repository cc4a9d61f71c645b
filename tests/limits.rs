//! Timeouts and limits, each against a misbehaving client or upstream.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::client::{Conn, request};
use support::{Proxy, Response, Upstream, config, config_with_upstream};

/// A proxy in front of an upstream that answers 200, with these head and
/// keep-alive deadlines.
fn with_deadlines(head: &str, keep_alive: &str) -> (Upstream, Proxy) {
    let up = Upstream::ok();
    let server = format!(
        "[server]\nheader_read_timeout = \"{head}\"\nkeep_alive_timeout = \"{keep_alive}\"\n"
    );
    let proxy = Proxy::start(&config(up.addr, &server));
    (up, proxy)
}

#[test]
fn slowloris_is_closed_at_the_head_deadline_even_while_trickling() {
    let (up, proxy) = with_deadlines("1s", "30s");
    // Silent after connecting.
    let mut silent = Conn::open(proxy.addr);
    let started = Instant::now();
    assert!(silent.closed_within(Duration::from_secs(4)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A byte every 200 ms never finishes the head: cut at about 1 s anyway.
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if stream.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(
        cut || Conn::from_stream(stream).closed_within(Duration::from_secs(1)),
        "the trickle was not cut"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(up.count(), 0);
    assert_eq!(proxy.browser().get("/").status, 200, "others are served");
    // The trickle is logged and counted; the silent connection is not.
    proxy.wait_for_log(&[
        "WARN",
        "request head too slow; connection closed",
        "server.header_read_timeout (1s)",
    ]);
    assert_eq!(
        support::admin::metric(&proxy, "sessiongate_requests_total{class=\"4xx\"}"),
        1.0
    );
}

#[test]
fn idle_keep_alive_connections_close_at_their_own_deadline() {
    let (_up, proxy) = with_deadlines("10s", "1s");
    let mut conn = Conn::open(proxy.addr);
    assert_eq!(conn.get("/").status, 200);
    // Within the idle time the connection is reused.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(conn.get("/").status, 200);
    let started = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(5)));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[test]
fn a_connection_in_use_outlives_its_first_idle_deadline() {
    // The idle timer is moved lazily (it may fire for a deadline that has
    // since moved on): requests 400 ms apart for 2.4 s keep a connection
    // whose idle time is 1 s, and it still closes once left alone.
    let (up, proxy) = with_deadlines("10s", "1s");
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..6 {
        assert_eq!(conn.get("/").status, 200);
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(up.count(), 6, "all six reached the app");
    let started = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_head_trickled_on_a_kept_alive_connection_is_cut_at_the_head_deadline() {
    // After a request, the connection idles under the long keep-alive
    // time, past the first head's deadline; a head that then starts and
    // trickles must be held to the short head time, not the idle one.
    let (up, proxy) = with_deadlines("1s", "30s");
    let mut conn = Conn::open(proxy.addr);
    assert_eq!(conn.get("/").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
        // Once the proxy has closed, a write fails or the close is read.
        if conn.try_send(b"X-Slow: a\r\n").is_err() {
            break;
        }
    }
    assert!(
        conn.closed_within(Duration::from_millis(500)),
        "the trickle was not cut"
    );
    let cut = started.elapsed();
    assert!(cut < Duration::from_secs(3), "cut after {cut:?}");
    assert_eq!(up.count(), 1);
}

#[test]
fn a_stalled_request_body_gets_408_at_the_body_deadline() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[server]\nbody_read_timeout = \"1s\"\n"));
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    let started = Instant::now();
    let reply = conn.read("POST").expect("an answer");
    assert_eq!(reply.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.browser().get("/").status, 200);
}

#[test]
fn bodies_over_the_cap_get_413_by_length_or_while_streaming() {
    let up = Upstream::start(|r| Response::ok().body(r.body.len().to_string()));
    let proxy = Proxy::start(&config(up.addr, "[server]\nmax_body_bytes = 1000\n"));
    let reply = Conn::open(proxy.addr).exchange("POST", &request("POST", "/", &[], &[b'x'; 1001]));
    assert_eq!(reply.status, 413);
    assert_eq!(up.count(), 0, "refused before reaching the upstream");
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        conn.send(b"200\r\n");
        conn.send(&[b'y'; 0x200]);
        conn.send(b"\r\n");
    }
    conn.send(b"0\r\n\r\n");
    assert_eq!(conn.read("POST").unwrap().status, 413);
    let ok = Conn::open(proxy.addr).exchange("POST", &request("POST", "/", &[], &[b'x'; 1000]));
    assert_eq!((ok.status, ok.text().as_str()), (200, "1000"));
}

#[test]
fn request_heads_over_the_configured_size_get_431() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[server]\nmax_header_bytes = 16384\n"));
    let ok = Conn::open(proxy.addr).exchange(
        "GET",
        &request("GET", "/", &[("X-Pad", &"a".repeat(8000))], b""),
    );
    assert_eq!(ok.status, 200);
    let mut conn = Conn::open(proxy.addr);
    conn.send(&request("GET", "/", &[("X-Pad", &"a".repeat(20_000))], b""));
    assert_eq!(conn.read("GET").unwrap().status, 431);
}

#[test]
fn connections_over_the_cap_wait_until_a_slot_frees() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[server]\nmax_connections = 2\n"));
    let mut first = Conn::open(proxy.addr);
    let mut second = Conn::open(proxy.addr);
    assert_eq!(first.get("/").status, 200);
    assert_eq!(second.get("/").status, 200);
    let mut third = Conn::open(proxy.addr);
    third.send(&request("GET", "/third", &[], b""));
    third.set_timeout(Duration::from_millis(700));
    assert!(
        third.read("GET").is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    third.set_timeout(Duration::from_secs(5));
    assert_eq!(third.read("GET").unwrap().status, 200);
}

#[test]
fn an_upstream_that_never_accepts_is_a_504_at_the_connect_deadline() {
    // A listener with a backlog of one that never accepts: once the backlog
    // is full the kernel drops further SYNs, so connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _listener = rt.block_on(async { socket.listen(1) }).unwrap();
    let addr = _listener.local_addr().unwrap();
    let _fill: Vec<_> = (0..8)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let proxy = Proxy::start(&config_with_upstream(
        addr,
        "connect_timeout = \"1s\"\ntimeout = \"30s\"",
        "",
    ));
    let started = Instant::now();
    let reply = proxy.browser().get("/");
    assert_eq!(reply.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn headers_with_underscores_are_dropped_unless_allowed() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    Conn::open(proxy.addr).exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[("X_Forwarded_User", "admin"), ("X-Fine", "1")],
            b"",
        ),
    );
    assert_eq!(up.last().header("x_forwarded_user"), None);
    assert_eq!(up.last().header("x-fine"), Some("1"));
    let proxy = Proxy::start(&config(
        up.addr,
        "[server]\ndrop_underscore_headers = false\n",
    ));
    Conn::open(proxy.addr).exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[("X_Custom", "1"), ("X_Session_Id", "spoof")],
            b"",
        ),
    );
    assert_eq!(up.last().header("x_custom"), Some("1"));
    assert_ne!(up.last().header("x_session_id"), Some("spoof"));
    assert_ne!(up.last().header("x-session-id"), Some("spoof"));
}
