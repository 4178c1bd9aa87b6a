//! Any bytes, as a client or a server would send them: splitting never
//! panics, never buffers past its limit, hands out only whole packets and
//! messages whose length fields match, leaves a cut-short one in the
//! buffer; the reply state machine, fed the same packets after any
//! command, never panics and stops taking packets once done (or on an
//! error); the field readers never read past their input, and an
//! execution's layout lies inside its payload.
#![no_main]

use attache_mysql_wire::{
    HEADER, Packet, Reply, WireError, execute_layout, header, message_payload,
    ok_without_session_track, parse_eof, parse_err, parse_ok, payload, split_message,
    split_packet, state_changes, statement_id,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&command, data)) = data.split_first() else {
        return;
    };
    let session_track = command & 1 == 1;

    let mut buffer = BytesMut::from(data);
    if let Ok(Some(message)) = split_message(&mut buffer, LIMIT) {
        assert!(message_payload(&message).len() <= LIMIT);
        assert_eq!(&data[..message.len()], &message[..]);
    }

    let mut buffer = BytesMut::from(data);
    let mut reply = Reply::to(command, session_track);
    let mut consumed = 0;
    loop {
        let before = buffer.len();
        match split_packet(&mut buffer, LIMIT) {
            Ok(Some(packet)) => {
                let (length, _) = header(&packet).expect("a whole packet has a header");
                assert_eq!(packet.len(), HEADER + length);
                assert!(length <= LIMIT);
                assert_eq!(&data[consumed..consumed + packet.len()], &packet[..]);
                consumed += packet.len();
                let body = payload(&packet);
                if let Ok(ok) = parse_ok(body, session_track) {
                    let _ = state_changes(ok.state_changes);
                    let plain = ok_without_session_track(&ok, 1);
                    let again = parse_ok(payload(&plain), false).expect("a written OK reads back");
                    assert_eq!(again.affected_rows, ok.affected_rows);
                    assert_eq!(again.info, ok.info);
                }
                let _ = parse_err(body);
                let _ = parse_eof(body);
                let _ = statement_id(body);
                if let Ok(Some(layout)) = execute_layout(body, u16::from(command) * 3) {
                    assert!(layout.bound_flag < body.len());
                    if let Some(types) = layout.types {
                        assert_eq!(types.start, layout.bound_flag + 1);
                        assert!(types.end <= body.len());
                    }
                }
                if let Some(following) = reply.as_mut() {
                    let was_done = following.done();
                    match following.packet(&packet) {
                        Ok(Packet::LocalInfile) => following.file_sent(),
                        Ok(_) => assert!(!was_done, "a done reply took a packet"),
                        Err(_) => reply = None,
                    }
                }
            }
            Ok(None) => {
                assert_eq!(buffer.len(), before);
                if let Some((length, _)) = header(&buffer) {
                    assert!(HEADER + length > buffer.len());
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
});
