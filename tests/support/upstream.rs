//! A recording upstream: a real hyper HTTP/1.1 server on 127.0.0.1:0, on its
//! own thread and runtime, that records every request and answers as the
//! test's handler says.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Request trailers, lower-case names.
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The session data the proxy injected, parsed.
    pub fn session(&self) -> serde_json::Value {
        serde_json::from_str(
            self.header("x-session-data")
                .expect("x-session-data injected"),
        )
        .expect("session data is JSON")
    }

    pub fn session_id(&self) -> &str {
        self.header("x-session-id").expect("x-session-id injected")
    }

    pub fn is_new(&self) -> bool {
        self.header("x-session-new") == Some("1")
    }
}

/// The requests an upstream received: a total, and the most recent ones
/// (bounded, so long soaks do not grow the test process).
#[derive(Default)]
pub struct Log {
    total: usize,
    recent: std::collections::VecDeque<Recorded>,
}

impl Log {
    const KEEP: usize = 10_000;

    fn push(&mut self, r: Recorded) {
        self.total += 1;
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Option<Duration>,
}

impl Response {
    pub fn ok() -> Response {
        Response::status(200)
    }

    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: vec![],
            body: b"ok".to_vec(),
            delay: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Response {
        self.delay = Some(d);
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Response + Send + Sync>;

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted (the raw upstream counts them).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    recorded: Arc<Mutex<Log>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// An upstream that answers every request with 200 "ok".
    pub fn ok() -> Upstream {
        Upstream::start(|_| Response::ok())
    }

    pub fn start(handler: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on a given address (to come back on the same port after a stop).
    pub fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Response + Send + Sync + 'static,
    ) -> Upstream {
        let handler: Handler = Arc::new(handler);
        let recorded = Arc::new(Mutex::new(Log::default()));
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sink = recorded.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::pin!(stopped);
                loop {
                    let (stream, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let handler = handler.clone();
                    let sink = sink.clone();
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |req| serve(req, handler.clone(), sink.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Upstream {
            addr,
            connections: Arc::default(),
            recorded,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap()
            .recent
            .iter()
            .cloned()
            .collect()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().total
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The listener is closed when this returns, so the port can be reused.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    handler: Handler,
    sink: Arc<Mutex<Log>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected
        .as_ref()
        .and_then(|c| c.trailers())
        .map(|t| {
            t.iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = collected.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        trailers,
    };
    let spec = handler(&recorded);
    sink.lock().unwrap().push(recorded);
    if let Some(d) = spec.delay {
        tokio::time::sleep(d).await;
    }
    let mut rsp = hyper::Response::new(Full::new(Bytes::from(spec.body)));
    *rsp.status_mut() = hyper::StatusCode::from_u16(spec.status).unwrap();
    for (n, v) in spec.headers {
        rsp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    Ok(rsp)
}

/// An upstream that writes the handler's bytes verbatim as the response, so
/// tests control header order, framing and malformed responses. After a
/// `101` response it echoes every byte it receives (a stand-in WebSocket). Requests are
/// read with `Content-Length` framing only; keep-alive until the client closes.
pub fn raw(handler: impl Fn(&Recorded) -> Vec<u8> + Send + Sync + 'static) -> Upstream {
    use std::io::{Read, Write};
    let handler = Arc::new(handler);
    let recorded = Arc::new(Mutex::new(Log::default()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = recorded.clone();
    let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let counter = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let handler = handler.clone();
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let Some(recorded) = read_request(&mut stream, &mut buf) else {
                        return;
                    };
                    let bytes = handler(&recorded);
                    sink.lock().unwrap().push(recorded);
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                    if bytes.starts_with(b"HTTP/1.1 101") {
                        // Switched protocols: echo every byte back until EOF.
                        let mut chunk = [0u8; 8192];
                        stream.write_all(&buf).ok();
                        while let Ok(n) = stream.read(&mut chunk) {
                            if n == 0 || stream.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                        }
                        return;
                    }
                }
            });
        }
    });
    fn read_request(stream: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((end, mut recorded)) = parse_head(buf) {
                let len = recorded
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + len {
                    let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
                    buf.extend_from_slice(&chunk[..n]);
                }
                recorded.body = buf[end..end + len].to_vec();
                buf.drain(..end + len);
                return Some(recorded);
            }
            let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    fn parse_head(buf: &[u8]) -> Option<(usize, Recorded)> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(end) = req.parse(buf).ok()? else {
            return None;
        };
        let recorded = Recorded {
            method: req.method.unwrap_or("").to_owned(),
            target: req.path.unwrap_or("").to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: vec![],
            trailers: vec![],
        };
        Some((end, recorded))
    }
    Upstream {
        addr,
        connections,
        recorded,
        stop: None,
        thread: None,
    }
}
