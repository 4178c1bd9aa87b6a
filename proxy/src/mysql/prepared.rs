//! Binary-protocol prepared statements when sessions share server
//! connections (transaction mode). A client's statements are its own:
//! attache numbers them, keeps each one's text, what the server read it
//! with ([`StatementKey`]) and the parameter types last bound to it, and
//! prepares it on whichever connection the client is lent, once per
//! connection. A connection's statements
//! ([`super::server::ServerStatement`]) serve every client that prepares
//! the same text the same way; beyond
//! `max_prepared_statements` the least recently used is closed. Commands
//! that name a statement reach the server with the connection's id for
//! it, and an execution that leaves out its types (they were bound before,
//! perhaps on another connection, or by another client) gets the client's
//! written in when the connection's statement holds others.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::server::{ServerStatement, Variables};
use super::wire;

/// Statements one client may hold at once (MySQL's default
/// `max_prepared_stmt_count`, which the server counts for all sessions).
pub(super) const MAX_CLIENT_STATEMENTS: usize = 16_382;
/// The text of its statements one client may hold at once.
pub(super) const MAX_CLIENT_TEXT: usize = 16 << 20;
/// `ER_UNKNOWN_STMT_HANDLER`.
pub(super) const UNKNOWN_STATEMENT: u16 = 1243;
/// `ER_MAX_PREPARED_STMT_COUNT_REACHED`.
pub(super) const TOO_MANY_STATEMENTS: u16 = 1461;
/// The id MariaDB clients use for the statement they prepared last.
const LAST_PREPARED: u32 = u32::MAX;

/// What a statement is on server connections: its text, and what the
/// server read that text with, the schema and the replayed variables
/// (`sql_mode`'s `ANSI_QUOTES` makes `"x"` a name, the character set
/// reads the literals): one server statement serves only clients that
/// agree on all of it.
#[derive(Clone)]
pub(super) struct StatementKey {
    /// The schema, a NUL, each variable as `name=value` and a NUL (`\x01`
    /// for SQL NULL), then the text.
    pub(super) bytes: Arc<[u8]>,
    text_at: usize,
    /// The schema it is prepared in (where it is prepared again).
    pub(super) schema: Option<String>,
}

impl StatementKey {
    pub(super) fn new(schema: Option<&str>, variables: &Variables, text: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(text.len() + 128);
        bytes.extend_from_slice(schema.unwrap_or_default().as_bytes());
        bytes.push(0);
        for (name, value) in variables {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(b'=');
            match value {
                Some(value) => bytes.extend_from_slice(value.as_bytes()),
                None => bytes.push(1),
            }
            bytes.push(0);
        }
        let text_at = bytes.len();
        bytes.extend_from_slice(text);
        Self {
            bytes: bytes.into(),
            text_at,
            schema: schema.map(str::to_owned),
        }
    }

    /// The statement's text.
    pub(super) fn text(&self) -> &[u8] {
        &self.bytes[self.text_at..]
    }

    /// The replayed variables it was prepared with (read back from the
    /// key, for the rare prepare on another connection).
    pub(super) fn variables(&self) -> Variables {
        let schema = self.schema.as_deref().unwrap_or_default().len();
        self.bytes[schema + 1..self.text_at]
            .split(|&byte| byte == 0)
            .filter_map(|entry| {
                let at = entry.iter().position(|&byte| byte == b'=')?;
                let name = String::from_utf8_lossy(&entry[..at]).into_owned();
                let value = match &entry[at + 1..] {
                    [1] => None,
                    value => Some(String::from_utf8_lossy(value).into_owned()),
                };
                Some((name, value))
            })
            .collect()
    }
}

/// A client's prepared statement.
pub(super) struct ClientStatement {
    pub(super) key: StatementKey,
    pub(super) parameters: u16,
    /// The parameter types the client bound last.
    pub(super) types: Option<Box<[u8]>>,
}

/// A client's prepared statements, by the ids attache gave them.
#[derive(Default)]
pub(super) struct ClientStatements {
    by_id: HashMap<u32, ClientStatement>,
    last_id: u32,
    text_bytes: usize,
}

impl ClientStatements {
    /// The id the next statement gets.
    pub(super) fn next_id(&self) -> u32 {
        match self.last_id.wrapping_add(1) {
            0 | LAST_PREPARED => 1,
            id => id,
        }
    }

    /// Whether one more statement would go beyond what one client may hold.
    pub(super) fn full(&self, key: &StatementKey) -> bool {
        self.by_id.len() >= MAX_CLIENT_STATEMENTS
            || self.text_bytes + key.bytes.len() > MAX_CLIENT_TEXT
    }

    /// Adds a statement under [`Self::next_id`].
    pub(super) fn add(&mut self, statement: ClientStatement) -> u32 {
        let id = self.next_id();
        self.last_id = id;
        self.text_bytes += statement.key.bytes.len();
        if let Some(replaced) = self.by_id.insert(id, statement) {
            self.text_bytes -= replaced.key.bytes.len();
        }
        id
    }

    /// The statement `id` names (MariaDB's `-1`: the last one prepared).
    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut ClientStatement> {
        let id = self.resolve(id);
        self.by_id.get_mut(&id)
    }

    pub(super) fn remove(&mut self, id: u32) {
        let id = self.resolve(id);
        if let Some(removed) = self.by_id.remove(&id) {
            self.text_bytes -= removed.key.bytes.len();
        }
    }

    /// The id a command's `id` stands for.
    fn resolve(&self, id: u32) -> u32 {
        if id == LAST_PREPARED {
            self.last_id
        } else {
            id
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_id.clear();
        self.text_bytes = 0;
    }
}

/// A server connection's prepare reply retold to a client: with the
/// client's statement id, and the status flags of its EOF packets as they
/// are now (the reply may have been kept from another client's prepare).
pub(super) fn retell_prepared(reply: &[u8], client_id: u32, status: u16, out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(reply);
    set_statement_id(&mut out[start..], client_id);
    let mut at = start;
    let mut first = true;
    while let Some((length, _)) = wire::header(&out[at..]) {
        let packet = &mut out[at..at + wire::HEADER + length];
        if !first && wire::is_eof(wire::payload(packet)) {
            packet[wire::HEADER + 3..wire::HEADER + 5].copy_from_slice(&status.to_le_bytes());
        }
        first = false;
        at += wire::HEADER + length;
    }
}

/// Sets the statement id of a one-packet `COM_STMT_*` command or prepare
/// reply (bytes 1 to 4 of its payload).
pub(super) fn set_statement_id(packet: &mut [u8], id: u32) {
    if let Some(field) = packet.get_mut(wire::HEADER + 1..wire::HEADER + 5) {
        field.copy_from_slice(&id.to_le_bytes());
    }
}

/// A command naming `client`'s statement, made to name the server's
/// statement `server` instead. An execution records the types it binds on
/// both; one that binds none gets the client's last types written in
/// when the server's statement last had others. A malformed execution is
/// sent as it is (with the server's id) for the server to refuse.
pub(super) fn for_server(
    mut message: BytesMut,
    command: u8,
    client: &mut ClientStatement,
    server: &mut ServerStatement,
) -> BytesMut {
    let mut types_to_write = None;
    if command == wire::command::STMT_EXECUTE {
        let payload = wire::message_payload(&message);
        if let Ok(Some(layout)) = wire::execute_layout(&payload, client.parameters) {
            match layout.types {
                Some(types) => {
                    // Most drivers bind the same types every time: kept as
                    // they are then, without a copy per execution.
                    let types = &payload[types];
                    if client.types.as_deref() != Some(types) {
                        client.types = Some(types.into());
                    }
                    if server.types.as_deref() != Some(types) {
                        server.types = Some(types.into());
                    }
                }
                None if server.types != client.types && client.types.is_some() => {
                    server.types.clone_from(&client.types);
                    types_to_write = Some(layout.bound_flag);
                }
                None => {}
            }
        }
    }
    let one_packet =
        wire::header(&message).is_some_and(|(length, _)| wire::HEADER + length == message.len());
    if types_to_write.is_none() && one_packet {
        set_statement_id(&mut message, server.id);
        return message;
    }
    let payload = wire::message_payload(&message);
    let mut rewritten = Vec::with_capacity(payload.len() + 2 * usize::from(client.parameters));
    match (types_to_write, client.types.as_deref()) {
        (Some(bound_flag), Some(types)) => {
            rewritten.extend_from_slice(&payload[..bound_flag]);
            rewritten.push(1);
            rewritten.extend_from_slice(types);
            rewritten.extend_from_slice(&payload[bound_flag + 1..]);
        }
        _ => rewritten.extend_from_slice(&payload),
    }
    rewritten[1..5].copy_from_slice(&server.id.to_le_bytes());
    let mut out = BytesMut::with_capacity(rewritten.len() + wire::HEADER * 2);
    wire::write_packets(&mut out, 0, &rewritten);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(parameters: u16, types: Option<&[u8]>) -> ClientStatement {
        ClientStatement {
            key: StatementKey::new(Some("shop"), &Vec::new(), b"SELECT ?"),
            parameters,
            types: types.map(Into::into),
        }
    }

    fn server_statement(id: u32, types: Option<&[u8]>) -> ServerStatement {
        ServerStatement {
            id,
            parameters: 1,
            reply: bytes::Bytes::new(),
            types: types.map(Into::into),
        }
    }

    fn message(payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        wire::write_packets(&mut out, 0, payload);
        out
    }

    /// `COM_STMT_EXECUTE` of statement 5 with one parameter; `types`: bound.
    fn execute(types: Option<[u8; 2]>, value: u8) -> Vec<u8> {
        let mut payload = vec![wire::command::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        match types {
            Some(types) => {
                payload.push(1);
                payload.extend_from_slice(&types);
            }
            None => payload.push(0),
        }
        payload.push(value);
        payload
    }

    #[test]
    fn a_statement_key_holds_what_the_server_reads_its_text_with() {
        let variables = vec![
            ("sql_mode".to_owned(), Some("ANSI_QUOTES".to_owned())),
            ("character_set_results".to_owned(), None),
        ];
        let key = StatementKey::new(Some("shop"), &variables, b"SELECT \"x\"");
        assert_eq!(
            &key.bytes[..],
            b"shop\0sql_mode=ANSI_QUOTES\0character_set_results=\x01\0SELECT \"x\""
        );
        assert_eq!(key.text(), b"SELECT \"x\"");
        assert_eq!(key.variables(), variables);
        let plain = StatementKey::new(Some("shop"), &Vec::new(), b"SELECT \"x\"");
        assert_ne!(key.bytes, plain.bytes);
        assert_ne!(
            StatementKey::new(None, &Vec::new(), b"SELECT 1").bytes,
            StatementKey::new(Some("shop"), &Vec::new(), b"SELECT 1").bytes
        );
    }

    #[test]
    fn an_execution_names_the_servers_statement_and_records_its_types() {
        let mut client = statement(1, None);
        let mut server = server_statement(42, None);
        let sent = for_server(
            message(&execute(Some([1, 0]), 7)),
            wire::command::STMT_EXECUTE,
            &mut client,
            &mut server,
        );
        let mut expected = execute(Some([1, 0]), 7);
        expected[1] = 42;
        assert_eq!(wire::payload(&sent), &expected[..]);
        assert_eq!(client.types.as_deref(), Some(&[1, 0][..]));
        assert_eq!(server.types.as_deref(), Some(&[1, 0][..]));
    }

    #[test]
    fn types_bound_elsewhere_are_written_into_an_execution_without_them() {
        // The client bound TINY on another connection; this connection's
        // statement last had LONGLONG from another client.
        let mut client = statement(1, Some(&[1, 0]));
        let mut server = server_statement(9, Some(&[8, 0]));
        let sent = for_server(
            message(&execute(None, 7)),
            wire::command::STMT_EXECUTE,
            &mut client,
            &mut server,
        );
        let mut expected = execute(Some([1, 0]), 7);
        expected[1] = 9;
        assert_eq!(wire::payload(&sent), &expected[..]);
        assert_eq!(server.types.as_deref(), Some(&[1, 0][..]));
        // Now the connection has them: the next execution goes as it is.
        let sent = for_server(
            message(&execute(None, 8)),
            wire::command::STMT_EXECUTE,
            &mut client,
            &mut server,
        );
        let mut expected = execute(None, 8);
        expected[1] = 9;
        assert_eq!(wire::payload(&sent), &expected[..]);
    }

    #[test]
    fn a_prepare_reply_is_retold_with_the_clients_id_and_todays_status() {
        let mut reply = BytesMut::new();
        // Prepare OK: statement 77, 0 columns, 1 parameter.
        wire::write_packets(&mut reply, 1, &[0, 77, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        wire::write_packets(&mut reply, 2, b"\x03def");
        // The EOF after the parameter definitions, kept inside a transaction.
        wire::write_packets(&mut reply, 3, &[0xfe, 0, 0, 0x03, 0]);
        let mut out = BytesMut::new();
        retell_prepared(&reply, 3, 0x0002, &mut out);
        let mut expected = BytesMut::new();
        wire::write_packets(&mut expected, 1, &[0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        wire::write_packets(&mut expected, 2, b"\x03def");
        wire::write_packets(&mut expected, 3, &[0xfe, 0, 0, 0x02, 0]);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_client_holds_a_bounded_number_of_statements() {
        let mut statements = ClientStatements::default();
        let first = statements.add(statement(1, None));
        assert_eq!(first, 1);
        assert!(statements.get_mut(LAST_PREPARED).is_some());
        let huge = StatementKey::new(None, &Vec::new(), &vec![b' '; MAX_CLIENT_TEXT - 1]);
        assert!(statements.full(&huge));
        assert!(!statements.full(&statement(1, None).key));
        statements.remove(first);
        assert!(statements.get_mut(first).is_none());
        assert!(!statements.full(&huge));
        assert_eq!(statements.next_id(), 2);
    }
}
