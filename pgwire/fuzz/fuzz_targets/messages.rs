//! Any bytes, as a client or a server would send them: splitting never
//! panics, never buffers past its limit, hands out only whole messages
//! whose length field matches, leaves a cut-short message in the buffer
//! (never another answer), and the field readers (error fields, parameter
//! status, startup parameters, C strings) never read past their input.
#![no_main]

use attache_pg_wire::{
    HEADER, WireError, body, cstr, error_field, parameter, peek, read_u32, split, sqlstate,
    startup_parameters,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    let mut consumed = 0;
    loop {
        let before = buffer.len();
        match split(&mut buffer, LIMIT) {
            Ok(Some(message)) => {
                assert!(message.len() >= HEADER && message.len() <= LIMIT);
                let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
                assert_eq!(length as usize + 1, message.len());
                assert_eq!(before - buffer.len(), message.len());
                assert_eq!(&data[consumed..consumed + message.len()], &message[..]);
                consumed += message.len();
                let fields = body(&message);
                let _ = sqlstate(fields);
                let _ = error_field(fields, b'M');
                let _ = parameter(fields);
                let mut rest = fields;
                while cstr(&mut rest, "fuzz").is_ok() {}
                let mut rest = fields;
                while read_u32(&mut rest, "fuzz").is_ok() {}
            }
            Ok(None) => {
                // Incomplete: nothing taken, and whatever header is there
                // announces more than is buffered.
                assert_eq!(buffer.len(), before);
                if let Ok(Some((_, whole))) = peek(&buffer, LIMIT) {
                    assert!(whole > buffer.len());
                }
                break;
            }
            Err(WireError::TooLarge { length, limit }) => {
                assert!(length > limit);
                break;
            }
            Err(_) => break,
        }
    }
    if let Ok(parameters) = startup_parameters(data) {
        for (name, value) in parameters {
            assert!(!name.is_empty());
            assert!(!name.contains('\0') && !value.contains('\0'));
        }
    }
});
