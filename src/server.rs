//! The accept loop: one task per connection, HTTP/1.1 (and HTTP/2 with
//! prior knowledge) via hyper-util, the background expiry sweep, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::{Config, StoreConfig};
use crate::proxy::Proxy;
use crate::session::Policy;
use crate::store::Store;
use crate::store::disk::{DiskOptions, DiskStore};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};

/// Longest a request head may take to arrive (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted; above it the client gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Binds `config.listen` (and the admin address) and serves until
/// `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let listener = bind(config.listen, "listen", &config).await?;
    serve(listener, config, shutdown).await
}

async fn bind(
    addr: std::net::SocketAddr,
    key: &str,
    config: &Config,
) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} (from `{key}` in {})",
            config.source.display()
        )
    })
}

/// Serves on an already bound listener (tests and benchmarks bind port 0).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let admin = match config.admin.listen {
        Some(addr) => Some(bind(addr, "admin.listen", &config).await?),
        None => None,
    };
    // TLS (rediss://) uses rustls with the ring provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policy = Policy::from_config(&config.session);
    match config.store {
        StoreConfig::Memory => {
            serve_with(listener, admin, config, MemoryStore::new(policy), shutdown).await
        }
        StoreConfig::Disk {
            ref path,
            durability,
            max_file_bytes,
        } => {
            let options = DiskOptions {
                path: path.clone(),
                durability,
                max_file_bytes,
            };
            // Opening checks the whole file: keep it off the async workers.
            let store =
                tokio::task::spawn_blocking(move || DiskStore::open(options, policy)).await??;
            serve_with(listener, admin, config, store, shutdown).await
        }
        StoreConfig::Redis {
            ref url,
            ref key_prefix,
            cluster,
            timeout,
            touch_interval,
        } => {
            let options = RedisOptions {
                url: url.clone(),
                key_prefix: key_prefix.clone(),
                cluster,
                timeout,
                touch_interval,
            };
            let store = RedisStore::connect(options, policy)?;
            serve_with(listener, admin, config, store, shutdown).await
        }
    }
}

async fn serve_with<S: Store>(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    store: S,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    info!(
        addr = %addr,
        admin = %admin_addr.map_or("off".to_owned(), |a| a.to_string()),
        upstream = %config.upstream.authority,
        store = config.store.kind(),
        create = ?config.session.create,
        cookie = %config.cookie.name,
        previous_secrets = config.secrets.previous.len(),
        idle_timeout = ?config.session.idle_timeout,
        absolute_timeout = ?config.session.absolute_timeout,
        "sessiongate listening"
    );
    let sweep_every = (config.session.idle_timeout / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let proxy = Arc::new(Proxy::new(config, store));
    let sweeper = tokio::spawn(sweep(proxy.clone(), sweep_every));
    let admin = admin.map(|a| tokio::spawn(crate::admin::serve(a, proxy.clone())));
    let result = accept_loop(listener, proxy, shutdown).await;
    sweeper.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    result
}

async fn accept_loop<S: Store>(
    listener: TcpListener,
    proxy: Arc<Proxy<S>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("shutting down: no new connections; waiting for requests in flight");
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight after the grace period; closing them");
    }
    Ok(())
}

async fn sweep<S: Store>(proxy: Arc<Proxy<S>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match proxy.store().sweep().await {
            Ok(0) => {}
            Ok(n) => {
                proxy.metrics().session_event("expired", n as u64);
                debug!(expired = n, "expired sessions swept");
            }
            Err(e) => warn!(error = %e, "session sweep failed"),
        }
    }
}
