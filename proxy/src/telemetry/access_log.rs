//! The HTTP access log: one JSON line per request on stdout (logs stay on
//! stderr), written when the response body has ended, with sensitive
//! header values and query parameters redacted.

use std::collections::HashSet;

use http::HeaderMap;
use serde::Serialize;

use super::output::Stream;

const REDACTED: &str = "[redacted]";

/// What to redact, from `access_log` in the listener's `http` section.
pub(crate) struct AccessLog {
    enabled: bool,
    /// `None`: every request header is logged.
    logged_headers: Option<HashSet<String>>,
    redact_headers: HashSet<String>,
    redact_query: HashSet<String>,
}

/// One request's line.
#[derive(Serialize)]
pub(crate) struct Entry {
    /// When the request's headers arrived, RFC 3339 in UTC.
    pub(crate) timestamp: String,
    pub(crate) listener: String,
    pub(crate) route: String,
    pub(crate) request_id: String,
    pub(crate) client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer: Option<String>,
    pub(crate) method: String,
    pub(crate) authority: String,
    pub(crate) path: String,
    pub(crate) protocol: &'static str,
    pub(crate) request_headers: serde_json::Map<String, serde_json::Value>,
    pub(crate) status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) retries: u32,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) duration_ms: f64,
    pub(crate) complete: bool,
}

impl AccessLog {
    pub(crate) fn new(config: &attache_config::AccessLog) -> Self {
        Self {
            enabled: config.enabled,
            logged_headers: config
                .headers
                .as_ref()
                .map(|names| names.iter().cloned().collect()),
            redact_headers: config.redact_headers.iter().cloned().collect(),
            redact_query: config.redact_query.iter().cloned().collect(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Request headers as a JSON object (those `headers` lists, or all),
    /// redacted ones as `[redacted]`.
    pub(crate) fn headers(
        &self,
        headers: &HeaderMap,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut logged = serde_json::Map::new();
        for (name, value) in headers {
            if let Some(only) = &self.logged_headers
                && !only.contains(name.as_str())
            {
                continue;
            }
            let text = if self.redact_headers.contains(name.as_str()) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            match logged.get_mut(name.as_str()) {
                Some(serde_json::Value::String(earlier)) => {
                    earlier.push_str(", ");
                    earlier.push_str(&text);
                }
                _ => {
                    logged.insert(name.as_str().to_owned(), text.into());
                }
            }
        }
        logged
    }

    /// The path and query with redacted parameters' values replaced.
    pub(crate) fn path(&self, uri: &http::Uri) -> String {
        let path = uri.path();
        let Some(query) = uri.query() else {
            return path.to_owned();
        };
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if self.redact_query.contains(name) => format!("{name}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect();
        format!("{path}?{}", query.join("&"))
    }

    /// Now, as an entry's `timestamp`.
    pub(crate) fn timestamp() -> String {
        humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
    }

    /// Writes `entry` as one line.
    pub(crate) fn write(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        // Queued whole, so lines never interleave and a stuck reader never
        // blocks the request.
        Stream::Stdout.write_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_redaction_hides_credentials_in_headers_and_query() {
        let log = AccessLog::new(&attache_config::AccessLog::default());
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        headers.insert("cookie", "session=1".parse().unwrap());
        headers.insert("user-agent", "curl/8".parse().unwrap());
        let logged = log.headers(&headers);
        assert_eq!(logged["authorization"], REDACTED);
        assert_eq!(logged["cookie"], REDACTED);
        assert_eq!(logged["user-agent"], "curl/8");
        let uri: http::Uri = "/login?user=ann&password=hunter2&token=t&next=/"
            .parse()
            .unwrap();
        assert_eq!(
            log.path(&uri),
            "/login?user=ann&password=[redacted]&token=[redacted]&next=/"
        );
    }

    #[test]
    fn a_header_list_keeps_only_those_headers_and_still_redacts() {
        let config = attache_config::AccessLog {
            headers: Some(vec!["user-agent".into(), "authorization".into()]),
            ..attache_config::AccessLog::default()
        };
        let log = AccessLog::new(&config);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        headers.insert("cookie", "session=1".parse().unwrap());
        headers.insert("user-agent", "curl/8".parse().unwrap());
        headers.insert("accept", "*/*".parse().unwrap());
        let logged = log.headers(&headers);
        let mut names: Vec<&String> = logged.keys().collect();
        names.sort();
        assert_eq!(names, ["authorization", "user-agent"]);
        assert_eq!(logged["authorization"], REDACTED);

        let none = attache_config::AccessLog {
            headers: Some(Vec::new()),
            ..attache_config::AccessLog::default()
        };
        assert!(AccessLog::new(&none).headers(&headers).is_empty());
    }
}
