//! One pooled MySQL client session. The protocol is a conversation: a
//! command, then the server's whole reply ([`wire::Reply`] says where it
//! ends). Each command gets a server connection (the one the session
//! holds, or one lent from its pool); after the reply, in transaction
//! mode, the connection goes back unless a transaction is open (the
//! server's `SERVER_STATUS_IN_TRANS`), the session is pinned, or the
//! reply gave an insert id the next statement may ask for
//! (`LAST_INSERT_ID()`).
//!
//! A session's schema follows it: `USE` and `COM_INIT_DB` change it (the
//! server's session tracking reports the change) and a lent connection
//! in another schema is switched first. Session state a statement leaves
//! on its connection (see [`super::statement`], and the server's state
//! tracking for the rest) pins the session to that connection until it
//! ends; a connection that held state, or an open transaction, is reset
//! (`COM_RESET_CONNECTION`) before it serves anyone else.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::prepared::{self, ClientStatement, ClientStatements, StatementKey};
use super::server::{self, Login, ServerError, ServerStatement};
use super::statement;
use super::wire::{self, Packet, Reply, StateChange, command, status};
use super::{NO_CONNECTION, NOT_SUPPORTED, Pooler, SERVER_LOST, pools_transactions};
use crate::net::ClientStream;
use crate::pooling::{Lease, Pool, PoolError};
use crate::tcp::TcpRoute;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, MysqlPin};

/// The largest command a client may send (MySQL's own
/// `max_allowed_packet` is 16 MiB by default, 1 GiB at most).
const MAX_COMMAND: usize = 64 << 20;
/// Replies are written to the client in pieces of about this size.
const WRITE_BATCH: usize = 64 << 10;
/// Room read into at once from the server.
const SERVER_READ: usize = 16 << 10;
/// `ER_NET_PACKET_TOO_LARGE`.
const PACKET_TOO_LARGE: u16 = 1153;
/// `ER_UNKNOWN_COM_ERROR`.
const UNKNOWN_COMMAND: u16 = 1047;
/// Errors after which the server closes the connection: `ER_SERVER_SHUTDOWN`,
/// `ER_CONNECTION_KILLED`, MySQL's `ER_CLIENT_INTERACTION_TIMEOUT`.
const CONNECTION_ENDED: [u16; 3] = [1053, 1927, 4031];

/// Who the client is, as its login said.
pub(super) struct Client {
    pub(super) address: SocketAddr,
    /// The schema the client is in (its login's, then its `USE`s).
    pub(super) schema: Option<String>,
    /// Whether the client reads OK packets with session-state fields.
    pub(super) session_track: bool,
    /// The replayed variables the client set (its login's character set
    /// among them), by name.
    pub(super) variables: server::Variables,
    /// Those its login set: what `COM_RESET_CONNECTION` goes back to.
    pub(super) login_variables: server::Variables,
}

pub(super) struct Session<'a> {
    client: ClientStream,
    who: Client,
    route: &'a TcpRoute,
    pooler: &'a Pooler,
    pool: Arc<Pool<Login>>,
    lease: Option<Lease<Login>>,
    from_client: BytesMut,
    from_server: BytesMut,
    to_client: BytesMut,
    /// What keeps the session on its server connection for good.
    pin: Option<MysqlPin>,
    /// Keep the connection for the next command too (it may read
    /// `LAST_INSERT_ID()`).
    hold_next: bool,
    /// The server status after the last reply.
    status: u16,
    /// When the open transaction began.
    transaction_started: Option<Instant>,
    /// The error code the last reply ended with, if any.
    last_error: Option<u16>,
    /// The sequence id of attache's own packet in the current reply (one
    /// past the last one relayed).
    reply_sequence: u8,
    /// The client's binary-protocol prepared statements (transaction mode).
    statements: ClientStatements,
    /// The `COM_STMT_PREPARE` being answered by the server.
    preparing: Option<Preparing>,
    /// The lent connection's statements holding `COM_STMT_SEND_LONG_DATA`
    /// not yet executed: the connection stays lent until they are.
    long_data: Vec<u32>,
}

/// A client's `COM_STMT_PREPARE` on its way through the server.
struct Preparing {
    key: StatementKey,
    /// The server's statement id and parameter count, once it answered.
    prepared: Option<(u32, u16)>,
    /// The server's reply, kept for clients that prepare the same text on
    /// the same connection.
    reply: BytesMut,
}

enum End {
    /// The client closed (or quit).
    Client,
    Failed(CloseResult),
    /// The lent server connection failed; the client has its error.
    /// [`Session::forward`] decides whether the session goes on.
    ServerLost,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        client: ClientStream,
        route: &'a TcpRoute,
        pooler: &'a Pooler,
        pool: Arc<Pool<Login>>,
        who: Client,
    ) -> Self {
        Self {
            client,
            who,
            route,
            pooler,
            pool,
            lease: None,
            from_client: BytesMut::new(),
            from_server: BytesMut::new(),
            to_client: BytesMut::new(),
            pin: None,
            hold_next: false,
            status: status::AUTOCOMMIT,
            transaction_started: None,
            last_error: None,
            reply_sequence: 1,
            statements: ClientStatements::default(),
            preparing: None,
            long_data: Vec::new(),
        }
    }

    pub(super) fn client(&mut self) -> &mut ClientStream {
        &mut self.client
    }

    /// Makes sure the pool can log in for this client: until one of its
    /// connections has, one is opened (and kept, idle). `Err`: the
    /// server's ERR packet payload.
    pub(super) async fn check_login(&mut self) -> Result<(), Vec<u8>> {
        if self
            .pool
            .connector()
            .logged_in
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        match Box::pin(self.pool.get()).await {
            Ok(lease) => {
                drop(lease);
                Ok(())
            }
            Err(error) => Err(self.pool_error_payload(&error)),
        }
    }

    /// Serves the session to its end, then gives its server connection
    /// back clean.
    pub(super) async fn run(&mut self) -> CloseResult {
        let end = self.serve().await;
        self.give_back().await;
        match end {
            End::Client => CloseResult::Ok,
            End::Failed(result) => result,
            End::ServerLost => CloseResult::UpstreamUnavailable,
        }
    }

    async fn serve(&mut self) -> End {
        loop {
            let message = match self.read_command().await {
                Ok(Some(message)) => message,
                Ok(None) => return End::Client,
                Err(end) => return end,
            };
            let Some(&command) = message.get(wire::HEADER) else {
                return self
                    .refuse(UNKNOWN_COMMAND, "attache: an empty command")
                    .await;
            };
            let handled = match command {
                command::QUIT => return End::Client,
                // Answered without a server connection: attache is there.
                command::PING if self.lease.is_none() => self.answer_ok().await,
                command::RESET_CONNECTION => self.reset_connection().await,
                command::CHANGE_USER => {
                    let message = "attache: COM_CHANGE_USER is not supported by a pooling \
                                   listener; connect as the other user";
                    self.answer_err(NOT_SUPPORTED, message).await
                }
                command::STMT_CLOSE if pools_transactions(&self.pooler.settings) => {
                    // The server keeps the statement for whoever prepares it
                    // next; a close has no reply.
                    if let Some(id) = wire::statement_id(wire::payload(&message)) {
                        self.statements.remove(id);
                    }
                    Ok(())
                }
                // Replication, shutdown, the long-gone commands, and MariaDB's
                // bulk execution (attache does not offer it).
                0x00
                | 0x08
                | 0x0b
                | 0x0f
                | 0x10
                | 0x12
                | 0x13
                | 0x14
                | 0x15
                | 0x1d
                | 0x1e
                | command::STMT_BULK_EXECUTE => {
                    let message = "attache: this command is not supported by a pooling listener";
                    self.answer_err(NOT_SUPPORTED, message).await
                }
                _ => self.forward(message, command).await,
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// Reads the client's next whole command; `None` when it closed.
    async fn read_command(&mut self) -> Result<Option<BytesMut>, End> {
        loop {
            match wire::split_message(&mut self.from_client, MAX_COMMAND) {
                Ok(Some(message)) => {
                    if self.from_client.is_empty() {
                        self.from_client = BytesMut::new();
                    }
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(error) => {
                    let message = format!("attache: {error}");
                    return Err(self.refuse(PACKET_TOO_LARGE, &message).await);
                }
            }
            let read = read_client(&mut self.client, &mut self.from_client);
            match tokio::time::timeout(self.route.idle_timeout, read).await {
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(listener = %self.route.listener, client = %self.who.address, "closing an idle MySQL client (idle_timeout)");
                    return Err(End::Failed(CloseResult::IdleTimeout));
                }
            }
        }
    }

    /// Sends a command to a server connection and its reply to the client.
    /// When the connection fails, the session goes on only if nothing of
    /// it lived there.
    async fn forward(&mut self, message: BytesMut, command: u8) -> Result<(), End> {
        match self.exchange(message, command).await {
            Err(End::ServerLost) => self.after_server_lost(),
            other => other,
        }
    }

    async fn exchange(&mut self, message: BytesMut, command: u8) -> Result<(), End> {
        self.hold_next = false;
        self.reply_sequence = 1;
        self.preparing = None;
        if !self.lend().await? {
            return Ok(());
        }
        if !self.switch_schema().await? || !self.replay_variables().await? {
            return Ok(());
        }
        // A query's text, read where it lies (copied only when the client
        // split it over packets).
        let query = (command == command::QUERY).then(|| wire::message_payload(&message));
        let query_text = query.as_deref().map(|payload| &payload[1..]);
        let statement = match command {
            command::QUERY => {
                statement::scan(query_text.unwrap_or_default(), &self.pooler.replayed)
            }
            command::STMT_PREPARE => statement::Statement::command("PREPARE", None),
            command::STMT_EXECUTE => statement::Statement::command("EXECUTE", None),
            command::SET_OPTION => {
                statement::Statement::command("OTHER", Some(MysqlPin::SetOption))
            }
            _ => statement::Statement::command("OTHER", None),
        };
        if let Some(reason) = statement.pin {
            self.pin_for(reason);
        }
        // A replayable SET on a connection whose server does not report
        // the variables' values: they cannot follow the client.
        if statement.replay && self.server()?.baseline.is_empty() {
            self.pin_for(MysqlPin::Set);
        }
        // The statement's text for its span, only when asked for and traced:
        // the query's, or the text of the prepared statement executed.
        let traced = self.pooler.settings.trace_query_text && self.route.tracer.is_some();
        let text = match (traced, query_text) {
            (false, _) => None,
            (true, Some(text)) => Some(text),
            (true, None) if command == command::STMT_EXECUTE => {
                wire::statement_id(wire::payload(&message))
                    .and_then(|id| self.statements.get_mut(id))
                    .map(|statement| statement.key.text())
            }
            (true, None) => None,
        }
        .map(|text| crate::sql_text::sanitize(text, crate::sql_text::Dialect::Mysql));
        drop(query);
        let started = Instant::now();
        let translated = pools_transactions(&self.pooler.settings)
            && matches!(
                command,
                command::STMT_PREPARE
                    | command::STMT_EXECUTE
                    | command::STMT_SEND_LONG_DATA
                    | command::STMT_RESET
                    | command::STMT_FETCH
            );
        let message = if translated {
            match self.statement_message(message, command).await? {
                Some(message) => message,
                None => {
                    // Answered by attache.
                    self.pooler.metrics.statements.count(statement.kind);
                    self.release_when_free();
                    return Ok(());
                }
            }
        } else {
            message
        };
        let written = self.server()?.stream().write_all(&message).await;
        if let Err(error) = written {
            return Err(self.server_failed(&error.to_string()).await);
        }
        drop(message);
        let Some(reply) = Reply::to(command, true) else {
            // No reply (closing or feeding a prepared statement).
            return Ok(());
        };
        self.last_error = None;
        self.relay(reply, statement).await?;
        if let Some(preparing) = self.preparing.take() {
            self.prepared(preparing).await?;
        }
        let metrics = &self.pooler.metrics;
        let took = started.elapsed();
        metrics.statements.count(statement.kind);
        metrics
            .statements
            .query_duration
            .observe(took.as_secs_f64());
        if let Some(tracer) = &self.route.tracer {
            let error = self.last_error.map(|code| code.to_string());
            crate::telemetry::traces::record_database_span(
                tracer,
                &self.route.listener,
                self.who.schema.as_deref().unwrap_or_default(),
                std::time::SystemTime::now() - took,
                crate::telemetry::traces::DatabaseStatement {
                    system: self.pooler.system(),
                    operation: (statement.kind != "OTHER").then_some(statement.kind),
                    error: error.as_deref(),
                    text: text.as_deref(),
                },
            );
        }
        if self
            .last_error
            .is_some_and(|code| CONNECTION_ENDED.contains(&code))
        {
            // The server said why in its error, which the client has.
            self.drop_failed_server("the server ended the connection");
            return Err(End::ServerLost);
        }
        let in_transaction = self.status & status::IN_TRANS != 0;
        match (self.transaction_started, in_transaction) {
            (None, true) => self.transaction_started = Some(started),
            (Some(began), false) => {
                metrics.statements.transactions.inc();
                metrics
                    .statements
                    .transaction_duration
                    .observe(began.elapsed().as_secs_f64());
                self.transaction_started = None;
            }
            _ => {}
        }
        self.release_when_free();
        Ok(())
    }

    /// In transaction mode, gives the lent connection back when nothing
    /// keeps the session on it: no transaction, pin, insert id the next
    /// statement may read, or long data waiting for its execution.
    fn release_when_free(&mut self) {
        if pools_transactions(&self.pooler.settings)
            && self.pin.is_none()
            && !self.hold_next
            && self.status & status::IN_TRANS == 0
            && self.long_data.is_empty()
        {
            self.lease = None;
            if self.from_server.is_empty() {
                self.from_server = BytesMut::new();
            }
        }
    }

    /// A command naming a prepared statement, made ready for the lent
    /// connection (see [`prepared`]); `None` when attache answered it
    /// itself (a statement this connection already prepared, an unknown
    /// statement, or one the server would not prepare again).
    async fn statement_message(
        &mut self,
        message: BytesMut,
        command: u8,
    ) -> Result<Option<BytesMut>, End> {
        if command == command::STMT_PREPARE {
            // The lent connection's replayed variables are the client's now.
            let Some(lease) = self.lease.as_mut() else {
                return Err(End::Failed(CloseResult::Error));
            };
            let key = StatementKey::new(
                self.who.schema.as_deref(),
                &lease.connection().variables,
                &wire::message_payload(&message)[1..],
            );
            return self.prepare_statement(message, key).await;
        }
        let named = wire::statement_id(&wire::message_payload(&message));
        let Some(client_id) = named.filter(|&id| self.statements.get_mut(id).is_some()) else {
            if command != command::STMT_SEND_LONG_DATA {
                // (Long data for an unknown statement: the server would
                // report it at the execution, which attache refuses.)
                let message = format!(
                    "Unknown prepared statement handler ({}) given to {}",
                    named.unwrap_or_default(),
                    statement_command_name(command)
                );
                self.answer_err(prepared::UNKNOWN_STATEMENT, &message)
                    .await?;
            }
            return Ok(None);
        };
        let server_id = match self.server_statement(client_id).await? {
            Ok(id) => id,
            Err(payload) => {
                // The statement cannot be prepared here (its tables changed,
                // say): the server's error answers the command.
                if command != command::STMT_SEND_LONG_DATA {
                    wire::write_packets(&mut self.to_client, 1, &payload);
                    self.flush().await?;
                }
                return Ok(None);
            }
        };
        let (Some(lease), Some(client)) = (self.lease.as_mut(), self.statements.get_mut(client_id))
        else {
            return Err(End::Failed(CloseResult::Error));
        };
        let Some(server) = lease.connection().prepared.get_mut(&client.key.bytes) else {
            return Err(End::Failed(CloseResult::Error));
        };
        let message = prepared::for_server(message, command, client, server);
        match command {
            command::STMT_SEND_LONG_DATA if !self.long_data.contains(&server_id) => {
                self.long_data.push(server_id);
            }
            // The server uses up long data when it executes (or resets).
            command::STMT_EXECUTE | command::STMT_RESET => {
                self.long_data.retain(|&id| id != server_id);
            }
            _ => {}
        }
        Ok(Some(message))
    }

    /// A client's `COM_STMT_PREPARE`: answered from the lent connection's
    /// statement when it has prepared the same text the same way
    /// ([`StatementKey`]), else sent on (and the reply followed, [`Self::prepared`]).
    async fn prepare_statement(
        &mut self,
        message: BytesMut,
        key: StatementKey,
    ) -> Result<Option<BytesMut>, End> {
        if self.statements.full(&key) {
            let message = format!(
                "attache: Can't create more than {} prepared statements, or {} MiB of their \
                 text, in one session",
                prepared::MAX_CLIENT_STATEMENTS,
                prepared::MAX_CLIENT_TEXT >> 20
            );
            self.answer_err(prepared::TOO_MANY_STATEMENTS, &message)
                .await?;
            return Ok(None);
        }
        let Some(lease) = self.lease.as_mut() else {
            return Err(End::Failed(CloseResult::Error));
        };
        let Some(kept) = lease.connection().prepared.get(&key.bytes) else {
            self.preparing = Some(Preparing {
                key,
                prepared: None,
                reply: BytesMut::new(),
            });
            return Ok(Some(message));
        };
        let parameters = kept.parameters;
        prepared::retell_prepared(
            &kept.reply,
            self.statements.next_id(),
            self.status,
            &mut self.to_client,
        );
        self.statements.add(ClientStatement {
            key,
            parameters,
            types: None,
        });
        self.flush().await?;
        Ok(None)
    }

    /// The server answered a client's prepare: the statement is the
    /// client's (under the id its reply said) and the connection's.
    async fn prepared(&mut self, preparing: Preparing) -> Result<(), End> {
        let Some((id, parameters)) = preparing.prepared else {
            return Ok(());
        };
        let statement = ServerStatement {
            id,
            parameters,
            reply: preparing.reply.freeze(),
            types: None,
        };
        let keep = self.long_data.clone();
        let remembered = self
            .server()?
            .remember(preparing.key.bytes.clone(), statement, &keep)
            .await;
        if let Err(error) = remembered {
            return Err(self.server_failed(&error.to_string()).await);
        }
        self.statements.add(ClientStatement {
            key: preparing.key,
            parameters,
            types: None,
        });
        Ok(())
    }

    /// The lent connection's id for the client's statement `client_id`,
    /// prepared there first when it is not (in the schema and with the
    /// replayed variables the client prepared it with). `Err`: the
    /// server's refusal.
    async fn server_statement(&mut self, client_id: u32) -> Result<Result<u32, Vec<u8>>, End> {
        let Some(client) = self.statements.get_mut(client_id) else {
            return Err(End::Failed(CloseResult::Error));
        };
        let Some(lease) = self.lease.as_mut() else {
            return Err(End::Failed(CloseResult::Error));
        };
        let server = lease.connection();
        if let Some(kept) = server.prepared.get(&client.key.bytes) {
            return Ok(Ok(kept.id));
        }
        let key = client.key.bytes.clone();
        let schema = client.key.schema.clone();
        let variables = client.key.variables();
        let text = client.key.text().to_vec();
        let buffer = &mut self.from_server;
        let previous_schema = server.schema.clone();
        let previous_variables = server.variables.clone();
        let outcome = async {
            // Read as the client's prepare was: in its schema, with its
            // replayed variables.
            let mut refused = None;
            if let Some(schema) = &schema
                && let Err(payload) = server.use_schema(schema, buffer).await?
            {
                refused = Some(payload);
            }
            let assignments =
                server.differing(variables.iter().map(|(name, value)| (name.as_str(), value)));
            if refused.is_none()
                && let Err(payload) = server.set_variables(assignments, buffer).await?
            {
                refused = Some(payload);
            }
            let prepared = match refused {
                Some(payload) => Err(payload),
                None => server.prepare(&text, buffer).await?,
            };
            // Back to the client's own (a refusal here, the schema gone,
            // say, is reported by the next command's switch).
            let back = server.differing(
                previous_variables
                    .iter()
                    .map(|(name, value)| (name.as_str(), value)),
            );
            let _ = server.set_variables(back, buffer).await?;
            if let Some(previous) = &previous_schema {
                let _ = server.use_schema(previous, buffer).await?;
            }
            let statement = match prepared {
                Ok(statement) => statement,
                Err(payload) => return Ok(Err(payload)),
            };
            let id = statement.id;
            server.remember(key, statement, &self.long_data).await?;
            Ok::<_, ServerError>(Ok(id))
        };
        match outcome.await {
            Ok(outcome) => Ok(outcome),
            Err(error) => Err(self.server_failed(&error.to_string()).await),
        }
    }

    /// The server's reply, packet by packet, to the client: batched
    /// writes, OK packets told the client's way, session state read.
    async fn relay(
        &mut self,
        mut reply: Reply,
        statement: statement::Statement,
    ) -> Result<(), End> {
        let deadline = self
            .pooler
            .settings
            .pool
            .query_timeout
            .map(|timeout| Instant::now() + timeout);
        let mut killed = false;
        loop {
            loop {
                let packet = match wire::split_packet(&mut self.from_server, wire::MAX_PAYLOAD) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(error) => return Err(self.server_failed(&error.to_string()).await),
                };
                let outcome = match reply.packet(&packet) {
                    Ok(outcome) => outcome,
                    Err(error) => return Err(self.server_failed(&error.to_string()).await),
                };
                self.reply_sequence = wire::sequence(&packet).wrapping_add(1);
                if let Some(preparing) = self.preparing.as_mut() {
                    preparing.reply.extend_from_slice(&packet);
                }
                match outcome {
                    Packet::Ok(ok) => {
                        self.status = ok.status;
                        if ok.last_insert_id != 0 {
                            self.hold_next = true;
                        }
                        if ok.status & status::SESSION_STATE_CHANGED != 0 {
                            self.session_state(ok.state_changes, statement);
                        }
                        if !self.who.session_track
                            && (!ok.info.is_empty() || !ok.state_changes.is_empty())
                        {
                            let told = wire::ok_without_session_track(&ok, wire::sequence(&packet));
                            self.to_client.extend_from_slice(&told);
                        } else {
                            self.to_client.extend_from_slice(&packet);
                        }
                    }
                    Packet::Eof(status) => {
                        self.status = status;
                        if status & status::CURSOR_EXISTS != 0 {
                            self.pin_for(MysqlPin::Cursor);
                        }
                        self.to_client.extend_from_slice(&packet);
                    }
                    Packet::Err(err) => {
                        self.pooler.metrics.error(err.code);
                        self.last_error = Some(err.code);
                        self.to_client.extend_from_slice(&packet);
                    }
                    Packet::LocalInfile => {
                        self.to_client.extend_from_slice(&packet);
                        self.flush().await?;
                        self.send_file().await?;
                        reply.file_sent();
                    }
                    Packet::Prepared {
                        statement,
                        parameters,
                        ..
                    } => {
                        let at = self.to_client.len();
                        self.to_client.extend_from_slice(&packet);
                        if let Some(preparing) = self.preparing.as_mut() {
                            preparing.prepared = Some((statement, parameters));
                            let id = self.statements.next_id();
                            prepared::set_statement_id(&mut self.to_client[at..], id);
                        }
                    }
                    Packet::Data => self.to_client.extend_from_slice(&packet),
                }
                if reply.done() {
                    if !self.from_server.is_empty() {
                        return Err(self
                            .server_failed("the server sent more than its reply")
                            .await);
                    }
                    return self.flush().await;
                }
                if self.to_client.len() >= WRITE_BATCH {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            let read = {
                let Some(lease) = self.lease.as_mut() else {
                    return Err(End::Failed(CloseResult::Error));
                };
                let stream = lease.connection().stream();
                let buffer = &mut self.from_server;
                if buffer.capacity() - buffer.len() < SERVER_READ / 2 {
                    buffer.reserve(SERVER_READ);
                }
                tokio::select! {
                    read = stream.read_buf(buffer) => Some(read),
                    () = sleep_until(deadline), if !killed => None,
                }
            };
            match read {
                Some(Ok(0)) => {
                    return Err(self.server_failed("the server closed the connection").await);
                }
                Some(Err(error)) => return Err(self.server_failed(&error.to_string()).await),
                Some(Ok(_)) => {}
                None => {
                    killed = true;
                    self.kill_query();
                }
            }
        }
    }

    /// What an OK packet's session-state changes mean: a new schema is the
    /// client's; anything else, unless the statement already pinned, pins.
    fn session_state(&mut self, changes: &[u8], statement: statement::Statement) {
        let Ok(changes) = wire::state_changes(changes) else {
            self.pin_for(MysqlPin::SessionState);
            return;
        };
        let mut schema_changed = false;
        let mut state_changed = false;
        let mut replayed_changed = false;
        for change in changes {
            match change {
                StateChange::Schema(schema) => {
                    let schema = String::from_utf8_lossy(schema).into_owned();
                    if let Some(lease) = self.lease.as_mut() {
                        lease.connection().schema = Some(schema.clone());
                    }
                    self.who.schema = Some(schema);
                    schema_changed = true;
                }
                StateChange::SystemVariable(name, value) => {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    let value = variable_value(&name, value);
                    let tracked = self.pooler.replayed.contains(&name) && value.is_some();
                    match (tracked, self.lease.as_mut()) {
                        (true, Some(lease)) => {
                            let value = value.unwrap_or_default();
                            server::set_variable(
                                &mut lease.connection().variables,
                                &name,
                                value.clone(),
                            );
                            server::set_variable(&mut self.who.variables, &name, value);
                            replayed_changed = true;
                        }
                        _ => state_changed = true,
                    }
                }
                StateChange::State => state_changed = true,
                StateChange::Other(_) => {}
            }
        }
        // A schema change is reported as a state change too, and so is a
        // replayed variable's.
        let explained = schema_changed || (replayed_changed && statement.replay);
        if state_changed && !explained && statement.pin.is_none() {
            self.pin_for(MysqlPin::SessionState);
        }
    }

    /// The client's `LOAD DATA LOCAL INFILE` file, packet by packet, to
    /// the server, up to its closing empty packet.
    async fn send_file(&mut self) -> Result<(), End> {
        loop {
            let packet = match wire::split_packet(&mut self.from_client, wire::MAX_PAYLOAD) {
                Ok(Some(packet)) => packet,
                Ok(None) => {
                    match read_client(&mut self.client, &mut self.from_client).await {
                        Ok(0) | Err(_) => {
                            // The server waits for the rest of the file.
                            self.mark_broken();
                            return Err(End::Client);
                        }
                        Ok(_) => continue,
                    }
                }
                Err(error) => {
                    self.mark_broken();
                    let message = format!("attache: {error}");
                    return Err(self.refuse(PACKET_TOO_LARGE, &message).await);
                }
            };
            let last = wire::payload(&packet).is_empty();
            let written = self.server()?.stream().write_all(&packet).await;
            if let Err(error) = written {
                return Err(self.server_failed(&error.to_string()).await);
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Writes what is batched for the client.
    async fn flush(&mut self) -> Result<(), End> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let written = self.client.write_all(&self.to_client).await;
        self.to_client.clear();
        if self.to_client.capacity() > WRITE_BATCH * 2 {
            self.to_client = BytesMut::new();
        }
        if written.is_err() {
            // The reply was not read to its end: the connection is unusable.
            self.mark_broken();
            return Err(End::Client);
        }
        Ok(())
    }

    /// A server connection for the client's next command. `false`: none
    /// came, and the client has its error.
    async fn lend(&mut self) -> Result<bool, End> {
        if self.lease.is_some() {
            return Ok(true);
        }
        let asked = Instant::now();
        let lease = match self.pool.try_idle() {
            Some(lease) => lease,
            // Boxed: the connect and login state is not part of every session.
            None => match Box::pin(self.pool.get()).await {
                Ok(lease) => lease,
                Err(error) => {
                    if let PoolError::Timeout(_) = error {
                        self.pooler.metrics.pool.timeouts.inc();
                    }
                    limited!(
                        self.route.metrics.log_limit,
                        "mysql_no_server",
                        warn!(listener = %self.route.listener, client = %self.who.address, %error, "no MySQL server connection for a client")
                    );
                    let payload = self.pool_error_payload(&error);
                    self.to_client.clear();
                    wire::write_packets(&mut self.to_client, 1, &payload);
                    self.flush().await?;
                    return Ok(false);
                }
            },
        };
        self.pooler
            .metrics
            .pool
            .wait_duration
            .observe(asked.elapsed().as_secs_f64());
        self.lease = Some(lease);
        Ok(true)
    }

    /// Puts the lent connection in the client's schema. `false`: the
    /// server refused (the schema is gone) and the client has its error.
    async fn switch_schema(&mut self) -> Result<bool, End> {
        let Some(schema) = self.who.schema.clone() else {
            return Ok(true);
        };
        let Some(lease) = self.lease.as_mut() else {
            return Err(End::Failed(CloseResult::Error));
        };
        let switched = lease
            .connection()
            .use_schema(&schema, &mut self.from_server)
            .await;
        match switched {
            Ok(Ok(())) => Ok(true),
            Ok(Err(payload)) => {
                wire::write_packets(&mut self.to_client, 1, &payload);
                self.flush().await?;
                Ok(false)
            }
            Err(error) => Err(self.server_failed(&error.to_string()).await),
        }
    }

    /// Puts the lent connection's replayed variables at the client's values
    /// (its own `SET`s, else the connection's baseline) with one hidden
    /// `SET SESSION`. `false`: the server refused, and the client has its
    /// error.
    async fn replay_variables(&mut self) -> Result<bool, End> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(End::Failed(CloseResult::Error));
        };
        let server = lease.connection();
        let assignments = server.differing(server.baseline.iter().map(|(name, baseline)| {
            let value = self
                .who
                .variables
                .iter()
                .find(|(wanted, _)| wanted == name)
                .map_or(baseline, |(_, value)| value);
            (name.as_str(), value)
        }));
        match server
            .set_variables(assignments, &mut self.from_server)
            .await
        {
            Ok(Ok(())) => Ok(true),
            Ok(Err(payload)) => {
                wire::write_packets(&mut self.to_client, 1, &payload);
                self.flush().await?;
                Ok(false)
            }
            Err(error) => Err(self.server_failed(&error.to_string()).await),
        }
    }

    /// `COM_RESET_CONNECTION`: the session starts over. A connection the
    /// session holds is reset on the server and goes back; without one
    /// there is nothing to reset.
    async fn reset_connection(&mut self) -> Result<(), End> {
        self.give_back().await;
        self.pin = None;
        self.hold_next = false;
        self.status = status::AUTOCOMMIT;
        self.transaction_started = None;
        self.who.variables = self.who.login_variables.clone();
        self.statements.clear();
        if !pools_transactions(&self.pooler.settings) && !self.lend().await? {
            return Ok(());
        }
        self.answer_ok().await
    }

    async fn answer_ok(&mut self) -> Result<(), End> {
        wire::ok_packet(&mut self.to_client, 1, self.status);
        self.flush().await
    }

    async fn answer_err(&mut self, code: u16, message: &str) -> Result<(), End> {
        wire::err_packet(&mut self.to_client, 1, code, "HY000", message);
        self.flush().await
    }

    /// Tells the client why it is closed.
    async fn refuse(&mut self, code: u16, message: &str) -> End {
        self.to_client.clear();
        wire::err_packet(&mut self.to_client, 1, code, "08S01", message);
        let _ = self.flush().await;
        End::Failed(CloseResult::Error)
    }

    /// Pins the session (the first reason is the one counted).
    fn pin_for(&mut self, reason: MysqlPin) {
        if !pools_transactions(&self.pooler.settings) || self.pin.is_some() {
            return;
        }
        self.pin = Some(reason);
        self.pooler.metrics.pinned(reason);
        tracing::debug!(listener = %self.route.listener, client = %self.who.address, reason = reason.label(), "MySQL session pinned to its server connection");
    }

    fn server(&mut self) -> Result<&mut super::server::ServerConnection, End> {
        match self.lease.as_mut() {
            Some(lease) => Ok(lease.connection()),
            None => Err(End::Failed(CloseResult::Error)),
        }
    }

    fn mark_broken(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.connection().broken = true;
        }
    }

    /// The lent connection failed: it is closed, not reused, and the
    /// client gets an error packet that says so (after what of the reply
    /// it already has).
    async fn server_failed(&mut self, reason: &str) -> End {
        self.drop_failed_server(reason);
        let message = format!("attache: lost the server connection: {reason}");
        wire::err_packet(
            &mut self.to_client,
            self.reply_sequence,
            SERVER_LOST,
            "08S01",
            &message,
        );
        let _ = self.flush().await;
        End::ServerLost
    }

    fn drop_failed_server(&mut self, reason: &str) {
        self.mark_broken();
        self.lease = None;
        self.pooler.metrics.pool.server_failures.inc();
        limited!(
            self.route.metrics.log_limit,
            "mysql_server_failed",
            warn!(listener = %self.route.listener, client = %self.who.address, %reason, "a MySQL server connection failed while lent")
        );
    }

    /// After a lent connection failed: a session whose state or
    /// transaction lived on it ends; any other goes on, on another
    /// connection at its next command.
    fn after_server_lost(&mut self) -> Result<(), End> {
        let lost_state = !pools_transactions(&self.pooler.settings)
            || self.pin.is_some()
            || self.status & status::IN_TRANS != 0
            || !self.long_data.is_empty();
        if lost_state {
            tracing::debug!(listener = %self.route.listener, client = %self.who.address, "closing a MySQL client whose session lived on a failed server connection");
            return Err(End::Failed(CloseResult::UpstreamUnavailable));
        }
        self.status = status::AUTOCOMMIT;
        self.hold_next = false;
        self.transaction_started = None;
        Ok(())
    }

    /// `query_timeout` ran out: `KILL QUERY` on a connection of its own
    /// (the server then ends the statement with an error, or `SLEEP()`
    /// with 1, and the connection goes on).
    fn kill_query(&mut self) {
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        let thread = lease.connection().thread_id;
        self.pooler.metrics.query_timeouts.inc();
        let pool = self.pool.clone();
        let listener = self.route.listener.clone();
        let log_limit = self.route.metrics.log_limit.clone();
        tokio::spawn(async move {
            let kill = async {
                let mut side = crate::pooling::Connector::open(pool.connector()).await?;
                let request = format!("\x03KILL QUERY {thread}");
                let mut buffer = BytesMut::new();
                let refused = side.hidden_command(request.as_bytes(), &mut buffer).await?;
                Ok::<_, ServerError>(refused.err().map(|payload| {
                    let err = wire::parse_err(&payload).map(|err| err.message.to_vec());
                    String::from_utf8_lossy(&err.unwrap_or_default()).into_owned()
                }))
            };
            let failure = match kill.await {
                Ok(None) => return,
                Ok(Some(message)) => format!("the server refused: {message}"),
                Err(error) => error.to_string(),
            };
            limited!(
                log_limit,
                "mysql_kill_query",
                warn!(%listener, error = %failure, "could not interrupt a MySQL query past query_timeout")
            );
        });
    }

    /// The connection the session holds goes back to its pool; reset first
    /// when it may hold the session's state or a transaction.
    async fn give_back(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        let clean = pools_transactions(&self.pooler.settings)
            && self.pin.is_none()
            && self.status & status::IN_TRANS == 0
            && self.long_data.is_empty();
        self.long_data.clear();
        if clean {
            return;
        }
        let schema = self.pool.connector().schema.clone();
        let mut buffer = BytesMut::new();
        let server = lease.connection();
        if !server
            .reset(schema.as_deref(), &self.pooler.replayed, &mut buffer)
            .await
        {
            server.broken = true;
        }
    }

    /// The ERR payload a client gets for a pool's error: the server's own
    /// refusal as it is, else attache's.
    fn pool_error_payload(&self, error: &PoolError<ServerError>) -> Vec<u8> {
        let (code, message) = match error {
            PoolError::Server(ServerError::Refused { payload, .. }) => return payload.clone(),
            PoolError::Timeout(_) => (NO_CONNECTION, format!("attache: {error}")),
            PoolError::Server(_) => (2003, format!("attache: {error}")),
        };
        let mut out = BytesMut::new();
        wire::err_packet(&mut out, 0, code, "HY000", &message);
        wire::payload(&out).to_vec()
    }
}

/// A replayed variable's value as session tracking reports it; `None`
/// when it cannot be replayed as a quoted string (a backslash, which
/// `NO_BACKSLASH_ESCAPES` reads otherwise). An empty character set is
/// SQL NULL (`character_set_results = NULL`).
fn variable_value(name: &str, value: &[u8]) -> Option<Option<String>> {
    let value = std::str::from_utf8(value).ok()?;
    if value.contains(['\\', '\0']) {
        return None;
    }
    if value.is_empty() && name.starts_with("character_set") {
        return Some(None);
    }
    Some(Some(value.to_owned()))
}

/// The server's name for a statement command, in its errors.
fn statement_command_name(command: u8) -> &'static str {
    match command {
        command::STMT_RESET => "mysqld_stmt_reset",
        command::STMT_FETCH => "mysqld_stmt_fetch",
        _ => "mysqld_stmt_execute",
    }
}

/// Reads what the client sent; an idle client holds no buffer.
async fn read_client(client: &mut ClientStream, buffer: &mut BytesMut) -> std::io::Result<usize> {
    if buffer.is_empty() {
        return crate::net::read_into_room(client, buffer).await;
    }
    if buffer.capacity() - buffer.len() < SERVER_READ / 2 {
        buffer.reserve(SERVER_READ);
    }
    client.read_buf(buffer).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
