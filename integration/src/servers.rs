//! Small upstream servers for behaviours no database shows on demand: echo,
//! a source/sink that hashes both directions, a reply-after-EOF server for
//! half-close, a slow source for drains, and a black hole for connect
//! timeouts. Each listens on a free loopback port and lives until the test's
//! runtime ends.

use std::net::{SocketAddr, TcpListener as StdListener};

use rand::{RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let address = listener.local_addr().expect("bound address");
    (listener, address)
}

fn serve_each<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
}

/// Echoes every byte back; half-closes after the client does.
pub async fn echo() -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, |mut stream| async move {
        let (mut read, mut write) = stream.split();
        if tokio::io::copy(&mut read, &mut write).await.is_ok() {
            let _ = write.shutdown().await;
        }
    });
    address
}

/// Writes `greeting` to each client and closes (tells endpoints apart).
pub async fn greeter(greeting: &'static str) -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, move |mut stream| async move {
        let _ = stream.write_all(greeting.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
    address
}

/// Reads up to the end of a request's head; false when the client left first.
async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut chunk = [0; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => request.extend_from_slice(&chunk[..read]),
        }
    }
    true
}

/// Answers every HTTP request with `200 OK` and `body`, then closes.
pub async fn http_ok(body: &'static str) -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, move |mut stream| async move {
        if !read_request_head(&mut stream).await {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
    address
}

/// Answers every HTTP request with a `200 OK` declaring `declared` bytes
/// of body, sends `sent` of them and stops (the connection stays open).
pub async fn http_truncated(declared: usize, sent: usize) -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, move |mut stream| async move {
        if !read_request_head(&mut stream).await {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&vec![b'x'; sent]).await;
    });
    address
}

/// `count` bytes, the same for a given `seed`.
pub fn random_bytes(count: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; count];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// `count` pseudo-random bytes for `seed`, in chunks of `chunk` bytes (a
/// multiple of 4 keeps the stream independent of the chunking).
pub fn random_chunks(count: usize, seed: u64, chunk: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut left = count;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let mut bytes = vec![0; chunk.min(left)];
        rng.fill_bytes(&mut bytes);
        left -= bytes.len();
        Some(bytes)
    })
}

/// SHA-256 of [`random_chunks`]' stream, computed without holding it.
pub fn random_chunks_sha256(count: usize, seed: u64) -> String {
    let mut hasher = Sha256::new();
    for chunk in random_chunks(count, seed, 256 * 1024) {
        hasher.update(&chunk);
    }
    hex(&hasher.finalize())
}

/// SHA-256 as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a source/sink connection saw: the hash of what it received and of
/// what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub received: String,
    pub sent: String,
}

/// Per connection: sends `count` random bytes (seeded by `seed`) while
/// reading and hashing everything the client sends; reports both hashes.
pub async fn source_sink(count: usize, seed: u64) -> (SocketAddr, mpsc::UnboundedReceiver<Hashes>) {
    let (listener, address) = listen().await;
    let (report, reports) = mpsc::unbounded_channel();
    serve_each(listener, move |mut stream| {
        let report = report.clone();
        async move {
            let payload = random_bytes(count, seed);
            let sent = sha256_hex(&payload);
            let (mut read, mut write) = stream.split();
            let sending = async {
                write.write_all(&payload).await?;
                write.shutdown().await
            };
            let receiving = async {
                let mut received = Vec::new();
                read.read_to_end(&mut received).await.map(|_| received)
            };
            if let Ok(((), received)) = tokio::try_join!(sending, receiving) {
                let _ = report.send(Hashes {
                    received: sha256_hex(&received),
                    sent,
                });
            }
        }
    });
    (address, reports)
}

/// Reads until the client half-closes, then replies with
/// `"<count> <sha256>\n"` of what it read followed by `tail` bytes of
/// seeded data, and closes.
pub async fn reply_after_eof(tail: usize) -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, move |mut stream| async move {
        let mut received = Vec::new();
        if stream.read_to_end(&mut received).await.is_err() {
            return;
        }
        let mut reply = format!("{} {}\n", received.len(), sha256_hex(&received)).into_bytes();
        reply.extend(random_bytes(tail, 7));
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    });
    address
}

/// Writes `greeting`, shuts down its write side at once, then reads until
/// the client's EOF and reports the SHA-256 of what it read.
pub async fn greet_then_read(
    greeting: &'static [u8],
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (listener, address) = listen().await;
    let (report, reports) = mpsc::unbounded_channel();
    serve_each(listener, move |mut stream| {
        let report = report.clone();
        async move {
            if stream.write_all(greeting).await.is_err() || stream.shutdown().await.is_err() {
                return;
            }
            let mut received = Vec::new();
            if stream.read_to_end(&mut received).await.is_ok() {
                let _ = report.send(sha256_hex(&received));
            }
        }
    });
    (address, reports)
}

/// Sends `count` seeded bytes in `chunk`-sized writes with `pause` between
/// them, then closes: a transfer that takes a while.
pub async fn slow_source(count: usize, chunk: usize, pause: std::time::Duration) -> SocketAddr {
    let (listener, address) = listen().await;
    serve_each(listener, move |mut stream| async move {
        let payload = random_bytes(count, 11);
        for piece in payload.chunks(chunk) {
            if stream.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
        let _ = stream.shutdown().await;
    });
    address
}

/// A loopback address whose connects hang: a listener with a zero backlog
/// whose only queue slot is taken, so the kernel drops further SYNs.
/// Connects time out for as long as the value lives.
pub struct BlackHole {
    pub address: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl BlackHole {
    /// # Panics
    /// When loopback sockets cannot be created.
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let address = socket
            .local_addr()
            .expect("address")
            .as_socket()
            .expect("inet address");
        let filler = std::net::TcpStream::connect(address).expect("the one queue slot");
        Self {
            address,
            _listener: socket,
            _filler: filler,
        }
    }
}

impl Default for BlackHole {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback port with nothing listening (connects are refused), never
/// one handed out before in this process: tests running in parallel start
/// their own servers on these ports, and the kernel may offer a port it
/// just freed to the next caller.
pub fn closed_port() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !handed_out.contains(&address.port()) {
            handed_out.push(address.port());
            return address;
        }
    }
}

/// A loopback port that is bound but not listening: connects are refused
/// as at a closed port, yet no other socket (an outgoing connection's
/// local port, another test's server) can take it before [`Self::listen`]
/// opens it, on the same port, for a server that "comes back".
pub struct ReservedPort {
    socket: socket2::Socket,
    pub address: SocketAddr,
}

impl ReservedPort {
    /// # Panics
    /// When no loopback port can be bound.
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind a free port");
        let address = socket
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .expect("bound address");
        Self { socket, address }
    }

    /// Starts listening on the reserved port.
    ///
    /// # Panics
    /// When the socket cannot listen or join the Tokio runtime.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listen");
        self.socket.set_nonblocking(true).expect("non-blocking");
        TcpListener::from_std(self.socket.into()).expect("a Tokio listener")
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}
