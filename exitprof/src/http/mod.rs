//! A small HTTP/1.1 server for `exitprof serve`: hyper on the tokio
//! runtime the TUI already uses, set up for clients it cannot choose.
//!
//! - One request per connection (no keep-alive): nothing waits between
//!   requests, and Prometheus reconnecting costs a loopback handshake.
//! - At most `max_connections` connections at once; a connection beyond
//!   them is closed at once and counted, so a crowd of slow clients
//!   holds a bounded number of buffers.
//! - The request head is bounded (`max_header_bytes`, hyper answers 431
//!   beyond it) and must arrive within `header_timeout`; the whole
//!   exchange, writing the response included, within `connection_timeout`.
//! - Only GET and HEAD; request bodies are never read.
//!
//! So memory is bounded by `max_connections` × (head buffer + response),
//! and a slow or malformed client costs at most a connection slot for
//! `connection_timeout`. Handlers are plain functions of the request.
use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// How much a client may ask of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send the request head.
    pub header_timeout: Duration,
    /// Time for the whole exchange.
    pub connection_timeout: Duration,
    /// Size of the request head (at least 8 KiB: hyper's smallest buffer).
    pub max_header_bytes: usize,
}

/// What a handler sees of a GET or HEAD request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The path, without the query.
    pub path: &'a str,
    /// The `Accept` header, if any.
    pub accept: Option<&'a str>,
}

/// What a handler answers.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body (shared, not copied, when the handler caches it).
    pub body: Bytes,
}

impl Response {
    /// A plain-text response.
    #[must_use]
    pub fn text(status: u16, body: &'static str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
        }
    }
}

/// What the server counts about its clients.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed at once: `max_connections` were open.
    pub rejected: AtomicU64,
    /// Connections that ended in an error: malformed, too large, too slow.
    pub errors: AtomicU64,
}

/// Serves `listener` with `handler` until `shutdown` completes; then
/// stops accepting and returns (connections in progress are dropped).
pub async fn serve<H>(
    listener: TcpListener,
    limits: Limits,
    counters: Arc<Counters>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .max_headers(64);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or the peer gave up before we
                // accepted: count it and keep serving (a pause, so that
                // EMFILE does not spin).
                log::warn!("accepting a connection failed: {e}");
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let (builder, handler, counters) =
            (builder.clone(), Arc::clone(&handler), Arc::clone(&counters));
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = respond(&*handler, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::debug!("HTTP connection failed: {e}");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    log::debug!(
                        "HTTP connection took longer than {:?}",
                        limits.connection_timeout
                    );
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// The handler's answer to `request`, or 405 for methods other than GET
/// and HEAD (hyper leaves the body out of answers to HEAD).
fn respond<B>(
    handler: &(impl Fn(&Request) -> Response + ?Sized),
    request: &hyper::Request<B>,
) -> hyper::Response<Full<Bytes>> {
    let answer = if matches!(*request.method(), Method::GET | Method::HEAD) {
        handler(&Request {
            path: request.uri().path(),
            accept: request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        })
    } else {
        Response::text(405, "only GET and HEAD\n")
    };
    let mut response = hyper::Response::new(Full::new(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(answer.content_type),
    );
    if answer.status == 405 {
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// A server on an ephemeral loopback port, in a thread of its own,
    /// answering `/` with "hello"; stopped when the test ends.
    fn server(limits: Limits) -> (std::net::SocketAddr, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let c = Arc::clone(&counters);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                serve(
                    listener,
                    limits,
                    c,
                    |r: &Request| match r.path {
                        "/" => Response::text(200, "hello\n"),
                        _ => Response::text(404, "no\n"),
                    },
                    std::future::pending(),
                )
                .await;
            });
        });
        (addr, counters)
    }

    const LIMITS: Limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
        connection_timeout: Duration::from_secs(2),
        max_header_bytes: 8192,
    };

    fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_get_and_refuses_the_rest() {
        let (addr, _) = server(LIMITS);
        let ok = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nhello\n"), "{ok}");
        assert!(
            ok.to_ascii_lowercase().contains("connection: close"),
            "{ok}"
        );
        let head = exchange(addr, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let post = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[test]
    fn malformed_huge_and_slow_clients_do_not_stop_it() {
        let (addr, counters) = server(LIMITS);
        let garbage = exchange(addr, b"\x00\x01 nonsense\r\n\r\n");
        assert!(
            garbage.starts_with("HTTP/1.1 400") || garbage.is_empty(),
            "{garbage}"
        );
        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 100_000));
        huge.extend(b"\r\n\r\n");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&huge);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
        // Two slow clients take both slots; a third is turned away at once.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HT").unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let turned_away = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(turned_away.is_empty(), "{turned_away}");
        assert!(counters.rejected.load(Ordering::Relaxed) >= 1);
        // The header timeout ends them; then it answers again.
        std::thread::sleep(Duration::from_millis(600));
        drop(slow);
        let ok = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(counters.errors.load(Ordering::Relaxed) >= 3, "{counters:?}");
    }
}
