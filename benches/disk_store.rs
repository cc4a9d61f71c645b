//! Disk store throughput: durable writes/s and reads/s through the store
//! with 64 concurrent writers, beside the machine's raw fsync rate; reads
//! with the read cache (the default) and from the file (cache off).
//!
//!     cargo bench --bench disk_store
//!
//! Not a test: it prints numbers to compare, it asserts nothing. Set
//! BENCH_SECONDS to run each phase longer (default 3).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiongate::config::Durability;
use sessiongate::session::{Changes, Edit, Id, Key, Policy, now_ms};
use sessiongate::store::disk::{DiskOptions, DiskStore};
use sessiongate::store::{Origin, Store, Target};

const WRITERS: usize = 64;

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

/// fdatasync calls per second on a small file in `dir`: the ceiling for one
/// fsync per write.
fn raw_fsync_rate(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < seconds() {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn set(i: u64) -> Changes {
    Changes {
        edits: vec![Edit::Set(Key::parse("n").unwrap(), json!(i))],
        ..Changes::default()
    }
}

async fn phase<F, Fut>(name: &str, store: Arc<DiskStore>, targets: Arc<Vec<Target>>, op: F) -> f64
where
    F: Fn(Arc<DiskStore>, Target, u64) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + seconds();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, targets, done) = (store.clone(), targets.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    op(store.clone(), targets[w], i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("{name:<44} {rate:>10.0} /s");
    rate
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!(
        "disk store benchmark, {WRITERS} concurrent clients, {:?} per phase, files in {}",
        seconds(),
        dir.path().display()
    );
    let fsync = raw_fsync_rate(dir.path());
    println!(
        "{:<44} {fsync:>10.0} /s",
        "raw fsync (4 KiB write + fdatasync)"
    );
    let policy = Policy {
        idle_ms: 3_600_000,
        absolute_ms: 86_400_000,
        max_bytes: 4096,
        max_sessions: 1_000_000,
    };
    let runs = [
        (Durability::Immediate, 64 << 20),
        (Durability::Relaxed, 64 << 20),
        (Durability::Immediate, 0),
    ];
    for (durability, cache_bytes) in runs {
        let options = DiskOptions {
            path: dir.path().join(format!("{durability:?}-{cache_bytes}.db")),
            durability,
            max_file_bytes: None,
            cache_bytes,
        };
        let store = Arc::new(DiskStore::open(options, policy).unwrap());
        let targets: Arc<Vec<Target>> = Arc::new(
            (0..WRITERS)
                .map(|_| Target {
                    id: Id::random(),
                    issued_ms: now_ms(),
                })
                .collect(),
        );
        let cache = if cache_bytes == 0 { "off" } else { "on" };
        let label = format!("durability = {durability:?}, cache {cache}").to_lowercase();
        let writes = phase(
            &format!("writes, {label}"),
            store.clone(),
            targets.clone(),
            |s, t, i| async move {
                s.apply(&t, &set(i), &Origin::default()).await.unwrap();
            },
        )
        .await;
        phase(
            &format!("reads, {label}"),
            store.clone(),
            targets.clone(),
            |s, t, _| async move {
                s.load(&t.id).await.unwrap();
            },
        )
        .await;
        if durability == Durability::Immediate && cache_bytes > 0 {
            println!(
                "{:<44} {:>10.1} x",
                "durable writes per raw fsync",
                writes / fsync
            );
        }
    }
}
