//! Certificate reload, and the file watching the config reload shares.
//! Every TLS listener and upstream reads its rustls
//! configuration from an [`ArcSwap`] on each handshake; SIGHUP or a change in
//! a directory holding its files (including Kubernetes' atomic `..data`
//! symlink swap) rebuilds them. Only events that can change content count
//! (not reads: `cat tls.crt`, or an app reading the same Secret), and only
//! files whose content changed are rebuilt, so an unchanged configuration
//! keeps its session tickets and resumption cache. A rebuild that fails
//! (unreadable or corrupt PEM, a key that does not match, a certificate not
//! valid now) keeps the material in service, is logged and is counted.
//! Established connections are never touched.

use std::collections::BTreeSet;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use attache_certs::tls::{self, Loaded, TlsError};
use attache_config::{Config, ListenerTls, UpstreamTls};
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::mpsc;

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
    /// The files the configuration is built from.
    files: Vec<PathBuf>,
    /// Their content when the configuration in service was built.
    fingerprint: Mutex<Option<u64>>,
    current: Arc<ArcSwap<Rustls>>,
    expiry: Gauge,
    build: fn(&Source, &str) -> Result<Loaded<Rustls>, TlsError>,
}

/// A hash of the files' content (`None` when one cannot be read: the
/// rebuild then reports why).
fn fingerprint(files: &[PathBuf]) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        std::fs::read(file).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

impl<Source, Rustls> Reloadable<Source, Rustls> {
    fn load(
        name: &str,
        source: Source,
        files: Vec<PathBuf>,
        expiry: Gauge,
        build: fn(&Source, &str) -> Result<Loaded<Rustls>, TlsError>,
    ) -> Result<Self, TlsError> {
        // Read before the build: a file replaced in between makes the next
        // event rebuild again, never leaves a stale configuration.
        let fingerprint = fingerprint(&files);
        let loaded = build(&source, name)?;
        if let Some(expires_at) = loaded.expires_at {
            expiry.set(expires_at);
        }
        Ok(Self {
            name: name.to_owned(),
            source,
            files,
            fingerprint: Mutex::new(fingerprint),
            current: Arc::new(ArcSwap::new(loaded.config)),
            expiry,
            build,
        })
    }

    /// Rebuilds when the files' content changed; on failure the current
    /// configuration stays.
    fn reload(&self, kind: &str, metrics: &ReloadMetrics) {
        let now = fingerprint(&self.files);
        let mut in_service = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now.is_some() && now == *in_service {
            metrics.unchanged.inc();
            tracing::debug!(kind, name = %self.name, "TLS files unchanged; nothing reloaded");
            return;
        }
        match (self.build)(&self.source, &self.name) {
            Ok(loaded) => {
                *in_service = now;
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

/// The entry of `kind` `name` (a listener's or an upstream's TLS): the one
/// in service when `previous` holds it unchanged, else loaded from `files`.
fn entry<Source: Clone + PartialEq, Rustls>(
    previous: Option<&[Arc<Reloadable<Source, Rustls>>]>,
    (kind, name): (&'static str, &str),
    source: &Source,
    files: Vec<PathBuf>,
    metrics: &Metrics,
    build: fn(&Source, &str) -> Result<Loaded<Rustls>, TlsError>,
) -> anyhow::Result<Arc<Reloadable<Source, Rustls>>> {
    if let Some(kept) = previous.and_then(|previous| reusable(previous, name, source)) {
        return Ok(kept);
    }
    let expiry = metrics.certificate_expiry(kind, name);
    Reloadable::load(name, source.clone(), files, expiry, build)
        .map(Arc::new)
        .map_err(|error| owned_by(error, kind, name))
}

/// `error` naming its listener or upstream once: the TLS errors that know
/// whose material they are already say so.
fn owned_by(error: TlsError, kind: &str, name: &str) -> anyhow::Error {
    let owner = format!("{kind} {name:?}");
    if error.to_string().starts_with(&owner) {
        error.into()
    } else {
        anyhow::Error::new(error).context(format!("{owner}: TLS"))
    }
}

/// The entry `name` of `entries` when it was built from the same settings
/// and its files still hold what it was built from.
fn reusable<Source: PartialEq, Rustls>(
    entries: &[Arc<Reloadable<Source, Rustls>>],
    name: &str,
    source: &Source,
) -> Option<Arc<Reloadable<Source, Rustls>>> {
    let entry = entries
        .iter()
        .find(|entry| entry.name == name && entry.source == *source)?;
    let in_service = *entry
        .fingerprint
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    (in_service.is_some() && fingerprint(&entry.files) == in_service).then(|| entry.clone())
}

/// Every reloadable TLS configuration of the process.
pub(crate) struct TlsMaterial {
    listeners: Vec<Arc<Reloadable<ListenerTls, ServerConfig>>>,
    upstreams: Vec<Arc<Reloadable<UpstreamTls, ClientConfig>>>,
    directories: BTreeSet<PathBuf>,
    metrics: ReloadMetrics,
}

impl TlsMaterial {
    /// Loads every TLS section of `config`. A section that `previous` (the
    /// material in service, on a config reload) holds with the same
    /// settings and unchanged files is shared, not rebuilt, so its sessions
    /// keep resuming.
    ///
    /// # Errors
    /// When any of them cannot be built: attache does not start without its
    /// certificates, and a reload does not apply.
    pub(crate) fn load(
        config: &Config,
        previous: Option<&Self>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let mut directories = BTreeSet::new();
        let mut watch = |path: &std::path::Path| {
            directories.insert(directory_of(path));
        };
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let Some(tls) = &listener.tls else { continue };
            let files = [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()];
            let files: Vec<PathBuf> = files.into_iter().flatten().cloned().collect();
            files.iter().for_each(|path| watch(path));
            listeners.push(entry(
                previous.map(|previous| &previous.listeners[..]),
                ("listener", &listener.name),
                tls,
                files,
                metrics,
                tls::server_config,
            )?);
        }
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            let Some(tls) = &upstream.tls else { continue };
            let files = [Some(&tls.ca), tls.cert.as_ref(), tls.key.as_ref()];
            let files: Vec<PathBuf> = files.into_iter().flatten().cloned().collect();
            files.iter().for_each(|path| watch(path));
            upstreams.push(entry(
                previous.map(|previous| &previous.upstreams[..]),
                ("upstream", &upstream.name),
                tls,
                files,
                metrics,
                tls::client_config,
            )?);
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

    /// Rebuilds whatever changed; each failure keeps its previous configuration.
    pub(crate) fn reload(&self) {
        for listener in &self.listeners {
            listener.reload("listener", &self.metrics);
        }
        for upstream in &self.upstreams {
            upstream.reload("upstream", &self.metrics);
        }
    }

    /// Reloads whenever a watched directory changes, until the task is
    /// aborted (a config reload brought other material) or the process exits.
    pub(crate) async fn watch(self: Arc<Self>) {
        let Some(mut changes) = watch_directories(self.directories.iter().cloned(), "certificate")
        else {
            return;
        };
        while changes.recv().await.is_some() {
            tracing::info!("certificate files changed; reloading");
            self.reload();
        }
    }
}

/// A receiver that gets one message per burst of changes (debounced) in any
/// of `directories`; `None` when there is nothing to watch or watching is
/// not possible (then only SIGHUP reloads, and a warning says so). The
/// watch ends when the receiver is dropped.
pub(crate) fn watch_directories(
    directories: impl IntoIterator<Item = PathBuf>,
    what: &'static str,
) -> Option<mpsc::Receiver<()>> {
    let directories: Vec<PathBuf> = directories.into_iter().collect();
    if directories.is_empty() {
        return None;
    }
    let (changed, mut changes) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| may_change_content(event.kind)) {
            let _ = changed.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch {what} files; reload with SIGHUP");
            return None;
        }
    };
    for directory in &directories {
        if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %directory.display(), %error, "cannot watch {what} files; reload with SIGHUP");
        }
    }
    let (debounced, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while changes.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while changes.try_recv().is_ok() {}
            if debounced.send(()).await.is_err() {
                break;
            }
        }
    });
    Some(receiver)
}

/// The directory holding `path` (watched rather than the file: editors and
/// Kubernetes replace files by renaming).
pub(crate) fn directory_of(path: &std::path::Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether a file event can mean new content: a create, a write that was
/// closed, a rename (the `..data` swap), a removal. Reads (open, access,
/// close without writing) never can, and attache's own reads of the files
/// would otherwise start the next reload, forever.
fn may_change_content(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

    #[test]
    fn reads_never_trigger_a_reload_and_writes_renames_and_creates_do() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!may_change_content(read), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(may_change_content(change), "{change:?}");
        }
    }
}
