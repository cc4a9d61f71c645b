//! TLS for browsers with rustls: the certificate chain and key from PEM
//! files, ALPN offering HTTP/2 and HTTP/1.1, and the handshake of each
//! connection, which answers plain HTTP sent to the TLS port as nginx does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use super::deadline::Deadlines;
use crate::config::TlsConfig;
use crate::metrics::Metrics;

const PLAIN_HTTP_BODY: &str = "This port speaks HTTPS: the plain HTTP request was sent to it.\n";

/// How long, and how much, the request of a plain-HTTP client is read
/// after the answer, so that closing does not reset the connection (and
/// lose the answer) over unread bytes.
const LINGER: (Duration, usize) = (Duration::from_secs(1), 64 * 1024);

/// The TLS handshake of a new connection, within `within` of its start.
/// A client that speaks plain HTTP gets a `400` saying so, counted and
/// logged; a failed or slow handshake is logged; both give `None`.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    io: Deadlines<TcpStream>,
    within: Duration,
    peer: SocketAddr,
    metrics: &Metrics,
) -> Option<TlsStream<Deadlines<TcpStream>>> {
    let deadline = Instant::now() + within;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, io.get_ref().peek(&mut first)).await {
        Ok(Ok(0)) => debug!(%peer, "closed before its TLS handshake"),
        // A TLS connection opens with a record's content type (0x16 for a
        // handshake, RFC 8446 section 5.1); an HTTP request with a method.
        Ok(Ok(_)) if first[0].is_ascii_alphabetic() => {
            metrics.response(StatusCode::BAD_REQUEST);
            warn!(%peer, "plain HTTP sent to the TLS port; answered 400");
            answer_plain_http(io).await;
        }
        Ok(Ok(_)) => match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => info!(%peer, ?within, "TLS handshake timed out"),
        },
        Ok(Err(e)) => debug!(%peer, error = %e, "connection failed before TLS"),
        // Nothing sent: idleness, which the plain port closes quietly too.
        Err(_) => debug!(%peer, ?within, "no TLS handshake began in time"),
    }
    None
}

async fn answer_plain_http(mut io: Deadlines<TcpStream>) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    if io.write_all(answer.as_bytes()).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let (linger, most) = LINGER;
    let _ = tokio::time::timeout(linger, async {
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < most {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Builds the acceptor; errors name the file that is wrong.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = certificates(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .with_context(|| format!("tls.key: no private key in {}", config.key.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("tls: protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "tls: {} and {} do not form a usable certificate and key",
            config.cert.display(),
            config.key.display()
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("tls.cert: cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.cert: bad PEM in {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.cert: no certificate in {}",
        path.display()
    );
    Ok(certs)
}
