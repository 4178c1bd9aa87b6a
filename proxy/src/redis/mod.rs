//! The Redis ambassador (`protocol: redis`): clients speak RESP to attache,
//! which forwards their commands over a few long-lived upstream
//! connections shared by every client, pipelined, and hands each client its
//! replies in its own order.
//!
//! Commands that hold state on their connection (transactions, WATCH,
//! blocking commands, pub/sub, MONITOR) run in a pinned session on a
//! connection of the client's own, lent from a pool until the state ends.
//! `SELECT` moves a client between per-database shared connections locally.
//!
//! # Layout
//! - `commands`: the command table (how each command is carried, read-only,
//!   reply deadline, session effect, metric label).
//! - `classify`: what the client's connection does with a command.
//! - `shared`: one shared upstream connection and its reply queue.
//! - `pinned`: sessions on a lent connection, and their pool.
//! - `handshake`: HELLO, AUTH and SELECT on a new upstream connection.
//! - `replies`: each client's replies, in the order of its commands.
//! - `target`: a fixed upstream, or the master Sentinel names.
//! - `error`: why a Redis connection could not be used.
//! - `cache`: the optional local cache, kept correct by Redis' tracking.

mod cache;
mod classify;
mod commands;
mod error;
mod handshake;
mod pinned;
mod replies;
mod shared;
mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_resp::{Limits, encode, parse_command};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::listener::ConnectionContext;
use crate::net::ClientStream;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics, Metrics, RedisMetrics, RedisResult};
pub(crate) use cache::Cache;
use cache::Consulted;
use classify::Class;
use handshake::Credentials;
use replies::Replies;
use shared::{Batch, SharedConnection};
pub(crate) use target::{SentinelMaster, Target};

/// Room a client's read buffer gets while a command is incomplete.
const CLIENT_BUFFER: usize = 16 * 1024;

/// A shared set serves one (database, protocol version) pair.
type SharedSetKey = (u32, u8);

/// One `redis` listener and its shared connections.
pub(crate) struct RedisProxy {
    pub(crate) listener: String,
    pub(crate) metrics: ListenerMetrics,
    redis_metrics: RedisMetrics,
    target: Arc<Target>,
    shared_connections: usize,
    command_timeout: Duration,
    /// A client with nothing in flight and no pinned session that sends
    /// nothing for this long is closed (Redis' own `timeout`, which also
    /// spares blocked and subscribed clients).
    idle_timeout: Duration,
    limits: Limits,
    /// Shared connections per database, made when a client first uses it.
    pools: Mutex<HashMap<SharedSetKey, Arc<[SharedConnection]>>>,
    /// Connections lent to one client at a time (transactions, blocking, pub/sub).
    pinned: pinned::Lender,
    /// What clients must `AUTH` with, when set: (username, password).
    client_auth: Option<(String, String)>,
    /// What attache logs in to Redis with.
    credentials: Option<Credentials>,
    /// Present when spans are exported: one per shared command.
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
    /// The local cache, when the listener has one.
    cache: Option<Arc<Cache>>,
}

impl RedisProxy {
    /// The listener's handler, and its cache when it has one (started
    /// here: its tracking connection runs until the handler is dropped).
    pub(crate) fn new(
        config: &attache_config::Listener,
        settings: &attache_config::RedisListener,
        target: Arc<Target>,
        metrics: &Metrics,
        tracer: Option<opentelemetry_sdk::trace::Tracer>,
    ) -> Self {
        let credentials = settings
            .upstream_password
            .as_ref()
            .map(|password| Credentials::new(settings.upstream_username.as_deref(), password));
        let cache = settings.cache.as_ref().map(|cache| {
            Arc::new(Cache::start(
                &config.name,
                cache,
                target.clone(),
                credentials.clone(),
                settings.command_timeout,
                metrics.redis_cache(&config.name),
            ))
        });
        Self {
            cache,
            listener: config.name.clone(),
            metrics: metrics.listener(&config.name),
            redis_metrics: metrics.redis(&config.name, commands::counted()),
            shared_connections: settings.shared_connections,
            command_timeout: settings.command_timeout,
            idle_timeout: config.idle_timeout,
            limits: Limits::default(),
            pools: Mutex::new(HashMap::new()),
            pinned: pinned::Lender {
                pool: pinned::pool(
                    target.clone(),
                    credentials.clone(),
                    settings.max_pinned,
                    settings.command_timeout,
                ),
                credentials: credentials.clone(),
                target: target.clone(),
                limits: Limits::default(),
                command_timeout: settings.command_timeout,
                metrics: metrics.redis(&config.name, commands::counted()),
                tracing: tracer
                    .clone()
                    .map(|tracer| (tracer, Arc::<str>::from(config.name.as_str()))),
            },
            client_auth: settings.password.as_ref().map(|password| {
                let username = settings
                    .username
                    .clone()
                    .unwrap_or_else(|| "default".to_owned());
                (username, password.clone())
            }),
            credentials,
            target,
            tracer,
        }
    }

    /// The listener's cache, when it has one.
    pub(crate) fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<SharedSetKey, Arc<[SharedConnection]>>> {
        self.pools
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The shared connections of `database`, started on first use.
    fn pool(&self, database: u32, protocol: u8) -> Arc<[SharedConnection]> {
        self.pools()
            .entry((database, protocol))
            .or_insert_with(|| {
                (0..self.shared_connections)
                    .map(|_| {
                        SharedConnection::start(
                            self.target.clone(),
                            self.credentials.clone(),
                            protocol,
                            database,
                            // Only Redis' replies are read there.
                            Limits::for_replies(),
                            self.redis_metrics.clone(),
                        )
                    })
                    .collect()
            })
            .clone()
    }

    /// The shared connections of `database` once Redis has accepted it:
    /// their handshake `SELECT`s it, so a `PING` through them tells whether
    /// the index exists. A refused index gets Redis' error (through
    /// attache's), and its shared set is dropped again, so a client cannot
    /// pile up sets for databases that do not exist.
    async fn select(
        &self,
        database: u32,
        protocol: u8,
        affinity: usize,
    ) -> Result<Arc<[SharedConnection]>, Bytes> {
        let existed = self.pools().contains_key(&(database, protocol));
        let pool = self.pool(database, protocol);
        let (sender, receiver) = oneshot::channel();
        let mut ping = Batch::new();
        ping.push(encode::command([&b"PING"[..]].into_iter()), sender, true);
        flush_batch(&pool, affinity, &mut ping).await;
        let answer = match tokio::time::timeout(self.command_timeout, receiver).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(encode::error("ERR attache: the shared connection closed")),
            Err(_) => Err(encode::error(&format!(
                "ERR attache: no answer from Redis within {:?}",
                self.command_timeout
            ))),
        };
        match answer {
            Ok(_) => Ok(pool),
            Err(reply) => {
                if !existed {
                    self.pools().remove(&(database, protocol));
                }
                Err(reply)
            }
        }
    }
}

/// Serves one client connection until it closes or sends garbage: read
/// what the client sends, answer what attache answers itself, batch the
/// rest onto the client's shared connection, hand the client to a pinned
/// session when a command needs a connection of its own, and write replies
/// back in order.
pub(crate) fn serve(
    client: ClientStream,
    context: ConnectionContext,
    proxy: Arc<RedisProxy>,
) -> impl Future<Output = ()> + Send {
    // Only the address is needed: the rest of the context is not kept in
    // the client's task for its whole life.
    serve_client(client, context.client_address, proxy)
}

async fn serve_client(
    mut client: ClientStream,
    address: std::net::SocketAddr,
    proxy: Arc<RedisProxy>,
) {
    // Counted in the multiplexing ratio while connected.
    proxy.redis_metrics.client(1);
    let _counted = ClientCounted(&proxy.redis_metrics);
    let mut session = Session::new(&proxy, address);
    let mut input = BytesMut::new();
    // Re-armed from the last activity only when it fires, as in the TCP relay.
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep(proxy.idle_timeout);
    tokio::pin!(idle);
    let result = loop {
        if let Some(command) = session.take_commands(&mut input).await {
            // Boxed: a pinned session's state is large and rare, and would
            // otherwise be part of every client's task for its whole life.
            match Box::pin(session.pinned(&mut client, &mut input, command)).await {
                Some(result) => break result,
                None => {
                    last_activity = Instant::now();
                    continue;
                }
            }
        }
        if session.closing && session.replies.is_empty() {
            break CloseResult::Ok;
        }
        session.replies.release_room();
        tokio::select! {
            read = read_client(&mut client, &mut input), if !session.closing => match read {
                Ok(0) => break CloseResult::Ok,
                Ok(_) => last_activity = Instant::now(),
                Err(_) => break CloseResult::Error,
            },
            Some(batch) = session.replies.next_batch() => {
                if client.write_all(&batch).await.is_err() {
                    break CloseResult::Error;
                }
                last_activity = Instant::now();
            }
            () = &mut idle => {
                let deadline = last_activity + proxy.idle_timeout;
                if session.replies.is_empty() && Instant::now() >= deadline {
                    tracing::debug!(listener = %proxy.listener, client = %session.address, "closing: idle for the idle timeout");
                    break CloseResult::IdleTimeout;
                }
                // A client waiting for replies is not idle; they are
                // bounded by the command timeout, and sending them is activity.
                let next = if session.replies.is_empty() {
                    deadline
                } else {
                    Instant::now() + proxy.idle_timeout
                };
                idle.as_mut().reset(next);
            }
        }
    };
    // Counted before the client can see the close, so that whoever sees it
    // also finds it counted.
    proxy.metrics.closed(result);
    let _ = client.shutdown().await;
}

/// One read from a client. With nothing buffered (a client between
/// commands: most of its life) the bytes land on the stack and the buffer
/// gets exactly what came, so an idle client holds no read buffer; only an
/// incomplete command gets [`CLIENT_BUFFER`] of room to grow in.
pub(super) async fn read_client<C: AsyncRead + Unpin>(
    client: &mut C,
    input: &mut BytesMut,
) -> std::io::Result<usize> {
    if input.is_empty() {
        // Lets go of the allocation the earlier commands' bytes shared.
        *input = BytesMut::new();
        crate::net::read_into_room(client, input).await
    } else {
        input.reserve(CLIENT_BUFFER);
        client.read_buf(input).await
    }
}

/// One client's state between its commands.
struct Session<'a> {
    proxy: &'a RedisProxy,
    address: std::net::SocketAddr,
    database: u32,
    /// RESP2 until the client says HELLO 3; shared sets are per protocol.
    protocol: u8,
    /// The shared connections of `database` in `protocol`.
    pool: Arc<[SharedConnection]>,
    /// Each client sticks to one shared connection per database, so its
    /// pipelined commands stay in order on the wire.
    affinity: usize,
    /// Replies owed, in order.
    replies: Replies,
    /// QUIT or invalid input: answer what is owed, then close.
    closing: bool,
    authenticated: bool,
}

impl<'a> Session<'a> {
    fn new(proxy: &'a RedisProxy, address: std::net::SocketAddr) -> Self {
        let tracing = proxy
            .tracer
            .clone()
            .map(|tracer| (tracer, Arc::<str>::from(proxy.listener.as_str())));
        Self {
            proxy,
            address,
            database: 0,
            protocol: 2,
            pool: proxy.pool(0, 2),
            affinity: fastrand::usize(..proxy.shared_connections),
            replies: Replies::new(proxy.command_timeout, proxy.redis_metrics.clone(), tracing),
            closing: false,
            authenticated: proxy.client_auth.is_none(),
        }
    }

    /// Handles every complete command in `input`: shared ones go out as one
    /// batch; a command that needs a connection of its own stops the scan
    /// and is returned.
    async fn take_commands(&mut self, input: &mut BytesMut) -> Option<attache_resp::Command> {
        let mut batch = Batch::new();
        let mut pin = None;
        // Commands read together are sent together: one clock reading,
        // taken again after anything that waits.
        let mut read_at = Instant::now();
        while !self.closing {
            let command = match parse_command(input, &self.proxy.limits) {
                Ok(Some(command)) => command,
                Ok(None) => break,
                Err(error) => {
                    // Answer what came before, then the error, then close.
                    let reply = encode::error(&format!("ERR Protocol error: {error}"));
                    self.replies.push_ready(reply);
                    self.closing = true;
                    limited!(
                        self.proxy.metrics.log_limit,
                        "invalid_resp",
                        info!(listener = %self.proxy.listener, client = %self.address, %error, "closing a Redis client that sent invalid RESP")
                    );
                    break;
                }
            };
            let row = commands::row(&command);
            let class = match self.decide(&command, row.spec) {
                Decision::Class(class) => class,
                Decision::Hello(requested) => {
                    // Boxed for the same reason as a pinned session.
                    Box::pin(self.switch_protocol(requested, &command, &mut batch)).await;
                    read_at = Instant::now();
                    continue;
                }
            };
            let local = match &class {
                Class::Select(_)
                | Class::Quit
                | Class::LocalOk
                | Class::Auth
                | Class::Hello
                | Class::Unsubscribed => Some(RedisResult::Ok),
                Class::Refused(_) => Some(RedisResult::Failed),
                Class::Shared | Class::Pinned => None,
            };
            if let Some(result) = local {
                self.proxy.redis_metrics.command_labelled(row.label, result);
            }
            match class {
                Class::Shared => {
                    let after = match &self.proxy.cache {
                        None => None,
                        Some(cache) => {
                            match cache.consult(&command, row.spec, self.database, self.protocol) {
                                Consulted::Hit(reply) => {
                                    self.replies.push_hit(
                                        reply,
                                        (command.name(), row.label),
                                        self.database,
                                    );
                                    continue;
                                }
                                Consulted::Forward(after) => after,
                            }
                        }
                    };
                    let (sender, receiver) = oneshot::channel();
                    self.replies.push_waiting(
                        receiver,
                        (command.name(), row.label),
                        read_at,
                        self.database,
                        after,
                    );
                    batch.push(command.raw, sender, row.spec.read_only);
                }
                Class::Pinned => {
                    pin = Some(command);
                    break;
                }
                Class::Select(requested) if requested == self.database => {
                    self.replies.push_ready(Bytes::from_static(b"+OK\r\n"));
                }
                Class::Select(requested) => {
                    flush_batch(&self.pool, self.affinity, &mut batch).await;
                    Box::pin(self.select(requested)).await;
                    read_at = Instant::now();
                }
                Class::Quit => {
                    self.replies.push_ready(Bytes::from_static(b"+OK\r\n"));
                    self.closing = true;
                }
                Class::LocalOk | Class::Auth | Class::Hello => {
                    self.replies.push_ready(Bytes::from_static(b"+OK\r\n"));
                }
                Class::Refused(reason) => self.replies.push_ready(encode::error(&reason)),
                Class::Unsubscribed => self
                    .replies
                    .push_ready(unsubscribed(&command, self.protocol)),
            }
        }
        flush_batch(&self.pool, self.affinity, &mut batch).await;
        pin
    }

    /// What `command` gets, given this client's login: `AUTH` checked
    /// against attache's password (or pinned, without one), `HELLO` a
    /// protocol switch, anything but `QUIT` refused before a login.
    fn decide(&mut self, command: &attache_resp::Command, spec: &commands::Spec) -> Decision {
        let proxy = self.proxy;
        let class = classify::classify(command, spec);
        Decision::Class(match class {
            // No password of attache's: the client logs in to Redis as a
            // user of its own, on a connection of its own.
            Class::Auth if proxy.client_auth.is_none() => Class::Pinned,
            Class::Auth => {
                let (reply, accepted) = match &command.args[1..] {
                    [password] => check_auth(proxy, b"default", password),
                    [user, password] => check_auth(proxy, user, password),
                    _ => (
                        "ERR wrong number of arguments for 'auth' command".to_owned(),
                        false,
                    ),
                };
                self.authenticated |= accepted;
                if accepted {
                    Class::LocalOk
                } else {
                    Class::Refused(reply)
                }
            }
            Class::Hello => match hello(proxy, command, self.protocol, self.authenticated) {
                Ok(requested) => {
                    self.authenticated = true;
                    return Decision::Hello(requested);
                }
                Err(reply) => Class::Refused(reply),
            },
            Class::Quit => Class::Quit,
            _ if !self.authenticated => {
                Class::Refused("NOAUTH Authentication required.".to_owned())
            }
            class => class,
        })
    }

    /// Moves the client to `requested` (2 or 3): what is batched goes out
    /// first on the old set; the server's own HELLO answer comes from the
    /// new one, in the protocol the client now speaks.
    async fn switch_protocol(
        &mut self,
        requested: u8,
        command: &attache_resp::Command,
        batch: &mut Batch,
    ) {
        flush_batch(&self.pool, self.affinity, batch).await;
        self.protocol = requested;
        self.pool = self.proxy.pool(self.database, self.protocol);
        let version = if requested == 3 { &b"3"[..] } else { &b"2"[..] };
        let (sender, receiver) = oneshot::channel();
        batch.push(
            encode::command([&b"HELLO"[..], version].into_iter()),
            sender,
            true,
        );
        self.replies.push_waiting(
            receiver,
            (command.name(), commands::row(command).label),
            Instant::now(),
            self.database,
            None,
        );
    }

    /// `SELECT requested`: on success the client's shared set is that
    /// database's; either way the reply is owed in order.
    async fn select(&mut self, requested: u32) {
        match self
            .proxy
            .select(requested, self.protocol, self.affinity)
            .await
        {
            Ok(selected) => {
                self.database = requested;
                self.pool = selected;
                self.replies.push_ready(Bytes::from_static(b"+OK\r\n"));
            }
            Err(reply) => self.replies.push_ready(reply),
        }
    }

    /// Writes the replies owed, then serves `command` and what follows on a
    /// connection of the client's own until the session ends. `None`: back
    /// to shared connections; `Some`: the client connection is done.
    async fn pinned(
        &mut self,
        client: &mut ClientStream,
        input: &mut BytesMut,
        command: attache_resp::Command,
    ) -> Option<CloseResult> {
        while let Some(batch) = self.replies.next_batch().await {
            if client.write_all(&batch).await.is_err() {
                break;
            }
        }
        let metrics = &self.proxy.redis_metrics;
        metrics.pinned_connections.inc();
        let ended = pinned::session(
            client,
            input,
            command,
            &self.proxy.pinned,
            self.protocol,
            self.database,
        )
        .await;
        metrics.pinned_connections.dec();
        if let Some(cache) = &self.proxy.cache {
            // The session's writes were not seen one by one: wait until
            // Redis' invalidations for them are applied.
            cache.fence().await;
        }
        match ended {
            pinned::Ended::Shared { database } => {
                if database != self.database {
                    self.database = database;
                    self.pool = self.proxy.pool(database, self.protocol);
                }
                None
            }
            pinned::Ended::Close => Some(CloseResult::Ok),
        }
    }
}

/// What a command gets once the client's login is taken into account.
enum Decision {
    Class(Class),
    /// `HELLO` accepted: switch to this protocol.
    Hello(u8),
}

/// What Redis answers a client with no subscription that leaves channels
/// (or patterns, or shard channels): per channel named, or once for none,
/// `[kind, channel or null, 0]`, a push message in RESP3.
fn unsubscribed(command: &attache_resp::Command, protocol: u8) -> Bytes {
    let kind = command.name().to_ascii_lowercase();
    let header: &[u8] = if protocol == 3 { b">3\r\n" } else { b"*3\r\n" };
    let null: &[u8] = if protocol == 3 { b"_\r\n" } else { b"$-1\r\n" };
    let confirmation = |channel: Option<&[u8]>| {
        let mut reply = header.to_vec();
        reply.extend_from_slice(format!("${}\r\n", kind.len()).as_bytes());
        reply.extend_from_slice(&kind);
        reply.extend_from_slice(b"\r\n");
        match channel {
            Some(channel) => {
                reply.extend_from_slice(format!("${}\r\n", channel.len()).as_bytes());
                reply.extend_from_slice(channel);
                reply.extend_from_slice(b"\r\n");
            }
            None => reply.extend_from_slice(null),
        }
        reply.extend_from_slice(b":0\r\n");
        reply
    };
    let channels = &command.args[1..];
    let replies: Vec<u8> = if channels.is_empty() {
        confirmation(None)
    } else {
        channels
            .iter()
            .flat_map(|channel| confirmation(Some(channel)))
            .collect()
    };
    Bytes::from(replies)
}

/// Uncounts a client however its connection ends.
struct ClientCounted<'a>(&'a RedisMetrics);

impl Drop for ClientCounted<'_> {
    fn drop(&mut self) {
        self.0.client(-1);
    }
}

/// Checks a username and password against the configured ones: the
/// error reply when refused, and whether they were accepted.
fn check_auth(proxy: &RedisProxy, given_user: &[u8], given_password: &[u8]) -> (String, bool) {
    let Some((username, password)) = &proxy.client_auth else {
        return (
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?"
                .to_owned(),
            false,
        );
    };
    let accepted =
        given_user == username.as_bytes() && constant_time_eq(given_password, password.as_bytes());
    let reply = "WRONGPASS invalid username-password pair or user is disabled.".to_owned();
    (reply, accepted)
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`: the
/// protocol the client asks for (its current one without `protover`), its
/// login checked on the way; or the error reply.
fn hello(
    proxy: &RedisProxy,
    command: &attache_resp::Command,
    current: u8,
    authenticated: bool,
) -> Result<u8, String> {
    let mut args = command.args[1..].iter();
    let requested = match args.next() {
        None => current,
        Some(version) => match &version[..] {
            b"2" => 2,
            b"3" => 3,
            _ => return Err("NOPROTO unsupported protocol version".to_owned()),
        },
    };
    let mut logged_in = authenticated;
    while let Some(option) = args.next() {
        if option.eq_ignore_ascii_case(b"AUTH") {
            let (Some(user), Some(password)) = (args.next(), args.next()) else {
                return Err("ERR Syntax error in HELLO option 'auth'".to_owned());
            };
            let (reply, accepted) = check_auth(proxy, user, password);
            if !accepted {
                return Err(reply);
            }
            logged_in = true;
        } else if option.eq_ignore_ascii_case(b"SETNAME") {
            // A name belongs to the client, not to a shared connection.
            args.next();
        } else {
            return Err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(option)
            ));
        }
    }
    if !logged_in {
        return Err(
            "NOAUTH HELLO must be called with the client already authenticated, \
                    otherwise the HELLO <proto> AUTH <user> <pass> option can be used"
                .to_owned(),
        );
    }
    Ok(requested)
}

/// Compares without stopping at the first difference, so response time
/// says nothing about how much of a guess was right.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// Sends the commands gathered so far, as one batch, to the client's
/// shared connection.
async fn flush_batch(pool: &[SharedConnection], affinity: usize, batch: &mut Batch) {
    if batch.is_empty() {
        return;
    }
    let batch = std::mem::replace(batch, Batch::new());
    let connection = &pool[affinity % pool.len()];
    // A closed task drops the batch and its senders: each reply then
    // becomes an error in `awaited`.
    connection.send(batch).await;
}

crate::listener::protocol!(RedisProxy, serve);

/// A command made of `words`, as a client would send it (for the room's tests).
#[cfg(test)]
fn test_command(words: &[&str]) -> attache_resp::Command {
    let args: Vec<Bytes> = words
        .iter()
        .map(|word| Bytes::from(word.to_string()))
        .collect();
    let raw = encode::command(args.iter().map(|arg| &arg[..]));
    attache_resp::Command { args, raw }
}
