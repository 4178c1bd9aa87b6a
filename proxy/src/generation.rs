//! A generation: everything built from one validated config, its TLS
//! material, upstreams and protocol handlers. Start-up builds the first; a
//! config reload builds the next beside the one in service and shares what
//! did not change: an upstream whose settings are equal keeps its breakers,
//! health, warm pools, pooled HTTP clients and Sentinel follower, and TLS
//! settings whose files are unchanged keep their session caches. Whatever
//! the new generation no longer uses is dropped when the last connection
//! holding it closes; background tasks (health checks, re-resolution,
//! Sentinel) stop then.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use attache_config::{Config, Listener as ListenerConfig, ListenerKind, RouteAction};
use opentelemetry_sdk::trace::Tracer;
use sha2::{Digest as _, Sha256};

use crate::http::{HttpProxy, HttpUpstream};
use crate::listener::{Protocol, Settings};
use crate::mysql::MysqlFront;
use crate::postgres::PostgresFront;
use crate::redis::{RedisProxy, SentinelMaster, Target};
use crate::reload::TlsMaterial;
use crate::tcp::TcpRoute;
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;
use crate::upstream::connector::StartTls;

/// One config and what was built from it.
pub(crate) struct Generation {
    /// 1 at start, one more per applied reload.
    pub(crate) number: u64,
    /// SHA-256 (hex) of the config file's bytes; of the config's JSON form
    /// for the one-liners, which have no file.
    pub(crate) hash: String,
    /// The config file, when there is one.
    pub(crate) source: Option<PathBuf>,
    pub(crate) config: Config,
    pub(crate) material: Arc<TlsMaterial>,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    http_upstreams: Vec<Arc<HttpUpstream>>,
    /// Each Redis listener's target, by the upstream it was made for.
    redis_targets: Vec<(Arc<Upstream>, Arc<Target>)>,
    /// One per listener, in the config's order.
    pub(crate) handlers: Vec<Arc<dyn Protocol>>,
    /// The Redis listeners' handlers, for their caches' state.
    redis_proxies: Vec<Arc<RedisProxy>>,
    /// The postgres listeners' handlers, for their pools' states.
    postgres_fronts: Vec<Arc<PostgresFront>>,
    /// The mysql listeners' handlers, for their pools' states.
    mysql_fronts: Vec<Arc<MysqlFront>>,
    /// Upstreams built for this generation (not shared with the previous
    /// one): their health checks and warm pools start with it.
    fresh: Vec<Arc<Upstream>>,
}

/// SHA-256 of `bytes`, in lowercase hex (what `sha256sum` prints).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Generation {
    /// Builds generation `number` from `config`, sharing what `previous`
    /// (the generation in service) built from equal settings.
    ///
    /// # Errors
    /// When a TLS file cannot be loaded or an endpoint's TLS server name is
    /// not valid; nothing of the new generation is in service then.
    pub(crate) fn build(
        number: u64,
        config: Config,
        hash: String,
        source: Option<PathBuf>,
        previous: Option<&Self>,
        metrics: &Arc<Metrics>,
        tracer: Option<&Tracer>,
    ) -> anyhow::Result<Self> {
        let material = Arc::new(TlsMaterial::load(
            &config,
            previous.map(|previous| &*previous.material),
            metrics,
        )?);
        let mut upstreams = Vec::new();
        let mut fresh = Vec::new();
        for settings in &config.upstreams {
            let kept = previous
                .and_then(|previous| previous.upstream_built_from(&config, settings, &material));
            let upstream = match kept {
                Some(kept) => kept,
                None => {
                    let start_tls = config
                        .postgres_start_tls(&settings.name)
                        .map(|mode| StartTls::Postgres {
                            required: mode == attache_config::ServerSslMode::Require,
                        })
                        .or_else(|| {
                            config
                                .mysql_start_tls(&settings.name)
                                .then_some(crate::mysql::START_TLS)
                        });
                    let built = Arc::new(
                        Upstream::new(
                            settings,
                            material.upstream(&settings.name),
                            start_tls,
                            metrics,
                        )
                        .with_context(|| {
                            format!("upstream {:?}: TLS server name", settings.name)
                        })?,
                    );
                    fresh.push(built.clone());
                    built
                }
            };
            upstreams.push(upstream);
        }
        let mut generation = Self {
            number,
            hash,
            source,
            material,
            upstreams,
            http_upstreams: Vec::new(),
            redis_targets: Vec::new(),
            handlers: Vec::new(),
            redis_proxies: Vec::new(),
            postgres_fronts: Vec::new(),
            mysql_fronts: Vec::new(),
            fresh,
            config,
        };
        let listeners = generation.config.listeners.clone();
        generation.handlers = listeners
            .iter()
            .map(|listener| generation.handler(listener, previous, metrics, tracer))
            .collect::<anyhow::Result<_>>()?;
        Ok(generation)
    }

    /// Starts what this generation built anew: health checks, and warm
    /// pools filling (bounded by each upstream's connect timeout).
    pub(crate) async fn start(&self) -> anyhow::Result<()> {
        let starting: Vec<_> = self
            .fresh
            .iter()
            .map(|upstream| {
                let upstream = upstream.clone();
                tokio::spawn(async move { upstream.start().await })
            })
            .collect();
        for started in starting {
            started.await.context("starting an upstream")?;
        }
        Ok(())
    }

    /// The previous generation's upstream for `settings`, when it was built
    /// from equal settings and its TLS material is the one `material` shares.
    fn upstream_built_from(
        &self,
        config: &attache_config::Config,
        settings: &attache_config::Upstream,
        material: &TlsMaterial,
    ) -> Option<Arc<Upstream>> {
        let index = self
            .config
            .upstreams
            .iter()
            .position(|old| old == settings)?;
        // TLS that a postgres or mysql listener starts in-band is part of
        // how it connects.
        if self.config.postgres_start_tls(&settings.name)
            != config.postgres_start_tls(&settings.name)
            || self.config.mysql_start_tls(&settings.name) != config.mysql_start_tls(&settings.name)
        {
            return None;
        }
        let same_tls = match (
            self.material.upstream(&settings.name),
            material.upstream(&settings.name),
        ) {
            (None, None) => true,
            (Some(old), Some(new)) => Arc::ptr_eq(&old, &new),
            _ => false,
        };
        same_tls.then(|| self.upstreams[index].clone())
    }

    fn upstream(&self, name: &str) -> anyhow::Result<Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|upstream| upstream.name() == name)
            .cloned()
            .with_context(|| format!("no upstream {name:?}"))
    }

    fn upstream_settings(&self, name: &str) -> anyhow::Result<&attache_config::Upstream> {
        self.config
            .upstream(name)
            .with_context(|| format!("no upstream {name:?}"))
    }

    fn handler(
        &mut self,
        listener: &ListenerConfig,
        previous: Option<&Self>,
        metrics: &Arc<Metrics>,
        tracer: Option<&Tracer>,
    ) -> anyhow::Result<Arc<dyn Protocol>> {
        let upstream_name = || {
            listener
                .upstream
                .as_deref()
                .with_context(|| format!("listener {:?}: no upstream", listener.name))
        };
        let tcp_route = |upstream| TcpRoute {
            listener: listener.name.clone(),
            upstream,
            idle_timeout: listener.idle_timeout,
            metrics: metrics.listener(&listener.name),
            tracer: tracer.cloned(),
        };
        Ok(match &listener.kind {
            ListenerKind::Tcp => Arc::new(tcp_route(self.upstream(upstream_name()?)?)),
            ListenerKind::Postgres(settings) => {
                let front = Arc::new(
                    PostgresFront::new(
                        tcp_route(self.upstream(upstream_name()?)?),
                        settings,
                        metrics.postgres(&listener.name),
                    )
                    .with_context(|| format!("listener {:?}", listener.name))?,
                );
                self.postgres_fronts.push(front.clone());
                front
            }
            ListenerKind::Mysql(settings) => {
                let front = Arc::new(
                    MysqlFront::new(
                        tcp_route(self.upstream(upstream_name()?)?),
                        settings,
                        metrics.mysql(&listener.name),
                    )
                    .with_context(|| format!("listener {:?}", listener.name))?,
                );
                self.mysql_fronts.push(front.clone());
                front
            }
            ListenerKind::Http(settings) => {
                let routed = settings
                    .routes
                    .iter()
                    .filter_map(|route| match &route.action {
                        RouteAction::Upstream(name) => Some(name),
                        RouteAction::Direct { .. } => None,
                    });
                for name in listener.upstream.iter().chain(routed) {
                    self.http_upstream(name, previous, tracer)?;
                }
                Arc::new(HttpProxy::new(
                    listener,
                    settings,
                    &self.http_upstreams,
                    metrics,
                    tracer.cloned(),
                ))
            }
            ListenerKind::Redis(settings) => {
                let target = self.redis_target(upstream_name()?, previous, metrics)?;
                let proxy = Arc::new(RedisProxy::new(
                    listener,
                    settings,
                    target,
                    metrics,
                    tracer.cloned(),
                ));
                self.redis_proxies.push(proxy.clone());
                proxy
            }
        })
    }

    /// The pooled clients and limits for upstream `name`, one set shared by
    /// every http listener routing to it (and with the previous generation
    /// while the upstream is shared).
    fn http_upstream(
        &mut self,
        name: &str,
        previous: Option<&Self>,
        tracer: Option<&Tracer>,
    ) -> anyhow::Result<()> {
        if self.http_upstreams.iter().any(|known| known.name() == name) {
            return Ok(());
        }
        let upstream = self.upstream(name)?;
        let kept = previous.and_then(|previous| {
            previous
                .http_upstreams
                .iter()
                .find(|old| Arc::ptr_eq(old.upstream(), &upstream))
                .cloned()
        });
        let http_upstream = match kept {
            Some(kept) => kept,
            None => Arc::new(HttpUpstream::new(
                upstream,
                self.upstream_settings(name)?,
                tracer.cloned(),
            )),
        };
        self.http_upstreams.push(http_upstream);
        Ok(())
    }

    /// Where a Redis listener's connections go: the upstream itself, or the
    /// master its Sentinels name (one follower per upstream).
    fn redis_target(
        &mut self,
        name: &str,
        previous: Option<&Self>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Arc<Target>> {
        let upstream = self.upstream(name)?;
        let known = self
            .redis_targets
            .iter()
            .chain(previous.iter().flat_map(|previous| &previous.redis_targets))
            .find(|(for_upstream, _)| Arc::ptr_eq(for_upstream, &upstream))
            .map(|(_, target)| target.clone());
        let target = match known {
            Some(known) => known,
            None => {
                let settings = self.upstream_settings(name)?;
                Arc::new(match &settings.sentinel {
                    Some(sentinel) => SentinelMaster::start(
                        upstream.clone(),
                        settings,
                        sentinel.master_name.clone(),
                        self.material.upstream(name),
                        metrics.clone(),
                    ),
                    None => Target::Fixed(upstream.clone()),
                })
            }
        };
        if !self
            .redis_targets
            .iter()
            .any(|(_, known)| Arc::ptr_eq(known, &target))
        {
            self.redis_targets.push((upstream, target.clone()));
        }
        Ok(target)
    }

    /// What listener `index` (in the config's order) does with its
    /// connections in this generation.
    pub(crate) fn listener_settings(&self, index: usize) -> Settings {
        let listener = &self.config.listeners[index];
        Settings::new(
            listener,
            self.material.listener(&listener.name),
            self.handlers[index].clone(),
        )
    }

    /// Each Redis cache's state, for `/cache`.
    pub(crate) fn caches(&self) -> Vec<serde_json::Value> {
        self.redis_proxies
            .iter()
            .filter_map(|proxy| proxy.cache())
            .map(|cache| cache.status())
            .collect()
    }

    /// Each Postgres pool's state, for `/upstreams`.
    pub(crate) fn postgres_pools(&self) -> Vec<serde_json::Value> {
        self.postgres_fronts
            .iter()
            .flat_map(|front| front.pool_states())
            .collect()
    }

    /// Each MySQL pool's state, for `/upstreams`.
    pub(crate) fn mysql_pools(&self) -> Vec<serde_json::Value> {
        self.mysql_fronts
            .iter()
            .flat_map(|front| front.pool_states())
            .collect()
    }

    /// The active config as JSON for the admin port: secrets redacted.
    pub(crate) fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "generation": self.number,
            "sha256": self.hash,
            "source": self.source.as_ref().map(|path| path.display().to_string()),
            "config": self.config,
        })
    }
}
