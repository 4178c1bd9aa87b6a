//! Postgres protocol 3 messages after the startup phase: splitting whole
//! messages off a read buffer (bounded: the length is checked against a
//! limit before anything is buffered), reading the few fields a pooler
//! looks at, and the messages it writes itself. No I/O here; fuzzed
//! (`fuzz/`) with any bytes.
//!
//! Every message is a type byte and a length that counts itself and the
//! body. Messages are kept whole, as received, so what a proxy does not
//! change it forwards byte for byte.

use bytes::{Buf as _, BufMut as _, BytesMut};

/// The header: a type byte and the length.
pub const HEADER: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("invalid message length {0}")]
    Length(u32),
    #[error("a message of {length} bytes is over the limit of {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// The type byte and whole length of the next message in `buffer`, once
/// its header is there.
pub fn peek(buffer: &[u8], limit: usize) -> Result<Option<(u8, usize)>, WireError> {
    if buffer.len() < HEADER {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
    if length < 4 {
        return Err(WireError::Length(length));
    }
    let whole = length as usize + 1;
    if whole > limit {
        return Err(WireError::TooLarge {
            length: whole,
            limit,
        });
    }
    Ok(Some((buffer[0], whole)))
}

/// Splits the next whole message (header included) off `buffer`.
pub fn split(buffer: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, WireError> {
    match peek(buffer, limit)? {
        Some((_, whole)) if buffer.len() >= whole => Ok(Some(buffer.split_to(whole))),
        _ => Ok(None),
    }
}

/// A message's body: what follows its header.
pub fn body(message: &[u8]) -> &[u8] {
    &message[HEADER..]
}

/// Reads a NUL-terminated string off the front of `bytes`.
pub fn cstr<'a>(bytes: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], WireError> {
    let end = bytes
        .iter()
        .position(|byte| *byte == 0)
        .ok_or(WireError::Malformed(what))?;
    let text = &bytes[..end];
    *bytes = &bytes[end + 1..];
    Ok(text)
}

/// Starts a message of type `tag`; [`finish`] writes its length.
pub fn start(out: &mut BytesMut, tag: u8) -> usize {
    let at = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    at
}

pub fn finish(out: &mut BytesMut, at: usize) {
    let length = (out.len() - at - 1) as u32;
    out[at + 1..at + 5].copy_from_slice(&length.to_be_bytes());
}

/// A whole message of type `tag` with `body`.
pub fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = start(out, tag);
    out.put_slice(body);
    finish(out, at);
}

/// `ErrorResponse` with severity, SQLSTATE and message.
pub fn error_response(out: &mut BytesMut, severity: &str, code: &str, text: &str) {
    let at = start(out, b'E');
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        out.put_u8(field);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    finish(out, at);
}

/// A FATAL `ErrorResponse` on its own.
pub fn fatal(code: &str, text: &str) -> BytesMut {
    let mut out = BytesMut::new();
    error_response(&mut out, "FATAL", code, text);
    out
}

pub fn authentication_ok(out: &mut BytesMut) {
    message(out, b'R', &0u32.to_be_bytes());
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = start(out, b'S');
    for text in [name, value] {
        out.put_slice(text.as_bytes());
        out.put_u8(0);
    }
    finish(out, at);
}

pub fn backend_key_data(out: &mut BytesMut, process_id: u32, secret: u32) {
    let at = start(out, b'K');
    out.put_u32(process_id);
    out.put_u32(secret);
    finish(out, at);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', &[status]);
}

/// A simple `Query`.
pub fn query(out: &mut BytesMut, text: &str) {
    let at = start(out, b'Q');
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    finish(out, at);
}

/// The SQLSTATE (`C` field) of an `ErrorResponse` body.
pub fn sqlstate(body: &[u8]) -> Option<&str> {
    error_field(body, b'C')
}

/// One field of an `ErrorResponse` or `NoticeResponse` body.
pub fn error_field(mut body: &[u8], wanted: u8) -> Option<&str> {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return None;
        }
        body = rest;
        let value = cstr(&mut body, "ErrorResponse").ok()?;
        if field == wanted {
            return std::str::from_utf8(value).ok();
        }
    }
    None
}

/// A `ParameterStatus` body: name and value.
pub fn parameter(body: &[u8]) -> Option<(String, String)> {
    let mut rest = body;
    let name = cstr(&mut rest, "ParameterStatus").ok()?;
    let value = cstr(&mut rest, "ParameterStatus").ok()?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The parameters of a startup message (its bytes after length and
/// version): name/value pairs until an empty name.
pub fn startup_parameters(packet: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut rest = packet.get(8..).ok_or(WireError::Malformed("startup"))?;
    let mut parameters = Vec::new();
    loop {
        let name = cstr(&mut rest, "startup")?;
        if name.is_empty() {
            return Ok(parameters);
        }
        let value = cstr(&mut rest, "startup")?;
        let text = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| WireError::Malformed("startup"))
        };
        parameters.push((text(name)?, text(value)?));
    }
}

/// Reads a big-endian `u32` off the front of `bytes`.
pub fn read_u32(bytes: &mut &[u8], what: &'static str) -> Result<u32, WireError> {
    if bytes.len() < 4 {
        return Err(WireError::Malformed(what));
    }
    Ok(bytes.get_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_are_split_off_and_partial_ones_wait() {
        let mut buffer = BytesMut::new();
        query(&mut buffer, "select 1");
        ready_for_query(&mut buffer, b'I');
        buffer.extend_from_slice(b"Z\0\0");
        let first = split(&mut buffer, 1024).unwrap().unwrap();
        assert_eq!(&first[..], b"Q\0\0\0\x0dselect 1\0");
        let second = split(&mut buffer, 1024).unwrap().unwrap();
        assert_eq!(&second[..], b"Z\0\0\0\x05I");
        assert_eq!(split(&mut buffer, 1024).unwrap(), None);
        assert_eq!(&buffer[..], b"Z\0\0");
    }

    #[test]
    fn lengths_are_checked_before_anything_is_buffered() {
        let mut buffer = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert_eq!(
            split(&mut buffer, 1 << 20),
            Err(WireError::TooLarge {
                length: 0x8000_0000,
                limit: 1 << 20
            })
        );
        let mut short = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(split(&mut short, 1 << 20), Err(WireError::Length(3)));
    }

    #[test]
    fn a_fatal_error_is_a_well_formed_error_response() {
        let reply = fatal("28000", "no");
        let length = u32::from_be_bytes([reply[1], reply[2], reply[3], reply[4]]) as usize;
        assert_eq!(length, reply.len() - 1);
        assert_eq!(&reply[..], b"E\0\0\0\x1eSFATAL\0VFATAL\0C28000\0Mno\0\0");
    }

    #[test]
    fn error_fields_and_parameters_are_read() {
        let mut out = BytesMut::new();
        error_response(&mut out, "ERROR", "57014", "canceling statement");
        assert_eq!(sqlstate(body(&out)), Some("57014"));
        assert_eq!(error_field(body(&out), b'M'), Some("canceling statement"));
        let mut status = BytesMut::new();
        parameter_status(&mut status, "TimeZone", "UTC");
        assert_eq!(
            parameter(body(&status)),
            Some(("TimeZone".into(), "UTC".into()))
        );
        let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0app\0database\0test\0\0");
        assert_eq!(
            startup_parameters(&startup).unwrap(),
            vec![
                ("user".into(), "app".into()),
                ("database".into(), "test".into())
            ]
        );
        assert_eq!(
            startup_parameters(&startup[..12]),
            Err(WireError::Malformed("startup"))
        );
    }
}
