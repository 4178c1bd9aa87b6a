//! The packets a Postgres client sends before its session (the startup
//! phase of protocol 3), read exactly.

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Postgres' own bound on a startup-phase packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_PACKET: usize = 10_000;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// One startup-phase packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Packet {
    SslRequest,
    GssEncRequest,
    /// A cancel request, whole (length included), to forward.
    Cancel(Vec<u8>),
    /// A startup message of protocol 3.x, whole, to forward.
    Startup(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum StartupError {
    #[error("reading the startup packet failed: {0}")]
    Read(#[from] std::io::Error),
    #[error("invalid length of startup packet ({0} bytes)")]
    Length(usize),
    #[error("unsupported frontend protocol {major}.{minor}")]
    Version { major: u32, minor: u32 },
    #[error("a {what} of {length} bytes (it has 8)")]
    RequestLength { what: &'static str, length: usize },
}

/// Reads one packet: a length (itself included), then exactly that many
/// bytes; nothing beyond it is read.
pub(super) async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Packet, StartupError> {
    let mut length = [0; 4];
    reader.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if !(8..=MAX_PACKET).contains(&length) {
        return Err(StartupError::Length(length));
    }
    let mut packet = vec![0; length];
    packet[..4].copy_from_slice(&(length as u32).to_be_bytes());
    reader.read_exact(&mut packet[4..]).await?;
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let exactly_eight = |what| {
        if length == 8 {
            Ok(())
        } else {
            Err(StartupError::RequestLength { what, length })
        }
    };
    match code {
        SSL_REQUEST => exactly_eight("SSLRequest").map(|()| Packet::SslRequest),
        GSSENC_REQUEST => exactly_eight("GSSENCRequest").map(|()| Packet::GssEncRequest),
        CANCEL_REQUEST if length == 16 => Ok(Packet::Cancel(packet)),
        CANCEL_REQUEST => Err(StartupError::Length(length)),
        _ if code >> 16 == 3 => Ok(Packet::Startup(packet)),
        _ => Err(StartupError::Version {
            major: code >> 16,
            minor: code & 0xffff,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&code.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    async fn read(bytes: &[u8]) -> Result<Packet, StartupError> {
        read_packet(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn requests_and_startup_messages_are_told_apart() {
        assert_eq!(
            read(&packet(SSL_REQUEST, b"")).await.unwrap(),
            Packet::SslRequest
        );
        assert_eq!(
            read(&packet(GSSENC_REQUEST, b"")).await.unwrap(),
            Packet::GssEncRequest
        );
        let cancel = packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(read(&cancel).await.unwrap(), Packet::Cancel(cancel.clone()));
        let startup = packet(3 << 16, b"user\0app\0\0");
        assert_eq!(
            read(&startup).await.unwrap(),
            Packet::Startup(startup.clone())
        );
    }

    #[tokio::test]
    async fn only_the_packet_is_read_and_bad_ones_are_named() {
        // What follows an SSLRequest stays unread (it is TLS input).
        let mut bytes = packet(SSL_REQUEST, b"");
        bytes.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        let mut reader = &bytes[..];
        assert_eq!(read_packet(&mut reader).await.unwrap(), Packet::SslRequest);
        assert_eq!(reader.len(), 14);

        assert!(matches!(
            read(&[0, 0, 0, 4]).await,
            Err(StartupError::Length(4))
        ));
        assert!(matches!(
            read(&100_000u32.to_be_bytes()).await,
            Err(StartupError::Length(100_000))
        ));
        assert!(matches!(
            read(&packet(2 << 16, b"")).await,
            Err(StartupError::Version { major: 2, minor: 0 })
        ));
        assert!(matches!(
            read(&packet(SSL_REQUEST, b"xx")).await,
            Err(StartupError::RequestLength { .. })
        ));
        assert!(matches!(read(&[0, 0]).await, Err(StartupError::Read(_))));
    }
}
