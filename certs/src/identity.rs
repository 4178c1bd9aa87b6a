//! Peer identity: the URI SANs (SPIFFE IDs), DNS SANs and subject common name
//! of a verified certificate, and allow-lists that decide whether an identity
//! gets in.

use std::fmt;

use attache_config::IdentityAllowList;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// What a certificate says its holder is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, such as `spiffe://cluster.local/ns/default/sa/web`.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject common name.
    pub common_name: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate.
    ///
    /// # Errors
    /// When the certificate cannot be parsed.
    pub fn from_certificate(
        certificate: &CertificateDer<'_>,
    ) -> Result<Self, x509_parser::nom::Err<x509_parser::error::X509Error>> {
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate)?;
        let mut identity = Self {
            common_name: parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|name| name.as_str().ok())
                .map(str::to_owned),
            ..Self::default()
        };
        if let Ok(Some(names)) = parsed.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(identity)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        parts.extend(self.uris.iter().map(|uri| format!("uri={uri}")));
        parts.extend(self.dns_names.iter().map(|dns| format!("dns={dns}")));
        parts.extend(self.common_name.iter().map(|cn| format!("cn={cn}")));
        if parts.is_empty() {
            f.write_str("(no names)")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Checks identities against the configured allow-list: any match in any
/// list allows; an empty list allows every identity.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    allowed: IdentityAllowList,
}

impl AllowList {
    /// Wraps a validated allow-list from the configuration.
    pub fn new(allowed: IdentityAllowList) -> Self {
        Self { allowed }
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether URIs or CNs are listed (identities a server name check cannot see).
    pub fn names_beyond_dns(&self) -> bool {
        !self.allowed.uris.is_empty() || !self.allowed.cns.is_empty()
    }

    /// Whether `identity` may connect.
    pub fn allows(&self, identity: &PeerIdentity) -> bool {
        self.is_empty()
            || identity.uris.iter().any(|uri| {
                self.allowed
                    .uris
                    .iter()
                    .any(|pattern| uri_matches(pattern, uri))
            })
            || identity.dns_names.iter().any(|dns| {
                self.allowed
                    .dns
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(dns))
            })
            || identity
                .common_name
                .as_ref()
                .is_some_and(|cn| self.allowed.cns.iter().any(|allowed| allowed == cn))
    }
}

/// `*` matches one whole path segment; a final `*` matches one or more.
fn uri_matches(pattern: &str, uri: &str) -> bool {
    let mut patterns = pattern.split('/').peekable();
    let mut segments = uri.split('/');
    while let Some(expected) = patterns.next() {
        let Some(segment) = segments.next() else {
            return false;
        };
        let is_last = patterns.peek().is_none();
        match expected {
            "*" if is_last => return !segment.is_empty(),
            "*" if segment.is_empty() => return false,
            "*" => {}
            literal if literal != segment => return false,
            _ => {}
        }
    }
    segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(uris: &[&str], dns: &[&str], cns: &[&str]) -> AllowList {
        let owned = |list: &[&str]| list.iter().map(|item| (*item).to_owned()).collect();
        AllowList::new(IdentityAllowList {
            uris: owned(uris),
            dns: owned(dns),
            cns: owned(cns),
        })
    }

    fn with_uri(uri: &str) -> PeerIdentity {
        PeerIdentity {
            uris: vec![uri.to_owned()],
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn uri_wildcards_stand_for_whole_segments() {
        let list = allow(&["spiffe://cluster.local/ns/*/sa/web"], &[], &[]);
        assert!(list.allows(&with_uri("spiffe://cluster.local/ns/prod/sa/web")));
        assert!(!list.allows(&with_uri("spiffe://cluster.local/ns/prod/sa/api")));
        assert!(!list.allows(&with_uri("spiffe://cluster.local/ns/a/b/sa/web")));
        assert!(!list.allows(&with_uri("spiffe://other.domain/ns/prod/sa/web")));
        assert!(!list.allows(&with_uri("spiffe://cluster.local/ns//sa/web")));
    }

    #[test]
    fn a_final_wildcard_takes_any_suffix_of_the_trust_domain() {
        let list = allow(&["spiffe://cluster.local/*"], &[], &[]);
        assert!(list.allows(&with_uri("spiffe://cluster.local/ns/jobs/sa/batch")));
        assert!(!list.allows(&with_uri("spiffe://cluster.local")));
        assert!(!list.allows(&with_uri("spiffe://cluster.localhost/ns/x")));
    }

    #[test]
    fn dns_and_cn_match_exactly_and_an_empty_list_allows_all() {
        let identity = PeerIdentity {
            uris: vec![],
            dns_names: vec!["Web.Default.Svc".into()],
            common_name: Some("web".into()),
        };
        assert!(allow(&[], &["web.default.svc"], &[]).allows(&identity));
        assert!(allow(&[], &[], &["web"]).allows(&identity));
        assert!(!allow(&[], &["api.default.svc"], &["api"]).allows(&identity));
        assert!(AllowList::default().allows(&identity));
    }
}
