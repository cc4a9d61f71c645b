//! Fault soak: mixed load while the upstream and the store fail and come
//! back. Bounded for CI (SOAK_SECONDS per scenario, default 20); run longer
//! with e.g. `SOAK_SECONDS=600 cargo test --test soak -- --nocapture`.
//!
//! Each scenario checks: no panic, the proxy serves again after every fault,
//! its RSS stays flat, and no write acknowledged to a client is lost.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{Browser, Proxy, Recorded, Response, Upstream, config, config_with_upstream};

const WORKERS: usize = 8;

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

fn handler(r: &Recorded) -> Response {
    let parts: Vec<&str> = r.target.split('/').collect();
    match parts.as_slice() {
        ["", "set", key, value] => {
            Response::ok().header("X-Session-Set", &format!("{key}={value}"))
        }
        ["", "login"] => Response::ok().header("X-Session-Rotate", "1"),
        _ => Response::ok(),
    }
}

/// Workers with a session each: they write increasing values of `n` (and
/// read, and rotate now and then), remembering the last acknowledged one.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Vec<AtomicU64>>,
    ok: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Browser>>,
}

impl Load {
    fn start(browsers: Vec<Browser>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new((0..browsers.len()).map(|_| AtomicU64::new(0)).collect());
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = browsers
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                let (stop, acked, ok) = (stop.clone(), acked.clone(), ok.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut step = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        step += 1;
                        let path = match step % 10 {
                            0 => "/login".to_owned(),
                            1 | 2 => "/read".to_owned(),
                            _ => {
                                n += 1;
                                format!("/set/n/{n}")
                            }
                        };
                        let Ok(reply) =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.get(&path)))
                        else {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        if reply.status == 200 {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if path.starts_with("/set/") {
                                acked[i].store(n, Ordering::SeqCst);
                            }
                        }
                    }
                    b
                })
            })
            .collect();
        Load {
            stop,
            acked,
            ok,
            threads,
        }
    }

    /// Waits until `more` further requests succeeded: the proxy serves again.
    fn serves_again(&self, more: usize) {
        let target = self.ok.load(Ordering::SeqCst) + more;
        let again = support::poll(Duration::from_secs(20), || {
            (self.ok.load(Ordering::SeqCst) >= target).then_some(())
        });
        assert!(
            again.is_some(),
            "the proxy did not serve again after a fault"
        );
    }

    fn stop(self) -> (Vec<Browser>, Vec<u64>) {
        self.stop.store(true, Ordering::SeqCst);
        let browsers = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        (
            browsers,
            self.acked
                .iter()
                .map(|a| a.load(Ordering::SeqCst))
                .collect(),
        )
    }
}

/// An upstream outage: stopped, then back on the same port after 700 ms.
fn restart_upstream(up: Upstream) -> Upstream {
    let addr = up.addr;
    drop(up);
    std::thread::sleep(Duration::from_millis(700));
    Upstream::start_on(addr, handler)
}

/// Every worker's session holds at least its last acknowledged value.
fn assert_no_acknowledged_write_lost(
    proxy: &Proxy,
    up: &Upstream,
    browsers: Vec<Browser>,
    acked: &[u64],
) {
    for (i, mut b) in browsers.into_iter().enumerate() {
        b.addr = proxy.addr;
        assert_eq!(b.get("/read").status, 200);
        let stored = up.last().session()["n"].as_u64().unwrap_or(0);
        assert!(
            stored >= acked[i],
            "worker {i}: acknowledged n={}, stored n={stored}",
            acked[i]
        );
    }
}

fn assert_healthy(proxy: &mut Proxy, rss_before: u64) {
    assert!(proxy.alive(), "the proxy died");
    let logs = proxy.logs().join("\n");
    assert!(!logs.contains("panicked"), "a panic:\n{logs}");
    let rss_after = support::rss_mib(proxy.pid());
    println!("soak: proxy RSS {rss_before} -> {rss_after} MiB");
    assert!(
        rss_after <= rss_before + 32,
        "RSS grew from {rss_before} to {rss_after} MiB"
    );
}

#[test]
fn soak_with_redis_and_upstream_restarts() {
    let mut redis = RedisServer::start_durable();
    let mut up = Upstream::start(handler);
    let up_addr = up.addr;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    );
    let upstream = "timeout = \"2s\"\nconnect_timeout = \"500ms\"";
    let text = config_with_upstream(up_addr, upstream, &store);
    let mut proxy = Proxy::start(&text);
    let browsers: Vec<Browser> = (0..WORKERS).map(|_| proxy.browser()).collect();
    let load = Load::start(browsers);
    load.serves_again(200);
    let rss_before = support::rss_mib(proxy.pid());
    let deadline = Instant::now() + seconds();
    let mut faults = 0;
    while Instant::now() < deadline {
        if faults % 2 == 0 {
            redis.kill();
            std::thread::sleep(Duration::from_millis(700));
            redis.restart();
        } else {
            up = restart_upstream(up);
        }
        faults += 1;
        load.serves_again(100);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (browsers, acked) = load.stop();
    println!("soak: {faults} faults, acknowledged writes per worker {acked:?}");
    assert!(faults >= 2);
    assert_healthy(&mut proxy, rss_before);
    assert_no_acknowledged_write_lost(&proxy, &up, browsers, &acked);
}

/// Attaches strace to the proxy and fails every fsync/fdatasync with EIO
/// until the returned child is killed.
fn inject_fsync_errors(pid: u32) -> std::process::Child {
    support::attach_strace(
        pid,
        &[
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            "inject=fsync,fdatasync:error=EIO",
            "-o",
            "/dev/null",
        ],
    )
}

#[test]
fn soak_with_disk_io_errors_and_upstream_restarts() {
    let mut up = Upstream::start(handler);
    let up_addr = up.addr;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[store]\nkind = \"disk\"\npath = \"{}\"\n",
        dir.path().join("s.db").display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config(up_addr, &extra)).unwrap();
    let mut proxy = Proxy::spawn(dir, path, &[]);
    let browsers: Vec<Browser> = (0..WORKERS).map(|_| proxy.browser()).collect();
    let load = Load::start(browsers);
    load.serves_again(200);
    let rss_before = support::rss_mib(proxy.pid());
    let deadline = Instant::now() + seconds();
    let (mut faults, mut saw_io_error) = (0, false);
    while Instant::now() < deadline {
        if faults % 2 == 0 {
            let mut strace = inject_fsync_errors(proxy.pid());
            std::thread::sleep(Duration::from_millis(700));
            let _ = strace.kill();
            let _ = strace.wait();
            saw_io_error |= proxy.logs().iter().any(|l| l.contains("status=503"));
        } else {
            up = restart_upstream(up);
        }
        faults += 1;
        load.serves_again(100);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (browsers, acked) = load.stop();
    println!("soak: {faults} faults, acknowledged writes per worker {acked:?}");
    assert!(
        saw_io_error,
        "the injected I/O errors reached the store (503s)"
    );
    assert_healthy(&mut proxy, rss_before);
    // A crash after the faults: every acknowledged write is on disk.
    let (dir, path) = proxy.kill();
    let proxy = Proxy::spawn(dir, path, &[]);
    assert_no_acknowledged_write_lost(&proxy, &up, browsers, &acked);
}
