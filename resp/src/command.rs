//! A client's command: the array of bulk strings every client library
//! sends, or an inline command (`PING\r\n`, as typed into telnet, split
//! by Redis' own quoting rules). Parsed in two phases: a check that
//! allocates nothing, then one split of the buffer whose arguments share
//! its memory. What Redis skips (`*0`, `*-1`, empty lines) is skipped, and
//! what it refuses gets its wording.

use bytes::{Buf as _, Bytes, BytesMut};

use crate::check::{length, line};
use crate::{Limits, ProtocolError};

/// One command and its arguments (the name is the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The arguments as sent; never empty.
    pub args: Vec<Bytes>,
    /// The command exactly as it arrived (RESP), for forwarding unchanged;
    /// an inline command is re-encoded as an array.
    pub raw: Bytes,
}

impl Command {
    /// The command name, as sent.
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }

    /// Whether the command is `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    /// The name in upper case, written into `buffer` (no allocation); an
    /// empty string for a name longer than the buffer or not UTF-8, which
    /// no Redis command is.
    pub fn upper_name<'a>(&self, buffer: &'a mut [u8; 32]) -> &'a str {
        upper(self.name(), buffer)
    }
}

/// `word` in upper case in `buffer`, or empty when it does not fit or is
/// not UTF-8.
pub fn upper<'a>(word: &[u8], buffer: &'a mut [u8; 32]) -> &'a str {
    let Some(target) = buffer.get_mut(..word.len()) else {
        return "";
    };
    target.copy_from_slice(word);
    target.make_ascii_uppercase();
    std::str::from_utf8(target).unwrap_or("")
}

/// Takes one command off the front of `buffer` when a whole one is there.
/// Empty inline lines are skipped, as Redis does.
///
/// # Errors
/// [`ProtocolError`] when the input is not a command within `limits`; the
/// connection should then get an error reply and be closed.
pub fn parse_command(
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Command>, ProtocolError> {
    loop {
        match buffer.first() {
            None => return Ok(None),
            Some(b'*') => match multibulk(buffer, limits)? {
                Multibulk::Incomplete => return Ok(None),
                Multibulk::Skipped => continue,
                Multibulk::Command(command) => return Ok(Some(command)),
            },
            Some(_) => match inline(buffer, limits)? {
                Inline::Incomplete => return Ok(None),
                Inline::Empty => continue,
                Inline::Command(command) => return Ok(Some(command)),
            },
        }
    }
}

enum Multibulk {
    Incomplete,
    /// A count of zero or less: Redis reads on.
    Skipped,
    Command(Command),
}

fn multibulk(buffer: &mut BytesMut, limits: &Limits) -> Result<Multibulk, ProtocolError> {
    // Phase one: offsets of every argument, without allocating.
    let Some((count_line, mut position)) = line(buffer, 1, limits)? else {
        return Ok(Multibulk::Incomplete);
    };
    let count = match count_line {
        [b'-', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => 0,
        _ => length(count_line).map_err(|_| ProtocolError::InvalidMultibulkLength)?,
    };
    if count == 0 {
        buffer.advance(position);
        return Ok(Multibulk::Skipped);
    }
    if count > limits.max_elements as u64 {
        return Err(ProtocolError::TooManyElements {
            count,
            limit: limits.max_elements,
        });
    }
    for _ in 0..count {
        match buffer.get(position) {
            None => return Ok(Multibulk::Incomplete),
            Some(b'$') => {}
            Some(other) => return Err(ProtocolError::ExpectedBulk(*other)),
        }
        let Some((length_line, data)) = line(buffer, position + 1, limits)? else {
            return Ok(Multibulk::Incomplete);
        };
        let size = length(length_line).map_err(|_| ProtocolError::InvalidBulkLength)?;
        if size > limits.max_bulk_bytes as u64 {
            return Err(ProtocolError::BulkTooLong {
                length: size,
                limit: limits.max_bulk_bytes,
            });
        }
        let end = data + size as usize;
        if buffer.len() < end + 2 {
            return Ok(Multibulk::Incomplete);
        }
        if &buffer[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BadLineEnding);
        }
        position = end + 2;
    }
    // Phase two: split the frame off and slice the arguments out of it.
    let raw = buffer.split_to(position).freeze();
    let mut args = Vec::with_capacity(count as usize);
    let mut cursor = raw.clone();
    let (_, after_count) = line(&cursor, 1, limits)?.ok_or(ProtocolError::NotACommand)?;
    cursor.advance(after_count);
    for _ in 0..count {
        let (length_line, data) = line(&cursor, 1, limits)?.ok_or(ProtocolError::NotACommand)?;
        let size = length(length_line)? as usize;
        cursor.advance(data);
        args.push(cursor.split_to(size));
        cursor.advance(2);
    }
    Ok(Multibulk::Command(Command { args, raw }))
}

enum Inline {
    Incomplete,
    Empty,
    Command(Command),
}

fn inline(buffer: &mut BytesMut, limits: &Limits) -> Result<Inline, ProtocolError> {
    let window = &buffer[..buffer.len().min(limits.max_line_bytes + 2)];
    let Some(newline) = window.iter().position(|byte| *byte == b'\n') else {
        if window.len() > limits.max_line_bytes {
            return Err(ProtocolError::LineTooLong(limits.max_line_bytes));
        }
        return Ok(Inline::Incomplete);
    };
    let line = buffer.split_to(newline + 1).freeze();
    let text = &line[..newline];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let args = split_arguments(text)?;
    if args.is_empty() {
        return Ok(Inline::Empty);
    }
    let raw = crate::encode::command(args.iter().map(|arg| &arg[..]));
    Ok(Inline::Command(Command { args, raw }))
}

/// Splits an inline command as Redis does (`sdssplitargs`): words apart by
/// spaces; `"..."` with `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH` and `\`
/// before any other character; `'...'` with `\'`; a closing quote must end
/// its word.
///
/// # Errors
/// [`ProtocolError::UnbalancedQuotes`] for an unclosed quote, or a closing
/// quote with more of the word after it.
fn split_arguments(text: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let is_space = |byte: u8| matches!(byte, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c);
    let ends_word = |at: usize| text.get(at).is_none_or(|byte| is_space(*byte));
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while text.get(at).is_some_and(|byte| is_space(*byte)) {
            at += 1;
        }
        if at == text.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        let (mut double, mut single) = (false, false);
        loop {
            let Some(&byte) = text.get(at) else {
                if double || single {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if double {
                match byte {
                    b'\\'
                        if text.get(at + 1) == Some(&b'x')
                            && text.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
                            && text.get(at + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        let hex = std::str::from_utf8(&text[at + 2..at + 4]).unwrap_or("00");
                        word.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                        at += 3;
                    }
                    b'\\' if at + 1 < text.len() => {
                        at += 1;
                        word.push(match text[at] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    b'"' => {
                        if !ends_word(at + 1) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        at += 1;
                        break;
                    }
                    other => word.push(other),
                }
            } else if single {
                match byte {
                    b'\\' if text.get(at + 1) == Some(&b'\'') => {
                        word.push(b'\'');
                        at += 1;
                    }
                    b'\'' => {
                        if !ends_word(at + 1) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        at += 1;
                        break;
                    }
                    other => word.push(other),
                }
            } else {
                match byte {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => double = true,
                    b'\'' => single = true,
                    other => word.push(other),
                }
            }
            at += 1;
        }
        args.push(Bytes::from(word));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> (Result<Option<Command>, ProtocolError>, usize) {
        let mut buffer = BytesMut::from(input);
        let result = parse_command(&mut buffer, &Limits::default());
        (result, buffer.len())
    }

    #[test]
    fn a_pipeline_is_taken_one_command_at_a_time() {
        let mut buffer = BytesMut::from(
            &b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET"[..],
        );
        let limits = Limits::default();
        let first = parse_command(&mut buffer, &limits).unwrap().unwrap();
        assert_eq!(first.args, vec![Bytes::from("GET"), Bytes::from("key")]);
        assert_eq!(&first.raw[..], b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
        assert!(first.is("get"));
        let second = parse_command(&mut buffer, &limits).unwrap().unwrap();
        assert!(second.is("PING"));
        assert_eq!(parse_command(&mut buffer, &limits), Ok(None));
        assert_eq!(
            &buffer[..],
            b"*3\r\n$3\r\nSET",
            "an incomplete command stays buffered"
        );
    }

    #[test]
    fn binary_arguments_survive() {
        let (result, left) = parse(b"*2\r\n$3\r\nSET\r\n$4\r\n\r\n\x00\xff\r\n");
        assert_eq!(
            result.unwrap().unwrap().args[1],
            Bytes::from_static(b"\r\n\x00\xff")
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn inline_commands_are_split_on_spaces_and_reencoded() {
        let (result, left) = parse(b"\r\n  set  key\tvalue\r\nPING\n");
        let command = result.unwrap().unwrap();
        assert_eq!(
            command.args,
            vec![Bytes::from("set"), Bytes::from("key"), Bytes::from("value")]
        );
        assert_eq!(
            &command.raw[..],
            b"*3\r\n$3\r\nset\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
        );
        assert_eq!(left, 5);
    }

    #[test]
    fn inline_commands_follow_redis_quoting() {
        let args = |input: &[u8]| parse(input).0.map(|command| command.unwrap().args);
        assert_eq!(
            args(b"set \"sp ace\" v\r\n"),
            Ok(vec![
                Bytes::from("set"),
                Bytes::from("sp ace"),
                Bytes::from("v")
            ])
        );
        assert_eq!(
            args(b"get \"a\\x41b\\n\" 'it\\'s'\r\n"),
            Ok(vec![
                Bytes::from("get"),
                Bytes::from("aAb\n"),
                Bytes::from("it's")
            ])
        );
        assert_eq!(args(b"get ab\"cd\"\r\n").unwrap()[1], Bytes::from("abcd"));
        for unbalanced in [
            &b"set \"\"\"test-key\"\"\" test-value\r\n"[..],
            b"set \"open v\r\n",
            b"set 'a'b v\r\n",
        ] {
            assert_eq!(
                args(unbalanced),
                Err(ProtocolError::UnbalancedQuotes),
                "{}",
                String::from_utf8_lossy(unbalanced)
            );
        }
        assert_eq!(
            ProtocolError::UnbalancedQuotes.to_string(),
            "unbalanced quotes in request"
        );
    }

    #[test]
    fn empty_and_negative_multibulk_counts_are_skipped_as_redis_does() {
        let (result, left) = parse(b"*0\r\n*-10\r\n*1\r\n$4\r\nPING\r\n");
        assert!(result.unwrap().unwrap().is("PING"));
        assert_eq!(left, 0);
    }

    #[test]
    fn what_is_not_a_command_is_refused_in_redis_words() {
        assert_eq!(
            parse(b"*x\r\n").0,
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n:1\r\n").0,
            Err(ProtocolError::ExpectedBulk(b':'))
        );
        assert_eq!(
            ProtocolError::ExpectedBulk(b'f').to_string(),
            "expected '$', got 'f'"
        );
        assert_eq!(
            parse(b"*1\r\n$3\r\nGETX\r\n").0,
            Err(ProtocolError::BadLineEnding)
        );
        assert_eq!(
            parse(b"*1\r\n$-1\r\n").0,
            Err(ProtocolError::InvalidBulkLength)
        );
        let huge = format!("*1\r\n${}\r\n", 600 * 1024 * 1024);
        assert!(matches!(
            parse(huge.as_bytes()).0,
            Err(ProtocolError::BulkTooLong { .. })
        ));
        assert_eq!(
            parse(&vec![b'a'; 70 * 1024]).0,
            Err(ProtocolError::LineTooLong(64 * 1024))
        );
    }
}
