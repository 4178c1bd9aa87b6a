//! The PROXY protocol (HAProxy's specification, versions 1 and 2): the
//! header a load balancer sends before a connection's own bytes to say who
//! the client is. Parsing is mini-redis style: [`parse`] looks at a buffer,
//! allocates nothing, and says whether a whole header is there, how long it
//! is and what it says; "incomplete" is not an error. Limits come before
//! data: a v1 line is at most 107 bytes, a v2 header at most
//! [`MAX_V2_LENGTH`]. No I/O here.
//!
//! # Layout
//! - [`parse`]: a header at the start of a buffer.
//! - [`encode_v1`], [`encode_v2`]: a header to send upstream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's bound).
pub const MAX_V1_LENGTH: usize = 107;
/// The longest v2 header accepted: addresses and a generous set of TLVs.
pub const MAX_V2_LENGTH: usize = 16 + 2048;

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    Any,
}

/// A whole header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: the connection's own bytes start after it.
    pub length: usize,
    /// The client and the address it connected to, when the header names
    /// them; `None` for v2 `LOCAL` (a health check from the balancer
    /// itself), v1 `UNKNOWN` and address families other than TCP over
    /// IPv4 and IPv6: the socket's own addresses then stand.
    pub addresses: Option<Addresses>,
}

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why the bytes are not a header this listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header")]
    NotAHeader,
    #[error("a PROXY protocol v{0} header, which this listener does not accept")]
    VersionNotAccepted(u8),
    #[error("malformed PROXY protocol v1 line")]
    BadV1,
    #[error("malformed PROXY protocol v2 header")]
    BadV2,
    #[error("PROXY protocol v2 header longer than {MAX_V2_LENGTH} bytes")]
    TooLong,
}

/// Looks for a header at the start of `buffer`.
///
/// # Errors
/// [`Error`] when the bytes seen so far cannot start a header `accept`
/// allows; `Ok(None)` only when more bytes could complete one.
pub fn parse(buffer: &[u8], accept: Accept) -> Result<Option<Header>, Error> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    if first == V2_SIGNATURE[0] {
        let seen = buffer.len().min(V2_SIGNATURE.len());
        if buffer[..seen] != V2_SIGNATURE[..seen] {
            return Err(Error::NotAHeader);
        }
        if accept == Accept::V1 {
            return Err(Error::VersionNotAccepted(2));
        }
        return v2(buffer);
    }
    let prefix = b"PROXY ";
    let seen = buffer.len().min(prefix.len());
    if buffer[..seen] != prefix[..seen] {
        return Err(Error::NotAHeader);
    }
    if accept == Accept::V2 {
        return Err(Error::VersionNotAccepted(1));
    }
    v1(buffer)
}

fn v1(buffer: &[u8]) -> Result<Option<Header>, Error> {
    let window = &buffer[..buffer.len().min(MAX_V1_LENGTH)];
    let Some(newline) = window.iter().position(|byte| *byte == b'\n') else {
        return if window.len() == MAX_V1_LENGTH {
            Err(Error::BadV1)
        } else {
            Ok(None)
        };
    };
    let line = window[..newline].strip_suffix(b"\r").ok_or(Error::BadV1)?;
    let text = std::str::from_utf8(line).map_err(|_| Error::BadV1)?;
    let mut words = text.split(' ');
    if words.next() != Some("PROXY") {
        return Err(Error::BadV1);
    }
    let length = newline + 1;
    let addresses = match words.next() {
        // Whatever follows UNKNOWN is ignored, as the specification says.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = words.collect();
            let [source, destination, source_port, destination_port] = fields[..] else {
                return Err(Error::BadV1);
            };
            let ip = |text: &str| -> Result<IpAddr, Error> {
                match (family, text.parse::<IpAddr>()) {
                    ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => Ok(ip),
                    _ => Err(Error::BadV1),
                }
            };
            let port = |text: &str| -> Result<u16, Error> {
                // Decimal, no sign, no leading zero.
                if text.is_empty() || text.len() > 5 || (text.len() > 1 && text.starts_with('0')) {
                    return Err(Error::BadV1);
                }
                text.parse().map_err(|_| Error::BadV1)
            };
            Some(Addresses {
                source: SocketAddr::new(ip(source)?, port(source_port)?),
                destination: SocketAddr::new(ip(destination)?, port(destination_port)?),
            })
        }
        _ => return Err(Error::BadV1),
    };
    Ok(Some(Header { length, addresses }))
}

fn v2(buffer: &[u8]) -> Result<Option<Header>, Error> {
    if buffer.len() < 16 {
        return Ok(None);
    }
    let version_command = buffer[12];
    if version_command >> 4 != 2 {
        return Err(Error::BadV2);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::BadV2),
    };
    let family = buffer[13];
    let declared = usize::from(u16::from_be_bytes([buffer[14], buffer[15]]));
    let length = 16 + declared;
    if length > MAX_V2_LENGTH {
        return Err(Error::TooLong);
    }
    if buffer.len() < length {
        return Ok(None);
    }
    let body = &buffer[16..length];
    if local {
        return Ok(Some(Header {
            length,
            addresses: None,
        }));
    }
    let addresses = match family {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes, then TLVs.
        0x11 => {
            let fixed = body.get(..12).ok_or(Error::BadV2)?;
            let ip =
                |at: usize| Ipv4Addr::new(fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]);
            let port = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            })
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let fixed = body.get(..36).ok_or(Error::BadV2)?;
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&fixed[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            })
        }
        // UNSPEC, UDP, UNIX: no TCP client to name.
        _ => None,
    };
    Ok(Some(Header { length, addresses }))
}

/// A v1 line naming `source` as the client of a connection to `destination`
/// (`UNKNOWN` when their families differ).
#[must_use]
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match (source, destination) {
        (SocketAddr::V4(source), SocketAddr::V4(destination)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        ),
        (SocketAddr::V6(source), SocketAddr::V6(destination)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        ),
        _ => "PROXY UNKNOWN\r\n".to_owned(),
    }
    .into_bytes()
}

/// A v2 `PROXY` header naming `source` as the client of a connection to
/// `destination`, followed by the TLVs `tlvs` (type, value).
#[must_use]
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x21);
    let mut body = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(source), SocketAddr::V4(destination)) => {
            header.push(0x11);
            body.extend_from_slice(&source.ip().octets());
            body.extend_from_slice(&destination.ip().octets());
            body.extend_from_slice(&source.port().to_be_bytes());
            body.extend_from_slice(&destination.port().to_be_bytes());
        }
        (SocketAddr::V6(source), SocketAddr::V6(destination)) => {
            header.push(0x21);
            body.extend_from_slice(&source.ip().octets());
            body.extend_from_slice(&destination.ip().octets());
            body.extend_from_slice(&source.port().to_be_bytes());
            body.extend_from_slice(&destination.port().to_be_bytes());
        }
        // Mixed families: UNSPEC, the receiver keeps its socket's view.
        _ => header.push(0x00),
    }
    for (kind, value) in tlvs {
        let length = u16::try_from(value.len()).unwrap_or(u16::MAX);
        body.push(*kind);
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(&value[..usize::from(length)]);
    }
    let length = u16::try_from(body.len()).unwrap_or(u16::MAX);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&body);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_lines_are_read_and_written() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1";
        let header = parse(line, Accept::Any).unwrap().unwrap();
        assert_eq!(header.length, 43);
        let addresses = header.addresses.unwrap();
        assert_eq!(addresses.source, address("203.0.113.7:51234"));
        assert_eq!(addresses.destination, address("10.0.0.1:443"));
        assert_eq!(
            encode_v1(address("203.0.113.7:51234"), address("10.0.0.1:443")),
            &line[..43]
        );
        let six = encode_v1(address("[2001:db8::1]:1"), address("[::1]:2"));
        let header = parse(&six, Accept::V1).unwrap().unwrap();
        assert_eq!(header.addresses.unwrap().source, address("[2001:db8::1]:1"));
        let unknown = parse(b"PROXY UNKNOWN ffff::1 whatever\r\n", Accept::Any).unwrap();
        assert_eq!(unknown.unwrap().addresses, None);
    }

    #[test]
    fn v2_headers_are_read_and_written() {
        let encoded = encode_v2(
            address("203.0.113.7:51234"),
            address("10.0.0.1:443"),
            &[(0x20, b"tls")],
        );
        let mut stream = encoded.clone();
        stream.extend_from_slice(b"payload");
        let header = parse(&stream, Accept::V2).unwrap().unwrap();
        assert_eq!(header.length, encoded.len());
        assert_eq!(
            header.addresses.unwrap().source,
            address("203.0.113.7:51234")
        );
        let six = encode_v2(address("[2001:db8::1]:1"), address("[::1]:2"), &[]);
        let header = parse(&six, Accept::Any).unwrap().unwrap();
        assert_eq!(header.addresses.unwrap().destination, address("[::1]:2"));
        // LOCAL: a health check; the socket's addresses stand.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local, Accept::Any),
            Ok(Some(Header {
                length: 16,
                addresses: None
            }))
        );
    }

    #[test]
    fn incomplete_is_not_an_error_and_garbage_is() {
        let full = encode_v2(address("1.2.3.4:5"), address("6.7.8.9:10"), &[]);
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut], Accept::Any), Ok(None), "{cut}");
        }
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut], Accept::Any), Ok(None), "{cut}");
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", Accept::Any),
            Err(Error::NotAHeader)
        );
        assert_eq!(parse(b"\r\n\r\nX", Accept::Any), Err(Error::NotAHeader));
        assert_eq!(parse(line, Accept::V2), Err(Error::VersionNotAccepted(1)));
        assert_eq!(parse(&full, Accept::V1), Err(Error::VersionNotAccepted(2)));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert_eq!(parse(bad, Accept::Any), Err(Error::BadV1), "{bad:?}");
        }
        assert_eq!(
            parse(
                &[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20),
                Accept::Any
            ),
            Err(Error::BadV1)
        );
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long, Accept::Any), Err(Error::TooLong));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short, Accept::Any), Err(Error::BadV2));
    }
}
