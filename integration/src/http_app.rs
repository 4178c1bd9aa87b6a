//! A small HTTP application server (hyper, HTTP/1.1 and h2c) that tests put
//! behind attache. Each one knows its name (sent back in `x-served-by`),
//! counts the requests it gets, and answers by path:
//! - `/echo...`: JSON with the method, path, headers, body length and SHA-256,
//!   and the address the request's connection came from (`peer`)
//! - `/close`: 200 with `Connection: close`, then the connection closes
//! - `/status/N`: status N
//! - `/script...`: the next status from [`HttpApp::script`], then 200
//! - `/hang...`: never answers
//! - `/download/N/SEED`: N pseudo-random bytes ([`crate::servers::random_chunks`]), streamed
//! - `/stall/N`: announces 2N bytes, sends N, then sends nothing more
//! - `/upload`: reads the body as it streams and answers its length and SHA-256
//! - `/ws`: a WebSocket that echoes every message
//!
//! [`HttpApp::fail_with`] and [`HttpApp::hang`] make every path fail or hang;
//! [`HttpApp::gate`] holds requests until a number of them have arrived.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// A running app server; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct HttpApp {
    pub address: SocketAddr,
    state: Arc<State>,
}

struct State {
    name: String,
    requests: AtomicUsize,
    script: Mutex<VecDeque<u16>>,
    /// Non-zero: every request gets this status.
    fail_with: AtomicU16,
    /// Every request hangs.
    hang: AtomicBool,
    /// The barrier the next requests wait at, and how many are still to take it.
    gate: Mutex<Option<(Arc<tokio::sync::Barrier>, usize)>>,
}

impl HttpApp {
    /// Starts an app called `name` on a free loopback port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let state = Arc::new(State {
            name: name.to_owned(),
            requests: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            fail_with: AtomicU16::new(0),
            hang: AtomicBool::new(false),
            gate: Mutex::new(None),
        });
        let served = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let state = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, peer, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { address, state }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// From now on every request (any path) gets `status`; `None` ends that.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state
            .fail_with
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// From now on every request (any path) hangs, or no longer does.
    pub fn hang(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    /// The next `count` requests (any path) are answered only once all
    /// `count` have arrived: requests that must be in flight together.
    ///
    /// # Panics
    /// When the lock is poisoned.
    pub fn gate(&self, count: usize) {
        *self.state.gate.lock().unwrap() =
            Some((Arc::new(tokio::sync::Barrier::new(count)), count));
    }

    /// Statuses that the next `/script` requests get, in order.
    ///
    /// # Panics
    /// When the lock is poisoned.
    pub fn script(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn answer(state: &State, peer: SocketAddr, mut request: Request<Incoming>) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let gate = {
        let mut gate = state.gate.lock().unwrap();
        let barrier = gate.as_ref().map(|(barrier, _)| barrier.clone());
        if let Some((_, remaining)) = gate.as_mut() {
            *remaining -= 1;
            if *remaining == 0 {
                *gate = None;
            }
        }
        barrier
    };
    if let Some(barrier) = gate {
        barrier.wait().await;
    }
    let path = request.uri().path().to_owned();
    let fail_with = state.fail_with.load(Ordering::SeqCst);
    let mut response = if state.hang.load(Ordering::SeqCst) || path.starts_with("/hang") {
        std::future::pending::<()>().await;
        unreachable!()
    } else if fail_with != 0 {
        let mut response = Response::new(full(format!("failing with {fail_with}\n")));
        *response.status_mut() =
            StatusCode::from_u16(fail_with).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    } else if path.starts_with("/echo") {
        echo(peer, request).await
    } else if path == "/close" {
        let mut response = Response::new(full("closing\n"));
        response
            .headers_mut()
            .insert("connection", "close".parse().expect("header"));
        response
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok());
        let mut response = Response::new(full(format!("status {code}\n")));
        *response.status_mut() = status.unwrap_or(StatusCode::BAD_REQUEST);
        response
    } else if path.starts_with("/script") {
        let next = state.script.lock().unwrap().pop_front().unwrap_or(200);
        let _ = request.into_body().collect().await;
        let mut response = Response::new(full(format!("scripted {next}\n")));
        *response.status_mut() = StatusCode::from_u16(next).unwrap_or(StatusCode::OK);
        response
    } else if let Some(spec) = path.strip_prefix("/download/") {
        download(spec)
    } else if let Some(count) = path.strip_prefix("/stall/") {
        stall(count.parse().unwrap_or(0))
    } else if path == "/upload" {
        upload(request).await
    } else if path == "/ws" {
        websocket(&mut request)
    } else {
        let mut response = Response::new(full("no such path\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    };
    if let Ok(name) = state.name.parse() {
        response.headers_mut().insert("x-served-by", name);
    }
    response
}

async fn echo(peer: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(values)) => values.push(value.into()),
            _ => {
                headers.insert(name.as_str().to_owned(), json!([value]));
            }
        }
    }
    let answer = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": crate::servers::sha256_hex(&body),
        "peer": peer.to_string(),
    });
    let mut response = Response::new(full(answer.to_string()));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn stall(count: usize) -> Response<Body> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        let _ = sender
            .send(Ok(Frame::data(Bytes::from(vec![b'x'; count]))))
            .await;
        // Holding the sender keeps the body open with half of it unsent.
        sender.closed().await;
    });
    let body = StreamBody::new(tokio_stream_from(receiver));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        "content-length",
        (2 * count).to_string().parse().expect("header"),
    );
    response
}

fn download(spec: &str) -> Response<Body> {
    let mut fields = spec.split('/');
    let count: usize = fields
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    let seed: u64 = fields
        .next()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for chunk in crate::servers::random_chunks(count, seed, 256 * 1024) {
            if sender
                .send(Ok(Frame::data(Bytes::from(chunk))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream = tokio_stream_from(receiver);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-length", count.to_string().parse().expect("header"));
    response
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

async fn upload(request: Request<Incoming>) -> Response<Body> {
    let mut body = request.into_body();
    let mut hasher = Sha256::new();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let mut response = Response::new(full("body error\n"));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            length += data.len();
        }
    }
    let answer =
        json!({ "body_len": length, "body_sha256": crate::servers::hex(&hasher.finalize()) });
    Response::new(full(answer.to_string()))
}

fn websocket(request: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        let mut response = Response::new(full("not a websocket request\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if socket.send(message).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", "upgrade".parse().expect("header"));
    headers.insert("upgrade", "websocket".parse().expect("header"));
    headers.insert("sec-websocket-accept", accept.parse().expect("header"));
    response
}
