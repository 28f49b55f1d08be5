//! A raw HTTP/1.1 server on 127.0.0.1 that sees and writes header values byte for byte: the
//! harness's upstreams read values as text, which would hide the very bytes the identity tests
//! look at (a value that is not UTF-8 would read as U+FFFD there too).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as received: its request line's path and its header lines, names lower-cased,
/// values with the surrounding spaces trimmed and every other byte kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// The request target.
    pub path: String,
    /// Header lines in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRequest {
    /// Every value of `name`, in order.
    pub fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
    }

    /// The header names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

type Answer = dyn Fn(&RawRequest) -> Vec<u8> + Send + Sync;

/// The server: answers each request with the bytes `answer` gives, records what it got, and
/// stops (listener and its thread) when dropped.
pub struct RawServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    /// Starts on a free port of 127.0.0.1.
    pub fn start(answer: impl Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, answer) = (seen2.clone(), answer.clone());
                // Each connection ends when Envoy closes it, or after 10 s idle.
                std::thread::spawn(move || serve(conn, &seen, &*answer));
            }
        });
        RawServer { addr, seen, stop, thread: Some(thread) }
    }

    /// A server answering every request with a plain `200`.
    pub fn ok() -> RawServer {
        RawServer::start(|_| response("200 OK", &[], b""))
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received for `path`.
    pub fn last(&self, path: &str) -> Option<RawRequest> {
        self.seen().into_iter().rev().find(|r| r.path == path)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response with `status` (`"200 OK"`), header lines given as bytes, and a body.
pub fn response(status: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<RawRequest>>, answer: &Answer) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = String::from_utf8_lossy(&line).into_owned();
        let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(&line);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            headers.push((name, trim(&line[colon + 1..]).to_vec()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let chunked =
            headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
        if chunked {
            if !skip_chunked(&mut reader) {
                return;
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let request = RawRequest { path, headers };
        let reply = answer(&request);
        seen.lock().unwrap().push(request);
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Reads a chunked body to its end (the tests look at headers only); false when cut.
fn skip_chunked(reader: &mut impl BufRead) -> bool {
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return false;
        }
        let size = std::str::from_utf8(trim(line.strip_suffix(b"\r\n").unwrap_or(&line)))
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or(""), 16).ok());
        let Some(size) = size else { return false };
        if size == 0 {
            // Trailers, if any, then the empty line.
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    return false;
                }
                if line == b"\r\n" || line == b"\n" {
                    return true;
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return false;
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}
