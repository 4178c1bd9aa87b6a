//! Client logins on a pooling listener with `users`: SCRAM-SHA-256 as
//! Postgres runs it (RFC 5802 and 7677, without channel binding), checked
//! against a verifier, so attache never needs a client's password in the
//! clear. A plain password in the config is turned into a verifier at
//! start (and also serves attache's own server login as that user).
//!
//! An unknown user goes through the same exchange with a verifier nobody
//! matches, so the answer does not tell which user names exist.

use std::collections::BTreeMap;

use attache_config::{PostgresUser, ScramVerifier};
use base64::Engine as _;
use bytes::BytesMut;
use ring::rand::SecureRandom as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::wire;
use crate::net::ClientStream;

/// Client messages during the exchange are small; larger ones are refused.
const MAX_AUTH_MESSAGE: usize = 8 << 10;
const MECHANISM: &str = "SCRAM-SHA-256";

/// A user's credentials and settings.
pub(super) struct Credentials {
    verifier: ScramVerifier,
    /// The password, when the config gave it in the clear.
    pub(super) password: Option<String>,
    /// The user's own `query_timeout`, over the listener's.
    pub(super) query_timeout: Option<std::time::Duration>,
}

/// The users of a listener.
#[derive(Default)]
pub(super) struct Users(BTreeMap<String, Credentials>);

impl Users {
    /// From the config's `users` (a password or a verifier each; the
    /// config check has refused malformed verifiers).
    pub(super) fn new(users: &BTreeMap<String, PostgresUser>) -> Self {
        Self(
            users
                .iter()
                .filter_map(|(name, user)| {
                    let secret = &user.secret;
                    let (verifier, password) = if secret.starts_with("SCRAM-SHA-256$") {
                        (ScramVerifier::parse(secret)?, None)
                    } else {
                        let verifier =
                            postgres_protocol::password::scram_sha_256(secret.as_bytes());
                        (ScramVerifier::parse(&verifier)?, Some(secret.clone()))
                    };
                    let credentials = Credentials {
                        verifier,
                        password,
                        query_timeout: user.query_timeout,
                    };
                    Some((name.clone(), credentials))
                })
                .collect(),
        )
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn get(&self, user: &str) -> Option<&Credentials> {
        self.0.get(user)
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("the login broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("reading the login failed: {0}")]
    Io(#[from] std::io::Error),
}

impl AuthError {
    /// The SQLSTATE the client gets.
    pub(super) fn sqlstate(&self) -> &'static str {
        match self {
            Self::Failed(_) => "28P01",
            Self::Protocol(_) | Self::Io(_) => "08P01",
        }
    }
}

/// Runs the SCRAM-SHA-256 exchange with the client; `Ok` once it proved
/// it knows `user`'s password (the `AuthenticationOk` is the caller's).
pub(super) async fn authenticate(
    client: &mut ClientStream,
    user: &str,
    credentials: Option<&Credentials>,
) -> Result<(), AuthError> {
    let unknown;
    let verifier = match credentials {
        Some(credentials) => &credentials.verifier,
        None => {
            unknown = unmatchable();
            &unknown
        }
    };
    let mut out = BytesMut::new();
    let mut offer = MECHANISM.as_bytes().to_vec();
    offer.extend_from_slice(b"\0\0");
    authentication(&mut out, 10, &offer);
    send(client, &out).await?;

    let initial = read_password_message(client).await?;
    let mut rest = &initial[..];
    let mechanism = wire::cstr(&mut rest, "SASLInitialResponse")
        .map_err(|_| AuthError::Protocol("malformed SASLInitialResponse"))?;
    if mechanism != MECHANISM.as_bytes() {
        return Err(AuthError::Protocol(
            "a SASL mechanism attache did not offer",
        ));
    }
    let length = wire::read_u32(&mut rest, "SASLInitialResponse")
        .map_err(|_| AuthError::Protocol("malformed SASLInitialResponse"))?;
    let client_first = rest
        .get(..length as usize)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .ok_or(AuthError::Protocol("malformed SASLInitialResponse"))?;
    // Channel binding is not offered: the client says it does not use it
    // (`n`) or thinks the server cannot (`y`).
    let (gs2_header, client_first_bare) = match client_first.get(..3) {
        Some(header @ ("n,," | "y,,")) => (header, &client_first[3..]),
        _ => {
            return Err(AuthError::Protocol(
                "SCRAM with channel binding or an authzid",
            ));
        }
    };
    let client_nonce = attribute(client_first_bare, 'r')
        .filter(|nonce| !nonce.is_empty() && nonce.bytes().all(|byte| byte.is_ascii_graphic()))
        .ok_or(AuthError::Protocol(
            "SCRAM client-first-message without a nonce",
        ))?;

    let mut random = [0; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| AuthError::Protocol("no random bytes for the nonce"))?;
    let base64 = &base64::engine::general_purpose::STANDARD;
    let nonce = format!("{client_nonce}{}", base64.encode(random));
    let server_first = format!(
        "r={nonce},s={},i={}",
        base64.encode(&verifier.salt),
        verifier.iterations
    );
    out.clear();
    authentication(&mut out, 11, server_first.as_bytes());
    send(client, &out).await?;

    let response = read_password_message(client).await?;
    let client_final = std::str::from_utf8(&response)
        .map_err(|_| AuthError::Protocol("malformed SASLResponse"))?;
    let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or(AuthError::Protocol(
        "SCRAM client-final-message without a proof",
    ))?;
    let binding_ok = attribute(without_proof, 'c') == Some(&base64.encode(gs2_header));
    let nonce_ok = attribute(without_proof, 'r') == Some(nonce.as_str());
    let proof = base64
        .decode(proof)
        .map_err(|_| AuthError::Protocol("malformed SCRAM proof"))?;
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(&verifier.stored_key, auth_message.as_bytes());
    let proven = proof.len() == client_signature.len() && {
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(proof, signature)| proof ^ signature)
            .collect();
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        crate::pooling::same(stored_key.as_ref(), &verifier.stored_key)
    };
    if !(binding_ok && nonce_ok && proven && credentials.is_some()) {
        return Err(AuthError::Failed(user.to_owned()));
    }
    let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
    out.clear();
    let server_final = format!("v={}", base64.encode(server_signature));
    authentication(&mut out, 12, server_final.as_bytes());
    send(client, &out).await?;
    Ok(())
}

/// A verifier no password matches (random keys), for unknown users.
fn unmatchable() -> ScramVerifier {
    let mut bytes = [0; 80];
    // Unpredictable is what matters; a failed fill still leaves zeros that
    // no proof hashes to.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    ScramVerifier {
        iterations: 4096,
        salt: bytes[..16].to_vec(),
        stored_key: bytes[16..48].to_vec(),
        server_key: bytes[48..].to_vec(),
    }
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

/// The value of SCRAM attribute `name` (`r=...`) in a comma-separated message.
fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

/// An `Authentication` message: its code, then `data`.
fn authentication(out: &mut BytesMut, code: u32, data: &[u8]) {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    wire::message(out, b'R', &body);
}

async fn send(client: &mut ClientStream, bytes: &[u8]) -> Result<(), AuthError> {
    client.write_all(bytes).await?;
    client.flush().await?;
    Ok(())
}

/// Reads exactly one `PasswordMessage` (`p`) and returns its body.
async fn read_password_message(client: &mut ClientStream) -> Result<Vec<u8>, AuthError> {
    let mut header = [0; wire::HEADER];
    client.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if header[0] != b'p' {
        return Err(AuthError::Protocol("expected a password message"));
    }
    if !(4..=MAX_AUTH_MESSAGE).contains(&length) {
        return Err(AuthError::Protocol(
            "a password message of an invalid length",
        ));
    }
    let mut body = vec![0; length - 4];
    client.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_passwords_become_verifiers_and_malformed_ones_are_skipped() {
        let user = |secret: &str| PostgresUser {
            secret: secret.to_owned(),
            query_timeout: None,
        };
        let users = Users::new(&BTreeMap::from([
            ("app".to_owned(), user("s3cret")),
            ("bad".to_owned(), user("SCRAM-SHA-256$x")),
        ]));
        let app = users.get("app").unwrap();
        assert_eq!(app.password.as_deref(), Some("s3cret"));
        assert_eq!(app.verifier.iterations, 4096);
        assert!(users.get("bad").is_none());
    }

    #[test]
    fn attributes_are_read_by_name() {
        assert_eq!(attribute("n=,r=abc", 'r'), Some("abc"));
        assert_eq!(attribute("c=biws,r=xyz", 'c'), Some("biws"));
        assert_eq!(attribute("rr=no", 'r'), None);
        assert!(crate::pooling::same(b"abc", b"abc"));
        assert!(!crate::pooling::same(b"abc", b"abd"));
        assert!(!crate::pooling::same(b"abc", b"ab"));
    }
}
