//! A small blocking HTTP/1.1 client over a raw TCP stream, so tests control
//! every byte they send (duplicate headers, odd casing, bad framing), and a
//! `Browser` that keeps the session cookie like a browser would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::COOKIE;

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status line's protocol, such as `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    /// Names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `Set-Cookie` for the session cookie, if any.
    pub fn session_cookie(&self) -> Option<&str> {
        self.all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with(&format!("{COOKIE}=")))
    }

    /// The value of the session cookie being set (empty when expired).
    pub fn session_cookie_value(&self) -> Option<String> {
        let c = self.session_cookie()?;
        Some(
            c[COOKIE.len() + 1..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_owned(),
        )
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection; may carry several requests (keep-alive).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write request");
    }

    /// Writes `bytes`, or says why it could not (the server closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one response to a request with `method`.
    pub fn read(&mut self, method: &str) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let mut words = line.split_whitespace();
        let version = words.next().unwrap_or("").to_owned();
        let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let reply = Reply {
            version,
            status,
            headers,
            body: vec![],
        };
        let body =
            if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
                vec![]
            } else if reply
                .header("transfer-encoding")
                .is_some_and(|t| t.contains("chunked"))
            {
                self.read_chunked()?
            } else if let Some(n) = reply
                .header("content-length")
                .and_then(|n| n.parse::<usize>().ok())
            {
                let mut b = vec![0; n];
                self.reader.read_exact(&mut b)?;
                b
            } else {
                let mut b = vec![];
                self.reader.read_to_end(&mut b)?;
                b
            };
        Ok(Reply { body, ..reply })
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = vec![];
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    self.reader.read_line(&mut t)?;
                    if t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `request` and reads its response.
    pub fn exchange(&mut self, method: &str, request: &[u8]) -> Reply {
        self.send(request);
        self.read(method).expect("read response")
    }

    /// A plain `GET path` on this connection, no headers beyond `Host`.
    pub fn get(&mut self, path: &str) -> Reply {
        self.exchange("GET", &request("GET", path, &[], b""))
    }

    /// Whether the server closed the connection (reads EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Builds a request head; `headers` are sent exactly as given.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A client that keeps the session cookie the way a browser does.
#[derive(Clone)]
pub struct Browser {
    pub addr: SocketAddr,
    /// The session cookie's value, if the browser holds one.
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        Browser { addr, cookie: None }
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let cookie = self.cookie.as_ref().map(|c| format!("{COOKIE}={c}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(c) = &cookie {
            all.push(("Cookie", c));
        }
        all.push(("Connection", "close"));
        let reply = Conn::open(self.addr).exchange(method, &request(method, path, &all, body));
        self.remember(&reply);
        reply
    }

    /// Applies a response's session `Set-Cookie` to the jar.
    pub fn remember(&mut self, reply: &Reply) {
        if let Some(set) = reply.session_cookie() {
            let value = reply.session_cookie_value().unwrap_or_default();
            let removal = set.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            self.cookie = if removal { None } else { Some(value) };
        }
    }
}
