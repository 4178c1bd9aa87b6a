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

use super::commands::{self, Session, Wait};
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
                traces::start_redis_span(tracer, listener, command.name(), database)
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
        Session::Multi => Effect::Multi,
        Session::Sticky => Effect::Sticky,
        Session::EndTransaction => Effect::EndTransaction,
        Session::Watch => Effect::Watch,
        Session::Unwatch => Effect::Unwatch,
        Session::Subscribe => Effect::Subscribe(channels),
        Session::Unsubscribe => Effect::Unsubscribe(channels),
        Session::Monitor => Effect::Monitor,
        Session::Select => command
            .args
            .get(1)
            .and_then(|index| std::str::from_utf8(index).ok()?.parse().ok())
            .map_or(Effect::Plain, Effect::Select),
        Session::Plain
            if command.upper_name(&mut [0; 32]) == "CLIENT"
                && command
                    .args
                    .get(1)
                    .is_some_and(|sub| super::classify::is_sticky_client_subcommand(sub)) =>
        {
            Effect::Sticky
        }
        Session::Plain if commands::is_blocking(command) => Effect::Blocking,
        Session::Plain => Effect::Plain,
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
    let Lender {
        pool,
        credentials,
        target,
        limits,
        command_timeout,
        metrics,
        tracing: _,
    } = lender;
    let credentials = credentials.as_ref();
    // The client's limits bound what it sends; Redis' replies get their own.
    let reply_limits = Limits::for_replies();
    let mut master_changes = target.changes();
    let mut pinned = match pool.get().await {
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
    let mut state = State::default();
    let mut database = database;
    let mut replies = BytesMut::with_capacity(16 * 1024);
    let mut outgoing: Vec<Bytes> = Vec::new();
    // The pool's connections are reset to RESP2 and database 0: set the
    // client's first; those replies are swallowed, not the client's.
    let mut swallow = 0;
    // Per command whose reply is awaited (in step with `state.pending`):
    // when it is overdue, and its name for the metrics (none for attache's own).
    let mut awaited: VecDeque<Awaited> = VecDeque::new();
    let own = |command_timeout: Duration| Awaited {
        deadline: Some(Instant::now() + command_timeout),
        name: None,
        span: None,
    };
    if protocol == 3 {
        outgoing.push(Bytes::from_static(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"));
        state.pending.push_back(Effect::Plain);
        awaited.push_back(own(*command_timeout));
        swallow += 1;
    }
    if database != 0 {
        outgoing.push(encode::command(
            [&b"SELECT"[..], database.to_string().as_bytes()].into_iter(),
        ));
        state.pending.push_back(Effect::Plain);
        awaited.push_back(own(*command_timeout));
        swallow += 1;
    }
    send(
        &mut state,
        &mut awaited,
        first,
        &mut outgoing,
        lender,
        database,
    );
    let mut quitting = false;
    let ended = loop {
        // Forward what the client has sent, stopping after QUIT.
        while !quitting {
            match parse_command(input, limits) {
                Ok(Some(command)) if command.is("QUIT") => quitting = true,
                Ok(Some(command)) => {
                    send(
                        &mut state,
                        &mut awaited,
                        command,
                        &mut outgoing,
                        lender,
                        database,
                    );
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = client
                        .write_all(&encode::error(&format!("ERR Protocol error: {error}")))
                        .await;
                    pinned.broken = true;
                    break;
                }
            }
        }
        if pinned.broken {
            break Ended::Close;
        }
        if !outgoing.is_empty() {
            let stream = pinned.connection.stream();
            let mut failed = false;
            for frame in outgoing.drain(..) {
                if stream.write_all(&frame).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || stream.flush().await.is_err() {
                pinned.broken = true;
                let _ = client
                    .write_all(&encode::error(
                        "ERR attache: the upstream connection failed",
                    ))
                    .await;
                break Ended::Close;
            }
        }
        if quitting && state.pending.is_empty() {
            // Every reply owed before QUIT went out. Whatever state the
            // session holds (tracking, a transaction, subscriptions), the
            // client is gone: answer as Redis does and close; RESET below
            // clears the connection for the next client.
            let _ = client.write_all(b"+OK\r\n").await;
            break Ended::Close;
        }
        if state.done() {
            break Ended::Shared { database };
        }
        if pinned.generation
            != master_changes
                .as_ref()
                .map_or(0, |changes| *changes.borrow())
        {
            pinned.broken = true;
            let _ = client
                .write_all(&encode::error(
                    "ERR attache: the Redis master changed (Sentinel failover); this connection's state is gone",
                ))
                .await;
            break Ended::Close;
        }
        let overdue = awaited.front().and_then(|awaited| awaited.deadline);
        tokio::select! {
            () = master_changed(&mut master_changes) => {}
            () = until(overdue) => {
                // The connection owes a reply it may still send: it cannot
                // be reused, nor can this client's session go on in order.
                pinned.broken = true;
                let _ = client
                    .write_all(&encode::error(&format!(
                        "ERR attache: no reply within the command timeout ({command_timeout:?}, or a blocking command's own plus {BLOCKING_MARGIN:?})"
                    )))
                    .await;
                break Ended::Close;
            }
            read = client.read_buf(input), if !quitting => match read {
                Ok(0) | Err(_) => {
                    // Mid-transaction or subscribed: the connection's state
                    // is unknown to the client now; reset it below.
                    break Ended::Close;
                }
                Ok(_) => {}
            },
            read = pinned.connection.stream().read_buf(&mut replies) => {
                match read {
                    Ok(0) | Err(_) => {
                        pinned.broken = true;
                        let _ = client
                            .write_all(&encode::error("ERR attache: the upstream connection closed"))
                            .await;
                        break Ended::Close;
                    }
                    Ok(_) => {}
                }
                let mut failed = false;
                loop {
                    let frame = match check(&replies, &reply_limits) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    };
                    let reply = replies.split_to(frame.length).freeze();
                    if frame.push {
                        // RESP3 out-of-band data (pub/sub messages and
                        // confirmations): relayed, never matched to a command.
                        state.pushed(&reply);
                    } else {
                        let before = state.pending.len();
                        if let Some(selected) = state.replied(&reply) {
                            database = selected;
                        }
                        if state.pending.len() < before
                            && let Some(Awaited { name: Some(name), span, .. }) = awaited.pop_front()
                        {
                            let failed = reply.first() == Some(&b'-');
                            let result = if failed { RedisResult::Error } else { RedisResult::Ok };
                            metrics.command(&name, result);
                            if let Some(span) = span {
                                traces::end_redis_span(span, failed.then_some("redis_error"));
                            }
                        }
                    }
                    if swallow > 0 && !frame.push {
                        swallow -= 1;
                        continue;
                    }
                    if client.write_all(&reply).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    pinned.broken = true;
                    break Ended::Close;
                }
            }
        }
    };
    if !pinned.broken {
        // RESET also logs the connection out: log it back in.
        pinned.broken = !reset(&mut pinned.connection, &reply_limits).await
            || handshake::prepare(&mut pinned.connection, credentials, 2, 0, &reply_limits)
                .await
                .is_err();
    }
    ended
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
