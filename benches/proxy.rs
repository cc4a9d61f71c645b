//! sessiongate against nginx, in one run on this machine:
//!
//!     cargo bench --bench proxy
//!
//! Starts on 127.0.0.1 a fast upstream (nginx returning "ok"), nginx as a
//! plain reverse proxy (proxy_pass, upstream keepalive, one worker) and
//! sessiongate (one worker thread), then drives each with the same load from
//! `oha`, several rounds alternating. The proxy under test is pinned to CPU
//! 0, the load generator, the upstream and Redis to CPU 1. For every
//! scenario it prints throughput, latency at a fixed rate (once all
//! connections are open, and over the whole run) and CPU time per
//! request of the proxy process (from /proc; at the fixed rate and at full
//! throughput), with the sessiongate/nginx
//! ratios, and writes the results with the machine's description to
//! BENCHMARKS.md. Not a test: it asserts nothing.
//!
//! Scenario (a) also measures two floors, on the same runtime and allocator
//! as sessiongate, each this same binary started with a flag: "hyper
//! alone", a reverse proxy made of hyper's server and pooled client and
//! nothing else (`hyper_floor`, `--hyper-floor`), and "hyper paired", the
//! leanest proxy hyper allows, one hyper client connection per browser
//! connection driven in that connection's task, as sessiongate lends them
//! (`hyper_paired`, `--hyper-paired`). Their ratios to nginx are about what
//! a proxy built on hyper costs before it does any work of its own;
//! sessiongate's ratios to them are the cost of the sessions.
//!
//! Needs nginx, oha (`cargo install oha --locked`), redis-server, taskset.
//! BENCH_SECONDS (per run, default 3), BENCH_ROUNDS (default 3),
//! BENCH_RATE (fixed-rate requests/s, default 5000), BENCH_SCENARIOS (e.g.
//! "a,b") and BENCH_CONNECTIONS (e.g. "50") shorten or lengthen it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The allocator sessiongate's binary uses, so that the hyper floor and the
// memory figure are measured as in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pinned(cpu: &str, program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, program]);
    cmd
}

/// A child process stopped when dropped: SIGTERM first, so that nginx's
/// master takes its worker down with it (SIGKILL would orphan the worker,
/// still listening), then SIGKILL if it lingers.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time of a process and all its threads and children, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                total += cpu_ns(child);
            }
        }
    }
    total
}

fn nginx(dir: &Path, name: &str, cpu: &str, http: &str) -> Running {
    let conf = dir.join(format!("{name}.conf"));
    let text = format!(
        "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {dir}/{name}.error.log;\nevents {{ worker_connections 8192; }}\n\
         http {{\n access_log off;\n client_body_temp_path {dir}/{name}-body;\n proxy_temp_path {dir}/{name}-proxy;\n\
         fastcgi_temp_path {dir}/{name}-fcgi;\n uwsgi_temp_path {dir}/{name}-uwsgi;\n scgi_temp_path {dir}/{name}-scgi;\n{http}\n}}\n",
        pid = dir.join(format!("{name}.pid")).display(),
        dir = dir.display(),
    );
    std::fs::write(&conf, text).unwrap();
    let child = pinned(cpu, "nginx")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    Running(child)
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Memory,
    Disk,
    Redis,
}

struct Scenario {
    key: &'static str,
    title: &'static str,
    path: &'static str,
    cookie: bool,
    store: Store,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "a",
        title: "returning browser, session read only",
        path: "/",
        cookie: true,
        store: Store::Memory,
    },
    Scenario {
        key: "b",
        title: "every request sets one key (memory store)",
        path: "/set",
        cookie: true,
        store: Store::Memory,
    },
    Scenario {
        key: "c",
        title: "cookie-less first visits",
        path: "/",
        cookie: false,
        store: Store::Memory,
    },
    Scenario {
        key: "d",
        title: "every request sets one key (disk store, immediate)",
        path: "/set",
        cookie: true,
        store: Store::Disk,
    },
    Scenario {
        key: "e",
        title: "every request sets one key (Redis store)",
        path: "/set",
        cookie: true,
        store: Store::Redis,
    },
];

fn sessiongate(dir: &Path, port: u16, upstream: u16, store: Store, redis_port: u16) -> Running {
    let store = match store {
        Store::Memory => "kind = \"memory\"".to_owned(),
        Store::Disk => format!(
            "kind = \"disk\"\npath = \"{}\"",
            dir.join(format!("bench-{port}.db")).display()
        ),
        Store::Redis => format!("kind = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}/\""),
    };
    let conf = dir.join(format!("sessiongate-{port}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\nupstream = \"http://127.0.0.1:{upstream}\"\n[secret]\nvalue = \"benchmark-secret-0123456789abcdef-0123456789\"\n\
         [cookie]\nsecure = false\n[server]\nworkers = 1\n[store]\n{store}\n[admin]\nlisten = \"off\"\n"
    );
    std::fs::write(&conf, text).unwrap();
    let mut cmd = pinned(PROXY_CPU, env!("CARGO_BIN_EXE_sessiongate"));
    cmd.arg("--config").arg(&conf).env("RUST_LOG", "warn");
    serving(cmd, port, "sessiongate")
}

/// Starts a proxy, quiet, and waits until it listens on `port`.
fn serving(mut cmd: Command, port: u16, what: &str) -> Running {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    wait_listening(port);
    Running(child)
}

/// A floor proxy (`flag` is `--hyper-floor` or `--hyper-paired`), started
/// as a child of this binary on the proxies' CPU.
fn floor_proxy(flag: &str, port: u16, upstream: u16) -> Running {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut cmd = pinned(PROXY_CPU, exe.to_str().expect("a UTF-8 path"));
    cmd.args([flag, &port.to_string(), &upstream.to_string()]);
    serving(cmd, port, flag)
}

/// Serves `port` on sessiongate's runtime (one current-thread runtime, as
/// with `server.workers = 1`), each accepted connection on a task of its
/// own running `serve`.
fn floor_server<F, Fut>(port: u16, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        }
    });
}

/// A reverse proxy with hyper and nothing else: hyper's HTTP/1.1 server and
/// pooled client, no checks, no headers touched but the target.
fn hyper_floor(port: u16, upstream: u16) {
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
    let base = format!("http://127.0.0.1:{upstream}");
    floor_server(port, move |stream| {
        let (client, base) = (client.clone(), base.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let client = client.clone();
            let target = format!(
                "{base}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            async move {
                *req.uri_mut() = target.parse().unwrap();
                match client.request(req).await {
                    Ok(rsp) => {
                        Ok::<_, std::convert::Infallible>(rsp.map(http_body_util::Either::Left))
                    }
                    Err(_) => Ok(Response::builder()
                        .status(502)
                        .body(http_body_util::Either::Right(
                            Full::new(bytes::Bytes::new()),
                        ))
                        .unwrap()),
                }
            }
        });
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
}

/// The leanest reverse proxy hyper allows: hyper's HTTP/1.1 server, and for
/// each browser connection one upstream connection of hyper's client (no
/// pool), driven in the browser connection's task as sessiongate drives
/// the connections it lends; no checks, no headers touched. What
/// sessiongate would cost with no session work and no pool at all.
fn hyper_paired(port: u16, upstream: u16) {
    use hyper::body::Incoming;
    use hyper::client::conn::http1::SendRequest;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use std::sync::{Arc, Mutex};

    floor_server(port, move |stream| async move {
        let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await
        else {
            return;
        };
        // hyper's service is `Fn`, its sender `&mut`; one request at a time,
        // so the lock is never contended.
        let sender: Arc<Mutex<SendRequest<Incoming>>> = Arc::new(Mutex::new(sender));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let sent = sender.lock().unwrap().send_request(req);
            async move {
                Ok::<_, std::convert::Infallible>(match sent.await {
                    Ok(rsp) => rsp.map(http_body_util::Either::Left),
                    Err(_) => Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                        .unwrap(),
                })
            }
        });
        let server = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = server => {}
            _ = conn => {}
        }
    });
}

/// A session cookie with data, from one real request through sessiongate.
fn session_cookie(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /set HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let line = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: sessionid="))
        .expect("a session cookie");
    line["set-cookie: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Latency percentiles count only requests sent this long after a run
/// starts. oha opens all its connections at once when a run starts, so with
/// 500 connections the first few hundred milliseconds are a burst of
/// connection set-ups (accept, task spawn, upstream checkout) that a 3 s
/// run's p99 would otherwise be made of; wrk, likewise, times requests
/// only once their connection is open. The whole run's p99 is reported
/// beside it, and CPU per request always counts the whole run.
const STEADY_AFTER_S: f64 = 1.0;

#[derive(Default, Clone, Copy)]
struct Measure {
    rps: f64,
    /// Latency at the fixed rate, from [`STEADY_AFTER_S`] on.
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// p99 at the fixed rate over the whole run, connection set-up included.
    p99_whole_ms: f64,
    /// CPU per request at the fixed rate (latency run).
    cpu_us: f64,
    /// CPU per request at maximum throughput (requests batch up per wakeup).
    cpu_max_us: f64,
    errors: f64,
}

/// The requests of one run: where they go and how many at once.
struct Load<'a> {
    port: u16,
    path: &'a str,
    cookie: Option<&'a str>,
    connections: usize,
    seconds: u64,
}

/// One oha run (at `rate` requests/s, or as fast as it goes); returns the
/// JSON summary and the proxy's CPU ns. With `db`, oha also writes every
/// request's start and duration there.
fn oha(
    load: &Load,
    rate: Option<u32>,
    proxy_pid: u32,
    db: Option<&Path>,
) -> (serde_json::Value, u64) {
    let mut cmd = pinned(LOAD_CPU, "oha");
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        &format!("{}s", load.seconds),
        "-c",
        &load.connections.to_string(),
    ]);
    if let Some(rate) = rate {
        cmd.args(["-q", &rate.to_string()]);
    }
    if let Some(cookie) = load.cookie {
        cmd.args(["-H", &format!("Cookie: {cookie}")]);
    }
    if let Some(db) = db {
        cmd.arg("--db-url").arg(db);
    }
    cmd.arg(format!("http://127.0.0.1:{}{}", load.port, load.path));
    let before = cpu_ns(proxy_pid);
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .expect("oha (cargo install oha --locked)");
    let cpu = cpu_ns(proxy_pid) - before;
    (serde_json::from_slice(&out.stdout).expect("oha JSON"), cpu)
}

fn measure(
    port: u16,
    pid: u32,
    scenario: &Scenario,
    cookie: Option<&str>,
    connections: usize,
    rate: u32,
    seconds: u64,
) -> Measure {
    let load = Load {
        port,
        path: scenario.path,
        cookie: if scenario.cookie { cookie } else { None },
        connections,
        seconds,
    };
    let (max, max_cpu) = oha(&load, None, pid, None);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    let (fixed, cpu) = oha(&load, Some(rate), pid, Some(&db));
    let steady = steady_latencies_ms(&db);
    let ok = |v: &serde_json::Value| v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let total = |v: &serde_json::Value| {
        v["statusCodeDistribution"]
            .as_object()
            .map_or(0.0, |m| m.values().filter_map(|n| n.as_f64()).sum())
    };
    Measure {
        rps: ok(&max) / max["summary"]["total"].as_f64().unwrap_or(1.0),
        p50_ms: percentile(&steady, 0.5),
        p99_ms: percentile(&steady, 0.99),
        p999_ms: percentile(&steady, 0.999),
        p99_whole_ms: fixed["latencyPercentiles"]["p99"]
            .as_f64()
            .unwrap_or(f64::NAN)
            * 1000.0,
        cpu_us: cpu as f64 / 1000.0 / ok(&fixed).max(1.0),
        cpu_max_us: max_cpu as f64 / 1000.0 / ok(&max).max(1.0),
        errors: (total(&max) - ok(&max)) + (total(&fixed) - ok(&fixed)),
    }
}

impl Measure {
    /// The figures in the report's column order, errors last.
    fn columns(&self) -> [f64; 8] {
        [
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.p99_whole_ms,
            self.cpu_us,
            self.cpu_max_us,
            self.errors,
        ]
    }
}

/// Decimals of each of [`Measure::columns`] in the report.
const DECIMALS: [usize; 8] = [0, 2, 2, 2, 2, 1, 1, 0];

/// The durations, in ms and sorted, of the successful requests oha wrote
/// to `db` that were sent [`STEADY_AFTER_S`] or more into the run.
fn steady_latencies_ms(db: &Path) -> Vec<f64> {
    let conn = rusqlite::Connection::open(db).expect("oha's request database");
    let mut query = conn
        .prepare("SELECT duration * 1000.0 FROM oha WHERE start >= ?1 ORDER BY duration")
        .expect("oha's table (oha >= 1.5 writes one with --db-url)");
    query
        .query_map([STEADY_AFTER_S], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The `q` quantile of sorted values, nearest rank; NaN when there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// One scenario at one connection count: the medians of each proxy's runs.
struct Row {
    nginx: Measure,
    sessiongate: Measure,
    /// The hyper floors, measured in scenario (a) only.
    floors: Vec<(&'static Floor, Measure)>,
}

impl Row {
    /// Each measured proxy with its name.
    fn proxies(&self) -> Vec<(&'static str, &Measure)> {
        let mut all = vec![("nginx", &self.nginx), ("sessiongate", &self.sessiongate)];
        all.extend(self.floors.iter().map(|(f, m)| (f.name, m)));
        all
    }

    /// Ratios to nginx, and sessiongate's to each floor.
    fn ratios(&self) -> Vec<(String, Ratios)> {
        let mut all = vec![(
            "sessiongate/nginx".to_owned(),
            Ratios::of(&self.sessiongate, &self.nginx),
        )];
        for (f, m) in &self.floors {
            all.push((format!("{}/nginx", f.name), Ratios::of(m, &self.nginx)));
        }
        for (f, m) in &self.floors {
            all.push((
                format!("sessiongate/{}", f.name),
                Ratios::of(&self.sessiongate, m),
            ));
        }
        all
    }
}

/// A proxy of hyper's doing nothing else, measured beside sessiongate.
struct Floor {
    name: &'static str,
    /// The flag this binary starts it with.
    flag: &'static str,
    serve: fn(u16, u16),
}

const FLOORS: [Floor; 2] = [
    Floor {
        name: "hyper alone",
        flag: "--hyper-floor",
        serve: hyper_floor,
    },
    Floor {
        name: "hyper paired",
        flag: "--hyper-paired",
        serve: hyper_paired,
    },
];

/// One proxy's figures divided by another's, in the report's column order
/// (errors have no ratio).
struct Ratios([f64; 7]);

impl Ratios {
    fn of(a: &Measure, b: &Measure) -> Ratios {
        let (a, b) = (a.columns(), b.columns());
        Ratios(std::array::from_fn(|i| a[i] / b[i]))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn combine(runs: &[Measure]) -> Measure {
    let m = |f: fn(&Measure) -> f64| median(runs.iter().map(f).collect());
    Measure {
        rps: m(|r| r.rps),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        p999_ms: m(|r| r.p999_ms),
        p99_whole_ms: m(|r| r.p99_whole_ms),
        cpu_us: m(|r| r.cpu_us),
        cpu_max_us: m(|r| r.cpu_max_us),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {kernel}, {mem}; {nginx}")
}

/// RSS of this process after storing `n` sessions of about 200 bytes of JSON
/// in the memory store (the store's own footprint, without HTTP).
fn memory_for_sessions(n: usize) -> (f64, usize) {
    use sessiongate::session::{Changes, Edit, Id, Key, Policy, now_ms};
    use sessiongate::store::memory::MemoryStore;
    use sessiongate::store::{Origin, Store, Target};
    fn rss_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let before = rss_mib();
    let policy = Policy {
        idle_ms: 3_600_000,
        absolute_ms: 86_400_000,
        max_bytes: 4096,
        max_sessions: n + 1,
    };
    let store = MemoryStore::new(policy);
    let changes = Changes {
        edits: vec![
            Edit::Set(
                Key::parse("user").unwrap(),
                serde_json::json!({"id": 1234567, "name": "Alice Example", "roles": ["admin", "editor"]}),
            ),
            Edit::Set(
                Key::parse("cart").unwrap(),
                serde_json::json!([1001, 2002, 3003, 4004, 5005]),
            ),
            Edit::Set(
                Key::parse("csrf").unwrap(),
                serde_json::json!("f3a9c1d27e5b48a0b6c4d9e8f7a6b5c4"),
            ),
            Edit::Set(
                Key::parse("prefs").unwrap(),
                serde_json::json!({"theme": "dark", "lang": "en-GB", "tz": "Europe/London"}),
            ),
        ],
        ..Changes::default()
    };
    let mut size = 0;
    rt.block_on(async {
        for _ in 0..n {
            let t = Target {
                id: Id::random(),
                issued_ms: now_ms(),
            };
            store.apply(&t, &changes, &Origin::default()).await.unwrap();
            if size == 0
                && let sessiongate::store::Lookup::Live(v) = store.load(&t.id).await.unwrap()
            {
                size = v.data.len();
            }
        }
    });
    let used = rss_mib() - before;
    drop(store);
    (used, size)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    for floor in &FLOORS {
        if let Some(at) = args.iter().position(|a| a == floor.flag) {
            let port = |i: usize| {
                args[at + i]
                    .parse()
                    .unwrap_or_else(|_| panic!("{} PORT UPSTREAM_PORT", floor.flag))
            };
            return (floor.serve)(port(1), port(2));
        }
    }
    let seconds: u64 = env_or("BENCH_SECONDS", 3);
    assert!(
        seconds as f64 > STEADY_AFTER_S,
        "BENCH_SECONDS must exceed the {STEADY_AFTER_S} s of connection set-up left out of latency"
    );
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let rate: u32 = env_or("BENCH_RATE", 5000);
    let wanted: String = env_or("BENCH_SCENARIOS", "a,b,c,d,e".to_owned());
    let connections: Vec<usize> = env_or("BENCH_CONNECTIONS", "50,500".to_owned())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (upstream, nginx_port, redis_port) = (free_port(), free_port(), free_port());
    let _upstream = nginx(
        dir.path(),
        "upstream",
        LOAD_CPU,
        &format!(
            "server {{ listen 127.0.0.1:{upstream} backlog=4096; keepalive_requests 100000; location / {{ return 200 \"ok\"; }} location /set {{ add_header X-Session-Set \"n=1\"; return 200 \"ok\"; }} }}"
        ),
    );
    let nginx_proxy = nginx(
        dir.path(),
        "proxy",
        PROXY_CPU,
        &format!(
            "upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 100000; }}\n\
             server {{ listen 127.0.0.1:{nginx_port} backlog=4096; keepalive_requests 100000; location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    );
    let _redis = Running(
        pinned(LOAD_CPU, "redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_listening(upstream);
    wait_listening(nginx_port);
    wait_listening(redis_port);
    println!(
        "sessiongate vs nginx: {seconds}s per run, {rounds} rounds, fixed rate {rate}/s; proxies on CPU {PROXY_CPU}, load on CPU {LOAD_CPU}"
    );
    println!("machine: {}", machine());

    let mut report = String::new();
    let mut rows: BTreeMap<(String, usize), Row> = BTreeMap::new();
    let floors: Vec<(&Floor, u16, Running)> = FLOORS
        .iter()
        .map(|f| {
            let port = free_port();
            (f, port, floor_proxy(f.flag, port, upstream))
        })
        .collect();
    for scenario in SCENARIOS
        .iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.key))
    {
        let port = free_port();
        let sg = sessiongate(dir.path(), port, upstream, scenario.store, redis_port);
        let cookie = session_cookie(port);
        // The floor proxies the same traffic in every scenario; measured once.
        let with_floor = scenario.key == "a";
        for &c in &connections {
            let (mut ng_runs, mut sg_runs) = (vec![], vec![]);
            let mut floor_runs: Vec<Vec<Measure>> = floors.iter().map(|_| vec![]).collect();
            let run =
                |port: u16, pid: u32| measure(port, pid, scenario, Some(&cookie), c, rate, seconds);
            for _ in 0..rounds {
                ng_runs.push(run(nginx_port, nginx_proxy.0.id()));
                sg_runs.push(run(port, sg.0.id()));
                if with_floor {
                    for ((_, port, proc), runs) in floors.iter().zip(&mut floor_runs) {
                        runs.push(run(*port, proc.0.id()));
                    }
                }
            }
            let row = Row {
                nginx: combine(&ng_runs),
                sessiongate: combine(&sg_runs),
                floors: match with_floor {
                    true => (floors.iter().zip(&floor_runs))
                        .map(|((f, _, _), runs)| (*f, combine(runs)))
                        .collect(),
                    false => vec![],
                },
            };
            print_row(scenario, c, &row);
            rows.insert((scenario.key.to_owned(), c), row);
        }
        drop(sg);
    }
    drop(floors);
    let (mib, size) = memory_for_sessions(1_000_000);
    println!("memory store: 1,000,000 sessions of {size} bytes JSON held in {mib:.0} MiB RSS");

    let _ = writeln!(report, "# Benchmarks\n");
    let _ = writeln!(
        report,
        "Generated by `cargo bench --bench proxy` (benches/proxy.rs); do not edit by hand.\n"
    );
    let _ = writeln!(report, "- machine: {}", machine());
    let _ = writeln!(
        report,
        "- {seconds} s per run, {rounds} rounds alternating nginx, sessiongate and, in (a), the two hyper floors (medians), fixed rate {rate} requests/s for latency and CPU"
    );
    let _ = writeln!(
        report,
        "- p50, p99 and p99.9: requests sent from {STEADY_AFTER_S} s into the run on, once oha has opened all its connections; \"p99 ms, whole run\" counts the connection set-up burst at the start too"
    );
    let _ = writeln!(
        report,
        "- the proxies: one worker on CPU {PROXY_CPU}; oha, the upstream (nginx `return 200`) and Redis on CPU {LOAD_CPU}\n- hyper alone: a reverse proxy of hyper's HTTP/1.1 server and pooled client and nothing else, on sessiongate's runtime and allocator (benches/proxy.rs `hyper_floor`): about what a proxy built on hyper costs before any work of its own\n- hyper paired: the leanest hyper proxy, hyper's HTTP/1.1 server with one hyper client connection per browser connection, driven in that connection's task as sessiongate drives the upstream connections it lends, no pool and nothing else (benches/proxy.rs `hyper_paired`)\n"
    );
    let _ = writeln!(
        report,
        "| scenario | conns | proxy | max rps | p50 ms | p99 ms | p99.9 ms | p99 ms, whole run | CPU µs/req at fixed rate | CPU µs/req at max rps | errors |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|");
    for ((key, c), row) in &rows {
        let title = SCENARIOS
            .iter()
            .find(|x| x.key == key)
            .map_or("", |x| x.title);
        for (name, m) in row.proxies() {
            let cells: Vec<String> = (m.columns().iter().zip(DECIMALS))
                .map(|(v, d)| format!("{v:.d$}"))
                .collect();
            let _ = writeln!(
                report,
                "| ({key}) {title} | {c} | {name} | {} |",
                cells.join(" | ")
            );
        }
        for (name, Ratios(r)) in row.ratios() {
            // The CPU ratios, the targets, in bold.
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, v)| match i >= 5 {
                    true => format!("**{v:.2}x**"),
                    false => format!("{v:.2}x"),
                })
                .collect();
            let _ = writeln!(
                report,
                "| ({key}) ratio | {c} | {name} | {} | |",
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(
        report,
        "\nMemory store: 1,000,000 sessions of {size} bytes of JSON held in **{mib:.0} MiB** of RSS (measured in-process)."
    );
    let out = std::env::var("BENCH_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
    std::fs::write(&out, report).unwrap();
    println!("written to {}", out.display());
}

/// Console headings and widths of each of [`Measure::columns`].
const HEADINGS: [&str; 8] = [
    "max rps",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "p99 whole",
    "CPU us/req",
    "CPU at max",
    "errors",
];
const WIDTHS: [usize; 8] = [9, 8, 8, 9, 9, 11, 11, 7];

fn print_row(scenario: &Scenario, c: usize, row: &Row) {
    println!("\n({}) {}, {c} connections", scenario.key, scenario.title);
    let heads: String = (HEADINGS.iter().zip(WIDTHS))
        .map(|(h, w)| format!(" {h:>w$}"))
        .collect();
    println!("  {:<24}{heads}", "");
    for (name, m) in row.proxies() {
        let cells: String = (m.columns().iter().zip(DECIMALS).zip(WIDTHS))
            .map(|((v, d), w)| format!(" {v:>w$.d$}"))
            .collect();
        println!("  {name:<24}{cells}");
    }
    for (name, Ratios(r)) in row.ratios() {
        let cells: String = (r.iter().zip(WIDTHS))
            .map(|(v, w)| format!(" {v:>w$.2}x", w = w - 1))
            .collect();
        println!("  {name:<24}{cells}");
    }
}
