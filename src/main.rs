//! The `sessiongate` command: CLI -> Config -> tracing -> run().
//! A bad config exits with status 64 before any port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiongate::Config;
use sessiongate::admin::client;
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
    /// List, count or end sessions through the running proxy's admin API
    /// (needs `admin.token`).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// The sessions of a user: handles, creation and last-seen times.
    List {
        #[arg(long)]
        user: String,
    },
    /// End all sessions of a user, or one (`--session HANDLE`).
    Revoke {
        #[arg(long)]
        user: String,
        #[arg(long)]
        session: Option<String>,
    },
    /// How many live sessions the store holds.
    Count,
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
        Command::Check => match sessiongate::server::preflight(&config) {
            Ok(()) => {
                println!("{}: valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sessiongate: config file {}: {e:#}", cli.config.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run => run(config),
        Command::Health => health(&config),
        Command::Sessions { action } => sessions(&config, action),
    }
}

/// GET /healthz on the admin listener.
fn health(config: &Config) -> ExitCode {
    match client::call(config, "GET", "/healthz") {
        Ok(answer) if answer.status == 200 => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!("sessiongate: /healthz answered {}", answer.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sessiongate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One call to the session admin API; prints its JSON answer.
fn sessions(config: &Config, action: SessionsAction) -> ExitCode {
    let user_query = |user: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("user", user)
            .finish()
    };
    let (method, path) = match &action {
        SessionsAction::List { user } => ("GET", format!("/sessions?{}", user_query(user))),
        SessionsAction::Revoke {
            user,
            session: None,
        } => ("DELETE", format!("/sessions?{}", user_query(user))),
        SessionsAction::Revoke {
            user,
            session: Some(handle),
        } => ("DELETE", format!("/sessions/{handle}?{}", user_query(user))),
        SessionsAction::Count => ("GET", "/sessions/count".to_owned()),
    };
    match client::call(config, method, &path) {
        Ok(answer) if (200..300).contains(&answer.status) => {
            println!("{}", answer.body.trim_end());
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!(
                "sessiongate: the admin API answered {}: {}",
                answer.status,
                answer.body.trim_end()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sessiongate: {e}");
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
