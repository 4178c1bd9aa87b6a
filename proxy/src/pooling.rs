//! Server connection pools for the database ambassadors (Postgres and
//! MySQL): one per (database, user) of a listener, at most `pool_size`
//! connections, idle ones reused newest first, clients beyond the size
//! queued in arrival order for up to `queue_timeout`, idle connections
//! closed past `server_idle_timeout` or `server_lifetime`, and `min_idle`
//! kept warm. What a connection is and how it logs in is the protocol's
//! ([`Connector`]); the rest is here, once, with the constant-time compare
//! both protocols check client logins with ([`same`]).
//!
//! Not bb8: bb8 retries a failed connect until its timeout and hands the
//! waiting caller only a timeout, while a database client must get the
//! server's own login error (`database "x" does not exist`, `Unknown
//! database 'x'`) at once. Here the client that asked for the connection
//! gets the error, and its slot passes to the next waiting client.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::telemetry::metrics::PoolGauges;

/// How often idle connections are checked against their limits and
/// `min_idle` is topped up.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// How a pool's connections are opened (connected and logged in).
pub(crate) trait Connector: Send + Sync + 'static {
    type Connection: Pooled;
    type Error: std::error::Error + Send + 'static;

    fn open(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;
}

/// What the pool needs to know of a connection.
pub(crate) trait Pooled: Send + 'static {
    /// False once the connection must not go back to its pool.
    fn reusable(&self) -> bool;
    /// When it was opened (`server_lifetime` counts from here).
    fn created(&self) -> Instant;
}

/// The limits every pool of a listener keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) size: u32,
    pub(crate) min_idle: u32,
    pub(crate) queue_timeout: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError<E: std::error::Error + 'static> {
    #[error("no server connection within {0:?} (pool_size reached)")]
    Timeout(Duration),
    #[error(transparent)]
    Server(E),
}

/// One (database, user) pool.
pub(crate) struct Pool<C: Connector> {
    connector: C,
    limits: Limits,
    state: Mutex<State<C::Connection>>,
    gauges: PoolGauges,
}

struct State<T> {
    idle: Vec<Idle<T>>,
    /// Connections open or being opened, lent or idle.
    total: u32,
    waiting: VecDeque<oneshot::Sender<Handoff<T>>>,
}

struct Idle<T> {
    connection: Box<T>,
    since: Instant,
}

/// What a waiting client is handed.
enum Handoff<T> {
    Connection(Box<T>),
    /// A slot freed: open a connection of your own.
    Slot,
}

/// A client waiting for a connection. Dropped (out of time, or the
/// client gone) with a connection or slot handed to it at that very
/// moment, it gives that back, so the pool never loses one.
struct Waiter<'a, C: Connector> {
    pool: &'a Pool<C>,
    receiver: oneshot::Receiver<Handoff<C::Connection>>,
}

impl<C: Connector> Drop for Waiter<'_, C> {
    fn drop(&mut self) {
        self.receiver.close();
        match self.receiver.try_recv() {
            Ok(Handoff::Connection(connection)) => self.pool.put_back(connection),
            Ok(Handoff::Slot) => self.pool.release_slot(),
            Err(_) => {}
        }
    }
}

/// A lent server connection; it returns to the pool when dropped (or is
/// closed, when no longer reusable or past its lifetime).
pub(crate) struct Lease<C: Connector> {
    pool: Arc<Pool<C>>,
    /// Boxed: a session holds a lease only while it uses it.
    connection: Option<Box<C::Connection>>,
}

impl<C: Connector> Lease<C> {
    pub(crate) fn connection(&mut self) -> &mut C::Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection")
    }
}

impl<C: Connector> Drop for Lease<C> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.put_back(connection);
        }
    }
}

impl<C: Connector> Pool<C> {
    fn new(connector: C, limits: Limits, gauges: PoolGauges) -> Arc<Self> {
        let pool = Arc::new(Self {
            connector,
            limits,
            state: Mutex::new(State {
                idle: Vec::new(),
                total: 0,
                waiting: VecDeque::new(),
            }),
            gauges,
        });
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    /// How this pool's connections log in.
    pub(crate) fn connector(&self) -> &C {
        &self.connector
    }

    /// A server connection for a client: an idle one, a new one, or the
    /// next one returned within `queue_timeout`.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Lease<C>, PoolError<C::Error>> {
        let receiver = {
            let mut state = self.lock();
            let mut handoff = self.pop_idle(&mut state).map(Handoff::Connection);
            if handoff.is_none() && state.total < self.limits.size {
                state.total += 1;
                handoff = Some(Handoff::Slot);
            }
            let waiting = match handoff {
                Some(handoff) => Err(handoff),
                None => {
                    let (sender, receiver) = oneshot::channel();
                    state.waiting.push_back(sender);
                    Ok(receiver)
                }
            };
            self.update_gauges(&state);
            waiting
        };
        let receiver = match receiver {
            Ok(receiver) => receiver,
            Err(handoff) => return self.take(handoff).await,
        };
        let mut waiter = Waiter {
            pool: self,
            receiver,
        };
        match tokio::time::timeout(self.limits.queue_timeout, &mut waiter.receiver).await {
            // Handed on by put_back or release_slot, which removed this
            // waiter from the queue: nothing else to do under the lock.
            Ok(Ok(handoff)) => return self.take(handoff).await,
            // The pool is gone (it never drops a waiter otherwise).
            Ok(Err(_)) => return Err(PoolError::Timeout(self.limits.queue_timeout)),
            Err(_elapsed) => drop(waiter),
        }
        // A waiter that gave up is skipped when a connection is handed on;
        // it leaves the queue now so that the gauge stays true.
        let waiting = {
            let mut state = self.lock();
            state.waiting.retain(|sender| !sender.is_closed());
            self.update_gauges(&state);
            state.waiting.len()
        };
        tracing::trace!(waiting, "pool wait timed out");
        Err(PoolError::Timeout(self.limits.queue_timeout))
    }

    /// An idle server connection, when there is one: what most
    /// transactions get, without building [`Pool::get`]'s future.
    pub(crate) fn try_idle(self: &Arc<Self>) -> Option<Lease<C>> {
        let mut state = self.lock();
        let connection = self.pop_idle(&mut state)?;
        self.update_gauges(&state);
        Some(Lease {
            pool: self.clone(),
            connection: Some(connection),
        })
    }

    /// The most recently returned idle connection that is not past its
    /// idle timeout (those are closed on the way).
    fn pop_idle(&self, state: &mut State<C::Connection>) -> Option<Box<C::Connection>> {
        let now = Instant::now();
        while let Some(idle) = state.idle.pop() {
            if self.expired(&idle, now) {
                state.total -= 1;
                continue;
            }
            return Some(idle.connection);
        }
        None
    }

    async fn take(
        self: &Arc<Self>,
        handoff: Handoff<C::Connection>,
    ) -> Result<Lease<C>, PoolError<C::Error>> {
        let connection = match handoff {
            Handoff::Connection(connection) => connection,
            Handoff::Slot => match self.connector.open().await {
                Ok(connection) => Box::new(connection),
                Err(error) => {
                    self.release_slot();
                    return Err(PoolError::Server(error));
                }
            },
        };
        Ok(Lease {
            pool: self.clone(),
            connection: Some(connection),
        })
    }

    fn expired(&self, idle: &Idle<C::Connection>, now: Instant) -> bool {
        now.duration_since(idle.since) >= self.limits.idle_timeout
            || now.duration_since(idle.connection.created()) >= self.limits.lifetime
    }

    fn put_back(&self, connection: Box<C::Connection>) {
        if !connection.reusable() || connection.created().elapsed() >= self.limits.lifetime {
            drop(connection);
            self.release_slot();
            return;
        }
        let mut state = self.lock();
        let mut handoff = Handoff::Connection(connection);
        while let Some(waiter) = state.waiting.pop_front() {
            match waiter.send(handoff) {
                Ok(()) => {
                    self.update_gauges(&state);
                    return;
                }
                Err(returned) => handoff = returned,
            }
        }
        if let Handoff::Connection(connection) = handoff {
            state.idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
        self.update_gauges(&state);
    }

    /// A connection closed or never opened: its slot goes to the next
    /// waiting client, or back to the pool.
    fn release_slot(&self) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiting.pop_front() {
            if waiter.send(Handoff::Slot).is_ok() {
                self.update_gauges(&state);
                return;
            }
        }
        state.total -= 1;
        self.update_gauges(&state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<C::Connection>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_gauges(&self, state: &State<C::Connection>) {
        let idle = state.idle.len() as i64;
        self.gauges.idle.set(idle);
        self.gauges.active.set(i64::from(state.total) - idle);
        self.gauges.waiting.set(state.waiting.len() as i64);
    }

    /// Closes idle connections past their limits; opens connections until
    /// `min_idle` are idle (within the size).
    async fn maintain_once(self: &Arc<Self>) {
        let missing = {
            let mut state = self.lock();
            let now = Instant::now();
            let before = state.idle.len();
            state.idle.retain(|idle| !self.expired(idle, now));
            let closed = (before - state.idle.len()) as u32;
            state.total -= closed;
            let wanted = self.limits.min_idle.saturating_sub(state.idle.len() as u32);
            let missing = wanted.min(self.limits.size - state.total);
            state.total += missing;
            self.update_gauges(&state);
            missing
        };
        for _ in 0..missing {
            match self.connector.open().await {
                Ok(connection) => self.put_back(Box::new(connection)),
                Err(error) => {
                    self.release_slot();
                    tracing::debug!(%error, "pool: a warm connection failed");
                    break;
                }
            }
        }
    }

    /// The state for `/upstreams`: lent, idle, waiting.
    fn counts(&self) -> (u32, usize, usize) {
        let state = self.lock();
        (
            state.total - state.idle.len() as u32,
            state.idle.len(),
            state.waiting.len(),
        )
    }
}

async fn maintain<C: Connector>(pool: Weak<Pool<C>>) {
    // The first round after an interval: the connection the pool's first
    // client opened counts toward `min_idle` by then.
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + MAINTENANCE_INTERVAL,
        MAINTENANCE_INTERVAL,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.maintain_once().await;
    }
}

/// A pool's key: (database, user, variant).
type PoolKey = (String, String, &'static str);

/// A listener's pools by (database, user) and, where one protocol's
/// connections come in kinds (a MySQL login's `CLIENT_FOUND_ROWS`), by
/// variant; made on first use.
pub(crate) struct Pools<C: Connector> {
    limits: Limits,
    pools: Mutex<HashMap<PoolKey, Arc<Pool<C>>>>,
}

impl<C: Connector> Pools<C> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of `database`, `user` and `variant` (`""` when the
    /// protocol has none); `make` gives a new one its connector and gauges,
    /// given the pool's name ([`pool_name`]).
    pub(crate) fn pool(
        &self,
        database: &str,
        user: &str,
        variant: &'static str,
        make: impl FnOnce(&str) -> (C, PoolGauges),
    ) -> Arc<Pool<C>> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limits = self.limits;
        pools
            .entry((database.to_owned(), user.to_owned(), variant))
            .or_insert_with(|| {
                let (connector, gauges) = make(&pool_name(database, user, variant));
                Pool::new(connector, limits, gauges)
            })
            .clone()
    }

    /// Each pool's name ([`pool_name`]) and its lent, idle and waiting
    /// counts.
    pub(crate) fn states(&self) -> Vec<(String, (u32, usize, usize))> {
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut states: Vec<_> = pools
            .iter()
            .map(|((database, user, variant), pool)| {
                (pool_name(database, user, variant), pool.counts())
            })
            .collect();
        states.sort();
        states
    }
}

/// A pool's name in metrics and `/pools`: `database/user`, and
/// `+variant` when it has one.
fn pool_name(database: &str, user: &str, variant: &str) -> String {
    if variant.is_empty() {
        format!("{database}/{user}")
    } else {
        format!("{database}/{user}+{variant}")
    }
}

/// Compares a client's login proof with the expected one without stopping
/// at the first difference (both ambassadors' client logins).
pub(crate) fn same(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0, |difference, (left, right)| difference | (left ^ right))
            == 0
}
