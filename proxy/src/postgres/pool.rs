//! The server connection pools of one listener, one per (database, user):
//! at most `pool_size` connections, idle ones reused newest first, clients
//! beyond the size queued in arrival order for up to `queue_timeout`.
//!
//! Not bb8: bb8 retries a failed connect until its timeout and hands the
//! waiting caller only a timeout, while a Postgres client must get the
//! server's own login error (`database "x" does not exist`) at once. Here
//! the client that asked for the connection gets the error, and its slot
//! passes to the next waiting client.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::server::{Login, ServerConnection, ServerError};
use crate::telemetry::metrics::{PoolGauges, PostgresMetrics};

/// How often idle connections are checked against their limits and
/// `min_idle` is topped up.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// The limits every pool of a listener keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) size: u32,
    pub(super) min_idle: u32,
    pub(super) queue_timeout: Duration,
    pub(super) lifetime: Duration,
    pub(super) idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PoolError {
    #[error("no server connection within {0:?} (pool_size reached)")]
    Timeout(Duration),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// One (database, user) pool.
pub(super) struct Pool {
    login: Login,
    /// The settings the server reports at login, from the first
    /// connection: what clients are told at their startup.
    reported: Mutex<Option<Arc<std::collections::BTreeMap<String, String>>>>,
    limits: Limits,
    state: Mutex<State>,
    gauges: PoolGauges,
}

struct State {
    idle: Vec<Idle>,
    /// Connections open or being opened, lent or idle.
    total: u32,
    waiting: VecDeque<oneshot::Sender<Handoff>>,
}

struct Idle {
    connection: Box<ServerConnection>,
    since: Instant,
}

/// What a waiting client is handed.
enum Handoff {
    Connection(Box<ServerConnection>),
    /// A slot freed: open a connection of your own.
    Slot,
}

/// A client waiting for a connection. Dropped (out of time, or the
/// client gone) with a connection or slot handed to it at that very
/// moment, it gives that back, so the pool never loses one.
struct Waiter<'a> {
    pool: &'a Pool,
    receiver: oneshot::Receiver<Handoff>,
}

impl Drop for Waiter<'_> {
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
/// closed, when marked broken or past its lifetime).
pub(super) struct Lease {
    pool: Arc<Pool>,
    /// Boxed: a session holds a lease only while it uses it.
    connection: Option<Box<ServerConnection>>,
}

impl Lease {
    pub(super) fn connection(&mut self) -> &mut ServerConnection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.put_back(connection);
        }
    }
}

impl Pool {
    fn new(login: Login, limits: Limits, gauges: PoolGauges) -> Arc<Self> {
        let pool = Arc::new(Self {
            login,
            reported: Mutex::new(None),
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

    /// A server connection for a client: an idle one, a new one, or the
    /// next one returned within `queue_timeout`.
    pub(super) async fn get(self: &Arc<Self>) -> Result<Lease, PoolError> {
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
        tracing::trace!(waiting, "postgres pool wait timed out");
        Err(PoolError::Timeout(self.limits.queue_timeout))
    }

    /// An idle server connection, when there is one: what most
    /// transactions get, without building [`Pool::get`]'s future.
    pub(super) fn try_idle(self: &Arc<Self>) -> Option<Lease> {
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
    fn pop_idle(&self, state: &mut State) -> Option<Box<ServerConnection>> {
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

    async fn take(self: &Arc<Self>, handoff: Handoff) -> Result<Lease, PoolError> {
        let connection = match handoff {
            Handoff::Connection(connection) => connection,
            Handoff::Slot => match ServerConnection::open(&self.login).await {
                Ok(connection) => {
                    let connection = Box::new(connection);
                    let mut reported = self
                        .reported
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if reported.is_none() {
                        *reported = Some(Arc::new(connection.reported.clone()));
                    }
                    connection
                }
                Err(error) => {
                    self.release_slot();
                    return Err(error.into());
                }
            },
        };
        Ok(Lease {
            pool: self.clone(),
            connection: Some(connection),
        })
    }

    /// The settings the server reported to the pool's first connection.
    pub(super) fn reported(&self) -> Option<Arc<std::collections::BTreeMap<String, String>>> {
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn expired(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) >= self.limits.idle_timeout
            || now.duration_since(idle.connection.created) >= self.limits.lifetime
    }

    fn put_back(&self, connection: Box<ServerConnection>) {
        if connection.broken || connection.created.elapsed() >= self.limits.lifetime {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_gauges(&self, state: &State) {
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
            match ServerConnection::open(&self.login).await {
                Ok(connection) => self.put_back(Box::new(connection)),
                Err(error) => {
                    self.release_slot();
                    tracing::debug!(%error, "postgres pool: a warm connection failed");
                    break;
                }
            }
        }
    }

    /// The state for `/upstreams`: lent, idle, waiting.
    pub(super) fn counts(&self) -> (u32, usize, usize) {
        let state = self.lock();
        (
            state.total - state.idle.len() as u32,
            state.idle.len(),
            state.waiting.len(),
        )
    }
}

async fn maintain(pool: Weak<Pool>) {
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

/// A listener's pools by (database, user), made on first use.
pub(super) struct Pools {
    upstream: Arc<crate::upstream::Upstream>,
    limits: Limits,
    server_user: Option<String>,
    server_password: Option<String>,
    max_prepared_statements: std::num::NonZeroUsize,
    metrics: PostgresMetrics,
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
}

impl Pools {
    pub(super) fn new(
        upstream: Arc<crate::upstream::Upstream>,
        settings: &attache_config::PostgresListener,
        metrics: PostgresMetrics,
    ) -> Self {
        Self {
            upstream,
            limits: Limits {
                size: settings.pool_size,
                min_idle: settings.min_idle,
                queue_timeout: settings.queue_timeout,
                lifetime: settings.server_lifetime,
                idle_timeout: settings.server_idle_timeout,
            },
            server_user: settings.server_user.clone(),
            server_password: settings.server_password.clone(),
            max_prepared_statements: std::num::NonZeroUsize::new(settings.max_prepared_statements)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            metrics,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for a client of `database` logged in as `user`
    /// (`user_password`: its password, when the config has it in the clear).
    pub(super) fn pool(
        &self,
        database: &str,
        user: &str,
        user_password: Option<&str>,
    ) -> Arc<Pool> {
        let server_user = self.server_user.as_deref().unwrap_or(user);
        let key = (database.to_owned(), server_user.to_owned());
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pools
            .entry(key)
            .or_insert_with(|| {
                let login = Login {
                    upstream: self.upstream.clone(),
                    user: server_user.to_owned(),
                    database: database.to_owned(),
                    // The client's own password serves a login as the client.
                    password: self.server_password.clone().or_else(|| {
                        self.server_user
                            .is_none()
                            .then(|| user_password.map(str::to_owned))
                            .flatten()
                    }),
                    max_prepared_statements: self.max_prepared_statements,
                };
                let gauges = self.metrics.pool(&format!("{database}/{server_user}"));
                Pool::new(login, self.limits, gauges)
            })
            .clone()
    }

    /// Each pool's name (`database/user`) and its lent, idle and waiting counts.
    pub(super) fn states(&self) -> Vec<(String, (u32, usize, usize))> {
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut states: Vec<_> = pools
            .iter()
            .map(|((database, user), pool)| (format!("{database}/{user}"), pool.counts()))
            .collect();
        states.sort();
        states
    }
}
