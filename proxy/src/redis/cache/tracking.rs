//! The tracking connection: one RESP3 connection per cache on which Redis
//! broadcasts a message for every change to a tracked prefix (`CLIENT
//! TRACKING on BCAST PREFIX ...`). BCAST needs no reads on this connection
//! (clients read on the shared ones) and covers keys the cache has not
//! seen yet, at the price of messages for keys it does not hold.
//!
//! A `PING` every second is the heartbeat; a fence is a `PING` too: its
//! `PONG` comes after every message Redis queued for the connection before
//! it. No `PONG` within the heartbeat timeout, a closed connection, or a
//! new Sentinel master: the cache is cleared and bypassed, and the
//! connection made again (with a growing pause, up to a few seconds).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use attache_resp::{Limits, check, encode};
use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::redis::error::RedisError;
use crate::redis::handshake::{self, Credentials};
use crate::telemetry::metrics::CacheDisabled;
use crate::upstream::UpstreamConnection;

/// Time between heartbeats.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// First pause before connecting again; doubled up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// The name the connection carries in `CLIENT LIST`.
const CLIENT_NAME: &str = "attache-cache-tracking";
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// How the tracking connection is set up.
pub(super) struct Setup {
    pub(super) credentials: Option<Credentials>,
    /// Tracked prefixes; none means every key.
    pub(super) prefixes: Vec<Vec<u8>>,
    /// A heartbeat unanswered for this long means tracking is lost.
    pub(super) heartbeat_timeout: Duration,
}

/// A `PING` sent and not answered yet.
struct Waiter {
    sent: Instant,
    /// A client waiting for the fence; none for a heartbeat.
    fence: Option<oneshot::Sender<()>>,
}

/// Keeps tracking up for `store` until `stop`.
pub(super) async fn follow(
    store: Arc<Store>,
    setup: Setup,
    mut fences: mpsc::Receiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = open(&store, &setup) => opened,
        };
        let reason = match opened {
            Ok((connection, generation)) => {
                retry = FIRST_RETRY;
                store.enable(generation);
                let reason = tokio::select! {
                    () = stop.cancelled() => return,
                    reason = track(&store, &setup, connection, generation, &mut fences) => reason,
                };
                tracing::debug!(listener = %store.listener, reason = reason.label(), "Redis cache tracking connection ended");
                reason
            }
            Err(error) => {
                tracing::warn!(listener = %store.listener, %error, "cannot set up the Redis cache's tracking connection; the cache is bypassed");
                CacheDisabled::Connect
            }
        };
        store.disable(reason);
        // Nothing is served while tracking is down: fences need no wait.
        let pause = tokio::time::sleep(retry);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut pause => break,
                Some(fence) = fences.recv() => { let _ = fence.send(()); }
            }
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Opens the connection: RESP3, login, name, then tracking.
async fn open(store: &Store, setup: &Setup) -> Result<(UpstreamConnection, u64), RedisError> {
    let (mut connection, generation) = store.target.connect().await?;
    let limits = Limits::for_replies();
    handshake::prepare(&mut connection, setup.credentials.as_ref(), 3, 0, &limits).await?;
    let mut tracking: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
    for prefix in &setup.prefixes {
        tracking.push(b"PREFIX");
        tracking.push(prefix);
    }
    let mut commands =
        encode::command([&b"CLIENT"[..], b"SETNAME", CLIENT_NAME.as_bytes()].into_iter()).to_vec();
    commands.extend_from_slice(&encode::command(tracking.into_iter()));
    connection
        .stream()
        .write_all(&commands)
        .await
        .map_err(RedisError::Write)?;
    let mut buffer = BytesMut::with_capacity(256);
    for step in ["CLIENT SETNAME", "CLIENT TRACKING"] {
        let answer = handshake::read_frame(&mut connection, &mut buffer, &limits).await?;
        if &answer[..] != b"+OK\r\n" {
            return Err(RedisError::SetupRefused {
                step: step.to_owned(),
                answer: String::from_utf8_lossy(&answer).trim_end().to_owned(),
            });
        }
    }
    Ok((connection, generation))
}

/// Applies Redis' messages until tracking is lost; says why.
async fn track(
    store: &Store,
    setup: &Setup,
    mut connection: UpstreamConnection,
    generation: u64,
    fences: &mut mpsc::Receiver<oneshot::Sender<()>>,
) -> CacheDisabled {
    let limits = Limits::for_replies();
    let mut buffer = BytesMut::with_capacity(4096);
    let mut waiters: VecDeque<Waiter> = VecDeque::new();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut master_changes = store.target.changes();
    loop {
        tokio::select! {
            read = connection.stream().read_buf(&mut buffer) => {
                match read {
                    Ok(0) | Err(_) => return CacheDisabled::Closed,
                    Ok(_) => {}
                }
                if apply(store, &mut buffer, &mut waiters, &limits).is_err() {
                    return CacheDisabled::Closed;
                }
            }
            Some(fence) = fences.recv() => {
                if connection.stream().write_all(PING).await.is_err() {
                    return CacheDisabled::Closed;
                }
                waiters.push_back(Waiter { sent: Instant::now(), fence: Some(fence) });
            }
            _ = heartbeat.tick() => {
                if waiters.front().is_some_and(|oldest| oldest.sent.elapsed() >= setup.heartbeat_timeout) {
                    return CacheDisabled::Timeout;
                }
                if connection.stream().write_all(PING).await.is_err() {
                    return CacheDisabled::Closed;
                }
                waiters.push_back(Waiter { sent: Instant::now(), fence: None });
            }
            changed = async {
                match master_changes.as_mut() {
                    Some(changes) => changes.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() || store.target.generation() != generation {
                    return CacheDisabled::Failover;
                }
            }
        }
    }
}

/// Applies every whole frame in `buffer`: invalidations drop keys, `PONG`s
/// answer the oldest fence or heartbeat.
fn apply(
    store: &Store,
    buffer: &mut BytesMut,
    waiters: &mut VecDeque<Waiter>,
    limits: &Limits,
) -> Result<(), RedisError> {
    while let Some(frame) = check(buffer, limits).map_err(RedisError::InvalidReply)? {
        let message = buffer.split_to(frame.length);
        if frame.push {
            match invalidated_keys(&message) {
                Some(Invalidated::Keys(keys)) => {
                    for key in keys {
                        store.invalidate(key);
                    }
                }
                Some(Invalidated::All) => store.flushed(),
                None => {}
            }
            continue;
        }
        let Some(waiter) = waiters.pop_front() else {
            return Err(RedisError::UnaskedReply);
        };
        if let Some(fence) = waiter.fence {
            let _ = fence.send(());
        }
    }
    Ok(())
}

/// What an invalidation message names.
enum Invalidated<'a> {
    Keys(Vec<&'a [u8]>),
    /// `null`: every key (a flush, or the server's tracking table overflowing).
    All,
}

/// The keys of `>2 invalidate [keys]` or `>2 invalidate null`; `None` for
/// any other push.
fn invalidated_keys(message: &[u8]) -> Option<Invalidated<'_>> {
    let mut rest = message.strip_prefix(b">2\r\n$10\r\ninvalidate\r\n")?;
    if rest.starts_with(b"_\r\n") || rest.starts_with(b"*-1\r\n") {
        return Some(Invalidated::All);
    }
    let count: usize = line(&mut rest, b'*')?.parse().ok()?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let length: usize = line(&mut rest, b'$')?.parse().ok()?;
        let key = rest.get(..length)?;
        keys.push(key);
        rest = rest.get(length + 2..)?;
    }
    Some(Invalidated::Keys(keys))
}

/// The text of a `<kind>...\r\n` line at the start of `rest`, moving past it.
fn line<'a>(rest: &mut &'a [u8], kind: u8) -> Option<&'a str> {
    if rest.first() != Some(&kind) {
        return None;
    }
    let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
    let text = std::str::from_utf8(&rest[1..end]).ok()?;
    rest.advance(end + 2);
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_name_their_keys_or_everything() {
        let message = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$6\r\nuser:1\r\n$0\r\n\r\n";
        let Some(Invalidated::Keys(keys)) = invalidated_keys(message) else {
            panic!("keys");
        };
        assert_eq!(keys, [&b"user:1"[..], b""]);
        assert!(matches!(
            invalidated_keys(b">2\r\n$10\r\ninvalidate\r\n_\r\n"),
            Some(Invalidated::All)
        ));
        assert!(invalidated_keys(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n").is_none());
        assert!(invalidated_keys(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$6\r\nuser:1\r\n").is_none());
    }
}
