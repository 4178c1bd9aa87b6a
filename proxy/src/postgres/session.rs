//! One pooled client session: the client's messages forwarded to a lent
//! server connection and the replies back, with what pooling needs in
//! between.
//!
//! - **Replies in order.** Every message that gets a reply pushes what it
//!   expects ([`Expect`]); replies pop them. That says when the server is
//!   done with the client (a `ReadyForQuery` with nothing else expected),
//!   which replies attache asked for itself (hidden), and where a reply
//!   attache makes itself goes (a `ParseComplete` for a statement the
//!   server connection already has).
//! - **Transaction mode.** The server connection goes back to its pool at
//!   `ReadyForQuery` idle with nothing in flight, unless the session pinned
//!   it (`SET`, `LISTEN`, ... see [`super::pins`]). The client's startup
//!   settings are set on each connection it is lent, when they differ.
//! - **Prepared statements.** Named statements are prepared on the server
//!   as `attache_<id>`, one id per distinct statement text and parameter
//!   types, on whichever connection the client gets; `Bind`, `Describe`
//!   and `Close` are translated; each connection keeps at most
//!   `max_prepared_statements` (least recently used closed).
//! - **Timeouts.** A statement past `query_timeout` gets a `CancelRequest`;
//!   a client idle inside a transaction past `idle_in_transaction_timeout`
//!   is closed and its server connection dropped.
//! - Result rows and `COPY` data stream through without being held whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::Pooler;
use super::cancel::CancelKey;
use super::pins::{self, SessionEffect};
use super::pool::{Lease, Pool, PoolError};
use super::wire::{self, WireError};
use crate::net::ClientStream;
use crate::sql_text::{Dialect, sanitize};
use crate::tcp::TcpRoute;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CancelReason, CloseResult};
use attache_config::PoolMode;

/// Client messages larger than this are refused (COPY data streams through
/// at any size).
pub(super) const MAX_CLIENT_MESSAGE: usize = 64 << 20;
/// Server messages read whole; rows and COPY data above
/// [`STREAM_ABOVE`] stream through instead.
const MAX_SERVER_MESSAGE: usize = 64 << 20;
/// Rows and COPY data longer than this are forwarded as they arrive.
const STREAM_ABOVE: usize = 64 << 10;
/// Prepared statement names one client may hold.
const MAX_CLIENT_STATEMENTS: usize = 100_000;

/// What a message sent to the server will be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `ParseComplete`; `prepared`: the statement id it prepares, forgotten
    /// if it fails.
    ParseComplete {
        forward: bool,
        prepared: Option<u64>,
    },
    BindComplete,
    CloseComplete {
        forward: bool,
    },
    /// `Describe`: ends with `RowDescription` or `NoData`.
    Describe,
    /// `Execute`: ends with `CommandComplete`, `EmptyQueryResponse`,
    /// `PortalSuspended` or an error.
    Execute,
    /// `Sync`, `Query`, `FunctionCall`: end with `ReadyForQuery`; hidden
    /// when attache sent it; `query`: a client's `Query`.
    Ready {
        forward: bool,
        query: bool,
    },
    /// A reply attache gives itself at this point in the stream.
    Synthetic(u8),
    /// A `DEALLOCATE` of one of the client's statements, answered by
    /// attache: `CommandComplete` and `ReadyForQuery`.
    Deallocated,
}

/// A client's named prepared statement.
#[derive(Clone)]
struct Statement {
    id: u64,
    /// The `Parse` body after the name: the text and parameter types.
    definition: Bytes,
}

/// What `db.query.text` needs: the sanitized text of each statement.
#[derive(Default)]
struct QueryTexts {
    /// Of each `Query` and `Execute` sent and not yet answered, in order.
    pending: VecDeque<String>,
    /// Of the client's prepared statements, by name (`""` the unnamed).
    statements: HashMap<Vec<u8>, String>,
    /// Of the statement the last `Bind` named.
    bound: Option<String>,
}

impl QueryTexts {
    fn parsed(&mut self, name: &[u8], text: &[u8]) {
        if self.statements.len() < MAX_CLIENT_STATEMENTS || self.statements.contains_key(name) {
            self.statements
                .insert(name.to_vec(), sanitize(text, Dialect::Postgres));
        }
    }
}

/// How a session ended.
enum End {
    /// The client terminated or closed.
    Client,
    /// Counted and answered already.
    Failed(CloseResult),
}

pub(super) struct Session<'a> {
    route: &'a TcpRoute,
    pooler: &'a Pooler,
    client: ClientStream,
    client_address: std::net::SocketAddr,
    /// The database the client named (its spans' `db.namespace`).
    database: String,
    pool: Arc<Pool>,
    lease: Option<Lease>,
    pinned: bool,
    /// The client's startup settings, set on each connection it is lent.
    wanted: Vec<(String, String)>,
    statements: HashMap<Bytes, Statement>,
    /// The cancel key the client was given; where its cancels go now.
    cancel: CancelKey<'a>,
    /// The user's `query_timeout`, else the listener's.
    query_timeout: Option<Duration>,
    /// With `trace_query_text` and a tracer: the statements' texts.
    query_texts: Option<Box<QueryTexts>>,
    from_client: BytesMut,
    from_server: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    expect: VecDeque<Expect>,
    /// Bytes of a streamed server message still to forward as they come.
    streaming: usize,
    /// Bytes of a streamed client `CopyData` still to forward.
    client_streaming: usize,
    /// The transaction status of the last `ReadyForQuery`.
    status: u8,
    statement_started: Option<Instant>,
    transaction_started: Option<Instant>,
    /// When the query timeout fires (a statement in flight).
    query_deadline: Option<Instant>,
    /// When the client's first message since the last idle `ReadyForQuery`
    /// was sent (a transaction's start).
    sent_since_idle: Option<Instant>,
    /// When the last `ReadyForQuery` arrived.
    idle_since: Instant,
}

/// A client as its startup left it.
pub(super) struct Client<'a> {
    pub(super) stream: ClientStream,
    pub(super) address: std::net::SocketAddr,
    pub(super) database: String,
    /// The settings its startup message named.
    pub(super) wanted: Vec<(String, String)>,
    /// The cancel key it was given.
    pub(super) cancel: CancelKey<'a>,
    /// The user's `query_timeout`, else the listener's.
    pub(super) query_timeout: Option<Duration>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        route: &'a TcpRoute,
        pooler: &'a Pooler,
        client: Client<'a>,
        pool: Arc<Pool>,
    ) -> Self {
        Self {
            route,
            pooler,
            client: client.stream,
            client_address: client.address,
            database: client.database,
            pool,
            lease: None,
            pinned: false,
            wanted: client.wanted,
            statements: HashMap::new(),
            cancel: client.cancel,
            query_timeout: client.query_timeout,
            query_texts: (pooler.settings.trace_query_text && route.tracer.is_some())
                .then(Box::default),
            from_client: BytesMut::new(),
            from_server: BytesMut::new(),
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            expect: VecDeque::new(),
            streaming: 0,
            client_streaming: 0,
            status: b'I',
            statement_started: None,
            transaction_started: None,
            query_deadline: None,
            sent_since_idle: None,
            idle_since: Instant::now(),
        }
    }

    /// Serves the session to its end; the server connection, if any, goes
    /// back to its pool cleaned, or is closed.
    pub(super) async fn run(&mut self) -> CloseResult {
        let end = self.serve().await;
        self.cancel.target.clear();
        if let Some(mut lease) = self.lease.take() {
            let dirty = self.pinned || self.pooler.mode == PoolMode::Session;
            let clean = self.expect.is_empty() && self.status == b'I' && self.streaming == 0;
            if !clean {
                lease.connection().broken = true;
            } else if dirty {
                Box::pin(reset(&mut lease)).await;
            }
        }
        match end {
            End::Client => CloseResult::Ok,
            End::Failed(result) => result,
        }
    }

    async fn serve(&mut self) -> End {
        let mut last_read = Instant::now();
        loop {
            let idle_deadline = self.idle_in_transaction_deadline();
            // No byte either way for the listener's idle_timeout (a query
            // still running keeps its client).
            let quiet_deadline = (self.expect.is_empty() && self.streaming == 0)
                .then(|| last_read + self.route.idle_timeout);
            let deadline = [self.query_deadline, idle_deadline, quiet_deadline]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                read = read_client(&mut self.client, &mut self.from_client) => match read {
                    Ok(0) | Err(_) => return End::Client,
                    Ok(_) => {
                        last_read = Instant::now();
                        if let Err(end) = self.handle_client_messages().await {
                            return end;
                        }
                    }
                },
                read = read_server(&mut self.lease, &mut self.from_server) => match read {
                    Ok(0) => return self.server_failed("the server closed the connection").await,
                    Err(error) => return self.server_failed(&error.to_string()).await,
                    Ok(_) => {
                        last_read = Instant::now();
                        if let Err(end) = self.handle_server_messages().await {
                            return end;
                        }
                    }
                },
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    if idle_deadline.is_some_and(|idle| idle <= now) {
                        return self.idle_in_transaction_timeout().await;
                    }
                    if quiet_deadline.is_some_and(|quiet| quiet <= now) {
                        tracing::debug!(listener = %self.route.listener, client = %self.client_address, "closing an idle Postgres client (idle_timeout)");
                        return End::Failed(CloseResult::IdleTimeout);
                    }
                    self.query_timed_out();
                }
            }
        }
    }

    fn idle_in_transaction_deadline(&self) -> Option<Instant> {
        let timeout = self.pooler.settings.idle_in_transaction_timeout?;
        let idle_inside = self.lease.is_some()
            && self.expect.is_empty()
            && matches!(self.status, b'T' | b'E')
            && self.from_client.is_empty();
        idle_inside.then(|| self.idle_since + timeout)
    }
}

/// Room read into at once from the server while a connection is lent.
const SERVER_READ: usize = 16 << 10;
/// Room read into at once from the client.
const CLIENT_READ: usize = 2 << 10;

async fn read_server(lease: &mut Option<Lease>, buffer: &mut BytesMut) -> std::io::Result<usize> {
    let Some(lease) = lease else {
        return std::future::pending().await;
    };
    let server = lease.connection().stream();
    if buffer.is_empty() {
        // Most answers are small and whole: read on the stack and keep
        // only what came, instead of reserving a large buffer each time.
        return crate::net::read_into_room(server, buffer).await;
    }
    if buffer.capacity() - buffer.len() < SERVER_READ / 2 {
        buffer.reserve(SERVER_READ);
    }
    server.read_buf(buffer).await
}

/// Reads what the client sent; an idle client holds no buffer. With
/// nothing buffered, the read goes into room on the stack, copied out
/// only when bytes came: a readiness the runtime still remembers from the
/// last read (it is cleared only by a read that finds nothing) would
/// otherwise make every idle client reserve a buffer and keep it while it
/// waits.
async fn read_client(client: &mut ClientStream, buffer: &mut BytesMut) -> std::io::Result<usize> {
    if !buffer.is_empty() {
        if buffer.capacity() - buffer.len() < CLIENT_READ / 2 {
            buffer.reserve(CLIENT_READ);
        }
        return client.read_buf(buffer).await;
    }
    crate::net::read_into_room(client, buffer).await
}

/// Gives back an empty buffer's memory: between transactions a client
/// holds none.
fn release(buffer: &mut BytesMut) {
    if buffer.is_empty() {
        *buffer = BytesMut::new();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Session<'_> {
    /// Handles every whole message the client sent, then sends what they
    /// made to the server and the replies attache makes itself to the client.
    async fn handle_client_messages(&mut self) -> Result<(), End> {
        loop {
            if self.client_streaming > 0 {
                if pass_on(
                    &mut self.client_streaming,
                    &mut self.from_client,
                    &mut self.to_server,
                ) {
                    continue;
                }
                break;
            }
            let (tag, whole) = match wire::peek(&self.from_client, MAX_CLIENT_MESSAGE) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => return Err(self.client_broke_protocol(&error).await),
            };
            if self.from_client.len() < whole {
                if tag == b'd' && whole > STREAM_ABOVE && self.lease.is_some() {
                    // COPY data streams through at any size.
                    let length = self.from_client.len();
                    self.to_server
                        .extend_from_slice(&self.from_client.split_to(length));
                    self.client_streaming = whole - length;
                    continue;
                }
                self.from_client.reserve(whole - self.from_client.len());
                break;
            }
            let message = self.from_client.split_to(whole).freeze();
            if tag == b'X' {
                self.flush_server().await?;
                return Err(End::Client);
            }
            match self.answered_locally(tag, &message) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => return Err(self.client_broke_protocol(&error).await),
            }
            self.lend().await?;
            if let Err(error) = self.client_message(tag, message) {
                return Err(self.client_broke_protocol(&error).await);
            }
        }
        self.flush_server().await?;
        self.flush_client().await
    }

    /// Answers, without a server connection, what needs none while the
    /// client holds none (transaction mode): `Parse` of a statement some
    /// server connection already accepted, `Close` of a named statement,
    /// then the `Sync` or `Flush` after them; a `DEALLOCATE` query of a
    /// named statement. A client that prepares while another of the same
    /// application thread holds a transaction (libpq's synchronous
    /// `PQprepare`, pgbench `-M prepared`) so never waits on it.
    fn answered_locally(&mut self, tag: u8, message: &Bytes) -> Result<bool, WireError> {
        if self.lease.is_some() || self.pooler.mode != PoolMode::Transaction {
            return Ok(false);
        }
        match tag {
            b'P' => {
                let mut rest = wire::body(message);
                let name = wire::cstr(&mut rest, "Parse")?;
                if name.is_empty() {
                    return Ok(false);
                }
                let definition = message.slice(message.len() - rest.len()..);
                let Some(id) = self.pooler.accepted_statement(&definition) else {
                    return Ok(false);
                };
                let name = message.slice(wire::HEADER..wire::HEADER + name.len());
                if self.statements.len() >= MAX_CLIENT_STATEMENTS
                    && !self.statements.contains_key(&name)
                {
                    return Err(WireError::Malformed("Parse (too many prepared statements)"));
                }
                self.statements.insert(name, Statement { id, definition });
                wire::message(&mut self.to_client, b'1', &[]);
            }
            b'C' if wire::body(message).first() == Some(&b'S') => {
                let mut rest = &wire::body(message)[1..];
                let name = wire::cstr(&mut rest, "Close")?;
                if name.is_empty() {
                    return Ok(false);
                }
                self.statements.remove(name);
                wire::message(&mut self.to_client, b'3', &[]);
            }
            b'Q' if self.forgot_deallocated(message)? => {
                deallocate_complete(&mut self.to_client, self.status);
            }
            b'S' => wire::ready_for_query(&mut self.to_client, self.status),
            b'H' => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A server connection for the client's next message, with the
    /// client's settings applied.
    async fn lend(&mut self) -> Result<(), End> {
        if self.lease.is_some() {
            return Ok(());
        }
        let metrics = &self.pooler.metrics;
        let asked = Instant::now();
        let lease = match self.pool.try_idle() {
            Some(lease) => lease,
            // Boxed: the connect and login state is not part of every idle session.
            None => match Box::pin(self.pool.get()).await {
                Ok(lease) => lease,
                Err(error) => return Err(self.no_server(error).await),
            },
        };
        metrics
            .pool
            .wait_duration
            .observe(asked.elapsed().as_secs_f64());
        let mut lease = lease;
        let server = lease.connection();
        if let Some(destination) = server.cancel_destination() {
            self.cancel.target.set(destination);
        }
        let mut settings = String::new();
        for (name, value) in &self.wanted {
            if server.current.get(name) != Some(value) {
                settings.push_str(&format!("SET {name} TO '{}';", value.replace('\'', "''")));
                server.current.insert(name.clone(), value.clone());
            }
        }
        if !settings.is_empty() {
            wire::query(&mut self.to_server, &settings);
            self.expect.push_back(Expect::Ready {
                forward: false,
                query: false,
            });
        }
        self.lease = Some(lease);
        Ok(())
    }

    /// One whole client message, forwarded or translated.
    fn client_message(&mut self, tag: u8, message: Bytes) -> Result<(), WireError> {
        let rewrite = self.pooler.mode == PoolMode::Transaction;
        if self.sent_since_idle.is_none() {
            self.sent_since_idle = Some(Instant::now());
        }
        match tag {
            b'Q' if rewrite && self.forgot_deallocated(&message)? => {
                self.expect.push_back(Expect::Deallocated);
            }
            b'Q' => {
                let mut body = wire::body(&message);
                let text = wire::cstr(&mut body, "Query")?;
                self.session_effects(text);
                if let Some(texts) = &mut self.query_texts {
                    texts.pending.push_back(sanitize(text, Dialect::Postgres));
                }
                self.to_server.extend_from_slice(&message);
                self.expect.push_back(Expect::Ready {
                    forward: true,
                    query: true,
                });
                self.statement_sent();
            }
            b'P' => {
                let mut rest = wire::body(&message);
                let name = wire::cstr(&mut rest, "Parse")?;
                let mut definition = rest;
                let text = wire::cstr(&mut definition, "Parse")?;
                self.session_effects(text);
                if let Some(texts) = &mut self.query_texts {
                    texts.parsed(name, text);
                }
                if name.is_empty() || !rewrite {
                    self.to_server.extend_from_slice(&message);
                    self.expect.push_back(Expect::ParseComplete {
                        forward: true,
                        prepared: None,
                    });
                } else {
                    let offset = message.len() - rest.len();
                    let statement = Statement {
                        id: self.pooler.statement_id(&message.slice(offset..)),
                        definition: message.slice(offset..),
                    };
                    let name = message.slice(wire::HEADER..wire::HEADER + name.len());
                    if self.statements.len() >= MAX_CLIENT_STATEMENTS
                        && !self.statements.contains_key(&name)
                    {
                        return Err(WireError::Malformed("Parse (too many prepared statements)"));
                    }
                    let server = self.server();
                    if server.prepared.get(&statement.id).is_some() {
                        self.expect.push_back(Expect::Synthetic(b'1'));
                    } else {
                        self.prepare(&statement, true);
                    }
                    self.statements.insert(name, statement);
                }
            }
            b'B' => {
                let mut rest = wire::body(&message);
                let portal = wire::cstr(&mut rest, "Bind")?;
                let name = wire::cstr(&mut rest, "Bind")?;
                if let Some(texts) = &mut self.query_texts {
                    texts.bound = texts.statements.get(name).cloned();
                }
                match self.translated(rewrite, name) {
                    Some(server_name) => {
                        let at = wire::start(&mut self.to_server, b'B');
                        self.to_server.put_slice(portal);
                        self.to_server.put_u8(0);
                        self.to_server.put_slice(server_name.as_bytes());
                        self.to_server.put_u8(0);
                        self.to_server.put_slice(rest);
                        wire::finish(&mut self.to_server, at);
                    }
                    None => self.to_server.extend_from_slice(&message),
                }
                self.expect.push_back(Expect::BindComplete);
            }
            b'D' => {
                let body = wire::body(&message);
                let (&kind, mut rest) =
                    body.split_first().ok_or(WireError::Malformed("Describe"))?;
                let name = wire::cstr(&mut rest, "Describe")?;
                match self.translated(rewrite && kind == b'S', name) {
                    Some(server_name) => {
                        let at = wire::start(&mut self.to_server, b'D');
                        self.to_server.put_u8(b'S');
                        self.to_server.put_slice(server_name.as_bytes());
                        self.to_server.put_u8(0);
                        wire::finish(&mut self.to_server, at);
                    }
                    None => self.to_server.extend_from_slice(&message),
                }
                self.expect.push_back(Expect::Describe);
            }
            b'C' => {
                let body = wire::body(&message);
                let (&kind, mut rest) = body.split_first().ok_or(WireError::Malformed("Close"))?;
                let name = wire::cstr(&mut rest, "Close")?;
                if kind == b'S'
                    && let Some(texts) = &mut self.query_texts
                {
                    texts.statements.remove(name);
                }
                if rewrite && kind == b'S' && !name.is_empty() {
                    // The server keeps it for whoever prepares it next.
                    self.statements.remove(name);
                    self.expect.push_back(Expect::Synthetic(b'3'));
                } else {
                    self.to_server.extend_from_slice(&message);
                    self.expect
                        .push_back(Expect::CloseComplete { forward: true });
                }
            }
            b'E' => {
                if let Some(texts) = &mut self.query_texts {
                    let text = texts.bound.clone().unwrap_or_default();
                    texts.pending.push_back(text);
                }
                self.to_server.extend_from_slice(&message);
                self.expect.push_back(Expect::Execute);
                self.statement_sent();
            }
            b'S' | b'F' => {
                self.to_server.extend_from_slice(&message);
                self.expect.push_back(Expect::Ready {
                    forward: true,
                    query: false,
                });
                if tag == b'F' {
                    self.statement_sent();
                }
            }
            // Flush, COPY data, done and fail: no reply of their own.
            _ => self.to_server.extend_from_slice(&message),
        }
        self.drain_synthetic();
        Ok(())
    }

    fn server(&mut self) -> &mut super::server::ServerConnection {
        self.lease
            .as_mut()
            .expect("a message is handled with a server connection lent")
            .connection()
    }

    /// The server-side name of the client's statement `name`, prepared on
    /// this connection first when it is not; `None` to forward unchanged
    /// (unnamed, unknown to attache, or not translating).
    fn translated(&mut self, rewrite: bool, name: &[u8]) -> Option<String> {
        if !rewrite || name.is_empty() {
            return None;
        }
        let statement = self.statements.get(name)?.clone();
        if self.server().prepared.get(&statement.id).is_none() {
            self.prepare(&statement, false);
        }
        Some(server_name(statement.id))
    }

    /// Prepares `statement` on the lent connection, closing its least
    /// recently used statement first when it holds its maximum.
    fn prepare(&mut self, statement: &Statement, forward: bool) {
        let server = self
            .lease
            .as_mut()
            .expect("prepared on a lent connection")
            .connection();
        if server.prepared.len() == server.prepared.cap().get()
            && let Some((oldest, ())) = server.prepared.pop_lru()
        {
            let at = wire::start(&mut self.to_server, b'C');
            self.to_server.put_u8(b'S');
            self.to_server.put_slice(server_name(oldest).as_bytes());
            self.to_server.put_u8(0);
            wire::finish(&mut self.to_server, at);
            self.expect
                .push_back(Expect::CloseComplete { forward: false });
        }
        server.prepared.put(statement.id, ());
        let at = wire::start(&mut self.to_server, b'P');
        self.to_server
            .put_slice(server_name(statement.id).as_bytes());
        self.to_server.put_u8(0);
        self.to_server.put_slice(&statement.definition);
        wire::finish(&mut self.to_server, at);
        self.expect.push_back(Expect::ParseComplete {
            forward,
            prepared: Some(statement.id),
        });
    }

    /// Whether `query` is a `DEALLOCATE` of one of the client's named
    /// statements (prepared on the server under attache's names, where
    /// the client's name means nothing), which it then forgets: the
    /// server's copy stays for whoever prepares it next, as on `Close`.
    fn forgot_deallocated(&mut self, query: &Bytes) -> Result<bool, WireError> {
        if self.statements.is_empty() {
            // Nothing to forget: most queries never reach the parsing.
            return Ok(false);
        }
        let mut body = wire::body(query);
        let text = wire::cstr(&mut body, "Query")?;
        let Some(name) = pins::deallocated(text) else {
            return Ok(false);
        };
        if self.statements.remove(name.as_slice()).is_none() {
            return Ok(false);
        }
        if let Some(texts) = &mut self.query_texts {
            texts.statements.remove(&name);
        }
        self.pooler.metrics.query("DEALLOCATE");
        Ok(true)
    }

    /// What a statement's text does to the session: pins it (transaction
    /// mode), or drops the server's prepared statements and settings.
    fn session_effects(&mut self, text: &[u8]) {
        match pins::effect(text) {
            Some(SessionEffect::Pin(reason)) => self.pin(reason),
            Some(SessionEffect::Discard) => {
                let server = self.server();
                server.prepared.clear();
                server.current = server.reported.clone();
            }
            None => {}
        }
    }

    fn pin(&mut self, reason: crate::telemetry::metrics::PinReason) {
        if self.pinned || self.pooler.mode != PoolMode::Transaction {
            return;
        }
        self.pinned = true;
        self.pooler.metrics.pinned(reason);
        tracing::debug!(listener = %self.route.listener, client = %self.client_address, reason = reason.label(), "postgres session pinned to its server connection");
    }

    fn statement_sent(&mut self) {
        let now = Instant::now();
        if self.statement_started.is_none() {
            self.statement_started = Some(now);
        }
        if self.query_deadline.is_none()
            && let Some(timeout) = self.query_timeout
        {
            self.query_deadline = Some(now + timeout);
        }
    }

    /// A statement finished (`operation`: its command tag's first word;
    /// `sqlstate`: its error's): its duration counted, its span recorded,
    /// the next one timed.
    fn statement_done(&mut self, operation: Option<&str>, sqlstate: Option<&str>) {
        let now = Instant::now();
        if let Some(started) = self.statement_started.replace(now) {
            let took = now.duration_since(started);
            self.pooler
                .metrics
                .statements
                .query_duration
                .observe(took.as_secs_f64());
            if let Some(tracer) = &self.route.tracer {
                let text = self
                    .query_texts
                    .as_ref()
                    .and_then(|texts| texts.pending.front())
                    .map(String::as_str);
                crate::telemetry::traces::record_database_span(
                    tracer,
                    &self.route.listener,
                    &self.database,
                    std::time::SystemTime::now() - took,
                    crate::telemetry::traces::DatabaseStatement {
                        system: "postgresql",
                        operation,
                        error: sqlstate,
                        text,
                    },
                );
            }
        }
        if let Some(timeout) = self.query_timeout {
            self.query_deadline = Some(now + timeout);
        }
    }

    /// The statement whose text leads the queue has ended.
    fn statement_text_done(&mut self) {
        if let Some(texts) = &mut self.query_texts {
            texts.pending.pop_front();
        }
    }

    /// Emits the replies attache makes itself that are now due.
    fn drain_synthetic(&mut self) {
        loop {
            match self.expect.front() {
                Some(Expect::Synthetic(tag)) => wire::message(&mut self.to_client, *tag, &[]),
                Some(Expect::Deallocated) => deallocate_complete(&mut self.to_client, self.status),
                _ => return,
            }
            self.expect.pop_front();
        }
    }

    /// Handles every whole server message read (streaming long rows and
    /// COPY data), sends the client its part, and returns the server
    /// connection to its pool when the client is done with it.
    async fn handle_server_messages(&mut self) -> Result<(), End> {
        loop {
            if self.streaming > 0 {
                if pass_on(
                    &mut self.streaming,
                    &mut self.from_server,
                    &mut self.to_client,
                ) {
                    continue;
                }
                break;
            }
            let (tag, whole) = match wire::peek(&self.from_server, MAX_SERVER_MESSAGE) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => return Err(self.server_failed(&error.to_string()).await),
            };
            if self.from_server.len() < whole {
                if matches!(tag, b'D' | b'd') && whole > STREAM_ABOVE {
                    let length = self.from_server.len();
                    self.to_client
                        .extend_from_slice(&self.from_server.split_to(length));
                    self.streaming = whole - length;
                    continue;
                }
                self.from_server.reserve(whole - self.from_server.len());
                break;
            }
            let message = self.from_server.split_to(whole);
            if let Err(reason) = self.server_message(message) {
                return Err(self.server_failed(reason).await);
            }
        }
        self.flush_client().await?;
        let done = self.expect.is_empty()
            && self.status == b'I'
            && self.streaming == 0
            && self.client_streaming == 0
            && self.from_server.is_empty();
        if done && self.pooler.mode == PoolMode::Transaction && !self.pinned {
            self.cancel.target.clear();
            self.lease = None;
            for buffer in [
                &mut self.from_server,
                &mut self.from_client,
                &mut self.to_client,
                &mut self.to_server,
            ] {
                release(buffer);
            }
        }
        Ok(())
    }

    /// One whole server message: the expectations it settles, the counts
    /// it moves, and whether the client gets it.
    fn server_message(&mut self, message: BytesMut) -> Result<(), &'static str> {
        let tag = message[0];
        let body = wire::body(&message);
        let front = self.expect.front().copied();
        let forward = match tag {
            b'1' => match self.expect.pop_front() {
                Some(Expect::ParseComplete { forward, prepared }) => {
                    if let Some(id) = prepared {
                        self.pooler.statement_accepted(id);
                    }
                    forward
                }
                _ => return Err("a ParseComplete nothing asked for"),
            },
            b'2' => match self.expect.pop_front() {
                Some(Expect::BindComplete) => true,
                _ => return Err("a BindComplete nothing asked for"),
            },
            b'3' => match self.expect.pop_front() {
                Some(Expect::CloseComplete { forward }) => forward,
                _ => return Err("a CloseComplete nothing asked for"),
            },
            b'T' | b'n' => {
                if front == Some(Expect::Describe) {
                    self.expect.pop_front();
                }
                true
            }
            b'C' | b'I' | b's' => {
                let mut operation = None;
                if tag == b'C' {
                    let mut rest = body;
                    if let Ok(command) = wire::cstr(&mut rest, "CommandComplete") {
                        let command = std::str::from_utf8(command).unwrap_or_default();
                        self.pooler.metrics.query(command);
                        operation = command.split(' ').next();
                    }
                }
                self.statement_done(operation, None);
                if front == Some(Expect::Execute) {
                    self.expect.pop_front();
                    self.statement_text_done();
                }
                !matches!(front, Some(Expect::Ready { forward: false, .. }))
            }
            b'E' => {
                let sqlstate = wire::sqlstate(body);
                if let Some(sqlstate) = sqlstate {
                    self.pooler.metrics.error(sqlstate);
                }
                self.statement_done(None, sqlstate);
                match front {
                    None => {
                        // Not an answer: the server is ending the connection.
                        self.server().broken = true;
                        true
                    }
                    Some(Expect::Ready { forward, .. }) => forward,
                    Some(_) => {
                        // The server skips everything up to the next Sync.
                        while let Some(expect) = self.expect.front().copied() {
                            if matches!(expect, Expect::Ready { .. }) {
                                break;
                            }
                            self.expect.pop_front();
                            if expect == Expect::Execute {
                                self.statement_text_done();
                            }
                            if let Expect::ParseComplete {
                                prepared: Some(id), ..
                            } = expect
                            {
                                self.server().prepared.pop(&id);
                            }
                        }
                        true
                    }
                }
            }
            b'Z' => {
                let Some(Expect::Ready { forward, query }) = self.expect.pop_front() else {
                    return Err("a ReadyForQuery nothing asked for");
                };
                if query {
                    self.statement_text_done();
                }
                let status = body.first().copied().unwrap_or(b'I');
                self.transaction_status(status);
                if !self
                    .expect
                    .iter()
                    .any(|expect| matches!(expect, Expect::Execute | Expect::Ready { .. }))
                {
                    self.statement_started = None;
                    self.query_deadline = None;
                }
                self.idle_since = Instant::now();
                forward
            }
            b'S' => {
                if matches!(front, Some(Expect::Ready { forward: false, .. })) {
                    // Attache's own SETs: what it set is what it recorded.
                    false
                } else {
                    if let Some((name, value)) = wire::parameter(body) {
                        self.server().current.insert(name, value);
                    }
                    if self.status == b'I' && self.sent_since_idle.is_none() {
                        // Reported between transactions: not the client's doing.
                    } else {
                        self.pin(crate::telemetry::metrics::PinReason::ParameterStatus);
                    }
                    true
                }
            }
            // Only at login.
            b'K' | b'R' => false,
            _ => true,
        };
        if forward {
            self.to_client.extend_from_slice(&message);
        }
        self.drain_synthetic();
        Ok(())
    }

    fn transaction_status(&mut self, status: u8) {
        let metrics = &self.pooler.metrics;
        match (self.status, status) {
            (b'I', b'T' | b'E') => {
                self.transaction_started = self.sent_since_idle.or(Some(Instant::now()));
            }
            (b'T' | b'E', b'I') => {
                if let Some(started) = self.transaction_started.take() {
                    metrics.statements.transactions.inc();
                    metrics
                        .statements
                        .transaction_duration
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
        if status == b'I' && self.expect.is_empty() {
            self.sent_since_idle = None;
        }
        self.status = status;
    }

    async fn flush_server(&mut self) -> Result<(), End> {
        if self.to_server.is_empty() {
            return Ok(());
        }
        let Some(lease) = self.lease.as_mut() else {
            self.to_server.clear();
            return Ok(());
        };
        let written = lease.connection().stream().write_all(&self.to_server).await;
        self.route
            .metrics
            .to_upstream_bytes
            .inc_by(self.to_server.len() as u64);
        self.to_server.clear();
        match written {
            Ok(()) => Ok(()),
            Err(error) => Err(self.server_failed(&error.to_string()).await),
        }
    }

    async fn flush_client(&mut self) -> Result<(), End> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let written = self.client.write_all(&self.to_client).await;
        self.route
            .metrics
            .to_client_bytes
            .inc_by(self.to_client.len() as u64);
        self.to_client.clear();
        // A client that stopped reading loses only its own session.
        written.map_err(|_| End::Failed(CloseResult::Error))
    }

    /// The query timeout fired: cancel the statement on the server; the
    /// client gets the server's `57014` error and its session goes on.
    fn query_timed_out(&mut self) {
        self.query_deadline = None;
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        let server = lease.connection();
        if let Some(destination) = server.cancel_destination() {
            self.pooler.metrics.cancelled(CancelReason::Timeout);
            tracing::debug!(listener = %self.route.listener, client = %self.client_address, "postgres query_timeout: cancelling the statement");
            tokio::spawn(super::cancel::send(destination));
        }
    }

    async fn idle_in_transaction_timeout(&mut self) -> End {
        self.server().broken = true;
        let reply = wire::fatal(
            "25P03",
            "attache: terminating connection due to idle-in-transaction timeout",
        );
        let _ = self.client.write_all(&reply).await;
        End::Failed(CloseResult::IdleTimeout)
    }

    async fn server_failed(&mut self, reason: &str) -> End {
        if let Some(lease) = self.lease.as_mut() {
            lease.connection().broken = true;
        }
        self.pooler.metrics.pool.server_failures.inc();
        limited!(
            self.route.metrics.log_limit,
            "postgres_server_failed",
            warn!(listener = %self.route.listener, client = %self.client_address, reason, "a Postgres server connection failed while lent; closing its client")
        );
        let _ = self.flush_client().await;
        let reply = wire::fatal(
            "08006",
            &format!("attache: the server connection failed: {reason}"),
        );
        let _ = self.client.write_all(&reply).await;
        End::Failed(CloseResult::Error)
    }

    async fn client_broke_protocol(&mut self, error: &WireError) -> End {
        limited!(
            self.route.metrics.log_limit,
            "postgres_client_protocol",
            info!(listener = %self.route.listener, client = %self.client_address, %error, "closing a Postgres client that broke the protocol")
        );
        let reply = wire::fatal("08P01", &format!("attache: {error}"));
        let _ = self.client.write_all(&reply).await;
        End::Failed(CloseResult::Error)
    }

    async fn no_server(&mut self, error: PoolError) -> End {
        let reply = match &error {
            PoolError::Server(super::server::ServerError::Refused { response, .. }) => {
                response.clone()
            }
            PoolError::Timeout(_) => {
                self.pooler.metrics.pool.timeouts.inc();
                wire::fatal("53300", &format!("attache: {error}"))
            }
            PoolError::Server(_) => wire::fatal("08006", &format!("attache: {error}")),
        };
        limited!(
            self.route.metrics.log_limit,
            "postgres_no_server",
            warn!(listener = %self.route.listener, client = %self.client_address, %error, "no Postgres server connection for a client")
        );
        let _ = self.client.write_all(&reply).await;
        End::Failed(CloseResult::UpstreamUnavailable)
    }
}

/// Moves up to `remaining` bytes of a streamed message from `from` to
/// `to`; `false` when none had arrived.
fn pass_on(remaining: &mut usize, from: &mut BytesMut, to: &mut BytesMut) -> bool {
    let length = (*remaining).min(from.len());
    to.extend_from_slice(&from.split_to(length));
    *remaining -= length;
    length > 0
}

/// What the server answers a `DEALLOCATE` with.
fn deallocate_complete(to_client: &mut BytesMut, status: u8) {
    wire::message(to_client, b'C', b"DEALLOCATE\0");
    wire::ready_for_query(to_client, status);
}

/// The name a statement has on the server.
fn server_name(id: u64) -> String {
    format!("attache_{id}")
}

/// Cleans a server connection for the next client (`DISCARD ALL`): its
/// settings back to the defaults, its prepared statements gone. A
/// connection that does not come back idle in time is closed instead.
async fn reset(lease: &mut Lease) {
    const RESET_TIMEOUT: Duration = Duration::from_secs(5);
    let server = lease.connection();
    let cleaned = tokio::time::timeout(RESET_TIMEOUT, async {
        let mut out = BytesMut::new();
        wire::query(&mut out, "DISCARD ALL");
        server.stream().write_all(&out).await?;
        let mut buffer = BytesMut::with_capacity(1024);
        let mut failed = false;
        loop {
            while let Some(message) = wire::split(&mut buffer, MAX_SERVER_MESSAGE)
                .map_err(|error| std::io::Error::other(error.to_string()))?
            {
                match message[0] {
                    b'E' => failed = true,
                    b'Z' => return Ok::<bool, std::io::Error>(!failed && buffer.is_empty()),
                    _ => {}
                }
            }
            if server.stream().read_buf(&mut buffer).await? == 0 {
                return Ok(false);
            }
        }
    })
    .await;
    let server = lease.connection();
    if matches!(cleaned, Ok(Ok(true))) {
        server.prepared.clear();
        server.current = server.reported.clone();
    } else {
        server.broken = true;
    }
}
