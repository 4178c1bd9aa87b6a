//! Route matching: the listener's routes in order, the first whose every
//! condition holds takes the request; otherwise the fallback does.

use attache_config::RouteMatch;
use http::request::Parts;

use super::headers;

/// A route's conditions, ready to test.
pub(crate) struct Matcher {
    host: Option<HostPattern>,
    path_prefix: Option<String>,
    methods: Vec<http::Method>,
    headers: Vec<(http::HeaderName, String)>,
}

enum HostPattern {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
}

impl Matcher {
    /// Compiles `config` (validated: methods and header names parse).
    pub(crate) fn new(config: &RouteMatch) -> Self {
        Self {
            host: config
                .host
                .as_ref()
                .map(|host| match host.strip_prefix('*') {
                    Some(suffix) => HostPattern::Suffix(suffix.to_owned()),
                    None => HostPattern::Exact(host.clone()),
                }),
            path_prefix: config.path_prefix.clone(),
            methods: config
                .methods
                .iter()
                .filter_map(|method| http::Method::from_bytes(method.as_bytes()).ok())
                .collect(),
            headers: config
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                        value.clone(),
                    ))
                })
                .collect(),
        }
    }

    /// Whether the request (its head, and its host without port) matches.
    pub(crate) fn matches(&self, request: &Parts, host: Option<&str>) -> bool {
        let host_matches = match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostPattern::Exact(expected)), Some(host)) => host == expected,
            (Some(HostPattern::Suffix(suffix)), Some(host)) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        };
        host_matches
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|prefix| request.uri.path().starts_with(prefix.as_str()))
            && (self.methods.is_empty() || self.methods.contains(&request.method))
            && self.headers.iter().all(|(name, value)| {
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|sent| sent.as_bytes() == value.as_bytes())
            })
    }
}

/// The request's host for matching: without port, lowercase.
pub(crate) fn request_host(request: &Parts) -> Option<String> {
    headers::host(&request.uri, &request.headers).map(|host| headers::strip_port(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: &str, extra: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn matcher(
        host: Option<&str>,
        prefix: Option<&str>,
        methods: &[&str],
        headers: &[(&str, &str)],
    ) -> Matcher {
        Matcher::new(&RouteMatch {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            methods: methods.iter().map(|method| (*method).to_owned()).collect(),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        })
    }

    #[test]
    fn every_condition_must_hold() {
        let route = matcher(
            Some("api.example.com"),
            Some("/v1/"),
            &["GET"],
            &[("x-canary", "1")],
        );
        let hit = parts(
            "GET",
            "/v1/users",
            "API.example.com:8080",
            &[("x-canary", "1")],
        );
        assert!(route.matches(&hit, request_host(&hit).as_deref()));
        for miss in [
            parts("GET", "/v1/users", "web.example.com", &[("x-canary", "1")]),
            parts("GET", "/v2/users", "api.example.com", &[("x-canary", "1")]),
            parts("POST", "/v1/users", "api.example.com", &[("x-canary", "1")]),
            parts("GET", "/v1/users", "api.example.com", &[("x-canary", "0")]),
            parts("GET", "/v1/users", "api.example.com", &[]),
        ] {
            assert!(!route.matches(&miss, request_host(&miss).as_deref()));
        }
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let route = matcher(Some("*.example.com"), None, &[], &[]);
        let sub = parts("GET", "/", "a.example.com", &[]);
        let apex = parts("GET", "/", "example.com", &[]);
        assert!(route.matches(&sub, request_host(&sub).as_deref()));
        assert!(!route.matches(&apex, request_host(&apex).as_deref()));
    }
}
