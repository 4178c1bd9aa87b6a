//! One server connection: attache's own login (trust, cleartext, md5 or
//! SCRAM-SHA-256 with `postgres-protocol`), the settings the server
//! reported, its cancel key, and what it has prepared for attache.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::wire::{self, WireError};
use crate::net::UpstreamStream;
use crate::pooling::{Connector, Pooled};
use crate::upstream::{Upstream, UpstreamConnection, UpstreamUnavailable};

/// Server messages attache reads whole while logging in.
const LOGIN_MESSAGE_LIMIT: usize = 1 << 20;

/// Where and as whom a pool's connections log in.
pub(super) struct Login {
    pub(super) upstream: Arc<Upstream>,
    pub(super) user: String,
    pub(super) database: String,
    pub(super) password: Option<String>,
    pub(super) max_prepared_statements: NonZeroUsize,
    /// The settings the server reports at login, from the pool's first
    /// connection: what clients are told at their startup.
    pub(super) reported: std::sync::Mutex<Option<Arc<BTreeMap<String, String>>>>,
}

impl Login {
    /// The settings the server reported to the pool's first connection.
    pub(super) fn reported(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Connector for Login {
    type Connection = ServerConnection;
    type Error = ServerError;

    async fn open(&self) -> Result<ServerConnection, ServerError> {
        let connection = ServerConnection::open(self).await?;
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reported.is_none() {
            *reported = Some(Arc::new(connection.reported.clone()));
        }
        Ok(connection)
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ServerError {
    #[error(transparent)]
    Unavailable(#[from] UpstreamUnavailable),
    #[error("the server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server answered outside the protocol: {0}")]
    Wire(#[from] WireError),
    /// The server refused the login; its `ErrorResponse`, whole, goes to
    /// the client.
    #[error("the server refused the login: {message}")]
    Refused { message: String, response: BytesMut },
    #[error("the server asks for a password and none is configured (server_password)")]
    NoPassword,
    #[error("the server asks for an authentication method attache does not speak ({0})")]
    Method(u32),
    #[error("SCRAM exchange failed: {0}")]
    Scram(std::io::Error),
}

/// A logged-in server connection.
pub(super) struct ServerConnection {
    connection: UpstreamConnection,
    /// The server's address, for its cancel requests.
    pub(super) address: Option<SocketAddr>,
    pub(super) process_id: u32,
    pub(super) secret: u32,
    /// The settings the server reported at login, to answer clients with.
    pub(super) reported: BTreeMap<String, String>,
    /// The settings as they are now on this connection.
    pub(super) current: BTreeMap<String, String>,
    /// Statement ids prepared here (under `attache_<id>`), least recently used first out.
    pub(super) prepared: lru::LruCache<u64, ()>,
    /// Set when the connection must not go back to its pool.
    pub(super) broken: bool,
    pub(super) created: tokio::time::Instant,
}

impl Pooled for ServerConnection {
    fn reusable(&self) -> bool {
        !self.broken
    }

    fn created(&self) -> tokio::time::Instant {
        self.created
    }
}

impl ServerConnection {
    pub(super) fn stream(&mut self) -> &mut UpstreamStream {
        self.connection.stream()
    }

    /// Where a cancel request for this connection's backend goes.
    pub(super) fn cancel_destination(&self) -> Option<super::cancel::Destination> {
        Some(super::cancel::Destination {
            endpoint: self.connection.endpoint_state().clone(),
            server: self.address?,
            process_id: self.process_id,
            secret: self.secret,
        })
    }

    /// Connects and logs in; the connection is idle (`ReadyForQuery`) after.
    async fn open(login: &Login) -> Result<Self, ServerError> {
        let mut connection = login.upstream.connect().await?;
        let address = match connection.stream() {
            UpstreamStream::Plain(stream) => stream.peer_addr().ok(),
            UpstreamStream::Tls(stream) => stream.get_ref().0.peer_addr().ok(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", login.user.as_str()),
                ("database", login.database.as_str()),
            ],
            &mut out,
        )?;
        connection.stream().write_all(&out).await?;
        let mut server = Self {
            connection,
            address,
            process_id: 0,
            secret: 0,
            reported: BTreeMap::new(),
            current: BTreeMap::new(),
            prepared: lru::LruCache::new(login.max_prepared_statements),
            broken: false,
            created: tokio::time::Instant::now(),
        };
        server.log_in(login).await?;
        server.current = server.reported.clone();
        Ok(server)
    }

    async fn log_in(&mut self, login: &Login) -> Result<(), ServerError> {
        let mut buffer = BytesMut::with_capacity(1024);
        let mut scram: Option<ScramSha256> = None;
        let password = || login.password.as_deref().ok_or(ServerError::NoPassword);
        loop {
            let message = self.read_message(&mut buffer).await?;
            let mut body = wire::body(&message);
            match message[0] {
                b'R' => {
                    let code = wire::read_u32(&mut body, "Authentication")?;
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password()?.as_bytes(), &mut out)?,
                        5 => {
                            let salt: [u8; 4] = body
                                .get(..4)
                                .and_then(|salt| salt.try_into().ok())
                                .ok_or(WireError::Malformed("AuthenticationMD5Password"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                login.user.as_bytes(),
                                password()?.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)?;
                        }
                        10 => {
                            let offers_scram = body
                                .split(|byte| *byte == 0)
                                .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(ServerError::Method(code));
                            }
                            // Channel binding needs TLS to the server; without
                            // it the plain mechanism is the one both accept.
                            let exchange = ScramSha256::new(
                                password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                exchange.message(),
                                &mut out,
                            )?;
                            scram = Some(exchange);
                        }
                        11 => {
                            let exchange = scram.as_mut().ok_or(WireError::Malformed("SASL"))?;
                            exchange.update(body).map_err(ServerError::Scram)?;
                            frontend::sasl_response(exchange.message(), &mut out)?;
                        }
                        12 => {
                            let exchange = scram.as_mut().ok_or(WireError::Malformed("SASL"))?;
                            exchange.finish(body).map_err(ServerError::Scram)?;
                            continue;
                        }
                        other => return Err(ServerError::Method(other)),
                    }
                    self.stream().write_all(&out).await?;
                }
                b'S' => {
                    if let Some((name, value)) = wire::parameter(body) {
                        self.reported.insert(name, value);
                    }
                }
                b'K' => {
                    self.process_id = wire::read_u32(&mut body, "BackendKeyData")?;
                    self.secret = wire::read_u32(&mut body, "BackendKeyData")?;
                }
                b'E' => {
                    let text = wire::error_field(body, b'M')
                        .unwrap_or("no message")
                        .to_owned();
                    return Err(ServerError::Refused {
                        message: text,
                        response: message,
                    });
                }
                b'Z' => return Ok(()),
                // NoticeResponse and anything a newer server adds.
                _ => {}
            }
        }
    }

    /// Reads one whole message during the login.
    async fn read_message(&mut self, buffer: &mut BytesMut) -> Result<BytesMut, ServerError> {
        loop {
            if let Some(message) = wire::split(buffer, LOGIN_MESSAGE_LIMIT)? {
                return Ok(message);
            }
            if self.stream().read_buf(buffer).await? == 0 {
                return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}
