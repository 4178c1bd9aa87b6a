//! The HTTP access log: one JSON line per request on stdout (logs stay on
//! stderr), written when the response body has ended, with sensitive
//! header values and query parameters redacted.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::output::Stream;

const REDACTED: &str = "[redacted]";

/// A line's usual length: most lines fit without growing the buffer.
const LINE_CAPACITY: usize = 640;

/// What to redact, from `access_log` in the listener's `http` section.
pub(crate) struct AccessLog {
    enabled: bool,
    /// `None`: every request header is logged.
    logged_headers: Option<HashSet<String>>,
    redact_headers: HashSet<String>,
    redact_query: HashSet<String>,
}

/// What a line says of the request, captured when its headers arrive.
pub(crate) struct Request<'a> {
    pub(crate) listener: &'a str,
    pub(crate) route: &'a str,
    pub(crate) request_id: &'a [u8],
    pub(crate) client: SocketAddr,
    /// The client's IP as text, made once per connection.
    pub(crate) client_ip: &'a str,
    pub(crate) peer: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) uri: &'a http::Uri,
    pub(crate) protocol: &'static str,
    pub(crate) headers: &'a HeaderMap,
}

/// One request's line: the request's half is written into the line's buffer
/// when the request arrives (nothing of the request is kept), what the
/// proxy learns on the way is kept here, and the response's half is written
/// when the body ends. One buffer per request, handed whole to the writer.
pub(crate) struct Entry {
    line: Vec<u8>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) endpoint: Option<Arc<str>>,
    pub(crate) error: Option<String>,
    pub(crate) retries: u32,
    pub(crate) upstream_ms: Option<f64>,
}

/// What a line says of the response, once its body has ended.
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
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

    /// Starts a request's line (its timestamp is now).
    pub(crate) fn entry(&self, request: &Request<'_>) -> Entry {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        line.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(&mut line, std::time::SystemTime::now());
        line.push(b'"');
        field(&mut line, "listener", request.listener);
        field(&mut line, "route", request.route);
        field(&mut line, "request_id", &text(request.request_id));
        line.extend_from_slice(b",\"client\":\"");
        if request.client.is_ipv6() {
            line.push(b'[');
            line.extend_from_slice(request.client_ip.as_bytes());
            line.push(b']');
        } else {
            line.extend_from_slice(request.client_ip.as_bytes());
        }
        line.push(b':');
        integer(&mut line, request.client.port());
        line.push(b'"');
        if let Some(peer) = request.peer {
            field(&mut line, "peer", peer);
        }
        field(&mut line, "method", request.method);
        field(&mut line, "authority", request.authority);
        field(&mut line, "path", &self.path(request.uri));
        field(&mut line, "protocol", request.protocol);
        line.extend_from_slice(b",\"request_headers\":{");
        self.write_headers(&mut line, request.headers);
        line.push(b'}');
        Entry {
            line,
            upstream: None,
            endpoint: None,
            error: None,
            retries: 0,
            upstream_ms: None,
        }
    }

    /// Request headers (those `headers` lists, or all), repeated ones
    /// joined with `, `, redacted ones as `[redacted]`.
    fn write_headers(&self, line: &mut Vec<u8>, headers: &HeaderMap) {
        let mut first = true;
        for name in headers.keys() {
            if let Some(only) = &self.logged_headers
                && !only.contains(name.as_str())
            {
                continue;
            }
            if !first {
                line.push(b',');
            }
            first = false;
            string(line, name.as_str());
            line.push(b':');
            if self.redact_headers.contains(name.as_str()) {
                string(line, REDACTED);
                continue;
            }
            let mut values = headers.get_all(name).iter();
            let mut joined = values
                .next()
                .map(|value| text(value.as_bytes()))
                .unwrap_or_default();
            for value in values {
                let joined = joined.to_mut();
                joined.push_str(", ");
                joined.push_str(&text(value.as_bytes()));
            }
            string(line, &joined);
        }
    }

    /// The path and query with redacted parameters' values replaced.
    fn path<'u>(&self, uri: &'u http::Uri) -> Cow<'u, str> {
        let path = uri.path();
        let Some(query) = uri.query() else {
            return Cow::Borrowed(path);
        };
        let mut redacted = String::with_capacity(path.len() + 1 + query.len());
        redacted.push_str(path);
        redacted.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                redacted.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if self.redact_query.contains(name) => {
                    redacted.push_str(name);
                    redacted.push('=');
                    redacted.push_str(REDACTED);
                }
                _ => redacted.push_str(pair),
            }
        }
        Cow::Owned(redacted)
    }

    /// Ends `entry`'s line with the response's half and queues it.
    pub(crate) fn write(&self, entry: Entry, outcome: &Outcome) {
        // Queued whole, so lines never interleave and a stuck reader never
        // blocks the request.
        Stream::Stdout.write_line(&entry.finished(outcome));
    }
}

impl Entry {
    /// The whole line, with the response's half.
    fn finished(self, outcome: &Outcome) -> Vec<u8> {
        let Self {
            mut line,
            upstream,
            endpoint,
            error,
            retries,
            upstream_ms,
        } = self;
        line.extend_from_slice(b",\"status\":");
        integer(&mut line, outcome.status);
        if let Some(upstream) = &upstream {
            field(&mut line, "upstream", upstream);
        }
        if let Some(endpoint) = &endpoint {
            field(&mut line, "endpoint", endpoint);
        }
        if let Some(error) = &error {
            field(&mut line, "error", error);
        }
        line.extend_from_slice(b",\"retries\":");
        integer(&mut line, retries);
        line.extend_from_slice(b",\"bytes_received\":");
        integer(&mut line, outcome.bytes_received);
        line.extend_from_slice(b",\"bytes_sent\":");
        integer(&mut line, outcome.bytes_sent);
        if let Some(upstream_ms) = upstream_ms {
            line.extend_from_slice(b",\"upstream_ms\":");
            number(&mut line, upstream_ms);
        }
        line.extend_from_slice(b",\"duration_ms\":");
        number(&mut line, outcome.duration_ms);
        line.extend_from_slice(if outcome.complete {
            b",\"complete\":true}\n"
        } else {
            b",\"complete\":false}\n"
        });
        line
    }
}

/// `,"name":"value"` with the value escaped.
fn field(line: &mut Vec<u8>, name: &str, value: &str) {
    line.extend_from_slice(b",\"");
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"\":");
    string(line, value);
}

/// Header bytes as text: borrowed when they are UTF-8 (nearly always),
/// else with invalid bytes replaced.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// An integer in decimal.
fn integer(line: &mut Vec<u8>, value: impl itoa::Integer) {
    line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

thread_local! {
    /// The second a line was last stamped in, and its RFC 3339 text up to
    /// the fraction (`2026-12-03T17:20:11`): formatted once per second.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `now` in RFC 3339 with microseconds, UTC (`2026-12-03T17:20:11.123456Z`).
fn timestamp(line: &mut Vec<u8>, now: std::time::SystemTime) {
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut prefix) = LAST_SECOND.get();
    if cached != second {
        let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
        let formatted = humantime::format_rfc3339_seconds(whole).to_string();
        prefix.copy_from_slice(&formatted.as_bytes()[..19]);
        LAST_SECOND.set((second, prefix));
    }
    line.extend_from_slice(&prefix);
    line.push(b'.');
    // Six digits with leading zeros: the digits of 1,000,000 + micros but the first.
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since_epoch.subsec_micros() + 1_000_000);
    line.extend_from_slice(&micros.as_bytes()[1..]);
    line.push(b'Z');
}

/// A JSON string, escaped by serde_json.
fn string(line: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(line, value);
}

/// A JSON number (a finite float; anything else is `null`, as serde_json
/// writes it).
fn number(line: &mut Vec<u8>, value: f64) {
    let _ = serde_json::to_writer(line, &value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(log: &AccessLog, uri: &str, headers: &HeaderMap) -> serde_json::Value {
        let uri: http::Uri = uri.parse().unwrap();
        let mut entry = log.entry(&Request {
            listener: "front",
            route: "r\"1",
            request_id: b"id-1",
            client: "127.0.0.1:4000".parse().unwrap(),
            client_ip: "127.0.0.1",
            peer: None,
            method: "GET",
            authority: "api.local",
            uri: &uri,
            protocol: "HTTP/1.1",
            headers,
        });
        entry.upstream = Some(Arc::from("app"));
        entry.upstream_ms = Some(0.25);
        let outcome = Outcome {
            status: 200,
            bytes_received: 3,
            bytes_sent: 4,
            duration_ms: 1.5,
            complete: true,
        };
        let line = entry.finished(&outcome);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|byte| **byte == b'\n').count(), 1);
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let log = AccessLog::new(&attache_config::AccessLog::default());
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8 \"quoted\"".parse().unwrap());
        headers.append("accept", "text/html".parse().unwrap());
        headers.append("accept", "*/*".parse().unwrap());
        let line = line(&log, "/a/b", &headers);
        let object = line.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "listener",
                "route",
                "request_id",
                "client",
                "method",
                "authority",
                "path",
                "protocol",
                "request_headers",
                "status",
                "upstream",
                "retries",
                "bytes_received",
                "bytes_sent",
                "upstream_ms",
                "duration_ms",
                "complete"
            ]
        );
        assert!(humantime::parse_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(line["route"], "r\"1");
        assert_eq!(line["client"], "127.0.0.1:4000");
        assert_eq!(line["path"], "/a/b");
        assert_eq!(line["request_headers"]["user-agent"], "curl/8 \"quoted\"");
        assert_eq!(line["request_headers"]["accept"], "text/html, */*");
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream_ms"], 0.25);
        assert_eq!(line["duration_ms"], 1.5);
        assert_eq!(line["complete"], true);
    }

    #[test]
    fn timestamps_read_as_humantime_writes_them() {
        let base = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_313_611);
        for offset in [0, 7, 999_999, 1_000_000, 61_000_042, 86_400_000_001] {
            let now = base + std::time::Duration::from_micros(offset);
            let mut line = Vec::new();
            timestamp(&mut line, now);
            assert_eq!(
                String::from_utf8(line).unwrap(),
                humantime::format_rfc3339_micros(now).to_string()
            );
        }
    }

    #[test]
    fn an_ipv6_client_is_written_in_brackets() {
        let log = AccessLog::new(&attache_config::AccessLog::default());
        let uri: http::Uri = "/".parse().unwrap();
        let entry = log.entry(&Request {
            listener: "front",
            route: "r",
            request_id: b"id",
            client: "[::1]:4000".parse().unwrap(),
            client_ip: "::1",
            peer: None,
            method: "GET",
            authority: "a",
            uri: &uri,
            protocol: "HTTP/1.1",
            headers: &HeaderMap::new(),
        });
        let outcome = Outcome {
            status: 204,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0.5,
            complete: true,
        };
        let line: serde_json::Value = serde_json::from_slice(&entry.finished(&outcome)).unwrap();
        assert_eq!(line["client"], "[::1]:4000");
        assert_eq!(line["status"], 204);
    }

    #[test]
    fn default_redaction_hides_credentials_in_headers_and_query() {
        let log = AccessLog::new(&attache_config::AccessLog::default());
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        headers.insert("cookie", "session=1".parse().unwrap());
        headers.insert("user-agent", "curl/8".parse().unwrap());
        let line = line(
            &log,
            "/login?user=ann&password=hunter2&token=t&next=/",
            &headers,
        );
        let logged = &line["request_headers"];
        assert_eq!(logged["authorization"], REDACTED);
        assert_eq!(logged["cookie"], REDACTED);
        assert_eq!(logged["user-agent"], "curl/8");
        assert_eq!(
            line["path"],
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
        let line = line(&log, "/", &headers);
        let logged = line["request_headers"].as_object().unwrap();
        let mut names: Vec<&String> = logged.keys().collect();
        names.sort();
        assert_eq!(names, ["authorization", "user-agent"]);
        assert_eq!(logged["authorization"], REDACTED);

        let none = attache_config::AccessLog {
            headers: Some(Vec::new()),
            ..attache_config::AccessLog::default()
        };
        let line = super::tests::line(&AccessLog::new(&none), "/", &headers);
        assert!(line["request_headers"].as_object().unwrap().is_empty());
    }
}
