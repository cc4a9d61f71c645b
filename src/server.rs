//! The accept loop: connection limits and deadlines, optional TLS, HTTP/1.1
//! and HTTP/2 (prior knowledge or ALPN) via hyper-util, the background
//! expiry sweep, SIGHUP reloads, and graceful shutdown.

/// `AsyncWrite` for a stream wrapper that only watches reads: every write
/// call goes unchanged to its `inner` field.
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod deadline;
mod head_tap;
mod read_ahead;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use crate::proxy::paired::{Driven, IDLE_RELEASE};
use crate::proxy::{BoxError, Downstream, Proxy, ResponseBody};
use crate::session::Policy;
use crate::store::Store;
use crate::store::disk::{DiskOptions, DiskStore};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use deadline::{Activity, Busy, Deadlines, SlowHead};
use head_tap::HeadTap;
use read_ahead::ReadAhead;

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Binds `config.listen` (and the admin address) and serves until
/// `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let listener = bind(config.listen, "listen", &config)?;
    serve(listener, config, shutdown).await
}

/// Connections the kernel may queue before they are accepted. std's 128 is
/// short for a front door that 500 browsers reconnect to at once (nginx
/// asks for 511); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

fn bind(addr: std::net::SocketAddr, key: &str, config: &Config) -> anyhow::Result<TcpListener> {
    listen(addr).with_context(|| {
        format!(
            "cannot listen on {addr} (from `{key}` in {})",
            config.source.display()
        )
    })
}

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's bind does: a restart must not wait for TIME_WAIT to clear.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves on an already bound listener (tests and benchmarks bind port 0).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // rustls (TLS for browsers and rediss://) uses the ring provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = match config.admin.listen {
        Some(addr) => Some(bind(addr, "admin.listen", &config)?),
        None => None,
    };
    let policy = Policy::from_config(&config.session);
    let listeners = Listeners {
        public: listener,
        admin,
    };
    match config.store.clone() {
        StoreConfig::Memory => {
            serve_with(listeners, config, MemoryStore::new(policy), shutdown).await
        }
        StoreConfig::Disk {
            path,
            durability,
            max_file_bytes,
            cache_bytes,
        } => {
            let options = DiskOptions {
                path,
                durability,
                max_file_bytes,
                cache_bytes,
            };
            // Opening checks the whole file: keep it off the async workers.
            let store =
                tokio::task::spawn_blocking(move || DiskStore::open(options, policy)).await??;
            serve_with(listeners, config, store, shutdown).await
        }
        StoreConfig::Redis {
            url,
            key_prefix,
            cluster,
            timeout,
            touch_interval,
        } => {
            let options = RedisOptions {
                url,
                key_prefix,
                cluster,
                timeout,
                touch_interval,
            };
            let store = RedisStore::connect(options, policy)?;
            serve_with(listeners, config, store, shutdown).await
        }
    }
}

struct Listeners {
    public: TcpListener,
    admin: Option<TcpListener>,
}

/// What start-up would refuse beyond the config's own validation, short of
/// binding ports and opening the store: for `sessiongate check`, so that a
/// config it passes also starts. TLS material must load; the disk store's
/// file must be one the proxy can open for writing.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &config.tls {
        tls::acceptor(tls)?;
    }
    if let StoreConfig::Disk { path, .. } = &config.store {
        disk_store_writable(path)?;
    }
    Ok(())
}

/// The disk store's file, if it exists, is a regular file open for writing;
/// its directory exists and takes new files (the store adds a lock file and
/// SQLite its journal beside it). A file created and removed again is the
/// one test of the latter that holds for root too, whom permission bits do
/// not stop but a read-only or virtual file system does.
fn disk_store_writable(path: &std::path::Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("store.path: the directory {} does not exist", dir.display());
    }
    if path.is_dir() {
        anyhow::bail!(
            "store.path: {} is a directory; name a database file in it",
            path.display()
        );
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("store.path: cannot open {} for writing", path.display()))?;
    }
    let probe = dir.join(format!(".sessiongate-check-{:016x}", rand::random::<u64>()));
    std::fs::File::create_new(&probe).with_context(|| {
        format!(
            "store.path: cannot create files in the directory {}",
            dir.display()
        )
    })?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("store.path: cannot remove {}", probe.display()))
}

async fn serve_with<S: Store>(
    listeners: Listeners,
    config: Config,
    store: S,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listeners.public.local_addr()?;
    let admin_addr = listeners.admin.as_ref().and_then(|a| a.local_addr().ok());
    let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
    info!(
        addr = %addr,
        admin = %admin_addr.map_or("off".to_owned(), |a| a.to_string()),
        tls = acceptor.is_some(),
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
    let source = config.source.clone();
    let proxy = Arc::new(Proxy::new(config, store));
    let background = [
        tokio::spawn(sweep(proxy.clone(), sweep_every)),
        tokio::spawn(reload_on_sighup(proxy.clone(), source)),
        tokio::spawn(release_idle_upstreams(proxy.clone())),
    ];
    let admin = listeners
        .admin
        .map(|a| tokio::spawn(crate::admin::serve(a, proxy.clone())));
    let result = accept_loop(listeners.public, acceptor, proxy.clone(), shutdown).await;
    for task in background.into_iter().chain(admin) {
        task.abort();
        let _ = task.await;
    }
    // Last reference: close the store (the disk store joins its writer and
    // checkpoints), off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(proxy)).await;
    info!("stopped");
    result
}

async fn accept_loop<S: Store>(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy<S>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = proxy.settings().server.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &permits) => accepted,
            () = &mut shutdown => break,
        };
        let Some((stream, peer, permit)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = proxy.settings().server.clone();
        let activity = Activity::default();
        let io = Deadlines::new(
            stream,
            activity.clone(),
            server.header_read_timeout,
            server.keep_alive_timeout,
        );
        let tap = activity.clone();
        let down = Downstream::new(peer, acceptor.is_some(), activity);
        let paired = down.paired().clone();
        let builder = builder(&server);
        let proxy = proxy.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        // Boxed: the connection's future (hyper's HTTP/1 and HTTP/2 state,
        // the TLS handshake) is kilobytes, and tokio moves a task's future
        // by value several times as it spawns, runs and finishes it.
        tokio::spawn(Box::pin(async move {
            let _permit = permit;
            let metrics_of = proxy.clone();
            let service = service_fn(move |req| {
                let (proxy, down) = (proxy.clone(), down.clone());
                let busy = down.activity.begin();
                async move {
                    Ok::<_, Infallible>(
                        proxy
                            .handle(req, &down)
                            .await
                            .map(|body| Tracked { body, _busy: busy }),
                    )
                }
            });
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(io),
                Some(acceptor) => {
                    let within = server.header_read_timeout;
                    match tls::handshake(&acceptor, io, within, peer, metrics_of.metrics()).await {
                        Some(tls) => Box::new(tls),
                        None => return,
                    }
                }
            };
            let io = ReadAhead::new(HeadTap::new(io, tap, server.max_header_bytes));
            let connection = watcher.watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned(),
            );
            let served = Driven::new(connection, paired).await;
            if let Err(e) = served {
                connection_failed(&*e, peer, metrics_of.metrics());
            }
        }));
    }
    let grace = proxy.settings().server.shutdown_grace;
    info!(
        ?grace,
        "shutting down: no new connections; waiting for requests in flight"
    );
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "requests still in flight after server.shutdown_grace; closing them"
        );
    }
    Ok(())
}

/// How a connection that ended with an error is reported. A request head
/// hyper cannot parse never reaches the proxy: hyper answers it itself
/// (`400`, `414` or `431`) and closes, so it is counted (in the 4xx class,
/// which all three share; hyper does not say which it sent) and logged
/// here like the proxy's own refusals. So is a head that began and did not
/// end in time ([`SlowHead`]), as a `408` nobody is sent.
fn connection_failed(
    error: &(dyn std::error::Error + 'static),
    peer: std::net::SocketAddr,
    metrics: &Metrics,
) {
    if let Some(refusal) = refused_head(error) {
        metrics.response(StatusCode::BAD_REQUEST);
        warn!(%peer, error = %refusal, "request head refused before it reached the proxy");
    } else if let Some(slow) = slow_head(error) {
        metrics.response(StatusCode::REQUEST_TIMEOUT);
        warn!(%peer, error = %slow, "request head too slow; connection closed");
    } else if let Some(violation) = http2_violation(error) {
        warn!(%peer, error = %violation, "HTTP/2 connection closed for a protocol violation");
    } else {
        debug!(%peer, %error, "connection ended with an error");
    }
}

/// The GOAWAY the HTTP/2 layer sent, if it ended the connection over the
/// client's conduct (a header block over its CONTINUATION limit, a flood
/// of resets, a malformed frame): every stream on it ends, so it is worth
/// a warning; a client that just went away is not.
fn http2_violation<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    causes(error)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .filter(|h2| h2.is_go_away() && h2.is_library())
}

/// The [`SlowHead`] in `error`'s chain. It travels inside an `io::Error`,
/// whose `source()` skips the error it wraps, hence `get_ref`.
fn slow_head<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a SlowHead> {
    causes(error).find_map(|e| {
        e.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<SlowHead>()
    })
}

/// The hyper error in `error`'s chain if it is a request head hyper
/// answered for itself (see `connection_failed`).
fn refused_head<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a hyper::Error> {
    causes(error)
        .find_map(|e| e.downcast_ref::<hyper::Error>())
        .filter(|h| h.is_parse() && !h.is_parse_status() && !h.is_parse_version_h2())
}

/// `error` and its sources, outermost first.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// Waits for a connection slot, then a connection. Errors (out of file
/// descriptors and the like) are logged and retried after a pause.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(
    TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, permit)),
        Err(e) => {
            warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

fn builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Head and keep-alive deadlines are kept by `Deadlines`.
        .header_read_timeout(None)
        .max_buf_size(server.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// A response body that keeps its connection busy until it is sent.
struct Tracked {
    body: ResponseBody,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Closes upstream connections left idle (see [`IDLE_RELEASE`]).
async fn release_idle_upstreams<S: Store>(proxy: Arc<Proxy<S>>) {
    let mut every = tokio::time::interval(IDLE_RELEASE / 2);
    loop {
        every.tick().await;
        proxy.settings().lender.release_idle();
    }
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

/// SIGHUP re-reads the config file. A file that does not validate, or that
/// changes what needs a restart, is refused and the running config stays.
async fn reload_on_sighup<S: Store>(proxy: Arc<Proxy<S>>, source: std::path::PathBuf) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        warn!("cannot listen for SIGHUP; config reloads are off");
        return;
    };
    while hangups.recv().await.is_some() {
        let loaded = tokio::task::spawn_blocking({
            let source = source.clone();
            move || Config::load(&source)
        })
        .await;
        match loaded {
            Ok(Ok(config)) => match proxy.reload(config) {
                Ok(()) => info!(file = %source.display(), "config reloaded"),
                Err(why) => {
                    warn!(file = %source.display(), reason = %why, "config reload refused; the running config stays")
                }
            },
            Ok(Err(e)) => warn!(error = %e, "config reload refused; the running config stays"),
            Err(e) => warn!(error = %e, "config reload failed"),
        }
    }
}
