//! MySQL and MariaDB clients (`protocol: mysql`): with `auth: local` (the
//! default) attache greets the client itself, logs it in, and pools its
//! session over server connections of (schema, user) pools
//! ([`session`]); with `auth: passthrough` the server greets the client
//! and the session is relayed as it is (the TCP route's relay).
//!
//! The greeting offers what attache follows: protocol 4.1, plugin
//! authentication, multi-statements and results, session tracking, connect
//! attributes and local files, and on a listener with `tls:` TLS (the
//! client's SSLRequest, then the listener's own handshake through
//! [`crate::listener::TlsAcceptor`]: certificates, client-certificate checks,
//! identity allow-lists and metrics as TLS up front; a TLS listener takes
//! TLS sessions only); not `CLIENT_DEPRECATE_EOF`, not MariaDB's extended
//! capabilities (their reply formats differ), not compression. Clients log
//! in with `mysql_native_password` or `caching_sha2_password` (its fast
//! path: attache holds the password) against `users`; without users,
//! loopback clients and clients with a certificate the listener verified
//! are trusted as whom they name and attache logs into the server as them.

mod prepared;
mod server;
mod session;
mod statement;

/// The protocol's packets (the `mysqlwire/` crate, fuzzed on its own).
use attache_mysql_wire as wire;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{DatabaseAuth, MysqlListener, PoolMode};
use bytes::BytesMut;
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize as _, MySerialize as _};
use mysql_common::scramble::{scramble_native, scramble_sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::listener::{ConnectionContext, protocol};
use crate::net::ClientStream;
use crate::pooling;
use crate::tcp::TcpRoute;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics, MysqlMetrics};
use server::{Login, ServerError, ServerInfo};
use wire::capability;

/// How TLS to a mysql listener's upstream starts: in-band, with the
/// capabilities attache's server logins ask for.
pub(crate) const START_TLS: crate::upstream::connector::StartTls =
    crate::upstream::connector::StartTls::Mysql {
        capabilities: server::SERVER_CAPABILITIES | capability::CONNECT_WITH_DB,
    };

/// A client must have logged in within this.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest login packet a client may send.
const LOGIN_PACKET_LIMIT: usize = 64 * 1024;

/// What attache's greeting offers clients: what it asks of the server,
/// plus what concerns only the client's side (connect attributes,
/// `interactive` timeouts, a schema at login) and `CLIENT_FOUND_ROWS`,
/// which a client's pool asks of its server connections.
const CLIENT_CAPABILITIES: u32 = server::SERVER_CAPABILITIES
    | capability::FOUND_ROWS
    | capability::CONNECT_WITH_DB
    | capability::INTERACTIVE
    | capability::CONNECT_ATTRS;

/// The length of an SSLRequest packet's payload.
const SSL_REQUEST_LENGTH: usize = 32;

/// `ER_SECURE_TRANSPORT_REQUIRED`.
const SECURE_TRANSPORT_REQUIRED: u16 = 3159;

/// `ER_ACCESS_DENIED_ERROR`.
const ACCESS_DENIED: u16 = 1045;
/// `ER_NOT_SUPPORTED_YET`.
const NOT_SUPPORTED: u16 = 1235;
/// `ER_CON_COUNT_ERROR`: what a client gets when no server connection
/// came within `queue_timeout`.
const NO_CONNECTION: u16 = 1040;
/// `CR_SERVER_LOST`: the server connection failed under a client.
const SERVER_LOST: u16 = 2013;

/// One `mysql` listener: where its sessions go.
pub(crate) struct MysqlFront {
    listener: String,
    metrics: ListenerMetrics,
    route: TcpRoute,
    /// `None` with `auth: passthrough` (each session relayed as it is).
    pooler: Option<Pooler>,
}

// TLS starts after attache's greeting, when the client asks for it (its
// SSLRequest packet).
protocol!(MysqlFront, serve, in_band_tls);

/// What pooled sessions share.
struct Pooler {
    settings: MysqlListener,
    pools: pooling::Pools<Login>,
    metrics: MysqlMetrics,
    /// The server's greeting, once a connection has seen it.
    info: Arc<Mutex<Option<ServerInfo>>>,
    /// The ids attache's greetings give clients.
    next_connection_id: AtomicU32,
    /// Held while a connection learns the server's greeting.
    learning: tokio::sync::Mutex<()>,
    /// The session variables replayed on lent connections, `names`
    /// expanded.
    replayed: Arc<[String]>,
}

/// The variables `SET NAMES` changes.
const NAMES: [&str; 4] = [
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// `replayed_variables` as variable names: `names` is the four `SET NAMES`
/// changes; each name once.
fn replayed_variables(settings: &MysqlListener) -> Arc<[String]> {
    let mut names: Vec<String> = Vec::new();
    for name in &settings.replayed_variables {
        let expanded = match name.as_str() {
            "names" => NAMES.map(str::to_owned).to_vec(),
            other => vec![other.to_owned()],
        };
        for name in expanded {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.into()
}

impl MysqlFront {
    /// The listener's front; its `users_file` is read now.
    ///
    /// # Errors
    /// When the users file cannot be read, has a bad line or a SCRAM
    /// verifier, or names a user that `users` names too.
    pub(crate) fn new(
        route: TcpRoute,
        settings: &MysqlListener,
        metrics: MysqlMetrics,
    ) -> anyhow::Result<Self> {
        let mut settings = settings.clone();
        if let Some(file) = &settings.users_file {
            for (name, password) in crate::userlist::read(file)
                .map_err(|message| anyhow::anyhow!("mysql.users_file: {message}"))?
            {
                if password.starts_with("SCRAM-SHA-256$") {
                    anyhow::bail!(
                        "mysql.users_file: user {name:?} in {} has a SCRAM verifier; a MySQL \
                         login is checked against the password itself",
                        file.display()
                    );
                }
                if settings.users.contains_key(&name) {
                    anyhow::bail!(
                        "mysql.users_file: user {name:?} is both in mysql.users and in {}",
                        file.display()
                    );
                }
                settings.users.insert(name, password);
            }
        }
        let settings = &settings;
        let pool = &settings.pool;
        let pooler = (pool.auth == DatabaseAuth::Local).then(|| Pooler {
            settings: settings.clone(),
            pools: pooling::Pools::new(pooling::Limits {
                size: pool.pool_size,
                min_idle: pool.min_idle,
                queue_timeout: pool.queue_timeout,
                lifetime: pool.server_lifetime,
                idle_timeout: pool.server_idle_timeout,
            }),
            metrics,
            info: Arc::new(Mutex::new(None)),
            next_connection_id: AtomicU32::new(1),
            learning: tokio::sync::Mutex::new(()),
            replayed: replayed_variables(settings),
        });
        Ok(Self {
            listener: route.listener.clone(),
            metrics: route.metrics.clone(),
            route,
            pooler,
        })
    }

    /// Each pool's state for `/upstreams`: listener, pool (`schema/user`),
    /// server connections lent and idle, clients waiting.
    pub(crate) fn pool_states(&self) -> Vec<serde_json::Value> {
        let Some(pooler) = &self.pooler else {
            return Vec::new();
        };
        pooler
            .pools
            .states()
            .into_iter()
            .map(|(pool, (active, idle, waiting))| {
                serde_json::json!({
                    "listener": self.listener,
                    "pool": pool,
                    "mode": pooler.settings.pool.pool_mode.as_str(),
                    "pool_size": pooler.settings.pool.pool_size,
                    "active": active,
                    "idle": idle,
                    "waiting": waiting,
                })
            })
            .collect()
    }
}

impl Pooler {
    /// The pool of `schema` for a client logged in as `user`;
    /// `found_rows`: the client asked for `CLIENT_FOUND_ROWS` (an UPDATE's
    /// count is of the rows it matched, not changed), which a server
    /// connection has for its whole life, so such clients have pools of
    /// their own.
    fn pool(
        &self,
        route: &TcpRoute,
        schema: &str,
        user: &str,
        found_rows: bool,
    ) -> Arc<pooling::Pool<Login>> {
        let settings = &self.settings.pool;
        let server_user = settings.server_user.as_deref().unwrap_or(user);
        let variant = if found_rows { "found_rows" } else { "" };
        self.pools.pool(schema, server_user, variant, |name| {
            let login = Login {
                found_rows,
                upstream: route.upstream.clone(),
                user: server_user.to_owned(),
                schema: (!schema.is_empty()).then(|| schema.to_owned()),
                // The client's own password serves a login as the client.
                password: settings.server_password.clone().or_else(|| {
                    settings
                        .server_user
                        .is_none()
                        .then(|| self.settings.users.get(user).cloned())
                        .flatten()
                }),
                info: self.info.clone(),
                max_prepared_statements: std::num::NonZeroUsize::new(
                    settings.max_prepared_statements,
                )
                .unwrap_or(std::num::NonZeroUsize::MIN),
                logged_in: std::sync::atomic::AtomicBool::new(false),
                replayed: self.replayed.clone(),
            };
            (login, self.metrics.pool.pool(name))
        })
    }

    /// `db.system.name` for spans: `mariadb` when the server says it is.
    fn system(&self) -> &'static str {
        let info = self
            .info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match info.as_ref() {
            Some(info) if info.version.windows(7).any(|part| part == b"MariaDB") => "mariadb",
            _ => "mysql",
        }
    }

    fn info(&self) -> Option<ServerInfo> {
        self.info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn serve(client: ClientStream, mut context: ConnectionContext, front: Arc<MysqlFront>) {
    let route = &front.route;
    let Some(pooler) = &front.pooler else {
        return Box::pin(crate::tcp::forward(client, context, route, &[])).await;
    };
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        Box::pin(log_in(client, &mut context, route, pooler)),
    )
    .await;
    let mut session = match login {
        Ok(Ok(session)) => session,
        Ok(Err(result)) => return route.metrics.closed(result),
        Err(_) => {
            tracing::debug!(listener = %route.listener, client = %context.client_address, "closing: no MySQL login within {LOGIN_TIMEOUT:?}");
            return route.metrics.closed(CloseResult::IdleTimeout);
        }
    };
    let result = session.run().await;
    route.metrics.closed(result);
}

/// A client's login: attache's greeting, the client's answer, the password
/// check and the pool its session uses.
async fn log_in<'a>(
    mut client: ClientStream,
    context: &mut ConnectionContext,
    route: &'a TcpRoute,
    pooler: &'a Pooler,
) -> Result<session::Session<'a>, CloseResult> {
    let address = context.client_address;
    let refuse = async |client: &mut ClientStream, sequence: u8, code: u16, message: String| {
        limited!(
            route.metrics.log_limit,
            "mysql_login",
            info!(listener = %route.listener, client = %address, %message, "refused a MySQL client at login")
        );
        let mut out = BytesMut::new();
        wire::err_packet(&mut out, sequence, code, "28000", &message);
        let _ = client.write_all(&out).await;
        CloseResult::Error
    };
    let info = match pooler.info() {
        Some(info) => info,
        None => match learn_server(route, pooler).await {
            Ok(info) => info,
            Err(error) => {
                let message = format!("attache: no MySQL server: {error}");
                let mut out = BytesMut::new();
                wire::err_packet(&mut out, 0, 2003, "HY000", &message);
                let _ = client.write_all(&out).await;
                limited!(
                    route.metrics.log_limit,
                    "mysql_no_server",
                    warn!(listener = %route.listener, client = %address, %error, "no MySQL server for a client's greeting")
                );
                return Err(CloseResult::UpstreamUnavailable);
            }
        },
    };
    // The login's challenge: from the system's CSPRNG, in 1..=127 as
    // servers send it (no NUL: clients read it as a C string).
    let mut nonce = [0u8; 20];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        return Err(CloseResult::Error);
    }
    let nonce = nonce.map(|byte| byte % 127 + 1);
    let connection_id = pooler.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let mut scramble_2 = nonce[8..].to_vec();
    scramble_2.push(0);
    let offered = match context.tls {
        Some(_) => CLIENT_CAPABILITIES | capability::SSL,
        None => CLIENT_CAPABILITIES,
    };
    let greeting = HandshakePacket::new(
        10,
        &info.version[..],
        connection_id,
        nonce[..8].try_into().unwrap_or_default(),
        Some(scramble_2),
        CapabilityFlags::from_bits_truncate(offered),
        info.collation,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(&b"mysql_native_password"[..]),
    );
    let mut payload = Vec::new();
    greeting.serialize(&mut payload);
    let mut out = BytesMut::new();
    wire::write_packets(&mut out, 0, &payload);
    if client.write_all(&out).await.is_err() {
        return Err(CloseResult::Error);
    }
    let Ok(mut response) = read_client_packet(&mut client).await else {
        return Err(CloseResult::Error);
    };
    // An SSLRequest: the client's capabilities with SSL, and no more.
    if wire::payload(&response).len() == SSL_REQUEST_LENGTH
        && client_capabilities(&response) & capability::SSL != 0
    {
        let sequence = wire::sequence(&response).wrapping_add(1);
        client = match (context.tls.take(), client) {
            // The SSLRequest was read exactly: what follows on the socket
            // (the client sends its ClientHello at once) is the handshake's.
            (Some(tls), ClientStream::Plain(stream)) => {
                match tls.accept(stream, address).await {
                    Some(upgraded) => upgraded,
                    // Counted and logged as a failed handshake.
                    None => return Err(CloseResult::TlsHandshakeFailed),
                }
            }
            (_, mut plain) => {
                let message = "attache: TLS is not offered here".to_owned();
                return Err(refuse(&mut plain, sequence, NOT_SUPPORTED, message).await);
            }
        };
        response = match read_client_packet(&mut client).await {
            Ok(response) => response,
            Err(()) => return Err(CloseResult::Error),
        };
    }
    let mut sequence = wire::sequence(&response).wrapping_add(1);
    if context.tls.is_some() {
        // A TLS listener takes TLS sessions only.
        let message = "attache: this listener accepts TLS connections only".to_owned();
        return Err(refuse(&mut client, sequence, SECURE_TRANSPORT_REQUIRED, message).await);
    }
    let Ok(handshake) = HandshakeResponse::deserialize((), &mut ParseBuf(wire::payload(&response)))
    else {
        let message = "attache: malformed handshake response".to_owned();
        return Err(refuse(&mut client, sequence, ACCESS_DENIED, message).await);
    };
    let capabilities = handshake.capabilities().bits();
    if capabilities & capability::PROTOCOL_41 == 0 {
        let message = "attache: clients must speak protocol 4.1".to_owned();
        return Err(refuse(&mut client, sequence, NOT_SUPPORTED, message).await);
    }
    let user = String::from_utf8_lossy(handshake.user()).into_owned();
    let schema = handshake
        .db_name()
        .map(|schema| String::from_utf8_lossy(schema).into_owned())
        .unwrap_or_default();
    if pooler.settings.users.is_empty() {
        // Without users: loopback clients, and clients whose certificate
        // the listener verified (a front door with `client_ca`).
        if !address.ip().is_loopback() && client.peer_identity().is_none() {
            let message = "attache: no users are configured (mysql.users); only loopback clients \
                           and clients with a verified certificate are let in without one"
                .to_owned();
            return Err(refuse(&mut client, sequence, ACCESS_DENIED, message).await);
        }
    } else {
        let password = pooler.settings.users.get(&user).map(String::as_str);
        let plugin = handshake
            .auth_plugin()
            .cloned()
            .unwrap_or(AuthPlugin::MysqlNativePassword);
        let mut answer = handshake.scramble_buf().to_vec();
        let mut plugin_used = plugin;
        if !matches!(
            plugin_used,
            AuthPlugin::MysqlNativePassword | AuthPlugin::CachingSha2Password
        ) {
            // Ask for the plugin attache checks, with the same nonce.
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"mysql_native_password\0");
            switch.extend_from_slice(&nonce);
            switch.push(0);
            let mut out = BytesMut::new();
            wire::write_packets(&mut out, sequence, &switch);
            if client.write_all(&out).await.is_err() {
                return Err(CloseResult::Error);
            }
            let Ok(packet) = read_client_packet(&mut client).await else {
                return Err(CloseResult::Error);
            };
            sequence = wire::sequence(&packet).wrapping_add(1);
            answer = wire::payload(&packet).to_vec();
            plugin_used = AuthPlugin::MysqlNativePassword;
        }
        if !password_matches(&plugin_used, password, &nonce, &answer) {
            let message = format!("Access denied for user '{user}' (attache)");
            return Err(refuse(&mut client, sequence, ACCESS_DENIED, message).await);
        }
        if plugin_used == AuthPlugin::CachingSha2Password {
            // The fast path succeeded; the OK follows.
            let mut out = BytesMut::new();
            sequence = wire::write_packets(&mut out, sequence, &[0x01, 0x03]);
            if client.write_all(&out).await.is_err() {
                return Err(CloseResult::Error);
            }
        }
    }
    let found_rows = capabilities & capability::FOUND_ROWS != 0;
    let pool = pooler.pool(route, &schema, &user, found_rows);
    let login_variables = login_character_set(&pooler.replayed, handshake.collation());
    let mut session = session::Session::new(
        client,
        route,
        pooler,
        pool,
        session::Client {
            address,
            schema: (!schema.is_empty()).then_some(schema),
            session_track: capabilities & capability::SESSION_TRACK != 0,
            variables: login_variables.clone(),
            login_variables,
        },
    );
    // The server's own answer to this login (unknown schema, user refused)
    // reaches the client now, not at its first statement.
    if let Err(payload) = session.check_login().await {
        let mut out = BytesMut::new();
        wire::write_packets(&mut out, sequence, &payload);
        let _ = session.client().write_all(&out).await;
        return Err(CloseResult::UpstreamUnavailable);
    }
    let mut out = BytesMut::new();
    wire::ok_packet(&mut out, sequence, wire::status::AUTOCOMMIT);
    if session.client().write_all(&out).await.is_err() {
        return Err(CloseResult::Error);
    }
    Ok(session)
}

/// The character set variables a client's login asks for (its handshake's
/// collation), when those variables are replayed: what `SET NAMES` with
/// that collation would make them.
fn login_character_set(replayed: &[String], collation: u8) -> server::Variables {
    if !NAMES
        .iter()
        .all(|name| replayed.iter().any(|replayed| replayed == name))
    {
        return Vec::new();
    }
    let id = mysql_common::collations::CollationId::from(u16::from(collation));
    if id == mysql_common::collations::CollationId::UNKNOWN_COLLATION_ID {
        return Vec::new();
    }
    let collation = mysql_common::collations::Collation::resolve(id);
    let charset = Some(collation.charset().to_owned());
    vec![
        ("character_set_client".to_owned(), charset.clone()),
        ("character_set_connection".to_owned(), charset.clone()),
        ("character_set_results".to_owned(), charset),
        (
            "collation_connection".to_owned(),
            Some(collation.collation().to_owned()),
        ),
    ]
}

/// Whether `answer` is what `plugin` makes of the user's password and
/// `nonce`. An unknown user is checked against a random password, so the
/// answer takes the same work and fails.
fn password_matches(
    plugin: &AuthPlugin<'_>,
    password: Option<&str>,
    nonce: &[u8],
    answer: &[u8],
) -> bool {
    let unknown: String;
    let password = match password {
        Some(password) => password,
        None => {
            unknown = (0..24).map(|_| fastrand::alphanumeric()).collect();
            &unknown
        }
    };
    let expected = match plugin {
        AuthPlugin::CachingSha2Password => {
            scramble_sha256(nonce, password.as_bytes()).map(|scramble| scramble.to_vec())
        }
        _ => scramble_native(nonce, password.as_bytes()).map(|scramble| scramble.to_vec()),
    }
    .unwrap_or_default();
    pooling::same(&expected, answer)
}

/// Connects once to learn the server's version and collation (what the
/// greeting tells clients), reading only its greeting. Any later login
/// keeps the record current.
async fn learn_server(route: &TcpRoute, pooler: &Pooler) -> Result<ServerInfo, ServerError> {
    // One probe at a time: the first clients of a new listener arrive
    // together, and each would otherwise connect.
    let _learning = pooler.learning.lock().await;
    if let Some(info) = pooler.info() {
        return Ok(info);
    }
    let mut connection = route.upstream.connect().await?;
    let mut buffer = BytesMut::new();
    let greeting = match connection.take_greeting() {
        Some(greeting) => BytesMut::from(&greeting[..]),
        None => server::read_packet(connection.stream(), &mut buffer).await?,
    };
    let payload = wire::payload(&greeting);
    let handshake = HandshakePacket::deserialize((), &mut ParseBuf(payload))
        .map_err(|_| wire::WireError::Malformed("initial handshake"))?;
    let info = ServerInfo {
        version: handshake.server_version_ref().to_vec(),
        collation: handshake.default_collation(),
    };
    *pooler
        .info
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(info.clone());
    Ok(info)
}

/// The capability flags a client's first login packet names.
fn client_capabilities(packet: &[u8]) -> u32 {
    match wire::payload(packet).get(..4) {
        Some(flags) => u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]),
        None => 0,
    }
}

/// Reads one login packet from the client, exactly (bounded, nothing read
/// past it): after an SSLRequest the socket's next bytes are TLS, and a
/// client that sends a command right after its login keeps it.
async fn read_client_packet(client: &mut ClientStream) -> Result<BytesMut, ()> {
    let mut packet = BytesMut::zeroed(wire::HEADER);
    client.read_exact(&mut packet).await.map_err(drop)?;
    let (length, _) = wire::header(&packet).ok_or(())?;
    if length > LOGIN_PACKET_LIMIT {
        return Err(());
    }
    packet.resize(wire::HEADER + length, 0);
    client
        .read_exact(&mut packet[wire::HEADER..])
        .await
        .map_err(drop)?;
    Ok(packet)
}

/// The pool mode's effect on a session: whether a server connection goes
/// back after each transaction.
fn pools_transactions(settings: &MysqlListener) -> bool {
    settings.pool.pool_mode == PoolMode::Transaction
}
