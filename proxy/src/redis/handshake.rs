//! What attache says first on every upstream connection it opens for the
//! ambassador: `HELLO 3` for a RESP3 connection (with its login folded in),
//! else its own `AUTH` when configured; then `SELECT` for a database other
//! than 0. Each must be answered (`+OK`; for HELLO, anything but an error).

use attache_resp::{Limits, check, encode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::error::RedisError;
use crate::upstream::UpstreamConnection;

/// `HELLO 3` without credentials.
const HELLO_3: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";

/// attache's credentials for Redis, as commands ready to send.
#[derive(Clone)]
pub(super) struct Credentials {
    auth: Bytes,
    /// `HELLO 3 AUTH user password`: RESP3 and login in one exchange.
    hello: Bytes,
}

impl Credentials {
    pub(super) fn new(username: Option<&str>, password: &str) -> Self {
        let user = username.unwrap_or("default");
        let auth = match username {
            Some(username) => encode::command(
                [&b"AUTH"[..], username.as_bytes(), password.as_bytes()].into_iter(),
            ),
            None => encode::command([&b"AUTH"[..], password.as_bytes()].into_iter()),
        };
        let hello = encode::command(
            [
                &b"HELLO"[..],
                b"3",
                b"AUTH",
                user.as_bytes(),
                password.as_bytes(),
            ]
            .into_iter(),
        );
        Self { auth, hello }
    }
}

/// Switches to RESP3 when `protocol` is 3, authenticates (when
/// `credentials` are given) and selects `database`.
///
/// # Errors
/// [`RedisError::Setup`] naming the step that failed and why, or
/// [`RedisError::SetupRefused`] with what Redis answered.
pub(super) async fn prepare(
    connection: &mut UpstreamConnection,
    credentials: Option<&Credentials>,
    protocol: u8,
    database: u32,
    limits: &Limits,
) -> Result<(), RedisError> {
    match (protocol, credentials) {
        (3, Some(credentials)) => {
            exchange(connection, &credentials.hello, "HELLO 3", limits).await?;
        }
        (3, None) => exchange(connection, HELLO_3, "HELLO 3", limits).await?,
        (_, Some(credentials)) => exchange(connection, &credentials.auth, "AUTH", limits).await?,
        (_, None) => {}
    }
    if database != 0 {
        let select = encode::command([&b"SELECT"[..], database.to_string().as_bytes()].into_iter());
        exchange(connection, &select, &format!("SELECT {database}"), limits).await?;
    }
    Ok(())
}

/// Sends `command` and expects `+OK` (for HELLO, any answer but an error).
async fn exchange(
    connection: &mut UpstreamConnection,
    command: &[u8],
    step: &str,
    limits: &Limits,
) -> Result<(), RedisError> {
    let failed = |cause| RedisError::Setup {
        step: step.to_owned(),
        cause: Box::new(cause),
    };
    connection
        .stream()
        .write_all(command)
        .await
        .map_err(|error| failed(RedisError::Write(error)))?;
    let mut buffer = BytesMut::with_capacity(256);
    let answer = read_frame(connection, &mut buffer, limits)
        .await
        .map_err(failed)?;
    let accepted = if step.starts_with("HELLO") {
        !answer.starts_with(b"-")
    } else {
        &answer[..] == b"+OK\r\n"
    };
    if accepted {
        Ok(())
    } else {
        Err(RedisError::SetupRefused {
            step: step.to_owned(),
            answer: String::from_utf8_lossy(&answer).trim_end().to_owned(),
        })
    }
}

/// Reads from `connection` into `buffer` until it holds a whole frame, and
/// takes that frame off it.
///
/// # Errors
/// When the connection fails or closes first, or sends invalid RESP.
pub(super) async fn read_frame(
    connection: &mut UpstreamConnection,
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Bytes, RedisError> {
    loop {
        if let Some(frame) = check(buffer, limits).map_err(RedisError::InvalidReply)? {
            return Ok(buffer.split_to(frame.length).freeze());
        }
        let read = connection
            .stream()
            .read_buf(buffer)
            .await
            .map_err(RedisError::Read)?;
        if read == 0 {
            return Err(RedisError::Closed);
        }
    }
}
