//! Exhaustion: idle connections by the thousand, floods without cookies and
//! floods that fill the store. New requests keep being served and memory
//! stays bounded.

mod support;

use std::time::Duration;

use support::client::{Conn, request};
use support::{Proxy, Response, Upstream, config};

/// `requests` cookie-less GETs over `threads` keep-alive connections.
fn flood(proxy: &Proxy, threads: usize, requests: usize, path: &'static str) -> Vec<u16> {
    let addr = proxy.addr;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                (0..requests / threads)
                    .map(|_| conn.exchange("GET", &request("GET", path, &[], b"")).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_new_requests() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(
        up.addr,
        "[server]\nmax_connections = 15000\nheader_read_timeout = \"60s\"\n",
    ));
    let idle: Vec<std::net::TcpStream> = (0..10_000)
        .map(|_| std::net::TcpStream::connect(proxy.addr).expect("connect"))
        .collect();
    // The proxy has accepted them all (they count against its cap) ...
    let held = support::poll(Duration::from_secs(30), || {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
            .ok()?
            .count();
        (fds >= 10_000).then_some(fds)
    });
    assert!(held.is_some(), "the proxy did not accept 10k connections");
    // ... and a new browser is still served.
    let mut b = proxy.browser();
    assert_eq!(b.get("/").status, 200);
    assert_eq!(b.get("/").status, 200);
    println!(
        "proxy RSS with 10k idle connections: {} MiB",
        support::rss_mib(proxy.pid())
    );
    drop(idle);
}

#[test]
fn a_cookieless_flood_keeps_memory_flat_and_the_store_empty() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    flood(&proxy, 4, 2_000, "/");
    let before = support::rss_mib(proxy.pid());
    let statuses = flood(&proxy, 8, 16_000, "/");
    assert!(statuses.iter().all(|&s| s == 200));
    let after = support::rss_mib(proxy.pid());
    println!("cookie-less flood: RSS {before} -> {after} MiB");
    assert!(
        after <= before + 16,
        "RSS grew from {before} to {after} MiB"
    );
    assert_eq!(support::admin::sessions_held(&proxy), 0);
}

#[test]
fn a_flood_that_fills_max_sessions_is_refused_and_memory_stays_bounded() {
    let up = Upstream::start(|_| Response::ok().header("X-Session-Set", "cart=[1,2,3]"));
    let proxy = Proxy::start(&config(up.addr, "[session]\nmax_sessions = 2000\n"));
    let mut keeper = proxy.browser();
    assert_eq!(keeper.get("/").status, 200);
    let before = support::rss_mib(proxy.pid());
    let statuses = flood(&proxy, 8, 20_000, "/");
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1999,
        "exactly the room left was used"
    );
    assert_eq!(refused, 20_000 - 1999);
    assert_eq!(support::admin::sessions_held(&proxy), 2000);
    let after = support::rss_mib(proxy.pid());
    println!("full-store flood: RSS {before} -> {after} MiB");
    assert!(
        after <= before + 32,
        "RSS grew from {before} to {after} MiB"
    );
    // Stored sessions keep working: no one was evicted.
    assert_eq!(keeper.get("/").status, 200);
    proxy.wait_for_log(&["WARN", "session store full"]);
}

#[test]
fn a_burst_of_connections_while_the_proxy_is_busy_waits_in_the_listen_queue() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    // Stopped, the proxy accepts nothing: the kernel completes handshakes
    // for as many connections as the listen backlog holds and drops the
    // SYNs of the rest (std's default backlog, 128, holds 129).
    proxy.signal("STOP");
    let queued: Vec<std::net::TcpStream> = (0..500)
        .map_while(|_| {
            std::net::TcpStream::connect_timeout(&proxy.addr, Duration::from_millis(500)).ok()
        })
        .collect();
    proxy.signal("CONT");
    // The kernel caps any backlog at net.core.somaxconn (4096 by default).
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(
        queued.len(),
        500.min(cap + 1),
        "connections queued before one was dropped"
    );
    for stream in queued {
        let mut conn = Conn::from_stream(stream);
        conn.set_timeout(Duration::from_secs(30));
        assert_eq!(
            conn.exchange("GET", &request("GET", "/", &[], b"")).status,
            200
        );
    }
}
