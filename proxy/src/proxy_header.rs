//! The PROXY protocol step of the listener pipeline: from a trusted load
//! balancer, every connection starts with a header naming the client, read
//! here byte-exactly (never a byte of the client's own data) within the
//! listener's timeout; its source address then is the client address
//! everywhere (logs, `X-Forwarded-For`, spans). Parsing is the
//! `attache-proxy-protocol` crate's.

use std::net::SocketAddr;

use attache_config::{ProxyProtocol, ProxyProtocolVersion};
use attache_proxy_protocol::{Accept, MAX_V1_LENGTH, parse};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Why a connection was refused before its protocol saw it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderRefused {
    #[error("a PROXY protocol header is only accepted from the listener's trusted addresses")]
    Untrusted,
    #[error(transparent)]
    Malformed(#[from] attache_proxy_protocol::Error),
    #[error("no whole PROXY protocol header within {0:?}")]
    Timeout(std::time::Duration),
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header a connection from `socket` (peer, local address) must
/// start with, and returns the client and destination addresses it names
/// (the socket's own for a v2 `LOCAL` health check or an address family
/// without addresses).
///
/// # Errors
/// [`HeaderRefused`]: the connection is to be closed.
pub(crate) async fn read(
    stream: &mut TcpStream,
    socket: (SocketAddr, SocketAddr),
    settings: &ProxyProtocol,
) -> Result<(SocketAddr, SocketAddr), HeaderRefused> {
    let (peer, _) = socket;
    if !settings
        .trusted
        .iter()
        .any(|network| network.contains(peer.ip()))
    {
        return Err(HeaderRefused::Untrusted);
    }
    let accept = match settings.accept {
        ProxyProtocolVersion::V1 => Accept::V1,
        ProxyProtocolVersion::V2 => Accept::V2,
        ProxyProtocolVersion::Any => Accept::Any,
    };
    let header = tokio::time::timeout(settings.timeout, read_header(stream, accept))
        .await
        .map_err(|_| HeaderRefused::Timeout(settings.timeout))??;
    Ok(header.addresses.map_or(socket, |addresses| {
        (addresses.source, addresses.destination)
    }))
}

/// Reads exactly one header: the six bytes both versions start with, then
/// a v2 header by its length field, or a v1 line byte by byte up to its
/// line feed (at most 107 bytes; v1 has no length to read ahead by).
async fn read_header(
    stream: &mut TcpStream,
    accept: Accept,
) -> Result<attache_proxy_protocol::Header, HeaderRefused> {
    let mut buffer = vec![0; 6];
    stream.read_exact(&mut buffer).await?;
    loop {
        if let Some(header) = parse(&buffer, accept)? {
            return Ok(header);
        }
        let wanted = if buffer.starts_with(&attache_proxy_protocol::V2_SIGNATURE[..6]) {
            match buffer.len() {
                length if length < 16 => 16 - length,
                _ => 16 + usize::from(u16::from_be_bytes([buffer[14], buffer[15]])) - buffer.len(),
            }
        } else {
            // The parser refuses a v1 line longer than MAX_V1_LENGTH.
            debug_assert!(buffer.len() < MAX_V1_LENGTH);
            1
        };
        let start = buffer.len();
        buffer.resize(start + wanted, 0);
        stream.read_exact(&mut buffer[start..]).await?;
    }
}
