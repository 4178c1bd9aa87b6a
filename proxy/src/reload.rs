//! Certificate reload. Every TLS listener and upstream reads its rustls
//! configuration from an [`ArcSwap`] on each handshake; SIGHUP or a change in
//! a directory holding its files (including Kubernetes' atomic `..data`
//! symlink swap) rebuilds them. A rebuild that fails (unreadable or corrupt
//! PEM, a key that does not match, a certificate not valid now) keeps the
//! material in service, is logged and is counted. Established connections
//! are never touched.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use attache_certs::tls::{self, Loaded, TlsError};
use attache_config::{Config, ListenerTls, UpstreamTls};
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use rustls::{ClientConfig, ServerConfig};

use crate::telemetry::metrics::{Metrics, ReloadMetrics};

/// A listener's server configuration, swapped on reload.
pub(crate) type SharedServerConfig = Arc<ArcSwap<ServerConfig>>;
/// An upstream's client configuration, swapped on reload.
pub(crate) type SharedClientConfig = Arc<ArcSwap<ClientConfig>>;

/// Changes arriving within this window after the first one are handled
/// together (a rotation writes several files).
const DEBOUNCE: Duration = Duration::from_millis(250);

struct Reloadable<Source, Rustls> {
    name: String,
    source: Source,
    current: Arc<ArcSwap<Rustls>>,
    expiry: Gauge,
    build: fn(&Source, &str) -> Result<Loaded<Rustls>, TlsError>,
}

impl<Source, Rustls> Reloadable<Source, Rustls> {
    fn load(
        name: &str,
        source: Source,
        expiry: Gauge,
        build: fn(&Source, &str) -> Result<Loaded<Rustls>, TlsError>,
    ) -> Result<Self, TlsError> {
        let loaded = build(&source, name)?;
        if let Some(expires_at) = loaded.expires_at {
            expiry.set(expires_at);
        }
        Ok(Self {
            name: name.to_owned(),
            source,
            current: Arc::new(ArcSwap::new(loaded.config)),
            expiry,
            build,
        })
    }

    /// Rebuilds; on failure the current configuration stays.
    fn reload(&self, kind: &str, metrics: &ReloadMetrics) {
        match (self.build)(&self.source, &self.name) {
            Ok(loaded) => {
                self.current.store(loaded.config);
                if let Some(expires_at) = loaded.expires_at {
                    self.expiry.set(expires_at);
                }
                metrics.ok.inc();
                tracing::info!(kind, name = %self.name, "TLS material reloaded");
            }
            Err(error) => {
                metrics.error.inc();
                tracing::error!(kind, name = %self.name, %error, "TLS reload rejected; the previous certificate stays in service");
            }
        }
    }
}

/// Every reloadable TLS configuration of the process.
pub(crate) struct TlsMaterial {
    listeners: Vec<Reloadable<ListenerTls, ServerConfig>>,
    upstreams: Vec<Reloadable<UpstreamTls, ClientConfig>>,
    directories: BTreeSet<PathBuf>,
    metrics: ReloadMetrics,
}

impl TlsMaterial {
    /// Loads every TLS section of `config`.
    ///
    /// # Errors
    /// When any of them cannot be built: attache does not start without its
    /// certificates.
    pub(crate) fn load(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let mut directories = BTreeSet::new();
        let mut watch = |path: &std::path::Path| {
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    parent
                };
                directories.insert(parent.to_path_buf());
            }
        };
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let Some(tls) = &listener.tls else { continue };
            [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
                .into_iter()
                .flatten()
                .for_each(|path| watch(path));
            let expiry = metrics.certificate_expiry("listener", &listener.name);
            listeners.push(
                Reloadable::load(&listener.name, tls.clone(), expiry, tls::server_config)
                    .with_context(|| format!("listener {:?}: TLS", listener.name))?,
            );
        }
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            let Some(tls) = &upstream.tls else { continue };
            [Some(&tls.ca), tls.cert.as_ref(), tls.key.as_ref()]
                .into_iter()
                .flatten()
                .for_each(|path| watch(path));
            let expiry = metrics.certificate_expiry("upstream", &upstream.name);
            upstreams.push(
                Reloadable::load(&upstream.name, tls.clone(), expiry, tls::client_config)
                    .with_context(|| format!("upstream {:?}: TLS", upstream.name))?,
            );
        }
        Ok(Self {
            listeners,
            upstreams,
            directories,
            metrics: metrics.reloads(),
        })
    }

    /// The swappable server configuration of TLS listener `name`.
    pub(crate) fn listener(&self, name: &str) -> Option<SharedServerConfig> {
        self.listeners
            .iter()
            .find(|item| item.name == name)
            .map(|item| item.current.clone())
    }

    /// The swappable client configuration of TLS upstream `name`.
    pub(crate) fn upstream(&self, name: &str) -> Option<SharedClientConfig> {
        self.upstreams
            .iter()
            .find(|item| item.name == name)
            .map(|item| item.current.clone())
    }

    /// Rebuilds everything; each failure keeps its previous configuration.
    pub(crate) fn reload(&self) {
        for listener in &self.listeners {
            listener.reload("listener", &self.metrics);
        }
        for upstream in &self.upstreams {
            upstream.reload("upstream", &self.metrics);
        }
    }

    /// Reloads whenever a watched directory changes, until the process exits.
    pub(crate) async fn watch(self: Arc<Self>) {
        if self.directories.is_empty() {
            return;
        }
        let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = changed.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch certificate files; reload with SIGHUP");
                return;
            }
        };
        for directory in &self.directories {
            if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
                tracing::warn!(directory = %directory.display(), %error, "cannot watch; reload with SIGHUP");
            }
        }
        while changes.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while changes.try_recv().is_ok() {}
            tracing::info!("certificate files changed; reloading");
            self.reload();
        }
    }
}
