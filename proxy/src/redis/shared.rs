//! A shared upstream connection: one task owns the socket, writes the
//! batches of commands clients hand it, and matches each reply to the
//! oldest command still waiting (Redis answers in order on a connection).
//! Many clients' commands are pipelined on it at once.
//!
//! # Concurrency note
//! The reply queue and the socket belong to the task alone; clients only
//! hold the sending half of its channel and a oneshot per command. A client
//! that gives up on a command (timeout, disconnect) drops its receiver: the
//! reply still arrives in order and is discarded, so later replies never
//! shift. When the socket fails, every command in flight gets an error
//! reply, and the next batch opens a new connection.

use std::collections::VecDeque;
use std::sync::Arc;

use attache_resp::{Limits, check, encode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::error::RedisError;
use super::handshake::{self, Credentials};
use super::target::Target;
use crate::telemetry::metrics::RedisMetrics;
use crate::upstream::UpstreamConnection;

/// Commands queued per shared connection before clients wait to hand more.
const QUEUE_BATCHES: usize = 1024;
/// Initial read buffer of a shared connection.
const READ_BUFFER: usize = 16 * 1024;

/// What comes back for a command: Redis' reply, or attache's error reply
/// when the connection failed.
pub(super) type Answer = Result<Bytes, Bytes>;

/// Commands a shared connection gathers from queued batches into one write
/// (a client's own batch may be larger: it is never split).
const COALESCED_COMMANDS: usize = 512;

/// One client's commands for one shared connection, and where each reply goes.
pub(super) struct Batch {
    commands: Vec<Bytes>,
    replies: Vec<oneshot::Sender<Answer>>,
    /// Per command: read-only, so it may be sent again on a new connection
    /// when this one fails before its reply.
    retryable: Vec<bool>,
}

impl Batch {
    pub(super) fn new() -> Self {
        Self {
            commands: Vec::new(),
            replies: Vec::new(),
            retryable: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Takes `other`'s commands after this batch's own.
    fn append(&mut self, other: Self) {
        self.commands.extend(other.commands);
        self.replies.extend(other.replies);
        self.retryable.extend(other.retryable);
    }

    /// Adds one command, where its reply goes, and whether it may be retried.
    pub(super) fn push(&mut self, command: Bytes, reply: oneshot::Sender<Answer>, retryable: bool) {
        self.commands.push(command);
        self.replies.push(reply);
        self.retryable.push(retryable);
    }
}

/// A command sent and not answered yet.
struct Waiting {
    sender: oneshot::Sender<Answer>,
    /// The command again, while it may still be retried (read-only, not
    /// retried yet).
    retry: Option<Bytes>,
}

/// The client side of a shared connection.
#[derive(Clone)]
pub(super) struct SharedConnection {
    sender: mpsc::Sender<Batch>,
}

impl SharedConnection {
    /// Starts the task for a connection to `upstream` that selects database
    /// `database` first (when it is not 0).
    /// `open` counts the connection while it is open.
    pub(super) fn start(
        target: Arc<Target>,
        credentials: Option<Credentials>,
        protocol: u8,
        database: u32,
        limits: Limits,
        open: RedisMetrics,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_BATCHES);
        let session = Session {
            target,
            credentials,
            protocol,
            database,
        };
        tokio::spawn(run(session, limits, receiver, open));
        Self { sender }
    }

    /// Hands `batch` to the connection; `false` when its task has ended.
    /// Waiting for room is rare, and its state (a semaphore acquisition) is
    /// boxed so that it is not part of every client's task.
    pub(super) async fn send(&self, batch: Batch) -> bool {
        match self.sender.try_send(batch) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(batch)) => {
                Box::pin(self.sender.send(batch)).await.is_ok()
            }
        }
    }
}

/// What each connection of one shared set says first, and to whom.
struct Session {
    target: Arc<Target>,
    credentials: Option<Credentials>,
    protocol: u8,
    database: u32,
}

async fn run(
    session: Session,
    limits: Limits,
    mut batches: mpsc::Receiver<Batch>,
    open_gauge: RedisMetrics,
) {
    // Connected lazily: a connection is made when the first batch arrives,
    // and again after a failure.
    let mut connection: Option<UpstreamConnection> = None;
    // The master generation the connection was made in (Sentinel).
    let mut generation = 0;
    // Batches to send before any new one: read-only commands being
    // retried, and a batch that arrived for a connection gone stale.
    let mut held: VecDeque<Batch> = VecDeque::new();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    // Counts the connection as open while it is.
    let mut counted = Counted(open_gauge, false);
    let mut buffer = BytesMut::with_capacity(READ_BUFFER);
    loop {
        let Some(open) = connection.as_mut() else {
            let batch = match held.pop_front() {
                Some(batch) => batch,
                None => match batches.recv().await {
                    Some(batch) => batch,
                    None => return,
                },
            };
            match open_connection(&session, &limits).await {
                Ok((opened, opened_in)) => {
                    connection = Some(opened);
                    generation = opened_in;
                    counted.set(true);
                    buffer.clear();
                    if let Err(error) = write_batch(connection.as_mut(), batch, &mut waiting).await
                    {
                        held.extend(fail_all(&mut waiting, &error));
                        connection = None;
                        counted.set(false);
                    }
                }
                Err(error) => {
                    let reply = encode::error(&format!("ERR attache: {error}"));
                    for sender in batch.replies {
                        let _ = sender.send(Err(reply.clone()));
                    }
                }
            }
            continue;
        };
        tokio::select! {
            batch = batches.recv() => {
                let Some(mut batch) = batch else { return };
                if session.target.generation() != generation {
                    // Sentinel named a new master: commands go there from now on.
                    held.extend(fail_all(&mut waiting, &RedisError::MasterChanged));
                    connection = None;
                    counted.set(false);
                    held.push_back(batch);
                    continue;
                }
                // What other clients queued meanwhile goes out in the same
                // write: one system call for a burst, not one per client.
                while batch.commands.len() < COALESCED_COMMANDS {
                    let Ok(queued) = batches.try_recv() else { break };
                    batch.append(queued);
                }
                if let Err(error) = write_batch(Some(open), batch, &mut waiting).await {
                    held.extend(fail_all(&mut waiting, &error));
                    connection = None;
                    counted.set(false);
                }
            }
            read = open.stream().read_buf(&mut buffer) => {
                let outcome = match read {
                    Ok(0) => Err(RedisError::Closed),
                    Ok(_) => deliver(&mut buffer, &mut waiting, &limits),
                    Err(error) => Err(RedisError::Read(error)),
                };
                if let Err(error) = outcome {
                    held.extend(fail_all(&mut waiting, &error));
                    connection = None;
                    counted.set(false);
                }
            }
        }
    }
}

/// Connects, authenticates and selects the database; returns the master
/// generation the connection belongs to.
async fn open_connection(
    session: &Session,
    limits: &Limits,
) -> Result<(UpstreamConnection, u64), RedisError> {
    let (mut connection, generation) = session.target.connect().await?;
    handshake::prepare(
        &mut connection,
        session.credentials.as_ref(),
        session.protocol,
        session.database,
        limits,
    )
    .await?;
    Ok((connection, generation))
}

/// Writes a batch in one go and queues its reply senders in order.
async fn write_batch(
    connection: Option<&mut UpstreamConnection>,
    batch: Batch,
    waiting: &mut VecDeque<Waiting>,
) -> Result<(), RedisError> {
    let Some(connection) = connection else {
        return Err(RedisError::NotConnected);
    };
    // Queued first: if the write fails, these get the error reply too.
    waiting.extend(
        batch
            .replies
            .into_iter()
            .zip(&batch.commands)
            .zip(&batch.retryable)
            .map(|((sender, command), retryable)| Waiting {
                sender,
                retry: retryable.then(|| command.clone()),
            }),
    );
    let frames: Vec<std::io::IoSlice<'_>> = batch
        .commands
        .iter()
        .map(|command| std::io::IoSlice::new(command))
        .collect();
    write_all_vectored(connection, frames)
        .await
        .map_err(RedisError::Write)
}

async fn write_all_vectored(
    connection: &mut UpstreamConnection,
    mut slices: Vec<std::io::IoSlice<'_>>,
) -> std::io::Result<()> {
    let stream = connection.stream();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, written);
    }
    stream.flush().await
}

/// Hands every complete reply in `buffer` to the oldest waiting command.
fn deliver(
    buffer: &mut BytesMut,
    waiting: &mut VecDeque<Waiting>,
    limits: &Limits,
) -> Result<(), RedisError> {
    while let Some(frame) = check(buffer, limits).map_err(RedisError::InvalidReply)? {
        let reply = buffer.split_to(frame.length).freeze();
        if frame.push {
            // Out of band (RESP3); no shared-connection command subscribes.
            continue;
        }
        let Some(Waiting { sender, .. }) = waiting.pop_front() else {
            return Err(RedisError::UnaskedReply);
        };
        // A client that gave up dropped its receiver: the reply is discarded.
        let _ = sender.send(Ok(reply));
    }
    Ok(())
}

/// Counts one connection while it is open.
struct Counted(RedisMetrics, bool);

impl Counted {
    fn set(&mut self, open: bool) {
        if open != self.1 {
            self.1 = open;
            self.0.shared_connection(if open { 1 } else { -1 });
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Answers every command in flight with an error, except read-only ones
/// not retried yet: those come back as a batch to send once more, on a new
/// connection. Writes are never retried (they may have been applied).
fn fail_all(waiting: &mut VecDeque<Waiting>, error: &RedisError) -> Option<Batch> {
    tracing::warn!(
        %error,
        in_flight = waiting.len(),
        "shared Redis connection failed; its writes get an error reply, its reads are retried once"
    );
    let reply = encode::error(&format!("ERR attache: {error}"));
    let mut retry = Batch::new();
    for Waiting {
        sender,
        retry: command,
    } in waiting.drain(..)
    {
        match command {
            Some(command) => retry.push(command, sender, false),
            None => {
                let _ = sender.send(Err(reply.clone()));
            }
        }
    }
    (!retry.commands.is_empty()).then_some(retry)
}
