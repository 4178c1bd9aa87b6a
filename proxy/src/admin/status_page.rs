//! `GET /` on the admin port: one self-contained HTML page (no external
//! assets, no script) with what HAProxy's stats page shows its users:
//! listeners, upstreams and each endpoint, TLS certificates with the days
//! they have left, the config generation and hash, and the drain state.
//! It reloads itself every few seconds. Everything on it comes from the
//! same state as `/upstreams`, `/config` and `/metrics`.

use std::fmt::Write as _;
use std::path::Path;

use crate::generation::Generation;
use crate::lifecycle::{Lifecycle, Phase};
use crate::upstream::status::UpstreamStatus;

/// How often the page reloads itself.
const REFRESH_SECONDS: u32 = 5;

/// A listener's bound address, by name.
pub(crate) type Bound = Vec<(String, std::net::SocketAddr)>;

/// Each listener's accepted-connection count when the page was last
/// rendered, for its rate: connections per second since then (whoever
/// looked). Renders less than a second apart keep the previous rate.
#[derive(Default)]
pub(crate) struct Rates(std::sync::Mutex<std::collections::HashMap<String, Sample>>);

#[derive(Clone, Copy)]
struct Sample {
    at: tokio::time::Instant,
    accepted: u64,
    rate: Option<f64>,
}

impl Rates {
    /// The rate of `listener` now that it has accepted `accepted`.
    fn update(&self, listener: &str, accepted: u64) -> Option<f64> {
        let now = tokio::time::Instant::now();
        let mut samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sample = samples.entry(listener.to_owned()).or_insert(Sample {
            at: now,
            accepted,
            rate: None,
        });
        let elapsed = now.duration_since(sample.at).as_secs_f64();
        if elapsed >= 1.0 {
            let rate = accepted.saturating_sub(sample.accepted) as f64 / elapsed;
            *sample = Sample {
                at: now,
                accepted,
                rate: Some(rate),
            };
        }
        sample.rate
    }
}

/// Renders the page.
pub(super) fn render(
    lifecycle: &Lifecycle,
    generation: &Generation,
    bound: &Bound,
    rates: &Rates,
) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let state = match (lifecycle.is_started(), lifecycle.phase()) {
        (false, _) => ("starting", "warn"),
        (true, Phase::Serving) => ("serving", "ok"),
        (true, Phase::Draining) => ("draining", "warn"),
        (true, Phase::Closing) => ("closing", "bad"),
    };
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>attache status</title><style>{STYLE}</style></head><body>\
         <h1>attache <small>{version}</small></h1>\
         <p class=\"summary\">State <span class=\"{class}\" id=\"state\">{label}</span> · \
         config generation <b id=\"generation\">{generation}</b> · sha256 <code id=\"hash\">{hash}</code>{source}</p>",
        version = env!("CARGO_PKG_VERSION"),
        class = state.1,
        label = state.0,
        generation = generation.number,
        hash = escape(&generation.hash),
        source = generation
            .source
            .as_ref()
            .map(|path| format!(" · <code>{}</code>", escape(&path.display().to_string())))
            .unwrap_or_default(),
    );
    listeners(&mut page, generation, bound, rates);
    upstreams(&mut page, generation);
    certificates(&mut page, generation);
    let _ = write!(
        page,
        "<p class=\"foot\">Reloads every {REFRESH_SECONDS} s. JSON: <a href=\"/upstreams\">/upstreams</a> \
         <a href=\"/config\">/config</a> · <a href=\"/metrics\">/metrics</a></p></body></html>"
    );
    page
}

fn listeners(page: &mut String, generation: &Generation, bound: &Bound, rates: &Rates) {
    page.push_str(
        "<h2>Listeners</h2><table id=\"listeners\"><tr><th>listener</th><th>protocol</th>\
         <th>address</th><th>open</th><th>accepted</th><th>new /s</th><th>refused</th><th>TLS</th><th>upstream</th></tr>",
    );
    for (listener, handler) in generation.config.listeners.iter().zip(&generation.handlers) {
        let metrics = handler.metrics();
        let refused = [
            &metrics.refused_max_connections,
            &metrics.refused_draining,
            &metrics.refused_proxy_protocol,
            &metrics.refused_local_resources,
        ]
        .iter()
        .map(|counter| counter.get())
        .sum::<u64>();
        let address = bound
            .iter()
            .find(|(name, _)| *name == listener.name)
            .map_or(listener.listen, |(_, address)| *address);
        let accepted = metrics.opened.get();
        let rate = rates
            .update(&listener.name, accepted)
            .map_or_else(|| "—".to_owned(), |rate| format!("{rate:.1}"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td><code>{address}</code></td><td>{}</td><td>{accepted}</td>\
             <td class=\"rate\">{rate}</td><td>{refused}</td><td>{}</td><td>{}</td></tr>",
            escape(&listener.name),
            listener.protocol().as_str(),
            metrics.active.get(),
            if listener.tls.is_some() { "yes" } else { "no" },
            escape(listener.upstream.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table>");
}

fn upstreams(page: &mut String, generation: &Generation) {
    page.push_str("<h2>Upstreams</h2>");
    for upstream in &generation.upstreams {
        let UpstreamStatus {
            name,
            active,
            pending,
            endpoints,
        } = upstream.status();
        let _ = write!(
            page,
            "<h3>{name}</h3><p>{active} connection slots held, {pending} clients queued</p>\
             <table class=\"upstream\" data-upstream=\"{name}\"><tr><th>endpoint</th><th>health</th>\
             <th>breaker</th><th>in flight</th><th>warm pool</th></tr>",
            name = escape(&name),
        );
        for endpoint in endpoints {
            let health_class = match endpoint.health {
                "healthy" => "ok",
                "unhealthy" => "bad",
                _ => "",
            };
            let breaker_class = if endpoint.breaker == "closed" {
                "ok"
            } else {
                "bad"
            };
            let pool = endpoint.warm_pool.map_or_else(
                || "none".to_owned(),
                |pool| format!("{} of {} idle", pool.idle, pool.size),
            );
            let _ = write!(
                page,
                "<tr><td><code>{}</code></td><td class=\"{health_class}\">{}</td>\
                 <td class=\"{breaker_class}\">{}</td><td>{}</td><td>{pool}</td></tr>",
                escape(&endpoint.address),
                endpoint.health,
                endpoint.breaker,
                endpoint.active,
            );
        }
        page.push_str("</table>");
    }
}

fn certificates(page: &mut String, generation: &Generation) {
    let config = &generation.config;
    let listener_certificates = config.listeners.iter().filter_map(|listener| {
        let tls = listener.tls.as_ref()?;
        Some((format!("listener {}", listener.name), tls.cert.as_path()))
    });
    let upstream_certificates = config.upstreams.iter().filter_map(|upstream| {
        let cert = upstream.tls.as_ref()?.cert.as_ref()?;
        Some((
            format!("upstream {} (client)", upstream.name),
            cert.as_path(),
        ))
    });
    let rows: Vec<(String, &Path)> = listener_certificates.chain(upstream_certificates).collect();
    if rows.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Certificates</h2><table id=\"certificates\"><tr><th>presented by</th><th>subject</th>\
         <th>names</th><th>expires</th><th>days left</th></tr>",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    for (owner, path) in rows {
        match attache_certs::tls::summarize(path) {
            Ok(summary) => {
                let days = (summary.not_after - now).div_euclid(86_400);
                let class = match days {
                    ..0 => "bad",
                    0..7 => "warn",
                    _ => "ok",
                };
                let expires = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(summary.not_after.max(0) as u64);
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{days}</td></tr>",
                    escape(&owner),
                    escape(&summary.subject),
                    escape(&summary.identity.to_string()),
                    humantime::format_rfc3339_seconds(expires),
                );
            }
            Err(error) => {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td colspan=\"4\" class=\"bad\">{}</td></tr>",
                    escape(&owner),
                    escape(&error.to_string()),
                );
            }
        }
    }
    page.push_str("</table>");
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1 small{font-size:55%;color:#777}h3{margin:1em 0 .2em}\
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f2f2f2}.ok{color:#176f2c;font-weight:600}.bad{color:#b00020;font-weight:600}\
.warn{color:#a15c00;font-weight:600}code{font-size:90%}.foot{color:#777}";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn rates_are_connections_per_second_since_the_last_render() {
        let rates = super::Rates::default();
        assert_eq!(rates.update("front", 0), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(rates.update("front", 10), Some(5.0));
        // Less than a second later: the rate stands.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(rates.update("front", 20), Some(5.0));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(rates.update("front", 30), Some(10.0));
        assert_eq!(rates.update("other", 7), None);
    }

    #[test]
    fn text_cannot_open_markup() {
        assert_eq!(
            super::escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }
}
