//! The disk store with the real binary: restarts, kill -9 under load, a
//! second process, corrupt files, a full disk, churn.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::{Browser, Proxy, Recorded, Response, Upstream, config};

/// Sets `X-Session-Set: <key>=<value>` from the path `/set/<key>/<value>`.
fn setter() -> Upstream {
    Upstream::start(|r: &Recorded| {
        let parts: Vec<&str> = r.target.split('/').collect();
        match parts.as_slice() {
            ["", "set", key, value] => {
                Response::ok().header("X-Session-Set", &format!("{key}={value}"))
            }
            _ => Response::ok(),
        }
    })
}

fn disk_config(up: &Upstream, dir: &std::path::Path, extra: &str) -> String {
    let db = dir.join("sessions.db");
    config(
        up.addr,
        &format!(
            "[store]\nkind = \"disk\"\npath = \"{}\"\n{extra}",
            db.display()
        ),
    )
}

fn start_disk(up: &Upstream, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let text = disk_config(up, dir.path(), extra);
    let path = dir.path().join("sessiongate.toml");
    std::fs::write(&path, text).unwrap();
    Proxy::spawn(dir, path, &[])
}

#[test]
fn sessions_survive_a_restart() {
    survive_restart("");
}

#[test]
fn sessions_survive_a_restart_with_relaxed_durability() {
    survive_restart("durability = \"relaxed\"\n");
}

#[test]
fn sessions_survive_a_restart_without_the_read_cache() {
    survive_restart("cache_bytes = 0\n");
}

fn survive_restart(extra: &str) {
    let up = setter();
    let mut proxy = start_disk(&up, extra);
    let mut b = proxy.browser();
    b.get("/set/user/\"alice\"");
    let id = up.last().session_id().to_owned();
    assert_eq!(proxy.signal_and_wait("TERM").code(), Some(0));
    let (dir, path) = proxy.kill();
    let proxy = Proxy::spawn(dir, path, &[]);
    b.addr = proxy.addr;
    b.get("/");
    let seen = up.last();
    assert_eq!(seen.session_id(), id);
    assert!(!seen.is_new());
    assert_eq!(seen.session(), json!({"user": "alice"}));
}

#[test]
fn every_acknowledged_change_survives_kill_9_in_the_middle_of_a_parallel_write_load() {
    const WRITERS: usize = 16;
    let up = setter();
    let mut proxy = start_disk(&up, "");
    // One browser per writer, each with its own session, kept across rounds.
    let browsers: Vec<Browser> = (0..WRITERS)
        .map(|_| {
            let mut b = proxy.browser();
            b.get("/set/n/0");
            b
        })
        .collect();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    for round in 0..10u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = browsers
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut b)| {
                b.addr = proxy.addr;
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = acked[i].load(Ordering::SeqCst);
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            b.get(&format!("/set/n/{n}")).status == 200
                        }));
                        match ok {
                            Ok(true) => acked[i].store(n, Ordering::SeqCst),
                            _ => return, // the proxy died under us
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + 37 * round));
        let (dir, path) = proxy.kill(); // SIGKILL
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        proxy = Proxy::spawn(dir, path, &[]);
        for (i, b) in browsers.iter().enumerate() {
            let mut b = b.clone();
            b.addr = proxy.addr;
            // Found by its own target: a request the killed proxy had sent
            // may still be recorded late by a busy upstream.
            let probe = format!("/probe/{round}/{i}");
            b.get(&probe);
            let seen = up
                .requests()
                .into_iter()
                .rfind(|r| r.target == probe)
                .expect("the probe reached the upstream");
            let stored = seen.session()["n"].as_u64().expect("the session survived");
            let acked = acked[i].load(Ordering::SeqCst);
            // The change in flight at the kill may or may not be there.
            assert!(
                stored == acked || stored == acked + 1,
                "round {round}, writer {i}: acknowledged {acked}, stored {stored}"
            );
        }
    }
    let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(
        total > 100,
        "the load was real: {total} acknowledged writes"
    );
}

#[test]
fn a_second_process_on_the_same_file_refuses_to_start() {
    let up = setter();
    let first = start_disk(&up, "");
    let second = first.dir.path().join("second.toml");
    std::fs::write(
        &second,
        std::fs::read_to_string(&first.config_path).unwrap(),
    )
    .unwrap();
    let (code, err) = support::run_expecting_failure(&second);
    assert_ne!(code, 0);
    assert!(
        err.contains("another process") && err.contains("sessions.db"),
        "{err}"
    );
    assert_eq!(
        first.browser().get("/").status,
        200,
        "the first keeps serving"
    );
}

#[test]
fn a_corrupt_or_foreign_file_is_refused_by_name_and_left_untouched() {
    let up = setter();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let path = dir.path().join("sessiongate.toml");
    std::fs::write(&path, disk_config(&up, dir.path(), "")).unwrap();

    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let (code, err) = support::run_expecting_failure(&path);
    assert_ne!(code, 0);
    assert!(
        err.contains("sessions.db") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file was not changed"
    );

    std::fs::remove_file(&db).unwrap();
    let other = rusqlite::Connection::open(&db).unwrap();
    other
        .execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY); INSERT INTO invoices VALUES (1);",
        )
        .unwrap();
    drop(other);
    let before = std::fs::read(&db).unwrap();
    let (code, err) = support::run_expecting_failure(&path);
    assert_ne!(code, 0);
    assert!(
        err.contains("sessions.db") && err.contains("not sessiongate"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn a_read_only_file_is_refused_at_startup_not_served_with_503s() {
    use std::os::unix::fs::PermissionsExt;
    let up = setter();
    let first = start_disk(&up, "");
    let (dir, config_path) = first.kill();
    let db = dir.path().join("sessions.db");
    // Only the database itself is write-protected: its lock and WAL files
    // left by the first run stay writable for anyone.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mode = if path == db { 0o444 } else { 0o666 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The directory stays writable (the lock file lives there); root writes
    // any file, so as root the proxy runs as nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let mut cmd = match root {
        true => {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(support::binary());
            c
        }
        false => std::process::Command::new(support::binary()),
    };
    cmd.arg("--config").arg(&config_path);
    let (code, err) = support::expect_refusal(cmd);
    assert_ne!(code, 0);
    assert!(
        err.contains("sessions.db") && err.contains("read-only"),
        "{err}"
    );
}

#[test]
fn a_full_disk_gets_503_for_that_write_while_reads_and_the_file_stay_good() {
    let up = setter();
    let big = "x".repeat(3000);
    let proxy = start_disk(&up, "max_file_bytes = 65536\n[session]\nmax_bytes = 8192\n");
    let mut keeper = proxy.browser();
    keeper.get("/set/k/1");
    let mut statuses = vec![];
    for i in 0..60 {
        let mut b = proxy.browser();
        statuses.push(b.get(&format!("/set/big/\"{big}{i}\"")).status);
        if statuses.last() == Some(&503) {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&503),
        "the store filled up: {statuses:?}"
    );
    proxy.wait_for_log(&["WARN", "status=503"]);
    // Reads and existing sessions still work.
    keeper.get("/");
    assert_eq!(up.last().session(), json!({"k": 1}));
    assert_eq!(proxy.browser().get("/").status, 200);
    // The file is consistent: it reopens (quick_check) with the data.
    let (dir, path) = proxy.kill();
    let proxy = Proxy::spawn(dir, path, &[]);
    keeper.addr = proxy.addr;
    keeper.get("/");
    assert_eq!(up.last().session(), json!({"k": 1}));
}

#[test]
fn churn_does_not_grow_the_file_without_bound() {
    let up = setter();
    let proxy = start_disk(
        &up,
        "[session]\nidle_timeout = \"1s\"\nabsolute_timeout = \"2s\"\n",
    );
    let db = proxy.dir.path().join("sessions.db");
    let value = format!("\"{}\"", "v".repeat(1000));
    let mut sizes = vec![];
    for _ in 0..3 {
        for _ in 0..300 {
            proxy.browser().get(&format!("/set/blob/{value}"));
        }
        let emptied = support::poll(Duration::from_secs(10), || {
            (support::admin::sessions_held(&proxy) == 0).then_some(())
        });
        assert!(emptied.is_some());
        // Tombstones live until the absolute deadline; then the sweep frees them.
        std::thread::sleep(Duration::from_millis(2500));
        let len = std::fs::metadata(&db).unwrap().len()
            + std::fs::metadata(db.with_extension("db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        sizes.push(len);
    }
    assert!(
        sizes[2] <= sizes[0] + sizes[0] / 2,
        "the file grows with churn: {sizes:?}"
    );
}
