//! Store micro-benchmarks (criterion): get, set one key and rotate, for each
//! store, in one run, so the added cost of the disk and Redis stores over
//! the memory store reads off side by side.
//!
//!     cargo bench --bench stores
//!
//! The Redis store needs `redis-server` on PATH; the benchmark starts its own
//! on a free port (and skips Redis, saying so, if it is not installed).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sessiongate::config::Durability;
use sessiongate::session::{Changes, Edit, Id, Key, Policy, now_ms};
use sessiongate::store::disk::{DiskOptions, DiskStore};
use sessiongate::store::memory::MemoryStore;
use sessiongate::store::redis::{RedisOptions, RedisStore};
use sessiongate::store::{Origin, Outcome, Store, Target};

fn policy() -> Policy {
    Policy {
        idle_ms: 3_600_000,
        absolute_ms: 86_400_000,
        max_bytes: 4096,
        max_sessions: 10_000_000,
    }
}

fn set(key: &str, i: u64) -> Changes {
    Changes {
        edits: vec![Edit::Set(Key::parse(key).unwrap(), json!(i))],
        ..Changes::default()
    }
}

/// A session of about 200 bytes of JSON, like the sizing target.
async fn seeded<S: Store>(store: &S) -> Target {
    let t = Target {
        id: Id::random(),
        issued_ms: now_ms(),
    };
    let changes = Changes {
        edits: vec![
            Edit::Set(
                Key::parse("user").unwrap(),
                json!({"id": 12345, "name": "Alice Example", "roles": ["admin", "editor"]}),
            ),
            Edit::Set(Key::parse("cart").unwrap(), json!([101, 202, 303, 404])),
            Edit::Set(
                Key::parse("csrf").unwrap(),
                json!("f3a9c1d27e5b48a0b6c4d9e8f7a6b5c4"),
            ),
            Edit::Set(Key::parse("theme").unwrap(), json!("dark")),
        ],
        ..Changes::default()
    };
    store.apply(&t, &changes, &Origin::default()).await.unwrap();
    t
}

fn bench_store<S: Store>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: S) {
    let target = rt.block_on(seeded(&store));
    let mut group = c.benchmark_group(name);
    group.bench_function("get", |b| {
        b.to_async(rt)
            .iter(|| async { store.load(&target.id).await.unwrap() })
    });
    let mut i = 0;
    group.bench_function("set one key", |b| {
        b.to_async(rt).iter(|| {
            i += 1;
            let changes = set("counter", i);
            let store = &store;
            async move {
                store
                    .apply(&target, &changes, &Origin::default())
                    .await
                    .unwrap()
            }
        })
    });
    let mut current = rt.block_on(seeded(&store));
    group.bench_function("rotate", |b| {
        b.iter(|| {
            let rotate = Changes {
                rotate: true,
                ..Changes::default()
            };
            if let Outcome::Applied { target, .. } = rt
                .block_on(store.apply(&current, &rotate, &Origin::default()))
                .unwrap()
            {
                current = target;
            }
        })
    });
    group.finish();
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_store(c, &rt, "memory", MemoryStore::new(policy()));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for durability in [Durability::Immediate, Durability::Relaxed] {
        let options = DiskOptions {
            path: dir.path().join(format!("{durability:?}.db")),
            durability,
            max_file_bytes: None,
            cache_bytes: 64 << 20,
        };
        let store = DiskStore::open(options, policy()).unwrap();
        bench_store(
            c,
            &rt,
            &format!("disk ({durability:?})").to_lowercase(),
            store,
        );
    }
    match start_redis() {
        Some(redis) => {
            let options = RedisOptions {
                url: format!("redis://127.0.0.1:{}/", redis.1),
                key_prefix: "bench:".to_owned(),
                cluster: false,
                timeout: Duration::from_secs(2),
                touch_interval: Duration::from_secs(60),
            };
            let store = rt.block_on(async { RedisStore::connect(options, policy()).unwrap() });
            bench_store(c, &rt, "redis", store);
        }
        None => eprintln!(
            "redis-server not found: skipping the Redis store (apt-get install -y redis-server)"
        ),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = stores
}
criterion_main!(benches);
