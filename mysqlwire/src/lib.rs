//! The MySQL/MariaDB client/server protocol as a pooler sees it: packets
//! split off a read buffer (bounded: a length is checked against a limit
//! before anything is buffered), the reply a server sends to each command
//! followed packet by packet ([`Reply`]) so that a proxy knows when the
//! server is done and in which transaction state it left the connection,
//! the OK/EOF/ERR fields it reads, and the packets it writes. No I/O here;
//! fuzzed (`fuzz/`) with any bytes.
//!
//! A packet is a 3-byte little-endian payload length, a sequence id and
//! the payload. A payload of exactly [`MAX_PAYLOAD`] bytes continues in
//! the next packet. Packets are kept whole, as received, so what a proxy
//! does not change it forwards byte for byte.
//!
//! The reply formats followed are those without `CLIENT_DEPRECATE_EOF`
//! (result sets end in EOF packets) and without MariaDB's extended
//! metadata: a pooler that uses this crate offers neither.

use bytes::{BufMut as _, BytesMut};

/// A packet's header: length and sequence id.
pub const HEADER: usize = 4;

/// The largest payload of one packet; a payload this long continues.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Server status flags a pooler reads.
pub mod status {
    /// A transaction is open.
    pub const IN_TRANS: u16 = 0x0001;
    pub const AUTOCOMMIT: u16 = 0x0002;
    /// Another result follows this one.
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    /// A cursor is open (`COM_STMT_EXECUTE` with a cursor type).
    pub const CURSOR_EXISTS: u16 = 0x0040;
    /// The OK packet carries session state changes.
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;
}

/// Capability flags a pooler reads or sets.
pub mod capability {
    pub const LONG_PASSWORD: u32 = 0x0000_0001;
    pub const FOUND_ROWS: u32 = 0x0000_0002;
    pub const LONG_FLAG: u32 = 0x0000_0004;
    pub const CONNECT_WITH_DB: u32 = 0x0000_0008;
    pub const LOCAL_FILES: u32 = 0x0000_0080;
    pub const PROTOCOL_41: u32 = 0x0000_0200;
    pub const INTERACTIVE: u32 = 0x0000_0400;
    pub const SSL: u32 = 0x0000_0800;
    pub const TRANSACTIONS: u32 = 0x0000_2000;
    pub const SECURE_CONNECTION: u32 = 0x0000_8000;
    pub const MULTI_STATEMENTS: u32 = 0x0001_0000;
    pub const MULTI_RESULTS: u32 = 0x0002_0000;
    pub const PS_MULTI_RESULTS: u32 = 0x0004_0000;
    pub const PLUGIN_AUTH: u32 = 0x0008_0000;
    pub const CONNECT_ATTRS: u32 = 0x0010_0000;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
    pub const SESSION_TRACK: u32 = 0x0080_0000;
    pub const DEPRECATE_EOF: u32 = 0x0100_0000;
}

/// Command bytes (the first payload byte of a client's command).
pub mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB's bulk execute.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a message of {length} bytes is over the limit of {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("unexpected {0} packet")]
    Unexpected(&'static str),
}

/// The payload length and sequence id of the packet at the front of
/// `buffer`, once its header is there.
pub fn header(buffer: &[u8]) -> Option<(usize, u8)> {
    let bytes = buffer.get(..HEADER)?;
    let length = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
    Some((length, bytes[3]))
}

/// Splits the next whole packet (header included) off `buffer`; a packet
/// whose payload is over `limit` is an error as soon as its header is in.
pub fn split_packet(buffer: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, WireError> {
    let Some((length, _)) = header(buffer) else {
        return Ok(None);
    };
    if length > limit {
        return Err(WireError::TooLarge { length, limit });
    }
    if buffer.len() < HEADER + length {
        return Ok(None);
    }
    Ok(Some(buffer.split_to(HEADER + length)))
}

/// Splits the next whole message (one packet, or a packet of
/// [`MAX_PAYLOAD`] and its continuations) off `buffer`, headers included;
/// the whole message's payload must be within `limit`.
pub fn split_message(buffer: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, WireError> {
    let mut at = 0;
    let mut payload = 0;
    loop {
        let Some((length, _)) = header(&buffer[at..]) else {
            return Ok(None);
        };
        payload += length;
        if payload > limit {
            return Err(WireError::TooLarge {
                length: payload,
                limit,
            });
        }
        at += HEADER + length;
        if buffer.len() < at {
            return Ok(None);
        }
        if length < MAX_PAYLOAD {
            return Ok(Some(buffer.split_to(at)));
        }
    }
}

/// A whole message's payload: its packets' payloads joined (borrowed when
/// the message is one packet, as nearly all are).
pub fn message_payload(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match header(message) {
        Some((length, _)) if HEADER + length >= message.len() => {
            std::borrow::Cow::Borrowed(payload(message))
        }
        _ => {
            let mut joined = Vec::with_capacity(message.len());
            let mut rest = message;
            while let Some((length, _)) = header(rest) {
                let end = (HEADER + length).min(rest.len());
                joined.extend_from_slice(&rest[HEADER..end]);
                rest = &rest[end..];
            }
            std::borrow::Cow::Owned(joined)
        }
    }
}

/// The payload of a single packet.
pub fn payload(packet: &[u8]) -> &[u8] {
    packet.get(HEADER..).unwrap_or_default()
}

/// The sequence id of a packet.
pub fn sequence(packet: &[u8]) -> u8 {
    packet.get(3).copied().unwrap_or_default()
}

/// Appends `payload` as packets starting at sequence id `sequence`
/// (split at [`MAX_PAYLOAD`]); returns the next sequence id.
pub fn write_packets(out: &mut BytesMut, mut sequence: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let length = rest.len().min(MAX_PAYLOAD);
        out.reserve(HEADER + length);
        out.put_uint_le(length as u64, 3);
        out.put_u8(sequence);
        out.put_slice(&rest[..length]);
        sequence = sequence.wrapping_add(1);
        rest = &rest[length..];
        if length < MAX_PAYLOAD {
            return sequence;
        }
    }
}

/// Where a `COM_STMT_EXECUTE` payload keeps its parameters' types: after
/// the command byte, the statement id, the flags, the iteration count and
/// the null bitmap comes `new_params_bound_flag`, and when it is 1 the
/// types (two bytes a parameter), then the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteLayout {
    /// The offset of `new_params_bound_flag`.
    pub bound_flag: usize,
    /// The types' bytes, when the flag is set.
    pub types: Option<std::ops::Range<usize>>,
}

/// The statement id a `COM_STMT_*` payload names (bytes 1 to 4).
pub fn statement_id(payload: &[u8]) -> Option<u32> {
    let id = payload.get(1..5)?;
    Some(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

/// The layout of a `COM_STMT_EXECUTE` payload for a statement of
/// `parameters` parameters; `None` when it has none (nothing follows the
/// iteration count).
pub fn execute_layout(payload: &[u8], parameters: u16) -> Result<Option<ExecuteLayout>, WireError> {
    if parameters == 0 {
        return Ok(None);
    }
    let bound_flag = 10 + usize::from(parameters).div_ceil(8);
    let flag = *payload
        .get(bound_flag)
        .ok_or(WireError::Malformed("execute"))?;
    let types = match flag {
        0 => None,
        1 => {
            let types = bound_flag + 1..bound_flag + 1 + 2 * usize::from(parameters);
            if payload.len() < types.end {
                return Err(WireError::Malformed("execute types"));
            }
            Some(types)
        }
        _ => return Err(WireError::Malformed("execute bound flag")),
    };
    Ok(Some(ExecuteLayout { bound_flag, types }))
}

/// Reads a length-encoded integer off the front of `bytes`.
pub fn read_lenenc(bytes: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=0xfa => {
            *bytes = rest;
            return Some(u64::from(first));
        }
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        // 0xfb is NULL in a row, 0xff an error: not integers.
        _ => return None,
    };
    let digits = rest.get(..width)?;
    let value = digits
        .iter()
        .rev()
        .fold(0u64, |value, digit| value << 8 | u64::from(*digit));
    *bytes = &rest[width..];
    Some(value)
}

/// Reads a length-encoded string off the front of `bytes`.
pub fn read_lenenc_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut rest = *bytes;
    let length = usize::try_from(read_lenenc(&mut rest)?).ok()?;
    let text = rest.get(..length)?;
    *bytes = &rest[length..];
    Some(text)
}

pub fn put_lenenc(out: &mut BytesMut, value: u64) {
    match value {
        0..=0xfa => out.put_u8(value as u8),
        0xfb..=0xffff => {
            out.put_u8(0xfc);
            out.put_u16_le(value as u16);
        }
        0x1_0000..=0xff_ffff => {
            out.put_u8(0xfd);
            out.put_uint_le(value, 3);
        }
        _ => {
            out.put_u8(0xfe);
            out.put_u64_le(value);
        }
    }
}

fn read_u16(bytes: &mut &[u8]) -> Option<u16> {
    let digits = bytes.get(..2)?;
    let value = u16::from_le_bytes([digits[0], digits[1]]);
    *bytes = &bytes[2..];
    Some(value)
}

/// The fields of an OK packet (header `0x00`, or `0xfe` when it ends a
/// result set under `CLIENT_DEPRECATE_EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket<'a> {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// The human-readable info (`Rows matched: 1  Changed: 1  Warnings: 0`).
    pub info: &'a [u8],
    /// The session state changes, with `CLIENT_SESSION_TRACK` and
    /// [`status::SESSION_STATE_CHANGED`].
    pub state_changes: &'a [u8],
}

/// Parses an OK packet's payload; `session_track`: whether the connection
/// negotiated `CLIENT_SESSION_TRACK`.
pub fn parse_ok(payload: &[u8], session_track: bool) -> Result<OkPacket<'_>, WireError> {
    let mut rest = payload.get(1..).ok_or(WireError::Malformed("OK"))?;
    let affected_rows = read_lenenc(&mut rest).ok_or(WireError::Malformed("OK"))?;
    let last_insert_id = read_lenenc(&mut rest).ok_or(WireError::Malformed("OK"))?;
    let status = read_u16(&mut rest).ok_or(WireError::Malformed("OK"))?;
    let warnings = read_u16(&mut rest).ok_or(WireError::Malformed("OK"))?;
    let (info, state_changes) = if session_track {
        if rest.is_empty() {
            (&[][..], &[][..])
        } else {
            let info = read_lenenc_bytes(&mut rest).ok_or(WireError::Malformed("OK"))?;
            let changes = if status & status::SESSION_STATE_CHANGED != 0 {
                read_lenenc_bytes(&mut rest).ok_or(WireError::Malformed("OK"))?
            } else {
                &[]
            };
            (info, changes)
        }
    } else if rest.is_empty() {
        (&[][..], &[][..])
    } else {
        // Length-encoded, though the protocol's documents say "the rest of
        // the packet": servers write it so, and clients read it so.
        let info = read_lenenc_bytes(&mut rest).ok_or(WireError::Malformed("OK"))?;
        (info, &[][..])
    };
    Ok(OkPacket {
        affected_rows,
        last_insert_id,
        status,
        warnings,
        info,
        state_changes,
    })
}

/// One session state change an OK packet reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange<'a> {
    /// A session system variable and its new value.
    SystemVariable(&'a [u8], &'a [u8]),
    /// The default schema (`USE`, `COM_INIT_DB`).
    Schema(&'a [u8]),
    /// Some session state changed (`session_track_state_change`).
    State,
    /// Anything else reported (GTIDs, transaction state and
    /// characteristics), by its type byte.
    Other(u8),
}

/// The session state changes of an OK packet, in order.
pub fn state_changes(mut changes: &[u8]) -> Result<Vec<StateChange<'_>>, WireError> {
    let mut out = Vec::new();
    while let Some((&kind, rest)) = changes.split_first() {
        changes = rest;
        let mut data =
            read_lenenc_bytes(&mut changes).ok_or(WireError::Malformed("session state"))?;
        let malformed = || WireError::Malformed("session state");
        out.push(match kind {
            0 => {
                let name = read_lenenc_bytes(&mut data).ok_or_else(malformed)?;
                let value = read_lenenc_bytes(&mut data).ok_or_else(malformed)?;
                StateChange::SystemVariable(name, value)
            }
            1 => StateChange::Schema(read_lenenc_bytes(&mut data).ok_or_else(malformed)?),
            2 => StateChange::State,
            other => StateChange::Other(other),
        });
    }
    Ok(out)
}

/// An OK packet as a client without `CLIENT_SESSION_TRACK` reads it: the
/// info (length-encoded, as servers write it), no state changes, the flag
/// cleared.
pub fn ok_without_session_track(ok: &OkPacket<'_>, sequence: u8) -> BytesMut {
    let mut payload = BytesMut::with_capacity(32 + ok.info.len());
    payload.put_u8(0x00);
    put_lenenc(&mut payload, ok.affected_rows);
    put_lenenc(&mut payload, ok.last_insert_id);
    payload.put_u16_le(ok.status & !status::SESSION_STATE_CHANGED);
    payload.put_u16_le(ok.warnings);
    if !ok.info.is_empty() {
        put_lenenc(&mut payload, ok.info.len() as u64);
        payload.put_slice(ok.info);
    }
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    write_packets(&mut out, sequence, &payload);
    out
}

/// The columns of a text-protocol row: each a length-encoded string, or
/// `None` for SQL NULL (`0xfb`); `None` for a malformed row.
pub fn text_row(mut payload: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut columns = Vec::new();
    while let Some(&first) = payload.first() {
        if first == 0xfb {
            payload = &payload[1..];
            columns.push(None);
        } else {
            columns.push(Some(read_lenenc_bytes(&mut payload)?));
        }
    }
    Some(columns)
}

/// The status flags of an EOF packet (`0xfe`, payload under 9 bytes).
pub fn parse_eof(payload: &[u8]) -> Result<u16, WireError> {
    let mut rest = payload.get(3..).ok_or(WireError::Malformed("EOF"))?;
    read_u16(&mut rest).ok_or(WireError::Malformed("EOF"))
}

/// Whether a payload is an EOF packet (rather than a row that happens to
/// start with `0xfe`).
pub fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

/// The fields of an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket<'a> {
    pub code: u16,
    /// Five characters, when the server sent them.
    pub sql_state: Option<&'a [u8]>,
    pub message: &'a [u8],
}

pub fn parse_err(payload: &[u8]) -> Result<ErrPacket<'_>, WireError> {
    let mut rest = payload.get(1..).ok_or(WireError::Malformed("ERR"))?;
    let code = read_u16(&mut rest).ok_or(WireError::Malformed("ERR"))?;
    let sql_state = match rest.split_first() {
        Some((b'#', state)) if state.len() >= 5 => {
            rest = &state[5..];
            Some(&state[..5])
        }
        _ => None,
    };
    Ok(ErrPacket {
        code,
        sql_state,
        message: rest,
    })
}

/// An ERR packet with sequence id `sequence`.
pub fn err_packet(out: &mut BytesMut, sequence: u8, code: u16, sql_state: &str, message: &str) {
    let mut payload = BytesMut::with_capacity(9 + message.len());
    payload.put_u8(0xff);
    payload.put_u16_le(code);
    payload.put_u8(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (to, from) in state.iter_mut().zip(sql_state.bytes()) {
        *to = from;
    }
    payload.put_slice(&state);
    payload.put_slice(message.as_bytes());
    write_packets(out, sequence, &payload);
}

/// An OK packet with sequence id `sequence` and status flags `status`.
pub fn ok_packet(out: &mut BytesMut, sequence: u8, status: u16) {
    write_packets(
        out,
        sequence,
        &[0x00, 0x00, 0x00, status as u8, (status >> 8) as u8, 0, 0],
    );
}

/// What one server packet of a reply is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Part of the reply (column definitions, rows, a prepared statement's
    /// parameters, a continuation).
    Data,
    /// An OK packet.
    Ok(OkPacket<'a>),
    /// An EOF packet with its status flags.
    Eof(u16),
    /// An ERR packet.
    Err(ErrPacket<'a>),
    /// `LOAD DATA LOCAL INFILE`: the client sends the file's packets, up to
    /// an empty one; then the server goes on ([`Reply::file_sent`]).
    LocalInfile,
    /// `COM_STMT_PREPARE`'s first answer: the statement's id, columns and
    /// parameters.
    Prepared {
        statement: u32,
        columns: u16,
        parameters: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The first packet of a result: OK, ERR, local infile or a column count.
    Result,
    /// `n` column definitions, then an EOF, then rows.
    Columns(u64),
    /// The EOF after the column definitions.
    ColumnsEof,
    /// Rows, until an EOF or ERR.
    Rows,
    /// Column definitions until an EOF (`COM_FIELD_LIST`).
    FieldList,
    /// The prepare OK, or ERR.
    Prepare,
    /// The packets left of the parameter definitions, then of the column
    /// definitions, each group's EOF included.
    PreparedDefinitions {
        parameters: u32,
        columns: u32,
    },
    /// The client is sending a local file.
    File,
    /// One OK or ERR (`COM_PING`, `COM_INIT_DB`, ...).
    Status,
    /// Any single packet (`COM_STATISTICS`).
    Single,
    Done,
}

/// The server's reply to one command, followed packet by packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    expect: Expect,
    /// The next packet continues the previous one's payload.
    continuing: bool,
    session_track: bool,
}

impl Reply {
    /// The reply to `command` (its first payload byte), or `None` when the
    /// command has no reply (`COM_QUIT`, `COM_STMT_CLOSE`,
    /// `COM_STMT_SEND_LONG_DATA`). `session_track`: whether the connection
    /// negotiated `CLIENT_SESSION_TRACK`.
    pub fn to(command: u8, session_track: bool) -> Option<Self> {
        let expect = match command {
            command::QUIT | command::STMT_CLOSE | command::STMT_SEND_LONG_DATA => return None,
            command::QUERY
            | command::STMT_EXECUTE
            | command::STMT_BULK_EXECUTE
            | command::PROCESS_INFO => Expect::Result,
            command::STMT_FETCH => Expect::Rows,
            command::FIELD_LIST => Expect::FieldList,
            command::STMT_PREPARE => Expect::Prepare,
            command::STATISTICS => Expect::Single,
            _ => Expect::Status,
        };
        Some(Self {
            expect,
            continuing: false,
            session_track,
        })
    }

    /// Whether the reply is complete.
    pub fn done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// Whether the client is to send a local file now.
    pub fn awaiting_file(&self) -> bool {
        self.expect == Expect::File
    }

    /// The client sent its file (the empty packet): the server answers next.
    pub fn file_sent(&mut self) {
        if self.expect == Expect::File {
            self.expect = Expect::Status;
        }
    }

    /// Takes the next server packet (header included) and says what it is.
    pub fn packet<'a>(&mut self, packet: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let (length, _) = header(packet).ok_or(WireError::Malformed("packet"))?;
        let body = payload(packet);
        let continuation = std::mem::replace(&mut self.continuing, length == MAX_PAYLOAD);
        if continuation {
            return Ok(Packet::Data);
        }
        let first = *body.first().ok_or(WireError::Malformed("empty"))?;
        match self.expect {
            Expect::Done | Expect::File => Err(WireError::Unexpected("server")),
            Expect::Single => {
                self.expect = Expect::Done;
                Ok(Packet::Data)
            }
            Expect::Status => match first {
                0x00 => self.ok(body),
                0xff => self.err(body),
                // MySQL answers COM_SET_OPTION with an EOF.
                0xfe if is_eof(body) => self.eof(body),
                _ => Err(WireError::Unexpected("status")),
            },
            Expect::Result => match first {
                0x00 => self.ok(body),
                0xff => self.err(body),
                0xfb => {
                    self.expect = Expect::File;
                    Ok(Packet::LocalInfile)
                }
                _ => {
                    let mut rest = body;
                    let columns = read_lenenc(&mut rest)
                        .filter(|columns| *columns > 0 && rest.is_empty())
                        .ok_or(WireError::Malformed("column count"))?;
                    self.expect = Expect::Columns(columns);
                    Ok(Packet::Data)
                }
            },
            Expect::Columns(left) => {
                self.expect = if left > 1 {
                    Expect::Columns(left - 1)
                } else {
                    Expect::ColumnsEof
                };
                Ok(Packet::Data)
            }
            Expect::ColumnsEof => {
                if !is_eof(body) {
                    return Err(WireError::Unexpected("column definition"));
                }
                let status = parse_eof(body)?;
                // A cursor was opened: the rows come with COM_STMT_FETCH.
                self.expect = if status & status::CURSOR_EXISTS != 0 {
                    Expect::Done
                } else {
                    Expect::Rows
                };
                Ok(Packet::Eof(status))
            }
            Expect::Rows | Expect::FieldList => match first {
                0xff => self.err(body),
                0xfe if is_eof(body) => self.eof(body),
                _ => Ok(Packet::Data),
            },
            Expect::Prepare => match first {
                0x00 => {
                    let fields = body.get(1..9).ok_or(WireError::Malformed("prepare OK"))?;
                    let statement =
                        u32::from_le_bytes([fields[0], fields[1], fields[2], fields[3]]);
                    let columns = u16::from_le_bytes([fields[4], fields[5]]);
                    let parameters = u16::from_le_bytes([fields[6], fields[7]]);
                    // A non-empty group of definitions ends in an EOF.
                    let group = |count: u16| match count {
                        0 => 0,
                        count => u32::from(count) + 1,
                    };
                    self.expect = Expect::PreparedDefinitions {
                        parameters: group(parameters),
                        columns: group(columns),
                    };
                    self.settle_definitions();
                    Ok(Packet::Prepared {
                        statement,
                        columns,
                        parameters,
                    })
                }
                0xff => self.err(body),
                _ => Err(WireError::Unexpected("prepare")),
            },
            Expect::PreparedDefinitions {
                parameters,
                columns,
            } => {
                let packet = if parameters > 0 {
                    self.expect = Expect::PreparedDefinitions {
                        parameters: parameters - 1,
                        columns,
                    };
                    if parameters == 1 {
                        self.eof_packet(body)?
                    } else {
                        Packet::Data
                    }
                } else {
                    self.expect = Expect::PreparedDefinitions {
                        parameters,
                        columns: columns - 1,
                    };
                    if columns == 1 {
                        self.eof_packet(body)?
                    } else {
                        Packet::Data
                    }
                };
                self.settle_definitions();
                Ok(packet)
            }
        }
    }

    /// Ends the reply once no definition is left.
    fn settle_definitions(&mut self) {
        if let Expect::PreparedDefinitions {
            parameters: 0,
            columns: 0,
        } = self.expect
        {
            self.expect = Expect::Done;
        }
    }

    fn eof_packet<'a>(&self, body: &'a [u8]) -> Result<Packet<'a>, WireError> {
        if !is_eof(body) {
            return Err(WireError::Unexpected("definition"));
        }
        Ok(Packet::Eof(parse_eof(body)?))
    }

    fn ok<'a>(&mut self, body: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let ok = parse_ok(body, self.session_track)?;
        self.expect = if ok.status & status::MORE_RESULTS_EXISTS != 0 {
            Expect::Result
        } else {
            Expect::Done
        };
        Ok(Packet::Ok(ok))
    }

    fn eof<'a>(&mut self, body: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let status = parse_eof(body)?;
        self.expect = if status & status::MORE_RESULTS_EXISTS != 0 {
            Expect::Result
        } else {
            Expect::Done
        };
        Ok(Packet::Eof(status))
    }

    fn err<'a>(&mut self, body: &'a [u8]) -> Result<Packet<'a>, WireError> {
        self.expect = Expect::Done;
        Ok(Packet::Err(parse_err(body)?))
    }
}

#[cfg(test)]
mod tests;
