//! Test support: the real `sessiongate` binary, a recording upstream and a
//! small raw HTTP/1.1 client, all on 127.0.0.1 port 0.
//!
//! The proxy runs as a child process with a config written to a temp dir;
//! its stderr (the log) is kept so tests can assert on log lines. Nothing
//! here sleeps to synchronise: waiting is polling with a deadline.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod client;
pub mod redis;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use client::{Browser, Conn, Reply};
pub use upstream::{Handler, Recorded, Response, Upstream};

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const COOKIE: &str = "sessionid";

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sessiongate"))
}

/// A config for a proxy in front of `upstream`; `extra` is appended (TOML).
pub fn config(upstream: SocketAddr, extra: &str) -> String {
    let (top, sections) = split_extra(extra);
    format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n{top}\n[secret]\nvalue = \"{SECRET}\"\n{sections}\n",
    )
}

/// [`config`], with the upstream as an `[upstream]` table holding `lines`
/// (such as `timeout = "1s"`) besides its URL.
pub fn config_with_upstream(upstream: SocketAddr, lines: &str, extra: &str) -> String {
    let line = format!("upstream = \"http://{upstream}\"\n");
    let text = config(upstream, extra).replacen(&line, "", 1);
    format!("{text}[upstream]\nurl = \"http://{upstream}\"\n{lines}\n")
}

/// Splits `extra` into top-level lines (before the first `[section]`) and the rest,
/// and adds `[cookie] secure = false` (tests speak plain HTTP) and an admin
/// listener on port 0 unless the test configures those sections itself.
fn split_extra(extra: &str) -> (String, String) {
    let at = extra
        .find("\n[")
        .map(|i| i + 1)
        .unwrap_or(if extra.trim_start().starts_with('[') {
            0
        } else {
            extra.len()
        });
    let (top, mut sections) = (extra[..at].to_owned(), extra[at..].to_owned());
    if !sections.contains("[cookie]") {
        sections.push_str("\n[cookie]\nsecure = false\n");
    }
    if !sections.contains("[admin]") {
        sections.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    (top, sections)
}

/// A running proxy process; killed when dropped.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, unless it is off.
    pub admin: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Proxy {
    /// Starts the proxy with `config_text` and waits until it listens.
    pub fn start(config_text: &str) -> Proxy {
        Self::start_with_env(config_text, &[])
    }

    pub fn start_with_env(config_text: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("sessiongate.toml");
        std::fs::write(&config_path, config_text).expect("write config");
        Self::spawn(dir, config_path, env)
    }

    /// Starts a proxy on an existing config file in `dir` (for restarts).
    pub fn spawn(dir: tempfile::TempDir, config_path: PathBuf, env: &[(&str, &str)]) -> Proxy {
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info,sessiongate=debug")
            .env_remove("SESSIONGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sessiongate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("sessiongate listening")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "proxy did not start; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let addr = field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {line}"));
        let admin = field(&line, "admin").and_then(|a| a.parse().ok());
        Proxy {
            child,
            addr,
            admin,
            logs,
            dir,
            config_path,
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `parts`; returns it.
    pub fn wait_for_log(&self, parts: &[&str]) -> String {
        let found = poll(Duration::from_secs(10), || {
            self.logs()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line with {parts:?}; log:\n{}",
                self.logs().join("\n")
            )
        })
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        self.wait(Duration::from_secs(40)).expect("proxy exits")
    }

    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        poll(within, || self.child.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Kills the process and hands back its directory (for a restart).
    pub fn kill(mut self) -> (tempfile::TempDir, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config_path.clone())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of a log line: `key=value` in text lines, `fields.key` in JSON ones.
pub fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let value = &json["fields"][key];
        return value
            .as_str()
            .map(str::to_owned)
            .or_else(|| (!value.is_null()).then(|| value.to_string()));
    }
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or(rest)
            .trim_matches('"')
            .to_owned(),
    )
}

/// Sends `signal` (`"HUP"`, `"TERM"`) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Attaches strace to every thread of process `pid` with `args` (what to
/// trace, where to write) and waits until it has attached.
pub fn attach_strace(pid: u32, args: &[&str]) -> Child {
    let child = Command::new("strace")
        .args(["-f", "-qq", "-p", &pid.to_string()])
        .args(args)
        .spawn()
        .expect("strace (apt-get install -y strace; bash .ci/run does)");
    // strace needs a moment to attach to every thread.
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Resident memory of a process, in MiB (from /proc).
pub fn rss_mib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is alive");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb / 1024
}

/// Calls `f` until it returns `Some`, for at most `within`.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `sessiongate check` on a config text; returns (exit code, stderr).
pub fn check(config_text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config_text).unwrap();
    check_file(&path, env)
}

pub fn check_file(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .arg("--config")
        .arg(path)
        .env_remove("SESSIONGATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the proxy on `config_path` expecting it to refuse to start; returns
/// (exit code, stderr). Panics if it is still running after 20 s.
pub fn run_expecting_failure(config_path: &Path) -> (i32, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(config_path);
    expect_refusal(cmd)
}

/// Runs `cmd` (the proxy, perhaps under a wrapper) expecting it to refuse
/// to start; returns (exit code, stderr).
pub fn expect_refusal(mut cmd: Command) -> (i32, String) {
    let mut child = cmd
        .env_remove("SESSIONGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sessiongate");
    let status = poll(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the proxy started although it should have refused");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}
