//! One server connection: attache's own login (`mysql_native_password`,
//! or `caching_sha2_password`: its fast path, and its full authentication
//! over TLS; auth switches followed), in-band TLS when the upstream has
//! `tls` (the connect reads the greeting and starts TLS; see
//! [`crate::upstream::connector::StartTls::Mysql`]), the
//! server's thread id (for `KILL QUERY`), the schema and transaction state
//! it is in, and session-state tracking switched on so that attache learns
//! what a client's statements left behind.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize as _, MySerialize as _};
use mysql_common::scramble::{scramble_native, scramble_sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::wire::{self, WireError, capability, command};
use crate::pooling::{Connector, Pooled};
use crate::upstream::{Upstream, UpstreamConnection, UpstreamUnavailable};

/// Packets attache reads whole while logging in.
const LOGIN_PACKET_LIMIT: usize = 1 << 20;

/// What attache asks of a server connection. No `CLIENT_DEPRECATE_EOF`
/// (replies keep their EOF packets, as attache's clients are told) and no
/// MariaDB extended capabilities (they change the reply formats).
pub(super) const SERVER_CAPABILITIES: u32 = capability::LONG_PASSWORD
    | capability::LONG_FLAG
    | capability::LOCAL_FILES
    | capability::PROTOCOL_41
    | capability::TRANSACTIONS
    | capability::SECURE_CONNECTION
    | capability::MULTI_STATEMENTS
    | capability::MULTI_RESULTS
    | capability::PS_MULTI_RESULTS
    | capability::PLUGIN_AUTH
    | capability::PLUGIN_AUTH_LENENC_CLIENT_DATA
    | capability::SESSION_TRACK;

/// What the server says of itself in its greeting, for attache's greeting
/// to clients.
#[derive(Debug, Clone)]
pub(super) struct ServerInfo {
    pub(super) version: Vec<u8>,
    pub(super) collation: u8,
}

/// Where and as whom a pool's connections log in.
pub(super) struct Login {
    pub(super) upstream: Arc<Upstream>,
    /// Ask for `CLIENT_FOUND_ROWS` (matched rows in OK packets).
    pub(super) found_rows: bool,
    pub(super) user: String,
    pub(super) schema: Option<String>,
    pub(super) password: Option<String>,
    /// The listener's record of the server's greeting.
    pub(super) info: Arc<Mutex<Option<ServerInfo>>>,
    /// Prepared statements each connection keeps (transaction mode).
    pub(super) max_prepared_statements: std::num::NonZeroUsize,
    /// Set once a connection of this pool logged in.
    pub(super) logged_in: std::sync::atomic::AtomicBool,
    /// The session variables replayed on lent connections (`names`
    /// already expanded), tracked on each connection.
    pub(super) replayed: Arc<[String]>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ServerError {
    #[error(transparent)]
    Unavailable(#[from] UpstreamUnavailable),
    #[error("the server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server answered outside the protocol: {0}")]
    Wire(#[from] WireError),
    /// The server refused the login; its ERR packet's payload goes to the
    /// client.
    #[error("the server refused the login: {message}")]
    Refused { message: String, payload: Vec<u8> },
    #[error("the server asks for the authentication plugin {0:?}, which attache does not speak")]
    Plugin(String),
    #[error(
        "the server asks for caching_sha2_password's full authentication, which needs TLS to \
         the server (`tls` on the upstream) or a login it has cached"
    )]
    FullAuthentication,
}

/// A logged-in server connection.
pub(super) struct ServerConnection {
    connection: UpstreamConnection,
    /// The server's id of this connection (`KILL QUERY <id>`).
    pub(super) thread_id: u32,
    /// The default schema the connection is in.
    pub(super) schema: Option<String>,
    /// Set when the connection must not go back to its pool.
    pub(super) broken: bool,
    /// Whether the server reports session state changes on it.
    pub(super) tracks_state: bool,
    /// The replayed variables' values as they are on this connection, and
    /// as they were after its login; empty when the server does not
    /// report their changes (their `SET`s pin then).
    pub(super) variables: Variables,
    pub(super) baseline: Variables,
    /// The statements prepared here for clients (transaction mode), by
    /// [`super::prepared::key`], least recently used first out.
    pub(super) prepared: lru::LruCache<Arc<[u8]>, ServerStatement>,
    created: tokio::time::Instant,
}

/// A statement prepared on a server connection.
pub(super) struct ServerStatement {
    /// The server's id of it.
    pub(super) id: u32,
    pub(super) parameters: u16,
    /// The server's prepare reply (from sequence id 1): what a client that
    /// prepares the same text on this connection is told.
    pub(super) reply: bytes::Bytes,
    /// The parameter types last bound to it (`COM_STMT_EXECUTE` with
    /// `new_params_bound_flag`), which later executions reuse.
    pub(super) types: Option<Box<[u8]>>,
}

/// Session variables by name (`None`: SQL NULL), in the order they are
/// replayed.
pub(super) type Variables = Vec<(String, Option<String>)>;

/// Sets `name` to `value` in `variables`.
pub(super) fn set_variable(variables: &mut Variables, name: &str, value: Option<String>) {
    match variables.iter_mut().find(|(known, _)| known == name) {
        Some((_, current)) => *current = value,
        None => variables.push((name.to_owned(), value)),
    }
}

impl Connector for Login {
    type Connection = ServerConnection;
    type Error = ServerError;

    async fn open(&self) -> Result<ServerConnection, ServerError> {
        let connection = ServerConnection::open(self).await?;
        self.logged_in
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(connection)
    }
}

impl Pooled for ServerConnection {
    fn reusable(&self) -> bool {
        !self.broken
    }

    fn created(&self) -> tokio::time::Instant {
        self.created
    }
}

/// A closed connection says goodbye (`COM_QUIT`) when its socket takes
/// the five bytes at once, so that the server does not log it as aborted.
impl Drop for ServerConnection {
    fn drop(&mut self) {
        if let crate::net::UpstreamStream::Plain(stream) = self.connection.stream() {
            let _ = stream.try_write(&[1, 0, 0, 0, command::QUIT]);
        }
    }
}

impl ServerConnection {
    pub(super) fn stream(&mut self) -> &mut crate::net::UpstreamStream {
        self.connection.stream()
    }

    /// Connects, logs in, and switches session-state tracking on.
    async fn open(login: &Login) -> Result<Self, ServerError> {
        let mut connection = login.upstream.connect().await?;
        let mut buffer = BytesMut::with_capacity(1024);
        // With TLS in-band, the connect read the greeting and sent the
        // SSLRequest (the next sequence id) before the handshake.
        let (greeting, tls) = match connection.take_greeting() {
            Some(greeting) => (BytesMut::from(&greeting[..]), true),
            None => (read_packet(connection.stream(), &mut buffer).await?, false),
        };
        let payload = wire::payload(&greeting);
        if payload.first() == Some(&0xff) {
            return Err(refused(payload));
        }
        let handshake = HandshakePacket::deserialize((), &mut ParseBuf(payload))
            .map_err(|_| WireError::Malformed("initial handshake"))?;
        let capabilities = handshake.capabilities().bits();
        if capabilities & capability::PROTOCOL_41 == 0 {
            return Err(WireError::Unexpected("pre-4.1 server").into());
        }
        {
            let mut info = login
                .info
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *info = Some(ServerInfo {
                version: handshake.server_version_ref().to_vec(),
                collation: handshake.default_collation(),
            });
        }
        let nonce = handshake.nonce();
        let plugin = handshake
            .auth_plugin()
            .map(|plugin| plugin.into_owned())
            .unwrap_or(AuthPlugin::MysqlNativePassword);
        let scramble = scramble_for(&plugin, login.password.as_deref(), &nonce)?;
        let mut wanted = SERVER_CAPABILITIES & (capabilities | capability::CONNECT_WITH_DB);
        if tls {
            wanted |= capability::SSL;
        }
        if login.found_rows {
            wanted |= capability::FOUND_ROWS;
        }
        let wanted = CapabilityFlags::from_bits_truncate(wanted);
        let response = HandshakeResponse::new(
            Some(scramble),
            handshake.server_version_parsed().unwrap_or((5, 7, 0)),
            Some(login.user.as_bytes()),
            login.schema.as_deref().map(str::as_bytes),
            Some(plugin.clone()),
            wanted,
            None,
            wire::MAX_PAYLOAD as u32,
        );
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        let mut out = BytesMut::new();
        let sequence = wire::sequence(&greeting).wrapping_add(if tls { 2 } else { 1 });
        wire::write_packets(&mut out, sequence, &payload);
        connection.stream().write_all(&out).await?;
        let mut plugin = plugin;
        loop {
            let packet = read_packet(connection.stream(), &mut buffer).await?;
            let sequence = wire::sequence(&packet).wrapping_add(1);
            let payload = wire::payload(&packet);
            match payload.first() {
                Some(0x00) => break,
                Some(0xff) => return Err(refused(payload)),
                Some(0xfe) => {
                    let switch = AuthSwitchRequest::deserialize((), &mut ParseBuf(payload))
                        .map_err(|_| WireError::Malformed("auth switch"))?;
                    plugin = switch.auth_plugin().into_owned();
                    let nonce = switch.plugin_data();
                    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
                    let scramble = scramble_for(&plugin, login.password.as_deref(), nonce)?;
                    let mut out = BytesMut::new();
                    wire::write_packets(&mut out, sequence, &scramble);
                    connection.stream().write_all(&out).await?;
                }
                // caching_sha2_password: 3 is "the fast path worked" (an
                // OK follows), 4 asks for the password itself.
                Some(0x01) if plugin == AuthPlugin::CachingSha2Password => match payload.get(1) {
                    Some(3) => {}
                    // The password itself, which only TLS may carry.
                    Some(4) if tls => {
                        let mut password = login.password.clone().unwrap_or_default().into_bytes();
                        password.push(0);
                        let mut out = BytesMut::new();
                        wire::write_packets(&mut out, sequence, &password);
                        connection.stream().write_all(&out).await?;
                    }
                    _ => return Err(ServerError::FullAuthentication),
                },
                _ => return Err(WireError::Unexpected("login").into()),
            }
        }
        let mut server = Self {
            connection,
            thread_id: handshake.connection_id(),
            schema: login.schema.clone(),
            broken: false,
            tracks_state: false,
            variables: Vec::new(),
            baseline: Vec::new(),
            prepared: lru::LruCache::new(login.max_prepared_statements),
            created: tokio::time::Instant::now(),
        };
        server.track_state(&login.replayed, &mut buffer).await?;
        Ok(server)
    }

    /// Asks the server to report session state changes in OK packets, and
    /// the replayed variables' new values, and reads their values now (the
    /// connection's baseline). A server that cannot leaves attache to its
    /// own statement scan, and the replayed variables' `SET`s pin.
    async fn track_state(
        &mut self,
        replayed: &[String],
        buffer: &mut BytesMut,
    ) -> Result<(), ServerError> {
        self.variables.clear();
        self.baseline.clear();
        if !replayed.is_empty() {
            let request = format!(
                "\x03SET SESSION session_track_state_change = 1, session_track_system_variables = '{}'",
                replayed.join(",")
            );
            if self
                .hidden_command(request.as_bytes(), buffer)
                .await?
                .is_ok()
            {
                self.tracks_state = true;
                let columns: Vec<String> = replayed
                    .iter()
                    .map(|name| format!("@@session.{name}"))
                    .collect();
                let request = format!("\x03SELECT {}", columns.join(", "));
                if let Ok(values) = self.hidden_row(request.as_bytes(), buffer).await?
                    && values.len() == replayed.len()
                {
                    self.baseline = replayed
                        .iter()
                        .zip(values)
                        .map(|(name, value)| (name.clone(), normalized(name, value)))
                        .collect();
                    self.variables = self.baseline.clone();
                }
                return Ok(());
            }
        }
        let request = b"\x03SET SESSION session_track_state_change = 1";
        self.tracks_state = self.hidden_command(request, buffer).await?.is_ok();
        Ok(())
    }

    /// Runs a query of attache's own and reads its first row.
    async fn hidden_row(
        &mut self,
        request: &[u8],
        buffer: &mut BytesMut,
    ) -> Result<Result<Vec<Option<String>>, Vec<u8>>, ServerError> {
        let mut out = BytesMut::new();
        wire::write_packets(&mut out, 0, request);
        self.stream().write_all(&out).await?;
        let mut reply =
            wire::Reply::to(command::QUERY, true).ok_or(WireError::Malformed("query"))?;
        let mut outcome = Err(Vec::new());
        let mut eofs = 0;
        while !reply.done() {
            let packet = read_packet(self.stream(), buffer).await?;
            match reply.packet(&packet)? {
                wire::Packet::Eof(_) => eofs += 1,
                wire::Packet::Err(_) => outcome = Err(wire::payload(&packet).to_vec()),
                // The first row: after the column definitions' EOF.
                wire::Packet::Data if eofs == 1 && outcome.is_err() => {
                    let row = wire::text_row(wire::payload(&packet))
                        .ok_or(WireError::Malformed("row"))?;
                    outcome = Ok(row
                        .into_iter()
                        .map(|value| value.map(|value| String::from_utf8_lossy(value).into_owned()))
                        .collect());
                }
                _ => {}
            }
        }
        Ok(outcome)
    }

    /// Sends a command of attache's own and reads its whole reply: `Ok`
    /// when it ended in an OK or EOF, else the ERR packet's payload.
    pub(super) async fn hidden_command(
        &mut self,
        request: &[u8],
        buffer: &mut BytesMut,
    ) -> Result<Result<(), Vec<u8>>, ServerError> {
        let mut out = BytesMut::new();
        wire::write_packets(&mut out, 0, request);
        self.stream().write_all(&out).await?;
        let Some(mut reply) = wire::Reply::to(request[0], true) else {
            return Ok(Ok(()));
        };
        let mut outcome = Ok(());
        while !reply.done() {
            let packet = read_packet(self.stream(), buffer).await?;
            if let wire::Packet::Err(_) = reply.packet(&packet)? {
                outcome = Err(wire::payload(&packet).to_vec());
            }
            if reply.awaiting_file() {
                // attache never asks for a file; an empty one declines.
                let mut out = BytesMut::new();
                wire::write_packets(&mut out, wire::sequence(&packet).wrapping_add(1), &[]);
                self.stream().write_all(&out).await?;
                reply.file_sent();
            }
        }
        Ok(outcome)
    }

    /// Makes `schema` the connection's default schema (a hidden
    /// `COM_INIT_DB`, unless it is already). `Err` inside: the server's
    /// refusal (the schema is gone, say).
    pub(super) async fn use_schema(
        &mut self,
        schema: &str,
        buffer: &mut BytesMut,
    ) -> Result<Result<(), Vec<u8>>, ServerError> {
        if self.schema.as_deref() == Some(schema) {
            return Ok(Ok(()));
        }
        let mut request = Vec::with_capacity(1 + schema.len());
        request.push(command::INIT_DB);
        request.extend_from_slice(schema.as_bytes());
        let outcome = self.hidden_command(&request, buffer).await?;
        if outcome.is_ok() {
            self.schema = Some(schema.to_owned());
        }
        Ok(outcome)
    }

    /// Of the `wanted` values, those that differ from this connection's
    /// (copied only then: this runs before every lent command).
    pub(super) fn differing<'a>(
        &self,
        wanted: impl IntoIterator<Item = (&'a str, &'a Option<String>)>,
    ) -> Variables {
        wanted
            .into_iter()
            .filter(|(name, value)| {
                let current = self.variables.iter().find(|(known, _)| known == name);
                current.map(|(_, current)| current) != Some(*value)
            })
            .map(|(name, value)| (name.to_owned(), value.clone()))
            .collect()
    }

    /// Sets the replayed variables `assignments` names with one hidden
    /// `SET SESSION` (nothing is sent for none). `Err` inside: the
    /// server's refusal.
    pub(super) async fn set_variables(
        &mut self,
        assignments: Variables,
        buffer: &mut BytesMut,
    ) -> Result<Result<(), Vec<u8>>, ServerError> {
        if assignments.is_empty() {
            return Ok(Ok(()));
        }
        let sql = assignments
            .iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name} = '{}'", value.replace('\'', "''")),
                None => format!("{name} = NULL"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let request = format!("\x03SET SESSION {sql}");
        let outcome = self.hidden_command(request.as_bytes(), buffer).await?;
        if outcome.is_ok() {
            for (name, value) in assignments {
                set_variable(&mut self.variables, &name, value);
            }
        }
        Ok(outcome)
    }

    /// Prepares `text` for attache's clients: `Ok(Ok(statement))`, or the
    /// server's ERR payload.
    pub(super) async fn prepare(
        &mut self,
        text: &[u8],
        buffer: &mut BytesMut,
    ) -> Result<Result<ServerStatement, Vec<u8>>, ServerError> {
        let mut out = BytesMut::with_capacity(wire::HEADER + 1 + text.len());
        let mut request = Vec::with_capacity(1 + text.len());
        request.push(command::STMT_PREPARE);
        request.extend_from_slice(text);
        wire::write_packets(&mut out, 0, &request);
        self.stream().write_all(&out).await?;
        let mut reply =
            wire::Reply::to(command::STMT_PREPARE, true).ok_or(WireError::Malformed("prepare"))?;
        let mut packets = BytesMut::new();
        let mut prepared = None;
        while !reply.done() {
            let packet = read_packet(self.stream(), buffer).await?;
            match reply.packet(&packet)? {
                wire::Packet::Prepared {
                    statement,
                    parameters,
                    ..
                } => prepared = Some((statement, parameters)),
                wire::Packet::Err(_) => return Ok(Err(wire::payload(&packet).to_vec())),
                _ => {}
            }
            packets.extend_from_slice(&packet);
        }
        let (id, parameters) = prepared.ok_or(WireError::Unexpected("prepare"))?;
        Ok(Ok(ServerStatement {
            id,
            parameters,
            reply: packets.freeze(),
            types: None,
        }))
    }

    /// Keeps a statement prepared here under `key`; beyond the connection's
    /// maximum the least recently used one not in `keep` is closed
    /// (`COM_STMT_CLOSE`, which has no reply).
    pub(super) async fn remember(
        &mut self,
        key: Arc<[u8]>,
        statement: ServerStatement,
        keep: &[u32],
    ) -> Result<(), ServerError> {
        let room = self.prepared.cap().get() - 1;
        let mut kept = Vec::new();
        let mut closing = Vec::new();
        while self.prepared.len() > room
            && let Some((old_key, old)) = self.prepared.pop_lru()
        {
            if keep.contains(&old.id) && kept.len() < room {
                kept.push((old_key, old));
            } else {
                closing.push(old.id);
            }
        }
        for (old_key, old) in kept {
            self.prepared.push(old_key, old);
        }
        if let Some((_, replaced)) = self.prepared.push(key, statement) {
            closing.push(replaced.id);
        }
        if closing.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        for id in closing {
            let [a, b, c, d] = id.to_le_bytes();
            wire::write_packets(&mut out, 0, &[command::STMT_CLOSE, a, b, c, d]);
        }
        self.stream().write_all(&out).await?;
        Ok(())
    }

    /// Makes the connection clean for its next client: the server resets
    /// the session (`COM_RESET_CONNECTION`), then tracking is switched on
    /// again and the schema set back. `false`: it could not be, close it.
    pub(super) async fn reset(
        &mut self,
        schema: Option<&str>,
        replayed: &[String],
        buffer: &mut BytesMut,
    ) -> bool {
        let reset = async {
            // The reset closes the statements prepared here too.
            self.prepared.clear();
            if self
                .hidden_command(&[command::RESET_CONNECTION], buffer)
                .await?
                .is_err()
            {
                return Ok::<_, ServerError>(false);
            }
            self.track_state(replayed, buffer).await?;
            if let Some(schema) = schema
                && self.use_schema(schema, buffer).await?.is_err()
            {
                return Ok(false);
            }
            Ok(true)
        };
        matches!(reset.await, Ok(true))
    }
}

/// A variable's value as session tracking reports it: `autocommit` as
/// `ON`/`OFF` where `SELECT` says 1/0.
fn normalized(name: &str, value: Option<String>) -> Option<String> {
    match (name, value.as_deref()) {
        ("autocommit", Some("1")) => Some("ON".to_owned()),
        ("autocommit", Some("0")) => Some("OFF".to_owned()),
        _ => value,
    }
}

/// The scramble `plugin` wants for `password` and `nonce`; an empty
/// password is an empty scramble.
fn scramble_for(
    plugin: &AuthPlugin<'_>,
    password: Option<&str>,
    nonce: &[u8],
) -> Result<Vec<u8>, ServerError> {
    let password = password.unwrap_or_default().as_bytes();
    let scramble = match plugin {
        AuthPlugin::MysqlNativePassword => scramble_native(nonce, password).map(|s| s.to_vec()),
        AuthPlugin::CachingSha2Password => scramble_sha256(nonce, password).map(|s| s.to_vec()),
        other => {
            return Err(ServerError::Plugin(
                String::from_utf8_lossy(other.as_bytes()).into_owned(),
            ));
        }
    };
    Ok(scramble.unwrap_or_default())
}

fn refused(payload: &[u8]) -> ServerError {
    let message = wire::parse_err(payload)
        .map(|err| String::from_utf8_lossy(err.message).into_owned())
        .unwrap_or_else(|_| "no message".to_owned());
    ServerError::Refused {
        message,
        payload: payload.to_vec(),
    }
}

/// Reads one whole packet during a login or a command of attache's own.
pub(super) async fn read_packet(
    stream: &mut crate::net::UpstreamStream,
    buffer: &mut BytesMut,
) -> Result<BytesMut, ServerError> {
    loop {
        if let Some(packet) = wire::split_packet(buffer, LOGIN_PACKET_LIMIT)? {
            return Ok(packet);
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
