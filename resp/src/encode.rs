//! Frames attache writes itself: error replies, its own commands to the
//! server (AUTH, SELECT, HELLO), and inline commands re-encoded as arrays.

use bytes::{BufMut as _, Bytes, BytesMut};

/// An error reply: `-<message>\r\n`; CR and LF in `message` become spaces.
pub fn error(message: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(message.len() + 3);
    frame.put_u8(b'-');
    frame.extend(message.bytes().map(|byte| {
        if byte == b'\r' || byte == b'\n' {
            b' '
        } else {
            byte
        }
    }));
    frame.put_slice(b"\r\n");
    frame.freeze()
}

/// A command as an array of bulk strings.
pub fn command<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        frame.put_slice(format!("${}\r\n", arg.len()).as_bytes());
        frame.put_slice(arg);
        frame.put_slice(b"\r\n");
    }
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_on_one_line() {
        assert_eq!(&error("ERR bad\r\nthing")[..], b"-ERR bad  thing\r\n");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let args: [&[u8]; 2] = [b"AUTH", b"s3cret"];
        assert_eq!(
            &command(args.into_iter())[..],
            b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n"
        );
    }
}
