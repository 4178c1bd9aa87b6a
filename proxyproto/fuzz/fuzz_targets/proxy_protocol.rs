//! Any bytes: the parser never panics, never reads past the buffer, and a
//! header it accepts is within its limits, fits the input, parses the same
//! at every acceptance that allows it, and is "incomplete" (never another
//! answer) when cut short.
#![no_main]

use attache_proxy_protocol::{Accept, Error, MAX_V1_LENGTH, MAX_V2_LENGTH, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let any = parse(data, Accept::Any);
    for accept in [Accept::V1, Accept::V2] {
        match (parse(data, accept), &any) {
            (Ok(header), Ok(expected)) => assert_eq!(&header, expected),
            // Refused for its version, whatever the bytes after the prefix.
            (Err(Error::VersionNotAccepted(_)), _) => {}
            (Err(error), Err(expected)) => assert_eq!(&error, expected),
            (got, expected) => panic!("{got:?} with {accept:?}, {expected:?} with any"),
        }
    }
    if let Ok(Some(header)) = any {
        assert!(header.length <= data.len());
        assert!(header.length <= MAX_V1_LENGTH.max(MAX_V2_LENGTH));
        for cut in [0, 1, header.length / 2, header.length - 1] {
            assert_eq!(parse(&data[..cut], Accept::Any), Ok(None));
        }
    }
});
