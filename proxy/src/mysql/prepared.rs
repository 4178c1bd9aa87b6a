//! Binary-protocol prepared statements when sessions share server
//! connections (transaction mode). A client's statements are its own:
//! attache numbers them, keeps each one's text, the schema it was prepared
//! in and the parameter types last bound to it, and prepares it on
//! whichever connection the client is lent, once per connection. A
//! connection's statements ([`super::server::ServerStatement`]) serve every
//! client that prepares the same text in the same schema; beyond
//! `max_prepared_statements` the least recently used is closed. Commands
//! that name a statement reach the server with the connection's id for
//! it, and an execution that leaves out its types (they were bound before,
//! perhaps on another connection, or by another client) gets the client's
//! written in when the connection's statement holds others.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::server::ServerStatement;
use super::wire;

/// Statements one client may hold at once (MySQL's default
/// `max_prepared_stmt_count`, which the server counts for all sessions).
pub(super) const MAX_CLIENT_STATEMENTS: usize = 16_382;
/// The text of its statements one client may hold at once.
pub(super) const MAX_CLIENT_TEXT: usize = 64 << 20;
/// `ER_UNKNOWN_STMT_HANDLER`.
pub(super) const UNKNOWN_STATEMENT: u16 = 1243;
/// `ER_MAX_PREPARED_STMT_COUNT_REACHED`.
pub(super) const TOO_MANY_STATEMENTS: u16 = 1461;
/// The id MariaDB clients use for the statement they prepared last.
const LAST_PREPARED: u32 = u32::MAX;

/// The key of a statement on server connections: the schema it was
/// prepared in (schema names hold no NUL), a NUL, its text.
pub(super) fn key(schema: Option<&str>, text: &[u8]) -> Arc<[u8]> {
    let schema = schema.unwrap_or_default().as_bytes();
    let mut key = Vec::with_capacity(schema.len() + 1 + text.len());
    key.extend_from_slice(schema);
    key.push(0);
    key.extend_from_slice(text);
    key.into()
}

/// A client's prepared statement.
pub(super) struct ClientStatement {
    /// Its [`key`] on server connections.
    pub(super) key: Arc<[u8]>,
    /// The schema it was prepared in (where it is prepared again).
    pub(super) schema: Option<String>,
    pub(super) parameters: u16,
    /// The parameter types the client bound last.
    pub(super) types: Option<Box<[u8]>>,
}

impl ClientStatement {
    /// The statement's text.
    pub(super) fn text(&self) -> &[u8] {
        let schema = self.schema.as_deref().unwrap_or_default().len();
        &self.key[schema + 1..]
    }
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

    /// Whether a statement of `text_length` bytes would go beyond what one
    /// client may hold.
    pub(super) fn full(&self, text_length: usize) -> bool {
        self.by_id.len() >= MAX_CLIENT_STATEMENTS || self.text_bytes + text_length > MAX_CLIENT_TEXT
    }

    /// Adds a statement under [`Self::next_id`].
    pub(super) fn add(&mut self, statement: ClientStatement) -> u32 {
        let id = self.next_id();
        self.last_id = id;
        self.text_bytes += statement.key.len();
        if let Some(replaced) = self.by_id.insert(id, statement) {
            self.text_bytes -= replaced.key.len();
        }
        id
    }

    /// The statement `id` names (MariaDB's `-1`: the last one prepared).
    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut ClientStatement> {
        let id = if id == LAST_PREPARED {
            self.last_id
        } else {
            id
        };
        self.by_id.get_mut(&id)
    }

    pub(super) fn remove(&mut self, id: u32) {
        let id = if id == LAST_PREPARED {
            self.last_id
        } else {
            id
        };
        if let Some(removed) = self.by_id.remove(&id) {
            self.text_bytes -= removed.key.len();
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
                    let types: Box<[u8]> = payload[types].into();
                    client.types = Some(types.clone());
                    server.types = Some(types);
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
            key: key(Some("shop"), b"SELECT ?"),
            schema: Some("shop".to_owned()),
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
    fn a_statement_key_holds_its_schema_and_text() {
        let statement = statement(1, None);
        assert_eq!(&statement.key[..], b"shop\0SELECT ?");
        assert_eq!(statement.text(), b"SELECT ?");
        assert_ne!(key(None, b"SELECT ?"), key(Some("shop"), b"SELECT ?"));
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
        assert!(statements.full(MAX_CLIENT_TEXT));
        assert!(!statements.full(100));
        statements.remove(first);
        assert!(statements.get_mut(first).is_none());
        assert!(!statements.full(MAX_CLIENT_TEXT - 1));
        assert_eq!(statements.next_id(), 2);
    }
}
