//! The `sessiongate` command: CLI -> Config -> tracing -> run().
//! A bad config exits with status 64 before any port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiongate::Config;
use sessiongate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// mimalloc: measured fewer CPU cycles per request than glibc's malloc on
/// the proxy's many small, short-lived allocations (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "A reverse proxy that gives server-side sessions to web apps that have none"
)]
struct Cli {
    /// The TOML config file.
    #[arg(
        long,
        short,
        global = true,
        env = "SESSIONGATE_CONFIG",
        default_value = "sessiongate.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file and exit: 0 when valid, 64 otherwise.
    Check,
    /// Ask the running proxy's admin listener whether it is alive (for
    /// container health checks): exit 0 when `/healthz` answers 200.
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sessiongate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!("{}: valid", cli.config.display());
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
        Command::Health => health(&config),
    }
}

/// GET /healthz on the admin listener, with a short deadline.
fn health(config: &Config) -> ExitCode {
    use std::io::{Read, Write};
    let Some(mut addr) = config.admin.listen else {
        eprintln!("sessiongate: admin.listen is \"off\": there is no health endpoint to ask");
        return ExitCode::FAILURE;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(3);
    let answer = std::net::TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head)
    });
    match answer {
        Ok(head) if head.starts_with(b"HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(head) => {
            eprintln!(
                "sessiongate: {addr}/healthz answered {}",
                String::from_utf8_lossy(&head)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sessiongate: cannot reach the admin listener at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> ExitCode {
    init_tracing(config.log_format);
    // Each connection is a file descriptor; the default soft limit (often
    // 1024) would cap connections far below server.max_connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < config.server.max_connections + 64 => tracing::warn!(
            limit,
            max_connections = config.server.max_connections,
            "the open-files limit is below server.max_connections; raise it (ulimit -n) or lower the setting"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    // One worker: a current-thread runtime skips the work-stealing
    // scheduler's synchronisation, measurably cheaper per request.
    let mut builder = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.server.workers);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(sessiongate::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sessiongate stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: container logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
