//! Where the ambassador's connections go: a fixed upstream, or the master
//! a group of Redis Sentinels names. For Sentinel, a task asks a Sentinel
//! for the master (`SENTINEL get-master-addr-by-name`), then listens for
//! `+switch-master` on it; each new master gets an upstream of its own and
//! a new generation number, so connections to the old one can tell they
//! are stale. Sentinels are reached through the configured upstream (its
//! endpoints are the Sentinels), with its retries and breakers.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use attache_resp::{Limits, encode};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::RedisError;
use super::handshake;
use crate::reload::SharedClientConfig;
use crate::telemetry::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamConnection};

/// How long the Sentinel watcher waits before trying again after a failure.
const SENTINEL_RETRY: Duration = Duration::from_secs(1);

/// The upstream connections are made to.
pub(crate) enum Target {
    Fixed(Arc<Upstream>),
    Sentinel {
        master: Arc<SentinelMaster>,
        /// Stops following the Sentinels when the target is dropped.
        _following: DropGuard,
    },
}

impl Target {
    /// A connection to the current master, and the generation it belongs to.
    ///
    /// # Errors
    /// Why no connection was made.
    pub(super) async fn connect(&self) -> Result<(UpstreamConnection, u64), RedisError> {
        match self {
            Self::Fixed(upstream) => Ok((upstream.connect().await?, 0)),
            Self::Sentinel { master, .. } => master.connect().await,
        }
    }

    /// The current generation: it changes when Sentinel names a new master.
    pub(super) fn generation(&self) -> u64 {
        match self {
            Self::Fixed(_) => 0,
            Self::Sentinel { master, .. } => *master.generation.borrow(),
        }
    }

    /// Follows generation changes; `None` for a fixed upstream.
    pub(super) fn changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Self::Fixed(_) => None,
            Self::Sentinel { master, .. } => Some(master.generation.subscribe()),
        }
    }
}

/// The master of a Sentinel-monitored group.
pub(crate) struct SentinelMaster {
    master_name: String,
    /// The upstream's settings, used for each master's own upstream.
    config: attache_config::Upstream,
    tls: Option<SharedClientConfig>,
    metrics: Arc<Metrics>,
    current: ArcSwapOption<Upstream>,
    generation: watch::Sender<u64>,
}

impl SentinelMaster {
    /// Starts following the master named `master_name` through
    /// `sentinels`, until the target is dropped.
    pub(crate) fn start(
        sentinels: Arc<Upstream>,
        config: &attache_config::Upstream,
        master_name: String,
        tls: Option<SharedClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Target {
        let master = Arc::new(Self {
            master_name,
            config: attache_config::Upstream {
                sentinel: None,
                proxy_protocol: None,
                health_check: None,
                warm_pool: None,
                ..config.clone()
            },
            tls,
            metrics,
            current: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
        });
        let following = CancellationToken::new();
        tokio::spawn(
            following
                .clone()
                .run_until_cancelled_owned(follow(sentinels, master.clone())),
        );
        Target::Sentinel {
            master,
            _following: following.drop_guard(),
        }
    }

    async fn connect(&self) -> Result<(UpstreamConnection, u64), RedisError> {
        let generation = *self.generation.borrow();
        let Some(upstream) = self.current.load_full() else {
            return Err(RedisError::NoMasterYet(self.master_name.clone()));
        };
        Ok((upstream.connect().await?, generation))
    }

    /// Makes `endpoint` the master, unless it already is.
    fn set_master(&self, endpoint: attache_config::Endpoint) {
        let current = self.current.load();
        if current
            .as_ref()
            .is_some_and(|upstream| upstream.endpoint(0).address == endpoint)
        {
            return;
        }
        let config = attache_config::Upstream {
            endpoints: vec![endpoint.clone()],
            ..self.config.clone()
        };
        match Upstream::new(&config, self.tls.clone(), None, &self.metrics) {
            Ok(upstream) => {
                tracing::info!(master_name = %self.master_name, master = %endpoint, "Redis master (from Sentinel)");
                self.current.store(Some(Arc::new(upstream)));
                self.generation.send_modify(|generation| *generation += 1);
            }
            Err(error) => {
                tracing::warn!(master_name = %self.master_name, master = %endpoint, %error, "cannot use the master Sentinel named");
            }
        }
    }
}

/// Asks a Sentinel for the master, then follows `+switch-master`; on any
/// failure, starts over with the next Sentinel.
async fn follow(sentinels: Arc<Upstream>, master: Arc<SentinelMaster>) {
    let limits = Limits::default();
    loop {
        match watch_one(&sentinels, &master, &limits).await {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(master_name = %master.master_name, %error, "Sentinel connection failed; trying again");
            }
        }
        tokio::time::sleep(SENTINEL_RETRY).await;
    }
}

async fn watch_one(
    sentinels: &Upstream,
    master: &SentinelMaster,
    limits: &Limits,
) -> Result<(), RedisError> {
    let mut connection = sentinels.connect().await?;
    let query = encode::command(
        [
            &b"SENTINEL"[..],
            b"get-master-addr-by-name",
            master.master_name.as_bytes(),
        ]
        .into_iter(),
    );
    let mut buffer = BytesMut::with_capacity(1024);
    let reply = exchange(&mut connection, &query, &mut buffer, limits).await?;
    match bulk_strings(&reply).as_slice() {
        [host, port] => master.set_master(endpoint(host, port)?),
        _ => {
            return Err(RedisError::UnknownMaster(master.master_name.clone()));
        }
    }
    let subscribe = encode::command([&b"SUBSCRIBE"[..], b"+switch-master"].into_iter());
    exchange(&mut connection, &subscribe, &mut buffer, limits).await?;
    loop {
        let message = handshake::read_frame(&mut connection, &mut buffer, limits).await?;
        // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
        if let [kind, _, payload] = bulk_strings(&message).as_slice()
            && kind.as_ref() == b"message"
        {
            let text = String::from_utf8_lossy(payload);
            let fields: Vec<&str> = text.split_whitespace().collect();
            if let [name, _, _, host, port] = fields.as_slice()
                && *name == master.master_name
            {
                master.set_master(endpoint(host.as_bytes(), port.as_bytes())?);
            }
        }
    }
}

fn endpoint(host: &[u8], port: &[u8]) -> Result<attache_config::Endpoint, RedisError> {
    let text = format!(
        "{}:{}",
        String::from_utf8_lossy(host),
        String::from_utf8_lossy(port)
    );
    let text = if text.matches(':').count() > 1 {
        // An IPv6 master.
        let (host, port) = text.rsplit_once(':').unwrap_or((&text, ""));
        format!("[{host}]:{port}")
    } else {
        text
    };
    text.parse().map_err(RedisError::UnusableMaster)
}

async fn exchange(
    connection: &mut UpstreamConnection,
    command: &[u8],
    buffer: &mut BytesMut,
    limits: &Limits,
) -> Result<Bytes, RedisError> {
    connection
        .stream()
        .write_all(command)
        .await
        .map_err(RedisError::Write)?;
    handshake::read_frame(connection, buffer, limits).await
}

/// The bulk strings of an array reply (`*N` of `$...`), in order.
fn bulk_strings(reply: &[u8]) -> Vec<Bytes> {
    let mut strings = Vec::new();
    let mut rest = reply;
    // Skip the array header.
    let Some(header_end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
        return strings;
    };
    if rest.first() != Some(&b'*') {
        return strings;
    }
    rest = &rest[header_end + 2..];
    while rest.first() == Some(&b'$') {
        let Some(line_end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
            break;
        };
        let Some(length) = std::str::from_utf8(&rest[1..line_end])
            .ok()
            .and_then(|length| length.parse::<usize>().ok())
        else {
            break;
        };
        let start = line_end + 2;
        if rest.len() < start + length + 2 {
            break;
        }
        strings.push(Bytes::copy_from_slice(&rest[start..start + length]));
        rest = &rest[start + length + 2..];
    }
    strings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_replies_are_read_as_strings() {
        let reply = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n";
        assert_eq!(
            bulk_strings(reply),
            vec![Bytes::from("127.0.0.1"), Bytes::from("6380")]
        );
        assert!(bulk_strings(b"*-1\r\n").is_empty());
        assert_eq!(endpoint(b"::1", b"6380").unwrap().to_string(), "[::1]:6380");
    }
}
