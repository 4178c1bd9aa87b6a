//! A Postgres listener's pools: one per (database, server user), each
//! logging in as [`Login`] says (the shared pool room, [`crate::pooling`],
//! does the rest).

use std::num::NonZeroUsize;
use std::sync::Arc;

use super::server::Login;
use crate::pooling;
use crate::telemetry::metrics::PostgresMetrics;

pub(super) type Pool = pooling::Pool<Login>;
pub(super) type Lease = pooling::Lease<Login>;
pub(super) type PoolError = pooling::PoolError<super::server::ServerError>;

pub(super) struct Pools {
    upstream: Arc<crate::upstream::Upstream>,
    server_user: Option<String>,
    server_password: Option<String>,
    max_prepared_statements: NonZeroUsize,
    metrics: PostgresMetrics,
    pools: pooling::Pools<Login>,
}

impl Pools {
    pub(super) fn new(
        upstream: Arc<crate::upstream::Upstream>,
        settings: &attache_config::PostgresListener,
        metrics: PostgresMetrics,
    ) -> Self {
        Self {
            upstream,
            server_user: settings.pool.server_user.clone(),
            server_password: settings.pool.server_password.clone(),
            max_prepared_statements: NonZeroUsize::new(settings.pool.max_prepared_statements)
                .unwrap_or(NonZeroUsize::MIN),
            metrics,
            pools: pooling::Pools::new(pooling::Limits {
                size: settings.pool.pool_size,
                min_idle: settings.pool.min_idle,
                queue_timeout: settings.pool.queue_timeout,
                lifetime: settings.pool.server_lifetime,
                idle_timeout: settings.pool.server_idle_timeout,
            }),
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
        self.pools.pool(database, server_user, "", |name| {
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
                reported: std::sync::Mutex::new(None),
            };
            (login, self.metrics.pool.pool(name))
        })
    }

    /// Each pool's name (`database/user`) and its lent, idle and waiting counts.
    pub(super) fn states(&self) -> Vec<(String, (u32, usize, usize))> {
        self.pools.states()
    }
}
