//! The floor under attache's HTTP benchmark: the least an HTTP proxy built
//! on hyper can cost. It serves HTTP/1.1 and h2c as attache does (hyper-util's
//! auto server), sends each request upstream on an HTTP/1.1 connection of
//! the client connection's own (one for an HTTP/1 client, one per request
//! in flight for an HTTP/2 client), on a runtime sized as attache sizes its
//! own and with attache's allocator, and does nothing else: no routing,
//! header rewriting beyond the Host an HTTP/1 upstream needs, limits,
//! timeouts, retries, metrics or logs.
//!
//! ```text
//! cargo build --release -p attache-hyper-floor
//! target/release/hyper-floor LISTEN UPSTREAM   # e.g. 127.0.0.1:8080 127.0.0.1:9000
//! ```
//!
//! `integration/bench/http.sh` and `http_instructions.sh` measure it beside
//! attache (docs/benchmarks.md, HTTP): what attache spends above it is
//! attache's own, and a target below it cannot be met on hyper.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// A client connection's upstream connections, made as its requests need them.
type Upstream = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arguments = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (arguments.next(), arguments.next()) else {
        return Err("usage: hyper-floor LISTEN UPSTREAM".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    // As attache's runtime: one thread on one CPU, else a worker per CPU.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (client, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
        };
        client.set_nodelay(true)?;
        tokio::spawn(async move {
            let connections: Upstream = Arc::default();
            let service = hyper::service::service_fn(move |request| {
                forward(connections.clone(), upstream, request)
            });
            // A client that leaves or sends garbage only ends its own connection.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(client), service)
                .await;
        });
    }
}

/// Sends `request` on one of the client connection's upstream connections
/// that is free (an HTTP/1 connection carries one response at a time), or
/// on a new one.
async fn forward(
    connections: Upstream,
    upstream: SocketAddr,
    mut request: Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    if request.version() == http::Version::HTTP_2 {
        // An HTTP/1.1 upstream needs the authority as a Host header.
        if let Some(host) = request
            .uri()
            .authority()
            .and_then(|authority| authority.as_str().parse().ok())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        *request.version_mut() = http::Version::HTTP_11;
    }
    let free = {
        let mut connections = connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        connections.retain(|sender| !sender.is_closed());
        let free = connections.iter().position(SendRequest::is_ready);
        free.map(|index| connections.swap_remove(index))
    };
    let mut sender = match free {
        Some(sender) => sender,
        None => connect(upstream).await?,
    };
    sender.ready().await.map_err(std::io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    connections
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(sender);
    Ok(response)
}

async fn connect(upstream: SocketAddr) -> std::io::Result<SendRequest<Incoming>> {
    let socket = TcpStream::connect(upstream).await?;
    socket.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}
