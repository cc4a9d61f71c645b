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
