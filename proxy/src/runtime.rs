//! Boot from a validated config, then run until shutdown: bind the admin
//! server and every listener, open the start-up latch, and on SIGTERM,
//! SIGINT or `POST /shutdown` drain and exit.
//!
//! Drain order: `/ready` turns 503 at once; after `drain.min_delay`
//! listeners stop accepting (those with `keep_accepting_while_draining` keep
//! taking loopback clients); the process exits as soon as the last client
//! connection closes, or when `drain.grace_period` (counted from the signal)
//! ends. A second signal exits at once.
//!
//! Reload: SIGHUP or a change to the config file (its directory is watched,
//! so a ConfigMap's `..data` swap counts) reads the file again. A file that
//! is unchanged, unreadable or invalid in any way (the problems `attache
//! check` prints, a TLS file that does not load, an address that cannot be
//! bound) changes nothing. A valid one becomes the next [`Generation`]:
//! listeners at the same address keep their socket and give new
//! connections the new settings, new ones bind, removed ones stop accepting
//! and their connections finish as in a drain; open connections keep what
//! they started with. `admin`, `log` and `tracing` need a restart. SIGHUP
//! also reloads certificates whose files changed.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::{ArcSwap, ArcSwapOption};
use attache_config::Config;
use opentelemetry_sdk::trace::Tracer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::admin::{self, AdminState};
use crate::generation::{Generation, sha256_hex};
use crate::lifecycle::{Lifecycle, Phase};
use crate::listener::{Listener, ListenerControl};
use crate::telemetry::metrics::{Metrics, ReloadMetrics};
use crate::telemetry::traces::Traces;
use crate::upstream::Upstream;

/// Where the config came from, when it came from a file: the runtime
/// reloads it from there.
pub(crate) struct ConfigFile {
    pub(crate) path: PathBuf,
    /// The file's bytes as they were when `config` was parsed from them.
    pub(crate) text: String,
    /// Command-line settings that override the file's (`--admin`), applied
    /// to every reload too.
    pub(crate) adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// Runs the proxy described by `config` until it has drained; reloads it
/// from `file`, when there is one, on SIGHUP and when the file changes.
///
/// # Errors
/// When the admin address or a listen address cannot be bound, or signal
/// handlers cannot be installed; nothing is served then.
pub(crate) async fn run(config: Config, file: Option<ConfigFile>) -> anyhow::Result<()> {
    raise_open_file_limit(&config);
    let lifecycle = Arc::new(Lifecycle::new());
    let metrics = Arc::new(Metrics::new());
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;

    let active = Arc::new(ArcSwapOption::empty());
    let listening = Arc::new(ArcSwap::from_pointee(admin::Bound::new()));
    if let Some(address) = config.admin.listen {
        let socket = TcpListener::bind(address).await.map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
                " (another attache's admin port? `--admin 127.0.0.1:0` picks a free port, `--admin off` runs without one)"
            } else {
                ""
            };
            anyhow::anyhow!("admin server cannot listen on {address}: {error}{hint}")
        })?;
        let bound = socket.local_addr()?;
        tracing::info!(address = %bound, shutdown_endpoint = config.admin.shutdown_endpoint, "admin server listening");
        let state = Arc::new(AdminState {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            shutdown_endpoint: config.admin.shutdown_endpoint,
            active: active.clone(),
            bound: listening.clone(),
            rates: admin::Rates::default(),
        });
        tokio::spawn(admin::serve(socket, state));
    }

    let traces = Traces::start(&config.tracing)?;
    let tracer = traces.tracer();
    let hash = match &file {
        Some(file) => sha256_hex(file.text.as_bytes()),
        None => sha256_hex(&serde_json::to_vec(&config).unwrap_or_default()),
    };
    let source = file.as_ref().map(|file| file.path.clone());
    let generation = Generation::build(1, config, hash, source, None, &metrics, tracer.as_ref())?;
    let upstream_states = Arc::new(ArcSwap::from_pointee(generation.upstreams.clone()));
    metrics.collect_at_scrape(Box::new(crate::upstream::status::UpstreamStates {
        upstreams: upstream_states.clone(),
    }));
    let mut listeners = Vec::new();
    let mut controls = Vec::new();
    for (index, listener) in generation.config.listeners.iter().enumerate() {
        let (bound, control) = Listener::bind(listener, generation.listener_settings(index))?;
        log_bound(listener, &control);
        listeners.push(bound);
        controls.push(control);
    }
    // Health checks start and warm pools fill (bounded by the connect
    // timeout) before /startup reports success.
    generation.start().await?;
    for listener in listeners {
        tokio::spawn(listener.serve(lifecycle.clone()));
    }
    let mut running = Running {
        material_watch: tokio::spawn(generation.material.clone().watch()),
        generation: Arc::new(generation),
        controls,
        upstream_states,
        active,
        bound: listening,
        metrics: metrics.clone(),
        reloads: metrics.config_reloads(),
        lifecycle: lifecycle.clone(),
        tracer,
    };
    running.publish();
    lifecycle.mark_started();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "attache started");

    let mut config_changes = file.as_ref().and_then(|file| {
        crate::reload::watch_directories([crate::reload::directory_of(&file.path)], "config")
    });
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let reason = loop {
        tokio::select! {
            _ = hangup.recv() => {
                match &file {
                    Some(file) => {
                        tracing::info!("SIGHUP: reloading the config and certificates");
                        running.reload(file).await;
                    }
                    None => tracing::info!("SIGHUP: reloading certificates"),
                }
                running.generation.material.reload();
            }
            Some(()) = recv(&mut config_changes) => {
                if let Some(file) = &file {
                    running.reload(file).await;
                }
            }
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            () = lifecycle.shutdown_requested() => break "POST /shutdown",
        }
    };
    let drain = running.generation.config.drain.clone();
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

/// The next message of an optional receiver; never resolves without one.
async fn recv(changes: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

fn log_bound(listener: &attache_config::Listener, control: &ListenerControl) {
    tracing::info!(
        listener = %listener.name,
        address = %control.local_address,
        protocol = listener.protocol().as_str(),
        tls = listener.tls.is_some(),
        upstream = listener.upstream.as_deref().unwrap_or(""),
        "listener bound"
    );
}

/// The generation in service and the listeners serving it.
struct Running {
    generation: Arc<Generation>,
    controls: Vec<ListenerControl>,
    material_watch: tokio::task::JoinHandle<()>,
    upstream_states: Arc<ArcSwap<Vec<Arc<Upstream>>>>,
    /// What the admin port shows.
    active: Arc<ArcSwapOption<Generation>>,
    bound: Arc<ArcSwap<admin::Bound>>,
    metrics: Arc<Metrics>,
    reloads: ReloadMetrics,
    lifecycle: Arc<Lifecycle>,
    tracer: Option<Tracer>,
}

impl Running {
    /// Makes the generation in service visible: admin port, metrics.
    fn publish(&self) {
        self.upstream_states
            .store(Arc::new(self.generation.upstreams.clone()));
        self.active.store(Some(self.generation.clone()));
        self.bound.store(Arc::new(
            self.controls
                .iter()
                .map(|control| (control.name(), control.local_address))
                .collect(),
        ));
        self.metrics
            .config_applied(self.generation.number, &self.generation.hash);
    }

    /// Reads `file` again and, when it changed and is valid in full,
    /// applies it; otherwise the running config stays and the problems are
    /// logged and counted.
    async fn reload(&mut self, file: &ConfigFile) {
        match self.try_reload(file).await {
            Ok(Applied::Unchanged) => {
                self.reloads.unchanged.inc();
                tracing::debug!(path = %file.path.display(), "config file unchanged; nothing reloaded");
            }
            Ok(Applied::New(summary)) => {
                self.reloads.ok.inc();
                tracing::info!(
                    path = %file.path.display(),
                    generation = self.generation.number,
                    sha256 = %self.generation.hash,
                    listeners_added = summary.added,
                    listeners_updated = summary.updated,
                    listeners_removed = summary.removed,
                    upstreams_rebuilt = summary.upstreams_rebuilt,
                    "config reloaded"
                );
            }
            Err(error) => {
                self.reloads.error.inc();
                tracing::error!(path = %file.path.display(), error = %format!("{error:#}"), "config reload refused; the running config stays");
            }
        }
    }

    async fn try_reload(&mut self, file: &ConfigFile) -> anyhow::Result<Applied> {
        let text = attache_config::read(&file.path)?;
        let hash = sha256_hex(text.as_bytes());
        if hash == self.generation.hash {
            return Ok(Applied::Unchanged);
        }
        let mut config = attache_config::parse_with_process_env(&text, &file.path)?;
        (file.adjust)(&mut config);
        self.keep_restart_only_sections(&mut config);
        raise_open_file_limit(&config);
        let previous = &self.generation;
        let next = Generation::build(
            previous.number + 1,
            config,
            hash,
            Some(file.path.clone()),
            Some(previous),
            &self.metrics,
            self.tracer.as_ref(),
        )?;
        // Each listener of the new config keeps the running socket at its
        // address, or gets a new one, bound before anything changes: a
        // taken address refuses the whole reload.
        let mut kept = vec![false; self.controls.len()];
        let mut places = Vec::new();
        for (index, listener) in next.config.listeners.iter().enumerate() {
            let running = (0..self.controls.len())
                .find(|&old| !kept[old] && self.controls[old].configured == listener.listen);
            places.push(match running {
                Some(old) => {
                    kept[old] = true;
                    Place::Running(old)
                }
                None => Place::New(Listener::bind(listener, next.listener_settings(index))?),
            });
        }
        next.start().await?;

        // Apply: nothing below fails.
        let upstreams_rebuilt = next
            .upstreams
            .iter()
            .filter(|upstream| {
                !previous
                    .upstreams
                    .iter()
                    .any(|old| Arc::ptr_eq(old, upstream))
            })
            .count();
        let mut old_controls: Vec<Option<ListenerControl>> = std::mem::take(&mut self.controls)
            .into_iter()
            .map(Some)
            .collect();
        let mut summary = Summary {
            upstreams_rebuilt,
            ..Summary::default()
        };
        for (index, (place, listener)) in places.into_iter().zip(&next.config.listeners).enumerate()
        {
            let control = match place {
                Place::Running(old) => {
                    let Some(control) = old_controls[old].take() else {
                        continue;
                    };
                    control.update(next.listener_settings(index));
                    summary.updated += 1;
                    control
                }
                Place::New((socket, control)) => {
                    log_bound(listener, &control);
                    tokio::spawn(socket.serve(self.lifecycle.clone()));
                    summary.added += 1;
                    control
                }
            };
            self.controls.push(control);
        }
        for control in old_controls.into_iter().flatten() {
            tracing::info!(listener = %control.name(), address = %control.local_address, "listener removed by the config; it stops accepting and its connections finish");
            control.retire();
            summary.removed += 1;
        }
        self.material_watch.abort();
        self.material_watch = tokio::spawn(next.material.clone().watch());
        self.generation = Arc::new(next);
        self.publish();
        Ok(Applied::New(summary))
    }

    /// The admin server, logging and trace export are set up once, at
    /// start: a reload that changes them says so and keeps the running ones.
    fn keep_restart_only_sections(&self, config: &mut Config) {
        let running = &self.generation.config;
        if config.admin != running.admin {
            tracing::warn!("config reload: `admin` changed; it takes effect at the next restart");
            config.admin = running.admin.clone();
        }
        if config.log != running.log {
            tracing::warn!("config reload: `log` changed; it takes effect at the next restart");
            config.log = running.log.clone();
        }
        if config.tracing != running.tracing {
            tracing::warn!("config reload: `tracing` changed; it takes effect at the next restart");
            config.tracing = running.tracing.clone();
        }
    }
}

/// Where a listener of a new config serves from.
enum Place {
    /// The running listener with this index, at the same address.
    Running(usize),
    /// A socket bound for it.
    New((Listener, ListenerControl)),
}

enum Applied {
    Unchanged,
    New(Summary),
}

#[derive(Default)]
struct Summary {
    added: usize,
    updated: usize,
    removed: usize,
    upstreams_rebuilt: usize,
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
