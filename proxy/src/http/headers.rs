//! Header rules at the proxy boundary: hop-by-hop headers stop here (RFC
//! 9110 §7.6.1), `X-Forwarded-*` and `X-Real-IP` tell the app who called,
//! `X-Request-Id` is kept or made, and the verified client identity is
//! passed on only by attache (a client cannot forge it).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers that never cross a proxy, whatever `Connection` says.
const HOP_BY_HOP_COUNT: usize = 7;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// Returns the `Upgrade` value when the message asks for a protocol
/// upgrade (WebSocket), so the caller can carry it across.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // Runs twice per request: a walk over the message's few names finds
    // which of them are there, rather than a hashed removal of each.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut has_upgrade = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(index) => present[index] = true,
            None => has_upgrade |= name == header::UPGRADE,
        }
    }
    let mut upgrade_requested = false;
    let mut named = Vec::new();
    if present[0] {
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim);
        for token in tokens {
            if token.eq_ignore_ascii_case("upgrade") {
                upgrade_requested = true;
            } else if !token.eq_ignore_ascii_case("keep-alive")
                && let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes())
            {
                named.push(name);
            }
        }
    }
    let upgrade = has_upgrade
        .then(|| headers.remove(header::UPGRADE))
        .flatten()
        .filter(|_| upgrade_requested);
    for name in named {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    upgrade
}

/// Puts back what an upgrade needs on the next hop.
pub(crate) fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Who called, as the app sees it: `X-Forwarded-For` gets the client
/// address appended (nginx's `$proxy_add_x_forwarded_for`), `X-Real-IP`,
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are set by attache.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<&str>,
) {
    let forwarded_for = match headers
        .get(X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
        .filter(|earlier| !earlier.trim().is_empty())
    {
        Some(earlier) => {
            let appended = [earlier.as_bytes(), b", ", client.as_bytes()].concat();
            HeaderValue::from_bytes(&appended).unwrap_or_else(|_| client.clone())
        }
        None => client.clone(),
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_REAL_IP, client.clone());
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(value) = host.and_then(|host| HeaderValue::from_str(host).ok()) {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

/// The request's id: the client's `X-Request-Id` when it sent a usable one,
/// otherwise a new random (version 4) UUID, which is then set on the request.
pub(crate) fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(X_REQUEST_ID)
        && !value.is_empty()
        && value.len() <= 200
    {
        return value.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    // Version 4, variant 10xx.
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    // Written in place: this runs for every request without an id.
    let mut id = [b'-'; 36];
    let digits = (0..36).filter(|position| ![8, 13, 18, 23].contains(position));
    for (nibble, position) in digits.enumerate() {
        id[position] = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The request's host without a port, lowercase: the URI's authority
/// (HTTP/2, absolute-form) or else the `Host` header.
pub(crate) fn host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    authority(uri, headers).map(str::to_owned)
}

/// [`host`], borrowed.
pub(crate) fn authority<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
        })
}

/// `host[:port]` without the port, lowercase, without the trailing dot of
/// a fully qualified name (`admin.internal.` is `admin.internal`); IPv6
/// keeps its brackets.
pub(crate) fn strip_port(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Why a request's authority cannot be trusted (RFC 9112 §3.2, RFC 9113
/// §8.3.1): the request gets 400 and is neither routed nor forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadAuthority {
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    TwoHosts,
    #[error("the Host header is not a valid authority")]
    InvalidHost,
    #[error("the Host header names another host than the request target")]
    HostDisagrees,
}

/// Makes the request name one authority, for routing and for the app
/// alike: when the target carries one (absolute form, or HTTP/2's
/// `:authority`), it replaces `Host` (RFC 9112 §3.2.2), and a `Host` that
/// names another host is refused rather than silently replaced, so a
/// route that matches on `Host` cannot be bypassed.
///
/// # Errors
/// [`BadAuthority`] saying what is wrong.
pub(crate) fn settle_authority(
    uri: &http::Uri,
    version: http::Version,
    headers: &mut HeaderMap,
) -> Result<(), BadAuthority> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(BadAuthority::TwoHosts);
    }
    let host_text = match &host {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|text| text.parse::<http::uri::Authority>().is_ok())
                .ok_or(BadAuthority::InvalidHost)?,
        ),
        None => None,
    };
    match (uri.authority(), host_text) {
        (Some(target), Some(host)) => {
            if !same_authority(target.as_str(), host) {
                return Err(BadAuthority::HostDisagrees);
            }
            if let Ok(value) = HeaderValue::from_str(target.as_str()) {
                headers.insert(header::HOST, value);
            }
            Ok(())
        }
        (_, None) if version == http::Version::HTTP_11 => Err(BadAuthority::MissingHost),
        _ => Ok(()),
    }
}

/// Whether two authorities name the same host (case, a trailing dot and an
/// absent port aside; two explicit ports must agree).
fn same_authority(a: &str, b: &str) -> bool {
    let port = |authority: &str| {
        authority
            .parse::<http::uri::Authority>()
            .ok()
            .and_then(|parsed| parsed.port_u16())
    };
    let ports_agree = match (port(a), port(b)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    strip_port(a) == strip_port(b) && ports_agree
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(uri: &str, version: http::Version, hosts: &[&str]) -> Result<String, BadAuthority> {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        settle_authority(&uri.parse().unwrap(), version, &mut headers)?;
        Ok(headers
            .get(header::HOST)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default())
    }

    #[test]
    fn one_authority_per_request() {
        use http::Version;
        let h11 = Version::HTTP_11;
        assert_eq!(settle("/", h11, &["app"]), Ok("app".into()));
        assert_eq!(settle("/", h11, &[]), Err(BadAuthority::MissingHost));
        assert_eq!(settle("/", Version::HTTP_10, &[]), Ok(String::new()));
        assert_eq!(settle("/", h11, &["a", "b"]), Err(BadAuthority::TwoHosts));
        assert_eq!(
            settle("http://other.example/", h11, &["admin.internal"]),
            Err(BadAuthority::HostDisagrees)
        );
        assert_eq!(
            settle("http://Admin.Internal./x", h11, &["admin.internal:80"]),
            Ok("Admin.Internal.".into())
        );
        assert_eq!(
            settle("http://app:8080/", h11, &["app:9090"]),
            Err(BadAuthority::HostDisagrees)
        );
        assert_eq!(
            settle("http://app/", h11, &[]),
            Err(BadAuthority::MissingHost)
        );
        // HTTP/2 names the authority in :authority; Host is optional.
        assert_eq!(
            settle("http://app/", Version::HTTP_2, &[]),
            Ok(String::new())
        );
        assert_eq!(
            settle("/", h11, &["bad host"]),
            Err(BadAuthority::InvalidHost)
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(strip_hop_by_hop(&mut headers), None);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn hop_by_hop_headers_go_without_a_connection_header_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(header::HOST, HeaderValue::from_static("app"));
        headers.append("x-kept", HeaderValue::from_static("1"));
        headers.append("x-kept", HeaderValue::from_static("2"));
        assert_eq!(strip_hop_by_hop(&mut headers), None);
        let left: Vec<_> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        assert_eq!(
            left,
            [
                ("host", "app".parse().unwrap()),
                ("x-kept", "1".parse().unwrap()),
                ("x-kept", "2".parse().unwrap())
            ]
        );
        let untouched = headers.clone();
        assert_eq!(strip_hop_by_hop(&mut headers), None);
        assert_eq!(headers, untouched);
    }

    #[test]
    fn an_upgrade_request_keeps_its_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            strip_hop_by_hop(&mut headers),
            Some(HeaderValue::from_static("websocket"))
        );
    }

    #[test]
    fn forwarded_for_is_appended_and_the_rest_set() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        headers.insert(X_REAL_IP, HeaderValue::from_static("forged"));
        let client = HeaderValue::from_static("10.1.2.3");
        add_forwarded(&mut headers, &client, true, Some("api.example.com"));
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.7, 10.1.2.3");
        assert_eq!(headers[X_REAL_IP], "10.1.2.3");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "api.example.com");
    }

    #[test]
    fn request_ids_are_kept_or_made_as_uuid_v4() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(request_id(&mut headers), "abc");
        let mut headers = HeaderMap::new();
        let made = request_id(&mut headers);
        let made = made.to_str().unwrap();
        assert_eq!(headers[X_REQUEST_ID], made);
        let groups: Vec<_> = made.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&made[14..15], "4");
        assert!("89ab".contains(&made[19..20]));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("API.example.com:8080"), "api.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
