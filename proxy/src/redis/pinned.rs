//! Pinned sessions: commands whose meaning depends on their connection
//! (transactions, WATCH, blocking commands, pub/sub, MONITOR) run on an
//! upstream connection of their own, taken from a bb8 pool for as long as
//! that state lasts. The session relays the client's commands and the
//! server's replies in order, follows the state from the commands sent and
//! the replies seen, and ends when nothing is left open: no transaction,
//! no watched key, no subscription, no blocking command in flight. The
//! connection is then reset (`RESET`) before it goes back to the pool;
//! one that fails the reset is closed instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use attache_resp::{Command, Limits, check, encode, parse_command};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::commands::{self, SessionChange, Wait};
use super::error::RedisError;
use super::handshake::{self, Credentials};
use super::target::Target;
use crate::net::Liveness;
use crate::telemetry::metrics::{RedisMetrics, RedisResult};
use crate::telemetry::traces;
use crate::upstream::UpstreamConnection;
use opentelemetry_sdk::trace::{Span, Tracer};
use tokio::sync::watch;
use tokio::time::Instant;

/// A pooled upstream connection and whether it may be reused.
pub(super) struct PinnedConnection {
    connection: UpstreamConnection,
    broken: bool,
    /// The master generation it was made in (Sentinel).
    generation: u64,
}

/// Makes pinned connections through the upstream room.
pub(super) struct PinnedConnector {
    target: Arc<Target>,
    credentials: Option<Credentials>,
}

impl bb8::ManageConnection for PinnedConnector {
    type Connection = PinnedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<PinnedConnection, RedisError> {
        let (mut connection, generation) = self.target.connect().await?;
        handshake::prepare(
            &mut connection,
            self.credentials.as_ref(),
            2,
            0,
            &Limits::default(),
        )
        .await?;
        Ok(PinnedConnection {
            connection,
            broken: false,
            generation,
        })
    }

    /// An idle connection Redis closed (its `timeout`, a restart, `CLIENT
    /// KILL`) or that holds unasked-for bytes is not lent: the pool makes
    /// another instead of failing the client's MULTI or BLPOP.
    async fn is_valid(&self, connection: &mut PinnedConnection) -> Result<(), RedisError> {
        match connection.connection.stream().liveness().await {
            Liveness::Idle => Ok(()),
            Liveness::Data => Err(RedisError::DataWhileIdle),
            Liveness::Closed => Err(RedisError::ClosedWhileIdle),
            Liveness::Failed(error) => Err(RedisError::Read(error)),
        }
    }

    fn has_broken(&self, connection: &mut PinnedConnection) -> bool {
        connection.broken || connection.generation != self.target.generation()
    }
}

pub(super) type PinnedPool = bb8::Pool<PinnedConnector>;

/// What pinned sessions need: the pool, attache's credentials (to log a
/// connection back in after its reset), the target (to notice a new
/// Sentinel master) and the protocol limits.
pub(super) struct Lender {
    pub(super) pool: PinnedPool,
    pub(super) credentials: Option<Credentials>,
    pub(super) target: Arc<Target>,
    pub(super) limits: Limits,
    /// Limit on a reply in a session (a blocking command: its own block
    /// time plus [`BLOCKING_MARGIN`]).
    pub(super) command_timeout: Duration,
    pub(super) metrics: RedisMetrics,
    /// With span export on: the tracer and the listener's name.
    pub(super) tracing: Option<(Tracer, Arc<str>)>,
}

/// A command whose reply is awaited: when it is overdue, its name for the
/// metrics and its span (neither for attache's own commands).
struct Awaited {
    deadline: Option<Instant>,
    name: Option<Bytes>,
    span: Option<Span>,
}

/// Added to a blocking command's own timeout before attache gives up on it.
const BLOCKING_MARGIN: Duration = Duration::from_secs(1);

/// Queues `command` to be sent, following its effect on the session and,
/// when a reply will answer it, when that reply is due.
fn send(
    state: &mut State,
    awaited: &mut VecDeque<Awaited>,
    command: Command,
    outgoing: &mut Vec<Bytes>,
    lender: &Lender,
    database: u32,
) {
    let before = state.pending.len();
    state.sent(effect(&command));
    if state.pending.len() > before {
        awaited.push_back(Awaited {
            deadline: reply_deadline(&command, lender.command_timeout, Instant::now()),
            span: lender.tracing.as_ref().map(|(tracer, listener)| {
                traces::start_redis_span(tracer, listener, command.name(), database, None)
            }),
            name: Some(command.args[0].clone()),
        });
    }
    outgoing.push(command.raw);
}

/// When the reply to `command` is overdue: `None` for one that may block
/// forever (a block time of 0) or that no single reply answers (MONITOR,
/// subscriptions).
fn reply_deadline(command: &Command, timeout: Duration, now: Instant) -> Option<Instant> {
    let number = |index: usize| -> Option<f64> {
        std::str::from_utf8(command.args.get(index)?)
            .ok()?
            .parse()
            .ok()
    };
    let block_seconds = match commands::spec(command).wait {
        Wait::CommandTimeout => return Some(now + timeout),
        Wait::Unbounded => return None,
        Wait::LastArgumentSeconds => number(command.args.len() - 1),
        Wait::ArgumentSeconds(index) => number(index),
        Wait::ArgumentMilliseconds(index) => {
            number(index).map(|milliseconds| milliseconds / 1000.0)
        }
        Wait::BlockOption => command
            .args
            .iter()
            .position(|arg| arg.eq_ignore_ascii_case(b"BLOCK"))
            .and_then(|index| number(index + 1))
            .map(|milliseconds| milliseconds / 1000.0),
    };
    match block_seconds {
        Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
            Some(now + Duration::from_secs_f64(seconds.min(1e9)) + BLOCKING_MARGIN)
        }
        // 0 blocks forever; an unreadable timeout is Redis' error to give.
        Some(_) => None,
        None => Some(now + timeout),
    }
}

/// Builds the pool (connections are made on demand, at most `max`).
pub(super) fn pool(
    target: Arc<Target>,
    credentials: Option<Credentials>,
    max: u32,
    wait: Duration,
) -> PinnedPool {
    bb8::Pool::builder()
        .max_size(max)
        .min_idle(None)
        .connection_timeout(wait)
        .test_on_check_out(true)
        .build_unchecked(PinnedConnector {
            target,
            credentials,
        })
}

/// What a command sent in a session does to its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing beyond its reply.
    Plain,
    Multi,
    /// EXEC or DISCARD: ends a transaction and any WATCH.
    EndTransaction,
    Watch,
    Unwatch,
    /// A blocking command: the session lasts until its reply.
    Blocking,
    /// (P|S)SUBSCRIBE to this many channels: one confirmation each.
    Subscribe(usize),
    /// (P|S)UNSUBSCRIBE from this many channels (0: from all).
    Unsubscribe(usize),
    /// MONITOR: the session lasts until the client leaves.
    Monitor,
    /// State kept for the rest of the client's connection (AUTH as another
    /// user, CLIENT TRACKING, NO-EVICT...): one reply, then the session
    /// lasts until the client leaves.
    Sticky,
    /// SELECT: the session's database changes on success.
    Select(u32),
}

fn effect(command: &Command) -> Effect {
    let channels = command.args.len() - 1;
    match commands::spec(command).session {
        SessionChange::Multi => Effect::Multi,
        SessionChange::Sticky => Effect::Sticky,
        SessionChange::EndTransaction => Effect::EndTransaction,
        SessionChange::Watch => Effect::Watch,
        SessionChange::Unwatch => Effect::Unwatch,
        SessionChange::Subscribe => Effect::Subscribe(channels),
        SessionChange::Unsubscribe => Effect::Unsubscribe(channels),
        SessionChange::Monitor => Effect::Monitor,
        SessionChange::Select => command
            .args
            .get(1)
            .and_then(|index| std::str::from_utf8(index).ok()?.parse().ok())
            .map_or(Effect::Plain, Effect::Select),
        SessionChange::Plain
            if command.upper_name(&mut [0; 32]) == "CLIENT"
                && command
                    .args
                    .get(1)
                    .is_some_and(|sub| super::classify::is_sticky_client_subcommand(sub)) =>
        {
            Effect::Sticky
        }
        SessionChange::Plain if commands::is_blocking(command) => Effect::Blocking,
        SessionChange::Plain => Effect::Plain,
    }
}

/// The state a session follows.
#[derive(Debug, Default)]
struct State {
    in_transaction: bool,
    watching: bool,
    subscriptions: Option<i64>,
    /// Subscription confirmations still to come.
    confirmations: usize,
    /// An UNSUBSCRIBE from all channels is waiting for its count of 0.
    unsubscribing_all: bool,
    monitoring: bool,
    /// The client keeps this connection until it leaves.
    sticky: bool,
    /// Effects of commands sent whose replies have not come back yet.
    pending: VecDeque<Effect>,
}

impl State {
    fn done(&self) -> bool {
        !self.in_transaction
            && !self.watching
            && self.subscriptions.is_none_or(|count| count == 0)
            && self.confirmations == 0
            && !self.unsubscribing_all
            && !self.monitoring
            && !self.sticky
            && self.pending.is_empty()
    }

    fn sent(&mut self, effect: Effect) {
        match effect {
            // Subscription replies come one per channel, so they are not
            // matched to commands; the counts in them end the mode.
            Effect::Subscribe(channels) => {
                self.subscriptions.get_or_insert(0);
                self.confirmations += channels;
            }
            Effect::Unsubscribe(0) => {
                self.subscriptions.get_or_insert(0);
                self.unsubscribing_all = true;
            }
            Effect::Unsubscribe(channels) => {
                self.subscriptions.get_or_insert(0);
                self.confirmations += channels;
            }
            Effect::Monitor => self.monitoring = true,
            Effect::Sticky => {
                self.sticky = true;
                self.pending.push_back(Effect::Plain);
            }
            other => self.pending.push_back(other),
        }
    }

    /// Takes in a RESP3 push: subscription confirmations update the count.
    fn pushed(&mut self, push: &[u8]) {
        if self.subscriptions.is_some() && is_subscription_reply(push) {
            self.subscriptions = subscription_count(push);
            self.confirmations = self.confirmations.saturating_sub(1);
            if self.subscriptions == Some(0) {
                self.unsubscribing_all = false;
            }
        }
    }

    /// Takes in one reply; returns the database a successful SELECT chose.
    fn replied(&mut self, reply: &[u8]) -> Option<u32> {
        if self.subscriptions.is_some() && is_subscription_reply(reply) {
            self.subscriptions = subscription_count(reply);
            self.confirmations = self.confirmations.saturating_sub(1);
            if self.subscriptions == Some(0) {
                self.unsubscribing_all = false;
            }
            return None;
        }
        if self.monitoring {
            return None;
        }
        let effect = self.pending.pop_front()?;
        let ok = !reply.starts_with(b"-");
        match effect {
            Effect::Multi if ok => self.in_transaction = true,
            Effect::EndTransaction => {
                self.in_transaction = false;
                self.watching = false;
            }
            Effect::Watch if ok => self.watching = true,
            Effect::Unwatch => self.watching = false,
            Effect::Select(database) if ok => return Some(database),
            _ => {}
        }
        None
    }
}

/// `*3\r\n$9\r\nsubscribe\r\n...` and the other subscription confirmations.
fn is_subscription_reply(reply: &[u8]) -> bool {
    let kinds: [&[u8]; 6] = [
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    // A reply is an array of bulk strings and an integer; read its first bulk.
    let Some(start) = reply.iter().position(|byte| *byte == b'$') else {
        return false;
    };
    let Some(end) = reply[start..].iter().position(|byte| *byte == b'\n') else {
        return false;
    };
    let rest = &reply[start + end + 1..];
    kinds
        .iter()
        .any(|kind| rest.starts_with(kind) && rest.get(kind.len()) == Some(&b'\r'))
}

/// The subscription count a confirmation ends with (`:N\r\n`).
fn subscription_count(reply: &[u8]) -> Option<i64> {
    let text = reply.strip_suffix(b"\r\n")?;
    let colon = text.iter().rposition(|byte| *byte == b':')?;
    std::str::from_utf8(&text[colon + 1..]).ok()?.parse().ok()
}

/// How a session ended.
pub(super) enum Ended {
    /// State cleared: the client goes back to shared connections, on this database.
    Shared { database: u32 },
    /// The client left or asked to (QUIT), or a connection failed.
    Close,
}

/// Runs a session that starts with `first`, on `database`; `input` holds
/// what the client sent after it. Replies go straight to `client`.
pub(super) async fn session<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    input: &mut BytesMut,
    first: Command,
    lender: &Lender,
    protocol: u8,
    database: u32,
) -> Ended {
    let pinned = match lender.pool.get().await {
        Ok(pinned) => pinned,
        Err(error) => {
            let reply = encode::error(&format!(
                "ERR attache: no connection for {}: {error}",
                String::from_utf8_lossy(first.name())
            ));
            return match client.write_all(&reply).await {
                Ok(()) => Ended::Shared { database },
                Err(_) => Ended::Close,
            };
        }
    };
    let mut session = Session::new(lender, pinned, protocol, database);
    session.send(first);
    let ended = loop {
        if let Some(ended) = session.step(client, input).await {
            break ended;
        }
        let overdue = session.awaited.front().and_then(|awaited| awaited.deadline);
        tokio::select! {
            () = master_changed(&mut session.master_changes) => {}
            () = until(overdue) => {
                // The connection owes a reply it may still send: it cannot
                // be reused, nor can this client's session go on in order.
                let command_timeout = lender.command_timeout;
                break session.fail(client, &format!(
                    "ERR attache: no reply within the command timeout ({command_timeout:?}, or a blocking command's own plus {BLOCKING_MARGIN:?})"
                )).await;
            }
            read = super::read_client(client, input), if !session.quitting => match read {
                // Mid-transaction or subscribed: the connection's state is
                // unknown to the client now; it is reset below.
                Ok(0) | Err(_) => break Ended::Close,
                Ok(_) => {}
            },
            read = session.pinned.connection.stream().read_buf(&mut session.replies) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break session.fail(client, "ERR attache: the upstream connection closed").await;
                }
                if session.relay(client).await.is_err() {
                    session.pinned.broken = true;
                    break Ended::Close;
                }
            }
        }
    };
    session.give_back().await;
    ended
}

/// A client on a connection of its own, between reads.
struct Session<'a> {
    lender: &'a Lender,
    pinned: bb8::PooledConnection<'a, PinnedConnector>,
    state: State,
    database: u32,
    /// Replies read from Redis, not yet relayed.
    replies: BytesMut,
    /// Commands to write to Redis.
    outgoing: Vec<Bytes>,
    /// Replies to attache's own setup commands, not relayed.
    swallow: usize,
    /// Per command whose reply is awaited (in step with `state.pending`):
    /// when it is overdue, and its name for the metrics (none for attache's own).
    awaited: VecDeque<Awaited>,
    /// The client sent QUIT: answer it once every reply owed went out.
    quitting: bool,
    master_changes: Option<watch::Receiver<u64>>,
    /// The client's limits bound what it sends; Redis' replies get their own.
    reply_limits: Limits,
}

impl<'a> Session<'a> {
    /// The pool's connections are reset to RESP2 and database 0: the
    /// client's protocol and database are set first, and those replies
    /// are swallowed, not the client's.
    fn new(
        lender: &'a Lender,
        pinned: bb8::PooledConnection<'a, PinnedConnector>,
        protocol: u8,
        database: u32,
    ) -> Self {
        let mut session = Self {
            lender,
            pinned,
            state: State::default(),
            database,
            replies: BytesMut::with_capacity(16 * 1024),
            outgoing: Vec::new(),
            swallow: 0,
            awaited: VecDeque::new(),
            quitting: false,
            master_changes: lender.target.changes(),
            reply_limits: Limits::for_replies(),
        };
        if protocol == 3 {
            session.send_own(Bytes::from_static(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"));
        }
        if database != 0 {
            session.send_own(encode::command(
                [&b"SELECT"[..], database.to_string().as_bytes()].into_iter(),
            ));
        }
        session
    }

    /// Queues one of attache's own commands, whose reply is swallowed.
    fn send_own(&mut self, command: Bytes) {
        self.outgoing.push(command);
        self.state.pending.push_back(Effect::Plain);
        self.awaited.push_back(Awaited {
            deadline: Some(Instant::now() + self.lender.command_timeout),
            name: None,
            span: None,
        });
        self.swallow += 1;
    }

    /// Queues the client's `command`.
    fn send(&mut self, command: Command) {
        send(
            &mut self.state,
            &mut self.awaited,
            command,
            &mut self.outgoing,
            self.lender,
            self.database,
        );
    }

    /// Forwards what the client sent and decides whether the session ends
    /// here: `Some` when it does.
    async fn step<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        input: &mut BytesMut,
    ) -> Option<Ended> {
        // Forward what the client has sent, stopping after QUIT.
        while !self.quitting {
            match parse_command(input, &self.lender.limits) {
                Ok(Some(command)) if command.is("QUIT") => self.quitting = true,
                Ok(Some(command)) => self.send(command),
                Ok(None) => break,
                Err(error) => {
                    let error = format!("ERR Protocol error: {error}");
                    return Some(self.fail(client, &error).await);
                }
            }
        }
        if !self.write_outgoing().await {
            return Some(
                self.fail(client, "ERR attache: the upstream connection failed")
                    .await,
            );
        }
        if self.quitting && self.state.pending.is_empty() {
            // Every reply owed before QUIT went out. Whatever state the
            // session holds (tracking, a transaction, subscriptions), the
            // client is gone: answer as Redis does and close; the reset
            // clears the connection for the next client.
            let _ = client.write_all(b"+OK\r\n").await;
            return Some(Ended::Close);
        }
        if self.state.done() {
            return Some(Ended::Shared {
                database: self.database,
            });
        }
        let master = self
            .master_changes
            .as_ref()
            .map_or(0, |changes| *changes.borrow());
        if self.pinned.generation != master {
            return Some(self.fail(client, "ERR attache: the Redis master changed (Sentinel failover); this connection's state is gone").await);
        }
        None
    }

    /// Writes the queued commands; `false` when the connection failed.
    async fn write_outgoing(&mut self) -> bool {
        if self.outgoing.is_empty() {
            return true;
        }
        let stream = self.pinned.connection.stream();
        for frame in self.outgoing.drain(..) {
            if stream.write_all(&frame).await.is_err() {
                return false;
            }
        }
        stream.flush().await.is_ok()
    }

    /// Relays every complete reply read so far to the client, following
    /// the session's state and counting each command's result.
    async fn relay<C: AsyncWrite + Unpin>(&mut self, client: &mut C) -> Result<(), ()> {
        loop {
            let frame = match check(&self.replies, &self.reply_limits) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(_) => return Err(()),
            };
            let reply = self.replies.split_to(frame.length).freeze();
            if frame.push {
                // RESP3 out-of-band data (pub/sub messages and
                // confirmations): relayed, never matched to a command.
                self.state.pushed(&reply);
            } else {
                self.settle(&reply);
                if self.swallow > 0 {
                    self.swallow -= 1;
                    continue;
                }
            }
            client.write_all(&reply).await.map_err(drop)?;
        }
    }

    /// Follows what `reply` (to the oldest command owed one) does to the
    /// session, and counts that command.
    fn settle(&mut self, reply: &Bytes) {
        let before = self.state.pending.len();
        if let Some(selected) = self.state.replied(reply) {
            self.database = selected;
        }
        if self.state.pending.len() < before
            && let Some(Awaited {
                name: Some(name),
                span,
                ..
            }) = self.awaited.pop_front()
        {
            let failed = reply.first() == Some(&b'-');
            let result = if failed {
                RedisResult::Error
            } else {
                RedisResult::Ok
            };
            self.lender.metrics.command(&name, result);
            if let Some(span) = span {
                traces::end_redis_span(span, failed.then_some("redis_error"));
            }
        }
    }

    /// Ends the session on a failure: the connection is not reused, and
    /// the client gets `error` (the text after `-`) before it is closed.
    async fn fail<C: AsyncWrite + Unpin>(&mut self, client: &mut C, error: &str) -> Ended {
        self.pinned.broken = true;
        let _ = client.write_all(&encode::error(error)).await;
        Ended::Close
    }

    /// Returns the connection to the pool clean: RESET, which also logs it
    /// out, then logged back in; a connection that fails either is dropped.
    async fn give_back(mut self) {
        if !self.pinned.broken {
            let credentials = self.lender.credentials.as_ref();
            self.pinned.broken = !reset(&mut self.pinned.connection, &self.reply_limits).await
                || handshake::prepare(
                    &mut self.pinned.connection,
                    credentials,
                    2,
                    0,
                    &self.reply_limits,
                )
                .await
                .is_err();
        }
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when Sentinel names a new master; never for a fixed upstream.
async fn master_changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(changes) => {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Sends RESET and reads its `+RESET`; false when the connection cannot be reused.
async fn reset(connection: &mut UpstreamConnection, limits: &Limits) -> bool {
    let stream = connection.stream();
    if stream.write_all(b"*1\r\n$5\r\nRESET\r\n").await.is_err() {
        return false;
    }
    let mut buffer = BytesMut::with_capacity(64);
    let outcome = tokio::time::timeout(Duration::from_secs(2), async {
        // Replies still in flight (a subscription's messages) come first.
        loop {
            match handshake::read_frame(connection, &mut buffer, limits).await {
                Ok(frame) if &frame[..] == b"+RESET\r\n" => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    outcome.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_confirmations_carry_their_count() {
        let reply = b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n";
        assert!(is_subscription_reply(reply));
        assert_eq!(subscription_count(reply), Some(0));
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert!(!is_subscription_reply(message));
    }

    #[test]
    fn a_subscription_keeps_the_session_until_every_channel_is_left() {
        let confirmation = |kind: &str, count: i64| {
            format!("*3\r\n${}\r\n{kind}\r\n$1\r\nc\r\n:{count}\r\n", kind.len()).into_bytes()
        };
        let mut state = State::default();
        state.sent(Effect::Subscribe(2));
        assert!(!state.done(), "before its confirmations");
        state.replied(&confirmation("subscribe", 1));
        state.replied(&confirmation("subscribe", 2));
        assert!(!state.done());
        state.replied(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n");
        state.sent(Effect::Unsubscribe(0));
        state.replied(&confirmation("unsubscribe", 1));
        assert!(!state.done());
        state.replied(&confirmation("unsubscribe", 0));
        assert!(state.done());
    }

    #[test]
    fn blocking_commands_get_their_own_time_plus_a_margin() {
        let now = Instant::now();
        let timeout = Duration::from_secs(5);
        let command = |words: &[&str]| {
            let args: Vec<Bytes> = words
                .iter()
                .map(|word| Bytes::from(word.to_string()))
                .collect();
            let raw = encode::command(args.iter().map(|arg| &arg[..]));
            Command { args, raw }
        };
        assert_eq!(
            reply_deadline(&command(&["GET", "k"]), timeout, now),
            Some(now + timeout)
        );
        assert_eq!(
            reply_deadline(&command(&["BLPOP", "q", "30"]), timeout, now),
            Some(now + Duration::from_secs(31))
        );
        assert_eq!(
            reply_deadline(&command(&["BLPOP", "q", "0"]), timeout, now),
            None
        );
        assert_eq!(
            reply_deadline(
                &command(&["XREAD", "BLOCK", "2500", "STREAMS", "s", "$"]),
                timeout,
                now
            ),
            Some(now + Duration::from_millis(3500))
        );
        assert_eq!(
            reply_deadline(&command(&["SUBSCRIBE", "c"]), timeout, now),
            None
        );
    }

    #[test]
    fn a_transaction_keeps_the_session_until_exec() {
        let mut state = State::default();
        state.sent(Effect::Watch);
        assert!(!state.done());
        state.replied(b"+OK\r\n");
        assert!(state.watching && !state.done());
        state.sent(Effect::Multi);
        state.replied(b"+OK\r\n");
        state.sent(Effect::Plain);
        state.replied(b"+QUEUED\r\n");
        state.sent(Effect::EndTransaction);
        assert!(!state.done());
        state.replied(b"*-1\r\n");
        assert!(state.done());
    }
}
