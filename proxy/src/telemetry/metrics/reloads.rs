//! Reloads: certificates (with each presented certificate's expiry) and
//! the config (its hash, generation and when it was applied).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    kind: &'static str,
    name: String,
}

#[derive(Default)]
pub(super) struct Families {
    tls_reloads: Family<ReloadLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    config_info: Family<ConfigLabels, Gauge>,
    config_generation: Gauge,
    config_applied_at: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
}

impl Families {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_reloads",
            "Certificate reloads by result (error: rejected, previous material kept)",
            self.tls_reloads.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result (error: refused, the running config stays)",
            self.config_reloads.clone(),
        );
        registry.register(
            "config_info",
            "The active config; hash is its SHA-256; always 1",
            self.config_info.clone(),
        );
        registry.register(
            "config_generation",
            "The active config's generation: 1 at start, one more per applied reload",
            self.config_generation.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the active config was applied, Unix seconds",
            self.config_applied_at.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate a listener or upstream presents, Unix seconds",
            self.certificate_expiry.clone(),
        );
    }

    /// Certificate reload result counters.
    pub(super) fn reloads(&self) -> ReloadMetrics {
        ReloadMetrics::of(&self.tls_reloads)
    }

    /// Config reload result counters.
    pub(super) fn config_reloads(&self) -> ReloadMetrics {
        ReloadMetrics::of(&self.config_reloads)
    }

    /// Records that the config with SHA-256 `hash` is active as `generation`.
    pub(super) fn config_applied(&self, generation: u64, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_owned(),
            })
            .set(1);
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.config_applied_at
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The expiry gauge of the certificate `kind` (`listener` / `upstream`) `name` presents.
    pub(super) fn certificate_expiry(&self, kind: &'static str, name: &str) -> Gauge {
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                kind,
                name: name.to_owned(),
            })
            .clone()
    }
}

/// Reload result counters (certificates, the config).
pub(crate) struct ReloadMetrics {
    pub(crate) ok: Counter,
    pub(crate) error: Counter,
    /// A reload asked for (SIGHUP, a file event) found the content unchanged.
    pub(crate) unchanged: Counter,
}

impl ReloadMetrics {
    fn of(family: &Family<ReloadLabels, Counter>) -> Self {
        let counter = |result| family.get_or_create(&ReloadLabels { result }).clone();
        Self {
            ok: counter("ok"),
            error: counter("error"),
            unchanged: counter("unchanged"),
        }
    }
}
