//! Boot from a validated config, then run until shutdown: bind the admin
//! server and every listener, open the start-up latch, and on SIGTERM,
//! SIGINT or `POST /shutdown` drain and exit.
//!
//! Drain order: `/ready` turns 503 at once; after `drain.min_delay`
//! listeners stop accepting (those with `keep_accepting_while_draining` keep
//! taking loopback clients); the process exits as soon as the last client
//! connection closes, or when `drain.grace_period` (counted from the signal)
//! ends. A second signal exits at once. SIGHUP reloads certificates.

use std::sync::Arc;

use anyhow::Context as _;
use attache_config::{Config, RouteAction};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::admin::{self, AdminState};
use crate::http::{HttpProxy, HttpUpstream};
use crate::lifecycle::{Lifecycle, Phase};
use crate::listener::{Listener, Protocol};
use crate::redis::{RedisProxy, SentinelMaster, Target};
use crate::reload::TlsMaterial;
use crate::tcp::TcpRoute;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::Traces;
use crate::upstream::Upstream;
use opentelemetry_sdk::trace::Tracer;

/// Runs the proxy described by `config` until it has drained.
///
/// # Errors
/// When the admin address or a listen address cannot be bound, or signal
/// handlers cannot be installed; nothing is served then.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit(&config);
    let lifecycle = Arc::new(Lifecycle::new());
    let metrics = Arc::new(Metrics::new());
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;

    let upstreams_view = Arc::new(std::sync::OnceLock::new());
    if let Some(address) = config.admin.listen {
        let socket = TcpListener::bind(address)
            .await
            .with_context(|| format!("admin server cannot listen on {address}"))?;
        let bound = socket.local_addr()?;
        tracing::info!(address = %bound, shutdown_endpoint = config.admin.shutdown_endpoint, "admin server listening");
        let state = Arc::new(AdminState {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            shutdown_endpoint: config.admin.shutdown_endpoint,
            upstreams: upstreams_view.clone(),
        });
        tokio::spawn(admin::serve(socket, state));
    }

    let traces = Traces::start(&config.tracing)?;
    let tracer = traces.tracer();
    let material = Arc::new(TlsMaterial::load(&config, &metrics)?);
    tokio::spawn(material.clone().watch());
    let upstreams = build_upstreams(&config, &material, &metrics)?;
    metrics.collect_at_scrape(Box::new(crate::upstream::status::UpstreamStates {
        upstreams: upstreams.clone(),
    }));
    let _ = upstreams_view.set(upstreams.clone());
    let listeners = bind_listeners(&config, &upstreams, &material, &metrics, tracer.as_ref())?;
    // Health checks start and warm pools fill (bounded by the connect
    // timeout) before /startup reports success.
    let starting: Vec<_> = upstreams
        .iter()
        .map(|upstream| {
            let upstream = upstream.clone();
            tokio::spawn(async move { upstream.start().await })
        })
        .collect();
    for started in starting {
        started.await.context("starting an upstream")?;
    }
    for listener in listeners {
        tokio::spawn(listener.serve(lifecycle.clone()));
    }
    lifecycle.mark_started();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "attache started");

    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let reason = loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading certificates");
                material.reload();
            }
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            () = lifecycle.shutdown_requested() => break "POST /shutdown",
        }
    };
    let drain = &config.drain;
    let deadline = Instant::now() + drain.grace_period;
    lifecycle.set_phase(Phase::Draining);
    tracing::info!(
        reason,
        open_connections = lifecycle.open_connections(),
        min_delay_ms = drain.min_delay.as_millis() as u64,
        grace_period_ms = drain.grace_period.as_millis() as u64,
        "draining: not ready"
    );

    let drained = async {
        tokio::time::sleep(drain.min_delay).await;
        lifecycle.set_phase(Phase::Closing);
        tracing::info!(
            open_connections = lifecycle.open_connections(),
            "draining: listeners closed"
        );
        lifecycle.all_connections_closed().await;
    };
    tokio::select! {
        () = drained => tracing::info!("drained: all connections closed; exiting"),
        () = tokio::time::sleep_until(deadline) => tracing::warn!(
            open_connections = lifecycle.open_connections(),
            "grace period ended with connections open; exiting"
        ),
        _ = terminate.recv() => tracing::warn!("second SIGTERM: exiting now"),
        _ = interrupt.recv() => tracing::warn!("second SIGINT: exiting now"),
    }
    // Flushing blocks until the exporter (running on this runtime) is done.
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    Ok(())
}

/// Raises the soft open-file limit to the hard one (container runtimes may
/// leave it at 1024) and warns when it still cannot hold every listener's
/// `max_connections`: each proxied connection takes two descriptors.
fn raise_open_file_limit(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            return;
        }
    };
    // Listeners, the admin server, logs and the runtime need a few more.
    let needed: u64 = config
        .listeners
        .iter()
        .map(|listener| 2 * listener.max_connections as u64)
        .sum::<u64>()
        + 64;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below 2 x the sum of max_connections; accepts fail with EMFILE before max_connections is reached"
        );
    }
}

/// Builds every upstream, in config order; their warm pools start filling.
fn build_upstreams(
    config: &Config,
    material: &TlsMaterial,
    metrics: &Metrics,
) -> anyhow::Result<Vec<Arc<Upstream>>> {
    config
        .upstreams
        .iter()
        .map(|upstream| {
            Upstream::new(upstream, material.upstream(&upstream.name), metrics)
                .map(Arc::new)
                .with_context(|| format!("upstream {:?}: TLS server name", upstream.name))
        })
        .collect()
}

fn bind_listeners(
    config: &Config,
    upstreams: &[Arc<Upstream>],
    material: &TlsMaterial,
    metrics: &Arc<Metrics>,
    tracer: Option<&Tracer>,
) -> anyhow::Result<Vec<Listener>> {
    let find = |name: &str| {
        upstreams
            .iter()
            .find(|upstream| upstream.name() == name)
            .cloned()
            .with_context(|| format!("no upstream {name:?}"))
    };
    // One set of pooled clients and limits per upstream, shared by every
    // http listener that routes to it.
    let mut http_upstreams: Vec<Arc<HttpUpstream>> = Vec::new();
    for listener in &config.listeners {
        let Some(http) = &listener.http else { continue };
        let routed = http.routes.iter().filter_map(|route| match &route.action {
            RouteAction::Upstream(name) => Some(name),
            RouteAction::Direct { .. } => None,
        });
        for name in listener.upstream.iter().chain(routed) {
            if http_upstreams.iter().any(|known| known.name() == name) {
                continue;
            }
            let upstream_config = config
                .upstream(name)
                .with_context(|| format!("no upstream {name:?}"))?;
            http_upstreams.push(Arc::new(HttpUpstream::new(
                find(name)?,
                upstream_config,
                tracer.cloned(),
            )));
        }
    }
    config
        .listeners
        .iter()
        .map(|listener| {
            let tls = material.listener(&listener.name);
            let (handler, protocol) =
                match (&listener.http, &listener.redis) {
                    (_, Some(redis)) => {
                        let name = listener.upstream.as_deref().with_context(|| {
                            format!("listener {:?}: no upstream", listener.name)
                        })?;
                        let upstream = find(name)?;
                        let upstream_config = config
                            .upstream(name)
                            .with_context(|| format!("no upstream {name:?}"))?;
                        let target = match &upstream_config.sentinel {
                            Some(sentinel) => Target::Sentinel(SentinelMaster::start(
                                upstream,
                                upstream_config,
                                sentinel.master_name.clone(),
                                material.upstream(name),
                                metrics.clone(),
                            )),
                            None => Target::Fixed(upstream),
                        };
                        let proxy = RedisProxy::new(
                            listener,
                            redis,
                            Arc::new(target),
                            tls,
                            metrics,
                            tracer.cloned(),
                        );
                        (Arc::new(proxy) as Arc<dyn Protocol>, "redis")
                    }
                    (Some(http), None) => {
                        let proxy = HttpProxy::new(
                            listener,
                            http,
                            &http_upstreams,
                            tls,
                            metrics,
                            tracer.cloned(),
                        );
                        (Arc::new(proxy) as Arc<dyn Protocol>, "http")
                    }
                    (None, None) => {
                        let name = listener.upstream.as_deref().with_context(|| {
                            format!("listener {:?}: no upstream", listener.name)
                        })?;
                        let route = TcpRoute {
                            listener: listener.name.clone(),
                            upstream: find(name)?,
                            idle_timeout: listener.idle_timeout,
                            metrics: metrics.listener(&listener.name),
                            tls,
                            tracer: tracer.cloned(),
                        };
                        (Arc::new(route) as Arc<dyn Protocol>, "tcp")
                    }
                };
            let bound = Listener::bind(listener, handler)?;
            tracing::info!(
                listener = %listener.name,
                address = %bound.local_address(),
                protocol,
                tls = listener.tls.is_some(),
                upstream = listener.upstream.as_deref().unwrap_or(""),
                "listener bound"
            );
            Ok(bound)
        })
        .collect()
}
