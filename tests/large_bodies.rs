//! Large bodies stream: a 1 GiB upload and a 1 GiB download pass through the
//! proxy while its resident memory stays flat.

mod support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{Proxy, config};

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
/// Allowed growth of the proxy's RSS while the bodies pass.
const RSS_BOUND: u64 = 64 << 20;

/// A body of `left` bytes produced chunk by chunk.
struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// An upstream that serves `/download` (1 GiB) and counts `/upload` bodies
/// without keeping them.
fn streaming_upstream() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service =
                        service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                            let rsp: hyper::Response<
                                http_body_util::Either<Generated, Full<Bytes>>,
                            > = if req.uri().path() == "/download" {
                                hyper::Response::new(http_body_util::Either::Left(Generated {
                                    left: GIB,
                                    chunk: Bytes::from(vec![7u8; CHUNK]),
                                }))
                            } else {
                                let mut body = req.into_body();
                                let mut total = 0u64;
                                while let Some(frame) = body.frame().await {
                                    total += frame
                                        .ok()
                                        .and_then(|f| f.into_data().ok())
                                        .map_or(0, |d| d.len() as u64);
                                }
                                hyper::Response::new(http_body_util::Either::Right(Full::new(
                                    Bytes::from(total.to_string()),
                                )))
                            };
                            Ok::<_, Infallible>(rsp)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// Samples the proxy's RSS until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let peak = AtomicU64::new(0);
        while !flag.load(Ordering::SeqCst) {
            peak.fetch_max(support::rss_mib(pid) << 20, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.load(Ordering::SeqCst)
    });
    (stop, handle)
}

/// Reads a response head, then body bytes until `expected` have come (the
/// connection stays open); returns how many came.
fn read_body_bytes(stream: &mut std::net::TcpStream, expected: u64) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let mut total = 0u64;
    while total < expected {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed after {total} body bytes");
        if head.ends_with(b"\r\n\r\n") {
            total += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            total += (head.len() - end - 4) as u64;
            head.truncate(end + 4);
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
    }
    total
}

#[test]
fn a_gibibyte_each_way_streams_with_flat_memory() {
    let up = streaming_upstream();
    let proxy = Proxy::start(&config(up, ""));
    // Warm up (the first request allocates pools and buffers).
    assert_eq!(proxy.browser().get("/download-warm").status, 200);
    let baseline = support::rss_mib(proxy.pid()) << 20;
    let (stop, peak) = watch_rss(proxy.pid());

    // One kept-alive connection: after its first request, both bodies go
    // through the upstream connection paired with it.
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut conn = support::client::Conn::from_stream(stream.try_clone().unwrap());
    let warm = support::client::request("GET", "/warm", &[], b"");
    assert_eq!(conn.exchange("GET", &warm).status, 200);
    stream
        .write_all(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let chunk = vec![1u8; CHUNK];
    for _ in 0..(GIB / CHUNK as u64) {
        stream.write_all(&chunk).unwrap();
    }
    let reply = conn.read("POST").unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (200, GIB.to_string()),
        "the upstream counted every byte"
    );

    stream
        .write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let total = read_body_bytes(&mut stream, GIB);
    assert_eq!(total, GIB, "1 GiB of body");

    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    let growth = peak.saturating_sub(baseline);
    println!(
        "proxy RSS: baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        growth < RSS_BOUND,
        "RSS grew by {} MiB (baseline {} MiB, peak {} MiB)",
        growth >> 20,
        baseline >> 20,
        peak >> 20
    );
}
