//! The first phase of a parse: does the buffer start with a whole frame,
//! and how many bytes is it? No recursion, and no allocation for the first
//! 64 levels of nesting: one counter per level in a fixed array, deeper
//! levels (a script's deep reply) in a vector, so deep or long hostile
//! input is refused by the limits, never by the stack.
//!
//! An attribute (`|`, RESP3) is counted with the frame it describes: the
//! pair list and the following frame make one [`Frame`].

use crate::{Limits, ProtocolError};

/// Levels kept on the stack.
const INLINE_LEVELS: usize = 64;

/// A whole frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Its length in bytes, attributes included.
    pub length: usize,
    /// A RESP3 push (`>`): out of band, not the reply to any command.
    pub push: bool,
}

/// What one element header said.
enum Element {
    /// Complete in itself (a line, a bulk, a null or an empty aggregate).
    Done,
    /// An aggregate with this many child frames to come.
    Open(usize),
}

/// Checks whether `buffer` starts with a whole frame.
///
/// # Errors
/// [`ProtocolError`] when the bytes seen so far cannot start a valid frame
/// within `limits`; `Ok(None)` only when more bytes could complete it.
pub fn check(buffer: &[u8], limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
    let max_depth = limits.max_depth;
    let mut remaining = Levels::default();
    let mut depth = 0;
    let mut position = 0;
    let push = buffer.first() == Some(&b'>');
    loop {
        let Some((element, next)) = element(buffer, position, limits)? else {
            return Ok(None);
        };
        position = next;
        match element {
            Element::Open(children) => {
                if depth == max_depth {
                    return Err(ProtocolError::TooDeep(max_depth));
                }
                remaining.set(depth, children);
                depth += 1;
            }
            Element::Done => {
                // Close every aggregate this element completed.
                loop {
                    if depth == 0 {
                        return Ok(Some(Frame {
                            length: position,
                            push,
                        }));
                    }
                    if remaining.count_down(depth - 1) > 0 {
                        break;
                    }
                    depth -= 1;
                }
            }
        }
    }
}

/// Children still to come per open aggregate.
struct Levels {
    inline: [usize; INLINE_LEVELS],
    deeper: Vec<usize>,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            inline: [0; INLINE_LEVELS],
            deeper: Vec::new(),
        }
    }
}

impl Levels {
    fn set(&mut self, level: usize, children: usize) {
        match self.inline.get_mut(level) {
            Some(slot) => *slot = children,
            None => {
                let index = level - INLINE_LEVELS;
                self.deeper.truncate(index);
                self.deeper.push(children);
            }
        }
    }

    /// One child of `level` done; the children still to come.
    fn count_down(&mut self, level: usize) -> usize {
        let slot = match self.inline.get_mut(level) {
            Some(slot) => slot,
            None => &mut self.deeper[level - INLINE_LEVELS],
        };
        *slot -= 1;
        *slot
    }
}

/// Reads the element header at `start`: `Ok(None)` when incomplete,
/// otherwise the element and where the next one starts.
fn element(
    buffer: &[u8],
    start: usize,
    limits: &Limits,
) -> Result<Option<(Element, usize)>, ProtocolError> {
    let Some(&kind) = buffer.get(start) else {
        return Ok(None);
    };
    let Some((line, after)) = line(buffer, start + 1, limits)? else {
        return Ok(None);
    };
    let element = match kind {
        b'+' | b'-' | b'(' => Element::Done,
        b':' => {
            integer(line).ok_or(ProtocolError::InvalidValue("integer"))?;
            Element::Done
        }
        b',' => {
            double(line).ok_or(ProtocolError::InvalidValue("double"))?;
            Element::Done
        }
        b'#' if line == b"t" || line == b"f" => Element::Done,
        b'#' => return Err(ProtocolError::InvalidValue("boolean")),
        b'_' if line.is_empty() => Element::Done,
        b'_' => return Err(ProtocolError::InvalidValue("null")),
        b'$' | b'!' | b'=' => {
            if line == b"?" {
                return Err(ProtocolError::Streamed);
            }
            if kind == b'$' && line == b"-1" {
                Element::Done
            } else {
                let length = length(line)?;
                if length > limits.max_bulk_bytes as u64 {
                    return Err(ProtocolError::BulkTooLong {
                        length,
                        limit: limits.max_bulk_bytes,
                    });
                }
                // Bounded by max_bulk_bytes, so it fits.
                let end = after + length as usize;
                if buffer.len() < end + 2 {
                    return Ok(None);
                }
                if &buffer[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError::BadLineEnding);
                }
                if kind == b'=' && (length < 4 || buffer[after + 3] != b':') {
                    return Err(ProtocolError::InvalidValue("verbatim string"));
                }
                return Ok(Some((Element::Done, end + 2)));
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if line == b"?" {
                return Err(ProtocolError::Streamed);
            }
            if kind == b'*' && line == b"-1" {
                Element::Done
            } else {
                let count = length(line)?;
                if count > limits.max_elements as u64 {
                    return Err(ProtocolError::TooManyElements {
                        count,
                        limit: limits.max_elements,
                    });
                }
                // Bounded by max_elements, so it fits.
                let count = count as usize;
                let children = match kind {
                    b'%' => count * 2,
                    // The pairs, then the frame they describe.
                    b'|' => count * 2 + 1,
                    _ => count,
                };
                if children == 0 {
                    Element::Done
                } else {
                    Element::Open(children)
                }
            }
        }
        other => return Err(ProtocolError::UnknownType(other)),
    };
    Ok(Some((element, after)))
}

/// The line from `start` to its CRLF, and where the next byte is.
pub(crate) fn line<'a>(
    buffer: &'a [u8],
    start: usize,
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let max = limits.max_line_bytes;
    let rest = buffer.get(start..).unwrap_or_default();
    // The longest allowed line and its CRLF: nothing past it is scanned.
    let window = &rest[..rest.len().min(max + 2)];
    match window.iter().position(|byte| *byte == b'\r') {
        Some(cr) if cr > max => Err(ProtocolError::LineTooLong(max)),
        Some(cr) => match window.get(cr + 1) {
            Some(b'\n') => Ok(Some((&window[..cr], start + cr + 2))),
            Some(_) => Err(ProtocolError::BadLineEnding),
            None => Ok(None),
        },
        None if window.len() > max => Err(ProtocolError::LineTooLong(max)),
        None => Ok(None),
    }
}

/// A non-negative decimal length or count.
pub(crate) fn length(line: &[u8]) -> Result<u64, ProtocolError> {
    if line.is_empty() || line.len() > 19 || !line.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidLength);
    }
    Ok(line
        .iter()
        .fold(0, |value, digit| value * 10 + u64::from(digit - b'0')))
}

fn integer(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn double(line: &[u8]) -> Option<f64> {
    match line {
        b"inf" | b"-inf" | b"nan" => Some(0.0),
        _ => std::str::from_utf8(line).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_may_nest_far_deeper_than_commands() {
        let depth = 5_000;
        let mut reply = "*1\r\n".repeat(depth).into_bytes();
        reply.extend_from_slice(b":1\r\n");
        assert_eq!(
            check(&reply, &Limits::default()),
            Err(ProtocolError::TooDeep(32))
        );
        let frame = check(&reply, &Limits::for_replies()).unwrap().unwrap();
        assert_eq!(frame.length, reply.len());
        // Siblings after a deep branch are still counted right.
        let mut wide = b"*2\r\n".to_vec();
        wide.extend_from_slice(&reply);
        wide.extend_from_slice(b"+after\r\n");
        let frame = check(&wide, &Limits::for_replies()).unwrap().unwrap();
        assert_eq!(frame.length, wide.len());
        assert_eq!(
            check(&wide[..wide.len() - 3], &Limits::for_replies()),
            Ok(None)
        );
    }

    fn checked(input: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        check(input, &Limits::default())
    }

    fn whole(input: &[u8]) -> usize {
        checked(input).unwrap().unwrap().length
    }

    #[test]
    fn resp2_frames_are_measured_whole() {
        for frame in [
            &b"+OK\r\n"[..],
            b"-ERR unknown command\r\n",
            b":-42\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            b"*2\r\n*1\r\n:1\r\n*2\r\n+a\r\n$-1\r\n",
        ] {
            let mut input = frame.to_vec();
            input.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(whole(&input), frame.len(), "{frame:?}");
        }
    }

    #[test]
    fn resp3_frames_are_measured_whole() {
        for frame in [
            &b"_\r\n"[..],
            b"#t\r\n",
            b",3.14\r\n",
            b",-inf\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2039123\r\n",
        ] {
            let mut input = frame.to_vec();
            input.extend_from_slice(b":0\r\n");
            assert_eq!(
                whole(&input),
                frame.len(),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert_eq!(
            checked(push).unwrap(),
            Some(Frame {
                length: push.len(),
                push: true
            })
        );
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let frame = b"|1\r\n+a\r\n:1\r\n*3\r\n$5\r\nhello\r\n%1\r\n+k\r\n~1\r\n#f\r\n_\r\n";
        assert_eq!(whole(frame), frame.len());
        for cut in 0..frame.len() {
            assert_eq!(checked(&frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(checked(b"?x\r\n"), Err(ProtocolError::UnknownType(b'?')));
        assert_eq!(checked(b"+OK\rX"), Err(ProtocolError::BadLineEnding));
        assert_eq!(
            checked(b"$3\r\nabcd\r\n"),
            Err(ProtocolError::BadLineEnding)
        );
        assert_eq!(checked(b"$-2\r\n"), Err(ProtocolError::InvalidLength));
        assert_eq!(checked(b"*x\r\n"), Err(ProtocolError::InvalidLength));
        assert_eq!(
            checked(b":1.5\r\n"),
            Err(ProtocolError::InvalidValue("integer"))
        );
        assert_eq!(
            checked(b"#x\r\n"),
            Err(ProtocolError::InvalidValue("boolean"))
        );
        assert_eq!(checked(b"$?\r\n"), Err(ProtocolError::Streamed));
        assert_eq!(
            checked(b"=2\r\nab\r\n"),
            Err(ProtocolError::InvalidValue("verbatim string"))
        );
    }

    #[test]
    fn limits_refuse_hostile_sizes_before_any_data_arrives() {
        let limits = Limits {
            max_bulk_bytes: 1024,
            max_depth: 3,
            max_elements: 10,
            max_line_bytes: 16,
        };
        assert_eq!(
            check(b"$1025\r\n", &limits),
            Err(ProtocolError::BulkTooLong {
                length: 1025,
                limit: 1024
            })
        );
        assert_eq!(
            check(b"*11\r\n", &limits),
            Err(ProtocolError::TooManyElements {
                count: 11,
                limit: 10
            })
        );
        assert_eq!(
            check(b"*1\r\n*1\r\n*1\r\n*1\r\n", &limits),
            Err(ProtocolError::TooDeep(3))
        );
        assert_eq!(
            check(b"*1\r\n*1\r\n*1\r\n:1\r\n", &limits)
                .unwrap()
                .unwrap()
                .length,
            16
        );
        assert_eq!(
            check(b"+aaaaaaaaaaaaaaaaaaaaaaa", &limits),
            Err(ProtocolError::LineTooLong(16))
        );
        assert_eq!(
            checked(b"$99999999999999999999\r\n"),
            Err(ProtocolError::InvalidLength),
            "a length that would overflow"
        );
    }
}
