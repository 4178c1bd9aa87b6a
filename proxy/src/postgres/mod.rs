//! Postgres clients (`protocol: postgres`): the packets a Postgres client
//! sends before its session, answered the way a Postgres server answers
//! them, then the session pooled ([`session`]) or, with `auth:
//! passthrough`, forwarded as it is (the TCP route's relay).
//!
//! - `SSLRequest`: `S` and a TLS handshake on a listener with `tls:` (the
//!   listener's own, through [`TlsAcceptor`]: same certificates, client
//!   certificate checks, identity allow-lists and metrics as TLS up front);
//!   `N` without. A second `SSLRequest` inside TLS is refused.
//! - A TLS ClientHello as the first byte on a listener with `tls:`: direct
//!   TLS (Postgres 17's `sslnegotiation=direct`), which must negotiate ALPN
//!   `postgresql`.
//! - `GSSENCRequest`: `N` (attache holds no Kerberos credentials); the
//!   client goes on with `SSLRequest` or plaintext, as libpq does.
//! - `CancelRequest`: forwarded on a connection of its own, as Postgres
//!   expects, to the same upstream.
//! - The startup message (protocol 3.x): on a TLS listener only inside TLS
//!   (a plaintext one gets a FATAL error, as `hostssl` does). Then, with
//!   `auth: passthrough`, the upstream gets it first and the rest flows
//!   both ways (the TCP relay); with `auth: local` (the default) attache
//!   answers the client itself and pools its session ([`session`]).
//!
//! Every packet is read exactly (no read-ahead), so bytes a client sends
//! after `SSLRequest` but before the handshake are TLS input, never
//! plaintext taken into the session (CVE-2021-23214's buffer stuffing).
//! Packets are bounded as Postgres bounds them (10,000 bytes) and must
//! arrive within [`STARTUP_TIMEOUT`].

mod auth;
mod cancel;
mod pins;
mod pool;
mod server;
mod session;
mod startup;

/// The protocol's messages (the `pgwire/` crate, fuzzed on its own).
use attache_pg_wire as wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use attache_config::{PoolMode, PostgresListener};
use bytes::{Bytes, BytesMut};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::listener::{ConnectionContext, Protocol};
use crate::net::ClientStream;
use crate::tcp::TcpRoute;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CancelReason, CloseResult, ListenerMetrics, PostgresMetrics};
use startup::{Packet, StartupError, read_packet};

/// A client must have sent its startup message within this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinct statement texts remembered before the ids start over.
const MAX_STATEMENT_IDS: usize = 100_000;

/// One `postgres` listener: where its sessions go.
pub(crate) struct PostgresFront {
    pub(crate) route: TcpRoute,
    /// `None` with `auth: passthrough` (each session relayed as it is).
    pooler: Option<Pooler>,
}

impl PostgresFront {
    /// The listener's front; its `users_file` is read now.
    ///
    /// # Errors
    /// When the users file cannot be read, has a bad line, or names a user
    /// that `users` names too.
    pub(crate) fn new(
        route: TcpRoute,
        settings: &PostgresListener,
        metrics: PostgresMetrics,
    ) -> anyhow::Result<Self> {
        let mut users = settings.users.clone();
        if let Some(file) = &settings.users_file {
            for (name, secret) in crate::userlist::read(file)
                .map_err(|message| anyhow::anyhow!("postgres.users_file: {message}"))?
            {
                if users.contains_key(&name) {
                    anyhow::bail!(
                        "postgres.users_file: user {name:?} is both in postgres.users and in {}",
                        file.display()
                    );
                }
                let user = attache_config::PostgresUser {
                    secret,
                    query_timeout: None,
                };
                users.insert(name, user);
            }
        }
        let pooler = (settings.pool.auth == attache_config::DatabaseAuth::Local).then(|| Pooler {
            mode: settings.pool.pool_mode,
            settings: settings.clone(),
            pools: pool::Pools::new(route.upstream.clone(), settings, metrics.clone()),
            metrics,
            statements: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            next_statement: AtomicU64::new(1),
            cancels: cancel::CancelKeys::default(),
            users: auth::Users::new(&users),
        });
        Ok(Self { route, pooler })
    }

    /// Each pool's state for `/upstreams`: listener, pool
    /// (`database/user`), server connections lent and idle, clients waiting.
    pub(crate) fn pool_states(&self) -> Vec<serde_json::Value> {
        let Some(pooler) = &self.pooler else {
            return Vec::new();
        };
        pooler
            .pools
            .states()
            .into_iter()
            .map(|(pool, (active, idle, waiting))| {
                serde_json::json!({
                    "listener": self.route.listener,
                    "pool": pool,
                    "mode": pooler.mode.as_str(),
                    "pool_size": pooler.settings.pool.pool_size,
                    "active": active,
                    "idle": idle,
                    "waiting": waiting,
                })
            })
            .collect()
    }
}

/// What pooled sessions share.
struct Pooler {
    mode: PoolMode,
    settings: PostgresListener,
    pools: pool::Pools,
    metrics: PostgresMetrics,
    /// Statement text and parameter types → the id it is prepared under,
    /// and whether a server has accepted it.
    statements: Mutex<HashMap<Bytes, (u64, bool)>>,
    /// Ids a server accepted, for marking them in `statements`.
    accepted: Mutex<HashMap<u64, Bytes>>,
    next_statement: AtomicU64,
    cancels: cancel::CancelKeys,
    /// Who may log in (SCRAM); empty: loopback clients are trusted.
    users: auth::Users,
}

impl Pooler {
    /// The id of a statement definition (text and parameter types), the
    /// same for every client that prepares it.
    fn statement_id(&self, definition: &Bytes) -> u64 {
        let mut statements = lock(&self.statements);
        if let Some((id, _)) = statements.get(definition) {
            return *id;
        }
        if statements.len() >= MAX_STATEMENT_IDS {
            // Ids already prepared stay valid; their texts get new ones.
            statements.clear();
            lock(&self.accepted).clear();
        }
        let id = self.next_statement.fetch_add(1, Ordering::Relaxed);
        statements.insert(definition.clone(), (id, false));
        lock(&self.accepted).insert(id, definition.clone());
        id
    }

    /// The id of a statement definition a server has accepted (parsed
    /// without error) before.
    fn accepted_statement(&self, definition: &Bytes) -> Option<u64> {
        match lock(&self.statements).get(definition) {
            Some((id, true)) => Some(*id),
            _ => None,
        }
    }

    /// A server parsed statement `id` without error.
    fn statement_accepted(&self, id: u64) {
        let Some(definition) = lock(&self.accepted).remove(&id) else {
            return;
        };
        if let Some(entry) = lock(&self.statements).get_mut(&definition) {
            entry.1 = true;
        }
    }
}

impl Protocol for PostgresFront {
    fn listener_name(&self) -> &str {
        &self.route.listener
    }

    fn metrics(&self) -> &ListenerMetrics {
        &self.route.metrics
    }

    fn serve(
        self: Arc<Self>,
        client: ClientStream,
        context: ConnectionContext,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(serve(client, context, self))
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn starts_tls_in_band(&self) -> bool {
        true
    }
}

/// What became of the packets before the session.
enum Opening {
    /// Forward the session, starting with this startup message.
    Session(ClientStream, Vec<u8>),
    /// A cancel request, to forward on a connection of its own.
    Cancel(ClientStream, Vec<u8>),
    /// The client was answered (or failed) and the connection is done.
    Done(CloseResult),
}

async fn serve(client: ClientStream, mut context: ConnectionContext, front: Arc<PostgresFront>) {
    let route = &front.route;
    // Boxed: the TLS handshake's state is freed once the session starts.
    let opening =
        tokio::time::timeout(STARTUP_TIMEOUT, Box::pin(open(client, &mut context, route))).await;
    match opening {
        Ok(Opening::Session(client, startup)) => match &front.pooler {
            Some(pooler) => {
                // Boxed: a session does not carry its startup's state.
                // Taken out of the `Result` in a statement of its own,
                // so the session is held once while it runs (a
                // `match` scrutinee would stay beside it: 512 bytes
                // more for each idle client).
                let mut session =
                    match Box::pin(pooled(client, &context, route, pooler, startup)).await {
                        Ok(session) => session,
                        Err(result) => return route.metrics.closed(result),
                    };
                // By reference: a by-value `self` would also be held
                // twice (as the argument and as its local).
                let result = session.run().await;
                route.metrics.closed(result);
            }
            None => Box::pin(crate::tcp::forward(client, context, route, &startup)).await,
        },
        Ok(Opening::Cancel(client, packet)) => match &front.pooler {
            Some(pooler) => {
                // Postgres answers a cancel request with nothing but a close.
                drop(client);
                if let Some(destination) = pooler.cancels.target(&packet) {
                    pooler.metrics.cancelled(CancelReason::Client);
                    // Boxed: its connect and TLS state would otherwise
                    // size every client's future.
                    Box::pin(cancel::send(destination)).await;
                }
                route.metrics.closed(CloseResult::Ok);
            }
            None => Box::pin(crate::tcp::forward(client, context, route, &packet)).await,
        },
        Ok(Opening::Done(result)) => route.metrics.closed(result),
        Err(_) => {
            tracing::debug!(listener = %route.listener, client = %context.client_address, "closing: no startup message within {STARTUP_TIMEOUT:?}");
            route.metrics.closed(CloseResult::IdleTimeout);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pooled session's startup: attache answers it itself (the client is
/// trusted on loopback); the [`session::Session`] that serves the rest, or
/// how the connection ended.
async fn pooled<'a>(
    mut client: ClientStream,
    context: &ConnectionContext,
    route: &'a TcpRoute,
    pooler: &'a Pooler,
    startup: Vec<u8>,
) -> Result<session::Session<'a>, CloseResult> {
    let address = context.client_address;
    let refuse = async |client: &mut ClientStream, code: &str, message: String| {
        limited!(
            route.metrics.log_limit,
            "postgres_startup",
            info!(listener = %route.listener, client = %address, %message, "refused a Postgres client at startup")
        );
        let _ = client.write_all(&wire::fatal(code, &message)).await;
        CloseResult::Error
    };
    let parameters = wire::startup_parameters(&startup);
    drop(startup);
    let parameters = match parameters {
        Ok(parameters) => parameters,
        Err(error) => return Err(refuse(&mut client, "08P01", format!("attache: {error}")).await),
    };
    let mut user = None;
    let mut database = None;
    let mut wanted = Vec::new();
    for (name, value) in parameters {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "replication" => {
                let message = "attache: replication connections are not pooled".to_owned();
                return Err(refuse(&mut client, "0A000", message).await);
            }
            "options" if !value.trim().is_empty() => {
                let message = "attache: startup `options` are not supported by a pooling \
                               listener; set them with SET (which pins the session) or on the role"
                    .to_owned();
                return Err(refuse(&mut client, "0A000", message).await);
            }
            "options" => {}
            _ if name.starts_with("_pq_.") => {}
            _ if !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.') =>
            {
                let message = format!("attache: invalid startup parameter name {name:?}");
                return Err(refuse(&mut client, "08P01", message).await);
            }
            _ => wanted.push((name, value)),
        }
    }
    let Some(user) = user.filter(|user| !user.is_empty()) else {
        let message = "attache: no PostgreSQL user name specified in startup packet".to_owned();
        return Err(refuse(&mut client, "28000", message).await);
    };
    let database = database
        .filter(|database| !database.is_empty())
        .unwrap_or_else(|| user.clone());
    let credentials = pooler.users.get(&user);
    if pooler.users.is_empty() {
        // Without users: loopback clients, and clients whose certificate
        // the listener verified (a front door with `client_ca`).
        if !address.ip().is_loopback() && client.peer_identity().is_none() {
            let message = "attache: no users are configured (postgres.users, postgres.users_file); only loopback \
                           clients and clients with a verified certificate are let in without one"
                .to_owned();
            return Err(refuse(&mut client, "28000", message).await);
        }
    } else {
        let login = auth::authenticate(&mut client, &user, credentials);
        match tokio::time::timeout(STARTUP_TIMEOUT, login).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(refuse(&mut client, error.sqlstate(), error.to_string()).await);
            }
            Err(_) => return Err(CloseResult::IdleTimeout),
        }
    }
    let user_password = credentials.and_then(|credentials| credentials.password.as_deref());
    let query_timeout = credentials
        .and_then(|credentials| credentials.query_timeout)
        .or(pooler.settings.pool.query_timeout);
    let pool = pooler.pools.pool(&database, &user, user_password);
    drop(user);
    let reported = match pool.connector().reported() {
        Some(reported) => reported,
        // The pool's first client: the server's login answers it.
        None => match Box::pin(pool.get()).await {
            Ok(mut lease) => Arc::new(lease.connection().reported.clone()),
            Err(error) => {
                let reply = match &error {
                    pool::PoolError::Server(server::ServerError::Refused { response, .. }) => {
                        response.clone()
                    }
                    _ => wire::fatal("08006", &format!("attache: {error}")),
                };
                limited!(
                    route.metrics.log_limit,
                    "postgres_no_server",
                    warn!(listener = %route.listener, client = %address, %error, "no Postgres server connection for a client")
                );
                let _ = client.write_all(&reply).await;
                return Err(CloseResult::UpstreamUnavailable);
            }
        },
    };
    let key = pooler.cancels.register();
    let mut greeting = BytesMut::new();
    wire::authentication_ok(&mut greeting);
    for (name, value) in reported.iter() {
        let value = wanted
            .iter()
            .find(|(wanted, _)| wanted.eq_ignore_ascii_case(name))
            .map_or(value, |(_, value)| value);
        wire::parameter_status(&mut greeting, name, value);
    }
    drop(reported);
    wire::backend_key_data(&mut greeting, key.process_id, key.secret);
    wire::ready_for_query(&mut greeting, b'I');
    // Nothing of the startup stays with an idle session.
    let greeted = client.write_all(&greeting).await;
    drop(greeting);
    if greeted.is_err() {
        return Err(CloseResult::Error);
    }
    let client = session::Client {
        stream: client,
        address,
        database,
        wanted,
        cancel: key,
        query_timeout,
    };
    Ok(session::Session::new(route, pooler, client, pool))
}

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Direct TLS (Postgres 17's `sslnegotiation=direct`): a client on a TLS
/// listener that starts with a ClientHello instead of an `SSLRequest` gets
/// the handshake at once, and must have negotiated ALPN `postgresql` (as
/// Postgres requires, so that a TLS session meant for another protocol is
/// never taken for a Postgres one). Any other first byte is left unread.
async fn direct_tls(
    client: ClientStream,
    context: &mut ConnectionContext,
    route: &TcpRoute,
) -> Result<ClientStream, CloseResult> {
    let ClientStream::Plain(stream) = client else {
        return Ok(client);
    };
    let mut first = [0; 1];
    if !matches!(stream.peek(&mut first).await, Ok(1)) || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok(ClientStream::Plain(stream));
    }
    let Some(tls) = context.tls.take() else {
        return Ok(ClientStream::Plain(stream));
    };
    // Counted and logged as a failed handshake when it fails.
    let mut client = tls
        .accept(stream, context.client_address)
        .await
        .ok_or(CloseResult::TlsHandshakeFailed)?;
    let ClientStream::Tls(session) = &client else {
        return Ok(client);
    };
    if session.get_ref().1.alpn_protocol() == Some(b"postgresql".as_slice()) {
        return Ok(client);
    }
    limited!(
        route.metrics.log_limit,
        "postgres_direct_tls_alpn",
        info!(listener = %route.listener, client = %context.client_address, "refused a direct TLS Postgres client that did not negotiate ALPN \"postgresql\"")
    );
    let reply = wire::fatal(
        "08P01",
        "attache: direct TLS connections must negotiate ALPN \"postgresql\"",
    );
    let _ = client.write_all(&reply).await;
    Err(CloseResult::Error)
}

/// Reads and answers what the client sends before its startup message.
async fn open(
    mut client: ClientStream,
    context: &mut ConnectionContext,
    route: &TcpRoute,
) -> Opening {
    let address = context.client_address;
    if context.tls.is_some() {
        match direct_tls(client, context, route).await {
            Ok(upgraded) => client = upgraded,
            Err(result) => return Opening::Done(result),
        }
    }
    loop {
        let packet = match read_packet(&mut client).await {
            Ok(packet) => packet,
            // A connection that closes before its first byte (a TCP probe).
            Err(StartupError::Read(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Opening::Done(CloseResult::Ok);
            }
            Err(error) => {
                limited!(
                    route.metrics.log_limit,
                    "postgres_startup",
                    info!(listener = %route.listener, client = %address, %error, "closing a Postgres client before its session")
                );
                let reply = wire::fatal("08P01", &format!("attache: {error}"));
                let _ = client.write_all(&reply).await;
                return Opening::Done(CloseResult::Error);
            }
        };
        let in_tls = matches!(client, ClientStream::Tls(_));
        match packet {
            Packet::SslRequest if in_tls => {
                let reply = wire::fatal("08P01", "attache: SSLRequest inside TLS");
                let _ = client.write_all(&reply).await;
                return Opening::Done(CloseResult::Error);
            }
            Packet::SslRequest => match (context.tls.take(), client) {
                (Some(tls), ClientStream::Plain(mut stream)) => {
                    if stream.write_all(b"S").await.is_err() {
                        return Opening::Done(CloseResult::Error);
                    }
                    match tls.accept(stream, address).await {
                        Some(upgraded) => client = upgraded,
                        // Counted and logged as a failed handshake.
                        None => return Opening::Done(CloseResult::TlsHandshakeFailed),
                    }
                }
                (None, mut plain) => {
                    if plain.write_all(b"N").await.is_err() {
                        return Opening::Done(CloseResult::Error);
                    }
                    client = plain;
                }
                (Some(_), tls @ ClientStream::Tls(_)) => client = tls,
            },
            Packet::GssEncRequest => {
                if client.write_all(b"N").await.is_err() {
                    return Opening::Done(CloseResult::Error);
                }
            }
            Packet::Cancel(bytes) => return Opening::Cancel(client, bytes),
            Packet::Startup(_) if context.tls.is_some() && !in_tls => {
                // A TLS listener serves sessions inside TLS only.
                let reply = wire::fatal(
                    "28000",
                    "attache: this listener accepts TLS connections only (sslmode=require)",
                );
                let _ = client.write_all(&reply).await;
                limited!(
                    route.metrics.log_limit,
                    "postgres_plaintext",
                    info!(listener = %route.listener, client = %address, "refused a plaintext Postgres session on a TLS listener")
                );
                return Opening::Done(CloseResult::Error);
            }
            Packet::Startup(bytes) => return Opening::Session(client, bytes),
        }
    }
}
