//! What attache says first on every upstream connection it opens for the
//! ambassador: its own `AUTH` when configured, then `SELECT` for a database
//! other than 0. Each must be answered `+OK`.

use attache_resp::{Limits, check, encode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::upstream::UpstreamConnection;

/// attache's credentials for Redis, as an `AUTH` command ready to send.
#[derive(Clone)]
pub(super) struct Credentials {
    auth: Bytes,
}

impl Credentials {
    pub(super) fn new(username: Option<&str>, password: &str) -> Self {
        let auth = match username {
            Some(username) => encode::command(
                [&b"AUTH"[..], username.as_bytes(), password.as_bytes()].into_iter(),
            ),
            None => encode::command([&b"AUTH"[..], password.as_bytes()].into_iter()),
        };
        Self { auth }
    }
}

/// Authenticates (when `credentials` are given) and selects `database`.
///
/// # Errors
/// A message naming the step that failed and what Redis answered.
pub(super) async fn prepare(
    connection: &mut UpstreamConnection,
    credentials: Option<&Credentials>,
    database: u32,
    limits: &Limits,
) -> Result<(), String> {
    if let Some(credentials) = credentials {
        exchange(connection, &credentials.auth, "AUTH", limits).await?;
    }
    if database != 0 {
        let select = encode::command([&b"SELECT"[..], database.to_string().as_bytes()].into_iter());
        exchange(connection, &select, &format!("SELECT {database}"), limits).await?;
    }
    Ok(())
}

/// Sends `command` and expects `+OK`.
async fn exchange(
    connection: &mut UpstreamConnection,
    command: &[u8],
    what: &str,
    limits: &Limits,
) -> Result<(), String> {
    let stream = connection.stream();
    stream
        .write_all(command)
        .await
        .map_err(|error| format!("{what} failed: {error}"))?;
    let mut reply = BytesMut::with_capacity(64);
    loop {
        if let Some(frame) =
            check(&reply, limits).map_err(|error| format!("{what} failed: {error}"))?
        {
            let answer = &reply[..frame.length];
            if answer == b"+OK\r\n" {
                return Ok(());
            }
            return Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(answer).trim_end()
            ));
        }
        let read = stream
            .read_buf(&mut reply)
            .await
            .map_err(|error| format!("{what} failed: {error}"))?;
        if read == 0 {
            return Err(format!("the upstream closed the connection on {what}"));
        }
    }
}
