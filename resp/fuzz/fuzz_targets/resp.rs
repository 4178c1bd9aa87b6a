//! Any input: the frame check and the command parser never panic, agree
//! with themselves on prefixes, and a parsed command re-encodes to a
//! command that parses to the same arguments.
#![no_main]

use attache_resp::{Limits, check, encode, parse_command};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bulk_bytes: 4096,
        max_depth: 8,
        max_elements: 64,
        max_line_bytes: 256,
    };
    if let Ok(Some(frame)) = check(data, &limits) {
        assert!(frame.length <= data.len());
        // The frame alone is the same frame; any shorter prefix is incomplete.
        assert_eq!(check(&data[..frame.length], &limits), Ok(Some(frame)));
        for cut in [0, frame.length / 2, frame.length.saturating_sub(1)] {
            if cut < frame.length {
                assert_eq!(check(&data[..cut], &limits), Ok(None));
            }
        }
    }
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(command)) = parse_command(&mut buffer, &limits) {
        assert!(!command.args.is_empty());
        let mut again = BytesMut::from(&encode::command(command.args.iter().map(|arg| &arg[..]))[..]);
        let reparsed = parse_command(&mut again, &limits)
            .expect("a re-encoded command parses")
            .expect("whole");
        assert_eq!(reparsed.args, command.args);
        assert!(again.is_empty());
    }
});
